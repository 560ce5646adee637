"""The scriptable side of a Machine: registers, memory, breakpoints, hooks.

Shaped after Unicorn and Qiling, for a machine with several CPUs, a host and
guests::

    m = Machine(mem_size="128M")
    m.load_kernel("hv.elf")
    m.breakpoint(0x101234)                 # linear address, any CPU, host or guest
    r = m.run()                            # r.kind == "breakpoint", r.cpu == 0
    print(m.regs.rax, m.cpu(0).mode)       # registers by name
    m.mem.read(m.regs.rsp, 16)             # virtual, in the CPU's current mode
    m.step()                               # one instruction
    m.run(until=0x101300)                  # continue to an address
    h = m.hook_vmexit(lambda m, cpu, e: print(e["name"]))
    h.remove()

Callbacks get the machine, a ``CpuView`` and what happened:

=====================  ===========================================================
hook                   callback(machine, cpu, ...)
=====================  ===========================================================
hook_code              address, size: before each instruction in [begin, end]
hook_mem_read/write    access ("read"/"write"), address, size, value (None for reads)
hook_io                port, size, "in"/"out", value; an "in" hook may return the value
hook_exception         event: an exception about to be delivered through the IDT
hook_interrupt         event: INT n, an external interrupt or an NMI being delivered
hook_vmrun             event: VMRUN entered a guest
hook_vmexit            event: #VMEXIT (``exit`` filters by name or code)
=====================  ===========================================================

A callback may call ``machine.stop()``: see ``Machine.stop`` for where the run
stops.  Addresses of code and memory hooks are linear (virtual); every hook
and breakpoint takes ``scope``: "host", "guest", or a ``Scope`` (guest ASID,
one CPU).
"""
from . import regs as regs_mod
from . import memory
from .control import Scope, EXCEPTION_KINDS, INTERRUPT_KINDS

MAX_ADDR = (1 << 64) - 1


class RegisterView:
    """``view.rax``, ``view["cr3"] = x``; names in ``svmsim.debug.regs``."""

    __slots__ = ("_cpu",)

    def __init__(self, cpu):
        object.__setattr__(self, "_cpu", cpu)

    def __getattr__(self, name):
        try:
            return regs_mod.read(self._cpu, name)
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def __setattr__(self, name, value):
        regs_mod.write(self._cpu, name, value)

    def __getitem__(self, name):
        return regs_mod.read(self._cpu, name)

    def __setitem__(self, name, value):
        regs_mod.write(self._cpu, name, value)

    def as_dict(self) -> dict:
        return {r.name: r.get(self._cpu) for r in regs_mod.GDB_REGS}

    def __repr__(self):
        from .report import format_registers
        return format_registers(self._cpu)


class MemoryView:
    """Memory seen from one CPU.  ``read``/``write``: virtual (linear)
    addresses in the CPU's current mode; ``read_gpa``/``write_gpa``:
    guest-physical, through the nested tables of the CPU's current guest (its
    last one in host mode); ``read_phys``/``write_phys``: system-physical
    (DRAM: ciphertext for encrypted pages).  Nothing here sets an A/D bit or
    touches a device."""

    def __init__(self, cpu):
        self._cpu = cpu

    def read(self, address: int, size: int) -> bytes:
        return memory.read_virtual(self._cpu, address, size)

    def write(self, address: int, data: bytes) -> None:
        memory.write_virtual(self._cpu, address, bytes(data))

    def read_int(self, address: int, size: int = 8) -> int:
        return int.from_bytes(self.read(address, size), "little")

    def read_gpa(self, gpa: int, size: int) -> bytes:
        return memory.read_gpa(self._cpu, gpa, size)

    def write_gpa(self, gpa: int, data: bytes) -> None:
        memory.write_gpa(self._cpu, gpa, bytes(data))

    def read_phys(self, spa: int, size: int) -> bytes:
        return memory.peek_spa(self._cpu, spa & ~self._cpu.enc_mask, size)

    def write_phys(self, spa: int, data: bytes) -> None:
        memory.write_spa(self._cpu, spa & ~self._cpu.enc_mask, bytes(data))

    def translate(self, address: int, guest: bool = False) -> memory.Walk:
        """The page walk of a virtual address, each step recorded (``str()``
        formats it).  ``guest=True`` walks the CPU's last guest from the host."""
        ctx = memory.vmcb_context(self._cpu) if guest and not self._cpu.svm_guest else None
        return memory.walk(self._cpu, address, ctx)

    def translate_gpa(self, gpa: int) -> memory.Walk:
        return memory.gpa_walk(self._cpu, gpa)


