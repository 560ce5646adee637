"""Put a CPU into the state a boot loader hands over (BootInfo -> registers)."""
from ..cpu.segments import Segment, SEG_NAMES

_GPR = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


def apply_entry_state(cpu, info) -> None:
    """Load the BSP with the Multiboot entry state QEMU gives (spec 3.2)."""
    for i, name in enumerate(_GPR):
        cpu.regs[i] = info.regs.get(name, 0) & 0xFFFFFFFF
    cpu.rip = info.regs.get("eip", info.entry) & 0xFFFFFFFF
    cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.efer = info.cr0, info.cr2, info.cr3, info.cr4, info.efer
    for i, name in enumerate(SEG_NAMES):
        s = info.segments[name]
        cpu.segs[i] = Segment(s.selector, s.base, s.limit, s.attrib)
    for name in ("ldtr", "tr"):
        s = info.segments.get(name)
        if s is not None:
            setattr(cpu, name, Segment(s.selector, s.base, s.limit, s.attrib))
    cpu.gdtr_base, cpu.gdtr_limit = info.gdtr.base, info.gdtr.limit
    cpu.idtr_base, cpu.idtr_limit = info.idtr.base, info.idtr.limit
    cpu.cpl = 0
    cpu.set_rflags(info.eflags)
    cpu.tlb.flush_all("boot")
    cpu.update_mode()
