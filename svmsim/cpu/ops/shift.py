"""Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD
(AMD APM vol 3, ch. 3).

Common rules (APM vol 3, "SHL", "RCL", ...):

* The count is masked to 5 bits (6 bits with 64-bit operand size).  RCL and
  RCR of 8/16-bit operands then rotate by count modulo 9/17.
* A (masked) count of 0 leaves every flag alone.  The destination is still
  read and written back: a memory operand is a read-modify-write access (a
  read-only page faults even for count 0) and a 32-bit register destination
  has its upper half cleared.
* Flags the APM defines are computed as it says.  Flags it leaves undefined
  (OF for counts other than 1, AF for shifts, everything but CF/OF for
  SHLD/SHRD counts > operand size) follow QEMU TCG, which is also Unicorn,
  the differential oracle (tests/test_diff_unicorn.py):

  - SHL/SHR/SAR: AF = 0; OF = MSB(r) XOR MSB(value shifted by count-1),
    i.e. SHL: MSB(r) ^ CF, SHR: 0 for counts > 1, SAR: always 0.
  - ROL: OF = MSB(r) ^ CF;  ROR: OF = MSB(r) ^ bit(n-2) of r, for any count.
  - RCL/RCR: OF = MSB(old) ^ MSB(r), for any count.
  - SHLD/SHRD 16-bit with count 17..31: the operands act as the 48-bit
    string dest:src:dest (QEMU follows Intel hardware here; AMD calls the
    result undefined).

  Real AMD processors are reported to compute some of these undefined flags
  differently (e.g. AF after shifts); software must not rely on them.
"""
from . import handles
from ..flags import CF, OF, OP_SHIFT, szp, set_arith

MASK64 = (1 << 64) - 1



def _set_cf_of(cpu, f):
    """Replace only CF and OF (rotates leave the other flags unchanged)."""
    cpu.rflags = (cpu.get_rflags() & ~(CF | OF)) | f
    cpu.lf = None


def _count(ins, cpu, bits):
    return ins.get1(cpu) & (0x3F if bits == 64 else 0x1F)


def _write_back_unchanged(cpu, ins, value):
    """Count 0: the destination is still written: a memory operand is a
    read-modify-write access, and a 32-bit register is zero-extended to 64
    bits (QEMU and hardware both do this)."""
    ins.set0(cpu, value)


