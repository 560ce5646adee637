"""Local APIC and I/O APIC, driven through the MMIO bus and the MSR entry points
the CPU uses, on a fake two-CPU machine with the real VirtualClock."""
from types import SimpleNamespace

import pytest

from svmsim.devices.apic import (
    APIC_BASE_BSP, APIC_BASE_EN, APIC_BASE_EXTD, APIC_DEFAULT_BASE, APIC_DFR,
    APIC_EOI, APIC_ESR, APIC_ICR_HIGH, APIC_ICR_LOW, APIC_ID, APIC_IRR,
    APIC_ISR, APIC_LDR, APIC_LVT_LINT0, APIC_LVT_TIMER, APIC_PPR,
    APIC_SPACE_SIZE, APIC_SVR, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL, APIC_TMR, APIC_TPR, APIC_VER, ApicMmioRouter,
    LocalApic)
from svmsim.devices.clock import VirtualClock
from svmsim.devices.ioapic import IOAPIC_DEFAULT_BASE, IoApic
from svmsim.memory.bus import PhysBus

IOAPIC = IOAPIC_DEFAULT_BASE


class FakeCpu:
    def __init__(self, machine, index):
        self.index = index
        self.kicks = 0
        self.events = []
        self.lapic = LocalApic(machine, self)

    def kick(self):
        self.kicks += 1

    def signal_init(self):
        self.events.append("INIT")

    def signal_sipi(self, vector):
        self.events.append(("SIPI", vector))

    def signal_nmi(self):
        self.events.append("NMI")

    def signal_smi(self):
        self.events.append("SMI")


@pytest.fixture
def m():
    machine = SimpleNamespace(clock=VirtualClock(), bus=PhysBus(1 << 20),
                              cpus=[], current_cpu=None)
    machine.cpus = [FakeCpu(machine, i) for i in range(2)]
    machine.current_cpu = machine.cpus[0]
    machine.bus.add_mmio(APIC_DEFAULT_BASE, APIC_SPACE_SIZE, ApicMmioRouter(machine))
    machine.ioapic = IoApic(machine)
    machine.bus.add_mmio(IOAPIC, 0x1000, machine.ioapic)
    return machine


def wr(m, off, val, cpu=0):
    m.current_cpu = m.cpus[cpu]
    m.bus.write(APIC_DEFAULT_BASE + off, 4, val)


def rd(m, off, cpu=0, size=4):
    m.current_cpu = m.cpus[cpu]
    return m.bus.read(APIC_DEFAULT_BASE + off, size)


def enable(m, cpu=0):
    wr(m, APIC_SVR, 0x1FF, cpu)


def run(m, ns):
    m.clock.advance(ns)
    m.clock.run_due()


