"""The simulated PC: CPUs, memory, devices, and the run loop.

CPUs interleave deterministically: each round every runnable CPU executes a
quantum of instructions in index order, then virtual time advances by one
quantum and due timers fire.  With every CPU halted, time jumps to the next
timer deadline.  Given the same kernel and options, a run is reproducible
instruction for instruction.
"""
import signal
import sys
import threading
import time
import weakref
try:
    import resource
except ImportError:                   # pragma: no cover - not on Windows
    resource = None
from collections import deque, namedtuple
from dataclasses import dataclass, field

from .errors import ConfigError, NotModelled, SvmsimError
from .memory.bus import PhysBus, IoBus
from .devices.clock import VirtualClock
from .cpu.state import Cpu
from .cpu.engine import Engine
from .cpu.exceptions import Shutdown
from .debug.api import DebugApi
from .debug.control import Debugger

# Exit statuses for run endings other than isa-debug-exit (which gives the
# odd (V << 1) | 1, as QEMU does).  All even, so they never collide with it.
STATUS_SHUTDOWN = 2        # triple fault / shutdown (QEMU -no-reboot would exit 0)
STATUS_HALTED = 4          # every CPU halted with nothing left to wake it
STATUS_BUDGET = 6          # --max-insns exhausted
STATUS_TIMEOUT = 8         # --timeout (host wall-clock seconds) reached
STATUS_RESET = 10          # the guest asked for a reset (port 0xCF9 / 0x92 / 0x64)
STATUS_NOT_MODELLED = 12   # the guest used something svmsim does not model yet
STATUS_STOPPED = 14        # stopped by a breakpoint, a step, a hook or Machine.stop() (resumable)
STATUS_INTERNAL = 70       # a bug in svmsim (EX_SOFTWARE); the message says where
STATUS_INTERRUPTED = 130   # Ctrl-C (SIGINT), as a shell reports it

# Run endings after which run() continues where the machine stopped; the others
# (debug-exit, shutdown, reset, not-modelled, internal-error) are final.
RESUMABLE = frozenset({"budget", "timeout", "breakpoint", "watchpoint", "step", "stopped",
                       "interrupted", "halted"})

QUANTUM = 1000
#: The most instructions a bulk loop may run beyond its quantum (Machine.run_ahead).
RUN_AHEAD_MAX = 1 << 16

# One fault raised by an instruction or a delivery, for crash reports.
Fault = namedtuple("Fault", "cpu insns vector error_code cr2 rip lin bits guest asid detail")


_SIZE_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: The most RAM a machine may have: RAM above 4 GiB must end below the 1012 GiB
#: HyperTransport hole QEMU's pc machine reserves for AMD CPUs (pc.c).
MAX_MEM_SIZE = 0xFD_0000_0000 - (1 << 32) + 0xC000_0000


def parse_size(text) -> int:
    """'128M', '4g', '1.5G', '65536k' or a byte count -> bytes (QEMU's -m
    syntax; a plain number is MiB).  Anything else is a ConfigError."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    import re
    m = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,15})?)\s*([bkmgt]?)\s*", str(text).lower())
    if m is None:
        raise ConfigError(f"bad memory size {text!r} (use e.g. 128M or 4G)")
    from fractions import Fraction
    return int(Fraction(m.group(1)) * _SIZE_UNITS[m.group(2)])


def _release(bus, engine) -> None:
    engine.flush()
    bus.ram.close()


class _LazyMailbox:
    """The AMD-SP's MMIO window; the firmware is created at the first access."""

    def __init__(self, machine):
        self.machine = machine

    def _mb(self):
        self.machine.amd_sp
        return self.machine.amd_sp_mailbox

    def mmio_read(self, offset, size):
        return self._mb().mmio_read(offset, size)

    def mmio_write(self, offset, size, value):
        self._mb().mmio_write(offset, size, value)


@dataclass
class MachineConfig:
    mem_size: int = 128 << 20
    smp: int = 1
    cpu: str = "epyc"
    serial_out: object = None          # binary file-like; None = stdout
    serial_in: object = None           # binary file-like or None
    max_insns: int = None
    timeout: float = None
    append: str = ""
    devices: tuple = ()                # optional devices by QEMU name, e.g. ("pc-testdev",)


