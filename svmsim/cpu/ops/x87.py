"""The x87 floating-point unit: loads and stores, arithmetic, comparisons,
constants, stack control, transcendental instructions and the environment
(AMD APM vol 1 chapter 6 "x87 Floating-Point Programming", vol 5 "64-Bit
Media and x87 Floating-Point Instructions").

State (cpu/fpu_state.py): eight 80-bit physical registers ``fpu_st``, FSW
with TOP in bits 13:11, the full tag word ``fpu_ftw`` (2 bits per physical
register: 0 valid, 1 zero, 2 special, 3 empty), FCW, FOP, FIP/FCS, FDP/FDS.

Arithmetic is exact and rounded once under FCW.RC to FCW.PC's precision
(24, 53 or 64 bits; the exponent keeps the 15-bit range) by
svmsim.cpu.softfloat, with the x87 NaN rules.  Exceptions (APM vol 1, 6.4):

* every flag raised is set in FSW; an unmasked one also sets ES and B, and
  the next *waiting* x87 instruction takes #MF before it executes (with
  CR0.NE=0 the FERR# line raises IRQ 13 instead);
* unmasked IE, DE or ZE: the destination and the stack are not changed;
  unmasked OE/UE on a register destination store the result with its
  exponent wrapped by 24576 (2**+-24576), on a memory destination nothing;
* stack overflow (push onto a non-empty register) and underflow (an empty
  operand) are IE with SF, C1 = 1 / 0; masked, the result is the default NaN.
* C1 after a rounded result: 1 when it was rounded up in magnitude.

FOP/FIP/FCS/FDP/FDS are recorded by every non-control instruction.
"""
from . import handles
from .simd import x87_pending
from .. import softfloat as sf
from ..exceptions import CpuException, NM
from ..flags import set_arith, CF, ZF
from ..segments import CS

F80, F32, F64 = sf.F80, sf.F32, sf.F64
IE, DE, ZE, OE, UE, PE, SF_, ES, B = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x8000
C0, C1, C2, C3 = 0x100, 0x200, 0x400, 0x4000
PF_FLAG = 4
CR0_EM, CR0_TS = 4, 8
INDEFINITE = F80.dnan                    # 0xFFFF_C000000000000000
ONE = 0x3FFF_8000000000000000
WRAP = 24576                             # exponent bias adjust for unmasked OE/UE
TAG_VALID, TAG_ZERO, TAG_SPECIAL, TAG_EMPTY = 0, 1, 2, 3
PREC = {0: 24, 1: 64, 2: 53, 3: 64}     # FCW.PC (01b is reserved; it behaves as 64)


# ---------------------------------------------------------------- stack helpers
def top(cpu):
    return (cpu.fpu_fsw >> 11) & 7


def set_top(cpu, t):
    cpu.fpu_fsw = (cpu.fpu_fsw & ~0x3800) | ((t & 7) << 11)


def phys(cpu, i):
    return (top(cpu) + i) & 7


def tag_of(v):
    e = (v >> 64) & 0x7FFF
    m = v & ((1 << 64) - 1)
    if e == 0:
        return TAG_ZERO if m == 0 else TAG_SPECIAL
    if e == 0x7FFF or not m >> 63:
        return TAG_SPECIAL
    return TAG_VALID


def empty(cpu, i):
    return (cpu.fpu_ftw >> (2 * phys(cpu, i))) & 3 == TAG_EMPTY


def get(cpu, i):
    return cpu.fpu_st[phys(cpu, i)]


def put(cpu, i, v):
    p = phys(cpu, i)
    cpu.fpu_st[p] = v
    cpu.fpu_ftw = (cpu.fpu_ftw & ~(3 << (2 * p))) | (tag_of(v) << (2 * p))


def free(cpu, i):
    p = phys(cpu, i)
    cpu.fpu_ftw |= 3 << (2 * p)


def pop(cpu):
    free(cpu, 0)
    set_top(cpu, top(cpu) + 1)


def push(cpu, v):
    set_top(cpu, top(cpu) - 1)
    put(cpu, 0, v)


# ---------------------------------------------------------------- entry, exceptions
def enter(cpu, ins, waiting=True, control=False):
    """#NM (CR0.EM or TS), pending-exception #MF for waiting instructions,
    then record FOP/FIP/FDP for non-control instructions."""
    if cpu.cr0 & (CR0_EM | CR0_TS):
        raise CpuException(NM, detail="x87 instruction with CR0.EM or CR0.TS set")
    if waiting and cpu.fpu_fsw & ES:
        e = x87_pending(cpu)
        if e is not None:
            raise e
    if not control:
        _pointers(cpu, ins)


def _pointers(cpu, ins):
    lo = ins.vx
    if lo is None:
        lo = ins.vx = _fop(cpu, ins)
    cpu.fpu_fop = lo
    cpu.fpu_fip = ins.ip
    cpu.fpu_fcs = cpu.segs[CS].sel
    if ins.ea is not None:
        cpu.fpu_fdp = ins.ea(cpu)
        cpu.fpu_fds = cpu.segs[ins.seg].sel


def _fop(cpu, ins):
    """FOP: the low 3 bits of the D8-DF opcode byte and the ModRM byte."""
    lin = (cpu.ebase[CS] + ins.ip) & cpu.lin_mask
    try:
        data = cpu.pread_bytes(cpu.fetch_spa(lin), min(ins.len, 0x1000 - (lin & 0xFFF)))
    except CpuException:
        return 0
    for k, b in enumerate(data):
        if 0xD8 <= b <= 0xDF and k + 1 < len(data):
            return ((b & 7) << 8) | data[k + 1]
    return 0


def ctx_of(cpu):
    fcw = cpu.fpu_fcw
    return sf.Ctx((fcw >> 10) & 3, PREC[(fcw >> 8) & 3], um=bool(fcw & UE))


def store_ctx(cpu):
    """Rounding for conversions and stores: RC applies, PC does not."""
    fcw = cpu.fpu_fcw
    return sf.Ctx((fcw >> 10) & 3, None, um=bool(fcw & UE))


def report(cpu, flags, c1=False):
    """Merge exception flags into FSW.  Returns the unmasked ones.  An invalid
    operation or a division by zero is reported without DE (the AMD host)."""
    if flags & (IE | ZE):
        flags &= ~DE
    fsw = cpu.fpu_fsw & ~C1
    if c1:
        fsw |= C1
    fsw |= flags & 0x7F
    unmasked = flags & ~cpu.fpu_fcw & 0x3F
    if unmasked:
        fsw |= ES | B
    cpu.fpu_fsw = fsw
    return unmasked


def stack_fault(cpu, overflow):
    """Stack overflow/underflow: IE + SF, C1 = overflow.  True if masked."""
    return not report(cpu, IE | SF_, c1=overflow)


