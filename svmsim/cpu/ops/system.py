"""System instructions (AMD APM vol 2 ch. 3, 5, 13; vol 3 "System Instruction
Reference" and the general-purpose entries for CPUID, RDTSC, IN/OUT...).

Control registers: every #GP rule of MOV CRn is checked before anything
changes; TLB flushes follow APM vol 2, 5.5.2-5.5.3 (MOV CR3 drops non-global
entries of the current PCID unless bit 63 is set with CR4.PCIDE; changing
CR0.PG/WP or CR4.PGE/PAE/PSE/PCIDE(1->0)/SMEP/SMAP drops everything).
Anything that can change how code decodes calls ``cpu.update_mode()`` and
drops the block cache.

Not modelled (documented): CR4.VME/PVI (virtual interrupt flags),
MWAIT
sleeping (treated as a hint that returns at once, so a MONITOR/MWAIT idle
loop spins instead of sleeping forever on a store svmsim would not notice).
"""
import random

from iced_x86 import Code as C, Mnemonic as M, Register as R

from . import handles
from .. import msr as msrs
from ..cpuid import cpuid as cpuid_query, has as cpu_has, XCR0_SUPPORTED
from ..exceptions import CpuException, DB, gp, ud
from ..flags import CF, ARITH, IF, IOPL, VM, RF, VIF, VIP, DF, WRITABLE
from ..segments import ES, DS, FS, GS
from ..state import (CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_NW,
                     CR0_CD, CR0_PG, EFER_LME, EFER_LMA)
from ...errors import NotModelled

MASK64 = (1 << 64) - 1
_UD2 = M.UD2
CR0_VALID = CR0_PE | CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_NW | CR0_CD | CR0_PG
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE, CR4_MCE, CR4_PGE, CR4_PCE = (
    1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100)
CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_UMIP, CR4_LA57 = 1 << 9, 1 << 10, 1 << 11, 1 << 12
CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP, CR4_PKE = (
    1 << 16, 1 << 17, 1 << 18, 1 << 20, 1 << 21, 1 << 22)
# CR4 bit -> feature that makes it writable (APM vol 2, 3.1.3).
_CR4_FEATURE = {
    CR4_VME: "vme", CR4_PVI: "vme", CR4_TSD: "tsc", CR4_DE: "de", CR4_PSE: "pse",
    CR4_PAE: "pae", CR4_MCE: "mce", CR4_PGE: "pge", CR4_PCE: None, CR4_OSFXSR: "fxsr",
    CR4_OSXMMEXCPT: "sse", CR4_UMIP: "umip", CR4_LA57: "la57", CR4_FSGSBASE: "fsgsbase",
    CR4_PCIDE: "pcid", CR4_OSXSAVE: "xsave", CR4_SMEP: "smep", CR4_SMAP: "smap", CR4_PKE: "pku",
}
# CR4 bits whose change invalidates every TLB entry, global ones included.
_CR4_FLUSH = {CR4_PGE: "cr4.pge", CR4_PAE: "cr4.pae", CR4_PSE: "cr4.pse", CR4_SMEP: "cr4.smep",
              CR4_SMAP: "cr4.smap", CR4_PKE: "cr4.pke", CR4_LA57: "cr4.la57"}


def _cpl0(cpu, name):
    if cpu.cpl:
        raise gp(0, f"{name} at CPL {cpu.cpl}")


def _mode_changed(cpu):
    cpu.update_mode()
    cpu.machine.engine.flush()


def _maxphy(cpu):
    return getattr(cpu, "maxphyaddr", None) or cpu.machine.profile.phys_bits


def _canonical(cpu, v):
    bits = cpu.machine.profile.lin_bits
    top = v >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def _set_edx_eax(cpu, v):
    cpu.regs[0] = v & 0xFFFFFFFF
    cpu.regs[2] = (v >> 32) & 0xFFFFFFFF


def _edx_eax(cpu):
    return ((cpu.regs[2] & 0xFFFFFFFF) << 32) | (cpu.regs[0] & 0xFFFFFFFF)


# ================================================================ control registers
def cr4_supported(cpu) -> int:
    m = 0
    for bit, feat in _CR4_FEATURE.items():
        if feat is None or cpu_has(cpu, feat):
            m |= bit
    return m


def check_cr_write(cpu, n, v):
    """The #GP a write of ``v`` to CRn raises for illegal values, without
    changing anything: an SVM guest's CR-write intercept is checked after
    these (APM vol 2, table 15-7: "Checks non-memory exceptions (CPL, illegal
    bit combinations, etc.) before the intercept")."""
    if n == 0:
        _cr0_checked(cpu, v)
    elif n == 3:
        _cr3_checked(cpu, v)
    elif n == 4:
        _cr4_check(cpu, v)
    elif n == 8 and v >> 4:
        raise gp(0, f"MOV CR8: reserved bits ({v:#x})")


