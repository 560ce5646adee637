"""SEV in the CPU and the memory controller (issue 5, items 1-3): CPUID and
SYSCFG, the C-bit and the cut address bits, SEV guests whose memory is
ciphertext in DRAM, and VMRUN's SEV checks (seed S13-S20)."""
import pytest

from svmharness import SvmRig, NestedTables, GUEST_CODE
from cpuharness import asm, run_code
from svmsim.svm.exits import ExitCode
from svmsim.memory.encryption import EncryptionEngine

SYSCFG, HWCR = 0xC0010010, 0xC0010015
KEY = bytes(range(0x40, 0x50))


def test_mem_encryption_cuts_address_bits():
    """With MemEncryptionModEn, bits 46:43 of a page-table entry are reserved
    (48 -> 43 bits, C-bit 47): a #PF with RSV (seed S14)."""
    def setup(m, cpu):
        from cpuharness import PD
        cpu.msr[SYSCFG] = 0
        from svmsim.cpu import msr
        msr.wrmsr(cpu, SYSCFG, 1 << 23)
        m.bus.write(PD + 8 * 3, 8, (1 << 44) | 0x600000 | 0x83)
    r = run_code(asm("mov eax, [0x600000]"), setup=setup)
    assert r.exception[0] == 14 and r.exception[1] & 8


def sev_rig(code32, asid=5, key=KEY, smm_lock=True, np=True, data=()):
    """A 32-bit SEV guest with paging off (all its accesses private) over an
    identity nested map; its code is encrypted with ``key`` at its address."""
    r = SvmRig(b"", intercepts=[ExitCode.HLT, ExitCode.CPUID], NP_ENABLE=int(np), SEV_ENABLE=1)
    m, cpu = r.m, r.cpu
    from svmsim.cpu import msr
    msr.wrmsr(cpu, SYSCFG, 1 << 23)
    if smm_lock:
        cpu.msr[HWCR] = cpu.msr.get(HWCR, 0) | 1
    nt = NestedTables(m.bus)
    nt.identity(0, 0x1000000)
    code = asm(code32, bits=32)
    code += bytes(-len(code) % 16)
    if 1 <= asid <= 15:
        m.mem_engine.load_key(asid, key)
    m.bus.write_bytes(GUEST_CODE, EncryptionEngine.encrypt(key, GUEST_CODE, code))
    for addr, plain in data:
        m.bus.write_bytes(addr, EncryptionEngine.encrypt(key, addr, plain))
    v = r.vmcb
    v["N_CR3"], v["EFER"], v["CR0"], v["CR4"], v["GUEST_ASID"] = nt.root, 1 << 12, 0x11, 0, asid
    v.set_segment("CS", 0x18, 0xC9B, 0xFFFFFFFF, 0)
    return r


def test_sev_guest_memory_is_ciphertext_in_dram():
    """The guest writes a value; DRAM (what the hypervisor or a DMA device reads)
    holds ciphertext; the guest reads it back as plaintext (seed S13)."""
    r = sev_rig("mov dword ptr [0x600000], 0x11223344\nmov eax, [0x600000]\nhlt").run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x11223344
    raw = r.m.bus.read_bytes(0x600000, 16)
    assert raw[:4] != (0x11223344).to_bytes(4, "little")
    assert EncryptionEngine.decrypt(KEY, 0x600000, raw)[:4] == (0x11223344).to_bytes(4, "little")


def test_hypervisor_write_into_private_page_is_garbage_for_the_guest():
    r = sev_rig("mov eax, [0x600000]\nhlt",
                data=[(0x600000, (0xCAFE).to_bytes(4, "little") + bytes(12))])
    r.m.bus.write(0x600000, 4, 0xCAFE)                        # plaintext, by the hypervisor
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF != 0xCAFE


