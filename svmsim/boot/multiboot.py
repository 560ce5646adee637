"""Multiboot v1 kernel loader, as ``qemu-system-x86_64 -kernel K -append A -initrd M``.

References: the Multiboot Specification 0.6.96 ("the spec"), QEMU's
hw/i386/multiboot.c and its option ROM pc-bios/optionrom/multiboot(_dma).S,
and what QEMU 7.2 (TCG, ``-cpu EPYC``, SeaBIOS) was observed to hand a kernel.

Guest memory after loading (addresses for a kernel linked at 1 MiB)::

    0x00009000  memory map (mmap_addr): 24-byte entries, as the option ROM
                copies them from SeaBIOS's INT 15h E820 table
    0x00009500  multiboot_info (88 bytes); EBX points here
    0x000C02B8  the option ROM's 5-entry GDT (GDTR.base; QEMU's ROM lands here)
    load_addr   the kernel image: PT_LOAD segments at p_paddr (or the a.out
                kludge span), gaps and .bss zeroed
    info block  first page boundary after the image:
                  mods_count x 16-byte module entries   (mods_addr)
                  module command lines, then the kernel's ("<path> <append>")
                  "qemu"                                (boot_loader_name)
    modules     each on its own page boundary after the info block

QEMU builds the same block in one buffer (mb_buf) that its ROM copies to
``load_addr``; its page alignment is relative to ``load_addr``, ours is
absolute, which is identical for page-aligned kernels and keeps the spec's
page-alignment promise (header flag bit 0) for the others.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field

from svmsim.errors import ConfigError, LoadError

from .elf import EM_386, EM_X86_64, elf_class_and_machine, is_elf, machine_name, parse_elf

PAGE_SIZE = 0x1000
FOUR_GIB = 1 << 32

# -- the spec, section 3.1.1 (OS image header) and 3.2 (machine state) -----
HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH = 8192           # the header lies within the first 8 KiB ...
HEADER_ALIGN = 4               # ... 32-bit aligned
QEMU_SCAN_LIMIT = 8192 - 48    # QEMU stops where a 48-byte header would not fit

MBH_PAGE_ALIGN = 1 << 0        # modules on 4 KiB boundaries (QEMU always does)
MBH_MEMORY_INFO = 1 << 1       # mem_* fields wanted (QEMU always gives them)
MBH_VIDEO_MODE = 1 << 2        # QEMU only warns: "multiboot knows VBE. we don't."
MBH_AOUT_KLUDGE = 1 << 16      # load by header_addr/load_addr/... not by ELF

# multiboot_info flags QEMU sets: MEM, BOOTDEV, CMDLINE, MODS, MMAP, LOADER_NAME
MBI_MEMORY = 1 << 0
MBI_BOOTDEV = 1 << 1
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9
MBI_FLAGS = MBI_MEMORY | MBI_BOOTDEV | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME

# -- QEMU's layout (hw/i386/multiboot.c: MULTIBOOT_STRUCT_ADDR 0x9000) -----
MMAP_ADDR = 0x9000             # ADDR_E820_MAP
MBI_ADDR = 0x9500              # ADDR_MBI = ADDR_E820_MAP + 0x500
MBI_SIZE = 88                  # sizeof(multiboot_info_t), framebuffer fields included
MOD_ENTRY_SIZE = 16            # mod_start, mod_end, cmdline, pad
BOOT_DEVICE = 0x8000FFFF       # QEMU: "XXX: use the -boot switch?"
BOOT_LOADER_NAME = "qemu"

# -- what QEMU 7.2's option ROM leaves behind (observed, TCG -cpu EPYC) ----
# The ROM's gdt label after SeaBIOS copied the ROM to C0000h, its place without
# a VGA BIOS (QEMU -nodefaults; svmsim has no VGA card; with one it is CB2B8h).
GDT_ADDR = 0xC02B8
GDT_LIMIT = 5 * 8 - 1
INITIAL_ESP = 0x6F08           # SeaBIOS's INT 19h stack; the spec leaves ESP undefined
INITIAL_EDI = 0xF00F00         # left by the ROM's copy (same for every -m, -smp, kernel)
CR0_PE, CR0_ET = 1 << 0, 1 << 4
INITIAL_CR0 = CR0_PE | CR0_ET  # ET reads as 1 on every AMD64 CPU (APM vol 2, 3.1.1)
# IF=0, VM=0, reserved bit 1 set (spec 3.2); PF is left set by the ROM's last
# SHL reading the (fixed) MBI address from fw_cfg.
INITIAL_EFLAGS = 0x6
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10

# -- memory map, as SeaBIOS builds it under QEMU's pc machine --------------
E820_RAM, E820_RESERVED = 1, 2
EBDA_BASE = 0x9FC00            # 1 KiB EBDA at the top of conventional memory
BIOS_AREA = (0xF0000, 0x10000)
BIOS_FLASH = (0xFFFC0000, 0x40000)   # the 256 KiB BIOS image below 4 GiB
SEABIOS_HIGH_TABLES = 0x20000  # SeaBIOS keeps the top 128 KiB of low RAM
AMD_HT_HOLE = (0xFD_0000_0000, 0x3_0000_0000)  # pc.c: AMD CPUs, phys-bits >= 40
# The VGA window: no RAM behind it on QEMU's pc without a VGA card, so a kernel
# loaded there is lost.  0xC0000-0xFFFFF is RAM shadowing option ROMs and the
# BIOS, and QEMU loads what an ELF asks there: ``ld -m elf_i386 -Ttext=0x100000``
# makes a first PT_LOAD with the ELF headers at 0xFF000 (they are there, readable,
# after a QEMU boot).
VGA_WINDOW = (0xA0000, 0xC0000)


# ---------------------------------------------------------------------------
# Data handed to the machine
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MultibootHeader:
    """The spec's 3.1.2 header; address fields are 0 when absent from the file."""

    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0
    mode_type: int = 0
    width: int = 0
    height: int = 0
    depth: int = 0


