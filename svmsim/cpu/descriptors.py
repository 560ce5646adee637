"""Descriptor-table access: GDT/LDT entries and selector checks (APM vol 2, 4.5-4.7)."""
from .exceptions import CpuException, GP
from .segments import descriptor_to_segment, Segment


def read_descriptor(cpu, sel: int, vector: int = GP, ext: int = 0):
    """(lo, hi) dwords of the descriptor ``sel`` names; faults with the
    selector's error code when it lies beyond the table limit."""
    index = sel & ~7
    if sel & 4:                         # TI=1: local descriptor table
        ldt = cpu.ldtr
        if not ldt.attr & 0x80 or ldt.sel & ~3 == 0:
            raise CpuException(vector, (sel & ~3) | ext, detail="LDT selector with no LDT loaded")
        base, limit = ldt.base, ldt.limit
    else:
        base, limit = cpu.gdtr_base, cpu.gdtr_limit
    if index + 7 > limit:
        raise CpuException(vector, (sel & ~3) | ext, detail=f"selector {sel:#x} beyond descriptor table limit")
    q = cpu.read_sys((base + index) & cpu.lin_mask_sys, 8)
    return q & 0xFFFFFFFF, q >> 32


def read_system_descriptor16(cpu, sel: int, vector: int = GP):
    """A 16-byte system descriptor (long-mode TSS/LDT/call gate): (lo, hi, upper32)."""
    lo, hi = read_descriptor(cpu, sel, vector)
    index = sel & ~7
    base = cpu.gdtr_base if not sel & 4 else cpu.ldtr.base
    limit = cpu.gdtr_limit if not sel & 4 else cpu.ldtr.limit
    if index + 15 > limit:
        raise CpuException(vector, sel & ~3, detail=f"selector {sel:#x}: 16-byte descriptor beyond limit")
    upper = cpu.read_sys((base + index + 8) & cpu.lin_mask_sys, 4)
    return lo, hi, upper


def set_accessed(cpu, sel: int, hi: int) -> None:
    """Set the descriptor's accessed bit in memory, as a segment load does."""
    if hi & 0x100:
        return
    base = cpu.gdtr_base if not sel & 4 else cpu.ldtr.base
    cpu.write_sys((base + (sel & ~7) + 4) & cpu.lin_mask_sys, 4, hi | 0x100)


def to_segment(sel: int, lo: int, hi: int) -> Segment:
    return descriptor_to_segment(sel, lo, hi)