def irr_has(m, vector, cpu=0):
    return bool(rd(m, APIC_IRR + 0x10 * (vector // 32), cpu) >> (vector % 32) & 1)


def isr_has(m, vector, cpu=0):
    return bool(rd(m, APIC_ISR + 0x10 * (vector // 32), cpu) >> (vector % 32) & 1)


def esr(m, cpu=0):
    wr(m, APIC_ESR, 0, cpu)          # write-before-read
    return rd(m, APIC_ESR, cpu)


# -- reset state and register access ------------------------------------------
def test_reset_state(m):
    assert rd(m, APIC_VER) == 0x0005_0010
    assert rd(m, APIC_ID, cpu=1) == 1 << 24
    assert m.cpus[0].lapic.read_apic_base() == APIC_DEFAULT_BASE | APIC_BASE_EN | APIC_BASE_BSP
    assert m.cpus[1].lapic.read_apic_base() == APIC_DEFAULT_BASE | APIC_BASE_EN
    assert rd(m, APIC_SVR) == 0xFF
    assert rd(m, APIC_DFR) == 0xFFFF_FFFF
    assert rd(m, APIC_LVT_TIMER) == 0x10000


def test_narrow_access_reads_zero_and_wide_access_splits(m):
    wr(m, APIC_TPR, 0x20)
    assert rd(m, APIC_TPR, size=1) == 0
    m.bus.write(APIC_DEFAULT_BASE + APIC_TPR, 2, 0x30)        # ignored
    assert rd(m, APIC_TPR) == 0x20
    assert rd(m, APIC_TPR + 4) == 0x20                        # low offset bits ignored
    assert rd(m, APIC_TPR, size=8) == 0x20 | 0x20 << 32


def test_illegal_register_sets_esr_after_write(m):
    enable(m)
    assert rd(m, 0x2F0) == 0                 # LVT CMCI does not exist on AMD
    assert rd(m, APIC_ESR) == 0              # not visible before the ESR write
    assert esr(m) == 0x80
    assert esr(m) == 0                       # the write cleared it


def test_software_disabled_forces_lvt_masks(m):
    wr(m, APIC_LVT_TIMER, 0x40)
    assert rd(m, APIC_LVT_TIMER) == 0x10040
    enable(m)
    wr(m, APIC_LVT_TIMER, 0x40)
    assert rd(m, APIC_LVT_TIMER) == 0x40
    wr(m, APIC_SVR, 0xFF)
    assert rd(m, APIC_LVT_TIMER) == 0x10040


# -- timer --------------------------------------------------------------------
def test_one_shot_timer_count_and_expiry(m):
    enable(m)
    wr(m, APIC_TIMER_DIVIDE, 0xB)            # divide by 1: one tick per ns
    wr(m, APIC_LVT_TIMER, 0x40)
    wr(m, APIC_TIMER_INITIAL, 1000)
    run(m, 400)
    assert rd(m, APIC_TIMER_CURRENT) == 600
    assert not irr_has(m, 0x40)
    run(m, 599)
    assert not irr_has(m, 0x40)
    run(m, 1)
    assert irr_has(m, 0x40)
    assert rd(m, APIC_TIMER_CURRENT) == 0
    m.cpus[0].lapic.acknowledge()
    wr(m, APIC_EOI, 0)
    run(m, 5000)
    assert not irr_has(m, 0x40)              # one-shot: fires once


def test_periodic_timer_with_divider(m):
    enable(m)
    wr(m, APIC_TIMER_DIVIDE, 0x0)            # divide by 2
    wr(m, APIC_LVT_TIMER, 0x20000 | 0x41)
    wr(m, APIC_TIMER_INITIAL, 100)           # period 200 ns
    run(m, 50)
    assert rd(m, APIC_TIMER_CURRENT) == 75
    run(m, 150)
    assert irr_has(m, 0x41)
    assert rd(m, APIC_TIMER_CURRENT) == 100  # reloaded
    assert m.cpus[0].lapic.acknowledge() == 0x41
    wr(m, APIC_EOI, 0)
    run(m, 199)
    assert not irr_has(m, 0x41)
    run(m, 1)
    assert irr_has(m, 0x41)


def test_masked_timer_keeps_counting_without_interrupt(m):
    enable(m)
    wr(m, APIC_TIMER_DIVIDE, 0xB)
    wr(m, APIC_LVT_TIMER, 0x10042)
    wr(m, APIC_TIMER_INITIAL, 300)
    run(m, 100)
    assert rd(m, APIC_TIMER_CURRENT) == 200
    run(m, 300)
    assert rd(m, APIC_TIMER_CURRENT) == 0
    wr(m, APIC_LVT_TIMER, 0x42)              # unmask after expiry: nothing
    run(m, 1000)
    assert not irr_has(m, 0x42)


def test_due_expiry_is_not_lost_when_reprogrammed(m):
    enable(m)
    wr(m, APIC_TIMER_DIVIDE, 0xB)
    wr(m, APIC_LVT_TIMER, 0x45)
    wr(m, APIC_TIMER_INITIAL, 100)
    m.clock.advance(150)                     # due, but the clock has not run it
    wr(m, APIC_TIMER_INITIAL, 1000)          # reload: the old expiry still fires
    assert irr_has(m, 0x45)
    m.cpus[0].lapic.acknowledge()
    wr(m, APIC_EOI, 0)
    m.clock.run_due()
    assert not irr_has(m, 0x45)              # and only once
    run(m, 1000)
    assert irr_has(m, 0x45)


def test_tsc_deadline_timer(m):
    lapic = m.cpus[0].lapic
    enable(m)
    lapic.write_tsc_deadline(123)            # ignored outside deadline mode
    assert lapic.read_tsc_deadline() == 0
    wr(m, APIC_LVT_TIMER, 0x40000 | 0x43)
    wr(m, APIC_TIMER_INITIAL, 50)            # ignored in deadline mode
    assert rd(m, APIC_TIMER_INITIAL) == 0
    run(m, 1000)
    lapic.write_tsc_deadline(1500)
    assert lapic.read_tsc_deadline() == 1500
    run(m, 499)
    assert not irr_has(m, 0x43)
    assert rd(m, APIC_TIMER_CURRENT) == 0
    run(m, 1)
    assert irr_has(m, 0x43)
    assert lapic.read_tsc_deadline() == 0    # disarmed itself
    lapic.acknowledge()
    wr(m, APIC_EOI, 0)
    lapic.write_tsc_deadline(10)             # already passed: fires at once
    assert irr_has(m, 0x43)


def test_tsc_deadline_uses_cpu_conversion(m):
    cpu = m.cpus[1]
    cpu.tsc_from_ns = lambda ns: ns * 2      # a 2 GHz TSC
    cpu.ns_from_tsc = lambda tsc: tsc // 2
    enable(m, 1)
    wr(m, APIC_LVT_TIMER, 0x40000 | 0x44, cpu=1)
    cpu.lapic.write_tsc_deadline(1000)       # 500 ns
    run(m, 499)
    assert not irr_has(m, 0x44, cpu=1)
    run(m, 1)
    assert irr_has(m, 0x44, cpu=1)


# -- priorities, INTA, EOI ------------------------------------------------------
def test_tpr_ppr_masking(m):
    lapic = m.cpus[0].lapic
    enable(m)
    lapic.accept(0x51)
    lapic.accept(0x32)
    wr(m, APIC_TPR, 0x50)
    assert rd(m, APIC_PPR) == 0x50
    assert not lapic.has_interrupt()         # class 5 is not above PPR class 5
    assert lapic.acknowledge() == 0xFF       # spurious vector from the SVR
    wr(m, APIC_TPR, 0x40)
    assert lapic.has_interrupt()
    assert lapic.acknowledge() == 0x51
    assert rd(m, APIC_PPR) == 0x50           # from the ISR now
    assert not lapic.has_interrupt()         # 0x32 blocked by in-service 0x51
    wr(m, APIC_EOI, 0)
    assert rd(m, APIC_PPR) == 0x40
    assert not lapic.has_interrupt()
    lapic.write_cr8(0)
    assert lapic.read_cr8() == 0 and rd(m, APIC_TPR) == 0
    assert lapic.acknowledge() == 0x32


def test_nested_interrupts_eoi_highest_first(m):
    lapic = m.cpus[0].lapic
    enable(m)
    lapic.accept(0x30)
    assert lapic.acknowledge() == 0x30
    lapic.accept(0x80)
    assert lapic.has_interrupt()             # higher class preempts
    assert lapic.acknowledge() == 0x80
    assert isr_has(m, 0x30) and isr_has(m, 0x80)
    wr(m, APIC_EOI, 0)
    assert isr_has(m, 0x30) and not isr_has(m, 0x80)
    wr(m, APIC_EOI, 0)
    assert not isr_has(m, 0x30)


def test_illegal_vector_is_refused(m):
    lapic = m.cpus[0].lapic
    enable(m)
    lapic.accept(3)
    assert not lapic.irr
    assert esr(m) == 0x40                    # received illegal vector


def test_software_disabled_apic_drops_fixed_but_takes_nmi(m):
    wr(m, APIC_ICR_HIGH, 1 << 24)
    wr(m, APIC_ICR_LOW, 0x4045)              # fixed to the disabled CPU 1
    assert not m.cpus[1].lapic.irr
    wr(m, APIC_ICR_LOW, 0x4400)              # NMI
    assert m.cpus[1].events == ["NMI"]


# -- IPIs -----------------------------------------------------------------------
def test_fixed_ipi_to_other_cpu(m):
    enable(m, 1)
    kicks = m.cpus[1].kicks
    wr(m, APIC_ICR_HIGH, 1 << 24)
    wr(m, APIC_ICR_LOW, 0x4041)
    assert irr_has(m, 0x41, cpu=1)
    assert not irr_has(m, 0x41, cpu=0)
    assert m.cpus[1].kicks > kicks
    assert rd(m, APIC_ICR_LOW) == 0x4041     # delivery status idle
    assert m.cpus[1].lapic.acknowledge() == 0x41


def test_init_sipi_sequence(m):
    wr(m, APIC_ICR_HIGH, 1 << 24)
    wr(m, APIC_ICR_LOW, 0xC500)              # INIT assert, level
    wr(m, APIC_ICR_LOW, 0x8500)              # INIT de-assert: ignored
    wr(m, APIC_ICR_LOW, 0x4608)              # STARTUP, page 8
    assert m.cpus[1].events == ["INIT", ("SIPI", 8)]
    assert m.cpus[0].events == []
    wr(m, APIC_ICR_LOW, 0xC4500)             # all excluding self
    assert m.cpus[1].events[-1] == "INIT" and m.cpus[0].events == []
    wr(m, APIC_ICR_LOW, 0x80400)             # NMI to all including self
    assert m.cpus[0].events == ["NMI"] and m.cpus[1].events[-1] == "NMI"


def test_logical_flat_and_cluster_destinations(m):
    for cpu in (0, 1):
        enable(m, cpu)
        wr(m, APIC_LDR, (1 << cpu) << 24, cpu)
    wr(m, APIC_ICR_HIGH, 0x02 << 24)
    wr(m, APIC_ICR_LOW, 0x4850)              # logical, flat
    assert irr_has(m, 0x50, cpu=1) and not irr_has(m, 0x50, cpu=0)
    wr(m, APIC_ICR_HIGH, 0x03 << 24)
    wr(m, APIC_ICR_LOW, 0x4851)
    assert irr_has(m, 0x51, cpu=0) and irr_has(m, 0x51, cpu=1)
    # cluster model: CPU 0 in cluster 1, CPU 1 in cluster 2, both member bit 1
    for cpu in (0, 1):
        wr(m, APIC_DFR, 0x0FFF_FFFF, cpu)
        wr(m, APIC_LDR, ((cpu + 1) << 4 | 1) << 24, cpu)
    wr(m, APIC_ICR_HIGH, 0x21 << 24)
    wr(m, APIC_ICR_LOW, 0x4852)
    assert irr_has(m, 0x52, cpu=1) and not irr_has(m, 0x52, cpu=0)
    wr(m, APIC_ICR_HIGH, 0xF1 << 24)         # cluster 15: all clusters
    wr(m, APIC_ICR_LOW, 0x4853)
    assert irr_has(m, 0x53, cpu=0) and irr_has(m, 0x53, cpu=1)


def test_lowest_priority_goes_to_lowest_id_and_broadcast(m):
    for cpu in (0, 1):
        enable(m, cpu)
    wr(m, APIC_ICR_HIGH, 0xFF << 24)
    wr(m, APIC_ICR_LOW, 0x4160)              # lowest priority, physical bcast
    assert irr_has(m, 0x60, cpu=0) and not irr_has(m, 0x60, cpu=1)
    wr(m, APIC_ICR_LOW, 0x4061)              # fixed broadcast
    assert irr_has(m, 0x61, cpu=0) and irr_has(m, 0x61, cpu=1)


def test_send_illegal_vector(m):
    enable(m, 1)
    wr(m, APIC_ICR_HIGH, 1 << 24)
    wr(m, APIC_ICR_LOW, 0x4005)
    assert not m.cpus[1].lapic.irr
    assert esr(m) == 0x20


# -- x2APIC and IA32_APIC_BASE -------------------------------------------------
X2 = APIC_DEFAULT_BASE | APIC_BASE_EN | APIC_BASE_EXTD


def test_x2apic_msrs(m):
    lapic = m.cpus[1].lapic
    assert lapic.msr_read(0x802) is None     # not in x2APIC mode: #GP
    assert lapic.write_apic_base(X2)
    assert rd(m, APIC_ID, cpu=1) == 0xFFFF_FFFF      # MMIO window gone
    assert lapic.msr_read(0x802) == 1
    assert lapic.msr_read(0x80D) == 1 << 1           # cluster 0, bit 1
    assert lapic.msr_read(0x80E) is None             # no DFR
    assert lapic.msr_read(0x80B) is None             # EOI is write-only
    assert not lapic.msr_write(0x802, 5)             # ID is read-only
    assert not lapic.msr_write(0x80D, 0)             # LDR is read-only
    assert not lapic.msr_write(0x808, 0x100)         # TPR reserved bits
    assert lapic.msr_write(0x80F, 0x1FF)
    assert lapic.msr_write(0x83F, 0x55)              # SELF IPI
    assert lapic.irr >> 0x55 & 1
    assert lapic.msr_read(0x83F) is None
    assert lapic.acknowledge() == 0x55
    assert not lapic.msr_write(0x80B, 1)             # EOI must be 0
    assert lapic.msr_write(0x80B, 0)
    assert not lapic.isr
    assert not lapic.msr_write(0x828, 1)
    assert not lapic.msr_write(0x900, 0)


def test_x2apic_icr_is_one_64bit_msr(m):
    for cpu in m.cpus:
        assert cpu.lapic.write_apic_base(X2 | (APIC_BASE_BSP if cpu.index == 0 else 0))
        assert cpu.lapic.msr_write(0x80F, 0x1FF)
    src, dst = m.cpus[0].lapic, m.cpus[1].lapic
    assert src.msr_write(0x830, 1 << 32 | 0x4070)
    assert dst.irr >> 0x70 & 1 and not src.irr
    assert src.msr_read(0x830) == 1 << 32 | 0x4070
    assert src.msr_read(0x831) is None
    assert not src.msr_write(0x830, 0x1000)          # delivery status: reserved
    # logical cluster: cluster 0, member bit 1 -> CPU 1
    assert src.msr_write(0x830, 0x2 << 32 | 0x4871)
    assert dst.irr >> 0x71 & 1


def test_apic_base_transitions(m):
    lapic = m.cpus[0].lapic
    xapic = APIC_DEFAULT_BASE | APIC_BASE_EN
    assert not lapic.write_apic_base(xapic | 1 << 9)            # reserved bit
    assert not lapic.write_apic_base(APIC_DEFAULT_BASE | APIC_BASE_EXTD)
    assert lapic.write_apic_base(X2)                            # xAPIC -> x2APIC
    assert lapic.read_apic_base() == X2 | APIC_BASE_BSP         # BSP kept
    assert not lapic.write_apic_base(xapic)                     # x2APIC -> xAPIC
    assert lapic.write_apic_base(APIC_DEFAULT_BASE)             # -> disabled
    assert not lapic.enabled
    assert rd(m, APIC_VER) == 0xFFFF_FFFF                       # unassigned
    assert not lapic.write_apic_base(X2)                        # disabled -> x2APIC
    assert lapic.write_apic_base(xapic)                         # disabled -> xAPIC
    assert rd(m, APIC_SVR) == 0xFF                              # power-up state


def test_disable_resets_state(m):
    lapic = m.cpus[0].lapic
    enable(m)
    wr(m, APIC_ID, 7 << 24)
    lapic.accept(0x40)
    lapic.write_apic_base(APIC_DEFAULT_BASE)
    lapic.accept(0x41)                       # a disabled APIC takes nothing
    lapic.write_apic_base(APIC_DEFAULT_BASE | APIC_BASE_EN)
    assert not lapic.irr
    assert rd(m, APIC_ID) == 0


def test_init_keeps_id_and_mode(m):
    lapic = m.cpus[1].lapic
    enable(m, 1)
    wr(m, APIC_ID, 9 << 24, cpu=1)
    wr(m, APIC_TPR, 0x30, cpu=1)
    lapic.init()
    assert rd(m, APIC_ID, cpu=1) == 9 << 24
    assert rd(m, APIC_TPR, cpu=1) == 0 and rd(m, APIC_SVR, cpu=1) == 0xFF
    lapic.write_apic_base(X2)
    lapic.init()
    assert lapic.x2apic_mode


# -- LINT0 / the 8259 virtual wire ----------------------------------------------
def test_extint_through_lint0(m):
    bsp = m.cpus[0].lapic
    bsp.set_lint(0, True)
    assert not bsp.extint_pending()          # LINT0 masked after reset
    assert not bsp.accepts_pic_intr()
    bsp.firmware_setup()                     # SeaBIOS: LINT0 ExtINT, SVR on
    assert rd(m, APIC_LVT_LINT0) == 0x8700
    assert bsp.accepts_pic_intr()
    assert bsp.extint_pending()
    bsp.set_lint(0, False)
    assert not bsp.extint_pending()
    bsp.write_apic_base(APIC_DEFAULT_BASE)   # globally disabled: bare INTR pin
    bsp.set_lint(0, True)
    assert bsp.extint_pending()


def test_lint1_nmi_on_rising_edge(m):
    bsp = m.cpus[0]
    bsp.lapic.firmware_setup()
    bsp.lapic.set_lint(1, True)
    bsp.lapic.set_lint(1, True)
    assert bsp.events == ["NMI"]


# -- I/O APIC -------------------------------------------------------------------
def io_wr(m, sel, val):
    m.bus.write(IOAPIC, 4, sel)
    m.bus.write(IOAPIC + 0x10, 4, val)


def io_rd(m, sel):
    m.bus.write(IOAPIC, 4, sel)
    return m.bus.read(IOAPIC + 0x10, 4)


def test_ioapic_identification(m):
    assert io_rd(m, 1) == 0x0017_0020
    io_wr(m, 0, 0x0F00_0000 | 0xFF)
    assert io_rd(m, 0) == 0x0F00_0000
    assert io_rd(m, 0x10) == 0x10000          # masked after reset


def test_ioapic_edge_delivery_and_masking(m):
    enable(m)
    io_wr(m, 0x10 + 2 * 2, 0x30)              # pin 2, edge, physical dest 0
    io_wr(m, 0x11 + 2 * 2, 0)
    m.ioapic.set_irq(2, True)
    assert irr_has(m, 0x30)
    assert m.cpus[0].lapic.acknowledge() == 0x30
    m.ioapic.set_irq(2, True)                 # no new edge
    assert not irr_has(m, 0x30)
    m.ioapic.set_irq(2, False)
    m.ioapic.set_irq(2, True)
    assert irr_has(m, 0x30)
    assert not rd(m, APIC_TMR + 0x10) & 1     # edge: TMR clear
    # masked pin: the edge is lost, unmasking does not replay it
    io_wr(m, 0x10 + 2 * 4, 0x10000 | 0x34)
    m.ioapic.set_irq(4, True)
    io_wr(m, 0x10 + 2 * 4, 0x34)
    assert not irr_has(m, 0x34)


def test_ioapic_level_remote_irr(m):
    enable(m, 1)
    io_wr(m, 0x10 + 2 * 9, 0x8000 | 0x39)     # pin 9 level
    io_wr(m, 0x11 + 2 * 9, 1 << 24)           # to CPU 1
    m.ioapic.set_irq(9, True)
    lapic = m.cpus[1].lapic
    assert irr_has(m, 0x39, cpu=1)
    assert rd(m, APIC_TMR + 0x10, cpu=1) >> (0x39 - 32) & 1
    assert io_rd(m, 0x10 + 2 * 9) & 1 << 14   # remote IRR
    assert lapic.acknowledge() == 0x39
    m.ioapic.set_irq(9, True)                 # still in service: nothing
    assert not irr_has(m, 0x39, cpu=1)
    wr(m, APIC_EOI, 0, cpu=1)                 # EOI broadcast, line still high
    assert irr_has(m, 0x39, cpu=1)
    assert lapic.acknowledge() == 0x39
    m.ioapic.set_irq(9, False)
    wr(m, APIC_EOI, 0, cpu=1)
    assert not io_rd(m, 0x10 + 2 * 9) & 1 << 14
    assert not lapic.irr


def test_ioapic_level_masked_then_unmasked_and_eoi_register(m):
    enable(m)
    io_wr(m, 0x10 + 2 * 11, 0x18000 | 0x3B)   # level, masked
    m.ioapic.set_irq(11, True)
    assert not irr_has(m, 0x3B)
    io_wr(m, 0x10 + 2 * 11, 0x8000 | 0x3B)    # unmask: pending level goes out
    assert m.cpus[0].lapic.acknowledge() == 0x3B
    m.ioapic.set_irq(11, False)
    m.bus.write(IOAPIC + 0x40, 4, 0x3B)       # explicit EOI register (v20h)
    assert not io_rd(m, 0x10 + 2 * 11) & 1 << 14
    assert not irr_has(m, 0x3B)               # line low: nothing re-sent


def test_ioapic_nmi_and_logical_destination(m):
    for cpu in (0, 1):
        enable(m, cpu)
        wr(m, APIC_LDR, (1 << cpu) << 24, cpu)
    io_wr(m, 0x10 + 2 * 5, 0x800 | 0x400)     # NMI, logical
    io_wr(m, 0x11 + 2 * 5, 0x02 << 24)
    m.ioapic.set_irq(5, True)
    assert m.cpus[1].events == ["NMI"] and m.cpus[0].events == []
