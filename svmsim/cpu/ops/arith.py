"""Integer arithmetic and logic: ADD ... XOR, INC/DEC/NEG/NOT, MUL/IMUL/DIV/IDIV,
sign extensions, XADD, CMPXCHG (AMD APM vol 3, ch. 3).

Flags are left lazy (``cpu.lf``) for the common ALU ops.  Flags the manual
leaves undefined follow QEMU TCG (and so Unicorn), the differential oracle.
"""
from . import handles
from ..exceptions import CpuException, DE
from ..flags import OP_ADD, OP_SUB, OP_LOGIC, OP_INC, OP_DEC, CF, OF, ZF, carry, szp, set_arith


def _cf(cpu):
    lf = cpu.lf
    return carry(lf) if lf is not None else cpu.rflags & CF


@handles("ADD")
def add(cpu, ins):
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    r = a + b
    ins.set0(cpu, r)
    cpu.lf = (OP_ADD, ins.osize << 3, a, b, r, 0)


@handles("ADC")
def adc(cpu, ins):
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    r = a + b + _cf(cpu)
    ins.set0(cpu, r)
    cpu.lf = (OP_ADD, ins.osize << 3, a, b, r, 0)


@handles("SUB")
def sub(cpu, ins):
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    r = a - b
    ins.set0(cpu, r)
    cpu.lf = (OP_SUB, ins.osize << 3, a, b, r, 0)


@handles("SBB")
def sbb(cpu, ins):
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    r = a - b - _cf(cpu)
    ins.set0(cpu, r)
    cpu.lf = (OP_SUB, ins.osize << 3, a, b, r, 0)


@handles("CMP")
def cmp(cpu, ins):
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    cpu.lf = (OP_SUB, ins.osize << 3, a, b, a - b, 0)


@handles("AND")
def and_(cpu, ins):
    r = ins.get0(cpu) & ins.get1(cpu)
    ins.set0(cpu, r)
    cpu.lf = (OP_LOGIC, ins.osize << 3, 0, 0, r, 0)


@handles("OR")
def or_(cpu, ins):
    r = ins.get0(cpu) | ins.get1(cpu)
    ins.set0(cpu, r)
    cpu.lf = (OP_LOGIC, ins.osize << 3, 0, 0, r, 0)


@handles("XOR")
def xor(cpu, ins):
    r = ins.get0(cpu) ^ ins.get1(cpu)
    ins.set0(cpu, r)
    cpu.lf = (OP_LOGIC, ins.osize << 3, 0, 0, r, 0)


@handles("TEST")
def test(cpu, ins):
    cpu.lf = (OP_LOGIC, ins.osize << 3, 0, 0, ins.get0(cpu) & ins.get1(cpu), 0)


@handles("INC")
def inc(cpu, ins):
    a = ins.get0(cpu)
    cf = _cf(cpu)
    r = a + 1
    ins.set0(cpu, r)
    cpu.lf = (OP_INC, ins.osize << 3, a, 1, r, cf)


@handles("DEC")
def dec(cpu, ins):
    a = ins.get0(cpu)
    cf = _cf(cpu)
    r = a - 1
    ins.set0(cpu, r)
    cpu.lf = (OP_DEC, ins.osize << 3, a, 1, r, cf)


@handles("NEG")
def neg(cpu, ins):
    b = ins.get0(cpu)
    r = -b
    ins.set0(cpu, r)
    cpu.lf = (OP_SUB, ins.osize << 3, 0, b, r, 0)


@handles("NOT")
def not_(cpu, ins):
    ins.set0(cpu, ~ins.get0(cpu))




