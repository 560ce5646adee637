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
from operator import itemgetter

from ..cpu.exceptions import CpuException, Shutdown
from ..cpu.segments import Segment, ES, CS, SS, DS
from ..cpu.flags import IF, VM, RF, WRITABLE, FIXED1, ARITH, arith_flags
from ..cpu.state import EFER_LME, EFER_LMA, CR0_PE, CR0_PG
from ..cpu import interrupts, sev_features, tlbkeep
from . import avic, checks, clean, exits, sev_checks, sev_es, snp
from .exits import ExitCode
from .vmcb import VmcbView, VMCB_SIZE, CHILDREN, field
from .intercepts import WORD_NAMES
from .packed import Runs, VmcbPage, HOST_PACKED, HOST_FIELDS, HOST_RUNS, field_packer
from .state import VmExit
from ..cpu.msr import PAT as PAT_MSR, PAT_RESET
from .vmstate import canonical

MASK64 = (1 << 64) - 1
VM_HSAVE_PA = 0xC0010117
GHCB_MSR = 0xC0010130
# The VMCB and the host save area are read and written straight in RAM with
# precompiled layouts when they are RAM pages (issue 14); False: always
# through a copy of the page and its field view (tests compare the two).
DIRECT = True
_NONE_IN_USE = frozenset()
_VMGEXIT_PARAMETER = sev_features.BIT["VmgexitParameter"]
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


def _segment_values(cpu) -> list:
    """ES, CS, SS, DS (selector, attributes, limit, base), GDTR and IDTR
    (limit, base): HOST_FIELDS' first 20 values and the VMCB's."""
    es, cs, ss, ds = cpu.segs[:4]                 # ES, CS, SS, DS = 0..3
    return [es.sel, es.attr, es.limit, es.base, cs.sel, cs.attr, cs.limit, cs.base,
            ss.sel, ss.attr, ss.limit, ss.base, ds.sel, ds.attr, ds.limit, ds.base,
            cpu.gdtr_limit, cpu.gdtr_base, cpu.idtr_limit, cpu.idtr_base]


_HOST_INDEX = tuple(HOST_PACKED.index[n] for n in HOST_FIELDS)
_HOST_MASKS = tuple(field(n).mask for n in HOST_FIELDS)


def _load_segments(cpu, v):
    """VMRUN and #VMEXIT "canonicalize (i.e., sign-extend to bit 63) ... All
    base addresses in the segment registers that have been loaded" (15.5.1)."""
    bits = cpu.machine.profile.lin_bits
    for name, idx in SWITCHED_SEGS:
        sel, attr, limit, base = v.segment(name)
        cpu.segs[idx] = Segment(sel, canonical(base, bits), limit, attr)
    cpu.gdtr_limit, cpu.gdtr_base = v["GDTR.LIMIT"], canonical(v["GDTR.BASE"], bits)
    cpu.idtr_limit, cpu.idtr_base = v["IDTR.LIMIT"], canonical(v["IDTR.BASE"], bits)


def _load_segment_values(cpu, vals, stash=None) -> None:
    """_load_segments from the 20 values of _segment_values' order.
    ``stash``: Segment objects a world switch set aside (save_host, _exit_ram) and the
    values they hold; when ``vals`` names the same, they are put back instead
    of four new objects (nothing else refers to them, and their bases are
    canonical)."""
    bits = cpu.machine.profile.lin_bits
    low = 1 << (bits - 1)                  # bases below this are canonical already
    segs = cpu.segs
    if stash is not None and vals[:16] == stash[4]:
        segs[:4] = stash[:4]                   # ES, CS, SS, DS
        gdtr, idtr = vals[17], vals[19]
        cpu.gdtr_limit, cpu.gdtr_base = vals[16], gdtr if gdtr < low else canonical(gdtr, bits)
        cpu.idtr_limit, cpu.idtr_base = vals[18], idtr if idtr < low else canonical(idtr, bits)
        return
    (es_sel, es_attr, es_limit, es_base, cs_sel, cs_attr, cs_limit, cs_base, ss_sel, ss_attr,
     ss_limit, ss_base, ds_sel, ds_attr, ds_limit, ds_base, _, gdtr, _, idtr) = vals[:20]
    segs[ES] = Segment(es_sel, es_base if es_base < low else canonical(es_base, bits), es_limit, es_attr)
    segs[CS] = Segment(cs_sel, cs_base if cs_base < low else canonical(cs_base, bits), cs_limit, cs_attr)
    segs[SS] = Segment(ss_sel, ss_base if ss_base < low else canonical(ss_base, bits), ss_limit, ss_attr)
    segs[DS] = Segment(ds_sel, ds_base if ds_base < low else canonical(ds_base, bits), ds_limit, ds_attr)
    cpu.gdtr_limit, cpu.gdtr_base = vals[16], gdtr if gdtr < low else canonical(gdtr, bits)
    cpu.idtr_limit, cpu.idtr_base = vals[18], idtr if idtr < low else canonical(idtr, bits)


_HOST_AT, _HOST_END = HOST_PACKED.start, HOST_PACKED.end
_HOST_RAW, _HOST_RAW_AT = HOST_RUNS.unpack_at, HOST_RUNS.start      # HOST_RUNS.unpack, no Python call
# HOST_RUNS.pack_changed as a global: an instance attribute holding a
# function is looked up without CPython 3.11's method cache.
_HOST_PACK = HOST_RUNS.pack_changed
_HOST_SEGS_END = field("DS.BASE").end          # ES..DS: HOST_RUNS' first run, 16 fields
assert HOST_RUNS.runs[0][0] == field("ES.SEL").offset and HOST_RUNS.runs[0][3] == 16


def _hsave_page(bus, hsave_pa) -> bytearray:
    return bytearray(bus.read_bytes(hsave_pa + HOST_PACKED.start, HOST_PACKED.end - HOST_PACKED.start))


