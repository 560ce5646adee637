"""Instruction intercepts: a guard runs before an instruction in guest mode.

APM vol 2, 15.7.1: instruction intercepts are checked after the simple
exceptions the instruction raises on its own (#UD for a bad form or mode,
#GP for the wrong CPL) and before exceptions that depend on memory accesses
or operand values.  CPUID, INT n, PUSHF/POPF, IRET, PAUSE, RSM and ICEBP
exit before any of their checks, XSETBV before its #GP checks but after its
#UD (table 15-7: "Checks intercept before exceptions (#GP)").  So each guard repeats the instruction's mode/CPL checks,
then raises ``VmExit`` if the intercept is set (with EXITINFO1/2 and NRIP as
the manual defines them for that exit), else lets the handler run.

Guards are installed when a block is translated in guest mode, so host
code pays nothing.  The intercept words and SEV-ES are fixed from VMRUN to
#VMEXIT (the processor works from what VMRUN loaded, 15.5.1), and the block
key carries them (``block_key``: a number per distinct set), so a hypervisor
that changes intercepts between VMRUNs gets other blocks.  An intercept
decided by them alone (``RESOLVED``: CPUID, PUSHF, POPF, IRET, RSM, ICEBP,
which exit before any check of their own) is resolved when the block is
translated (``wrap``): the handler itself when the intercept is clear, the
exit when it is set (``exit_handler``: compiled code takes it without
raising, ``direct``).  RDTSC and RDTSCP (``CLEAR_RESOLVED``), whose only
check before the intercept is their handler's own first one, get the
handler alone when the intercept is clear.  The other guards test the words
at each execution.
"""
import iced_x86

from ..cpu import interrupts as _interrupts
from ..cpu.exceptions import CpuException, gp, ud
from ..cpu.flags import VM
from ..cpu.segments import ES
from ..cpu.state import CR0_PE, CR0_TS, CR0_MP
from ..cpu.ops import not_reported
from ..cpu.ops.system import check_cr_write, check_dr_write, dr_number, io_check
from . import exits, features, intercepts
from .exits import ExitCode
from .state import VmExit

M = iced_x86.Mnemonic
C = iced_x86.Code
R = iced_x86.Register
OpKind = iced_x86.OpKind

CR, DR, EXC, MISC1, MISC2, MISC3 = range(6)
DECODE_MOV = 1 << 63          # EXITINFO1 bit 63: the CR access was a MOV (15.33.2); DR exits
                              # carry only the GPR number (DRs have no other access form)


def _exit(cpu, ins, code, info1=0, info2=0, detail=""):
    raise VmExit(code, info1, info2, ins.next_ip, detail=detail)


def _hit(cpu, word, bit):
    return cpu.svm.words[word] >> bit & 1


def _decode(cpu):
    return features.enabled(cpu, "decode_assists")


def _cpl0(cpu, name):
    if cpu.cpl:
        raise gp(0, f"{name} at CPL {cpu.cpl}")


def _gpr_number(reg):
    """iced register -> GPR number 0-15 (RAX..R15) for decode assists."""
    return iced_x86.RegisterInfo(reg).full_register - R.RAX if reg != R.NONE else 0


# ---------------------------------------------------------------- CR / DR (15.9, 15.33.2)
def _cr_index(ins, reg):
    n = reg - R.CR0
    return 8 if n == 0 and ins.lock else n


def mov_to_cr(cpu, ins):
    """MOV to CRn: "Checks non-memory exceptions (CPL, illegal bit
    combinations, etc.) before the intercept" (CR0, CR3), "All normal
    exception checks take precedence over the SVM intercepts" (other CRs)
    (APM vol 2, table 15-7); the PDPE loads of a PAE CR3 write come after."""
    n = _cr_index(ins, ins.regs[0])
    if n not in (0, 2, 3, 4, 8):
        return                                        # the handler raises #UD
    _cpl0(cpu, "MOV CRn")
    new = ins.get1(cpu)
    check_cr_write(cpu, n, new)
    info1 = (DECODE_MOV | _gpr_number(ins.regs[1])) if _decode(cpu) else 0
    if _hit(cpu, CR, 16 + n):
        _exit(cpu, ins, ExitCode.CR0_WRITE + n, info1)
    if n == 0 and _hit(cpu, MISC1, 5):
        if (new ^ cpu.cr0) & ~(CR0_TS | CR0_MP) & 0xFFFFFFFF:
            _exit(cpu, ins, ExitCode.CR0_SEL_WRITE, info1, detail="CR0 write changes bits other than TS/MP")


