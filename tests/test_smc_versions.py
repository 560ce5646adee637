"""Self-modifying code: versions of a block swapped when its bytes flip back.

A block dropped by a write to its bytes is kept with them (``Engine.dropped``);
its byte ranges stay registered in its code page, and it is taken back, with
its compiled region, when its bytes are as they were (engine.py ``_revive``).
Each test runs real machine code that rewrites code in one of the ways the
engine tells apart, in the interpreter and hot-compiled (test_codegen's
runners), and checks the architectural result against a model: every
instruction runs as the bytes are when it executes (docs/DESIGN.md).
"""
import pytest

from cpuharness import asm, make_machine, start_like_bsp, CODE_ADDR, DATA_ADDR
from test_codegen import _regs, DATA_LEN, runners  # noqa: F401 (runners: the fixture)
from svmsim.memory.dma import DmaPort

M32 = 0xFFFFFFFF


def _both(runners, code, regs, budget=10 ** 6):
    interp, comp = runners("long64")
    a = interp.run(code, regs, bytes(DATA_LEN), 0x202, budget, False)
    b = comp.run(code, regs, bytes(DATA_LEN), 0x202, budget, "hot")
    for key in a:
        assert a[key] == b[key], f"{budget}: {key} differs"
    assert a["faults"] == []
    return a, interp.m.engine, comp.m.engine


def _alternating(n, first_add=True):
    """eax after n iterations (rcx = n..1) of add/sub eax, ecx alternating."""
    acc, add = 0, first_add
    for i in range(n, 0, -1):
        acc = (acc + i if add else acc - i) & M32
        add = not add
    return acc


FLIP = """
    mov edx, 0x01
1:
    mov byte ptr [rip + 2f], dl     # 01 C8: add eax, ecx; 29 C8: sub eax, ecx
2:  .byte 0x01, 0xc8
    xor edx, 0x28
    dec rcx
    jnz 1b
    hlt
"""


def test_flipped_opcode_swaps_compiled_versions(runners):
    """ADD <-> SUB every iteration: after the first two iterations nothing is
    decoded again, however long the loop runs, and each version of each
    block the write drops is compiled once and taken back compiled."""
    code = asm(FLIP)
    translated = []
    for n in (100, 400):
        r, ei, ec = _both(runners, code, _regs(rcx=n))
        assert r["regs"][0] == _alternating(n) and r["n"] == 1 + 5 * n + 1
        translated.append(ec.stats["blocks_translated"] - sum(translated))
        # The interpreter's dispatcher takes a version back each iteration
        # (its guard, Engine._guard); compiled code selects them in its
        # region without touching the block table (Engine.live_version).
        assert ei.stats["blocks_revived"] >= n - 5
    assert translated[0] == translated[1] < 12      # the same blocks for 100 and 400 iterations
    lin2 = CODE_ADDR + code.index(b"\x01\xc8", 8)
    comp = runners("long64")[1]
    versions = ec.dropped[(lin2, comp.cpu.mode_key)]
    assert sorted(c[0] for c, _ in versions) == [0x01, 0x29]
    assert all(b.compiled is not None for _, b in versions)
    # The storing block ends at its store (Engine._end_at_own_store): the
    # store never drops it, and it stays compiled.
    lin1 = CODE_ADDR + 5
    assert (lin1, comp.cpu.mode_key) not in ec.dropped
    store = ec.blocks[(lin1, comp.cpu.mode_key)]
    assert store.n == 1 and store.compiled is not None


