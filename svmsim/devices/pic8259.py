"""Two cascaded Intel 8259A PICs as on the PC/AT, plus the PIIX ELCR.

Reference: Intel 8259A datasheet (order 231468): ICW1-ICW4, OCW1-OCW3,
priority resolution, AEOI, rotation, special mask mode, poll command.
PC wiring: master at 0x20/0x21 (IRQ 0-7), slave at 0xA0/0xA1 (IRQ 8-15)
with its INT output on master IR2.  Edge/level selection per line comes
from the ELCR at 0x4D0/0x4D1 (Intel PIIX datasheet; IRQ 0, 1, 2, 8 and 13
are always edge-triggered, so those ELCR bits are read-only 0) or, for a
whole chip, from ICW1.LTIM.

Behaviour on the fine points follows QEMU's hw/intc/i8259.c:
* an edge-triggered request stays latched in IRR when the line drops
  before INTA (the datasheet leaves this to timing);
* INTA with nothing pending gives IRQ 7 of the master (spurious, ISR not
  set); a cascade request whose slave has nothing gives IRQ 15 of the
  slave (spurious) with the master's ISR bit 2 set, so the guest must EOI
  the master, as Linux's spurious-IRQ15 handling expects.

One simplification: the master sees the slave's INT output as a level on
IR2 (no edge detection on the cascade), so a slave request that stays
asserted across an INTA is never lost.
"""

ELCR_MASK = (0xF8, 0xDE)   # writable ELCR bits for the master and the slave


class Pic8259Chip:
    """One 8259A.  ``lines`` is the current level of IR0-7."""

    def __init__(self, is_master: bool):
        self.is_master = is_master
        self.elcr = 0
        self.lines = 0
        self.reset()

    def reset(self):
        """State after ICW1 (datasheet "Initialization command words")."""
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.last_lines = 0          # edge detector memory
        self.priority_add = 0        # IR with the highest priority
        self.vector_base = 0
        self.read_isr = False        # OCW3 RR/RIS: False -> IRR
        self.poll = False
        self.special_mask = False
        self.init_state = 0          # next expected ICW (0: none)
        self.need_icw4 = False
        self.single = False
        self.level_all = False       # ICW1.LTIM
        self.auto_eoi = False
        self.rotate_on_aeoi = False
        self.sfnm = False            # special fully nested mode (ICW4.SFNM)
        self.icw3 = 0

    # -- request input --------------------------------------------------
    def is_level(self, irq):
        if self.is_master and irq == 2 and not self.single:
            return True                  # the cascade input, see module doc
        return self.level_all or bool(self.elcr & (1 << irq))

    def set_line(self, irq, level):
        mask = 1 << irq
        if level:
            self.lines |= mask
        else:
            self.lines &= ~mask
        self._sample(irq)

    def _sample(self, irq):
        mask = 1 << irq
        high = bool(self.lines & mask)
        if self.is_level(irq):
            self.irr = (self.irr | mask) if high else (self.irr & ~mask)
        elif high and not self.last_lines & mask:
            self.irr |= mask             # rising edge latches the request
        self.last_lines = (self.last_lines | mask) if high else (self.last_lines & ~mask)

    # -- priority resolution ------------------------------------------
    def _highest(self, mask):
        """Highest-priority IR set in ``mask`` (rotated order), or None."""
        if not mask:
            return None
        for i in range(8):
            irq = (self.priority_add + i) & 7
            if mask & (1 << irq):
                return irq
        return None

    def _rank(self, irq):
        return (irq - self.priority_add) & 7

    def pending_irq(self):
        """IR the chip would deliver now, or None (its INT output is low)."""
        irq = self._highest(self.irr & ~self.imr)
        if irq is None:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr      # masked levels do not block others
        if self.is_master and self.sfnm:
            in_service &= ~(1 << 2)      # SFNM: slave may nest on IR2
        current = self._highest(in_service)
        if current is not None and self._rank(irq) >= self._rank(current):
            return None
        return irq

    def intack(self, irq):
        """INTA for ``irq``: set ISR (unless AEOI), clear an edge request."""
        mask = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= mask
        if not self.is_level(irq):
            self.irr &= ~mask

    # -- port interface (offset 0 = command, 1 = data) ------------------
    def write(self, offset, value):
        if offset == 0:
            if value & 0x10:
                self._icw1(value)
            elif value & 0x08:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif self.init_state == 2:
            self.vector_base = value & 0xF8
            self.init_state = 3 if not self.single else (4 if self.need_icw4 else 0)
        elif self.init_state == 3:
            self.icw3 = value
            self.init_state = 4 if self.need_icw4 else 0
        elif self.init_state == 4:
            self.auto_eoi = bool(value & 0x02)
            self.sfnm = bool(value & 0x10)
            self.init_state = 0
        else:
            self.imr = value             # OCW1

    def read(self, offset):
        if self.poll:
            return self._poll_read()
        if offset == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def _icw1(self, value):
        elcr, lines = self.elcr, self.lines
        self.reset()
        self.elcr, self.lines = elcr, lines
        self.need_icw4 = bool(value & 0x01)
        self.single = bool(value & 0x02)
        self.level_all = bool(value & 0x08)
        self.init_state = 2
        # ICW1 clears the edge-sense latches; lines still high do not
        # count as new edges until they drop (datasheet ICW1 notes).
        self.last_lines = lines
        for irq in range(8):
            if self.is_level(irq):
                self._sample(irq)

    def _ocw2(self, value):
        cmd = value >> 5
        level = value & 7
        if cmd in (1, 5):                # (rotate on) non-specific EOI
            irq = self._highest(self.isr)
            if irq is not None:
                self.isr &= ~(1 << irq)
                if cmd == 5:
                    self.priority_add = (irq + 1) & 7
        elif cmd in (3, 7):              # (rotate on) specific EOI
            self.isr &= ~(1 << level)
            if cmd == 7:
                self.priority_add = (level + 1) & 7
        elif cmd == 6:                   # set priority: ``level`` lowest
            self.priority_add = (level + 1) & 7
        elif cmd in (0, 4):              # clear/set rotate in AEOI mode
            self.rotate_on_aeoi = cmd == 4
        # cmd 2: no operation

    def _ocw3(self, value):
        if value & 0x04:
            self.poll = True
        if value & 0x02:
            self.read_isr = bool(value & 0x01)
        if value & 0x40:
            self.special_mask = bool(value & 0x20)

    def _poll_read(self):
        """Poll command: the read acts as INTA (datasheet "Poll command")."""
        self.poll = False
        irq = self.pending_irq()
        if irq is None:
            return 0
        self.intack(irq)
        return 0x80 | irq


