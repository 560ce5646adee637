"""CPU models as flat data: one base dict plus one flat diff per model.

A profile says what the *modelled* processor reports through CPUID and which
optional architectural features (CR4 bits, EFER bits, MSRs) exist.  Feature
bits are named; ``FEATURE_BITS`` maps each name to its CPUID leaf, register
and bit (AMD APM vol 3, appendix E "Obtaining Processor Information Via the
CPUID Instruction"; AMD CPUID Specification #25481).  ``svmsim.cpu.cpuid``
builds the register values and drops features whose instructions svmsim does
not implement yet, so software never sees a feature it cannot use.

Models:

* ``epyc`` (alias ``epyc-milan``): AMD EPYC 7003 "Milan", family 19h model
  01h stepping 1 (CPUID 00A00F11h), the feature set of QEMU's EPYC-Milan
  model (target/i386/cpu.c builtin_x86_defs) restricted to what svmsim models.
  Caches: 32 KiB 8-way L1I/L1D, 512 KiB 8-way L2, 32 MiB 16-way L3, 64-byte
  lines (PPR for AMD Family 19h Model 01h; QEMU epyc_milan_cache_info).
* ``epyc-genoa``: AMD EPYC 9004 "Genoa", family 19h model 11h stepping 1
  (CPUID 00A10F11h), 1 MiB L2.
* ``amd64-base``: a minimal AMD64 processor in the spirit of QEMU's
  ``qemu64`` (family 0Fh model 6Bh stepping 1), without SVM.
* ``max``: the ``epyc`` processor with every feature svmsim models (as
  QEMU's ``max``: "all features supported by the accelerator").

A CPU is named as on QEMU's command line: a model, then features to add or
remove, ``max,+svm,-npt,-rdtscp`` (``+f``, ``-f``, ``f=on``, ``f=off``).
Features take svmsim's names (``FEATURE_BITS``) or QEMU's (``QEMU_NAMES``);
QEMU's model names (``EPYC``, ``EPYC-Milan``, ``qemu64``) are accepted.
``PROPERTIES`` are set the same way but are not CPUID bits
(``+force-emulation-prefix``: KVM's forced-emulation prefix, off by default).
"""
from dataclasses import dataclass, field, replace

from ..errors import ConfigError

