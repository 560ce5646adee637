"""The hypervisor's part of SEV-SNP guest requests (KVM's handling of the GHCB
exits SNP_GUEST_REQUEST and SNP_EXTENDED_GUEST_REQUEST, arch/x86/kvm/svm/sev.c;
GHCB spec 56421, 4.1.8): the guest's sealed message goes to a hypervisor
page, the AMD-SP answers into a page handed to it (Firmware state), and the
answer goes back to the guest.  For an extended request the hypervisor also
returns the certificate table it was given (VCEK, ASK, ARK): it cannot
forge them usefully, the guest checks the chain.  A certificate buffer too
small gets VMM error INVALID_LEN with the size needed, and the request is
not passed on (the guest then re-sends it as a plain request).

``SnpGuestRequests(psp, gctx, certs).transport`` is the callable that
``svmsim.sev.snp_guest.SnpGuestDevice`` uses.
"""
from __future__ import annotations

from ..sev.snp_api import MSG_PAGE, SnpCmd
from ..sev.snp_guest import VMM_ERR_INVALID_LEN
from . import snp_host


class SnpGuestRequests:
    """Guest requests of one SNP guest (its context page ``gctx``);
    ``req_pa``/``res_pa`` are two host pages the hypervisor sets aside (the
    second becomes the AMD-SP's until ``close``)."""

    def __init__(self, psp, gctx: int, req_pa: int, res_pa: int, certs: bytes = b""):
        self.psp, self.gctx, self.req_pa, self.res_pa, self.certs = psp, gctx, req_pa, res_pa, certs
        snp_host.firmware_page(psp.m, res_pa)
        self.log: list = []                   # (status of each SNP_GUEST_REQUEST)

    def transport(self, message: bytes, certs_len: int | None):
        if certs_len is not None and certs_len < len(self.certs):
            return VMM_ERR_INVALID_LEN << 32, b"", len(self.certs)
        bus = self.psp.bus
        bus.write_bytes(self.req_pa, bytes(message).ljust(MSG_PAGE, b"\0"))
        status, _ = self.psp.command(SnpCmd.GUEST_REQUEST, "guest_request", gctx_paddr=self.gctx,
                                     req_paddr=self.req_pa, res_paddr=self.res_pa)
        self.log.append(status)
        response = bus.read_bytes(self.res_pa, MSG_PAGE) if status == 0 else b""
        return status, response, (self.certs if certs_len is not None else b"")

    def close(self) -> None:
        snp_host.reclaim(self.psp, self.res_pa)
