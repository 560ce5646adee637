"""SEV-ES in the simulated AMD-SP (issue 9, item 4): the ES policy bit and
INIT's SEV-ES configuration, LAUNCH_UPDATE_VMSA, SEND_ and RECEIVE_UPDATE_VMSA,
and the status of every wrong state and bad parameter -- through the Python
API (``SevFirmware.command``) and through the PSP mailbox registers."""
import pytest

from svmsim.sev import crypto as sc
from svmsim.sev.api import SEV_STATUS_FLAGS_CONFIG_ES, TMR_SIZE
from svmsim.sev.crypto import GuestOwner
from svmsim.sev.firmware import (SevCmd, SevFirmware, SevGuestState, SevMailbox, SevPolicy,
                                 SevState, SevStatus, pack_buffer, unpack_buffer)
from svmsim.vmm.vcpu_reset import reset_vmsa

from test_sev_firmware import (AMD, CBIT, CHAIN, CMD, GODH, HDR, IMAGE, IMAGE_DATA, MEAS, PDH,
                               SESSION, TRANS, Host, Mem)

C, S = SevCmd, SevStatus
ES = SevPolicy.ES
TMR = 0x100000                 # 1 MiB, 1 MiB aligned
VMSA = 0x30000                 # two VMSA pages
VMSA2 = VMSA + 0x1000
BSP_VMSA = reset_vmsa(0xFFFFFFF0, 0x800F12)
AP_VMSA = reset_vmsa(0x80B004, 0x800F12)


class EsHost(Host):
    """A host whose platform was INITed with SEV-ES, as Linux's ccp driver
    does when the CPU has SEV-ES (sev-dev.c: SEV_INIT_FLAGS_SEV_ES + TMR)."""

    def __init__(self, seed=b"chip A"):
        super().__init__(seed)
        self.mem = self.fw.mem = Mem(4 << 20)
        self.ok(C.INIT, "init", flags=1, tmr_address=TMR, tmr_len=TMR_SIZE)

    def vmsa_launch(self, policy=ES, owner=None):
        """LAUNCH_START, the image, both VMSAs; returns the handle."""
        if owner is None:
            h = self.launch_plain(policy=policy)
        else:
            pdh, _ = self.export_pdh()
            godh, session = owner.start(pdh)
            self.put(GODH, godh)
            self.put(SESSION, session)
            h = self.ok(C.LAUNCH_START, "launch_start", policy=policy, dh_cert_address=GODH,
                        dh_cert_len=0x824, session_address=SESSION, session_len=0x80)["handle"]
        self.put(IMAGE, IMAGE_DATA)
        self.ok(C.LAUNCH_UPDATE_DATA, "update", handle=h, address=IMAGE, len=len(IMAGE_DATA))
        self.put(VMSA, BSP_VMSA)
        self.put(VMSA2, AP_VMSA)
        self.ok(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=VMSA | CBIT, len=0x1000)
        self.ok(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=VMSA2, len=0x1000)
        return h

    def plain(self, h, spa, n=0x1000):
        """What the guest (its key) sees at ``spa``."""
        return self.engine.decrypt(self.fw.guests[h].vek, spa, self.get(spa, n))


@pytest.fixture
def es():
    return EsHost()


# -- platform: INIT's SEV-ES flag and its TMR ----------------------------------------------
@pytest.mark.parametrize("cmd,layout", [(C.INIT, "init"), (C.INIT_EX, "init_ex")])
def test_init_with_sev_es_needs_a_trusted_memory_region(cmd, layout):
    """Linux passes SEV_INIT_FLAGS_SEV_ES with a 1 MiB, 1 MiB-aligned TMR
    (drivers/crypto/ccp/sev-dev.c); without the flag the TMR is ignored."""
    host = Host()
    host.mem = host.fw.mem = Mem(4 << 20)
    extra = {"length": 0x24} if layout == "init_ex" else {}
    for tmr, length, want in ((0, TMR_SIZE, S.INVALID_ADDRESS), (TMR + 0x1000, TMR_SIZE, S.INVALID_ADDRESS),
                              (TMR, TMR_SIZE - 0x1000, S.INVALID_LENGTH)):
        st, _ = host.run(cmd, layout, flags=1, tmr_address=tmr, tmr_len=length, **extra)
        assert st == want and host.fw.state == SevState.UNINIT
    host.ok(cmd, layout, flags=1, tmr_address=TMR, tmr_len=TMR_SIZE, **extra)
    assert host.ok(C.PLATFORM_STATUS, "status")["flags"] & SEV_STATUS_FLAGS_CONFIG_ES
    host.ok(C.SHUTDOWN)
    host.ok(cmd, layout, flags=0, tmr_address=0, tmr_len=0, **extra)
    assert not host.ok(C.PLATFORM_STATUS, "status")["flags"] & SEV_STATUS_FLAGS_CONFIG_ES


