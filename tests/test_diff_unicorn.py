"""Differential tests: svmsim's integer instructions against Unicorn (QEMU TCG).

Every instruction form in FORMS is run with seeded random registers, random
RFLAGS arithmetic bits (and DF) and a random scratch memory area, once on a
svmsim CPU (64-bit long mode or 32-bit protected mode, built by
tests/cpuharness.py) and once on Unicorn with the EPYC CPU model.  All GPRs,
RIP, the arithmetic flags, DF and the scratch memory must agree; a fault
must be the same vector on both.  Undefined flags are compared too: svmsim
follows QEMU for them on purpose (see the module docstrings of the ops).

Known, deliberate differences (each masked only where it applies):
* BLSI: QEMU 5 (Unicorn 2) sets CF for a zero source; the APM sets CF for a
  NON-zero source.  svmsim follows the APM; CF is not compared.
* BSF/BSR r32 with a zero source in 64-bit mode: QEMU zero-extends the
  unchanged destination; the APM leaves it unchanged; only the low 32 bits
  of the destination are compared.
* BEXTR with a length >= operand size: QEMU clamps the mask to size-1 bits;
  the generator keeps lengths below the operand size.  QEMU 5's 32-bit
  BEXTR also shifts in the upper half of a 64-bit source register; the
  generator keeps that half zero for 32-bit forms.
* CMPXCHG r/m32 in 64-bit mode when the comparison succeeds: QEMU 5 writes
  (zero-extends) RAX; the APM writes the accumulator only on failure; only
  EAX is compared.

The fast subset (a few cases per form) always runs; ``-m slow`` runs the
full sweep and random instruction sequences.
"""
import random
import zlib

import iced_x86
import pytest

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as U  # noqa: E402

from cpuharness import make_machine, asm  # noqa: E402
from svmsim.cpu.exceptions import CpuException, UD  # noqa: E402

ARITH = 0x8D5
DF = 0x400
FLAG_NAMES = {1: "CF", 4: "PF", 0x10: "AF", 0x40: "ZF", 0x80: "SF", 0x400: "DF", 0x800: "OF"}
SCRATCH = 0x8000             # below 64 KiB: 16-bit addressing reaches it
SCRATCH_LEN = 0x400
BASE = SCRATCH + 0x200          # rbx/ebx: base of every memory operand
CODE = 0x100000
SLOT = 0x100                    # code bytes per case (sequences need room)
FAST_N, SLOW_N = 4, 30

UC_REGS64 = [U.UC_X86_REG_RAX, U.UC_X86_REG_RCX, U.UC_X86_REG_RDX, U.UC_X86_REG_RBX,
             U.UC_X86_REG_RSP, U.UC_X86_REG_RBP, U.UC_X86_REG_RSI, U.UC_X86_REG_RDI,
             U.UC_X86_REG_R8, U.UC_X86_REG_R9, U.UC_X86_REG_R10, U.UC_X86_REG_R11,
             U.UC_X86_REG_R12, U.UC_X86_REG_R13, U.UC_X86_REG_R14, U.UC_X86_REG_R15]
UC_REGS32 = [U.UC_X86_REG_EAX, U.UC_X86_REG_ECX, U.UC_X86_REG_EDX, U.UC_X86_REG_EBX,
             U.UC_X86_REG_ESP, U.UC_X86_REG_EBP, U.UC_X86_REG_ESI, U.UC_X86_REG_EDI]
NAMES64 = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()

# ---------------------------------------------------------------- register pools
_N64 = "rax rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15".split()
_N32 = "eax ecx edx esi edi ebp r8d r9d r10d r11d r12d r13d r14d r15d".split()
_N16 = "ax cx dx si di bp r8w r9w r10w r11w r12w r13w r14w r15w".split()
_N8 = "al cl dl sil dil bpl r8b r9b r10b r11b r12b r13b r14b r15b".split()
_N8H = "al cl dl ah ch dh".split()
POOLS = {64: {8: _N64, 4: _N32, 2: _N16, 1: _N8},
         32: {4: _N32[:6], 2: _N16[:6], 1: _N8H}}
PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
# register name -> index in cpu.regs
REG_INDEX = {}
for _pool in (_N64, _N32, _N16, _N8):
    for _i, _n in enumerate(_pool):
        REG_INDEX[_n] = ([0, 1, 2, 6, 7, 5] + list(range(8, 16)))[_i]