# name -> (leaf, subleaf, register, bit).  Subleaf None = leaf has no subleaves.
FEATURE_BITS = {
    # Fn0000_0001_EDX
    "fpu": (1, None, "edx", 0), "vme": (1, None, "edx", 1), "de": (1, None, "edx", 2),
    "pse": (1, None, "edx", 3), "tsc": (1, None, "edx", 4), "msr": (1, None, "edx", 5),
    "pae": (1, None, "edx", 6), "mce": (1, None, "edx", 7), "cx8": (1, None, "edx", 8),
    "apic": (1, None, "edx", 9), "sep": (1, None, "edx", 11), "mtrr": (1, None, "edx", 12),
    "pge": (1, None, "edx", 13), "mca": (1, None, "edx", 14), "cmov": (1, None, "edx", 15),
    "pat": (1, None, "edx", 16), "pse36": (1, None, "edx", 17), "clfsh": (1, None, "edx", 19),
    "mmx": (1, None, "edx", 23), "fxsr": (1, None, "edx", 24), "sse": (1, None, "edx", 25),
    "sse2": (1, None, "edx", 26), "htt": (1, None, "edx", 28),
    # Fn0000_0001_ECX
    "sse3": (1, None, "ecx", 0), "pclmulqdq": (1, None, "ecx", 1), "monitor": (1, None, "ecx", 3),
    "ssse3": (1, None, "ecx", 9), "fma": (1, None, "ecx", 12), "cx16": (1, None, "ecx", 13),
    "pcid": (1, None, "ecx", 17),
    "sse41": (1, None, "ecx", 19), "sse42": (1, None, "ecx", 20), "x2apic": (1, None, "ecx", 21),
    "movbe": (1, None, "ecx", 22), "popcnt": (1, None, "ecx", 23),
    "tsc_deadline": (1, None, "ecx", 24), "aes": (1, None, "ecx", 25),
    "xsave": (1, None, "ecx", 26), "avx": (1, None, "ecx", 28), "f16c": (1, None, "ecx", 29),
    "rdrand": (1, None, "ecx", 30),
    # Fn0000_0006_EAX
    "arat": (6, None, "eax", 2),
    # Fn0000_0007_x0
    "fsgsbase": (7, 0, "ebx", 0), "bmi1": (7, 0, "ebx", 3), "avx2": (7, 0, "ebx", 5),
    "smep": (7, 0, "ebx", 7), "bmi2": (7, 0, "ebx", 8), "erms": (7, 0, "ebx", 9),
    "invpcid": (7, 0, "ebx", 10), "rdseed": (7, 0, "ebx", 18), "adx": (7, 0, "ebx", 19),
    "smap": (7, 0, "ebx", 20), "clflushopt": (7, 0, "ebx", 23), "clwb": (7, 0, "ebx", 24),
    "sha": (7, 0, "ebx", 29),
    "umip": (7, 0, "ecx", 2), "pku": (7, 0, "ecx", 3), "la57": (7, 0, "ecx", 16),
    "rdpid": (7, 0, "ecx", 22), "fsrm": (7, 0, "edx", 4),
    # Fn0000_000D_x1
    "xsaveopt": (0xD, 1, "eax", 0), "xsavec": (0xD, 1, "eax", 1),
    "xgetbv1": (0xD, 1, "eax", 2), "xsaves": (0xD, 1, "eax", 3),
    # Fn8000_0001_ECX
    "lahf_lm": (0x80000001, None, "ecx", 0), "svm": (0x80000001, None, "ecx", 2),
    "cr8_legacy": (0x80000001, None, "ecx", 4), "abm": (0x80000001, None, "ecx", 5),
    "sse4a": (0x80000001, None, "ecx", 6), "prefetchw": (0x80000001, None, "ecx", 8),
    "osvw": (0x80000001, None, "ecx", 9), "skinit": (0x80000001, None, "ecx", 12),
    "tce": (0x80000001, None, "ecx", 17), "topoext": (0x80000001, None, "ecx", 22),
    "perfctr_core": (0x80000001, None, "ecx", 23),
    # Fn8000_0001_EDX (AMD-only bits; the leaf-1 aliases are added by cpuid.py)
    "syscall": (0x80000001, None, "edx", 11), "nx": (0x80000001, None, "edx", 20),
    "mmxext": (0x80000001, None, "edx", 22), "ffxsr": (0x80000001, None, "edx", 25),
    "page1gb": (0x80000001, None, "edx", 26), "rdtscp": (0x80000001, None, "edx", 27),
    "lm": (0x80000001, None, "edx", 29),
    # Fn8000_0007_EDX
    "invariant_tsc": (0x80000007, None, "edx", 8),
    # Fn8000_0008_EBX
    "clzero": (0x80000008, None, "ebx", 0), "xsaveerptr": (0x80000008, None, "ebx", 2),
    "wbnoinvd": (0x80000008, None, "ebx", 9), "ibpb": (0x80000008, None, "ebx", 12),
    "ibrs": (0x80000008, None, "ebx", 14), "stibp": (0x80000008, None, "ebx", 15),
    "amd_ssbd": (0x80000008, None, "ebx", 24),
    # Fn8000_000A_EDX: optional SVM features (APM vol 3, E.4.9; svm/features.py
    # says which of them svmsim implements)
    "npt": (0x8000000A, None, "edx", 0), "lbrv": (0x8000000A, None, "edx", 1),
    "svm_lock": (0x8000000A, None, "edx", 2), "nrips": (0x8000000A, None, "edx", 3),
    "tsc_scale": (0x8000000A, None, "edx", 4), "vmcb_clean": (0x8000000A, None, "edx", 5),
    "flush_by_asid": (0x8000000A, None, "edx", 6), "decode_assists": (0x8000000A, None, "edx", 7),
    "pause_filter": (0x8000000A, None, "edx", 10), "pause_filter_threshold": (0x8000000A, None, "edx", 12),
    "avic": (0x8000000A, None, "edx", 13), "v_vmsave_vmload": (0x8000000A, None, "edx", 15),
    "vgif": (0x8000000A, None, "edx", 16), "gmet": (0x8000000A, None, "edx", 17),
    "x2avic": (0x8000000A, None, "edx", 18), "sss_check": (0x8000000A, None, "edx", 19),
    "spec_ctrl": (0x8000000A, None, "edx", 20), "rogpt": (0x8000000A, None, "edx", 21),
    "host_mce_override": (0x8000000A, None, "edx", 23), "tlbictl": (0x8000000A, None, "edx", 24),
    "vnmi": (0x8000000A, None, "edx", 25), "ibs_virt": (0x8000000A, None, "edx", 26),
}

