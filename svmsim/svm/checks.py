"""VMRUN's checks: the #UD/#GP checks of the instruction and the guest-state
consistency checks that end in #VMEXIT(VMEXIT_INVALID).

Real hardware says only "VMEXIT_INVALID".  svmsim names the rule that failed:
``check_guest_state`` returns an ``InvalidReason`` (rule id, VMCB field, the
value that broke it, the manual's section and one readable sentence).

Sources (facts only; no code was copied):

* APM vol 2, 15.5.1 "Canonicalization and Consistency Checks" (the list
  below, rules 1-15; wording quoted in
  shared/docs/reference/svm-emulators-and-layouts.md section 2).
* APM vol 2, 15.20 "Injecting Events": VMEXIT_INVALID if TYPE is reserved
  or TYPE = 3 (exception) with a vector that is not an exception, "this
  includes vector 2".
* APM vol 2, 15.16 (TLB control / ASIDs): ASID 0 belongs to the host.
* APM vol 2, 15.25.3: VMRUN with host CR0.PG = 0 and NP_ENABLE = 1 ends in
  VMEXIT_INVALID; 15.25.4: with NP_ENABLE = 1, any MBZ bit of nCR3, or a
  G_PAT.PA field with an unsupported type or a nonzero reserved field, is
  illegal "in addition to" the 15.5.1 list.
* APM vol 2, 3.1.2 (CR3): "All CR3 bits are writable, except for
  unimplemented physical address bits, which must be cleared to 0".
* APM vol 3, VMRUN: #UD if EFER.SVME = 0 or not in protected mode; #GP if
  CPL != 0; #GP if rAX is not 4 KiB aligned or beyond the physical address
  width; only then the VMRUN intercept check.
* Cross-checks: KVM arch/x86/kvm/svm/nested.c (nested_vmcb_check_*,
  nested_svm_check_event_inj), Xen svm_vmcb_isvalid, kvm-unit-tests
  x86/svm_tests.c (test_cr3: reserved-but-not-MBZ CR3 bits run the guest).

Rule order
----------
The APM gives no priority among the checks.  svmsim reports the FIRST rule
that fails, in the order the APM lists them, because that order is the only
one the manual states and a reader can follow it with the manual open:

  1 EFER.SVME  2 CR0.CD_NW  3 CR0_HI  4 CR3_MBZ  5 CR4_MBZ  6 DR6_HI
  7 DR7_HI  8 EFER_MBZ  9 LONG_MODE_UNSUPPORTED  10 LME_PG_NO_PAE
  11 LME_PG_NO_PE  12 CS_L_AND_D  13 VMRUN_INTERCEPT  14 MSRPM_RANGE then
  IOPM_RANGE (the APM says "MSR or IOIO")  15 EVENTINJ  16 ASID_ZERO
  17 NP_HOST_PAGING_OFF  18 NP_NCR3_MBZ  19 NP_GPAT  20 V_NMI_NO_NMI_INTERCEPT
  21 PAE_PDPTE (it reads memory, so last)  then LATER_CHECKS
  (SEV rules, appended by the SEV code).

Rule 16 is not in older copies of the 15.5.1 list (it comes from the ASID
section), and 17-19 are "in addition to" that list, so they come after it.

svmsim's readings where the manual is open to interpretation:

* CR3_MBZ: bits at or above MAXPHYADDR, in every guest mode.  Bits 11:5
  and 2:0 are "reserved" in the CR3 figures but not MBZ (hardware runs the
  guest, per kvm-unit-tests); with CR4.PCIDE bits 11:0 are the PCID.  No
  emulator checks CR3[63:32] of a legacy-mode guest and the APM text gives
  no such rule, so svmsim does not either.
* EFER_MBZ: every bit the modelled CPU does not support (the same set
  WRMSR EFER rejects), so bits 7:1, 9 and 63:16 except implemented
  features.  LME and LMA are left to rule 9 so that rule stays reachable.
* MSRPM_RANGE/IOPM_RANGE: bits 11:0 of the base are ignored (APM vol 2,
  Appendix B, VMCB layout); the table (MSRPM 8 KiB, IOPM 12 KiB, APM vol 2,
  15.10-15.11) fails if its last byte is not below 2**MAXPHYADDR, as KVM
  reads "greater than or equal to the maximum supported physical address".
* EVENTINJ: only checked when V (bit 31) = 1.  A vector is an exception if
  APM vol 2, table 8-1 defines it (``CpuCaps.exception_vectors``).  Of the
  events "impossible for the guest mode" (15.20 gives "e.g., a #BR exception
  when the guest is in 64-bit mode") svmsim knows that one.  Reserved bits
  30:12 are not a rule: 15.20 lists only TYPE and vector (Xen alone treats
  them as MBZ).
* NP rules apply only if the CPU supports nested paging (``CpuCaps.npt``);
  otherwise NP_ENABLE is an ignored control bit.
* V_NMI_NO_NMI_INTERCEPT (15.21.10): only on a CPU with vNMI
  (``CpuCaps.vnmi``); elsewhere V_NMI_ENABLE is an ignored bit.
* Checks that exist only in KVM (TLB_CONTROL values, HSAVE_PA = 0) are not
  modelled.

The VMCB is read through a tiny protocol: ``vmcb[name] -> int`` with the
field names below (F_*), so any mapping or VMCB view works.
"""
from operator import itemgetter

