"""VMRUN's extra consistency checks for SEV and SEV-ES guests (seed S17-S19;
APM vol 2, 15.34.3, 15.35.2, 15.35.8).  They apply only when
SYSCFG.MemEncryptionModEn = 1: otherwise the VMCB's SEV bits are ignored
(S19).  Each failure names its rule, like the 15.5.1 checks in
``checks.py`` (registered there through LATER_CHECKS).

The SEV-ES rules about the VMSA itself (``es_vmsa_checks``, the integrity
checksum) run before the 15.5.1 rules, because those rules read the guest
state from the VMSA; the manual gives no order among them.
"""
from . import checks

SEC_SEV = "APM vol 2, 15.34 (seed S17, S18)"
SEC_ES = "APM vol 2, 15.35.2"
SEC_ES_VMRUN = "APM vol 2, 15.35.8"
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


def es_requested(vmcb, host) -> bool:
    """SEV_ES_ENABLE on a CPU with SEV-ES and memory encryption on."""
    machine = getattr(host, "machine", None)
    sev = machine.profile.extra.get("sev") if machine is not None else None
    return bool(sev and sev.get("es") and vmcb["SEV_ES_ENABLE"]
                and getattr(host, "msr", {}).get(SYSCFG, 0) & MEM_ENCRYPTION_MOD_EN)


def _asid(vmcb, caps, host):
    """15.34.3: ASID <= CPUID 8000_001F ECX; 15.35.2: "CPUID Fn8000_001F[EDX]
    indicates the minimum ASID value that must be used for an SEV-enabled,
    SEV-ES-disabled guest" (SEV-ES may use any SEV ASID)."""
    if not sev_active(vmcb, host):
        return None
    sev = host.machine.profile.extra["sev"]
    asid = vmcb["GUEST_ASID"]
    low = 1 if es_requested(vmcb, host) else sev["min_sev_asid"]
    if not low <= asid <= sev["max_asid"]:
        what = "an SEV-ES guest's" if low == 1 else "an SEV guest's (without SEV-ES)"
        return checks._reason("SEV_ASID", "GUEST_ASID", asid, SEC_SEV,
                              f"{what} ASID must be within {low}..{sev['max_asid']} "
                              f"(CPUID 8000_001F {'1' if low == 1 else 'EDX'}..ECX)")


def _es_eventinj(vmcb, caps, host):
    """15.35.8: "Software interrupts and exception vectors 3 and 4 may not be
    injected" into an SEV-ES guest."""
    ev = vmcb["EVENTINJ"]
    if not es_requested(vmcb, host) or not ev >> 31 & 1:
        return None
    typ, vector = ev >> 8 & 7, ev & 0xFF
    if typ == 4 or typ == 3 and vector in (3, 4):
        return checks._reason("SEV_ES_EVENTINJ", "EVENTINJ", ev, SEC_ES_VMRUN,
                              "event injection into an SEV-ES guest may not be a software "
                              "interrupt or exception vector 3 or 4")


# ---------------------------------------------------------------- the VMSA (before the guest state)
def es_vmsa_checks(vmcb, host, spa):
    """SEV-ES needs SEV and LBR virtualization (15.35.2) and a VMSA page that
    VMRUN can read (15.35.8: "If any part of the VMRUN flow faults ...
    VMEXIT_INVALID"): 4 KiB aligned, inside the physical address space, RAM."""
    if not vmcb["SEV_ENABLE"]:
        return checks._reason("SEV_ES_SEV", "SEV_ENABLE", 0, SEC_ES,
                              "SEV_ES_ENABLE = 1 needs SEV_ENABLE = 1 too")
    if not vmcb["LBR_VIRTUALIZATION_ENABLE"]:
        return checks._reason("SEV_ES_LBRV", "LBR_VIRTUALIZATION_ENABLE", 0, SEC_ES,
                              "SEV_ES_ENABLE = 1 needs LBR virtualization (VMCB B8h bit 0)")
    limit = 1 << (host.maxphyaddr - host.machine.profile.extra["sev"]["reduction"])
    if spa & 0xFFF or spa >= limit or host.bus.ram_offset(spa) is None:
        return checks._reason("SEV_ES_VMSA", "VMSA_PA", vmcb["VMSA_PA"], SEC_ES_VMRUN,
                              "the VMSA pointer must be a 4 KiB aligned address of RAM "
                              f"below {limit:#x}")
    return None


def integrity_reason(spa):
    return checks._reason("SEV_ES_VMSA_INTEGRITY", "VMSA_PA", spa, SEC_ES_VMRUN,
                          "the VMSA's integrity checksum does not match (it was never launched "
                          "through the AMD-SP, was changed outside the guest, or the ASID's "
                          "key is not the guest's)")


def _host_64(vmcb, caps, host):
    # CPUID 8000_001F EAX[11]: an SEV guest needs a 64-bit host (S18).
    if sev_active(vmcb, host) and not host.efer & EFER_LMA:
        return checks._reason("SEV_64BIT_HOST", "SEV_ENABLE", 1, SEC_SEV,
                              "SEV guests need a 64-bit host (CPUID 8000_001F EAX[11] = 1), "
                              "but VMRUN runs in legacy mode")


RULES = (("SEV_NP", _np), ("SEV_SMMLOCK", _smm_lock), ("SEV_ASID", _asid),
         ("SEV_64BIT_HOST", _host_64), ("SEV_ES_EVENTINJ", _es_eventinj))
if not any(rule == "SEV_NP" for rule, _ in checks.LATER_CHECKS):
    checks.LATER_CHECKS.extend(RULES)
