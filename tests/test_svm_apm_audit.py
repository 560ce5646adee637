"""APM vol 2, chapter 15 read section by section against svmsim (issue 12,
item 4; the record is docs/DESIGN.md, "APM chapter 15 audit").  Each test
here checks one rule the audit found svmsim missing, by running machine code
on the VMRUN harness (tests/svmharness.py); the docstrings quote the APM."""
import struct

import pytest

from svmharness import SvmRig, NestedTables, GUEST_CODE, IDT, REC, VMCB, HSAVE
from cpuharness import asm, run_code, CODE_ADDR, SEL_CODE32
from svmsim.cpu.exceptions import Shutdown
from svmsim.cpu.segments import CS
from svmsim.svm.exits import ExitCode, encode_event, EVENT_INTR, EVENT_NMI
from svmsim.svm.vmcb import field

CS_32 = 0x0C9B          # VMCB attribute format: G, D, P, S, code, readable, accessed


def guest32(limit, **kw):
    """A guest in compatibility mode (EFER.LMA, CS.L = 0) whose CS has ``limit``."""
    r = SvmRig("hlt", **kw)
    r.vmcb.set_segment("CS", SEL_CODE32, CS_32, limit, 0)
    return r


# ---------------------------------------------------------------- 15.5.1 / 15.6: rIP beyond the CS limit
def test_vmrun_guest_rip_beyond_cs_limit_is_a_gp_in_the_guest():
    """15.5.1: "It is possible for the VMRUN instruction to load a guest rIP
    that is outside the limit of the guest code segment ... If this occurs, a
    #GP fault is delivered inside the guest; the rIP falling outside the limit
    of the guest code segment is not considered illegal guest state"."""
    r = guest32(0xFFF, intercepts=[ExitCode.EXCP_GP]).run()
    assert r.exitcode == ExitCode.EXCP_GP
    assert r.vmcb["EXITINFO1"] == 0 and r.vmcb["RIP"] == GUEST_CODE


def test_the_limit_gp_is_delivered_through_the_guest_idt():
    """Not illegal state: without the #GP intercept the guest takes #GP(0)."""
    r = guest32(0xFFF, idt=True).run()
    assert r.in_guest and r.recorded() == 13


def test_a_guest_rip_within_the_cs_limit_runs():
    r = guest32(GUEST_CODE, intercepts=[ExitCode.EXCP_GP, ExitCode.HLT]).run()
    assert r.exitcode == ExitCode.HLT


def test_an_injected_event_is_delivered_before_the_limit_check():
    """15.20: the injected event "is delivered ... before the first guest
    instruction"; the out-of-limit rIP is what the handler's frame holds, so
    no #GP comes before it."""
    r = guest32(0xFFF, idt=True, EVENTINJ=encode_event(0x40, EVENT_INTR))
    r.run()
    assert r.in_guest and r.recorded() == 0x40


def test_vmexit_host_rip_beyond_cs_limit_is_a_gp_in_the_host():
    """15.6: "If the host's rIP reloaded by #VMEXIT is outside the limit of
    the host's code segment or non-canonical (in the case of long mode), a
    #GP fault is delivered inside the host".  The host runs VMRUN in
    compatibility mode from a CS whose limit ends at the VMRUN."""
    r = SvmRig("hlt", idt=True, intercepts=[ExitCode.HLT])
    cpu, m = r.cpu, r.m
    stub = asm(f"mov eax, {VMCB}\nvmrun\nhlt", bits=32)
    m.bus.write_bytes(CODE_ADDR, stub)
    from svmsim.cpu.segments import Segment
    cpu.segs[CS] = Segment(SEL_CODE32, 0, CODE_ADDR + len(stub) - 2, CS_32)
    cpu.idtr_base, cpu.idtr_limit = IDT, 16 * 256 - 1       # the host shares the guest's IDT
    cpu.update_mode()
    m.bus.write(REC, 4, 0xFFFFFFFF)
    delivered = []
    m.listeners.append(lambda ev: ev.get("type") == "deliver" and delivered.append(
        (ev["vector"], ev["rip"], cpu.svm_guest)))
    cpu.rip = CODE_ADDR
    cpu.halted = False
    while not cpu.halted:
        assert m.engine.run(cpu, 10_000)
    assert r.exitcode == ExitCode.HLT
    assert delivered[0] == (13, CODE_ADDR + len(stub) - 1, False)
    assert r.recorded() == 13


# ---------------------------------------------------------------- the CS limit in straight-line code
def _limited(limit, base=0):
    def setup(m, cpu):
        from svmsim.cpu.segments import Segment
        s = cpu.segs[CS]
        cpu.segs[CS] = Segment(s.sel, base, limit, s.attr)
        cpu.update_mode()
    return setup


MOV2 = "mov ebx, 1\nmov ecx, 2"                   # 5 + 5 bytes, then run_code's HLT


@pytest.mark.parametrize("mode", ["prot32", "compat32"])
@pytest.mark.parametrize("last,fault_at", [(7, 5), (9, 10), (10, None)])
def test_straight_line_code_faults_at_the_instruction_that_runs_past_the_cs_limit(mode, last, fault_at):
    """Outside 64-bit mode each instruction fetch is checked against the CS
    limit (the rule 15.5.1 applies to a guest rIP loaded by VMRUN: "a #GP
    fault is delivered"); svmsim checked it only at branches, VMRUN and
    #VMEXIT.  Limit = CODE_ADDR + ``last``: the second MOV (bytes 5-9)
    straddles +7, the HLT (byte 10) lies beyond +9; #GP(0) at the
    instruction, the ones before it retired, nothing of it done."""
    r = run_code(asm(MOV2, bits=32), mode=mode, setup=_limited(CODE_ADDR + last))
    if fault_at is None:
        assert r.exception is None and r.cpu.halted
    else:
        assert r.exception[:3] == (13, 0, CODE_ADDR + fault_at)
        assert r.regs[3] == 1 and r.regs[1] == (2 if fault_at == 10 else 0)


def test_real_mode_code_that_runs_past_the_cs_limit_faults():
    """Real mode: CS limit FFFFh; MOV CX at FFFEh whose last byte would be at
    10000h is #GP(0) (the IDT is empty here, so the harness records the
    fault)."""
    r = run_code(asm("mov bx, 1\nmov cx, 2", bits=16), mode="real", addr=0xFFFB)
    assert r.exception[:3] == (13, 0, 0xFFFE) and r.regs[3] == 1 and r.regs[1] == 0


def test_real_mode_code_that_runs_on_past_ffffh_faults():
    """An instruction that ends exactly at FFFFh runs; the next fetch, at IP
    10000h, is beyond the limit: #GP(0) (svmsim's reading: no 8086-style IP
    wrap for sequential execution)."""
    r = run_code(asm("mov bx, 1\nmov cx, 2", bits=16), mode="real", addr=0xFFFA)
    assert r.exception[:3] == (13, 0, 0x10000) and r.regs[1] == 2


def test_a_compatibility_mode_guest_running_past_its_cs_limit_takes_gp():
    """In an SVM guest the same check applies: the guest's code runs into the
    limit its VMCB CS gives, and the #GP(0) intercept reports the
    instruction's rIP (the MOVs before it retired)."""
    code = asm(MOV2 + "\nhlt", bits=32)
    r = SvmRig(code, intercepts=[ExitCode.EXCP_GP, ExitCode.HLT])
    r.vmcb.set_segment("CS", SEL_CODE32, CS_32, GUEST_CODE + 8, 0)
    r.run()
    assert r.exitcode == ExitCode.EXCP_GP and r.vmcb["RIP"] == GUEST_CODE + 5
    assert r.vmcb["EXITINFO1"] == 0


