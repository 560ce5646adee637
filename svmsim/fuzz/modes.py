"""A machine whose BSP is already in a chosen mode (real, 16/32-bit protected,
compatibility or 64-bit long mode), set up through the public API the way
a boot loader leaves it: a GDT at GDT, flat segments, and for the long modes
identity paging of the first 4 GiB with 2 MiB pages (optionally with the
C-bit set in every leaf, APM vol 2, 7.10.1).  The campaigns execute random
code on it."""
from ..machine import Machine
from ..cpu.segments import Segment, descriptor_to_segment, ES, CS, SS, DS, FS, GS

MODES = ("real", "prot16", "prot32", "compat32", "long64")
CODE_ADDR = 0x100000
STACK_TOP = 0x80000
GDT = 0x500
PML4, PDPT, PD = 0x10000, 0x11000, 0x12000       # PD: 4 tables, 0x12000-0x15FFF
IDT = 0x1000

CODE64 = 0x00AF9A000000FFFF
CODE32 = 0x00CF9A000000FFFF
DATA32 = 0x00CF92000000FFFF
CODE16 = 0x00009A000000FFFF
GDT_ENTRIES = [0, CODE64, DATA32, CODE32, CODE16, DATA32 | (3 << 45), CODE64 | (3 << 45)]
SELECTORS = {"long64": (CODE64, 0x08), "compat32": (CODE32, 0x18), "prot32": (CODE32, 0x18),
             "prot16": (CODE16, 0x20)}


def _seg(desc, sel):
    return descriptor_to_segment(sel, desc & 0xFFFFFFFF, desc >> 32)


def machine(mode: str = "long64", mem_size="16M", cbit: int | None = None, **kw) -> Machine:
    """A Machine with CPU 0 in ``mode``.  ``cbit``: set this page-table bit in
    every leaf (memory encryption; SYSCFG.MemEncryptionModEn is the caller's)."""
    m = Machine(mem_size=mem_size, **kw)
    cpu = m.cpus[0]
    for i, d in enumerate(GDT_ENTRIES):
        m.bus.write(GDT + 8 * i, 8, d)
    cpu.gdtr_base, cpu.gdtr_limit = GDT, 8 * len(GDT_ENTRIES) - 1
    cpu.idtr_base, cpu.idtr_limit = 0, 0x3FF if mode == "real" else 0
    if mode == "real":
        cpu.cr0 = 0x10
        for i in range(6):
            cpu.segs[i] = Segment(0, 0, 0xFFFF, 0x93)
        cpu.segs[CS] = Segment(0, 0, 0xFFFF, 0x9B)
    else:
        cpu.cr0 = 0x11 | (1 << 5)                # PE, ET, NE
        data = _seg(DATA32, 0x10)
        for i in (ES, SS, DS, FS, GS):
            cpu.segs[i] = data.copy()
        cpu.segs[CS] = _seg(*SELECTORS[mode])
        if mode in ("long64", "compat32"):
            c = (1 << cbit) if cbit else 0
            m.bus.write(PML4, 8, PDPT | 3)
            for g in range(4):
                m.bus.write(PDPT + 8 * g, 8, (PD + 0x1000 * g) | 3)
                for i in range(512):
                    m.bus.write(PD + 0x1000 * g + 8 * i, 8, ((g * 512 + i) << 21) | 0x83 | c)
            cpu.cr3 = PML4
            cpu.cr4 = 1 << 5                     # PAE
            cpu.efer = (1 << 8) | (1 << 10) | (1 << 11) | 1     # LME, LMA, NXE, SCE
            cpu.cr0 |= 1 << 31 | 1 << 16         # PG, WP
    cpu.regs[4] = STACK_TOP
    cpu.tlb.flush_all("fuzz")
    cpu.update_mode()
    return m
