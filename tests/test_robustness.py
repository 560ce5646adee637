"""svmsim never crashes: random bytes executed in every mode end the run with an
architectural outcome (a fault, shutdown, a halt or the budget), never an
internal error (issue 2; the project's standards)."""
import io
import random

import pytest

from cpuharness import make_machine, CODE_ADDR
from svmsim.machine import STATUS_INTERNAL

MODES = ("long64", "compat32", "prot32", "real")


def run_random(mode, seed, length=64, budget=2000):
    rnd = random.Random(seed)
    m = make_machine(mode)
    m.uart.out = io.BytesIO()
    cpu = m.cpus[0]
    addr = 0x7C00 if mode == "real" else CODE_ADDR
    m.bus.write_bytes(addr, bytes(rnd.randrange(256) for _ in range(length)))
    cpu.rip = addr
    for i in range(16):
        cpu.regs[i] = rnd.choice([0, 1, 0x1000, 0x200000, rnd.getrandbits(64), rnd.getrandbits(32)])
    cpu.regs[4] = 0x80000
    return m.run(max_insns=budget, timeout=20)


@pytest.mark.parametrize("mode", MODES)
def test_random_code_never_crashes_svmsim(mode):
    for seed in range(12):
        r = run_random(mode, seed)
        assert r.status != STATUS_INTERNAL, f"{mode} seed {seed}: {r.reason}"


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_random_code_never_crashes_svmsim_long(mode):
    for seed in range(1000, 1400):
        r = run_random(mode, seed, length=256, budget=5000)
        assert r.status != STATUS_INTERNAL, f"{mode} seed {seed}: {r.reason}"
