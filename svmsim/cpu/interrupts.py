"""Delivering exceptions and interrupts through the IVT/IDT (APM vol 2, ch. 8).

``deliver_event`` pushes the frame and enters the handler for one event;
``deliver_exception`` adds the double-fault rules (APM 8.2.9, table 8-7):
a contributory fault or #PF raised while delivering a contributory fault or
#PF becomes #DF, and a fault while delivering #DF is a triple fault, which
puts the processor into shutdown.  ``service`` runs between blocks and takes
pending NMIs and external interrupts.

Delivery is all-or-nothing for registers: if a fault occurs part way, the
CPU state is restored before the fault is handled, as if the delivery never
started (memory already written stays written, as on hardware).
"""
from .exceptions import CpuException, Shutdown, NMI, DF, NP, GP, PF, SX, CONTRIBUTORY, HAS_ERROR_CODE, DEBUG_STOP
from .flags import IF, TF, NT, RF, VM, AC
from .segments import Segment, CS, SS as SS_SEG, A_L, A_DB, A_P, T_CODE, T_CONFORMING
from .descriptors import read_descriptor, to_segment
from .farxfer_support import tss_rsp_64, write_slots
from .hooks import INTERCEPT
from ..errors import NotModelled

# Event kinds (they decide the saved RIP, the gate-DPL check and the EXT bit).
EXTINT, NMI_EV, HWEXC, SWINT, SWEXC, ICEBP = range(6)


# ---------------------------------------------------------------- between blocks
def service(cpu) -> None:
    """Take a pending INIT, SMI, NMI or maskable interrupt, if one is deliverable.

    GIF = 0 holds INIT, SMI, NMI and INTR pending (APM vol 2, 15.17); in guest
    mode the virtualization extension decides (``cpu.hooks``: intercepts,
    V_INTR_MASKING, virtual interrupts)."""
    cpu.pending = False
    machine = cpu.machine
    if not cpu.gif:
        return
    if cpu.init_pending:
        if cpu.svm_guest:
            cpu.hooks.init(cpu)
            return
        if not redirect_init(cpu):
            machine.do_init(cpu)
        return
    if cpu.wait_for_sipi:
        return
    if cpu.smi_pending and not cpu.smm:
        # An SMI (APM 10.3.1; in guest mode the extension may exit instead: 15.22.2).
        if not (cpu.svm_guest and cpu.hooks.smi(cpu)):
            from . import smm
            smm.enter(cpu, cpu.smi_source)
        return
    if cpu.shadow:
        # The instruction after STI / MOV SS runs before any interrupt (APM 8.1.x);
        # Engine.step ends the shadow once it completes.
        cpu.step_once = True
        cpu.pending = True
        return
    if cpu.svm_guest:
        cpu.hooks.service(cpu)
        return
    if cpu.nmi_pending and not cpu.nmi_blocked:
        take_nmi(cpu)
        return
    if cpu.rflags & IF:
        vector = machine.interrupt_acknowledge(cpu)
        if vector is not None:
            take_interrupt(cpu, vector)


def event_waiting(cpu) -> bool:
    """Whether ``service`` may take something on a host-mode CPU with GIF = 1:
    a pending INIT, SMI or NMI, an interrupt shadow, or (RFLAGS.IF = 1) a
    maskable interrupt waiting.  False means ``service`` would take nothing
    now, so compiled code may go on after STGI without leaving its region
    (codegen ``_t_gif``); True may be conservative (the NMI mask is not
    looked at)."""
    return bool(cpu.init_pending or cpu.smi_pending or cpu.nmi_pending or cpu.shadow
                or cpu.rflags & IF and cpu.machine.interrupt_pending(cpu))


VM_CR, VM_CR_R_INIT = 0xC0010114, 0x2


