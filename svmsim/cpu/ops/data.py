"""Data movement: MOV (general registers), MOVZX/MOVSX/MOVSXD, LEA, XCHG,
PUSH/POP, SETcc, CMOVcc, flag-register moves, ENTER/LEAVE, BSWAP, XLAT,
MOVBE, NOP (AMD APM vol 3, ch. 3).

MOV to and from segment, control and debug registers live with the system
instructions; they are registered by iced Code there and take precedence.
"""
from iced_x86 import OpKind

from . import handles
from ..decoder import SEG_OF
from ..flags import CF, DF
from ..segments import SS

MASK64 = (1 << 64) - 1


@handles("MOV")
def mov(cpu, ins):
    ins.set0(cpu, ins.get1(cpu))


@handles("MOVZX")
def movzx(cpu, ins):
    ins.set0(cpu, ins.get1(cpu))


@handles("MOVSX", "MOVSXD")
def movsx(cpu, ins):
    src_bits = ins.opsz[1] * 8
    v = ins.get1(cpu)
    if v >> (src_bits - 1) & 1:
        v -= 1 << src_bits
    ins.set0(cpu, v)


@handles("LEA")
def lea(cpu, ins):
    ins.set0(cpu, ins.ea(cpu))


@handles("NOP", "PREFETCHW", "PREFETCHNTA", "PREFETCHT0", "PREFETCHT1", "PREFETCHT2",
         "LFENCE", "MFENCE", "SFENCE", "ENDBR64", "ENDBR32")
def nop(cpu, ins):
    pass


PAUSE_NS = 64      # virtual time a PAUSE takes (a timing model, not architecture)


@handles("PAUSE", ends_block=True)
def pause(cpu, ins):
    """PAUSE: a spin-wait hint (APM vol 3).  It takes PAUSE_NS of virtual time
    instead of 1 ns, so a guest's busy-wait loop reaches its deadline in fewer
    simulated instructions; it ends the block so the engine sees the time."""
    cpu.stall += PAUSE_NS - 1
    cpu.rip = ins.next_ip


@handles("XCHG")
def xchg(cpu, ins):
    """The memory operand, if any, is written first: a write that faults
    leaves the register unchanged too (codegen's t_xchg does the same)."""
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    if ins.iced.op0_kind == OpKind.MEMORY:
        ins.set0(cpu, b)
        ins.set1(cpu, a)
    else:
        ins.set1(cpu, a)
        ins.set0(cpu, b)


@handles("BSWAP")
def bswap(cpu, ins):
    size = ins.osize
    if size == 2:                 # undefined; hardware clears the register's low word
        ins.set0(cpu, 0)
        return
    ins.set0(cpu, int.from_bytes(ins.get0(cpu).to_bytes(size, "little"), "big"))


@handles("MOVBE")
def movbe(cpu, ins):
    size = ins.osize
    ins.set0(cpu, int.from_bytes(ins.get1(cpu).to_bytes(size, "little"), "big"))


# ---------------------------------------------------------------- stack
@handles("PUSH")
def push(cpu, ins):
    if ins.get0 is None:              # segment register
        sel = cpu.segs[SEG_OF[ins.regs[0]]].sel
        cpu.push(sel, ins.osize)
        return
    cpu.push(ins.get0(cpu), ins.osize)


@handles("POP")
def pop(cpu, ins):
    if ins.get0 is None:              # POP sreg: handled by the segment module
        from .farxfer import pop_sreg
        pop_sreg(cpu, ins)
        return
    rsp = cpu.regs[4]
    v = cpu.pop(ins.osize)
    try:
        ins.set0(cpu, v)              # a memory destination uses the new rSP
    except Exception:
        cpu.regs[4] = rsp             # keep the fault precise
        raise


@handles("LEAVE")
def leave(cpu, ins):
    """rSP = rBP; pop rBP (sizes from the stack and operand size)."""
    regs = cpu.regs
    old = regs[4]
    bits = cpu.stack_bits
    if bits == 64:
        regs[4] = regs[5]
    elif bits == 32:
        regs[4] = regs[5] & 0xFFFFFFFF
    else:
        regs[4] = (regs[4] & ~0xFFFF) | (regs[5] & 0xFFFF)
    try:
        v = cpu.pop(ins.osize)
    except Exception:
        regs[4] = old
        raise
    if ins.osize == 8:
        regs[5] = v
    elif ins.osize == 4:
        regs[5] = v & 0xFFFFFFFF
    else:
        regs[5] = (regs[5] & ~0xFFFF) | v


