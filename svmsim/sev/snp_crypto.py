"""SEV-SNP cryptography shared by the AMD-SP model and guest-side code: the
ABI's ECDSA P-384 formats, the launch digest's PAGE_INFO step, the AEAD of
guest messages and the derivation of guest keys.

Formats (AMD SEV-SNP ABI 56860, as Linux, go-sev-guest abi/ and
sev-snp-measure implement them; shared/docs/reference/sev-facts.md):

* signature: R[72] || S[72] little-endian, zero-padded to 0x200 bytes;
  ECDSA P-384 over SHA-384 of the signed bytes;
* public key: curve u32 (2 = P-384) || Qx[72] || Qy[72] little-endian,
  zero-padded to 0x404 bytes;
* launch digest step: LD' = SHA-384(PAGE_INFO), PAGE_INFO = LD || CONTENTS ||
  LENGTH 0x70 || PAGE_TYPE || IMI_PAGE || VMPL3/2/1 perms || 0 || GPA;
* guest message: AES-256-GCM under a VMPCK, IV = LE64(MSG_SEQNO) || 0^4,
  AAD = header bytes 30h-5Fh, the 16-byte tag at header offset 0.

Derived keys (MSG_KEY_REQ): the ABI names the inputs (root key, VMPL,
GUEST_FIELD_SELECT and the fields it selects, SVN, TCB) but not AMD's KDF;
svmsim uses NIST SP 800-108 counter mode with HMAC-SHA384 over those inputs
(``derive_guest_key``), so equal inputs give equal keys and any difference
gives an unrelated key, which is what guests rely on.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import snp_api as A
from .crypto import P384_ORDER

RS_LEN = 72


# -- ECDSA P-384 in the ABI's formats ----------------------------------------------
def _ecdsa():
    try:
        return ec.ECDSA(hashes.SHA384(), deterministic_signing=True)
    except TypeError:                 # cryptography < 44: randomised signatures
        return ec.ECDSA(hashes.SHA384())


def key_from_secret(secret: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-384 key derived from a secret (the simulated chip's fused secrets)."""
    d = int.from_bytes(hmac.new(secret, label.encode(), hashlib.sha512).digest(), "big")
    return ec.derive_private_key(d % (P384_ORDER - 1) + 1, ec.SECP384R1())


