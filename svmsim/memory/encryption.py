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
PAGE = 0x1000
CACHED_PAGES = 1024      # pages of decrypted lines kept (about 12 MiB of host memory)


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
        # Decrypted lines, a host-side acceleration (not the architectural
        # cache): (slot, page) -> _Page, validated against DRAM at every use.
        self._pages: dict = {}
        self._ecb_ctx: dict = {}         # slot -> (encryptor, decryptor) of its key
        self.forget_listeners: list = []  # callables(asid) when a slot's key changes (enclines.py)
        self.flush_listeners: list = []   # callables() at a cache flush (enclines.py writes back)

    def flush(self) -> None:
        """WBINVD (or a DF_FLUSH of the AMD-SP): no line of any key is cached."""
        for listener in self.flush_listeners:
            listener()
        self._page_key.clear()

    def _track(self, spa, n, asid):
        if self._page_key.get(spa >> 12) == asid and (spa + n - 1) >> 12 == spa >> 12:
            return
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
        self._forget(asid)

    def unload_key(self, asid: int) -> None:
        self._slots.pop(asid, None)
        self._empty.pop(asid, None)
        self._forget(asid)

    def _forget(self, asid):
        """A slot's key changed: its cipher objects and decrypted lines go."""
        self._ciphers.pop(asid, None)
        self._ecb_ctx.pop(asid, None)
        for k in [k for k in self._pages if k[0] == asid]:
            del self._pages[k]
        for listener in self.forget_listeners:
            listener(asid)

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
        out = b""
        while n:
            k = min(n, PAGE - (spa & (PAGE - 1)))
            e, o = self._lines(ram_read, spa, k, asid)
            x = spa & (PAGE - 1)
            out += e.plain[x:x + k]
            spa, n = spa + k, n - k
        return bytes(out)

    def write(self, ram_read, ram_write, spa: int, data: bytes, asid: int) -> None:
        """Read-modify-write of whole blocks through slot ``asid``: DRAM gets
        the new ciphertext at once (write-through)."""
        self._track(spa, len(data), asid)
        pos = 0
        while pos < len(data):
            k = min(len(data) - pos, PAGE - (spa & (PAGE - 1)))
            e, o = self._lines(ram_read, spa, k, asid)
            x = spa & (PAGE - 1)
            e.plain[x:x + k] = data[pos:pos + k]
            end = (x + k + BLOCK - 1) & ~(BLOCK - 1)
            ct = self._transform(asid, e, o, end, True)
            e.cipher[o:end] = ct
            ram_write((spa & ~(PAGE - 1)) + o, ct)
            spa, pos = spa + k, pos + k

    # -- decrypted lines ---------------------------------------------------------
    # The engine keeps a page's plaintext next to the ciphertext it came from
    # and checks, at every access, that DRAM still holds that ciphertext: a
    # write by anything (the CPU with or without a key, a device's DMA, the
    # AMD-SP, a debugger) changes DRAM, so the stale lines are decrypted again.
    # Equal ciphertext at the same address under the same key is equal
    # plaintext, so the check is exact.  DRAM always holds ciphertext.
    def _lines(self, ram_read, spa, n, asid):
        """(page entry, offset of the first block) with the blocks holding
        [spa, spa + n) - within one page - current."""
        page = spa >> 12
        e = self._pages.get((asid, page))
        if e is None:
            e = self._fill(page, asid)
        o = spa & (PAGE - BLOCK)
        end = (spa + n - (page << 12) + BLOCK - 1) & ~(BLOCK - 1)
        raw = ram_read((page << 12) + o, end - o)
        if e.cipher[o:end] != raw:
            e.cipher[o:end] = raw
            e.plain[o:end] = self._transform(asid, e, o, end, False)
        return e, o

    def _fill(self, page, asid):
        if len(self._pages) >= CACHED_PAGES:
            del self._pages[next(iter(self._pages))]          # the oldest page
        # The new entry stands for a page of zero ciphertext, decrypted: DRAM is
        # read only where an access needs it (no side effects on other bytes).
        c = self._cipher(asid)
        tweak = _tweaks(c, page << 12, PAGE)
        e = _Page(bytearray(PAGE), bytearray(_xor_ends(c.decryptor(), bytes(PAGE), tweak)), tweak)
        self._pages[(asid, page)] = e
        return e

    def contexts(self, asid):
        """(ECB encryptor, decryptor) of ``asid``'s key, for the CPU's line
        slots (enclines.py); the key itself never leaves the engine."""
        ctx = self._ecb_ctx.get(asid)
        if ctx is None:
            c = self._cipher(asid)
            ctx = self._ecb_ctx[asid] = (c.encryptor(), c.decryptor())
        return ctx

    def _transform(self, asid, e, lo, hi, encrypt):
        """Encrypt e.plain[lo:hi] or decrypt e.cipher[lo:hi] (XEX with the page's tweaks)."""
        ctx = self.contexts(asid)
        src = e.plain if encrypt else e.cipher
        return _xor_ends(ctx[0] if encrypt else ctx[1], bytes(src[lo:hi]), e.tweak[lo:hi])


class _Page:
    """One page's ciphertext as last seen in DRAM, its plaintext, its tweaks."""
    __slots__ = ("cipher", "plain", "tweak")

    def __init__(self, cipher, plain, tweak):
        self.cipher, self.plain, self.tweak = cipher, plain, tweak


def _xor_ends(ctx, data, tweak):
    """ctx(data ^ tweak) ^ tweak over whole buffers (ECB works block by block)."""
    t = int.from_bytes(tweak, "little")
    n = len(data)
    y = ctx.update((int.from_bytes(data, "little") ^ t).to_bytes(n, "little"))
    return (int.from_bytes(y, "little") ^ t).to_bytes(n, "little")


def _ecb(key: bytes):
    return Cipher(algorithms.AES(key), modes.ECB())


def _tweaks(cipher, spa: int, n: int) -> bytes:
    """T_i = E_K(BE128(block number)) for the consecutive blocks from ``spa``:
    AES-CTR's keystream."""
    return Cipher(cipher.algorithm, modes.CTR((spa >> 4).to_bytes(16, "big"))).encryptor().update(bytes(n))


def _xex(cipher, spa: int, data: bytes, encrypt: bool) -> bytes:
    if spa % BLOCK or len(data) % BLOCK:
        raise ValueError("the engine works on 16-byte blocks at 16-byte aligned addresses")
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return _xor_ends(ctx, data, _tweaks(cipher, spa, len(data)))