def redirect_init(cpu) -> bool:
    """VM_CR.R_INIT (APM vol 2, 15.21.8, table 15-12): a non-intercepted INIT
    becomes #SX with error code 1 and is no longer pending.  True if so."""
    if not cpu.msr.get(VM_CR, 0) & VM_CR_R_INIT:
        return False
    cpu.init_pending = False
    cpu.halted = False
    deliver_exception(cpu, CpuException(SX, 1, detail="INIT redirected by VM_CR.R_INIT"))
    return True


def take_nmi(cpu) -> None:
    cpu.nmi_pending = False
    cpu.nmi_blocked = True
    cpu.halted = False
    deliver_exception(cpu, CpuException(NMI), kind=NMI_EV)


def take_interrupt(cpu, vector) -> None:
    cpu.halted = False
    deliver(cpu, vector, EXTINT, None)
    cpu.pending = True          # another may be waiting


def deliver(cpu, vector, kind, error_code, cr2=None) -> None:
    """Deliver an event; an intercept on the way becomes a #VMEXIT."""
    try:
        deliver_with_escalation(cpu, vector, kind, error_code, cr2)
    except CpuException as e:
        if e.vector != INTERCEPT:
            raise
        cpu.hooks.intercept(cpu, e)


# ---------------------------------------------------------------- faults
def deliver_exception(cpu, e: CpuException, kind=HWEXC) -> None:
    """Deliver a fault raised by an instruction (RIP already at that instruction).

    An intercept (vector INTERCEPT, raised by the instruction or by its
    event delivery) goes to the virtualization extension instead; a
    ``DebugStop`` (vector DEBUG_STOP) stops the machine for the debugger."""
    if e.vector == DEBUG_STOP:
        cpu.machine.debug.stopped(cpu, e)
        return
    if e.vector == INTERCEPT:
        alt = cpu.hooks.reflect(cpu, e)
        if alt is None:
            cpu.hooks.intercept(cpu, e)
            return
        e = alt
    cpu.machine.trace_exception(cpu, e)
    deliver(cpu, e.vector, kind, e.error_code, e.cr2)


def _double_fault(first: int, second: int) -> bool:
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return True
    return first == PF and (second == PF or second in CONTRIBUTORY)


def deliver_with_escalation(cpu, vector, kind, error_code, cr2=None, injected=None) -> None:
    """Deliver one event; resolve faults raised during its delivery.

    ``injected`` is the EVENTINJ value when VMRUN injects this event: an
    injected event is not itself subject to exception intercepts, but a
    fault during its delivery is, and then EXITINTINFO names it (APM 15.20,
    15.7.2).  ``cr2`` is written only when a #PF is actually delivered, so an
    intercepted #PF leaves the guest's CR2 alone (APM 15.12)."""
    try:
        _escalate(cpu, vector, kind, error_code, cr2, injected)
    finally:
        cpu.inject_ev = False


def _escalate(cpu, vector, kind, error_code, cr2, injected) -> None:
    outer = None                # the event whose delivery raised this one
    check = injected is None
    while True:
        cpu.inject_ev = injected is not None and outer is None and error_code is not None
        try:
            deliver_event(cpu, vector, kind, error_code, cr2, outer, check)
            return
        except CpuException as e2:
            this = injected if injected is not None and outer is None else (vector, kind, error_code)
            if e2.vector == INTERCEPT:
                alt = cpu.hooks.reflect(cpu, e2)
                if alt is None:                         # an intercept: #VMEXIT
                    if e2.during_delivery and not e2.exitintinfo:
                        e2.exitintinfo = cpu.hooks.event_info(this)
                    raise
                if not e2.during_delivery:
                    # The guest takes ``alt`` (SEV-ES #VC) instead of this event.
                    vector, kind, error_code, cr2 = alt.vector, HWEXC, alt.error_code, None
                    injected, check = None, True
                    continue
                e2 = alt                                # a fault raised by the delivery
            if kind in (SWINT, SWEXC, ICEBP):
                # A fault while delivering INT n/INT3/INTO/INT1 is reported on
                # the instruction itself (SDM vol 3, 6.5): let the engine rewind
                # RIP to it and deliver the fault.
                if cpu.svm_guest:
                    cpu.hooks.exception(cpu, e2.vector, e2.error_code, e2.cr2, this, HWEXC)
                raise
            cpu.machine.trace_exception(cpu, e2)
            if vector == DF:
                shutdown(cpu, f"triple fault: {e2} while delivering #DF")
            outer, check, cr2 = this, True, e2.cr2
            if kind in (HWEXC, NMI_EV, EXTINT) and _double_fault(vector, e2.vector):
                # An intercepted #DF is not an exit during event delivery:
                # no EXITINTINFO (Bochs; APM 15.7.2).
                vector, kind, error_code, cr2, outer = DF, HWEXC, 0, None, None
            else:
                vector, kind, error_code = e2.vector, HWEXC, e2.error_code


