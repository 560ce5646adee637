"""VMCB clean bits, honoured (APM vol 2, 15.15.3).

When VMCB_CLEAN bit n is 1, the processor may use the copy of the fields
that bit covers it kept from this VMCB's last VMRUN/#VMEXIT instead of
reading the VMCB.  svmsim does use the copy, as hardware may: a hypervisor
that edits a field but leaves its clean bit set gets the old value, exactly
the bug real hardware would show.  Unlike hardware, svmsim says so: each
stale use is noted in the run report and traced as a ``vmcb_stale`` event.

The copy belongs to one VMCB: a VMRUN of any other VMCB address on this CPU
(or a VMEXIT_INVALID) discards it, so clean bits are then ignored, as the
APM requires for a VMCB the processor has not cached.
"""
from .vmcb import VmcbView, CLEAN_BIT_NAMES, field


class CachedVmcb(VmcbView):
    """A VmcbView that reads clean fields from the CPU's cache and keeps the
    cache current with every value read from or written to the VMCB."""
    __slots__ = ("cache", "clean", "cpu", "memo")

    def __init__(self, mem, pa, cache: dict, clean: int, cpu, memo: bool = False):
        super().__init__(mem, pa)
        self.cache, self.clean, self.cpu = cache, clean, cpu
        # VMRUN reads some fields several times (checks, then load): remember them.
        self.memo = {} if memo else None

    def __getitem__(self, name):
        memo = self.memo
        if memo is None:
            return self.read(field(name))
        value = memo.get(name)
        if value is None:
            value = memo[name] = self.read(field(name))
        return value

    def read(self, f):
        memory = VmcbView.read(self, f)
        c = f.clean
        if c is None:
            return memory
        if self.clean >> c & 1 and f.name in self.cache:
            cached = self.cache[f.name]
            if cached != memory:
                self._stale(f, cached, memory)
            return cached
        self.cache[f.name] = memory
        return memory

    def write(self, f, value):
        VmcbView.write(self, f, value)
        if f.clean is not None:
            self.cache[f.name] = value & f.mask

    def _stale(self, f, cached, memory):
        bit = f"{f.clean} ({CLEAN_BIT_NAMES.get(f.clean, '?')})"
        self.cpu.machine.note(
            f"VMRUN used the cached {f.name} = {cached:#x}, not the VMCB's {memory:#x}: "
            f"VMCB_CLEAN bit {bit} was set (APM vol 2, 15.15.3)")
        self.cpu.machine.svm_event(self.cpu, "vmcb_stale", {"field": f.name, "cached": cached,
                                                            "vmcb": memory, "clean_bit": f.clean})


def view_for_vmrun(cpu, vmcb_pa: int, page: bytearray) -> CachedVmcb:
    """The VMCB as this VMRUN sees it (clean bits apply only to the VMCB this
    CPU ran last); ``page`` is a copy of the VMCB page."""
    s = cpu.svm
    if s.cache_pa != vmcb_pa:
        s.clean_cache = {}
        s.cache_pa = vmcb_pa
        clean = 0
    else:
        clean = VmcbView(page)["VMCB_CLEAN"]
    return CachedVmcb(page, 0, s.clean_cache, clean, cpu, memo=True)


def view_for_exit(cpu, page: bytearray) -> CachedVmcb:
    """The VMCB #VMEXIT writes (into ``page``, a copy written back after):
    every written field refreshes the cache."""
    return CachedVmcb(page, 0, cpu.svm.clean_cache, 0, cpu)


def forget(cpu) -> None:
    cpu.svm.cache_pa = None
    cpu.svm.clean_cache = {}
