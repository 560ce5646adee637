"""Model-specific registers (AMD APM vol 2, appendix A; numbers as in Linux
arch/x86/include/asm/msr-index.h).

``TABLE`` maps an MSR index to ``(name, read, write)``: ``read(cpu, idx)``
returns the value, ``write(cpu, idx, value)`` applies it or raises #GP(0).
``rdmsr``/``wrmsr`` are what RDMSR/WRMSR (and an SVM MSR-intercept check)
call; an index without an entry raises #GP(0), as the hardware does for an
unimplemented MSR.

Plain registers live in ``cpu.msr`` (a dict by index) so other modules read
them there: SYSCALL/SYSRET use STAR/LSTAR/CSTAR/SFMASK (C000_0081h-84h),
SWAPGS KERNEL_GS_BASE (C000_0102h), SYSENTER 174h-176h, the SVM code VM_CR
and VM_HSAVE_PA, the SEV code SYSCFG (C001_0010h).  EFER is ``cpu.efer``,
FS/GS base are the hidden segment bases, TSC is virtual time plus a per-CPU
offset (``cpu.tsc_offset``).

Intel-only MSRs (IA32_TSC_ADJUST 3Bh, IA32_MISC_ENABLE 1A0h, IA32_FEATURE_CONTROL
3Ah, MPERF/APERF without EffFreq) do not exist on the AMD profiles: #GP.
TSC_DEADLINE (6E0h) exists only if the profile reports it (AMD parts do not).
"""
from .exceptions import gp
from .segments import FS, GS
from .state import (EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME, EFER_FFXSR, EFER_TCE,
                    CR0_PG)

MASK64 = (1 << 64) - 1

# -- MSR numbers -------------------------------------------------------------
TSC, APIC_BASE, SPEC_CTRL, PRED_CMD, PATCH_LEVEL = 0x10, 0x1B, 0x48, 0x49, 0x8B
MTRRCAP, SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP = 0xFE, 0x174, 0x175, 0x176
MCG_CAP, MCG_STATUS, MCG_CTL = 0x179, 0x17A, 0x17B
DEBUGCTL, LBR_FROM, LBR_TO, LER_FROM, LER_TO = 0x1D9, 0x1DB, 0x1DC, 0x1DD, 0x1DE
MTRR_PHYS0, PAT, MTRR_DEF_TYPE, TSC_DEADLINE = 0x200, 0x277, 0x2FF, 0x6E0
MTRR_FIXED = (0x250, 0x258, 0x259) + tuple(range(0x268, 0x270))
MC0_CTL = 0x400
X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF
EFER, STAR, LSTAR, CSTAR, SFMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX = 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103
PERF_CTL0, PERF_CTR0 = 0xC0010000, 0xC0010004
SYSCFG, HWCR, TOP_MEM, TOP_MEM2, NB_CFG = 0xC0010010, 0xC0010015, 0xC001001A, 0xC001001D, 0xC001001F
MMIO_CONF_BASE = 0xC0010058
VM_CR, VM_HSAVE_PA, SVM_KEY = 0xC0010114, 0xC0010117, 0xC0010118
OSVW_ID_LENGTH, OSVW_STATUS = 0xC0010140, 0xC0010141
PERF_CTL_EXT = 0xC0010200          # C001_0200h..020Bh: CTL0, CTR0, CTL1, CTR1, ...

VM_CR_DPD, VM_CR_R_INIT, VM_CR_DIS_A20M, VM_CR_LOCK, VM_CR_SVMDIS = 1, 2, 4, 8, 16
HWCR_SMMLOCK = 1
HWCR_MCSTATUSWREN = 1 << 18
HWCR_TSCFREQSEL = 1 << 24            # read-as-one on family 17h+ (PPR 19h, MSRC001_0015)
SYSCFG_MEM_ENCRYPTION_MOD_EN = 1 << 23
SYSCFG_SNP_EN, SYSCFG_VMPL_EN = 1 << 24, 1 << 25

PAT_RESET = 0x0007040600070406


# -- helpers ------------------------------------------------------------------
def _canonical(cpu, v: int) -> bool:
    bits = cpu.machine.profile.lin_bits
    top = v >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def _need_canonical(cpu, idx, v):
    if not _canonical(cpu, v):
        raise gp(0, f"WRMSR {idx:#x}: non-canonical address {v:#x}")


def _maxphy(cpu) -> int:
    return getattr(cpu, "maxphyaddr", None) or cpu.machine.profile.phys_bits