def result(cpu, ctx, i, v):
    """Store an arithmetic result in ST(i) with the exception rules above.
    Returns False when an unmasked exception suppressed it."""
    flags = ctx.flags
    unmasked = report(cpu, flags, c1=ctx.c1 and bool(flags & PE))
    if unmasked & (IE | DE | ZE):
        return False
    if unmasked & (OE | UE) and not sf.is_nan(F80, v):
        v = _wrap(v, ctx, unmasked & OE)
    put(cpu, i, v)
    return True


def _wrap(v, ctx, overflow):
    """The unmasked OE/UE response: the exact result scaled by 2**-+24576,
    rounded into the register (APM vol 1, 6.4.x)."""
    s, e, m = ctx.exact
    return sf.round_pack(F80, s, e + (-WRAP if overflow else WRAP), m, sf.Ctx(ctx.rc, ctx.prec))


class XCtx(sf.Ctx):
    """A softfloat context that also remembers the exact result (for the
    unmasked OE/UE bias adjust)."""
    __slots__ = ("exact",)


def operands(cpu, *idx):
    """Values of ST(i) for each i, or None after a stack underflow."""
    for i in idx:
        if empty(cpu, i):
            return None
    return [get(cpu, i) for i in idx]


# ---------------------------------------------------------------- memory formats
def load_mem(cpu, ins):
    """A memory operand converted to the 80-bit format (exact)."""
    size = ins.mem_size
    name = ins.name
    v = ins.get0(cpu) if ins.iced.op_count == 1 else ins.get1(cpu)
    ctx = sf.Ctx()
    if name.startswith("fi"):                 # integer operand
        bits = 8 * size
        if v >> (bits - 1):
            v -= 1 << bits
        return sf.from_int(F80, v, ctx), ctx
    if size == 4:
        return sf.convert(F32, F80, v, ctx), ctx
    if size == 8:
        return sf.convert(F64, F80, v, ctx), ctx
    return v, ctx


def mem_value(cpu, ins):
    return ins.get0(cpu)


# ---------------------------------------------------------------- arithmetic
def _sub(f, a, b, c, nan2):
    return sf.sub(f, a, b, c, nan2)


def _subr(f, a, b, c, nan2):
    return sf.sub(f, b, a, c, nan2)


def _divr(f, a, b, c, nan2):
    return sf.div(f, b, a, c, nan2)


OPS = {"add": sf.add, "sub": _sub, "subr": _subr, "mul": sf.mul, "div": sf.div, "divr": _divr}


def compute(cpu, op, a, b):
    """a op b in the 80-bit format under FCW; returns (value, ctx)."""
    fcw = cpu.fpu_fcw
    ctx = XCtx((fcw >> 10) & 3, PREC[(fcw >> 8) & 3], um=bool(fcw & UE))
    ctx.exact = None
    if fcw & (OE | UE) != OE | UE:
        ctx.exact = _exact(op, a, b)
    return OPS[op](F80, a, b, ctx, sf.nan2_x87), ctx


def _exact(op, a, b):
    """(sign, exp, sig) of the exact result when it is finite and non-zero
    (only needed for the unmasked OE/UE response)."""
    if sf.is_nan(F80, a) or sf.is_nan(F80, b) or sf.is_inf(F80, a) or sf.is_inf(F80, b):
        return None
    sa, ea, ma = sf.unpack(F80, a)
    sb, eb, mb = sf.unpack(F80, b)
    if op in ("subr", "divr"):
        sa, ea, ma, sb, eb, mb = sb, eb, mb, sa, ea, ma
    if op == "mul":
        return sa ^ sb, ea + eb, ma * mb
    if op in ("div", "divr"):
        if not mb:
            return None
        sh = 130
        q, r = divmod(ma << sh, mb)
        return sa ^ sb, ea - eb - sh - 1, (q << 1) | (1 if r else 0)
    if op in ("sub", "subr"):
        sb ^= 1
    e = min(ea, eb)
    v = (ma << (ea - e)) * (-1 if sa else 1) + (mb << (eb - e)) * (-1 if sb else 1)
    return (v < 0, e, abs(v)) if v else None


def _arith_handler(op, pop_after=False, reverse_dest=None):
    """FADD/FSUB/FSUBR/FMUL/FDIV/FDIVR in every form:
    memory (ST0 = ST0 op m), ``ST0, STi``, ``STi, ST0`` and the P forms."""
    def h(cpu, ins):
        enter(cpu, ins)
        i = ins.iced
        if ins.ea is not None:
            b, lctx = load_mem(cpu, ins)
            if empty(cpu, 0):
                if stack_fault(cpu, False):
                    put(cpu, 0, INDEFINITE)
                return
            v, ctx = compute(cpu, op, get(cpu, 0), b)
            ctx.flags |= lctx.flags
            result(cpu, ctx, 0, v)
            return
        if i.op_count == 0:                       # FADDP with no operands: ST1 = ST1 op ST0
            d, s = 1, 0
        else:
            d = i.op_register(0) - 217
            s = i.op_register(1) - 217
        if empty(cpu, d) or empty(cpu, s):
            if stack_fault(cpu, False):
                put(cpu, d, INDEFINITE)
                if pop_after:
                    pop(cpu)
            return
        v, ctx = compute(cpu, op, get(cpu, d), get(cpu, s))
        if result(cpu, ctx, d, v) and pop_after:
            pop(cpu)
    return h


for _op in OPS:
    handles("F" + _op.upper())(_arith_handler(_op))
    handles("F" + _op.upper() + "P")(_arith_handler(_op, pop_after=True))
    handles("FI" + _op.upper())(_arith_handler(_op))


# ---------------------------------------------------------------- loads and stores
@handles("FLD", "FILD", "FBLD")
def fld(cpu, ins):
    enter(cpu, ins)
    if ins.ea is None:
        i = ins.iced.op_register(0) - 217
        if empty(cpu, i):
            if stack_fault(cpu, False):          # an empty source is an underflow (C1 = 0)
                push(cpu, INDEFINITE)
            return
        v, flags = get(cpu, i), 0
    elif ins.name == "fbld":
        v, flags = _bcd_to_f80(mem_value(cpu, ins)), 0
    else:
        v, lctx = load_mem(cpu, ins)
        flags = lctx.flags
    if not empty(cpu, 7):
        if stack_fault(cpu, True):
            push(cpu, INDEFINITE)
        return
    if report(cpu, flags) & (IE | DE):
        return
    push(cpu, v)


def _store_value(cpu, ins, v):
    """Convert ST0 for a memory store: (raw value, flags, c1)."""
    size = ins.mem_size
    name = ins.name
    ctx = store_ctx(cpu)
    if name in ("fist", "fistp", "fisttp"):
        bits = 8 * size
        rc = sf.RZ if name == "fisttp" else None
        r = sf.to_int(F80, v, bits, ctx, rc)
        return r, ctx.flags, ctx.c1 and bool(ctx.flags & PE)
    if name == "fbstp":
        return _f80_to_bcd(v, ctx), ctx.flags, ctx.c1 and bool(ctx.flags & PE)
    if size in (4, 8):
        r = sf.convert(F80, F32 if size == 4 else F64, v, ctx, report_de=False)
        return r, ctx.flags, ctx.c1 and bool(ctx.flags & PE)
    return v, 0, False


