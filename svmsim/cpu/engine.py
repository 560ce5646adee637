"""The execution engine: translate basic blocks once, run them many times.

A block is a run of instructions decoded once with iced-x86, ending at the
first control transfer or mode change, at a page boundary, or after
``MAX_BLOCK`` instructions.  Blocks are cached by (linear RIP, CPU mode key)
and validated against the RAM page they were decoded from, so a remapped
page or a write to code drops them.

Faults are precise: a handler raises before changing state, the engine
rewinds RIP to that instruction, counts only the instructions that retired,
and hands the exception to ``interrupts.deliver_exception``.
"""
import iced_x86

from . import ops
from .decoder import build_insn
from .exceptions import CpuException, DB as DB_VEC, gp
from .flags import TF, RF
from . import debug
from .segments import CS
from . import interrupts
from .codepages import CodePage

MAX_BLOCK = 64
MAX_DROPPED = 1024       # keys of dropped blocks kept for revival (Engine.dropped)
HOT_THRESHOLD = 200      # executions before a block is compiled to Python source (pays back ~150)
PAGE = 0x1000


# Patched immediates (codepages.py): the operand kinds of an immediate source
# -> (its size in bytes, sign-extended), and the handlers that only use it as
# a value through get1.
_VIMM_KINDS = {
    iced_x86.OpKind.IMMEDIATE8: (1, False), iced_x86.OpKind.IMMEDIATE16: (2, False),
    iced_x86.OpKind.IMMEDIATE32: (4, False), iced_x86.OpKind.IMMEDIATE64: (8, False),
    iced_x86.OpKind.IMMEDIATE8TO16: (1, True), iced_x86.OpKind.IMMEDIATE8TO32: (1, True),
    iced_x86.OpKind.IMMEDIATE8TO64: (1, True), iced_x86.OpKind.IMMEDIATE32TO64: (4, True),
}
_VIMM_OPS = set()
_MEMORY = iced_x86.OpKind.MEMORY


def _vimm_ops():
    from .ops import arith, data
    _VIMM_OPS.update((arith.add, arith.adc, arith.sub, arith.sbb, arith.cmp, arith.and_,
                      arith.or_, arith.xor, arith.test, data.mov))


def _first_fetch(cpu, lin) -> None:
    """The fetch of the first byte at ``lin`` = CS:rIP on a fetch-TLB miss:
    the CS limit check (outside 64-bit mode) comes before paging, so rIP
    beyond the limit is #GP(0) even where the page is not mapped."""
    if cpu.bits != 64 and cpu.rip > cpu.segs[CS].limit:
        raise gp(0, f"instruction fetch at {cpu.rip:#x} beyond the CS limit")
    cpu.fetch_spa(lin)


class Block:
    __slots__ = ("insns", "n", "end_ip", "page", "page2", "sets_rip", "key", "heat", "compiled", "lo", "code",
                 "reg", "imms", "entry", "hole")