def test_store_into_own_block_ends_it_only_when_it_hits_a_later_instruction(runners):
    """A RIP-relative store into a later instruction of the block ends the
    block after it; one to data after the block's last instruction (the
    counter after a loop on the code page) or to an earlier instruction
    does not."""
    code = asm("""
    1:
        add qword ptr [rip + 9f], 3     # data after the loop: one block
        mov byte ptr [rip + 1b + 1], 0x83   # an earlier instruction (the same byte)
        dec rcx
        jnz 1b
        mov byte ptr [rip + 2f + 1], 0xc3   # a later instruction: ends here
    2:  .byte 0xff, 0xc0                # inc eax (ff c3: inc ebx)
        hlt
        nop
    .balign 8
    9: .quad 0
    """)
    r, ei, ec = _both(runners, code, _regs(rcx=10))
    assert r["regs"][0] == 0 and r["regs"][3] == 1 and r["n"] == 4 * 10 + 3
    comp = runners("long64")[1]
    loop = ec.dropped[(CODE_ADDR, comp.cpu.mode_key)]      # its store drops it each time
    assert [b.n for _, b in loop] == [4] and ec.stats["blocks_revived"] >= 9
    after = CODE_ADDR + code.rindex(b"\xc6\x05")
    assert ec.blocks[(after, comp.cpu.mode_key)].n == 1


def test_write_to_bytes_of_a_kept_version_only(runners):
    """A version that covers more bytes than the live one (ADD AL, 2 falls
    through into the next instruction; JMP +2 skips it): a store to the
    bytes only the kept version covers drops nothing that runs, and when the
    opcode flips back that version is not taken back (its bytes changed):
    the new instruction there runs (INC EAX -> INC EBX)."""
    code = asm("""
        mov edx, 0xeb
    1:
        mov byte ptr [rip + 2f], dl     # 04 02: add al, 2 / EB 02: jmp 3f
    2:  .byte 0x04, 0x02
        .byte 0xff, 0xc0                # inc eax (ff c3: inc ebx)
    3:  xor edx, 0xef                   # 0x04 ^ 0xeb
        cmp ecx, 30                     # JMP +2 is live then
        jne 4f
        mov byte ptr [rip + 2b + 3], 0xc3
    4:  dec rcx
        jnz 1b
        hlt
    """)
    for budget in (50, 163, 10 ** 6):
        r, ei, ec = _both(runners, code, _regs(rcx=80), budget)
    eax = ebx = 0
    jmp = True
    for i in range(80, 0, -1):
        if not jmp:                      # add al, 2 then the instruction after it
            eax = (eax & ~0xFF) | ((eax + 2) & 0xFF)
            if i > 30:
                eax = (eax + 1) & M32
            else:
                ebx += 1
        jmp = not jmp
    assert (r["regs"][0], r["regs"][3]) == (eax, ebx)


def test_region_member_rewritten_while_its_head_is_kept(runners):
    """The compiled region of a flipping block holds the block it branches
    to (INC EBX); that block is rewritten (DEC EBX) while the version is not
    live: taken back, the version does not run its stale copy."""
    code = asm("""
        mov edx, 0x01
    1:
        mov byte ptr [rip + 2f], dl
    2:  .byte 0x01, 0xc8                # add / sub eax, ecx
        xor edx, 0x28
        test cl, 1
        jz 3f
        cmp ecx, 41
        jne 3f
        mov byte ptr [rip + 3f + 1], 0xcb
    3:  .byte 0xff, 0xc3                # inc ebx (ff cb: dec ebx)
        dec rcx
        jnz 1b
        hlt
    """)
    for budget in (97, 10 ** 6):
        r, ei, ec = _both(runners, code, _regs(rcx=100), budget)
    assert r["regs"][0] == _alternating(100) and r["regs"][3] == 59 - 41


