"""SEV-SNP in the processor (APM vol 2, 15.36): the RMP instructions, the
RMP and VMPL checks of guest accesses (table 15-37) and VMRUN's page checks
(table 15-39).  The table itself is ``svmsim.memory.rmp``; the host's write
check lives in the CPU's translation (``Cpu._rmp_host_write``).

Instruction semantics: APM vol 2 describes what each instruction is for
(15.36.5-15.36.11); the return codes are those of AMD's instruction
reference as Linux and Microsoft's intrinsics document them (0 SUCCESS,
1 FAIL_INPUT, 2 FAIL_PERMISSION, 3 FAIL_INUSE, 4 FAIL_OVERLAP,
6 FAIL_SIZEMISMATCH, 7 FAIL_UNSUPPORTED).  Where the public text leaves
a detail open, svmsim's reading is named in the docstring and in
docs/DESIGN.md ("SEV-SNP").
"""
from ..cpu import sev_features
from ..cpu.exceptions import CpuException, VC, PF_P, PF_W, PF_U, PF_I, gp, ud
from ..cpu.flags import CF
from ..cpu.ops import handles
from ..memory.rmp import RmpEntry, PAGE, PAGES_2M, PERM_ALL, PERM_R, PERM_W, PERM_XU, PERM_XS, NUM_VMPLS
from .exits import ExitCode
from .state import VmExit

SUCCESS, FAIL_INPUT, FAIL_PERMISSION, FAIL_INUSE, FAIL_OVERLAP = 0, 1, 2, 3, 4
FAIL_SIZEMISMATCH, FAIL_UNSUPPORTED = 6, 7
SIZE_2M = PAGES_2M * PAGE

# #NPF EXITINFO1 bits of RMP checks (15.36.10).
NPF_RMP, NPF_FINAL, NPF_TABLE = 1 << 31, 1 << 32, 1 << 33
NPF_ENC, NPF_SIZEM, NPF_VMPL = 1 << 34, 1 << 35, 1 << 36
PAGE_NOT_VALIDATED = 0x404              # #VC error code (15.36.10)
SYSCFG, SNP_EN = 0xC0010010, 1 << 24


def snp_enabled(cpu) -> bool:
    return bool(cpu.msr.get(SYSCFG, 0) & SNP_EN)


def _result(cpu, code):
    cpu.regs[0] = code


# ---------------------------------------------------------------- pages in use (15.36.12)
def in_use(machine, spa) -> bool:
    """"After a successful VMRUN, the VMCB page, as well as any ... VMSA Page
    are marked as in-use by hardware" until the #VMEXIT."""
    page = spa & ~0xFFF
    return any(c.svm_guest and page in c.svm.in_use for c in machine.cpus)


def _host_rmp_insn(cpu, ins, name):
    if not snp_enabled(cpu):
        raise ud(f"{name} with SYSCFG.SecureNestedPagingEn = 0")
    if cpu.cpl:
        raise gp(0, f"{name} at CPL {cpu.cpl}")
    return cpu.machine.rmp


# ---------------------------------------------------------------- RMPUPDATE (15.36.5)
@handles("RMPUPDATE")
def rmpupdate(cpu, ins):
    """RAX = the page's system-physical address, RCX = the linear address of
    the new state {u64 GPA, u8 Assigned, u8 Page_Size, u8 Immutable, u8 -,
    u32 ASID}.  Assigned with ASID 0 and Immutable makes the page the
    AMD-SP's (table 15-35).  The page always becomes unvalidated, its VMSA flag clear,
    VMPL0 fully permitted and every other VMPL denied (15.36.6-15.36.7).
    Executed in a guest (ASID != 0): FAIL_PERMISSION."""
    rmp = _host_rmp_insn(cpu, ins, "RMPUPDATE")
    if cpu.svm_guest:
        return _result(cpu, FAIL_PERMISSION)
    spa = cpu.regs[0]
    raw = cpu.read_lin(cpu.regs[1], 8).to_bytes(8, "little") + cpu.read_lin(cpu.regs[1] + 8, 8).to_bytes(8, "little")
    gpa, assigned, size = int.from_bytes(raw[:8], "little"), raw[8], raw[9] & 1
    immutable, asid = raw[10], int.from_bytes(raw[12:16], "little")
    _result(cpu, rmp_update(cpu, rmp, spa, gpa, assigned, size, immutable, asid))


