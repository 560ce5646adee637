"""The local APIC of one CPU (xAPIC and x2APIC), and the MMIO window reaching it.

References: AMD APM vol 2 ch. 16 ("Advanced Programmable Interrupt Controller"),
Intel SDM vol 3 ch. 11 for behaviour both vendors share (section numbers below
are the SDM's), QEMU hw/intc/apic.c and apic_common.c for PC conventions.

Deliberate choices, each a place where we differ from some hardware or QEMU:

* Version register 0x0005_0010: integrated APIC version 10h as AMD reports,
  six LVT entries (MaxLvtEntry 5, no CMCI), no directed EOI (bit 24 clear, so
  every level-triggered EOI is broadcast to the I/O APIC).  The AMD extended
  register space at 400h+ (extended LVT, IER, specific EOI) is NOT modelled,
  so ExtApicSpace (bit 31) is clear and the CPU profile must report
  CPUID 8000_0001h ECX[3] = 0.  Offsets there are illegal registers.
* Timer bus clock: APIC_TIMER_HZ = 1 GHz, one tick per virtual ns before the
  divider, as QEMU (which counts QEMU_CLOCK_VIRTUAL nanoseconds).  The
  interrupt fires when the count reaches 0, ``initial`` ticks after loading
  (SDM 11.5.4); QEMU fires one tick later.  A masked timer keeps counting but
  schedules nothing (as QEMU); unmasking re-arms it.
* TSC: one TSC tick per virtual ns unless the CPU object provides
  ``tsc_from_ns(ns)`` and ``ns_from_tsc(tsc)`` (see ``tsc_now``/``tsc_to_ns``).
* Lowest-priority delivery goes to the target with the lowest APIC ID (no
  arbitration, no focus processor), like QEMU's apic_bus_deliver.
* Fixed and lowest-priority messages reaching a software-disabled APIC are
  dropped: SDM 11.4.7.2 says it answers INIT, NMI, SMI and SIPI only (KVM's
  __apic_accept_irq does the same; QEMU would queue them in the IRR).
* A globally disabled APIC (IA32_APIC_BASE[11] = 0) receives nothing, its
  MMIO window is unassigned and LINT0/LINT1 act as the bare INTR/NMI pins
  (SDM 11.4.3).  Disabling it returns it to the power-up state (SDM 11.4.3).
* MMIO accesses: 32-bit accesses reach the register holding that byte (the low
  four offset bits are ignored); 8-byte accesses are split into two 32-bit
  ones; narrower accesses read 0 and are ignored (QEMU apic_mem_read/write;
  SDM 11.4.1 leaves them model-specific).  MSI writes are not modelled.
* Delivery is instantaneous: the ICR delivery-status bit always reads idle and
  no send/receive accept errors are ever logged.  ICR remote read (011b) and
  the reserved ExtINT ICR mode deliver nothing.
"""

APIC_DEFAULT_BASE = 0xFEE0_0000
APIC_SPACE_SIZE = 0x1000
APIC_TIMER_HZ = 1_000_000_000      # one timer tick per virtual ns (QEMU too)

MSR_APIC_BASE = 0x1B
MSR_TSC_DEADLINE = 0x6E0
MSR_X2APIC_FIRST = 0x800
MSR_X2APIC_LAST = 0x8FF

# IA32_APIC_BASE fields (APM vol 2 ch. 16 "APIC Base Address"; SDM 11.4.4, 11.12.1).
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10
APIC_BASE_EN = 1 << 11

APIC_VERSION = 0x0005_0010

# Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + (offset >> 4).
APIC_ID = 0x020
APIC_VER = 0x030
APIC_TPR = 0x080
APIC_APR = 0x090
APIC_PPR = 0x0A0
APIC_EOI = 0x0B0
APIC_RRD = 0x0C0
APIC_LDR = 0x0D0
APIC_DFR = 0x0E0
APIC_SVR = 0x0F0
APIC_ISR = 0x100
APIC_TMR = 0x180
APIC_IRR = 0x200
APIC_ESR = 0x280
APIC_ICR_LOW = 0x300
APIC_ICR_HIGH = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_INITIAL = 0x380
APIC_TIMER_CURRENT = 0x390
APIC_TIMER_DIVIDE = 0x3E0
APIC_SELF_IPI = 0x3F0              # x2APIC only (MSR 83Fh)

# LVT indices, in register order.
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(6)
LVT_COUNT = 6

LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
LVT_REMOTE_IRR = 1 << 14
LVT_POLARITY = 1 << 13
LVT_DELIVERY_STATUS = 1 << 12
_LVT_DM = 0x700
_LVT_WRITABLE = {
    LVT_THERMAL: 0xFF | _LVT_DM | LVT_MASKED,
    LVT_PERF: 0xFF | _LVT_DM | LVT_MASKED,
    LVT_LINT0: 0xFF | _LVT_DM | LVT_POLARITY | LVT_LEVEL | LVT_MASKED,
    LVT_LINT1: 0xFF | _LVT_DM | LVT_POLARITY | LVT_LEVEL | LVT_MASKED,
    LVT_ERROR: 0xFF | LVT_MASKED,
}
_LVT_READ_ONLY = LVT_REMOTE_IRR | LVT_DELIVERY_STATUS

TIMER_ONE_SHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2

# Delivery modes (ICR, LVT, I/O APIC redirection entries).
DM_FIXED, DM_LOWEST, DM_SMI, DM_REMOTE_READ = 0, 1, 2, 3
DM_NMI, DM_INIT, DM_STARTUP, DM_EXTINT = 4, 5, 6, 7

# Destination shorthands (ICR bits 19:18).
SH_NONE, SH_SELF, SH_ALL_INCL, SH_ALL_EXCL = 0, 1, 2, 3

ICR_DEST_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_LOW_WRITABLE = 0x000C_CFFF     # bit 12 (delivery status) reads 0

SVR_ENABLE = 1 << 8
SVR_WRITABLE = 0x3FF               # vector, APIC enable, focus check (no bit 12)

DFR_FLAT = 0xF
DFR_CLUSTER = 0x0

ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVED_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

X2APIC_BROADCAST = 0xFFFF_FFFF
XAPIC_BROADCAST = 0xFF

# x2APIC MSR indices (MSR - 800h) that RDMSR may read (SDM table 11-6).
_X2APIC_READABLE = frozenset(
    [0x02, 0x03, 0x08, 0x0A, 0x0D, 0x0F, 0x28, 0x30, 0x38, 0x39, 0x3E]
    + list(range(0x10, 0x28)) + list(range(0x32, 0x38)))
# xAPIC registers where writes are silently ignored.
_XAPIC_READ_ONLY = frozenset(
    [0x03, 0x09, 0x0A, 0x0C, 0x39] + list(range(0x10, 0x28)))


# -- TSC conversion: the single place that relates the TSC to virtual time ---
def tsc_now(cpu, now_ns: int) -> int:
    """The CPU's TSC at virtual time ``now_ns`` (1 tick per ns by default)."""
    conv = getattr(cpu, "tsc_from_ns", None)
    return conv(now_ns) if conv else now_ns


def tsc_to_ns(cpu, tsc: int) -> int:
    """Virtual time at which the CPU's TSC reaches ``tsc``."""
    conv = getattr(cpu, "ns_from_tsc", None)
    return conv(tsc) if conv else tsc


# -- The interrupt message bus ---------------------------------------------
def deliver_interrupt(machine, dest: int, logical: bool, delivery_mode: int,
                      vector: int, level_trigger: bool = False,
                      shorthand: int = SH_NONE, sender=None) -> None:
    """Deliver one interrupt message (from an ICR or the I/O APIC) to the
    local APICs of ``machine.cpus`` it addresses (SDM 11.6.2, 11.12.9).

    Lowest-priority messages go to the lowest APIC ID among the targets
    (QEMU does the same); everything else goes to every target.
    """
    targets = _select_targets(machine, dest, logical, shorthand, sender)
    if not targets:
        return
    if delivery_mode == DM_LOWEST:
        targets = [min(targets, key=lambda apic: apic.apic_id)]
        delivery_mode = DM_FIXED
    for apic in targets:
        apic.receive(delivery_mode, vector, level_trigger)


def _select_targets(machine, dest, logical, shorthand, sender):
    apics = [cpu.lapic for cpu in machine.cpus
             if getattr(cpu, "lapic", None) is not None and cpu.lapic.enabled]
    if shorthand == SH_SELF:
        return [sender] if sender is not None else []
    if shorthand == SH_ALL_INCL:
        return apics
    if shorthand == SH_ALL_EXCL:
        return [apic for apic in apics if apic is not sender]
    return [apic for apic in apics if apic.matches_destination(dest, logical)]


