"""Per-CPU SVM state that lives inside the processor, not in memory.

While a guest runs, hardware works from copies of VMCB fields it loaded at
VMRUN (the intercept vectors, the IOPM/MSRPM bases, the virtual-interrupt
controls, the TSC offset), and writes the ones the guest can change back at
#VMEXIT (APM vol 2, 15.5 and 15.6).  This class is that copy.  ``gif`` and
``guest`` themselves are attributes of the Cpu (``cpu.gif``,
``cpu.svm_guest``) because the hot paths test them.
"""
from dataclasses import dataclass, field

from ..cpu.exceptions import CpuException


class VmExit(CpuException):
    """An intercept fired: raised inside an instruction (before it changes
    state, APM 15.7.1) or by event delivery, and turned into a #VMEXIT where
    the engine would deliver a fault.  ``trap`` exits (CR/EFER write traps)
    happen after the instruction: the guest RIP saved is ``nrip``.
    """

    def __init__(self, code: int, info1: int = 0, info2: int = 0, nrip: int = 0,
                 trap: bool = False, detail: str = "", insn: bytes = b"", fetch: bool = False):
        Exception.__init__(self, -1, None)         # CpuException.__init__, inlined (hot path)
        self.vector, self.error_code, self.cr2, self.detail = -1, None, None, detail
        self.code, self.info1, self.info2 = code, info1, info2
        self.nrip, self.trap, self.insn, self.fetch = nrip, trap, insn, fetch
        self.exitintinfo = 0
        self.during_delivery = False        # raised while an event was being delivered

    def __str__(self):
        from .exits import exit_name
        return f"#VMEXIT({exit_name(self.code)})" + (f": {self.detail}" if self.detail else "")


@dataclass
class SvmState:
    """What VMRUN loaded and #VMEXIT needs (APM vol 2, 15.5-15.6)."""
    vmcb_pa: int = 0
    caps: object = None                       # checks.CpuCaps of this CPU, computed once
    feats: frozenset = frozenset()            # its optional SVM features (features.py), with caps
    checked: object = None                    # inputs of the last VMRUN that passed the checks
    npt_last: object = None                   # npt.NestedMmu of the last VMRUN with nested paging
    snp_last_vmsa: dict = field(default_factory=dict)   # ASID -> the VMSA it last ran here (15.36.15)
    host_pat: int = 0                         # the host's PAT while a nested-paging guest runs (15.25.2)
    host_checked: object = None               # host state the last #VMEXIT found consistent (15.6)
    # The ES/CS/SS/DS Segment objects a world switch set aside, with the 16
    # values they held (world._load_segment_values reuses them when the
    # values loaded are the same): the host's at VMRUN, the guest's at #VMEXIT.
    host_segs: object = None
    guest_segs: object = None
    caps_es: bool = False                     # the CPU has SEV-ES (VMRUN loads the GHCB MSR)
    words: tuple = (0, 0, 0, 0, 0, 0)        # intercept words 000h-014h
    iopm_pa: int = 0
    msrpm_pa: int = 0
    asid: int = 0
    tsc_offset: int = 0
    v_tpr: int = 0
    v_irq: bool = False
    v_intr_prio: int = 0
    v_ign_tpr: bool = False
    v_intr_masking: bool = False
    v_intr_vector: int = 0
    v_gif_enable: bool = False
    v_gif: bool = True
    v_nmi_enable: bool = False
    v_nmi_pending: bool = False
    v_nmi_blocking: bool = False
    vnmi_delivery: bool = False               # delivering a virtual NMI through the guest IDT
    host_step: bool = False                   # VMRUN was single-stepped: #DB after #VMEXIT
    host_if: bool = False                     # host RFLAGS.IF at VMRUN (V_INTR_MASKING)
    pause_initial: int = 0                    # pause filter (15.14.4): the VMCB's count
    pause_count: int = 0                      # ... and what is left of it
    pause_threshold: int = 0
    pause_last: object = None                      # virtual ns of the previous PAUSE
    np_enable: bool = False
    sev: bool = False                         # an SEV guest (SEV_ENABLE with memory encryption on)
    es: bool = False                          # an SEV-ES guest: its state lives in the VMSA (15.35)
    vmsa_pa: int = 0                          # the VMSA page (system-physical) of the running ES guest
    vmsa: bytearray = None                    # its plaintext as VMRUN read it (fields svmsim does not hold)
    avic: bool = False                        # AVIC (15.29): the guest's APIC is its backing page
    x2avic: bool = False                      # ... reached through the x2APIC MSRs (15.29.10)
    apic_bar: int = 0                         # V_APIC_BAR: the guest-physical APIC page
    backing: int = 0                          # AVIC_BACKING_PAGE (system-physical)
    logical_table: int = 0
    physical_table: int = 0
    max_index: int = 0                        # AVIC_PHYSICAL_MAX_INDEX
    snp: bool = False                         # SNP-active: SEV_FEATURES bit 0 of its VMSA (15.36.2)
    vmpl: int = 0                             # the VMPL of the running VMSA (15.36.7)
    in_use: frozenset = frozenset()           # VMCB and VMSA pages marked in use (15.36.12)
    smm_gmet: bool = False                    # GMET of a guest in whose context SMM runs
    lbr_virt: bool = False
    host_lbr: dict = field(default_factory=dict)      # host LBR MSRs while a guest runs (15.23)
    v_vmsave_vmload: bool = False
    vls_exit: bool = False                    # its enable bit set where it is not recognized (15.33.1)
    clean_cache: list = field(default_factory=list)   # cached VMCB fields (clean bits, 15.15.3; clean.py)
    cache_pa: object = None                   # the VMCB the cache belongs to
    delta: object = None                      # switch.vmrun's values of the last VMCB it ran
    hsave_seen: object = None                 # (RAM offset, bytes, values) of the host save area as last seen
    keep_memo: object = None                  # world._keep_checks' inputs and result, last time
    exits: dict = field(default_factory=dict)         # exit code -> count (the run's summary)
    vmruns: int = 0
    invalid: list = field(default_factory=list)   # InvalidReason of each VMEXIT_INVALID

    def intercepted(self, word: int, bit: int) -> bool:
        return bool(self.words[word] >> bit & 1)
