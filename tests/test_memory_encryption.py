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


# ---------------------------------------------------------------- decrypted lines kept by the engine
def test_kept_lines_follow_every_writer():
    """The engine keeps decrypted lines (issue 14, item 4) and checks them
    against DRAM at every access: whatever writes DRAM - the CPU through the
    same key or another, a device, the AMD-SP with the pure transform, raw
    bytes - the next read decrypts what DRAM holds now."""
    eng = EncryptionEngine(15)
    key_b = bytes(range(0x20, 0x30))
    eng.load_key(3, KEY)
    eng.load_key(4, key_b)
    mem, rd, wr = _dram()
    eng.write(rd, wr, 0x1008, b"first", 3)
    assert eng.read(rd, 0x1008, 5, 3) == b"first"               # lines now kept
    # A device (or the AMD-SP) writes ciphertext of other data under the same key.
    wr(0x1000, EncryptionEngine.encrypt(KEY, 0x1000, b"\0" * 8 + b"second" + b"\0" * 2))
    assert eng.read(rd, 0x1008, 6, 3) == b"second"
    # Another slot's key writes the line: slot 3 reads garbage, exactly the transform's.
    eng.write(rd, wr, 0x1008, b"third", 4)
    assert eng.read(rd, 0x1008, 5, 4) == b"third"
    assert eng.read(rd, 0x1000, 16, 3) == EncryptionEngine.decrypt(KEY, 0x1000, bytes(mem[0x1000:0x1010]))
    # Raw bytes (a hypervisor's plaintext write, say) in one line of the page;
    # the other lines of that page are unchanged.
    eng.write(rd, wr, 0x1100, b"other line", 3)
    mem[0x1000:0x1010] = b"plaintext-write!"
    assert eng.read(rd, 0x1000, 16, 3) == EncryptionEngine.decrypt(KEY, 0x1000, b"plaintext-write!")
    assert eng.read(rd, 0x1100, 10, 3) == b"other line"
    # A new key in the slot: the kept lines of the old key are gone.
    eng.load_key(3, key_b)
    assert eng.read(rd, 0x1100, 16, 3) == EncryptionEngine.decrypt(key_b, 0x1100, bytes(mem[0x1100:0x1110]))


def test_dram_keeps_ciphertext_with_kept_lines():
    """Writes go through to DRAM at once, across a page boundary too."""
    eng = EncryptionEngine(15)
    eng.load_key(3, KEY)
    mem, rd, wr = _dram()
    data = bytes(range(40))
    rest = EncryptionEngine.decrypt(KEY, 0x2010, bytes(16))[8:]  # the block's untouched bytes
    eng.write(rd, wr, 0x1FF0, data, 3)                          # 16 bytes in one page, 24 in the next
    assert bytes(mem[0x1FF0:0x2020]) == EncryptionEngine.encrypt(KEY, 0x1FF0, data + rest)
    assert eng.read(rd, 0x1FF0, 40, 3) == data
    assert data[:16] not in mem


def test_sev_guest_sees_dma_writes_to_its_private_page():
    """Machine level: the guest reads a private line (kept decrypted), a
    device writes new ciphertext there by DMA, the guest's next read sees it."""
    from svmsim.memory.dma import DmaPort
    from test_sev_hw import sev_rig, KEY as GKEY, GUEST_CODE
    from svmsim.svm.exits import ExitCode
    r = sev_rig("mov eax, [0x600000]\nhlt", data=[(0x600000, (0x1111).to_bytes(4, "little") + bytes(12))])
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x1111
    DmaPort(r.m, "test-nic").write_bytes(
        0x600000, EncryptionEngine.encrypt(GKEY, 0x600000, (0x2222).to_bytes(4, "little") + bytes(12)))
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x2222


def test_sev_work_guest_same_results_with_and_without_sev():
    """bench/sev_bench.py's guest: private data through the engine gives the
    same checksums as plaintext memory; DRAM holds none of its buffer."""
    import io
    import guestbuild
    from svmsim.machine import Machine
    from svmsim.vmm import Vmm, launch_sev
    from svmsim.vmm.vmm import GUEST_BASE
    from svmsim.sev.crypto import GuestOwner
    kernel = guestbuild.build_guest("sev_work", kind="asm", asflags=("-DITERS=300", "-DSWEEPS=1", "-DCLEARS=1"))
    outs = []
    for sev in (True, False):
        out = io.BytesIO()
        m = Machine(mem_size="128M", serial_out=out)
        vmm = Vmm(m, asid=5)
        info = vmm.load_kernel(str(kernel))
        if sev:
            launch_sev(vmm, GuestOwner(policy=1), regions=[(info.load_addr, info.load_end - info.load_addr)])
        assert vmm.run().reason.startswith("isa-debug-exit: guest wrote 0x0")
        raw = m.bus.read_bytes(GUEST_BASE + 0x310000, 64)
        assert (raw[:8] == bytes([1, 0, 0, 0, 8, 0, 0, 0])) != sev     # dwords i * 7 + 1
        outs.append(out.getvalue())
    assert outs[0] == outs[1] and outs[0].count(b"sev_work: 0x") == 3


