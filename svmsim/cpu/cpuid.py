"""The CPUID instruction's results, built from the CPU profile (AMD APM vol 3,
appendix E; AMD CPUID Specification #25481).

``cpuid(cpu, leaf, subleaf)`` returns (eax, ebx, ecx, edx).  The static part
of each leaf comes from the profile and is computed once per machine; the
per-CPU and per-state bits are patched in at each call: the initial APIC ID
(= cpu.index), OSXSAVE (= CR4.OSXSAVE), APIC (= IA32_APIC_BASE.EN), the
x2APIC ID of leaf 0Bh, and the XSAVE area size for the current XCR0.

AMD processors return zero in all four registers for a leaf above the
maximum of its range (reserved functions); they do not repeat the highest
basic leaf as Intel processors do (KVM documents the same difference in
kvm_cpuid()).  So there are no 4000_0000h hypervisor leaves on the physical
CPU (seed S7) and Fn0000_0001_ECX[31] is 0 (seed S8).

Features whose instructions svmsim does not implement yet are removed.  For
the instruction-set extensions (``ISA_FEATURES``) this is decided from
iced-x86's own table of which CPUID feature each instruction form needs: a
feature is reported only when every legacy- or VEX-encoded form that needs
it has a handler, and an instruction whose feature this CPU does not report
raises #UD (``supports_code``).  Other features list the mnemonics they need
in ``NEEDS``.  The profile keeps what the real chip has; CPUID reports what
the simulator can honour.
"""
import iced_x86

from .profiles import FEATURE_BITS, AMD_EDX_ALIASES, REQUIRES
from . import sev_features

# Instruction-set features decided from iced-x86's per-instruction data:
# iced CpuidFeature name -> our feature name (profiles.FEATURE_BITS).
ISA_FEATURES = {
    "FPU": "fpu", "FPU287": "fpu", "FPU387": "fpu", "MMX": "mmx", "SSE": "sse", "SSE2": "sse2",
    "SSE3": "sse3", "SSSE3": "ssse3", "SSE4_1": "sse41", "SSE4_2": "sse42", "SSE4A": "sse4a",
    "AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "BMI1": "bmi1", "BMI2": "bmi2",
    "ADX": "adx", "LZCNT": "abm", "POPCNT": "popcnt", "MOVBE": "movbe", "AES": "aes",
    "PCLMULQDQ": "pclmulqdq", "SHA": "sha", "RDRAND": "rdrand", "RDSEED": "rdseed",
    "XSAVE": "xsave", "XSAVEOPT": "xsaveopt", "XSAVEC": "xsavec", "XSAVES": "xsaves",
    "FXSR": "fxsr", "CMOV": "cmov", "RDTSCP": "rdtscp", "INVPCID": "invpcid", "RDPID": "rdpid",
}
# Extensions svmsim does not implement and the profiles do not list: an
# instruction needing one of them is #UD whatever else it needs (VAESENC ymm
# needs AES, AVX and VAES), and it does not count against the others.
FOREIGN = frozenset({"GFNI", "VAES", "VPCLMULQDQ", "SHA512", "SM3", "SM4", "AVX_VNNI",
                     "AVX_VNNI_INT8", "AVX_VNNI_INT16", "AVX_IFMA", "AVX_NE_CONVERT",
                     "CMPCCXADD", "AMX_TILE", "AMX_INT8", "AMX_BF16", "AMX_FP16", "AMX_COMPLEX",
                     "KL", "WIDE_KL", "AESKLE", "TBM", "LWP", "XOP", "FMA4", "D3NOW", "D3NOWEXT"})
# Feature -> mnemonics that must all have handlers before it is advertised
# (features outside ISA_FEATURES).
NEEDS = {
    "cx8": ("CMPXCHG8B",), "sep": ("SYSENTER", "SYSEXIT"), "mmxext": ("PSHUFW",),
    "cx16": ("CMPXCHG16B",), "fsgsbase": ("RDFSBASE", "WRGSBASE"), "erms": ("MOVSB", "STOSB"),
    "lahf_lm": ("LAHF", "SAHF"), "prefetchw": ("PREFETCHW",),
    "syscall": ("SYSCALL", "SYSRET"), "clzero": ("CLZERO",),
    "clflushopt": ("CLFLUSHOPT",), "clwb": ("CLWB",),
    "wbnoinvd": ("WBNOINVD",), "monitor": ("MONITOR", "MWAIT"),
    "smap": ("CLAC", "STAC"),
}
# Never advertised: svmsim does not model the feature at all (not only an instruction).
UNMODELLED = frozenset({"vme", "pku", "la57", "umip", "xgetbv1", "topoext",
                        "cr8_legacy"})
