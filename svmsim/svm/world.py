"""The world switch: VMRUN (APM vol 2, 15.5; vol 3 "VMRUN") and #VMEXIT (15.6).

VMRUN saves the host state into the page at VM_HSAVE_PA, loads the control
area into the processor (``cpu.svm``, an SvmState), checks the guest state
(``checks.check_guest_state``: a failure is #VMEXIT(VMEXIT_INVALID) with a
named reason), loads the guest state, runs the TLB_CONTROL command, sets
GIF and injects EVENTINJ.  #VMEXIT writes the guest state and the exit
information back to the VMCB, clears GIF and reloads the host state.

The host save area's format is implementation-specific (APM 15.5.1,
"VM_HSAVE_PA"); svmsim uses the VMCB's own save-area layout, as QEMU does,
so a hypervisor author can dump it with ``VmcbView(bus, hsave_pa).dump()``.
"""
from ..cpu.exceptions import CpuException
from ..cpu.segments import Segment, ES, CS, SS, DS
from ..cpu.flags import IF, VM, RF
from ..cpu.state import EFER_LME, EFER_LMA, CR0_PE, CR0_PG
from ..cpu import interrupts
from . import avic, checks, clean, exits, sev_checks, sev_es, snp
from .exits import ExitCode
from .vmcb import VmcbView, VMCB_SIZE
from .intercepts import read_words
from .state import VmExit
from .vmstate import canonical

MASK64 = (1 << 64) - 1
VM_HSAVE_PA = 0xC0010117
GHCB_MSR = 0xC0010130
SWITCHED_SEGS = (("ES", ES), ("CS", CS), ("SS", SS), ("DS", DS))

# EVENTINJ TYPE -> the delivery kind of svmsim's interrupt logic (APM 15.20).
_INJECT_KIND = {exits.EVENT_INTR: interrupts.EXTINT, exits.EVENT_NMI: interrupts.NMI_EV,
                exits.EVENT_EXCEPTION: interrupts.HWEXC, exits.EVENT_SWINT: interrupts.SWINT}


# ---------------------------------------------------------------- state transfer
# A world switch touches about a hundred VMCB fields: they are read from and
# written to a copy of the 4 KiB page, which is written back in one go.
def _page(bus, pa) -> bytearray:
    return bytearray(bus.read_bytes(pa, VMCB_SIZE))



def _save_segments(cpu, v):
    for name, idx in SWITCHED_SEGS:
        s = cpu.segs[idx]
        v.set_segment(name, s.sel, s.attr, s.limit, s.base)
    v.set_segment("GDTR", 0, 0, cpu.gdtr_limit, cpu.gdtr_base)
    v.set_segment("IDTR", 0, 0, cpu.idtr_limit, cpu.idtr_base)


def _load_segments(cpu, v):
    """VMRUN and #VMEXIT "canonicalize (i.e., sign-extend to bit 63) ... All
    base addresses in the segment registers that have been loaded" (15.5.1)."""
    bits = cpu.machine.profile.lin_bits
    for name, idx in SWITCHED_SEGS:
        sel, attr, limit, base = v.segment(name)
        cpu.segs[idx] = Segment(sel, canonical(base, bits), limit, attr)
    cpu.gdtr_limit, cpu.gdtr_base = v["GDTR.LIMIT"], canonical(v["GDTR.BASE"], bits)
    cpu.idtr_limit, cpu.idtr_base = v["IDTR.LIMIT"], canonical(v["IDTR.BASE"], bits)


def save_host(cpu, hsave: VmcbView, next_rip: int) -> None:
    """VMRUN step "save host state" (APM vol 3 VMRUN: ES CS SS DS, GDTR,
    IDTR, EFER, CR0, CR4, CR3, RFLAGS, RIP of the next instruction, RSP, RAX)."""
    _save_segments(cpu, hsave)
    for name, value in (("EFER", cpu.efer), ("CR0", cpu.cr0), ("CR4", cpu.cr4), ("CR3", cpu.cr3),
                        ("RFLAGS", cpu.get_rflags()), ("RIP", next_rip),
                        ("RSP", cpu.regs[4]), ("RAX", cpu.regs[0])):
        hsave[name] = value