@dataclass(frozen=True)
class SegmentState:
    """A segment register's hidden state, as a CPU or a VMCB holds it.

    ``limit`` is the byte-granular effective limit; ``attrib`` packs the
    attributes the way the VMCB does (APM vol 2, 15.5.1): type in bits 3:0,
    S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11.
    """

    selector: int
    base: int
    limit: int
    type: int
    s: int = 1
    dpl: int = 0
    p: int = 1
    avl: int = 0
    l: int = 0
    db: int = 1
    g: int = 1

    @property
    def attrib(self) -> int:
        return (self.type | self.s << 4 | self.dpl << 5 | self.p << 7 | self.avl << 8
                | self.l << 9 | self.db << 10 | self.g << 11)

    def descriptor(self) -> bytes:
        """The 8-byte GDT descriptor for this state (APM vol 2, 4.7)."""
        raw_limit = self.limit >> 12 if self.g else self.limit
        attr = self.attrib
        low = (raw_limit & 0xFFFF) | (self.base & 0xFFFF) << 16
        high = ((self.base >> 16) & 0xFF | (attr & 0xFF) << 8 | (raw_limit >> 16 & 0xF) << 16
                | (attr >> 8 & 0xF) << 20 | (self.base >> 24 & 0xFF) << 24)
        return struct.pack("<II", low, high)


@dataclass(frozen=True)
class DescriptorTable:
    """GDTR / IDTR contents."""

    base: int
    limit: int


@dataclass(frozen=True)
class Module:
    start: int
    end: int
    cmdline: str
    cmdline_addr: int
    path: str


@dataclass(frozen=True)
class MmapEntry:
    base: int
    length: int
    type: int