def _has(cpu, feature) -> bool:
    from .cpuid import has
    return has(cpu, feature)


def plain_read(cpu, idx):
    return cpu.msr.get(idx, DEFAULTS.get(idx, 0))


def plain_write(cpu, idx, value):
    cpu.msr[idx] = value


def read_only_write(cpu, idx, value):
    raise gp(0, f"WRMSR to read-only MSR {idx:#x}")


def write_only_read(cpu, idx):
    raise gp(0, f"RDMSR of write-only MSR {idx:#x}")


def masked_write(mask, name=""):
    """A plain register whose bits outside ``mask`` are reserved (#GP if set)."""
    def write(cpu, idx, value):
        if value & ~mask:
            raise gp(0, f"WRMSR {idx:#x}{' ' + name if name else ''}: reserved bits {value & ~mask:#x}")
        cpu.msr[idx] = value
    return write


# -- EFER (APM vol 2, 3.1.7) ----------------------------------------------------
def efer_read(cpu, idx):
    return cpu.efer


def efer_writable(cpu) -> int:
    m = EFER_SCE | EFER_LME | EFER_NXE
    if _has(cpu, "svm") and not plain_read(cpu, VM_CR) & VM_CR_SVMDIS:
        m |= EFER_SVME
    if _has(cpu, "ffxsr"):
        m |= EFER_FFXSR
    if _has(cpu, "tce"):
        m |= EFER_TCE
    return m


def efer_write(cpu, idx, value):
    """MBZ bits and unsupported features raise #GP; LMA is read-only (writes
    to it are ignored, the processor sets it); changing LME while paging is
    enabled raises #GP (APM vol 2, 14.6.1)."""
    value &= ~EFER_LMA
    if cpu.svm_guest:
        value = cpu.hooks.guest_efer(cpu, value)
    bad = value & ~efer_writable(cpu)
    if bad:
        raise gp(0, f"WRMSR EFER: reserved or unsupported bits {bad:#x}")
    old = cpu.efer
    if (value ^ old) & EFER_LME and cpu.cr0 & CR0_PG:
        raise gp(0, "WRMSR EFER: LME changed while paging is enabled")
    new = value | (old & EFER_LMA)
    cpu.efer = new
    if (new ^ old) & EFER_NXE:
        # NX is computed into cached translations: flushing keeps the rule
        # "cached entries obey the NXE they were walked with" from surprising.
        cpu.tlb.flush_all("efer.nxe")
    cpu.update_mode()


# -- segment bases --------------------------------------------------------------
def fs_read(cpu, idx):
    return cpu.segs[FS].base


def gs_read(cpu, idx):
    return cpu.segs[GS].base


def segbase_write(cpu, idx, value):
    """FS.base/GS.base: must be canonical (APM vol 2, 4.5.3)."""
    _need_canonical(cpu, idx, value)
    cpu.segs[FS if idx == FS_BASE else GS].base = value
    cpu.update_mode()


def canonical_write(cpu, idx, value):
    """KERNEL_GS_BASE, LSTAR, CSTAR hold linear addresses: non-canonical -> #GP."""
    _need_canonical(cpu, idx, value)
    cpu.msr[idx] = value


# -- TSC ------------------------------------------------------------------------
def tsc_value(cpu, ahead: int = 0) -> int:
    """TSC = the machine's virtual-time counter + this CPU's offset; ``ahead``
    instructions of the current block have retired (RDTSC passes its index)."""
    tsc = cpu.machine.now_ns(cpu) + ahead + cpu.tsc_offset     # machine.tsc, one call less
    if cpu.svm_guest:
        tsc = cpu.hooks.tsc(cpu, tsc)      # e.g. TSC ratio and offset (APM 15.30.5)
    return tsc & MASK64


def tsc_read(cpu, idx):
    return tsc_value(cpu)


def tsc_write(cpu, idx, value):
    """WRMSR 10h sets the counter: keep the difference as a per-CPU offset.

    The local APIC converts TSC <-> virtual ns through cpu.tsc_from_ns /
    ns_from_tsc (svmsim.devices.apic.tsc_now); with an offset they must agree
    with RDTSC.  This assumes machine.tsc(cpu) counts virtual ns (1 GHz).
    """
    offset = value - cpu.machine.tsc(cpu)
    cpu.tsc_offset = offset
    cpu.tsc_from_ns = lambda ns, c=cpu: (ns + c.tsc_offset) & MASK64
    cpu.ns_from_tsc = lambda t, c=cpu: t - c.tsc_offset


