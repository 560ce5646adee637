"""QEMU's isa-debug-exit device (hw/misc/debugexit.c).

``-device isa-debug-exit,iobase=0xf4,iosize=4`` maps ``iosize`` ports at
``iobase``.  Any write of 1, 2 or 4 bytes to any of them ends QEMU with
``exit((val << 1) | 1)``, where ``val`` is the value as written: 8 bits for
``outb``, 16 for ``outw``, 32 for ``outl`` (the region has no .impl sizes,
so the access reaches the device at its own width).  The offset inside the
window does not matter.  Reads return 0.

The host only sees the low 8 bits of an exit status; we hand the full
value to ``machine.request_stop`` and leave truncation to whoever turns it
into a process exit code.
"""


class DebugExit:
    def __init__(self, machine, iobase=0xF4, iosize=4):
        self.machine = machine
        self.iobase = iobase
        self.iosize = iosize

    def register(self, machine=None):
        (machine or self.machine).io.register(self.iobase, self.iosize, self)

    def io_read(self, port, size):
        return 0

    def io_write(self, port, size, value):
        value &= (1 << (8 * size)) - 1
        self.machine.request_stop((value << 1) | 1,
                                  f"isa-debug-exit: guest wrote {value:#x}")
