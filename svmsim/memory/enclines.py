"""Decrypted lines of private pages, where the CPU's fast paths find them (the
CPU side of the encryption engine; issue 14 item 4, issue 16 item 4).

On hardware the caches hold plaintext, each line tagged with the key it was
filled with, and the memory controller encrypts a line when it is written
back to DRAM (APM vol 2, 7.10.6).  svmsim keeps, per (key slot, DRAM page)
the CPU uses with a key, the page's plaintext in a *line slot*, so that a
private access is as fast as an access to plain RAM:

* The slots lie in the host mapping of RAM past its end (``Ram.window``):
  the fast caches (``Tlb.fast``: linear page -> offset in that mapping) and
  compiled blocks index them like RAM.  No physical address reaches them
  (``PhysBus.ram_offset`` stops at the end of DRAM).  DRAM, which devices,
  debuggers, the AMD-SP, the hypervisor and other keys see, holds only
  ciphertext, at every moment.
* A page an SEV guest may write on the fast path is *dirty*: the slot is
  ahead of DRAM, as a write-back cache is.  Its line is written back (the
  page encrypted with its tweaks and stored in DRAM) before anyone else can
  see that DRAM: before the bus reads the page (a device, the AMD-SP, the
  hypervisor's Python, a debugger, any CPU read on the slow path: no CPU
  indexes the DRAM of a page with lines from its fast read cache,
  ``Cpu.fill_read``), before another key uses the page, at WBINVD/WBNOINVD
  and CLFLUSH, at eviction, before its key changes, and when a run returns.
  Writing back takes the page's entries out of the write caches, so the
  next store marks it dirty again.  Stores on the slow path (page-crossing,
  REP bulk, watched data) are written through at once.
* A slot stays exact because every other writer of the DRAM page drops it:
  writes through the bus reach ``_on_ram_write`` (a dirty line's blocks
  outside the write are written back first); a write or a write mapping
  through another key drops the other keys' lines of the page; and no CPU
  may write a page that has a line on its fast path without that line
  (``Cpu.fill_write`` refuses it, and the write caches are dropped when a
  page that was in one gets its first line), so such stores go through the
  bus.  Dropping a
  line removes the fast cache entries that point at it.
* A key slot loaded or cleared by the AMD-SP drops its lines (after writing
  them back with the key they were filled with).

Keys stay in the engine; this module holds its cipher contexts only.
"""
from __future__ import annotations

from .encryption import BLOCK, PAGE, _xor_ends

