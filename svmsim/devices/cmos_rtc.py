"""Motorola MC146818A real-time clock and CMOS RAM at ports 0x70/0x71.

Reference: MC146818A datasheet (registers 0x00-0x0D, register A-D bits,
update cycle, periodic rates); QEMU hw/rtc/mc146818rtc.c and the PC
CMOS layout QEMU writes in pc_cmos_init (hw/i386/pc.c, x86-common.c).

Port 0x70 selects a CMOS byte (bits 6:0) and, in bit 7, disables NMI
(recorded in :attr:`CmosRtc.nmi_disabled` for the machine to honour);
reading port 0x70 gives 0xFF as on QEMU.  Port 0x71 reads/writes the byte.

The time is deterministic: a fixed start (default 2026-01-01 00:00:00,
``machine.config.rtc_start`` or the ``start`` argument override it) plus
the virtual clock, in whole seconds.  The update cycle is modelled by
register A's UIP bit, set for the last 244 us of each second (QEMU's
UIP_HOLD_LENGTH).  Register B selects BCD or binary (DM) and 12/24 hours;
SET freezes the time while the guest writes it.  The day of the week is
derived from the date (guest writes to register 6 are not kept).

Interrupts on ISA IRQ 8: periodic (PIE), update-ended (UIE) and alarm
(AIE), through clock timers; reading register C returns and clears the
flags and lowers the line, so a guest that never reads C gets one IRQ.
"""
from datetime import datetime, timedelta

SECONDS, SEC_ALARM, MINUTES, MIN_ALARM, HOURS, HOUR_ALARM = range(6)
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32

REG_A_UIP = 0x80
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE = 0x80, 0x40, 0x20, 0x10
REG_B_DM, REG_B_24H = 0x04, 0x02
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
REG_D_VRT = 0x80

NS_PER_S = 1_000_000_000
UIP_HOLD_NS = 8 * NS_PER_S // 32768          # 244 us before each update
EPOCH = datetime(1970, 1, 1)
DEFAULT_START = datetime(2026, 1, 1, 0, 0, 0)
TIME_REGS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)
LOW_RAM_LIMIT = 0xC000_0000                  # as svmsim.memory.bus


