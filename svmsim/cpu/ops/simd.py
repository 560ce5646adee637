"""Shared machinery of the vector families: MMX, SSE (legacy encoding) and
AVX (VEX encoding).

Register state (svmsim/cpu/fpu_state.py): ``cpu.xmm[i]`` holds bits 127:0 of
XMM/YMM register i, ``cpu.ymmh[i]`` bits 255:128; MMX register i is the low 64
bits of x87 physical register R<i> (``cpu.fpu_st[i]``).

An instruction's semantics is a *kernel*: a function of plain integers
``kernel(a, b, nb, imm, ctx) -> result`` where ``a``/``b`` are the source
vectors, ``nb`` the vector width in bytes (8 MMX, 16 XMM, 32 YMM), ``imm``
the immediate and ``ctx`` the softfloat context of FP kernels.  The wrappers
here add what the encoding decides (APM vol 4, "Exceptions" of each
instruction; Intel SDM vol 2 2.4-2.5 exception classes):

* legacy SSE: #UD if CR0.EM=1 or CR4.OSFXSR=0, #NM if CR0.TS=1; a 16-byte
  memory operand must be 16-byte aligned (#GP(0)) unless the instruction
  says otherwise; the destination is the first source; bits 255:128 of the
  YMM register are preserved.
* VEX: #UD if CR4.OSXSAVE=0, XCR0.SSE or XCR0.YMM is clear, or in real and
  virtual-8086 mode; #NM if CR0.TS=1; no alignment rule except for the
  explicitly aligned moves; VEX.128 zeroes bits 255:128 of the destination.
* MMX: #UD if CR0.EM=1, #NM if CR0.TS=1, #MF if an unmasked x87 exception is
  pending; executing one sets TOP=0 and tags every register valid, a write
  sets bits 79:64 of the register to all ones (APM vol 1, 5.x "MMX").
* SIMD floating point: flags from every element are gathered; an unmasked
  pre-computation exception (IE, DE, ZE) or, failing that, an unmasked
  post-computation one (OE, UE, PE) sets those flags and raises #XM
  (CR4.OSXMMEXCPT=1) or #UD (=0) with the destination unchanged.
"""
import array

from iced_x86 import OpKind, Register as R, EncodingKind

from .. import softfloat as sf
from ..exceptions import CpuException, NM, XF, MF, gp, ud

M32, M64, M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
CR0_PE, CR0_EM, CR0_TS = 1, 4, 8
CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE = 1 << 9, 1 << 10, 1 << 18
RFLAGS_VM = 1 << 17

# operand kinds in a layout
X, Y, MM, MEM, GPR, IMM, OTHER = range(7)


class Layout:
    """What the operands of one decoded instruction are (built once)."""
    __slots__ = ("kind", "idx", "vex", "nb", "mmx")


def layout(ins) -> Layout:
    lo = ins.vx
    if lo is None:
        lo = ins.vx = _build(ins)
    return lo


def _build(ins):
    i = ins.iced
    lo = Layout()
    kinds, idxs = [], []
    for n in range(i.op_count):
        k = i.op_kind(n)
        if k == OpKind.REGISTER:
            r = i.op_register(n)
            if R.XMM0 <= r <= R.XMM15:
                kinds.append(X)
                idxs.append(r - R.XMM0)
            elif R.YMM0 <= r <= R.YMM15:
                kinds.append(Y)
                idxs.append(r - R.YMM0)
            elif R.MM0 <= r <= R.MM7:
                kinds.append(MM)
                idxs.append(r - R.MM0)
            else:
                kinds.append(GPR)
                idxs.append(n)
        elif k == OpKind.MEMORY:
            kinds.append(MEM)
            idxs.append(n)
        else:
            kinds.append(IMM if k != OpKind.REGISTER else OTHER)
            idxs.append(n)
    lo.kind, lo.idx = tuple(kinds), tuple(idxs)
    lo.vex = i.encoding == EncodingKind.VEX
    lo.mmx = MM in kinds
    if Y in kinds or (lo.vex and MEM in kinds and ins.mem_size == 32):
        lo.nb = 32
    else:
        lo.nb = 8 if lo.mmx and X not in kinds else 16
    return lo


# ---------------------------------------------------------------- checks
def sse_check(cpu):
    cr0 = cpu.cr0
    if cr0 & CR0_EM or not cpu.cr4 & CR4_OSFXSR:
        raise ud("SSE instruction with CR0.EM=1 or CR4.OSFXSR=0")
    if cr0 & CR0_TS:
        raise CpuException(NM, detail="SSE instruction with CR0.TS=1")


