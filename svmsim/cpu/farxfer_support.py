"""TSS stack lookups used by interrupt delivery and far calls (APM vol 2, 12.2.5, 12.2.6)."""
from struct import pack, unpack_from

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


# ---------------------------------------------------------------- 64-bit stack frames
# An event's frame and IRET's are five or six stack slots.  Where all of them
# lie on one page in the CPU's fast read (write) cache, in 64-bit mode (no
# segment base or limit), no slot can fault and none reaches a device or
# translated code (those caches hold plain RAM reachable without a fault,
# state.py ``_fill_fast``), so the slots are moved at once; otherwise slot by
# slot, in the order that decides which fault comes first.
_SLOT_FMT = {8: "Q", 4: "I", 2: "H"}


def frame_on_one_page(cpu, low: int, nbytes: int, cache):
    """The RAM offset of ``nbytes`` at 64-bit stack address ``low`` if they
    lie on one page in ``cache`` (``cpu.fr`` or ``cpu.fw``), else None."""
    o = low & 0xFFF
    if o + nbytes > 0x1000 or not cpu.long64:
        return None
    b = cache.get(low >> 12)
    return None if b is None else b + o


def pop_slots(cpu, size: int, n: int):
    """``n`` pops of ``size`` bytes from a 64-bit stack read at once, RSP
    advanced past them, or None where they must be popped one by one."""
    rsp = cpu.regs[4]
    b = frame_on_one_page(cpu, rsp, size * n, cpu.fr)
    if b is None:
        return None
    cpu.regs[4] = (rsp + size * n) & 0xFFFF_FFFF_FFFF_FFFF
    return unpack_from("<%d%s" % (n, _SLOT_FMT[size]), cpu.ram, b)


def write_slots(cpu, low: int, values) -> bool:
    """Store ``values`` (8 bytes each, the first at ``low``) at once if they
    lie on one page of the fast write cache; False: nothing written."""
    b = frame_on_one_page(cpu, low, 8 * len(values), cpu.fw)
    if b is None:
        return False
    cpu.ram[b:b + 8 * len(values)] = pack("<%dQ" % len(values), *values)
    return True


# ---------------------------------------------------------------- added for far transfers
# Everything below is shared by the segment-load and far-transfer handlers in
# ops/farxfer.py.  The checks follow AMD APM vol 2, 4.10-4.13 (privilege
# checks) and the instruction pages of APM vol 3; the Intel SDM vol 2
# pseudo-code was used as a cross-check.
from .exceptions import GP, NP, SS as SS_VEC
from .segments import (Segment, CS, SS, DS, ES, FS, GS, A_S, A_P, A_L, A_DB,
                       T_CODE, T_CONFORMING, T_READABLE, T_WRITABLE)
from .descriptors import fetch_segment, set_accessed, sel_error, is_null, canonical

EFER_LMA = 1 << 10
F_VM = 0x20000
V86_ATTR = 0xF3        # present, DPL 3, read/write accessed data (APM vol 2, 4.3: v86 loads)


class Rollback:
    """Undo register, segment and CPL changes if a fault interrupts a
    multi-step instruction (far CALL, IRET...), so the fault stays precise.

    Memory the instruction already wrote (stack slots below the old stack
    pointer, accessed bits) stays written, as on hardware.

    The segment registers, LDTR and TR are kept as the objects they are:
    these instructions put new Segment objects into the CPU (from descriptors,
    ``real_segment``, ``null_segment``...) and change only those in place
    (``enter_code``, the accessed bit of a loaded SS), never one the CPU
    held before, so the old objects still hold the old values."""

    def __init__(self, cpu):
        self.cpu = cpu

    def __enter__(self):
        c = self.cpu
        self.saved = (list(c.regs), c.rip, c.get_rflags(), list(c.segs), c.cpl, c.ldtr, c.tr)
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, CpuException):
            return False
        c = self.cpu
        regs, rip, flags, segs, cpl, ldtr, tr = self.saved
        c.regs[:] = regs
        c.rip = rip
        c.set_rflags(flags)
        c.segs[:] = segs
        c.cpl, c.ldtr, c.tr = cpl, ldtr, tr
        c.update_mode()
        return False


def protected(cpu) -> bool:
    """Protected mode proper: CR0.PE=1 and not virtual-8086 mode."""
    return bool(cpu.cr0 & 1) and not cpu.rflags & F_VM