# ---------------------------------------------------------------- the CPU's decrypted lines (enclines.py)
def test_private_reads_use_decrypted_lines_that_follow_dram():
    """An SEV guest's private reads index the page's decrypted line (the fast
    read path); the line lies outside DRAM (no physical address reaches it),
    and a hypervisor's raw write to DRAM drops it: the guest's next read
    decrypts what DRAM holds now (garbage)."""
    from test_sev_hw import sev_rig, KEY as GKEY, GUEST_CODE
    from svmsim.svm.exits import ExitCode
    plain = (0x5A5A1234).to_bytes(4, "little") + b"line-plaintext"[:12]
    r = sev_rig("mov eax, [0x600000]\nmov ebx, [0x600000]\nhlt", data=[(0x600000, plain)])
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x5A5A1234
    m, ram = r.m, r.m.bus.ram
    lines = m.enc_lines
    assert lines.stats["filled"] and 0x600 in lines.pages
    assert ram.buf.find(plain, 0, ram.size) < 0                  # DRAM: ciphertext only
    assert ram.buf.find(plain, ram.size) >= 0                    # the line, past the end of DRAM
    assert m.bus.ram_offset(ram.size) is None
    r.m.bus.write(0x600000, 4, 0xCAFE)                           # plaintext, by the hypervisor
    assert 0x600 not in lines.pages
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    want = EncryptionEngine.decrypt(GKEY, 0x600000, r.m.bus.read_bytes(0x600000, 16))[:4]
    assert r.vmcb["RAX"] & 0xFFFFFFFF == int.from_bytes(want, "little") != 0x5A5A1234


def test_a_page_with_lines_is_never_in_a_write_cache():
    """Stores to a page with decrypted lines must reach the bus (which keeps
    the lines exact), so no CPU caches it for fast writes."""
    from test_sev_hw import sev_rig
    from svmsim.cpu.tlb import W, FC
    r = sev_rig("mov eax, [0x600000]\nhlt").run()
    cpu = r.cpu
    fast = cpu.tlb.fast[0]
    cpu.fill_write(fast, 0x777, 0x600000)
    assert 0x777 not in fast[W] and 0x777 not in fast[FC]
    cpu.fill_write(fast, 0x778, 0x700000)                        # a page without lines
    assert fast[W][0x778] == 0x700000


def test_private_self_modifying_code_through_lines():
    """A store of the SEV guest into its own (private) translated code drops
    the blocks; the next fetch decodes the new bytes."""
    from test_sev_hw import sev_rig, GUEST_CODE
    from svmsim.svm.exits import ExitCode
    r = sev_rig(f"mov ecx, 2\nagain: mov eax, 0x11\ndec ecx\njz done\n"
                f"mov byte ptr [{GUEST_CODE + 6:#x}], 0x22\njmp again\ndone: hlt").run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x22


def test_guest_stores_write_through_to_dram():
    """Every store through the key reaches DRAM at once, as ciphertext of the
    line's plaintext (the blocks it touched re-encrypted)."""
    from test_sev_hw import sev_rig, KEY as GKEY
    r = sev_rig("mov dword ptr [0x600004], 0x11223344\nmov eax, [0x600000]\n"
                "mov word ptr [0x60000e], 0x5566\nhlt",
                data=[(0x600000, bytes(range(16)))]).run()
    want = bytearray(range(16))
    want[4:8] = (0x11223344).to_bytes(4, "little")
    want[14:16] = (0x5566).to_bytes(2, "little")
    raw = r.m.bus.read_bytes(0x600000, 16)
    assert raw != bytes(want) and EncryptionEngine.decrypt(GKEY, 0x600000, raw) == bytes(want)