_INT_INDEF = {2: 0x8000, 4: 0x80000000, 8: 1 << 63, 10: 0xFFFFC000000000000000}


@handles("FST", "FSTP", "FIST", "FISTP", "FISTTP", "FBSTP", "FSTPNCE")
def fst(cpu, ins):
    """(FSTPNCE, D9 D8+i, is an alias of FSTP ST(i).)"""
    enter(cpu, ins)
    popping = ins.name in ("fstp", "fistp", "fisttp", "fbstp", "fstpnce")
    if ins.ea is None:                             # FST(P) ST(i)
        d = ins.iced.op_register(0) - 217
        if empty(cpu, 0):
            if stack_fault(cpu, False):
                put(cpu, d, INDEFINITE)
                if popping:
                    pop(cpu)
            return
        put(cpu, d, get(cpu, 0))
        report(cpu, 0)
        if popping:
            pop(cpu)
        return
    if empty(cpu, 0):
        if stack_fault(cpu, False):
            ins.set0(cpu, _indefinite_for(ins))
            if popping:
                pop(cpu)
        return
    raw, flags, c1 = _store_value(cpu, ins, get(cpu, 0))
    unmasked = flags & ~cpu.fpu_fcw & 0x3F
    if unmasked & (IE | DE | OE | UE):
        report(cpu, flags, c1)
        return
    ins.set0(cpu, raw)
    report(cpu, flags, c1)
    if popping:
        pop(cpu)


def _indefinite_for(ins):
    if ins.name in ("fist", "fistp", "fisttp"):
        return _INT_INDEF[ins.mem_size]
    if ins.name == "fbstp":
        return 0xFFFFC000000000000000
    return {4: F32.dnan, 8: F64.dnan, 10: F80.dnan}[ins.mem_size]


def _bcd_to_f80(v):
    digits = 0
    for k in range(17, -1, -1):
        digits = digits * 10 + ((v >> (4 * k)) & 0xF)
    if v >> 79:
        digits = -digits
    r = sf.from_int(F80, digits, sf.Ctx())
    return r if digits else (F80.sign if v >> 79 else 0)


def _f80_to_bcd(v, ctx):
    """FBSTP: round to an integer by RC; out of 18 digits is IE (BCD indefinite)."""
    if sf.is_nan(F80, v) or sf.is_inf(F80, v) or sf.unsupported(F80, v):
        ctx.flags |= IE
        return 0xFFFFC000000000000000
    r = sf.to_int(F80, v, 128, ctx)
    n = r - (1 << 128) if r >> 127 else r
    if abs(n) >= 10 ** 18:
        ctx.flags = (ctx.flags | IE) & ~PE        # out of range: IE alone
        return 0xFFFFC000000000000000
    out = 0
    a = abs(n)
    for k in range(18):
        out |= (a % 10) << (4 * k)
        a //= 10
    return out | ((1 << 79) if v >> 79 else 0)


# ---------------------------------------------------------------- simple register ops
@handles("FXCH")
def fxch(cpu, ins):
    enter(cpu, ins)
    i = ins.iced.op_register(1) - 217 if ins.iced.op_count == 2 else 1
    if empty(cpu, 0) or empty(cpu, i):
        if stack_fault(cpu, False):
            a = INDEFINITE if empty(cpu, 0) else get(cpu, 0)
            b = INDEFINITE if empty(cpu, i) else get(cpu, i)
            put(cpu, 0, b)
            put(cpu, i, a)
        return
    a, b = get(cpu, 0), get(cpu, i)
    put(cpu, 0, b)
    put(cpu, i, a)
    report(cpu, 0)


def _unary(fn):
    """ST0 = fn(ST0) with exceptions (fn returns (value, ctx))."""
    def h(cpu, ins):
        enter(cpu, ins)
        if empty(cpu, 0):
            if stack_fault(cpu, False):
                put(cpu, 0, INDEFINITE)
            return
        v, ctx = fn(cpu, get(cpu, 0))
        result(cpu, ctx, 0, v)
    return h


def _chs(cpu, v):
    return v ^ F80.sign, sf.Ctx()


def _abs(cpu, v):
    return v & ~F80.sign, sf.Ctx()


def _sqrt(cpu, v):
    ctx = ctx_of(cpu)
    return sf.sqrt(F80, v, ctx), ctx


def _rndint(cpu, v):
    ctx = store_ctx(cpu)
    return sf.round_int(F80, v, ctx), ctx


handles("FCHS")(_unary(_chs))
handles("FABS")(_unary(_abs))
handles("FSQRT")(_unary(_sqrt))
handles("FRNDINT")(_unary(_rndint))


@handles("FFREE", "FFREEP")
def ffree(cpu, ins):
    enter(cpu, ins)
    free(cpu, ins.iced.op_register(0) - 217)
    if ins.name == "ffreep":
        set_top(cpu, top(cpu) + 1)


@handles("FINCSTP", "FDECSTP")
def fincstp(cpu, ins):
    enter(cpu, ins)
    set_top(cpu, top(cpu) + (1 if ins.name == "fincstp" else -1))
    cpu.fpu_fsw &= ~C1


@handles("FNOP")
def fnop(cpu, ins):
    enter(cpu, ins)


@handles("FCMOVB", "FCMOVE", "FCMOVBE", "FCMOVU", "FCMOVNB", "FCMOVNE", "FCMOVNBE", "FCMOVNU")
def fcmov(cpu, ins):
    enter(cpu, ins)
    i = ins.iced.op_register(1) - 217
    if empty(cpu, 0) or empty(cpu, i):
        if stack_fault(cpu, False):
            put(cpu, 0, INDEFINITE)
        return
    cc = {"fcmovb": 2, "fcmove": 4, "fcmovbe": 6, "fcmovu": 10,
          "fcmovnb": 3, "fcmovne": 5, "fcmovnbe": 7, "fcmovnu": 11}[ins.name]
    if cpu.cond(cc):
        put(cpu, 0, get(cpu, i))
    report(cpu, 0)


# ---------------------------------------------------------------- constants
# FLDPI & co. are rounded from the exact value by FCW.RC (PC does not apply);
# the AMD host agrees in every mode (tests/test_x87_native.py), including
# FLDLG2 where a 66-bit internal constant would round the other way.
_CONSTS = {}


