"""SEV-ES (APM vol 2, 15.35): the VMSA layout, its integrity, the world
switch through the encrypted VMSA, automatic and non-automatic exits (#VC),
VMGEXIT and the GHCB MSR (issue 9)."""
import pytest

from svmsim.memory.encryption import EncryptionEngine
from svmsim.svm import vmsa


def test_vmsa_layout_is_the_expanded_save_area():
    """Appendix B table B-4 (Linux struct sev_es_save_area, 1648 bytes): no
    field overlaps another, GPRs at their fixed offsets, FPU area at 400h."""
    fields = sorted(vmsa.FIELDS, key=lambda f: f.offset)
    for a, b in zip(fields, fields[1:]):
        assert a.end <= b.offset, (a.name, b.name)
    at = {f.name: f.offset for f in vmsa.FIELDS}
    assert (at["RAX"], at["RSP"], at["RCX"], at["RBX"], at["R15"]) == (0x1F8, 0x1D8, 0x308, 0x318, 0x378)
    assert (at["SEV_FEATURES"], at["XCR0"], at["MXCSR"]) == (0x3B0, 0x3E8, 0x408)
    assert vmsa.YMM_HI_REGS + 16 * 16 == vmsa.VMSA_SIZE == 1648


def test_vmsa_seal_detects_any_change():
    """The integrity checksum (15.35.8) covers the whole page and its address."""
    eng = EncryptionEngine(15)
    page = bytes(range(256)) * 16
    eng.seal_vmsa(0x5000, page)
    assert eng.vmsa_intact(0x5000, page)
    assert not eng.vmsa_intact(0x5000, page[:-1] + b"\x00")
    assert not eng.vmsa_intact(0x6000, page)
    eng.unseal_vmsa(0x5000)
    assert not eng.vmsa_intact(0x5000, page)


# ---------------------------------------------------------------- the world switch
from esharness import EsRig, VMSA, REC, SHARED, KEY           # noqa: E402
from cpuharness import asm                                      # noqa: E402
from svmharness import GUEST_CODE                               # noqa: E402
from svmsim.svm.exits import ExitCode                           # noqa: E402


def test_es_guest_runs_from_its_encrypted_vmsa():
    """VMRUN loads the guest from the VMSA (15.35.8); at the automatic HLT exit
    the guest's registers go back into the VMSA, encrypted: the VMCB's save
    area is not written and DRAM holds ciphertext."""
    r = EsRig("mov rax, 0x1122334455667788\nmov r15, rax\nhlt")
    r.vmcb["RAX"] = 0xAA
    r.run()
    assert r.exitcode == ExitCode.HLT
    assert r.vmcb["RAX"] == 0xAA                                   # not the guest's
    raw = r.m.bus.read_bytes(VMSA + 0x1F8, 8)
    assert int.from_bytes(raw, "little") != 0x1122334455667788     # ciphertext
    g = r.vmsa()
    assert g["RAX"] == g["R15"] == 0x1122334455667788
    hlt_end = GUEST_CODE + len(asm("mov rax, 0x1122334455667788\nmov r15, rax\nhlt"))
    assert g["RIP"] == hlt_end                                     # "HW Advances RIP"


def test_es_guest_resumes_after_the_automatic_exit():
    r = EsRig("mov eax, 1\nhlt\nadd eax, 41\nhlt").run()
    assert r.exitcode == ExitCode.HLT and r.vmsa()["RAX"] == 1
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmsa()["RAX"] == 42


def _insn_len(src):
    return len(asm(src))


# ---------------------------------------------------------------- #VC (15.35.4-5)
def test_cpuid_is_a_vc_even_without_the_intercept():
    """15.36.23: "the CPUID instruction and all IO port accesses are
    unconditionally intercepted in SEV-ES ... guests"; an NAE is a #VC whose
    error code is the exit code (15.35.5), taken at the instruction (a fault)."""
    r = EsRig("cpuid\nhlt").run()
    assert r.exitcode == ExitCode.HLT
    assert r.recorded() == (29, 0x72, GUEST_CODE)


