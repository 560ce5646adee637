"""The Guest-Hypervisor Communication Block of an SEV-ES guest, declared once
as data, and the GHCB protocol's numbers (AMD pub. 56421, "SEV-ES
Guest-Hypervisor Communication Block Standardization", version 2).

An SEV-ES guest's registers are encrypted in its VMSA, so for a non-automatic
exit (#VC, APM vol 2, 15.35.5) the guest copies what the hypervisor needs
into a page it shares (C-bit clear), writes that page's guest-physical
address to the GHCB MSR (C001_0130h) and executes VMGEXIT.  Before it has a
GHCB page, it talks through the GHCB MSR itself: the *MSR protocol*, a
request code in bits 11:0 and data in bits 63:12.

Offsets follow the GHCB specification's layout (cross-checked with Linux
``struct ghcb`` / ``struct ghcb_save_area``, arch/x86/include/asm/svm.h,
whose save area is 1032 bytes): the register fields keep their VMSA offsets
(svmsim/svm/vmsa.py), the software exit fields replace the VMSA's exit
state.  Each save-area field has a bit in the valid bitmap at
``offset // 8``: the guest sets it for every field it supplies, and the
hypervisor uses only those.  The C declaration for guests is
``tests/guests/lib/ghcb.h``; tests/test_ghcb.py checks that both agree.
"""
from __future__ import annotations

from enum import IntEnum

from ..svm.vmcb import Field, LayoutView

GHCB_SIZE = 0x1000
SAVE_AREA_SIZE = 0x408                    # struct ghcb_save_area: 1032 bytes
SHARED_BUFFER = 0x800                     # the shared buffer: scratch for string I/O, MMIO
SHARED_BUFFER_SIZE = 0x7F0                # up to the reserved bytes at FF0h
SPEC = "GHCB spec 56421, table 3"

_rows: list = []


def _f(offset, width, name):
    _rows.append(Field(name, "ghcb", offset, width, 0, SPEC, None, None,
                       "software exit" if name.startswith("SW_") else "save area"))


_f(0x0CB, 8, "CPL")
_f(0x140, 64, "XSS")
_f(0x160, 64, "DR7")
_f(0x178, 64, "RIP")
_f(0x1D8, 64, "RSP")
_f(0x1F8, 64, "RAX")
for _i, _name in enumerate(("RCX", "RDX", "RBX")):
    _f(0x308 + 8 * _i, 64, _name)
for _i, _name in enumerate(("RBP", "RSI", "RDI", "R8", "R9", "R10", "R11", "R12", "R13", "R14",
                            "R15")):
    _f(0x328 + 8 * _i, 64, _name)
_f(0x390, 64, "SW_EXIT_CODE")
_f(0x398, 64, "SW_EXIT_INFO_1")
_f(0x3A0, 64, "SW_EXIT_INFO_2")
_f(0x3A8, 64, "SW_SCRATCH")
_f(0x3E8, 64, "XCR0")
_f(0x3F0, 64, "VALID_BITMAP_0")           # the 16-byte valid bitmap, bits 0-63
_f(0x3F8, 64, "VALID_BITMAP_1")           # ... and 64-127
_f(0x400, 64, "X87_STATE_GPA")
_f(0xFFA, 16, "PROTOCOL_VERSION")
_f(0xFFC, 32, "USAGE")

FIELDS = tuple(_rows)
BY_NAME = {f.name: f for f in FIELDS}
#: The save-area fields the valid bitmap covers (not the bitmap itself).
VALIDATED = tuple(f for f in FIELDS if f.offset < 0x3F0 or f.name == "X87_STATE_GPA")
del _i, _name


def valid_bit(name: str) -> int:
    """The field's bit in the valid bitmap: its quadword index in the save area."""
    return BY_NAME[name].offset // 8


