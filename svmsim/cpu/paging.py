"""Page-table walks for every legacy and long paging mode (APM vol 2, ch. 5).

``walk()`` computes a translation; it does not cache it.  Caching is the
TLB's job (``svmsim.cpu.tlb``), so the rules for when a translation may be
reused live in one place.  The walker sets Accessed bits on every level it
uses and the Dirty bit on the final entry for writes (APM 5.4.2), raising
#PF with the architectural error code when something is wrong.
"""
from .exceptions import CpuException, PF, PF_P, PF_W, PF_U, PF_RSV, PF_I

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
# Legacy PAE PDPTE: bits 63:52 (NX does not exist there), 8:5 and 2:1 are
# reserved, with 51:MAXPHYADDR (KVM: PT32E rsvd_bits(maxphyaddr, 62) and 63;
# kvm-unit-tests svm_pae_test sets bits 62:52 and expects a fault).
PDPTE_RSVD = (0xFFF << 52) | 0x1E6


def bad_pdpte(read, cr3: int, rsvd_hi: int):
    """The legacy-PAE PDPTE check, declared once for every place that loads
    the four PDPTEs (MOV CR3, MOV CR0/CR4 that turn PAE paging on, VMRUN's
    guest state and #VMEXIT's host state, APM vol 2 15.5.1, 15.6, table
    15-7): ``read(pa, size)`` reads memory; ``rsvd_hi`` are the caller's
    reserved address bits 51:MAXPHYADDR.  Returns (index, address, entry,
    reserved bits set) of the first present PDPTE with a reserved bit set,
    or None."""
    table = cr3 & 0xFFFFFFE0
    rsvd = PDPTE_RSVD | rsvd_hi
    for i in range(4):
        e = read(table + 8 * i, 8)
        if e & P and e & rsvd:
            return i, table + 8 * i, e, e & rsvd
    return None

# CR0/CR4/EFER bits the walker needs.
CR0_WP = 1 << 16
CR4_PSE, CR4_PAE, CR4_PGE, CR4_PCIDE, CR4_SMEP, CR4_SMAP, CR4_LA57, CR4_PKE = (
    1 << 4, 1 << 5, 1 << 7, 1 << 17, 1 << 20, 1 << 21, 1 << 12, 1 << 22)
EFER_NXE = 1 << 11
SEEN_MAX = 1 << 16          # walked pages a walker remembers (Walker._walk_memo)


class Translation:
    """The outcome of a walk: what the TLB caches for one linear page.

    ``spa`` is the physical address of the 4 KiB frame holding ``lin``; large
    pages are split into 4 KiB TLB entries (hardware may do this too).
    ``rw``/``us`` are the AND of all levels; ``nx`` the OR.
    """
    __slots__ = ("spa", "rw", "us", "nx", "g", "d", "size", "steps", "deps", "kept", "mkey", "memo")

    def __init__(self, spa, rw, us, nx, g, d, size, steps=None):
        self.spa, self.rw, self.us, self.nx, self.g, self.d, self.size = spa, rw, us, nx, g, d, size
        self.steps = steps
        self.deps = None       # a memoizing walk's ((RAM offset, value), ...) (cpu/walkmemo.py)
        # Set when the walk enters a memo (PtWatch.commit): the watch's
        # generation then (-1 again once an entry it read is written), the
        # memo key and the memo; what a TLB flush checks to keep this
        # translation (cpu/tlbkeep.py).
        self.kept = -1


LARGE = "L"          # the last item of a Chunk's memo key (a page's key has four)


