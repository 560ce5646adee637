"""Segment registers, descriptors and their hidden caches (APM vol 2, ch. 4).

A segment register's hidden part is kept as ``base``, ``limit`` and
``attr`` in the VMCB's packed 12-bit format (APM vol 2, 15.5.1 / Appendix B:
type 3:0, S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11), so a VMRUN or
#VMEXIT copies segment state without any conversion.
"""
from dataclasses import dataclass

ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

A_TYPE, A_S, A_DPL_SHIFT, A_P, A_AVL, A_L, A_DB, A_G = 0xF, 0x10, 5, 0x80, 0x100, 0x200, 0x400, 0x800
# Type bits for code/data segments (S=1).
T_ACCESSED, T_WRITABLE, T_READABLE, T_EXPAND_DOWN, T_CONFORMING, T_CODE = 1, 2, 2, 4, 4, 8


@dataclass(slots=True)
class Segment:
    sel: int = 0
    base: int = 0
    limit: int = 0xFFFF
    attr: int = 0x93      # present, writable, accessed data: the reset state

    @property
    def dpl(self) -> int:
        return (self.attr >> A_DPL_SHIFT) & 3

    @property
    def present(self) -> bool:
        return bool(self.attr & A_P)

    @property
    def is_code(self) -> bool:
        return bool(self.attr & A_S) and bool(self.attr & T_CODE)

    def copy(self) -> "Segment":
        return Segment(self.sel, self.base, self.limit, self.attr)


def descriptor_to_segment(sel: int, lo: int, hi: int) -> Segment:
    """Unpack an 8-byte legacy descriptor (lo = bytes 0-3, hi = bytes 4-7)."""
    base = ((lo >> 16) & 0xFFFF) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    attr = ((hi >> 8) & 0xFF) | ((hi >> 12) & 0xF00)
    if attr & A_G:
        limit = (limit << 12) | 0xFFF
    return Segment(sel, base, limit, attr)


def real_mode_segment(sel: int, code: bool = False) -> Segment:
    """Real-mode load: base = sel << 4; limit and attributes are kept by the
    caller on real hardware, but a fresh load from reset-like state is this."""
    return Segment(sel, (sel & 0xFFFF) << 4, 0xFFFF, 0x9B if code else 0x93)
