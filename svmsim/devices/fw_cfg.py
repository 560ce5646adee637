"""QEMU's firmware configuration device, x86 I/O-port flavour.

Reference: QEMU docs/specs/fw_cfg.rst, hw/nvram/fw_cfg.c and
include/standard-headers/linux/qemu_fw_cfg.h (item keys, struct layouts).

Ports (as QEMU's fw_cfg_io at 0x510 with DMA):
* 0x510, 16-bit write: select an item (resets the data offset).
* 0x510 or 0x511, 8-bit read: next data byte (0 past the end).  Other
  widths are invalid accesses: reads give 0, writes are ignored; 8-bit
  writes are the data-write channel, removed in QEMU 2.4, so ignored.
* 0x514-0x51B, DMA: reads give the signature "QEMU CFG" byte by byte; a
  32-bit write at 0x514 sets the high half and one at 0x518 the low half
  of the (big-endian) address of a ``FWCfgDmaAccess`` and starts it.

``FWCfgDmaAccess`` (big-endian): u32 control, u32 length, u64 address.
Control bits: ERROR 0x01, READ 0x02, SKIP 0x04, SELECT 0x08 (key in bits
31:16), WRITE 0x10.  When done the device stores 0 into ``control``, or
ERROR (e.g. a write: no item here is writable).

Items are stored little-endian (fw_cfg_add_i16/i32/i64); the file
directory (key 0x19) is big-endian: u32 count, then per file u32 size,
u16 select, u16 reserved, char name[56].  Like QEMU it has room for 32
files and files are sorted by name (non-legacy machine types).
"""
import struct

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_KERNEL_SIZE = 0x08
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_CMDLINE_SIZE = 0x14
FW_CFG_CMDLINE_DATA = 0x15
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = ~(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL) & 0xFFFF
FW_CFG_INVALID = 0xFFFF
FW_CFG_MAX_FILE_PATH = 56

FW_CFG_VERSION, FW_CFG_VERSION_DMA = 0x01, 0x02
DMA_CTL_ERROR, DMA_CTL_READ, DMA_CTL_SKIP = 0x01, 0x02, 0x04
DMA_CTL_SELECT, DMA_CTL_WRITE = 0x08, 0x10
DMA_SIGNATURE = b"QEMU CFG"

E820_RAM, E820_RESERVED = 1, 2

PORT_CTL, PORT_DATA, PORT_DMA = 0x510, 0x511, 0x514


def e820_table(ranges, kind=E820_RAM) -> bytes:
    """``struct e820_entry`` array: u64 address, u64 length, u32 type (LE)."""
    return b"".join(struct.pack("<QQI", spa, length, kind) for spa, length in ranges)


