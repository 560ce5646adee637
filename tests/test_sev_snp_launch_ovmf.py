"""The SEV-SNP launch of a firmware image (issue 10 item 7, OVMF part): the
reference VMM launches OVMF as QEMU does for sev-snp-guest, the simulated
AMD-SP chains the launch digest page by page from the pages it is handed,
and the MEASUREMENT in the guest's signed attestation report equals what
``sev-snp-measure --mode snp`` computes for the same image, vCPU count,
vCPU type and guest features."""
import contextlib
import io
import shutil
import struct
import subprocess
import sys
from unittest import mock

import pytest

from svmsim.cli import main
from svmsim.sev import snp_report
from svmsim.vmm import ovmf
from svmsim.vmm.ovmf import OvmfImage
from svmsim.vmm.snp_launch import SnpFirmwareLauncher, host_ram_needed
from svmsim.vmm.vmm import GuestExit, Vmm
from test_sev_launch_ovmf import AP_EIP, DEBIAN_OVMF, make_image, needs_ovmf, table_entry

_DIGESTS: dict = {}


def snp_measure(path, vcpus=1, features=0x1, vcpu_type_name="EPYC-v4") -> bytes:
    """sev-snp-measure's command line, run in this process (cached)."""
    import hashlib
    argv = ["--mode", "snp", "--vcpus", str(vcpus), "--vcpu-type", vcpu_type_name,
            "--guest-features", hex(features), "--ovmf", str(path)]
    key = (hashlib.sha256(open(path, "rb").read()).digest(), tuple(argv))
    if key not in _DIGESTS:
        cli = pytest.importorskip("sevsnpmeasure.cli", reason="sev-snp-measure is not installed")
        out = io.StringIO()
        with mock.patch.object(sys, "argv", ["sev-snp-measure"] + argv), contextlib.redirect_stdout(out):
            assert cli.main() in (0, None)
        _DIGESTS[key] = bytes.fromhex(out.getvalue().strip())
    return _DIGESTS[key]


SECTIONS = [(0x800000, 0x2000, ovmf.SECTION_SNP_SEC_MEM), (0x802000, 0x1000, ovmf.SECTION_SNP_SECRETS),
            (0x803000, 0x1000, ovmf.SECTION_CPUID), (0x804000, 0x1000, ovmf.SECTION_SVSM_CAA),
            (0x805000, 0x3000, ovmf.SECTION_SNP_SEC_MEM)]


def make_snp_image(size=0x10000, sections=SECTIONS, seed=3):
    """A small image with OVMF's SEV-ES reset block and an ASEV metadata list."""
    header_at = 0x100
    asev = struct.pack("<4sIII", b"ASEV", 16 + 12 * len(sections), 1, len(sections))
    asev += b"".join(struct.pack("<III", *s) for s in sections)
    entries = [table_entry(str(ovmf.SEV_ES_RESET_BLOCK_GUID), struct.pack("<I", AP_EIP)),
               table_entry(str(ovmf.SEV_METADATA_GUID), struct.pack("<I", size - header_at))]
    image = bytearray(make_image(size, entries, seed))
    image[header_at:header_at + len(asev)] = asev
    return bytes(image)


def launch(path, vcpus=1, features=0x1, tamper=None):
    image = OvmfImage.from_file(str(path))
    from svmsim.machine import Machine
    m = Machine(mem_size=host_ram_needed(image.size, vcpus, Vmm.GUEST_MEM))
    launcher = SnpFirmwareLauncher(Vmm(m), image, vcpus, "EPYC-v4", guest_features=features)
    launcher.place()
    if tamper:
        tamper(launcher)
    launcher.start()
    launcher.update_image()
    launcher.update_metadata()
    launcher.update_vmsas()
    launcher.finish()
    report = launcher.attest(b"R" * 64)
    return launcher, report


@pytest.fixture
def snp_image(tmp_path):
    path = tmp_path / "snp.fd"
    path.write_bytes(make_snp_image())
    return path


@pytest.mark.parametrize("vcpus,features", [(1, 0x1), (2, 0x1), (4, 0x21), (3, 0x5)])
def test_small_image_report_measurement_matches_sev_snp_measure(snp_image, vcpus, features):
    launcher, report = launch(snp_image, vcpus, features)
    fields = snp_report.parse(report)
    assert fields["measurement"] == snp_measure(snp_image, vcpus, features)
    assert fields["report_data"] == b"R" * 64
    assert snp_report.verify(report, launcher.vcek_from_certs().public_key())


def test_what_the_vmm_hands_the_amd_sp(snp_image):
    """The image page by page as NORMAL, the metadata as ZERO / SECRETS /
    CPUID / ZERO pages, then a VMSA per vCPU at gPA FFFFFFFFF000h."""
    launcher, _ = launch(snp_image, 2)
    log = [name for name, _ in launcher.psp.log]
    n_image, n_meta = 0x10000 // 0x1000, sum(s[1] for s in SECTIONS) // 0x1000
    assert log[:4] == ["SNP_INIT_EX", "SNP_GCTX_CREATE", "SNP_LAUNCH_START", "SNP_ACTIVATE"]
    assert log.count("SNP_LAUNCH_UPDATE") == n_image + n_meta + 2
    m, r = launcher.vmm.m, launcher.result
    e = m.rmp.read(r.vmsa_spas[1])
    assert (e.vmsa, e.gpa, e.validated, e.asid) == (True, 0xFFFFFFFFF000, True, r.asid)
    assert m.rmp.read(r.image_spa).gpa == r.image_gpa
    assert m.bus.read_bytes(r.image_spa, 64) != snp_image.read_bytes()[:64]        # encrypted in place


