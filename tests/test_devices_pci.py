"""PCI bus 0 behind configuration mechanism #1 (PCI Local Bus Spec 3.0,
3.2.2.3.2), as QEMU's pc machine shows it: i440FX host bridge at 00.0,
PIIX3 ISA bridge at 01.0; BAR sizing and decoding (6.2.5); INTx routing
through the PIIX3's PIRQ registers."""
import pytest

from svmsim.machine import Machine
from svmsim.devices.pci import Bar, PciFunction, CMD_IO, CMD_MEMORY, CMD_INTX_DISABLE


@pytest.fixture
def m():
    return Machine(mem_size="16M")


def cfg_read(m, slot, fn, reg, size=4, bus=0):
    m.io.write(0xCF8, 4, 0x80000000 | bus << 16 | slot << 11 | fn << 8 | (reg & 0xFC))
    return m.io.read(0xCFC + (reg & 3), size)


def cfg_write(m, slot, fn, reg, value, size=4):
    m.io.write(0xCF8, 4, 0x80000000 | slot << 11 | fn << 8 | (reg & 0xFC))
    m.io.write(0xCFC + (reg & 3), size, value)


def test_host_bridge_and_isa_bridge_ids(m):
    assert cfg_read(m, 0, 0, 0) == 0x12378086           # i440FX
    assert cfg_read(m, 0, 0, 8) >> 8 == 0x060000         # class: host bridge
    assert cfg_read(m, 1, 0, 0) == 0x70008086           # PIIX3
    assert cfg_read(m, 1, 0, 8) >> 8 == 0x060100         # class: ISA bridge
    assert cfg_read(m, 1, 0, 0xE, 1) & 0x80              # multi-function


def test_absent_functions_and_other_buses_read_all_ones(m):
    assert cfg_read(m, 5, 0, 0) == 0xFFFFFFFF
    assert cfg_read(m, 0, 3, 0) == 0xFFFFFFFF            # 00.0 is single-function
    assert cfg_read(m, 0, 0, 0, bus=1) == 0xFFFFFFFF


def test_config_address_latches_only_dword_writes(m):
    """Linux's pci_check_type1 writes a byte to 0xCFB, then probes 0xCF8."""
    m.io.write(0xCF8, 4, 0x80000000)
    assert m.io.read(0xCF8, 4) == 0x80000000
    m.io.write(0xCF8, 2, 0x1234)
    assert m.io.read(0xCF8, 4) == 0x80000000
    m.io.write(0xCFB, 1, 1)
    assert m.io.read(0xCF8, 4) == 0x80000000


def test_disabled_config_address_reads_all_ones(m):
    m.io.write(0xCF8, 4, 0)
    assert m.io.read(0xCFC, 4) == 0xFFFFFFFF


def test_read_only_fields_ignore_writes(m):
    cfg_write(m, 0, 0, 0, 0xDEADBEEF)
    assert cfg_read(m, 0, 0, 0) == 0x12378086
    cfg_write(m, 0, 0, 0x3C, 0x0B, size=1)               # interrupt line is writable
    assert cfg_read(m, 0, 0, 0x3C, 1) == 0x0B


class Probe(PciFunction):
    vendor_id, device_id, class_code = 0x1234, 0x11E8, 0x00FF00
    interrupt_pin = 1
    bars = (Bar(0x1000), Bar(0x20, io=True))

    def __init__(self):
        super().__init__()
        self.writes = []

    def bar_read(self, bar, offset, size):
        return 0xA0 + bar * 0x10 + offset

    def bar_write(self, bar, offset, size, value):
        self.writes.append((bar, offset, size, value))


def test_bar_sizing_reports_the_size_and_type(m):
    m.pci.add(Probe(), 4)
    cfg_write(m, 4, 0, 0x10, 0xFFFFFFFF)
    assert cfg_read(m, 4, 0, 0x10) == 0xFFFFF000         # 4 KiB memory BAR
    cfg_write(m, 4, 0, 0x14, 0xFFFFFFFF)
    assert cfg_read(m, 4, 0, 0x14) == 0xFFFFFFE1         # 32 ports, I/O space bit


def test_bars_decode_only_when_enabled(m):
    dev = m.pci.add(Probe(), 4)
    cfg_write(m, 4, 0, 0x10, 0xFEB00000)
    cfg_write(m, 4, 0, 0x14, 0xC000)
    assert m.bus.read(0xFEB00004, 4) == 0xFFFFFFFF       # command register: decoding off
    assert m.io.read(0xC002, 1) == 0xFF
    cfg_write(m, 4, 0, 0x04, CMD_MEMORY | CMD_IO, size=2)
    assert m.bus.read(0xFEB00004, 4) == 0xA4
    assert m.io.read(0xC002, 1) == 0xB2
    m.bus.write(0xFEB00008, 4, 7)
    assert dev.writes == [(0, 8, 4, 7)]
    cfg_write(m, 4, 0, 0x10, 0xFEA00000)                 # move the BAR
    assert m.bus.read(0xFEB00004, 4) == 0xFFFFFFFF
    assert m.bus.read(0xFEA00004, 4) == 0xA4
    cfg_write(m, 4, 0, 0x04, 0, size=2)
    assert m.bus.read(0xFEA00004, 4) == 0xFFFFFFFF
    assert m.io.read(0xC002, 1) == 0xFF


def test_intx_is_routed_by_the_piix3_pirq_registers(m):
    dev = m.pci.add(Probe(), 5)                           # INTA# of slot 5: PIRQA
    seen = []
    m.pic.set_irq = lambda line, level: seen.append((line, level))
    dev.set_irq(True)
    assert seen == []                                     # PIRQRC A disabled at reset
    dev.set_irq(False)
    cfg_write(m, 1, 0, 0x60, 0x0B, size=1)                # PIRQA -> IRQ 11
    dev.set_irq(True)
    assert seen == [(11, True)]
    assert cfg_read(m, 4, 0, 0x06, 2) & 0x8               # status: interrupt
    dev.set_irq(False)
    assert seen[-1] == (11, False)


def test_intx_disable_masks_the_pin(m):
    dev = m.pci.add(Probe(), 4)
    cfg_write(m, 1, 0, 0x60, 0x0B, size=1)
    seen = []
    m.pic.set_irq = lambda line, level: seen.append((line, level))
    cfg_write(m, 4, 0, 0x04, CMD_INTX_DISABLE, size=2)
    dev.set_irq(True)
    assert seen == []
    assert cfg_read(m, 4, 0, 0x06, 2) & 0x8               # the status bit still shows it


def test_slot_taken_is_refused(m):
    with pytest.raises(ValueError):
        m.pci.add(Probe(), 0)
