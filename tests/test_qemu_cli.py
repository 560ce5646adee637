"""``svmsim-qemu``: the qemu-system-x86_64 command line kvm-unit-tests' runner
builds (x86/run, scripts/arch-run.bash), its probes, and QEMU's -cpu syntax
(issue 12, items 2 and 3)."""
import io
import re
import subprocess
import sys

import pytest

from guestbuild import build_guest, expected_transcript, STATUS_PASS
from svmsim import cli_qemu
from svmsim.cpu import profiles
from svmsim.cpu.cpuid import cpuid
from svmsim.errors import ConfigError
from svmsim.machine import Machine


def qemu(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "svmsim.cli_qemu", *args], capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# Exactly what x86/run adds in front of the kernel (kvm-unit-tests 1da1819e).
RUNNER = ["--no-reboot", "-nodefaults", "-global", "kvm-pit.lost_tick_policy=discard",
          "-device", "pc-testdev", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4",
          "-display", "none", "-serial", "stdio", "-machine", "accel=tcg"]


# ---------------------------------------------------------------- the runner's probes
def test_help_names_qemu_and_a_version_the_runner_parses():
    """search_qemu_binary greps --help for 'QEMU'; env_params reads
    MAJOR.MINOR.MICRO from the first line of -h split on spaces and dots."""
    p = qemu("--help")
    assert p.returncode == 0 and b"QEMU" in p.stdout
    first = qemu("-h").stdout.decode().splitlines()[0]
    fields = re.split(r"[ .]", first)
    assert fields[:3] == ["QEMU", "emulator", "version"] and all(f.isdigit() for f in fields[3:6])


def test_device_list_offers_pc_testdev_but_not_pci_testdev():
    """x86/run: `-device '?' | grep -F '"pc-testdev"'` must match (else it exits
    2), and pci-testdev is added only if listed (svmsim has no PCI test device)."""
    out = qemu("-device", "?").stdout.decode()
    assert '"pc-testdev"' in out and "pci-testdev" not in out


def test_missing_kernel_reads_as_qemus_load_failure():
    """premature_failure: the line naming _NO_FILE_4Uhere_ must match
    '[Cc]ould not (load|open) kernel', or the test is skipped as broken."""
    p = qemu(*RUNNER, "-kernel", "_NO_FILE_4Uhere_", "-smp", "2", "-cpu", "max,+svm", "-m", "4g")
    err = p.stderr.decode()
    assert p.returncode == 1
    assert re.search(r"[Cc]ould not (load|open) kernel.*_NO_FILE_4Uhere_", err), err


def test_too_many_cpus_reads_as_qemus_smp_limit():
    """qemu_probe_maxsmp greps 'SMP CPUs' and takes the last word as the maximum."""
    p = qemu("-kernel", "_NO_FILE_4Uhere_", "-smp", "512")
    line = [l for l in p.stderr.decode().splitlines() if "SMP CPUs" in l][0]
    assert line.split()[-1] == str(cli_qemu.MAX_CPUS)


@pytest.mark.parametrize("args, needle", [
    (["-kernel", "k", "-machine", "accel=kvm"], "accel=tcg"),
    (["-kernel", "k", "-enable-kvm"], "accel=tcg"),
    (["-kernel", "k", "-device", "pci-testdev"], "pci-testdev"),
    (["-kernel", "k", "-hda", "disk.img"], "-hda"),
    (["-kernel", "k", "-device", "isa-debug-exit,iobase=0x501"], "iobase=0xf4"),
    (["-kernel", "k", "-cpu", "max,+svm,rdtscp"], "rdtscp"),
])
def test_what_svmsim_cannot_honour_is_one_line_and_status_1(args, needle):
    p = qemu(*args)
    lines = p.stderr.decode().strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and needle in lines[0], lines


# ---------------------------------------------------------------- a boot as the runner makes it
def test_kernel_boots_as_under_the_runner_with_silent_stderr(tmp_path):
    """COM1 on stdout, QEMU's exit status, nothing on stderr (qemu_fixup_return_code
    counts any non-warning stderr text as a QEMU failure)."""
    env = tmp_path / "env"
    env.write_text("NR_CPUS=1\n")
    p = qemu(*RUNNER, "-kernel", str(build_guest("hello")), "-smp", "1",
             "-append", "greeting=1 svmsim", "-cpu", "max,+svm", "-m", "128", "-initrd", str(env))
    assert p.stdout == expected_transcript("hello")
    assert p.returncode == STATUS_PASS and p.stderr == b""


def test_shutdown_exits_0_as_qemu_with_no_reboot(tmp_path):
    """A triple fault: QEMU -no-reboot ends with status 0; svmsim says why on stderr."""
    k = tmp_path / "tf.S"
    k.write_text(MB_HEADER + "    lidt zero_idt\n    int $3\nzero_idt: .word 0\n .long 0\n")
    p = qemu(*RUNNER, "-kernel", str(build_guest([str(k)], kind="asm")))
    assert p.returncode == 0 and b"shutdown" in p.stderr