class Pic8259:
    """The PC's master/slave pair.  Register with :meth:`register`.

    ``machine.raise_irq(line, level)`` should call :meth:`set_irq`; the
    CPU samples :meth:`has_interrupt` (the master's INT pin) and runs an
    INTA cycle with :meth:`acknowledge`.
    """

    def __init__(self, machine):
        self.machine = machine
        self.master = Pic8259Chip(True)
        self.slave = Pic8259Chip(False)
        self._intr = False

    def register(self, machine=None):
        io = (machine or self.machine).io
        io.register(0x20, 2, self)
        io.register(0xA0, 2, self)
        io.register(0x4D0, 2, self)

    # -- interrupt lines ------------------------------------------------
    def set_irq(self, line, level):
        # ISA has no IRQ 2 on the AT: master IR2 carries the slave.
        if not 0 <= line < 16 or line == 2:
            return
        chip = self.master if line < 8 else self.slave
        chip.set_line(line & 7, bool(level))
        self._update()

    def _update(self):
        """Propagate the slave's INT to IR2 and the master's INT to the CPU."""
        self.master.set_line(2, self.slave.pending_irq() is not None)
        intr = self.master.pending_irq() is not None
        if intr != self._intr:
            # INTR is wired to LINT0 of every local APIC, as on QEMU's pc.
            for cpu in getattr(self.machine, "cpus", None) or ():
                lapic = getattr(cpu, "lapic", None)
                if lapic is not None:
                    lapic.set_lint(0, intr)
            cpus = getattr(self.machine, "cpus", None)
            if intr and cpus:
                cpus[0].kick()
        self._intr = intr

    def has_interrupt(self):
        return self._intr

    def acknowledge(self):
        """INTA cycle: returns the vector the PIC puts on the bus."""
        master, slave = self.master, self.slave
        irq = master.pending_irq()
        if irq is None:
            vector = master.vector_base | 7          # spurious IRQ 7
        elif irq == 2 and not master.single:
            irq2 = slave.pending_irq()
            if irq2 is None:
                vector = slave.vector_base | 7       # spurious IRQ 15
            else:
                slave.intack(irq2)
                vector = slave.vector_base | irq2
            master.intack(2)
        else:
            master.intack(irq)
            vector = master.vector_base | irq
        self._update()
        return vector

    # -- ports ----------------------------------------------------------
    def io_read(self, port, size):
        value = 0
        for i in range(size):
            value |= self._read_byte(port + i) << (8 * i)
        return value

    def io_write(self, port, size, value):
        for i in range(size):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port):
        if port in (0x4D0, 0x4D1):
            return (self.master, self.slave)[port & 1].elcr
        chip = self.master if port < 0xA0 else self.slave
        if port & ~1 not in (0x20, 0xA0):
            return 0xFF
        value = chip.read(port & 1)
        self._update()                   # a poll read acknowledges
        return value

    def _write_byte(self, port, value):
        if port in (0x4D0, 0x4D1):
            chip = (self.master, self.slave)[port & 1]
            chip.elcr = value & ELCR_MASK[port & 1]
            for irq in range(8):
                chip._sample(irq)
        elif port & ~1 in (0x20, 0xA0):
            chip = self.master if port < 0xA0 else self.slave
            chip.write(port & 1, value)
        else:
            return
        self._update()
