"""IEEE 754 arithmetic on bit patterns, exact, with the x86 rules.

Every operation takes and returns raw encodings (Python ints) and reports the
exception flags it raised; results are computed exactly with Python integers
and rounded once, so every rounding mode, precision and flag is bit-exact
(no host floating point is involved).  Formats: binary16, binary32, binary64
and the x87 80-bit double-extended format (explicit integer bit).

The x86-specific rules (AMD APM vol 1, 4.9 "Floating-Point Number
Representation" / 6.4 (x87) and vol 4 / Intel SDM vol 1 4.8.3.5, table 4-7),
checked against the AMD family 19h host:

* NaN operands, SSE: the first source that is a NaN is returned, quieted
  (``nan2_sse``); x87: a QNaN beats an SNaN, of two NaNs of the same kind the
  larger significand wins (``nan2_x87``).  An SNaN operand raises IE.
* An invalid operation with no NaN operand returns the default NaN ("QNaN
  floating-point indefinite"): sign 1, quiet bit set, rest zero.
* Tininess is detected after rounding (with an unbounded exponent); with the
  underflow exception masked UE is raised only for a tiny *inexact* result,
  unmasked for any tiny result (``Ctx.um``).
* FTZ (MXCSR bit 15): a tiny result with UE masked becomes zero and UE+PE are
  raised; DAZ (bit 6): denormal operands are read as zeros of the same sign
  and raise no DE.

Flags use the MXCSR / x87 FSW bit positions: IE 1, DE 2, ZE 4, OE 8, UE 10h,
PE 20h.  ``Ctx.c1`` records whether the last rounding rounded up (the x87
C1 condition bit).
"""
IE, DE, ZE, OE, UE, PE = 1, 2, 4, 8, 0x10, 0x20
RN, RD, RU, RZ = 0, 1, 2, 3


class Fmt:
    """A binary interchange format: exponent width and stored fraction bits."""
    __slots__ = ("name", "ebits", "fbits", "explicit", "bias", "emax_biased", "p", "width",
                 "sign", "qbit", "fmask", "emin", "emax", "inf", "dnan", "maxfin", "jbit")

    def __init__(self, name, ebits, fbits, explicit=False):
        self.name, self.ebits, self.fbits, self.explicit = name, ebits, fbits, explicit
        self.bias = (1 << (ebits - 1)) - 1
        self.emax_biased = (1 << ebits) - 1
        self.p = fbits if explicit else fbits + 1            # precision in bits
        self.width = 1 + ebits + fbits
        self.sign = 1 << (self.width - 1)
        self.fmask = (1 << fbits) - 1
        self.jbit = (1 << (fbits - 1)) if explicit else 0      # explicit integer bit
        self.qbit = 1 << (self.p - 2)                          # quiet bit: MSB of the fraction
        self.emin = 1 - self.bias
        self.emax = self.bias
        self.inf = (self.emax_biased << fbits) | self.jbit
        self.dnan = self.sign | self.inf | self.qbit           # default (indefinite) QNaN
        self.maxfin = ((self.emax_biased - 1) << fbits) | (self.fmask if not explicit else self.fmask)

    def __repr__(self):
        return self.name


F16 = Fmt("binary16", 5, 10)
F32 = Fmt("binary32", 8, 23)
F64 = Fmt("binary64", 11, 52)
F80 = Fmt("extended", 15, 64, explicit=True)


class Ctx:
    """Rounding control and exception state for one operation (or lane).

    ``rc``: 0 nearest-even, 1 down, 2 up, 3 toward zero.  ``prec``: precision
    override in bits (x87 precision control: 24, 53 or 64), else the format's.
    ``daz``/``ftz``: SSE denormal modes.  ``um``: underflow masked.
    ``flags`` accumulates IE..PE; ``c1`` is set when a result was rounded up
    in magnitude."""
    __slots__ = ("rc", "prec", "daz", "ftz", "um", "flags", "c1")

    def __init__(self, rc=RN, prec=None, daz=False, ftz=False, um=True):
        self.rc, self.prec, self.daz, self.ftz, self.um = rc, prec, daz, ftz, um
        self.flags = 0
        self.c1 = False


def mxcsr_ctx(mxcsr):
    return Ctx((mxcsr >> 13) & 3, None, bool(mxcsr & 0x40), bool(mxcsr & 0x8000), bool(mxcsr & 0x800))


# ---------------------------------------------------------------- classification
def is_nan(f, x):
    e = (x >> f.fbits) & f.emax_biased
    if e != f.emax_biased:
        return False
    m = x & f.fmask
    return (m & ~f.jbit if f.explicit else m) != 0


