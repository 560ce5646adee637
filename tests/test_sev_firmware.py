"""The SEV firmware API of the simulated AMD-SP, driven through command() with
parameter buffers in a bytearray-backed memory, as a VMM drives the real one."""
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from svmsim.sev import crypto as sc
from svmsim.sev.crypto import GuestOwner, SevCert, Usage
from svmsim.sev.firmware import (COMMAND_STATES, SevCmd, SevFirmware, SevGuestState, SevMailbox,
                                 SevPolicy, SevState, SevStatus, pack_buffer, simulated_root,
                                 unpack_buffer)

C, S = SevCmd, SevStatus

# host-physical layout of the test memory
CMD = 0x1000            # command buffer
PDH = 0x2000            # a PDH certificate
CHAIN = 0x3000          # PEK || OCA || CEK (0x186C bytes)
AMD = 0x5000            # ASK || ARK
SESSION = 0x6200
HDR = 0x6300
MEAS = 0x6400
GODH = 0x6800
TRANS = 0x8000          # transport buffer, 8 KiB
HOSTBUF = 0xA000        # plaintext host buffer for DBG
IMAGE = 0x10000         # guest image, 8 KiB
SECRET_AT = IMAGE + 0x1808   # inside the image, not 16-byte aligned on purpose

CBIT = 1 << 47


class Mem:
    def __init__(self, size=1 << 20):
        self.buf = bytearray(size)

    def read_bytes(self, pa, n):
        return bytes(self.buf[pa:pa + n])

    def write_bytes(self, pa, data):
        self.buf[pa:pa + len(data)] = data

    def ram_offset(self, pa):
        return pa if pa < len(self.buf) else None


