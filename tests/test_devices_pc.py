"""Legacy PC devices driven directly through a fake machine.

Expected values come from the chip datasheets (16550D, 8259A, 8254,
MC146818A) and from QEMU's device models (isa-debug-exit, fw_cfg, CMOS
layout), not from our implementation.
"""
import io
import os
import struct
from types import SimpleNamespace

import pytest

from svmsim.devices.clock import VirtualClock
from svmsim.devices.cmos_rtc import CmosRtc
from svmsim.devices.debug_exit import DebugExit
from svmsim.devices.fw_cfg import FwCfg
from svmsim.devices.misc_ports import (PostCodePort, ResetControlRegister,
                                       SystemControlPortA)
from svmsim.devices.pic8259 import Pic8259
from svmsim.devices.pit8254 import PIT_HZ, Pit8254, SystemControlPortB, ticks_to_ns
from svmsim.devices.uart16550 import Uart16550
from svmsim.memory.bus import IoBus, PhysBus

MiB = 1 << 20


class FakeCpu:
    def __init__(self):
        self.kicks = 0

    def kick(self):
        self.kicks += 1


class FakeMachine:
    def __init__(self, mem_size=16 * MiB, smp=1):
        self.clock = VirtualClock()
        self.bus = PhysBus(mem_size)
        self.io = IoBus()
        self.cpus = [FakeCpu()]
        self.config = SimpleNamespace(mem_size=mem_size, smp=smp, append="")
        self.irq_log = []          # (now_ns, line, level)
        self.stops = []
        self.pic = None

    def raise_irq(self, line, level):
        self.irq_log.append((self.clock.now_ns, line, level))
        if self.pic is not None:
            self.pic.set_irq(line, level)

    def request_stop(self, status, reason):
        self.stops.append((status, reason))

    def run_until(self, ns, step=1000):
        """Advance virtual time in ``step`` ns slices, firing timers."""
        while self.clock.now_ns < ns:
            self.clock.advance(min(step, ns - self.clock.now_ns))
            self.clock.run_due()

    def inb(self, port):
        return self.io.read(port, 1)

    def outb(self, port, value):
        self.io.write(port, 1, value)

    def edges(self, line, level=True):
        return [t for t, l, v in self.irq_log if l == line and v == level]


# ---------------------------------------------------------------- UART 16550
COM1 = 0x3F8


def make_uart(**kw):
    m = FakeMachine()
    out = io.BytesIO()
    uart = Uart16550(m, out=out, **kw)
    uart.register()
    return m, uart, out


def test_uart_scratch_ier_and_divisor_latch():
    m, uart, _ = make_uart()
    m.outb(COM1 + 7, 0x5A)
    assert m.inb(COM1 + 7) == 0x5A
    m.outb(COM1 + 1, 0xFF)
    assert m.inb(COM1 + 1) == 0x0F          # IER bits 7:4 always read 0
    m.outb(COM1 + 1, 0)
    m.outb(COM1 + 3, 0x80)                  # DLAB
    m.outb(COM1 + 0, 0x01)
    m.outb(COM1 + 1, 0x00)
    assert (m.inb(COM1), m.inb(COM1 + 1)) == (0x01, 0x00)
    m.outb(COM1 + 3, 0x03)                  # 8N1, DLAB off
    assert uart.divisor == 1 and m.inb(COM1 + 1) == 0


def test_uart_transmit_to_file_and_callable():
    m, uart, out = make_uart()
    for ch in b"hi\n":
        m.outb(COM1, ch)
    assert out.getvalue() == b"hi\n"
    assert m.inb(COM1 + 5) & 0x60 == 0x60   # THRE and TEMT after every write
    got = []
    uart2 = Uart16550(m, base=0x2F8, irq=3, out=got.append)
    uart2.register()
    m.outb(0x2F8, 0x41)
    assert got == [b"A"]