# A feature reported only with the one it extends (no SVM leaf without SVM,
# no XSAVE variants without XSAVE).
REQUIRES = {name: "svm" for name, (leaf, _, _, _) in FEATURE_BITS.items() if leaf == 0x8000000A}
REQUIRES.update({"xsaveopt": "xsave", "xsavec": "xsave", "xgetbv1": "xsave", "xsaves": "xsave"})

# QEMU's spelling of a feature (``qemu-system-x86_64 -cpu help``) where it
# differs from svmsim's by more than '-' for '_'.
QEMU_NAMES = {
    "clflush": "clfsh", "ht": "htt", "pni": "sse3", "sse4.1": "sse41", "sse4.2": "sse42",
    "3dnowprefetch": "prefetchw", "fxsr-opt": "ffxsr", "pdpe1gb": "page1gb",
    "invtsc": "invariant_tsc", "sha-ni": "sha", "amd-stibp": "stibp", "cr8legacy": "cr8_legacy",
    "nrip-save": "nrips", "flushbyasid": "flush_by_asid", "decodeassists": "decode_assists",
    "pfthreshold": "pause_filter_threshold",
}

# CPU properties that are not CPUID features, set as features are (``+name``,
# ``name=on``) -> Profile field.  ``force-emulation-prefix`` (alias ``fep``):
# KVM's forced-emulation prefix ``ud2; .ascii "kvm"`` runs the instruction
# after it instead of raising #UD (cpu/ops/system.py ud2).  A debugging aid
# of KVM (its module parameter force_emulation_prefix) that no processor has:
# off by default, where the prefix is #UD as on hardware.
PROPERTIES = {"force-emulation-prefix": "fep", "fep": "fep"}

# Fn0000_0001_EDX bits that AMD repeats in Fn8000_0001_EDX (APM vol 3, E.4.2).
AMD_EDX_ALIASES = ("fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic",
                   "mtrr", "pge", "mca", "cmov", "pat", "pse36", "mmx", "fxsr")

_LEGACY64 = frozenset({
    "fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge",
    "mca", "cmov", "pat", "pse36", "clfsh", "mmx", "fxsr", "sse", "sse2",
    "syscall", "nx", "lm", "lahf_lm",
})

# The base: what every profile starts from.  Each model below is ONE flat
# diff applied to this dict (no chains).
BASE = {
    "vendor": "AuthenticAMD",
    "family": 0xF, "model": 0x6B, "stepping": 1,
    "brand": "AMD64 processor (svmsim, simulated)",
    "max_basic": 0xD,
    "max_ext": 0x8000000A,
    "phys_bits": 40, "lin_bits": 48,
    "features": _LEGACY64,
    "patch_level": 0,
    # (size KiB, associativity, line bytes, lines per tag)
    "l1d": (64, 2, 64, 1), "l1i": (64, 2, 64, 1),
    "l2": (512, 16, 64, 1), "l3": (0, 0, 0, 0),
    # 0x80000005 EAX/EBX and 0x80000006 EAX/EBX (TLB descriptors, raw).
    "tlb_l1": (0xFF01FF01, 0xFF20FF20), "tlb_l2": (0x00000000, 0x42004200),
    "pkg_type": 0,
    "mcg_banks": 4,
}

