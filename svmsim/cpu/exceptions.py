"""Architectural exceptions, raised inside the CPU model and delivered by it.

An instruction handler that detects a fault raises :class:`CpuException`
*before* changing any architectural state, so faults are precise: the
execution engine restores RIP to the faulting instruction and delivers the
exception through the IDT (or, in guest mode, as an intercept).  AMD APM vol 2,
8.2 lists the vectors; 8.4 the error codes; 8.5 the classes used for #DF.
"""

DE, DB, NMI, BP, OF, BR, UD, NM, DF = 0, 1, 2, 3, 4, 5, 6, 7, 8
TS, NP, SS, GP, PF = 10, 11, 12, 13, 14
MF, AC, MC, XF, CP = 16, 17, 18, 19, 21
HV, VC, SX = 28, 29, 30

NAMES = {DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR",
         UD: "#UD", NM: "#NM", DF: "#DF", 9: "CSO", TS: "#TS", NP: "#NP",
         SS: "#SS", GP: "#GP", PF: "#PF", MF: "#MF", AC: "#AC", MC: "#MC",
         XF: "#XF", CP: "#CP", HV: "#HV", VC: "#VC", SX: "#SX"}

# Vectors that push an error code (APM vol 2, table 8-1).
HAS_ERROR_CODE = frozenset({DF, TS, NP, SS, GP, PF, AC, CP, VC, SX})
# Contributory exceptions for the double-fault rules (APM vol 2, 8.2.9, table 8-7);
# #VC is "a precise, contributory, fault-type exception" (15.35.5); "The #SX
# exception is a contributory fault" (15.28).
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP, VC, SX})
# Traps: the saved RIP points after the instruction.
TRAPS = frozenset({BP, OF})

# #PF error code bits (APM vol 2, 8.4.2).
PF_P, PF_W, PF_U, PF_RSV, PF_I, PF_PK, PF_SS, PF_RMP = 1, 2, 4, 8, 16, 32, 64, 1 << 31


class CpuException(Exception):
    """A fault or trap to be delivered to the guest.

    ``error_code`` is None for vectors without one.  ``cr2`` is the faulting
    linear address for #PF.  ``detail`` is a short human explanation for the
    trace (real hardware gives none; svmsim tells you why).
    """

    def __init__(self, vector: int, error_code=None, cr2=None, detail: str = ""):
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.detail = detail

    def __str__(self):
        name = NAMES.get(self.vector, f"vector {self.vector}")
        s = name if self.error_code is None else f"{name}({self.error_code:#x})"
        if self.cr2 is not None:
            s += f" at {self.cr2:#x}"
        return s + (f": {self.detail}" if self.detail else "")


def gp(code: int = 0, detail: str = "") -> CpuException:
    return CpuException(GP, code, detail=detail)


def ud(detail: str = "") -> CpuException:
    return CpuException(UD, detail=detail)


def ss(code: int = 0, detail: str = "") -> CpuException:
    return CpuException(SS, code, detail=detail)


def pf(code: int, lin: int, detail: str = "") -> CpuException:
    return CpuException(PF, code, cr2=lin, detail=detail)


DEBUG_STOP = -2          # DebugStop's vector (VmExit uses -1)


class DebugStop(CpuException):
    """The debugger stops the machine *before* an instruction: a breakpoint, or a
    code or I/O hook that called ``Machine.stop()``.  Raised like a fault, so the
    engine rewinds RIP to the instruction and counts only what retired; never
    delivered to the guest (``interrupts.deliver_exception`` hands it to
    ``machine.debug``)."""

    def __init__(self, kind: str, reason: str, address=None):
        super().__init__(DEBUG_STOP, None, detail=reason)
        self.kind, self.address = kind, address


class Shutdown(Exception):
    """The processor entered the shutdown state (triple fault, APM vol 2 8.2.9)."""


class Halt(Exception):
    """Raised by HLT to stop the current block; the CPU is now halted."""