def test_port_io_is_a_vc_whatever_the_iopm_says():
    r = EsRig("mov al, 0x41\nout 0x80, al\nhlt").run()
    assert r.recorded() == (29, 0x7B, GUEST_CODE + _insn_len("mov al, 0x41"))


def test_intercepted_msr_is_a_vc_and_unintercepted_msr_runs():
    r = EsRig("mov ecx, 0xC0000081\nrdmsr\nhlt", intercepts=(ExitCode.HLT, ExitCode.MSR))
    r.m.bus.write_bytes(0x302000, b"\xff" * 0x2000)           # MSRPM: everything
    r.run()
    assert r.recorded()[:2] == (29, 0x7C)
    r = EsRig("mov ecx, 0xC0000081\nrdmsr\nhlt", intercepts=(ExitCode.HLT, ExitCode.MSR)).run()
    assert r.exitcode == ExitCode.HLT and r.recorded() is None


def test_automatic_exits_do_not_raise_vc():
    """VMMCALL is not in table 15-33: #VC; HLT is: an exit."""
    r = EsRig("vmmcall\nhlt", intercepts=(ExitCode.HLT, ExitCode.VMMCALL)).run()
    assert r.recorded()[:2] == (29, 0x81)


def test_intercepted_exception_is_a_vc_instead():
    """An exception intercept is not in table 15-33: the guest takes
    #VC(40h + vector) instead of the exception."""
    r = EsRig("mov rax, 0x8000000000000000\nmov rax, [rax]\nhlt",
              intercepts=(ExitCode.HLT, ExitCode.EXCP_GP)).run()
    assert r.recorded() == (29, 0x4D, GUEST_CODE + _insn_len("mov rax, 0x8000000000000000"))


def test_vc_is_contributory():
    """#VC is "a precise, contributory, fault-type exception" (15.35.5): a #VC
    raised while the guest delivers a #GP (its stack is emulated MMIO: a
    reserved-bit #NPF, non-automatic) is a double fault (APM 8.2.9)."""
    from esharness import G_IDT, G_STUBS
    bad_stack = SHARED + 0x200000
    tss = 0x530000
    r = EsRig(f"mov rsp, {bad_stack + 0x1000:#x}\nmov rax, 0x8000000000000000\nmov rax, [rax]\nhlt")
    r.nested.map(bad_stack, bad_stack | 1 << 51, size=1 << 21)
    r.put(tss, bytes(0x24) + (0x480000 - 0x2000).to_bytes(8, "little") + bytes(0x40))   # IST1
    stub = G_STUBS + 64 * 8
    gate = ((stub & 0xFFFF) | 0x08 << 16 | (0x8E00 | 1) << 32 | ((stub >> 16) & 0xFFFF) << 48)
    r.put(G_IDT + 16 * 8, gate.to_bytes(8, "little") + (stub >> 32).to_bytes(8, "little"))
    g = r.initial_vmsa()
    g.set_segment("TR", 0x18, 0x89, 0x67, tss)
    r.write_vmsa(g)
    r.run()
    assert r.exitcode == ExitCode.HLT and r.recorded()[:2] == (8, 0)


def test_intercepting_vc_itself_exits():
    """The hypervisor should not intercept #VC (15.35.5); if it does, the
    guest's #VC becomes an exit (svmsim's reading: an automatic one)."""
    r = EsRig("cpuid\nhlt", intercepts=(ExitCode.HLT, ExitCode.EXCP_VC)).run()
    assert r.exitcode == ExitCode.EXCP_VC and r.vmcb["EXITINFO1"] == 0x72
    assert r.recorded() is None


def test_npf_without_reserved_bit_is_automatic_and_mmio_npf_is_a_vc():
    """Table 15-33: NPF is an AE "Only if PFCODE[3]=0"; a reserved-bit #NPF
    (the MMIO convention) raises #VC(0x400) in the guest."""
    r = EsRig(f"mov eax, [{SHARED + 0x100000:#x}]\nhlt")
    r.nested.map(SHARED + 0x100000, SHARED + 0x100000, size=1 << 21, flags=0)   # not present
    r.run()
    assert r.exitcode == ExitCode.NPF and r.recorded() is None
    assert r.vmcb["INSN_LEN"] == 0                            # never saved for SEV-ES (15.35.4)
    r = EsRig(f"mov eax, [{SHARED + 0x100000:#x}]\nhlt")
    r.nested.map(SHARED + 0x100000, SHARED + 0x100000 | 1 << 51, size=1 << 21)  # reserved bit
    r.run()
    assert r.exitcode == ExitCode.HLT and r.recorded()[:2] == (29, 0x400)