def mov_from_cr(cpu, ins):
    n = _cr_index(ins, ins.regs[1])
    if n not in (0, 2, 3, 4, 8):
        return
    _cpl0(cpu, "MOV from CRn")
    if _hit(cpu, CR, n):
        info1 = (DECODE_MOV | _gpr_number(ins.regs[0])) if _decode(cpu) else 0
        _exit(cpu, ins, ExitCode.CR0_READ + n, info1)


def clts(cpu, ins):
    """CLTS is a CR0 write (intercept bit 16); it changes only TS, so the
    selective CR0 write intercept never fires for it (15.9.1)."""
    _cpl0(cpu, "CLTS")
    if _hit(cpu, CR, 16):
        _exit(cpu, ins, ExitCode.CR0_WRITE)


def lmsw(cpu, ins):
    """LMSW: a CR0 write, intercepted before its memory operand is read; "The
    LMSW instruction treats the selective CR0-write intercept as a
    non-selective intercept (i.e., it intercepts regardless of the value
    being written)" (APM vol 2, table 15-7)."""
    _cpl0(cpu, "LMSW")
    if _hit(cpu, CR, 16):
        _exit(cpu, ins, ExitCode.CR0_WRITE)
    if _hit(cpu, MISC1, 5):
        _exit(cpu, ins, ExitCode.CR0_SEL_WRITE, detail="LMSW with the selective CR0 write intercept")


def smsw(cpu, ins):
    """SMSW reads CR0 (intercept bit 0)."""
    if _hit(cpu, CR, 0):
        _exit(cpu, ins, ExitCode.CR0_READ)


def mov_to_dr(cpu, ins):
    """#UD, CPL #GP, the DR7.GD #DB and #GP for DR6/DR7 bits 63:32 come
    before the intercept ("All normal exception checks take precedence over
    the SVM intercepts", APM vol 2, table 15-7).  The exit names the DR as
    encoded (DR4/DR5 are their own intercept bits)."""
    n = ins.regs[0] - R.DR0
    check_dr_write(dr_number(cpu, ins, ins.regs[0]), ins.get1(cpu))
    if _hit(cpu, DR, 16 + n):
        info1 = _gpr_number(ins.regs[1]) if _decode(cpu) else 0
        _exit(cpu, ins, ExitCode.DR0_WRITE + n, info1)


def mov_from_dr(cpu, ins):
    n = ins.regs[1] - R.DR0
    dr_number(cpu, ins, ins.regs[1])
    if _hit(cpu, DR, n):
        info1 = _gpr_number(ins.regs[0]) if _decode(cpu) else 0
        _exit(cpu, ins, ExitCode.DR0_READ + n, info1)


# ---------------------------------------------------------------- simple word-3/4/5 intercepts
def _simple(word, bit, code, pre=None, pre_in_handler=False):
    """``pre_in_handler``: ``pre`` is the handler's own first check, the
    same exception from the same state (RDTSC/RDTSCP's CR4.TSD #GP), so
    with the intercept clear the guard adds nothing (``CLEAR_RESOLVED``)."""
    def guard(cpu, ins):
        if pre is not None:
            pre(cpu, ins)
        if _hit(cpu, word, bit):
            _exit(cpu, ins, code)
    guard.__name__ = f"guard_{code.name.lower()}"
    if pre is None:
        RESOLVED[guard] = (word, bit, code)
    elif pre_in_handler:
        CLEAR_RESOLVED[guard] = (word, bit)
    return guard


# Guards decided by one intercept bit alone, outside SEV-ES guests: guard ->
# (word, bit, exit code); ``wrap`` resolves them at translation.
RESOLVED = {}
# Guards whose check before the intercept is the handler's own first check:
# guard -> (word, bit); ``wrap`` gives the handler alone when the bit is clear
# (the guard would run that check and then the handler, which runs it again).
CLEAR_RESOLVED = {}


def _pre_cpl0(cpu, ins):
    _cpl0(cpu, ins.name.upper())


