"""Tier 2 of the execution engine: hot code compiled to Python source.

The engine interprets a block ``HOT_THRESHOLD`` times, then calls
``compile_block(blk, cpu, lookup)``.  This module writes one Python function
for the block and the translated blocks it reaches by static edges (its
region, ``region()``; on other pages checked at each move there), specialised at compile time on operand
kinds, sizes and the CPU mode, and ``exec``s it.  The function
``fn(cpu, budget) -> retired`` has the same architectural effect as running
the blocks' handlers (svmsim/cpu/ops/*.py are the reference semantics); only
the host-side cost differs:

* general registers live in Python locals (``g0``..``g15``), loaded at entry
  and written back at exit, around generic handler calls, and on a fault;
* lazy flags (the ``cpu.lf`` tuple of flags.py) are built only where
  something can observe them: at exit, before a generic handler, entering a
  block that reads them, and - on a fault - rebuilt in the exception handler
  from the producer's temporaries (``a<j>``/``b<j>``/``r<j>``), so the fast
  path pays nothing for them; a Jcc/SETcc/CMOVcc/ADC whose flag producer is
  in the block evaluates the condition directly from those temporaries
  (``dec rcx; jnz`` -> ``r & m``);
* in 64-bit mode, memory operands with a zero segment base go through the
  fast TLB caches inline (``cpu.fr``/``cpu.fw``: linear page -> RAM offset,
  valid for the CPL the code was compiled for, see state.py/tlb.py; writes
  to a page holding code check its byte map, ``cpu.fc``); aligned accesses
  index memoryviews of RAM, constant addresses are folded; a miss or a
  page-crossing access takes ``cpu.read``/``cpu.write``, which raise the
  precise fault;
* control moves between the region's blocks inside the function (``pc``),
  leaving at the first block end with ``budget`` instructions retired
  (where the engine would end the quantum anyway); a backward move
  also leaves when ``cpu.pending`` or ``machine.stopping`` is set, and any
  move leaves after a generic handler or a slow-path write (``lim = -1``).
  A slow-path write that changed translated code (``Engine.smc``) leaves
  right after its instruction (``CodeChanged``), unless all it did was swap
  the version of a block whose versions the region selects at run time
  (``Gen.goto_version``: code flipping between versions).

Precise faults (APM vol 2, 8.1): every instruction writes its register
locals only after its last access that can fault.  The ``except`` clause maps
the traceback's line number to the faulting instruction, writes the locals
back, restores ``cpu.lf`` as of the previous instruction, and sets
``cpu.fault_n``/``cpu.fault_ip`` for the engine.

Instructions without a template call their handler (``h<j>(cpu, i<j>)``)
after flushing registers and flags, and reload both afterwards.
"""
import re
import struct
import sys

from iced_x86 import Code, OpKind, Register as R

from .decoder import GPR
from .exceptions import CpuException, gp, PF_W
from .flags import PARITY, ARITH, carry, CF as F_CF
from .segments import CS, SS, FS, GS
from .ops import arith, bits as _bits, data, control, system as _system
from . import ops as _ops
from . import interrupts as _interrupts
from .tlb import ADDR_MAX

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
_SHIFT = {2: 1, 4: 2, 8: 3}
# Aligned accesses index memoryviews of RAM in the host's byte order, which
# must then be x86's (little-endian); otherwise they unpack like the rest.
_LITTLE = sys.byteorder == "little"
OP_ADD, OP_SUB, OP_LOGIC, OP_INC, OP_DEC, OP_SHIFT = 0, 1, 2, 3, 4, 5

_CACHE: dict = {}                     # generated source -> code object
FULL_LOAD = 7                         # registers used from which a region loads all 16 at once
FULL_FLUSH = 6                        # registers written from which it stores all 16 at once
_CACHE_MAX = 2048                     # code objects kept (bounded memory)
stats = {"compiled": 0, "cache_hits": 0, "declined": 0}
# Counted store loops run in bulk (Gen.bulk_store_loop); False compiles them
# as any loop (tests compare the two).
BULK_LOOPS = True


def _carry_now(cpu):
    """CF as the interpreter's ADC/SBB/INC/DEC read it (arith._cf)."""
    lf = cpu.lf
    return carry(lf) if lf is not None else cpu.rflags & F_CF


def _rd(cpu, p, lin, seg, off, size):
    """A load compiled code did not do inline: unaligned within its page
    (``p``: the page's RAM offset), or not in the read cache."""
    x = lin & 0xFFF
    if p is not None and x + size <= 0x1000:
        return int.from_bytes(cpu.ram[p + x:p + x + size], "little")
    return cpu.read(seg, off, size)


def _wr(cpu, q, lin, seg, off, size, value):
    """A store compiled code did not do inline: unaligned within its page,
    to a page holding code (fast if it misses every translated byte), or the
    slow path ``cpu.write``: then True (the region is left at its next
    transition: MMIO, code, a data breakpoint...) unless it was a plain RAM
    store after all -- a write-cache miss (a new page, a TLB flush) whose
    translation put the page in the write cache, and nothing else happened:
    no translated code changed (Engine.smc), as the walk's Accessed and Dirty
    updates could do; those pages' stores are the ones compiled code does
    inline, so the region may go on as after an inline store."""
    x = lin & 0xFFF
    if x + size <= 0x1000:
        if q is None:
            c = cpu.fc.get(lin >> 12)
            if c is not None:
                q = c[0]
                if c[1].find(1, x, x + size) >= 0:
                    # Translated code (64-bit mode: no segment check): what
                    # cpu.write does for it, the engine told (Engine.smc).
                    q += x
                    cpu.ram[q:q + size] = value.to_bytes(size, "little")
                    for watch in cpu.bus.write_watchers:
                        watch(q, size)
                    return True
        if q is not None:
            cpu.ram[q + x:q + x + size] = value.to_bytes(size, "little")
            return False
        cpu.write(seg, off, size, value)
        return cpu.fw.get(lin >> 12) is None or cpu.machine.engine.smc[0] != 0
    cpu.write(seg, off, size, value)
    return True


def _bulk_page(cpu, lin):
    """The RAM offset of the page of ``lin``, the next page of a bulk store
    loop (Gen.bulk_store_loop), which missed the write cache: translated for
    a write as the first store there would be -- the same page walk with the
    same Accessed and Dirty updates, at the same point -- if that puts it in
    the write cache (plain RAM: not MMIO, not code, not a watched page-table
    page, not an encrypted or SNP-protected page).  Else None, the store then
    running on its own path: a fault (raised there by its own walk, which
    finds what this one found), MMIO, a code page, a data breakpoint, an
    alignment check; a walk whose updates changed translated code takes the
    page back out of the write cache, so the store's own path sees the code
    change (Engine.smc) and the region ends after it."""
    if cpu.watch or cpu.align_check or lin >> 64:
        return None
    vpn = lin >> 12
    if vpn in cpu.fc:
        return None
    smc = cpu.machine.engine.smc
    before = smc[0]
    try:
        cpu.translate(lin, PF_W | cpu.user_access, False)
    except CpuException:
        return None
    if smc[0] != before:
        cpu.fw.pop(vpn, None)
        return None
    return cpu.fw.get(vpn)


def _rdA(cpu, lin, seg, off, size):
    """A 4- or 8-byte load that missed the address cache (``cpu.a4r``/
    ``cpu.a8r``): naturally aligned and in the read cache, it fills the
    address cache; else ``_rd``."""
    p = cpu.fr.get(lin >> 12)
    if p is not None and not lin & (size - 1):
        i = (p + (lin & 0xFFF)) >> (3 if size == 8 else 2)
        d = cpu.a8r if size == 8 else cpu.a4r
        if len(d) >= ADDR_MAX:
            d.clear()
        d[lin] = i
        return cpu.ram_views[size][i]
    return _rd(cpu, p, lin, seg, off, size)


def _rd1(cpu, lin, seg, off):
    """A byte load that missed the byte address cache (``cpu.a1r``): in
    the read cache, it fills it; else the slow path."""
    p = cpu.fr.get(lin >> 12)
    if p is not None:
        d = cpu.a1r
        if len(d) >= ADDR_MAX:
            d.clear()
        i = d[lin] = p + (lin & 0xFFF)
        return cpu.ram[i]
    return cpu.read(seg, off, 1)


def _wrA(cpu, lin, seg, off, size, value):
    """A 4- or 8-byte store that missed the address cache: as ``_rdA`` with
    the write cache, else ``_wr`` (True: it took the slow path)."""
    q = cpu.fw.get(lin >> 12)
    if q is not None and not lin & (size - 1):
        i = (q + (lin & 0xFFF)) >> (3 if size == 8 else 2)
        d = cpu.a8w if size == 8 else cpu.a4w
        if len(d) >= ADDR_MAX:
            d.clear()
        d[lin] = i
        cpu.ram_views[size][i] = value
        return False
    return _wr(cpu, q, lin, seg, off, size, value)


def _not_code(c, x, s):
    """Source testing that bytes x..x+s of the code page whose cache entry
    (RAM offset, byte map, the map as quadwords) is named ``c`` hold no
    translated code: one index for an aligned quadword, else a search."""
    if s == 8 and not x & 7:
        return f"not {c}[2][{x >> 3:#x}]"
    return f"{c}[1].find(1, {x:#x}, {x + s:#x}) < 0"


def _rmw(cpu, lin, size):
    """The RAM offset both halves of a read-modify-write may use when the
    write cache missed: a page holding code whose bytes here are not
    translated code; else None (the slow path)."""
    x = lin & 0xFFF
    if x + size <= 0x1000:
        c = cpu.fc.get(lin >> 12)
        if c is not None and c[1].find(1, x, x + size) < 0:
            return c[0] + x
    return None


class CodeChanged(Exception):
    """Raised inside a region function after an instruction whose write
    changed translated code; its own handler leaves the region there."""


