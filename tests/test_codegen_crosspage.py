"""Regions across pages (engine.py ``_compile``, codegen ``Gen._transition``):
a hot caller's region takes in the function it calls on another page (a
hypervisor's loop calling its VMRUN stub), and moves there only while that
linear page is mapped as it was when the callee was decoded (the engine
checks the page of each block it enters; the region checks the callee's at
the call).  Real machine code through the real engine, compiled against
interpreted."""
from cpuharness import make_machine, asm, CODE_ADDR, DATA_ADDR, PD, count_region_calls

CALLEE = DATA_ADDR + 0x100         # in the 2-4 MiB mapping (PD entry 1)
OTHER = 0x600000                   # where that mapping moves: another callee


def _run(m, rcx):
    cpu = m.cpus[0]
    cpu.rip, cpu.halted = CODE_ADDR, False
    cpu.regs[1], cpu.regs[3] = rcx, 0
    cpu.regs[4] = 0x80000
    m.engine.run(cpu, 100_000)
    return cpu.regs[3], cpu.rip


def _caller(m):
    """At CODE_ADDR, rcx times: call rel32 CALLEE, rbx += rax; then HLT."""
    call = b"\xe8" + ((CALLEE - (CODE_ADDR + 5)) & 0xFFFFFFFF).to_bytes(4, "little")
    m.bus.write_bytes(CODE_ADDR, call + asm("add rbx, rax\ndec rcx\njnz $-11\nhlt"))


def _code(m):
    # The callees return 1 and 100.
    _caller(m)
    m.bus.write_bytes(CALLEE, asm("mov eax, 1\nret"))
    m.bus.write_bytes(OTHER + 0x100, asm("mov eax, 100\nret"))


def test_region_takes_in_callee_on_another_page_and_checks_its_mapping():
    out = []
    for hot in (5, 10 ** 9):
        m = make_machine("long64")
        m.engine.hot_threshold = hot
        _code(m)
        cpu = m.cpus[0]
        first = _run(m, 50)
        if hot == 5:
            fn = m.engine.blocks[(CODE_ADDR, cpu.mode_key)].compiled
            assert fn is not None and any(b.key[0] == CALLEE for b in fn.members)
            assert "fxg(0x200)" in fn.source
        # Move the 2-4 MiB mapping to OTHER (a TLB flush, as MOV CR3 does):
        # the cached blocks stay, the callee at CALLEE now returns 100.
        m.bus.write(PD + 8, 8, OTHER | 0x83)
        cpu.tlb.flush_all("test")
        second = _run(m, 50)
        out.append((first, second))
    assert out[0] == out[1] == (((50, CODE_ADDR + 14)), (5000, CODE_ADDR + 14))


CALLER, FN, FPTR, NEW = 0x400000, 0x200100, 0x200800, 0x800000


def _ret_code(m):
    """A loop at CALLER (PD entry 2) calling FN (PD entry 1) through a
    pointer: the indirect call leaves the caller's region, so FN's block is
    entered from the engine and heads a region of its own whose RET goes back
    to CALLER's page (the predicted return site).  At NEW, a caller whose
    code after the call differs (adds 1000 more)."""
    call = asm(f"call qword ptr [{FPTR:#x}]")
    tail = asm("add rbx, rax\ndec rcx\njnz $-{}\nhlt".format(len(call) + 3 + 3))
    m.bus.write_bytes(CALLER, call + tail)
    tail2 = asm("add rbx, rax\nadd rbx, 1000\ndec rcx\njnz $-{}\nhlt".format(len(call) + 3 + 7 + 3))
    m.bus.write_bytes(NEW, call + tail2)
    m.bus.write_bytes(FN, asm("mov eax, 1\nret"))
    m.bus.write(FPTR, 8, FN)


def _go(m, rcx):
    cpu = m.cpus[0]
    cpu.rip, cpu.halted = CALLER, False
    cpu.regs[1], cpu.regs[3] = rcx, 0
    cpu.regs[4] = 0x80000
    m.engine.run(cpu, 100_000)
    return cpu.regs[3], cpu.rip - CALLER