def _constant(name):
    """(significand, exponent, inexact) of the constant to 200 bits."""
    if name not in _CONSTS:
        import mpmath
        with mpmath.workprec(200):
            x = {"fldl2t": mpmath.log(10, 2), "fldl2e": 1 / mpmath.log(2), "fldpi": mpmath.pi,
                 "fldlg2": mpmath.log10(2), "fldln2": mpmath.log(2)}[name]
            _CONSTS[name] = mpmath.mpf(x).man_exp
    return _CONSTS[name]


@handles("FLD1", "FLDZ", "FLDL2T", "FLDL2E", "FLDPI", "FLDLG2", "FLDLN2")
def fldconst(cpu, ins):
    enter(cpu, ins)
    if not empty(cpu, 7):
        if stack_fault(cpu, True):
            push(cpu, INDEFINITE)
        return
    name = ins.name
    if name == "fld1":
        v = ONE
    elif name == "fldz":
        v = 0
    else:
        man, e = _constant(name)
        v = sf.round_pack(F80, 0, e, man, store_ctx(cpu), sticky=True)
    report(cpu, 0)
    push(cpu, v)


# ---------------------------------------------------------------- comparisons
_CC = {sf.GT: 0, sf.LT: C0, sf.EQ: C3, sf.UN: C3 | C2 | C0}


def _compare(cpu, a, b, signaling):
    ctx = sf.Ctx()
    r = sf.compare(F80, a, b, ctx, signaling)
    return r, ctx.flags


def _set_cc(cpu, cc):
    cpu.fpu_fsw = (cpu.fpu_fsw & ~(C0 | C1 | C2 | C3)) | cc


def _fcom(signaling, pops):
    def h(cpu, ins):
        enter(cpu, ins)
        i = ins.iced
        if ins.ea is not None:
            b, lctx = load_mem(cpu, ins)
            flags0 = lctx.flags                   # SNaN (IE) or denormal (DE) operand
            idx = None
        else:
            flags0 = 0
            if ins.name in ("fcompp", "fucompp"):
                idx = 1
            elif i.op_count == 2:
                idx = i.op_register(1) - 217
            elif i.op_count == 1:
                idx = i.op_register(0) - 217
            else:
                idx = 1
        if empty(cpu, 0) or (idx is not None and empty(cpu, idx)):
            if stack_fault(cpu, False):
                _set_cc(cpu, C3 | C2 | C0)
                for _ in range(pops):
                    pop(cpu)
            return
        if idx is not None:
            b = get(cpu, idx)
        r, flags = _compare(cpu, get(cpu, 0), b, signaling)
        if report(cpu, flags | flags0) & (IE | DE):
            return
        _set_cc(cpu, _CC[r])
        for _ in range(pops):
            pop(cpu)
    return h


handles("FCOM", "FICOM")(_fcom(True, 0))
handles("FCOMP", "FICOMP")(_fcom(True, 1))
handles("FCOMPP")(_fcom(True, 2))
handles("FUCOM")(_fcom(False, 0))
handles("FUCOMP")(_fcom(False, 1))
handles("FUCOMPP")(_fcom(False, 2))


def _fcomi(signaling, pops):
    """FCOMI/FUCOMI(P): ZF, PF, CF from the relation, OF/SF/AF = 0, C1 = 0."""
    def h(cpu, ins):
        enter(cpu, ins)
        i = ins.iced.op_register(1) - 217
        if empty(cpu, 0) or empty(cpu, i):
            if stack_fault(cpu, False):
                set_arith(cpu, ZF | PF_FLAG | CF)
                for _ in range(pops):
                    pop(cpu)
            return
        r, flags = _compare(cpu, get(cpu, 0), get(cpu, i), signaling)
        if report(cpu, flags) & (IE | DE):
            return
        set_arith(cpu, {sf.UN: ZF | PF_FLAG | CF, sf.LT: CF, sf.EQ: ZF, sf.GT: 0}[r])
        for _ in range(pops):
            pop(cpu)
    return h


handles("FCOMI")(_fcomi(True, 0))
handles("FCOMIP")(_fcomi(True, 1))
handles("FUCOMI")(_fcomi(False, 0))
handles("FUCOMIP")(_fcomi(False, 1))


@handles("FTST")
def ftst(cpu, ins):
    enter(cpu, ins)
    if empty(cpu, 0):
        if stack_fault(cpu, False):
            _set_cc(cpu, C3 | C2 | C0)
        return
    r, flags = _compare(cpu, get(cpu, 0), 0, True)
    if report(cpu, flags) & (IE | DE):
        return
    _set_cc(cpu, _CC[r])


@handles("FXAM")
def fxam(cpu, ins):
    """Classify ST0 into C3,C2,C0; C1 = sign (APM vol 5 FXAM)."""
    enter(cpu, ins)
    v = get(cpu, 0)
    sign = C1 if v >> 79 else 0
    if empty(cpu, 0):
        cc = C3 | C0
    else:
        e = (v >> 64) & 0x7FFF
        m = v & ((1 << 64) - 1)
        if e == 0:
            cc = C3 if m == 0 else C3 | C2
        elif not m >> 63:
            cc = 0                                   # unsupported
        elif e == 0x7FFF:
            cc = C2 | C0 if m == 1 << 63 else C0
        else:
            cc = C2
    cpu.fpu_fsw = (cpu.fpu_fsw & ~(C0 | C1 | C2 | C3)) | cc | sign


# ---------------------------------------------------------------- environment
def _env_layout(cpu, ins):
    """(size, protected, 32-bit) of the FSTENV/FLDENV image (APM vol 1, 6.x figures)."""
    osize32 = ins.mem_size in (28, 108)
    protected = bool(cpu.cr0 & 1) and not cpu.rflags & (1 << 17)
    return osize32, protected


def env_image(cpu, ins):
    osize32, protected = _env_layout(cpu, ins)
    fcw, fsw, ftw = cpu.fpu_fcw, cpu.fpu_fsw, cpu.fpu_ftw
    fip, fdp, fop = cpu.fpu_fip, cpu.fpu_fdp, cpu.fpu_fop
    if osize32:
        if protected:
            words = [fcw | 0xFFFF0000, fsw | 0xFFFF0000, ftw | 0xFFFF0000, fip & 0xFFFFFFFF,
                     cpu.fpu_fcs | (fop << 16), fdp & 0xFFFFFFFF, cpu.fpu_fds | 0xFFFF0000]
        else:
            lin_ip = (cpu.fpu_fcs << 4) + fip
            lin_dp = (cpu.fpu_fds << 4) + fdp
            words = [fcw | 0xFFFF0000, fsw | 0xFFFF0000, ftw | 0xFFFF0000, (lin_ip & 0xFFFF) | 0xFFFF0000,
                     ((lin_ip >> 16) << 12) | fop, (lin_dp & 0xFFFF) | 0xFFFF0000, (lin_dp >> 16) << 12]
        return b"".join((w & 0xFFFFFFFF).to_bytes(4, "little") for w in words)
    if protected:
        words = [fcw, fsw, ftw, fip, cpu.fpu_fcs, fdp, cpu.fpu_fds]
    else:
        lin_ip = (cpu.fpu_fcs << 4) + fip
        lin_dp = (cpu.fpu_fds << 4) + fdp
        words = [fcw, fsw, ftw, lin_ip, ((lin_ip >> 16) << 12) | fop, lin_dp, (lin_dp >> 16) << 12]
    return b"".join((w & 0xFFFF).to_bytes(2, "little") for w in words)


