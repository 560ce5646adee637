"""AVIC and x2AVIC: the guest's local APIC in a backing page (APM vol 2, 15.29).

* Redirection (15.29.3): with AVIC on, a guest access to the guest-physical
  page at V_APIC_BAR is checked against the nested tables for permission but
  lands in the vAPIC backing page (AVIC_BACKING_PAGE) through the register
  filter of table 15-22: allowed, accelerated (TPR, EOI, ICRL), or
  #VMEXIT(AVIC_NOACCEL) before (fault) or after (trap) the access.  The
  translation the TLB caches names the backing page, so a vCPU moved to a
  core without a TLB flush reaches the previous vCPU's page, the hazard
  15.29.4.3 warns about.  x2AVIC (15.29.10) applies the same filter to the
  x2APIC MSRs 800h-8FFh after the MSR intercepts.
* Delivery (15.29.6, 15.29.8): the highest IRR vector above the PPR is taken
  when the guest can accept an interrupt; taking it moves it to the ISR.
  V_IRQ, V_INTR_PRIO, V_IGN_TPR and V_INTR_VECTOR are ignored with AVIC on.
* IPIs (15.29.6.1): fixed, edge-triggered IPIs set the IRR bit in each
  target's backing page (found through the physical and logical APIC ID
  tables) and ring the doorbell of targets whose IsRunning bit is set;
  anything else is #VMEXIT(AVIC_INCOMPLETE_IPI) with the cause of table 15-27.
* Doorbell MSR C001_011Bh (15.29.8.2): a write makes the core with that
  physical APIC ID re-evaluate its running guest's backing page.
"""
from ..cpu.exceptions import gp
from . import checks
from .exits import ExitCode
from .state import VmExit

AVIC_WINDOW = 1 << 51          # svmsim-internal SPA tag: "the backing page, through the filter"
PAGE = 0x1000
DOORBELL = 0xC001011B
ALLOW, FAULT, TRAP, ACCEL = "allow", "fault", "trap", "accel"
TPR, PPR, EOI, LDR, DFR, ISR, TMR, IRR, ICRL, ICRH = (
    0x80, 0xA0, 0xB0, 0xD0, 0xE0, 0x100, 0x180, 0x200, 0x300, 0x310)
SELF_IPI = 0x3F0               # x2APIC MSR 83Fh (no xAPIC register)

# Table 15-22: offset -> (read, write).  Offsets not listed below 540h are
# plain memory of the backing page; 540h-FFFh are reserved (fault).
FILTER = {0x20: (ALLOW, TRAP), 0x30: (ALLOW, FAULT), TPR: (ALLOW, ACCEL), 0x90: (FAULT, FAULT),
          PPR: (ALLOW, FAULT), EOI: (ALLOW, ACCEL), 0xC0: (ALLOW, TRAP), LDR: (ALLOW, TRAP),
          DFR: (ALLOW, TRAP), 0xF0: (ALLOW, TRAP), 0x280: (ALLOW, TRAP), ICRL: (ALLOW, ACCEL),
          ICRH: (ALLOW, ALLOW), 0x390: (FAULT, FAULT), 0x3E0: (ALLOW, TRAP),
          0x400: (FAULT, FAULT), 0x410: (FAULT, FAULT), 0x420: (FAULT, FAULT)}
FILTER.update({off: (ALLOW, FAULT) for off in range(ISR, IRR + 0x80, 0x10)})     # ISR, TMR, IRR
FILTER.update({off: (ALLOW, TRAP) for off in range(0x320, 0x390, 0x10)})         # LVTs, initial count
FILTER.update({off: (FAULT, FAULT) for off in range(0x480, 0x540, 0x10)})        # IER; ext. LVT (EDX[27]=0)

# AVIC_INCOMPLETE_IPI causes (table 15-27).
BAD_TYPE, NOT_RUNNING, BAD_TARGET, BAD_BACKING, BAD_VECTOR = 0, 1, 2, 3, 4
SEC = "APM vol 2, 15.29"


def action(offset: int, write: bool, x2: bool = False) -> str:
    if offset == SELF_IPI and x2:
        return ACCEL if write else FAULT
    if offset == ICRH and x2:
        return FAULT                     # no x2APIC MSR at 831h
    if offset >= 0x540:
        return FAULT
    return FILTER.get(offset, (ALLOW, ALLOW))[int(write)]


