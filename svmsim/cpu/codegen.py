"""Tier 2 of the execution engine: hot blocks compiled to Python source.

The engine interprets a block ``HOT_THRESHOLD`` times, then calls
``compile_block(blk, cpu)``.  This module writes one Python function per
block, specialised at compile time on operand kinds, sizes and the CPU mode,
and ``exec``s it.  The function ``fn(cpu, budget) -> retired`` has the same
architectural effect as running the block's handlers (svmsim/cpu/ops/*.py
are the reference semantics); only the host-side cost differs:

* general registers live in Python locals (``g0``..``g15``), loaded at entry
  and written back at exit, around generic handler calls, and on a fault;
* lazy flags (the ``cpu.lf`` tuple of flags.py) are built only where
  something can observe them: at exit, before a generic handler, and - on a
  fault - rebuilt in the exception handler from the producer's temporaries
  (``a<k>``/``b<k>``/``r<k>``), so the fast path pays nothing for them;
  a Jcc/SETcc/CMOVcc/ADC whose flag producer is in the block evaluates the
  condition directly from those temporaries (``dec rcx; jnz`` -> ``r & m``);
* in 64-bit mode, memory operands with a zero segment base go through the
  fast TLB caches inline (``cpu.fr``/``cpu.fw``: linear page -> RAM offset,
  valid for the CPL the block was compiled for, see state.py/tlb.py); a miss
  or a page-crossing access takes ``cpu.read``/``cpu.write``, which raise
  the precise fault;
* a block whose final branch targets its own start loops inside the function
  while the branch is taken, never retiring more than ``budget``
  instructions, and leaves at the back edge when ``cpu.pending`` or
  ``machine.stopping`` is set or after a slow-path write (which may have hit
  the block's own code page: self-modifying code, engine._on_ram_write).

Precise faults (APM vol 2, 8.1): every instruction writes its register
locals only after its last access that can fault.  The ``except`` clause maps
the traceback's line number to the faulting instruction, writes the locals
back, restores ``cpu.lf`` as of the previous instruction, and sets
``cpu.fault_n``/``cpu.fault_ip`` for the engine.

Instructions without a template call their handler (``h<k>(cpu, i<k>)``)
after flushing registers and flags, and reload both afterwards.
"""
import struct

from iced_x86 import OpKind, Register as R

from .decoder import GPR
from .exceptions import CpuException, gp
from .flags import PARITY, ARITH, carry, CF as F_CF
from .segments import CS, SS, FS, GS
from .ops import arith, data, control

try:
    from .ops import shift as _shift
except ImportError:                   # pragma: no cover - shift is part of the tree
    _shift = None

MASK64 = (1 << 64) - 1
MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: MASK64}
_KEEP = {1: MASK64 & ~0xFF, 2: MASK64 & ~0xFFFF}
_IMM_KINDS = {OpKind.IMMEDIATE8, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32, OpKind.IMMEDIATE64,
              OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE8TO64,
              OpKind.IMMEDIATE32TO64}
_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
OP_ADD, OP_SUB, OP_LOGIC, OP_INC, OP_DEC = 0, 1, 2, 3, 4

_CACHE: dict = {}                     # generated source -> code object
stats = {"compiled": 0, "cache_hits": 0, "declined": 0}


def _carry_now(cpu):
    """CF as the interpreter's ADC/SBB/INC/DEC read it (arith._cf)."""
    lf = cpu.lf
    return carry(lf) if lf is not None else cpu.rflags & F_CF


def _base_ns():
    ns = {"_CpuException": CpuException, "PARITY": PARITY, "_carry": _carry_now, "_gp": gp}
    for size, fmt in _FMT.items():
        s = struct.Struct(fmt)
        ns["U%d" % size] = s.unpack_from
        ns["P%d" % size] = s.pack_into
    return ns


_BASE_NS = _base_ns()


class Unsupported(Exception):
    """A form the templates do not cover: the instruction goes generic."""


class Opnd:
    """One operand: kind 'reg' (idx, size, high), 'mem' (ea source, seg, size) or 'imm'."""
    __slots__ = ("kind", "idx", "size", "high", "value", "ea", "seg", "raw")


