"""How a virtualization extension plugs into the processor.

The CPU model (this package) knows nothing of SVM.  At each point where
AMD's manual lets guest mode change what an instruction or an event does,
the CPU calls its ``hooks`` object, the way Bochs' CPU calls its SVM
intercept macros.  ``CpuHooks`` is a processor that never enters guest
mode; ``svmsim.svm.unit.SvmUnit`` implements the hooks for SVM, and the
SEV-ES rules (#VC instead of an exit) live behind the same calls.

An intercept is raised inside an instruction or an event delivery as a
``CpuException`` whose vector is ``INTERCEPT``; the engine rewinds RIP as
for any fault and hands it to ``hooks.intercept``.

``reset``, ``startup``, ``cpuid_leaf`` and ``translate`` (for blocks decoded
in guest mode) are called in any mode; every other hook only while
``cpu.svm_guest`` is set.
"""

INTERCEPT = -1          # CpuException.vector of an intercept (svm.state.VmExit)


class CpuHooks:
    """A processor without virtualization: no hook changes anything."""

    def reset(self, cpu) -> None:
        """RESET or INIT: (re)create the extension's per-CPU state."""
        cpu.svm = None

    def translate(self, cpu, ins, fn):
        """An instruction decoded in guest mode: the handler to run for it
        (e.g. ``fn`` wrapped in its intercept check, or, when the intercept
        is decided by state fixed for the guest's run, the exit itself).
        What it depends on must be in ``block_key``."""
        return fn

    def block_key(self, cpu):
        """In guest mode, a true hashable value that is equal for two runs
        exactly when ``translate`` decides the same for both (part of the
        block cache's key, ``Cpu.mode_key``)."""
        return True

    def msr_entry(self, cpu, idx):
        """(name, read, write) of an MSR the extension defines or overrides
        (in guest mode: the guest's view), or None."""
        return None

    def cpuid_leaf(self, cpu, leaf):
        """The registers of a CPUID leaf the extension defines, or None."""
        return None

    # ------------------------------------------------------------ events
    def service(self, cpu) -> None:
        """The between-instructions check for NMI, INTR and virtual interrupts (GIF = 1)."""

    def init(self, cpu) -> None:
        """An INIT signal arrived while a guest runs."""
        cpu.machine.do_init(cpu)

    def startup(self, cpu) -> None:
        """A Startup IPI started this CPU (an extension may change its state:
        SKINIT's secure AP start-up)."""

    def smi(self, cpu) -> bool:
        """A pending SMI is about to be taken while a guest runs; True if the
        extension handled it (an exit: the SMI may stay pending)."""
        return False

    def smm_enter(self, cpu) -> dict:
        """An SMI is taken in guest mode: leave guest mode and return the
        state-save fields that describe the guest (cpu/smm.py SVM_FIELDS)."""
        return {}

    def smm_leave(self, cpu, fields: dict) -> None:
        """RSM of a state whose SVM guest flag is set: re-enter the guest."""
        from ..errors import NotModelled
        raise NotModelled("RSM into guest mode without a virtualization extension")

    def exception(self, cpu, vector, error_code, cr2, outer, kind) -> None:
        """An exception is about to be delivered through the guest IDT; may
        raise an intercept.  ``outer`` is the event whose delivery raised it."""

    def shutdown(self, cpu, why: str) -> None:
        """The guest is about to enter the shutdown state; may raise an intercept."""

    def task_switch(self, cpu, selector, *, iret=False, jmp=False, error_code=None) -> None:
        """A hardware task switch is about to start; may raise an intercept."""

    def event_info(self, event) -> int:
        """The EXITINTINFO encoding of an event being delivered."""
        return 0

    def intercept(self, cpu, e) -> None:
        """Act on an intercept raised as a CpuException with vector INTERCEPT."""
        raise AssertionError(f"intercept without a virtualization extension: {e}")

    def reflect(self, cpu, e):
        """The exception the guest takes instead of an intercept's exit (the
        #VC of an SEV-ES guest's non-automatic exit), or None: it exits."""
        return None

    # ------------------------------------------------------------ guest-visible state
    def iret(self, cpu) -> bool:
        """IRET completed in guest mode; True if the extension handled the
        end of NMI blocking (virtual NMI), False for the physical rule."""
        return False

    def cr8_read(self, cpu):
        """CR8 in guest mode, or None for the physical TPR."""
        return None

    def cr8_write(self, cpu, value) -> bool:
        """A CR8 write in guest mode; True if the extension took it."""
        return False

    def rmp_fault(self, cpu, spa: int, access: int):
        """The exception for a guest write that fails the RMP's
        Hypervisor-Owned check outside nested paging."""
        from .exceptions import CpuException, PF, PF_P, PF_W, PF_RMP
        return CpuException(PF, PF_P | PF_W | PF_RMP | access, cr2=spa)

    def guest_efer(self, cpu, value: int) -> int:
        """The EFER a guest's WRMSR stores (some bits may be ignored)."""
        return value

    def sev_status(self, cpu) -> int:
        """The SEV_STATUS MSR (C001_0131h) as the running guest reads it."""
        return 0

    def stepped_into_guest(self, cpu, tf: bool) -> None:
        """A single-stepped instruction entered guest mode (VMRUN)."""

    def fep_allowed(self, cpu) -> bool:
        """May KVM's forced-emulation prefix act in this guest (ops/system.py
        ud2)?  False where KVM would give the guest's hypervisor the #UD."""
        return True

    def tsc(self, cpu, host_tsc: int) -> int:
        """The TSC a guest reads, from the host's."""
        return host_tsc