def shutdown(cpu, why: str):
    """Enter the shutdown state, or #VMEXIT(SHUTDOWN) when a guest's shutdown
    is intercepted (APM 15.7 table, 8.2.9)."""
    if cpu.svm_guest:
        cpu.hooks.shutdown(cpu, why)
    raise Shutdown(why)


def deliver_event(cpu, vector, kind, error_code, cr2=None, outer=None, check=True) -> None:
    """Enter the handler for one event, or raise the fault that prevents it.

    In guest mode an intercepted exception exits here, before CR2 or any
    stack is written (APM 15.12); ``outer`` is the event whose delivery
    raised this one (EXITINTINFO)."""
    if check and cpu.svm_guest and kind in (HWEXC, SWEXC, ICEBP):
        cpu.hooks.exception(cpu, vector, error_code, cr2, outer, kind)
    if cr2 is not None:
        cpu.cr2 = cr2
    cpu.machine.on_event(cpu, vector, kind, error_code)
    snapshot = _snapshot(cpu)
    try:
        if not cpu.cr0 & 1:
            _deliver_real(cpu, vector)
        elif cpu.efer & (1 << 10):
            _deliver_long(cpu, vector, kind, error_code)
        elif cpu.rflags & VM:
            raise NotModelled("interrupt delivery from virtual-8086 mode")
        else:
            _deliver_protected(cpu, vector, kind, error_code)
    except CpuException as e:
        _restore(cpu, snapshot)
        if e.vector == INTERCEPT:
            e.during_delivery = True        # an intercept in the middle: EXITINTINFO
        raise
    cpu.halted = False
    cpu.shadow = False
    if kind == NMI_EV:
        cpu.nmi_blocked = True
    if cpu.debugctl & 1:
        # Last exception/interrupt: where it was taken and where it went (APM 13.1.1.4).
        cpu.msr[0x1DD], cpu.msr[0x1DE] = snapshot[1], cpu.rip


def _snapshot(cpu):
    """What a fault in the middle of a delivery puts back.  The segment
    registers are kept as the objects they are: a delivery only ever puts new
    Segment objects into ``cpu.segs`` (from the IDT's and TSS's descriptors)
    and changes none in place, so the old ones still hold the old values."""
    return (list(cpu.regs), cpu.rip, cpu.get_rflags(), list(cpu.segs), cpu.cpl)


def _restore(cpu, snap):
    regs, rip, rflags, segs, cpl = snap
    cpu.regs[:] = regs
    cpu.rip = rip
    cpu.set_rflags(rflags)
    cpu.segs[:] = segs
    cpu.cpl = cpl
    cpu.update_mode()


def _pushes_error_code(cpu, vector, kind, error_code) -> bool:
    """Exceptions with an error code push it; an event injected by VMRUN with
    EVENTINJ.EV = 1 pushes its error code whatever the vector (APM 15.20)."""
    if error_code is None:
        return False
    return kind == HWEXC and vector in HAS_ERROR_CODE or cpu.inject_ev


