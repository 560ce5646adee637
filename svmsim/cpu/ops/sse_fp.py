"""SSE/SSE2/SSE3/SSE4.1 floating point and its VEX (AVX) forms: arithmetic,
min/max, square root, reciprocal estimates, compares (CMPccPS and
COMISS/UCOMISS), conversions, rounding, dot products, blends, horizontal
add/subtract (AMD APM vol 4; Intel SDM vol 2 for the operation pseudocode).

All arithmetic is exact and rounded once by svmsim.cpu.softfloat under
MXCSR.RC with DAZ/FTZ; flags and unmasked exceptions follow ops/simd.py.

RCPPS/RCPSS/RSQRTPS/RSQRTSS: the manual only bounds the relative error
(|err| <= 1.5 * 2**-12) and each processor has its own tables; svmsim
returns the correctly rounded binary32 value of 1/x or 1/sqrt(x), raises no
exception flags, flushes denormal inputs to zero (giving infinity) and
denormal results to zero, as the instructions do (docs/DESIGN.md).
"""
from . import handles
from .simd import (binary, unary, split, join, per_lane128, layout, check, rd, wr, commit,
                   legacy_align, is4, M128, MEM)
from .. import softfloat as sf
from ..flags import set_arith, CF, ZF

F32, F64 = sf.F32, sf.F64
PF = 4


# ---------------------------------------------------------------- kernels
def packed(f, op):
    w = f.width // 8

    def k(a, b, nb, imm, ctx):
        return join([op(f, x, y, ctx) for x, y in zip(split(a, w, nb), split(b, w, nb))], w)
    return k


def scalar(f, op):
    m = (1 << f.width) - 1

    def k(a, b, nb, imm, ctx):
        return (a & ~m & M128) | op(f, a & m, b & m, ctx)
    return k


def _min(f, x, y, ctx):
    return sf.minmax(f, x, y, ctx, False)


def _max(f, x, y, ctx):
    return sf.minmax(f, x, y, ctx, True)


def _sqrt2(f, x, y, ctx):
    return sf.sqrt(f, y, ctx)


for _name, _op in (("ADD", sf.add), ("SUB", sf.sub), ("MUL", sf.mul), ("DIV", sf.div),
                   ("MIN", _min), ("MAX", _max)):
    for _suf, _f in (("PS", F32), ("PD", F64)):
        binary(packed(_f, _op), (_name + _suf,), ("V" + _name + _suf,), fp=True)
    for _suf, _f in (("SS", F32), ("SD", F64)):
        binary(scalar(_f, _op), (_name + _suf,), ("V" + _name + _suf,), fp=True)

for _suf, _f in (("PS", F32), ("PD", F64)):
    unary(packed(_f, _sqrt2), ("SQRT" + _suf,), ("VSQRT" + _suf,), fp=True)
binary(scalar(F32, _sqrt2), ("SQRTSS",), ("VSQRTSS",), fp=True)
binary(scalar(F64, _sqrt2), ("SQRTSD",), ("VSQRTSD",), fp=True)


# ---------------------------------------------------------------- reciprocal estimates
def _estimate(f, x, y, ctx, rsqrt):
    c = sf.Ctx(daz=True, ftz=True)
    if rsqrt:
        if sf.is_nan(f, y):
            return sf.quiet(f, y)
        if sf.is_zero(f, y) or sf.is_denormal(f, y):
            return sf.pack_inf(f, y >> 31)
        if y >> 31:
            return f.dnan
        r = sf.sqrt(f, y, sf.Ctx())
        return sf.div(f, 0x3F800000, r, c) if not sf.is_inf(f, y) else 0
    return sf.div(f, 0x3F800000, y, c)


def _rcp(f, x, y, ctx):
    return _estimate(f, x, y, ctx, False)


def _rsqrt(f, x, y, ctx):
    return _estimate(f, x, y, ctx, True)


unary(packed(F32, _rcp), ("RCPPS",), ("VRCPPS",))
unary(packed(F32, _rsqrt), ("RSQRTPS",), ("VRSQRTPS",))
binary(scalar(F32, _rcp), ("RCPSS",), ("VRCPSS",))
binary(scalar(F32, _rsqrt), ("RSQRTSS",), ("VRSQRTSS",))


