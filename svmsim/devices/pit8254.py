"""Intel 8254 programmable interval timer (ports 0x40-0x43) and port 0x61.

Reference: Intel 8254 datasheet (order 231164): modes 0-5, counter latch
command, read-back command, RW modes (LSB, MSB, LSB then MSB), BCD
counting.  PC wiring (IBM AT technical reference, QEMU hw/timer/i8254.c):
all three counters run from 1.193182 MHz; counter 0's OUT is ISA IRQ 0,
gates 0 and 1 are tied high; counter 2's gate is bit 0 of port 0x61 and
its OUT is readable there as bit 5 (kernels calibrate the TSC with it).

Time is virtual: the counters are functions of ``machine.clock.now_ns``.
Counter 0 schedules a clock timer at each OUT transition and reports the
new level with ``machine.raise_irq(0, level)``.  If the CPU falls more than
a period behind, missed periods are dropped (one edge is still delivered).

Simplifications, each noted where it applies: a new count in modes 2/3
takes effect at once (QEMU does the same; the datasheet waits for the end
of the current period); mode 0 OUT rises after N clocks, not N+1; mode 3
with an odd count uses the usual "count down by 2" approximation.
At reset every counter is in mode 3 with count 65536 (QEMU's
pit_reset_common), so counter 0 ticks at 18.2 Hz until the guest
reprograms it.
"""

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000

IDLE, ARMED, RUNNING = range(3)   # no count / waiting for gate / counting


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_HZ // NS_PER_S