class GhcbView(LayoutView):
    """Fields of a GHCB page (in memory or in a bytearray), by name."""
    __slots__ = ()
    LOOKUP = BY_NAME
    FIELDS = FIELDS

    def valid_bitmap(self) -> int:
        return self["VALID_BITMAP_0"] | self["VALID_BITMAP_1"] << 64

    def is_valid(self, name: str) -> bool:
        return bool(self.valid_bitmap() >> valid_bit(name) & 1)

    def set_valid(self, *names: str) -> None:
        bits = self.valid_bitmap()
        for name in names:
            bits |= 1 << valid_bit(name)
        self["VALID_BITMAP_0"], self["VALID_BITMAP_1"] = bits & (1 << 64) - 1, bits >> 64


# ---------------------------------------------------------------- protocol numbers
PROTOCOL_MIN, PROTOCOL_MAX = 1, 2          # the GHCB protocol versions svmsim's VMM speaks
INFO_MASK = 0xFFF                          # GHCB MSR bits 11:0: the request/response code
DATA_SHIFT = 12


class MsrProto(IntEnum):
    """GHCB MSR protocol request and response codes (GHCBInfo, bits 11:0)."""
    SEV_INFO_RESP = 0x001                  # data: max version 63:48, min 47:32, C-bit 31:24
    SEV_INFO_REQ = 0x002
    CPUID_REQ = 0x004                      # function 63:32, register 31:30 (0 EAX .. 3 EDX)
    CPUID_RESP = 0x005                     # value 63:32
    AP_RESET_HOLD_REQ = 0x006
    AP_RESET_HOLD_RESP = 0x007             # 63:12 non-zero: woken by a SIPI
    PREF_GPA_REQ = 0x010
    PREF_GPA_RESP = 0x011                  # 63:12 GFN, or all ones: no preference
    REG_GPA_REQ = 0x012                    # 63:12 GFN to register
    REG_GPA_RESP = 0x013                   # 63:12 the GFN registered, all ones on failure
    PSC_REQ = 0x014                        # SEV-SNP: GFN 51:12, operation 55:52 (PscOp)
    PSC_RESP = 0x015                       # 63:32 error code, 0 = done
    VMPL_REQ = 0x016                       # SEV-SNP: run the vCPU at the VMPL in 39:32
    VMPL_RESP = 0x017                      # 63:32 error code
    HV_FEATURES_REQ = 0x080
    HV_FEATURES_RESP = 0x081               # 63:12 the feature bitmap
    TERM_REQ = 0x100                       # reason set 15:12, reason code 23:16


GPA_NONE = (1 << 52) - 1                   # "no GFN" in a 63:12 data field


class NaeExit(IntEnum):
    """The GHCB spec's own exit codes (SW_EXITCODE) beyond the SVM ones."""
    MMIO_READ = 0x80000001                 # info1 = GPA, info2 = length, scratch = buffer
    MMIO_WRITE = 0x80000002
    NMI_COMPLETE = 0x80000003
    AP_HLT_LOOP = 0x80000004               # AP reset hold; info2 non-zero when woken by SIPI
    AP_JUMP_TABLE = 0x80000005             # info1 0 = set (info2 = GPA), 1 = get
    PSC = 0x80000010                       # SEV-SNP: scratch = the PSC descriptor (4.1.6)
    GUEST_REQUEST = 0x80000011             # info1 = request page, info2 = response page (4.1.8)
    EXT_GUEST_REQUEST = 0x80000012         # ... and RAX = certificate buffer, RBX = its pages
    AP_CREATION = 0x80000013               # info1: APIC ID 63:32, VMPL 23:16, request 11:0 (4.1.9)
    RUN_VMPL = 0x80000018                  # info1[7:0] = the VMPL to run (4.1.13)
    HV_FEATURES = 0x8000FFFD
    TERM_REQUEST = 0x8000FFFE              # info1: reason set 3:0, reason code 11:4
    UNSUPPORTED = 0x8000FFFF


class PscOp(IntEnum):
    """Page state change operations (MSR protocol bits 55:52, PSC entry bits 55:52)."""
    PRIVATE = 1
    SHARED = 2
    PSMASH = 3
    UNSMASH = 4