def _cr0_checked(cpu, v):
    """(new CR0, new EFER) for a write of ``v`` to CR0, or #GP."""
    if v >> 32:
        raise gp(0, f"MOV CR0: bits 63:32 set ({v:#x})")
    new = (v & CR0_VALID) | CR0_ET                  # reserved bits ignored; ET reads as 1
    old = cpu.cr0
    if new & CR0_PG and not new & CR0_PE:
        raise gp(0, "MOV CR0: PG=1 with PE=0")
    if new & CR0_NW and not new & CR0_CD:
        raise gp(0, "MOV CR0: NW=1 with CD=0")
    efer = cpu.efer
    if new & CR0_PG and not old & CR0_PG and efer & EFER_LME:
        if not cpu.cr4 & CR4_PAE:
            raise gp(0, "MOV CR0: enabling long mode (EFER.LME=1) requires CR4.PAE=1")
        if cpu.segs[1].attr & 0x200:
            raise gp(0, "MOV CR0: enabling long mode with CS.L=1")
        efer |= EFER_LMA
    if old & CR0_PG and not new & CR0_PG and efer & EFER_LMA:
        if cpu.long64:
            raise gp(0, "MOV CR0: clearing PG in 64-bit mode")
        efer &= ~EFER_LMA                            # leaving long mode from compatibility mode
    return new, efer


def write_cr0(cpu, v):
    """MOV CR0 (APM vol 2, 3.1.1 and 14.6): checks, then long-mode activation."""
    old = cpu.cr0
    new, efer = _cr0_checked(cpu, v)
    if _pae_paging_starts(cpu, old, cpu.cr4, new, cpu.cr4, efer):
        _load_pdptes(cpu, cpu.cr3, "MOV CR0")
    cpu.cr0 = new
    cpu.efer = efer
    changed = old ^ new
    if changed & (CR0_PG | CR0_WP):
        cpu.tlb.flush_all("cr0.pg" if changed & CR0_PG else "cr0.wp")
    if changed & (CR0_PG | CR0_PE):
        _mode_changed(cpu)
    else:
        cpu.update_mode()


def _cr3_checked(cpu, v):
    """(new CR3, no-flush) for a write of ``v`` to CR3, or #GP."""
    noflush = False
    if cpu.efer & EFER_LMA:
        if cpu.cr4 & CR4_PCIDE and v >> 63:
            noflush = True
            v &= ~(1 << 63)
        if v >> _maxphy(cpu):
            raise gp(0, f"MOV CR3: reserved bits set ({v:#x})")
    else:
        v &= 0xFFFFFFFF
    return v, noflush


def _load_pdptes(cpu, cr3, what="MOV CR3") -> None:
    """Legacy PAE paging loads the four PDPEs when CR3 is written, and a
    present PDPE with a reserved bit set is #GP(0): "If PAE is enabled, the
    loading of the four PDPEs can cause a #GP" (APM vol 2, table 15-7, which
    checks it after the CR3 intercept).  MOV CR0 and MOV CR4 load them too
    when they turn legacy PAE paging on (``_pae_paging_starts``).  Not for a
    nested-paging guest, whose "four PDPEs are not loaded into the processor
    at the time CR3 is written" (15.25.10).  svmsim's walker still reads the
    PDPEs from memory at each walk ("an operating system cannot rely on the
    behavior when the in-memory PDPEs are different than the in-processor
    copy")."""
    from ..paging import bad_pdpte
    found = bad_pdpte(cpu.bus.read, cr3, cpu.walker.rsvd_hi)
    if found:
        i, _at, e, _bad = found
        raise gp(0, f"{what}: PDPE{i} = {e:#x} has reserved bits set")


def _pae_paging_starts(cpu, old_cr0, old_cr4, cr0, cr4, efer) -> bool:
    """Whether a MOV CR0/CR4 turns legacy PAE paging on (PG = 1, PAE = 1,
    LMA = 0 after it, not before), which loads the four PDPEs as MOV CR3
    does -- svmsim's reading (docs/DESIGN.md, 15.25.10): the PDPE registers
    must be loaded before the first walk in that mode.  A nested-paging
    guest loads none (15.25.10)."""
    if cpu.npt is not None or efer & EFER_LMA or not (cr0 & CR0_PG and cr4 & CR4_PAE):
        return False
    return not (old_cr0 & CR0_PG and old_cr4 & CR4_PAE)


