"""SVM rules checked one at a time with a tiny hypervisor (tests/svmharness.py):
the host executes VMRUN on a VMCB built from Python, the guest runs real
machine code, and the test reads the VMCB the #VMEXIT wrote (APM vol 2, ch. 15)."""
import pytest

from svmharness import SvmRig, GUEST_CODE, IDT, REC, VMCB, MSRPM, IOPM
from cpuharness import run_code, asm
from svmsim.svm.exits import ExitCode, encode_event, EVENT_INTR, EVENT_EXCEPTION
from svmsim.svm.intercepts import set_intercept
from svmsim.svm import exits

MOV = 1 << 63


def set_msrpm(rig, msr, read=True, write=True):
    from svmsim.svm.intercepts import msrpm_position
    byte, bit = msrpm_position(msr)
    old = rig.m.bus.read(MSRPM + byte, 1)
    rig.m.bus.write(MSRPM + byte, 1, old | (read << bit) | (write << (bit + 1)))


def set_iopm(rig, port):
    a = IOPM + (port >> 3)
    rig.m.bus.write(a, 1, rig.m.bus.read(a, 1) | 1 << (port & 7))


# ---------------------------------------------------------------- basic exits, NRIP (15.7.1)
def test_cpuid_exit_rip_and_nrip():
    """Instruction intercepts exit before the instruction: RIP = the instruction,
    NRIP = the next one (APM 15.7.1)."""
    r = SvmRig("nop\ncpuid\nhlt", intercepts=[ExitCode.CPUID]).run()
    assert r.exitcode == ExitCode.CPUID and not r.in_guest
    assert r.vmcb["RIP"] == GUEST_CODE + 1 and r.vmcb["NRIP"] == GUEST_CODE + 3
    assert r.vmcb["EXITINFO1"] == 0 and r.vmcb["EXITINTINFO"] == 0


def test_guest_cpuid_without_intercept_is_the_physical_cpu():
    """Seed S8: the physical CPU reports CPUID 1 ECX[31] = 0; only a hypervisor
    that intercepts CPUID can present bit 31."""
    r = SvmRig("mov eax, 1\ncpuid\nhlt").run()
    assert r.in_guest and r.cpu.halted
    assert not r.cpu.regs[1] >> 31 & 1


def test_host_state_restored_after_exit():
    """#VMEXIT reloads the host's RSP, RAX, CR3 and segments; DR7 = 400h (15.6)."""
    r = SvmRig("mov rsp, 0x1234\nmov cr3, rax\nhlt", intercepts=[ExitCode.HLT])
    r.vmcb["RAX"] = r.cpu.cr3
    r.cpu.dr[7] = 0x401
    host_rsp = r.cpu.regs[4]
    r.run()
    assert r.exitcode == ExitCode.HLT
    assert r.cpu.regs[4] == host_rsp and r.cpu.regs[0] == VMCB
    assert r.cpu.dr[7] == 0x400 and r.cpu.cpl == 0 and not r.cpu.gif
    assert r.vmcb["RSP"] == 0x1234


# ---------------------------------------------------------------- MSR (15.11)
@pytest.mark.parametrize("msr", [0x10, 0xC0000081, 0xC0010114])
@pytest.mark.parametrize("op,info1", [("rdmsr", 0), ("wrmsr", 1)])
def test_msrpm_ranges(msr, op, info1):
    r = SvmRig(f"mov ecx, {msr}\nxor eax, eax\nxor edx, edx\n{op}\nhlt", intercepts=[ExitCode.MSR])
    set_msrpm(r, msr, read=op == "rdmsr", write=op == "wrmsr")
    r.run()
    assert r.exitcode == ExitCode.MSR and r.vmcb["EXITINFO1"] == info1


def test_msr_outside_the_ranges_always_exits():
    r = SvmRig("mov ecx, 0x40000000\nrdmsr\nhlt", intercepts=[ExitCode.MSR]).run()
    assert r.exitcode == ExitCode.MSR