def to_bcd(v):
    return ((v // 10) << 4) | (v % 10)


def from_bcd(v):
    return (v >> 4) * 10 + (v & 0x0F)


class CmosRtc:
    def __init__(self, machine, start: datetime = None, irq=8):
        self.machine = machine
        self.irq = irq
        config = getattr(machine, "config", None)
        start = start or getattr(config, "rtc_start", None) or DEFAULT_START
        self.base_s = int((start - EPOCH).total_seconds())
        self.cmos = bytearray(128)
        self.index = 0
        self.nmi_disabled = False
        self.frozen = None            # datetime while register B.SET = 1
        self.irq_level = False
        self._periodic_timer = None
        self._second_timer = None
        self.cmos[REG_A] = 0x26       # 32.768 kHz time base, 1024 Hz rate
        self.cmos[REG_B] = REG_B_24H  # BCD, 24-hour (QEMU reset value)
        self.cmos[REG_D] = REG_D_VRT  # battery good
        self._pf_seen = self._period_index()
        self._uf_seen = self._second_index()
        self._fill_pc_cmos(config)

    def register(self, machine=None):
        (machine or self.machine).io.register(0x70, 2, self)

    # -- PC CMOS layout (QEMU pc_cmos_init) -------------------------------
    def _fill_pc_cmos(self, config):
        below, above = self._ram_split(config)
        kib = 1024
        base = min(below // kib, 640)
        ext = min(max(below - 1024 * kib, 0) // kib, 0xFFFF)
        over16 = min(max(below - 16 * 1024 * kib, 0) // 65536, 0xFFFF)
        high = above // 65536
        c = self.cmos
        c[0x14] = 0x06                       # equipment: FPU, PS/2 mouse
        c[0x15], c[0x16] = base & 0xFF, base >> 8
        c[0x17], c[0x18] = ext & 0xFF, ext >> 8
        c[0x30], c[0x31] = ext & 0xFF, ext >> 8
        c[0x34], c[0x35] = over16 & 0xFF, over16 >> 8
        c[0x5B], c[0x5C], c[0x5D] = high & 0xFF, (high >> 8) & 0xFF, (high >> 16) & 0xFF
        # QEMU also stores the CPU count minus one at 0x5F (SeaBIOS reads it).
        ncpus = getattr(config, "smp", None) or len(getattr(self.machine, "cpus", ()) or [0])
        c[0x5F] = (ncpus - 1) & 0xFF
        # QEMU's default boot order "cad" (pc.c set_boot_dev: 3Dh = 2nd << 4 | 1st,
        # 38h = 3rd << 4 | no-floppy-check; a = 1, c = 2, d = 3) and the IBM PS/2
        # century byte, a copy of 32h taken at power-on (both read on QEMU 7.2).
        c[0x3D], c[0x38] = 0x12, 0x30
        c[0x37] = to_bcd(self.now().year // 100)

    def _ram_split(self, config):
        bus = getattr(self.machine, "bus", None)
        if bus is not None and hasattr(bus, "ram_ranges"):
            below = above = 0
            for spa, length in bus.ram_ranges():
                if spa < 1 << 32:
                    below += length
                else:
                    above += length
            return below, above
        size = getattr(config, "mem_size", 0) or 0
        below = min(size, LOW_RAM_LIMIT)
        return below, size - below

    # -- time -------------------------------------------------------------
    def _running(self):
        """Oscillator on and updates enabled (QEMU rtc_running)."""
        return not self.cmos[REG_B] & REG_B_SET and (self.cmos[REG_A] & 0x70) <= 0x20

    def _second_index(self):
        return self.machine.clock.now_ns // NS_PER_S

    def now(self) -> datetime:
        if self.frozen is not None:
            return self.frozen
        return EPOCH + timedelta(seconds=self.base_s + self._second_index())

    def _set_now(self, when: datetime):
        self.base_s = int((when - EPOCH).total_seconds()) - self._second_index()

    def _encode(self, value):
        return value if self.cmos[REG_B] & REG_B_DM else to_bcd(value)

    def _decode(self, value):
        return value if self.cmos[REG_B] & REG_B_DM else from_bcd(value)

    def _encode_hour(self, hour):
        if self.cmos[REG_B] & REG_B_24H:
            return self._encode(hour)
        pm = 0x80 if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hour(self, value):
        if self.cmos[REG_B] & REG_B_24H:
            return self._decode(value)
        hour = self._decode(value & 0x7F) % 12
        return hour + 12 if value & 0x80 else hour

    def _read_time(self, reg):
        t = self.now()
        if reg == HOURS:
            return self._encode_hour(t.hour)
        value = {SECONDS: t.second, MINUTES: t.minute,
                 DAY_OF_WEEK: t.isoweekday() % 7 + 1,      # Sunday = 1
                 DAY_OF_MONTH: t.day, MONTH: t.month,
                 YEAR: t.year % 100, CENTURY: t.year // 100}[reg]
        return self._encode(value)

    def _write_time(self, reg, value):
        t = self.now()
        if reg == HOURS:
            fields = {"hour": self._decode_hour(value)}
        elif reg == YEAR:
            fields = {"year": t.year // 100 * 100 + self._decode(value)}
        elif reg == CENTURY:
            fields = {"year": self._decode(value) * 100 + t.year % 100}
        else:
            name = {SECONDS: "second", MINUTES: "minute",
                    DAY_OF_MONTH: "day", MONTH: "month"}.get(reg)
            if name is None:
                return                       # day of week: derived
            fields = {name: self._decode(value)}
        try:
            new = t.replace(**fields)
        except ValueError:
            return      # an impossible date: the chip would count garbage
        if self.frozen is not None:
            self.frozen = new
        else:
            self._set_now(new)
        self._reschedule()

    # -- ports ------------------------------------------------------------
    def io_read(self, port, size):
        value = 0
        for i in range(size):
            p = port + i
            byte = self._read_data() if p == 0x71 else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, port, size, value):
        for i in range(size):
            p, byte = port + i, (value >> (8 * i)) & 0xFF
            if p == 0x70:
                self.index = byte & 0x7F
                self.nmi_disabled = bool(byte & 0x80)
            elif p == 0x71:
                self._write_data(byte)

    def _read_data(self):
        reg = self.index
        if reg in TIME_REGS:
            return self._read_time(reg)
        if reg == REG_A:
            return self._read_reg_a()
        if reg == REG_C:
            return self._read_reg_c()
        return self.cmos[reg]

    def _write_data(self, value):
        reg = self.index
        if reg in TIME_REGS:
            self._write_time(reg, value)
        elif reg == REG_A:
            self.cmos[REG_A] = value & 0x7F          # UIP is read-only
            self._pf_seen = self._period_index()
            self._reschedule()
        elif reg == REG_B:
            self._write_reg_b(value)
        elif reg in (REG_C, REG_D):
            pass                                     # read-only
        else:
            self.cmos[reg] = value

    def _read_reg_a(self):
        value = self.cmos[REG_A]
        ns_in_second = self.machine.clock.now_ns % NS_PER_S
        if self._running() and ns_in_second >= NS_PER_S - UIP_HOLD_NS:
            value |= REG_A_UIP
        return value

    def _write_reg_b(self, value):
        old = self.cmos[REG_B]
        if value & REG_B_SET:
            value &= ~REG_B_UIE          # SET clears UIE (datasheet, reg B)
            if not old & REG_B_SET:
                self.frozen = self.now()
        elif old & REG_B_SET:
            frozen, self.frozen = self.frozen, None
            self._set_now(frozen)
        self.cmos[REG_B] = value
        self._update_irq()
        self._reschedule()

    def _read_reg_c(self):
        self._collect_lazy_flags()
        value = self.cmos[REG_C]
        self.cmos[REG_C] = 0
        self._update_irq()
        return value

    # -- interrupt flags -------------------------------------------------
    def _period_ns_units(self):
        """Periodic rate as (numerator_ns, 32768): None when off."""
        rs = self.cmos[REG_A] & 0x0F
        if rs == 0 or not self._running():
            return None
        if rs <= 2:
            rs += 7                      # RS 1, 2 alias 8, 9 at 32.768 kHz
        return (1 << (rs - 1)) * NS_PER_S

    def _period_index(self):
        unit = self._period_ns_units()
        if unit is None:
            return 0
        return self.machine.clock.now_ns * 32768 // unit

    def _collect_lazy_flags(self):
        """PF and UF are set even with their interrupts disabled."""
        k = self._period_index()
        if self._period_ns_units() is not None and k > self._pf_seen:
            self.cmos[REG_C] |= REG_C_PF
        self._pf_seen = k
        s = self._second_index()
        if self._running() and s > self._uf_seen:
            self.cmos[REG_C] |= REG_C_UF
        self._uf_seen = s

    def _set_flag(self, flag):
        self.cmos[REG_C] |= flag
        self._update_irq()

    def _update_irq(self):
        c, b = self.cmos[REG_C], self.cmos[REG_B]
        enabled = ((c & REG_C_PF and b & REG_B_PIE) or (c & REG_C_AF and b & REG_B_AIE)
                   or (c & REG_C_UF and b & REG_B_UIE))
        if enabled:
            self.cmos[REG_C] |= REG_C_IRQF
        level = bool(self.cmos[REG_C] & REG_C_IRQF)
        if level != self.irq_level:
            self.irq_level = level
            self.machine.raise_irq(self.irq, level)

    # -- timers -------------------------------------------------------------
    def _reschedule(self):
        clock = self.machine.clock
        for name in ("_periodic_timer", "_second_timer"):
            clock.cancel(getattr(self, name))
            setattr(self, name, None)
        b = self.cmos[REG_B]
        unit = self._period_ns_units()
        if unit is not None and b & REG_B_PIE:
            k = clock.now_ns * 32768 // unit + 1
            deadline = -(-k * unit // 32768)
            self._periodic_timer = clock.add_timer(deadline, self._periodic_tick)
        if self._running() and b & (REG_B_UIE | REG_B_AIE):
            deadline = (clock.now_ns // NS_PER_S + 1) * NS_PER_S
            self._second_timer = clock.add_timer(deadline, self._second_tick)

    def _periodic_tick(self):
        self._periodic_timer = None
        self._pf_seen = self._period_index()
        self._set_flag(REG_C_PF)
        self._reschedule()

    def _second_tick(self):
        self._second_timer = None
        self._uf_seen = self._second_index()
        flags = REG_C_UF
        if self._alarm_matches():
            flags |= REG_C_AF
        self._set_flag(flags)
        self._reschedule()

    def _alarm_matches(self):
        for alarm, reg in ((SEC_ALARM, SECONDS), (MIN_ALARM, MINUTES), (HOUR_ALARM, HOURS)):
            want = self.cmos[alarm]
            if want & 0xC0 == 0xC0:
                continue                     # "don't care" code
            if want != self._read_time(reg):
                return False
        return True
