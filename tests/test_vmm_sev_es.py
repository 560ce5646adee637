"""The reference VMM runs SEV-ES guests (issue 9, items 5 and 7): bare-metal
kernels written for QEMU's conventions, launched through the AMD-SP with one
VMSA per vCPU, their port I/O, CPUID and MSRs going through the GHCB
(svmsim/vmm/sev_es.py, GHCB spec 56421) and the runtime's #VC handler
(tests/guests/lib/sev_es.c), print what QEMU printed for them."""
import io

import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.sev.api import PAGE_SIZE
from svmsim.svm.vmsa import VmsaView
from svmsim.vmm import Vmm
from svmsim.sev.ghcb import GhcbError, GhcbView
from svmsim.vmm.sev_es import GhcbServer, launch_es


def boot_es(name, append=None, smp=None, kernel=None):
    out = io.BytesIO()
    smp = smp or gb.KERNEL_RUNS.get(name, {}).get("smp", 1)
    m = Machine(mem_size="128M", serial_out=out, smp=smp)
    vmm = Vmm(m, vcpus=smp)
    append = gb.KERNEL_RUNS[name]["append"] if append is None else append
    launch = launch_es(vmm, str(kernel or gb.build_guest(name)), append)
    return vmm, launch, vmm.run(), out.getvalue().decode(errors="replace")


def test_hello_as_an_sev_es_guest_prints_what_qemu_printed():
    vmm, launch, result, out = boot_es("hello")
    assert out == gb.expected_transcript("hello").decode()
    assert vmm.m.stop_status == gb.STATUS_PASS, result.reason
    assert launch.verified and result.guest_rip is None
    # Only automatic exits reach the hypervisor: every byte of COM1 was an
    # IOIO NAE event through the GHCB, CPUID before the GHCB through the MSR protocol.
    assert set(result.exits) == {"VMGEXIT"}
    assert result.ghcb["IOIO"] > len(out) and result.ghcb["MSR_PROTOCOL:CPUID"] >= 4
    assert result.ghcb["MSR_PROTOCOL:SEV_INFO"] == 1 and result.ghcb["AP_JUMP_TABLE"] == 1


def test_the_hypervisor_reads_ciphertext_in_the_vmsa():
    """The VMSA page after the run: the guest's key decrypts it to the state
    the guest left (RIP past its last VMGEXIT, in the kernel's image); the
    hypervisor's plain read of the same page shows other bytes."""
    vmm, launch, result, out = boot_es("hello")
    m, spa = vmm.m, launch.vmsa_spas[0]
    plain = VmsaView(bytearray(m.mem_engine.read(m.bus.read_bytes, spa, PAGE_SIZE, vmm.asid)))
    raw = VmsaView(bytearray(m.bus.read_bytes(spa, PAGE_SIZE)))
    assert 0x100000 <= plain["RIP"] < 0x200000 and plain["CR3"] != 0
    assert (raw["RIP"], raw["CR3"], raw["RSP"]) != (plain["RIP"], plain["CR3"], plain["RSP"])


@pytest.mark.slow
def test_smp_as_an_sev_es_guest_starts_its_ap_through_the_jump_table():
    """The AP starts from its launched reset-state VMSA at the kernel's SEV-ES
    reset block, far-jumps through the AP jump table the BSP set and read back
    (NAE 8000_0005h), and parks in AP reset hold (8000_0004h) at the end."""
    vmm, launch, result, out = boot_es("smp")
    assert out == gb.expected_transcript("smp").decode()
    assert vmm.m.stop_status == gb.STATUS_PASS, result.reason
    assert launch.ap_eip is not None and result.ghcb["AP_JUMP_TABLE"] == 2
    assert result.ghcb["AP_HLT_LOOP"] == 1 and vmm.vcpus[1].state == "held"


# ---------------------------------------------------------------- every NAE event
def without_sev_lines(text):
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("[sev] "))


