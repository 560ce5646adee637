"""Interrupts, NMIs, INIT, exceptions and shutdown while a guest runs.

* Exception intercepts (APM vol 2, 15.12): checked when an exception is about
  to be delivered through the guest IDT; EXITINFO1 is the error code (0 if
  none), EXITINFO2 the faulting address of a #PF.  CR2 is not written.
* EXITINTINFO (15.7.2): an intercept taken while an event was being
  delivered reports that event.
* Physical interrupts (15.21.1): with V_INTR_MASKING = 1 the host's
  RFLAGS.IF (as at VMRUN) masks them and the guest's IF masks only virtual
  interrupts; with 0, the guest's IF masks both.  An intercepted INTR is not
  acknowledged: it stays pending for the host.
* vNMI (15.21.10) and the virtual GIF (15.33.2): V_NMI_PENDING is taken when
  V_NMI_BLOCKING is 0; with V_GIF_ENABLE the guest's STGI/CLGI set V_GIF,
  and V_GIF = 0 holds virtual NMIs and virtual interrupts.
* Virtual interrupts (15.21.2-4): V_IRQ is taken when the guest's IF is 1,
  no interrupt shadow, and V_IGN_TPR = 1 or V_INTR_PRIO > V_TPR; taking it
  clears V_IRQ; the VINTR intercept exits instead of taking it.
"""
from ..cpu.exceptions import PF, NMI as NMI_VECTOR
from ..cpu.flags import IF
from ..cpu import interrupts
from . import avic, exits, features
from .exits import ExitCode
from .state import VmExit

MISC1 = 3
BIT_INTR, BIT_NMI, BIT_SMI, BIT_INIT, BIT_VINTR = 0, 1, 2, 3, 4
BIT_TASK_SWITCH, BIT_SHUTDOWN = 29, 31

_EVENT_TYPE = {interrupts.EXTINT: exits.EVENT_INTR, interrupts.NMI_EV: exits.EVENT_NMI,
               interrupts.HWEXC: exits.EVENT_EXCEPTION, interrupts.SWEXC: exits.EVENT_EXCEPTION,
               interrupts.ICEBP: exits.EVENT_EXCEPTION, interrupts.SWINT: exits.EVENT_SWINT}
_HAS_EC = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


def encode_outer(outer) -> int:
    """EXITINTINFO for the event being delivered (an EVENTINJ value, or a
    (vector, kind, error code) tuple), 0 if none."""
    if outer is None:
        return 0
    if isinstance(outer, int):
        return outer
    vector, kind, ec = outer
    typ = _EVENT_TYPE[kind]
    if typ != exits.EVENT_EXCEPTION or vector not in _HAS_EC or kind != interrupts.HWEXC:
        ec = None
    return exits.encode_event(vector, typ, ec)


def check_exception(cpu, vector, error_code, cr2, outer, kind=interrupts.HWEXC) -> None:
    """Raise VmExit if the guest intercepts this exception (APM 15.12)."""
    if vector >= 32 or not cpu.svm.words[2] >> vector & 1:
        return
    info2 = cr2 if vector == PF and cr2 is not None else 0
    # INT3 / INTO / INT1 are checked after the instruction advanced RIP: NRIP
    # is the next instruction and the exit reports the instruction itself.
    nrip = cpu.rip if kind in (interrupts.SWEXC, interrupts.ICEBP) else 0
    insn = fetch_insn_bytes(cpu) if vector == PF and features.enabled(cpu, "decode_assists") else b""
    e = VmExit(exits.exception_exit(vector), error_code or 0, info2, nrip,
               detail=f"exception {vector} intercepted", insn=insn)
    e.exitintinfo = encode_outer(outer)
    raise e


def fetch_insn_bytes(cpu) -> bytes:
    """Decode assists for #PF (and #NPF): up to 15 bytes at the guest's CS:RIP,
    as far as they can be fetched without a fault (APM 15.33.2: INSN_LEN
    says how many were fetched)."""
    from ..cpu.exceptions import CpuException
    from ..cpu.segments import CS
    lin = (cpu.ebase[CS] + cpu.rip) & cpu.lin_mask
    out = b""
    while len(out) < 15:
        try:
            spa = cpu.fetch_spa(lin)
        except CpuException:
            break
        n = min(15 - len(out), 0x1000 - (lin & 0xFFF))
        out += cpu.bus.read_bytes(spa, n)
        lin = (lin + n) & cpu.lin_mask
    return out


