"""The state VMLOAD and VMSAVE move (APM vol 3 VMLOAD/VMSAVE): FS, GS, TR
and LDTR with their hidden parts, KernelGSBase, the SYSCALL and SYSENTER
MSRs.  SEV-ES's world switch moves the same state between the CPU, the
VMSA and the host save area (APM vol 2, 15.35.8-15.35.9)."""
from ..cpu.segments import Segment, FS, GS

MASK64 = (1 << 64) - 1


def canonical(value: int, lin_bits: int) -> int:
    """``value`` sign-extended from bit lin_bits - 1 to bit 63."""
    top = 1 << (lin_bits - 1)
    return ((value & (2 * top - 1)) ^ top) - top & MASK64

MSR_STATE = (("KERNEL_GS_BASE", 0xC0000102), ("STAR", 0xC0000081), ("LSTAR", 0xC0000082),
             ("CSTAR", 0xC0000083), ("SFMASK", 0xC0000084), ("SYSENTER_CS", 0x174),
             ("SYSENTER_ESP", 0x175), ("SYSENTER_EIP", 0x176))


def load_state(cpu, v) -> None:
    """The VMLOAD state from a save-area view (a VMCB, or the VMSA and the
    host save area of SEV-ES, whose world switch does the same, 15.35.8-9).
    Segment bases and KernelGSBase are made canonical, as VMRUN does to the
    segments it loads (APM vol 2, 15.5.1: "canonicalize (i.e., sign-extend
    to bit 63) ... All base addresses in the segment registers that have
    been loaded"); kvm-unit-tests' svm_guest_state_test finds hardware's
    VMLOAD/VMSAVE do so."""
    bits = cpu.machine.profile.lin_bits
    for name, idx in (("FS", FS), ("GS", GS)):
        sel, attr, limit, base = v.segment(name)
        cpu.segs[idx] = Segment(sel, canonical(base, bits), limit, attr)
    for name in ("TR", "LDTR"):
        sel, attr, limit, base = v.segment(name)
        setattr(cpu, name.lower(), Segment(sel, canonical(base, bits), limit, attr))
    for name, idx in MSR_STATE:
        cpu.msr[idx] = canonical(v[name], bits) if name == "KERNEL_GS_BASE" else v[name]
    cpu.update_mode()


def save_state(cpu, v) -> None:
    """The VMSAVE state into a save-area view."""
    for name, seg in (("FS", cpu.segs[FS]), ("GS", cpu.segs[GS]), ("TR", cpu.tr), ("LDTR", cpu.ldtr)):
        v.set_segment(name, seg.sel, seg.attr, seg.limit, seg.base)
    for name, idx in MSR_STATE:
        v[name] = cpu.msr.get(idx, 0)
