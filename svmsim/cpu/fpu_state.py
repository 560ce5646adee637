"""x87 and SSE register state, and the FXSAVE/XSAVE memory images.

The state lives on the CPU as plain fields, created on first use by
``ensure(cpu)`` (so the Cpu class needs no change):

* ``fpu_fcw``, ``fpu_fsw``, ``fpu_ftw`` (the full 16-bit tag word), ``fpu_fop``,
  ``fpu_fip``, ``fpu_fcs``, ``fpu_fdp``, ``fpu_fds``, ``fpu_st`` (8 x 80-bit
  physical registers R0..R7, as ints);
* ``xmm`` (16 x 128-bit ints), ``ymmh`` (bits 255:128 of the YMM registers),
  ``mxcsr``.

Reset values: FCW=0040h, FTW=5555h (APM vol 2, table 14-1); FNINIT gives
FCW=037Fh, FTW=FFFFh (all empty).  MXCSR=1F80h.

Layouts: FXSAVE image (APM vol 3 FXSAVE, vol 1 11.4.4 "Saving Media and x87
Execution Unit State", figure 11-21/11-22) and the XSAVE legacy region plus
64-byte header (APM vol 1, 11.5.2).
"""
MXCSR_RESET = 0x1F80
MXCSR_MASK = 0xFFFF          # DAZ (bit 6) supported; MM (bit 17) not modelled
FCW_RESET = 0x0040
FCW_FNINIT = 0x037F


def ensure(cpu) -> None:
    """Create the state fields if this CPU has none yet (power-up values)."""
    if not hasattr(cpu, "xmm"):
        reset(cpu)


def reset(cpu) -> None:
    """RESET/INIT state of the x87 and SSE units (APM vol 2, 14.1.3)."""
    cpu.fpu_fcw = FCW_RESET
    cpu.fpu_fsw = 0
    cpu.fpu_ftw = 0x5555
    cpu.fpu_fop = 0
    cpu.fpu_fip = cpu.fpu_fcs = cpu.fpu_fdp = cpu.fpu_fds = 0
    cpu.fpu_st = [0] * 8
    cpu.xmm = [0] * 16
    cpu.ymmh = [0] * 16          # bits 255:128 of YMM0-15
    cpu.mxcsr = MXCSR_RESET


def fninit(cpu) -> None:
    """FNINIT (APM vol 5): FCW=037Fh, FSW=0, FTW=all empty, pointers cleared."""
    ensure(cpu)
    cpu.fpu_fcw = FCW_FNINIT
    cpu.fpu_fsw = 0
    cpu.fpu_ftw = 0xFFFF
    cpu.fpu_fop = 0
    cpu.fpu_fip = cpu.fpu_fcs = cpu.fpu_fdp = cpu.fpu_fds = 0


# -- tag word -----------------------------------------------------------------------
def abridged_tag(ftw: int) -> int:
    """FXSAVE stores one bit per register: 1 = not empty (tag != 11b)."""
    return sum(1 << i for i in range(8) if (ftw >> (2 * i)) & 3 != 3)


def full_tag(cpu, abridged: int) -> int:
    """FXRSTOR rebuilds the 2-bit tags from the register contents."""
    ftw = 0
    for i in range(8):
        if not abridged >> i & 1:
            tag = 3
        else:
            v = cpu.fpu_st[i]
            exp = (v >> 64) & 0x7FFF
            if exp == 0x7FFF:
                tag = 2                                  # special
            elif exp == 0:
                tag = 1 if v & ((1 << 64) - 1) == 0 else 2   # zero or denormal
            else:
                tag = 0 if v >> 63 & 1 else 2            # valid needs the J bit
        ftw |= tag << (2 * i)
    return ftw


def _st_offset(cpu, i: int) -> int:
    """Images store ST(i), i.e. physical register (TOP+i) mod 8."""
    top = (cpu.fpu_fsw >> 11) & 7
    return (top + i) & 7


# -- the 512-byte legacy image -------------------------------------------------------------
def legacy_image(cpu, rex_w: bool, with_x87: bool = True, with_sse: bool = True,
                 nxmm: int = 16, with_mxcsr: bool = True) -> dict:
    """{offset: bytes} to write for an FXSAVE / XSAVE legacy region."""
    out = {}
    if with_x87:
        head = bytearray(24)
        head[0:2] = cpu.fpu_fcw.to_bytes(2, "little")
        head[2:4] = cpu.fpu_fsw.to_bytes(2, "little")
        head[4] = abridged_tag(cpu.fpu_ftw)
        head[6:8] = (cpu.fpu_fop & 0x7FF).to_bytes(2, "little")
        if rex_w:
            head[8:16] = cpu.fpu_fip.to_bytes(8, "little")
            head[16:24] = cpu.fpu_fdp.to_bytes(8, "little")
        else:
            head[8:12] = (cpu.fpu_fip & 0xFFFFFFFF).to_bytes(4, "little")
            head[12:14] = cpu.fpu_fcs.to_bytes(2, "little")
            head[16:20] = (cpu.fpu_fdp & 0xFFFFFFFF).to_bytes(4, "little")
            head[20:22] = cpu.fpu_fds.to_bytes(2, "little")
        out[0] = bytes(head)
        for i in range(8):
            out[32 + 16 * i] = cpu.fpu_st[_st_offset(cpu, i)].to_bytes(10, "little") + bytes(6)
    if with_mxcsr:
        out[24] = cpu.mxcsr.to_bytes(4, "little") + MXCSR_MASK.to_bytes(4, "little")
    if with_sse:
        for i in range(nxmm):
            out[160 + 16 * i] = cpu.xmm[i].to_bytes(16, "little")
    return out


def load_legacy(cpu, img: bytes, rex_w: bool, with_x87=True, with_sse=True, nxmm=16,
                with_mxcsr=True) -> None:
    """Load state from a 512-byte legacy image (MXCSR already validated)."""
    if with_x87:
        cpu.fpu_fcw = int.from_bytes(img[0:2], "little")
        cpu.fpu_fsw = int.from_bytes(img[2:4], "little")
        cpu.fpu_fop = int.from_bytes(img[6:8], "little") & 0x7FF
        if rex_w:
            cpu.fpu_fip = int.from_bytes(img[8:16], "little")
            cpu.fpu_fdp = int.from_bytes(img[16:24], "little")
            cpu.fpu_fcs = cpu.fpu_fds = 0
        else:
            cpu.fpu_fip = int.from_bytes(img[8:12], "little")
            cpu.fpu_fcs = int.from_bytes(img[12:14], "little")
            cpu.fpu_fdp = int.from_bytes(img[16:20], "little")
            cpu.fpu_fds = int.from_bytes(img[20:22], "little")
        for i in range(8):
            cpu.fpu_st[_st_offset(cpu, i)] = int.from_bytes(img[32 + 16 * i:42 + 16 * i], "little")
        cpu.fpu_ftw = full_tag(cpu, img[4])
    if with_mxcsr:
        cpu.mxcsr = int.from_bytes(img[24:28], "little")
    if with_sse:
        for i in range(nxmm):
            cpu.xmm[i] = int.from_bytes(img[160 + 16 * i:176 + 16 * i], "little")


def init_x87(cpu) -> None:
    """XRSTOR initial configuration of component 0 (APM vol 1, 11.5.6)."""
    fninit(cpu)
    cpu.fpu_st = [0] * 8


def init_sse(cpu, nxmm=16) -> None:
    for i in range(nxmm):
        cpu.xmm[i] = 0