# Features that also need a state component in XCR0 (XSAVE): AVX = YMM (bit 2).
NEEDS_XCR0 = {"avx": 4, "avx2": 4, "fma": 4, "f16c": 4}

# XSAVE components svmsim implements: x87 (bit 0), SSE (bit 1), AVX/YMM (bit 2).
XCR0_SUPPORTED = 0b111
XSAVE_LEGACY_SIZE = 512 + 64        # legacy region + XSAVE header (APM vol 1, 11.5.2)
# Extended components: bit -> (size, offset in the standard format) (CPUID Fn0000_000D_x[n]).
XSAVE_COMPONENTS = {2: (256, 576)}

_REGS = ("eax", "ebx", "ecx", "edx")


_CODE_FEATURES = {}
_MISSING = []


def code_features(code: int) -> frozenset:
    """Our feature names an instruction form (iced Code) needs."""
    fs = _CODE_FEATURES.get(code)
    if fs is None:
        ins = iced_x86.Instruction()
        ins.code = code
        names = [_CF_NAMES.get(f) for f in ins.cpuid_features()]
        fs = frozenset([ISA_FEATURES[n] for n in names if n in ISA_FEATURES] +
                       ["unsupported:" + n for n in names if n in FOREIGN])
        _CODE_FEATURES[code] = fs
    return fs


_CF_NAMES = {getattr(iced_x86.CpuidFeature, n): n for n in dir(iced_x86.CpuidFeature) if n.isupper()}
_ENCODINGS = (iced_x86.EncodingKind.LEGACY, iced_x86.EncodingKind.VEX)


def missing_forms() -> dict:
    """{feature: [iced Code names without a handler]} for ISA_FEATURES."""
    if not _MISSING:
        from . import ops
        ops.load_all()
        out = {}
        for name in dir(iced_x86.Code):
            if not name.isupper():
                continue
            code = getattr(iced_x86.Code, name)
            ins = iced_x86.Instruction()
            ins.code = code
            if ins.encoding not in _ENCODINGS:
                continue
            if code in ops.BY_CODE or iced_x86.OpCodeInfo(code).mnemonic in ops.BY_MNEMONIC:
                continue
            need = code_features(code)
            if any(f.startswith("unsupported:") for f in need):
                continue
            for f in need:
                out.setdefault(f, []).append(name)
        _MISSING.append(out)
    return _MISSING[0]


def effective_features(profile) -> frozenset:
    """The profile's features minus those svmsim cannot honour yet."""
    from . import ops
    ops.load_all()
    have = set(ops.BY_MNEMONIC) | {iced_x86.OpCodeInfo(c).mnemonic for c in ops.BY_CODE}
    missing = missing_forms()
    out = set()
    for f in profile.features:
        if f in UNMODELLED or REQUIRES.get(f, f) not in profile.features or f in missing:
            continue
        if NEEDS_XCR0.get(f, 0) & ~XCR0_SUPPORTED:
            continue
        need = NEEDS.get(f, ())
        if all(getattr(iced_x86.Mnemonic, m) in have for m in need):
            out.add(f)
    if "erms" not in out:
        out.discard("fsrm")          # fast short REP MOVSB refines ERMS: Linux relies on it
    return frozenset(out)


def supports_code(machine, code: int) -> bool:
    """Does this machine's CPU report every feature the instruction form needs?"""
    need = code_features(code)
    return not need or need <= features(machine)


def features(machine) -> frozenset:
    """Cached effective feature set of a machine's profile."""
    fs = getattr(machine, "_cpuid_features", None)
    if fs is None:
        fs = effective_features(machine.profile)
        try:
            machine._cpuid_features = fs
        except AttributeError:
            pass
    return fs


def has(cpu, feature: str) -> bool:
    """Does this CPU report ``feature`` (name from profiles.FEATURE_BITS)?"""
    return feature in features(cpu.machine)


def _smp(machine) -> int:
    cfg = getattr(machine, "config", None)
    return getattr(cfg, "smp", None) or len(getattr(machine, "cpus", ())) or 1


def _table(machine) -> dict:
    t = getattr(machine, "_cpuid_table", None)
    if t is None:
        t = build_table(machine.profile, features(machine), _smp(machine))
        try:
            machine._cpuid_table = t
        except AttributeError:
            pass
    return t


