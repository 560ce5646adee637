"""SEV-ES in the processor (APM vol 2, 15.35): guest state in the encrypted
VMSA, automatic and non-automatic exits, #VC.

15.35.8 VMRUN: "the hardware loads guest state from the encrypted save state
area indicated by the VMSA Pointer" and additionally "Calculate[s] a
checksum over guest state to verify integrity, Perform[s] a VMLOAD to load
additional guest register state, Load[s] guest GPR state, Load[s] guest FPU
state ... If any part of the VMRUN flow faults or if the integrity checksum
fails to match, a #VMEXIT(VMEXIT_INVALID) is generated."  Only the legacy
host state is saved to the host save area; "The hypervisor itself should
save its desired additional segment state and GPR values to the host save
area since these values will be restored by hardware on a subsequent
VMEXIT."

15.35.9 Automatic exits: hardware saves the guest's GPR, FPU and VMSAVE
state to the VMSA, stores a checksum, then VMLOADs the host's additional
state and loads the host's GPRs from the host save area "using the format
of the expanded VMCB" and "Re-initialize[s] FPU state to their reset
values ... so no guest register state is visible to the hypervisor."

15.35.4-5: the exits of table 15-33 are automatic (AE); every other exit
is non-automatic (NAE) and becomes #VC (vector 29, error code = the exit
code) in the guest.
"""
from ..cpu import fpu_state
from ..cpu.exceptions import CpuException, VC
from . import sev_checks, snp
from .exits import ExitCode
from .vmstate import load_state, save_state
from .vmcb import SAVE_BASE
from .vmsa import VmsaView, BY_NAME as VMSA_FIELDS, GPR_NAMES, X87_REGS, XMM_REGS

PAGE = 0x1000
XSS, TSC_AUX = 0xDA0, 0xC0000103
NPF_RSV = 1 << 3

# Table 15-33, AE exit codes.  An intercept of #VC itself (exception 29) is
# treated as automatic too: the manual only warns that it "would prevent
# proper handling of NAEs by the guest"; turning it into another #VC would
# never end.
AUTOMATIC = frozenset({0x52, 0x60, 0x61, 0x62, 0x63, 0x64, 0x77, 0x78, 0x7F, 0x8F,
                       *range(0x90, 0xA0), 0xA5, 0xA6, int(ExitCode.VMGEXIT),
                       0x40 + VC, int(ExitCode.INVALID), -2, -3, -4})
# ... and those after which "HW Advances RIP".
ADVANCES_RIP = frozenset({0x77, 0x78, 0x8F, *range(0x90, 0xA0), 0xA6, int(ExitCode.VMGEXIT)})


def automatic(code: int, info1: int = 0) -> bool:
    """AE or NAE (table 15-33): a #NPF is automatic "Only if PFCODE[3]=0"."""
    if code == ExitCode.NPF:
        return not info1 & NPF_RSV
    return code in AUTOMATIC


def vc_for(e) -> CpuException:
    """The #VC a non-automatic exit raises in the guest (15.35.5)."""
    from .exits import exit_name
    return CpuException(VC, e.code & 0xFFFFFFFF,
                        detail=f"#VC: non-automatic exit {exit_name(e.code)} in an SEV-ES guest")


# ---------------------------------------------------------------- the guest's view
class GuestState:
    """What VMRUN and #VMEXIT read and write as "the guest state" of an
    SEV-ES guest: control fields in the VMCB, the save area in the VMSA."""
    __slots__ = ("vmcb", "vmsa")

    def __init__(self, vmcb, vmsa_plain: bytearray):
        self.vmcb = vmcb
        self.vmsa = VmsaView(vmsa_plain)

    def _view(self, name):
        return self.vmsa if name in VMSA_FIELDS else self.vmcb

    def __getitem__(self, name):
        return self._view(name)[name]

    def __setitem__(self, name, value):
        self._view(name)[name] = value

    def __contains__(self, name):
        return name in VMSA_FIELDS or name in self.vmcb

    def segment(self, seg):
        return self.vmsa.segment(seg)

    def set_segment(self, seg, *values):
        self.vmsa.set_segment(seg, *values)


