"""The world switch's common case, without per-field lookups (issue 14, item 1).

world.py holds the whole of VMRUN (APM vol 3 "VMRUN"; vol 2, 15.5) and
#VMEXIT (15.6), for every kind of guest.  A hypervisor resuming an ordinary
guest (no SEV, no SNP, its VMCB and host save area in RAM) changes few or
none of the fields VMRUN checks, so this module does the same work for that
case from the VMCB's bytes in RAM:

* the control area and the save area are read with one ``struct`` unpack
  each (packed.CONTROL_READER and ``_SAVE_READER`` below, compiled from the
  table in vmcb.py), every field then found by its position.  Of the save
  area only the fields this path uses are unpacked (41 of 67): those clean
  bits cover, those the consistency memo keys on, and the state VMRUN loads;
  FS, GS, TR, LDTR and the SYSCALL/SYSENTER MSRs are VMLOAD's (APM vol 3
  VMLOAD), VMRUN does not load them (15.5.1), nor SPEC_CTRL or VMPL;
* the clean-bit copy (15.15.3) is compared with the VMCB as one tuple: when
  they are equal no clean bit can change what VMRUN loads;
* the consistency checks (15.5.1) are not run when the values they read are
  those of the last VMRUN that passed (the memo of checks.check_guest_state,
  the same key); the PAE PDPE check, which reads memory, is not memoized, so
  a guest in legacy PAE paging takes world.vmrun;
* the host state goes to VM_HSAVE_PA with one pack per run of adjacent
  fields (packed.HOST_RUNS, world.save_host), as #VMEXIT's writes go to
  the VMCB (world._exit_ram).

Anything else (a first VMRUN of this VMCB with clean bits that differ, a
check that must run, SEV, SEV-ES, SNP's RMP, a VMCB outside RAM) goes to
world.vmrun before anything has changed, so both paths give the same
result; tests/test_svm_switch.py runs the SVM guests both ways.
"""
from operator import itemgetter

from ..cpu.flags import IF, VM, WRITABLE, FIXED1
from ..cpu.state import CR0_PE, CR0_PG, EFER_LMA, EFER_LME
from . import avic, checks, clean, exits, npt, world
from .packed import CONTROL_READER, ByteRuns, Reader
from .vmcb import BY_NAME, field, _LOOKUP
from .intercepts import WORD_NAMES
from .vmstate import canonical

CR4_PAE = 1 << 5
SYSCFG, HWCR = checks.SYSCFG_MSR, checks.HWCR_MSR
_LOADED = ("EFER", "CR0", "CR4", "CR3", "CR2", *world._SEG_NAMES,
           "RFLAGS", "RIP", "RSP", "RAX", "DR7", "DR6", "CPL")
# The save-area fields this module reads: clean-bit copy, memo key, loaded state.
_SAVE_USED = tuple(dict.fromkeys(n for n in (*clean.CLEAN_NAMES, *checks.MEMO_FIELDS, *_LOADED)
                                 if BY_NAME[n].area == "save"))
_SAVE_READER = Reader([BY_NAME[n] for n in _SAVE_USED])
C, S = CONTROL_READER.index, _SAVE_READER.index
_WHERE = {**{n: (0, i) for n, i in C.items()}, **{n: (1, i) for n, i in S.items()}}


def _getter(positions):
    """A function giving the tuple of the values at ``positions``."""
    if len(positions) == 1:
        p = positions[0]
        return lambda vals: (vals[p],)
    return itemgetter(*positions)


def _split(names):
    """Getters of ``names``' values from the control and the save area, for
    names listed control fields first."""
    ctrl = [n for n in names if n in C]
    save = [n for n in names if n in S]
    if tuple(ctrl + save) != tuple(names):
        raise AssertionError(f"{names}: control-area fields must come first")
    return (_getter([C[n] for n in ctrl]) if ctrl else lambda v: (),
            _getter([S[n] for n in save]) if save else lambda v: ())


_CLEAN_C, _CLEAN_S = _split(clean.CLEAN_NAMES)
_MEMO_C, _MEMO_S = _split(checks.MEMO_FIELDS)
_WORDS = _getter([C[n] for n in WORD_NAMES])
_CONTROL = itemgetter(*(C[n] for n in (
    "IOPM_BASE_PA", "MSRPM_BASE_PA", "GUEST_ASID", "TSC_OFFSET", "INT_CTL", "V_INTR_VECTOR",
    "PAUSE_FILTER_COUNT", "PAUSE_FILTER_THRESHOLD", "MISC_CTL", "MISC_CTL2")))