def write_cr3(cpu, v):
    """MOV CR3: reserved bits (long mode), PCID and the no-flush bit 63;
    the PDPE check of legacy PAE paging."""
    pcide = cpu.cr4 & CR4_PCIDE
    v, noflush = _cr3_checked(cpu, v)
    if cpu.cr0 & CR0_PG and cpu.cr4 & CR4_PAE and not cpu.efer & EFER_LMA and cpu.npt is None:
        _load_pdptes(cpu, v)
    cpu.cr3 = v
    tlb = cpu.tlb
    pcid = v & 0xFFF if pcide else 0
    tlb.switch(tlb.asid, pcid)
    if not noflush:
        tlb.flush_nonglobal("mov cr3")
    tlb.drop_fast()


def _cr4_check(cpu, v):
    old = cpu.cr4
    bad = v & ~cr4_supported(cpu)
    if bad:
        raise gp(0, f"MOV CR4: reserved or unsupported bits {bad:#x}")
    lma = cpu.efer & EFER_LMA
    if lma and not v & CR4_PAE:
        raise gp(0, "MOV CR4: clearing PAE in long mode")
    if lma and (v ^ old) & CR4_LA57:
        raise gp(0, "MOV CR4: changing LA57 in long mode")
    if v & CR4_PCIDE and not old & CR4_PCIDE:
        if not lma:
            raise gp(0, "MOV CR4: PCIDE=1 outside long mode")
        if cpu.cr3 & 0xFFF:
            raise gp(0, "MOV CR4: PCIDE=1 with CR3[11:0] != 0")


def write_cr4(cpu, v):
    """MOV CR4: unsupported bits, PAE in long mode, PCIDE and LA57 rules."""
    old = cpu.cr4
    _cr4_check(cpu, v)
    if _pae_paging_starts(cpu, cpu.cr0, old, cpu.cr0, v, cpu.efer):
        _load_pdptes(cpu, cpu.cr3, "MOV CR4")
    cpu.cr4 = v
    changed = old ^ v
    tlb = cpu.tlb
    if changed & CR4_PCIDE and not v & CR4_PCIDE:
        tlb.switch(tlb.asid, 0)
        tlb.flush_all("cr4.pcide")
    for bit, cause in _CR4_FLUSH.items():
        if changed & bit:
            tlb.flush_all(cause)
            break
    cpu.update_mode()


def read_cr8(cpu):
    if cpu.svm_guest:
        v = cpu.hooks.cr8_read(cpu)           # e.g. the virtual TPR (APM 15.21.3)
        if v is not None:
            return v
    lapic = cpu.lapic
    if lapic is not None:
        return lapic.read_cr8()
    return getattr(cpu, "cr8_tpr", 0)


def write_cr8(cpu, v):
    """CR8 = TPR[7:4] (APM vol 2, 16.6.4); bits 63:4 reserved."""
    if v >> 4:
        raise gp(0, f"MOV CR8: reserved bits ({v:#x})")
    if cpu.svm_guest and cpu.hooks.cr8_write(cpu, v):
        return
    lapic = cpu.lapic
    if lapic is not None:
        lapic.write_cr8(v)
    else:
        cpu.cr8_tpr = v
    cpu.kick()


def _cr_number(ins, reg):
    n = reg - R.CR0
    if n == 0 and ins.lock:
        n = 8                                   # AltMovCr8: LOCK MOV CR0 = CR8
    if n not in (0, 2, 3, 4, 8):
        raise ud(f"MOV CR{n}: no such control register")
    return n


@handles(codes=(C.MOV_CR_R32, C.MOV_CR_R64), ends_block=True)
def mov_to_cr(cpu, ins):
    n = _cr_number(ins, ins.regs[0])
    _cpl0(cpu, "MOV CRn")
    v = ins.get1(cpu)
    if n == 0:
        write_cr0(cpu, v)
    elif n == 2:
        cpu.cr2 = v
    elif n == 3:
        write_cr3(cpu, v)
    elif n == 4:
        write_cr4(cpu, v)
    else:
        write_cr8(cpu, v)
    cpu.rip = ins.next_ip


@handles(codes=(C.MOV_R32_CR, C.MOV_R64_CR))
def mov_from_cr(cpu, ins):
    n = _cr_number(ins, ins.regs[1])
    _cpl0(cpu, "MOV from CRn")
    v = {0: cpu.cr0, 2: cpu.cr2, 3: cpu.cr3, 4: cpu.cr4}.get(n)
    ins.set0(cpu, read_cr8(cpu) if n == 8 else v)


@handles("CLTS")
def clts(cpu, ins):
    _cpl0(cpu, "CLTS")
    cpu.cr0 &= ~CR0_TS


