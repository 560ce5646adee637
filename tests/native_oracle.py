"""The hardware oracle: run an instruction on the host CPU and on svmsim.

The test machine is an AMD EPYC family 19h (the CPU svmsim's ``epyc``
profile models).  A snippet of user-mode instructions runs natively inside a
stub that loads a state block (x87, SSE and AVX state through XRSTOR, the
GPRs, RFLAGS and a scratch memory area RSI points to) and saves it back
(XSAVE); the same snippet runs on a svmsim CPU in 64-bit mode with the same
state.  The two states must be identical.

Only snippets that cannot fault natively are run (aligned memory operands,
every x87 and SIMD exception masked); the worker is a subprocess, so a
mistake costs a failed test, not the pytest process.  Tests using the oracle
are skipped on a host that is not an AMD family 19h CPU with the features
they need.
"""
import os
import subprocess
import sys

from cpuharness import asm, make_machine, CODE_ADDR, DATA_ADDR

STATE_SIZE = 0x800
XSAVE_OFF, GPR_OFF, RFLAGS_OFF, SCRATCH_OFF = 0, 0x400, 0x480, 0x500
SCRATCH_LEN = 0x200
XSAVE_BYTES = 576 + 256            # legacy + header + AVX (YMM_Hi128) at 576

_PROLOGUE = """
push rbx; push rbp; push r12; push r13; push r14; push r15
mov r15, rdi
mov eax, 7
xor edx, edx
xrstor [r15]
push qword ptr [r15+0x480]
popfq
""" + "\n".join(f"mov {r}, [r15+{0x400 + 8 * i:#x}]" for i, r in enumerate(
    "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14".split()) if r != "rsp")
_EPILOGUE = "\n".join(f"mov [r15+{0x400 + 8 * i:#x}], {r}" for i, r in enumerate(
    "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14".split()) if r != "rsp") + """
pushfq
pop qword ptr [r15+0x480]
cld
mov eax, 7
xor edx, edx
xsave [r15]
push 0x1f80
ldmxcsr [rsp]
add rsp, 8
fninit
vzeroupper
pop r15; pop r14; pop r13; pop r12; pop rbp; pop rbx
ret
"""
_STUB = {}


def _stub_parts():
    if not _STUB:
        _STUB["pro"] = asm(_PROLOGUE)
        _STUB["epi"] = asm(_EPILOGUE)
    return _STUB["pro"], _STUB["epi"]


def host_flags():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set(), None
    vendor = "AuthenticAMD" in text
    fam = None
    flags = set()
    for line in text.splitlines():
        if line.startswith("cpu family") and fam is None:
            fam = int(line.split(":")[1])
        if line.startswith("flags"):
            flags = set(line.split(":")[1].split())
            break
    return flags, (fam if vendor else None)


def available(*features):
    """Can the host run these snippets as an AMD family 19h would?"""
    if os.environ.get("SVMSIM_NO_NATIVE"):
        return False
    flags, fam = host_flags()
    return fam == 0x19 and all(f in flags for f in features)


