"""Linux/x86 boot protocol loader, as ``qemu-system-x86_64 -kernel bzImage
-initrd FILE -append ARGS`` loads a kernel.

References: the kernel's Documentation/x86/boot.rst ("the protocol") and
zero-page.rst, arch/x86/include/uapi/asm/bootparam.h (the layouts), the
kernel's real-mode setup code (arch/x86/boot/main.c, pm.c, pmjump.S: the
state it hands to the 32-bit entry), and QEMU's x86_load_linux
(hw/i386/x86.c: where QEMU puts things).

QEMU loads the setup code at 0x10000 and the protected-mode kernel at
0x100000, and its linuxboot option ROM runs the kernel's own real-mode setup
code, which asks SeaBIOS for the memory map and enters the kernel's 32-bit
entry point (code32_start).  svmsim has no BIOS, so it does what that setup
code does and starts the kernel where the setup code would: it fills
``boot_params`` (the "zero page": the setup header from the file, the E820
map SeaBIOS reports, command line, initrd), loads the GDT the setup code
uses (``__BOOT_CS`` 0x10, ``__BOOT_DS`` 0x18, ``__BOOT_TSS`` 0x20) and enters
code32_start in 32-bit protected mode with paging off, ESI = boot_params,
exactly as pmjump.S leaves the CPU -- the protocol's "32-bit boot protocol".

Guest memory after loading::

    0x00001000  the 104-byte TSS the setup code's TR points at (base 4096)
    0x00010000  boot_params (zero page), where QEMU puts the setup code
    0x00011000  the setup code's GDT (5 entries)
    0x00020000  the command line (QEMU's cmdline_addr)
    0x00100000  the protected-mode kernel (QEMU's prot_addr)
    top         the initrd, page-aligned below the top of low RAM less
                QEMU's ACPI data area (x86_load_linux's initrd_max)
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from svmsim.errors import LoadError

from .multiboot import (DescriptorTable, MmapEntry, SegmentState, e820_map, E820_RAM,
                        _read_file, _check_range, _c_string, FOUR_GIB)

# -- the protocol's setup header (boot.rst, "THE REAL-MODE KERNEL HEADER") --
HDRS_MAGIC = b"HdrS"            # at 0x202
HEADER_OFFSET = 0x1F1           # setup_header within the file and the zero page
MIN_PROTOCOL = 0x206            # 2.06: cmdline_size; every bzImage since 2.6.22

LOADED_HIGH = 0x01              # loadflags
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01            # xloadflags
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02

# setup_header fields: name -> (offset in the zero page, struct format)
HDR = {
    "setup_sects": (0x1F1, "B"), "vid_mode": (0x1FA, "H"), "boot_flag": (0x1FE, "H"),
    "jump": (0x200, "H"), "header": (0x202, "I"), "version": (0x206, "H"),
    "type_of_loader": (0x210, "B"), "loadflags": (0x211, "B"), "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"), "ramdisk_size": (0x21C, "I"), "heap_end_ptr": (0x224, "H"),
    "cmd_line_ptr": (0x228, "I"), "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"), "relocatable_kernel": (0x234, "B"),
    "xloadflags": (0x236, "H"), "cmdline_size": (0x238, "I"), "pref_address": (0x258, "Q"),
    "init_size": (0x260, "I"),
}

# -- boot_params outside the header (bootparam.h, zero-page.rst) ------------
BP_EXT_MEM_K = 0x002            # screen_info.ext_mem_k (INT 15h AH=88h)
BP_ALT_MEM_K = 0x1E0            # INT 15h AX=E801h
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128
BOOT_PARAMS_SIZE = 0x1000

# -- QEMU's layout (hw/i386/x86.c, "High and recent kernel") ----------------
REAL_ADDR = 0x10000             # setup code; svmsim puts boot_params here
CMDLINE_ADDR = 0x20000
PROT_ADDR = 0x100000
ACPI_DATA_SIZE = 0x20000            # QEMU 7.2 pc: acpi_data_size (observed: RAMDISK placement)
QEMU_LOADER_TYPE = 0xB0         # "B = reserved for QEMU", revision 0

# -- the real-mode setup code's hand-over (arch/x86/boot/pm.c, pmjump.S) ----
GDT_ADDR = REAL_ADDR + BOOT_PARAMS_SIZE
TSS_BASE, TSS_LIMIT = 0x1000, 103
BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20
SETUP_STACK_TOP = CMDLINE_ADDR       # the setup code's stack ends where its heap does
CR0_PE, CR0_ET = 1 << 0, 1 << 4


def _flat(selector: int, type_: int) -> SegmentState:
    return SegmentState(selector=selector, base=0, limit=0xFFFFFFFF, type=type_)


# boot_gdt[]: code 0xc09b and data 0xc093 (accessed bits set), TSS 0x0089;
# ltr marks the TSS busy (type 0xB) in the GDT, as on hardware.
BOOT_GDT = (None, None, _flat(BOOT_CS, 0xB), _flat(BOOT_DS, 0x3),
            SegmentState(selector=BOOT_TSS, base=TSS_BASE, limit=TSS_LIMIT, type=0xB, s=0,
                         db=0, g=0))


def gdt_bytes() -> bytes:
    return b"".join(bytes(8) if e is None else e.descriptor() for e in BOOT_GDT)


def _entry_segments() -> dict[str, SegmentState]:
    segs = {name: BOOT_GDT[3] for name in ("ds", "es", "fs", "gs", "ss")}
    segs["cs"] = BOOT_GDT[2]
    segs["tr"] = BOOT_GDT[4]
    segs["ldtr"] = SegmentState(0, 0, 0, type=0, s=0, p=0, db=0, g=0)   # lldt of a null selector
    return segs


@dataclass
class LinuxBootInfo:
    """The loaded kernel and the CPU state pmjump.S leaves for code32_start.

    Registers: EAX = the entry (pmjump jumps through it), ESI = boot_params,
    ECX, EDX, EBX, EBP, EDI zero (the protocol requires EBX, EBP, EDI = 0),
    ESP in the setup code's stack.  CR0 = PE|ET, paging off, IF = 0, the
    IDT null (setup_idt), GDTR on the setup code's 5-entry GDT.
    """

    entry: int
    boot_params: int
    protocol: int
    load_addr: int
    load_end: int                   # end of the protected-mode image as loaded
    init_size: int                  # bytes the kernel needs from load_addr
    cmdline: str
    cmdline_addr: int
    initrd_addr: int
    initrd_size: int
    e820: list[MmapEntry]
    kind: str = "bzImage"
    warnings: list[str] = field(default_factory=list)
    regs: dict[str, int] = field(default_factory=dict)
    eflags: int = 0x2
    cr0: int = CR0_PE | CR0_ET
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    segments: dict[str, SegmentState] = field(default_factory=_entry_segments)
    gdtr: DescriptorTable = DescriptorTable(GDT_ADDR, len(BOOT_GDT) * 8 - 1)
    idtr: DescriptorTable = DescriptorTable(0, 0)
    a20: bool = True

    def __post_init__(self):
        if not self.regs:
            self.regs = {"eax": self.entry, "esi": self.boot_params, "ecx": 0, "edx": 0,
                         "ebx": 0, "ebp": 0, "edi": 0, "esp": SETUP_STACK_TOP, "eip": self.entry}


def is_bzimage(path: str) -> bool:
    """True if ``path`` carries the boot protocol's "HdrS" magic at 0x202."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x206)
    except OSError:
        return False
    return head[0x202:0x206] == HDRS_MAGIC