def test_64_bit_code_ignores_the_cs_limit():
    """64-bit mode does no segment limit checks: the same code with a CS limit
    that ends inside it runs to its HLT."""
    r = run_code(asm(MOV2), mode="long64", setup=_limited(CODE_ADDR + 3))
    assert r.exception is None and r.cpu.halted and r.regs[1] == 2


LOW = 0x8000
SEL_SMALL = 8 * len(__import__("cpuharness").GDT_ENTRIES)


def test_a_block_translated_under_one_cs_limit_is_not_reused_under_a_smaller_one():
    """The same bytes at the same linear address run twice: first with a flat
    CS (the loop turns hot and is compiled, the tail block is cached), then,
    after a far JMP to a selector with the same base whose limit ends inside
    the tail, the fall-through into the tail is #GP(0).  Blocks are keyed by
    the CS limit, so the flat-limit translation is not reused."""
    from cpuharness import GDT, GDT_ENTRIES, SEL_CODE32
    code = asm(f"""
        mov ecx, 300
    1:  dec ecx
        jnz 1b
        inc esi
        cmp esi, 2
        je 2f
        ljmp {SEL_SMALL}, {LOW}
    2:  mov ebx, 7
        hlt
    """, bits=32)
    tail = code.index(bytes([0x46]))                    # inc esi
    limit = LOW + tail - 1                              # the loop fits, the tail does not
    desc = (limit & 0xFFFF) | ((limit >> 16) & 0xF) << 48 | 0x9A << 40 | 1 << 54

    def setup(m, cpu):
        m.bus.write(GDT + SEL_SMALL, 8, desc)
        cpu.gdtr_limit = 8 * (len(GDT_ENTRIES) + 1) - 1
    r = run_code(code, mode="prot32", setup=setup, addr=LOW)
    assert r.exception[:3] == (13, 0, LOW + tail)
    assert r.regs[6] == 1 and r.cpu.segs[CS].sel == SEL_SMALL and r.regs[1] == 0
    assert r.cpu.segs[CS].sel != SEL_CODE32


def test_rip_beyond_the_cs_limit_on_an_unmapped_page_is_gp_not_pf():
    """Segmentation comes before paging: code in compatibility mode that runs
    to the end of a CS whose limit ends at a page boundary, where the next
    page is not mapped, takes #GP(0), not #PF."""
    from cpuharness import PD
    page_end = 0x400000                                 # a 2 MiB page boundary
    code = asm("mov ebx, 1", bits=32)
    at = page_end - len(code)

    def setup(m, cpu):
        m.bus.write(PD + 8 * (page_end >> 21), 8, 0)     # not present
        _limited(page_end - 1)(m, cpu)
    r = run_code(code, mode="compat32", setup=setup, addr=at)
    assert r.exception[:3] == (13, 0, page_end) and r.regs[3] == 1


# ---------------------------------------------------------------- 15.6: host state checks at #VMEXIT


@pytest.mark.parametrize("name,bit", [("CR4", 31), ("CR0", 29), ("EFER", 2)])
def test_vmexit_to_an_illegal_host_state_shuts_down(name, bit):
    """15.6: #VMEXIT "Checks the reloaded host state for consistency; any
    error causes the processor to shutdown" -- svmsim reloads the host from
    its save area, so a host state changed there to a reserved CR4 bit, CR0.NW
    without CD, or a reserved EFER bit is caught at the exit."""
    r = SvmRig(f"mov rax, {HSAVE + field(name).offset}\nbts qword ptr [rax], {bit}\nhlt",
               intercepts=[ExitCode.HLT])
    with pytest.raises(Shutdown, match="15.6"):
        r.run()


def test_vmexit_to_a_legal_changed_host_state_resumes():
    """Changing the save area to another legal state is not a shutdown (the
    host resumes with it: svmsim's reading of 15.5.1, see DESIGN.md)."""
    r = SvmRig(f"mov rax, {HSAVE + field('CR4').offset}\nbts qword ptr [rax], 9\nhlt",
               intercepts=[ExitCode.HLT]).run()
    assert r.exitcode == ExitCode.HLT and r.cpu.cr4 >> 9 & 1


HOST_PDPT, HOST_PD = 0x60000, 0x61000


def test_vmexit_to_a_pae_host_with_an_illegal_pdpe_shuts_down():
    """15.6: "If the host is in PAE mode, the processor reloads the host's
    PDPEs from the page table indicated by the host's CR3. If the PDPEs
    contain illegal state, the processor causes a shutdown."  The host runs
    VMRUN in 32-bit PAE paging; the guest sets a reserved bit (2) in PDPE 3."""
    for poke, ok in ((False, True), (True, False)):
        r = SvmRig(f"mov rax, {HOST_PDPT + 24}\n" + ("bts qword ptr [rax], 2\n" if poke else "")
                   + "hlt", intercepts=[ExitCode.HLT])
        cpu, m = r.cpu, r.m
        for g in range(4):
            m.bus.write(HOST_PDPT + 8 * g, 8, (HOST_PD + 0x1000 * g) | 1)
            for i in range(512):
                m.bus.write(HOST_PD + 0x1000 * g + 8 * i, 8, ((g * 512 + i) << 21) | 0x83)
        stub = asm(f"mov eax, {VMCB}\nvmrun\nhlt", bits=32)
        m.bus.write_bytes(CODE_ADDR, stub)
        from svmsim.cpu.segments import Segment
        cpu.segs[CS] = Segment(SEL_CODE32, 0, 0xFFFFFFFF, CS_32)
        cpu.efer = 1 << 12 | 1 << 11
        cpu.cr3 = HOST_PDPT
        cpu.tlb.flush_all("test")
        cpu.update_mode()
        cpu.rip, cpu.halted = CODE_ADDR, False
        if ok:
            while not cpu.halted:
                assert m.engine.run(cpu, 10_000)
            assert r.exitcode == ExitCode.HLT and cpu.rip == CODE_ADDR + len(stub)
        else:
            with pytest.raises(Shutdown, match="PDPE3"):
                while not cpu.halted:
                    assert m.engine.run(cpu, 10_000)


# ---------------------------------------------------------------- 15.20: injected NMI


def test_an_injected_nmi_ignores_the_vector_field():
    """15.20: "If TYPE is 2 (NMI), the VECTOR field is ignored" -- the guest
    takes vector 2 whatever EVENTINJ's vector says."""
    r = SvmRig("hlt", idt=True, EVENTINJ=encode_event(0x55, EVENT_NMI)).run()
    assert r.in_guest and r.recorded() == 2


def test_an_injected_nmi_does_not_block_further_nmis():
    """15.20: "An injected NMI does not block delivery of further NMIs": a
    physical NMI arriving while the guest runs its NMI handler is taken at
    once (here intercepted); after a real NMI it would wait for IRET."""
    r = SvmRig("hlt", idt=True, intercepts=[ExitCode.NMI], EVENTINJ=encode_event(2, EVENT_NMI)).run()
    assert r.in_guest and r.recorded() == 2 and r.cpu.halted       # in the handler
    r.cpu.signal_nmi()
    r.m.engine.run(r.cpu, 1000)
    assert not r.in_guest and r.exitcode == ExitCode.NMI