@handles("LMSW", ends_block=True)
def lmsw(cpu, ins):
    """LMSW: loads CR0[3:0]; can set PE but never clear it."""
    _cpl0(cpu, "LMSW")
    v = ins.get0(cpu) & 0xF
    old = cpu.cr0
    cpu.cr0 = (old & ~0xE) | v | (old & CR0_PE)
    if (old ^ cpu.cr0) & CR0_PE:
        _mode_changed(cpu)
    cpu.rip = ins.next_ip


@handles("SMSW")
def smsw(cpu, ins):
    ins.set0(cpu, cpu.cr0)                   # the setter keeps 16/32/64 bits as encoded


# ================================================================ debug registers
DR6_FIXED1 = 0xFFFF0FF0
DR6_WRITABLE = 0xE00F          # B0-B3, BD, BS, BT (APM vol 2, 13.1.1.3)
DR7_WRITABLE = 0xFFFF23FF      # L/G0-3, LE, GE, GD, R/W and LEN fields
DR7_FIXED1 = 0x400


def dr_number(cpu, ins, reg):
    """The debug register a MOV DRn names, after its #UD, CPL #GP and DR7.GD
    #DB checks (in that order), which come before an SVM DR intercept (APM
    vol 2, table 15-7: "All normal exception checks take precedence")."""
    n = reg - R.DR0
    if n > 7:
        raise ud(f"MOV DR{n}: no such debug register")
    if n in (4, 5):
        if cpu.cr4 & CR4_DE:
            raise ud(f"MOV DR{n} with CR4.DE=1")
        n += 2                                # DR4/DR5 alias DR6/DR7
    _cpl0(cpu, "MOV DRn")
    if cpu.dr[7] & (1 << 13):                 # DR7.GD: general detect (APM 13.1.1.5)
        cpu.dr[6] |= 1 << 13                  # DR6.BD
        cpu.dr[7] &= ~(1 << 13)
        raise CpuException(DB, detail="MOV DRn with DR7.GD=1")
    return n


@handles(codes=(C.MOV_DR_R32, C.MOV_DR_R64))
def mov_to_dr(cpu, ins):
    n = dr_number(cpu, ins, ins.regs[0])
    v = ins.get1(cpu)
    check_dr_write(n, v)
    if n >= 6:
        if n == 6:
            v = (v & DR6_WRITABLE) | DR6_FIXED1
        else:
            v = (v & DR7_WRITABLE) | DR7_FIXED1
    cpu.dr[n] = v


def check_dr_write(n, v):
    """DR6 and DR7 bits 63:32 must be zero (#GP)."""
    if n >= 6 and v >> 32:
        raise gp(0, f"MOV DR{n}: bits 63:32 must be zero")


@handles(codes=(C.MOV_R32_DR, C.MOV_R64_DR))
def mov_from_dr(cpu, ins):
    n = dr_number(cpu, ins, ins.regs[1])
    ins.set0(cpu, cpu.dr[n])


# ================================================================ MSRs, CPUID, time stamps
@handles("RDMSR")
def rdmsr(cpu, ins):
    _cpl0(cpu, "RDMSR")
    _set_edx_eax(cpu, msrs.rdmsr(cpu, cpu.regs[1] & 0xFFFFFFFF))


@handles("WRMSR", ends_block=True)
def wrmsr(cpu, ins):
    _cpl0(cpu, "WRMSR")
    msrs.wrmsr(cpu, cpu.regs[1] & 0xFFFFFFFF, _edx_eax(cpu))
    cpu.rip = ins.next_ip


@handles("CPUID")
def cpuid(cpu, ins):
    a, b, c, d = cpuid_query(cpu, cpu.regs[0] & 0xFFFFFFFF, cpu.regs[1] & 0xFFFFFFFF)
    regs = cpu.regs
    regs[0], regs[3], regs[1], regs[2] = a, b, c, d


def _tsc_check(cpu):
    if cpu.cr4 & CR4_TSD and cpu.cpl:
        raise gp(0, "RDTSC at CPL > 0 with CR4.TSD=1")


@handles("RDTSC")
def rdtsc(cpu, ins):
    if cpu.cr4 & CR4_TSD and cpu.cpl:         # _tsc_check, inline: guests time loops with it
        raise gp(0, "RDTSC at CPL > 0 with CR4.TSD=1")
    v = msrs.tsc_value(cpu, ins.idx)
    regs = cpu.regs
    regs[0], regs[2] = v & 0xFFFFFFFF, v >> 32


@handles("RDTSCP")
def rdtscp(cpu, ins):
    _tsc_check(cpu)
    _set_edx_eax(cpu, msrs.tsc_value(cpu, ins.idx))
    cpu.regs[1] = cpu.msr.get(msrs.TSC_AUX, 0) & 0xFFFFFFFF


