"""The simulated PC: CPUs, memory, devices, and the run loop.

CPUs interleave deterministically: each round every runnable CPU executes a
quantum of instructions in index order, then virtual time advances by one
quantum and due timers fire.  With every CPU halted, time jumps to the next
timer deadline.  Given the same kernel and options, a run is reproducible
instruction for instruction.
"""
import time
from dataclasses import dataclass, field

from .errors import ConfigError, NotModelled, SvmsimError
from .memory.bus import PhysBus, IoBus
from .devices.clock import VirtualClock
from .cpu.state import Cpu
from .cpu.engine import Engine
from .cpu.exceptions import Shutdown

# Exit statuses for run endings other than isa-debug-exit (which gives the
# odd (V << 1) | 1, as QEMU does).  All even, so they never collide with it.
STATUS_SHUTDOWN = 2        # triple fault / shutdown (QEMU -no-reboot would exit 0)
STATUS_HALTED = 4          # every CPU halted with nothing left to wake it
STATUS_BUDGET = 6          # --max-insns exhausted
STATUS_TIMEOUT = 8         # --timeout (host wall-clock seconds) reached
STATUS_RESET = 10          # the guest asked for a reset (port 0xCF9 / 0x92 / 0x64)
STATUS_NOT_MODELLED = 12   # the guest used something svmsim does not model yet
STATUS_INTERNAL = 70       # a bug in svmsim (EX_SOFTWARE); the message says where

QUANTUM = 1000


def parse_size(text) -> int:
    """'128M', '4g', '65536k' or a byte count -> bytes (QEMU's -m syntax; plain = MiB)."""
    if isinstance(text, int):
        return text
    t = str(text).strip().lower()
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t) << 20                    # QEMU: a bare number is MiB
    except ValueError:
        raise ConfigError(f"bad memory size {text!r} (use e.g. 128M or 4G)") from None


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

    @property
    def insns_per_second(self) -> float:
        return self.instructions / self.wall_time if self.wall_time else 0.0