def restore_host(cpu, hsave: VmcbView) -> None:
    """#VMEXIT "reload host state" (APM 15.6): the saved registers, CPL 0,
    CR0.PE forced to 1, DR7 = 400h (all breakpoints off), RFLAGS.TF kept,
    RF clear (the VMRUN instruction has completed)."""
    cpu.efer = hsave["EFER"]
    cpu.cr0 = hsave["CR0"] | CR0_PE
    cpu.cr4 = hsave["CR4"]
    cpu.cr3 = hsave["CR3"]
    _load_segments(cpu, hsave)
    cpu.cpl = 0
    cpu.set_rflags(hsave["RFLAGS"] & ~(VM | RF))     # VMRUN completed: RF is 0 after it
    cpu.rip = hsave["RIP"]
    cpu.regs[4] = hsave["RSP"]
    cpu.regs[0] = hsave["RAX"]
    cpu.dr[7] = 0x400
    cpu.debugctl = cpu.msr.get(0x1D9, 0) & 3


def _load_guest(cpu, v: VmcbView) -> None:
    """Guest state from the VMCB save area (APM vol 3 VMRUN, "load guest state")."""
    efer = v["EFER"]
    cr0 = v["CR0"]
    # LMA follows LME and paging: svmsim never holds an LMA that contradicts them.
    efer = efer & ~EFER_LMA | (EFER_LMA if efer & EFER_LME and cr0 & CR0_PG else 0)
    cpu.efer = efer
    cpu.cr0 = cr0
    cpu.cr4 = v["CR4"]
    cpu.cr3 = v["CR3"]
    cpu.cr2 = v["CR2"]
    _load_segments(cpu, v)
    rflags = v["RFLAGS"]
    cpu.set_rflags(rflags)
    cpu.rip = v["RIP"]
    cpu.regs[4] = v["RSP"]
    cpu.regs[0] = v["RAX"]
    cpu.dr[7] = (v["DR7"] & 0xFFFFFFFF) | 0x400
    cpu.dr[6] = (v["DR6"] & 0xFFFFFFFF)
    cpl = v["CPL"] & 3
    if not cr0 & CR0_PE:
        cpl = 0
    elif rflags & VM:
        cpl = 3
    cpu.cpl = cpl


def _save_guest(cpu, v: VmcbView, rip: int) -> None:
    """#VMEXIT "save guest state to VMCB" (APM 15.6)."""
    _save_segments(cpu, v)
    for name, value in (("EFER", cpu.efer), ("CR0", cpu.cr0), ("CR2", cpu.cr2), ("CR3", cpu.cr3),
                        ("CR4", cpu.cr4), ("RFLAGS", cpu.get_rflags()), ("RIP", rip),
                        ("RSP", cpu.regs[4]), ("RAX", cpu.regs[0]), ("DR7", cpu.dr[7]),
                        ("DR6", cpu.dr[6]), ("CPL", cpu.cpl)):
        v[name] = value


