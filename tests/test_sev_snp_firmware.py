"""The AMD-SP's SEV-SNP firmware (issue 10 item 5): platform commands, guest
contexts, the launch with its page-by-page digest, every page type, the ID
block, page reclaim/unsmash, debugging, and the status code of each wrong
state or bad parameter.  Commands go through the PSP mailbox as Linux's ccp
driver issues them; pages are prepared with RMPUPDATE as KVM prepares them."""
import hashlib

import pytest

from snpfw import ASID, POLICY, SnpPlatform, cpuid_page, launched_guest
from svmsim.machine import Machine
from svmsim.memory.rmp import PERM_ALL
from svmsim.sev import snp_api as A, snp_crypto
from svmsim.sev.api import SevCmd, SevStatus as S
from svmsim.sev.snp_api import PageType, SnpCmd
from svmsim.vmm import snp_host
from svmsim.vmm.psp import Psp
from svmsim.vmm.vmm import GuestExit


# ---------------------------------------------------------------- platform
def test_snp_init_needs_snpen_on_every_cpu():
    """SNP_INIT checks every core's SYSCFG.SNPEn and RMP bounds (INVALID_CONFIG)."""
    m = Machine(mem_size="64M", smp=2)
    psp = Psp(m)
    assert psp.command(SnpCmd.INIT)[0] == S.INVALID_CONFIG            # SNP not enabled at all
    from svmsim.cpu import msr
    base, end = snp_host.rmp_bounds(m.bus.low_top)
    cpu0 = m.cpus[0]
    msr.wrmsr(cpu0, 0xC0010132, base)
    msr.wrmsr(cpu0, 0xC0010133, end)
    msr.wrmsr(cpu0, 0xC0010010, 1 << 23 | 1 << 24)
    assert psp.command(SnpCmd.INIT)[0] == S.INVALID_CONFIG            # CPU 1 lacks SNPEn
    snp_host.enable_snp(m)
    assert psp.command(SnpCmd.INIT)[0] == S.SUCCESS
    assert psp.command(SnpCmd.INIT)[0] == S.INVALID_PLATFORM_STATE


def test_init_makes_the_rmp_firmware_owned_and_clears_it():
    p = SnpPlatform(init=False)
    base, end = snp_host.enable_snp(p.m)
    stale = p.page()
    p.m.rmp.write(stale, p.m.rmp.read(stale).__class__(True, 0, False, 0x5000, 3))
    assert p.cmd(SnpCmd.INIT_EX, "init_ex", flags=A.INIT_EX_INIT_RMP) == 0
    assert not p.m.rmp.read(stale).assigned                             # INIT_RMP cleared it
    for spa in (base, end & ~0xFFF):
        e = p.m.rmp.read(spa)
        assert (e.assigned, e.asid, e.immutable, e.owner) == (True, 0, True, "AMD-SP")
    with pytest.raises(GuestExit):                                     # RMPUPDATE: FAIL_PERMISSION
        snp_host.rmpupdate(p.m, base)


def test_host_write_to_the_rmp_is_an_rmp_page_fault():
    """After SNP_INIT the RMP's pages are the AMD-SP's: a host write faults
    (#PF with the RMP bit, APM vol 2 table 15-37)."""
    from esharness import EsRig, RMP_AT
    from test_sev_snp import host_run
    r = EsRig("hlt", snp=True)
    r.m.bus.write_bytes(0x180000, A.pack("init_ex", flags=A.INIT_EX_INIT_RMP))
    assert r.m.amd_sp.command(SnpCmd.INIT_EX, 0x180000) == 0
    assert host_run(r, f"mov eax, [{RMP_AT:#x}]") is None
    vec, ec = host_run(r, f"mov dword ptr [{RMP_AT + 0x4000:#x}], 1")
    assert vec == 14 and ec >> 31