def _flat(selector: int, type_: int) -> SegmentState:
    return SegmentState(selector=selector, base=0, limit=0xFFFFFFFF, type=type_)


# The option ROM's GDT: null, 32-bit code, 32-bit data, 16-bit code, 16-bit data.
# Access bytes as found in memory at kernel entry: the data loads set the
# accessed bit (0x93); the far jump that loaded CS did not (0x9A).
GDT_ENTRIES = (
    None,
    _flat(CODE_SELECTOR, 0xA),
    _flat(DATA_SELECTOR, 0x3),
    SegmentState(selector=0x18, base=0, limit=0xFFFF, type=0xE, db=0, g=0),
    SegmentState(selector=0x20, base=0, limit=0xFFFF, type=0x2, db=0, g=0),
)


def gdt_bytes() -> bytes:
    return b"".join(bytes(8) if e is None else e.descriptor() for e in GDT_ENTRIES)


def _entry_segments() -> dict[str, SegmentState]:
    data = GDT_ENTRIES[2]
    segs = {name: data for name in ("ds", "es", "fs", "gs", "ss")}
    segs["cs"] = GDT_ENTRIES[1]
    # LDTR and TR keep their reset state (QEMU: "LDT" 0x82, "TSS32-busy" 0x8B).
    segs["ldtr"] = SegmentState(0, 0, 0xFFFF, type=0x2, s=0, db=0, g=0)
    segs["tr"] = SegmentState(0, 0, 0xFFFF, type=0xB, s=0, db=0, g=0)
    return segs


@dataclass
class BootInfo:
    """The loaded kernel and the machine state the spec (3.2) and QEMU give it.

    General registers: EAX and EBX as the spec demands, ECX = entry (QEMU's
    ROM jumps through ECX), ESP = QEMU's leftover BIOS stack; the rest are 0
    (QEMU leaves option-ROM scratch values there; the spec leaves them undefined).
    EFLAGS is 0x2: QEMU shows 0x6, PF being a leftover of the ROM's arithmetic.
    Segments: CS = 0x08 flat 32-bit code, DS/ES/FS/GS/SS = 0x10 flat data, from
    the ROM's GDT, which ``load_multiboot`` writes at ``GDT_ADDR``.
    """

    entry: int
    mbi_addr: int
    kind: str                       # "elf32", "elf64" or "aout-kludge"
    header: MultibootHeader
    load_addr: int
    load_end: int                   # end of the kernel image incl. .bss
    info_addr: int                  # module list, command lines, loader name
    modules: list[Module]
    mmap: list[MmapEntry]
    mem_lower: int
    mem_upper: int
    cmdline: str
    boot_loader_name: str = BOOT_LOADER_NAME
    warnings: list[str] = field(default_factory=list)
    regs: dict[str, int] = field(default_factory=dict)
    eflags: int = INITIAL_EFLAGS
    cr0: int = INITIAL_CR0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    segments: dict[str, SegmentState] = field(default_factory=_entry_segments)
    gdtr: DescriptorTable = DescriptorTable(GDT_ADDR, GDT_LIMIT)
    idtr: DescriptorTable = DescriptorTable(0, 0x3FF)   # the real-mode IVT, untouched
    a20: bool = True

    def __post_init__(self):
        if not self.regs:
            self.regs = {"eax": BOOTLOADER_MAGIC, "ebx": self.mbi_addr, "ecx": self.entry,
                         "edx": entry_edx(self.mem_upper), "esi": 0, "edi": INITIAL_EDI, "ebp": 0,
                         "esp": INITIAL_ESP, "eip": self.entry}


def entry_edx(mem_upper: int) -> int:
    """EDX at entry: the ROM computes mem_upper (KiB) in EDX, then its fw_cfg
    reads load only DX with the data port 511h (spec 3.2: undefined)."""
    return (mem_upper & 0xFFFF0000) | 0x511


