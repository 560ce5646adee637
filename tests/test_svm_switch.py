"""The world switch's common case (svm/switch.py; world.py's writes straight
into RAM) against the general one (world.py through a copy of the page and
its field view, ``world.DIRECT = False``): the SVM test hypervisors run the
same both ways (APM vol 2, 15.5 VMRUN, 15.6 #VMEXIT, 15.15.3 clean bits),
instruction for instruction, exit for exit, and with the same memory at the
end."""
import hashlib
import io

import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.svm import world

KERNELS = ("svm_basic", "svm_invalid", "svm_intercepts", "svm_loop", "svm_world", "svm_events",
           "svm_npt", "svm_state", "svm_ioio")
APPEND = {"svm_loop": "exits=300 iters=2000"}


def _run(name):
    cfg = gb.KERNEL_RUNS[name]
    out = io.BytesIO()
    events = []
    m = Machine(mem_size="32M", smp=cfg["smp"], serial_out=out)
    m.listeners.append(events.append)
    m.load_kernel(str(gb.build_guest(name)), APPEND.get(name, cfg["append"]))
    r = m.run(max_insns=100_000_000, timeout=300)
    cpus = [(c.retired, c.rip, tuple(c.regs), c.svm.vmruns, dict(c.svm.exits)) for c in m.cpus]
    ram = hashlib.sha256(m.bus.ram.buf[:32 << 20]).hexdigest()
    return r.status, out.getvalue().decode(), events, cpus, ram


@pytest.fixture
def slow_calls(monkeypatch):
    """Count the VMRUNs the common case hands over to world.vmrun."""
    calls = []
    general = world.vmrun

    def counted(cpu, ins):
        calls.append(cpu.rip)
        general(cpu, ins)
    monkeypatch.setattr(world, "vmrun", counted)
    return calls


@pytest.mark.parametrize("name", KERNELS)
def test_common_case_switch_gives_the_general_result(name, monkeypatch, slow_calls):
    fast = _run(name)
    n_general = len(slow_calls)
    with monkeypatch.context() as mp:
        mp.setattr(world, "DIRECT", False)                # every VMRUN and #VMEXIT the general way
        general = _run(name)
    assert fast[0] == gb.STATUS_PASS
    assert fast[1] == general[1]                          # the hypervisor's transcript
    assert fast[2] == general[2]                          # every vmrun/vmexit/inject event
    assert fast[3] == general[3]                          # instructions, registers, exits
    assert fast[4] == general[4]                          # RAM (VMCBs, host save areas)
    if name == "svm_loop":
        assert n_general <= 2 < fast[3][0][3]             # resuming the guest takes the common case