def test_init_ex_without_init_rmp_needs_an_initialised_rmp_and_hv_fixed_ranges():
    p = SnpPlatform(init=False)
    snp_host.enable_snp(p.m)
    assert p.cmd(SnpCmd.INIT_EX, "init_ex", flags=0) == S.RMP_INIT_REQUIRED
    fixed = 0x300000
    lst = p.page(A.pack("range_list", num_elements=1) + A.pack("range", base=fixed, page_count=2))
    assert p.cmd(SnpCmd.INIT_EX, "init_ex", flags=3, list_paddr=lst) == 0
    e = p.m.rmp.read(fixed + 0x1000)
    assert (e.assigned, e.immutable) == (False, True)                  # HV-Fixed
    with pytest.raises(GuestExit, match="failed with 2"):
        snp_host.rmpupdate(p.m, fixed, 0x1000, assigned=True, asid=1, immutable=True)


def test_snp_init_after_legacy_init_is_refused():
    p = SnpPlatform(init=False)
    snp_host.enable_snp(p.m)
    p.psp.init_platform()
    assert p.cmd(SnpCmd.INIT) == S.INVALID_PLATFORM_STATE


def test_platform_status_into_a_firmware_page():
    p = SnpPlatform()
    hv = p.page()
    assert p.cmd(SnpCmd.PLATFORM_STATUS, "addr", address=hv) == S.INVALID_PAGE_STATE
    major, minor, state, rmp_init, build, masks, guests, cur, rep = p.status()
    assert (major, minor, state, rmp_init, build, masks, guests) == (1, 55, 1, 1, 21, 0, 0)
    assert cur == rep == p.fw.CURRENT_TCB
    p.new_guest()
    assert p.status()[6] == 1


@pytest.mark.parametrize("cmd,layout", [(SnpCmd.DF_FLUSH, None), (SnpCmd.GCTX_CREATE, "addr"),
                                        (SnpCmd.CONFIG, "config"), (SnpCmd.PAGE_RECLAIM, "page"),
                                        (SnpCmd.LAUNCH_START, "launch_start")])
def test_commands_before_snp_init_are_invalid_platform_state(cmd, layout):
    p = SnpPlatform(init=False)
    assert p.cmd(cmd, layout) == S.INVALID_PLATFORM_STATE


def test_unknown_snp_command_is_invalid_command():
    p = SnpPlatform()
    assert p.cmd(0xC4) == S.INVALID_COMMAND and p.cmd(SnpCmd.PAGE_MOVE) == S.INVALID_COMMAND


def test_shutdown_drops_guests_and_keys_then_init_again():
    p, g = launched_guest()
    assert p.m.mem_engine.key_loaded(ASID)
    assert p.cmd(SnpCmd.SHUTDOWN_EX, "shutdown_ex", len=8) == 0
    assert not p.m.mem_engine.key_loaded(ASID) and p.fw.state == 0
    assert p.cmd(SnpCmd.GUEST_STATUS, "guest_status", gctx_paddr=g.gctx) == S.INVALID_PLATFORM_STATE
    assert p.cmd(SnpCmd.INIT_EX, "init_ex", flags=A.INIT_EX_INIT_RMP) == 0


# ---------------------------------------------------------------- guest contexts and launch start
def test_gctx_create_needs_a_firmware_page():
    p = SnpPlatform()
    assert p.cmd(SnpCmd.GCTX_CREATE, "addr", address=p.page()) == S.INVALID_PAGE_STATE
    g = p.new_guest(start=False)
    assert p.cmd(SnpCmd.GCTX_CREATE, "addr", address=g.gctx) == S.INVALID_PAGE_STATE   # already a context
    assert p.cmd(SnpCmd.LAUNCH_UPDATE, "launch_update", gctx_paddr=p.page()) == S.INVALID_GUEST


@pytest.mark.parametrize("policy,flags,status", [
    (0x10000, 0, S.INVALID_PARAM),                    # reserved bit 17 must be 1
    (POLICY | 1 << 26, 0, S.INVALID_PARAM),           # bits 63:26 must be 0
    (POLICY | 2 << 8, 0, S.POLICY_FAILURE),           # needs ABI 2.0
    (POLICY | 1 << 8 | 56, 0, S.POLICY_FAILURE),      # needs ABI 1.56
    (POLICY | A.POLICY_MEM_AES_256_XTS, 0, S.POLICY_FAILURE),
    (POLICY | A.POLICY_RAPL_DIS, 0, S.POLICY_FAILURE),
    (POLICY, A.LAUNCH_START_MA_EN, S.UNSUPPORTED),
    (POLICY | 1 << 8 | 55 | A.POLICY_DEBUG | A.POLICY_SINGLE_SOCKET, 0, S.SUCCESS),
])
def test_launch_start_policy_checks(policy, flags, status):
    p = SnpPlatform()
    g = p.new_guest(start=False)
    assert g.start(policy, flags) == status