def _signed(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


# ---------------------------------------------------------------- multiply / divide
_ACC = {1: None, 2: (0, 2), 4: (0, 2), 8: (0, 2)}   # (low reg, high reg): rAX, rDX


def _write_pair(cpu, size, lo, hi):
    mask = (1 << (size * 8)) - 1
    regs = cpu.regs
    if size == 1:                 # AX = AH:AL
        regs[0] = (regs[0] & ~0xFFFF) | ((hi & 0xFF) << 8) | (lo & 0xFF)
    elif size == 2:
        regs[0] = (regs[0] & ~0xFFFF) | (lo & mask)
        regs[2] = (regs[2] & ~0xFFFF) | (hi & mask)
    else:                         # 32-bit writes zero-extend
        regs[0] = lo & mask
        regs[2] = hi & mask


@handles("MUL")
def mul(cpu, ins):
    """Unsigned multiply rAX by r/m (APM vol 3 MUL); CF=OF=(high half != 0)."""
    size = ins.osize
    bits = size * 8
    a = cpu.regs[0] & ((1 << bits) - 1)
    r = a * ins.get0(cpu)
    lo, hi = r & ((1 << bits) - 1), r >> bits
    _write_pair(cpu, size, lo, hi)
    set_arith(cpu, (CF | OF if hi else 0) | szp(lo, bits))


@handles("IMUL")
def imul(cpu, ins):
    """Signed multiply: one-, two- and three-operand forms (APM vol 3 IMUL)."""
    size = ins.osize
    bits = size * 8
    mask = (1 << bits) - 1
    if ins.get1 is None:                      # one operand: rDX:rAX = rAX * r/m
        r = _signed(cpu.regs[0], bits) * _signed(ins.get0(cpu), bits)
        lo, hi = r & mask, (r >> bits) & mask
        _write_pair(cpu, size, lo, hi)
    else:
        if ins.get2 is not None:
            a, b = ins.get1(cpu), ins.get2(cpu)
        else:
            a, b = ins.get0(cpu), ins.get1(cpu)
        r = _signed(a, bits) * _signed(b & mask, bits)
        lo = r & mask
        ins.set0(cpu, lo)
    overflow = r != _signed(lo, bits)
    set_arith(cpu, (CF | OF if overflow else 0) | szp(lo, bits))


@handles("DIV")
def div(cpu, ins):
    """Unsigned divide rDX:rAX by r/m; #DE on zero or overflow (APM vol 3 DIV)."""
    size = ins.osize
    bits = size * 8
    mask = (1 << bits) - 1
    d = ins.get0(cpu)
    regs = cpu.regs
    if size == 1:
        n = regs[0] & 0xFFFF
    else:
        n = ((regs[2] & mask) << bits) | (regs[0] & mask)
    if d == 0:
        raise CpuException(DE, detail="divide by zero")
    q, rem = divmod(n, d)
    if q > mask:
        raise CpuException(DE, detail="quotient too large")
    _write_div(cpu, size, q, rem)


@handles("IDIV")
def idiv(cpu, ins):
    """Signed divide, quotient truncated toward zero (APM vol 3 IDIV)."""
    size = ins.osize
    bits = size * 8
    mask = (1 << bits) - 1
    d = _signed(ins.get0(cpu), bits)
    regs = cpu.regs
    if size == 1:
        n = _signed(regs[0], 16)
    else:
        n = _signed(((regs[2] & mask) << bits) | (regs[0] & mask), bits * 2)
    if d == 0:
        raise CpuException(DE, detail="divide by zero")
    q = abs(n) // abs(d)
    if (n < 0) != (d < 0):
        q = -q
    rem = n - q * d
    if not -(1 << (bits - 1)) <= q < (1 << (bits - 1)):
        raise CpuException(DE, detail="quotient out of range")
    _write_div(cpu, size, q & mask, rem & mask)


def _write_div(cpu, size, q, rem):
    regs = cpu.regs
    if size == 1:                 # AL = quotient, AH = remainder
        regs[0] = (regs[0] & ~0xFFFF) | ((rem & 0xFF) << 8) | (q & 0xFF)
    else:
        _write_pair(cpu, size, q, rem)


# ---------------------------------------------------------------- sign extension
@handles("CBW", "CWDE", "CDQE")
def cbw(cpu, ins):
    size = ins.osize
    bits = size * 8
    half = bits // 2
    v = _signed(cpu.regs[0], half) & ((1 << bits) - 1)
    if size == 8:
        cpu.regs[0] = v
    elif size == 4:
        cpu.regs[0] = v
    else:
        cpu.regs[0] = (cpu.regs[0] & ~0xFFFF) | v


@handles("CWD", "CDQ", "CQO")
def cwd(cpu, ins):
    size = ins.osize
    bits = size * 8
    hi = ((1 << bits) - 1) if cpu.regs[0] >> (bits - 1) & 1 else 0
    if size == 2:
        cpu.regs[2] = (cpu.regs[2] & ~0xFFFF) | hi
    else:
        cpu.regs[2] = hi


# ---------------------------------------------------------------- exchange-and-op
@handles("XADD")
def xadd(cpu, ins):
    a = ins.get0(cpu)
    b = ins.get1(cpu)
    r = a + b
    if ins.ea is not None:        # memory destination first: a fault leaves the register alone
        ins.set0(cpu, r)
        ins.set1(cpu, a)
    else:                         # XADD r, r with the same register: the sum wins (dest written last)
        ins.set1(cpu, a)
        ins.set0(cpu, r)
    cpu.lf = (OP_ADD, ins.osize << 3, a, b, r, 0)


@handles("CMPXCHG")
def cmpxchg(cpu, ins):
    """Compare rAX with r/m; equal: r/m = src, else rAX = r/m.  The destination
    is always written (APM vol 3 CMPXCHG: a locked RMW cycle)."""
    size = ins.osize
    bits = size * 8
    mask = (1 << bits) - 1
    acc = cpu.regs[0] & mask
    dest = ins.get0(cpu)
    if acc == dest:
        ins.set0(cpu, ins.get1(cpu))
    else:
        ins.set0(cpu, dest)
        if size == 4:
            cpu.regs[0] = dest
        elif size == 8:
            cpu.regs[0] = dest
        else:
            cpu.regs[0] = (cpu.regs[0] & ~mask) | dest
    cpu.lf = (OP_SUB, bits, acc, dest, acc - dest, 0)


@handles("CMPXCHG8B", "CMPXCHG16B")
def cmpxchg8b(cpu, ins):
    """CMPXCHG8B/16B: compare rDX:rAX with m64/m128 (APM vol 3). 16B needs a
    16-byte aligned operand, else #GP(0)."""
    from ..exceptions import gp
    size = ins.mem_size                   # 8 or 16
    half = size * 4
    hmask = (1 << half) - 1
    off = ins.ea(cpu)
    if size == 16 and off & 15:
        raise gp(0, "CMPXCHG16B operand not 16-byte aligned")
    regs = cpu.regs
    cur = cpu.read(ins.seg, off, size)
    expect = ((regs[2] & hmask) << half) | (regs[0] & hmask)
    if cur == expect:
        cpu.write(ins.seg, off, size, ((regs[1] & hmask) << half) | (regs[3] & hmask))
        zf = ZF
    else:
        cpu.write(ins.seg, off, size, cur)
        regs[0] = cur & hmask
        regs[2] = cur >> half
        zf = 0
    f = cpu.get_rflags()
    cpu.rflags = (f & ~ZF) | zf
    cpu.lf = None


# ---------------------------------------------------------------- ADX
def _adx(flag):
    """ADCX / ADOX: unsigned add with carry in and out through CF (ADCX) or OF
    (ADOX) only; every other flag is unchanged (APM vol 3 ADCX)."""
    def h(cpu, ins):
        bits = ins.osize << 3
        f = cpu.get_rflags()
        r = ins.get0(cpu) + ins.get1(cpu) + (1 if f & flag else 0)
        ins.set0(cpu, r)
        cpu.rflags = (f & ~flag) | (flag if r >> bits else 0)
        cpu.lf = None
    return h


handles("ADCX")(_adx(CF))
handles("ADOX")(_adx(OF))
