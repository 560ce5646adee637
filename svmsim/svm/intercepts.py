"""The VMCB intercept vectors, the MSR permission map and the I/O permission
map, as data plus three lookups.

Sources (facts only): APM vol 2, Appendix B table B-1 (intercept words at
000h-014h), Appendix C (exit codes), 15.10.1 "I/O Permissions Map", 15.11
"MSR Intercepts"; cross-checked with Linux arch/x86/include/asm/svm.h
(enum intercept bits) and Xen hvm/svm/vmcb.h.

Intercept words and what bit n of each means:

* 000h INTERCEPT_CR: bits 15:0 read CRn -> exit 0x000+n, 31:16 write -> 0x010+n
* 004h INTERCEPT_DR: bits 15:0 read DRn -> 0x020+n, 31:16 write -> 0x030+n
* 008h INTERCEPT_EXCEPTION: bit n -> 0x040+n
* 00Ch INTERCEPT_MISC1 (word 3): bit n -> 0x060+n (INTR ... SHUTDOWN)
* 010h INTERCEPT_MISC2 (word 4): bits 0-14 -> 0x080+n (VMRUN ... RDPRU),
  bit 15 -> 0x08F EFER write trap, bits 16-31 -> 0x090+n CRn write traps
* 014h INTERCEPT_MISC3 (word 5): bits 0-6 -> 0x0A0+n (INVLPGB ... IDLE_HLT)
"""
from dataclasses import dataclass

from .exits import ExitCode

WORD_NAMES = ("INTERCEPT_CR", "INTERCEPT_DR", "INTERCEPT_EXCEPTION",
              "INTERCEPT_MISC1", "INTERCEPT_MISC2", "INTERCEPT_MISC3")
WORD_OFFSETS = (0x000, 0x004, 0x008, 0x00C, 0x010, 0x014)

# Exits that no intercept bit controls: they always happen when their
# feature is on (nested paging, AVIC, SEV-ES VMGEXIT).
UNCONDITIONAL = frozenset({ExitCode.NPF, ExitCode.AVIC_INCOMPLETE_IPI,
                           ExitCode.AVIC_NOACCEL, ExitCode.VMGEXIT})


@dataclass(frozen=True)
class Intercept:
    word: int            # index 0-5 into WORD_NAMES
    offset: int          # VMCB byte offset of the word
    bit: int
    exit_code: ExitCode
    name: str            # the exit code's name


def _table():
    rows = []                                   # (word, bit, exit code)
    for w, base in ((0, 0x000), (1, 0x020)):    # CR, DR: read 15:0, write 31:16
        rows += [(w, b, base + b) for b in range(32)]
    rows += [(2, b, 0x040 + b) for b in range(32)]
    rows += [(3, b, 0x060 + b) for b in range(32)]
    rows += [(4, b, 0x080 + b) for b in range(15)]
    rows += [(4, 15, 0x08F)]
    rows += [(4, b, 0x090 + b - 16) for b in range(16, 32)]
    rows += [(5, b, 0x0A0 + b) for b in range(7)]
    return tuple(Intercept(w, WORD_OFFSETS[w], b, ExitCode(c), ExitCode(c).name)
                 for w, b, c in rows)


INTERCEPTS = _table()
BY_EXIT = {i.exit_code: i for i in INTERCEPTS}


def read_words(view) -> tuple:
    """The six intercept words of a VmcbView (or name -> value mapping), to
    cache at VMRUN (they are covered by clean bit 0, APM vol 2, 15.15.3)."""
    return tuple(view[name] for name in WORD_NAMES)


def intercepted(view_or_words, exit_code: int) -> bool:
    """True if the intercept bit for ``exit_code`` is set.

    ``view_or_words`` is a VmcbView / mapping, or the tuple ``read_words``
    returns.  Exits no bit controls (NPF, AVIC, VMGEXIT) give True; codes
    that are not intercepts at all (INVALID, unknown) raise ValueError.
    """
    info = BY_EXIT.get(exit_code)
    if info is None:
        if exit_code in UNCONDITIONAL:
            return True
        raise ValueError(f"exit code {exit_code:#x} has no intercept bit")
    if isinstance(view_or_words, (tuple, list)):
        word = view_or_words[info.word]
    else:
        word = view_or_words[WORD_NAMES[info.word]]
    return bool(word >> info.bit & 1)


def set_intercept(view, exit_code: int, on: bool = True) -> None:
    """Set or clear the intercept bit of ``exit_code`` in a VmcbView."""
    info = BY_EXIT[exit_code]
    name = WORD_NAMES[info.word]
    word = view[name]
    view[name] = word | (1 << info.bit) if on else word & ~(1 << info.bit)


def intercept_names(words) -> list:
    """Names of the set intercepts in a ``read_words`` tuple (for dumps)."""
    return [i.name for i in INTERCEPTS if words[i.word] >> i.bit & 1]


# ---------------------------------------------------------------- MSRPM
# APM vol 2, 15.11: 8 KiB; three 2 KiB vectors of 8K MSRs each, two bits per
# MSR (bit 2n: read, bit 2n+1: write).  MSRs outside the ranges always exit.
MSRPM_SIZE = 0x2000
MSRPM_RANGES = ((0x0000_0000, 0x0000), (0xC000_0000, 0x0800), (0xC001_0000, 0x1000))
MSRS_PER_RANGE = 0x2000


def msrpm_position(msr: int):
    """(byte offset, bit in byte) of ``msr``'s read bit, or None if unmapped."""
    msr &= 0xFFFF_FFFF
    for first, byte_off in MSRPM_RANGES:
        if first <= msr < first + MSRS_PER_RANGE:
            pos = 2 * (msr - first)
            return byte_off + (pos >> 3), pos & 7
    return None


def msr_intercepted(read_bytes_fn, msrpm_pa: int, msr: int, write: bool) -> bool:
    """Does RDMSR (write=False) / WRMSR (write=True) of ``msr`` exit?

    ``read_bytes_fn(pa, n) -> bytes`` reads system-physical memory (e.g.
    PhysBus.read_bytes).  Bits 11:0 of MSRPM_BASE_PA are ignored (table B-1).
    """
    pos = msrpm_position(msr)
    if pos is None:
        return True
    byte_off, bit = pos
    byte = read_bytes_fn((msrpm_pa & ~0xFFF) + byte_off, 1)[0]
    return bool(byte >> (bit + (1 if write else 0)) & 1)


# ---------------------------------------------------------------- IOPM
# APM vol 2, 15.10.1: 12 KiB, one bit per port.  A multi-byte access checks
# the bit of every port it touches; the third page holds the bits above
# 0xFFFF so an access at 0xFFFF of size 2 or 4 reads bits 0x10000-0x10002.
IOPM_SIZE = 0x3000


def io_intercepted(read_bytes_fn, iopm_pa: int, port: int, size: int) -> bool:
    """Does an access of ``size`` bytes (1, 2, 4) at ``port`` exit?"""
    first, last = port & 0xFFFF, (port & 0xFFFF) + size - 1
    data = read_bytes_fn((iopm_pa & ~0xFFF) + (first >> 3), (last >> 3) - (first >> 3) + 1)
    bits = int.from_bytes(data, "little") >> (first & 7)
    return bool(bits & ((1 << size) - 1))