def test_a_hypervisor_changing_the_image_changes_the_measurement(snp_image):
    def tamper(launcher):
        r = launcher.result
        launcher.vmm.m.bus.write_bytes(r.image_spa + 0x5000, b"\xcc")
    _, report = launch(snp_image, tamper=tamper)
    assert snp_report.parse(report)["measurement"] != snp_measure(snp_image)


def test_a_cpuid_page_the_firmware_corrects_fails_the_launch(snp_image):
    from svmsim.vmm import snp_launch
    real = snp_launch.cpuid_table

    def bad(machine, signature):
        page = bytearray(real(machine, signature))
        page[16 + 48 * 9 + 24:16 + 48 * 9 + 28] = (0xFFFFFFFF).to_bytes(4, "little")   # 8000_001F EAX
        return bytes(page)
    with mock.patch.object(snp_launch, "cpuid_table", bad), \
            pytest.raises(GuestExit, match=r"CPUID validation failed \(INVALID_PARAM\): leaf 0x8000001f.0 eax"):
        launch(snp_image)


def test_image_without_sev_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.fd"
    path.write_bytes(make_image())
    with pytest.raises(ovmf.OvmfError, match="no SEV metadata"):
        launch(path)


@needs_ovmf
@pytest.mark.parametrize("vcpus,features", [(1, 0x1), (4, 0x21)])
def test_debian_ovmf_report_measurement_matches_sev_snp_measure(vcpus, features):
    _, report = launch(DEBIAN_OVMF, vcpus, features)
    measurement = snp_report.parse(report)["measurement"]
    assert measurement == snp_measure(DEBIAN_OVMF, vcpus, features)
    if (vcpus, features) == (1, 0x1):             # the vector in sev-facts.md, recorded by hand
        assert measurement.hex() == ("11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75"
                                     "c6ff1703f540bd22a9beede8fe7a97e3")


@needs_ovmf
@pytest.mark.slow
@pytest.mark.parametrize("vcpus,features", [(2, 0x1), (8, 0x1), (16, 0x21), (64, 0x1)])
def test_debian_ovmf_more_vcpu_counts_and_features(vcpus, features):
    _, report = launch(DEBIAN_OVMF, vcpus, features)
    assert snp_report.parse(report)["measurement"] == snp_measure(DEBIAN_OVMF, vcpus, features)


# -- svmsim launch --mode snp ------------------------------------------------------------------------
def test_cli_snp_verifies_the_reports_measurement(snp_image, tmp_path, capsys):
    digest = snp_measure(snp_image, 2, 0x21).hex()
    args = ["launch", "--ovmf", str(snp_image), "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4",
            "--guest-features", "0x21"]
    assert main(args + ["--expected-digest", digest, "--attestation-out", str(tmp_path / "att")]) == 0
    out = capsys.readouterr().out
    assert f"measurement: {digest}" in out and f"launch digest {digest} verified" in out
    assert "SNP_LAUNCH_UPDATE x" in out and "report signature: verified" in out
    assert "chain: verified" in out and "nonce: yes" in out
    assert (tmp_path / "att" / "report.bin").stat().st_size == 0x4A0
    assert main(args + ["--expected-digest", "00" * 48]) == 1
    assert "NOT verified" in capsys.readouterr().out
    assert main(args) == 1
    assert "sev-snp-measure --mode snp --vcpus 2 --vcpu-type EPYC-v4 --guest-features 0x21" in \
        capsys.readouterr().out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_cli_attestation_out_verifies_with_openssl(snp_image, tmp_path, capsys):
    out = tmp_path / "att"
    main(["launch", "--ovmf", str(snp_image), "--mode", "snp", "--attestation-out", str(out)])
    capsys.readouterr()
    chain = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ark.pem"), "-untrusted",
                            str(out / "ask.pem"), str(out / "vcek.pem")], capture_output=True)
    assert chain.returncode == 0, chain.stderr


@pytest.mark.parametrize("args,message", [
    (["--mode", "snp", "--expected-digest", "ab" * 32], "96 hex digits"),
    (["--mode", "seves", "--guest-features", "0x1"], "--guest-features is for --mode snp"),
    (["--mode", "snp", "--guest-features", str(1 << 64)], "64 bits"),
    (["--mode", "snp", "--policy", "0x1"], "bit 17 must be set"),
])
def test_cli_snp_user_mistakes(snp_image, capsys, args, message):
    assert main(["launch", "--ovmf", str(snp_image)] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(shutil.which("sev-snp-measure") is None, reason="sev-snp-measure is not installed")
@needs_ovmf
@pytest.mark.slow
def test_cli_against_the_sev_snp_measure_command_line(capsys):
    """As a user runs both tools (subprocess for sev-snp-measure)."""
    exe = shutil.which("sev-snp-measure")
    digest = subprocess.run([exe, "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf",
                             DEBIAN_OVMF], capture_output=True, text=True, check=True).stdout.strip()
    assert main(["launch", "--ovmf", DEBIAN_OVMF, "--mode", "snp", "--vcpus", "2",
                 "--expected-digest", digest]) == 0
    assert "verified (the signed report's MEASUREMENT)" in capsys.readouterr().out