def _hdr(buf, name: str) -> int:
    off, fmt = HDR[name]
    return struct.unpack_from("<" + fmt, buf, off)[0]


def _set(buf: bytearray, name: str, value: int) -> None:
    off, fmt = HDR[name]
    struct.pack_into("<" + fmt, buf, off, value)


def parse_header(data: bytes, path: str) -> dict:
    """The setup header's fields; LoadError for what cannot be booted."""
    if len(data) < 0x264 or data[0x202:0x206] != HDRS_MAGIC:
        raise LoadError(f"{path}: not a Linux bzImage (no \"HdrS\" at 0x202)")
    h = {name: _hdr(data, name) for name in HDR}
    if h["version"] < MIN_PROTOCOL:
        raise LoadError(f"{path}: boot protocol {h['version'] >> 8}.{h['version'] & 0xFF:02d} "
                        "is too old (svmsim boots 2.06 and later)")
    if not h["loadflags"] & LOADED_HIGH:
        raise LoadError(f"{path}: a zImage (loaded low); only bzImages are supported")
    h["header_end"] = 0x202 + data[0x201]
    return h


def initrd_max(protocol_hdr: dict, below_4g: int) -> int:
    """QEMU's x86_load_linux: the header's limit (or 4 GiB with
    XLF_CAN_BE_LOADED_ABOVE_4G), capped below the ACPI data area."""
    limit = protocol_hdr["initrd_addr_max"]
    if protocol_hdr["version"] >= 0x20C and protocol_hdr["xloadflags"] & XLF_CAN_BE_LOADED_ABOVE_4G:
        limit = 0xFFFFFFFF
    if limit >= below_4g - ACPI_DATA_SIZE:
        limit = below_4g - ACPI_DATA_SIZE - 1
    return limit