REG_INDEX.update({"ah": 0, "ch": 1, "dh": 2})

CCS = "o no b ae e ne be a s ns p np l ge le g".split()


# ---------------------------------------------------------------- forms
class Form:
    """One instruction form: a template with {r0} {r1} {r2} (registers of the
    form's size), {r8}/{r16}/{r32} (fixed-size registers), {m} (memory of the
    form's size), {m8}.. and {imm} (immediate)."""

    def __init__(self, text, size, bits=64, vals=None, flag_mask=0, imm="any",
                 fix=None, seq=True, tag=None):
        self.text, self.size, self.bits = text, size, bits
        self.vals = vals or {}          # placeholder -> value generator name
        self.flag_mask = flag_mask      # flags not compared (known differences)
        self.imm = imm
        self.fix = fix                  # fix(case, rng): adjust registers/memory
        self.seq = seq                  # usable in random sequences
        self.id = tag or f"{bits}:{text.format(**_label(size))}"


def _label(size):
    b = size * 8
    return {"r0": f"r{b}", "r1": f"r{b}", "r2": f"r{b}", "m": f"m{b}", "imm": "imm",
            "r8": "r8", "r16": "r16", "r32": "r32", "r64": "r64",
            "m8": "m8", "m16": "m16", "m32": "m32", "x0": "base", "x1": "index"}


