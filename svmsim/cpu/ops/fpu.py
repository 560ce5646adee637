"""x87/SSE state management and the SSE moves freestanding kernels use.

* (x87 instructions are in x87.py, vector instructions in simd.py and its
  families.)
* State save/restore: FXSAVE/FXRSTOR (and the REX.W forms), XSAVE, XSAVEOPT,
  XSAVEC, XRSTOR for the x87 and SSE components, LDMXCSR/STMXCSR
  (APM vol 1 11.4-11.5, vol 4 FXSAVE/LDMXCSR, vol 3 XSAVE*).
* MOVNTI (the vector moves are in sse_mov.py).

Exceptions: x87 instructions raise #NM when CR0.EM or CR0.TS is set (FWAIT:
TS and MP); SSE instructions #UD when CR0.EM=1 or CR4.OSFXSR=0 and #NM when
CR0.TS=1; XSAVE-family #UD when CR4.OSXSAVE=0 and #NM when CR0.TS=1.

EFER.FFXSR (fast FXSAVE/FXRSTOR): in 64-bit mode at CPL 0 the XMM registers
are neither saved nor restored (APM vol 2, 3.1.7).
"""
from . import handles
from .. import fpu_state as fs
from ..exceptions import CpuException, NM, gp, ud

CR0_MP, CR0_EM, CR0_TS = 2, 4, 8
CR4_OSFXSR, CR4_OSXSAVE = 1 << 9, 1 << 18
EFER_FFXSR = 1 << 14


# ---------------------------------------------------------------- checks
def sse_check(cpu):
    if cpu.cr0 & CR0_EM or not cpu.cr4 & CR4_OSFXSR:
        raise ud("SSE instruction with CR0.EM=1 or CR4.OSFXSR=0")
    if cpu.cr0 & CR0_TS:
        raise CpuException(NM, detail="SSE instruction with CR0.TS=1")
    fs.ensure(cpu)


def xsave_check(cpu):
    if not cpu.cr4 & CR4_OSXSAVE:
        raise ud("XSAVE-family instruction with CR4.OSXSAVE=0")
    if cpu.cr0 & CR0_TS:
        raise CpuException(NM, detail="XSAVE-family instruction with CR0.TS=1")
    fs.ensure(cpu)


def _aligned(cpu, ins, align):
    off = ins.ea(cpu)
    if cpu.linear(ins.seg, off) & (align - 1):
        raise gp(0, f"{ins.name}: memory operand not {align}-byte aligned")
    return off


# ---------------------------------------------------------------- memory helpers
def read_bytes(cpu, seg, off, n):
    out = bytearray()
    for i in range(0, n, 8):
        out += cpu.read(seg, off + i, 8).to_bytes(8, "little")
    return bytes(out)


def write_image(cpu, seg, off, parts: dict):
    """Write {offset: bytes} pieces, probing every page first so a fault
    leaves memory untouched (precise)."""
    for rel, data in parts.items():
        cpu.check_write(seg, off + rel, len(data))
    for rel, data in parts.items():
        for i in range(0, len(data), 8):
            chunk = data[i:i + 8]
            cpu.write(seg, off + rel + i, len(chunk), int.from_bytes(chunk, "little"))


# ---------------------------------------------------------------- FXSAVE / FXRSTOR
def _fx_checks(cpu, ins):
    if cpu.cr0 & CR0_EM:
        raise ud("FXSAVE/FXRSTOR with CR0.EM=1")
    if cpu.cr0 & CR0_TS:
        raise CpuException(NM, detail="FXSAVE/FXRSTOR with CR0.TS=1")
    fs.ensure(cpu)
    return _aligned(cpu, ins, 16)


def _fx_xmm(cpu):
    """How many XMM registers FXSAVE/FXRSTOR transfer (0 with fast FXSAVE)."""
    if cpu.efer & EFER_FFXSR and cpu.long64 and cpu.cpl == 0:
        return 0
    return 16 if cpu.long64 else 8


@handles("FXSAVE", "FXSAVE64")
def fxsave(cpu, ins):
    off = _fx_checks(cpu, ins)
    nxmm = _fx_xmm(cpu)
    img = fs.legacy_image(cpu, ins.name == "fxsave64", nxmm=nxmm, with_sse=nxmm > 0)
    write_image(cpu, ins.seg, off, img)


@handles("FXRSTOR", "FXRSTOR64")
def fxrstor(cpu, ins):
    off = _fx_checks(cpu, ins)
    img = read_bytes(cpu, ins.seg, off, 512)
    mxcsr = int.from_bytes(img[24:28], "little")
    if mxcsr & ~fs.MXCSR_MASK:
        raise gp(0, f"FXRSTOR: reserved MXCSR bits {mxcsr:#x}")
    nxmm = _fx_xmm(cpu)
    fs.load_legacy(cpu, img, ins.name == "fxrstor64", nxmm=nxmm, with_sse=nxmm > 0)


# ---------------------------------------------------------------- XSAVE family
# Components: 0 x87 and 1 SSE in the legacy region, 2 AVX (YMM_Hi128) at 576 in
# both formats (the first extended component; CPUID Fn0000_000D_x2).  No
# supervisor component exists, so IA32_XSS must stay 0 (msr.py).
XSS_MSR = 0xDA0
YMM_OFF, YMM_SIZE = 576, 256


def _rfbm(cpu, supervisor=False):
    mask = cpu.xcr0 | (cpu.msr.get(XSS_MSR, 0) if supervisor else 0)
    return mask & ((cpu.regs[2] & 0xFFFFFFFF) << 32 | (cpu.regs[0] & 0xFFFFFFFF))


def _nregs(cpu):
    return 16 if cpu.long64 else 8