_GUEST = itemgetter(*(S[n] for n in _LOADED[:5]))
_SEGS = itemgetter(*(S[n] for n in world._SEG_NAMES))
_RFLAGS, _RIP, _RSP, _RAX, _DR7, _DR6, _CPL = (S[n] for n in ("RFLAGS", "RIP", "RSP", "RAX", "DR7",
                                                                "DR6", "CPL"))
_MISC, _INT_CTL, _INT_STATE = C["MISC_CTL"], C["INT_CTL"], C["INT_STATE"]
_CLEAN, _TLB_CONTROL, _EVENTINJ, _NRIP, _GHCB = (C["VMCB_CLEAN"], C["TLB_CONTROL"], C["EVENTINJ"],
                                                  C["NRIP"], C["GHCB_GPA"])
_EFER, _CR0, _CR4 = S["EFER"], S["CR0"], S["CR4"]
# MISC_CTL bits that ask for SEV or SEV-ES (world.vmrun handles those guests).
_SEV_BITS = (1 << field("SEV_ENABLE").bit) | (1 << field("SEV_ES_ENABLE").bit)
_AVIC_BIT = field("AVIC_ENABLE").bit
_SHADOW_BIT = field("INTERRUPT_SHADOW").bit
# The delta (issue 14): the fields a hypervisor changes between two VMRUNs of
# its loop (the guest's RIP, RSP, RAX, RFLAGS; NRIP for an injection) are
# read at each VMRUN (_VOLATILE, in offset order); the exit information
# VMRUN never reads (EXITCODE ... EXITINTINFO, INSN_LEN) is skipped; every
# other byte this path reads is compared as byte strings (_STABLE) with the
# bytes of the last VMRUN that took it.  None of the volatile fields is
# covered by a clean bit or keys the consistency checks' memo.
_VOLATILE_NAMES = ("NRIP", "RFLAGS", "RIP", "RSP", "RAX")
_UNREAD = ("EXITCODE", "EXITINFO1", "EXITINFO2", "EXITINTINFO", "INSN_LEN")
assert not set(_VOLATILE_NAMES + _UNREAD) & set(clean.CLEAN_NAMES + checks.MEMO_FIELDS)
_VOLATILE_READER = Reader([BY_NAME[n] for n in _VOLATILE_NAMES])
_STABLE_RUNS = ByteRuns([BY_NAME[n] for n in (*C, *S) if n not in _VOLATILE_NAMES + _UNREAD])
_VOLATILE, _STABLE = _VOLATILE_READER.unpack, _STABLE_RUNS.unpack
# The same struct reads without the Python call (buf, base + its first offset).
_VOLATILE_AT, _VOLATILE_RAW = _VOLATILE_READER.start, _VOLATILE_READER.unpack_at
_STABLE_AT, _STABLE_RAW = _STABLE_RUNS.start, _STABLE_RUNS.unpack_at
_WHERE_STABLE = {n: w for n, w in _WHERE.items() if n not in _VOLATILE_NAMES + _UNREAD}
_LATER = [None, False]        # LATER_CHECKS as last seen, and whether one of them is not memoized


class Fields:
    """The VMCB as VMRUN read it (the two unpacked areas), read by name like
    a VmcbView: for the code this module hands over to (nested paging,
    AVIC, LBR virtualization), which reads a few fields, all among those
    unpacked (a save-area field outside ``_SAVE_USED`` is a KeyError).
    ``where``: the fields it may give (_WHERE_STABLE: the areas as read by
    an earlier VMRUN, whose bytes the delta found unchanged)."""
    __slots__ = ("areas", "where")

    def __init__(self, ctrl, save, where=None):
        self.areas = (ctrl, save)
        self.where = _WHERE if where is None else where

    def __getitem__(self, name):
        f = _LOOKUP[name]
        area, i = self.where[f.parent or f.name]
        value = self.areas[area][i]
        return value >> f.bit & f.mask if f.parent else value

    def __contains__(self, name) -> bool:
        return name in _LOOKUP


def _later_unmemoized() -> bool:
    later = checks.LATER_CHECKS
    if _LATER[0] != later:
        _LATER[:] = [list(later), any(r not in checks.MEMO_LATER for r, _ in later)]
    return _LATER[1]


