"""svm_ioio (tests/guests/svm_ioio.c) under QEMU TCG: IOIO, MSR, exception
and CPUID intercepts with exact EXITINFO1/2 (AMD APM vol 2, 15.10-15.13).

The kernel is booted once; the tests check APM facts in its transcript and
that it equals the recorded one (tests/guests/expected/svm_ioio.txt).
``[qemu] `` lines carry QEMU 7.2's value with the APM's alongside; ``[cpu] ``
lines depend on the CPU model (see test_svm_guests_qemu.apm_lines).
"""
from __future__ import annotations

import re

import pytest

import guestbuild as gb

pytestmark = pytest.mark.qemu

NAME = "svm_ioio"

IOIO_RE = re.compile(r"^(.*): exit IOIO \(0x7b\) info1=0x([0-9a-f]+) info2=(\S+) "
                     r"rip=(\S+) rcx=(\d+)$")
NOEXIT_RE = re.compile(r"^(.*): no exit, then HLT at (\S+)$")


@pytest.fixture(scope="module")
def run():
    if not gb.qemu_available():
        pytest.skip("qemu-system-x86_64 not installed")
    return gb.qemu_transcript(NAME)


@pytest.fixture(scope="module")
def out(run):
    return run[1]


def ioio_exits(out: str) -> dict[str, tuple[int, str, str, int]]:
    """what -> (EXITINFO1 without bits 12:7, EXITINFO2 label, RIP label, RCX)."""
    got = {}
    for line in out.splitlines():
        m = IOIO_RE.match(line)
        if m:
            got[m[1]] = (int(m[2], 16), m[3], m[4], int(m[5]))
    return got


def test_recorded_transcript_and_pass(run):
    status, out = run
    assert out == gb.expected_transcript(NAME).decode()
    assert status == gb.STATUS_PASS
    assert out.endswith(f"{NAME}: PASS\n")
    assert "FAIL" not in out


def test_ioio_in_out_sizes_and_type(out):
    # APM 15.10.2: TYPE bit 0 = IN, SZ8/16/32 = bits 4/5/6, port in 31:16,
    # EXITINFO2 = the next RIP; RIP = the I/O instruction.
    ex = ioio_exits(out)
    assert ex["in al, 0x99"] == (0x990011, "gi_in8i+2", "gi_in8i", 5)
    assert ex["in ax, 0x99"] == (0x990021, "gi_in16i+3", "gi_in16i", 5)
    assert ex["in eax, 0x99"] == (0x990041, "gi_in32i+2", "gi_in32i", 5)
    assert ex["out 0x99, al"] == (0x990010, "gi_out8i+2", "gi_out8i", 5)
    assert ex["out 0x99, ax"] == (0x990020, "gi_out16i+3", "gi_out16i", 5)
    assert ex["out 0x99, eax"] == (0x990040, "gi_out32i+2", "gi_out32i", 5)
    assert ex["in al, dx=0x1234"] == (0x12340011, "gi_in8d+1", "gi_in8d", 5)
    assert ex["out dx=0x1234, ax"] == (0x12340020, "gi_out16d+2", "gi_out16d", 5)


def test_ioio_string_and_rep(out):
    # STR = bit 2, REP = bit 3; a REP exit comes before the first iteration,
    # so RCX is unchanged (5).
    ex = ioio_exits(out)
    assert ex["insb"][0] == 0x12340015
    assert ex["outsd"][0] == 0x12340044
    assert ex["rep insb"] == (0x1234001D, "gi_rep_insb+2", "gi_rep_insb", 5)
    assert ex["rep outsd"] == (0x1234004C, "gi_rep_outsl+2", "gi_rep_outsl", 5)
    assert ex["gs rep outsw"] == (0x1234002C, "gi_gs_rep_outsw+4", "gi_gs_rep_outsw", 5)
    assert ex["addr32 rep insw"] == (0x1234002D, "gi_a32_rep_insw+4", "gi_a32_rep_insw", 5)
    assert ex["prot32 addr16 rep insb"][0] == 0x1234001D
    assert all(rcx == 5 for _, _, _, rcx in ex.values())


def test_ioio_exitinfo2_is_the_next_instruction(out):
    for what, (_, info2, rip, _) in ioio_exits(out).items():
        assert info2.startswith(rip + "+"), what


