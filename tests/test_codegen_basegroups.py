"""Base groups (codegen ``base_groups``/``Gen.base_head``): runs of 8-byte
MOVs at [B + d] with B unchanged share one address-cache look-up, the way a
hypervisor saves and restores a guest's registers (tests/guests/lib's
svm_run_guest).  Each case runs through the real engine twice (handlers,
then compiled) and must agree in registers, flags, memory, RIP, retired
instructions and faults (test_codegen.compare)."""
import pytest

from cpuharness import asm, DATA_ADDR, CODE_ADDR
from test_codegen import _regs, compare, DATA_LEN, runners, _readonly_data_page  # noqa: F401
from svmsim.cpu import codegen

SAVE = """
1:
    mov [rsi], rbx
    mov [rsi + 8], rcx
    mov [rsi + 0x10], rdx
    push rsi
    pop rax
    mov [rsi + 0x20], rdi
    mov qword ptr [rsi + 0x28], -5
    add rdx, rcx
    mov rbx, [rsi + 8]
    mov rcx, [rsi]
    mov [rsi - 0x10], rbx
    mov rsi, [rsi + 0x10]
    mov [rsi + 0x30], rcx
    dec rdi
    jnz 1b
    hlt
"""


def _mem():
    return bytes(range(256)) * (DATA_LEN // 256)


def _source(runner):
    blk = runner.m.engine.blocks[(CODE_ADDR, runner.cpu.mode_key)]
    return blk.compiled.source


def test_groups_found():
    """The save/restore runs of SAVE: one group on RSI of the eight MOVs up
    to the load into RSI (the PUSH/POP between do not name it)."""
    from svmsim.cpu.decoder import build_insn
    from svmsim.cpu import ops
    import iced_x86
    code = asm(SAVE)
    ins = []
    for i in iced_x86.Decoder(64, code, ip=CODE_ADDR):
        x = build_insn(i, 64)
        x.fn, x.ends_block = ops.lookup(x, None)
        ins.append(x)

    class B:
        insns = tuple(ins)
        n = len(ins)
    groups = codegen.base_groups(B)
    assert [(b, [p for p, _, _ in o], lo, hi, w) for b, o, lo, hi, w in groups] == \
        [(6, [0, 1, 2, 5, 6, 8, 9, 10, 11], -0x10, 0x30, True)]


@pytest.mark.parametrize("base", [DATA_ADDR + 0x100, DATA_ADDR + 0xFE0, DATA_ADDR + 0x104,
                                  DATA_ADDR + 0x8])
def test_base_group_matches_interpreter(runners, base):
    """Within a page (the group's look-up), across the page end and below
    its start (each MOV its own path), 4-aligned only (no cached aligned
    slot): the same results."""
    for budget in (5, 13, 200):
        compare(runners, "long64", asm(SAVE), _regs(rbx=0x1111, rcx=0x2222, rdx=0x3333, rdi=7, rsi=base),
                _mem(), 0x202, budget, label=f"{base:#x}/{budget}")
    comp = runners("long64")[1]
    compare(runners, "long64", asm(SAVE), _regs(rdi=3, rsi=base), _mem(), 0x202, 100, )
    assert "bb0 = a8wg(g6" in _source(comp)


def test_base_group_write_fault_is_precise(runners):
    """A read-only data page: the group's look-up misses, the first store
    faults with nothing after it done, in both tiers."""
    r = compare(runners, "long64", asm(SAVE), _regs(rbx=1, rdi=2, rsi=DATA_ADDR + 0x40), _mem(), 0x202,
                50, setup=_readonly_data_page)
    assert r["n"] == 0 and r["faults"][0][:2] == (14, 3)


def test_base_group_store_into_code(runners):
    """The group's page holds the code it runs: code pages are never in the
    write cache, so the group's look-up misses and each store takes its own
    path, where a store that rewrites a later MOV of the same block is seen
    (self-modifying code): the second store changes the third MOV's
    displacement from 0x10 to 0x20, so the third store misses the NOP and
    HLT it would otherwise have turned into NOP, NOP, HLT."""
    code = asm("""
        mov [rsi], rbx
        mov [rsi + 8], rcx
        mov [rsi + 0x10], rdx
        nop
        hlt
    """)
    assert code[7:11] == bytes.fromhex("48895610") and len(code) == 13
    # RSI = CODE_ADDR - 5: RBX lands on bytes -5..2, RCX on 3..10, RDX on 11..18.
    new = bytearray(code[3:11])
    new[7] = 0x20
    rdx = int.from_bytes(asm("nop\nnop\nhlt") + bytes(5), "little")
    for budget in (2, 100):
        r = compare(runners, "long64", code, _regs(rbx=0x0102030405, rcx=int.from_bytes(new, "little"),
                                                  rdx=rdx, rsi=CODE_ADDR - 5),
                    _mem(), 0x202, budget)
    assert r["faults"] == [] and r["rip"] == CODE_ADDR + 13 and r["n"] == 5     # HLT at +12


def test_all_registers_loaded_and_stored_at_once(runners):
    """A region using FULL_LOAD registers or more loads all sixteen with one
    unpack and, after a handler call (XADD, BSWAP: no template), reloads
    them the same way; writing FULL_FLUSH or more it stores all sixteen with
    one slice store; the results equal the interpreter's."""
    code = asm("""
    1:
        mov [rsi], rbx
        mov [rsi + 8], rcx
        xadd rbx, rcx
        mov [rsi + 0x10], rdx
        bswap rdx
        mov r8, [rsi + 8]
        mov r9, [rsi]
        mov r10, [rsi + 0x10]
        lea r11, [r10 + r9]
        add rax, r8
        dec rdi
        jnz 1b
        hlt
    """)
    for budget in (3, 7, 100):
        compare(runners, "long64", code, _regs(rax=5, rbx=0x1111, rcx=0x2222, rdx=0x3333, rdi=6,
                                               rsi=DATA_ADDR + 0x200), _mem(), 0x202, budget)
    src = _source(runners("long64")[1])
    unpack = ", ".join("g%d" % i for i in range(16)) + " = regs"
    assert src.count(unpack) >= 3 and "regs[:] = " in src     # entry, after each handler


SAVE_PUSH_POP = """
1:
    mov [rsi], rbx
    mov [rsi + 8], rcx
    mov [rsi + 0x10], rdx
    mov [rsi + 0x18], rbp
    push rbx
    push rcx
    push rdx
    pop r8
    pop r9
    pop r10
    add rbx, r10
    dec rdi
    jnz 1b
    hlt
"""


@pytest.mark.parametrize("base", [DATA_ADDR + 0x100, DATA_ADDR + 0xFF0])
def test_a_group_tests_its_index_once(runners, base):
    """The group's tests of its index that follow each other are one test
    (codegen.merge_group_tests: the stores of a base group, the pushes and
    pops of a stack group, a pop's register move taken into both branches):
    the same results as the interpreter within a page and across its end
    (every MOV its own path), at every budget."""
    for budget in (3, 6, 9, 200):
        compare(runners, "long64", asm(SAVE_PUSH_POP),
                _regs(rbx=0x1111, rcx=0x2222, rdx=0x3333, rbp=0x4444, rdi=5, rsi=base),
                _mem(), 0x202, budget, label=f"{base:#x}/{budget}")
    src = _source(runners("long64")[1])
    assert src.count("if bb0 is not None:") == 1
    assert len([line for line in src.splitlines() if line.strip().startswith("if sb")]) == 1


def test_merge_group_tests_keeps_each_line_and_its_instruction():
    """merge_group_tests on generated lines: the branches of two adjacent
    tests of one group (and the register move between them) joined, each
    line with its instruction number; another group's test, a test without
    else and other lines between stay as they are."""
    lines = [(0, "if bb1 is not None:", 1), (1, "M8[bb1] = g3", 1), (0, "else:", 1), (1, "slow(1)", 1),
             (0, "g5 = v7", 2),
             (0, "if bb1 is not None:", 2), (1, "M8[bb1 + 1] = g1", 2), (0, "else:", 2),
             (1, "slow(2)", 2), (1, "if lim < 0:", 2), (2, "raise X", 2),
             (0, "if bb2 is not None:", 3), (1, "M8[bb2] = g0", 3), (0, "else:", 3), (1, "slow(3)", 3),
             (0, "n += 1", 3),
             (0, "if bb2 is not None:", 4), (1, "M8[bb2 + 1] = g0", 4)]
    assert codegen.merge_group_tests(lines) == [
        (0, "if bb1 is not None:", 1), (1, "M8[bb1] = g3", 1), (1, "g5 = v7", 2),
        (1, "M8[bb1 + 1] = g1", 2), (0, "else:", 1), (1, "slow(1)", 1), (1, "g5 = v7", 2),
        (1, "slow(2)", 2), (1, "if lim < 0:", 2), (2, "raise X", 2),
        (0, "if bb2 is not None:", 3), (1, "M8[bb2] = g0", 3), (0, "else:", 3), (1, "slow(3)", 3),
        (0, "n += 1", 3),
        (0, "if bb2 is not None:", 4), (1, "M8[bb2 + 1] = g0", 4)]