def _forms():
    F = []

    def add(text, sizes, bits=(64, 32), **kw):
        for b in bits:
            for s in sizes:
                if s == 8 and b == 32:
                    continue
                F.append(Form(text, s, b, **kw))

    ALL, WIDE = (1, 2, 4, 8), (2, 4, 8)
    for op in "add adc sub sbb cmp and or xor".split():
        for t in ("{r0}, {r1}", "{m}, {r1}", "{r0}, {m}", "{r0}, {imm}", "{m}, {imm}"):
            add(f"{op} {t}", ALL)
    for t in ("{r0}, {r1}", "{m}, {r1}", "{r0}, {imm}", "{m}, {imm}"):
        add(f"test {t}", ALL)
    for op in "inc dec neg not mul".split():
        add(f"{op} {{r0}}", ALL)
        add(f"{op} {{m}}", ALL)
    for op in ("div", "idiv"):
        add(f"{op} {{r0}}", ALL, fix=_fix_div, seq=False)
        add(f"{op} {{m}}", ALL, fix=_fix_div, seq=False)
    add("imul {r0}", ALL)
    add("imul {m}", ALL)
    add("imul {r0}, {r1}", WIDE)
    add("imul {r0}, {m}", WIDE)
    add("imul {r0}, {r1}, {imm}", WIDE)
    add("imul {r0}, {m}, {imm}", WIDE)
    for op in "shl sal shr sar rol ror rcl rcr".split():
        for t in ("{r0}, cl", "{r0}, {imm}", "{r0}, 1", "{m}, cl", "{m}, {imm}"):
            add(f"{op} {t}", ALL, vals={"rcx": "count"}, imm="count")
    for op in ("shld", "shrd"):
        for t in ("{r0}, {r1}, cl", "{r0}, {r1}, {imm}", "{m}, {r1}, cl"):
            add(f"{op} {t}", WIDE, vals={"rcx": "count"}, imm="count")
    for op in "bt bts btr btc".split():
        add(f"{op} {{r0}}, {{r1}}", WIDE, seq=False)
        add(f"{op} {{r0}}, {{imm}}", WIDE, imm="count", seq=False)
        add(f"{op} {{m}}, {{imm}}", WIDE, imm="count", seq=False)
        add(f"{op} {{m}}, {{r1}}", WIDE, vals={"r1": "bitoff"}, seq=False)
    for op in ("bsf", "bsr"):
        add(f"{op} {{r0}}, {{r1}}", WIDE, vals={"r1": "sparse"}, fix=_fix_bsf, seq=False)
        add(f"{op} {{r0}}, {{m}}", WIDE, fix=_fix_bsf, seq=False)
    for op in ("popcnt", "lzcnt", "tzcnt"):
        add(f"{op} {{r0}}, {{r1}}", WIDE, vals={"r1": "sparse"})
        add(f"{op} {{r0}}, {{m}}", WIDE)
    add("andn {r0}, {r1}, {r2}", (4, 8))
    add("andn {r0}, {r1}, {m}", (4, 8))
    add("bextr {r0}, {r1}, {r2}", (4, 8), vals={"r2": "bextr"}, fix=_fix_bextr)
    add("bextr {r0}, {m}, {r2}", (4, 8), vals={"r2": "bextr"})
    for op in ("blsi", "blsmsk", "blsr"):
        kw = {"flag_mask": 1, "seq": False} if op == "blsi" else {}
        add(f"{op} {{r0}}, {{r1}}", (4, 8), vals={"r1": "sparse"}, **kw)
        add(f"{op} {{r0}}, {{m}}", (4, 8), **kw)
    add("bswap {r0}", (4, 8))
    for op in ("xadd", "cmpxchg", "xchg"):
        add(f"{op} {{r0}}, {{r1}}", ALL, fix=_fix_cmpxchg if op == "cmpxchg" else None)
        add(f"{op} {{m}}, {{r1}}", ALL, fix=_fix_cmpxchg if op == "cmpxchg" else None)
    for cc in CCS:
        add(f"cmov{cc} {{r0}}, {{r1}}", WIDE)
        add(f"cmov{cc} {{r0}}, {{m}}", WIDE)
        add(f"set{cc} {{r8}}", (1,))
        add(f"set{cc} byte ptr {{m8}}", (1,))
    for op in ("movsx", "movzx"):
        add(f"{op} {{r0}}, {{r8}}", WIDE)
        add(f"{op} {{r0}}, byte ptr {{m8}}", WIDE)
        add(f"{op} {{r0}}, {{r16}}", (4, 8))
        add(f"{op} {{r0}}, word ptr {{m16}}", (4, 8))
    add("movsxd {r0}, {r32}", (8,), bits=(64,))
    add("movsxd {r0}, dword ptr {m32}", (8,), bits=(64,))
    add("lea {r0}, [{x0} + {x1}*4 + {imm}]", WIDE, imm="disp")
    add("lea {r0}, [{x0} + {x1}*8 - 0x77]", WIDE)
    for op in "cbw cwde cdqe cwd cdq cqo lahf sahf clc stc cmc".split():
        F.append(Form(op, 1, 64))
        if op not in ("cdqe", "cqo"):
            F.append(Form(op, 1, 32))
    for op in "daa das aaa aas".split():
        F.append(Form(op, 1, 32, vals={"rax": "bcd"}))
    F.append(Form("aam {imm}", 1, 32, imm="base", vals={"rax": "bcd"}))
    F.append(Form("aad {imm}", 1, 32, imm="base", vals={"rax": "bcd"}))
    F.append(Form(".byte 0xd6", 1, 32, tag="32:salc"))
    # string instructions
    sv = {"rsi": "strptr", "rdi": "strptr", "rcx": "small", "df": True}
    for b in (64, 32):
        for sz, suf in ((1, "b"), (2, "w"), (4, "d"), (8, "q")):
            if sz == 8 and b == 32:
                continue
            for pre in ("", "rep ", "addr32 rep " if b == 64 else "addr16 rep "):
                for op in ("movs", "stos", "lods"):
                    F.append(Form(f"{pre}{op}{suf}", sz, b, vals=sv, seq=False))
                for op in ("cmps", "scas"):
                    for p2 in (pre, pre.replace("rep", "repne")):
                        F.append(Form(f"{p2}{op}{suf}", sz, b, vals=sv, seq=False,
                                      fix=_fix_strcmp))
    seen, out = set(), []
    for f in F:
        if f.id not in seen:
            seen.add(f.id)
            out.append(f)
    return out


# ---------------------------------------------------------------- case generation
SPECIAL = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
           0xFFFFFFFF, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def _value(rng, kind, bits):
    m = (1 << bits) - 1
    if kind == "count":
        low = rng.choice([0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 18, 31, 32, 33, 63, 64, 65,
                          rng.randrange(256)])
        return (rng.getrandbits(bits) & ~0xFF | low) & m
    if kind == "bitoff":
        return rng.randrange(-600, 600) & m
    if kind == "sparse":
        r = rng.random()
        if r < 0.25:
            return 0
        if r < 0.6:
            return (1 << rng.randrange(64)) & m
        return rng.getrandbits(64) & rng.getrandbits(64) & m
    if kind == "bextr":
        return (rng.getrandbits(bits) & ~0xFFFF | rng.randrange(32) << 8 | rng.randrange(70)) & m
    if kind == "strptr":
        return SCRATCH + 0x100 + rng.randrange(0x200)
    if kind == "small":
        return rng.randrange(20)
    if kind == "bcd":
        return rng.getrandbits(bits) & ~0xFFFF | rng.getrandbits(16)
    if rng.random() < 0.3:
        return rng.choice(SPECIAL) & m
    return rng.getrandbits(bits)