def test_uart_loopback_as_linux_autoconfig_probes():
    m, uart, out = make_uart()
    m.outb(COM1 + 4, 0x10 | 0x0A)           # LOOP | OUT2 | RTS
    assert m.inb(COM1 + 6) & 0xF0 == 0x90   # DCD (OUT2) and CTS (RTS)
    m.outb(COM1, 0x42)
    assert out.getvalue() == b""            # nothing leaves in loopback
    assert m.inb(COM1 + 5) & 0x01
    assert m.inb(COM1) == 0x42
    assert not m.inb(COM1 + 5) & 0x01
    m.outb(COM1 + 4, 0x10 | 0x0F)           # OUT1 -> RI, DTR -> DSR
    assert m.inb(COM1 + 6) & 0xF0 == 0xF0


def test_uart_fifo_enable_overrun_and_trigger_level():
    m, uart, _ = make_uart()
    m.outb(COM1 + 2, 0x87)                  # FIFO on, clear, trigger 8
    assert m.inb(COM1 + 2) & 0xC0 == 0xC0
    m.outb(COM1 + 4, 0x18)                  # loopback + OUT2
    m.outb(COM1 + 1, 0x01)                  # RDI
    for i in range(7):
        m.outb(COM1, i)
    assert m.inb(COM1 + 2) & 0x0F == 0x01   # below the trigger level
    m.outb(COM1, 7)
    assert m.inb(COM1 + 2) & 0x0F == 0x04   # RX data available
    for i in range(8, 17):
        m.outb(COM1, i)                     # 17 chars into a 16-byte FIFO
    assert m.inb(COM1 + 5) & 0x02           # overrun
    assert [m.inb(COM1) for _ in range(16)] == list(range(16))
    assert not m.inb(COM1 + 5) & 0x01


def test_uart_character_timeout_interrupt():
    m, uart, _ = make_uart()
    m.outb(COM1 + 2, 0xC7)                  # trigger 14
    m.outb(COM1 + 1, 0x01)
    uart.feed(b"x")
    assert m.inb(COM1 + 2) & 0x0F == 0x01
    m.run_until(4 * uart.char_time_ns() + 1)
    assert m.inb(COM1 + 2) & 0x0F == 0x0C   # character timeout
    assert m.inb(COM1) == ord("x")
    assert m.inb(COM1 + 2) & 0x0F == 0x01


def test_uart_iir_priorities_and_irq_line():
    m, uart, _ = make_uart()
    m.outb(COM1 + 4, 0x18)                  # loopback, no FIFO (16450 mode)
    m.outb(COM1, 1)
    m.outb(COM1, 2)                         # overrun: OE + DR
    m.outb(COM1 + 1, 0x0F)                  # enable all four sources
    assert m.irq_log[-1][1:] == (4, True)
    assert m.inb(COM1 + 2) == 0x06          # line status first
    assert m.inb(COM1 + 5) & 0x02           # read LSR clears OE
    assert m.inb(COM1 + 2) == 0x04          # then received data
    assert m.inb(COM1) == 2                 # the newer char overwrote
    assert m.inb(COM1 + 2) == 0x02          # then THR empty
    assert m.inb(COM1 + 2) == 0x00          # reading IIR cleared THRE: MSI
    m.inb(COM1 + 6)                         # loopback MCR change set deltas
    assert m.inb(COM1 + 2) == 0x01
    assert m.irq_log[-1][1:] == (4, False)


def test_uart_thre_interrupt_reasserts_after_write():
    m, uart, _ = make_uart()
    m.outb(COM1 + 1, 0x02)
    assert m.irq_log == [(0, 4, True)]
    assert m.inb(COM1 + 2) == 0x02
    assert m.irq_log[-1] == (0, 4, False)
    m.outb(COM1, 0x20)
    assert m.irq_log[-1] == (0, 4, True)