def long_mode(cpu) -> bool:
    return bool(cpu.efer & EFER_LMA)


def is_64bit_code(cpu, seg: Segment) -> bool:
    """A code segment that runs in 64-bit mode (L=1 while long mode is active)."""
    return long_mode(cpu) and bool(seg.attr & A_L)


# ---------------------------------------------------------------- data segment loads
def real_segment(old: Segment, sel: int) -> Segment:
    """Real mode: only the selector and base change; the limit and attributes
    left by earlier protected-mode loads stay (what "unreal mode" relies on;
    QEMU and Bochs agree)."""
    return Segment(sel & 0xFFFF, (sel & 0xFFFF) << 4, old.limit, old.attr)


def v86_segment(sel: int) -> Segment:
    """Virtual-8086 mode: base = sel << 4, 64 KiB limit, DPL 3 data (APM vol 2, 4.3)."""
    return Segment(sel & 0xFFFF, (sel & 0xFFFF) << 4, 0xFFFF, V86_ATTR)


def null_segment(old: Segment, sel: int) -> Segment:
    """A null selector load.  AMD keeps the hidden base and limit (Linux calls
    this X86_BUG_NULL_SEG; Xen's "nul selector handling" fix documents it) and
    marks the register unusable: any later use in legacy modes gets #GP(0)."""
    return Segment(sel & 0xFFFF, old.base, old.limit, 0)


def check_data_load(cpu, index: int, sel: int) -> Segment:
    """The segment a protected-mode load of DS/ES/FS/GS/SS gives, or the fault.

    APM vol 3 MOV (Sreg) / POP / LDS exceptions and vol 2, 4.10.1 (data) and
    4.10.3 (stack).  Sets the descriptor's accessed bit."""
    cpl = cpu.cpl
    rpl = sel & 3
    if is_null(sel):
        if index != SS:
            return null_segment(cpu.segs[index], sel)
        # 64-bit mode lets the OS run at CPL 0-2 with a null SS (APM vol 2, 4.5.1).
        if cpu.long64 and cpl < 3 and rpl == cpl:
            return null_segment(cpu.segs[SS], sel)
        raise CpuException(GP, 0, detail="null selector loaded into SS")
    seg, hi = fetch_segment(cpu, sel)
    a = seg.attr
    err = sel_error(sel)
    if index == SS:
        if rpl != cpl or seg.dpl != cpl:
            raise CpuException(GP, err, detail=f"SS {sel:#x}: RPL/DPL must equal CPL {cpl}")
        if not a & A_S or a & T_CODE or not a & T_WRITABLE:
            raise CpuException(GP, err, detail=f"SS {sel:#x} is not a writable data segment")
        if not a & A_P:
            raise CpuException(SS_VEC, err, detail=f"stack segment {sel:#x} not present")
    else:
        if not a & A_S or (a & T_CODE and not a & T_READABLE):
            raise CpuException(GP, err, detail=f"{sel:#x} is not a data or readable code segment")
        conforming_code = a & T_CODE and a & T_CONFORMING
        if not conforming_code and (rpl > seg.dpl or cpl > seg.dpl):
            raise CpuException(GP, err, detail=f"{sel:#x}: DPL {seg.dpl} < max(CPL {cpl}, RPL {rpl})")
        if not a & A_P:
            raise CpuException(NP, err, detail=f"segment {sel:#x} not present")
    set_accessed(cpu, sel, hi)
    seg.attr |= 1
    return seg


def load_data_segment(cpu, index: int, sel: int) -> None:
    """Load DS/ES/FS/GS/SS in the current mode and recompute derived state.

    In 64-bit mode a load of FS or GS takes the descriptor's 32-bit base
    (the upper half cleared), replacing what WRMSR FS_BASE/GS_BASE put there
    (APM vol 2, 4.5.3)."""
    if not cpu.cr0 & 1:
        seg = real_segment(cpu.segs[index], sel)
    elif cpu.rflags & F_VM:
        seg = v86_segment(sel)
    else:
        seg = check_data_load(cpu, index, sel)
    cpu.segs[index] = seg
    cpu.update_mode()