MB_HEADER = """    .code32
    .section .text
    .globl _start
    .align 4
    .long 0x1BADB002, 0, -0x1BADB002
_start:
"""


# ---------------------------------------------------------------- -cpu: QEMU's feature syntax
def leaf(m, n, sub=0):
    return cpuid(m.cpus[0], n, sub)


def test_cpu_features_are_added_and_removed_with_qemus_syntax():
    """kvm-unit-tests' stanzas: -cpu max,+svm,-rdtscp,-xsave,-invpcid,-skinit
    and -cpu max,+svm,-npt (QEMU names: nrip-save, sse4.1, pdpe1gb...)."""
    m = Machine(mem_size="16M", cpu="max,+svm,-rdtscp,-xsave,-invpcid,-skinit")
    assert leaf(m, 0x80000001)[2] >> 2 & 1                         # SVM
    assert not leaf(m, 0x80000001)[3] >> 27 & 1                    # RDTSCP
    assert not leaf(m, 1)[2] >> 26 & 1                             # XSAVE
    assert not leaf(m, 7)[1] >> 10 & 1                             # INVPCID
    assert leaf(m, 0xD, 1)[0] == 0                                 # no XSAVEOPT without XSAVE
    m = Machine(mem_size="16M", cpu="EPYC,-npt,nrip-save=off")
    edx = leaf(m, 0x8000000A)[3]
    assert not edx & 1 and not edx >> 3 & 1 and edx >> 5 & 1       # NPT, NRIPS gone; VMCB clean kept
    assert not leaf(Machine(mem_size="16M", cpu="epyc,-sse4.1"), 1)[2] >> 19 & 1


def test_without_svm_the_svm_leaf_is_empty():
    m = Machine(mem_size="16M", cpu="max,-svm")
    assert not leaf(m, 0x80000001)[2] >> 2 & 1
    assert leaf(m, 0x8000000A) == (0, 0, 0, 0)


def test_max_has_every_modelled_feature_and_more_than_epyc():
    mx, ep = profiles.get("max"), profiles.get("epyc")
    assert ep.features < mx.features and mx.vendor == "AuthenticAMD"


def test_unknown_feature_is_a_config_error_or_a_qemu_style_warning():
    with pytest.raises(ConfigError, match="avx512f"):
        profiles.get("epyc,+avx512f")
    warnings = []
    p = profiles.get("epyc,+avx512f", warn=warnings.append)
    assert p.features == profiles.get("epyc").features and "avx512f" in warnings[0]


def test_unknown_cpu_feature_in_qemu_mode_is_a_warning_only(tmp_path):
    """QEMU TCG warns about a feature it cannot give and boots without it; the
    runner accepts stderr made of warnings."""
    p = qemu(*RUNNER, "-kernel", str(build_guest("hello")), "-append", "greeting=1 svmsim",
             "-cpu", "max,+svm,+avx512f")
    assert p.returncode == STATUS_PASS
    assert all("warning" in l for l in p.stderr.decode().splitlines()) and p.stderr


# ---------------------------------------------------------------- pc-testdev
def test_pc_testdev_registers():
    """QEMU hw/misc/pc-testdev.c: E0h scratch register (byte lanes), E8h the
    same bytewise, 2000h+n drives interrupt line n, 64 KiB of memory at
    FF00_0000h."""
    m = Machine(mem_size="16M", serial_out=io.BytesIO(), devices=("pc-testdev",))
    m.io.write(0xE0, 4, 0x11223344)
    assert m.io.read(0xE1, 1) == 0x33 and m.io.read(0xEA, 2) == 0x1122
    m.io.write(0xE8, 1, 0xAA)
    assert m.io.read(0xE0, 4) == 0x112233AA
    m.io.write(0xE4, 4, 0x1000)                     # flush page: no visible effect
    m.bus.write(0xFF000010, 8, 0x0123456789ABCDEF)
    assert m.bus.read(0xFF000014, 4) == 0x01234567
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 1), (0x21, 0)):
        m.io.write(port, 1, value)                  # 8259 master: vectors 20h-27h, unmasked
    assert not m.pic.has_interrupt()
    m.io.write(0x2000 + 4, 1, 1)
    assert m.pic.has_interrupt() and m.pic.acknowledge() == 0x24


def test_pc_testdev_is_optional():
    m = Machine(mem_size="16M", serial_out=io.BytesIO())
    assert m.io.read(0xE0, 4) == 0xFFFFFFFF
    with pytest.raises(ConfigError):
        Machine(mem_size="16M", devices=("pci-testdev",))


def test_svmsim_qemu_is_an_installed_command():
    """README "As QEMU" runs `QEMU=svmsim-qemu ./run_tests.sh`: the package must install
    it as a console script (it was once declared as a pytest plugin by mistake)."""
    import pathlib
    import tomllib
    meta = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["svmsim-qemu"] == "svmsim.cli_qemu:main"
    assert "svmsim-qemu" not in meta["project"]["entry-points"]["pytest11"]
