"""KVM's forced-emulation prefix ``ud2; .ascii "kvm"`` as the opt-in CPU
property ``force-emulation-prefix`` (cpu/profiles.py PROPERTIES, cpu/ops/system.py
ud2): kvm-unit-tests' ``*_emulate`` subtests run an instruction behind it and
expect every SVM rule of that instruction to hold.  No processor has it: off by
default the prefix is #UD as on hardware (APM vol 3, UD2).  Each case runs
machine code in a guest of the SvmRig host stub (tests/svmharness.py)."""
import io

import pytest

import guestbuild as gb
from svmharness import SvmRig, GUEST_CODE, REC
from svmsim import cli_qemu
from svmsim.cpu import profiles
from svmsim.errors import SvmsimError
from svmsim.machine import Machine
from svmsim.svm.exits import ExitCode

FEP = "ud2\n.byte 0x6b, 0x76, 0x6d\n"         # ud2; .ascii "kvm"
ON = "max,+svm,+force-emulation-prefix"
UD, DB, PF = 6, 1, 14


def frame_rip(r, error_code=False):
    """The RIP an exception pushed (the guest IDT stub saved RSP at REC + 8)."""
    return r.m.bus.read(r.m.bus.read(REC + 8, 8) + (8 if error_code else 0), 8)


def test_off_by_default_the_prefix_is_ud_at_the_ud2():
    r = SvmRig(FEP + "nop\nhlt", idt=True).run()
    assert r.recorded() == UD and frame_rip(r) == GUEST_CODE
    assert not profiles.get("max,+svm").fep


def test_on_the_instruction_after_it_runs():
    r = SvmRig(FEP + "mov eax, 0x1234\nhlt", idt=True, cpu=ON,
               intercepts=[ExitCode.HLT]).run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] == 0x1234


def test_only_the_exact_five_bytes_are_the_prefix():
    r = SvmRig("ud2\n.byte 0x6b, 0x76, 0x6e\nhlt", idt=True, cpu=ON).run()   # "kvn"
    assert r.recorded() == UD and frame_rip(r) == GUEST_CODE


def test_selective_cr0_write_intercept_holds_behind_it():
    """kvm-unit-tests "sel cr0 write intercept emulate": MOV CR0 setting CD
    behind the prefix takes CR0_SEL_WRITE (APM 15.9.1); the exit reports the
    MOV itself (where KVM leaves RIP after skipping the prefix), NRIP after it."""
    r = SvmRig("mov rax, cr0\nbts rax, 30\n" + FEP + "mov cr0, rax\nhlt", cpu=ON,
               intercepts=[ExitCode.CR0_SEL_WRITE]).run()
    mov = len(r.guest_code) - 4                     # mov cr0, rax (3 bytes), hlt
    assert r.exitcode == ExitCode.CR0_SEL_WRITE
    assert r.vmcb["RIP"] == GUEST_CODE + mov and r.vmcb["NRIP"] == GUEST_CODE + mov + 3
    assert not r.vmcb["CR0"] & 1 << 30


def test_cr0_write_intercept_has_priority_behind_it():
    """"... priority emulate": the general CR0 write intercept comes first (15.9.1)."""
    r = SvmRig("mov rax, cr0\nbts rax, 30\n" + FEP + "mov cr0, rax\nhlt", cpu=ON,
               intercepts=[ExitCode.CR0_WRITE, ExitCode.CR0_SEL_WRITE]).run()
    assert r.exitcode == ExitCode.CR0_WRITE


def test_mp_only_write_is_not_intercepted_behind_it():
    """"... nointercept emulate": MOV CR0 changing only MP is no selective write."""
    r = SvmRig("mov rax, cr0\nxor eax, 2\n" + FEP + "mov cr0, rax\nhlt", cpu=ON,
               intercepts=[ExitCode.CR0_SEL_WRITE, ExitCode.HLT]).run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["CR0"] & 2


def test_lmsw_takes_the_selective_intercept_behind_it():
    """"sel cr0 lmsw intercept emulate": LMSW always takes it (Table 15-7)."""
    r = SvmRig("mov rax, cr0\nxor eax, 2\n" + FEP + "lmsw ax\nhlt", cpu=ON,
               intercepts=[ExitCode.CR0_SEL_WRITE]).run()
    assert r.exitcode == ExitCode.CR0_SEL_WRITE and r.vmcb["EXITINFO1"] == 0


