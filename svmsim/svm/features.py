"""The optional SVM features svmsim implements, and CPUID Fn8000_000A.

CPUID Fn8000_000A (APM vol 3, appendix E.4.9): EAX[7:0] = SVM revision,
EBX = number of ASIDs (NASID), EDX = one bit per optional feature.  svmsim
advertises a bit only when the feature works; a feature listed in
``PENDING`` is named in the docs and hidden from CPUID until it is built.
"""
from ..cpu.cpuid import features as cpu_features
from ..cpu.profiles import FEATURE_BITS

SVM_REVISION = 1
NASID = 32768                 # EPYC 7003/9004 report 8000h ASIDs

# EDX bit -> svmsim name: declared with every other CPUID bit in cpu/profiles.py.
EDX_BITS = {bit: name for name, (leaf, _, _, bit) in FEATURE_BITS.items() if leaf == 0x8000000A}
BY_NAME = {name: bit for bit, name in EDX_BITS.items()}

# Implemented and advertised (when the CPU profile has them).
IMPLEMENTED = frozenset({"npt", "lbrv", "nrips", "tsc_scale", "vmcb_clean", "flush_by_asid",
                         "decode_assists", "pause_filter", "pause_filter_threshold",
                         "vgif", "vnmi", "gmet", "v_vmsave_vmload", "avic", "x2avic"})


def edx(cpu) -> int:
    return sum(1 << BY_NAME[name] for name in IMPLEMENTED if name in cpu_features(cpu.machine))


def leaf_8000_000a(cpu):
    """(EAX, EBX, ECX, EDX) of CPUID Fn8000_000A on a CPU with SVM."""
    return (SVM_REVISION, NASID, 0, edx(cpu))


def enabled(cpu, name: str) -> bool:
    """Is the optional SVM feature ``name`` present on this CPU (``--cpu ...,-npt``
    removes one)?  The profile's features require "svm" (profiles.REQUIRES)."""
    return name in IMPLEMENTED and name in cpu_features(cpu.machine)
