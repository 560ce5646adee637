"""The I/O APIC (82093AA / I/OxAPIC) of QEMU's ``pc`` machine.

References: Intel 82093AA I/O APIC datasheet (registers, redirection table),
Intel I/OxAPIC datasheets (version 20h, EOI register at +40h), QEMU
hw/intc/ioapic.c and ioapic_common.c (version 0x20, 24 pins, reset state).

Deliberate choices:

* ``set_irq(pin, level)`` takes a global system interrupt (GSI) number; the
  caller maps ISA IRQs to GSIs.  QEMU's pc maps ISA IRQ 0 (the PIT) to GSI 2
  (ioapic_set_irq does it there), every other ISA IRQ n to GSI n.
* ``level`` is the line's *asserted* state: the polarity bit is stored but not
  applied, as in QEMU, whose devices always signal active-high.
* Edge-triggered pins deliver on a 0 -> 1 transition of the line, and edges on
  a masked pin are lost (82093AA: "edge ... ignored if masked"; QEMU too).
  Level-triggered pins deliver while asserted and unmasked with remote IRR
  clear, and set remote IRR until the local APIC's EOI broadcast.
* An RTE switched to edge clears its remote IRR (QEMU's fix for Linux's
  __eoi_ioapic_pin); QEMU's EOI interrupt-storm throttling is not modelled.
* Delivery is instantaneous (delivery status reads 0); STARTUP and the
  reserved delivery modes deliver nothing; destinations are 8 bits
  (RTE bits 63:56) as in QEMU.
"""
from .apic import DM_REMOTE_READ, DM_STARTUP, deliver_interrupt

IOAPIC_DEFAULT_BASE = 0xFEC0_0000
IOAPIC_SPACE_SIZE = 0x1000
IOAPIC_NUM_PINS = 24

# Memory-mapped registers (offsets in the window; QEMU decodes addr & 0xFF).
IOREGSEL = 0x00
IOWIN = 0x10
IOEOI = 0x40                # version 20h only

# Indirect registers selected by IOREGSEL.
IOAPICID = 0x00
IOAPICVER = 0x01
IOAPICARB = 0x02
IOREDTBL = 0x10             # 0x10 + 2n: low dword of entry n, +1: high

# Redirection table entry fields (82093AA 3.2.4).
RTE_VECTOR = 0xFF
RTE_DEST_LOGICAL = 1 << 11
RTE_DELIVERY_STATUS = 1 << 12
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_READ_ONLY = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR
RTE_DEST_SHIFT = 56


class IoApic:
    """Register on the bus with ``machine.bus.add_mmio(ioapic.base,
    IOAPIC_SPACE_SIZE, ioapic, "ioapic")`` and set ``machine.ioapic`` so local
    APICs can broadcast EOIs to it."""

    def __init__(self, machine, base: int = IOAPIC_DEFAULT_BASE, *,
                 version: int = 0x20, apic_id: int = 0):
        self.machine = machine
        self.base = base
        self.version = version
        self._reset_id = apic_id
        self._line_level = 0        # input pins: not changed by reset()
        self.reset()

    def reset(self) -> None:
        """QEMU ioapic_reset_common: ID 0, every entry masked, nothing pending."""
        self.id = self._reset_id
        self.ioregsel = 0
        self.irr = 0                # pins with a request waiting for delivery
        self.redtbl = [RTE_MASKED] * IOAPIC_NUM_PINS

    # -- MMIO -------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        offset &= 0xFF
        if offset == IOREGSEL:
            return self.ioregsel
        if offset == IOWIN and size == 4:
            return self._read_indirect(self.ioregsel)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        offset &= 0xFF
        if offset == IOREGSEL:
            self.ioregsel = value & 0xFF
        elif offset == IOWIN and size == 4:
            self._write_indirect(self.ioregsel, value & 0xFFFF_FFFF)
        elif offset == IOEOI and size == 4 and self.version == 0x20:
            self.eoi(value & 0xFF)

    def _read_indirect(self, sel: int) -> int:
        if sel in (IOAPICID, IOAPICARB):
            return self.id << 24
        if sel == IOAPICVER:
            return self.version | (IOAPIC_NUM_PINS - 1) << 16
        pin = (sel - IOREDTBL) >> 1
        if sel >= IOREDTBL and pin < IOAPIC_NUM_PINS:
            return (self.redtbl[pin] >> (32 * (sel & 1))) & 0xFFFF_FFFF
        return 0

    def _write_indirect(self, sel: int, value: int) -> None:
        if sel == IOAPICID:
            self.id = (value >> 24) & 0xF
            return
        pin = (sel - IOREDTBL) >> 1
        if sel < IOREDTBL or pin >= IOAPIC_NUM_PINS:
            return                  # version, arbitration: read-only
        old = self.redtbl[pin]
        shift = 32 * (sel & 1)
        new = (old & ~(0xFFFF_FFFF << shift)) | value << shift
        new = (new & ~RTE_READ_ONLY) | (old & RTE_READ_ONLY)
        if not new & RTE_LEVEL:
            new &= ~RTE_REMOTE_IRR
        self.redtbl[pin] = new
        self._service()             # an unmasked level request goes out now

    # -- input pins ---------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive GSI ``pin`` (0..23).  ISA IRQ 0 must already be mapped to
        GSI 2 by the caller, as QEMU's pc does."""
        if not 0 <= pin < IOAPIC_NUM_PINS:
            return
        bit = 1 << pin
        rose = bool(level) and not self._line_level & bit
        if level:
            self._line_level |= bit
        else:
            self._line_level &= ~bit
        rte = self.redtbl[pin]
        if rte & RTE_LEVEL:
            if level:
                self.irr |= bit
                self._service()
            else:
                self.irr &= ~bit
        elif rose and not rte & RTE_MASKED:
            self.irr |= bit
            self._service()

    def eoi(self, vector: int) -> None:
        """EOI for ``vector`` (broadcast by a local APIC, or written to IOEOI):
        clear remote IRR of the level entries using it; still-asserted lines
        are delivered again."""
        for pin, rte in enumerate(self.redtbl):
            if rte & RTE_VECTOR == vector and rte & RTE_LEVEL:
                self.redtbl[pin] = rte & ~RTE_REMOTE_IRR
        self._service()

    # -- delivery -------------------------------------------------------------
    def _service(self) -> None:
        pending = self.irr
        while pending:
            pin = (pending & -pending).bit_length() - 1
            pending &= pending - 1
            rte = self.redtbl[pin]
            if rte & RTE_MASKED:
                continue
            if rte & RTE_LEVEL:
                if rte & RTE_REMOTE_IRR:
                    continue        # the previous one is still in service
                self.redtbl[pin] = rte | RTE_REMOTE_IRR
            else:
                self.irr &= ~(1 << pin)
            self._send(rte)

    def _send(self, rte: int) -> None:
        mode = (rte >> 8) & 7
        if mode in (DM_REMOTE_READ, DM_STARTUP):
            return                  # reserved in an RTE
        deliver_interrupt(self.machine, (rte >> RTE_DEST_SHIFT) & 0xFF,
                          bool(rte & RTE_DEST_LOGICAL), mode, rte & RTE_VECTOR,
                          bool(rte & RTE_LEVEL))