def save_host(cpu, bus, hsave_pa: int, next_rip: int, off=None) -> None:
    """VMRUN step "save host state" (APM vol 3 VMRUN: ES CS SS DS, GDTR,
    IDTR, EFER, CR0, CR4, CR3, RFLAGS, RIP of the next instruction, RSP, RAX),
    into the host save area at ``hsave_pa``: one pack per run of adjacent
    fields (packed.HOST_RUNS) when the page is RAM (``off``: its RAM offset
    when the caller has it)."""
    es, cs, ss, ds = cpu.segs[:4]                 # _segment_values, inlined (hot path)
    new = (es.sel, es.attr, es.limit, es.base, cs.sel, cs.attr, cs.limit, cs.base,
           ss.sel, ss.attr, ss.limit, ss.base, ds.sel, ds.attr, ds.limit, ds.base,
           cpu.gdtr_limit, cpu.gdtr_base, cpu.idtr_limit, cpu.idtr_base,
           cpu.efer, cpu.cr4, cpu.cr3, cpu.cr0,
           cpu.rflags if cpu.lf is None else cpu.rflags & ~ARITH | arith_flags(cpu.lf),   # get_rflags
           next_rip, cpu.regs[4], cpu.regs[0])
    # ES, CS, SS, DS set aside with their 16 values (and below, the values
    # read from the area when its first 16 are those), unless a base is
    # 2**47 or more (it might not be canonical for _load_segment_values).
    keep = not (es.base | cs.base | ss.base | ds.base) >> 47
    if off is None and DIRECT and not hsave_pa & 0xFFF:
        off = bus.ram_offset(hsave_pa)
    if off is not None:
        buf = bus.ram.buf
        s = cpu.svm
        area = buf[off + _HOST_AT:off + _HOST_END]
        seen = s.hsave_seen
        # The values the area holds: those it held when VMRUN or #VMEXIT last
        # saw the same bytes, or read now.
        old = (seen[2] if seen is not None and seen[0] == off and seen[1] == area
               else _HOST_RAW(buf, off + _HOST_RAW_AT))
        same = True         # the area's first 16 values are the segments' (restore_host: by identity)
        if old != new:      # else the area holds these values already (a hypervisor's loop)
            span = _HOST_PACK(buf, off, old, new)     # often RFLAGS alone
            if span is not None:
                for watch in bus.write_watchers:
                    watch(off + span[0], span[1] - span[0])
            area = buf[off + _HOST_AT:off + _HOST_END]
            old = _HOST_RAW(buf, off + _HOST_RAW_AT)
            # The segments' run unwritten: it held their values (no value cut).
            same = HOST_RUNS.exact and (span is None or span[0] >= _HOST_SEGS_END)
        s.hsave_seen = (off, area, old)
        s.host_segs = (es, cs, ss, ds, new[:16], old if same else None) if keep else None
        return
    cpu.svm.host_segs = (es, cs, ss, ds, new[:16], None) if keep else None
    area = _hsave_page(bus, hsave_pa)
    vals = HOST_PACKED.unpack(area, -HOST_PACKED.start)
    for i, value, mask in zip(_HOST_INDEX, new, _HOST_MASKS):
        vals[i] = value & mask
    HOST_PACKED.pack_into(area, -HOST_PACKED.start, vals)
    bus.write_bytes(hsave_pa + HOST_PACKED.start, area)


def restore_host(cpu, hsave) -> None:
    """#VMEXIT "reload host state" (APM 15.6): the saved registers, CPL 0,
    CR0.PE forced to 1, DR7 = 400h (all breakpoints off), RFLAGS.TF kept,
    RF clear (the VMRUN instruction has completed).  ``hsave``: the host
    save area's physical address (or a VmcbView of it).  The caller
    recomputes the mode (Cpu.update_mode) afterwards."""
    off = cpu.bus.ram_offset(hsave) if isinstance(hsave, int) and DIRECT and not hsave & 0xFFF else None
    if off is not None:
        buf = cpu.bus.ram.buf
        seen = cpu.svm.hsave_seen
        if seen is not None and seen[0] == off and seen[1] == buf[off + _HOST_AT:off + _HOST_END]:
            vals = seen[2]                 # the bytes VMRUN left: the values it saw in them
        else:
            vals = HOST_RUNS.unpack(buf, off)
    elif isinstance(hsave, int):
        raw = HOST_PACKED.unpack(cpu.bus.read_bytes(hsave + HOST_PACKED.start,
                                                    HOST_PACKED.end - HOST_PACKED.start),
                                 -HOST_PACKED.start)
        vals = [raw[i] for i in _HOST_INDEX]
    else:
        vals = [hsave[n] for n in HOST_FIELDS]
    efer, cr4, cr3, cr0, rflags, rip, rsp, rax = vals[20:]
    cr0 |= CR0_PE
    s = cpu.svm
    state = (efer, cr0, cr3, cr4, vals[5])
    if state != s.host_checked or not efer & EFER_LME:       # legacy PAE: PDPEs read each time
        reason = checks.check_host_state(*state, s.caps or checks.CpuCaps.from_cpu(cpu), cpu)
        if reason is not None:
            raise Shutdown(f"#VMEXIT: illegal host state: {reason.message} (APM vol 2, 15.6)")
        s.host_checked = state
    cpu.efer = efer
    cpu.cr0 = cr0
    cpu.cr4 = cr4
    cpu.cr3 = cr3
    stash = s.host_segs
    s.host_segs = None
    if stash is not None and (stash[5] is vals or vals[:16] == stash[4]):
        # _load_segment_values' reuse of the Segment objects VMRUN set aside, inlined.
        segs = cpu.segs
        segs[:4] = stash[:4]                   # ES, CS, SS, DS
        gdtr, idtr = vals[17], vals[19]
        if (gdtr | idtr) >> 47:                 # maybe not canonical (15.6): the general way
            _load_segment_values(cpu, vals, stash)
        else:
            cpu.gdtr_limit, cpu.gdtr_base, cpu.idtr_limit, cpu.idtr_base = vals[16], gdtr, vals[18], idtr
    else:
        _load_segment_values(cpu, vals, stash)
    cpu.cpl = 0
    # VMRUN completed: RF is 0 after it.  Cpu.set_rflags without its mode
    # update: both callers recompute the mode (update_mode) after this.
    cpu.lf = None
    cpu.rflags = (rflags & ~(VM | RF) & WRITABLE) | FIXED1
    cpu.rip = rip
    cpu.regs[4] = rsp
    cpu.regs[0] = rax
    cpu.dr[7] = 0x400
    cpu.debugctl = cpu.msr.get(0x1D9, 0) & 3


