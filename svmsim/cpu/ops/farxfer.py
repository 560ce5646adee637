"""Segment loads and privilege-changing control transfers.

MOV/POP Sreg, LDS..LSS, far JMP/CALL/RET, IRET, INTn/INT3/INTO/INT1,
SYSCALL/SYSRET, SYSENTER/SYSEXIT, SWAPGS, the descriptor-table instructions
(LGDT..STR), LAR/LSL/VERR/VERW and ARPL.

Sources: AMD APM vol 2 ch. 4 (segmentation, privilege checks), ch. 6 (system
instructions), 8.x (IRET), 12.2 (TSS); APM vol 3 instruction pages; Intel SDM
vol 2 pseudo-code as a cross-check.  Deliberate AMD-specific choices:

* A null selector load keeps the hidden base and limit (AMD; Intel clears them).
* SYSRET changes only SS's selector, not its hidden attributes (APM vol 3
  SYSRET: "SS base, limit, attributes unchanged"), and does not check RCX for
  canonical form: a non-canonical RCX faults with #GP on the first fetch, at
  CPL 3 (Intel raises #GP(0) at CPL 0 instead).
* SYSENTER and SYSEXIT are #UD in long mode, 64-bit and compatibility alike.
* Far JMP/CALL through memory take whatever operand iced decodes (m16:16,
  m16:32, m16:64); AMD ignores REX.W there, which iced models with
  DecoderOptions.AMD.
"""
import iced_x86

from . import handles
from ..decoder import SEG_OF
from ..descriptors import (read_descriptor, read_descriptor16, fetch_segment, set_accessed, set_busy,
                           sel_error, is_null, canonical, to_segment,
                           SYS_TSS16_AVAIL, SYS_LDT, SYS_CALL16, SYS_TASK, SYS_TSS_AVAIL, SYS_CALL32)
from ..exceptions import CpuException, BR, GP, NP, SS as SS_VEC, gp, ud
from ..farxfer_support import (Rollback, pop_slots, protected, long_mode, real_segment, v86_segment,
                               null_segment, load_data_segment, code_offset_ok, check_long_code,
                               check_return_cs, check_return_ss, enter_code, null_outer_data_segments,
                               tss_rsp_64, tss_stack_32)
from ..flags import CF, PF, AF, ZF, SF, TF, IF, DF, OF, IOPL, NT, RF, VM, AC, VIF, VIP, ID
from ..segments import (Segment, ES, CS, SS, DS, FS, GS, A_S, A_P, A_L, A_DB,
                        T_CODE, T_CONFORMING, T_READABLE, T_WRITABLE)
from ..interrupts import deliver_with_escalation, SWINT, SWEXC, ICEBP
from ...errors import NotModelled

C = iced_x86.Code
OK = iced_x86.OpKind
MASK64 = (1 << 64) - 1
CR4_VME, CR4_UMIP, CR4_LA57 = 1, 1 << 11, 1 << 12
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK, MSR_KERNEL_GS_BASE = (
    0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102)
EFER_SCE = 1

# Flat segments SYSCALL/SYSRET/SYSENTER/SYSEXIT load without reading the GDT.
ATTR_CODE64_DPL0, ATTR_CODE32_DPL0, ATTR_DATA_DPL0 = 0xA9B, 0xC9B, 0xC93
ATTR_CODE64_DPL3, ATTR_CODE32_DPL3, ATTR_DATA_DPL3 = 0xAFB, 0xCFB, 0xCF3


# ================================================================ segment register loads
def load_segment(cpu, seg_index: int, selector: int) -> None:
    """Load a data segment register (DS/ES/FS/GS/SS) as MOV/POP/LxS do.

    CS can never be loaded this way (#UD).  Faults before changing state."""
    if seg_index == CS:
        raise ud("load of CS by a data-segment instruction")
    load_data_segment(cpu, seg_index, selector & 0xFFFF)


def _after_ss_load(cpu, seg_index):
    """MOV SS / POP SS hold off interrupts and #DB for one instruction (APM vol 2, 8.1.x)."""
    if seg_index == SS:
        cpu.shadow = True
        cpu.pending = True


@handles(codes=(C.MOV_SREG_RM16, C.MOV_SREG_R32M16, C.MOV_SREG_R64M16), ends_block=True)
def mov_to_sreg(cpu, ins):
    index = SEG_OF[ins.regs[0]]
    load_segment(cpu, index, ins.get1(cpu) & 0xFFFF)
    _after_ss_load(cpu, index)
    cpu.rip = ins.next_ip


@handles(codes=(C.MOV_RM16_SREG, C.MOV_R32M16_SREG, C.MOV_R64M16_SREG))
def mov_from_sreg(cpu, ins):
    """Memory destinations get 16 bits; register destinations the operand
    size, zero-extended (APM vol 3 MOV: 'zero-extends ... to 32/64 bits')."""
    ins.set0(cpu, cpu.segs[SEG_OF[ins.regs[-1]]].sel)


@handles(codes=(C.POPW_DS, C.POPD_DS, C.POPW_ES, C.POPD_ES, C.POPW_SS, C.POPD_SS,
                C.POPW_FS, C.POPD_FS, C.POPQ_FS, C.POPW_GS, C.POPD_GS, C.POPQ_GS), ends_block=True)
