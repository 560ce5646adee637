"""The guest owner's launch measurement of a real firmware image (issue 9,
item 6): the reference VMM launches OVMF as QEMU does for an SEV / SEV-ES
guest, the simulated AMD-SP measures it page by page, and the MEASURE it
returns verifies against the launch digest ``sev-snp-measure`` -- the tool
guest owners use -- computes for the same image, mode, vCPU count and type."""
import contextlib
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import uuid
from unittest import mock

import pytest

from svmsim.cli import main
from svmsim.errors import ConfigError
from svmsim.sev.api import SevPolicy
from svmsim.svm.vmsa import VmsaView
from svmsim.vmm import ovmf
from svmsim.vmm.firmware_launch import FirmwareLauncher, launch_firmware
from svmsim.vmm.ovmf import OvmfError, OvmfImage
from svmsim.vmm.vcpu_reset import VCPU_TYPES, reset_vmsa, vcpu_type
from svmsim.vmm.vmm import GuestExit

DEBIAN_OVMF = "/usr/share/ovmf/OVMF.fd"
needs_ovmf = pytest.mark.skipif(not os.path.exists(DEBIAN_OVMF),
                                reason="Debian's OVMF.fd is not installed (apt-get install ovmf)")
AP_EIP = 0x80B004


# -- the guest owner's tool ---------------------------------------------------------------------
def sev_snp_measure(mode, path, vcpus=1, vcpu_type_name="EPYC-v4", subprocess_run=False) -> bytes:
    """The launch digest ``sev-snp-measure`` computes: its command line, as a
    guest owner runs it (``subprocess_run``), or the same ``main()`` in this
    process (fast); results are cached by image content."""
    argv = ["--mode", mode, "--vcpus", str(vcpus), "--vcpu-type", vcpu_type_name, "--ovmf", str(path)]
    if subprocess_run:
        exe = shutil.which("sev-snp-measure", path=os.path.dirname(sys.executable)) or \
            shutil.which("sev-snp-measure")
        if exe is None:
            pytest.skip("sev-snp-measure is not installed (pip install -e '.[test]')")
        out = subprocess.run([exe] + argv, capture_output=True, text=True, check=True).stdout
        return bytes.fromhex(out.strip())
    key = (hashlib.sha256(open(path, "rb").read()).digest(), mode, vcpus, vcpu_type_name)
    if key not in _DIGESTS:
        cli = pytest.importorskip("sevsnpmeasure.cli", reason="sev-snp-measure is not installed")
        out = io.StringIO()
        with mock.patch.object(sys, "argv", ["sev-snp-measure"] + argv), \
                contextlib.redirect_stdout(out):
            assert cli.main() in (0, None)
        _DIGESTS[key] = bytes.fromhex(out.getvalue().strip())
    return _DIGESTS[key]


_DIGESTS: dict = {}


# -- a small image with OVMF's GUIDed table, for fast tests -------------------------------------------
def table_entry(guid, data=b""):
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def make_image(size=0x10000, entries=None, seed=1, footer=True):
    """``size`` bytes of code-like filler ending in the GUIDed table (the
    SEV-ES reset block by default) and a 32-byte reset vector area."""
    if entries is None:
        entries = [table_entry(str(ovmf.SEV_ES_RESET_BLOCK_GUID), struct.pack("<I", AP_EIP))]
    table = b"".join(entries)
    if footer:
        table += struct.pack("<H", len(table) + 18) + ovmf.FOOTER_GUID.bytes_le
    tail = table + bytes.fromhex("90" * 16 + "e9" + "00" * 15)
    body = bytes((i * seed * 131 + (i >> 8)) & 0xFF for i in range(size - len(tail)))
    return body + tail


@pytest.fixture
def image_file(tmp_path):
    def write(data, name="ovmf.fd"):
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


# -- the OVMF table and the reset state --------------------------------------------------------
def test_ovmf_table_as_qemu_reads_it():
    """Entries are read backwards from the footer 32 bytes before the end; the
    image ends at 4 GiB."""
    img = OvmfImage.parse(make_image(entries=[
        table_entry("12345678-1234-5678-9abc-def012345678", b"abc"),
        table_entry(str(ovmf.SEV_ES_RESET_BLOCK_GUID), struct.pack("<I", 0x801004))]))
    assert img.gpa == 0xFFFF0000 and img.size == 0x10000
    assert img.table[uuid.UUID("12345678-1234-5678-9abc-def012345678")] == b"abc"
    assert img.sev_es_reset_eip() == 0x801004
    assert OvmfImage.parse(make_image(footer=False)).table == {}
    assert OvmfImage.parse(make_image(entries=[])).sev_es_reset_eip() is None


