"""The reference VMM runs SEV-ES guests (issue 9, items 5 and 7): bare-metal
kernels written for QEMU's conventions, launched through the AMD-SP with one
VMSA per vCPU, their port I/O, CPUID and MSRs going through the GHCB
(svmsim/vmm/sev_es.py, GHCB spec 56421) and the runtime's #VC handler
(tests/guests/lib/sev_es.c), print what QEMU printed for them."""
import io

import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.sev.api import PAGE_SIZE
from svmsim.svm.vmsa import VmsaView
from svmsim.vmm import Vmm
from svmsim.vmm.sev_es import launch_es


def boot_es(name, append=None, smp=None, kernel=None):
    out = io.BytesIO()
    smp = smp or gb.KERNEL_RUNS.get(name, {}).get("smp", 1)
    m = Machine(mem_size="128M", serial_out=out, smp=smp)
    vmm = Vmm(m, vcpus=smp)
    append = gb.KERNEL_RUNS[name]["append"] if append is None else append
    launch = launch_es(vmm, str(kernel or gb.build_guest(name)), append)
    return vmm, launch, vmm.run(), out.getvalue().decode(errors="replace")


def test_hello_as_an_sev_es_guest_prints_what_qemu_printed():
    vmm, launch, result, out = boot_es("hello")
    assert out == gb.expected_transcript("hello").decode()
    assert vmm.m.stop_status == gb.STATUS_PASS, result.reason
    assert launch.verified and result.guest_rip is None
    # Only automatic exits reach the hypervisor: every byte of COM1 was an
    # IOIO NAE event through the GHCB, CPUID before the GHCB through the MSR protocol.
    assert set(result.exits) == {"VMGEXIT"}
    assert result.ghcb["IOIO"] > len(out) and result.ghcb["MSR_PROTOCOL:CPUID"] >= 4
    assert result.ghcb["MSR_PROTOCOL:SEV_INFO"] == 1 and result.ghcb["AP_JUMP_TABLE"] == 1


def test_the_hypervisor_reads_ciphertext_in_the_vmsa():
    """The VMSA page after the run: the guest's key decrypts it to the state
    the guest left (RIP past its last VMGEXIT, in the kernel's image); the
    hypervisor's plain read of the same page shows other bytes."""
    vmm, launch, result, out = boot_es("hello")
    m, spa = vmm.m, launch.vmsa_spas[0]
    plain = VmsaView(bytearray(m.mem_engine.read(m.bus.read_bytes, spa, PAGE_SIZE, vmm.asid)))
    raw = VmsaView(bytearray(m.bus.read_bytes(spa, PAGE_SIZE)))
    assert 0x100000 <= plain["RIP"] < 0x200000 and plain["CR3"] != 0
    assert (raw["RIP"], raw["CR3"], raw["RSP"]) != (plain["RIP"], plain["CR3"], plain["RSP"])


@pytest.mark.slow
def test_smp_as_an_sev_es_guest_starts_its_ap_through_the_jump_table():
    """The AP starts from its launched reset-state VMSA at the kernel's SEV-ES
    reset block, far-jumps through the AP jump table the BSP set and read back
    (NAE 8000_0005h), and parks in AP reset hold (8000_0004h) at the end."""
    vmm, launch, result, out = boot_es("smp")
    assert out == gb.expected_transcript("smp").decode()
    assert vmm.m.stop_status == gb.STATUS_PASS, result.reason
    assert launch.ap_eip is not None and result.ghcb["AP_JUMP_TABLE"] == 2
    assert result.ghcb["AP_HLT_LOOP"] == 1 and vmm.vcpus[1].state == "held"
