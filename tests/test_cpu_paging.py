"""Long-mode paging as the APM specifies it (vol 2, ch. 5): #PF error codes
and CR2, permission rules, A/D updates, reserved bits, and a TLB that keeps a
stale translation until the guest flushes it (5.5)."""
import pytest

from cpuharness import run_code, asm, PDPT
from svmsim.cpu.state import CR0_WP

VA = 0x40000000            # 1 GiB: PDPT[1] -> our PD -> our PT
PD1, PT1, FRAME = 0x16000, 0x17000, 0x300000
P, RW, US, A, D, PS, NX = 1, 2, 4, 0x20, 0x40, 0x80, 1 << 63


def map_pages(flags_by_page, nxe=True):
    """A setup() that maps VA + i*4K -> FRAME + i*4K with the given PTE flags."""
    def setup(m, cpu):
        m.bus.write(PDPT + 8, 8, PD1 | P | RW | US)
        m.bus.write(PD1, 8, PT1 | P | RW | US)
        for i, fl in enumerate(flags_by_page):
            m.bus.write(PT1 + 8 * i, 8, (FRAME + 0x1000 * i) | fl)
            m.bus.write(FRAME + 0x1000 * i, 8, 0x1111 * (i + 1))
        cpu.tlb.flush_all("test")
    return setup


def test_read_through_4k_page_sets_accessed_not_dirty():
    r = run_code(asm(f"mov rax, [{VA:#x}]"), setup=map_pages([P | RW]))
    assert r.exception is None and r.regs[0] == 0x1111
    pte = r.machine.bus.read(PT1, 8)
    assert pte & A and not pte & D               # APM 5.4.2: A on use, D only on write
    assert r.machine.bus.read(PD1, 8) & A


def test_write_sets_dirty():
    r = run_code(asm(f"mov qword ptr [{VA:#x}], 5"), setup=map_pages([P | RW]))
    assert r.machine.bus.read(PT1, 8) & (A | D) == A | D
    assert r.machine.bus.read(FRAME, 8) == 5


@pytest.mark.parametrize("code,flags,err", [
    ("mov rax, [{va}]", 0, 0x0),                  # not present, read
    ("mov qword ptr [{va}], 1", 0, 0x2),          # not present, write
    ("mov qword ptr [{va}], 1", P, 0x3),          # present, read-only, CR0.WP=1
    ("mov rax, [{va}]", P | RW | (1 << 51), 0x9),  # reserved bit (beyond MAXPHYADDR 48)
])
def test_page_fault_error_code_and_cr2(code, flags, err):
    r = run_code(asm(code.format(va=VA + 0x10)), setup=map_pages([flags]))
    vec, code_, rip, cr2 = r.exception
    assert (vec, code_, cr2) == (14, err, VA + 0x10)


def test_fetch_from_nx_page_faults_with_i_bit():
    def setup(m, cpu):
        map_pages([P | RW | NX])(m, cpu)
        m.bus.write(FRAME, 1, 0x90)               # nop
    r = run_code(asm(f"mov rax, {VA}\njmp rax"), setup=setup)
    vec, err, rip, cr2 = r.exception
    assert (vec, err, rip, cr2) == (14, 0x11, VA, VA)   # P | I/D


def test_supervisor_write_to_read_only_page_allowed_when_wp_clear():
    def setup(m, cpu):
        map_pages([P])(m, cpu)
        cpu.cr0 &= ~CR0_WP
    r = run_code(asm(f"mov qword ptr [{VA:#x}], 9"), setup=setup)
    assert r.exception is None and r.machine.bus.read(FRAME, 8) == 9


def test_stale_translation_survives_a_pte_change_without_flush():
    """The TLB caches the old frame until INVLPG/MOV CR3 (APM 5.5.1): a kernel
    that forgets to flush keeps reading the old page, as on hardware."""
    code = asm(f"""
        mov rax, [{VA:#x}]              # fills the TLB with VA -> FRAME
        mov rdi, {PT1:#x}
        mov rbx, {FRAME + 0x1000 | 3:#x}
        mov [rdi], rbx                  # now the PTE says FRAME+4K ...
        mov rcx, [{VA:#x}]              # ... but the TLB still says FRAME
    """)
    r = run_code(code, setup=map_pages([P | RW, P | RW]))
    assert r.regs[0] == 0x1111 and r.regs[1] == 0x1111


def test_page_crossing_access_checks_both_pages():
    r = run_code(asm(f"mov rax, [{VA + 0xFFC:#x}]"), setup=map_pages([P | RW, 0]))
    vec, err, rip, cr2 = r.exception
    assert vec == 14 and cr2 == VA + 0x1000 and r.regs[0] == 0