def test_msr_not_in_map_reaches_the_msr():
    r = SvmRig("mov ecx, 0xC0000081\nmov eax, 0x1234\nxor edx, edx\nwrmsr\nhlt",
               intercepts=[ExitCode.MSR]).run()
    assert r.in_guest and r.cpu.msr[0xC0000081] == 0x1234


def test_rdmsr_at_cpl3_faults_before_the_intercept():
    """APM 15.7.1: simple exceptions such as the CPL check come before the
    instruction intercept; the #GP is then intercepted itself."""
    r = SvmRig("mov ecx, 0x10\nrdmsr\nhlt", intercepts=[ExitCode.MSR, ExitCode.EXCP_GP])
    r.vmcb.set_segment("CS", 0x33, 0xAFB, 0xFFFFFFFF, 0)     # 64-bit code, DPL 3
    r.vmcb.set_segment("SS", 0x2B, 0xCF3, 0xFFFFFFFF, 0)
    r.vmcb["CPL"] = 3
    from cpuharness import PML4, PDPT, PD
    for table in (PML4, PDPT, PD + 8 * 2):              # user access to the guest's 2 MiB page
        r.m.bus.write(table, 8, r.m.bus.read(table, 8) | 4)
    set_msrpm(r, 0x10)
    r.run()
    assert r.exitcode == ExitCode.EXCP_GP and r.vmcb["EXITINFO1"] == 0
    assert r.vmcb["RIP"] == GUEST_CODE + 5


# ---------------------------------------------------------------- IOIO (15.10)
@pytest.mark.parametrize("code,port,expect", [
    ("mov dx, 0x3f8\nout dx, eax", 0x3F8, 0x3F8 << 16 | 1 << 6 | 1 << 9),
    ("in al, 0x80", 0x80, 0x80 << 16 | 1 << 4 | 1 << 9 | 1),
    ("mov dx, 0x3f8\nrep insw", 0x3F8, 0x3F8 << 16 | 1 << 5 | 1 << 9 | 1 | 4 | 8),
    ("mov dx, 0x3f8\nfs outsb", 0x3F8, 0x3F8 << 16 | 1 << 4 | 1 << 9 | 4 | 4 << 10),
    ("mov dx, 0x3f8\naddr32 outsd", 0x3F8, 0x3F8 << 16 | 1 << 6 | 1 << 8 | 4 | 3 << 10),
])
def test_ioio_exitinfo1(code, port, expect):
    """EXITINFO1 figure 15-2: TYPE, STR, REP, size, address size, segment,
    port; EXITINFO2 = the next RIP; RCX is untouched by an exiting REP."""
    r = SvmRig(f"mov ecx, 5\n{code}\nhlt", intercepts=[ExitCode.IOIO])
    set_iopm(r, port)
    r.run()
    assert r.exitcode == ExitCode.IOIO
    assert r.vmcb["EXITINFO1"] == expect, hex(r.vmcb["EXITINFO1"])
    assert r.vmcb["EXITINFO2"] == r.vmcb["NRIP"] > r.vmcb["RIP"]
    assert r.cpu.regs[1] == 5 or "rep" not in code


def test_ioio_access_straddling_into_an_intercepted_port():
    """APM 15.10.1: a multi-byte access checks the bit of every port it touches."""
    r = SvmRig("mov dx, 0x3ff\nin ax, dx\nhlt", intercepts=[ExitCode.IOIO])
    set_iopm(r, 0x400)
    r.run()
    assert r.exitcode == ExitCode.IOIO and r.vmcb["EXITINFO1"] >> 16 == 0x3FF


def test_ioio_port_ffff_uses_the_third_page():
    r = SvmRig("mov dx, 0xffff\nin eax, dx\nhlt", intercepts=[ExitCode.IOIO])
    set_iopm(r, 0x10001)
    r.run()
    assert r.exitcode == ExitCode.IOIO


def test_ioio_unmarked_port_runs():
    r = SvmRig("mov dx, 0x3ff\nin al, dx\nhlt", intercepts=[ExitCode.IOIO])
    set_iopm(r, 0x400)
    r.run()
    assert r.in_guest and r.cpu.halted


