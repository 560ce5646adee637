"""Crash reports (issue 15, item 3): when a run does not end by isa-debug-exit,
``svmsim run`` prints each CPU's registers with its mode (host or guest,
ASID), the instruction at RIP disassembled and symbolized from the kernel's
ELF symbols, and the fault chain from the first fault.  ``--report`` is
readable text.

The crashes are real: tests/guests/debug_target.c with ``crash=N`` loads an
empty IDT and executes UD2 (#UD, then #GP for each vector that is beyond the
IDT limit, #DF, triple fault: APM vol 2, 8.2.9), halts with interrupts off,
or spins until the budget runs out.
"""
import re
import signal
import subprocess
import sys
import time

import pytest

import guestbuild as gb
from svmsim.debug.report import crash_report
from svmsim.machine import STATUS_SHUTDOWN, STATUS_HALTED, STATUS_BUDGET, STATUS_INTERRUPTED


@pytest.fixture(scope="module")
def kernel():
    return str(gb.build_guest("debug_target"))


def cli(*args, timeout=120):
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", *args], capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stderr


def symbol(kernel, name):
    from svmsim.debug.symbols import SymbolTable
    t = SymbolTable()
    t.load_elf(kernel)
    return next(a for a, _, n in t._syms if n == name)


def test_triple_fault_report_has_registers_and_the_fault_chain(kernel):
    status, err = cli(kernel, "--append", "crash=1")
    assert status == STATUS_SHUTDOWN
    lines = err.splitlines()
    assert lines[0].startswith("svmsim: shutdown: triple fault: #GP(0x43): vector 8 beyond IDT limit")
    ud2 = symbol(kernel, "crash_idt")
    assert re.search(r"^  cpu0: host, 64-bit mode, CPL 0, \d+ instructions$", err, re.M)
    assert re.search(r"rip=00000000001[0-9a-f]{5}  rflags=[0-9a-f]{8} \[", err)
    assert "cr0=80000011 [PE ET PG]" in err and "efer=500 [LME LMA]" in err and "idtr=0/0" in err
    at = re.search(r"^    0x([0-9a-f]+) <crash_idt\+0x([0-9a-f]+)>: ud2$", err, re.M)
    assert at and int(at[1], 16) == ud2 + int(at[2], 16)
    chain = lines[lines.index("  fault chain (first fault first):") + 1:]
    faults = [re.match(r"    (\S+) at rip=0x[0-9a-f]+ <crash_idt\+0x[0-9a-f]+> \(host, insn (\d+)\): ud2 -- (.*)", l)
              for l in chain]
    assert [f[1] for f in faults] == ["#UD", "#GP(0x33)", "#GP(0x6b)", "#GP(0x43)"]
    assert len({f[2] for f in faults}) == 1                       # one instruction
    assert [f[3] for f in faults][1:] == ["vector 6 beyond IDT limit", "vector 13 beyond IDT limit",
                                          "vector 8 beyond IDT limit"]


def test_deadlock_and_budget_reports_name_the_function(kernel):
    status, err = cli(kernel, "--append", "crash=2")
    assert status == STATUS_HALTED and "CPU halted with interrupts disabled" in err
    assert "cpu0: host, 64-bit mode, CPL 0, halted" in err and "<crash_hang+0x" in err
    status, err = cli(kernel, "--append", "crash=3", "--max-insns", "100000")
    assert status == STATUS_BUDGET and "instruction budget of 100000 exhausted" in err
    assert re.search(r"<crash_spin(\+0x[0-9a-f]+)?>: \w+", err)
    assert re.search(r"mov rax, \[0x[0-9a-f]+\] <dbg_counter>", err) or "<dbg_counter>" in err


def test_ctrl_c_report(kernel):
    p = subprocess.Popen([sys.executable, "-m", "svmsim", "run", kernel, "--append", "crash=3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = p.stdout.readline()                    # the kernel is running
    assert "crash=3" in out
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == STATUS_INTERRUPTED
    assert err.startswith("svmsim: interrupted (Ctrl-C) after") and "<crash_spin" in err and "rip=" in err


def test_report_option_is_readable_text(kernel):
    status, err = cli(kernel, "--report")
    assert status == gb.STATUS_PASS
    assert "{" not in err and "svmsim: isa-debug-exit: guest wrote 0x0 after" in err
    assert re.search(r"svmsim: engine: blocks translated \d+, blocks invalidated \d+, blocks compiled \d+", err)
    assert re.search(r"svmsim: virtual time [\d.]+ ms", err)


def test_a_guest_stop_reports_guest_mode_and_asid():
    import io
    from svmsim.machine import Machine
    m = Machine(mem_size="128M", serial_out=io.BytesIO())
    m.load_kernel(str(gb.build_guest("svm_basic")))
    m.breakpoint(next(a for a, _, n in m.symbols._syms if n == "guest_main"), "guest")
    r = m.run(timeout=60)
    text = crash_report(m, r)
    assert re.search(r"cpu0: guest ASID 1, VMCB 0x[0-9a-f]+, 64-bit mode, CPL 0", text)
    assert re.search(r"0x[0-9a-f]+ <guest_main>: ", text)
