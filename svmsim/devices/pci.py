"""PCI: the host bridge's configuration mechanism #1 and bus 0, as QEMU's
``pc`` machine (i440FX host bridge at 00.0, PIIX3 PCI-to-ISA bridge at 01.0).

References: PCI Local Bus Specification 3.0 (3.2.2.3.2 configuration
mechanism #1; 6.1 the type 0 header; 6.2.5 base address registers), the
Intel 82441FX (i440FX) and 82371SB (PIIX3) datasheets for their registers,
QEMU's hw/pci/pci_host.c, hw/pci-host/i440fx.c and hw/isa/piix.c for what a
guest sees on QEMU (IDs, revision, reset values).

Devices (QEMU's ``edu``: devices/edu.py) plug in as ``PciFunction``
subclasses: ``machine.pci.add(function, slot, fn)``.  A function declares
its BARs (size, I/O or memory); when the guest programs a BAR and enables
decoding in the command register, the bus maps the function's
``bar_read``/``bar_write`` at that address (``PhysBus.add_mmio`` or the I/O
bus).  ``function.set_irq(level)`` drives its INTx pin; the PIIX3 routes
INTA#..INTD# through its PIRQ route registers (60h-63h) to an ISA IRQ (the
8259 and I/O APIC pins 0-15), as QEMU's pc does (hw/isa/piix.c: nothing else
reaches I/O APIC pins 16-23).  A function may carry a
capability list (PCI 3.0, 6.7) and an MSI capability (6.8): ``add_msi()``,
then ``msi_notify()`` sends its message to the local APICs.
"""
from __future__ import annotations

import struct

CONFIG_ADDRESS, CONFIG_DATA = 0xCF8, 0xCFC

# Type 0 header offsets (PCI 3.0, 6.1)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_PROG = 0x08, 0x09
HEADER_TYPE, BAR0, SUBSYS_VENDOR, SUBSYS_ID = 0x0E, 0x10, 0x2C, 0x2E
CAP_PTR, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D
CAP_START = 0x40               # capabilities live after the 64-byte header

CMD_IO, CMD_MEMORY, CMD_MASTER, CMD_INTX_DISABLE = 0x1, 0x2, 0x4, 0x400
STATUS_INTERRUPT, STATUS_CAP_LIST = 0x8, 0x10
BAR_IO = 0x1
BAR_MEM_64 = 0x4
HEADER_MULTIFUNCTION = 0x80

# MSI capability (PCI 3.0, 6.8.1): message control, address (64-bit capable), data
CAP_ID_MSI = 0x05
MSI_ENABLE, MSI_MME, MSI_64BIT = 0x1, 0x70, 0x80

# i440FX SMRAM control (82441FX datasheet): C_BASE_SEG 010b (A_0000h) read-only
SMRAM, SMRAM_RESET, SMRAM_WRITABLE = 0x72, 0x02, 0x78
SMRAM_D_LCK, SMRAM_D_CLS, SMRAM_D_OPEN = 0x10, 0x20, 0x40

# The DEV capability block (APM vol 2, 15.24.4) in the host bridge
DEV_CAP_ID, DEV_CAP_OFFSET = 0x0F, 0xF0

PIRQ_ROUTE = 0x60              # PIIX3 PIRQRC[A:D]: bit 7 = disabled, bits 3:0 = ISA IRQ


class Bar:
    """A base address register: ``size`` bytes (a power of two), I/O or memory."""

    def __init__(self, size: int, io: bool = False, mem64: bool = False):
        if size & (size - 1) or size < (4 if io else 16):
            raise ValueError(f"BAR size {size:#x} must be a power of two (>= 4 I/O, 16 memory)")
        self.size, self.io, self.mem64 = size, io, mem64
        self.mapped_at = None               # address the bus decodes, or None

    @property
    def flags(self) -> int:
        return BAR_IO if self.io else (BAR_MEM_64 if self.mem64 else 0)


