"""Nested paging: the two-dimensional walk (APM vol 2, 15.25).

With NP_ENABLE, a guest linear address is translated by the guest's page
tables into a guest-physical address (gPA), and every gPA -- the final one
and the address of each guest page-table entry -- is translated by the nested
page tables (rooted at N_CR3, in the host's paging format as at VMRUN) into a
system-physical address.  Rules used here (APM 15.25.5-15.25.6):

* Nested accesses are user accesses: a nested entry with U/S = 0 faults.
* Guest page-table accesses are nested *writes*: the walk may set A/D bits,
  so an #NPF on a guest table reports RW = 1 (as QEMU does, and as KVM
  expects from hardware).
* A nested fault is #VMEXIT(NPF): EXITINFO1 = a #PF-style error code (P, RW,
  US, RSV, ID) plus bit 32 (fault on the final gPA) or bit 33 (fault on a
  guest page-table access); EXITINFO2 = the faulting gPA (byte address).
  "Nested page faults are entirely a function of the nested page table and
  VMM processor mode" (15.25.6): ID is reported as a #PF of the host would
  report it, only with the host's EFER.NXE or CR4.SMEP set (kvm-unit-tests'
  svm_npt_rsvd_bits_test, written against hardware, expects exactly that).
* A guest fault stays a guest #PF with the guest's CR2.  Faults come in the
  order of 15.25.6: the guest walk, then "check the guest permissions; any
  fault at this point causes a #PF in the guest", and only then the final
  nested translation.
* GMET (guest-mode execute trap, 15.25.13): with GMET_ENABLE, "if the
  effective U/S bit = 1 and the page is being accessed for execution at
  CPL0, 1 or 2, a nested page fault #VMEXIT(NPF) is generated"; EXITINFO1
  "contains the page fault error code describing attributes of the attempted
  translation", and "the guest user/supervisor indication is normally
  provided in ExitInfo1": with GMET on, US of a final-gPA fault is the
  guest's (clear for a supervisor fetch).  The nested U/S bit stops
  restricting data accesses (svmsim's reading: pages a hypervisor marks
  supervisor, U/S = 0, must stay usable by the guest).

The TLB caches the combined translation (linear -> SPA) tagged by the
guest's ASID, with the nested permissions kept apart so that a nested
violation found on a TLB hit is still an #NPF, not a guest #PF.
"""
from ..cpu.msr import PAT as PAT_MSR, PAT_RESET
CR4_PAE = 1 << 5
from ..cpu.exceptions import CpuException, GP, SS, PF, PF_P, PF_W, PF_U, PF_RSV, PF_I
from ..cpu.paging import Walker, Translation, check_access, EFER_NXE, CR4_SMEP
from ..cpu.tlb import R, W, X, FC, MMIO_R, MMIO_W
from ..cpu.walkmemo import bus_deps
from ..cpu import tlbkeep
from ..cpu.state import GUEST_KEY
from . import avic, snp
from .exits import ExitCode
from .state import VmExit

NPF_FINAL = 1 << 32           # the fault was on the final guest-physical address
NPF_TABLE = 1 << 33           # ... on an access to a guest page table
HOST_CR0_PG = 1 << 31
CR0_WP = 1 << 16


class NestedTranslation(Translation):
    """A combined translation: guest permissions plus the nested ones; ``gc``
    is the guest's C-bit (an SEV guest's private page); ``gt``/``nt`` the
    guest and final nested translations it was made of (cpu/tlbkeep.py)."""
    __slots__ = ("gpa", "n_rw", "n_us", "n_nx", "n_d", "gc", "n_size", "gt", "nt")