from .exits import eventinj_problem
from dataclasses import dataclass

# ---------------------------------------------------------------- VMCB names
F_EFER = "EFER"
F_CR0 = "CR0"
F_CR3 = "CR3"
F_CR4 = "CR4"
F_DR6 = "DR6"
F_DR7 = "DR7"
F_CS_ATTRIB = "CS.ATTRIB"           # VMCB 12-bit attribute format: L bit 9, D/B bit 10
F_INTERCEPT_VMRUN = "INTERCEPT_MISC2"   # VMCB 010h, VMRUN intercept = bit 0
F_MSRPM_BASE_PA = "MSRPM_BASE_PA"
F_IOPM_BASE_PA = "IOPM_BASE_PA"
F_EVENTINJ = "EVENTINJ"             # 0A8h: vector 7:0, TYPE 10:8, EV 11, V 31 (error code 63:32)
F_GUEST_ASID = "GUEST_ASID"
F_NP_ENABLE = "NP_ENABLE"           # 090h bit 0
F_N_CR3 = "N_CR3"
F_G_PAT = "G_PAT"

SEC_CHECKS = "APM vol 2, 15.5.1"
SEC_EVENTINJ = "APM vol 2, 15.20"
SEC_ASID = "APM vol 2, 15.16"
SEC_NP_ENABLE = "APM vol 2, 15.25.3"
SEC_NP_STATE = "APM vol 2, 15.25.4"
SEC_VMRUN = "APM vol 3, VMRUN"
SEC_VNMI = "APM vol 2, 15.21.10"

# ---------------------------------------------------------------- bits
CR0_PE, CR0_NW, CR0_CD, CR0_PG = 1, 1 << 29, 1 << 30, 1 << 31
CR4_PAE = 1 << 5
# CR4 bits an EPYC-class processor implements (APM vol 2, 3.1.3): VME..OSXMMEXCPT
# (10:0), UMIP 11, FSGSBASE 16, PCIDE 17, OSXSAVE 18, SMEP 20, SMAP 21, PKE 22.
CR4_DEFAULT_SUPPORTED = 0x7FF | 1 << 11 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 20 | 1 << 21 | 1 << 22
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME = 1, 1 << 8, 1 << 10, 1 << 11, 1 << 12
EFER_FFXSR, EFER_TCE = 1 << 14, 1 << 15
CS_L, CS_D = 1 << 9, 1 << 10
INTERCEPT_VMRUN_BIT = 1 << 0
RFLAGS_VM = 1 << 17
MSRPM_SIZE = 2 * 4096               # APM vol 2, 15.11: 8 KiB
IOPM_SIZE = 3 * 4096                # APM vol 2, 15.10.1: 12 KiB
MASK64 = (1 << 64) - 1