def pop_sreg(cpu, ins):
    """POP Sreg: pops the operand size, loads the low 16 bits; rSP only moves
    if the load succeeds (APM vol 3 POP)."""
    index = SEG_OF[ins.regs[0]]
    rsp = cpu.regs[4]
    sel = cpu.pop(ins.osize) & 0xFFFF
    try:
        load_segment(cpu, index, sel)
    except CpuException:
        cpu.regs[4] = rsp
        raise
    _after_ss_load(cpu, index)
    if ins.ends_block:
        cpu.rip = ins.next_ip


_LXS = {"lds": DS, "les": ES, "lfs": FS, "lgs": GS, "lss": SS}


@handles("LDS", "LES", "LFS", "LGS", "LSS", ends_block=True)
def lxs(cpu, ins):
    """Far pointer load: offset into the register, selector into the segment."""
    size = ins.mem_size - 2
    off = ins.ea(cpu)
    amask = (1 << (ins.asize * 8)) - 1
    value = cpu.read(ins.seg, off, size)
    sel = cpu.read(ins.seg, (off + size) & amask, 2)
    load_segment(cpu, _LXS[ins.name], sel)
    ins.set0(cpu, value)
    cpu.rip = ins.next_ip


# ================================================================ far JMP / CALL
def _far_operand(cpu, ins):
    """(selector, offset, operand size in bytes) of a far JMP/CALL."""
    if ins.iced.op0_kind in (OK.FAR_BRANCH16, OK.FAR_BRANCH32):
        return ins.imm & 0xFFFF, ins.target, ins.osize
    size = ins.mem_size - 2
    off = ins.ea(cpu)
    amask = (1 << (ins.asize * 8)) - 1
    offset = cpu.read(ins.seg, off, size)
    sel = cpu.read(ins.seg, (off + size) & amask, 2)
    return sel, offset, size


def _legacy_cs(cpu, sel):
    """CS for a far transfer in real or virtual-8086 mode."""
    if cpu.rflags & VM:
        return v86_segment(sel)
    return real_segment(cpu.segs[CS], sel)


def _check_direct_code(cpu, seg, sel):
    """A far JMP/CALL straight to a code segment (APM vol 2, 4.11.1)."""
    a = seg.attr
    err = sel_error(sel)
    if a & T_CONFORMING:
        if seg.dpl > cpu.cpl:
            raise CpuException(GP, err, detail=f"conforming CS {sel:#x}: DPL {seg.dpl} > CPL {cpu.cpl}")
    elif sel & 3 > cpu.cpl or seg.dpl != cpu.cpl:
        raise CpuException(GP, err, detail=f"CS {sel:#x}: RPL {sel & 3}/DPL {seg.dpl} vs CPL {cpu.cpl}")
    check_long_code(cpu, seg, sel)
    if not a & A_P:
        raise CpuException(NP, err, detail=f"code segment {sel:#x} not present")


def _read_gate(cpu, sel, seg, jmp=False):
    """Checks a far JMP/CALL's system descriptor; returns (target selector,
    offset, parameter count, gate size).  Long mode knows only 16-byte
    64-bit call gates (APM vol 2, 4.8.3); TSS and task-gate targets mean a
    hardware task switch, which svmsim does not model."""
    t = seg.attr & 0xF
    err = sel_error(sel)
    lm = long_mode(cpu)
    if not lm and t in (SYS_TSS16_AVAIL, SYS_TSS_AVAIL, SYS_TASK):
        if cpu.svm_guest:
            tss = seg.base & 0xFFFF if t == SYS_TASK else sel
            cpu.hooks.task_switch(cpu, tss, jmp=jmp)
        raise NotModelled("hardware task switch (far JMP/CALL to a TSS or task gate)")
    if t != SYS_CALL32 and (lm or t != SYS_CALL16):
        raise CpuException(GP, err, detail=f"far transfer to system descriptor type {t:#x}")
    if seg.dpl < cpu.cpl or seg.dpl < sel & 3:
        raise CpuException(GP, err, detail=f"call gate {sel:#x}: DPL {seg.dpl} < CPL/RPL")
    if not seg.attr & A_P:
        raise CpuException(NP, err, detail=f"call gate {sel:#x} not present")
    if lm:
        lo, hi, w2, w3 = read_descriptor16(cpu, sel)
        if (w3 >> 8) & 0x1F:
            raise CpuException(GP, err, detail="64-bit call gate: upper type field not zero")
        return lo >> 16, (lo & 0xFFFF) | (hi & 0xFFFF0000) | (w2 << 32), 0, 8
    lo, hi = read_descriptor(cpu, sel)
    size = 4 if t == SYS_CALL32 else 2
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000 if size == 4 else 0)
    return lo >> 16, offset, hi & 0x1F, size


def _gate_target(cpu, target, is_call):
    """The code segment a call gate names (APM vol 2, 4.11.2)."""
    if is_null(target):
        raise CpuException(GP, 0, detail="call gate names a null code selector")
    seg, hi = fetch_segment(cpu, target)
    a = seg.attr
    err = sel_error(target)
    if not a & A_S or not a & T_CODE:
        raise CpuException(GP, err, detail=f"call gate target {target:#x} is not code")
    if is_call or a & T_CONFORMING:
        bad = seg.dpl > cpu.cpl
    else:
        bad = seg.dpl != cpu.cpl
    if bad:
        raise CpuException(GP, err, detail=f"call gate target {target:#x}: DPL {seg.dpl}, CPL {cpu.cpl}")
    if long_mode(cpu) and (not a & A_L or a & A_DB):
        raise CpuException(GP, err, detail="64-bit call gate target is not a 64-bit code segment")
    if not a & A_P:
        raise CpuException(NP, err, detail=f"call gate target {target:#x} not present")
    return seg, hi


