"""Run-ahead (Machine.run_ahead, Machine._stall_rounds): a compiled byte-loop
memset may run past the end of its quantum while the other CPUs are halted,
the CPU paying the extra instructions as stall, and the rounds that would
only take that stall are skipped.  The guest (tests/guests/run_ahead.c)
records, at every APIC timer interrupt, how far its memset had got and the
TSC: the transcript, the retired count and the virtual time must be the
same with run-ahead on and off (``Machine.ahead``), also when the run stops
on its instruction budget in the middle of a pass and continues."""
import hashlib
import io

import guestbuild as gb
from svmsim.machine import Machine

ARGS = "bytes=131072 passes=4 period=100000"


def boot(ahead, args=ARGS, smp=2):
    out = io.BytesIO()
    m = Machine(mem_size="128M", smp=smp, serial_out=out)
    m.ahead = ahead
    m.load_kernel(str(gb.build_guest("run_ahead")), args)
    return m, out


def state(m):
    cpu = m.cpus[0]
    return (list(cpu.regs), cpu.rip, cpu.get_rflags(), cpu.retired, cpu.stall, m.clock.now_ns,
            hashlib.sha256(bytes(m.bus.read_bytes(0x3000000, 131072))).hexdigest())


def test_run_ahead_leaves_every_interrupt_where_it_was():
    runs = []
    for ahead in (True, False):
        m, out = boot(ahead)
        r = m.run(max_insns=50_000_000)
        runs.append((out.getvalue().decode(), r.instructions, r.stats["virtual_ns"], r.kind, m))
    (text, insns, ns, kind, m), ref = runs[0], runs[1]
    assert "run_ahead: PASS" in text and "AP started: yes" in text, text
    assert kind == "debug-exit"
    assert text.count("tick ") >= 5           # interrupts landed inside the passes
    assert (text, insns, ns) == ref[:3]
    assert m.ahead_stats["grants"] > 0 and m.ahead_stats["rounds_skipped"] > 0
    assert ref[4].ahead_stats == {"grants": 0, "rounds_skipped": 0}


def test_a_budget_stop_in_a_pass_is_where_it_was():
    """The instruction budget ends a run at the same round, with the same
    state (registers, memory, stall owed, time), and the runs continue alike."""
    got = []
    for ahead in (True, False):
        m, out = boot(ahead)
        shots = []
        for budget in (1_000_000, 123_457, 250_000):
            r = m.run(max_insns=budget)
            assert r.kind == "budget"
            shots.append(state(m))
        r = m.run(max_insns=50_000_000)
        got.append((shots, out.getvalue().decode(), r.instructions, m.ahead_stats["grants"]))
    assert got[0][:3] == got[1][:3]
    assert got[0][3] > 0


def test_nothing_runs_ahead_while_another_cpu_runs():
    """The AP spins instead of halting: every round is run as it comes."""
    m, out = boot(True, ARGS + " spin=1")
    m.run(max_insns=50_000_000)
    text = out.getvalue().decode()
    assert "run_ahead: PASS" in text, text
    assert m.ahead_stats["grants"] == 0       # (stall rounds before the AP started may be skipped)
    ref, ref_out = boot(False, ARGS + " spin=1")
    ref.run(max_insns=50_000_000)
    assert ref_out.getvalue().decode() == text


def test_the_same_run_without_bulk_store_loops(monkeypatch):
    """Timer interrupts land in the memset at the same instructions, with the
    same TSC, whether its loop runs in bulk (and ahead) or one compiled
    iteration at a time (``codegen.BULK_LOOPS``)."""
    from svmsim.cpu import codegen
    got = []
    for bulk in (True, False):
        monkeypatch.setattr(codegen, "BULK_LOOPS", bulk)
        m, out = boot(True)
        r = m.run(max_insns=50_000_000)
        got.append((out.getvalue().decode(), r.instructions, r.stats["virtual_ns"], state(m)))
    assert "run_ahead: PASS" in got[0][0] and got[0][0].count("tick ") >= 5
    assert got[0] == got[1]


def test_nmis_from_the_other_cpu_land_alike_without_bulk_store_loops(monkeypatch):
    """The AP sends the BSP an NMI every few hundred PAUSEs while the BSP
    runs its memset: each NMI lands at the same instruction (the handler
    records how far the memset had got, and the TSC) with the loop run in
    bulk or one compiled iteration at a time."""
    from svmsim.cpu import codegen
    got = []
    for bulk in (True, False):
        monkeypatch.setattr(codegen, "BULK_LOOPS", bulk)
        m, out = boot(True, "bytes=65536 passes=2 period=100000 nmi=150")
        r = m.run(max_insns=50_000_000)
        got.append((out.getvalue().decode(), r.instructions, r.stats["virtual_ns"], state(m)))
    text = got[0][0]
    assert "run_ahead: PASS" in text, text
    lands = [int(x.split()[3]) for x in text.splitlines() if x.startswith("nmi ")]
    assert len(lands) >= 5 and any(0 < b < 65536 for b in lands)   # some inside a pass
    assert got[0] == got[1]
