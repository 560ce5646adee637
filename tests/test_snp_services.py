"""The reference VMM's SEV-SNP services (svmsim/vmm/snp_services.py): page
state changes as the GHCB spec defines them (4.1.6) and KVM performs them,
with the RMP and the nested tables they leave; AP creation and VMPL switches."""
import struct

import pytest

import guestbuild
from svmsim.machine import Machine
from svmsim.vmm import Vmm
from svmsim.vmm.snp_kernel import SnpKernelLauncher
from svmsim.vmm.snp_services import (PSC_ERROR_INVALID_ENTRY, PSC_ERROR_INVALID_HDR, PSC_PRIVATE,
                                     PSC_SHARED, SnpRequestError, SnpServices)
from svmsim.vmm.vmm import GUEST_BASE

_2M = 1 << 21


@pytest.fixture
def services():
    kernel = str(guestbuild.build_guest("attack_target", kind="asm"))
    vmm = Vmm(Machine(mem_size="64M"), guest_mem=8 << 20)
    SnpKernelLauncher(vmm, kernel).run()
    return SnpServices(vmm, vmm.asid)


def entry(s, gpa):
    return s.m.rmp.read(GUEST_BASE + gpa)


def test_private_4k_is_assigned_and_unvalidated(services):
    """15.36.6: "All pages are initially assigned as unvalidated"."""
    services.page_state(0x400000, PSC_PRIVATE)
    e = entry(services, 0x400000)
    assert (e.assigned, e.asid, e.gpa, e.page_size, e.validated) == (True, 1, 0x400000, 0, False)
    assert services.nested_size(0x400000) == 0x1000


def test_private_2m_is_one_2m_entry_and_a_2m_nested_page(services):
    services.page_state(0x400000, PSC_PRIVATE, _2M)
    head = entry(services, 0x400000)
    assert head.assigned and head.page_size == 1 and head.gpa == 0x400000
    assert services.nested_size(0x5FF000) == _2M
    assert not services.m.rmp.hypervisor_owned(GUEST_BASE + 0x5FF000)


def test_private_2m_without_large_pages_is_512_4k_entries(services):
    services.large_pages = False
    services.page_state(0x400000, PSC_PRIVATE, _2M)
    assert entry(services, 0x400000).page_size == 0 and entry(services, 0x5FF000).assigned
    assert services.nested_size(0x400000) == 0x1000


def test_sharing_a_page_of_a_2m_private_page_smashes_it(services):
    """15.36.11: PSMASH keeps Validated; the nested page is split to 4 KiB."""
    services.page_state(0x400000, PSC_PRIVATE, _2M)
    head = entry(services, 0x400000)
    head.validated = True
    services.m.rmp.write(GUEST_BASE + 0x400000, head)
    services.page_state(0x401000, PSC_SHARED)
    assert not entry(services, 0x401000).assigned
    neighbour = entry(services, 0x402000)
    assert neighbour.assigned and neighbour.page_size == 0 and neighbour.validated
    assert neighbour.gpa == 0x402000 and services.nested_size(0x400000) == 0x1000


def test_a_repeated_private_request_keeps_the_page_validated(services):
    e = entry(services, 0x100000)                      # launched: validated
    assert e.validated
    services.page_state(0x100000, PSC_PRIVATE)
    assert entry(services, 0x100000).validated


def test_firmware_pages_and_bad_requests_are_refused(services):
    with pytest.raises(SnpRequestError):
        services.page_state(0x401000, PSC_PRIVATE, _2M)           # not 2 MiB aligned
    with pytest.raises(SnpRequestError):
        services.page_state(8 << 20, PSC_PRIVATE)                # beyond guest RAM


def psc_entry(gfn, op, huge=0, cur=0):
    return cur | gfn << 12 | op << 52 | huge << 56


def test_psc_descriptor_is_processed_and_updated_as_kvm_does(services):
    desc = bytearray(struct.pack("<HHI", 0, 1, 0) + struct.pack("<QQ", psc_entry(0x400, PSC_PRIVATE, 1),
                                                                 psc_entry(0x700, PSC_PRIVATE)))
    assert services.psc_descriptor(desc) == 0
    assert struct.unpack_from("<H", desc)[0] == 2
    assert struct.unpack_from("<Q", desc, 8)[0] & 0xFFF == 512
    assert entry(services, 0x400000).page_size == 1 and entry(services, 0x700000).assigned


@pytest.mark.parametrize("desc,error", [
    (struct.pack("<HHI", 0, 253, 0), PSC_ERROR_INVALID_HDR),
    (struct.pack("<HHIQ", 0, 0, 0, psc_entry(0x401, PSC_PRIVATE, 1)), PSC_ERROR_INVALID_ENTRY),
    (struct.pack("<HHIQ", 0, 0, 0, psc_entry(0x400, PSC_PRIVATE, 0, 2)), PSC_ERROR_INVALID_ENTRY),
])
def test_psc_descriptor_errors(services, desc, error):
    assert services.psc_descriptor(bytearray(desc.ljust(0x7F0, b"\0"))) == error


def test_ap_creation_and_run_vmpl_switch_the_vmsa_and_keep_each_ghcb_msr(services):
    vmcb = services.vmm.vmcb
    own = vmcb["VMSA_PA"]
    v = services.vcpu(0)
    v.vmsas[0] = own
    assert services.ap_creation(0, 1, 1, 0x401000) is None          # VMPL1's VMSA, not running
    with pytest.raises(SnpRequestError):
        services.ap_creation(0, 1, 1, 0x400000)                     # 2 MiB aligned: refused
    vmcb["GHCB_GPA"] = 0x7000
    services.run_vmpl(0, vmcb, 1)
    assert (vmcb["VMSA_PA"], vmcb["GHCB_GPA"], v.vmpl) == (GUEST_BASE + 0x401000, 0, 1)
    vmcb["GHCB_GPA"] = 0x8000
    services.run_vmpl(0, vmcb, 0)
    assert (vmcb["VMSA_PA"], vmcb["GHCB_GPA"]) == (own, 0x7000)
    with pytest.raises(SnpRequestError):
        services.run_vmpl(0, vmcb, 2)
