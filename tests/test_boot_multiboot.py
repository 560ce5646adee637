"""Tests for the Multiboot v1 loader (svmsim/boot/multiboot.py, svmsim/boot/elf.py).

Tiny kernels are assembled at test time with the machine's as/ld/objcopy
(tests/guestbuild.py builds the C guests from tests/guests/ with a fixed
linker script; these loader tests need their own odd layouts, so they build
here, into a session tmp dir).  Expected values marked "QEMU 7.2" were
observed with ``qemu-system-x86_64 -accel tcg -cpu EPYC -m <M> -kernel K``
(QEMU 7.2.22 / SeaBIOS, Debian 12): a kernel printed its mbi over COM1, and
``info registers`` was read at a ``jmp .`` entry point.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import types

import pytest

from svmsim.boot import multiboot as mb
from svmsim.boot.elf import parse_elf
from svmsim.errors import ConfigError, LoadError
from svmsim.memory.bus import PhysBus

MIB = 1 << 20
TOOLS = all(shutil.which(t) for t in ("as", "ld", "objcopy"))
pytestmark = pytest.mark.skipif(not TOOLS, reason="binutils not installed")

# ---------------------------------------------------------------------------
# QEMU 7.2 observations (TCG, -cpu EPYC)
# ---------------------------------------------------------------------------
QEMU_MMAP_128M = [
    (0x0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
    (0x100000, 0x7EE0000, 1), (0x7FE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2),
    (0xFD00000000, 0x300000000, 2),
]
QEMU_MMAP_1G_TAIL = [(0x100000, 0x3FEE0000, 1), (0x3FFE0000, 0x20000, 2)]
QEMU_MMAP_4G = [
    (0x0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
    (0x100000, 0xBFEE0000, 1), (0xBFFE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2),
    (0x100000000, 0x40000000, 1), (0xFD00000000, 0x300000000, 2),
]
QEMU_MEM_LOWER = 0x27F                       # 639 KiB, whatever -m
QEMU_MEM_UPPER = {128: 0x1FB80, 1024: 0xFFB80, 4096: 0x2FFB80}
QEMU_MBI_FLAGS = 0x24F
QEMU_BOOT_DEVICE = 0x8000FFFF
# dump.elf (1 PT_LOAD, memsz 0x49b0 at 1M) -append "foo=1 bar"
# -initrd "mod1.bin arg one,mod2.bin,mod3.bin x" (17, 5000 and 4 bytes):
QEMU_LAYOUT_3MODS = dict(mods_addr=0x105000, cmd_addrs=[0x105030, 0x105041, 0x10504A],
                         cmdline=0x105055, loader=0x105068,
                         mods=[(0x106000, 0x106011), (0x107000, 0x108388),
                               (0x109000, 0x109004)])
# info registers at the entry point (QEMU -nodefaults: no VGA BIOS before the ROM)
QEMU_ENTRY = dict(eax=0x2BADB002, ebx=0x9500, esp=0x6F08, eflags_if=0, cr0=0x11,
                  cs=(0x08, 0xCF9A00), data=(0x10, 0xCF9300), gdt=(0xC02B8, 0x27),
                  idt=(0, 0x3FF), gdt_mem=[0, 0x00CF9A000000FFFF, 0x00CF93000000FFFF,
                                           0x00009E000000FFFF, 0x000092000000FFFF])

# ---------------------------------------------------------------------------
# Kernel sources
# ---------------------------------------------------------------------------
HEADER = """
    .section .multiboot, "a"
    .align 4
mbhdr:
    .long 0x1BADB002
    .long {flags}
    .long -(0x1BADB002 + {flags})
"""
BODY = """
    .text
    .globl _start
_start:
    movl $0x2BADB002, %eax
    jmp _start
    .data
    .balign 4096
marker:
    .ascii "DATAMARK"
    .bss
    .balign 16
    .space 0x3000
