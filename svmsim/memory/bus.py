"""The system physical address space (SPA) and the I/O port space.

The PC layout follows QEMU's ``pc`` machine, so kernels written for QEMU find
their memory where they expect it: RAM from 0 up to ``low_top`` (at most
3 GiB), the rest of RAM from 4 GiB up, and MMIO windows (local APIC at
0xFEE00000, I/O APIC at 0xFEC00000) that take precedence over RAM.

Devices plug in with two small protocols:

* MMIO: ``dev.mmio_read(offset, size) -> int`` and
  ``dev.mmio_write(offset, size, value)``, ``offset`` relative to the window.
* Ports: ``dev.io_read(port, size) -> int`` and ``dev.io_write(port, size, value)``
  with the absolute port number.  Unassigned ports read as all ones and
  ignore writes, as on a PC.

Accesses that cross a page boundary are split by the CPU before they get
here, so a single bus access never spans two regions.
"""
from .ram import Ram, PAGE_SHIFT, PAGE_SIZE

FOUR_GIB = 1 << 32
LOW_RAM_LIMIT = 0xC000_0000  # above this the PCI hole starts (QEMU pc, >3.5G RAM)


class MmioRegion:
    __slots__ = ("base", "end", "dev", "name")

    def __init__(self, base, size, dev, name):
        self.base, self.end, self.dev, self.name = base, base + size, dev, name