def alt_mem_k(e820: list[MmapEntry]) -> int:
    """INT 15h E801 as SeaBIOS answers it, the way the setup code stores it:
    KiB between 1 and 16 MiB (at most 15 MiB) plus 64 KiB blocks above."""
    top = 0x100000
    for e in e820:
        if e.type == E820_RAM and e.base <= top < e.base + e.length and e.base < FOUR_GIB:
            top = e.base + e.length
    low = min(top, 16 << 20) - (1 << 20)
    high = max(top - (16 << 20), 0) >> 16
    return (low >> 10) + (high << 6)


def load_linux(bus, path: str, cmdline: str = "", initrd: str | None = None, *,
               amd_ht_hole: bool = True, e820: list[MmapEntry] | None = None) -> LinuxBootInfo:
    """Load a bzImage (and an initrd) into ``bus`` RAM as QEMU places them
    and fill boot_params; returns the state to start the kernel in.

    ``e820`` overrides the memory map (a VMM gives its guest its own);
    by default it is the map SeaBIOS reports for this RAM."""
    data = _read_file(path, "kernel", bus.low_top)
    h = parse_header(data, path)
    setup_sects = h["setup_sects"] or 4
    prot_off = (setup_sects + 1) * 512
    if prot_off >= len(data):
        raise LoadError(f"{path}: setup_sects {setup_sects} runs past the end of the file")
    kernel = data[prot_off:]
    raw_cmd = _c_string(cmdline, path, "command line")[:-1]      # argv bytes, as QEMU passes them
    if len(raw_cmd) > h["cmdline_size"]:
        raise LoadError(f"{path}: command line is {len(raw_cmd)} bytes; the kernel takes at most "
                        f"{h['cmdline_size']}")
    init_size = max(h["init_size"], len(kernel))
    _check_range(bus, PROT_ADDR, init_size, "kernel (its init_size)", path)
    _check_range(bus, CMDLINE_ADDR, len(raw_cmd) + 1, "command line", path)

    ird_addr = ird_size = 0
    ird = b""
    if initrd is not None:
        top = initrd_max(h, bus.low_top)
        ird = _read_file(initrd, "initrd", top)          # a huge file is refused unread
        ird_size = len(ird)
        if ird_size >= top:
            raise LoadError(f"{initrd}: initrd is too large ({ird_size} bytes; at most {top})")
        ird_addr = (top - ird_size) & ~0xFFF
        if ird_addr < PROT_ADDR + init_size:
            raise LoadError(f"{initrd}: initrd ({ird_size} bytes) does not fit above the kernel "
                            f"in {bus.low_top >> 20} MiB of RAM; give the machine more memory")
        _check_range(bus, ird_addr, ird_size, "initrd", initrd)

    e820 = e820 if e820 is not None else e820_map(bus, amd_ht_hole=amd_ht_hole)
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise LoadError(f"{path}: {len(e820)} E820 entries; the zero page holds 128")
    bp = bytearray(BOOT_PARAMS_SIZE)
    bp[HEADER_OFFSET:h["header_end"]] = data[HEADER_OFFSET:h["header_end"]]
    _set(bp, "type_of_loader", QEMU_LOADER_TYPE)
    _set(bp, "loadflags", h["loadflags"] | CAN_USE_HEAP)
    _set(bp, "heap_end_ptr", CMDLINE_ADDR - REAL_ADDR - 0x200)
    _set(bp, "cmd_line_ptr", CMDLINE_ADDR)
    _set(bp, "ramdisk_image", ird_addr)
    _set(bp, "ramdisk_size", ird_size)
    struct.pack_into("<I", bp, BP_ALT_MEM_K, alt_mem_k(e820))
    struct.pack_into("<H", bp, BP_EXT_MEM_K, min(alt_mem_k(e820), 0xFC00))
    bp[BP_E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, e.base, e.length, e.type)

    bus.write_bytes(PROT_ADDR, kernel)
    bus.write_bytes(CMDLINE_ADDR, raw_cmd + b"\0")
    if ird:
        bus.write_bytes(ird_addr, ird)
    bus.write_bytes(REAL_ADDR, bytes(bp))
    bus.write_bytes(GDT_ADDR, gdt_bytes())
    warnings = []
    if not h["xloadflags"] & XLF_KERNEL_64:
        warnings.append(f"{os.path.basename(path)}: a 32-bit kernel (xloadflags has no XLF_KERNEL_64)")
    return LinuxBootInfo(entry=h["code32_start"], boot_params=REAL_ADDR, protocol=h["version"],
                         load_addr=PROT_ADDR, load_end=PROT_ADDR + len(kernel), init_size=init_size,
                         cmdline=cmdline, cmdline_addr=CMDLINE_ADDR, initrd_addr=ird_addr,
                         initrd_size=ird_size, e820=e820, warnings=warnings)