def _imm(rng, kind, size):
    if kind == "count":
        return rng.choice([0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, rng.randrange(256)])
    if kind == "disp":
        return rng.randrange(-0x1000, 0x1000)
    if kind == "base":
        return rng.choice([10, 16, 1, 0xFF, rng.randrange(1, 256)])
    if size == 1:
        return rng.randrange(256)
    if size == 2:
        return rng.choice([rng.randrange(-128, 128), rng.randrange(0x10000)])
    return rng.choice([rng.randrange(-128, 128), rng.randrange(-(1 << 31), 1 << 31)])


class Case:
    __slots__ = ("form", "text", "regs", "rflags", "mem", "names", "code", "maddr")


def make_case(form, rng):
    bits = form.bits
    size = form.size
    c = Case()
    c.form = form
    c.regs = [_value(rng, "any", bits) for _ in range(16 if bits == 64 else 8)]
    pool = dict(POOLS[bits])
    # AH..DH cannot share an instruction with a REX prefix: when the legacy
    # byte registers are picked, every register comes from the non-REX set.
    if bits == 32 or (size != 8 and "{r64}" not in form.text and rng.random() < 0.3):
        pool = {k: v[:6] for k, v in pool.items()}
        pool[1] = _N8H
    sub = {}
    for i in range(3):
        sub[f"r{i}"] = rng.choice(pool[size])
    sub["r8"] = rng.choice(pool[1])
    sub["r16"] = rng.choice(pool[2])
    sub["r32"] = rng.choice(pool[4])
    disp = rng.randrange(-0x40, 0x40)
    base = "rbx" if bits == 64 else "ebx"
    sign = "+" if disp >= 0 else "-"
    mem = f"[{base}{sign}{abs(disp):#x}]"
    c.maddr = BASE + disp
    sub["m"] = f"{PTR[size]} ptr {mem}"
    sub["m8"] = sub["m16"] = sub["m32"] = mem
    xs = POOLS[bits][8 if bits == 64 else 4]
    sub["x0"], sub["x1"] = rng.choice(xs), rng.choice(xs)
    if "{x0}" in form.text and rng.random() < 0.3 and bits == 64:
        sub["x0"], sub["x1"] = rng.choice(_N32), rng.choice(_N32)    # 32-bit addressing
    sub["imm"] = _imm(rng, form.imm, size)
    c.text = form.text.format(**sub)
    c.names = sub
    for where, kind in form.vals.items():
        if where == "df":
            continue
        name = sub.get(where, where)
        c.regs[REG_INDEX[name]] = _value(rng, kind, bits)
    if form.vals.get("df"):
        # upper register bits that the address size must ignore
        wide = 32 if "addr32" in form.text else 16 if "addr16" in form.text else 0
        if wide:
            for i in (1, 6, 7):
                c.regs[i] |= rng.getrandbits(bits - wide) << wide
    c.regs[3] = BASE
    c.regs[4] = SCRATCH + SCRATCH_LEN - 0x10
    c.rflags = 2 | (rng.getrandbits(16) & ARITH)
    if form.vals.get("df") and rng.random() < 0.5:
        c.rflags |= DF
    c.mem = bytearray(rng.getrandbits(8) for _ in range(SCRATCH_LEN))
    if form.fix:
        form.fix(c, rng)
    return c


def _reg_value(c, name):
    i = REG_INDEX[name]
    v = c.regs[i]
    if name in ("ah", "ch", "dh"):
        return (v >> 8) & 0xFF
    return v


def _fix_div(c, rng):
    """Mostly divisions whose quotient fits (rDX / AH = 0 or the sign of rAX)."""
    r = rng.random()
    if r < 0.4:
        c.regs[2] = 0
        c.regs[0] &= ~0xFF00 if c.form.size == 1 else (1 << 64) - 1
    elif r < 0.8:
        neg = c.regs[0] >> (c.form.size * 8 - 1) & 1
        c.regs[2] = (1 << 64) - 1 if neg else 0
        if c.form.size == 1:
            c.regs[0] = c.regs[0] & ~0xFF00 | ((0xFF00 if c.regs[0] & 0x80 else 0))


