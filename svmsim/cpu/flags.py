"""RFLAGS and lazy arithmetic flags.

Arithmetic instructions do not compute CF/PF/AF/ZF/SF/OF eagerly: they store
one tuple ``(op, bits, a, b, r, cf_in)`` in ``cpu.lf`` and the flags are
derived only when something reads them (Jcc, PUSHF, ADC...).  ``r`` is the
*unmasked* result, so a carry or borrow out of the operand size is visible
as bit ``bits`` of ``r`` (Python ints are arbitrary precision and negative
results read as infinite two's complement).
"""

CF, PF, AF, ZF, SF, TF, IF, DF, OF = 1, 4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = 0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000
ARITH = CF | PF | AF | ZF | SF | OF
FIXED1 = 0x2          # bit 1 always reads as one
# Bits software can change at all (APM vol 2, 3.1.6); the rest read as zero.
WRITABLE = ARITH | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID

OP_ADD, OP_SUB, OP_LOGIC, OP_INC, OP_DEC = 0, 1, 2, 3, 4
# Shifts by a non-zero count (ops/shift.py): (OP_SHIFT, bits, CF, OF, masked result, 0), AF = 0.
OP_SHIFT = 5

PARITY = bytes(0 if bin(i).count("1") & 1 else PF for i in range(256))


def arith_flags(lf) -> int:
    """The CF|PF|AF|ZF|SF|OF bits described by a lazy-flags tuple."""
    op, bits, a, b, r, cf_in = lf
    mask = (1 << bits) - 1
    rm = r & mask
    f = PARITY[rm & 0xFF]
    if rm == 0:
        f |= ZF
    if rm >> (bits - 1):
        f |= SF
    if op == OP_LOGIC:
        return f
    if op == OP_SHIFT:
        return f | (CF if a else 0) | (OF if b else 0)
    f |= (a ^ b ^ r) & AF
    if op == OP_ADD or op == OP_INC:
        if ((a ^ r) & (b ^ r)) >> (bits - 1) & 1:
            f |= OF
    else:
        if ((a ^ b) & (a ^ r)) >> (bits - 1) & 1:
            f |= OF
    if op <= OP_SUB:
        if (r >> bits) & 1:
            f |= CF
    elif cf_in:
        f |= CF
    return f


def cond_from_flags(f: int, cc: int) -> bool:
    """Evaluate condition code ``cc`` (the low nibble of Jcc/SETcc/CMOVcc)."""
    c = cc >> 1
    if c == 0:
        v = f & OF
    elif c == 1:
        v = f & CF
    elif c == 2:
        v = f & ZF
    elif c == 3:
        v = f & (CF | ZF)
    elif c == 4:
        v = f & SF
    elif c == 5:
        v = f & PF
    elif c == 6:
        v = bool(f & SF) != bool(f & OF)
    else:
        v = (f & ZF) or (bool(f & SF) != bool(f & OF))
    return (not v) if cc & 1 else bool(v)


def carry(lf) -> int:
    """CF alone, cheaply, from a lazy-flags tuple (ADC/SBB/RCL/INC need it)."""
    op = lf[0]
    if op <= OP_SUB:
        return (lf[4] >> lf[1]) & 1
    if op == OP_LOGIC:
        return 0
    if op == OP_SHIFT:
        return lf[2]
    return 1 if lf[5] else 0


def szp(value: int, bits: int) -> int:
    """PF, ZF and SF of ``value`` taken as a ``bits``-wide result."""
    v = value & ((1 << bits) - 1)
    f = PARITY[v & 0xFF]
    if v == 0:
        f |= ZF
    if v >> (bits - 1):
        f |= SF
    return f


def set_arith(cpu, f: int) -> None:
    """Replace CF/PF/AF/ZF/SF/OF by ``f`` eagerly (instructions without a lazy form).
    The other RFLAGS bits in ``cpu.rflags`` are valid even while flags are lazy."""
    cpu.rflags = (cpu.rflags & ~ARITH) | f
    cpu.lf = None