# ---------------------------------------------------------------- backing pages
class Backing:
    """A vAPIC backing page in system memory (32-bit registers, 16 bytes apart)."""
    __slots__ = ("bus", "spa")

    def __init__(self, bus, spa):
        self.bus, self.spa = bus, spa & ~(PAGE - 1)

    def __getitem__(self, off):
        return self.bus.read(self.spa + off, 4)

    def __setitem__(self, off, value):
        self.bus.write(self.spa + off, 4, value & 0xFFFFFFFF)

    def _bit(self, base, vector):
        return base + 0x10 * (vector >> 5), 1 << (vector & 31)

    def set_bit(self, base, vector, on=True):
        off, bit = self._bit(base, vector)
        self[off] = self[off] | bit if on else self[off] & ~bit

    def test_bit(self, base, vector):
        off, bit = self._bit(base, vector)
        return bool(self[off] & bit)

    def highest(self, base):
        for i in range(7, -1, -1):
            v = self[base + 0x10 * i]
            if v:
                return 32 * i + v.bit_length() - 1
        return None

    def update_ppr(self):
        """PPR = TPR when its class is not below the highest in-service one's."""
        tpr, isrv = self[TPR] & 0xFF, self.highest(ISR) or 0
        self[PPR] = tpr if (tpr >> 4) >= (isrv >> 4) else isrv & 0xF0


# ---------------------------------------------------------------- VMRUN
def vmrun_checks(v, caps, host):
    """15.29.4: AVIC needs nested paging; x2AVIC needs AVIC; the three
    pointers must be legal physical addresses; AVIC_PHYSICAL_MAX_INDEX at most
    255 (xAVIC) or 511 (x2AVIC, CPUID 8000_000A ECX[6] = 0)."""
    from .checks import _reason
    if getattr(host, "machine", None) is None or "AVIC_ENABLE" not in v:
        return None                          # a CPU model without AVIC (or a bare rule test)
    from . import features
    avic_on = v["AVIC_ENABLE"] and features.enabled(host, "avic")
    if v["X2AVIC_ENABLE"] and features.enabled(host, "x2avic") and not v["AVIC_ENABLE"]:
        return _reason("X2AVIC_WITHOUT_AVIC", "X2AVIC_ENABLE", 1, "APM vol 2, 15.29.4.1",
                       "x2AVIC Mode Enable needs AVIC Enable (VMCB 60h bit 31)")
    if not avic_on:
        return None
    if not v["NP_ENABLE"]:
        return _reason("AVIC_NP", "NP_ENABLE", 0, "APM vol 2, 15.29.4.1",
                       "a guest configured to use AVIC must also enable nested paging")
    limit = 1 << host.maxphyaddr
    for name in ("AVIC_BACKING_PAGE", "AVIC_LOGICAL_TABLE", "AVIC_PHYSICAL_TABLE"):
        pa = v[name] & ~0xFFF
        if pa >= limit:
            return _reason("AVIC_POINTER", name, pa, "APM vol 2, 15.29.4.3",
                           f"{name} {pa:#x} is beyond the physical address width")
    rmp = host.machine.rmp
    backing = v["AVIC_BACKING_PAGE"] & ~0xFFF & ((1 << 52) - 1)
    if rmp.enabled and not rmp.hypervisor_owned(backing):
        return _reason("AVIC_BACKING_OWNER", "AVIC_BACKING_PAGE", backing, "APM vol 2, 15.36.12",
                       "with SEV-SNP on, the AVIC backing page must be hypervisor-owned (table 15-39)")
    x2 = v["X2AVIC_ENABLE"] and features.enabled(host, "x2avic")
    top = 511 if x2 else 255
    if v["AVIC_PHYSICAL_MAX_INDEX"] > top:
        return _reason("AVIC_MAX_INDEX", "AVIC_PHYSICAL_MAX_INDEX", v["AVIC_PHYSICAL_MAX_INDEX"],
                       "APM vol 2, 15.29.4.3",
                       f"AVIC_PHYSICAL_MAX_INDEX must be at most {top} in {'x2AVIC' if x2 else 'xAVIC'} mode")
    return None


def load(cpu, v) -> None:
    """Take the AVIC controls at VMRUN (15.29.4) and re-evaluate the backing
    page (15.29.8.3)."""
    from . import features
    s = cpu.svm
    s.avic = bool(v["AVIC_ENABLE"]) and features.enabled(cpu, "avic")
    s.x2avic = s.avic and bool(v["X2AVIC_ENABLE"]) and features.enabled(cpu, "x2avic")
    if not s.avic:
        return
    s.apic_bar = v["AVIC_APIC_BAR"] & ~0xFFF & ((1 << 52) - 1)
    s.backing = v["AVIC_BACKING_PAGE"] & ~0xFFF & ((1 << 52) - 1)
    s.logical_table = v["AVIC_LOGICAL_TABLE"] & ~0xFFF & ((1 << 52) - 1)
    s.physical_table = v["AVIC_PHYSICAL_TABLE"] & ~0xFFF & ((1 << 52) - 1)
    s.max_index = v["AVIC_PHYSICAL_MAX_INDEX"]
    Backing(cpu.bus, s.backing).update_ppr()
    cpu.kick()


