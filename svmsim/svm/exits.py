"""#VMEXIT codes and the encodings carried in the VMCB's exit fields.

Sources (facts only, no code copied):

* APM vol 2, Appendix C "SVM Intercept Exit Codes" (cross-checked with Linux
  arch/x86/include/uapi/asm/svm.h, Bochs cpu/svm.h, Xen hvm/svm/vmcb.h and
  shared/docs/reference/svm-emulators-and-layouts.md section 3).
* APM vol 2, 15.20 "Injecting Events" (EVENTINJ) and 15.7.2 "Intercepts
  During IDT Interrupt Delivery" (EXITINTINFO): both use one format, vector
  7:0, TYPE 10:8, EV 11, V 31, error code 63:32.
* APM vol 2, 15.10.2 "IN and OUT Behavior" (IOIO EXITINFO1 layout).
* GHCB specification (AMD pub. 56421) for the SEV-ES software exit codes.

VMEXIT_INVALID is -1 in the manual; the 64-bit EXITCODE field then holds
all ones.  ``to_vmcb`` / ``from_vmcb`` convert between the two forms.
"""
from dataclasses import dataclass
from enum import IntEnum

MASK64 = (1 << 64) - 1
EXCP_BASE = 0x040                    # exception n exits with EXCP_BASE + n

# Exception mnemonics by vector (APM vol 2, table 8-1).  Vectors without a
# defined exception get EXCP_<n>.
_EXCP_NAMES = {0: "DE", 1: "DB", 2: "NMI", 3: "BP", 4: "OF", 5: "BR", 6: "UD",
               7: "NM", 8: "DF", 10: "TS", 11: "NP", 12: "SS", 13: "GP",
               14: "PF", 16: "MF", 17: "AC", 18: "MC", 19: "XF", 21: "CP",
               28: "HV", 29: "VC", 30: "SX"}

# Word 3 of the intercept vector: bit n exits with 0x060 + n (APM Appendix C).
_WORD3 = ("INTR", "NMI", "SMI", "INIT", "VINTR", "CR0_SEL_WRITE",
          "IDTR_READ", "GDTR_READ", "LDTR_READ", "TR_READ",
          "IDTR_WRITE", "GDTR_WRITE", "LDTR_WRITE", "TR_WRITE",
          "RDTSC", "RDPMC", "PUSHF", "POPF", "CPUID", "RSM", "IRET", "SWINT",
          "INVD", "PAUSE", "HLT", "INVLPG", "INVLPGA", "IOIO", "MSR",
          "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN")
# Word 4 bits 0-14: 0x080 + n.
_WORD4 = ("VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT",
          "RDTSCP", "ICEBP", "WBINVD", "MONITOR", "MWAIT", "MWAIT_COND",
          "XSETBV", "RDPRU")
# Word 5 bits 0-6: 0x0A0 + n.
_WORD5 = ("INVLPGB", "INVLPGB_ILLEGAL", "INVPCID", "MCOMMIT", "TLBSYNC",
          "BUS_LOCK", "IDLE_HLT")


def _exit_table():
    """(name, code) for every architectural exit code, in code order."""
    rows = [(f"CR{n}_READ", n) for n in range(16)]
    rows += [(f"CR{n}_WRITE", 0x010 + n) for n in range(16)]
    rows += [(f"DR{n}_READ", 0x020 + n) for n in range(16)]
    rows += [(f"DR{n}_WRITE", 0x030 + n) for n in range(16)]
    rows += [(f"EXCP_{_EXCP_NAMES.get(v, v)}", EXCP_BASE + v) for v in range(32)]
    rows += [(name, 0x060 + n) for n, name in enumerate(_WORD3)]
    rows += [(name, 0x080 + n) for n, name in enumerate(_WORD4)]
    rows += [("EFER_WRITE_TRAP", 0x08F)]
    rows += [(f"CR{n}_WRITE_TRAP", 0x090 + n) for n in range(16)]
    rows += [(name, 0x0A0 + n) for n, name in enumerate(_WORD5)]
    rows += [("NPF", 0x400), ("AVIC_INCOMPLETE_IPI", 0x401),
             ("AVIC_NOACCEL", 0x402), ("VMGEXIT", 0x403), ("INVALID", -1)]
    return rows


