"""The fast access caches a world switch sets aside (cpu/tlb.py
``select_fast``, keyed by svm/world.py ``fast_key``): VMRUN puts the host's
aside under the key of the host state it saves and takes the guest's; the
#VMEXIT after it, reloading the same host state, asks for that same key, so
a hypervisor loop gets its caches back at every round trip (and a changed
host or guest state gets other ones).  Both paths (the common case,
switch.py, and the general one, ``world.DIRECT = False``) use the same keys."""
import pytest

from svmharness import SvmRig
from svmsim.svm import world
from svmsim.svm.exits import ExitCode


def _keys(direct, monkeypatch):
    monkeypatch.setattr(world, "DIRECT", direct)
    rig = SvmRig("cpuid\njmp $-2", intercepts=(ExitCode.CPUID,))
    calls = []
    tlb = rig.cpu.tlb
    select = tlb.select_fast

    def recorded(out_key, in_key):
        calls.append((rig.cpu.svm_guest, out_key, in_key, world.fast_key(rig.cpu)))
        select(out_key, in_key)
    tlb.select_fast = recorded
    for _ in range(4):
        rig.run(at_vmrun=True)
        assert rig.exitcode == ExitCode.CPUID
    return calls


@pytest.mark.parametrize("direct", (True, False))
def test_a_round_trip_gets_back_the_caches_it_set_aside(direct, monkeypatch):
    calls = _keys(direct, monkeypatch)
    assert len(calls) == 8
    for (g1, host_out, guest_in, now_guest), (g2, guest_out, host_in, now_host) in zip(calls[::2],
                                                                                      calls[1::2]):
        assert g1 and not g2                       # VMRUN's call in guest mode, #VMEXIT's in the host
        assert guest_in == now_guest == guest_out  # the guest's key, as fast_key gives it
        assert host_out == host_in == now_host     # the host's key: saved at VMRUN, asked at #VMEXIT
        assert host_out is not None and guest_in is not None and host_out != guest_in
    assert calls == _keys(not direct, monkeypatch)
