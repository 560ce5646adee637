"""The SEV-SNP ATTESTATION_REPORT (ABI 56860 table "ATTESTATION_REPORT
Structure", version 3; layout as go-sev-guest abi/abi.go and virtee/sev read
it; sev-facts.md), declared once as data, and its signature.

0x4A0 bytes, little-endian; the signature (ECDSA P-384 with SHA-384, R and S
little-endian, 72 bytes each) covers bytes 0-29Fh and sits at 2A0h.
"""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric import ec

from . import snp_crypto

REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
VERSION = 3

# name -> (offset, size); integers are little-endian of that size, others bytes.
FIELDS = {
    "version": (0x00, 4), "guest_svn": (0x04, 4), "policy": (0x08, 8),
    "family_id": (0x10, 16), "image_id": (0x20, 16), "vmpl": (0x30, 4),
    "signature_algo": (0x34, 4), "current_tcb": (0x38, 8), "platform_info": (0x40, 8),
    "signer_info": (0x48, 4), "report_data": (0x50, 64), "measurement": (0x90, 48),
    "host_data": (0xC0, 32), "id_key_digest": (0xE0, 48), "author_key_digest": (0x110, 48),
    "report_id": (0x140, 32), "report_id_ma": (0x160, 32), "reported_tcb": (0x180, 8),
    "cpuid_fam_id": (0x188, 1), "cpuid_mod_id": (0x189, 1), "cpuid_step": (0x18A, 1),
    "chip_id": (0x1A0, 64), "committed_tcb": (0x1E0, 8),
    "current_build": (0x1E8, 1), "current_minor": (0x1E9, 1), "current_major": (0x1EA, 1),
    "committed_build": (0x1EC, 1), "committed_minor": (0x1ED, 1), "committed_major": (0x1EE, 1),
    "launch_tcb": (0x1F0, 8), "signature": (SIGNED_LEN, 0x200),
}
BYTES_FIELDS = {"family_id", "image_id", "report_data", "measurement", "host_data", "id_key_digest",
                "author_key_digest", "report_id", "report_id_ma", "chip_id", "signature"}

# SIGNER_INFO: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY.
SIGNER_AUTHOR_KEY_EN, SIGNER_MASK_CHIP_KEY = 1 << 0, 1 << 1
SIGNING_KEY_VCEK, SIGNING_KEY_NONE = 0, 7


def pack(**values) -> bytearray:
    """An unsigned report from field values (missing fields are zero)."""
    out = bytearray(REPORT_LEN)
    for name, value in values.items():
        off, size = FIELDS[name]
        raw = bytes(value) if name in BYTES_FIELDS else int(value).to_bytes(size, "little")
        if len(raw) != size:
            raise ValueError(f"report field {name} is {size} bytes, got {len(raw)}")
        out[off:off + size] = raw
    return out


def parse(report: bytes) -> dict:
    if len(report) < REPORT_LEN:
        raise ValueError(f"an attestation report is {REPORT_LEN:#x} bytes")
    out = {}
    for name, (off, size) in FIELDS.items():
        raw = bytes(report[off:off + size])
        out[name] = raw if name in BYTES_FIELDS else int.from_bytes(raw, "little")
    return out


def sign(report: bytearray, private: ec.EllipticCurvePrivateKey) -> bytes:
    report[SIGNED_LEN:REPORT_LEN] = snp_crypto.sign(private, report[:SIGNED_LEN])
    return bytes(report)


def verify(report: bytes, public: ec.EllipticCurvePublicKey) -> bool:
    """The report's signature checks out with ``public`` (a VCEK)."""
    if len(report) != REPORT_LEN or struct.unpack_from("<I", report, 0x34)[0] != 1:
        return False
    return snp_crypto.verify(public, report[:SIGNED_LEN], report[SIGNED_LEN:])


def tcb_str(tcb: int) -> str:
    from .snp_certs import tcb_parts
    p = tcb_parts(tcb)
    return f"{tcb:#018x} (BL {p['bl_spl']}, TEE {p['tee_spl']}, SNP {p['snp_spl']}, ucode {p['ucode_spl']})"