def tsc_aux_write(cpu, idx, value):
    if value >> 32:
        raise gp(0, "WRMSR TSC_AUX: bits 63:32 are reserved")
    cpu.msr[idx] = value


# -- local APIC -------------------------------------------------------------------
def apic_base_read(cpu, idx):
    lapic = cpu.lapic
    if lapic is not None:
        return lapic.read_apic_base()
    default = 0xFEE00800 | (0x100 if cpu.index == 0 else 0)
    return cpu.msr.get(idx, default)


def apic_base_write(cpu, idx, value):
    lapic = cpu.lapic
    if lapic is not None:
        if not lapic.write_apic_base(value):
            raise gp(0, f"WRMSR APIC_BASE {value:#x} refused by the local APIC")
        return
    mask = (((1 << _maxphy(cpu)) - 1) & ~0xFFF) | 0x800 | 0x100
    if value & ~mask:
        raise gp(0, "WRMSR APIC_BASE: reserved bits")
    cpu.msr[idx] = (value & ~0x100) | (apic_base_read(cpu, idx) & 0x100)


def x2apic_read(cpu, idx):
    v = cpu.lapic.msr_read(idx) if cpu.lapic is not None else None
    if v is None:
        raise gp(0, f"RDMSR x2APIC {idx:#x}: not in x2APIC mode or not readable")
    return v


def x2apic_write(cpu, idx, value):
    if cpu.lapic is None or not cpu.lapic.msr_write(idx, value):
        raise gp(0, f"WRMSR x2APIC {idx:#x}: not in x2APIC mode or not writable")


def tsc_deadline_read(cpu, idx):
    if cpu.lapic is None or not _has(cpu, "tsc_deadline"):
        raise gp(0, "TSC_DEADLINE MSR not present")
    return cpu.lapic.read_tsc_deadline()


def tsc_deadline_write(cpu, idx, value):
    if cpu.lapic is None or not _has(cpu, "tsc_deadline"):
        raise gp(0, "TSC_DEADLINE MSR not present")
    cpu.lapic.write_tsc_deadline(value)


# -- memory types (APM vol 2, 7.7-7.8) ----------------------------------------------
_MTYPES = (0, 1, 4, 5, 6)           # UC WC WT WP WB
_PAT_TYPES = (0, 1, 4, 5, 6, 7)     # ... and UC-


def pat_write(cpu, idx, value):
    for i in range(8):
        if (value >> (8 * i)) & 0xFF not in _PAT_TYPES:
            raise gp(0, f"WRMSR PAT: entry {i} has an invalid memory type")
    cpu.msr[idx] = value
    cpu.tlb.drop_fast()


def mtrr_fixed_write(cpu, idx, value):
    for i in range(8):
        if (value >> (8 * i)) & 0xFF not in _MTYPES:
            raise gp(0, f"WRMSR fixed MTRR {idx:#x}: invalid memory type in byte {i}")
    cpu.msr[idx] = value


def mtrr_def_write(cpu, idx, value):
    if value & ~0xCFF or value & 0xFF not in _MTYPES:
        raise gp(0, "WRMSR MTRRdefType: reserved bits or invalid type")
    cpu.msr[idx] = value


def mtrr_var_write(cpu, idx, value):
    addr = ((1 << _maxphy(cpu)) - 1) & ~0xFFF
    if idx & 1:                                     # PhysMask: valid bit 11
        bad = value & ~(addr | 0x800)
    else:                                           # PhysBase: type 7:0
        bad = value & ~(addr | 0xFF)
        if value & 0xFF not in _MTYPES:
            bad |= value & 0xFF
    if bad:
        raise gp(0, f"WRMSR variable MTRR {idx:#x}: reserved bits or invalid type")
    cpu.msr[idx] = value


# -- debug (APM vol 2, 13.1.3) --------------------------------------------------------
def debugctl_write(cpu, idx, value):
    """LBR (bit 0), BTF (bit 1), PB0-3 (5:2); the rest is reserved."""
    if value & ~0x3F:
        raise gp(0, "WRMSR DEBUGCTL: reserved bits")
    cpu.msr[idx] = value
    # LBR recording and BTF run the CPU one instruction at a time (Engine.step).
    cpu.debugctl = value & 3