# ---------------------------------------------------------------------------
# Header search and kernel description
# ---------------------------------------------------------------------------
def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0] if off + 4 <= len(data) else 0


def scan_header(data: bytes) -> tuple[MultibootHeader | None, int | None]:
    """(first valid header, offset of a magic with a bad checksum) -- QEMU's scan.

    QEMU tests every 4-byte-aligned offset below 8192 - 48 and takes the
    first whose magic + flags + checksum sum to 0 (mod 2^32).
    """
    bad = None
    limit = min(QEMU_SCAN_LIMIT, len(data) - 11)
    for off in range(0, max(limit, 0), HEADER_ALIGN):
        if _u32(data, off) != HEADER_MAGIC:
            continue
        flags, checksum = _u32(data, off + 4), _u32(data, off + 8)
        if (HEADER_MAGIC + flags + checksum) & 0xFFFFFFFF == 0:
            words = [_u32(data, off + 12 + 4 * k) for k in range(9)]
            return MultibootHeader(off, flags, *words), bad
        bad = off if bad is None else bad
    return None, bad


def find_header(data: bytes) -> MultibootHeader | None:
    return scan_header(data)[0]


def _read_head(path: str, n: int = HEADER_SEARCH) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_multiboot(path: str) -> bool:
    """True if ``path`` is a readable file with a valid Multiboot v1 header."""
    try:
        return os.path.isfile(path) and find_header(_read_head(path)) is not None
    except OSError:
        return False


def describe_kernel(path: str) -> str:
    """One line about ``path`` for error messages and ``--info`` output."""
    try:
        size = os.path.getsize(path)
        head = _read_head(path)
    except OSError as exc:
        return f"{path}: unreadable ({exc.strerror or exc})"
    cm = elf_class_and_machine(head)
    kind = f"ELF{cm[0]} {machine_name(cm[1])}" if cm else "not ELF"
    header, bad = scan_header(head)
    if header is not None:
        mb = f"Multiboot header at {header.offset:#x}, flags {header.flags:#x}"
    elif bad is not None:
        mb = f"Multiboot magic at {bad:#x} with a bad checksum"
    else:
        mb = "no Multiboot header in the first 8 KiB"
    return f"{path}: {kind}, {size} bytes, {mb}"


# ---------------------------------------------------------------------------
# Memory map
# ---------------------------------------------------------------------------
def e820_map(bus, *, amd_ht_hole: bool = True) -> list[MmapEntry]:
    """The map SeaBIOS reports via INT 15h E820 under QEMU 7.2 for this RAM.

    Observed (-m 128, -cpu EPYC): 0-9FC00 RAM, 9FC00+400 reserved (EBDA),
    F0000+10000 reserved, 1M-7FE0000 RAM, 7FE0000+20000 reserved (SeaBIOS
    tables), FFFC0000+40000 reserved (BIOS), RAM above 4 GiB if any, and
    FD_0000_0000+3_0000_0000 reserved for AMD CPUs (HyperTransport hole).
    """
    low_top, high_top = bus.low_top, bus.high_top
    out = [MmapEntry(0, EBDA_BASE, E820_RAM),
           MmapEntry(EBDA_BASE, 0xA0000 - EBDA_BASE, E820_RESERVED),
           MmapEntry(*BIOS_AREA, E820_RESERVED)]
    tables = low_top - SEABIOS_HIGH_TABLES
    out.append(MmapEntry(0x100000, tables - 0x100000, E820_RAM))
    out.append(MmapEntry(tables, SEABIOS_HIGH_TABLES, E820_RESERVED))
    out.append(MmapEntry(*BIOS_FLASH, E820_RESERVED))
    if high_top > FOUR_GIB:
        out.append(MmapEntry(FOUR_GIB, high_top - FOUR_GIB, E820_RAM))
    if amd_ht_hole:
        out.append(MmapEntry(*AMD_HT_HOLE, E820_RESERVED))
    return out


