"""The VM save area of an SEV-ES guest (VMSA), declared once as data.

APM vol 2, 15.35.8: "When SEV-ES is enabled, the VM save state area does not
reside at offset 400h in the VMCB page.  Instead it resides starting at
offset 0h in a separate page called the VM Save Area (VMSA) as indicated by
the VMSA Pointer at offset 108h ... the encrypted VM state save area
definition is expanded to include all GPR and FPU state (see Appendix B)."

The same expanded layout is the format of the host save area at
VM_HSAVE_PA + 400h from which #VMEXIT reloads the host's GPRs and VMLOAD
state for an SEV-ES guest (15.35.9).

Offsets are from the start of the page (Appendix B table B-4; cross-checked
against Linux ``struct sev_es_save_area``, whose size is 1648 bytes).  The
first 0x2E8 bytes share the non-ES save area's offsets (table B-2), so the
segment, control-register and MSR fields keep their VMCB names.
"""
from .vmcb import Field, LayoutView, SEGMENTS

VMSA_SIZE = 0x670
B4 = "APM vol 2, table B-4"

_rows: list = []
_group = ""


def _g(name):
    global _group
    _group = name


def _v(offset, width, name, section=""):
    _rows.append(Field(name, "vmsa", offset, width, 0, f"{B4}{section}", None, None, _group))


_g("segments")
for _i, _seg in enumerate(SEGMENTS):
    _base = 0x10 * _i
    if _seg not in ("GDTR", "IDTR"):
        _v(_base + 0, 16, f"{_seg}.SEL")
        _v(_base + 2, 16, f"{_seg}.ATTRIB")
        _v(_base + 4, 32, f"{_seg}.LIMIT")
    else:
        _v(_base + 4, 16, f"{_seg}.LIMIT")
    _v(_base + 8, 64, f"{_seg}.BASE")
_g("registers")
for _i in range(4):
    _v(0x0A0 + 8 * _i, 64, f"PL{_i}_SSP")
_v(0x0C0, 64, "U_CET")
_v(0x0CA, 8, "VMPL", "; 15.36.7")
_v(0x0CB, 8, "CPL")
_v(0x0D0, 64, "EFER")
_v(0x140, 64, "XSS")
_v(0x148, 64, "CR4")
_v(0x150, 64, "CR3")
_v(0x158, 64, "CR0")
_v(0x160, 64, "DR7")
_v(0x168, 64, "DR6")
_v(0x170, 64, "RFLAGS")
_v(0x178, 64, "RIP")
for _i in range(4):
    _v(0x180 + 8 * _i, 64, f"DR{_i}")
for _i in range(4):
    _v(0x1A0 + 8 * _i, 64, f"DR{_i}_ADDR_MASK")
_v(0x1D8, 64, "RSP")
_v(0x1E0, 64, "S_CET")
_v(0x1E8, 64, "SSP")
_v(0x1F0, 64, "ISST_ADDR")
_v(0x1F8, 64, "RAX")
_g("MSRs")
for _off, _name in ((0x200, "STAR"), (0x208, "LSTAR"), (0x210, "CSTAR"), (0x218, "SFMASK"),
                    (0x220, "KERNEL_GS_BASE"), (0x228, "SYSENTER_CS"), (0x230, "SYSENTER_ESP"),
                    (0x238, "SYSENTER_EIP"), (0x240, "CR2"), (0x268, "G_PAT"), (0x270, "DBGCTL"),
                    (0x278, "BR_FROM"), (0x280, "BR_TO"), (0x288, "LASTEXCP_FROM"),
                    (0x290, "LASTEXCP_TO")):
    _v(_off, 64, _name)
_v(0x2E8, 32, "PKRU")
_v(0x2EC, 32, "TSC_AUX")
_v(0x2F0, 64, "TSC_SCALE", "; 15.36.18")
_v(0x2F8, 64, "TSC_OFFSET", "; 15.36.18")
_g("GPRs")
GPR_OFFSETS = {1: 0x308, 2: 0x310, 3: 0x318, 5: 0x328, 6: 0x330, 7: 0x338,
               **{n: 0x340 + 8 * (n - 8) for n in range(8, 16)}}     # RAX at 1F8h, RSP at 1D8h
GPR_NAMES = ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
             "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")
for _n, _off in sorted(GPR_OFFSETS.items(), key=lambda kv: kv[1]):
    _v(_off, 64, GPR_NAMES[_n])
_g("exit state")
for _off, _name in ((0x390, "GUEST_EXIT_INFO_1"), (0x398, "GUEST_EXIT_INFO_2"),
                    (0x3A0, "GUEST_EXIT_INT_INFO"), (0x3A8, "GUEST_NRIP"),
                    (0x3B0, "SEV_FEATURES"), (0x3B8, "VINTR_CTRL"), (0x3C0, "GUEST_EXIT_CODE"),
                    (0x3C8, "VIRTUAL_TOM"), (0x3D0, "TLB_ID"), (0x3D8, "PCPU_ID"),
                    (0x3E0, "EVENT_INJ"), (0x3E8, "XCR0")):
    _v(_off, 64, _name)
_g("FPU")
_v(0x400, 64, "X87_DP")
_v(0x408, 32, "MXCSR")
_v(0x40C, 16, "X87_FTW")
_v(0x40E, 16, "X87_FSW")
_v(0x410, 16, "X87_FCW")
_v(0x412, 16, "X87_FOP")
_v(0x414, 16, "X87_DS")
_v(0x416, 16, "X87_CS")
_v(0x418, 64, "X87_RIP")
X87_REGS = 0x420          # 8 x 10-byte ST registers (80 bytes)
XMM_REGS = 0x470          # 16 x 16-byte XMM registers
YMM_HI_REGS = 0x570       # 16 x 16-byte upper halves of YMM registers

FIELDS = tuple(_rows)
BY_NAME = {f.name: f for f in FIELDS}
del _i, _seg, _base, _off, _name, _n


class VmsaView(LayoutView):
    """Fields of a VMSA page (in a bytearray of its plaintext, or in memory)."""
    __slots__ = ()
    LOOKUP = BY_NAME
    FIELDS = FIELDS