def test_predicted_return_site_on_another_page_checks_its_mapping():
    """The callee's region continues at its RET's return site on the
    caller's page only while that page is mapped as when the site was
    decoded: after the caller's page moves to NEW (other code), the RET
    leaves to the engine, which runs NEW's code."""
    out = []
    for hot in (5, 10 ** 9):
        m = make_machine("long64")
        m.engine.hot_threshold = hot
        _ret_code(m)
        cpu = m.cpus[0]
        first = _go(m, 50)
        if hot == 5:
            fn = m.engine.blocks[(FN, cpu.mode_key)].compiled
            assert fn is not None and fn.members[0].key[0] == FN
            assert any(b.key[0] >> 12 == CALLER >> 12 for b in fn.members)
            assert "fxg(XC[" in fn.source
        m.bus.write(PD + 16, 8, NEW | 0x83)
        cpu.tlb.flush_all("test")
        second = _go(m, 50)
        out.append((first, second))
    n = len(asm(f"call qword ptr [{FPTR:#x}]"))
    assert out[0] == out[1] == ((50, n + 9), (50 * 1001, n + 16))


def test_own_page_blocks_come_before_a_long_callee_on_another_page():
    """A region takes in what it reaches on its own page before blocks on
    another page (codegen ``region``): a loop calling a function of more
    blocks than a region holds keeps its return site and loop tail in the
    region, instead of losing them to the callee's blocks (kvm-unit-tests'
    page-table loop calling memset lost them, and left its region on every
    iteration).  Compiled against interpreted."""
    from svmsim.cpu.codegen import MAX_REGION_BLOCKS
    chain = "".join(f"inc eax\njmp {i + 2}f\n{i + 2}:\n" for i in range(MAX_REGION_BLOCKS + 4))
    out = []
    for hot in (5, 10 ** 9):
        m = make_machine("long64")
        m.engine.hot_threshold = hot
        _caller(m)
        m.bus.write_bytes(CALLEE, asm("xor eax, eax\n" + chain + "ret"))
        cpu = m.cpus[0]
        out.append(_run(m, 30))
        if hot == 5:
            fn = m.engine.blocks[(CODE_ADDR, cpu.mode_key)].compiled
            keys = [b.key[0] for b in fn.members]
            assert CODE_ADDR + 5 in keys and CALLEE in keys
            assert keys.index(CODE_ADDR + 5) < keys.index(CALLEE)
    assert out[0] == out[1] == (30 * (MAX_REGION_BLOCKS + 4), CODE_ADDR + 14)


def _nested(m, at, value):
    """At ``at``: F = call G; inc eax; ret.  At ``at + 0x40``: G = mov eax,
    ``value``; ret (G's RET returns into F, on F's page)."""
    g = at + 0x40
    call = b"\xe8" + ((g - (at + 5)) & 0xFFFFFFFF).to_bytes(4, "little")
    m.bus.write_bytes(at, call + asm("inc eax\nret"))
    m.bus.write_bytes(g, asm(f"mov eax, {value}\nret"))


def test_ret_to_a_return_site_on_the_callees_page_stays_in_the_region():
    """A RET whose return site is a member on another page than the region's
    first (a callee's callee returning into it: kvm-unit-tests' memset into
    page_memalign_order_flags) continues in the region, checked as its
    static transitions are (``xc``: the page still mapped as decoded); the
    hot loop is then one region call.  After the callee's page is remapped
    the results follow the new code.  Compiled against interpreted."""
    out = []
    for hot in (5, 10 ** 9):
        m = make_machine("long64")
        m.engine.hot_threshold = hot
        _caller(m)
        _nested(m, CALLEE, 1)
        _nested(m, OTHER + 0x100, 100)
        cpu = m.cpus[0]
        _run(m, 20)                                  # warm
        calls = count_region_calls(m)
        first = _run(m, 50)
        if hot == 5:
            assert len(calls) == 1
        m.bus.write(PD + 8, 8, OTHER | 0x83)
        cpu.tlb.flush_all("test")
        second = _run(m, 50)
        out.append((first, second))
    assert out[0] == out[1] == ((100, CODE_ADDR + 14), (5050, CODE_ADDR + 14))
