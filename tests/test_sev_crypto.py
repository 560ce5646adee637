"""SEV cryptography: the vectors of shared/docs/reference/sev-facts.md section 1
(virtee/sev's unit tests, which AMD's firmware agrees with), the certificate
format and the guest owner's helpers."""
import hashlib
import struct

import pytest

from svmsim.sev import crypto as sc
from svmsim.sev.crypto import Algo, GuestOwner, SevCert, Usage

WRAP_TK = bytes.fromhex("2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4")
WRAP_MAC = bytes.fromhex("3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d")
POLICY_MAC = bytes.fromhex("aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af")
MASTER = bytes.fromhex("ab4d269fcc62bedb4511d56c386ce706")
MEAS_TIK = bytes.fromhex("66320db73158a35a255d051758e95ed4")
MEAS_MNONCE = bytes.fromhex("4fbe0bedbad6c86ae8f68971d103e554")
MEASURE = bytes.fromhex("6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea")
EMPTY_SHA256 = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_kdf_master_secret_vector():
    assert sc.derive_master_secret(bytes(16), bytes(16)) == MASTER
    assert sc.kdf(bytes(16), "sev-master-secret", bytes(16), 16) == MASTER


def test_kdf_is_counter_mode_with_little_endian_words():
    key, label, ctx = b"k" * 16, b"lbl", b"ctx"
    blocks = [sc.hmac_sha256(key, struct.pack("<I", i) + label + b"\0" + ctx + struct.pack("<I", 8 * 40))
              for i in (1, 2)]
    assert sc.kdf(key, label, ctx, 40) == (blocks[0] + blocks[1])[:40]


def test_session_vectors_all_zero():
    blob = sc.make_session(bytes(16), bytes(16), bytes(16), bytes(16), bytes(16), 0)
    assert blob.wrap_tk == WRAP_TK
    assert blob.wrap_mac == WRAP_MAC
    assert blob.policy_mac == POLICY_MAC
    assert blob.nonce == bytes(16) and blob.wrap_iv == bytes(16)
    assert len(blob.pack()) == sc.SESSION_LEN == 0x80
    assert sc.SessionBlob.unpack(blob.pack()) == blob


def test_policy_mac_vector():
    assert sc.policy_mac(bytes(16), 0) == POLICY_MAC
    assert sc.hmac_sha256(bytes(16), bytes(4)) == POLICY_MAC


def test_open_session_unwraps_and_checks_both_macs():
    blob = sc.make_session(bytes(16), bytes(16), bytes(16), bytes(16), bytes(16), 0)
    assert sc.open_session(bytes(16), blob, 0) == (bytes(16), bytes(16))
    bad = sc.SessionBlob(blob.nonce, blob.wrap_tk, blob.wrap_iv,
                         bytes([blob.wrap_mac[0] ^ 1]) + blob.wrap_mac[1:], blob.policy_mac)
    with pytest.raises(sc.SessionError) as e:
        sc.open_session(bytes(16), bad, 0)
    assert e.value.field == "wrap_mac"
    with pytest.raises(sc.SessionError) as e:
        sc.open_session(bytes(16), blob, 1)          # the VMM changed the policy
    assert e.value.field == "policy_mac"
    with pytest.raises(sc.SessionError):
        sc.open_session(b"\1" * 16, blob, 0)         # another shared secret


def test_measurement_vector():
    assert sc.launch_digest() == EMPTY_SHA256
    m = sc.launch_measurement(MEAS_TIK, 0x00, 0x12, 0x0F, 0, EMPTY_SHA256, MEAS_MNONCE)
    assert m == MEASURE
    owner = GuestOwner(0, tek=bytes(16), tik=MEAS_TIK)
    assert owner.verify_measurement(MEASURE + MEAS_MNONCE, 0, 0x12, 0x0F, EMPTY_SHA256)
    assert not owner.verify_measurement(MEASURE + MEAS_MNONCE, 0, 0x12, 0x10, EMPTY_SHA256)
    assert not owner.verify_measurement(MEASURE + bytes(16), 0, 0x12, 0x0F, EMPTY_SHA256)


def test_measurement_formula_layout():
    tik, ld, mn = b"t" * 16, b"d" * 32, b"n" * 16
    msg = bytes([4, 0, 24, 1]) + struct.pack("<I", 0x30001) + ld + mn
    assert sc.launch_measurement(tik, 0, 24, 1, 0x30001, ld, mn) == sc.hmac_sha256(tik, msg)