def load_env(cpu, ins, data):
    osize32, protected = _env_layout(cpu, ins)
    if osize32:
        w = [int.from_bytes(data[4 * k:4 * k + 4], "little") for k in range(7)]
    else:
        w = [int.from_bytes(data[2 * k:2 * k + 2], "little") for k in range(7)]
    cpu.fpu_fcw = w[0] & 0x1F7F | 0x40
    cpu.fpu_fsw = w[1] & 0xFFFF
    cpu.fpu_ftw = w[2] & 0xFFFF
    if protected:
        cpu.fpu_fip = w[3]
        cpu.fpu_fcs = w[4] & 0xFFFF
        cpu.fpu_fop = (w[4] >> 16) & 0x7FF if osize32 else cpu.fpu_fop
        cpu.fpu_fdp = w[5]
        cpu.fpu_fds = w[6] & 0xFFFF
    else:
        cpu.fpu_fip = (w[3] & 0xFFFF) | ((w[4] >> 12) << 16)
        cpu.fpu_fop = w[4] & 0x7FF
        cpu.fpu_fdp = (w[5] & 0xFFFF) | ((w[6] >> 12) << 16)
        cpu.fpu_fcs = cpu.fpu_fds = 0
    _sync_es(cpu)


def _sync_es(cpu):
    """ES and B follow the unmasked exception flags after FSW is loaded."""
    if cpu.fpu_fsw & ~cpu.fpu_fcw & 0x3F:
        cpu.fpu_fsw |= ES | B
    else:
        cpu.fpu_fsw &= ~(ES | B)


def _write(cpu, ins, data):
    off = ins.ea(cpu)
    cpu.check_write(ins.seg, off, len(data))
    for k in range(0, len(data), 8):
        chunk = data[k:k + 8]
        cpu.write(ins.seg, off + k, len(chunk), int.from_bytes(chunk, "little"))


def _read(cpu, ins, n):
    off = ins.ea(cpu)
    out = bytearray()
    for k in range(0, n, 2):
        out += cpu.read(ins.seg, off + k, 2).to_bytes(2, "little")
    return bytes(out)


def _waits(ins):
    """The fused forms (FSTENV = FWAIT + FNSTENV ...) check pending exceptions."""
    return not ins.name.startswith("fn")


@handles("FNSTENV", "FSTENV")
def fnstenv(cpu, ins):
    """Store the environment, then mask every exception (APM vol 5 FNSTENV)."""
    enter(cpu, ins, waiting=_waits(ins), control=True)
    _write(cpu, ins, env_image(cpu, ins))
    cpu.fpu_fcw |= 0x3F


@handles("FLDENV")
def fldenv(cpu, ins):
    enter(cpu, ins, control=True)
    load_env(cpu, ins, _read(cpu, ins, ins.mem_size))


@handles("FNSAVE", "FSAVE")
def fnsave(cpu, ins):
    """Environment then ST0..ST7 (80 bits each), then FNINIT."""
    enter(cpu, ins, waiting=_waits(ins), control=True)
    env = env_image(cpu, ins)
    regs = b"".join(get(cpu, i).to_bytes(10, "little") for i in range(8))
    _write(cpu, ins, env + regs)
    from .. import fpu_state
    fpu_state.fninit(cpu)


@handles("FRSTOR")
def frstor(cpu, ins):
    enter(cpu, ins, control=True)
    n = ins.mem_size
    data = _read(cpu, ins, n)
    envsz = n - 80
    load_env(cpu, ins, data[:envsz])
    for i in range(8):
        cpu.fpu_st[phys(cpu, i)] = int.from_bytes(data[envsz + 10 * i:envsz + 10 * i + 10], "little")


@handles("FNSTSW", "FSTSW")
def fnstsw(cpu, ins):
    enter(cpu, ins, waiting=_waits(ins), control=True)
    ins.set0(cpu, cpu.fpu_fsw)


@handles("FNSTCW", "FSTCW")
def fnstcw(cpu, ins):
    enter(cpu, ins, waiting=_waits(ins), control=True)
    ins.set0(cpu, cpu.fpu_fcw)


@handles("FLDCW")
def fldcw(cpu, ins):
    enter(cpu, ins, control=True)
    cpu.fpu_fcw = ins.get0(cpu) & 0x1F7F | 0x40
    _sync_es(cpu)


@handles("FNCLEX", "FCLEX")
def fnclex(cpu, ins):
    enter(cpu, ins, waiting=_waits(ins), control=True)
    cpu.fpu_fsw &= 0x7F00                     # exceptions, SF, ES and B cleared


@handles("FNINIT", "FINIT")
def fninit(cpu, ins):
    enter(cpu, ins, waiting=_waits(ins), control=True)
    from .. import fpu_state
    fpu_state.fninit(cpu)


@handles("WAIT")
def fwait(cpu, ins):
    """FWAIT: #NM with CR0.TS and CR0.MP; a pending unmasked exception -> #MF."""
    if cpu.cr0 & CR0_TS and cpu.cr0 & 2:
        raise CpuException(NM, detail="FWAIT with CR0.TS=1 and CR0.MP=1")
    if cpu.fpu_fsw & ES:
        e = x87_pending(cpu)
        if e is not None:
            raise e


@handles("FNDISI", "FNENI", "FNSETPM", "FRSTPM", "FDISI", "FENI", "FSETPM")
def legacy_nop(cpu, ins):
    """8087/287 control instructions: no-ops on later processors."""
    enter(cpu, ins, waiting=False, control=True)


@handles("EMMS")
def emms(cpu, ins):
    """All tags empty (APM vol 5 EMMS); #UD with CR0.EM, #NM with CR0.TS."""
    from .simd import mmx_enter
    if cpu.cr0 & CR0_EM:
        from ..exceptions import ud
        raise ud("EMMS with CR0.EM=1")
    mmx_enter(cpu)
    cpu.fpu_ftw = 0xFFFF


# ---------------------------------------------------------------- FXTRACT, FSCALE, FPREM
def _finite(v):
    return not (sf.is_nan(F80, v) or sf.is_inf(F80, v) or sf.unsupported(F80, v))


