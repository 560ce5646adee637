"""The SVM instructions (APM vol 3: VMRUN, VMLOAD, VMSAVE, STGI, CLGI,
VMMCALL, INVLPGA, SKINIT; vol 2, 15.5-15.17).

They register with the CPU's instruction table like any family in
``svmsim.cpu.ops``.  In guest mode each is first checked against the
guest's intercepts (``guards``, installed when a block is translated in
guest mode); what reaches these handlers executes.
"""
from ..cpu.ops import handles
from ..cpu.exceptions import CpuException, ud
from . import checks, switch
from .checks import CR0_PE, EFER_SVME, RFLAGS_VM
from .vmcb import VmcbView
from .vmstate import StateSpan

_VMCB_SPAN = StateSpan(VmcbView.LOOKUP)



def svm_checks(cpu, ins, name, rax=True):
    """#UD / #GP checks shared by the SVM instructions (APM vol 3).  When
    EFER.SVME = 1, CR0.PE = 1, RFLAGS.VM = 0 and CPL = 0, the instructions
    without a rAX operand check (STGI, CLGI, INVLPGA) pass, and those with
    one (VMRUN, VMLOAD, VMSAVE) when rAX is 4 KiB aligned and within the
    physical address width: no call (the world switch's hot path)."""
    if cpu.efer & EFER_SVME and cpu.cr0 & CR0_PE and not cpu.rflags & RFLAGS_VM and not cpu.cpl:
        if not rax:
            return
        # VMRUN, VMLOAD, VMSAVE: rAX 4 KiB aligned and within the physical
        # address width (checks.check_vmrun_instruction's last two checks).
        value = cpu.regs[0] & ((1 << (8 * ins.asize)) - 1)
        phys = getattr(cpu, "maxphyaddr", 0)
        if phys and not value & 0xFFF and not value >> phys:
            return
    bad = checks.check_vmrun_instruction(cpu, ins.asize, name, rax)
    if bad is not None:
        vector, code, detail = bad
        raise CpuException(vector, code, detail=detail)


def _rax(cpu, ins):
    return cpu.regs[0] & ((1 << (8 * ins.asize)) - 1)


def _vmcb_spa(cpu, ins, write):
    """rAX as a system-physical address.  In a guest with virtual VMSAVE/
    VMLOAD (APM 15.33.1: V_VMSAVE_VMLOAD_ENABLE with nested paging) it is a
    guest-physical address, translated by the nested tables (#NPF if not)."""
    pa = _rax(cpu, ins)
    if cpu.svm_guest and cpu.svm.v_vmsave_vmload and cpu.npt is not None:
        from .npt import NPF_FINAL
        from ..cpu.exceptions import PF_W
        return cpu.npt.nested_walk(pa, PF_W if write else 0, NPF_FINAL).spa
    return pa


@handles("VMRUN", ends_block=True)
def vmrun(cpu, ins):
    svm_checks(cpu, ins, "VMRUN")
    switch.vmrun(cpu, ins)


@handles("VMLOAD")
def vmload(cpu, ins):
    """Load FS, GS, TR, LDTR (with their hidden state), KernelGSBase, the
    SYSCALL and SYSENTER MSRs from the VMCB at rAX (APM vol 3 VMLOAD)."""
    svm_checks(cpu, ins, "VMLOAD")
    _VMCB_SPAN.load(cpu, cpu.bus, _vmcb_spa(cpu, ins, False))


@handles("VMSAVE")
def vmsave(cpu, ins):
    """Store the VMLOAD state into the VMCB at rAX (APM vol 3 VMSAVE)."""
    svm_checks(cpu, ins, "VMSAVE")
    pa = _vmcb_spa(cpu, ins, True)
    _vmsave_rmp_check(cpu, ins, pa)
    _VMCB_SPAN.save(cpu, cpu.bus, pa)


def _vmsave_rmp_check(cpu, ins, pa) -> None:
    """APM 15.36.12: "The VMSAVE instruction also performs checks to ensure
    that the target page is hypervisor-owned ... If VMSAVE is executed in host
    mode and the target page fails the RMP check, a #GP(0) exception is
    generated. If VMSAVE is executed in a guest when the VMSAVE instruction is
    virtualized (see Section 15.33.1) and the target page fails the RMP check,
    then a #VMEXIT(NPF) is generated indicating an RMP permission error."
    svmsim's reading for a guest VMSAVE that is neither intercepted nor
    virtualized (rAX a system-physical address): #GP(0), as in the host."""
    rmp = cpu.machine.rmp
    if not rmp.enabled or rmp.hypervisor_owned(pa & ~0xFFF):
        return
    if cpu.svm_guest and cpu.svm.v_vmsave_vmload and cpu.npt is not None:
        from .snp import NPF_RMP, NPF_FINAL
        from .state import VmExit
        from .exits import ExitCode
        from ..cpu.exceptions import PF_P, PF_W, PF_U
        raise VmExit(ExitCode.NPF, PF_P | PF_W | PF_U | NPF_RMP | NPF_FINAL, _rax(cpu, ins),
                     detail="virtual VMSAVE to a page that is not hypervisor-owned (RMP)")
    raise CpuException(13, 0, detail=f"VMSAVE: the page at {pa:#x} is not hypervisor-owned (RMP)")


@handles("STGI", ends_block=True)
def stgi(cpu, ins):
    """GIF = 1: held interrupts, NMIs and INIT may now be taken (APM 15.17)."""
    svm_checks(cpu, ins, "STGI", rax=False)
    if cpu.svm_guest and cpu.svm.v_gif_enable:
        cpu.svm.v_gif = True            # virtual GIF (APM 15.33.2)
    else:
        cpu.gif = True
    cpu.kick()
    cpu.rip = ins.next_ip


@handles("CLGI")
def clgi(cpu, ins):
    svm_checks(cpu, ins, "CLGI", rax=False)
    if cpu.svm_guest and cpu.svm.v_gif_enable:
        cpu.svm.v_gif = False
    else:
        cpu.gif = False


@handles("VMMCALL", "VMGEXIT")
def vmmcall(cpu, ins):
    """Not intercepted: #UD (APM vol 3 VMMCALL).  VMGEXIT outside an SEV-ES
    guest "will behave exactly like a VMMCALL" (APM 15.35.6); inside one its
    guard always exits."""
    raise ud(f"{ins.name.upper()} not intercepted")


@handles("INVLPGA")
def invlpga(cpu, ins):
    """Invalidate the page at rAX in the ASID in ECX (APM vol 3 INVLPGA)."""
    svm_checks(cpu, ins, "INVLPGA", rax=False)
    cpu.tlb.flush_page(_rax(cpu, ins) >> 12, "invlpga", asid=cpu.regs[1] & 0xFFFFFFFF)


@handles("SKINIT", ends_block=True)
def skinit(cpu, ins):
    """Secure startup of the secure loader at EAX (APM vol 2, 15.27; svm/skinit.py)."""
    from . import skinit as secure
    secure.check(cpu)
    secure.skinit(cpu)
