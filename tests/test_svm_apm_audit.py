"""APM vol 2, chapter 15 read section by section against svmsim (issue 12,
item 4; the record is docs/DESIGN.md, "APM chapter 15 audit").  Each test
here checks one rule the audit found svmsim missing, by running machine code
on the VMRUN harness (tests/svmharness.py); the docstrings quote the APM."""
from svmharness import SvmRig, GUEST_CODE, IDT, REC, VMCB
from cpuharness import asm, CODE_ADDR, SEL_CODE32
from svmsim.cpu.segments import CS
from svmsim.svm.exits import ExitCode, encode_event, EVENT_INTR

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