def _load_guest(cpu, v: VmcbView) -> None:
    """Guest state from the VMCB save area (APM vol 3 VMRUN, "load guest state")."""
    segs = _SEG_GET(v) if type(v) is VmcbPage else None
    _load_guest_values(cpu, v["EFER"], v["CR0"], v["CR4"], v["CR3"], v["CR2"], segs, v["RFLAGS"],
                       v["RIP"], v["RSP"], v["RAX"], v["DR7"], v["DR6"], v["CPL"], v)


def _load_guest_values(cpu, efer, cr0, cr4, cr3, cr2, segs, rflags, rip, rsp, rax, dr7, dr6, cpl,
                       v=None) -> None:
    """_load_guest from the values; ``segs``: the 20 segment values in
    _segment_values' order, or None to read them from ``v``.  The guest's
    Segment objects set aside at the last #VMEXIT are reused if the values
    are theirs."""
    stash = cpu.svm.guest_segs
    cpu.svm.guest_segs = None
    # LMA follows LME and paging: svmsim never holds an LMA that contradicts them.
    efer = efer & ~EFER_LMA | (EFER_LMA if efer & EFER_LME and cr0 & CR0_PG else 0)
    cpu.efer = efer
    cpu.cr0 = cr0
    cpu.cr4 = cr4
    cpu.cr3 = cr3
    cpu.cr2 = cr2
    if segs is not None:
        _load_segment_values(cpu, segs, stash)
    else:
        _load_segments(cpu, v)
    cpu.set_rflags(rflags)
    cpu.rip = rip
    cpu.regs[4] = rsp
    cpu.regs[0] = rax
    cpu.dr[7] = (dr7 & 0xFFFFFFFF) | 0x400
    cpu.dr[6] = (dr6 & 0xFFFFFFFF)
    cpl &= 3
    if not cr0 & CR0_PE:
        cpl = 0
    elif rflags & VM:
        cpl = 3
    cpu.cpl = cpl


def _save_guest(cpu, v, rip: int) -> None:
    """#VMEXIT "save guest state to VMCB" (APM 15.6)."""
    regs = (cpu.efer, cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.get_rflags(), rip, cpu.regs[4],
            cpu.regs[0], cpu.dr[7], cpu.dr[6], cpu.cpl)
    if type(v) is VmcbPage:
        vals = dict(zip(_SEG_NAMES, _segment_values(cpu)))
        vals.update(zip(_GUEST_NAMES, regs))
        for name, mask in _GUEST_MASKS:
            vals[name] &= mask
        v.set_many(vals)
        return
    _save_segments(cpu, v)
    for name, value in zip(_GUEST_NAMES, regs):
        v[name] = value


_SEG_NAMES = HOST_FIELDS[:20]
_G_PAT_OFFSET = field("G_PAT").offset
_CLEAN_G_PAT = clean.CLEAN_INDEX["G_PAT"]      # clean.refresh's index of G_PAT
_GUEST_NAMES = ("EFER", "CR0", "CR2", "CR3", "CR4", "RFLAGS", "RIP", "RSP", "RAX", "DR7", "DR6", "CPL")
_GUEST_MASKS = tuple((n, field(n).mask) for n in _SEG_NAMES + _GUEST_NAMES)
_WORDS = itemgetter(*WORD_NAMES)
_SEG_GET = itemgetter(*_SEG_NAMES)
# INT_CTL's sub-fields (table B-1, 060h), read at every VMRUN.
_INT_CTL = tuple((f.name, f.bit, f.mask) for f in CHILDREN["INT_CTL"])


# ---------------------------------------------------------------- control area
_IC = {f.name: f.bit for f in CHILDREN["INT_CTL"]}
_IC_TPR, _IC_V_IRQ, _IC_PRIO, _IC_IGN_TPR = _IC["V_TPR"], _IC["V_IRQ"], _IC["V_INTR_PRIO"], _IC["V_IGN_TPR"]
_IC_MASKING, _IC_VGIF_EN, _IC_VGIF = _IC["V_INTR_MASKING"], _IC["V_GIF_ENABLE"], _IC["V_GIF"]
_IC_VNMI_EN, _IC_VNMI_P, _IC_VNMI_B = _IC["V_NMI_ENABLE"], _IC["V_NMI_PENDING"], _IC["V_NMI_BLOCKING"]
_PRIO_MASK = field("V_INTR_PRIO").mask
_NP_BIT = field("NP_ENABLE").bit
_SEV_BIT, _SYSCFG = field("SEV_ENABLE").bit, 0xC0010010
_LBRV_BIT, _VVMSAVE_BIT = field("LBR_VIRTUALIZATION_ENABLE").bit, field("V_VMSAVE_VMLOAD_ENABLE").bit


def _load_control(cpu, v):
    _load_control_values(cpu, _WORDS(v), v["IOPM_BASE_PA"], v["MSRPM_BASE_PA"], v["GUEST_ASID"],
                         v["TSC_OFFSET"], v["INT_CTL"], v["V_INTR_VECTOR"], v["PAUSE_FILTER_COUNT"],
                         v["PAUSE_FILTER_THRESHOLD"], v["MISC_CTL"], v["MISC_CTL2"])


def _load_control_values(cpu, words, iopm, msrpm, asid, tsc_offset, ic, vector, pause_count,
                         pause_threshold, misc, misc2):
    """Load the control area (APM vol 3 VMRUN, "load control information")
    from its whole fields."""
    _apply_control(cpu.svm, _control_state(cpu, words, iopm, msrpm, asid, tsc_offset, ic, vector,
                                           pause_count, pause_threshold, misc, misc2))


