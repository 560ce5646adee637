"""The memory controller's encryption engine (seed S13, S15): key slots per
ASID loaded only through the AMD-SP-side API, AES-128 XEX with a
physical-address tweak, ciphertext in DRAM."""
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from svmsim.memory.encryption import EncryptionEngine, KeySlotError

KEY = bytes(range(16))


def test_xex_definition_one_block():
    """C = E_K(P ^ T) ^ T with T = E_K(BE128(spa >> 4)): checked against AES directly."""
    spa, p = 0x12340, b"plaintext-block!"
    aes = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    t = aes.update((spa >> 4).to_bytes(16, "big"))
    aes = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    expect = bytes(a ^ b for a, b in zip(aes.update(bytes(a ^ b for a, b in zip(p, t))), t))
    assert EncryptionEngine.encrypt(KEY, spa, p) == expect
    assert EncryptionEngine.decrypt(KEY, spa, expect) == p


def test_same_plaintext_differs_by_address_and_key():
    p = bytes(64)
    a = EncryptionEngine.encrypt(KEY, 0x1000, p)
    assert a[:16] != a[16:32]                                   # each block its own tweak
    assert a != EncryptionEngine.encrypt(KEY, 0x2000, p)
    assert a != EncryptionEngine.encrypt(bytes(16), 0x1000, p)
    assert EncryptionEngine.decrypt(KEY, 0x2000, a) != p        # moved ciphertext: garbage


def _dram(size=0x4000):
    mem = bytearray(size)
    return mem, (lambda a, n: bytes(mem[a:a + n])), (lambda a, d: mem.__setitem__(slice(a, a + len(d)), d))


def test_dram_holds_ciphertext_and_slots_decrypt():
    eng = EncryptionEngine(15)
    eng.load_key(3, KEY)
    mem, rd, wr = _dram()
    eng.write(rd, wr, 0x105, b"secret", 3)                     # unaligned, partial block
    assert b"secret" not in mem
    assert eng.read(rd, 0x105, 6, 3) == b"secret"
    eng.load_key(4, os.urandom(16))
    assert eng.read(rd, 0x105, 6, 4) != b"secret"               # another guest's key: garbage


def test_slot_rules():
    eng = EncryptionEngine(15)
    assert eng.key_loaded(0) and eng.asid_range() == (1, 15)
    with pytest.raises(KeySlotError):
        eng.load_key(0, KEY)                                    # the SME slot is not an SEV slot
    with pytest.raises(KeySlotError):
        eng.load_key(16, KEY)
    eng.load_key(1, KEY)
    eng.unload_key(1)
    assert not eng.key_loaded(1)
    assert not any(isinstance(v, bytes) and v == KEY for v in vars(eng).values())