def sign(private: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """The ABI's 0x200-byte signature of ``data``."""
    r, s = decode_dss_signature(private.sign(bytes(data), _ecdsa()))
    return (r.to_bytes(RS_LEN, "little") + s.to_bytes(RS_LEN, "little")).ljust(A.SIG_LEN, b"\0")


def verify(public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    r = int.from_bytes(signature[:RS_LEN], "little")
    s = int.from_bytes(signature[RS_LEN:2 * RS_LEN], "little")
    try:
        public.verify(encode_dss_signature(r, s), bytes(data), ec.ECDSA(hashes.SHA384()))
        return True
    except (InvalidSignature, ValueError):
        return False


def pubkey_bytes(public: ec.EllipticCurvePublicKey) -> bytes:
    """The ABI's 0x404-byte public key."""
    n = public.public_numbers()
    return (struct.pack("<I", A.CURVE_P384) + n.x.to_bytes(RS_LEN, "little")
            + n.y.to_bytes(RS_LEN, "little")).ljust(A.PUBKEY_LEN, b"\0")


def pubkey_from_bytes(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """The key in a 0x404-byte structure, or None if it is not a P-384 point."""
    if struct.unpack_from("<I", raw)[0] != A.CURVE_P384:
        return None
    x = int.from_bytes(raw[4:4 + RS_LEN], "little")
    y = int.from_bytes(raw[4 + RS_LEN:4 + 2 * RS_LEN], "little")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    except ValueError:
        return None


def key_digest(raw_pubkey: bytes) -> bytes:
    """ID_KEY_DIGEST / AUTHOR_KEY_DIGEST: SHA-384 of the 0x404-byte key."""
    return hashlib.sha384(bytes(raw_pubkey[:A.PUBKEY_LEN])).digest()


# -- the launch digest ------------------------------------------------------------------
def page_info(ld: bytes, contents: bytes, page_type: int, gpa: int, imi: int = 0,
              vmpl1: int = 0, vmpl2: int = 0, vmpl3: int = 0) -> bytes:
    """PAGE_INFO (ABI 8.17.2, table 67) of one measured page."""
    return A.PAGE_INFO.pack(ld, contents, A.PAGE_INFO_LEN, page_type, imi, vmpl3, vmpl2, vmpl1, gpa)


def extend_digest(ld: bytes, *args, **kw) -> bytes:
    return hashlib.sha384(page_info(ld, *args, **kw)).digest()


# -- guest messages ---------------------------------------------------------------------
class MessageError(ValueError):
    """A guest message that is malformed or does not authenticate."""


def _iv(seqno: int) -> bytes:
    return struct.pack("<Q", seqno) + bytes(4)


def seal_message(vmpck: bytes, seqno: int, msg_type: int, payload: bytes, vmpck_id: int,
                 msg_version: int = 1) -> bytes:
    """A whole guest message (header || encrypted payload)."""
    if len(payload) > A.MSG_PAYLOAD_MAX:
        raise MessageError("payload too large for one message page")
    hdr = bytearray(A.pack("msg_hdr", msg_seqno=seqno, algo=A.AEAD_AES_256_GCM,
                           hdr_version=A.MSG_HDR_VERSION, hdr_sz=A.MSG_HDR_LEN, msg_type=msg_type,
                           msg_version=msg_version, msg_sz=len(payload), msg_vmpck=vmpck_id))
    sealed = AESGCM(vmpck).encrypt(_iv(seqno), bytes(payload), bytes(hdr[A.MSG_AAD]))
    hdr[0:16] = sealed[-16:]
    return bytes(hdr) + sealed[:-16]


def message_header(msg: bytes) -> dict:
    """The header fields; MessageError if it is not a version-1 AES-256-GCM header."""
    if len(msg) < A.MSG_HDR_LEN:
        raise MessageError("shorter than a message header")
    h = A.unpack("msg_hdr", msg)
    if (h["algo"], h["hdr_version"], h["hdr_sz"]) != (A.AEAD_AES_256_GCM, A.MSG_HDR_VERSION,
                                                      A.MSG_HDR_LEN):
        raise MessageError("unsupported header (algorithm, version or size)")
    if (h["msg_sz"] > A.MSG_PAYLOAD_MAX or h["msg_vmpck"] > 3 or h["_r2"]
            or any(h["_r1"]) or any(h["_r3"])):
        raise MessageError("header field out of range")
    return h


def open_message(vmpck: bytes, msg: bytes) -> tuple[dict, bytes]:
    """(header, plaintext payload) of a message sealed under ``vmpck``."""
    h = message_header(msg)
    body = bytes(msg[A.MSG_HDR_LEN:A.MSG_HDR_LEN + h["msg_sz"]])
    if len(body) != h["msg_sz"]:
        raise MessageError("message shorter than MSG_SZ")
    try:
        plain = AESGCM(vmpck).decrypt(_iv(h["msg_seqno"]), body + h["authtag"][:16],
                                      bytes(msg[A.MSG_AAD]))
    except InvalidTag:
        raise MessageError("authentication tag does not verify") from None
    return h, plain


# -- derived keys -----------------------------------------------------------------------
def kdf_sha384(key: bytes, label: bytes, context: bytes, length: int = 32) -> bytes:
    """NIST SP 800-108 counter mode, PRF = HMAC-SHA384."""
    out, i = b"", 1
    while len(out) < length:
        out += hmac.new(key, struct.pack("<I", i) + label + b"\0" + context
                        + struct.pack("<I", 8 * length), hashlib.sha384).digest()
        i += 1
    return out[:length]


def derive_guest_key(root: bytes, vmpl: int, field_select: int, facts: dict) -> bytes:
    """MSG_KEY_REQ's 32-byte key: the root key mixed with the VMPL, the
    selection mask and each selected fact (``facts``: policy, image_id,
    family_id, measurement, guest_svn, tcb_version)."""
    ctx = struct.pack("<IQ", vmpl, field_select)
    for bit, name in ((A.KEY_FIELD_POLICY, "policy"), (A.KEY_FIELD_IMAGE_ID, "image_id"),
                      (A.KEY_FIELD_FAMILY_ID, "family_id"), (A.KEY_FIELD_MEASUREMENT, "measurement"),
                      (A.KEY_FIELD_GUEST_SVN, "guest_svn"), (A.KEY_FIELD_TCB_VERSION, "tcb_version")):
        if field_select & bit:
            v = facts[name]
            ctx += v if isinstance(v, (bytes, bytearray)) else struct.pack("<Q", v)
    return kdf_sha384(root, b"svmsim snp derived key", ctx)