def test_es_policy_needs_an_es_platform():
    """An ES guest on a platform INITed without SEV-ES is refused at
    LAUNCH_START and RECEIVE_START alike (POLICY_FAILURE)."""
    host = Host()
    host.ok(C.INIT, "init")
    assert host.run(C.LAUNCH_START, "launch_start", policy=ES)[0] == S.POLICY_FAILURE
    peer = EsHost(b"chip B")
    pdh, _ = peer.export_pdh()
    host.put(PDH, pdh)
    st, _ = host.run(C.RECEIVE_START, "receive_start", policy=ES, pdh_cert_address=PDH,
                     pdh_cert_len=0x824, session_address=SESSION, session_len=0x80)
    assert st == S.POLICY_FAILURE and host.fw.guests == {}


# -- LAUNCH_UPDATE_VMSA -----------------------------------------------------------------------
def test_launch_update_vmsa_encrypts_measures_and_seals(es):
    """The page is encrypted in place with the VEK, its plaintext extends the
    launch digest after the data, and the memory controller holds its
    checksum (what VMRUN verifies, APM 15.35.8); the guest owner's check of
    MEASURE passes only with the VMSAs in the expected digest."""
    owner = GuestOwner(ES | SevPolicy.NODBG)
    h = es.vmsa_launch(ES | SevPolicy.NODBG, owner)
    for spa, page in ((VMSA, BSP_VMSA), (VMSA2, AP_VMSA)):
        assert es.get(spa, 0x1000) != page                       # the hypervisor reads ciphertext
        assert es.plain(h, spa) == page                           # the guest's key gives the page
        assert es.engine.vmsa_intact(spa, page)
        assert not es.engine.vmsa_intact(spa, page[:-1] + b"\x01")
    out = es.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
    assert out["len"] == 48
    blob, api = es.get(MEAS, 48), es.fw.api_version
    assert owner.verify_measurement(blob, *api, sc.launch_digest(IMAGE_DATA, BSP_VMSA, AP_VMSA))
    assert not owner.verify_measurement(blob, *api, sc.launch_digest(IMAGE_DATA))
    assert not owner.verify_measurement(blob, *api, sc.launch_digest(IMAGE_DATA, AP_VMSA, BSP_VMSA))


def test_launch_update_vmsa_parameters(es):
    """One whole page-aligned 4 KiB page (KVM: address = __sme_pa(vmsa), len =
    PAGE_SIZE); the C-bit in the address is accepted and stripped."""
    h = es.launch_plain(policy=ES)
    es.put(VMSA, BSP_VMSA)
    for address, length, want in ((VMSA + 0x10, 0x1000, S.INVALID_ADDRESS),
                                  (VMSA + 0x800, 0x1000, S.INVALID_ADDRESS),
                                  (VMSA, 0, S.INVALID_LENGTH), (VMSA, 0x670, S.INVALID_LENGTH),
                                  (VMSA, 0x2000, S.INVALID_LENGTH)):
        assert es.run(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=address, len=length)[0] == want
    assert es.get(VMSA, 0x1000) == BSP_VMSA and not es.engine.seals      # nothing touched
    assert es.fw.guests[h].digest.digest() == sc.launch_digest()