def _lines_rig():
    """A machine with SEV, slot 5 keyed, page 0x600000 holding ciphertext of
    0..255 repeated; the line mapped for reading and writing as nested paging
    maps it (linear page 0x42)."""
    from svmsim.machine import Machine
    from svmsim.cpu.tlb import R, W, FC
    m = Machine(mem_size="32M")
    m.mem_engine.load_key(5, KEY)
    plain = bytes(range(256)) * 16
    m.bus.write_bytes(0x600000, EncryptionEngine.encrypt(KEY, 0x600000, plain))
    lines = m.enc_lines
    fast = m.cpus[0].tlb.fast[0]
    slot = lines.map_read(0x600000, 5, fast[R], 0x42)
    fast[R][0x42] = slot
    assert lines.map_write(0x600000, 5, fast[W], fast[FC], 0x42, m.code_pages)
    assert fast[W][0x42] == slot and 0x600 in lines.dirty
    return m, lines, fast, slot, plain


def test_a_dirty_line_is_written_back_before_the_bus_reads_dram():
    """A store on the fast path lands in the line (the page is dirty, DRAM
    behind it, as in a write-back cache); the bus reading the page - a
    device, the AMD-SP, the hypervisor - writes it back first, and the page
    leaves the write cache (the next store marks it dirty again)."""
    from svmsim.cpu.tlb import R, W
    m, lines, fast, slot, plain = _lines_rig()
    ram = m.bus.ram.buf
    ram[slot + 0x10:slot + 0x14] = b"WXYZ"                       # what a fast store does
    assert EncryptionEngine.decrypt(KEY, 0x600010, bytes(ram[0x600010:0x600020]))[:4] != b"WXYZ"
    raw = m.bus.read_bytes(0x600010, 16)
    assert EncryptionEngine.decrypt(KEY, 0x600010, raw)[:4] == b"WXYZ"
    assert b"WXYZ" not in raw and 0x600 not in lines.dirty
    assert 0x42 not in fast[W] and fast[R][0x42] == slot          # reads stay fast


def test_a_bus_write_to_a_dirty_page_keeps_the_other_blocks():
    """A device writes one block of a dirty page: the line's other blocks go
    to DRAM first, the written block is the device's, the lines are dropped."""
    from svmsim.cpu.tlb import R
    m, lines, fast, slot, plain = _lines_rig()
    ram = m.bus.ram.buf
    ram[slot:slot + 4] = b"head"
    ram[slot + 0xFF0:slot + 0xFF4] = b"tail"
    m.bus.write_bytes(0x600800, b"D" * 16)
    assert 0x600 not in lines.pages and 0x42 not in fast[R]
    now = EncryptionEngine.decrypt(KEY, 0x600000, bytes(ram[0x600000:0x601000]))
    assert now[:4] == b"head" and now[0xFF0:0xFF4] == b"tail"
    assert bytes(ram[0x600800:0x600810]) == b"D" * 16
    assert now[0x810:0xFF0] == plain[0x810:0xFF0]


def test_dirty_lines_are_written_back_at_wbinvd_and_with_their_own_key():
    m, lines, fast, slot, plain = _lines_rig()
    ram = m.bus.ram.buf
    ram[slot:slot + 4] = b"one!"
    m.mem_engine.flush()                                          # WBINVD
    assert not lines.dirty
    assert EncryptionEngine.decrypt(KEY, 0x600000, bytes(ram[0x600000:0x600010]))[:4] == b"one!"
    m2, lines2, _, slot2, _ = _lines_rig()
    m2.bus.ram.buf[slot2:slot2 + 4] = b"two!"
    m2.mem_engine.load_key(5, bytes(16))                          # a new key: lines go, old key first
    assert not lines2.pages
    assert EncryptionEngine.decrypt(KEY, 0x600000, bytes(m2.bus.ram.buf[0x600000:0x600010]))[:4] == b"two!"


def test_sev_guest_fast_stores_reach_dram_before_anyone_reads_it():
    """Stores of the SEV guest on the fast path (the second store to a page
    finds it in the write cache) leave the line dirty; the first read of the
    page through the bus (here the hypervisor's) writes it back, as
    ciphertext; DRAM never holds the plaintext."""
    from test_sev_hw import sev_rig, KEY as GKEY
    r = sev_rig("mov dword ptr [0x600000], 0x41414141\nmov dword ptr [0x600004], 0x42424242\n"
                "mov dword ptr [0x600008], 0x43434343\nhlt").run()
    ram = r.m.bus.ram
    assert 0x600 in r.m.enc_lines.dirty
    assert ram.buf.find(b"AAAABBBB", 0, ram.size) < 0
    raw = r.m.bus.read_bytes(0x600000, 16)
    assert EncryptionEngine.decrypt(GKEY, 0x600000, raw)[:12] == b"AAAABBBBCCCC"
    assert bytes(ram.buf[0x600000:0x600010]) == raw and not r.m.enc_lines.dirty
    assert ram.buf.find(b"AAAABBBB", 0, ram.size) < 0