def avx_check(cpu):
    if not cpu.cr4 & CR4_OSXSAVE or cpu.xcr0 & 6 != 6:
        raise ud("VEX instruction with CR4.OSXSAVE=0 or XCR0.SSE/YMM clear")
    if not cpu.cr0 & CR0_PE or cpu.rflags & RFLAGS_VM:
        raise ud("VEX instruction in real or virtual-8086 mode")
    if cpu.cr0 & CR0_TS:
        raise CpuException(NM, detail="VEX instruction with CR0.TS=1")


def mmx_enter(cpu):
    """MMX instruction entry: checks, then TOP=0 and all tags valid."""
    cr0 = cpu.cr0
    if cr0 & CR0_EM:
        raise ud("MMX instruction with CR0.EM=1")
    if cr0 & CR0_TS:
        raise CpuException(NM, detail="MMX instruction with CR0.TS=1")
    if cpu.fpu_fsw & 0x80:
        e = x87_pending(cpu)           # None with CR0.NE = 0: IRQ 13 raised, the instruction runs
        if e is not None:
            raise e
    cpu.fpu_fsw &= ~0x3800
    cpu.fpu_ftw = 0


def x87_pending(cpu):
    """An unmasked x87 exception is pending (FSW.ES): #MF with CR0.NE=1; with
    NE=0 the chipset's FERR# -> IRQ 13 path (APM vol 2, 8.2.17)."""
    if cpu.cr0 & 0x20:
        return CpuException(MF, detail="pending unmasked x87 exception (FSW.ES=1)")
    cpu.machine.raise_irq(13, True)
    cpu.machine.raise_irq(13, False)
    return None


def check(cpu, lo):
    if lo.vex:
        avx_check(cpu)
    elif lo.mmx:
        mmx_enter(cpu)
    else:
        sse_check(cpu)


def commit(cpu, ctx):
    """Fold a kernel's FP flags into MXCSR; raise #XM/#UD if one is unmasked."""
    f = ctx.flags
    if not f:
        return
    mx = cpu.mxcsr
    unmasked = f & ~(mx >> 7) & 0x3F
    if unmasked:
        pre = f & (sf.IE | sf.DE | sf.ZE)
        if pre & ~(mx >> 7):
            f = pre
        cpu.mxcsr = mx | f
        raise simd_fp_exception(cpu, f & ~(mx >> 7) & 0x3F)
    cpu.mxcsr = mx | f


def simd_fp_exception(cpu, which):
    names = "IE DE ZE OE UE PE".split()
    what = " ".join(n for b, n in enumerate(names) if which >> b & 1)
    if cpu.cr4 & CR4_OSXMMEXCPT:
        return CpuException(XF, detail=f"unmasked SIMD floating-point exception ({what})")
    return ud(f"unmasked SIMD floating-point exception ({what}) with CR4.OSXMMEXCPT=0")


def ctx_of(cpu):
    return sf.mxcsr_ctx(cpu.mxcsr)


# ---------------------------------------------------------------- memory
def mem_read(cpu, ins, size, align=0):
    off = ins.ea(cpu)
    seg = ins.seg
    if align and cpu.linear(seg, off) & (align - 1):
        raise gp(0, f"{ins.name}: memory operand not {align}-byte aligned")
    if size <= 8:
        return cpu.read(seg, off, size)
    if not cpu.seg_chk[seg]:
        # within one page of plain RAM: one slice (the fast read cache
        # holds only pages that need no further check, see Cpu.translate)
        lin = (cpu.ebase[seg] + off) & cpu.lin_mask
        o = lin & 0xFFF
        if o + size <= 0x1000:
            b = cpu.fr.get(lin >> 12)
            if b is not None:
                b += o
                return int.from_bytes(cpu.ram[b:b + size], "little")
    v = 0
    for i in range(0, size, 8):
        v |= cpu.read(seg, off + i, 8) << (8 * i)
    return v