@dataclass
class RunResult:
    status: int
    reason: str
    kind: str
    instructions: int
    wall_time: float
    unimplemented: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    svm: dict = field(default_factory=dict)    # VMRUNs, exits by name, VMEXIT_INVALID reasons
    cpu: int = None             # the CPU that stopped (breakpoint, watchpoint, step, fault...)
    address: int = None         # the breakpoint's or watchpoint's address
    executed: int = 0           # instructions retired by this call of run() / step()

    @property
    def insns_per_second(self) -> float:
        return self.executed / self.wall_time if self.wall_time else 0.0

    @property
    def resumable(self) -> bool:
        """True if ``Machine.run()`` can continue from here."""
        return self.kind in RESUMABLE


# What INIT leaves alone (APM vol 2, 15.21.8): the MSRs, the TSC, x87 and SSE state.
INIT_KEEPS = ("msr", "tsc_offset", "fpu_fcw", "fpu_fsw", "fpu_ftw", "fpu_fop", "fpu_fip", "fpu_fcs",
              "fpu_fdp", "fpu_fds", "fpu_st", "xmm", "ymmh", "mxcsr")


class Machine(DebugApi):
    """An AMD64 PC.  Build it, ``load_kernel()``, then ``run()``; ``run()`` again
    continues after a breakpoint, a step, a budget or a timeout.  Registers,
    memory, breakpoints and hooks: ``svmsim.debug.api.DebugApi``."""

    def __init__(self, config: MachineConfig = None, **kw):
        self.pic = None
        self.ioapic = None
        self.config = config or MachineConfig(**kw)
        cfg = self.config
        cfg.mem_size = parse_size(cfg.mem_size)
        if cfg.mem_size < (2 << 20) or cfg.mem_size % 4096:
            raise ConfigError("memory size must be at least 2 MiB and a multiple of 4 KiB")
        if cfg.mem_size > MAX_MEM_SIZE:
            raise ConfigError(f"memory size {cfg.mem_size >> 30} GiB is too large (at most "
                              f"{MAX_MEM_SIZE >> 30} GiB: RAM must end below the AMD HyperTransport hole)")
        if not 1 <= cfg.smp <= 64:
            raise ConfigError("--smp must be between 1 and 64")
        from .cpu import profiles
        self.profile = profiles.get(cfg.cpu)
        self.clock = VirtualClock()
        from .memory.enclines import LINE_SLOTS
        # With SEV, the encryption engine's decrypted line slots follow DRAM in
        # the host mapping (memory/enclines.py).
        self.bus = PhysBus(cfg.mem_size, LINE_SLOTS * 4096 if self.profile.extra.get("sev") else 0)
        self.io = IoBus()
        self.code_pages: dict = {}
        from .cpu.walkmemo import PtWatch
        wme = weakref.proxy(self)
        # Page walks kept across TLB flushes, dropped by writes to their entries.
        self.pt_watch = PtWatch(self.bus, self.code_pages, lambda page: wme.engine._code_page(page))
        self.stopping = False
        self.stop_status = None
        self.stop_reason = ""
        self.stop_kind = ""
        self.unimplemented: dict = {}        # mnemonic -> times it raised #UD
        self.internal_exception = None       # the svmsim bug that ended a run (status 70)
        self.listeners: list = []            # trace sinks: callables(event dict)
        self.delivery_via = None             # what delivers the current event, for the trace (AVIC)
        self.pollers: list = []              # callables() run every few hundred rounds (gdb's Ctrl-C)
        self.fault_log = deque(maxlen=64)    # recent faults (Fault), for crash reports
        self.kernel_path = None
        self._symbols = None
        self.stop_cpu = self.stop_address = None
        self._sched = (0, 0, False)          # where a paused round resumes: CPU, quantum used, ran
        self._ahead_room = 0                 # run_ahead's bound for the quantum running (_loop)
        self.ahead = True                    # run_ahead and the skipped stall rounds (off: tests' reference)
        self.ahead_stats = {"grants": 0, "rounds_skipped": 0}
        self._sigint = 0
        from .memory.encryption import EncryptionEngine
        sev = self.profile.extra.get("sev") or {}
        self.notes: list = []
        # Parts refer back to the machine weakly, so a Machine no longer used is
        # freed at once (not at the next cyclic GC) and its RAM unmapped
        # (issue 13, finding 7): campaigns and notebooks create many.
        me = weakref.proxy(self)
        self.mem_engine = EncryptionEngine(sev.get("max_asid", 0), note=lambda text: me.note(text))   # keys: the AMD-SP's
        self.enc_lines = None                # the CPU's decrypted lines of private pages (with SEV)
        if self.bus.ram.window:
            from .memory.enclines import PlaintextLines
            self.enc_lines = PlaintextLines(self.mem_engine, self.bus, lambda: me.cpus)
        from .memory.rmp import Rmp
        self.rmp = Rmp(self.bus)                                # SEV-SNP's reverse map (in RAM)
        self.rmp.listeners.append(lambda: me._rmp_changed())
        from .memory.dev import DeviceExclusionVector
        self.dev = DeviceExclusionVector(self.bus)             # the host bridge's DMA checks (15.24)
        from collections import Counter
        self.counters = Counter()            # platform events for the run report (DMA blocks, SMIs)
        from .svm.unit import SvmUnit            # AMD-V plugs into each CPU (cpu/hooks.py)
        self.cpus = [Cpu(me, i, SvmUnit()) for i in range(cfg.smp)]
        for cpu in self.cpus[1:]:
            cpu.wait_for_sipi = True         # APs wait for INIT-SIPI (APM 16.x, MP spec)
        self.current_cpu = self.cpus[0]
        self.engine = Engine(me)
        self.debug = Debugger(me)
        from .devices import pc
        pc.attach(me)
        self._amd_sp = None
        self._sev = sev
        if sev:
            self.bus.add_mmio(self.AMD_SP_MMIO, 0x100000, _LazyMailbox(me), "amd-sp")
        self._finalizer = weakref.finalize(self, _release, self.bus, self.engine)

    def close(self) -> None:
        """Free the machine's RAM and translated code now (also done when the
        Machine is no longer referenced); the machine cannot run afterwards."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    AMD_SP_MMIO = 0xFE000000             # the PSP mailbox's BAR (no PCI here: a fixed address)

    @property
    def amd_sp(self):
        """The AMD Secure Processor (issue 5): its SEV firmware, reachable from
        Python (``machine.amd_sp.command``) and from x86 code through the
        mailbox registers at AMD_SP_MMIO (the layout Linux's ccp driver uses).
        Built on first use (its key generation takes a few ms)."""
        if self._amd_sp is None and self._sev:
            from .sev.firmware import SevFirmware, SevMailbox
            self._amd_sp = SevFirmware(self.bus, self.mem_engine, cbit=self._sev["c_bit"])
            if self._sev.get("snp"):
                from .sev.snp_firmware import SnpFirmware
                self._amd_sp.snp = SnpFirmware(self._amd_sp, self.rmp, self.cpus,
                                               self._sev["min_sev_asid"])
            self.amd_sp_mailbox = SevMailbox(self._amd_sp)
        return self._amd_sp

    # ---------------------------------------------------------------- loading
    def load_kernel(self, path: str, append: str = "", modules=(), initrd: str = None):
        """Load a kernel as QEMU's -kernel does; returns its BootInfo.

        A Linux bzImage (the boot protocol's "HdrS" magic) is loaded with
        the Linux boot protocol and ``initrd``; anything else must be a
        Multiboot kernel, whose modules are ``modules`` (QEMU's -initrd)."""
        from .boot import linux, multiboot
        if linux.is_bzimage(path):
            if modules:
                raise ConfigError(f"{path}: a Linux bzImage takes --initrd, not Multiboot modules")
            return self.load_linux(path, append, initrd)
        if initrd is not None:
            modules = [*modules, (initrd, "")]
        info = multiboot.load_multiboot(self.bus, path, append, list(modules), mem_size=self.config.mem_size,
                                        amd_ht_hole=self.profile.vendor == "AuthenticAMD")
        from .boot.entry import apply_entry_state
        from .boot import firmware
        firmware.apply(self)                 # what SeaBIOS leaves before the -kernel ROM runs
        apply_entry_state(self.cpus[0], info)
        for w in info.warnings:
            self.note(w)
        self.kernel_path = path
        self._symbols = None
        self.config.append = append
        if hasattr(self, "fw_cfg"):
            self.fw_cfg.set_cmdline(append)
        return info

    def load_linux(self, path: str, append: str = "", initrd: str = None):
        """Load a bzImage with the Linux boot protocol (svmsim.boot.linux):
        boot_params with SeaBIOS's E820 map, the command line, the initrd;
        the CPU at code32_start as the kernel's own setup code leaves it."""
        from .boot import linux
        info = linux.load_linux(self.bus, path, append, initrd,
                                amd_ht_hole=self.profile.vendor == "AuthenticAMD")
        from .boot.entry import apply_entry_state
        apply_entry_state(self.cpus[0], info)
        from .boot import mptable, firmware
        mptable.install(self)               # SeaBIOS's MP and $PIR tables, PIRQ routes
        firmware.smm_setup(self)            # SeaBIOS's SMBASE and SMRAM
        self.io.write(0xA1, 1, 0xFF)        # the setup code's mask_all_interrupts():
        self.io.write(0x21, 1, 0xFB)        # every IRQ but the cascade masked
        for w in info.warnings:
            self.note(w)
        self.config.append = append
        if hasattr(self, "fw_cfg"):
            self.fw_cfg.set_cmdline(append)
        return info

    # ---------------------------------------------------------------- device services
    def raise_irq(self, line: int, level: bool) -> None:
        if self.pic is not None:
            self.pic.set_irq(line, level)
        if self.ioapic is not None:
            self.ioapic.set_irq(2 if line == 0 else line, level)

    def interrupt_acknowledge(self, cpu):
        """The vector of the highest-priority deliverable maskable interrupt, or None.

        An ExtINT from the 8259 (through LINT0 in virtual-wire mode) is taken
        first and bypasses the APIC's priority logic (MP spec 3.6.2.2)."""
        lapic = cpu.lapic
        pic = self.pic
        if lapic is None:
            if pic is not None and cpu.index == 0 and pic.has_interrupt():
                return pic.acknowledge()
            return None
        if pic is not None and lapic.extint_pending():
            return pic.acknowledge()
        if lapic.has_interrupt():
            return lapic.acknowledge()
        return None

    def interrupt_pending(self, cpu) -> bool:
        """A maskable interrupt is waiting for ``cpu`` (INTR asserted), without
        acknowledging it: an intercepted INTR stays pending (APM 15.21.1)."""
        lapic, pic = cpu.lapic, self.pic
        if lapic is None:
            return pic is not None and cpu.index == 0 and pic.has_interrupt()
        return (pic is not None and lapic.extint_pending()) or lapic.has_interrupt()

    def request_stop(self, status: int, reason: str, kind: str = "debug-exit") -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_status, self.stop_reason, self.stop_kind = status, reason, kind

    def pause(self, kind: str, reason: str, cpu=None, address=None, status=STATUS_STOPPED) -> None:
        """Stop the run so that ``run()`` can continue it (kind in RESUMABLE)."""
        if not self.stopping:
            self.request_stop(status, reason, kind)
            self.stop_cpu = None if cpu is None else getattr(cpu, "index", cpu)
            self.stop_address = address

    def request_reset(self, reason: str) -> None:
        self.request_stop(STATUS_RESET, reason, "reset")

    def do_init(self, cpu) -> None:
        """Apply INIT to a CPU: reset state, keep it waiting for SIPI (APM 14.1.4).
        INIT "does not alter the contents of most MSRs, caches or numeric
        coprocessor (x87 or SSE) state" (APM vol 2, 15.21.8): the MSRs (MTRRs,
        PAT, VM_HSAVE_PA...), the TSC, x87 and SSE state are kept; VM_CR.SVMDIS
        is cleared unless VM_CR.LOCK (15.30.1)."""
        cpu.init_pending = False
        kept = {name: getattr(cpu, name) for name in INIT_KEEPS if hasattr(cpu, name)}
        lapic = cpu.lapic
        cpu.reset()
        cpu.lapic = lapic
        for name, value in kept.items():
            setattr(cpu, name, value)
        from .cpu.msr import init_msrs, SYSCFG, SYSCFG_MEM_ENCRYPTION_MOD_EN
        init_msrs(cpu)
        if cpu.msr.get(SYSCFG, 0) & SYSCFG_MEM_ENCRYPTION_MOD_EN:
            cpu.set_mem_encryption(True)     # the kept SYSCFG still has the C-bit in force
        if lapic is not None and hasattr(lapic, "init"):
            lapic.init()
        cpu.wait_for_sipi = True

    def _rmp_changed(self) -> None:
        """An RMP entry changed: no CPU may keep a fast path that skipped the
        RMP check (the architectural TLB is checked against the RMP on use)."""
        for cpu in self.cpus:
            cpu.tlb.drop_fast()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # ---------------------------------------------------------------- tracing hooks
    def emit(self, event: dict) -> None:
        for sink in self.listeners:
            sink(event)

    @property
    def symbols(self):
        """The kernel's ELF symbols (svmsim.debug.symbols.SymbolTable); add more
        with ``machine.symbols.load_elf(path, offset)``."""
        if self._symbols is None:
            from .debug.symbols import SymbolTable
            self._symbols = SymbolTable()
            if self.kernel_path:
                self._symbols.load_elf(self.kernel_path)
        return self._symbols

    def trace_exception(self, cpu, e) -> None:
        from .cpu.segments import CS
        self.fault_log.append(Fault(cpu.index, cpu.retired + cpu.q_exec, e.vector, e.error_code, e.cr2,
                                    cpu.rip, (cpu.ebase[CS] + cpu.rip) & cpu.lin_mask, cpu.bits,
                                    cpu.svm_guest, cpu.svm.asid if cpu.svm_guest else 0, e.detail))
        if self.listeners:
            self.emit({"type": "exception", "cpu": cpu.index, "vector": e.vector,
                       "error_code": e.error_code, "rip": cpu.rip, "detail": str(e)})

    def on_event(self, cpu, vector, kind, error_code) -> None:
        """Called before every event delivery (the SVM intercept check hooks in)."""
        if self.listeners:
            ev = {"type": "deliver", "cpu": cpu.index, "vector": vector, "kind": kind,
                  "error_code": error_code, "rip": cpu.rip}
            if self.delivery_via:
                ev["via"] = self.delivery_via
            self.emit(ev)

    def svm_event(self, cpu, what: str, data: dict) -> None:
        """VMRUN, #VMEXIT and event injection, for the trace (svmsim.trace)."""
        if self.listeners:
            self.emit({"type": what, "cpu": cpu.index, "insns": cpu.retired + cpu.q_exec, **data})

    # ---------------------------------------------------------------- running
    def now_ns(self, cpu) -> int:
        """Virtual time as ``cpu`` sees it at the start of the block it runs:
        the round's time plus what it retired (and stalled) in this quantum,
        including a part run before a debugger stop (``q_base``).
        An instruction at ``ins.idx`` in the block adds its index (RDTSC).
        Timers still fire between rounds (the clock's ``now_ns``)."""
        return self.clock.now_ns + cpu.q_base + cpu.q_exec + cpu.stall

    def tsc(self, cpu) -> int:
        return self.now_ns(cpu)

    def run(self, max_insns: int = None, timeout: float = None, until: int = None,
            max_virtual_ns: int = None) -> RunResult:
        """Run until the guest exits, shuts down, deadlocks, a limit is hit or the
        debugger stops it; call again to continue (``result.resumable``).

        ``max_insns`` and ``timeout`` count from this call.  ``max_insns``
        counts retired instructions plus the virtual time the CPUs spend
        halted after wake-ups that ran nothing (1 ns = one instruction), so a
        machine whose interrupts can never be delivered still ends (issue 13,
        finding 4); ``max_virtual_ns`` bounds the machine's virtual time.
        ``until``: stop before the instruction at this linear address (any
        CPU).  Ctrl-C (SIGINT, in the main thread) stops at the end of the
        current round."""
        if self.closed:
            raise SvmsimError("this machine has been closed")
        max_insns = max_insns if max_insns is not None else self.config.max_insns
        timeout = timeout if timeout is not None else self.config.timeout
        return self._run(max_insns, timeout, until, max_virtual_ns)

    def step(self, n: int = 1, cpu: int = 0) -> RunResult:
        """Run until CPU ``cpu`` has crossed ``n`` instruction boundaries: an
        instruction retired, or an event (exception, interrupt, #VMEXIT)
        delivered instead, which stops at the first instruction of its handler.
        The other CPUs run their share of the schedule meanwhile."""
        self.debug.set_step(cpu, n)
        try:
            return self._run(None, None, None)
        finally:
            self.debug.set_step(None, 0)

    def stop(self) -> None:
        """Stop the run (from a hook, a listener or another thread); ``run()``
        continues it.  From a code or I/O hook the machine stops before that
        instruction; from a memory hook after the instruction; from an event
        hook before the next instruction."""
        self.pause("stopped", "stopped by Machine.stop()", self.current_cpu.index)

    def _run(self, max_insns, timeout, until, max_virtual_ns=None) -> RunResult:
        if self.stopping and self.stop_kind not in RESUMABLE:
            return self._result(0, 0.0)          # final: nothing runs any more
        self._resume()
        start = time.monotonic()
        retired = sum(c.retired for c in self.cpus)
        temp = self.debug.add_breakpoint(until, temporary=True) if until is not None else None
        old_handler = self._catch_sigint()
        try:
            self._loop(max_insns, timeout, start, max_virtual_ns)
        except Shutdown as e:
            self.request_stop(STATUS_SHUTDOWN, f"shutdown: {e}", "shutdown")
        except NotModelled as e:
            self.request_stop(STATUS_NOT_MODELLED, f"not modelled: {e}", "not-modelled")
        except SvmsimError:
            raise
        except Exception as e:   # a bug in svmsim: report it, never a raw traceback
            import traceback
            self.internal_exception = e          # for `svmsim run --debug`
            where = traceback.extract_tb(e.__traceback__)[-1]
            self.request_stop(STATUS_INTERNAL, f"internal error: {type(e).__name__}: {e} "
                              f"(at {where.filename.split('svmsim/')[-1]}:{where.lineno})", "internal-error")
        finally:
            if self.enc_lines is not None:
                self.enc_lines.write_back_all()      # DRAM up to date for whoever looks next
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if temp is not None:
                self.debug.remove_breakpoint(temp)
        return self._result(sum(c.retired for c in self.cpus) - retired, time.monotonic() - start)

    def _result(self, executed, wall) -> RunResult:
        return RunResult(self.stop_status, self.stop_reason, self.stop_kind,
                         sum(c.retired for c in self.cpus), wall, dict(self.unimplemented),
                         self.stats(), self.svm_summary(), self.stop_cpu, self.stop_address, executed)

    def _resume(self) -> None:
        """Continue after a pause: a CPU stopped at a breakpoint first executes
        that instruction (the debugger steps over it)."""
        if not self.stopping:
            return
        self.stopping = False
        self.stop_status, self.stop_reason, self.stop_kind = None, "", ""
        self.stop_cpu = self.stop_address = None
        self.debug.resume()

    def _catch_sigint(self):
        """Ctrl-C pauses the run at a round boundary (the state stays consistent);
        a second Ctrl-C before that raises KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            return None
        self._sigint = 0

        def on_sigint(signum, frame):
            self._sigint += 1
            if self._sigint > 1:
                raise KeyboardInterrupt
        try:
            return signal.signal(signal.SIGINT, on_sigint)
        except ValueError:
            return None

    def _loop(self, max_insns, timeout, start, max_virtual_ns=None):
        """Deterministic rounds: each runnable CPU runs a quantum in index order,
        then virtual time advances.  A pause inside a round (the debugger)
        keeps its place in ``_sched``, so continuing gives the same schedule as
        a run that never stopped."""
        engine, clock, cpus, debug = self.engine, self.clock, self.cpus, self.debug
        total = 0
        rounds = 0
        idle = 0                 # ns of halted time in which timers fired and nothing ran
        idle_mark = None         # `total` at the last time jump
        events = 0               # exceptions delivered (a fault loop retires nothing)
        i, used, ran = self._sched
        ncpus = len(cpus)
        while not self.stopping:
            while i < ncpus:
                cpu = cpus[i]
                if (cpu.halted or cpu.wait_for_sipi) and not cpu.pending:
                    i, used = i + 1, 0
                    continue
                self.current_cpu = cpu
                busy = cpu.stall > 0             # still paying for a PAUSE or a long REP
                cpu.q_base = used                # a quantum resumed after a stop keeps its time
                stepping = debug.stepping or debug.step_over is cpu
                if self.ahead and not stepping:
                    # run_ahead's bounds that only this loop knows: the run's budget,
                    # its virtual-time limit and the next poll of the devices, each
                    # at least a quantum away from where this one ends.
                    room = (254 - rounds % 256) * QUANTUM
                    if max_insns is not None:
                        room = min(room, max_insns - (total + idle + events) - 2 * QUANTUM)
                    if max_virtual_ns is not None:
                        room = min(room, (max_virtual_ns - clock.now_ns) // clock.ns_per_insn - 2 * QUANTUM)
                    self._ahead_room = min(room, RUN_AHEAD_MAX)
                n = engine.run(cpu, QUANTUM - used, stepping)
                self._ahead_room = 0
                cpu.q_base = 0
                total += n
                events += cpu.q_events
                used += min(cpu.q_used, QUANTUM - used)
                ran = ran or n > 0 or busy or cpu.q_events > 0
                if self.stopping:
                    if self.stop_kind in RESUMABLE:
                        if used >= QUANTUM or cpu.halted or cpu.wait_for_sipi:
                            i, used = i + 1, 0
                        self._sched = (i, used, ran)
                        return total
                    break
                if used >= QUANTUM or cpu.halted or cpu.wait_for_sipi:
                    i, used = i + 1, 0
            if self.stopping:
                break
            i, used = 0, 0
            if ran:
                clock.advance(QUANTUM * clock.ns_per_insn)
            elif not any(c.pending for c in cpus):
                if clock.next_deadline == float("inf") or self._only_nmi_can_wake():
                    self._stop_deadlocked()
                    break
                jump = max(0, clock.next_deadline - clock.now_ns)
                if idle_mark == total:
                    idle += jump         # the last wake-up retired nothing
                idle_mark = total
                clock.now_ns += jump
            ran = False
            if clock.next_deadline <= clock.now_ns:
                clock.run_due()
            rounds += 1
            if max_insns is not None and total + idle + events >= max_insns:
                why = f" ({idle} ns of it halted, timers waking nothing)" if idle else ""
                why += f" ({events} exceptions delivered count too)" if events else ""
                self.pause("budget", f"instruction budget of {max_insns} exhausted{why}", status=STATUS_BUDGET)
            if max_virtual_ns is not None and clock.now_ns >= max_virtual_ns:
                self.pause("budget", f"virtual time budget of {max_virtual_ns} ns exhausted", status=STATUS_BUDGET)
            if timeout is not None and time.monotonic() - start > timeout:
                self.pause("timeout", f"timeout after {timeout:g} s", status=STATUS_TIMEOUT)
            if self._sigint:
                self.pause("interrupted", "interrupted (Ctrl-C)", status=STATUS_INTERRUPTED)
            if rounds % 256 == 0:
                self.poll_devices()
            if self.ahead and not self.stopping:
                skip = self._stall_rounds(rounds, max_virtual_ns)
                if skip:
                    # The next rounds would only advance the clock and take a
                    # quantum each of one CPU's stall (``_stall_rounds``).
                    clock.advance(skip * QUANTUM * clock.ns_per_insn)
                    for c in cpus:
                        if c.stall:
                            c.stall -= skip * QUANTUM
                    rounds += skip
                    self.ahead_stats["rounds_skipped"] += skip
        self._sched = (0, 0, False)
        return total

    def run_ahead(self, cpu) -> int:
        """How many instructions beyond the end of its quantum ``cpu`` may run
        now in a bulk loop of plain RAM stores (codegen's bulk_store_loop: no
        MMIO, no code, no I/O, no interrupt window), or 0.

        The rounds are unchanged (``_loop``: each CPU runs a quantum in turn,
        then the clock advances and due timers fire): what runs ahead is
        work the CPU would have done in the next rounds anyway, paid for as
        stall (``cpu.stall``: it retires nothing until the rounds have caught
        up), and nothing can observe the difference when every other CPU is
        halted (or waits for a SIPI) with nothing pending -- only a timer, a
        device poll or an IPI can wake it, and the stores send none -- and
        the work ends at least a quantum before the next timer deadline, the
        next poll of the devices and the run's instruction and time limits:
        the CPU takes every interrupt at the same instruction as in the
        rounds one at a time, and sees the same time (RDTSC, the APIC
        timer's count).  So the run is the same run, in fewer rounds."""
        room = self._ahead_room
        if room <= 0 or cpu.pending:
            return 0                                 # (a pending event, even a masked one: keep the rounds)
        for c in self.cpus:
            if c is not cpu and (c.pending or not (c.halted or c.wait_for_sipi)):
                return 0
        clock = self.clock
        if clock.next_deadline != float("inf"):
            room = min(room, int(clock.next_deadline - clock.now_ns) // clock.ns_per_insn
                       - cpu.stall - 2 * QUANTUM)
        if room <= 0:
            return 0
        self.ahead_stats["grants"] += 1
        return room

    def _stall_rounds(self, rounds, max_virtual_ns) -> int:
        """How many of the next rounds would only advance the clock and take
        a quantum of one CPU's stall (a bulk loop that ran ahead, a long REP,
        PAUSE), each of the other CPUs halted (or waiting for a SIPI) with
        nothing pending: 0 unless at least one, none of them ending at or
        after the next timer deadline, at a device poll (every 256 rounds)
        or at the run's virtual-time limit.  (The instruction budget cannot
        end in them: no instruction retires.)"""
        busy = None
        for c in self.cpus:
            if c.stall:
                if busy is not None or c.pending:
                    return 0
                busy = c
            elif c.pending or not (c.halted or c.wait_for_sipi):
                return 0
        if busy is None or busy.halted or busy.wait_for_sipi:
            return 0
        # Rounds whose whole quantum the stall takes (the CPU runs nothing in
        # them, takes no event), none of them a poll round (rounds % 256 == 0
        # after the count) nor ending where a timer is due or the run's
        # virtual time ends.
        k = min(busy.stall // QUANTUM, 255 - rounds % 256)
        clock = self.clock
        step = QUANTUM * clock.ns_per_insn
        if clock.next_deadline != float("inf"):
            k = min(k, (int(clock.next_deadline) - clock.now_ns - 1) // step)
        if max_virtual_ns is not None:
            k = min(k, (max_virtual_ns - clock.now_ns - 1) // step)
        return max(0, k)

    def poll_devices(self) -> None:
        uart = getattr(self, "uart", None)
        if uart is not None and hasattr(uart, "poll_input"):
            uart.poll_input()
        for poll in self.pollers:
            poll()

    def _only_nmi_can_wake(self) -> bool:
        """Every CPU is halted with RFLAGS.IF = 0 (or waits for a SIPI nobody can
        send): timers may still tick, but no maskable interrupt can end the halt."""
        return all(c.wait_for_sipi or (c.halted and not self._can_take_intr(c) and not c.nmi_pending
                                       and not c.smi_pending) for c in self.cpus)

    @staticmethod
    def _can_take_intr(cpu) -> bool:
        """Could a maskable interrupt end this CPU's halt?  In a guest with
        V_INTR_MASKING the host's IF (at VMRUN) decides (APM 15.21.1); GIF = 0
        holds every interrupt."""
        from .cpu.flags import IF
        if not cpu.gif:
            return False
        if cpu.svm_guest and cpu.svm.v_intr_masking:
            return cpu.svm.host_if
        return bool(cpu.rflags & IF)

    def _stop_deadlocked(self):
        bsp = self.cpus[0]
        if all(not self._can_take_intr(c) for c in self.cpus if c.halted):
            where = " in guest mode" if bsp.svm_guest else ""
            self.pause("halted", f"CPU halted with interrupts disabled at rip={bsp.rip:#x}{where}",
                       status=STATUS_HALTED)
        else:
            self.pause("halted", "all CPUs halted and no timer or device can wake them", status=STATUS_HALTED)

    def svm_summary(self) -> dict:
        """What the guests' hypervisor did: VMRUNs, #VMEXITs by exit name (in
        exit-code order), and every VMEXIT_INVALID's reason; {} if SVM was unused."""
        from .svm.exits import exit_name
        runs = sum(c.svm.vmruns for c in self.cpus)
        if not runs:
            return {}
        counts: dict = {}
        for c in self.cpus:
            for code, n in c.svm.exits.items():
                counts[code] = counts.get(code, 0) + n
        order = sorted(counts, key=lambda k: k & ((1 << 64) - 1))
        return {"vmruns": runs, "exits": {exit_name(k): counts[k] for k in order},
                "exit_codes": {exit_name(k): k for k in order},
                "invalid": [r.as_dict() for c in self.cpus for r in c.svm.invalid]}

    def stats(self) -> dict:
        tlb = {"misses": sum(c.tlb.stats["misses"] for c in self.cpus)}
        # Guest RAM is an anonymous mapping reserved from nothing (memory/ram.py):
        # the host pays for the pages the guest touched, which the process's
        # peak resident set shows (Linux: ru_maxrss in KiB).
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if resource is not None else 0
        memory = {"guest_ram_mib": self.config.mem_size >> 20,
                  "peak_rss_mib": rss >> 20 if sys.platform == "darwin" else rss >> 10}
        return {"engine": dict(self.engine.stats), "tlb": tlb, "virtual_ns": self.clock.now_ns,
                "memory": memory}
