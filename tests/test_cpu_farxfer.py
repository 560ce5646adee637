"""Segment loads and privilege-changing control transfers (svmsim/cpu/ops/farxfer.py).

Each test builds a small machine with its own GDT/IDT/TSS, runs real machine
code (assembled with GNU as at test time) and checks the architectural
outcome against AMD APM vol 2 ch. 4/8/12 and the vol 3 instruction pages.
Code ends in ``jmp .`` and runs for a fixed instruction budget.
"""
import os
import subprocess
import tempfile

import iced_x86
import pytest

from svmsim.machine import Machine
from svmsim.cpu import ops
from svmsim.cpu.decoder import build_insn
from svmsim.cpu.exceptions import CpuException, GP, NP, SS as SS_VEC, TS, UD
from svmsim.cpu.segments import Segment, ES, CS, SS, DS, FS, GS, descriptor_to_segment

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
PML4, PDPT, PD = 0x10000, 0x11000, 0x12000
KCODE, UCODE, HANDLER = 0x100000, 0x200000, 0x300000
KSTACK, USTACK = 0x80000, 0x90000


def desc(base, limit, access, flags):
    """An 8-byte segment descriptor: access byte (P DPL S type) and flags nibble (G D/B L AVL)."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40
            | ((limit >> 16) & 0xF) << 48 | flags << 52 | (base >> 24) << 56)


# Selectors of the test GDT.
K64, KDATA, U32, UDATA, U64, K32 = 0x08, 0x10, 0x18, 0x20, 0x28, 0x30
TSS_SEL, NOTPRESENT, GATE, DATA_DPL1, K16 = 0x38, 0x48, 0x50, 0x58, 0x60
GDT_ENTRIES = {
    K64: desc(0, 0xFFFFF, 0x9A, 0xA),
    KDATA: desc(0, 0xFFFFF, 0x92, 0xC),
    U32: desc(0, 0xFFFFF, 0xFA, 0xC),         # SYSRET_CS (compat) = 0x18
    UDATA: desc(0, 0xFFFFF, 0xF2, 0xC),       # SYSRET_CS + 8
    U64: desc(0, 0xFFFFF, 0xFA, 0xA),         # SYSRET_CS + 16
    K32: desc(0, 0xFFFFF, 0x9A, 0xC),
    NOTPRESENT: desc(0, 0xFFFFF, 0x12, 0xC),  # data, P=0
    DATA_DPL1: desc(0, 0xFFFFF, 0xB2, 0xC),
    K16: desc(0, 0xFFFF, 0x9A, 0x0),
}
GDT_LIMIT = 0x6F


def asm(source, bits):
    """Assemble Intel-syntax GNU as source for ``bits``-bit code at address 0."""
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("a.s", "a.o", "a.bin"))
        with open(s, "w") as f:
            f.write(f".intel_syntax noprefix\n.code{bits}\n{source}\n")
        subprocess.run(["as", "--64", "-o", o, s], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True, capture_output=True)
        return open(b, "rb").read()


def gate64(offset, sel=K64, dpl=0, ist=0, gtype=0xE):
    lo = (offset & 0xFFFF) | sel << 16 | ist << 32 | (0x80 | dpl << 5 | gtype) << 40 | (offset >> 16 & 0xFFFF) << 48
    return lo.to_bytes(8, "little") + (offset >> 32).to_bytes(8, "little")


def gate32(offset, sel=K32, dpl=0, gtype=0xE, count=0):
    return ((offset & 0xFFFF) | sel << 16 | count << 32 | (0x80 | dpl << 5 | gtype) << 40
            | (offset >> 16) << 48).to_bytes(8, "little")


def make(mode):
    """A machine in 'long64' (paging, EFER.LME/LMA) or 'prot32' with the test GDT."""
    m = Machine(mem_size="16M")
    cpu = m.cpus[0]
    for sel, d in GDT_ENTRIES.items():
        m.bus.write(GDT + sel, 8, d)
    cpu.gdtr_base, cpu.gdtr_limit = GDT, GDT_LIMIT
    cpu.idtr_base, cpu.idtr_limit = IDT, 0xFFF
    cpu.cr0 = 0x31                                      # PE, ET, NE
    data = descriptor_to_segment(KDATA, *split(GDT_ENTRIES[KDATA]))
    for i in (ES, SS, DS, FS, GS):
        cpu.segs[i] = data.copy()
    if mode == "long64":
        m.bus.write(PML4, 8, PDPT | 7)
        m.bus.write(PDPT, 8, PD | 7)
        for i in range(8):                              # 16 MiB, user-accessible 2 MiB pages
            m.bus.write(PD + 8 * i, 8, (i << 21) | 0x87)
        cpu.cr3, cpu.cr4 = PML4, 0x20
        cpu.efer = (1 << 8) | (1 << 10) | 1             # LME, LMA, SCE
        cpu.cr0 |= 1 << 31
        cpu.segs[CS] = descriptor_to_segment(K64, *split(GDT_ENTRIES[K64]))
        # 64-bit TSS descriptor (16 bytes) at TSS_SEL.
        m.bus.write(GDT + TSS_SEL, 8, desc(TSS, 0x67, 0x89, 0))
        m.bus.write(GDT + TSS_SEL + 8, 8, 0)
    else:
        cpu.segs[CS] = descriptor_to_segment(K32, *split(GDT_ENTRIES[K32]))
        m.bus.write(GDT + TSS_SEL, 8, desc(TSS, 0x67, 0x89, 0))
    cpu.tr = Segment(TSS_SEL, TSS, 0x67, 0x8B)
    cpu.regs[4] = KSTACK
    cpu.tlb.flush_all("test")
    cpu.update_mode()
    return m, cpu


def split(d):
    return d & 0xFFFFFFFF, d >> 32


def load(m, addr, source, bits):
    m.bus.write_bytes(addr, asm(source, bits))


def run(m, cpu, rip, n=200):
    cpu.rip = rip
    m.engine.run(cpu, n)


def to_user64(cpu):
    """Put the CPU at CPL 3 in 64-bit mode (as an IRETQ would)."""
    cpu.segs[CS] = descriptor_to_segment(U64 | 3, *split(GDT_ENTRIES[U64]))
    cpu.segs[SS] = descriptor_to_segment(UDATA | 3, *split(GDT_ENTRIES[UDATA]))
    cpu.set_cpl(3)
    cpu.regs[4] = USTACK
    cpu.update_mode()


def insn(cpu, source, bits=None):
    """Decode one instruction (assembled from ``source``) for calling a handler directly."""
    bits = bits or cpu.bits
    i = iced_x86.Decoder(bits, asm(source, bits), ip=cpu.rip).decode()
    ins = build_insn(i, bits)
    ins.fn, ins.ends_block = ops.lookup(ins)
    return ins


def fault(cpu, source, bits=None):
    with pytest.raises(CpuException) as e:
        ins = insn(cpu, source, bits)
        ins.fn(cpu, ins)
    return e.value.vector, e.value.error_code


# ================================================================ long-mode entry
def test_far_jump_enters_64bit_mode_from_protected_mode_with_paging():
    """The long-mode entry sequence: PAE, CR3, EFER.LME, CR0.PG (-> LMA, in
    compatibility mode), then a far JMP into an L=1 code segment."""
    m, cpu = make("prot32")
    m.bus.write(PML4, 8, PDPT | 3)
    m.bus.write(PDPT, 8, PD | 3)
    m.bus.write(PD, 8, 0x83)
    load(m, KCODE, f"jmp {K64}:{KCODE + 0x100:#x}", 32)
    load(m, KCODE + 0x100, "movabs rax, 0x123456789abcdef0\njmp .", 64)
    cpu.cr4, cpu.cr3, cpu.efer = 0x20, PML4, 1 << 8
    mov_cr = ops.BY_CODE.get(iced_x86.Code.MOV_CR_R32)
    if mov_cr is None:
        # MOV CRn is not wired yet: do what MOV CR0 does (APM vol 2, 14.6.1).
        cpu.cr0 |= 1 << 31
        cpu.efer |= 1 << 10
        cpu.update_mode()
    else:
        load(m, KCODE - 0x20, f"mov eax, cr0\nbts eax, 31\nmov cr0, eax\njmp {K64}:{KCODE + 0x100:#x}", 32)
        cpu.rip = KCODE - 0x20
    if mov_cr is None:
        assert cpu.bits == 32 and not cpu.long64       # compatibility mode until the far JMP
    run(m, cpu, cpu.rip if mov_cr is not None else KCODE)
    assert cpu.bits == 64 and cpu.long64
    assert cpu.segs[CS].sel == K64 and cpu.regs[0] == 0x123456789ABCDEF0
    assert m.bus.read(GDT + K64 + 5, 1) & 1        # accessed bit set in the descriptor


# ================================================================ IRETQ / INT with stack switch
def test_iretq_to_cpl3_and_int_back_switches_to_rsp0_with_exact_frame():
    m, cpu = make("long64")
    m.bus.write(TSS + 4, 8, 0x70008)                    # RSP0 (not 16-byte aligned)
    m.bus.write_bytes(IDT + 0x80 * 16, gate64(HANDLER, dpl=3))
    load(m, KCODE, f"""
        push {UDATA | 3}
        push {USTACK}
        push 0x202
        push {U64 | 3}
        push {UCODE}
        iretq""", 64)
    user = asm("mov eax, 0x1234\nint 0x80\nmov ebx, 5\njmp .", 64)
    m.bus.write_bytes(UCODE, user)
    load(m, HANDLER, "mov r15, rsp\nmov r14, ss\niretq", 64)
    run(m, cpu, KCODE, 100)
    after_int = UCODE + 5 + 2
    r15 = cpu.regs[15]
    assert r15 == 0x70000 - 40                          # aligned down to 16, then 5 quadwords
    frame = [m.bus.read(r15 + 8 * i, 8) for i in range(5)]
    assert frame == [after_int, U64 | 3, 0x202, USTACK, UDATA | 3]
    assert cpu.regs[14] == 0                            # SS = null selector, RPL 0, in the handler
    # Back in user mode after the handler's IRETQ.
    assert cpu.cpl == 3 and cpu.segs[CS].sel == U64 | 3 and cpu.segs[SS].sel == UDATA | 3
    assert cpu.regs[4] == USTACK and cpu.regs[3] == 5 and cpu.rflags & 0x200


def test_int_uses_ist_stack_at_same_privilege():
    m, cpu = make("long64")
    m.bus.write(TSS + 0x24, 8, 0xA0000)                 # IST1
    m.bus.write_bytes(IDT + 0x81 * 16, gate64(HANDLER, ist=1))
    load(m, KCODE, "int 0x81\njmp .", 64)
    load(m, HANDLER, "mov r15, rsp\njmp .", 64)
    run(m, cpu, KCODE, 20)
    r15 = cpu.regs[15]
    assert r15 == 0xA0000 - 40
    assert [m.bus.read(r15 + 8 * i, 8) for i in range(5)] == [KCODE + 2, K64, 2, KSTACK, KDATA]
    assert cpu.regs[4] == r15                           # the interrupted stack was not used


def test_iretq_restores_iopl_only_at_cpl0_and_if_only_when_cpl_le_iopl():
    m, cpu = make("long64")
    to_user64(cpu)
    # Frame on the user stack: RIP, CS, RFLAGS (IOPL=3, IF=1), RSP, SS.
    frame = [UCODE + 0x40, U64 | 3, 0x3202, USTACK, UDATA | 3]
    for i, v in enumerate(frame):
        m.bus.write(USTACK - 40 + 8 * i, 8, v)
    cpu.regs[4] = USTACK - 40
    load(m, UCODE, "iretq", 64)
    load(m, UCODE + 0x40, "jmp .", 64)
    run(m, cpu, UCODE, 5)
    assert cpu.rip == UCODE + 0x40 and cpu.regs[4] == USTACK
    assert cpu.get_rflags() & 0x3200 == 0               # IOPL 0, CPL 3 > IOPL: IF unchanged (0)


def test_iret_unblocks_nmi():
    m, cpu = make("long64")
    cpu.nmi_blocked = True
    for i, v in enumerate([KCODE + 0x10, K64, 2, KSTACK, KDATA]):
        m.bus.write(KSTACK - 40 + 8 * i, 8, v)
    cpu.regs[4] = KSTACK - 40
    load(m, KCODE, "iretq", 64)
    load(m, KCODE + 0x10, "jmp .", 64)
    run(m, cpu, KCODE, 3)
    assert not cpu.nmi_blocked and cpu.rip == KCODE + 0x10


def test_iretq_to_cpl3_with_null_ss_is_gp0():
    m, cpu = make("long64")
    for i, v in enumerate([UCODE, U64 | 3, 2, USTACK, 0]):
        m.bus.write(KSTACK - 40 + 8 * i, 8, v)
    cpu.regs[4] = KSTACK - 40
    assert fault(cpu, "iretq") == (GP, 0)
    assert cpu.regs[4] == KSTACK - 40 and cpu.cpl == 0  # nothing changed


def test_iret_nested_task_is_not_modelled():
    from svmsim.errors import NotModelled
    m, cpu = make("prot32")
    cpu.set_rflags(0x4002)
    with pytest.raises(NotModelled):
        ins = insn(cpu, "iretd")
        ins.fn(cpu, ins)


# ================================================================ #GP/#NP/#SS error codes
@pytest.mark.parametrize("source, expect", [
    ("mov ax, 0\nmov ss, ax", (GP, 0)),                        # null SS
    (f"mov ax, {UDATA | 3}\nmov ss, ax", (GP, UDATA)),         # SS DPL 3 != CPL 0
    (f"mov ax, {KDATA | 3}\nmov ds, ax", (GP, KDATA)),         # RPL 3 > DPL 0
    ("mov ax, 0x1f8\nmov ds, ax", (GP, 0x1F8)),                # beyond the GDT limit
    ("mov ax, 0x1fc\nmov es, ax", (GP, 0x1FC)),                # TI=1 with no LDT
    (f"mov ax, {NOTPRESENT}\nmov fs, ax", (NP, NOTPRESENT)),   # not present data
    (f"mov ax, {K32}\nmov ss, ax", (GP, K32)),                 # code segment into SS
    (f"mov ax, {TSS_SEL}\nmov ds, ax", (GP, TSS_SEL)),         # system segment
])
def test_protected_mode_segment_load_faults_deliver_error_code(source, expect):
    m, cpu = make("prot32")
    m.bus.write_bytes(IDT + 13 * 8, gate32(HANDLER))
    m.bus.write_bytes(IDT + 11 * 8, gate32(HANDLER + 0x10))
    load(m, KCODE, source + "\njmp .", 32)
    load(m, HANDLER, "pop eax\nmov ebx, 13\njmp .", 32)
    load(m, HANDLER + 0x10, "pop eax\nmov ebx, 11\njmp .", 32)
    run(m, cpu, KCODE, 20)
    assert (cpu.regs[3], cpu.regs[0]) == expect
    assert m.bus.read(cpu.regs[4], 4) == KCODE + 4        # EIP of the faulting MOV


def test_not_present_stack_segment_is_ss_fault():
    m, cpu = make("prot32")
    m.bus.write(GDT + NOTPRESENT, 8, desc(0, 0xFFFFF, 0x12, 0xC))
    cpu.regs[0] = NOTPRESENT
    assert fault(cpu, "mov ss, ax", 32) == (SS_VEC, NOTPRESENT)


def test_null_loads_keep_base_and_make_segment_unusable():
    m, cpu = make("prot32")
    cpu.segs[DS].base = 0x1234
    cpu.regs[0] = 3
    ins = insn(cpu, "mov ds, ax")
    ins.fn(cpu, ins)
    assert cpu.segs[DS].sel == 3 and cpu.segs[DS].base == 0x1234 and not cpu.segs[DS].present
    with pytest.raises(CpuException) as e:
        cpu.read(DS, 0, 4)
    assert (e.value.vector, e.value.error_code) == (GP, 0)


def test_null_ss_allowed_in_64bit_mode_at_cpl0_with_rpl_equal_cpl():
    m, cpu = make("long64")
    cpu.regs[0] = 0
    ins = insn(cpu, "mov ss, ax")
    ins.fn(cpu, ins)
    assert cpu.segs[SS].sel == 0 and cpu.shadow
    cpu.regs[0] = 1                                      # RPL 1 != CPL 0
    assert fault(cpu, "mov ss, ax") == (GP, 0)


def test_mov_ss_sets_interrupt_shadow_and_accessed_bit():
    m, cpu = make("prot32")
    m.bus.write(GDT + KDATA, 8, GDT_ENTRIES[KDATA])     # accessed bit clear
    load(m, KCODE, f"mov ax, {KDATA}\nmov ss, ax\njmp .", 32)
    cpu.rip = KCODE
    m.engine.step(cpu)
    m.engine.step(cpu)
    assert cpu.shadow and cpu.rip == KCODE + 6
    assert m.bus.read(GDT + KDATA + 5, 1) == 0x93


def test_64bit_fs_load_takes_32bit_descriptor_base():
    m, cpu = make("long64")
    m.bus.write(GDT + DATA_DPL1, 8, desc(0x12345678, 0xFFFFF, 0x92, 0xC))
    cpu.segs[FS].base = 0xFFFF800000000000               # as if WRMSR FS_BASE
    cpu.regs[0] = DATA_DPL1
    ins = insn(cpu, "mov fs, ax")
    ins.fn(cpu, ins)
    assert cpu.segs[FS].base == 0x12345678 and cpu.ebase[FS] == 0x12345678


def test_mov_from_sreg_zero_extends_register_and_stores_16_bits_to_memory():
    m, cpu = make("long64")
    cpu.regs[0] = 0xFFFFFFFFFFFFFFFF
    ins = insn(cpu, "mov eax, ds")
    ins.fn(cpu, ins)
    assert cpu.regs[0] == KDATA
    cpu.regs[0] = 0xFFFFFFFFFFFFFFFF
    ins = insn(cpu, "mov ax, ds")
    ins.fn(cpu, ins)
    assert cpu.regs[0] == 0xFFFFFFFFFFFF0000 | KDATA
    m.bus.write(0x5000, 8, 0xFFFFFFFFFFFFFFFF)
    cpu.regs[3] = 0x5000
    ins = insn(cpu, "mov [rbx], ds")
    ins.fn(cpu, ins)
    assert m.bus.read(0x5000, 8) == 0xFFFFFFFFFFFF0000 | KDATA


def test_push_pop_fs_in_64bit_mode_use_8_bytes():
    m, cpu = make("long64")
    m.bus.write(KSTACK - 8, 8, 0xFFFFFFFFFFFFFFFF)
    load(m, KCODE, f"push fs\npush 0x{KDATA:x}\npop gs\njmp .", 64)
    run(m, cpu, KCODE, 5)
    assert m.bus.read(KSTACK - 8, 8) == KDATA
    assert cpu.regs[4] == KSTACK - 8 and cpu.segs[GS].sel == KDATA


def test_lss_loads_stack_pointer_and_ss():
    m, cpu = make("prot32")
    m.bus.write(0x5000, 4, 0x7000)
    m.bus.write(0x5004, 2, KDATA)
    cpu.regs[3] = 0x5000
    ins = insn(cpu, "lss esp, [ebx]")
    ins.fn(cpu, ins)
    assert cpu.regs[4] == 0x7000 and cpu.segs[SS].sel == KDATA


# ================================================================ far JMP/CALL/RET, call gates
def test_far_jmp_checks_privilege_and_presence():
    m, cpu = make("prot32")
    assert fault(cpu, "jmp 0x0:0x1000", 32) == (GP, 0)
    assert fault(cpu, f"jmp {U32}:0x1000", 32) == (GP, U32)          # DPL 3 != CPL 0
    assert fault(cpu, f"jmp {KDATA}:0x1000", 32) == (GP, KDATA)      # not code
    m.bus.write(GDT + NOTPRESENT, 8, desc(0, 0xFFFFF, 0x1A, 0xC))
    assert fault(cpu, f"jmp {NOTPRESENT}:0x1000", 32) == (NP, NOTPRESENT)
    assert fault(cpu, f"jmp {K16}:0x10000", 32) == (GP, 0)           # beyond the 64 KiB limit


def test_call_gate_to_inner_privilege_copies_parameters_and_retf_returns():
    m, cpu = make("prot32")
    m.bus.write_bytes(GDT + GATE, gate32(HANDLER, sel=K32, dpl=3, gtype=0xC, count=2))
    m.bus.write(TSS + 4, 4, KSTACK)                     # ESP0
    m.bus.write(TSS + 8, 2, KDATA)                      # SS0
    cpu.segs[CS] = descriptor_to_segment(U32 | 3, *split(GDT_ENTRIES[U32]))
    cpu.segs[SS] = descriptor_to_segment(UDATA | 3, *split(GDT_ENTRIES[UDATA]))
    cpu.segs[DS] = cpu.segs[SS].copy()
    cpu.set_cpl(3)
    cpu.regs[4] = USTACK
    load(m, UCODE, f"push 0x11111111\npush 0x22222222\ncall {GATE | 3}:0\njmp .", 32)
    load(m, HANDLER, f"mov edi, esp\nmov ax, {KDATA}\nmov es, ax\nmov esi, cs\nretf 8", 32)
    run(m, cpu, UCODE, 20)
    edi = cpu.regs[7]
    assert edi == KSTACK - 24
    ret_eip = UCODE + 5 + 5 + 7
    assert [m.bus.read(edi + 4 * i, 4) for i in range(6)] == [
        ret_eip, U32 | 3, 0x22222222, 0x11111111, USTACK - 8, UDATA | 3]
    assert cpu.regs[6] == K32                            # CPL 0 inside: CS RPL 0
    # RETF 8 returned to CPL 3, released the parameters on both stacks, and
    # nulled ES (DPL 0 < CPL 3); DS (DPL 3) survived.
    assert cpu.cpl == 3 and cpu.segs[CS].sel == U32 | 3 and cpu.rip == ret_eip
    assert cpu.regs[4] == USTACK and cpu.segs[SS].sel == UDATA | 3
    assert cpu.segs[ES].sel == 0 and not cpu.segs[ES].present
    assert cpu.segs[DS].sel == UDATA | 3


def test_call_gate_dpl_below_cpl_is_gp_gate_selector():
    m, cpu = make("prot32")
    m.bus.write_bytes(GDT + GATE, gate32(HANDLER, sel=K32, dpl=0, gtype=0xC))
    cpu.segs[CS] = descriptor_to_segment(U32 | 3, *split(GDT_ENTRIES[U32]))
    cpu.set_cpl(3)
    assert fault(cpu, f"call {GATE | 3}:0", 32) == (GP, GATE)


def test_call_gate_bad_tss_stack_is_ts():
    m, cpu = make("prot32")
    m.bus.write_bytes(GDT + GATE, gate32(HANDLER, sel=K32, dpl=3, gtype=0xC))
    m.bus.write(TSS + 8, 2, UDATA)                      # SS0 with DPL 3: invalid
    cpu.segs[CS] = descriptor_to_segment(U32 | 3, *split(GDT_ENTRIES[U32]))
    cpu.set_cpl(3)
    cpu.regs[4] = USTACK
    assert fault(cpu, f"call {GATE | 3}:0", 32) == (TS, UDATA)
    assert cpu.cpl == 3 and cpu.regs[4] == USTACK      # rolled back


def test_64bit_call_gate_to_cpl0_pushes_quadwords_on_rsp0():
    m, cpu = make("long64")
    m.bus.write_bytes(GDT + GATE, gate64(HANDLER, sel=K64, dpl=3, gtype=0xC))
    m.bus.write(TSS + 4, 8, 0x70000)
    to_user64(cpu)
    load(m, UCODE, f"call fword ptr [rip + target]\njmp .\ntarget: .long 0\n.word {GATE | 3}", 64)
    load(m, HANDLER, "mov r15, rsp\nmov r14, ss\nretfq", 64)
    run(m, cpu, UCODE, 20)
    r15 = cpu.regs[15]
    assert r15 == 0x70000 - 32
    assert [m.bus.read(r15 + 8 * i, 8) for i in range(4)] == [UCODE + 6, U64 | 3, USTACK, UDATA | 3]
    assert cpu.regs[14] == 0                            # null SS, RPL = new CPL 0
    assert cpu.cpl == 3 and cpu.rip == UCODE + 6 and cpu.regs[4] == USTACK


def test_task_switch_targets_are_not_modelled():
    from svmsim.errors import NotModelled
    m, cpu = make("prot32")
    with pytest.raises(NotModelled):
        ins = insn(cpu, f"jmp {TSS_SEL}:0", 32)
        ins.fn(cpu, ins)


def test_real_mode_far_call_and_retf_and_iret():
    m = Machine(mem_size="16M")
    cpu = m.cpus[0]
    cpu.segs[CS] = Segment(0, 0, 0xFFFF, 0x9B)
    cpu.regs[4] = 0x7000
    cpu.update_mode()
    load(m, 0x7C00, "call 0x1000:0x20\njmp .", 16)
    load(m, 0x10020, "push 0x202\npush cs\npush 0x30\niret", 16)
    load(m, 0x10030, "mov bx, cs\nretf", 16)
    run(m, cpu, 0x7C00, 10)
    assert cpu.regs[3] & 0xFFFF == 0x1000
    assert cpu.segs[CS].sel == 0 and cpu.rip == 0x7C05 and cpu.regs[4] == 0x7000
    assert cpu.get_rflags() & 0x200                     # IF came from the IRET frame


# ================================================================ SYSCALL/SYSRET, SWAPGS, SYSENTER
def test_syscall_sysret_round_trip_amd_ss_attributes():
    m, cpu = make("long64")
    cpu.msr[0xC0000081] = (U32 << 48) | (K64 << 32)     # STAR
    cpu.msr[0xC0000082] = HANDLER                       # LSTAR
    cpu.msr[0xC0000084] = 0x700                         # SFMASK: TF, IF, DF
    to_user64(cpu)
    cpu.set_rflags(0x603)                               # IF, DF, CF
    load(m, UCODE, "mov eax, 60\nsyscall\njmp .", 64)
    load(m, HANDLER, "mov r13, rcx\nmov r12, r11\nmov r9, cs\nmov r8, ss\nsysretq", 64)
    cpu.rip = UCODE
    for _ in range(6):                                  # up to SYSRETQ
        m.engine.step(cpu)
    assert cpu.rip == HANDLER + 12 and cpu.cpl == 0
    assert cpu.get_rflags() == 0x2 | 0x1                # SFMASK cleared IF and DF
    assert cpu.segs[SS].attr == 0xC93 and cpu.segs[CS].attr & 0x200
    m.engine.run(cpu, 5)
    assert cpu.regs[13] == UCODE + 7 and cpu.regs[12] == 0x603
    assert cpu.regs[9] == K64 and cpu.regs[8] == K64 + 8
    assert cpu.cpl == 3 and cpu.rip == UCODE + 7
    assert cpu.segs[CS].sel == U64 | 3 and cpu.segs[CS].attr & 0x260 == 0x260
    # AMD: SYSRET loads only SS's selector; the attributes are SYSCALL's DPL-0 ones.
    assert cpu.segs[SS].sel == UDATA | 3 and cpu.segs[SS].dpl == 0
    assert cpu.get_rflags() == 0x603


def test_sysret_with_noncanonical_rcx_faults_at_cpl3():
    m, cpu = make("long64")
    cpu.msr[0xC0000081] = (U32 << 48) | (K64 << 32)
    events = []
    m.listeners.append(events.append)
    m.bus.write_bytes(IDT + 13 * 16, gate64(HANDLER))
    load(m, HANDLER, "jmp .", 64)
    m.bus.write(TSS + 4, 8, 0x70000)
    cpu.regs[1] = 0x0000800000000000
    cpu.regs[11] = 2
    load(m, KCODE, "sysretq", 64)
    run(m, cpu, KCODE, 5)
    assert cpu.rip == HANDLER and cpu.cpl == 0
    # The #GP frame shows it was taken at CPL 3 (stack switch to RSP0).
    assert cpu.regs[4] == 0x70000 - 48
    assert m.bus.read(0x70000 - 32, 8) == U64 | 3


def test_syscall_without_sce_is_ud():
    m, cpu = make("long64")
    cpu.efer &= ~1
    assert fault(cpu, "syscall") == (UD, None)


def test_swapgs_exchanges_gs_base_with_kernel_gs_base():
    m, cpu = make("long64")
    cpu.segs[GS].base = 0x5000
    cpu.msr[0xC0000102] = 0x6000
    cpu.update_mode()
    m.bus.write(0x6008, 8, 0xDEADBEEF)
    load(m, KCODE, "swapgs\nmov rax, gs:[8]\njmp .", 64)
    run(m, cpu, KCODE, 5)
    assert cpu.regs[0] == 0xDEADBEEF
    assert cpu.segs[GS].base == 0x6000 and cpu.msr[0xC0000102] == 0x5000
    to_user64(cpu)
    assert fault(cpu, "swapgs") == (GP, 0)


def test_sysenter_is_ud_in_long_mode_and_works_in_protected_mode():
    m, cpu = make("long64")
    assert fault(cpu, "sysenter") == (UD, None)
    m, cpu = make("prot32")
    cpu.msr.update({0x174: K32, 0x175: 0x6000, 0x176: HANDLER})
    cpu.set_cpl(3)
    ins = insn(cpu, "sysenter", 32)
    ins.fn(cpu, ins)
    assert (cpu.cpl, cpu.segs[CS].sel, cpu.segs[SS].sel, cpu.regs[4], cpu.rip) == (
        0, K32, K32 + 8, 0x6000, HANDLER)
    cpu.regs[1], cpu.regs[2] = USTACK, UCODE
    ins = insn(cpu, "sysexit", 32)
    ins.fn(cpu, ins)
    assert (cpu.cpl, cpu.segs[CS].sel, cpu.segs[SS].sel, cpu.regs[4], cpu.rip) == (
        3, (K32 + 16) | 3, (K32 + 24) | 3, USTACK, UCODE)


# ================================================================ descriptor tables
def test_ltr_marks_tss_busy_and_refuses_a_busy_tss():
    m, cpu = make("prot32")
    load(m, KCODE, f"mov ax, {TSS_SEL}\nltr ax\nstr ebx\njmp .", 32)
    run(m, cpu, KCODE, 5)
    assert cpu.tr.sel == TSS_SEL and cpu.tr.attr & 0xF == 0xB and cpu.tr.base == TSS
    assert m.bus.read(GDT + TSS_SEL + 5, 1) == 0x8B
    assert cpu.regs[3] == TSS_SEL
    cpu.regs[0] = TSS_SEL
    assert fault(cpu, "ltr ax", 32) == (GP, TSS_SEL)
    cpu.regs[0] = 0
    assert fault(cpu, "ltr ax", 32) == (GP, 0)


def test_ltr_long_mode_reads_16_byte_descriptor():
    m, cpu = make("long64")
    m.bus.write(GDT + TSS_SEL + 8, 4, 0xFFFF8000)       # base bits 63:32
    # 64-bit base not canonical? 0xFFFF8000_00003000 is canonical.
    cpu.regs[0] = TSS_SEL
    ins = insn(cpu, "ltr ax")
    ins.fn(cpu, ins)
    assert cpu.tr.base == 0xFFFF800000003000


def test_lgdt_operand_sizes_and_sgdt_umip():
    m, cpu = make("prot32")
    m.bus.write(0x5000, 2, 0x27)
    m.bus.write(0x5002, 4, 0xAABBCCDD)
    cpu.regs[3] = 0x5000
    ins = insn(cpu, "lgdt [ebx]", 32)
    ins.fn(cpu, ins)
    assert (cpu.gdtr_base, cpu.gdtr_limit) == (0xAABBCCDD, 0x27)
    ins = insn(cpu, "data16 lgdt [ebx]", 32)             # 16-bit operand: 24-bit base
    ins.fn(cpu, ins)
    assert cpu.gdtr_base == 0xBBCCDD
    ins = insn(cpu, "sgdt [ebx+8]", 32)
    ins.fn(cpu, ins)
    assert m.bus.read(0x5008, 2) == 0x27 and m.bus.read(0x500A, 4) == 0xBBCCDD
    cpu.cr4 |= 1 << 11
    cpu.set_cpl(3)
    assert fault(cpu, "sgdt [ebx]", 32) == (GP, 0)
    assert fault(cpu, "lgdt [ebx]", 32) == (GP, 0)


def test_lgdt_64bit_loads_8_byte_base():
    m, cpu = make("long64")
    m.bus.write(0x5000, 2, 0xFF)
    m.bus.write(0x5002, 8, 0xFFFFFFFF80001000)
    cpu.regs[3] = 0x5000
    ins = insn(cpu, "lgdt [rbx]")
    ins.fn(cpu, ins)
    assert cpu.gdtr_base == 0xFFFFFFFF80001000
    m.bus.write(0x5002, 8, 0x0000800000000000)
    assert fault(cpu, "lgdt [rbx]") == (GP, 0)


def test_lar_lsl_verr_verw():
    m, cpu = make("prot32")
    cpu.set_cpl(3)
    cpu.regs[1] = UDATA | 3
    ins = insn(cpu, "lar eax, ecx", 32)
    ins.fn(cpu, ins)
    assert cpu.get_rflags() & 0x40 and cpu.regs[0] == 0x00CFF200
    ins = insn(cpu, "lsl eax, ecx", 32)
    ins.fn(cpu, ins)
    assert cpu.get_rflags() & 0x40 and cpu.regs[0] == 0xFFFFFFFF
    cpu.regs[1] = KDATA                                   # DPL 0 < CPL 3: invisible
    cpu.regs[0] = 7
    ins = insn(cpu, "lar eax, ecx", 32)
    ins.fn(cpu, ins)
    assert not cpu.get_rflags() & 0x40 and cpu.regs[0] == 7
    for sel, r, w in ((UDATA | 3, True, True), (U32 | 3, True, False), (0x1F8, False, False), (0, False, False)):
        cpu.regs[1] = sel
        ins = insn(cpu, "verr cx", 32)
        ins.fn(cpu, ins)
        assert bool(cpu.get_rflags() & 0x40) == r
        ins = insn(cpu, "verw cx", 32)
        ins.fn(cpu, ins)
        assert bool(cpu.get_rflags() & 0x40) == w


def test_arpl_adjusts_rpl():
    m, cpu = make("prot32")
    cpu.regs[0], cpu.regs[1] = 0x10, 0x23
    ins = insn(cpu, "arpl ax, cx", 32)
    ins.fn(cpu, ins)
    assert cpu.regs[0] & 0xFFFF == 0x13 and cpu.get_rflags() & 0x40


def test_int_in_v86_with_iopl_below_3_is_gp():
    m, cpu = make("prot32")
    cpu.set_rflags(0x20002)
    cpu.set_cpl(3)
    assert fault(cpu, "int 0x21", 16) == (GP, 0)


def test_int_gate_dpl_fault_is_reported_on_the_int_instruction():
    m, cpu = make("long64")
    m.bus.write_bytes(IDT + 0x80 * 16, gate64(HANDLER, dpl=0))
    m.bus.write_bytes(IDT + 13 * 16, gate64(HANDLER + 0x10))
    m.bus.write(TSS + 4, 8, 0x70000)
    load(m, HANDLER + 0x10, "jmp .", 64)
    to_user64(cpu)
    load(m, UCODE, "int 0x80\njmp .", 64)
    run(m, cpu, UCODE, 5)
    assert cpu.rip == HANDLER + 0x10
    # #GP(0x80*8+2): IDT vector, pushed RIP = the INT instruction itself.
    assert m.bus.read(0x70000 - 48, 8) == 0x80 * 8 + 2
    assert m.bus.read(0x70000 - 40, 8) == UCODE


def test_protected_int_from_cpl3_and_iretd_back_through_tss_stack():
    """32-bit interrupt gate: SS0:ESP0 from the TSS, frame EIP CS EFLAGS ESP SS;
    IRETD back to CPL 3 nulls a DPL-0 data segment register."""
    m, cpu = make("prot32")
    m.bus.write_bytes(IDT + 0x80 * 8, gate32(HANDLER, dpl=3))
    m.bus.write(TSS + 4, 4, KSTACK)
    m.bus.write(TSS + 8, 2, KDATA)
    cpu.segs[CS] = descriptor_to_segment(U32 | 3, *split(GDT_ENTRIES[U32]))
    cpu.segs[SS] = descriptor_to_segment(UDATA | 3, *split(GDT_ENTRIES[UDATA]))
    cpu.set_cpl(3)
    cpu.set_rflags(0x202)
    cpu.regs[4] = USTACK
    load(m, UCODE, "int 0x80\nmov ecx, 9\njmp .", 32)
    load(m, HANDLER, f"mov edi, esp\nmov ax, {KDATA}\nmov gs, ax\niretd", 32)
    run(m, cpu, UCODE, 20)
    edi = cpu.regs[7]
    assert edi == KSTACK - 20
    assert [m.bus.read(edi + 4 * i, 4) for i in range(5)] == [UCODE + 2, U32 | 3, 0x202, USTACK, UDATA | 3]
    assert cpu.cpl == 3 and cpu.regs[1] == 9 and cpu.regs[4] == USTACK
    assert cpu.segs[GS].sel == 0 and not cpu.segs[GS].present
    assert cpu.get_rflags() & 0x200