def test_launch_start_twice_is_invalid_guest_state():
    p = SnpPlatform()
    g = p.new_guest()
    assert g.start() == S.INVALID_GUEST_STATE


def test_activate_loads_the_key_into_an_snp_asid():
    p = SnpPlatform()
    g = p.new_guest(asid=0)
    assert g.activate(0) == S.INVALID_ASID
    assert g.activate(5) == S.INVALID_ASID            # 5 = CPUID 8000_001F EDX: an SEV-only ASID
    assert g.activate(2) == 0 and p.m.mem_engine.key_loaded(2)
    assert g.activate(3) == S.ACTIVE
    other = p.new_guest(asid=0)
    assert other.activate(2) == S.ASID_OWNED
    legacy = Psp(p.m)
    assert legacy.firmware.snp.asid_owner[2] == g.gctx


def test_decommission_needs_df_flush_before_the_asid_is_reused():
    p = SnpPlatform()
    g = p.new_guest()
    assert p.cmd(SnpCmd.DECOMMISSION, "addr", address=g.gctx) == 0
    assert not p.m.mem_engine.key_loaded(ASID)
    other = p.new_guest(asid=0)
    assert other.activate(ASID) == S.DF_FLUSH_REQUIRED
    assert p.cmd(SnpCmd.DF_FLUSH) == 0 and other.activate(ASID) == 0
    snp_host.reclaim(p.psp, g.gctx)                   # the context page is a Firmware page again
    assert not p.m.rmp.read(g.gctx).assigned


# ---------------------------------------------------------------- LAUNCH_UPDATE
def vmsa_page():
    from svmsim.vmm.vcpu_reset import reset_vmsa
    return reset_vmsa(0xFFFFFFF0, 0x800F12, 1)


def test_launch_digest_matches_sev_snp_measure_page_by_page():
    """Every page type, measured as the ABI's PAGE_INFO chain: the firmware's
    digest equals sev-snp-measure's GCTX fed the same pages."""
    gctx_mod = pytest.importorskip("sevsnpmeasure.gctx", reason="sev-snp-measure is not installed")
    p = SnpPlatform()
    g = p.new_guest()
    data = bytes((i * 7) & 0xFF for i in range(0x2000))
    ref = gctx_mod.GCTX()
    g.add(0x10000, data[:0x1000])
    g.add(0x11000, data[0x1000:])
    ref.update_normal_pages(0x10000, data)
    g.add(0x20000, b"host junk", PageType.ZERO)
    ref.update_zero_pages(0x20000, 0x1000)
    g.add(0x21000, b"unmeasured", PageType.UNMEASURED)
    ref.update_unmeasured_pages(0x21000, 0x1000)
    g.add(0x22000, page_type=PageType.SECRETS)
    ref.update_secrets_page(0x22000)
    g.add(0x23000, cpuid_page(p), PageType.CPUID)
    ref.update_cpuid_page(0x23000)
    g.add(A.VMSA_GPA, vmsa_page(), PageType.VMSA)
    ref.update_vmsa_page(vmsa_page())
    assert p.fw.guests[g.gctx].ld == ref.ld()


def test_launch_update_encrypts_validates_and_sets_permissions():
    p = SnpPlatform()
    g = p.new_guest()
    spa = g.add(0x10000, b"private code", perms=A.vmpl_perms(0x3, 0x1, 0))
    e = p.m.rmp.read(spa)
    assert (e.assigned, e.immutable, e.validated, e.vmsa, e.gpa, e.asid) == (True, False, True, False,
                                                                            0x10000, ASID)
    assert e.perms == [PERM_ALL, 0x3, 0x1, 0]
    assert p.bus.read_bytes(spa, 12) != b"private code" and g.private(0x10000, 12) == b"private code"
    zero = g.add(0x20000, b"junk from the host", PageType.ZERO)
    assert g.private(0x20000, 32) == bytes(32) and p.bus.read_bytes(zero, 4) != bytes(4)
    vmsa = g.add(A.VMSA_GPA, vmsa_page(), PageType.VMSA)
    assert p.m.rmp.read(vmsa).vmsa