def mem_upper_kib(mmap: list[MmapEntry]) -> int:
    """KiB of RAM contiguous from 1 MiB, computed as the option ROM does.

    The ROM grows [1M, edx) through type-1 entries below 4 GiB that contain
    edx, restarting its search after each extension (the map is unordered).
    """
    top, grown = 0x100000, True
    while grown:
        grown = False
        for e in mmap:
            if e.type == E820_RAM and e.base < FOUR_GIB and e.base <= top < e.base + e.length:
                top, grown = (e.base + e.length) & 0xFFFFFFFF, True
                break
    return (top - 0x100000) >> 10


MEM_LOWER_KIB = EBDA_BASE >> 10   # INT 12h: 639, the EBDA takes the last KiB


# ---------------------------------------------------------------------------
# Kernel images
# ---------------------------------------------------------------------------
@dataclass
class _Image:
    kind: str
    load_addr: int
    size: int                                    # bytes incl. .bss
    chunks: list[tuple[int, bytes]]              # (paddr, file bytes)
    entry: int
    warnings: list[str] = field(default_factory=list)


def _aout_image(data: bytes, h: MultibootHeader, path: str) -> _Image:
    """Bit 16 set: load a file span by the header's addresses, as QEMU 7.2."""
    if h.offset + 32 > len(data):
        raise LoadError(f"{path}: Multiboot header at {h.offset:#x} is truncated "
                        "(the a.out kludge needs 32 bytes)")
    if h.header_addr < h.load_addr:
        raise LoadError(f"{path}: invalid a.out kludge: header_addr {h.header_addr:#x} "
                        f"< load_addr {h.load_addr:#x}")
    if h.header_addr - h.load_addr > h.offset:
        raise LoadError(f"{path}: invalid a.out kludge: header_addr {h.header_addr:#x} "
                        f"would put load_addr before the start of the file")
    text_offset = h.offset - (h.header_addr - h.load_addr)
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise LoadError(f"{path}: invalid a.out kludge: load_end_addr "
                            f"{h.load_end_addr:#x} < load_addr {h.load_addr:#x}")
        load_size = h.load_end_addr - h.load_addr
    else:
        load_size = len(data) - text_offset
    if load_size > 0xFFFFFFFF - h.load_addr:
        raise LoadError(f"{path}: kernel does not fit in the 32-bit address space")
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise LoadError(f"{path}: invalid a.out kludge: bss_end_addr "
                            f"{h.bss_end_addr:#x} < load end {h.load_addr + load_size:#x}")
        size = h.bss_end_addr - h.load_addr
    else:
        size = load_size
    if text_offset + load_size > len(data):
        raise LoadError(f"{path}: file too short: the a.out kludge loads {load_size:#x} "
                        f"bytes from file offset {text_offset:#x}, file has {len(data):#x}")
    chunk = data[text_offset:text_offset + load_size]
    return _Image("aout-kludge", h.load_addr, size, [(h.load_addr, chunk)], h.entry_addr)


def _elf_entry(image) -> int:
    """e_entry, moved from vaddr to paddr like QEMU's load_elf (elf_ops.h).

    When an executable segment has p_vaddr != p_paddr and holds e_entry in
    its file part, the entry is translated into that segment's p_paddr.
    """
    entry = image.entry
    for seg in image.segments:
        if (seg.vaddr != seg.paddr and seg.executable
                and seg.vaddr <= image.entry < seg.vaddr + seg.filesz):
            entry = image.entry - seg.vaddr + seg.paddr
    return entry & ((1 << 64) - 1)


def _check_elf_machine(elf_class: int, machine: int, path: str) -> list[str]:
    if elf_class == 32 and machine == EM_X86_64:
        raise LoadError(f"{path}: ELF32 image for x86-64; QEMU refuses it "
                        "(\"Cannot load x86-64 image, give a 32bit one.\")")
    if machine not in (EM_386, EM_X86_64):
        raise LoadError(f"{path}: ELF{elf_class} for {machine_name(machine)}, "
                        "not an x86 kernel")
    if elf_class == 64:
        return ["ELF64 kernel: QEMU refuses these (\"Cannot load x86-64 image, give "
                "a 32bit one.\"); svmsim loads its PT_LOAD segments as an extension"]
    return []


