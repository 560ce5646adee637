"""The Linux/x86 boot protocol loader (svmsim.boot.linux) on synthetic
bzImages: a setup header as the kernel's header.S lays it out and a
protected-mode part of our own 32-bit code, which checks at run time what
Documentation/x86/boot.rst ("32-bit Boot Protocol") promises it."""
import shutil
import struct
import subprocess

import pytest

from svmsim.boot import linux
from svmsim.errors import LoadError, ConfigError
from svmsim.machine import Machine

needs_as = pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None,
                              reason="needs binutils")

# Runs at code32_start; ends through isa-debug-exit with a code saying what it saw:
# 0x10 + n for the first broken promise, 0 when all hold.
ENTRY_CHECKS = r"""
    .code32
    .globl _start
_start:
    mov $0x11, %al
    mov %cs, %dx
    cmp $0x10, %dx
    jne fail
    mov $0x12, %al
    mov %ds, %dx
    cmp $0x18, %dx
    jne fail
    mov %ss, %dx
    cmp $0x18, %dx
    jne fail
    mov $0x13, %al
    test %ebx, %ebx
    jnz fail
    test %ebp, %ebp
    jnz fail
    test %edi, %edi
    jnz fail
    mov $0x14, %al
    pushf
    pop %edx
    test $0x200, %edx              /* IF = 0 */
    jnz fail
    mov %cr0, %edx
    test $0x80000000, %edx         /* paging off */
    jnz fail
    mov $0x15, %al
    cmpl $0x53726448, 0x202(%esi)  /* boot_params at ESI holds the header */
    jne fail
    mov $0x16, %al
    mov 0x228(%esi), %edx          /* cmd_line_ptr -> "console=ttyS0 ..." */
    cmpl $0x736e6f63, (%edx)
    jne fail
    mov $0x17, %al
    mov 0x218(%esi), %edx          /* ramdisk_image -> the initrd's first word */
    cmpl $0x64727469, (%edx)
    jne fail
    mov $0x18, %al
    cmpb $0xB0, 0x210(%esi)        /* type_of_loader: QEMU */
    jne fail
    mov $0x19, %al
    cmpb $0, 0x1E8(%esi)           /* e820_entries */
    je fail
    mov $0, %al
fail:
    out %al, $0xf4
    hlt
"""


def make_bzimage(tmp_path, version=0x20F, loadflags=linux.LOADED_HIGH, setup_sects=1,
                 init_size=0x400000, code=ENTRY_CHECKS):
    src = tmp_path / "entry.S"
    src.write_text(code)
    obj, raw = tmp_path / "entry.o", tmp_path / "entry.bin"
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200], setup[0x201] = 0xEB, 0x6A          # jmp over the header: its end is 0x26C
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    struct.pack_into("<H", setup, 0x236, linux.XLF_KERNEL_64 | linux.XLF_CAN_BE_LOADED_ABOVE_4G)
    struct.pack_into("<I", setup, 0x238, 2047)
    struct.pack_into("<I", setup, 0x260, init_size)
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(setup) + raw.read_bytes())
    return path


@pytest.fixture
def initrd(tmp_path):
    p = tmp_path / "initrd"
    p.write_bytes(b"itrd" + bytes(5000))
    return p


@needs_as
def test_kernel_starts_in_the_documented_32bit_state(tmp_path, initrd):
    m = Machine(mem_size="128M", serial_out=open("/dev/null", "wb"))
    m.load_kernel(str(make_bzimage(tmp_path)), "console=ttyS0 quiet", initrd=str(initrd))
    r = m.run(max_insns=10_000)
    assert r.status == 1, r.reason                       # wrote 0: every check held


