"""Registers by name, for the Python API and the gdb stub: one table.

Each register has a width, a getter and (where writing makes sense) a setter
that behaves like the instruction that writes it: CR0/CR3/CR4/CR8 as MOV CRn,
EFER as WRMSR, FS/GS base as WRMSR FS_BASE/GS_BASE; an invalid value raises
ValueError with the reason (the #GP the instruction would take).  Segment
selectors can be set in real mode only (base = selector << 4), as QEMU's stub
does outside protected mode; elsewhere loading one needs a descriptor and
the debugger does not read tables behind the guest's back.

The order of ``GDB_REGS`` is the ``g`` packet order of QEMU's x86-64 target
(gdb-xml/i386-64bit.xml: GPRs in rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp
order, rip, eflags, selectors, fs_base, gs_base, k_gs_base, cr0, cr2, cr3,
cr4, cr8, efer, x87, xmm0-15, mxcsr), the upper YMM halves (gdb's AVX feature),
followed by svmsim's own: debug and
descriptor-table registers and the SVM state (guest mode, ASID, GIF, VMCB).
"""
from dataclasses import dataclass

from ..cpu import fpu_state
from ..cpu.exceptions import CpuException
from ..cpu.segments import ES, CS, SS, DS, FS, GS, Segment

GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
MSR_KERNEL_GS_BASE, MSR_EFER = 0xC0000102, 0xC0000080


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    get: object                 # get(cpu) -> int
    set: object = None          # set(cpu, value); None: read-only
    group: str = "general"      # gdb register group
    type: str = "int64"         # gdb type of the register's value
    feature: str = "core"


def _as_value_error(fn):
    """Run an instruction-like setter; its #GP becomes a ValueError."""
    def setter(cpu, value):
        try:
            fn(cpu, value)
        except CpuException as e:
            raise ValueError(str(e)) from None
    return setter


def _gpr(i):
    def get(cpu):
        return cpu.regs[i]

    def put(cpu, v):
        cpu.regs[i] = v & ((1 << 64) - 1)
    return get, put


def _set_rip(cpu, v):
    cpu.rip = v & cpu.lin_mask


def _set_rflags(cpu, v):
    cpu.set_rflags(v)


def _selector(seg):
    def get(cpu):
        return cpu.segs[seg].sel

    def put(cpu, v):
        if cpu.segs[seg].sel == v & 0xFFFF:
            return
        if cpu.cr0 & 1:
            raise ValueError("segment selectors can be set by the debugger only in real mode")
        old = cpu.segs[seg]
        cpu.segs[seg] = Segment(v & 0xFFFF, (v & 0xFFFF) << 4, old.limit, old.attr)
        cpu.update_mode()
    return get, put


def _seg_base(seg, msr):
    def get(cpu):
        return cpu.segs[seg].base

    def put(cpu, v):
        from ..cpu import msr as msrs
        msrs.segbase_write(cpu, msr, v)
        cpu.update_mode()
    return get, _as_value_error(put)


def _cr(n):
    from ..cpu.ops import system

    def get(cpu):
        return system.read_cr8(cpu) if n == 8 else getattr(cpu, f"cr{n}")
    writers = {0: system.write_cr0, 3: system.write_cr3, 4: system.write_cr4, 8: system.write_cr8}

    def put(cpu, v):
        if n == 2:
            cpu.cr2 = v & ((1 << 64) - 1)
        else:
            writers[n](cpu, v)
    return get, _as_value_error(put)


def _efer():
    from ..cpu import msr as msrs

    def put(cpu, v):
        msrs.efer_write(cpu, MSR_EFER, v)
    return (lambda cpu: cpu.efer), _as_value_error(put)


def _msr(index):
    return lambda cpu: cpu.msr.get(index, 0)


def _dr(n):
    def get(cpu):
        return cpu.dr[n]

    def put(cpu, v):
        from ..cpu import debug
        cpu.dr[n] = v & ((1 << 64) - 1)
        debug.sync(cpu)
    return get, put


# -- x87 and SSE (fpu_state keeps physical registers R0-R7; ST(i) = R[(TOP + i) & 7]) --
def _top(cpu):
    return (cpu.fpu_fsw >> 11) & 7


def _st(i):
    def get(cpu):
        fpu_state.ensure(cpu)
        return cpu.fpu_st[(_top(cpu) + i) & 7]

    def put(cpu, v):
        fpu_state.ensure(cpu)
        cpu.fpu_st[(_top(cpu) + i) & 7] = v & ((1 << 80) - 1)
    return get, put


def _fpu(attr):
    def get(cpu):
        fpu_state.ensure(cpu)
        return getattr(cpu, attr)

    def put(cpu, v):
        fpu_state.ensure(cpu)
        setattr(cpu, attr, v & 0xFFFFFFFF)
    return get, put


def _xmm(i):
    def get(cpu):
        fpu_state.ensure(cpu)
        return cpu.xmm[i]

    def put(cpu, v):
        fpu_state.ensure(cpu)
        cpu.xmm[i] = v & ((1 << 128) - 1)
    return get, put


def _ymmh(i):
    def get(cpu):
        fpu_state.ensure(cpu)
        return getattr(cpu, "ymmh", [0] * 16)[i]

    def put(cpu, v):
        fpu_state.ensure(cpu)
        cpu.ymmh[i] = v & ((1 << 128) - 1)
    return get, put


def _gdb_gprs():
    order = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + GPR_NAMES[8:]
    types = {"rbp": "data_ptr", "rsp": "data_ptr"}
    return [Reg(n, 64, *_gpr(GPR_NAMES.index(n)), type=types.get(n, "int64")) for n in order]