# ---------------------------------------------------------------- SSE3 horizontal / addsub
def _addsub(f):
    w = f.width // 8

    def k(a, b, nb, imm, ctx):
        out = []
        for i, (x, y) in enumerate(zip(split(a, w, nb), split(b, w, nb))):
            out.append(sf.add(f, x, y, ctx) if i & 1 else sf.sub(f, x, y, ctx))
        return join(out, w)
    return k


def _hop(f, op):
    w = f.width // 8

    def k(a, b, nb, imm, ctx):
        out = []
        for v in (a, b):
            xs = split(v, w, 16)
            out += [op(f, xs[i], xs[i + 1], ctx) for i in range(0, len(xs), 2)]
        return join(out, w)
    return per_lane128(k)


binary(_addsub(F32), ("ADDSUBPS",), ("VADDSUBPS",), fp=True)
binary(_addsub(F64), ("ADDSUBPD",), ("VADDSUBPD",), fp=True)
binary(_hop(F32, sf.add), ("HADDPS",), ("VHADDPS",), fp=True)
binary(_hop(F64, sf.add), ("HADDPD",), ("VHADDPD",), fp=True)
binary(_hop(F32, sf.sub), ("HSUBPS",), ("VHSUBPS",), fp=True)
binary(_hop(F64, sf.sub), ("HSUBPD",), ("VHSUBPD",), fp=True)


# ---------------------------------------------------------------- compares
# Predicates 0-31 (APM vol 4 CMPPS; the legacy encoding has only 0-7): the
# relations that make each true, and whether a QNaN raises IE.
_TRUE = [{sf.EQ}, {sf.LT}, {sf.LT, sf.EQ}, {sf.UN}, {sf.LT, sf.GT, sf.UN}, {sf.EQ, sf.GT, sf.UN},
         {sf.GT, sf.UN}, {sf.LT, sf.EQ, sf.GT}, {sf.EQ, sf.UN}, {sf.LT, sf.UN},
         {sf.LT, sf.EQ, sf.UN}, set(), {sf.LT, sf.GT}, {sf.GT, sf.EQ}, {sf.GT},
         {sf.LT, sf.EQ, sf.GT, sf.UN}]
_SIGNALING = [False, True, True, False, False, True, True, False,
              False, True, True, False, False, True, True, False]
PREDICATES = [(frozenset(_TRUE[p & 15]), _SIGNALING[p & 15] ^ bool(p & 16)) for p in range(32)]


def _cmp_lane(f, x, y, ctx, pred):
    true, signaling = PREDICATES[pred]
    return -1 if sf.compare(f, x, y, ctx, signaling) in true else 0


def _cmp(f, is_scalar):
    w = f.width // 8
    m = (1 << f.width) - 1

    def k(a, b, nb, imm, ctx):
        if is_scalar:
            return (a & ~m & M128) | (_cmp_lane(f, a & m, b & m, ctx, imm) & m)
        return join([_cmp_lane(f, x, y, ctx, imm) for x, y in zip(split(a, w, nb), split(b, w, nb))], w)
    return k


def _cmp_handlers(kernel, legacy, vex):
    """CMPccPS: legacy predicates use imm8[2:0], VEX imm8[4:0]."""
    def h_legacy(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 1, legacy_align(ins, lo, 1))
        a = rd(cpu, ins, lo, 0)
        ctx = sf.mxcsr_ctx(cpu.mxcsr)
        r = kernel(a, b, lo.nb, ins.imm & 7, ctx)
        commit(cpu, ctx)
        wr(cpu, ins, lo, r)

    def h_vex(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 2)
        a = rd(cpu, ins, lo, 1)
        ctx = sf.mxcsr_ctx(cpu.mxcsr)
        r = kernel(a, b, lo.nb, ins.imm & 31, ctx)
        commit(cpu, ctx)
        wr(cpu, ins, lo, r)
    handles(legacy)(h_legacy)
    handles(vex)(h_vex)


_cmp_handlers(_cmp(F32, False), "CMPPS", "VCMPPS")
_cmp_handlers(_cmp(F64, False), "CMPPD", "VCMPPD")
_cmp_handlers(_cmp(F32, True), "CMPSS", "VCMPSS")
_cmp_handlers(_cmp(F64, True), "CMPSD", "VCMPSD")