ExitCode = IntEnum("ExitCode", _exit_table(), module=__name__)
ExitCode.__doc__ = "SVM #VMEXIT codes (APM vol 2, Appendix C); INVALID = -1."


class SevEsExitCode(IntEnum):
    """Software exit codes a SEV-ES guest passes in the GHCB (GHCB spec)."""
    MMIO_READ = 0x8000_0001
    MMIO_WRITE = 0x8000_0002
    NMI_COMPLETE = 0x8000_0003
    AP_HLT_LOOP = 0x8000_0004
    AP_JUMP_TABLE = 0x8000_0005
    PSC = 0x8000_0010
    GUEST_REQUEST = 0x8000_0011
    EXT_GUEST_REQUEST = 0x8000_0012
    AP_CREATION = 0x8000_0013
    HV_FEATURES = 0x8000_FFFD
    TERM_REQUEST = 0x8000_FFFE
    UNSUPPORTED_EVENT = 0x8000_FFFF


_BY_VALUE = {int(c): c for c in ExitCode}
_SEV_BY_VALUE = {int(c): c for c in SevEsExitCode}


def to_vmcb(code: int) -> int:
    """The 64-bit EXITCODE field value for ``code`` (INVALID -> all ones)."""
    return int(code) & MASK64


def from_vmcb(value: int):
    """ExitCode for a 64-bit EXITCODE value; unknown values stay plain ints."""
    value &= MASK64
    if value == MASK64:
        return ExitCode.INVALID
    return _BY_VALUE.get(value, _SEV_BY_VALUE.get(value, value))


def exit_name(code: int) -> str:
    """Readable name of an exit code given as -1 or as the 64-bit VMCB value."""
    known = from_vmcb(int(code))
    if isinstance(known, IntEnum):
        return known.name
    return f"UNKNOWN_{known:#x}"


def exception_exit(vector: int) -> int:
    """Exit code of an intercepted exception (APM vol 2, 15.12)."""
    return EXCP_BASE + (vector & 31)


# ------------------------------------------------------------ EVENTINJ / EXITINTINFO
# APM vol 2, 15.20 figure "EVENTINJ Field"; EXITINTINFO (15.7.2) is the same.
EVENT_INTR, EVENT_NMI, EVENT_EXCEPTION, EVENT_SWINT = 0, 2, 3, 4
EVENT_TYPE_NAMES = {EVENT_INTR: "INTR", EVENT_NMI: "NMI",
                    EVENT_EXCEPTION: "exception", EVENT_SWINT: "software interrupt"}
EVENT_VECTOR_MASK = 0xFF
EVENT_TYPE_SHIFT = 8
EVENT_EV = 1 << 11                     # error code valid
EVENT_V = 1 << 31                      # the field holds an event
EVENT_RESERVED = ((1 << 31) - 1) & ~0xFFF   # bits 30:12: "Reserved, SBZ", not checked by VMRUN


@dataclass(frozen=True)
class Event:
    """One decoded EVENTINJ / EXITINTINFO value."""
    vector: int
    type: int
    error_code: int | None = None      # None when EV = 0
    valid: bool = True

    def encode(self) -> int:
        return encode_event(self.vector, self.type, self.error_code, self.valid)


def encode_event(vector: int, type_: int, error_code: int | None = None,
                 valid: bool = True) -> int:
    """64-bit EVENTINJ/EXITINTINFO value; EV is set iff ``error_code`` is given."""
    value = (vector & EVENT_VECTOR_MASK) | (type_ & 7) << EVENT_TYPE_SHIFT
    if error_code is not None:
        value |= EVENT_EV | (error_code & 0xFFFF_FFFF) << 32
    if valid:
        value |= EVENT_V
    return value


def decode_event(value: int) -> Event:
    """Split a 64-bit EVENTINJ/EXITINTINFO value into its fields."""
    ec = (value >> 32) & 0xFFFF_FFFF if value & EVENT_EV else None
    return Event(value & EVENT_VECTOR_MASK, (value >> EVENT_TYPE_SHIFT) & 7, ec,
                 bool(value & EVENT_V))