def test_vmsa_commands_need_the_es_policy(es):
    """A guest without the ES policy bit has no VMSA to launch, send or
    receive: POLICY_FAILURE (svmsim's choice, docs/DESIGN.md)."""
    h = es.launch_plain(policy=0)
    es.put(VMSA, BSP_VMSA)
    assert es.run(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=VMSA, len=0x1000)[0] == S.POLICY_FAILURE
    assert es.get(VMSA, 0x1000) == BSP_VMSA
    a, b, src, dst = _started_migration(policy=0)
    st, _ = a.run(C.SEND_UPDATE_VMSA, "packet", handle=src, hdr_address=HDR, hdr_len=0x34,
                  guest_address=VMSA, guest_len=0x1000, trans_address=TRANS, trans_len=0x1000)
    assert st == S.POLICY_FAILURE
    st, _ = b.run(C.RECEIVE_UPDATE_VMSA, "packet", handle=dst, hdr_address=HDR, hdr_len=0x34,
                  guest_address=VMSA, guest_len=0x1000, trans_address=TRANS, trans_len=0x1000)
    assert st == S.POLICY_FAILURE


def test_vmsa_commands_in_wrong_guest_states(es):
    """LAUNCH_UPDATE_VMSA only in LUPDATE (not after LAUNCH_MEASURE), SEND_
    only in SUPDATE, RECEIVE_ only in RUPDATE: INVALID_GUEST_STATE, and the
    guest's state and memory stay as they were; an unknown handle is
    INVALID_GUEST."""
    h = es.vmsa_launch()
    es.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
    es.put(0x40000, BSP_VMSA)
    update = dict(handle=h, address=0x40000, len=0x1000)
    assert es.run(C.LAUNCH_UPDATE_VMSA, "update", **update)[0] == S.INVALID_GUEST_STATE
    assert es.get(0x40000, 0x1000) == BSP_VMSA
    packet = dict(handle=h, hdr_address=HDR, hdr_len=0x34, guest_address=VMSA, guest_len=0x1000,
                  trans_address=TRANS, trans_len=0x1000)
    for state_cmd in (C.SEND_UPDATE_VMSA, C.RECEIVE_UPDATE_VMSA):
        assert es.run(state_cmd, "packet", **packet)[0] == S.INVALID_GUEST_STATE
    es.ok(C.LAUNCH_FINISH, "handle", handle=h)
    for state_cmd in (C.SEND_UPDATE_VMSA, C.RECEIVE_UPDATE_VMSA):
        assert es.run(state_cmd, "packet", **packet)[0] == S.INVALID_GUEST_STATE
    assert es.run(C.LAUNCH_UPDATE_VMSA, "update", **update)[0] == S.INVALID_GUEST_STATE
    assert es.fw.guests[h].state == SevGuestState.RUNNING
    assert es.run(C.LAUNCH_UPDATE_VMSA, "update", **{**update, "handle": h + 7})[0] == S.INVALID_GUEST
    shut = EsHost()
    shut.ok(C.SHUTDOWN)
    assert shut.run(C.LAUNCH_UPDATE_VMSA, "update", **update)[0] == S.INVALID_PLATFORM_STATE


def test_decommission_and_shutdown_forget_the_vmsa_checksums(es):
    h = es.vmsa_launch()
    assert len(es.engine.seals) == 2
    es.ok(C.DECOMMISSION, "handle", handle=h)
    assert es.engine.seals == {}
    es.vmsa_launch()
    es.ok(C.SHUTDOWN)
    assert es.engine.seals == {}


# -- migration: SEND_UPDATE_VMSA / RECEIVE_UPDATE_VMSA -------------------------------------
def _started_migration(policy=ES):
    """Source guest launched and RUNNING, SEND_START done towards a
    destination that has done RECEIVE_START: (src host, dst host, handles)."""
    a, b = EsHost(b"chip A"), EsHost(b"chip B")
    if policy & ES:
        h = a.vmsa_launch(policy)
    else:
        h = a.launch_plain(policy=policy)
    a.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
    a.ok(C.LAUNCH_FINISH, "handle", handle=h)
    a.ok(C.ACTIVATE, "activate", handle=h, asid=1)
    bpdh, bchain = b.export_pdh()
    a.put(PDH, bpdh)
    a.put(CHAIN, bchain)
    a.put(AMD, a.fw.amd_cert_chain())
    a.ok(C.SEND_START, "send_start", handle=h, pdh_cert_address=PDH, pdh_cert_len=0x824,
         plat_certs_address=CHAIN, plat_certs_len=3 * 0x824, amd_certs_address=AMD,
         amd_certs_len=2 * 0x824, session_address=SESSION, session_len=0x80)
    apdh, _ = a.export_pdh()
    b.put(PDH, apdh)
    b.put(SESSION, a.get(SESSION, 0x80))
    d = b.ok(C.RECEIVE_START, "receive_start", policy=policy, pdh_cert_address=PDH,
             pdh_cert_len=0x824, session_address=SESSION, session_len=0x80)["handle"]
    return a, b, h, d