def jmp_far(cpu, ins):
    """JMP ptr16:16/32 and JMP m16:16/32/64 (APM vol 3 JMP (Far))."""
    sel, off, _ = _far_operand(cpu, ins)
    if not protected(cpu):
        seg = _legacy_cs(cpu, sel)
        if off > seg.limit:
            raise gp(0, f"far JMP target {off:#x} beyond CS limit")
        cpu.segs[CS] = seg
        cpu.rip = off
        cpu.update_mode()
        return
    if is_null(sel):
        raise gp(0, "far JMP to a null selector")
    seg, hi = fetch_segment(cpu, sel)
    if seg.attr & A_S:
        if not seg.attr & T_CODE:
            raise gp(sel_error(sel), f"far JMP to data segment {sel:#x}")
        _check_direct_code(cpu, seg, sel)
    else:
        target, off, _, _ = _read_gate(cpu, sel, seg, jmp=True)
        seg, hi = _gate_target(cpu, target, False)
        sel = target
    code_offset_ok(cpu, seg, off)
    set_accessed(cpu, sel, hi)
    enter_code(cpu, seg, cpu.cpl, off)


def call_far(cpu, ins):
    """CALL ptr16:16/32 and CALL m16:16/32/64 (APM vol 3 CALL (Far))."""
    sel, off, size = _far_operand(cpu, ins)
    ret_cs, ret_ip = cpu.segs[CS].sel, ins.next_ip
    with Rollback(cpu):
        if not protected(cpu):
            seg = _legacy_cs(cpu, sel)
            cpu.push(ret_cs, size)
            cpu.push(ret_ip & 0xFFFFFFFF, size)
            if off > seg.limit:
                raise gp(0, f"far CALL target {off:#x} beyond CS limit")
            cpu.segs[CS] = seg
            cpu.rip = off
            cpu.update_mode()
            return
        if is_null(sel):
            raise gp(0, "far CALL to a null selector")
        seg, hi = fetch_segment(cpu, sel)
        if seg.attr & A_S:
            if not seg.attr & T_CODE:
                raise gp(sel_error(sel), f"far CALL to data segment {sel:#x}")
            _check_direct_code(cpu, seg, sel)
            cpu.push(ret_cs, size)
            cpu.push(ret_ip & _mask(size), size)
            code_offset_ok(cpu, seg, off)
            set_accessed(cpu, sel, hi)
            enter_code(cpu, seg, cpu.cpl, off)
            return
        _call_gate(cpu, sel, seg, ret_cs, ret_ip)


def _mask(size):
    return (1 << (size * 8)) - 1


def _call_gate(cpu, gate_sel, gate, ret_cs, ret_ip):
    """CALL through a call gate, to the same or a more privileged level."""
    target, off, count, size = _read_gate(cpu, gate_sel, gate)
    seg, hi = _gate_target(cpu, target, True)
    old_cpl = cpu.cpl
    new_cpl = old_cpl if seg.attr & T_CONFORMING else seg.dpl
    if new_cpl == old_cpl:
        if size == 8:
            enter_code(cpu, seg, new_cpl, off)     # 64-bit pushes from here on
        cpu.push(ret_cs, size)
        cpu.push(ret_ip & _mask(size), size)
    elif size == 8:
        _call_gate_inner64(cpu, seg, new_cpl, off, ret_cs, ret_ip)
    else:
        _call_gate_inner32(cpu, seg, new_cpl, count, size, ret_cs, ret_ip)
    code_offset_ok(cpu, seg, off)
    set_accessed(cpu, target, hi)
    enter_code(cpu, seg, new_cpl, off)


def _call_gate_inner64(cpu, seg, new_cpl, off, ret_cs, ret_ip):
    """Long mode: RSP from TSS.RSPn, SS = null selector with RPL = new CPL,
    then SS, RSP, CS, RIP pushed as quadwords (APM vol 2, 4.11.2, fig. 4-21)."""
    old_ss, old_rsp = cpu.segs[SS].sel, cpu.regs[4]
    rsp = tss_rsp_64(cpu, cpl=new_cpl)
    cpu.segs[SS] = null_segment(cpu.segs[SS], new_cpl)
    cpu.regs[4] = rsp
    enter_code(cpu, seg, new_cpl, off)
    for v in (old_ss, old_rsp, ret_cs, ret_ip):
        cpu.push(v, 8)