# ---------------------------------------------------------------- control area
def _load_control(cpu, v: VmcbView):
    s = cpu.svm
    s.words = read_words(v)
    s.iopm_pa = v["IOPM_BASE_PA"] & ~0xFFF
    s.msrpm_pa = v["MSRPM_BASE_PA"] & ~0xFFF
    s.asid = v["GUEST_ASID"]
    s.tsc_offset = v["TSC_OFFSET"]
    s.v_tpr = v["V_TPR"] & 0xF
    s.v_irq = bool(v["V_IRQ"])
    s.v_intr_prio = v["V_INTR_PRIO"]
    s.v_ign_tpr = bool(v["V_IGN_TPR"])
    s.v_intr_masking = bool(v["V_INTR_MASKING"])
    s.v_intr_vector = v["V_INTR_VECTOR"]
    s.pause_initial = s.pause_count = v["PAUSE_FILTER_COUNT"]
    s.pause_threshold = v["PAUSE_FILTER_THRESHOLD"]
    s.pause_last = None
    from . import features
    s.np_enable = bool(v["NP_ENABLE"]) and features.enabled(cpu, "npt")
    s.v_gif_enable = bool(v["V_GIF_ENABLE"]) and features.enabled(cpu, "vgif")
    s.v_gif = bool(v["V_GIF"])
    s.v_nmi_enable = bool(v["V_NMI_ENABLE"]) and features.enabled(cpu, "vnmi")
    s.v_nmi_pending = s.v_nmi_enable and bool(v["V_NMI_PENDING"])
    s.v_nmi_blocking = s.v_nmi_enable and bool(v["V_NMI_BLOCKING"])
    s.lbr_virt = bool(v["LBR_VIRTUALIZATION_ENABLE"]) and features.enabled(cpu, "lbrv")
    # Virtual VMSAVE/VMLOAD works only with nested paging (APM 15.33.1).
    s.v_vmsave_vmload = (bool(v["V_VMSAVE_VMLOAD_ENABLE"]) and s.np_enable
                         and features.enabled(cpu, "v_vmsave_vmload"))


def _write_back_control(cpu, v: VmcbView):
    """Fields the guest can change that #VMEXIT writes back (APM 15.6, 15.21).
    "If a #VMEXIT occurs during the virtual NMI delivery, EXITINTINFO is set
    appropriately and V_NMI_MASK is saved as 0" (15.21.10)."""
    s = cpu.svm
    v["V_TPR"] = s.v_tpr
    v["V_IRQ"] = int(s.v_irq)
    v["INTERRUPT_SHADOW"] = int(cpu.shadow or cpu.in_shadow)
    # Table B-1, 68h bit 1: the guest's RFLAGS.IF, "written back to the VMCB on
    # #VMEXIT": how a hypervisor sees it for an SEV-ES guest.
    v["GUEST_INTERRUPT_MASK"] = cpu.rflags >> 9 & 1
    # The pause-filter count is internal: VMRUN reloads it, nothing writes it back.
    if s.v_gif_enable:
        v["V_GIF"] = int(s.v_gif)
    if s.v_nmi_enable:
        v["V_NMI_PENDING"] = int(s.v_nmi_pending)
        v["V_NMI_BLOCKING"] = int(s.v_nmi_blocking and not s.vnmi_delivery)


LBR_MSRS = (("DBGCTL", 0x1D9), ("BR_FROM", 0x1DB), ("BR_TO", 0x1DC),
            ("LASTEXCP_FROM", 0x1DD), ("LASTEXCP_TO", 0x1DE))


def _lbr_switch(cpu, load, store) -> None:
    """LBR virtualization (APM 15.23): DebugCtl and the last-branch/last-
    exception records are guest state: ``store`` receives the current values,
    ``load`` supplies the new ones (each a name -> value mapping)."""
    for name, idx in LBR_MSRS:
        store[name] = cpu.msr.get(idx, 0)
    for name, idx in LBR_MSRS:
        cpu.msr[idx] = load[name]
    cpu.debugctl = cpu.msr[0x1D9] & 3


# Control bits whose features svmsim does not implement yet: a guest that
# needs them must not silently run without them.
def _tlb_control(cpu, value: int, asid: int) -> None:
    """TLB_CONTROL (APM 15.16.1): 0 nothing, 1 flush every ASID, 3 this
    guest's ASID, 7 this guest's non-global entries; other values are
    reserved (svmsim flushes everything for them, the safe reading)."""
    tlb = cpu.tlb
    if value == 0:
        return
    if value == 3:
        tlb.flush_asid("tlb_control", asid)
    elif value == 7:
        tlb.flush_asid("tlb_control", asid, keep_global=True)
    else:
        if value != 1:
            cpu.machine.note(f"VMRUN with reserved TLB_CONTROL {value:#x}: svmsim flushes the whole TLB")
        tlb.flush_all("tlb_control")


