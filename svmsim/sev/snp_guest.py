"""The guest's side of SEV-SNP guest requests, shaped like Linux's
/dev/sev-guest (include/uapi/linux/sev-guest.h, drivers/virt/coco/sev-guest):
``get_report`` (SNP_GET_REPORT), ``get_derived_key`` (SNP_GET_DERIVED_KEY),
``get_ext_report`` (SNP_GET_EXT_REPORT) -- issue 10 item 6.

The device holds the VMPCK it took from the guest's secrets page and its own
message sequence number: each request goes out sealed with the next odd
number, the answer must carry that number + 1, the request's type + 1 and
the same VMPCK, and must authenticate; otherwise the device wipes its VMPCK
(as Linux's ``snp_disable_vmpck``) and every later request fails.

``transport(message, certs_len)`` is the guest's way to the hypervisor (the
GHCB's SNP_GUEST_REQUEST / SNP_EXTENDED_GUEST_REQUEST exits): it returns
(exitinfo2, response message, certificates), exitinfo2 being the VMM error
(bits 63:32) and the firmware status (31:0) as the GHCB reports them; with
VMM error INVALID_LEN the third item is the certificate length needed.
"""
from __future__ import annotations

import uuid

from . import snp_api as A
from .snp_crypto import MessageError, open_message, seal_message

VMM_ERR_INVALID_LEN, VMM_ERR_BUSY = 1, 2
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CERT_ENTRY_LEN = 24


class SnpGuestError(OSError):
    """A failed request, with the ioctl's exitinfo2 split in two."""

    def __init__(self, message: str, fw_error: int = 0, vmm_error: int = 0, certs_len: int = 0):
        super().__init__(message)
        self.fw_error, self.vmm_error, self.certs_len = fw_error, vmm_error, certs_len


def vmpck_from_secrets(secrets_page: bytes, vmpck_id: int) -> bytes:
    return bytes(A.unpack("secrets", secrets_page)[f"vmpck{vmpck_id}"])