def is_snan(f, x):
    return is_nan(f, x) and not x & f.qbit


def is_inf(f, x):
    return x & ~f.sign == f.inf


def quiet(f, x):
    return x | f.qbit


def unsupported(f, x):
    """x87 encodings the 387 and later reject (pseudo-NaN, pseudo-infinity,
    unnormal: integer bit 0 with a non-zero biased exponent)."""
    if not f.explicit:
        return False
    e = (x >> 64) & 0x7FFF
    return e != 0 and not x >> 63 & 1


def unpack(f, x, ctx=None, report_de=True):
    """(sign, exponent, significand) with value = sig * 2**exp, for a finite x.

    A denormal sets DE in ``ctx`` (or reads as zero under DAZ).  Conversions
    to integer and ROUNDxx never report DE (APM vol 4 exception tables)."""
    s = x >> (f.width - 1)
    e = (x >> f.fbits) & f.emax_biased
    m = x & f.fmask
    if e == 0:
        if m and ctx is not None:
            if ctx.daz:
                return s, 0, 0
            if report_de:
                ctx.flags |= DE
        e = 1
    elif not f.explicit:
        m |= 1 << f.fbits
    return s, e - f.bias - (f.p - 1), m


def pack_zero(f, sign):
    return f.sign if sign else 0


def pack_inf(f, sign):
    return (f.sign if sign else 0) | f.inf


def is_denormal(f, x):
    return (x >> f.fbits) & f.emax_biased == 0 and x & f.fmask != 0


def is_zero(f, x):
    return x & ~f.sign == 0


# ---------------------------------------------------------------- rounding
def round_pack(f, sign, exp, sig, ctx, sticky=False):
    """Round sign * (sig + a sticky fraction) * 2**exp to format f and encode it.

    ``sig`` > 0; with ``sticky`` the caller guarantees at least two bits
    below the rounding position.  Sets PE/UE/OE (and C1) in ctx."""
    p = ctx.prec or f.p
    top = exp + sig.bit_length() - 1                    # exponent of the leading bit
    # subnormals have fewer bits; under x87 precision control their last bit
    # stays where a p-bit significand puts it (the AMD host)
    lsb = max(top - (p - 1), f.emin - (p - 1))
    q, inexact, up = _round_at(sig, exp, lsb, sign, ctx.rc, sticky)
    tiny = False
    if top < f.emin:
        # Tininess after rounding: round with an unbounded exponent and see
        # whether the result still lies below the smallest normal.
        qu = _round_at(sig, exp, top - (p - 1), sign, ctx.rc, sticky)[0]
        tiny = top + (qu.bit_length() - p) < f.emin
        if tiny and ctx.ftz and ctx.um:
            ctx.flags |= UE | PE
            return pack_zero(f, sign)
    if q.bit_length() > p:                              # a carry out of the rounding
        q >>= 1
        lsb += 1
    if q and lsb + q.bit_length() - 1 > f.emax:
        return _overflow(f, sign, ctx)
    if inexact:
        ctx.flags |= PE
        ctx.c1 = up
    if tiny and (inexact or not ctx.um):
        ctx.flags |= UE
    return encode(f, sign, lsb, q) if q else pack_zero(f, sign)


def encode(f, sign, lsb, q):
    """Encode sign * q * 2**lsb, q > 0 already rounded to the format."""
    e_top = lsb + q.bit_length() - 1
    if e_top < f.emin:                                  # subnormal: biased exponent 0
        return (f.sign if sign else 0) | (q << (lsb - (f.emin - (f.p - 1))))
    m = q << (f.p - q.bit_length())
    if not f.explicit:
        m &= f.fmask
    return (f.sign if sign else 0) | ((e_top + f.bias) << f.fbits) | m


def _round_at(sig, exp, lsb, sign, rc, sticky):
    """Round sig * 2**exp to a multiple of 2**lsb: (q, inexact, rounded_up)."""
    sh = lsb - exp
    if sh <= 0:
        return sig << -sh, False, False
    q = sig >> sh
    rem = sig & ((1 << sh) - 1)
    if rem == 0 and not sticky:
        return q, False, False
    if rc == RN:
        half = 1 << (sh - 1)
        if rem > half or (rem == half and (sticky or q & 1)):
            return q + 1, True, True
        return q, True, False
    if rc == RZ or (rc == RD) != bool(sign):
        return q, True, False
    return q + 1, True, True


