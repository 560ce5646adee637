"""VMLOAD and VMSAVE move exactly their state (APM vol 3 VMLOAD/VMSAVE: FS,
GS, TR, LDTR with their hidden state, KernelGSBase, STAR, LSTAR, CSTAR,
SFMASK, SYSENTER_CS/ESP/EIP) -- svm/vmstate.py packs each segment and the
MSR block as its own struct, so the save-area bytes between them (GDTR,
IDTR, ...) must stay as they were; and a VMLOAD in 64-bit mode takes effect
for the next FS/GS access at once.  Machine code on the host (cpuharness)."""
from cpuharness import run_code, asm
from svmsim.svm.vmcb import VmcbView

VMCB = 0x300000


def _svm_host(code, mem=None):
    def setup(m, cpu):
        cpu.efer |= 1 << 12
        cpu.update_mode()
    return run_code(asm(code), setup=setup, mem=mem)


def test_vmsave_writes_only_its_fields():
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(0x1000))
    r = _svm_host(f"mov rax, {VMCB}\nvmsave", mem={VMCB: pattern})
    after = r.machine.bus.read_bytes(VMCB, 0x1000)
    v = VmcbView(r.machine.bus, VMCB)
    order = "ES CS SS DS FS GS GDTR LDTR IDTR TR".split()     # table B-2, 16 bytes each from 400h
    mine = {0x400 + 0x10 * order.index(seg) + i for seg in ("FS", "GS", "TR", "LDTR") for i in range(16)}
    mine |= set(range(0x600, 0x640))                     # STAR .. SYSENTER_EIP
    changed = {i for i in range(0x1000) if after[i] != pattern[i]}
    assert changed and changed <= mine
    assert v["GDTR.BASE"] == int.from_bytes(pattern[0x468:0x470], "little")
    assert v["IDTR.LIMIT"] == int.from_bytes(pattern[0x484:0x486], "little")


def test_vmload_then_vmsave_round_trips_every_field():
    r = _svm_host(
        "mov ecx, 0xC0000081\nmov eax, 0x11\nmov edx, 0x22\nwrmsr\n"      # STAR
        "mov ecx, 0x176\nmov eax, 0x33\nxor edx, edx\nwrmsr\n"            # SYSENTER_EIP
        "mov ecx, 0xC0000100\nmov eax, 0x44\nmov edx, 0x55\nwrmsr\n"      # FS.base
        f"mov rax, {VMCB}\nvmsave\n"
        "mov ecx, 0xC0000081\nxor eax, eax\nxor edx, edx\nwrmsr\n"
        "mov ecx, 0xC0000100\nwrmsr\n"
        f"mov rax, {VMCB}\nvmload\n")
    cpu = r.cpu
    assert cpu.msr[0xC0000081] == 0x22_00000011 and cpu.msr[0x176] == 0x33
    assert cpu.segs[4].base == 0x55_00000044


def test_vmload_in_64_bit_mode_moves_the_fs_base_at_once():
    """The next FS-relative load after VMLOAD uses the loaded base."""
    v_fs_base, data = 0x210000, 0x5A5A1234
    r = _svm_host(f"mov rax, {VMCB}\nvmload\nmov eax, dword ptr fs:[8]",
                  mem={VMCB + 0x448: v_fs_base.to_bytes(8, "little"),
                       v_fs_base + 8: data.to_bytes(4, "little")})
    assert r.regs[0] & 0xFFFFFFFF == data


def _vmsave_notices(code):
    """Run ``code`` on an SVM host; the write notices (RAM offset, length)
    that reached the VMLOAD/VMSAVE fields of the VMCB (400h-63Fh)."""
    notices = []

    def setup(m, cpu):
        cpu.efer |= 1 << 12
        cpu.update_mode()
        m.bus.write_watchers.append(lambda off, n: notices.append((off, n)))
    r = run_code(asm(code), setup=setup)
    lo, hi = VMCB + 0x400, VMCB + 0x640
    return r, [(off, n) for off, n in notices if off < hi and lo < off + n]


def test_vmsave_of_the_state_already_saved_writes_nothing():
    """VMSAVE stores its state into the VMCB (APM vol 3 VMSAVE); where the
    VMCB holds that state already (a hypervisor's loop saving what it
    loaded) no byte changes and no write is noticed (self-modifying code,
    walk memo and SEV line watchers see nothing).  A changed MSR is
    written and noticed again."""
    r, notices = _vmsave_notices(
        f"mov rax, {VMCB}\nvmsave\nvmload\nvmsave\n"
        "mov ecx, 0xC0000081\nmov eax, 0x11\nmov edx, 0x22\nwrmsr\n"      # STAR
        f"mov rax, {VMCB}\nvmsave\nvmsave")
    assert len(notices) == 2                   # the first VMSAVE and the one after WRMSR
    assert VmcbView(r.machine.bus, VMCB)["STAR"] == 0x22_00000011
