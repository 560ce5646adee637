"""svmsim never crashes on what a hypervisor puts in a VMCB: random control
and save-area contents end in a VMEXIT_INVALID, a guest fault, an exit, a
shutdown or a named 'not modelled' stop, never a Python error."""
import random

import pytest

from svmharness import SvmRig
from svmsim.errors import NotModelled
from svmsim.cpu.exceptions import Shutdown
from svmsim.svm.vmcb import FIELDS

SAVE = [f for f in FIELDS if f.area == "save" and not f.parent]
CONTROL = [f for f in FIELDS if f.area == "control" and f.name not in
           ("IOPM_BASE_PA", "MSRPM_BASE_PA", "VMCB_CLEAN")]


def _scramble(rig, rng, fields, n):
    for f in rng.sample(fields, n):
        choice = rng.random()
        if choice < 0.3:
            value = 0
        elif choice < 0.6:
            value = 1 << rng.randrange(f.width)
        else:
            value = rng.getrandbits(f.width)
        rig.vmcb.write(f, value)


@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.slow) if s >= 100 else s
                                  for s in range(1500)])
def test_random_vmcb_never_crashes(seed):
    rng = random.Random(seed)
    guest = bytes(rng.getrandbits(8) for _ in range(64))
    r = SvmRig(guest, idt=rng.random() < 0.5)
    _scramble(r, rng, SAVE, rng.randrange(1, 6))
    _scramble(r, rng, CONTROL, rng.randrange(1, 8))
    try:
        r.run(max_insns=3000)
    except (NotModelled, Shutdown):
        pass
    # Wherever it ended, the CPU state is consistent enough to describe.
    assert isinstance(r.cpu.rip, int) and 0 <= r.cpu.cpl <= 3


@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.slow) if s >= 40 else s
                                  for s in range(400)])
def test_random_nested_tables_never_crash(seed):
    """Nested tables with random entries under a guest that touches memory:
    every outcome is architectural (#NPF, guest fault, exit, shutdown)."""
    from svmharness import NestedTables
    rng = random.Random(seed)
    guest = ("mov rax, 0x600000\nmov ebx, [rax]\nmov dword ptr [rax + 0x1000], 5\n"
             "mov rcx, 0x1234000\nmov edx, [rcx]\nhlt")
    r = SvmRig(guest, NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    nt.identity(0, 0x600000)
    nt.identity(0x600000, 0x800000, size=4096)
    nt.identity(0x800000, 0x1000000)
    for _ in range(rng.randrange(1, 12)):
        table = rng.randrange(nt.root, nt.next, 0x1000)
        r.m.bus.write(table + 8 * rng.randrange(512), 8, rng.getrandbits(64))
    r.vmcb["N_CR3"] = nt.root if rng.random() < 0.9 else rng.getrandbits(52) & ~0xFFF
    try:
        r.run(max_insns=2000)
    except (NotModelled, Shutdown):
        pass
    assert isinstance(r.cpu.rip, int)