class State:
    """One state block: bytes laid out as the stub expects."""

    def __init__(self, data=None):
        self.b = bytearray(data if data is not None else STATE_SIZE)

    def copy(self):
        return State(self.b)

    def gpr(self, i, v=None):
        o = GPR_OFF + 8 * i
        if v is None:
            return int.from_bytes(self.b[o:o + 8], "little")
        self.b[o:o + 8] = (v & (1 << 64) - 1).to_bytes(8, "little")

    def xmm(self, i, v=None):
        o = 160 + 16 * i
        if v is None:
            return int.from_bytes(self.b[o:o + 16], "little")
        self.b[o:o + 16] = v.to_bytes(16, "little")

    def ymmh(self, i, v=None):
        o = 576 + 16 * i
        if v is None:
            return int.from_bytes(self.b[o:o + 16], "little")
        self.b[o:o + 16] = v.to_bytes(16, "little")

    def u32(self, off, v=None):
        if v is None:
            return int.from_bytes(self.b[off:off + 4], "little")
        self.b[off:off + 4] = v.to_bytes(4, "little")

    def u16(self, off, v=None):
        if v is None:
            return int.from_bytes(self.b[off:off + 2], "little")
        self.b[off:off + 2] = v.to_bytes(2, "little")

    mxcsr = property(lambda s: s.u32(24), lambda s, v: s.u32(24, v))
    fcw = property(lambda s: s.u16(0), lambda s, v: s.u16(0, v))
    fsw = property(lambda s: s.u16(2), lambda s, v: s.u16(2, v))
    ftag = property(lambda s: s.b[4], lambda s, v: s.b.__setitem__(4, v))

    def st(self, i, v=None):
        o = 32 + 16 * i
        if v is None:
            return int.from_bytes(self.b[o:o + 10], "little")
        self.b[o:o + 10] = v.to_bytes(10, "little")

    @property
    def rflags(self):
        return int.from_bytes(self.b[RFLAGS_OFF:RFLAGS_OFF + 8], "little")

    @rflags.setter
    def rflags(self, v):
        self.b[RFLAGS_OFF:RFLAGS_OFF + 8] = v.to_bytes(8, "little")

    @property
    def mem(self):
        return bytes(self.b[SCRATCH_OFF:SCRATCH_OFF + SCRATCH_LEN])

    @mem.setter
    def mem(self, data):
        self.b[SCRATCH_OFF:SCRATCH_OFF + SCRATCH_LEN] = data

    def finish(self):
        """Fill the fields XRSTOR needs (MXCSR_MASK is ignored; header)."""
        self.b[512:520] = (7).to_bytes(8, "little")      # XSTATE_BV: x87, SSE, AVX
        self.b[520:576] = bytes(56)
        return self


def new_state(mxcsr=0x1F80, fcw=0x37F):
    s = State()
    s.fcw = fcw
    s.mxcsr = mxcsr
    s.rflags = 0x202
    return s.finish()


