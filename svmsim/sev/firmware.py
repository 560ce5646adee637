"""The AMD Secure Processor (AMD-SP/PSP) and its SEV firmware API: SEV and
SEV-ES (SEV-SNP comes later; seed S13, S15, S16; issue 5 item 4, issue 9
item 4).

``SevFirmware.command(cmd, buffer_pa)`` executes one SEV API command whose
parameter buffer (Linux ``struct sev_data_*``, include/linux/psp-sev.h) lies
in system-physical memory, reached through ``mem`` (``read_bytes(pa, n)``,
``write_bytes(pa, data)``, ``ram_offset(pa)``: the machine's PhysBus,
unencrypted), and returns the SEV status code.  Every address a command
names must be DRAM (INVALID_ADDRESS otherwise) and every data length at most
MAX_DATA_LEN (INVALID_LENGTH).  Guest memory is encrypted through ``engine``:

* ``encrypt(key, spa, data)`` / ``decrypt(key, spa, data)``: pure AES with a
  physical-address tweak, ``spa`` 16-byte aligned, length a multiple of 16;
* ``load_key(asid, key)`` / ``unload_key(asid)``: the memory controller's slots;
* ``asid_range() -> (first, last)``: the SEV ASIDs.

No command returns a key: TEK, TIK and each guest's memory-encryption key (VEK)
stay inside this object and the engine's slots.

Root of trust: NOT AMD's.  An ECDSA P-384 chain "svmsim ARK" -> "svmsim ASK"
-> CEK, all in the 0x824-byte SEV certificate format (AMD's real ARK/ASK are
RSA-4096 certificates in AMD's own format); ARK and ASK are derived from a
fixed public seed (so every simulated machine chains to the same ARK and two
svmsim machines can migrate guests), the CEK from the chip seed.  Anyone can
recompute these private keys: they prove nothing outside the simulator.

Deliberate simplifications (each a documented deviation):
* Addresses given to the firmware may carry the C-bit (Linux passes
  ``__psp_pa``/``__sme_page_pa`` addresses); it is stripped, and host buffers
  are then read without decryption.
* LAUNCH_UPDATE_DATA, LAUNCH_SECRET, DBG_* and the migration data commands do
  not require the guest to be ACTIVATEd first (the engine's transform is pure),
  so a VMM may activate before or after the launch, as KVM does (just after
  LAUNCH_START).
* WBINVD before DF_FLUSH is not tracked (WBINVD_REQUIRED is never returned).
* No compression (packet flag COMPRESSED -> UNSUPPORTED), no DOWNLOAD_FIRMWARE
  (UNSUPPORTED), no ATTESTATION (INVALID_COMMAND).  SNP commands (81h and
  up) go to ``self.snp`` (sev/snp_firmware.py) on a chip with SEV-SNP.

SEV-ES (policy bit ES, platform config ES from INIT's SEV_INIT_FLAGS_SEV_ES
with its 1 MiB trusted memory region): a VMSA is one 4 KiB page.
LAUNCH_UPDATE_VMSA encrypts it in place with the VEK, extends the launch
digest with its plaintext and has the memory controller seal it (the
integrity checksum VMRUN verifies, APM vol 2, 15.35.8: ``engine.seal_vmsa``).
SEND_UPDATE_VMSA sends a sealed VMSA transport-encrypted as
SEND_UPDATE_DATA sends data (a VMSA whose checksum fails is refused);
RECEIVE_UPDATE_VMSA re-encrypts it under the receiver's VEK and seals it.
Where the public text gives no status code, svmsim's choices are: POLICY_FAILURE
for a VMSA command on a guest without the ES policy bit, SECURE_DATA_INVALID
for SEND_UPDATE_VMSA of a VMSA whose checksum fails (docs/DESIGN.md).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from . import crypto as sc
from .crypto import Algo, SevCert, Usage

from .api import (SevCmd, SevState, SevGuestState, SevStatus, SevPolicy, SEV_INIT_FLAGS_SEV_ES,
                  SEV_STATUS_FLAGS_OWNER, SEV_STATUS_FLAGS_CONFIG_ES, TMR_SIZE, GET_ID_LEN,
                  PAGE_SIZE, COMMAND_LAYOUTS, buffer_size, pack_buffer, unpack_buffer,
                  _field_offset)

#: The most guest data one command encrypts, decrypts or transports (svmsim's
#: bound, the size of an OVMF image; the SEV API gives none): every command
#: ends within about a second, so --timeout is never stuck inside an MMIO
#: write.  A VMM launches a larger image in several LAUNCH_UPDATE_DATA
#: commands, as KVM does for each physically contiguous run.
MAX_DATA_LEN = 4 << 20


class _Fail(Exception):
    def __init__(self, status: SevStatus):
        super().__init__(status.name)
        self.status = status


@dataclass
class _Guest:
    handle: int
    policy: int
    vek: bytes
    state: SevGuestState
    tek: bytes = b""
    tik: bytes = b""
    asid: int = 0
    digest: object = field(default_factory=hashlib.sha256)
    measure: bytes = b""
    vmsas: set = field(default_factory=set)     # SPAs of the VMSA pages sealed for it


# -- the simulated root of trust ------------------------------------------------------
SIMULATED_ROOT_SEED = b"svmsim simulated root of trust -- NOT AMD, keys are public"
_ROOT_CACHE: dict = {}


def simulated_root():
    """(ark_private, ark_cert, ask_private, ask_cert) of svmsim's (non-AMD) root."""
    if not _ROOT_CACHE:
        ark = sc.private_key_from_seed(SIMULATED_ROOT_SEED, "svmsim ARK")
        ask = sc.private_key_from_seed(SIMULATED_ROOT_SEED, "svmsim ASK")
        ark_cert = SevCert(Usage.ARK, Algo.ECDSA_SHA256, ark.public_key())
        ark_cert.sign_with(Usage.ARK, ark)
        ask_cert = SevCert(Usage.ASK, Algo.ECDSA_SHA256, ask.public_key())
        ask_cert.sign_with(Usage.ARK, ark)
        _ROOT_CACHE.update(ark=ark, ark_cert=ark_cert, ask=ask, ask_cert=ask_cert)
    r = _ROOT_CACHE
    return r["ark"], r["ark_cert"], r["ask"], r["ask_cert"]