def _control_state(cpu, words, iopm, msrpm, asid, tsc_offset, ic, vector, pause_count,
                   pause_threshold, misc, misc2) -> tuple:
    """What VMRUN loads into the SvmState from the control area's whole
    fields, in _apply_control's order; the sub-fields (INT_CTL's,
    NP_ENABLE, ...) are taken out here by their positions in the table
    (vmcb.py).  Depends on the fields, the CPU's features, the host's mode
    (cpu.bits) and SYSCFG."""
    feats = cpu.svm.feats
    vnmi = bool(ic >> _IC_VNMI_EN & 1) and "vnmi" in feats
    np_enable = bool(misc >> _NP_BIT & 1) and "npt" in feats
    # Virtual VMSAVE/VMLOAD: "This enable bit is only recognized when the
    # hypervisor is in 64 bit mode, nested paging is enabled and Secure
    # Encrypted Virtualization is disabled, otherwise attempted execution of
    # a VMLOAD or VMSAVE in the guest will result in a #VMEXIT with a
    # VMSAVE/VMLOAD exit code" (APM 15.33.1).  The CPU still holds the
    # host's mode here.
    vls = bool(misc2 >> _VVMSAVE_BIT & 1) and "v_vmsave_vmload" in feats
    sev = misc >> _SEV_BIT & 1 and cpu.msr.get(_SYSCFG, 0) >> 23 & 1
    usable = vls and np_enable and cpu.bits == 64 and not sev
    return (words, iopm & ~0xFFF, msrpm & ~0xFFF, asid, tsc_offset,
            ic >> _IC_TPR & 0xF, bool(ic >> _IC_V_IRQ & 1), ic >> _IC_PRIO & _PRIO_MASK,
            bool(ic >> _IC_IGN_TPR & 1), bool(ic >> _IC_MASKING & 1), vector,
            pause_count, pause_count, pause_threshold, None, np_enable,
            bool(ic >> _IC_VGIF_EN & 1) and "vgif" in feats, bool(ic >> _IC_VGIF & 1),
            vnmi, vnmi and bool(ic >> _IC_VNMI_P & 1), vnmi and bool(ic >> _IC_VNMI_B & 1),
            bool(misc2 >> _LBRV_BIT & 1) and "lbrv" in feats, usable, vls and not usable)


def _apply_control(s, values) -> None:
    """Set what _control_state gives (one assignment: no name look-ups)."""
    (s.words, s.iopm_pa, s.msrpm_pa, s.asid, s.tsc_offset, s.v_tpr, s.v_irq, s.v_intr_prio,
     s.v_ign_tpr, s.v_intr_masking, s.v_intr_vector, s.pause_initial, s.pause_count,
     s.pause_threshold, s.pause_last, s.np_enable, s.v_gif_enable, s.v_gif, s.v_nmi_enable,
     s.v_nmi_pending, s.v_nmi_blocking, s.lbr_virt, s.v_vmsave_vmload, s.vls_exit) = values


def _write_back_control(cpu, v):
    """Fields the guest can change that #VMEXIT writes back (APM 15.6, 15.21)."""
    v["INT_CTL"], v["INT_STATE"] = _control_words(cpu, v["INT_CTL"], v["INT_STATE"])


def _control_words(cpu, int_ctl: int, int_state: int) -> tuple:
    """INT_CTL and INT_STATE as #VMEXIT writes them back.  "If a #VMEXIT
    occurs during the virtual NMI delivery, EXITINTINFO is set appropriately
    and V_NMI_MASK is saved as 0" (15.21.10)."""
    s = cpu.svm
    # _put of V_TPR and V_IRQ, and below of the shadow and GIM bits, unrolled.
    int_ctl = (int_ctl & _KEEP_TPR_IRQ | (s.v_tpr << _TPR_AT) & _TPR_MASK
               | (_V_IRQ_BIT if s.v_irq else 0))
    # The pause-filter count is internal: VMRUN reloads it, nothing writes it back.
    if s.v_gif_enable:
        int_ctl = _put(int_ctl, _V_GIF, s.v_gif)
    if s.v_nmi_enable:
        int_ctl = _put(_put(int_ctl, _V_NMI_P, s.v_nmi_pending), _V_NMI_B,
                       s.v_nmi_blocking and not s.vnmi_delivery)
    # Table B-1, 68h bit 1: the guest's RFLAGS.IF, "written back to the VMCB on
    # #VMEXIT": how a hypervisor sees it for an SEV-ES guest.
    int_state = (int_state & _KEEP_SHADOW_GIM | (_SHADOW_BIT if cpu.shadow or cpu.in_shadow else 0)
                 | (_GIM_BIT if cpu.rflags & IF else 0))
    return int_ctl, int_state


def _put(word: int, sub: tuple, value) -> int:
    """``word`` with the sub-field ``sub`` (bit, mask in place) set to ``value``."""
    bit, m = sub
    return word & ~m | (int(value) << bit) & m


def _merge(word: int, values) -> int:
    """``word`` with the named sub-fields replaced."""
    for name, value in values:
        word = _put(word, _SUB[name], value)
    return word


_SUB = {f.name: (f.bit, f.mask << f.bit) for f in (*CHILDREN["INT_CTL"], *CHILDREN["INT_STATE"])}
_V_TPR, _V_IRQ, _V_GIF = _SUB["V_TPR"], _SUB["V_IRQ"], _SUB["V_GIF"]
_V_NMI_P, _V_NMI_B = _SUB["V_NMI_PENDING"], _SUB["V_NMI_BLOCKING"]
_SHADOW, _GIM = _SUB["INTERRUPT_SHADOW"], _SUB["GUEST_INTERRUPT_MASK"]
_KEEP_TPR_IRQ = ~(_V_TPR[1] | _V_IRQ[1])
_KEEP_SHADOW_GIM = ~(_SHADOW[1] | _GIM[1])
# The one-bit sub-fields as their bit in the word, V_TPR's position and mask.
_TPR_AT, _TPR_MASK = _V_TPR
_V_IRQ_BIT, _SHADOW_BIT, _GIM_BIT = (1 << _V_IRQ[0]) & _V_IRQ[1], (1 << _SHADOW[0]) & _SHADOW[1], \
    (1 << _GIM[0]) & _GIM[1]