# ---------------------------------------------------------------- shifts
@handles("SHL", "SAL")
def shl(cpu, ins):
    bits = ins.osize << 3
    c = _count(ins, cpu, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    mask = (1 << bits) - 1
    last = (a << (c - 1)) & mask          # value before the final 1-bit shift
    r = (last << 1) & mask
    ins.set0(cpu, r)
    cpu.lf = (OP_SHIFT, bits, last >> (bits - 1), (last ^ r) >> (bits - 1), r, 0)


@handles("SHR")
def shr(cpu, ins):
    bits = ins.osize << 3
    c = _count(ins, cpu, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    last = a >> (c - 1)
    r = last >> 1
    ins.set0(cpu, r)
    # OF: MSB(original) for count 1
    cpu.lf = (OP_SHIFT, bits, last & 1, (last ^ r) >> (bits - 1) & 1, r, 0)


@handles("SAR")
def sar(cpu, ins):
    bits = ins.osize << 3
    c = _count(ins, cpu, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    mask = (1 << bits) - 1
    s = a - (1 << bits) if a >> (bits - 1) else a
    last = s >> (c - 1)
    r = (last >> 1) & mask
    ins.set0(cpu, r)
    cpu.lf = (OP_SHIFT, bits, last & 1, 0, r, 0)        # OF = 0


# ---------------------------------------------------------------- rotates
@handles("ROL")
def rol(cpu, ins):
    bits = ins.osize << 3
    c = _count(ins, cpu, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    n = c % bits                           # 8/16-bit: count mod size
    mask = (1 << bits) - 1
    r = ((a << n) | (a >> (bits - n))) & mask
    ins.set0(cpu, r)
    cf = r & 1
    _set_cf_of(cpu, cf | (OF if (r >> (bits - 1)) ^ cf else 0))


@handles("ROR")
def ror(cpu, ins):
    bits = ins.osize << 3
    c = _count(ins, cpu, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    n = c % bits
    mask = (1 << bits) - 1
    r = ((a >> n) | (a << (bits - n))) & mask
    ins.set0(cpu, r)
    msb = r >> (bits - 1)
    _set_cf_of(cpu, msb | (OF if msb ^ (r >> (bits - 2) & 1) else 0))


def _rc_count(ins, cpu, bits):
    c = _count(ins, cpu, bits)
    if bits == 8:
        return c % 9
    if bits == 16:
        return c % 17
    return c


def _rotate_through_carry(cpu, ins, left):
    """RCL/RCR: CF:dest is a (bits+1)-bit value rotated left or right (APM vol 3);
    OF = MSB(result) XOR MSB(dest) as QEMU computes it for every count."""
    bits = ins.osize << 3
    c = _rc_count(ins, cpu, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    f = cpu.get_rflags()
    w = bits + 1
    v = ((f & CF) << bits) | a
    if left:
        v = ((v << c) | (v >> (w - c))) & ((1 << w) - 1)
    else:
        v = ((v >> c) | (v << (w - c))) & ((1 << w) - 1)
    r = v & ((1 << bits) - 1)
    ins.set0(cpu, r)
    cpu.rflags = (f & ~(CF | OF)) | (v >> bits) | (OF if (a ^ r) >> (bits - 1) else 0)
    cpu.lf = None


@handles("RCL")
def rcl(cpu, ins):
    return _rotate_through_carry(cpu, ins, True)


@handles("RCR")
def rcr(cpu, ins):
    return _rotate_through_carry(cpu, ins, False)


# ---------------------------------------------------------------- double shifts
def _shiftd_count(cpu, ins, bits):
    c = ins.get2(cpu) if ins.get2 is not None else cpu.regs[1]
    return c & (0x3F if bits == 64 else 0x1F)


@handles("SHLD")
def shld(cpu, ins):
    """dest = high half of (dest:src << count) (APM vol 3 SHLD)."""
    bits = ins.osize << 3
    c = _shiftd_count(cpu, ins, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    b = ins.get1(cpu)
    mask = (1 << bits) - 1
    if bits == 16:
        # 48-bit dest:src:dest, so counts 17..31 shift dest bits back in.
        v, w = (a << 32) | (b << 16) | a, 48
    else:
        v, w = (a << bits) | b, bits * 2
    wm = (1 << w) - 1
    last = ((v << (c - 1)) & wm) >> (w - bits)
    r = ((v << c) & wm) >> (w - bits)
    ins.set0(cpu, r)
    cf = last >> (bits - 1)
    of = OF if (last ^ r) >> (bits - 1) else 0
    set_arith(cpu, cf | of | szp(r & mask, bits))


@handles("SHRD")
def shrd(cpu, ins):
    """dest = low half of (src:dest >> count) (APM vol 3 SHRD)."""
    bits = ins.osize << 3
    c = _shiftd_count(cpu, ins, bits)
    a = ins.get0(cpu)
    if c == 0:
        return _write_back_unchanged(cpu, ins, a)
    b = ins.get1(cpu)
    mask = (1 << bits) - 1
    if bits == 16:
        v = (a << 32) | (b << 16) | a      # dest:src:dest, as QEMU
    else:
        v = (b << bits) | a
    # QEMU's 64-bit form shifts dest alone for the last-bit value, so its
    # (undefined for count > 1) OF sees a zero MSB there.
    last = (a if bits == 64 else v) >> (c - 1) & mask
    r = (v >> c) & mask
    ins.set0(cpu, r)
    of = OF if (last ^ r) >> (bits - 1) else 0
    set_arith(cpu, (last & 1) | of | szp(r, bits))