@handles("RDPID")
def rdpid(cpu, ins):
    ins.set0(cpu, cpu.msr.get(msrs.TSC_AUX, 0))


@handles("RDPMC")
def rdpmc(cpu, ins):
    """RDPMC: CPL 0 or CR4.PCE; ECX selects a core counter (APM vol 2, 13.2)."""
    _set_edx_eax(cpu, cpu.msr.get(rdpmc_checks(cpu), 0))


def rdpmc_checks(cpu) -> int:
    """RDPMC's exceptions (#GP), then the counter's MSR; the SVM RDPMC
    intercept "Checks all exceptions before the SVM intercept" (table 15-7)."""
    if cpu.cpl and not cpu.cr4 & CR4_PCE:
        raise gp(0, "RDPMC at CPL > 0 with CR4.PCE=0")
    n = cpu.regs[1] & 0xFFFFFFFF
    if cpu_has(cpu, "perfctr_core"):
        if n > 5:
            raise gp(0, f"RDPMC: no counter {n}")
        return msrs.PERF_CTL_EXT + 2 * n + 1
    if n > 3:
        raise gp(0, f"RDPMC: no counter {n}")
    return msrs.PERF_CTR0 + n


# ================================================================ TLB and caches
def invlpg_linear(cpu, lin, cause="invlpg"):
    """Drop the translation of ``lin`` whatever its page size, globals included
    (APM 5.5.2); Tlb.flush_page drops every 4 KiB slice of a large page."""
    cpu.tlb.flush_page(lin >> 12, cause)


@handles("INVLPG")
def invlpg(cpu, ins):
    _cpl0(cpu, "INVLPG")
    invlpg_linear(cpu, cpu.linear(ins.seg, ins.ea(cpu)))


@handles("INVPCID")
def invpcid(cpu, ins):
    """INVPCID types 0-3 (APM vol 3 INVPCID)."""
    _cpl0(cpu, "INVPCID")
    kind = ins.get0(cpu)
    off = ins.ea(cpu)
    pcid_q = cpu.read(ins.seg, off, 8)
    lin = cpu.read(ins.seg, off + 8, 8)
    if kind > 3:
        raise gp(0, f"INVPCID: invalid type {kind}")
    if pcid_q >> 12:
        raise gp(0, "INVPCID: descriptor bits 63:12 must be zero")
    pcid = pcid_q & 0xFFF
    if kind in (0, 1) and pcid and not cpu.cr4 & CR4_PCIDE:
        raise gp(0, "INVPCID: PCID != 0 with CR4.PCIDE=0")
    tlb = cpu.tlb
    if kind == 0:
        if not _canonical(cpu, lin):
            raise gp(0, "INVPCID: non-canonical address")
        d = tlb._tagged.get((tlb.asid, pcid))
        if d is not None:
            d.pop(lin >> 12, None)
        tlb.epoch += 1                  # a flush (Tlb._count)
        tlb.drop_fast()
    elif kind == 1:
        tlb.flush_nonglobal("invpcid single-context", pcid=pcid)
    else:
        tlb.flush_asid("invpcid all-context" + (" incl. globals" if kind == 2 else ""),
                       keep_global=kind == 3)


@handles("WBINVD", "INVD", "WBNOINVD")
def wbinvd(cpu, ins):
    _cpl0(cpu, ins.name.upper())              # caches are not modelled: nothing to write back
    if ins.name != "wbnoinvd":
        cpu.machine.mem_engine.flush()        # ... but lines of every key are gone (SME/SEV)


@handles("CLFLUSH", "CLFLUSHOPT", "CLWB")
def clflush(cpu, ins):
    """A cache-line flush checks the address like a byte read (#GP/#SS/#PF)."""
    off = ins.ea(cpu)
    if cpu.seg_chk[ins.seg]:
        cpu.seg_check(ins.seg, off, 1, False)
    cpu.probing = True
    try:
        spa = cpu.translate(cpu.linear(ins.seg, off), cpu.user_access)
    finally:
        cpu.probing = False
    lines = cpu.machine.enc_lines
    if lines is not None and lines.dirty:
        ram_off = cpu.bus.ram_offset(spa & ~cpu.enc_mask)
        if ram_off is not None:
            lines.write_back_page(ram_off >> 12)     # a dirty decrypted line goes to DRAM


# ================================================================ halt, interrupts flag
@handles("HLT", ends_block=True)
def hlt(cpu, ins):
    _cpl0(cpu, "HLT")
    cpu.rip = ins.next_ip
    cpu.halted = True
    cpu.kick()                                # the engine checks for a wake-up event


def _iopl(cpu):
    return (cpu.rflags >> 12) & 3