def test_launch_update_page_state_errors():
    p = SnpPlatform()
    g = p.new_guest()
    hv = p.page()
    assert g.update(hv) == S.INVALID_PAGE_STATE                     # a hypervisor page
    other = g.pre_guest(0x5000, asid=2)
    assert g.update(other) == S.INVALID_PAGE_OWNER                  # another ASID's page
    mutable = p.page()
    snp_host.rmpupdate(p.m, mutable, 0x6000, assigned=True, asid=ASID)
    assert g.update(mutable) == S.INVALID_PAGE_STATE                # not immutable: not Pre-Guest
    done = g.add(0x7000, b"x")
    assert g.update(done) == S.INVALID_PAGE_STATE                   # already Guest-Valid
    pg = g.pre_guest(0x8000)
    assert g.update(pg, flags=A.launch_update_flags(PageType.NORMAL, page_size=1)) == S.UNSUPPORTED
    assert g.update(pg, flags=0) == S.INVALID_PARAM                 # page type 0
    assert g.update(pg, flags=A.launch_update_flags(7)) == S.INVALID_PARAM
    assert g.update(pg, flags=A.launch_update_flags(1, imi=1)) == S.INVALID_PARAM
    assert g.update(pg, perms=0x5) == S.INVALID_PARAM               # VMPL0's byte is reserved
    assert g.update(pg + 0x10) == S.INVALID_ADDRESS
    assert g.update(pg) == 0


def test_launch_update_needs_an_activated_guest_and_the_launch_state():
    p = SnpPlatform()
    g = p.new_guest(asid=0)
    pg = g.pre_guest(0x1000, asid=ASID)
    assert g.update(pg) == S.INACTIVE
    assert g.activate() == 0 and g.update(pg) == 0
    assert g.finish() == 0
    assert g.update(g.pre_guest(0x2000)) == S.INVALID_GUEST_STATE
    assert g.finish() == S.INVALID_GUEST_STATE


def test_cpuid_page_is_corrected_in_place_and_fails_with_invalid_param():
    """A CPUID entry claiming a feature the processor lacks: the firmware
    writes the corrected table back into the page (plaintext, the page
    stays Pre-Guest) and returns INVALID_PARAM; the corrected page passes."""
    from svmsim.sev import snp_cpuid
    p = SnpPlatform()
    g = p.new_guest()
    good = cpuid_page(p)
    entries = [list(e) for e in snp_cpuid.unpack_table(good)]
    bad = [e for e in entries if e[0] == 0x8000001F][0]
    bad[4] |= 1 << 30                                             # EAX bit 30: not on this processor
    bad[5] = (bad[5] & ~0x3F) | 51                                # EBX C-bit position: not the processor's
    page = snp_cpuid.pack_table([(e[0], e[1], *e[4:8]) for e in entries])
    spa = g.pre_guest(0x9000, page)
    assert g.update(spa, PageType.CPUID) == S.INVALID_PARAM
    assert p.bus.read_bytes(spa, 0x1000) == good                  # corrected, in plaintext
    e = p.m.rmp.read(spa)
    assert e.immutable and not e.validated
    regs = {(i, reg) for i, leaf, _, reg, _, _ in p.fw.cpuid_problems}
    assert {r for _, r in regs} == {"eax", "ebx"}
    assert g.update(spa, PageType.CPUID) == 0


def test_cpuid_page_with_too_many_entries_or_an_unknown_leaf():
    from svmsim.sev import snp_cpuid
    p = SnpPlatform()
    g = p.new_guest()
    page = snp_cpuid.pack_table([(0x8FFFFFFF, 0, 1, 2, 3, 4)])
    spa = g.pre_guest(0x9000, page)
    assert g.update(spa, PageType.CPUID) == S.INVALID_PARAM
    assert snp_cpuid.unpack_table(p.bus.read_bytes(spa, 0x1000))[0][4:8] == (0, 0, 0, 0)
    spa = g.pre_guest(0xA000, (65).to_bytes(4, "little"))
    assert g.update(spa, PageType.CPUID) == S.INVALID_PARAM