def _build():
    regs = _gdb_gprs()
    regs.append(Reg("rip", 64, lambda cpu: cpu.rip, _set_rip, type="code_ptr"))
    regs.append(Reg("eflags", 32, lambda cpu: cpu.get_rflags(), _set_rflags, type="i386_eflags"))
    for name, seg in (("cs", CS), ("ss", SS), ("ds", DS), ("es", ES), ("fs", FS), ("gs", GS)):
        regs.append(Reg(name, 32, *_selector(seg), type="int32"))
    regs.append(Reg("fs_base", 64, *_seg_base(FS, 0xC0000100), group="system"))
    regs.append(Reg("gs_base", 64, *_seg_base(GS, 0xC0000101), group="system"))
    regs.append(Reg("k_gs_base", 64, _msr(MSR_KERNEL_GS_BASE), group="system"))
    for n in (0, 2, 3, 4, 8):
        regs.append(Reg(f"cr{n}", 64, *_cr(n), group="system"))
    regs.append(Reg("efer", 64, *_efer(), group="system"))
    for i in range(8):
        regs.append(Reg(f"st{i}", 80, *_st(i), group="float", type="i387_ext"))
    for name, attr in (("fctrl", "fpu_fcw"), ("fstat", "fpu_fsw"), ("ftag", "fpu_ftw"),
                       ("fiseg", "fpu_fcs"), ("fioff", "fpu_fip"), ("foseg", "fpu_fds"),
                       ("fooff", "fpu_fdp"), ("fop", "fpu_fop")):
        regs.append(Reg(name, 32, *_fpu(attr), group="float", type="int"))
    for i in range(16):
        regs.append(Reg(f"xmm{i}", 128, *_xmm(i), group="vector", type="vec128", feature="sse"))
    regs.append(Reg("mxcsr", 32, *_fpu("mxcsr"), group="vector", type="i386_mxcsr", feature="sse"))
    for i in range(16):             # bits 255:128 of YMM0-15 (gdb shows $ymm0..15 from xmm + these)
        regs.append(Reg(f"ymm{i}h", 128, *_ymmh(i), group="vector", type="uint128", feature="avx"))
    # svmsim's own feature: debug, descriptor tables, SVM state.
    for n in (0, 1, 2, 3, 6, 7):
        regs.append(Reg(f"dr{n}", 64, *_dr(n), group="system", feature="svmsim"))
    for name in ("gdtr_base", "idtr_base"):
        regs.append(Reg(name, 64, (lambda a: lambda cpu: getattr(cpu, a))(name), group="system",
                        feature="svmsim"))
    for name in ("gdtr_limit", "idtr_limit"):
        regs.append(Reg(name, 32, (lambda a: lambda cpu: getattr(cpu, a))(name), group="system",
                        feature="svmsim", type="int32"))
    regs.append(Reg("svm_guest", 32, lambda cpu: int(cpu.svm_guest), group="system", feature="svmsim",
                    type="int32"))
    regs.append(Reg("asid", 32, lambda cpu: cpu.svm.asid if cpu.svm_guest else 0, group="system",
                    feature="svmsim", type="int32"))
    regs.append(Reg("gif", 32, lambda cpu: int(cpu.gif), group="system", feature="svmsim", type="int32"))
    regs.append(Reg("vmcb", 64, lambda cpu: getattr(cpu.svm, "vmcb_pa", 0), group="system", feature="svmsim"))
    return tuple(regs)


GDB_REGS = _build()
BY_NAME = {r.name: r for r in GDB_REGS}
BY_NAME["rflags"] = BY_NAME["eflags"]


def _sub(full, bits, high=False):
    """32/16/8-bit views of a GPR (writes as the instruction would: 32-bit
    zero-extends, 16/8-bit merge)."""
    i = GPR_NAMES.index(full)
    shift = 8 if high else 0
    mask = ((1 << bits) - 1) << shift

    def get(cpu):
        return (cpu.regs[i] & mask) >> shift

    def put(cpu, v):
        if bits == 32:
            cpu.regs[i] = v & 0xFFFFFFFF
        else:
            cpu.regs[i] = (cpu.regs[i] & ~mask) | ((v << shift) & mask)
    return Reg(f"{full}:{bits}", bits, get, put)


_E = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_W = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
_B = ("al", "cl", "dl", "bl")
for _i, _full in enumerate(GPR_NAMES[:8]):
    BY_NAME[_E[_i]] = _sub(_full, 32)
    BY_NAME[_W[_i]] = _sub(_full, 16)
for _i, _full in enumerate(GPR_NAMES[:4]):
    BY_NAME[_B[_i]] = _sub(_full, 8)
    BY_NAME[_B[_i][0] + "h"] = _sub(_full, 8, high=True)
for _full in GPR_NAMES[8:]:
    BY_NAME[_full + "d"] = _sub(_full, 32)
BY_NAME["eip"] = Reg("eip", 32, lambda cpu: cpu.rip & 0xFFFFFFFF, _set_rip)


def lookup(name: str) -> Reg:
    reg = BY_NAME.get(name.lower())
    if reg is None:
        raise KeyError(f"no register {name!r} (known: {', '.join(sorted(BY_NAME))})")
    return reg


def read(cpu, name: str) -> int:
    return lookup(name).get(cpu)


def write(cpu, name: str, value: int) -> None:
    reg = lookup(name)
    if reg.set is None:
        raise ValueError(f"register {name} is read-only here")
    reg.set(cpu, int(value))
