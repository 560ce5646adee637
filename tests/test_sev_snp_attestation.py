"""SEV-SNP attestation and guest messages (issue 10 items 6 and 8): reports
signed by the simulated VCEK, derived keys, extended reports with the
certificate table, AES-256-GCM messages whose sequence numbers refuse
replays, the /dev/sev-guest-shaped guest API, and verification by tools
nobody here wrote (openssl for the X.509 chain and the report signature;
sev-attest-tool, AMD's sample, for our reading of the report format)."""
import json
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from snpfw import POLICY, launched_guest
from svmsim.sev import snp_api as A, snp_certs, snp_crypto, snp_report
from svmsim.sev.api import SevStatus as S
from svmsim.sev.snp_guest import (ARK_GUID, ASK_GUID, VCEK_GUID, SnpGuestDevice, SnpGuestError,
                                  cert_table, parse_cert_table)
from svmsim.sev.snp_messages import STATUS_INVALID_PARAM
from svmsim.vmm.snp_guest_request import SnpGuestRequests


def guest_device(vmpck_id=0, certs=b"", p_g=None):
    p, g = p_g or launched_guest()
    host = SnpGuestRequests(p.psp, g.gctx, p.page(), p.page(), certs)
    return p, g, host, SnpGuestDevice(g.private(0x3000), host.transport, vmpck_id)


def kds_table(fw):
    ark, ask = snp_certs.root_chain()
    return cert_table([(VCEK_GUID, snp_certs.der(fw.vcek_certificate())),
                       (ASK_GUID, snp_certs.der(ask)), (ARK_GUID, snp_certs.der(ark))])


# ---------------------------------------------------------------- reports
def test_report_fields_and_vcek_signature():
    p, g, host, dev = guest_device()
    report = dev.get_report(b"nonce".ljust(64, b"\0"))
    r = snp_report.parse(report)
    ctx = p.fw.guests[g.gctx]
    assert len(report) == 0x4A0 and r["version"] == 3 and r["signature_algo"] == 1
    assert r["report_data"] == b"nonce".ljust(64, b"\0") and r["measurement"] == ctx.ld
    assert (r["policy"], r["vmpl"], r["chip_id"]) == (POLICY, 0, p.m.amd_sp.chip_id)
    assert r["reported_tcb"] == r["current_tcb"] == r["launch_tcb"] == p.fw.CURRENT_TCB
    assert (r["current_major"], r["current_minor"], r["current_build"]) == (1, 55, 21)
    assert (r["cpuid_fam_id"], r["cpuid_mod_id"], r["cpuid_step"]) == (0x19, 0x01, 1)
    assert r["report_id_ma"] == b"\xff" * 32 and r["signer_info"] == 0
    vcek = p.fw.vcek_certificate().public_key()
    assert snp_report.verify(report, vcek)
    for i in (0, 0x50, 0x90, 0x1A0, 0x29F, 0x2A0, 0x2E8):
        bad = bytearray(report)
        bad[i] ^= 0x01
        assert not snp_report.verify(bytes(bad), vcek), i


def test_report_measurement_changes_with_any_launch_page():
    _, _, _, a = guest_device()
    from snpfw import SnpPlatform, cpuid_page
    from svmsim.sev.snp_api import PageType
    p = SnpPlatform()
    g = p.new_guest()
    g.add(0x1000, b"\x90" * 99 + b"\xcc")                      # one byte differs
    g.add(0x2000, bytes(range(256)) * 16)
    g.add(0x3000, page_type=PageType.SECRETS)
    g.add(0x4000, cpuid_page(p), PageType.CPUID)
    assert g.finish() == 0
    _, _, _, b = guest_device(p_g=(p, g))
    ma = snp_report.parse(a.get_report())["measurement"]
    mb = snp_report.parse(b.get_report())["measurement"]
    assert ma != mb


