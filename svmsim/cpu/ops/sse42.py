"""SSE4.2: the packed string compares PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM
(and their VEX forms) and CRC32 (AMD APM vol 4 PCMPESTRI; Intel SDM vol 2
4.1 "Imm8 control byte operation for PCMPESTRI / PCMPESTRM / PCMPISTRI /
PCMPISTRM").  PCMPGTQ is with the other packed-integer compares.

imm8: [1:0] element format (unsigned/signed bytes/words), [3:2] aggregation
(equal any, ranges, equal each, equal ordered), [5:4] polarity, [6] output
selection (most significant index / expanded mask).  Explicit-length forms
take the lengths from rAX and rDX (absolute value, saturated); implicit
forms end each string at its first zero element.  Flags: CF = result != 0,
ZF/SF = the second/first string is shorter than a full register, OF =
result bit 0, AF = PF = 0.  The string compares have no alignment rule.
"""
from . import handles
from .simd import layout, check, rd, split
from ..flags import set_arith, CF, ZF, SF, OF

EQUAL_ANY, RANGES, EQUAL_EACH, EQUAL_ORDERED = range(4)


def _lengths(cpu, ins, a, b, n, w, explicit):
    if explicit:
        bits = 64 if ins.name.endswith("64") else 32        # REX.W / VEX.W: rAX, rDX

        def length(v):
            v &= (1 << bits) - 1
            if v >> (bits - 1):
                v -= 1 << bits
            return min(abs(v), n)
        return length(cpu.regs[0]), length(cpu.regs[2])

    def implicit(v):
        for i, x in enumerate(split(v, w, 16)):
            if x == 0:
                return i
        return n
    return implicit(a), implicit(b)


def _intres1(xs, ys, la, lb, agg, n):
    """IntRes1 bit j (APM vol 4 / SDM 4.1.4-4.1.6 with the invalid-element overrides)."""
    res = 0
    if agg == EQUAL_ANY:
        for j in range(lb):
            if any(xs[i] == ys[j] for i in range(la)):
                res |= 1 << j
    elif agg == RANGES:
        for j in range(lb):
            for i in range(0, la - 1, 2):
                if xs[i] <= ys[j] <= xs[i + 1]:
                    res |= 1 << j
                    break
    elif agg == EQUAL_EACH:
        for i in range(n):
            va, vb = i < la, i < lb
            if (va and vb and xs[i] == ys[i]) or (not va and not vb):
                res |= 1 << i
    else:
        for j in range(n):
            ok = True
            for k in range(n - j):
                if k >= la:
                    break                       # needle ended: match
                if j + k >= lb or xs[k] != ys[j + k]:
                    ok = False
                    break
            if ok:
                res |= 1 << j
    return res


def _compare(cpu, ins, explicit):
    lo = layout(ins)
    check(cpu, lo)
    a = rd(cpu, ins, lo, 0)
    b = rd(cpu, ins, lo, 1)
    imm = ins.imm
    w = 2 if imm & 1 else 1
    n = 16 // w
    signed = bool(imm & 2)
    la, lb = _lengths(cpu, ins, a, b, n, w, explicit)
    xs, ys = split(a, w, 16, signed), split(b, w, 16, signed)
    r1 = _intres1(xs, ys, la, lb, (imm >> 2) & 3, n)
    pol = (imm >> 4) & 3
    full = (1 << n) - 1
    if pol == 1:
        r2 = r1 ^ full
    elif pol == 3:
        r2 = r1 ^ ((1 << lb) - 1)
    else:
        r2 = r1
    flags = (CF if r2 else 0) | (ZF if lb < n else 0) | (SF if la < n else 0) | (OF if r2 & 1 else 0)
    return r2, n, w, imm, flags


def _index(explicit):
    def h(cpu, ins):
        r2, n, w, imm, flags = _compare(cpu, ins, explicit)
        if not r2:
            idx = n
        elif imm & 0x40:
            idx = r2.bit_length() - 1
        else:
            idx = (r2 & -r2).bit_length() - 1
        cpu.regs[1] = idx                        # ECX (zero-extended)
        set_arith(cpu, flags)
    return h


def _mask(explicit):
    def h(cpu, ins):
        r2, n, w, imm, flags = _compare(cpu, ins, explicit)
        if imm & 0x40:
            m = 0
            for i in range(n):
                if r2 >> i & 1:
                    m |= ((1 << (8 * w)) - 1) << (8 * w * i)
        else:
            m = r2
        cpu.xmm[0] = m
        if layout(ins).vex:
            cpu.ymmh[0] = 0
        set_arith(cpu, flags)
    return h


handles("PCMPESTRI", "PCMPESTRI64", "VPCMPESTRI", "VPCMPESTRI64")(_index(True))
handles("PCMPISTRI", "VPCMPISTRI")(_index(False))
handles("PCMPESTRM", "PCMPESTRM64", "VPCMPESTRM", "VPCMPESTRM64")(_mask(True))
handles("PCMPISTRM", "VPCMPISTRM")(_mask(False))


# ---------------------------------------------------------------- CRC32
def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


CRC32C = _table()


@handles("CRC32")
def crc32(cpu, ins):
    """CRC-32C (Castagnoli, reflected polynomial 82F63B78h) of the source
    bytes, starting from the low 32 bits of the destination (APM vol 3 CRC32)."""
    crc = ins.get0(cpu) & 0xFFFFFFFF
    src = ins.get1(cpu)
    for k in range(ins.opsz[1] or ins.mem_size):
        crc = (crc >> 8) ^ CRC32C[(crc ^ (src >> (8 * k))) & 0xFF]
    ins.set0(cpu, crc)