class Chunk(Translation):
    """A kept walk that ended at a large page (2 MiB or 1 GiB), for the
    2 MiB chunk of it that holds the walked address: ``spa`` is the chunk's
    first frame.  ``slice`` gives the Translation a walk of one 4 KiB page
    of the chunk gives; the slices are kept with the chunk (PtWatch drops
    them together: ``slices``)."""
    __slots__ = ("slices",)

    def __init__(self, t, deps):
        super().__init__(t.spa & ~0x1FF000, t.rw, t.us, t.nx, t.g, t.d, t.size)
        self.deps = deps
        self.slices = {}

    def slice(self, vpn, key):
        """The translation of page ``vpn`` (memo key ``key``), as kept as the
        chunk: ``kept``, ``memo`` and ``mkey`` as if that page's own walk
        had been entered (cpu/tlbkeep.py checks them)."""
        s = self.slices.get(vpn)
        if s is None:
            s = self.slices[vpn] = Translation(self.spa | (vpn & 0x1FF) << 12, self.rw, self.us, self.nx,
                                               self.g, self.d, self.size)
            s.deps, s.kept, s.mkey, s.memo = self.deps, self.kept, key, self.memo
        return s


class Walker:
    """Walks the guest-visible page tables of one CPU through physical memory.

    ``read_pte(spa, size)`` and ``write_pte(spa, size, value)`` access page
    tables; nested paging replaces them with functions that translate GPAs.
    """

    log = None          # a list: every walk appends its (level, address, entry) steps (debug)
    memo = None         # long-mode walks kept across TLB flushes (enable_memo)
    keep_checks = None  # inputs -> the last check tlbkeep.walk_check made for them

    def __init__(self, read_pte, write_pte, maxphyaddr: int = 48):
        self.read_pte = read_pte
        self.write_pte = write_pte
        self.set_maxphyaddr(maxphyaddr)

    def enable_memo(self, watch, deps) -> None:
        """Keep long-mode walks in a memo that TLB flushes leave alone and
        writes to the entries a walk read empty (cpu/walkmemo.py, docs/DESIGN.md
        "Walk memo"): ``watch`` is the machine's PtWatch, ``deps(steps)`` gives
        ((RAM offset, value), ...) of the entries a walk read, or None when
        one is not plain RAM (the walk is then not kept)."""
        self.watch, self.memo_deps = watch, deps
        self.memo, self.memo_gen = {}, watch.gen
        self.memo_seen = set()

    def disable_memo(self) -> None:
        self.memo = None

    def set_maxphyaddr(self, bits: int, c_bit: int = 0, reduction: int = 0) -> None:
        """With memory encryption on (SYSCFG.MemEncryptionModEn), the top
        ``reduction`` address bits are cut: they become reserved, except the
        C-bit, which frame addresses keep so the memory path knows which key
        applies (APM vol 2, 7.10.1; seed S14)."""
        self.maxphyaddr = bits
        eff = bits - reduction
        c_mask = 1 << c_bit if c_bit else 0
        # Bits 51:MAXPHYADDR of an entry are reserved (APM 5.3.x tables).
        self.rsvd_hi = ((1 << 52) - 1) & ~((1 << eff) - 1) & ~c_mask
        self.addr_mask = (((1 << eff) - 1) | c_mask) & ~0xFFF
        if self.memo is not None:
            self.memo = {}           # walks under other reserved bits / C-bit (a new dict: see PtWatch)

    # -- public ------------------------------------------------------------
    def walk(self, lin, cr0, cr3, cr4, efer, access, record=False):
        """Translate ``lin``; ``access`` is a #PF error code (W, U, I bits).

        Returns a Translation.  Permission checks against the *current*
        privilege happen in ``check_access`` so a cached Translation can be
        rechecked without walking.  Reserved-bit and not-present faults are
        raised here.
        """
        steps = [] if record else self.log
        if cr4 & CR4_PAE == 0:
            return self._walk32(lin, cr3, cr4, access, steps)
        nxe = bool(efer & EFER_NXE)
        if efer & (1 << 10):  # LMA
            levels = 5 if cr4 & CR4_LA57 else 4
            memo = self.memo
            if memo is not None and steps is None:
                table = cr3 & self.addr_mask
                if self.memo_gen == self.watch.gen:      # _walk_memo's hit, inlined
                    t = memo.get((lin >> 12, table, levels, nxe))
                    if t is not None and (t.d or not access & PF_W):
                        return t
                return self._walk_memo(lin, table, levels, nxe, access)
            return self._walk_long(lin, cr3 & self.addr_mask, levels, nxe, access, steps)
        return self._walk_pae(lin, cr3, nxe, access, steps)

    def _walk_memo(self, lin, table, levels, nxe, access):
        """A long-mode walk through the memo: the walk's inputs are the key
        (the page, the root, the number of levels, NXE; the reserved bits and
        the C-bit are the walker's own, ``set_maxphyaddr`` starts a new memo).
        A kept walk serves a write only if it found the page dirty (else the
        walk sets D, APM 5.4.2).  Faults are never kept.  Only a walk made
        before (``memo_seen``) is recorded for the memo: the first walk of a
        page costs what it cost without the memo, so code that touches many
        pages once (building page tables, a memset) pays almost nothing for it.

        A walk that ends at a 2 MiB or 1 GiB page is kept for its whole 2 MiB
        chunk at once (``Chunk``, key (lin >> 21, ..., LARGE); recorded at
        the walk of a second page of the chunk, or again): the walk of
        any 4 KiB page of the chunk reads the same entries (APM 5.3.4-5.3.6:
        the address bits below the leaf only select the byte of the page),
        so it gives the same permissions and Dirty bit and the frame of the
        same offset, and writes nothing if the kept walk wrote nothing.  A
        fresh 4 KiB slice of a large page then costs no walk at all."""
        watch = self.watch
        if self.memo_gen != watch.gen:
            self.memo, self.memo_gen = {}, watch.gen
        memo = self.memo
        key = (lin >> 12, table, levels, nxe)
        t = memo.get(key)
        if t is not None and (t.d or not access & PF_W):
            return t
        big = memo.get((lin >> 21, table, levels, nxe, LARGE))
        if big is not None and (big.d or not access & PF_W):
            return big.slice(lin >> 12, key)
        seen = self.memo_seen
        if key not in seen or watch.off:
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen.add(key)
            t = self._walk_long(lin, table, levels, nxe, access, None)
            if t.size == 4096 or watch.off:
                return t
            ckey = (lin >> 21, table, levels, nxe, LARGE)
            if ckey not in seen:
                seen.add(ckey)
                return t
            # A large page whose chunk was walked before: record the chunk (below).
        steps = []
        t = self._walk_long(lin, table, levels, nxe, access, steps)
        t.steps = None
        pairs = t.deps = self.memo_deps(steps)
        if pairs is not None:
            if t.size == 4096:
                watch.pend(memo, key, t, pairs)
            else:
                watch.pend(memo, (lin >> 21, table, levels, nxe, LARGE), Chunk(t, pairs), pairs)
        return t

    # -- modes ---------------------------------------------------------------
    def _walk32(self, lin, cr3, cr4, access, steps):
        """32-bit (non-PAE) paging, 4 KiB and 4 MiB pages (APM 5.3)."""
        pde_addr = (cr3 & 0xFFFFF000) | ((lin >> 20) & 0xFFC)
        pde = self._read(pde_addr, 4, steps, "PDE")
        if not pde & P:
            raise self._pf(lin, access, 0, "PDE not present")
        if pde & PS and cr4 & CR4_PSE:
            # PSE-36/40: PDE bits 20:13 give physical address bits 39:32.
            if pde & (1 << 21):
                raise self._pf(lin, access, PF_P | PF_RSV, "reserved bit 21 in 4 MiB PDE")
            hi = ((pde >> 13) & 0xFF) << 32
            if hi >> self.maxphyaddr:
                raise self._pf(lin, access, PF_P | PF_RSV, "4 MiB PDE address beyond MAXPHYADDR")
            self._set_ad(pde_addr, pde, 4, access, final=True)
            spa = hi | (pde & 0xFFC00000) | (lin & 0x3FF000)
            return Translation(spa, pde & RW, pde & US, 0, pde & G, access & PF_W or pde & D, 1 << 22, steps)
        self._set_ad(pde_addr, pde, 4, access, final=False)
        pte_addr = (pde & 0xFFFFF000) | ((lin >> 10) & 0xFFC)
        pte = self._read(pte_addr, 4, steps, "PTE")
        if not pte & P:
            raise self._pf(lin, access, 0, "PTE not present")
        self._set_ad(pte_addr, pte, 4, access, final=True)
        return Translation(pte & 0xFFFFF000, pde & pte & RW, pde & pte & US, 0, pte & G,
                           access & PF_W or pte & D, 4096, steps)

    def _walk_pae(self, lin, cr3, nxe, access, steps):
        """Legacy-mode PAE paging: 4 PDPTEs, then PDE, PTE (APM 5.3.3)."""
        pdpte_addr = (cr3 & 0xFFFFFFE0) | ((lin >> 27) & 0x18)
        pdpte = self._read(pdpte_addr, 8, steps, "PDPTE")
        if not pdpte & P:
            raise self._pf(lin, access, 0, "PDPTE not present")
        if pdpte & (self.rsvd_hi | PDPTE_RSVD):
            raise self._pf(lin, access, PF_P | PF_RSV, "reserved bit in PDPTE")
        return self._walk_tail(lin, pdpte & self.addr_mask, RW, US, 0, nxe, access, steps)

    def _walk_long(self, lin, table, levels, nxe, access, steps):
        """4- and 5-level long-mode paging (APM 5.3.3-5.3.6).

        The per-level work is inlined (a 2-D walk under nested paging runs
        this five times per guest translation, APM 15.25.5): the checks are
        ``_check_entry``'s, made there only when an entry fails them (it
        raises); Accessed is set as ``_set_ad`` sets it."""
        read, write = self.read_pte, self.write_pte
        rsvd = self.rsvd_hi if nxe else self.rsvd_hi | NX
        addr_mask = self.addr_mask
        rw, us, nx = RW, US, 0
        shift = 12 + 9 * (levels - 1)
        for level in range(levels, 3, -1):       # PML5E (if LA57), PML4E
            addr = table | ((lin >> shift) & 0x1FF) << 3
            e = read(addr, 8)
            if steps is not None:
                steps.append(("PML%dE" % level, addr, e))
            if not e & P or e & (rsvd | PS | G):
                self._check_entry(lin, e, nxe, access, "PML%dE" % level, ps_ok=False)
            if not e & A:
                write(addr, 8, e | A)
            rw &= e
            us &= e
            if nxe:
                nx |= e & NX
            table = e & addr_mask
            shift -= 9
        addr = table | ((lin >> 30) & 0x1FF) << 3
        e = read(addr, 8)
        if steps is not None:
            steps.append(("PDPE", addr, e))
        if not e & P or e & rsvd:
            self._check_entry(lin, e, nxe, access, "PDPE", ps_ok=True)
        rw &= e
        us &= e
        if nxe:
            nx |= e & NX
        if e & PS:                                 # 1 GiB page
            if e & 0x3FFFE000:
                raise self._pf(lin, access, PF_P | PF_RSV, "reserved bits 29:13 in 1 GiB PDPE")
            self._set_ad(addr, e, 8, access, final=True)
            spa = (e & addr_mask & ~0x3FFFFFFF) | (lin & 0x3FFFF000)
            return Translation(spa, rw, us, nx, e & G, access & PF_W or e & D, 1 << 30, steps)
        if not e & A:
            write(addr, 8, e | A)
        return self._walk_tail(lin, e & addr_mask, rw, us, nx, nxe, access, steps)

    def _walk_tail(self, lin, table, rw, us, nx, nxe, access, steps):
        """PDE and PTE levels, common to PAE and long mode (inlined as in
        ``_walk_long``)."""
        read = self.read_pte
        rsvd = self.rsvd_hi if nxe else self.rsvd_hi | NX
        addr_mask = self.addr_mask
        pde_addr = table | ((lin >> 21) & 0x1FF) << 3
        pde = read(pde_addr, 8)
        if steps is not None:
            steps.append(("PDE", pde_addr, pde))
        if not pde & P or pde & rsvd:
            self._check_entry(lin, pde, nxe, access, "PDE", ps_ok=True)
        rw &= pde
        us &= pde
        if nxe:
            nx |= pde & NX
        if pde & PS:                               # 2 MiB page
            if pde & 0x1FE000:
                raise self._pf(lin, access, PF_P | PF_RSV, "reserved bits 20:13 in 2 MiB PDE")
            self._set_ad(pde_addr, pde, 8, access, final=True)
            spa = (pde & addr_mask & ~0x1FFFFF) | (lin & 0x1FF000)
            return Translation(spa, rw, us, nx, pde & G, access & PF_W or pde & D, 1 << 21, steps)
        if not pde & A:
            self.write_pte(pde_addr, 8, pde | A)
        pte_addr = (pde & addr_mask) | ((lin >> 12) & 0x1FF) << 3
        pte = read(pte_addr, 8)
        if steps is not None:
            steps.append(("PTE", pte_addr, pte))
        if not pte & P or pte & rsvd:
            self._check_entry(lin, pte, nxe, access, "PTE", ps_ok=True)
        new = pte | A | D if access & PF_W else pte | A       # _set_ad, final level
        if new != pte:
            self.write_pte(pte_addr, 8, new)
        if nxe:
            nx |= pte & NX
        return Translation(pte & addr_mask, rw & pte, us & pte, nx,
                           pte & G, access & PF_W or pte & D, 4096, steps)

    # -- helpers -------------------------------------------------------------
    def _read(self, addr, size, steps, name):
        value = self.read_pte(addr, size)
        if steps is not None:
            steps.append((name, addr, value))
        return value

    def _check_entry(self, lin, e, nxe, access, name, ps_ok):
        if not e & P:
            raise self._pf(lin, access, 0, f"{name} not present")
        rsvd = self.rsvd_hi
        if not nxe:
            rsvd |= NX
        if not ps_ok:
            # PS is reserved in PML4E/PML5E (APM 5.3.3), and on AMD processors
            # so is bit 8, the G bit of a leaf (KVM's nonleaf_bit8_rsvd; the
            # reserved-bit #NPF of kvm-unit-tests' svm_npt_rsvd_bits_test).
            rsvd |= PS | G
        if e & rsvd:
            raise self._pf(lin, access, PF_P | PF_RSV, f"reserved bit set in {name} {e:#x}")

    def _set_ad(self, addr, e, size, access, final):
        """Set A on every level used, D on the final one for writes (APM 5.4.2)."""
        new = e | A
        if final and access & PF_W:
            new |= D
        if new != e:
            self.write_pte(addr, size, new)

    @staticmethod
    def _pf(lin, access, bits, detail):
        return CpuException(PF, (access & (PF_W | PF_U | PF_I)) | bits, cr2=lin, detail=detail)