def test_a_fault_behind_it_reports_the_instruction_not_the_prefix():
    """kvm-unit-tests' ASM_TRY_FEP puts its fix-up at the instruction after the
    prefix: that is where the fault's RIP must point (KVM skips the prefix first)."""
    r = SvmRig("mov rax, 0x0000800000000000\n" + FEP + "mov rax, [rax]\nhlt", idt=True, cpu=ON).run()
    assert r.recorded() == 13 and frame_rip(r, error_code=True) == GUEST_CODE + 10 + 5
    r = SvmRig(FEP + "ud2\nhlt", idt=True, cpu=ON).run()
    assert r.recorded() == UD and frame_rip(r) == GUEST_CODE + 5


def test_single_step_traps_once_after_the_instruction():
    """TF: one #DB trap, after the instruction behind the prefix (the prefix
    takes none of its own: on KVM it is not an instruction)."""
    r = SvmRig(FEP + "nop\nhlt", idt=True, cpu=ON, RFLAGS=0x102).run()
    assert r.recorded() == DB and frame_rip(r) == GUEST_CODE + 6


def test_a_hypervisor_that_intercepts_ud_gets_the_prefix():
    """As on KVM, which reflects the prefix's #UD to an L1 that intercepts #UD."""
    r = SvmRig(FEP + "nop\nhlt", cpu=ON, intercepts=[ExitCode.EXCP_UD]).run()
    assert r.exitcode == ExitCode.EXCP_UD and r.vmcb["RIP"] == GUEST_CODE


def test_cpu_property_spellings():
    for spec in ("max,+svm,+fep", "max,+svm,force-emulation-prefix=on", "epyc,+force_emulation_prefix"):
        assert profiles.get(spec).fep
    assert not profiles.get("max,+fep,-fep").fep
    assert profiles.with_fep(profiles.get("max,+svm,-npt")).fep


@pytest.mark.parametrize("value,on", [("1", True), ("y", True), ("0", False), ("", False)])
def test_svmsim_qemu_takes_it_from_the_environment(monkeypatch, value, on):
    """kvm-unit-tests' runner passes the stanza's -cpu untouched: the opt-in is
    SVMSIM_FORCE_EMULATION_PREFIX, as kvm.force_emulation_prefix is on KVM."""
    monkeypatch.setenv(cli_qemu.FEP_ENV, value)
    assert cli_qemu._fep_from_env() is on


def test_svmsim_qemu_refuses_a_bad_value(monkeypatch):
    monkeypatch.setenv(cli_qemu.FEP_ENV, "maybe")
    with pytest.raises(SvmsimError):
        cli_qemu._fep_from_env()


# ---------------------------------------------------------------- tests/guests/svm_fep.c
FEP_TRANSCRIPT = """svm_fep: KVM's forced-emulation prefix under a hypervisor
host: forced-emulation prefix available
enable: ok
exit 1: CR0_SEL_WRITE rip=gf_mov_cd nrip=gf_mov_cd+3
guest CR0.CD after it: 0
exit 2: CR0_SEL_WRITE rip=gf_lmsw nrip=gf_fep3
exit 3: HLT rip=gf_hlt nrip=gf_hlt+1
guest CR0.MP changed by the MOV behind gf_fep3: yes
with #UD intercepted:
exit 4: EXCP_UD rip=gf_fep1
svm_fep: PASS
"""


def _boot_svm_fep(cpu):
    out = io.BytesIO()
    m = Machine(mem_size="128M", cpu=cpu, serial_out=out)
    m.load_kernel(str(gb.build_guest("svm_fep")), "")
    r = m.run(max_insns=20_000_000, timeout=120)
    return r, out.getvalue().decode()


def test_svm_fep_kernel_with_the_prefix():
    """Our own hypervisor kernel: the host's probe finds the prefix, and the
    guest's prefixed MOV CR0 / LMSW / MOV CR0 / HLT take exactly the exits of
    the bare instructions, reported at the instruction after the prefix."""
    r, out = _boot_svm_fep("epyc,+force-emulation-prefix")
    assert r.status == gb.STATUS_PASS, r.reason
    assert out == FEP_TRANSCRIPT


def test_svm_fep_kernel_without_it_sees_ud_as_on_hardware():
    r, out = _boot_svm_fep("epyc")
    assert r.status == gb.STATUS_PASS, r.reason
    assert out.splitlines()[1] == "host: forced-emulation prefix absent (#UD)"