# ---------------------------------------------------------------- VMRUN
def vmrun(cpu, ins) -> None:
    """Execute VMRUN (its #UD/#GP checks and the guest-mode intercept have
    already been applied by the caller)."""
    asize = ins.asize
    vmcb_pa = cpu.regs[0] & ((1 << (8 * asize)) - 1)
    hsave_pa = cpu.msr.get(VM_HSAVE_PA, 0)
    snp.vmrun_host_checks(cpu, vmcb_pa, hsave_pa)
    bus = cpu.bus
    page = _page(bus, vmcb_pa)
    v = clean.view_for_vmrun(cpu, vmcb_pa, page)
    hpage = _page(bus, hsave_pa)
    hsave = VmcbView(hpage)
    s = cpu.svm
    s.vmcb_pa = vmcb_pa
    s.host_if = bool(cpu.rflags & IF)
    save_host(cpu, hsave, ins.next_ip)
    bus.write_bytes(hsave_pa, hpage)
    s.vmruns += 1
    if s.caps is None:
        s.caps = checks.CpuCaps.from_cpu(cpu)
    g, reason = v, None          # g: where the guest state is (the VMSA for SEV-ES)
    if sev_checks.es_requested(v, cpu):
        g, reason = sev_es.enter(cpu, v)
    if reason is None:
        reason = checks.check_guest_state(g, s.caps, cpu)
    if reason is not None:
        clean.forget(cpu)
        invalid_exit(cpu, VmcbView(page), hsave, reason)
        bus.write_bytes(vmcb_pa, page)
        return
    _load_control(cpu, v)
    host_cr4, host_efer = cpu.cr4, cpu.efer
    _load_guest(cpu, g)
    s.sev = sev_checks.sev_active(v, cpu)
    s.es = g is not v
    cpu.sev_asid = s.asid if s.sev else 0
    if s.es:
        s.vmsa_pa = sev_es.vmsa_spa(cpu, v)
        sev_es.load_guest(cpu, g)
    if cpu.machine.profile.extra.get("sev", {}).get("es"):
        cpu.msr[GHCB_MSR] = v["GHCB_GPA"]                 # 15.35.7
    if s.np_enable:
        from . import npt
        npt.setup(cpu, g, host_cr4, host_efer)
    avic.load(cpu, v)
    if cpu.machine.rmp.enabled:                       # pages in use until #VMEXIT (15.36.12)
        s.in_use = frozenset({vmcb_pa & ~0xFFF} | ({s.vmsa_pa} if s.es else set())
                             | ({s.backing} if s.avic else set()))
    if s.lbr_virt:
        s.host_lbr = {}
        _lbr_switch(cpu, g, s.host_lbr)
    cpu.svm_guest = True
    cpu.shadow = bool(v["INTERRUPT_SHADOW"])
    cpu.halted = False
    tlb = cpu.tlb
    pcid = cpu.cr3 & 0xFFF if cpu.cr4 & (1 << 17) else 0
    tlb.switch(s.asid, pcid)
    _tlb_control(cpu, v["TLB_CONTROL"], s.asid)
    tlb.drop_fast()
    cpu.update_mode()
    cpu.gif = True
    cpu.pending = True
    cpu.machine.svm_event(cpu, "vmrun", {"vmcb": vmcb_pa, "asid": s.asid, "rip": cpu.rip,
                                         "eventinj": v["EVENTINJ"]})
    eventinj = v["EVENTINJ"]
    if eventinj & exits.EVENT_V:
        inject(cpu, eventinj, v["NRIP"])


