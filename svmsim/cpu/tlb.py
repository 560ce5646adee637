"""The translation lookaside buffer (APM vol 2, 5.5) and the fast access caches.

Two layers, kept apart on purpose:

* ``Tlb.entries`` is the *architectural* TLB: linear page -> Translation,
  filled only by page walks and emptied only when the manual says a flush
  happens (MOV CR3, INVLPG, CR4/CR0 paging-bit changes, INVLPGA, TLB_CONTROL
  ...).  A kernel that forgets an INVLPG keeps seeing the stale entry, as on
  hardware.  Entries are tagged by (ASID, PCID); global entries by ASID only.
* ``fast`` dicts are a host-side acceleration: linear page -> RAM offset,
  per privilege (supervisor/user) and access kind (read/write/fetch), filled
  from an architectural entry after its permission check.  They are derived
  data and may be dropped at any time without changing guest-visible
  behaviour.  A world switch (VMRUN/#VMEXIT) sets the current caches
  aside under the context they were filled in (``select_fast``) and takes
  back the other world's, so a hypervisor and its guest do not refill
  their caches at every round trip; every other drop empties all of them.
"""
R, W, X = 0, 1, 2
MMIO_R, MMIO_W = 3, 4      # linear page -> SPA page of an MMIO (non-RAM) target
FC = 5                     # linear page -> (RAM offset, byte map) of a writable page holding code
# Address-granular caches for compiled code (codegen.py): a naturally aligned
# linear address -> its index in the RAM view of that size (cpu.ram_views;
# A1R: a byte address -> its RAM offset), filled only from a hit in R/W
# above, so each holds a subset of what they allow; a flush of any page
# empties them whole.
A8R, A8W, A4R, A4W, A1R = 6, 7, 8, 9, 10
ADDR = (A8R, A8W, A4R, A4W, A1R)
ADDR_MAX = 1 << 16         # entries per address cache before it is emptied (bounded memory)