def test_uart_out2_gating_option():
    m, uart, _ = make_uart(out2_gates_irq=True)
    m.outb(COM1 + 4, 0x03)                  # DTR|RTS, OUT2 off
    m.outb(COM1 + 1, 0x02)
    assert m.irq_log == []
    m.outb(COM1 + 4, 0x0B)
    assert m.irq_log == [(0, 4, True)]


def test_uart_host_input_waits_for_room():
    m, uart, _ = make_uart()
    uart.feed(b"abc")                       # FIFO off: one char at a time
    assert not m.inb(COM1 + 5) & 0x02
    assert bytes(m.inb(COM1) for _ in range(3)) == b"abc"
    assert not m.inb(COM1 + 5) & 0x03       # no overrun, now empty


def test_uart_poll_input_bytesio_and_pipe():
    m, uart, _ = make_uart(inp=io.BytesIO(b"ok"))
    m.outb(COM1 + 2, 0x01)
    uart.poll_input()
    assert bytes(m.inb(COM1) for _ in range(2)) == b"ok"
    r, w = os.pipe()
    try:
        m2 = FakeMachine()
        with os.fdopen(r, "rb", buffering=0) as rf:
            u2 = Uart16550(m2, inp=rf)
            u2.register()
            u2.poll_input()                 # nothing there: must not block
            assert not m2.inb(COM1 + 5) & 1
            os.write(w, b"Z")
            u2.poll_input()
            assert m2.inb(COM1) == ord("Z")
    finally:
        os.close(w)


# ---------------------------------------------------------------- debug exit
@pytest.mark.parametrize("size,value,status", [
    (1, 0x31, 0x63), (1, 0x00, 0x01), (2, 0x1234, 0x2469), (4, 0x10000, 0x20001),
])
def test_debug_exit_status(size, value, status):
    m = FakeMachine()
    DebugExit(m).register()
    m.io.write(0xF4, size, value)
    assert m.stops[0][0] == status
    assert f"{value:#x}" in m.stops[0][1]


def test_debug_exit_reads_zero_and_masks_width():
    m = FakeMachine()
    dev = DebugExit(m)
    dev.register()
    assert m.io.read(0xF4, 4) == 0 and m.io.read(0xF7, 1) == 0
    dev.io_write(0xF6, 1, 0x1FF)            # an outb carries 8 bits only
    assert m.stops[0][0] == 0x1FF


# ------------------------------------------------------------------- 8259 PIC
def linux_pic_init(m):
    """init_8259A() in Linux arch/x86/kernel/i8259.c."""
    m.outb(0x21, 0xFF)
    m.outb(0xA1, 0xFF)
    m.outb(0x20, 0x11)
    m.outb(0x21, 0x30)                      # ISA_IRQ_VECTOR(0)
    m.outb(0x21, 0x04)
    m.outb(0x21, 0x01)
    m.outb(0xA0, 0x11)
    m.outb(0xA1, 0x38)
    m.outb(0xA1, 0x02)
    m.outb(0xA1, 0x01)
    m.outb(0x21, 0xFB)                      # all masked except cascade
    m.outb(0xA1, 0xFF)


def make_pic():
    m = FakeMachine()
    pic = Pic8259(m)
    pic.register()
    m.pic = pic
    linux_pic_init(m)
    return m, pic


def read_isr(m, cmd_port):
    m.outb(cmd_port, 0x0B)
    value = m.inb(cmd_port)
    m.outb(cmd_port, 0x0A)
    return value


def test_pic_master_vector_eoi_and_kick():
    m, pic = make_pic()
    m.outb(0x21, 0xF9)                      # unmask IRQ 1
    pic.set_irq(1, True)
    assert pic.has_interrupt() and m.cpus[0].kicks == 1
    assert m.inb(0x20) == 0x02              # IRR after init (RR=IRR)
    assert pic.acknowledge() == 0x31
    assert not pic.has_interrupt()
    assert read_isr(m, 0x20) == 0x02
    m.outb(0x20, 0x20)                      # non-specific EOI
    assert read_isr(m, 0x20) == 0x00