def inject(cpu, value: int, nrip: int = 0) -> None:
    """Deliver EVENTINJ through the guest IDT (APM 15.20).  Injection ignores
    RFLAGS.IF and the interrupt shadow; faults during delivery are handled as
    for any event (an intercepted one exits with EXITINTINFO = this event).

    A software interrupt (TYPE 4) or a software exception (#BP, #OF) pushes
    the VMCB's RIP as its return address, or with NRIP save the VMCB's
    NRIP: the hypervisor leaves RIP at the INT instruction and puts the next
    RIP in NRIP (as KVM does on NRIPS hardware)."""
    from . import features
    ev = exits.decode_event(value)
    kind = _INJECT_KIND[ev.type]
    if ev.type == exits.EVENT_EXCEPTION and ev.vector in (3, 4):
        # "behaves like a trap raised by INT3 and INTO instructions ... the
        # processor checks the DPL of the IDT descriptor" (APM 15.20)
        kind = interrupts.SWEXC
    s = cpu.svm
    if ev.type == exits.EVENT_NMI and s.v_nmi_enable:
        s.v_nmi_blocking = True          # an injected NMI blocks virtual NMIs (15.21.10)
    soft = ev.type == exits.EVENT_SWINT or ev.type == exits.EVENT_EXCEPTION and ev.vector in (3, 4)
    rip = cpu.rip
    if soft and features.enabled(cpu, "nrips"):
        cpu.rip = nrip
    cpu.machine.svm_event(cpu, "inject", {"event": value, "rip": rip})
    try:
        interrupts.deliver_with_escalation(cpu, ev.vector, kind, ev.error_code, injected=value)
    except VmExit as e:
        cpu.rip = rip
        vmexit_from(cpu, e)
    except CpuException as e:
        # A fault while delivering an injected software interrupt: reported
        # at the guest RIP like the instruction's own fault.
        cpu.rip = rip
        interrupts.deliver_exception(cpu, e)


# ---------------------------------------------------------------- #VMEXIT
def invalid_exit(cpu, v: VmcbView, hsave: VmcbView, reason) -> None:
    """#VMEXIT(VMEXIT_INVALID): nothing of the guest was loaded; the host
    continues after VMRUN with GIF = 0 (APM 15.5.1).  svmsim records why."""
    cpu.svm.invalid.append(reason)
    v["EXITCODE"] = exits.to_vmcb(ExitCode.INVALID)
    v["EXITINFO1"] = 0
    v["EXITINFO2"] = 0
    v["EXITINTINFO"] = 0
    _count(cpu, int(ExitCode.INVALID))
    cpu.machine.svm_event(cpu, "vmexit", {"code": int(ExitCode.INVALID), "name": "INVALID",
                                          "info1": 0, "info2": 0, "rip": v["RIP"],
                                          "asid": v["GUEST_ASID"], "reason": reason.as_dict(),
                                          "message": str(reason)})
    restore_host(cpu, hsave)
    cpu.gif = False
    cpu.update_mode()


def _count(cpu, code):
    ex = cpu.svm.exits
    ex[code] = ex.get(code, 0) + 1


def vmexit_from(cpu, e: VmExit) -> None:
    """#VMEXIT for an intercept raised as a VmExit (RIP at the instruction
    for faults, after it for traps)."""
    if e.trap and not e.nrip:
        e.nrip = cpu.rip + _insn_length(cpu)          # a trap raised by a memory or MSR access
    rip = e.nrip if e.trap else cpu.rip
    vmexit(cpu, e.code, e.info1, e.info2, rip=rip, nrip=e.nrip, exitintinfo=e.exitintinfo,
           insn=e.insn, fetch=e.fetch, detail=e.detail)


def _insn_length(cpu) -> int:
    """Length of the guest instruction at CS:RIP (AVIC traps: the exit comes
    after the access, and the guest resumes after the instruction)."""
    import iced_x86
    from .events import fetch_insn_bytes
    i = iced_x86.Decoder(cpu.bits, fetch_insn_bytes(cpu), iced_x86.DecoderOptions.AMD).decode()
    return i.len