class Engine:
    """Block cache and run loop, shared by every CPU of a machine."""

    def __init__(self, machine):
        self.machine = machine
        self.bus = machine.bus
        self.blocks: dict = {}
        self.code_pages = machine.code_pages      # RAM page number -> CodePage
        self.regions: dict = {}                   # block key -> keys of the regions it is compiled into
        # Blocks dropped by a write to their bytes, by key: [(their bytes, block)].
        # Code that flips between a few versions (an opcode rewritten back and
        # forth) gets a dropped block back when its bytes are the same again,
        # without decoding it (translate).
        self.dropped: dict = {}
        # Set when a write changes translated code; running code checks it
        # after a write so a rewritten later instruction of the same block
        # runs as rewritten (the check clears it).  1, or the key of the one
        # block the write swapped for a kept version of it (_on_ram_write):
        # a compiled region that selects that block's version at run time
        # goes on (codegen Gen.slow_store).
        self.smc = [0]
        self.bus.write_watchers.append(self._on_ram_write)
        self.ram = self.bus.ram.buf
        ops.load_all()
        if not _VIMM_OPS:
            _vimm_ops()
        self.stats = {"blocks_translated": 0, "blocks_invalidated": 0, "blocks_compiled": 0,
                      "blocks_revived": 0}
        self.hot_threshold = HOT_THRESHOLD
        self.compile = self._compile
        # The debugger's translation-time instrumentation (svmsim.debug.control):
        # None unless breakpoints or code hooks are set, so it costs nothing otherwise.
        self.instrument = None

    def _compile(self, blk, cpu):
        """Tier 2: generated Python source for a hot block and the translated
        blocks it reaches by static edges (its region: on its page, or on
        another page mapped as when they were decoded), or None."""
        try:
            from . import codegen
        except ImportError:
            return None
        page, mode = blk.key[0] >> 12, blk.key[1]
        base = cpu.ebase[CS]
        blocks = self.blocks
        dropped = self.dropped

        def lookup(ip):
            lin = (base + ip) & cpu.lin_mask
            b = blocks.get((lin, mode))
            if b is None or b.page2 is not None:
                return None
            if lin >> 12 != page:
                # On another page (a call into a function elsewhere): a member
                # if that page is mapped now as it was decoded; the region
                # checks the mapping again where it moves there (codegen
                # Gen._transition).  Not for code with versions (kept, or in
                # a version group: Engine._group).
                if (b.page is None or cpu.fx.get(lin >> 12) != b.page or b.key in dropped
                        or b.hole is not None):
                    return None
                return b
            if b.page != blk.page:
                return None
            if len(dropped.get(b.key, ())) > 1 or b.hole is not None:
                return None        # its code flips between versions: versions() below
            return b

        def versions(ip):
            # A block whose code flips between versions (kept twice or more):
            # each version on this page is a member, the region runs the live
            # one (codegen goto_version), and a write that swaps them need
            # not leave it (Engine.smc holds the key, _on_ram_write).
            lin = (base + ip) & cpu.lin_mask
            key = (lin, mode)
            kept = dropped.get(key, ())
            live = blocks.get(key)
            if lin >> 12 != page or len(kept) < 2 and (live is None or live.hole is None):
                return None
            out = [b for _, b in kept]
            if live is not None and live not in out:
                out.append(live)
            return [b for b in out if b.page == blk.page and b.page2 is None and b.n and b.insns[0].ip == ip]
        lookup.versions = versions
        # The block just ran (Engine._run compiles after running it): a RET
        # at its end went to cpu.rip, a return site the region may include.
        lookup.ret_site = cpu.rip
        fn = codegen.compile_block(blk, cpu, lookup if base == 0 else None)
        if fn is not None:
            self.stats["blocks_compiled"] += 1
            regions = self.regions
            for m in fn.static:
                regions.setdefault(m.key, set()).add(blk.key)
            # The other members not compiled yet run the same function from
            # their own place in it (a quantum that ends inside the region
            # resumes there), instead of each compiling a region of its own;
            # so do the versions not live now (when a write makes one live).
            for i, m in enumerate(fn.members):
                if i and m.compiled is None and (blocks.get(m.key) is m or m.key in fn.vkeys) \
                        and m.key[0] >> 12 == page:          # entered on the region's own page
                    m.compiled, m.entry = fn, i
                    for x in fn.static:
                        regions.setdefault(x.key, set()).add(m.key)
        return fn

    # ---------------------------------------------------------------- translation
    def translate(self, cpu, lin, key, max_len=MAX_BLOCK) -> Block:
        """Decode a block starting at linear address ``lin``.

        The first page's fetch translation happens in the caller (it may
        raise #PF for the first instruction).  An instruction that crosses
        into a page that cannot be fetched ends the block before it, unless
        it is the first one, in which case the fault is raised (precise).
        An instruction may run on into a page that is not RAM (MMIO, or no
        memory at all, which reads as all ones): it is decoded from what the
        bus returns, and its block is not cached (nothing validates it).
        """
        bits = cpu.bits
        rip = cpu.rip
        # The CS limit (APM vol 2, ch. 4 segment limit checks; 15.5.1: an rIP
        # "outside the limit of the guest code segment" is "a #GP fault"):
        # outside 64-bit mode every byte fetched must lie within it.  A block stops before an instruction that would
        # run past it; that instruction raises #GP(0) when it is the first.
        # The limit is part of the block key (mode_key), so a block is never
        # reused under another limit; 64-bit code checks nothing.
        limit = None if bits == 64 else cpu.segs[CS].limit
        if limit is not None and rip > limit:
            raise gp(0, f"instruction fetch at {rip:#x} beyond the CS limit {limit:#x}")
        variants = self.dropped.get(key)
        if variants is not None and self.instrument is None:
            page = cpu.fx.get(lin >> 12)
            if page is not None and not (self.bus.dirty and page >> 12 in self.bus.dirty):
                a = page + (lin & 0xFFF)
                ram = cpu.ram
                for code, old in variants:
                    if old.page == page and old.insns[0].ip == rip and ram[a:a + len(code)] == code:
                        return self._revive(old, key)
        spa = cpu.fetch_spa(lin)
        page_off = cpu.code_page(spa)
        avail = PAGE - (lin & 0xFFF)
        data = cpu.pread_bytes(spa, avail)
        page2 = None
        crossed = False                    # the next page could be fetched
        if avail < 15:
            try:
                spa2 = cpu.fetch_spa((lin + avail) & cpu.lin_mask)
                data += cpu.pread_bytes(spa2, 15)
                page2 = cpu.code_page(spa2)
                crossed = True
            except CpuException:
                if self._insn_len(data, bits, rip) is None:
                    if limit is not None and rip + avail > limit:
                        raise gp(0, "instruction runs past the CS limit") from None   # before paging
                    raise
        if variants is not None and page2 is None and self.instrument is None:
            for code, old in variants:
                if old.page == page_off and old.insns[0].ip == rip and data.startswith(code):
                    return self._revive(old, key)
        dec = iced_x86.Decoder(bits, data, iced_x86.DecoderOptions.AMD, ip=rip)
        lo0 = lin & 0xFFF
        cp = self.code_pages.get(page_off >> 12) if page_off is not None and page_off >> 52 == 0 else None
        volatile = cp.volatile if cp is not None else None
        insns = []
        sets_rip = False
        guest = cpu.svm_guest          # instruction intercepts (APM 15.7.1)
        for i in dec:
            if i.len == 0 or (i.code == iced_x86.Code.INVALID and dec.last_error == iced_x86.DecoderError.NO_MORE_BYTES):
                break
            end = (i.next_ip - rip) & cpu.lin_mask
            if limit is not None and i.ip + i.len - 1 > limit:
                if insns:
                    break                          # it runs past the CS limit: faults as a first
                raise gp(0, f"instruction at {i.ip:#x} runs past the CS limit {limit:#x}")
            if end > avail and (insns or not crossed):
                break                              # crosses the page: next block
            ins = build_insn(i, bits)
            ins.idx = len(insns)
            ins.fn, ins.ends_block = ops.lookup(ins, self.machine)
            if volatile and (lo0 + ((ins.ip - rip) & cpu.lin_mask)) in volatile:
                self._patched_imm(ins, page_off + lo0 + ((ins.ip - rip) & cpu.lin_mask))
            if guest:
                ins.fn = cpu.hooks.translate(cpu, ins, ins.fn)
            if self.instrument is not None:
                self.instrument(cpu, ins, (lin + ins.ip - rip) & cpu.lin_mask)
            insns.append(ins)
            if ins.ends_block:
                sets_rip = True
                break
            if end >= avail or len(insns) >= max_len:
                break
        if not insns:
            # Not even one instruction fits: fetch faults on the next page.
            cpu.fetch_spa((lin + avail) & cpu.lin_mask)
            raise AssertionError("unreachable: instruction crosses into a fetchable page")
        if bits == 64 and len(insns) > 1:
            sets_rip = self._end_at_own_store(insns, sets_rip)
        if not (insns[-1].next_ip - rip) & cpu.lin_mask > avail:
            page2 = None
            crossed = False
        blk = Block()
        blk.insns = tuple(insns)
        blk.n = len(insns)
        blk.end_ip = insns[-1].next_ip
        blk.page = page_off
        blk.page2 = page2
        blk.sets_rip = sets_rip
        blk.key = key
        blk.heat = 0
        blk.compiled = None
        blk.entry = 0                      # its index in the region of blk.compiled
        blk.lo = lin & 0xFFF               # its first byte's offset in its page
        blk.code = None
        blk.reg = None
        blk.imms = None
        blk.hole = None                    # its version group (_group), if any
        if crossed and page2 is None:
            return blk                     # runs on into MMIO or unmapped space: not cached
        if page2 is None and page_off is not None and not guest and self.instrument is None and page_off >> 52 == 0:
            blk.code = data[:(blk.end_ip - rip) & cpu.lin_mask]   # kept if a write drops it
        lo = lin & 0xFFF
        end = lo + ((blk.end_ip - rip) & cpu.lin_mask)
        holes = [((ins.vimm[0] & 0xFFF), (ins.vimm[0] & 0xFFF) + ins.vimm[1])
                 for ins in insns if ins.vimm is not None]
        blk.reg = self._register_code(blk, page_off, lo, min(end, PAGE), holes)
        if page2 is not None:
            self._register_code(blk, page2, 0, end - PAGE)
        self.blocks[key] = blk
        self.stats["blocks_translated"] += 1
        return blk

    def _revive(self, blk, key, cp=None):
        """A block dropped by a write whose bytes are back as they were
        (Engine.dropped) is the live version again, as it was decoded and
        compiled: its byte ranges are still registered in its code page
        (``cp``, if the caller has it) unless another version replaced them,
        and its compiled region is kept while every member the region runs
        statically is live (the same block objects, so the same bytes; the
        versions it selects at run time are checked there, codegen
        ``goto_version``)."""
        blocks = self.blocks
        blocks[key] = blk
        if cp is None:
            cp = self.code_pages.get(blk.page >> 12) or self._code_page(blk.page >> 12)
        if cp.blocks.get(key) != blk.reg:
            cp.set(key, blk.reg)
        fn = blk.compiled
        if fn is not None:
            regions = self.regions
            for m in fn.static:
                if blocks.get(m.key) is not m or m.hole is not None:
                    blk.compiled, blk.entry = None, 0
                    blk.heat = 0
                    break
            else:
                for m in fn.static:
                    heads = regions.get(m.key)
                    if heads is None:
                        regions[m.key] = {key}
                    else:
                        heads.add(key)
        self.stats["blocks_revived"] += 1
        return blk

    def _keep_dropped(self, blk):
        """Keep a block a write dropped (``blk.code``: its bytes) for
        ``_revive``: up to 4 versions per key, for MAX_DROPPED keys.  Its
        byte ranges stay registered in its code page while it is kept (a
        write to them is still a code write, and finds it not live); a
        version forgotten here gives them up unless it is live."""
        dropped = self.dropped
        key = blk.key
        variants = dropped.get(key)
        if variants is None:
            if len(dropped) >= MAX_DROPPED:
                k = next(iter(dropped))
                for _, old in dropped.pop(k):
                    self._forget(old)
            variants = dropped[key] = []
        else:
            for _, b in variants:
                if b is blk:
                    return
            if len(variants) >= 4:
                self._forget(variants.pop(0)[1])
        variants.append((blk.code, blk))

    def _forget(self, blk):
        """A kept version leaves Engine.dropped: unregister its bytes unless
        a block is live at its address (the registration is that block's,
        even when it has the same ranges: versions of one instruction
        usually do) or another version's replaced them."""
        key = blk.key
        if key in self.blocks:
            return
        cp = self.code_pages.get(blk.page >> 12)
        if cp is not None and cp.blocks.get(key) == blk.reg:
            cp.remove(key)

    @staticmethod
    def _end_at_own_store(insns, sets_rip):
        """Self-modifying code that stores (RIP-relative) into a later
        instruction of its own block: the block ends after the store, so the
        store changes only the blocks from there on, and the storing block
        stays valid (and compiled) however often the rewritten code
        changes.  Returns the block's ``sets_rip``; ``insns`` is cut."""
        end = insns[-1].next_ip
        for n, ins in enumerate(insns[:-1]):
            i = ins.iced
            if (i.op0_kind == _MEMORY and i.is_ip_rel_memory_operand
                    and ins.next_ip <= i.ip_rel_memory_address < end):
                del insns[n + 1:]
                return False
        return sets_rip

    @staticmethod
    def _page2_ok(cpu, blk, lin):
        """A block whose last instruction runs into the next page is valid only
        while that page still maps to the RAM it was decoded from."""
        nxt = ((lin | 0xFFF) + 1) & cpu.lin_mask
        return cpu.fx.get(nxt >> 12) == blk.page2

    @staticmethod
    def _insn_len(data, bits, rip):
        i = iced_x86.Decoder(bits, data, iced_x86.DecoderOptions.AMD, ip=rip).decode()
        if i.code == iced_x86.Code.INVALID:
            return None
        return i.len

    # ---------------------------------------------------------------- self-modifying code
    def _patched_imm(self, ins, at):
        """The instruction at RAM offset ``at`` had its immediate rewritten
        before (codepages.py, ``CodePage.volatile``): if it still is an
        ALU/MOV with an immediate source, it reads the immediate from RAM
        each time it runs (tier 1: ``get1``; tier 2: codegen), and those
        bytes are not registered as translated code."""
        i = ins.iced
        size = _VIMM_KINDS.get(i.op1_kind) if i.op_count == 2 else None
        if size is None or ins.fn not in _VIMM_OPS or (at & 0xFFF) + ins.len > PAGE:
            return
        n, signed = size
        a = at + ins.len - n                  # the immediate ends the instruction
        mask = (1 << (8 * ins.osize)) - 1
        ram = self.machine.bus.ram.buf
        sign = 1 << (8 * n - 1) if signed else 0
        if n == 1:
            def get1(cpu):
                return ((ram[a] ^ sign) - sign) & mask
        else:
            b = a + n

            def get1(cpu):
                return ((int.from_bytes(ram[a:b], "little") ^ sign) - sign) & mask
        ins.get1 = get1
        ins.vimm = (a, n, signed)

    def _register_code(self, blk, page_off, lo, hi, holes=()):
        if page_off is None:
            return
        cp = self._code_page((page_off & ((1 << 52) - 1)) >> 12)   # the DRAM page, whatever the key
        return cp.add(blk.key, lo, hi, holes)

    def _code_page(self, page):
        cp = self.code_pages.get(page)
        if cp is None:
            cp = self.code_pages[page] = CodePage()
            # This page just became code: no CPU may write it on the fast
            # path; writes go through its byte map (Cpu.fc, _on_ram_write).
            for cpu in self.machine.cpus:
                cpu.tlb.drop_fast_writes()
        return cp

    def _on_ram_write(self, off, n):
        """A write of ``n`` bytes at RAM offset ``off`` (within one page):
        drop the blocks whose bytes it touched; the writing instruction ends
        its block (Engine.smc), so the next instruction sees the store.

        A dropped block decoded from this page alone is kept with its bytes
        (``_keep_dropped``) and its registration in the page stays, so that
        dropping it and taking it back (``_revive``) cost a dictionary
        update each: code that flips between versions (an opcode rewritten
        back and forth) swaps the live one.  Registered bytes of a kept
        block that is not live are bytes of no live block: a write to them
        changes nothing that runs."""
        page = off >> 12
        cp = self.code_pages.get(page)
        if cp is None:
            return
        lo = off & 0xFFF
        hi = lo + n
        if cp.map.find(1, lo, hi) < 0:
            return                           # data next to code
        keys = cp.hits.get((lo, hi))
        if keys is None:
            keys = cp.written(lo, hi)
        blocks = self.blocks
        dropped = self.dropped
        regions = self.regions
        hits = 0
        swapped = None
        for k in keys:
            blk = blocks.get(k)
            if blk is None:
                continue                     # kept, not live (or dropped with its page elsewhere)
            hits += 1
            imms = blk.imms
            if imms is None:                 # it may have an immediate the write patched
                self._note_patched_imm(cp, blk, page, lo, hi)
            elif imms and blk.page >> 12 == page:
                for a, end, start in imms:
                    if a <= lo and hi <= end:
                        cp.volatile.add(start)      # as _note_patched_imm
                        break
            if blk.code is None or blk.page >> 12 != page:
                self.invalidate(k)
                continue
            # In one pass: is it kept already (a version taken back), and is
            # a kept version's code what RAM holds now (an opcode flipped
            # back: that version is the live block again right away, as
            # translate would take it back when the block next runs)?
            variants = dropped.get(k)
            kept = False
            match = None
            if variants is not None:
                if len(variants) > 1 and self.instrument is None and not (
                        self.bus.dirty and page in self.bus.dirty):   # else RAM may be behind a line
                    a = blk.page + blk.lo
                    ip = blk.insns[0].ip
                    ram = self.ram
                    for code, old in variants:
                        if old is blk:
                            kept = True
                        elif (match is None and ram[a:a + len(code)] == code and old.page == blk.page
                              and old.insns[0].ip == ip):
                            match = old
                else:
                    for _, b in variants:
                        if b is blk:
                            kept = True
                            break
            if not kept:
                self._keep_dropped(blk)
            self.stats["blocks_invalidated"] += 1
            if k in regions:
                del blocks[k]
                self._drop_regions(k)
            elif match is None:
                del blocks[k]
            if match is not None:
                self._revive(match, k, cp)       # replaces it in blocks
                swapped = k
                if len(k) == 2:
                    self._group(k, cp)
        if hits:
            # Engine.smc: the key of the one block the write swapped for a
            # kept version (compiled code that selects that block's version
            # goes on, codegen Gen.slow_store), else 1; two writes before
            # anyone looks: 1 unless both swapped the same block.
            new = swapped if hits == 1 and swapped is not None else 1
            cur = self.smc[0]
            self.smc[0] = new if not cur or cur == new else 1

    def _group(self, key, cp):
        """The versions of the block ``key`` (kept, and the live one) that
        differ only in bytes [d0, d1) of their first instruction, with the
        same length, page and no patched immediates, become a group: those
        bytes leave the byte map (a write there is a data write), and the
        version that runs is the one whose bytes [d0, d1) RAM holds when the
        block is entered - by the dispatcher (``_guard``) or a region
        (``live_version``).  Exact: every other byte of the block is still
        registered (a write there drops it as before), and nothing in the
        block runs before its first instruction.  Regions that ran a version
        statically are dropped (``_drop_regions``, ``_revive`` refuses them)."""
        live = self.blocks.get(key)
        vs = [b for _, b in self.dropped.get(key, ())]
        if live is None or not vs or self.instrument is not None:
            return
        if live not in vs:
            vs.append(live)
        b0 = vs[0]
        code0, lo, page = b0.code, b0.lo, b0.page
        n = len(code0)
        if lo + n > PAGE:
            return
        first = n
        for b in vs:
            if (b.code is None or len(b.code) != n or b.page != page or b.lo != lo
                    or b.page2 is not None or any(ins.vimm is not None for ins in b.insns)):
                return
            first = min(first, b.insns[0].len)
        d0, d1 = n, 0
        for b in vs:
            c = b.code
            for i in range(first):
                if c[i] != code0[i]:
                    d0, d1 = min(d0, i), max(d1, i + 1)
            if c[first:] != code0[first:]:
                return                      # they differ after the first instruction
        if d0 >= d1:
            return
        table = {}
        for b in vs:
            table.setdefault(b.code[d0] if d1 - d0 == 1 else bytes(b.code[d0:d1]), b)
        group = (page + lo + d0, d1 - d0, table)
        reg = tuple(r for r in ((lo, lo + d0), (lo + d1, lo + n)) if r[0] < r[1])
        for b in vs:
            b.hole, b.reg = group, reg
            fn = b.compiled
            if fn is not None and any(m.key == key for m in fn.static):
                b.compiled, b.entry, b.heat = None, 0, 0
        cp.set(key, reg)
        if key in self.regions:
            self._drop_regions(key)

    def live_version(self, key):
        """The block to run at ``key`` now, for a compiled region's
        transition to a block it selects (codegen ``goto_version``): the
        live block, or for one in a version group (``_group``) the version
        whose bytes RAM holds (None: no version has them; the region leaves
        and the dispatcher decodes them)."""
        b = self.blocks.get(key)
        if b is None or b.hole is None:
            return b
        a, d, table = b.hole
        if self.bus.dirty and a >> 12 in self.bus.dirty:
            return None                     # RAM may be behind a CPU's decrypted line
        return table.get(self.ram[a] if d == 1 else self.ram[a:a + d])

    def _guard(self, blk):
        """The dispatcher enters ``blk``, which is in a version group: the
        version whose bytes RAM holds becomes the live block (``_revive``);
        if none has them, ``blk`` is dropped (kept) and None returned, to
        translate."""
        a, d, table = blk.hole
        v = table.get(self.ram[a] if d == 1 else self.ram[a:a + d])
        if v is blk:
            return blk
        key = blk.key
        if v is not None and not (self.bus.dirty and a >> 12 in self.bus.dirty):
            return self._revive(v, key)
        self._keep_dropped(blk)
        if self.blocks.get(key) is blk:
            del self.blocks[key]
            self.stats["blocks_invalidated"] += 1
        if key in self.regions:
            self._drop_regions(key)
        return None

    def _note_patched_imm(self, cp, blk, page, lo, hi):
        """A write to bytes [lo, hi) of RAM page ``page`` hit block ``blk``:
        if they lie within the immediate of one of its ALU/MOV instructions,
        remember that instruction as patched (``CodePage.volatile``)."""
        if blk.page is None or blk.page >> 12 != page:
            return
        imms = blk.imms
        if imms is None:
            # Its instructions with such an immediate: (the immediate's first
            # byte, the instruction's end, its start), as page offsets.
            ins0 = blk.insns[0]
            base = blk.lo
            imms = []
            for ins in blk.insns:
                start = base + ins.ip - ins0.ip
                end = start + ins.len
                size = _VIMM_KINDS.get(ins.iced.op1_kind) if ins.iced.op_count == 2 else None
                if size is not None and ins.fn in _VIMM_OPS and end <= PAGE:
                    imms.append((end - size[0], end, start))
            imms = blk.imms = tuple(imms)
        for a, end, start in imms:
            if a <= lo and hi <= end:       # within it: no other instruction is touched
                cp.volatile.add(start)
                return

    def invalidate(self, key):
        """Forget the block ``key`` and every region compiled with it."""
        blk = self.blocks.pop(key, None)
        if blk is not None:
            self.stats["blocks_invalidated"] += 1
            for page_off in (blk.page, blk.page2):
                if page_off is not None:
                    cp = self.code_pages.get((page_off & ((1 << 52) - 1)) >> 12)
                    if cp is not None:
                        cp.remove(key)
        self._drop_regions(key)

    def _drop_regions(self, key):
        """The block ``key`` is gone: so is every compiled region holding it."""
        for entry in self.regions.pop(key, ()):
            b = self.blocks.get(entry)
            if b is not None and b.compiled is not None and key in (m.key for m in b.compiled.static):
                b.compiled = None
                b.entry = 0
                b.heat = 0

    def flush(self):
        self.blocks.clear()
        self.dropped.clear()
        self.code_pages.clear()
        self.regions.clear()
        try:
            cpus = self.machine.cpus
            self.machine.pt_watch.clear()    # its marks were in the code pages (walkmemo.py)
        except ReferenceError:               # the machine is gone (its RAM is being freed)
            return
        for cpu in cpus:
            cpu.tlb.drop_fast_code()

    # ---------------------------------------------------------------- running
    def run(self, cpu, budget: int, stepping: bool = False) -> int:
        """Run ``cpu`` for about ``budget`` instructions; returns how many retired.

        Stops early when the CPU halts or the machine is asked to stop.
        ``stepping`` runs one instruction at a time (the debugger's single-step
        and watchpoints, ``_run_stepping``).  ``cpu.q_used`` is what the run used
        of ``budget`` (instructions plus stall), so a run stopped early by the
        debugger can resume with the rest of its quantum.
        """
        done = [0]
        cpu.q_events = 0
        try:
            (self._run_stepping if stepping else self._run)(cpu, budget, done)
        finally:
            cpu.retired += done[0]
            # Time a PAUSE took beyond this quantum is owed to the next one.
            cpu.q_used = done[0] + cpu.q_events + cpu.stall
            cpu.stall = max(0, cpu.q_used - budget)
        return done[0]

    def _run(self, cpu, budget, done):
        executed = 0
        # Exceptions delivered take a step of the budget each, so a handler that
        # faults at its first instruction cannot hold the quantum forever (issue 13).
        events = 0
        blocks = self.blocks
        machine = self.machine
        smc = self.smc
        ptq = machine.pt_watch.queue
        try:
            while executed + events + cpu.stall < budget and not machine.stopping:
                if ptq:
                    machine.pt_watch.commit()     # page walks to memoize (walkmemo.py)
                if cpu.pending:
                    interrupts.service(cpu)
                    if machine.stopping:
                        break           # a debugger stop at the event just delivered
                if cpu.halted or cpu.wait_for_sipi:
                    break
                if cpu.rflags & TF or cpu.step_once or cpu.dr[7] & 0xFF or cpu.debugctl:
                    cpu.q_exec = executed
                    n = self.step(cpu)
                    executed += n
                    events += not n         # step() delivered an exception instead
                    continue
                rip = cpu.rip
                lin = (cpu.ebase[CS] + rip) & cpu.lin_mask
                key = (lin, cpu.mode_key)
                blk = blocks.get(key)
                page = cpu.fx.get(lin >> 12)
                try:
                    if page is None:
                        _first_fetch(cpu, lin)
                        page = cpu.fx.get(lin >> 12)
                    if (blk is None or blk.page != page or page is None
                            or blk.page2 is not None and not self._page2_ok(cpu, blk, lin)
                            or blk.hole is not None and (blk := self._guard(blk)) is None):
                        blk = self.translate(cpu, lin, key)
                except CpuException as e:
                    interrupts.deliver_exception(cpu, e)
                    events += 1
                    continue
                cpu.q_exec = executed
                fn = blk.compiled
                if fn is not None:
                    # Tier 2: generated Python for the whole block (codegen.py).
                    try:
                        # What is left of the quantum, as the loop above counts it:
                        # delivered events and owed stall time take their share.
                        r = fn(cpu, budget - executed - events - cpu.stall, blk.entry)
                    except CpuException as e:
                        executed += cpu.fault_n
                        cpu.q_exec = executed
                        cpu.rip = cpu.fault_ip
                        interrupts.deliver_exception(cpu, e)
                        events += 1
                        continue
                    if r >= 0:
                        executed += r
                        continue
                    if r < -1:
                        # It left at an instruction whose event is decided
                        # (codegen t_direct): take it as a fault there is.
                        executed += -2 - r
                        cpu.q_exec = executed
                        ins = cpu.event_ins
                        ins.fn.direct(cpu, ins)
                        events += 1
                        continue
                    # Declined at a lent entry (codegen NCHK): run the block here.
                n = 0
                try:
                    for ins in blk.insns:
                        ins.fn(cpu, ins)
                        n += 1
                        if smc[0]:
                            # It rewrote translated code: go on from the next
                            # instruction, translated afresh if it changed.
                            smc[0] = 0
                            if not ins.ends_block:
                                cpu.rip = ins.next_ip
                            break
                    else:
                        if not blk.sets_rip:
                            cpu.rip = blk.end_ip
                except CpuException as e:
                    cpu.rip = blk.insns[n].ip
                    executed += n
                    cpu.q_exec = executed
                    interrupts.deliver_exception(cpu, e)
                    events += 1
                    continue
                executed += n
                blk.heat += 1
                if blk.heat == self.hot_threshold:
                    blk.compiled, blk.entry = self.compile(blk, cpu), 0
        finally:
            done[0] = executed
            cpu.q_events = events
            cpu.q_exec = 0

    def _run_stepping(self, cpu, budget, done):
        """One instruction at a time, telling the debugger after each instruction
        boundary (an instruction retired, or an event delivered instead:
        ``machine.debug.after_step(cpu, retired)``, which may stop the machine, or
        return True to leave this loop).  Pending events are taken between every
        two instructions, not only between blocks."""
        executed = 0
        machine = self.machine
        after = machine.debug.after_step
        ptq = machine.pt_watch.queue
        try:
            while executed + cpu.stall < budget and not machine.stopping:
                if ptq:
                    machine.pt_watch.commit()
                if cpu.pending:
                    where = (cpu.rip, cpu.svm_guest)
                    interrupts.service(cpu)
                    if (cpu.rip, cpu.svm_guest) != where:
                        cpu.q_exec = executed
                        if after(cpu, 0):
                            break
                        continue
                if cpu.halted or cpu.wait_for_sipi:
                    break
                cpu.q_exec = executed
                n = self.step(cpu)
                executed += n
                cpu.q_exec = executed
                if after(cpu, n):
                    break
        finally:
            done[0] = executed
            cpu.q_exec = 0

    def step(self, cpu) -> int:
        """Execute exactly one instruction (single-step, breakpoints, interrupt shadow).

        Order (APM vol 2, 13.1.x): an instruction breakpoint is a fault taken
        before the instruction unless RFLAGS.RF is set; after the instruction,
        data-breakpoint hits and a TF single-step (DR6.BS) are reported
        together as one #DB trap.  RF is cleared once an instruction completes.
        """
        cpu.step_once = False
        # The instruction in an STI / MOV SS shadow: the shadow ends with it
        # (in_shadow lets a #VMEXIT in the middle report INTERRUPT_SHADOW).
        cpu.in_shadow, cpu.shadow = cpu.shadow, False
        tf = cpu.rflags & TF
        rip = cpu.rip
        lin = (cpu.ebase[CS] + rip) & cpu.lin_mask
        if cpu.dr[7] & 0xFF or cpu.watch:
            debug.sync(cpu)
            # With GIF = 0 a "Debug exception or trap, due to breakpoint
            # register match" is "Ignored and discarded" (APM 15.17, table 15-10).
            if not cpu.rflags & RF and cpu.gif:
                hits = debug.insn_hits(cpu, lin)
                if hits:
                    cpu.dr[6] = (cpu.dr[6] & ~0xF) | hits
                    interrupts.deliver(cpu, DB_VEC, interrupts.HWEXC, None)
                    return 0
        cpu.db_hits = 0
        cpu.no_traps = False                # set by the instruction (SKINIT) if it reinitializes
        key = (lin, cpu.mode_key, 1)
        try:
            blk = self.blocks.get(key)
            page = cpu.fx.get(lin >> 12)
            if page is None:
                _first_fetch(cpu, lin)
                page = cpu.fx.get(lin >> 12)
            if blk is None or blk.page != page or blk.page2 is not None and not self._page2_ok(cpu, blk, lin):
                blk = self.translate(cpu, lin, key, max_len=1)
            ins = blk.insns[0]
            rf_before = cpu.rflags & RF
            world = cpu.svm_guest
            ins.fn(cpu, ins)
        except CpuException as e:
            interrupts.deliver_exception(cpu, e)
            return 0
        finally:
            cpu.in_shadow = False
        if cpu.svm_guest != world:
            # VMRUN entered a guest: RF and TF now are the guest's; the
            # extension decides where the single-step trap goes.
            cpu.hooks.stepped_into_guest(cpu, bool(tf))
            return 1
        if not blk.sets_rip:
            cpu.rip = blk.end_ip
        if rf_before and cpu.rflags & RF:
            cpu.rflags &= ~RF
        branched = ins.ends_block and cpu.rip != ins.next_ip
        if branched and cpu.debugctl & 1:
            # DEBUGCTL.LBR: the last taken branch's source and target (APM 13.1.1.4).
            cpu.msr[0x1DB], cpu.msr[0x1DC] = ins.ip, cpu.rip
        if tf and cpu.debugctl & 2 and not branched:
            tf = 0                      # DEBUGCTL.BTF: single-step on branches only (13.1.1.3)
        if not cpu.gif:
            cpu.db_hits = 0                 # table 15-10, as above; TF traps still happen
        if cpu.no_traps:
            cpu.no_traps = tf = False       # e.g. "SKINIT does not honor instruction or data
            cpu.db_hits = 0                 # breakpoint traps, or trace traps" (APM 15.27.6)
        if cpu.db_hits or tf:
            cpu.dr[6] = (cpu.dr[6] & ~0xF) | cpu.db_hits | (0x4000 if tf else 0)
            interrupts.deliver(cpu, DB_VEC, interrupts.HWEXC, None)
        return 1