class NestedMmu:
    """Per-CPU nested-paging state, set up at VMRUN."""

    def __init__(self, cpu, n_cr3, host_cr4, host_efer, gmet, sev=False):
        self.cpu = cpu
        self.n_cr3 = n_cr3
        self.host_cr4 = host_cr4
        self.host_efer = host_efer
        self.gmet = gmet
        self.sev = sev
        self.rmp = cpu.machine.rmp
        enc = cpu.machine.profile.extra.get("sev") or {}
        reduction = enc.get("reduction", 0) if cpu.c_bit else 0
        self.c_mask = 1 << cpu.c_bit if cpu.c_bit else 0
        # Nested tables are host memory: the host's C-bit (SME) applies to them.
        self.nested = Walker(cpu.pt_read(), cpu.pwrite, cpu.maxphyaddr)
        self.nested.set_maxphyaddr(cpu.maxphyaddr, cpu.c_bit, reduction)
        self.guest = Walker(self._guest_pt_read, self._guest_pt_write, cpu.maxphyaddr)
        self._ncache: dict = {}       # gPA page -> nested Translation (nested_walk)
        self._epoch, self._asid = None, None
        self._keep_check = None       # (guest check, nested check, combined) of keep_check
        if sev:
            # An SEV guest's page tables carry its C-bit at the same position.
            self.guest.set_maxphyaddr(cpu.maxphyaddr, cpu.c_bit, reduction)
        if not cpu.enc_mask:
            # Walks kept across flushes (cpu/walkmemo.py): the nested ones
            # read the bus; a guest walk depends on the guest entries and on
            # the nested walks of their gPAs (``_guest_deps``).
            self.nested.enable_memo(cpu.machine.pt_watch, bus_deps(cpu.bus))
            if not sev:
                self.guest.enable_memo(cpu.machine.pt_watch, self._guest_deps)

    # -- nested (gPA -> SPA) ----------------------------------------------------
    def nested_walk(self, gpa, access, where):
        """gPA -> nested Translation for ``access`` (W/I bits), or #NPF.

        The nested translations are cached as the TLB caches combined ones
        (svmsim's reading of APM 15.16 and 15.25.5, docs/DESIGN.md: a TLB may
        hold nested translations too, under the guest's ASID): filled only by walks, all dropped at any flush of
        the TLB (``Tlb.epoch``, whatever its scope) or a change of ASID, so
        after a flush every nested translation is walked again.  An entry
        whose Dirty bit is clear is walked again for a write, which sets it
        (APM 5.4.2); permissions are checked at every use."""
        tlb = self.cpu.tlb
        if tlb.epoch != self._epoch or tlb.asid != self._asid:
            self._ncache.clear()
            self._epoch, self._asid = tlb.epoch, tlb.asid
        vpn = gpa >> 12
        t = self._ncache.get(vpn)
        user_access = (access & (PF_W | PF_I)) | PF_U
        try:
            if t is None or access & PF_W and not t.d:
                t = self.nested.walk(gpa, HOST_CR0_PG, self.n_cr3, self.host_cr4, self.host_efer,
                                     user_access)
                self._ncache[vpn] = t
            self._check_nested(t, gpa, access)
        except CpuException as e:
            if e.vector != PF:
                raise
            raise self._npf(gpa, e.error_code, where, e.detail, access) from None
        return t

    def _check_nested(self, t, gpa, access):
        if not self.gmet:
            # check_access for a user access with CR0.WP set and no SMEP/SMAP,
            # called only when it will raise (a walk per guest table level).
            if t.us and (t.rw or not access & PF_W) and not (access & PF_I and t.nx):
                return
            check_access(t, gpa, (access & (PF_W | PF_I)) | PF_U, HOST_CR0_PG, 0, self.host_efer, 0)
            return
        # GMET: the nested U/S bit no longer restricts data accesses; it marks
        # pages that guest supervisor code may not execute (like SMEP).
        check_access(t, gpa, access & (PF_W | PF_I), HOST_CR0_PG | CR0_WP, 0, self.host_efer, 0)
        if access & PF_I and not access & PF_U and t.us:
            raise CpuException(PF, PF_P | PF_I, cr2=gpa,
                               detail="GMET: supervisor fetch from a user nested page")

    def _npf(self, gpa, code, where, detail, access):
        """#VMEXIT(NPF) for a nested fault on ``access`` (the guest's W/U/I)."""
        us = access & PF_U if self.gmet and where == NPF_FINAL else PF_U
        fetch = bool(access & PF_I) and where == NPF_FINAL
        ids = PF_I if fetch and (self.host_efer & EFER_NXE or self.host_cr4 & CR4_SMEP) else 0
        info1 = (code & (PF_P | PF_W | PF_RSV)) | us | ids | where
        return VmExit(ExitCode.NPF, info1, gpa, detail=f"nested page fault: {detail}", fetch=fetch)

    def _table_frame(self, gpa, write=False):
        """SPA of a guest page-table access: an SEV guest's tables are always
        private, whatever their C-bit (seed S20); with SEV-SNP on, the
        access passes the RMP checks of table 15-37 first."""
        gpa &= ~self.c_mask
        n = self.nested_walk(gpa, PF_W, NPF_TABLE)
        if self.rmp.enabled:
            t = NestedTranslation(n.spa, 1, 1, 0, 0, 1, 4096)
            t.gpa, t.gc, t.n_size = gpa & ~0xFFF, True, n.size
            snp.check_guest_access(self.cpu, t, gpa, PF_W if write else 0, self.sev, NPF_TABLE)
        spa = n.spa | (gpa & 0xFFF)
        if self.sev:
            spa = (spa & ~self.c_mask) | GUEST_KEY
        return spa

    def _guest_deps(self, steps):
        """What a guest walk read (``Walker.enable_memo``): each guest entry
        at the SPA its nested translation gave, and the nested entries of
        that translation; None if one is not plain RAM, or with the RMP on
        (its checks of each table access, 15.36.10, are not memoized)."""
        if self.rmp.enabled:
            return None
        ncache = self._ncache
        ram_offset = self.cpu.bus.ram_offset
        out = []
        for _, gpa, e in steps:
            n = ncache.get(gpa >> 12)
            if n is None or n.deps is None:
                return None
            off = ram_offset(n.spa | (gpa & 0xFFF))
            if off is None:
                return None
            out += n.deps
            out += (off, e)
        return tuple(out)

    def _guest_pt_read(self, gpa, size):
        return self.cpu.pread(self._table_frame(gpa), size)

    def _guest_pt_write(self, gpa, size, value):
        self.cpu.pwrite(self._table_frame(gpa, True), size, value)

    # -- the whole translation ----------------------------------------------------
    def translate(self, lin, access, stack):
        """Linear -> SPA for the running guest (Cpu.translate's NPT branch)."""
        cpu = self.cpu
        if cpu.efer & (1 << 10):
            top = lin >> 56 if cpu.cr4 & (1 << 12) else lin >> 47
            if top and top != (0xFF if cpu.cr4 & (1 << 12) else 0x1FFFF):
                raise CpuException(SS if stack else GP, 0, detail=f"non-canonical address {lin:#x}")
        vpn = lin >> 12
        tlb = cpu.tlb
        t = tlb.lookup(vpn)
        if t is None or t.__class__ is not NestedTranslation or access & PF_W and not (t.d and t.n_d):
            tlb.stats["misses"] += 1
            t = self._walk(lin, access)          # guest permissions checked inside
            tlb.insert(vpn, t)
        elif cpu.paging:
            check_access(t, lin, access, cpu.cr0, cpu.cr4, cpu.efer, cpu.rflags & (1 << 18))
        self._check_combined(t, access, lin)
        if self.rmp.enabled:
            snp.check_guest_access(cpu, t, lin, access, self.sev and bool(t.gc or access & PF_I))
        if self.sev:
            # Private: the guest's C-bit for data, always for fetches (seed S20).
            if t.gc or access & PF_I:
                spa = (t.spa & ~self.c_mask) | GUEST_KEY
                if access & PF_I:
                    self._fill_code(vpn, t, access, spa)
                elif not self.rmp.enabled:
                    self._fill_private(vpn, t, access, spa)
                return spa | (lin & 0xFFF)
            return t.spa | (lin & 0xFFF)              # shared: the host's C-bit decides
        self._fill_fast(vpn, t, access)
        return t.spa | (lin & 0xFFF)

    def _walk(self, lin, access):
        """Guest walk, guest permission check, final nested walk (15.25.6)."""
        cpu = self.cpu
        if cpu.paging:
            if self.rmp.enabled and self.guest.memo is not None:
                self.guest.disable_memo()        # see _guest_deps
            g = self.guest.walk(lin, cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer, access)
            check_access(g, lin, access, cpu.cr0, cpu.cr4, cpu.efer, cpu.rflags & (1 << 18))
            gc = g.spa & self.c_mask if self.sev else 0
            if self.sev and not cpu.cr4 & CR4_PAE:
                # "the guest is only able to control memory encryption when
                # operating in long mode or legacy PAE mode. In all other
                # modes, all guest memory accesses are unconditionally
                # considered private" (APM 15.34.4): 32-bit paging here.
                gc = self.c_mask
            gpa = (g.spa & ~gc) | (lin & 0xFFF)
        else:
            # Guest paging off: the linear address is the gPA (32-bit); an SEV
            # guest's accesses are then all private.
            g = Translation(lin & 0xFFFFF000, 2, 4, 0, 0, 1, 4096)
            gc, gpa = self.sev, lin & 0xFFFFFFFF
        n = self.nested_walk(gpa, access, NPF_FINAL)
        # AVIC: permissions from the nested tables, the data from the backing page (15.29.3).
        spa = avic.redirect(cpu, gpa) if cpu.svm.avic else None
        t = NestedTranslation(n.spa if spa is None else spa, g.rw, g.us, g.nx, g.g, g.d, g.size)
        t.gpa, t.n_rw, t.n_us, t.n_nx, t.n_d = gpa & ~0xFFF, n.rw, n.us, n.nx, n.d
        t.gc, t.n_size = bool(gc), n.size
        t.gt, t.nt = g, n
        return t

    def keep_check(self):
        """``valid(vpn, t)`` for the guest's TLB entries (cpu/tlbkeep.py):
        a combined translation is what a walk made now gives when its guest
        walk and its final nested walk are both kept walks under the current
        inputs (a guest walk's own dependencies hold the nested walks of its
        table gPAs, 15.25.5); None when nothing is kept (guest paging off or
        not in long mode, SEV, the RMP, AVIC's backing page)."""
        cpu = self.cpu
        if self.sev or self.rmp.enabled or cpu.svm.avic or not cpu.paging:
            return None
        watch = cpu.machine.pt_watch
        guest = tlbkeep.walk_check(self.guest, watch, cpu.cr3, cpu.cr4, cpu.efer)
        nested = tlbkeep.walk_check(self.nested, watch, self.n_cr3, self.host_cr4, self.host_efer)
        if guest is None or nested is None:
            return None
        last = self._keep_check
        if last is not None and last[0] is guest and last[1] is nested:
            return last[2]            # the same object while its parts are (tlbkeep.walk_check)

        def valid(vpn, t):
            return t.__class__ is NestedTranslation and guest(vpn, t.gt) and nested(t.gpa >> 12, t.nt)
        self._keep_check = (guest, nested, valid)
        return valid

    def walk_for(self, lin, access):
        """The combined translation of ``lin`` for an instruction operand
        (PVALIDATE, RMPADJUST): guest #PF and #NPF as for an access."""
        t = self._walk(lin, access)
        self._check_combined(t, access, lin)
        return t

    def _check_combined(self, t, access, lin):
        """Nested permissions of a cached combined translation (#NPF)."""
        bad = 0
        if access & PF_W and not t.n_rw:
            bad = PF_P | PF_W
        elif access & PF_I and t.n_nx:
            bad = PF_P | PF_I
        elif self.gmet and access & PF_I and not access & PF_U and t.n_us:
            bad = PF_P | PF_I
        if bad:
            raise self._npf(t.gpa | (lin & 0xFFF), bad | (access & PF_W), NPF_FINAL,
                            "nested permissions of the final guest-physical page", access)

    def _exec_ok(self, t, user):
        cpu = self.cpu
        return not t.nx and not t.n_nx and not (self.gmet and not user and t.n_us) and \
            not (cpu.paging and t.us and not user and cpu.cr4 & (1 << 20))

    def _fill_code(self, vpn, t, access, spa):
        """An SEV guest's code page: the fetch cache holds its identity (DRAM page
        and key) so translated blocks can be reused; data never goes fast."""
        cpu = self.cpu
        user = 1 if access & PF_U else 0
        page = cpu.code_page(spa)
        if page is not None and self._exec_ok(t, user):
            cpu.tlb.fast[user][X][vpn] = page

    def _fill_private(self, vpn, t, access, spa):
        """An SEV guest's private data page: the read cache holds the offset of
        its decrypted line (memory/enclines.py), and after a store the write
        cache too (the line is then dirty: written back before the bus reads
        the page, see enclines.py).  Not
        under SNP, whose RMP checks are made at every access."""
        cpu = self.cpu
        if cpu.watch or cpu.paging and cpu.cr4 & (1 << 21) and t.us and not access & PF_U:
            return                      # watched data, or SMAP (depends on RFLAGS.AC)
        if cpu.probing:
            return                      # CLFLUSH: no line for a page only being flushed
        lines = cpu.machine.enc_lines
        if lines is None:
            return
        user = 1 if access & PF_U else 0
        fast = cpu.tlb.fast[user]
        page = spa & ~0xFFF & ~cpu.enc_mask
        slot = lines.map_read(page, cpu.sev_asid, fast[R], vpn)
        if slot is None:
            return                      # not RAM
        fast[R][vpn] = slot
        if access & PF_W:
            guest_w = t.rw or (cpu.paging and not user and not cpu.cr0 & (1 << 16)) or not cpu.paging
            if t.d and t.n_d and t.n_rw and guest_w:
                lines.map_write(page, cpu.sev_asid, fast[W], fast[FC], vpn, cpu.machine.code_pages)

    def _fill_fast(self, vpn, t, access):
        """Fast caches hold only what needs no further check of either level."""
        cpu = self.cpu
        user = 1 if access & PF_U else 0
        fast = cpu.tlb.fast[user]
        if cpu.watch:
            # Watched data takes the slow path; the fetch cache stays (see Cpu._fill_fast).
            off = cpu.bus.ram_offset(t.spa)
            if access & PF_I and off is not None and self._exec_ok(t, user):
                fast[X][vpn] = off
            return
        off = cpu.bus.ram_offset(t.spa)
        guest_w = t.rw or (cpu.paging and not user and not cpu.cr0 & (1 << 16)) or not cpu.paging
        writable = t.d and t.n_d and t.n_rw and guest_w
        smap = cpu.paging and cpu.cr4 & (1 << 21) and t.us and not user
        if smap:
            return
        exec_ok = self._exec_ok(t, user)
        if off is None:
            fast[MMIO_R][vpn] = t.spa
            if writable:
                fast[MMIO_W][vpn] = t.spa
            return
        cpu.fill_read(fast, vpn, off)
        if exec_ok:
            fast[X][vpn] = off
        if writable and not (self.rmp.enabled and not self.rmp.hypervisor_owned(t.spa, t.n_size)):
            cpu.fill_write(fast, vpn, off)


