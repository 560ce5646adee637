"""The status line of a long run on a terminal: instructions, speed, #VMEXITs,
elapsed time, redrawn about twice a second on stderr (``svmsim run``; off
when stderr is not a terminal, and with -q).  Guest output written to the
same terminal first erases the line, which comes back at the next update."""
import time

ERASE = "\r\x1b[K"


class StatusLine:
    def __init__(self, machine, stream, interval=0.5):
        self.machine, self.stream, self.interval = machine, stream, interval
        self.start = self.last = time.monotonic()
        self.shown = False

    def poll(self) -> None:
        """machine.pollers: every few hundred rounds."""
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        m = self.machine
        insns = sum(c.retired for c in m.cpus)
        exits = sum(sum(getattr(c.svm, "exits", {}).values()) for c in m.cpus if c.svm is not None)
        rate = insns / (now - self.start) / 1e6 if now > self.start else 0.0
        text = f"svmsim: {insns / 1e6:.1f} M instructions, {rate:.2f} M/s"
        if exits:
            text += f", {exits} #VMEXITs"
        self.stream.write(f"{ERASE}{text}, {now - self.start:.0f} s")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write(ERASE)
            self.stream.flush()
            self.shown = False


class ClearingWriter:
    """Wraps the console: erase the status line before guest bytes appear."""

    def __init__(self, out, status):
        self.out, self.status = out, status

    def write(self, data):
        self.status.clear()
        return self.out.write(data)

    def flush(self):
        self.out.flush()

    def __getattr__(self, name):
        return getattr(self.out, name)