def _if_allowed(cpu, name):
    """CLI/STI privilege (APM vol 3 CLI/STI): CPL <= IOPL, or VM86 IOPL=3."""
    if not cpu.cr0 & CR0_PE:
        return
    if cpu.rflags & VM:
        if _iopl(cpu) == 3:
            return
        if cpu.cr4 & CR4_VME:
            raise NotModelled(f"{name} in virtual-8086 mode with CR4.VME (VIF)")
        raise gp(0, f"{name} in virtual-8086 mode with IOPL < 3")
    if cpu.cpl > _iopl(cpu):
        if cpu.cr4 & CR4_PVI and cpu.cpl == 3:
            raise NotModelled(f"{name} with CR4.PVI (protected-mode virtual interrupts)")
        raise gp(0, f"{name} at CPL {cpu.cpl} > IOPL {_iopl(cpu)}")


@handles("CLI")
def cli(cpu, ins):
    _if_allowed(cpu, "CLI")
    cpu.rflags &= ~IF


@handles("STI", ends_block=True)
def sti(cpu, ins):
    _if_allowed(cpu, "STI")
    if not cpu.rflags & IF:
        cpu.shadow = True                     # one-instruction interrupt shadow
        cpu.rflags |= IF
        cpu.kick()
    cpu.rip = ins.next_ip


# ================================================================ PUSHF / POPF
@handles("PUSHF", "PUSHFD", "PUSHFQ")
def pushf(cpu, ins):
    if cpu.rflags & VM and _iopl(cpu) < 3:
        raise gp(0, "PUSHF in virtual-8086 mode with IOPL < 3")
    size = ins.osize
    cpu.push(cpu.get_rflags() & ~(RF | VM) & ((1 << (8 * size)) - 1), size)


def popf_mask(cpu, size):
    """Bits POPF may change (APM vol 3 POPF; CPL/IOPL/mode rules)."""
    m = WRITABLE & ~(VM | VIF | VIP | RF)
    if cpu.cr0 & CR0_PE:
        if cpu.rflags & VM:
            if _iopl(cpu) < 3:
                raise gp(0, "POPF in virtual-8086 mode with IOPL < 3")
            m &= ~IOPL
        elif cpu.cpl:
            m &= ~IOPL
            if cpu.cpl > _iopl(cpu):
                m &= ~IF                      # silently unchanged
    if size == 2:
        m &= 0xFFFF
    return m


@handles("POPF", "POPFD", "POPFQ", ends_block=True)
def popf(cpu, ins):
    size = ins.osize
    old = cpu.get_rflags()
    m = popf_mask(cpu, size)
    v = cpu.pop(size)
    new = (old & ~m & ~RF) | (v & m)
    cpu.set_rflags(new)
    if new & IF and not old & IF:
        cpu.kick()
    cpu.rip = ins.next_ip


# ================================================================ I/O
def io_check(cpu, port, size):
    """I/O permission (APM vol 2, 13.3.2): CPL <= IOPL, else the TSS bitmap."""
    if not cpu.cr0 & CR0_PE:
        return
    if not cpu.rflags & VM and cpu.cpl <= _iopl(cpu):
        return
    tr = cpu.tr
    if tr.attr & 0xF not in (0x9, 0xB) or tr.limit < 0x67:
        raise gp(0, f"I/O port {port:#x}: CPL > IOPL and no 32/64-bit TSS for the bitmap")
    base = tr.base
    iomap = cpu.read_sys((base + 0x66) & cpu.lin_mask_sys, 2)
    at = iomap + (port >> 3)
    if at + 1 > tr.limit:
        raise gp(0, f"I/O port {port:#x}: beyond the TSS I/O permission bitmap")
    bits = cpu.read_sys((base + at) & cpu.lin_mask_sys, 2)
    if bits >> (port & 7) & ((1 << size) - 1):
        raise gp(0, f"I/O port {port:#x}: denied by the TSS I/O permission bitmap")


@handles("IN")
def in_(cpu, ins):
    size = ins.opsz[0]
    port = ins.imm & 0xFF if ins.imm is not None else cpu.regs[2] & 0xFFFF
    io_check(cpu, port, size)
    ins.set0(cpu, cpu.io.read(port, size))


@handles("OUT")
def out(cpu, ins):
    size = ins.opsz[1]
    port = ins.imm & 0xFF if ins.imm is not None else cpu.regs[2] & 0xFFFF
    io_check(cpu, port, size)
    cpu.io.write(port, size, ins.get1(cpu))


def _areg_set(cpu, idx, v, asize):
    if asize == 8:
        cpu.regs[idx] = v & MASK64
    elif asize == 4:
        cpu.regs[idx] = v & 0xFFFFFFFF
    else:
        cpu.regs[idx] = (cpu.regs[idx] & ~0xFFFF) | (v & 0xFFFF)


