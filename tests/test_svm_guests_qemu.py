"""The bare-metal SVM test hypervisors (tests/guests/svm_*.c) under QEMU TCG.

They pin down what a hypervisor written for AMD hardware sees: exit codes,
EXITINFO1/2, guest RIPs (printed by label), injected events, VMEXIT_INVALID
for each consistency check.  The recorded transcripts come from
``qemu-system-x86_64 -accel tcg -cpu EPYC`` (guestbuild.qemu_command).

Transcript line tags (see tests/guests/README.md):

* ``[cpu] ...``  -- values of the CPU model (CPUID 8000_000A, host CPUID bits).
* ``[qemu] ...`` -- a value where QEMU TCG departs from the AMD APM; the line
  says what the APM specifies.  svmsim follows the APM there.

Tagged lines are printed on every platform (only their values may differ),
so ``apm_lines`` of svmsim's output must equal ``apm_lines`` of the recorded
transcript verbatim.
"""
from __future__ import annotations

import concurrent.futures
import re

import pytest

import guestbuild as gb

pytestmark = pytest.mark.qemu

SVM_KERNELS = ("svm_basic", "svm_invalid", "svm_intercepts", "svm_loop", "svm_world", "svm_npt",
               "svm_state", "svm_ioio", "svm_events")


def apm_lines(transcript: str) -> list[str]:
    """The transcript without the CPU-model and QEMU-divergence lines."""
    return [line for line in transcript.splitlines()
            if not line.startswith(("[cpu] ", "[qemu] "))]


@pytest.fixture(scope="module")
def runs():
    if not gb.qemu_available():
        pytest.skip("qemu-system-x86_64 not installed")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(SVM_KERNELS, pool.map(gb.qemu_transcript, SVM_KERNELS)))


@pytest.mark.parametrize("name", SVM_KERNELS)
def test_registered_and_recorded(runs, name):
    assert name in gb.KERNELS and name in gb.KERNEL_RUNS
    status, out = runs[name]
    assert out == gb.expected_transcript(name).decode()
    assert status == gb.STATUS_PASS
    assert out.endswith(f"{name}: PASS\n")
    assert "FAIL" not in out


def test_apm_lines_filter():
    text = "a\n[cpu] x\nb\n[qemu] y\n"
    assert apm_lines(text) == ["a", "b"]


# ------------------------------------------------------------ svm_basic

def exits(out: str) -> list[tuple[str, int, str, str, str]]:
    """(name, code, info1, info2, rip) of each logged exit of the 64-bit guest."""
    pat = re.compile(r"^exit \d+: (\S+) \(0x([0-9a-f]+)\) info1=(\S+) info2=(\S+) rip=(\S+)$")
    return [(m[1], int(m[2], 16), m[3], m[4], m[5])
            for m in map(pat.match, out.splitlines()) if m]


def test_basic_reports_svm_and_enables_it(runs):
    out = runs["svm_basic"][1]
    assert "CPUID 8000_0001 ECX.SVM = 1\n" in out
    assert "VM_CR.SVMDIS = 0\n" in out
    assert "enable: EFER.SVME = 1, VM_HSAVE_PA set\n" in out


def test_basic_exit_sequence(runs):
    seq = exits(runs["svm_basic"][1])
    assert [(n, c, rip) for n, c, _, _, rip in seq] == [
        ("CPUID", 0x72, "gx_cpuid"), ("CPUID", 0x72, "gx_cpuid"), ("CPUID", 0x72, "gx_cpuid"),
        ("IOIO", 0x7B, "gx_post"),
        ("MSR", 0x7C, "gx_rdmsr"), ("MSR", 0x7C, "gx_wrmsr"),
        ("VMMCALL", 0x81, "gx_vmmcall"), ("VMMCALL", 0x81, "gx_vmmcall"),
        ("EXCP_UD", 0x46, "gx_ud2"), ("HLT", 0x78, "gx_hlt")]
    # APM 15.11: EXITINFO1 = 0 for RDMSR, 1 for WRMSR.
    assert [i1 for n, _, i1, _, _ in seq if n == "MSR"] == ["0x0", "0x1"]
    # APM 15.10.2: OUT imm8 of one byte to port 80h; EXITINFO2 = next RIP.
    ioio = [e for e in seq if e[0] == "IOIO"][0]
    assert ioio[2:4] == ("0x800010", "gx_post+2")


def test_basic_guest_sees_the_hypervisor_cpuid(runs):
    out = runs["svm_basic"][1]
    assert "guest: CPUID 1 ECX[31] (hypervisor present) = 0x1\n" in out
    assert "guest: CPUID 4000_0000 signature 'svmsimtestHV', max leaf 0x40000001\n" in out


def test_basic_msr_and_event_injection(runs):
    out = runs["svm_basic"][1]
    assert "guest: RDMSR EFER = 0x500\n" in out                  # SVME hidden
    assert "guest: KERNEL_GS_BASE after the intercepted WRMSR = 0x0\n" in out
    assert ("  hv: injecting INTR vector 0x40\n"
            "guest: interrupt 0x40 delivered through the guest IDT\n") in out
    assert "guest: #GP delivered, error code 0x18\n" in out
    assert "guest: #UD delivered, skipping ud2\n" in out