EVENTINJ_V = 1 << 31
EVENT_TYPES = {0: "INTR", 2: "NMI", 3: "exception", 4: "software interrupt"}
TYPE_EXCEPTION = 3
# APM vol 2, table 8-1: vectors that are exceptions on every SVM processor
# (#DE #DB #BP #OF #BR #UD #NM #DF #TS #NP #SS #GP #PF #MF #AC #MC #XF #HV #SX).
# 2 is NMI; 9, 15, 20, 22-27 and 31 are reserved; 21 (#CP) and 29 (#VC)
# exist only with shadow stacks / SEV-ES (add them through CpuCaps).
BASE_EXCEPTION_VECTORS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14,
                                    16, 17, 18, 19, 28, 30})
PAT_TYPES = frozenset({0, 1, 4, 5, 6, 7})   # UC WC WT WP WB UC- (APM vol 2, 7.8.1)

UD_VECTOR, GP_VECTOR = 6, 13


# ---------------------------------------------------------------- data types
@dataclass(frozen=True)
class InvalidReason:
    """Why VMRUN ended in #VMEXIT(VMEXIT_INVALID)."""
    rule: str           # short id, e.g. "EFER.SVME"
    field: str          # VMCB field name
    value: int          # the field's value
    section: str        # "APM vol 2, 15.5.1"
    message: str        # one readable sentence naming the field and value

    def __str__(self):
        return f"VMEXIT_INVALID [{self.rule}]: {self.message}"

    def as_dict(self) -> dict:
        """For the JSONL trace and the run report."""
        return {"rule": self.rule, "field": self.field, "value": self.value,
                "section": self.section, "message": self.message}


@dataclass(frozen=True)
class CpuCaps:
    """What the modelled processor supports, as the checks need it."""
    phys_bits: int = 48                          # MAXPHYADDR (CPUID 8000_0008 EAX[7:0])
    long_mode: bool = True
    cr4_supported: int = CR4_DEFAULT_SUPPORTED   # CR4 bits that may be 1
    efer_supported: int = (EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME)
    npt: bool = True                             # CPUID 8000_000A EDX[0]
    vnmi: bool = False                           # CPUID 8000_000A EDX[25]
    exception_vectors: frozenset = BASE_EXCEPTION_VECTORS
    sev: bool = False                            # later: SEV / SEV-ES rules

    @classmethod
    def from_cpu(cls, cpu) -> "CpuCaps":
        """Capabilities of a svmsim Cpu (profile, CR4 and EFER write masks)."""
        from ..cpu.cpuid import has
        from ..cpu.ops.system import cr4_supported
        from . import features
        efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
        for feat, bit in (("svm", EFER_SVME), ("ffxsr", EFER_FFXSR), ("tce", EFER_TCE)):
            if has(cpu, feat):
                efer |= bit
        phys = getattr(cpu, "maxphyaddr", None) or cpu.machine.profile.phys_bits
        return cls(phys_bits=phys, long_mode=has(cpu, "lm"),
                       cr4_supported=cr4_supported(cpu), efer_supported=efer,
                       npt=features.enabled(cpu, "npt"), vnmi=features.enabled(cpu, "vnmi"))


# ---------------------------------------------------------------- helpers
def _reason(rule, fld, value, section, text) -> InvalidReason:
    msg = f"guest {fld} = {value:#x}: {text} ({section})"
    return InvalidReason(rule, fld, value, section, msg)


def _bits_desc(mask: int) -> str:
    """'bits 63:48' style description of a contiguous-ish mask."""
    if not mask:
        return "no bits"
    hi, lo = mask.bit_length() - 1, (mask & -mask).bit_length() - 1
    return f"bit {hi}" if hi == lo else f"bits {hi}:{lo} ({mask:#x})"


def _above_phys(caps) -> int:
    return MASK64 & ~((1 << caps.phys_bits) - 1)


