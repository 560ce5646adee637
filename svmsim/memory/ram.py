"""Guest RAM: one anonymous mapping, so the host pays only for touched pages.

An anonymous ``mmap`` is zero-filled lazily by the host kernel: a machine
started with ``-m 4g`` costs only what the guest writes (issue 2, item 9).
"""
import mmap

PAGE_SIZE = 4096
PAGE_SHIFT = 12


class Ram:
    """Host storage for guest DRAM, addressed by *RAM offset* (not by SPA)."""

    def __init__(self, size: int):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError("RAM size must be a positive multiple of 4 KiB")
        self.size = size
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def read(self, off: int, size: int) -> int:
        return int.from_bytes(self.buf[off:off + size], "little")

    def write(self, off: int, size: int, value: int) -> None:
        self.buf[off:off + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")

    def read_bytes(self, off: int, n: int) -> bytes:
        return self.buf[off:off + n]

    def write_bytes(self, off: int, data: bytes) -> None:
        self.buf[off:off + len(data)] = data