class FwCfg:
    def __init__(self, machine, cmdline: str = "", ncpus: int = 1,
                 kernel_size: int = 0, max_cpus: int = None, uuid: bytes = bytes(16)):
        self.machine = machine
        from ..memory.dma import DmaPort
        # DMA: straight to DRAM, with the platform's checks; upstream through the PIIX3 (00:01.0)
        self.dma_bus = DmaPort(machine, "fw_cfg", requester=(0, 1 << 3))
        self.items: dict[int, bytes] = {}
        self.files: list[tuple[str, bytes]] = []
        self.cur_entry = FW_CFG_SIGNATURE
        self.cur_offset = 0
        self.dma_addr = 0
        ranges = list(machine.bus.ram_ranges())
        config = getattr(machine, "config", None)
        ram_size = getattr(config, "mem_size", None) or sum(n for _, n in ranges)
        self.items[FW_CFG_SIGNATURE] = b"QEMU"
        self.items[FW_CFG_ID] = struct.pack("<I", FW_CFG_VERSION | FW_CFG_VERSION_DMA)
        self.items[FW_CFG_UUID] = bytes(uuid)
        self.items[FW_CFG_RAM_SIZE] = struct.pack("<Q", ram_size)
        self.items[FW_CFG_NB_CPUS] = struct.pack("<H", ncpus)
        self.items[FW_CFG_MAX_CPUS] = struct.pack("<H", max_cpus or ncpus)
        self.set_kernel_size(kernel_size)
        self.set_cmdline(cmdline)
        self.add_file("etc/e820", e820_table(ranges))

    def set_cmdline(self, cmdline: str):
        """-append: FW_CFG_CMDLINE_SIZE counts the NUL that DATA ends with."""
        cmd = cmdline.encode("utf-8", "surrogateescape") + b"\0"   # argv bytes, as QEMU passes them
        self.items[FW_CFG_CMDLINE_SIZE] = struct.pack("<I", len(cmd))
        self.items[FW_CFG_CMDLINE_DATA] = cmd

    def set_kernel_size(self, size: int):
        self.items[FW_CFG_KERNEL_SIZE] = struct.pack("<I", size)

    def register(self, machine=None):
        io = (machine or self.machine).io
        io.register(PORT_CTL, 2, self)
        io.register(PORT_DMA, 8, self)

    # -- items ------------------------------------------------------------
    def add_file(self, name: str, data: bytes) -> int:
        """Add (or replace) a named file; returns its selector key."""
        self.files = [(n, d) for n, d in self.files if n != name]
        if len(self.files) >= FW_CFG_FILE_SLOTS:
            raise ValueError("fw_cfg: no free file slot")
        self.files.append((name, bytes(data)))
        self.files.sort(key=lambda f: f[0].encode())
        self._rebuild_directory()
        return self.file_key(name)

    def file_key(self, name: str):
        for i, (n, _) in enumerate(self.files):
            if n == name:
                return FW_CFG_FILE_FIRST + i
        return None

    def _rebuild_directory(self):
        for key in range(FW_CFG_FILE_FIRST, FW_CFG_FILE_FIRST + FW_CFG_FILE_SLOTS):
            self.items.pop(key, None)
        out = bytearray(struct.pack(">I", len(self.files)))
        for i, (name, data) in enumerate(self.files):
            key = FW_CFG_FILE_FIRST + i
            self.items[key] = data
            raw = name.encode()[:FW_CFG_MAX_FILE_PATH - 1]
            out += struct.pack(">IHH56s", len(data), key, 0, raw)
        out += bytes(64 * (FW_CFG_FILE_SLOTS - len(self.files)))
        self.items[FW_CFG_FILE_DIR] = bytes(out)

    def select(self, key: int):
        self.cur_offset = 0
        key &= 0xFFFF
        if key & FW_CFG_ENTRY_MASK >= FW_CFG_FILE_FIRST + FW_CFG_FILE_SLOTS:
            self.cur_entry = FW_CFG_INVALID
        else:
            self.cur_entry = key

    def _current(self):
        """Data of the selected item, or None (invalid, arch-local, empty)."""
        if self.cur_entry == FW_CFG_INVALID or self.cur_entry & FW_CFG_ARCH_LOCAL:
            return None
        return self.items.get(self.cur_entry & FW_CFG_ENTRY_MASK)

    def read_byte(self):
        data = self._current()
        if data is None or self.cur_offset >= len(data):
            return 0
        self.cur_offset += 1
        return data[self.cur_offset - 1]

    # -- ports ------------------------------------------------------------
    def io_read(self, port, size):
        if port in (PORT_CTL, PORT_DATA):
            return self.read_byte() if size == 1 else 0
        offset = port - PORT_DMA
        if 0 <= offset and offset + size <= 8:
            return int.from_bytes(DMA_SIGNATURE[offset:offset + size], "little")
        return 0

    def io_write(self, port, size, value):
        if port == PORT_CTL and size == 2:
            self.select(value)
        elif port == PORT_DMA and size == 4:
            self.dma_addr = _bswap32(value) << 32
        elif port == PORT_DMA + 4 and size == 4:
            self.dma_addr |= _bswap32(value)
            self.dma_transfer()
        # everything else: invalid or the removed data-write channel

    # -- DMA --------------------------------------------------------------
    def dma_transfer(self):
        addr, self.dma_addr = self.dma_addr, 0
        control, length, address = struct.unpack(">IIQ", self.dma_bus.read_bytes(addr, 16))
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        if control & DMA_CTL_READ:
            op = "read"
        elif control & DMA_CTL_WRITE:
            op = "write"
        elif control & DMA_CTL_SKIP:
            op = "skip"
        else:
            length = 0
        status = 0
        if length and op == "write":
            status = DMA_CTL_ERROR          # no item accepts guest writes
        elif length:
            self._dma_copy(op, address, length)
        self.dma_bus.write_bytes(addr, struct.pack(">I", status))

    def _dma_copy(self, op, address, length):
        data = self._current() or b""
        start = min(self.cur_offset, len(data))
        chunk = data[start:start + length]
        if chunk:
            self.cur_offset = start + len(chunk)
        if op != "read":
            return
        self.dma_bus.write_bytes(address, chunk)
        # Past the end of the item the device fills with zeros; a huge
        # length is cut where RAM ends (further writes would be dropped).
        pos, end = address + len(chunk), address + length
        ram_end = max((spa + n for spa, n in self.machine.bus.ram_ranges()), default=0)
        end = min(end, max(ram_end, pos))
        while pos < end:
            n = min(end - pos, 1 << 20)
            self.dma_bus.write_bytes(pos, bytes(n))
            pos += n


def _bswap32(value):
    return int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")
