"""Packed-integer instructions: MMX, SSE2, SSSE3, SSE4.1, SSE4.2 (PCMPGTQ)
and their VEX (AVX/AVX2) forms (AMD APM vol 4 and vol 5; CPUID bits in
cpu/profiles.py).

Each instruction is a kernel over plain integers (see ops/simd.py); one
kernel serves the MMX (64-bit), XMM and YMM forms.  Shuffles, packs,
unpacks, byte shifts, PALIGNR, PSHUFB, horizontal ops and MPSADBW work
within 128-bit lanes, as the AVX2 forms do.
"""
from .simd import binary, unary, split, join, per_lane128, M64, M128

# ---------------------------------------------------------------- helpers


def _sat(v, bits, signed):
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return lo if v < lo else hi if v > hi else v


def ew(w, fn, signed=False):
    """Element-wise kernel on w-byte lanes."""
    def k(a, b, nb, imm, ctx):
        return join(map(fn, split(a, w, nb, signed), split(b, w, nb, signed)), w)
    return k


def ew_sat(w, op, signed):
    bits = 8 * w
    return ew(w, lambda x, y: _sat(op(x, y), bits, signed), signed)


def reg(kernel, base, vex=True):
    """Register a binary integer op in its legacy (MMX/SSE) and VEX forms."""
    binary(kernel, legacy=(base,), vex=(("V" + base,) if vex else ()))