# -- performance counters ------------------------------------------------------------
def perf_ctr_write(cpu, idx, value):
    cpu.msr[idx] = value & ((1 << 48) - 1)           # 48-bit counters


def perf_ctl_write(cpu, idx, value):
    """PERF_CTLn (APM vol 2, 13.2.1): bits 63:42 and 39:36 are reserved."""
    if value & ~((3 << 40) | (0xF << 32) | 0xFFFFFFFF):
        raise gp(0, f"WRMSR PERF_CTL {idx:#x}: reserved bits")
    cpu.msr[idx] = value


# -- SVM/system configuration (APM vol 2, 15.30) -----------------------------------------
def vm_cr_write(cpu, idx, value):
    """VM_CR: bits 4:0 only.  While LOCK is set, LOCK and SVMDIS ignore
    writes; setting SVMDIS while EFER.SVME=1 raises #GP."""
    if value & ~0x1F:
        raise gp(0, "WRMSR VM_CR: reserved bits")
    old = plain_read(cpu, idx)
    if old & VM_CR_LOCK:
        value = (value & ~(VM_CR_LOCK | VM_CR_SVMDIS)) | (old & (VM_CR_LOCK | VM_CR_SVMDIS))
    if value & VM_CR_SVMDIS and cpu.efer & EFER_SVME:
        raise gp(0, "WRMSR VM_CR: SVMDIS set while EFER.SVME=1")
    cpu.msr[idx] = value


def init_msrs(cpu) -> None:
    """What INIT changes among the MSRs it otherwise keeps: VM_CR.SVMDIS "is
    cleared by INIT when LOCK is cleared to 0" (APM vol 2, 15.30.1)."""
    vm_cr = cpu.msr.get(VM_CR)
    if vm_cr is not None and not vm_cr & VM_CR_LOCK:
        cpu.msr[VM_CR] = vm_cr & ~VM_CR_SVMDIS


def svm_key_read(cpu, idx):
    return 0                                          # reads return zero (APM 15.31)


def svm_key_write(cpu, idx, value):
    """SVM_KEY: with VM_CR.LOCK clear, a write sets the key; with LOCK set,
    writing the same non-zero key clears LOCK (APM vol 2, 15.31)."""
    key = cpu.msr.get(idx, 0)
    vm_cr = plain_read(cpu, VM_CR)
    if not vm_cr & VM_CR_LOCK:
        cpu.msr[idx] = value
    elif key and value == key:
        cpu.msr[VM_CR] = vm_cr & ~VM_CR_LOCK


SMM_KEY = 0xC0010119


def smm_key_write(cpu, idx, value):
    """SMM_KEY (APM vol 2, 15.32.2): "When SmmLock is zero, writes to SMM_KEY
    MSR set the 64-bit SMM Key value.  When SmmLock is one, writes to SMM_KEY
    MSR compare the written value to the SMM Key value; if the values match
    and are non-zero, the SmmLock bit is cleared"; otherwise ignored.  Reads
    return zero (svm_key_read)."""
    key = cpu.msr.get(idx, 0)
    hwcr = cpu.msr.get(HWCR, 0)
    if not hwcr & HWCR_SMMLOCK:
        cpu.msr[idx] = value
    elif key and value == key:
        cpu.msr[HWCR] = hwcr & ~HWCR_SMMLOCK


def ignne_write(cpu, idx, value):
    """IGNNE (APM vol 2, 15.30.2): "Bit 0 specifies the current value of
    IGNNE; all other bits are MBZ"."""
    if value >> 1:
        raise gp(0, f"WRMSR IGNNE {value:#x}: bits 63:1 are MBZ")
    cpu.msr[idx] = value


SEV_STATUS = 0xC0010131
GHCB = 0xC0010130


def ghcb_read(cpu, idx):
    """GHCB MSR (APM vol 2, 15.35.7): the guest-physical address of the GHCB;
    "can be read/written only in guest mode, attempts to access this MSR in
    host mode will result in a #GP"; VMRUN/#VMEXIT load and save it."""
    if not cpu.svm_guest or not (cpu.machine.profile.extra.get("sev") or {}).get("es"):
        raise gp(0, "GHCB MSR accessed outside guest mode")
    return cpu.msr.get(idx, 0)


def ghcb_write(cpu, idx, value):
    ghcb_read(cpu, idx)
    cpu.msr[idx] = value & MASK64