"""
LINK_1M = """
ENTRY(_start)
SECTIONS {
  . = 0x100000;
  .text : { *(.multiboot) *(.text*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note*) *(.eh_frame*) }
}
"""
LINK_AT = """
ENTRY(_start)
SECTIONS {
  . = %s;
  .text : { *(.multiboot) *(.text*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note*) *(.eh_frame*) }
}
"""
# Higher-half: linked at 3 GiB + 1 MiB, loaded (p_paddr) at 1 MiB.
LINK_HIGHER = """
ENTRY(_start)
SECTIONS {
  . = 0xC0100000;
  .text : AT(0x100000) { *(.multiboot) *(.text*) }
  .data : AT(0x100000 + (ADDR(.data) - 0xC0100000)) { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note*) *(.eh_frame*) }
}
"""
# a.out kludge: 0x40 bytes of text before the header, loaded at 2 MiB.
AOUT_SRC = """
    .text
    .globl _start
pad:
    .ascii "PADPADPADPADPADPADPADPADPADPADPADPADPADPADPADPADPADPADPADPADPADP"
mbhdr:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long mbhdr
    .long 0x200000
    .long _edata
    .long _end
    .long _start
_start:
    jmp _start
    .data
    .ascii "AOUTDATA"
    .bss
    .space 0x2000
"""
LINK_AOUT = """
ENTRY(_start)
SECTIONS {
  . = 0x200000;
  .text : { *(.text*) }
  .data : { *(.data*) }
  _edata = .;
  .bss : { *(.bss*) *(COMMON) }
  _end = .;
  /DISCARD/ : { *(.note*) *(.eh_frame*) }
}
"""
# A kernel that prints its mbi over COM1 and exits through isa-debug-exit.
DUMP_C = r"""
typedef unsigned int u32; typedef unsigned long long u64;
static void outb(unsigned short p, unsigned char v)
{ __asm__ volatile("outb %0,%1"::"a"(v),"Nd"(p)); }
static void puts(const char *s){ while (*s) outb(0x3f8, *s++); }
static void hex(u64 v){ char b[19]; int i = 18; b[i] = 0;
  do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
  b[--i] = 'x'; b[--i] = '0'; puts(b + i); }
static void kv(const char *k, u64 v){ puts(k); puts("="); hex(v); puts("\n"); }
static void ks(const char *k, u32 a){ puts(k); puts("=\""); puts((const char *)a); puts("\"\n"); }
void kmain(u32 magic, u32 *mbi){
  kv("magic", magic); kv("mbi", (u32)mbi); kv("flags", mbi[0]);
  kv("mem_lower", mbi[1]); kv("mem_upper", mbi[2]); kv("boot_device", mbi[3]);
  kv("cmdline", mbi[4]); ks("cmdline_str", mbi[4]);
  kv("mods_count", mbi[5]); kv("mods_addr", mbi[6]);
  for (u32 i = 0; i < mbi[5]; i++) { u32 *m = (u32 *)(mbi[6] + 16 * i);
    kv("mod_start", m[0]); kv("mod_end", m[1]); kv("mod_cmd", m[2]); ks("mod_cmd_str", m[2]); }
  kv("mmap_length", mbi[11]); kv("mmap_addr", mbi[12]);
  for (u32 p = mbi[12]; p < mbi[12] + mbi[11]; p += *(u32 *)p + 4) {
    puts("e "); hex(*(u64 *)(p + 4)); puts(" "); hex(*(u64 *)(p + 12));
    puts(" "); hex(*(u32 *)(p + 20)); puts("\n"); }
  kv("loader", mbi[16]); ks("loader_str", mbi[16]);
  __asm__ volatile("outl %0,%1"::"a"(0),"Nd"((unsigned short)0xf4));
}
"""
DUMP_START = HEADER.format(flags="0x3") + """
    .text
    .globl _start
_start:
    mov $stack_top, %esp
    push %ebx
    push %eax
    call kmain
1:  hlt
    jmp 1b
    .bss
    .balign 16
    .space 16384