def test_report_for_a_vmpl_below_the_senders_is_invalid_param():
    """VMPCK1 speaks for VMPL1: it may ask for a VMPL1-3 report, not VMPL0."""
    p, g, host, dev = guest_device(vmpck_id=1)
    assert snp_report.parse(dev.get_report(vmpl=2))["vmpl"] == 2
    with pytest.raises(SnpGuestError) as e:
        dev.get_report(vmpl=0)
    assert e.value.fw_error == STATUS_INVALID_PARAM
    assert snp_report.parse(dev.get_report())["vmpl"] == 1        # the channel is still in step


def test_host_data_id_block_and_masks_in_the_report():
    from test_sev_snp_firmware import id_block_and_auth
    from snpfw import SnpPlatform
    p = SnpPlatform()
    g = p.new_guest()
    from svmsim.sev.snp_api import PageType
    g.add(0x3000, page_type=PageType.SECRETS)
    block, auth, raw_id, raw_author = id_block_and_auth(p.fw.guests[g.gctx].ld)
    b, a = p.page(block), p.page(auth)
    assert g.finish(id_block_paddr=b, id_auth_paddr=a, flags=3, host_data=b"H" * 32) == 0
    _, _, _, dev = guest_device(p_g=(p, g))
    r = snp_report.parse(dev.get_report())
    assert r["host_data"] == b"H" * 32 and r["family_id"] == b"F" * 16 and r["guest_svn"] == 7
    assert r["id_key_digest"] == snp_crypto.key_digest(raw_id)
    assert r["author_key_digest"] == snp_crypto.key_digest(raw_author) and r["signer_info"] == 1
    assert p.cmd(0xC9, "config", reported_tcb=p.fw.CURRENT_TCB, flags=3) == 0     # SNP_CONFIG
    r = snp_report.parse(dev.get_report())
    assert r["chip_id"] == bytes(64) and r["signature"] == bytes(0x200)
    assert r["signer_info"] == 1 | 2 | 7 << 2                      # MASK_CHIP_KEY, no signing key


def test_snp_config_reported_tcb_selects_the_vcek():
    p, g, host, dev = guest_device()
    older = p.fw.CURRENT_TCB - 1                                  # bootloader SPL 2 instead of 3
    assert p.cmd(0xC9, "config", reported_tcb=p.fw.CURRENT_TCB + (1 << 48)) == S.INVALID_PARAM
    assert p.cmd(0xC9, "config", reported_tcb=older) == 0
    r = dev.get_report()
    assert snp_report.parse(r)["reported_tcb"] == older
    cert = p.fw.vcek_certificate()
    assert snp_certs.kds_extensions(cert)["bl_spl"] == 2
    assert snp_report.verify(r, cert.public_key())
    assert not snp_report.verify(r, snp_certs.vcek_certificate(p.m.amd_sp.chip_secret, p.m.amd_sp.chip_id,
                                                               p.fw.CURRENT_TCB).public_key())


# ---------------------------------------------------------------- derived keys
def test_derived_keys_depend_on_what_is_selected():
    p, g, host, dev = guest_device()
    k0 = dev.get_derived_key()
    assert k0 == dev.get_derived_key() and len(k0) == 32
    assert dev.get_derived_key(guest_field_select=A.KEY_FIELD_MEASUREMENT) != k0
    assert dev.get_derived_key(vmpl=1) != k0
    tcb_key = dev.get_derived_key(guest_field_select=A.KEY_FIELD_TCB_VERSION, tcb_version=p.fw.CURRENT_TCB)
    assert tcb_key != k0
    other_chip = guest_device()[3].get_derived_key()
    assert other_chip == k0                           # same simulated chip seed, same inputs
    for bad in (dict(guest_svn=1), dict(vmpl=4), dict(root_key_select=1),
                dict(guest_field_select=1 << 6), dict(tcb_version=p.fw.CURRENT_TCB + 1)):
        with pytest.raises(SnpGuestError) as e:
            dev.get_derived_key(**bad)
        assert e.value.fw_error == STATUS_INVALID_PARAM, bad


def test_derived_key_of_vmpl1_cannot_ask_for_vmpl0():
    _, _, _, dev = guest_device(vmpck_id=1)
    with pytest.raises(SnpGuestError):
        dev.get_derived_key(vmpl=0)


