"""QEMU's ``edu`` device: the educational PCI device (1234:11e8) with
registers, a factorial unit, a DMA engine and an interrupt (INTx or MSI).

Registers as QEMU's docs/specs/edu.rst documents them and hw/misc/edu.c
(QEMU 7.2) implements them, in BAR 0 (1 MiB of memory space):

* 00h identification 010000EDh; 04h liveness (reads back the inverse of
  what was written); 08h factorial (writing N starts computing N!,
  modulo 2**32); 20h status (bit 0 computing, bit 7 raise interrupt 1 when
  done); 24h interrupt status; 60h raise (OR into 24h); 64h acknowledge;
* 80h DMA source, 88h DMA destination, 90h count, 98h command (bit 0
  start, bit 1 direction: 0 RAM -> device, 1 device -> RAM; bit 2 raise
  interrupt 100h when done).  The device side of a transfer is its 4 KiB
  buffer at 40000h; bus addresses are cut to the device's 28-bit DMA mask.
  Writes to the DMA registers are ignored while a transfer runs.
* Accesses must be 4 or 8 bytes (QEMU refuses other sizes before the
  device sees them: reads 0, writes dropped); below 80h the device takes
  only 4-byte ones (8-byte reads give all ones).  A
  misaligned read returns the bytes of the two aligned reads it spans (as
  a CPU's byte-enabled reads and QEMU TCG give); a misaligned write is
  dropped.

The device raises INTA# (routed by the PIIX3 and to I/O APIC pin 16 + its
PIRQ) or, once the guest enabled its MSI capability, an MSI.  Its DMA goes
through the platform's DMA port (memory/dma.py), so the Device Exclusion
Vector and the SEV-SNP RMP apply, and an SEV guest's private pages read as
ciphertext.

Timing is svmsim's: QEMU computes the factorial in a thread and starts a
transfer 100 ms of virtual time after the command; svmsim takes
``FACT_NS`` and ``DMA_NS`` of virtual time, so a driver must poll or wait
for the interrupt as on QEMU.  A transfer outside the device buffer (QEMU
7.2 aborts with hw_error) transfers nothing and is noted in the run report.
"""
from .pci import Bar, PciFunction, CMD_MASTER

ID = 0x010000ED
FACT_IRQ, DMA_IRQ = 0x001, 0x100
STATUS_COMPUTING, STATUS_IRQFACT = 0x01, 0x80
DMA_RUN, DMA_TO_RAM, DMA_IRQ_EN = 0x1, 0x2, 0x4
BUFFER, BUFFER_SIZE = 0x40000, 4096
DMA_MASK = (1 << 28) - 1
FACT_NS = 1_000               # svmsim's factorial latency (virtual ns)
DMA_NS = 10_000               # svmsim's DMA start latency (QEMU: 100 ms)
REGS64 = {0x80: "src", 0x88: "dst", 0x90: "cnt", 0x98: "cmd"}


