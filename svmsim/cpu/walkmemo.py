"""Page-walk memos that survive TLB flushes, dropped by writes to what they read.

A flush (MOV CR3, INVLPG, TLB_CONTROL at VMRUN ...) guarantees that no stale
translation is used afterwards (APM 15.16): the next access walks the page
tables again.  A walk is a function of the paging-structure entries it reads
and of its control inputs (the root, the paging mode, NXE, the walker's
physical-address width and C-bit), so a re-walk that reads the same entries
gives the same Translation; if the first walk left every Accessed/Dirty bit
it needed set, the re-walk writes nothing either.  ``paging.Walker`` keeps
such walks in a memo keyed by the control inputs and the page; this module
keeps, machine-wide, which 8-byte entries each memo entry read, and drops the
memo entries whose entries any writer changes (docs/DESIGN.md, "Walk memo").

Every writer of RAM is seen:

* the bus (slow-path CPU stores of every CPU, the walker's own A/D updates,
  DMA through memory/dma.py, device models, loaders and firmware through
  ``write_bytes``/``zero_bytes``, SMRAM windows, the world switch's VMCB and
  host-save stores) calls ``PhysBus.write_watchers`` for every RAM write;
* fast-path stores (the CPU's write cache ``W`` and the address caches of
  compiled code filled from it) never reach a watched page: a watched page is
  made a code page (cpu/codepages.py) with its watched entries marked in the
  page's byte map, which takes it out of every CPU's write caches; stores to
  it go through the code-page cache ``FC``, which calls the watchers when a
  store touches a marked byte -- exactly as for translated code
  (tests/test_smc_versions.py covers those writers).

Walks that read anything but plain RAM (MMIO, unbacked addresses, SMRAM
windows) are not memoized; nor are walks through the encryption engine (the
walker's page-table read is then not the bus's).  A change of the bus layout
(an MMIO window added or removed) or of the code pages (``Engine.flush``)
drops every memo (``clear``).
"""
import sys

from .paging import Chunk

DEPS_MAX = 1 << 20     # registered (entry, memo entry) pairs before everything is dropped
MEMO_MAX = 1 << 16     # entries of one walker's memo before it is emptied
QUEUE_MAX = 1 << 12    # walks waiting for ``commit``
CHURN_MIN = 256        # kept walks dropped before PtWatch.off may be set


