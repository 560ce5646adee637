"""The state VMLOAD and VMSAVE move (APM vol 3 VMLOAD/VMSAVE): FS, GS, TR
and LDTR with their hidden parts, KernelGSBase, the SYSCALL and SYSENTER
MSRs.  SEV-ES's world switch moves the same state between the CPU, the
VMSA and the host save area (APM vol 2, 15.35.8-15.35.9)."""
import struct

from ..cpu.segments import Segment, FS, GS

MASK64 = (1 << 64) - 1
_ZEROS = (0,) * 16             # msr.get's default for each MSR VMSAVE stores


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
# times a million of each, and svm_vmrun_errata_test runs VMSAVE on every free page):
# each segment is one struct of the layout table's four fields (SEL, ATTRIB, LIMIT,
# BASE: 16 contiguous bytes) and the MSRs one struct over their contiguous block, so
# VMLOAD is five unpacks and VMSAVE five packs into one read-modify-write of the span
# (the bytes between the fields -- GDTR, IDTR, the rest of the save area -- stay as
# they were).
_SEG_PARTS = ("SEL", "ATTRIB", "LIMIT", "BASE")
_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


class StateSpan:
    """The VMLOAD state's fields of one layout table (``lookup``: name -> Field)."""

    SEGS = ("FS", "GS", "TR", "LDTR")

    def __init__(self, lookup):
        segs = [[lookup[f"{s}.{p}"] for p in _SEG_PARTS] for s in self.SEGS]
        msrs = sorted(((lookup[n], idx, n == "KERNEL_GS_BASE") for n, idx in MSR_STATE),
                      key=lambda t: t[0].offset)
        fields = [f for fs in segs for f in fs] + [f for f, _, _ in msrs]
        self.lo = min(f.offset for f in fields)
        self.n = max(f.end for f in fields) - self.lo
        self.seg_structs = []
        for fs in segs:
            self.seg_structs.append((self._run(fs), fs[0].offset - self.lo))
        self.msr_struct, self.msr_off = self._run([f for f, _, _ in msrs]), msrs[0][0].offset - self.lo
        self.msr_idx = tuple(idx for _, idx, _ in msrs)
        self.kgs = [i for i, (_, _, kgs) in enumerate(msrs) if kgs][0]

    def _run(self, fields):
        """One little-endian struct for fields that follow each other without gaps."""
        for a, b in zip(fields, fields[1:]):
            if a.end != b.offset:
                raise AssertionError(f"VMLOAD state fields {a.name}, {b.name} are not contiguous")
        return struct.Struct("<" + "".join(_FMT[f.end - f.offset] for f in fields))

    def _ram(self, bus, pa):
        """The RAM offset of the span of the VMCB at ``pa``, with a dirty
        decrypted line of its page written back first (as Bus.read_bytes
        does), or None when the page is not RAM (the bus's general path)."""
        if pa & 0xFFF:
            return None
        off = bus.ram_offset(pa)
        if off is None:
            return None
        if bus.dirty and off >> 12 in bus.dirty:
            bus.write_back(off >> 12)
        return off + self.lo

    def load(self, cpu, bus, pa) -> None:
        """VMLOAD from the VMCB at system-physical ``pa`` (as load_state)."""
        at = self._ram(bus, pa)
        if at is None:
            buf, at = bus.read_bytes(pa + self.lo, self.n), 0
        else:
            buf = bus.ram.buf                  # read in place: the span lies in one page
        top = 1 << (cpu.machine.profile.lin_bits - 1)
        low = 2 * top - 1
        segs = []
        for st, off in self.seg_structs:
            sel, attr, limit, base = st.unpack_from(buf, at + off)
            segs.append(Segment(sel, ((base & low) ^ top) - top & MASK64, limit, attr))
        fs, gs = segs[0], segs[1]
        cpu.segs[FS], cpu.segs[GS], cpu.tr, cpu.ldtr = segs
        vals = self.msr_struct.unpack_from(buf, at + self.msr_off)
        msr = cpu.msr
        msr.update(zip(self.msr_idx, vals))
        k = self.msr_idx[self.kgs]
        msr[k] = ((msr[k] & low) ^ top) - top & MASK64
        if cpu.long64:
            # 64-bit mode: only the FS and GS bases of update_mode's state change.
            cpu.ebase[4], cpu.ebase[5] = fs.base, gs.base
        else:
            cpu.update_mode()

    def _pack(self, cpu, buf) -> None:
        """The VMSAVE state packed into ``buf`` (the span's bytes), each
        value cut to its field's width (as a store into the field would)."""
        ss = self.seg_structs
        get = cpu.msr.get
        segs = (cpu.segs[FS], cpu.segs[GS], cpu.tr, cpu.ldtr)
        try:                                   # values within their fields: no masking
            for (st, off), seg in zip(ss, segs):
                st.pack_into(buf, off, seg.sel, seg.attr, seg.limit, seg.base)
            self.msr_struct.pack_into(buf, self.msr_off, *map(get, self.msr_idx, _ZEROS))
        except struct.error:
            for (st, off), seg in zip(ss, segs):
                st.pack_into(buf, off, seg.sel & 0xFFFF, seg.attr & 0xFFFF, seg.limit & 0xFFFFFFFF,
                             seg.base & MASK64)
            self.msr_struct.pack_into(buf, self.msr_off, *[get(i, 0) & MASK64 for i in self.msr_idx])

    def save(self, cpu, bus, pa) -> None:
        """VMSAVE into the VMCB at system-physical ``pa`` (as save_state).
        In RAM the span is rewritten, and the write watchers told, only when
        a byte of it changes (a hypervisor's loop saves the state it loaded;
        unchanged bytes need no notice, as in world.py's #VMEXIT writes)."""
        at = self._ram(bus, pa)
        if at is None:
            buf = bytearray(bus.read_bytes(pa + self.lo, self.n))
            self._pack(cpu, buf)
            bus.write_bytes(pa + self.lo, bytes(buf))
            return
        ram = bus.ram.buf
        end = at + self.n
        old = ram[at:end]
        buf = bytearray(old)
        self._pack(cpu, buf)
        if buf != old:
            ram[at:end] = buf
            for watch in bus.write_watchers:
                watch(at, self.n)
