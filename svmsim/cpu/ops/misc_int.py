"""Legacy decimal arithmetic (DAA, DAS, AAA, AAS, AAM, AAD), SALC, and the
SMAP flag instructions CLAC/STAC (AMD APM vol 3).

The decimal-adjust instructions and SALC exist only outside 64-bit mode;
iced-x86 decodes their opcodes as invalid there, so the engine raises #UD
without reaching these handlers.  Flags the APM leaves undefined follow
QEMU TCG (the differential oracle):

* DAA/DAS: OF = 0.
* AAA/AAS: OF, SF, ZF, PF keep their previous values.
* AAM/AAD: CF = OF = AF = 0 (SF, ZF, PF from AL are defined).
"""
from . import handles
from ..exceptions import CpuException, DE, ud
from ..flags import ARITH, AF, CF, ZF, AC, PARITY


def _set_al(cpu, al):
    cpu.regs[0] = (cpu.regs[0] & ~0xFF) | al


def _szp8(al):
    return PARITY[al] | (ZF if al == 0 else 0) | (al & 0x80)


def _arith(cpu, f):
    cpu.rflags = (cpu.get_rflags() & ~ARITH) | f
    cpu.lf = None


@handles("DAA")
def daa(cpu, ins):
    """Decimal adjust AL after addition (APM vol 3 DAA)."""
    f = cpu.get_rflags()
    al = old = cpu.regs[0] & 0xFF
    out = 0
    if (al & 0x0F) > 9 or f & AF:
        al = (al + 6) & 0xFF
        out |= AF
    if old > 0x99 or f & CF:
        al = (al + 0x60) & 0xFF
        out |= CF
    _set_al(cpu, al)
    _arith(cpu, out | _szp8(al))


@handles("DAS")
def das(cpu, ins):
    """Decimal adjust AL after subtraction (APM vol 3 DAS)."""
    f = cpu.get_rflags()
    al = old = cpu.regs[0] & 0xFF
    out = 0
    if (al & 0x0F) > 9 or f & AF:
        out |= AF
        if al < 6 or f & CF:
            out |= CF
        al = (al - 6) & 0xFF
    if old > 0x99 or f & CF:
        al = (al - 0x60) & 0xFF
        out |= CF
    _set_al(cpu, al)
    _arith(cpu, out | _szp8(al))


def _ascii_adjust(cpu, add):
    """AAA/AAS: adjust AL (and carry into AH) after an unpacked-BCD op."""
    f = cpu.get_rflags()
    ax = cpu.regs[0]
    al, ah = ax & 0xFF, (ax >> 8) & 0xFF
    if (al & 0x0F) > 9 or f & AF:
        if add:
            ah = (ah + 1 + (al > 0xF9)) & 0xFF
            al = (al + 6) & 0x0F
        else:
            ah = (ah - 1 - (al < 6)) & 0xFF
            al = (al - 6) & 0x0F
        f |= CF | AF
    else:
        f &= ~(CF | AF)
        al &= 0x0F
    cpu.regs[0] = (ax & ~0xFFFF) | (ah << 8) | al
    cpu.rflags = f
    cpu.lf = None


@handles("AAA")
def aaa(cpu, ins):
    _ascii_adjust(cpu, True)


@handles("AAS")
def aas(cpu, ins):
    _ascii_adjust(cpu, False)


@handles("AAM")
def aam(cpu, ins):
    """AH = AL / base, AL = AL mod base; base 0 raises #DE (APM vol 3 AAM)."""
    base = ins.imm & 0xFF
    if base == 0:
        raise CpuException(DE, detail="AAM with base 0")
    al = cpu.regs[0] & 0xFF
    ah, al = divmod(al, base)
    cpu.regs[0] = (cpu.regs[0] & ~0xFFFF) | (ah << 8) | al
    _arith(cpu, _szp8(al))


@handles("AAD")
def aad(cpu, ins):
    """AL = (AH * base + AL) mod 256, AH = 0 (APM vol 3 AAD)."""
    base = ins.imm & 0xFF
    ax = cpu.regs[0]
    al = (((ax >> 8) & 0xFF) * base + (ax & 0xFF)) & 0xFF
    cpu.regs[0] = (ax & ~0xFFFF) | al
    _arith(cpu, _szp8(al))


@handles("SALC")
def salc(cpu, ins):
    """Undocumented D6: AL = CF ? FFh : 00h, flags unchanged (QEMU, Bochs)."""
    _set_al(cpu, 0xFF if cpu.get_rflags() & CF else 0)


def _smap_check(cpu, ins):
    """CLAC/STAC: #UD unless the CPU reports SMAP and CPL is 0 (APM vol 3 CLAC)."""
    from ..cpuid import has
    if not has(cpu, "smap"):
        raise ud("SMAP not supported by this CPU profile")
    if cpu.cpl != 0:
        raise ud(f"{ins.name.upper()} at CPL {cpu.cpl}")


@handles("CLAC", ends_block=True)
def clac(cpu, ins):
    _smap_check(cpu, ins)
    cpu.set_rflags(cpu.get_rflags() & ~AC)
    cpu.rip = ins.next_ip


@handles("STAC", ends_block=True)
def stac(cpu, ins):
    _smap_check(cpu, ins)
    cpu.set_rflags(cpu.get_rflags() | AC)
    cpu.rip = ins.next_ip
