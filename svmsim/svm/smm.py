"""An SMI taken in guest mode, and the RSM that returns there (APM vol 2,
15.22.3: "SMIs encountered while in a guest context are taken from within
the guest context. ... The state saved in the SMM State-Save area as seen
by the SMM handler reflects the state of the guest ... When the SMM handler
executes the RSM instruction, the processor returns to executing in the
guest context").

The handler itself runs outside guest mode (it "is not subject to any
intercepts"), with the host's view of memory; the AMD64 state-save map
keeps what the processor needs to return (table 10-2: SVM Guest flag, the
VMCB's address, guest PAT, the host's EFER, CR4 and CR0 and the nested CR3
its nested walks use).  RSM reloads those fields, so a handler that edits
them changes the guest it returns to, as for every other saved register.
"""
from .vmcb import VmcbView

VM_HSAVE_PA = 0xC0010117


def enter(cpu) -> dict:
    """Leave guest mode for SMM; the SVM fields of the state-save area."""
    s = cpu.svm
    npt = cpu.npt
    fields = {"SVM_GUEST": 1, "SVM_GUEST_VMCB": s.vmcb_pa, "SVM_GUEST_VINTR": 0,
              "GUEST_PAT": VmcbView(cpu.bus, s.vmcb_pa)["G_PAT"] if npt else 0,
              "HOST_EFER": npt.host_efer if npt else 0, "HOST_CR4": npt.host_cr4 if npt else 0,
              "NESTED_CR3": npt.n_cr3 if npt else 0,
              "HOST_CR0": VmcbView(cpu.bus, cpu.msr.get(VM_HSAVE_PA, 0))["CR0"]}
    s.smm_gmet = bool(npt and npt.gmet)
    cpu.svm_guest = False
    cpu.npt = None
    cpu.sev_asid = 0
    cpu.tlb.switch(0, 0)
    return fields


def leave(cpu, fields: dict) -> None:
    """RSM with the SVM Guest flag: back into the guest, with the nested
    paging state the fields name."""
    s = cpu.svm
    s.vmcb_pa = fields["SVM_GUEST_VMCB"]
    if s.np_enable:
        from .npt import NestedMmu
        cpu.npt = NestedMmu(cpu, fields["NESTED_CR3"], fields["HOST_CR4"], fields["HOST_EFER"],
                            s.smm_gmet, s.sev)
    cpu.sev_asid = s.asid if s.sev else 0
    cpu.svm_guest = True
    cpu.tlb.switch(s.asid, cpu.cr3 & 0xFFF if cpu.cr4 & (1 << 17) else 0)
