"""QEMU's edu device (PCI 1234:11e8; QEMU docs/specs/edu.rst, hw/misc/edu.c
of QEMU 7.2): the kernel tests/guests/edu.c prints on svmsim exactly what it
printed on ``qemu-system-x86_64 -device edu``; the device's register rules
one by one from Python."""
import io
import subprocess
import sys

import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.devices import edu as edu_mod

BAR = 0xE0000000
RAM_BUF = 0x200000


def cfg_write(m, slot, reg, value, size=4):
    m.io.write(0xCF8, 4, 0x80000000 | slot << 11 | (reg & 0xFC))
    m.io.write(0xCFC + (reg & 3), size, value)


@pytest.fixture
def m():
    """A machine with the edu device, BAR 0 at BAR, memory decoding and bus mastering on."""
    m = Machine(mem_size="16M", devices=("edu",))
    slot = m.edu.slot
    cfg_write(m, slot, 0x10, BAR)
    cfg_write(m, slot, 0x04, 0x6, size=2)
    return m


def advance(m, ns):
    m.clock.now_ns += ns
    m.clock.run_due()


def test_kernel_prints_what_qemu_printed():
    cfg = gb.KERNEL_RUNS["edu"]
    out = io.BytesIO()
    machine = Machine(mem_size="128M", smp=cfg["smp"], serial_out=out, devices=cfg["devices"])
    machine.load_kernel(str(gb.build_guest("edu")), cfg["append"])
    result = machine.run(max_insns=50_000_000, timeout=120)
    assert out.getvalue().decode() == gb.expected_transcript("edu").decode()
    assert result.status == gb.STATUS_PASS, result.reason


def test_config_space_as_qemu_shows_it():
    m = Machine(mem_size="16M", devices=("edu",))
    f = m.edu
    assert m.pci.functions[(2, 0)] is f                 # the first free slot, as QEMU's -nodefaults
    assert f.config_read(0, 4) == 0x11E81234 and f.config_read(8, 4) == 0x00FF0010
    assert f.config_read(0x2C, 4) == 0x11001AF4 and f.config_read(0x3D, 1) == 1
    assert f.config_read(0x34, 1) == 0x40 and f.config_read(0x40, 4) == 0x00800005   # MSI, 64-bit


def test_factorial_takes_time_and_wraps_at_32_bits(m):
    m.bus.write(BAR + 8, 4, 13)
    assert m.bus.read(BAR + 0x20, 4) & edu_mod.STATUS_COMPUTING
    m.bus.write(BAR + 8, 4, 3)                         # ignored while computing
    advance(m, edu_mod.FACT_NS)
    assert m.bus.read(BAR + 0x20, 4) == 0
    assert m.bus.read(BAR + 8, 4) == 6227020800 % 2**32


def test_dma_round_trip_and_interrupt_status(m):
    m.bus.write_bytes(RAM_BUF, bytes(range(256)))
    for off, value in ((0x80, RAM_BUF), (0x88, 0x40010), (0x90, 256), (0x98, 1)):
        m.bus.write(BAR + off, 8, value)
    advance(m, edu_mod.DMA_NS)
    assert m.bus.read(BAR + 0x98, 8) == 0
    for off, value in ((0x80, 0x40010), (0x88, RAM_BUF + 0x1000), (0x90, 256), (0x98, 7)):
        m.bus.write(BAR + off, 8, value)
    advance(m, edu_mod.DMA_NS)
    assert m.bus.read_bytes(RAM_BUF + 0x1000, 256) == bytes(range(256))
    assert m.bus.read(BAR + 0x24, 4) == edu_mod.DMA_IRQ and m.edu.irq_level


def test_dma_registers_are_frozen_while_a_transfer_runs(m):
    m.bus.write(BAR + 0x80, 8, RAM_BUF)
    m.bus.write(BAR + 0x88, 8, 0x40000)
    m.bus.write(BAR + 0x90, 8, 16)
    m.bus.write(BAR + 0x98, 8, 1)
    m.bus.write(BAR + 0x80, 8, 0x123000)
    m.bus.write(BAR + 0x98, 8, 3)
    assert m.bus.read(BAR + 0x80, 8) == RAM_BUF and m.bus.read(BAR + 0x98, 8) == 1


def test_dma_address_is_cut_to_the_28_bit_mask(m):
    m.bus.write_bytes(RAM_BUF, b"masked")
    for off, value in ((0x80, (1 << 40) | RAM_BUF), (0x88, 0x40000), (0x90, 6), (0x98, 1)):
        m.bus.write(BAR + off, 8, value)
    advance(m, edu_mod.DMA_NS)
    assert bytes(m.edu.buffer[:6]) == b"masked"


@pytest.mark.parametrize("local, count", [(0x3FFFF, 2), (0x40F00, 0x101), (0x40000, 0)])
def test_dma_outside_the_buffer_transfers_nothing(m, local, count):
    m.bus.write_bytes(RAM_BUF, b"\xAA" * 0x200)
    for off, value in ((0x80, local), (0x88, RAM_BUF), (0x90, count), (0x98, 3)):
        m.bus.write(BAR + off, 8, value)
    advance(m, edu_mod.DMA_NS)
    assert m.bus.read_bytes(RAM_BUF, 0x200) == b"\xAA" * 0x200
    assert any("outside its buffer" in n for n in m.notes)
    assert m.bus.read(BAR + 0x98, 8) == 2                 # RUN clears, the direction stays


def test_dma_needs_bus_master_enable(m):
    cfg_write(m, m.edu.slot, 0x04, 0x2, size=2)          # memory decoding only
    m.edu.buffer[:4] = b"edu!"
    for off, value in ((0x80, 0x40000), (0x88, RAM_BUF), (0x90, 4), (0x98, 3)):
        m.bus.write(BAR + off, 8, value)
    advance(m, edu_mod.DMA_NS)
    assert m.bus.read_bytes(RAM_BUF, 4) == bytes(4)
    assert any("Bus Master Enable" in n for n in m.notes)


def test_msi_reaches_the_local_apic_and_intx_stays_low(m):
    f, apic = m.edu, m.cpus[0].lapic
    msi = f.msi_cap
    cfg_write(m, f.slot, msi + 4, 0xFEE00000)
    cfg_write(m, f.slot, msi + 12, 0x51, size=2)
    cfg_write(m, f.slot, msi + 2, 1, size=2)
    m.bus.write(BAR + 0x60, 4, 0x8)
    assert apic.has_interrupt() and apic.acknowledge() == 0x51
    assert not f.irq_level


def test_access_sizes_as_qemu_checks_them(m):
    assert m.bus.read(BAR, 1) == 0 and m.bus.read(BAR, 2) == 0        # refused: 0
    assert m.bus.read(BAR, 8) == (1 << 64) - 1                        # 8 bytes below 80h
    m.bus.write(BAR + 4, 4, 0x12345678)
    assert m.bus.read(BAR + 2, 4) == 0xA9870100                       # misaligned: two reads
    m.bus.write(BAR + 4, 8, 0)                                        # ignored
    assert m.bus.read(BAR + 4, 4) == 0xEDCBA987


def test_cli_device_option():
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", "--device", "nope", "k.elf"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "unknown device 'nope'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_svmsim_qemu_lists_and_takes_edu():
    from svmsim.cli_qemu import DEVICES, _devices
    assert DEVICES["edu"][0] == "PCI"
    assert _devices({"device": ["edu"]}) == ("edu",)
