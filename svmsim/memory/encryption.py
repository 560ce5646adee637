"""The memory controller's encryption engine (SME/SEV; APM vol 2, 7.10 and
15.34; seed S13, S15).

One AES-128 key slot per ASID: slot 0 holds the SME key of the host, slots
1..N the keys of SEV guests.  Only the AMD Secure Processor loads or clears
slots (``load_key``/``unload_key``); no method returns a key.  DRAM holds
ciphertext: an access with the C-bit set goes through ``read``/``write``
with the slot of the running context.

Mode modelled: XEX over 16-byte blocks with a physical-address tweak,
C = E_K(P xor T) xor T, T = E_K(BE128(spa of the block / 16)).  AMD documents
"AES-128 with a physical-address tweak" without the exact construction
(sev-facts.md section 3: Zen 1 has been analysed as E_K(P xor T(PA)), later
parts are reported to use XEX with a boot-random tweak).  What users can
rely on is what this model gives: the same plaintext encrypts differently at
different addresses and under different keys, ciphertext moved to another
address or read with another key decrypts to garbage, and nothing outside
the engine sees plaintext.
"""
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16


class KeySlotError(Exception):
    """A slot operation the AMD-SP must not ask for (a bug in the caller)."""


class EncryptionEngine:
    """Key slots and the per-block transform of the memory controller."""

    def __init__(self, num_asids: int, sme_key: bytes | None = None, note=None):
        self.num_asids = num_asids
        self._slots: dict = {0: sme_key or os.urandom(16)}
        self._ciphers: dict = {}
        # An empty slot acts with a random key of its own, drawn at its first
        # use and again after each unload: never a key anyone knows (issue 13,
        # finding 6; the APM leaves key management to the AMD-SP, 15.34.2).
        self._empty: dict = {}
        # Cache lines are tagged with the key they were filled with; without
        # coherency enforcement (CPUID 8000_001F EAX[10] = 0) software must
        # flush a page before using it with another key (APM vol 2, 7.10.6).
        # svmsim has no cache to corrupt, so it reports such uses instead.
        self._page_key: dict = {}
        self._note = note or (lambda text: None)
        self._vmsa_secret = os.urandom(32)
        self._vmsa_tags: dict = {}

    def flush(self) -> None:
        """WBINVD (or a DF_FLUSH of the AMD-SP): no line of any key is cached."""
        self._page_key.clear()

    def _track(self, spa, n, asid):
        for page in range(spa >> 12, (spa + n - 1 >> 12) + 1):
            old = self._page_key.get(page)
            if old is not None and old != asid:
                self._note(f"page {page << 12:#x} used with key slot {asid} after slot {old} without "
                           f"a cache flush (WBINVD) in between (APM vol 2, 7.10.6)")
            self._page_key[page] = asid

    # -- the AMD-SP's side ------------------------------------------------------
    def load_key(self, asid: int, key: bytes) -> None:
        if not 1 <= asid <= self.num_asids:
            raise KeySlotError(f"ASID {asid} is not an SEV key slot (1..{self.num_asids})")
        if len(key) != 16:
            raise KeySlotError("memory-encryption keys are AES-128")
        self._slots[asid] = bytes(key)
        self._ciphers.pop(asid, None)

    def unload_key(self, asid: int) -> None:
        self._slots.pop(asid, None)
        self._ciphers.pop(asid, None)
        self._empty.pop(asid, None)

    def key_loaded(self, asid: int) -> bool:
        return asid in self._slots

    def asid_range(self) -> tuple:
        return 1, self.num_asids

    # -- VMSA integrity (SEV-ES; APM vol 2, 15.35.8-15.35.9) --------------------
    # VMRUN "calculate[s] a checksum over guest state to verify integrity" and
    # #VMEXIT stores one "for use in a subsequent VMRUN"; where the checksum
    # lives is not architectural.  svmsim keeps it here, beside the keys, out
    # of reach of CPU software: a MAC over the VMSA page's plaintext and its
    # address, keyed with a secret of this memory controller.  The AMD-SP
    # seals the initial VMSA (LAUNCH_UPDATE_VMSA, RECEIVE_UPDATE_VMSA).
    def seal_vmsa(self, spa: int, plaintext: bytes) -> None:
        self._vmsa_tags[spa >> 12] = self._vmsa_mac(spa, plaintext)

    def vmsa_intact(self, spa: int, plaintext: bytes) -> bool:
        tag = self._vmsa_tags.get(spa >> 12)
        return tag is not None and hmac.compare_digest(tag, self._vmsa_mac(spa, plaintext))

    def unseal_vmsa(self, spa: int) -> None:
        self._vmsa_tags.pop(spa >> 12, None)

    def _vmsa_mac(self, spa, plaintext):
        return hmac.new(self._vmsa_secret, (spa >> 12).to_bytes(8, "little") + bytes(plaintext),
                        hashlib.sha256).digest()

    # -- pure transforms (the AMD-SP encrypts launch data with a key it holds) ----
    @staticmethod
    def encrypt(key: bytes, spa: int, data: bytes) -> bytes:
        return _xex(_ecb(key), spa, data, True)

    @staticmethod
    def decrypt(key: bytes, spa: int, data: bytes) -> bytes:
        return _xex(_ecb(key), spa, data, False)

    # -- DRAM accesses through a slot ---------------------------------------------
    def _cipher(self, asid):
        c = self._ciphers.get(asid)
        if c is None:
            key = self._slots.get(asid)
            if key is None:
                key = self._empty.setdefault(asid, os.urandom(16))
                self._note(f"key slot {asid} has no key loaded (no ACTIVATE, or after DEACTIVATE): "
                           "its accesses use a random key, so they read garbage")
            c = self._ciphers[asid] = _ecb(key)
        return c

    def read(self, ram_read, spa: int, n: int, asid: int) -> bytes:
        """Plaintext of ``n`` bytes at ``spa`` as seen through slot ``asid``;
        ``ram_read(spa, n)`` returns the raw DRAM bytes.  An empty slot
        decrypts with a random key nobody knows: garbage."""
        self._track(spa, n, asid)
        return self.peek(ram_read, spa, n, asid)

    def peek(self, ram_read, spa: int, n: int, asid: int) -> bytes:
        """What ``read`` returns, without recording the key's use of the page (a
        debugger looking is not a cache fill)."""
        first = spa & ~(BLOCK - 1)
        last = (spa + n + BLOCK - 1) & ~(BLOCK - 1)
        raw = ram_read(first, last - first)
        c = self._cipher(asid)
        plain = _xex(c, first, raw, False)
        return plain[spa - first:spa - first + n]

    def write(self, ram_read, ram_write, spa: int, data: bytes, asid: int) -> None:
        """Read-modify-write of whole blocks through slot ``asid``."""
        self._track(spa, len(data), asid)
        first = spa & ~(BLOCK - 1)
        last = (spa + len(data) + BLOCK - 1) & ~(BLOCK - 1)
        c = self._cipher(asid)
        plain = bytearray(_xex(c, first, ram_read(first, last - first), False))
        plain[spa - first:spa - first + len(data)] = data
        ram_write(first, _xex(c, first, bytes(plain), True))


def _ecb(key: bytes):
    return Cipher(algorithms.AES(key), modes.ECB())


def _xex(cipher, spa: int, data: bytes, encrypt: bool) -> bytes:
    if spa % BLOCK or len(data) % BLOCK:
        raise ValueError("the engine works on 16-byte blocks at 16-byte aligned addresses")
    # T_i = E_K(BE128(block number)) for consecutive blocks: AES-CTR's keystream.
    tweaks = Cipher(cipher.algorithm, modes.CTR((spa >> 4).to_bytes(16, "big"))).encryptor() \
        .update(bytes(len(data)))
    t = int.from_bytes(tweaks, "little")          # XOR whole buffers as integers
    x = (int.from_bytes(data, "little") ^ t).to_bytes(len(data), "little")
    y = (cipher.encryptor() if encrypt else cipher.decryptor()).update(x)
    return (int.from_bytes(y, "little") ^ t).to_bytes(len(data), "little")