class Tlb:
    def __init__(self):
        self.asid = 0
        self.pcid = 0
        self._tagged: dict = {}       # (asid, pcid) -> {vpn: Translation}
        self._global: dict = {}       # asid -> {vpn: Translation}
        self.entries: dict = self._tagged.setdefault((0, 0), {})
        self.globals: dict = self._global.setdefault(0, {})
        self.fast = _new_fast()       # [user][R/W/X/MMIO_R/MMIO_W/FC]
        self._fast_sets: dict = {}    # context -> a fast set put aside by select_fast
        # Large pages are cached as 4 KiB slices; INVLPG of any address in a
        # large page drops every slice (APM 5.5.2), so remember them by page.
        self._large: dict = {}        # (asid, size, first vpn) -> {vpn}
        self.stats = {"hits": 0, "misses": 0, "flushes": {}}
        # tag -> (check, PtWatch.drops, globals checked too) of the last
        # flush_keeping that found every entry of the tag valid; emptied by
        # any insert.
        self._clean: dict = {}
        # (checks, drops, asid, keep_global, fast-set keys) of the last
        # flush_keeping, when the same call again would change nothing while
        # ``_clean`` is not emptied (see flush_keeping); else None.
        self._settled = None
        # Counts every flush of any kind: translations cached elsewhere (the
        # nested ones of svm/npt.py) are dropped when it moves.
        self.epoch = 0

    # -- lookup --------------------------------------------------------------
    def lookup(self, vpn):
        t = self.entries.get(vpn)
        if t is None:
            t = self.globals.get(vpn)
        return t

    def insert(self, vpn, t) -> None:
        if self._clean:
            self._clean.clear()
        if t.size > 4096:
            first = vpn & ~((t.size >> 12) - 1)
            self._large.setdefault((self.asid, t.size, first), set()).add(vpn)
        if t.g:
            self.globals[vpn] = t
        else:
            self.entries[vpn] = t

    # -- tags ----------------------------------------------------------------
    def switch(self, asid: int, pcid: int, keep_fast: bool = False) -> None:
        """Make (asid, pcid) current without flushing anything.  The fast
        caches are dropped unless ``keep_fast`` (the caller then selects
        them with ``select_fast``)."""
        if (asid, pcid) != (self.asid, self.pcid):
            self.asid, self.pcid = asid, pcid
            self.entries = self._tagged.setdefault((asid, pcid), {})
            self.globals = self._global.setdefault(asid, {})
            if not keep_fast:
                self.drop_fast()

    def select_fast(self, out_key, in_key) -> None:
        """Put the current fast caches aside as those of context ``out_key``
        and take context ``in_key``'s (empty ones if there are none).  A key
        names everything the cached entries were derived under (world.py:
        tag, control registers, nested paging); None: not worth keeping (the
        caches are dropped / start empty).  The caller re-selects the CPU's
        cache references (``Cpu.update_mode``)."""
        sets = self._fast_sets
        if out_key is not None:
            if len(sets) >= 8:
                sets.clear()
            sets[out_key] = self.fast
        got = sets.pop(in_key, None) if in_key is not None else None
        self.fast = got if got is not None else _new_fast()

    def _all_fast(self):
        yield self.fast
        yield from self._fast_sets.values()

    # -- flushes (each names its architectural cause for the statistics) -------
    def _count(self, cause):
        self.epoch += 1
        f = self.stats["flushes"]
        f[cause] = f.get(cause, 0) + 1

    def flush_nonglobal(self, cause: str, pcid=None) -> None:
        """MOV CR3 without PCID preservation: drop this tag's non-global entries."""
        self._count(cause)
        if pcid is None or pcid == self.pcid:
            self.entries.clear()
        else:
            self._tagged.pop((self.asid, pcid), None)
        self.drop_fast()

    def flush_asid(self, cause: str, asid=None, keep_global=False) -> None:
        """Every entry of one ASID (TLB_CONTROL 3/7, CR4.PGE toggles, INVPCID all)."""
        self._count(cause)
        asid = self.asid if asid is None else asid
        for tag in [t for t in self._tagged if t[0] == asid]:
            self._tagged[tag].clear()
        if not keep_global:
            self._global.get(asid, {}).clear()
        self.drop_fast()

    def flush_all(self, cause: str) -> None:
        """Everything, every ASID (TLB_CONTROL 1, a CR0.PG toggle...)."""
        self._count(cause)
        for d in self._tagged.values():
            d.clear()
        for d in self._global.values():
            d.clear()
        self._large.clear()
        self.drop_fast()

    def flush_keeping(self, cause: str, checks, drops=None, asid=None, keep_global=False) -> None:
        """A flush (``flush_all``, or ``flush_asid`` of ``asid``) that keeps
        the translations a walk made now would give again with no write
        (cpu/tlbkeep.py; docs/DESIGN.md "Flushes that keep what a walk
        gives"). ``checks``: (fast-set key, tag, valid) per context whose
        inputs are known, the key None for the current fast set;
        ``valid(vpn, t)`` says whether ``t`` is that walk's result under
        the context's inputs.  Every other tag in scope is emptied, every
        other fast set in scope dropped; the fast sets kept lose the pages
        whose translation went (their address caches go whole then).
        ``drops``: the PtWatch's count of dropped walks; a tag whose entries
        were all valid under the same check, with no entry added and no walk
        dropped since, is not looked at again."""
        self._count(cause)
        st = self._settled
        if (st is not None and self._clean and st[0] == checks and st[1] == drops and st[2] == asid
                and st[3] == keep_global and st[4] == tuple(self._fast_sets)):
            return
        gone, tags = {}, set()
        clean = self._clean
        for key, tag, valid in checks:
            if asid is not None and tag[0] != asid:
                continue
            tags.add(tag)
            c = clean.get(tag)
            if c is not None and c[0] is valid and c[1] == drops and (c[2] or keep_global):
                gone[key] = ()            # every entry still valid: nothing to look at
                continue
            out = gone[key] = []
            d = self._tagged.get(tag)
            if d:
                out += [v for v, t in d.items() if not valid(v, t)]
                for v in out:
                    del d[v]
            g = self._global.get(tag[0])
            if g and not keep_global:
                bad = [v for v, t in g.items() if not valid(v, t)]
                for v in bad:
                    del g[v]
                out += bad
            clean[tag] = (valid, drops, not keep_global)
        for tag, d in self._tagged.items():
            if tag not in tags and (asid is None or tag[0] == asid):
                d.clear()
                clean.pop(tag, None)
        kept = {t[0] for t in tags}
        if not keep_global:
            for a, g in self._global.items():
                if (asid is None or a == asid) and a not in kept:
                    g.clear()
        if asid is None:
            for k in [k for k in self._large if k[0] not in kept]:
                del self._large[k]
        self._keep_fast(gone, asid)
        # Settled: the same call again, with no entry added since (an insert
        # empties ``_clean``, which every check's tag is now in) and no kept
        # walk dropped, finds each tag clean (nothing to look at), the tags
        # and globals outside the checks and the sets not named by them
        # already emptied (new ones come only by an insert or select_fast:
        # the keys are compared), and forgets no page: a flush that counts
        # and changes nothing.  Not when the current fast set is not among
        # the checks (it would be emptied again) or two checks share a tag.
        in_scope = sum(1 for c in checks if asid is None or c[1][0] == asid)
        self._settled = ((list(checks), drops, asid, keep_global, tuple(self._fast_sets))
                         if None in gone and len(tags) == in_scope and clean else None)

    def _keep_fast(self, gone, asid) -> None:
        """The fast sets of ``flush_keeping``: those named in ``gone``
        (key -> pages whose translation went) lose those pages; the others
        whose context the flush reached are dropped."""
        sets = self._fast_sets
        for key in list(sets):
            if key in gone:
                _forget_pages(sets[key], gone[key])
            elif asid is None or key[0] == asid:
                del sets[key]
        if None in gone:
            _forget_pages(self.fast, gone[None])
        elif asid is None or self.asid == asid:
            for per_user in self.fast:
                for d in per_user:
                    d.clear()

    def flush_page(self, vpn: int, cause: str, asid=None, all_pcids=True) -> None:
        """INVLPG / INVLPGA: one linear page, global entries included; for a
        large page, every 4 KiB slice of it (APM 5.5.2)."""
        self._count(cause)
        asid = self.asid if asid is None else asid
        vpns = {vpn}
        for size in (1 << 21, 1 << 22, 1 << 30):
            vpns |= self._large.pop((asid, size, vpn & ~((size >> 12) - 1)), set())
        for tag, d in self._tagged.items():
            if tag[0] == asid and (all_pcids or tag[1] == self.pcid):
                for v in vpns:
                    d.pop(v, None)
        glob = self._global.get(asid, {})
        for v in vpns:
            glob.pop(v, None)
        for fast in self._all_fast():
            _forget_pages(fast, vpns)

    def drop_fast(self) -> None:
        for per_user in self.fast:
            for d in per_user:
                d.clear()
        self._fast_sets.clear()

    def drop_fast_writes(self, code_too: bool = False) -> None:
        """A page became code: it may be in a write cache (W); or a page got
        decrypted lines (memory/enclines.py): it may be in W or FC."""
        for fast in self._all_fast():
            for per_user in fast:
                per_user[W].clear()
                per_user[A8W].clear()
                per_user[A4W].clear()
                if code_too:
                    per_user[FC].clear()

    def drop_fast_addr(self, writes_only: bool = False) -> None:
        """Entries of R or W were removed one by one (memory/enclines.py):
        the address caches derived from them go whole (those of W only with
        ``writes_only``)."""
        for fast in self._all_fast():
            for per_user in fast:
                for i in ((A8W, A4W) if writes_only else ADDR):
                    per_user[i].clear()

    def drop_fast_reads_of(self, off: int) -> None:
        """The RAM page at offset ``off`` got decrypted lines: no read cache
        may index its DRAM directly any more (memory/enclines.py)."""
        for fast in self._all_fast():
            for per_user in fast:
                d = per_user[R]
                gone = [v for v, o in d.items() if o == off]
                for vpn in gone:
                    del d[vpn]
                if gone:
                    for i in ADDR:
                        per_user[i].clear()

    def drop_fast_code(self) -> None:
        """The engine forgot its code pages: their byte maps (FC) are stale."""
        for fast in self._all_fast():
            for per_user in fast:
                per_user[FC].clear()


def _forget_pages(fast, vpns) -> None:
    """Drop pages ``vpns`` from a fast set (its address caches whole)."""
    if vpns:
        for per_user in fast:
            for d in per_user[:A8R]:
                for v in vpns:
                    d.pop(v, None)
            for i in ADDR:
                per_user[i].clear()


def _new_fast() -> list:
    return [[{} for _ in range(11)] for _ in range(2)]
