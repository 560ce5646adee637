"""The AMD-SP's SEV-SNP firmware (issue 10 items 5 and 6): platform and guest
commands, the launch with its page-by-page digest, the guest request channel
with attestation reports and derived keys.

``SevFirmware.command`` hands every SNP command id (81h and up) to
``SnpFirmware.command(cmd, buffer_pa)``; both share the chip's identity, its
key slots and the ASID bookkeeping (an ASID bound to a legacy guest cannot
be activated for an SNP guest, and the reverse; DF_FLUSH is one for both).
Buffers are ``struct sev_data_snp_*`` (``snp_api.LAYOUTS``) in host memory.

Pages are the firmware's through the RMP (APM vol 2, 15.36; ABI chapter 5
"page states"), read from the table in RAM, never from a side list:

=============  =========================================================
Hypervisor     not assigned
HV-Fixed       not assigned, immutable (SNP_INIT_EX's range list)
Firmware       assigned, ASID 0, immutable (the RMP itself, pages the host
               hands over for the firmware to write: status, responses)
Context        a Firmware page GCTX_CREATE turned into a guest context
Reclaim        assigned, ASID 0, mutable (PAGE_RECLAIM; RMPUPDATE frees it)
Pre-Guest      assigned to the guest's ASID, immutable, not validated
Guest-Valid    assigned to the guest's ASID, mutable, validated
=============  =========================================================

The firmware writes results only to Firmware pages (INVALID_PAGE_STATE
otherwise), as Linux's ccp driver expects ("Firmware expects status page to
be in firmware-owned state").

Where the public texts (Linux, KVM, go-sev-guest, sev-snp-measure) leave a
status code or a rule open, svmsim's choice is named where it is made and
listed in docs/DESIGN.md ("SEV-SNP firmware").
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from . import snp_api as A
from . import snp_cpuid, snp_crypto, snp_report
from .api import SevState, SevStatus as S
from .firmware import _Fail, run_command
from .snp_api import PageType, SnpCmd, SnpGuestState as G, SnpState
from ..memory.rmp import RmpEntry, PAGE, PAGES_2M, PERM_ALL

SYSCFG, RMP_BASE, RMP_END = 0xC0010010, 0xC0010132, 0xC0010133
SNP_EN = 1 << 24
ZERO48 = bytes(48)


@dataclass
class SnpGuest:
    """A guest context (what the firmware keeps in the context page)."""
    gctx: int
    state: G = G.INIT
    policy: int = 0
    asid: int = 0
    vek: bytes = b""
    ld: bytes = ZERO48                       # the launch digest so far
    vmpcks: list = field(default_factory=list)
    msg_seqno: list = field(default_factory=lambda: [0, 0, 0, 0])   # last seqno per VMPCK
    gosvw: bytes = bytes(16)
    report_id: bytes = bytes(32)
    launch_tcb: int = 0
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    id_key_digest: bytes = ZERO48
    author_key_digest: bytes = ZERO48
    author_key_en: bool = False
    vcek_disabled: bool = False
    host_data: bytes = bytes(32)


class SnpFirmware:
    """SEV-SNP commands of the simulated AMD-SP.  ``sev`` is its SevFirmware
    (memory, engine, chip identity, ASIDs), ``rmp`` the machine's RMP,
    ``cpus`` the processors whose SYSCFG/RMP MSRs SNP_INIT checks and whose
    CPUID the CPUID page is checked against."""

    API_MAJOR, API_MINOR, BUILD = 1, 55, 21
    # TCB_VERSION (Milan layout): BL 3, TEE 0, SNP 8, microcode 115.
    CURRENT_TCB = 0x73_08_00_00_00_00_00_03

    def __init__(self, sev, rmp, cpus, min_sev_asid: int):
        self.sev, self.rmp, self.cpus = sev, rmp, cpus
        self.min_sev_asid = min_sev_asid
        self.state = SnpState.UNINIT
        self.rmp_initialized = False
        self.guests: dict[int, SnpGuest] = {}
        self.asid_owner: dict[int, int] = {}          # ASID -> gctx of the SNP guest using it
        self.reported_tcb = self.CURRENT_TCB
        self.mask_chip_id = self.mask_chip_key = False
        self.cpuid_problems: list = []     # the last CPUID page check's corrections (for the VMM)

    # -- memory and the RMP -------------------------------------------------------------
    def _rd(self, pa, n):
        return self.sev._rd(pa, n)

    def _wr(self, pa, data):
        self.sev._wr(pa, data)

    def _buf(self, pa, layout):
        return A.unpack(layout, self._rd(pa, A.buffer_size(layout)))

    def _spa(self, pa):
        return pa & self.sev.addr_mask

    def _page(self, pa, size=0):
        """A page-aligned, RMP-covered SPA (INVALID_ADDRESS otherwise)."""
        spa = self._spa(pa)
        span = PAGE * (PAGES_2M if size else 1)
        if spa & (span - 1) or not self.rmp.covered(spa + span - 1):
            raise _Fail(S.INVALID_ADDRESS)
        return spa

    def _is_rmp_page(self, spa):
        return self.rmp.base & ~0xFFF <= spa <= self.rmp.end

    @staticmethod
    def _is_firmware(e):
        return e.assigned and e.asid == 0 and e.immutable

    def _firmware_page(self, pa):
        """A page the firmware may write its output to: in the Firmware state
        and not the RMP or a guest context."""
        spa = self._page(pa & ~0xFFF)
        if not self._is_firmware(self.rmp.read(spa)) or spa in self.guests or self._is_rmp_page(spa):
            raise _Fail(S.INVALID_PAGE_STATE)
        return spa

    def _write_out(self, pa, data):
        """Write ``data`` at ``pa`` (inside one Firmware page)."""
        spa = self._firmware_page(pa)
        if (self._spa(pa) & 0xFFF) + len(data) > PAGE:
            raise _Fail(S.INVALID_LENGTH)
        self._wr(self._spa(pa), data)

    def _set(self, spa, **kw):
        e = RmpEntry(**kw)
        self.rmp.write(spa, e)

    # -- dispatch -----------------------------------------------------------------------
    def command(self, cmd, buffer_pa):
        return run_command(self, _COMMANDS, cmd, buffer_pa, lambda: self.guests.get(
            self._spa(struct.unpack("<Q", self._rd(buffer_pa, 8))[0])))

    # -- platform -------------------------------------------------------------------------
    def _init(self, pa):
        return self._do_init(init_rmp=True, ranges=())

    def _init_ex(self, pa):
        p = self._buf(pa, "init_ex")
        if p["flags"] & ~(A.INIT_EX_INIT_RMP | A.INIT_EX_LIST_PADDR_EN):
            return S.INVALID_PARAM
        ranges = ()
        if p["flags"] & A.INIT_EX_LIST_PADDR_EN:
            ranges = self._range_list(p["list_paddr"])
        return self._do_init(bool(p["flags"] & A.INIT_EX_INIT_RMP), ranges)

    def _range_list(self, pa):
        n = self._buf(pa, "range_list")["num_elements"]
        if n > (PAGE - 8) // 16:
            raise _Fail(S.INVALID_LENGTH)
        return [A.unpack("range", self._rd(pa + 8 + 16 * i, 16)) for i in range(n)]

    def _do_init(self, init_rmp, ranges):
        """SNP_INIT(_EX): every processor has SNPEn with the same RMP bounds
        (else INVALID_CONFIG: svmsim's reading of the ABI's configuration
        check); the legacy firmware must not be initialised (INVALID_PLATFORM_STATE).
        The RMP is cleared when asked (``init_rmp``; RMP_INIT_REQUIRED if it
        never was), the ranges become HV-Fixed and the RMP's own pages Firmware."""
        if self.sev.state != SevState.UNINIT:
            return S.INVALID_PLATFORM_STATE
        bounds = {(c.msr.get(RMP_BASE, 0), c.msr.get(RMP_END, 0)) for c in self.cpus}
        if not all(c.msr.get(SYSCFG, 0) & SNP_EN for c in self.cpus) or len(bounds) != 1 \
                or not self.rmp.enabled or bounds != {(self.rmp.base, self.rmp.end)}:
            return S.INVALID_CONFIG
        if not init_rmp and not self.rmp_initialized:
            return S.RMP_INIT_REQUIRED
        if init_rmp:
            self._clear_rmp()
        for r in ranges:
            for i in range(r["page_count"]):
                self._set(self._page(r["base"] + i * PAGE), immutable=True)
        for spa in range(self.rmp.base & ~0xFFF, self.rmp.end + 1, PAGE):
            self._set(spa, assigned=True, immutable=True)
        self.rmp_initialized = True
        self.state = SnpState.INIT
        return S.SUCCESS

    def _clear_rmp(self):
        first = self.rmp.base + 0x4000
        self.sev.mem.write_bytes(first, bytes(self.rmp.end + 1 - first))
        self.rmp.enable(self.rmp.base, self.rmp.end)          # re-reads the table
        for notify in self.rmp.listeners:
            notify()

    def _shutdown(self, pa):
        """SNP_SHUTDOWN(_EX): guest contexts are dropped with their keys
        (as the legacy SHUTDOWN does); the RMP keeps its entries."""
        for g in list(self.guests.values()):
            self._unbind(g)
        self.guests.clear()
        self.state = SnpState.UNINIT
        return S.SUCCESS

    def _shutdown_ex(self, pa):
        p = self._buf(pa, "shutdown_ex")
        if p["len"] < A.buffer_size("shutdown_ex"):
            return S.INVALID_LENGTH
        return self._shutdown(pa)

    def _platform_status(self, pa):
        address = self._buf(pa, "addr")["address"]
        out = A.PLATFORM_STATUS.pack(self.API_MAJOR, self.API_MINOR, self.state,
                                     int(self.rmp_initialized), self.BUILD,
                                     int(self.mask_chip_id) | int(self.mask_chip_key) << 1,
                                     len(self.guests), self.CURRENT_TCB, self.reported_tcb)
        if self.rmp.enabled:
            self._write_out(address, out)
        else:
            self._wr(address, out)
        return S.SUCCESS

    def _df_flush(self, pa):
        self.sev._asid_dirty.clear()
        self.sev.engine.flush()
        return S.SUCCESS

    def _config(self, pa):
        """SNP_CONFIG: REPORTED_TCB (not above CURRENT_TCB in any part) and
        the chip-id / chip-key masks the reports honour."""
        p = self._buf(pa, "config")
        if p["flags"] & ~(A.CONFIG_MASK_CHIP_ID | A.CONFIG_MASK_CHIP_KEY) or any(p["_r"]):
            return S.INVALID_PARAM
        if not _tcb_le(p["reported_tcb"], self.CURRENT_TCB):
            return S.INVALID_PARAM
        self.reported_tcb = p["reported_tcb"]
        self.mask_chip_id = bool(p["flags"] & A.CONFIG_MASK_CHIP_ID)
        self.mask_chip_key = bool(p["flags"] & A.CONFIG_MASK_CHIP_KEY)
        return S.SUCCESS

    # -- pages -----------------------------------------------------------------------------
    def _page_reclaim(self, pa):
        """Firmware or Pre-Guest page (immutable) -> Reclaim (ASID 0,
        mutable), so that RMPUPDATE can give it back to the hypervisor.  The
        RMP itself and live guest contexts are refused."""
        raw = self._buf(pa, "page")["paddr"]
        size = raw & 1
        spa = self._page(raw & ~0xFFF, size)
        e = self.rmp.read(spa)
        if not (e.assigned and e.immutable) or e.page_size != size or spa in self.guests \
                or self._is_rmp_page(spa):
            return S.INVALID_PAGE_STATE
        self._set(spa, assigned=True, page_size=size)
        return S.SUCCESS

    def _page_unsmash(self, pa):
        """The reverse of PSMASH: 512 consecutive 4 KiB entries of one guest
        (same ASID and attributes, GPAs consecutive from a 2 MiB boundary)
        become one 2 MiB entry."""
        spa = self._page(self._buf(pa, "page")["paddr"] & ~0xFFF, 1)
        first = self.rmp.read(spa)
        if not first.assigned or first.page_size or first.gpa & (PAGE * PAGES_2M - 1):
            return S.INVALID_PAGE_STATE
        for i in range(1, PAGES_2M):
            e = self.rmp.read(spa + i * PAGE)
            if (e.assigned, e.page_size, e.asid, e.immutable, e.vmsa, e.validated, e.perms,
                    e.gpa) != (True, 0, first.asid, first.immutable, first.vmsa, first.validated,
                               first.perms, first.gpa + i * PAGE):
                return S.INVALID_PAGE_STATE
        first.page_size = 1
        self.rmp.write(spa, first)
        return S.SUCCESS

    # -- guest contexts --------------------------------------------------------------------
    def _gctx_create(self, pa):
        spa = self._firmware_page(self._buf(pa, "addr")["address"])
        if spa & 0xFFF:
            return S.INVALID_ADDRESS
        self.guests[spa] = SnpGuest(spa)
        self._wr(spa, bytes(PAGE))           # the context's contents are the firmware's
        return S.SUCCESS

    def _launch_start(self, pa, g):
        """SNP_LAUNCH_START: the policy checks the ABI states (reserved bit 17
        set and bits 63:26 clear, else INVALID_PARAM; a minimum ABI above the
        firmware's, or a requirement this platform cannot meet -- AES-256-XTS,
        RAPL disabled, ciphertext hiding -- POLICY_FAILURE).  Migration agents
        and incoming migration images are not modelled (UNSUPPORTED)."""
        p = self._buf(pa, "launch_start")
        policy = p["policy"]
        if not policy & A.POLICY_RSVD1 or policy & A.POLICY_MBZ or p["flags"] >> 2:
            return S.INVALID_PARAM
        if ((policy >> 8) & 0xFF, policy & 0xFF) > (self.API_MAJOR, self.API_MINOR):
            return S.POLICY_FAILURE
        if policy & (A.POLICY_MEM_AES_256_XTS | A.POLICY_RAPL_DIS | A.POLICY_CIPHERTEXT_HIDING):
            return S.POLICY_FAILURE
        if p["flags"] & (A.LAUNCH_START_MA_EN | A.LAUNCH_START_IMI_EN):
            return S.UNSUPPORTED
        g.policy, g.gosvw, g.state = policy, p["gosvw"], G.LAUNCH
        g.vek = self.sev.rng(16)
        g.vmpcks = [self.sev.rng(32) for _ in range(4)]
        g.report_id = self.sev.rng(32)
        g.launch_tcb = self.CURRENT_TCB
        return S.SUCCESS

    def _activate(self, pa, g):
        """SNP_ACTIVATE: bind an SEV-ES/SNP ASID (1 .. CPUID 8000_001F EDX - 1)
        and load the guest's key into its slot."""
        asid = self._buf(pa, "activate")["asid"]
        if not 1 <= asid < self.min_sev_asid:
            return S.INVALID_ASID
        if g.asid:
            return S.ACTIVE
        if asid in self.asid_owner or asid in self.sev._asid_users:
            return S.ASID_OWNED
        if asid in self.sev._asid_dirty:
            return S.DF_FLUSH_REQUIRED
        self.sev.engine.load_key(asid, g.vek)
        self.asid_owner[asid] = g.gctx
        g.asid = asid
        return S.SUCCESS

    def _unbind(self, g):
        if g.asid:
            self.asid_owner.pop(g.asid, None)
            self.sev.engine.unload_key(g.asid)
            self.sev._asid_dirty.add(g.asid)
            g.asid = 0

    def _decommission(self, pa, g):
        """The guest's ASID is unbound (a DF_FLUSH is needed before it is
        reused) and its context page goes back to the Firmware state."""
        self._unbind(g)
        del self.guests[g.gctx]
        return S.SUCCESS

    def _guest_status(self, pa, g):
        p = self._buf(pa, "guest_status")
        self._write_out(p["address"], A.GUEST_STATUS.pack(g.policy, g.asid, g.state,
                                                          int(g.vcek_disabled)))
        return S.SUCCESS

    # -- the launch ---------------------------------------------------------------------------
    def _launch_update(self, pa, g):
        """SNP_LAUNCH_UPDATE of one 4 KiB page in the Pre-Guest state
        (assigned to the guest's ASID, immutable: KVM's RMPUPDATE before the
        command).  The page is measured into the launch digest (PAGE_INFO with
        the GPA from its RMP entry), encrypted in place with the guest's key and
        becomes Guest-Valid with the VMPL1-3 permissions given."""
        p = self._buf(pa, "launch_update")
        flags, perms = p["flags"], p["perms"]
        size, ptype, imi = flags & 1, (flags >> 1) & 7, (flags >> 4) & 1
        if flags >> 5 or p["_r2"] or p["_r4"] or perms & 0xFF or ptype not in PageType.__members__.values():
            return S.INVALID_PARAM
        if imi:
            return S.INVALID_PARAM                     # IMI_EN was not set at LAUNCH_START
        if size:
            return S.UNSUPPORTED                       # 2 MiB launch pages: not modelled
        if not g.asid:
            return S.INACTIVE
        spa = self._page(p["address"])
        e = self.rmp.read(spa)
        if not e.assigned or e.asid == 0:
            return S.INVALID_PAGE_STATE
        if e.asid != g.asid:
            return S.INVALID_PAGE_OWNER
        if e.page_size:
            return S.INVALID_PAGE_SIZE
        if not e.immutable or e.validated:
            return S.INVALID_PAGE_STATE
        vmpl1, vmpl2, vmpl3 = (perms >> 8) & 0xFF, (perms >> 16) & 0xFF, (perms >> 24) & 0xFF
        plain, contents = self._page_contents(g, PageType(ptype), spa)
        g.ld = snp_crypto.extend_digest(g.ld, contents, ptype, e.gpa, 0, vmpl1, vmpl2, vmpl3)
        self._wr(spa, self.sev.engine.encrypt(g.vek, spa, plain))
        self.rmp.write(spa, RmpEntry(True, 0, False, e.gpa, g.asid, ptype == PageType.VMSA, True,
                                     [PERM_ALL, vmpl1, vmpl2, vmpl3]))
        return S.SUCCESS

    def _page_contents(self, g, ptype, spa):
        """(plaintext to encrypt, CONTENTS to measure) of one launch page."""
        if ptype in (PageType.NORMAL, PageType.VMSA):
            plain = self._rd(spa, PAGE)
            return plain, hashlib.sha384(plain).digest()
        if ptype == PageType.ZERO:
            return bytes(PAGE), ZERO48
        if ptype == PageType.UNMEASURED:
            return self._rd(spa, PAGE), ZERO48
        if ptype == PageType.SECRETS:
            return self._secrets_page(g), ZERO48
        return self._checked_cpuid_page(spa), ZERO48

    def _secrets_page(self, g):
        cpu = self.cpus[0]
        fms = _cpuid(cpu, 1, 0)[0] & 0x0FFF0FFF
        page = A.pack("secrets", version=A.SECRETS_VERSION, fms=fms, gosvw=g.gosvw,
                      vmpck0=g.vmpcks[0], vmpck1=g.vmpcks[1], vmpck2=g.vmpcks[2],
                      vmpck3=g.vmpcks[3])
        return page.ljust(PAGE, b"\0")

    def _checked_cpuid_page(self, spa):
        """The CPUID page as given if every entry passes; otherwise the corrected
        table is written back in place (plaintext) and the command fails."""
        page = self._rd(spa, PAGE)
        cpu = self.cpus[0]
        real_max = (_cpuid(cpu, 0, 0)[0], _cpuid(cpu, 0x80000000, 0)[0])
        fixed, problems = snp_cpuid.check_table(page, lambda l, s: _cpuid(cpu, l, s or 0), real_max)
        if problems:
            self._wr(spa, fixed)
            self.cpuid_problems = problems
            raise _Fail(S.INVALID_PARAM)
        return page

    def _launch_finish(self, pa, g):
        """SNP_LAUNCH_FINISH: with ID_BLOCK_EN the ID block's signature (ID key),
        the ID key's signature (author key, with AUTH_KEY_EN), its launch
        digest (BAD_MEASUREMENT) and its policy (POLICY_FAILURE) are checked
        (ECDSA P-384; BAD_SIGNATURE); then HOST_DATA is kept and the guest runs."""
        p = self._buf(pa, "launch_finish")
        flags = p["flags"]
        if flags >> 3 or (flags & A.FINISH_AUTH_KEY_EN and not flags & A.FINISH_ID_BLOCK_EN):
            return S.INVALID_PARAM
        if flags & A.FINISH_ID_BLOCK_EN:
            self._check_id_block(g, p, bool(flags & A.FINISH_AUTH_KEY_EN))
        g.vcek_disabled = bool(flags & A.FINISH_VCEK_DISABLED)
        g.host_data = p["host_data"]
        g.state = G.RUNNING
        return S.SUCCESS

    def _check_id_block(self, g, p, auth_key_en):
        block = self._rd(p["id_block_paddr"], A.ID_BLOCK_LEN)
        auth = A.unpack("id_auth", self._rd(p["id_auth_paddr"], A.ID_AUTH_LEN))
        ib = A.unpack("id_block", block)
        if auth["id_key_algo"] != A.ALGO_ECDSA_P384_SHA384 or ib["version"] != A.ID_BLOCK_VERSION:
            raise _Fail(S.INVALID_PARAM)
        id_key = snp_crypto.pubkey_from_bytes(auth["id_key"])
        if id_key is None or not snp_crypto.verify(id_key, block, auth["id_block_sig"]):
            raise _Fail(S.BAD_SIGNATURE)
        if auth_key_en:
            if auth["auth_key_algo"] != A.ALGO_ECDSA_P384_SHA384:
                raise _Fail(S.INVALID_PARAM)
            author = snp_crypto.pubkey_from_bytes(auth["author_key"])
            if author is None or not snp_crypto.verify(author, auth["id_key"], auth["id_key_sig"]):
                raise _Fail(S.BAD_SIGNATURE)
        if not hmac.compare_digest(ib["ld"], g.ld):
            raise _Fail(S.BAD_MEASUREMENT)
        if ib["policy"] != g.policy:
            raise _Fail(S.POLICY_FAILURE)
        g.family_id, g.image_id, g.guest_svn = ib["family_id"], ib["image_id"], ib["guest_svn"]
        g.id_key_digest = snp_crypto.key_digest(auth["id_key"])
        if auth_key_en:
            g.author_key_digest = snp_crypto.key_digest(auth["author_key"])
            g.author_key_en = True

    # -- debugging ------------------------------------------------------------------------------
    def _dbg(self, pa, g, decrypt):
        """One page, only with the DEBUG policy bit (POLICY_FAILURE): DBG_DECRYPT
        reads a page of this guest into a Firmware page, DBG_ENCRYPT writes
        plaintext into a page of this guest."""
        if not g.policy & A.POLICY_DEBUG:
            return S.POLICY_FAILURE
        p = self._buf(pa, "dbg")
        guest_pa = p["src_addr"] if decrypt else p["dst_addr"]
        spa = self._page(guest_pa & ~0xFFF)
        e, _ = self.rmp.governing(spa)
        if not e.assigned or e.asid != g.asid or not g.asid:
            return S.INVALID_PAGE_OWNER
        if decrypt:
            plain = self.sev.engine.decrypt(g.vek, spa, self._rd(spa, PAGE))
            self._write_out(p["dst_addr"] & ~0xFFF, plain)
        else:
            plain = self._rd(self._spa(p["src_addr"]) & ~0xFFF, PAGE)
            self._wr(spa, self.sev.engine.encrypt(g.vek, spa, plain))
        return S.SUCCESS

    def _dbg_decrypt(self, pa, g):
        return self._dbg(pa, g, True)

    def _dbg_encrypt(self, pa, g):
        return self._dbg(pa, g, False)

    # -- guest requests --------------------------------------------------------------------------
    def _guest_request(self, pa, g):
        """SNP_GUEST_REQUEST: a message the guest sealed with one of its
        VMPCKs, in a hypervisor page, answered into a Firmware page.  The
        message must carry the next sequence number of that VMPCK (a replayed,
        reordered or forged message is refused with INVALID_PARAM and changes
        nothing: svmsim's reading); the answer carries the request's + 1."""
        from . import snp_messages
        p = self._buf(pa, "guest_request")
        res = self._firmware_page(p["res_paddr"])
        msg = self._rd(p["req_paddr"], A.MSG_PAGE)
        try:
            hdr = snp_crypto.message_header(msg)
            vmpck = g.vmpcks[hdr["msg_vmpck"]]
            hdr, payload = snp_crypto.open_message(vmpck, msg)
        except snp_crypto.MessageError:
            return S.INVALID_PARAM
        seqno, n = hdr["msg_seqno"], hdr["msg_vmpck"]
        if seqno != g.msg_seqno[n] + 1 or seqno + 1 >= 1 << 64:
            return S.INVALID_PARAM
        answer = snp_messages.answer(self, g, hdr, payload)
        if answer is None:
            return S.INVALID_PARAM
        rsp_type, body = answer
        g.msg_seqno[n] = seqno + 1
        out = snp_crypto.seal_message(vmpck, seqno + 1, rsp_type, body, n, hdr["msg_version"])
        self._wr(res, out.ljust(A.MSG_PAGE, b"\0"))
        return S.SUCCESS

    # -- attestation (used by snp_messages) ------------------------------------------------------
    def vcek_key(self, tcb=None):
        from .snp_certs import vcek_private_key
        return vcek_private_key(self.sev.chip_secret, self.reported_tcb if tcb is None else tcb)

    def vcek_certificate(self):
        """The VCEK certificate for the reported TCB (what the VMM fetches
        from svmsim's simulated KDS and hands to guests)."""
        from .snp_certs import vcek_certificate
        return vcek_certificate(self.sev.chip_secret, self.sev.chip_id, self.reported_tcb)

    def attestation_report(self, g, report_data: bytes, vmpl: int) -> bytes:
        sig_key = snp_report.SIGNING_KEY_NONE if self.mask_chip_key else snp_report.SIGNING_KEY_VCEK
        fam, mod, step = _fms(_cpuid(self.cpus[0], 1, 0)[0])
        api = dict(current_build=self.BUILD, current_minor=self.API_MINOR, current_major=self.API_MAJOR,
                   committed_build=self.BUILD, committed_minor=self.API_MINOR,
                   committed_major=self.API_MAJOR)
        report = snp_report.pack(
            version=snp_report.VERSION, guest_svn=g.guest_svn, policy=g.policy, family_id=g.family_id,
            image_id=g.image_id, vmpl=vmpl, signature_algo=A.ALGO_ECDSA_P384_SHA384,
            current_tcb=self.CURRENT_TCB, platform_info=0,
            signer_info=int(g.author_key_en) | int(self.mask_chip_key) << 1 | sig_key << 2,
            report_data=report_data, measurement=g.ld, host_data=g.host_data,
            id_key_digest=g.id_key_digest, author_key_digest=g.author_key_digest,
            report_id=g.report_id, report_id_ma=b"\xff" * 32, reported_tcb=self.reported_tcb,
            cpuid_fam_id=fam, cpuid_mod_id=mod, cpuid_step=step,
            chip_id=bytes(64) if self.mask_chip_id else self.sev.chip_id,
            committed_tcb=self.CURRENT_TCB, launch_tcb=g.launch_tcb, **api)
        if self.mask_chip_key:
            return bytes(report)
        return snp_report.sign(report, self.vcek_key())