def _probe_write(cpu, seg, off, size):
    """INS writes its element only after the port read; the write must not
    fault after the device has been read, so it is probed first (APM vol 3
    INS: a #PF leaves rDI and the port as they were).  A page in the fast
    write caches (``cpu.fw``, or ``cpu.fc`` for a page holding code) takes
    the write without a fault or an accessed/dirty update: those caches hold
    only what a recheck would allow (state.py ``_fill_fast``, npt.py
    ``_fill_fast``) and are dropped with the TLB entries they come from, so
    the full translation is skipped there, as ``Cpu.write`` skips it."""
    if not cpu.seg_chk[seg]:
        lin = (cpu.ebase[seg] + off) & cpu.lin_mask
        if (lin & 0xFFF) + size <= 0x1000:
            vpn = lin >> 12
            if vpn in cpu.fw or vpn in cpu.fc:
                return
    cpu.check_write(seg, off, size)


def _string_io(cpu, ins, size, inp):
    port = cpu.regs[2] & 0xFFFF
    io_check(cpu, port, size)
    asize = ins.asize
    amask = (1 << (8 * asize)) - 1
    step = -size if cpu.rflags & DF else size
    idx = 7 if inp else 6
    seg = ES if inp else ins.seg
    count = cpu.regs[1] & amask if ins.rep or ins.repne else None
    todo = None if count is None else min(count, MAX_REP_IO)
    if todo:
        cpu.stall += todo - 1            # each element takes 1 ns of virtual time
    while count is None or todo:
        off = cpu.regs[idx] & amask
        if inp:
            _probe_write(cpu, seg, off, size)
            cpu.write(seg, off, size, cpu.io.read(port, size))
        else:
            cpu.io.write(port, size, cpu.read(seg, off, size))
        _areg_set(cpu, idx, off + step, asize)
        if count is None:
            break
        count -= 1
        todo -= 1
        _areg_set(cpu, 1, count, asize)
    # A long REP INS/OUTS resumes at the same instruction (interrupts can come in).
    cpu.rip = ins.ip if count else ins.next_ip


MAX_REP_IO = 1 << 12     # elements per execution of REP INS/OUTS


_STRING_IO_SIZE = {"insb": 1, "insw": 2, "insd": 4, "outsb": 1, "outsw": 2, "outsd": 4}


@handles("INSB", "INSW", "INSD", ends_block=True)
def ins_(cpu, ins):
    _string_io(cpu, ins, _STRING_IO_SIZE[ins.name], True)


@handles("OUTSB", "OUTSW", "OUTSD", ends_block=True)
def outs(cpu, ins):
    _string_io(cpu, ins, _STRING_IO_SIZE[ins.name], False)


# ================================================================ misc
FEP = b"\x0f\x0bkvm"     # KVM's forced-emulation prefix: ud2; .ascii "kvm"


@handles("UD0", "UD1", "UD2", ends_block=True)
def ud2(cpu, ins):
    """#UD, always -- unless the CPU has the opt-in ``force-emulation-prefix``
    property (profiles.py; off by default: no processor has it) and this UD2
    starts KVM's forced-emulation prefix ``ud2; .ascii "kvm"`` (0F 0B 6B 76 6D).

    KVM (arch/x86/kvm/x86.c, handle_ud, module parameter
    ``force_emulation_prefix``) then skips the five bytes and emulates the
    instruction after them; kvm-unit-tests (lib/x86/desc.c, is_fep_available)
    probes for it and runs its ``*_emulate`` subtests only where it works.
    svmsim's interpreter is its only "emulator", so the prefix just retires
    like a five-byte instruction that ends here without a single-step or
    data-breakpoint trap of its own: the next instruction runs at the
    prefix's end with every rule of its own (intercepts, faults reported at
    its address -- where KVM leaves RIP -- and the TF trap after it).  As on
    KVM, where an L1 that intercepts #UD gets the prefix's #UD, the guest
    mode's extension may refuse it (``hooks.fep_allowed``).  Differences from
    KVM, which emulates the pair atomically: an interrupt may be taken
    between the prefix and its instruction (docs/DESIGN.md)."""
    if ins.mnemonic == _UD2 and getattr(cpu.machine.profile, "fep", False) and _fep_at(cpu, ins.ip):
        cpu.rip = (ins.ip + len(FEP)) & ((1 << cpu.bits) - 1)
        cpu.no_traps = True
        return
    raise ud(f"{ins.name.upper()}")