def describe_event(value: int) -> str:
    """'#PF (exception), error code 0x2' style text, or 'none' when V = 0."""
    if not value & EVENT_V:
        return "none"
    ev = decode_event(value)
    kind = EVENT_TYPE_NAMES.get(ev.type, f"reserved type {ev.type}")
    name = f"#{_EXCP_NAMES[ev.vector]}" if ev.type == EVENT_EXCEPTION and \
        ev.vector in _EXCP_NAMES else f"vector {ev.vector:#x}"
    text = f"{name} ({kind})"
    return text if ev.error_code is None else f"{text}, error code {ev.error_code:#x}"


def eventinj_problem(value: int, exception_vectors=None) -> str | None:
    """Why VMRUN must reject this EVENTINJ value (APM vol 2, 15.20), or None.

    Nothing is checked when V = 0 (no event).  The 15.20 rules: TYPE 1, 5, 6
    and 7 are reserved; TYPE 3 (exception) with a vector that is not an
    exception is illegal, "this includes vector 2" (NMI).  By default every
    vector 0-31 other than 2 counts as an exception; pass
    ``exception_vectors`` (a set) to use the modelled CPU's exact list.
    Bits 30:12 are "Reserved, SBZ" (figure 15-5) but not among the reasons
    15.20 gives for VMEXIT_INVALID: VMRUN ignores them.
    """
    if not value & EVENT_V:
        return None
    typ, vector = (value >> EVENT_TYPE_SHIFT) & 7, value & EVENT_VECTOR_MASK
    if typ not in EVENT_TYPE_NAMES:
        return f"TYPE {typ} is reserved (legal: 0 INTR, 2 NMI, 3 exception, 4 software interrupt)"
    if typ == EVENT_EXCEPTION:
        legal = (vector in exception_vectors) if exception_vectors is not None \
            else (vector < 32 and vector != 2)
        if not legal:
            what = "is the NMI vector" if vector == 2 else "is not an exception vector"
            return f"TYPE 3 (exception) with vector {vector:#x}, which {what}"
    return None


# ------------------------------------------------------------ IOIO EXITINFO1
# APM vol 2, 15.10.2, figure "EXITINFO1 for IOIO Intercept".
IOIO_TYPE_IN = 1 << 0
IOIO_STR = 1 << 2
IOIO_REP = 1 << 3
IOIO_SZ_SHIFT = 4                       # bit 4 SZ8, 5 SZ16, 6 SZ32 (one-hot)
IOIO_A_SHIFT = 7                        # bit 7 A16, 8 A32, 9 A64 (one-hot)
IOIO_SEG_SHIFT = 10                     # bits 12:10, ES=0 ... GS=5
IOIO_PORT_SHIFT = 16                    # bits 31:16
_SZ_BIT = {1: 0, 2: 1, 4: 2}
_A_BIT = {2: 0, 4: 1, 8: 2}


def ioio_exitinfo1(port: int, size: int, is_in: bool, string: bool = False,
                   rep: bool = False, asize: int = 8, seg: int = 0) -> int:
    """EXITINFO1 of an IOIO intercept.

    ``size`` is the data size in bytes (1, 2, 4), ``asize`` the address size
    in bytes (2, 4, 8), as in svmsim's Insn.osize/asize; ``seg`` the
    effective segment of a string instruction (ES=0 ... GS=5; 0 otherwise).
    """
    value = (port & 0xFFFF) << IOIO_PORT_SHIFT
    value |= 1 << (IOIO_SZ_SHIFT + _SZ_BIT[size])
    value |= 1 << (IOIO_A_SHIFT + _A_BIT[asize])
    value |= (seg & 7) << IOIO_SEG_SHIFT
    if is_in:
        value |= IOIO_TYPE_IN
    if string:
        value |= IOIO_STR
    if rep:
        value |= IOIO_REP
    return value


def decode_ioio(value: int) -> dict:
    """The fields of an IOIO EXITINFO1 (sizes in bytes, None if no bit set)."""
    def onehot(shift, table):
        for nbytes, bit in table.items():
            if value >> (shift + bit) & 1:
                return nbytes
        return None
    return {"port": (value >> IOIO_PORT_SHIFT) & 0xFFFF,
            "in": bool(value & IOIO_TYPE_IN), "string": bool(value & IOIO_STR),
            "rep": bool(value & IOIO_REP), "size": onehot(IOIO_SZ_SHIFT, _SZ_BIT),
            "asize": onehot(IOIO_A_SHIFT, _A_BIT), "seg": (value >> IOIO_SEG_SHIFT) & 7}