def test_ioio_straddling_and_third_iopm_page(out):
    # APM 15.10.1: all bits of a multi-byte access are checked; port FFFFh
    # uses bits 10000h-10002h.
    ex = ioio_exits(out)
    assert ex["in ax, dx=0x1237, only 0x1238 marked"][0] == 0x12370021
    assert ex["in eax, dx=0x1234, only 0x1237 marked"][0] == 0x12340041
    assert ex["out dx=0x1235, eax, only 0x1236 marked"][0] == 0x12350040
    assert ex["outsw dx=0x1237, only 0x1238 marked"][0] == 0x12370024
    assert ex["in ax, dx=0xffff, only bit 0x10000 set"][0] == 0xFFFF0021
    assert ex["in eax, dx=0xffff, only bit 0x10002 set"][0] == 0xFFFF0041
    assert ex["out dx=0xffff, ax, only bit 0x10000 set"][0] == 0xFFFF0020
    no_exit = {m[1]: m[2] for m in map(NOEXIT_RE.match, out.splitlines()) if m}
    assert no_exit == {
        "in eax, dx=0x1234, only 0x1238 marked": "gi_in32d+1",
        "in al, dx=0x1237, only 0x1238 marked": "gi_in8d+1",
        "in al, dx=0xffff, only bit 0x10000 set": "gi_in8d+1",
        "in eax, dx=0xffff, only bit 0x10003 set": "gi_in32d+1",
    }


def iopm_exits(port: int, size: int, marked: int) -> bool:
    """APM 15.10.1 model: the access checks bits port .. port+size-1."""
    return port <= marked < port + size


def test_straddle_lines_follow_the_iopm_model(out):
    pat = re.compile(r"^([^:]*dx=0x([0-9a-f]+)[^:]*only (?:bit )?0x([0-9a-f]+) (?:marked|set)): ")
    checked = 0
    for line in out.splitlines():
        m = pat.match(line)
        if not m:
            continue
        reg = re.search(r"\b(al|ax|eax)\b", m[1])
        size = {"al": 1, "ax": 2, "eax": 4}[reg[1]] if reg else 2   # outsw
        exits = ": exit IOIO" in line
        assert exits == iopm_exits(int(m[2], 16), size, int(m[3], 16)), line
        checked += 1
    assert checked == 11


def test_ioio_qemu_omits_address_size_and_segment(out):
    # Bits 9:7 = A16/A32/A64, 12:10 = segment (ES 0, CS 1, SS 2, DS 3, FS 4, GS 5).
    apm = re.findall(r"^\[qemu\]   address size (?:and segment )?bits (?:12|9):7 = 0x0 "
                     r"\(APM: 0x([0-9a-f]+)\)$", out, re.M)
    assert len(apm) == len(ioio_exits(out))
    text = out
    for what, bits in [("outsb", 0xE00), ("fs outsb", 0x1200), ("gs rep outsw", 0x1600),
                       ("insb", 0x200), ("fs insb (override ignored)", 0x200),
                       ("addr32 outsb", 0xD00), ("addr32 rep insw", 0x100),
                       ("prot32 outsb", 0xD00), ("prot32 addr16 outsb", 0xC80),
                       ("prot32 es outsw", 0x100), ("prot32 cs outsb", 0x500),
                       ("prot32 ss outsb", 0x900), ("prot32 addr16 rep insb", 0x80)]:
        m = re.search("^" + re.escape(what) + r": exit IOIO.*\n\[qemu\].* \(APM: 0x([0-9a-f]+)\)$",
                      text, re.M)
        assert m and int(m[1], 16) == bits, what
    assert ("prot32 in al, dx: exit IOIO (0x7b) info1=0x12340011 info2=gp_in8d+1 rip=gp_in8d "
            "rcx=5\n[qemu]   address size bits 9:7 = 0x0 (APM: 0x100)\n") in out


def test_ioio_pass_through(out):
    assert ("CMOS index 0x0d via out 0x70 / in 0x71 (0x6f, 0x72 marked): exit HLT at "
            "gi_cmos+6, guest read the host's value: yes\n") in out
    assert "in al, 0x80 (0x7f, 0x81 marked): exit HLT at gi_in80+2\n" in out


def test_msrpm_three_ranges_read_and_write(out):
    # APM 15.11: EXITINFO1 = 0 for RDMSR, 1 for WRMSR; the even bit of a pair
    # is the read intercept, the odd bit the write intercept.
    for msr in ("0x174", "0xc0000084", "0xc0010117"):
        assert (f"RDMSR {msr} (read intercepted): exit MSR (0x7c) info1=0x0 rip=gm_rdmsr\n"
                f"WRMSR {msr} (read intercepted): no exit, HLT at gm_wrmsr+2\n") in out
        assert f"RDMSR {msr} (write intercepted): no exit, HLT at gm_rdmsr+2\n" in out
        assert f"WRMSR {msr} (write intercepted): exit MSR (0x7c) info1=0x1 rip=gm_wrmsr\n" in out
    assert "VM_HSAVE_PA (0xc0010117): MSRPM byte 0x1045, bits 6/7\n" in out
    assert "  VMCB SYSENTER_CS after VMSAVE = 0x18\n" in out
    assert "  guest read 0x4700 (the value VMLOAD loaded)\n" in out


