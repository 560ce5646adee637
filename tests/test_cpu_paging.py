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
