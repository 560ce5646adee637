"""The reference VMM's GHCB server for SEV-SNP guests (svmsim/vmm/snp_ghcb.py;
GHCB spec 56421, 2.3 and 4.1.6-4.1.13), request by request: the guest's side
is written into guest memory and the GHCB MSR as a guest leaves them at
VMGEXIT, then the server handles the #VMEXIT.  tests/test_snp_guest.py runs
real guests against it."""
import struct

import pytest

import guestbuild
from svmsim.machine import Machine
from svmsim.sev import ghcb as G, snp_report
from svmsim.sev.ghcb import GhcbView, MsrProto, NaeExit, PscOp
from svmsim.sev.snp_guest import SnpGuestDevice, SnpGuestError, parse_cert_table, VCEK_GUID
from svmsim.svm.exits import ExitCode
from svmsim.vmm import Vmm
from svmsim.vmm.snp_ghcb import SnpGhcbServer
from svmsim.vmm.snp_kernel import SnpKernelLauncher
from svmsim.vmm.vmm import GUEST_BASE

GHCB_GPA, REQ_GPA, RSP_GPA, CERTS_GPA = 0x600000, 0x601000, 0x602000, 0x603000


@pytest.fixture
def guest():
    kernel = str(guestbuild.build_guest("attack_target", kind="asm"))
    vmm = Vmm(Machine(mem_size="64M"), guest_mem=8 << 20)
    launcher = SnpKernelLauncher(vmm, kernel)
    r = launcher.run()
    server = SnpGhcbServer(vmm, launcher)
    server.attach([r.vmsa_spa])
    return vmm, launcher, server


def vmgexit(vmm, server, msr):
    """The guest executed VMGEXIT with ``msr`` in the GHCB MSR; the server's
    stop reason (None: resume) and the GHCB MSR it leaves."""
    v = vmm.vcpus[0]
    v.vmcb["EXITCODE"], v.vmcb["GHCB_GPA"] = ExitCode.VMGEXIT, msr
    return server.handle_exit(v), v.vmcb["GHCB_GPA"]


def register(vmm, server, gpa=GHCB_GPA):
    stop, answer = vmgexit(vmm, server, G.msr_request(MsrProto.REG_GPA_REQ, gpa >> 12))
    assert stop is None and answer == G.msr_request(MsrProto.REG_GPA_RESP, gpa >> 12)


def nae(vmm, server, code, info1=0, info2=0, scratch=None, buffer=b"", **regs):
    """A NAE event in the GHCB page; the page as the server left it."""
    page = bytearray(4096)
    g = GhcbView(page)
    g["SW_EXIT_CODE"], g["SW_EXIT_INFO_1"], g["SW_EXIT_INFO_2"] = code, info1, info2
    g.set_valid("SW_EXIT_CODE", "SW_EXIT_INFO_1", "SW_EXIT_INFO_2")
    if scratch is not None:
        g["SW_SCRATCH"] = scratch
        g.set_valid("SW_SCRATCH")
    for name, value in regs.items():
        g[name] = value
        g.set_valid(name)
    page[G.SHARED_BUFFER:G.SHARED_BUFFER + len(buffer)] = buffer
    g["PROTOCOL_VERSION"] = 2
    vmm.m.bus.write_bytes(GUEST_BASE + GHCB_GPA, bytes(page))
    stop, _ = vmgexit(vmm, server, GHCB_GPA)
    assert stop is None, stop
    return GhcbView(bytearray(vmm.m.bus.read_bytes(GUEST_BASE + GHCB_GPA, 4096)))


def test_hv_features_advertise_snp_ap_creation_and_multi_vmpl(guest):
    vmm, _, server = guest
    _, answer = vmgexit(vmm, server, G.msr_request(MsrProto.HV_FEATURES_REQ))
    assert G.msr_code(answer) == MsrProto.HV_FEATURES_RESP
    assert G.msr_data(answer) == G.HvFeature.SNP | G.HvFeature.SNP_AP_CREATION | G.HvFeature.SNP_MULTI_VMPL


def test_msr_protocol_page_state_change(guest):
    """2.3.1: PSC request 014h; the answer 015h with error 0; the page is the
    guest's and not validated (15.36.6)."""
    vmm, _, server = guest
    stop, answer = vmgexit(vmm, server, G.psc_request(0x400, PscOp.PRIVATE))
    assert stop is None and answer == G.msr_request(MsrProto.PSC_RESP, 0)
    e = vmm.m.rmp.read(GUEST_BASE + 0x400000)
    assert e.assigned and e.gpa == 0x400000 and not e.validated
    _, answer = vmgexit(vmm, server, G.psc_request(0x400, PscOp.SHARED))
    assert answer == G.msr_request(MsrProto.PSC_RESP, 0) and not vmm.m.rmp.read(GUEST_BASE + 0x400000).assigned
    _, answer = vmgexit(vmm, server, G.psc_request(0x900, PscOp.PRIVATE))      # beyond guest RAM
    assert G.msr_code(answer) == MsrProto.PSC_RESP and answer >> 32 != 0