def test_writes_across_a_page_boundary(runners):
    """A 4-byte store over the last instruction of one page and the first of
    the next (INC EAX; INC EBX <-> DEC EAX; DEC EBX), and a 1-byte store to
    the second page's half of an instruction that straddles the boundary
    (INC ESI <-> DEC ESI): both pages' blocks see every store."""
    code = asm("""
        mov edx, 0xcbffc8ff
        mov esi, 0xcbffc8ff ^ 0xc3ffc0ff
        mov r8d, 0xce
        xor edi, edi
        jmp 1f
        .org 0xff0, 0x90
    1:
        mov dword ptr [rip + 2f - 2], edx
        xor edx, esi
        .org 0xffe, 0x90
        .byte 0xff, 0xc0                # inc eax | page boundary
    2:  .byte 0xff, 0xc3                # inc ebx
        dec rcx
        jnz 1b
        mov ecx, 60
        .org 0x1ff0, 0x90
    5:
        mov byte ptr [rip + 6f + 1], r8b
        xor r8d, 0x08                   # ce <-> c6
        .org 0x1fff, 0x90
    6:  .byte 0xff, 0xc6                # inc esi, across the boundary
        inc edi
        dec rcx
        jnz 5b
        hlt
    """)
    assert code[0xFFE:0x1002] == b"\xff\xc0\xff\xc3" and code[0x1FFF:0x2001] == b"\xff\xc6"
    for budget in (61, 10 ** 6):
        r, ei, ec = _both(runners, code, _regs(rcx=70), budget)
    # 70 iterations starting with DEC/DEC: 35 each way.  Then 60 starting
    # with DEC ESI (esi starts at 0xcbffc8ff ^ 0xc3ffc0ff).
    assert r["regs"][0] == 0 and r["regs"][3] == 0
    assert r["regs"][6] == 0xcbffc8ff ^ 0xc3ffc0ff and r["regs"][7] == 60


def _grouped(engine, key):
    """Whether the versions of the block ``key`` formed a group (Engine._group)."""
    vs = [b for _, b in engine.dropped.get(key, ())] + [b for b in [engine.blocks.get(key)] if b]
    return any(b.hole is not None for b in vs)


WAIT = """
1:  cmp byte ptr [rsi], 0               # wait for the writer
    je 1b
    mov byte ptr [rsi], 0
    {jmp}
2:  .byte 0x01, 0xc8                    # add / sub eax, ecx: the writer flips it
    dec rcx
    jnz 1b
    hlt
"""


@pytest.mark.parametrize("quantum", [7, 40, 500])
@pytest.mark.parametrize("jmp", ["", "jmp 2f"])
def test_dma_rewrites_code(runners, quantum, jmp):
    """A device writes the opcode through its DMA port (bus writes, as the
    edu device's transfers) while the CPU waits for it: each time the CPU
    runs the instruction as the device left it.  With ``jmp 2f`` the
    rewritten instruction starts its block, and its versions form a group
    (Engine._group): the device's later writes are plain RAM writes, which
    the CPU meets by reading the opcode at each entry."""
    code = asm(WAIT.format(jmp=jmp))
    at = CODE_ADDR + code.index(b"\x01\xc8")
    results = []
    for r in runners("long64"):
        m, cpu = r.m, r.cpu
        port = DmaPort(m, "edu")
        ops = iter([0x29, 0x01] * 40)
        out = r.run(code, _regs(rcx=60, rsi=DATA_ADDR), bytes(DATA_LEN), 0x202, 1, False)
        m.engine.hot_threshold = 5 if r is runners("long64")[1] else 10 ** 9
        while not cpu.halted:
            if m.bus.read(DATA_ADDR, 1) == 0:
                port.write_bytes(at, bytes([next(ops)]))
                port.write_bytes(DATA_ADDR, b"\x01")
            m.engine.run(cpu, quantum)
        assert out["faults"] == [] and r.faults == []
        results.append(cpu.regs[0])
    assert results[0] == results[1] == _alternating(60, first_add=False)
    comp = runners("long64")[1]
    assert _grouped(comp.m.engine, (at, comp.cpu.mode_key)) == bool(jmp)
    if not jmp:
        assert comp.m.engine.stats["blocks_revived"] >= 50     # each write swapped versions
    else:
        assert comp.m.engine.stats["blocks_translated"] < 12  # nothing decoded again


