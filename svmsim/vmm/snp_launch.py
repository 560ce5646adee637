"""Launching a firmware image (OVMF) as an SEV-SNP guest the way QEMU does for
``-object sev-snp-guest`` on KVM (issue 10 item 7), so that the launch digest
in the guest's attestation report is what ``sev-snp-measure --mode snp``
predicts.

QEMU and KVM, in order (target/i386/sev.c, arch/x86/kvm/svm/sev.c):

1. the host has the RMP and SNP_INIT_EX done (``snp_host.enable_snp``);
2. KVM_SEV_SNP_LAUNCH_START: a Firmware page becomes the guest context
   (SNP_GCTX_CREATE), SNP_LAUNCH_START with the policy, SNP_ACTIVATE;
3. the image, mapped so that it ends at 4 GiB, page by page: each page is
   made Pre-Guest at its gPA by RMPUPDATE, then SNP_LAUNCH_UPDATE (NORMAL);
4. the OVMF SEV metadata sections in table order: SNP_SEC_MEM and SVSM_CAA as
   ZERO pages, SNP_SECRETS as the SECRETS page, CPUID as the CPUID page
   (QEMU's table for the vCPU type, checked by the firmware; a table it
   corrects fails the launch, as QEMU does, naming the entries), and
   SNP_KERNEL_HASHES as ZERO pages (no kernel hashes in this launch);
5. KVM_SEV_SNP_LAUNCH_FINISH: one VMSA per vCPU (the reset state with
   SEV_FEATURES = the guest features) at gPA FFFFFFFFF000h, LAUNCH_UPDATE
   (VMSA), then SNP_LAUNCH_FINISH.

Nothing here computes the digest: the firmware chains it from the pages it
reads.  The guest's attestation report then carries it: ``attest`` plays the
guest, which reads its VMPCK from its secrets page (through its own key) and
asks for an extended report over the GHCB; the VMM answers with the AMD-SP's
report and the certificate table (svmsim's simulated KDS chain).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..sev import snp_api as A, snp_certs, snp_cpuid, snp_report
from ..sev.snp_api import PageType, SnpCmd
from ..sev.snp_guest import ARK_GUID, ASK_GUID, VCEK_GUID, SnpGuestDevice, cert_table, parse_cert_table
from . import ovmf as O
from . import snp_host
from .psp import Psp
from .snp_guest_request import SnpGuestRequests
from .vcpu_reset import vcpu_type, vcpu_vmsas
from .vmm import GUEST_BASE, GuestExit

PAGE = 0x1000
_2M = 1 << 21
DEFAULT_POLICY = 0x30000            # QEMU's sev-snp-guest default: SMT allowed, bit 17
DEFAULT_FEATURES = 0x1              # SNPActive (sev-snp-measure's default)
SECTION_PAGE_TYPE = {O.SECTION_SNP_SEC_MEM: PageType.ZERO, O.SECTION_SNP_SECRETS: PageType.SECRETS,
                     O.SECTION_CPUID: PageType.CPUID, O.SECTION_SVSM_CAA: PageType.ZERO,
                     O.SECTION_SNP_KERNEL_HASHES: PageType.ZERO}
CPUID_LEAVES = ((0, 0), (1, 0), (7, 0), (0xD, 0), (0xD, 1), (0x80000000, 0), (0x80000001, 0),
                (0x80000007, 0), (0x80000008, 0), (0x8000001F, 0))


@dataclass
class SnpLaunch:
    """What the launch produced."""
    vcpus: int
    vcpu_type: str
    policy: int
    guest_features: int
    gctx: int = 0
    asid: int = 0
    image_gpa: int = 0
    image_spa: int = 0
    ap_eip: int | None = None
    sections: list = field(default_factory=list)    # (gPA, size, type) from the OVMF metadata
    vmsa_spas: list = field(default_factory=list)
    secrets_gpa: int | None = None
    report: bytes = b""                             # the guest's attestation report
    certs: bytes = b""                              # the certificate table that came with it

    @property
    def measurement(self) -> bytes:
        return snp_report.parse(self.report)["measurement"] if self.report else b""


def host_ram_needed(image_size: int, vcpus: int, guest_mem: int) -> int:
    """Guest RAM, the image, the VMSAs and an RMP covering it all."""
    end = GUEST_BASE + guest_mem + ((image_size + _2M - 1) & ~(_2M - 1)) + PAGE * vcpus
    need = (end + (1 << 20) - 1 & ~((1 << 20) - 1)) + (2 << 20)
    return max(128 << 20, need + (need >> 12) * 16)


def cpuid_table(machine, signature: int) -> bytes:
    """The CPUID page QEMU fills for the guest: the processor's answers for
    the leaves a firmware uses, with the vCPU type's signature in leaf 1
    and the hypervisor-present bit."""
    from ..cpu.cpuid import cpuid
    cpu, entries = machine.cpus[0], []
    for leaf, sub in CPUID_LEAVES:
        regs = list(cpuid(cpu, leaf, sub))
        if leaf == 1:
            regs[0], regs[2] = signature, regs[2] | 1 << 31
        entries.append((leaf, sub, *regs))
    return snp_cpuid.pack_table(entries)


class SnpLauncher:
    """One SEV-SNP guest's launch through the AMD-SP, as KVM drives it for
    KVM_SEV_SNP_LAUNCH_START / _UPDATE / _FINISH: ``start`` (RMP and
    SNP_INIT_EX once per machine, the guest context, LAUNCH_START,
    ACTIVATE), ``update`` for each page (RMPUPDATE to Pre-Guest at its gPA,
    then SNP_LAUNCH_UPDATE), ``finish``.  What the pages hold and where they
    go is the front end's: an OVMF image (``SnpFirmwareLauncher``) or a
    Multiboot kernel (``snp_kernel``)."""

    def __init__(self, vmm, policy: int | None = None, host_data: bytes = bytes(32),
                 vcpu_type_name: str = "EPYC-v4", cpuid=None, accept_corrected_cpuid: bool = False):
        policy = DEFAULT_POLICY if policy is None else policy
        if not policy & 1 << 17 or policy >> 26:
            raise ConfigError(f"SNP policy {policy:#x}: bit 17 must be set and bits 63:26 clear "
                              "(SNP ABI guest policy)")
        self.vmm, self.policy, self.host_data = vmm, policy, host_data
        self.psp = Psp(vmm.m)
        if vmm.m.amd_sp.snp is None:
            raise ConfigError("this CPU model has no SEV-SNP")
        self.vcpu = vcpu_type(vcpu_type_name)
        self.cpuid_page = cpuid or (lambda: cpuid_table(vmm.m, self.vcpu.signature))
        self.accept_corrected_cpuid = accept_corrected_cpuid
        self.gctx = self.asid = 0
        self.secrets_spa: int | None = None
        self.secrets_gpa: int | None = None
        self.cpuid_gpa: int | None = None
        self.cpuid_refused = ""               # what the firmware corrected in the CPUID page
        self._scratch = GUEST_BASE - 0x10000

    def start(self) -> None:
        """RMP and SNP_INIT_EX (once per machine), then the guest context,
        LAUNCH_START and ACTIVATE."""
        m, psp = self.vmm.m, self.psp
        if m.amd_sp.snp.state == A.SnpState.UNINIT:
            snp_host.enable_snp(m, psp)
        self.gctx = snp_host.firmware_page(m, self.host_page())
        psp.call(SnpCmd.GCTX_CREATE, "addr", address=self.gctx)
        psp.call(SnpCmd.LAUNCH_START, "launch_start", gctx_paddr=self.gctx, policy=self.policy)
        psp.call(SnpCmd.ACTIVATE, "activate", gctx_paddr=self.gctx, asid=self.vmm.asid)
        self.asid = self.vmm.asid

    def host_page(self) -> int:
        """A page of host RAM below the guest's (the VMM's scratch)."""
        self._scratch += PAGE
        return self._scratch

    def update(self, spa: int, gpa: int, page_type: PageType, perms: int = 0) -> int:
        """The page at ``spa`` becomes the guest's at ``gpa`` (Pre-Guest), then
        SNP_LAUNCH_UPDATE of ``page_type``; the firmware's status."""
        snp_host.rmpupdate(self.vmm.m, spa, gpa, assigned=True, asid=self.asid, immutable=True)
        return self.launch_update(spa, page_type, perms)

    def launch_update(self, spa: int, page_type: PageType, perms: int = 0) -> int:
        """SNP_LAUNCH_UPDATE of a page that is already Pre-Guest."""
        status, _ = self.psp.command(SnpCmd.LAUNCH_UPDATE, "launch_update", gctx_paddr=self.gctx,
                                     flags=A.launch_update_flags(page_type), address=spa, perms=perms)
        if status == 0 and page_type == PageType.SECRETS:
            self.secrets_spa = spa
        return status

    def update_ok(self, spa: int, gpa: int, page_type: PageType, perms: int = 0) -> None:
        if self.update(spa, gpa, page_type, perms):
            raise GuestExit(f"AMD-SP SNP_LAUNCH_UPDATE ({page_type.name}) of gPA {gpa:#x} failed: "
                            f"{self.psp.log[-1][1]}")

    def update_sections(self, sections) -> None:
        """The SEV metadata sections (gPA, size, type) of guest RAM, in order:
        zero pages, the secrets page, the CPUID page (``update_cpuid``)."""
        for gpa, size, kind in sections:
            ptype = SECTION_PAGE_TYPE[kind]
            for off in range(0, size, PAGE):
                spa = GUEST_BASE + gpa + off
                if ptype == PageType.CPUID:
                    self.update_cpuid(spa, gpa + off)
                    continue
                self.update_ok(spa, gpa + off, ptype)
                if ptype == PageType.SECRETS:
                    self.secrets_gpa = gpa + off

    def update_cpuid(self, spa: int, gpa: int) -> None:
        """The CPUID page.  A table the firmware corrects fails the launch, as
        QEMU fails it; with ``accept_corrected_cpuid`` the VMM launches the
        corrected table instead (LAUNCH_UPDATE again: the page stays
        Pre-Guest), and ``cpuid_refused`` says what was corrected."""
        self.vmm.m.bus.write_bytes(spa, self.cpuid_page())
        if self.update(spa, gpa, PageType.CPUID):
            self.cpuid_refused = self.cpuid_mismatch()
            if not self.accept_corrected_cpuid:
                raise GuestExit(self.cpuid_refused)
            if self.launch_update(spa, PageType.CPUID):
                raise GuestExit(f"{self.cpuid_refused}; the corrected table failed too")
        self.cpuid_gpa = gpa

    def cpuid_mismatch(self) -> str:
        """What QEMU prints when the firmware corrected the CPUID page."""
        problems = self.vmm.m.amd_sp.snp.cpuid_problems
        text = "; ".join(f"leaf {leaf:#x}.{sub} {reg}: {given:#x} -> {want:#x}"
                         for _, leaf, sub, reg, given, want in problems if leaf is not None)
        return f"SEV-SNP: CPUID validation failed ({self.psp.log[-1][1]}): {text}"

    def finish(self) -> None:
        self.psp.call(SnpCmd.LAUNCH_FINISH, "launch_finish", gctx_paddr=self.gctx,
                      host_data=self.host_data)

    # -- the guest asks for its report -----------------------------------------------------
    def certificate_table(self) -> bytes:
        """VCEK, ASK and ARK, as a VMM fetches them from the key server."""
        ark, ask = snp_certs.root_chain()
        return cert_table([(VCEK_GUID, snp_certs.der(self.vmm.m.amd_sp.snp.vcek_certificate())),
                           (ASK_GUID, snp_certs.der(ask)), (ARK_GUID, snp_certs.der(ark))])

    def attest(self, report_data: bytes = bytes(64)) -> tuple[bytes, bytes]:
        """The guest's extended report request (SNP_GET_EXT_REPORT) with
        ``report_data``, played from Python with the VMPCK0 the guest reads
        from its secrets page; (report, certificate table)."""
        m = self.vmm.m
        if self.secrets_spa is None:
            raise GuestExit("the guest has no secrets page: it has no VMPCK")
        secrets = m.mem_engine.read(m.bus.read_bytes, self.secrets_spa, PAGE, self.asid)
        certs = self.certificate_table()
        host = SnpGuestRequests(self.psp, self.gctx, self.host_page(), self.host_page(), certs)
        return SnpGuestDevice(secrets, host.transport).get_ext_report(report_data, certs_len=len(certs))