# ---------------------------------------------------------------- VMGEXIT (15.35.6)
def test_vmgexit_is_an_automatic_trap():
    r = EsRig("mov eax, 7\nvmgexit\nmov eax, 8\nhlt").run()
    assert r.exitcode == ExitCode.VMGEXIT
    assert r.vmsa()["RIP"] == GUEST_CODE + _insn_len("mov eax, 7\nvmgexit")
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmsa()["RAX"] == 8


def test_vmgexit_outside_sev_es_is_vmmcall():
    from svmharness import SvmRig
    r = SvmRig("vmgexit\nhlt", intercepts=[ExitCode.VMMCALL]).run()
    assert r.exitcode == ExitCode.VMMCALL
    r = SvmRig("vmgexit\nhlt", idt=True).run()
    assert r.recorded() == 6                                  # not intercepted: #UD


# ---------------------------------------------------------------- GHCB MSR, SEV_STATUS
def test_ghcb_msr_is_saved_to_and_loaded_from_the_vmcb():
    """15.35.7: the GHCB MSR (C001_0130h) "is saved/restored from the VMCB
    offset 0A0h"; host-mode accesses #GP."""
    r = EsRig(f"mov ecx, 0xC0010130\nrdmsr\nmov [{SHARED:#x}], eax\n"
              f"mov eax, {SHARED:#x}\nxor edx, edx\nwrmsr\nvmgexit\nhlt", GHCB_GPA=0x1234)
    r.run()
    assert r.exitcode == ExitCode.VMGEXIT and r.vmcb["GHCB_GPA"] == SHARED
    assert r.m.bus.read(SHARED, 4) == 0x1234                  # shared page: plaintext
    from cpuharness import run_code
    res = run_code(asm("mov ecx, 0xC0010130\nrdmsr"))
    assert res.exception[:2] == (13, 0)


def test_sev_status_reports_sev_and_es():
    r = EsRig(f"mov ecx, 0xC0010131\nrdmsr\nmov [{SHARED:#x}], eax\nhlt").run()
    assert r.m.bus.read(SHARED, 4) == 0b11                    # SEV, SEV-ES (15.34.10)


# ---------------------------------------------------------------- integrity, host state
def test_tampered_vmsa_fails_vmrun():
    """15.35.8: "if the integrity checksum fails to match, a
    #VMEXIT(VMEXIT_INVALID) is generated": any change to the ciphertext, or
    plaintext written by the hypervisor, or a VMSA never sealed."""
    r = EsRig("hlt").run()
    assert r.exitcode == ExitCode.HLT
    byte = r.m.bus.read(VMSA + 0x178, 1)
    r.m.bus.write(VMSA + 0x178, 1, byte ^ 1)
    r.run(at_vmrun=True)
    assert r.exitcode == ExitCode.INVALID
    assert r.cpu.svm.invalid[-1].rule == "SEV_ES_VMSA_INTEGRITY"
    r = EsRig("hlt")
    r.write_vmsa(r.initial_vmsa(), seal=False)
    r.m.mem_engine.unseal_vmsa(VMSA)
    r.run()
    assert r.cpu.svm.invalid[-1].rule == "SEV_ES_VMSA_INTEGRITY"


def test_vmsa_with_another_key_fails_vmrun():
    r = EsRig("hlt")
    r.m.mem_engine.load_key(2, bytes(16))
    r.vmcb["GUEST_ASID"] = 2
    r.run()
    assert r.cpu.svm.invalid[-1].rule == "SEV_ES_VMSA_INTEGRITY"


