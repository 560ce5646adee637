"""Bare-metal SEV-SNP guests of the reference VMM, end to end (issue 10
items 4 and 7; svmsim/vmm/snp_ghcb.py, tests/guests/lib/sev_snp.c).

* snp_attest: launched from its Multiboot file through the AMD-SP, it
  accepts its memory (page state changes over the GHCB, PVALIDATE), asks for
  an attestation report with its own REPORT_DATA (a guest message under
  VMPCK0, GUEST_REQUEST NAE event) and hands the report out; the report's
  MEASUREMENT is the launch digest the firmware chained, and its signature
  chain verifies (sev/snp_verify.py).
* snp_vmpl: a VMPL0 kernel grants pages to VMPL1 with RMPADJUST, creates a
  VMPL1 context (AP_CREATION) and runs it (RUN_VMPL); an RMPADJUST of
  VMPL0's own rights and VMPL1's read of a VMPL0-only page end as APM vol 2,
  15.36.7 and 15.36.10 say: FAIL_PERMISSION, #VMEXIT(NPF) with the RMP and
  VMPL bits.

The runs take a minute each on svmsim (every private access is checked
against the RMP and goes through the encryption engine): slow tests, one
run per module.
"""
import io
import re
import shutil

import pytest

import guestbuild
from svmsim.machine import Machine
from svmsim.sev import snp_report, snp_verify
from svmsim.vmm import Vmm, snp_demo
from svmsim.vmm.snp_ghcb import launch_snp
from svmsim.vmm.vmm import GUEST_BASE

GUEST_MEM = 8 << 20


def run_kernel(name, extra=()):
    kernel = str(guestbuild.build_guest(name, extra_sources=extra))
    out = io.BytesIO()
    vmm = Vmm(Machine(mem_size="64M", serial_out=out), guest_mem=GUEST_MEM)
    snp = launch_snp(vmm, kernel)
    result = vmm.run(timeout=900)
    return snp, result, out.getvalue().decode()


@pytest.fixture(scope="module")
def attest():
    """snp_attest as ``svmsim demo sev-snp`` runs it (svmsim/vmm/snp_demo.py)."""
    kernel = str(guestbuild.build_guest("snp_attest"))
    out, said = io.BytesIO(), []
    demo = snp_demo.run(kernel, Machine(mem_size=snp_demo.MACHINE_MEM, serial_out=out), said.append,
                        timeout=900)
    return demo, out.getvalue().decode(), said


@pytest.fixture(scope="module")
def vmpl():
    return run_kernel("snp_vmpl", extra=["snp_vmpl1.S"])


@pytest.mark.slow
def test_snp_guest_validates_its_memory_and_reports(attest):
    demo, text, said = attest
    snp = demo.snp
    assert demo.reason == "isa-debug-exit: guest wrote 0x0", (demo.reason, text)
    assert "SEV_STATUS 7, C-bit 47 (CPUID page: 47), VMPLs 4, running at VMPL0" in text
    assert re.search(r"validated 200000-[0-9a-f]+: 2 2M pages, \d+ 4K pages; every page written "
                     r"and read back", text)
    assert "secrets page: version 3, VMPCK0 present" in text
    assert "report data is mine: yes" in text
    assert "extended report: 3 certificates from the VMM" in text
    assert "derived key bound to the measurement: the same twice: yes, not all zero: yes" in text
    g = snp.server.requests
    assert g["MSR_PROTOCOL:PSC"] >= 18 and g["PSC"] >= 2
    assert g["EXT_GUEST_REQUEST"] == 1 and g["GUEST_REQUEST"] == 2       # the report; two keys
    assert g["MSR_PROTOCOL:REG_GPA"] == 1
    # The RMP after the run: accepted pages validated; the GHCB pages shared.
    rmp = snp.launcher.vmm.m.rmp
    head = rmp.read(GUEST_BASE + 0x200000)
    assert head.assigned and head.page_size == 1 and head.validated and head.gpa == 0x200000
    ghcb = snp.server.registered[0, 0]
    assert not rmp.read(GUEST_BASE + ghcb).assigned


@pytest.mark.slow
def test_report_measurement_is_the_launch_digest_and_its_chain_verifies(attest):
    """MEASUREMENT is what the AMD-SP chained from the pages the VMM handed it
    (SNP ABI, LAUNCH_UPDATE's PAGE_INFO); the report verifies against the
    VCEK whose chain reaches svmsim's ARK; REPORT_DATA is the guest's."""
    demo, text, said = attest
    snp, report = demo.snp, demo.report
    gpa = int(re.search(r"report handed out at gPA ([0-9a-f]+)", text).group(1), 16)
    assert gpa == snp_demo.outbox_gpa(snp.launcher.path)
    fields = snp_report.parse(report)
    assert fields["measurement"] == snp.launch_digest
    assert f"measurement {snp.launch_digest.hex()}" in text
    assert fields["report_data"] == snp_demo.REPORT_DATA and fields["vmpl"] == 0
    assert fields["policy"] == snp.launcher.policy
    # ... which the guest owner predicts from the kernel file with sev-snp-measure's GCTX.
    gctx_mod = pytest.importorskip("sevsnpmeasure.gctx", reason="sev-snp-measure is not installed")
    from svmsim.vmm.snp_kernel import loaded_regions, vmsa_from_vmcb
    from svmsim.vmm.vcpu_reset import vcpu_type
    owner = Vmm(Machine(mem_size="64M"), guest_mem=GUEST_MEM)
    owner.load_kernel(snp.launcher.path)
    g = gctx_mod.GCTX()
    for at, length in loaded_regions(snp.launcher.result.info):
        g.update_normal_pages(at, owner.m.bus.read_bytes(GUEST_BASE + at, length))
    g.update_cpuid_page(0x10000)
    g.update_secrets_page(0x11000)
    g.update_vmsa_page(vmsa_from_vmcb(owner.vmcb, owner.gprs, vcpu_type("EPYC-v4").signature, 1))
    assert g.ld() == fields["measurement"]
    assert demo.certs.startswith(snp.server.certs)       # the table came with the report
    verdict = snp_verify.verify(report, demo.certs)
    assert verdict.ok, verdict.checks
    tampered = bytearray(report)
    tampered[0x90] ^= 1
    assert not snp_verify.verify(bytes(tampered), demo.certs).ok