def _send_vmsa(a, h, spa):
    a.ok(C.SEND_UPDATE_VMSA, "packet", handle=h, hdr_address=HDR, hdr_len=0x34, guest_address=spa,
         guest_len=0x1000, trans_address=TRANS, trans_len=0x1000)
    return a.get(HDR, 0x34), a.get(TRANS, 0x1000)


def _receive_vmsa(b, d, packet, spa):
    b.put(HDR, packet[0])
    b.put(TRANS, packet[1])
    return b.run(C.RECEIVE_UPDATE_VMSA, "packet", handle=d, hdr_address=HDR, hdr_len=0x34,
                 guest_address=spa, guest_len=0x1000, trans_address=TRANS, trans_len=0x1000)[0]


def test_migration_of_the_vmsas():
    """SEND_UPDATE_VMSA sends each VMSA transport-encrypted under the session's
    TEK (never plaintext on the wire); RECEIVE_UPDATE_VMSA checks the packet's
    MAC, encrypts the page under the destination guest's new VEK and seals it
    there, so a VMRUN on the destination finds it intact."""
    a, b, h, d = _started_migration()
    st, out = a.run(C.SEND_UPDATE_VMSA, "packet", handle=h)          # KVM's length query
    assert st == S.INVALID_LENGTH and (out["hdr_len"], out["trans_len"]) == (0x34, 0x1000)
    st, out = a.run(C.SEND_UPDATE_DATA, "packet", handle=h)          # (and QEMU's for data)
    assert st == S.INVALID_LENGTH and out["hdr_len"] == 0x34
    packets = [_send_vmsa(a, h, spa) for spa in (VMSA, VMSA2)]
    for (hdr, trans), page in zip(packets, (BSP_VMSA, AP_VMSA)):
        assert page[:0x670] not in trans
    a.ok(C.SEND_FINISH, "handle", handle=h)
    dest = (0x50000, 0x51000)
    for packet, spa, page in zip(packets, dest, (BSP_VMSA, AP_VMSA)):
        assert _receive_vmsa(b, d, packet, spa | CBIT) == S.SUCCESS
        assert b.get(spa, 0x1000) != page and b.plain(d, spa) == page
        assert b.engine.vmsa_intact(spa, page)
    assert b.fw.guests[d].vek != a.fw.guests[h].vek
    b.ok(C.RECEIVE_FINISH, "handle", handle=d)
    assert b.fw.guests[d].state == SevGuestState.RUNNING


def test_received_vmsa_packets_are_authenticated():
    """A changed transport byte, a packet MAC'd by another session, or a data
    packet passed off as a VMSA: BAD_MEASUREMENT, and nothing is sealed."""
    a, b, h, d = _started_migration()
    hdr, trans = _send_vmsa(a, h, VMSA)
    a.put(IMAGE, IMAGE_DATA)
    a.ok(C.SEND_UPDATE_DATA, "packet", handle=h, hdr_address=HDR, hdr_len=0x34, guest_address=IMAGE,
         guest_len=0x1000, trans_address=TRANS, trans_len=0x1000)
    data_packet = (a.get(HDR, 0x34), a.get(TRANS, 0x1000))
    flipped = (hdr, bytes([trans[0] ^ 0x80]) + trans[1:])
    for packet in (flipped, data_packet):
        assert _receive_vmsa(b, d, packet, 0x50000) == S.BAD_MEASUREMENT
    assert b.engine.seals == {}
    st = b.run(C.RECEIVE_UPDATE_VMSA, "packet", handle=d, hdr_address=HDR, hdr_len=0x34,
               guest_address=0x50000, guest_len=0x800, trans_address=TRANS, trans_len=0x800)[0]
    assert st == S.INVALID_LENGTH
    assert _receive_vmsa(b, d, (hdr, trans), 0x50000) == S.SUCCESS