def _elf_image(data: bytes, path: str, header: MultibootHeader) -> _Image:
    cm = elf_class_and_machine(data)
    if cm is None:
        raise LoadError(f"{path}: not an ELF file, and its Multiboot header (flags "
                        f"{header.flags:#x}) does not set bit 16 (a.out kludge addresses)")
    warnings = _check_elf_machine(*cm, path)
    image = parse_elf(data, path)
    if not image.segments:
        raise LoadError(f"{path}: ELF file has no loadable (PT_LOAD) segment")
    segs = sorted(image.segments, key=lambda s: s.paddr)
    for seg in segs:
        if seg.paddr + seg.memsz > FOUR_GIB:
            raise LoadError(f"{path}: segment {seg.index} at {seg.paddr:#x}+{seg.memsz:#x} "
                            "is not below 4 GiB (Multiboot needs 32-bit physical addresses)")
    for a, b in zip(segs, segs[1:]):
        if b.paddr < a.paddr + a.memsz:
            raise LoadError(f"{path}: segments {a.index} and {b.index} overlap in "
                            f"physical memory at {b.paddr:#x}")
    entry = _elf_entry(image)
    if entry >= FOUR_GIB:
        raise LoadError(f"{path}: entry point {entry:#x} is not below 4 GiB")
    low, high = segs[0].paddr, max(s.paddr + s.memsz for s in segs)
    return _Image(f"elf{image.elf_class}", low, high - low,
                  [(s.paddr, s.data) for s in segs], entry, warnings)