@pytest.mark.parametrize("data,why", [
    (b"", "size"), (bytes(0x10001), "size"),
    (make_image()[:-50] + struct.pack("<H", 0xFFFF) + make_image()[-48:], "table"),
    (make_image(entries=[table_entry(str(ovmf.SEV_ES_RESET_BLOCK_GUID), b"\x01\x02")]), "reset"),
])
def test_bad_images_are_one_line_errors(data, why):
    with pytest.raises(OvmfError):
        img = OvmfImage.parse(data)
        img.sev_es_reset_eip()


@needs_ovmf
def test_debian_ovmf_table_matches_sev_snp_measure():
    """Our parser reads Debian's OVMF.fd as sev-snp-measure's does."""
    theirs = pytest.importorskip("sevsnpmeasure.ovmf").OVMF(DEBIAN_OVMF)
    img = OvmfImage.from_file(DEBIAN_OVMF)
    assert {str(g): d for g, d in img.table.items()} == theirs._table
    assert (img.gpa, img.sev_es_reset_eip()) == (theirs.gpa(), theirs.sev_es_reset_eip())


def test_vcpu_signatures_match_sev_snp_measure():
    sigs = pytest.importorskip("sevsnpmeasure.vcpu_types").CPU_SIGS
    shared = set(sigs) & set(VCPU_TYPES)
    assert {"EPYC-v4", "EPYC-Milan", "EPYC-Genoa"} <= shared
    for name in shared:
        assert VCPU_TYPES[name].signature == sigs[name], name
    assert vcpu_type("EPYC-v4").signature == 0x800F12                  # family 17h, model 1, stepping 2
    with pytest.raises(ConfigError):
        vcpu_type("Opteron_G1")


def test_reset_vmsa_is_the_x86_reset_state():
    """APM vol 2, 14.1.3: CS F000h with base FFFF0000h and RIP FFF0h for the
    BSP; an AP's CS base and RIP come from its reset address; RDX holds the
    processor signature; everything past the save area is zero."""
    bsp, ap = VmsaView(bytearray(reset_vmsa(0xFFFFFFF0, 0x800F12))), \
        VmsaView(bytearray(reset_vmsa(AP_EIP, 0x800F12)))
    assert bsp.segment("CS") == (0xF000, 0x9B, 0xFFFF, 0xFFFF0000) and bsp["RIP"] == 0xFFF0
    assert ap.segment("CS") == (0xF000, 0x9B, 0xFFFF, 0x800000) and ap["RIP"] == 0xB004
    for v in (bsp, ap):
        assert v["RDX"] == 0x800F12 and v["RFLAGS"] == 2 and v["EFER"] == 0x1000
        assert (v["CR0"], v["CR4"], v["DR7"], v["DR6"]) == (0x10, 0x40, 0x400, 0xFFFF0FF0)
        assert v.segment("DS") == (0, 0x93, 0xFFFF, 0) and v.segment("TR") == (0, 0x8B, 0xFFFF, 0)
        assert (v["XCR0"], v["MXCSR"], v["X87_FCW"], v["SEV_FEATURES"]) == (1, 0x1F80, 0x37F, 0)
        assert bytes(v.buf[0x670:]) == bytes(0x1000 - 0x670)


# -- launches measured by the AMD-SP, checked by the guest owner --------------------------------
def _check(launcher, expected):
    assert launcher.verify(expected)
    assert not launcher.verify(bytes(32))


@needs_ovmf
@pytest.mark.parametrize("mode,vcpus", [("seves", 3)])
def test_debian_ovmf_measurement_verifies_against_sev_snp_measure(mode, vcpus):
    """Debian's OVMF.fd: the whole image by LAUNCH_UPDATE_DATA at 4 GiB - 2 MiB,
    for SEV-ES one VMSA per vCPU by LAUNCH_UPDATE_VMSA; the guest owner's
    check of MEASURE against sev-snp-measure's digest passes."""
    image = _installed_ovmf(mode)
    expected = sev_snp_measure(mode, DEBIAN_OVMF, vcpus, subprocess_run=True)
    launcher = launch_firmware(image, mode, vcpus)
    _check(launcher, expected)
    names = [name for name, status in launcher.psp.log]
    assert names.count("LAUNCH_UPDATE_DATA") == 1
    assert names.count("LAUNCH_UPDATE_VMSA") == (vcpus if mode == "seves" else 0)
    assert names[-1] == "LAUNCH_MEASURE" and {s for _, s in launcher.psp.log} == {"SUCCESS"}
    r = launcher.result
    assert (r.image_gpa, r.ap_eip) == (0xFFE00000, AP_EIP if mode == "seves" else None)
    launcher.finish()