def mem_write(cpu, ins, size, value, align=0):
    off = ins.ea(cpu)
    seg = ins.seg
    if align and cpu.linear(seg, off) & (align - 1):
        raise gp(0, f"{ins.name}: memory operand not {align}-byte aligned")
    if size <= 8:
        cpu.write(seg, off, size, value)
        return
    if not cpu.seg_chk[seg]:
        lin = (cpu.ebase[seg] + off) & cpu.lin_mask
        o = lin & 0xFFF
        if o + size <= 0x1000:
            b = cpu.fw.get(lin >> 12)
            if b is not None:
                b += o
                cpu.ram[b:b + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
                return
    cpu.check_write(seg, off, size)
    for i in range(0, size, 8):
        cpu.write(seg, off + i, 8, (value >> (8 * i)) & M64)


# ---------------------------------------------------------------- operands
_GET = ("get0", "get1", "get2")


def rd(cpu, ins, lo, n, align=0):
    """Value of operand n (vector register, MMX register, memory, GPR)."""
    k = lo.kind[n]
    i = lo.idx[n]
    if k == X:
        return cpu.xmm[i]
    if k == Y:
        return cpu.xmm[i] | (cpu.ymmh[i] << 128)
    if k == MM:
        return cpu.fpu_st[i] & M64
    if k == MEM:
        return mem_read(cpu, ins, ins.mem_size, align)
    if k == GPR:
        return getattr(ins, _GET[n])(cpu)
    return ins.imm


def is4(cpu, ins, lo):
    """The fourth (register) operand of VEX is4 forms (VBLENDVPS ...)."""
    i = lo.idx[3]
    return cpu.xmm[i] | (cpu.ymmh[i] << 128 if lo.kind[3] == Y else 0)


def wr(cpu, ins, lo, value, n=0, align=0):
    """Write operand n (default the destination) by the encoding's rules."""
    k = lo.kind[n]
    i = lo.idx[n]
    if k == X:
        cpu.xmm[i] = value & M128
        if lo.vex:
            cpu.ymmh[i] = 0
    elif k == Y:
        cpu.xmm[i] = value & M128
        cpu.ymmh[i] = (value >> 128) & M128
    elif k == MM:
        cpu.fpu_st[i] = (0xFFFF << 64) | (value & M64)
    elif k == MEM:
        mem_write(cpu, ins, ins.mem_size, value, align)
    elif k == GPR:
        (ins.set0 if n == 0 else ins.set1)(cpu, value)


def legacy_align(ins, lo, n):
    """Legacy SSE: a 16-byte memory operand must be aligned."""
    return 16 if not lo.vex and lo.kind[n] == MEM and ins.mem_size == 16 else 0


# ---------------------------------------------------------------- lanes
_U = {1: "B", 2: "H", 4: "I", 8: "Q"}
_S = {1: "b", 2: "h", 4: "i", 8: "q"}


def split(v, w, nb, signed=False):
    """Lanes of w bytes of an nb-byte vector (unsigned or signed ints)."""
    return memoryview(v.to_bytes(nb, "little")).cast((_S if signed else _U)[w])


def join(seq, w):
    m = (1 << (8 * w)) - 1
    return int.from_bytes(array.array(_U[w], [x & m for x in seq]).tobytes(), "little")


def per_lane128(k):
    """A kernel whose operation works inside 128-bit lanes (AVX2 ymm forms
    apply it to each half)."""
    def kernel(a, b, nb, imm, ctx):
        if nb <= 16:
            return k(a, b, nb, imm, ctx)
        lo = k(a & M128, b & M128, 16, imm, ctx)
        hi = k(a >> 128, b >> 128, 16, imm, ctx)
        return lo | (hi << 128)
    return kernel


# ---------------------------------------------------------------- handler builders
def _register(names, fn):
    from . import handles
    handles(*names)(fn)


def binary(kernel, legacy=(), vex=(), fp=False, align=True):
    """dst = kernel(src1, src2): legacy ``op dst, src``; VEX ``op dst, src1, src2``."""
    def h_legacy(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        b = rd(cpu, ins, lo, 1, legacy_align(ins, lo, 1) if align else 0)
        a = rd(cpu, ins, lo, 0)
        ctx = sf.mxcsr_ctx(cpu.mxcsr) if fp else None
        r = kernel(a, b, lo.nb, ins.imm, ctx)
        if fp:
            commit(cpu, ctx)
        wr(cpu, ins, lo, r)

    def h_vex(cpu, ins):
        lo = layout(ins)
        avx_check(cpu)
        b = rd(cpu, ins, lo, 2)
        a = rd(cpu, ins, lo, 1)
        ctx = sf.mxcsr_ctx(cpu.mxcsr) if fp else None
        r = kernel(a, b, lo.nb, ins.imm, ctx)
        if fp:
            commit(cpu, ctx)
        wr(cpu, ins, lo, r)
    if legacy:
        _register(legacy, h_legacy)
    if vex:
        _register(vex, h_vex)
    return kernel


def unary(kernel, legacy=(), vex=(), fp=False, align=True, vex_align=False):
    """dst = kernel(src): ``op dst, src`` in both encodings."""
    def h(cpu, ins):
        lo = layout(ins)
        check(cpu, lo)
        if lo.vex:
            al = lo.nb if vex_align and lo.kind[1] == MEM else 0
        else:
            al = legacy_align(ins, lo, 1) if align else 0
        b = rd(cpu, ins, lo, 1, al)
        ctx = sf.mxcsr_ctx(cpu.mxcsr) if fp else None
        r = kernel(0, b, lo.nb, ins.imm, ctx)
        if fp:
            commit(cpu, ctx)
        wr(cpu, ins, lo, r)
    _register(tuple(legacy) + tuple(vex), h)
    return kernel