class PciFunction:
    """One PCI function: 256 bytes of configuration space.

    Writable bits are declared in ``self.wmask`` (per byte); everything
    else is read-only, as the specification's header says (6.1).  Read-only
    defaults common to all functions: command/status writable as QEMU
    allows (I/O, memory, bus master, INTx disable), interrupt line writable.
    """

    vendor_id = 0
    device_id = 0
    revision = 0
    class_code = 0              # (base class << 16) | (subclass << 8) | prog-if
    header_type = 0
    subsystem = (0, 0)
    interrupt_pin = 0           # 0 = none, 1..4 = INTA#..INTD#
    bars: tuple = ()

    def __init__(self):
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.bus = None
        self.slot = self.fn = None
        self.bars = [Bar(b.size, b.io, b.mem64) for b in type(self).bars]
        self.irq_level = False
        self.cap_end = CAP_START            # first free byte for the next capability
        self.msi_cap = None                 # offset of the MSI capability, if any
        c = self.config
        struct.pack_into("<HH", c, VENDOR_ID, self.vendor_id, self.device_id)
        c[REVISION_ID] = self.revision
        c[CLASS_PROG:CLASS_PROG + 3] = self.class_code.to_bytes(3, "little")
        c[HEADER_TYPE] = self.header_type
        struct.pack_into("<HH", c, SUBSYS_VENDOR, *self.subsystem)
        c[INTERRUPT_PIN] = self.interrupt_pin
        struct.pack_into("<H", self.wmask, COMMAND, CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_INTX_DISABLE)
        self.wmask[INTERRUPT_LINE] = 0xFF
        for i, bar in enumerate(self.bars):
            struct.pack_into("<I", c, BAR0 + 4 * i, bar.flags)
            struct.pack_into("<I", self.wmask, BAR0 + 4 * i, ~(bar.size - 1) & 0xFFFFFFFF & ~0xF
                             if not bar.io else ~(bar.size - 1) & 0xFFFFFFFC)

    # -- configuration space --------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            m = self.wmask[offset + i]
            self.config[offset + i] = (self.config[offset + i] & ~m) | ((value >> (8 * i)) & m)
        if offset < BAR0 + 4 * len(self.bars) and offset + size > COMMAND:
            self.update_mappings()

    def bar_address(self, i: int) -> int:
        raw = struct.unpack_from("<I", self.config, BAR0 + 4 * i)[0]
        return raw & (0xFFFFFFFC if self.bars[i].io else 0xFFFFFFF0)

    def update_mappings(self) -> None:
        """Decode each BAR where the guest put it, if its space is enabled."""
        cmd = self.config_read(COMMAND, 2)
        for i, bar in enumerate(self.bars):
            on = cmd & (CMD_IO if bar.io else CMD_MEMORY)
            addr = self.bar_address(i)
            want = addr if on and addr else None
            if want != bar.mapped_at and self.bus is not None:
                self.bus.remap(self, i, bar.mapped_at, want)
                bar.mapped_at = want

    # -- capabilities (PCI 3.0, 6.7) --------------------------------------
    def add_capability(self, cap_id: int, size: int, offset: int = None) -> int:
        """Put a capability of ``size`` bytes at ``offset`` (default: the next
        free dword from 40h) at the head of the list, as QEMU's
        pci_add_capability does; returns its offset."""
        if offset is None:
            offset = self.cap_end
            self.cap_end = (offset + size + 3) & ~3
        c = self.config
        c[offset], c[offset + 1] = cap_id, c[CAP_PTR]
        c[CAP_PTR] = offset
        c[STATUS] |= STATUS_CAP_LIST
        return offset

    def add_msi(self) -> int:
        """A 64-bit MSI capability with one message and no per-vector masking
        (what QEMU's msi_init(dev, 0, 1, true, false) builds)."""
        off = self.msi_cap = self.add_capability(CAP_ID_MSI, 0x0E)
        struct.pack_into("<H", self.config, off + 2, MSI_64BIT)
        struct.pack_into("<HIIH", self.wmask, off + 2, MSI_ENABLE | MSI_MME, 0xFFFFFFFC, 0xFFFFFFFF, 0xFFFF)
        return off

    def msi_enabled(self) -> bool:
        return self.msi_cap is not None and bool(self.config[self.msi_cap + 2] & MSI_ENABLE)

    def msi_notify(self) -> None:
        """Send the MSI message (address 4h/8h, data Ch of the capability)."""
        address, data = struct.unpack_from("<QH", self.config, self.msi_cap + 4)
        if self.bus is not None:
            self.bus.msi(self, address, data)

    # -- what devices override -------------------------------------------
    def bar_read(self, bar: int, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        pass

    # -- interrupts ------------------------------------------------------
    def set_irq(self, level: bool) -> None:
        """Drive this function's INTx# pin (level-triggered, shared)."""
        level = bool(level)
        status = self.config[STATUS]
        self.config[STATUS] = status | STATUS_INTERRUPT if level else status & ~STATUS_INTERRUPT
        if self.config_read(COMMAND, 2) & CMD_INTX_DISABLE:
            level = False
        if level != self.irq_level:
            self.irq_level = level
            if self.bus is not None:
                self.bus.irq_changed()


class _BarWindow:
    """Adapts a function's BAR to the bus protocols (offset from the BAR)."""

    def __init__(self, function, index, base):
        self.function, self.index, self.base = function, index, base

    def mmio_read(self, offset, size):
        return self.function.bar_read(self.index, offset, size)

    def mmio_write(self, offset, size, value):
        self.function.bar_write(self.index, offset, size, value)

    def io_read(self, port, size):
        return self.function.bar_read(self.index, port - self.base, size)

    def io_write(self, port, size, value):
        self.function.bar_write(self.index, port - self.base, size, value)


class I440fxHostBridge(PciFunction):
    """00.0: the i440FX PCI and memory controller, as QEMU presents it, plus
    the DEV capability block of an AMD host bridge (APM vol 2, 15.24.4:
    DEV_HDR, DEV_OP, DEV_DATA; capability ID 0Fh), through which software
    reaches the Device Exclusion Vector's registers (memory/dev.py).  The
    manual puts the block in "the Northbridge's host bridge" without an
    offset; svmsim's is at F0h (where AMD's family 10h northbridge had it)."""
    vendor_id, device_id, revision = 0x8086, 0x1237, 0x02
    class_code = 0x060000                       # host bridge

    def __init__(self):
        super().__init__()
        self.config[SMRAM] = SMRAM_RESET
        self.wmask[SMRAM] = SMRAM_WRITABLE
        self.add_capability(DEV_CAP_ID, 12, DEV_CAP_OFFSET)   # DEV_HDR: type 000b, no MCE/interrupt reporting
        struct.pack_into("<H", self.wmask, DEV_CAP_OFFSET + 4, 0xFFFF)   # DEV_OP: FUNCTION, INDEX

    def _dev(self):
        return self.bus.machine.dev

    def _op(self):
        op = self.config_read(DEV_CAP_OFFSET + 4, 2)
        return op >> 8, op & 0xFF

    def config_read(self, offset, size):
        data = DEV_CAP_OFFSET + 8
        if data <= offset < data + 4 and self.bus is not None:
            return self._dev().read(*self._op()) >> (8 * (offset - data)) & ((1 << (8 * size)) - 1)
        return super().config_read(offset, size)

    @property
    def smram(self) -> int:
        """The SMRAM control register (82441FX datasheet, 72h)."""
        return self.config[SMRAM]

    def _smram_write(self, value):
        """G_SMRAME (bit 3), D_LCK (4), D_CLS (5), D_OPEN (6); C_BASE_SEG 010b
        read-only.  D_LCK forces D_OPEN to 0 and makes G_SMRAME and D_LCK
        read-only until reset (QEMU 7.2 leaves D_LCK unimplemented)."""
        old = self.config[SMRAM]
        if old & SMRAM_D_LCK:
            value = (value & SMRAM_D_CLS) | (old & ~SMRAM_D_CLS & ~SMRAM_D_OPEN)
        elif value & SMRAM_D_LCK:
            value &= ~SMRAM_D_OPEN
        self.config[SMRAM] = (value & SMRAM_WRITABLE) | SMRAM_RESET
        if self.bus is not None:
            from ..memory import smram
            smram.update(self.bus.machine)

    def config_write(self, offset, size, value):
        if offset <= SMRAM < offset + size:
            old = self.config[SMRAM]
            super().config_write(offset, size, value)
            self.config[SMRAM] = old
            self._smram_write((value >> (8 * (SMRAM - offset))) & 0xFF)
            return
        data = DEV_CAP_OFFSET + 8
        if data <= offset < data + 4 and self.bus is not None:
            dev, (function, index) = self._dev(), self._op()
            shift, mask = 8 * (offset - data), ((1 << (8 * size)) - 1) << 8 * (offset - data)
            old = dev.read(function, index)
            dev.write(function, index, old & ~mask | value << shift & mask)
            return
        super().config_write(offset, size, value)


class Piix3IsaBridge(PciFunction):
    """01.0: the PIIX3 PCI-to-ISA bridge; owns the PIRQ routing registers."""
    vendor_id, device_id, revision = 0x8086, 0x7000, 0x00
    class_code = 0x060100                       # ISA bridge
    header_type = HEADER_MULTIFUNCTION

    def __init__(self):
        super().__init__()
        for i in range(4):
            self.config[PIRQ_ROUTE + i] = 0x80  # PIRQRC reset: routing disabled
            self.wmask[PIRQ_ROUTE + i] = 0x8F

    def config_write(self, offset, size, value):
        super().config_write(offset, size, value)
        if offset < PIRQ_ROUTE + 4 and offset + size > PIRQ_ROUTE and self.bus is not None:
            self.bus.irq_changed()

    def route(self, pirq: int):
        """ISA IRQ for PIRQ A..D (0..3), or None while disabled."""
        r = self.config[PIRQ_ROUTE + pirq]
        return None if r & 0x80 else r & 0x0F


class Piix4Pm(PciFunction):
    """01.3: the PIIX4 power-management function of QEMU's pc
    (hw/acpi/piix4.c), as SeaBIOS leaves it (PMBA 600h, SMBus base 700h).
    svmsim models its APM control: DEVACTB.APMC_EN (5Bh bit 1) lets a write
    to port B2h raise an SMI (devices/apm.py); the ACPI and SMBus I/O
    registers behind PMBA and SMBBA are not modelled."""
    vendor_id, device_id, revision = 0x8086, 0x7113, 0x03
    class_code = 0x068000                       # bridge, other
    interrupt_pin = 1
    DEVACTB = 0x58
    APMC_EN = 1 << 25

    def __init__(self):
        super().__init__()
        c = self.config
        struct.pack_into("<I", c, 0x40, 0x601)             # PMBA
        struct.pack_into("<I", c, self.DEVACTB, self.APMC_EN)
        c[0x80] = 0x01                                      # PMREGMISC: PM I/O enabled
        struct.pack_into("<I", c, 0x90, 0x701)             # SMBBA
        c[0xD2] = 0x09                                      # SMBus host enabled
        struct.pack_into("<I", self.wmask, self.DEVACTB, 0xFFFFFFFF)

    @property
    def apmc_enabled(self) -> bool:
        return bool(self.config_read(self.DEVACTB, 4) & self.APMC_EN)


class PciBus:
    """Bus 0 behind the host bridge, reached through ports CF8h/CFCh."""

    def __init__(self, machine):
        self.machine = machine
        self.functions: dict[tuple[int, int], PciFunction] = {}
        self.config_address = 0
        self._isa_asserted = set()            # ISA IRQs the PIRQs drive now
        self.host = self.add(I440fxHostBridge(), 0)
        self.isa = self.add(Piix3IsaBridge(), 1)
        self.pm = self.add(Piix4Pm(), 1, 3)

    def register(self, machine=None):
        io = (machine or self.machine).io
        io.register(CONFIG_ADDRESS, 1, self)   # 0xCF9 stays the reset control register
        io.register(CONFIG_DATA, 4, self)

    def free_slot(self, first: int = 2) -> int:
        """The first empty slot from ``first`` on (QEMU's automatic addr=)."""
        for slot in range(first, 32):
            if not any((slot, fn) in self.functions for fn in range(8)):
                return slot
        raise ValueError("PCI bus 0 is full")

    def add(self, function: PciFunction, slot: int, fn: int = 0) -> PciFunction:
        if not 0 <= slot < 32 or not 0 <= fn < 8:
            raise ValueError(f"PCI slot {slot}.{fn} out of range")
        if (slot, fn) in self.functions:
            raise ValueError(f"PCI slot {slot:02x}.{fn} is taken")
        function.bus, function.slot, function.fn = self, slot, fn
        self.functions[(slot, fn)] = function
        return function

    # -- configuration mechanism #1 (PCI 3.0, 3.2.2.3.2) ---------------------
    def io_read(self, port, size):
        if port == CONFIG_ADDRESS:
            return self.config_address & ((1 << (8 * size)) - 1)
        function, offset = self._target(port)
        if function is None or offset + size > 256:
            return (1 << (8 * size)) - 1
        return function.config_read(offset, size)

    def io_write(self, port, size, value):
        if port == CONFIG_ADDRESS:
            if size == 4:                   # only dword writes latch the address (QEMU too)
                self.config_address = value
            return
        function, offset = self._target(port)
        if function is not None and offset + size <= 256:
            function.config_write(offset, size, value)

    def _target(self, port):
        a = self.config_address
        if not a & 0x80000000 or (a >> 16) & 0xFF:         # disabled, or not bus 0
            return None, 0
        slot, fn = (a >> 11) & 0x1F, (a >> 8) & 0x7
        function = self.functions.get((slot, fn))
        first = self.functions.get((slot, 0))
        if fn and (first is None or not first.header_type & HEADER_MULTIFUNCTION):
            function = None                 # functions 1-7 exist only beside a multi-function 0
        return function, (a & 0xFC) + (port - CONFIG_DATA)

    # -- BAR decoding --------------------------------------------------------
    def remap(self, function, index, old, new):
        bar = function.bars[index]
        m = self.machine
        if old is not None:
            if bar.io:
                m.io.unregister(old, bar.size)
            else:
                m.bus.remove_mmio(old)
        if new is not None:
            window = _BarWindow(function, index, new)
            if bar.io:
                m.io.register(new, bar.size, window)
            else:
                m.bus.add_mmio(new, bar.size, window,
                               f"pci {function.slot:02x}.{function.fn} BAR{index}")

    # -- interrupts ----------------------------------------------------------
    def msi(self, function, address: int, data: int) -> None:
        """An MSI write reaches the local APICs as an interrupt message (the
        x86 format: destination ID in address bits 19:12, DM bit 2; vector in
        data bits 7:0, delivery mode 10:8, trigger mode 15), not memory."""
        from .apic import deliver_interrupt
        if address >> 20 != 0xFEE:
            self.machine.note(f"MSI of pci {function.slot:02x}.{function.fn} to {address:#x}, "
                              "outside FEEx_xxxxh: dropped")
            return
        deliver_interrupt(self.machine, (address >> 12) & 0xFF, bool(address & 4),
                          (data >> 8) & 7, data & 0xFF, bool(data & 0x8000))


    def pirq_of(self, function) -> int:
        """PIRQ line of a function's pin as QEMU's PIIX3 wires it
        (pci_slot_get_pirq): INTx of slot s drives PIRQ (x + s - 1) mod 4."""
        return (function.interrupt_pin - 1 + function.slot - 1) & 3

    def irq_changed(self) -> None:
        """Recompute PIRQ A..D from every function's pin and drive the ISA
        IRQs they are routed to (a line several PIRQs share is their OR): the
        8259 and the I/O APIC pin of that IRQ, as any ISA interrupt."""
        levels = [False] * 4
        for f in self.functions.values():
            if f.irq_level and f.interrupt_pin:
                levels[self.pirq_of(f)] = True
        isa = {self.isa.route(p) for p in range(4) if levels[p]} - {None}
        for line in isa ^ self._isa_asserted:
            self.machine.raise_irq(line, line in isa)
        self._isa_asserted = isa


def attach(machine) -> PciBus:
    machine.pci = PciBus(machine)
    machine.pci.register()
    return machine.pci
