"""STGI and CLGI compiled (codegen ``_t_gif``) against the interpreter.

APM vol 3 STGI/CLGI: #UD with EFER.SVME = 0 (unless SVM-Lock or SKINIT is
in CPUID), #GP(0) at CPL > 0; otherwise GIF is set / cleared.  APM 15.17:
with GIF = 0 NMI, INTR, SMI and INIT are held pending; "STGI ... allows"
them again, so a held NMI is taken at the boundary right after STGI.
"""
import pytest

from cpuharness import asm, CODE_ADDR, DATA_ADDR
from test_codegen import _regs, DATA_LEN, runners  # noqa: F401 (runners: the fixture)
from svmsim.cpu import interrupts
from svmsim.svm import checks

EFER_SVME = 1 << 12


def _svme(on, gif):
    def setup(m, cpu):
        cpu.efer = cpu.efer | EFER_SVME if on else cpu.efer & ~EFER_SVME
        cpu.gif = gif
    return setup


def _both(runners, code, setup, budget=100):
    interp, comp = runners("long64")
    a = interp.run(code, _regs(rax=1, rcx=7), bytes(DATA_LEN), 0x202, budget, False, setup)
    a["gif"] = interp.cpu.gif
    b = comp.run(code, _regs(rax=1, rcx=7), bytes(DATA_LEN), 0x202, budget, True, setup)
    b["gif"] = comp.cpu.gif
    assert a == b
    src = comp.m.engine.blocks[(CODE_ADDR, comp.cpu.mode_key)].compiled.source
    return a, src


@pytest.mark.parametrize("gif", [False, True])
def test_clgi_stgi_compiled_match_interpreter(runners, gif):
    a, src = _both(runners, asm("add rax, rcx\nclgi\nadd rax, rcx\nstgi\nadd rax, rcx\nhlt"),
                   _svme(True, gif))
    assert a["gif"] is True and a["faults"] == [] and a["regs"][0] == 22
    assert "cpu.gif = False" in src and "cpu.gif = True" in src      # both templated
    a, src = _both(runners, asm("add rax, rcx\nstgi\nclgi\nadd rax, rcx\nhlt"), _svme(True, gif))
    assert a["gif"] is False and a["regs"][0] == 15


@pytest.mark.parametrize("optional", [False, True])
@pytest.mark.parametrize("insn", ["clgi", "stgi"])
def test_svme_clear_in_both_tiers(runners, monkeypatch, insn, optional):
    """EFER.SVME = 0: #UD at the instruction (after the ADD before it
    retired) unless SVM-Lock or SKINIT is in CPUID, when it executes."""
    monkeypatch.setattr(checks, "svme_optional", lambda cpu: optional)
    a, _src = _both(runners, asm(f"add rax, rcx\n{insn}\nadd rax, rcx\nhlt"),
                    _svme(False, insn == "clgi"))
    if optional:
        assert a["faults"] == [] and a["regs"][0] == 15 and a["gif"] is (insn == "stgi")
    else:
        assert a["faults"] == [(6, None, CODE_ADDR + 3, None)] and a["regs"][0] == 8


def test_held_nmi_taken_right_after_compiled_stgi(runners, monkeypatch):
    """An NMI held while GIF = 0 is taken at the boundary after STGI (APM
    15.17), not later in the compiled region: the ADD after STGI has not run."""
    code = asm("add rax, rcx\nstgi\nadd rax, rcx\nadd rax, rcx\nhlt")
    seen = []

    def take_nmi(cpu):
        seen.append((cpu.rip, cpu.regs[0], cpu.gif))
        cpu.nmi_pending = False
        cpu.machine.request_stop(0, "nmi", "nmi")
    monkeypatch.setattr(interrupts, "take_nmi", take_nmi)

    def setup(m, cpu):
        _svme(True, False)(m, cpu)
        cpu.nmi_pending = True
    for compiled in (False, True):
        runner = runners("long64")[int(compiled)]
        seen.clear()
        runner.run(code, _regs(rax=1, rcx=7), bytes(DATA_LEN), 0x202, 100, compiled, setup)
        assert seen == [(CODE_ADDR + 6, 8, True)], compiled
    src = runners("long64")[1].m.engine.blocks[(CODE_ADDR, runners("long64")[1].cpu.mode_key)].compiled.source
    assert "cpu.gif = True" in src


def test_compiled_stgi_goes_on_when_nothing_is_held(runners, monkeypatch):
    """Nothing held (no INIT/SMI/NMI, IF = 1 but no interrupt waiting): the
    compiled STGI does not leave its region, whose members include the
    block after it (``successors``), and no event check runs between the
    iterations of the loop; results equal the interpreter's."""
    code = asm("l: add rax, rcx\nstgi\ndec rcx\njnz l\nhlt")
    calls = []
    real = interrupts.service
    monkeypatch.setattr(interrupts, "service", lambda cpu: (calls.append(cpu.rip), real(cpu)))
    out = []
    for compiled in (False, "hot"):
        runner = runners("long64")[int(bool(compiled))]
        calls.clear()
        out.append(runner.run(code, _regs(rax=1, rcx=40), bytes(DATA_LEN), 0x202, 10 ** 4, compiled,
                              _svme(True, False)))
        out[-1]["service"] = len(calls)
    a, b = out
    assert a["regs"][0] == 1 + sum(range(1, 41)) and a["faults"] == []
    assert b["service"] < a["service"] // 2           # the interpreter services after each STGI
    del a["service"], b["service"]
    assert a == b
    comp = runners("long64")[1]
    fn = comp.m.engine.blocks[(CODE_ADDR, comp.cpu.mode_key)].compiled
    assert len(fn.members) >= 2 and "EVW(cpu)" in fn.source


def test_waiting_interrupt_taken_right_after_compiled_stgi(runners):
    """A maskable interrupt waiting (RFLAGS.IF = 1) while GIF = 0 is taken at
    the boundary right after STGI (APM 15.17) in both tiers, also when the
    compiled STGI sits in a loop its region would go on with.  The line
    rises once the loop has stored 390 (read from RAM, where the compiled
    store is seen at once)."""
    code = asm("l: mov [rsi], rcx\nstgi\nclgi\ndec rcx\njnz l\nhlt")
    seen = []

    def setup(m, cpu):
        _svme(True, False)(m, cpu)

        def pending(c):
            return int.from_bytes(m.bus.read_bytes(DATA_ADDR, 8), "little") <= 390

        def ack(c):
            if pending(c):
                seen.append((c.rip, c.regs[1], c.gif))
                m.request_stop(0, "intr", "intr")
            return None
        m.interrupt_pending = pending
        m.interrupt_acknowledge = ack
    for compiled in (False, "hot"):
        runner = runners("long64")[int(bool(compiled))]
        seen.clear()
        runner.run(code, _regs(rcx=400, rsi=DATA_ADDR), bytes(DATA_LEN), 0x202, 10 ** 5, compiled, setup)
        assert seen == [(CODE_ADDR + 6, 390, True)], compiled
    comp = runners("long64")[1]
    assert "EVW(cpu)" in comp.m.engine.blocks[(CODE_ADDR, comp.cpu.mode_key)].compiled.source