def sev_status_read(cpu, idx):
    """SEV_STATUS (APM vol 2, 15.34.10): which memory-encryption features
    are active for the running guest (0 outside a guest); read-only."""
    if not cpu.machine.profile.extra.get("sev"):
        raise gp(0, "RDMSR SEV_STATUS: no SEV on this CPU")
    return cpu.hooks.sev_status(cpu) if cpu.svm_guest else 0


TSC_RATIO = 0xC0000104
TSC_RATIO_ONE = 1 << 32                # 8.32 fixed point; the reset value is 1.0


def tsc_ratio_read(cpu, idx):
    if not _has(cpu, "svm"):
        raise gp(0, "RDMSR TSC_RATIO: SVM TSC ratio not supported")
    return cpu.msr.get(idx, TSC_RATIO_ONE)


def tsc_ratio_write(cpu, idx, value):
    """TSC_RATIO (APM vol 2, 15.30.5): integer part 39:32, fraction 31:0;
    bits 63:40 are reserved and must be zero."""
    if not _has(cpu, "svm") or value >> 40:
        raise gp(0, f"WRMSR TSC_RATIO {value:#x}: reserved bits 63:40 must be zero")
    cpu.msr[idx] = value


def hsave_write(cpu, idx, value):
    """VM_HSAVE_PA: 4 KiB aligned and within the physical address width; with
    SEV-SNP on it "must point to a hypervisor-owned page. If this check
    fails, the WRMSR will fail with a #GP(0)" (APM vol 2, 15.36.12)."""
    if cpu.machine.rmp.enabled and not cpu.machine.rmp.hypervisor_owned(value & ~0xFFF):
        raise gp(0, f"WRMSR VM_HSAVE_PA {value:#x}: the page is not hypervisor-owned (RMP)")
    if value & 0xFFF or value >> _maxphy(cpu):
        raise gp(0, f"WRMSR VM_HSAVE_PA {value:#x}: not page aligned or beyond MAXPHYADDR")
    cpu.msr[idx] = value


def hwcr_read(cpu, idx):
    return cpu.msr.get(idx, 0) | HWCR_TSCFREQSEL


def hwcr_write(cpu, idx, value):
    """HWCR: SmmLock (bit 0) is sticky once set."""
    if value >> 32:
        raise gp(0, "WRMSR HWCR: reserved bits 63:32")
    old = cpu.msr.get(idx, 0)
    cpu.msr[idx] = (value | (old & HWCR_SMMLOCK)) & ~HWCR_TSCFREQSEL


def syscfg_write(cpu, idx, value):
    """SYSCFG: bit 23 MemEncryptionModEn turns on SME/SEV address handling
    (APM vol 2, 7.10.1) on CPUs that have it (CPUID 8000_001F); bits 24
    SecureNestedPagingEn and 25 VMPLEn turn on SEV-SNP (15.36.2): "Attempts
    to write the SYSCFG MSR after SecureNestedPagingEn is set to 1 will be
    ignored".  svmsim's readings where the manual names no fault: setting
    SNPEn without MemEncryptionModEn, or with RMP_BASE / RMP_END + 1 not
    8 KiB aligned (15.36.4), is #GP(0)."""
    if value >> 32:
        raise gp(0, "WRMSR SYSCFG: reserved bits 63:32")
    old = cpu.msr.get(idx, 0)
    if old & SYSCFG_SNP_EN:
        return
    if value & (SYSCFG_SNP_EN | SYSCFG_VMPL_EN) and not _snp(cpu):
        raise gp(0, "WRMSR SYSCFG: SecureNestedPagingEn/VMPLEn on a CPU without SEV-SNP")
    if value & SYSCFG_SNP_EN:
        _check_rmp_config(cpu, value)
    cpu.msr[idx] = value
    if (old ^ value) & SYSCFG_MEM_ENCRYPTION_MOD_EN:
        cpu.set_mem_encryption(bool(value & SYSCFG_MEM_ENCRYPTION_MOD_EN))
    if value & SYSCFG_SNP_EN:
        rmp = cpu.machine.rmp
        if not rmp.enabled:
            rmp.enable(cpu.msr.get(RMP_BASE, 0), cpu.msr.get(RMP_END, 0))
        cpu.tlb.drop_fast()


def _snp(cpu) -> bool:
    return bool((cpu.machine.profile.extra.get("sev") or {}).get("snp"))


