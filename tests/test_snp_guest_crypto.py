"""The guest runtime's AES-256-GCM (tests/guests/lib/aesgcm.c), which seals
SEV-SNP guest messages under a VMPCK, against Python's cryptography (NIST
SP 800-38D), run as a bare-metal kernel on svmsim."""
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import guestbuild
from svmsim.machine import Machine


def test_runtime_aes_gcm_matches_cryptography(tmp_path):
    out = tmp_path / "serial"
    with open(out, "wb") as f:
        m = Machine(mem_size="64M", serial_out=f)
        m.load_kernel(str(guestbuild.build_guest("aesgcm")))
        result = m.run(max_insns=50_000_000)
    assert result.status == guestbuild.STATUS_PASS, result.reason
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("aesgcm ")]
    key, iv = bytes(range(32)), bytes(0xA0 + i for i in range(12))
    aad = bytes(3 * i for i in range(48))
    pt = bytes((7 * i + 1) & 0xFF for i in range(100))
    assert len(lines) == 5
    for case, line in enumerate(lines):
        _, n, *rest = line.split()
        n = int(n)
        sealed = AESGCM(key).encrypt(iv, pt[:n], aad if case & 1 else b"")
        ct, tag, opens, refused = rest if n else ("", *rest)
        assert (ct, tag) == (sealed[:-16].hex(), sealed[-16:].hex()), line
        assert (opens, refused) == ("opens", "refused")


def test_runtime_guest_messages_match_the_firmwares(tmp_path):
    """lib/snp_msg.c seals a MSG_REPORT_REQ that svmsim's firmware code opens
    (header, AEAD over bytes 30h-5Fh, IV = sequence number), and opens an
    answer the firmware code sealed; a wrong sequence number or a changed
    byte is refused."""
    from svmsim.sev import snp_api as A
    from svmsim.sev.snp_crypto import open_message, seal_message
    vmpck = bytes(0x40 + i for i in range(32))
    answer = seal_message(vmpck, 2, A.MsgType.REPORT_RSP, bytes(range(200)), 0)
    module = tmp_path / "answer.bin"
    module.write_bytes(answer)
    out = tmp_path / "serial"
    with open(out, "wb") as f:
        m = Machine(mem_size="64M", serial_out=f)
        m.load_kernel(str(guestbuild.build_guest("snp_msg")), modules=[(str(module), "")])
        result = m.run(max_insns=50_000_000)
    assert result.status == guestbuild.STATUS_PASS, result.reason
    lines = dict(ln.split(" ", 1) for ln in out.read_text().splitlines() if " " in ln)
    header, payload = open_message(vmpck, bytes.fromhex(lines["request"]))
    assert (header["msg_seqno"], header["msg_type"], header["msg_vmpck"]) == (1, A.MsgType.REPORT_REQ, 0)
    assert A.unpack("report_req", payload)["user_data"] == bytes(range(64))
    assert bytes.fromhex(lines["answer"]) == bytes(range(200))
    assert (lines["wrong"], lines["flipped"]) == ("seqno refused", "byte refused")
