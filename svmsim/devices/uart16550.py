"""NS16550A UART (COM1 at 0x3F8, IRQ 4) as Linux's 8250 driver probes it.

Reference: National Semiconductor PC16550D datasheet ("UART with FIFOs"),
and QEMU's hw/char/serial.c for the PC conventions a guest on QEMU sees:

* Transmission is instant: a byte written to THR goes straight to ``out``;
  LSR.THRE and LSR.TEMT are therefore always set after the write.
* The interrupt line follows the IIR (QEMU's serial_update_irq): it is NOT
  gated by MCR.OUT2, although on a real PC board OUT2 enables the IRQ
  driver.  Pass ``out2_gates_irq=True`` for the board behaviour.
* Reset values follow QEMU: MCR = OUT2, MSR = DCD|DSR|CTS, divisor 12
  (9600 baud), FIFOs off.

Host input arrives through :meth:`feed` or by polling ``inp``
(:meth:`poll_input`, never blocks).  Host bytes wait in a holding queue
until the receiver has room, as a character backend does in QEMU, so the
host never causes an overrun; only the guest's own loopback traffic can.
"""
import os
import select
from collections import deque

# Register offsets from the base port (datasheet table II).
RBR_THR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08

IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = (
    0x01, 0x00, 0x02, 0x04, 0x06, 0x0C)
IIR_FIFO_ENABLED = 0xC0

FCR_FE, FCR_RFR, FCR_XFR = 0x01, 0x02, 0x04
FIFO_TRIGGER = (1, 4, 8, 14)         # FCR bits 7:6 -> RCVR trigger level

LCR_DLAB = 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_THRE, LSR_TEMT = 0x20, 0x40
LSR_INT_ANY = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_DELTA = 0x0F

FIFO_SIZE = 16
UART_CLOCK_BAUD = 115200             # 1.8432 MHz / 16: baud = 115200 / divisor


