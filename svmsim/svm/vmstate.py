"""The state VMLOAD and VMSAVE move (APM vol 3 VMLOAD/VMSAVE): FS, GS, TR
and LDTR with their hidden parts, KernelGSBase, the SYSCALL and SYSENTER
MSRs.  SEV-ES's world switch moves the same state between the CPU, the
VMSA and the host save area (APM vol 2, 15.35.8-15.35.9)."""
from ..cpu.segments import Segment, FS, GS

MSR_STATE = (("KERNEL_GS_BASE", 0xC0000102), ("STAR", 0xC0000081), ("LSTAR", 0xC0000082),
             ("CSTAR", 0xC0000083), ("SFMASK", 0xC0000084), ("SYSENTER_CS", 0x174),
             ("SYSENTER_ESP", 0x175), ("SYSENTER_EIP", 0x176))


def load_state(cpu, v) -> None:
    """The VMLOAD state from a save-area view (a VMCB, or the VMSA and the
    host save area of SEV-ES, whose world switch does the same, 15.35.8-9)."""
    for name, idx in (("FS", FS), ("GS", GS)):
        sel, attr, limit, base = v.segment(name)
        cpu.segs[idx] = Segment(sel, base, limit, attr)
    for name in ("TR", "LDTR"):
        sel, attr, limit, base = v.segment(name)
        setattr(cpu, name.lower(), Segment(sel, base, limit, attr))
    for name, idx in MSR_STATE:
        cpu.msr[idx] = v[name]
    cpu.update_mode()


def save_state(cpu, v) -> None:
    """The VMSAVE state into a save-area view."""
    for name, seg in (("FS", cpu.segs[FS]), ("GS", cpu.segs[GS]), ("TR", cpu.tr), ("LDTR", cpu.ldtr)):
        v.set_segment(name, seg.sel, seg.attr, seg.limit, seg.base)
    for name, idx in MSR_STATE:
        v[name] = cpu.msr.get(idx, 0)