LINE_SLOTS = 8192          # pages of plaintext kept (32 MiB of host memory, touched lazily)
# The 256 block numbers of a page as big-endian 128-bit counters, less the page's own
# part (a page's first block number has its low 8 bits clear): the tweaks are their
# ECB encryption (= AES-CTR's keystream, without building a CTR context per page).
_COUNTERS = int.from_bytes(b"".join(j.to_bytes(16, "big") for j in range(PAGE // BLOCK)), "big")


def _page_tweaks(enc, spa):
    base = int.from_bytes(((spa >> 4) & ~0xFF).to_bytes(16, "big") * (PAGE // BLOCK), "big")
    return enc.update((_COUNTERS | base).to_bytes(PAGE, "big"))


class _Line:
    __slots__ = ("key", "slot", "off", "tweak", "enc", "refs")

    def __init__(self, key, slot, off, tweak, enc):
        self.key, self.slot, self.off, self.tweak, self.enc = key, slot, off, tweak, enc
        self.refs: dict = {}          # (id(fast dict), vpn) -> (that dict, a write cache?)


class PlaintextLines:
    """Line slots of one machine (``Machine.enc_lines``), used by the CPU's
    accesses with a key (``Cpu.pread``/``pwrite`` for C-bit and SEV-guest
    frames) and by nested paging's fast caches of private pages."""

    def __init__(self, engine, bus, cpus):
        self.engine = engine
        self.bus = bus
        self.ram = bus.ram.buf
        self.cpus = cpus                      # callable: the machine's CPUs
        base = bus.ram.size
        self.nslots = bus.ram.window // PAGE
        self._free = [base + i * PAGE for i in range(self.nslots - 1, -1, -1)]
        self._lines: dict = {}                # (asid, DRAM page) -> _Line, oldest first
        self.pages: dict = {}                 # DRAM page -> {asid: _Line}
        self.dirty: dict = {}                 # DRAM page -> its dirty _Line (one key at a time)
        self.plain_w: set = set()             # DRAM pages put in a write cache (Cpu.fill_write)
        self.plain_r: set = set()             # DRAM pages put in a read cache (Cpu.fill_read)
        self._watch = self._on_ram_write
        bus.write_watchers.append(self._watch)
        bus.dirty, bus.write_back = self.dirty, self.write_back_page
        engine.forget_listeners.append(self.forget)
        engine.flush_listeners.append(self.write_back_all)
        self.stats = {"filled": 0, "dropped": 0, "written_back": 0}

    # -- slots -------------------------------------------------------------------
    def line(self, spa, off, asid):
        """The _Line of the page at ``spa`` (RAM offset ``off``) under ``asid``."""
        ln = self._lines.get((asid, off >> 12))
        return ln if ln is not None else self._fill(spa & ~(PAGE - 1), off & ~(PAGE - 1), asid)

    def _fill(self, spa, off, asid):
        if not self._free:
            self._drop(self._lines[next(iter(self._lines))])          # the oldest line
        page = off >> 12
        if page in self.dirty:                # another key's dirty line: DRAM first
            self._write_back(self.dirty[page])
        slot = self._free.pop()
        enc, dec = self.engine.contexts(asid)
        tweak = _page_tweaks(enc, spa)
        ram = self.ram
        ram[slot:slot + PAGE] = _xor_ends(dec, ram[off:off + PAGE], tweak)
        ln = self._lines[(asid, page)] = _Line((asid, page), slot, off, tweak, enc)
        same = self.pages.get(page)
        if same is None:
            self.pages[page] = {asid: ln}
            if page in self.plain_w:
                # The page may sit in a write cache (a mapping without the
                # key): from now on its stores must reach the bus.
                for cpu in self.cpus():
                    cpu.tlb.drop_fast_writes(code_too=True)
                self.plain_w.clear()          # no write cache holds any page now
            if page in self.plain_r:
                # ... or in a read cache: from now on its reads go through the
                # bus, which writes a dirty line back first.
                for cpu in self.cpus():
                    cpu.tlb.drop_fast_reads_of(off)
                self.plain_r.discard(page)
        else:
            same[asid] = ln
        self.stats["filled"] += 1
        return ln

    def _unmap(self, ln, writes_only=False):
        """Take the fast cache entries pointing at ``ln``'s slot out (only
        those of write caches with ``writes_only``)."""
        slot = ln.slot
        keep = {}
        dropped = None
        for k, (d, write) in ln.refs.items():
            if writes_only and not write:
                keep[k] = (d, write)
                continue
            v = d.get(k[1])
            if v == slot or v.__class__ is tuple and v[0] == slot:
                del d[k[1]]
                dropped = dropped or ("w" if write else "r")
                if not write:
                    dropped = "r"
        ln.refs = keep
        if dropped:
            # Compiled code's address caches were filled from those entries.
            for cpu in self.cpus():
                cpu.tlb.drop_fast_addr(writes_only=dropped == "w")

    def _drop(self, ln, write_back=True):
        page = ln.key[1]
        if self.dirty.get(page) is ln:
            if write_back:
                self._write_back(ln)
            else:
                del self.dirty[page]
        self._unmap(ln)
        del self._lines[ln.key]
        same = self.pages[page]
        del same[ln.key[0]]
        if not same:
            del self.pages[page]
        self._free.append(ln.slot)
        self.stats["dropped"] += 1

    def _write_back(self, ln, lo=0, hi=PAGE):
        """Encrypt the slot's [lo, hi) into DRAM; the page is clean (its write
        cache entries are taken out, so the next fast store needs a new map)."""
        s, off = ln.slot, ln.off
        ram = self.ram
        if lo < hi:
            ram[off + lo:off + hi] = _xor_ends(ln.enc, ram[s + lo:s + hi], ln.tweak[lo:hi])
        del self.dirty[ln.key[1]]
        self._unmap(ln, writes_only=True)
        self.stats["written_back"] += 1

    def write_back_page(self, page):
        """The bus is about to read DRAM page ``page`` (PhysBus.read*)."""
        ln = self.dirty.get(page)
        if ln is not None:
            self._write_back(ln)

    def write_back_all(self):
        """#VMEXIT, WBINVD: every dirty line to DRAM."""
        for ln in list(self.dirty.values()):
            self._write_back(ln)

    # -- the fast caches ---------------------------------------------------------
    def map_read(self, spa, asid, d, vpn):
        """Offset of the plaintext of private page ``spa`` for a fast read
        cache ``d`` (linear page ``vpn``), or None if it is not RAM."""
        off = self.bus.ram_offset(spa)
        if off is None:
            return None
        self.engine._track(spa, 1, asid)
        ln = self.line(spa, off, asid)
        ln.refs[(id(d), vpn)] = (d, False)
        return ln.slot

    def map_write(self, spa, asid, fast_w, fast_fc, vpn, code_pages):
        """Put private page ``spa`` in a write cache for linear page ``vpn``
        (``fast_fc`` with its byte map if it holds translated code); the line
        is dirty from now on.  False if it is not RAM."""
        off = self.bus.ram_offset(spa)
        if off is None:
            return False
        ln = self.line(spa, off, asid)
        page = off >> 12
        same = self.pages[page]
        if len(same) > 1:
            for other in [o for a, o in same.items() if a != asid]:
                self._drop(other)
        cp = code_pages.get(page)
        if cp is None:
            fast_w[vpn] = ln.slot
            ln.refs[(id(fast_w), vpn)] = (fast_w, True)
        else:
            fast_fc[vpn] = (ln.slot, cp.map, cp.map8)
            ln.refs[(id(fast_fc), vpn)] = (fast_fc, True)
        self.dirty[page] = ln
        return True

    def forget(self, asid):
        """The key of ``asid`` changed: its lines go (written back first with
        the key they were filled with)."""
        for ln in [ln for k, ln in self._lines.items() if k[0] == asid]:
            self._drop(ln)

    def _on_ram_write(self, off, n):
        """Something wrote DRAM through the bus: the page's lines are stale
        (a dirty line's blocks outside the write are written back first)."""
        page = off >> 12
        same = self.pages.get(page)
        if same:
            ln = self.dirty.get(page)
            if ln is not None:
                x = off & (PAGE - 1)
                lo, hi = x & ~(BLOCK - 1), (x + n + BLOCK - 1) & ~(BLOCK - 1)
                self._write_back(ln, 0, lo)
                self.dirty[page] = ln
                self._write_back(ln, hi, PAGE)
            for ln in list(same.values()):
                self._drop(ln, write_back=False)

    # -- slow-path accesses ------------------------------------------------------
    def read(self, spa, n, asid):
        """Plaintext of ``n`` bytes at ``spa`` through ``asid``'s key."""
        self.engine._track(spa, n, asid)
        out = []
        ram = self.ram
        while n:
            k = min(n, PAGE - (spa & (PAGE - 1)))
            off = self.bus.ram_offset(spa)
            if off is None:
                out.append(self.engine.peek(self.bus.read_bytes, spa, k, asid))
            else:
                s = self.line(spa, off, asid).slot + (spa & (PAGE - 1))
                out.append(ram[s:s + k])
            spa, n = spa + k, n - k
        return out[0] if len(out) == 1 else b"".join(out)

    def write(self, spa, data, asid):
        """Store ``data`` at ``spa`` through ``asid``'s key: the plaintext in the
        line, the touched blocks' new ciphertext in DRAM at once."""
        self.engine._track(spa, len(data), asid)
        ram, bus = self.ram, self.bus
        pos = 0
        while pos < len(data):
            k = min(len(data) - pos, PAGE - (spa & (PAGE - 1)))
            off = bus.ram_offset(spa)
            if off is None:
                self.engine.write(bus.read_bytes, bus.write_bytes, spa, data[pos:pos + k], asid)
            else:
                ln = self.line(spa, off, asid)
                x = spa & (PAGE - 1)
                s = ln.slot
                ram[s + x:s + x + k] = data[pos:pos + k]
                lo, hi = x & ~(BLOCK - 1), (x + k + BLOCK - 1) & ~(BLOCK - 1)
                base = off - x
                if self.dirty.get(off >> 12) is not ln:      # a dirty line is written back later
                    ram[base + lo:base + hi] = _xor_ends(ln.enc, ram[s + lo:s + hi], ln.tweak[lo:hi])
                same = self.pages[off >> 12]
                if len(same) > 1:                   # other keys' lines of this page
                    for other in [o for a, o in same.items() if a != asid]:
                        self._drop(other)
                for watch in bus.write_watchers:
                    if watch is not self._watch:
                        watch(base + lo, hi - lo)
            spa, pos = spa + k, pos + k