def test_host_gprs_come_from_the_host_save_area():
    """15.35.8-9: VMRUN saves only the legacy host state; #VMEXIT loads the
    host GPRs from the host save area in the expanded format and resets the
    FPU, so no guest register is visible."""
    r = EsRig("mov rbx, 0x5151\nmov r12, 0x6262\nmov rcx, 0x7373\nhlt")
    r.m.bus.write(0x301000 + 0x400 + 0x318, 8, 0xB0B0)        # host RBX, written by the hypervisor
    r.cpu.regs[12] = 0x1212                                    # not saved by VMRUN
    r.cpu.xmm = [7] * 16
    r.run()
    assert r.exitcode == ExitCode.HLT
    assert r.cpu.regs[3] == 0xB0B0 and r.cpu.regs[12] == 0 and r.cpu.regs[1] == 0
    assert r.cpu.xmm == [0] * 16 and r.cpu.mxcsr == 0x1F80


def test_cr_write_trap_is_automatic_and_advances_rip():
    """15.35.10: CR write traps "cause an AE after a control register has been
    modified ... the new value of the control register is saved in EXITINFO1"."""
    src = "mov rax, cr4\nbts rax, 9\nmov cr4, rax\nhlt"
    r = EsRig(src)
    r.vmcb["INTERCEPT_MISC2"] |= 1 << (16 + 4)
    r.run()
    assert r.exitcode == ExitCode.CR4_WRITE_TRAP and r.vmcb["EXITINFO1"] >> 9 & 1
    assert r.vmsa()["RIP"] == GUEST_CODE + _insn_len("mov rax, cr4\nbts rax, 9\nmov cr4, rax")


def test_efer_svme_writes_are_ignored():
    """15.35.10: "writes by SEV-ES guests to EFER.SVME are always ignored"."""
    r = EsRig(f"mov ecx, 0xC0000080\nrdmsr\nbtr eax, 12\nwrmsr\nrdmsr\nmov [{SHARED:#x}], eax\nhlt").run()
    assert r.m.bus.read(SHARED, 4) >> 12 & 1


# ---------------------------------------------------------------- VMRUN rules
@pytest.mark.parametrize("fields,rule", [
    ({"SEV_ENABLE": 0}, "SEV_ES_SEV"),
    ({"LBR_VIRTUALIZATION_ENABLE": 0}, "SEV_ES_LBRV"),
    ({"VMSA_PA": VMSA + 8}, "SEV_ES_VMSA"),
    ({"VMSA_PA": 1 << 44}, "SEV_ES_VMSA"),
    ({"EVENTINJ": 0x80000000 | 4 << 8 | 0x80}, "SEV_ES_EVENTINJ"),
    ({"EVENTINJ": 0x80000000 | 3 << 8 | 3}, "SEV_ES_EVENTINJ"),
])
def test_sev_es_vmrun_rules(fields, rule):
    """15.35.2 (SEV and LBR virtualization required), 15.35.8 (VMSA pointer,
    no software interrupt or #BP/#OF injection)."""
    r = EsRig("hlt", **fields).run()
    assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == rule


def test_asid_ranges_for_sev_and_sev_es():
    """15.35.2: EDX is the minimum ASID of an SEV guest without SEV-ES; SEV-ES
    may use any SEV ASID."""
    r = EsRig("hlt", asid=1).run()
    assert r.exitcode == ExitCode.HLT
    r = EsRig("hlt", asid=1, es=False).run()
    assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == "SEV_ASID"


def test_injected_exception_reaches_the_es_guest():
    r = EsRig("hlt", EVENTINJ=0x80000000 | 3 << 8 | 6).run()
    assert r.recorded() == (6, 0, GUEST_CODE)


def test_efer_write_trap():
    r = EsRig("mov ecx, 0xC0000080\nrdmsr\nwrmsr\nhlt")
    r.vmcb["INTERCEPT_MISC2"] |= 1 << 15
    r.run()
    assert r.exitcode == ExitCode.EFER_WRITE_TRAP and r.vmcb["EXITINFO1"] == r.vmsa()["EFER"]


def test_vmsave_in_an_es_guest_is_always_intercepted():
    """APM 15.36.12: VMSAVE inside an SEV-ES guest results in #VMEXIT(VMSAVE),
    a non-automatic exit: #VC(83h) in the guest."""
    r = EsRig("mov rax, 0x300000\nvmsave\nhlt").run()
    assert r.recorded()[:2] == (29, 0x83)
