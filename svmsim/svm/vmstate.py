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


# ---------------------------------------------------------------- VMLOAD/VMSAVE on a VMCB
# VMLOAD and VMSAVE run in hypervisors' inner loops (kvm-unit-tests' latency_svm_insn
# times a million of each): the state is moved as one struct unpack (and pack) of the
# span of the page it occupies, compiled from the layout table (packed.Packed carries
# the bytes between the fields, so VMSAVE writes nothing else).
_SEG_PARTS = ("SEL", "ATTRIB", "LIMIT", "BASE")


class StateSpan:
    """The VMLOAD state's fields of one layout table (``lookup``: name -> Field)."""

    def __init__(self, lookup):
        from .packed import Packed
        self.segs = [[f"{s}.{p}" for p in _SEG_PARTS] for s in ("FS", "GS", "TR", "LDTR")]
        fields = [lookup[n] for names in self.segs for n in names] + [lookup[n] for n, _ in MSR_STATE]
        lo, hi = min(f.offset for f in fields), max(f.end for f in fields)
        self.packed, self.lo, self.n = Packed(fields, lo, hi), lo, hi - lo
        ix = self.packed.index
        self.seg_ix = [[ix[n] for n in names] for names in self.segs]
        self.msr_ix = [(ix[name], idx, name == "KERNEL_GS_BASE") for name, idx in MSR_STATE]

    def load(self, cpu, bus, pa) -> None:
        """VMLOAD from the VMCB at system-physical ``pa`` (as load_state)."""
        vals = self.packed.unpack(bus.read_bytes(pa + self.lo, self.n), -self.lo)
        bits = cpu.machine.profile.lin_bits
        segs = [Segment(vals[s], canonical(vals[b], bits), vals[l], vals[a]) for s, a, l, b in self.seg_ix]
        cpu.segs[FS], cpu.segs[GS], cpu.tr, cpu.ldtr = segs
        for i, idx, canon in self.msr_ix:
            cpu.msr[idx] = canonical(vals[i], bits) if canon else vals[i]
        cpu.update_mode()

    def save(self, cpu, bus, pa) -> None:
        """VMSAVE into the VMCB at system-physical ``pa`` (as save_state)."""
        buf = bytearray(bus.read_bytes(pa + self.lo, self.n))
        vals = self.packed.unpack(buf, -self.lo)
        for (s, a, l, b), seg in zip(self.seg_ix, (cpu.segs[FS], cpu.segs[GS], cpu.tr, cpu.ldtr)):
            vals[s], vals[a], vals[l], vals[b] = seg.sel & 0xFFFF, seg.attr & 0xFFFF, \
                seg.limit & 0xFFFFFFFF, seg.base & MASK64
        for i, idx, _ in self.msr_ix:
            vals[i] = cpu.msr.get(idx, 0) & MASK64
        self.packed.pack_into(buf, -self.lo, vals)
        bus.write_bytes(pa + self.lo, bytes(buf))
