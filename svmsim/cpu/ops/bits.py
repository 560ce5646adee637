"""Bit tests and bit scans: BT/BTS/BTR/BTC, BSF/BSR, TZCNT/LZCNT/POPCNT and
the BMI1 group ANDN/BEXTR/BLSI/BLSMSK/BLSR (AMD APM vol 3, ch. 3).

CPUID bits these need (so a profile that advertises them must have them):
POPCNT = Fn0000_0001_ECX[23]; LZCNT = Fn8000_0001_ECX[5] (ABM);
TZCNT and the BMI1 group = Fn0000_0007_EBX[3] (BMI1); BZHI, MULX, PDEP,
PEXT, RORX, SARX, SHLX, SHRX = Fn0000_0007_EBX[8] (BMI2; only BZHI writes
flags).

Flags the APM leaves undefined follow QEMU TCG (the differential oracle):

* BT*: CF = the bit; every other flag is left unchanged.  (QEMU leaves them
  unchanged too when the previous flags are already materialised; after a
  lazy ALU op it computes SF/PF from that op's result.)
* BSF/BSR: ZF = (source == 0); SF, PF from the source; CF = OF = AF = 0.
  With a zero source the destination is unchanged (AMD documents this).
  QEMU differs for a 32-bit destination in 64-bit mode: it zero-extends
  the unchanged value; svmsim keeps all 64 bits, as the APM says.
* TZCNT/LZCNT: CF = (source == 0), ZF = (result == 0), SF = MSB(result),
  OF = AF = PF = 0.
* ANDN/BEXTR: SF, ZF, PF from the result, CF = OF = AF = 0.
* BLSI/BLSMSK/BLSR: CF as the APM defines it, ZF/SF from the result,
  OF = AF = PF = 0.  (QEMU 5's BLSI sets CF for a zero source, which is
  wrong: the APM sets CF when the source is NOT zero.)
"""
from . import handles
from ..flags import CF, ZF, SF, PARITY, szp, set_arith




# ---------------------------------------------------------------- BT family
def _bt_operand(cpu, ins):
    """(read, write, bit) for the tested operand.

    A memory operand with a register bit offset addresses beyond the
    operand: the offset is signed, and offset >> log2(bits) operand-size
    units are added to the effective address (APM vol 3 BT).  Register
    operands and immediate offsets use the offset modulo the size.
    """
    bits = ins.osize << 3
    off = ins.get1(cpu)
    if ins.ea is None or ins.imm is not None:
        return ins.get0, ins.set0, off & (bits - 1)
    if off >> (bits - 1):
        off -= 1 << bits
    amask = (1 << (ins.asize << 3)) - 1
    addr = (ins.ea(cpu) + (off >> (bits.bit_length() - 1)) * ins.osize) & amask
    seg, size = ins.seg, ins.osize
    return (lambda c: c.read(seg, addr, size),
            lambda c, v: c.write(seg, addr, size, v),
            off & (bits - 1))


def _bt_flags(cpu, bit):
    cpu.rflags = (cpu.get_rflags() & ~CF) | bit
    cpu.lf = None


@handles("BT")
def bt(cpu, ins):
    get, _, n = _bt_operand(cpu, ins)
    _bt_flags(cpu, get(cpu) >> n & 1)


@handles("BTS")
def bts(cpu, ins):
    get, put, n = _bt_operand(cpu, ins)
    v = get(cpu)
    put(cpu, v | (1 << n))
    _bt_flags(cpu, v >> n & 1)


@handles("BTR")
def btr(cpu, ins):
    get, put, n = _bt_operand(cpu, ins)
    v = get(cpu)
    put(cpu, v & ~(1 << n))
    _bt_flags(cpu, v >> n & 1)


@handles("BTC")
def btc(cpu, ins):
    get, put, n = _bt_operand(cpu, ins)
    v = get(cpu)
    put(cpu, v ^ (1 << n))
    _bt_flags(cpu, v >> n & 1)


# ---------------------------------------------------------------- scans and counts
def _scan_flags(src, bits):
    """QEMU's flags for BSF/BSR: a logic op on the source."""
    f = PARITY[src & 0xFF]
    if src == 0:
        f |= ZF
    if src >> (bits - 1):
        f |= SF
    return f


@handles("BSF")
def bsf(cpu, ins):
    bits = ins.osize << 3
    src = ins.get1(cpu)
    if src:
        ins.set0(cpu, (src & -src).bit_length() - 1)
    set_arith(cpu, _scan_flags(src, bits))


@handles("BSR")
def bsr(cpu, ins):
    bits = ins.osize << 3
    src = ins.get1(cpu)
    if src:
        ins.set0(cpu, src.bit_length() - 1)
    set_arith(cpu, _scan_flags(src, bits))


def _count_flags(src, r, bits):
    f = CF if src == 0 else 0
    if r == 0:
        f |= ZF
    if r >> (bits - 1) & 1:
        f |= SF
    return f


@handles("TZCNT")
def tzcnt(cpu, ins):
    bits = ins.osize << 3
    src = ins.get1(cpu)
    r = (src & -src).bit_length() - 1 if src else bits
    ins.set0(cpu, r)
    set_arith(cpu, _count_flags(src, r, bits))


