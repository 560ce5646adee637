"""The optional SVM features svmsim implements, and CPUID Fn8000_000A.

CPUID Fn8000_000A (APM vol 3, appendix E.4.9): EAX[7:0] = SVM revision,
EBX = number of ASIDs (NASID), EDX = one bit per optional feature.  svmsim
advertises a bit only when the feature works; a feature listed in
``PENDING`` is named in the docs and hidden from CPUID until it is built.
"""
SVM_REVISION = 1
NASID = 32768                 # EPYC 7003/9004 report 8000h ASIDs

# EDX bit -> svmsim name (APM vol 3, E.4.9; Linux X86_FEATURE_* names).
EDX_BITS = {
    0: "npt", 1: "lbrv", 2: "svm_lock", 3: "nrips", 4: "tsc_scale", 5: "vmcb_clean",
    6: "flush_by_asid", 7: "decode_assists", 10: "pause_filter", 12: "pause_filter_threshold",
    13: "avic", 15: "v_vmsave_vmload", 16: "vgif", 17: "gmet", 18: "x2avic", 19: "sss_check",
    20: "spec_ctrl", 21: "rogpt", 23: "host_mce_override", 24: "tlbictl", 25: "vnmi",
    26: "ibs_virt",
}
BY_NAME = {name: bit for bit, name in EDX_BITS.items()}

# Implemented and advertised.
IMPLEMENTED = frozenset({"npt", "lbrv", "nrips", "tsc_scale", "vmcb_clean", "flush_by_asid",
                         "decode_assists", "pause_filter", "pause_filter_threshold",
                         "vgif", "vnmi", "gmet", "v_vmsave_vmload"})


def edx() -> int:
    return sum(1 << BY_NAME[name] for name in IMPLEMENTED)


def leaf_8000_000a(cpu):
    """(EAX, EBX, ECX, EDX) of CPUID Fn8000_000A on a CPU with SVM."""
    return (SVM_REVISION, NASID, 0, edx())


def enabled(cpu, name: str) -> bool:
    """Is the optional SVM feature ``name`` present on this CPU?"""
    return name in IMPLEMENTED and "svm" in cpu.machine.profile.features
