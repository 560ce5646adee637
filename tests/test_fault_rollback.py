"""A fault in the middle of an event delivery or of an IRET puts the CPU back
as it was (interrupts.py ``_snapshot``, farxfer_support.py ``Rollback``),
now by keeping the segment registers' objects instead of copying them: both
only ever put new Segment objects into the CPU.  IRET's outer return also
updates the mode once instead of twice (farxfer.py ``_return_outer``).

Machine code (APM vol 2, 8.9 long-mode delivery; vol 3 IRET): the frames the
handlers see and the segment registers afterwards are those of the CPU
before the faulting instruction, and a #GP + IRETQ loop copies no segment."""
import pytest

from svmsim.cpu.segments import Segment, CS, SS, DS, ES
from test_cpu_farxfer import (make, load, run, gate64, asm, TSS, IDT, KCODE, HANDLER, KSTACK, PD,
                              K64, KDATA, U64, UDATA, UCODE, USTACK)

MISSING_MSR = 0xDEAD0000
PF_HANDLER = HANDLER + 0x1000
HOLE = 0x600000                 # its 2 MiB page is made not present


def _segs(cpu):
    return [(s.sel, s.base, s.limit, s.attr) for s in cpu.segs]


def test_a_fault_writing_the_frame_leaves_the_interrupted_state():
    """#GP from RDMSR with RSP in a not-present page: the frame's first store
    faults (#PF), the delivery is undone, and the #PF (on IST1) reports the
    RDMSR's RIP, CS, RFLAGS, RSP and SS as they were."""
    m, cpu = make("long64")
    m.bus.write(PD + 8 * (HOLE >> 21), 8, 0)
    cpu.tlb.flush_all("test")
    m.bus.write(TSS + 0x24, 8, 0xA0000)                 # IST1
    m.bus.write_bytes(IDT + 13 * 16, gate64(HANDLER))
    m.bus.write_bytes(IDT + 14 * 16, gate64(PF_HANDLER, ist=1))
    load(m, HANDLER, "jmp .", 64)
    load(m, PF_HANDLER, "mov r15, rsp\njmp .", 64)
    load(m, KCODE, f"mov rsp, {HOLE + 0x10:#x}\nmov ecx, {MISSING_MSR:#x}\nrdmsr\njmp .", 64)
    before = _segs(cpu)
    run(m, cpu, KCODE, 20)
    rdmsr_at = KCODE + len(asm(f"mov rsp, {HOLE + 0x10:#x}\nmov ecx, {MISSING_MSR:#x}", 64))
    assert cpu.rip == PF_HANDLER + 3 and cpu.cr2 >> 12 == (HOLE + 0x10 - 8) >> 12
    frame = [m.bus.read(cpu.regs[15] + 8 * i, 8) for i in range(6)]
    # error code (P=0, W=1), RIP, CS, RFLAGS, RSP, SS: the RDMSR's.
    assert frame == [2, rdmsr_at, K64, 2, HOLE + 0x10, KDATA]
    assert _segs(cpu) == before and cpu.cpl == 0


def test_iretq_faulting_on_its_ss_leaves_every_segment():
    """IRETQ to CPL 3 whose SS is a CPL-0 data segment: #GP(SS) after CS was
    checked; CS, SS, the data segments, CPL and RSP stay as they were."""
    m, cpu = make("long64")
    m.bus.write_bytes(IDT + 13 * 16, gate64(HANDLER))
    load(m, HANDLER, "mov r15, rsp\njmp .", 64)
    frame = [UCODE, U64 | 3, 0x202, USTACK, KDATA]      # SS RPL/DPL 0 != 3
    for i, v in enumerate(frame):
        m.bus.write(KSTACK - 40 + 8 * i, 8, v)
    load(m, KCODE, f"mov rsp, {KSTACK - 40:#x}\niretq", 64)
    iretq_at = KCODE + len(asm(f"mov rsp, {KSTACK - 40:#x}", 64))
    before = _segs(cpu)
    run(m, cpu, KCODE, 10)
    r15 = cpu.regs[15]
    got = [m.bus.read(r15 + 8 * i, 8) for i in range(6)]
    assert got == [KDATA, iretq_at, K64, 2, KSTACK - 40, KDATA]      # #GP(SS selector)
    assert _segs(cpu) == before and cpu.cpl == 0


def test_iretq_to_cpl3_nulls_what_cpl3_may_not_use_and_takes_the_new_stack():
    """An outer return: DS/ES with DPL 0 become null, SS:RSP from the frame,
    the mode (CPL 3, 64-bit) as after the one update_mode."""
    m, cpu = make("long64")
    for i, v in enumerate([UCODE, U64 | 3, 0x202, USTACK, UDATA | 3]):
        m.bus.write(KSTACK - 40 + 8 * i, 8, v)
    load(m, KCODE, f"mov rsp, {KSTACK - 40:#x}\niretq", 64)
    load(m, UCODE, "push 7\njmp .", 64)
    run(m, cpu, KCODE, 4)
    assert cpu.cpl == 3 and cpu.user_access and cpu.long64 and cpu.stack_bits == 64
    assert cpu.segs[CS].sel == U64 | 3 and cpu.segs[SS].sel == UDATA | 3
    assert cpu.segs[DS].sel == 0 and cpu.segs[ES].sel == 0 and not cpu.segs[DS].attr
    assert cpu.regs[4] == USTACK - 8 and m.bus.read(USTACK - 8, 8) == 7


def test_gp_and_iretq_copy_no_segment(monkeypatch):
    """The #GP + IRETQ round of kvm-unit-tests' rdmsr_safe (a handler that
    steps over the RDMSR): 100 of them copy no segment register."""
    m, cpu = make("long64")
    copies = []
    real = Segment.copy
    monkeypatch.setattr(Segment, "copy", lambda s: copies.append(1) or real(s))
    m.bus.write_bytes(IDT + 13 * 16, gate64(HANDLER))
    load(m, HANDLER, "add qword ptr [rsp + 8], 2\nadd rsp, 8\ninc r14\niretq", 64)
    load(m, KCODE, f"xor r14d, r14d\nmov ecx, {MISSING_MSR:#x}\nmov ebx, 100\n"
                   "1: rdmsr\ndec ebx\njnz 1b\njmp .", 64)
    before = _segs(cpu)
    run(m, cpu, KCODE, 2000)
    assert cpu.regs[14] == 100 and cpu.regs[4] == KSTACK
    # The same registers (CS and SS now loaded by IRETQ, with their accessed bits).
    assert [s[:3] + (s[3] | 1,) for s in _segs(cpu)] == [s[:3] + (s[3] | 1,) for s in before]
    assert copies == []