# ---------------------------------------------------------------- 15.5.1 rules
def _efer_svme(vmcb, caps, host):
    efer = vmcb[F_EFER]
    if not efer & EFER_SVME:
        return _reason("EFER.SVME", F_EFER, efer, SEC_CHECKS,
                       "EFER.SVME is 0, but VMRUN requires the guest's EFER.SVME = 1")


def _cr0_cd_nw(vmcb, caps, host):
    cr0 = vmcb[F_CR0]
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return _reason("CR0.CD_NW", F_CR0, cr0, SEC_CHECKS,
                       "CR0.NW = 1 with CR0.CD = 0 is an illegal combination")


def _cr0_hi(vmcb, caps, host):
    cr0 = vmcb[F_CR0]
    if cr0 >> 32:
        return _reason("CR0_HI", F_CR0, cr0, SEC_CHECKS, "CR0[63:32] must be zero")


def _cr3_mbz(vmcb, caps, host):
    cr3 = vmcb[F_CR3]
    bad = cr3 & _above_phys(caps)
    if bad:
        return _reason("CR3_MBZ", F_CR3, cr3, SEC_CHECKS,
                       f"CR3 {_bits_desc(bad)} set; bits at or above MAXPHYADDR "
                       f"({caps.phys_bits}) must be zero (APM vol 2, 3.1.2)")


def _cr4_mbz(vmcb, caps, host):
    cr4 = vmcb[F_CR4]
    bad = cr4 & ~caps.cr4_supported & MASK64
    if bad:
        return _reason("CR4_MBZ", F_CR4, cr4, SEC_CHECKS,
                       f"CR4 {_bits_desc(bad)} set; reserved or unsupported CR4 bits must be zero")


def _dr6_hi(vmcb, caps, host):
    dr6 = vmcb[F_DR6]
    if dr6 >> 32:
        return _reason("DR6_HI", F_DR6, dr6, SEC_CHECKS, "DR6[63:32] must be zero")


def _dr7_hi(vmcb, caps, host):
    dr7 = vmcb[F_DR7]
    if dr7 >> 32:
        return _reason("DR7_HI", F_DR7, dr7, SEC_CHECKS, "DR7[63:32] must be zero")


def _efer_mbz(vmcb, caps, host):
    efer = vmcb[F_EFER]
    bad = efer & ~(caps.efer_supported | EFER_LME | EFER_LMA) & MASK64
    if bad:
        return _reason("EFER_MBZ", F_EFER, efer, SEC_CHECKS,
                       f"EFER {_bits_desc(bad)} set; reserved or unsupported EFER bits must be zero")


def _long_mode_unsupported(vmcb, caps, host):
    efer = vmcb[F_EFER]
    if efer & (EFER_LME | EFER_LMA) and not caps.long_mode:
        return _reason("LONG_MODE_UNSUPPORTED", F_EFER, efer, SEC_CHECKS,
                       "EFER.LME or EFER.LMA is set but this processor does not support long mode")


def _lme_pg(vmcb) -> bool:
    return bool(vmcb[F_EFER] & EFER_LME and vmcb[F_CR0] & CR0_PG)


def _lme_pg_no_pae(vmcb, caps, host):
    cr4 = vmcb[F_CR4]
    if _lme_pg(vmcb) and not cr4 & CR4_PAE:
        return _reason("LME_PG_NO_PAE", F_CR4, cr4, SEC_CHECKS,
                       "CR4.PAE = 0 while EFER.LME = 1 and CR0.PG = 1 (long mode needs PAE)")


def _lme_pg_no_pe(vmcb, caps, host):
    cr0 = vmcb[F_CR0]
    if _lme_pg(vmcb) and not cr0 & CR0_PE:
        return _reason("LME_PG_NO_PE", F_CR0, cr0, SEC_CHECKS,
                       "CR0.PE = 0 while EFER.LME = 1 and CR0.PG = 1")


