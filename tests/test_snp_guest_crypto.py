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