class PhysBus:
    """Routes SPA accesses to RAM or to an MMIO device."""

    def __init__(self, ram_size: int, line_window: int = 0):
        self.ram = Ram(ram_size, line_window)
        self.low_top = min(ram_size, LOW_RAM_LIMIT)
        self.high_top = FOUR_GIB + (ram_size - self.low_top)
        self.mmio: list[MmioRegion] = []
        self._mmio_pages: dict[int, MmioRegion] = {}
        # Called with (RAM offset, length) when RAM is written through the
        # slow path, never across a page (the execution engine uses it to
        # drop translated code).
        self.write_watchers: list = []
        # Called with no argument when an MMIO window comes or goes (memoized
        # page walks that read RAM there are dropped, cpu/walkmemo.py).
        self.layout_listeners: list = []
        # DRAM page -> a dirty decrypted line of the CPU's (memory/enclines.py),
        # which ``write_back(page)`` writes to DRAM before the bus reads it.
        self.dirty: dict = {}
        self.write_back = None

    # -- layout -----------------------------------------------------------
    def add_mmio(self, base: int, size: int, dev, name: str = "") -> None:
        region = MmioRegion(base, size, dev, name or type(dev).__name__)
        self.mmio.append(region)
        for page in range(base >> PAGE_SHIFT, (base + size + PAGE_SIZE - 1) >> PAGE_SHIFT):
            self._mmio_pages[page] = region
        for notify in self.layout_listeners:
            notify()

    def remove_mmio(self, base: int) -> None:
        """Drop the MMIO window at ``base`` (a PCI BAR that moved or was disabled)."""
        region = next(r for r in self.mmio if r.base == base)
        self.mmio.remove(region)
        for page in range(base >> PAGE_SHIFT, (region.end + PAGE_SIZE - 1) >> PAGE_SHIFT):
            if self._mmio_pages.get(page) is region:
                del self._mmio_pages[page]
        for notify in self.layout_listeners:
            notify()

    def ram_offset(self, spa: int):
        """RAM offset backing ``spa``, or None for MMIO and unbacked addresses."""
        if (spa >> PAGE_SHIFT) in self._mmio_pages:
            return None
        if spa < self.low_top:
            return spa
        if FOUR_GIB <= spa < self.high_top:
            return spa - FOUR_GIB + self.low_top
        return None

    def mmio_device(self, spa: int):
        """The device of the MMIO window holding ``spa``, or None."""
        region = self._mmio_pages.get(spa >> PAGE_SHIFT)
        return region.dev if region is not None and region.base <= spa < region.end else None

    def dram_offset(self, spa: int):
        """RAM offset of ``spa`` even under an MMIO window (SMRAM, which the
        memory controller shows or hides), or None outside RAM."""
        if spa < self.low_top:
            return spa
        if FOUR_GIB <= spa < self.high_top:
            return spa - FOUR_GIB + self.low_top
        return None

    def ram_ranges(self):
        """[(spa, length)] of RAM, for the firmware memory map."""
        out = [(0, self.low_top)]
        if self.high_top > FOUR_GIB:
            out.append((FOUR_GIB, self.high_top - FOUR_GIB))
        return out

    # -- access -------------------------------------------------------------
    def read(self, spa: int, size: int) -> int:
        region = self._mmio_pages.get(spa >> PAGE_SHIFT)
        if region is not None:
            if region.base <= spa < region.end:
                return region.dev.mmio_read(spa - region.base, size)
            return (1 << (size * 8)) - 1  # unassigned: all ones
        # ram_offset, inlined (page-table walks read through here)
        if spa < self.low_top:
            off = spa
        elif FOUR_GIB <= spa < self.high_top:
            off = spa - FOUR_GIB + self.low_top
        else:
            return (1 << (size * 8)) - 1  # unassigned: all ones
        if self.dirty and off >> PAGE_SHIFT in self.dirty:
            self.write_back(off >> PAGE_SHIFT)
        return int.from_bytes(self.ram.buf[off:off + size], "little")

    def write(self, spa: int, size: int, value: int) -> None:
        region = self._mmio_pages.get(spa >> PAGE_SHIFT)
        if region is not None and region.base <= spa < region.end:
            region.dev.mmio_write(spa - region.base, size, value)
            return
        off = self.ram_offset(spa)
        if off is None:
            return  # unassigned: writes are dropped
        self.ram.buf[off:off + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")
        for watch in self.write_watchers:
            watch(off, size)

    def read_bytes(self, spa: int, n: int) -> bytes:
        """Bulk read for loaders and debuggers (byte-wise across regions)."""
        out = bytearray()
        while n:
            chunk = min(n, PAGE_SIZE - (spa & (PAGE_SIZE - 1)))
            off = self.ram_offset(spa)
            if off is not None:
                if self.dirty and off >> PAGE_SHIFT in self.dirty:
                    self.write_back(off >> PAGE_SHIFT)
                out += self.ram.buf[off:off + chunk]
            else:
                out += bytes(self.read(spa + i, 1) for i in range(chunk))
            spa += chunk
            n -= chunk
        return bytes(out)

    def write_bytes(self, spa: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            chunk = min(len(data) - pos, PAGE_SIZE - (spa & (PAGE_SIZE - 1)))
            off = self.ram_offset(spa)
            if off is not None:
                self.ram.buf[off:off + chunk] = data[pos:pos + chunk]
                for watch in self.write_watchers:
                    watch(off, chunk)
            else:
                for i in range(chunk):
                    self.write(spa + i, 1, data[pos + i])
            spa += chunk
            pos += chunk


    def zero_bytes(self, spa: int, n: int) -> None:
        """Make ``n`` bytes from ``spa`` read as zero (a loader's .bss).  RAM is
        handed back to the host rather than written (Ram.zero), so a kernel
        with a large untouched .bss costs nothing (issue 13, finding 7)."""
        step = 1 << 20
        while n > 0:
            chunk = min(n, step - (spa & (step - 1)))
            off = self.ram_offset(spa)
            pages = range(spa >> PAGE_SHIFT, (spa + chunk - 1 >> PAGE_SHIFT) + 1)
            if (off is None or self.ram_offset(spa + chunk - 1) != off + chunk - 1
                    or any(p in self._mmio_pages for p in pages)):
                self.write_bytes(spa, bytes(chunk))
            else:
                self.ram.zero(off, chunk)
                for watch in self.write_watchers:
                    a = off
                    while a < off + chunk:                 # page by page
                        e = min((a | (PAGE_SIZE - 1)) + 1, off + chunk)
                        watch(a, e - a)
                        a = e
            spa += chunk
            n -= chunk


class IoBus:
    """The 64 Ki I/O port space."""

    def __init__(self):
        self._ports: dict[int, object] = {}

    def register(self, port: int, count: int, dev) -> None:
        for p in range(port, port + count):
            self._ports[p] = dev

    def unregister(self, port: int, count: int) -> None:
        for p in range(port, port + count):
            self._ports.pop(p, None)

    def read(self, port: int, size: int) -> int:
        dev = self._ports.get(port)
        if dev is None:
            return (1 << (size * 8)) - 1
        return dev.io_read(port, size)

    def write(self, port: int, size: int, value: int) -> None:
        dev = self._ports.get(port)
        if dev is not None:
            dev.io_write(port, size, value & ((1 << (size * 8)) - 1))