stack_top:
"""


class Kernels:
    """Builds test kernels into one directory, once per session."""

    def __init__(self, root):
        self.root = root

    def _run(self, *cmd):
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr}")

    def asm(self, name, src, link, *, bits=32, x32=False):
        (self.root / f"{name}.s").write_text(src)
        (self.root / f"{name}.ld").write_text(link)
        asflag = "--x32" if x32 else f"--{bits}"
        emul = "elf32_x86_64" if x32 else ("elf_i386" if bits == 32 else "elf_x86_64")
        self._run("as", asflag, f"{name}.s", "-o", f"{name}.o")
        self._run("ld", "-m", emul, "-z", "noexecstack", "--no-warn-rwx-segments",
                  "-T", f"{name}.ld", f"{name}.o", "-o", f"{name}.elf")
        return self.root / f"{name}.elf"

    def objcopy(self, src, name, *args):
        self._run("objcopy", *args, str(src), name)
        return self.root / name

    def file(self, name, data: bytes):
        (self.root / name).write_bytes(data)
        return self.root / name


@pytest.fixture(scope="session")
def kernels(tmp_path_factory):
    k = Kernels(tmp_path_factory.mktemp("mbkernels"))
    ns = types.SimpleNamespace(dir=k.root)
    ns.elf32 = k.asm("elf32", HEADER.format(flags="0x3") + BODY, LINK_1M)
    ns.video = k.asm("video", HEADER.format(flags="0x7") + BODY, LINK_1M)
    ns.higher = k.asm("higher", HEADER.format(flags="0x3") + BODY, LINK_HIGHER)
    ns.elf64 = k.asm("elf64", HEADER.format(flags="0x3") + BODY, LINK_1M, bits=64)
    ns.elf64to32 = k.objcopy(ns.elf64, "elf64to32.elf", "-O", "elf32-i386")
    ns.x32 = k.asm("x32", HEADER.format(flags="0x3") + BODY, LINK_1M, x32=True)
    ns.noheader = k.asm("noheader", BODY, LINK_1M)
    ns.at_mbi = k.asm("at_mbi", HEADER.format(flags="0x3") + BODY, LINK_AT % "0x9000")
    ns.at_vga = k.asm("at_vga", HEADER.format(flags="0x3") + BODY, LINK_AT % "0xB8000")
    ns.at_32m = k.asm("at_32m", HEADER.format(flags="0x3") + BODY, LINK_AT % "0x2000000")
    aout_elf = k.asm("aout", AOUT_SRC, LINK_AOUT)
    ns.aout = k.objcopy(aout_elf, "aout.bin", "-O", "binary")
    ns.aout_syms = aout_elf
    data = bytearray(ns.elf32.read_bytes())
    off = data.find(struct.pack("<I", 0x1BADB002))
    data[off + 8] ^= 1
    ns.badsum = k.file("badsum.elf", bytes(data))
    ns.text = k.file("notes.txt", b"just some text, not a kernel\n" * 10)
    ns.mod_a = k.file("mod_a.bin", b"hello module one\n")
    ns.mod_b = k.file("mod_b.bin", bytes(range(256)) * 20)      # 5120 bytes
    ns.mod_c = k.file("mod_c.bin", b"ABCD")
    return ns


@pytest.fixture
def bus():
    return PhysBus(128 * MIB)


def load(bus, path, cmdline="", modules=(), **kw):
    return mb.load_multiboot(bus, str(path), cmdline, list(modules),
                             mem_size=bus.ram.size, **kw)


def u32(bus, addr):
    return bus.read(addr, 4)


def cstr(bus, addr):
    raw = bus.read_bytes(addr, 256)
    return raw[:raw.index(b"\0")].decode()


def mbi_field(bus, off):
    return u32(bus, mb.MBI_ADDR + off)


# ---------------------------------------------------------------------------
# Header detection
# ---------------------------------------------------------------------------
def test_is_multiboot(kernels):
    assert mb.is_multiboot(str(kernels.elf32))
    assert mb.is_multiboot(str(kernels.aout))
    assert not mb.is_multiboot(str(kernels.noheader))
    assert not mb.is_multiboot(str(kernels.badsum))
    assert not mb.is_multiboot(str(kernels.text))
    assert not mb.is_multiboot(str(kernels.dir / "missing.elf"))
    assert not mb.is_multiboot(str(kernels.dir))


def test_header_scan_is_4_byte_aligned_and_stops_where_qemu_does():
    hdr = struct.pack("<III", mb.HEADER_MAGIC, 3, (-(mb.HEADER_MAGIC + 3)) & 0xFFFFFFFF)
    assert mb.find_header(bytes(8) + hdr).offset == 8
    assert mb.find_header(bytes(6) + hdr) is None                 # misaligned
    assert mb.find_header(bytes(8140) + hdr).offset == 8140       # last slot QEMU tries
    assert mb.find_header(bytes(8144) + hdr + bytes(100)) is None  # past 8192 - 48


def test_describe_kernel(kernels):
    assert re.search(r"ELF32 i386, \d+ bytes, Multiboot header at 0x\w+, flags 0x3$",
                     mb.describe_kernel(str(kernels.elf32)))
    assert "bad checksum" in mb.describe_kernel(str(kernels.badsum))
    assert "no Multiboot header" in mb.describe_kernel(str(kernels.text))
    assert "unreadable" in mb.describe_kernel(str(kernels.dir / "missing"))


# ---------------------------------------------------------------------------
# ELF32 loading
# ---------------------------------------------------------------------------
def test_elf32_segments_entry_and_bss(kernels, bus):
    image = parse_elf(kernels.elf32.read_bytes(), "k")
    bus.write_bytes(0x100000, b"\xAA" * 0x8000)          # garbage where .bss goes
    info = load(bus, kernels.elf32)
    assert info.kind == "elf32" and info.warnings == []
    assert info.entry == image.entry == 0x10000C         # after the 12-byte header
    assert bus.read_bytes(0x100000, 12) == struct.pack(
        "<III", 0x1BADB002, 3, (-(0x1BADB002 + 3)) & 0xFFFFFFFF)
    assert bus.read_bytes(0x10000C, 5) == b"\xB8\x02\xB0\xAD\x2B"  # movl $0x2badb002,%eax
    assert bus.read_bytes(0x101000, 8) == b"DATAMARK"
    end = max(s.paddr + s.memsz for s in image.segments)
    assert info.load_addr == 0x100000 and info.load_end == end
    assert bus.read_bytes(0x101008, end - 0x101008) == bytes(end - 0x101008)


def test_elf32_higher_half_entry_is_translated_to_paddr(kernels, bus):
    image = parse_elf(kernels.higher.read_bytes(), "k")
    assert image.entry == 0xC010000C                      # a virtual address
    info = load(bus, kernels.higher)
    assert info.entry == 0x10000C                         # QEMU's load_elf translation
    assert bus.read_bytes(0x101000, 8) == b"DATAMARK"     # loaded at p_paddr


def test_elf64_objcopied_to_elf32_loads_like_kvm_unit_tests(kernels, bus):
    info = load(bus, kernels.elf64to32)
    assert info.kind == "elf32" and info.warnings == []
    assert info.entry == 0x10000C
    assert bus.read_bytes(0x101000, 8) == b"DATAMARK"


def test_elf64_is_an_extension(kernels, bus):
    info = load(bus, kernels.elf64)
    assert info.kind == "elf64"
    assert info.entry == 0x10000C
    assert "QEMU refuses" in info.warnings[0]
    assert bus.read_bytes(0x101000, 8) == b"DATAMARK"


def test_elf32_for_x86_64_is_refused_as_qemu_does(kernels, bus):
    with pytest.raises(LoadError, match="give a 32bit one"):
        load(bus, kernels.x32)


def test_video_mode_flag_only_warns(kernels, bus):
    info = load(bus, kernels.video)
    assert info.header.flags == 7
    assert any("video mode" in w for w in info.warnings)


# ---------------------------------------------------------------------------
# a.out kludge
# ---------------------------------------------------------------------------
def _syms(kernels):
    out = subprocess.run(["nm", str(kernels.aout_syms)], capture_output=True, text=True).stdout
    return {line.split()[2]: int(line.split()[0], 16) for line in out.splitlines()}


def test_aout_kludge_loads_file_span_and_zeroes_bss(kernels, bus):
    syms = _syms(kernels)
    flat = kernels.aout.read_bytes()
    bus.write_bytes(0x200000, b"\xAA" * 0x4000)
    info = load(bus, kernels.aout)
    assert info.kind == "aout-kludge"
    assert info.header.offset == 0x40 and info.header.flags == 0x10003
    assert info.entry == syms["_start"]
    assert info.load_addr == 0x200000 and info.load_end == syms["_end"]
    assert bus.read_bytes(0x200000, len(flat)) == flat
    assert bus.read_bytes(syms["_edata"] - 8, 8) == b"AOUTDATA"
    bss = syms["_end"] - syms["_edata"]
    assert bus.read_bytes(syms["_edata"], bss) == bytes(bss)


def _patched_aout(kernels, name, **fields):
    data = bytearray(kernels.aout.read_bytes())
    order = ["header_addr", "load_addr", "load_end_addr", "bss_end_addr", "entry_addr"]
    for key, value in fields.items():
        struct.pack_into("<I", data, 0x40 + 12 + 4 * order.index(key), value)
    path = kernels.dir / name
    path.write_bytes(bytes(data))
    return path


def test_aout_kludge_offsets_as_qemu_computes(kernels, bus):
    # header_addr - load_addr = 0x10 while the header is at file offset 0x40:
    # QEMU loads from file offset 0x30; load_end 0 = to end of file, bss_end 0.
    path = _patched_aout(kernels, "aout_off.bin", header_addr=0x300010,
                         load_addr=0x300000, load_end_addr=0, bss_end_addr=0,
                         entry_addr=0x300000)
    flat = path.read_bytes()
    info = load(bus, path)
    assert info.load_addr == 0x300000 and info.load_end == 0x300000 + len(flat) - 0x30
    assert bus.read_bytes(0x300000, len(flat) - 0x30) == flat[0x30:]
    assert info.entry == 0x300000


@pytest.mark.parametrize("fields, message", [
    (dict(header_addr=0x1FFFF0), "header_addr 0x1ffff0 < load_addr"),
    (dict(header_addr=0x200100), "before the start of the file"),
    (dict(load_end_addr=0x100000), "load_end_addr 0x100000 < load_addr"),
    (dict(bss_end_addr=0x200001), "bss_end_addr 0x200001 <"),
    (dict(load_end_addr=0x300000, bss_end_addr=0), "file too short"),
    (dict(load_addr=0xFFFFF000, header_addr=0xFFFFF040, load_end_addr=0,
          bss_end_addr=0), "outside RAM"),
])
def test_aout_kludge_errors(kernels, bus, fields, message):
    path = _patched_aout(kernels, "aout_bad.bin", **fields)
    with pytest.raises(LoadError, match=re.escape(message)) as exc:
        load(bus, path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------
# Multiboot information
# ---------------------------------------------------------------------------
def test_mbi_fields_match_qemu(kernels, bus):
    info = load(bus, kernels.elf32, "console=ttyS0 x=1")
    assert info.mbi_addr == mb.MBI_ADDR == 0x9500
    assert mbi_field(bus, 0) == QEMU_MBI_FLAGS
    assert mbi_field(bus, 4) == info.mem_lower == QEMU_MEM_LOWER
    assert mbi_field(bus, 8) == info.mem_upper == QEMU_MEM_UPPER[128]
    assert mbi_field(bus, 12) == QEMU_BOOT_DEVICE
    # QEMU: "<kernel path> <append>"
    assert cstr(bus, mbi_field(bus, 16)) == f"{kernels.elf32} console=ttyS0 x=1"
    assert mbi_field(bus, 20) == 0 and mbi_field(bus, 24) == info.info_addr
    assert mbi_field(bus, 16) == info.info_addr            # no module entries
    assert mbi_field(bus, 48) == 0x9000
    assert mbi_field(bus, 44) == 24 * len(QEMU_MMAP_128M)
    assert cstr(bus, mbi_field(bus, 64)) == "qemu"
    assert [mbi_field(bus, o) for o in (28, 32, 36, 40, 52, 56, 60, 68, 72)] == [0] * 9


def test_empty_append_leaves_trailing_space_like_qemu(kernels, bus):
    info = load(bus, kernels.elf32)
    assert info.cmdline == f"{kernels.elf32} "
    assert cstr(bus, mbi_field(bus, 16)) == f"{kernels.elf32} "


def test_mmap_in_ram_matches_qemu_128m(kernels, bus):
    load(bus, kernels.elf32)
    raw = bus.read_bytes(0x9000, mbi_field(bus, 44))
    entries = [struct.unpack_from("<IQQI", raw, off) for off in range(0, len(raw), 24)]
    assert all(e[0] == 20 for e in entries)
    assert [e[1:] for e in entries] == QEMU_MMAP_128M


@pytest.mark.parametrize("mib", [128, 1024, 4096])
def test_mmap_and_mem_upper_for_other_sizes(mib):
    # e820_map only needs the RAM split, as the bus computes it (3 GiB low max).
    low = min(mib * MIB, 0xC0000000)
    fake = types.SimpleNamespace(low_top=low, high_top=(1 << 32) + mib * MIB - low)
    mmap = [(e.base, e.length, e.type) for e in mb.e820_map(fake)]
    if mib == 4096:
        assert mmap == QEMU_MMAP_4G
    elif mib == 1024:
        assert mmap[3:5] == QEMU_MMAP_1G_TAIL
    assert mb.mem_upper_kib(mb.e820_map(fake)) == QEMU_MEM_UPPER[mib]


def test_mmap_without_the_amd_hypertransport_hole():
    fake = types.SimpleNamespace(low_top=128 * MIB, high_top=1 << 32)
    assert [(e.base, e.length, e.type) for e in mb.e820_map(fake, amd_ht_hole=False)] \
        == QEMU_MMAP_128M[:-1]                          # what QEMU shows for Intel CPUs


def test_mem_upper_follows_the_roms_unordered_search():
    m = [mb.MmapEntry(0x300000, 0x100000, 1), mb.MmapEntry(0x100000, 0x200000, 1),
         mb.MmapEntry(0x400000, 0x1000, 2), mb.MmapEntry(0x401000, 0x1000, 1)]
    assert mb.mem_upper_kib(m) == 0x300000 >> 10


def test_modules_layout_matches_qemu(kernels, bus):
    # Same sizes as QEMU's observed run; names padded to the same lengths.
    mods = [(str(kernels.mod_a), "arg one"), (str(kernels.mod_b), ""),
            (str(kernels.mod_c), "x")]
    info = load(bus, kernels.elf32, "foo=1 bar", mods)
    n = [len(str(kernels.mod_a)) - len("mod1.bin"), len(str(kernels.mod_b)) - len("mod2.bin"),
         len(str(kernels.mod_c)) - len("mod3.bin"), len(str(kernels.elf32)) - len("dump.elf")]
    q = QEMU_LAYOUT_3MODS
    # kernel memsz differs from dump.elf's, but both round up to 0x105000
    assert info.info_addr == q["mods_addr"] == mbi_field(bus, 24)
    assert mbi_field(bus, 20) == 3
    assert [m.cmdline_addr for m in info.modules] == \
        [q["cmd_addrs"][0], q["cmd_addrs"][1] + n[0], q["cmd_addrs"][2] + n[0] + n[1]]
    assert mbi_field(bus, 16) == q["cmdline"] + n[0] + n[1] + n[2]
    assert mbi_field(bus, 64) == q["loader"] + sum(n)
    starts = [(m.start, m.end) for m in info.modules]
    assert starts == [(0x106000, 0x106011), (0x107000, 0x107000 + 5120), (0x109000, 0x109004)]
    for i, (m, (path, args)) in enumerate(zip(info.modules, mods)):
        entry = struct.unpack("<IIII", bus.read_bytes(info.info_addr + 16 * i, 16))
        assert entry == (m.start, m.end, m.cmdline_addr, 0)
        assert cstr(bus, m.cmdline_addr) == (f"{path} {args}" if args else path)
        assert bus.read_bytes(m.start, m.end - m.start) == open(path, "rb").read()
        assert m.start % 4096 == 0
    assert bus.read_bytes(0x106011, 0x1000 - 0x11) == bytes(0x1000 - 0x11)


# ---------------------------------------------------------------------------
# Entry state
# ---------------------------------------------------------------------------
def qemu_flags_to_attrib(flags):
    """QEMU's 'info registers' flags (descriptor bits 8-23) -> VMCB attrib."""
    return (flags >> 8) & 0xFF | ((flags >> 20) & 0xF) << 8