def _cs_l_and_d(vmcb, caps, host):
    attr = vmcb[F_CS_ATTRIB]
    if (_lme_pg(vmcb) and vmcb[F_CR4] & CR4_PAE
            and attr & CS_L and attr & CS_D):
        return _reason("CS_L_AND_D", F_CS_ATTRIB, attr, SEC_CHECKS,
                       "CS.L = 1 and CS.D = 1 in long mode (EFER.LME, CR0.PG, CR4.PAE all set)")


def _vmrun_intercept(vmcb, caps, host):
    word = vmcb[F_INTERCEPT_VMRUN]
    if not word & INTERCEPT_VMRUN_BIT:
        return _reason("VMRUN_INTERCEPT", F_INTERCEPT_VMRUN, word, SEC_CHECKS,
                       "the VMRUN intercept bit (bit 0) is clear; it must be set")


def _table_range(vmcb, caps, rule, fld, size, what):
    raw = vmcb[fld]
    base = raw & ~0xFFF & MASK64           # bits 11:0 are ignored
    last = base + size - 1
    if last >> caps.phys_bits:
        return _reason(rule, fld, raw, SEC_CHECKS,
                       f"the {size // 1024} KiB {what} at {base:#x} ends at {last:#x}, "
                       f"beyond the {caps.phys_bits}-bit physical address space")


def _msrpm_range(vmcb, caps, host):
    return _table_range(vmcb, caps, "MSRPM_RANGE", F_MSRPM_BASE_PA, MSRPM_SIZE, "MSR permission map")


def _iopm_range(vmcb, caps, host):
    return _table_range(vmcb, caps, "IOPM_RANGE", F_IOPM_BASE_PA, IOPM_SIZE, "I/O permission map")


def _eventinj(vmcb, caps, host):
    """15.20: reserved TYPE, TYPE 3 with a non-exception vector, or an event
    "impossible for the guest mode (e.g., a #BR exception when the guest is
    in 64-bit mode)"."""
    evt = vmcb[F_EVENTINJ]
    problem = eventinj_problem(evt, caps.exception_vectors)
    if problem is None and evt & EVENTINJ_V and evt & 0x7FF == (3 << 8) | 5 and _guest_64bit(vmcb):
        problem = "#BR (TYPE 3, vector 5) cannot be injected into a guest in 64-bit mode"
    if problem:
        return _reason("EVENTINJ", F_EVENTINJ, evt, SEC_EVENTINJ, f"illegal event injection: {problem}")


def _guest_64bit(vmcb) -> bool:
    """The guest state describes 64-bit mode: long mode active and CS.L = 1."""
    return _lme_pg(vmcb) and bool(vmcb[F_CS_ATTRIB] & CS_L)


def _asid_zero(vmcb, caps, host):
    asid = vmcb[F_GUEST_ASID]
    if asid == 0:
        return _reason("ASID_ZERO", F_GUEST_ASID, asid, SEC_ASID,
                       "ASID 0 is reserved for the host; a guest needs a nonzero ASID")


# ---------------------------------------------------------------- nested paging
def _np_on(vmcb, caps) -> bool:
    return caps.npt and bool(vmcb[F_NP_ENABLE] & 1)


def _np_host_paging(vmcb, caps, host):
    if _np_on(vmcb, caps) and not host.cr0 & CR0_PG:
        np = vmcb[F_NP_ENABLE]
        return _reason("NP_HOST_PAGING_OFF", F_NP_ENABLE, np, SEC_NP_ENABLE,
                       f"NP_ENABLE = 1 while the host runs with paging off "
                       f"(host CR0 = {host.cr0:#x}, CR0.PG = 0)")


def _np_ncr3(vmcb, caps, host):
    if not _np_on(vmcb, caps):
        return None
    ncr3 = vmcb[F_N_CR3]
    bad = ncr3 & _above_phys(caps)
    if bad:
        return _reason("NP_NCR3_MBZ", F_N_CR3, ncr3, SEC_NP_STATE,
                       f"nCR3 {_bits_desc(bad)} set; bits at or above MAXPHYADDR "
                       f"({caps.phys_bits}) must be zero")


