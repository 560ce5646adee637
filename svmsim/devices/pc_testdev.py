"""QEMU's ``pc-testdev`` (hw/misc/pc-testdev.c), the ISA test device that
kvm-unit-tests' x86 runner adds with ``-device pc-testdev``.

Registers, as QEMU maps them:

* ports E0h-E3h: a 32-bit scratch register; an access of any width reaches
  the bytes at its offset (``outb 0xe1`` writes bits 15:8);
* ports E4h-E7h: "flush page": a 32-bit write names a guest page whose host
  mapping QEMU drops and re-creates; nothing a guest can observe changes,
  so svmsim accepts the write and does nothing;
* ports E8h-EBh: the same scratch register, one byte at a time;
* ports 2000h-2017h: one byte per interrupt line: writing V drives ISA/GSI
  line (port - 2000h) to V != 0 (lines 0-15 reach the 8259 pair and the
  I/O APIC as an ISA device's IRQ does, 16-23 the I/O APIC only);
* MMIO FF00_0000h-FF00_FFFFh: 64 KiB of device memory that reads back what
  was written.
"""
SCRATCH, FLUSH, SCRATCH_BYTE, IRQ_BASE = 0xE0, 0xE4, 0xE8, 0x2000
IRQ_LINES = 24
IOMEM_BASE, IOMEM_SIZE = 0xFF000000, 0x10000


class PcTestdev:
    def __init__(self, machine):
        self.machine = machine
        self.data = 0
        self.iomem = bytearray(IOMEM_SIZE)

    def register(self, machine=None):
        m = machine or self.machine
        for base in (SCRATCH, FLUSH, SCRATCH_BYTE):
            m.io.register(base, 4, self)
        m.io.register(IRQ_BASE, IRQ_LINES, self)
        m.bus.add_mmio(IOMEM_BASE, IOMEM_SIZE, self, "pc-testdev")

    # -- ports ---------------------------------------------------------------
    def io_read(self, port, size):
        if port >= IRQ_BASE or FLUSH <= port < FLUSH + 4:
            return 0                               # write-only registers
        shift = 8 * (port & 3)
        return (self.data >> shift) & ((1 << (8 * size)) - 1)

    def io_write(self, port, size, value):
        if port >= IRQ_BASE:
            if size == 1:                          # QEMU: byte accesses only
                self._irq(port - IRQ_BASE, bool(value))
            return
        if FLUSH <= port < FLUSH + 4:
            return                                 # host-side page flush: invisible
        shift = 8 * (port & 3)
        mask = (((1 << (8 * size)) - 1) << shift) & 0xFFFFFFFF
        self.data = (self.data & ~mask) | ((value << shift) & mask)

    def _irq(self, line, level):
        m = self.machine
        if line < 16:
            m.raise_irq(line, level)
        elif m.ioapic is not None:
            m.ioapic.set_irq(line, level)

    # -- device memory -------------------------------------------------------
    def mmio_read(self, offset, size):
        return int.from_bytes(self.iomem[offset:offset + size], "little")

    def mmio_write(self, offset, size, value):
        self.iomem[offset:offset + size] = value.to_bytes(8, "little")[:size]


OPTIONAL = {"pc-testdev": PcTestdev}