# ---------------------------------------------------------------- the xAVIC window
def redirect(cpu, gpa) -> int | None:
    """The SPA a guest access to ``gpa`` really reaches under xAVIC (the
    backing page through the filter), or None."""
    s = cpu.svm
    if not s.avic or s.x2avic or gpa & ~0xFFF != s.apic_bar:
        return None
    window = AVIC_WINDOW | s.backing
    bus = cpu.bus
    if bus.ram_offset(window) is None and (window >> 12) not in bus._mmio_pages:
        bus.add_mmio(window, PAGE, _Window(cpu.machine, s.backing), "avic backing page")
    return window


class _Window:
    """MMIO face of one backing page: every access goes through the filter
    on behalf of the CPU executing it."""

    def __init__(self, machine, backing):
        self.machine, self.backing = machine, backing

    def mmio_read(self, offset, size):
        return access(self.machine.current_cpu, self.backing, offset, size, None)

    def mmio_write(self, offset, size, value):
        access(self.machine.current_cpu, self.backing, offset, size, value)


def _noaccel(offset, write, info2=0, trap=False):
    return VmExit(ExitCode.AVIC_NOACCEL, (offset & 0xFF0) | (1 << 32 if write else 0), info2,
                  trap=trap, detail=f"AVIC: {'write to' if write else 'read of'} vAPIC register "
                                    f"{offset & 0xFF0:#x} not accelerated")


def access(cpu, backing, offset, size, value, x2=False):
    """A guest access to its vAPIC register at ``offset`` (xAPIC layout):
    returns the value read, or performs the write; raises AVIC_NOACCEL."""
    write = value is not None
    reg = offset & 0xFF0
    act = action(reg, write, x2)
    if act == FAULT:
        raise _noaccel(reg, write)
    page = Backing(cpu.bus, backing)
    if not write:
        if not x2:
            return cpu.bus.read(page.spa + offset, size)
        if reg == ICRL:                                   # x2APIC ICR: ICRL | ICRH << 32
            return page[ICRL] | page[ICRH] << 32
        return page[reg]
    if act == ACCEL:
        _accelerate(cpu, page, reg, value, x2)
        return None
    if x2:
        page[reg] = value
    else:
        cpu.bus.write(page.spa + offset, size, value)
    if act == TRAP:
        raise _noaccel(reg, True, trap=True)
    return None


def _accelerate(cpu, page, reg, value, x2):
    s = cpu.svm
    if reg == TPR:
        page[TPR] = value & 0xFF
        s.v_tpr = (value >> 4) & 0xF                 # 15.29.3.1: V_TPR follows TPR[7:4]
        page.update_ppr()
        cpu.kick()
    elif reg == EOI:
        _eoi(cpu, page)
    elif reg == ICRL:
        if x2:
            page[ICRL], page[ICRH] = value & 0xFFFFFFFF, value >> 32
        else:
            page[ICRL] = value
        send_ipi(cpu, page, x2)
    elif reg == SELF_IPI:
        page.set_bit(IRR, value & 0xFF)
        cpu.kick()


def _eoi(cpu, page):
    """15.29.3.1 EOI: clear the highest in-service bit and re-evaluate; a
    level-triggered one exits instead (trap, EXITINFO2 = its vector)."""
    vector = page.highest(ISR)
    if vector is None:
        return
    if page.test_bit(TMR, vector):
        raise _noaccel(EOI, True, vector, trap=True)
    page.set_bit(ISR, vector, False)
    page.update_ppr()
    cpu.kick()


# ---------------------------------------------------------------- IPIs (15.29.6.1)
def _incomplete(page, cause, index=0):
    icr = page[ICRL] | page[ICRH] << 32
    return VmExit(ExitCode.AVIC_INCOMPLETE_IPI, icr, cause << 32 | (index & 0xFFF), trap=True,
                  detail=f"AVIC: IPI not completed (cause {cause}, index {index})")


def _physical_entry(cpu, index):
    return cpu.bus.read(cpu.svm.physical_table + 8 * index, 8)