@pytest.mark.slow
@needs_ovmf
@pytest.mark.parametrize("mode,vcpus", [("sev", 1), ("sev", 4), ("seves", 1), ("seves", 2),
                                        ("seves", 4), ("seves", 8), ("seves", 64)])
def test_debian_ovmf_many_vcpu_counts(mode, vcpus):
    _check(launch_firmware(_installed_ovmf(mode), mode, vcpus),
           sev_snp_measure(mode, DEBIAN_OVMF, vcpus, subprocess_run=True))


def _installed_ovmf(mode):
    image = OvmfImage.from_file(DEBIAN_OVMF)
    if mode == "seves" and not image.sev_es_reset_eip():
        pytest.skip(f"{DEBIAN_OVMF} has no SEV-ES reset block (an OVMF built without SEV-ES)")
    return image


@pytest.mark.parametrize("mode,vcpus,cpu", [("sev", 2, "EPYC-v4"), ("seves", 1, "EPYC-v4"),
                                            ("seves", 2, "EPYC-v4"), ("seves", 5, "EPYC-v4"),
                                            ("seves", 2, "EPYC-Milan")])
def test_small_image_measurement_verifies_against_sev_snp_measure(image_file, mode, vcpus, cpu):
    path = image_file(make_image(seed=vcpus))
    launcher = launch_firmware(OvmfImage.from_file(str(path)), mode, vcpus, cpu)
    _check(launcher, sev_snp_measure(mode, path, vcpus, cpu))


def test_the_image_lies_at_4_gib_in_the_guests_nested_tables():
    """The VMM maps the image's host pages at 4 GiB - size in the nested page
    tables, as QEMU maps the flash below 4 GiB."""
    launcher = FirmwareLauncher(_vmm(), OvmfImage.parse(make_image(size=0x30000)), "sev")
    launcher.place()
    r, vmm = launcher.result, launcher.vmm
    for off in (0, 0x1000, 0x2FFF0):
        assert _nested_lookup(vmm.m.bus, vmm.n_cr3, r.image_gpa + off) == r.image_spa + off
    assert vmm.m.bus.read_bytes(r.image_spa + 0x2FFF0, 16) == launcher.image.data[-16:]


# -- a hypervisor that changes what is measured ----------------------------------------------------
def _vmm():
    from svmsim.machine import Machine
    from svmsim.vmm import Vmm
    return Vmm(Machine(mem_size="128M"))


def _launch_steps(launcher, between=lambda launcher: None, before_vmsas=lambda launcher: None):
    launcher.place()
    between(launcher)
    launcher.start()
    launcher.update_data()
    before_vmsas(launcher)
    launcher.update_vmsas()
    return launcher.measure()


def _flip(bus, spa):
    bus.write_bytes(spa, bytes([bus.read_bytes(spa, 1)[0] ^ 1]))


def test_a_tampered_image_fails_verification(image_file):
    """The hypervisor changes one byte of the image in memory before
    LAUNCH_UPDATE_DATA: the AMD-SP measures what is there, and the guest
    owner's check against the genuine image's digest fails."""
    data = make_image()
    expected = sev_snp_measure("seves", image_file(data), 2)
    launcher = FirmwareLauncher(_vmm(), OvmfImage.parse(data), "seves", 2)
    _launch_steps(launcher, between=lambda l: _flip(l.vmm.m.bus, l.result.image_spa + 0x1234))
    assert not launcher.verify(expected)


@pytest.mark.parametrize("offset", [0x178, 0x310, 0x3B0, 0xFFF])      # RIP, RDX, SEV_FEATURES, padding
def test_a_tampered_vmsa_fails_verification(image_file, offset):
    """The hypervisor changes an AP's initial VMSA before LAUNCH_UPDATE_VMSA."""
    data = make_image()
    expected = sev_snp_measure("seves", image_file(data), 2)
    launcher = FirmwareLauncher(_vmm(), OvmfImage.parse(data), "seves", 2)
    _launch_steps(launcher, before_vmsas=lambda l: _flip(l.vmm.m.bus, l.result.vmsa_spas[1] + offset))
    assert not launcher.verify(expected)


def test_another_vcpu_type_or_count_fails_verification(image_file):
    path = image_file(make_image())
    expected = sev_snp_measure("seves", path, 2, "EPYC-v4")
    image = OvmfImage.from_file(str(path))
    assert not launch_firmware(image, "seves", 2, "EPYC-Milan").verify(expected)
    assert not launch_firmware(image, "seves", 3, "EPYC-v4").verify(expected)


