"""A VMSA the AMD-SP launched, run by the CPU (issue 9, items 4 and 6 with the
processor's SEV-ES world switch): VMRUN accepts the page LAUNCH_UPDATE_VMSA
sealed and runs the encrypted firmware from its reset vector; a VMSA whose
ciphertext the hypervisor changed is refused (APM vol 2, 15.35.8); and a
running SEV-ES guest migrates to another machine with its VMSA
(SEND/RECEIVE_UPDATE_VMSA) and carries on there from where it stopped."""
from svmsim.cpu import msr
from svmsim.machine import Machine
from svmsim.sev.api import PAGE_SIZE, SevCmd as C
from svmsim.sev.crypto import CERT_LEN, PACKET_HEADER_LEN
from svmsim.svm.vmsa import VmsaView
from svmsim.vmm import Vmm
from svmsim.vmm.firmware_launch import FirmwareLauncher
from svmsim.vmm.ovmf import OvmfImage
from svmsim.vmm.psp import SEV_DATA, Psp

from test_sev_launch_ovmf import make_image

SYSCFG, HWCR = 0xC0010010, 0xC0010015
# At the reset vector FFFF_FFF0h, in real mode: mov ax, 1234h; hlt; hlt; jmp $
RESET_CODE = bytes.fromhex("b83412f4f4ebfe") + bytes(9)
HDR, TRANS, CERTS = SEV_DATA, SEV_DATA + 0x1000, SEV_DATA + 0x2000


def _image():
    return OvmfImage.parse(make_image()[:-16] + RESET_CODE)


def _run_es(vmm, handle, psp, vmsa_spa):
    """ACTIVATE on the VMM's ASID (an SEV-ES ASID, below CPUID 8000_001F EDX),
    memory encryption and SmmLock on, the VMCB pointing at the VMSA; VMRUN
    until the guest's next exit."""
    psp.call(C.ACTIVATE, "activate", handle=handle, asid=vmm.asid)
    cpu, v = vmm.cpu, vmm.vmcb
    msr.wrmsr(cpu, SYSCFG, msr.rdmsr(cpu, SYSCFG) | 1 << 23)       # MemEncryptionModEn
    cpu.msr[HWCR] = cpu.msr.get(HWCR, 0) | 1                          # SmmLock
    v["SEV_ENABLE"] = v["SEV_ES_ENABLE"] = v["LBR_VIRTUALIZATION_ENABLE"] = 1
    v["VMSA_PA"] = vmsa_spa
    return vmm.run(max_exits=4)


def _guest_vmsa(vmm, spa):
    """The VMSA as the guest's key slot decrypts it (what the CPU loads)."""
    m = vmm.m
    return VmsaView(bytearray(m.mem_engine.read(m.bus.read_bytes, spa, PAGE_SIZE, vmm.asid)))


def _launched():
    launcher = FirmwareLauncher(Vmm(Machine(mem_size="128M")), _image(), "seves", 1)
    launcher.run()
    launcher.finish()
    return launcher


def test_the_launched_vmsa_runs_the_encrypted_image():
    """The BSP's VMSA starts the guest at FFFF_FFF0h in the encrypted image;
    HLT is an automatic exit after which "HW advances RIP" (table 15-33).
    The hypervisor sees ciphertext where the guest's registers are."""
    launcher = _launched()
    r, vmm = launcher.result, launcher.vmm
    result = _run_es(vmm, r.handle, launcher.psp, r.vmsa_spas[0])
    assert result.exits == {"HLT": 1}, result.reason
    vmsa = _guest_vmsa(vmm, r.vmsa_spas[0])
    assert (vmsa["RIP"], vmsa["RAX"] & 0xFFFF, vmsa.segment("CS")[3]) == (0xFFF4, 0x1234, 0xFFFF0000)
    raw = VmsaView(bytearray(vmm.m.bus.read_bytes(r.vmsa_spas[0], PAGE_SIZE)))
    assert raw["RIP"] != 0xFFF4 and raw["RAX"] & 0xFFFF != 0x1234


def test_a_vmsa_changed_by_the_hypervisor_is_refused_by_vmrun():
    launcher = _launched()
    r, vmm = launcher.result, launcher.vmm
    bus = vmm.m.bus
    bus.write_bytes(r.vmsa_spas[0] + 0x178, bytes([bus.read_bytes(r.vmsa_spas[0] + 0x178, 1)[0] ^ 1]))
    result = _run_es(vmm, r.handle, launcher.psp, r.vmsa_spas[0])
    assert result.exits == {"INVALID": 1} and "SEV_ES_VMSA_INTEGRITY" in result.reason


