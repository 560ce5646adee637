"""One AMD64 logical processor: architectural state and the memory path.

The memory path is the hot part of the simulator: segmentation (legacy modes
only), then the fast cache of the TLB, then (on a miss) the architectural TLB
and the page walker.  ``read``/``write`` take a segment index (ES..GS) and an
offset already masked to the address size; ``read_lin``/``write_lin`` take a
linear address.  Everything that can fault raises before changing state.
"""
from .exceptions import CpuException, GP, PF, SS as SS_VEC, AC as AC_VEC, PF_P, PF_W, PF_U, PF_I, PF_RMP
from .flags import arith_flags, cond_from_flags, ARITH, FIXED1, WRITABLE, AC as F_AC, VM as F_VM
from .paging import Walker, check_access
from .walkmemo import bus_deps
from .segments import Segment, CS, SS, FS, GS, A_L, A_DB, A_P, A_S, T_CODE, T_WRITABLE, T_READABLE, T_EXPAND_DOWN
from .tlb import Tlb, R, W, X, MMIO_R, MMIO_W, FC
from . import debug, fpu_state
from .hooks import CpuHooks

MASK64 = (1 << 64) - 1
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = (
    1, 2, 4, 8, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME, EFER_LMSLE, EFER_FFXSR, EFER_TCE = (
    1, 1 << 8, 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15)

_IDENTITY = None  # placeholder for identity translations when paging is off
GUEST_KEY = 1 << 62   # svmsim-internal frame flag: access with the SEV guest's key
KEY_ID_SHIFT = 52     # code-page identities of encrypted frames carry their key slot above bit 52


class Cpu:
    """Architectural state of one CPU plus its memory-access path."""

    def __init__(self, machine, index: int, hooks=None):
        self.machine = machine
        self.hooks = hooks if hooks is not None else CpuHooks()
        self.index = index
        self.bus = machine.bus
        self.ram = machine.bus.ram.buf
        self.ram_views = machine.bus.ram.word_views()    # aligned accesses of compiled code
        self.io = machine.io
        self.lapic = None
        self.tlb = Tlb()
        self.walker = Walker(self.bus.read, self._pt_write)     # pt_read(): no encryption yet
        self.walker.enable_memo(machine.pt_watch, bus_deps(self.bus))
        self.walk_lin = 0          # the linear address being walked (an RMP fault on an A/D update)
        self.fr, self.fw, self.fx = self.tlb.fast[0][:3]
        self.a8r, self.a8w, self.a4r, self.a4w, self.a1r = self.tlb.fast[0][6:11]
        self.debug_watch = ()      # ranges the debugger watches (svmsim.debug.control)
        self.fc = self.tlb.fast[0][FC]
        self.reset()

    # ------------------------------------------------------------------ reset
    def reset(self) -> None:
        """Processor state after RESET (APM vol 2, 14.1.3, table 14-1)."""
        self.regs = [0] * 16
        self.regs[2] = self.machine.profile.reset_edx if hasattr(self.machine, "profile") else 0
        self.rip = 0xFFF0
        self.rflags = FIXED1
        self.lf = None
        self.segs = [Segment(0, 0, 0xFFFF, 0x93) for _ in range(6)]
        self.segs[CS] = Segment(0xF000, 0xFFFF0000, 0xFFFF, 0x9B)
        self.ldtr = Segment(0, 0, 0xFFFF, 0x82)
        self.tr = Segment(0, 0, 0xFFFF, 0x8B)
        self.gdtr_base, self.gdtr_limit = 0, 0xFFFF
        self.idtr_base, self.idtr_limit = 0, 0xFFFF
        self.cr0 = CR0_ET | CR0_CD | CR0_NW
        self.cr2 = self.cr3 = self.cr4 = 0
        self.efer = 0
        self.xcr0 = 1
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
        self.msr = {}              # MSRs without side effects, by index
        self.cpl = 0
        self.halted = False
        self.wait_for_sipi = False
        self.shadow = False        # STI / MOV SS interrupt shadow
        self.in_shadow = False
        self.monitor_armed = False  # MONITOR executed, no MWAIT since     # executing the instruction in that shadow (Engine.step)
        self.nmi_pending = False
        self.nmi_blocked = False
        self.pending = True        # something may need attention between blocks
        self.watch = self.debug_watch   # armed data breakpoints (debug.sync); the debugger's survive INIT
        self.db_hits = 0           # DR6 B0-B3 bits hit by the current instruction
        self.debugctl = 0          # DEBUGCTL.LBR (bit 0) and BTF (bit 1) as the engine sees them
        self.step_once = False     # run one instruction before the next interrupt check
        self.no_traps = False      # this instruction reinitialized the CPU (SKINIT): no #DB trap after it
        self.init_pending = False
        self.smi_pending = False
        self.smi_source = ""
        self.smm = False           # in system management mode (cpu/smm.py)
        self.smm_nmi_blocked = False   # NMI blocking when SMM was entered
        self.inject_ev = False     # delivering an EVENTINJ event with EV = 1
        self.gif = True            # global interrupt flag (APM vol 2, 15.17)
        self.svm_guest = False     # running a guest between VMRUN and #VMEXIT
        self.hooks.reset(self)     # the virtualization extension's state: cpu.svm
        self.npt = None            # svm.npt.NestedMmu while a guest runs with nested paging
        self.c_bit = 0             # memory encryption: the C-bit position, 0 when off
        self.enc_mask = 0          # address bits that route an access through the engine
        self.sev_asid = 0          # the key slot of the running SEV guest (0: none)
        self.probing = False       # a translation only checked (CLFLUSH): fill no decrypted line
        self.retired = 0
        self.q_exec = 0            # instructions retired in the current engine quantum so far
        self.event_ins = None      # where compiled code left for an event it did not raise (codegen t_direct)
        self.q_events = 0          # exceptions the last engine quantum delivered (budget steps)
        self.q_base = 0            # what earlier runs used of this quantum (a debugger stop split it)
        self.stall = 0             # virtual ns owed beyond 1 ns per instruction (PAUSE)
        self.tsc_offset = 0        # set by WRMSR TSC (msr.py)
        profile = getattr(self.machine, "profile", None)
        if profile is not None:
            self.maxphyaddr = profile.phys_bits
            self.walker.set_maxphyaddr(profile.phys_bits)
        fpu_state.reset(self)
        self.tlb.flush_all("reset")
        self.update_mode()

    # ------------------------------------------------------------------ flags
    def get_rflags(self) -> int:
        lf = self.lf
        if lf is None:
            return self.rflags
        return (self.rflags & ~ARITH) | arith_flags(lf)

    def set_rflags(self, value: int) -> None:
        old_vm_ac = self.rflags & (F_VM | F_AC)
        self.lf = None
        self.rflags = (value & WRITABLE) | FIXED1
        if (self.rflags & (F_VM | F_AC)) != old_vm_ac:
            self.update_mode()

    def flags_settle(self) -> int:
        """Materialise lazy flags into ``rflags`` and return it."""
        if self.lf is not None:
            self.rflags = (self.rflags & ~ARITH) | arith_flags(self.lf)
            self.lf = None
        return self.rflags

    def cond(self, cc: int) -> bool:
        return cond_from_flags(self.get_rflags() if self.lf is not None else self.rflags, cc)

    # ------------------------------------------------------------------ modes
    def update_mode(self) -> None:
        """Recompute everything derived from CR0, CR4, EFER, CS and CPL.

        Called after any change to those; it picks the code size the
        decoder uses, the linear-address mask, effective segment bases and
        which segments need limit checks, and selects the fast TLB caches
        for the current privilege.

        64-bit mode (the world switch's common case: issue 14) takes a
        short path with the same results: no segment limits or bases but
        FS's and GS's (APM vol 2, 4.8.1-4.8.2), a 64-bit stack, 64-bit linear
        addresses; ``_update_mode_general`` is the rule for every mode
        (tests/test_mode64.py compares the two).
        """
        segs = self.segs
        cr0 = self.cr0
        if self.efer & EFER_LMA and segs[CS].attr & A_L and cr0 & CR0_PE and not self.rflags & F_VM:
            cpl = self.cpl
            self.bits = 64
            self.long64 = True
            self.lin_mask = self.lin_mask_sys = MASK64
            self.ebase = [0, 0, 0, 0, segs[FS].base, segs[GS].base]
            self.seg_chk = [False] * 6
            self.stack_bits = 64
            self.paging = bool(cr0 & CR0_PG)
            if cpl == 3:
                self.user_access = PF_U
                fast = self.tlb.fast[1]
                self.align_check = bool(cr0 & CR0_AM and self.rflags & F_AC)
            else:
                self.user_access = 0
                fast = self.tlb.fast[0]
                self.align_check = False
            self.fr, self.fw, self.fx = fast[:3]
            self.fc = fast[FC]
            self.a8r, self.a8w, self.a4r, self.a4w, self.a1r = fast[6:11]     # tlb.ADDR (codegen)
            if self.align_check:
                self.fr, self.fw, self.fc = {}, {}, {}
                self.a8r, self.a8w, self.a4r, self.a4w, self.a1r = {}, {}, {}, {}, {}
            self.mode_key = (64, cpl, 64, self.hooks.block_key(self) if self.svm_guest else False, None)
            return
        self._update_mode_general()

    def _update_mode_general(self) -> None:
        """update_mode's rule for every mode."""
        cs = self.segs[CS]
        lma = self.efer & EFER_LMA
        if not self.cr0 & CR0_PE:
            bits = 16
        elif self.rflags & F_VM:
            bits = 16
        elif lma and cs.attr & A_L:
            bits = 64
        else:
            bits = 32 if cs.attr & A_DB else 16
        self.bits = bits
        self.long64 = bits == 64
        self.lin_mask = MASK64 if bits == 64 else 0xFFFFFFFF
        self.lin_mask_sys = MASK64 if lma else 0xFFFFFFFF
        if bits == 64:
            self.ebase = [0, 0, 0, 0, self.segs[FS].base, self.segs[GS].base]
            self.seg_chk = [False] * 6
        else:
            self.ebase = [s.base & 0xFFFFFFFF for s in self.segs]
            self.seg_chk = [not self._flat(s, i) for i, s in enumerate(self.segs)]
        ss = self.segs[SS]
        self.stack_bits = 64 if bits == 64 else (32 if ss.attr & A_DB else 16)
        self.paging = bool(self.cr0 & CR0_PG)
        user = self.cpl == 3
        self.user_access = PF_U if user else 0
        fast = self.tlb.fast[1 if user else 0]
        self.fr, self.fw, self.fx = fast[:3]
        self.fc = fast[FC]
        self.a8r, self.a8w, self.a4r, self.a4w, self.a1r = fast[6:11]     # tlb.ADDR (codegen)
        # Alignment checking (APM vol 2, 8.2.18): CR0.AM, RFLAGS.AC and CPL 3.
        # Data accesses then take the slow path, which checks alignment.
        self.align_check = bool(user and self.cr0 & CR0_AM and self.rflags & F_AC)
        if self.align_check:
            self.fr, self.fw, self.fc = {}, {}, {}
            self.a8r, self.a8w, self.a4r, self.a4w, self.a1r = {}, {}, {}, {}, {}
        # The block cache is keyed by this: anything that changes how bytes
        # decode or which checks a translated block bakes in belongs here.
        # The CS limit outside 64-bit mode: translation stops blocks at it.
        # In guest mode, what the extension decides when it translates (the
        # intercepts: hooks.block_key), a true value; False in host mode.
        self.mode_key = (bits, self.cpl, self.stack_bits,
                         self.hooks.block_key(self) if self.svm_guest else False,
                         None if bits == 64 else self.segs[CS].limit)

    def _flat(self, s: Segment, i: int) -> bool:
        """A segment that can never fail a limit or type check for data."""
        if not self.cr0 & CR0_PE or self.rflags & F_VM:
            return s.base == 0 and s.limit == 0xFFFFFFFF
        if i == CS:
            return False   # CS is not used for data except with an override
        a = s.attr
        return (s.base == 0 and s.limit == 0xFFFFFFFF and a & A_P and a & A_S
                and not a & T_CODE and a & T_WRITABLE and not a & T_EXPAND_DOWN)

    def set_cpl(self, cpl: int) -> None:
        if cpl != self.cpl:
            self.cpl = cpl
            self.update_mode()

    # ------------------------------------------------------------------ segmentation
    def seg_check(self, seg: int, off: int, size: int, write: bool) -> None:
        """Limit and type checks of a data access in legacy modes (APM 4.11, 4.12)."""
        s = self.segs[seg]
        vec = SS_VEC if seg == SS else GP
        protected = self.cr0 & CR0_PE and not self.rflags & F_VM
        if protected:
            a = s.attr
            if not a & A_P:
                raise CpuException(vec, 0, detail=f"{'es cs ss ds fs gs'.split()[seg]} segment not usable")
            if write and (a & T_CODE or not a & T_WRITABLE):
                raise CpuException(vec, 0, detail="write to a non-writable segment")
            if not write and a & T_CODE and not a & T_READABLE:
                raise CpuException(vec, 0, detail="read of an execute-only segment")
            if a & T_EXPAND_DOWN and not a & T_CODE:
                top = 0xFFFFFFFF if a & A_DB else 0xFFFF
                if off <= s.limit or off + size - 1 > top:
                    raise CpuException(vec, 0, detail="expand-down segment limit")
                return
        if off + size - 1 > s.limit:
            raise CpuException(vec, 0, detail=f"offset {off:#x} beyond segment limit {s.limit:#x}")

    # ------------------------------------------------------------------ memory: segment-relative
    def read(self, seg: int, off: int, size: int) -> int:
        if self.seg_chk[seg]:
            self.seg_check(seg, off, size, False)
        lin = (self.ebase[seg] + off) & self.lin_mask
        o = lin & 0xFFF
        if o + size <= 0x1000:
            b = self.fr.get(lin >> 12)
            if b is not None:
                b += o
                return int.from_bytes(self.ram[b:b + size], "little")
        return self.read_lin_slow(lin, size, self.user_access, seg == SS)

    def write(self, seg: int, off: int, size: int, value: int) -> None:
        if self.seg_chk[seg]:
            self.seg_check(seg, off, size, True)
        lin = (self.ebase[seg] + off) & self.lin_mask
        o = lin & 0xFFF
        if o + size <= 0x1000:
            b = self.fw.get(lin >> 12)
            if b is None:
                # A page holding code: fast unless the bytes are translated code.
                c = self.fc.get(lin >> 12)
                if c is not None:
                    b = c[0] + o
                    self.ram[b:b + size] = (value & ((1 << (size << 3)) - 1)).to_bytes(size, "little")
                    if c[1].find(1, o, o + size) >= 0:
                        # Translated code: as the bus would, tell its watchers
                        # (the engine drops the blocks, engine._on_ram_write).
                        for watch in self.bus.write_watchers:
                            watch(b, size)
                    return
            else:
                b += o
                self.ram[b:b + size] = (value & ((1 << (size << 3)) - 1)).to_bytes(size, "little")
                return
        self.write_lin_slow(lin, size, value, self.user_access, seg == SS)

    def check_write(self, seg: int, off: int, size: int) -> None:
        """Probe a write without doing it (instructions that must not fault
        half-way, e.g. a far call pushing several values)."""
        if self.seg_chk[seg]:
            self.seg_check(seg, off, size, True)
        lin = (self.ebase[seg] + off) & self.lin_mask
        self.translate(lin, PF_W | self.user_access, seg == SS)
        if (lin & 0xFFF) + size > 0x1000:
            self.translate((lin | 0xFFF) + 1 & self.lin_mask, PF_W | self.user_access, seg == SS)

    def linear(self, seg: int, off: int) -> int:
        return (self.ebase[seg] + off) & self.lin_mask

    # ------------------------------------------------------------------ memory: linear
    def read_lin(self, lin: int, size: int, user=None) -> int:
        return self.read_lin_slow(lin, size, self.user_access if user is None else user, False)

    def write_lin(self, lin: int, size: int, value: int, user=None) -> None:
        self.write_lin_slow(lin, size, value, self.user_access if user is None else user, False)

    def read_sys(self, lin: int, size: int) -> int:
        """Implicit supervisor read (descriptor tables, TSS, IDT: APM 5.6.x).

        A page in the supervisor read cache is read there, as ``read`` does
        for an explicit access: that cache holds only pages a supervisor read
        reaches without a fault, never with SMAP's user pages or data
        breakpoints armed (``_fill_fast``), so the translation it skips would
        have found the same page (an event delivery reads its gate, its code
        descriptor and, at IRET, two more from the same pages)."""
        o = lin & 0xFFF
        if o + size <= 0x1000:
            b = self.tlb.fast[0][R].get(lin >> 12)
            if b is not None:
                b += o
                return int.from_bytes(self.ram[b:b + size], "little")
        return self.read_lin_slow(lin, size, 0, False)

    def write_sys(self, lin: int, size: int, value: int) -> None:
        self.write_lin_slow(lin, size, value, 0, False)

    def _alignment(self, lin, size, user):
        if user and self.align_check and lin & (size - 1) and size in (2, 4, 8, 16):
            raise CpuException(AC_VEC, 0, detail=f"misaligned {size}-byte access at {lin:#x} "
                               "with CR0.AM and RFLAGS.AC at CPL 3")

    def read_lin_slow(self, lin, size, user, stack):
        if self.align_check:
            self._alignment(lin, size, user)
        if self.watch:
            debug.check_data(self, lin, size, False)
        o = lin & 0xFFF
        if o + size <= 0x1000:
            page = self.tlb.fast[1 if user else 0][MMIO_R].get(lin >> 12)
            spa = self.translate(lin, user, stack) if page is None else page | o
            return self.pread(spa, size)
        first = 0x1000 - o
        spa1 = self.translate(lin, user, stack)
        spa2 = self.translate((lin + first) & self.lin_mask, user, stack)
        lo = self.pread(spa1, first) if first in (1, 2, 4, 8) else int.from_bytes(self.pread_bytes(spa1, first), "little")
        rest = size - first
        hi = self.pread(spa2, rest) if rest in (1, 2, 4, 8) else int.from_bytes(self.pread_bytes(spa2, rest), "little")
        return lo | (hi << (first * 8))

    def write_lin_slow(self, lin, size, value, user, stack):
        if self.align_check:
            self._alignment(lin, size, user)
        if self.watch:
            debug.check_data(self, lin, size, True, value)
        o = lin & 0xFFF
        access = user | PF_W
        value &= (1 << (size * 8)) - 1
        if o + size <= 0x1000:
            page = self.tlb.fast[1 if user else 0][MMIO_W].get(lin >> 12)
            spa = self.translate(lin, access, stack) if page is None else page | o
            self.pwrite(spa, size, value)
            return
        first = 0x1000 - o
        spa1 = self.translate(lin, access, stack)
        spa2 = self.translate((lin + first) & self.lin_mask, access, stack)
        data = value.to_bytes(size, "little")
        self.pwrite_bytes(spa1, data[:first])
        self.pwrite_bytes(spa2, data[first:])

    def fetch_spa(self, lin: int) -> int:
        """Translate an instruction-fetch address (APM 5.6: I/D bit)."""
        return self.translate(lin, PF_I | self.user_access, False)

    # ------------------------------------------------------------------ translation
    def translate(self, lin: int, access: int, stack: bool = False) -> int:
        """Linear -> system physical address for an access, or raise.

        ``access`` is #PF error-code style: PF_W, PF_U, PF_I.  Fills the fast
        caches when the target is plain RAM.
        """
        if self.npt is not None:
            return self.npt.translate(lin, access, stack)     # a guest with nested paging
        if self.efer & EFER_LMA:
            # Canonical: the bits above the linear width copy its top bit (APM 2.2.1).
            top = lin >> 56 if self.cr4 & (1 << 12) else lin >> 47
            if top and top != (0xFF if self.cr4 & (1 << 12) else 0x1FFFF):
                raise CpuException(SS_VEC if stack else GP, 0, detail=f"non-canonical address {lin:#x}")
        vpn = lin >> 12
        if not self.paging:
            spa = lin & 0xFFFFFFFF & ~0xFFF
            t = None
        else:
            tlb = self.tlb
            t = tlb.lookup(vpn)
            if t is None or (access & PF_W and not t.d):
                tlb.stats["misses"] += 1
                self.walk_lin = lin
                t = self.walker.walk(lin, self.cr0, self.cr3, self.cr4, self.efer, access)
                tlb.insert(vpn, t)
            check_access(t, lin, access, self.cr0, self.cr4, self.efer, self.rflags & F_AC)
            spa = t.spa
        if access & PF_W and self.machine.rmp.enabled:
            self._rmp_host_write(spa, t.size if t is not None else 0x1000, lin, access)
        self._fill_fast(vpn, spa, t, access)
        return spa | (lin & 0xFFF)

    def _rmp_host_write(self, spa, size, lin, access):
        """SEV-SNP (APM vol 2, 15.36.10, table 15-37): a host data write (or
        page-table update) needs a Hypervisor-Owned page, else #PF with the
        RMP bit; a 2 MiB or 1 GiB mapping needs all of its 2 MiB unassigned."""
        if not self.machine.rmp.hypervisor_owned(spa & ~(self.enc_mask | 0xFFF), size):
            if self.svm_guest:              # a guest without nested paging: #VMEXIT(NPF)
                raise self.hooks.rmp_fault(self, spa, access)
            raise CpuException(PF, PF_P | PF_W | (access & PF_U) | PF_RMP, cr2=lin,
                               detail=f"RMP: host write to {spa & ~self.enc_mask:#x}, which is not "
                                      "hypervisor-owned")

    def _fill_fast(self, vpn, spa, t, access):
        user = 1 if access & PF_U else 0
        fast = self.tlb.fast[user]
        if self.watch:
            # Watched data takes the slow path; fetches are not data accesses,
            # and the fetch cache is what lets translated blocks be reused.
            off = self.bus.ram_offset(spa)
            if access & PF_I and off is not None and (t is None or not t.nx and not (
                    t.us and not user and self.cr4 & (1 << 20))):
                fast[X][vpn] = off
            return
        off = self.bus.ram_offset(spa)
        if off is None:
            # MMIO or unbacked: cache the translation only; the device sees every access.
            if t is None or not (self.cr4 & (1 << 21) and t.us and not user):
                fast[MMIO_R][vpn] = spa
                if t is None or (t.d and (t.rw or (not user and not self.cr0 & CR0_WP))):
                    fast[MMIO_W][vpn] = spa
            return
        if t is None:
            self.fill_read(fast, vpn, off)
            fast[X][vpn] = off
            if not (self.machine.rmp.enabled and not self.machine.rmp.hypervisor_owned(spa)):
                self.fill_write(fast, vpn, off)
            return
        # Cache only what a recheck would allow without a fault, so the fast
        # path never needs to look at permissions.
        if self.cr4 & (1 << 21) and t.us and not user:
            return                      # SMAP depends on RFLAGS.AC: always recheck
        self.fill_read(fast, vpn, off)
        if not t.nx and not (t.us and not user and self.cr4 & (1 << 20)):
            fast[X][vpn] = off
        if (t.d and (t.rw or (not user and not self.cr0 & CR0_WP))
                and not (self.machine.rmp.enabled and not self.machine.rmp.hypervisor_owned(spa, t.size))):
            self.fill_write(fast, vpn, off)

    def fill_read(self, fast, vpn, off):
        """Cache a plain RAM page readable without a fault (R); never a page
        with decrypted lines (memory/enclines.py): its DRAM may be behind a
        dirty line, and the bus read writes that back first."""
        lines = self.machine.enc_lines
        if lines is not None:
            if off >> 12 in lines.pages:
                return
            lines.plain_r.add(off >> 12)
        fast[R][vpn] = off

    def fill_write(self, fast, vpn, off):
        """Cache a page writable without a fault: in W, or in FC with its code
        byte map if it holds translated code (engine.py, codepages.py).  Never
        a page with decrypted lines (memory/enclines.py): its stores must
        reach the bus, which keeps the lines exact."""
        lines = self.machine.enc_lines
        if lines is not None:
            if off >> 12 in lines.pages:
                return
            lines.plain_w.add(off >> 12)
        cp = self.machine.code_pages.get(off >> 12)
        if cp is None:
            fast[W][vpn] = off
        else:
            fast[FC][vpn] = (off, cp.map, cp.map8)

    def _pt_write(self, spa, size, value):
        if self.machine.rmp.enabled and not self.svm_guest:
            self._rmp_host_write(spa, 0x1000, self.walk_lin, 0)       # an A/D update
        self.pwrite(spa, size, value)

    # ------------------------------------------------------------------ physical memory
    # With memory encryption on, a frame address may carry the C-bit (the
    # host's SME key) or GUEST_KEY (an SEV guest's key, svmsim's internal
    # flag); such accesses go through the memory controller's engine.
    def pread(self, spa, size):
        if spa & self.enc_mask:
            return int.from_bytes(self._enc_read(spa, size), "little")
        return self.bus.read(spa, size)

    def pwrite(self, spa, size, value):
        if spa & self.enc_mask:
            self._enc_write(spa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
            return
        self.bus.write(spa, size, value)

    def pread_bytes(self, spa, n):
        if spa & self.enc_mask:
            return self._enc_read(spa, n)
        return self.bus.read_bytes(spa, n)

    def pwrite_bytes(self, spa, data):
        if spa & self.enc_mask:
            self._enc_write(spa, data)
            return
        self.bus.write_bytes(spa, data)

    def code_page(self, spa):
        """Identity of the code page holding ``spa``, as the block cache checks it:
        the RAM offset, plus the key slot for encrypted frames (the same DRAM
        decrypts to different code under different keys); None for MMIO."""
        if spa & self.enc_mask:
            off = self.bus.ram_offset(spa & ~self.enc_mask & ~0xFFF)
            return None if off is None else off | (self._key_slot(spa) + 1) << KEY_ID_SHIFT
        return self.bus.ram_offset(spa & ~0xFFF)

    def _key_slot(self, spa):
        return self.sev_asid if spa & GUEST_KEY else 0

    def _enc_read(self, spa, n):
        lines = self.machine.enc_lines
        if lines is not None:
            return lines.read(spa & ~self.enc_mask, n, self._key_slot(spa))
        bus = self.bus
        return self.machine.mem_engine.read(bus.read_bytes, spa & ~self.enc_mask, n, self._key_slot(spa))

    def _enc_write(self, spa, data):
        lines = self.machine.enc_lines
        if lines is not None:
            lines.write(spa & ~self.enc_mask, data, self._key_slot(spa))
            return
        bus = self.bus
        self.machine.mem_engine.write(bus.read_bytes, bus.write_bytes, spa & ~self.enc_mask, data,
                                      self._key_slot(spa))

    def set_mem_encryption(self, on: bool) -> None:
        """SYSCFG.MemEncryptionModEn (APM 7.10.1): the C-bit becomes meaningful
        and the physical-address width shrinks (seed S14, S16)."""
        sev = getattr(self.machine.profile, "extra", {}).get("sev") or {}
        if on and sev:
            self.c_bit, reduction = sev["c_bit"], sev["reduction"]
            self.enc_mask = (1 << self.c_bit) | GUEST_KEY
        else:
            self.c_bit, reduction, self.enc_mask = 0, 0, 0
        self.walker.set_maxphyaddr(self.maxphyaddr, self.c_bit, reduction)
        self.walker.read_pte = self.pt_read()
        # Walks are memoized only while they read the bus directly (walkmemo.py).
        if self.enc_mask:
            self.walker.disable_memo()
        else:
            self.walker.enable_memo(self.machine.pt_watch, bus_deps(self.bus))
        if self.npt is not None:
            self.npt.nested.read_pte = self.pt_read()
            if self.enc_mask:
                self.npt.nested.disable_memo()
                self.npt.guest.disable_memo()
        self.tlb.flush_all("syscfg.mem_encryption")

    def pt_read(self):
        """The page-table read of the host's walkers: ``pread``, or the bus
        directly while no address bit routes through the encryption engine
        (the same result, one call less per entry of every walk)."""
        return self.pread if self.enc_mask else self.bus.read

    # ------------------------------------------------------------------ stack
    def push(self, value: int, size: int) -> None:
        bits = self.stack_bits
        rsp = self.regs[4]
        if bits == 64:
            new = (rsp - size) & MASK64
            self.write(SS, new, size, value)
            self.regs[4] = new
        elif bits == 32:
            new = (rsp - size) & 0xFFFFFFFF
            self.write(SS, new, size, value)
            self.regs[4] = new          # 32-bit stack writes ESP (zero-extends: fine in legacy)
        else:
            new = (rsp - size) & 0xFFFF
            self.write(SS, new, size, value)
            self.regs[4] = (rsp & ~0xFFFF) | new

    def pop(self, size: int) -> int:
        bits = self.stack_bits
        rsp = self.regs[4]
        if bits == 64:
            v = self.read(SS, rsp, size)
            self.regs[4] = (rsp + size) & MASK64
        elif bits == 32:
            v = self.read(SS, rsp & 0xFFFFFFFF, size)
            self.regs[4] = (rsp + size) & 0xFFFFFFFF
        else:
            v = self.read(SS, rsp & 0xFFFF, size)
            self.regs[4] = (rsp & ~0xFFFF) | ((rsp + size) & 0xFFFF)
        return v

    def kick(self) -> None:
        """Something changed (an interrupt line, a signal): re-check between blocks."""
        self.pending = True

    # ------------------------------------------------------------------ signals from the APIC
    def signal_init(self) -> None:
        """INIT: reset most state and wait for a SIPI (APM vol 2, 14.1.4).

        A CPU takes INIT at its next instruction boundary.  CPUs run one at a
        time here, so every CPU but the sender is at one: it takes the INIT
        at once, as hardware does within nanoseconds, and a STARTUP sent
        right after it (kvm-unit-tests sends INIT, then STARTUP with no
        delay) finds it waiting for a SIPI (MP spec 1.4, B.4.2: a STARTUP IPI
        is accepted "after an INIT IPI reception").  Held by GIF = 0 or
        handled by the SVM rules in guest mode (or redirected to #SX by
        VM_CR.R_INIT), INIT stays pending for the CPU to take itself."""
        self.init_pending = True
        if (self is not self.machine.current_cpu and self.gif and not self.svm_guest
                and not self.msr.get(0xC0010114, 0) & 2):       # VM_CR.R_INIT: #SX instead
            self.machine.do_init(self)
        else:
            self.kick()

    def signal_sipi(self, vector: int) -> None:
        """STARTUP IPI: a CPU waiting for SIPI starts in real mode at vector:0000."""
        if not self.wait_for_sipi:
            return                      # ignored unless in wait-for-SIPI (APM 16.5)
        self.wait_for_sipi = False
        self.halted = False
        self.segs[CS] = Segment((vector & 0xFF) << 8, (vector & 0xFF) << 12, 0xFFFF, 0x9B)
        self.rip = 0
        self.update_mode()
        self.hooks.startup(self)
        self.kick()

    def signal_nmi(self) -> None:
        self.nmi_pending = True
        self.kick()

    def signal_smi(self, source: str = "external") -> None:
        """SMI (APM vol 2, 10.3; 15.22): latched until taken between
        instructions (interrupts.service, cpu/smm.py)."""
        self.smi_pending = True
        self.smi_source = source
        self.kick()