@pytest.mark.slow
def test_every_nae_event_goes_through_the_ghcb():
    """tests/guests/sev_es_nae.c as an SEV-ES guest: each NAE instruction
    raises #VC with its exit code as the error code (the kernel prints the
    code its #VC handler saw), the GHCB server answers each event, and the
    kernel prints what QEMU printed for it (the lines tagged [sev] aside)."""
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out, smp=2, devices=("edu",))
    vmm = Vmm(m, vcpus=2)
    launch_es(vmm, str(gb.build_guest("sev_es_nae")), "")
    result = vmm.run()
    text = out.getvalue().decode(errors="replace")
    assert m.stop_status == gb.STATUS_PASS, (result.reason, text)
    assert without_sev_lines(text) == gb.expected_transcript("sev_es_nae").decode()
    codes = {line.split(":")[0][6:]: line.rsplit(" ", 1)[1] for line in text.splitlines()
             if line.startswith("[sev] ") and "#VC error code" in line}
    assert codes == {"CPUID": "0x72", "IN byte": "0x7b", "REP INSL": "0x7b", "REP OUTSB": "0x7b",
                     "RDMSR": "0x7c", "WRMSR": "0x7c", "RDTSCP": "0x87", "RDTSC": "0x6e",
                     "RDPMC": "0x6f", "WBINVD": "0x89", "INVD": "0x76", "MOV DR7, reg": "0x37",
                     "MOV reg, DR7": "0x27", "VMMCALL": "0x81", "MONITOR": "0x8a", "MWAIT": "0x8b",
                     "MMIO read": "0x400", "MMIO write": "0x400"}
    assert "[sev] RDMSR c0011fffh: #GP, raised at the GHCB server's request\n" in text
    assert "[sev] VMMCALL 99h: -1000 (-KVM_ENOSYS)\n" in text
    for name in ("CPUID", "IOIO", "MSR", "VMMCALL", "MMIO_READ", "MMIO_WRITE", "RDTSC", "RDTSCP",
                 "RDPMC", "WBINVD", "INVD", "MONITOR", "MWAIT", "DR7_READ", "DR7_WRITE",
                 "AP_JUMP_TABLE", "AP_HLT_LOOP", "MSR_PROTOCOL:AP_RESET_HOLD",
                 "MSR_PROTOCOL:SEV_INFO", "MSR_PROTOCOL:CPUID", "MSR_PROTOCOL:HV_FEATURES"):
        assert result.ghcb.get(name), name
    # The only exits: VMGEXIT, and the #NPF that made the edu BAR an MMIO page.
    assert set(result.exits) == {"VMGEXIT", "NPF"} and vmm.es.malformed == []


# ---------------------------------------------------------------- a hypervisor that tampers
def test_a_vmsa_the_hypervisor_changed_fails_vmrun_with_the_integrity_rule():
    """Between two VMRUNs the hypervisor flips one bit of the VMSA's
    ciphertext (where RIP is): the next VMRUN is #VMEXIT(VMEXIT_INVALID)
    naming SEV_ES_VMSA_INTEGRITY (APM 15.35.8), and the VMM reports it."""
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    vmm = Vmm(m)
    launch = launch_es(vmm, str(gb.build_guest("hello")), "")
    assert vmm.run(max_exits=30).reason == "30 exits"
    rip = launch.vmsa_spas[0] + 0x178
    m.bus.write_bytes(rip, bytes([m.bus.read_bytes(rip, 1)[0] ^ 1]))
    result = vmm.run()
    assert result.exits["INVALID"] == 1 and "SEV_ES_VMSA_INTEGRITY" in result.reason


class DroppingServer(GhcbServer):
    """A hypervisor that answers CPUID without marking RBX valid."""

    def _cpuid(self, r):
        super()._cpuid(r)
        del r.outputs["RBX"]


class UsageServer(GhcbServer):
    """A hypervisor that changes the guest's GHCB before reading it: the
    usage field is no longer the standard format."""

    def _ghcb_request(self, vcpu, gpa):
        self._write_guest(gpa + 0xFFC, (1).to_bytes(4, "little"))
        return super()._ghcb_request(vcpu, gpa)


@pytest.mark.parametrize("server, why", [
    (DroppingServer, None),
    (UsageServer, "GHCB usage 0x1 is not the standard format 0"),
])
def test_a_ghcb_the_hypervisor_tampered_with_makes_the_guest_terminate(server, why):
    """GHCB spec 2.2: the guest uses only results whose valid bit is set, and
    ends itself (MSR-protocol TERMINATE, reason set 0) when the hypervisor's
    answer is unusable or says its request was malformed; the VMM stops the
    run with that reason, never with a Python exception."""
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    vmm = Vmm(m)
    launch_es(vmm, str(gb.build_guest("hello")), "", server_class=server)
    result = vmm.run()
    assert result.reason.startswith("the SEV-ES guest asked to terminate: reason set 0, code 0")
    assert result.ghcb["MSR_PROTOCOL:TERM"] == 1 and vmm.es.terminated == (0, 0)
    if why:
        assert why in result.reason and vmm.es.malformed[0][2] == "INVALID_USAGE"