def _kernel_image(data: bytes, header: MultibootHeader, path: str) -> _Image:
    if header.flags & MBH_AOUT_KLUDGE:
        image = _aout_image(data, header, path)
    else:
        image = _elf_image(data, path, header)
    if header.flags & MBH_VIDEO_MODE:
        image.warnings.append("the kernel asks for a video mode (header flag 2); like "
                              "QEMU (\"multiboot knows VBE. we don't.\") it is ignored")
    unknown = header.flags & 0xFFF8
    if unknown:
        image.warnings.append(f"required header flags {unknown:#x} are not understood; "
                              "ignored, as QEMU does")
    return image


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def _page_up(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _file_size(path: str, what: str) -> int:
    """Size of a regular file, without reading it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LoadError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: cannot open {what} ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise LoadError(f"{path}: {what} is not a regular file")
    return st.st_size


def _check_fits(path: str, what: str, limit: int) -> None:
    """Refuse a file larger than ``limit`` (the RAM that could hold it) from its size."""
    size = _file_size(path, what)
    if size > limit:
        raise LoadError(f"{path}: {what} is {size} bytes, more than the "
                        f"{limit} bytes of RAM below 4 GiB it would have to fit in")


def _read_file(path: str, what: str, limit: int) -> bytes:
    """The whole file, refused before reading if it is larger than ``limit``:
    a huge file is not read in vain."""
    _check_fits(path, what, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise LoadError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise LoadError(f"{path}: {what} grew past {limit} bytes while being read")
    return data


def _c_string(text: str, path: str, what: str) -> bytes:
    """``text`` as the guest gets it: the bytes it came from on the command
    line (undecodable argv bytes pass through unchanged, as QEMU passes them)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise LoadError(f"{path}: {what} is not encodable as bytes") from None
    if b"\0" in raw:
        raise LoadError(f"{path}: {what} contains a NUL byte")
    return raw + b"\0"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _check_range(bus, start: int, size: int, what: str, path: str) -> None:
    """Refuse a load range that is not RAM or hits the loader's own areas."""
    end = start + max(size, 1)
    if end > FOUR_GIB:
        raise LoadError(f"{path}: {what} {start:#x}-{end:#x} is not below 4 GiB")
    for lo, hi, name in ((MMAP_ADDR, MBI_ADDR + MBI_SIZE, "the Multiboot info area"),
                         (*VGA_WINDOW, "the VGA window 0xA0000-0xBFFFF")):
        if start < hi and lo < end:
            raise LoadError(f"{path}: {what} {start:#x}-{end:#x} overlaps {name} "
                            f"{lo:#x}-{hi:#x}")
    for page in range(start & ~(PAGE_SIZE - 1), end, PAGE_SIZE):
        probe = max(page, start)
        if bus.ram_offset(probe) is None:
            raise LoadError(f"{path}: {what} {start:#x}-{end:#x} is outside RAM "
                            f"(no RAM at {probe:#x}; RAM below 4 GiB ends at {bus.low_top:#x})")


def _info_block(info_addr: int, kernel_cmd: bytes, mods: list[tuple[bytes, int, str]], path: str):
    """Lay out mod entries, command lines and the loader name like mb_buf.

    ``mods`` holds (command line, payload size, path).  Returns (bytes of the
    block, [Module] with addresses, kernel cmdline address, loader-name
    address).  QEMU sizes the string area from the ``-initrd`` text, where a
    comma in a name is written ",,"; we take the names unescaped, so only
    such names would shift later strings.
    """
    strings_addr = info_addr + MOD_ENTRY_SIZE * len(mods)
    addr, cmd_addrs = strings_addr, []
    for cmd, _, _ in mods:          # module command lines first, as QEMU
        cmd_addrs.append(addr)
        addr += len(cmd)
    cmdline_addr = addr
    loader_addr = cmdline_addr + len(kernel_cmd)
    name = _c_string(BOOT_LOADER_NAME, "", "")
    mod_addr, modules, entries = _page_up(loader_addr + len(name)), [], b""
    for (cmd, size, mpath), caddr in zip(mods, cmd_addrs):
        start, end = mod_addr, mod_addr + size
        if end > FOUR_GIB:
            raise LoadError(f"{path}: module {mpath} would end at {end:#x}, "
                            "not below 4 GiB (Multiboot addresses are 32-bit)")
        modules.append(Module(start, end, _text(cmd[:-1]), caddr, mpath))
        entries += struct.pack("<IIII", start, end, caddr, 0)
        mod_addr = _page_up(end)
    blob = entries + b"".join(c for c, _, _ in mods) + kernel_cmd + name
    return blob, modules, cmdline_addr, loader_addr


def _mbi_bytes(info_addr: int, nmods: int, cmdline_addr: int, loader_addr: int,
               mem_lower: int, mem_upper: int, mmap_len: int) -> bytes:
    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<IIIIIII", mbi, 0, MBI_FLAGS, mem_lower, mem_upper, BOOT_DEVICE,
                     cmdline_addr, nmods, info_addr)
    struct.pack_into("<II", mbi, 44, mmap_len, MMAP_ADDR)
    struct.pack_into("<I", mbi, 64, loader_addr)
    return bytes(mbi)


def _mmap_bytes(mmap: list[MmapEntry]) -> bytes:
    return b"".join(struct.pack("<IQQI", 20, e.base, e.length, e.type) for e in mmap)


def _module_specs(modules) -> list[tuple[bytes, int, str]]:
    """(command line, size, path) of each module; the files are read later,
    once their place in RAM is known to exist."""
    out = []
    for mpath, args in modules:
        cmd = f"{mpath} {args}" if args else mpath   # QEMU: -initrd "file args"
        out.append((_c_string(cmd, mpath, "module command line"),
                    _file_size(mpath, "module"), mpath))
    return out