def _ext(kind) -> int:
    """The EXT bit of a selector error code: the event came from outside."""
    return 1 if kind in (EXTINT, NMI_EV, HWEXC) else 0


def _return_rip(cpu, kind):
    return cpu.rip  # INTn/INT3/INTO handlers already set RIP past the instruction


# ---------------------------------------------------------------- real mode
def _deliver_real(cpu, vector):
    """Real mode: the IVT entry is CS:IP at IDTR.base + 4*vector (APM 8.7.x)."""
    if vector * 4 + 3 > cpu.idtr_limit:
        raise CpuException(GP, 0, detail="vector beyond real-mode IDT limit")
    entry = cpu.read_sys((cpu.idtr_base + vector * 4) & 0xFFFFFFFF, 4)
    flags = cpu.get_rflags()
    cpu.push(flags & 0xFFFF, 2)
    cpu.push(cpu.segs[CS].sel, 2)
    cpu.push(cpu.rip & 0xFFFF, 2)
    cpu.set_rflags(flags & ~(IF | TF | AC | RF))
    sel = entry >> 16
    cpu.segs[CS] = Segment(sel, sel << 4, cpu.segs[CS].limit, cpu.segs[CS].attr)
    cpu.rip = entry & 0xFFFF
    cpu.update_mode()


# ---------------------------------------------------------------- protected mode
def _read_gate(cpu, vector, size, kind):
    err = vector * 8 + 2 + _ext(kind)
    if vector * size + size - 1 > cpu.idtr_limit:
        raise CpuException(GP, err, detail=f"vector {vector} beyond IDT limit")
    base = (cpu.idtr_base + vector * size) & cpu.lin_mask_sys
    lo = cpu.read_sys(base, 4)
    hi = cpu.read_sys(base + 4, 4)
    upper = cpu.read_sys(base + 8, 4) if size == 16 else 0
    gtype = (hi >> 8) & 0x1F
    dpl = (hi >> 13) & 3
    if kind in (SWINT, SWEXC) and dpl < cpu.cpl:
        raise CpuException(GP, err, detail=f"INT {vector}: gate DPL {dpl} < CPL {cpu.cpl}")
    if not hi & 0x8000:
        raise CpuException(NP, err, detail=f"IDT gate {vector} not present")
    return lo, hi, upper, gtype, err


def _target_cs(cpu, sel, kind, need_long):
    ext = _ext(kind)
    if sel & ~3 == 0:
        raise CpuException(GP, ext, detail="null code selector in gate")
    lo, hi = read_descriptor(cpu, sel, GP, ext)
    seg = to_segment(sel, lo, hi)
    a = seg.attr
    if not a & 0x10 or not a & T_CODE or seg.dpl > cpu.cpl:
        raise CpuException(GP, (sel & ~3) | ext, detail=f"gate target {sel:#x} is not a usable code segment")
    if need_long and (not a & A_L or a & A_DB):
        raise CpuException(GP, (sel & ~3) | ext, detail="long-mode gate target is not a 64-bit code segment")
    if not a & A_P:
        raise CpuException(NP, (sel & ~3) | ext, detail=f"code segment {sel:#x} not present")
    return seg