def gpat_problem(pat: int) -> str | None:
    """The first G_PAT entry with an unsupported type or reserved bits, or None."""
    for i in range(8):
        entry = (pat >> (8 * i)) & 0xFF
        if entry not in PAT_TYPES:
            return f"PA{i} = {entry:#x} is not a valid memory type (0, 1, 4, 5, 6, 7)"
    return None


def _np_gpat(vmcb, caps, host):
    if not _np_on(vmcb, caps):
        return None
    pat = vmcb[F_G_PAT]
    problem = gpat_problem(pat)
    if problem:
        return _reason("NP_GPAT", F_G_PAT, pat, SEC_NP_STATE, problem)


def _vnmi_without_nmi_intercept(vmcb, caps, host):
    """15.21.10: "Enabling NMI Virtualization requires the NMI intercept bit to
    be set.  An attempt to run a guest with V_NMI_ENABLE without the NMI
    intercept bit set results in #VMEXIT(INVALID)."  (NMI: word 3, bit 1.)"""
    if caps.vnmi and vmcb["V_NMI_ENABLE"] and not vmcb["INTERCEPT_MISC1"] >> 1 & 1:
        return _reason("V_NMI_NO_NMI_INTERCEPT", "V_NMI_ENABLE", vmcb["V_NMI_ENABLE"], SEC_VNMI,
                       "V_NMI_ENABLE = 1 requires the NMI intercept, which is clear")


def _pae_pdpte(vmcb, caps, host):
    """15.5.1: "If the guest is in PAE paging mode according to the registers
    just loaded and nested paging is not enabled, the processor will also
    read the four PDPEs pointed to by the newly loaded CR3 value; setting any
    reserved bits in the PDPEs also causes a #VMEXIT."  svmsim checks the
    present PDPEs with the walker's reserved bits (cpu/paging.py)."""
    if _np_on(vmcb, caps) or not vmcb[F_CR0] & CR0_PG or not vmcb[F_CR4] & CR4_PAE \
            or vmcb[F_EFER] & EFER_LME or getattr(host, "bus", None) is None:
        return None
    from ..cpu.paging import bad_pdpte
    found = bad_pdpte(host.bus.read, vmcb[F_CR3], _above_phys(caps) & ((1 << 52) - 1))
    if found:
        i, at, pdpte, bad = found
        return _reason("PAE_PDPTE", F_CR3, vmcb[F_CR3], SEC_CHECKS,
                       f"PDPE{i} at {at:#x} = {pdpte:#x} has reserved {_bits_desc(bad)} set")


# ---------------------------------------------------------------- the table
# (rule id, check).  Order = the APM's list order; see the module docstring.
GUEST_STATE_RULES = (
    ("EFER.SVME", _efer_svme),
    ("CR0.CD_NW", _cr0_cd_nw),
    ("CR0_HI", _cr0_hi),
    ("CR3_MBZ", _cr3_mbz),
    ("CR4_MBZ", _cr4_mbz),
    ("DR6_HI", _dr6_hi),
    ("DR7_HI", _dr7_hi),
    ("EFER_MBZ", _efer_mbz),
    ("LONG_MODE_UNSUPPORTED", _long_mode_unsupported),
    ("LME_PG_NO_PAE", _lme_pg_no_pae),
    ("LME_PG_NO_PE", _lme_pg_no_pe),
    ("CS_L_AND_D", _cs_l_and_d),
    ("VMRUN_INTERCEPT", _vmrun_intercept),
    ("MSRPM_RANGE", _msrpm_range),
    ("IOPM_RANGE", _iopm_range),
    ("EVENTINJ", _eventinj),
    ("ASID_ZERO", _asid_zero),
    ("NP_HOST_PAGING_OFF", _np_host_paging),
    ("NP_NCR3_MBZ", _np_ncr3),
    ("NP_GPAT", _np_gpat),
    ("V_NMI_NO_NMI_INTERCEPT", _vnmi_without_nmi_intercept),
    ("PAE_PDPTE", _pae_pdpte),
)
RULE_ORDER = tuple(rule for rule, _ in GUEST_STATE_RULES)

