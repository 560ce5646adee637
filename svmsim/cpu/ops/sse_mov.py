"""Vector data movement: MOVAPS/MOVUPS/MOVDQA/MOVDQU and their non-temporal
forms, MOVSS/MOVSD, MOVHPS/MOVLPS/MOVHPD/MOVLPD, MOVHLPS/MOVLHPS,
MOVD/MOVQ (MMX and XMM), MOVDQ2Q/MOVQ2DQ, MOVDDUP/MOVSHDUP/MOVSLDUP,
LDDQU, MOVNTDQA, MASKMOVDQU/MASKMOVQ, MOVNTQ, PEXTR*/PINSR* (AMD APM vol 4
and 5).  Register-to-register legacy moves keep bits 255:128 of the
destination; VEX.128 moves clear them (ops/simd.py).
"""
from . import handles
from .simd import layout, check, rd, wr, split, join, MEM, X, MM, GPR, M64, M128

_ALIGNED = {"MOVAPS", "MOVAPD", "MOVDQA", "MOVNTPS", "MOVNTPD", "MOVNTDQ", "MOVNTDQA"}


def _move(cpu, ins, lo, value, aligned):
    """Write a full-width move's destination."""
    if lo.kind[0] == MEM:
        wr(cpu, ins, lo, value, align=lo.nb if aligned else 0)
    else:
        wr(cpu, ins, lo, value)


def _full_move(aligned):
    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        al = lo.nb if aligned and lo.kind[1] == MEM else 0
        _move(cpu, ins, lo, rd(cpu, ins, lo, 1, al), aligned)
    return h


handles("MOVAPS", "MOVAPD", "MOVDQA", "MOVNTPS", "MOVNTPD", "MOVNTDQ", "MOVNTDQA",
        "VMOVAPS", "VMOVAPD", "VMOVDQA", "VMOVNTPS", "VMOVNTPD", "VMOVNTDQ", "VMOVNTDQA")(_full_move(True))
handles("MOVUPS", "MOVUPD", "MOVDQU", "LDDQU", "VMOVUPS", "VMOVUPD", "VMOVDQU", "VLDDQU")(_full_move(False))


def _scalar_move(size):
    """MOVSS/MOVSD: a load zero-extends, a store writes the low element,
    register forms merge into the destination (VEX: into the first source)."""
    m = (1 << (8 * size)) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        if lo.kind[0] == MEM:
            wr(cpu, ins, lo, rd(cpu, ins, lo, 1) & m)
        elif lo.kind[1] == MEM:
            wr(cpu, ins, lo, rd(cpu, ins, lo, 1))
        elif lo.vex:
            wr(cpu, ins, lo, (rd(cpu, ins, lo, 1) & ~m) | (rd(cpu, ins, lo, 2) & m))
        else:
            wr(cpu, ins, lo, (rd(cpu, ins, lo, 0) & ~m) | (rd(cpu, ins, lo, 1) & m))
    return h


handles("MOVSS", "VMOVSS")(_scalar_move(4))
handles("MOVSD", "VMOVSD")(_scalar_move(8))


def _half_move(high):
    """MOVHPS/MOVHPD (high=True) and MOVLPS/MOVLPD with a 64-bit memory operand."""
    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        if lo.kind[0] == MEM:
            v = rd(cpu, ins, lo, 1)
            wr(cpu, ins, lo, (v >> 64) if high else (v & M64))
            return
        n = 2 if lo.vex else 1
        mem = rd(cpu, ins, lo, n)
        base = rd(cpu, ins, lo, 1 if lo.vex else 0)
        v = (base & M64) | (mem << 64) if high else (base & ~M64 & M128) | mem
        wr(cpu, ins, lo, v)
    return h


handles("MOVHPS", "MOVHPD", "VMOVHPS", "VMOVHPD")(_half_move(True))
handles("MOVLPS", "MOVLPD", "VMOVLPS", "VMOVLPD")(_half_move(False))


@handles("MOVHLPS", "VMOVHLPS")
def movhlps(cpu, ins):
    lo = layout(ins)
    check(cpu, lo)
    if lo.vex:
        v = (rd(cpu, ins, lo, 2) >> 64) | (rd(cpu, ins, lo, 1) & ~M64 & M128)
    else:
        v = (rd(cpu, ins, lo, 1) >> 64) | (rd(cpu, ins, lo, 0) & ~M64 & M128)
    wr(cpu, ins, lo, v)


