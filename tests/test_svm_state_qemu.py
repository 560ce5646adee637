"""The svm_state test hypervisor (tests/guests/svm_state.c) under QEMU TCG.

World-switch state and the SVM instructions, AMD APM vol 2 chapter 15 and
vol 3: host state after #VMEXIT (15.5.1, 15.6), guest state written to the
VMCB, VMSAVE/VMLOAD (15.5.2) and their #GP/#UD conditions, the SVM
instructions inside a guest (intercepted, and #UD with the guest's
EFER.SVME = 0), TSC_OFFSET and the RDTSC/RDTSCP/RDPMC intercepts, the
SHUTDOWN intercept, and 32-bit guests with their own (non-PAE and PAE) paging.

The transcript is recorded from ``qemu-system-x86_64 -accel tcg -cpu EPYC``.
``[qemu] ... (APM: ...)`` lines mark where QEMU 7.2 departs from the APM;
``[cpu]`` lines depend on the CPU model.  Every other line is an APM-defined
value that svmsim must reproduce verbatim.
"""
from __future__ import annotations

import re

import pytest

import guestbuild as gb
from test_svm_guests_qemu import apm_lines

pytestmark = pytest.mark.qemu

NAME = "svm_state"


@pytest.fixture(scope="module")
def run():
    if not gb.qemu_available():
        pytest.skip("qemu-system-x86_64 not installed")
    return gb.qemu_transcript(NAME)


@pytest.fixture(scope="module")
def out(run):
    return run[1]


def test_every_section_ran(out):
    assert re.findall(r"^== (\d)\. ", out, re.M) == ["1", "2", "3", "4", "5", "6"]


def test_tagged_lines_carry_the_apm_value(out):
    for line in out.splitlines():
        if line.startswith("[qemu] "):
            assert "(APM: " in line, line
    # The untagged lines are what svmsim must print verbatim.
    assert all(not line.startswith("[") for line in apm_lines(out))


# ------------------------------------------------------------ 1. host state (15.5.1, 15.6)

def test_host_state_restored_after_vmexit(out):
    assert "exit: VMMCALL (0x81) rip=g1_vmmcall\n" in out
    assert "  RSP = RSP at VMRUN: yes\n" in out
    assert "  RAX = VMCB address (RAX at VMRUN): yes\n" in out
    # RFLAGS at VMRUN had IF, AC and every arithmetic flag set.
    assert "  RFLAGS = 0x40ad7 (at VMRUN 0x40ad7: IF and arithmetic flags restored)\n" in out
    assert "  CR0, CR3, CR4, EFER as before VMRUN: yes yes yes yes (EFER=0x1500)\n" in out
    assert "  ES CS SS DS = 0x10 0x8 0x10 0x10 (before: 0x10 0x8 0x10 0x10)\n" in out
    assert "  GDTR limit 0xaf, IDTR limit 0xfff, bases as before: yes\n" in out


def test_vmexit_does_not_switch_the_vmload_state(out):
    assert ("  not switched by #VMEXIT (VMSAVE/VMLOAD state): FS = 0x23, FS_BASE = 0x5a5a000, "
            "STAR = 0x33004411112222 (the guest's: yes)\n") in out


def test_host_dr7_after_vmexit_is_tagged(out):
    # 15.6: #VMEXIT disables all host breakpoints (Bochs/KVM: DR7 = 0x400);
    # QEMU 7.2 reloads the DR7 the host had at VMRUN.
    m = re.search(r"^\[qemu\] host DR7 after #VMEXIT = (0x[0-9a-f]+), before VMRUN 0x402 "
                  r"\(APM: 0x400, breakpoints disabled\)$", out, re.M)
    assert m and m[1] in ("0x400", "0x402")