# ---------------------------------------------------------------- add/sub/compare/logic
def _rep(pattern, w, nb):
    """``pattern`` (a w-byte value) repeated over nb bytes."""
    r = 0
    for k in range(nb // w):
        r |= pattern << (8 * w * k)
    return r


_SWAR = {}


def _swar(w, nb):
    m = _SWAR.get((w, nb))
    if m is None:
        bits = 8 * w
        m = _SWAR[(w, nb)] = (_rep((1 << (bits - 1)) - 1, w, nb), _rep(1 << (bits - 1), w, nb),
                              _rep(1, w, nb), (1 << bits) - 1)
    return m


def _add(w):
    """Lane-wise add without unpacking: add the low bits, then fix each top bit."""
    def k(a, b, nb, imm, ctx):
        low, top, _, _ = _swar(w, nb)
        return ((a & low) + (b & low)) ^ ((a ^ b) & top)
    return k


def _sub(w):
    def k(a, b, nb, imm, ctx):
        low, top, _, _ = _swar(w, nb)
        return ((a | top) - (b & low)) ^ ((a ^ ~b) & top)
    return k


def _cmpeq(w):
    """All ones where the lanes are equal: a lane of a ^ b is zero."""
    def k(a, b, nb, imm, ctx):
        low, top, one, lane = _swar(w, nb)
        x = a ^ b
        nonzero = ((x | ((x & low) + low)) & top) >> (8 * w - 1)
        return (one & ~nonzero) * lane
    return k


for _w, _s in ((1, "B"), (2, "W"), (4, "D"), (8, "Q")):
    reg(_add(_w), "PADD" + _s)
    reg(_sub(_w), "PSUB" + _s)
    reg(_cmpeq(_w), "PCMPEQ" + _s)
    if _w < 8:
        reg(ew(_w, lambda x, y: -1 if x > y else 0, signed=True), "PCMPGT" + _s)
reg(ew(8, lambda x, y: -1 if x > y else 0, signed=True), "PCMPGTQ")
for _w, _s in ((1, "B"), (2, "W")):
    reg(ew_sat(_w, lambda x, y: x + y, True), "PADDS" + _s)
    reg(ew_sat(_w, lambda x, y: x - y, True), "PSUBS" + _s)
    reg(ew_sat(_w, lambda x, y: x + y, False), "PADDUS" + _s)
    reg(ew_sat(_w, lambda x, y: x - y, False), "PSUBUS" + _s)
    reg(ew(_w, lambda x, y: (x + y + 1) >> 1), "PAVG" + _s)


def _and(a, b, nb, imm, ctx):
    return a & b


def _andn(a, b, nb, imm, ctx):
    return ~a & b & ((1 << (8 * nb)) - 1)


def _or(a, b, nb, imm, ctx):
    return a | b


def _xor(a, b, nb, imm, ctx):
    return a ^ b


for _k, _n in ((_and, "PAND"), (_andn, "PANDN"), (_or, "POR"), (_xor, "PXOR")):
    reg(_k, _n)
binary(_and, ("ANDPS", "ANDPD"), ("VANDPS", "VANDPD"))
binary(_andn, ("ANDNPS", "ANDNPD"), ("VANDNPS", "VANDNPD"))
binary(_or, ("ORPS", "ORPD"), ("VORPS", "VORPD"))
binary(_xor, ("XORPS", "XORPD"), ("VXORPS", "VXORPD"))

# min/max (SSE for bytes/words, SSE4.1 for the rest)
for _w, _s in ((1, "B"), (2, "W"), (4, "D")):
    reg(ew(_w, min), "PMINU" + _s)
    reg(ew(_w, max), "PMAXU" + _s)
    reg(ew(_w, min, signed=True), "PMINS" + _s)
    reg(ew(_w, max, signed=True), "PMAXS" + _s)

# ---------------------------------------------------------------- multiplies
reg(ew(2, lambda x, y: x * y), "PMULLW")
reg(ew(4, lambda x, y: x * y), "PMULLD")
reg(ew(2, lambda x, y: (x * y) >> 16, signed=True), "PMULHW")
reg(ew(2, lambda x, y: (x * y) >> 16), "PMULHUW")
reg(ew(2, lambda x, y: ((x * y >> 14) + 1) >> 1, signed=True), "PMULHRSW")


def _mul_even(signed):
    def k(a, b, nb, imm, ctx):
        xs = split(a, 4, nb, signed)[::2]
        ys = split(b, 4, nb, signed)[::2]
        return join([x * y for x, y in zip(xs, ys)], 8)
    return k


reg(_mul_even(False), "PMULUDQ")
reg(_mul_even(True), "PMULDQ")


def _pmaddwd(a, b, nb, imm, ctx):
    p = [x * y for x, y in zip(split(a, 2, nb, True), split(b, 2, nb, True))]
    return join([p[i] + p[i + 1] for i in range(0, len(p), 2)], 4)


def _pmaddubsw(a, b, nb, imm, ctx):
    p = [x * y for x, y in zip(split(a, 1, nb), split(b, 1, nb, True))]
    return join([_sat(p[i] + p[i + 1], 16, True) for i in range(0, len(p), 2)], 2)


def _psadbw(a, b, nb, imm, ctx):
    d = [abs(x - y) for x, y in zip(split(a, 1, nb), split(b, 1, nb))]
    return join([sum(d[i:i + 8]) for i in range(0, len(d), 8)], 8)


reg(_pmaddwd, "PMADDWD")
reg(_pmaddubsw, "PMADDUBSW")
reg(_psadbw, "PSADBW")

# ---------------------------------------------------------------- SSSE3 sign/abs/horizontal
for _w, _s in ((1, "B"), (2, "W"), (4, "D")):
    reg(ew(_w, lambda x, y: -x if y < 0 else 0 if y == 0 else x, signed=True), "PSIGN" + _s)
    unary(lambda a, b, nb, imm, ctx, _w=_w: join(map(abs, split(b, _w, nb, True)), _w),
          ("PABS" + _s,), ("VPABS" + _s,))


def _horizontal(w, op, signed=False, sat=False):
    bits = 8 * w

    def k(a, b, nb, imm, ctx):
        out = []
        for v in (a, b):
            xs = split(v, w, nb, signed)
            for i in range(0, len(xs), 2):
                r = op(xs[i], xs[i + 1])
                out.append(_sat(r, bits, True) if sat else r)
        return join(out, w)
    return per_lane128(k)


reg(_horizontal(2, lambda x, y: x + y), "PHADDW")
reg(_horizontal(4, lambda x, y: x + y), "PHADDD")
reg(_horizontal(2, lambda x, y: x + y, True, True), "PHADDSW")
reg(_horizontal(2, lambda x, y: x - y), "PHSUBW")
reg(_horizontal(4, lambda x, y: x - y), "PHSUBD")
reg(_horizontal(2, lambda x, y: x - y, True, True), "PHSUBSW")

# ---------------------------------------------------------------- shifts


def _shift(w, kind):
    """PSLL/PSRL/PSRA by a count from a vector (its low 64 bits) or an imm8."""
    bits = 8 * w
    mask = (1 << bits) - 1

    def k(a, b, nb, imm, ctx):
        n = imm if imm is not None else (b & M64)
        if kind == "ra":
            n = min(n, bits - 1)
            return join([x >> n for x in split(a, w, nb, True)], w)
        if n >= bits:
            return 0
        if kind == "ll":
            return join([(x << n) & mask for x in split(a, w, nb)], w)
        return join([x >> n for x in split(a, w, nb)], w)
    return k


def _shift_handlers():
    """Shift forms: ``op v, v/m`` (count vector), ``op v, imm8``; VEX adds a
    source: ``vop v, v, v/m`` and ``vop v, v, imm8``."""
    from .simd import layout, check, avx_check, rd, wr, legacy_align

    def make(k):
        def h(cpu, ins):
            lo = layout(ins)
            check(cpu, lo)
            if lo.vex:
                src = rd(cpu, ins, lo, 1)
                cnt = None if ins.imm is not None else rd(cpu, ins, lo, 2) & M64
            else:
                src = rd(cpu, ins, lo, 0)
                cnt = None if ins.imm is not None else rd(cpu, ins, lo, 1, legacy_align(ins, lo, 1)) & M64
            wr(cpu, ins, lo, k(src, cnt, lo.nb, ins.imm, None))
        return h
    return make


_make_shift = _shift_handlers()
from . import handles  # noqa: E402
for _w, _s in ((2, "W"), (4, "D"), (8, "Q")):
    for _kind, _p in (("ll", "PSLL"), ("rl", "PSRL"), ("ra", "PSRA")):
        if _kind == "ra" and _w == 8:
            continue
        _h = _make_shift(_shift(_w, _kind))
        handles(_p + _s, "V" + _p + _s)(_h)


def _byte_shift(left):
    def k(a, b, nb, imm, ctx):
        n = min(imm, 16)
        return ((a << (8 * n)) & M128) if left else (a >> (8 * n))
    return per_lane128(k)


def _bshift_handler(k):
    from .simd import layout, check, rd, wr

    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        src = rd(cpu, ins, lo, 1 if lo.vex else 0)
        wr(cpu, ins, lo, k(src, 0, lo.nb, ins.imm, None))
    return h


handles("PSLLDQ", "VPSLLDQ")(_bshift_handler(_byte_shift(True)))
handles("PSRLDQ", "VPSRLDQ")(_bshift_handler(_byte_shift(False)))

# ---------------------------------------------------------------- pack / unpack


def _pack(w, signed_out):
    bits = 4 * w

    def k(a, b, nb, imm, ctx):
        xs = list(split(a, w, nb, True)) + list(split(b, w, nb, True))
        return join([_sat(x, bits, signed_out) for x in xs], w // 2)
    return per_lane128(k)


reg(_pack(2, True), "PACKSSWB")
reg(_pack(4, True), "PACKSSDW")
reg(_pack(2, False), "PACKUSWB")
reg(_pack(4, False), "PACKUSDW")


def _unpack(w, high):
    def k(a, b, nb, imm, ctx):
        xs, ys = split(a, w, nb), split(b, w, nb)
        n = len(xs) // 2
        sel = range(n, 2 * n) if high else range(n)
        out = []
        for i in sel:
            out += (xs[i], ys[i])
        return join(out, w)

    def kernel(a, b, nb, imm, ctx):
        if nb <= 16:
            return k(a, b, nb, imm, ctx)
        return k(a & M128, b & M128, 16, imm, ctx) | (k(a >> 128, b >> 128, 16, imm, ctx) << 128)
    return kernel


for _w, _s in ((1, "BW"), (2, "WD"), (4, "DQ"), (8, "QDQ")):
    reg(_unpack(_w, False), "PUNPCKL" + _s)
    reg(_unpack(_w, True), "PUNPCKH" + _s)
binary(_unpack(4, False), ("UNPCKLPS",), ("VUNPCKLPS",))
binary(_unpack(4, True), ("UNPCKHPS",), ("VUNPCKHPS",))
binary(_unpack(8, False), ("UNPCKLPD",), ("VUNPCKLPD",))
binary(_unpack(8, True), ("UNPCKHPD",), ("VUNPCKHPD",))

# ---------------------------------------------------------------- shuffles


def _pshufd(a, b, nb, imm, ctx):
    xs = split(b, 4, 16)
    return join([xs[(imm >> (2 * i)) & 3] for i in range(4)], 4)


def _pshufhw(a, b, nb, imm, ctx):
    xs = split(b, 2, 16)
    return join(list(xs[:4]) + [xs[4 + ((imm >> (2 * i)) & 3)] for i in range(4)], 2)


def _pshuflw(a, b, nb, imm, ctx):
    xs = split(b, 2, 16)
    return join([xs[(imm >> (2 * i)) & 3] for i in range(4)] + list(xs[4:]), 2)


def _pshufw(a, b, nb, imm, ctx):
    xs = split(b, 2, 8)
    return join([xs[(imm >> (2 * i)) & 3] for i in range(4)], 2)


unary(per_lane128(_pshufd), ("PSHUFD",), ("VPSHUFD",))
unary(per_lane128(_pshufhw), ("PSHUFHW",), ("VPSHUFHW",))
unary(per_lane128(_pshuflw), ("PSHUFLW",), ("VPSHUFLW",))
unary(_pshufw, ("PSHUFW",))


def _pshufb(a, b, nb, imm, ctx):
    xs, sel = split(a, 1, nb), split(b, 1, nb)
    n = nb if nb == 8 else 16
    return join([0 if s & 0x80 else xs[s & (n - 1)] for s in sel], 1)


reg(per_lane128(_pshufb), "PSHUFB")


def _palignr(a, b, nb, imm, ctx):
    bits = 8 * nb
    v = (a << bits) | b
    return (v >> (8 * imm)) & ((1 << bits) - 1) if imm < 2 * nb else 0


reg(per_lane128(_palignr), "PALIGNR")


def _shufps(a, b, nb, imm, ctx):
    xs, ys = split(a, 4, 16), split(b, 4, 16)
    return join([xs[imm & 3], xs[(imm >> 2) & 3], ys[(imm >> 4) & 3], ys[(imm >> 6) & 3]], 4)


def _shufpd_k(a, b, nb, imm, ctx):
    xs, ys = split(a, 8, nb), split(b, 8, nb)
    out = []
    for lane in range(nb // 16):
        out += (xs[2 * lane + ((imm >> (2 * lane)) & 1)], ys[2 * lane + ((imm >> (2 * lane + 1)) & 1)])
    return join(out, 8)


binary(per_lane128(_shufps), ("SHUFPS",), ("VSHUFPS",))
binary(_shufpd_k, ("SHUFPD",), ("VSHUFPD",))

# ---------------------------------------------------------------- SSE4.1 blends, tests, extends


def _blend(w):
    def k(a, b, nb, imm, ctx):
        xs, ys = split(a, w, nb), split(b, w, nb)
        n = len(xs)
        per = 16 // w
        return join([ys[i] if imm >> (i % per if w == 2 else i) & 1 else xs[i] for i in range(n)], w)
    return k


binary(_blend(2), ("PBLENDW",), ("VPBLENDW",))
binary(_blend(4), ("BLENDPS",), ("VBLENDPS",))
binary(_blend(8), ("BLENDPD",), ("VBLENDPD",))
binary(_blend(4), (), ("VPBLENDD",))


def _mpsadbw(a, b, nb, imm, ctx):
    xs, ys = split(a, 1, 16), split(b, 1, 16)
    ao = 4 * ((imm >> 2) & 1)
    bo = 4 * (imm & 3)
    out = []
    for i in range(8):
        out.append(sum(abs(xs[ao + i + j] - ys[bo + j]) for j in range(4)))
    return join(out, 2)


def _mpsadbw_k(a, b, nb, imm, ctx):
    if nb <= 16:
        return _mpsadbw(a, b, 16, imm, ctx)
    return _mpsadbw(a & M128, b & M128, 16, imm, ctx) | (_mpsadbw(a >> 128, b >> 128, 16, imm >> 3, ctx) << 128)


binary(_mpsadbw_k, ("MPSADBW",), ("VMPSADBW",))


def _phminposuw(a, b, nb, imm, ctx):
    xs = list(split(b, 2, 16))
    m = min(xs)
    return m | (xs.index(m) << 16)


unary(_phminposuw, ("PHMINPOSUW",), ("VPHMINPOSUW",))


def _extend(w_in, w_out, signed):
    def k(a, b, nb, imm, ctx):
        n = nb // w_out
        return join(split(b & ((1 << (8 * n * w_in)) - 1), w_in, n * w_in, signed), w_out)
    return k


for _sx, _signed in (("SX", True), ("ZX", False)):
    for _a, _wi in (("B", 1), ("W", 2), ("D", 4)):
        for _b, _wo in (("W", 2), ("D", 4), ("Q", 8)):
            if _wo <= _wi:
                continue
            unary(_extend(_wi, _wo, _signed), ("PMOV%s%s%s" % (_sx, _a, _b),), ("VPMOV%s%s%s" % (_sx, _a, _b),),
                  align=False)


# ---------------------------------------------------------------- SSE4a (AMD)
def _bitfield(ins, cpu, lo):
    """(length, index) of EXTRQ/INSERTQ: immediates, or bits of the second
    register (EXTRQ xmm2[5:0], [13:8]; INSERTQ xmm2[69:64], [77:72]).
    A length of 0 means 64 (APM vol 4 EXTRQ)."""
    from .simd import rd
    if ins.imm2 is not None:
        n, i = ins.imm & 0x3F, ins.imm2 & 0x3F
    else:
        v = rd(cpu, ins, lo, 1)
        if ins.name == "insertq":
            v >>= 64
        n, i = v & 0x3F, (v >> 8) & 0x3F
    return (n or 64), i


def _sse4a_handlers():
    from .simd import layout, check, rd, wr

    @handles("EXTRQ")
    def extrq(cpu, ins):
        """Extract bits [index + length - 1 : index] of the low quadword; the
        upper quadword (undefined in the APM) is cleared, as on the AMD host."""
        lo = layout(ins)
        check(cpu, lo)
        n, i = _bitfield(ins, cpu, lo)
        a = rd(cpu, ins, lo, 0)
        wr(cpu, ins, lo, ((a & M64) >> i) & ((1 << n) - 1))

    @handles("INSERTQ")
    def insertq(cpu, ins):
        """Insert the low ``length`` bits of the source's low quadword at
        ``index`` of the destination's low quadword; the upper quadword
        (undefined in the APM) is cleared, as on the AMD host."""
        lo = layout(ins)
        check(cpu, lo)
        n, i = _bitfield(ins, cpu, lo)
        a = rd(cpu, ins, lo, 0)
        src = rd(cpu, ins, lo, 1) & ((1 << n) - 1)
        mask = (((1 << n) - 1) << i) & M64
        wr(cpu, ins, lo, ((a & M64) & ~mask) | ((src << i) & mask))

    @handles("MOVNTSS", "MOVNTSD")
    def movntss(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        wr(cpu, ins, lo, rd(cpu, ins, lo, 1) & ((1 << (8 * ins.mem_size)) - 1))


_sse4a_handlers()
