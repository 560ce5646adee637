"""The messages an SNP guest sends the AMD-SP through SNP_GUEST_REQUEST (ABI
chapter 7): MSG_REPORT_REQ and MSG_KEY_REQ (issue 10 item 6).

The guest's VMPL is the VMPCK it sealed the message with (VMPCKn belongs
to VMPLn).  A request the message carries correctly but whose contents the
firmware refuses is answered with a response whose STATUS is INVALID_PARAM
(16h), as the ABI's MSG_REPORT_RSP / MSG_KEY_RSP define it; a message type
the firmware does not serve gets no answer (the command fails).
"""
from __future__ import annotations

import hashlib
import hmac

from . import snp_api as A
from .snp_api import MsgType
from .snp_crypto import derive_guest_key

STATUS_SUCCESS, STATUS_INVALID_PARAM = 0x00, 0x16


def answer(fw, g, hdr: dict, payload: bytes):
    """(response type, response payload) or None."""
    handler = _HANDLERS.get(hdr["msg_type"])
    if handler is None or hdr["msg_version"] != 1:
        return None
    return hdr["msg_type"] + 1, handler(fw, g, hdr["msg_vmpck"], payload)


def _report(fw, g, vmpl, payload):
    """MSG_REPORT_REQ {REPORT_DATA[64], VMPL u32, reserved[28]}: the VMPL asked
    for may not be below the sender's."""
    if len(payload) < A.buffer_size("report_req"):
        return A.pack("report_rsp", status=STATUS_INVALID_PARAM)
    req = A.unpack("report_req", payload)
    if req["vmpl"] > 3 or req["vmpl"] < vmpl or any(req["_r"]) or g.vcek_disabled:
        return A.pack("report_rsp", status=STATUS_INVALID_PARAM)
    report = fw.attestation_report(g, req["user_data"], req["vmpl"])
    return A.pack("report_rsp", status=STATUS_SUCCESS, report_size=len(report)) + report


def _key(fw, g, vmpl, payload):
    """MSG_KEY_REQ: a key derived from the chip's VCEK secret for a TCB no newer
    than the current one, a VMPL no lower than the sender's, an SVN no
    higher than the guest's, mixing in the guest facts GUEST_FIELD_SELECT
    names.  The VMRK root (migration agents) is not modelled."""
    bad = A.pack("key_rsp", status=STATUS_INVALID_PARAM)
    if len(payload) < A.buffer_size("key_req"):
        return bad
    req = A.unpack("key_req", payload)
    select = req["guest_field_select"]
    from .snp_firmware import _tcb_le
    if (req["root_key_select"] != A.KEY_ROOT_VCEK or req["_r"] or select & ~A.KEY_FIELD_MASK
            or not vmpl <= req["vmpl"] <= 3 or req["guest_svn"] > g.guest_svn
            or not _tcb_le(req["tcb_version"], fw.CURRENT_TCB) or g.vcek_disabled):
        return bad
    tcb = req["tcb_version"] if select & A.KEY_FIELD_TCB_VERSION else fw.CURRENT_TCB
    root = hmac.new(fw.sev.chip_secret, b"svmsim VCEK secret" + tcb.to_bytes(8, "little"),
                    hashlib.sha384).digest()
    facts = dict(policy=g.policy, image_id=g.image_id, family_id=g.family_id, measurement=g.ld,
                 guest_svn=req["guest_svn"], tcb_version=req["tcb_version"])
    return A.pack("key_rsp", status=STATUS_SUCCESS,
                  key=derive_guest_key(root, req["vmpl"], select, facts))


_HANDLERS = {MsgType.REPORT_REQ: _report, MsgType.KEY_REQ: _key}