def _check_rmp_config(cpu, value):
    if not value & SYSCFG_MEM_ENCRYPTION_MOD_EN:
        raise gp(0, "WRMSR SYSCFG: SecureNestedPagingEn needs MemEncryptionModEn (15.36.2)")
    base, end = cpu.msr.get(RMP_BASE, 0), cpu.msr.get(RMP_END, 0)
    if base % 0x2000 or (end + 1) % 0x2000 or end <= base:
        raise gp(0, f"WRMSR SYSCFG: RMP_BASE {base:#x} / RMP_END {end:#x} must bound an RMP "
                    "with RMP_BASE and RMP_END + 1 8 KiB aligned (15.36.4)")
    rmp = cpu.machine.rmp
    if rmp.enabled and (rmp.base, rmp.end) != (base, end):
        raise gp(0, "WRMSR SYSCFG: RMP_BASE/RMP_END differ from another CPU's (15.36.4)")


RMP_BASE, RMP_END = 0xC0010132, 0xC0010133


def rmp_msr_read(cpu, idx):
    if not _snp(cpu):
        raise gp(0, "RMP_BASE/RMP_END: no SEV-SNP on this CPU")
    return cpu.msr.get(idx, 0)


def rmp_msr_write(cpu, idx, value):
    """RMP_BASE / RMP_END (15.36.4): programmed before SNP is enabled; svmsim
    refuses changes once SecureNestedPagingEn is set (#GP(0))."""
    rmp_msr_read(cpu, idx)
    if cpu.msr.get(SYSCFG, 0) & SYSCFG_SNP_EN:
        raise gp(0, "WRMSR RMP_BASE/RMP_END after SecureNestedPagingEn is set")
    if value >> 52 or value & 0xFFF and idx == RMP_BASE:
        raise gp(0, f"WRMSR {idx:#x}: {value:#x} is not a valid address")
    cpu.msr[idx] = value


# -- machine check (APM vol 2, 9.3) ----------------------------------------------------
def mcg_cap_read(cpu, idx):
    return cpu.machine.profile.mcg_banks | (1 << 8)     # Count | MCG_CTL_P


def mci_status_write(cpu, idx, value):
    """MCi_STATUS: only 0 unless HWCR.McStatusWrEn (APM vol 2, 9.3.2)."""
    if value and not plain_read(cpu, HWCR) & HWCR_MCSTATUSWREN:
        raise gp(0, "WRMSR MCi_STATUS: non-zero value without HWCR.McStatusWrEn")
    cpu.msr[idx] = value


# -- speculation control (AMD "Speculative Store Bypass Disable" / IBRS papers) ----------
def spec_ctrl_read(cpu, idx):
    if not (_has(cpu, "ibrs") or _has(cpu, "stibp") or _has(cpu, "amd_ssbd")):
        raise gp(0, "SPEC_CTRL not present")
    return cpu.msr.get(idx, 0)


def spec_ctrl_write(cpu, idx, value):
    spec_ctrl_read(cpu, idx)
    if value & ~0x7:
        raise gp(0, "WRMSR SPEC_CTRL: reserved bits")
    cpu.msr[idx] = value


def pred_cmd_write(cpu, idx, value):
    if not _has(cpu, "ibpb") or value & ~1:
        raise gp(0, "WRMSR PRED_CMD: not present or reserved bits")


def patch_level_read(cpu, idx):
    return cpu.machine.profile.patch_level


def ignore_write(cpu, idx, value):
    pass


def osvw_read(cpu, idx):
    if not _has(cpu, "osvw"):
        raise gp(0, "OSVW MSRs not present")
    return cpu.msr.get(idx, 0)


