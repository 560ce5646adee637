"""The reference VMM's GHCB server for SEV-SNP guests: the SEV-ES server
(``sev_es.GhcbServer``) extended by its dispatch tables with what the GHCB
spec (56421, 2.3 and 4.1.6-4.1.13) adds for SNP, served as KVM serves it
(arch/x86/kvm/svm/sev.c), and ``launch_snp``, which launches a Multiboot
kernel through the AMD-SP and attaches the server.

MSR protocol (request and answer in the GHCB MSR, VMCB 0A0h):

* 012h register GHCB GPA: required of an SNP guest; each VMPL registers its
  own (the registration is kept per VMPL, as the GHCB MSR is);
* 014h page state change of one 4 KiB page (GFN 51:12, operation 55:52);
  the answer (015h) has the error code in 63:32, 0 when done;
* 016h run at VMPL (39:32): the answer (017h) waits in the requesting
  VMPL's GHCB MSR while the vCPU runs the target VMPL's VMSA.

NAE events:

* PSC (8000_0010h): the descriptor at SW_SCRATCH, in the GHCB's shared
  buffer, processed by ``SnpServices.psc_descriptor`` (cur_entry advanced in
  place); SW_EXITINFO2 = 0 or KVM's error code;
* GUEST_REQUEST / EXT_GUEST_REQUEST (8000_0011h/12h): SW_EXITINFO1 = the
  request page, SW_EXITINFO2 = the response page (both shared); the message
  goes to the AMD-SP (``SnpGuestRequests``), SW_EXITINFO2 returns the VMM
  error (63:32) and the firmware status (31:0); the extended form writes
  the certificate table to RAX's pages (RBX of them; too few: VMM error
  INVALID_LEN and RBX = the pages needed);
* AP_CREATION (8000_0013h): SW_EXITINFO1 APIC ID 63:32, VMPL 23:16,
  request 11:0; SW_EXITINFO2 the VMSA's gPA; RAX its SEV features;
* RUN_VMPL (8000_0018h): SW_EXITINFO1[7:0] the VMPL.

An #NPF is the RMP's answer to an access (APM vol 2, 15.36.10, table
15-37): the server ends the run naming the RMP bits and, for a VMPL
permission fault, the VMPL that made the access.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..sev import snp_api as A
from ..sev.ghcb import GhcbError, HvFeature, MsrProto, NaeExit, msr_data, msr_request
from ..sev.snp_guest import VMM_ERR_INVALID_LEN
from .sev_es import GhcbServer, Malformed, Stop
from .snp_guest_request import SnpGuestRequests
from .snp_kernel import SnpKernelLauncher
from .snp_services import SnpRequestError, SnpServices

PAGE = 0x1000
NPF_BITS = ((0, "P"), (1, "RW"), (2, "US"), (3, "RSV"), (4, "ID"), (31, "RMP"), (32, "final gPA"),
            (33, "guest table"), (34, "ENC"), (35, "SIZEM"), (36, "VMPL"))


def npf_bits(info1: int) -> str:
    return ", ".join(n for b, n in NPF_BITS if info1 >> b & 1)


class SnpGhcbServer(GhcbServer):
    """The GHCB server of one SEV-SNP guest launched by ``launcher`` (an
    ``SnpLauncher`` after ``finish``: its AMD-SP, guest context, ASID)."""

    NAE = {**GhcbServer.NAE,
           NaeExit.PSC: "_psc",
           NaeExit.GUEST_REQUEST: "_guest_request",
           NaeExit.EXT_GUEST_REQUEST: "_ext_guest_request",
           NaeExit.AP_CREATION: "_ap_creation",
           NaeExit.RUN_VMPL: "_run_vmpl"}
    MSR_PROTOCOL = {**GhcbServer.MSR_PROTOCOL,
                    MsrProto.PSC_REQ: "_msr_psc",
                    MsrProto.VMPL_REQ: "_msr_vmpl"}
    HV_FEATURES = HvFeature.SNP | HvFeature.SNP_AP_CREATION | HvFeature.SNP_MULTI_VMPL

    def __init__(self, vmm, launcher, certs: bytes | None = None, large_pages: bool = True):
        super().__init__(vmm)
        self.launcher = launcher
        self.services = SnpServices(vmm, launcher.asid, large_pages)
        self.certs = launcher.certificate_table() if certs is None else certs
        self.guest_requests = SnpGuestRequests(launcher.psp, launcher.gctx, launcher.host_page(),
                                               launcher.host_page(), self.certs)
        self.registered: dict = {}              # (vCPU index, VMPL) -> registered GHCB gPA

    def attach(self, vmsa_spas) -> None:
        super().attach(vmsa_spas)
        for v, spa in zip(self.vmm.vcpus, vmsa_spas):
            if spa:
                self.services.vcpu(v.index).vmsas[0] = spa

    def vmpl(self, vcpu) -> int:
        return self.services.vcpu(vcpu.index).vmpl

    # ------------------------------------------------------------ GHCB registration per VMPL
    def _msr_reg_gpa(self, vcpu, value):
        super()._msr_reg_gpa(vcpu, value)
        if vcpu.ghcb_registered is not None:
            self.registered[vcpu.index, self.vmpl(vcpu)] = vcpu.ghcb_registered

    def check_ghcb_gpa(self, vcpu, gpa) -> None:
        vcpu.ghcb_registered = self.registered.get((vcpu.index, self.vmpl(vcpu)))
        super().check_ghcb_gpa(vcpu, gpa)

    # ------------------------------------------------------------ MSR protocol
    def _msr_psc(self, vcpu, value):
        data = msr_data(value)
        gfn, op = data & (1 << 40) - 1, data >> 40 & 0xF
        try:
            self.services.page_state(gfn << 12, op)
            err, what = 0, "done"
        except SnpRequestError as e:
            err, what = 1, f"refused: {e}"
        self._reply_msr(vcpu, MsrProto.PSC_RESP, err << 20,
                        f"gPA {gfn << 12:#x} {'private' if op == 1 else 'shared'}: {what}")

    def _msr_vmpl(self, vcpu, value):
        target = msr_data(value) >> 20 & 0xFF
        vmcb, here = vcpu.vmcb, self.vmpl(vcpu)
        try:
            vmcb["GHCB_GPA"] = msr_request(MsrProto.VMPL_RESP, 0)   # the answer VMPL{here} gets back
            self.services.run_vmpl(vcpu.index, vmcb, target)
        except SnpRequestError as e:
            self._reply_msr(vcpu, MsrProto.VMPL_RESP, 1 << 20, f"refused: {e}")
            return
        vmcb["TLB_CONTROL"] = 1            # translations were checked at another VMPL
        self._note(vcpu, "VMPL", f"VMPL{here} -> VMPL{target}")

    # ------------------------------------------------------------ NAE events
    def _psc(self, r):
        gpa, length = self.scratch(r, 8)
        if not r.gpa <= gpa < r.gpa + PAGE:
            raise Malformed(GhcbError.INVALID_SCRATCH_AREA, "the PSC descriptor must be in the GHCB")
        off = gpa - r.gpa
        desc = bytearray(r.page[off:])
        first = len(self.services.log)
        r.outputs["SW_EXIT_INFO_2"] = self.services.psc_descriptor(desc)
        r.page[off:] = desc
        for what, at, n in self.services.log[first:]:
            self._note(r.vcpu, "PSC", f"gPA {at:#x} {what}, {n // PAGE} page(s)")

    def _guest_request(self, r):
        self._pass_message(r)

    def _pass_message(self, r, certs_len=None):
        """The request page to the AMD-SP, its answer to the response page;
        (SW_EXITINFO2, certificates or the length needed)."""
        req, rsp = r.info1, r.info2
        for gpa in (req, rsp):
            if gpa % PAGE or gpa + PAGE > self.vmm.guest_mem:
                raise Malformed(GhcbError.INVALID_INPUT, f"guest request page {gpa:#x} is not a page "
                                                         "of guest RAM")
        status, response, certs = self.guest_requests.transport(self._read_guest(req, A.MSG_PAGE),
                                                                certs_len)
        if response:
            self._write_guest(rsp, response[:A.MSG_PAGE])
        r.outputs["SW_EXIT_INFO_2"] = status
        self._note(r.vcpu, "GUEST_REQUEST", f"AMD-SP status {status & 0xFFFFFFFF:#x}, "
                                            f"VMM error {status >> 32}")
        return status, certs

    def _ext_guest_request(self, r):
        gpa, pages = r.need("RAX", "RBX")
        status, certs = self._pass_message(r, certs_len=pages * PAGE)
        if status >> 32 == VMM_ERR_INVALID_LEN:
            r.outputs["RBX"] = -(-certs // PAGE)
        elif certs:
            if gpa % PAGE or gpa + pages * PAGE > self.vmm.guest_mem:
                raise Malformed(GhcbError.INVALID_INPUT, f"certificate buffer {gpa:#x} is not guest RAM")
            self._write_guest(gpa, certs)

    def _ap_creation(self, r):
        apic_id, vmpl, request = r.info1 >> 32, r.info1 >> 16 & 0xFF, r.info1 & 0xFFF
        target = next((v for v in self.vmm.vcpus if v.index == apic_id), None)
        if target is None:
            raise Malformed(GhcbError.INVALID_INPUT, f"AP creation for APIC ID {apic_id}: no such vCPU")
        try:
            spa = self.services.ap_creation(target.index, request, vmpl, r.info2)
        except SnpRequestError as e:
            raise Malformed(GhcbError.INVALID_INPUT, str(e)) from None
        if spa is not None:
            target.vmcb["VMSA_PA"] = spa
            target.vmcb["TLB_CONTROL"] = 1
            if target is not r.vcpu and target.state != "running":
                self._start(target)
        self._note(r.vcpu, "AP_CREATION", f"vCPU {apic_id} VMPL{vmpl}: request {request}, "
                                          f"VMSA at gPA {r.info2:#x}")

    def _start(self, v) -> None:
        """A vCPU that waited (for a SIPI, in AP reset hold, halted) runs from
        the VMSA the guest gave it, as KVM makes such a vCPU runnable: its
        CPU leaves wait-for-SIPI and enters the VMM's stub."""
        self.vmm._host_setup(v, self.stub_prologue(v))
        v.hold, v.state = "", "running"
        self.vmm._enter(v)

    def _run_vmpl(self, r):
        target, here = r.info1 & 0xFF, self.vmpl(r.vcpu)
        try:
            self.services.run_vmpl(r.vcpu.index, r.vcpu.vmcb, target)
        except SnpRequestError as e:
            raise Malformed(GhcbError.INVALID_INPUT, str(e)) from None
        r.vcpu.vmcb["TLB_CONTROL"] = 1
        self._note(r.vcpu, "RUN_VMPL", f"VMPL{here} -> VMPL{target}")

    # ------------------------------------------------------------ the RMP's faults
    def _npf(self, vcpu, info1, gpa):
        if not info1 >> 31 & 1:
            return super()._npf(vcpu, info1, gpa)
        self.npf = (self.vmpl(vcpu), info1, gpa)
        return (f"#VMEXIT(NPF) at VMPL{self.vmpl(vcpu)}: gPA {gpa:#x}, EXITINFO1 {info1:#x} "
                f"({npf_bits(info1)})")


@dataclass
class SnpKernelRun:
    """What ``launch_snp`` produced."""
    launcher: SnpKernelLauncher
    server: SnpGhcbServer

    @property
    def launch_digest(self) -> bytes:
        snp = self.launcher.vmm.m.amd_sp.snp
        return bytes(snp.guests[self.launcher.gctx].ld)


def launch_snp(vmm, kernel: str, append: str = "", **launcher_args) -> SnpKernelRun:
    """Load ``kernel`` into ``vmm``, launch it as an SEV-SNP guest through
    the AMD-SP (``SnpKernelLauncher``) and attach its GHCB server;
    ``vmm.run()`` then runs it."""
    launcher = SnpKernelLauncher(vmm, kernel, append, **launcher_args)
    r = launcher.run()
    server = SnpGhcbServer(vmm, launcher)
    # The APs have no VMSA until the guest creates one (AP_CREATION): an
    # SNP guest starts its APs itself, as Linux does.
    server.attach([r.vmsa_spa] + [0] * (len(vmm.vcpus) - 1))
    return SnpKernelRun(launcher, server)


__all__ = ["SnpGhcbServer", "SnpKernelRun", "launch_snp", "npf_bits", "Stop"]