class Edu(PciFunction):
    vendor_id, device_id, revision = 0x1234, 0x11E8, 0x10
    class_code = 0x00FF00                 # QEMU's PCI_CLASS_OTHERS (FFh) in the subclass byte
    subsystem = (0x1AF4, 0x1100)          # QEMU's default subsystem IDs
    interrupt_pin = 1                     # INTA#
    bars = (Bar(1 << 20),)

    def __init__(self, machine):
        super().__init__()
        self.machine = machine
        self.add_msi()
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma = {"src": 0, "dst": 0, "cnt": 0, "cmd": 0}
        self.buffer = bytearray(BUFFER_SIZE)
        self.port = None

    def register(self, machine=None):
        m = machine or self.machine
        from ..memory.dma import DmaPort
        slot = m.pci.free_slot()
        m.pci.add(self, slot)
        self.port = DmaPort(m, f"edu (pci {slot:02x}.0)", requester=(0, slot << 3))
        m.edu = self

    # -- interrupt ----------------------------------------------------------
    def raise_irq(self, value: int) -> None:
        self.irq_status |= value
        if self.irq_status:
            if self.msi_enabled():
                self.msi_notify()
            else:
                self.set_irq(True)

    def lower_irq(self, value: int) -> None:
        self.irq_status &= ~value
        if not self.irq_status and not self.msi_enabled():
            self.set_irq(False)

    # -- registers ------------------------------------------------------------
    @staticmethod
    def _valid(offset, size):
        """QEMU's access check (4 or 8 bytes); the device then ignores 8-byte
        accesses below 80h (reads all ones)."""
        return size in (4, 8)

    def bar_read(self, bar, offset, size):
        if not self._valid(offset, size):
            return 0                      # refused by QEMU's access checks: reads 0
        shift = offset % size * 8
        if shift:
            base = offset - shift // 8
            both = self._read(base, size) | self._read(base + size, size) << (8 * size)
            return both >> shift & ((1 << (8 * size)) - 1)
        return self._read(offset, size)

    def _read(self, offset, size):
        if offset in REGS64:
            return self.dma[REGS64[offset]] & ((1 << (8 * size)) - 1)
        value = {0x00: ID, 0x04: self.addr4, 0x08: self.fact, 0x20: self.status,
                 0x24: self.irq_status}.get(offset)
        if value is None or offset < 0x80 and size != 4:
            return (1 << (8 * size)) - 1
        return value

    def bar_write(self, bar, offset, size, value):
        if not self._valid(offset, size) or offset % size or offset < 0x80 and size != 4:
            return
        if offset == 0x04:
            self.addr4 = ~value & 0xFFFFFFFF
        elif offset == 0x08:
            self._start_factorial(value & 0xFFFFFFFF)
        elif offset == 0x20:
            self.status = (self.status | STATUS_IRQFACT if value & STATUS_IRQFACT
                           else self.status & ~STATUS_IRQFACT)
        elif offset == 0x60:
            self.raise_irq(value & 0xFFFFFFFF)
        elif offset == 0x64:
            self.lower_irq(value & 0xFFFFFFFF)
        elif offset in REGS64:
            self._dma_register(REGS64[offset], value)

    # -- factorial unit -------------------------------------------------------
    def _start_factorial(self, n: int) -> None:
        if self.status & STATUS_COMPUTING:
            return
        self.fact = n
        self.status |= STATUS_COMPUTING
        m = self.machine
        m.clock.add_timer(m.clock.now_ns + FACT_NS, self._factorial_done)

    def _factorial_done(self) -> None:
        n, result = self.fact, 1
        while n > 0:
            result = result * n & 0xFFFFFFFF
            n -= 1
        self.fact = result
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQFACT:
            self.raise_irq(FACT_IRQ)

    # -- DMA engine -----------------------------------------------------------
    def _dma_register(self, name: str, value: int) -> None:
        if self.dma["cmd"] & DMA_RUN:
            return                        # registers are frozen while a transfer runs
        if name == "cmd" and not value & DMA_RUN:
            return
        self.dma[name] = value
        if name == "cmd":
            m = self.machine
            m.clock.add_timer(m.clock.now_ns + DMA_NS, self._dma_transfer)

    def _dma_transfer(self) -> None:
        d = self.dma
        if not d["cmd"] & DMA_RUN:
            return
        to_ram = d["cmd"] & DMA_TO_RAM
        local, bus_addr, n = (d["src"], d["dst"], d["cnt"]) if to_ram else (d["dst"], d["src"], d["cnt"])
        if not (BUFFER <= local and n > 0 and local + n <= BUFFER + BUFFER_SIZE):
            self.machine.note(f"edu: DMA of {n:#x} bytes at device offset {local:#x} is outside its "
                              f"buffer {BUFFER:#x}-{BUFFER + BUFFER_SIZE - 1:#x}: nothing transferred "
                              "(QEMU 7.2 aborts)")
        elif not self.config_read(0x04, 2) & CMD_MASTER:
            self.machine.note("edu: DMA with Bus Master Enable clear in the command register: "
                              "nothing transferred")
        else:
            off, addr = local - BUFFER, bus_addr & DMA_MASK
            if to_ram:
                self.port.write_bytes(addr, bytes(self.buffer[off:off + n]))
            else:
                self.buffer[off:off + n] = self.port.read_bytes(addr, n)
        d["cmd"] &= ~DMA_RUN
        if d["cmd"] & DMA_IRQ_EN:
            self.raise_irq(DMA_IRQ)


OPTIONAL = {"edu": Edu}