@handles("FXTRACT")
def fxtract(cpu, ins):
    """ST1 = exponent of x, ST0 = significand of x with exponent 0 (a push)."""
    enter(cpu, ins)
    if empty(cpu, 0) or not empty(cpu, 7):
        if stack_fault(cpu, not empty(cpu, 7) and not empty(cpu, 0)):
            put(cpu, 0, INDEFINITE)
            push(cpu, INDEFINITE)
        return
    x = get(cpu, 0)
    ctx = sf.Ctx()
    if sf.is_nan(F80, x) or sf.unsupported(F80, x):
        q = sf.quiet(F80, x) if sf.is_nan(F80, x) else INDEFINITE
        if sf.is_snan(F80, x) or sf.unsupported(F80, x):
            ctx.flags |= IE
        exp, sig = q, q
    elif sf.is_inf(F80, x):
        exp, sig = sf.pack_inf(F80, 0), x
    elif sf.is_zero(F80, x):
        ctx.flags |= ZE
        exp, sig = sf.pack_inf(F80, 1), x
    else:
        s, e, m = sf.unpack(F80, x, ctx)
        top_e = e + m.bit_length() - 1
        exp = sf.from_int(F80, top_e, sf.Ctx())
        sig = sf.encode(F80, s, -(m.bit_length() - 1), m)
    if report(cpu, ctx.flags) & (IE | DE | ZE):
        return
    put(cpu, 0, exp)
    push(cpu, sig)


@handles("FSCALE")
def fscale(cpu, ins):
    """ST0 = ST0 * 2**trunc(ST1), rounded by PC/RC (APM vol 5 FSCALE)."""
    enter(cpu, ins)
    if empty(cpu, 0) or empty(cpu, 1):
        if stack_fault(cpu, False):
            put(cpu, 0, INDEFINITE)
        return
    x, y = get(cpu, 0), get(cpu, 1)
    ctx = XCtx((cpu.fpu_fcw >> 10) & 3, None, um=bool(cpu.fpu_fcw & UE))   # PC does not apply
    ctx.exact = None
    if sf.is_nan(F80, x) or sf.is_nan(F80, y) or sf.unsupported(F80, x) or sf.unsupported(F80, y):
        r = sf.nan2_x87(F80, x, y, ctx) if (sf.is_nan(F80, x) or sf.is_nan(F80, y)) else INDEFINITE
        if not (sf.is_nan(F80, x) or sf.is_nan(F80, y)):
            ctx.flags |= IE
    elif sf.is_inf(F80, y):
        neg = y >> 79
        if sf.is_zero(F80, x) and not neg or sf.is_inf(F80, x) and neg:
            ctx.flags |= IE
            r = INDEFINITE
        else:
            sf.unpack(F80, x, ctx) if _finite(x) else None
            r = x if sf.is_zero(F80, x) or sf.is_inf(F80, x) else (
                sf.pack_zero(F80, x >> 79) if neg else sf.pack_inf(F80, x >> 79))
    elif sf.is_inf(F80, x) or sf.is_zero(F80, x):
        sf.unpack(F80, y, ctx)
        r = x
    else:
        s, e, m = sf.unpack(F80, x, ctx)
        sy, ey, my = sf.unpack(F80, y, ctx)
        n = min(my >> -ey if ey < 0 else my << min(ey, 64), 1 << 20)    # trunc(ST1), clamped
        n = -n if sy else n
        ctx.exact = (s, e + n, m)
        r = sf.round_pack(F80, s, e + n, m, ctx)
    result(cpu, ctx, 0, r)


def _prem(ieee):
    """FPREM (quotient truncated) / FPREM1 (quotient rounded to nearest).
    When the exponents differ by 64 or more the reduction is partial
    (C2 = 1); otherwise C2 = 0 and C0, C3, C1 hold quotient bits 2, 1, 0
    (APM vol 5 FPREM)."""
    def h(cpu, ins):
        enter(cpu, ins)
        if empty(cpu, 0) or empty(cpu, 1):
            if stack_fault(cpu, False):
                put(cpu, 0, INDEFINITE)
                _set_cc(cpu, 0)
            return
        x, y = get(cpu, 0), get(cpu, 1)
        ctx = sf.Ctx()
        cc = 0
        if sf.unsupported(F80, x) or sf.unsupported(F80, y):
            ctx.flags |= IE
            r = INDEFINITE
        elif sf.is_nan(F80, x) or sf.is_nan(F80, y):
            r = sf.nan2_x87(F80, x, y, ctx)
        elif sf.is_inf(F80, x) or sf.is_zero(F80, y):
            if _finite(x):
                sf.unpack(F80, x, ctx)
            ctx.flags |= IE
            r = INDEFINITE
        elif sf.is_inf(F80, y) or sf.is_zero(F80, x):
            if _finite(x):
                sf.unpack(F80, x, ctx)
            if _finite(y):
                sf.unpack(F80, y, ctx)
            r = x
        else:
            sx, ex, mx = sf.unpack(F80, x, ctx)
            sy, ey, my = sf.unpack(F80, y, ctx)
            d = (ex + mx.bit_length()) - (ey + my.bit_length())
            partial = d >= 64
            # A partial step divides by y * 2**(d - n), n = 32 + d mod 32, with
            # the quotient truncated (the AMD host's choice of n; any n in
            # 32..63 is allowed by the manual).
            shift = d - (32 + d % 32) if partial else 0
            e0 = min(ex, ey + shift)
            a = mx << (ex - e0)
            b = my << (ey + shift - e0)
            q, rem = divmod(a, b)
            if ieee and not partial and (2 * rem > b or (2 * rem == b and q & 1)):
                q += 1
                rem -= b
            sign = sx ^ (1 if rem < 0 else 0)
            r = sf.round_pack(F80, sign, e0, abs(rem), sf.Ctx()) if rem else sf.pack_zero(F80, sx)
            if partial:
                cc = C2
            else:
                cc = (C0 if q & 4 else 0) | (C3 if q & 2 else 0) | (C1 if q & 1 else 0)
        if report(cpu, ctx.flags) & (IE | DE):
            return
        put(cpu, 0, r)
        cpu.fpu_fsw = (cpu.fpu_fsw & ~(C0 | C1 | C2 | C3)) | cc
    return h


handles("FPREM")(_prem(False))
handles("FPREM1")(_prem(True))


# ---------------------------------------------------------------- transcendental instructions
# Results are the exact function value rounded once by FCW.RC to 64 bits (PC
# does not apply), computed with mpmath at 256 bits; see docs/DESIGN.md for
# how this compares with the AMD host.
TRIG_LIMIT = 63                      # |x| >= 2**63: C2 = 1, operand unchanged


def _mpf(v):
    import mpmath
    s, e, m = sf.unpack(F80, v)
    return mpmath.ldexp(-m if s else m, e)


