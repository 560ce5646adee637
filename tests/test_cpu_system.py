"""System instructions on a real Machine: control/debug registers, TLB flush
rules (visible through stale translations), privilege rules, I/O permission,
x87/SSE state save and restore (AMD APM vol 2 ch. 3, 5, 13; vol 3; vol 4)."""
import iced_x86
import pytest

from cpuharness import run_code, asm, make_machine, DATA_ADDR, PD
from svmsim.cpu import ops
from svmsim.cpu.decoder import build_insn
from svmsim.cpu.exceptions import CpuException, GP, UD, NM, DB
from svmsim.cpu.flags import IF, IOPL, CF
from svmsim.cpu.segments import Segment

EFER_LMA = 1 << 10


def exec_insn(cpu, code: bytes):
    """Run one instruction's handler directly (any CPL); returns the
    CpuException raised, or None."""
    i = iced_x86.Decoder(cpu.bits, code, ip=cpu.rip).decode()
    ins = build_insn(i, cpu.bits)
    fn, ends = ops.lookup(ins)
    try:
        fn(cpu, ins)
    except CpuException as e:
        return e
    if not ends:
        cpu.rip = ins.next_ip
    return None


def fault(r):
    return r.exception[:2] if r.exception else None


# ------------------------------------------------------------------ CR0 / EFER / long mode
def _long_mode_tables(m, cpu):
    """Identity page tables (2 MiB pages) as the harness builds for long mode."""
    from cpuharness import PML4, PDPT
    m.bus.write(PML4, 8, PDPT | 3)
    m.bus.write(PDPT, 8, PD | 3)
    for i in range(512):
        m.bus.write(PD + 8 * i, 8, (i << 21) | 0x83)