# ---------------------------------------------------------------- 15.19 / 15.12.15: paged real mode
def test_paged_real_mode_guest_page_fault_has_the_protected_mode_error_code():
    """15.19: "the VMRUN instruction may legally load a guest CR0 value with
    PE = 0 but PG = 1 ... This processor mode behaves in every way like real
    mode, with the exception that paging is applied"; 15.12.15: "Even when the
    guest is running in paged real mode, the processor will deliver the
    (protected-mode) page-fault error code in EXITINFO1".  The real-mode guest
    writes linear 104h, whose (32-bit paging) page is not present."""
    code = asm("mov word ptr [0x104], ax\nhlt", bits=16)
    r = SvmRig(code, intercepts=[ExitCode.EXCP_PF, ExitCode.HLT])
    v, bus = r.vmcb, r.m.bus
    pd, pt = 0x60000, 0x61000
    bus.write(pd, 4, pt | 3)                                   # 32-bit paging: PDE 0 -> PT
    for i in range(1, 1024):
        bus.write(pt + 4 * i, 4, (i << 12) | 3)                # page 0 not present
    v["CR0"], v["CR3"], v["CR4"], v["EFER"] = 1 << 31 | 0x10, pd, 0, 1 << 12
    for name in ("DS", "SS", "ES"):
        v.set_segment(name, 0, 0x93, 0xFFFF, 0)
    v.set_segment("CS", 0x4000, 0x9B, 0xFFFF, 0x40000)
    bus.write_bytes(0x40000, code)
    v["RIP"], v["CPL"] = 0, 0
    r.run()
    assert r.exitcode == ExitCode.EXCP_PF
    assert r.vmcb["EXITINFO1"] == 0b010                 # W, not present, supervisor
    assert r.vmcb["EXITINFO2"] == 0x104
    assert r.vmcb["RIP"] == 0
    # the same access to a present page runs: paging, not the real-mode identity
    bus.write(pt, 4, 0x5000 | 3)
    r.vmcb["RAX"] = 0x1234
    r.run()
    assert r.exitcode == ExitCode.HLT and bus.read(0x5104, 2) == 0x1234


# ---------------------------------------------------------------- 15.17: GIF and breakpoints


def _arm(dr0, dr7):
    def setup(m, cpu):
        cpu.efer |= 1 << 12
        cpu.update_mode()
        cpu.dr[0], cpu.dr[7] = dr0, dr7
    return setup


INSN_BP, DATA_BP = 0x401, 0x401 | 1 << 16 | 3 << 18       # DR0: execute; DR0: 4-byte write
DATA = 0x200000


def test_with_gif_0_breakpoint_matches_are_discarded():
    """Table 15-10: with GIF = 0, a "Debug exception or trap, due to
    breakpoint register match" is "Ignored and discarded": after CLGI an
    instruction breakpoint and a data breakpoint raise nothing, and DR6
    records no match."""
    r = run_code(asm("clgi\nnop\nnop"), setup=_arm(CODE_ADDR + 4, INSN_BP))
    assert r.exception is None and r.cpu.dr[6] & 0xF == 0
    r = run_code(asm(f"clgi\nmov dword ptr [{DATA}], eax\nnop"), setup=_arm(DATA, DATA_BP))
    assert r.exception is None and r.cpu.dr[6] & 0xF == 0


def test_with_gif_1_the_same_breakpoints_fire():
    r = run_code(asm("nop\nnop\nnop\nnop"), setup=_arm(CODE_ADDR + 4, INSN_BP))
    assert r.exception[:3] == (1, None, CODE_ADDR + 4)
    r = run_code(asm(f"stgi\nmov dword ptr [{DATA}], eax\nnop"), setup=_arm(DATA, DATA_BP))
    assert r.exception[0] == 1 and r.cpu.dr[6] & 1


def test_with_gif_0_the_tf_trap_still_happens():
    """Table 15-10: "Debug trace trap due to EFLAGS.TF": "Normal operation"
    with GIF = 0."""
    r = run_code(asm("clgi\npushfq\nor qword ptr [rsp], 0x100\npopfq\nnop\nnop"), setup=_arm(0, 0))
    assert r.exception is not None and r.exception[0] == 1 and r.cpu.dr[6] & 0x4000


# ---------------------------------------------------------------- 15.21.2: CR8 without V_INTR_MASKING
def test_cr8_write_without_v_intr_masking_reaches_v_tpr_and_the_apic():
    """15.21.2: "While running a guest with V_INTR_MASKING cleared to 0:
    Writes to CR8 affect both the APIC's TPR and the V_TPR register", and
    #VMEXIT writes V_TPR back to the VMCB."""
    r = SvmRig("mov eax, 5\nmov cr8, rax\nmov rbx, cr8\nhlt", intercepts=[ExitCode.HLT]).run()
    assert r.exitcode == ExitCode.HLT
    assert r.vmcb["V_TPR"] == 5 and r.cpu.regs[3] == 5
    from svmsim.cpu.ops.system import read_cr8
    assert read_cr8(r.cpu) == 5                          # the host's CR8: the APIC TPR


def test_cr8_write_with_v_intr_masking_reaches_only_v_tpr():
    """15.21.2: with V_INTR_MASKING = 1 "Writes to CR8 affect only the V_TPR
    register"."""
    r = SvmRig("mov eax, 7\nmov cr8, rax\nhlt", intercepts=[ExitCode.HLT], V_INTR_MASKING=1)
    r.run()
    assert r.vmcb["V_TPR"] == 7


# ---------------------------------------------------------------- 15.25.2 / 15.25.4: the guest PAT

PAT_MSR = 0x277
HOST_PAT, GUEST_PAT, GUEST_PAT_2 = 0x0007040600070404, 0x0606060606060606, 0x0606060606060604
PAT_PROGRAM = (f"mov ecx, {PAT_MSR}\nrdmsr\nmov ebx, eax\nmov edi, edx\n"
               f"mov eax, {GUEST_PAT_2 & 0xFFFFFFFF}\nmov edx, {GUEST_PAT_2 >> 32}\nwrmsr\nhlt")


def _pat_rig(np):
    r = SvmRig(PAT_PROGRAM, intercepts=[ExitCode.HLT], G_PAT=GUEST_PAT, NP_ENABLE=int(np))
    if np:
        nt = NestedTables(r.m.bus)
        nt.identity(0, 0x1000000)
        r.vmcb["N_CR3"] = nt.root
    r.cpu.msr[PAT_MSR] = HOST_PAT
    return r.run()


def test_a_nested_paging_guest_has_its_own_pat_from_g_pat():
    """15.25.2: "Most processor state affecting paging is replicated for host
    and guest. This includes the paging registers CR0, CR3, CR4, EFER and
    PAT"; 15.25.4: "The guest PAT register is loaded from G_PAT field in the
    VMCB", and "#VMEXIT writes the guest paging state ... back into the
    VMCB".  The guest reads G_PAT, its write goes back to G_PAT, and the
    host's PAT is untouched."""
    r = _pat_rig(np=True)
    assert r.exitcode == ExitCode.HLT
    assert r.cpu.regs[7] << 32 | r.cpu.regs[3] == GUEST_PAT
    assert r.vmcb["G_PAT"] == GUEST_PAT_2 and r.cpu.msr[PAT_MSR] == HOST_PAT
    r.vmcb["VMCB_CLEAN"] = 0xFFFFFFFF           # the cached G_PAT follows the guest's write
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    assert r.cpu.regs[7] << 32 | r.cpu.regs[3] == GUEST_PAT_2