def test_guest_state_written_to_the_vmcb(out):
    assert ("  RIP = g1_vmmcall, RSP = guest stack top - 0x48, RAX = 0x1122334455667788, "
            "RFLAGS = 0xcd7\n") in out
    assert ("  CR0 ^ host CR0 = 0xa, CR2 = 0xc2c2deadbeef, CR3 = pml4_copy+0x18, "
            "CR4 ^ host CR4 = 0x404\n") in out
    assert "  EFER = 0x1d01, CPL = 0, DR6 = 0xffff4ff1, DR7 = 0xf0f00700\n" in out
    # Segment attributes in VMCB form (descriptor bits 47:40, 55:52); DS/ES
    # loaded from a DPL 3 descriptor, accessed bit set by the load.
    assert "  CS: sel=0x8 attr=0x0a9b limit=0xffffffff base=0x0\n" in out
    assert "  SS: sel=0x10 attr=0x0c93 limit=0xffffffff base=0x0\n" in out
    assert "  DS: sel=0x23 attr=0x0cf3 limit=0xffffffff base=0x0\n" in out
    assert "  ES: sel=0x23 attr=0x0cf3 limit=0xffffffff base=0x0\n" in out
    assert "  GDTR limit 0x2f (base = host GDT: yes), IDTR limit 0x7f (base = g1_idt: yes)\n" in out


# ------------------------------------------------------------ 2. VMSAVE / VMLOAD (15.5.2)

def test_vmsave_stores_exactly_its_state(out):
    assert "  FS: sel=0x10 attr=0x0c93 limit=0xffffffff base=0x7f1122223000\n" in out
    assert "  GS: sel=0x10 attr=0x0c93 limit=0xffffffff base=0xffff802233334000\n" in out
    assert "  LDTR: sel=0xa0 attr=0x0082 limit=0x1f base=ldt_a: yes\n" in out
    for field in ("KERNEL_GS_BASE = 0xffff803344445000", "STAR = 0x1b000812345678",
                  "LSTAR = 0xffff804455556000", "CSTAR = 0xffff805566667000",
                  "SFMASK = 0x47fd5", "SYSENTER_CS = 0x48", "SYSENTER_ESP = 0x88776650",
                  "SYSENTER_EIP = 0x99887760"):
        assert f"  {field}\n" in out
    assert "  bytes written outside FS/GS/LDTR/TR and 600h-63Fh: 0\n" in out
    # The hidden TR type after LTR: busy (0Bh) per the APM, QEMU keeps 9.
    assert re.search(r"^\[qemu\]  TR: sel=0x30 attr=0x008[9b] limit=0x67 base=the TSS: yes "
                     r"\(APM: attr=0x008b, busy TSS after LTR\)$", out, re.M)


def test_vmload_loads_exactly_its_state(out):
    assert ("  FS = 0x23 base 0x7f0033334000, GS = 0x0 base 0xffff804444445000, LDTR = 0xa0, "
            "TR = 0x40\n") in out
    assert "  RDMSR KERNEL_GS_BASE..SYSENTER_EIP = the page's values: yes\n" in out
    assert "  ES CS SS DS unchanged: yes; CR0 CR3 CR4 EFER unchanged: yes\n" in out
    assert "  VMSAVE after VMLOAD gives back the page: yes (0 bytes differ)\n" in out
    assert "  MOV FS, 0x0c (LDT entry 1) -> FS_BASE = 0xabc000 (LDTR base from VMLOAD used)\n" in out


def test_svm_instructions_gp_on_bad_rax(out):
    for insn in ("VMRUN", "VMLOAD", "VMSAVE"):
        assert f"{insn} with rAX 4 KiB aligned + 0x800: #GP(0)\n" in out
        assert f"{insn} with rAX = 1 << MAXPHYADDR: #GP(0)\n" in out


def test_svm_instructions_ud_without_svme(out):
    assert ("with EFER.SVME = 0:\n  VMRUN: #UD\n  VMLOAD: #UD\n  VMSAVE: #UD\n"
            "  INVLPGA: #UD\n") in out
    assert "VMMCALL in the host (never intercepted): SVME=0 #UD, SVME=1 #UD\n" in out


# ------------------------------------------------------------ 3. SVM instructions in a guest