@handles("ENTER")
def enter(cpu, ins):
    """ENTER imm16, imm8 (APM vol 3 ENTER), nesting level taken mod 32."""
    size = ins.osize
    alloc = ins.imm & 0xFFFF
    level = ins.imm2 & 0x1F
    regs = cpu.regs
    saved = list(regs)
    try:
        cpu.push(regs[5], size)
        frame = regs[4]
        bp = saved[5]
        for _ in range(1, level):
            bp = (bp - size) & MASK64
            cpu.push(cpu.read(SS, _stack_off(cpu, bp), size), size)
        if level:
            cpu.push(frame, size)
        _set_sized(regs, 5, frame, size if cpu.stack_bits != 16 else 2)
        _set_sized(regs, 4, regs[4] - alloc, cpu.stack_bits // 8)
    except Exception:
        regs[:] = saved
        raise


def _stack_off(cpu, v):
    return v & ((1 << cpu.stack_bits) - 1)


def _set_sized(regs, i, v, size):
    if size == 8:
        regs[i] = v & MASK64
    elif size == 4:
        regs[i] = v & 0xFFFFFFFF
    else:
        regs[i] = (regs[i] & ~0xFFFF) | (v & 0xFFFF)


@handles("PUSHA", "PUSHAD")
def pusha(cpu, ins):
    size = ins.osize
    regs = cpu.regs
    saved = list(regs)
    mask = (1 << (size * 8)) - 1
    try:
        for i in (0, 1, 2, 3):
            cpu.push(saved[i] & mask, size)
        cpu.push(saved[4] & mask, size)
        for i in (5, 6, 7):
            cpu.push(saved[i] & mask, size)
    except Exception:
        regs[:] = saved
        raise


@handles("POPA", "POPAD")
def popa(cpu, ins):
    size = ins.osize
    regs = cpu.regs
    saved = list(regs)
    try:
        vals = [cpu.pop(size) for _ in range(8)]
    except Exception:
        regs[:] = saved
        raise
    for i, v in zip((7, 6, 5, None, 3, 2, 1, 0), vals):
        if i is not None:
            _set_sized(regs, i, v, size)


# ---------------------------------------------------------------- conditions
@handles("SETO", "SETNO", "SETB", "SETAE", "SETE", "SETNE", "SETBE", "SETA",
         "SETS", "SETNS", "SETP", "SETNP", "SETL", "SETGE", "SETLE", "SETG")
def setcc(cpu, ins):
    ins.set0(cpu, 1 if cpu.cond(ins.cc - 1) else 0)


@handles("CMOVO", "CMOVNO", "CMOVB", "CMOVAE", "CMOVE", "CMOVNE", "CMOVBE", "CMOVA",
         "CMOVS", "CMOVNS", "CMOVP", "CMOVNP", "CMOVL", "CMOVGE", "CMOVLE", "CMOVG")
def cmovcc(cpu, ins):
    v = ins.get1(cpu)                 # the source is read (and may fault) either way
    if cpu.cond(ins.cc - 1):
        ins.set0(cpu, v)
    elif ins.osize == 4:
        ins.set0(cpu, ins.get0(cpu))  # 32-bit CMOV zero-extends even when false


# ---------------------------------------------------------------- flags
@handles("CLC")
def clc(cpu, ins):
    cpu.rflags = cpu.get_rflags() & ~CF
    cpu.lf = None


@handles("STC")
def stc(cpu, ins):
    cpu.rflags = cpu.get_rflags() | CF
    cpu.lf = None


@handles("CMC")
def cmc(cpu, ins):
    cpu.rflags = cpu.get_rflags() ^ CF
    cpu.lf = None


@handles("CLD")
def cld(cpu, ins):
    cpu.rflags &= ~DF


@handles("STD")
def std(cpu, ins):
    cpu.rflags |= DF


@handles("LAHF")
def lahf(cpu, ins):
    f = cpu.get_rflags()
    cpu.regs[0] = (cpu.regs[0] & ~0xFF00) | ((f & 0xD5 | 2) << 8)


@handles("SAHF")
def sahf(cpu, ins):
    f = cpu.get_rflags()
    cpu.rflags = (f & ~0xD5) | ((cpu.regs[0] >> 8) & 0xD5)
    cpu.lf = None


@handles("XLATB")
def xlat(cpu, ins):
    amask = (1 << (ins.asize * 8)) - 1
    off = (cpu.regs[3] + (cpu.regs[0] & 0xFF)) & amask
    cpu.regs[0] = (cpu.regs[0] & ~0xFF) | cpu.read(ins.seg, off, 1)