def test_without_nested_paging_there_is_one_pat():
    """15.25.8: "When nested paging is disabled, the processor behaves as
    though there is no gPAT register ... guest writes to the PAT MSR that
    aren't intercepted by the VMM will alter the host PAT MSR"."""
    r = _pat_rig(np=False)
    assert r.exitcode == ExitCode.HLT
    assert r.cpu.regs[7] << 32 | r.cpu.regs[3] == HOST_PAT
    assert r.cpu.msr[PAT_MSR] == GUEST_PAT_2 and r.vmcb["G_PAT"] == GUEST_PAT


# ---------------------------------------------------------------- 15.27.6: SKINIT and debug traps

SKINIT, SLB = b"\x0f\x01\xde", 0x300000


def test_skinit_takes_no_trace_trap():
    """15.27.6: "Because of the processor initialization performed, SKINIT
    does not honor instruction or data breakpoint traps, or trace traps due
    to EFLAGS.TF": SKINIT run with TF set enters the secure loader without
    a #DB (svmsim delivered the single-step trap at the SL entry)."""
    def setup(m, cpu):
        image = struct.pack("<HH", 0x10, 0x13).ljust(0x10, b"\0") + asm("nop\nnop\nhlt", bits=32)
        m.bus.write_bytes(SLB, image)
        cpu.set_rflags(cpu.get_rflags() | 0x100)
    r = run_code(SKINIT, regs={"rax": SLB}, setup=setup)
    assert r.exception is None and r.cpu.halted and r.cpu.rip == SLB + 0x13


def test_the_instruction_before_skinit_still_traps():
    """The TF trap of an ordinary instruction is unaffected."""
    def setup(m, cpu):
        cpu.set_rflags(cpu.get_rflags() | 0x100)
    r = run_code(asm("nop\nnop"), setup=setup)
    assert r.exception[:3] == (1, None, CODE_ADDR + 1)


# ---------------------------------------------------------------- 15.33.1: where virtual VMSAVE/VMLOAD is not recognized
@pytest.mark.parametrize("insn,code", [("vmsave", ExitCode.VMSAVE), ("vmload", ExitCode.VMLOAD)])
def test_virtual_vmsave_vmload_without_nested_paging_exits(insn, code):
    """15.33.1: "This enable bit is only recognized when the hypervisor is in
    64 bit mode, nested paging is enabled and Secure Encrypted Virtualization
    is disabled, otherwise attempted execution of a VMLOAD or VMSAVE in the
    guest will result in a #VMEXIT with a VMSAVE/VMLOAD exit code" -- here
    without nested paging and without the instruction's intercept."""
    r = SvmRig(f"mov rax, 0x600000\n{insn}\nhlt", intercepts=[ExitCode.HLT],
               V_VMSAVE_VMLOAD_ENABLE=1).run()
    assert r.exitcode == code and r.vmcb["RIP"] == GUEST_CODE + 7