# ---------------------------------------------------------------- other paging modes
def _legacy_paging(pae, tables):
    """setup() turning on 32-bit or PAE paging in protected mode with ``tables``
    (physical address -> 4- or 8-byte entries) and CR3 = first table."""
    def setup(m, cpu):
        cr3 = None
        for addr, entries in tables:
            cr3 = addr if cr3 is None else cr3
            for i, e in enumerate(entries):
                m.bus.write(addr + (8 if pae else 4) * i, 8 if pae else 4, e)
        cpu.cr3 = cr3
        cpu.cr4 |= (1 << 5) if pae else (1 << 4)      # PAE, or PSE for 4 MiB pages
        cpu.cr0 |= 1 << 31
        cpu.tlb.flush_all("test")
        cpu.update_mode()
    return setup


def test_32bit_paging_4m_and_4k_pages():
    """Non-PAE paging (APM 5.3): a 4 MiB PSE page and a 4 KiB page."""
    pd, pt = 0x20000, 0x21000
    pde = [0] * 1024
    pde[0] = 0x83                           # 0-4M identity (P, RW, PS): code and stack
    pde[0x100] = pt | 3                     # VA 0x40000000 -> 4 KiB table
    pde[0x101] = 0x00400000 | 0x83          # VA 0x40400000 -> 4 MiB page at 4 MiB
    tables = [(pd, pde), (pt, [FRAME | 3])]

    def setup(m, cpu):
        _legacy_paging(False, tables)(m, cpu)
        m.bus.write(FRAME + 4, 4, 0xCAFE)
        m.bus.write(0x00400000 + 0x123458, 4, 0xBEEF)
    code = asm("mov eax, [0x40000004]\nmov ebx, [0x40523458]\nmov ecx, [0x40800000]", bits=32)
    r = run_code(code, mode="prot32", setup=setup, addr=0x8000)
    assert r.regs[0] == 0xCAFE and r.regs[3] == 0xBEEF
    vec, err, rip, cr2 = r.exception                # PDE 0x102 not present
    assert (vec, err, cr2) == (14, 0, 0x40800000)


def test_pae_paging_2m_page_and_nx_reserved_without_nxe():
    """Legacy PAE (APM 5.3.3): 2 MiB pages; NX set while EFER.NXE=0 is a
    reserved-bit fault (error code P|RSV)."""
    pdpt, pd = 0x20000, 0x21000
    pds = [0] * 512
    pds[0] = 0x83
    pds[1] = 0x00400000 | 0x83 | (1 << 63)   # NX with NXE clear: reserved
    tables = [(pdpt, [pd | 1, 0, 0, 0]), (pd, pds)]
    code = asm("mov eax, [0x100000]\nmov ebx, [0x200010]", bits=32)
    r = run_code(code, mode="prot32", setup=_legacy_paging(True, tables), addr=0x8000)
    vec, err, rip, cr2 = r.exception
    assert (vec, err, cr2) == (14, 0x9, 0x200010)


def test_1g_page_in_long_mode():
    def setup(m, cpu):
        m.bus.write(PDPT + 8 * 3, 8, 0x83)    # VA 3 GiB -> PA 0 via a 1 GiB page
        cpu.tlb.flush_all("test")
    r = run_code(asm("mov rax, 0xC0000000 + 0x300000\nmov rax, [rax]"),
                 setup=lambda m, cpu: (setup(m, cpu), m.bus.write(0x300000, 8, 77)))
    assert r.regs[0] == 77


def test_five_level_paging():
    """LA57 (APM 5.3.6): a fifth table level in front of the PML4."""
    pml5 = 0x18000

    def setup(m, cpu):
        m.bus.write(pml5, 8, 0x10000 | 3)    # PML5[0] -> the harness's PML4
        cpu.cr3 = pml5
        cpu.cr4 |= 1 << 12
        cpu.tlb.flush_all("test")
        cpu.update_mode()
        m.bus.write(0x300000, 8, 0x5)
    r = run_code(asm("mov rax, [0x300000]\nmov rbx, 0x0080000000000000\nmov rbx, [rbx]"), setup=setup)
    assert r.regs[0] == 5
    vec, err, rip, cr2 = r.exception          # PML5[128] not present (bit 55 is below the 57-bit limit)
    assert (vec, err, cr2) == (14, 0, 0x0080000000000000)


def test_non_canonical_access_is_gp_not_pf():
    r = run_code(asm("mov rax, 0x0000800000000000\nmov rax, [rax]"))
    assert r.exception[:2] == (13, 0)