@handles("LZCNT")
def lzcnt(cpu, ins):
    bits = ins.osize << 3
    src = ins.get1(cpu)
    r = bits - src.bit_length()
    ins.set0(cpu, r)
    set_arith(cpu, _count_flags(src, r, bits))


@handles("POPCNT")
def popcnt(cpu, ins):
    """ZF = (source == 0); OF, SF, AF, CF, PF cleared (APM vol 3 POPCNT)."""
    src = ins.get1(cpu)
    ins.set0(cpu, bin(src).count("1"))
    set_arith(cpu, 0 if src else ZF)


# ---------------------------------------------------------------- BMI1
@handles("ANDN")
def andn(cpu, ins):
    bits = ins.osize << 3
    r = ~ins.get1(cpu) & ins.get2(cpu) & ((1 << bits) - 1)
    ins.set0(cpu, r)
    set_arith(cpu, szp(r, bits))


@handles("BEXTR")
def bextr(cpu, ins):
    """dest = src1[start + len - 1 : start]; start = src2[7:0], len = src2[15:8];
    bits beyond the operand read as zero (APM vol 3 BEXTR)."""
    bits = ins.osize << 3
    ctl = ins.get2(cpu)
    start, length = ctl & 0xFF, (ctl >> 8) & 0xFF
    src = ins.get1(cpu)
    r = (src >> start) & ((1 << length) - 1) if start < bits else 0
    ins.set0(cpu, r)
    set_arith(cpu, szp(r, bits))


def _bls_flags(r, bits, cf):
    f = CF if cf else 0
    if r == 0:
        f |= ZF
    if r >> (bits - 1):
        f |= SF
    return f


@handles("BLSI")
def blsi(cpu, ins):
    """Isolate the lowest set bit; CF = (source != 0) (APM vol 3 BLSI)."""
    bits = ins.osize << 3
    src = ins.get1(cpu)
    r = src & -src
    ins.set0(cpu, r)
    set_arith(cpu, _bls_flags(r, bits, src != 0))


@handles("BLSMSK")
def blsmsk(cpu, ins):
    """Mask up to the lowest set bit; CF = (source == 0) (APM vol 3 BLSMSK)."""
    bits = ins.osize << 3
    mask = (1 << bits) - 1
    src = ins.get1(cpu)
    r = (src ^ (src - 1)) & mask
    ins.set0(cpu, r)
    set_arith(cpu, _bls_flags(r, bits, src == 0))


@handles("BLSR")
def blsr(cpu, ins):
    """Clear the lowest set bit; CF = (source == 0) (APM vol 3 BLSR)."""
    bits = ins.osize << 3
    mask = (1 << bits) - 1
    src = ins.get1(cpu)
    r = src & (src - 1) & mask
    ins.set0(cpu, r)
    set_arith(cpu, _bls_flags(r, bits, src == 0))


# ---------------------------------------------------------------- BMI2 (no flags except BZHI)
@handles("BZHI")
def bzhi(cpu, ins):
    """Zero the bits from index src2[7:0] up; CF = (index > operand size - 1),
    ZF, SF from the result, OF = 0 (APM vol 3 BZHI); PF (undefined) from
    the result, AF = 0, as on the AMD host."""
    bits = ins.osize << 3
    n = ins.get2(cpu) & 0xFF
    src = ins.get1(cpu)
    r = src & ((1 << n) - 1) if n < bits else src
    ins.set0(cpu, r)
    set_arith(cpu, (CF if n > bits - 1 else 0) | szp(r, bits))


@handles("MULX")
def mulx(cpu, ins):
    """Unsigned rDX * src: high half to the first operand, low half to the
    second (written first, so equal operands get the high half); no flags."""
    bits = ins.osize << 3
    mask = (1 << bits) - 1
    p = (cpu.regs[2] & mask) * ins.get2(cpu)
    ins.set1(cpu, p & mask)
    ins.set0(cpu, p >> bits)


@handles("PDEP")
def pdep(cpu, ins):
    src, mask = ins.get1(cpu), ins.get2(cpu)
    r, k = 0, 0
    while mask:
        low = mask & -mask
        if src >> k & 1:
            r |= low
        k += 1
        mask ^= low
    ins.set0(cpu, r)


@handles("PEXT")
def pext(cpu, ins):
    src, mask = ins.get1(cpu), ins.get2(cpu)
    r, k = 0, 0
    while mask:
        low = mask & -mask
        if src & low:
            r |= 1 << k
        k += 1
        mask ^= low
    ins.set0(cpu, r)


@handles("RORX")
def rorx(cpu, ins):
    bits = ins.osize << 3
    n = ins.imm & (bits - 1)
    v = ins.get1(cpu)
    ins.set0(cpu, ((v >> n) | (v << (bits - n))) & ((1 << bits) - 1))


def _shiftx(kind):
    def h(cpu, ins):
        bits = ins.osize << 3
        n = ins.get2(cpu) & (bits - 1)
        v = ins.get1(cpu)
        if kind == "l":
            r = v << n
        elif kind == "r":
            r = v >> n
        else:
            r = (v - (1 << bits) if v >> (bits - 1) else v) >> n
        ins.set0(cpu, r & ((1 << bits) - 1))
    return h


handles("SHLX")(_shiftx("l"))
handles("SHRX")(_shiftx("r"))
handles("SARX")(_shiftx("a"))