ENABLE_LONG = """
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, 0x10000
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


def test_mov_cr0_activates_long_mode_in_compatibility_mode():
    r = run_code(asm(ENABLE_LONG, bits=32), mode="prot32", setup=_long_mode_tables)
    assert r.exception is None
    assert r.cpu.efer & EFER_LMA and r.cpu.cr0 >> 31
    assert r.cpu.bits == 32                      # CS.L=0: compatibility mode


def test_long_mode_needs_pae():
    code = asm(ENABLE_LONG.replace("or eax, 0x20", "and eax, 0"), bits=32)
    r = run_code(code, mode="prot32", setup=_long_mode_tables)
    assert fault(r) == (GP, 0) and not r.cpu.efer & EFER_LMA


def test_cr0_gp_rules():
    assert fault(run_code(asm("mov eax, 0x80000010\nmov cr0, eax", bits=32), mode="prot32")) == (GP, 0)
    assert fault(run_code(asm("mov eax, 0x20000011\nmov cr0, eax", bits=32), mode="prot32")) == (GP, 0)
    r = run_code(asm("mov rax, cr0\nbtr eax, 31\nmov cr0, rax"))
    assert fault(r) == (GP, 0)                    # clearing PG in 64-bit mode
    r = run_code(asm("mov rax, cr0\nbts rax, 32\nmov cr0, rax"))
    assert fault(r) == (GP, 0)                    # bits 63:32
    r = run_code(asm("mov eax, 0x60000011\nmov cr0, eax\nmov ebx, cr0", bits=32), mode="prot32")
    assert r.exception is None and r.regs[3] == 0x60000011   # CD+NW ok, ET reads 1


def test_leaving_long_mode_from_compatibility_mode_clears_lma():
    r = run_code(asm("mov eax, cr0\nand eax, 0x7fffffff\nmov cr0, eax", bits=32), mode="compat32")
    assert r.exception is None and not r.cpu.efer & EFER_LMA


# ------------------------------------------------------------------ CR3 / CR4
def test_cr4_reserved_and_long_mode_rules():
    assert fault(run_code(asm("mov rax, cr4\nbts rax, 22\nmov cr4, rax"))) == (GP, 0)   # PKE
    assert fault(run_code(asm("mov rax, cr4\nbts rax, 0\nmov cr4, rax"))) == (GP, 0)    # VME
    assert fault(run_code(asm("mov rax, cr4\nbts rax, 12\nmov cr4, rax"))) == (GP, 0)   # LA57
    assert fault(run_code(asm("mov rax, cr4\nbtr rax, 5\nmov cr4, rax"))) == (GP, 0)   # PAE in LM
    r = run_code(asm("mov rax, cr3\nor rax, 1\nmov cr3, rax\nmov rax, cr4\nbts rax, 17\nmov cr4, rax"))
    assert fault(r) == (GP, 0)                    # PCIDE with CR3[11:0] != 0
    r = run_code(asm("mov eax, 0x20020\nmov cr4, eax", bits=32), mode="prot32")
    assert fault(r) == (GP, 0)                    # PCIDE outside long mode


def test_pcid_and_cr3_reserved_bits():
    code = asm("mov rax, cr4\nbts rax, 17\nmov cr4, rax\nmov rax, cr3\nor rax, 5\nmov cr3, rax\n"
               "mov rbx, cr3")
    r = run_code(code)
    assert r.exception is None and r.regs[3] & 0xFFF == 5 and r.cpu.tlb.pcid == 5
    assert fault(run_code(asm("mov rax, cr3\nbts rax, 55\nmov cr3, rax"))) == (GP, 0)


def test_cr8_is_the_tpr():
    r = run_code(asm("mov eax, 9\nmov cr8, rax\nmov rbx, cr8"))
    assert r.exception is None and r.regs[3] == 9 and r.cpu.lapic.tpr == 0x90
    assert fault(run_code(asm("mov eax, 0x10\nmov cr8, rax"))) == (GP, 0)


def test_mov_cr_at_cpl3_and_bad_cr_numbers():
    m = make_machine()
    cpu = m.cpus[0]
    cpu.cpl = 3
    assert exec_insn(cpu, bytes.fromhex("0f20c0")).vector == GP      # mov rax, cr0
    cpu.cpl = 0
    assert exec_insn(cpu, bytes.fromhex("0f20c8")).vector == UD      # mov rax, cr1


# ------------------------------------------------------------------ TLB behaviour
PT = 0x30000               # a 4 KiB page table for linear 4 MiB..6 MiB
PAGE_A, PAGE_B = 0x300000, 0x301000
LIN = 0x400000


def _small_pages(global_page=False):
    def setup(m, cpu):
        m.bus.write(PD + 8 * 2, 8, PT | 3)                 # PD entry 2 -> page table
        m.bus.write(PT, 8, PAGE_A | 3 | (0x100 if global_page else 0))
        m.bus.write(PAGE_A, 8, 0xAAAA)
        m.bus.write(PAGE_B, 8, 0xBBBB)
        cpu.cr4 |= 1 << 7                                  # PGE
    return setup


REMAP = f"mov rbx, [{LIN}]\nmov qword ptr [{PT}], {PAGE_B | 3}\n"


def test_stale_translation_until_invlpg():
    r = run_code(asm(REMAP + f"mov rcx, [{LIN}]\ninvlpg [{LIN}]\nmov rdx, [{LIN}]"),
                 setup=_small_pages())
    assert r.exception is None
    assert (r.regs[3], r.regs[1], r.regs[2]) == (0xAAAA, 0xAAAA, 0xBBBB)


def test_cr3_write_flushes_non_global_only():
    tail = f"mov rax, cr3\nmov cr3, rax\nmov rdx, [{LIN}]"
    r = run_code(asm(REMAP + tail), setup=_small_pages(global_page=False))
    assert r.regs[2] == 0xBBBB
    r = run_code(asm(REMAP + tail), setup=_small_pages(global_page=True))
    assert r.regs[2] == 0xAAAA                               # global survives MOV CR3


def test_cr3_no_flush_bit_with_pcide_and_pge_toggle():
    pre = "mov rax, cr4\nbts rax, 17\nmov cr4, rax\n"
    r = run_code(asm(pre + REMAP + f"mov rax, cr3\nbts rax, 63\nmov cr3, rax\nmov rdx, [{LIN}]"),
                 setup=_small_pages())
    assert r.exception is None and r.regs[2] == 0xAAAA       # bit 63: no flush
    r = run_code(asm(REMAP + f"mov rax, cr4\nbtr rax, 7\nmov cr4, rax\nmov rdx, [{LIN}]"),
                 setup=_small_pages(global_page=True))
    assert r.regs[2] == 0xBBBB                               # PGE change flushes globals


def test_invlpg_of_a_2m_page_drops_every_slice():
    code = asm("mov rbx, [0x600000]\nmov rcx, [0x601000]\n"
               f"mov qword ptr [{PD + 8 * 3}], {0x800000 | 0x83}\n"
               "invlpg [0x600000]\nmov rdx, [0x601000]")

    def setup(m, cpu):
        m.bus.write(0x601000, 8, 1)
        m.bus.write(0x801000, 8, 2)
    r = run_code(code, setup=setup)
    assert r.regs[1] == 1 and r.regs[2] == 2


def test_invpcid_types():
    m = make_machine()
    cpu = m.cpus[0]
    cpu.rip = 0x100000
    m.bus.write(DATA_ADDR, 8, 0)
    m.bus.write(DATA_ADDR + 8, 8, 0)
    cpu.regs[0], cpu.regs[1] = 4, DATA_ADDR                  # type 4: invalid
    code = bytes.fromhex("660f388201")                       # invpcid rax, [rcx]
    assert exec_insn(cpu, code).vector == GP
    cpu.regs[0] = 2
    assert exec_insn(cpu, code) is None
    m.bus.write(DATA_ADDR, 8, 1 << 12)                       # reserved descriptor bits
    cpu.regs[0] = 3
    assert exec_insn(cpu, code).vector == GP


# ------------------------------------------------------------------ debug registers
def test_debug_register_rules():
    r = run_code(asm("mov rax, 0x1\nmov dr4, rax\nmov rbx, dr6"))
    assert r.exception is None and r.regs[3] == 0xFFFF0FF1   # DR4 aliases DR6 (CR4.DE=0)
    r = run_code(asm("mov rax, cr4\nbts rax, 3\nmov cr4, rax\nmov rax, dr4"))
    assert fault(r)[0] == UD                                  # CR4.DE=1: DR4 is #UD
    assert fault(run_code(asm("mov rax, 1\nshl rax, 32\nmov dr7, rax"))) == (GP, 0)
    r = run_code(asm("mov eax, 0x2000\nmov dr7, rax\nmov rbx, dr0"))
    assert r.exception[0] == DB and r.cpu.dr[6] & (1 << 13) and not r.cpu.dr[7] & (1 << 13)


# ------------------------------------------------------------------ privileged misc
def test_clts_lmsw_smsw():
    r = run_code(asm("mov rax, cr0\nor eax, 8\nmov cr0, rax\nclts\nsmsw ebx\nxor eax, eax\nlmsw ax\n"
                     "mov rcx, cr0"))
    assert r.exception is None
    assert not r.regs[3] & 8 and r.regs[1] & 1               # TS cleared; LMSW kept PE


def test_hlt_and_privilege():
    r = run_code(asm("mov eax, 5"))              # the harness appends HLT
    assert r.cpu.halted and r.regs[0] == 5
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    cpu.cpl = 3
    for code in ("f4", "0f09", "0f01d1", "0f0138"):          # hlt, wbinvd, xsetbv, invlpg
        e = exec_insn(cpu, bytes.fromhex(code))
        assert e is not None and e.vector in (GP, UD), code


def test_cli_sti_iopl_rules_and_shadow():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    cpu.cpl = 3
    cpu.rflags &= ~IOPL
    assert exec_insn(cpu, b"\xfa").vector == GP             # CLI at CPL3, IOPL0
    cpu.rflags |= IOPL
    cpu.rflags &= ~IF
    assert exec_insn(cpu, b"\xfb") is None and cpu.rflags & IF and cpu.shadow
    cpu.shadow = False
    assert exec_insn(cpu, b"\xfb") is None and not cpu.shadow  # IF already 1: no shadow


def test_popf_rules_by_privilege():
    m = make_machine()
    cpu = m.cpus[0]
    cpu.set_rflags(0x2)
    cpu.regs[4] = 0x80000
    m.bus.write(0x80000 - 8, 8, IF | IOPL | CF | 0x2)
    cpu.regs[4] -= 8
    cpu.cpl = 3
    assert exec_insn(cpu, b"\x9d") is None                   # popfq at CPL3, IOPL0
    f = cpu.get_rflags()
    assert f & CF and not f & IF and not f & IOPL            # IF and IOPL silently kept
    cpu.cpl = 0
    cpu.regs[4] -= 8
    assert exec_insn(cpu, b"\x9d") is None
    assert cpu.get_rflags() & IF and cpu.get_rflags() & IOPL == IOPL and cpu.pending
    r = run_code(asm("pushfq\npop rax"))
    assert r.regs[0] & 0x2 and not r.regs[0] & (1 << 16)


def test_rdtsc_tsd_and_rdrand():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    cpu.cr4 |= 4
    cpu.cpl = 3
    assert exec_insn(cpu, b"\x0f\x31").vector == GP
    cpu.cpl = 0
    assert exec_insn(cpu, b"\x0f\x31") is None
    a = run_code(asm("rdrand rax\nsetc bl\nrdseed ecx"))
    b = run_code(asm("rdrand rax\nsetc bl\nrdseed ecx"))
    assert a.regs[3] & 0xFF == 1 and a.regs[0] == b.regs[0] and a.regs[1] == b.regs[1]


def test_ud2_ud0_ud1():
    for code in ("ud2", "ud1 eax, [rax]"):
        assert fault(run_code(asm(code)))[0] == UD


def test_xgetbv_xsetbv_rules():
    assert fault(run_code(asm("xor ecx, ecx\nxgetbv")))[0] == UD      # CR4.OSXSAVE=0
    pre = "mov rax, cr4\nbts rax, 18\nmov cr4, rax\nxor ecx, ecx\nxor edx, edx\n"
    r = run_code(asm(pre + "mov eax, 3\nxsetbv\nxgetbv"))
    assert r.exception is None and r.regs[0] == 3 and r.cpu.xcr0 == 3
    r = run_code(asm(pre + "mov eax, 7\nxsetbv\nxgetbv"))             # x87 | SSE | AVX
    assert r.exception is None and r.regs[0] == 7
    for bad in (2, 5, 0xF):                                             # no x87; AVX w/o SSE; bit 3
        assert fault(run_code(asm(pre + f"mov eax, {bad}\nxsetbv"))) == (GP, 0)
    assert fault(run_code(asm(pre + "inc ecx\nmov eax, 3\nxsetbv"))) == (GP, 0)


# ------------------------------------------------------------------ I/O
class Port:
    def __init__(self):
        self.writes = []
        self.next = 0x10

    def io_read(self, port, size):
        self.next += 1
        return self.next

    def io_write(self, port, size, value):
        self.writes.append((port, size, value))


TSS = 0x40000


def _tss_machine(denied_ports=()):
    m = make_machine()
    cpu = m.cpus[0]
    m.bus.write(TSS + 0x66, 2, 0x68)
    for p in denied_ports:
        m.bus.write(TSS + 0x68 + p // 8, 1, m.bus.read(TSS + 0x68 + p // 8, 1) | 1 << (p % 8))
    cpu.tr = Segment(0x28, TSS, 0x68 + 8192, 0x8B)
    dev = Port()
    m.io.register(0x300, 16, dev)
    return m, cpu, dev


def test_io_permission_bitmap_when_cpl_above_iopl():
    m, cpu, dev = _tss_machine(denied_ports=(0x302,))
    cpu.cpl = 3
    cpu.regs[2] = 0x300
    assert exec_insn(cpu, b"\xec") is None and cpu.regs[0] & 0xFF == 0x11     # in al, dx
    cpu.regs[2] = 0x301
    assert exec_insn(cpu, b"\x66\xed").vector == GP          # in ax, dx covers 0x302
    cpu.regs[2] = 0x303
    assert exec_insn(cpu, b"\xee") is None                   # out dx, al
    cpu.tr = Segment(0x28, TSS, 0x67, 0x8B)                  # no room for a bitmap
    assert exec_insn(cpu, b"\xee").vector == GP
    cpu.cpl = 0                                              # CPL <= IOPL: no bitmap check
    cpu.regs[2] = 0x302
    assert exec_insn(cpu, b"\xee") is None


def test_rep_outs_and_ins_with_direction():
    def setup(m, cpu):
        m.io.register(0x300, 4, dev)
        m.bus.write_bytes(DATA_ADDR, b"abcd")
    dev = Port()
    r = run_code(asm(f"mov dx, 0x300\nmov rsi, {DATA_ADDR}\nmov ecx, 4\nrep outsb\n"
                     f"mov rdi, {DATA_ADDR + 0x103}\nstd\nmov ecx, 2\nrep insw\ncld"), setup=setup)
    assert r.exception is None
    assert [w[2] for w in dev.writes] == list(b"abcd")
    assert r.regs[6] == DATA_ADDR + 4 and r.regs[1] == 0
    assert r.cpu.bus.read(DATA_ADDR + 0x103, 2) == 0x11 and r.cpu.bus.read(DATA_ADDR + 0x101, 2) == 0x12
    assert r.regs[7] == DATA_ADDR + 0xFF


# ------------------------------------------------------------------ x87 / SSE state
SSE_ON = "mov rax, cr4\nor eax, 0x200\nmov cr4, rax\n"


def test_fxsave_fxrstor_round_trip_and_alignment():
    code = asm(SSE_ON + f"mov rax, 0x1122334455667788\nmovq xmm3, rax\nmov rdi, {DATA_ADDR}\n"
               "fninit\nfxsave [rdi]\npxor xmm3, xmm3\nmovq rbx, xmm3\nfxrstor [rdi]\nmovq rcx, xmm3\n"
               "fnstcw [rdi+600]\nfnstsw ax\nstmxcsr [rdi+604]")
    r = run_code(code)
    assert r.exception is None
    bus = r.cpu.bus
    assert bus.read(DATA_ADDR, 2) == 0x37F and bus.read(DATA_ADDR + 4, 1) == 0   # FCW, all empty
    assert bus.read(DATA_ADDR + 24, 4) == 0x1F80 and bus.read(DATA_ADDR + 28, 4) == 0xFFFF
    assert bus.read(DATA_ADDR + 160 + 48, 8) == 0x1122334455667788
    assert r.regs[3] == 0 and r.regs[1] == 0x1122334455667788
    assert bus.read(DATA_ADDR + 600, 2) == 0x37F and bus.read(DATA_ADDR + 604, 4) == 0x1F80
    assert fault(run_code(asm(SSE_ON + f"mov rdi, {DATA_ADDR + 8}\nfxsave [rdi]"))) == (GP, 0)


def test_fxrstor_reserved_mxcsr_and_ldmxcsr():
    code = asm(SSE_ON + f"mov rdi, {DATA_ADDR}\nfxsave [rdi]\nmov dword ptr [rdi+24], 0x10000\n"
               "fxrstor [rdi]")
    assert fault(run_code(code)) == (GP, 0)
    code = asm(SSE_ON + f"mov rdi, {DATA_ADDR}\nmov dword ptr [rdi], 0x20000\nldmxcsr [rdi]")
    assert fault(run_code(code)) == (GP, 0)


def test_fpu_and_sse_fault_conditions():
    assert fault(run_code(asm("movaps xmm0, xmm1")))[0] == UD                   # OSFXSR=0
    r = run_code(asm(SSE_ON + "mov rax, cr0\nor eax, 8\nmov cr0, rax\nmovaps xmm0, xmm1"))
    assert fault(r)[0] == NM                                                  # CR0.TS
    r = run_code(asm("mov rax, cr0\nor eax, 8\nmov cr0, rax\nfninit"))
    assert fault(r)[0] == NM
    r = run_code(asm(SSE_ON + f"mov rdi, {DATA_ADDR + 4}\nmovaps xmm0, [rdi]"))
    assert fault(r) == (GP, 0)                                                # alignment
    r = run_code(asm(SSE_ON + f"mov rdi, {DATA_ADDR + 4}\nmovups xmm0, [rdi]\nmovdqu [rdi+32], xmm0"))
    assert r.exception is None


def test_sse_moves_copy_memory():
    def setup(m, cpu):
        m.bus.write_bytes(DATA_ADDR, bytes(range(16)))
    code = asm(SSE_ON + f"mov rsi, {DATA_ADDR}\nmovdqa xmm1, [rsi]\nmovaps [rsi+16], xmm1\n"
               "movd eax, xmm1\nmov rbx, -1\nmovq xmm2, rbx\nmovd xmm2, eax\nmovq rcx, xmm2\n"
               "xorps xmm1, xmm1\nmovdqu [rsi+32], xmm1\nmovnti [rsi+48], rbx")
    r = run_code(code, setup=setup)
    assert r.exception is None
    bus = r.cpu.bus
    assert bus.read_bytes(DATA_ADDR + 16, 16) == bytes(range(16))
    assert r.regs[0] == 0x03020100 and r.regs[1] == 0x03020100               # MOVD zero-extends
    assert bus.read_bytes(DATA_ADDR + 32, 16) == bytes(16)
    assert bus.read(DATA_ADDR + 48, 8) == (1 << 64) - 1


def test_xsave_header_and_xrstor_init():
    pre = SSE_ON + "mov rax, cr4\nbts rax, 18\nmov cr4, rax\nxor ecx, ecx\nxor edx, edx\nmov eax, 3\nxsetbv\n"
    code = asm(pre + f"mov rdi, {DATA_ADDR}\nmov rax, 7\nmovq xmm4, rax\nmov eax, 3\nxor edx, edx\n"
               "xsave [rdi]\nmov qword ptr [rdi+512], 1\nxrstor [rdi]\nmovq rbx, xmm4\n"
               f"mov rsi, {DATA_ADDR + 0x400}\nmov eax, 3\nxsavec [rsi]")
    r = run_code(code)
    assert r.exception is None
    bus = r.cpu.bus
    assert bus.read(DATA_ADDR + 160 + 64, 8) == 7
    assert r.regs[3] == 0                                   # XSTATE_BV[1]=0: SSE initialised
    assert bus.read(DATA_ADDR + 0x400 + 520, 8) == (1 << 63) | 3   # XSAVEC: XCOMP_BV
    bad = asm(pre + f"mov rdi, {DATA_ADDR}\nmov eax, 3\nxsave [rdi]\nmov qword ptr [rdi+512], 4\n"
              "xrstor [rdi]")
    assert fault(run_code(bad)) == (GP, 0)                  # XSTATE_BV beyond XCR0
    assert fault(run_code(asm(pre + f"mov rdi, {DATA_ADDR + 16}\nxsave [rdi]"))) == (GP, 0)
    assert fault(run_code(asm("xsave [rdi]")))[0] == UD     # CR4.OSXSAVE=0


def test_fast_fxsave_skips_xmm_at_cpl0_in_64_bit_mode():
    code = asm(SSE_ON + "mov ecx, 0xC0000080\nrdmsr\nbts eax, 14\nwrmsr\nmov rax, 9\nmovq xmm0, rax\n"
               f"mov rdi, {DATA_ADDR}\nfxsave [rdi]")
    r = run_code(code)
    assert r.exception is None and r.cpu.bus.read(DATA_ADDR + 160, 8) == 0


def test_alignment_check_at_cpl3():
    """#AC(0) for a misaligned data access at CPL 3 with CR0.AM and RFLAGS.AC
    (APM vol 2, 8.2.18); aligned accesses and CPL 0 are not checked."""
    from cpuharness import run_code, asm
    def setup(m, cpu):
        from svmsim.cpu.segments import Segment, CS, SS, DS, ES
        from cpuharness import PML4, PDPT, PD
        for t in (PML4, PDPT):
            m.bus.write(t, 8, m.bus.read(t, 8) | 4)
        for i in range(4):
            m.bus.write(PD + 8 * i, 8, m.bus.read(PD + 8 * i, 8) | 4)
        cpu.segs[CS] = Segment(0x33, 0, 0xFFFFFFFF, 0xAFB)
        for i in (SS, DS, ES):
            cpu.segs[i] = Segment(0x2B, 0, 0xFFFFFFFF, 0xCF3)
        cpu.cpl = 3
        cpu.cr0 |= 1 << 18
        cpu.set_rflags(cpu.get_rflags() | (1 << 18))
        cpu.update_mode()
    r = run_code(asm("mov eax, [0x200000]\nmov eax, [0x200001]"), setup=setup)
    assert r.exception[:2] == (17, 0) and r.exception[2] == 0x100000 + len(asm("mov eax, [0x200000]"))
    # REP string instructions check each element too: no bulk copy past a misaligned one
    pre = "mov edi, 0x200000\nmov ecx, 4\nrep stosw\nmov edi, 0x200001\nmov ecx, 4\n"
    r = run_code(asm(pre + "rep stosw"), setup=setup)
    assert r.exception[:2] == (17, 0) and r.exception[2] == 0x100000 + len(asm(pre))
    pre = "mov esi, 0x200000\nmov edi, 0x200100\nmov ecx, 4\nrep movsd\nmov esi, 0x200002\nmov ecx, 4\n"
    r = run_code(asm(pre + "rep movsd"), setup=setup)
    assert r.exception[:2] == (17, 0) and r.exception[2] == 0x100000 + len(asm(pre))