# ---------------------------------------------------------------- the host
class NativeRunner:
    def __init__(self):
        worker = os.path.join(os.path.dirname(__file__), "native_worker.py")
        self.p = subprocess.Popen([sys.executable, worker], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def run_many(self, items):
        """items: [(snippet bytes, State)] -> [State or None (worker died)]."""
        pro, epi = _stub_parts()
        out = []
        for k in range(0, len(items), 8):          # small batches: the pipes never fill
            batch = items[k:k + 8]
            lines = "".join(f"{(pro + code + epi).hex()} {st.b.hex()}\n" for code, st in batch)
            try:
                self.p.stdin.write(lines)
                self.p.stdin.flush()
            except BrokenPipeError:
                return out + [None] * (len(items) - len(out))
            for _ in batch:
                line = self.p.stdout.readline()
                out.append(State(bytes.fromhex(line.strip())) if line else None)
        return out


_NATIVE = []


def native():
    if not _NATIVE or _NATIVE[0].p.poll() is not None:
        _NATIVE[:] = [NativeRunner()]
    return _NATIVE[0]


# ---------------------------------------------------------------- svmsim
class SimRunner:
    """A svmsim CPU in 64-bit mode with SSE, AVX and #XM enabled."""

    def __init__(self):
        from svmsim.cpu import fpu_state as fs
        self.fs = fs
        self.m = make_machine("long64", mem_size="8M")
        cpu = self.cpu = self.m.cpus[0]
        cpu.cr4 |= (1 << 9) | (1 << 10) | (1 << 18)     # OSFXSR, OSXMMEXCPT, OSXSAVE
        cpu.xcr0 = 7
        cpu.update_mode()
        # The VEX forms are compared with the host even while CPUID does not
        # report AVX yet (not every AVX form exists): enable them here only.
        from svmsim.cpu import cpuid
        self.m._cpuid_features = cpuid.features(self.m) | {"avx", "avx2"}

    def run(self, code, st):
        from svmsim.cpu.exceptions import CpuException
        m, cpu, fs = self.m, self.cpu, self.fs
        m.bus.write_bytes(CODE_ADDR, code)
        m.bus.write_bytes(DATA_ADDR, st.mem)
        fs.load_legacy(cpu, bytes(st.b[:512]), True)
        if hasattr(cpu, "ymmh"):
            for i in range(16):
                cpu.ymmh[i] = st.ymmh(i)
        for i in range(16):
            cpu.regs[i] = st.gpr(i)
        cpu.regs[6] = DATA_ADDR
        cpu.set_rflags(st.rflags)
        cpu.rip = CODE_ADDR
        end = CODE_ADDR + len(code)
        exc = None
        eng = m.engine
        while cpu.rip != end:
            blk = eng.translate(cpu, cpu.rip, ("native", cpu.rip, cpu.mode_key), max_len=1)
            ins = blk.insns[0]
            try:
                ins.fn(cpu, ins)
            except CpuException as e:
                exc = e
                break
            if not ins.ends_block:
                cpu.rip = ins.next_ip
        out = st.copy()
        for rel, data in fs.legacy_image(cpu, True).items():
            out.b[rel:rel + len(data)] = data
        if hasattr(cpu, "ymmh"):
            for i in range(16):
                out.ymmh(i, cpu.ymmh[i])
        for i in range(16):
            if i != 6:
                out.gpr(i, cpu.regs[i])
        out.rflags = cpu.get_rflags()
        out.mem = m.bus.read_bytes(DATA_ADDR, SCRATCH_LEN)
        return out, exc


_SIM = []


def sim():
    if not _SIM:
        _SIM.append(SimRunner())
    return _SIM[0]


# ---------------------------------------------------------------- comparison
ARITH_DF = 0x8D5 | 0x400


def diff(a, b, x87=True):
    """Differences between two final states (svmsim a, host b) as text."""
    out = []
    for i in range(16):
        if a.xmm(i) != b.xmm(i):
            out.append(f"xmm{i}: svmsim={a.xmm(i):032x} host={b.xmm(i):032x}")
        if a.ymmh(i) != b.ymmh(i):
            out.append(f"ymm{i}[255:128]: svmsim={a.ymmh(i):032x} host={b.ymmh(i):032x}")
    if a.mxcsr != b.mxcsr:
        out.append(f"mxcsr: svmsim={a.mxcsr:#x} host={b.mxcsr:#x}")
    if x87:
        if a.fcw != b.fcw:
            out.append(f"fcw: svmsim={a.fcw:#x} host={b.fcw:#x}")
        if a.fsw != b.fsw:
            out.append(f"fsw: svmsim={a.fsw:#x} host={b.fsw:#x}")
        if a.ftag != b.ftag:
            out.append(f"ftw(abridged): svmsim={a.ftag:#x} host={b.ftag:#x}")
        for i in range(8):
            if a.st(i) != b.st(i):
                out.append(f"st{i}: svmsim={a.st(i):020x} host={b.st(i):020x}")
    names = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()
    for i in range(15):
        if i in (4, 6):
            continue
        if a.gpr(i) != b.gpr(i):
            out.append(f"{names[i]}: svmsim={a.gpr(i):#x} host={b.gpr(i):#x}")
    if (a.rflags ^ b.rflags) & ARITH_DF:
        out.append(f"rflags: svmsim={a.rflags & ARITH_DF:#x} host={b.rflags & ARITH_DF:#x}")
    if a.mem != b.mem:
        bad = [i for i in range(SCRATCH_LEN) if a.mem[i] != b.mem[i]]
        out.append(f"memory at +{bad[0]:#x}..+{bad[-1]:#x}: svmsim={a.mem[bad[0]:bad[0] + 16].hex()} "
                   f"host={b.mem[bad[0]:bad[0] + 16].hex()}")
    return out
