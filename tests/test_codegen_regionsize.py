"""A region holds up to MAX_REGION_BLOCKS blocks (codegen ``region``): a
loop of many short blocks -- kvm-unit-tests' page allocator, a chain of
compares and branches around its calls -- runs in one region call instead
of leaving at the blocks the limit cut off.  Real machine code through the
real engine, compiled against interpreted."""
from cpuharness import make_machine, asm, CODE_ADDR, count_region_calls

BLOCKS = 40        # more than the old limit (16), fewer than the new one


def _loop():
    """rcx times: BLOCKS blocks of ``inc eax; add rbx, rax; jmp next``, then
    ``dec rcx; jnz top``; then HLT."""
    body = "".join(f"inc eax\nadd rbx, rax\njmp {i + 2}f\n{i + 2}:\n" for i in range(BLOCKS))
    return asm("1:\n" + body + "dec rcx\njnz 1b\nhlt")


def _go(hot):
    m = make_machine("long64")
    m.engine.hot_threshold = hot
    m.bus.write_bytes(CODE_ADDR, _loop())
    cpu = m.cpus[0]
    cpu.rip, cpu.halted = CODE_ADDR, False
    cpu.regs[0], cpu.regs[1], cpu.regs[3], cpu.regs[4] = 0, 400, 0, 0x80000
    n = m.engine.run(cpu, 10 ** 6)
    return m, cpu, n


def test_a_loop_of_40_blocks_is_one_region_and_runs_as_the_interpreter():
    m, cpu, n = _go(5)
    _, ref, ref_n = _go(10 ** 9)
    assert (n, list(cpu.regs), cpu.rip, cpu.get_rflags()) == (ref_n, list(ref.regs), ref.rip, ref.get_rflags())
    assert cpu.regs[0] == 400 * BLOCKS and cpu.rip == CODE_ADDR + len(_loop())
    fn = m.engine.blocks[(CODE_ADDR, cpu.mode_key)].compiled
    assert fn is not None and len(fn.members) == BLOCKS + 1      # the chain and the loop tail


def test_the_hot_loop_takes_one_region_call():
    """Counted: once compiled, the whole loop runs in one call of its region
    function (the engine's path through Engine._run), with the instruction
    count the interpreter gives (3 a chain block, 2 the tail, HLT)."""
    m = make_machine("long64")
    m.engine.hot_threshold = 5
    m.bus.write_bytes(CODE_ADDR, _loop())
    cpu = m.cpus[0]

    def start(rcx):
        cpu.rip, cpu.halted = CODE_ADDR, False
        cpu.regs[0], cpu.regs[1], cpu.regs[3], cpu.regs[4] = 0, rcx, 0, 0x80000

    start(20)
    m.engine.run(cpu, 10 ** 6)                       # warm: translated and compiled
    blk = m.engine.blocks[(CODE_ADDR, cpu.mode_key)]
    calls = count_region_calls(m)
    start(300)
    n = m.engine.run(cpu, 10 ** 6)
    assert blk.compiled is not None
    assert (cpu.regs[0], n) == (300 * BLOCKS, 300 * (3 * BLOCKS + 2) + 1)
    assert len(calls) == 1
