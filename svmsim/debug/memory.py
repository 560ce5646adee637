"""Memory as the debugger sees it: side-effect-free page walks (1-D and the
2-D walk of a guest under nested paging, each step recorded) and reads and
writes by virtual, guest-physical or system-physical address.

The walks use the CPU's own walker (``cpu/paging.py``) with a page-table
writer that does nothing, so looking never sets an Accessed or Dirty bit and
never fills the TLB; a fault is reported, not raised into the guest.

Address spaces (APM vol 2, 15.25): a *virtual* (linear) address is
translated by the guest's or the host's page tables in the CPU's current
mode; a *guest-physical* address by the nested tables of the CPU's current
(or, in host mode, last) guest; a *system-physical* address is DRAM as every
device and a hypervisor mapping without the C-bit sees it: ciphertext for
encrypted pages.  A virtual read of an SEV guest's private page goes through
the guest's key, as the CPU's own access would (the debugger is an
in-circuit debugger on the CPU, not the hypervisor).  MMIO is never read or
written by the debugger (a device register read has side effects).
"""
from dataclasses import dataclass, field

from ..cpu.exceptions import CpuException, PF_U
from ..cpu.paging import Walker, P, RW, US, A, D, PS, G, NX
from ..cpu.state import GUEST_KEY, EFER_LMA, CR0_PG

HOST_CR0_PG = 1 << 31
CR4_PAE, CR4_LA57 = 1 << 5, 1 << 12


class DebugMemoryError(ValueError):
    """An address the debugger cannot read or write (unmapped, MMIO)."""


@dataclass
class Context:
    """What a walk needs: the guest's (or host's) paging registers, and for a
    guest under nested paging the nested root and the host's paging mode."""
    cr0: int
    cr3: int
    cr4: int
    efer: int
    nested: tuple = None          # (n_cr3, host_cr4, host_efer) or None
    sev_slot: int = 0             # key slot of an SEV guest's private pages, 0: not SEV
    guest: bool = False
    asid: int = 0

    @property
    def mode(self) -> str:
        if not self.cr0 & CR0_PG:
            return "paging off"
        if self.efer & EFER_LMA:
            return "5-level paging" if self.cr4 & CR4_LA57 else "4-level paging"
        return "PAE paging" if self.cr4 & CR4_PAE else "32-bit paging"


def live_context(cpu) -> Context:
    """The CPU's current mode: the host, or the running guest."""
    npt = cpu.npt
    nested = (npt.n_cr3, npt.host_cr4, npt.host_efer) if npt is not None else None
    return Context(cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer, nested,
                   cpu.sev_asid if cpu.svm_guest else 0, cpu.svm_guest,
                   cpu.svm.asid if cpu.svm_guest else 0)


def vmcb_context(cpu, vmcb_pa=None) -> Context:
    """A guest described by a VMCB (default: the last one this CPU ran), walked
    from the host: its paging registers, N_CR3, and the host's current CR4
    and EFER for the nested tables (as VMRUN would take them)."""
    from ..svm.vmcb import VmcbView
    from ..svm.sev_checks import sev_active
    pa = getattr(cpu.svm, "vmcb_pa", 0) if vmcb_pa is None else vmcb_pa
    if not pa:
        raise DebugMemoryError("this CPU has not run a guest (no VMCB)")
    v = VmcbView(cpu.bus, pa)
    nested = (v["N_CR3"], cpu.cr4, cpu.efer) if v["NP_ENABLE"] else None
    sev = sev_active(v, cpu)
    asid = v["GUEST_ASID"]
    return Context(v["CR0"], v["CR3"], v["CR4"], v["EFER"], nested, asid if sev else 0, True, asid)


# ------------------------------------------------------------------ physical access
def peek_spa(cpu, spa, n) -> bytes:
    """System-physical bytes, through the memory controller's engine when the
    frame carries the C-bit or the guest-key flag; no key-use bookkeeping."""
    bus = cpu.bus
    _check_ram(bus, spa & ~cpu.enc_mask if cpu.enc_mask else spa, n)
    if spa & cpu.enc_mask:
        slot = cpu.sev_asid if spa & GUEST_KEY else 0
        return cpu.machine.mem_engine.peek(bus.read_bytes, spa & ~cpu.enc_mask, n, slot)
    return bus.read_bytes(spa, n)


def _check_ram(bus, spa, n):
    page = spa & ~0xFFF
    while page < spa + n:
        if bus.ram_offset(page) is None and bus._mmio_pages.get(page >> 12) is not None:
            raise DebugMemoryError(f"{page:#x} is MMIO ({bus._mmio_pages[page >> 12].name}); "
                                   "the debugger does not access devices")
        page += 0x1000


class _QuietWalker(Walker):
    """A walker with another walker's address width that never writes A/D
    bits and logs every entry it reads (``log``), also when it faults."""

    def __init__(self, like: Walker, read_pte, plain=False):
        super().__init__(read_pte, lambda addr, size, value: None, like.maxphyaddr)
        if not plain:                   # plain: no C-bit, no cut address bits
            self.rsvd_hi, self.addr_mask = like.rsvd_hi, like.addr_mask
        self.log = []                   # every walk records into it (Walker.walk)