def _call_gate_inner32(cpu, seg, new_cpl, count, size, ret_cs, ret_ip):
    """Legacy: SS:ESP from the TSS, then old SS, old ESP, ``count`` parameters
    copied from the caller's stack, CS, EIP (APM vol 2, 4.11.2, fig. 4-20)."""
    old_ss, old_sp = cpu.segs[SS].sel, cpu.regs[4]
    ss_seg, esp = tss_stack_32(cpu, new_cpl, 0)
    smask = _mask(cpu.stack_bits // 8)
    params = [cpu.read(SS, (old_sp + i * size) & smask, size) for i in range(count)]
    cpu.segs[SS] = ss_seg
    cpu.regs[4] = esp
    cpu.cpl = new_cpl
    cpu.update_mode()
    try:
        cpu.push(old_ss, size)
        cpu.push(old_sp & _mask(size), size)
        for v in reversed(params):
            cpu.push(v, size)
        cpu.push(ret_cs, size)
        cpu.push(ret_ip & _mask(size), size)
    except CpuException as e:
        if e.vector == SS_VEC:          # no room on the new stack: #SS(new SS)
            raise CpuException(SS_VEC, sel_error(ss_seg.sel), detail="new stack too small for call gate frame")
        raise


# ================================================================ far RET
def _release(cpu, imm):
    """RET imm16: drop ``imm`` bytes of parameters from the current stack."""
    if not imm:
        return
    bits = cpu.stack_bits
    rsp = cpu.regs[4] + imm
    if bits == 64:
        cpu.regs[4] = rsp & MASK64
    elif bits == 32:
        cpu.regs[4] = rsp & 0xFFFFFFFF
    else:
        cpu.regs[4] = (cpu.regs[4] & ~0xFFFF) | (rsp & 0xFFFF)


def _set_sp(cpu, value):
    """A stack pointer popped on a return to an outer level: SP only for a
    16-bit stack, else the whole (zero-extended) register."""
    if cpu.stack_bits == 16:
        cpu.regs[4] = (cpu.regs[4] & ~0xFFFF) | (value & 0xFFFF)
    else:
        cpu.regs[4] = value


@handles("RETF", ends_block=True)
def retf(cpu, ins):
    """Far RET [imm16] (APM vol 3 RET (Far)); to the same or an outer level."""
    size = ins.osize
    imm = ins.imm & 0xFFFF if ins.imm is not None else 0
    with Rollback(cpu):
        ip = cpu.pop(size)
        sel = cpu.pop(size) & 0xFFFF
        if not protected(cpu):
            seg = _legacy_cs(cpu, sel)
            if ip > seg.limit:
                raise gp(0, f"far RET target {ip:#x} beyond CS limit")
            cpu.segs[CS] = seg
            cpu.rip = ip
            cpu.update_mode()
            _release(cpu, imm)
            return
        seg, hi = check_return_cs(cpu, sel)
        rpl = sel & 3
        if rpl == cpu.cpl:
            code_offset_ok(cpu, seg, ip)
            set_accessed(cpu, sel, hi)
            enter_code(cpu, seg, rpl, ip)
            _release(cpu, imm)
            return
        _release(cpu, imm)
        sp = cpu.pop(size)
        ss_sel = cpu.pop(size) & 0xFFFF
        _return_outer(cpu, seg, sel, hi, ip, ss_sel, sp)
        _release(cpu, imm)


def _return_outer(cpu, seg, sel, hi, ip, ss_sel, sp):
    """Commit a return to an outer privilege level (RETF, IRET)."""
    rpl = sel & 3
    ss_seg, ss_hi = check_return_ss(cpu, ss_sel, rpl, seg)
    code_offset_ok(cpu, seg, ip)
    set_accessed(cpu, sel, hi)
    if ss_hi is not None:
        set_accessed(cpu, ss_sel, ss_hi)
        ss_seg.attr |= 1
    cpu.segs[SS] = ss_seg
    enter_code(cpu, seg, rpl, ip, update=False)
    null_outer_data_segments(cpu)        # by the new CPL and the segments only
    cpu.update_mode()
    _set_sp(cpu, sp)                     # by the new stack's size


# ================================================================ IRET
_IRET_REAL = CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | RF | AC | ID


def _merge_flags(cpu, new, size, mask):
    old = cpu.get_rflags()
    if size == 2:
        mask &= 0xFFFF
    cpu.set_rflags((old & ~mask) | (new & mask))


def _iret_done(cpu):
    if not (cpu.svm_guest and cpu.hooks.iret(cpu)):
        cpu.nmi_blocked = False         # IRET ends NMI blocking (APM vol 2, 8.2.2)
    if cpu.rflags & IF:
        cpu.kick()


@handles("IRET", "IRETD", "IRETQ", ends_block=True)
def iret(cpu, ins):
    """IRET/IRETD/IRETQ in every mode (APM vol 3 IRET, vol 2 8.x)."""
    size = ins.osize
    if not cpu.cr0 & 1:
        _iret_real(cpu, size, _IRET_REAL)
    elif cpu.rflags & VM:
        _iret_v86(cpu, size)
    else:
        _iret_protected(cpu, size)
    _iret_done(cpu)


def _iret_real(cpu, size, mask):
    """Real mode (and v86 with IOPL=3): pop IP, CS, FLAGS; VM/VIF/VIP stay."""
    with Rollback(cpu):
        ip = cpu.pop(size)
        sel = cpu.pop(size) & 0xFFFF
        flags = cpu.pop(size)
        seg = _legacy_cs(cpu, sel)
        if ip > seg.limit:
            raise gp(0, f"IRET target {ip:#x} beyond CS limit")
        cpu.segs[CS] = seg
        cpu.rip = ip
        _merge_flags(cpu, flags, size, mask)
        cpu.update_mode()


def _iret_v86(cpu, size):
    """IRET inside virtual-8086 mode: allowed only with IOPL=3 (IOPL itself
    cannot change); otherwise #GP(0), or VME's virtual-flag rules."""
    if cpu.rflags & IOPL == IOPL:
        _iret_real(cpu, size, _IRET_REAL & ~IOPL)
        return
    if cpu.cr4 & CR4_VME:
        raise NotModelled("IRET under CR4.VME in virtual-8086 mode")
    raise gp(0, "IRET in virtual-8086 mode with IOPL < 3")


def _iret_protected(cpu, size):
    """Protected mode, compatibility and 64-bit mode IRET."""
    if cpu.get_rflags() & NT:
        if long_mode(cpu):
            raise gp(0, "IRET with NT=1 in long mode")
        if cpu.svm_guest:
            cpu.hooks.task_switch(cpu, cpu.read_sys(cpu.tr.base, 2), iret=True)
        raise NotModelled("hardware task switch (IRET with NT=1)")
    old_cpl = cpu.cpl
    old_flags = cpu.get_rflags()
    with Rollback(cpu):
        # 64-bit mode always pops all five slots (below): at once where none can fault.
        slots = pop_slots(cpu, size, 5) if cpu.long64 else None
        if slots is None:
            ip = cpu.pop(size)
            sel = cpu.pop(size) & 0xFFFF
            flags = cpu.pop(size)
        else:
            ip, sel, flags = slots[0], slots[1] & 0xFFFF, slots[2]
        if flags & VM and size == 4 and old_cpl == 0 and not long_mode(cpu):
            _iret_to_v86(cpu, ip, sel, flags)
            return
        seg, hi = check_return_cs(cpu, sel)
        rpl = sel & 3
        mask = CF | PF | AF | ZF | SF | TF | DF | OF | NT | RF | AC | ID
        if old_cpl <= (old_flags & IOPL) >> 12:
            mask |= IF
        if old_cpl == 0:
            mask |= IOPL | VIF | VIP
        if cpu.long64 or rpl != old_cpl:       # 64-bit mode always pops SS:RSP
            if slots is None:
                sp = cpu.pop(size)
                ss_sel = cpu.pop(size) & 0xFFFF
            else:
                sp, ss_sel = slots[3], slots[4] & 0xFFFF
            _merge_flags(cpu, flags & ~VM, size, mask | VM)
            _return_outer(cpu, seg, sel, hi, ip, ss_sel, sp)
        else:
            code_offset_ok(cpu, seg, ip)
            set_accessed(cpu, sel, hi)
            _merge_flags(cpu, flags & ~VM, size, mask | VM)
            enter_code(cpu, seg, rpl, ip)


def _iret_to_v86(cpu, ip, sel, flags):
    """Return from a CPL-0 handler to virtual-8086 mode (APM vol 3 IRET,
    'RETURN_TO_VIRTUAL_MODE'): the frame also holds ESP, SS, ES, DS, FS, GS."""
    sp = cpu.pop(4)
    sels = [cpu.pop(4) & 0xFFFF for _ in range(5)]       # SS, ES, DS, FS, GS
    if ip & 0xFFFFFFFF > 0xFFFF:
        raise gp(0, "IRET to virtual-8086 mode: EIP beyond 64 KiB")
    cpu.set_rflags(flags)
    for index, s in zip((SS, ES, DS, FS, GS), sels):
        cpu.segs[index] = v86_segment(s)
    cpu.segs[CS] = v86_segment(sel)
    cpu.cpl = 3
    cpu.regs[4] = sp & 0xFFFFFFFF
    cpu.rip = ip & 0xFFFF
    cpu.update_mode()


# ================================================================ INTn, INT3, INTO, INT1
def _soft_int(cpu, ins, vector, kind):
    """Deliver a software interrupt; the frame's return address is the next
    instruction.  A fault during delivery belongs to the INT instruction
    itself, so RIP goes back to it before the fault propagates."""
    cpu.rip = ins.next_ip
    try:
        deliver_with_escalation(cpu, vector, kind, None)
    except CpuException:
        cpu.rip = ins.ip
        raise


@handles("INT", ends_block=True)
def int_n(cpu, ins):
    """INT imm8.  In virtual-8086 mode it is IOPL-sensitive (APM vol 3 INT)."""
    if cpu.cr0 & 1 and cpu.rflags & VM and cpu.rflags & IOPL != IOPL:
        if cpu.cr4 & CR4_VME:
            raise NotModelled("INT n redirection under CR4.VME")
        raise gp(0, "INT n in virtual-8086 mode with IOPL < 3")
    _soft_int(cpu, ins, ins.imm & 0xFF, SWINT)


@handles("INT3", ends_block=True)
def int3(cpu, ins):
    _soft_int(cpu, ins, 3, SWEXC)


@handles("INTO", ends_block=True)
def into(cpu, ins):
    """#OF trap if OF=1 (the encoding is invalid in 64-bit mode: iced gives #UD)."""
    if cpu.cond(0):
        _soft_int(cpu, ins, 4, SWEXC)
    else:
        cpu.rip = ins.next_ip


@handles("BOUND")
def bound(cpu, ins):
    """BOUND reg, mem (APM vol 3): #BR, a fault, when the signed index in the
    register is below the lower bound (at mem) or above the upper bound (at
    mem + operand size).  The encoding (62h) is EVEX in 64-bit mode."""
    size = ins.opsz[0]
    sign = 1 << (8 * size - 1)
    off = ins.ea(cpu)
    lo = cpu.read(ins.seg, off, size)
    hi = cpu.read(ins.seg, (off + size) & ((1 << (8 * ins.asize)) - 1), size)
    idx = ins.get0(cpu)
    idx, lo, hi = ((v ^ sign) - sign for v in (idx, lo, hi))
    if idx < lo or idx > hi:
        raise CpuException(BR, detail=f"BOUND: index {idx} outside [{lo}, {hi}]")


@handles("INT1", ends_block=True)
def int1(cpu, ins):
    """ICEBP: #DB as a trap, without the gate-DPL check of INT n."""
    _soft_int(cpu, ins, 1, ICEBP)


# ================================================================ SYSCALL / SYSRET
def _flat(sel, attr):
    return Segment(sel & 0xFFFF, 0, 0xFFFFFFFF, attr)


@handles("SYSCALL", ends_block=True)
def syscall(cpu, ins):
    """SYSCALL (APM vol 3): flat CS/SS from STAR[47:32], no descriptor reads."""
    if not cpu.efer & EFER_SCE:
        raise ud("SYSCALL with EFER.SCE=0")
    star = cpu.msr.get(MSR_STAR, 0)
    sel = (star >> 32) & 0xFFFF
    flags = cpu.get_rflags()
    if long_mode(cpu):
        cpu.regs[1] = ins.next_ip & MASK64
        cpu.regs[11] = flags & ~RF
        target = cpu.msr.get(MSR_LSTAR if cpu.long64 else MSR_CSTAR, 0)
        cpu.segs[CS] = _flat(sel & 0xFFFC, ATTR_CODE64_DPL0)
        cpu.segs[SS] = _flat(sel + 8, ATTR_DATA_DPL0)
        cpu.set_rflags(flags & ~cpu.msr.get(MSR_SFMASK, 0) & ~RF)
    else:
        cpu.regs[1] = ins.next_ip & 0xFFFFFFFF
        target = star & 0xFFFFFFFF
        cpu.segs[CS] = _flat(sel & 0xFFFC, ATTR_CODE32_DPL0)
        cpu.segs[SS] = _flat(sel + 8, ATTR_DATA_DPL0)
        cpu.set_rflags(flags & ~(VM | IF | RF))
    cpu.cpl = 0
    cpu.rip = target
    cpu.update_mode()


@handles("SYSRET", "SYSRETQ", ends_block=True)
def sysret(cpu, ins):
    """SYSRET (APM vol 3).  AMD: SS gets only the selector STAR[63:48]+8
    (RPL 3); its hidden base/limit/attributes stay as they were.  RCX is not
    checked for canonical form here: the fetch at CPL 3 faults instead."""
    if not cpu.efer & EFER_SCE:
        raise ud("SYSRET with EFER.SCE=0")
    if not protected(cpu) or cpu.cpl != 0:
        raise gp(0, "SYSRET outside protected mode or at CPL > 0")
    sel = (cpu.msr.get(MSR_STAR, 0) >> 48) & 0xFFFF
    if cpu.long64:
        if ins.code == C.SYSRETQ:
            cpu.segs[CS] = _flat((sel + 16) | 3, ATTR_CODE64_DPL3)
            target = cpu.regs[1]
        else:
            cpu.segs[CS] = _flat(sel | 3, ATTR_CODE32_DPL3)
            target = cpu.regs[1] & 0xFFFFFFFF
        cpu.set_rflags(cpu.regs[11] & ~(RF | VM))
    else:
        cpu.segs[CS] = _flat(sel | 3, ATTR_CODE32_DPL3)
        target = cpu.regs[1] & 0xFFFFFFFF
        cpu.set_rflags(cpu.get_rflags() | IF)
    ss = cpu.segs[SS]
    cpu.segs[SS] = Segment(((sel + 8) | 3) & 0xFFFF, ss.base, ss.limit, ss.attr)
    cpu.cpl = 3
    cpu.rip = target
    cpu.update_mode()
    if cpu.rflags & IF:
        cpu.kick()


# ================================================================ SYSENTER / SYSEXIT
@handles("SYSENTER", ends_block=True)
def sysenter(cpu, ins):
    """SYSENTER (APM vol 3): legacy protected mode only on AMD."""
    if long_mode(cpu):
        raise ud("SYSENTER is invalid in long mode on AMD")
    cs = cpu.msr.get(MSR_SYSENTER_CS, 0) & 0xFFFF
    if not cpu.cr0 & 1 or is_null(cs):
        raise gp(0, "SYSENTER in real mode or with SYSENTER_CS null")
    cpu.segs[CS] = _flat(cs & 0xFFFC, ATTR_CODE32_DPL0)
    cpu.segs[SS] = _flat((cs + 8) & 0xFFFC, ATTR_DATA_DPL0)
    cpu.set_rflags(cpu.get_rflags() & ~(VM | IF | RF))
    cpu.regs[4] = cpu.msr.get(MSR_SYSENTER_ESP, 0) & 0xFFFFFFFF
    cpu.cpl = 0
    cpu.rip = cpu.msr.get(MSR_SYSENTER_EIP, 0) & 0xFFFFFFFF
    cpu.update_mode()


@handles("SYSEXIT", "SYSEXITQ", ends_block=True)
def sysexit(cpu, ins):
    """SYSEXIT (APM vol 3): back to flat CPL-3 code at EDX with ESP = ECX."""
    if long_mode(cpu):
        raise ud("SYSEXIT is invalid in long mode on AMD")
    cs = cpu.msr.get(MSR_SYSENTER_CS, 0) & 0xFFFF
    if not protected(cpu) or cpu.cpl != 0 or is_null(cs):
        raise gp(0, "SYSEXIT outside protected mode, at CPL > 0 or with SYSENTER_CS null")
    cpu.segs[CS] = _flat((cs + 16) | 3, ATTR_CODE32_DPL3)
    cpu.segs[SS] = _flat((cs + 24) | 3, ATTR_DATA_DPL3)
    cpu.regs[4] = cpu.regs[1] & 0xFFFFFFFF
    cpu.cpl = 3
    cpu.rip = cpu.regs[2] & 0xFFFFFFFF
    cpu.update_mode()


@handles("SWAPGS")
def swapgs(cpu, ins):
    """Exchange GS.base with KernelGSbase (MSR C000_0102h) (APM vol 3 SWAPGS)."""
    if not cpu.long64:
        raise ud("SWAPGS outside 64-bit mode")
    if cpu.cpl != 0:
        raise gp(0, "SWAPGS at CPL > 0")
    gs = cpu.segs[GS]
    kernel = cpu.msr.get(MSR_KERNEL_GS_BASE, 0)
    cpu.msr[MSR_KERNEL_GS_BASE] = gs.base
    cpu.segs[GS] = Segment(gs.sel, kernel, gs.limit, gs.attr)
    cpu.update_mode()


# ================================================================ descriptor tables
def _need_cpl0(cpu, what):
    if cpu.cr0 & 1 and cpu.cpl != 0:
        raise gp(0, f"{what} at CPL {cpu.cpl}")


def _umip(cpu, what):
    """CR4.UMIP: the store instructions are CPL-0 only (APM vol 2, 3.1.3)."""
    if cpu.cr4 & CR4_UMIP and cpu.cpl > 0:
        raise gp(0, f"{what} at CPL {cpu.cpl} with CR4.UMIP=1")


_TABLE_16 = (C.LGDT_M1632_16, C.LIDT_M1632_16, C.SGDT_M1632_16, C.SIDT_M1632_16)
_TABLE_64 = (C.LGDT_M1664, C.LIDT_M1664, C.SGDT_M1664, C.SIDT_M1664)


@handles(codes=(C.LGDT_M1632_16, C.LGDT_M1632, C.LGDT_M1664, C.LIDT_M1632_16, C.LIDT_M1632, C.LIDT_M1664))
def lgdt_lidt(cpu, ins):
    """LGDT/LIDT: 16-bit operand size loads a 24-bit base; 64-bit mode
    always an 8-byte base, which must be canonical (APM vol 3)."""
    _need_cpl0(cpu, ins.name.upper())
    off = ins.ea(cpu)
    amask = (1 << (ins.asize * 8)) - 1
    limit = cpu.read(ins.seg, off, 2)
    if ins.code in _TABLE_64:
        base = cpu.read(ins.seg, (off + 2) & amask, 8)
        if not canonical(base, bool(cpu.cr4 & CR4_LA57)):
            raise gp(0, f"{ins.name.upper()} with non-canonical base {base:#x}")
    else:
        base = cpu.read(ins.seg, (off + 2) & amask, 4)
        if ins.code in _TABLE_16:
            base &= 0xFFFFFF
    if ins.name == "lgdt":
        cpu.gdtr_base, cpu.gdtr_limit = base, limit
    else:
        cpu.idtr_base, cpu.idtr_limit = base, limit


@handles(codes=(C.SGDT_M1632_16, C.SGDT_M1632, C.SGDT_M1664, C.SIDT_M1632_16, C.SIDT_M1632, C.SIDT_M1664))
def sgdt_sidt(cpu, ins):
    """SGDT/SIDT: limit, then a 32-bit base (all 32 bits even with a 16-bit
    operand size, as every 386+ does) or a 64-bit base in 64-bit mode."""
    _umip(cpu, ins.name.upper())
    base, limit = ((cpu.gdtr_base, cpu.gdtr_limit) if ins.name == "sgdt"
                   else (cpu.idtr_base, cpu.idtr_limit))
    off = ins.ea(cpu)
    amask = (1 << (ins.asize * 8)) - 1
    size = 8 if ins.code in _TABLE_64 else 4
    cpu.check_write(ins.seg, (off + 2) & amask, size)
    cpu.write(ins.seg, off, 2, limit)
    cpu.write(ins.seg, (off + 2) & amask, size, base & _mask(size))


def _system_only(cpu, what):
    """LLDT/LTR/SLDT/STR/LAR/LSL/VERR/VERW/ARPL exist only in protected mode."""
    if not protected(cpu):
        raise ud(f"{what} outside protected mode")


def _system_descriptor(cpu, sel, vector=GP):
    """(Segment, hi) of a GDT system descriptor; 16 bytes in long mode, where
    the base is 64 bits and the upper type field must be zero."""
    if long_mode(cpu):
        lo, hi, w2, w3 = read_descriptor16(cpu, sel, vector)
        seg = to_segment(sel, lo, hi)
        if (w3 >> 8) & 0x1F:
            raise CpuException(GP, sel_error(sel), detail="16-byte descriptor: upper type field not zero")
        seg.base |= w2 << 32
        if not canonical(seg.base):
            raise CpuException(GP, sel_error(sel), detail="system descriptor base not canonical")
        return seg, hi
    return fetch_segment(cpu, sel, vector)


@handles("LLDT")
def lldt(cpu, ins):
    """LLDT (APM vol 3): a null selector leaves LDTR unusable."""
    _system_only(cpu, "LLDT")
    _need_cpl0(cpu, "LLDT")
    sel = ins.get0(cpu) & 0xFFFF
    if is_null(sel):
        cpu.ldtr = Segment(sel, cpu.ldtr.base, cpu.ldtr.limit, 0)
        return
    if sel & 4:
        raise gp(sel_error(sel), "LLDT selector refers to the LDT")
    seg, _ = _system_descriptor(cpu, sel)
    if seg.attr & A_S or seg.attr & 0xF != SYS_LDT:
        raise gp(sel_error(sel), f"LLDT: {sel:#x} is not an LDT descriptor")
    if not seg.attr & A_P:
        raise CpuException(NP, sel_error(sel), detail=f"LDT descriptor {sel:#x} not present")
    cpu.ldtr = seg


@handles("LTR")
def ltr(cpu, ins):
    """LTR (APM vol 3): needs an available TSS; marks it busy in the GDT."""
    _system_only(cpu, "LTR")
    _need_cpl0(cpu, "LTR")
    sel = ins.get0(cpu) & 0xFFFF
    if is_null(sel):
        raise gp(0, "LTR with a null selector")
    if sel & 4:
        raise gp(sel_error(sel), "LTR selector refers to the LDT")
    seg, hi = _system_descriptor(cpu, sel)
    t = seg.attr & 0xF
    ok = (SYS_TSS_AVAIL,) if long_mode(cpu) else (SYS_TSS_AVAIL, SYS_TSS16_AVAIL)
    if seg.attr & A_S or t not in ok:
        raise gp(sel_error(sel), f"LTR: {sel:#x} is not an available TSS (type {t:#x})")
    if not seg.attr & A_P:
        raise CpuException(NP, sel_error(sel), detail=f"TSS descriptor {sel:#x} not present")
    set_busy(cpu, sel, hi)
    seg.attr |= 2
    cpu.tr = seg


def _store_selector(cpu, ins, sel):
    """SLDT/STR: 16 bits to memory; a register gets the operand size, zero-extended."""
    ins.set0(cpu, sel)


@handles("SLDT")
def sldt(cpu, ins):
    _system_only(cpu, "SLDT")
    _umip(cpu, "SLDT")
    _store_selector(cpu, ins, cpu.ldtr.sel)


@handles("STR")
def str_(cpu, ins):
    _system_only(cpu, "STR")
    _umip(cpu, "STR")
    _store_selector(cpu, ins, cpu.tr.sel)


# ---------------------------------------------------------------- LAR, LSL, VERR, VERW, ARPL
_LAR_LEGACY = {1, 2, 3, 4, 5, 9, 0xB, 0xC}
_LAR_LONG = {2, 9, 0xB, 0xC}
_LSL_LEGACY = {1, 2, 3, 9, 0xB}
_LSL_LONG = {2, 9, 0xB}


def _set_zf(cpu, on):
    f = cpu.get_rflags()
    cpu.rflags = (f | ZF) if on else (f & ~ZF)
    cpu.lf = None


def _probe(cpu, sel):
    """(Segment, hi) for LAR/LSL/VERR/VERW, or None if the selector is null
    or beyond the table limit (those only clear ZF; APM vol 3)."""
    if is_null(sel):
        return None
    try:
        lo, hi = read_descriptor(cpu, sel)
    except CpuException as e:
        if e.vector == GP:
            return None
        raise                           # a #PF reading the table is real
    return to_segment(sel, lo, hi), hi


def _visible(cpu, seg, sel):
    """DPL >= CPL and DPL >= RPL, except conforming code (always visible)."""
    a = seg.attr
    if a & A_S and a & T_CODE and a & T_CONFORMING:
        return True
    return seg.dpl >= cpu.cpl and seg.dpl >= sel & 3


def _lar_lsl_target(cpu, ins, types_legacy, types_long):
    _system_only(cpu, ins.name.upper())
    sel = ins.get1(cpu) & 0xFFFF
    got = _probe(cpu, sel)
    if got is None:
        return None
    seg, hi = got
    if not seg.attr & A_S:
        types = types_long if long_mode(cpu) else types_legacy
        if seg.attr & 0xF not in types:
            return None
    if not _visible(cpu, seg, sel):
        return None
    return seg, hi


@handles("LAR")
def lar(cpu, ins):
    """LAR: access-rights bytes (descriptor dword 1 AND 00FFFF00h; 16-bit: 0FF00h)."""
    got = _lar_lsl_target(cpu, ins, _LAR_LEGACY, _LAR_LONG)
    _set_zf(cpu, got is not None)
    if got is not None:
        ins.set0(cpu, got[1] & (0xFF00 if ins.osize == 2 else 0x00FFFF00))


@handles("LSL")
def lsl(cpu, ins):
    """LSL: the byte-granular segment limit."""
    got = _lar_lsl_target(cpu, ins, _LSL_LEGACY, _LSL_LONG)
    _set_zf(cpu, got is not None)
    if got is not None:
        ins.set0(cpu, got[0].limit)


@handles("VERR", "VERW")
def verr_verw(cpu, ins):
    """VERR: readable code/data visible at CPL and RPL; VERW: writable data."""
    _system_only(cpu, ins.name.upper())
    sel = ins.get0(cpu) & 0xFFFF
    got = _probe(cpu, sel)
    ok = False
    if got is not None:
        seg = got[0]
        a = seg.attr
        if a & A_S:
            if ins.name == "verr":
                ok = (not a & T_CODE or a & T_READABLE) and _visible(cpu, seg, sel)
            else:
                ok = not a & T_CODE and a & T_WRITABLE and _visible(cpu, seg, sel)
    _set_zf(cpu, bool(ok))


@handles("ARPL")
def arpl(cpu, ins):
    """ARPL: raise the destination selector's RPL to the source's (legacy
    modes only; opcode 63h is MOVSXD in 64-bit mode)."""
    _system_only(cpu, "ARPL")
    dest = ins.get0(cpu)
    src_rpl = ins.get1(cpu) & 3
    if dest & 3 < src_rpl:
        ins.set0(cpu, (dest & ~3) | src_rpl)
        _set_zf(cpu, True)
    else:
        _set_zf(cpu, False)