def _comis(f, signaling):
    """COMISS/UCOMISS: ZF, PF, CF from the relation; OF, SF, AF cleared."""
    m = (1 << f.width) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 1) & m
        a = rd(cpu, ins, lo, 0) & m
        ctx = sf.mxcsr_ctx(cpu.mxcsr)
        r = sf.compare(f, a, b, ctx, signaling)
        commit(cpu, ctx)
        set_arith(cpu, {sf.UN: ZF | PF | CF, sf.LT: CF, sf.EQ: ZF, sf.GT: 0}[r])
    return h


handles("COMISS", "VCOMISS")(_comis(F32, True))
handles("UCOMISS", "VUCOMISS")(_comis(F32, False))
handles("COMISD", "VCOMISD")(_comis(F64, True))
handles("UCOMISD", "VUCOMISD")(_comis(F64, False))


# ---------------------------------------------------------------- conversions
def _cvt_lanes(src, dst, n_of, fn):
    """Convert the low n_of(nb) elements of b (format src) with fn."""
    ws, wd = src // 8, dst // 8

    def k(a, b, nb, imm, ctx):
        n = n_of(nb)
        xs = split(b & ((1 << (8 * ws * n)) - 1), ws, ws * n)
        return join([fn(x, ctx) for x in xs], wd)
    return k


def _f2f(fs, fd):
    return lambda x, ctx: sf.convert(fs, fd, x, ctx)


def _f2i(f, bits, trunc):
    return lambda x, ctx: sf.to_int(f, x, bits, ctx, sf.RZ if trunc else None)


def _i2f(f, bits):
    def fn(x, ctx):
        if x >> (bits - 1):
            x -= 1 << bits
        return sf.from_int(f, x, ctx)
    return fn