class Prod:
    """The lazy-flags tuple of a template instruction, as source expressions.

    ``exact`` marks SUB/CMP/NEG, whose r is exactly a - b with a and b masked
    to the operand size, so conditions can compare a and b directly."""

    def __init__(self, op, bits, a, b, r, cf, exact=False):
        self.op, self.bits, self.a, self.b, self.r, self.cf = op, bits, a, b, r, cf
        self.exact = exact

    def tuple_src(self):
        return f"({self.op}, {self.bits}, {self.a}, {self.b}, {self.r}, {self.cf})"

    # -- single flags as 0/1 (or truthy) expressions ---------------------------
    def zf(self):
        return f"not ({self.r} & {MASK[self.bits // 8]:#x})"

    def sf(self):
        return f"(({self.r} >> {self.bits - 1}) & 1)"

    def cf_(self):
        if self.op in (OP_ADD, OP_SUB):
            return f"(({self.r} >> {self.bits}) & 1)"
        if self.op == OP_LOGIC:
            return "0"
        return self.cf

    def of(self):
        a, b, r, top = self.a, self.b, self.r, self.bits - 1
        if self.op == OP_LOGIC:
            return "0"
        if self.op in (OP_ADD, OP_INC):
            return f"(((({a}) ^ {r}) & (({b}) ^ {r})) >> {top} & 1)"
        return f"(((({a}) ^ ({b})) & (({a}) ^ {r})) >> {top} & 1)"

    def cond(self, cc):
        """Source of a truth value for x86 condition nibble ``cc``."""
        c, neg = cc >> 1, cc & 1
        if c == 2 and not self.exact:
            m = MASK[self.bits // 8]
            return f"({self.r} & {m:#x})" if neg else f"not ({self.r} & {m:#x})"
        e = None
        if self.exact:
            a, b = self.a, self.b
            sign = 1 << (self.bits - 1)
            e = {1: f"{a} < {b}", 2: f"{a} == {b}", 3: f"{a} <= {b}",
                 6: f"({a} ^ {sign:#x}) < ({b} ^ {sign:#x})",
                 7: f"({a} ^ {sign:#x}) <= ({b} ^ {sign:#x})"}.get(c)
        elif self.op == OP_LOGIC:
            r, top = self.r, self.bits - 1
            e = {0: "False", 1: "False", 2: f"not {r}", 3: f"not {r}", 4: f"{r} >> {top}",
                 6: f"{r} >> {top}", 7: f"(not {r}) or {r} >> {top}"}.get(c)
        if e is None:
            if c == 0:
                e = self.of()
            elif c == 1:
                e = self.cf_()
            elif c == 2:
                e = self.zf()
            elif c == 3:
                e = f"{self.cf_()} or {self.zf()}"
            elif c == 4:
                e = self.sf()
            elif c == 5:
                e = f"PARITY[{self.r} & 0xFF]"
            elif c == 6:
                e = f"{self.sf()} != {self.of()}"
            else:
                e = f"{self.zf()} or {self.sf()} != {self.of()}"
        return f"not ({e})" if neg else f"({e})"


class Gen:
    """Writes the source of one block function."""

    def __init__(self, blk, cpu):
        self.blk = blk
        mode = blk.key[1] if isinstance(blk.key, tuple) and len(blk.key) >= 2 else cpu.mode_key
        self.bits, self.stack_bits = mode[0], mode[2]
        self.long64 = self.bits == 64
        self.start = blk.insns[0].ip
        self.n = blk.n
        self.lines = []              # (indent, text, insn index or -1)
        self.k = -1
        self.ns = {}
        self.used = set()            # register indexes read or written
        self.dirty = set()           # written since the last flush
        self.ever_dirty = set()
        self.pending = None          # Prod not yet stored to cpu.lf
        self.seen_writer = False     # any flag writer emitted yet
        self.entry_flags_read = False
        self.fix = []                # per insn: ('prod', Prod) | ('wrap',) | None
        self.uses_mem = self.uses_eb = self.loops = self.check_blocks = False
        self.templated = 0
        self.flush_sets = []
        self.back_dirty = set()

    # ------------------------------------------------------------ emission
    def emit(self, text, indent=0):
        self.lines.append((indent, text, self.k))

    # ------------------------------------------------------------ registers
    def reg_read(self, o):
        self.used.add(o.idx)
        g = "g%d" % o.idx
        if o.high:
            return f"(({g} >> 8) & 0xFF)"
        if o.size == 8:
            return g
        return f"({g} & {MASK[o.size]:#x})"

    def reg_write(self, o, v, masked=False, ind=0):
        """Assign ``v`` to a register operand (32-bit writes zero-extend)."""
        self.used.add(o.idx)
        self.dirty.add(o.idx)
        self.ever_dirty.add(o.idx)
        g = "g%d" % o.idx
        if o.high:
            self.emit(f"{g} = ({g} & 0xFFFFFFFFFFFF00FF) | (({v} & 0xFF) << 8)", ind)
        elif o.size in (4, 8):
            self.emit(f"{g} = {v}" if masked else f"{g} = ({v}) & {MASK[o.size]:#x}", ind)
        else:
            self.emit(f"{g} = ({g} & {_KEEP[o.size]:#x}) | ({v} & {MASK[o.size]:#x})", ind)

    # ------------------------------------------------------------ memory
    def _lin(self, o, k):
        """Emit the offset (and linear address); returns (off, lin) names.

        With a 64-bit address size the sum is left unmasked on the fast
        path: a carry out of bit 63 gives a page number no cache holds, and
        the slow path gets the masked offset."""
        off = o.ea
        if o.seg in (FS, GS):
            if not off.isidentifier():
                self.emit(f"o{k} = {off}")
                off = f"o{k}"
            self.uses_eb = True
            self.emit(f"l{k} = (eb{o.seg} + {off}) & {MASK64:#x}")
            return off, f"l{k}"
        if off.isidentifier():
            return off, off
        raw = getattr(o, "raw", None)
        if raw is not None:
            self.emit(f"o{k} = {raw}")
            return f"(o{k} & {MASK64:#x})", f"o{k}"
        self.emit(f"o{k} = {off}")
        return f"o{k}", f"o{k}"

    def mem_read(self, o, k, tag="v", into=None):
        """Emit a load of memory operand ``o``; returns the value's name.
        ``into`` names a local to load straight into (the load is the
        instruction's last step that can fault)."""
        self.uses_mem = True
        v = into or f"{tag}{k}"
        if not self.long64:
            self.emit(f"{v} = cpu.read({o.seg}, {o.ea}, {o.size})")
            return v
        off, lin = self._lin(o, k)
        s = o.size
        self.emit(f"p{k} = frg({lin} >> 12)")
        if s == 1:
            self.emit(f"if p{k} is None:")
            fast = f"p{k} + ({lin} & 0xFFF)"
        else:
            self.emit(f"if p{k} is None or (x{k} := {lin} & 0xFFF) > {0x1000 - s:#x}:")
            fast = f"p{k} + x{k}"
        self.emit(f"{v} = cpu.read({o.seg}, {off}, {s})", 1)
        self.emit("else:")
        self.emit(f"{v} = U{s}(ram, {fast})[0]", 1)
        return v

    def mem_write(self, o, k, v):
        """Emit a store of the (masked) value ``v``."""
        self.uses_mem = True
        if not self.long64:
            self.emit(f"cpu.write({o.seg}, {o.ea}, {o.size}, {v})")
            self.check_blocks = True
            return
        off, lin = self._lin(o, k)
        s = o.size
        self.emit(f"q{k} = fwg({lin} >> 12)")
        if s == 1:
            self.emit(f"if q{k} is None:")
            fast = f"q{k} + ({lin} & 0xFFF)"
        else:
            self.emit(f"if q{k} is None or (x{k} := {lin} & 0xFFF) > {0x1000 - s:#x}:")
            fast = f"q{k} + x{k}"
        self.emit(f"cpu.write({o.seg}, {off}, {s}, {v})", 1)
        self.emit("lim = -1", 1)            # may have hit code: leave any self-loop
        self.emit("else:")
        self.emit(f"P{s}(ram, {fast}, {v})", 1)

    def rmw_read(self, o, k):
        """Read half of a read-modify-write memory operand; returns the value name.
        One fw lookup serves both halves: x86 has no write-only pages, and
        fw only holds pages a write (hence a read) may touch without a fault."""
        self.uses_mem = True
        if not self.long64:
            self.emit(f"a{k} = cpu.read({o.seg}, {o.ea}, {o.size})")
            return f"a{k}"
        off, lin = self._lin(o, k)
        s = o.size
        self.emit(f"q{k} = fwg({lin} >> 12)")
        cross = "" if s == 1 else f" and ({lin} & 0xFFF) <= {0x1000 - s:#x}"
        self.emit(f"if q{k} is not None{cross}:")
        self.emit(f"q{k} += {lin} & 0xFFF", 1)
        self.emit(f"a{k} = U{s}(ram, q{k})[0]", 1)
        self.emit("else:")
        self.emit(f"q{k} = None", 1)
        self.emit(f"a{k} = cpu.read({o.seg}, {off}, {s})", 1)
        self._rmw_names = (off, lin)
        return f"a{k}"

    def rmw_write(self, o, k, v):
        if not self.long64:
            self.emit(f"cpu.write({o.seg}, {o.ea}, {o.size}, {v})")
            self.check_blocks = True
            return
        off, _ = self._rmw_names
        self.emit(f"if q{k} is None:")
        self.emit(f"cpu.write({o.seg}, {off}, {o.size}, {v})", 1)
        self.emit("lim = -1", 1)
        self.emit("else:")
        self.emit(f"P{o.size}(ram, q{k}, {v})", 1)

    # ------------------------------------------------------------ operands
    def operand(self, ins, n):
        i = ins.iced
        kind = i.op_kind(n)
        o = Opnd()
        o.high = False
        if kind == OpKind.REGISTER:
            g = GPR.get(i.op_register(n))
            if g is None:
                raise Unsupported("non-GPR register")
            o.kind = "reg"
            o.idx, o.size, o.high = g
        elif kind == OpKind.MEMORY:
            o.kind = "mem"
            o.size = ins.mem_size
            o.seg = ins.seg
            if o.size not in _FMT:
                raise Unsupported("memory operand size")
            o.ea = self.ea_src(ins)
            o.raw = self._raw if ins.asize == 8 and o.ea.startswith("((") else None
        elif kind in _IMM_KINDS:
            o.kind = "imm"
            o.value = getattr(ins, "get%d" % n)(None)   # the constant the handler sees
            o.size = ins.opsz[n] or ins.osize
        else:
            raise Unsupported("operand kind")
        return o

    def ea_src(self, ins):
        """The offset of the memory operand, as decoder.ea_func computes it."""
        i = ins.iced
        asize = ins.asize
        amask = MASK[asize]
        disp = i.memory_displacement & amask
        base = i.memory_base
        terms = []
        if base in GPR and base not in (R.RIP, R.EIP):
            b = GPR[base][0]
            self.used.add(b)
            terms.append("g%d" % b)
        if i.memory_index in GPR:
            x = GPR[i.memory_index][0]
            self.used.add(x)
            sc = i.memory_index_scale
            terms.append("g%d" % x if sc == 1 else "g%d * %d" % (x, sc))
        if not terms:
            return "%#x" % disp
        if len(terms) == 1 and asize == 8 and not disp:
            return terms[0]                 # a register is already < 2**64
        raw = " + ".join(terms)
        if asize == 8 and disp >> 63:
            # A negative displacement stays negative in the unmasked sum the
            # fast path looks up (base + 2**64 - d would never hit a cache).
            raw += " - %#x" % ((1 << 64) - disp)
        elif disp:
            raw += " + %#x" % disp
        self._raw = raw
        return "((%s) & %#x)" % (raw, amask)

    def read(self, o, k, tag="v"):
        if o.kind == "reg":
            return self.reg_read(o)
        if o.kind == "imm":
            return "%#x" % o.value
        return self.mem_read(o, k, tag)

    def write(self, o, k, v, masked=False):
        if o.kind == "reg":
            self.reg_write(o, v, masked)
        else:
            self.mem_write(o, k, v if masked else f"({v}) & {MASK[o.size]:#x}")

    # ------------------------------------------------------------ flags
    def set_prod(self, p):
        self.pending = p
        self.seen_writer = True

    def flags_eager(self):
        """An instruction that writes rflags itself: any pending tuple is dead."""
        self.pending = None
        self.seen_writer = True

    def store_flags(self, ind=0):
        if self.pending is not None:
            self.emit(f"cpu.lf = {self.pending.tuple_src()}", ind)

    def cond(self, cc):
        if self.pending is not None:
            return self.pending.cond(cc)
        if not self.seen_writer:
            self.entry_flags_read = True
        return f"cpu.cond({cc})"

    def carry_in(self, k, temp=False):
        """CF before instruction k.  An expression over an earlier producer's
        temporaries stays valid until that producer runs again, by which time
        it is no longer the pending one; the live flags (``_carry``) and
        values used in arithmetic (``temp``) are captured in c<k>."""
        if self.pending is not None:
            e = self.pending.cf_()
        else:
            if not self.seen_writer:
                self.entry_flags_read = True
            e = "_carry(cpu)"
        if e in ("0", "1") or (not temp and "_carry" not in e):
            return e
        self.emit(f"c{k} = {e}")
        return f"c{k}"

    # ------------------------------------------------------------ writing back
    def flush_regs(self, regs_set, ind=0):
        for i in sorted(regs_set):
            self.emit(f"regs[{i}] = g{i}", ind)

    def exit(self, rip, count, ind=0):
        """Normal completion: write back, set RIP, return the retired count."""
        self.flush_regs(self.dirty, ind)
        self.store_flags(ind)
        if rip is not None:
            self.emit(f"cpu.rip = {rip:#x}", ind)
        self.emit(f"return {count}", ind)

    def back_edge(self, ind):
        """Taken branch to the block's own start: loop or leave."""
        self.loops = True
        self.emit(f"n += {self.n}", ind)
        extra = " or BK not in blocks" if self.check_blocks else ""
        self.emit(f"if n > lim or cpu.pending or machine.stopping{extra}:", ind)
        self.flush_regs(self.dirty, ind + 1)
        self.store_flags(ind + 1)
        self.emit(f"cpu.rip = {self.start:#x}", ind + 1)
        self.emit("return n", ind + 1)
        self.back_pending = self.pending
        self.back_dirty = set(self.dirty)
        self.emit("@BACKFLAGS@", ind)
        self.emit("continue", ind)

    # ------------------------------------------------------------ the block
    def generate(self):
        blk = self.blk
        last = blk.n - 1
        self.back_pending = None
        for k, ins in enumerate(blk.insns):
            self.k = k
            self.fix.append(("prod", self.pending) if self.pending is not None
                            else (None if self.seen_writer else ("wrap",)))
            tmpl = TEMPLATES.get(ins.fn)
            mark = len(self.lines)
            state = (set(self.used), set(self.dirty), set(self.ever_dirty), self.pending,
                     self.seen_writer, self.entry_flags_read, self.uses_mem, self.uses_eb,
                     self.check_blocks, self.loops)
            done = False
            if tmpl is not None:
                try:
                    done = tmpl(self, ins, k, k == last)
                except Unsupported:
                    done = False
                if done:
                    self.templated += 1
            if not done:
                del self.lines[mark:]
                (self.used, self.dirty, self.ever_dirty, self.pending, self.seen_writer,
                 self.entry_flags_read, self.uses_mem, self.uses_eb, self.check_blocks,
                 self.loops) = state
                self.generic(ins, k, k == last)
        self.k = -1
        if not self._ended:
            self.exit(blk.end_ip, f"n + {self.n}")
        return self.assemble()

    _ended = False

    def generic(self, ins, k, is_last):
        """Call the handler (flags and registers are synchronised around it).

        In a self-loop, registers dirtied after this point in the previous
        iteration are dirty here too: the flush list is completed once the
        back edge is known (``@FLUSHn@``)."""
        self.flush_sets.append(set(self.dirty))
        self.emit("@FLUSH%d@" % (len(self.flush_sets) - 1))
        self.dirty = set()
        self.store_flags()
        if not self.seen_writer:
            self.entry_flags_read = True  # it may read the previous iteration's flags
        self.pending = None
        self.seen_writer = True          # cpu.lf is current from here on
        self.ns["h%d" % k] = ins.fn
        self.ns["i%d" % k] = ins
        self.emit("@QEXEC@")
        self.emit(f"h{k}(cpu, i{k})")
        self.check_blocks = True
        if ins.ends_block:
            self.emit(f"return n + {self.n}")
            self._ended = True
            return
        self.emit("@RELOAD@")

    # ------------------------------------------------------------ assembling
    def assemble(self):
        """Build the function source; returns (source, line map, namespace)."""
        regs = sorted(self.used)
        pre = ["def _blk(cpu, budget):", "    regs = cpu.regs"]
        reload = []
        if self.uses_mem and self.long64:
            reload += ["frg = cpu.fr.get", "fwg = cpu.fw.get"]
            pre.append("    ram = cpu.ram")
        if self.uses_eb:
            reload += ["eb4 = cpu.ebase[4]", "eb5 = cpu.ebase[5]"]
        reload += ["g%d = regs[%d]" % (i, i) for i in regs]
        pre += ["    " + s for s in reload]
        if self.loops:
            pre.append("    machine = cpu.machine")
            if self.check_blocks:
                pre.append("    blocks = machine.engine.blocks")
            pre.append("    q_entry = cpu.q_exec")
        pre += ["    n = 0", f"    lim = budget - {self.n}", "    try:", "        while True:"]
        out = list(pre)
        line_of = [-1] * (len(pre) + 1)      # line numbers are 1-based
        for indent, text, k in self.lines:
            pad = " " * (12 + 4 * indent)
            if text == "@RELOAD@":
                texts = reload
            elif text.startswith("@FLUSH"):
                regs_set = self.flush_sets[int(text[6:-1])] | (self.back_dirty if self.loops else set())
                texts = ["regs[%d] = g%d" % (i, i) for i in sorted(regs_set)]
            elif text == "@QEXEC@":
                # A handler may read the time (RDTSC): in a self-loop, the
                # instructions of earlier iterations count (machine.now_ns).
                texts = ["cpu.q_exec = q_entry + n"] if self.loops else []
            elif text == "@BACKFLAGS@":
                # Readers of the entry flags see the previous iteration's producer.
                bp = self.back_pending
                texts = [f"cpu.lf = {bp.tuple_src()}"] if (bp is not None and self.entry_flags_read) else []
            else:
                texts = [text]
            for t in texts:
                out.append(pad + t)
                line_of.append(k)
        out.append("    except _CpuException as e:")
        line_of.append(-1)
        handler = self.except_src()
        out += ["        " + s for s in handler]
        src = "\n".join(out) + "\n"
        return src, tuple(line_of + [-1] * (len(handler) + 2))

    def except_src(self):
        s = ["k = LK[e.__traceback__.tb_lineno]"]
        s += ["regs[%d] = g%d" % (i, i) for i in sorted(self.ever_dirty)]
        # cpu.lf as of the instruction before k (dead stores were skipped).
        wrap_prod = self.back_pending if self.loops else None
        groups = {}
        for k, f in enumerate(self.fix):
            if f is None:
                continue
            if f[0] == "prod":
                groups.setdefault(("", f[1].tuple_src()), []).append(k)
            elif wrap_prod is not None:
                groups.setdefault(("n and ", wrap_prod.tuple_src()), []).append(k)
        first = True
        for (guard, tup), ks in groups.items():
            kw = "if" if first else "elif"
            first = False
            s.append(f"{kw} {guard}k in {tuple(ks)!r}:")
            s.append(f"    cpu.lf = {tup}")
        ips = tuple(ins.ip for ins in self.blk.insns)
        s += ["cpu.fault_n = n + k", f"cpu.fault_ip = {ips!r}[k]", "raise"]
        return s


# ---------------------------------------------------------------- templates
def _alu2(op, write=True, logic=None, adc=False, exact=False):
    """ADD/SUB/ADC/SBB/CMP and AND/OR/XOR/TEST (``logic`` is the operator).

    ADD/ADC keep no copy of the old destination: a = r - b (- carry) is
    recovered from the unmasked result when the tuple is built."""
    def t(g, ins, k, is_last):
        d = g.operand(ins, 0)
        s = g.operand(ins, 1)
        size = ins.osize
        bits = size * 8
        if d.kind == "imm":
            raise Unsupported("immediate destination")
        rmw = d.kind == "mem" and write
        a = g.rmw_read(d, k) if rmw else g.read(d, k, "a")
        b = g.read(s, k, "b")
        if logic:
            if write and d.kind == "reg" and d.size >= 4 and not d.high:
                g.used.add(d.idx)
                g.dirty.add(d.idx)
                g.ever_dirty.add(d.idx)
                g.emit(f"g{d.idx} = r{k} = {a} {logic} {b}")
            else:
                g.emit(f"r{k} = {a} {logic} {b}")
                if write:
                    if rmw:
                        g.rmw_write(d, k, f"r{k}")
                    else:
                        g.write(d, k, f"r{k}", masked=True)
            g.set_prod(Prod(OP_LOGIC, bits, 0, 0, f"r{k}", 0))
            return True
        keep_a = exact or op == OP_SUB
        if keep_a and (not a.isidentifier() or a.startswith("g")):
            g.emit(f"a{k} = {a}")
            a = f"a{k}"
        if not (b.startswith("0x") or b.startswith("b")):
            g.emit(f"b{k} = {b}")
            b = f"b{k}"
        sign = "+" if op == OP_ADD else "-"
        extra = ""
        c = "0"
        if adc:
            c = g.carry_in(k, temp=True)
            extra = f" {sign} {c}"
        g.emit(f"r{k} = {a} {sign} {b}{extra}")
        if not keep_a:
            a = f"(r{k} - {b} - {c})" if adc else f"(r{k} - {b})"
        if write:
            if rmw:
                g.rmw_write(d, k, f"r{k} & {MASK[size]:#x}")
            else:
                g.write(d, k, f"r{k}")
        g.set_prod(Prod(op, bits, a, b, f"r{k}", 0, exact=exact))
        return True
    return t


def _incdec(op):
    def t(g, ins, k, is_last):
        d = g.operand(ins, 0)
        size = ins.osize
        c = g.carry_in(k)
        sign = "+" if op == OP_INC else "-"
        if d.kind == "mem":
            a = g.rmw_read(d, k)
            g.emit(f"r{k} = {a} {sign} 1")
            g.rmw_write(d, k, f"r{k} & {MASK[size]:#x}")
        else:
            g.emit(f"r{k} = {g.reg_read(d)} {sign} 1")
            a = f"(r{k} {'-' if op == OP_INC else '+'} 1)"
            g.write(d, k, f"r{k}")
        g.set_prod(Prod(op, size * 8, a, 1, f"r{k}", c))
        return True
    return t


def _unary(neg):
    def t(g, ins, k, is_last):
        d = g.operand(ins, 0)
        size = ins.osize
        if d.kind == "mem":
            a = g.rmw_read(d, k)
        else:
            g.emit(f"a{k} = {g.reg_read(d)}")
            a = f"a{k}"
        g.emit(f"r{k} = -{a}" if neg else f"r{k} = ~{a} & {MASK[size]:#x}")
        if d.kind == "mem":
            g.rmw_write(d, k, f"r{k} & {MASK[size]:#x}" if neg else f"r{k}")
        else:
            g.write(d, k, f"r{k}", masked=not neg)
        if neg:
            g.set_prod(Prod(OP_SUB, size * 8, 0, a, f"r{k}", 0, exact=True))
        return True
    return t


def t_mov(g, ins, k, is_last):
    d = g.operand(ins, 0)
    s = g.operand(ins, 1)
    if s.kind == "mem" and d.kind == "reg" and d.size >= 4 and not d.high:
        g.used.add(d.idx)
        g.dirty.add(d.idx)
        g.ever_dirty.add(d.idx)
        g.mem_read(s, k, into="g%d" % d.idx)
        return True
    v = g.read(s, k)
    g.write(d, k, v, masked=True)
    return True


def t_movzx(g, ins, k, is_last):
    d = g.operand(ins, 0)
    s = g.operand(ins, 1)
    v = g.read(s, k)
    g.write(d, k, v, masked=d.size >= s.size and d.size >= 4)
    return True


def t_movsx(g, ins, k, is_last):
    d = g.operand(ins, 0)
    s = g.operand(ins, 1)
    v = g.read(s, k)
    sign = 1 << (s.size * 8 - 1)
    g.emit(f"v{k} = ({v} ^ {sign:#x}) - {sign:#x}")
    g.write(d, k, f"v{k}")
    return True


def t_lea(g, ins, k, is_last):
    d = g.operand(ins, 0)
    if d.kind != "reg" or ins.iced.op_kind(1) != OpKind.MEMORY:
        raise Unsupported("lea form")
    g.write(d, k, g.ea_src(ins))
    return True


def t_nop(g, ins, k, is_last):
    g.emit("pass")
    return True


# -- stack (state.py Cpu.push/pop, by stack size) -------------------------
def _push(g, k, v, size):
    """Emit a push of value source ``v`` (masked); rSP changes after the write."""
    sb = g.stack_bits
    g.used.add(4)
    g.emit(f"s{k} = (g4 - {size}) & {MASK[sb // 8]:#x}")
    so = Opnd()
    so.kind, so.size, so.seg, so.ea, so.high = "mem", size, SS, f"s{k}", False
    g.mem_write(so, k, v)
    sp = Opnd()
    sp.kind, sp.idx, sp.size, sp.high = "reg", 4, (sb // 8), False
    if sb == 16:
        g.reg_write(sp, f"s{k}")
    else:
        g.reg_write(sp, f"s{k}", masked=True)


def _pop(g, k, size):
    """Emit a pop into v<k>; returns the source of the new rSP (not yet assigned)."""
    sb = g.stack_bits
    g.used.add(4)
    so = Opnd()
    so.kind, so.size, so.seg, so.high = "mem", size, SS, False
    so.ea = "g4" if sb == 64 else f"(g4 & {MASK[sb // 8]:#x})"
    g.mem_read(so, k, "v")
    if sb == 16:
        return f"(g4 & {_KEEP[2]:#x}) | ((g4 + {size}) & 0xFFFF)"
    return f"(g4 + {size}) & {MASK[sb // 8]:#x}"


def t_push(g, ins, k, is_last):
    if ins.get0 is None:
        raise Unsupported("push sreg")
    s = g.operand(ins, 0)
    size = ins.osize
    v = g.read(s, k)
    if s.kind == "imm":
        v = "%#x" % (s.value & MASK[size])
    elif s.kind == "reg" and s.size != size:
        raise Unsupported("push size")
    if not v.isidentifier() and not v.startswith("0x"):
        g.emit(f"w{k} = {v}")
        v = f"w{k}"
    _push(g, k, v, size)
    return True


def t_pop(g, ins, k, is_last):
    if ins.get0 is None:
        raise Unsupported("pop sreg")
    d = g.operand(ins, 0)
    if d.kind != "reg":
        raise Unsupported("pop to memory")
    newsp = _pop(g, k, ins.osize)
    g.emit(f"g4 = {newsp}")
    g.dirty.add(4)
    g.ever_dirty.add(4)
    g.reg_write(d, f"v{k}", masked=d.size >= 4)
    return True


# -- control transfers (ops/control.py) -----------------------------------
def _target_ok(g, target):
    """Compile-time canonical check in 64-bit mode; None when it must be runtime."""
    if g.long64:
        if (target + (1 << 47)) >> 48:
            raise Unsupported("non-canonical target")   # the handler raises #GP
        return True
    return None


def _check_cs_limit(g, target_src, ind):
    g.emit(f"if {target_src} > cpu.segs[{CS}].limit:", ind)
    g.emit("raise _gp(0, 'branch target beyond CS limit')", ind + 1)


def t_jcc(g, ins, k, is_last):
    if not is_last or ins.target is None:
        raise Unsupported("jcc position")
    t = ins.target
    _target_ok(g, t)
    cond = g.cond(ins.cc - 1)
    g.emit(f"if {cond}:")
    if not g.long64:
        _check_cs_limit(g, "%#x" % t, 1)
    if t == g.start:
        g.back_edge(1)
    else:
        g.exit(t, f"n + {g.n}", 1)
    g.exit(ins.next_ip, f"n + {g.n}")
    g._ended = True
    return True


def t_jmp(g, ins, k, is_last):
    if not is_last:
        raise Unsupported("jmp position")
    i = ins.iced
    if ins.target is not None and ins.get0 is None:
        if i.op0_kind in (OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32):
            raise Unsupported("far jmp")
        t = ins.target
        _target_ok(g, t)
        if not g.long64:
            _check_cs_limit(g, "%#x" % t, 0)
        if t == g.start:
            g.back_edge(0)
        else:
            g.exit(t, f"n + {g.n}")
        g._ended = True
        return True
    if i.is_jmp_far_indirect or ins.mem_size in (6, 10):
        raise Unsupported("far jmp")
    s = g.operand(ins, 0)
    v = g.read(s, k)
    g.emit(f"t{k} = {v} & {MASK[ins.osize]:#x}")
    _runtime_target_check(g, f"t{k}")
    _exit_dynamic(g, f"t{k}")
    return True


def _runtime_target_check(g, t, ind=0):
    if g.long64:
        g.emit(f"if ({t} + 0x800000000000) >> 48:", ind)
        g.emit("raise _gp(0, 'non-canonical branch target')", ind + 1)
    else:
        _check_cs_limit(g, t, ind)


def _exit_dynamic(g, t):
    g.flush_regs(g.dirty)
    g.store_flags()
    g.emit(f"cpu.rip = {t}")
    g.emit(f"return n + {g.n}")
    g._ended = True


def t_call(g, ins, k, is_last):
    i = ins.iced
    if not is_last or i.is_call_far_indirect or (ins.get0 is None and i.op0_kind in (
            OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32)) or i.is_call_far:
        raise Unsupported("call form")
    size = ins.osize
    if ins.get0 is None:
        t = ins.target
        _target_ok(g, t)
        if not g.long64:
            _check_cs_limit(g, "%#x" % t, 0)
        tsrc = "%#x" % t
    else:
        s = g.operand(ins, 0)
        v = g.read(s, k)
        g.emit(f"t{k} = {v} & {MASK[size]:#x}")
        _runtime_target_check(g, f"t{k}")
        tsrc = f"t{k}"
    _push(g, k, "%#x" % (ins.next_ip & MASK[size]), size)
    _exit_dynamic(g, tsrc)
    return True


def t_ret(g, ins, k, is_last):
    if not is_last:
        raise Unsupported("ret position")
    size = ins.osize
    newsp = _pop(g, k, size)
    _runtime_target_check(g, f"v{k}")
    g.emit(f"g4 = {newsp}")
    if ins.imm is not None:
        sb = g.stack_bits
        if sb == 16:
            g.emit(f"g4 = (g4 & {_KEEP[2]:#x}) | ((g4 + {ins.imm & 0xFFFF:#x}) & 0xFFFF)")
        else:
            g.emit(f"g4 = (g4 + {ins.imm & 0xFFFF:#x}) & {MASK[sb // 8]:#x}")
    g.dirty.add(4)
    g.ever_dirty.add(4)
    _exit_dynamic(g, f"v{k}")
    return True


# -- conditional data moves ------------------------------------------------
def t_setcc(g, ins, k, is_last):
    d = g.operand(ins, 0)
    cond = g.cond(ins.cc - 1)
    g.emit(f"v{k} = 1 if {cond} else 0")
    g.write(d, k, f"v{k}", masked=True)
    return True


def t_cmovcc(g, ins, k, is_last):
    d = g.operand(ins, 0)
    s = g.operand(ins, 1)
    if d.kind != "reg":
        raise Unsupported("cmov dest")
    v = g.read(s, k)                         # read (and may fault) either way
    if not v.isidentifier():
        g.emit(f"v{k} = {v}")
        v = f"v{k}"
    cond = g.cond(ins.cc - 1)
    g.emit(f"if {cond}:")
    g.reg_write(d, v, masked=True, ind=1)
    if d.size == 4:
        g.emit("else:")
        g.reg_write(d, g.reg_read(d), masked=True, ind=1)
    return True


# -- shifts by an immediate (ops/shift.py; flags are eager there) ----------
def _shift_imm(kind):
    def t(g, ins, k, is_last):
        d = g.operand(ins, 0)
        s = g.operand(ins, 1)
        if s.kind != "imm" or d.kind != "reg":
            raise Unsupported("shift form")
        size = ins.osize
        bits = size * 8
        c = s.value & (0x3F if bits == 64 else 0x1F)
        if c == 0:
            # Flags unchanged; the destination is written back (a 32-bit
            # register zero-extends), as ops/shift.py does.
            g.reg_write(d, g.reg_read(d), masked=True)
            return True
        m = MASK[size]
        top = bits - 1
        g.emit(f"a{k} = {g.reg_read(d)}")
        if kind == "shl":
            g.emit(f"l{k} = (a{k} << {c - 1}) & {m:#x}")
            g.emit(f"r{k} = (l{k} << 1) & {m:#x}")
            fl = f"(l{k} >> {top}) | ((((l{k} ^ r{k}) >> {top}) & 1) << 11)"
        elif kind == "shr":
            g.emit(f"l{k} = a{k} >> {c - 1}")
            g.emit(f"r{k} = l{k} >> 1")
            fl = f"(l{k} & 1) | ((((l{k} ^ r{k}) >> {top}) & 1) << 11)"
        else:
            sign = 1 << top
            g.emit(f"l{k} = ((a{k} ^ {sign:#x}) - {sign:#x}) >> {c - 1}")
            g.emit(f"r{k} = (l{k} >> 1) & {m:#x}")
            fl = f"(l{k} & 1)"
        g.reg_write(d, f"r{k}", masked=True)
        g.emit(f"cpu.rflags = (cpu.rflags & {~ARITH & MASK64:#x}) | {fl} | PARITY[r{k} & 0xFF]"
               f" | (0x40 if r{k} == 0 else 0) | (0x80 if r{k} >> {top} else 0)")
        g.emit("cpu.lf = None")
        g.flags_eager()
        return True
    return t


TEMPLATES = {
    arith.add: _alu2(OP_ADD), arith.sub: _alu2(OP_SUB, exact=True),
    arith.adc: _alu2(OP_ADD, adc=True), arith.sbb: _alu2(OP_SUB, adc=True),
    arith.cmp: _alu2(OP_SUB, write=False, exact=True),
    arith.and_: _alu2(OP_LOGIC, logic="&"), arith.or_: _alu2(OP_LOGIC, logic="|"),
    arith.xor: _alu2(OP_LOGIC, logic="^"), arith.test: _alu2(OP_LOGIC, write=False, logic="&"),
    arith.inc: _incdec(OP_INC), arith.dec: _incdec(OP_DEC),
    arith.neg: _unary(True), arith.not_: _unary(False),
    data.mov: t_mov, data.movzx: t_movzx, data.movsx: t_movsx, data.lea: t_lea,
    data.nop: t_nop, data.push: t_push, data.pop: t_pop,
    data.setcc: t_setcc, data.cmovcc: t_cmovcc,
    control.jcc: t_jcc, control.jmp: t_jmp, control.call: t_call, control.ret: t_ret,
}
if _shift is not None:
    TEMPLATES.update({_shift.shl: _shift_imm("shl"), _shift.shr: _shift_imm("shr"),
                      _shift.sar: _shift_imm("sar")})


# ---------------------------------------------------------------- entry point
def generate(blk, cpu):
    """(source, line map, namespace, number of templated instructions)."""
    g = Gen(blk, cpu)
    src, line_of = g.generate()
    return src, line_of, g.ns, g.templated


def compile_block(blk, cpu):
    """The engine's tier-2 hook: ``fn(cpu, budget) -> retired`` or None.

    Generating and compiling costs ~100-250 us per instruction on CPython
    3.11 (mostly the parser) and saves ~1.5 us per executed instruction, so
    the engine asks only after a block ran HOT_THRESHOLD (200) times."""
    return compile_now(blk, cpu)


def compile_now(blk, cpu):
    """A function ``fn(cpu, budget) -> retired`` for ``blk``, or None.

    16-bit code (real mode, vm86, 16-bit protected segments) stays
    interpreted: it is boot code, rarely hot, and not covered by the tests.
    A bug in the generator must not end a guest run: the block then stays
    interpreted and the machine gets a note."""
    if not blk.n or (isinstance(blk.key, tuple) and len(blk.key) >= 2 and blk.key[1][0] == 16):
        stats["declined"] += 1
        return None
    try:
        src, line_of, ns, templated = generate(blk, cpu)
    except Exception as e:                       # noqa: BLE001 - see docstring
        stats["declined"] += 1
        if not isinstance(e, Unsupported):
            stats["errors"] = stats.get("errors", 0) + 1
            note = getattr(cpu.machine, "note", None)
            if note is not None:
                note(f"codegen: block at {blk.insns[0].ip:#x} left to the interpreter "
                     f"({type(e).__name__}: {e})")
        return None
    if not templated:
        stats["declined"] += 1
        return None             # nothing to gain over the interpreter
    code = _CACHE.get(src)
    if code is None:
        code = compile(src, "<svmsim block>", "exec")
        _CACHE[src] = code
        stats["compiled"] += 1
    else:
        stats["cache_hits"] += 1
    env = dict(_BASE_NS)
    env.update(ns)
    env["LK"] = line_of
    env["BK"] = blk.key
    exec(code, env)
    fn = env["_blk"]
    fn.source = src
    return fn