class HvFeature(IntEnum):
    """HV_FEATURES bits (GHCB spec, 2.3.4)."""
    SNP = 1 << 0
    SNP_AP_CREATION = 1 << 1
    SNP_RESTRICTED_INJECTION = 1 << 2
    SNP_RESTRICTED_INJECTION_TIMER = 1 << 3
    APIC_ID_LIST = 1 << 4
    SNP_MULTI_VMPL = 1 << 5


class ApCreation(IntEnum):
    """AP creation requests (SW_EXITINFO1[11:0] of AP_CREATION)."""
    CREATE_ON_INIT = 0
    CREATE = 1
    DESTROY = 2


PSC_MAX_ENTRIES = 253                      # 8-byte header + 253 entries = the shared buffer


class Response(IntEnum):
    """SW_EXITINFO1[31:0] as the hypervisor returns it."""
    OK = 0
    ISSUE_EXCEPTION = 1                    # SW_EXITINFO2 = the event, in EVENTINJ format
    MALFORMED_INPUT = 2                    # SW_EXITINFO2 = a GhcbError


class GhcbError(IntEnum):
    """Why the hypervisor found a GHCB request malformed (SW_EXITINFO2 with
    Response.MALFORMED_INPUT; Linux GHCB_ERR_*)."""
    NOT_REGISTERED = 1
    INVALID_USAGE = 2
    INVALID_SCRATCH_AREA = 3
    MISSING_INPUT = 4
    INVALID_INPUT = 5
    INVALID_EVENT = 6


class TermReason(IntEnum):
    """Termination reason codes of reason set 0 (general)."""
    GENERAL = 0
    PROTOCOL_UNSUPPORTED = 1
    SNP_UNSUPPORTED = 2


def msr_request(code: int, data: int = 0) -> int:
    """A GHCB MSR value: ``data`` in bits 63:12, ``code`` in 11:0."""
    return (data << DATA_SHIFT | code) & (1 << 64) - 1


def psc_request(gfn: int, op: int) -> int:
    """The MSR protocol's page state change request for one 4 KiB page."""
    return (op & 0xF) << 52 | (gfn & (1 << 40) - 1) << 12 | MsrProto.PSC_REQ


def vmpl_request(vmpl: int) -> int:
    return (vmpl & 0xFF) << 32 | MsrProto.VMPL_REQ


def msr_code(value: int) -> int:
    return value & INFO_MASK


def msr_data(value: int) -> int:
    return value >> DATA_SHIFT


def sev_info(cbit: int, vmax: int = PROTOCOL_MAX, vmin: int = PROTOCOL_MIN) -> int:
    """The SEV information response (also the GHCB MSR's value at vCPU reset)."""
    return vmax << 48 | vmin << 32 | (cbit & 0xFF) << 24 | MsrProto.SEV_INFO_RESP


def cpuid_request(function: int, register: int) -> int:
    return (function & 0xFFFFFFFF) << 32 | (register & 3) << 30 | MsrProto.CPUID_REQ


def term_request(reason_set: int, reason: int) -> int:
    return (reason & 0xFF) << 16 | (reason_set & 0xF) << 12 | MsrProto.TERM_REQ


def nae_name(code: int) -> str:
    """Readable name of a SW_EXITCODE (the GHCB's own codes, else the SVM name)."""
    try:
        return NaeExit(code).name
    except ValueError:
        from ..svm.exits import exit_name
        return exit_name(code)


__all__ = ["GhcbView", "FIELDS", "BY_NAME", "valid_bit", "MsrProto", "NaeExit", "Response",
           "GhcbError", "TermReason", "PscOp", "HvFeature", "ApCreation", "PSC_MAX_ENTRIES",
           "psc_request", "vmpl_request", "msr_request", "msr_code", "msr_data", "sev_info",
           "cpuid_request", "term_request", "nae_name", "GHCB_SIZE", "SHARED_BUFFER",
           "SHARED_BUFFER_SIZE", "PROTOCOL_MIN", "PROTOCOL_MAX", "GPA_NONE"]