assert _V_IRQ_BIT and _SHADOW_BIT and _GIM_BIT


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
def _tlb_control(cpu, value: int, asid: int, host_key=None, guest_key=None) -> None:
    """TLB_CONTROL (APM 15.16.1): 0 nothing, 1 flush every ASID, 3 this
    guest's ASID, 7 this guest's non-global entries; other values are
    reserved (svmsim flushes everything for them, the safe reading).  The
    translations a walk made now would give again are kept, the guest's
    (``guest_key``: fast_key of the guest just loaded) and (``host_key``:
    the host's fast-set key) the host's (cpu/tlbkeep.py)."""
    tlb = cpu.tlb
    if value == 0:
        return
    checks = _keep_checks(cpu, guest_key, host_key if value not in (3, 7) else None)
    drops = cpu.machine.pt_watch.drops
    if value == 3:
        tlb.flush_keeping("tlb_control", checks, drops, asid)
    elif value == 7:
        tlb.flush_keeping("tlb_control", checks, drops, asid, keep_global=True)
    else:
        if value != 1:
            cpu.machine.note(f"VMRUN with reserved TLB_CONTROL {value:#x}: svmsim flushes the whole TLB")
        tlb.flush_keeping("tlb_control", checks, drops)


def _keep_checks(cpu, guest_key, host_key):
    """The contexts whose translations a TLB_CONTROL flush may keep: the
    guest being entered (its current fast set, whose key is ``guest_key``),
    the host (its fast set put aside under ``host_key``).

    The same list as last time when everything it is made from is the same
    (a hypervisor's loop: TLB_CONTROL = 1 at every VMRUN): the two keys
    (the TLB tags, CR3, CR4, EFER of both worlds, nested paging's inputs;
    a key is None for SEV, AVIC, the RMP and watchpoints), the walk memos
    the checks read (their identity: set_maxphyaddr makes a new one), the
    NestedMmu (its sev flag and walkers), the watch's generation, the
    paging flag of the last mode update, the RMP's state and tlbkeep.ENABLED -- every input
    of tlbkeep.walk_check, NestedMmu.keep_check and tlbkeep.host_check."""
    s = cpu.svm
    npt = cpu.npt
    machine = cpu.machine
    gen = machine.pt_watch.gen
    wmemo = cpu.walker.memo
    m = s.keep_memo
    if (m is not None and m[0] == guest_key and m[1] == host_key and m[2] == gen and m[3] is npt
            and m[4] is wmemo and m[5] == cpu.paging and m[6] == tlbkeep.ENABLED
            and m[7] == machine.rmp.enabled
            and (npt is None or m[8] is npt.guest.memo and m[9] is npt.nested.memo)):
        return m[10]
    out = _make_keep_checks(cpu, guest_key, host_key)
    s.keep_memo = (guest_key, host_key, gen, npt, wmemo, cpu.paging, tlbkeep.ENABLED, machine.rmp.enabled,
                   None if npt is None else npt.guest.memo, None if npt is None else npt.nested.memo,
                   out)
    return out


def _make_keep_checks(cpu, guest_key, host_key):
    """_keep_checks' list, made."""
    out = []
    if tlbkeep.ENABLED and guest_key is not None:
        npt = cpu.npt
        valid = (npt.keep_check() if npt is not None else
                 tlbkeep.walk_check(cpu.walker, cpu.machine.pt_watch, cpu.cr3, cpu.cr4, cpu.efer))
        if valid is not None:
            out.append((None, (cpu.tlb.asid, cpu.tlb.pcid), valid))
    host = tlbkeep.host_check(cpu, host_key)
    if host is not None:
        out.append(host)
    return out


def fast_key(cpu):
    """What the CPU's fast access caches (cpu/tlb.py) were filled under, so
    a world switch can keep them aside: the TLB tag, CR3 and the paging
    controls, and nested paging's setup.  None (not kept) when more goes
    into them: SEV keys, AVIC's backing page, the RMP, watchpoints."""
    if cpu.watch or cpu.machine.rmp.enabled:
        return None
    cr4 = cpu.cr4
    if cpu.svm_guest:
        s = cpu.svm
        if s.sev or s.avic:
            return None
        npt = cpu.npt
        nested = None if npt is None else (npt.n_cr3, npt.host_cr4, npt.host_efer, npt.gmet)
        return (s.asid, cpu.cr3, cpu.cr0, cr4, cpu.efer, nested)
    return (0, cpu.cr3, cpu.cr0, cr4, cpu.efer, cpu.sev_asid, cpu.enc_mask)


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
    s = cpu.svm
    s.vmcb_pa = vmcb_pa
    s.host_if = bool(cpu.rflags & IF)
    save_host(cpu, bus, hsave_pa, ins.next_ip)
    s.vmruns += 1
    if s.caps is None:
        from . import features
        s.caps = checks.CpuCaps.from_cpu(cpu)
        s.feats = frozenset(f for f in features.IMPLEMENTED if features.enabled(cpu, f))
        s.caps_es = bool(cpu.machine.profile.extra.get("sev", {}).get("es"))
    g, reason = v, None          # g: where the guest state is (the VMSA for SEV-ES)
    if sev_checks.es_requested(v, cpu):
        g, reason = sev_es.enter(cpu, v)
    if reason is None:
        reason = checks.check_guest_state(g, s.caps, cpu, s if g is v else None)
    if reason is not None:
        clean.forget(cpu)
        invalid_exit(cpu, VmcbPage(page), hsave_pa, reason)
        return
    _load_control(cpu, v)
    host_cr4, host_efer = cpu.cr4, cpu.efer
    host_key = fast_key(cpu)
    _load_guest(cpu, g)
    s.sev = sev_checks.sev_active(v, cpu)
    s.es = g is not v
    cpu.sev_asid = s.asid if s.sev else 0
    if s.es:
        s.vmsa_pa = sev_es.vmsa_spa(cpu, v)
        sev_es.load_guest(cpu, g)
    if s.caps_es:
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
    tlb.switch(s.asid, pcid, keep_fast=True)
    guest_key = fast_key(cpu)
    tlb.select_fast(host_key, guest_key)
    _tlb_control(cpu, v["TLB_CONTROL"], s.asid, host_key, guest_key)
    cpu.update_mode()
    cpu.gif = True
    cpu.pending = True
    eventinj = v["EVENTINJ"]
    if cpu.machine.listeners:
        cpu.machine.svm_event(cpu, "vmrun", {"vmcb": vmcb_pa, "asid": s.asid, "rip": cpu.rip,
                                             "eventinj": eventinj})
    if eventinj & exits.EVENT_V:
        inject(cpu, eventinj, v["NRIP"])
    else:
        _rip_limit_check(cpu)