def test_a_running_es_guest_migrates_with_its_vmsa():
    """Source: the guest runs to its first HLT; SEND_START towards the
    destination's PDH, SEND_UPDATE_DATA for each image page, SEND_UPDATE_VMSA
    for the VMSA the CPU sealed at #VMEXIT, SEND_FINISH.  Destination:
    RECEIVE_START with the source's PDH and session, RECEIVE_UPDATE_DATA,
    RECEIVE_UPDATE_VMSA, RECEIVE_FINISH; its VMRUN resumes the guest after
    the first HLT (RAX still 1234h) and stops at the second."""
    src = _launched()
    r = src.result
    assert _run_es(src.vmm, r.handle, src.psp, r.vmsa_spas[0]).exits == {"HLT": 1}

    dst_vmm = Vmm(Machine(mem_size="128M"))
    dst = Psp(dst_vmm.m)
    dst.init_platform()
    stream = _send(src.psp, r.handle, dst, r.image_spa, src.image.size, r.vmsa_spas[0])

    image_spa, vmsa_spa = r.image_spa, r.vmsa_spas[0]          # the destination VMM's own layout
    dst_vmm.map_region(r.image_gpa, image_spa, src.image.size)
    handle = _receive(dst, r.policy, stream, image_spa, vmsa_spa)
    result = _run_es(dst_vmm, handle, dst, vmsa_spa)
    assert result.exits == {"HLT": 1}, result.reason
    vmsa = _guest_vmsa(dst_vmm, vmsa_spa)
    assert (vmsa["RIP"], vmsa["RAX"] & 0xFFFF) == (0xFFF5, 0x1234)
    assert dst_vmm.m.bus.read_bytes(image_spa, 64) != src.image.data[:64]    # ciphertext there too


def _send(psp, handle, dst, image_spa, size, vmsa_spa):
    """Everything the source's AMD-SP produces for the destination."""
    bus, dbus = psp.bus, dst.bus
    dst.call(C.PDH_CERT_EXPORT, "pdh_cert_export", pdh_cert_address=CERTS, pdh_cert_len=CERT_LEN,
             cert_chain_address=CERTS + CERT_LEN, cert_chain_len=3 * CERT_LEN)
    bus.write_bytes(CERTS, dbus.read_bytes(CERTS, 4 * CERT_LEN))
    bus.write_bytes(CERTS + 4 * CERT_LEN, psp.firmware.amd_cert_chain())
    psp.call(C.SEND_START, "send_start", handle=handle, pdh_cert_address=CERTS,
             pdh_cert_len=CERT_LEN, plat_certs_address=CERTS + CERT_LEN,
             plat_certs_len=3 * CERT_LEN, amd_certs_address=CERTS + 4 * CERT_LEN,
             amd_certs_len=2 * CERT_LEN, session_address=HDR, session_len=0x80)
    session = bus.read_bytes(HDR, 0x80)

    def packet(cmd, spa):
        psp.call(cmd, "packet", handle=handle, hdr_address=HDR, hdr_len=PACKET_HEADER_LEN,
                 guest_address=spa, guest_len=PAGE_SIZE, trans_address=TRANS, trans_len=PAGE_SIZE)
        return bus.read_bytes(HDR, PACKET_HEADER_LEN), bus.read_bytes(TRANS, PAGE_SIZE)

    pages = [packet(C.SEND_UPDATE_DATA, image_spa + off) for off in range(0, size, PAGE_SIZE)]
    vmsa = packet(C.SEND_UPDATE_VMSA, vmsa_spa)
    psp.call(C.SEND_FINISH, "handle", handle=handle)
    psp.call(C.PDH_CERT_EXPORT, "pdh_cert_export", pdh_cert_address=CERTS, pdh_cert_len=CERT_LEN,
             cert_chain_address=CERTS + CERT_LEN, cert_chain_len=3 * CERT_LEN)
    return {"pdh": bus.read_bytes(CERTS, CERT_LEN), "session": session, "pages": pages, "vmsa": vmsa}


def _receive(psp, policy, stream, image_spa, vmsa_spa):
    bus = psp.bus
    bus.write_bytes(CERTS, stream["pdh"])
    bus.write_bytes(HDR, stream["session"])
    handle = psp.call(C.RECEIVE_START, "receive_start", policy=policy, pdh_cert_address=CERTS,
                      pdh_cert_len=CERT_LEN, session_address=HDR, session_len=0x80)["handle"]

    def packet(cmd, pkt, spa):
        bus.write_bytes(HDR, pkt[0])
        bus.write_bytes(TRANS, pkt[1])
        psp.call(cmd, "packet", handle=handle, hdr_address=HDR, hdr_len=PACKET_HEADER_LEN,
                 guest_address=spa, guest_len=PAGE_SIZE, trans_address=TRANS, trans_len=PAGE_SIZE)

    for i, pkt in enumerate(stream["pages"]):
        packet(C.RECEIVE_UPDATE_DATA, pkt, image_spa + i * PAGE_SIZE)
    packet(C.RECEIVE_UPDATE_VMSA, stream["vmsa"], vmsa_spa)
    psp.call(C.RECEIVE_FINISH, "handle", handle=handle)
    return handle