def _fep_at(cpu, ip) -> bool:
    """The five bytes at CS:ip are the forced-emulation prefix (read as code;
    bytes that cannot be fetched mean no prefix) and the mode allows it."""
    from ..segments import CS
    lin = (cpu.ebase[CS] + ip) & cpu.lin_mask
    data = b""
    try:
        while len(data) < len(FEP):
            n = min(len(FEP) - len(data), 0x1000 - (lin & 0xFFF))
            data += cpu.pread_bytes(cpu.fetch_spa(lin), n)
            lin = (lin + n) & cpu.lin_mask
    except CpuException:
        return False
    return data == FEP and (not cpu.svm_guest or cpu.hooks.fep_allowed(cpu))


def _rng(machine):
    """A deterministic generator per machine, so runs are reproducible."""
    g = getattr(machine, "rdrand_rng", None)
    if g is None:
        g = machine.rdrand_rng = random.Random(0x53564D53)
    return g


@handles("RDRAND", "RDSEED")
def rdrand(cpu, ins):
    """Always succeeds: CF=1, OF/SF/ZF/AF/PF=0 (APM vol 3 RDRAND)."""
    ins.set0(cpu, _rng(cpu.machine).getrandbits(8 * ins.osize))
    cpu.flags_settle()
    cpu.rflags = (cpu.rflags & ~ARITH) | CF


@handles("XGETBV")
def xgetbv(cpu, ins):
    if not cpu.cr4 & CR4_OSXSAVE:
        raise ud("XGETBV with CR4.OSXSAVE=0")
    if cpu.regs[1] & 0xFFFFFFFF:
        raise gp(0, "XGETBV: only XCR0 exists")
    _set_edx_eax(cpu, cpu.xcr0)


@handles("XSETBV")
def xsetbv(cpu, ins):
    """XCR0 rules (APM vol 3 XSETBV): x87 bit set, no unsupported bits,
    AVX (bit 2) only with SSE (bit 1)."""
    if not cpu.cr4 & CR4_OSXSAVE:
        raise ud("XSETBV with CR4.OSXSAVE=0")
    _cpl0(cpu, "XSETBV")
    if cpu.regs[1] & 0xFFFFFFFF:
        raise gp(0, "XSETBV: only XCR0 exists")
    v = _edx_eax(cpu)
    if not v & 1 or v & ~XCR0_SUPPORTED or (v & 4 and not v & 2):
        raise gp(0, f"XSETBV: invalid XCR0 value {v:#x}")
    cpu.xcr0 = v


def monitor_checks(cpu, ins):
    """Every exception MONITOR raises (#UD, #GP, #PF), without arming it: an
    SVM MONITOR intercept "Checks all exceptions before the intercept"."""
    if cpu.cpl:
        raise ud("MONITOR at CPL > 0")
    if cpu.regs[1] & 0xFFFFFFFF:
        raise gp(0, "MONITOR: ECX extensions not supported")
    seg = ins.seg if ins.seg is not None else DS
    amask = (1 << (8 * ins.asize)) - 1
    cpu.translate(cpu.linear(seg, cpu.regs[0] & amask), cpu.user_access)


@handles("MONITOR")
def monitor(cpu, ins):
    monitor_checks(cpu, ins)
    cpu.monitor_armed = True                  # MWAIT would wait (SVM MWAIT_COND intercept)


def mwait_checks(cpu, ins):
    """Every exception MWAIT raises (#UD, #GP), as monitor_checks."""
    if cpu.cpl:
        raise ud("MWAIT at CPL > 0")
    if cpu.regs[1] & ~1 & 0xFFFFFFFF:
        raise gp(0, "MWAIT: unsupported ECX extensions")


@handles("MWAIT")
def mwait(cpu, ins):
    """MWAIT as a hint: returns at once (a permitted implementation: the
    monitor may be triggered by any event)."""
    mwait_checks(cpu, ins)
    cpu.monitor_armed = False


@handles("RDFSBASE", "RDGSBASE")
def rdfsbase(cpu, ins):
    if not cpu.long64 or not cpu.cr4 & CR4_FSGSBASE:
        raise ud(f"{ins.name.upper()} outside 64-bit mode or with CR4.FSGSBASE=0")
    ins.set0(cpu, cpu.segs[FS if ins.name == "rdfsbase" else GS].base)


@handles("WRFSBASE", "WRGSBASE")
def wrfsbase(cpu, ins):
    if not cpu.long64 or not cpu.cr4 & CR4_FSGSBASE:
        raise ud(f"{ins.name.upper()} outside 64-bit mode or with CR4.FSGSBASE=0")
    v = ins.get0(cpu)
    if not _canonical(cpu, v):
        raise gp(0, f"{ins.name.upper()}: non-canonical base {v:#x}")
    cpu.segs[FS if ins.name == "wrfsbase" else GS].base = v
    cpu.update_mode()
