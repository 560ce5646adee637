"""The reference Python VMM (svmsim.vmm): Multiboot kernels booted as SVM
guests under nested paging, with their port I/O forwarded by the VMM, print
what QEMU printed for them booted on bare metal."""
import io

import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.vmm import Vmm


def boot_as_guest(name):
    out = io.BytesIO()
    smp = gb.KERNEL_RUNS[name]["smp"]
    m = Machine(mem_size="128M", serial_out=out, smp=smp)
    vmm = Vmm(m, vcpus=smp)
    vmm.load_kernel(str(gb.build_guest(name)), gb.KERNEL_RUNS[name]["append"])
    return vmm.run(), out.getvalue().decode(errors="replace"), m


# apic_timer: STI; HLT exits in the STI shadow, and the VMM's skip past HLT
# must end the shadow (or no interrupt is ever taken).  smp: two vCPUs, the
# AP started by the guest's INIT-SIPI-SIPI on its own CPU's passed-through APIC.
@pytest.mark.parametrize("name", ["hello", "exceptions", "apic_timer", "smp"])
def test_kernel_as_guest_prints_what_qemu_printed(name):
    result, out, m = boot_as_guest(name)
    assert out == gb.expected_transcript(name).decode()
    assert m.stop_status == gb.STATUS_PASS, result.reason
    # The guest's COM1 bytes and isa-debug-exit went through IOIO exits; its
    # CPUIDs through the VMM (hypervisor bit set).
    assert result.exits["IOIO"] > len(out) and result.exits["CPUID"] > 0


def test_guest_sees_the_vmm_cpuid():
    from svmsim.vmm.vmm import HV_SIGNATURE
    m = Machine(mem_size="128M", serial_out=io.BytesIO())
    vmm = Vmm(m)
    vmm.load_kernel(str(gb.build_guest("hello")), "")
    cpu, v = m.cpus[0], vmm.vmcb
    v["RAX"], cpu.regs[1] = 0x40000000, 0
    vmm._cpuid()
    sig = b"".join(x.to_bytes(4, "little") for x in (cpu.regs[3], cpu.regs[1], cpu.regs[2]))
    assert sig == HV_SIGNATURE and v["RAX"] == 0x40000000
