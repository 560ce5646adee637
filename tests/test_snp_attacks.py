"""The malicious-hypervisor gallery (issue 10 item 9): one guest
(tests/guests/attack_target.S) launched through the AMD-SP as SEV, SEV-ES
and SEV-SNP; each attack gets what the literature reports against SEV and
SEV-ES and is stopped on SEV-SNP where APM vol 2, 15.36 says."""
import pytest

import guestbuild
from svmsim.vmm import attacks

NPF_P, NPF_ID = 1 << 0, 1 << 4
RMP, FINAL, ENC, SIZEM, VMPL = 1 << 31, 1 << 32, 1 << 34, 1 << 35, 1 << 36


@pytest.fixture(scope="module")
def kernel():
    return str(guestbuild.build_guest("attack_target", kind="asm"))


@pytest.fixture(scope="module")
def symbols(kernel):
    return attacks._symbols(kernel)


@pytest.mark.parametrize("mode", ["sev", "seves"])
@pytest.mark.parametrize("attack", ["remap", "replay", "inject", "page-state", "cpuid"])
def test_attack_succeeds_without_snp(kernel, attack, mode):
    """SEV and SEV-ES keep guest memory confidential but not intact: the
    hypervisor remaps, replays, injects and lies, and the guest cannot tell."""
    o = attacks.ATTACKS[attack](kernel, mode)
    assert o.achieved, o.what
    assert not o.stop


def test_vmsa_is_read_and_changed_under_sev(kernel):
    """Plain SEV keeps the guest's registers in the VMCB and the CPU: the
    hypervisor reads the PIN from EBP and moves RIP to the code that
    answers with the secret."""
    o = attacks.attack_vmsa(kernel, "sev")
    assert o.achieved and "0x4711" in o.what and "TOP SECRET" in o.what


def test_changed_vmsa_fails_vmrun_under_sev_es(kernel):
    """15.35.8: "if the integrity checksum fails to match, a
    #VMEXIT(VMEXIT_INVALID) is generated"."""
    o = attacks.attack_vmsa(kernel, "seves")
    assert not o.achieved and o.stop == {"exit": "INVALID", "rule": "SEV_ES_VMSA_INTEGRITY"}


def test_remap_is_a_reverse_map_npf_on_snp(kernel, symbols):
    """Table 15-37, a private data read: the Reverse-Map check fails ->
    #VMEXIT(NPF) with the RMP and ENC bits, EXITINFO2 = the gPA."""
    o = attacks.attack_remap(kernel, "snp")
    assert not o.achieved and o.stop["exit"] == "NPF"
    assert o.stop["info1"] & (RMP | ENC | FINAL | NPF_P) == RMP | ENC | FINAL | NPF_P
    assert not o.stop["info1"] & (SIZEM | VMPL | NPF_ID)
    assert o.stop["info2"] == symbols["public_page"]


def test_replay_faults_on_the_host_write_and_dma_is_blocked_on_snp(kernel):
    """Table 15-37, host data write: Hypervisor-Owned, else #PF with bit 31
    (RMP) of the error code; a device's write to the guest page is blocked;
    the guest's counter runs out as it should."""
    o = attacks.attack_replay(kernel, "snp")
    fault = o.stop["host_fault"]
    assert not o.achieved and "locked" in o.what
    assert fault.vector == 14 and fault.error_code & (1 << 31 | 2) == 1 << 31 | 2
    assert o.stop["dma_landed"] is False


def test_injected_code_is_a_reverse_map_npf_on_the_fetch_on_snp(kernel, symbols):
    """Instruction fetches are always private (15.36.10: effective C-bit 1)
    and take the same Reverse-Map check: #VMEXIT(NPF) with ID set."""
    o = attacks.attack_inject(kernel, "snp")
    assert not o.achieved and o.stop["exit"] == "NPF"
    assert o.stop["info1"] & (RMP | ENC | NPF_ID) == RMP | ENC | NPF_ID
    assert o.stop["info2"] == symbols["plugin"]


def test_rmpupdate_behind_the_guest_is_vc_404_in_the_guest(kernel, symbols):
    """15.36.6: "any use of RMPUPDATE by the hypervisor to unassign,
    reassign, or remap the page will cause the page to become unvalidated.
    The VM can then detect tampering ... via the #VC"; 15.36.10: error code
    PAGE_NOT_VALIDATED (0x404), the faulting address in CR2."""
    o = attacks.attack_page_state(kernel, "snp")
    vector, error, cr2, _ = o.stop["guest_fault"]
    assert not o.achieved and (vector, error, cr2) == (29, 0x404, symbols["attempts_page"])
    assert "RMPUPDATE 0x" in o.steps[0] and o.steps[0].endswith(": 0")      # RMPUPDATE itself succeeds


def test_vmsa_write_faults_and_a_page_remade_by_rmpupdate_fails_vmrun_on_snp(kernel):
    """The VMSA is a guest page: the host's write is an RMP #PF; after
    RMPUPDATE (which clears the VMSA flag) VMRUN fails the VMSA check of
    table 15-39."""
    o = attacks.attack_vmsa(kernel, "snp")
    assert not o.achieved and o.stop == {"exit": "INVALID", "rule": "SNP_VMSA_RMP"}
    assert "#PF error code 0x80000003 (P, W, RMP)" in o.steps[1]


def test_cpuid_page_with_a_false_c_bit_is_refused_by_the_firmware(kernel):
    """The CPUID page is checked by the AMD-SP at SNP_LAUNCH_UPDATE: a C-bit
    other than the processor's fails with INVALID_PARAM and is corrected in
    place; the guest that reads the corrected page encrypts its key."""
    o = attacks.attack_cpuid(kernel, "snp")
    assert not o.achieved and o.stop == {"firmware": ["INVALID_PARAM"]}
    assert "0x416a -> 0x416f" in o.what


def test_snp_outcomes_never_leak_the_secret(kernel):
    for outcome in attacks.gallery(kernel, modes=("snp",)):
        assert not outcome.achieved and "TOP SECRET" not in outcome.what, outcome.line()


@pytest.mark.slow
def test_demo_attacks_passes(capsys):
    from svmsim.cli import main
    assert main(["demo", "attacks"]) == 0
    out = capsys.readouterr()
    assert out.out.count("STOPPED") >= 7 and "PASS" in out.err