def check_access(t: Translation, lin, access, cr0, cr4, efer, rflags_ac) -> None:
    """Raise #PF if ``access`` is not allowed by translation ``t`` (APM 5.6).

    ``access`` bits: PF_W write, PF_U user-mode access, PF_I instruction fetch.
    Supervisor-implicit accesses (descriptor tables, TSS) pass PF_U clear.
    """
    user = access & PF_U
    if user:
        if not t.us:
            raise CpuException(PF, access | PF_P, cr2=lin, detail="user access to supervisor page")
        if access & PF_W and not t.rw:
            raise CpuException(PF, access | PF_P, cr2=lin, detail="user write to read-only page")
    else:
        if access & PF_W and not t.rw and cr0 & CR0_WP:
            raise CpuException(PF, access | PF_P, cr2=lin, detail="supervisor write to read-only page (CR0.WP=1)")
        if t.us:
            if access & PF_I and cr4 & CR4_SMEP:
                raise CpuException(PF, access | PF_P, cr2=lin, detail="SMEP: supervisor fetch from user page")
            if not access & PF_I and cr4 & CR4_SMAP and not rflags_ac:
                raise CpuException(PF, access | PF_P, cr2=lin, detail="SMAP: supervisor data access to user page")
    if access & PF_I and t.nx:
        raise CpuException(PF, access | PF_P, cr2=lin, detail="fetch from no-execute page")
