"""SeaBIOS's firmware tables as svmsim writes them for a Linux boot
(svmsim.boot.mptable): MultiProcessor Specification 1.4 structures and the
$PIR table, checked against the specifications' rules."""
import struct

from svmsim.boot import mptable
from svmsim.machine import Machine


def _sum(b):
    return sum(b) & 0xFF


def test_floating_pointer_and_config_table_follow_mp_spec():
    m = Machine(mem_size="64M", smp=2)
    mptable.install(m)
    fp = m.bus.read_bytes(mptable.MP_FLOATING_ADDR, 16)
    assert fp[:4] == b"_MP_" and _sum(fp) == 0              # MP spec 4.1
    assert fp[8] == 1 and fp[9] == 4                         # length in paragraphs, spec 1.4
    cfg_addr = struct.unpack_from("<I", fp, 4)[0]
    head = m.bus.read_bytes(cfg_addr, 44)
    length, count = struct.unpack_from("<H", head, 4)[0], struct.unpack_from("<H", head, 34)[0]
    table = m.bus.read_bytes(cfg_addr, length)
    assert table[:4] == b"PCMP" and _sum(table) == 0         # 4.2
    kinds, pos = [], 44
    for _ in range(count):
        kinds.append(table[pos])
        pos += 20 if table[pos] == 0 else 8
    assert pos == length
    assert kinds.count(0) == 2                               # one entry per CPU
    assert kinds.count(2) == 1                               # the I/O APIC
    cpu0 = table[44:64]
    assert cpu0[3] == 3 and struct.unpack_from("<I", cpu0, 4)[0] == m.profile.reset_edx


def test_isa_irq0_goes_to_ioapic_pin2_and_pci_irqs_are_left_out():
    m = Machine(mem_size="64M")
    mptable.install(m)
    head = m.bus.read_bytes(mptable.MP_CONFIG_ADDR, 44)
    table = m.bus.read_bytes(mptable.MP_CONFIG_ADDR, struct.unpack_from("<H", head, 4)[0])
    isa = {}
    pos = 44 + 20
    while pos < len(table):
        if table[pos] == 3 and table[pos + 4] == 1:         # INT from the ISA bus (id 1)
            isa[table[pos + 5]] = table[pos + 7]
        pos += 20 if table[pos] == 0 else 8
    assert isa[0] == 2 and 2 not in isa
    assert not {5, 9, 10, 11} & set(isa)


def test_pir_table_and_piix3_routes():
    m = Machine(mem_size="64M")
    mptable.install(m)
    pir = m.bus.read_bytes(mptable.PIR_ADDR, 128)
    assert pir[:4] == b"$PIR" and _sum(pir) == 0
    assert pir[9] == 0x08                                    # router: 00:01.0
    assert [m.pci.isa.route(i) for i in range(4)] == [10, 10, 11, 11]
    assert m.io.read(0x4D1, 1) == 0x0C                       # IRQ 10, 11 level-triggered
