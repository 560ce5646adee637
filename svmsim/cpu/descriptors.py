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


# ---------------------------------------------------------------- added for far transfers
# System-descriptor types (APM vol 2, table 4-5 legacy / 4-6 long mode).
SYS_TSS16_AVAIL, SYS_LDT, SYS_TSS16_BUSY, SYS_CALL16, SYS_TASK = 1, 2, 3, 4, 5
SYS_TSS_AVAIL, SYS_TSS_BUSY, SYS_CALL32 = 9, 0xB, 0xC      # 64-bit TSS / call gate in long mode


def sel_error(sel: int, ext: int = 0) -> int:
    """The selector error code (APM vol 2, 8.4.1): index and TI, RPL replaced by EXT."""
    return (sel & 0xFFFC) | ext


def is_null(sel: int) -> bool:
    """A null selector: index 0 in the GDT, any RPL (APM vol 2, 4.5.1)."""
    return sel & 0xFFFC == 0


def fetch_segment(cpu, sel: int, vector: int = GP, ext: int = 0):
    """(Segment, hi dword) of the descriptor ``sel`` names; #GP/#TS(sel) beyond the limit."""
    lo, hi = read_descriptor(cpu, sel, vector, ext)
    return to_segment(sel, lo, hi), hi


def read_descriptor16(cpu, sel: int, vector: int = GP, ext: int = 0):
    """All four dwords of a 16-byte long-mode system descriptor (APM vol 2, 4.8.3-4.8.5).

    The second half must fit below the table limit too, or the access
    faults with the selector as error code."""
    lo, hi = read_descriptor(cpu, sel, vector, ext)
    if sel & 4:
        base, limit = cpu.ldtr.base, cpu.ldtr.limit
    else:
        base, limit = cpu.gdtr_base, cpu.gdtr_limit
    index = sel & ~7
    if index + 15 > limit:
        raise CpuException(vector, sel_error(sel, ext), detail=f"selector {sel:#x}: 16-byte descriptor beyond limit")
    q = cpu.read_sys((base + index + 8) & cpu.lin_mask_sys, 8)
    return lo, hi, q & 0xFFFFFFFF, q >> 32


def set_busy(cpu, sel: int, hi: int) -> None:
    """Mark a TSS descriptor busy in the GDT (type 9 -> B), as LTR does (APM vol 2, 12.2.4)."""
    cpu.write_sys((cpu.gdtr_base + (sel & ~7) + 4) & cpu.lin_mask_sys, 4, hi | 0x200)


def canonical(addr: int, la57: bool = False) -> bool:
    """Canonical form: bits 63:47 (63:56 with 5-level paging) all equal (APM vol 2, 5.3.1)."""
    top = addr >> (56 if la57 else 47)
    return top == 0 or top == (0xFF if la57 else 0x1FFFF)