def _exit_with(vmm, ghcb_msr, page=None, gpa=0x300000):
    """The GHCB server's answer to a VMGEXIT with GHCB MSR ``ghcb_msr`` (a
    GHCB ``page`` written at ``gpa`` first)."""
    from svmsim.vmm.vmm import GUEST_BASE
    v = vmm.vcpus[0]
    if page is not None:
        vmm.m.bus.write_bytes(GUEST_BASE + gpa, bytes(page))
    v.vmcb["EXITCODE"], v.vmcb["GHCB_GPA"] = 0x403, ghcb_msr
    reason = vmm.es.handle_exit(v)
    return reason, GhcbView(bytearray(vmm.m.bus.read_bytes(GUEST_BASE + gpa, 4096)))


def _page(code, info1=0, info2=0, **regs):
    g = GhcbView(bytearray(4096))
    g["SW_EXIT_CODE"], g["SW_EXIT_INFO_1"], g["SW_EXIT_INFO_2"] = code, info1, info2
    g.set_valid("SW_EXIT_CODE", "SW_EXIT_INFO_1", "SW_EXIT_INFO_2")
    for name, value in regs.items():
        g[name] = value
        g.set_valid(name)
    g["PROTOCOL_VERSION"] = 2
    return g.buf


@pytest.fixture(scope="module")
def es_vmm():
    vmm = Vmm(Machine(mem_size="64M", serial_out=io.BytesIO()))
    launch_es(vmm, str(gb.build_guest("hello")), "")
    return vmm


@pytest.mark.parametrize("page, error", [
    (dict(code=0x72), "MISSING_INPUT"),                                  # CPUID without RAX/RCX
    (dict(code=0x12345), "INVALID_EVENT"),                               # no such event
    (dict(code=0x7B, info1=0x3F8 << 16 | 1 << 4 | 1 << 2, info2=4, SW_SCRATCH=0x7FFFF000),
     "INVALID_SCRATCH_AREA"),                                            # OUTSB from beyond RAM
    (dict(code=0x80000002, info1=0x1000, info2=4, SW_SCRATCH=0x300800), "INVALID_INPUT"),  # MMIO to RAM
    (dict(code=0x80000005, info1=7), "INVALID_INPUT"),                   # AP jump table op 7
])
def test_malformed_requests_get_the_ghcb_error(es_vmm, page, error):
    """Each malformed request is answered SW_EXITINFO1 = 2 with the GHCB
    error in SW_EXITINFO2 (both valid), and the run goes on."""
    raw = _page(page.pop("code"), page.pop("info1", 0), page.pop("info2", 0), **page)
    reason, g = _exit_with(es_vmm, 0x300000, raw)
    assert reason is None
    assert (g["SW_EXIT_INFO_1"], GhcbError(g["SW_EXIT_INFO_2"]).name) == (2, error)
    assert g.is_valid("SW_EXIT_INFO_1") and g.is_valid("SW_EXIT_INFO_2")


def test_unanswerable_vmgexits_stop_the_guest_with_a_reason(es_vmm):
    reason, _ = _exit_with(es_vmm, 0x7FFF0000)                           # GHCB beyond guest RAM
    assert "not a page of guest RAM" in reason
    reason, _ = _exit_with(es_vmm, 0xABC)                                # no such MSR-protocol code
    assert "not a request of the MSR protocol" in reason


def test_msr_protocol_answers(es_vmm):
    from svmsim.sev import ghcb as G
    v = es_vmm.vcpus[0]
    _exit_with(es_vmm, G.MsrProto.SEV_INFO_REQ)
    assert v.vmcb["GHCB_GPA"] == G.sev_info(47)
    _exit_with(es_vmm, G.cpuid_request(0x80000000, 0))
    assert v.vmcb["GHCB_GPA"] == 0x8000001F << 32 | G.MsrProto.CPUID_RESP
    _exit_with(es_vmm, G.MsrProto.PREF_GPA_REQ)
    assert v.vmcb["GHCB_GPA"] == G.msr_request(G.MsrProto.PREF_GPA_RESP, G.GPA_NONE)
    _exit_with(es_vmm, G.msr_request(G.MsrProto.REG_GPA_REQ, 0x300))
    assert v.vmcb["GHCB_GPA"] == G.msr_request(G.MsrProto.REG_GPA_RESP, 0x300) and v.ghcb_registered == 0x300000
    reason, _ = _exit_with(es_vmm, 0x400000)                             # not the registered GHCB
    assert "not the registered" in reason
    _exit_with(es_vmm, G.msr_request(G.MsrProto.REG_GPA_REQ, 0xFFFFFF))
    assert G.msr_data(v.vmcb["GHCB_GPA"]) == G.GPA_NONE
    v.ghcb_registered = None
    _exit_with(es_vmm, G.MsrProto.HV_FEATURES_REQ)
    assert v.vmcb["GHCB_GPA"] == G.MsrProto.HV_FEATURES_RESP
    reason, _ = _exit_with(es_vmm, G.term_request(0, 1))
    assert reason.startswith("the SEV-ES guest asked to terminate: reason set 0, code 1 (PROTOCOL_UNSUPPORTED)")


