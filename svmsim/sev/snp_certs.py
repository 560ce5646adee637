"""svmsim's simulated AMD key distribution for SEV-SNP: the ARK -> ASK -> VCEK
X.509 chain that verifies attestation reports (issue 10 item 6).

Shaped as AMD's (go-sev-guest kds/, verify/; sev-facts.md "Certificate
chain"): the ARK is a self-signed RSA-4096 certificate, the ASK an RSA-4096
certificate the ARK signs, the VCEK an ECDSA P-384 key certified by the ASK;
the certificate signatures are RSA-PSS with SHA-384 and a 48-byte salt.  The
VCEK certificate carries AMD's KDS extensions (1.3.6.1.4.1.3704.1.*): struct
version, product name, the TCB's security patch levels (bootloader, TEE,
SNP, reserved 4-7, microcode) as INTEGERs and the chip's HWID (its CHIP_ID)
as a 64-byte OCTET STRING.

Not AMD's: every subject names "svmsim simulated" and the ARK/ASK private
keys are published in ``snp_root_keys``.  A VCEK is derived per chip and
TCB version, as AMD's firmware derives it, from the simulated chip's secret.
"""
from __future__ import annotations

import datetime
import hashlib
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID, ObjectIdentifier

from . import snp_root_keys
from .snp_crypto import key_from_secret

KDS_OID = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION, OID_PRODUCT_NAME, OID_HWID = f"{KDS_OID}.1", f"{KDS_OID}.2", f"{KDS_OID}.4"
# TCB parts in the order of their OIDs 3.1-3.8 and their byte in TCB_VERSION (Milan/Genoa).
TCB_PARTS = (("bl_spl", "3.1", 0), ("tee_spl", "3.2", 1), ("snp_spl", "3.3", 6),
             ("spl_4", "3.4", 2), ("spl_5", "3.5", 3), ("spl_6", "3.6", 4),
             ("spl_7", "3.7", 5), ("ucode_spl", "3.8", 7))
PRODUCT = "Milan"
PRODUCT_NAME = "Milan-B0"
ORG = "svmsim (simulated, NOT AMD)"
NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
NOT_AFTER = datetime.datetime(2049, 1, 1, tzinfo=datetime.timezone.utc)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def tcb_parts(tcb: int) -> dict:
    """TCB_VERSION (u64) -> {part name: value}."""
    return {name: (tcb >> (8 * byte)) & 0xFF for name, _, byte in TCB_PARTS}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "svmsim simulated SEV-SNP")])


def _rsa(pem: bytes):
    return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)


def _builder(subject, issuer, public_key, serial):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(serial)
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER))


def _ca(b, issuer_key):
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    b = b.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=True, crl_sign=True,
                                      encipher_only=False, decipher_only=False), critical=True)
    return b.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)


@lru_cache(maxsize=None)
def root_chain() -> tuple:
    """(ARK certificate, ASK certificate), built once per process."""
    ark_key, ask_key = _rsa(snp_root_keys.ARK_PRIVATE_PEM), _rsa(snp_root_keys.ASK_PRIVATE_PEM)
    ark_name = _name(f"svmsim simulated ARK-{PRODUCT}")
    ark = _ca(_builder(ark_name, ark_name, ark_key.public_key(), 1), ark_key)
    ask = _ca(_builder(_name(f"svmsim simulated SEV-{PRODUCT}"), ark_name, ask_key.public_key(), 2),
              ark_key)
    return ark, ask


def _der_int(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 8) // 8 or 1, "big")
    return bytes([0x02, len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + length + body


def _kds_extensions(chip_id: bytes, tcb: int) -> list:
    exts = [(OID_STRUCT_VERSION, _der_int(1)),
            (OID_PRODUCT_NAME, _der(0x16, PRODUCT_NAME.encode())),        # IA5String
            (OID_HWID, _der(0x04, bytes(chip_id)))]                      # OCTET STRING
    parts = tcb_parts(tcb)
    exts += [(f"{KDS_OID}.{oid}", _der_int(parts[name])) for name, oid, _ in TCB_PARTS]
    return [x509.UnrecognizedExtension(ObjectIdentifier(oid), value) for oid, value in exts]


def vcek_private_key(chip_secret: bytes, tcb: int):
    """The VCEK of a chip at a TCB version (AMD derives it from the chip's
    fused secret and the TCB: a newer TCB gives a new key)."""
    return key_from_secret(chip_secret, f"svmsim VCEK tcb={tcb:016x}")


@lru_cache(maxsize=64)
def vcek_certificate(chip_secret: bytes, chip_id: bytes, tcb: int) -> x509.Certificate:
    """What AMD's KDS would serve for this chip and TCB (here svmsim's)."""
    _, ask = root_chain()
    ask_key = _rsa(snp_root_keys.ASK_PRIVATE_PEM)
    serial = int.from_bytes(hashlib.sha256(chip_id + tcb.to_bytes(8, "little")).digest()[:16], "big")
    b = _builder(_name("svmsim simulated SEV-VCEK"), ask.subject,
                 vcek_private_key(chip_secret, tcb).public_key(), serial)
    for ext in _kds_extensions(chip_id, tcb):
        b = b.add_extension(ext, critical=False)
    return b.sign(ask_key, hashes.SHA384(), rsa_padding=PSS)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def kds_extensions(cert: x509.Certificate) -> dict:
    """The KDS extensions of a VCEK certificate: {'struct_version', 'product_name',
    'hwid', 'bl_spl', ...} (for checks and the demo)."""
    out = {}
    for ext in cert.extensions:
        oid, raw = ext.oid.dotted_string, getattr(ext.value, "value", b"")
        if not oid.startswith(KDS_OID + "."):
            continue
        body = raw[2:] if raw[1] < 0x80 else raw[2 + (raw[1] & 0x7F):]
        if oid == OID_HWID:
            out["hwid"] = body
        elif oid == OID_PRODUCT_NAME:
            out["product_name"] = body.decode()
        elif oid == OID_STRUCT_VERSION:
            out["struct_version"] = int.from_bytes(body, "big")
        else:
            for name, sub, _ in TCB_PARTS:
                if oid == f"{KDS_OID}.{sub}":
                    out[name] = int.from_bytes(body, "big")
    return out