def _pre_umip(cpu, ins):
    if cpu.cr4 & (1 << 11) and cpu.cpl:
        raise gp(0, f"{ins.name.upper()} with CR4.UMIP at CPL {cpu.cpl}")


def _pre_protected(cpu, ins):
    if not cpu.cr0 & CR0_PE or cpu.rflags & VM:
        raise ud(f"{ins.name.upper()} outside protected mode")
    _cpl0(cpu, ins.name.upper())


def _pre_tsd(cpu, ins):
    if cpu.cr4 & 4 and cpu.cpl:
        raise gp(0, f"{ins.name.upper()} at CPL > 0 with CR4.TSD=1")


def _pre_osxsave(cpu, ins):
    """XSETBV: "Checks intercept before exceptions (#GP)" (table 15-7) names
    only its #GP checks (CPL, ECX, the XCR0 value); its #UD for CR4.OSXSAVE
    = 0 is one of the "simple exceptions (such as ... #UD)" that 15.7 checks
    before instruction intercepts."""
    if not cpu.cr4 & (1 << 18):
        raise ud("XSETBV with CR4.OSXSAVE=0")


def _pre_pce(cpu, ins):
    """RDPMC: "Checks all exceptions before the SVM intercept" (table 15-7):
    CR4.PCE at CPL > 0 and the counter number in ECX."""
    from ..cpu.ops.system import rdpmc_checks
    rdpmc_checks(cpu)


def _pre_v86_iopl(cpu, ins):
    if cpu.rflags & VM and (cpu.rflags >> 12) & 3 < 3:
        raise gp(0, f"{ins.name.upper()} in virtual-8086 mode with IOPL < 3")


def _pre_svm(name, rax=True):
    def pre(cpu, ins):
        from . import checks
        bad = checks.check_vmrun_instruction(cpu, ins.asize, name, rax)
        if bad is not None:
            raise CpuException(bad[0], bad[1], detail=bad[2])
    return pre


def _pre_skinit(cpu, ins):
    """SKINIT exists only where CPUID Fn8000_0001_ECX[SKINIT] says so (its
    iced feature, "SKINIT or SVM", is shared with STGI, so the generic
    not-reported check cannot tell): #UD first, then the #GP checks."""
    from ..cpu.cpuid import has
    from .skinit import check
    if not has(cpu, "skinit"):
        raise ud("SKINIT: CPUID Fn8000_0001_ECX[SKINIT] = 0")
    check(cpu)


def swint(cpu, ins):
    """INT n (not INT3/INTO/INT1): EXITINFO1 = the vector with decode assists.
    Checked before any of INT n's own faults, the gate-DPL #GP included."""
    if _hit(cpu, MISC1, 21):
        _exit(cpu, ins, ExitCode.SWINT, ins.imm & 0xFF if _decode(cpu) else 0)


def invlpg(cpu, ins):
    """EXITINFO1 = the linear address with decode assists (15.33.2)."""
    _cpl0(cpu, "INVLPG")
    if _hit(cpu, MISC1, 25):
        info1 = cpu.linear(ins.seg, ins.ea(cpu)) if _decode(cpu) else 0
        _exit(cpu, ins, ExitCode.INVLPG, info1)


def pause(cpu, ins):
    """PAUSE intercept with the pause filter (APM 15.14.4): a nonzero
    PAUSE_FILTER_COUNT is decremented by each PAUSE and the exit happens when
    it reaches zero; with PAUSE_FILTER_THRESHOLD nonzero, a PAUSE more than
    that many cycles after the previous one reloads the count first.
    svmsim counts cycles as virtual nanoseconds (1 GHz)."""
    if not _hit(cpu, MISC1, 23):
        return
    s = cpu.svm
    if s.pause_initial:
        now = cpu.machine.now_ns(cpu)
        if s.pause_threshold and s.pause_last is not None and now - s.pause_last > s.pause_threshold:
            s.pause_count = s.pause_initial
        s.pause_last = now
        if s.pause_count > 1:
            s.pause_count -= 1
            return
        s.pause_count = 0
    _exit(cpu, ins, ExitCode.PAUSE)