def vmexit(cpu, code: int, info1: int = 0, info2: int = 0, *, rip=None, nrip: int = 0,
           exitintinfo: int = 0, insn: bytes = b"", fetch: bool = False, detail: str = "") -> None:
    """Leave the guest (APM 15.6).  ``fetch``: an #NPF on an instruction
    fetch, which records no instruction bytes (15.8.4)."""
    from . import features
    s = cpu.svm
    bus = cpu.bus
    page = _page(bus, s.vmcb_pa)
    v = clean.view_for_exit(cpu, page)
    g = sev_es.exit_view(cpu, v) if s.es else v
    guest_rip = cpu.rip if rip is None else rip
    if s.es and code in sev_es.ADVANCES_RIP:
        guest_rip = nrip                           # table 15-33: "HW Advances RIP"
    _save_guest(cpu, g, guest_rip)
    _write_back_control(cpu, v)
    if s.lbr_virt:
        _lbr_switch(cpu, s.host_lbr, g)
    if s.es:
        sev_es.save_guest(cpu, g)
        if s.snp:
            _snp_exit_info(g, code, info1, info2, exitintinfo, nrip)
            v["GUEST_SEV_FEATURES"] = g["SEV_FEATURES"]
        sev_es.write_back(cpu)
    if GHCB_MSR in cpu.msr:
        v["GHCB_GPA"] = cpu.msr[GHCB_MSR]
    v["EXITCODE"] = exits.to_vmcb(code)
    v["EXITINFO1"] = info1 & MASK64
    v["EXITINFO2"] = info2 & MASK64
    v["EXITINTINFO"] = exitintinfo
    v["EVENTINJ"] = v["EVENTINJ"] & ~exits.EVENT_V
    if features.enabled(cpu, "nrips") and not s.es:
        v["NRIP"] = nrip
    # An SEV-ES guest's instruction bytes are never saved (15.35.4).
    if features.enabled(cpu, "decode_assists") and not s.es:
        if code == ExitCode.NPF and not insn and not fetch:
            from .events import fetch_insn_bytes
            insn = fetch_insn_bytes(cpu)
        v["INSN_LEN"] = len(insn)
        if insn:
            v["INSN_BYTES"] = int.from_bytes(insn.ljust(15, b"\0"), "little")
    bus.write_bytes(s.vmcb_pa, page)
    _count(cpu, code)
    cpu.machine.svm_event(cpu, "vmexit", {"code": code, "name": exits.exit_name(code), "info1": info1,
                                          "info2": info2, "exitintinfo": exitintinfo,
                                          "rip": guest_rip, "asid": s.asid, "detail": detail})
    cpu.svm_guest = False
    cpu.npt = None
    cpu.sev_asid = 0
    cpu.gif = False
    cpu.shadow = False
    cpu.halted = False
    hpage = _page(bus, cpu.msr.get(VM_HSAVE_PA, 0))
    restore_host(cpu, VmcbView(hpage))
    if s.es:
        sev_es.restore_host(cpu, hpage)
        s.es, s.vmsa, s.snp, s.vmpl = False, None, False, 0
    s.in_use = frozenset()
    cpu.tlb.switch(0, cpu.cr3 & 0xFFF if cpu.cr4 & (1 << 17) else 0)
    cpu.tlb.drop_fast()
    cpu.update_mode()
    cpu.pending = True
    if s.host_step:
        # The single-step trap of VMRUN is taken in the host, on the
        # instruction after VMRUN, once the guest has exited.
        s.host_step = False
        cpu.dr[6] |= 0x4000                  # DR6.BS
        interrupts.deliver(cpu, 1, interrupts.HWEXC, None)


def _snp_exit_info(g, code, info1, info2, exitintinfo, nrip) -> None:
    """"The GUEST_EXITCODE, GUEST_EXITINFO1, GUEST_EXITINFO2, GUEST_EXITINTINFO,
    and GUEST_NRIP fields are populated by hardware on every Automatic Exit"
    of an SNP-active guest, with the values the VMCB gets (APM 15.36.9)."""
    g["GUEST_EXIT_CODE"] = exits.to_vmcb(code)
    g["GUEST_EXIT_INFO_1"], g["GUEST_EXIT_INFO_2"] = info1 & MASK64, info2 & MASK64
    g["GUEST_EXIT_INT_INFO"], g["GUEST_NRIP"] = exitintinfo, nrip


def shutdown_intercepted(cpu) -> bool:
    """A guest triple fault / shutdown exits instead when SHUTDOWN is intercepted (15.7)."""
    return cpu.svm_guest and cpu.svm.intercepted(3, 31)


__all__ = ["vmrun", "vmexit", "vmexit_from", "inject"]