def vmsa_spa(cpu, v) -> int:
    """VMCB 108h holds a host physical address, as the hypervisor maps it: a
    C-bit in it (SME) only says how the host reaches the page."""
    pa = v["VMSA_PA"]
    return pa & ~(1 << cpu.c_bit) if cpu.c_bit else pa


def enter(cpu, v):
    """The VMSA of an SEV-ES VMRUN, checked and decrypted: (GuestState, None)
    or (None, InvalidReason)."""
    reason = sev_checks.es_vmsa_checks(v, cpu, vmsa_spa(cpu, v))
    if reason is not None:
        return None, reason
    spa, asid = vmsa_spa(cpu, v), v["GUEST_ASID"]
    engine, bus = cpu.machine.mem_engine, cpu.bus
    plain = bytearray(engine.read(bus.read_bytes, spa, PAGE, asid))
    g = GuestState(v, plain)
    reason = snp.vmsa_checks(cpu, v, spa, g.vmsa)
    if reason is not None:
        return None, reason
    # An SNP-active VMSA is protected by the RMP instead (15.36.12): the
    # guest itself may create one (AP creation), with no checksum.
    if not g.vmsa["SEV_FEATURES"] & 1:
        if not engine.vmsa_intact(spa, plain):
            return None, sev_checks.integrity_reason(spa)
        reason = snp.es_features_check(g.vmsa)
        if reason is not None:
            return None, reason
    return g, None


# ---------------------------------------------------------------- VMRUN
def load_guest(cpu, g: GuestState) -> None:
    """The state a legacy VMRUN does not load: GPRs, the VMLOAD state, FPU,
    DR0-3, XCR0/XSS/TSC_AUX (15.35.8)."""
    s, vmsa = cpu.svm, g.vmsa
    s.vmsa = vmsa.mem.buf
    s.snp = bool(vmsa["SEV_FEATURES"] & 1)
    s.vmpl = vmsa["VMPL"] if s.snp else 0
    if s.snp:
        _snp_tlb(cpu, vmsa)
    for n, name in enumerate(GPR_NAMES):
        if n not in (0, 4):                     # RAX and RSP: the legacy fields
            cpu.regs[n] = vmsa[name]
    load_state(cpu, vmsa)
    cpu.dr[0:4] = [vmsa[f"DR{i}"] for i in range(4)]
    cpu.xcr0 = vmsa["XCR0"]
    cpu.msr[XSS], cpu.msr[TSC_AUX] = vmsa["XSS"], vmsa["TSC_AUX"]
    _load_fpu(cpu, vmsa)


def _snp_tlb(cpu, vmsa) -> None:
    """15.36.15: for SNP-active guests "the hardware detects when the VMSA is
    moved and manages the TLB for that guest automatically", tracking it in
    the VMSA's PCPU_ID; "software may explicitly write PCPU_ID to 0 to force a
    TLB flush on the next VMRUN ... the hardware will set the PCPU_ID field to
    a non-zero value when it flushes the TLB".  svmsim's PCPU_ID is the CPU
    index + 1; the guest's ASID is flushed on this CPU when the VMSA comes
    from another CPU (or PCPU_ID is 0), or when another VMSA of the ASID ran
    here last.  TLB_ID is not used."""
    s = cpu.svm
    here = cpu.index + 1
    last = s.snp_last_vmsa.get(s.asid)
    if vmsa["PCPU_ID"] != here or last != s.vmsa_pa:
        cpu.tlb.flush_asid("snp_vmsa", s.asid)
        vmsa["PCPU_ID"] = here
    s.snp_last_vmsa[s.asid] = s.vmsa_pa


