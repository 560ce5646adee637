"""A Multiboot kernel launched as an SEV-SNP guest by the reference VMM
(issue 10 item 7, Multiboot part; svmsim/vmm/snp_kernel.py)."""
import pytest

import guestbuild
from svmsim.machine import Machine
from svmsim.vmm import Vmm
from svmsim.vmm.ovmf import OvmfError
from svmsim.vmm.snp_kernel import SnpKernelLauncher, kernel_sev_metadata, loaded_regions, vmsa_from_vmcb
from svmsim.vmm.vcpu_reset import vcpu_type
from svmsim.vmm.vmm import GUEST_BASE

GUEST_MEM = 8 << 20


@pytest.fixture(scope="module")
def kernel():
    return str(guestbuild.build_guest("attack_target", kind="asm"))


def launched(kernel):
    vmm = Vmm(Machine(mem_size="64M"), guest_mem=GUEST_MEM)
    launcher = SnpKernelLauncher(vmm, kernel)
    return launcher, launcher.run()


def test_kernel_declares_its_cpuid_and_secrets_pages(kernel):
    assert kernel_sev_metadata(kernel) == [(0x10000, 0x1000, 3), (0x11000, 0x1000, 2)]


def test_bad_metadata_is_a_load_error(tmp_path):
    src = tmp_path / "bad.S"
    src.write_text('.section .multiboot, "a"\n.long 0x1BADB002, 3, -(0x1BADB002 + 3)\n'
                   '.section .sev_metadata, ""\n.ascii "ASEV"\n.long 28, 1, 1\n.long 0x10000, 0x1000, 9\n'
                   '.text\n.code32\n.globl _start\n_start: hlt\n')
    k = guestbuild.build_guest([str(src)], kind="asm", cache=tmp_path / "cache")
    with pytest.raises(OvmfError, match="type 9"):
        kernel_sev_metadata(str(k))


def test_launch_digest_is_what_the_guest_owner_predicts(kernel):
    """The firmware chains the launch digest page by page from what it reads
    (SNP ABI PAGE_INFO); the guest owner computes the same from the kernel
    file with sev-snp-measure's GCTX: the loaded pages as NORMAL pages, the
    CPUID and secrets pages, the BSP's VMSA (Multiboot entry state,
    SEV_FEATURES = SNPActive)."""
    gctx_mod = pytest.importorskip("sevsnpmeasure.gctx", reason="sev-snp-measure is not installed")
    launcher, r = launched(kernel)
    owner = Vmm(Machine(mem_size="64M"), guest_mem=GUEST_MEM)     # the owner's own load
    owner.load_kernel(kernel)
    g = gctx_mod.GCTX()
    for gpa, length in loaded_regions(r.info):
        g.update_normal_pages(gpa, owner.m.bus.read_bytes(GUEST_BASE + gpa, length))
    g.update_cpuid_page(0x10000)
    g.update_secrets_page(0x11000)
    g.update_vmsa_page(vmsa_from_vmcb(owner.vmcb, owner.gprs, vcpu_type("EPYC-v4").signature, 1))
    assert launcher.vmm.m.amd_sp.snp.guests[launcher.gctx].ld == g.ld()
    assert [name for name, _ in launcher.psp.log].count("SNP_LAUNCH_UPDATE") == \
        sum(n for _, n in loaded_regions(r.info)) // 0x1000 + 3


def test_launched_kernel_runs_as_an_snp_guest(kernel):
    """The kernel boots from its VMSA, reads SEV_STATUS = SEV | ES | SNP
    (APM vol 2, 15.34.10) and its C-bit from the CPUID page, and stops at
    its first HLT (an automatic exit) ready for requests; its pages are
    validated and the hypervisor sees ciphertext."""
    from svmsim.vmm import attacks
    hv = attacks.Hypervisor(kernel, "snp").boot()
    m, asid = hv.m, hv.vmm.asid
    status_at = hv.sym("sev_status")
    private = m.mem_engine.read(m.bus.read_bytes, GUEST_BASE + (status_at & ~15), 16, asid)
    assert int.from_bytes(private[status_at & 15:(status_at & 15) + 4], "little") == 0b111
    page = hv.sym("public_page")
    e = m.rmp.read(GUEST_BASE + page)
    assert e.assigned and e.validated and e.gpa == page and e.asid == asid
    assert b"public" not in m.bus.read_bytes(GUEST_BASE + page, 64)
    assert b"public" in hv.request(attacks.PUBLIC)
    cpuid = m.rmp.read(GUEST_BASE + 0x10000)
    assert cpuid.assigned and cpuid.validated and not cpuid.immutable


def test_a_lying_cpuid_page_fails_the_launch_as_qemu_does(kernel):
    """SNP_LAUNCH_UPDATE of a CPUID page whose C-bit is not the processor's:
    INVALID_PARAM, and the VMM stops naming what the firmware corrected."""
    from svmsim.sev import snp_cpuid
    from svmsim.vmm.snp_launch import cpuid_table
    from svmsim.vmm.vmm import GuestExit
    vmm = Vmm(Machine(mem_size="64M"), guest_mem=GUEST_MEM)
    honest = snp_cpuid.unpack_table(cpuid_table(vmm.m, vcpu_type("EPYC-v4").signature))
    lie = snp_cpuid.pack_table((e[0], e[1], e[4], e[5] & ~0x3F | 40 if e[0] == 0x8000001F else e[5],
                                e[6], e[7]) for e in honest)
    with pytest.raises(GuestExit, match=r"INVALID_PARAM.*0x8000001f"):
        SnpKernelLauncher(vmm, kernel, cpuid=lambda: lie).run()