# -- the table --------------------------------------------------------------------------------
TABLE = {
    TSC: ("TSC", tsc_read, tsc_write),
    APIC_BASE: ("APIC_BASE", apic_base_read, apic_base_write),
    SPEC_CTRL: ("SPEC_CTRL", spec_ctrl_read, spec_ctrl_write),
    PRED_CMD: ("PRED_CMD", write_only_read, pred_cmd_write),
    PATCH_LEVEL: ("PATCH_LEVEL", patch_level_read, ignore_write),
    MTRRCAP: ("MTRRcap", plain_read, read_only_write),
    SYSENTER_CS: ("SYSENTER_CS", plain_read, masked_write(0xFFFF)),
    SYSENTER_ESP: ("SYSENTER_ESP", plain_read, plain_write),
    SYSENTER_EIP: ("SYSENTER_EIP", plain_read, plain_write),
    MCG_CAP: ("MCG_CAP", mcg_cap_read, read_only_write),
    MCG_STATUS: ("MCG_STATUS", plain_read, masked_write(0x7)),
    MCG_CTL: ("MCG_CTL", plain_read, plain_write),
    DEBUGCTL: ("DEBUGCTL", plain_read, debugctl_write),
    LBR_FROM: ("LastBranchFromIP", plain_read, read_only_write),
    LBR_TO: ("LastBranchToIP", plain_read, read_only_write),
    LER_FROM: ("LastExceptionFromIP", plain_read, read_only_write),
    LER_TO: ("LastExceptionToIP", plain_read, read_only_write),
    PAT: ("PAT", plain_read, pat_write),
    MTRR_DEF_TYPE: ("MTRRdefType", plain_read, mtrr_def_write),
    TSC_DEADLINE: ("TSC_DEADLINE", tsc_deadline_read, tsc_deadline_write),
    EFER: ("EFER", efer_read, efer_write),
    STAR: ("STAR", plain_read, plain_write),
    LSTAR: ("LSTAR", plain_read, canonical_write),
    CSTAR: ("CSTAR", plain_read, canonical_write),
    SFMASK: ("SFMASK", plain_read, masked_write(0xFFFFFFFF)),
    FS_BASE: ("FS_BASE", fs_read, segbase_write),
    GS_BASE: ("GS_BASE", gs_read, segbase_write),
    KERNEL_GS_BASE: ("KERNEL_GS_BASE", plain_read, canonical_write),
    TSC_AUX: ("TSC_AUX", plain_read, tsc_aux_write),
    SYSCFG: ("SYSCFG", plain_read, syscfg_write),
    RMP_BASE: ("RMP_BASE", rmp_msr_read, rmp_msr_write),
    RMP_END: ("RMP_END", rmp_msr_read, rmp_msr_write),
    HWCR: ("HWCR", hwcr_read, hwcr_write),
    TOP_MEM: ("TOP_MEM", plain_read, masked_write(0xFFFFFF800000)),
    TOP_MEM2: ("TOP_MEM2", plain_read, masked_write(0xFFFFFF800000)),
    NB_CFG: ("NB_CFG", plain_read, plain_write),
    MMIO_CONF_BASE: ("MMIO_CONF_BASE", plain_read, plain_write),
    VM_CR: ("VM_CR", plain_read, vm_cr_write),
    VM_HSAVE_PA: ("VM_HSAVE_PA", plain_read, hsave_write),
    TSC_RATIO: ("TSC_RATIO", tsc_ratio_read, tsc_ratio_write),
    SEV_STATUS: ("SEV_STATUS", sev_status_read, read_only_write),
    GHCB: ("GHCB", ghcb_read, ghcb_write),
    SVM_KEY: ("SVM_KEY", svm_key_read, svm_key_write),
    SMM_KEY: ("SMM_KEY", svm_key_read, smm_key_write),
    0xC0010115: ("IGNNE", plain_read, ignne_write),
    OSVW_ID_LENGTH: ("OSVW_ID_LENGTH", osvw_read, plain_write),
    OSVW_STATUS: ("OSVW_STATUS", osvw_read, plain_write),
    0xDA0: ("IA32_XSS", plain_read, masked_write(0)),   # no supervisor XSAVE component exists
}
for _i in range(8):
    TABLE[MTRR_PHYS0 + _i * 2] = (f"MTRRphysBase{_i}", plain_read, mtrr_var_write)
    TABLE[MTRR_PHYS0 + _i * 2 + 1] = (f"MTRRphysMask{_i}", plain_read, mtrr_var_write)
for _idx in MTRR_FIXED:
    TABLE[_idx] = (f"MTRRfix{_idx:#x}", plain_read, mtrr_fixed_write)


def _snp_frozen(name, write):
    """15.36.2: "After SecureNestedPagingEn is set to 1 in MSR C001_0010,
    certain MSRs may no longer be modified. This includes the fixed range
    MTRR registers ..., the IORR registers ..., the TOP_MEM and TOP_MEM2
    registers ..., the SMM_KEY register ... attempts to write the other MSRs
    mentioned will result in #GP(0)" (svmsim has no IORRs: #GP anyway)."""
    def frozen(cpu, idx, value):
        if cpu.msr.get(SYSCFG, 0) & SYSCFG_SNP_EN:
            raise gp(0, f"WRMSR {name} after SecureNestedPagingEn is set")
        write(cpu, idx, value)
    return frozen