class Uart16550:
    """One 16550A at ``base`` (8 ports) raising ISA line ``irq``."""

    def __init__(self, machine, base=0x3F8, irq=4, out=None, inp=None,
                 out2_gates_irq=False):
        self.machine = machine
        self.base = base
        self.irq = irq
        self.out = out
        self.inp = inp
        self.out2_gates_irq = out2_gates_irq
        self._host_pending = deque()  # host bytes waiting for receiver room
        self._inp_eof = False
        self._irq_level = False
        self._cti_timer = None
        self.reset()

    def register(self, machine=None):
        (machine or self.machine).io.register(self.base, 8, self)

    def reset(self):
        self.divisor = 12
        self.ier = 0
        self.iir = IIR_NO_INT
        self.fcr = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS   # lines of a connected host
        self.scr = 0
        self.rx = deque()          # RCVR FIFO; holds <= 1 byte in 16450 mode
        self.thr_ipending = False  # THRE interrupt latch (cleared by IIR read)
        self.timeout_ipending = False
        self._cancel_cti()
        self._update_irq()

    # -- port interface -------------------------------------------------
    def io_read(self, port, size):
        # The UART sits on the 8-bit ISA bus: wider accesses are split.
        value = 0
        for i in range(size):
            reg = port + i - self.base
            byte = self._read_reg(reg) if 0 <= reg < 8 else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, port, size, value):
        for i in range(size):
            reg = port + i - self.base
            if 0 <= reg < 8:
                self._write_reg(reg, (value >> (8 * i)) & 0xFF)

    # -- register reads -------------------------------------------------
    def _read_reg(self, reg):
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if reg == IER_DLM:
            return self.divisor >> 8 if dlab else self.ier
        if reg == IIR_FCR:
            return self._read_iir()
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            return self._read_lsr()
        if reg == MSR:
            return self._read_msr()
        return self.scr

    def _read_rbr(self):
        value = self.rx.popleft() if self.rx else 0
        if not self.rx:
            self.lsr &= ~LSR_DR
        self.timeout_ipending = False
        self._drain_host_input()
        self._arm_cti()
        self._update_irq()
        return value

    def _read_iir(self):
        value = self.iir
        if self.fcr & FCR_FE:
            value |= IIR_FIFO_ENABLED
        # Reading IIR while it reports THRE clears that source (datasheet
        # table IV, "Interrupt reset control").
        if self.iir == IIR_THRI:
            self.thr_ipending = False
            self._update_irq()
        return value

    def _read_lsr(self):
        value = self.lsr
        if self.lsr & LSR_INT_ANY:
            self.lsr &= ~LSR_INT_ANY     # error bits clear on read
            self._update_irq()
        return value

    def _read_msr(self):
        value = self.msr
        if self.msr & MSR_DELTA:
            self.msr &= ~MSR_DELTA       # delta bits clear on read
            self._update_irq()
        return value

    # -- register writes ------------------------------------------------
    def _write_reg(self, reg, value):
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._write_thr(value)
        elif reg == IER_DLM:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif reg == IIR_FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self._write_mcr(value)
        elif reg == SCR:
            self.scr = value
        # LSR and MSR writes are factory-test only: ignored, as in QEMU.

    def _write_thr(self, value):
        self.thr_ipending = False
        if self.mcr & MCR_LOOP:
            self._receive(value)         # loopback: TSR feeds the RSR
        else:
            self._emit(value)
        # Instant transmission: holding and shift registers empty again.
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thr_ipending = True
        self._update_irq()

    def _write_ier(self, value):
        value &= 0x0F
        changed = self.ier ^ value
        self.ier = value
        if changed & IER_THRI:
            # Enabling THRI with THR empty raises THRE at once (QEMU and real
            # 16550s re-assert it; Linux's UART_BUG_THRE test relies on it).
            self.thr_ipending = bool(value & IER_THRI and self.lsr & LSR_THRE)
        self._update_irq()

    def _write_fcr(self, value):
        if (value ^ self.fcr) & FCR_FE:
            value |= FCR_RFR | FCR_XFR   # toggling FIFO mode flushes both
        if value & FCR_RFR:
            self.rx.clear()
            self.lsr &= ~LSR_DR
            self.timeout_ipending = False
            self._cancel_cti()
        # Bits 1-7 are programmed only together with FCR0 (datasheet 8.4);
        # the reset bits self-clear.
        self.fcr = value & 0xC9 if value & FCR_FE else 0
        self._drain_host_input()
        self._update_irq()

    def _write_mcr(self, value):
        self.mcr = value & 0x1F
        self._update_msr()
        self._drain_host_input()         # leaving loopback reconnects input
        self._update_irq()

    def _update_msr(self):
        """Modem status inputs; in loopback they mirror the MCR outputs."""
        if self.mcr & MCR_LOOP:
            m = self.mcr
            status = ((MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                      | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))
        else:
            status = MSR_DCD | MSR_DSR | MSR_CTS
        old = self.msr
        delta = 0
        if (old ^ status) & MSR_CTS:
            delta |= MSR_DCTS
        if (old ^ status) & MSR_DSR:
            delta |= MSR_DDSR
        if (old & MSR_RI) and not (status & MSR_RI):
            delta |= MSR_TERI            # trailing edge of RI only
        if (old ^ status) & MSR_DCD:
            delta |= MSR_DDCD
        self.msr = status | (old & MSR_DELTA) | delta

    # -- receive path ---------------------------------------------------
    def _rx_room(self):
        if self.fcr & FCR_FE:
            return FIFO_SIZE - len(self.rx)
        return 0 if self.lsr & LSR_DR else 1

    def _receive(self, byte):
        """A character completed in the RSR (from the line or loopback)."""
        if self.fcr & FCR_FE:
            if len(self.rx) < FIFO_SIZE:
                self.rx.append(byte)
            else:
                self.lsr |= LSR_OE       # FIFO full: the new char is lost
            self._arm_cti()
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE       # 16450 mode: previous char destroyed
            self.rx.clear()
            self.rx.append(byte)
        self.lsr |= LSR_DR

    def feed(self, data: bytes):
        """Host input: queue ``data`` for the guest to receive."""
        self._host_pending.extend(data)
        self._drain_host_input()
        self._update_irq()

    def poll_input(self):
        """Non-blocking: pull what ``inp`` has ready, then deliver it."""
        if self.inp is not None and not self._inp_eof and not self._host_pending:
            room = self._rx_room()
            if room:
                data = self._read_host(max(room, FIFO_SIZE))
                self._host_pending.extend(data)
        self._drain_host_input()
        self._update_irq()

    def _read_host(self, n):
        try:
            fd = self.inp.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None            # in-memory stream: read() never blocks
        try:
            if fd is None:
                return self.inp.read(n) or b""
            ready, _, _ = select.select([fd], [], [], 0)
            if not ready:
                return b""
            data = os.read(fd, n)
        except (OSError, ValueError):
            data = b""
        if not data:
            self._inp_eof = True  # readable but empty: end of file
        return data

    def _drain_host_input(self):
        if self.mcr & MCR_LOOP:
            return                        # loopback disconnects SIN
        while self._host_pending and self._rx_room():
            self._receive(self._host_pending.popleft())

    # -- character timeout (FIFO mode) --------------------------------
    def char_time_ns(self):
        """Time of one character at the programmed divisor and format."""
        bits = 1 + 5 + (self.lcr & 3) + (1 if self.lcr & 0x08 else 0)
        bits += 2 if self.lcr & 0x04 else 1
        return bits * max(self.divisor, 1) * 1_000_000_000 // UART_CLOCK_BAUD

    def _cancel_cti(self):
        if self._cti_timer is not None:
            self.machine.clock.cancel(self._cti_timer)
            self._cti_timer = None

    def _arm_cti(self):
        """Restart the 4-character timeout (datasheet 8.6, FIFO mode)."""
        self._cancel_cti()
        if self.fcr & FCR_FE and self.rx:
            clock = self.machine.clock
            deadline = clock.now_ns + 4 * self.char_time_ns()
            self._cti_timer = clock.add_timer(deadline, self._cti_expired)

    def _cti_expired(self):
        self._cti_timer = None
        if self.fcr & FCR_FE and self.rx:
            self.timeout_ipending = True
            self._update_irq()

    # -- transmit / interrupt output --------------------------------------
    def _emit(self, byte):
        out = self.out
        if out is None:
            return
        data = bytes((byte,))
        write = getattr(out, "write", None)
        if write is None:
            out(data)
            return
        write(data)
        flush = getattr(out, "flush", None)
        if flush is not None:
            flush()

    def _pending_source(self):
        """Highest-priority pending interrupt (datasheet table IV)."""
        ier, lsr = self.ier, self.lsr
        if ier & IER_RLSI and lsr & LSR_INT_ANY:
            return IIR_RLSI
        if ier & IER_RDI and self.timeout_ipending:
            return IIR_CTI
        if ier & IER_RDI and lsr & LSR_DR:
            trigger = FIFO_TRIGGER[self.fcr >> 6]
            if not self.fcr & FCR_FE or len(self.rx) >= trigger:
                return IIR_RDI
        if ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if ier & IER_MSI and self.msr & MSR_DELTA:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self):
        self.iir = self._pending_source()
        level = self.iir != IIR_NO_INT
        if self.out2_gates_irq and not self.mcr & MCR_OUT2:
            level = False
        if level != self._irq_level:
            self._irq_level = level
            self.machine.raise_irq(self.irq, level)
