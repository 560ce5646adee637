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


def test_segments_set_aside_follow_the_save_areas():
    """A switch puts back the ES/CS/SS/DS objects it set aside only when the
    values loaded are theirs: a guest that rewrites the host save area gets
    the host state as written there at #VMEXIT (15.6, "reload host state"),
    a hypervisor that changes the guest's DS in the VMCB gets it loaded by
    the next VMRUN ("load guest state"), and neither world's objects leak
    into the other."""
    from svmharness import SvmRig, HSAVE
    from svmsim.cpu.segments import DS
    from svmsim.svm.exits import ExitCode
    from svmsim.svm.vmcb import field
    ds_base = HSAVE + field("DS.BASE").offset
    rig = SvmRig(f"mov rax, {ds_base}\nmov qword ptr [rax], 0x2000\ncpuid\ncpuid\ncpuid\nhlt",
                 intercepts=(ExitCode.CPUID,))
    cpu, v = rig.cpu, rig.vmcb
    guest_ds = v["DS.BASE"]
    rig.run()
    assert rig.exitcode == ExitCode.CPUID and not rig.in_guest
    assert cpu.segs[DS].base == 0x2000 and v["DS.BASE"] == guest_ds
    host_objs = cpu.segs[:4]
    v["RIP"] += 2
    v["DS.BASE"] = 0x3000
    rig.run(at_vmrun=True)
    assert rig.exitcode == ExitCode.CPUID and v["DS.BASE"] == 0x3000
    assert cpu.segs[DS].base == 0x2000 and cpu.segs[:4] == host_objs
    assert all(a is b for a, b in zip(cpu.segs[:4], host_objs))     # put back, not rebuilt
    guest_objs = cpu.svm.guest_segs[:4]
    assert not any(g is h for g in guest_objs for h in host_objs)
    v["RIP"] += 2
    rig.run(at_vmrun=True)
    assert rig.exitcode == ExitCode.CPUID and v["DS.BASE"] == 0x3000
    assert cpu.segs[DS].base == 0x2000
    assert all(a is b for a, b in zip(cpu.svm.guest_segs[:4], guest_objs))   # the guest's again