def _load_fpu(cpu, vmsa):
    fpu_state.ensure(cpu)
    buf = vmsa.mem.buf
    cpu.fpu_fcw, cpu.fpu_fsw, cpu.fpu_ftw = vmsa["X87_FCW"], vmsa["X87_FSW"], vmsa["X87_FTW"]
    cpu.fpu_fop = vmsa["X87_FOP"] & 0x7FF
    cpu.fpu_fip, cpu.fpu_fcs = vmsa["X87_RIP"], vmsa["X87_CS"]
    cpu.fpu_fdp, cpu.fpu_fds = vmsa["X87_DP"], vmsa["X87_DS"]
    top = (cpu.fpu_fsw >> 11) & 7
    for i in range(8):                          # stored as ST(0)..ST(7), like FXSAVE
        cpu.fpu_st[(top + i) & 7] = int.from_bytes(buf[X87_REGS + 10 * i:X87_REGS + 10 * i + 10], "little")
    cpu.mxcsr = vmsa["MXCSR"]
    for i in range(16):
        cpu.xmm[i] = int.from_bytes(buf[XMM_REGS + 16 * i:XMM_REGS + 16 * i + 16], "little")


# ---------------------------------------------------------------- #VMEXIT
def exit_view(cpu, v) -> GuestState:
    return GuestState(v, cpu.svm.vmsa)


def save_guest(cpu, g: GuestState) -> None:
    """The rest of the guest's registers into the VMSA (15.35.9)."""
    vmsa = g.vmsa
    for n, name in enumerate(GPR_NAMES):
        if n not in (0, 4):
            vmsa[name] = cpu.regs[n]
    save_state(cpu, vmsa)
    for i in range(4):
        vmsa[f"DR{i}"] = cpu.dr[i]
    vmsa["XCR0"], vmsa["XSS"] = cpu.xcr0, cpu.msr.get(XSS, 0)
    vmsa["TSC_AUX"] = cpu.msr.get(TSC_AUX, 0)
    _save_fpu(cpu, vmsa)


def _save_fpu(cpu, vmsa):
    fpu_state.ensure(cpu)
    buf = vmsa.mem.buf
    vmsa["X87_FCW"], vmsa["X87_FSW"], vmsa["X87_FTW"] = cpu.fpu_fcw, cpu.fpu_fsw, cpu.fpu_ftw
    vmsa["X87_FOP"], vmsa["X87_RIP"], vmsa["X87_CS"] = cpu.fpu_fop, cpu.fpu_fip, cpu.fpu_fcs
    vmsa["X87_DP"], vmsa["X87_DS"] = cpu.fpu_fdp, cpu.fpu_fds
    top = (cpu.fpu_fsw >> 11) & 7
    for i in range(8):
        buf[X87_REGS + 10 * i:X87_REGS + 10 * i + 10] = cpu.fpu_st[(top + i) & 7].to_bytes(10, "little")
    vmsa["MXCSR"] = cpu.mxcsr
    for i in range(16):
        buf[XMM_REGS + 16 * i:XMM_REGS + 16 * i + 16] = cpu.xmm[i].to_bytes(16, "little")


def write_back(cpu) -> None:
    """Encrypt the VMSA with the guest's key and store its checksum."""
    s = cpu.svm
    engine, bus = cpu.machine.mem_engine, cpu.bus
    engine.write(bus.read_bytes, bus.write_bytes, s.vmsa_pa, bytes(s.vmsa), s.asid)
    engine.seal_vmsa(s.vmsa_pa, s.vmsa)


def restore_host(cpu, hpage: bytearray) -> None:
    """After the legacy host reload: GPRs and the VMLOAD state from the host
    save area in the expanded (VMSA) format, everything else re-initialized
    (15.35.9).  svmsim's reading of "re-initialized": FPU, DR0-3, DR6 and CR2
    to their reset values; XCR0 from the host save area when it is a valid
    XCR0 (x87 bit set), else its reset value 1."""
    h = VmsaView(hpage, SAVE_BASE)
    for n, name in enumerate(GPR_NAMES):
        if n not in (0, 4):
            cpu.regs[n] = h[name]
    load_state(cpu, h)
    xcr0 = h["XCR0"]
    cpu.xcr0 = xcr0 if xcr0 & 1 else 1
    cpu.msr[XSS], cpu.msr[TSC_AUX] = h["XSS"], h["TSC_AUX"]
    fpu_state.reset(cpu)
    cpu.dr[0:4] = [0, 0, 0, 0]
    cpu.dr[6] = 0xFFFF0FF0
    cpu.cr2 = 0


__all__ = ["automatic", "vc_for", "enter", "load_guest", "save_guest", "write_back",
           "restore_host", "GuestState"]