def test_pic_masking():
    m, pic = make_pic()
    pic.set_irq(4, True)
    assert not pic.has_interrupt()          # masked, but latched in IRR
    assert m.inb(0x20) & 0x10
    m.outb(0x21, 0xEB)
    assert pic.has_interrupt() and pic.acknowledge() == 0x34


def test_pic_cascade_vector_and_two_eois():
    m, pic = make_pic()
    m.outb(0xA1, 0xEF)                      # unmask IRQ 12
    pic.set_irq(12, True)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x3C
    assert read_isr(m, 0x20) == 0x04 and read_isr(m, 0xA0) == 0x10
    m.outb(0xA0, 0x20)
    m.outb(0x20, 0x20)
    assert read_isr(m, 0x20) == 0 and read_isr(m, 0xA0) == 0


def test_pic_priority_and_nesting():
    m, pic = make_pic()
    m.outb(0x21, 0x00)
    pic.set_irq(3, True)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x31        # IR1 beats IR3
    assert not pic.has_interrupt()          # IR3 is lower than IR1 in service
    m.outb(0x20, 0x20)
    assert pic.acknowledge() == 0x33
    pic.set_irq(5, True)
    assert not pic.has_interrupt()          # lower than IR3 in service
    pic.set_irq(0, True)
    assert pic.acknowledge() == 0x30        # IR0 nests over IR3
    m.outb(0x20, 0x60)                      # specific EOI, level 0
    assert read_isr(m, 0x20) == 0x08


def test_pic_spurious_irq7_when_request_vanishes():
    m, pic = make_pic()
    m.outb(0x21, 0xF9)
    pic.set_irq(1, True)
    assert pic.has_interrupt()
    m.outb(0x21, 0xFB)                      # masked between INTR and INTA
    assert pic.acknowledge() == 0x37
    assert read_isr(m, 0x20) == 0           # spurious: ISR bit 7 not set


def test_pic_edge_needs_new_edge_level_via_elcr_stays():
    m, pic = make_pic()
    m.outb(0x21, 0xF9)
    pic.set_irq(1, True)
    pic.acknowledge()
    m.outb(0x20, 0x20)
    pic.set_irq(1, True)                    # still high: no new edge
    assert not pic.has_interrupt()
    m.outb(0x4D0, 0xFF)
    m.outb(0x4D1, 0xFF)
    assert (m.inb(0x4D0), m.inb(0x4D1)) == (0xF8, 0xDE)
    m.outb(0xA1, 0xFB)                      # unmask IRQ 10
    pic.set_irq(10, True)
    assert pic.acknowledge() == 0x3A
    m.outb(0xA0, 0x20)
    m.outb(0x20, 0x20)
    assert pic.has_interrupt()              # level still asserted
    pic.set_irq(10, False)
    assert not pic.has_interrupt()


def test_pic_auto_eoi_rotation_and_poll():
    m, pic = make_pic()
    m.outb(0x20, 0x11)
    m.outb(0x21, 0x08)
    m.outb(0x21, 0x04)
    m.outb(0x21, 0x03)                      # ICW4: 8086 + AEOI
    m.outb(0x21, 0x00)
    pic.set_irq(6, True)
    assert pic.acknowledge() == 0x0E
    assert read_isr(m, 0x20) == 0           # AEOI: never in service
    linux_pic_init(m)
    m.outb(0x21, 0x00)
    pic.set_irq(1, False)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x31
    m.outb(0x20, 0xA0)                      # rotate on non-specific EOI
    pic.set_irq(1, False)
    pic.set_irq(1, True)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x33        # IR1 now lowest priority
    m.outb(0x20, 0x20)
    m.outb(0x20, 0x0C)                      # OCW3 poll
    assert m.inb(0x20) == 0x81
    assert read_isr(m, 0x20) == 0x02