class SnpGuestDevice:
    """/dev/sev-guest for the guest whose secrets page is ``secrets_page``
    (plaintext, as the guest reads it), talking with VMPCK ``vmpck_id``
    (its VMPL)."""

    def __init__(self, secrets_page: bytes, transport, vmpck_id: int = 0):
        if not 0 <= vmpck_id <= 3:
            raise ValueError("VMPCK ids are 0-3")
        self.vmpck = vmpck_from_secrets(secrets_page, vmpck_id)
        self.vmpck_id = vmpck_id
        self.transport = transport
        self.seqno = 0                      # the last sequence number used

    # -- the ioctls ------------------------------------------------------------------------
    def get_report(self, user_data: bytes = bytes(64), vmpl: int | None = None) -> bytes:
        """SNP_GET_REPORT: the signed 0x4A0-byte ATTESTATION_REPORT."""
        return self._report(self._exchange(A.MsgType.REPORT_REQ, self._report_req(user_data, vmpl)))

    def get_derived_key(self, root_key_select: int = 0, guest_field_select: int = 0,
                        vmpl: int | None = None, guest_svn: int = 0, tcb_version: int = 0) -> bytes:
        """SNP_GET_DERIVED_KEY: 32 bytes."""
        req = A.pack("key_req", root_key_select=root_key_select, guest_field_select=guest_field_select,
                     vmpl=self.vmpck_id if vmpl is None else vmpl, guest_svn=guest_svn,
                     tcb_version=tcb_version)
        rsp = A.unpack("key_rsp", self._exchange(A.MsgType.KEY_REQ, req))
        if rsp["status"]:
            raise SnpGuestError(f"MSG_KEY_RSP status {rsp['status']:#x}", fw_error=rsp["status"])
        return bytes(rsp["key"])

    def get_ext_report(self, user_data: bytes = bytes(64), vmpl: int | None = None,
                       certs_len: int = 4 * 4096) -> tuple[bytes, bytes]:
        """SNP_GET_EXT_REPORT: (report, certificate table).  Too small a
        ``certs_len`` fails with vmm_error INVALID_LEN and ``certs_len`` set to
        what the hypervisor needs; the request is then sent again without
        certificates so that its sequence number is used up (never reused)."""
        payload = self._report_req(user_data, vmpl)
        try:
            rsp, certs = self._exchange(A.MsgType.REPORT_REQ, payload, certs_len=certs_len)
        except SnpGuestError as e:
            if e.vmm_error != VMM_ERR_INVALID_LEN:
                raise
            self._exchange(A.MsgType.REPORT_REQ, payload)   # the same seqno, as a plain request
            raise
        return self._report(rsp), certs

    # -- messages ---------------------------------------------------------------------------
    def _report_req(self, user_data, vmpl):
        if len(user_data) != 64:
            raise ValueError("REPORT_DATA is 64 bytes")
        return A.pack("report_req", user_data=bytes(user_data),
                      vmpl=self.vmpck_id if vmpl is None else vmpl)

    @staticmethod
    def _report(rsp: bytes) -> bytes:
        head = A.unpack("report_rsp", rsp)
        if head["status"]:
            raise SnpGuestError(f"MSG_REPORT_RSP status {head['status']:#x}", fw_error=head["status"])
        return bytes(rsp[0x20:0x20 + head["report_size"]])

    def _exchange(self, msg_type, payload, certs_len=None):
        if not any(self.vmpck):
            raise SnpGuestError("the VMPCK is disabled (wiped after a bad response)")
        seqno = self.seqno + 1
        msg = seal_message(self.vmpck, seqno, msg_type, payload, self.vmpck_id)
        exitinfo2, rsp, certs = self.transport(msg, certs_len)
        fw_error, vmm_error = exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32
        if vmm_error == VMM_ERR_INVALID_LEN:
            raise SnpGuestError("certificate buffer too small", fw_error, vmm_error, certs)
        if exitinfo2:
            raise SnpGuestError(f"guest request failed: firmware {fw_error:#x}, VMM {vmm_error:#x}",
                                fw_error, vmm_error)
        try:
            hdr, plain = open_message(self.vmpck, rsp)
        except MessageError as e:
            self._disable(f"response does not verify: {e}")
        if (hdr["msg_seqno"], hdr["msg_type"], hdr["msg_vmpck"]) != (seqno + 1, msg_type + 1,
                                                                     self.vmpck_id):
            self._disable("response sequence number, type or VMPCK is wrong")
        self.seqno = seqno + 1
        return (plain, certs) if certs_len is not None else plain

    def _disable(self, why):
        self.vmpck = bytes(32)
        raise SnpGuestError(f"{why}; VMPCK{self.vmpck_id} disabled")


# -- the certificate table of extended reports (GHCB spec 56421, 4.1.8.1) ------------------
def cert_table(entries) -> bytes:
    """Entries (GUID, certificate bytes) -> {GUID, offset u32, length u32}...,
    a zero entry, then the certificates.  GUIDs in RFC 4122 byte order, as
    go-sev-guest reads them."""
    entries = list(entries)
    cursor = CERT_ENTRY_LEN * (len(entries) + 1)
    head, body = b"", b""
    for guid, cert in entries:
        head += uuid.UUID(str(guid)).bytes + (cursor + len(body)).to_bytes(4, "little") \
            + len(cert).to_bytes(4, "little")
        body += cert
    return head + bytes(CERT_ENTRY_LEN) + body


def parse_cert_table(data: bytes) -> dict:
    """{uuid.UUID: certificate bytes}."""
    out, pos = {}, 0
    while pos + CERT_ENTRY_LEN <= len(data):
        guid = uuid.UUID(bytes=bytes(data[pos:pos + 16]))
        off = int.from_bytes(data[pos + 16:pos + 20], "little")
        n = int.from_bytes(data[pos + 20:pos + 24], "little")
        if guid.int == 0 and off == 0 and n == 0:
            break
        out[guid] = bytes(data[off:off + n])
        pos += CERT_ENTRY_LEN
    return out