# ------------------------------------------------------------------ walks
@dataclass
class Walk:
    """One translation, step by step.  ``steps``: (space, level, address,
    entry) for each table entry read, where space is "host", "guest" or
    "nested"; a guest entry is followed by the nested walk of its gPA
    (``nested_steps[i]`` for guest step i; the last item is for the final gPA)."""
    lin: int
    context: Context
    steps: list = field(default_factory=list)
    nested_steps: list = field(default_factory=list)     # [(gpa, steps, spa or None)]
    gpa: int = None
    spa: int = None
    fault: str = None
    private: bool = False                                 # an SEV guest's private page

    def __str__(self):
        return format_walk(self)


def walk(cpu, lin, context=None) -> Walk:
    """Translate linear ``lin`` without side effects (``context``: default the
    CPU's current mode; ``vmcb_context(cpu)`` for the last guest)."""
    ctx = context or live_context(cpu)
    result = Walk(lin, ctx)
    c_mask = 1 << cpu.c_bit if cpu.c_bit else 0
    try:
        if ctx.nested is not None:
            _walk_2d(cpu, lin, ctx, result, c_mask)
        else:
            _walk_1d(cpu, lin, ctx, result)
    except _Fault as f:
        result.fault = str(f)
    return result


class _Fault(Exception):
    pass


def _walk_1d(cpu, lin, ctx, result):
    if not ctx.cr0 & CR0_PG:
        result.spa = lin & 0xFFFFFFFF
        return
    walker = _QuietWalker(cpu.walker, lambda spa, size: int.from_bytes(peek_spa(cpu, spa, size), "little"))
    try:
        t = walker.walk(lin, ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer, 0)
    except CpuException as e:
        raise _Fault(f"#PF: {e.detail}") from None
    finally:
        result.steps = [("host", *s) for s in walker.log]
    result.spa = t.spa | (lin & 0xFFF)


def _nested_walker(cpu, ctx):
    n_cr3, host_cr4, host_efer = ctx.nested

    def gpa_to_spa(gpa, record):
        nested = _QuietWalker(cpu.walker, lambda spa, size: int.from_bytes(peek_spa(cpu, spa, size), "little"))
        try:
            t = nested.walk(gpa, HOST_CR0_PG, n_cr3, host_cr4, host_efer, PF_U)
        except CpuException as e:
            record.append((gpa, nested.log, None))
            raise _Fault(f"#NPF at gPA {gpa:#x}: {e.detail}") from None
        spa = t.spa | (gpa & 0xFFF)
        record.append((gpa, nested.log, spa))
        return spa
    return gpa_to_spa


def _walk_2d(cpu, lin, ctx, result, c_mask):
    gpa_to_spa = _nested_walker(cpu, ctx)
    record = result.nested_steps
    sev = ctx.sev_slot

    def read_guest_pte(gpa, size):
        spa = gpa_to_spa(gpa & ~c_mask, record)
        return int.from_bytes(_peek_guest(cpu, spa, size, sev), "little")
    gc = 0
    if ctx.cr0 & CR0_PG:
        guest = _QuietWalker(cpu.walker, read_guest_pte, plain=not sev)   # as NestedMmu's guest walker
        try:
            t = guest.walk(lin, ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer, 0)
        except CpuException as e:
            raise _Fault(f"guest #PF: {e.detail}") from None
        finally:
            result.steps = [("guest", *s) for s in guest.log]
        gc = t.spa & c_mask if sev else 0
        gpa = (t.spa & ~gc) | (lin & 0xFFF)
    else:
        gpa = lin & 0xFFFFFFFF
        gc = c_mask if sev else 0
    result.gpa = gpa
    result.private = bool(sev and gc)
    result.spa = gpa_to_spa(gpa, record)


def _peek_guest(cpu, spa, n, sev_slot):
    """An SEV guest's table entries are always private (seed S20)."""
    if sev_slot:
        return cpu.machine.mem_engine.peek(cpu.bus.read_bytes, spa & ~cpu.enc_mask & ~GUEST_KEY, n, sev_slot)
    return peek_spa(cpu, spa, n)


# ------------------------------------------------------------------ reads and writes
def _pages(addr, n):
    while n > 0:
        chunk = min(n, 0x1000 - (addr & 0xFFF))
        yield addr, chunk
        addr += chunk
        n -= chunk


def _walked(addr, n, walker, what):
    """(offset, chunk, walk) for each page of [addr, addr + n) as ``walker``
    translates it; a fault is a DebugMemoryError 'cannot WHAT ADDR: fault'."""
    for a, chunk in _pages(addr, n):
        w = walker(a)
        if w.fault:
            raise DebugMemoryError(f"cannot {what} {a:#x}: {w.fault}")
        yield a - addr, chunk, w