def test_basic_guest_serial_goes_through_the_hypervisor(runs):
    out = runs["svm_basic"][1]
    guest_text = "".join(line + "\n" for line in out.splitlines() if line.startswith("guest: "))
    m = re.search(r"hv: (\d+) bytes of guest serial output", out)
    assert int(m[1]) == len(guest_text)
    summary = dict(re.findall(r"^  0x[0-9a-f]{3} (\S+): (\d+)$", out, re.M))
    # Every guest byte is one IOIO exit, plus one OUT to port 80h per guest.
    assert int(summary["IOIO"]) == len(guest_text) + 3
    assert summary["HLT"] == "3" and summary["CPUID"] == "3"


def test_basic_other_guest_modes(runs):
    out = runs["svm_basic"][1]
    assert "prot32 exit 1: IOIO (0x7b) info1=0x800010 info2=gx32_hlt rip=gx32_out\n" in out
    assert "  hv: halted with CR0=0x11 EFER=0x1000 CS=0x18\n" in out
    assert "real exit 1: IOIO (0x7b) info1=0x800010 info2=0x4 rip=0x2\n" in out
    assert "  hv: halted with CR0=0x10 EFER=0x1000 CS=0x700\n" in out


def test_basic_gif_gates_interrupts(runs):
    assert ("gif: CLGI/STGI execute; with GIF=0 the self-IPI was held, after STGI taken\n"
            in runs["svm_basic"][1])


def test_basic_qemu_divergences_are_tagged(runs):
    out = runs["svm_basic"][1]
    # QEMU 7.2 reports no IOIO address size (APM Figure 15-2 bits 9:7).
    assert "[qemu] IOIO address-size bits 9:7 = 0x0 (APM: 0x200)\n" in out
    assert "[qemu] IOIO address-size bits 9:7 = 0x0 (APM: 0x100)\n" in out
    assert "[qemu] IOIO address-size bits 9:7 = 0x0 (APM: 0x80)\n" in out


# ------------------------------------------------------------ svm_invalid

RULES = ("efer_svme", "cr0_cd_nw", "cr0_high", "cr3_mbz", "cr4_mbz", "dr6_high", "dr7_high",
         "efer_mbz", "lme_pg_no_pae", "lme_pg_no_pe", "lme_pg_pae_cs_l_d",
         "no_vmrun_intercept", "iopm_beyond_pa", "msrpm_beyond_pa", "eventinj_type1",
         "eventinj_type7", "eventinj_exc_vector2", "asid0")


def test_invalid_each_rule_gives_vmexit_invalid(runs):
    out = runs["svm_invalid"][1]
    got = re.findall(r"^rule (\S+) \(.*\): exitcode\[31:0\]=0x([0-9a-f]+) \((\S+)\)$",
                     out, re.M)
    assert [r for r, _, _ in got] == list(RULES)
    assert {(c, n) for _, c, n in got} == {("ffffffff", "VMEXIT_INVALID")}


def test_invalid_baseline_runs_before_and_after(runs):
    out = runs["svm_invalid"][1]
    assert "baseline: exitcode=0x78 (HLT) rip=gi_hlt\n" in out
    assert "baseline again: exitcode=0x78 (HLT)\n" in out


def test_invalid_qemu_exitcode_high_half_is_tagged(runs):
    # QEMU stores -1 zero-extended from 32 bits; the APM's EXITCODE is 64-bit -1.
    assert ("[qemu] VMEXIT_INVALID EXITCODE[63:32] = 0x0 (APM: 0xffffffff)\n"
            in runs["svm_invalid"][1])


# ------------------------------------------------------------ svm_intercepts

def test_intercepts_exit_order_and_rips(runs):
    out = runs["svm_intercepts"][1]
    got = re.findall(r"^(?:\[qemu\] )?exit \d+: (\S+) \(0x[0-9a-f]+\).* rip=gt_start\+(\d+)",
                     out, re.M)
    names = [n for n, _ in got]
    assert names == ["CR0_READ", "CR0_SEL_WRITE", "CR3_READ", "CR3_WRITE", "CR4_READ",
                     "CR4_WRITE", "DR7_READ", "DR7_WRITE", "RDTSC", "PAUSE", "INVLPG",
                     "SWINT", "PUSHF", "POPF", "WBINVD", "WBINVD", "IDTR_READ",
                     "GDTR_READ", "HLT"]
    # The same-value MOV to CR0 (3 bytes at +3) did not exit: the next exit
    # is the CD-setting write at +11 (APM 15.9.1, selective CR0 write).
    assert got[1] == ("CR0_SEL_WRITE", "11")


def test_intercepts_qemu_invd_is_tagged(runs):
    assert ("[qemu] exit 15: WBINVD (0x89) info1=0x0 info2=0x0 rip=gt_start+48 "
            "(APM: INVD, 0x76)\n") in runs["svm_intercepts"][1]


def test_intercepts_decode_assist_values_are_cpu_lines(runs):
    out = runs["svm_intercepts"][1]
    assert out.count("[cpu]   info1=0x0 (decode assists: no)\n") == 10
    assert "guest CR0.CD after the intercepted write: 0\n" in out