class SnpFirmwareLauncher(SnpLauncher):
    """An OVMF image's SNP launch, step by step (``run`` does them all)."""

    def __init__(self, vmm, image: O.OvmfImage, vcpus: int = 1, vcpu_type_name: str = "EPYC-v4",
                 policy: int | None = None, guest_features: int = DEFAULT_FEATURES,
                 host_data: bytes = bytes(32)):
        if vcpus < 1:
            raise ConfigError("--vcpus must be at least 1")
        if not 0 <= guest_features < 1 << 64:
            raise ConfigError("--guest-features must fit in 64 bits")
        super().__init__(vmm, policy, host_data, vcpu_type_name)
        self.image = image
        self.result = SnpLaunch(vcpus, vcpu_type_name, self.policy, guest_features)

    # -- host memory --------------------------------------------------------------------
    def place(self) -> None:
        r, m = self.result, self.vmm.m
        r.image_gpa = self.image.gpa
        r.image_spa = GUEST_BASE + self.vmm.guest_mem
        vmsa_base = r.image_spa + ((self.image.size + _2M - 1) & ~(_2M - 1))
        base, _ = snp_host.rmp_bounds(m.bus.low_top)
        if vmsa_base + PAGE * r.vcpus > base:
            raise ConfigError(f"the machine needs at least "
                              f"{host_ram_needed(self.image.size, r.vcpus, self.vmm.guest_mem) >> 20} MiB")
        r.ap_eip = self.image.sev_es_reset_eip()
        if not r.ap_eip:
            raise O.OvmfError(f"{self.image.name}: no SEV-ES reset block (QEMU refuses it for SEV-SNP)")
        r.sections = self.image.sev_metadata()
        if not r.sections:
            raise O.OvmfError(f"{self.image.name}: no SEV metadata (QEMU refuses it for SEV-SNP)")
        for gpa, size, _ in r.sections:
            if gpa + size > self.vmm.guest_mem:
                raise O.OvmfError(f"{self.image.name}: metadata section at {gpa:#x} is beyond guest RAM")
        m.bus.write_bytes(r.image_spa, self.image.data)
        self.vmm.map_region(r.image_gpa, r.image_spa, self.image.size)
        pages = vcpu_vmsas(r.vcpus, r.ap_eip, self.vcpu.signature, r.guest_features)
        for i, page in enumerate(pages):
            spa = vmsa_base + i * PAGE
            m.bus.write_bytes(spa, page)
            r.vmsa_spas.append(spa)

    # -- the AMD-SP ---------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.result.gctx, self.result.asid = self.gctx, self.asid

    def update_image(self) -> None:
        r = self.result
        for off in range(0, self.image.size, PAGE):
            self.update_ok(r.image_spa + off, r.image_gpa + off, PageType.NORMAL)

    def update_metadata(self) -> None:
        self.update_sections(self.result.sections)
        self.result.secrets_gpa = self.secrets_gpa

    def update_vmsas(self) -> None:
        for spa in self.result.vmsa_spas:
            self.update_ok(spa, A.VMSA_GPA, PageType.VMSA)

    def run(self) -> SnpLaunch:
        self.place()
        self.start()
        self.update_image()
        self.update_metadata()
        self.update_vmsas()
        self.finish()
        return self.result

    def attest(self, report_data: bytes = bytes(64)) -> bytes:
        """The guest's extended report with ``report_data``; the report and
        certificates go into the result."""
        if self.result.secrets_gpa is None:
            raise GuestExit("the image declares no secrets page: the guest has no VMPCK")
        r = self.result
        r.report, r.certs = super().attest(report_data)
        return r.report

    def vcek_from_certs(self):
        from cryptography import x509
        return x509.load_der_x509_certificate(parse_cert_table(self.result.certs)[VCEK_GUID])