def test_pic_irq_lines_from_machine():
    m, pic = make_pic()
    m.outb(0x21, 0xFA)                      # unmask IRQ 0
    m.raise_irq(0, True)
    assert pic.acknowledge() == 0x30


# ------------------------------------------------------------------- 8254 PIT
def make_pit():
    m = FakeMachine()
    pit = Pit8254(m)
    pit.register()
    port61 = SystemControlPortB(m, pit)
    port61.register()
    return m, pit


def test_pit_mode2_irq0_period():
    m, pit = make_pit()
    m.outb(0x43, 0x34)                      # counter 0, LSB/MSB, mode 2
    m.outb(0x40, 1193 & 0xFF)
    m.outb(0x40, 1193 >> 8)
    m.irq_log.clear()
    m.run_until(10_000_000, step=10_000)
    rises = m.edges(0)
    assert len(rises) == 10                 # 1193 ticks = 999.85 us
    assert rises[0] >= ticks_to_ns(1193) and rises[0] < ticks_to_ns(1193) + 10_000
    period = (rises[-1] - rises[0]) / 9
    assert abs(period - 1193 * 1e9 / PIT_HZ) < 10_000


def test_pit_mode2_count_and_out_pulse():
    m, pit = make_pit()
    m.outb(0x43, 0x34)
    m.outb(0x40, 100)
    m.outb(0x40, 0)
    start = m.clock.now_ns
    m.clock.advance(ticks_to_ns(30))
    m.outb(0x43, 0x00)                      # latch counter 0
    m.clock.advance(ticks_to_ns(10))        # the latch holds
    assert m.inb(0x40) | m.inb(0x40) << 8 == 70
    m.clock.now_ns = start + ticks_to_ns(99)
    m.outb(0x43, 0xE2)                      # read-back status, counter 0
    assert not m.inb(0x40) & 0x80           # OUT low while CE = 1
    m.clock.now_ns = start + ticks_to_ns(100)
    m.outb(0x43, 0xE2)
    assert m.inb(0x40) == 0x80 | 0x30 | 0x04  # OUT, RW=3, mode 2


def test_pit_mode3_square_wave():
    m, pit = make_pit()
    m.outb(0x43, 0x36)                      # counter 0, mode 3
    m.outb(0x40, 100)
    m.outb(0x40, 0)
    m.irq_log.clear()
    step = ticks_to_ns(1)
    m.run_until(ticks_to_ns(290), step=step)
    falls = m.edges(0, False)
    rises = m.edges(0, True)
    assert len(falls) == 3 and len(rises) == 2    # falls at 50, 150, 250
    assert 0 <= falls[0] - ticks_to_ns(50) < step
    assert 0 <= rises[0] - ticks_to_ns(100) < step
    m.clock.now_ns = ticks_to_ns(310)
    m.outb(0x43, 0x00)
    assert m.inb(0x40) == 80                # counts down by two


def test_pit_status_null_count_before_load():
    m, pit = make_pit()
    m.outb(0x43, 0xB0)                      # counter 2, mode 0
    m.outb(0x43, 0xE8)                      # read-back status of counter 2
    assert m.inb(0x42) == 0x40 | 0x30       # OUT low, null count, mode 0


def test_port61_out2_after_mode0_countdown_as_linux_calibrates():
    m, pit = make_pit()
    m.outb(0x61, (m.inb(0x61) & ~0x02) | 0x01)   # gate 2 high, speaker off
    m.outb(0x43, 0xB0)
    latch = PIT_HZ // 20                          # 50 ms, as pit_calibrate_tsc
    m.outb(0x42, latch & 0xFF)
    m.outb(0x42, latch >> 8)
    assert not m.inb(0x61) & 0x20
    m.clock.advance(ticks_to_ns(latch - 1))
    assert not m.inb(0x61) & 0x20
    m.clock.advance(ticks_to_ns(2))
    assert m.inb(0x61) & 0x20
    assert m.inb(0x61) & 0x01