def test_msr_outside_the_ranges_always_exits(out):
    for msr in ("0x2000", "0x40000000", "0xc0002000", "0xc0020000"):
        for op, info1 in (("RDMSR", 0), ("WRMSR", 1)):
            rip = "gm_rdmsr" if op == "RDMSR" else "gm_wrmsr"
            assert (f"{op} {msr} (outside the MSRPM, MSRPM all 0): exit MSR (0x7c) "
                    f"info1=0x{info1} rip={rip}\n") in out


def test_msr_not_intercepted_reaches_the_real_msr(out):
    assert ("  VMCB STAR after VMSAVE = 0x23001000000000, host STAR restored by VMLOAD: yes\n"
            in out)
    assert "  guest read 0x5a5a (the host wrote 0x5a5a)\n" in out


def test_pf_intercept_and_cr2(out):
    # APM 15.12: EXITINFO1 = #PF error code, EXITINFO2 = the address; CR2 is
    # not written by an intercepted #PF.
    assert ("#PF write, not present: exit EXCP_PF (0x4e) info1=0x2 info2=0x40000010 "
            "exitintinfo=0x0 rip=ge_pf_w\n  guest CR2 in the VMCB at the exit: 0x1234\n") in out
    assert "info1=0x0 info2=0x40000020 exitintinfo=0x0 rip=ge_pf_r\n" in out
    assert ("#PF write, read-only page, CR0.WP=1: exit EXCP_PF (0x4e) info1=0x3 "
            "info2=0x40001030") in out
    assert out.count("  guest CR2 in the VMCB at the exit: 0x1234\n") == 3
    handler = "  guest handler: vector 0xe, error code 0x3, CR2 0x40001030, return RIP ge_pf_w\n"
    assert f"#PF reflected with EVENTINJ: exit HLT\n{handler}" in out
    assert f"#PF not intercepted: exit HLT\n{handler}" in out


def test_gp_de_db_intercepts(out):
    assert "#GP far jmp to a null selector: exit EXCP_GP (0x4d) info1=0x0 " in out
    assert "(beyond the GDT limit): exit EXCP_GP (0x4d) info1=0x1000 " in out
    assert "(a data segment): exit EXCP_GP (0x4d) info1=0x10 " in out
    assert "#GP non-canonical read: exit EXCP_GP (0x4d) info1=0x0 exitintinfo=0x0 rip=ge_gp_nc\n" in out
    assert "#DE div by 0: exit EXCP_DE (0x40) info1=0x0 exitintinfo=0x0 rip=ge_de\n" in out
    # #DB is a trap: RIP after the stepped NOP; DR6.BS (bit 14) already set.
    assert ("#DB single-step (TF set by POPF): exit EXCP_DB (0x41) info1=0x0 exitintinfo=0x0 "
            "rip=ge_tf_next\n  VMCB DR6=0xffff4ff0 DR7=0x400 RFLAGS.TF=1\n") in out


def test_qemu_bp_and_ac_divergences_are_tagged(out):
    # QEMU 7.2 delivers INT3's #BP to the guest despite the #BP intercept and
    # has no #AC; the APM values are on the same lines.
    assert ("[qemu] #BP from INT3: exit HLT (0x78) info1=0x0 rip=gx_isr_3+46, guest #BP "
            "handler ran: yes (APM: EXCP_BP (0x43) info1=0x0 rip=ge_int3, handler not run)\n"
            ) in out
    assert ("[qemu] #AC at CPL 3: exit CPUID (0x72) info1=0x0 rip=gu_ac+3 "
            "(APM: EXCP_AC (0x51) info1=0x0 rip=gu_ac)\n") in out


def test_cpuid_intercept(out):
    assert ("CPUID 0x8000000a, intercepted: exit CPUID (0x72) info1=0x0 info2=0x0 rip=gc_cpuid "
            "eax=0x8000000a\n") in out
    assert "  hv: leaf emulated as 0; guest sees EAX=0x0 EBX=0x0 ECX=0x0 EDX=0x0\n" in out
    assert re.search(r"^\[cpu\] host CPUID 1 ECX\[31\] \(hypervisor present\) = [01]$", out, re.M)
    assert "[cpu] NRIP save: " in out
