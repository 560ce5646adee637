"""Launching an SEV guest through the AMD-SP's firmware API (issue 5, item 5),
as KVM's SEV ioctls drive it, for the reference VMM."""
from dataclasses import dataclass

from .vmm import GUEST_BASE, GuestExit, Vmm


SEV_SCRATCH = 0x98000        # host RAM for AMD-SP command buffers (0x98000-0x9FFFF)
SYSCFG, HWCR = 0xC0010010, 0xC0010015


@dataclass
class SevLaunch:
    """What a launch produced, for the guest owner and for the user."""
    handle: int
    asid: int
    measurement: bytes           # LAUNCH_MEASURE's 48-byte blob (MEASURE || MNONCE)
    verified: bool               # the guest owner's check of it
    regions: list                # (gPA, length) encrypted by LAUNCH_UPDATE_DATA


def launch_sev(vmm: "Vmm", owner, secret: bytes = b"", secret_gpa: int = 0, regions=()):
    """Launch ``vmm``'s loaded guest as an SEV guest through the AMD-SP's
    firmware API, as KVM's SEV ioctls drive it (issue 5, item 5):
    INIT, PDH_CERT_EXPORT (for the guest owner), LAUNCH_START with the
    owner's session, LAUNCH_UPDATE_DATA of ``regions`` (gPA, length),
    LAUNCH_MEASURE checked by ``owner``, LAUNCH_SECRET (only if the
    measurement is right), LAUNCH_FINISH, ACTIVATE; then memory encryption
    on (SYSCFG), SmmLock, and SEV_ENABLE in the VMCB."""
    from ..sev.firmware import SevCmd as C, SevStatus, SevState, pack_buffer, unpack_buffer
    from ..sev import crypto
    m = vmm.m
    fw, bus = m.amd_sp, m.bus
    if fw is None:
        raise GuestExit("this CPU model has no AMD Secure Processor (no SEV)")
    cmd_pa, a = SEV_SCRATCH, SEV_SCRATCH + 0x100

    def call(cmd, layout, **fields):
        bus.write_bytes(cmd_pa, pack_buffer(layout, **fields))
        status = fw.command(cmd, cmd_pa)
        if status != SevStatus.SUCCESS:
            raise GuestExit(f"AMD-SP {C(cmd).name} failed: {SevStatus(status).name}")
        return unpack_buffer(layout, bus.read_bytes(cmd_pa, 128))

    if fw.state == SevState.UNINIT:
        call(C.INIT, "init")
    pdh, chain = a, a + 0x1000
    call(C.PDH_CERT_EXPORT, "pdh_cert_export", pdh_cert_address=pdh, pdh_cert_len=0x824,
         cert_chain_address=chain, cert_chain_len=3 * 0x824)
    godh, session = owner.start(bus.read_bytes(pdh, 0x824))
    bus.write_bytes(a, godh)
    bus.write_bytes(a + 0x1000, session)
    handle = call(C.LAUNCH_START, "launch_start", policy=owner.policy, dh_cert_address=a,
                  dh_cert_len=len(godh), session_address=a + 0x1000,
                  session_len=len(session))["handle"]
    plain = []
    for gpa, length in regions:
        length = (length + 15) & ~15
        plain.append(bus.read_bytes(GUEST_BASE + gpa, length))
        call(C.LAUNCH_UPDATE_DATA, "update", handle=handle, address=GUEST_BASE + gpa, len=length)
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
    return SevLaunch(handle, vmm.asid, blob, verified, list(regions))
