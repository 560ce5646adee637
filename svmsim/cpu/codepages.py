"""Which bytes of RAM hold translated code (self-modifying code detection).

A write changes translated code only if it touches a byte some block was
decoded from, so the engine keeps, per RAM page holding code, a byte map of
the translated instructions and the byte range of each block.  A write to
such a page that misses every range (data sharing a page with code, common
in small kernels and boot code) changes nothing; one that hits drops exactly
the blocks whose bytes it touched, which are translated again when next run.

A page stays a code page once it held code (even when its last block is
dropped): its writes keep going through the code-page check, so a loop that
rewrites its own code does not turn the page back and forth.
"""
PAGE = 0x1000
_ONES = b"\x01" * PAGE


class CodePage:
    """The translated bytes of one RAM page."""
    __slots__ = ("map", "blocks")

    def __init__(self):
        self.map = bytearray(PAGE)       # 1 where a translated instruction byte lies
        self.blocks: dict = {}           # block key -> (lo, hi): its bytes [lo, hi) in this page

    def add(self, key, lo: int, hi: int) -> None:
        self.blocks[key] = (lo, hi)
        self.map[lo:hi] = _ONES[:hi - lo]

    def written(self, lo: int, hi: int) -> list:
        """Keys of the blocks whose bytes overlap [lo, hi)."""
        if self.map.find(1, lo, hi) < 0:
            return []
        return [k for k, (a, b) in self.blocks.items() if a < hi and lo < b]

    def remove(self, key) -> None:
        rng = self.blocks.pop(key, None)
        if rng is None:
            return
        lo, hi = rng
        self.map[lo:hi] = bytes(hi - lo)
        for a, b in self.blocks.values():      # bytes other blocks still cover
            if a < hi and lo < b:
                a, b = max(a, lo), min(b, hi)
                self.map[a:b] = _ONES[:b - a]
