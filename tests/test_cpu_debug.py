"""Single-step and DR0-DR3 breakpoints (APM vol 2, 13.1): real code, checked
against the manual's DR6 bits and the saved RIP."""
from cpuharness import run_code, asm, DATA_ADDR, CODE_ADDR
from svmsim.cpu.flags import TF, RF


def test_instruction_breakpoint_faults_before_the_instruction():
    code = asm("mov eax, 1\nmov ebx, 2\nmov ecx, 3")
    second = CODE_ADDR + 5                       # mov ebx, 2

    def setup(m, cpu):
        cpu.dr[0] = second
        cpu.dr[7] = 0x1                          # L0, R/W0=00 (execute), LEN0=00
    r = run_code(code, setup=setup)
    vec, err, rip, _ = r.exception
    assert vec == 1 and rip == second            # a fault: RIP at the instruction
    assert r.cpu.dr[6] & 0xF == 0x1              # B0
    assert r.regs[0] == 1 and r.regs[3] == 0     # the instruction did not execute


def test_data_write_breakpoint_traps_after_the_write():
    code = asm(f"mov rsi, {DATA_ADDR}\nmov qword ptr [rsi+8], 7\nmov ecx, 3")

    def setup(m, cpu):
        cpu.dr[1] = DATA_ADDR + 8
        cpu.dr[7] = (1 << 2) | (0b01 << 20) | (0b11 << 22)   # L1, R/W1=write, LEN1=4 bytes
    r = run_code(code, setup=setup)
    vec, err, rip, _ = r.exception
    assert vec == 1
    assert r.cpu.bus.read(DATA_ADDR + 8, 8) == 7  # the write happened: a trap
    assert r.cpu.dr[6] & 0xF == 0x2               # B1
    assert r.regs[1] == 0                         # the next instruction did not run


def test_single_step_reports_bs_after_one_instruction():
    code = asm("mov eax, 1\nmov ebx, 2")
    r = run_code(code, rflags=0x2 | TF)
    vec, err, rip, _ = r.exception
    assert vec == 1 and r.cpu.dr[6] & 0x4000      # DR6.BS
    assert r.regs[0] == 1 and r.regs[3] == 0


def test_rf_suppresses_the_instruction_breakpoint_once():
    code = asm("mov eax, 1\nmov ebx, 2")

    def setup(m, cpu):
        cpu.dr[0] = CODE_ADDR
        cpu.dr[7] = 0x1
    r = run_code(code, rflags=0x2 | RF, setup=setup)
    assert r.regs[0] == 1 and r.regs[3] == 2      # ran through: RF masked the first hit
    assert r.exception is None or r.exception[0] != 1