def test_another_guests_key_reads_garbage():
    """Guest A (ASID 1) writes a private value; guest B (ASID 2, its own key)
    reading the same host page sees garbage (seed S13)."""
    r = sev_rig("mov dword ptr [0x600000], 0xBEEF\nhlt").run()
    assert r.exitcode == ExitCode.HLT
    key_b = bytes(range(0x80, 0x90))
    r.m.mem_engine.load_key(6, key_b)
    code = asm("mov eax, [0x600000]\nhlt", bits=32)
    code += bytes(-len(code) % 16)
    r.m.bus.write_bytes(GUEST_CODE, EncryptionEngine.encrypt(key_b, GUEST_CODE, code))
    r.vmcb["RIP"], r.vmcb["GUEST_ASID"] = GUEST_CODE, 6
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF != 0xBEEF


@pytest.mark.parametrize("kw,rule", [({"np": False}, "SEV_NP"), ({"smm_lock": False}, "SEV_SMMLOCK"),
                                     ({"asid": 16}, "SEV_ASID")])
def test_sev_vmrun_checks(kw, rule):
    """Seed S17: nested paging on, HWCR.SmmLock set, ASID within 1..ECX."""
    r = sev_rig("hlt", **kw).run()
    assert r.exitcode == ExitCode.INVALID
    assert r.cpu.svm.invalid[-1].rule == rule


def test_sev_bits_ignored_without_mem_encryption():
    """Seed S19: MemEncryptionModEn = 0 -> SEV_ENABLE is ignored: the guest runs
    unencrypted (its code must then be plaintext)."""
    r = sev_rig("hlt")
    from svmsim.cpu import msr
    msr.wrmsr(r.cpu, SYSCFG, 0)
    r.m.bus.write_bytes(GUEST_CODE, asm("hlt", bits=32))
    r.run()
    assert r.exitcode == ExitCode.HLT and not r.cpu.svm.sev


def test_long_mode_sev_guest_private_shared_and_fetch():
    """A 64-bit SEV guest with its own (private) page tables: a C=1 page is
    ciphertext in DRAM, a C=0 page is shared plaintext, and its code runs
    from a page mapped with C=0, because fetches are always private (S20)."""
    r = sev_rig("hlt")
    m = r.m
    c = 1 << 47
    code = asm("mov dword ptr [0x600000], 0x1111\nmov dword ptr [0x800000], 0x2222\n"
               "mov eax, [0x800000]\nhlt")
    code += bytes(-len(code) % 16)
    m.bus.write_bytes(GUEST_CODE, EncryptionEngine.encrypt(KEY, GUEST_CODE, code))
    tables = {0x700000: {0: 0x701000 | c | 3}, 0x701000: {0: 0x702000 | c | 3},
              0x702000: {2: 0x400000 | 0x83,            # code, C = 0
                         3: 0x600000 | c | 0x83,        # private data
                         4: 0x800000 | 0x83}}           # shared data
    for base, entries in tables.items():
        page = bytearray(4096)
        for i, e in entries.items():
            page[8 * i:8 * i + 8] = e.to_bytes(8, "little")
        m.bus.write_bytes(base, EncryptionEngine.encrypt(KEY, base, bytes(page)))
    v = r.vmcb
    v["EFER"] = (1 << 12) | (1 << 8) | (1 << 10) | (1 << 11)
    v["CR0"], v["CR4"], v["CR3"] = 0x80000011, 1 << 5, 0x700000 | c
    v.set_segment("CS", 0x08, 0xA9B, 0xFFFFFFFF, 0)
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] == 0x2222
    assert m.bus.read(0x800000, 4) == 0x2222                 # shared: plaintext
    assert m.bus.read(0x600000, 4) != 0x1111                 # private: ciphertext
    assert EncryptionEngine.decrypt(KEY, 0x600000, m.bus.read_bytes(0x600000, 16))[:4] == \
        (0x1111).to_bytes(4, "little")


