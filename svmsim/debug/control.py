"""The debugger's core: breakpoints, watchpoints, hooks and stops.

Nothing here costs anything while unused; each facility switches on a
mechanism only when something is set:

* Breakpoints and code hooks instrument instructions when their block is
  translated (``Engine.instrument``): the instruction's handler is wrapped in
  a function that calls the hooks and raises ``DebugStop`` before the
  instruction, a precise stop at any instruction of any block, interpreted or
  compiled.  Setting or clearing one drops only the blocks holding its
  address.
* Watchpoints and memory hooks add ranges to each CPU's watch list (the slow
  memory path that x86 data breakpoints use; the fast caches stay empty) and
  make the machine run one instruction at a time, so a watchpoint stops
  after the instruction that touched its range, as an x86 data breakpoint
  traps.
* I/O hooks replace the CPUs' port bus with a filter (``cpu.io``); the
  machine's own bus is untouched, so Python code (a reference VMM) doing I/O
  is not hooked.
* Event hooks (exceptions, interrupts, VMRUN, #VMEXIT) are a listener on the
  machine's trace events.

A breakpoint or hook can be limited to a ``Scope``: host or guest mode, one
ASID, one CPU.
"""
from dataclasses import dataclass

from ..cpu.exceptions import DebugStop

HOST, GUEST = "host", "guest"
EXCEPTION_KINDS = (2, 4, 5)          # cpu.interrupts: HWEXC, SWEXC (INT3/INTO), ICEBP
INTERRUPT_KINDS = (0, 1, 3)          # EXTINT, NMI, SWINT (INT n)


@dataclass(frozen=True)
class Scope:
    """Where a breakpoint or hook applies.  ``world``: "host", "guest" or None
    (both); ``asid``: only a guest running with this ASID; ``cpu``: one CPU."""
    world: str = None
    asid: int = None
    cpu: int = None

    def __post_init__(self):
        if self.world not in (None, HOST, GUEST):
            raise ValueError(f"scope world must be 'host', 'guest' or None, not {self.world!r}")
        if self.asid is not None and self.world == HOST:
            raise ValueError("an ASID scope is a guest scope")

    def matches(self, cpu) -> bool:
        if self.cpu is not None and cpu.index != self.cpu:
            return False
        if self.world == HOST and cpu.svm_guest or self.world == GUEST and not cpu.svm_guest:
            return False
        return self.asid is None or (cpu.svm_guest and cpu.svm.asid == self.asid)

    def __str__(self):
        parts = [self.world or ("guest" if self.asid is not None else "")]
        if self.asid is not None:
            parts.append(f"asid {self.asid}")
        if self.cpu is not None:
            parts.append(f"cpu {self.cpu}")
        return " ".join(p for p in parts if p) or "anywhere"


ANYWHERE = Scope()


def scope_of(scope) -> Scope:
    """A Scope from a Scope, None, "host"/"guest", or a dict of its fields."""
    if scope is None:
        return ANYWHERE
    if isinstance(scope, Scope):
        return scope
    if isinstance(scope, str):
        return Scope(world=scope)
    return Scope(**scope)


class Breakpoint:
    """Stop before the instruction at linear ``address`` when ``scope`` matches."""

    def __init__(self, address, scope=ANYWHERE, temporary=False):
        self.address, self.scope, self.temporary = address, scope, temporary
        self.hits = 0

    def __repr__(self):
        return f"Breakpoint({self.address:#x}, {self.scope})"


class Hook:
    """A registered callback; ``remove()`` unregisters it."""

    def __init__(self, debugger, kind, callback, begin=0, end=(1 << 64) - 1, scope=ANYWHERE, what=None):
        self.debugger, self.kind, self.callback = debugger, kind, callback
        self.begin, self.end, self.scope, self.what = begin, end, scope, what

    def covers(self, start, length=1) -> bool:
        return start <= self.end and self.begin < start + length

    def remove(self) -> None:
        self.debugger.remove_hook(self)

    def __repr__(self):
        return f"Hook({self.kind}, {self.begin:#x}-{self.end:#x}, {self.scope})"


class Watchpoint:
    """Stop after an instruction that reads (``"r"``), writes (``"w"``) or
    accesses (``"rw"``) linear ``address .. address + length - 1``."""

    RW_BITS = {"w": 1, "r": 2, "rw": 3}

    def __init__(self, address, length, access="w", scope=ANYWHERE):
        if access not in self.RW_BITS:
            raise ValueError(f"watchpoint access must be 'r', 'w' or 'rw', not {access!r}")
        self.address, self.length, self.access, self.scope = address, length, access, scope

    def __repr__(self):
        return f"Watchpoint({self.address:#x}, {self.length}, {self.access!r}, {self.scope})"


