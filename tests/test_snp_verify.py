"""A relying party's checks of an extended attestation report
(svmsim/sev/snp_verify.py): svmsim's own and openssl's, on a report from the
AMD-SP's SNP firmware with the VMM's certificate table; a changed report
byte, another chip's VCEK or a table without the ASK fails them."""
import shutil

import pytest

from snpfw import launched_guest
from svmsim.sev import snp_certs, snp_verify
from svmsim.sev.snp_guest import ARK_GUID, VCEK_GUID, SnpGuestDevice, cert_table
from svmsim.vmm.snp_guest_request import SnpGuestRequests


def extended_report(data=bytes(range(64))):
    p, g = launched_guest()
    ark, ask = snp_certs.root_chain()
    table = cert_table([(VCEK_GUID, snp_certs.der(p.fw.vcek_certificate())),
                        (snp_verify.ASK_GUID, snp_certs.der(ask)), (ARK_GUID, snp_certs.der(ark))])
    host = SnpGuestRequests(p.psp, g.gctx, p.page(), p.page(), table)
    dev = SnpGuestDevice(g.private(0x3000), host.transport)
    return dev.get_ext_report(data, certs_len=len(table))


def test_svmsims_checks_pass_and_name_each_step():
    report, table = extended_report()
    v = snp_verify.verify(report, table)
    assert v.ok and len(v.checks) == 5, v.checks


def test_a_changed_byte_or_a_missing_ask_fails():
    report, table = extended_report()
    bad = bytearray(report)
    bad[0x50] ^= 1                                      # REPORT_DATA
    assert not snp_verify.verify(bytes(bad), table).ok
    vcek_only = cert_table([(VCEK_GUID, snp_verify.certificates(table)["vcek"].public_bytes(
        snp_certs.serialization.Encoding.DER))])
    assert not snp_verify.verify(report, vcek_only).ok


def test_another_chips_vcek_is_refused():
    report, table = extended_report()
    other = snp_certs.vcek_certificate(b"another chip secret".ljust(32, b"\0"), bytes(64), 0)
    ark, ask = snp_certs.root_chain()
    swapped = cert_table([(VCEK_GUID, snp_certs.der(other)), (snp_verify.ASK_GUID, snp_certs.der(ask)),
                          (ARK_GUID, snp_certs.der(ark))])
    v = snp_verify.verify(report, swapped)
    assert not v.ok and [ok for _, ok in v.checks][3:] == [False, False]


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_openssl_agrees():
    report, table = extended_report()
    assert snp_verify.openssl_verify(report, table).ok
    bad = bytearray(report)
    bad[0x90] ^= 1                                      # MEASUREMENT
    v = snp_verify.openssl_verify(bytes(bad), table)
    assert [ok for _, ok in v.checks] == [True, True, False]
