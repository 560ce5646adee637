"""Small PC ports: 0x92 (System Control Port A), 0x80 (POST code), 0xCF9.

Behaviour follows QEMU's pc machine (hw/i386/pc.c port92 and ioport80,
hw/isa/piix.c reset control register); bit meanings from the IBM PS/2
technical reference (port 0x92) and the Intel PIIX3/PIIX4 datasheets
(0xCF9 RC register).

Reset: QEMU resets the machine and, with ``-no-reboot``, exits with status
0.  We call ``machine.request_reset(reason)`` when the machine has one,
otherwise ``machine.request_stop(0, reason)`` (the ``-no-reboot`` outcome:
a test kernel that resets simply ends).
"""


def request_reset(machine, reason: str):
    reset = getattr(machine, "request_reset", None)
    if callable(reset):
        reset(reason)
    else:
        machine.request_stop(0, reason)


def _ones(size):
    return (1 << (8 * size)) - 1


class SystemControlPortA:
    """Port 0x92.  Bit 1: fast A20 gate (recorded; svmsim never masks
    A20).  Bit 0: fast reset on a 0 -> 1 transition.  Reads return the last
    value written.  Starts at 0x02: firmware (SeaBIOS) has enabled A20."""

    def __init__(self, machine):
        self.machine = machine
        self.value = 0x02

    def register(self, machine=None):
        (machine or self.machine).io.register(0x92, 1, self)

    @property
    def a20_enabled(self):
        return bool(self.value & 0x02)

    def io_read(self, port, size):
        return self.value | (_ones(size) & ~0xFF)

    def io_write(self, port, size, value):
        old, self.value = self.value, value & 0xFF
        if value & 1 and not old & 1:
            request_reset(self.machine, "guest reset via port 0x92 (fast reset)")


class PostCodePort:
    """Port 0x80: POST/diagnostic codes, also used as an I/O delay.  Writes
    are kept in :attr:`last_code` for debugging; reads return all ones."""

    def __init__(self, machine):
        self.machine = machine
        self.last_code = None

    def register(self, machine=None):
        (machine or self.machine).io.register(0x80, 1, self)

    def io_read(self, port, size):
        return _ones(size)

    def io_write(self, port, size, value):
        self.last_code = value


class ResetControlRegister:
    """PIIX Reset Control register at 0xCF9 (byte access only).

    Bit 1 selects a hard or soft reset, bit 2 starts it.  As in QEMU's
    piix rcr_write, any write with bit 2 set resets the machine, whatever
    bit 1 says; otherwise only bit 1 is kept and read back.
    """

    def __init__(self, machine):
        self.machine = machine
        self.value = 0

    def register(self, machine=None):
        (machine or self.machine).io.register(0xCF9, 1, self)

    def io_read(self, port, size):
        return self.value if size == 1 else _ones(size)

    def io_write(self, port, size, value):
        if size != 1:
            return
        if value & 0x04:
            kind = "hard" if value & 0x02 else "soft"
            request_reset(self.machine, f"guest {kind} reset via port 0xCF9")
            return
        self.value = value & 0x02