def test_sme_host_page_with_c_bit_is_encrypted_with_the_sme_key():
    """SME (APM 7.10): a host mapping with the C-bit set reads and writes
    through slot 0's key; the same frame mapped without it shows ciphertext."""
    def setup(m, cpu):
        from cpuharness import PD
        from svmsim.cpu import msr
        msr.wrmsr(cpu, SYSCFG, 1 << 23)
        m.bus.write(PD + 8 * 3, 8, (1 << 47) | 0x600000 | 0x83)   # C = 1
        m.bus.write(PD + 8 * 4, 8, 0x600000 | 0x83)               # same frame, C = 0
    r = run_code(asm("mov dword ptr [0x600000], 0x5a5a\nmov eax, [0x600000]\nmov ebx, [0x800000]"),
                 setup=setup)
    assert r.regs[0] == 0x5a5a and r.regs[3] != 0x5a5a


def test_sev_needs_a_64bit_host():
    """Seed S18: with CPUID 8000_001F EAX[11], VMRUN of an SEV guest from a
    legacy-mode host is VMEXIT_INVALID (rule SEV_64BIT_HOST)."""
    from types import SimpleNamespace
    from svmsim.svm import sev_checks
    from svmsim.machine import Machine
    m = Machine(mem_size="16M")
    host = SimpleNamespace(machine=m, msr={SYSCFG: 1 << 23, HWCR: 1}, efer=1 << 12)
    vmcb = {"SEV_ENABLE": 1, "NP_ENABLE": 1, "GUEST_ASID": 1}
    assert sev_checks._host_64(vmcb, None, host).rule == "SEV_64BIT_HOST"
    host.efer |= 1 << 10
    assert sev_checks._host_64(vmcb, None, host) is None


def test_reusing_a_page_with_another_key_without_wbinvd_is_reported():
    """Seed S13 / APM 7.10.6: a page used with guest A's key, then with guest B's
    without a cache flush in between, is reported; WBINVD clears the record."""
    r = sev_rig("mov dword ptr [0x600000], 1\nhlt").run()
    r.m.mem_engine.load_key(6, bytes(16))
    code = asm("mov dword ptr [0x600000], 2\nhlt", bits=32)
    code += bytes(-len(code) % 16)
    r.m.bus.write_bytes(GUEST_CODE, EncryptionEngine.encrypt(bytes(16), GUEST_CODE, code))
    r.vmcb["RIP"], r.vmcb["GUEST_ASID"] = GUEST_CODE, 6
    r.run()
    assert any("page 0x600000 used with key slot 6 after slot 5" in n for n in r.m.notes)
    n = len(r.m.notes)
    r.m.mem_engine.flush()
    r.vmcb["RIP"], r.vmcb["GUEST_ASID"] = GUEST_CODE, 5
    r.m.bus.write_bytes(GUEST_CODE, EncryptionEngine.encrypt(KEY, GUEST_CODE, code))
    r.run()
    assert len([x for x in r.m.notes if "0x600000" in x and "slot 5 after slot 6" in x]) == 0


def test_translated_code_is_not_shared_across_keys():
    """An SEV guest's blocks are reused while its key decrypts the same DRAM,
    but the same ciphertext under another key is decoded afresh (it is other
    code), and rewriting the page drops the blocks."""
    r = sev_rig("mov eax, 1\nmov ebx, 2\nhlt").run()
    assert r.exitcode == ExitCode.HLT
    stats = r.m.engine.stats
    first = stats["blocks_translated"]
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    assert stats["blocks_translated"] == first                # same key: reused
    r.m.mem_engine.load_key(6, bytes(range(0x90, 0xA0)))
    r.vmcb["RIP"], r.vmcb["GUEST_ASID"] = GUEST_CODE, 6
    try:
        r.run(max_insns=50)
    except Exception:
        pass                                                   # garbage code: anything may happen
    assert stats["blocks_translated"] > first                 # another key: decoded afresh
