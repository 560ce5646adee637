"""AES-NI (AESENC, AESENCLAST, AESDEC, AESDECLAST, AESIMC, AESKEYGENASSIST),
PCLMULQDQ and the SHA extensions (SHA1RNDS4, SHA1NEXTE, SHA1MSG1/2,
SHA256RNDS2, SHA256MSG1/2), with the VEX forms of AES and PCLMULQDQ (AMD
APM vol 4; Intel SDM vol 2 for the operation pseudocode; FIPS 197 and
FIPS 180-4 for the round functions).

The AES state is the 128-bit register taken as 16 bytes in column-major
order (byte i is row i mod 4, column i div 4), as the instructions define it.
"""
from .simd import binary, unary, join

# ---------------------------------------------------------------- AES tables (FIPS 197, 5.1.1)


def _gmul(a, b):
    r = 0
    while b:
        if b & 1:
            r ^= a
        a = ((a << 1) ^ 0x11B) if a & 0x80 else a << 1
        b >>= 1
    return r


def _sbox():
    inv = [0] * 256
    for a in range(1, 256):
        for b in range(1, 256):
            if _gmul(a, b) == 1:
                inv[a] = b
                break
    box = []
    for x in range(256):
        b = inv[x]
        s = b
        for k in range(1, 5):
            s ^= ((b << k) | (b >> (8 - k))) & 0xFF
        box.append(s ^ 0x63)
    return box


SBOX = _sbox()
INV_SBOX = [0] * 256
for _i, _v in enumerate(SBOX):
    INV_SBOX[_v] = _i


def _rows(s, inverse):
    out = [0] * 16
    for c in range(4):
        for r in range(4):
            src = (c + r) % 4 if not inverse else (c - r) % 4
            out[r + 4 * c] = s[r + 4 * src]
    return out


def _mix(s, m):
    out = []
    for c in range(4):
        col = s[4 * c:4 * c + 4]
        for r in range(4):
            v = 0
            for k in range(4):
                v ^= _gmul(col[k], m[(k - r) % 4])
            out.append(v)
    return out


MIX = (2, 3, 1, 1)
INV_MIX = (14, 11, 13, 9)


def _state(v):
    return list(v.to_bytes(16, "little"))


def _value(s):
    return int.from_bytes(bytes(s), "little")


def _aesenc(a, b, nb, imm, ctx):
    s = _rows(_state(a), False)
    s = _mix([SBOX[x] for x in s], MIX)
    return _value(s) ^ b


def _aesenclast(a, b, nb, imm, ctx):
    s = _rows(_state(a), False)
    return _value([SBOX[x] for x in s]) ^ b


def _aesdec(a, b, nb, imm, ctx):
    s = _rows(_state(a), True)
    s = _mix([INV_SBOX[x] for x in s], INV_MIX)
    return _value(s) ^ b


def _aesdeclast(a, b, nb, imm, ctx):
    s = _rows(_state(a), True)
    return _value([INV_SBOX[x] for x in s]) ^ b


def _aesimc(a, b, nb, imm, ctx):
    return _value(_mix(_state(b), INV_MIX))


def _sub_word(w):
    return int.from_bytes(bytes(SBOX[x] for x in w.to_bytes(4, "little")), "little")


def _keygenassist(a, b, nb, imm, ctx):
    x1, x3 = (b >> 32) & 0xFFFFFFFF, b >> 96
    s1, s3 = _sub_word(x1), _sub_word(x3)

    def rot(w):
        return ((w >> 8) | (w << 24)) & 0xFFFFFFFF
    return join([s1, rot(s1) ^ imm, s3, rot(s3) ^ imm], 4)


binary(_aesenc, ("AESENC",), ("VAESENC",))
binary(_aesenclast, ("AESENCLAST",), ("VAESENCLAST",))
binary(_aesdec, ("AESDEC",), ("VAESDEC",))
binary(_aesdeclast, ("AESDECLAST",), ("VAESDECLAST",))
unary(_aesimc, ("AESIMC",), ("VAESIMC",))
unary(_keygenassist, ("AESKEYGENASSIST",), ("VAESKEYGENASSIST",))


# ---------------------------------------------------------------- PCLMULQDQ
def clmul(a, b):
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        b >>= 1
    return r


def _pclmulqdq(a, b, nb, imm, ctx):
    x = (a >> 64) if imm & 1 else a & ((1 << 64) - 1)
    y = (b >> 64) if imm & 0x10 else b & ((1 << 64) - 1)
    return clmul(x, y)


binary(_pclmulqdq, ("PCLMULQDQ",), ("VPCLMULQDQ",))


# ---------------------------------------------------------------- SHA (FIPS 180-4)
M32 = 0xFFFFFFFF