def load_multiboot(bus, path: str, cmdline: str, modules: list[tuple[str, str]], *,
                   mem_size: int, amd_ht_hole: bool = True) -> BootInfo:
    """Load a Multiboot v1 kernel and its modules into ``bus`` RAM, as QEMU does.

    ``cmdline`` is the ``-append`` string; the kernel sees "<path> <cmdline>".
    ``modules`` are (path, args) pairs, QEMU's ``-initrd "path args,..."``.
    ``amd_ht_hole`` adds the reserved 1 TiB HyperTransport range QEMU reports
    for AMD CPU models.  Raises LoadError for anything that cannot boot.
    """
    if mem_size != bus.ram.size:
        raise ConfigError(f"{path}: mem_size {mem_size:#x} differs from the bus RAM "
                        f"size {bus.ram.size:#x}")
    if bus.low_top < 0x100000 + SEABIOS_HIGH_TABLES + PAGE_SIZE:
        raise LoadError(f"{path}: {mem_size >> 10} KiB of RAM is too little "
                        "to boot a Multiboot kernel (need more than 1.125 MiB)")
    _check_fits(path, "kernel", bus.low_top)
    try:
        head = _read_head(path)            # the header first: a file that has none is not read
    except OSError as exc:
        raise LoadError(f"{path}: cannot read kernel ({exc.strerror or exc})") from None
    header, bad = scan_header(head)
    if header is None:
        if bad is not None:
            raise LoadError(f"{path}: Multiboot header at offset {bad:#x} has a bad checksum")
        what = "ELF file" if is_elf(head) else "file"
        raise LoadError(f"{path}: {what} with no Multiboot header in the first 8 KiB")
    data = _read_file(path, "kernel", bus.low_top)
    if data[:HEADER_SEARCH] != head:
        raise LoadError(f"{path}: kernel changed while being read")
    image = _kernel_image(data, header, path)
    mods = _module_specs(modules)
    kernel_cmd = _c_string(f"{path} {cmdline}", path, "command line")
    info_addr = _page_up(image.load_addr + image.size)
    blob, mod_list, cmdline_addr, loader_addr = _info_block(info_addr, kernel_cmd, mods, path)

    _check_range(bus, image.load_addr, image.size, "kernel image", path)
    _check_range(bus, info_addr, len(blob), "Multiboot module list and strings", path)
    for m in mod_list:
        _check_range(bus, m.start, m.end - m.start, f"module {m.path}", path)

    bus.zero_bytes(image.load_addr, image.size)
    for addr, chunk in image.chunks:
        bus.write_bytes(addr, chunk)
    bus.write_bytes(info_addr, blob)
    for m in mod_list:
        payload = _read_file(m.path, "module", m.end - m.start)
        if len(payload) != m.end - m.start:
            raise LoadError(f"{m.path}: module changed size while being loaded")
        bus.write_bytes(m.start, payload)
        bus.zero_bytes(m.end, _page_up(m.end) - m.end)

    mmap = e820_map(bus, amd_ht_hole=amd_ht_hole)
    mem_upper = mem_upper_kib(mmap)
    mmap_raw = _mmap_bytes(mmap)
    bus.write_bytes(MMAP_ADDR, mmap_raw)
    bus.write_bytes(MBI_ADDR, _mbi_bytes(info_addr, len(mod_list), cmdline_addr, loader_addr,
                                         MEM_LOWER_KIB, mem_upper, len(mmap_raw)))
    bus.write_bytes(GDT_ADDR, gdt_bytes())
    return BootInfo(entry=image.entry, mbi_addr=MBI_ADDR, kind=image.kind, header=header,
                    load_addr=image.load_addr, load_end=image.load_addr + image.size,
                    info_addr=info_addr, modules=mod_list, mmap=mmap,
                    mem_lower=MEM_LOWER_KIB, mem_upper=mem_upper,
                    cmdline=_text(kernel_cmd[:-1]), warnings=image.warnings)