def test_invlpg_of_any_address_drops_every_slice_of_a_large_page():
    """APM 5.5.2: INVLPG invalidates the whole large page containing the address,
    even when svmsim caches it as 4 KiB slices."""
    code = asm(f"""
        mov rax, [{VA:#x}]              # caches slice 0 of the 2 MiB page at VA
        mov rdi, {PD1:#x}
        mov rbx, {0x600000 | 0x83:#x}
        mov [rdi], rbx                  # remap the 2 MiB page
        invlpg [{VA + 0x1FF000:#x}]     # an address in the same large page, not cached
        mov rcx, [{VA:#x}]
    """)

    def setup(m, cpu):
        m.bus.write(PDPT + 8, 8, PD1 | P | RW)
        m.bus.write(PD1, 8, 0x400000 | P | RW | PS)
        m.bus.write(0x400000, 8, 0x44)
        m.bus.write(0x600000, 8, 0x66)
        cpu.tlb.flush_all("test")
    r = run_code(code, setup=setup)
    assert r.regs[0] == 0x44 and r.regs[1] == 0x66


def test_instruction_straddling_a_remapped_page_is_decoded_again():
    """A block whose instruction crosses into the next page must follow that
    page's mapping, like any instruction fetch (APM 5.5: fetches are translated)."""
    # mov rax, imm64 (10 bytes) placed to straddle VA+0xFFC .. VA+0x1005; then jmp back.
    insn = bytes.fromhex("48b8") + (0x1122334455667788).to_bytes(8, "little")

    def setup(m, cpu):
        map_pages([P | RW, P | RW, P | RW])(m, cpu)
        m.bus.write_bytes(FRAME + 0xFFC, insn[:4])
        m.bus.write_bytes(FRAME + 0x1000, insn[4:] + b"\xc3")          # ... ret
        alt = bytearray(insn[4:]); alt[-1] = 0x99                         # same bytes but the top one
        m.bus.write_bytes(FRAME + 0x2000, bytes(alt) + b"\xc3")
    code = asm(f"""
        mov rbx, {VA + 0xFFC:#x}
        call rbx                         # rax = 0x1122334455667788 through page 2
        mov rcx, rax
        mov rdi, {PT1 + 8:#x}
        mov rdx, {FRAME + 0x2000 | 3:#x}
        mov [rdi], rdx                   # remap the second page ...
        invlpg [{VA + 0x1000:#x}]        # ... and flush it
        call rbx                         # the straddling instruction now reads 0x99...
    """)
    r = run_code(code, setup=setup)
    assert r.regs[1] == 0x1122334455667788
    assert r.regs[0] == 0x9922334455667788


def test_branch_to_upper_half_canonical_address_is_not_gp():
    """APM vol 2, 5.3.1: 0xFFFF8000_00000000 and above are canonical; a branch
    there fetches and (unmapped) faults with #PF, not #GP (a higher-half kernel
    such as Linux jumps to 0xFFFFFFFF8xxxxxxx)."""
    for how in ("mov rax, 0xffffffff81000000\njmp rax", "jmp rax"):
        r = run_code(asm(how), regs={"rax": 0xFFFFFFFF81000000})
        assert r.exception[0] == 14 and r.exception[3] == 0xFFFFFFFF81000000
    r = run_code(asm("mov rax, 0x0000800000000000\njmp rax"))
    assert r.exception[:2] == (13, 0)


def test_compiled_loops_follow_invlpg_and_mov_cr3():
    """Compiled code reads and writes through address caches derived from the
    TLB (cpu/tlb.py ADDR, codegen.py): a remap that the guest flushes with
    INVLPG, then with MOV CR3, is seen by hot loops exactly as by the
    interpreter, and the stale translation is kept until the flush (5.5)."""
    loop = """
        mov rcx, 1000
    1{n}:
        add {acc}, [rsi]              # 8-byte load (address cache a8r)
        mov [rsi + 8], ecx            # 4-byte store (a4w)
        dec rcx
        jnz 1{n}b
    """
    code = asm(f"""
        xor eax, eax
        xor edx, edx
        xor r8d, r8d
        xor r9d, r9d
        mov rsi, {VA:#x}
        {loop.format(n=1, acc='rax')}
        mov rdi, {PT1:#x}
        mov rbx, {FRAME + 0x1000 | 3:#x}
        mov [rdi], rbx                # VA -> FRAME + 4K, not flushed yet
        {loop.format(n=2, acc='rdx')}
        invlpg [rsi]
        {loop.format(n=3, acc='r8')}
        mov rbx, {FRAME + 0x2000 | 3:#x}
        mov [rdi], rbx
        mov rbx, cr3
        mov cr3, rbx
        {loop.format(n=4, acc='r9')}
    """)
    r = run_code(code, setup=map_pages([P | RW, P | RW, P | RW]), max_insns=50_000)
    assert r.exception is None
    assert (r.regs[0], r.regs[2], r.regs[8], r.regs[9]) == (1000 * 0x1111, 1000 * 0x1111,
                                                            1000 * 0x2222, 1000 * 0x3333)
    bus = r.machine.bus
    assert [bus.read(FRAME + 0x1000 * i + 8, 4) for i in range(3)] == [1, 1, 1]
    assert r.machine.engine.stats["blocks_compiled"] >= 4