# --------------------------------------------------------------------------------
class SevFirmware:
    """The SEV firmware running on the simulated AMD-SP."""

    API_MAJOR = 0
    API_MINOR = 24
    BUILD = 1

    def __init__(self, mem, engine, *, chip_seed: bytes = b"svmsim chip 0",
                 rng=os.urandom, cbit: int | None = 47):
        self.mem = mem
        self.engine = engine
        self.rng = rng
        self.addr_mask = ~(1 << cbit) if cbit is not None else ~0
        self.state = SevState.UNINIT
        self.config_es = False
        self.guests: dict[int, _Guest] = {}
        self._next_handle = 1
        self._asid_users: dict[int, set] = {}     # ASID -> handles bound to it
        self._asid_dirty: set = set()             # deactivated, DF_FLUSH not yet done
        # chip identity and its endorsement key
        self.chip_id = hashlib.sha512(b"svmsim chip id" + chip_seed).digest()
        self.chip_secret = hashlib.sha512(b"svmsim chip secret" + chip_seed).digest()   # never leaves
        self.snp = None                           # the SEV-SNP firmware (snp_firmware), if any
        _, _, ask, _ = simulated_root()
        self._cek = sc.private_key_from_seed(chip_seed, "svmsim CEK")
        self._cek_cert = SevCert(Usage.CEK, Algo.ECDSA_SHA256, self._cek.public_key(),
                                 self.API_MAJOR, self.API_MINOR)
        self._cek_cert.sign_with(Usage.ASK, ask)
        self._factory_reset()

    # -- public, key-free accessors -------------------------------------------------------
    @property
    def api_version(self) -> tuple[int, int, int]:
        return self.API_MAJOR, self.API_MINOR, self.BUILD

    def amd_cert_chain(self) -> bytes:
        """ASK || ARK (what AMD's key server would serve; here svmsim's own root)."""
        _, ark_cert, _, ask_cert = simulated_root()
        return ask_cert.pack() + ark_cert.pack()

    def cek_cert(self) -> bytes:
        return self._cek_cert.pack()

    # -- persistent platform keys -----------------------------------------------------
    def _new_key(self):
        return sc.generate_private_key(self.rng)

    def _factory_reset(self) -> None:
        """OCA (self-owned), PEK signed by OCA and CEK, PDH signed by PEK."""
        self._oca = self._new_key()
        self._oca_cert = SevCert(Usage.OCA, Algo.ECDSA_SHA256, self._oca.public_key(),
                                 self.API_MAJOR, self.API_MINOR)
        self._oca_cert.sign_with(Usage.OCA, self._oca)
        self.owner_external = False
        self._pek = self._new_key()
        self._pek_cert = SevCert(Usage.PEK, Algo.ECDSA_SHA256, self._pek.public_key(),
                                 self.API_MAJOR, self.API_MINOR)
        self._pek_cert.sign_with(Usage.OCA, self._oca)
        self._pek_cert.sign_with(Usage.CEK, self._cek)
        self._pdh_gen()

    def _pdh_gen(self) -> None:
        self._pdh = self._new_key()
        self._pdh_cert = SevCert(Usage.PDH, Algo.ECDH_SHA256, self._pdh.public_key(),
                                 self.API_MAJOR, self.API_MINOR)
        self._pdh_cert.sign_with(Usage.PEK, self._pek)

    # -- memory -------------------------------------------------------------------------
    def _rd(self, pa: int, n: int) -> bytes:
        return bytes(self.mem.read_bytes(self._in_ram(pa, n), n))

    def _wr(self, pa: int, data: bytes) -> None:
        self.mem.write_bytes(self._in_ram(pa, len(data)), bytes(data))

    def _in_ram(self, pa: int, n: int) -> int:
        """``pa`` without the C-bit, if ``n`` bytes from it are DRAM; else
        INVALID_ADDRESS.  The AMD-SP reaches only DRAM: never MMIO (its own
        mailbox included) or unbacked addresses (issue 13, finding 5)."""
        pa &= self.addr_mask
        if n > MAX_DATA_LEN + PAGE_SIZE:
            raise _Fail(SevStatus.INVALID_LENGTH)
        ram_offset = self.mem.ram_offset
        for page in range(pa & ~(PAGE_SIZE - 1), pa + max(n, 1), PAGE_SIZE):
            if ram_offset(max(page, pa)) is None:
                raise _Fail(SevStatus.INVALID_ADDRESS)
        return pa

    def _buf(self, pa: int, layout: str) -> dict:
        return unpack_buffer(layout, self._rd(pa, buffer_size(layout)))

    def _out(self, pa: int, layout: str, name: str, value: int) -> None:
        fmt, names = COMMAND_LAYOUTS[layout]
        code = fmt[1 + names.index(name)]
        self._wr(pa + _field_offset(layout, name), struct.pack("<" + code, value))

    def _guest_read(self, g: _Guest, spa: int, n: int) -> bytes:
        """Plaintext of guest memory at ``spa`` (any alignment)."""
        spa &= self.addr_mask
        first, last = spa & ~15, (spa + n + 15) & ~15
        plain = self.engine.decrypt(g.vek, first, self._rd(first, last - first))
        return plain[spa - first:spa - first + n]

    def _guest_write(self, g: _Guest, spa: int, data: bytes) -> None:
        """Write plaintext into guest memory encrypted with the VEK (read-modify-write
        of partial 16-byte blocks)."""
        spa &= self.addr_mask
        first, last = spa & ~15, (spa + len(data) + 15) & ~15
        if first == spa and last == spa + len(data):
            self._wr(first, self.engine.encrypt(g.vek, first, data))
            return
        plain = bytearray(self.engine.decrypt(g.vek, first, self._rd(first, last - first)))
        plain[spa - first:spa - first + len(data)] = data
        self._wr(first, self.engine.encrypt(g.vek, first, bytes(plain)))

    @staticmethod
    def _check_block_range(address: int, length: int) -> None:
        if address & 15:
            raise _Fail(SevStatus.INVALID_ADDRESS)
        if length == 0 or length & 15 or length > MAX_DATA_LEN:
            raise _Fail(SevStatus.INVALID_LENGTH)

    # -- SEV-ES VMSA pages ------------------------------------------------------------
    @staticmethod
    def _need_es(g: _Guest) -> None:
        if not g.policy & SevPolicy.ES:
            raise _Fail(SevStatus.POLICY_FAILURE)

    def _vmsa_page(self, address: int, length: int) -> int:
        """The SPA of a VMSA page given to a *_UPDATE_VMSA command: one whole,
        page-aligned 4 KiB page (the VMSA pointer names a page, APM 15.35.8)."""
        spa = address & self.addr_mask
        if spa & (PAGE_SIZE - 1):
            raise _Fail(SevStatus.INVALID_ADDRESS)
        if length != PAGE_SIZE:
            raise _Fail(SevStatus.INVALID_LENGTH)
        return spa

    def _seal(self, g: _Guest, spa: int, plain: bytes) -> None:
        self.engine.seal_vmsa(spa, plain)
        g.vmsas.add(spa)

    def _forget_vmsas(self, g: _Guest) -> None:
        for spa in g.vmsas:
            self.engine.unseal_vmsa(spa)
        g.vmsas.clear()

    def _read_cert(self, pa: int, length: int, usage: int | None) -> SevCert:
        if length < sc.CERT_LEN:
            raise _Fail(SevStatus.INVALID_LENGTH)
        try:
            cert = SevCert.unpack(self._rd(pa, sc.CERT_LEN))
        except sc.CertError:
            raise _Fail(SevStatus.INVALID_CERTIFICATE) from None
        if usage is not None and cert.usage != usage:
            raise _Fail(SevStatus.INVALID_CERTIFICATE)
        return cert

    # -- dispatch -------------------------------------------------------------------------
    def command(self, cmd: int, buffer_pa: int) -> int:
        """Execute one SEV command; returns its status (an int, a SevStatus value)."""
        if cmd not in _COMMANDS and cmd >= 0x81 and self.snp is not None:
            return self.snp.command(cmd, buffer_pa)
        return run_command(self, _COMMANDS, cmd, buffer_pa,
                           lambda: self.guests.get(struct.unpack("<I", self._rd(buffer_pa, 4))[0]))

    # -- platform commands --------------------------------------------------------------
    def _init(self, pa, layout="init"):
        p = self._buf(pa, layout)
        es = bool(p["flags"] & SEV_INIT_FLAGS_SEV_ES)
        if es:
            if p["tmr_address"] == 0 or p["tmr_address"] & (TMR_SIZE - 1):
                raise _Fail(SevStatus.INVALID_ADDRESS)
            if p["tmr_len"] < TMR_SIZE:
                raise _Fail(SevStatus.INVALID_LENGTH)
        self.config_es = es
        self.state = SevState.INIT
        return SevStatus.SUCCESS

    def _init_ex(self, pa):
        return self._init(pa, "init_ex")

    def _shutdown(self, pa):
        for g in list(self.guests.values()):
            self._unbind(g)
            self._forget_vmsas(g)
        self.guests.clear()
        self._asid_dirty.clear()
        self.state = SevState.UNINIT
        self.config_es = False
        return SevStatus.SUCCESS

    def _platform_reset(self, pa):
        self._factory_reset()
        return SevStatus.SUCCESS

    def _platform_status(self, pa):
        flags = (SEV_STATUS_FLAGS_OWNER if self.owner_external else 0) | \
                (SEV_STATUS_FLAGS_CONFIG_ES if self.config_es else 0)
        self._wr(pa, pack_buffer("status", api_major=self.API_MAJOR, api_minor=self.API_MINOR,
                                 state=self.state, flags=flags, build=self.BUILD,
                                 guest_count=len(self.guests)))
        return SevStatus.SUCCESS

    def _pek_gen(self, pa):
        self._factory_reset()
        return SevStatus.SUCCESS

    def _pek_csr(self, pa):
        p = self._buf(pa, "addr_len")
        self._out(pa, "addr_len", "len", sc.CERT_LEN)
        if p["len"] < sc.CERT_LEN:
            return SevStatus.INVALID_LENGTH
        csr = SevCert(Usage.PEK, Algo.ECDSA_SHA256, self._pek.public_key(),
                      self.API_MAJOR, self.API_MINOR)
        self._wr(p["address"], csr.pack())
        return SevStatus.SUCCESS

    def _pek_cert_import(self, pa):
        p = self._buf(pa, "pek_cert_import")
        if self.owner_external:
            return SevStatus.ALREADY_OWNED
        pek = self._read_cert(p["pek_cert_address"], p["pek_cert_len"], Usage.PEK)
        oca = self._read_cert(p["oca_cert_address"], p["oca_cert_len"], Usage.OCA)
        if not pek.same_key(self._pek_cert):
            return SevStatus.INVALID_CERTIFICATE
        if not oca.verify_signed_by(oca) or not pek.verify_signed_by(oca):
            return SevStatus.BAD_SIGNATURE
        pek.sigs = [s for s in pek.sigs if s[0] == Usage.OCA][:1]   # the owner's, then ours
        pek.sign_with(Usage.CEK, self._cek)
        self._pek_cert, self._oca_cert, self._oca = pek, oca, None
        self.owner_external = True
        return SevStatus.SUCCESS

    def _pdh_gen_cmd(self, pa):
        self._pdh_gen()
        return SevStatus.SUCCESS

    def _pdh_cert_export(self, pa):
        p = self._buf(pa, "pdh_cert_export")
        chain_len = 3 * sc.CERT_LEN
        self._out(pa, "pdh_cert_export", "pdh_cert_len", sc.CERT_LEN)
        self._out(pa, "pdh_cert_export", "cert_chain_len", chain_len)
        if p["pdh_cert_len"] < sc.CERT_LEN or p["cert_chain_len"] < chain_len:
            return SevStatus.INVALID_LENGTH
        self._wr(p["pdh_cert_address"], self._pdh_cert.pack())
        self._wr(p["cert_chain_address"],
                 self._pek_cert.pack() + self._oca_cert.pack() + self._cek_cert.pack())
        return SevStatus.SUCCESS

    def _df_flush(self, pa):
        self._asid_dirty.clear()
        return SevStatus.SUCCESS

    def _download_firmware(self, pa):
        return SevStatus.UNSUPPORTED

    def _get_id(self, pa):
        p = self._buf(pa, "addr_len")
        self._out(pa, "addr_len", "len", GET_ID_LEN)
        if p["len"] < GET_ID_LEN:
            return SevStatus.INVALID_LENGTH
        self._wr(p["address"], self.chip_id + bytes(64))
        return SevStatus.SUCCESS

    # -- guest management -------------------------------------------------------------
    def _new_handle(self) -> int:
        while self._next_handle in self.guests or self._next_handle == 0:
            self._next_handle = (self._next_handle + 1) & 0xFFFFFFFF
        h = self._next_handle
        self._next_handle = (h + 1) & 0xFFFFFFFF
        return h

    def _add_guest(self, g: _Guest) -> None:
        self.guests[g.handle] = g
        self.state = SevState.WORKING

    def _check_policy_version(self, policy: int) -> None:
        need = ((policy >> 16) & 0xFF, (policy >> 24) & 0xFF)
        if need > (self.API_MAJOR, self.API_MINOR):
            raise _Fail(SevStatus.POLICY_FAILURE)

    def _vek_for(self, handle: int, policy: int) -> bytes:
        """A fresh VEK, or the VEK of guest ``handle`` (key sharing)."""
        if handle == 0:
            return self.rng(16)
        other = self.guests.get(handle)
        if other is None:
            raise _Fail(SevStatus.INVALID_GUEST)
        if (other.policy | policy) & SevPolicy.NOKS:
            raise _Fail(SevStatus.POLICY_FAILURE)
        return other.vek

    def _unbind(self, g: _Guest) -> None:
        if not g.asid:
            return
        users = self._asid_users.get(g.asid, set())
        users.discard(g.handle)
        if not users:
            self._asid_users.pop(g.asid, None)
            self.engine.unload_key(g.asid)
            self._asid_dirty.add(g.asid)
        g.asid = 0

    def _activate(self, pa, g):
        p = self._buf(pa, "activate")
        asid = p["asid"]
        first, last = self.engine.asid_range()
        if not first <= asid <= last:
            return SevStatus.INVALID_ASID
        if g.asid:
            return SevStatus.ACTIVE
        users = self._asid_users.get(asid)
        if users and any(self.guests[h].vek != g.vek for h in users) \
                or self.snp is not None and asid in self.snp.asid_owner:
            return SevStatus.ASID_OWNED
        if asid in self._asid_dirty:
            return SevStatus.DF_FLUSH_REQUIRED
        if not users:
            self.engine.load_key(asid, g.vek)
        self._asid_users.setdefault(asid, set()).add(g.handle)
        g.asid = asid
        return SevStatus.SUCCESS

    def _deactivate(self, pa, g):
        if not g.asid:
            return SevStatus.INACTIVE
        self._unbind(g)
        return SevStatus.SUCCESS

    def _decommission(self, pa, g):
        if g.asid:
            return SevStatus.ACTIVE
        self._forget_vmsas(g)
        del self.guests[g.handle]
        if not self.guests:
            self.state = SevState.INIT
        return SevStatus.SUCCESS

    def _guest_status(self, pa, g):
        self._wr(pa, pack_buffer("guest_status", handle=g.handle, policy=g.policy,
                                 asid=g.asid, state=g.state))
        return SevStatus.SUCCESS

    # -- launch ---------------------------------------------------------------------------
    def _launch_start(self, pa):
        p = self._buf(pa, "launch_start")
        policy = p["policy"]
        self._check_policy_version(policy)
        if policy & SevPolicy.ES and not self.config_es:
            return SevStatus.POLICY_FAILURE
        vek = self._vek_for(p["handle"], policy)
        if p["dh_cert_address"] == 0:
            tek, tik = self.rng(16), self.rng(16)
        else:
            godh = self._read_cert(p["dh_cert_address"], p["dh_cert_len"], Usage.PDH)
            if p["session_len"] < sc.SESSION_LEN:
                return SevStatus.INVALID_LENGTH
            blob = sc.SessionBlob.unpack(self._rd(p["session_address"], sc.SESSION_LEN))
            z = sc.ecdh_shared_secret(self._pdh, godh.public_key)
            try:
                tek, tik = sc.open_session(z, blob, policy)
            except sc.SessionError as e:
                return (SevStatus.BAD_MEASUREMENT if e.field == "wrap_mac"
                        else SevStatus.POLICY_FAILURE)
        g = _Guest(self._new_handle(), policy, vek, SevGuestState.LUPDATE, tek, tik)
        self._add_guest(g)
        self._out(pa, "launch_start", "handle", g.handle)
        return SevStatus.SUCCESS

    def _launch_update_data(self, pa, g):
        p = self._buf(pa, "update")
        self._check_block_range(p["address"], p["len"])
        plain = self._rd(p["address"], p["len"])
        g.digest.update(plain)
        self._wr(p["address"], self.engine.encrypt(g.vek, p["address"] & self.addr_mask, plain))
        return SevStatus.SUCCESS

    def _launch_update_vmsa(self, pa, g):
        """Encrypt a vCPU's initial VMSA in place, measure its plaintext and
        seal it (KVM: __sev_launch_update_vmsa, after every UPDATE_DATA)."""
        self._need_es(g)
        p = self._buf(pa, "update")
        spa = self._vmsa_page(p["address"], p["len"])
        plain = self._rd(spa, PAGE_SIZE)
        g.digest.update(plain)
        self._wr(spa, self.engine.encrypt(g.vek, spa, plain))
        self._seal(g, spa, plain)
        return SevStatus.SUCCESS

    def _launch_measure(self, pa, g):
        p = self._buf(pa, "update")
        self._out(pa, "update", "len", sc.MEASURE_LEN)
        if p["len"] < sc.MEASURE_LEN:
            return SevStatus.INVALID_LENGTH
        mnonce = self.rng(16)
        g.measure = sc.launch_measurement(g.tik, self.API_MAJOR, self.API_MINOR, self.BUILD,
                                          g.policy, g.digest.digest(), mnonce)
        self._wr(p["address"], g.measure + mnonce)
        g.state = SevGuestState.LSECRET
        return SevStatus.SUCCESS

    def _read_packet(self, p: dict) -> tuple[sc.PacketHeader, bytes]:
        if p["hdr_len"] < sc.PACKET_HEADER_LEN:
            raise _Fail(SevStatus.INVALID_LENGTH)
        hdr = sc.PacketHeader.unpack(self._rd(p["hdr_address"], sc.PACKET_HEADER_LEN))
        if hdr.flags & sc.PACKET_FLAG_COMPRESSED:
            raise _Fail(SevStatus.UNSUPPORTED)
        if p["trans_len"] != p["guest_len"] or p["guest_len"] == 0 or p["guest_len"] > MAX_DATA_LEN:
            raise _Fail(SevStatus.INVALID_LENGTH)
        return hdr, self._rd(p["trans_address"], p["trans_len"])

    def _launch_secret(self, pa, g):
        p = self._buf(pa, "packet")
        hdr, trans = self._read_packet(p)
        measure = g.measure if sc.api_at_least((self.API_MAJOR, self.API_MINOR), 0, 17) else None
        mac = sc.secret_mac(g.tik, hdr.flags, hdr.iv, p["guest_len"], trans, measure)
        if not hmac.compare_digest(mac, hdr.mac):
            return SevStatus.BAD_MEASUREMENT
        self._guest_write(g, p["guest_address"], sc.aes128_ctr(g.tek, hdr.iv, trans))
        return SevStatus.SUCCESS

    def _launch_finish(self, pa, g):
        g.state = SevGuestState.RUNNING
        return SevStatus.SUCCESS

    # -- debug ----------------------------------------------------------------------------
    def _dbg(self, pa, g, decrypt: bool):
        if g.policy & SevPolicy.NODBG:
            return SevStatus.POLICY_FAILURE
        p = self._buf(pa, "dbg")
        self._check_block_range(p["src_addr"], p["len"])
        self._check_block_range(p["dst_addr"], p["len"])
        src, dst = p["src_addr"] & self.addr_mask, p["dst_addr"] & self.addr_mask
        data = self._rd(src, p["len"])
        if decrypt:
            self._wr(dst, self.engine.decrypt(g.vek, src, data))
        else:
            self._wr(dst, self.engine.encrypt(g.vek, dst, data))
        return SevStatus.SUCCESS

    def _dbg_decrypt(self, pa, g):
        return self._dbg(pa, g, True)

    def _dbg_encrypt(self, pa, g):
        return self._dbg(pa, g, False)

    # -- migration out ----------------------------------------------------------------------
    def _verify_target(self, p: dict, policy: int) -> SevCert:
        """The receiving platform's PDH, checked against its chain; raises _Fail."""
        pdh = self._read_cert(p["pdh_cert_address"], p["pdh_cert_len"], Usage.PDH)
        if p["plat_certs_len"] < 3 * sc.CERT_LEN:
            raise _Fail(SevStatus.INVALID_LENGTH)
        raw = self._rd(p["plat_certs_address"], 3 * sc.CERT_LEN)
        try:
            pek, oca, cek = (SevCert.unpack(raw[i * sc.CERT_LEN:(i + 1) * sc.CERT_LEN])
                             for i in range(3))
        except sc.CertError:
            raise _Fail(SevStatus.INVALID_CERTIFICATE) from None
        if (pek.usage, oca.usage, cek.usage) != (Usage.PEK, Usage.OCA, Usage.CEK):
            raise _Fail(SevStatus.INVALID_CERTIFICATE)
        if not (pdh.verify_signed_by(pek) and pek.verify_signed_by(oca)
                and pek.verify_signed_by(cek)):
            raise _Fail(SevStatus.BAD_SIGNATURE)
        if p["amd_certs_len"]:
            if p["amd_certs_len"] < 2 * sc.CERT_LEN:
                raise _Fail(SevStatus.INVALID_LENGTH)
            raw = self._rd(p["amd_certs_address"], 2 * sc.CERT_LEN)
            try:
                ask, ark = SevCert.unpack(raw[:sc.CERT_LEN]), SevCert.unpack(raw[sc.CERT_LEN:])
            except sc.CertError:
                raise _Fail(SevStatus.INVALID_CERTIFICATE) from None
            if not ark.same_key(simulated_root()[1]) or (ask.usage, ark.usage) != (Usage.ASK, Usage.ARK):
                raise _Fail(SevStatus.INVALID_CERTIFICATE)
            if not (cek.verify_signed_by(ask) and ask.verify_signed_by(ark)):
                raise _Fail(SevStatus.BAD_SIGNATURE)
        elif policy & SevPolicy.SEV:
            raise _Fail(SevStatus.POLICY_FAILURE)
        if policy & SevPolicy.DOMAIN and not oca.same_key(self._oca_cert):
            raise _Fail(SevStatus.POLICY_FAILURE)
        if ((policy >> 16) & 0xFF, (policy >> 24) & 0xFF) > (pdh.api_major, pdh.api_minor):
            raise _Fail(SevStatus.POLICY_FAILURE)
        return pdh

    def _send_start(self, pa, g):
        p = self._buf(pa, "send_start")
        if g.policy & SevPolicy.NOSEND:
            return SevStatus.POLICY_FAILURE
        if p["session_len"] < sc.SESSION_LEN:
            self._out(pa, "send_start", "session_len", sc.SESSION_LEN)
            return SevStatus.INVALID_LENGTH
        pdh = self._verify_target(p, g.policy)
        tek, tik = self.rng(16), self.rng(16)
        z = sc.ecdh_shared_secret(self._pdh, pdh.public_key)
        blob = sc.make_session(z, self.rng(16), self.rng(16), tek, tik, g.policy)
        self._wr(p["session_address"], blob.pack())
        self._out(pa, "send_start", "session_len", sc.SESSION_LEN)
        self._out(pa, "send_start", "policy", g.policy)
        g.tek, g.tik = tek, tik
        g.state = SevGuestState.SUPDATE
        return SevStatus.SUCCESS

    def _send_update_data(self, pa, g):
        p = self._buf(pa, "packet")
        self._check_packet_room(pa, p, p["guest_len"])
        self._check_block_range(p["guest_address"], p["guest_len"])
        self._send_packet(pa, p, g, self._guest_read(g, p["guest_address"], p["guest_len"]))
        return SevStatus.SUCCESS

    def _send_update_vmsa(self, pa, g):
        """A sealed VMSA, transport-encrypted for the receiving firmware.  A
        VMSA whose checksum no longer matches (the hypervisor changed its
        ciphertext) is not sent: migration must not launder it."""
        self._need_es(g)
        p = self._buf(pa, "packet")
        self._check_packet_room(pa, p, PAGE_SIZE)
        spa = self._vmsa_page(p["guest_address"], p["guest_len"])
        plain = self._guest_read(g, spa, PAGE_SIZE)
        if spa not in g.vmsas or not self.engine.vmsa_intact(spa, plain):
            return SevStatus.SECURE_DATA_INVALID
        self._send_packet(pa, p, g, plain, vmsa=True)
        return SevStatus.SUCCESS

    def _check_packet_room(self, pa, p: dict, trans_len: int) -> None:
        """Too small a header or transport buffer: report the lengths needed
        (how KVM queries them, with every other field 0) and fail."""
        if p["hdr_len"] < sc.PACKET_HEADER_LEN or p["trans_len"] < trans_len:
            self._out(pa, "packet", "hdr_len", sc.PACKET_HEADER_LEN)
            self._out(pa, "packet", "trans_len", trans_len)
            raise _Fail(SevStatus.INVALID_LENGTH)

    def _send_packet(self, pa, p: dict, g: _Guest, plain: bytes, vmsa: bool = False) -> None:
        iv = self.rng(16)
        trans = sc.aes128_ctr(g.tek, iv, plain)
        hdr = sc.PacketHeader(0, iv, sc.transport_mac(g.tik, 0, iv, trans, vmsa))
        self._wr(p["hdr_address"], hdr.pack())
        self._wr(p["trans_address"], trans)
        self._out(pa, "packet", "trans_len", len(trans))

    def _send_finish(self, pa, g):
        g.state = SevGuestState.SENT
        g.tek = g.tik = b""
        return SevStatus.SUCCESS

    def _send_cancel(self, pa, g):
        g.state = SevGuestState.RUNNING
        g.tek = g.tik = b""
        return SevStatus.SUCCESS

    # -- migration in ---------------------------------------------------------------------
    def _receive_start(self, pa):
        p = self._buf(pa, "receive_start")
        policy = p["policy"]
        self._check_policy_version(policy)
        if policy & SevPolicy.ES and not self.config_es:
            return SevStatus.POLICY_FAILURE
        vek = self._vek_for(p["handle"], policy)
        sender = self._read_cert(p["pdh_cert_address"], p["pdh_cert_len"], Usage.PDH)
        if p["session_len"] < sc.SESSION_LEN:
            return SevStatus.INVALID_LENGTH
        blob = sc.SessionBlob.unpack(self._rd(p["session_address"], sc.SESSION_LEN))
        try:
            tek, tik = sc.open_session(sc.ecdh_shared_secret(self._pdh, sender.public_key),
                                       blob, policy)
        except sc.SessionError as e:
            return SevStatus.BAD_MEASUREMENT if e.field == "wrap_mac" else SevStatus.POLICY_FAILURE
        g = _Guest(self._new_handle(), policy, vek, SevGuestState.RUPDATE, tek, tik)
        self._add_guest(g)
        self._out(pa, "receive_start", "handle", g.handle)
        return SevStatus.SUCCESS

    def _receive_update_data(self, pa, g):
        p = self._buf(pa, "packet")
        self._check_block_range(p["guest_address"], p["guest_len"])
        self._guest_write(g, p["guest_address"], self._open_packet(p, g))
        return SevStatus.SUCCESS

    def _receive_update_vmsa(self, pa, g):
        """A VMSA from the sending firmware, encrypted under this guest's VEK
        in place at ``guest_address`` and sealed there."""
        self._need_es(g)
        p = self._buf(pa, "packet")
        spa = self._vmsa_page(p["guest_address"], p["guest_len"])
        plain = self._open_packet(p, g, vmsa=True)
        self._wr(spa, self.engine.encrypt(g.vek, spa, plain))
        self._seal(g, spa, plain)
        return SevStatus.SUCCESS

    def _open_packet(self, p: dict, g: _Guest, vmsa: bool = False) -> bytes:
        """The plaintext of a migration packet whose MAC verifies."""
        hdr, trans = self._read_packet(p)
        if not hmac.compare_digest(sc.transport_mac(g.tik, hdr.flags, hdr.iv, trans, vmsa), hdr.mac):
            raise _Fail(SevStatus.BAD_MEASUREMENT)
        return sc.aes128_ctr(g.tek, hdr.iv, trans)

    def _receive_finish(self, pa, g):
        g.state = SevGuestState.RUNNING
        g.tek = g.tik = b""
        return SevStatus.SUCCESS