def test_a_vmsa_changed_after_launch_is_no_longer_intact():
    """After LAUNCH_UPDATE_VMSA the page is ciphertext under the guest's key
    and sealed: a hypervisor that flips a bit of it leaves a page whose
    checksum fails (VMRUN then refuses it, APM 15.35.8)."""
    launcher = FirmwareLauncher(_vmm(), OvmfImage.parse(make_image()), "seves", 1)
    r = _launch_steps(launcher)
    m, spa = launcher.vmm.m, r.vmsa_spas[0]
    vek = m.amd_sp.guests[r.handle].vek
    plain = m.mem_engine.decrypt(vek, spa, m.bus.read_bytes(spa, 0x1000))
    assert plain == reset_vmsa(0xFFFFFFF0, 0x800F12) and m.mem_engine.vmsa_intact(spa, plain)
    _flip(m.bus, spa + 0x178)
    assert not m.mem_engine.vmsa_intact(spa, m.mem_engine.decrypt(vek, spa, m.bus.read_bytes(spa, 0x1000)))


# -- wrong states and user mistakes ------------------------------------------------------------
def test_commands_out_of_order_fail_with_the_firmwares_status():
    launcher = FirmwareLauncher(_vmm(), OvmfImage.parse(make_image()), "seves", 1)
    _launch_steps(launcher)
    for step in (launcher.update_vmsas, launcher.update_data, launcher.measure):
        with pytest.raises(GuestExit, match="INVALID_GUEST_STATE"):
            step()
    launcher.finish()
    with pytest.raises(GuestExit, match="LAUNCH_FINISH failed: INVALID_GUEST_STATE"):
        launcher.finish()


def test_launch_configuration_mistakes():
    image = OvmfImage.parse(make_image())
    with pytest.raises(OvmfError, match="no SEV-ES reset block"):
        FirmwareLauncher(_vmm(), OvmfImage.parse(make_image(entries=[])), "seves", 2).place()
    FirmwareLauncher(_vmm(), OvmfImage.parse(make_image(entries=[])), "sev", 2).place()
    with pytest.raises(ConfigError, match="ES bit"):
        FirmwareLauncher(_vmm(), image, "seves", policy=SevPolicy.NODBG)
    with pytest.raises(ConfigError, match="ES bit"):
        FirmwareLauncher(_vmm(), image, "sev", policy=SevPolicy.ES)
    with pytest.raises(ConfigError, match="SnpFirmwareLauncher"):
        FirmwareLauncher(_vmm(), image, "snp")
    with pytest.raises(ConfigError):
        FirmwareLauncher(_vmm(), image, "sev", vcpus=0)


# -- svmsim launch ------------------------------------------------------------------------------
def test_cli_verifies_the_expected_digest(image_file, capsys):
    path = image_file(make_image())
    digest = sev_snp_measure("seves", path, 4).hex()
    args = ["launch", "--ovmf", str(path), "--mode", "seves", "--vcpus", "4", "--vcpu-type", "EPYC-v4"]
    assert main(args + ["--expected-digest", digest]) == 0
    out = capsys.readouterr().out
    assert f"launch digest {digest} verified" in out
    assert "LAUNCH_UPDATE_DATA, LAUNCH_UPDATE_VMSA x4, LAUNCH_MEASURE" in out
    assert "APs at 0x80b004 (SEV-ES reset block)" in out
    assert main(args + ["--expected-digest", "00" * 32]) == 1
    assert "NOT verified" in capsys.readouterr().out
    assert main(args) == 1
    assert "sev-snp-measure --mode seves --vcpus 4" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--mode", "sev", "--expected-digest", "abc"], "64 hex digits"),
    (["--mode", "seves", "--vcpus", "0"], "--vcpus"),
    (["--mode", "seves", "--vcpu-type", "Skylake"], "unknown vCPU type"),
    (["--mode", "snp"], "no SEV metadata"),
    (["--mode", "sev", "--policy", "0x4"], "ES bit"),
])
def test_cli_user_mistakes_are_one_line_and_status_2(image_file, capsys, args, message):
    assert main(["launch", "--ovmf", str(image_file(make_image()))] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_missing_or_bad_image(image_file, capsys):
    assert main(["launch", "--ovmf", "/nonexistent/OVMF.fd", "--mode", "sev"]) == 2
    assert main(["launch", "--ovmf", str(image_file(b"\x90" * 1000)), "--mode", "sev"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the firmware image" in err and "not a firmware image size" in err


def _nested_lookup(bus, n_cr3, gpa):
    """The host-physical address the VMM's nested tables give ``gpa``."""
    table = n_cr3
    for level in (4, 3, 2, 1):
        e = bus.read(table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8, 8)
        assert e & 1, f"not present at level {level}"
        frame = e & 0x000FFFFFFFFFF000
        if level == 2 and e & 0x80:
            return (frame & ~0x1FFFFF) | (gpa & 0x1FFFFF)
        table = frame
    return frame | (gpa & 0xFFF)