# Hook for rules added later (SEV: "SEV_UNSUPPORTED", "SEV_ES_WITHOUT_SEV",
# "VMSA_ALIGN", ...).  Each entry is (rule id, fn(vmcb, caps, host)); they
# run after GUEST_STATE_RULES, in list order.
LATER_CHECKS: list = []


# What the rules above read (all but PAE_PDPTE, which reads memory), and
# what the SEV and AVIC rules in LATER_CHECKS read (MEMO_LATER; the AVIC
# rule only while the RMP is off, as it then reads the RMP): when a VMRUN
# presents the same values as the last one that passed, on the same CPU,
# those rules pass again and only the others run.  A hypervisor resuming
# its guest changes none of them.  A rule added to LATER_CHECKS under
# another name always runs.
# (Control-area fields first: svm/switch.py builds the same key from the two areas.)
MEMO_FIELDS = (F_INTERCEPT_VMRUN, F_MSRPM_BASE_PA, F_IOPM_BASE_PA, F_EVENTINJ, F_GUEST_ASID,
               "MISC_CTL", F_N_CR3, "INT_CTL", "INTERCEPT_MISC1", "AVIC_BACKING_PAGE",
               "AVIC_LOGICAL_TABLE", "AVIC_PHYSICAL_TABLE",
               F_EFER, F_CR0, F_CR3, F_CR4, F_DR6, F_DR7, F_CS_ATTRIB, F_G_PAT)
MEMO_LATER = frozenset({"SEV_NP", "SEV_SMMLOCK", "SEV_ASID", "SEV_64BIT_HOST", "SEV_ES_EVENTINJ",
                        "AVIC"})
_memo_key = itemgetter(*MEMO_FIELDS)
_UNMEMOIZED = tuple(r for r in GUEST_STATE_RULES if r[0] == "PAE_PDPTE")
SYSCFG_MSR, HWCR_MSR = 0xC0010010, 0xC0010015


def check_guest_state(vmcb, cpu_caps: CpuCaps, host, memo=None) -> InvalidReason | None:
    """Run VMRUN's consistency checks on ``vmcb``; return the first failure.

    ``host`` is the state VMRUN runs from: anything with ``cr0`` (and
    ``efer``), e.g. the Cpu itself before the guest state is loaded.
    ``memo``: an object whose ``checked`` attribute remembers the inputs of
    the last VMRUN that passed (the CPU's SvmState); ``vmcb`` must then be a
    VmcbPage and ``host`` a Cpu.
    """
    rules, key = (*GUEST_STATE_RULES, *LATER_CHECKS), None
    if memo is not None:
        rmp_on = host.machine.rmp.enabled
        msr = host.msr
        key = (_memo_key(vmcb), host.cr0, host.efer, msr.get(SYSCFG_MSR), msr.get(HWCR_MSR),
               rmp_on, cpu_caps)
        if key == memo.checked:
            rules = (*_UNMEMOIZED, *(r for r in LATER_CHECKS if r[0] not in MEMO_LATER
                                     or rmp_on and r[0] == "AVIC"))
    for _rule, check in rules:
        reason = check(vmcb, cpu_caps, host)
        if reason is not None:
            return reason
    if memo is not None:
        memo.checked = key
    return None


# ---------------------------------------------------------------- the instruction
def _vmrun_rax(cpu, asize):
    """rAX masked to the effective address size (APM vol 3, VMRUN: the
    address size selects AX/EAX/RAX; QEMU uses EAX for 16-bit too)."""
    if asize is None:
        asize = 8 if getattr(cpu, "bits", 32) == 64 else 4
    return cpu.regs[0] & ((1 << (8 * asize)) - 1)


SVME_OPTIONAL = ("STGI", "CLGI", "SKINIT")


def svme_optional(cpu) -> bool:
    from ..cpu.cpuid import has
    return has(cpu, "skinit") or has(cpu, "svml")