@handles("MOVLHPS", "VMOVLHPS")
def movlhps(cpu, ins):
    lo = layout(ins)
    check(cpu, lo)
    if lo.vex:
        v = (rd(cpu, ins, lo, 1) & M64) | ((rd(cpu, ins, lo, 2) & M64) << 64)
    else:
        v = (rd(cpu, ins, lo, 0) & M64) | ((rd(cpu, ins, lo, 1) & M64) << 64)
    wr(cpu, ins, lo, v)


def _movdq(size):
    """MOVD/MOVQ: into a vector register zero-extend; out of one, the low
    ``size`` bytes.  MMX forms write all 64 bits of the MMX register."""
    m = (1 << (8 * size)) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        v = rd(cpu, ins, lo, 1)
        if lo.kind[1] in (X, MM):
            v &= m
        wr(cpu, ins, lo, v & m)
    return h


handles("MOVD", "VMOVD")(_movdq(4))
handles("MOVQ", "VMOVQ")(_movdq(8))


@handles("MOVDQ2Q", "MOVQ2DQ")
def movdq2q(cpu, ins):
    lo = layout(ins)
    check(cpu, lo)
    if lo.kind[0] == MM:
        from .simd import sse_check
        sse_check(cpu)
    wr(cpu, ins, lo, rd(cpu, ins, lo, 1) & M64)


@handles("MOVNTQ")
def movntq(cpu, ins):
    lo = layout(ins)
    check(cpu, lo)
    wr(cpu, ins, lo, rd(cpu, ins, lo, 1))


def _dup(pick):
    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        v = rd(cpu, ins, lo, 1, 16 if not lo.vex and lo.kind[1] == MEM and ins.mem_size == 16 else 0)
        wr(cpu, ins, lo, pick(v, lo.nb))
    return h


def _movddup(v, nb):
    out = []
    for lane in range(nb // 16):
        q = (v >> (128 * lane)) & M64
        out += (q, q)
    return join(out, 8)


def _movsxdup(odd):
    def pick(v, nb):
        xs = split(v, 4, nb)
        return join([xs[i | 1] if odd else xs[i & ~1] for i in range(len(xs))], 4)
    return pick


handles("MOVDDUP", "VMOVDDUP")(_dup(_movddup))
handles("MOVSHDUP", "VMOVSHDUP")(_dup(_movsxdup(True)))
handles("MOVSLDUP", "VMOVSLDUP")(_dup(_movsxdup(False)))


@handles("MASKMOVDQU", "VMASKMOVDQU", "MASKMOVQ")
def maskmovdqu(cpu, ins):
    """Store the bytes of the first operand whose mask byte has its MSB set
    to DS:rDI (segment override allowed).  Bytes are checked first, so a
    fault leaves memory unchanged."""
    lo = layout(ins)
    check(cpu, lo)
    n = 1 if lo.vex else 0
    data = rd(cpu, ins, lo, n)
    mask = rd(cpu, ins, lo, n + 1)
    nb = 8 if lo.mmx else 16
    amask = (1 << (8 * ins.asize)) - 1
    base = cpu.regs[7] & amask
    picks = [i for i, mb in enumerate(split(mask, 1, nb)) if mb & 0x80]
    for i in picks:
        cpu.check_write(ins.seg, (base + i) & amask, 1)
    for i in picks:
        cpu.write(ins.seg, (base + i) & amask, 1, (data >> (8 * i)) & 0xFF)


# ---------------------------------------------------------------- PEXTR / PINSR
def _pextr(w):
    m = (1 << (8 * w)) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        v = rd(cpu, ins, lo, 1)
        n = (16 // w) if lo.kind[1] == X else 4
        r = (v >> (8 * w * (ins.imm % n))) & m
        if lo.kind[0] == GPR:
            ins.set0(cpu, r)          # r32/r64 destinations zero-extend
        else:
            wr(cpu, ins, lo, r)
    return h


handles("PEXTRB", "VPEXTRB")(_pextr(1))
handles("PEXTRW", "VPEXTRW")(_pextr(2))
handles("PEXTRD", "VPEXTRD")(_pextr(4))
handles("PEXTRQ", "VPEXTRQ")(_pextr(8))


def _pinsr(w):
    m = (1 << (8 * w)) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        src_n = 2 if lo.vex else 1
        v = rd(cpu, ins, lo, src_n) & m
        base = rd(cpu, ins, lo, 1 if lo.vex else 0)
        n = (16 // w) if lo.kind[0] == X else 4
        sh = 8 * w * (ins.imm % n)
        wr(cpu, ins, lo, (base & ~(m << sh)) | (v << sh))
    return h


handles("PINSRB", "VPINSRB")(_pinsr(1))
handles("PINSRW", "VPINSRW")(_pinsr(2))
handles("PINSRD", "VPINSRD")(_pinsr(4))
handles("PINSRQ", "VPINSRQ")(_pinsr(8))
