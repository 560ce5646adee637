"""SEV (legacy) cryptography: the key schedule of the launch session, the
launch measurement, the LAUNCH_SECRET and migration packets, and the 0x824-byte
SEV certificate format.  Both sides use it: the AMD-SP model
(``svmsim.sev.firmware``) and the guest owner (``GuestOwner`` below).

Formulas (shared/docs/reference/sev-facts.md section 1; AMD SEV API spec as
implemented by AMDESE sev-tool and virtee/sev, which reproduce AMD's vectors):

* KDF(K, label, ctx, n): NIST SP 800-108 counter mode with HMAC-SHA256; block i
  (from 1) is HMAC(K, LE32(i) || label || 00 || ctx || LE32(8n)); truncate to n.
* master = KDF(Z, "sev-master-secret", nonce), Z = the ECDH P-384 shared secret
  (x coordinate, big-endian, as OpenSSL's ECDH derive returns it);
  KEK = KDF(master, "sev-kek"), KIK = KDF(master, "sev-kik").
* wrap_tk = AES-128-CTR(KEK, wrap_iv, TEK || TIK); wrap_mac = HMAC(KIK, wrap_tk);
  policy_mac = HMAC(TIK, LE32(policy)).
* MEASURE = HMAC(TIK, 04 || API_MAJOR || API_MINOR || BUILD || LE32(POLICY) || LD || MNONCE).
* LAUNCH_SECRET: trans = AES-128-CTR(TEK, IV, secret);
  MAC = HMAC(TIK, 01 || LE32(FLAGS) || IV || LE32(guest_len) || LE32(trans_len) || trans || MEASURE),
  the MEASURE term only from API 0.17 on.

Not verified against a spec (no AMD PDF was available): the MAC of the
SEND/RECEIVE_UPDATE_DATA packets, here HMAC(TIK, LE32(FLAGS) || IV || trans),
and of the SEND/RECEIVE_UPDATE_VMSA packets, the same prefixed with "VMSA" so
that a hypervisor cannot pass a data packet off as a VMSA (or the reverse).
Both ends of a migration are svmsim firmwares, so it only has to agree with
itself.
"""
from __future__ import annotations

import hashlib
import hmac as _hmac
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SESSION_LEN = 0x80          # nonce[16] wrap_tk[32] wrap_iv[16] wrap_mac[32] policy_mac[32]
MEASURE_LEN = 0x30          # measure[32] mnonce[16]
PACKET_HEADER_LEN = 0x34    # flags u32, iv[16], mac[32]
PACKET_FLAG_COMPRESSED = 1 << 0

LABEL_MASTER = b"sev-master-secret"
LABEL_KEK = b"sev-kek"
LABEL_KIK = b"sev-kik"


# -- primitives -------------------------------------------------------------------
def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return _hmac.new(key, data, hashlib.sha256).digest()


