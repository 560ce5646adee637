"""Which bytes of RAM hold translated code (self-modifying code detection).

A write changes translated code only if it touches a byte some block was
decoded from, so the engine keeps, per RAM page holding code, a byte map of
the translated instructions and the byte ranges of each block.  A write to
such a page that misses every range (data sharing a page with code, common
in small kernels and boot code) changes nothing; one that hits drops exactly
the blocks whose bytes it touched, which are translated again when next run.

Patched immediates: code that rewrites the immediate of an instruction it
runs (a counter or an address stored into ``add $imm32``: ordinary in
self-modifying code) would otherwise drop and re-decode its block at every
store.  The first such store drops the block as any other and records the
instruction's page offset in ``volatile``; when it is translated again, the
instruction reads its immediate from RAM each time it runs (``Insn.vimm``,
engine.py) and its immediate bytes are left out of the byte map, so later
stores to them are ordinary data stores.  Only the immediate of an
instruction whose handler uses it as a plain value (ALU ops and MOV) is
treated so: those bytes never change the instruction's length or meaning,
and the instruction sees the stored bytes at its next execution exactly as
if it had been decoded again (the strictest reading of self-modifying code,
which svmsim keeps: the very next instruction sees a store, docs/DESIGN.md).

Kept versions (engine.py ``Engine.dropped``): a block a write dropped keeps
its byte ranges registered here while the engine keeps it for taking back,
so code that flips between versions (an opcode rewritten back and forth)
swaps the live block without touching the map.  A write to registered bytes
of a kept block that is not live drops nothing (no live block has them).

A page stays a code page once it held code (even when its last block is
dropped): its writes keep going through the code-page check, so a loop that
rewrites its own code does not turn the page back and forth.

Page-table entries (cpu/walkmemo.py): a page holding an 8-byte entry that a
memoized page walk read is made a code page too, and the entry's bytes are
marked in its byte map (``pt``), so every store to them reaches the write
watchers as a store to translated code does; they stay marked when blocks
come and go.
"""
PAGE = 0x1000
_ONES = b"\x01" * PAGE


class CodePage:
    """The translated bytes of one RAM page."""
    __slots__ = ("map", "map8", "blocks", "volatile", "hits", "pt", "code")

    def __init__(self):
        self.map = bytearray(PAGE)       # 1 where a translated instruction byte lies
        # The same bytes as 8-byte words: compiled code tests an aligned
        # quadword with one index (the map is only ever assigned in place).
        self.map8 = memoryview(self.map).cast("Q")
        self.blocks: dict = {}           # block key -> ((lo, hi), ...): its bytes in this page
        self.volatile: set = set()       # page offsets of instructions whose immediate is patched
        self.hits: dict = {}             # (lo, hi) -> written(lo, hi) while no block comes or goes
        self.pt = None                   # page offsets of watched page-table entries (walkmemo.py)
        self.code = False                # it held translated code (then it stays a code page)

    def mark_pt(self, o: int) -> None:
        """The 8-byte page-table entry at page offset ``o`` is watched."""
        if self.pt is None:
            self.pt = set()
        self.pt.add(o)
        self.map[o:o + 8] = _ONES[:8]

    def unmark_pt(self, o: int) -> None:
        """The entry at ``o`` is no longer watched: its bytes leave the map
        unless a block may cover them (then they stay: a store to them only
        reaches the watchers, which find nothing)."""
        if self.pt is not None:
            self.pt.discard(o)
            if not self.blocks:
                self.map[o:o + 8] = bytes(8)

    def add(self, key, lo: int, hi: int, holes=()) -> tuple:
        """Block ``key`` was decoded from bytes [lo, hi) of this page, except
        the ``holes`` (sorted (a, b) ranges inside it: patched immediates);
        returns its ranges (``set``).  A key registered before is replaced."""
        ranges = []
        for a, b in holes:
            if lo < a:
                ranges.append((lo, a))
            lo = b
        if lo < hi:
            ranges.append((lo, hi))
        ranges = tuple(ranges)
        self.set(key, ranges)
        return ranges

    def set(self, key, ranges: tuple) -> None:
        """Register block ``key`` with the byte ranges ``add`` returned for it
        (a kept version of a block coming back, engine.py ``_revive``)."""
        if key in self.blocks:
            self.remove(key)
        self.hits.clear()
        self.code = True
        self.blocks[key] = ranges
        for a, b in ranges:
            self.map[a:b] = _ONES[:b - a]

    def written(self, lo: int, hi: int) -> list:
        """Keys of the blocks whose bytes overlap [lo, hi)."""
        if self.map.find(1, lo, hi) < 0:
            return []
        keys = self.hits.get((lo, hi))
        if keys is None:
            if len(self.hits) >= 64:
                self.hits.clear()
            keys = self.hits[lo, hi] = [k for k, rs in self.blocks.items() if any(a < hi and lo < b for a, b in rs)]
        return keys

    def remove(self, key) -> None:
        rs = self.blocks.pop(key, None)
        if rs is None:
            return
        self.hits.clear()
        for lo, hi in rs:
            self.map[lo:hi] = bytes(hi - lo)
        for other in self.blocks.values():      # bytes other blocks still cover
            for a, b in other:
                for lo, hi in rs:
                    if a < hi and lo < b:
                        x, y = max(a, lo), min(b, hi)
                        self.map[x:y] = _ONES[:y - x]
        if self.pt:
            for o in self.pt:                   # watched page-table entries stay marked
                self.map[o:o + 8] = _ONES[:8]