def check_task_switch(cpu, selector, iret=False, jmp=False, error_code=None) -> None:
    """TASK_SWITCH intercept (APM 15.14.x): EXITINFO1 = the target TSS
    selector; EXITINFO2 bit 36 = by IRET, bit 38 = by far JMP, bit 44 = an
    error code is pushed (in bits 31:0).  Without the intercept svmsim stops
    the run: hardware task switches are not modelled."""
    if not cpu.svm.intercepted(MISC1, BIT_TASK_SWITCH):
        return
    info2 = (1 << 36 if iret else 0) | (1 << 38 if jmp else 0)
    if error_code is not None:
        info2 |= 1 << 44 | error_code & 0xFFFFFFFF
    raise VmExit(ExitCode.TASK_SWITCH, selector, info2, detail="task switch")


def check_shutdown(cpu, why: str) -> None:
    if cpu.svm.intercepted(MISC1, BIT_SHUTDOWN):
        raise VmExit(ExitCode.SHUTDOWN, detail=why)


def _exit(cpu, code, detail=""):
    from .world import vmexit
    vmexit(cpu, code, detail=detail)


def init_in_guest(cpu) -> None:
    """INIT while a guest runs: #VMEXIT(INIT) if intercepted, the INIT stays
    pending for the host (APM 15.7, 15.17); otherwise it resets the CPU."""
    if cpu.svm.intercepted(MISC1, BIT_INIT):
        _exit(cpu, ExitCode.INIT, "INIT signal")
        return
    if interrupts.redirect_init(cpu):     # #SX in the guest (15.21.8)
        return
    cpu.svm_guest = False
    cpu.machine.do_init(cpu)


def smi_in_guest(cpu) -> bool:
    """An SMI while a guest runs: with the SMI intercept it exits to the
    hypervisor at the next instruction boundary (APM 15.13.3)."""
    if not cpu.svm.intercepted(MISC1, BIT_SMI):
        return False
    cpu.smi_pending = True
    cpu.kick()
    return True


def service_guest(cpu) -> None:
    """The between-instructions interrupt check in guest mode (GIF = 1)."""
    s = cpu.svm
    machine = cpu.machine
    if cpu.smi_pending:
        cpu.smi_pending = False
        _exit(cpu, ExitCode.SMI, "SMI")
        return
    if cpu.nmi_pending and not cpu.nmi_blocked:
        if s.intercepted(MISC1, BIT_NMI):
            _exit(cpu, ExitCode.NMI, "NMI")
            return
        interrupts.take_nmi(cpu)
        return
    v_gif = s.v_gif or not s.v_gif_enable
    if s.v_nmi_pending and not s.v_nmi_blocking and v_gif:
        take_virtual_nmi(cpu)
        return
    guest_if = cpu.rflags & IF
    if machine.interrupt_pending(cpu):
        physical_if = s.host_if if s.v_intr_masking else guest_if
        if physical_if:
            if s.intercepted(MISC1, BIT_INTR):
                _exit(cpu, ExitCode.INTR, "physical interrupt")
                return
            if guest_if:
                vector = machine.interrupt_acknowledge(cpu)
                if vector is not None:
                    interrupts.take_interrupt(cpu, vector)
                    return
    if s.avic:
        # AVIC: the backing page's IRR replaces V_IRQ (15.29.4.1, 15.29.8).
        if guest_if and v_gif:
            vector = avic.pending(cpu)
            if vector is not None:
                avic.take(cpu, vector)
        return
    if s.v_irq and guest_if and v_gif and (s.v_ign_tpr or s.v_intr_prio > s.v_tpr):
        if s.intercepted(MISC1, BIT_VINTR):
            _exit(cpu, ExitCode.VINTR, "virtual interrupt")
            return
        s.v_irq = False
        interrupts.take_interrupt(cpu, s.v_intr_vector)


def take_virtual_nmi(cpu) -> None:
    """vNMI (APM 15.21.10): V_NMI_PENDING is delivered as an NMI through the
    guest IDT when V_NMI_BLOCKING is 0 (and the virtual GIF is 1); delivery
    sets V_NMI_BLOCKING and the guest's IRET clears it.  The physical NMI
    blocking is not involved."""
    s = cpu.svm
    s.v_nmi_pending = False
    s.v_nmi_blocking = True
    physical = cpu.nmi_blocked
    interrupts.deliver(cpu, NMI_VECTOR, interrupts.NMI_EV, None)
    cpu.nmi_blocked = physical


__all__ = ["check_exception", "check_shutdown", "service_guest", "init_in_guest", "NMI_VECTOR"]