def test_pit_gate_low_pauses_mode0():
    m, pit = make_pit()
    m.outb(0x43, 0xB0)
    m.outb(0x42, 100)
    m.outb(0x42, 0)                         # gate 2 is low: not counting
    m.clock.advance(ticks_to_ns(500))
    m.outb(0x43, 0x80)
    assert m.inb(0x42) | m.inb(0x42) << 8 == 100
    m.outb(0x61, 0x01)
    m.clock.advance(ticks_to_ns(40))
    m.outb(0x61, 0x00)
    m.clock.advance(ticks_to_ns(500))
    m.outb(0x43, 0x80)
    assert m.inb(0x42) | m.inb(0x42) << 8 == 60


def test_pit_bcd_and_lsb_only():
    m, pit = make_pit()
    m.outb(0x43, 0x51)                      # counter 1, LSB only, mode 0, BCD
    m.outb(0x41, 0x99)
    m.clock.advance(ticks_to_ns(10))
    assert m.inb(0x41) == 0x89


def test_pit_reset_state_ticks_at_18_2_hz():
    m, pit = make_pit()
    m.run_until(120_000_000, step=100_000)
    rises = m.edges(0)
    assert len(rises) == 2
    assert abs(rises[0] - 65536 * 1e9 / PIT_HZ) < 100_000


# --------------------------------------------------------------- CMOS / RTC
def cmos(m, index):
    m.outb(0x70, index)
    return m.inb(0x71)


def cmos_write(m, index, value):
    m.outb(0x70, index)
    m.outb(0x71, value)


def make_rtc(**kw):
    m = FakeMachine(**kw)
    rtc = CmosRtc(m)
    rtc.register()
    return m, rtc


def test_rtc_default_time_bcd():
    m, rtc = make_rtc()
    assert cmos(m, 0x0B) == 0x02 and cmos(m, 0x0A) == 0x26 and cmos(m, 0x0D) == 0x80
    regs = [cmos(m, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)]
    assert regs == [0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x26, 0x20]  # Thursday


def test_rtc_time_advances_binary_and_12h():
    m, rtc = make_rtc()
    m.clock.advance((13 * 3600 + 5 * 60 + 42) * 1_000_000_000)
    assert (cmos(m, 4), cmos(m, 2), cmos(m, 0)) == (0x13, 0x05, 0x42)
    cmos_write(m, 0x0B, 0x06)               # binary, 24 h
    assert (cmos(m, 4), cmos(m, 2), cmos(m, 0)) == (13, 5, 42)
    cmos_write(m, 0x0B, 0x00)               # BCD, 12 h
    assert cmos(m, 4) == 0x81               # 1 PM