def send_ipi(cpu, page, x2):
    icrl, icrh = page[ICRL], page[ICRH]
    vector, mode, logical = icrl & 0xFF, icrl >> 8 & 7, icrl >> 11 & 1
    level, shorthand = icrl >> 15 & 1, icrl >> 18 & 3
    if mode != 0 or level:
        raise _incomplete(page, BAD_TYPE)
    if vector < 16:
        raise _incomplete(page, BAD_VECTOR)
    if shorthand == 1:                                    # self
        page.set_bit(IRR, vector)
        cpu.kick()
        return
    s = cpu.svm
    dest = icrh if x2 else icrh >> 24
    broadcast = shorthand in (2, 3) or dest == (0xFFFFFFFF if x2 else 0xFF)
    if broadcast:
        own = _own_index(cpu)
        targets = [i for i in range(s.max_index + 1) if not (shorthand == 3 and i == own)]
        entries = [(i, _physical_entry(cpu, i)) for i in targets]
        entries = [(i, e) for i, e in entries if e >> 63]             # invalid entries ignored
    elif logical:
        entries = [(i, _physical_entry(cpu, i)) for i in _logical_targets(cpu, page, dest, x2)]
    else:
        if dest > s.max_index:
            raise _incomplete(page, BAD_TARGET, dest)
        entries = [(dest, _physical_entry(cpu, dest))]
    not_running = None
    for index, e in entries:
        if not e >> 63:
            raise _incomplete(page, BAD_TARGET, index)
        backing = e & 0x000FFFFFFFFFF000
        if backing >> cpu.maxphyaddr or cpu.bus.ram_offset(backing) is None:
            raise _incomplete(page, BAD_BACKING, index)
        Backing(cpu.bus, backing).set_bit(IRR, vector)
        if e >> 62 & 1:
            ring_doorbell(cpu.machine, e & 0xFFF)
        elif not_running is None:
            not_running = index
    if not_running is not None:
        raise _incomplete(page, NOT_RUNNING, not_running)


def _own_index(cpu):
    s = cpu.svm
    for i in range(s.max_index + 1):
        e = _physical_entry(cpu, i)
        if e >> 63 and e & 0x000FFFFFFFFFF000 == s.backing:
            return i
    return None


def _logical_targets(cpu, page, dest, x2):
    """Guest physical APIC IDs of a logical destination (15.29.5.3): flat or
    cluster model from the sender's DFR; x2AVIC derives them from the
    x2APIC logical ID (cluster << 16 | bit) without the table."""
    if x2:
        cluster = dest >> 16
        return [cluster << 4 | b for b in range(16) if dest >> b & 1]
    s = cpu.svm
    flat = page[DFR] >> 28 == 0xF
    slots = ([b for b in range(8) if dest >> b & 1] if flat else
             [(dest >> 4) * 4 + b for b in range(4) if dest >> b & 1] if dest >> 4 != 0xF else [])
    out = []
    for slot in slots:
        e = cpu.bus.read(s.logical_table + 4 * slot, 4)
        if not e >> 31 or (e & 0xFF) > 255:
            raise _incomplete(page, BAD_TARGET, slot)
        out.append(e & 0xFF)
    return out


# ---------------------------------------------------------------- doorbells and delivery
def ring_doorbell(machine, host_apic_id):
    """15.29.8.2: the core whose physical APIC ID this is re-evaluates the
    backing page of the guest it runs (a core in host mode sees it at VMRUN)."""
    for c in machine.cpus:
        lapic = c.lapic
        if (lapic.apic_id if lapic is not None else c.index) == host_apic_id:
            c.kick()


def doorbell_write(cpu, idx, value):
    """MSR C001_011Bh: write-only (#GP on read); bits 63:8 MBZ (figure 15-22)."""
    if value >> 8:
        raise gp(0, f"WRMSR DOORBELL {value:#x}: reserved bits set")
    ring_doorbell(cpu.machine, value & 0xFF)


def doorbell_read(cpu, idx):
    raise gp(0, "RDMSR of the AVIC doorbell register (write-only)")


def pending(cpu):
    """The vector AVIC would deliver now (highest IRR above the PPR), or None."""
    page = Backing(cpu.bus, cpu.svm.backing)
    vector = page.highest(IRR)
    if vector is None or (vector >> 4) <= (page[PPR] >> 4):
        return None
    return vector


def take(cpu, vector):
    """Deliver ``vector``: IRR -> ISR, PPR updated, then through the guest IDT."""
    from ..cpu import interrupts
    page = Backing(cpu.bus, cpu.svm.backing)
    page.set_bit(IRR, vector, False)
    page.set_bit(ISR, vector)
    page.update_ppr()
    m = cpu.machine
    m.delivery_via = "AVIC"              # named in the trace's deliver event
    try:
        interrupts.take_interrupt(cpu, vector)
    finally:
        m.delivery_via = None


def guest_msr(cpu, idx):
    """x2AVIC: the x2APIC MSR ``idx`` as the guest reaches it (after the MSR
    intercepts, 15.29.10), or None when x2AVIC is off."""
    s = cpu.svm
    if not (s.avic and s.x2avic and 0x800 <= idx <= 0x8FF):
        return None
    offset = (idx - 0x800) << 4

    def read(cpu, idx):
        return access(cpu, s.backing, offset, 4, None, x2=True)

    def write(cpu, idx, value):
        access(cpu, s.backing, offset, 4, value, x2=True)
    return ("x2APIC (x2AVIC)", read, write)


if not any(rule == "AVIC" for rule, _ in checks.LATER_CHECKS):
    checks.LATER_CHECKS.append(("AVIC", vmrun_checks))