class Debugger:
    """Breakpoints, watchpoints, hooks and stepping for one machine."""

    def __init__(self, machine):
        self.machine = machine
        self.breakpoints: dict = {}        # linear address -> [Breakpoint]
        self.watchpoints: list = []
        self.hooks: dict = {"code": [], "mem": [], "io": [], "event": []}
        self.stepping = False              # run one instruction at a time (watch, step)
        self.step_over = None              # CPU that first executes its stopped-at instruction
        self._skip = None                  # (cpu index, address) whose stop is skipped once
        self._step = None                  # [cpu index, boundaries left] while Machine.step runs
        self._watch_hit = None             # (Watchpoint, address, write) during this instruction
        self._before = None                # CPU stopped before an instruction (DebugStop)
        self._listening = False

    # ------------------------------------------------------------ breakpoints
    def add_breakpoint(self, address, scope=None, temporary=False) -> Breakpoint:
        bp = Breakpoint(address, scope_of(scope), temporary)
        self.breakpoints.setdefault(address, []).append(bp)
        self._code_changed(address, address + 1)
        return bp

    def remove_breakpoint(self, bp) -> None:
        """Remove a Breakpoint, or every breakpoint at an address."""
        if isinstance(bp, Breakpoint):
            left = [b for b in self.breakpoints.get(bp.address, []) if b is not bp]
            address = bp.address
        else:
            left, address = [], bp
        if left:
            self.breakpoints[address] = left
        else:
            self.breakpoints.pop(address, None)
        self._code_changed(address, address + 1)

    # ------------------------------------------------------------ watchpoints
    def add_watchpoint(self, address, length=1, access="w", scope=None) -> Watchpoint:
        wp = Watchpoint(address, length, access, scope_of(scope))
        self.watchpoints.append(wp)
        self._watch_changed()
        return wp

    def remove_watchpoint(self, wp) -> None:
        self.watchpoints = [w for w in self.watchpoints if w is not wp]
        self._watch_changed()

    # ------------------------------------------------------------ hooks
    def add_hook(self, kind, callback, begin=0, end=(1 << 64) - 1, scope=None, what=None) -> Hook:
        """kind: "code" (linear range), "mem" (linear range, ``what`` = "r",
        "w" or "rw"), "io" (port range), "event" (``what`` = a predicate on
        the trace event dict)."""
        if begin > end:
            raise ValueError(f"hook range {begin:#x}..{end:#x} is empty")
        hook = Hook(self, kind, callback, begin, end, scope_of(scope), what)
        self.hooks[kind].append(hook)
        self._hooks_changed(hook)
        return hook

    def remove_hook(self, hook) -> None:
        lst = self.hooks[hook.kind]
        if hook in lst:
            lst.remove(hook)
            self._hooks_changed(hook)

    def _hooks_changed(self, hook) -> None:
        if hook.kind == "code":
            self._code_changed(hook.begin, hook.end + 1)
        elif hook.kind == "mem":
            self._watch_changed()
        elif hook.kind == "io":
            self._io_changed()
        else:
            self._events_changed()

    # ------------------------------------------------------------ instrumentation
    def _code_changed(self, lo, hi) -> None:
        """Translation-time instrumentation is on while any breakpoint or code
        hook exists; blocks holding an instruction in [lo, hi) are translated
        again so they get (or lose) their wrapper."""
        engine = self.machine.engine
        engine.instrument = self.instrument if (self.breakpoints or self.hooks["code"]) else None
        drop = []
        for key, blk in engine.blocks.items():
            start = key[0]
            if start < hi and lo < start + (blk.end_ip - blk.insns[0].ip):
                drop.append(key)
        for key in drop:
            del engine.blocks[key]

    def instrument(self, cpu, ins, lin) -> None:
        """Engine.instrument: wrap an instruction that has a breakpoint or a
        code hook at its linear address ``lin``."""
        hooks = [h for h in self.hooks["code"] if h.covers(lin)]
        if not hooks and lin not in self.breakpoints:
            return
        real = ins.fn
        at = self._at

        def debug_wrapper(cpu, ins):
            at(cpu, ins, lin, hooks)
            real(cpu, ins)
        ins.fn = debug_wrapper

    def _at(self, cpu, ins, lin, hooks) -> None:
        """Before an instrumented instruction: code hooks, then breakpoints."""
        skip = self._skip
        if skip is not None and skip[0] == cpu.index:
            self._skip = None
            if skip[1] == lin:
                return                      # resuming at this stop: execute it
        machine = self.machine
        if hooks:
            cpu.rip = ins.ip
            view = machine.cpu(cpu.index)
            for h in hooks:
                if h.scope.matches(cpu):
                    h.callback(machine, view, ins.ip, ins.len)
            if machine.stopping:
                raise DebugStop("stopped", "stopped by a code hook", lin)
        for bp in self.breakpoints.get(lin, ()):
            if bp.scope.matches(cpu):
                bp.hits += 1
                machine.pause("breakpoint", f"breakpoint at {lin:#x}", cpu, lin)
                raise DebugStop("breakpoint", f"breakpoint at {lin:#x}", lin)

    def stopped(self, cpu, e) -> None:
        """interrupts.deliver_exception hands a DebugStop here (RIP is rewound
        to the instruction, which has not executed)."""
        self.machine.pause(e.kind, e.detail, cpu, e.address)
        self._before = cpu

    def resume(self) -> None:
        """Machine.run continues: a CPU stopped before an instruction executes
        it once without stopping again there (one stepped instruction, with
        its breakpoints, code hooks and I/O hooks skipped)."""
        cpu, self._before = self._before, None
        if cpu is not None:
            from ..cpu.segments import CS
            lin = (cpu.ebase[CS] + cpu.rip) & cpu.lin_mask
            self.step_over, self._skip = cpu, (cpu.index, lin)

    # ------------------------------------------------------------ stepping
    def set_step(self, cpu_index, n) -> None:
        self._step = [cpu_index, n] if cpu_index is not None and n > 0 else None
        self._update_stepping()

    def _update_stepping(self) -> None:
        self.stepping = bool(self._step or self.watchpoints or self.hooks["mem"])

    def after_step(self, cpu, retired) -> bool:
        """Engine._run_stepping: ``cpu`` crossed an instruction boundary.  Stops
        for a watchpoint hit or the end of a step; returns True to leave the
        one-at-a-time loop (a step over a breakpoint is done)."""
        leave = False
        if self.step_over is cpu:
            self.step_over, self._skip, leave = None, None, True
        hit, self._watch_hit = self._watch_hit, None
        machine = self.machine
        if hit is not None and retired:
            wp, address, write = hit
            machine.pause("watchpoint", f"watchpoint {wp.address:#x} ({'written' if write else 'read'} "
                          f"at {address:#x})", cpu, wp.address)
        step = self._step
        if step is not None and step[0] == cpu.index:
            step[1] -= 1
            if step[1] <= 0:
                self._step = None
                machine.pause("step", "single step", cpu)
        return leave

    # ------------------------------------------------------------ memory watch
    def _watch_changed(self) -> None:
        """Every CPU watches the union of watchpoint and memory-hook ranges."""
        from ..cpu import debug as cpu_debug
        entries = [(-1, w.address, w.length, Watchpoint.RW_BITS[w.access]) for w in self.watchpoints]
        entries += [(-1, h.begin, h.end - h.begin + 1, Watchpoint.RW_BITS[h.what or "rw"])
                    for h in self.hooks["mem"]]
        for cpu in self.machine.cpus:
            cpu.debug_watch = tuple(entries)
            cpu_debug.sync(cpu)
        self._update_stepping()

    def mem_access(self, cpu, lin, size, write, value) -> None:
        """A watched access (cpu.debug.check_data), before it happens."""
        machine = self.machine
        access = "write" if write else "read"
        for h in self.hooks["mem"]:
            if h.covers(lin, size) and (write if h.what == "w" else not write if h.what == "r" else True) \
                    and h.scope.matches(cpu):
                h.callback(machine, machine.cpu(cpu.index), access, lin, size, value)
        if self._watch_hit is None:
            for wp in self.watchpoints:
                if (wp.address <= lin + size - 1 and lin < wp.address + wp.length
                        and Watchpoint.RW_BITS[wp.access] & (1 if write else 2) and wp.scope.matches(cpu)):
                    self._watch_hit = (wp, lin, write)
                    break

    # ------------------------------------------------------------ I/O ports
    def _io_changed(self) -> None:
        machine = self.machine
        for cpu in machine.cpus:
            cpu.io = _HookedPorts(self, cpu, machine.io) if self.hooks["io"] else machine.io

    def io_access(self, cpu, port, size, write, value):
        """Call the I/O hooks of an access; a read hook may return the value
        read (the device is then not accessed)."""
        machine = self.machine
        result = None
        if self.step_over is cpu:
            return None                     # the instruction whose hook stopped the run
        for h in self.hooks["io"]:
            if h.covers(port) and h.scope.matches(cpu):
                r = h.callback(machine, machine.cpu(cpu.index), port, size, "out" if write else "in", value)
                if not write and r is not None:
                    result = r & ((1 << (8 * size)) - 1)
        if machine.stopping:
            raise DebugStop("stopped", f"stopped by an I/O hook at port {port:#x}")
        return result

    # ------------------------------------------------------------ events
    def _events_changed(self) -> None:
        listeners = self.machine.listeners
        want = bool(self.hooks["event"])
        if want and not self._listening:
            listeners.append(self._on_event)
        elif not want and self._listening:
            listeners.remove(self._on_event)
        self._listening = want

    def _on_event(self, event) -> None:
        machine = self.machine
        for h in list(self.hooks["event"]):
            if h.what(event):
                cpu = machine.cpus[event.get("cpu", 0)]
                if h.scope.matches(cpu):
                    h.callback(machine, machine.cpu(cpu.index), event)


class _HookedPorts:
    """The port bus as one CPU sees it while I/O hooks exist."""

    def __init__(self, debugger, cpu, io):
        self.debugger, self.cpu, self.io = debugger, cpu, io

    def read(self, port, size):
        value = self.debugger.io_access(self.cpu, port, size, False, None)
        return self.io.read(port, size) if value is None else value

    def write(self, port, size, value):
        self.debugger.io_access(self.cpu, port, size, True, value & ((1 << (8 * size)) - 1))
        self.io.write(port, size, value)

    def __getattr__(self, name):
        return getattr(self.io, name)