def _overflow(f, sign, ctx):
    """Overflow: infinity or the largest finite number, by rounding mode and
    sign (IEEE 754 7.4; APM vol 1 6.4.x)."""
    ctx.flags |= OE | PE
    rc = ctx.rc
    to_inf = rc == RN or (rc == RU and not sign) or (rc == RD and sign)
    ctx.c1 = to_inf
    if to_inf:
        return pack_inf(f, sign)
    p = ctx.prec or f.p
    return encode(f, sign, f.emax - (p - 1), (1 << p) - 1)


# ---------------------------------------------------------------- NaN selection
def nan2_sse(f, a, b, ctx):
    """SSE rule: the first NaN operand, quieted; IE for any SNaN."""
    if is_snan(f, a) or is_snan(f, b):
        ctx.flags |= IE
    return quiet(f, a) if is_nan(f, a) else quiet(f, b)


def nan2_x87(f, a, b, ctx):
    """x87 rule: a QNaN beats an SNaN; between NaNs of one kind the larger
    significand wins (equal: the first operand, APM vol 1 6.4.x)."""
    an, bn = is_nan(f, a), is_nan(f, b)
    if is_snan(f, a) or is_snan(f, b):
        ctx.flags |= IE
    if an and bn:
        aq, bq = bool(a & f.qbit), bool(b & f.qbit)
        if aq != bq:
            return quiet(f, a if aq else b)
        ma, mb = a & f.fmask, b & f.fmask
        if ma != mb:
            return quiet(f, a if ma > mb else b)
        return quiet(f, a if not a >> (f.width - 1) else b)
    return quiet(f, a if an else b)


# ---------------------------------------------------------------- arithmetic
def _specials(f, a, b, ctx, nan2):
    # x87: an unsupported encoding is invalid even beside a NaN (AMD host)
    if f.explicit and (unsupported(f, a) or unsupported(f, b)):
        ctx.flags |= IE
        return f.dnan
    if is_nan(f, a) or is_nan(f, b):
        return nan2(f, a, b, ctx)
    return None


def add(f, a, b, ctx, nan2=nan2_sse, negate_b=False):
    """a + b (a - b with negate_b)."""
    r = _specials(f, a, b, ctx, nan2)
    if r is not None:
        return r
    if negate_b:
        b ^= f.sign
    ai, bi = is_inf(f, a), is_inf(f, b)
    if ai or bi:
        if ai and bi and (a ^ b) & f.sign:
            ctx.flags |= IE
            return f.dnan
        _den_check(f, a, b, ctx)
        return a if ai else b
    sa, ea, ma = unpack(f, a, ctx)
    sb, eb, mb = unpack(f, b, ctx)
    if ma == 0 and mb == 0:
        if sa == sb:
            return pack_zero(f, sa)
        return pack_zero(f, ctx.rc == RD)
    if ma == 0:
        return round_pack(f, sb, eb, mb, ctx)
    if mb == 0:
        return round_pack(f, sa, ea, ma, ctx)
    # An operand entirely below the other's last bit (by 4 places) only
    # decides the rounding: replace it by a smaller value of the same sign.
    if eb + mb.bit_length() < ea - 3:
        mb, eb = 1, ea - 4
    elif ea + ma.bit_length() < eb - 3:
        ma, ea = 1, eb - 4
    e = min(ea, eb)
    v = (ma << (ea - e)) * (-1 if sa else 1) + (mb << (eb - e)) * (-1 if sb else 1)
    if v == 0:
        return pack_zero(f, ctx.rc == RD)
    return round_pack(f, v < 0, e, abs(v), ctx)


def _den_check(f, a, b, ctx):
    for x in (a, b):
        if is_denormal(f, x) and not ctx.daz:
            ctx.flags |= DE


def sub(f, a, b, ctx, nan2=nan2_sse):
    return add(f, a, b, ctx, nan2, negate_b=True)


def mul(f, a, b, ctx, nan2=nan2_sse):
    r = _specials(f, a, b, ctx, nan2)
    if r is not None:
        return r
    sign = (a ^ b) >> (f.width - 1)
    ai, bi = is_inf(f, a), is_inf(f, b)
    if ai or bi:
        other = b if ai else a
        if _zero_op(f, other, ctx):
            ctx.flags |= IE
            return f.dnan
        _den_check(f, a, b, ctx)
        return pack_inf(f, sign)
    sa, ea, ma = unpack(f, a, ctx)
    sb, eb, mb = unpack(f, b, ctx)
    if ma == 0 or mb == 0:
        return pack_zero(f, sign)
    return round_pack(f, sign, ea + eb, ma * mb, ctx)


def _zero_op(f, x, ctx):
    """Is x zero (or a denormal read as zero under DAZ)?"""
    if is_zero(f, x):
        return True
    return ctx.daz and is_denormal(f, x)