def ticks_to_ns(ticks: int) -> int:
    return -(-ticks * NS_PER_S // PIT_HZ)


def bcd_to_bin(value: int) -> int:
    out, scale = 0, 1
    while value:
        out += (value & 0xF) * scale
        value >>= 4
        scale *= 10
    return out


def bin_to_bcd(value: int) -> int:
    out, shift = 0, 0
    for _ in range(4):
        out |= (value % 10) << shift
        value //= 10
        shift += 4
    return out


class PitCounter:
    """One counter.  ``on_out(level)`` is called when OUT changes (counter
    0 only); other counters compute OUT when it is read."""

    def __init__(self, clock, gate: bool, on_out=None):
        self.clock = clock
        self.gate = gate
        self.on_out = on_out
        self.out_level = False       # last level given to on_out
        self._timer = None
        self.latched = []            # bytes from a counter latch, in order
        self.status_latch = None
        self.read_msb = False        # RW=3 read flip-flop
        self.write_msb = False       # RW=3 write flip-flop
        self.write_lsb = 0
        self.rw, self.mode, self.bcd = 0, 3, False   # QEMU's reset (the datasheet: undefined)
        self.count = 0x10000
        self.null_count = False
        self.state = RUNNING if gate else ARMED
        self.start_tick = 0
        self.paused_d = None         # elapsed count frozen by gate (modes 0/4)

    # -- time -------------------------------------------------------------
    def now_tick(self):
        return ns_to_ticks(self.clock.now_ns)

    def elapsed(self, tick=None):
        """Clocks counted since the count was loaded, None if not counting."""
        if self.state != RUNNING:
            return None
        if self.paused_d is not None:
            return self.paused_d
        return (self.now_tick() if tick is None else tick) - self.start_tick

    def modulus(self):
        return 10000 if self.bcd else 0x10000

    def value(self):
        """Current counting element (CE) contents, in binary."""
        d = self.elapsed()
        n = self.count
        if d is None:
            return n % self.modulus()
        if self.mode == 2:
            v = n - d % n
        elif self.mode == 3:
            v = n - (2 * d) % n
        else:
            v = n - d
        return v % self.modulus()

    def out_at(self, d):
        n = self.count
        if d is None:
            return not (self.state == IDLE and self.mode == 0)
        if self.mode in (0, 1):
            return d >= n
        if self.mode == 2:
            return n < 2 or d % n != n - 1     # low for the clock at CE = 1
        if self.mode == 3:
            return d % n < (n + 1) // 2        # high for the first half
        return d != n                          # modes 4/5: one-clock strobe

    def out(self):
        return self.out_at(self.elapsed())

    def next_transition(self, d):
        """Smallest elapsed count > d at which OUT changes, or None."""
        n = self.count
        if self.mode in (0, 1):
            return n if d < n else None
        if self.mode in (4, 5):
            return n if d < n else (n + 1 if d == n else None)
        if n < 2:
            return None
        base, r = d - d % n, d % n
        edge = n - 1 if self.mode == 2 else (n + 1) // 2
        return base + edge if r < edge else base + n

    # -- programming ------------------------------------------------------
    def control(self, rw, mode, bcd):
        self.rw, self.mode, self.bcd = rw, mode, bcd
        self.state = IDLE                # OUT: low in mode 0, high otherwise
        self.paused_d = None
        self.latched, self.status_latch = [], None
        self.read_msb = self.write_msb = False
        self.null_count = True
        self.reschedule()

    def write(self, value):
        if self.rw == 1:
            self._load(value)
        elif self.rw == 2:
            self._load(value << 8)
        elif not self.write_msb:
            self.write_lsb = value
            self.write_msb = True
            if self.mode == 0:           # first byte stops counting in mode 0
                self.state = IDLE
                self.reschedule()
        else:
            self.write_msb = False
            self._load(self.write_lsb | (value << 8))

    def _load(self, raw):
        n = bcd_to_bin(raw) if self.bcd else raw
        self.count = n or self.modulus()      # 0 means the maximum count
        self.null_count = True
        if self.mode in (1, 5) or (self.mode in (2, 3) and not self.gate):
            self.state = ARMED                # wait for a gate rising edge
        else:
            self._start()
            if self.mode in (0, 4) and not self.gate:
                self.paused_d = 0
        self.reschedule()

    def _start(self):
        self.state = RUNNING
        self.start_tick = self.now_tick()
        self.paused_d = None
        self.null_count = False

    def set_gate(self, gate: bool):
        rising = gate and not self.gate
        falling = self.gate and not gate
        self.gate = gate
        if self.state == IDLE:
            return
        if self.mode in (0, 4):
            if falling and self.paused_d is None:
                self.paused_d = self.elapsed()
            elif rising and self.paused_d is not None:
                self.start_tick = self.now_tick() - self.paused_d
                self.paused_d = None
        elif rising:
            self._start()                     # modes 1/5 trigger, 2/3 reload
        elif falling and self.mode in (2, 3):
            self.state = ARMED                # counting stops, OUT high
        self.reschedule()

    # -- reading ----------------------------------------------------------
    def latch_count(self):
        if self.latched:
            return                            # a latch holds until read
        v = self.value()
        if self.bcd:
            v = bin_to_bcd(v)
        lsb, msb = v & 0xFF, (v >> 8) & 0xFF
        self.latched = {1: [lsb], 2: [msb]}.get(self.rw, [lsb, msb])

    def latch_status(self):
        if self.status_latch is None:
            self.status_latch = ((0x80 if self.out() else 0)
                                 | (0x40 if self.null_count else 0)
                                 | self.rw << 4 | self.mode << 1 | int(self.bcd))

    def read(self):
        if self.status_latch is not None:
            value, self.status_latch = self.status_latch, None
            return value
        if self.latched:
            return self.latched.pop(0)
        v = self.value()
        if self.bcd:
            v = bin_to_bcd(v)
        if self.rw == 1:
            return v & 0xFF
        if self.rw == 2:
            return (v >> 8) & 0xFF
        msb, self.read_msb = self.read_msb, not self.read_msb
        return (v >> 8) & 0xFF if msb else v & 0xFF

    # -- OUT events (counter 0 -> IRQ 0) ----------------------------------
    def reschedule(self, report=True):
        if self.on_out is None:
            return
        if self._timer is not None:
            self.clock.cancel(self._timer)
            self._timer = None
        if report:
            self._report(self.out())
        d = self.elapsed()
        if d is not None and self.paused_d is None:
            self._schedule(self.next_transition(d))

    def _schedule(self, d_evt):
        if d_evt is None:
            return
        deadline = ticks_to_ns(self.start_tick + d_evt)
        self._timer = self.clock.add_timer(deadline, lambda: self._fire(d_evt))

    def _fire(self, d_evt):
        self._timer = None
        self._report(self.out_at(d_evt))
        nxt = self.next_transition(d_evt)
        d_now = self.elapsed()
        if d_now is None:
            return
        if nxt is not None and self.mode in (2, 3) and nxt + self.count <= d_now:
            nxt = self.next_transition(d_now)  # far behind: drop lost periods
        self._schedule(nxt)

    def _report(self, level):
        if level != self.out_level:
            self.out_level = level
            self.on_out(level)


class Pit8254:
    """The three counters at 0x40-0x42 and the control word port 0x43."""

    def __init__(self, machine, irq=0):
        self.machine = machine
        clock = machine.clock
        self.irq = irq
        self.counters = [
            PitCounter(clock, True, self._out0_changed),
            PitCounter(clock, True),
            PitCounter(clock, False),
        ]

    def register(self, machine=None):
        (machine or self.machine).io.register(0x40, 4, self)
        self.counters[0].reschedule(report=False)   # start the reset tick

    def _out0_changed(self, level):
        self.machine.raise_irq(self.irq, level)

    def io_read(self, port, size):
        value = 0
        for i in range(size):
            p = port + i
            byte = self.counters[p - 0x40].read() if 0x40 <= p <= 0x42 else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, port, size, value):
        for i in range(size):
            p, byte = port + i, (value >> (8 * i)) & 0xFF
            if 0x40 <= p <= 0x42:
                self.counters[p - 0x40].write(byte)
            elif p == 0x43:
                self._control_word(byte)

    def _control_word(self, cw):
        sc, rw, mode, bcd = cw >> 6, (cw >> 4) & 3, (cw >> 1) & 7, bool(cw & 1)
        if sc == 3:
            self._read_back(cw)
            return
        counter = self.counters[sc]
        if rw == 0:
            counter.latch_count()
            return
        counter.control(rw, mode & 3 if mode > 5 else mode, bcd)  # 6,7 = 2,3

    def _read_back(self, cw):
        for i in range(3):
            if cw & (2 << i):
                if not cw & 0x20:
                    self.counters[i].latch_count()
                if not cw & 0x10:
                    self.counters[i].latch_status()


class SystemControlPortB:
    """Port 0x61 (IBM AT "port B", PIIX NMI status and control register).

    Bit 0: counter 2 gate; bit 1: speaker data enable; bits 2-3: parity and
    channel-check disables (stored); bit 4: refresh request, toggling every
    15.085 us of virtual time; bit 5: counter 2 OUT; bits 6-7: IOCHK and
    SERR status, never raised here.
    """
    REFRESH_NS = 15_085

    def __init__(self, machine, pit: Pit8254):
        self.machine = machine
        self.pit = pit
        self.value = 0

    def register(self, machine=None):
        (machine or self.machine).io.register(0x61, 1, self)

    def io_read(self, port, size):
        refresh = (self.machine.clock.now_ns // self.REFRESH_NS) & 1
        out2 = self.pit.counters[2].out()
        byte = (self.value & 0x0F) | refresh << 4 | int(out2) << 5
        return byte | (((1 << (8 * size)) - 1) & ~0xFF)

    def io_write(self, port, size, value):
        self.value = value & 0x0F
        self.pit.counters[2].set_gate(bool(value & 1))