def read_virtual(cpu, lin, n, context=None) -> bytes:
    out = bytearray()
    for _, chunk, w in _walked(lin, n, lambda a: walk(cpu, a, context), "read"):
        if w.private:
            out += _peek_guest(cpu, w.spa, chunk, w.context.sev_slot)
        else:
            out += peek_spa(cpu, w.spa, chunk)
    return bytes(out)


def write_virtual(cpu, lin, data, context=None) -> None:
    for pos, chunk, w in _walked(lin, len(data), lambda a: walk(cpu, a, context), "write"):
        part = data[pos:pos + chunk]
        if w.private:
            eng, bus = cpu.machine.mem_engine, cpu.bus
            eng.write(bus.read_bytes, bus.write_bytes, w.spa & ~cpu.enc_mask & ~GUEST_KEY, part,
                      w.context.sev_slot)
        else:
            write_spa(cpu, w.spa, part)


def write_spa(cpu, spa, data) -> None:
    """System-physical write (translated code on the page is dropped)."""
    _check_ram(cpu.bus, spa & ~cpu.enc_mask if cpu.enc_mask else spa, len(data))
    if spa & cpu.enc_mask:
        cpu.pwrite_bytes(spa, data)
    else:
        cpu.bus.write_bytes(spa, data)


def gpa_walk(cpu, gpa, context=None) -> Walk:
    """The nested walk of one guest-physical address."""
    ctx = context or (live_context(cpu) if cpu.svm_guest else vmcb_context(cpu))
    result = Walk(gpa, ctx, gpa=gpa)
    if ctx.nested is None:
        result.spa = gpa                       # no nested paging: gPA = SPA
        return result
    try:
        result.spa = _nested_walker(cpu, ctx)(gpa, result.nested_steps)
    except _Fault as f:
        result.fault = str(f)
    return result


def read_gpa(cpu, gpa, n, context=None) -> bytes:
    """Guest-physical bytes as stored (no guest key: what the hypervisor's own
    mapping of that page would read)."""
    out = bytearray()
    for _, chunk, w in _walked(gpa, n, lambda a: gpa_walk(cpu, a, context), "read gPA"):
        out += peek_spa(cpu, w.spa, chunk)
    return bytes(out)


def write_gpa(cpu, gpa, data, context=None) -> None:
    for pos, chunk, w in _walked(gpa, len(data), lambda a: gpa_walk(cpu, a, context), "write gPA"):
        write_spa(cpu, w.spa, data[pos:pos + chunk])


# ------------------------------------------------------------------ formatting
_FLAG_BITS = ((P, "P"), (RW, "RW"), (US, "US"), (A, "A"), (D, "D"), (PS, "PS"), (G, "G"), (NX, "NX"))


def entry_flags(value: int, c_bit: int = 0) -> str:
    names = [n for bit, n in _FLAG_BITS if value & bit]
    if c_bit and value >> c_bit & 1:
        names.append("C")
    return " ".join(names) if value & P else "not present"


def format_walk(w: Walk, c_bit: int = 0) -> str:
    ctx = w.context
    where = f"guest (ASID {ctx.asid})" if ctx.guest else "host"
    head = f"{where} linear {w.lin:#x}: {ctx.mode}, CR3={ctx.cr3:#x}"
    if ctx.nested is not None:
        head += f", nested paging N_CR3={ctx.nested[0]:#x}"
    if ctx.sev_slot:
        head += f", SEV (key slot {ctx.sev_slot})"
    lines = [head]
    for i, (space, level, addr, value) in enumerate(w.steps):
        if space == "guest":
            gpa, nsteps, spa = w.nested_steps[i]
            lines.append(f"  guest {level:<6} at gPA {addr:#x}:")
            lines += _nested_lines(nsteps, spa, c_bit, "    ")
            lines.append(f"    = {value:#018x} [{entry_flags(value, c_bit)}]")
        else:
            lines.append(f"  {level:<6} at {addr:#x} = {value:#018x} [{entry_flags(value, c_bit)}]")
    if ctx.nested is not None and w.gpa is not None:
        lines.append(f"  final gPA {w.gpa:#x}{' (private: guest C-bit)' if w.private else ''}:")
        last = w.nested_steps[len(w.steps)] if len(w.nested_steps) > len(w.steps) else None
        if last is not None:
            lines += _nested_lines(last[1], last[2], c_bit, "    ")
    elif ctx.nested is not None and len(w.nested_steps) > len(w.steps):
        gpa, nsteps, spa = w.nested_steps[len(w.steps)]
        lines.append(f"  guest table gPA {gpa:#x}:")
        lines += _nested_lines(nsteps, spa, c_bit, "    ")
    if w.fault:
        lines.append(f"  fault: {w.fault}")
    else:
        lines.append(f"  => SPA {w.spa & ~GUEST_KEY:#x}")
    return "\n".join(lines)


def _nested_lines(steps, spa, c_bit, indent):
    out = [f"{indent}nested {level:<6} at {addr:#x} = {value:#018x} [{entry_flags(value, c_bit)}]"
           for level, addr, value in steps]
    if spa is not None:
        out.append(f"{indent}-> SPA {spa & ~GUEST_KEY:#x}")
    return out