# ---------------------------------------------------------------- IOIO (15.10)
def _io_common(cpu, ins, port, size, is_in, string, seg):
    """In an SEV-ES guest "all IO port accesses are unconditionally
    intercepted" (APM 15.36.23), whatever the IOPM says."""
    io_check(cpu, port, size)
    if not cpu.svm.es:
        if not _hit(cpu, MISC1, 27):
            return
        if not intercepts.io_intercepted(cpu.bus.read_bytes, cpu.svm.iopm_pa, port, size):
            return
    info1 = exits.ioio_exitinfo1(port, size, is_in, string, bool(ins.rep or ins.repne),
                                 ins.asize, seg)
    # EXITINFO2 = the RIP of the next instruction (APM 15.10.2).
    _exit(cpu, ins, ExitCode.IOIO, info1, ins.next_ip)


def io_in(cpu, ins):
    port = ins.imm & 0xFF if ins.imm is not None else cpu.regs[2] & 0xFFFF
    _io_common(cpu, ins, port, ins.opsz[0], True, False, 0)


def io_out(cpu, ins):
    port = ins.imm & 0xFF if ins.imm is not None else cpu.regs[2] & 0xFFFF
    _io_common(cpu, ins, port, ins.opsz[1], False, False, 0)


_STR_SIZE = {"insb": 1, "insw": 2, "insd": 4, "outsb": 1, "outsw": 2, "outsd": 4}


def io_string(cpu, ins):
    is_in = ins.name.startswith("ins")
    seg = ES if is_in else ins.seg
    _io_common(cpu, ins, cpu.regs[2] & 0xFFFF, _STR_SIZE[ins.name], is_in, True, seg)


# ---------------------------------------------------------------- MSR (15.11)
def msr(cpu, ins):
    _cpl0(cpu, ins.name.upper())
    if not _hit(cpu, MISC1, 28):
        return
    write = ins.mnemonic == M.WRMSR
    if intercepts.msr_intercepted(cpu.bus.read_bytes, cpu.svm.msrpm_pa, cpu.regs[1], write):
        _exit(cpu, ins, ExitCode.MSR, 1 if write else 0)


# ---------------------------------------------------------------- SVM instructions in the guest
def vmmcall(cpu, ins):
    """#UD with EFER.SVME = 0 comes first (Bochs, QEMU; Linux commit 460c7eb2
    quoting the APM), then the intercept; not intercepted: #UD (handler)."""
    if not cpu.efer & (1 << 12):
        raise ud("VMMCALL with EFER.SVME = 0")
    if _hit(cpu, MISC2, 1):
        _exit(cpu, ins, ExitCode.VMMCALL)


def cpuid(cpu, ins):
    """CPUID exits first (15.7.1); in an SEV-ES guest "the CPUID instruction
    ... [is] unconditionally intercepted" (APM 15.36.23)."""
    s = cpu.svm
    if s.es or s.words[MISC1] >> 18 & 1:
        raise VmExit(_CPUID, 0, 0, ins.next_ip)


_CPUID = ExitCode.CPUID
RESOLVED[cpuid] = (MISC1, 18, _CPUID)     # an SEV-ES guest's CPUID: the guard (#VC, reflect)


def vmgexit(cpu, ins):
    """VMGEXIT (F3 0F 01 D9; APM 15.35.6): in an SEV-ES guest an automatic
    exit that "behaves like a trap so that upon a subsequent VMRUN,
    execution resumes following the VMGEXIT", with no intercept bit; in any
    other guest it "will behave exactly like a VMMCALL"."""
    if cpu.svm.es:
        raise VmExit(ExitCode.VMGEXIT, 0, 0, ins.next_ip, trap=True, detail="VMGEXIT")
    vmmcall(cpu, ins)


def vmsave(cpu, ins):
    """"the execution of the VMSAVE instruction inside an SEV-ES or SNP-active
    guest is not supported and will result in a #VMEXIT(VMSAVE)" (APM
    15.36.12): intercepted whatever the bit says (an NAE: #VC 83h)."""
    _pre_svm("VMSAVE")(cpu, ins)
    if cpu.svm.es or _hit(cpu, MISC2, 3) or cpu.svm.vls_exit:
        _exit(cpu, ins, ExitCode.VMSAVE)


