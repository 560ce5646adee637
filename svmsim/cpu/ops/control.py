"""Near control transfers: JMP, Jcc, CALL, RET, LOOPcc, JrCXZ (APM vol 3).

Far transfers, INTn and IRET live in ``farxfer``.  Each handler here sets
``cpu.rip``; a target outside the code segment limit (legacy modes) or a
non-canonical target (64-bit mode) raises #GP(0) at the branch.
"""
from . import handles
from ..exceptions import gp
from ..segments import CS

MASK64 = (1 << 64) - 1


def _check_target(cpu, target):
    if cpu.long64:
        if ((target + (1 << 47)) & MASK64) >> 48:
            raise gp(0, f"non-canonical branch target {target:#x}")
    elif target > cpu.segs[CS].limit:
        raise gp(0, f"branch target {target:#x} beyond CS limit")


def _mask_ip(ins, target):
    size = ins.osize
    if size == 8:
        return target & MASK64
    return target & ((1 << (size * 8)) - 1)


@handles("JMP", ends_block=True)
def jmp(cpu, ins):
    if ins.target is not None and ins.get0 is None:
        if ins.iced.op0_kind in (4, 5):          # far direct: ptr16:16/32
            from .farxfer import jmp_far
            return jmp_far(cpu, ins)
        target = ins.target
    elif ins.mem_size in (4, 6, 10) and ins.iced.is_jmp_far_indirect:
        from .farxfer import jmp_far
        return jmp_far(cpu, ins)
    else:
        target = _mask_ip(ins, ins.get0(cpu))
    _check_target(cpu, target)
    cpu.rip = target


@handles("JO", "JNO", "JB", "JAE", "JE", "JNE", "JBE", "JA",
         "JS", "JNS", "JP", "JNP", "JL", "JGE", "JLE", "JG", ends_block=True)
def jcc(cpu, ins):
    if cpu.cond(ins.cc - 1):
        target = ins.target
        _check_target(cpu, target)
        cpu.rip = target
    else:
        cpu.rip = ins.next_ip


@handles("CALL", ends_block=True)
def call(cpu, ins):
    if ins.get0 is None and ins.iced.op0_kind in (4, 5) or ins.iced.is_call_far_indirect:
        from .farxfer import call_far
        return call_far(cpu, ins)
    target = ins.target if ins.get0 is None else _mask_ip(ins, ins.get0(cpu))
    _check_target(cpu, target)
    cpu.push(ins.next_ip, ins.osize)
    cpu.rip = target


@handles("RET", ends_block=True)
def ret(cpu, ins):
    rsp = cpu.regs[4]
    target = cpu.pop(ins.osize)
    try:
        _check_target(cpu, target)
    except Exception:
        cpu.regs[4] = rsp
        raise
    if ins.imm is not None:
        bits = cpu.stack_bits
        sp = cpu.regs[4] + (ins.imm & 0xFFFF)
        if bits == 64:
            cpu.regs[4] = sp & MASK64
        elif bits == 32:
            cpu.regs[4] = sp & 0xFFFFFFFF
        else:
            cpu.regs[4] = (cpu.regs[4] & ~0xFFFF) | (sp & 0xFFFF)
    cpu.rip = target


def _count_reg(cpu, ins):
    """rCX as the address size selects it (APM vol 3 LOOP)."""
    return (1 << (ins.asize * 8)) - 1


@handles("LOOP", "LOOPE", "LOOPNE", ends_block=True)
def loop(cpu, ins):
    mask = _count_reg(cpu, ins)
    regs = cpu.regs
    c = (regs[1] - 1) & mask
    taken = c != 0
    if ins.cc:                        # LOOPE / LOOPNE also test ZF
        taken = taken and cpu.cond(ins.cc - 1)
    if taken:
        _check_target(cpu, ins.target)
    regs[1] = c if mask == MASK64 or mask == 0xFFFFFFFF else (regs[1] & ~mask) | c
    cpu.rip = ins.target if taken else ins.next_ip


@handles("JCXZ", "JECXZ", "JRCXZ", ends_block=True)
def jrcxz(cpu, ins):
    if cpu.regs[1] & _count_reg(cpu, ins) == 0:
        _check_target(cpu, ins.target)
        cpu.rip = ins.target
    else:
        cpu.rip = ins.next_ip