# ---------------------------------------------------------------- the message channel
def test_replayed_and_reordered_messages_are_refused():
    """The firmware accepts only the next sequence number of each VMPCK: a
    replayed request (same seqno) and one that skips ahead are refused
    (INVALID_PARAM) and change nothing; the guest's next message works."""
    p, g, host, dev = guest_device()
    dev.get_report()
    sent = []
    host_transport = host.transport
    dev.transport = lambda m, c: (sent.append(m), host_transport(m, c))[1]
    dev.get_report()
    assert host.transport(sent[-1], None)[0] == S.INVALID_PARAM               # replay
    ahead = snp_crypto.seal_message(dev.vmpck, dev.seqno + 3, A.MsgType.REPORT_REQ,
                                    A.pack("report_req"), 0)
    assert host.transport(ahead, None)[0] == S.INVALID_PARAM                  # skips a number
    forged = bytearray(snp_crypto.seal_message(dev.vmpck, dev.seqno + 1, A.MsgType.REPORT_REQ,
                                               A.pack("report_req"), 0))
    forged[0x70] ^= 1
    assert host.transport(bytes(forged), None)[0] == S.INVALID_PARAM          # tampered ciphertext
    assert snp_report.parse(dev.get_report())["vmpl"] == 0
    assert host.log[-4:] == [S.INVALID_PARAM] * 3 + [0]


def test_vmpcks_are_separate_channels():
    p, g = launched_guest()
    host = SnpGuestRequests(p.psp, g.gctx, p.page(), p.page())
    d0 = SnpGuestDevice(g.private(0x3000), host.transport, 0)
    d3 = SnpGuestDevice(g.private(0x3000), host.transport, 3)
    for _ in range(2):
        assert snp_report.parse(d0.get_report())["vmpl"] == 0
    assert snp_report.parse(d3.get_report())["vmpl"] == 3       # its own sequence from 1


def test_a_forged_response_disables_the_vmpck():
    """A hypervisor that alters the firmware's answer: the device refuses it
    and wipes its VMPCK, as Linux's driver does."""
    p, g, host, dev = guest_device()

    def tamper(m, c):
        status, rsp, certs = host.transport(m, c)
        rsp = bytearray(rsp)
        rsp[0x80] ^= 1
        return status, bytes(rsp), certs
    dev.transport = tamper
    with pytest.raises(SnpGuestError, match="disabled"):
        dev.get_report()
    with pytest.raises(SnpGuestError, match="disabled"):
        dev.get_derived_key()


def test_guest_request_before_finish_and_with_a_hypervisor_response_page():
    from snpfw import SnpPlatform
    from svmsim.sev.snp_api import PageType, SnpCmd
    p = SnpPlatform()
    g = p.new_guest()
    g.add(0x3000, page_type=PageType.SECRETS)
    req, res = p.page(), p.fw_page()
    assert p.cmd(SnpCmd.GUEST_REQUEST, "guest_request", gctx_paddr=g.gctx, req_paddr=req,
                 res_paddr=res) == S.INVALID_GUEST_STATE
    assert g.finish() == 0
    assert p.cmd(SnpCmd.GUEST_REQUEST, "guest_request", gctx_paddr=g.gctx, req_paddr=req,
                 res_paddr=p.page()) == S.INVALID_PAGE_STATE
    assert p.cmd(SnpCmd.GUEST_REQUEST, "guest_request", gctx_paddr=g.gctx, req_paddr=req,
                 res_paddr=res) == S.INVALID_PARAM                              # not a message


# ---------------------------------------------------------------- extended reports
def test_extended_report_carries_the_vmms_certificate_table():
    p, g = launched_guest()
    table = kds_table(p.fw)
    _, _, host, dev = guest_device(certs=table, p_g=(p, g))
    with pytest.raises(SnpGuestError) as e:
        dev.get_ext_report(certs_len=100)
    assert e.value.vmm_error == 1 and e.value.certs_len == len(table)
    report, certs = dev.get_ext_report(certs_len=len(table))
    parsed = parse_cert_table(certs)
    assert set(parsed) == {VCEK_GUID, ASK_GUID, ARK_GUID}
    from cryptography import x509
    vcek = x509.load_der_x509_certificate(parsed[VCEK_GUID])
    assert snp_report.verify(report, vcek.public_key())
    ext = snp_certs.kds_extensions(vcek)
    assert ext["hwid"] == snp_report.parse(report)["chip_id"] and ext["snp_spl"] == 8