def div(f, a, b, ctx, nan2=nan2_sse):
    r = _specials(f, a, b, ctx, nan2)
    if r is not None:
        return r
    sign = (a ^ b) >> (f.width - 1)
    ai, bi = is_inf(f, a), is_inf(f, b)
    if ai and bi:
        ctx.flags |= IE
        return f.dnan
    if ai:
        _den_check(f, a, b, ctx)
        return pack_inf(f, sign)
    if bi:
        _den_check(f, a, b, ctx)
        return pack_zero(f, sign)
    sb, eb, mb = unpack(f, b, ctx)
    if mb == 0:
        # x / 0: ZE alone (no DE for a denormal dividend, as the AMD host)
        if _zero_op(f, a, ctx):
            ctx.flags |= IE
            return f.dnan
        ctx.flags |= ZE
        return pack_inf(f, sign)
    sa, ea, ma = unpack(f, a, ctx)
    if ma == 0:
        return pack_zero(f, sign)
    # quotient with at least p+2 significant bits, remainder as sticky
    shift = max(0, mb.bit_length() - ma.bit_length() + f.p + 3)
    q, rem = divmod(ma << shift, mb)
    return round_pack(f, sign, ea - eb - shift - 1, (q << 1) | (1 if rem else 0), ctx)


def sqrt(f, a, ctx, nan1=None):
    if is_nan(f, a):
        if is_snan(f, a):
            ctx.flags |= IE
        return quiet(f, a)
    if f.explicit and unsupported(f, a):
        ctx.flags |= IE
        return f.dnan
    if _zero_op(f, a, ctx):
        if is_denormal(f, a):
            return pack_zero(f, a >> (f.width - 1))
        return a
    if a >> (f.width - 1):
        ctx.flags |= IE
        return f.dnan
    if is_inf(f, a):
        return a
    s, e, m = unpack(f, a, ctx)
    if e & 1:
        m <<= 1
        e -= 1
    extra = max(0, 2 * (f.p + 3) - m.bit_length())
    extra += extra & 1
    m <<= extra
    e -= extra
    r = _isqrt(m)
    sticky = r * r != m
    return round_pack(f, 0, e // 2 - 1, (r << 1) | (1 if sticky else 0), ctx)


def _isqrt(n):
    import math
    return math.isqrt(n)


def fma(f, a, b, c, ctx, negate_product=False, negate_c=False):
    """(a * b) + c with one rounding (FMA3).  NaN precedence a, b, c (SSE)."""
    nans = [x for x in (a, b, c) if is_nan(f, x)]
    if nans:
        if any(is_snan(f, x) for x in (a, b, c)):
            ctx.flags |= IE
        return quiet(f, nans[0])
    ps = ((a ^ b) >> (f.width - 1)) ^ (1 if negate_product else 0)
    cs = (c >> (f.width - 1)) ^ (1 if negate_c else 0)
    ai, bi, ci = is_inf(f, a), is_inf(f, b), is_inf(f, c)
    if (ai and _zero_op(f, b, ctx)) or (bi and _zero_op(f, a, ctx)):
        ctx.flags |= IE
        return f.dnan
    if ai or bi:
        if ci and cs != ps:
            ctx.flags |= IE
            return f.dnan
        _den_check(f, a, b, ctx)
        _den_check(f, c, c, ctx)
        return pack_inf(f, ps)
    if ci:
        _den_check(f, a, b, ctx)
        return pack_inf(f, cs)
    _, ea, ma = unpack(f, a, ctx)
    _, eb, mb = unpack(f, b, ctx)
    _, ec, mc = unpack(f, c, ctx)
    pm, pe = ma * mb, ea + eb
    if pm == 0 and mc == 0:
        if ps == cs:
            return pack_zero(f, ps)
        return pack_zero(f, ctx.rc == RD)
    if pm == 0:
        return round_pack(f, cs, ec, mc, ctx)
    if mc == 0:
        return round_pack(f, ps, pe, pm, ctx)
    e = min(pe, ec)
    v = (pm << (pe - e)) * (-1 if ps else 1) + (mc << (ec - e)) * (-1 if cs else 1)
    if v == 0:
        return pack_zero(f, ctx.rc == RD)
    return round_pack(f, v < 0, e, abs(v), ctx)


# ---------------------------------------------------------------- comparisons
# Results of compare(): LT, EQ, GT, UN
LT, EQ, GT, UN = 0, 1, 2, 3


def compare(f, a, b, ctx, signaling=False):
    """Ordered relation of a and b.  IE for an SNaN operand, or for any NaN
    when ``signaling`` (COMISS/CMPLTPS semantics); DE for denormals."""
    if f.explicit and (unsupported(f, a) or unsupported(f, b)):
        ctx.flags |= IE
        return UN
    if is_nan(f, a) or is_nan(f, b):
        if signaling or is_snan(f, a) or is_snan(f, b):
            ctx.flags |= IE
        return UN
    _den_check(f, a, b, ctx)
    va, vb = _key(f, a, ctx), _key(f, b, ctx)
    return LT if va < vb else GT if va > vb else EQ


def _key(f, x, ctx):
    """An integer that orders like the value (zeros equal)."""
    if ctx.daz and is_denormal(f, x):
        return 0
    mag = x & ~f.sign
    if mag == 0:
        return 0
    if f.explicit and mag >> 64 == 0:
        mag |= 1 << 64                          # (pseudo-)denormals: exponent 0 means 1
    return -mag if x >> (f.width - 1) else mag


# ---------------------------------------------------------------- conversions
def convert(src, dst, x, ctx, report_de=True):
    """Format conversion (CVTSS2SD, CVTSD2SS, FLD/FST).  A NaN keeps its
    payload's high bits, quieted; an SNaN raises IE.  (FST of a denormal
    register reports no DE: report_de=False.)"""
    if is_nan(src, x):
        if is_snan(src, x):
            ctx.flags |= IE
        s = x >> (src.width - 1)
        frac = x & src.fmask & ~src.jbit
        pf_src = src.p - 1
        pf_dst = dst.p - 1
        frac = frac << (pf_dst - pf_src) if pf_dst >= pf_src else frac >> (pf_src - pf_dst)
        return quiet(dst, (dst.sign if s else 0) | dst.inf | frac)
    if src.explicit and unsupported(src, x):
        ctx.flags |= IE
        return dst.dnan
    s = x >> (src.width - 1)
    if is_inf(src, x):
        return pack_inf(dst, s)
    _, e, m = unpack(src, x, ctx, report_de)
    if m == 0:
        return pack_zero(dst, s)
    return round_pack(dst, s, e, m, ctx)


def to_int(f, x, bits, ctx, rc=None):
    """Float -> signed integer of ``bits`` (CVTSS2SI, FIST): the integer
    indefinite (100..0b) and IE for NaN, infinity or out of range."""
    indefinite = 1 << (bits - 1)
    if is_nan(f, x) or is_inf(f, x) or (f.explicit and unsupported(f, x)):
        ctx.flags |= IE
        return indefinite
    s, e, m = unpack(f, x, ctx, report_de=False)
    if m == 0:
        return 0
    rc = ctx.rc if rc is None else rc
    v, inexact, up = _round_at(m, e, 0, s, rc, False)
    if s:
        v = -v
    if not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
        ctx.flags |= IE
        return indefinite
    if inexact:
        ctx.flags |= PE
        ctx.c1 = up
    return v & ((1 << bits) - 1)


def from_int(f, v, ctx):
    """Signed integer -> float (CVTSI2SS, FILD), rounded by ctx."""
    if v == 0:
        return 0
    return round_pack(f, v < 0, 0, abs(v), ctx)


def round_int(f, x, ctx, rc=None, inexact_ok=True):
    """Round to an integral value in the same format (ROUNDSS, FRNDINT)."""
    if is_nan(f, x):
        if is_snan(f, x):
            ctx.flags |= IE
        return quiet(f, x)
    if f.explicit and unsupported(f, x):
        ctx.flags |= IE
        return f.dnan
    if is_inf(f, x):
        return x
    s, e, m = unpack(f, x, ctx, report_de=f.explicit)
    if m == 0:
        return pack_zero(f, s)
    if e >= 0:
        return x
    rc = ctx.rc if rc is None else rc
    q, inexact, up = _round_at(m, e, 0, s, rc, False)
    if inexact and inexact_ok:
        ctx.flags |= PE
        ctx.c1 = up
    if q == 0:
        return pack_zero(f, s)
    return encode(f, s, 0, q)


def _daz(f, x):
    return x & f.sign if is_denormal(f, x) else x


def minmax(f, a, b, ctx, want_max):
    """MINSS/MAXSS: the second operand if either is a NaN or both are zeros
    (any signs); IE for any NaN (the compare is signaling).  Under DAZ a
    denormal operand is returned as the zero it reads as."""
    if ctx.daz:
        a, b = _daz(f, a), _daz(f, b)
    r = compare(f, a, b, ctx, signaling=True)
    if r == UN:
        return b
    if is_zero(f, a) and is_zero(f, b):
        return b
    if r == EQ:
        return b
    return a if (r == GT) == want_max else b

