"""SEV_FEATURES (VMSA offset 3B0h), declared once: every bit APM vol 2
chapter 15 defines, the CPUID Fn8000_001F EAX bit that advertises it, which
guests may set it, and whether svmsim implements it.

Table 15-32 (SEV_STATUS) lists the bits: SEV_STATUS bit n + 2 "is enabled in
SEV FEATURES[n]".  The CPU model advertises the CPUID bit of an implemented
feature (cpu/cpuid.py) and VMRUN refuses a VMSA that sets any bit svmsim
does not implement with VMEXIT_INVALID (svm/snp.py ``vmsa_checks``): the
manual leaves the initial SEV_FEATURES to "coordination with the AMD-SP"
(15.36.12) and says of features gated by the Allowed SEV Features mask "these
features are not available" (15.36.20); svmsim's reading is that VMRUN does
not silently run a guest with a feature it cannot provide.

``scope``: "es" for features the manual gives to "SEV-ES and SNP-active
guests" (or describes in the SEV-ES section), "snp" for SNP-active guests
only.  ``cpuid``: the Fn8000_001F EAX bit, or None where no bit advertises
the feature (vTOM's bit 18 is the Virtual TOM MSR's; ReflectVC and BTB
isolation have none).  Bits 12-15 and 24 are APM vol 3's (E.4.17), not in
the chapter 15 text.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class SevFeature:
    bit: int
    name: str
    section: str
    scope: str
    cpuid: int | None
    implemented: bool


FEATURES = (
    SevFeature(0, "SNPActive", "15.36.12", "snp", 4, True),
    SevFeature(1, "vTOM", "15.36.8", "snp", None, False),
    SevFeature(2, "ReflectVC", "15.36.9", "snp", None, False),
    SevFeature(3, "RestrictedInjection", "15.36.16", "snp", 12, False),
    SevFeature(4, "AlternateInjection", "15.36.16", "snp", 13, False),
    SevFeature(5, "DebugVirtualization", "15.36.13", "es", 14, False),
    # No IBS in svmsim's CPU (Fn8000_0001 ECX[10] = 0, its MSRs #GP): the
    # host can never sample the guest, and the VMRUN condition "IbsFetchEn
    # and IbsOpEn must be 0" always holds (15.36.17).
    SevFeature(6, "PreventHostIBS", "15.36.17", "es", 15, True),
    # No branch predictor: nothing outside the guest influences its
    # predictions (15.36.17).  No CPUID bit advertises it.
    SevFeature(7, "BTBIsolation", "15.36.17", "snp", None, True),
    SevFeature(8, "VmplSSS", "15.36.7", "snp", 7, False),
    SevFeature(9, "SecureTsc", "15.36.18", "snp", 8, False),
    # VMGEXIT writes RAX and CPL to VMCB 110h/118h (15.35.6; svm/world.py).
    SevFeature(10, "VmgexitParameter", "15.35.6", "es", 17, True),
    SevFeature(11, "PmcVirtualization", "15.39", "es", 20, False),
    SevFeature(12, "IbsVirtualization", "15.38", "es", 19, False),
    SevFeature(13, "GuestInterceptCtl", "15.36.23", "snp", 22, False),
    SevFeature(14, "VmsaRegProt", "15.36.17", "snp", 24, False),
    SevFeature(15, "SmtProtection", "15.36.17", "snp", 25, False),
    SevFeature(16, "SecureAvic", "15.36.21", "snp", 26, False),
    SevFeature(21, "IbpbOnEntry", "15.36.17", "snp", 31, False),
)
# Allowed SEV Features (15.36.20): not a SEV_FEATURES bit but the VMCB mask
# at 138h that limits them; Fn8000_001F EAX[27] advertises it (svm/snp.py).
ALLOWED_SEV_FEATURES_CPUID = 27
BY_BIT = {f.bit: f for f in FEATURES}
BIT = {f.name: f.bit for f in FEATURES}


def mask(*, snp: bool, implemented_only: bool = True) -> int:
    """SEV_FEATURES bits a VMSA may set: an SNP-active one (``snp``) any
    feature, another SEV-ES one only the "es" features."""
    m = 0
    for f in FEATURES:
        if (snp or f.scope == "es") and (f.implemented or not implemented_only):
            m |= 1 << f.bit
    return m


def cpuid_eax(es: bool, snp: bool) -> int:
    """The Fn8000_001F EAX bits of the implemented features the profile's
    SEV-ES/SNP support can offer."""
    eax = 1 << ALLOWED_SEV_FEATURES_CPUID if snp else 0
    for f in FEATURES:
        if f.implemented and f.cpuid is not None and (snp or es and f.scope == "es"):
            eax |= 1 << f.cpuid
    return eax


def names(bits: int) -> str:
    return ", ".join(BY_BIT[b].name if b in BY_BIT else f"bit {b}"
                     for b in range(64) if bits >> b & 1) or "none"