# packed, same element count in the destination's width
unary(_cvt_lanes(32, 32, lambda nb: nb // 4, _i2f(F32, 32)), ("CVTDQ2PS",), ("VCVTDQ2PS",), fp=True)
unary(_cvt_lanes(32, 32, lambda nb: nb // 4, _f2i(F32, 32, False)), ("CVTPS2DQ",), ("VCVTPS2DQ",), fp=True)
unary(_cvt_lanes(32, 32, lambda nb: nb // 4, _f2i(F32, 32, True)), ("CVTTPS2DQ",), ("VCVTTPS2DQ",), fp=True)
# widening: the destination is nb wide, the source half of it
unary(_cvt_lanes(32, 64, lambda nb: nb // 8, _f2f(F32, F64)), ("CVTPS2PD",), ("VCVTPS2PD",), fp=True,
      align=False)
unary(_cvt_lanes(32, 64, lambda nb: nb // 8, _i2f(F64, 32)), ("CVTDQ2PD",), ("VCVTDQ2PD",), fp=True,
      align=False)
# narrowing: the source is nb wide, the result fills its low half
unary(_cvt_lanes(64, 32, lambda nb: nb // 8, _f2f(F64, F32)), ("CVTPD2PS",), ("VCVTPD2PS",), fp=True)
unary(_cvt_lanes(64, 32, lambda nb: nb // 8, _f2i(F64, 32, False)), ("CVTPD2DQ",), ("VCVTPD2DQ",), fp=True)
unary(_cvt_lanes(64, 32, lambda nb: nb // 8, _f2i(F64, 32, True)), ("CVTTPD2DQ",), ("VCVTTPD2DQ",), fp=True)


def _scalar_cvt(fs, fd):
    m = (1 << fd.width) - 1
    ms = (1 << fs.width) - 1

    def k(a, b, nb, imm, ctx):
        return (a & ~m & M128) | sf.convert(fs, fd, b & ms, ctx)
    return k


binary(_scalar_cvt(F32, F64), ("CVTSS2SD",), ("VCVTSS2SD",), fp=True)
binary(_scalar_cvt(F64, F32), ("CVTSD2SS",), ("VCVTSD2SS",), fp=True)


def _op_bits(ins, n):
    """Width in bits of a GPR or memory operand."""
    return 8 * (ins.opsz[n] or ins.mem_size)


def _cvtsi2f(f):
    """CVTSI2SS/SD: legacy ``op xmm, r/m``; VEX ``op xmm1, xmm2, r/m``."""
    m = (1 << f.width) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        n = 2 if lo.vex else 1
        bits = _op_bits(ins, n)
        v = rd(cpu, ins, lo, n) & ((1 << bits) - 1)
        a = rd(cpu, ins, lo, 1 if lo.vex else 0)
        ctx = sf.mxcsr_ctx(cpu.mxcsr)
        r = _i2f(f, bits)(v, ctx)
        commit(cpu, ctx)
        wr(cpu, ins, lo, (a & ~m & M128) | r)
    return h


handles("CVTSI2SS", "VCVTSI2SS")(_cvtsi2f(F32))
handles("CVTSI2SD", "VCVTSI2SD")(_cvtsi2f(F64))


def _cvtf2si(f, trunc):
    """CVT(T)SS2SI / CVT(T)SD2SI r32/r64, xmm/m (integer indefinite on IE)."""
    m = (1 << f.width) - 1

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        bits = _op_bits(ins, 0)
        x = rd(cpu, ins, lo, 1) & m
        ctx = sf.mxcsr_ctx(cpu.mxcsr)
        r = sf.to_int(f, x, bits, ctx, sf.RZ if trunc else None)
        commit(cpu, ctx)
        ins.set0(cpu, r)
    return h


handles("CVTSS2SI", "VCVTSS2SI")(_cvtf2si(F32, False))
handles("CVTTSS2SI", "VCVTTSS2SI")(_cvtf2si(F32, True))
handles("CVTSD2SI", "VCVTSD2SI")(_cvtf2si(F64, False))
handles("CVTTSD2SI", "VCVTTSD2SI")(_cvtf2si(F64, True))


# MMX-operand conversions
def _cvtpi2ps(a, b, nb, imm, ctx):
    lo = join([_i2f(F32, 32)(x, ctx) for x in split(b & ((1 << 64) - 1), 4, 8)], 4)
    return (a & ~((1 << 64) - 1)) | lo


binary(_cvtpi2ps, ("CVTPI2PS",), fp=True)
unary(lambda a, b, nb, imm, ctx: join([_i2f(F64, 32)(x, ctx) for x in split(b, 4, 8)], 8),
      ("CVTPI2PD",), fp=True)
for _name, _f, _trunc in (("CVTPS2PI", F32, False), ("CVTTPS2PI", F32, True),
                          ("CVTPD2PI", F64, False), ("CVTTPD2PI", F64, True)):
    _w = _f.width // 8
    unary(lambda a, b, nb, imm, ctx, _f=_f, _w=_w, _t=_trunc: join(
        [sf.to_int(_f, x, 32, ctx, sf.RZ if _t else None) for x in split(b & ((1 << (16 * _w)) - 1), _w, 2 * _w)], 4),
        (_name,), fp=True, align=_f is F64)


# ---------------------------------------------------------------- rounding
def _round_lane(f, x, ctx, imm):
    rc = ctx.rc if imm & 4 else imm & 3
    c = sf.Ctx(rc, daz=ctx.daz)
    r = sf.round_int(f, x, c, rc, inexact_ok=not imm & 8)
    ctx.flags |= c.flags
    return r


def _round(f, is_scalar):
    w = f.width // 8
    m = (1 << f.width) - 1

    def k(a, b, nb, imm, ctx):
        if is_scalar:
            return (a & ~m & M128) | _round_lane(f, b & m, ctx, imm)
        return join([_round_lane(f, x, ctx, imm) for x in split(b, w, nb)], w)
    return k


unary(_round(F32, False), ("ROUNDPS",), ("VROUNDPS",), fp=True)
unary(_round(F64, False), ("ROUNDPD",), ("VROUNDPD",), fp=True)
binary(_round(F32, True), ("ROUNDSS",), ("VROUNDSS",), fp=True)
binary(_round(F64, True), ("ROUNDSD",), ("VROUNDSD",), fp=True)


# ---------------------------------------------------------------- dot products
def _dpps(a, b, nb, imm, ctx):
    xs, ys = split(a, 4, 16), split(b, 4, 16)
    t = [sf.mul(F32, xs[i], ys[i], ctx) if imm >> (4 + i) & 1 else 0 for i in range(4)]
    s = sf.add(F32, sf.add(F32, t[0], t[1], ctx), sf.add(F32, t[2], t[3], ctx), ctx)
    return join([s if imm >> i & 1 else 0 for i in range(4)], 4)


def _dppd(a, b, nb, imm, ctx):
    xs, ys = split(a, 8, 16), split(b, 8, 16)
    t = [sf.mul(F64, xs[i], ys[i], ctx) if imm >> (4 + i) & 1 else 0 for i in range(2)]
    s = sf.add(F64, t[0], t[1], ctx)
    return join([s if imm >> i & 1 else 0 for i in range(2)], 8)


binary(per_lane128(_dpps), ("DPPS",), ("VDPPS",), fp=True)
binary(_dppd, ("DPPD",), ("VDPPD",), fp=True)


# ---------------------------------------------------------------- variable blends
def _blendv(w):
    sign = 1 << (8 * w - 1)

    def k(a, b, mask, nb):
        xs, ys, ms = split(a, w, nb), split(b, w, nb), split(mask, w, nb)
        return join([y if m & sign else x for x, y, m in zip(xs, ys, ms)], w)
    return k


def _blendv_handlers(w, legacy, vex):
    k = _blendv(w)

    def h_legacy(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 1, legacy_align(ins, lo, 1))
        wr(cpu, ins, lo, k(rd(cpu, ins, lo, 0), b, cpu.xmm[0], 16))

    def h_vex(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 2)
        wr(cpu, ins, lo, k(rd(cpu, ins, lo, 1), b, is4(cpu, ins, lo), lo.nb))
    handles(legacy)(h_legacy)
    handles(vex)(h_vex)


_blendv_handlers(4, "BLENDVPS", "VBLENDVPS")
_blendv_handlers(8, "BLENDVPD", "VBLENDVPD")
_blendv_handlers(1, "PBLENDVB", "VPBLENDVB")


# ---------------------------------------------------------------- sign masks and tests
_GATHER_MSB = 0x0102040810204080        # moves the MSBs of 8 bytes into one byte


def _movmsk(w):
    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        v = rd(cpu, ins, lo, 1)
        r = 0
        if w == 1:
            for q in range(lo.nb // 8):
                m = (v >> (64 * q + 7)) & 0x0101010101010101
                r |= (((m * _GATHER_MSB) >> 56) & 0xFF) << (8 * q)
        else:
            for i, x in enumerate(split(v, w, lo.nb)):
                r |= (x >> (8 * w - 1)) << i
        ins.set0(cpu, r)
    return h


handles("MOVMSKPS", "VMOVMSKPS")(_movmsk(4))
handles("MOVMSKPD", "VMOVMSKPD")(_movmsk(8))
handles("PMOVMSKB", "VPMOVMSKB")(_movmsk(1))


def _test_flags(cpu, zf, cf):
    set_arith(cpu, (ZF if zf else 0) | (CF if cf else 0))


@handles("PTEST", "VPTEST")
def ptest(cpu, ins):
    """ZF = (a AND b) == 0, CF = (NOT a AND b) == 0; other flags 0."""
    lo = layout(ins)
    check(cpu, lo)
    b = rd(cpu, ins, lo, 1, legacy_align(ins, lo, 1))
    a = rd(cpu, ins, lo, 0)
    _test_flags(cpu, a & b == 0, ~a & b == 0)


def _vtest(w):
    sign = 0
    for i in range(0, 256, 8 * w):
        sign |= 1 << (i + 8 * w - 1)

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 1) & sign
        a = rd(cpu, ins, lo, 0) & sign
        _test_flags(cpu, a & b == 0, ~a & b == 0)
    return h


handles("VTESTPS")(_vtest(4))
handles("VTESTPD")(_vtest(8))


# ---------------------------------------------------------------- INSERTPS / EXTRACTPS
def _insertps(a, b, nb, imm, ctx, from_mem=False):
    src = b & 0xFFFFFFFF if from_mem else (b >> (32 * ((imm >> 6) & 3))) & 0xFFFFFFFF
    xs = list(split(a, 4, 16))
    xs[(imm >> 4) & 3] = src
    return join([0 if imm >> i & 1 else x for i, x in enumerate(xs)], 4)


@handles("INSERTPS", "VINSERTPS")
def insertps(cpu, ins):
    lo = layout(ins)
    check(cpu, lo)
    n = 2 if lo.vex else 1
    b = rd(cpu, ins, lo, n)
    a = rd(cpu, ins, lo, 1 if lo.vex else 0)
    wr(cpu, ins, lo, _insertps(a, b, 16, ins.imm, None, lo.kind[n] == MEM))


@handles("EXTRACTPS", "VEXTRACTPS")
def extractps(cpu, ins):
    lo = layout(ins)
    check(cpu, lo)
    v = (rd(cpu, ins, lo, 1) >> (32 * (ins.imm & 3))) & 0xFFFFFFFF
    ins.set0(cpu, v)