# ---------------------------------------------------------------- exceptions (15.12), EXITINTINFO (15.7.2)
def test_pf_intercept_reports_address_and_leaves_cr2():
    """#PF intercept: EXITINFO1 = error code, EXITINFO2 = the address; CR2 is
    not written; decode assists give the instruction bytes (15.33.2)."""
    r = SvmRig("mov rax, 0x100000000\nmov rbx, [rax]\nhlt", intercepts=[ExitCode.EXCP_PF], CR2=0x1234)
    r.run()
    assert r.exitcode == ExitCode.EXCP_PF
    assert r.vmcb["EXITINFO1"] == 0 and r.vmcb["EXITINFO2"] == 0x100000000
    assert r.vmcb["CR2"] == 0x1234
    insn = asm("mov rbx, [rax]")
    assert r.vmcb["INSN_LEN"] == 15
    assert r.vmcb["INSN_BYTES"].to_bytes(15, "little")[:len(insn)] == insn


def test_int3_intercept_rip_is_the_instruction():
    r = SvmRig("nop\nint3\nhlt", intercepts=[ExitCode.EXCP_BP]).run()
    assert r.exitcode == ExitCode.EXCP_BP
    assert r.vmcb["RIP"] == GUEST_CODE + 1 and r.vmcb["NRIP"] == GUEST_CODE + 2


def test_fault_during_injected_event_reports_exitintinfo():
    """An intercepted #NP raised while delivering an injected INTR exits with
    EXITINTINFO = the injected event (APM 15.7.2, 15.20)."""
    r = SvmRig("hlt", idt=True, intercepts=[ExitCode.EXCP_NP])
    r.m.bus.write(IDT + 16 * 0x41 + 5, 1, 0x0E)           # gate 0x41: P = 0
    inj = encode_event(0x41, EVENT_INTR)
    r.vmcb["EVENTINJ"] = inj
    r.run()
    assert r.exitcode == ExitCode.EXCP_NP
    assert r.vmcb["EXITINFO1"] == 0x41 * 8 + 2 + 1           # IDT bit + EXT
    assert r.vmcb["EXITINTINFO"] == inj
    assert not r.vmcb["EVENTINJ"] & exits.EVENT_V


def test_injected_exception_with_error_code_reaches_the_guest():
    r = SvmRig("hlt", idt=True, intercepts=[ExitCode.EXCP_GP])
    r.vmcb["EVENTINJ"] = encode_event(13, EVENT_EXCEPTION, 0x18)
    r.run()
    # Injected events are not subject to the exception intercept (15.20).
    assert r.in_guest and r.recorded() == 13
    rsp = r.m.bus.read(REC + 8, 8)
    assert r.m.bus.read(rsp, 8) == 0x18 and r.m.bus.read(rsp + 8, 8) == GUEST_CODE


def test_no_exit_no_exitintinfo():
    r = SvmRig("hlt", intercepts=[ExitCode.HLT], EXITINTINFO=0x80000041).run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["EXITINTINFO"] == 0


def test_shutdown_intercept():
    """A guest triple fault exits with SHUTDOWN when intercepted (APM 15.7)."""
    r = SvmRig("int3\nhlt", intercepts=[ExitCode.SHUTDOWN]).run()     # IDTR limit 0
    assert r.exitcode == ExitCode.SHUTDOWN and not r.in_guest


# ---------------------------------------------------------------- virtual interrupts (15.21)
def _virq(prio, tpr, ign=False, intercept_vintr=False, guest="sti\nnop\nhlt"):
    r = SvmRig(guest, idt=True, intercepts=[ExitCode.VINTR] if intercept_vintr else [])
    v = r.vmcb
    v["V_IRQ"], v["V_INTR_VECTOR"], v["V_INTR_PRIO"], v["V_TPR"] = 1, 0x50, prio, tpr
    v["V_IGN_TPR"], v["V_INTR_MASKING"] = int(ign), 1
    return r.run()


def test_virq_taken_when_priority_above_vtpr():
    r = _virq(prio=3, tpr=2)
    assert r.recorded() == 0x50