# ---------------------------------------------------------------- independent verifiers
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True)


@needs_openssl
def test_openssl_verifies_the_ark_ask_vcek_chain(tmp_path):
    p, g, host, dev = guest_device()
    ark, ask = snp_certs.root_chain()
    for name, cert in (("ark", ark), ("ask", ask), ("vcek", p.fw.vcek_certificate())):
        (tmp_path / f"{name}.pem").write_bytes(snp_certs.pem(cert))
    ok = openssl("verify", "-CAfile", str(tmp_path / "ark.pem"), "-untrusted", str(tmp_path / "ask.pem"),
                 str(tmp_path / "vcek.pem"))
    assert ok.returncode == 0, ok.stderr
    alone = openssl("verify", "-CAfile", str(tmp_path / "ark.pem"), str(tmp_path / "vcek.pem"))
    assert alone.returncode != 0                                   # the ASK is needed
    text = openssl("x509", "-in", str(tmp_path / "vcek.pem"), "-noout", "-text").stdout.decode()
    assert "svmsim simulated" in text and "rsassaPss" in text and "1.3.6.1.4.1.3704.1.4" in text


@needs_openssl
def test_openssl_verifies_the_report_signature_and_refuses_any_flipped_byte(tmp_path):
    p, g, host, dev = guest_device()
    report = dev.get_report(bytes(range(64)))
    vcek = tmp_path / "vcek.pem"
    vcek.write_bytes(snp_certs.pem(p.fw.vcek_certificate()))
    pub = tmp_path / "vcek_pub.pem"
    assert openssl("x509", "-in", str(vcek), "-pubkey", "-noout").returncode == 0
    pub.write_bytes(openssl("x509", "-in", str(vcek), "-pubkey", "-noout").stdout)

    def openssl_ok(rep):
        r = int.from_bytes(rep[0x2A0:0x2E8], "little")
        s = int.from_bytes(rep[0x2E8:0x330], "little")
        (tmp_path / "sig.der").write_bytes(encode_dss_signature(r, s))
        (tmp_path / "signed.bin").write_bytes(rep[:0x2A0])
        out = openssl("dgst", "-sha384", "-verify", str(pub), "-signature", str(tmp_path / "sig.der"),
                      str(tmp_path / "signed.bin"))
        return out.returncode == 0
    assert openssl_ok(report)
    for i in range(0, 0x2A0, 0x1F):                                # a byte in every region
        bad = bytearray(report)
        bad[i] ^= 0x80
        assert not openssl_ok(bytes(bad)), hex(i)


def _virtee_json(rep: bytes) -> str:
    """An ABI report as the JSON virtee/sev's AttestationReport (v2 layout) serialises."""
    def tcb(b):
        return {"bootloader": b[0], "tee": b[1], "_reserved": list(b[2:6]), "snp": b[6], "microcode": b[7]}

    def u(o, n):
        return int.from_bytes(rep[o:o + n], "little")
    return json.dumps({
        "version": u(0, 4), "guest_svn": u(4, 4), "policy": u(8, 8), "family_id": list(rep[0x10:0x20]),
        "image_id": list(rep[0x20:0x30]), "vmpl": u(0x30, 4), "sig_algo": u(0x34, 4),
        "current_tcb": tcb(rep[0x38:0x40]), "plat_info": u(0x40, 8), "_author_key_en": u(0x48, 4),
        "_reserved_0": u(0x4C, 4), "report_data": list(rep[0x50:0x90]), "measurement": list(rep[0x90:0xC0]),
        "host_data": list(rep[0xC0:0xE0]), "id_key_digest": list(rep[0xE0:0x110]),
        "author_key_digest": list(rep[0x110:0x140]), "report_id": list(rep[0x140:0x160]),
        "report_id_ma": list(rep[0x160:0x180]), "reported_tcb": tcb(rep[0x180:0x188]),
        "_reserved_1": list(rep[0x188:0x1A0]), "chip_id": list(rep[0x1A0:0x1E0]),
        "committed_tcb": tcb(rep[0x1E0:0x1E8]), "current_build": rep[0x1E8], "current_minor": rep[0x1E9],
        "current_major": rep[0x1EA], "_reserved_2": rep[0x1EB], "committed_build": rep[0x1EC],
        "committed_minor": rep[0x1ED], "committed_major": rep[0x1EE], "_reserved_3": rep[0x1EF],
        "launch_tcb": tcb(rep[0x1F0:0x1F8]), "_reserved_4": list(rep[0x1F8:0x2A0]),
        "signature": {"r": list(rep[0x2A0:0x2E8]), "s": list(rep[0x2E8:0x330]),
                      "_reserved": list(rep[0x330:0x4A0])}})