class FakeEngine:
    """AES-128-ECB with the block address XORed in: enough to tell keys and
    addresses apart (the real engine is svmsim/memory/encryption.py)."""

    def __init__(self, first=1, last=15):
        self.slots = {}
        self.seals = {}
        self.range = (first, last)
        self.log = []

    @staticmethod
    def _tweak(spa, n):
        assert spa % 16 == 0 and n % 16 == 0
        return b"".join(((spa >> 4) + i).to_bytes(16, "little") for i in range(n // 16))

    def encrypt(self, key, spa, data):
        x = bytes(a ^ b for a, b in zip(data, self._tweak(spa, len(data))))
        return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(x)

    def decrypt(self, key, spa, data):
        x = Cipher(algorithms.AES(key), modes.ECB()).decryptor().update(data)
        return bytes(a ^ b for a, b in zip(x, self._tweak(spa, len(data))))

    def load_key(self, asid, key):
        assert asid not in self.slots
        self.slots[asid] = key
        self.log.append(("load", asid))

    def unload_key(self, asid):
        self.slots.pop(asid)
        self.log.append(("unload", asid))

    def asid_range(self):
        return self.range

    # the memory controller's VMSA checksums (the real one: EncryptionEngine)
    def seal_vmsa(self, spa, plaintext):
        self.seals[spa] = bytes(plaintext)

    def vmsa_intact(self, spa, plaintext):
        return self.seals.get(spa) == bytes(plaintext)

    def unseal_vmsa(self, spa):
        self.seals.pop(spa, None)


class Host:
    """One simulated machine: memory, memory controller, AMD-SP."""

    def __init__(self, seed=b"chip A", fw_class=SevFirmware):
        self.mem, self.engine = Mem(), FakeEngine()
        self.fw = fw_class(self.mem, self.engine, chip_seed=seed)

    def run(self, cmd, layout=None, **fields):
        if layout:
            self.mem.write_bytes(CMD, pack_buffer(layout, **fields))
        st = self.fw.command(cmd, CMD)
        out = unpack_buffer(layout, self.mem.read_bytes(CMD, 128)) if layout else {}
        return st, out

    def ok(self, cmd, layout=None, **fields):
        st, out = self.run(cmd, layout, **fields)
        assert st == S.SUCCESS, SevStatus(st).name
        return out

    def export_pdh(self):
        self.ok(C.PDH_CERT_EXPORT, "pdh_cert_export", pdh_cert_address=PDH, pdh_cert_len=0x824,
                cert_chain_address=CHAIN, cert_chain_len=3 * 0x824)
        return self.mem.read_bytes(PDH, 0x824), self.mem.read_bytes(CHAIN, 3 * 0x824)

    def launch_plain(self, policy=0, handle=0):
        """LAUNCH_START without a guest owner (firmware-generated TEK/TIK)."""
        return self.ok(C.LAUNCH_START, "launch_start", handle=handle, policy=policy)["handle"]

    def put(self, pa, data):
        self.mem.write_bytes(pa, data)

    def get(self, pa, n):
        return self.mem.read_bytes(pa, n)


@pytest.fixture
def host():
    h = Host()
    h.ok(C.INIT, "init")
    return h


IMAGE_DATA = bytes((i * 7 + 3) & 0xFF for i in range(0x2000))
SECRET = b"disk-key: 00112233445566778899aabbccddeeff"  # 42 bytes, not a block multiple


# -- the whole launch ---------------------------------------------------------------------
def test_full_launch_with_guest_owner(host):
    pdh, chain = host.export_pdh()
    pek, oca, cek = (SevCert.unpack(chain[i * 0x824:(i + 1) * 0x824]) for i in range(3))
    _, ark, _, ask = simulated_root()
    pdh_cert = SevCert.unpack(pdh)
    assert pdh_cert.verify_signed_by(pek) and pek.verify_signed_by(oca) and pek.verify_signed_by(cek)
    assert cek.verify_signed_by(ask) and ask.verify_signed_by(ark) and ark.verify_signed_by(ark)

    owner = GuestOwner(policy=SevPolicy.NOKS)
    godh, session = owner.start(pdh)
    host.put(GODH, godh)
    host.put(SESSION, session)
    out = host.ok(C.LAUNCH_START, "launch_start", policy=owner.policy, dh_cert_address=GODH,
                  dh_cert_len=len(godh), session_address=SESSION | CBIT, session_len=len(session))
    handle = out["handle"]
    assert handle != 0
    assert host.fw.state == SevState.WORKING

    host.put(IMAGE, IMAGE_DATA)
    host.ok(C.LAUNCH_UPDATE_DATA, "update", handle=handle, address=IMAGE | CBIT, len=0x1000)
    host.ok(C.LAUNCH_UPDATE_DATA, "update", handle=handle, address=IMAGE + 0x1000, len=0x1000)
    assert host.get(IMAGE, 0x2000) != IMAGE_DATA                       # encrypted in place

    # LAUNCH_MEASURE: a length query first, as KVM does
    st, out = host.run(C.LAUNCH_MEASURE, "update", handle=handle, address=0, len=0)
    assert st == S.INVALID_LENGTH and out["len"] == 48
    host.ok(C.LAUNCH_MEASURE, "update", handle=handle, address=MEAS, len=48)
    blob = host.get(MEAS, 48)
    api = host.fw.api_version
    assert api == (0, 24, 1)
    digest = sc.launch_digest(IMAGE_DATA[:0x1000], IMAGE_DATA[0x1000:])
    assert not owner.verify_measurement(blob, *api, sc.launch_digest(b"evil" + IMAGE_DATA[4:]))
    assert owner.verify_measurement(blob, *api, digest)

    # LAUNCH_SECRET: a forged MAC is refused, the real packet lands encrypted
    hdr, trans = owner.secret_packet(SECRET)
    host.put(TRANS, trans)
    host.put(HDR, hdr[:20] + bytes(32))
    fields = dict(handle=handle, hdr_address=HDR, hdr_len=len(hdr), guest_address=SECRET_AT,
                  guest_len=len(SECRET), trans_address=TRANS, trans_len=len(trans))
    assert host.run(C.LAUNCH_SECRET, "packet", **fields)[0] == S.BAD_MEASUREMENT
    host.put(HDR, hdr)
    host.ok(C.LAUNCH_SECRET, "packet", **fields)
    assert SECRET not in host.mem.buf

    host.ok(C.LAUNCH_FINISH, "handle", handle=handle)
    assert host.engine.slots == {}
    host.ok(C.ACTIVATE, "activate", handle=handle, asid=5)
    assert set(host.engine.slots) == {5}
    key = host.engine.slots[5]

    # guest memory: ciphertext in DRAM that the loaded key decrypts to the plaintext
    want = bytearray(IMAGE_DATA)
    want[SECRET_AT - IMAGE:SECRET_AT - IMAGE + len(SECRET)] = SECRET  # neighbours kept
    assert host.engine.decrypt(key, IMAGE, host.get(IMAGE, 0x2000)) == want

    st = host.ok(C.GUEST_STATUS, "guest_status", handle=handle)
    assert (st["policy"], st["asid"], st["state"]) == (SevPolicy.NOKS, 5, SevGuestState.RUNNING)


def test_measurement_vector_through_the_api():
    """sev-facts.md's measurement vector, produced by LAUNCH_MEASURE itself:
    a firmware reporting API 0.18 build 15, TIK 66320db7..., LD = SHA-256("")."""
    class Fw018(SevFirmware):
        API_MAJOR, API_MINOR, BUILD = 0, 0x12, 0x0F
    host = Host(fw_class=Fw018)
    host.ok(C.INIT, "init")
    pdh, _ = host.export_pdh()
    owner = GuestOwner(0, tek=bytes(16), tik=bytes.fromhex("66320db73158a35a255d051758e95ed4"))
    godh, session = owner.start(pdh)
    host.put(GODH, godh)
    host.put(SESSION, session)
    handle = host.ok(C.LAUNCH_START, "launch_start", policy=0, dh_cert_address=GODH,
                     dh_cert_len=0x824, session_address=SESSION, session_len=0x80)["handle"]
    host.fw.rng = lambda n: bytes.fromhex("4fbe0bedbad6c86ae8f68971d103e554")[:n]
    host.ok(C.LAUNCH_MEASURE, "update", handle=handle, address=MEAS, len=48)
    assert host.get(MEAS, 32).hex() == "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea"


def test_launch_start_session_checks(host):
    pdh, _ = host.export_pdh()
    owner = GuestOwner(policy=0)
    godh, session = owner.start(pdh)
    host.put(GODH, godh)
    base = dict(policy=0, dh_cert_address=GODH, dh_cert_len=0x824,
                session_address=SESSION, session_len=0x80)
    bad = bytearray(session)
    bad[64] ^= 1                                                       # wrap_mac
    host.put(SESSION, bytes(bad))
    assert host.run(C.LAUNCH_START, "launch_start", **base)[0] == S.BAD_MEASUREMENT
    host.put(SESSION, session)
    assert host.run(C.LAUNCH_START, "launch_start", **{**base, "policy": 1})[0] == S.POLICY_FAILURE
    assert host.run(C.LAUNCH_START, "launch_start", **{**base, "session_len": 0x7F})[0] == S.INVALID_LENGTH
    assert host.run(C.LAUNCH_START, "launch_start", **{**base, "dh_cert_len": 0x100})[0] == S.INVALID_LENGTH
    host.put(GODH, bytes(0x824))
    assert host.run(C.LAUNCH_START, "launch_start", **base)[0] == S.INVALID_CERTIFICATE
    assert host.fw.guests == {} and host.fw.state == SevState.INIT
    # a policy that asks for a newer API than the firmware's 0.24
    assert host.run(C.LAUNCH_START, "launch_start", policy=25 << 24)[0] == S.POLICY_FAILURE
    assert host.run(C.LAUNCH_START, "launch_start", policy=24 << 24)[0] == S.SUCCESS
    # an ES guest on a platform initialised without SEV-ES
    assert host.run(C.LAUNCH_START, "launch_start", policy=SevPolicy.ES)[0] == S.POLICY_FAILURE


def test_update_data_alignment(host):
    h = host.launch_plain()
    st, _ = host.run(C.LAUNCH_UPDATE_DATA, "update", handle=h, address=IMAGE + 8, len=16)
    assert st == S.INVALID_ADDRESS
    assert host.run(C.LAUNCH_UPDATE_DATA, "update", handle=h, address=IMAGE, len=24)[0] == S.INVALID_LENGTH


def test_key_sharing_and_noks(host):
    a = host.launch_plain()
    b = host.launch_plain(handle=a)
    assert host.fw.guests[a].vek == host.fw.guests[b].vek
    host.ok(C.ACTIVATE, "activate", handle=a, asid=3)
    host.ok(C.ACTIVATE, "activate", handle=b, asid=3)                 # same key: may share
    c = host.launch_plain(policy=SevPolicy.NOKS)
    assert host.run(C.LAUNCH_START, "launch_start", handle=c)[0] == S.POLICY_FAILURE
    assert host.run(C.LAUNCH_START, "launch_start", handle=999)[0] == S.INVALID_GUEST


# -- ASIDs ----------------------------------------------------------------------------------
def test_activate_deactivate_df_flush(host):
    a, b = host.launch_plain(), host.launch_plain()
    assert host.run(C.ACTIVATE, "activate", handle=a, asid=0)[0] == S.INVALID_ASID
    assert host.run(C.ACTIVATE, "activate", handle=a, asid=16)[0] == S.INVALID_ASID
    host.ok(C.ACTIVATE, "activate", handle=a, asid=1)
    assert host.run(C.ACTIVATE, "activate", handle=a, asid=2)[0] == S.ACTIVE
    assert host.run(C.ACTIVATE, "activate", handle=b, asid=1)[0] == S.ASID_OWNED
    assert host.run(C.DECOMMISSION, "handle", handle=a)[0] == S.ACTIVE
    assert host.run(C.DEACTIVATE, "handle", handle=b)[0] == S.INACTIVE
    host.ok(C.DEACTIVATE, "handle", handle=a)
    assert host.engine.log == [("load", 1), ("unload", 1)]
    assert host.run(C.ACTIVATE, "activate", handle=b, asid=1)[0] == S.DF_FLUSH_REQUIRED
    host.ok(C.DF_FLUSH)
    host.ok(C.ACTIVATE, "activate", handle=b, asid=1)
    assert host.engine.slots[1] == host.fw.guests[b].vek
    host.ok(C.DECOMMISSION, "handle", handle=a)
    assert host.run(C.GUEST_STATUS, "guest_status", handle=a)[0] == S.INVALID_GUEST
    host.ok(C.DEACTIVATE, "handle", handle=b)
    host.ok(C.DECOMMISSION, "handle", handle=b)
    assert host.fw.state == SevState.INIT


def test_shutdown_clears_guests_and_key_slots(host):
    h = host.launch_plain()
    host.ok(C.ACTIVATE, "activate", handle=h, asid=7)
    host.ok(C.SHUTDOWN)
    assert host.fw.state == SevState.UNINIT and host.engine.slots == {} and host.fw.guests == {}
    host.ok(C.INIT, "init")
    assert host.run(C.GUEST_STATUS, "guest_status", handle=h)[0] == S.INVALID_GUEST


# -- debug ------------------------------------------------------------------------------------
def test_dbg_decrypt_encrypt_and_nodbg(host):
    h = host.launch_plain(policy=0)
    host.put(IMAGE, IMAGE_DATA[:0x100])
    host.ok(C.LAUNCH_UPDATE_DATA, "update", handle=h, address=IMAGE, len=0x100)
    host.ok(C.DBG_DECRYPT, "dbg", handle=h, src_addr=IMAGE, dst_addr=HOSTBUF, len=0x100)
    assert host.get(HOSTBUF, 0x100) == IMAGE_DATA[:0x100]
    host.put(HOSTBUF, b"P" * 32)
    host.ok(C.DBG_ENCRYPT, "dbg", handle=h, src_addr=HOSTBUF, dst_addr=IMAGE + 0x40, len=32)
    host.ok(C.DBG_DECRYPT, "dbg", handle=h, src_addr=IMAGE + 0x40, dst_addr=HOSTBUF + 0x100, len=32)
    assert host.get(HOSTBUF + 0x100, 32) == b"P" * 32
    assert host.get(IMAGE + 0x40, 32) != b"P" * 32
    st, _ = host.run(C.DBG_DECRYPT, "dbg", handle=h, src_addr=IMAGE + 1, dst_addr=HOSTBUF, len=16)
    assert st == S.INVALID_ADDRESS

    n = host.launch_plain(policy=SevPolicy.NODBG)
    host.put(IMAGE + 0x1000, b"S" * 0x100)
    host.ok(C.LAUNCH_UPDATE_DATA, "update", handle=n, address=IMAGE + 0x1000, len=0x100)
    host.put(HOSTBUF, bytes(0x100))
    for cmd in (C.DBG_DECRYPT, C.DBG_ENCRYPT):
        st, _ = host.run(cmd, "dbg", handle=n, src_addr=IMAGE + 0x1000, dst_addr=HOSTBUF, len=0x100)
        assert st == S.POLICY_FAILURE
    assert host.get(HOSTBUF, 0x100) == bytes(0x100)


# -- platform commands ----------------------------------------------------------------------
def test_platform_status_and_get_id():
    host = Host()
    st = host.ok(C.PLATFORM_STATUS, "status")
    assert (st["api_major"], st["api_minor"], st["build"], st["state"]) == (0, 24, 1, SevState.UNINIT)
    st, out = host.run(C.GET_ID, "addr_len", address=HOSTBUF, len=64)
    assert st == S.INVALID_LENGTH and out["len"] == 128
    host.ok(C.GET_ID, "addr_len", address=HOSTBUF, len=128)
    assert host.get(HOSTBUF, 64) == host.fw.chip_id != Host(seed=b"chip B").fw.chip_id
    assert host.get(HOSTBUF, 64) == Host().fw.chip_id                  # fixed per chip seed
    tmr = 0x100000
    host.mem = host.fw.mem = Mem(4 << 20)
    assert host.run(C.INIT, "init", flags=1, tmr_address=0)[0] == S.INVALID_ADDRESS
    host.ok(C.INIT, "init", flags=1, tmr_address=tmr, tmr_len=tmr)
    h = host.launch_plain()
    st = host.ok(C.PLATFORM_STATUS, "status")
    assert (st["state"], st["guest_count"], st["flags"]) == (SevState.WORKING, 1, 0x100)
    assert host.fw.guests[h].state == SevGuestState.LUPDATE


def test_pek_csr_import_and_ownership(host):
    st, out = host.run(C.PEK_CSR, "addr_len", address=HOSTBUF, len=0)
    assert st == S.INVALID_LENGTH and out["len"] == 0x824
    host.ok(C.PEK_CSR, "addr_len", address=HOSTBUF, len=0x824)
    csr = SevCert.unpack(host.get(HOSTBUF, 0x824))
    assert csr.usage == Usage.PEK and csr.sigs == []
    oca_key = sc.private_key_from_seed(b"owner", "oca")
    oca = SevCert(Usage.OCA, sc.Algo.ECDSA_SHA256, oca_key.public_key())
    oca.sign_with(Usage.OCA, oca_key)
    host.put(0x30000, oca.pack())
    imp = dict(pek_cert_address=HOSTBUF, pek_cert_len=0x824, oca_cert_address=0x30000, oca_cert_len=0x824)
    assert host.run(C.PEK_CERT_IMPORT, "pek_cert_import", **imp)[0] == S.BAD_SIGNATURE  # unsigned CSR
    csr.sign_with(Usage.OCA, oca_key)
    host.put(HOSTBUF, csr.pack())
    host.ok(C.PEK_CERT_IMPORT, "pek_cert_import", **imp)
    assert host.ok(C.PLATFORM_STATUS, "status")["flags"] & 1
    assert host.run(C.PEK_CERT_IMPORT, "pek_cert_import", **imp)[0] == S.ALREADY_OWNED
    pdh, chain = host.export_pdh()
    pek, oca2, cek = (SevCert.unpack(chain[i * 0x824:(i + 1) * 0x824]) for i in range(3))
    assert oca2.same_key(oca) and pek.verify_signed_by(oca) and pek.verify_signed_by(cek)
    assert SevCert.unpack(pdh).verify_signed_by(pek)
    host.ok(C.PEK_GEN)
    assert not host.ok(C.PLATFORM_STATUS, "status")["flags"] & 1
    _, chain = host.export_pdh()
    assert not SevCert.unpack(chain[:0x824]).same_key(pek)


def test_pek_import_of_a_foreign_key_is_refused(host):
    other = sc.private_key_from_seed(b"x", "pek")
    oca_key = sc.private_key_from_seed(b"owner", "oca")
    oca = SevCert(Usage.OCA, sc.Algo.ECDSA_SHA256, oca_key.public_key())
    oca.sign_with(Usage.OCA, oca_key)
    pek = SevCert(Usage.PEK, sc.Algo.ECDSA_SHA256, other.public_key())
    pek.sign_with(Usage.OCA, oca_key)
    host.put(HOSTBUF, pek.pack())
    host.put(0x30000, oca.pack())
    st, _ = host.run(C.PEK_CERT_IMPORT, "pek_cert_import", pek_cert_address=HOSTBUF, pek_cert_len=0x824,
                     oca_cert_address=0x30000, oca_cert_len=0x824)
    assert st == S.INVALID_CERTIFICATE


def test_pdh_gen_and_export_lengths(host):
    st, out = host.run(C.PDH_CERT_EXPORT, "pdh_cert_export")
    assert st == S.INVALID_LENGTH and (out["pdh_cert_len"], out["cert_chain_len"]) == (0x824, 0x186C)
    pdh1, _ = host.export_pdh()
    host.ok(C.PDH_GEN)
    pdh2, chain = host.export_pdh()
    assert pdh1 != pdh2 and SevCert.unpack(pdh2).verify_signed_by(SevCert.unpack(chain[:0x824]))


def test_platform_reset(host):
    _, chain1 = host.export_pdh()
    assert host.run(C.PLATFORM_RESET)[0] == S.INVALID_PLATFORM_STATE
    host.ok(C.SHUTDOWN)
    host.ok(C.PLATFORM_RESET)
    host.ok(C.INIT, "init")
    _, chain2 = host.export_pdh()
    assert chain1[:0x824] != chain2[:0x824] and chain1[-0x824:] == chain2[-0x824:]   # CEK stays


# -- every command in every wrong state --------------------------------------------------------
def _guests_in_every_state():
    """One firmware (WORKING) holding a guest in each guest state, plus a peer."""
    a, b = Host(b"chip A"), Host(b"chip B")
    a.ok(C.INIT, "init")
    b.ok(C.INIT, "init")
    g = {}
    g[SevGuestState.LUPDATE] = a.launch_plain()
    g[SevGuestState.LSECRET] = a.launch_plain()
    a.ok(C.LAUNCH_MEASURE, "update", handle=g[SevGuestState.LSECRET], address=MEAS, len=48)
    for st in (SevGuestState.RUNNING, SevGuestState.SUPDATE, SevGuestState.SENT):
        h = g[st] = a.launch_plain()
        a.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
        a.ok(C.LAUNCH_FINISH, "handle", handle=h)
    bpdh, bchain = b.export_pdh()
    for st in (SevGuestState.SUPDATE, SevGuestState.SENT):
        a.put(PDH, bpdh)
        a.put(CHAIN, bchain)
        a.ok(C.SEND_START, "send_start", handle=g[st], pdh_cert_address=PDH, pdh_cert_len=0x824,
             plat_certs_address=CHAIN, plat_certs_len=0x186C, session_address=SESSION, session_len=0x80)
    a.ok(C.SEND_FINISH, "handle", handle=g[SevGuestState.SENT])
    session = a.get(SESSION, 0x80)
    apdh, _ = a.export_pdh()
    b.put(PDH, apdh)
    b.put(SESSION, session)
    g[SevGuestState.RUPDATE] = b.ok(C.RECEIVE_START, "receive_start", policy=0, pdh_cert_address=PDH,
                                    pdh_cert_len=0x824, session_address=SESSION, session_len=0x80)["handle"]
    for st, h in g.items():
        fw = b.fw if st == SevGuestState.RUPDATE else a.fw
        assert fw.guests[h].state == st
    return a, b, g


def test_every_guest_command_in_every_wrong_guest_state():
    a, b, g = _guests_in_every_state()
    checked = 0
    for cmd, (_, gstates) in COMMAND_STATES.items():
        if gstates is None:
            continue
        for st, h in g.items():
            if st in gstates:
                continue
            host = b if st == SevGuestState.RUPDATE else a
            host.put(CMD, h.to_bytes(4, "little") + bytes(124))
            assert host.fw.command(cmd, CMD) == S.INVALID_GUEST_STATE, (cmd.name, st.name)
            assert host.fw.guests[h].state == st
            checked += 1
        a.put(CMD, (0xDEAD).to_bytes(4, "little") + bytes(124))
        assert a.fw.command(cmd, CMD) == S.INVALID_GUEST, cmd.name
    assert checked >= 60


def test_every_command_in_every_wrong_platform_state():
    hosts = {SevState.UNINIT: Host()}
    hosts[SevState.INIT] = Host()
    hosts[SevState.INIT].ok(C.INIT, "init")
    hosts[SevState.WORKING] = Host()
    hosts[SevState.WORKING].ok(C.INIT, "init")
    hosts[SevState.WORKING].launch_plain()
    checked = 0
    for cmd, (pstates, _) in COMMAND_STATES.items():
        for st, host in hosts.items():
            if st in pstates:
                continue
            host.put(CMD, (1).to_bytes(4, "little") + bytes(124))
            assert host.fw.command(cmd, CMD) == S.INVALID_PLATFORM_STATE, (cmd.name, st.name)
            assert host.fw.state == st
            checked += 1
    assert checked >= 30
    for bad in (0x36, 0x0E, 0x81, 0xFFFF):
        assert hosts[SevState.INIT].fw.command(bad, CMD) == S.INVALID_COMMAND


def test_documented_platform_state_table():
    ok = {st: {c for c, (p, _) in COMMAND_STATES.items() if st in p and _ is None} for st in SevState}
    assert ok[SevState.UNINIT] == {C.INIT, C.INIT_EX, C.PLATFORM_RESET, C.PLATFORM_STATUS,
                                   C.DOWNLOAD_FIRMWARE, C.GET_ID}
    assert ok[SevState.INIT] == {C.SHUTDOWN, C.PLATFORM_STATUS, C.PEK_GEN, C.PEK_CSR, C.PEK_CERT_IMPORT,
                                 C.PDH_GEN, C.PDH_CERT_EXPORT, C.DF_FLUSH, C.GET_ID,
                                 C.LAUNCH_START, C.RECEIVE_START}
    assert ok[SevState.WORKING] == ok[SevState.INIT] - {C.PEK_GEN, C.PEK_CSR, C.PEK_CERT_IMPORT}


# -- migration -----------------------------------------------------------------------------------
def test_migration_round_trip():
    src, dst = Host(b"chip A"), Host(b"chip B")
    src.ok(C.INIT, "init")
    dst.ok(C.INIT, "init")
    h = src.launch_plain(policy=SevPolicy.NODBG | SevPolicy.SEV)
    src.put(IMAGE, IMAGE_DATA)
    src.ok(C.LAUNCH_UPDATE_DATA, "update", handle=h, address=IMAGE, len=0x2000)
    src.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
    src.ok(C.LAUNCH_FINISH, "handle", handle=h)
    src.ok(C.ACTIVATE, "activate", handle=h, asid=2)

    # the destination's certificates travel to the source
    dpdh, dchain = dst.export_pdh()
    src.put(PDH, dpdh)
    src.put(CHAIN, dchain)
    src.put(AMD, src.fw.amd_cert_chain())
    start = dict(handle=h, pdh_cert_address=PDH, pdh_cert_len=0x824, plat_certs_address=CHAIN,
                 plat_certs_len=0x186C, amd_certs_address=AMD, amd_certs_len=2 * 0x824,
                 session_address=SESSION)
    st, out = src.run(C.SEND_START, "send_start", **start, session_len=0)
    assert st == S.INVALID_LENGTH and out["session_len"] == 0x80
    bad_chain = bytearray(dchain)
    bad_chain[0x20] ^= 1                                               # the PEK's key
    src.put(CHAIN, bytes(bad_chain))
    assert src.run(C.SEND_START, "send_start", **start, session_len=0x80)[0] in (
        S.BAD_SIGNATURE, S.INVALID_CERTIFICATE)
    src.put(CHAIN, dchain)
    out = src.ok(C.SEND_START, "send_start", **start, session_len=0x80)
    assert out["policy"] == SevPolicy.NODBG | SevPolicy.SEV
    session = src.get(SESSION, 0x80)

    packets = []
    pkt = dict(handle=h, hdr_address=HDR, guest_address=IMAGE, guest_len=0x1000, trans_address=TRANS)
    st, out = src.run(C.SEND_UPDATE_DATA, "packet", **pkt, hdr_len=0, trans_len=0)
    assert st == S.INVALID_LENGTH and (out["hdr_len"], out["trans_len"]) == (0x34, 0x1000)
    for off in (0, 0x1000):
        src.ok(C.SEND_UPDATE_DATA, "packet", **{**pkt, "guest_address": IMAGE + off},
               hdr_len=0x34, trans_len=0x1000)
        packets.append((src.get(HDR, 0x34), src.get(TRANS, 0x1000)))
        assert IMAGE_DATA[off:off + 0x1000] != packets[-1][1]        # not plaintext on the wire
    src.ok(C.SEND_FINISH, "handle", handle=h)
    assert src.fw.guests[h].state == SevGuestState.SENT
    assert src.run(C.ACTIVATE, "activate", handle=h, asid=3)[0] == S.INVALID_GUEST_STATE

    # the source's PDH and the session travel to the destination
    spdh, _ = src.export_pdh()
    dst.put(PDH, spdh)
    dst.put(SESSION, session)
    recv = dict(pdh_cert_address=PDH, pdh_cert_len=0x824, session_address=SESSION, session_len=0x80)
    assert dst.run(C.RECEIVE_START, "receive_start", policy=0, **recv)[0] == S.POLICY_FAILURE
    d = dst.ok(C.RECEIVE_START, "receive_start", policy=SevPolicy.NODBG | SevPolicy.SEV, **recv)["handle"]
    dest_at = 0x40000
    for i, (hdr, trans) in enumerate(packets):
        dst.put(HDR, hdr)
        dst.put(TRANS, bytes([trans[0] ^ 1]) + trans[1:])
        fields = dict(handle=d, hdr_address=HDR, hdr_len=0x34, guest_address=dest_at + i * 0x1000,
                      guest_len=0x1000, trans_address=TRANS, trans_len=0x1000)
        assert dst.run(C.RECEIVE_UPDATE_DATA, "packet", **fields)[0] == S.BAD_MEASUREMENT
        dst.put(TRANS, trans)
        dst.ok(C.RECEIVE_UPDATE_DATA, "packet", **fields)
    dst.ok(C.RECEIVE_FINISH, "handle", handle=d)
    dst.ok(C.ACTIVATE, "activate", handle=d, asid=9)
    key = dst.engine.slots[9]
    assert key != src.engine.slots[2]                                  # a new VEK on the new machine
    assert dst.engine.decrypt(key, dest_at, dst.get(dest_at, 0x2000)) == IMAGE_DATA
    assert dst.get(dest_at, 0x2000) != IMAGE_DATA
    assert dst.run(C.DBG_DECRYPT, "dbg", handle=d, src_addr=dest_at, dst_addr=HOSTBUF, len=16)[0] == \
        S.POLICY_FAILURE


def test_send_refused_under_nosend_and_cancel(host):
    peer = Host(b"chip B")
    peer.ok(C.INIT, "init")
    pdh, chain = peer.export_pdh()
    host.put(PDH, pdh)
    host.put(CHAIN, chain)
    start = dict(pdh_cert_address=PDH, pdh_cert_len=0x824, plat_certs_address=CHAIN,
                 plat_certs_len=0x186C, session_address=SESSION, session_len=0x80)
    for policy, want in ((SevPolicy.NOSEND, S.POLICY_FAILURE), (SevPolicy.SEV, S.POLICY_FAILURE),
                         (SevPolicy.DOMAIN, S.POLICY_FAILURE), (0, S.SUCCESS)):
        h = host.launch_plain(policy=policy)
        host.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
        host.ok(C.LAUNCH_FINISH, "handle", handle=h)
        assert host.run(C.SEND_START, "send_start", handle=h, **start)[0] == want, policy
    host.ok(C.SEND_CANCEL, "handle", handle=h)
    assert host.fw.guests[h].state == SevGuestState.RUNNING


def test_no_command_output_contains_a_key(host):
    owner = GuestOwner(0)
    pdh, _ = host.export_pdh()
    godh, session = owner.start(pdh)
    host.put(GODH, godh)
    host.put(SESSION, session)
    h = host.ok(C.LAUNCH_START, "launch_start", dh_cert_address=GODH, dh_cert_len=0x824,
                session_address=SESSION, session_len=0x80)["handle"]
    host.ok(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)
    host.ok(C.GUEST_STATUS, "guest_status", handle=h)
    host.ok(C.PLATFORM_STATUS, "status")
    g = host.fw.guests[h]
    for secret in (g.vek, owner.tek, owner.tik):
        assert secret not in host.mem.buf


# -- the mailbox ----------------------------------------------------------------------------------
def test_mailbox_register_protocol():
    host = Host()
    irqs = []
    mb = SevMailbox(host.fw, irq=lambda: irqs.append(1))
    assert (mb.CMDRESP, mb.CMDBUFF_ADDR_LO, mb.CMDBUFF_ADDR_HI) == (0x10980, 0x109E0, 0x109E4)
    assert mb.mmio_read(0x109FC, 4) & 1                                # FEATURE: SEV
    host.mem.write_bytes(CMD, bytes(12))
    mb.mmio_write(mb.CMDBUFF_ADDR_LO, 4, CMD)
    mb.mmio_write(mb.CMDBUFF_ADDR_HI, 4, 0)
    mb.mmio_write(mb.INTEN, 4, 0xFFFFFFFF)
    mb.mmio_write(mb.CMDRESP, 4, (C.PLATFORM_STATUS << 16) | 1)
    resp = mb.mmio_read(mb.CMDRESP, 4)
    assert resp & (1 << 31) and resp & 0xFFFF == S.SUCCESS
    assert unpack_buffer("status", host.mem.read_bytes(CMD, 12))["api_minor"] == 24
    assert mb.mmio_read(mb.INTSTS, 4) & 2 and irqs == [1]
    mb.mmio_write(mb.INTSTS, 4, 2)                                     # write 1 to clear
    assert mb.mmio_read(mb.INTSTS, 4) == 0

    # an error status, no interrupt without IOC, the buffer address as one 8-byte write
    mb.mmio_write(mb.CMDBUFF_ADDR_LO, 8, CMD | CBIT)
    assert mb.mmio_read(mb.CMDBUFF_ADDR_HI, 4) == CBIT >> 32
    host.mem.write_bytes(CMD, pack_buffer("launch_start"))
    mb.mmio_write(mb.CMDRESP, 4, C.LAUNCH_START << 16)
    assert mb.mmio_read(mb.CMDRESP, 4) == (1 << 31) | S.INVALID_PLATFORM_STATE
    assert mb.mmio_read(mb.CMDRESP + 2, 2) == 0x8000
    assert irqs == [1] and mb.mmio_read(mb.INTSTS, 4) == 0
    mb.mmio_write(mb.CMDRESP, 4, (C.INIT << 16) | 1)                   # buffer pa carries the C-bit
    assert mb.mmio_read(mb.CMDRESP, 4) & 0xFFFF == S.SUCCESS and host.fw.state == SevState.INIT
    assert mb.last_command == (C.INIT, CMD | CBIT, 0)


def test_mailbox_naples_layout():
    mb = SevMailbox(Host().fw, layout="v1")
    assert (mb.CMDRESP, mb.CMDBUFF_ADDR_LO, mb.CMDBUFF_ADDR_HI) == (0x10580, 0x105E0, 0x105E4)


def test_with_the_machines_engine_and_physbus():
    """The same launch against svmsim's memory controller engine and PhysBus."""
    from svmsim.memory.bus import PhysBus
    from svmsim.memory.encryption import EncryptionEngine
    bus, engine = PhysBus(4 << 20), EncryptionEngine(15)
    fw = SevFirmware(bus, engine)
    mb = SevMailbox(fw)
    bus.add_mmio(0xFE000000, SevMailbox.MMIO_SIZE, mb, "psp")

    def run(cmd, layout, **fields):
        bus.write_bytes(CMD, pack_buffer(layout, **fields))
        bus.write(0xFE000000 + mb.CMDBUFF_ADDR_LO, 4, CMD)
        bus.write(0xFE000000 + mb.CMDBUFF_ADDR_HI, 4, 0)
        bus.write(0xFE000000 + mb.CMDRESP, 4, cmd << 16 | 1)
        resp = bus.read(0xFE000000 + mb.CMDRESP, 4)
        assert resp >> 31
        return resp & 0xFFFF, unpack_buffer(layout, bus.read_bytes(CMD, 64))

    assert run(C.INIT, "init")[0] == S.SUCCESS
    st, out = run(C.LAUNCH_START, "launch_start", policy=SevPolicy.NODBG)
    h = out["handle"]
    bus.write_bytes(IMAGE, IMAGE_DATA)
    assert run(C.LAUNCH_UPDATE_DATA, "update", handle=h, address=IMAGE | CBIT, len=0x2000)[0] == 0
    assert run(C.LAUNCH_MEASURE, "update", handle=h, address=MEAS, len=48)[0] == 0
    assert run(C.LAUNCH_FINISH, "handle", handle=h)[0] == 0
    assert run(C.ACTIVATE, "activate", handle=h, asid=4)[0] == 0
    assert engine.key_loaded(4)
    assert bus.read_bytes(IMAGE, 0x2000) != IMAGE_DATA
    assert engine.read(bus.read_bytes, IMAGE, 0x2000, 4) == IMAGE_DATA


def test_machine_amd_sp_mailbox_from_the_bus():
    """The machine's AMD-SP answers PLATFORM_STATUS through its mailbox registers
    at Machine.AMD_SP_MMIO, driven with plain bus writes as x86 code would."""
    from svmsim.machine import Machine
    m = Machine(mem_size="16M")
    base, reg = m.AMD_SP_MMIO, SevMailbox.LAYOUTS["v2"]
    buf = 0x80000
    m.bus.write(base + reg["CMDBUFF_ADDR_LO"], 4, buf)
    m.bus.write(base + reg["CMDBUFF_ADDR_HI"], 4, 0)
    m.bus.write(base + reg["CMDRESP"], 4, int(SevCmd.PLATFORM_STATUS) << 16)
    resp = m.bus.read(base + reg["CMDRESP"], 4)
    assert resp >> 31 and resp & 0xFFFF == SevStatus.SUCCESS
    assert m.bus.read(buf + 2, 1) == SevState.UNINIT