def test_send_update_vmsa_refuses_a_vmsa_the_hypervisor_changed():
    """Migration must not launder a VMSA whose ciphertext the hypervisor
    changed (its checksum no longer matches) or a page that was never a
    VMSA: SECURE_DATA_INVALID (svmsim's choice, docs/DESIGN.md)."""
    a, b, h, d = _started_migration()
    raw = bytearray(a.get(VMSA, 0x1000))
    raw[0x178] ^= 1                                                  # RIP's ciphertext block
    a.put(VMSA, bytes(raw))
    packet = dict(handle=h, hdr_address=HDR, hdr_len=0x34, guest_len=0x1000, trans_address=TRANS,
                  trans_len=0x1000)
    assert a.run(C.SEND_UPDATE_VMSA, "packet", **packet, guest_address=VMSA)[0] == S.SECURE_DATA_INVALID
    assert a.run(C.SEND_UPDATE_VMSA, "packet", **packet, guest_address=IMAGE)[0] == S.SECURE_DATA_INVALID
    assert a.run(C.SEND_UPDATE_VMSA, "packet", **packet, guest_address=VMSA2)[0] == S.SUCCESS


# -- through the PSP mailbox, with the machine's memory controller -----------------------------
def test_es_launch_through_the_mailbox_with_the_machines_engine():
    """INIT with SEV-ES, LAUNCH_START, LAUNCH_UPDATE_VMSA and LAUNCH_MEASURE
    issued as Linux's ccp driver issues them (buffer address in
    CMDBUFF_ADDR_LO/HI, command in CMDRESP), against svmsim's PhysBus and
    encryption engine: the page is ciphertext in DRAM, reads back as the VMSA
    through the guest's key slot, and the engine's checksum matches it."""
    from svmsim.memory.bus import PhysBus
    from svmsim.memory.encryption import EncryptionEngine
    bus, engine = PhysBus(4 << 20), EncryptionEngine(15)
    fw = SevFirmware(bus, engine)
    mb = SevMailbox(fw)
    base = 0xFE000000
    bus.add_mmio(base, SevMailbox.MMIO_SIZE, mb, "psp")

    def run(cmd, layout, **fields):
        bus.write_bytes(CMD, pack_buffer(layout, **fields))
        bus.write(base + mb.CMDBUFF_ADDR_LO, 4, CMD)
        bus.write(base + mb.CMDBUFF_ADDR_HI, 4, 0)
        bus.write(base + mb.CMDRESP, 4, cmd << 16)
        resp = bus.read(base + mb.CMDRESP, 4)
        assert resp >> 31
        return resp & 0xFFFF, unpack_buffer(layout, bus.read_bytes(CMD, 64))

    assert run(C.LAUNCH_START, "launch_start", policy=ES)[0] == S.INVALID_PLATFORM_STATE
    assert run(C.INIT, "init", flags=1, tmr_address=TMR, tmr_len=TMR_SIZE)[0] == S.SUCCESS
    st, out = run(C.LAUNCH_START, "launch_start", policy=ES)
    h = out["handle"]
    bus.write_bytes(VMSA, BSP_VMSA)
    assert run(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=VMSA + 8, len=0x1000)[0] == S.INVALID_ADDRESS
    assert run(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=VMSA | CBIT, len=0x1000)[0] == S.SUCCESS
    assert run(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)[0] == S.SUCCESS
    assert run(C.LAUNCH_UPDATE_VMSA, "update", handle=h, address=VMSA, len=0x1000)[0] == \
        S.INVALID_GUEST_STATE
    assert run(C.LAUNCH_FINISH, "handle", handle=h)[0] == S.SUCCESS
    assert run(C.ACTIVATE, "activate", handle=h, asid=2)[0] == S.SUCCESS
    assert bus.read_bytes(VMSA, 0x1000) != BSP_VMSA
    plain = engine.read(bus.read_bytes, VMSA, 0x1000, 2)
    assert plain == BSP_VMSA and engine.vmsa_intact(VMSA, plain)
    assert fw.guests[h].digest.digest() == sc.launch_digest(BSP_VMSA)