@pytest.mark.parametrize("prio,tpr", [(2, 2), (1, 5)])
def test_virq_blocked_by_vtpr(prio, tpr):
    r = _virq(prio, tpr)
    assert r.recorded() is None and r.in_guest


def test_v_ign_tpr_overrides():
    assert _virq(prio=0, tpr=15, ign=True).recorded() == 0x50


def test_vintr_intercept_exits_instead():
    r = _virq(prio=3, tpr=0, intercept_vintr=True)
    assert r.exitcode == ExitCode.VINTR and r.vmcb["V_IRQ"] == 1
    # The guest became interruptible after the instruction in the STI shadow.
    assert r.vmcb["RIP"] == GUEST_CODE + 2


def test_virq_cleared_when_taken_and_written_back():
    r = SvmRig("sti\nnop\nmov eax, 1\nhlt", idt=True)
    v = r.vmcb
    v["V_IRQ"], v["V_INTR_VECTOR"], v["V_IGN_TPR"], v["V_INTR_MASKING"] = 1, 0x51, 1, 1
    # The guest's handler halts; intercept HLT so the exit writes INT_CTL back.
    set_intercept(v, ExitCode.HLT)
    r.run()
    assert r.exitcode == ExitCode.HLT and r.m.bus.read(REC, 4) == 0x51
    assert v["V_IRQ"] == 0


def test_cr8_is_the_virtual_tpr_with_v_intr_masking():
    r = SvmRig("mov rax, cr8\nmov rbx, 9\nmov cr8, rbx\nhlt", intercepts=[ExitCode.HLT],
               V_TPR=5, V_INTR_MASKING=1).run()
    assert r.cpu.regs[0] == VMCB            # host RAX restored ...
    assert r.vmcb["RAX"] == 5               # ... the guest read V_TPR
    assert r.vmcb["V_TPR"] == 9


def test_interrupt_shadow_written_back():
    """INT_STATE.INTERRUPT_SHADOW reports the STI shadow at #VMEXIT (15.21.5)."""
    r = SvmRig("sti\ncpuid\nhlt", intercepts=[ExitCode.CPUID]).run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["INTERRUPT_SHADOW"] == 1


# ---------------------------------------------------------------- physical events in the guest
def test_intr_intercept_leaves_the_interrupt_pending():
    r = SvmRig("sti\nnop\nnop\nhlt", intercepts=[ExitCode.INTR], V_INTR_MASKING=1)
    r.cpu.rflags |= 1 << 9                  # host IF = 1 at VMRUN ...
    r.cpu.gif = False                       # ... under CLGI, as hypervisors run VMRUN
    r.cpu.lapic.accept(0x60)
    r.run()
    assert r.exitcode == ExitCode.INTR
    assert r.cpu.lapic.has_interrupt()      # not acknowledged: the host takes it


def test_nmi_intercept():
    r = SvmRig("nop\nnop\nhlt", intercepts=[ExitCode.NMI])
    r.cpu.gif = False                       # held in the host until VMRUN sets GIF
    r.cpu.signal_nmi()
    r.run()
    assert r.exitcode == ExitCode.NMI and r.cpu.nmi_pending     # held for the host (GIF = 0)


def test_init_intercept():
    r = SvmRig("nop\nhlt", intercepts=[ExitCode.INIT])
    r.cpu.gif = False
    r.cpu.signal_init()
    r.run()
    assert r.exitcode == ExitCode.INIT and r.cpu.init_pending


# ---------------------------------------------------------------- pause filter (15.14.4)
def test_pause_filter_count():
    r = SvmRig("pause\npause\npause\nhlt", intercepts=[ExitCode.PAUSE], PAUSE_FILTER_COUNT=3).run()
    assert r.exitcode == ExitCode.PAUSE and r.vmcb["RIP"] == GUEST_CODE + 4


def test_pause_filter_threshold_reloads_the_count():
    """PAUSEs further apart than the threshold (cycles; svmsim: virtual ns)
    reload the count, so a slow spin loop never exits."""
    gap = "mov ecx, 300\n1: loop 1b\n"
    r = SvmRig(f"pause\n{gap}pause\n{gap}pause\nhlt", intercepts=[ExitCode.PAUSE],
               PAUSE_FILTER_COUNT=2, PAUSE_FILTER_THRESHOLD=100).run(max_insns=100_000)
    assert r.in_guest and r.cpu.halted