def test_secrets_page_holds_four_vmpcks_the_host_cannot_read():
    p, g = launched_guest()
    page = g.private(0x3000)
    s = A.unpack("secrets", page)
    keys = [s[f"vmpck{i}"] for i in range(4)]
    assert s["version"] == A.SECRETS_VERSION and len(set(keys)) == 4 and all(any(k) for k in keys)
    assert s["fms"] == 0x00A00F11                                  # the processor's CPUID 1 EAX
    raw = p.bus.read_bytes(g.pages[0x3000], 0x1000)
    assert not any(k in raw for k in keys)


# ---------------------------------------------------------------- LAUNCH_FINISH and the ID block
def id_block_and_auth(ld, policy=POLICY, author=True, family=b"F" * 16, image=b"I" * 16, svn=7):
    from cryptography.hazmat.primitives.asymmetric import ec
    id_key, author_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    block = A.pack("id_block", ld=ld, family_id=family, image_id=image, version=1, guest_svn=svn,
                   policy=policy)
    raw_id = snp_crypto.pubkey_bytes(id_key.public_key())
    raw_author = snp_crypto.pubkey_bytes(author_key.public_key())
    auth = A.pack("id_auth", id_key_algo=1, auth_key_algo=1 if author else 0,
                  id_block_sig=snp_crypto.sign(id_key, block), id_key=raw_id,
                  id_key_sig=snp_crypto.sign(author_key, raw_id) if author else b"",
                  author_key=raw_author if author else b"")
    return block, auth, raw_id, raw_author


def finish_with_id(p, g, block, auth, flags=3):
    b, a = p.page(block), p.page(auth)
    return g.finish(id_block_paddr=b, id_auth_paddr=a, flags=flags)


def test_launch_finish_checks_the_id_block_and_records_it():
    p = SnpPlatform()
    g = p.new_guest()
    g.add(0x1000, b"code")
    ctx = p.fw.guests[g.gctx]
    block, auth, raw_id, raw_author = id_block_and_auth(ctx.ld)
    assert finish_with_id(p, g, block, auth) == 0
    assert ctx.id_key_digest == hashlib.sha384(raw_id).digest()
    assert ctx.author_key_digest == hashlib.sha384(raw_author).digest()
    assert (ctx.family_id, ctx.image_id, ctx.guest_svn, ctx.state) == (b"F" * 16, b"I" * 16, 7, 2)


@pytest.mark.parametrize("what,status", [("sig", S.BAD_SIGNATURE), ("author_sig", S.BAD_SIGNATURE),
                                         ("ld", S.BAD_MEASUREMENT), ("policy", S.POLICY_FAILURE),
                                         ("algo", S.INVALID_PARAM), ("auth_only", S.INVALID_PARAM)])
def test_launch_finish_id_block_failures(what, status):
    p = SnpPlatform()
    g = p.new_guest()
    g.add(0x1000, b"code")
    ld = p.fw.guests[g.gctx].ld
    block, auth, _, _ = id_block_and_auth(bytes(48) if what == "ld" else ld,
                                          policy=POLICY | 1 if what == "policy" else POLICY)
    auth = bytearray(auth)
    if what == "sig":
        auth[0x40] ^= 1
    elif what == "author_sig":
        auth[0x680] ^= 1
    elif what == "algo":
        auth[0] = 2
    assert finish_with_id(p, g, block, bytes(auth), flags=2 if what == "auth_only" else 3) == status
    assert p.fw.guests[g.gctx].state == A.SnpGuestState.LAUNCH


def test_guest_status_reports_policy_asid_and_state():
    p, g = launched_guest()
    hv, out = p.page(), p.fw_page()
    assert p.cmd(SnpCmd.GUEST_STATUS, "guest_status", gctx_paddr=g.gctx, address=hv) == S.INVALID_PAGE_STATE
    assert p.cmd(SnpCmd.GUEST_STATUS, "guest_status", gctx_paddr=g.gctx, address=out) == 0
    assert A.GUEST_STATUS.unpack(p.bus.read_bytes(out, A.GUEST_STATUS.size)) == (POLICY, ASID, 2, 0)