def test_rtc_set_time_with_set_bit():
    m, rtc = make_rtc()
    cmos_write(m, 0x0B, 0x82)               # SET, BCD, 24 h
    cmos_write(m, 9, 0x99)
    cmos_write(m, 0x32, 0x19)
    cmos_write(m, 8, 0x12)
    cmos_write(m, 7, 0x31)
    cmos_write(m, 4, 0x23)
    cmos_write(m, 2, 0x59)
    cmos_write(m, 0, 0x58)
    m.clock.advance(5_000_000_000)
    assert cmos(m, 0) == 0x58               # frozen while SET
    cmos_write(m, 0x0B, 0x02)
    m.clock.advance(3_000_000_000)
    assert [cmos(m, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == [
        0x01, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]          # 2000-01-01 00:00:01


def test_rtc_uip_near_update():
    m, rtc = make_rtc()
    m.clock.advance(999_800_000)            # last 244 us of the second
    assert cmos(m, 0x0A) & 0x80
    m.clock.advance(400_000)
    assert not cmos(m, 0x0A) & 0x80


def test_rtc_periodic_interrupt_on_irq8():
    m, rtc = make_rtc()
    cmos_write(m, 0x0A, 0x26)               # 1024 Hz
    cmos_write(m, 0x0B, 0x42)               # PIE
    m.run_until(2_000_000, step=10_000)
    rises = m.edges(8)
    assert len(rises) == 1 and 976_000 <= rises[0] <= 990_000
    assert cmos(m, 0x0C) == 0xC0            # IRQF | PF
    assert m.irq_log[-1][1:] == (8, False)
    m.run_until(3_000_000, step=10_000)
    assert len(m.edges(8)) == 2


def test_rtc_nmi_bit_and_cmos_memory_layout():
    m, rtc = make_rtc(mem_size=128 * MiB, smp=4)
    m.outb(0x70, 0x80 | 0x15)
    assert rtc.nmi_disabled and m.inb(0x71) == 0x80
    assert cmos(m, 0x16) == 0x02            # 640 KiB base memory
    assert (cmos(m, 0x17), cmos(m, 0x18)) == (0xFF, 0xFF)   # capped at 64 MiB
    assert (cmos(m, 0x34), cmos(m, 0x35)) == (0x00, 0x07)   # 112 MiB / 64 KiB
    assert cmos(m, 0x5B) == cmos(m, 0x5C) == cmos(m, 0x5D) == 0
    assert cmos(m, 0x5F) == 3
    assert not rtc.nmi_disabled
    cmos_write(m, 0x40, 0xAB)
    assert cmos(m, 0x40) == 0xAB


def test_rtc_memory_above_4g():
    m = FakeMachine()
    m.bus = SimpleNamespace(ram_ranges=lambda: [(0, 3 << 30), (1 << 32, 3 << 30)])
    rtc = CmosRtc(m)
    assert rtc.cmos[0x5B:0x5E] == bytes([0x00, 0xC0, 0x00])   # 3 GiB / 64 KiB
    assert rtc.cmos[0x34:0x36] == bytes([0x00, 0xBF])         # 3G-16M / 64K


# ------------------------------------------------------------------- fw_cfg
def bswap32(v):
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def make_fwcfg(cmdline="console=ttyS0 quiet", ncpus=2):
    m = FakeMachine()
    fw = FwCfg(m, cmdline, ncpus)
    fw.register()
    return m, fw


def fw_read(m, key, n):
    m.io.write(0x510, 2, key)
    return bytes(m.inb(0x511) for _ in range(n))


def dma(m, control, length, address, at=0x1000):
    m.bus.write_bytes(at, struct.pack(">IIQ", control, length, address))
    m.io.write(0x514, 4, bswap32(at >> 32))     # iowrite32be(high)
    m.io.write(0x518, 4, bswap32(at & 0xFFFFFFFF))
    return struct.unpack(">I", m.bus.read_bytes(at, 4))[0]


def test_fwcfg_signature_id_and_items():
    m, fw = make_fwcfg()
    assert fw_read(m, 0x0000, 4) == b"QEMU"
    assert fw_read(m, 0x0001, 4) == struct.pack("<I", 3)    # traditional + DMA
    assert fw_read(m, 0x0003, 8) == struct.pack("<Q", 16 * MiB)
    assert fw_read(m, 0x0005, 2) == b"\x02\x00"
    assert fw_read(m, 0x0014, 4) == struct.pack("<I", 20)
    assert fw_read(m, 0x0000, 6) == b"QEMU\0\0"              # 0 past the end
    assert fw_read(m, 0x7FFF, 2) == b"\0\0"                  # invalid key
    assert m.io.read(0x514, 4).to_bytes(4, "little") == b"QEMU"
    assert bytes(m.inb(0x514 + i) for i in range(8)) == b"QEMU CFG"


def test_fwcfg_dma_read_cmdline():
    m, fw = make_fwcfg()
    status = dma(m, (0x15 << 16) | 0x08 | 0x02, 24, 0x2000)
    assert status == 0
    assert m.bus.read_bytes(0x2000, 24) == b"console=ttyS0 quiet\0" + bytes(4)
    fw.set_cmdline("a=1")                    # Machine.load_kernel's -append
    assert fw_read(m, 0x14, 4) == struct.pack("<I", 4)
    assert fw_read(m, 0x15, 4) == b"a=1\0"


def test_fwcfg_dma_file_dir_and_e820():
    m, fw = make_fwcfg()
    assert dma(m, (0x19 << 16) | 0x08 | 0x02, 4, 0x3000) == 0
    count = struct.unpack(">I", m.bus.read_bytes(0x3000, 4))[0]
    assert count == 1
    assert dma(m, 0x02, 64 * count, 0x3004) == 0              # continue reading
    size, select, _, name = struct.unpack(">IHH56s", m.bus.read_bytes(0x3004, 64))
    assert name.rstrip(b"\0") == b"etc/e820" and select == 0x20 and size == 20
    assert dma(m, (select << 16) | 0x08 | 0x02, size, 0x4000) == 0
    assert struct.unpack("<QQI", m.bus.read_bytes(0x4000, 20)) == (0, 16 * MiB, 1)


def test_fwcfg_dma_skip_and_write_error():
    m, fw = make_fwcfg()
    assert dma(m, (0x15 << 16) | 0x08 | 0x04, 8, 0) == 0      # skip "console="
    assert dma(m, 0x02, 5, 0x2000) == 0
    assert m.bus.read_bytes(0x2000, 5) == b"ttyS0"
    assert dma(m, (0x15 << 16) | 0x08 | 0x10, 4, 0x2000) & 0x01   # write: error


# ------------------------------------------------------------------ misc ports
def test_port92_fast_reset_and_a20():
    m = FakeMachine()
    p92 = SystemControlPortA(m)
    p92.register()
    assert m.inb(0x92) == 0x02 and p92.a20_enabled
    m.outb(0x92, 0x03)
    assert m.stops == [(0, "guest reset via port 0x92 (fast reset)")]
    m.outb(0x92, 0x03)                      # no 0 -> 1 transition
    assert len(m.stops) == 1
    resets = []
    m.request_reset = resets.append
    m.outb(0x92, 0x00)
    m.outb(0x92, 0x01)
    assert len(resets) == 1 and not p92.a20_enabled


def test_cf9_reset_and_port80():
    m = FakeMachine()
    ResetControlRegister(m).register()
    post = PostCodePort(m)
    post.register()
    m.outb(0xCF9, 0x02)
    assert m.inb(0xCF9) == 0x02 and m.stops == []
    m.outb(0xCF9, 0x06)
    assert m.stops and "0xCF9" in m.stops[0][1]
    m.outb(0x80, 0x42)
    assert post.last_code == 0x42 and m.inb(0x80) == 0xFF


# ------------------------------------------------------------ guest mistakes
def test_random_port_traffic_never_raises():
    """Whatever a guest writes, no device raises a Python exception."""
    import random
    rng = random.Random(1234)
    m = FakeMachine()
    pic = Pic8259(m)
    m.pic = pic
    pit = Pit8254(m)
    devices = [Uart16550(m, out=io.BytesIO()), DebugExit(m), pic, pit,
               SystemControlPortB(m, pit), CmosRtc(m), FwCfg(m, "x", 1),
               SystemControlPortA(m), PostCodePort(m), ResetControlRegister(m)]
    for dev in devices:
        dev.register()
    ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61,
             0x70, 0x71, 0x510, 0x511, 0x514, 0x518, 0x92, 0x80, 0xCF9] + \
        list(range(0x3F8, 0x400))
    for _ in range(20000):
        port = rng.choice(ports)
        size = rng.choice((1, 1, 1, 2, 4))
        if rng.random() < 0.5:
            m.io.write(port, size, rng.getrandbits(32))
        else:
            m.io.read(port, size)
        if pic.has_interrupt():
            pic.acknowledge()
        m.clock.advance(rng.randrange(0, 5000))
        m.clock.run_due()
