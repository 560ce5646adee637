"""Virtual time: derived from retired instructions, so every run is reproducible.

One guest instruction advances the clock by ``ns_per_insn`` nanoseconds (1 by
default: a 1 GHz machine).  The TSC, the PIT, the RTC and the APIC timers all
read this clock; nothing reads the host's wall clock.  While every CPU is
halted the machine jumps straight to the next timer deadline.
"""
import heapq
import itertools


class VirtualClock:
    def __init__(self, ns_per_insn: int = 1):
        self.ns_per_insn = ns_per_insn
        self.now_ns = 0
        self._timers: list = []          # heap of (deadline, seq, callback)
        self._seq = itertools.count()
        self._cancelled: set = set()
        self.next_deadline = float("inf")

    def advance(self, ns: int) -> None:
        self.now_ns += ns

    def add_timer(self, deadline_ns: int, callback) -> int:
        """Call ``callback()`` once ``now_ns >= deadline_ns``; returns a handle."""
        handle = next(self._seq)
        heapq.heappush(self._timers, (deadline_ns, handle, callback))
        self.next_deadline = self._timers[0][0]
        return handle

    def cancel(self, handle) -> None:
        if handle is not None:
            self._cancelled.add(handle)

    def run_due(self) -> None:
        """Fire every timer whose deadline has passed (in deadline order)."""
        timers = self._timers
        while timers and timers[0][0] <= self.now_ns:
            _, handle, cb = heapq.heappop(timers)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
                continue
            cb()
        while timers and timers[0][1] in self._cancelled:
            self._cancelled.discard(heapq.heappop(timers)[1])
        self.next_deadline = timers[0][0] if timers else float("inf")