@needs_as
def test_boot_params_as_qemu_places_them(tmp_path, initrd):
    m = Machine(mem_size="128M")
    info = m.load_kernel(str(make_bzimage(tmp_path)), "console=ttyS0", initrd=str(initrd))
    bp = m.bus.read_bytes(info.boot_params, 0x1000)
    assert info.boot_params == 0x10000 and info.entry == 0x100000
    assert struct.unpack_from("<I", bp, 0x228)[0] == 0x20000
    assert m.bus.read_bytes(0x20000, 14) == b"console=ttyS0\0"
    # initrd: page-aligned below 128M less QEMU's 0x20000 bytes of ACPI data
    want = (0x8000000 - 0x20000 - 1 - 5004) & ~0xFFF
    assert struct.unpack_from("<II", bp, 0x218) == (want, 5004)
    assert m.bus.read_bytes(want, 4) == b"itrd"
    assert bp[0x211] & linux.CAN_USE_HEAP and struct.unpack_from("<H", bp, 0x224)[0] == 0xFE00
    n = bp[0x1E8]
    table = [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(n)]
    assert (0x100000, 0x8000000 - 0x20000 - 0x100000, 1) in table     # SeaBIOS's map
    assert bp[0x1EF] == 0                                              # sentinel clear
    assert m.cpus[0].regs[6] == 0x10000                                # ESI


@needs_as
def test_bzimage_is_detected_and_multiboot_modules_refused(tmp_path):
    k = make_bzimage(tmp_path)
    assert linux.is_bzimage(str(k))
    m = Machine(mem_size="64M")
    with pytest.raises(ConfigError):
        m.load_kernel(str(k), "", [(str(k), "")])


@needs_as
def test_old_protocol_and_zimage_are_refused(tmp_path):
    m = Machine(mem_size="64M")
    with pytest.raises(LoadError, match="too old"):
        m.load_kernel(str(make_bzimage(tmp_path, version=0x204)))
    with pytest.raises(LoadError, match="zImage"):
        m.load_kernel(str(make_bzimage(tmp_path, loadflags=0)))


@needs_as
def test_too_little_memory_is_a_load_error(tmp_path, initrd):
    m = Machine(mem_size="4M")
    with pytest.raises(LoadError, match="init_size|outside RAM"):
        m.load_kernel(str(make_bzimage(tmp_path)), "", initrd=str(initrd))


@needs_as
def test_overlong_command_line_is_refused(tmp_path):
    m = Machine(mem_size="64M")
    with pytest.raises(LoadError, match="at most 2047"):
        m.load_kernel(str(make_bzimage(tmp_path)), "x" * 3000)


def test_alt_mem_k_follows_e801():
    e = [linux.MmapEntry(0, 0x9FC00, 1), linux.MmapEntry(0x100000, 0x7EE0000, 1)]
    assert linux.alt_mem_k(e) == 15 * 1024 + ((0x7FE0000 - 0x1000000) >> 16) * 64


@needs_as
def test_reference_vmm_boots_a_bzimage_as_a_guest(tmp_path, initrd):
    """Issue 16, item 4: the VMM loads the kernel with the same boot protocol
    into guest memory (its own E820 map) and starts it under nested paging in
    the same documented state; the guest's checks pass through intercepted
    port I/O to isa-debug-exit."""
    from svmsim.vmm import Vmm
    from svmsim.vmm.linux import load_linux, sev_regions
    m = Machine(mem_size="96M", serial_out=open("/dev/null", "wb"))
    vmm = Vmm(m, guest_mem=64 << 20)
    info = load_linux(vmm, str(make_bzimage(tmp_path)), "console=ttyS0", str(initrd))
    assert linux.MmapEntry(0x100000, (64 << 20) - 0x20000 - 0x100000, 1) in info.e820
    assert vmm.mem.read_bytes(0xF5BA0, 4) == b"_MP_"
    result = vmm.run(max_insns=100_000)
    assert m.stop_status == 1, result.reason
    assert result.exits.get("IOIO") == 1
    covered = sev_regions(info)
    for gpa in (info.boot_params, info.cmdline_addr, info.load_addr, info.initrd_addr, 0xF5BA0):
        assert any(a <= gpa < a + n for a, n in covered), hex(gpa)
