"""VMRUN's extra consistency checks for an SEV guest (seed S17-S19; APM vol 2,
15.34).  They apply only when SYSCFG.MemEncryptionModEn = 1: otherwise the
VMCB's SEV bits are ignored (S19).  Each failure names its rule, like the
15.5.1 checks in ``checks.py`` (registered there through LATER_CHECKS).
"""
from . import checks

SEC_SEV = "APM vol 2, 15.34 (seed S17, S18)"
SYSCFG, HWCR = 0xC0010010, 0xC0010015
MEM_ENCRYPTION_MOD_EN = 1 << 23
SMM_LOCK = 1 << 0
EFER_LMA = 1 << 10


def sev_active(vmcb, host) -> bool:
    """SEV_ENABLE set on a CPU with SEV and memory encryption on.  ``host`` is
    the CPU running VMRUN (anything without SEV state counts as SEV off)."""
    machine = getattr(host, "machine", None)
    sev = machine.profile.extra.get("sev") if machine is not None else None
    msrs = getattr(host, "msr", {})
    return bool(sev and vmcb["SEV_ENABLE"] and msrs.get(SYSCFG, 0) & MEM_ENCRYPTION_MOD_EN)


def _np(vmcb, caps, host):
    if sev_active(vmcb, host) and not vmcb["NP_ENABLE"]:
        return checks._reason("SEV_NP", "NP_ENABLE", 0, SEC_SEV,
                              "SEV_ENABLE = 1 needs nested paging (NP_ENABLE = 1)")


def _smm_lock(vmcb, caps, host):
    if sev_active(vmcb, host) and not host.msr.get(HWCR, 0) & SMM_LOCK:
        return checks._reason("SEV_SMMLOCK", "SEV_ENABLE", 1, SEC_SEV,
                              "SEV_ENABLE = 1 while HWCR.SmmLock (C001_0015h bit 0) is 0")


def _asid(vmcb, caps, host):
    if not sev_active(vmcb, host):
        return None
    sev = host.machine.profile.extra["sev"]
    asid = vmcb["GUEST_ASID"]
    if not sev["min_sev_asid"] <= asid <= sev["max_asid"]:
        return checks._reason("SEV_ASID", "GUEST_ASID", asid, SEC_SEV,
                              f"an SEV guest's ASID must be within {sev['min_sev_asid']}.."
                              f"{sev['max_asid']} (CPUID 8000_001F EDX..ECX)")


def _host_64(vmcb, caps, host):
    # CPUID 8000_001F EAX[11]: an SEV guest needs a 64-bit host (S18).
    if sev_active(vmcb, host) and not host.efer & EFER_LMA:
        return checks._reason("SEV_64BIT_HOST", "SEV_ENABLE", 1, SEC_SEV,
                              "SEV guests need a 64-bit host (CPUID 8000_001F EAX[11] = 1), "
                              "but VMRUN runs in legacy mode")


RULES = (("SEV_NP", _np), ("SEV_SMMLOCK", _smm_lock), ("SEV_ASID", _asid),
         ("SEV_64BIT_HOST", _host_64))
if not any(rule == "SEV_NP" for rule, _ in checks.LATER_CHECKS):
    checks.LATER_CHECKS.extend(RULES)
