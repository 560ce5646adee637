"""Launching an SEV guest through the AMD-SP's firmware API (issue 5, item 5),
as KVM's SEV ioctls drive it, for the reference VMM."""
from dataclasses import dataclass

from .psp import SEV_DATA, Psp
from .vmm import GUEST_BASE, Vmm


SYSCFG, HWCR = 0xC0010010, 0xC0010015


@dataclass
class SevLaunch:
    """What a launch produced, for the guest owner and for the user."""
    handle: int
    asid: int
    measurement: bytes           # LAUNCH_MEASURE's 48-byte blob (MEASURE || MNONCE)
    verified: bool               # the guest owner's check of it
    regions: list                # (gPA, length) encrypted by LAUNCH_UPDATE_DATA


def launch_sev(vmm: "Vmm", owner, secret: bytes = b"", secret_gpa: int = 0, regions=(), vmsas=()):
    """Launch ``vmm``'s loaded guest as an SEV guest through the AMD-SP's
    firmware API, as KVM's SEV ioctls drive it (issue 5, item 5):
    INIT, PDH_CERT_EXPORT (for the guest owner), LAUNCH_START with the
    owner's session, LAUNCH_UPDATE_DATA of ``regions`` (gPA, length),
    SEV-ES (an owner with the ES policy bit): LAUNCH_UPDATE_VMSA of each
    VMSA page in ``vmsas`` (host physical addresses of their plaintext),
    LAUNCH_MEASURE checked by ``owner``, LAUNCH_SECRET (only if the
    measurement is right), LAUNCH_FINISH, ACTIVATE; then memory encryption
    on (SYSCFG), SmmLock, and SEV_ENABLE in the VMCB (with VMSAs also
    SEV_ES_ENABLE, LBR virtualization and the first VMSA: APM vol 2, 15.35.2)."""
    from ..sev.firmware import SevCmd as C
    from ..sev import crypto
    m = vmm.m
    bus, psp = m.bus, Psp(m)
    fw, call, a = psp.firmware, psp.call, SEV_DATA
    psp.init_platform()
    handle = psp.launch_start(owner)
    plain = []
    for gpa, length in regions:
        length = (length + 15) & ~15
        plain.append(bus.read_bytes(GUEST_BASE + gpa, length))
        call(C.LAUNCH_UPDATE_DATA, "update", handle=handle, address=GUEST_BASE + gpa, len=length)
    for spa in vmsas:
        plain.append(bus.read_bytes(spa, 0x1000))
        call(C.LAUNCH_UPDATE_VMSA, "update", handle=handle, address=spa, len=0x1000)
    call(C.LAUNCH_MEASURE, "update", handle=handle, address=a, len=48)
    blob = bus.read_bytes(a, 48)
    verified = owner.verify_measurement(blob, *fw.api_version, crypto.launch_digest(*plain))
    if verified and secret:
        hdr, trans = owner.secret_packet(secret)
        bus.write_bytes(a, hdr)
        bus.write_bytes(a + 0x100, trans)
        call(C.LAUNCH_SECRET, "packet", handle=handle, hdr_address=a, hdr_len=len(hdr),
             guest_address=GUEST_BASE + secret_gpa, guest_len=len(secret),
             trans_address=a + 0x100, trans_len=len(trans))
    call(C.LAUNCH_FINISH, "handle", handle=handle)
    call(C.ACTIVATE, "activate", handle=handle, asid=vmm.asid)
    from ..cpu import msr
    cpu = vmm.cpu
    msr.wrmsr(cpu, SYSCFG, msr.rdmsr(cpu, SYSCFG) | 1 << 23)      # MemEncryptionModEn
    cpu.msr[HWCR] = cpu.msr.get(HWCR, 0) | 1                         # SmmLock
    vmm.vmcb["SEV_ENABLE"] = 1
    if vmsas:
        vmm.vmcb["SEV_ES_ENABLE"] = vmm.vmcb["LBR_VIRTUALIZATION_ENABLE"] = 1
        vmm.vmcb["VMSA_PA"] = vmsas[0]
    return SevLaunch(handle, vmm.asid, blob, verified, list(regions))