# ---------------------------------------------------------------- pages
def test_page_reclaim_states():
    p, g = launched_guest()
    fw = p.fw_page()
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=p.page()) == S.INVALID_PAGE_STATE      # hypervisor
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=p.m.rmp.base) == S.INVALID_PAGE_STATE  # the RMP
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=g.gctx) == S.INVALID_PAGE_STATE        # live context
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=g.pages[0x1000]) == S.INVALID_PAGE_STATE  # Guest-Valid
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=fw | 1) == S.INVALID_ADDRESS           # 2 MiB, unaligned
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=fw) == 0
    e = p.m.rmp.read(fw)
    assert (e.assigned, e.asid, e.immutable) == (True, 0, False)                          # Reclaim
    snp_host.rmpupdate(p.m, fw)
    pre = g.pre_guest(0x9000)
    assert p.cmd(SnpCmd.PAGE_RECLAIM, "page", paddr=pre) == 0                             # Pre-Guest


def test_page_unsmash_joins_512_consistent_entries():
    p = SnpPlatform()
    from svmsim.memory.rmp import RmpEntry
    base = 0x1000000
    for i in range(512):
        p.m.rmp.write(base + i * 0x1000, RmpEntry(True, 0, False, 0x400000 + i * 0x1000, 1, False, True,
                                                  [PERM_ALL, 0, 0, 0]))
    assert p.cmd(SnpCmd.PAGE_UNSMASH, "page", paddr=base + 0x1000) == S.INVALID_ADDRESS
    p.m.rmp.write(base + 0x5000, RmpEntry(True, 0, False, 0x400000, 1, False, True, [PERM_ALL, 0, 0, 0]))
    assert p.cmd(SnpCmd.PAGE_UNSMASH, "page", paddr=base) == S.INVALID_PAGE_STATE
    p.m.rmp.write(base + 0x5000, RmpEntry(True, 0, False, 0x405000, 1, False, True, [PERM_ALL, 0, 0, 0]))
    assert p.cmd(SnpCmd.PAGE_UNSMASH, "page", paddr=base) == 0
    e, at = p.m.rmp.governing(base + 0x7000)
    assert (at, e.page_size, e.gpa) == (base, 1, 0x400000)


# ---------------------------------------------------------------- debugging
def test_dbg_decrypt_and_encrypt_need_the_debug_policy():
    p, g = launched_guest()
    out = p.fw_page()
    assert p.cmd(SnpCmd.DBG_DECRYPT, "dbg", gctx_paddr=g.gctx, src_addr=g.pages[0x1000],
                 dst_addr=out) == S.POLICY_FAILURE
    p2, g2 = launched_guest(policy=POLICY | A.POLICY_DEBUG)
    out = p2.fw_page()
    assert p2.cmd(SnpCmd.DBG_DECRYPT, "dbg", gctx_paddr=g2.gctx, src_addr=g2.pages[0x1000],
                  dst_addr=p2.page()) == S.INVALID_PAGE_STATE
    assert p2.cmd(SnpCmd.DBG_DECRYPT, "dbg", gctx_paddr=g2.gctx, src_addr=g2.pages[0x1000],
                  dst_addr=out) == 0
    assert p2.bus.read_bytes(out, 100) == b"\x90" * 100
    src = p2.page(b"patched by the debugger")
    assert p2.cmd(SnpCmd.DBG_ENCRYPT, "dbg", gctx_paddr=g2.gctx, src_addr=src,
                  dst_addr=g2.pages[0x2000]) == 0
    assert g2.private(0x2000, 23) == b"patched by the debugger"
    assert p2.cmd(SnpCmd.DBG_DECRYPT, "dbg", gctx_paddr=g2.gctx, src_addr=p2.page(),
                  dst_addr=out) == S.INVALID_PAGE_OWNER


def test_legacy_activate_cannot_take_an_snp_asid():
    p = SnpPlatform()
    p.new_guest(asid=2)
    p.psp.init_platform()
    from svmsim.sev.crypto import GuestOwner
    handle = p.psp.launch_start(GuestOwner(1))
    assert p.psp.command(SevCmd.ACTIVATE, "activate", handle=handle, asid=2)[0] == S.ASID_OWNED