def run_command(fw, table, cmd, buffer_pa, find_guest) -> int:
    """Dispatch through a command table {id: (handler, platform states, guest
    states or None)}: the platform's state, then (for guest commands) the
    guest the buffer names (``find_guest()``) and its state, then the handler;
    a _Fail raised anywhere becomes its status.  Shared by the SNP firmware."""
    entry = table.get(cmd)
    if entry is None:
        return SevStatus.INVALID_COMMAND
    handler, platform_states, guest_states = entry
    if fw.state not in platform_states:
        return SevStatus.INVALID_PLATFORM_STATE
    try:
        if guest_states is None:
            return handler(fw, buffer_pa)
        g = find_guest()
        if g is None:
            return SevStatus.INVALID_GUEST
        if g.state not in guest_states:
            return SevStatus.INVALID_GUEST_STATE
        return handler(fw, buffer_pa, g)
    except _Fail as f:
        return f.status


# -- command table: id -> (handler, platform states, guest states or None) ----------------
_U, _I, _W = SevState.UNINIT, SevState.INIT, SevState.WORKING
_ANY_P = (_U, _I, _W)
_UP = (_I, _W)
_GS = SevGuestState
_LIVE = (_GS.LUPDATE, _GS.LSECRET, _GS.RUNNING, _GS.SUPDATE, _GS.RUPDATE)
_ALL_G = _LIVE + (_GS.SENT,)
F = SevFirmware
_COMMANDS = {
    SevCmd.INIT: (F._init, (_U,), None),
    SevCmd.INIT_EX: (F._init_ex, (_U,), None),
    SevCmd.SHUTDOWN: (F._shutdown, _UP, None),
    SevCmd.PLATFORM_RESET: (F._platform_reset, (_U,), None),
    SevCmd.PLATFORM_STATUS: (F._platform_status, _ANY_P, None),
    SevCmd.PEK_GEN: (F._pek_gen, (_I,), None),
    SevCmd.PEK_CSR: (F._pek_csr, (_I,), None),
    SevCmd.PEK_CERT_IMPORT: (F._pek_cert_import, (_I,), None),
    SevCmd.PDH_GEN: (F._pdh_gen_cmd, _UP, None),
    SevCmd.PDH_CERT_EXPORT: (F._pdh_cert_export, _UP, None),
    SevCmd.DF_FLUSH: (F._df_flush, _UP, None),
    SevCmd.DOWNLOAD_FIRMWARE: (F._download_firmware, (_U,), None),
    SevCmd.GET_ID: (F._get_id, _ANY_P, None),
    SevCmd.LAUNCH_START: (F._launch_start, _UP, None),
    SevCmd.RECEIVE_START: (F._receive_start, _UP, None),
    SevCmd.ACTIVATE: (F._activate, _UP, _LIVE),
    SevCmd.DEACTIVATE: (F._deactivate, _UP, _ALL_G),
    SevCmd.DECOMMISSION: (F._decommission, _UP, _ALL_G),
    SevCmd.GUEST_STATUS: (F._guest_status, _UP, _ALL_G),
    SevCmd.LAUNCH_UPDATE_DATA: (F._launch_update_data, _UP, (_GS.LUPDATE,)),
    SevCmd.LAUNCH_UPDATE_VMSA: (F._launch_update_vmsa, _UP, (_GS.LUPDATE,)),
    SevCmd.LAUNCH_MEASURE: (F._launch_measure, _UP, (_GS.LUPDATE,)),
    SevCmd.LAUNCH_SECRET: (F._launch_secret, _UP, (_GS.LSECRET,)),
    SevCmd.LAUNCH_FINISH: (F._launch_finish, _UP, (_GS.LSECRET,)),
    SevCmd.SEND_START: (F._send_start, _UP, (_GS.RUNNING,)),
    SevCmd.SEND_UPDATE_DATA: (F._send_update_data, _UP, (_GS.SUPDATE,)),
    SevCmd.SEND_UPDATE_VMSA: (F._send_update_vmsa, _UP, (_GS.SUPDATE,)),
    SevCmd.SEND_FINISH: (F._send_finish, _UP, (_GS.SUPDATE,)),
    SevCmd.SEND_CANCEL: (F._send_cancel, _UP, (_GS.SUPDATE,)),
    SevCmd.RECEIVE_UPDATE_DATA: (F._receive_update_data, _UP, (_GS.RUPDATE,)),
    SevCmd.RECEIVE_UPDATE_VMSA: (F._receive_update_vmsa, _UP, (_GS.RUPDATE,)),
    SevCmd.RECEIVE_FINISH: (F._receive_finish, _UP, (_GS.RUPDATE,)),
    SevCmd.DBG_DECRYPT: (F._dbg_decrypt, _UP, _ALL_G),
    SevCmd.DBG_ENCRYPT: (F._dbg_encrypt, _UP, _ALL_G),
}
del F

#: For tests and documentation: the platform states each command accepts and,
#: for guest commands, the guest states.
COMMAND_STATES = {cmd: (plat, guest) for cmd, (_, plat, guest) in _COMMANDS.items()}


# --------------------------------------------------------------------------------


from .mailbox import SevMailbox  # noqa: E402,F401  (re-exported)

__all__ = ["SevFirmware", "SevMailbox", "SevCmd", "SevState", "SevGuestState", "SevStatus",
           "SevPolicy", "COMMAND_STATES", "pack_buffer", "unpack_buffer", "simulated_root"]