def test_pause_without_filter_exits_every_time():
    r = SvmRig("pause\nhlt", intercepts=[ExitCode.PAUSE]).run()
    assert r.exitcode == ExitCode.PAUSE and r.vmcb["RIP"] == GUEST_CODE


# ---------------------------------------------------------------- clean bits (15.15.3), TLB (15.16)
def test_clean_intercepts_are_cached():
    """With clean bit 0 (I) set, a changed intercept vector may be ignored:
    svmsim uses the cached copy, as hardware may, and says so."""
    r = SvmRig("cpuid\nhlt", intercepts=[ExitCode.CPUID]).run()
    assert r.exitcode == ExitCode.CPUID
    set_intercept(r.vmcb, ExitCode.CPUID, False)
    r.vmcb["VMCB_CLEAN"] = 1
    r.run()
    assert r.exitcode == ExitCode.CPUID
    assert any("INTERCEPT_MISC1" in n and "VMCB_CLEAN bit 0" in n for n in r.m.notes)
    r.vmcb["VMCB_CLEAN"] = 0
    r.run()
    assert r.in_guest and r.cpu.halted                # re-read: no CPUID intercept


def test_clean_bits_ignored_for_another_vmcb():
    r = SvmRig("cpuid\nhlt", intercepts=[ExitCode.CPUID]).run()
    r.cpu.svm.cache_pa = 0x123000                     # as if another VMCB ran last
    set_intercept(r.vmcb, ExitCode.CPUID, False)
    r.vmcb["VMCB_CLEAN"] = 0xFFFFFFFF
    r.run()
    assert r.in_guest


@pytest.mark.parametrize("tlb_control,stale", [(0, True), (1, False), (3, False), (7, False)])
def test_tlb_control(tlb_control, stale):
    """ASID-tagged TLB: a guest translation survives VMRUN unless TLB_CONTROL
    flushes it (APM 15.16.1)."""
    from cpuharness import PD
    r = SvmRig("mov eax, [0x600000]\ncpuid\nhlt", intercepts=[ExitCode.CPUID])
    r.m.bus.write(0x600000, 4, 0x1111)
    r.m.bus.write(0x800000, 4, 0x2222)
    r.run()
    assert r.vmcb["RAX"] == 0x1111
    r.m.bus.write(PD + 8 * 3, 8, 0x800000 | 0x83)     # remap 6 MiB -> 8 MiB
    r.vmcb["RIP"], r.vmcb["TLB_CONTROL"] = GUEST_CODE, tlb_control
    r.run()
    assert r.vmcb["RAX"] == (0x1111 if stale else 0x2222)


# ---------------------------------------------------------------- SVM instructions (vol 3)
def test_vmmcall_without_intercept_is_ud():
    r = SvmRig("vmmcall\nhlt", intercepts=[ExitCode.EXCP_UD]).run()
    assert r.exitcode == ExitCode.EXCP_UD and r.vmcb["RIP"] == GUEST_CODE


@pytest.mark.parametrize("insn,code", [("vmload", ExitCode.VMLOAD), ("vmsave", ExitCode.VMSAVE),
                                       ("stgi", ExitCode.STGI), ("clgi", ExitCode.CLGI),
                                       ("vmrun", ExitCode.VMRUN), ("invlpga", ExitCode.INVLPGA)])
def test_svm_instructions_in_the_guest_are_intercepted(insn, code):
    r = SvmRig(f"xor eax, eax\n{insn}\nhlt", intercepts=[code]).run()
    assert r.exitcode == code and r.vmcb["RIP"] == GUEST_CODE + 2