def _abi_bytes(sample_json: str) -> bytes:
    j = json.loads(sample_json)
    tcb = lambda t: bytes([t["bootloader"], t["tee"], *t["_reserved"], t["snp"], t["microcode"]])
    rep = snp_report.pack(
        version=j["version"], guest_svn=j["guest_svn"], policy=j["policy"], family_id=bytes(j["family_id"]),
        image_id=bytes(j["image_id"]), vmpl=j["vmpl"], signature_algo=j["sig_algo"],
        current_tcb=int.from_bytes(tcb(j["current_tcb"]), "little"), platform_info=j["plat_info"],
        signer_info=j["_author_key_en"], report_data=bytes(j["report_data"]),
        measurement=bytes(j["measurement"]), host_data=bytes(j["host_data"]),
        id_key_digest=bytes(j["id_key_digest"]), author_key_digest=bytes(j["author_key_digest"]),
        report_id=bytes(j["report_id"]), report_id_ma=bytes(j["report_id_ma"]),
        reported_tcb=int.from_bytes(tcb(j["reported_tcb"]), "little"), chip_id=bytes(j["chip_id"]),
        committed_tcb=int.from_bytes(tcb(j["committed_tcb"]), "little"),
        current_build=j["current_build"], current_minor=j["current_minor"], current_major=j["current_major"],
        committed_build=j["committed_build"], committed_minor=j["committed_minor"],
        committed_major=j["committed_major"], launch_tcb=int.from_bytes(tcb(j["launch_tcb"]), "little"),
        signature=bytes(j["signature"]["r"] + j["signature"]["s"] + j["signature"]["_reserved"]))
    return bytes(rep)


@pytest.mark.filterwarnings("ignore:Parsed a serial number")   # AMD's VCEK has a negative serial
def test_our_report_reading_agrees_with_sev_attest_tool_on_amds_sample():
    """sev-attest-tool (virtee/sev in Rust, with AMD's Genoa ARK/ASK built in)
    accepts AMD's sample report and refuses it with a flipped byte; svmsim's
    report layout and signature check give the same verdicts on the same
    bytes.  (It cannot check svmsim's own reports: it trusts only AMD's roots.)"""
    tool = pytest.importorskip("sev_attest_tool", reason="sev-attest-tool is not installed")
    from cryptography import x509
    sample = tool.SAMPLE_ATTESTATION
    vcek = x509.load_der_x509_certificate(tool.SAMPLE_VCEK).public_key()
    rep = _abi_bytes(sample)
    assert json.loads(_virtee_json(rep)) == json.loads(sample)      # the two layouts agree
    tool.verify_attestation_report(sample, tool.SAMPLE_VCEK)        # raises (PanicException) if not
    assert snp_report.verify(rep, vcek)
    bad = bytearray(rep)
    bad[0x50] ^= 1
    with pytest.raises(BaseException):
        tool.verify_attestation_report(_virtee_json(bytes(bad)), tool.SAMPLE_VCEK)
    assert not snp_report.verify(bytes(bad), vcek)