@pytest.mark.parametrize("jmp", ["", "jmp 2f"])
def test_other_cpu_rewrites_code(jmp):
    """CPU 1 flips the opcode CPU 0 runs next, each time CPU 0 waits for it
    (a flag on the data page; CPUID serializes CPU 0 after the wait, as
    cross-modifying code asks): CPU 0 runs each version as written, with its
    blocks compiled, whatever the interleaving of the two CPUs.  With ``jmp
    2f`` the rewritten instruction starts its block and its versions form a
    group: CPU 1's stores are then plain stores, and CPU 0 reads the opcode
    when it enters the block."""
    cpu0_code = asm("""
    1:  cmp byte ptr [rsi], 1
        jne 1b
        mov r9d, eax
        cpuid
        mov eax, r9d
        {jmp}
    2:  .byte 0x01, 0xf8                # add / sub eax, edi
        mov byte ptr [rsi], 0
        dec rdi
        jnz 1b
        hlt
    """.format(jmp=jmp))
    at = CODE_ADDR + cpu0_code.index(b"\x01\xf8")
    cpu1_code = asm(f"""
        mov edx, 0x29
    1:  cmp byte ptr [rsi], 0
        jne 1b
        mov byte ptr [{at:#x}], dl
        xor edx, 0x28
        mov byte ptr [rsi], 1
        dec rcx
        jnz 1b
        hlt
    """)
    for q0, q1 in ((5, 3), (64, 17), (300, 1000)):
        m = make_machine("long64", smp=2)
        c0, c1 = m.cpus[0], start_like_bsp(m)
        m.engine.hot_threshold = 5
        m.bus.write_bytes(CODE_ADDR, cpu0_code)
        m.bus.write_bytes(CODE_ADDR + 0x3000, cpu1_code)
        c0.rip, c1.rip = CODE_ADDR, CODE_ADDR + 0x3000
        c0.regs[6] = c1.regs[6] = DATA_ADDR
        c0.regs[7] = c1.regs[1] = 50
        c0.regs[4], c1.regs[4] = 0x80000 - 0x100, 0x70000
        steps = 0
        while not (c0.halted and c1.halted):
            for c, q in ((c0, q0), (c1, q1)):
                if not c.halted:
                    m.engine.run(c, q)
            steps += 1
            assert steps < 10 ** 5
        assert c0.regs[0] & M32 == _alternating(50, first_add=False)
        assert _grouped(m.engine, (at, c0.mode_key)) == bool(jmp)      # a version group
    assert m.engine.stats["blocks_revived"] > 0


@pytest.mark.parametrize("target", ["9f", "3f + 1"])
def test_two_read_modify_writes_of_one_constant_address(runners, target):
    """Compiled code reuses the RAM offset of the first of two read-modify-
    writes of the same RIP-relative address for the second, and looks it up
    again when the first took the slow path: cold caches (compiled before
    the first execution), or translated code (INC EAX -> DEC EAX -> INC EAX,
    a code write each).  As the interpreter, every budget."""
    code = asm(f"""
    1:
        add byte ptr [rip + {target}], 8
        xor byte ptr [rip + {target}], 8
        call 3f
        dec rcx
        jnz 1b
        hlt
    3:  .byte 0xff, 0xc0                # inc eax (ff c8: dec eax)
        ret
    .balign 8
    9: .quad 0
    """)
    interp, comp = runners("long64")
    for compiled in (True, "hot"):
        for budget in (7, 10 ** 5):
            a = interp.run(code, _regs(rcx=40), bytes(DATA_LEN), 0x202, budget, False)
            b = comp.run(code, _regs(rcx=40), bytes(DATA_LEN), 0x202, budget, compiled)
            assert a == b
    assert a["regs"][0] == 40 and a["faults"] == []
    comp_src = comp.m.engine.blocks[(CODE_ADDR, comp.cpu.mode_key)].compiled.source
    assert "q1 = q0" in comp_src