def test_guest_svm_instruction_with_svme_clear_is_ud():
    """#UD (EFER.SVME = 0) comes before the intercept check (vol 3 VMLOAD).
    VMRUN needs the guest's EFER.SVME = 1 (15.5.1), so the guest clears it."""
    r = SvmRig("mov ecx, 0xC0000080\nrdmsr\nbtr eax, 12\nwrmsr\nxor eax, eax\nvmload\nhlt",
               intercepts=[ExitCode.VMLOAD, ExitCode.EXCP_UD]).run()
    assert r.exitcode == ExitCode.EXCP_UD
    assert r.vmcb["RIP"] == GUEST_CODE + len(asm("mov ecx, 0xC0000080\nrdmsr\nbtr eax, 12\nwrmsr\nxor eax, eax"))


def _svm_host(code):
    def setup(m, cpu):
        cpu.efer |= 1 << 12
        cpu.update_mode()
    return run_code(asm(code), setup=setup)


def test_vmsave_vmload_move_exactly_their_state():
    r = _svm_host("mov ecx, 0xC0000081\nmov eax, 0x11\nxor edx, edx\nwrmsr\n"
                  "mov ecx, 0xC0000102\nmov eax, 0x22\nwrmsr\n"
                  "mov rax, 0x300000\nvmsave\n"
                  "mov ecx, 0xC0000081\nxor eax, eax\nwrmsr\n"
                  "mov rax, 0x300000\nvmload\n")
    from svmsim.svm.vmcb import VmcbView
    v = VmcbView(r.machine.bus, 0x300000)
    assert v["STAR"] == 0x11 and v["KERNEL_GS_BASE"] == 0x22
    assert r.cpu.msr[0xC0000081] == 0x11                  # restored by VMLOAD
    assert v["CS.SEL"] == 0 and v["RIP"] == 0            # not VMSAVE state


@pytest.mark.parametrize("insn", ["vmrun", "vmload", "vmsave", "invlpga"])
def test_svm_instructions_need_svme(insn):
    r = run_code(asm(f"xor eax, eax\n{insn}"))
    assert r.exception[0] == 6


@pytest.mark.parametrize("insn", ["stgi", "clgi"])
def test_stgi_clgi_need_svme_only_without_skinit_or_svm_lock(insn):
    """APM vol 3 STGI/CLGI: #UD with EFER.SVME = 0 only when neither SVM-Lock
    nor SKINIT/DEV is supported; the epyc profile reports SKINIT."""
    assert run_code(asm(f"xor eax, eax\n{insn}")).exception is None
    from svmsim.cpu.exceptions import Shutdown
    from cpuharness import make_machine, CODE_ADDR
    m = make_machine("long64", cpu="epyc,-skinit")
    m.bus.write_bytes(CODE_ADDR, asm(insn))
    events = []
    m.listeners.append(events.append)
    m.cpus[0].rip = CODE_ADDR
    with pytest.raises(Shutdown):
        m.engine.run(m.cpus[0], 5)
    assert [e["vector"] for e in events if e["type"] == "exception"][0] == 6


def test_vmrun_rax_must_be_aligned():
    r = _svm_host("mov rax, 0x300010\nvmrun")
    assert r.exception[:2] == (13, 0)


# ---------------------------------------------------------------- traps, TSC, LBR
def test_write_traps_are_ignored_outside_sev_es():
    """APM 15.35.10: "CR write traps are only supported for SEV-ES guests" (the
    SEV-ES tests cover them): for other guests the bits change nothing."""
    r = SvmRig("mov rax, cr0\nbts rax, 30\nmov cr0, rax\nmov ecx, 0xC0000080\nrdmsr\nwrmsr\nhlt",
               intercepts=[ExitCode.HLT])
    r.vmcb["INTERCEPT_MISC2"] |= 1 << 16 | 1 << 15
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["CR0"] >> 30 & 1


def test_tsc_offset_and_ratio():
    """Guest TSC = host TSC * TSC_RATIO + TSC_OFFSET (APM 15.30.5)."""
    r = SvmRig("rdtsc\nshl rdx, 32\nor rax, rdx\ncpuid\nhlt", intercepts=[ExitCode.CPUID],
               TSC_OFFSET=1 << 40)
    r.cpu.msr[0xC0000104] = 2 << 32
    host = r.m.tsc(r.cpu)
    r.run()
    guest = r.vmcb["RAX"]
    assert 0 <= guest - (1 << 40) - 2 * host < 1_000_000