class PtWatch:
    """Machine-wide: which page-table entries (RAM offsets of 8-byte entries)
    memoized walks read, and who read them.

    A walk does not enter its memo at once: it is queued (``pend``) with the
    values of the entries it read, and ``commit`` -- called by the engine
    between blocks, where no compiled code holds a RAM offset it looked up
    before -- marks the entries' pages, then enters the walk only if every
    entry still holds the value the walk read (a store that came between,
    through a write cache the page was still in, or the walk's own A/D
    update, leaves it out: the next walk after a flush is queued again)."""

    def __init__(self, bus, code_pages, make_code_page):
        self.buf = bus.ram.buf
        # RAM as 8-byte words in the host's order (entries are aligned), if that is little-endian
        self.view = bus.ram.word_views()[8] if sys.byteorder == "little" else None
        self.code_pages = code_pages
        self.make_code_page = make_code_page   # RAM page -> its CodePage (made a code page if new)
        self.deps: dict = {}                  # entry offset -> [(memo dict, key, Translation), ...]
        self.pages: set = set()               # RAM pages holding a watched entry
        self.queue: list = []                 # (memo, key, Translation, ((offset, value), ...))
        self.gen = 0                          # moves at ``clear``: every memo is stale
        # Set when kept walks are mostly dropped by writes before they serve
        # (page tables that change all the time, as an OS's do): walks are no
        # longer recorded, so their pages are not watched (stores to them
        # stay in the write caches).
        self.off = False
        self.n = 0
        self.drops = 0                        # moves whenever a kept walk stops being valid (tlbkeep.py)
        self.stats = {"entered": 0, "stale": 0, "dropped": 0, "cleared": 0}
        bus.write_watchers.append(self._on_write)
        bus.layout_listeners.append(self.clear)

    def pend(self, memo: dict, key, t, pairs) -> None:
        """Walk ``key`` of ``memo`` gave ``t`` reading the 8-byte entries
        ``pairs`` (RAM offset, value, RAM offset, value, ...): enter it at
        the next ``commit``."""
        q = self.queue
        if len(q) < QUEUE_MAX:
            q.append((memo, key, t, pairs))

    def commit(self) -> None:
        """Enter the queued walks whose entries are unchanged (engine loop;
        nothing writes RAM while it runs, so the entries are checked first and
        marked as they are registered)."""
        view = self.view
        deps = self.deps
        code_pages = self.code_pages
        stats = self.stats
        q = self.queue
        for memo, key, t, pairs in q:
            if self.n >= DEPS_MAX or len(deps) >= DEPS_MAX:
                self.clear()
                break
            offs = pairs[0::2]
            for off, value in zip(offs, pairs[1::2]):
                if (view[off >> 3] if view is not None else self.word(off)) != value:
                    stats["stale"] += 1
                    break
            else:
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                memo[key] = t
                t.kept, t.mkey, t.memo = self.gen, key, memo
                ref = (memo, key, t)
                for off in offs:
                    lst = deps.get(off)
                    if lst is None:
                        lst = deps[off] = []
                        page = off >> 12
                        cp = code_pages.get(page)
                        if cp is None:
                            cp = self.make_code_page(page)
                        cp.mark_pt(off & 0xFFF)
                        self.pages.add(page)
                    lst.append(ref)
                self.n += len(offs)
                stats["entered"] += 1
        q.clear()

    def word(self, off: int) -> int:
        """The aligned 8-byte entry at RAM offset ``off``."""
        return int.from_bytes(self.buf[off:off + 8], "little")

    def _on_write(self, off: int, n: int) -> None:
        """RAM bytes [off, off + n) (within one page) were written."""
        if off >> 12 not in self.pages:
            return
        deps = self.deps
        for e in range(off & ~7, off + n, 8):
            lst = deps.pop(e, None)
            if lst is not None:
                self.n -= len(lst)
                self.drops += 1
                for memo, key, t in lst:
                    t.kept = -1                  # no longer what a walk gives (tlbkeep.py)
                    if t.__class__ is Chunk:
                        for s in t.slices.values():
                            s.kept = -1          # each slice is that chunk's walk
                    if memo.pop(key, None) is not None:
                        self.stats["dropped"] += 1
                cp = self.code_pages.get(e >> 12)
                if cp is not None:
                    cp.unmark_pt(e & 0xFFF)      # watched again if a walk reads it again
                    if not cp.pt and not cp.code:
                        self._release(e >> 12, cp)
                if self.stats["dropped"] >= CHURN_MIN and self.stats["dropped"] * 2 > self.stats["entered"]:
                    self.off = True

    def _release(self, page, cp) -> None:
        """A page made a code page only for its watched entries has none left:
        it is a plain page again (its stores go back to the write caches).
        Code-page cache entries still holding its byte map send every store
        to the watchers from now on (the map is all ones), which find no
        code and no watched entry: correct until they are dropped."""
        del self.code_pages[page]
        cp.map[:] = b"\x01" * 4096
        self.pages.discard(page)

    def clear(self) -> None:
        """Forget every memo (each walker sees ``gen`` move and empties its own)."""
        self.deps.clear()
        self.pages.clear()
        self.queue.clear()
        self.n = 0
        self.gen += 1
        self.stats["cleared"] += 1


def bus_deps(bus):
    """The dependency function of a walker that reads page tables from the
    bus: (RAM offset, value, RAM offset, value, ...) of the entries a walk
    read (its ``steps``), or None if one is not plain RAM (``ram_offset``
    inlined: it runs once per entry of every walk not in the memo)."""
    mmio, low, high, four = bus._mmio_pages, bus.low_top, bus.high_top, 1 << 32

    def deps(steps):
        out = []
        for _, addr, e in steps:
            if addr >> 12 in mmio:
                return None
            if addr < low:
                out += (addr, e)
            elif four <= addr < high:
                out += (addr - four + low, e)
            else:
                return None
        return tuple(out)
    return deps