def _fix_bsf(c, rng):
    if "{m}" in c.form.text and rng.random() < 0.3:
        c.mem[c.maddr - SCRATCH:c.maddr - SCRATCH + c.form.size] = bytes(c.form.size)


def _fix_bextr(c, rng):
    """32-bit BEXTR: keep the source register's upper half zero (QEMU 5 bug)."""
    if c.form.size == 4:
        c.regs[REG_INDEX[c.names["r1"]]] &= 0xFFFFFFFF


def _fix_cmpxchg(c, rng):
    """Half the time make the accumulator equal the destination."""
    if rng.random() < 0.5:
        size = c.form.size
        if "{m}" in c.form.text:
            o = c.maddr - SCRATCH
            v = int.from_bytes(c.mem[o:o + size], "little")
        else:
            v = _reg_value(c, c.names["r0"])
        mask = (1 << (size * 8)) - 1
        c.regs[0] = c.regs[0] & ~mask | (v & mask)


def _fix_strcmp(c, rng):
    """Make the compared strings agree for a while so REPE/REPNE run."""
    if rng.random() < 0.6:
        si, di = c.regs[6] & 0xFFFF_FFFF, c.regs[7] & 0xFFFF_FFFF
        n = rng.randrange(0, 24)
        step = -1 if c.rflags & DF else 1
        fill = rng.getrandbits(8)
        for k in range(n):
            for p in (si, di):
                o = p - SCRATCH + k * step
                if 0 <= o < SCRATCH_LEN:
                    c.mem[o] = fill if "scas" in c.form.text else (k * 37) & 0xFF
        if "scas" in c.form.text:
            c.regs[0] = (c.regs[0] & ~0xFF) | fill | (fill << 8) | (fill << 16) | (fill << 24)
            c.regs[0] |= (fill * 0x0101010101010101) if c.form.bits == 64 else 0
            c.regs[0] &= (1 << c.form.bits) - 1


# ---------------------------------------------------------------- assembly (one `as` run per mode)
_CODE_CACHE = {}


def assemble_all(lines, bits):
    """Assemble many snippets in one `as` run; returns the bytes of each."""
    key = (bits, tuple(lines))
    if key in _CODE_CACHE:
        return _CODE_CACHE[key]
    src = "".join(f"{line}\n" for line in lines)
    blob = asm(src, bits)
    out = _split(blob, lines, bits)
    _CODE_CACHE[key] = out
    return out


def _split(blob, lines, bits):
    """Split the assembled text back into per-line byte strings by decoding,
    using the number of instructions each line holds."""
    dec = iced_x86.Decoder(bits, blob)
    insns = list(dec)
    out, k = [], 0
    pos = 0
    for line in lines:
        n = line.count("\n") + 1
        start = pos
        for _ in range(n):
            pos += insns[k].len
            k += 1
        out.append(blob[start:pos])
    assert k == len(insns), "assembler output does not split into the expected instructions"
    return out


# ---------------------------------------------------------------- the two machines
class SimRunner:
    """svmsim: one machine per mode, reused; runs one instruction at a time so
    a fault is reported without being delivered."""

    def __init__(self, bits):
        self.bits = bits
        self.m = make_machine("long64" if bits == 64 else "prot32", mem_size="8M")
        self.cpu = self.m.cpus[0]

    def run(self, addr, code, c):
        m, cpu = self.m, self.cpu
        m.bus.write_bytes(addr, code)
        m.bus.write_bytes(SCRATCH, bytes(c.mem))
        for i, v in enumerate(c.regs):
            cpu.regs[i] = v
        cpu.set_rflags(c.rflags)
        cpu.rip = addr
        end = addr + len(code)
        eng = m.engine
        exc = None
        for _ in range(10000):
            if cpu.rip == end:
                break
            lin = cpu.rip
            blk = eng.translate(cpu, lin, ("diff", lin, cpu.mode_key), max_len=1)
            ins = blk.insns[0]
            try:
                ins.fn(cpu, ins)
            except CpuException as e:
                exc = e.vector
                break
            if not ins.ends_block:
                cpu.rip = ins.next_ip
        n = 16 if self.bits == 64 else 8
        mask = (1 << self.bits) - 1
        regs = [cpu.regs[i] & mask for i in range(n)]
        return regs, cpu.rip, cpu.get_rflags(), m.bus.read_bytes(SCRATCH, SCRATCH_LEN), exc