def _deliver_protected(cpu, vector, kind, error_code):
    lo, hi, _, gtype, err = _read_gate(cpu, vector, 8, kind)
    if gtype == 0x05:
        if cpu.svm_guest:
            ec = error_code if kind == HWEXC and vector in HAS_ERROR_CODE else None
            cpu.hooks.task_switch(cpu, (lo >> 16) & 0xFFFF, error_code=ec)
        raise NotModelled("task gates in the IDT (hardware task switch)")
    if gtype not in (0x06, 0x07, 0x0E, 0x0F):
        raise CpuException(GP, err, detail=f"IDT entry {vector} is not an interrupt/trap gate (type {gtype:#x})")
    gate32 = gtype & 8
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000 if gate32 else 0)
    seg = _target_cs(cpu, (lo >> 16) & 0xFFFF, kind, False)
    new_cpl = cpu.cpl if seg.attr & T_CONFORMING else seg.dpl
    size = 4 if gate32 else 2
    flags = cpu.get_rflags()
    old_cs, old_ss, old_rsp = cpu.segs[CS].sel, cpu.segs[SS_SEG].sel, cpu.regs[4]
    if new_cpl < cpu.cpl:
        from .farxfer_support import tss_stack_32
        ss_seg, esp = tss_stack_32(cpu, new_cpl, _ext(kind))
        cpu.segs[SS_SEG] = ss_seg
        cpu.regs[4] = esp
        cpu.cpl = new_cpl
        cpu.update_mode()
        cpu.push(old_ss, size)
        cpu.push(old_rsp & (0xFFFFFFFF if size == 4 else 0xFFFF), size)
    cpu.push(flags & (0xFFFFFFFF if size == 4 else 0xFFFF), size)
    cpu.push(old_cs, size)
    cpu.push(cpu.rip & (0xFFFFFFFF if size == 4 else 0xFFFF), size)
    if _pushes_error_code(cpu, vector, kind, error_code):
        cpu.push(error_code, size)
    _enter(cpu, seg, new_cpl, offset, flags, gtype)


def _enter(cpu, seg, new_cpl, offset, flags, gtype):
    seg.sel = (seg.sel & ~3) | new_cpl
    cpu.segs[CS] = seg
    cpu.cpl = new_cpl
    clear = TF | NT | RF | VM
    if gtype & 1 == 0:                    # interrupt gate (not trap gate) clears IF
        clear |= IF
    cpu.set_rflags(flags & ~clear)
    cpu.rip = offset
    cpu.update_mode()


# ---------------------------------------------------------------- long mode
def _deliver_long(cpu, vector, kind, error_code):
    """Long mode: 16-byte gates, 64-bit frames, IST (APM vol 2, 8.9)."""
    lo, hi, upper, gtype, err = _read_gate(cpu, vector, 16, kind)
    if gtype not in (0x0E, 0x0F):
        raise CpuException(GP, err, detail=f"IDT entry {vector} is not a 64-bit interrupt/trap gate (type {gtype:#x})")
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000) | (upper << 32)
    seg = _target_cs(cpu, (lo >> 16) & 0xFFFF, kind, True)
    new_cpl = cpu.cpl if seg.attr & T_CONFORMING else seg.dpl
    ist = hi & 7
    flags = cpu.get_rflags()
    old_cs, old_ss, old_rsp = cpu.segs[CS].sel, cpu.segs[SS_SEG].sel, cpu.regs[4]
    if ist:
        rsp = tss_rsp_64(cpu, ist=ist)
    elif new_cpl < cpu.cpl:
        rsp = tss_rsp_64(cpu, cpl=new_cpl)
    else:
        rsp = old_rsp
    rsp &= ~0xF                            # the new stack is 16-byte aligned
    frame = [old_ss, old_rsp, flags, old_cs, cpu.rip]
    if _pushes_error_code(cpu, vector, kind, error_code):
        frame.append(error_code)
    if new_cpl < cpu.cpl:
        cpu.segs[SS_SEG] = Segment(new_cpl, 0, 0, 0)    # NULL SS with RPL = new CPL
    cpu.cpl = new_cpl
    cpu.segs[CS] = seg
    cpu.update_mode()                      # now in 64-bit mode at the new CPL
    low = (rsp - 8 * len(frame)) & ((1 << 64) - 1)
    if not write_slots(cpu, low, [v & ((1 << 64) - 1) for v in reversed(frame)]):
        for i, v in enumerate(frame):
            cpu.write(SS_SEG, (rsp - 8 * (i + 1)) & ((1 << 64) - 1), 8, v)
    cpu.regs[4] = low
    _enter(cpu, seg, new_cpl, offset, flags, gtype)
