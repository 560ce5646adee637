"""Checking an SEV-SNP attestation report as a relying party does, with the
certificate table that came with it (an extended report's): svmsim's own
checks, and the same checks done by ``openssl`` (a verifier svmsim did not
write).

svmsim's checks: the table holds a VCEK, an ASK and an ARK; the ARK is
svmsim's simulated root (``snp_certs.root_chain``: a real verifier pins
AMD's, which svmsim's reports never chain to); ARK -> ASK -> VCEK signatures
(RSA-PSS, SHA-384); the VCEK's HWID extension is the report's CHIP_ID and
its TCB extensions the report's REPORTED_TCB (so it is the right VCEK); the
report's ECDSA P-384 signature over bytes 0-29Fh verifies with the VCEK.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import snp_certs, snp_report
from .snp_guest import ARK_GUID, ASK_GUID, VCEK_GUID, parse_cert_table


@dataclass
class Verdict:
    """One check per line: (what, passed)."""
    checks: list = field(default_factory=list)

    def add(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok in self.checks)


def certificates(table: bytes) -> dict:
    """{"vcek"|"ask"|"ark": x509.Certificate} from a certificate table."""
    found = parse_cert_table(table)
    out = {}
    for name, guid in (("vcek", VCEK_GUID), ("ask", ASK_GUID), ("ark", ARK_GUID)):
        if guid in found:
            out[name] = x509.load_der_x509_certificate(found[guid])
    return out


def chain_ok(cert, issuer) -> bool:
    try:
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes, snp_certs.PSS,
                                   hashes.SHA384())
    except Exception:
        return False
    return True


def verify(report: bytes, table: bytes) -> Verdict:
    """svmsim's own checks of ``report`` with ``table``."""
    v = Verdict()
    certs = certificates(table)
    if not v.add("the certificate table holds a VCEK, an ASK and an ARK", len(certs) == 3):
        return v
    ark, ask = snp_certs.root_chain()
    v.add("its ARK is svmsim's simulated root (a real verifier pins AMD's)",
          snp_certs.der(certs["ark"]) == snp_certs.der(ark))
    v.add("ARK self-signed, ASK signed by the ARK, VCEK signed by the ASK",
          chain_ok(certs["ark"], certs["ark"]) and chain_ok(certs["ask"], certs["ark"])
          and chain_ok(certs["vcek"], certs["ask"]))
    fields = snp_report.parse(report)
    ext = snp_certs.kds_extensions(certs["vcek"])
    tcb = snp_certs.tcb_parts(fields["reported_tcb"])
    v.add("the VCEK is this chip's (HWID = CHIP_ID) for the REPORTED_TCB",
          ext.get("hwid") == fields["chip_id"] and all(ext.get(k) == n for k, n in tcb.items()))
    v.add("the report's signature verifies with the VCEK",
          snp_report.verify(report, certs["vcek"].public_key()))
    return v


def openssl_verify(report: bytes, table: bytes) -> Verdict:
    """The same chain and signature checks by the ``openssl`` command (its
    ``verify`` for the X.509 chain, ``dgst -sha384 -verify`` for the
    report, whose R and S are little-endian at 2A0h and 2E8h)."""
    v = Verdict()
    if not shutil.which("openssl"):
        v.add("openssl is installed", False)
        return v
    certs = certificates(table)
    if not v.add("the certificate table holds a VCEK, an ASK and an ARK", len(certs) == 3):
        return v
    with tempfile.TemporaryDirectory() as d:
        path = {name: os.path.join(d, f"{name}.pem") for name in ("ark", "ask", "vcek")}
        for name, cert in certs.items():
            with open(path[name], "wb") as f:
                f.write(snp_certs.pem(cert))
        run = lambda *args: subprocess.run(["openssl", *args], capture_output=True)  # noqa: E731
        v.add("openssl verify -CAfile ark.pem -untrusted ask.pem vcek.pem",
              run("verify", "-CAfile", path["ark"], "-untrusted", path["ask"], path["vcek"]).returncode == 0)
        pub = run("x509", "-in", path["vcek"], "-pubkey", "-noout")
        r = int.from_bytes(report[0x2A0:0x2E8], "little")
        s = int.from_bytes(report[0x2E8:0x330], "little")
        for name, data in (("vcek_pub.pem", pub.stdout), ("sig.der", encode_dss_signature(r, s)),
                           ("signed.bin", report[:snp_report.SIGNED_LEN])):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        out = run("dgst", "-sha384", "-verify", os.path.join(d, "vcek_pub.pem"), "-signature",
                  os.path.join(d, "sig.der"), os.path.join(d, "signed.bin"))
        v.add("openssl dgst -sha384 -verify vcek_pub.pem -signature sig.der report[0:2A0h]",
              pub.returncode == 0 and out.returncode == 0)
    return v