def test_secret_packet_format():
    tek, tik, iv, measure = b"E" * 16, b"I" * 16, b"V" * 16, b"M" * 32
    secret = b"the disk key: 0123456789abcdef!!"
    hdr, trans = sc.build_secret_packet(tek, tik, secret, measure, iv)
    h = sc.PacketHeader.unpack(hdr)
    assert len(hdr) == sc.PACKET_HEADER_LEN and h.flags == 0 and h.iv == iv
    assert sc.aes128_ctr(tek, iv, trans) == secret and trans != secret
    want = sc.hmac_sha256(tik, b"\x01" + bytes(4) + iv + struct.pack("<II", 32, 32) + trans + measure)
    assert h.mac == want
    # before API 0.17 the MEASURE term is left out
    old = sc.PacketHeader.unpack(sc.build_secret_packet(tek, tik, secret, measure, iv, api=(0, 16))[0])
    assert old.mac == sc.hmac_sha256(tik, b"\x01" + bytes(4) + iv + struct.pack("<II", 32, 32) + trans)


def test_wrap_is_aes_ctr_of_tek_tik():
    kek, iv, tek, tik = b"k" * 16, b"i" * 16, b"e" * 16, b"t" * 16
    w = sc.wrap_tk(kek, iv, tek, tik)
    assert sc.unwrap_tk(kek, iv, w) == (tek, tik)
    assert sc.wrap_mac(b"x" * 16, w) == sc.hmac_sha256(b"x" * 16, w)


def test_certificate_format_round_trip_and_signatures():
    signer = sc.private_key_from_seed(b"test", "signer")
    subject = sc.private_key_from_seed(b"test", "subject")
    scert = SevCert(Usage.PEK, Algo.ECDSA_SHA256, signer.public_key(), 0, 24)
    cert = SevCert(Usage.PDH, Algo.ECDH_SHA256, subject.public_key(), 0, 24)
    cert.sign_with(Usage.PEK, signer)
    raw = cert.pack()
    assert len(raw) == sc.CERT_LEN == 0x824
    assert struct.unpack_from("<IBBBBII", raw) == (1, 0, 24, 0, 0, 0x1003, 3)
    assert struct.unpack_from("<I", raw, 0x10)[0] == 2                 # P-384
    assert struct.unpack_from("<II", raw, 0x414) == (0x1002, 2)        # signed by PEK, ECDSA
    assert struct.unpack_from("<II", raw, 0x61C) == (0, 0)             # empty slot
    x = int.from_bytes(raw[0x14:0x14 + 72], "little")
    assert x == subject.public_key().public_numbers().x
    back = SevCert.unpack(raw)
    assert back.same_key(cert) and back.verify_signed_by(scert)
    tampered = bytearray(raw)
    tampered[0x05] ^= 1                                                # api_minor, signed
    assert not SevCert.unpack(bytes(tampered)).verify_signed_by(scert)
    with pytest.raises(sc.CertError):
        SevCert.unpack(raw[:0x800])
    bad_point = bytearray(raw)
    bad_point[0x14] ^= 1
    with pytest.raises(sc.CertError):
        SevCert.unpack(bytes(bad_point))


def test_deterministic_keys_from_seed():
    a = sc.private_key_from_seed(b"s", "x").private_numbers().private_value
    b = sc.private_key_from_seed(b"s", "x").private_numbers().private_value
    c = sc.private_key_from_seed(b"s", "y").private_numbers().private_value
    assert a == b != c


def test_guest_owner_session_opens_with_the_platform_pdh():
    pdh = sc.private_key_from_seed(b"platform", "pdh")
    pdh_cert = SevCert(Usage.PDH, Algo.ECDH_SHA256, pdh.public_key()).pack()
    owner = GuestOwner(0x1)
    godh_raw, session = owner.start(pdh_cert)
    godh = SevCert.unpack(godh_raw)
    assert godh.usage == Usage.PDH and godh.sigs == []
    z = sc.ecdh_shared_secret(pdh, godh.public_key)
    assert len(z) == 48
    assert sc.open_session(z, sc.SessionBlob.unpack(session), 0x1) == (owner.tek, owner.tik)


def test_guest_owner_secret_needs_a_verified_measurement():
    owner = GuestOwner(0)
    with pytest.raises(ValueError):
        owner.secret_packet(b"x" * 16)
    digest = hashlib.sha256(b"image").digest()
    blob = owner.expected_measurement(0, 24, 1, digest, b"n" * 16) + b"n" * 16
    assert owner.verify_measurement(blob, 0, 24, 1, digest)
    hdr, trans = owner.secret_packet(b"x" * 16)
    assert sc.aes128_ctr(owner.tek, sc.PacketHeader.unpack(hdr).iv, trans) == b"x" * 16
