"""SSE..SSE4.2 (legacy encodings) and MMX against Unicorn, the oracle for
hosts that are not an AMD family 19h (where test_simd_native.py compares
with the hardware itself).

Unicorn is QEMU 5: it has no AVX, applies the x87 NaN rule to SSE, does not
report denormal operands and reads MXCSR back as 0.  So this comparison
uses finite normal operands only, compares the vector and general
registers and memory (not MXCSR), and leaves NaNs, denormals, flags and
the VEX forms to the hardware oracle.  The forms are those of
test_simd_native.py that Unicorn implements.
"""
import random
import re
import zlib

import pytest

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as U  # noqa: E402

import native_oracle as no  # noqa: E402
import test_simd_native as tsn  # noqa: E402

FAST_N, SLOW_N = 2, 25
CODE, SCRATCH = 0x100000, 0x200000
XMM = [getattr(U, f"UC_X86_REG_XMM{i}") for i in range(16)]
GPR = [U.UC_X86_REG_RAX, U.UC_X86_REG_RCX, U.UC_X86_REG_RDX, U.UC_X86_REG_RBX, U.UC_X86_REG_RSP,
       U.UC_X86_REG_RBP, U.UC_X86_REG_RSI, U.UC_X86_REG_RDI] + \
    [getattr(U, f"UC_X86_REG_R{i}") for i in range(8, 16)]

# forms Unicorn (QEMU 5) lacks or computes differently on purpose:
# SSE4a, SHA, F16C, RCP/RSQRT (exact there, estimates on hardware), the
# string compares' flags, CVT*2PI (MMX register conversions), ROUNDxx with
# the precision-suppress bit, MOVNTSS/SD
_SKIP = ("v", "extrq", "insertq", "movnts", "sha", "rcp", "rsqrt", "pcmp", "cvtp", "cvttp", "mulx",
         "bzhi", "pdep", "pext", "rorx", "shlx", "shrx", "sarx", "adcx", "adox", "crc32", "aes",
         "pclmul", "dpp", "round", "haddp", "hsubp", "addsubp", "min", "max", "emms")
FORMS = [(t, k) for t, k in tsn.FORMS
         if not t.startswith(_SKIP) and not re.search(r"\bmm\d", t)]    # MMX state lives in the x87


def normal_lane(rng, w):
    if w == 4:
        return rng.getrandbits(1) << 31 | rng.randrange(110, 145) << 23 | rng.getrandbits(23)
    return rng.getrandbits(1) << 63 | rng.randrange(1000, 1050) << 52 | rng.getrandbits(52)


def make_state(rng, kind):
    s = tsn.make_state(rng, "i" if kind in ("ps", "pd", "ss", "sd") else kind)
    if kind in ("ps", "pd", "ss", "sd"):
        w = 4 if kind in ("ps", "ss") else 8
        for i in range(16):
            s.xmm(i, sum(normal_lane(rng, w) << (8 * w * k) for k in range(16 // w)))
        s.mem = b"".join(normal_lane(rng, w).to_bytes(w, "little") for _ in range(no.SCRATCH_LEN // w))
    s.mxcsr = 0x1F80 | rng.randrange(4) << 13
    return s.finish()


def run_unicorn(code, st):
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_cpu_model(U.UC_CPU_X86_EPYC)
    uc.mem_map(CODE, 0x10000)
    uc.mem_map(SCRATCH, 0x10000)
    uc.mem_write(CODE, code)
    uc.mem_write(SCRATCH, st.mem)
    for i in range(16):
        uc.reg_write(XMM[i], st.xmm(i))
        if i not in (4, 6):
            uc.reg_write(GPR[i], st.gpr(i))
    uc.reg_write(U.UC_X86_REG_RSI, SCRATCH)
    uc.reg_write(U.UC_X86_REG_RSP, SCRATCH + 0x8000)
    uc.reg_write(U.UC_X86_REG_MXCSR, st.mxcsr)
    uc.reg_write(U.UC_X86_REG_EFLAGS, st.rflags)
    uc.emu_start(CODE, CODE + len(code))
    out = st.copy()
    for i in range(16):
        out.xmm(i, uc.reg_read(XMM[i]))
        if i not in (4, 6):
            out.gpr(i, uc.reg_read(GPR[i]))
    out.rflags = uc.reg_read(U.UC_X86_REG_EFLAGS)
    out.mem = bytes(uc.mem_read(SCRATCH, no.SCRATCH_LEN))
    return out


def check(text, kind, n, seed=0):
    code = tsn._codes()[text]
    rng = random.Random(zlib.crc32(text.encode()) ^ n ^ seed ^ 0x5EED)
    fails = []
    for _ in range(n):
        s = make_state(rng, kind)
        got, exc = no.sim().run(code, s)
        assert exc is None, f"{text}: svmsim raised {exc}"
        ref = run_unicorn(code, s)
        d = [x for x in no.diff(got, ref, x87=False) if not x.startswith(("mxcsr", "ymm"))]
        if d:
            fails.append(f"{text} (mxcsr={s.mxcsr:#x})\n    " + "\n    ".join(d))
    assert not fails, f"{len(fails)}/{n} differ:\n" + "\n".join(fails[:3])


@pytest.mark.parametrize("text,kind", FORMS, ids=[t for t, _ in FORMS])
def test_form_fast(text, kind):
    check(text, kind, FAST_N)


@pytest.mark.slow
@pytest.mark.parametrize("text,kind", FORMS, ids=[t for t, _ in FORMS])
def test_form_sweep(text, kind):
    check(text, kind, SLOW_N, seed=1)