def test_psc_nae_event_processes_the_descriptor(guest):
    """4.1.6: the descriptor in the GHCB's shared buffer; cur_entry advanced
    past end_entry, each entry's cur_page set, SW_EXITINFO2 = 0."""
    vmm, _, server = guest
    register(vmm, server)
    entries = [0x200 << 12 | PscOp.PRIVATE << 52 | 1 << 56, 0x500 << 12 | PscOp.PRIVATE << 52]
    desc = struct.pack("<HHI", 0, 1, 0) + b"".join(struct.pack("<Q", e) for e in entries)
    g = nae(vmm, server, NaeExit.PSC, scratch=GHCB_GPA + G.SHARED_BUFFER, buffer=desc)
    assert g["SW_EXIT_INFO_1"] == 0 and g["SW_EXIT_INFO_2"] == 0
    out = vmm.m.bus.read_bytes(GUEST_BASE + GHCB_GPA + G.SHARED_BUFFER, len(desc))
    assert struct.unpack_from("<H", out)[0] == 2
    assert struct.unpack_from("<Q", out, 8)[0] & 0xFFF == 512
    head = vmm.m.rmp.read(GUEST_BASE + 0x200000)
    assert head.assigned and head.page_size == 1 and not head.validated
    assert vmm.m.rmp.read(GUEST_BASE + 0x500000).assigned


def test_a_ghcb_other_than_the_registered_one_stops_the_guest(guest):
    vmm, _, server = guest
    register(vmm, server)
    stop, _ = vmgexit(vmm, server, GHCB_GPA + 0x1000)
    assert "not the registered" in stop


def test_guest_requests_reach_the_amd_sp_through_the_ghcb(guest):
    """4.1.8: the sealed request in one shared page, the answer in another;
    the report is the launch's, and an extended request returns the
    certificate table (too small a buffer: INVALID_LEN, RBX = pages needed)."""
    vmm, launcher, server = guest
    register(vmm, server)
    bus = vmm.m.bus

    def transport(message, certs_len):
        bus.write_bytes(GUEST_BASE + REQ_GPA, bytes(message).ljust(4096, b"\0"))
        if certs_len is None:
            g = nae(vmm, server, NaeExit.GUEST_REQUEST, REQ_GPA, RSP_GPA)
            return g["SW_EXIT_INFO_2"], bus.read_bytes(GUEST_BASE + RSP_GPA, 4096), b""
        g = nae(vmm, server, NaeExit.EXT_GUEST_REQUEST, REQ_GPA, RSP_GPA, RAX=CERTS_GPA,
                RBX=certs_len // 4096)
        if g["SW_EXIT_INFO_2"] >> 32:
            return g["SW_EXIT_INFO_2"], b"", g["RBX"] * 4096
        return (g["SW_EXIT_INFO_2"], bus.read_bytes(GUEST_BASE + RSP_GPA, 4096),
                bus.read_bytes(GUEST_BASE + CERTS_GPA, certs_len))

    m = vmm.m
    secrets = m.mem_engine.read(m.bus.read_bytes, launcher.secrets_spa, 4096, launcher.asid)
    dev = SnpGuestDevice(secrets, transport)
    report = dev.get_report(b"\x42" * 64)
    fields = snp_report.parse(report)
    assert fields["measurement"] == bytes(m.amd_sp.snp.guests[launcher.gctx].ld)
    assert fields["report_data"] == b"\x42" * 64
    with pytest.raises(SnpGuestError) as e:
        dev.get_ext_report(b"\x43" * 64, certs_len=4096)
    assert e.value.vmm_error == 1 and e.value.certs_len > 4096
    report, certs = dev.get_ext_report(b"\x43" * 64, certs_len=e.value.certs_len)
    assert VCEK_GUID in parse_cert_table(certs)
    assert snp_report.parse(report)["report_data"] == b"\x43" * 64
    # The refused extended request is re-sent as a plain one (the AMD-SP must
    # see every sequence number, as Linux's sev-guest driver does).
    assert server.requests["GUEST_REQUEST"] == 2 and server.requests["EXT_GUEST_REQUEST"] == 2


def test_ap_creation_and_run_vmpl(guest):
    """4.1.9 and 4.1.13: a VMSA for (vCPU 0, VMPL1), then RUN_VMPL 1 points
    the VMCB at it, each VMPL keeping its GHCB MSR; an unknown VMPL is
    refused as malformed input."""
    vmm, _, server = guest
    register(vmm, server)
    v = vmm.vcpus[0]
    vmpl0 = v.vmcb["VMSA_PA"]
    g = nae(vmm, server, NaeExit.AP_CREATION, 1 << 16 | G.ApCreation.CREATE, 0x301000, RAX=1)
    assert g["SW_EXIT_INFO_1"] == 0 and v.vmcb["VMSA_PA"] == vmpl0
    g = nae(vmm, server, NaeExit.RUN_VMPL, 2)
    assert g["SW_EXIT_INFO_1"] == G.Response.MALFORMED_INPUT
    g = nae(vmm, server, NaeExit.RUN_VMPL, 1)
    assert g["SW_EXIT_INFO_1"] == 0 and v.vmcb["VMSA_PA"] == GUEST_BASE + 0x301000
    assert server.vmpl(v) == 1 and v.vmcb["GHCB_GPA"] == 0
    stop, answer = vmgexit(vmm, server, G.vmpl_request(0))            # VMPL1 hands back
    assert stop is None and v.vmcb["VMSA_PA"] == vmpl0 and answer == GHCB_GPA
    assert server.vmpl(v) == 0
