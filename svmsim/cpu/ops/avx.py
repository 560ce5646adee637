"""AVX and AVX2 instructions that have no legacy-SSE counterpart: broadcasts,
128-bit lane inserts/extracts/permutes, VPERMILPS/PD, VPERMD/PS/Q/PD,
variable shifts, masked moves, gathers, VZEROUPPER/VZEROALL and
VLDMXCSR/VSTMXCSR (AMD APM vol 4; Intel SDM vol 2 for the operation
pseudocode).  Everything else of AVX/AVX2 is the VEX form of an SSE
instruction, registered beside it (sse_int.py, sse_fp.py, sse_mov.py).
"""
from . import handles
from .simd import layout, avx_check, rd, wr, split, join, MEM, Y, M128, binary, unary
from .. import fpu_state as fs
from ..exceptions import gp, ud


# ---------------------------------------------------------------- broadcasts
def _broadcast(w):
    """Replicate the low w bytes of the source (register or memory)."""
    def h(cpu, ins):
        lo = layout(ins)
        avx_check(cpu)
        v = rd(cpu, ins, lo, 1) & ((1 << (8 * w)) - 1)
        r = 0
        for k in range(lo.nb // w):
            r |= v << (8 * w * k)
        wr(cpu, ins, lo, r)
    return h


handles("VBROADCASTSS", "VPBROADCASTD")(_broadcast(4))
handles("VBROADCASTSD", "VPBROADCASTQ")(_broadcast(8))
handles("VBROADCASTF128", "VBROADCASTI128")(_broadcast(16))
handles("VPBROADCASTB")(_broadcast(1))
handles("VPBROADCASTW")(_broadcast(2))


# ---------------------------------------------------------------- 128-bit lanes
@handles("VEXTRACTF128", "VEXTRACTI128")
def vextractf128(cpu, ins):
    lo = layout(ins)
    avx_check(cpu)
    v = rd(cpu, ins, lo, 1)
    half = (v >> 128) if ins.imm & 1 else v & M128
    if lo.kind[0] == MEM:
        wr(cpu, ins, lo, half)
    else:
        i = lo.idx[0]
        cpu.xmm[i], cpu.ymmh[i] = half, 0


@handles("VINSERTF128", "VINSERTI128")
def vinsertf128(cpu, ins):
    lo = layout(ins)
    avx_check(cpu)
    a = rd(cpu, ins, lo, 1)
    b = rd(cpu, ins, lo, 2) & M128
    if ins.imm & 1:
        v = (a & M128) | (b << 128)
    else:
        v = (a & ~M128) | b
    wr(cpu, ins, lo, v)


def _perm2x128(a, b, nb, imm, ctx):
    halves = (a & M128, a >> 128, b & M128, b >> 128)
    lo_ = 0 if imm & 0x08 else halves[imm & 3]
    hi = 0 if imm & 0x80 else halves[(imm >> 4) & 3]
    return lo_ | (hi << 128)


binary(_perm2x128, vex=("VPERM2F128", "VPERM2I128"))


# ---------------------------------------------------------------- in-lane permutes
def _permil(w):
    """VPERMILPS/PD: select elements within each 128-bit lane, by an imm8
    (``op dst, src, imm8``) or by a control vector (``op dst, src, ctl``:
    PS bits 1:0 of each dword, PD bit 1 of each qword)."""
    per = 16 // w

    def h(cpu, ins):
        lo = layout(ins)
        avx_check(cpu)
        xs = split(rd(cpu, ins, lo, 1), w, lo.nb)
        if ins.imm is not None:
            if w == 4:
                sel = [(ins.imm >> (2 * (i % 4))) & 3 for i in range(len(xs))]
            else:
                sel = [(ins.imm >> i) & 1 for i in range(len(xs))]
        else:
            ctl = split(rd(cpu, ins, lo, 2), w, lo.nb)
            sel = [(c & 3) if w == 4 else (c >> 1) & 1 for c in ctl]
        wr(cpu, ins, lo, join([xs[(i // per) * per + sel[i]] for i in range(len(xs))], w))
    return h


handles("VPERMILPS")(_permil(4))
handles("VPERMILPD")(_permil(8))


# ---------------------------------------------------------------- cross-lane permutes (AVX2)
def _permd(a, b, nb, imm, ctx):
    """VPERMD/VPERMPS ymm1, ymm2 (indices), ymm3/m256 (table)."""
    idx, tab = split(a, 4, 32), split(b, 4, 32)
    return join([tab[i & 7] for i in idx], 4)


binary(_permd, vex=("VPERMD", "VPERMPS"))


def _permq(a, b, nb, imm, ctx):
    xs = split(b, 8, 32)
    return join([xs[(imm >> (2 * i)) & 3] for i in range(4)], 8)


unary(_permq, vex=("VPERMQ", "VPERMPD"))


# ---------------------------------------------------------------- variable shifts (AVX2)
def _vshift(w, kind):
    bits = 8 * w
    mask = (1 << bits) - 1

    def k(a, b, nb, imm, ctx):
        out = []
        for x, n in zip(split(a, w, nb, kind == "ra"), split(b, w, nb)):
            if kind == "ra":
                out.append(x >> min(n, bits - 1))
            elif n >= bits:
                out.append(0)
            else:
                out.append((x << n) & mask if kind == "ll" else x >> n)
        return join(out, w)
    return k


binary(_vshift(4, "ll"), vex=("VPSLLVD",))
binary(_vshift(8, "ll"), vex=("VPSLLVQ",))
binary(_vshift(4, "rl"), vex=("VPSRLVD",))
binary(_vshift(8, "rl"), vex=("VPSRLVQ",))
binary(_vshift(4, "ra"), vex=("VPSRAVD",))


# ---------------------------------------------------------------- masked moves
def _maskmov(w):
    """VMASKMOVPS/PD, VPMASKMOVD/Q: elements whose mask sign bit is clear are
    neither read (loads give 0) nor written, and cannot fault."""
    sign = 1 << (8 * w - 1)

    def h(cpu, ins):
        lo = layout(ins)
        avx_check(cpu)
        off = ins.ea(cpu)
        seg = ins.seg
        if lo.kind[0] == MEM:                   # store: op0 mem, op1 mask, op2 data
            mask, data = rd(cpu, ins, lo, 1), rd(cpu, ins, lo, 2)
            nb = lo.nb
            picks = [i for i, m in enumerate(split(mask, w, nb)) if m & sign]
            for i in picks:
                cpu.check_write(seg, off + w * i, w)
            for i, v in enumerate(split(data, w, nb)):
                if i in picks:
                    cpu.write(seg, off + w * i, w, v)
            return
        mask = rd(cpu, ins, lo, 1)                # load: op0 dst, op1 mask, op2 mem
        out = [cpu.read(seg, off + w * i, w) if m & sign else 0
               for i, m in enumerate(split(mask, w, lo.nb))]
        wr(cpu, ins, lo, join(out, w))
    return h


handles("VMASKMOVPS", "VPMASKMOVD")(_maskmov(4))
handles("VMASKMOVPD", "VPMASKMOVQ")(_maskmov(8))


# ---------------------------------------------------------------- gathers (AVX2)
_GATHER = {  # mnemonic -> (data bytes, index bytes)
    "vgatherdps": (4, 4), "vgatherqps": (4, 8), "vgatherdpd": (8, 4), "vgatherqpd": (8, 8),
    "vpgatherdd": (4, 4), "vpgatherqd": (4, 8), "vpgatherdq": (8, 4), "vpgatherqq": (8, 8),
}


@handles(*[m.upper() for m in _GATHER])
def vgather(cpu, ins):
    """VGATHERxxx dst, [base + index*scale + disp], mask: load each element
    whose mask sign bit is set, clearing that mask element as it completes
    (a fault leaves the completed ones done and the rest restartable); at
    the end the mask register is zero.  #UD if dst, index and mask are not
    three different registers (APM vol 4 VGATHERDPS)."""
    lo = layout(ins)
    avx_check(cpu)
    w, iw = _GATHER[ins.name]
    i = ins.iced
    didx, midx = lo.idx[0], lo.idx[2]
    vreg = i.memory_index
    from iced_x86 import Register as R
    xidx = (vreg - R.XMM0) if R.XMM0 <= vreg <= R.XMM15 else (vreg - R.YMM0)
    if len({didx, midx, xidx}) < 3:
        raise ud(f"{ins.name}: destination, index and mask must differ")
    wide = lo.kind[0] == Y
    nb = 32 if wide else 16
    index = cpu.xmm[xidx] | (cpu.ymmh[xidx] << 128)
    inb = 32 if R.YMM0 <= vreg <= R.YMM15 else 16
    count = min(nb // w, inb // iw)
    idxs = split(index & ((1 << (8 * inb)) - 1), iw, inb, True)
    base = ins.ea(cpu)
    scale = i.memory_index_scale
    amask = (1 << (8 * ins.asize)) - 1
    sign = 1 << (8 * w - 1)
    dst = cpu.xmm[didx] | (cpu.ymmh[didx] << 128)
    mask = cpu.xmm[midx] | (cpu.ymmh[midx] << 128)
    em = (1 << (8 * w)) - 1
    for k in range(count):
        if mask >> (8 * w * k) & sign:
            v = cpu.read(ins.seg, (base + idxs[k] * scale) & amask, w)
            dst = (dst & ~(em << (8 * w * k))) | (v << (8 * w * k))
            mask &= ~(em << (8 * w * k))
            _set(cpu, didx, dst, wide)
            _set(cpu, midx, mask, wide)
    keep = (1 << (8 * w * count)) - 1
    _set(cpu, didx, dst & keep, wide)
    _set(cpu, midx, 0, wide)


def _set(cpu, i, v, wide):
    cpu.xmm[i] = v & M128
    cpu.ymmh[i] = (v >> 128) & M128 if wide else 0


# ---------------------------------------------------------------- state
@handles("VZEROUPPER")
def vzeroupper(cpu, ins):
    avx_check(cpu)
    for i in range(16 if cpu.long64 else 8):
        cpu.ymmh[i] = 0


@handles("VZEROALL")
def vzeroall(cpu, ins):
    avx_check(cpu)
    for i in range(16 if cpu.long64 else 8):
        cpu.xmm[i] = cpu.ymmh[i] = 0


@handles("VLDMXCSR")
def vldmxcsr(cpu, ins):
    avx_check(cpu)
    v = ins.get0(cpu)
    if v & ~fs.MXCSR_MASK:
        raise gp(0, f"VLDMXCSR: reserved bits {v:#x}")
    cpu.mxcsr = v


@handles("VSTMXCSR")
def vstmxcsr(cpu, ins):
    avx_check(cpu)
    ins.set0(cpu, cpu.mxcsr)



# ---------------------------------------------------------------- FMA3
def _fma_handler(f, order, neg_prod, neg_c, scalar, alternate=None):
    """VFMADD/VFMSUB/VFNMADD/VFNMSUB{132,213,231}{PS,PD,SS,SD} and
    VFMADDSUB/VFMSUBADD: one rounding of +-(a * b) +- c, where the digits
    name the operands multiplied (1 = destination, 2 = VEX.vvvv, 3 = r/m) and
    the remaining one is added.  Scalar forms keep the destination's other
    elements (APM vol 4 VFMADD132PS)."""
    from .. import softfloat as sf
    from .simd import commit
    w = f.width // 8
    m = (1 << f.width) - 1
    ia, ib, ic = (int(order[0]) - 1, int(order[1]) - 1, int(order[2]) - 1)

    def lane(ops, i, ctx):
        a, b, c = ops[ia], ops[ib], ops[ic]
        nc = neg_c
        if alternate is not None:                # ADDSUB: even lanes subtract c
            nc = (i % 2 == 0) == (alternate == "addsub")
        return sf.fma(f, a, b, c, ctx, negate_product=neg_prod, negate_c=nc)

    def h(cpu, ins):
        lo = layout(ins)
        avx_check(cpu)
        vals = (rd(cpu, ins, lo, 0), rd(cpu, ins, lo, 1), rd(cpu, ins, lo, 2))
        ctx = sf.mxcsr_ctx(cpu.mxcsr)
        if scalar:
            r = (vals[0] & ~m & M128) | lane([v & m for v in vals], 0, ctx)
        else:
            cols = [split(v, w, lo.nb) for v in vals]
            r = join([lane([c[i] for c in cols], i, ctx) for i in range(lo.nb // w)], w)
        commit(cpu, ctx)
        wr(cpu, ins, lo, r)
    return h


def _fma_all():
    from .. import softfloat as sf
    kinds = {"FMADD": (False, False), "FMSUB": (False, True), "FNMADD": (True, False),
             "FNMSUB": (True, True)}
    for order in ("132", "213", "231"):
        for name, (np_, nc) in kinds.items():
            for suf, f, scalar in (("PS", sf.F32, False), ("PD", sf.F64, False),
                                   ("SS", sf.F32, True), ("SD", sf.F64, True)):
                handles(f"V{name}{order}{suf}")(_fma_handler(f, order, np_, nc, scalar))
        for alt in ("addsub", "subadd"):
            for suf, f in (("PS", sf.F32), ("PD", sf.F64)):
                handles(f"VFM{alt.upper()}{order}{suf}")(_fma_handler(f, order, False, False, False, alt))


_fma_all()


# ---------------------------------------------------------------- F16C
@handles("VCVTPH2PS")
def vcvtph2ps(cpu, ins):
    """Half to single precision: exact; an SNaN raises IE (quieted)."""
    from .. import softfloat as sf
    from .simd import commit
    lo = layout(ins)
    avx_check(cpu)
    n = lo.nb // 4
    src = rd(cpu, ins, lo, 1) & ((1 << (16 * n)) - 1)
    ctx = sf.mxcsr_ctx(cpu.mxcsr)
    ctx.daz = False
    r = join([sf.convert(sf.F16, sf.F32, x, ctx, report_de=False) for x in split(src, 2, 2 * n)], 4)
    commit(cpu, ctx)
    wr(cpu, ins, lo, r)


@handles("VCVTPS2PH")
def vcvtps2ph(cpu, ins):
    """Single to half precision, rounded by imm8[1:0] or (imm8[2]) MXCSR.RC."""
    from .. import softfloat as sf
    from .simd import commit
    lo = layout(ins)
    avx_check(cpu)
    src = rd(cpu, ins, lo, 1)
    nb = 32 if lo.kind[1] == Y else 16
    ctx = sf.mxcsr_ctx(cpu.mxcsr)
    if not ins.imm & 4:
        ctx.rc = ins.imm & 3
    ctx.ftz = False
    r = join([sf.convert(sf.F32, sf.F16, x, ctx) for x in split(src, 4, nb)], 2)
    commit(cpu, ctx)
    if lo.kind[0] == MEM:
        wr(cpu, ins, lo, r)
    else:
        i = lo.idx[0]
        cpu.xmm[i], cpu.ymmh[i] = r, 0