def _xsave(cpu, ins, compacted, supervisor=False):
    """XSAVE/XSAVEOPT/XSAVEC/XSAVES (APM vol 3, vol 1 11.5).

    XSTATE_BV[i] is set for every saved component (the processor may
    report a component in its initial state as in use; XSAVEOPT's
    modified-state optimisation is not modelled, which the manual allows).
    The compacted forms write XCOMP_BV = bit 63 | RFBM."""
    xsave_check(cpu)
    if supervisor and cpu.cpl:
        raise gp(0, f"{ins.name.upper()} at CPL {cpu.cpl}")
    off = _aligned(cpu, ins, 64)
    rfbm = _rfbm(cpu, supervisor)
    rex_w = ins.name.endswith("64")
    img = fs.legacy_image(cpu, rex_w, with_x87=bool(rfbm & 1), with_sse=bool(rfbm & 2),
                          nxmm=_nregs(cpu), with_mxcsr=bool(rfbm & 2))
    if rfbm & 4:
        img[YMM_OFF] = b"".join(cpu.ymmh[i].to_bytes(16, "little") for i in range(_nregs(cpu)))
    saved = rfbm & 7
    if compacted:
        header = saved.to_bytes(8, "little") + ((1 << 63) | rfbm).to_bytes(8, "little")
    else:
        hdr = cpu.read(ins.seg, off + 512, 8)
        header = ((hdr & ~rfbm) | saved).to_bytes(8, "little")    # only XSTATE_BV is written
    img[512] = header
    write_image(cpu, ins.seg, off, img)


@handles("XSAVE", "XSAVE64", "XSAVEOPT", "XSAVEOPT64")
def xsave(cpu, ins):
    _xsave(cpu, ins, compacted=False)


@handles("XSAVEC", "XSAVEC64")
def xsavec(cpu, ins):
    _xsave(cpu, ins, compacted=True)


@handles("XSAVES", "XSAVES64")
def xsaves(cpu, ins):
    _xsave(cpu, ins, compacted=True, supervisor=True)


def _xrstor(cpu, ins, supervisor=False):
    """XRSTOR/XRSTORS (APM vol 3): header checks, then per requested component
    either load it (XSTATE_BV[i]=1) or set its initial state."""
    xsave_check(cpu)
    if supervisor and cpu.cpl:
        raise gp(0, f"{ins.name.upper()} at CPL {cpu.cpl}")
    off = _aligned(cpu, ins, 64)
    img = read_bytes(cpu, ins.seg, off, YMM_OFF + YMM_SIZE)
    xstate_bv = int.from_bytes(img[512:520], "little")
    xcomp_bv = int.from_bytes(img[520:528], "little")
    allowed = cpu.xcr0 | (cpu.msr.get(XSS_MSR, 0) if supervisor else 0)
    rfbm = _rfbm(cpu, supervisor)
    compacted = bool(xcomp_bv >> 63)
    if supervisor and not compacted:
        raise gp(0, "XRSTORS: XCOMP_BV[63] must be set (compacted format)")
    if compacted:
        comp = xcomp_bv & ~(1 << 63)
        if comp & ~allowed or xstate_bv & ~comp or any(img[528:576]):
            raise gp(0, "XRSTOR (compacted): XCOMP_BV/XSTATE_BV not allowed, or header bytes set")
    else:
        if xstate_bv & ~cpu.xcr0 or any(img[520:576]):
            raise gp(0, "XRSTOR: XSTATE_BV beyond XCR0 or reserved header bytes set")
    load_mxcsr = bool(rfbm & 2) if not compacted else bool(rfbm & 2 and xstate_bv & 2)
    mxcsr = int.from_bytes(img[24:28], "little")
    if load_mxcsr and mxcsr & ~fs.MXCSR_MASK:
        raise gp(0, f"XRSTOR: reserved MXCSR bits {mxcsr:#x}")
    rex_w = ins.name.endswith("64")
    nregs = _nregs(cpu)
    if rfbm & 1:
        if xstate_bv & 1:
            fs.load_legacy(cpu, img, rex_w, with_sse=False, with_mxcsr=False)
        else:
            fs.init_x87(cpu)
    if rfbm & 2:
        if xstate_bv & 2:
            fs.load_legacy(cpu, img, rex_w, with_x87=False, nxmm=nregs, with_mxcsr=False)
        else:
            fs.init_sse(cpu, nregs)
    if rfbm & 4:
        for i in range(nregs):
            cpu.ymmh[i] = (int.from_bytes(img[YMM_OFF + 16 * i:YMM_OFF + 16 * i + 16], "little")
                           if xstate_bv & 4 else 0)
    if load_mxcsr:
        cpu.mxcsr = mxcsr
    elif compacted and rfbm & 2:
        cpu.mxcsr = fs.MXCSR_RESET


@handles("XRSTOR", "XRSTOR64")
def xrstor(cpu, ins):
    _xrstor(cpu, ins)


@handles("XRSTORS", "XRSTORS64")
def xrstors(cpu, ins):
    _xrstor(cpu, ins, supervisor=True)


# ---------------------------------------------------------------- MXCSR
@handles("LDMXCSR")
def ldmxcsr(cpu, ins):
    sse_check(cpu)
    v = ins.get0(cpu)
    if v & ~fs.MXCSR_MASK:
        raise gp(0, f"LDMXCSR: reserved bits {v:#x}")
    cpu.mxcsr = v


@handles("STMXCSR")
def stmxcsr(cpu, ins):
    sse_check(cpu)
    ins.set0(cpu, cpu.mxcsr)


@handles("MOVNTI")
def movnti(cpu, ins):
    """Non-temporal store of a general register: a plain store here."""
    ins.set0(cpu, ins.get1(cpu))