def check_vmrun_instruction(cpu, asize: int | None = None, name: str = "VMRUN", rax: bool = True):
    """The checks of APM vol 3 "VMRUN", in its pseudocode order, before the
    VMRUN intercept check: returns (vector, error_code, detail) or None.

    1. EFER.SVME = 0 -> #UD.  2. Not protected mode (CR0.PE = 0, or
    RFLAGS.VM = 1: the APM's PROTECTED_MODE excludes virtual-8086 mode) ->
    #UD.  3. CPL != 0 -> #GP(0).  4. rAX not 4 KiB aligned, or beyond the
    physical address width -> #GP(0).  ``asize`` is the instruction's
    address size in bytes (Insn.asize); by default 8 in 64-bit mode, else 4.
    VMLOAD and VMSAVE have the same checks; STGI, CLGI and INVLPGA the
    first three (``rax=False``).  STGI, CLGI and SKINIT are #UD with
    EFER.SVME = 0 only if neither SVM-Lock (CPUID Fn8000_000A_EDX[2]) nor
    SKINIT/DEV (Fn8000_0001_ECX[12]) is supported (vol 3, STGI/CLGI/SKINIT).
    """
    if not cpu.efer & EFER_SVME and not (name in SVME_OPTIONAL and svme_optional(cpu)):
        return UD_VECTOR, None, f"{name} with EFER.SVME = 0"
    if not cpu.cr0 & CR0_PE:
        return UD_VECTOR, None, f"{name} outside protected mode (real mode)"
    if cpu.rflags & RFLAGS_VM:
        return UD_VECTOR, None, f"{name} outside protected mode (virtual-8086 mode)"
    if cpu.cpl != 0:
        return GP_VECTOR, 0, f"{name} at CPL {cpu.cpl}"
    if not rax:
        return None
    value = _vmrun_rax(cpu, asize)
    if value & 0xFFF:
        return GP_VECTOR, 0, f"{name}: rAX = {value:#x} is not 4 KiB aligned"
    phys = getattr(cpu, "maxphyaddr", None) or cpu.machine.profile.phys_bits
    if value >> phys:
        return GP_VECTOR, 0, f"{name}: rAX = {value:#x} is beyond the {phys}-bit physical address space"
    return None


# ---------------------------------------------------------------- #VMEXIT's host checks
# "VMRUN performs consistency checks on guest state and #VMEXIT performs the
# appropriate subset of these consistency checks on host state" (15.5.1);
# "Checks the reloaded host state for consistency; any error causes the
# processor to shutdown" and "If the host is in PAE mode, the processor
# reloads the host's PDPEs ... If the PDPEs contain illegal state, the
# processor causes a shutdown" (15.6).  The subset is svmsim's reading: the
# rules on the registers #VMEXIT reloads (CR0, CR3, CR4, EFER, CS), not those
# on VMCB controls, not EFER.SVME (a host may run with it clear), not DR6/DR7
# (#VMEXIT does not reload them).
HOST_STATE_RULES = tuple(r for r in GUEST_STATE_RULES if r[0] in {
    "CR0.CD_NW", "CR0_HI", "CR3_MBZ", "CR4_MBZ", "EFER_MBZ", "LONG_MODE_UNSUPPORTED",
    "LME_PG_NO_PAE", "LME_PG_NO_PE", "CS_L_AND_D", "PAE_PDPTE"})


def check_host_state(efer, cr0, cr3, cr4, cs_attr, cpu_caps: CpuCaps, host) -> InvalidReason | None:
    """The first rule the host state #VMEXIT reloads breaks, or None.
    ``host``: the Cpu (its ``bus`` reads the PDPEs)."""
    state = {F_EFER: efer, F_CR0: cr0, F_CR3: cr3, F_CR4: cr4, F_CS_ATTRIB: cs_attr,
             F_NP_ENABLE: 0}
    for _rule, check in HOST_STATE_RULES:
        reason = check(state, cpu_caps, host)
        if reason is not None:
            return reason
    return None