def _str_regs(s: str, n: int):
    b = s.encode("ascii")[:4 * n].ljust(4 * n, b"\0")
    return [int.from_bytes(b[i:i + 4], "little") for i in range(0, 4 * n, 4)]


def _l1(size, assoc, line, lpt):
    """L1 cache descriptor of Fn8000_0005_ECX/EDX (APM vol 3, E.4.4)."""
    return (size << 24) | ((0xFF if assoc == 0 else assoc) << 16) | (lpt << 8) | line


_L2_ASSOC = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 8: 6, 16: 8, 32: 0xA, 48: 0xB, 64: 0xC, 96: 0xD,
             128: 0xE}


def _l2(size_kib, assoc, line, lpt):
    """Fn8000_0006_ECX: L2 size in KiB, encoded associativity (E.4.5)."""
    return (size_kib << 16) | (_L2_ASSOC.get(assoc, 0xF) << 12) | (lpt << 8) | line


def _l3(size_kib, assoc, line, lpt):
    """Fn8000_0006_EDX: L3 size in 512 KiB units."""
    if not size_kib:
        return 0
    return ((size_kib // 512) << 18) | (_L2_ASSOC.get(assoc, 0xF) << 12) | (lpt << 8) | line


def build_table(profile, fs, smp: int) -> dict:
    """{(leaf, subleaf or None): [eax, ebx, ecx, edx]} for the static parts."""
    t = {}

    def leaf(lf, sub=None):
        return t.setdefault((lf, sub), [0, 0, 0, 0])

    for f in fs:
        lf, sub, reg, bit = FEATURE_BITS[f]
        leaf(lf, sub)[_REGS.index(reg)] |= 1 << bit
    if smp > 1:
        leaf(1)[3] |= 1 << 28                          # HTT: EBX[23:16] is valid
    else:
        leaf(1)[3] &= ~(1 << 28)
    ext1 = leaf(0x80000001)
    for f in AMD_EDX_ALIASES:
        if f in fs:
            ext1[3] |= 1 << FEATURE_BITS[f][3]
    sig = profile.reset_edx
    v = _str_regs(profile.vendor, 3)                   # EBX, EDX, ECX order
    t[(0, None)] = [profile.max_basic, v[0], v[2], v[1]]
    l1 = leaf(1)
    l1[0] = sig
    l1[1] = (8 << 8) | ((smp & 0xFF) << 16)            # CLFLUSH size 8 qwords (64 B)
    leaf(5)[:] = [64, 64, 0x3, 0] if "monitor" in fs else [0, 0, 0, 0]
    if profile.max_basic >= 0xB:
        shift = max(smp - 1, 0).bit_length()
        t[(0xB, 0)] = [0, 1, 0x100, 0]                 # SMT level: 1 thread per core
        t[(0xB, 1)] = [shift, smp, 0x201, 0]           # core level
    if "xsave" in fs:
        t[(0xD, 0)] = [XCR0_SUPPORTED, XSAVE_LEGACY_SIZE, _xsave_size(XCR0_SUPPORTED), 0]
        leaf(0xD, 1)
        for n, (size, offset) in XSAVE_COMPONENTS.items():
            if XCR0_SUPPORTED >> n & 1:
                t[(0xD, n)] = [size, offset, 0, 0]
    ext0 = [profile.max_ext, v[0], v[2], v[1]]
    t[(0x80000000, None)] = ext0
    ext1[0] = sig
    ext1[1] = profile.pkg_type << 28
    for i, lf in enumerate((0x80000002, 0x80000003, 0x80000004)):
        t[(lf, None)] = _str_regs(profile.brand[16 * i:16 * (i + 1)], 4) if len(profile.brand) > 16 * i else [0] * 4
    t[(0x80000005, None)] = [profile.tlb_l1[0], profile.tlb_l1[1], _l1(*profile.l1d), _l1(*profile.l1i)]
    t[(0x80000006, None)] = [profile.tlb_l2[0], profile.tlb_l2[1], _l2(*profile.l2), _l3(*profile.l3)]
    leaf(0x80000007)
    apic_id_size = max(smp - 1, 0).bit_length()
    e8 = leaf(0x80000008)
    e8[0] = profile.phys_bits | (profile.lin_bits << 8)
    e8[2] = ((smp - 1) & 0xFF) | (apic_id_size << 12)
    if profile.max_ext >= 0x8000000A:
        leaf(0x8000000A)                               # SVM details: filled by the SVM work
    if profile.max_ext >= 0x8000001F:
        sev = profile.extra.get("sev")
        if sev:
            # SME (0), SEV (1), SEV-ES (3), SEV needs a 64-bit host (11); C-bit
            # position, address-bit reduction; encrypted guests; first ASID of an
            # SEV guest without ES (seed S14, S18; APM 15.35.1-2).
            # SEV-SNP (4) and VMPLs (5) with EBX[15:12] = number of VMPLs (15.36.1).
            eax = (1 << 0) | (1 << 1) | (1 << 11) | (1 << 3 if sev.get("es") else 0)
            ebx = sev["c_bit"] | sev["reduction"] << 6
            if sev.get("snp"):
                eax |= 1 << 4 | 1 << 5
                ebx |= sev["vmpls"] << 12
            if sev.get("es"):          # the SEV_FEATURES svmsim implements (cpu/sev_features.py)
                eax |= sev_features.cpuid_eax(es=True, snp=bool(sev.get("snp")))
            t[(0x8000001F, None)] = [eax, ebx, sev["max_asid"], sev["min_sev_asid"]]
        else:
            leaf(0x8000001F)
    return t


def cpuid(cpu, leaf: int, subleaf: int = 0):
    """(eax, ebx, ecx, edx) of CPUID with EAX=leaf, ECX=subleaf on ``cpu``."""
    machine = cpu.machine
    profile = machine.profile
    leaf &= 0xFFFFFFFF
    if leaf >= 0x80000000:
        if leaf > profile.max_ext:
            return (0, 0, 0, 0)
    elif leaf > profile.max_basic:
        return (0, 0, 0, 0)
    t = _table(machine)
    r = t.get((leaf, None))
    if r is None:
        r = t.get((leaf, subleaf & 0xFFFFFFFF))
    r = list(r) if r is not None else [0, 0, 0, 0]
    if leaf == 1:
        r[1] = (r[1] & 0x00FFFFFF) | ((cpu.index & 0xFF) << 24)
        if cpu.cr4 & (1 << 18):
            r[2] |= 1 << 27                              # OSXSAVE mirrors CR4.OSXSAVE
        if not _apic_enabled(cpu):
            r[3] &= ~(1 << 9)                            # APIC bit follows APIC_BASE.EN
        r[2] &= ~(1 << 31)                               # hypervisor bit: 0 on the physical CPU (S8)
    elif leaf == 0x80000001:
        if not _apic_enabled(cpu):
            r[3] &= ~(1 << 9)
    elif leaf == 0xB:
        if (leaf, subleaf & 0xFFFFFFFF) not in t:
            r = [0, 0, subleaf & 0xFF, 0]              # invalid level: type 0, ECX[7:0] echoes
        r[3] = cpu.index                               # x2APIC ID
    elif leaf == 0x8000000A and has(cpu, "svm"):
        r = list(cpu.hooks.cpuid_leaf(cpu, leaf) or r)
    elif leaf == 0xD and subleaf == 0 and r[0]:
        r[1] = _xsave_size(cpu.xcr0)
    elif leaf == 0xD and subleaf == 1 and r[0] & 0b1010:
        # XSAVEC or XSAVES: size of the compacted area for XCR0 | IA32_XSS
        # (Linux sizes its buffers from it with XSAVEC alone too)
        r[1] = XSAVE_LEGACY_SIZE + sum(size for n, (size, _) in XSAVE_COMPONENTS.items()
                                       if (cpu.xcr0 | cpu.msr.get(0xDA0, 0)) >> n & 1)
    return tuple(x & 0xFFFFFFFF for x in r)


def _xsave_size(xcr0: int) -> int:
    """Fn0000_000D_EBX_x0: size of the standard-format area for the
    components enabled in XCR0 (x87/SSE live in the legacy region)."""
    end = XSAVE_LEGACY_SIZE
    for n, (size, offset) in XSAVE_COMPONENTS.items():
        if xcr0 >> n & 1:
            end = max(end, offset + size)
    return end


def _apic_enabled(cpu) -> bool:
    lapic = getattr(cpu, "lapic", None)
    if lapic is not None:
        return bool(lapic.read_apic_base() & (1 << 11))
    return bool(cpu.msr.get(0x1B, 0xFEE00900) & (1 << 11))
