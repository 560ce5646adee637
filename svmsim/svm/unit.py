"""The SVM unit: AMD-V as it plugs into the processor (``cpu.hooks``).

Each method is one of the points ``svmsim.cpu.hooks.CpuHooks`` names; it
hands over to the module that holds the manual's rules for that point:
``guards`` (instruction intercepts, APM 15.7-15.14), ``events``
(exceptions, interrupts, INIT, SMI, shutdown and task switches in guest
mode, 15.12-15.21), ``world`` (#VMEXIT, 15.6).  The SVM instructions
themselves are registered with the CPU's instruction table by ``insns``.
"""
from ..cpu.hooks import CpuHooks
from ..cpu.msr import TSC_RATIO, TSC_RATIO_ONE
from . import avic, events, features, guards, insns, sev_es, skinit, smm, snp, world  # noqa: F401  (insns, snp register instructions)
from .exits import ExitCode
from .state import SvmState, VmExit

MASK64 = (1 << 64) - 1
EFER_SVME = 1 << 12


class SvmUnit(CpuHooks):
    """One per CPU.  Its state, the VMCB fields the processor holds while a
    guest runs, is ``cpu.svm`` (an SvmState)."""

    def reset(self, cpu) -> None:
        old = getattr(cpu, "svm", None)
        cpu.svm = SvmState()
        if old is not None:                 # the run's statistics survive INIT
            cpu.svm.exits, cpu.svm.vmruns, cpu.svm.invalid = old.exits, old.vmruns, old.invalid

    def translate(self, cpu, ins, fn):
        return guards.wrap(ins, fn, cpu)

    def block_key(self, cpu):
        return guards.block_key(cpu)

    def cpuid_leaf(self, cpu, leaf):
        if leaf == 0x8000000A:
            return features.leaf_8000_000a(cpu)      # SVM revision, ASIDs, features
        return None

    # ------------------------------------------------------------ events
    def service(self, cpu) -> None:
        events.service_guest(cpu)

    def init(self, cpu) -> None:
        events.init_in_guest(cpu)

    def startup(self, cpu) -> None:
        skinit.startup(cpu)             # the secure AP start-up after SKINIT (15.27.8)

    def smi(self, cpu) -> bool:
        return events.smi_in_guest(cpu)

    def smm_enter(self, cpu) -> dict:
        return smm.enter(cpu)

    def smm_leave(self, cpu, fields) -> None:
        smm.leave(cpu, fields)

    def exception(self, cpu, vector, error_code, cr2, outer, kind) -> None:
        events.check_exception(cpu, vector, error_code, cr2, outer, kind)

    def shutdown(self, cpu, why: str) -> None:
        events.check_shutdown(cpu, why)

    def task_switch(self, cpu, selector, *, iret=False, jmp=False, error_code=None) -> None:
        events.check_task_switch(cpu, selector, iret=iret, jmp=jmp, error_code=error_code)

    def event_info(self, event) -> int:
        return events.encode_outer(event)

    def intercept(self, cpu, e) -> None:
        world.vmexit_from(cpu, e)

    def reflect(self, cpu, e):
        """SEV-ES: a non-automatic exit is a #VC in the guest (APM 15.35.4-5)."""
        if cpu.svm.es and not sev_es.automatic(e.code, e.info1):
            return sev_es.vc_for(e)
        return None

    # ------------------------------------------------------------ guest-visible state
    def iret(self, cpu) -> bool:
        s = cpu.svm
        if not s.v_nmi_enable:
            return False
        s.v_nmi_blocking = False       # vNMI: IRET ends the virtual NMI blocking (APM 15.21.10)
        cpu.kick()
        return True

    def cr8_read(self, cpu):
        s = cpu.svm
        # CR8 is the virtual TPR (APM 15.21.3); with AVIC whatever V_INTR_MASKING says (15.29.4.1).
        return s.v_tpr if s.v_intr_masking or s.avic else None

    def cr8_write(self, cpu, value) -> bool:
        s = cpu.svm
        s.v_tpr = value
        if not (s.v_intr_masking or s.avic):
            # "While running a guest with V_INTR_MASKING cleared to 0: Writes
            # to CR8 affect both the APIC's TPR and the V_TPR register" (15.21.2)
            return False
        if s.avic:                     # "writes to CR8 update the TPR backing page value bits 7:4"
            page = avic.Backing(cpu.bus, s.backing)
            page[avic.TPR] = value << 4
            page.update_ppr()
        cpu.kick()
        return True

    def msr_entry(self, cpu, idx):
        if idx == avic.DOORBELL and features.enabled(cpu, "avic"):
            return ("AVIC_DOORBELL", avic.doorbell_read, avic.doorbell_write)
        if cpu.svm_guest:
            return avic.guest_msr(cpu, idx)
        return None

    def rmp_fault(self, cpu, spa, access):
        """Table 15-37: a non-SNP guest's write to a page that is not
        hypervisor-owned is #VMEXIT(NPF) (EXITINFO2: the address written)."""
        from ..cpu.exceptions import PF_P, PF_W, PF_U
        return VmExit(ExitCode.NPF, PF_P | PF_W | PF_U | snp.NPF_RMP | snp.NPF_FINAL | access & PF_U,
                      spa & ~cpu.enc_mask, detail="RMP: guest write to a page that is not hypervisor-owned")

    def guest_efer(self, cpu, value: int) -> int:
        """"writes by SEV-ES guests to EFER.SVME are always ignored" (15.35.10)."""
        if cpu.svm.es:
            return value & ~EFER_SVME | cpu.efer & EFER_SVME
        return value

    def sev_status(self, cpu) -> int:
        """SEV_STATUS: SEV and SEV-ES active (bits 0, 1), then the features
        of the guest's VMSA (APM 15.34.10; an SEV-ES guest's too, e.g.
        PreventHostIBS: VMRUN lets through only those it may set)."""
        s = cpu.svm
        status = (1 if s.sev else 0) | (2 if s.es else 0)
        if s.es:                       # bit n + 2 = SEV_FEATURES bit n (table 15-32)
            status |= (int.from_bytes(s.vmsa[0x3B0:0x3B8], "little") & ((1 << 22) - 1)) << 2
        return status

    def stepped_into_guest(self, cpu, tf: bool) -> None:
        """A single-stepped VMRUN traps in the host after the #VMEXIT."""
        cpu.svm.host_step = tf

    def fep_allowed(self, cpu) -> bool:
        """KVM's forced-emulation prefix (a debugging aid of KVM, not of the
        APM) acts in a guest unless its hypervisor intercepts #UD: KVM then
        reflects the prefix's #UD to it (nested_svm_exit_handled before
        handle_ud).  Not in an SEV-ES guest, whose code KVM cannot read."""
        s = cpu.svm
        return not (s.words[2] >> 6 & 1 or s.es)

    def tsc(self, cpu, host_tsc: int) -> int:
        """Guest TSC = host TSC * TSC_RATIO + VMCB TSC_OFFSET (APM vol 2, 15.30.5)."""
        ratio = cpu.msr.get(TSC_RATIO, TSC_RATIO_ONE)
        if ratio != TSC_RATIO_ONE:
            host_tsc = ((host_tsc & MASK64) * ratio) >> 32
        return host_tsc + cpu.svm.tsc_offset