class CpuView:
    """One CPU, for scripts: registers, memory, mode, SVM state."""

    def __init__(self, machine, index):
        self.machine = machine
        self.index = index
        self._cpu = machine.cpus[index]
        self.regs = RegisterView(self._cpu)
        self.mem = MemoryView(self._cpu)

    @property
    def rip(self) -> int:
        return self._cpu.rip

    @property
    def guest(self) -> bool:
        """In guest mode (between VMRUN and #VMEXIT)."""
        return self._cpu.svm_guest

    @property
    def asid(self) -> int:
        return self._cpu.svm.asid if self._cpu.svm_guest else 0

    @property
    def mode(self) -> str:
        from .report import cpu_mode
        return cpu_mode(self._cpu)

    @property
    def vmcb(self):
        """The VMCB this CPU runs (or last ran) as a VmcbView, or None."""
        from ..svm.vmcb import VmcbView
        pa = getattr(self._cpu.svm, "vmcb_pa", 0)
        return VmcbView(self._cpu.bus, pa) if pa else None

    def disassemble(self, address: int = None, count: int = 5) -> list:
        """``count`` instructions from ``address`` (default RIP), formatted."""
        from .disasm import disassemble
        return disassemble(self._cpu, self.rip if address is None else address, count)

    def __repr__(self):
        world = f"guest ASID {self.asid}" if self.guest else "host"
        return f"<cpu {self.index}: {world}, {self.mode}, rip={self.rip:#x}>"


class DebugApi:
    """Mixed into Machine (which provides ``cpus`` and ``debug``)."""

    def cpu(self, index: int = 0) -> CpuView:
        if not 0 <= index < len(self.cpus):
            raise IndexError(f"no CPU {index} (the machine has {len(self.cpus)})")
        return CpuView(self, index)

    @property
    def regs(self) -> RegisterView:
        """CPU 0's registers."""
        return RegisterView(self.cpus[0])

    @property
    def mem(self) -> MemoryView:
        """Memory as CPU 0 sees it."""
        return MemoryView(self.cpus[0])

    # -- breakpoints and watchpoints -------------------------------------------------
    def breakpoint(self, address: int, scope=None):
        """Stop before the instruction at linear ``address`` (see Scope)."""
        return self.debug.add_breakpoint(address, scope)

    def watchpoint(self, address: int, size: int = 1, access: str = "w", scope=None):
        """Stop after an instruction that writes ("w"), reads ("r") or touches
        ("rw") the linear range; the machine then runs one instruction at a time."""
        return self.debug.add_watchpoint(address, size, access, scope)

    def delete(self, what) -> None:
        """Remove a breakpoint, watchpoint or hook."""
        from .control import Breakpoint, Watchpoint
        if isinstance(what, Breakpoint):
            self.debug.remove_breakpoint(what)
        elif isinstance(what, Watchpoint):
            self.debug.remove_watchpoint(what)
        else:
            what.remove()

    # -- hooks -----------------------------------------------------------------------------
    def hook_code(self, callback, begin: int = 0, end: int = MAX_ADDR, scope=None):
        return self.debug.add_hook("code", callback, begin, end, scope)

    def hook_address(self, callback, address: int, scope=None):
        return self.debug.add_hook("code", callback, address, address, scope)

    def hook_mem_read(self, callback, begin: int, end: int = None, scope=None):
        return self.debug.add_hook("mem", callback, begin, begin if end is None else end, scope, "r")

    def hook_mem_write(self, callback, begin: int, end: int = None, scope=None):
        return self.debug.add_hook("mem", callback, begin, begin if end is None else end, scope, "w")

    def hook_mem_access(self, callback, begin: int, end: int = None, scope=None):
        return self.debug.add_hook("mem", callback, begin, begin if end is None else end, scope, "rw")

    def hook_io(self, callback, begin: int = 0, end: int = None, scope=None):
        return self.debug.add_hook("io", callback, begin, begin if end is None else end, scope)

    def hook_exception(self, callback, vector: int = None, scope=None):
        return self._hook_deliver(callback, vector, EXCEPTION_KINDS, scope)

    def hook_interrupt(self, callback, vector: int = None, scope=None):
        return self._hook_deliver(callback, vector, INTERRUPT_KINDS, scope)

    def _hook_deliver(self, callback, vector, kinds, scope):
        def wanted(e):
            return e["type"] == "deliver" and e["kind"] in kinds and (vector is None or e["vector"] == vector)
        return self.debug.add_hook("event", callback, scope=scope, what=wanted)

    def hook_vmrun(self, callback, scope=None):
        return self.debug.add_hook("event", callback, scope=scope, what=lambda e: e["type"] == "vmrun")

    def hook_vmexit(self, callback, exit=None, scope=None):
        """``exit``: an exit name ("CPUID", "NPF", "INVALID"), a code, or None."""
        def wanted(e):
            if e["type"] != "vmexit":
                return False
            return exit is None or e["name"] == exit or (isinstance(exit, int) and e["code"] == exit)
        return self.debug.add_hook("event", callback, scope=scope, what=wanted)

    def hook_del(self, hook) -> None:
        hook.remove()


__all__ = ["DebugApi", "CpuView", "RegisterView", "MemoryView", "Scope"]