def _to_f80(x, ctx, always_inexact=False):
    """Round an mpmath value (taken as inexact unless it is short) into F80;
    ``always_inexact`` rounds an exact value as if just below it."""
    import mpmath
    if x == 0:
        return sf.pack_zero(F80, 0)
    if mpmath.isinf(x):
        return sf.pack_inf(F80, x < 0)
    sign, man, exp, _ = x._mpf_                # not mpf(x): that rounds to mpmath's default precision
    if man.bit_length() <= 128 and always_inexact:
        return sf.round_pack(F80, sign, exp - 130, (man << 130) - 1, ctx)
    return sf.round_pack(F80, sign, exp, man, ctx, sticky=man.bit_length() > 128)


def _prec_for(v):
    """Working precision that keeps the second term of the series of a
    function ~x near zero (sin, tan, atan, expm1, log1p) visible."""
    s, e, m = sf.unpack(F80, v)
    return 256 + max(0, -2 * (e + m.bit_length()))


def _fn_ctx(cpu):
    return sf.Ctx((cpu.fpu_fcw >> 10) & 3, None, um=bool(cpu.fpu_fcw & UE))


def _special1(v, ctx):
    """NaN / unsupported operand of a one-operand function, or None."""
    if sf.is_nan(F80, v):
        if sf.is_snan(F80, v):
            ctx.flags |= IE
        return sf.quiet(F80, v)
    if sf.unsupported(F80, v):
        ctx.flags |= IE
        return INDEFINITE
    return None


def _trig(fn_name):
    def compute1(cpu, x):
        import mpmath
        ctx = _fn_ctx(cpu)
        r = _special1(x, ctx)
        if r is not None:
            return r, ctx, False
        if sf.is_inf(F80, x):
            ctx.flags |= IE
            return INDEFINITE, ctx, False
        s, e, m = sf.unpack(F80, x, ctx)
        if m and e + m.bit_length() - 1 >= TRIG_LIMIT:
            return None, ctx, True                  # out of range: C2 = 1
        if m == 0:
            return (x if fn_name != "cos" else ONE), ctx, False
        if fn_name == "tan" and e + m.bit_length() < -32:
            # tan x = x + x**3/3 rounds like x; the AMD host rounds it as a
            # value just *below* |x| (directed modes and C1 show it).
            return sf.round_pack(F80, s, e - 130, (m << 130) - 1, ctx), ctx, False
        return _to_f80(_reduced(fn_name, s, e, m), ctx), ctx, False
    return compute1


# The argument is reduced modulo pi taken to 66 bits (2 integer and 64
# fraction bits, truncated), as the AMD host does; the function of the
# reduced argument is then exact.  Far from multiples of pi this is the
# correctly rounded result; near them it is what the hardware returns.
PI66 = 0xC90FDAA22168C234C >> 2            # pi * 2**64, truncated


def _reduced(fn_name, s, e, m):
    import mpmath
    d = max(-e, 64)                                # common denominator 2**d
    xi = (-m if s else m) << (d + e)
    pi = PI66 << (d - 64)
    k = _nint(xi, pi)
    r_num, r_sh = xi - k * pi, d
    r_exp_top = r_num.bit_length() - r_sh if r_num else 0
    with mpmath.workprec(300 + max(0, -2 * r_exp_top)):
        r = mpmath.ldexp(r_num, -r_sh)
        if fn_name == "tan":
            return mpmath.tan(r)
        v = mpmath.sin(r) if fn_name == "sin" else mpmath.cos(r)
        return -v if k & 1 else v


def _nint(a, b):
    """a / b rounded to the nearest integer (ties to even)."""
    q, rem = divmod(a, b)
    if 2 * rem > b or (2 * rem == b and q & 1):
        q += 1
    return q


def _trig_handler(fn_name):
    compute1 = _trig(fn_name)

    def h(cpu, ins):
        enter(cpu, ins)
        if empty(cpu, 0):
            if stack_fault(cpu, False):
                put(cpu, 0, INDEFINITE)
            return
        r, ctx, out_of_range = compute1(cpu, get(cpu, 0))
        if out_of_range:
            report(cpu, ctx.flags)
            cpu.fpu_fsw |= C2
            return
        cpu.fpu_fsw &= ~C2
        result(cpu, ctx, 0, r)
    return h


handles("FSIN")(_trig_handler("sin"))
handles("FCOS")(_trig_handler("cos"))


def _two_results(cpu, ins, first, second):
    """FPTAN/FSINCOS: ST0 = first, then push second (APM vol 5)."""
    enter(cpu, ins)
    if empty(cpu, 0) or not empty(cpu, 7):
        if stack_fault(cpu, not empty(cpu, 7)):
            put(cpu, 0, INDEFINITE)
            push(cpu, INDEFINITE)
        return
    x = get(cpu, 0)
    r1, ctx1, oor = first(cpu, x)
    if oor:
        report(cpu, ctx1.flags)
        cpu.fpu_fsw |= C2
        return
    if sf.is_nan(F80, r1):
        r2, ctx2 = r1, sf.Ctx()                   # an invalid operand: both results are the NaN
    else:
        r2, ctx2, _ = second(cpu, x)
    ctx1.flags |= ctx2.flags
    # C1 reports the rounding of the value left in ST(1) for FPTAN (the
    # pushed 1.0 is exact) and of the cosine in ST(0) for FSINCOS (host).
    c1 = ctx2.c1 if second is _cos else ctx1.c1
    unmasked = report(cpu, ctx1.flags, c1=c1 and bool(ctx1.flags & PE))
    cpu.fpu_fsw &= ~C2
    if unmasked & (IE | DE | ZE):
        return
    put(cpu, 0, r1)
    push(cpu, r2)


_sin, _cos, _tan = _trig("sin"), _trig("cos"), _trig("tan")


def _one(cpu, x):
    if sf.is_nan(F80, x) or sf.unsupported(F80, x):
        return _special1(x, sf.Ctx()) if sf.is_nan(F80, x) else INDEFINITE, sf.Ctx(), False
    return ONE, sf.Ctx(), False


@handles("FPTAN")
def fptan(cpu, ins):
    _two_results(cpu, ins, _tan, _one)


@handles("FSINCOS")
def fsincos(cpu, ins):
    _two_results(cpu, ins, _sin, _cos)


@handles("F2XM1")
def f2xm1(cpu, ins):
    """ST0 = 2**ST0 - 1 (defined for -1 <= ST0 <= +1)."""
    import mpmath

    def fn(cpu, x):
        ctx = _fn_ctx(cpu)
        r = _special1(x, ctx)
        if r is not None:
            return r, ctx
        if sf.is_inf(F80, x):
            return (x if not x >> 79 else (ONE | F80.sign)), ctx
        s, e, m = sf.unpack(F80, x, ctx)
        if m == 0:
            return x, ctx
        top_e = e + m.bit_length() - 1
        if top_e > 0 or (top_e == 0 and m & (m - 1)):
            # |x| > 1: outside the domain; the AMD host returns x with PE set
            ctx.flags |= PE
            return x, ctx
        with mpmath.workprec(_prec_for(x)):
            # the host reports every result inexact, 2**1 - 1 = 1 included
            return _to_f80(mpmath.expm1(_mpf(x) * mpmath.ln2), ctx, always_inexact=True), ctx
    _unary(fn)(cpu, ins)


