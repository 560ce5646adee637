"""64-bit event frames and IRETQ's pops moved at once (farxfer_support.py
``write_slots``/``pop_slots``) where all slots lie on one page of the fast
caches, slot by slot elsewhere, in the order that decides which fault comes
first (APM vol 2, 8.9.3 "Interrupt Stack Frame"; vol 3 IRET: CS is checked
before SS:RSP are popped).

Machine code: the frames and faults where the frame crosses a page, where
its second page is not present, and where IRETQ's CS is bad while its SS:RSP
slots lie on a page that is not present; and a #GP + IRETQ loop that takes
no slot-by-slot stack access."""
import sys

from svmsim.cpu.state import Cpu
from test_cpu_farxfer import make, load, run, gate64, asm, TSS, IDT, KCODE, HANDLER, PD, K64, KDATA

MISSING_MSR = 0xDEAD0000
PF_HANDLER = HANDLER + 0x1000
HOLE = 0x600000                 # its 2 MiB page is made not present
SLOT_NAMES = ["error code", "RIP", "CS", "RFLAGS", "RSP", "SS"]


def _gp_machine(gp_handler="mov r15, rsp\njmp ."):
    m, cpu = make("long64")
    m.bus.write(TSS + 0x24, 8, 0xA0000)                 # IST1 for #PF
    m.bus.write_bytes(IDT + 13 * 16, gate64(HANDLER))
    m.bus.write_bytes(IDT + 14 * 16, gate64(PF_HANDLER, ist=1))
    load(m, HANDLER, gp_handler, 64)
    load(m, PF_HANDLER, "mov r14, rsp\njmp .", 64)
    return m, cpu


def _gp_at(m, cpu, rsp):
    """RDMSR of a missing MSR with RSP = ``rsp``: (RIP of the RDMSR)."""
    pre = f"mov rsp, {rsp:#x}\nmov ecx, {MISSING_MSR:#x}"
    load(m, KCODE, pre + "\nrdmsr\njmp .", 64)
    run(m, cpu, KCODE, 20)
    return KCODE + len(asm(pre, 64))


def test_a_frame_across_two_pages_is_the_same_frame():
    m, cpu = _gp_machine()
    rsp = 0x500010                                     # 48 bytes down: 16 on this page, 32 below
    at = _gp_at(m, cpu, rsp)
    assert cpu.rip == HANDLER + 3 and cpu.regs[15] == rsp - 48
    assert [m.bus.read(rsp - 48 + 8 * i, 8) for i in range(6)] == [0, at, K64, 2, rsp, KDATA]


def test_a_frame_into_a_page_not_present_faults_at_its_first_slot_there():
    """Slots go from SS (highest) down: the ones above the hole are stored,
    the first one in it faults (#PF, CR2 its address), the #GP is undone and
    the #PF reports the RDMSR as it was."""
    m, cpu = _gp_machine()
    m.bus.write(PD + 8 * ((HOLE - 0x200000) >> 21), 8, 0)   # 0x400000-0x5FFFFF not present
    cpu.tlb.flush_all("test")
    rsp = HOLE + 0x10                                  # SS and RSP slots on HOLE, the rest below
    at = _gp_at(m, cpu, rsp)
    assert cpu.rip == PF_HANDLER + 3 and cpu.cr2 == HOLE - 8
    assert m.bus.read(HOLE + 8, 8) == KDATA and m.bus.read(HOLE, 8) == rsp   # stored before the fault
    r14 = cpu.regs[14]
    assert [m.bus.read(r14 + 8 * i, 8) for i in range(6)] == [2, at, K64, 2, rsp, KDATA]


def test_iretq_with_a_bad_cs_faults_on_cs_before_popping_ss_rsp_from_a_hole():
    """RIP, CS, RFLAGS on the page below HOLE, RSP and SS on HOLE (not
    present): #GP(CS) for a CS that is a data segment, not #PF."""
    m, cpu = _gp_machine()
    m.bus.write(PD + 8 * (HOLE >> 21), 8, 0)
    cpu.tlb.flush_all("test")
    base = HOLE - 24
    for i, v in enumerate([KCODE + 0x40, KDATA, 2]):
        m.bus.write(base + 8 * i, 8, v)
    pre = f"mov rsp, {base:#x}"
    load(m, KCODE, pre + "\niretq", 64)
    run(m, cpu, KCODE, 10)
    assert cpu.rip == HANDLER + 3
    r15 = cpu.regs[15]
    frame = [m.bus.read(r15 + 8 * i, 8) for i in range(6)]
    assert frame == [KDATA, KCODE + len(asm(pre, 64)), K64, 2, base, KDATA]   # #GP(sel), RSP unpopped


def test_gp_and_iretq_move_their_frames_at_once(monkeypatch):
    """kvm-unit-tests' rdmsr_safe round: after the first, no slot-by-slot
    pop or frame store (the delivery's six slots, IRETQ's five)."""
    calls = {"pop": 0, "write": 0}
    real_pop, real_write = Cpu.pop, Cpu.write

    def pop(self, size):
        calls["pop"] += 1
        return real_pop(self, size)

    def write(self, seg, off, size, value):
        calls["write"] += sys._getframe(1).f_code.co_name == "_deliver_long"
        return real_write(self, seg, off, size, value)
    m, cpu = _gp_machine("add qword ptr [rsp + 8], 2\nadd rsp, 8\ninc r13\niretq")
    load(m, KCODE, f"xor r13d, r13d\nmov ecx, {MISSING_MSR:#x}\nmov ebx, 100\n"
                   "1: rdmsr\ndec ebx\njnz 1b\njmp .", 64)
    run(m, cpu, KCODE, 30)                             # warm: the stack page in the caches
    monkeypatch.setattr(Cpu, "pop", pop)
    monkeypatch.setattr(Cpu, "write", write)
    run(m, cpu, cpu.rip, 2000)
    assert cpu.regs[13] == 100 and cpu.regs[4] == 0x80000
    assert calls == {"pop": 0, "write": 0}