def vmrun(cpu, ins) -> None:
    """Execute VMRUN (its #UD/#GP checks and the guest-mode intercept have
    already been applied by the caller): here when it is the common case,
    else by world.vmrun."""
    s = cpu.svm
    bus = cpu.bus
    vmcb_pa = cpu.regs[0] & ((1 << (8 * ins.asize)) - 1)
    hsave_pa = cpu.msr.get(world.VM_HSAVE_PA, 0)
    off = bus.ram_offset(vmcb_pa)
    hoff = bus.ram_offset(hsave_pa)
    if (off is None or hoff is None or hsave_pa & 0xFFF or s.caps is None
            or cpu.machine.rmp.enabled or not world.DIRECT):
        return world.vmrun(cpu, ins)
    buf = bus.ram.buf
    msr = cpu.msr
    d = s.delta
    # The delta: every byte this path decides on is as the last time it ran
    # on this VMCB (the volatile fields aside), and the clean-bit copy and the
    # checks' memo are where that VMRUN left them (the VMCB's part of the key
    # is d[3]): the same decision, from the same values.
    if (d is not None and d[0] == vmcb_pa and _STABLE_RAW(buf, off + _STABLE_AT) == d[1]
            and s.cache_pa == vmcb_pa
            and s.clean_cache == d[2]
            and (d[3], cpu.cr0, cpu.efer, msr.get(SYSCFG), msr.get(HWCR), False, s.caps) == s.checked
            and (checks.LATER_CHECKS == _LATER[0] and not _LATER[1] or not _later_unmemoized())):
        nrip, rflags, rip, rsp, rax = _VOLATILE_RAW(buf, off + _VOLATILE_AT)
        _enter(cpu, s, bus, ins, vmcb_pa, hsave_pa, hoff, d, nrip, rflags, rip, rsp, rax)
        return
    ctrl = CONTROL_READER.unpack(buf, off)
    if ctrl[_MISC] & _SEV_BITS:
        return world.vmrun(cpu, ins)
    save = _SAVE_READER.unpack(buf, off)
    # Clean bits (15.15.3): with the copy equal to the VMCB, none changes anything.
    cur = list(_CLEAN_C(ctrl) + _CLEAN_S(save))
    if s.cache_pa == vmcb_pa and s.clean_cache and ctrl[_CLEAN] and cur != s.clean_cache:
        return world.vmrun(cpu, ins)
    # Consistency checks (15.5.1): passed already for these values.
    if save[_CR0] & CR0_PG and save[_CR4] & CR4_PAE and not save[_EFER] & EFER_LME:
        return world.vmrun(cpu, ins)            # the PDPE check reads memory: always runs
    vmcb_key = _MEMO_C(ctrl) + _MEMO_S(save)
    key = (vmcb_key, cpu.cr0, cpu.efer, msr.get(SYSCFG), msr.get(HWCR), False, s.caps)
    if key != s.checked or _later_unmemoized():
        return world.vmrun(cpu, ins)
    s.cache_pa = vmcb_pa
    s.clean_cache = cur
    args = (_WORDS(ctrl), *_CONTROL(ctrl))
    d = s.delta = (vmcb_pa, _STABLE(buf, off), list(cur), vmcb_key, args,
                   (cpu.bits, s.feats, world._control_state(cpu, *args)),
                   _GUEST(save), _SEGS(save), save[_DR7], save[_DR6], save[_CPL], ctrl[_GHCB],
                   ctrl[_INT_CTL] >> _AVIC_BIT & 1, bool(ctrl[_INT_STATE] >> _SHADOW_BIT & 1),
                   ctrl[_TLB_CONTROL], ctrl[_EVENTINJ], ctrl, save, _guest_values(cpu, save),
                   _nested_values(ctrl, save))
    _enter(cpu, s, bus, ins, vmcb_pa, hsave_pa, hoff, d, ctrl[_NRIP], save[_RFLAGS], save[_RIP],
           save[_RSP], save[_RAX], ctrl, save)


def _guest_values(cpu, save) -> tuple:
    """What world._load_guest_values makes of the save area's fields apart
    from the volatile ones (d[18] of the delta): EFER with LMA as LME and
    paging give it, CR0, CR4, CR3, CR2; the 16 ES/CS/SS/DS values; GDTR's
    and IDTR's limits and canonical bases (15.5.1); DR7 and DR6 as loaded;
    the CPL for CR0.PE = 1 outside virtual-8086 mode (0 with CR0.PE = 0)
    and CR0.PE."""
    efer, cr0, cr4, cr3, cr2 = _GUEST(save)
    segs = _SEGS(save)
    bits = cpu.machine.profile.lin_bits
    efer = efer & ~EFER_LMA | (EFER_LMA if efer & EFER_LME and cr0 & CR0_PG else 0)
    pe = bool(cr0 & CR0_PE)
    return ((efer, cr0, cr4, cr3, cr2), segs[:16],
            (segs[16], canonical(segs[17], bits), segs[18], canonical(segs[19], bits)),
            (save[_DR7] & 0xFFFFFFFF) | 0x400, save[_DR6] & 0xFFFFFFFF,
            save[_CPL] & 3 if pe else 0, pe)