def vmload(cpu, ins):
    """VMLOAD's intercept; also taken when V_VMSAVE_VMLOAD_ENABLE is set
    where the processor does not recognize it (APM 15.33.1, as VMSAVE)."""
    _pre_svm("VMLOAD")(cpu, ins)
    if _hit(cpu, MISC2, 2) or cpu.svm.vls_exit:
        _exit(cpu, ins, ExitCode.VMLOAD)


def mwait(cpu, ins):
    """MWAIT intercept (word 4 bit 11) exits always; MWAIT_COND (bit 12) only
    when the monitor is armed, i.e. MWAIT would wait (APM 15.7)."""
    _pre_monitor(cpu, ins)
    if _hit(cpu, MISC2, 11):
        _exit(cpu, ins, ExitCode.MWAIT)
    if _hit(cpu, MISC2, 12) and getattr(cpu, "monitor_armed", False):
        _exit(cpu, ins, ExitCode.MWAIT_COND)


def _pre_monitor(cpu, ins):
    """MONITOR and MWAIT: "Checks all exceptions before the
    intercept" (table 15-7): the instruction's own #UD, #GP and #PF checks."""
    from ..cpu.ops.system import monitor_checks, mwait_checks
    (mwait_checks if ins.name.startswith("mwait") else monitor_checks)(cpu, ins)


GUARDS_BY_CODE = {
    C.MOV_CR_R32: mov_to_cr, C.MOV_CR_R64: mov_to_cr,
    C.MOV_R32_CR: mov_from_cr, C.MOV_R64_CR: mov_from_cr,
    C.MOV_DR_R32: mov_to_dr, C.MOV_DR_R64: mov_to_dr,
    C.MOV_R32_DR: mov_from_dr, C.MOV_R64_DR: mov_from_dr,
}
for _c in (C.SIDT_M1632_16, C.SIDT_M1632, C.SIDT_M1664):
    GUARDS_BY_CODE[_c] = _simple(MISC1, 6, ExitCode.IDTR_READ, _pre_umip)
for _c in (C.SGDT_M1632_16, C.SGDT_M1632, C.SGDT_M1664):
    GUARDS_BY_CODE[_c] = _simple(MISC1, 7, ExitCode.GDTR_READ, _pre_umip)
for _c in (C.LIDT_M1632_16, C.LIDT_M1632, C.LIDT_M1664):
    GUARDS_BY_CODE[_c] = _simple(MISC1, 10, ExitCode.IDTR_WRITE, _pre_cpl0)
for _c in (C.LGDT_M1632_16, C.LGDT_M1632, C.LGDT_M1664):
    GUARDS_BY_CODE[_c] = _simple(MISC1, 11, ExitCode.GDTR_WRITE, _pre_cpl0)