@pytest.mark.slow
def test_the_demo_prints_the_fields_and_every_check_passes(attest):
    demo, text, said = attest
    assert demo.ok, demo.checks
    names = [what for what, _ in demo.checks]
    assert "MEASUREMENT is the launch digest" in names
    assert "the report's signature verifies with the VCEK" in names
    if shutil.which("openssl"):
        assert any(n.startswith("openssl dgst -sha384 -verify") for n in names)
    assert any(line.strip().startswith("measurement ") for line in said)
    assert any(line.strip().startswith("chip_id ") for line in said)


@pytest.mark.slow
def test_vmpl1_runs_with_the_rights_vmpl0_gave_it(vmpl):
    snp, result, text = vmpl
    for what in ("code", "data", "read-only page", "VMSA page"):
        assert re.search(rf"RMPADJUST {re.escape(what)} [0-9a-f]+ for VMPL1, .*: 0\n", text), what
    assert "RMPADJUST of VMPL0's own rights: 2" in text          # FAIL_PERMISSION
    assert re.search(r"AP creation of vCPU 0 at VMPL1, VMSA at [0-9a-f]+: 0", text)
    assert "back at VMPL0 (0): VMPL1 wrote 314c504d and copied 64616572 from its read-only page" in text
    services = snp.server.services.vcpu(0)
    assert set(services.vmsas) == {0, 1}
    vmsa = services.vmsas[1]
    e = snp.launcher.vmm.m.rmp.read(vmsa)
    assert e.vmsa and e.assigned and not e.immutable


@pytest.mark.slow
def test_vmpl1_is_refused_a_vmpl0_page_with_npf_vmpl(vmpl):
    """15.36.10: a VMPL permission check failure is #VMEXIT(NPF) with
    EXITINFO1 bit 31 (RMP) and bit 36 (VMPL); the data never reaches VMPL1."""
    snp, result, text = vmpl
    target = int(re.search(r"only VMPL0 may read \(([0-9a-f]+)\)", text).group(1), 16)
    at_vmpl, info1, gpa = snp.server.npf
    assert at_vmpl == 1 and gpa == target
    assert info1 >> 31 & 1 and info1 >> 36 & 1 and info1 >> 34 & 1 and not info1 >> 1 & 1
    assert result.reason.startswith("#VMEXIT(NPF) at VMPL1") and "VMPL" in result.reason
    assert "VMPL1 came back" not in text


def test_demo_sev_snp_runs_snp_attest_through_snp_demo(monkeypatch, capsys):
    """The command line's wiring only (the run itself is the slow tests'):
    `svmsim demo sev-snp` builds snp_attest, hands it to snp_demo.run and
    passes or fails on its verdict."""
    from svmsim import cli, guestkit
    assert cli.DEMOS["sev-snp"][0] == "snp_attest" and guestkit.DEMO_KERNELS["snp_attest"] == "c"
    seen = []

    def fake_run(kernel, machine, say, timeout=None):
        seen.append(kernel)
        say("the relying party's checks:")
        return snp_demo.DemoResult(None, "isa-debug-exit: guest wrote 0x0", report=b"report",
                                    checks=[("check", ok)])

    monkeypatch.setattr(snp_demo, "run", fake_run)
    ok = True
    assert cli.main(["demo", "sev-snp"]) == 0 and seen[0].endswith(".elf")
    assert "svmsim demo: PASS" in capsys.readouterr().err
    ok = False
    assert cli.main(["demo", "sev-snp"]) == 1
    assert "svmsim demo: FAIL" in capsys.readouterr().err


@pytest.mark.slow
def test_smp_as_an_snp_guest_starts_its_ap_by_ap_creation():
    """An SNP guest's AP starts from a VMSA the guest built (GHCB AP
    creation, 4.1.9; VMRUN checks it as table 15-39 says), not from
    INIT-SIPI-SIPI; the smp kernel prints what it printed on QEMU."""
    kernel = str(guestbuild.build_guest("smp"))
    out = io.BytesIO()
    vmm = Vmm(Machine(mem_size="128M", serial_out=out, smp=2), vcpus=2, guest_mem=GUEST_MEM)
    snp = launch_snp(vmm, kernel)
    result = vmm.run(timeout=1200)
    assert out.getvalue() == guestbuild.expected_transcript("smp"), out.getvalue().decode()
    assert result.ghcb["AP_CREATION"] == 1 and result.ghcb["MSR_PROTOCOL:REG_GPA"] == 2
    ap_vmsa = snp.server.services.vcpu(1).vmsas[0]
    e = vmm.m.rmp.read(ap_vmsa)
    assert e.vmsa and e.assigned and e.asid == vmm.asid