class LocalApic:
    """One CPU's local APIC.

    The CPU drives it through: ``read_apic_base``/``write_apic_base`` (MSR 1Bh),
    ``msr_read``/``msr_write`` (x2APIC MSRs 800h-8FFh; None/False means #GP),
    ``read_tsc_deadline``/``write_tsc_deadline`` (MSR 6E0h),
    ``read_cr8``/``write_cr8``, and for interrupt delivery:
    ``extint_pending()`` first (then take the vector from machine.pic), else
    ``has_interrupt()`` then ``acknowledge()``.  When the CPU takes an INIT it
    calls ``init()``; the machine calls ``reset()`` at power-up.
    """

    def __init__(self, machine, cpu, *, x2apic: bool = True,
                 tsc_deadline: bool = True):
        self.machine = machine
        self.cpu = cpu
        self.x2apic_supported = x2apic
        self.tsc_deadline_supported = tsc_deadline
        self._lint_level = [False, False]   # input pins: not reset by reset()
        self._timer_handle = None
        self._timer_token = 0
        self._last_now = 0
        self.reset()

    # -- reset, INIT, firmware ---------------------------------------------
    def reset(self) -> None:
        """Power-up / RESET state (SDM 11.4.7.1): xAPIC mode at 0xFEE00000,
        globally enabled, BSP flag on CPU 0, APIC ID = CPU index."""
        bsp = APIC_BASE_BSP if self.cpu.index == 0 else 0
        self.apic_base = APIC_DEFAULT_BASE | APIC_BASE_EN | bsp
        self.xapic_id = self.cpu.index & 0xFF
        self._reset_registers()

    def init(self) -> None:
        """INIT (SDM 11.4.7.3): as power-up except that the APIC ID and
        IA32_APIC_BASE (so the x2APIC mode too, SDM 11.12.5) are kept."""
        self._reset_registers()

    def _reset_registers(self) -> None:
        self._timer_cancel()
        self.tpr = 0
        self.svr = 0xFF
        self.ldr = 0
        self.dfr = 0xFFFF_FFFF
        self.isr = self.irr = self.tmr = 0      # 256-bit bitmaps
        self.esr = 0
        self._esr_pending = 0
        self.icr_low = self.icr_high = 0
        self.lvt = [LVT_MASKED] * LVT_COUNT
        self.initial_count = 0
        self.divide_config = 0
        self._shift = 1                         # divide-by-2 after reset
        self._count_base = 0
        self._base_ns = self._now()
        self.tsc_deadline = 0
        self._extint_from_ioapic = False

    def firmware_setup(self) -> None:
        """What SeaBIOS' smp_setup() leaves on the BSP before a QEMU -kernel
        boot: APIC software-enabled, LINT0 = 0x8700 (ExtINT, level: the 8259's
        virtual wire) and LINT1 = 0x8400 (NMI).  QEMU's own reset puts 0x700
        in the BSP's LINT0 for the same reason (apic_reset_common)."""
        self._set_svr(self.svr | SVR_ENABLE)
        self._write_lvt(LVT_LINT0, 0x8700)
        self._write_lvt(LVT_LINT1, 0x8400)

    # -- state ----------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Globally enabled (IA32_APIC_BASE[11])."""
        return bool(self.apic_base & APIC_BASE_EN)

    @property
    def x2apic_mode(self) -> bool:
        return bool(self.apic_base & APIC_BASE_EXTD) and self.enabled

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def base(self) -> int:
        """Physical address of the xAPIC MMIO page."""
        return self.apic_base & ~0xFFF

    @property
    def x2apic_id(self) -> int:
        """The initial APIC ID, fixed by hardware (SDM 11.12.5.1)."""
        return self.cpu.index

    @property
    def apic_id(self) -> int:
        return self.x2apic_id if self.x2apic_mode else self.xapic_id

    def _now(self) -> int:
        """Virtual time for this APIC: its own CPU's, when that CPU is the one
        running (so the current count drops between two reads in a
        quantum), never earlier than a time this APIC has already seen."""
        m = self.machine
        cpu_now = getattr(m, "now_ns", None)
        now = cpu_now(self.cpu) if cpu_now and m.current_cpu is self.cpu else m.clock.now_ns
        if now < self._last_now:
            return self._last_now
        self._last_now = now
        return now

    def _kick(self) -> None:
        self.cpu.kick()

    # -- IA32_APIC_BASE ----------------------------------------------------------
    def read_apic_base(self) -> int:
        return self.apic_base

    def write_apic_base(self, value: int) -> bool:
        """WRMSR 1Bh.  False means the CPU must raise #GP: reserved bits set,
        or an illegal mode transition (SDM 11.12.5 figure "x2APIC state
        transitions"; QEMU apic_set_base_check): EN=0 with EXTD=1, disabled
        -> x2APIC, x2APIC -> xAPIC.  The BSP flag is read-only."""
        maxphyaddr = getattr(self.cpu, "maxphyaddr", 48)
        addr_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
        allowed = addr_mask | APIC_BASE_EN | APIC_BASE_BSP
        if self.x2apic_supported:
            allowed |= APIC_BASE_EXTD
        if value & ~allowed:
            return False
        enable, extd = value & APIC_BASE_EN, value & APIC_BASE_EXTD
        if extd and not enable:
            return False
        if enable and extd and not self.enabled:
            return False
        if enable and not extd and self.x2apic_mode:
            return False
        was_enabled = self.enabled
        self.apic_base = ((value & addr_mask) | enable | extd
                          | (self.apic_base & APIC_BASE_BSP))
        if was_enabled and not enable:
            # Back to the power-up state, xAPIC ID = initial ID (SDM 11.4.3).
            self._reset_registers()
            self.xapic_id = self.cpu.index & 0xFF
        self._kick()
        return True

    # -- priorities ---------------------------------------------------------
    def ppr(self) -> int:
        """Processor priority (SDM 11.8.3.1): TPR, or the ISR's class."""
        isr_class = max(self.isr.bit_length() - 1, 0) & 0xF0
        if (self.tpr & 0xF0) >= isr_class:
            return self.tpr
        return isr_class

    def _apr(self) -> int:
        """Arbitration priority (SDM 11.6.2.4 / figure "APR")."""
        irr_class = max(self.irr.bit_length() - 1, 0) & 0xF0
        isr_class = max(self.isr.bit_length() - 1, 0) & 0xF0
        top = max(irr_class, isr_class)
        return self.tpr if (self.tpr & 0xF0) >= top else top

    def _set_tpr(self, value: int) -> None:
        self.tpr = value & 0xFF
        self._kick()                 # a lower TPR may unblock an IRR vector

    def read_cr8(self) -> int:
        """CR8 mirrors TPR[7:4] (SDM 11.8.6.1; APM vol 2 ch. 16 "CR8")."""
        return self.tpr >> 4

    def write_cr8(self, value: int) -> None:
        self._set_tpr((value & 0xF) << 4)

    # -- accepting and dispensing interrupts --------------------------------
    def receive(self, delivery_mode: int, vector: int,
                level_trigger: bool = False) -> None:
        """An interrupt message addressed to this APIC (deliver_interrupt)."""
        if delivery_mode == DM_FIXED:
            self.accept(vector, level_trigger)
        elif delivery_mode == DM_SMI:
            self.cpu.signal_smi("APIC")
        elif delivery_mode == DM_NMI:
            self.cpu.signal_nmi()
        elif delivery_mode == DM_INIT:
            self.cpu.signal_init()
        elif delivery_mode == DM_STARTUP:
            self.cpu.signal_sipi(vector & 0xFF)
        elif delivery_mode == DM_EXTINT:
            # I/O APIC ExtINT: the CPU must run an INTA cycle to the 8259.
            self._extint_from_ioapic = True
            self._kick()

    def accept(self, vector: int, level_trigger: bool = False) -> None:
        """A fixed interrupt: set IRR (and TMR for level), kick the CPU.
        Vectors 0-15 are illegal (ESR "received illegal vector", SDM 11.5.3)."""
        if not self.enabled:
            return
        vector &= 0xFF
        if vector < 16:
            self._error(ESR_RECEIVED_ILLEGAL_VECTOR)
            return
        if not self.software_enabled:
            return
        bit = 1 << vector
        self.irr |= bit
        if level_trigger:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._kick()

    def has_interrupt(self) -> bool:
        """A fixed interrupt can be dispensed: the highest IRR vector's
        priority class is above the PPR's (SDM 11.8.3)."""
        if not self.irr or not (self.enabled and self.software_enabled):
            return False
        return ((self.irr.bit_length() - 1) & 0xF0) > (self.ppr() & 0xF0)

    def acknowledge(self) -> int:
        """INTA: move the highest IRR vector to the ISR and return it, or
        return the spurious vector when nothing can be dispensed (SDM 11.9)."""
        if not self.has_interrupt():
            return self.svr & 0xFF
        vector = self.irr.bit_length() - 1
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        return vector

    def eoi(self) -> None:
        """End of interrupt: retire the highest ISR vector.  A level-triggered
        one (TMR set) is broadcast to the I/O APIC (no directed EOI on AMD)."""
        if not self.isr:
            return
        vector = self.isr.bit_length() - 1
        self.isr &= ~(1 << vector)
        if self.tmr >> vector & 1:
            self._lint_eoi(vector)
            ioapic = getattr(self.machine, "ioapic", None)
            if ioapic is not None:
                ioapic.eoi(vector)
        self._kick()

    # -- errors ----------------------------------------------------------------
    def _error(self, bits: int) -> None:
        """Log an error (visible in the ESR after the next ESR write) and
        raise the LVT error interrupt (SDM 11.5.3)."""
        self._esr_pending |= bits
        self._local_deliver(LVT_ERROR)

    def _latch_esr(self) -> None:
        """ESR write: the errors logged since the last write become readable."""
        self.esr = self._esr_pending
        self._esr_pending = 0

    # -- local interrupt sources (LVT) ----------------------------------------
    def local_interrupt(self, lvt_index: int) -> None:
        """An internal source fired (LVT_THERMAL, LVT_PERF: for the CPU's
        thermal and performance-counter models)."""
        self._local_deliver(lvt_index)

    def _local_deliver(self, index: int) -> None:
        lvt = self.lvt[index]
        if lvt & LVT_MASKED:
            return
        vector = lvt & 0xFF
        mode = (lvt >> 8) & 7 if index in _LVT_WITH_MODE else DM_FIXED
        if mode == DM_FIXED:
            if index == LVT_ERROR and vector < 16:
                # Log without re-entering the error LVT.
                self._esr_pending |= ESR_RECEIVED_ILLEGAL_VECTOR
                return
            level = index in (LVT_LINT0, LVT_LINT1) and bool(lvt & LVT_LEVEL)
            if level and vector >= 16:
                self.lvt[index] |= LVT_REMOTE_IRR
            self.accept(vector, level)
        elif mode == DM_EXTINT:
            self._kick()
        elif mode in (DM_SMI, DM_NMI, DM_INIT):
            self.receive(mode, vector)
        # other LVT delivery modes are reserved: nothing is delivered

    def _write_lvt(self, index: int, value: int) -> None:
        old = self.lvt[index]
        writable = self._timer_writable() if index == LVT_TIMER else _LVT_WRITABLE[index]
        new = (value & writable) | (old & _LVT_READ_ONLY)
        if not self.software_enabled:
            new |= LVT_MASKED      # SDM 11.4.7.2: masks stay set
        if index == LVT_TIMER:
            self._write_lvt_timer(new)
        else:
            self.lvt[index] = new
        if index == LVT_LINT0:
            self._kick()           # the virtual wire may just have opened

    def _timer_writable(self) -> int:
        mode_bits = (3 << 17) if self.tsc_deadline_supported else (1 << 17)
        return 0xFF | LVT_MASKED | mode_bits

    # -- LINT0 / LINT1 pins ---------------------------------------------------
    def set_lint(self, pin: int, level: bool) -> None:
        """Drive input pin LINT0 (pin 0: the 8259's INTR) or LINT1 (pin 1).

        Globally disabled, the pins are the bare INTR and NMI inputs
        (SDM 11.4.3).  Otherwise the LVT decides: ExtINT follows the level,
        fixed level-triggered delivers once per assertion until EOI (remote
        IRR), other modes act on the rising edge (NMI/SMI/INIT are edge
        triggered whatever the trigger bit says).
        """
        level = bool(level)
        old = self._lint_level[pin]
        self._lint_level[pin] = level
        if pin == 0 and not level:
            self._extint_from_ioapic = False    # the INTA cycle is over
        if not self.enabled:
            if pin == 1 and level and not old:
                self.cpu.signal_nmi()
            elif pin == 0 and level != old:
                self._kick()
            return
        index = LVT_LINT0 + pin
        lvt = self.lvt[index]
        if lvt & LVT_MASKED:
            return
        mode = (lvt >> 8) & 7
        if mode == DM_EXTINT:
            if level != old:
                self._kick()
        elif mode == DM_FIXED and lvt & LVT_LEVEL:
            if level and not lvt & LVT_REMOTE_IRR:
                self._local_deliver(index)
        elif level and not old:
            self._local_deliver(index)

    def _lint_eoi(self, vector: int) -> None:
        """EOI of a level-triggered LINT vector: clear remote IRR, re-deliver
        if the pin is still asserted."""
        for index in (LVT_LINT0, LVT_LINT1):
            lvt = self.lvt[index]
            if lvt & LVT_REMOTE_IRR and lvt & 0xFF == vector:
                self.lvt[index] = lvt & ~LVT_REMOTE_IRR
                if self._lint_level[index - LVT_LINT0]:
                    self._local_deliver(index)

    def accepts_pic_intr(self) -> bool:
        """QEMU's apic_accept_pic_intr(): the 8259 may interrupt this CPU when
        the APIC is globally disabled or LVT LINT0 is unmasked."""
        return not self.enabled or not self.lvt[LVT_LINT0] & LVT_MASKED

    def extint_pending(self) -> bool:
        """The 8259's INTR reaches the CPU as an ExtINT: LINT0 is asserted and
        either the APIC is globally disabled, LINT0 is unmasked ExtINT
        (virtual wire mode, MP spec 3.6.2.2), or the I/O APIC sent an ExtINT
        message.  ExtINT bypasses TPR/PPR; the CPU then takes the vector from
        machine.pic.acknowledge()."""
        if not self._lint_level[0]:
            return False
        if not self.enabled or self._extint_from_ioapic:
            return True
        lvt = self.lvt[LVT_LINT0]
        return not lvt & LVT_MASKED and (lvt >> 8) & 7 == DM_EXTINT

    # -- destination matching ---------------------------------------------
    def _x2apic_ldr(self) -> int:
        """x2APIC logical ID: cluster ID[19:4] in 31:16, 1 << ID[3:0]
        (SDM 11.12.10.2)."""
        apic_id = self.x2apic_id
        return ((apic_id >> 4) << 16) | (1 << (apic_id & 0xF))

    def matches_destination(self, dest: int, logical: bool) -> bool:
        """Does a message for ``dest`` (physical or logical) address us?
        (SDM 11.6.2.1, 11.6.2.2, 11.12.9; mixed xAPIC/x2APIC as QEMU.)"""
        if self.x2apic_mode:
            if dest == X2APIC_BROADCAST:
                return True
            if not logical:
                return dest == self.x2apic_id
            ldr = self._x2apic_ldr()
            return dest >> 16 == ldr >> 16 and bool(dest & ldr & 0xFFFF)
        if dest == X2APIC_BROADCAST:
            dest = XAPIC_BROADCAST
        if not logical:
            return dest in (XAPIC_BROADCAST, self.xapic_id)
        dest &= 0xFF
        ldr = self.ldr >> 24
        if self.dfr >> 28 == DFR_FLAT:
            return bool(dest & ldr)
        cluster_ok = dest >> 4 in (0xF, ldr >> 4)
        return cluster_ok and bool(dest & ldr & 0xF)

    # -- IPIs ----------------------------------------------------------------
    def _send_ipi(self) -> None:
        """ICR low was written: send the message it describes (SDM 11.6.1)."""
        low = self.icr_low
        vector, mode = low & 0xFF, (low >> 8) & 7
        shorthand = (low >> 18) & 3
        if mode == DM_INIT and not low & ICR_LEVEL_ASSERT and low & ICR_TRIGGER_LEVEL:
            return       # INIT level de-assert: only resyncs arbitration IDs
        if mode in (DM_REMOTE_READ, DM_EXTINT):
            return
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        dest = self.icr_high if self.x2apic_mode else self.icr_high >> 24
        deliver_interrupt(self.machine, dest, bool(low & ICR_DEST_LOGICAL), mode,
                          vector, bool(low & ICR_TRIGGER_LEVEL), shorthand, self)

    def _self_ipi(self, vector: int) -> None:
        """x2APIC SELF IPI (MSR 83Fh): fixed, edge, to ourselves."""
        self.accept(vector)

    # -- register file (shared by MMIO and MSRs) -----------------------------
    def _read_register(self, index: int):
        """Value of the register at offset ``index << 4``, None if none."""
        if 0x10 <= index < 0x28:
            bitmap = (self.isr, self.tmr, self.irr)[(index - 0x10) >> 3]
            return (bitmap >> (32 * (index & 7))) & 0xFFFF_FFFF
        if 0x32 <= index < 0x38:
            return self.lvt[index - 0x32]
        reader = _READERS.get(index)
        return reader(self) if reader else None

    def _read_id(self):
        return self.x2apic_id if self.x2apic_mode else self.xapic_id << 24

    def _read_ldr(self):
        return self._x2apic_ldr() if self.x2apic_mode else self.ldr

    def _set_svr(self, value: int) -> None:
        self._timer_catch_up()
        self.svr = value & SVR_WRITABLE
        if not self.software_enabled:
            for index in range(LVT_COUNT):
                self.lvt[index] |= LVT_MASKED
            self._timer_reschedule()
        self._kick()

    def _write_common(self, index: int, value: int) -> bool:
        """Writes that mean the same in both modes; False if not one."""
        if index == 0x08:
            self._set_tpr(value)
        elif index == 0x0B:
            self.eoi()
        elif index == 0x0F:
            self._set_svr(value)
        elif index == 0x28:
            self._latch_esr()
        elif 0x32 <= index < 0x38:
            self._write_lvt(index - 0x32, value)
        elif index == 0x38:
            self._write_initial_count(value)
        elif index == 0x3E:
            self._write_divide(value)
        else:
            return False
        return True

    # -- xAPIC MMIO -------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if size == 8:
            return self.mmio_read(offset, 4) | self.mmio_read(offset + 4, 4) << 32
        if size != 4:
            return 0
        value = self._read_register((offset >> 4) & 0xFF)
        if value is None:
            self._error(ESR_ILLEGAL_REGISTER)
            return 0
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self.mmio_write(offset, 4, value & 0xFFFF_FFFF)
            self.mmio_write(offset + 4, 4, value >> 32)
            return
        if size != 4:
            return
        if not self._write_xapic((offset >> 4) & 0xFF, value & 0xFFFF_FFFF):
            self._error(ESR_ILLEGAL_REGISTER)

    def _write_xapic(self, index: int, value: int) -> bool:
        if index == 0x02:
            self.xapic_id = value >> 24          # read/write in xAPIC mode on AMD
        elif index == 0x0D:
            self.ldr = value & 0xFF00_0000
        elif index == 0x0E:
            self.dfr = (value & 0xF000_0000) | 0x0FFF_FFFF
        elif index == 0x30:
            self.icr_low = value & ICR_LOW_WRITABLE
            self._send_ipi()
        elif index == 0x31:
            self.icr_high = value & 0xFF00_0000
        elif index in _XAPIC_READ_ONLY:
            pass
        else:
            return self._write_common(index, value)
        return True

    # -- x2APIC MSRs --------------------------------------------------------
    def msr_read(self, msr: int):
        """RDMSR 800h-8FFh.  None means #GP: not in x2APIC mode, a write-only
        or absent register (SDM 11.12.1.2, table 11-6)."""
        index = msr - MSR_X2APIC_FIRST
        if not self.x2apic_mode or index not in _X2APIC_READABLE:
            return None
        if index == 0x30:
            return self.icr_low | self.icr_high << 32
        return self._read_register(index)

    def msr_write(self, msr: int, value: int) -> bool:
        """WRMSR 800h-8FFh.  False means #GP: not in x2APIC mode, read-only
        or absent register, or reserved bits set (SDM 11.12.1.3)."""
        index = msr - MSR_X2APIC_FIRST
        if not self.x2apic_mode or not 0 <= index <= 0xFF:
            return False
        if index == 0x30:
            return self._write_x2apic_icr(value)
        writable = _x2apic_writable(self, index)
        if writable is None or value >> 32 or value & ~writable:
            return False
        if index == 0x3F:
            self._self_ipi(value)
            return True
        return self._write_common(index, value)

    def _write_x2apic_icr(self, value: int) -> bool:
        low = value & 0xFFFF_FFFF
        if low & ~ICR_LOW_WRITABLE:
            return False
        self.icr_low, self.icr_high = low, value >> 32
        self._send_ipi()
        return True

    # -- timer ----------------------------------------------------------------
    def _timer_mode(self) -> int:
        mode = (self.lvt[LVT_TIMER] >> 17) & 3
        return TIMER_ONE_SHOT if mode == 3 else mode

    def current_count(self) -> int:
        """Current-count register, computed from virtual time (SDM 11.5.4)."""
        if self._timer_mode() == TIMER_TSC_DEADLINE or not self.initial_count:
            return 0
        ticks = (self._now() - self._base_ns) >> self._shift
        if ticks < self._count_base:
            return self._count_base - ticks
        if self._timer_mode() == TIMER_PERIODIC:
            return self.initial_count - (ticks - self._count_base) % self.initial_count
        return 0

    def _write_initial_count(self, value: int) -> None:
        if self._timer_mode() == TIMER_TSC_DEADLINE:
            return                         # ignored (SDM 11.5.4.1)
        self._timer_catch_up()
        self.initial_count = value & 0xFFFF_FFFF
        self._count_base = self.initial_count
        self._base_ns = self._now()
        self._timer_reschedule()

    def _write_divide(self, value: int) -> None:
        """Divide configuration (bits 3,1:0; 111b = divide by 1).  The count
        continues from its current value at the new rate."""
        self._timer_catch_up()
        current = self.current_count()
        self.divide_config = value & 0xB
        code = (value & 3) | ((value >> 1) & 4)
        self._shift = (code + 1) & 7
        self._count_base = current
        self._base_ns = self._now()
        self._timer_reschedule()

    def _write_lvt_timer(self, new: int) -> None:
        self._timer_catch_up()
        old_deadline = self._timer_mode() == TIMER_TSC_DEADLINE
        self.lvt[LVT_TIMER] = new
        if old_deadline != (self._timer_mode() == TIMER_TSC_DEADLINE):
            # Entering or leaving TSC-deadline mode disarms the timer
            # (SDM 11.5.4.1; KVM apic_update_lvtt).
            self.tsc_deadline = 0
            self.initial_count = self._count_base = 0
        self._timer_reschedule()

    def read_tsc_deadline(self) -> int:
        """RDMSR 6E0h: reads 0 outside TSC-deadline mode (SDM 11.5.4.1)."""
        if self._timer_mode() != TIMER_TSC_DEADLINE:
            return 0
        return self.tsc_deadline

    def write_tsc_deadline(self, value: int) -> None:
        """WRMSR 6E0h: arm (non-zero) or disarm (0); ignored outside
        TSC-deadline mode.  A deadline already passed fires at once."""
        if self._timer_mode() != TIMER_TSC_DEADLINE:
            return
        self.tsc_deadline = value & 0xFFFF_FFFF_FFFF_FFFF
        self._timer_reschedule()
        self._timer_catch_up()

    def _next_expiry(self, after_ns: int):
        """First count-mode expiry strictly after ``after_ns``, or None."""
        if not self.initial_count:
            return None
        tick = 1 << self._shift
        first = self._base_ns + self._count_base * tick
        if first > after_ns:
            return first if self._count_base else None
        if self._timer_mode() != TIMER_PERIODIC:
            return None
        period = self.initial_count * tick
        return first + ((after_ns - first) // period + 1) * period

    def _timer_reschedule(self) -> None:
        self._timer_cancel()
        if self._timer_mode() == TIMER_TSC_DEADLINE:
            if self.tsc_deadline:
                self._timer_schedule(tsc_to_ns(self.cpu, self.tsc_deadline))
            return
        if self.lvt[LVT_TIMER] & LVT_MASKED:
            return
        when = self._next_expiry(self._now())
        if when is not None:
            self._timer_schedule(when)

    def _timer_schedule(self, when: int) -> None:
        self._timer_token += 1
        token = self._timer_token
        self._next_fire = when
        self._timer_handle = self.machine.clock.add_timer(
            when, lambda: self._on_timer(token))

    def _timer_cancel(self) -> None:
        if self._timer_handle is not None:
            self.machine.clock.cancel(self._timer_handle)
        self._timer_handle = None
        self._next_fire = None
        self._timer_token += 1

    def _on_timer(self, token: int) -> None:
        if token != self._timer_token:
            return
        self._timer_handle = None
        self._timer_fire()

    def _timer_catch_up(self) -> None:
        """Fire an expiry that is due but that the clock has not run yet, so
        reprogramming the timer never loses it."""
        if self._next_fire is not None and self._next_fire <= self._now():
            self._timer_fire()

    def _timer_fire(self) -> None:
        when = self._next_fire
        self._timer_cancel()
        if self._timer_mode() == TIMER_TSC_DEADLINE:
            self.tsc_deadline = 0           # the timer disarms itself
            self._local_deliver(LVT_TIMER)
            return
        self._local_deliver(LVT_TIMER)
        if self._timer_mode() == TIMER_PERIODIC and not self.lvt[LVT_TIMER] & LVT_MASKED:
            nxt = self._next_expiry(max(when, self._now()))
            if nxt is not None:
                self._timer_schedule(nxt)


_LVT_WITH_MODE = frozenset([LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1])

_READERS = {
    0x02: LocalApic._read_id,
    0x03: lambda apic: APIC_VERSION,
    0x08: lambda apic: apic.tpr,
    0x09: LocalApic._apr,
    0x0A: LocalApic.ppr,
    0x0B: lambda apic: 0,          # EOI is write-only: reads 0 (QEMU)
    0x0C: lambda apic: 0,          # remote read data: remote read unsupported
    0x0D: LocalApic._read_ldr,
    0x0E: lambda apic: apic.dfr,
    0x0F: lambda apic: apic.svr,
    0x28: lambda apic: apic.esr,
    0x30: lambda apic: apic.icr_low,
    0x31: lambda apic: apic.icr_high,
    0x38: lambda apic: apic.initial_count,
    0x39: LocalApic.current_count,
    0x3E: lambda apic: apic.divide_config,
}


def _x2apic_writable(apic, index: int) -> int:
    """Bits WRMSR may set in an x2APIC register (others are reserved: #GP);
    0 for EOI and ESR, whose only legal value is 0; None for read-only or
    absent registers (SDM 11.12.1.3, table 11-6)."""
    if index == 0x08:
        return 0xFF
    if index in (0x0B, 0x28):
        return 0
    if index == 0x0F:
        return SVR_WRITABLE
    if index == 0x32:
        return apic._timer_writable() | _LVT_READ_ONLY
    if 0x33 <= index < 0x38:
        return _LVT_WRITABLE[index - 0x32] | _LVT_READ_ONLY
    if index == 0x38:
        return 0xFFFF_FFFF
    if index == 0x3E:
        return 0xB
    if index == 0x3F:
        return 0xFF
    return None


class ApicMmioRouter:
    """The xAPIC MMIO page, as seen from whichever CPU is executing.

    Register it once: ``machine.bus.add_mmio(APIC_DEFAULT_BASE,
    APIC_SPACE_SIZE, ApicMmioRouter(machine), "lapic")``.  Each access goes to
    ``machine.current_cpu.lapic``.  When that APIC is globally disabled, in
    x2APIC mode (SDM 11.12.1.2: the MMIO interface is then disabled and
    behaves like a disabled xAPIC) or relocated elsewhere, the access is
    unassigned: reads return all ones, writes are dropped.  (Relocating the
    APIC base away from 0xFEE00000 is therefore not reachable by MMIO.)
    """

    def __init__(self, machine, base: int = APIC_DEFAULT_BASE):
        self.machine = machine
        self.base = base

    def _target(self):
        cpu = getattr(self.machine, "current_cpu", None)
        lapic = getattr(cpu, "lapic", None)
        if lapic is None or not lapic.enabled or lapic.x2apic_mode:
            return None
        return lapic if lapic.base == self.base else None

    def mmio_read(self, offset: int, size: int) -> int:
        lapic = self._target()
        if lapic is None:
            return (1 << (size * 8)) - 1
        return lapic.mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        lapic = self._target()
        if lapic is not None:
            lapic.mmio_write(offset, size, value)