GUARDS = {
    M.CLTS: clts, M.LMSW: lmsw, M.SMSW: smsw,
    M.SLDT: _simple(MISC1, 8, ExitCode.LDTR_READ, _pre_umip),
    M.STR: _simple(MISC1, 9, ExitCode.TR_READ, _pre_umip),
    M.LLDT: _simple(MISC1, 12, ExitCode.LDTR_WRITE, _pre_protected),
    M.LTR: _simple(MISC1, 13, ExitCode.TR_WRITE, _pre_protected),
    M.RDTSC: _simple(MISC1, 14, ExitCode.RDTSC, _pre_tsd, pre_in_handler=True),
    M.RDPMC: _simple(MISC1, 15, ExitCode.RDPMC, _pre_pce),
    M.PUSHF: _simple(MISC1, 16, ExitCode.PUSHF),
    M.PUSHFD: _simple(MISC1, 16, ExitCode.PUSHF),
    M.PUSHFQ: _simple(MISC1, 16, ExitCode.PUSHF),
    M.POPF: _simple(MISC1, 17, ExitCode.POPF),
    M.POPFD: _simple(MISC1, 17, ExitCode.POPF),
    M.POPFQ: _simple(MISC1, 17, ExitCode.POPF),
    M.CPUID: cpuid,
    M.RSM: _simple(MISC1, 19, ExitCode.RSM),
    M.IRET: _simple(MISC1, 20, ExitCode.IRET),
    M.IRETD: _simple(MISC1, 20, ExitCode.IRET),
    M.IRETQ: _simple(MISC1, 20, ExitCode.IRET),
    M.INT: swint,
    M.INVD: _simple(MISC1, 22, ExitCode.INVD, _pre_cpl0),
    M.PAUSE: pause,
    M.HLT: _simple(MISC1, 24, ExitCode.HLT, _pre_cpl0),
    M.INVLPG: invlpg,
    M.INVLPGA: _simple(MISC1, 26, ExitCode.INVLPGA, _pre_svm("INVLPGA", rax=False)),
    M.IN: io_in, M.OUT: io_out,
    M.INSB: io_string, M.INSW: io_string, M.INSD: io_string,
    M.OUTSB: io_string, M.OUTSW: io_string, M.OUTSD: io_string,
    M.RDMSR: msr, M.WRMSR: msr,
    M.VMRUN: _simple(MISC2, 0, ExitCode.VMRUN, _pre_svm("VMRUN")),
    M.VMMCALL: vmmcall,
    M.VMGEXIT: vmgexit,
    M.VMLOAD: vmload,
    M.VMSAVE: vmsave,
    M.STGI: _simple(MISC2, 4, ExitCode.STGI, _pre_svm("STGI", rax=False)),
    M.CLGI: _simple(MISC2, 5, ExitCode.CLGI, _pre_svm("CLGI", rax=False)),
    M.SKINIT: _simple(MISC2, 6, ExitCode.SKINIT, _pre_skinit),
    M.RDTSCP: _simple(MISC2, 7, ExitCode.RDTSCP, _pre_tsd, pre_in_handler=True),
    M.INT1: _simple(MISC2, 8, ExitCode.ICEBP),
    M.WBINVD: _simple(MISC2, 9, ExitCode.WBINVD, _pre_cpl0),
    M.WBNOINVD: _simple(MISC2, 9, ExitCode.WBINVD, _pre_cpl0),
    M.MONITOR: _simple(MISC2, 10, ExitCode.MONITOR, _pre_monitor),
    M.MWAIT: mwait,
    M.XSETBV: _simple(MISC2, 13, ExitCode.XSETBV, _pre_osxsave),
    M.INVPCID: _simple(MISC3, 2, ExitCode.INVPCID, _pre_cpl0),
}


# ---------------------------------------------------------------- write traps (after the write)
def _trap(cpu, ins, code, value):
    raise VmExit(code, value, 0, ins.next_ip, trap=True, detail="write trap")


def cr_write_trap(cpu, ins):
    """CRn write traps (word 4 bits 31:16): the write completed; EXITINFO1 is
    the new value and the guest RIP is the next instruction.  APM 15.35.10:
    "CR write traps are only supported for SEV-ES guests"; other guests
    ignore the bits."""
    n = _cr_index(ins, ins.regs[0]) if ins.mnemonic == M.MOV else 0
    if cpu.svm.es and _hit(cpu, MISC2, 16 + n):
        value = {0: cpu.cr0, 2: cpu.cr2, 3: cpu.cr3, 4: cpu.cr4}.get(n)
        if value is None:
            from ..cpu.ops.system import read_cr8
            value = read_cr8(cpu)
        _trap(cpu, ins, ExitCode.CR0_WRITE_TRAP + n, value)


def efer_write_trap(cpu, ins):
    """EFER_WRITE_TRAP, an SEV-ES feature like the CR write traps (15.35.10)."""
    if (cpu.svm.es and ins.mnemonic == M.WRMSR and cpu.regs[1] & 0xFFFFFFFF == 0xC0000080
            and _hit(cpu, MISC2, 15)):
        _trap(cpu, ins, ExitCode.EFER_WRITE_TRAP, cpu.efer)


POST_GUARDS_BY_CODE = {C.MOV_CR_R32: cr_write_trap, C.MOV_CR_R64: cr_write_trap}
POST_GUARDS = {M.CLTS: cr_write_trap, M.LMSW: cr_write_trap, M.WRMSR: efer_write_trap}


# ---------------------------------------------------------------- resolved at translation
_KEYS: dict = {}              # (intercept words, SEV-ES) -> its block key
_NEXT = [1]
_KEYS_MAX = 4096


def block_key(cpu):
    """The guest-mode part of the block key (``hooks.block_key``): a number
    for the intercept words and SEV-ES of this run, everything ``wrap``
    decides by.  Numbers are never reused (a forgotten set gets a new one),
    so a block is never found under inputs it was not translated for."""
    s = cpu.svm
    k = (s.words, s.es)
    n = _KEYS.get(k)
    if n is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        n = _KEYS[k] = _NEXT[0]
        _NEXT[0] += 1
    return n