_MILAN_FEATURES = _LEGACY64 | {
    "htt", "monitor", "x2apic", "movbe", "popcnt", "xsave", "rdrand",
    "sse3", "pclmulqdq", "ssse3", "cx16", "sse41", "sse42", "aes", "pcid",
    "arat", "fsgsbase", "bmi1", "smep", "bmi2", "erms", "invpcid", "rdseed", "adx",
    "smap", "clflushopt", "clwb", "sha", "rdpid", "fsrm",
    "xsaveopt", "xsavec", "xsaves", "avx", "avx2", "fma", "f16c",
    "svm", "skinit", "abm", "sse4a", "prefetchw", "osvw", "tce", "perfctr_core",
    "mmxext", "ffxsr", "page1gb", "rdtscp",
    "invariant_tsc",
    "clzero", "xsaveerptr", "wbnoinvd", "ibpb", "ibrs", "stibp", "amd_ssbd",
}

# The optional SVM features of the EPYC models (CPUID Fn8000_000A_EDX).
_EPYC_SVM = {"npt", "lbrv", "nrips", "tsc_scale", "vmcb_clean", "flush_by_asid",
             "decode_assists", "pause_filter", "pause_filter_threshold", "vgif", "vnmi",
             "gmet", "v_vmsave_vmload", "avic", "x2avic"}

MODELS = {
    "epyc": {
        "family": 0x19, "model": 0x01, "stepping": 1,
        "brand": "AMD EPYC-Milan (svmsim, simulated)",
        "max_basic": 0xD, "max_ext": 0x8000001F,
        "phys_bits": 48, "lin_bits": 48,
        "features": _MILAN_FEATURES | _EPYC_SVM,
        "patch_level": 0x0A001173,
        "l1d": (32, 8, 64, 1), "l1i": (32, 8, 64, 1),
        "l2": (512, 8, 64, 1), "l3": (32 * 1024, 16, 64, 1),
        "tlb_l1": (0xFF40FF40, 0xFF40FF40), "tlb_l2": (0x26002200, 0x26002200),
        "pkg_type": 4,                       # SP3 socket (PPR 19h, Fn8000_0001_EBX)
        # SME/SEV/SEV-ES (CPUID 8000_001F; seed S14; APM 15.35.2): C-bit 47, 5
        # address bits cut when memory encryption is on (48 -> 43), 15 encrypted
        # guests; SEV without ES needs ASID >= 5 (EDX), SEV-ES may use 1..15.
        "extra": {"sev": {"c_bit": 47, "reduction": 5, "max_asid": 15, "min_sev_asid": 5, "es": True,
                          "snp": True, "vmpls": 4}},
    },
    "epyc-genoa": {
        "family": 0x19, "model": 0x11, "stepping": 1,
        "brand": "AMD EPYC-Genoa (svmsim, simulated)",
        "max_basic": 0xD, "max_ext": 0x8000001F,
        "phys_bits": 48, "lin_bits": 48,
        "features": _MILAN_FEATURES | _EPYC_SVM,
        "patch_level": 0x0A101144,
        "l1d": (32, 8, 64, 1), "l1i": (32, 8, 64, 1),
        "l2": (1024, 8, 64, 1), "l3": (32 * 1024, 16, 64, 1),
        "tlb_l1": (0xFF48FF40, 0xFF48FF40), "tlb_l2": (0x26002200, 0x26002200),
        "pkg_type": 4,
        "extra": {"sev": {"c_bit": 51, "reduction": 1, "max_asid": 15, "min_sev_asid": 5, "es": True,
                          "snp": True, "vmpls": 4}},
    },
    "amd64-base": {},
}
MODELS["max"] = dict(MODELS["epyc"], brand="AMD EPYC (svmsim max: every modelled feature)",
                     features=frozenset(FEATURE_BITS))
# svmsim's alternative names, and QEMU's models that match one of ours.
ALIASES = {"epyc-milan": "epyc", "epyc-milan-v1": "epyc", "epyc-genoa-v1": "epyc-genoa",
           "qemu64": "amd64-base", "qemu64-v1": "amd64-base"}


