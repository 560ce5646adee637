"""CLI compiled (codegen ``t_cli``) against the interpreter.

APM vol 3 CLI: RFLAGS.IF = 0 when CPL <= IOPL (protected mode, not
virtual-8086 mode), else #GP(0).  The compiled region goes on after it
(kvm-unit-tests' svm_vmrun loop runs CLI; STGI after every #VMEXIT):
clearing IF makes nothing deliverable.
"""
import pytest

from cpuharness import asm, CODE_ADDR, DATA_ADDR  # noqa: F401
from test_codegen import _regs, DATA_LEN, runners  # noqa: F401 (runners: the fixture)

IF = 0x200


def _both(runners, code, rflags, setup=None):
    interp, comp = runners("long64")
    a = interp.run(code, _regs(rax=1, rcx=7), bytes(DATA_LEN), rflags, 100, False, setup)
    a["if"] = interp.cpu.rflags & IF
    b = comp.run(code, _regs(rax=1, rcx=7), bytes(DATA_LEN), rflags, 100, True, setup)
    b["if"] = comp.cpu.rflags & IF
    assert a == b
    return a, comp.m.engine.blocks[(CODE_ADDR, comp.cpu.mode_key)].compiled.source


@pytest.mark.parametrize("rflags", [0x202, 0x3202, 0x2])
def test_cli_compiled_matches_interpreter(runners, rflags):
    """IF cleared (IOPL 0 or 3 at CPL 0, or already clear), the ADD after it
    run in the same region: CLI is templated, not a handler call that
    leaves the region."""
    a, src = _both(runners, asm("add rax, rcx\ncli\nadd rax, rcx\ncmp rax, rcx\nadd rax, rcx\nhlt"), rflags)
    assert a["faults"] == [] and a["regs"][0] == 22 and a["if"] == 0
    assert "cpu.rflags &= ~0x200" in src


def test_cli_above_iopl_faults_in_both_tiers(runners):
    """CPL 3 > IOPL 0: #GP(0) at the CLI, after the ADD before it retired,
    IF unchanged."""
    def setup(m, cpu):
        cpu.cpl = 3
    a, _src = _both(runners, asm("add rax, rcx\ncli\nadd rax, rcx\nhlt"), 0x202, setup)
    assert a["faults"] and a["faults"][0][:3] == (13, 0, CODE_ADDR + 3) and a["regs"][0] == 8
    assert a["if"] == IF