class Machine:
    """An AMD64 PC.  Build it, ``load_kernel()``, then ``run()``."""

    def __init__(self, config: MachineConfig = None, **kw):
        self.pic = None
        self.ioapic = None
        self.config = config or MachineConfig(**kw)
        cfg = self.config
        cfg.mem_size = parse_size(cfg.mem_size)
        if cfg.mem_size < (2 << 20) or cfg.mem_size % 4096:
            raise ConfigError("memory size must be at least 2 MiB and a multiple of 4 KiB")
        if not 1 <= cfg.smp <= 64:
            raise ConfigError("--smp must be between 1 and 64")
        from .cpu import profiles
        self.profile = profiles.get(cfg.cpu)
        self.clock = VirtualClock()
        self.bus = PhysBus(cfg.mem_size)
        self.io = IoBus()
        self.code_pages: dict = {}
        self.stopping = False
        self.stop_status = None
        self.stop_reason = ""
        self.stop_kind = ""
        self.unimplemented: dict = {}        # mnemonic -> times it raised #UD
        self.listeners: list = []            # trace sinks: callables(event dict)
        from .memory.encryption import EncryptionEngine
        sev = self.profile.extra.get("sev") or {}
        self.notes: list = []
        self.mem_engine = EncryptionEngine(sev.get("max_asid", 0), note=self.note)   # keys: the AMD-SP's
        from .memory.rmp import Rmp
        self.rmp = Rmp(self.bus)                                # SEV-SNP's reverse map (in RAM)
        self.rmp.listeners.append(self._rmp_changed)
        from .svm.unit import SvmUnit            # AMD-V plugs into each CPU (cpu/hooks.py)
        self.cpus = [Cpu(self, i, SvmUnit()) for i in range(cfg.smp)]
        for cpu in self.cpus[1:]:
            cpu.wait_for_sipi = True         # APs wait for INIT-SIPI (APM 16.x, MP spec)
        self.current_cpu = self.cpus[0]
        self.engine = Engine(self)
        from .devices import pc
        pc.attach(self)
        self._amd_sp = None
        self._sev = sev
        if sev:
            self.bus.add_mmio(self.AMD_SP_MMIO, 0x100000, _LazyMailbox(self), "amd-sp")

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

    def request_reset(self, reason: str) -> None:
        self.request_stop(STATUS_RESET, reason, "reset")

    def do_init(self, cpu) -> None:
        """Apply INIT to a CPU: reset state, keep it waiting for SIPI (APM 14.1.4).
        Unlike RESET, INIT leaves the MSRs (MTRRs, PAT, VM_HSAVE_PA...) and the
        TSC as they were (Intel SDM vol 3A, 9.1; QEMU's do_cpu_init keeps them)."""
        cpu.init_pending = False
        lapic, msrs, tsc_offset = cpu.lapic, cpu.msr, cpu.tsc_offset
        cpu.reset()
        cpu.lapic, cpu.msr, cpu.tsc_offset = lapic, msrs, tsc_offset
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

    def trace_exception(self, cpu, e) -> None:
        if self.listeners:
            self.emit({"type": "exception", "cpu": cpu.index, "vector": e.vector,
                       "error_code": e.error_code, "rip": cpu.rip, "detail": str(e)})

    def on_event(self, cpu, vector, kind, error_code) -> None:
        """Called before every event delivery (the SVM intercept check hooks in)."""
        if self.listeners:
            self.emit({"type": "deliver", "cpu": cpu.index, "vector": vector, "kind": kind,
                       "error_code": error_code, "rip": cpu.rip})

    def svm_event(self, cpu, what: str, data: dict) -> None:
        """VMRUN, #VMEXIT and event injection, for the trace (svmsim.trace)."""
        if self.listeners:
            self.emit({"type": what, "cpu": cpu.index, "insns": cpu.retired + cpu.q_exec, **data})

    # ---------------------------------------------------------------- running
    def tsc(self, cpu) -> int:
        return self.clock.now_ns

    def run(self, max_insns: int = None, timeout: float = None) -> RunResult:
        """Run until the guest exits, shuts down, deadlocks, or a limit is hit."""
        max_insns = max_insns if max_insns is not None else self.config.max_insns
        timeout = timeout if timeout is not None else self.config.timeout
        start = time.monotonic()
        total = 0
        try:
            total = self._loop(max_insns, timeout, start)
        except Shutdown as e:
            self.request_stop(STATUS_SHUTDOWN, f"shutdown: {e}", "shutdown")
        except NotModelled as e:
            self.request_stop(STATUS_NOT_MODELLED, f"not modelled: {e}", "not-modelled")
        except SvmsimError:
            raise
        except Exception as e:   # a bug in svmsim: report it, never a raw traceback
            import traceback
            where = traceback.extract_tb(e.__traceback__)[-1]
            self.request_stop(STATUS_INTERNAL, f"internal error: {type(e).__name__}: {e} "
                              f"(at {where.filename.split('svmsim/')[-1]}:{where.lineno})", "internal-error")
        total = sum(c.retired for c in self.cpus)
        return RunResult(self.stop_status, self.stop_reason, self.stop_kind, total,
                         time.monotonic() - start, dict(self.unimplemented), self.stats(),
                         self.svm_summary())

    def _loop(self, max_insns, timeout, start):
        engine, clock, cpus = self.engine, self.clock, self.cpus
        total = 0
        rounds = 0
        while not self.stopping:
            ran = False
            for cpu in cpus:
                if (cpu.halted or cpu.wait_for_sipi) and not cpu.pending:
                    continue
                self.current_cpu = cpu
                busy = cpu.stall > 0             # still paying for a PAUSE or a long REP
                n = engine.run(cpu, QUANTUM)
                total += n
                ran = ran or n > 0 or busy
                if self.stopping:
                    break
            if ran:
                clock.advance(QUANTUM * clock.ns_per_insn)
            elif not any(c.pending for c in cpus):
                if clock.next_deadline == float("inf") or self._only_nmi_can_wake():
                    self._stop_deadlocked()
                    break
                clock.now_ns = max(clock.now_ns, clock.next_deadline)
            if clock.next_deadline <= clock.now_ns:
                clock.run_due()
            rounds += 1
            if max_insns is not None and total >= max_insns:
                self.request_stop(STATUS_BUDGET, f"instruction budget of {max_insns} exhausted", "budget")
            if timeout is not None and time.monotonic() - start > timeout:
                self.request_stop(STATUS_TIMEOUT, f"timeout after {timeout:g} s", "timeout")
            if rounds % 256 == 0:
                self.poll_devices()
        return total

    def poll_devices(self) -> None:
        uart = getattr(self, "uart", None)
        if uart is not None and hasattr(uart, "poll_input"):
            uart.poll_input()

    def _only_nmi_can_wake(self) -> bool:
        """Every CPU is halted with RFLAGS.IF = 0 (or waits for a SIPI nobody can
        send): timers may still tick, but no maskable interrupt can end the halt."""
        return all(c.wait_for_sipi or (c.halted and not self._can_take_intr(c) and not c.nmi_pending)
                   for c in self.cpus)

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
            self.request_stop(STATUS_HALTED, f"CPU halted with interrupts disabled at rip={bsp.rip:#x}{where}",
                              "halted")
        else:
            self.request_stop(STATUS_HALTED, "all CPUs halted and no timer or device can wake them", "halted")

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
        return {"engine": dict(self.engine.stats), "tlb": tlb, "virtual_ns": self.clock.now_ns}