# ---------------------------------------------------------------- a launched guest runs
def test_a_guest_launched_by_the_amd_sp_runs_under_vmrun():
    """The rig's guest (code, page tables, GDT, IDT, stack) and its VMSA are
    handed to the AMD-SP in plaintext and launched page by page: VMRUN
    accepts the VMSA the firmware marked in the RMP (table 15-39), the
    guest runs from its encrypted pages with the key ACTIVATE loaded, and
    the hypervisor sees only ciphertext of what it wrote."""
    from esharness import EsRig, VMSA
    from svmharness import GUEST_CODE
    from svmsim.svm.exits import ExitCode
    r = EsRig(f"mov ecx, 0xC0010131\nrdmsr\nmov [{GUEST_CODE + 0x800:#x}], eax\nhlt", snp=True)
    pages = {spa: r.private(spa, 0x1000) for spa in range(0x400000, 0x700000, 0x1000)}
    vmsa = bytes(r.vmsa().mem.buf)
    m, bus = r.m, r.m.bus
    psp = Psp(m)
    psp.call(SnpCmd.INIT_EX, "init_ex", flags=A.INIT_EX_INIT_RMP)
    gctx = snp_host.firmware_page(m, 0x1F0000)
    psp.call(SnpCmd.GCTX_CREATE, "addr", address=gctx)
    psp.call(SnpCmd.LAUNCH_START, "launch_start", gctx_paddr=gctx, policy=POLICY)
    psp.call(SnpCmd.ACTIVATE, "activate", gctx_paddr=gctx, asid=1)
    for spa, plain in list(pages.items()) + [(VMSA, vmsa)]:
        bus.write_bytes(spa, plain)
        gpa, kind = (A.VMSA_GPA, PageType.VMSA) if spa == VMSA else (spa, PageType.NORMAL)
        snp_host.rmpupdate(m, spa, gpa, assigned=True, asid=1, immutable=True)
        psp.call(SnpCmd.LAUNCH_UPDATE, "launch_update", gctx_paddr=gctx,
                 flags=A.launch_update_flags(kind), address=spa)
    psp.call(SnpCmd.LAUNCH_FINISH, "launch_finish", gctx_paddr=gctx)
    assert bus.read_bytes(GUEST_CODE, 16) != pages[GUEST_CODE][:16]
    r.run()
    assert r.exitcode == ExitCode.HLT, r.cpu.svm.invalid[-1:] if r.cpu.svm.invalid else r.exitcode
    out = m.mem_engine.read(bus.read_bytes, GUEST_CODE + 0x800, 4, 1)
    assert int.from_bytes(out, "little") == 0b111                     # SEV, SEV-ES, SNP active


def test_launch_finish_accepts_an_id_block_made_by_snp_create_id_block(tmp_path):
    """sev-snp-measure's own ID block tool (snp-create-id-block) signs an ID
    block for the guest's digest; the firmware accepts it and records the
    key digests the tool prints."""
    idb = pytest.importorskip("sevsnpmeasure.id_block", reason="sev-snp-measure is not installed")
    import base64
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    keys = []
    for name in ("id", "author"):
        k = ec.generate_private_key(ec.SECP384R1())
        path = tmp_path / f"{name}.pem"
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        keys.append(str(path))
    p = SnpPlatform()
    g = p.new_guest()                                       # the tool's default policy is 0x30000
    g.add(0x1000, b"firmware")
    out = idb.snp_calc_id_block(p.fw.guests[g.gctx].ld, *keys)
    fields = dict(part.split("=", 1) for part in out.splitlines()[0].split(","))
    block, auth = base64.b64decode(fields["id-block"]), base64.b64decode(fields["id-auth"])
    assert finish_with_id(p, g, block, auth) == 0
    ctx = p.fw.guests[g.gctx]
    id_hash = base64.b64decode(out.splitlines()[1].split(": ")[1])
    author_hash = base64.b64decode(out.splitlines()[2].split(": ")[1])
    assert (ctx.id_key_digest, ctx.author_key_digest) == (id_hash, author_hash)
