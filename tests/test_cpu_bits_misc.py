"""Shifts, bit instructions and legacy integer ops where svmsim follows the
APM rather than (or beyond) the Unicorn oracle; the rest is covered by
tests/test_diff_unicorn.py."""
from cpuharness import run_code, asm, DATA_ADDR, PML4, PDPT, PD
from svmsim.cpu.flags import CF, ZF, OF, AC, ARITH

RAX, RCX, RDX, RBX = range(4)
UD, DE = 6, 0


def run(src, mode="long64", **kw):
    code = asm(src, 64 if mode == "long64" else 32)
    r = run_code(code, mode=mode, **kw)
    r.end = (0x100000) + len(code)
    return r


def finished(r):
    return (r.exception is None and r.cpu.halted) or (r.exception[0] == UD and r.exception[2] == r.end)


def test_blsi_sets_cf_for_a_nonzero_source():
    """APM vol 3 BLSI: CF = 1 if the source is not zero (QEMU 5 inverts it)."""
    r = run("blsi rax, rcx", regs={"rcx": 0b101000})
    assert finished(r) and r.regs[RAX] == 0b1000 and r.rflags & CF and not r.rflags & ZF
    r = run("blsi rax, rcx", regs={"rcx": 0})
    assert r.regs[RAX] == 0 and not r.rflags & CF and r.rflags & ZF


def test_bsf_bsr_zero_source_leave_the_whole_destination():
    r = run("bsf eax, ecx\nbsr edx, ecx", regs={"rax": 0x1122334455667788, "rdx": 0xAAAA_BBBB_CCCC_DDDD,
                                              "rcx": 0xFFFF_FFFF_0000_0000})
    assert finished(r)
    assert r.regs[RAX] == 0x1122334455667788 and r.regs[RDX] == 0xAAAA_BBBB_CCCC_DDDD
    assert r.rflags & ZF


def test_tzcnt_lzcnt_of_zero_give_the_operand_size():
    r = run("tzcnt ax, cx\nlzcnt rdx, rcx", regs={"rcx": 0, "rax": 0xFFFF0000})
    assert finished(r) and r.regs[RAX] == 0xFFFF0010 and r.regs[RDX] == 64 and r.rflags & CF


def test_bt_memory_negative_bit_offset_addresses_below_the_operand():
    # bit -1 of the dword at DATA+8 is bit 31 of the dword at DATA+4
    r = run("bts dword ptr [rbx], eax\nbt dword ptr [rbx], ecx",
            regs={"rbx": DATA_ADDR + 8, "rax": (1 << 64) - 1, "rcx": 70},
            mem={DATA_ADDR: bytes(16) + b"\x40"})
    assert finished(r)
    assert r.machine.bus.read(DATA_ADDR + 4, 4) == 0x80000000
    assert r.rflags & CF                          # bit 70 = byte DATA+8+8, bit 6


def test_shift_count_zero_keeps_flags_but_zero_extends():
    r = run("shl eax, cl", regs={"rax": 0xDEAD_BEEF_0000_0001, "rcx": 32}, rflags=0x2 | CF | OF)
    assert finished(r) and r.regs[RAX] == 1 and r.rflags & (CF | OF) == CF | OF


def test_rcl8_count_nine_is_a_full_rotation():
    r = run("rcl al, 9\nrcl bl, 1", regs={"rax": 0x81, "rbx": 0x80}, rflags=0x2)
    assert finished(r) and r.regs[RAX] & 0xFF == 0x81
    assert r.regs[RBX] & 0xFF == 0 and r.rflags & CF and r.rflags & OF


def test_shld16_count_above_16_uses_dest_src_dest():
    r = run("shld ax, cx, 20", regs={"rax": 0x1234, "rcx": 0xABCD})
    assert finished(r) and r.regs[RAX] & 0xFFFF == 0xBCD1     # (1234:ABCD:1234 << 20) top word


def test_decimal_adjust_in_legacy_mode():
    r = run("add al, bl\ndaa\nmov dl, al\nmov al, 9\nadd al, 8\naaa", mode="prot32",
            regs={"rax": 0x38, "rbx": 0x45})
    assert finished(r) and r.regs[RDX] & 0xFF == 0x83 and r.regs[RAX] & 0xFFFF == 0x0107


def test_aam_zero_raises_de():
    r = run(".byte 0xd4, 0", mode="prot32")
    assert r.exception[0] == DE and r.exception[2] == 0x100000


def test_bcd_ops_are_invalid_in_64_bit_mode():
    r = run(".byte 0x27")                          # DAA
    assert r.exception[0] == UD and r.exception[2] == 0x100000


def test_salc():
    r = run("stc\n.byte 0xd6\nmov dl, al\nclc\n.byte 0xd6", mode="prot32", regs={"rax": 0x1234})
    assert finished(r) and r.regs[RDX] & 0xFF == 0xFF and r.regs[RAX] == 0x1200


def test_stac_clac_at_cpl0():
    r = run("stac")
    assert finished(r) and r.cpu.rflags & AC
    r = run("clac", rflags=0x2 | AC)
    assert finished(r) and not r.cpu.rflags & AC


def test_clac_at_cpl3_is_ud():
    def user(m, cpu):
        m.bus.write(PML4, 8, PDPT | 7)             # first 2 MiB user-accessible
        m.bus.write(PDPT, 8, PD | 7)
        m.bus.write(PD, 8, 0x87)
        cpu.tlb.flush_all("test")
        cpu.set_cpl(3)
    r = run("clac", setup=user)
    assert r.exception[0] == UD and r.exception[2] == 0x100000


def test_popcnt_clears_other_flags():
    r = run("popcnt rax, rcx", regs={"rcx": 0xF0F0}, rflags=0x2 | ARITH)
    assert finished(r) and r.regs[RAX] == 8 and r.rflags & ARITH == 0