def _rip_limit_check(cpu) -> None:
    """A loaded rIP beyond the CS limit is a #GP at the first fetch, not bad
    state: "It is possible for the VMRUN instruction to load a guest rIP that
    is outside the limit of the guest code segment ... a #GP fault is
    delivered inside the guest; the rIP falling outside the limit of the guest
    code segment is not considered illegal guest state" (APM 15.5.1), and "If
    the host's rIP reloaded by #VMEXIT is outside the limit of the host's code
    segment ... a #GP fault is delivered inside the host" (APM 15.6).  The
    engine checks the limit on control transfers, not on each fetch, so the
    two loads check it here.  (A non-canonical rIP in 64-bit mode faults at
    the fetch already.)"""
    if cpu.bits != 64 and cpu.rip > cpu.segs[CS].limit:
        interrupts.deliver(cpu, 13, interrupts.HWEXC, 0)


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
    vector = ev.vector
    nmi_blocked = cpu.nmi_blocked
    if ev.type == exits.EVENT_NMI:
        vector = 2                       # "If TYPE is 2 (NMI), the VECTOR field is ignored" (15.20)
    try:
        interrupts.deliver_with_escalation(cpu, vector, kind, ev.error_code, injected=value)
        if ev.type == exits.EVENT_NMI:
            # "An injected NMI does not block delivery of further NMIs" (15.20)
            cpu.nmi_blocked = nmi_blocked
    except VmExit as e:
        cpu.rip = rip
        vmexit_from(cpu, e)
    except CpuException as e:
        # A fault while delivering an injected software interrupt: reported
        # at the guest RIP like the instruction's own fault.
        cpu.rip = rip
        interrupts.deliver_exception(cpu, e)


# ---------------------------------------------------------------- #VMEXIT
def invalid_exit(cpu, v: VmcbPage, hsave_pa: int, reason) -> None:
    """#VMEXIT(VMEXIT_INVALID): nothing of the guest was loaded; the host
    continues after VMRUN with GIF = 0 (APM 15.5.1).  svmsim records why.
    ``v``: the VMCB page copy, written back here."""
    cpu.svm.invalid.append(reason)
    v["EXITCODE"] = exits.to_vmcb(ExitCode.INVALID)
    v["EXITINFO1"] = 0
    v["EXITINFO2"] = 0
    v["EXITINTINFO"] = 0
    cpu.bus.write_bytes(cpu.svm.vmcb_pa, v.flush())
    _count(cpu, int(ExitCode.INVALID))
    cpu.machine.svm_event(cpu, "vmexit", {"code": int(ExitCode.INVALID), "name": "INVALID",
                                          "info1": 0, "info2": 0, "rip": v["RIP"],
                                          "asid": v["GUEST_ASID"], "reason": reason.as_dict(),
                                          "message": str(reason)})
    restore_host(cpu, hsave_pa)
    cpu.gif = False
    cpu.update_mode()
    _rip_limit_check(cpu)


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