def aes128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CTR with a 128-bit big-endian counter block (OpenSSL's CTR);
    encryption and decryption are the same operation."""
    if len(key) != 16 or len(iv) != 16:
        raise ValueError("AES-128-CTR needs a 16-byte key and a 16-byte IV")
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)


def kdf(key: bytes, label: bytes | str, context: bytes = b"", length: int = 16) -> bytes:
    """NIST SP 800-108 KDF in counter mode, PRF = HMAC-SHA256, as SEV uses it:
    the counter and the output length in bits are little-endian 32-bit words."""
    if isinstance(label, str):
        label = label.encode()
    out = b""
    i = 1
    while len(out) < length:
        out += hmac_sha256(key, struct.pack("<I", i) + label + b"\0" + context
                           + struct.pack("<I", 8 * length))
        i += 1
    return out[:length]


def derive_master_secret(z: bytes, nonce: bytes) -> bytes:
    return kdf(z, LABEL_MASTER, nonce, 16)


def derive_kek(master: bytes) -> bytes:
    return kdf(master, LABEL_KEK, b"", 16)


def derive_kik(master: bytes) -> bytes:
    return kdf(master, LABEL_KIK, b"", 16)


def wrap_tk(kek: bytes, iv: bytes, tek: bytes, tik: bytes) -> bytes:
    return aes128_ctr(kek, iv, tek + tik)


def unwrap_tk(kek: bytes, iv: bytes, wrapped: bytes) -> tuple[bytes, bytes]:
    tk = aes128_ctr(kek, iv, wrapped)
    return tk[:16], tk[16:32]


def wrap_mac(kik: bytes, wrapped: bytes) -> bytes:
    return hmac_sha256(kik, wrapped)


def policy_mac(tik: bytes, policy: int) -> bytes:
    return hmac_sha256(tik, struct.pack("<I", policy & 0xFFFFFFFF))


def launch_measurement(tik: bytes, api_major: int, api_minor: int, build: int,
                       policy: int, launch_digest: bytes, mnonce: bytes) -> bytes:
    """MEASURE = HMAC-SHA256(TIK, 04 || major || minor || build || LE32(policy) || LD || MNONCE)."""
    return hmac_sha256(tik, bytes([0x04, api_major, api_minor, build])
                       + struct.pack("<I", policy & 0xFFFFFFFF) + launch_digest + mnonce)


def launch_digest(*chunks: bytes) -> bytes:
    """LD: SHA-256 over all LAUNCH_UPDATE_DATA plaintext, in order (then VMSAs for ES)."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.digest()


def api_at_least(api: tuple[int, int], major: int, minor: int) -> bool:
    return tuple(api) >= (major, minor)


def secret_mac(tik: bytes, flags: int, iv: bytes, guest_len: int, trans: bytes,
               measure: bytes | None) -> bytes:
    """MAC of a LAUNCH_SECRET packet; ``measure`` None for API < 0.17."""
    msg = (b"\x01" + struct.pack("<I", flags) + iv + struct.pack("<II", guest_len, len(trans))
           + trans + (measure or b""))
    return hmac_sha256(tik, msg)


def transport_mac(tik: bytes, flags: int, iv: bytes, trans: bytes, vmsa: bool = False) -> bytes:
    """MAC of a SEND/RECEIVE_UPDATE_DATA packet, or with ``vmsa`` of a
    SEND/RECEIVE_UPDATE_VMSA packet (svmsim's choice, see the module doc)."""
    return hmac_sha256(tik, (b"VMSA" if vmsa else b"") + struct.pack("<I", flags) + iv + trans)


# -- structures -------------------------------------------------------------------
@dataclass(frozen=True)
class SessionBlob:
    """The LAUNCH_START / SEND_START / RECEIVE_START session buffer (0x80 bytes)."""
    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    def pack(self) -> bytes:
        b = self.nonce + self.wrap_tk + self.wrap_iv + self.wrap_mac + self.policy_mac
        assert len(b) == SESSION_LEN
        return b

    @classmethod
    def unpack(cls, b: bytes) -> "SessionBlob":
        if len(b) < SESSION_LEN:
            raise ValueError("session buffer is 0x80 bytes")
        return cls(b[0:16], b[16:48], b[48:64], b[64:96], b[96:128])


@dataclass(frozen=True)
class PacketHeader:
    """Header of LAUNCH_SECRET and SEND/RECEIVE_UPDATE_* packets: flags u32, iv[16], mac[32]."""
    flags: int
    iv: bytes
    mac: bytes

    def pack(self) -> bytes:
        return struct.pack("<I", self.flags) + self.iv + self.mac

    @classmethod
    def unpack(cls, b: bytes) -> "PacketHeader":
        if len(b) < PACKET_HEADER_LEN:
            raise ValueError("packet header is 0x34 bytes")
        return cls(struct.unpack_from("<I", b)[0], bytes(b[4:20]), bytes(b[20:52]))


def make_session(z: bytes, nonce: bytes, iv: bytes, tek: bytes, tik: bytes,
                 policy: int) -> SessionBlob:
    """The sender's side of a session (guest owner, or SEND_START)."""
    master = derive_master_secret(z, nonce)
    kek, kik = derive_kek(master), derive_kik(master)
    wrapped = wrap_tk(kek, iv, tek, tik)
    return SessionBlob(nonce, wrapped, iv, wrap_mac(kik, wrapped), policy_mac(tik, policy))


class SessionError(Exception):
    """A session blob failed its checks; ``field`` is 'wrap_mac' or 'policy_mac'."""

    def __init__(self, field: str):
        super().__init__(f"session {field} does not verify")
        self.field = field


def open_session(z: bytes, blob: SessionBlob, policy: int) -> tuple[bytes, bytes]:
    """The receiver's side (LAUNCH_START, RECEIVE_START): (TEK, TIK) or SessionError."""
    master = derive_master_secret(z, blob.nonce)
    kek, kik = derive_kek(master), derive_kik(master)
    if not _hmac.compare_digest(wrap_mac(kik, blob.wrap_tk), blob.wrap_mac):
        raise SessionError("wrap_mac")
    tek, tik = unwrap_tk(kek, blob.wrap_iv, blob.wrap_tk)
    if not _hmac.compare_digest(policy_mac(tik, policy), blob.policy_mac):
        raise SessionError("policy_mac")
    return tek, tik


def build_secret_packet(tek: bytes, tik: bytes, secret: bytes, measure: bytes, iv: bytes,
                        flags: int = 0, api: tuple[int, int] = (0, 24)) -> tuple[bytes, bytes]:
    """(header 0x34 bytes, transport data) for LAUNCH_SECRET."""
    trans = aes128_ctr(tek, iv, secret)
    mac = secret_mac(tik, flags, iv, len(secret), trans,
                     measure if api_at_least(api, 0, 17) else None)
    return PacketHeader(flags, iv, mac).pack(), trans


# -- ECDH / ECDSA on P-384 and the SEV certificate format --------------------------------
CURVE = ec.SECP384R1()
P384_ORDER = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
                 "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16)


class Usage(IntEnum):
    """Key usages of SEV certificates (sev-tool sevapi.h, virtee/sev)."""
    ARK = 0x0000
    ASK = 0x0013
    INVALID = 0x1000
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class Algo(IntEnum):
    NONE = 0x0000
    RSA_SHA256 = 0x0001
    ECDSA_SHA256 = 0x0002
    ECDH_SHA256 = 0x0003
    RSA_SHA384 = 0x0101
    ECDSA_SHA384 = 0x0102
    ECDH_SHA384 = 0x0103


CURVE_P384 = 2
CERT_LEN = 0x824
CERT_BODY_LEN = 0x414       # the signed part: version .. public key
_KEY_OFF = 0x10             # curve u32, qx[72] LE, qy[72] LE inside a 0x404-byte area
_SIG_OFF = (0x414, 0x61C)   # usage u32, algo u32, r[72] LE, s[72] LE inside 0x200 bytes

try:
    ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    _ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
except TypeError:           # cryptography < 44: randomised signatures, same keys
    _ECDSA = ec.ECDSA(hashes.SHA256())


def private_key_from_seed(seed: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A deterministic P-384 key (for svmsim's simulated root of trust and tests)."""
    d = int.from_bytes(_hmac.new(seed, label.encode(), hashlib.sha512).digest(), "big")
    return ec.derive_private_key(d % (P384_ORDER - 1) + 1, CURVE)


def generate_private_key(rng=os.urandom) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(rng(64), "big")
    return ec.derive_private_key(d % (P384_ORDER - 1) + 1, CURVE)


def ecdh_shared_secret(private: ec.EllipticCurvePrivateKey,
                       public: ec.EllipticCurvePublicKey) -> bytes:
    """Z: the x coordinate of d*Q, 48 bytes big-endian."""
    return private.exchange(ec.ECDH(), public)


class CertError(ValueError):
    pass


@dataclass
class SevCert:
    """A 0x824-byte SEV certificate (version 1) with an ECC P-384 key.

    Layout: 0 version u32 (1); 4 api_major, 5 api_minor; 6-7 reserved;
    8 pub_key_usage u32; 0xC pub_key_algo u32; 0x10 public key (curve u32,
    qx[72], qy[72] little-endian, zero padded to 0x404); 0x414 and 0x61C two
    signatures (usage u32, algo u32, r[72], s[72] little-endian, padded to
    0x208 each).  The signatures cover bytes 0..0x413.
    """
    usage: int
    algo: int
    public_key: ec.EllipticCurvePublicKey
    api_major: int = 0
    api_minor: int = 0
    sigs: list = None       # [(usage, algo, r, s)] at most two
    raw_body: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.sigs is None:
            self.sigs = []

    def body(self) -> bytes:
        """The signed bytes: as read (``unpack``) or as built from the fields."""
        if self.raw_body is not None:
            return self.raw_body
        nums = self.public_key.public_numbers()
        key = struct.pack("<I", CURVE_P384) + nums.x.to_bytes(72, "little") + nums.y.to_bytes(72, "little")
        b = struct.pack("<IBBBBII", 1, self.api_major, self.api_minor, 0, 0, self.usage, self.algo)
        b += key.ljust(0x404, b"\0")
        assert len(b) == CERT_BODY_LEN
        return b

    def pack(self) -> bytes:
        out = bytearray(self.body().ljust(CERT_LEN, b"\0"))
        for slot, (usage, algo, r, s) in zip(_SIG_OFF, self.sigs):
            out[slot:slot + 8 + 144] = (struct.pack("<II", usage, algo) + r.to_bytes(72, "little")
                                        + s.to_bytes(72, "little"))
        return bytes(out)

    @classmethod
    def unpack(cls, b: bytes) -> "SevCert":
        if len(b) < CERT_LEN:
            raise CertError("an SEV certificate is 0x824 bytes")
        version, major, minor, _, _, usage, algo = struct.unpack_from("<IBBBBII", b)
        if version != 1:
            raise CertError(f"certificate version {version}")
        curve = struct.unpack_from("<I", b, _KEY_OFF)[0]
        if algo in (Algo.RSA_SHA256, Algo.RSA_SHA384) or curve != CURVE_P384:
            raise CertError("only ECC P-384 keys are supported")
        x = int.from_bytes(b[_KEY_OFF + 4:_KEY_OFF + 76], "little")
        y = int.from_bytes(b[_KEY_OFF + 76:_KEY_OFF + 148], "little")
        try:
            pub = ec.EllipticCurvePublicNumbers(x, y, CURVE).public_key()
        except ValueError as e:
            raise CertError(f"public key not on P-384: {e}") from None
        sigs = []
        for slot in _SIG_OFF:
            susage, salgo = struct.unpack_from("<II", b, slot)
            if salgo in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384):
                r = int.from_bytes(b[slot + 8:slot + 80], "little")
                s = int.from_bytes(b[slot + 80:slot + 152], "little")
                sigs.append((susage, salgo, r, s))
        return cls(usage, algo, pub, major, minor, sigs, bytes(b[:CERT_BODY_LEN]))

    def sign_with(self, signer_usage: int, private: ec.EllipticCurvePrivateKey) -> None:
        if len(self.sigs) >= 2:
            raise CertError("both signature slots are used")
        r, s = decode_dss_signature(private.sign(self.body(), _ECDSA))
        self.sigs.append((signer_usage, Algo.ECDSA_SHA256, r, s))

    def verify_signed_by(self, signer: "SevCert") -> bool:
        """True if a signature slot for ``signer``'s usage verifies with its key."""
        body = self.body()
        for usage, algo, r, s in self.sigs:
            if usage != signer.usage:
                continue
            h = hashes.SHA384() if algo == Algo.ECDSA_SHA384 else hashes.SHA256()
            try:
                signer.public_key.verify(encode_dss_signature(r, s), body, ec.ECDSA(h))
                return True
            except InvalidSignature:
                continue
        return False

    def same_key(self, other: "SevCert") -> bool:
        return self.public_key.public_numbers() == other.public_key.public_numbers()


# -- the guest owner ------------------------------------------------------------------
class GuestOwner:
    """The guest owner's side of an SEV launch: builds the LAUNCH_START session
    for a platform's PDH, checks the launch measurement, packs a secret.

    ``tek``/``tik`` default to fresh random keys; ``rng`` supplies nonces and IVs.
    """

    def __init__(self, policy: int, *, tek: bytes | None = None, tik: bytes | None = None,
                 rng=os.urandom):
        self.policy = policy & 0xFFFFFFFF
        self.rng = rng
        self.tek = tek if tek is not None else rng(16)
        self.tik = tik if tik is not None else rng(16)
        self.measure: bytes | None = None

    def start(self, pdh_cert: bytes, *, nonce: bytes | None = None, iv: bytes | None = None,
              godh_private: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, bytes]:
        """(guest-owner DH certificate 0x824 bytes, session buffer 0x80 bytes) for
        LAUNCH_START's dh_cert and session parameters."""
        pdh = SevCert.unpack(pdh_cert)
        godh = godh_private or generate_private_key(self.rng)
        z = ecdh_shared_secret(godh, pdh.public_key)
        blob = make_session(z, nonce or self.rng(16), iv or self.rng(16),
                            self.tek, self.tik, self.policy)
        cert = SevCert(Usage.PDH, Algo.ECDH_SHA256, godh.public_key())
        return cert.pack(), blob.pack()

    def expected_measurement(self, api_major: int, api_minor: int, build: int,
                             digest: bytes, mnonce: bytes) -> bytes:
        return launch_measurement(self.tik, api_major, api_minor, build, self.policy, digest, mnonce)

    def verify_measurement(self, measure_blob: bytes, api_major: int, api_minor: int,
                           build: int, digest: bytes) -> bool:
        """Check LAUNCH_MEASURE's output (measure[32] || mnonce[16]) against the
        expected launch digest (``launch_digest(...)`` of the data loaded)."""
        measure, mnonce = measure_blob[:32], measure_blob[32:48]
        ok = _hmac.compare_digest(
            self.expected_measurement(api_major, api_minor, build, digest, mnonce), measure)
        if ok:
            self.measure = bytes(measure)
        return ok

    def secret_packet(self, secret: bytes, *, measure: bytes | None = None, iv: bytes | None = None,
                      flags: int = 0, api: tuple[int, int] = (0, 24)) -> tuple[bytes, bytes]:
        """(packet header, transport data) for LAUNCH_SECRET; ``measure`` defaults
        to the one ``verify_measurement`` accepted."""
        measure = measure if measure is not None else self.measure
        if measure is None and api_at_least(api, 0, 17):
            raise ValueError("verify the launch measurement first")
        return build_secret_packet(self.tek, self.tik, secret, measure or b"", iv or self.rng(16),
                                   flags, api)
