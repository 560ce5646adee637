"""kvm-unit-tests' host_rflags, stage 3, as machine code: the host puts an
instruction breakpoint (DR0) on its VMRUN; its #DB handler sets RF in the
frame and returns, so VMRUN runs once; after the #VMEXIT, RF must be clear.

RFLAGS.RF (APM vol 2, 3.1.6) suppresses the instruction breakpoint of the
next instruction and is cleared once an instruction completes -- in the test's
own words "Setting host EFLAGS.RF suppresses any potential instruction
breakpoint match on the VMRUN and completion of the VMRUN instruction clears
the host EFLAGS.RF bit"; APM 15.17, Table 15-10: with GIF = 0 a "Debug exception or trap, due to breakpoint
register match" is "Ignored and discarded".  kvm-unit-tests arms that
breakpoint after CLGI (test_run in x86/svm.c), as a KVM guest whose GIF is
virtual; on the manual's processor it never fires, with or without nested
paging (docs/KVM-UNIT-TESTS.md).  Both GIF values run here, each with and
without NP_ENABLE, since [svm_no_npt] and [svm] were once thought to differ.
"""
import pytest

from svmharness import SvmRig, NestedTables, VMCB
from cpuharness import asm, CODE_ADDR
from svmsim.svm.exits import ExitCode

HOST_IDT, HANDLER, FLAG = 0x520000, 0x521000, 0x522000
RF = 1 << 16


def host_rflags_rig(gif: int, npt: bool):
    r = SvmRig("vmmcall\nhlt", intercepts=[ExitCode.VMMCALL])
    if npt:
        r.nt = NestedTables(r.m.bus)
        r.nt.identity(0, 0x1000000)
        r.vmcb["NP_ENABLE"], r.vmcb["N_CR3"] = 1, r.nt.root
    m, cpu = r.m, r.cpu
    gif_insn = "stgi" if gif else "clgi"
    head = asm(f"{gif_insn}\nmov rax, {VMCB}")
    stub = head + asm("vmrun\npushfq\npop rbx\nhlt")
    m.bus.write_bytes(CODE_ADDR, stub)
    vmrun_at = CODE_ADDR + len(head)
    # Host #DB handler: set RF in the frame, count, return (x86/svm_tests.c
    # host_rflags_db_handler with host_rflags_set_rf).
    m.bus.write_bytes(HANDLER, asm(f"or qword ptr [rsp + 16], {RF}\n"
                                   f"inc dword ptr [{FLAG}]\niretq"))
    sel = cpu.segs[1].sel
    lo = (HANDLER & 0xFFFF) | (sel << 16) | (0x8E00 << 32) | ((HANDLER >> 16) & 0xFFFF) << 48
    m.bus.write(HOST_IDT + 16, 8, lo)
    m.bus.write(HOST_IDT + 24, 8, HANDLER >> 32)
    cpu.idtr_base, cpu.idtr_limit = HOST_IDT, 16 * 32 - 1
    cpu.dr[0], cpu.dr[7] = vmrun_at, 0x403            # L0|G0, execute, 1 byte
    return r


@pytest.mark.parametrize("npt", [False, True], ids=["no_npt", "npt"])
def test_gif_1_breakpoint_on_vmrun_fires_once_and_rf_is_clear_after_vmexit(npt):
    r = host_rflags_rig(1, npt).run()
    assert r.exitcode == ExitCode.VMMCALL
    assert r.m.bus.read(FLAG, 4) == 1                   # one #DB, then RF let VMRUN run
    assert not r.cpu.regs[3] & RF                       # "completion of VMRUN clears RF"
    assert not r.cpu.rflags & RF


@pytest.mark.parametrize("npt", [False, True], ids=["no_npt", "npt"])
def test_gif_0_breakpoint_on_vmrun_is_discarded(npt):
    """kvm-unit-tests' case: its guest then sees no #DB and the subtest
    reports "EFLAGS.RF not cleared" (its one message for every check)."""
    r = host_rflags_rig(0, npt).run()
    assert r.exitcode == ExitCode.VMMCALL
    assert r.m.bus.read(FLAG, 4) == 0
    assert not r.cpu.regs[3] & RF and r.cpu.dr[6] & 0xF == 0
