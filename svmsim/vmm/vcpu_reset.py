"""The initial VMSA of an SEV-ES vCPU at reset, as QEMU and KVM build it.

An SEV-ES guest's vCPUs start from VMSAs the AMD-SP encrypts and measures
(LAUNCH_UPDATE_VMSA), so the guest owner's expected launch digest depends on
every byte of them.  QEMU resets each vCPU to the x86 reset state (APM vol 2,
14.1.3, table 14-1) and KVM copies that state into the VMSA page
(arch/x86/kvm/svm/sev.c, sev_es_sync_vmsa), with its own adjustments:

* the VMCB's EFER has SVME set (VMRUN requires it; svm_set_efer);
* CR0 is 60000010h with CD and NW cleared (the CD_NW_CLEARED quirk): 10h;
* CR4 carries MCE, copied from the host's CR4 (svm_set_cr4): 40h;
* G_PAT holds the PAT reset value 0007040600070406h (APM vol 2, A.3);
* RDX holds the processor signature (CPUID Fn0000_0001_EAX) of the vCPU type;
* XCR0 = 1 (x87), MXCSR = 1F80h, FCW = 037Fh: the FPU's reset values.

The bootstrap processor starts at the reset vector FFFF_FFF0h.  Under SEV-ES
the hypervisor cannot set an AP's registers for INIT-SIPI, so an AP starts
from its own VMSA at the address in the firmware's SEV-ES reset block: CS
base = the address's upper 16 bits, RIP = the lower 16 (QEMU target/i386/sev.c).
Everything else in the 4 KiB page is zero.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..svm.vmsa import VmsaView

PAGE_SIZE = 0x1000
BSP_RESET_EIP = 0xFFFFFFF0

# (selector, attrib, limit, base); CS is set per vCPU from its reset address.
_DATA = (0, 0x093, 0xFFFF, 0)            # present, data, writable, accessed
RESET_SEGMENTS = {
    "ES": _DATA, "SS": _DATA, "DS": _DATA, "FS": _DATA, "GS": _DATA,
    "GDTR": (0, 0, 0xFFFF, 0), "IDTR": (0, 0, 0xFFFF, 0),
    "LDTR": (0, 0x082, 0xFFFF, 0),       # present, LDT
    "TR": (0, 0x08B, 0xFFFF, 0),         # present, busy 16-bit TSS
}
CS_ATTRIB = 0x09B                        # present, code, readable, accessed
RESET_FIELDS = {
    "EFER": 1 << 12, "CR0": 0x10, "CR4": 1 << 6, "DR7": 0x400, "DR6": 0xFFFF0FF0,
    "RFLAGS": 0x2, "G_PAT": 0x0007040600070406, "XCR0": 0x1, "MXCSR": 0x1F80,
    "X87_FCW": 0x037F,
}


@dataclass(frozen=True)
class VcpuType:
    """A QEMU CPU model as far as the reset state depends on it."""
    name: str
    family: int
    model: int
    stepping: int

    @property
    def signature(self) -> int:
        """CPUID Fn0000_0001_EAX: families above Fh put Fh in the base family
        field and the rest in the extended family (AMD CPUID spec, 25481)."""
        base, ext = (self.family, 0) if self.family <= 0xF else (0xF, self.family - 0xF)
        return (ext << 20) | ((self.model >> 4) << 16) | (base << 8) | ((self.model & 0xF) << 4) \
            | (self.stepping & 0xF)


def _versions(name, family, model, stepping, versions):
    return {n: VcpuType(n, family, model, stepping)
            for n in (name, *(f"{name}-v{v}" for v in versions))}


# QEMU's builtin AMD EPYC models (target/i386/cpu.c); versions share the signature.
VCPU_TYPES = {
    **_versions("EPYC", 23, 1, 2, (1, 2, 3, 4)),
    "EPYC-IBPB": VcpuType("EPYC-IBPB", 23, 1, 2),
    **_versions("EPYC-Rome", 23, 49, 0, (1, 2, 3, 4)),
    **_versions("EPYC-Milan", 25, 1, 1, (1, 2)),
    **_versions("EPYC-Genoa", 25, 17, 0, (1,)),
}


def vcpu_type(name: str) -> VcpuType:
    try:
        return VCPU_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown vCPU type {name!r} (known: {', '.join(VCPU_TYPES)})") from None


def reset_vmsa(eip: int, signature: int, sev_features: int = 0) -> bytes:
    """The 4 KiB VMSA page of a vCPU that starts at ``eip`` after reset."""
    page = bytearray(PAGE_SIZE)
    v = VmsaView(page)
    for seg, values in RESET_SEGMENTS.items():
        v.set_segment(seg, *values)
    v.set_segment("CS", 0xF000, CS_ATTRIB, 0xFFFF, eip & 0xFFFF0000)
    for name, value in RESET_FIELDS.items():
        v[name] = value
    v["RIP"], v["RDX"], v["SEV_FEATURES"] = eip & 0xFFFF, signature, sev_features
    return bytes(page)


def vcpu_vmsas(vcpus: int, ap_eip: int, signature: int, sev_features: int = 0) -> list:
    """The VMSA pages of ``vcpus`` vCPUs in the order KVM updates them: the
    BSP at the reset vector, then the APs at ``ap_eip``."""
    bsp = reset_vmsa(BSP_RESET_EIP, signature, sev_features)
    ap = reset_vmsa(ap_eip, signature, sev_features)
    return [bsp] + [ap] * (vcpus - 1)