def test_entry_state_matches_qemu(kernels, bus):
    info = load(bus, kernels.elf32)
    q = QEMU_ENTRY
    assert info.regs["eax"] == q["eax"] and info.regs["ebx"] == q["ebx"]
    assert info.regs["eip"] == info.regs["ecx"] == info.entry
    assert info.regs["esp"] == q["esp"]
    assert info.eflags & (1 << 9) == 0 and info.eflags & 2
    assert info.cr0 == q["cr0"] and info.cr3 == info.cr4 == info.efer == 0
    cs = info.segments["cs"]
    assert (cs.selector, cs.attrib) == (q["cs"][0], qemu_flags_to_attrib(q["cs"][1]))
    assert (cs.base, cs.limit, cs.db, cs.l) == (0, 0xFFFFFFFF, 1, 0)
    for name in ("ds", "es", "fs", "gs", "ss"):
        seg = info.segments[name]
        assert (seg.selector, seg.attrib, seg.base, seg.limit) == \
            (q["data"][0], qemu_flags_to_attrib(q["data"][1]), 0, 0xFFFFFFFF)
    assert (info.gdtr.base, info.gdtr.limit) == q["gdt"]
    assert (info.idtr.base, info.idtr.limit) == q["idt"]
    assert info.a20
    gdt = [bus.read(q["gdt"][0] + 8 * i, 8) for i in range(5)]
    assert gdt == q["gdt_mem"]
    # The selectors index descriptors that decode to the segment state.
    assert bus.read_bytes(info.gdtr.base + cs.selector, 8) == cs.descriptor()
    ds = info.segments["ds"]
    assert bus.read_bytes(info.gdtr.base + ds.selector, 8) == ds.descriptor()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("attr, message", [
    ("noheader", "ELF file with no Multiboot header in the first 8 KiB"),
    ("text", "file with no Multiboot header in the first 8 KiB"),
    ("badsum", "bad checksum"),
    ("at_mbi", "overlaps the Multiboot info area"),
    ("at_vga", "overlaps the VGA window"),
])
def test_load_errors(kernels, bus, attr, message):
    path = getattr(kernels, attr)
    with pytest.raises(LoadError, match=re.escape(message)) as exc:
        load(bus, path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_missing_kernel_and_directory(kernels, bus):
    with pytest.raises(LoadError, match="kernel not found"):
        load(bus, kernels.dir / "nope.elf")
    with pytest.raises(LoadError, match="not a regular file"):
        load(bus, kernels.dir)


def test_segment_outside_ram(kernels):
    small = PhysBus(16 * MIB)
    with pytest.raises(LoadError, match="outside RAM"):
        load(small, kernels.at_32m)
    info = load(PhysBus(64 * MIB), kernels.at_32m)
    assert info.load_addr == 0x2000000


def test_modules_that_do_not_fit_in_ram(kernels, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(3 * MIB))
    with pytest.raises(LoadError, match=r"module .*big.bin .*outside RAM"):
        load(PhysBus(4 * MIB), kernels.elf32, "", [(str(big), "")])


def test_missing_module(kernels, bus):
    with pytest.raises(LoadError, match=r"nope.bin: module not found"):
        load(bus, kernels.elf32, "", [(str(kernels.dir / "nope.bin"), "")])


def test_mem_size_must_match_the_bus(kernels, bus):
    with pytest.raises(ConfigError):
        mb.load_multiboot(bus, str(kernels.elf32), "", [], mem_size=64 * MIB)


# ---------------------------------------------------------------------------
# Live comparison with QEMU (skipped when QEMU or gcc -m32 is missing)
# ---------------------------------------------------------------------------
def _build_dump(kernels):
    root = kernels.dir
    (root / "dump.c").write_text(DUMP_C)
    k = Kernels(root)
    k._run("gcc", "-m32", "-ffreestanding", "-fno-pic", "-fno-pie", "-nostdlib",
           "-nostdinc", "-O2", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
           "-c", "dump.c", "-o", "dump.o")
    (root / "dstart.s").write_text(DUMP_START)
    (root / "dump.ld").write_text(LINK_1M)
    k._run("as", "--32", "dstart.s", "-o", "dstart.o")
    k._run("ld", "-m", "elf_i386", "-z", "noexecstack", "--no-warn-rwx-segments",
           "-T", "dump.ld", "dstart.o", "dump.o", "-o", "dump.elf")
    return root / "dump.elf"


@pytest.mark.skipif(not (shutil.which("qemu-system-x86_64") and shutil.which("gcc")),
                    reason="qemu-system-x86_64 or gcc not installed")
def test_against_live_qemu(kernels, bus):
    try:
        dump = _build_dump(kernels)
    except RuntimeError as exc:
        pytest.skip(f"cannot build the 32-bit dump kernel: {exc}")
    mods = [(str(kernels.mod_a), "arg one"), (str(kernels.mod_b), "")]
    initrd = ",".join(f"{p} {a}" if a else p for p, a in mods)
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "EPYC", "-m", "128",
           "-display", "none", "-serial", "stdio", "-no-reboot", "-device",
           "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(dump),
           "-append", "a=1 b", "-initrd", initrd]
    proc = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 1, proc.stderr
    info = load(bus, dump, "a=1 b", mods)
    ours = [f"magic={mb.BOOTLOADER_MAGIC:#x}", f"mbi={info.mbi_addr:#x}",
            f"flags={mb.MBI_FLAGS:#x}", f"mem_lower={info.mem_lower:#x}",
            f"mem_upper={info.mem_upper:#x}", f"boot_device={mb.BOOT_DEVICE:#x}",
            f"cmdline={mbi_field(bus, 16):#x}", f'cmdline_str="{info.cmdline}"',
            f"mods_count={len(info.modules):#x}", f"mods_addr={info.info_addr:#x}"]
    for m in info.modules:
        ours += [f"mod_start={m.start:#x}", f"mod_end={m.end:#x}",
                 f"mod_cmd={m.cmdline_addr:#x}", f'mod_cmd_str="{m.cmdline}"']
    ours += [f"mmap_length={24 * len(info.mmap):#x}", f"mmap_addr={mb.MMAP_ADDR:#x}"]
    ours += [f"e {e.base:#x} {e.length:#x} {e.type:#x}" for e in info.mmap]
    ours += [f"loader={mbi_field(bus, 64):#x}", 'loader_str="qemu"']
    assert lines == ours
