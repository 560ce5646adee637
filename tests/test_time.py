"""Time as software measures it (issue 12, item 5): the TSC and the local
APIC timer advance with every instruction, in blocks, compiled self-loops and
across the machine's quanta, and a guest's TSC is scaled and offset by the
VMCB (APM vol 2, 15.30.5: "the guest TSC is computed as host TSC * TSC_RATIO
+ TSC_OFFSET")."""
from cpuharness import asm, make_machine, run_code, CODE_ADDR, DATA_ADDR
from svmharness import SvmRig

MASK64 = (1 << 64) - 1


def tsc_pairs(machine, n):
    return [machine.bus.read(DATA_ADDR + 4 * i, 4) for i in range(n)]


def test_rdtsc_counts_the_instructions_between_two_reads_in_one_block():
    r = run_code(asm("rdtsc\nmov r8d, eax\n" + "nop\n" * 10 + "rdtsc\nsub eax, r8d"))
    assert r.regs[0] & 0xFFFFFFFF == 12            # mov + 10 nops + the second RDTSC


LOOP = f"""mov edi, {DATA_ADDR}
mov ecx, 600
1: rdtsc
mov [rdi], eax
add rdi, 4
dec ecx
jnz 1b"""


def test_rdtsc_in_a_self_loop_interpreted_then_compiled():
    """The loop runs 200 times interpreted, then as a compiled block that
    iterates in place: each iteration is 5 instructions later than the last."""
    r = run_code(asm(LOOP), max_insns=10_000)
    values = tsc_pairs(r.machine, 600)
    assert {b - a for a, b in zip(values, values[1:])} == {5}
    assert r.machine.engine.stats["blocks_compiled"] >= 1


def test_rdtsc_runs_on_across_quanta_and_pause():
    """Through Machine.run (quanta of 1000 instructions, the clock advancing
    between them): no step back or jump at a quantum boundary; a PAUSE adds its
    64 ns."""
    m = make_machine("long64")
    m.bus.write_bytes(CODE_ADDR, asm(LOOP.replace("dec ecx", "pause\ndec ecx")) + b"\xfa\xf4")
    m.cpus[0].rip = CODE_ADDR
    m.run(max_insns=50_000)
    values = tsc_pairs(m, 600)
    assert {b - a for a, b in zip(values, values[1:])} == {6 + 63}


def test_apic_timer_counts_down_between_two_reads_in_a_quantum():
    """Two reads of the current-count register a few instructions apart see
    different counts (divide by 1: one tick per virtual ns).  A memory-mapped
    read sees the time at the start of its block, so the reads sit in two."""
    code = asm("""mov esi, 0xFEE00000
mov dword ptr [rsi + 0x3E0], 0xB
mov dword ptr [rsi + 0x380], 1000000
mov eax, [rsi + 0x390]
nop
nop
jmp 1f
1: mov ebx, [rsi + 0x390]""")
    r = run_code(code, setup=lambda m, cpu: cpu.lapic.write_apic_base(cpu.lapic.read_apic_base()))
    first, second = r.regs[0] & 0xFFFFFFFF, r.regs[3] & 0xFFFFFFFF
    assert 1000000 >= first > second >= first - 10


def test_guest_tsc_is_scaled_and_offset_per_instruction():
    """A guest with TSC_RATIO 2.0 sees its TSC advance twice as fast as the
    instructions it runs, plus TSC_OFFSET."""
    guest = "rdtsc\nshl rdx, 32\nor rax, rdx\nmov r8, rax\n" + "nop\n" * 6 + \
            "rdtsc\nshl rdx, 32\nor rax, rdx\nmov r9, rax\nvmmcall"
    rig = SvmRig(guest, intercepts=[0x81], TSC_OFFSET=1 << 40)
    rig.cpu.msr[0xC0000104] = 2 << 32
    rig.run()
    first, second = rig.cpu.regs[8], rig.cpu.regs[9]
    assert second - first == 2 * 10                 # shl, or, mov, 6 nops, rdtsc: 10 instructions
    assert first >= 1 << 40 and first & 1 == 0      # the offset, then an even (scaled) count