@pytest.mark.parametrize("store", ["xor qword ptr [rip + 3f], rdx",
                                   "mov qword ptr [rip + 3f], rbx"])
def test_aligned_quadword_store_into_translated_code(runners, store):
    """A compiled 8-byte store to an aligned quadword of its own page tests
    that quadword of the byte map with one index (codegen ``_not_code``):
    here the quadword holds translated code (NOP, INC EAX <-> DEC EAX, RET),
    so the store must take the code-write path and the next call must run
    the new bytes; a data quadword on the same page stays on the fast path.
    As the interpreter, every budget."""
    code = asm(f"""
        mov rdx, 0x080000               # c0 ^ 08 = c8: inc eax <-> dec eax
        mov rbx, 0xc3c8ff90             # nop; dec eax; ret
    1:
        call 3f
        {store}
        call 3f
        call 3f
        xor qword ptr [rip + 3f], rdx   # back to inc eax (mov: c8 ^ 08 = c0)
        add qword ptr [rip + 9f], 1     # data on the page: the fast path
        dec rcx
        jnz 1b
        hlt
    .balign 8
    3:  .byte 0x90, 0xff, 0xc0, 0xc3    # nop; inc eax; ret (not its first
                                        # instruction: no version group)
    .balign 8
    9: .quad 0
    """)
    interp, comp = runners("long64")
    for compiled in (True, "hot"):
        for budget in (11, 10 ** 5):
            a = interp.run(code, _regs(rcx=40), bytes(DATA_LEN), 0x202, budget, False)
            b = comp.run(code, _regs(rcx=40), bytes(DATA_LEN), 0x202, budget, compiled)
            assert a == b
    assert a["regs"][0] == (-40) & M32 and a["faults"] == []
    srcs = [b.compiled.source for b in comp.m.engine.blocks.values() if b.compiled]
    assert any("[2][" in src for src in srcs)     # the quadword test was compiled


def _region_selects(engine, lin, mode):
    """The compiled regions that run the versions at ``lin`` as the live
    block selects them (codegen goto_version), by head address."""
    out = set()
    for blk in list(engine.blocks.values()) + [b for vs in engine.dropped.values() for _, b in vs]:
        fn = blk.compiled
        if fn is not None and (lin, mode) in fn.vkeys:
            out.add(fn.members[0].key[0])
    return out


def test_flip_stays_in_the_compiled_region(runners):
    """ADD <-> SUB every iteration, compiled: the loop's region holds both
    versions and runs the live one; the store that swaps them leaves the
    region only when the quantum ends (Engine.smc holds the key): a run of
    2000 iterations in one quantum enters compiled code a handful of times."""
    code = asm(FLIP)
    lin2 = CODE_ADDR + code.index(b"\x01\xc8", 8)
    for budget in (1000, 10 ** 6):
        r, ei, ec = _both(runners, code, _regs(rcx=2000), budget)
    assert r["regs"][0] == _alternating(2000) and r["n"] == 1 + 5 * 2000 + 1
    comp = runners("long64")[1]
    assert _region_selects(ec, lin2, comp.cpu.mode_key)
    calls = []
    m, cpu = comp.m, comp.cpu
    for blk in list(ec.blocks.values()) + [b for vs in ec.dropped.values() for _, b in vs]:
        fn = blk.compiled
        if fn is not None and not hasattr(fn, "counted"):
            def counted(cpu, budget, pc=0, _fn=fn):
                calls.append(pc)
                return _fn(cpu, budget, pc)
            counted.counted = True
            counted.members, counted.static, counted.vkeys = fn.members, fn.static, fn.vkeys
            for b in list(ec.blocks.values()) + [b for vs in ec.dropped.values() for _, b in vs]:
                if b.compiled is fn:
                    b.compiled = counted
    cpu.rip, cpu.halted = CODE_ADDR, False
    cpu.regs[0], cpu.regs[1] = 0, 2000
    ec.run(cpu, 10 ** 6)
    assert cpu.halted and cpu.regs[0] == _alternating(2000)
    assert 0 < len(calls) < 10