def test_tsc_ratio_reserved_bits():
    def setup(m, cpu):
        cpu.regs[2] = 1 << 10                       # bit 42
    r = run_code(asm("mov ecx, 0xC0000104\nxor eax, eax\nwrmsr"), setup=setup)
    assert r.exception[:2] == (13, 0)


def test_lbr_virtualization_swaps_debugctl():
    r = SvmRig("mov ecx, 0x1D9\nrdmsr\nmov ebx, eax\ncpuid\nhlt", intercepts=[ExitCode.CPUID],
               LBR_VIRTUALIZATION_ENABLE=1, DBGCTL=0x3C)
    r.cpu.msr[0x1D9] = 0
    r.run()
    assert r.exitcode == ExitCode.CPUID
    assert r.cpu.regs[3] == 0x3C and r.vmcb["DBGCTL"] == 0x3C   # the guest read its own
    assert r.cpu.msr[0x1D9] == 0                      # host value back


# ---------------------------------------------------------------- vGIF (15.33.2), vNMI (15.21.10)
def test_vgif_guest_clgi_holds_virtual_interrupts():
    """With V_GIF_ENABLE the guest's CLGI/STGI (not intercepted) move V_GIF,
    and V_GIF = 0 holds a pending virtual interrupt."""
    r = SvmRig("clgi\nsti\nnop\nnop\ncpuid\nstgi\nnop\nhlt", idt=True,
               intercepts=[ExitCode.CPUID], V_GIF_ENABLE=1, V_GIF=1, V_IRQ=1,
               V_INTR_VECTOR=0x52, V_IGN_TPR=1, V_INTR_MASKING=1)
    r.run()
    assert r.exitcode == ExitCode.CPUID and r.recorded() is None
    assert r.vmcb["V_GIF"] == 0 and r.vmcb["V_IRQ"] == 1 and r.cpu.gif is False
    r.vmcb["RIP"] = r.vmcb["NRIP"]
    r.run()
    assert r.recorded() == 0x52


def test_vnmi_delivered_blocked_and_unblocked_by_iret():
    r = SvmRig("nop\nhlt", idt=True, intercepts=[ExitCode.NMI], V_NMI_ENABLE=1, V_NMI_PENDING=1)
    set_intercept(r.vmcb, ExitCode.HLT)
    r.run()
    # Delivered through the guest IDT (vector 2); its handler halted.
    assert r.exitcode == ExitCode.HLT and r.m.bus.read(REC, 4) == 2
    assert r.vmcb["V_NMI_PENDING"] == 0 and r.vmcb["V_NMI_BLOCKING"] == 1
    assert not r.cpu.nmi_blocked                       # the physical blocking is untouched


def test_vnmi_blocked_while_v_nmi_blocking():
    r = SvmRig("nop\ncpuid\nhlt", idt=True, intercepts=[ExitCode.CPUID, ExitCode.NMI],
               V_NMI_ENABLE=1, V_NMI_PENDING=1, V_NMI_BLOCKING=1).run()
    assert r.exitcode == ExitCode.CPUID and r.recorded() is None
    assert r.vmcb["V_NMI_PENDING"] == 1


def test_task_switch_intercept_far_jmp_to_tss():
    """A 32-bit guest's far JMP to a TSS exits with TASK_SWITCH: EXITINFO1 =
    the TSS selector, EXITINFO2 bit 38 = JMP (APM 15.14)."""
    from cpuharness import GDT
    code = asm("jmp fword ptr [0x410000]", bits=32)
    r = SvmRig(code, intercepts=[ExitCode.TASK_SWITCH])
    r.m.bus.write(GDT + 8 * 7, 8, 0x0000_8900_0000_0067 | (0x420000 & 0xFFFFFF) << 16)  # TSS, base 0x420000
    r.m.bus.write(0x410000, 4, 0)
    r.m.bus.write(0x410004, 2, 0x38)
    v = r.vmcb
    v["GDTR.LIMIT"] = 8 * 8 - 1
    v["EFER"] = 1 << 12
    v["CR0"], v["CR4"] = 0x11, 0
    v.set_segment("CS", 0x18, 0xC9B, 0xFFFFFFFF, 0)
    r.run()
    assert r.exitcode == ExitCode.TASK_SWITCH
    assert r.vmcb["EXITINFO1"] == 0x38 and r.vmcb["EXITINFO2"] == 1 << 38