def _base_ns():
    ns = {"_CpuException": CpuException, "PARITY": PARITY, "_carry": _carry_now, "_gp": gp,
          "_CodeChanged": CodeChanged, "_rd": _rd, "_wr": _wr, "_rmw": _rmw, "_rdA": _rdA, "_wrA": _wrA,
          "_rd1": _rd1, "_bulkpg": _bulk_page}
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
        if self.op == OP_SHIFT:
            return self.a
        return self.cf

    def of(self):
        a, b, r, top = self.a, self.b, self.r, self.bits - 1
        if self.op == OP_LOGIC:
            return "0"
        if self.op == OP_SHIFT:
            return b
        if self.op in (OP_ADD, OP_INC):
            return f"(((({a}) ^ {r}) & (({b}) ^ {r})) >> {top} & 1)"
        return f"(((({a}) ^ ({b})) & (({a}) ^ {r})) >> {top} & 1)"

    def cond(self, cc):
        """Source of a truth value for x86 condition nibble ``cc``."""
        c, neg = cc >> 1, cc & 1
        if c == 2 and not self.exact:
            m = MASK[self.bits // 8]
            if self.op == OP_LOGIC:           # operands within the size: so is r
                return f"({self.r})" if neg else f"not {self.r}"
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


class _Narrow(set):
    """The registers known narrow (``Gen.narrow``), remembering which ones a
    block may have written otherwise (``killed``; None: any, after a
    generic handler) for the region-wide analysis (``Gen.narrow_entries``)."""

    def __init__(self, regs=()):
        super().__init__(regs)
        self.killed = set()

    def discard(self, idx):
        if self.killed is not None:
            self.killed.add(idx)
        super().discard(idx)

    def clear(self):
        self.killed = None
        super().clear()


class Gen:
    """Writes the source of one region function.

    A region is a hot entry block plus the blocks it reaches by static edges
    (branch targets, fall-through) that are already translated, on the same
    linear page and in the same mode (``region()``).  Their code shares one
    function: registers stay in locals across blocks, a transition between
    members is ``pc = b`` (the next block in layout order falls through, others
    ``continue`` to the dispatch at the loop head), and only a transition
    backwards (a loop) checks ``cpu.pending``/``machine.stopping``.  Every
    transition checks the budget (``n > lim``); a generic handler or a
    slow-path write sets ``lim = -1`` so the region is left at the next one,
    as a block was left at its end before.

    Instruction names (``a<j>``, ``r<j>``...) use ``j``, the instruction's
    position in the whole region, so they are unique in the function.
    """

    def __init__(self, blk, cpu, members=None, narrow_in=None, vips=(), rsite=None):
        self.blk = blk
        self.narrow_in = narrow_in   # per member: registers narrow at its entry (narrow_entries)
        self.members = list(members or [blk])
        # Versions (``region``): at these addresses the members are the kept
        # versions of one block (code flipping between versions, engine.py
        # ``Engine.dropped``); a transition there runs the member that is the
        # live block at run time (``goto_version``), none of them statically.
        self.vips = frozenset(vips)
        self.vsel = {}               # version address -> {block: member index}
        for i, b in enumerate(self.members):
            if b.insns[0].ip in self.vips:
                self.vsel.setdefault(b.insns[0].ip, {})[b] = i
        self.index = {b.insns[0].ip: i for i, b in enumerate(self.members) if b.insns[0].ip not in self.vips}
        # Members on another linear page than the first (the region is only
        # entered on that page, engine.py _compile): a static transition to
        # one checks that its page is still mapped as it was decoded
        # (``_transition``); dynamic ones (``dindex``) only reach members on
        # the first page, whose mapping the engine checked at entry.
        self.lpage = [b.key[0] >> 12 for b in self.members]
        self.dindex = {ip: i for ip, i in self.index.items() if self.lpage[i] == self.lpage[0]}
        # Members a RET may continue at: those starting where a member's CALL
        # returns (a RET elsewhere leaves the region).  One on another page
        # (a callee's RET from a function it called: kvm-unit-tests' memset
        # returning into page_memalign_order_flags, called from the test on
        # another page) is checked at the RET as the static transitions to
        # it are: its page still mapped as when it was decoded (XC).
        calls = {b.insns[-1].next_ip for b in self.members if b.insns[-1].fn is control.call}
        self.ret_sites = {ip: i for ip, i in self.index.items() if ip in calls}
        self.xc = {i: (self.lpage[i], self.members[i].page) for i in self.ret_sites.values()
                   if self.lpage[i] != self.lpage[0]}
        # The head's predicted return site (compile_block): it may be on
        # another page, so a RET there checks that page's mapping (XC).
        if rsite is not None and rsite in self.index:
            i = self.index[rsite]
            self.ret_sites[rsite] = i
            if self.lpage[i] != self.lpage[0]:
                self.xc[i] = (self.lpage[i], self.members[i].page)
        mode = blk.key[1] if isinstance(blk.key, tuple) and len(blk.key) >= 2 else cpu.mode_key
        self.bits, self.stack_bits = mode[0], mode[2]
        self.long64 = self.bits == 64
        self.start = blk.insns[0].ip
        self.lines = []              # (indent, text, region insn index or -1)
        self.k = -1
        self.ns = {}
        self.used = set()            # register indexes read or written
        self.dirty = set()           # written (flushed at exits from the region-wide set)
        self.ever_dirty = set()
        self.pending = None          # Prod not yet stored to cpu.lf
        self.seen_writer = False     # any flag writer emitted yet in this block
        self.entry_flags_read = False
        self.fix = []                # per region insn: ('prod', Prod) | ('entry', b) | None
        self.pos = []                # per region insn: its index in its block
        self.ips = []
        self.uses_mem = self.uses_eb = self.loops = False
        self.templated = 0
        self.trans = []              # transitions between members, resolved in assemble()
        self.live_in = []            # per member: reads the flags it was entered with
        self.prods = []              # producers whose flags a transition left in locals (lp)
        self.dyns = []               # dynamic transitions (goto_dynamic), resolved in assemble()
        # Registers known to hold a zero-extended 32-bit value here (written
        # by a 32-bit operation earlier in this block): a 32-bit read of one
        # needs no mask.  Emptied at each block's start and by a handler call.
        self.narrow = set()
        self.ind = 0                 # indentation added to every emitted line
        self.stack = {}              # block position -> (stack group, slot): see stack_groups()
        self.cur = 0                 # member being generated
        self.n = blk.n               # size of the member being generated
        self.slow_write = False      # this instruction has a slow-path write
        self.smc_after = {}          # region insn index -> (next RIP, flags after it)
        self.views = set()           # sizes of the RAM memoryviews used (M2, M4, M8)
        self.addr = set()            # address caches used (a8r, a4w...: tlb.ADDR)

    # ------------------------------------------------------------ emission
    def emit(self, text, indent=0):
        self.lines.append((indent + self.ind, text, self.k))

    # ------------------------------------------------------------ registers
    def reg_read(self, o):
        self.used.add(o.idx)
        g = "g%d" % o.idx
        if o.high:
            return f"(({g} >> 8) & 0xFF)"
        if o.size == 8 or (o.size == 4 and o.idx in self.narrow):
            return g
        if o.size == 4:
            # Usually zero-extended already: a comparison with the constant
            # costs less than ``&`` with it (CPython's fast path for & is for
            # one-digit ints; 0xffffffff has two).
            return f"({g} if {g} <= 0xffffffff else {g} & 0xffffffff)"
        return f"({g} & {MASK[o.size]:#x})"

    def reg_write(self, o, v, masked=False, ind=0):
        """Assign ``v`` to a register operand (32-bit writes zero-extend)."""
        self.used.add(o.idx)
        self.dirty.add(o.idx)
        self.ever_dirty.add(o.idx)
        self.set_narrow(o.idx, o.size, ind)
        g = "g%d" % o.idx
        if o.high:
            self.emit(f"{g} = ({g} & 0xFFFFFFFFFFFF00FF) | (({v} & 0xFF) << 8)", ind)
        elif o.size in (4, 8):
            self.emit(f"{g} = {v}" if masked else f"{g} = ({v}) & {MASK[o.size]:#x}", ind)
        else:
            self.emit(f"{g} = ({g} & {_KEEP[o.size]:#x}) | ({v} & {MASK[o.size]:#x})", ind)

    def set_narrow(self, idx, size, ind=0):
        """Register ``idx`` was written with ``size`` bytes (``ind`` > 0: on
        one path only): 4 makes it narrow, 8 unknown, 1 and 2 keep it."""
        if size == 4 and not ind:
            self.narrow.add(idx)
        elif size >= 4:
            self.narrow.discard(idx)

    @staticmethod
    def wrapped(r, size, sign):
        """``r`` (a local) reduced to ``size`` bytes, as an expression, where
        ``sign`` bounds it: "add", 0 <= r < 2 * 2**bits (a sum of values of
        the size), or "sub", -2**bits - 1 <= r < 2**bits (a difference).  A
        comparison with a constant allocates nothing, unlike ``& mask`` on
        CPython, so the usual case (no wrap) costs less."""
        m = MASK[size]
        if sign == "add":
            return f"({r} if {r} <= {m:#x} else {r} & {m:#x})"
        return f"({r} if {r} >= 0 else {r} & {m:#x})"

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

    def _const(self, o):
        """The linear address of ``o`` if it is a compile-time constant
        (absolute or RIP-relative, no FS/GS base), else None."""
        if o.seg in (FS, GS) or not o.ea.startswith("0x"):
            return None
        return int(o.ea, 16)

    def _load(self, s, i, aligned):
        """Source of the value at RAM offset ``i`` (an expression)."""
        if s == 1:
            return f"ram[{i}]"
        if not _LITTLE:
            aligned = False
        if aligned is not False:
            self.views.add(s)
        sh = _SHIFT[s]
        if aligned is True:
            return f"M{s}[({i}) >> {sh}]"
        if aligned is False:
            return f"U{s}(ram, {i})[0]"
        return f"(M{s}[{i} >> {sh}] if not {i} & {s - 1} else U{s}(ram, {i})[0])"

    def _store(self, s, i, v, aligned, ind):
        if not _LITTLE:
            aligned = False
        if s != 1 and aligned is not False:
            self.views.add(s)
        if s == 1:
            self.emit(f"ram[{i}] = {v}", ind)
        elif aligned is True:
            self.emit(f"M{s}[({i}) >> {_SHIFT[s]}] = {v}", ind)
        elif aligned is False:
            self.emit(f"P{s}(ram, {i}, {v})", ind)
        else:
            self.emit(f"if {i} & {s - 1}:", ind)
            self.emit(f"P{s}(ram, {i}, {v})", ind + 1)
            self.emit("else:", ind)
            self.emit(f"M{s}[{i} >> {_SHIFT[s]}] = {v}", ind + 1)

    def mem_read(self, o, k, tag="v", into=None):
        """Emit a load of memory operand ``o``; returns the value's name.
        ``into`` names a local to load straight into (the load is the
        instruction's last step that can fault).  Inline: the read cache and,
        for an aligned access, a memoryview of RAM (``M2``/``M4``/``M8``);
        anything else in ``_rd``."""
        self.uses_mem = True
        v = into or f"{tag}{k}"
        if not self.long64:
            self.emit(f"{v} = cpu.read({o.seg}, {o.ea}, {o.size})")
            return v
        s = o.size
        c = self._const(o)
        if c is not None:
            x = c & 0xFFF
            if x > 0x1000 - s:
                self.emit(f"{v} = cpu.read({o.seg}, {c:#x}, {s})")
                return v
            self.emit(f"p{k} = frg({c >> 12:#x})")
            self.emit(f"{v} = {self._load(s, f'p{k} + {x:#x}', x % s == 0)} if p{k} is not None "
                      f"else cpu.read({o.seg}, {c:#x}, {s})")
            return v
        off, lin = self._lin(o, k)
        if s in (4, 8) and _LITTLE:
            # The address cache: one look-up, no page arithmetic (tlb.ADDR).
            self.views.add(s)
            self.addr.add(f"a{s}r")
            self.emit(f"ix{k} = a{s}rg({lin})")
            self.emit(f"{v} = M{s}[ix{k}] if ix{k} is not None else _rdA(cpu, {lin}, {o.seg}, {off}, {s})")
            return v
        if s == 1:
            # The byte address cache: one look-up, no page arithmetic.
            self.addr.add("a1r")
            self.emit(f"ix{k} = a1rg({lin})")
            self.emit(f"{v} = ram[ix{k}] if ix{k} is not None else _rd1(cpu, {lin}, {o.seg}, {off})")
            return v
        self.emit(f"p{k} = frg({lin} >> 12)")
        if _LITTLE:
            self.views.add(s)
            self.emit(f"if p{k} is not None and not {lin} & {s - 1}:")
            self.emit(f"{v} = M{s}[(p{k} + ({lin} & 0xFFF)) >> {_SHIFT[s]}]", 1)
            self.emit("else:")
            self.emit(f"{v} = _rd(cpu, p{k}, {lin}, {o.seg}, {off}, {s})", 1)
        else:
            self.emit(f"{v} = _rd(cpu, p{k}, {lin}, {o.seg}, {off}, {s})")
        return v

    def _slow_write(self, o, off, v, ind):
        self.emit(f"cpu.write({o.seg}, {off}, {o.size}, {v})", ind)
        self.emit("lim = -1", ind)            # MMIO or code: leave the region at the next transition
        self.slow_write = True

    def mem_write(self, o, k, v):
        """Emit a store of the (masked) value ``v``: inline through the write
        cache (an aligned access to a memoryview), anything else in ``_wr``,
        which returns True when it took the slow path (MMIO, translated code,
        a fault check)."""
        self.uses_mem = True
        if not self.long64:
            self._slow_write(o, o.ea, v, 0)
            return
        s = o.size
        c = self._const(o)
        code = None
        if c is not None:
            x = c & 0xFFF
            if x > 0x1000 - s:
                self._slow_write(o, f"{c:#x}", v, 0)
                return
            self.emit(f"q{k} = fwg({c >> 12:#x})")
            self._fc_probe(k, f"{c >> 12:#x}", x, s)
            self.emit(f"if q{k} is not None:")
            self._store(s, f"q{k} + {x:#x}", v, x % s == 0, 1)
            lin, off = f"{c:#x}", f"{c:#x}"
            code = (k, x, s, v)
        elif s in (4, 8) and _LITTLE:
            off, lin = self._lin(o, k)
            self.views.add(s)
            self.addr.add(f"a{s}w")
            self.emit(f"ix{k} = a{s}wg({lin})")
            self.emit(f"if ix{k} is not None:")
            self.emit(f"M{s}[ix{k}] = {v}", 1)
            self.slow_store(f"_wrA(cpu, {lin}, {o.seg}, {off}, {s}, {v})")
            self.slow_write = True
            self._slow_at = len(self.lines)
            return
        else:
            off, lin = self._lin(o, k)
            self.emit(f"q{k} = fwg({lin} >> 12)")
            if s == 1:
                self.emit(f"if q{k} is not None:")
                self.emit(f"ram[q{k} + ({lin} & 0xFFF)] = {v}", 1)
            elif not _LITTLE:
                self.emit(f"if q{k} is not None and ({lin} & 0xFFF) <= {0x1000 - s:#x}:")
                self._store(s, f"q{k} + ({lin} & 0xFFF)", v, False, 1)
            else:
                self.views.add(s)
                self.emit(f"if q{k} is not None and not {lin} & {s - 1}:")
                self.emit(f"M{s}[(q{k} + ({lin} & 0xFFF)) >> {_SHIFT[s]}] = {v}", 1)
        self.slow_store(f"_wr(cpu, q{k}, {lin}, {o.seg}, {off}, {s}, {v})", code)
        self.slow_write = True
        self._slow_at = len(self.lines)

    def _fc_probe(self, k, page, x, s):
        """After a write-cache miss for the constant page ``page``: the RAM
        offset from the code-page cache (``cpu.fc``) if bytes ``x``..``x+s``
        of that page are not translated code (data sharing a page with code)."""
        self.emit(f"if q{k} is None:")
        self.emit(f"c{k} = fcg({page})", 1)
        self.emit(f"if c{k} is not None and {_not_code(f'c{k}', x, s)}:", 1)
        self.emit(f"q{k} = c{k}[0]", 2)

    def rmw_read(self, o, k):
        """Read half of a read-modify-write memory operand; returns the value name.
        One write-cache lookup serves both halves: x86 has no write-only pages,
        and it only holds pages a write (hence a read) may touch without a fault.
        q<k> is the RAM offset both halves use, or None (the slow path)."""
        self.uses_mem = True
        if not self.long64:
            self.emit(f"a{k} = cpu.read({o.seg}, {o.ea}, {o.size})")
            return f"a{k}"
        s = o.size
        c = self._const(o)
        if c is not None:
            x = c & 0xFFF
            self._rmw = (f"{c:#x}", x % s == 0)
            if x > 0x1000 - s:
                self.emit(f"q{k} = None")
                self.emit(f"a{k} = cpu.read({o.seg}, {c:#x}, {s})")
                return f"a{k}"
            lin, off, page, cond = f"{c:#x}", f"{c:#x}", f"{c >> 12:#x}", f"q{k} is not None"
            add = f"{x:#x}"
        else:
            off, lin = self._lin(o, k)
            self._rmw = (off, None)
            page, add = f"{lin} >> 12", f"({lin} & 0xFFF)"
            cond = f"q{k} is not None" + ("" if s == 1 else f" and ({lin} & 0xFFF) <= {0x1000 - s:#x}")
        ind = 0
        if c is not None:
            prev = self._qprev
            if prev is not None and prev[1:] == (c, s):
                # The previous instruction of this block read-modify-wrote the
                # same constant address: its RAM offset still holds (nothing
                # between them can change the caches or the code map unless
                # it took the slow path, q None: then look up again).
                self.emit(f"q{k} = q{prev[0]}")
                self.emit(f"if q{k} is None:")
                ind = 1
            self._qmemo = (k, c, s)
            if isinstance(self.blk.key, tuple) and c >> 12 == self.blk.key[0] >> 12:
                # On the region's own page, which holds code: the code-page
                # cache first (a page is in one of the two).
                self.emit(f"q{k} = fcg({page})", ind)
                self.emit(f"if q{k} is not None:", ind)
                self.emit(f"q{k} = q{k}[0] + {add} if {_not_code(f'q{k}', x, s)} else None",
                          ind + 1)
                self.emit("else:", ind)
                self.emit(f"q{k} = fwg({page})", ind + 1)
                self.emit(f"if q{k} is not None:", ind + 1)
                self.emit(f"q{k} += {add}", ind + 2)
                self.emit(f"a{k} = {self._load(s, f'q{k}', self._rmw[1])} if q{k} is not None "
                          f"else cpu.read({o.seg}, {off}, {s})")
                return f"a{k}"
        self.emit(f"q{k} = fwg({page})", ind)
        self.emit(f"if {cond}:", ind)
        self.emit(f"q{k} += {add}", ind + 1)
        if c is not None:
            # A constant address on a page holding code (data next to code):
            # inline, fast unless these bytes are translated code.
            self.emit("else:", ind)
            self.emit(f"q{k} = fcg({page})", ind + 1)
            self.emit(f"q{k} = q{k}[0] + {add} if q{k} is not None and {_not_code(f'q{k}', x, s)} "
                      f"else None", ind + 1)
        else:
            self.emit("else:")
            self.emit(f"q{k} = _rmw(cpu, {lin}, {s})", 1)        # a code page, or the slow path
        self.emit(f"a{k} = {self._load(s, f'q{k}', self._rmw[1])} if q{k} is not None "
                  f"else cpu.read({o.seg}, {off}, {s})")
        return f"a{k}"

    def rmw_write(self, o, k, v):
        if not self.long64:
            self._slow_write(o, o.ea, v, 0)
            return
        off, aligned = self._rmw
        self.emit(f"if q{k} is None:")
        self._slow_write(o, off, v, 1)
        self.emit("else:")
        self._store(o.size, f"q{k}", v, aligned, 1)

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
            o.size = ins.opsz[n] or ins.osize
            if n == 1 and ins.vimm is not None:
                # A patched immediate (codepages.py): read from RAM each time.
                a, size, signed = ins.vimm
                v = "cpu.ram[%#x]" % a if size == 1 else \
                    "int.from_bytes(cpu.ram[%#x:%#x], 'little')" % (a, a + size)
                if signed:
                    sign = 1 << (8 * size - 1)
                    v = "(((%s) ^ %#x) - %#x)" % (v, sign, sign)
                o.value = None
                o.ea = "(%s) & %#x" % (v, MASK[ins.osize])
            else:
                o.value = getattr(ins, "get%d" % n)(None)   # the constant the handler sees
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
            if o.value is None:                     # a patched immediate
                self.emit(f"z{k} = {o.ea}")
                return f"z{k}"
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
        elif not self.seen_writer:
            self.emit("@ENTRYFLAGS%d@" % self.cur, ind)

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

    def flags_dead_after(self):
        """True if the arithmetic flags the current instruction produces are
        overwritten before anything can observe them: the rest of the block
        reaches an instruction that writes them all, with only instructions
        between that neither read flags nor can fault (a fault pushes RFLAGS)."""
        for ins in self.blocks_insns[self.pos[-1] + 1:]:
            e = _flags_effect(ins)
            if e != "N":
                return e == "W"
        return False

    # ------------------------------------------------------------ leaving and moving on
    def exit(self, rip, count, ind=0):
        """Leave the region at ``rip`` (a constant or a source) with ``count``
        more instructions retired: flags here, registers and RIP in the
        function's epilogue (after its loop); flags a transition left in
        locals (``lp``) are stored there too (``xf``), so each exit does not
        carry its own copy of that chain."""
        if self.pending is not None:
            self.emit(f"cpu.lf = {self.pending.tuple_src()}", ind)
        elif not self.seen_writer:
            self.emit("@EXITFLAGS%d@" % self.cur, ind)
        if count:
            self.emit(f"n += {count}", ind)
        self.emit(f"nip = {rip:#x}" if isinstance(rip, int) else f"nip = {rip}", ind)
        self.emit("break", ind)

    def goto(self, target, ind=0, final=False):
        """Continue at ``target`` after the current block: inside the region
        if it is a member, else leave.  ``final``: the block's last statement."""
        if target in self.vsel:
            self.goto_version(target, ind)
            return
        b = self.index.get(target)
        if b is None:
            self.exit(target, self.n, ind)
            return
        if b <= self.cur:
            self.loops = True
        self.trans.append((self.cur, b, self.pending, self.seen_writer, final))
        self.emit("@T%d@" % (len(self.trans) - 1), ind)

    def goto_version(self, target, ind=0):
        """Continue at ``target``, where the members are versions of one
        block: the one to run now (``LV``: engine.py ``live_version``, the live
        block, or the version of a group whose bytes RAM holds), checked
        like a backward transition; if none of them is (a version decoded
        after this region was compiled), leave."""
        self.loops = True
        sel = self.vsel[target]
        self.ns[f"VS{target:x}"] = sel.get
        self.ns[f"VK{target:x}"] = next(iter(sel)).key
        bk = f"vb{self.k}"          # not b<k>: an operand a flags tuple may name
        self.emit(f"{bk} = VS{target:x}(LV(VK{target:x}))", ind)
        self.emit(f"if {bk} is not None:", ind)
        self.emit(f"n += {self.n}", ind + 1)
        self.emit("if n > lim or cpu.pending or machine.stopping:", ind + 1)
        self.exit(target, 0, ind + 2)
        self.dyns.append((self.cur, self.pending, self.seen_writer, bk, tuple(sel.values())))
        self.emit("@DYN%d@" % (len(self.dyns) - 1), ind + 1)
        self.emit(f"pc = {bk}", ind + 1)
        self.emit("continue", ind + 1)
        self.exit(target, self.n, ind)

    def slow_store(self, call, code=None):
        """The ``elif`` branch of a store the caches did not take: ``call``
        (``_wr``/``_wrA``) is True when it took the slow path (MMIO,
        translated code, a fault check), and then the region is left at the
        next transition (``lim = -1``; after the instruction if code changed,
        ``after_slow_write``), unless all the store did was swap the live
        version of a block the region reaches only through ``goto_version``
        (``Engine.smc`` then holds that block's key, cleared before the store
        so only this store's write counts), other than the running one.
        ``code``: (k, page offset, size, value) of a store to a constant
        address whose page the code-page cache holds (``_fc_probe``: ``c<k>``
        is not None here only if the bytes are translated code): that write
        is done here, as ``_wr`` does it."""
        self.slow_write = True
        cur = self.members[self.cur].key
        vx = frozenset(b.key for sel in self.vsel.values() for b in sel) - {cur}
        if not vx:
            self.emit(f"elif {call}:")
            self.emit("lim = -1", 1)
            return
        self.ns[f"VX{self.cur}"] = vx
        self.emit("else:")
        self.emit("SMC[0] = 0", 1)
        if code is not None:
            k, x, s, v = code
            self.emit(f"if c{k} is not None:", 1)
            self.emit(f"w{k} = c{k}[0] + {x:#x}", 2)
            self._store(s, f"w{k}", v, x % s == 0, 2)
            self.emit("for watch in WW:", 2)
            self.emit(f"watch(w{k}, {s})", 3)
            self.emit(f"c{k} = True", 2)
            self.emit("else:", 1)
            self.emit(f"c{k} = {call}", 2)
            call = f"c{k}"
        self.emit(f"if {call}:", 1)
        self.emit(f"if SMC[0] in VX{self.cur}:", 2)
        self.emit("SMC[0] = 0", 3)
        self.emit("else:", 2)
        self.emit("lim = -1", 3)

    def goto_dynamic(self, t, looked_up=False, ret=False):
        """Emit: if the run-time target ``t`` starts a member, continue there
        (checked like a backward transition).  The flags are stored only if
        that member reads the flags it is entered with (``_dyn``: known once
        the region is generated).  ``looked_up``: ``b<k>`` already holds
        ``RM.get(t)`` (``RR.get(t)`` for a RET: ``ret``, which continues
        only at the return sites, ``ret_sites``)."""
        self.loops = True
        if ret:
            self.ns["RR"] = self.ret_sites
        else:
            self.ns["RM"] = self.dindex
        if not looked_up:
            self.emit(f"b{self.k} = {'RR' if ret else 'RM'}.get({t})")
        if ret and self.xc:
            # A return site on another page: continue there only while that
            # page is mapped as when it was decoded.
            self.ns["XC"] = self.xc
            self.emit(f"if b{self.k} in XC and fxg(XC[b{self.k}][0]) != XC[b{self.k}][1]:")
            self.emit(f"b{self.k} = None", 1)
        self.emit(f"if b{self.k} is not None:")
        self.emit(f"n += {self.n}", 1)
        self.emit("if n > lim or cpu.pending or machine.stopping:", 1)
        self.exit(t, 0, 2)
        targets = tuple(self.ret_sites.values()) if ret else tuple(self.dindex.values())
        self.dyns.append((self.cur, self.pending, self.seen_writer, f"b{self.k}", targets))
        self.emit("@DYN%d@" % (len(self.dyns) - 1), 1)
        self.emit(f"pc = b{self.k}", 1)
        self.emit("continue", 1)

    def _dyn(self, d):
        """Lines handing the flags over at dynamic transition ``d`` (see
        ``_transition``: stored for a member that reads them on entry, else
        left in locals, ``lp`` naming the producer)."""
        cur, prod, seen, bvar, _targets = self.dyns[d]
        if prod is not None:
            keep = [f"lp = {self._prod_id(prod)}"]
            store = [f"cpu.lf = {prod.tuple_src()}", "lp = -1"]
        elif seen or self.live_in[cur]:
            keep = store = ["lp = -1"]                     # cpu.lf is current
        else:
            keep = []                                      # still as lp says
            store = self._lp_chain() + ["lp = -1"]
        live = tuple(i for i, x in enumerate(self.live_in) if x)
        if not live or store == keep:
            return keep
        if len(live) == len(self.live_in):
            return store
        out = [f"if {bvar} in {live!r}:"] + ["    " + x for x in store]
        if keep:
            out += ["else:"] + ["    " + x for x in keep]
        return out

    def after_slow_write(self, ins):
        """Self-modifying code: a slow-path write that changed translated code
        (Engine.smc set) ends the region after this instruction, so a later
        instruction of the same block runs as rewritten (the handler of
        CodeChanged in except_src() leaves with the state after it)."""
        if self._slow_at == len(self.lines):
            # The slow path's branch ends the instruction: test there, so
            # the fast path pays nothing.
            ind = self.lines[-1][0]
            self.lines.append((ind, "if SMC[0]:", self.k))
            self.lines.append((ind + 1, "raise _CodeChanged", self.k))
        else:
            self.emit("if lim < 0 and SMC[0]:")
            self.emit("raise _CodeChanged", 1)
        self.smc_after[self.k] = (ins.next_ip, self.pending if self.pending is not None
                                  else (None if self.seen_writer else ("entry", self.cur)))

    # ------------------------------------------------------------ the region
    def generate(self):
        self.narrow_out = []
        for b, blk in enumerate(self.members):
            self.cur, self.n = b, blk.n
            self.pending, self.seen_writer, self.entry_flags_read = None, False, False
            self._ended = False
            self.narrow = _Narrow(self.narrow_in[b] if self.narrow_in else ())
            self.emit("@BLOCK%d@" % b)
            self.gen_block(blk)
            self.narrow_out.append((frozenset(self.narrow), self.narrow.killed))
            # Blocks that read the flags they are entered with get them in
            # cpu.lf; the others (most) in lp, for a fault or exit to store.
            self.live_in.append(self.entry_flags_read)
        self.k = -1
        return self.assemble()

    def narrow_entries(self):
        """After a pass with no register known narrow at any member's entry:
        per member, the registers narrow (zero-extended 32-bit values) at its
        entry on every path into it inside the region - the fixed point of
        in(b) = the intersection over b's predecessors p of out(p), with
        out(p) = what p leaves narrow itself, plus what it was entered with
        and did not write (``_Narrow.killed``).  The entry member (entered
        from the engine) and, when the region has dynamic transitions (RET
        to a call site), every member those may reach start with nothing
        known from outside."""
        nm = len(self.members)
        preds = [[] for _ in range(nm)]
        for a, b, _prod, _seen, _final in self.trans:
            preds[b].append(a)
        for cur, _prod, _seen, _bvar, targets in self.dyns:
            for b in targets:
                preds[b].append(cur)
        every = frozenset(range(16))
        nin = [frozenset()] + [every] * (nm - 1)

        def out(a):
            gen, killed = self.narrow_out[a]
            return gen if killed is None else gen | (nin[a] - killed)
        changed = True
        while changed:
            changed = False
            for b in range(1, nm):
                new = every
                for a in preds[b]:
                    new = new & out(a)
                if not preds[b]:
                    new = frozenset()
                if new != nin[b]:
                    nin[b], changed = new, True
        return nin

    def gen_block(self, blk):
        last = blk.n - 1
        self.blocks_insns = blk.insns
        self.stack = {}
        heads = {}
        if self.long64 and self.stack_bits == 64 and _LITTLE:
            for ops, lo, hi, writes in stack_groups(blk):
                first = ops[0][0]
                # The slot looked up: the first store's in a group that
                # writes (its address is in the write address cache), else
                # the first load's.
                ref = next((slot for p, slot in ops if _stack_kind(blk.insns[p], p == last)
                            in ("push", "call")), ops[0][1]) if writes else ops[0][1]
                heads[first] = (lo, hi, writes, ref)
                for p, slot in ops:
                    self.stack[p] = (first, slot - ref)
        self.based = {}
        bheads = {}
        if self.long64 and _LITTLE:
            for b, ops, lo, hi, writes in base_groups(blk):
                first = ops[0][0]
                ref = next((d for p, d, st in ops if st), ops[0][1]) if writes else ops[0][1]
                bheads[first] = (b, lo, hi, writes, ref)
                for p, d, st in ops:
                    self.based[p] = (first, (d - ref) // 8)
        if BULK_LOOPS and self.long64 and blk.insns[-1].target == blk.insns[0].ip:
            loop = _store_loop(blk)
            if loop is not None:
                self.k = len(self.pos)
                self.bulk_store_loop(*loop)
        self._qmemo = None
        for p, ins in enumerate(blk.insns):
            self.k = len(self.pos)
            k = self.k
            # rmw_read's constant address of the previous instruction, if it was one.
            self._qprev, self._qmemo = self._qmemo, None
            self.pos.append(p)
            self.ips.append(ins.ip)
            self.fix.append(("prod", self.pending) if self.pending is not None
                            else (None if self.seen_writer else ("entry", self.cur)))
            if p in heads:
                self.stack_head(*heads[p])
            if p in bheads:
                self.base_head(*bheads[p])
            tmpl = TEMPLATES.get(ins.fn) or _gif_template(ins.fn) or \
                (t_direct if getattr(ins.fn, "direct", None) is not None else None)
            mark = len(self.lines)
            ntrans = len(self.trans)
            state = (set(self.used), set(self.dirty), set(self.ever_dirty), self.pending,
                     self.seen_writer, self.entry_flags_read, self.uses_mem, self.uses_eb, self.loops,
                     set(self.narrow))
            narrow = self.narrow
            done = False
            self.slow_write = False
            if tmpl is not None:
                try:
                    done = tmpl(self, ins, k, p == last)
                except Unsupported:
                    done = False
                if done:
                    self.templated += 1
            if not done:
                del self.lines[mark:]
                del self.trans[ntrans:]
                (self.used, self.dirty, self.ever_dirty, self.pending, self.seen_writer,
                 self.entry_flags_read, self.uses_mem, self.uses_eb, self.loops, regs) = state
                # The same set (what the attempt killed stays killed: it only
                # makes the region-wide analysis more cautious).
                self.narrow = narrow
                set.clear(narrow)
                narrow.update(regs)
                self.slow_write = False
                self._qmemo = None
                self.generic(ins, k, p == last)
            if self.slow_write and not self._ended:
                self.after_slow_write(ins)
            if self._ended:
                return
        self.goto(blk.end_ip, final=True)

    _ended = False
    _qprev = _qmemo = None
    all_regs = False             # assemble(): every register loaded (FULL_LOAD)
    _slow_at = -1                # len(lines) right after a slow-path store's "lim = -1"

    def stack_head(self, lo, hi, writes, ref):
        """Start of a stack group (``stack_groups``): one address-cache
        look-up (tlb.ADDR) for every stack slot its pushes and pops use,
        [rSP + lo, rSP + hi) with rSP as here: ``sb<k>`` is the index in
        ``M8`` of slot ``ref`` (rSP + 8 * ref: an 8-byte store of the group
        if it writes, else its first load), each op indexing from it, or
        None when that slot is not cached (rSP not 8-aligned, say) or the
        slots are not all in its page (each op then takes its own path, as
        outside a group).  A cached slot's page is cached for the same
        accesses, so every slot in it is."""
        self.uses_mem = True
        self.views.add(8)
        self.used.add(4)
        j = self.k
        cache = "a8w" if writes else "a8r"
        self.addr.add(cache)
        at = "g4" if not ref else (f"g4 + {8 * ref:#x}" if ref > 0 else f"g4 - {-8 * ref:#x}")
        bounds = []
        if lo:
            bounds.append(f"{-lo:#x} <= sx{j}")
        if hi:
            bounds.append(f"sx{j} < {0x1000 - hi:#x}")      # rSP stays below 2**64
        self.emit(f"sx{j} = g4 & 0xFFF")
        self.emit(f"sb{j} = {cache}g({at}) if {' and '.join(bounds)} else None" if bounds
                  else f"sb{j} = {cache}g({at})")

    def base_head(self, b, lo, hi, writes, ref):
        """Start of a base group (``base_groups``): one address-cache look-up
        for the 8-byte MOVs at [B + d] that follow with B unchanged, as
        ``stack_head`` does for rSP: ``bb<k>`` is the index in ``M8`` of
        [B + ref], or None when that address is not cached or the group's
        bytes [B + lo, B + hi) are not all in its page (each MOV then takes
        its own path)."""
        self.uses_mem = True
        self.views.add(8)
        self.used.add(b)
        j = self.k
        cache = "a8w" if writes else "a8r"
        self.addr.add(cache)
        at = f"g{b}" if not ref else (f"g{b} + {ref:#x}" if ref > 0 else f"g{b} - {-ref:#x}")
        bounds = []
        if lo < 0:
            bounds.append(f"{-lo:#x} <= bx{j}")
        if hi > 1:
            bounds.append(f"bx{j} <= {0x1000 - hi:#x}")
        self.emit(f"bx{j} = g{b} & 0xFFF")
        self.emit(f"bb{j} = {cache}g({at}) if {' and '.join(bounds)} else None" if bounds
                  else f"bb{j} = {cache}g({at})")

    def base_slot(self):
        """(``bb`` name, slot) if the current instruction is in a base group."""
        e = self.based.get(self.pos[-1])
        if e is None:
            return None
        return f"bb{self.k - (self.pos[-1] - e[0])}", e[1]

    def stack_slot(self):
        """(``sb`` name, slot) if the current instruction is in a stack group."""
        e = self.stack.get(self.pos[-1])
        if e is None:
            return None
        return f"sb{self.k - (self.pos[-1] - e[0])}", e[1]

    def bulk_store_loop(self, ptr, end, val, size, first_off, end_first, exact):
        """A memset-style loop (store a register at [ptr], advance ptr by the
        store size, loop while ptr != end or ptr < end; see _store_loop): all
        but its last iteration, as far as the budget goes, are done as one
        slice assignment per page of RAM in the write cache (not code, not
        MMIO), counted as the instructions they are.  A page that is not in
        the write cache yet is translated for a write first, as its first
        store would be (``_bulk_page``: the same walk, with the same Accessed
        and Dirty updates, at the same point); where that does not give a
        plain RAM page, or a store would straddle two pages, the iterations
        run as compiled below, one at a time, the store on its own path.
        The last iteration also runs below and sets flags and RIP.  Where
        the quantum's end is what stops it, the machine may let it run
        further (Machine.run_ahead: the other CPUs halted, no timer due for
        a while), the CPU paying for the extra iterations as stall."""
        j = self.k
        for r in (ptr, end, val):
            self.used.add(r)
        self.dirty.add(ptr)
        self.ever_dirty.add(ptr)
        self.narrow.discard(ptr)
        m = MASK[size]
        self.emit(f"sd{j} = g{end} - g{ptr}")
        exact = f" and not sd{j} % {size}" if exact else ""
        self.emit(f"if sd{j} > {size}{exact}:")
        self.emit("while True:", 1)
        self.emit(f"sa{j} = g{ptr} + {first_off}", 2)
        self.emit(f"sx{j} = sa{j} & 0xFFF", 2)
        self.emit(f"sp{j} = (0x1000 - sx{j}) // {size}", 2)
        self.emit(f"sc{j} = min((sd{j} - 1) // {size}, sp{j})", 2)
        self.emit(f"if sc{j} > (lim - n) // {self.n}:", 2)
        self.emit(f"sc{j} = min(sc{j}, (lim - n + cpu.machine.run_ahead(cpu)) // {self.n})", 3)
        self.emit(f"if sc{j} <= 0:", 2)
        self.emit("break", 3)
        self.emit(f"sq{j} = fwg(sa{j} >> 12)", 2)
        self.emit(f"if sq{j} is None:", 2)
        self.emit(f"sq{j} = _bulkpg(cpu, sa{j})", 3)
        self.emit(f"if sq{j} is None:", 3)
        self.emit("break", 4)
        self.emit(f"sq{j} += sx{j}", 2)
        self.emit(f"ram[sq{j}:sq{j} + sc{j} * {size}] = (g{val} & {m:#x}).to_bytes({size}, 'little') * sc{j}", 2)
        self.emit(f"g{ptr} = (g{ptr} + sc{j} * {size}) & {MASK64:#x}", 2)
        self.emit(f"n += {self.n} * sc{j}", 2)
        # The flags are the last bulk iteration's CMP's: a fault or a code
        # change at the store that follows must leave them, not those the
        # block was entered with (nor an earlier iteration's in locals).
        a, b = (end, ptr) if end_first else (ptr, end)
        self.emit(f"cpu.lf = {Prod(OP_SUB, 64, f'g{a}', f'g{b}', f'(g{a} - g{b})', 0).tuple_src()}", 2)
        self.emit("lp = -1", 2)
        # On to the next page only if this one is done.
        self.emit(f"if sc{j} < sp{j}:", 2)
        self.emit("break", 3)
        self.emit(f"sd{j} = g{end} - g{ptr}", 2)
        self.uses_mem = True

    def generic(self, ins, k, is_last):
        """Call the handler (flags and registers are synchronised around it)."""
        self.emit("@FLUSH@")
        self.store_flags()
        if not self.seen_writer:
            self.entry_flags_read = True  # it may read the flags the block was entered with
        self.pending = None
        self.seen_writer = True          # cpu.lf is current from here on
        self.ns["h%d" % k] = ins.fn
        self.ns["i%d" % k] = ins
        self.emit("@QEXEC@")
        self.emit(f"h{k}(cpu, i{k})")
        self.narrow.clear()
        if ins.ends_block:
            self.emit(f"return n + {self.n}")
            self._ended = True
            return
        self.emit("@RELOAD@")
        if _stays(ins.fn, self.long64):
            # Registers, FS/GS bases (reloaded above) and memory only: leave
            # as any slow write does, if it changed code or a hook stopped.
            self.emit("if SMC[0] or cpu.machine.stopping:")
            self.emit("lim = -1", 1)
        else:
            # It may have changed anything (mode, pending interrupts, code):
            # leave the region at the next transition, or now if code changed.
            self.emit("lim = -1")
        self.slow_write = True

    # ------------------------------------------------------------ assembling
    def _prod_id(self, p):
        for i, q in enumerate(self.prods):
            if q is p:
                return i
        self.prods.append(p)
        return len(self.prods) - 1

    def _lp_chain(self):
        """Source that stores the flags a transition left in locals (lp >= 0)."""
        out = []
        for i, p in enumerate(self.prods):
            out.append(f"{'if' if i == 0 else 'elif'} lp == {i}:")
            out.append(f"    cpu.lf = {p.tuple_src()}")
        return out

    def _lf_by_k(self, groups, lp_ks):
        """Source that stores cpu.lf as of leaving at instruction ``k``:
        ``groups`` maps a producer's tuple source to the k it holds at,
        ``lp_ks`` are the k where the flags are still in locals (``lp``)."""
        out, first = [], True
        for tup, ks in groups.items():
            out.append(f"{'if' if first else 'elif'} k in {tuple(ks)!r}:")
            out.append(f"    cpu.lf = {tup}")
            first = False
        chain = self._lp_chain() if lp_ks else []
        if chain:
            out.append(f"{'if' if first else 'elif'} k in {tuple(lp_ks)!r}:")
            out += ["    " + c for c in chain]
        return out

    def _transition(self, t):
        """Lines of transition ``t``: count the block, check the budget (and,
        going backwards, interrupts and stop requests), hand over the flags:
        stored if the target block reads them, else left in locals (``lp``
        names the producer, -1: cpu.lf is current) for a fault to store."""
        a, b, prod, seen, final = self.trans[t]
        out = [f"n += {self.members[a].n}"]
        test = "n > lim or cpu.pending or machine.stopping" if b <= a else "n > lim"
        if self._cross(a, b):
            test += f" or fxg({self.lpage[b]:#x}) != {self.members[b].page:#x}"
        out.append(f"if {test}:")
        in_lp = prod is None and not seen and not self.live_in[a]   # flags still as lp says
        if prod is not None:
            out.append(f"    cpu.lf = {prod.tuple_src()}")
        elif in_lp and self.prods:
            out.append("    xf = 1")                  # the epilogue stores them
        out.append(f"    nip = {self.members[b].insns[0].ip:#x}")
        out.append("    break")
        if prod is not None and self.live_in[b]:
            out.append(f"cpu.lf = {prod.tuple_src()}")
        elif prod is not None:
            out.append(f"lp = {self._prod_id(prod)}")
        elif in_lp and self.live_in[b]:
            out += self._lp_chain()                # the target reads cpu.lf
        elif not in_lp and not self.live_in[b]:
            out.append("lp = -1")                  # cpu.lf is current
        if len(self.members) > 1:
            out.append(f"pc = {b}")
        if not (final and b == a + 1):
            out.append("continue")
        return out

    def _cross(self, a, b):
        """Whether the transition from member ``a`` to ``b`` must check that
        ``b``'s page is mapped as it was decoded: it moves to another page
        than ``a``'s and the region's first (checked by the engine); a
        member on the same page as ``a`` was checked getting to ``a`` (or
        at the RET to the predicted return site, ``xc``)."""
        lp = self.lpage
        return lp[b] != lp[a] and lp[b] != lp[0]

    def _flush_lines(self):
        if self.all_regs and len(self.ever_dirty) >= FULL_FLUSH:
            # Every register is a local (all_regs): one slice store.
            return ["regs[:] = " + ", ".join("g%d" % i for i in range(16))]
        return ["regs[%d] = g%d" % (i, i) for i in sorted(self.ever_dirty)]

    def assemble(self):
        """Build the function source; returns (source, line map)."""
        regs = sorted(self.used)
        multi = len(self.members) > 1
        # Named after the guest address, so a profile (svmsim run --profile)
        # shows which guest code the time went to.
        pre = [f"def blk_{self.start:x}(cpu, budget, pc=0):", "    regs = cpu.regs"]
        # Entered at member pc > 0 (Engine._compile lends the function to the
        # other members): the registers that member counts as narrow on entry
        # (narrow_entries) must be; if one is not, decline (-1: the engine
        # runs the block itself).
        checks = {b: tuple(sorted(r)) for b, r in enumerate(self.narrow_in or ()) if b and r}
        if checks:
            self.ns["NCHK"] = checks
            pre += ["    if pc in NCHK:", "        for i in NCHK[pc]:",
                    "            if regs[i] > 0xffffffff:", "                return -1"]
        reload = []
        if self.uses_mem and self.long64:
            # Only the caches the code looks up (a region of address-cache
            # accesses needs no page cache).
            text = "\n".join(t for _, t, _ in self.lines)
            reload += [f"{c}g = cpu.{c}.get" for c in ("fr", "fw", "fc") if f"{c}g(" in text]
            reload += [f"{a}g = cpu.{a}.get" for a in sorted(self.addr)]
            if re.search(r"\bram\b", text):
                pre.append("    ram = cpu.ram")
            pre += [f"    M{v} = cpu.ram_views[{v}]" for v in sorted(self.views)]
        if self.xc or any(self._cross(a, b) for a, b, *_ in self.trans):
            reload.append("fxg = cpu.fx.get")
        if self.uses_eb:
            reload += ["eb4 = cpu.ebase[4]", "eb5 = cpu.ebase[5]"]
        # Many registers: all sixteen in one unpack (cheaper than a load
        # each), and then every one is a local the flush may store.
        self.all_regs = len(regs) >= FULL_LOAD
        if self.all_regs:
            reload.append(", ".join("g%d" % i for i in range(16)) + " = regs")
        else:
            reload += ["g%d = regs[%d]" % (i, i) for i in regs]
        pre += ["    " + s for s in reload]
        if self.loops:
            pre.append("    machine = cpu.machine")
        moves = bool(self.trans) or self.loops          # n may be non-zero at a handler call
        if moves:
            pre.append("    q_entry = cpu.q_exec")
        # Leave at the first block end with n >= budget: where the engine's
        # loop (Engine._run) ends the quantum, so one call runs it to the end.
        pre += ["    n = 0", "    lim = budget - 1"]
        if any(not x for x in self.live_in):
            pre += ["    lp = -1", "    xf = 0"]
        pre += ["    try:", "        while True:"]
        out = list(pre)
        line_of = [-1] * (len(pre) + 1)      # line numbers are 1-based
        # Many members: the "pc ==" tests are grouped under "pc <=" tests,
        # so reaching member b takes about 2 * sqrt(members) tests, not b.
        nm = len(self.members)
        group = int(nm ** 0.5 + 0.999) if nm > 4 else 0
        base = (20 if group else 16) if multi else 12
        for a, b, prod, seen, final in self.trans:
            if prod is not None and not self.live_in[b]:
                self._prod_id(prod)
        for cur, prod, seen, bvar, _targets in self.dyns:
            if prod is not None and not all(self.live_in):
                self._prod_id(prod)
        lp_chain = self._lp_chain()
        for indent, text, k in merge_group_tests(self.lines):
            if text.startswith("@BLOCK"):
                b = int(text[6:-1])
                if group and b % group == 0:
                    out.append(" " * 12 + f"if pc <= {min(b + group, nm) - 1}:")
                    line_of.append(-1)
                if multi:
                    out.append(" " * (16 if group else 12) + f"if pc == {b}:")
                    line_of.append(-1)
                continue
            pad = " " * (base + 4 * indent)
            if text == "@RELOAD@":
                texts = reload
            elif text == "@FLUSH@":
                texts = self._flush_lines()
            elif text == "@QEXEC@":
                # A handler may read the time (RDTSC): instructions of the
                # blocks this call already ran count (machine.now_ns).
                texts = ["cpu.q_exec = q_entry + n"] if moves else []
            elif text.startswith("@DYN"):
                texts = self._dyn(int(text[4:-1]))
            elif text.startswith("@ENTRYFLAGS"):
                texts = [] if self.live_in[int(text[11:-1])] else lp_chain
            elif text.startswith("@EXITFLAGS"):
                texts = [] if self.live_in[int(text[10:-1])] or not lp_chain else ["xf = 1"]
            elif text.startswith("@T"):
                texts = self._transition(int(text[2:-1]))
            else:
                texts = [text]
            for t in texts:
                out.append(pad + t)
                line_of.append(k)
        epilogue = (["if xf:"] + ["    " + c for c in lp_chain] if lp_chain else []) + \
            self._flush_lines() + ["cpu.rip = nip", "return n"]
        out += ["        " + e for e in epilogue]
        line_of += [-1] * len(epilogue)
        out.append("    except _CpuException as e:")
        line_of.append(-1)
        handler = self.except_src()
        out += ["        " + s for s in handler]
        if self.smc_after:
            out.append("    except _CodeChanged as e:")
            line_of += [-1] * (len(handler) + 1)
            handler = self.smc_src()
            out += ["        " + s for s in handler]
        src = "\n".join(out) + "\n"
        return src, tuple(line_of + [-1] * (len(handler) + 2))

    def smc_src(self):
        """Leave after instruction k, whose write changed translated code."""
        s = ["k = LK[e.__traceback__.tb_lineno]", "SMC[0] = 0"]
        s += self._flush_lines()
        groups, lp_ks = {}, []
        for k, (nip, f) in self.smc_after.items():
            if isinstance(f, Prod):
                groups.setdefault(f.tuple_src(), []).append(k)
            elif f is not None and not self.live_in[f[1]]:
                lp_ks.append(k)
        s += self._lf_by_k(groups, lp_ks)
        self.ns["SMCRIP"] = {k: nip for k, (nip, f) in self.smc_after.items()}
        s += ["cpu.rip = SMCRIP[k]", "return n + POS[k] + 1"]
        return s

    def except_src(self):
        s = ["k = LK[e.__traceback__.tb_lineno]"]
        s += self._flush_lines()
        # cpu.lf as of the instruction before k (dead stores were skipped).
        groups = {}
        lp_ks = []
        for k, f in enumerate(self.fix):
            if f is None:
                continue
            if f[0] == "prod":
                groups.setdefault(f[1].tuple_src(), []).append(k)
            elif not self.live_in[f[1]]:
                lp_ks.append(k)
        s += self._lf_by_k(groups, lp_ks)
        self.ns["POS"] = tuple(self.pos)
        self.ns["IPS"] = tuple(self.ips)
        s += ["cpu.fault_n = n + POS[k]", "cpu.fault_ip = IPS[k]", "raise"]
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
        if logic == "&" and s.kind == "imm" and d.kind == "reg" and not d.high:
            a = "g%d" % d.idx                 # the immediate is within the size: no mask needed
        if logic in ("&", "|") and a == b:
            b = None                          # x & x, x | x: x
        if logic:
            if write and d.kind == "reg" and d.size >= 4 and not d.high:
                g.used.add(d.idx)
                g.dirty.add(d.idx)
                g.ever_dirty.add(d.idx)
                g.set_narrow(d.idx, d.size)
                g.emit(f"g{d.idx} = r{k} = {a} {logic} {b}" if b is not None else f"g{d.idx} = r{k} = {a}")
            else:
                g.emit(f"r{k} = {a} {logic} {b}" if b is not None else f"r{k} = {a}")
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
        if not write and not adc:
            # CMP: the difference only feeds the flags; the lazy tuple and
            # the conditions compute it from a<k> and b<k> where needed.
            g.set_prod(Prod(op, bits, a, b, f"({a} {sign} {b})", 0, exact=exact))
            return True
        g.emit(f"r{k} = {a} {sign} {b}{extra}")
        if not keep_a:
            a = f"(r{k} - {b} - {c})" if adc else f"(r{k} - {b})"
        if write:
            wr = g.wrapped(f"r{k}", size, "add" if op == OP_ADD else "sub") if size >= 4 \
                else f"r{k} & {MASK[size]:#x}"
            if rmw:
                g.rmw_write(d, k, wr)
            elif d.kind == "reg" and size >= 4 and not d.high:
                g.reg_write(d, wr, masked=True)
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
        wr = g.wrapped(f"r{k}", size, "add" if op == OP_INC else "sub") if size >= 4 \
            else f"r{k} & {MASK[size]:#x}"
        if d.kind == "mem":
            a = g.rmw_read(d, k)
            g.emit(f"r{k} = {a} {sign} 1")
            g.rmw_write(d, k, wr)
        else:
            g.emit(f"r{k} = {g.reg_read(d)} {sign} 1")
            a = f"(r{k} {'-' if op == OP_INC else '+'} 1)"
            if size >= 4 and not d.high:
                g.reg_write(d, wr, masked=True)
            else:
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
    grp = g.base_slot()
    if grp is not None:
        # In a base group (Gen.base_head): index its page directly; the
        # ordinary code below is the fallback.
        bbn, slot = grp
        at = f"M8[{_slot_ix(bbn, slot)}]"
        if d.kind == "reg":
            g.used.add(d.idx)
            g.dirty.add(d.idx)
            g.ever_dirty.add(d.idx)
            g.emit(f"if {bbn} is not None:")
            g.emit(f"g{d.idx} = {at}", 1)
            g.emit("else:")
            g.ind += 1
            g.mem_read(s, k, into="g%d" % d.idx)
            g.ind -= 1
            g.set_narrow(d.idx, 8)
            return True
        v = g.read(s, k)
        g.emit(f"if {bbn} is not None:")
        g.emit(f"{at} = {v}", 1)
        g.emit("else:")
        g.ind += 1
        g.mem_write(d, k, v)
        g.ind -= 1
        return True
    if s.kind == "mem" and d.kind == "reg" and d.size >= 4 and not d.high:
        g.used.add(d.idx)
        g.dirty.add(d.idx)
        g.ever_dirty.add(d.idx)
        g.mem_read(s, k, into="g%d" % d.idx)
        g.set_narrow(d.idx, d.size)
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


def t_cbw(g, ins, k, is_last):
    """CBW / CWDE / CDQE (APM vol 3): AX, EAX or RAX = the sign extension of
    the lower half of itself; no flags.  Templated so a region goes on after
    it (a generic call leaves at the next transition: kvm-unit-tests'
    page_memalign_order_flags widens its area mask with CDQE on every
    allocation)."""
    bits = ins.osize * 8
    src, dst = Opnd(), Opnd()
    for o, size in ((src, ins.osize // 2), (dst, ins.osize)):
        o.kind, o.idx, o.size, o.high = "reg", 0, size, False
    sign = 1 << (bits // 2 - 1)
    g.emit(f"v{k} = ({g.reg_read(src)} ^ {sign:#x}) - {sign:#x}")
    g.write(dst, k, f"v{k}")
    return True


def t_lea(g, ins, k, is_last):
    d = g.operand(ins, 0)
    if d.kind != "reg" or ins.iced.op_kind(1) != OpKind.MEMORY:
        raise Unsupported("lea form")
    g._raw = None
    ea = g.ea_src(ins)
    raw = g._raw if ea.startswith("((") else None
    if raw is None or d.high or d.size < 4 or ins.asize < d.size:
        g.write(d, k, ea)
    elif " - " in raw:
        g.reg_write(d, raw)                  # & mask: a negative displacement
    else:
        # Registers and a displacement, all below 2**64: the sum is below
        # 2**66 and not negative (the wrap test of wrapped() holds for it).
        g.emit(f"e{k} = {raw}")
        m = MASK[d.size]
        g.reg_write(d, f"(e{k} if e{k} <= {m:#x} else e{k} & {m:#x})", masked=True)
    return True


def t_nop(g, ins, k, is_last):
    g.emit("pass")
    return True


# -- stack (state.py Cpu.push/pop, by stack size) -------------------------
def _slot_ix(sbn, slot):
    """The M8 index of a stack group's slot, ``slot`` from its reference."""
    if not slot:
        return sbn
    return f"{sbn} + {slot}" if slot > 0 else f"{sbn} - {-slot}"


def _push(g, k, v, size, ins=None, check_smc=False):
    """Emit a push of value source ``v`` (masked); rSP changes after the write.
    In a stack group (Gen.stack_head) the store indexes the group's page
    directly, and the code below is the fallback; ``check_smc``: the
    fallback's write may change code that runs later in this block."""
    grp = g.stack_slot() if size == 8 else None
    if grp is not None:
        sbn, slot = grp
        g.used.add(4)
        g.dirty.add(4)
        g.ever_dirty.add(4)
        g.narrow.discard(4)
        g.emit(f"if {sbn} is not None:")
        g.emit(f"M8[{_slot_ix(sbn, slot)}] = {v}", 1)
        g.emit("g4 -= 8", 1)
        g.emit("else:")
        g.ind += 1
        _push_plain(g, k, v, size)
        if check_smc and g.slow_write:
            g.after_slow_write(ins)
            g.slow_write = False
        g.ind -= 1
        return
    _push_plain(g, k, v, size)


def _push_plain(g, k, v, size):
    sb = g.stack_bits
    g.used.add(4)
    m = MASK[sb // 8]
    if sb == 64:
        g.emit(f"s{k} = g4 - {size} if g4 >= {size} else (g4 - {size}) & {m:#x}")
    else:
        g.emit(f"s{k} = (g4 - {size}) & {m:#x}")
    so = Opnd()
    so.kind, so.size, so.seg, so.ea, so.high = "mem", size, SS, f"s{k}", False
    g.mem_write(so, k, v)
    sp = Opnd()
    sp.kind, sp.idx, sp.size, sp.high = "reg", 4, (sb // 8), False
    if sb == 16:
        g.reg_write(sp, f"s{k}")
    else:
        g.reg_write(sp, f"s{k}", masked=True)


def _pop(g, k, size, update=False):
    """Emit a pop into v<k>; returns the source of the new rSP (not yet
    assigned), or with ``update`` assigns it and returns None.  In a stack
    group the load indexes the group's page (see _push); there rSP cannot
    wrap (the group's slots end below the end of their page)."""
    grp = g.stack_slot() if size == 8 else None
    if grp is not None:
        sbn, slot = grp
        g.emit(f"if {sbn} is not None:")
        g.emit(f"v{k} = M8[{_slot_ix(sbn, slot)}]", 1)
        if update:
            g.emit("g4 += 8", 1)
        g.emit("else:")
        g.ind += 1
        newsp = _pop_plain(g, k, size)
        if update:
            g.emit(f"g4 = {newsp}")
        g.ind -= 1
        return None if update else newsp
    newsp = _pop_plain(g, k, size)
    if update:
        g.emit(f"g4 = {newsp}")
        return None
    return newsp


def _pop_plain(g, k, size):
    sb = g.stack_bits
    g.used.add(4)
    so = Opnd()
    so.kind, so.size, so.seg, so.high = "mem", size, SS, False
    so.ea = "g4" if sb == 64 else f"(g4 & {MASK[sb // 8]:#x})"
    g.mem_read(so, k, "v")
    if sb == 16:
        return f"(g4 & {_KEEP[2]:#x}) | ((g4 + {size}) & 0xFFFF)"
    m = MASK[sb // 8]
    if sb == 64:
        return f"g4 + {size} if g4 <= {m - size:#x} else (g4 + {size}) & {m:#x}"
    return f"(g4 + {size}) & {m:#x}"


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
    _push(g, k, v, size, ins, check_smc=True)
    return True


def t_pop(g, ins, k, is_last):
    if ins.get0 is None:
        raise Unsupported("pop sreg")
    d = g.operand(ins, 0)
    if d.kind != "reg":
        raise Unsupported("pop to memory")
    _pop(g, k, ins.osize, update=True)
    g.dirty.add(4)
    g.ever_dirty.add(4)
    g.narrow.discard(4)
    g.reg_write(d, f"v{k}", masked=d.size >= 4)
    return True


# -- control transfers (ops/control.py) -----------------------------------
def _target_ok(g, target):
    """Compile-time canonical check in 64-bit mode; None when it must be runtime."""
    if g.long64:
        if ((target + (1 << 47)) & 0xFFFFFFFFFFFFFFFF) >> 48:
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
    g.goto(t, 1)
    g.goto(ins.next_ip, final=True)
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
        g.goto(t, final=True)
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
        g.emit(f"if (({t} + 0x800000000000) & 0xFFFFFFFFFFFFFFFF) >> 48:", ind)
        g.emit("raise _gp(0, 'non-canonical branch target')", ind + 1)
    else:
        _check_cs_limit(g, t, ind)


def _exit_dynamic(g, t, looked_up=False):
    """Go on at the run-time target ``t``: a member of the region (a return
    to a call site in it, say) continues there, anything else leaves."""
    if len(g.members) > 1:
        g.goto_dynamic(t, looked_up)
    g.exit(t, g.n)
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
    if ins.get0 is None:
        g.goto(ins.target, final=True)
        g._ended = True
    else:
        _exit_dynamic(g, tsrc)
    return True


def t_ret(g, ins, k, is_last):
    if not is_last:
        raise Unsupported("ret position")
    size = ins.osize
    newsp = _pop(g, k, size)
    looked_up = g.long64 and len(g.members) > 1 and bool(g.ret_sites)
    if looked_up:
        # A member's address is canonical: check only a target outside the region.
        g.ns["RR"] = g.ret_sites
        g.emit(f"b{k} = RR.get(v{k})")
        g.emit(f"if b{k} is None and ((v{k} + 0x800000000000) & 0xFFFFFFFFFFFFFFFF) >> 48:")
        g.emit("raise _gp(0, 'non-canonical branch target')", 1)
    else:
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
    g.narrow.discard(4)
    if len(g.members) > 1 and g.ret_sites:
        g.goto_dynamic(f"v{k}", looked_up, ret=True)
    g.exit(f"v{k}", g.n)
    g._ended = True
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


def _flags_effect(ins):
    """'W': writes every arithmetic flag and cannot fault; 'N': neither reads
    nor writes flags and cannot fault; 'R': anything else (reads them, may
    fault, or unknown)."""
    i = ins.iced
    if any(i.op_kind(n) == OpKind.MEMORY for n in range(i.op_count)):
        return "R"
    fn = ins.fn
    if fn in _FLAG_WRITERS:
        return "W"
    if fn in _SHIFTS:
        return "W" if i.op_count > 1 and i.op_kind(1) in _IMM_KINDS and ins.imm & 0x1F else "R"
    if fn in _FLAG_NEUTRAL:
        return "N"
    return "R"


_FLAG_WRITERS = {arith.add, arith.sub, arith.cmp, arith.and_, arith.or_, arith.xor, arith.test, arith.neg,
                 arith.imul}
_FLAG_NEUTRAL = {data.mov, data.movzx, data.movsx, data.lea, data.nop, arith.not_, arith.cbw}
_SHIFTS = set() if _shift is None else {_shift.shl, _shift.shr, _shift.sar}
_STACK_NEUTRAL = set(_FLAG_WRITERS | _FLAG_NEUTRAL | _SHIFTS
                      | {arith.adc, arith.sbb, arith.inc, arith.dec, data.setcc, data.cmovcc})
_NEAR_RETS = {Code.RETNQ, Code.RETNQ_IMM16}


def _store_loop(blk):
    """(ptr, end, value, size, first store's offset from ptr, end first,
    exact) if ``blk`` is a memset-style self-loop of 64-bit registers: a
    store ``mov [ptr+d], value`` and ``add ptr, size`` (or ``inc``/``lea``)
    in either order, ``cmp ptr, end`` + ``jne``/``jb`` or ``cmp end, ptr`` +
    ``jne``/``ja``; else None.  ``end first``: the CMP is ``cmp end, ptr``;
    ``exact``: the branch is ``jne`` (an exact count is needed), not
    ``jb``/``ja`` (loop while below)."""
    if blk.n != 4:
        return None
    cmp_, jcc = blk.insns[2], blk.insns[3]
    if jcc.fn is not control.jcc or cmp_.fn is not arith.cmp:
        return None
    c = _regs_of(cmp_)
    if c is None or c[0][1] != 8 or c[1][1] != 8:
        return None
    store = step = None
    off = 0
    for ins in blk.insns[:2]:
        i = ins.iced
        if ins.fn is data.mov and i.op0_kind == OpKind.MEMORY and i.op1_kind == OpKind.REGISTER:
            store = ins
        elif step is None:
            step = ins
            if store is None:
                off = None                       # the pointer advances before the store
    if store is None or step is None:
        return None
    i = store.iced
    g = GPR.get(i.op1_register)
    base = GPR.get(i.memory_base)
    if g is None or g[2] or base is None or base[1] != 8 or i.memory_index != R.NONE \
            or store.seg in (FS, GS) or store.asize != 8:
        return None
    ptr, val, size = base[0], g[0], g[1]
    if val == ptr or store.mem_size != size:
        return None
    if _advance(step, ptr) != size:
        return None
    disp = i.memory_displacement
    disp = disp - (1 << 64) if disp >> 63 else disp
    first = disp + (size if off is None else 0)
    cc = jcc.cc - 1
    (r0, _), (r1, _) = c
    if r0 == ptr and r1 != ptr and cc in (2, 5):           # cmp ptr, end: jb / jne
        end, end_first = r1, False
    elif r1 == ptr and r0 != ptr and cc in (7, 5):         # cmp end, ptr: ja / jne
        end, end_first = r0, True
    else:
        return None
    return ptr, end, val, size, first, end_first, cc == 5


def _stack_kind(ins, last):
    """How ``ins`` takes part in a stack group: 'push'/'pop' (a 64-bit push
    or pop of a general register other than rSP, or push of an immediate),
    'call' (a direct call ending the block) or 'ret' (RET, RET imm16 ending
    the block), 'neutral' (a templated instruction whose operands are general
    registers other than rSP, immediates or memory: it leaves rSP and the
    address translation alone), or None (ends any group)."""
    i = ins.iced
    fn = ins.fn
    if fn is data.push or fn is data.pop:
        if ins.osize != 8 or ins.get0 is None or i.op_count != 1:
            return None
        kind = i.op0_kind
        if kind == OpKind.REGISTER:
            g = GPR.get(i.op0_register)
            if g is None or g[0] == 4 or g[1] != 8 or g[2]:
                return None
        elif fn is data.pop or kind not in _IMM_KINDS:
            return None
        return "push" if fn is data.push else "pop"
    if fn is control.call:
        if last and ins.osize == 8 and ins.get0 is None and ins.target is not None \
                and not i.is_call_far and i.op0_kind not in (OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32):
            return "call"
        return None
    if fn is control.ret:
        return "ret" if last and ins.osize == 8 and i.code in _NEAR_RETS else None
    if fn not in _STACK_NEUTRAL:
        return None
    for n in range(i.op_count):
        kind = i.op_kind(n)
        if kind == OpKind.REGISTER:
            g = GPR.get(i.op_register(n))
            if g is None or g[0] == 4:
                return None
        elif kind != OpKind.MEMORY and kind not in _IMM_KINDS:
            return None                      # (a memory operand may use rSP: it is kept current)
    return "neutral"


_GROUP_TEST = re.compile(r"if [bs]b\d+ is not None:$")
_MOVE = re.compile(r"g\d+ = v\d+$")


def _branches(lines, i):
    """The if-statement at ``lines[i]``: (its body, its else line, the else
    body, the index after it), or None when it has no plain else."""
    ind, n, j = lines[i][0], len(lines), i + 1
    while j < n and lines[j][0] > ind:
        j += 1
    if j == n or lines[j][0] != ind or lines[j][1] != "else:":
        return None
    e = j
    j += 1
    while j < n and lines[j][0] > ind:
        j += 1
    return lines[i + 1:e], lines[e], lines[e + 1:j], j


def merge_group_tests(lines):
    """The generated lines with the tests of a stack or base group's index
    (``stack_head``, ``base_head``: "if sb<k> is not None:" / "else:") that
    follow each other merged: ``if X: A1 else: B1`` then ``if X: A2 else: B2``
    becomes ``if X: A1 A2 else: B1 B2``.  Nothing assigns X after its head,
    so either way A1, A2 or B1, B2 run, in that order (a hypervisor's
    register save and restore: one test per group instead of one per
    instruction).  Each line keeps its instruction (faults, SMC exits)."""
    out = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        parts = _GROUP_TEST.match(line[1]) and _branches(lines, i)
        if not parts:
            out.append(line)
            i += 1
            continue
        body, else_line, other, j = parts
        body, other = list(body), list(other)
        while True:
            # Register moves between two tests (a pop's "g15 = v16") go into
            # both branches, where they ran after either.
            m = j
            while m < n and lines[m][0] == line[0] and _MOVE.match(lines[m][1]):
                m += 1
            more = m < n and lines[m][0] == line[0] and lines[m][1] == line[1] and _branches(lines, m)
            if not more:
                break
            moves = [(ind + 1, text, k) for ind, text, k in lines[j:m]]
            body += moves + list(more[0])
            other += moves + list(more[2])
            j = more[3]
        out += [line, *body, else_line, *other]
        i = j
    return out


GROUP_MIN_OPS = 3


def _worth_group(run):
    return len(run[0]) >= GROUP_MIN_OPS


def stack_groups(blk):
    """Runs of a block's pushes, pops, final call/ret, with only 'neutral'
    instructions between (``_stack_kind``), as (ops, lo, hi, writes): ops
    are (position, slot) with slot the 8-byte offset from rSP at the run's
    first op, [lo, hi) the bytes they use relative to it, writes whether any
    op stores.  Only runs of GROUP_MIN_OPS stack ops or more are worth a
    group: its look-up (one address-cache probe) costs about what one op
    through the address cache does, and saves about half of each op."""
    out = []
    run = None
    last = blk.n - 1
    for p, ins in enumerate(blk.insns):
        kind = _stack_kind(ins, p == last)
        if kind == "neutral":
            continue
        if kind is None:
            if run is not None and _worth_group(run):
                out.append(tuple(run))
            run = None
            continue
        if run is None:
            run = [[], 0, 0, False, 0]           # ops, lo, hi, writes, current offset
        d = run[4]
        if kind in ("push", "call"):
            d -= 8
            run[0].append((p, d // 8))
            run[1] = min(run[1], d)
            run[3] = True
        else:
            run[0].append((p, d // 8))
            run[2] = max(run[2], d + 8)
            d += 8
        run[4] = d
    if run is not None and _worth_group(run):
        out.append(tuple(run))
    return [(ops, lo, hi, writes) for ops, lo, hi, writes, _ in out]


BASE_MIN_OPS = 3


def _base_op(ins):
    """(B, d, store) if ``ins`` is an 8-byte MOV between a general register
    (or an immediate, storing) and [B + d] in 64-bit addressing, B a general
    register other than rSP, no index, no FS/GS; else None."""
    if ins.fn is not data.mov or ins.osize != 8 or ins.asize != 8:
        return None
    i = ins.iced
    if i.op_count != 2:
        return None
    k0, k1 = i.op0_kind, i.op1_kind
    if k0 == OpKind.MEMORY and (k1 == OpKind.REGISTER or k1 in _IMM_KINDS):
        store = True
        r = i.op1_register if k1 == OpKind.REGISTER else None
    elif k0 == OpKind.REGISTER and k1 == OpKind.MEMORY:
        store, r = False, i.op0_register
    else:
        return None
    if r is not None:
        g = GPR.get(r)
        if g is None or g[1] != 8 or g[2]:
            return None
    if i.memory_index != R.NONE or i.segment_prefix in (R.FS, R.GS):
        return None
    b = GPR.get(i.memory_base)
    if b is None or b[1] != 8 or b[0] == 4:
        return None
    d = i.memory_displacement
    if d >= 1 << 63:
        d -= 1 << 64
    return b[0], d, store


def _touches(ins, b):
    """Whether ``ins`` names general register ``b`` (any size) in an
    operand or its memory operand, or writes registers it does not name."""
    i = ins.iced
    if ins.fn is arith.imul and i.op_count == 1:
        return True                          # RDX:RAX
    for n in range(i.op_count):
        kind = i.op_kind(n)
        if kind == OpKind.REGISTER:
            g = GPR.get(i.op_register(n))
            if g is None or g[0] == b:
                return True
        elif kind == OpKind.MEMORY:
            for reg in (i.memory_base, i.memory_index):
                g = GPR.get(reg)
                if g is not None and g[0] == b:
                    return True
    return False


def base_groups(blk):
    """Runs of a block's 8-byte MOVs at [B + d] (``_base_op``) with B not
    written between them, as (B, ops, lo, hi, writes): ops are (position,
    d, store), [lo, hi) the bytes they use relative to B, writes whether
    any op stores.  Between them only templated instructions that leave the
    address translation alone (those of stack groups, pushes and pops) and
    do not name B; a load into B ends its run.  All d of a run are equal
    modulo 8 (one aligned look-up serves them all).  Runs of BASE_MIN_OPS
    or more are worth a group (a hypervisor's save/restore of the guest's
    registers, a structure filled or read field by field)."""
    out = []
    runs = {}                                # B -> [ops, lo, hi, writes]

    def close(b):
        r = runs.pop(b, None)
        if r is not None and len(r[0]) >= BASE_MIN_OPS and 0x1000 - r[2] >= 0:
            out.append((b, tuple(r[0]), r[1], r[2], r[3]))
    for p, ins in enumerate(blk.insns):
        op = _base_op(ins)
        if op is not None:
            b, d, store = op
            r = runs.get(b)
            if r is not None and (d - r[0][0][1]) % 8:
                close(b)
                r = None
            if r is None:
                r = runs[b] = [[], d, d + 8, False]
            r[0].append((p, d, store))
            r[1], r[2] = min(r[1], d), max(r[2], d + 8)
            r[3] = r[3] or store
            if r[2] - r[1] > 0x1000:
                r[0].pop()
                close(b)
                runs[b] = [[(p, d, store)], d, d + 8, store]
            # Other runs: this MOV writes its register operand (a load).
            if not store:
                dst = GPR[ins.iced.op0_register][0]
                if dst == b:
                    close(b)
                if dst != b and dst in runs:
                    close(dst)
            continue
        fn = ins.fn
        if fn is data.push:
            continue                         # writes rSP and the stack only
        if fn in _STACK_NEUTRAL or fn is data.pop:
            for b in [b for b in runs if _touches(ins, b)]:
                close(b)
            continue
        for b in list(runs):
            close(b)
    for b in list(runs):
        close(b)
    return sorted(out, key=lambda g: g[1][0][0])


def _regs_of(ins):
    """((index, size), (index, size)) of a two-register instruction, or None."""
    i = ins.iced
    if i.op_count != 2 or i.op0_kind != OpKind.REGISTER or i.op1_kind != OpKind.REGISTER:
        return None
    a, b = GPR.get(i.op0_register), GPR.get(i.op1_register)
    if a is None or b is None or a[2] or b[2]:
        return None
    return (a[0], a[1]), (b[0], b[1])


def _advance(ins, reg):
    """The constant a 64-bit register ``reg`` grows by in ``ins`` (add imm,
    inc, lea [reg+imm]), or None."""
    i = ins.iced
    if i.op_count < 1 or i.op0_kind != OpKind.REGISTER or GPR.get(i.op0_register) != (reg, 8, False):
        return None
    if ins.fn is arith.inc and i.op_count == 1:
        return 1
    if ins.fn is arith.add and i.op1_kind in _IMM_KINDS:
        if ins.vimm is not None:
            return None                   # a patched immediate: not a constant
        v = ins.imm & MASK64
        return v if v < 16 else None
    if ins.fn is data.lea and i.memory_base != R.NONE and GPR.get(i.memory_base) == (reg, 8, False) \
            and i.memory_index == R.NONE:
        v = i.memory_displacement & MASK64
        return v if v < 16 else None
    return None


# -- shifts (ops/shift.py; lazy flags as OP_SHIFT tuples) ------------------
def _shift_t(kind):
    """SHL/SHR/SAR of a register by an immediate or by CL.  A count of 0
    changes no flag but writes the register back (zero-extending a 32-bit
    one); by CL the count is known only at run time, so the flags are
    stored in the taken branch unless nothing can observe them."""
    def t(g, ins, k, is_last):
        d = g.operand(ins, 0)
        s = g.operand(ins, 1)
        if d.kind != "reg" or s.kind == "mem" or (s.kind == "reg" and (s.idx, s.size, s.high) != (1, 1, False)):
            raise Unsupported("shift form")
        size = ins.osize
        bits = size * 8
        cmask = 0x3F if bits == 64 else 0x1F
        if s.kind == "imm":
            c = s.value & cmask
            if c == 0:
                g.reg_write(d, g.reg_read(d), masked=True)
                return True
            count, ind = f"{c}", 0
        else:
            g.used.add(1)
            m = MASK[size]
            if g.flags_dead_after() and not d.high:
                # Nothing observes the flags: the count (0 included) only
                # shifts the value, and the register is written either way.
                a = g.reg_read(d)
                if kind == "shl":
                    v = f"({a} << (g1 & {cmask:#x})) & {m:#x}"
                elif kind == "shr":
                    v = f"{a} >> (g1 & {cmask:#x})"
                else:
                    sign = 1 << (bits - 1)
                    v = f"(({a} ^ {sign:#x}) - {sign:#x}) >> (g1 & {cmask:#x}) & {m:#x}"
                g.reg_write(d, v, masked=size >= 4)
                g.flags_eager()
                return True
            g.emit(f"n{k} = g1 & {cmask:#x}")
            count, ind = f"n{k}", 1
            dead = g.flags_dead_after()
            if not dead:
                g.store_flags()
                if not g.seen_writer:
                    g.entry_flags_read = True
        m = MASK[size]
        top = bits - 1
        g.emit(f"a{k} = {g.reg_read(d)}")
        if ind:
            g.emit(f"if n{k}:")
        if kind == "shl":
            g.emit(f"l{k} = (a{k} << ({count} - 1)) & {m:#x}", ind)
            g.emit(f"r{k} = (l{k} << 1) & {m:#x}", ind)
            cf, of = f"(l{k} >> {top})", f"((l{k} ^ r{k}) >> {top})"
        elif kind == "shr":
            g.emit(f"l{k} = a{k} >> ({count} - 1)", ind)
            g.emit(f"r{k} = l{k} >> 1", ind)
            cf, of = f"(l{k} & 1)", f"(((l{k} ^ r{k}) >> {top}) & 1)"
        else:
            sign = 1 << top
            g.emit(f"l{k} = ((a{k} ^ {sign:#x}) - {sign:#x}) >> ({count} - 1)", ind)
            g.emit(f"r{k} = (l{k} >> 1) & {m:#x}", ind)
            cf, of = f"(l{k} & 1)", "0"
        g.reg_write(d, f"r{k}", masked=True, ind=ind)
        p = Prod(OP_SHIFT, bits, cf, of, f"r{k}", 0)
        if not ind:
            g.set_prod(p)
            return True
        if not dead:
            g.emit(f"cpu.lf = {p.tuple_src()}", 1)
        g.emit("else:")
        g.reg_write(d, f"a{k}", masked=True, ind=1)
        g.flags_eager()              # cpu.lf is current (or dead)
        return True
    return t


# -- rotates (ops/shift.py rol/ror; CF and OF written into rflags) ---------
def _rotate_t(left):
    """ROL/ROR of a register or memory operand by an immediate, 1 or CL
    (APM vol 3 "ROL", "ROR"): the count is masked to 5 bits (6 with a 64-bit
    operand), 8/16-bit operands then rotate by it modulo their width.  CF is
    the bit rotated in (ROL: bit 0 of the result, ROR: its MSB); OF, defined
    for a count of 1, is computed for every count as the handler does (ROL:
    MSB ^ CF, ROR: the two top bits XORed, QEMU's choice); the other flags
    are unchanged, so they are materialised (``cpu.get_rflags``) and CF/OF
    replaced in ``cpu.rflags``.  A masked count of 0 changes no flag but the
    destination is still written back (read-modify-write memory access,
    zero extension of a 32-bit register)."""
    def t(g, ins, k, is_last):
        d = g.operand(ins, 0)
        s = g.operand(ins, 1)
        if d.kind == "imm" or s.kind == "mem" or (s.kind == "imm" and s.value is None) \
                or (s.kind == "reg" and (s.idx, s.size, s.high) != (1, 1, False)):
            raise Unsupported("rotate form")
        size = ins.osize
        bits = size * 8
        m = MASK[size]
        top = bits - 1
        cmask = 0x3F if bits == 64 else 0x1F
        mem = d.kind == "mem"
        if s.kind == "imm":
            c = s.value & cmask
            ind = 0
            if c == 0:
                if mem:
                    a = g.rmw_read(d, k)
                    g.rmw_write(d, k, a)
                else:
                    g.reg_write(d, g.reg_read(d), masked=True)
                return True
            n = c % bits
            count = f"{n}"
        else:
            g.used.add(1)
            g.emit(f"n{k} = g1 & {cmask:#x}")
            ind = 1
            count = f"(n{k} % {bits})" if bits < 32 else f"n{k}"
        dead = g.flags_dead_after()
        if not dead:
            # The flags this rotate leaves unchanged are the current ones.
            g.store_flags()
            if not g.seen_writer:
                g.entry_flags_read = True
        if mem:
            g.rmw_read(d, k)             # into a<k>
        else:
            g.emit(f"a{k} = {g.reg_read(d)}")
        if ind:
            g.emit(f"if n{k}:")
        if left:
            g.emit(f"r{k} = ((a{k} << {count}) | (a{k} >> ({bits} - {count}))) & {m:#x}", ind)
            cf, of = f"(r{k} & 1)", f"((r{k} >> {top}) ^ r{k}) & 1"
        else:
            g.emit(f"r{k} = ((a{k} >> {count}) | (a{k} << ({bits} - {count}))) & {m:#x}", ind)
            cf, of = f"(r{k} >> {top})", f"((r{k} >> {top}) ^ (r{k} >> {top - 1})) & 1"
        if not ind:
            if mem:
                g.rmw_write(d, k, f"r{k}")
            else:
                g.reg_write(d, f"r{k}", masked=True)
        else:
            g.emit("else:")
            g.emit(f"r{k} = a{k}", 1)
            if mem:
                g.rmw_write(d, k, f"r{k}")
            else:
                g.reg_write(d, f"r{k}", masked=True)
            if not dead:
                g.emit(f"if n{k}:")
        if not dead:
            g.emit(f"cpu.rflags = (cpu.get_rflags() & ~0x801) | {cf} | (({of}) << 11)", ind)
            g.emit("cpu.lf = None", ind)
        g.flags_eager()                  # cpu.lf/rflags are current (or dead)
        return True
    return t


# -- BT of a register (ops/bits.py bt) ------------------------------------
def t_bt(g, ins, k, is_last):
    """BT of a register by a register or an immediate (APM vol 3 "BT"): CF
    is the bit whose number is the offset modulo the operand size; the other
    flags (undefined in the APM) are left unchanged, as the handler leaves
    them (QEMU's choice, ops/bits.py), so they are materialised and CF
    replaced in ``cpu.rflags``.  A generic call would end the region
    (kvm-unit-tests' page allocator tests its area mask with BT in a loop).
    Memory operands (bit strings) stay generic."""
    d = g.operand(ins, 0)
    s = g.operand(ins, 1)
    if d.kind != "reg" or s.kind == "mem" or (s.kind == "imm" and s.value is None):
        raise Unsupported("bt form")
    bits = ins.osize * 8
    if g.flags_dead_after():
        g.flags_eager()                  # nothing can see CF before it is overwritten
        return True
    a = g.reg_read(d)
    b = s.value & (bits - 1) if s.kind == "imm" else f"({g.reg_read(s)} & {bits - 1})"
    g.store_flags()
    if not g.seen_writer:
        g.entry_flags_read = True
    g.emit(f"cpu.rflags = (cpu.get_rflags() & ~1) | (({a} >> {b}) & 1)")
    g.emit("cpu.lf = None")
    g.flags_eager()
    return True


# -- IMUL (ops/arith.py imul): two- and three-operand forms ----------------
def t_imul(g, ins, k, is_last):
    """IMUL reg, r/m [, imm]: the signed product truncated to the operand
    size; CF = OF = "the result had to be truncated", SF/ZF/PF from the
    result, AF 0 (svmsim's reading of the undefined flags, as the handler):
    exactly the lazy OP_SHIFT tuple (CF, OF given, AF 0)."""
    if ins.get1 is None:
        raise Unsupported("one-operand imul")
    d = g.operand(ins, 0)
    if d.kind != "reg" or d.high:
        raise Unsupported("imul form")
    if ins.get2 is not None:
        a = g.read(g.operand(ins, 1), k)
        b = g.read(g.operand(ins, 2), k, tag="w")
    else:
        a = g.reg_read(d)
        b = g.read(g.operand(ins, 1), k)
    size = ins.osize
    m, sign = MASK[size], 1 << (size * 8 - 1)
    g.emit(f"x{k} = ((({a}) ^ {sign:#x}) - {sign:#x}) * (((({b}) & {m:#x}) ^ {sign:#x}) - {sign:#x})")
    g.emit(f"r{k} = x{k} & {m:#x}")
    g.emit(f"o{k} = x{k} != ((r{k} ^ {sign:#x}) - {sign:#x})")
    g.reg_write(d, f"r{k}", masked=True)
    g.set_prod(Prod(OP_SHIFT, size * 8, f"o{k}", f"o{k}", f"r{k}", 0))
    return True


def t_xchg(g, ins, k, is_last):
    """XCHG of a register with a register or memory (the implicit LOCK is
    moot: one CPU runs at a time).  The memory operand is read, then
    written, then the register set, so a fault leaves both unchanged."""
    a = g.operand(ins, 0)
    b = g.operand(ins, 1)
    if a.kind == "mem":
        a, b = b, a
    if a.kind != "reg" or b.kind == "imm" or a.high or a.size < 4 or (b.kind == "reg" and (b.high or b.size < 4)):
        raise Unsupported("xchg form")
    if b.kind == "reg":
        g.emit(f"x{k} = {g.reg_read(a)}")
        g.reg_write(a, g.reg_read(b), masked=True)
        g.reg_write(b, f"x{k}", masked=True)
        return True
    v = g.mem_read(b, k)
    g.emit(f"x{k} = {g.reg_read(a)}")
    g.mem_write(b, k, f"x{k}")
    g.reg_write(a, v, masked=True)
    return True


TEMPLATES = {
    arith.imul: t_imul,
    arith.add: _alu2(OP_ADD), arith.sub: _alu2(OP_SUB, exact=True),
    arith.adc: _alu2(OP_ADD, adc=True), arith.sbb: _alu2(OP_SUB, adc=True),
    arith.cmp: _alu2(OP_SUB, write=False, exact=True),
    arith.and_: _alu2(OP_LOGIC, logic="&"), arith.or_: _alu2(OP_LOGIC, logic="|"),
    arith.xor: _alu2(OP_LOGIC, logic="^"), arith.test: _alu2(OP_LOGIC, write=False, logic="&"),
    arith.inc: _incdec(OP_INC), arith.dec: _incdec(OP_DEC),
    arith.neg: _unary(True), arith.not_: _unary(False),
    data.mov: t_mov, data.movzx: t_movzx, data.movsx: t_movsx, data.lea: t_lea, arith.cbw: t_cbw,
    data.nop: t_nop, data.push: t_push, data.pop: t_pop,
    data.setcc: t_setcc, data.cmovcc: t_cmovcc,
    data.xchg: t_xchg,
    control.jcc: t_jcc, control.jmp: t_jmp, control.call: t_call, control.ret: t_ret,
}
def _t_gif(value):
    """STGI / CLGI (APM vol 3; GIF, APM 15.17) in host mode.  Inline: the
    checks that pass (EFER.SVME = 1, CR0.PE = 1, RFLAGS.VM = 0, CPL = 0, not
    in guest mode), then GIF.  Otherwise the interpreter's handler runs: it
    raises the #UD/#GP of ``svm.checks.check_vmrun_instruction`` (the SVM-Lock
    / SKINIT rule for EFER.SVME = 0 included) or, in guest mode, sets the
    virtual GIF (APM 15.17.1).  Guest-mode blocks never get here: their
    handler is the intercept guard's wrapper (``hooks.translate``), which has
    no template, so the STGI/CLGI intercepts (APM 15.9) run as interpreted.

    STGI: an NMI, INTR, SMI or INIT held while GIF was 0 is taken at the
    boundary right after it (APM 15.17, Table 15-10).  When one may be
    waiting (``interrupts.event_waiting``, or ``cpu.pending`` already set)
    it sets ``cpu.pending`` as the handler does (``cpu.kick``) and leaves
    the region there; otherwise nothing is held and the region goes on
    (``successors``: the block after STGI is a static successor).  The
    handler's path always leaves.  CLGI only holds events, so the region
    goes on."""
    def t(g, ins, k, is_last):
        g.ns["h%d" % k] = ins.fn
        g.ns["i%d" % k] = ins
        if value:
            g.ns["EVW"] = _interrupts.event_waiting
        g.emit("if cpu.efer & 0x1000 and cpu.cr0 & 1 and not cpu.rflags & 0x20000 "
               "and not cpu.cpl and not cpu.svm_guest:")
        g.emit(f"cpu.gif = {value}", 1)
        if value:
            g.emit(f"x{k} = cpu.pending or EVW(cpu)", 1)
        g.emit("else:")
        g.emit(f"h{k}(cpu, i{k})", 1)                  # #UD/#GP, or the virtual GIF
        if value:
            g.emit(f"x{k} = True", 1)                 # it set cpu.pending (cpu.kick)
            g.emit(f"if x{k}:")
            g.emit("cpu.pending = True", 1)
            g.exit(ins.next_ip, g.n, 1)               # STGI ends its block
        return True
    return t


_T_STGI, _T_CLGI = _t_gif(True), _t_gif(False)


def _t_tsc(writes):
    """RDTSC / RDTSCP: the handler itself (its CR4.TSD #GP, the TSC of
    ``msr.tsc_value`` at ``ins.idx`` with the instructions the region ran
    before it, a guest's offset and ratio), called with the registers left
    in locals: it reads no general register and writes only ``writes``
    (EDX:EAX, and ECX for RDTSCP), reloaded after it.  A generic call
    stores and reloads all sixteen registers, the flags and the segment
    bases around it (kvm-unit-tests' latency subtests run 4 to 8 RDTSCs
    per round trip or loop)."""
    def t(g, ins, k, is_last):
        g.ns["h%d" % k] = ins.fn
        g.ns["i%d" % k] = ins
        g.emit("@QEXEC@")
        g.emit(f"h{k}(cpu, i{k})")
        for r in writes:
            g.used.add(r)
            g.dirty.add(r)
            g.ever_dirty.add(r)
            g.set_narrow(r, 4)
            g.emit(f"g{r} = regs[{r}]")
        return True
    return t


def t_cli(g, ins, k, is_last):
    """CLI (APM vol 3 CLI): RFLAGS.IF = 0 where CLI is allowed (CR0.PE = 0,
    or not virtual-8086 mode and CPL <= IOPL), else the handler (#GP, or
    virtual-8086 mode's own rules).  The region goes on: clearing IF makes
    nothing deliverable, and compiled code keeps no copy of IF (as a generic
    call it would leave the region at the next transition, one more trip
    through the engine: kvm-unit-tests' svm_vmrun loop runs CLI before STGI
    at every #VMEXIT)."""
    g.ns["h%d" % k] = ins.fn
    g.ns["i%d" % k] = ins
    g.emit("if not cpu.cr0 & 1 or not cpu.rflags & 0x20000 and cpu.cpl <= (cpu.rflags >> 12) & 3:")
    g.emit("cpu.rflags &= ~0x200", 1)
    g.emit("else:")
    g.emit(f"h{k}(cpu, i{k})", 1)                      # #GP, or virtual-8086 mode
    return True


def t_direct(g, ins, k, is_last):
    """A handler that always ends in an event it raises (``fn.direct``: an
    intercept the extension resolved when the block was translated, see
    ``hooks.translate``): the region leaves with the state as a fault there
    leaves it (registers and flags written back, RIP at the instruction,
    ``cpu.event_ins`` the instruction) and returns ``-2 - retired``; the
    engine then calls ``direct`` where it would deliver the fault, with no
    exception raised and unwound (``Engine._run``)."""
    g.ns["i%d" % k] = ins
    g.emit("@FLUSH@")
    g.store_flags()
    if not g.seen_writer:
        g.entry_flags_read = True        # the event may save RFLAGS as the block was entered
    g.pending = None
    g.seen_writer = True
    g.emit(f"cpu.rip = {ins.ip:#x}")
    g.emit(f"cpu.event_ins = i{k}")
    g.emit(f"return {-2 - g.pos[-1]} - n")
    g._ended = True
    return True


def _stays(fn, long64):
    """Whether a compiled region may go on after calling handler ``fn``:
    RDTSC and RDTSCP (EDX:EAX, ECX; templated by ``_t_tsc`` where the
    region compiles them), VMSAVE (memory: a write to code still
    ends the region) and, in 64-bit mode, VMLOAD (FS, GS, TR, LDTR and MSRs
    that compiled code does not read, the FS/GS bases reloaded after the
    call; outside 64-bit mode it also recomputes the mode's segment state):
    none changes the mode, the paging, RFLAGS or what is pending, so the
    region need not be left (kvm-unit-tests' latency_svm_insn times a
    million of each between RDTSCs).  Intercepted in a guest they are
    guard wrappers, not these handlers, and stay generic."""
    by = _ops.BY_MNEMONIC
    if fn is by.get(_ops.M.RDTSC) or fn is by.get(_ops.M.RDTSCP) or fn is by.get(_ops.M.VMSAVE):
        return True
    return long64 and fn is by.get(_ops.M.VMLOAD)


def _gif_template(fn):
    """The template of the host-mode STGI or CLGI handler (registered by the
    SVM unit, svm/insns.py: cpu/ does not import it), or None."""
    by = _ops.BY_MNEMONIC
    if fn is by.get(_ops.M.STGI):
        return _T_STGI
    if fn is by.get(_ops.M.CLGI):
        return _T_CLGI
    return None


TEMPLATES[_bits.bt] = t_bt
TEMPLATES[_system.cli] = t_cli
TEMPLATES[_system.rdtsc] = _t_tsc((0, 2))
TEMPLATES[_system.rdtscp] = _t_tsc((0, 1, 2))

if _shift is not None:
    TEMPLATES.update({_shift.shl: _shift_t("shl"), _shift.shr: _shift_t("shr"),
                      _shift.sar: _shift_t("sar"),
                      _shift.rol: _rotate_t(True), _shift.ror: _rotate_t(False)})


# ---------------------------------------------------------------- entry point
# A region's size: MAX_REGION_INSNS bounds the compile cost (~100-250 us an
# instruction); the block count only bounds the dispatch (one ``pc <= k``
# test per four members).  64 blocks, not 16: kvm-unit-tests' page allocator
# (alloc_pages -> page_memalign_order_flags -> split/memset, ~500
# instructions in short blocks) lost its loop tails and return sites to the
# limit and left its regions ~14 times an allocation (docs/PERFORMANCE.md,
# "Counted store loops").
MAX_REGION_BLOCKS = 64
MAX_REGION_INSNS = 256


def successors(blk):
    """Static successors of a block: fall-through first, then a direct
    branch target; a direct call's target, then its return address (a RET
    in the region continues there, see goto_dynamic)."""
    last = blk.insns[-1]
    i = last.iced
    if not blk.sets_rip or _gif_template(last.fn) is _T_STGI:
        return [blk.end_ip]                # STGI's template goes on unless an event is held
    if last.fn is control.jcc and last.target is not None:
        return [last.next_ip, last.target]
    direct = last.target is not None and last.get0 is None and not i.is_call_far \
        and i.op0_kind not in (OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32)
    if last.fn is control.jmp and direct:
        return [last.target]
    if last.fn is control.call:
        return [last.target, last.next_ip] if direct else [last.next_ip]
    return []


def region(blk, lookup, vips=None):
    """The members of ``blk``'s region in layout order, ``blk`` first:
    blocks reached by static edges that ``lookup(ip)`` finds (translated, in
    the same mode, on the same linear page or another one mapped as when they
    were decoded: Engine._compile), depth first with fall-through successors
    laid out right after their predecessor.

    Versions: where ``lookup.versions(ip)`` lists blocks (the versions of a
    block whose code flips between them, engine.py), they are all members,
    and ``ip`` goes into the set ``vips``: the region reaches them only
    through ``Gen.goto_version``."""
    members, seen, vis = [], set(), set()
    total = [0]
    versions = getattr(lookup, "versions", None)

    def add_versions(ip):
        vs = versions(ip) if versions is not None else None
        if not vs:
            return False
        if vips is not None:
            vips.add(ip)
        for v in vs:
            if id(v) not in vis and len(members) < MAX_REGION_BLOCKS and total[0] + v.n <= MAX_REGION_INSNS:
                visit(v)
        return True

    # Blocks on another page (a callee elsewhere) come after everything the
    # region reaches on its own page: a loop calling a function on another
    # page must not lose its own blocks to the callee's within the limits.
    page = blk.key[0] >> 12 if isinstance(blk.key, tuple) else None
    later = []

    def visit(b, defer=True):
        members.append(b)
        vis.add(id(b))
        seen.add(b.insns[0].ip)
        total[0] += b.n
        for ip in successors(b):
            if len(members) >= MAX_REGION_BLOCKS or add_versions(ip) or ip in seen:
                continue
            nb = lookup(ip)
            if nb is not None and nb.n and total[0] + nb.n <= MAX_REGION_INSNS:
                if defer and page is not None and isinstance(nb.key, tuple) and nb.key[0] >> 12 != page:
                    later.append(nb)
                    continue
                visit(nb, defer)
    visit(blk)
    for nb in later:
        if id(nb) not in vis and len(members) < MAX_REGION_BLOCKS and total[0] + nb.n <= MAX_REGION_INSNS:
            visit(nb, False)
    if vips is not None and versions is not None and blk.insns[0].ip not in vips:
        add_versions(blk.insns[0].ip)
    return members


def region_from(ip, lookup, members):
    """More members for a region already holding ``members``: the block at
    ``ip`` (``lookup``) and the blocks it reaches by static edges, within
    the region's limits; [] if there is no block there."""
    have = {b.insns[0].ip for b in members}
    total = [sum(b.n for b in members)]
    out = []

    def visit(b):
        out.append(b)
        have.add(b.insns[0].ip)
        total[0] += b.n
        for nip in successors(b):
            if len(members) + len(out) >= MAX_REGION_BLOCKS or nip in have:
                continue
            nb = lookup(nip)
            if nb is not None and nb.n and total[0] + nb.n <= MAX_REGION_INSNS:
                visit(nb)
    b = lookup(ip)
    if b is None or not b.n or total[0] + b.n > MAX_REGION_INSNS:
        return []
    visit(b)
    return out


def generate(blk, cpu, members=None, vips=(), rsite=None):
    """(source, line map, namespace, number of templated instructions).
    A region of several blocks is generated twice: the second time knowing
    which registers hold 32-bit values at each member's entry
    (``Gen.narrow_entries``), so their 32-bit reads need no mask."""
    g = Gen(blk, cpu, members, vips=vips, rsite=rsite)
    src, line_of = g.generate()
    if len(g.members) > 1:
        nin = g.narrow_entries()
        if any(nin):
            g = Gen(blk, cpu, members, narrow_in=nin, vips=vips, rsite=rsite)
            src, line_of = g.generate()
    return src, line_of, g.ns, g.templated


def compile_block(blk, cpu, lookup=None):
    """The engine's tier-2 hook: ``fn(cpu, budget) -> retired`` or None, for
    the region of ``blk`` (``lookup(ip)``: a translated block or None; without
    it the region is the block alone).  ``fn.members`` lists the region's
    blocks: the engine drops the function when one of them is invalidated.

    Generating and compiling costs ~100-250 us per instruction on CPython
    3.11 (mostly the parser) and saves ~1.5 us per executed instruction, so
    the engine asks only after a block ran HOT_THRESHOLD (200) times."""
    vips = set()
    rsite = None
    if lookup is not None and _mode(blk, cpu)[0] != 16:
        members = region(blk, lookup, vips)
        # A head block ending in a near RET: where it returned when it was
        # found hot (``lookup.ret_site``), as a member its RET may continue
        # at (a hypervisor's VMRUN stub returning to its loop).
        rsite = getattr(lookup, "ret_site", None)
        last = blk.insns[-1]
        if rsite is not None and last.fn is control.ret and last.iced.code in _NEAR_RETS \
                and rsite not in {b.insns[0].ip for b in members} and len(members) < MAX_REGION_BLOCKS:
            more = region_from(rsite, lookup, members)
            members = members + more if more else members
            if not more:
                rsite = None
        else:
            rsite = None
    else:
        members = [blk]
    return compile_now(blk, cpu, members, vips, rsite)


def _mode(blk, cpu):
    return blk.key[1] if isinstance(blk.key, tuple) and len(blk.key) >= 2 else cpu.mode_key


def compile_now(blk, cpu, members=None, vips=(), rsite=None):
    """A function ``fn(cpu, budget) -> retired`` for ``blk``, or None.

    16-bit code (real mode, vm86, 16-bit protected segments) stays
    interpreted: it is boot code, rarely hot, and not covered by the tests.
    A bug in the generator must not end a guest run: the block then stays
    interpreted and the machine gets a note."""
    members = members or [blk]
    if not blk.n or _mode(blk, cpu)[0] == 16:
        stats["declined"] += 1
        return None
    try:
        src, line_of, ns, templated = generate(blk, cpu, members, vips, rsite)
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
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        code = compile(src, "<svmsim block>", "exec")
        _CACHE[src] = code
        stats["compiled"] += 1
    else:
        stats["cache_hits"] += 1
    env = dict(_BASE_NS)
    env.update(ns)
    env["LK"] = line_of
    env["SMC"] = cpu.machine.engine.smc
    env["LV"] = cpu.machine.engine.live_version
    env["WW"] = cpu.bus.write_watchers
    exec(code, env)
    fn = env[f"blk_{blk.insns[0].ip:x}"]
    fn.source = src
    fn.members = tuple(members)
    # The members it runs only while they are the live block (versions,
    # goto_version), and the others: the engine drops the function when one
    # of those is invalidated.
    fn.vkeys = frozenset(m.key for m in members if m.insns[0].ip in vips)
    fn.static = tuple(m for m in members if m.insns[0].ip not in vips)
    return fn
