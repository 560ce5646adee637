"""CBW / CWDE / CDQE compiled inline (codegen ``t_cbw``): the same registers,
flags and instruction counts as the interpreter, and a loop holding them
stays in one region call (as a generic handler call it left its region at
every iteration's backward jump).  Real machine code through the engine."""
from cpuharness import make_machine, asm, CODE_ADDR, count_region_calls

# rcx times: sign-extend values whose sign bits vary with rcx, summing them
# (CBW keeps EAX's bits 31..16, CWDE and CDQE clear or set the upper half).
LOOP = asm("""
1:
mov eax, ecx
shl eax, 25
cdqe
add rbx, rax
mov eax, ecx
shl eax, 9
cwde
add rbx, rax
mov eax, ecx
imul eax, eax, 0x9e3779b1
cbw
add rbx, rax
mov rax, rcx
shl rax, 57
cdqe
add rbx, rax
dec rcx
jnz 1b
hlt
""")
PER_ITER = 18


def _start(cpu, rcx):
    cpu.rip, cpu.halted = CODE_ADDR, False
    cpu.regs[0], cpu.regs[1], cpu.regs[3], cpu.regs[4] = 0, rcx, 0, 0x80000


def _machine(hot):
    m = make_machine("long64")
    m.engine.hot_threshold = hot
    m.bus.write_bytes(CODE_ADDR, LOOP)
    return m, m.cpus[0]


def test_sign_extensions_compiled_as_interpreted_in_one_region_call():
    out = []
    for hot in (5, 10 ** 9):
        m, cpu = _machine(hot)
        _start(cpu, 30)
        m.engine.run(cpu, 10 ** 6)                  # warm
        calls = count_region_calls(m)
        _start(cpu, 700)
        n = m.engine.run(cpu, 10 ** 6)
        out.append((n, list(cpu.regs), cpu.rip, cpu.get_rflags()))
        if hot == 5:
            assert m.engine.blocks[(CODE_ADDR, cpu.mode_key)].compiled is not None
            assert len(calls) == 1
    assert out[0] == out[1]
    assert out[0][0] == 700 * PER_ITER + 1 and out[0][2] == CODE_ADDR + len(LOOP)
    assert out[0][1][3] != 0