for _idx in (TOP_MEM, TOP_MEM2, SMM_KEY, *MTRR_FIXED):
    TABLE[_idx] = TABLE[_idx][:2] + (_snp_frozen(TABLE[_idx][0], TABLE[_idx][2]),)
for _i in range(4):
    TABLE[PERF_CTL0 + _i] = (f"PERF_CTL{_i}", plain_read, perf_ctl_write)
    TABLE[PERF_CTR0 + _i] = (f"PERF_CTR{_i}", plain_read, perf_ctr_write)
for _i in range(6):
    TABLE[PERF_CTL_EXT + 2 * _i] = (f"PERF_CTL{_i}(ext)", plain_read, perf_ctl_write)
    TABLE[PERF_CTL_EXT + 2 * _i + 1] = (f"PERF_CTR{_i}(ext)", plain_read, perf_ctr_write)
for _idx, _name in ((0xC0010061, "PStateCurLim"), (0xC0010062, "PStateCtl"), (0xC0010063, "PStateStat"),
                    (0xC0011020, "LS_CFG"), (0xC0011021, "IC_CFG"), (0xC0011022, "DC_CFG"),
                    (0xC0011023, "TW_CFG"), (0xC0011029, "DE_CFG"), (0xC001102A, "BU_CFG2")):
    TABLE[_idx] = (_name, plain_read, plain_write)
for _i in range(8):
    TABLE[0xC0010064 + _i] = (f"PStateDef{_i}", plain_read, plain_write)
from .smm import MSRS as _SMM_MSRS   # noqa: E402  (SMM_BASE, SMM_ADDR, SMM_MASK, SMM_CTL; smm.py)
TABLE.update(_SMM_MSRS)

# Reset values of plain registers (read when never written).
DEFAULTS = {
    PAT: PAT_RESET,
    MTRRCAP: 0x508,                  # VCNT=8, FIX, WC (APM vol 2, 7.7.1)
    OSVW_ID_LENGTH: 0,
    0xC0010064: (1 << 63),           # P-state 0 enabled
}

# MSRs that exist only in some profiles.
_PER_FEATURE = {PERF_CTL_EXT + i: "perfctr_core" for i in range(12)}
_PER_FEATURE[0xDA0] = "xsaves"


def _mc_bank_entry(cpu, idx):
    banks = cpu.machine.profile.mcg_banks
    if MC0_CTL <= idx < MC0_CTL + 4 * banks:
        if (idx - MC0_CTL) % 4 == 1:
            return ("MCi_STATUS", plain_read, mci_status_write)
        return ("MCi", plain_read, plain_write)
    return None


def canonical_index(cpu, idx):
    """With PerfCtrExtCore the legacy PERF_CTL0-3/PERF_CTR0-3 (C001_0000h-07h)
    alias the first four counters of C001_0200h-0207h (APM vol 2, 13.2.1)."""
    if PERF_CTL0 <= idx < PERF_CTL0 + 8 and _has(cpu, "perfctr_core"):
        n = idx - PERF_CTL0
        return PERF_CTL_EXT + (2 * n if n < 4 else 2 * (n - 4) + 1)
    return idx


def lookup(cpu, idx):
    """(name, read, write) of MSR ``idx`` on this CPU, or None (#GP)."""
    e = cpu.hooks.msr_entry(cpu, idx)
    if e is not None:
        return e
    e = TABLE.get(idx)
    if e is not None:
        feat = _PER_FEATURE.get(idx)
        if feat is not None and not _has(cpu, feat):
            return None
        return e
    if X2APIC_FIRST <= idx <= X2APIC_LAST:
        return ("x2APIC", x2apic_read, x2apic_write)
    return _mc_bank_entry(cpu, idx)


def rdmsr(cpu, idx: int) -> int:
    """RDMSR semantics without the privilege check; raises #GP(0)."""
    idx = canonical_index(cpu, idx & 0xFFFFFFFF)
    e = lookup(cpu, idx)
    if e is None:
        raise gp(0, f"RDMSR of unimplemented MSR {idx:#x}")
    return e[1](cpu, idx) & MASK64


def wrmsr(cpu, idx: int, value: int) -> None:
    """WRMSR semantics without the privilege check; raises #GP(0)."""
    idx = canonical_index(cpu, idx & 0xFFFFFFFF)
    e = lookup(cpu, idx)
    if e is None:
        raise gp(0, f"WRMSR to unimplemented MSR {idx:#x}")
    e[2](cpu, idx, value & MASK64)