MIDDLE = """
    mov edx, 0xd8
1:
    mov byte ptr [rip + 2f + 1], dl # 01 C8: add eax, ecx; 01 D8: add eax, ebx
2:  .byte 0x01, 0xc8
    xor edx, 0x10
    dec rcx
    jnz 1b
    hlt
"""

LENGTH = """
    mov edx, 0x05
1:
    mov byte ptr [rip + 2f], dl     # 01 C8 / 90 90 90: add eax, ecx; nop x3
2:  .byte 0x01, 0xc8, 0x90, 0x90, 0x90  # 05 C8 90 90 90: add eax, 0x909090c8
    xor edx, 0x04
    dec rcx
    jnz 1b
    hlt
"""


@pytest.mark.parametrize("budget", [37, 500, 10 ** 6])
def test_write_into_the_middle_of_an_instruction(runners, budget):
    """The flipped byte is the ModRM byte (ADD EAX, ECX <-> ADD EAX, EBX):
    the versions differ inside the instruction, both are selected in the
    region, every quantum size gives the interpreter's result."""
    code = asm(MIDDLE)
    r, ei, ec = _both(runners, code, _regs(rcx=300, rbx=7), budget)
    if budget == 10 ** 6:
        acc = 0
        for i in range(300, 0, -1):
            acc = (acc + (7 if (300 - i) % 2 == 0 else i)) & M32
        assert r["regs"][0] == acc and r["n"] == 1 + 5 * 300 + 1
        comp = runners("long64")[1]
        assert _region_selects(ec, CODE_ADDR + code.index(b"\x01\xc8", 8), comp.cpu.mode_key)


@pytest.mark.parametrize("budget", [41, 10 ** 6])
def test_write_that_changes_the_instruction_length(runners, budget):
    """ADD EAX, ECX; NOP; NOP; NOP <-> ADD EAX, imm32 (one 5-byte instruction
    over the same bytes): the versions have different instructions and
    counts, the region runs each as it is when reached."""
    code = asm(LENGTH)
    r, ei, ec = _both(runners, code, _regs(rcx=300), budget)
    if budget == 10 ** 6:
        acc, n = 0, 1
        for i in range(300, 0, -1):
            if (300 - i) % 2 == 0:
                acc, n = (acc + 0x909090c8) & M32, n + 5     # the store wrote 05 first
            else:
                acc, n = (acc + i) & M32, n + 8
        assert r["regs"][0] == acc and r["n"] == n + 1
        comp = runners("long64")[1]
        assert _region_selects(ec, CODE_ADDR + code.index(b"\x01\xc8\x90", 8), comp.cpu.mode_key)


@pytest.mark.parametrize("budget", [29, 10 ** 6])
def test_running_version_rewrites_itself(runners, budget):
    """A block whose first instruction flips (ADD <-> SUB, every iteration)
    stores, through registers, into that instruction and into a later one
    of its own (INC EBX <-> DEC EBX, every other iteration), so it has four
    versions: each store makes another version of the running block live,
    which its region must not take as a swap it selects (the rest of the
    running block is stale): the next instruction runs as rewritten."""
    code = asm("""
        mov edx, 0x29
        mov r8d, 0xc3c3cbcb             # low byte: cb cb c3 c3 cb ...
    1:
        .byte 0x01, 0xc8                # add / sub eax, ecx
        mov byte ptr [rsi], dl          # rsi -> 1b: this block's first instruction
        xor edx, 0x28
        mov byte ptr [rdi], r8b         # rdi -> 3f + 1: a later instruction of it
        ror r8d, 8
    3:  .byte 0xff, 0xc3                # inc ebx (ff cb: dec ebx)
        dec rcx
        jnz 1b
        hlt
    """)
    at1 = CODE_ADDR + code.index(b"\x01\xc8")
    at3 = CODE_ADDR + code.index(b"\xff\xc3")
    r, ei, ec = _both(runners, code, _regs(rcx=201, rsi=at1, rdi=at3 + 1), budget)
    if budget == 10 ** 6:
        # The ADD runs before the store that flips it; INC/DEC after its store.
        assert r["regs"][0] == _alternating(201) and r["regs"][3] == M32
        comp = runners("long64")[1]
        assert len(ec.dropped[(at1, comp.cpu.mode_key)]) == 4
        assert _region_selects(ec, at1, comp.cpu.mode_key)