def test_guest_svm_instruction_intercepts(out):
    got = re.findall(r"^exit: (\S+) \((0x[0-9a-f]+)\) rip=(g3\S+)$", out, re.M)
    assert got == [("VMLOAD", "0x82", "g3_vmload"), ("VMSAVE", "0x83", "g3_vmsave"),
                   ("STGI", "0x84", "g3_stgi"), ("CLGI", "0x85", "g3_clgi"),
                   ("VMRUN", "0x80", "g3_vmrun"), ("INVLPGA", "0x7a", "g3_invlpga"),
                   ("EXCP_UD", "0x46", "g3_vmmcall"), ("VMMCALL", "0x81", "g3_vmmcall2")]
    # QEMU checks the SKINIT intercept before the #UD of a CPU without SKINIT
    # (EPYC has none): a [qemu] line with the APM's #UD alongside.
    assert "[qemu] exit: SKINIT (0x86) rip=g3_skinit (APM: EXCP_UD, 0x46)\n" in out
    assert "exit: EXCP_UD (0x46) rip=g3_vmmcall\n  exitintinfo=0x0\n" in out


def test_guest_ud_before_intercepts_without_svme(out):
    # Every intercept still on; the #UD wins for each (guest IDT logs them).
    assert ("  #UD at g3u_vmrun\n  #UD at g3u_vmload\n  #UD at g3u_vmsave\n"
            "  #UD at g3u_invlpga\n  #UD at g3u_vmmcall\n") in out


# ------------------------------------------------------------ 4. TSC

def test_tsc_offset_applies_to_guest_reads_only(out):
    for insn in ("RDTSC", "RDTSCP"):
        assert out.count(f"  guest {insn} - offset within the host's window: yes\n") == 2
    assert out.count("  host TSC after #VMEXIT has no offset: yes\n") == 2
    # QEMU 7.2 leaves TSC_OFFSET out of RDMSR TSC.
    assert len(re.findall(r"^\[qemu\]  guest RDMSR TSC - offset within the host's window: "
                          r"(yes|no) \(APM: yes\)$", out, re.M)) == 2


def test_tsc_and_pmc_intercepts(out):
    assert "RDTSC intercept, RDTSC: exit RDTSC (0x6e) rip=g4_rdtsc\n" in out
    assert "RDPMC intercept, RDPMC: exit RDPMC (0x6f) rip=g4_rdpmc\n" in out
    assert re.search(r"^\[qemu\] RDTSCP intercept, RDTSCP: exit .* "
                     r"\(APM: RDTSCP \(0x87\) rip=g4_rdtscp\)$", out, re.M)
    assert re.search(r"^\[qemu\] RDTSC intercept, RDTSCP: exit .* "
                     r"\(APM: HLT \(0x78\) rip=g4_hlt3\)$", out, re.M)


# ------------------------------------------------------------ 5. SHUTDOWN

def test_triple_fault_exits_with_shutdown(out):
    assert "triple fault in the guest: exit SHUTDOWN (0x7f)\n" in out
    assert "host continues; next guest: exit: HLT (0x78) rip=g5_hlt\n" in out


# ------------------------------------------------------------ 6. paged 32-bit guests

@pytest.mark.parametrize("mode,cr3,cr4,eax", [("non-PAE", "pd32", "0x10", "0x600df00d"),
                                              ("PAE", "pdpt_pae", "0x20", "0xfaceb00c")])
def test_paged_32bit_guest(out, mode, cr3, cr4, eax):
    block = out[out.index(f"\n{mode}: exit: ") + 1:]
    assert block.startswith(
        f"{mode}: exit: VMMCALL (0x81) rip=g6_vmmcall\n"
        f"  EAX = {eax} EBX = 0x5afe7ab1 (read at 0x40000000 through the guest's tables)\n"
        f"  CR0 = 0x80000011, CR3 = {cr3}: yes, CR4 = {cr4}, EFER = 0x1000, "
        f"host CR3 restored: yes\n"
        "  unmapped read: exit: EXCP_PF (0x4e) rip=g6_pf\n"
        "  EXITINFO1 (error code) = 0x0, EXITINFO2 (address) = 0x50000000\n"
        "  after IRET to CPL 3: exit: CPUID (0x72) rip=g6_ucpuid\n"
        "  CPL = 3,  CS: sel=0x1b attr=0x0cfb limit=0xffffffff,  "
        "SS: sel=0x23 attr=0x0cf3 limit=0xffffffff\n")