def vmexit(cpu, code: int, info1: int = 0, info2: int = 0, rip=None, nrip: int = 0, *,
           exitintinfo: int = 0, insn: bytes = b"", fetch: bool = False, detail: str = "") -> None:
    """Leave the guest (APM 15.6).  ``fetch``: an #NPF on an instruction
    fetch, which records no instruction bytes (15.8.4)."""
    s = cpu.svm
    feats = s.feats
    bus = cpu.bus
    guest_rip = cpu.rip if rip is None else rip
    # The guest PAT goes back to G_PAT with the rest of the guest paging
    # state (15.25.2, 15.25.4); without nested paging there is one PAT.
    gpat = cpu.msr.get(PAT_MSR, PAT_RESET) if cpu.npt is not None else None
    es = s.es
    if es and code in sev_es.ADVANCES_RIP:
        guest_rip = nrip                           # table 15-33: "HW Advances RIP"
    nrips = "nrips" in feats and not es
    # An SEV-ES guest's instruction bytes are never saved (15.35.4).
    decode = "decode_assists" in feats and not es
    if decode and code == ExitCode.NPF and not insn and not fetch:
        from .events import fetch_insn_bytes
        insn = fetch_insn_bytes(cpu)
    msr = cpu.msr
    off = None if es or s.lbr_virt or not DIRECT else bus.ram_offset(s.vmcb_pa)
    if off is not None:
        _exit_ram(cpu, bus, off, guest_rip, code & MASK64, info1 & MASK64, info2 & MASK64,
                  exitintinfo & MASK64, nrip & MASK64 if nrips else None, insn if decode else None,
                  msr[GHCB_MSR] if GHCB_MSR in msr else None)
        if gpat is not None:
            # G_PAT, written only where it changed (usually not: the guest's
            # PAT is what VMRUN loaded); unchanged bytes need no notice (_exit_ram).
            raw = (gpat & MASK64).to_bytes(8, "little")
            at = off + _G_PAT_OFFSET                # the VMCB is one 4 KiB page of RAM
            buf = bus.ram.buf
            if buf[at:at + 8] != raw:
                buf[at:at + 8] = raw
                for watch in bus.write_watchers:
                    watch(at, 8)
            cache = s.clean_cache
            if cache:
                cache[_CLEAN_G_PAT] = gpat
    else:
        info = {"EXITCODE": code & MASK64, "EXITINFO1": info1 & MASK64, "EXITINFO2": info2 & MASK64,
                "EXITINTINFO": exitintinfo & MASK64}
        if nrips:
            info["NRIP"] = nrip & MASK64
        if decode:
            info["INSN_LEN"] = len(insn)
            if insn:
                info["INSN_BYTES"] = int.from_bytes(insn.ljust(15, b"\0"), "little")
        if GHCB_MSR in msr:
            info["GHCB_GPA"] = msr[GHCB_MSR]
        page = _page(bus, s.vmcb_pa)
        v = clean.view_for_exit(cpu, page)
        g = sev_es.exit_view(cpu, v) if s.es else v
        _save_guest(cpu, g, guest_rip)
        if gpat is not None:
            g["G_PAT"] = gpat
        _write_back_control(cpu, v)
        if s.lbr_virt:
            _lbr_switch(cpu, s.host_lbr, g)
        if s.es:
            sev_es.save_guest(cpu, g)
            if s.snp:
                _snp_exit_info(g, code, info1, info2, exitintinfo, nrip)
                v["GUEST_SEV_FEATURES"] = g["SEV_FEATURES"]
            sev_es.write_back(cpu)
        if s.es and code == ExitCode.VMGEXIT and g["SEV_FEATURES"] >> _VMGEXIT_PARAMETER & 1:
            # 15.35.6: "the RAX and the CPL values are written to the VMCB
            # control area on VMGEXIT at offsets 110h ... and 118h".
            info["VMGEXIT_RAX"], info["VMGEXIT_CPL"] = cpu.regs[0], cpu.cpl
        info["EVENTINJ"] = v["EVENTINJ"] & ~exits.EVENT_V
        v.set_many(info)
        bus.write_bytes(s.vmcb_pa, v.flush())
    ex = s.exits                                     # _count, inlined (hot path)
    ex[code] = ex.get(code, 0) + 1
    machine = cpu.machine
    if machine.listeners:
        machine.svm_event(cpu, "vmexit", {"code": code, "name": exits.exit_name(code),
                                          "info1": info1, "info2": info2,
                                          "exitintinfo": exitintinfo, "rip": guest_rip,
                                          "asid": s.asid, "detail": detail})
    guest_key = fast_key(cpu)
    if gpat is not None:
        cpu.msr[PAT_MSR] = s.host_pat
    cpu.svm_guest = False
    cpu.npt = None
    cpu.sev_asid = 0
    cpu.gif = False
    cpu.shadow = False
    cpu.halted = False
    hsave_pa = cpu.msr.get(VM_HSAVE_PA, 0)
    restore_host(cpu, hsave_pa)
    if s.es:
        sev_es.restore_host(cpu, _page(bus, hsave_pa))
        s.es, s.vmsa, s.snp, s.vmpl = False, None, False, 0
    s.in_use = _NONE_IN_USE
    cr3, cr4 = cpu.cr3, cpu.cr4
    cpu.tlb.switch(0, cr3 & 0xFFF if cr4 & (1 << 17) else 0, True)     # keep_fast
    # fast_key of the host, inlined (hot path)
    host_key = (None if cpu.watch or machine.rmp.enabled
                else (0, cr3, cpu.cr0, cr4, cpu.efer, cpu.sev_asid, cpu.enc_mask))
    cpu.tlb.select_fast(guest_key, host_key)
    cpu.update_mode()
    # No interrupt check asked for (cpu.pending): GIF is 0 now, so nothing is
    # taken between instructions (15.17) until STGI or VMRUN sets GIF, and
    # both ask for one; interrupts.service would only find GIF = 0.
    if s.host_step:
        # The single-step trap of VMRUN is taken in the host, on the
        # instruction after VMRUN, once the guest has exited.
        s.host_step = False
        cpu.dr[6] |= 0x4000                  # DR6.BS
        interrupts.deliver(cpu, 1, interrupts.HWEXC, None)
    elif cpu.bits != 64:
        _rip_limit_check(cpu)


# What #VMEXIT writes into the VMCB of a guest without SEV-ES or LBR
# virtualization, straight into RAM with one pack per run of adjacent
# fields: the guest state (in offset order), the written-back controls and
# the exit information; the optional exit fields one by one.
_EXIT_GUEST_NAMES = (*_SEG_NAMES, "CPL", "EFER", "CR4", "CR3", "CR0", "DR7", "DR6", "RFLAGS", "RIP",
                     "RSP", "RAX", "CR2")
# The control fields #VMEXIT writes, in offset order, before the guest
# state: one Runs per combination of the optional ones (GHCB_GPA; NRIP with
# NRIP saving; INSN_LEN with decode assists).  INSN_BYTES (15 bytes) is
# written on its own.
_EXIT_RUNS = {}
for _g in (False, True):
    for _n in (False, True):
        for _i in (False, True):
            _EXIT_RUNS[_g, _n, _i] = Runs(
                ("INT_CTL", "INT_STATE", "EXITCODE", "EXITINFO1", "EXITINFO2", "EXITINTINFO")
                + ("GHCB_GPA",) * _g + ("EVENTINJ",) + ("NRIP",) * _n + ("INSN_LEN",) * _i
                + _EXIT_GUEST_NAMES)
del _g, _n, _i
_EXIT_EVENTINJ = {k: r.names.index("EVENTINJ") for k, r in _EXIT_RUNS.items()}
_INSN_BYTES = field_packer("INSN_BYTES")
_INSN_BYTES_AT = (field("INSN_BYTES").offset, field("INSN_BYTES").end)
# The written guest fields a clean bit covers fill one slice of the clean-bit
# copy (clean.CLEAN_NAMES lists them by clean bit, control-area fields first;
# none between them is left unwritten): _EXIT_CLEAN_AT, and a getter of their
# values from the guest values.  INT_CTL's position.
_ci = sorted((clean.CLEAN_INDEX[n], i) for i, n in enumerate(_EXIT_GUEST_NAMES)
             if n in clean.CLEAN_INDEX)
