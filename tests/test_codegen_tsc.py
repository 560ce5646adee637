"""RDTSC and RDTSCP compiled (codegen ``_t_tsc``) against the interpreter.

The handler runs with the other registers left in the region's locals
(APM vol 3 RDTSC/RDTSCP: they write EDX:EAX, and ECX = TSC_AUX, and read no
general register); the time is the one the interpreter gives at the same
instruction (the instructions before it in the region counted).  CR4.TSD
at CPL > 0: #GP(0).
"""
import pytest

from cpuharness import asm, CODE_ADDR
from test_codegen import _regs, DATA_LEN, runners  # noqa: F401 (runners: the fixture)

CR4_TSD = 1 << 2
LOOP = ("mov r8, 5\nloop:\nadd rbx, rcx\nrdtsc\nadd r9, rax\nadd r10, rdx\n{insn2}\nadd r11, rcx\n"
        "dec r8\njnz loop\nadd rbx, rcx\nrdtsc\nhlt")


def _both(runners, code, setup=None, rflags=0x202):
    interp, comp = runners("long64")
    a = interp.run(code, _regs(rax=1, rcx=7, rdx=3), bytes(DATA_LEN), rflags, 200, False, setup)
    b = comp.run(code, _regs(rax=1, rcx=7, rdx=3), bytes(DATA_LEN), rflags, 200, True, setup)
    assert a == b
    return a, comp.m.engine.blocks[(CODE_ADDR, comp.cpu.mode_key)].compiled.source


@pytest.mark.parametrize("insn2", ["nop", "rdtscp"])
def test_tsc_reads_compiled_match_interpreter(runners, insn2):
    def setup(m, cpu):
        cpu.msr[0xC0000103] = 0x1234                  # TSC_AUX: RDTSCP's ECX
    a, src = _both(runners, asm(LOOP.format(insn2=insn2)), setup)
    assert a["faults"] == [] and a["regs"][9] > 0
    if insn2 == "rdtscp":
        assert a["regs"][1] == 0x1234
    # The handler between the region's locals, not a generic call's
    # store and reload of every register.
    lines = src.splitlines()
    calls = [i for i, l in enumerate(lines) if l.strip().startswith("h") and "(cpu, i" in l]
    assert calls and all(lines[i + 1].strip() == "g0 = regs[0]" for i in calls)


def test_rdtsc_with_tsd_above_cpl0_faults_in_both_tiers(runners):
    def setup(m, cpu):
        cpu.cr4 |= CR4_TSD
        cpu.cpl = 3
    a, _src = _both(runners, asm("add rbx, rcx\nrdtsc\nadd rbx, rcx\nhlt"), setup)
    assert a["faults"] and a["faults"][0][:3] == (13, 0, CODE_ADDR + 3)