def _log_op(plus1):
    """FYL2X: ST1 = ST1 * log2(ST0); FYL2XP1: ST1 = ST1 * log2(ST0 + 1); pop."""
    def h(cpu, ins):
        import mpmath
        enter(cpu, ins)
        if empty(cpu, 0) or empty(cpu, 1):
            if stack_fault(cpu, False):
                put(cpu, 1, INDEFINITE)
                pop(cpu)
            return
        x, y = get(cpu, 0), get(cpu, 1)
        ctx = _fn_ctx(cpu)
        r = _log_special(x, y, ctx, plus1)
        if ctx.flags & IE:
            ctx.flags &= ~DE                      # an invalid operand is reported alone
        if r is None:
            with mpmath.workprec(_prec_for(x) + 64):
                lx = mpmath.log1p(_mpf(x)) if plus1 else mpmath.log(_mpf(x))
                r = _to_f80(_mpf(y) * lx / mpmath.ln2, ctx, always_inexact=plus1)
        if report(cpu, ctx.flags, c1=ctx.c1 and bool(ctx.flags & PE)) & (IE | DE | ZE):
            return
        put(cpu, 1, r)
        pop(cpu)
    return h


def _log_special(x, y, ctx, plus1):
    """Special operands of FYL2X/FYL2XP1 (APM vol 5 tables), or None."""
    if sf.unsupported(F80, x) or sf.unsupported(F80, y):
        ctx.flags |= IE
        return INDEFINITE
    if sf.is_nan(F80, x) or sf.is_nan(F80, y):
        return sf.nan2_x87(F80, x, y, ctx)
    for v in (x, y):
        if sf.is_denormal(F80, v):
            ctx.flags |= DE
    xs = x >> 79
    yz, yi = sf.is_zero(F80, y), sf.is_inf(F80, y)
    if plus1:
        # log2(1 + x) has the sign of x.  x <= -1 is outside the domain
        # (|x| < 1 - sqrt(2)/2); the AMD host then returns x with PE
        # (infinity for an infinite ST1).
        if _finite(x) and xs and (x >> 64) & 0x7FFF >= 0x3FFF:
            if yi:
                return sf.pack_inf(F80, xs ^ (y >> 79))
            if yz:
                return sf.pack_zero(F80, xs ^ (y >> 79))
            ctx.flags |= PE
            return x
        if sf.is_zero(F80, x):
            if yi:
                ctx.flags |= IE
                return INDEFINITE
            return sf.pack_zero(F80, xs ^ (y >> 79))
        if sf.is_inf(F80, x):
            if xs or yz:
                ctx.flags |= IE
                return INDEFINITE
            return sf.pack_inf(F80, y >> 79)
        if yi:
            return sf.pack_inf(F80, xs ^ (y >> 79))
        if yz:
            return sf.pack_zero(F80, xs ^ (y >> 79))
        return None
    if xs and not sf.is_zero(F80, x):
        ctx.flags |= IE
        return INDEFINITE
    if sf.is_zero(F80, x):
        if yz:
            ctx.flags |= IE
            return INDEFINITE
        if not yi:
            ctx.flags |= ZE
        return sf.pack_inf(F80, 1 ^ (y >> 79))
    if sf.is_inf(F80, x):
        if yz:
            ctx.flags |= IE
            return INDEFINITE
        return sf.pack_inf(F80, y >> 79)
    if x == ONE:
        if yi:
            ctx.flags |= IE
            return INDEFINITE
        return sf.pack_zero(F80, y >> 79)
    if yi or yz:
        below = sf.compare(F80, x, ONE, sf.Ctx()) == sf.LT
        if yz:
            return sf.pack_zero(F80, (y >> 79) ^ below)
        return sf.pack_inf(F80, (y >> 79) ^ below)
    return None


handles("FYL2X")(_log_op(False))
handles("FYL2XP1")(_log_op(True))


@handles("FPATAN")
def fpatan(cpu, ins):
    """ST1 = arctan(ST1 / ST0) in the quadrant of (ST0, ST1); pop."""
    import mpmath
    enter(cpu, ins)
    if empty(cpu, 0) or empty(cpu, 1):
        if stack_fault(cpu, False):
            put(cpu, 1, INDEFINITE)
            pop(cpu)
        return
    x, y = get(cpu, 0), get(cpu, 1)
    ctx = _fn_ctx(cpu)
    if sf.unsupported(F80, x) or sf.unsupported(F80, y):
        ctx.flags |= IE
        r = INDEFINITE
    elif sf.is_nan(F80, x) or sf.is_nan(F80, y):
        r = sf.nan2_x87(F80, x, y, ctx)
    else:
        for v in (x, y):
            if sf.is_denormal(F80, v):
                ctx.flags |= DE
        with mpmath.workprec(256 + abs(_exp_gap(x, y))):
            fx = mpmath.inf * (-1 if x >> 79 else 1) if sf.is_inf(F80, x) else _mpf_signed(x)
            fy = mpmath.inf * (-1 if y >> 79 else 1) if sf.is_inf(F80, y) else _mpf_signed(y)
            r = _atan2(fy, fx, x >> 79, y >> 79, ctx)
    if report(cpu, ctx.flags, c1=ctx.c1 and bool(ctx.flags & PE)) & (IE | DE):
        return
    put(cpu, 1, r)
    pop(cpu)


def _exp_gap(x, y):
    """Exponent distance of two finite operands (precision for atan2)."""
    if not (_finite(x) and _finite(y)) or sf.is_zero(F80, x) or sf.is_zero(F80, y):
        return 0
    _, ex, mx = sf.unpack(F80, x)
    _, ey, my = sf.unpack(F80, y)
    return 2 * ((ex + mx.bit_length()) - (ey + my.bit_length()))


def _mpf_signed(v):
    return _mpf(v) if not sf.is_zero(F80, v) else 0


def _atan2(fy, fx, xneg, yneg, ctx):
    import mpmath
    if fy == 0:
        if xneg:
            return _to_f80(mpmath.pi if not yneg else -mpmath.pi, ctx)
        return sf.pack_zero(F80, yneg)
    if mpmath.isinf(fy) and mpmath.isinf(fx):
        r = mpmath.pi / 4 * (3 if xneg else 1)
        return _to_f80(-r if yneg else r, ctx)
    if mpmath.isinf(fx):                         # finite y over +-infinity: +-0 or +-pi
        if xneg:
            return _to_f80(-mpmath.pi if yneg else mpmath.pi, ctx)
        return sf.pack_zero(F80, yneg)
    return _to_f80(mpmath.atan2(fy, fx), ctx)
