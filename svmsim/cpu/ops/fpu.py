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
def _rfbm(cpu):
    return cpu.xcr0 & ((cpu.regs[2] & 0xFFFFFFFF) << 32 | (cpu.regs[0] & 0xFFFFFFFF))


def _xsave(cpu, ins, compacted):
    """XSAVE/XSAVEOPT/XSAVEC for components 0 (x87) and 1 (SSE).

    XSTATE_BV[i] is set for every saved component (the processor may
    report a component in its initial state as in use).  XSAVEC also
    writes XCOMP_BV = bit 63 | RFBM (APM vol 3 XSAVEC)."""
    xsave_check(cpu)
    off = _aligned(cpu, ins, 64)
    rfbm = _rfbm(cpu)
    rex_w = ins.name.endswith("64")
    img = fs.legacy_image(cpu, rex_w, with_x87=bool(rfbm & 1), with_sse=bool(rfbm & 2),
                          nxmm=16 if cpu.long64 else 8, with_mxcsr=bool(rfbm & 2))
    hdr = cpu.read(ins.seg, off + 512, 8)
    if compacted:
        xstate_bv = rfbm & 3
        header = xstate_bv.to_bytes(8, "little") + ((1 << 63) | (rfbm & 3)).to_bytes(8, "little")
    else:
        xstate_bv = (hdr & ~rfbm) | (rfbm & 3)     # only XSTATE_BV is written
        header = xstate_bv.to_bytes(8, "little")
    img[512] = header
    write_image(cpu, ins.seg, off, img)


@handles("XSAVE", "XSAVE64", "XSAVEOPT", "XSAVEOPT64")
def xsave(cpu, ins):
    _xsave(cpu, ins, compacted=False)


@handles("XSAVEC", "XSAVEC64")
def xsavec(cpu, ins):
    _xsave(cpu, ins, compacted=True)


@handles("XRSTOR", "XRSTOR64")
def xrstor(cpu, ins):
    """XRSTOR (APM vol 3): header checks, then per component either load
    from memory (XSTATE_BV[i]=1) or set the initial state."""
    xsave_check(cpu)
    off = _aligned(cpu, ins, 64)
    img = read_bytes(cpu, ins.seg, off, 576)
    xstate_bv = int.from_bytes(img[512:520], "little")
    xcomp_bv = int.from_bytes(img[520:528], "little")
    rfbm = _rfbm(cpu)
    compacted = bool(xcomp_bv >> 63)
    if compacted:
        comp = xcomp_bv & ~(1 << 63)
        if comp & ~cpu.xcr0 or xstate_bv & ~comp or any(img[528:576]):
            raise gp(0, "XRSTOR (compacted): XCOMP_BV/XSTATE_BV not allowed by XCR0, or header bytes set")
    else:
        if xstate_bv & ~cpu.xcr0 or any(img[520:576]):
            raise gp(0, "XRSTOR: XSTATE_BV beyond XCR0 or reserved header bytes set")
    load_mxcsr = bool(rfbm & 2) if not compacted else bool(rfbm & 2 and xstate_bv & 2)
    mxcsr = int.from_bytes(img[24:28], "little")
    if load_mxcsr and mxcsr & ~fs.MXCSR_MASK:
        raise gp(0, f"XRSTOR: reserved MXCSR bits {mxcsr:#x}")
    rex_w = ins.name.endswith("64")
    nxmm = 16 if cpu.long64 else 8
    if rfbm & 1:
        if xstate_bv & 1:
            fs.load_legacy(cpu, img, rex_w, with_sse=False, with_mxcsr=False)
        else:
            fs.init_x87(cpu)
    if rfbm & 2:
        if xstate_bv & 2:
            fs.load_legacy(cpu, img, rex_w, with_x87=False, nxmm=nxmm, with_mxcsr=False)
        else:
            fs.init_sse(cpu, nxmm)
    if load_mxcsr:
        cpu.mxcsr = mxcsr
    elif compacted and rfbm & 2:
        cpu.mxcsr = fs.MXCSR_RESET


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