class UcRunner:
    def __init__(self, bits):
        self.bits = bits
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64 if bits == 64 else unicorn.UC_MODE_32)
        try:
            self.uc.ctl_set_cpu_model(U.UC_CPU_X86_EPYC)
        except (AttributeError, unicorn.UcError):
            pass
        self.uc.mem_map(CODE, 0x100000)
        self.uc.mem_map(0, 0x10000)
        self.intr = []
        self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_intr)
        self.regs = UC_REGS64 if bits == 64 else UC_REGS32

    def _on_intr(self, uc, intno, user):
        self.intr.append(intno)
        uc.emu_stop()

    def run(self, addr, code, c):
        uc = self.uc
        uc.mem_write(addr, code)
        uc.mem_write(SCRATCH, bytes(c.mem))
        for r, v in zip(self.regs, c.regs):
            uc.reg_write(r, v)
        uc.reg_write(U.UC_X86_REG_EFLAGS, c.rflags)
        self.intr.clear()
        exc = None
        try:
            uc.emu_start(addr, addr + len(code), count=20000)
        except unicorn.UcError as e:
            exc = UD if e.errno == unicorn.UC_ERR_INSN_INVALID else f"unicorn error {e}"
        if self.intr:
            exc = self.intr[0]
        regs = [uc.reg_read(r) for r in self.regs]
        rip = uc.reg_read(U.UC_X86_REG_RIP if self.bits == 64 else U.UC_X86_REG_EIP)
        return regs, rip, uc.reg_read(U.UC_X86_REG_EFLAGS), bytes(uc.mem_read(SCRATCH, SCRATCH_LEN)), exc


_RUNNERS = {}


def runners(bits):
    if bits not in _RUNNERS:
        _RUNNERS[bits] = [SimRunner(bits), UcRunner(bits), 0]
    return _RUNNERS[bits]