@pytest.mark.parametrize("tier", ["interp", "hot"])
def test_flip_store_that_faults(runners, tier):
    """The code page turns read-only (its page-table entry rewritten, the
    TLB flushed, as an OS would) while the flip loop runs compiled: the next
    flipping store raises #PF at the store with the state of the iterations
    before it, and the code is as the last store left it."""
    code = asm(FLIP)
    interp, comp = runners("long64")
    r = interp if tier == "interp" else comp
    m, cpu = r.m, r.cpu
    out = r.run(code, _regs(rcx=1000), bytes(DATA_LEN), 0x202, 1, False)
    assert out["faults"] == []
    m.engine.hot_threshold = 5 if tier == "hot" else 10 ** 9
    done = out["n"]
    while done < 1 + 5 * 400:
        done += m.engine.run(cpu, 97)
    from cpuharness import PD
    m.bus.write(PD, 8, 0x81)                  # 0-2 MiB present, read-only
    cpu.tlb.flush_all("test")
    while not r.faults:
        done += m.engine.run(cpu, 97)
        assert done < 10 ** 5
    vec, err, rip, cr2 = r.faults[0]
    lin2 = CODE_ADDR + code.index(b"\x01\xc8", 8)
    assert (vec, err & 3, rip, cr2) == (14, 3, CODE_ADDR + 5, lin2)
    # Iterations run whole: every one stored, then ran its ADD or SUB.
    k = (done - 1) // 5
    assert (done - 1) % 5 == 0 and cpu.regs[1] == 1000 - k
    acc, add = 0, True
    for i in range(1000, 1000 - k, -1):
        acc = (acc + i if add else acc - i) & M32
        add = not add
    assert cpu.regs[0] & M32 == acc
    assert m.bus.read(lin2, 1) == (0x01 if k % 2 else 0x29)      # iteration j stores 01 if j is odd


def _flip_loops(ids):
    """Functions ``<i>1`` (ecx iterations of FLIP's ADD <-> SUB loop; the
    flipped instruction at ``<i>2``) for each i in ``ids``."""
    return "".join(f"""
    {i}1:
        mov edx, 0x01
    {i}3:
        mov byte ptr [rip + {i}2f], dl
    {i}2:
        .byte 0x01, 0xc8                # add / sub eax, ecx
        xor edx, 0x28
        dec rcx
        jnz {i}3b
        ret
    """ for i in ids)


def test_forgotten_versions_leave_the_live_block_registered(runners, monkeypatch):
    """Kept versions are forgotten when too many addresses have them
    (MAX_DROPPED, here 2): a forgotten version with the same byte ranges as
    the live block of its address must not unregister them, or a later
    store to that code would go unseen.  Three flipping loops, the third
    one's versions pushing out the first one's; then the first one's
    instruction is rewritten to INC EBX and run."""
    from svmsim.cpu import engine as engine_mod
    monkeypatch.setattr(engine_mod, "MAX_DROPPED", 2)
    loops = _flip_loops((1, 2, 3))
    code = asm(f"""
        mov ecx, 40
        call 11f
        mov ecx, 40
        call 21f
        mov ecx, 40
        call 31f
        mov word ptr [rip + 12f], 0xc3ff    # inc ebx
        mov ecx, 1
        call 12f
        hlt
    {loops}
    """)
    r, ei, ec = _both(runners, code, _regs())
    assert r["regs"][0] == (3 * _alternating(40)) & M32 and r["regs"][3] == 1