_EXIT_CLEAN_AT = slice(_ci[0][0], _ci[-1][0] + 1)
assert [c for c, _ in _ci] == list(range(_ci[0][0], _ci[-1][0] + 1)), "clean-bit copy order"
_EXIT_CLEAN = itemgetter(*(i for _, i in _ci))
# All three optional fields written: the Runs, where EVENTINJ and the guest
# state start in its values, and the clean-bit getter from those values.
_EXIT_RUNS_ALL = _EXIT_RUNS[True, True, True]
_ALL_EVENTINJ = _EXIT_EVENTINJ[True, True, True]
_ALL_AT = len(_EXIT_RUNS_ALL.names) - len(_EXIT_GUEST_NAMES)
assert _EXIT_RUNS_ALL.names[_ALL_AT:] == _EXIT_GUEST_NAMES and _ALL_EVENTINJ == 7
_ALL_CLEAN = itemgetter(*(_ALL_AT + i for _, i in _ci))
_ALL_RAW, _ALL_RAW_AT = _EXIT_RUNS_ALL.unpack_at, _EXIT_RUNS_ALL.start
_ALL_PACK = _EXIT_RUNS_ALL.pack_changed
_CLEAN_INT_CTL = clean.CLEAN_INDEX["INT_CTL"]
assert (ES, CS, SS, DS) == (0, 1, 2, 3)                  # _segment_values takes segs[:4]
del _ci


def _exit_ram(cpu, bus, off: int, guest_rip: int, code: int, info1: int, info2: int,
              exitintinfo: int, nrip, insn, ghcb) -> None:
    """#VMEXIT's VMCB writes into the page at RAM offset ``off``: the
    written-back controls, the exit information and the guest state, with
    one read of what the VMCB holds and one pack per run of adjacent fields
    whose values differ from it (a loop's guest usually changes RIP alone:
    the same bytes as writing every field); the clean-bit copy follows every
    written field it holds.  ``nrip`` (NRIP saving), ``insn`` (decode
    assists: the bytes, maybe none) and ``ghcb`` (GHCB_GPA) are None when
    not written."""
    buf = bus.ram.buf
    es, cs, ss, ds = cpu.segs[:4]
    if ghcb is not None and nrip is not None and insn is not None:
        # Every optional field written (a CPU with SEV-ES, NRIP saving and
        # decode assists): the values in one tuple, the guest's from _ALL_AT.
        old = _ALL_RAW(buf, off + _ALL_RAW_AT)
        int_ctl, int_state = _control_words(cpu, old[0], old[1])
        vals = (int_ctl, int_state, code, info1, info2, exitintinfo, ghcb,
                old[_ALL_EVENTINJ] & ~exits.EVENT_V, nrip, len(insn),
                es.sel, es.attr, es.limit, es.base, cs.sel, cs.attr, cs.limit, cs.base,
                ss.sel, ss.attr, ss.limit, ss.base, ds.sel, ds.attr, ds.limit, ds.base,
                cpu.gdtr_limit, cpu.gdtr_base, cpu.idtr_limit, cpu.idtr_base,
                cpu.cpl, cpu.efer, cpu.cr4, cpu.cr3, cpu.cr0, cpu.dr[7], cpu.dr[6],
                cpu.rflags if cpu.lf is None else cpu.rflags & ~ARITH | arith_flags(cpu.lf),   # get_rflags
                guest_rip, cpu.regs[4], cpu.regs[0], cpu.cr2)
        span = _ALL_PACK(buf, off, old, vals)
        segs16, clean = vals[_ALL_AT:_ALL_AT + 16], _ALL_CLEAN
    else:
        kind = (ghcb is not None, nrip is not None, insn is not None)
        runs = _EXIT_RUNS[kind]
        old = runs.unpack(buf, off)
        int_ctl, int_state = _control_words(cpu, old[0], old[1])
        head = (int_ctl, int_state, code, info1, info2, exitintinfo)
        if ghcb is not None:
            head += (ghcb,)
        head += (old[_EXIT_EVENTINJ[kind]] & ~exits.EVENT_V,)
        if nrip is not None:
            head += (nrip,)
        if insn is not None:
            head += (len(insn),)
        vals = (es.sel, es.attr, es.limit, es.base, cs.sel, cs.attr, cs.limit, cs.base,
                ss.sel, ss.attr, ss.limit, ss.base, ds.sel, ds.attr, ds.limit, ds.base,
                cpu.gdtr_limit, cpu.gdtr_base, cpu.idtr_limit, cpu.idtr_base,
                cpu.cpl, cpu.efer, cpu.cr4, cpu.cr3, cpu.cr0, cpu.dr[7], cpu.dr[6],
                cpu.get_rflags(), guest_rip, cpu.regs[4], cpu.regs[0], cpu.cr2)
        span = runs.pack_changed(buf, off, old, head + vals)
        segs16, clean = vals[:16], _EXIT_CLEAN
    if insn:
        _INSN_BYTES(buf, off, int.from_bytes(insn.ljust(15, b"\0"), "little"))
        span = _INSN_BYTES_AT if span is None else (min(span[0], _INSN_BYTES_AT[0]),
                                                    max(span[1], _INSN_BYTES_AT[1]))
    # ES, CS, SS, DS set aside with their 16 values, unless a base is 2**47
    # or more (it might not be canonical for _load_segment_values).
    cpu.svm.guest_segs = None if (es.base | cs.base | ss.base | ds.base) >> 47 else (es, cs, ss, ds, segs16)
    if span is not None:       # unchanged bytes need no notice (SMC, SEV lines: world.save_host)
        start, end = span
        for watch in bus.write_watchers:
            watch(off + start, end - start)
    cache = cpu.svm.clean_cache
    if cache:
        cache[_EXIT_CLEAN_AT] = clean(vals)
        cache[_CLEAN_INT_CTL] = int_ctl


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