def test_virtual_vmsave_from_a_compatibility_mode_host_exits():
    """The same rule for a hypervisor that runs VMRUN outside 64-bit mode
    (compatibility mode) with nested paging on."""
    r = SvmRig("mov rax, 0x600000\nvmsave\nhlt", intercepts=[ExitCode.HLT],
               V_VMSAVE_VMLOAD_ENABLE=1, NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    nt.identity(0, 0x1000000)
    r.vmcb["N_CR3"] = nt.root
    stub = asm(f"mov eax, {VMCB}\nvmrun\nhlt", bits=32)
    r.m.bus.write_bytes(CODE_ADDR, stub)
    from svmsim.cpu.segments import Segment
    r.cpu.segs[CS] = Segment(SEL_CODE32, 0, 0xFFFFFFFF, CS_32)
    r.cpu.update_mode()
    r.cpu.rip, r.cpu.halted = CODE_ADDR, False
    while not r.cpu.halted:
        assert r.m.engine.run(r.cpu, 10_000)
    assert r.exitcode == ExitCode.VMSAVE


def test_without_the_enable_bit_an_unintercepted_vmsave_runs():
    """The rule needs the enable bit: a guest VMSAVE that is neither
    intercepted nor virtualized runs (on a system-physical address)."""
    r = SvmRig("mov rax, 0x600000\nvmsave\nhlt", intercepts=[ExitCode.HLT]).run()
    assert r.exitcode == ExitCode.HLT


# ---------------------------------------------------------------- 15.32.2 SMM_KEY, 15.30.2 IGNNE
def _wrmsr(idx, value):
    return f"mov ecx, {idx:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}\nwrmsr\n"


def _rdmsr_to(idx, reg):
    return f"mov ecx, {idx:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\nmov {reg}, rax\n"


HWCR, SMM_KEY = 0xC0010015, 0xC0010119


def test_smm_key_unlocks_smmlock_only_with_the_same_nonzero_key():
    """15.32.2: "When SmmLock is zero, writes to SMM_KEY MSR set the 64-bit
    SMM Key value. When SmmLock is one, writes to SMM_KEY MSR compare the
    written value to the SMM Key value; if the values match and are
    non-zero, the SmmLock bit is cleared. If the values mismatch ..., the
    write to SMM_KEY is ignored" and "reading SMM_KEY MSR always returns
    zero" (svmsim had no SMM_KEY: #GP)."""
    key = 0x1234_5678_9ABC_DEF0
    code = (_wrmsr(SMM_KEY, key) + _rdmsr_to(SMM_KEY, "r8") + _wrmsr(HWCR, 1)
            + _wrmsr(SMM_KEY, key + 1) + _rdmsr_to(HWCR, "r9")
            + _wrmsr(SMM_KEY, key) + _rdmsr_to(HWCR, "r10"))
    r = run_code(asm(code))
    assert r.exception is None
    assert r.regs[8] == 0 and r.regs[9] & 1 and not r.regs[10] & 1


def test_with_a_zero_smm_key_smmlock_stays():
    """15.32.2: "If SMM_KEY MSR is equal to zero when SmmLock is one, SmmLock
    can only be cleared by a processor reset"."""
    r = run_code(asm(_wrmsr(HWCR, 1) + _wrmsr(SMM_KEY, 0) + _rdmsr_to(HWCR, "r9")))
    assert r.exception is None and r.regs[9] & 1


def test_ignne_bits_63_1_are_mbz():
    """15.30.2: IGNNE "Bit 0 specifies the current value of IGNNE; all other
    bits are MBZ"."""
    r = run_code(asm(_wrmsr(0xC0010115, 1) + _rdmsr_to(0xC0010115, "r8")))
    assert r.exception is None and r.regs[8] == 1
    r = run_code(asm(_wrmsr(0xC0010115, 2)))
    assert r.exception[:2] == (13, 0)


# ---------------------------------------------------------------- 15.36.2: MSRs frozen by SecureNestedPagingEn
@pytest.mark.parametrize("idx", [0xC001001A, 0xC001001D, SMM_KEY, 0x250, 0x258, 0x268])
def test_snp_enabled_freezes_top_mem_smm_key_and_fixed_mtrrs(idx):
    """15.36.2: "After SecureNestedPagingEn is set to 1 ... certain MSRs may
    no longer be modified. This includes the fixed range MTRR registers ...,
    the TOP_MEM and TOP_MEM2 registers ..., the SMM_KEY register ... attempts
    to write the other MSRs mentioned will result in #GP(0)" (svmsim wrote
    them).  Host code on an SNP-enabled machine (tests/esharness.py)."""
    from esharness import EsRig
    from test_sev_snp import host_run
    value = 0x0606060606060606 if idx in (0x250, 0x258, 0x268) else 0x1_0000_0000
    r = EsRig("hlt", snp=True)
    assert host_run(r, _wrmsr(idx, value)) == (13, 0)


def test_before_snp_is_enabled_those_msrs_are_writable():
    r = run_code(asm(_wrmsr(0xC001001A, 0x8000_0000) + _wrmsr(0x250, 0x0606060606060606)))
    assert r.exception is None


# ---------------------------------------------------------------- 15.34.4: SEV guests outside long mode / PAE
def test_sev_guest_with_32_bit_paging_accesses_are_private():
    """15.34.4: "the guest is only able to control memory encryption when
    operating in long mode or legacy PAE mode. In all other modes, all guest
    memory accesses are unconditionally considered private and are encrypted
    with the guest-specific key" -- a guest with 32-bit (non-PAE) paging
    writes a value whose PTE cannot carry the C-bit, and DRAM holds
    ciphertext (svmsim wrote it in the clear)."""
    from test_sev_hw import sev_rig, KEY
    from svmsim.memory.encryption import EncryptionEngine
    pd, pt = 0x700000, 0x701000
    r = sev_rig("mov dword ptr [0x600000], 0x11223344\nmov eax, [0x600000]\nhlt")
    bus = r.m.bus
    pde = [0] * 1024
    pde[0] = pt | 3
    pte = [(i << 12) | 3 for i in range(1024)]
    for table, entries in ((pd, pde), (pt, pte)):              # written as the guest's (private)
        raw = b"".join(e.to_bytes(4, "little") for e in entries)
        bus.write_bytes(table, EncryptionEngine.encrypt(KEY, table, raw))
    # 4 MiB of 4 KiB pages: PDE 1 maps 4-8 MiB (the code at 4 MiB, the data at 6 MiB)
    pt2 = 0x702000
    raw = b"".join((((1024 + i) << 12) | 3).to_bytes(4, "little") for i in range(1024))
    bus.write_bytes(pt2, EncryptionEngine.encrypt(KEY, pt2, raw))
    pde[1] = pt2 | 3
    raw = b"".join(e.to_bytes(4, "little") for e in pde)
    bus.write_bytes(pd, EncryptionEngine.encrypt(KEY, pd, raw))
    r.vmcb["CR3"], r.vmcb["CR0"] = pd, 0x80000011
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x11223344
    stored = bus.read_bytes(0x600000, 16)
    assert stored[:4] != (0x11223344).to_bytes(4, "little")
    assert EncryptionEngine.decrypt(KEY, 0x600000, stored)[:4] == (0x11223344).to_bytes(4, "little")


# ---------------------------------------------------------------- 15.36.15: SNP TLB management
def test_snp_vmrun_tracks_pcpu_id_and_flushes_when_it_changes():
    """15.36.15: "the hardware detects when the VMSA is moved and manages the
    TLB for that guest automatically ... software may explicitly write
    PCPU_ID to 0 to force a TLB flush on the next VMRUN to that VMSA ... the
    hardware will set the PCPU_ID field to a non-zero value when it flushes
    the TLB" (svmsim left PCPU_ID 0 and never flushed).  The first VMRUN
    flushes and sets PCPU_ID; a second on the same CPU does not; PCPU_ID
    written to 0 by the guest owner forces a flush again."""
    from esharness import EsRig
    r = EsRig("hlt", snp=True)
    flushes = r.cpu.tlb.stats["flushes"]
    r.run()
    assert r.exitcode == ExitCode.HLT
    assert r.vmsa()["PCPU_ID"] == r.cpu.index + 1 and flushes.get("snp_vmsa") == 1
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    assert flushes.get("snp_vmsa") == 1
    g = r.vmsa()
    g["PCPU_ID"] = 0
    r.write_vmsa(g, seal=False)
    r.run()
    assert flushes.get("snp_vmsa") == 2 and r.vmsa()["PCPU_ID"] == r.cpu.index + 1


# ---------------------------------------------------------------- 15.7.1 / 15.12.6: BOUND
BOUND_GUEST = ("mov eax, {idx}\nmov dword ptr [0x510100], 0\nmov dword ptr [0x510104], 10\n"
               "bound eax, [0x510100]\nhlt")


def _bound_rig(idx, intercepts):
    code = asm(BOUND_GUEST.format(idx=idx), bits=32)
    r = guest32(0xFFFFFFFF, intercepts=intercepts)
    r.m.bus.write_bytes(GUEST_CODE, code)
    return r, GUEST_CODE + len(code) - 1 - 6        # BOUND: 62 05 disp32 (6 bytes), then HLT


def test_intercepted_bound_fault_saves_the_bound_rip_and_nrip_after_it():
    """15.12.6: the #BR intercept "applies to the fault raised by the BOUND
    instruction"; 15.7.1: "nRIP is saved ... on all #VMEXITs that are due to
    ... exceptions caused by the INT3, INTO, and BOUND instructions" (svmsim's
    CPU had no BOUND: #UD).  A 32-bit guest's index 11 is outside [0, 10]."""
    r, at = _bound_rig(11, [ExitCode.EXCP_BR, ExitCode.HLT])
    r.run()
    assert r.exitcode == ExitCode.EXCP_BR
    assert r.vmcb["RIP"] == at and r.vmcb["NRIP"] == at + 6


def test_bound_within_the_bounds_runs_on():
    r, _ = _bound_rig(10, [ExitCode.EXCP_BR, ExitCode.HLT])
    r.run()
    assert r.exitcode == ExitCode.HLT


def test_bound_outside_the_bounds_is_a_br_fault_in_the_host_too():
    code = asm("mov eax, -1\nmov dword ptr [0x200000], 0\nmov dword ptr [0x200004], 10\n"
               "bound eax, [0x200000]", bits=32)
    r = run_code(code, mode="prot32")
    assert r.exception[:3] == (5, None, CODE_ADDR + len(code) - 6)


# ---------------------------------------------------------------- table 15-7: MONITOR / MWAIT
def test_monitor_checks_all_exceptions_before_its_intercept():
    """Table 15-7, MONITOR: "Checks all exceptions before the intercept": a
    non-canonical address is #GP(0) (svmsim checked only the CPL first)."""
    r = SvmRig("mov rax, 0x0000900000000000\nxor ecx, ecx\nxor edx, edx\nmonitor\nhlt",
               intercepts=[ExitCode.MONITOR, ExitCode.EXCP_GP]).run()
    assert r.exitcode == ExitCode.EXCP_GP and r.vmcb["EXITINFO1"] == 0


def test_monitor_on_a_good_address_is_intercepted():
    r = SvmRig("mov rax, 0x400000\nxor ecx, ecx\nxor edx, edx\nmonitor\nhlt",
               intercepts=[ExitCode.MONITOR, ExitCode.EXCP_GP]).run()
    assert r.exitcode == ExitCode.MONITOR


def test_mwait_with_reserved_ecx_bits_faults_before_its_intercept():
    """Table 15-7, MWAIT: "Checks all exceptions before the intercept"."""
    r = SvmRig("mov ecx, 4\nxor eax, eax\nmwait\nhlt",
               intercepts=[ExitCode.MWAIT, ExitCode.EXCP_GP]).run()
    assert r.exitcode == ExitCode.EXCP_GP


# ---------------------------------------------------------------- table 15-7: RDPMC
def test_rdpmc_of_a_missing_counter_faults_before_its_intercept():
    """Table 15-7, RDPMC: "Checks all exceptions before the SVM intercept":
    ECX naming no counter is #GP(0) (svmsim checked only CR4.PCE first)."""
    r = SvmRig("mov ecx, 0x1000\nrdpmc\nhlt", intercepts=[ExitCode.RDPMC, ExitCode.EXCP_GP]).run()
    assert r.exitcode == ExitCode.EXCP_GP
    r = SvmRig("mov ecx, 1\nrdpmc\nhlt", intercepts=[ExitCode.RDPMC, ExitCode.EXCP_GP]).run()
    assert r.exitcode == ExitCode.RDPMC


# ---------------------------------------------------------------- table 15-7 / 15.25.10: PAE PDPEs at MOV CR3
PAE_PDPT, PAE_PD, BAD_PDPT = 0x60000, 0x61000, 0x66000        # PDs at 61000h-64FFFh


def _pae_tables(bus):
    """Legacy PAE tables identity-mapping 4 GiB at PAE_PDPT, and a copy at
    BAD_PDPT whose PDPE 3 has reserved bit 2 set."""
    for g in range(4):
        bus.write(PAE_PDPT + 8 * g, 8, (PAE_PD + 0x1000 * g) | 1)
        bus.write(BAD_PDPT + 8 * g, 8, (PAE_PD + 0x1000 * g) | 1 | (4 if g == 3 else 0))
        for i in range(512):
            bus.write(PAE_PD + 0x1000 * g + 8 * i, 8, ((g * 512 + i) << 21) | 0x83)


MOV_BAD_CR3 = f"mov eax, {BAD_PDPT}\nmov cr3, eax\nhlt"


def test_legacy_pae_mov_cr3_loads_the_pdpes_and_faults_on_a_reserved_bit():
    """Table 15-7, CR3: "If PAE is enabled, the loading of the four PDPEs can
    cause a #GP"; 15.25.10 contrasts "(host-only) legacy PAE mode", where
    illegal PDPEs are "signaled at the time that CR3 is written" (svmsim
    never read them at MOV CR3)."""
    def setup(m, cpu):
        _pae_tables(m.bus)
        cpu.cr4, cpu.cr3 = 0x20, PAE_PDPT
        cpu.cr0 |= 1 << 31
        cpu.update_mode()
    r = run_code(asm(MOV_BAD_CR3, bits=32), mode="prot32", setup=setup)
    assert r.exception[:2] == (13, 0)


def _legacy_pae_guest(code, cr0, cr3, intercepts, np=False):
    """A 32-bit protected-mode guest with CR4.PAE = 1 (APM 15.5.1: legacy PAE
    guests), flat segments, running ``code``; optionally under identity
    nested tables."""
    r = SvmRig(asm(code, bits=32), intercepts=intercepts, NP_ENABLE=int(np))
    _pae_tables(r.m.bus)
    v = r.vmcb
    v["CR0"], v["CR3"], v["CR4"], v["EFER"] = cr0, cr3, 0x20, 1 << 12
    for name in ("DS", "SS", "ES"):
        v.set_segment(name, 0x10, 0xC93, 0xFFFFFFFF, 0)
    v.set_segment("CS", SEL_CODE32, CS_32, 0xFFFFFFFF, 0)
    if np:
        nt = NestedTables(r.m.bus)
        nt.identity(0, 0x1000000)
        v["N_CR3"] = nt.root
    return r.run()


def _pae_guest(intercepts, np=False):
    return _legacy_pae_guest(MOV_BAD_CR3, 0x80000031, PAE_PDPT, intercepts, np)


def test_the_cr3_intercept_comes_before_the_pdpe_fault():
    """Table 15-7: "that exception is checked after the intercept check, so
    the VMM handling a CR3 intercept cannot rely on the PDPEs being legal"."""
    r = _pae_guest([ExitCode.CR3_WRITE, ExitCode.EXCP_GP, ExitCode.HLT])
    assert r.exitcode == ExitCode.CR3_WRITE
    r = _pae_guest([ExitCode.EXCP_GP, ExitCode.HLT])
    assert r.exitcode == ExitCode.EXCP_GP


def test_a_nested_paging_guest_does_not_load_pdpes_at_mov_cr3():
    """15.25.10: in a nested-paging guest "the guest's four PDPEs are not
    loaded into the processor at the time CR3 is written ... illegal bit
    combinations in the PDPEs are not signaled at the time that CR3 is
    written" -- the MOV CR3 completes; the HLT after it runs from PDPE 0."""
    r = _pae_guest([ExitCode.EXCP_GP, ExitCode.HLT], np=True)
    assert r.exitcode == ExitCode.HLT


# ---------------------------------------------------------------- MOV CR0 / MOV CR4 turning legacy PAE paging on
ENABLE_PG = "mov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\nmov ebx, 1\nhlt"
ENABLE_PAE = "mov eax, cr4\nor eax, 0x20\nmov cr4, eax\nmov ebx, 1\nhlt"
PD32 = 0x65000          # a 32-bit page directory whose PDEs 8-15 double as a PDPT


def _paging_off_pae_on(cr3):
    def setup(m, cpu):
        _pae_tables(m.bus)
        cpu.cr4, cpu.cr3 = 0x20, cr3
        cpu.update_mode()
    return setup


@pytest.mark.parametrize("cr3,fault", [(PAE_PDPT, False), (BAD_PDPT, True)])
def test_mov_cr0_enabling_pae_paging_loads_the_pdpes(cr3, fault):
    """Setting CR0.PG with CR4.PAE = 1 and EFER.LME = 0 starts legacy PAE
    paging, which loads the four PDPEs as a PAE MOV CR3 does (table 15-7,
    CR3: "If PAE is enabled, the loading of the four PDPEs can cause a #GP";
    15.25.10: illegal PDPEs "signaled at the time that CR3 is written" in
    host-only legacy PAE mode): a reserved bit in a present PDPE is #GP(0)
    at the MOV CR0, which leaves paging off."""
    r = run_code(asm(ENABLE_PG, bits=32), mode="prot32", setup=_paging_off_pae_on(cr3))
    if fault:
        assert r.exception[:2] == (13, 0) and not r.cpu.cr0 >> 31
    else:
        assert r.exception is None and r.cpu.cr0 >> 31 and r.cpu.regs[3] == 1


@pytest.mark.parametrize("bad", [False, True])
def test_mov_cr4_enabling_pae_under_32_bit_paging_loads_the_pdpes(bad):
    """Setting CR4.PAE while 32-bit paging is on switches to legacy PAE
    paging and loads the PDPEs CR3 names: CR3 = PD + 20h, which 32-bit
    paging reads as the directory at PD (bits 11:5 ignored) and PAE paging as
    the PDPT at PD + 20h (PDEs 8-15, above the code)."""
    def setup(m, cpu):
        _pae_tables(m.bus)
        for i in range(8):                                   # 0-32 MiB, 4 MiB pages
            m.bus.write(PD32 + 4 * i, 4, (i << 22) | 0x83)
        src = BAD_PDPT if bad else PAE_PDPT
        m.bus.write_bytes(PD32 + 0x20, m.bus.read_bytes(src, 32))
        cpu.cr4, cpu.cr3 = 0x10, PD32 | 0x20                 # PSE
        cpu.cr0 |= 1 << 31
        cpu.update_mode()
    r = run_code(asm(ENABLE_PAE, bits=32), mode="prot32", setup=setup)
    if bad:
        assert r.exception[:2] == (13, 0) and not r.cpu.cr4 & 0x20
    else:
        assert r.exception is None and r.cpu.cr4 & 0x20 and r.cpu.regs[3] == 1


def _guest_enabling_pae_paging(intercepts, np=False):
    """A legacy protected-mode guest, paging off, CR4.PAE = 1, CR3 = the PDPT
    with a reserved bit in PDPE 3, that sets CR0.PG."""
    return _legacy_pae_guest(ENABLE_PG, 0x11, BAD_PDPT,
                             [*intercepts, ExitCode.EXCP_GP, ExitCode.HLT], np)


def test_the_cr0_intercept_comes_before_the_pdpe_fault_of_enabling_pae_paging():
    """As for CR3 (table 15-7: the PDPE #GP "is checked after the intercept
    check"), svmsim checks a guest's CR0 write intercept first; without it
    the guest's MOV CR0 is #GP(0); a nested-paging guest loads no PDPEs
    (15.25.10) and goes on to its HLT."""
    assert _guest_enabling_pae_paging([ExitCode.CR0_WRITE]).exitcode == ExitCode.CR0_WRITE
    r = _guest_enabling_pae_paging([])
    assert r.exitcode == ExitCode.EXCP_GP and r.vmcb["RIP"] == GUEST_CODE + 8      # the MOV CR0
    assert _guest_enabling_pae_paging([], np=True).exitcode == ExitCode.HLT


def test_mov_cr0_entering_long_mode_loads_no_pdpes():
    """With EFER.LME = 1 the same MOV CR0 activates long mode, where CR3
    names a PML4 and there are no PDPE registers: a PML4E with RW set (bit 1,
    reserved in a PAE PDPTE) is no fault; the code runs on in compatibility
    mode."""
    pml4, pdpt = 0x67000, 0x68000

    def setup(m, cpu):
        _pae_tables(m.bus)
        m.bus.write(pml4, 8, pdpt | 3)
        m.bus.write(pdpt, 8, PAE_PD | 3)
        cpu.cr4, cpu.cr3 = 0x20, pml4
        cpu.efer |= 1 << 8
        cpu.update_mode()
    r = run_code(asm(ENABLE_PG, bits=32), mode="prot32", setup=setup)
    assert r.exception is None and r.cpu.efer >> 10 & 1 and r.cpu.regs[3] == 1


# ---------------------------------------------------------------- table 15-7: XSETBV
OSXSAVE = 1 << 18


def _xsetbv(ecx=0, eax=1, osxsave=True, user=False, intercepts=(ExitCode.XSETBV,)):
    r = SvmRig(f"mov ecx, {ecx}\nxor edx, edx\nmov eax, {eax}\nxsetbv\nhlt",
               intercepts=[*intercepts, ExitCode.EXCP_UD, ExitCode.EXCP_GP, ExitCode.HLT])
    r.vmcb["CR4"] = r.vmcb["CR4"] & ~OSXSAVE | (OSXSAVE if osxsave else 0)
    if user:
        from test_svm_apm_rules import user_mode
        from cpuharness import PML4, PDPT, PD
        user_mode(r)
        for pte in (PML4, PDPT, PD + 8 * (GUEST_CODE >> 21)):       # the code page: U = 1
            r.m.bus.write(pte, 8, r.m.bus.read(pte, 8) | 4)
    return r.run()


@pytest.mark.parametrize("case", [dict(ecx=1), dict(eax=0), dict(eax=5), dict(user=True), {}])
def test_xsetbv_intercept_comes_before_its_gp_checks(case):
    """Table 15-7, XSETBV: "Checks intercept before exceptions (#GP)": ECX
    naming no XCR, an invalid XCR0 (x87 clear; AVX without SSE) and CPL 3
    are #GP(0) on their own, yet the intercept is what the hypervisor sees."""
    r = _xsetbv(**case)
    assert r.exitcode == ExitCode.XSETBV and r.vmcb["RIP"] == GUEST_CODE + 12
    assert r.vmcb["NRIP"] == GUEST_CODE + 15


def test_xsetbv_with_osxsave_clear_is_ud_before_its_intercept():
    """The row names only #GP; CR4.OSXSAVE = 0 makes XSETBV #UD, one of the
    "simple exceptions (such as #GP—when CPL is incorrect—or #UD)" that
    "instruction intercepts are checked after" (15.7) -- svmsim took the
    intercept first."""
    r = _xsetbv(osxsave=False)
    assert r.exitcode == ExitCode.EXCP_UD and r.vmcb["RIP"] == GUEST_CODE + 12


@pytest.mark.parametrize("case,code", [(dict(ecx=1), ExitCode.EXCP_GP), ({}, ExitCode.HLT)])
def test_an_unintercepted_xsetbv_faults_or_runs_in_the_guest(case, code):
    r = _xsetbv(intercepts=(), **case)
    assert r.exitcode == code


# ---------------------------------------------------------------- 15.36.12: VMSAVE's RMP check
def test_host_vmsave_to_a_guest_owned_page_is_gp():
    """15.36.12: "The VMSAVE instruction also performs checks to ensure that
    the target page is hypervisor-owned ... If VMSAVE is executed in host mode
    and the target page fails the RMP check, a #GP(0) exception is generated"
    (svmsim wrote the page): here the guest's VMSA page."""
    from esharness import EsRig, VMSA
    from test_sev_snp import host_run
    r = EsRig("hlt", snp=True)
    assert host_run(r, f"mov rax, {VMSA}\nvmsave") == (13, 0)
    assert host_run(r, "mov rax, 0x380000\nvmsave") is None          # a hypervisor page


def test_virtual_vmsave_to_a_guest_owned_page_is_an_rmp_npf():
    """15.36.12: "If VMSAVE is executed in a guest when the VMSAVE instruction
    is virtualized (see Section 15.33.1) and the target page fails the RMP
    check, then a #VMEXIT(NPF) is generated indicating an RMP permission
    error" -- a plain nested-paging guest on an SNP-enabled machine."""
    from esharness import SYSCFG, RMP_BASE, RMP_END, RMP_AT
    from svmsim.cpu import msr
    from svmsim.memory.rmp import RmpEntry, PERM_ALL
    target = 0x900000
    r = SvmRig(f"mov rax, {target}\nvmsave\nhlt", intercepts=[ExitCode.HLT],
               V_VMSAVE_VMLOAD_ENABLE=1, NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    nt.identity(0, 0x1000000)
    r.vmcb["N_CR3"] = nt.root
    msr.wrmsr(r.cpu, SYSCFG, 1 << 23)
    msr.wrmsr(r.cpu, RMP_BASE, RMP_AT)
    msr.wrmsr(r.cpu, RMP_END, RMP_AT + 0x4000 + 16 * (32 << 20 >> 12) - 1)
    msr.wrmsr(r.cpu, SYSCFG, 1 << 23 | 1 << 24)
    r.m.rmp.write(target, RmpEntry(True, 0, False, target, 7, False, True, [PERM_ALL, 0, 0, 0]))
    r.run()
    assert r.exitcode == ExitCode.NPF
    assert r.vmcb["EXITINFO1"] >> 31 & 1 and r.vmcb["EXITINFO2"] == target


# ---------------------------------------------------------------- 15.34.10 / 15.36: SEV_FEATURES
from svmsim.cpu.sev_features import FEATURES                                   # noqa: E402

STATUS_AT = GUEST_CODE + 0x800
READ_STATUS = f"mov ecx, 0xC0010131\nrdmsr\nmov [{STATUS_AT:#x}], eax\nhlt"


def _sev_guest(features, snp):
    from esharness import EsRig
    r = EsRig(READ_STATUS, snp=snp)
    g = r.initial_vmsa()
    g["SEV_FEATURES"] = features
    r.write_vmsa(g)
    return r.run()


def _cpuid_8000001f_eax():
    return run_code(asm("mov eax, 0x8000001F\ncpuid")).regs[0]


@pytest.mark.parametrize("f", FEATURES, ids=lambda f: f.name)
def test_cpuid_and_an_snp_vmrun_agree_on_each_sev_feature(f):
    """Table 15-32 lists every SEV_FEATURES bit; an SNP-active VMSA may set
    any of them.  svmsim runs the guest exactly when it implements the
    feature (SEV_STATUS then shows it: "bit n + 2 ... is enabled in SEV
    FEATURES[n]"), fails VMRUN with VMEXIT_INVALID otherwise (never a guest
    that silently runs without the protection it asked for), and CPUID
    Fn8000_001F EAX advertises a feature's bit exactly when it is
    implemented."""
    r = _sev_guest(1 | 1 << f.bit, snp=True)
    if f.implemented:
        assert r.exitcode == ExitCode.HLT
        status = int.from_bytes(r.private(STATUS_AT, 4), "little")
        assert status == 0b11 | (1 | 1 << f.bit) << 2
    else:
        assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == "SNP_SEV_FEATURES"
        assert f.name in r.cpu.svm.invalid[-1].message
    if f.cpuid is not None:
        assert bool(_cpuid_8000001f_eax() >> f.cpuid & 1) == f.implemented


@pytest.mark.parametrize("f", [f for f in FEATURES if f.bit], ids=lambda f: f.name)
def test_an_sev_es_vmsa_gets_only_the_es_features_svmsim_implements(f):
    """A VMSA that is not SNP-active: the features the manual gives to
    "SEV-ES and SNP-active guests" (DebugVirtualization, PreventHostIBS, IBS
    and PMC virtualization) and VmgexitParameter (15.35.6) run when
    implemented; the SNP-only ones, and every unimplemented one, are
    VMEXIT_INVALID (svmsim ran any of them silently)."""
    r = _sev_guest(1 << f.bit, snp=False)
    if f.implemented and f.scope == "es":
        assert r.exitcode == ExitCode.HLT
        assert int.from_bytes(r.private(STATUS_AT, 4), "little") == 0b11 | 1 << f.bit + 2
    else:
        assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == "SEV_FEATURES"


def test_prevent_host_ibs_holds_because_the_cpu_has_no_ibs():
    """15.36.17: with PreventHostIBS "the IbsFetchCtl[IbsFetchEn] and
    IbsOpCtl[IbsOpEn] MSR bits must be 0" at VMRUN.  svmsim's CPU has no IBS
    (CPUID 8000_0001 ECX[10] = 0; IbsFetchCtl C001_1030h and IbsOpCtl
    C001_1033h are #GP), so the host can never enable them: the condition
    always holds and the feature is honoured."""
    assert not run_code(asm("mov eax, 0x80000001\ncpuid")).regs[1] >> 10 & 1
    for msr in (0xC0011030, 0xC0011033):
        r = run_code(asm(f"mov ecx, {msr:#x}\nrdmsr"))
        assert r.exception[:2] == (13, 0)


def _vmgexit_guest(features, snp=False, user=False):
    from esharness import EsRig, G_PML4, G_PDPT, G_PD, C_BIT, SHARED
    r = EsRig("mov rax, 0x123456789\nvmgexit\nhlt", snp=snp)
    g = r.initial_vmsa()
    g["SEV_FEATURES"] |= features
    if user:                                    # CPL 3: user code/stack, U = 1 in the tables
        g.set_segment("CS", 0x33, 0x2FB, 0xFFFFFFFF, 0)
        g.set_segment("SS", 0x2B, 0xCF3, 0xFFFFFFFF, 0)
        g["CPL"] = 3
        r.put(G_PML4, (G_PDPT | C_BIT | 7).to_bytes(8, "little"))
        r.put(G_PDPT, (G_PD | C_BIT | 7).to_bytes(8, "little"))
        r.put(G_PD, b"".join(((i << 21) | (0 if i << 21 == SHARED else C_BIT) | 0x87).to_bytes(8, "little")
                             for i in range(512)))
    r.write_vmsa(g)
    r.vmcb["VMGEXIT_RAX"], r.vmcb["VMGEXIT_CPL"] = 0xAAAA, 0xBB
    return r.run()


@pytest.mark.parametrize("snp", [False, True])
@pytest.mark.parametrize("user", [False, True])
def test_vmgexit_parameter_writes_rax_and_cpl_to_the_vmcb(snp, user):
    """15.35.6: "The VMGEXIT Parameter feature is enabled by setting
    SEV_FEATURES bit 10 (VmgexitParameter) in VMSA. When this feature is
    enabled, the RAX and the CPL values are written to the VMCB control area
    on VMGEXIT at offsets 110h (VMGEXIT_RAX) and 118h (VMGEXIT_CPL)"; CPUID
    Fn8000_001F EAX[17] advertises it."""
    r = _vmgexit_guest(1 << 10, snp, user)
    assert r.exitcode == ExitCode.VMGEXIT
    assert (r.vmcb["VMGEXIT_RAX"], r.vmcb["VMGEXIT_CPL"]) == (0x123456789, 3 if user else 0)
    assert _cpuid_8000001f_eax() >> 17 & 1


def test_without_vmgexit_parameter_the_vmcb_fields_are_untouched():
    r = _vmgexit_guest(0)
    assert r.exitcode == ExitCode.VMGEXIT
    assert (r.vmcb["VMGEXIT_RAX"], r.vmcb["VMGEXIT_CPL"]) == (0xAAAA, 0xBB)


# ---------------------------------------------------------------- 15.36.20: Allowed SEV Features
def _snp_with_mask(features, allowed):
    from esharness import EsRig
    r = EsRig("hlt", snp=True, ALLOWED_SEV_FEATURES=allowed)
    g = r.initial_vmsa()
    g["SEV_FEATURES"] = features
    r.write_vmsa(g)
    return r.run()


@pytest.mark.parametrize("allowed,runs", [
    (0, True),                              # mask not enabled (bit 63 clear): not checked
    (1 << 63 | 0x41, True),                 # SNPActive and PreventHostIBS allowed
    (1 << 63 | 0x01, False),                # PreventHostIBS not allowed
    (1 << 63, False),                       # not even SNPActive
    (0x40, True),                           # bits without bit 63 mean nothing
])
def test_allowed_sev_features_mask_limits_the_vmsa_features(allowed, runs):
    """15.36.20: "When the Allowed SEV Features Mask is enabled, the VMRUN
    instruction checks that all SEV_FEATURES bits which are set in VMSA
    offset 3B0h are also set in ALLOWED_SEV_FEATURES_MASK. If not, VMRUN
    fails with a VMEXIT_INVALID error code. SEV_FEATURES is saved to VMCB
    field GUEST_SEV_FEATURES at offset 140h on a #VMEXIT"; CPUID
    Fn8000_001F EAX[27] advertises the mask."""
    r = _snp_with_mask(1 | 1 << 6, allowed)
    if runs:
        assert r.exitcode == ExitCode.HLT and r.vmcb["GUEST_SEV_FEATURES"] == 0x41
    else:
        assert r.exitcode == ExitCode.INVALID
        assert r.cpu.svm.invalid[-1].rule == "ALLOWED_SEV_FEATURES"
    assert _cpuid_8000001f_eax() >> 27 & 1