# ---------------------------------------------------------------- the demo
@pytest.mark.slow
def test_demo_sev_es_command():
    """`svmsim demo sev-es --trace vmexit,exceptions`: the verified measurement,
    the guest's output, its registers as the hypervisor reads them (ciphertext)
    beside the values the CPU runs it with, and one NAE round trip traced:
    #VC(7Bh) at the OUT, VMGEXIT, the server's answer, VMRUN."""
    import re
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "svmsim", "demo", "sev-es", "--trace",
                        "vmexit,exceptions"], capture_output=True, timeout=600)
    err = p.stderr.decode()
    assert p.returncode == 0, err[-600:]
    assert p.stdout.decode() == gb.expected_transcript("hello").decode()
    assert re.search(r"launch measurement [0-9a-f]{64} ", err) and "expects: verified" in err
    rows = dict(re.findall(r"svmsim demo:   (RIP|CR3) +(0x[0-9a-f]+) +0x[0-9a-f]+", err))
    assert set(rows) == {"RIP", "CR3"}
    trip = re.search(r"fault at rip=\S+ <put_str\+\S+> \(out dx, al\): #VC\(0x7b\).*\n"
                     r"\[cpu0\] #VMEXIT VMGEXIT \(0x403\).*\n"
                     r"\[vmm\] vCPU0 GHCB IOIO: OUT port 0x3f8 <- 0x68\n"
                     r"\[cpu0 guest\] VMRUN ", err)
    assert trip, err[:3000]
    assert "svmsim demo: PASS" in err


# ---------------------------------------------------------------- migration
@pytest.mark.slow
def test_a_running_es_guest_migrates_to_another_machine_with_its_vmsa():
    """`hello` runs as an SEV-ES guest on machine A until it has printed part
    of its output; A's AMD-SP sends its private memory (SEND_UPDATE_DATA) and
    the VMSA the CPU sealed at the last #VMEXIT (SEND_UPDATE_VMSA) to machine
    B's (RECEIVE_START .. RECEIVE_FINISH, under B's own keys); the VMM copies
    the pages the guest shares (its GHCBs) as they are, and its own GHCB
    state (the GHCB MSR in the VMCB, the AP jump table).  On B the guest
    carries on from the VMGEXIT it stopped at and prints the rest."""
    from elftools.elf.elffile import ELFFile
    from svmsim.sev.api import SevCmd as C
    from svmsim.vmm.psp import Psp
    from svmsim.vmm.vmm import GUEST_BASE
    from svmsim.vmm.snp_kernel import loaded_regions
    from test_sev_es_run import _receive, _send
    kernel = str(gb.build_guest("hello"))
    with open(kernel, "rb") as f:
        syms = ELFFile(f).get_section_by_name(".symtab")
        shared = [syms.get_symbol_by_name(n)[0]["st_value"] for n in ("__shared_start", "__shared_end")]

    out_a = io.BytesIO()
    a = Vmm(Machine(mem_size="64M", serial_out=out_a))
    launch = launch_es(a, kernel, "greeting=1 svmsim")
    end = max(gpa + n for gpa, n in loaded_regions(launch.info))    # image, .bss, Multiboot info
    assert a.run(max_exits=100).reason == "100 exits"
    printed = out_a.getvalue().decode()
    assert 0 < len(printed) < len(gb.expected_transcript("hello"))

    out_b = io.BytesIO()
    b = Vmm(Machine(mem_size="64M", serial_out=out_b))
    dst = Psp(b.m)
    dst.init_platform()
    vmsa = launch.vmsa_spas[0]
    stream = _send(Psp(a.m), launch.handle, dst, GUEST_BASE, end, vmsa)
    handle = _receive(dst, 0x5, stream, GUEST_BASE, vmsa)
    dst.call(C.ACTIVATE, "activate", handle=handle, asid=b.asid)
    b.m.bus.write_bytes(GUEST_BASE + shared[0], a.m.bus.read_bytes(GUEST_BASE + shared[0], shared[1] - shared[0]))
    server = GhcbServer(b)
    server.attach([vmsa])
    server.ap_jump_table = a.es.ap_jump_table
    b.vcpus[0].vmcb["GHCB_GPA"] = a.vcpus[0].vmcb["GHCB_GPA"]
    assert b.m.bus.read_bytes(vmsa, PAGE_SIZE) != a.m.bus.read_bytes(vmsa, PAGE_SIZE)   # B's key

    result = b.run()
    assert b.m.stop_status == gb.STATUS_PASS, result.reason
    assert printed + out_b.getvalue().decode() == gb.expected_transcript("hello").decode()