@pytest.mark.parametrize("budget", [53, 977, 10 ** 6])
def test_version_group_meets_new_bytes(runners, budget):
    """The flipped opcode's versions form a group (their opcode byte leaves
    the byte map; the version run is the one whose opcode RAM holds, read
    when the block is entered: Engine._group, live_version, _guard).  Then
    a store to a byte still in the map (the ModRM: ECX -> EBX) drops the
    block, and a store of opcodes no version has (OR, AND) is met at the
    next entry: each is decoded, and every instruction runs as the bytes
    are when it executes."""
    code = asm("""
        mov edx, 0x01
    1:
        cmp rcx, 200
        jne 3f
        mov byte ptr [rip + 2f + 1], 0xd8   # ModRM: add/sub eax, ebx
    3:  cmp rcx, 150
        jne 4f
        mov edx, 0x09                   # OR / AND from here on
    4:
        mov byte ptr [rip + 2f], dl
    2:  .byte 0x01, 0xc8                # add / sub eax, ecx
        xor edx, 0x28
        dec rcx
        jnz 1b
        hlt
    """)
    r, ei, ec = _both(runners, code, _regs(rcx=300, rbx=0x5a5a), budget)
    if budget == 10 ** 6:
        eax, dl, src_ebx = 0, 0x01, False
        for i in range(300, 0, -1):
            src_ebx |= i == 200
            if i == 150:
                dl = 0x09
            s = 0x5a5a if src_ebx else i
            eax = {0x01: eax + s, 0x29: eax - s, 0x09: eax | s, 0x21: eax & s}[dl] & M32
            dl ^= 0x28
        assert r["regs"][0] == eax
        comp = runners("long64")[1]
        at = CODE_ADDR + code.index(b"\x01\xc8")
        live = ec.blocks[(at, comp.cpu.mode_key)]
        assert live.hole is not None and len(live.hole[2]) >= 2


def test_group_without_kept_versions_is_no_static_member(runners, monkeypatch):
    """A version group whose kept versions were forgotten (MAX_DROPPED, here
    2) is still a group: a region that takes it in as the return site of a
    function on another page (codegen region_from) must not run it as a
    static member (the version that runs is read from RAM at each entry).
    The flipping instruction is the return site of an indirect call; the
    function called in the last phase is compiled after the forgetting."""
    from svmsim.cpu import engine as engine_mod
    monkeypatch.setattr(engine_mod, "MAX_DROPPED", 2)
    loops = _flip_loops((2, 3))
    code = asm(f"""
        lea r8, [rip + 81f]
        mov ecx, 40
        call 11f
        mov ecx, 40
        call 21f
        mov ecx, 40
        call 31f                        # pushes out the first loop's kept versions
        lea r8, [rip + 82f]
        mov ecx, 40
        call 11f
        hlt
    11:
        mov edx, 0x01
    13:
        mov byte ptr [rip + 12f], dl
        call r8
    12:
        .byte 0x01, 0xc8                # add / sub eax, ecx: the return site
        xor edx, 0x28
        dec rcx
        jnz 13b
        ret
    {loops}
        .org 0x1000, 0x90
    81: ret
    82: ret
    """)
    r, ei, ec = _both(runners, code, _regs())
    assert r["regs"][0] == (4 * _alternating(40)) & M32
    comp = runners("long64")[1]
    k = (CODE_ADDR + code.index(b"\x01\xc8"), comp.cpu.mode_key)
    assert k not in ec.dropped and ec.blocks[k].hole is not None