def _rol(x, n):
    return ((x << n) | (x >> (32 - n))) & M32


def _ror(x, n):
    return ((x >> n) | (x << (32 - n))) & M32


def _d(v):
    """Dwords 3..0 of a 128-bit value (the SHA pseudocode's order)."""
    return [(v >> 96) & M32, (v >> 64) & M32, (v >> 32) & M32, v & M32]


def _q(d3, d2, d1, d0):
    return (d3 & M32) << 96 | (d2 & M32) << 64 | (d1 & M32) << 32 | (d0 & M32)


_SHA1_F = (lambda b, c, d: (b & c) ^ (~b & d & M32), lambda b, c, d: b ^ c ^ d,
           lambda b, c, d: (b & c) ^ (b & d) ^ (c & d), lambda b, c, d: b ^ c ^ d)
_SHA1_K = (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6)


def _sha1rnds4(a, b, nb, imm, ctx):
    f, k = _SHA1_F[imm & 3], _SHA1_K[imm & 3]
    A, B, C, D = _d(a)
    W = _d(b)
    E = 0
    for i in range(4):
        A, B, C, D, E = (f(B, C, D) + _rol(A, 5) + W[i] + E + k) & M32, A, _rol(B, 30), C, D
    return _q(A, B, C, D)


def _sha1nexte(a, b, nb, imm, ctx):
    return (((_rol(a >> 96, 30) + (b >> 96)) & M32) << 96) | (b & ((1 << 96) - 1))


def _sha1msg1(a, b, nb, imm, ctx):
    w0, w1, w2, w3 = _d(a)
    w4, w5 = _d(b)[:2]
    return _q(w2 ^ w0, w3 ^ w1, w4 ^ w2, w5 ^ w3)


def _sha1msg2(a, b, nb, imm, ctx):
    x3, x2, x1, x0 = _d(a)
    _, w13, w14, w15 = _d(b)
    w16 = _rol(x3 ^ w13, 1)
    w17 = _rol(x2 ^ w14, 1)
    w18 = _rol(x1 ^ w15, 1)
    w19 = _rol(x0 ^ w16, 1)
    return _q(w16, w17, w18, w19)


def _s0(x):
    return _ror(x, 7) ^ _ror(x, 18) ^ (x >> 3)


def _s1(x):
    return _ror(x, 17) ^ _ror(x, 19) ^ (x >> 10)


def _sha256rnds2(a, b, wk):
    A, B, E, F = _d(b)
    C, D, G, H = _d(a)
    for i in range(2):
        w = (wk >> (32 * i)) & M32
        ch = (E & F) ^ (~E & G & M32)
        maj = (A & B) ^ (A & C) ^ (B & C)
        t1 = (ch + (_ror(E, 6) ^ _ror(E, 11) ^ _ror(E, 25)) + w + H) & M32
        A, B, C, D, E, F, G, H = ((t1 + maj + (_ror(A, 2) ^ _ror(A, 13) ^ _ror(A, 22))) & M32, A, B, C,
                                  (t1 + D) & M32, E, F, G)
    return _q(A, B, E, F)


def _sha256msg1(a, b, nb, imm, ctx):
    w3, w2, w1, w0 = _d(a)
    w4 = b & M32
    return _q(w3 + _s0(w4), w2 + _s0(w3), w1 + _s0(w2), w0 + _s0(w1))


def _sha256msg2(a, b, nb, imm, ctx):
    x3, x2, x1, x0 = _d(a)
    w15, w14 = _d(b)[:2]
    w16 = (x0 + _s1(w14)) & M32
    w17 = (x1 + _s1(w15)) & M32
    w18 = (x2 + _s1(w16)) & M32
    w19 = (x3 + _s1(w17)) & M32
    return _q(w19, w18, w17, w16)


binary(_sha1rnds4, ("SHA1RNDS4",))
binary(_sha1nexte, ("SHA1NEXTE",))
binary(_sha1msg1, ("SHA1MSG1",))
binary(_sha1msg2, ("SHA1MSG2",))
binary(_sha256msg1, ("SHA256MSG1",))
binary(_sha256msg2, ("SHA256MSG2",))


def _sha256rnds2_handler():
    from . import handles
    from .simd import layout, check, rd, wr, legacy_align

    @handles("SHA256RNDS2")
    def sha256rnds2(cpu, ins):
        """The implicit third operand is XMM0 (WK0, WK1 in its low qword)."""
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 1, legacy_align(ins, lo, 1))
        wr(cpu, ins, lo, _sha256rnds2(rd(cpu, ins, lo, 0), b, cpu.xmm[0]))


_sha256rnds2_handler()