def _cpuid(cpu, leaf, subleaf):
    from ..cpu.cpuid import cpuid
    return cpuid(cpu, leaf, subleaf)


def _fms(eax):
    family = ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF)
    model = ((eax >> 16) & 0xF) << 4 | ((eax >> 4) & 0xF)
    return family, model, eax & 0xF


def _tcb_le(a, b):
    return all(((a >> s) & 0xFF) <= ((b >> s) & 0xFF) for s in range(0, 64, 8))


# -- command table: id -> (handler, platform states, guest states or None) ---------------------
_U, _I = (SnpState.UNINIT,), (SnpState.INIT,)
F = SnpFirmware
_COMMANDS = {
    SnpCmd.INIT: (F._init, _U, None),
    SnpCmd.INIT_EX: (F._init_ex, _U, None),
    SnpCmd.SHUTDOWN: (F._shutdown, _U + _I, None),
    SnpCmd.SHUTDOWN_EX: (F._shutdown_ex, _U + _I, None),
    SnpCmd.PLATFORM_STATUS: (F._platform_status, _U + _I, None),
    SnpCmd.DF_FLUSH: (F._df_flush, _I, None),
    SnpCmd.CONFIG: (F._config, _I, None),
    SnpCmd.PAGE_RECLAIM: (F._page_reclaim, _I, None),
    SnpCmd.PAGE_UNSMASH: (F._page_unsmash, _I, None),
    SnpCmd.GCTX_CREATE: (F._gctx_create, _I, None),
    SnpCmd.LAUNCH_START: (F._launch_start, _I, (G.INIT,)),
    SnpCmd.ACTIVATE: (F._activate, _I, (G.LAUNCH, G.RUNNING)),
    SnpCmd.LAUNCH_UPDATE: (F._launch_update, _I, (G.LAUNCH,)),
    SnpCmd.LAUNCH_FINISH: (F._launch_finish, _I, (G.LAUNCH,)),
    SnpCmd.DECOMMISSION: (F._decommission, _I, (G.INIT, G.LAUNCH, G.RUNNING)),
    SnpCmd.GUEST_STATUS: (F._guest_status, _I, (G.INIT, G.LAUNCH, G.RUNNING)),
    SnpCmd.GUEST_REQUEST: (F._guest_request, _I, (G.RUNNING,)),
    SnpCmd.DBG_DECRYPT: (F._dbg_decrypt, _I, (G.LAUNCH, G.RUNNING)),
    SnpCmd.DBG_ENCRYPT: (F._dbg_encrypt, _I, (G.LAUNCH, G.RUNNING)),
}
del F

#: For tests and documentation.
COMMAND_STATES = {cmd: (plat, guest) for cmd, (_, plat, guest) in _COMMANDS.items()}
