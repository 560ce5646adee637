"""Debug registers: DR0-DR3 breakpoints enabled by DR7, status in DR6
(APM vol 2, 13.1).

While DR7 enables any breakpoint the engine runs one instruction at a time
(``Engine.step``): instruction breakpoints are faults checked before the
instruction (suppressed by RFLAGS.RF), data breakpoints are traps reported
after it.  Data accesses are watched on the slow memory path; the fast
caches stay empty while a data breakpoint is armed.
"""

LEN_BYTES = {0: 1, 1: 2, 2: 8, 3: 4}     # DR7 LENn encoding (10b = 8 bytes in long mode)


def enabled(dr7: int):
    """[(n, rw, length)] for each breakpoint enabled by Ln or Gn."""
    out = []
    for n in range(4):
        if dr7 >> (2 * n) & 3:
            rw = dr7 >> (16 + 4 * n) & 3
            ln = LEN_BYTES[dr7 >> (18 + 4 * n) & 3]
            out.append((n, rw, ln))
    return out


def sync(cpu) -> None:
    """Recompute the armed data breakpoints from DR0-DR3/DR7, plus the
    debugger's watched ranges (``cpu.debug_watch``: entries with n = -1, see
    svmsim.debug.control)."""
    watch = tuple((n, cpu.dr[n] & ~(ln - 1), ln, rw) for n, rw, ln in enabled(cpu.dr[7]) if rw in (1, 3))
    watch += cpu.debug_watch
    if watch != cpu.watch:
        cpu.watch = watch
        cpu.tlb.drop_fast()


def insn_hits(cpu, lin: int) -> int:
    """DR6 B0-B3 bits of instruction breakpoints (R/W=00) matching ``lin``."""
    hits = 0
    for n, rw, _ in enabled(cpu.dr[7]):
        if rw == 0 and cpu.dr[n] == lin:
            hits |= 1 << n
    return hits


def check_data(cpu, lin: int, size: int, write: bool, value=None) -> None:
    """Record data-breakpoint hits of one access (reported after the instruction).

    R/W bits: 1 = writes, 3 = reads and writes (DR7); the debugger's own
    entries (n = -1) may also watch reads only (2) and are reported to it
    before the access, with the value written."""
    watched = False
    for n, start, ln, rw in cpu.watch:
        if (rw & 1 if write else rw & 2) and lin < start + ln and start < lin + size:
            if n >= 0:
                cpu.db_hits |= 1 << n
            else:
                watched = True
    if watched:
        cpu.machine.debug.mem_access(cpu, lin, size, write, value)