def setup(cpu, v, host_cr4, host_efer) -> None:
    """At VMRUN with NP_ENABLE (APM 15.25.3): the nested tables are walked in
    the host's paging mode as it is at VMRUN."""
    from . import features
    setup_values(cpu, v["N_CR3"], v["G_PAT"], bool(v["GMET_ENABLE"]) and features.enabled(cpu, "gmet"),
                 host_cr4, host_efer)


def setup_values(cpu, n_cr3: int, g_pat: int, gmet: bool, host_cr4: int, host_efer: int) -> None:
    """``setup`` from the VMCB's N_CR3 and G_PAT and whether GMET is on
    (GMET_ENABLE with the feature present): svm/switch.py has them from the
    VMCB bytes its delta compares."""
    # "The guest PAT register is loaded from G_PAT field in the VMCB" (15.25.4):
    # PAT is replicated for host and guest (15.25.2); #VMEXIT saves the guest's
    # to G_PAT and gives the host its own back (world.vmexit).
    s = cpu.svm
    msr = cpu.msr
    s.host_pat = msr.get(PAT_MSR, PAT_RESET)
    msr[PAT_MSR] = g_pat
    # A NestedMmu holds only what it was made from: the last one is reused
    # when all of that is the same (it caches no translation, see translate).
    key = (n_cr3, host_cr4, host_efer, gmet, s.sev, cpu.maxphyaddr, cpu.c_bit, cpu.enc_mask)
    last = s.npt_last
    if last is None or last.key != key:
        last = s.npt_last = NestedMmu(cpu, n_cr3, host_cr4, host_efer, gmet, s.sev)
        last.key = key
    cpu.npt = last