def rmp_update(cpu, rmp, spa, gpa, assigned, size, immutable, asid):
    """RMPUPDATE's operation on its decoded operands (a VMM written in Python
    calls it as its host's RMPUPDATE); returns the instruction's result code."""
    max_asid = cpu.machine.profile.extra["sev"]["max_asid"]
    span = SIZE_2M if size else PAGE
    # Table 15-35: a hypervisor page has ASID 0; an assigned page with ASID 0
    # is the AMD-SP's and must be immutable (Linux hands firmware pages over so).
    if (spa & (span - 1) or gpa & (span - 1) or not rmp.covered(spa + span - 1)
            or asid > max_asid or gpa >> 51 or not assigned and asid
            or assigned and not asid and not immutable):
        return FAIL_INPUT
    old, _ = rmp.governing(spa)
    if rmp.read(spa).immutable or old.immutable:
        return FAIL_PERMISSION
    if any(in_use(cpu.machine, spa + i * PAGE) for i in range(span // PAGE)):
        return FAIL_INUSE
    if assigned and _overlaps(rmp, spa, size):
        return FAIL_OVERLAP
    perms = [PERM_ALL] + [0] * (NUM_VMPLS - 1) if assigned else [0] * NUM_VMPLS
    rmp.write(spa, RmpEntry(bool(assigned), size, bool(immutable), gpa if assigned else 0,
                            asid, False, False, perms))
    return SUCCESS


def _overlaps(rmp, spa, size):
    """FAIL_OVERLAP: a 2 MiB entry over assigned 4 KiB entries, or a 4 KiB
    entry inside an assigned 2 MiB page."""
    base = spa & ~(SIZE_2M - 1)
    if size:
        return any(rmp.read(base + i * PAGE).assigned for i in range(1, PAGES_2M))
    big = rmp.read(base)
    return base != spa and big.assigned and big.page_size == 1


# ---------------------------------------------------------------- PSMASH (15.36.11)
@handles("PSMASH")
def psmash(cpu, ins):
    """RAX = a 2 MiB aligned system-physical address: its 2 MiB entry becomes
    512 4 KiB entries with consecutive GPAs and the rest copied, Validated
    included.  Not an assigned 2 MiB page: FAIL_UNSUPPORTED."""
    rmp = _host_rmp_insn(cpu, ins, "PSMASH")
    if cpu.svm_guest:
        return _result(cpu, FAIL_PERMISSION)
    _result(cpu, rmp_psmash(cpu, rmp, cpu.regs[0]))


def rmp_psmash(cpu, rmp, spa):
    """PSMASH's operation on its operand (a VMM written in Python calls it as
    its host's PSMASH); returns the instruction's result code."""
    if spa & (SIZE_2M - 1) or not rmp.covered(spa + SIZE_2M - 1):
        return FAIL_INPUT
    e = rmp.read(spa)
    if not (e.assigned and e.page_size):
        return FAIL_UNSUPPORTED
    if any(in_use(cpu.machine, spa + i * PAGE) for i in range(PAGES_2M)):
        return FAIL_INUSE
    for i in range(PAGES_2M):
        rmp.write(spa + i * PAGE, RmpEntry(True, 0, e.immutable, e.gpa + i * PAGE, e.asid, e.vmsa,
                                           e.validated, list(e.perms)))
    return SUCCESS


# ---------------------------------------------------------------- guest instructions
def _guest_rmp_insn(cpu, name):
    if not (cpu.svm_guest and cpu.svm.snp):
        raise ud(f"{name} outside an SNP-active guest")
    if cpu.cpl:
        raise gp(0, f"{name} at CPL {cpu.cpl}")


def _guest_page(cpu, lin, size):
    """Translate the operand of PVALIDATE / RMPADJUST: (gPA, SPA, nested page
    size, entry, entry base), after the guest's and the nested walks (their
    faults are the usual #PF / #NPF) and the RMP checks that precede the
    instruction's own (guest-owned, reverse map, mutable: #NPF)."""
    npt = cpu.npt
    t = npt.walk_for(lin, 0)
    spa = t.spa & ~(npt.c_mask | 0xFFF)
    rmp = cpu.machine.rmp
    e, base = rmp.governing(spa)
    gpa = t.gpa & ~0xFFF
    info = PF_P | PF_U | NPF_RMP | NPF_FINAL | NPF_ENC
    if not (rmp.covered(spa) and e.assigned and e.asid == cpu.svm.asid and not e.immutable
            and e.gpa == (gpa & ~(SIZE_2M - 1) if e.page_size else gpa)):
        raise VmExit(ExitCode.NPF, info, gpa | (lin & 0xFFF), detail="RMP check of the page operand")
    if size == 0 and e.page_size:
        # Table 15-38: 4 KiB requested, 2 MiB in the RMP -> #NPF with SIZEM.
        raise VmExit(ExitCode.NPF, info | NPF_SIZEM, gpa, detail="4 KiB operand of a 2 MiB RMP page")
    return t, spa, e, base


@handles("PVALIDATE")
def pvalidate(cpu, ins):
    """rAX = guest virtual address, ECX = page size (0: 4 KiB, 1: 2 MiB), EDX
    bit 0 = the new Validated value (15.36.6).  EAX = the result; CF = 1 when
    the Validated flag already had that value (nothing changed).  2 MiB
    requested on a 4 KiB RMP page: FAIL_SIZEMISMATCH.  svmsim's readings:
    only VMPL0 may validate (a VMPL permission #NPF otherwise, as SVSM guests
    expect), and a shared (C = 0) mapping is FAIL_INPUT."""
    _guest_rmp_insn(cpu, "PVALIDATE")
    lin = cpu.regs[0] & ((1 << (8 * ins.asize)) - 1)
    size, validate = cpu.regs[1] & 0xFFFFFFFF, cpu.regs[2] & 1
    if size > 1 or lin & ((SIZE_2M if size else PAGE) - 1):
        return _result(cpu, FAIL_INPUT)
    t, spa, e, base = _guest_page(cpu, lin, size)
    if cpu.svm.vmpl != 0:
        raise VmExit(ExitCode.NPF, PF_P | PF_U | NPF_RMP | NPF_FINAL | NPF_ENC | NPF_VMPL, t.gpa,
                     detail="PVALIDATE above VMPL0")
    if not t.gc:
        return _result(cpu, FAIL_INPUT)
    if size and not e.page_size:
        return _result(cpu, FAIL_SIZEMISMATCH)
    cpu.flags_settle()
    if e.validated == bool(validate):
        cpu.rflags |= CF
    else:
        cpu.rflags &= ~CF
        e.validated = bool(validate)
        cpu.machine.rmp.write(base, e)
    _result(cpu, SUCCESS)


@handles("RMPADJUST")
def rmpadjust(cpu, ins):
    """RAX = guest virtual address, RCX = page size, RDX = target VMPL
    (7:0), permission mask (15:8), VMSA (16) (15.36.7).  The target must be a
    numerically higher VMPL, the mask no wider than the caller's own, and
    only VMPL0 may set VMSA: FAIL_PERMISSION otherwise.  svmsim's reading:
    the page must be validated (an unvalidated page is #VC(404h), as for an
    access)."""
    _guest_rmp_insn(cpu, "RMPADJUST")
    lin, size, rdx = cpu.regs[0], cpu.regs[1] & 0xFFFFFFFF, cpu.regs[2]
    target, mask, vmsa = rdx & 0xFF, rdx >> 8 & 0xFF, rdx >> 16 & 1
    vmpl = cpu.svm.vmpl
    if size > 1 or lin & ((SIZE_2M if size else PAGE) - 1) or mask & ~0x1F or target >= NUM_VMPLS:
        return _result(cpu, FAIL_INPUT)
    t, spa, e, base = _guest_page(cpu, lin, size)
    if size and not e.page_size:
        return _result(cpu, FAIL_SIZEMISMATCH)
    if not e.validated:
        raise CpuException(VC, PAGE_NOT_VALIDATED, cr2=lin, detail="RMPADJUST of an unvalidated page")
    if target <= vmpl or mask & ~e.perms[vmpl] or vmsa and vmpl != 0:
        return _result(cpu, FAIL_PERMISSION)
    e.perms[target] = mask
    if vmpl == 0:
        e.vmsa = bool(vmsa)
    cpu.machine.rmp.write(base, e)
    _result(cpu, SUCCESS)


# ---------------------------------------------------------------- guest accesses (table 15-37)
def check_guest_access(cpu, t, lin, access, private, where=NPF_FINAL):
    """RMP checks of one guest access to the page ``t`` translates to (a
    NestedTranslation).  ``private``: the effective C-bit is 1 (always for
    fetches and guest page-table accesses).  Raises #NPF (VmExit) or #VC."""
    s = cpu.svm
    rmp = cpu.machine.rmp
    spa = t.spa & ~(cpu.npt.c_mask | 0xFFF)
    write = access & PF_W
    base_info = PF_P | PF_U | (access & (PF_W | PF_I)) | NPF_RMP | where
    gpa = t.gpa | (lin & 0xFFF) if where == NPF_FINAL else t.gpa
    if not s.snp or not private:
        if write and not rmp.hypervisor_owned(spa, t.n_size if where == NPF_FINAL else PAGE):
            raise VmExit(ExitCode.NPF, base_info, gpa, detail="RMP: guest write to a page that is "
                                                              "not hypervisor-owned")
        return
    e, _ = rmp.governing(spa)
    info = base_info | NPF_ENC
    reason = _owner_problem(rmp, e, spa, t, s.asid)
    if reason:
        raise VmExit(ExitCode.NPF, info, gpa, detail=f"RMP: {reason}")
    if not e.validated:
        raise CpuException(VC, PAGE_NOT_VALIDATED, cr2=lin, detail="RMP: page not validated")
    perm = e.perms[s.vmpl]
    need = (PERM_XU if access & PF_U else PERM_XS) if access & PF_I else (PERM_W if write else PERM_R)
    if not perm & need or perm & PERM_W and not perm & PERM_R:
        raise VmExit(ExitCode.NPF, info | NPF_VMPL, gpa,
                     detail=f"VMPL{s.vmpl} permission mask {perm:#x} denies the access")


def _owner_problem(rmp, e, spa, t, asid):
    if not rmp.covered(spa):
        return "page not covered by the RMP"
    if not e.assigned or e.asid != asid:
        return f"page owned by the {e.owner}, not this guest (ASID {asid})"
    big = t.n_size > PAGE
    gpa = t.gpa & ~(SIZE_2M - 1) if e.page_size else t.gpa
    if e.gpa != gpa:
        return f"reverse map: the page belongs to gPA {e.gpa:#x}, not {gpa:#x}"
    if e.immutable:
        return "page is immutable"
    if big != bool(e.page_size):
        return f"page size: nested {'2 MiB' if big else '4 KiB'}, RMP {'2 MiB' if e.page_size else '4 KiB'}"
    return None


# ---------------------------------------------------------------- VMRUN (15.36.12)
SUPPORTED_FEATURES = sev_features.mask(snp=True)     # SEV_FEATURES bits an SNP-active VMSA may set
# 15.36.20: "The Allowed SEV Features Mask is enabled when bit 63 at offset
# 138h in the VMCB is set to 1 ... ALLOWED_SEV_FEATURES_MASK bits 61:0
# correspond to VMSA SEV_FEATURES bits 61:0"; "VMRUN checks that all
# SEV_FEATURES bits which are set in VMSA offset 3B0h are also set in
# ALLOWED_SEV_FEATURES_MASK. If not, VMRUN fails with a VMEXIT_INVALID".
ALLOWED_MASK_BITS = (1 << 62) - 1
SEC_SNP = "APM vol 2, 15.36.12"


def vmrun_host_checks(cpu, vmcb_pa, hsave_pa) -> None:
    """Table 15-39: the VMCB page must be hypervisor-owned (#GP(0)); "a VMRUN
    that is attempted while the HSAVE_PA is 0 will fail with a #GP(0)"."""
    rmp = cpu.machine.rmp
    if not rmp.enabled:
        return
    if not rmp.hypervisor_owned(vmcb_pa & ~0xFFF):
        raise gp(0, f"VMRUN: the VMCB page {vmcb_pa:#x} is not hypervisor-owned (RMP)")
    if hsave_pa == 0:
        raise gp(0, "VMRUN with VM_HSAVE_PA = 0 while SEV-SNP is enabled")


def es_features_check(vmsa):
    """An SEV-ES VMSA that is not SNP-active may set only the implemented
    features the manual gives to "SEV-ES and SNP-active guests"
    (cpu/sev_features.py): checked once its integrity is (a VMSA decrypted
    with the wrong key is an integrity failure, not a feature request)."""
    from .checks import _reason
    features = vmsa["SEV_FEATURES"]
    bad = features & ~sev_features.mask(snp=False)
    if bad:
        return _reason("SEV_FEATURES", "SEV_FEATURES", features, "APM vol 2, 15.34.10",
                       f"SEV_FEATURES {sev_features.names(bad)} not available to an SEV-ES "
                       "guest that is not SNP-active on this CPU model")
    return None


def vmsa_checks(cpu, v, spa, vmsa):
    """VMRUN of an SEV-ES guest on an SNP-enabled system (table 15-39): an
    SNP-active VMSA (SEV_FEATURES bit 0) must be covered, owned by the
    guest's ASID, mutable and marked VMSA in the RMP; any other VMSA must be
    hypervisor-owned.  SNP-active also needs SNP enabled (15.36.12), SEV
    features svmsim implements and, when the VMCB enables the mask, allows
    (15.36.20), and a VMPL below CPUID's count (with VMPLEn for any VMPL but
    0: svmsim's reading).  Returns an InvalidReason or None."""
    from .checks import _reason
    rmp = cpu.machine.rmp
    features = vmsa["SEV_FEATURES"]
    if not features & 1:
        if rmp.enabled and not rmp.hypervisor_owned(spa):
            return _reason("SNP_VMSA_OWNER", "VMSA_PA", spa, SEC_SNP,
                           "the VMSA of a guest that is not SNP-active must be hypervisor-owned")
        return None
    if not snp_enabled(cpu):
        return _reason("SNP_NOT_ENABLED", "SEV_FEATURES", features, SEC_SNP,
                       "an SNP-active VMSA needs SYSCFG.SecureNestedPagingEn = 1")
    if features & ~SUPPORTED_FEATURES:
        return _reason("SNP_SEV_FEATURES", "SEV_FEATURES", features, "APM vol 2, 15.36",
                       f"SEV_FEATURES {sev_features.names(features & ~SUPPORTED_FEATURES)} "
                       "not implemented by this CPU model (cpu/sev_features.py)")
    allowed = v["ALLOWED_SEV_FEATURES"]
    if allowed >> 63 and features & ~allowed & ALLOWED_MASK_BITS:
        return _reason("ALLOWED_SEV_FEATURES", "SEV_FEATURES", features, "APM vol 2, 15.36.20",
                       f"SEV_FEATURES {sev_features.names(features & ~allowed & ALLOWED_MASK_BITS)} "
                       f"not allowed by ALLOWED_SEV_FEATURES {allowed:#x}")
    vmpl = vmsa["VMPL"]
    vmpl_en = cpu.msr.get(SYSCFG, 0) & (1 << 25)
    if vmpl >= NUM_VMPLS or vmpl and not vmpl_en:
        return _reason("SNP_VMPL", "VMPL", vmpl, "APM vol 2, 15.36.7",
                       f"VMPL {vmpl} needs VMPLEn and a VMPL below {NUM_VMPLS}")
    e = rmp.read(spa)
    if not (rmp.covered(spa) and e.assigned and e.asid == v["GUEST_ASID"] and not e.immutable
            and e.vmsa):
        return _reason("SNP_VMSA_RMP", "VMSA_PA", spa, SEC_SNP,
                       f"the VMSA page must be the guest's (ASID {v['GUEST_ASID']}), mutable and "
                       f"marked VMSA in the RMP; it is {e.owner}, immutable={int(e.immutable)}, "
                       f"VMSA={int(e.vmsa)}")
    return None


__all__ = ["rmpupdate", "rmp_update", "psmash", "rmp_psmash", "pvalidate", "rmpadjust", "check_guest_access", "in_use"]