def signature(family: int, model: int, stepping: int) -> int:
    """Fn0000_0001_EAX: family/model/stepping encoding (APM vol 3, E.3.2).

    Family above 0Fh is BaseFamily=Fh plus ExtFamily=family-Fh; the model's
    high nibble goes to ExtModel when BaseFamily is Fh.
    """
    base_fam = min(family, 0xF)
    ext_fam = family - 0xF if family > 0xF else 0
    return (ext_fam << 20) | ((model >> 4) << 16) | (base_fam << 8) | ((model & 0xF) << 4) | (stepping & 0xF)


@dataclass
class Profile:
    """One CPU model.  ``has(name)`` tests a feature of FEATURE_BITS."""
    name: str
    vendor: str
    family: int
    model: int
    stepping: int
    brand: str
    max_basic: int
    max_ext: int
    phys_bits: int
    lin_bits: int
    features: frozenset
    patch_level: int
    l1d: tuple
    l1i: tuple
    l2: tuple
    l3: tuple
    tlb_l1: tuple
    tlb_l2: tuple
    pkg_type: int
    mcg_banks: int
    extra: dict = field(default_factory=dict)
    # KVM's forced-emulation prefix (PROPERTIES): not a CPUID feature.
    fep: bool = False

    @property
    def reset_edx(self) -> int:
        """EDX after RESET holds the processor signature (APM vol 2, 14.1.3)."""
        return signature(self.family, self.model, self.stepping)

    def has(self, feature: str) -> bool:
        return feature in self.features


def _build(name: str) -> Profile:
    data = dict(BASE)
    data.update(MODELS[name])
    data["features"] = frozenset(data["features"])
    return Profile(name=name, **data)


PROFILES = {n: _build(n) for n in MODELS}


def get(spec, warn=None) -> Profile:
    """The Profile a CPU spec names: ``epyc``, ``max,+svm,-npt``, ``EPYC-Milan,rdtscp=off``.

    A feature svmsim does not know is a ConfigError, unless ``warn`` is
    given: then it is passed a one-line warning and skipped, as QEMU TCG
    warns about a feature it does not support and boots without it."""
    if isinstance(spec, Profile):
        return spec
    name, *edits = [part.strip() for part in str(spec).split(",")]
    base = _model(name)
    if not edits:
        return base
    features = set(base.features)
    props = {}
    for edit in edits:
        feature, on = _parse_edit(edit)
        prop = PROPERTIES.get(feature.lower().replace("_", "-"))
        if prop is not None:
            props[prop] = on
            continue
        canon = feature_name(feature)
        if canon is None:
            if warn is None:
                raise ConfigError(f"unknown CPU feature {feature!r} in --cpu {spec!r}")
            warn(f"svmsim does not model CPU feature {feature!r}: ignored")
            continue
        (features.add if on else features.discard)(canon)
    return replace(base, name=str(spec), features=frozenset(features), **props)


def with_fep(profile: "Profile") -> "Profile":
    """``profile`` with KVM's forced-emulation prefix on (PROPERTIES)."""
    return profile if profile.fep else replace(profile, name=f"{profile.name},+force-emulation-prefix", fep=True)


def feature_name(name: str):
    """svmsim's name of a feature given by svmsim's or QEMU's name, or None."""
    low = name.lower()
    canon = QEMU_NAMES.get(low, low.replace("-", "_").replace(".", ""))
    return canon if canon in FEATURE_BITS else None


def _parse_edit(edit: str):
    """'+f' / '-f' / 'f=on' / 'f=off' -> (f, on)."""
    if edit[:1] in "+-" and len(edit) > 1:
        return edit[1:], edit[0] == "+"
    feature, eq, value = edit.partition("=")
    if eq and value.lower() in ("on", "off", "true", "false", "yes", "no"):
        return feature, value.lower() in ("on", "true", "yes")
    raise ConfigError(f"bad CPU feature setting {edit!r} (use +feature, -feature or feature=on|off)")


def _model(name: str) -> Profile:
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return PROFILES[key]
    except KeyError:
        known = sorted(set(PROFILES) | set(ALIASES))
        raise ConfigError(f"unknown CPU profile {name!r} (known: {', '.join(known)})") from None
