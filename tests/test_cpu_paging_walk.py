"""The long-mode walker's inlined levels (paging.py ``_walk_long``,
``_walk_tail``) against the plain per-level reference they replaced: on
random tables (present/absent, reserved bits, PS at every level, NX with and
without EFER.NXE, A/D clear or set), every walk must give the same
translation or the same #PF, and make the same A/D writes (APM 5.3.3, 5.4.2).
"""
import random

import pytest

from svmsim.cpu.exceptions import CpuException, PF_W, PF_U, PF_I
from svmsim.cpu.paging import (Walker, Translation, PF_P, PF_RSV, NX, PS, G, A, D, RW, US, CR4_PAE,
                               CR4_LA57, EFER_NXE)


class RefWalker(Walker):
    """The walker as it was, one helper call per level."""

    def _walk_long(self, lin, table, levels, nxe, access, steps):
        """4- and 5-level long-mode paging (APM 5.3.3-5.3.6)."""
        rw, us, nx = RW, US, 0
        for level in range(levels, 3, -1):       # PML5E (if LA57), PML4E
            name = "PML%dE" % level
            addr = table | ((lin >> (12 + 9 * (level - 1))) & 0x1FF) << 3
            e = self._read(addr, 8, steps, name)
            self._check_entry(lin, e, nxe, access, name, ps_ok=False)
            self._set_ad(addr, e, 8, access, final=False)
            rw, us, nx = rw & e, us & e, nx | (e & NX if nxe else 0)
            table = e & self.addr_mask
        addr = table | ((lin >> 30) & 0x1FF) << 3
        e = self._read(addr, 8, steps, "PDPE")
        self._check_entry(lin, e, nxe, access, "PDPE", ps_ok=True)
        rw, us, nx = rw & e, us & e, nx | (e & NX if nxe else 0)
        if e & PS:                                 # 1 GiB page
            if e & 0x3FFFE000:
                raise self._pf(lin, access, PF_P | PF_RSV, "reserved bits 29:13 in 1 GiB PDPE")
            self._set_ad(addr, e, 8, access, final=True)
            spa = (e & self.addr_mask & ~0x3FFFFFFF) | (lin & 0x3FFFF000)
            return Translation(spa, rw, us, nx, e & G, access & PF_W or e & D, 1 << 30, steps)
        self._set_ad(addr, e, 8, access, final=False)
        return self._walk_tail(lin, e & self.addr_mask, rw, us, nx, nxe, access, steps)

    def _walk_tail(self, lin, table, rw, us, nx, nxe, access, steps):
        """PDE and PTE levels, common to PAE and long mode."""
        pde_addr = table | ((lin >> 21) & 0x1FF) << 3
        pde = self._read(pde_addr, 8, steps, "PDE")
        self._check_entry(lin, pde, nxe, access, "PDE", ps_ok=True)
        rw, us, nx = rw & pde, us & pde, nx | (pde & NX if nxe else 0)
        if pde & PS:                               # 2 MiB page
            if pde & 0x1FE000:
                raise self._pf(lin, access, PF_P | PF_RSV, "reserved bits 20:13 in 2 MiB PDE")
            self._set_ad(pde_addr, pde, 8, access, final=True)
            spa = (pde & self.addr_mask & ~0x1FFFFF) | (lin & 0x1FF000)
            return Translation(spa, rw, us, nx, pde & G, access & PF_W or pde & D, 1 << 21, steps)
        self._set_ad(pde_addr, pde, 8, access, final=False)
        pte_addr = (pde & self.addr_mask) | ((lin >> 12) & 0x1FF) << 3
        pte = self._read(pte_addr, 8, steps, "PTE")
        self._check_entry(lin, pte, nxe, access, "PTE", ps_ok=True)
        self._set_ad(pte_addr, pte, 8, access, final=True)
        return Translation(pte & self.addr_mask, rw & pte, us & pte, nx | (pte & NX if nxe else 0),
                           pte & G, access & PF_W or pte & D, 4096, steps)



def _tables(rng, maxphy):
    """A sparse page-table forest: each 4 KiB table's entries point into a
    small pool of tables, with random attribute and reserved bits."""
    mem = {}
    pool = [0x1000 * i for i in range(1, 9)]
    bits = [1, 2, 4, 8, 0x10, A, D, PS, G, 0x200, NX, 1 << 52, 1 << 62, 1 << (maxphy - 1),
            1 << maxphy, 1 << 13, 1 << 21, 1 << 29]
    for t in pool:
        for i in range(512):
            if rng.random() < 0.9:
                e = rng.choice(pool) | 1 | 2 | 4
                for b in bits:
                    if rng.random() < (0.08 if b in (1 << 52, 1 << 62, 1 << maxphy, 1 << 13,
                                                     1 << 21, 1 << 29, 1 << (maxphy - 1)) else 0.3):
                        e ^= b
                mem[t + 8 * i] = e
    return mem


def _run(cls, mem, lin, cr4, efer, access):
    mem = dict(mem)
    writes = []

    def read(pa, size):
        return mem.get(pa, 0)

    def write(pa, size, v):
        writes.append((pa, v))
        mem[pa] = v

    w = cls(read, write, 40)
    try:
        t = w.walk(lin, 1 << 31, 0x1000, cr4, efer, access)
        out = ("ok", t.spa, t.rw, t.us, t.nx, t.g, t.d, t.size)
    except CpuException as e:
        out = ("pf", e.vector, e.error_code, e.cr2)
    return out, writes


@pytest.mark.parametrize("seed", range(4))
def test_inlined_long_mode_walk_matches_the_reference(seed):
    rng = random.Random(seed)
    mem = _tables(rng, 40)
    outcomes = set()
    for _ in range(1000):
        lin = rng.getrandbits(57) & ~0xFFF | rng.getrandbits(12)
        cr4 = CR4_PAE | (CR4_LA57 if rng.random() < 0.3 else 0)
        efer = (1 << 10) | (EFER_NXE if rng.random() < 0.5 else 0)
        access = rng.choice([0, PF_W, PF_U, PF_I, PF_W | PF_U, PF_I | PF_U])
        got = _run(Walker, mem, lin, cr4, efer, access)
        want = _run(RefWalker, mem, lin, cr4, efer, access)
        assert got == want, (hex(lin), cr4, efer, access)
        outcomes.add(got[0][0] if got[0][0] == "ok" else got[0][2] & (PF_P | PF_RSV))
    assert {"ok", 0, PF_P | PF_RSV} <= outcomes        # translations, not-present, reserved
