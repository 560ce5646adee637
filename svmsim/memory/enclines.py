"""Decrypted lines of private pages, where the CPU's fast read path finds them
(the CPU side of the encryption engine; issue 14 item 4, issue 16 item 4).

On hardware the caches hold plaintext, each line tagged with the key it was
filled with, and the engine encrypts on the way to DRAM (APM vol 2, 7.10.6).
svmsim keeps, per (key slot, DRAM page) an SEV guest (or the host, with the
C-bit) uses, the page's plaintext in a *line slot*, so that a private read is
as fast as a read of plain RAM:

* The slots lie in the host mapping of RAM past its end (``Ram.window``):
  the fast read caches (``Tlb.fast``: linear page -> offset in that mapping)
  and compiled blocks index them like DRAM.  No physical address reaches
  them (``PhysBus.ram_offset`` stops at the end of DRAM): DRAM, which every
  device, debugger, the AMD-SP and other keys see, holds only ciphertext.
* Writes through a key are written through at once: the slot gets the new
  plaintext, the 16-byte blocks touched are encrypted with the page's tweaks
  and stored in DRAM (then the code-page watchers run, as for any write).
* A slot stays exact because every other writer of the DRAM page drops it:
  writes through the bus (devices, the AMD-SP, the hypervisor's Python, a
  debugger) reach ``_on_ram_write``; a write through another key drops the
  other keys' slots of the page; and no CPU may write a page that has a slot
  on its fast path (``Cpu.fill_write`` refuses it; the pages' write caches
  are dropped when a page gets its first slot), so CPU stores take the slow
  path, which goes through the bus.  Dropping a slot removes the fast read
  cache entries that point at it; the next access decrypts DRAM again.
* A key slot loaded or cleared by the AMD-SP drops its slots (the engine's
  ``_forget``).

Keys stay in the engine; this module asks it for its cipher contexts only.
"""
from __future__ import annotations

from .encryption import BLOCK, PAGE, _tweaks, _xor_ends

LINE_SLOTS = 4096          # pages of plaintext kept (16 MiB of host memory, touched lazily)


class _Line:
    __slots__ = ("key", "slot", "spa", "tweak", "refs")

    def __init__(self, key, slot, spa, tweak):
        self.key, self.slot, self.spa, self.tweak = key, slot, spa, tweak
        self.refs: dict = {}          # (id(fast dict), vpn) -> fast dict pointing here


class PlaintextLines:
    """Line slots of one machine (``Machine.enc_lines``), used by the CPU's
    accesses with a key (``Cpu.pread``/``pwrite`` for C-bit and SEV-guest
    frames) and by nested paging's fast read cache of private pages."""

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
        self._watch = self._on_ram_write
        bus.write_watchers.append(self._watch)
        engine.forget_listeners.append(self.forget)
        self.stats = {"filled": 0, "dropped": 0}

    # -- slots -------------------------------------------------------------------
    def line(self, spa, off, asid):
        """The _Line of the page at ``spa`` (RAM offset ``off``) under ``asid``."""
        ln = self._lines.get((asid, off >> 12))
        return ln if ln is not None else self._fill(spa & ~(PAGE - 1), off & ~(PAGE - 1), asid)

    def _fill(self, spa, off, asid):
        if not self._free:
            self._drop(self._lines[next(iter(self._lines))])          # the oldest line
        slot = self._free.pop()
        enc, dec = self.engine.contexts(asid)
        tweak = _tweaks(self.engine._cipher(asid), spa, PAGE)
        ram = self.ram
        ram[slot:slot + PAGE] = _xor_ends(dec, ram[off:off + PAGE], tweak)
        page = off >> 12
        ln = self._lines[(asid, page)] = _Line((asid, page), slot, spa, tweak)
        same = self.pages.get(page)
        if same is None:
            self.pages[page] = {asid: ln}
            # The page may sit in a write cache (a mapping without the key):
            # from now on its stores must reach the bus.
            for cpu in self.cpus():
                cpu.tlb.drop_fast_writes(code_too=True)
        else:
            same[asid] = ln
        self.stats["filled"] += 1
        return ln

    def _drop(self, ln):
        dropped = False
        for (_, vpn), d in ln.refs.items():
            if d.get(vpn) == ln.slot:
                del d[vpn]
                dropped = True
        if dropped:
            # Compiled code's address caches were filled from those entries.
            for cpu in self.cpus():
                cpu.tlb.drop_fast_addr()
        del self._lines[ln.key]
        same = self.pages[ln.key[1]]
        del same[ln.key[0]]
        if not same:
            del self.pages[ln.key[1]]
        self._free.append(ln.slot)
        self.stats["dropped"] += 1

    def map_read(self, spa, asid, d, vpn):
        """Offset of the plaintext of private page ``spa`` for a fast read
        cache ``d`` (linear page ``vpn``), or None if it is not RAM."""
        off = self.bus.ram_offset(spa)
        if off is None:
            return None
        self.engine._track(spa, 1, asid)
        ln = self.line(spa, off, asid)
        ln.refs[(id(d), vpn)] = d
        return ln.slot

    def forget(self, asid):
        """The key of ``asid`` changed: its lines are gone."""
        for ln in [ln for k, ln in self._lines.items() if k[0] == asid]:
            self._drop(ln)

    def _on_ram_write(self, off, n):
        """Something wrote DRAM through the bus: the page's lines are stale."""
        same = self.pages.get(off >> 12)
        if same:
            for ln in list(same.values()):
                self._drop(ln)

    # -- accesses ----------------------------------------------------------------
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
        line, the blocks' new ciphertext in DRAM at once."""
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
                ram[base + lo:base + hi] = _xor_ends(self.engine.contexts(asid)[0], ram[s + lo:s + hi],
                                                     ln.tweak[lo:hi])
                same = self.pages[off >> 12]
                if len(same) > 1:                   # other keys' lines of this page
                    for other in [o for a, o in same.items() if a != asid]:
                        self._drop(other)
                for watch in bus.write_watchers:
                    if watch is not self._watch:
                        watch(base + lo, hi - lo)
            spa, pos = spa + k, pos + k
