"""Guest RAM: one anonymous mapping, so the host pays only for touched pages.

An anonymous ``mmap`` is zero-filled lazily by the host kernel: a machine
started with ``-m 4g`` costs only what the guest writes (issue 2, item 9).
The mapping is made with MAP_NORESERVE, so the host does not set aside swap
or commit charge for it: ``-m 64G`` works on a host with less memory, as long
as the guest does not touch more than the host has (issue 13, finding 2).
"""
import mmap
import sys

from ..errors import ConfigError

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# Python 3.11's mmap module does not export MAP_NORESERVE; Linux's value is
# 0x4000 on x86, Arm, RISC-V and s390 (asm-generic/mman.h).
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


class Ram:
    """Host storage for guest DRAM, addressed by *RAM offset* (not by SPA)."""

    def __init__(self, size: int, window: int = 0):
        if size <= 0 or size % PAGE_SIZE or window % PAGE_SIZE:
            raise ValueError("RAM size must be a positive multiple of 4 KiB")
        self.size = size
        # ``window`` bytes past the end of DRAM in the same mapping: the
        # encryption engine's decrypted line slots (memory/enclines.py), which
        # the CPU's fast paths index like RAM.  No physical address reaches
        # them: DRAM is buf[:size].
        self.window = window
        try:
            self.buf = mmap.mmap(-1, size + window, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        except (OSError, OverflowError) as e:
            raise ConfigError(f"cannot map {size >> 20} MiB of guest RAM on this host: {e}") from None
        self._views = None

    def word_views(self) -> dict:
        """RAM as arrays of 2-, 4- and 8-byte words in the host's byte order
        (compiled blocks index them for aligned accesses, cpu/codegen.py);
        released by close()."""
        if self._views is None:
            base = memoryview(self.buf)
            self._views = {1: base, 2: base.cast("H"), 4: base.cast("I"), 8: base.cast("Q")}
        return self._views

    def read(self, off: int, size: int) -> int:
        return int.from_bytes(self.buf[off:off + size], "little")

    def write(self, off: int, size: int, value: int) -> None:
        self.buf[off:off + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")

    def read_bytes(self, off: int, n: int) -> bytes:
        return self.buf[off:off + n]

    def write_bytes(self, off: int, data: bytes) -> None:
        self.buf[off:off + len(data)] = data

    def zero(self, off: int, n: int) -> None:
        """Make ``n`` bytes at ``off`` read as zero.  Whole pages are handed back
        to the host (MADV_DONTNEED: they read as zero and cost nothing until
        touched again); only the partial pages at the ends are written."""
        end = off + n
        first, last = -(-off // PAGE_SIZE) * PAGE_SIZE, end // PAGE_SIZE * PAGE_SIZE
        if last <= first:
            self.buf[off:end] = bytes(n)
            return
        self.buf[off:first] = bytes(first - off)
        self.buf.madvise(mmap.MADV_DONTNEED, first, last - first)
        self.buf[last:end] = bytes(end - last)

    def close(self) -> None:
        """Unmap the RAM (the machine is done with it); idempotent."""
        if self._views is not None:
            for v in reversed(list(self._views.values())):
                v.release()                  # exported views would keep the mapping alive
            self._views = None
        if not self.buf.closed:
            self.buf.close()
