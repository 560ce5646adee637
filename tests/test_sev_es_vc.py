"""#VC error codes of every NAE event an SEV-ES guest's GHCB client serves
(APM vol 2, 15.35.5: "The error code of the #VC exception is equal to the
#VMEXIT code ... of the event that caused the NAE"; the #VC is a fault, so
the saved RIP is the instruction's own).  Hardware level, on the esharness
guest; the whole round trip through a GHCB is tested in test_sev_es_vmm."""
import pytest

from cpuharness import asm
from esharness import EsRig, SHARED
from svmharness import GUEST_CODE
from svmsim.svm.exits import ExitCode as E

# (instructions before the NAE instruction, the instruction, its exit code)
CASES = [
    ("", "cpuid", E.CPUID),
    ("mov dx, 0x3f8", "out dx, al", E.IOIO),
    ("", "in al, 0x71", E.IOIO),
    ("mov dx, 0x3f8\nmov rsi, 0x500000\nmov ecx, 4", "rep outsb", E.IOIO),
    ("mov ecx, 0x10", "rdmsr", E.MSR),
    ("mov ecx, 0x1b\nxor eax, eax\nxor edx, edx", "wrmsr", E.MSR),
    ("", "vmmcall", E.VMMCALL),
    ("", "rdtsc", E.RDTSC),
    ("", "rdtscp", E.RDTSCP),
    ("xor ecx, ecx", "rdpmc", E.RDPMC),
    ("", "wbinvd", E.WBINVD),
    ("", "invd", E.INVD),
    (f"mov rax, {SHARED:#x}\nxor ecx, ecx\nxor edx, edx", "monitor", E.MONITOR),
    ("xor eax, eax\nxor ecx, ecx", "mwait", E.MWAIT),
    ("", "mov rax, dr7", E.DR7_READ),
    ("mov eax, 0x400", "mov dr7, rax", E.DR7_WRITE),
]


@pytest.mark.parametrize("before,insn,code", CASES, ids=[c[1].split()[0] + f"-{c[2]:#x}" for c in CASES])
def test_vc_error_code_is_the_exit_code(before, insn, code):
    r = EsRig(f"{before}\n{insn}\nhlt", intercepts=(E.HLT, code))
    if code == E.MSR:
        r.m.bus.write_bytes(0x302000, b"\xff" * 0x2000)       # the MSRPM: every MSR
    r.run()
    at = GUEST_CODE + (len(asm(before)) if before else 0)
    assert r.exitcode == E.HLT and r.recorded() == (29, int(code), at)


@pytest.mark.parametrize("insn", ["rdtsc", "wbinvd", "mov rax, dr7"])
def test_not_intercepted_no_vc(insn):
    """Only a would-be intercept is an NAE: without the intercept bit the
    instruction runs in the guest (CPUID and port I/O aside, test_sev_es)."""
    r = EsRig(f"{insn}\nhlt").run()
    assert r.exitcode == E.HLT and r.recorded() is None


@pytest.mark.parametrize("before,mask", [("sti", 1), ("cli", 0)])
def test_guest_interrupt_mask_is_the_guests_if(before, mask):
    """VMCB 068h bit 1, GUEST_INTERRUPT_MASK: the guest's RFLAGS.IF written back
    at #VMEXIT (APM vol 2, Table B-1), the one view of it a hypervisor has of
    an SEV-ES guest, whose RFLAGS is in the encrypted VMSA.  HLT right after
    STI is in the STI shadow (INTERRUPT_SHADOW, bit 0)."""
    r = EsRig(f"{before}\nhlt").run()
    assert r.exitcode == E.HLT
    assert (r.vmcb["GUEST_INTERRUPT_MASK"], r.vmcb["INTERRUPT_SHADOW"]) == (mask, mask)


def test_init_keeps_the_c_bit_in_force():
    """INIT keeps the MSRs (APM vol 2, 15.21.8), SYSCFG among them: with
    MemEncryptionModEn still set the C-bit keeps its meaning (an SEV-ES AP
    parked in AP reset hold is started again with INIT-SIPI)."""
    r = EsRig("hlt")
    cpu = r.cpu
    c_bit, mask = cpu.c_bit, cpu.enc_mask
    r.m.do_init(cpu)
    assert c_bit == 47 and (cpu.c_bit, cpu.enc_mask) == (c_bit, mask)
