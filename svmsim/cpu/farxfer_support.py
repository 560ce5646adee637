"""TSS stack lookups used by interrupt delivery and far calls (APM vol 2, 12.2.5, 12.2.6)."""
from .exceptions import CpuException, TS
from .descriptors import read_descriptor, to_segment


def tss_rsp_64(cpu, cpl=None, ist=None) -> int:
    """RSPn or ISTn from the 64-bit TSS."""
    off = 4 + 8 * cpl if ist is None else 0x24 + 8 * (ist - 1)
    if off + 7 > cpu.tr.limit:
        raise CpuException(TS, cpu.tr.sel & ~3, detail="TSS too small for the stack pointer")
    return cpu.read_sys((cpu.tr.base + off) & cpu.lin_mask_sys, 8)


def tss_stack_32(cpu, cpl, ext):
    """(SS segment, ESP) for privilege level ``cpl`` from a 32-bit TSS."""
    tss = cpu.tr
    if tss.attr & 0xF not in (0x9, 0xB):
        from ..errors import NotModelled
        raise NotModelled("16-bit TSS stack switch")
    off = 4 + 8 * cpl
    if off + 5 > tss.limit:
        raise CpuException(TS, (tss.sel & ~3) | ext, detail="TSS too small for SS:ESP")
    esp = cpu.read_sys((tss.base + off) & 0xFFFFFFFF, 4)
    sel = cpu.read_sys((tss.base + off + 4) & 0xFFFFFFFF, 2)
    if sel & ~3 == 0:
        raise CpuException(TS, ext, detail="null SS in TSS")
    lo, hi = read_descriptor(cpu, sel, TS, ext)
    seg = to_segment(sel, lo, hi)
    a = seg.attr
    if sel & 3 != cpl or seg.dpl != cpl or not a & 0x10 or a & 8 or not a & 2:
        raise CpuException(TS, (sel & ~3) | ext, detail=f"bad stack segment {sel:#x} in TSS")
    if not a & 0x80:
        raise CpuException(11 + 1, (sel & ~3) | ext, detail="TSS stack segment not present")
    return seg, esp