# ---------------------------------------------------------------- code segments
def code_offset_ok(cpu, seg: Segment, off: int) -> None:
    """#GP(0) for a target outside the new code segment (limit, or canonical
    form when the target runs in 64-bit mode)."""
    if is_64bit_code(cpu, seg):
        if not canonical(off, bool(cpu.cr4 & (1 << 12))):
            raise CpuException(GP, 0, detail=f"non-canonical far target {off:#x}")
    elif off > seg.limit:
        raise CpuException(GP, 0, detail=f"far target {off:#x} beyond CS limit {seg.limit:#x}")


def check_long_code(cpu, seg: Segment, sel: int) -> None:
    """L=1 together with D=1 is reserved in long mode: #GP(sel) (APM vol 2, 4.8.1)."""
    if long_mode(cpu) and seg.attr & A_L and seg.attr & A_DB:
        raise CpuException(GP, sel_error(sel), detail=f"code segment {sel:#x} has both L and D set")


def check_return_cs(cpu, sel: int):
    """CS checks for far RET and IRET (APM vol 3 RET (Far), IRET): returns (Segment, hi)."""
    if is_null(sel):
        raise CpuException(GP, 0, detail="return to a null CS")
    seg, hi = fetch_segment(cpu, sel)
    a = seg.attr
    rpl = sel & 3
    err = sel_error(sel)
    if not a & A_S or not a & T_CODE:
        raise CpuException(GP, err, detail=f"return CS {sel:#x} is not a code segment")
    if rpl < cpu.cpl:
        raise CpuException(GP, err, detail=f"return to CS RPL {rpl} < CPL {cpu.cpl}")
    if a & T_CONFORMING and seg.dpl > rpl:
        raise CpuException(GP, err, detail=f"conforming return CS DPL {seg.dpl} > RPL {rpl}")
    if not a & T_CONFORMING and seg.dpl != rpl:
        raise CpuException(GP, err, detail=f"return CS DPL {seg.dpl} != RPL {rpl}")
    check_long_code(cpu, seg, sel)
    if not a & A_P:
        raise CpuException(NP, err, detail=f"return CS {sel:#x} not present")
    return seg, hi


def check_return_ss(cpu, sel: int, rpl: int, cs: Segment):
    """SS checks on a return to an outer level (or any IRETQ from 64-bit mode).

    A null SS is allowed only when returning to 64-bit mode at CPL < 3
    (APM vol 3 IRET, RET (Far)).  Returns (Segment, hi or None)."""
    if is_null(sel):
        if is_64bit_code(cpu, cs) and rpl != 3:
            return null_segment(cpu.segs[SS], sel), None
        raise CpuException(GP, 0, detail="return to a null SS")
    seg, hi = fetch_segment(cpu, sel)
    a = seg.attr
    err = sel_error(sel)
    if sel & 3 != rpl or seg.dpl != rpl:
        raise CpuException(GP, err, detail=f"return SS {sel:#x}: RPL/DPL must be {rpl}")
    if not a & A_S or a & T_CODE or not a & T_WRITABLE:
        raise CpuException(GP, err, detail=f"return SS {sel:#x} is not a writable data segment")
    if not a & A_P:
        raise CpuException(SS_VEC, err, detail=f"return SS {sel:#x} not present")
    return seg, hi


def enter_code(cpu, seg: Segment, cpl: int, rip: int, update: bool = True) -> None:
    """Commit a new CS (RPL forced to the new CPL), CPL and RIP; ``update``
    False leaves the mode's derived state to the caller's ``update_mode``."""
    seg.sel = (seg.sel & ~3) | cpl
    seg.attr |= 1
    cpu.segs[CS] = seg
    cpu.cpl = cpl
    cpu.rip = rip
    if update:
        cpu.update_mode()


def null_outer_data_segments(cpu) -> None:
    """After a return to an outer level, DS/ES/FS/GS that the new CPL may not
    use (data or non-conforming code with DPL < CPL) become null (APM vol 2,
    4.11.3; vol 3 RET (Far), IRET).  The base stays, as for any AMD null load."""
    cpl = cpu.cpl
    for i in (ES, DS, FS, GS):
        s = cpu.segs[i]
        a = s.attr
        if not a & A_P or not a & A_S:
            continue
        if (not a & T_CODE or not a & T_CONFORMING) and s.dpl < cpl:
            cpu.segs[i] = null_segment(s, 0)