def _nested_values(ctrl, save) -> tuple:
    """N_CR3, G_PAT and GMET_ENABLE as nested paging's setup reads them
    (d[19] of the delta: npt.setup_values)."""
    view = Fields(ctrl, save)
    return view["N_CR3"], view["G_PAT"], view["GMET_ENABLE"]


def _load_guest(cpu, s, d, rflags, rip, rsp, rax) -> None:
    """world._load_guest_values from the delta's values (d[18],
    _guest_values) and the volatile fields: the same state.  RFLAGS is set
    without Cpu.set_rflags' mode update: _enter recomputes the mode once the
    guest is loaded (nothing between reads it)."""
    g = d[18]
    stash = s.guest_segs
    s.guest_segs = None
    cpu.efer, cpu.cr0, cpu.cr4, cpu.cr3, cpu.cr2 = g[0]
    if stash is not None and g[1] == stash[4]:
        # The guest's Segment objects set aside at the last #VMEXIT hold these values.
        segs = cpu.segs
        segs[:4] = stash[:4]                   # ES, CS, SS, DS
        cpu.gdtr_limit, cpu.gdtr_base, cpu.idtr_limit, cpu.idtr_base = g[2]
    else:
        world._load_segment_values(cpu, d[7], stash)
    cpu.lf = None
    cpu.rflags = (rflags & WRITABLE) | FIXED1
    cpu.rip = rip
    regs = cpu.regs
    regs[4] = rsp
    regs[0] = rax
    dr = cpu.dr
    dr[7] = g[3]
    dr[6] = g[4]
    cpu.cpl = 3 if rflags & VM and g[6] else g[5]


def _enter(cpu, s, bus, ins, vmcb_pa, hsave_pa, hoff, d, nrip, rflags, rip, rsp, rax,
           ctrl=None, save=None) -> None:
    """VMRUN's work once its checks have passed: save the host, load the
    control area and the guest (``d``: the values of the delta, see vmrun;
    the volatile fields as arguments; ``ctrl``/``save``: the two areas as
    read now, or None when the delta's are used)."""
    machine = cpu.machine
    s.vmcb_pa = vmcb_pa
    s.host_if = bool(cpu.rflags & IF)
    world.save_host(cpu, bus, hsave_pa, ins.next_ip, hoff)
    s.vmruns += 1
    bits, feats, state = d[5]        # the control state as loaded from these fields before
    if bits != cpu.bits or feats is not s.feats:
        state = world._control_state(cpu, *d[4])          # another host mode (or features)
    world._apply_control(s, state)
    host_cr4, host_efer = cpu.cr4, cpu.efer
    # world.fast_key of the host (no RMP here: vmrun sent that case to world.vmrun).
    host_key = None if cpu.watch else (0, cpu.cr3, cpu.cr0, host_cr4, host_efer, cpu.sev_asid,
                                       cpu.enc_mask)
    _load_guest(cpu, s, d, rflags, rip, rsp, rax)
    s.sev = s.es = False
    cpu.sev_asid = 0
    if s.caps_es:
        cpu.msr[world.GHCB_MSR] = d[11]                   # 15.35.7
    view = None
    if d[12] or s.lbr_virt:
        # The areas as read now, or those the delta's bytes are of (without
        # the volatile fields: a read of one of those is a KeyError).
        view = Fields(ctrl, save) if ctrl is not None else Fields(d[16], d[17], _WHERE_STABLE)
    if s.np_enable:
        n_cr3, g_pat, gmet = d[19]              # npt.setup's fields, read with the delta's bytes
        npt.setup_values(cpu, n_cr3, g_pat, bool(gmet) and "gmet" in s.feats, host_cr4, host_efer)
    if d[12]:
        avic.load(cpu, view)
    else:
        s.avic = s.x2avic = False
    if s.lbr_virt:
        s.host_lbr = {}
        world._lbr_switch(cpu, view, s.host_lbr)
    cpu.svm_guest = True
    cpu.shadow = d[13]
    cpu.halted = False
    tlb = cpu.tlb
    tlb.switch(s.asid, cpu.cr3 & 0xFFF if cpu.cr4 & (1 << 17) else 0, True)     # keep_fast
    guest_key = world.fast_key(cpu)
    tlb.select_fast(host_key, guest_key)
    if d[14]:
        world._tlb_control(cpu, d[14], s.asid, host_key, guest_key)
    cpu.update_mode()
    cpu.gif = True
    cpu.pending = True
    eventinj = d[15]
    if machine.listeners:
        machine.svm_event(cpu, "vmrun", {"vmcb": vmcb_pa, "asid": s.asid, "rip": cpu.rip,
                                         "eventinj": eventinj})
    if eventinj & exits.EVENT_V:
        world.inject(cpu, eventinj, nrip)
    elif cpu.bits != 64:
        world._rip_limit_check(cpu)