_EXITS: dict = {}


def _world():
    """svm.world (it imports the SVM unit's modules: not at import time),
    imported once (an import statement per exit cost ~2% of a round trip)."""
    w = _WORLD[0]
    if w is None:
        from . import world
        w = _WORLD[0] = world
    return w


_WORLD = [None]


def exit_handler(code):
    """The handler of an instruction whose intercept is set (resolved at
    translation): it raises the exit, as its guard would (before the
    instruction changes anything, NRIP the next instruction).  Compiled code
    calls ``direct`` instead, with RIP at the instruction (``Engine._run``):
    the same #VMEXIT as the engine's fault path (``vmexit_from`` of that
    VmExit), without an exception."""
    h = _EXITS.get(code)
    if h is None:
        def h(cpu, ins):
            raise VmExit(code, 0, 0, ins.next_ip)

        def direct(cpu, ins):
            # rip, nrip positional (a call with keywords takes CPython's slow path)
            (_WORLD[0] or _world()).vmexit(cpu, code, 0, 0, cpu.rip, ins.next_ip)
        h.__name__ = f"exit_{code.name.lower()}"
        h.direct = direct
        _EXITS[code] = h
    return h


def _vmmcall_exit():
    """VMMCALL with its intercept set, resolved at translation: the guard's
    order kept, EFER.SVME = 0's #UD first (it may change within a run: a
    WRMSR the hypervisor does not intercept), then the exit.  Compiled code
    calls ``direct`` where the engine would deliver a fault: the #UD
    delivered as the engine delivers one (``deliver_exception``), or the
    #VMEXIT, without an exception raised and unwound."""
    code = ExitCode.VMMCALL

    def exit_vmmcall(cpu, ins):
        vmmcall(cpu, ins)                    # #UD, or the exit (the bit is set)

    def direct(cpu, ins):
        if not cpu.efer & (1 << 12):
            _interrupts.deliver_exception(cpu, ud("VMMCALL with EFER.SVME = 0"))
            return
        (_WORLD[0] or _world()).vmexit(cpu, code, 0, 0, cpu.rip, ins.next_ip)
    exit_vmmcall.direct = direct
    return exit_vmmcall


VMMCALL_EXIT = _vmmcall_exit()
_VMMCALL_BIT = (MISC2, 1)


def wrap(ins, fn, cpu=None):
    """The handler to run for ``ins`` in guest mode: ``fn`` between its guard
    and, for CR/EFER writes, its write-trap check; for a guard in
    ``RESOLVED`` outside an SEV-ES guest, ``fn`` alone or the exit, as the
    intercept words of ``cpu`` say (``block_key`` keys the block by them)."""
    guard = GUARDS_BY_CODE.get(ins.code) or GUARDS.get(ins.mnemonic)
    post = POST_GUARDS_BY_CODE.get(ins.code) or POST_GUARDS.get(ins.mnemonic)
    if guard is None or fn is not_reported:
        # An instruction the CPU does not have is #UD before any intercept
        # (15.7: "instruction intercepts are checked after simple exceptions
        # (such as ... #UD)"); its feature is absent from CPUID.
        return fn
    r = RESOLVED.get(guard)
    if r is not None and post is None and cpu is not None and not cpu.svm.es:
        word, bit, code = r
        return exit_handler(code) if cpu.svm.words[word] >> bit & 1 else fn
    if guard is vmmcall and post is None and cpu is not None and not cpu.svm.es \
            and cpu.svm.words[_VMMCALL_BIT[0]] >> _VMMCALL_BIT[1] & 1:
        return VMMCALL_EXIT
    c = CLEAR_RESOLVED.get(guard)
    if c is not None and post is None and cpu is not None and not cpu.svm.es \
            and not cpu.svm.words[c[0]] >> c[1] & 1:
        return fn            # compiled code then treats it as in host mode (codegen _stays)
    if post is None:
        def guarded(cpu, ins):
            guard(cpu, ins)
            fn(cpu, ins)
    else:
        def guarded(cpu, ins):
            guard(cpu, ins)
            fn(cpu, ins)
            post(cpu, ins)
    return guarded