def test_single_stepped_vmrun_traps_in_the_host_after_the_exit():
    """Host RFLAGS.TF = 1 at VMRUN: the guest runs at full speed (its own TF is
    the VMCB's) and the single-step #DB of VMRUN reaches the host after the
    #VMEXIT, at the instruction that follows VMRUN."""
    from svmharness import HOST_STUB
    from cpuharness import CODE_ADDR
    r = SvmRig("nop\nnop\ncpuid\nhlt", intercepts=[ExitCode.CPUID])
    seen = []
    r.m.listeners.append(lambda e: seen.append(e) if e["type"] == "deliver" else None)
    r.cpu.rflags |= 1 << 8
    from svmsim.cpu.exceptions import Shutdown
    with pytest.raises(Shutdown):                        # the host stub has no IDT
        r.run(max_insns=50, at_vmrun=True)
    assert r.exitcode == ExitCode.CPUID
    vmrun_next = CODE_ADDR + len(HOST_STUB) - 1          # the HLT after VMRUN
    assert (seen[0]["vector"], seen[0]["rip"]) == (1, vmrun_next)
    assert r.cpu.dr[6] & 0x4000


def test_smi_intercept():
    r = SvmRig("nop\nnop\nhlt", intercepts=[ExitCode.SMI])
    r.cpu.gif = False
    r.cpu.rip = 0                       # (signal while the guest runs: raise it at VMRUN time)
    r.m.listeners.append(lambda e: r.cpu.signal_smi() if e["type"] == "vmrun" else None)
    r.run()
    assert r.exitcode == ExitCode.SMI and r.vmcb["RIP"] == GUEST_CODE


def test_injected_event_with_ev_pushes_its_error_code():
    """EVENTINJ.EV = 1 pushes the error code even for a vector that has none
    (APM 15.20: EV says whether to push it)."""
    r = SvmRig("hlt", idt=True)
    r.vmcb["EVENTINJ"] = encode_event(6, EVENT_EXCEPTION, 0x77)
    r.run()
    rsp = r.m.bus.read(REC + 8, 8)
    assert r.recorded() == 6 and r.m.bus.read(rsp, 8) == 0x77


@pytest.mark.parametrize("event", [encode_event(0x80, exits.EVENT_SWINT),
                                   encode_event(3, EVENT_EXCEPTION)])
def test_injected_software_event_returns_to_nrip(event):
    """With NRIP save, an injected software interrupt or #BP/#OF pushes the
    VMCB's NRIP (the instruction after the emulated INT n), not its RIP."""
    r = SvmRig("hlt\nnop\nnop\nhlt", idt=True, EVENTINJ=event, NRIP=GUEST_CODE + 2).run()
    rsp = r.m.bus.read(REC + 8, 8)
    assert r.recorded() == event & 0xFF and r.m.bus.read(rsp, 8) == GUEST_CODE + 2


def test_injected_interrupt_returns_to_rip():
    r = SvmRig("hlt\nnop\nnop\nhlt", idt=True, EVENTINJ=encode_event(0x41, EVENT_INTR),
               NRIP=GUEST_CODE + 2).run()
    rsp = r.m.bus.read(REC + 8, 8)
    assert r.m.bus.read(rsp, 8) == GUEST_CODE


def test_host_rf_is_clear_after_the_exit():
    r = SvmRig("cpuid\nhlt", intercepts=[ExitCode.CPUID])
    r.cpu.rflags |= 1 << 16
    r.run(at_vmrun=True)
    assert r.exitcode == ExitCode.CPUID and not r.cpu.get_rflags() & (1 << 16)