def _next_addr(bits):
    r = runners(bits)
    addr = CODE + (r[2] % (0x100000 // SLOT)) * SLOT
    r[2] += 1
    if r[2] % (0x100000 // SLOT) == 0:      # about to reuse code: a fresh Unicorn
        r[1] = UcRunner(bits)
    return addr


# ---------------------------------------------------------------- comparison
def _flag_names(f):
    return " ".join(n for b, n in FLAG_NAMES.items() if f & b) or "-"


def compare(text, bits, code, c, flag_mask=0, reg_masks=None):
    """Run one case on both; return a description of the differences or None."""
    sim, uc, _ = runners(bits)
    addr = _next_addr(bits)
    s = sim.run(addr, code, c)
    u = uc.run(addr, code, c)
    if u[4] is not None:
        # QEMU remembers the exception it stopped in (old_exception), so the
        # next #DE would become #DF: continue on a fresh Unicorn.
        runners(bits)[1] = UcRunner(bits)
    names = NAMES64 if bits == 64 else [n.replace("r", "e", 1) for n in NAMES64[:8]]
    diffs = []
    if s[4] != u[4]:
        diffs.append(f"exception: svmsim={s[4]} unicorn={u[4]}")
    elif s[4] is None:
        if s[1] != u[1]:
            diffs.append(f"rip: svmsim={s[1]:#x} unicorn={u[1]:#x}")
        cmp_mask = (ARITH | DF) & ~flag_mask
        if (s[2] ^ u[2]) & cmp_mask:
            d = (s[2] ^ u[2]) & cmp_mask
            diffs.append(f"rflags: svmsim={s[2] & cmp_mask:#x} ({_flag_names(s[2] & cmp_mask)}) "
                         f"unicorn={u[2] & cmp_mask:#x} ({_flag_names(u[2] & cmp_mask)}); differ in {_flag_names(d)}")
        if s[3] != u[3]:
            bad = [i for i in range(SCRATCH_LEN) if s[3][i] != u[3][i]]
            diffs.append(f"memory differs at {SCRATCH + bad[0]:#x}..{SCRATCH + bad[-1]:#x}: "
                         f"svmsim={s[3][bad[0]:bad[0] + 8].hex()} unicorn={u[3][bad[0]:bad[0] + 8].hex()}")
    if s[4] is None or s[4] == u[4]:
        for i, (a, b) in enumerate(zip(s[0], u[0])):
            m = (reg_masks or {}).get(i, (1 << 64) - 1)
            if (a ^ b) & m:
                diffs.append(f"{names[i]}: svmsim={a:#x} unicorn={b:#x}")
    if not diffs:
        return None
    init = " ".join(f"{names[i]}={v:#x}" for i, v in enumerate(c.regs))
    return (f"[{bits}-bit] {text!r} ({code.hex(' ')})\n    initial: {init} "
            f"rflags={c.rflags:#x} ({_flag_names(c.rflags)})\n    " + "\n    ".join(diffs))


def _reg_masks(c):
    """Known differences in destination registers (see the module docstring)."""
    t = c.form.text
    if c.form.bits == 64 and (t.startswith("bsf") or t.startswith("bsr")) and c.form.size == 4:
        return {REG_INDEX[c.names["r0"]]: 0xFFFFFFFF}
    if c.form.bits == 64 and t.startswith("cmpxchg") and c.form.size == 4:
        return {0: 0xFFFFFFFF}
    return None


# ---------------------------------------------------------------- building the cases
FORMS = _forms()
_CASES = {}


def cases_for(n):
    """{form id: [(case, code)]} with ``n`` seeded cases per form."""
    if n in _CASES:
        return _CASES[n]
    out = {}
    for bits in (64, 32):
        cs = []
        for f in FORMS:
            if f.bits != bits:
                continue
            rng = random.Random(zlib.crc32(f.id.encode()) ^ n)
            for _ in range(n):
                cs.append(make_case(f, rng))
        codes = assemble_all([c.text for c in cs], bits)
        for c, code in zip(cs, codes):
            out.setdefault(c.form.id, []).append((c, code))
    _CASES[n] = out
    return out


def check_form(form, n):
    failures = []
    for c, code in cases_for(n)[form.id]:
        d = compare(c.text, form.bits, code, c, form.flag_mask, _reg_masks(c))
        if d:
            failures.append(d)
    assert not failures, f"{len(failures)}/{n} cases differ for {form.id}:\n" + "\n".join(failures[:4])


@pytest.mark.parametrize("form", FORMS, ids=[f.id for f in FORMS])
def test_form_fast(form):
    check_form(form, FAST_N)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS, ids=[f.id for f in FORMS])
def test_form_sweep(form):
    check_form(form, SLOW_N)


# ---------------------------------------------------------------- random sequences
def _sequences(bits, count, seed):
    rng = random.Random(seed)
    pool = [f for f in FORMS if f.bits == bits and f.seq and not f.text.startswith(".byte")]
    seqs = []
    for _ in range(count):
        forms = [rng.choice(pool) for _ in range(rng.randrange(5, 11))]
        parts = [make_case(f, rng) for f in forms]
        c = parts[0]                    # the first part's initial state, all parts' text
        c.text = "\n".join(p.text for p in parts)
        seqs.append(c)
    codes = assemble_all([c.text for c in seqs], bits)
    return list(zip(seqs, codes))


@pytest.mark.parametrize("bits", [64, 32])
def test_sequences_fast(bits):
    _check_sequences(bits, 10, 1)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [64, 32])
def test_sequences_sweep(bits):
    _check_sequences(bits, 300, 2)


def _check_sequences(bits, n, seed):
    failures = []
    for c, code in _sequences(bits, n, seed):
        d = compare(c.text.replace("\n", "; "), bits, code, c)
        if d:
            failures.append(d)
    assert not failures, f"{len(failures)}/{n} sequences differ:\n" + "\n".join(failures[:3])


# ---------------------------------------------------------------- self-checks of the oracle setup
def test_oracle_sees_a_difference():
    """The comparison is not vacuous: a deliberately different start differs."""
    f = Form("add {r0}, {r1}", 4, 64)
    c = make_case(f, random.Random(5))
    code = assemble_all([c.text], 64)[0]
    assert compare(c.text, 64, code, c) is None
    sim = runners(64)[0]
    orig = sim.run

    def skewed(addr, code_, case):
        regs, rip, fl, mem, exc = orig(addr, code_, case)
        return regs, rip, fl ^ 1, mem, exc
    sim.run = skewed
    try:
        d = compare(c.text, 64, code, c)
    finally:
        sim.run = orig
    assert d is not None and "CF" in d
