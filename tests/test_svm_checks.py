"""VMRUN's #UD/#GP checks and VMEXIT_INVALID consistency checks
(svmsim/svm/checks.py; APM vol 2, 15.5.1, 15.16, 15.20, 15.25.3-4; vol 3 VMRUN)."""
from types import SimpleNamespace

import pytest

from svmsim.svm import checks as C
from svmsim.svm.checks import CpuCaps, InvalidReason, check_guest_state, check_vmrun_instruction

CAPS = CpuCaps(phys_bits=48)
HOST = SimpleNamespace(cr0=0x80050033, efer=0x1D01)      # host in long mode, paging on
S1, S2, S3 = "APM vol 2, 15.5.1", "APM vol 2, 15.20", "APM vol 2, 15.16"
NP3, NP4 = "APM vol 2, 15.25.3", "APM vol 2, 15.25.4"

# A 64-bit guest: EFER = SVME|NXE|LMA|LME|SCE, CR0 = PG|AM|WP|NE|ET|MP|PE,
# CR4 = PAE|PGE|OSFXSR|OSXMMEXCPT, CS = 64-bit code (L=1, D=0).
BASE64 = {
    "EFER": 0x1D01, "CR0": 0x80050033, "CR3": 0x1000, "CR4": 0x6A0,
    "DR6": 0xFFFF0FF0, "DR7": 0x400, "CS.ATTRIB": 0x29B,
    "INTERCEPT_MISC2": 0x1, "MSRPM_BASE_PA": 0x10000, "IOPM_BASE_PA": 0x20000,
    "EVENTINJ": 0, "GUEST_ASID": 1, "NP_ENABLE": 1, "N_CR3": 0x30000,
    "G_PAT": 0x0007040600070406,
}
# A 32-bit protected-mode guest with non-PAE paging: EFER = SVME,
# CR0 = PG|ET|PE, CR4 = PSE, CS = 32-bit code (G=1, D=1).
BASE32 = dict(BASE64, **{"EFER": 0x1000, "CR0": 0x80000011, "CR3": 0x2000, "CR4": 0x10,
                         "CS.ATTRIB": 0xC9B})
BASES = {"long64": BASE64, "prot32": BASE32}


def vm(base, **changes):
    d = dict(BASES[base])
    for k, v in changes.items():
        d[k.replace("__", ".")] = v
    return d


def check(vmcb, caps=CAPS, host=HOST):
    return check_guest_state(vmcb, caps, host)


def assert_reason(r, rule, fld, value, section):
    assert isinstance(r, InvalidReason), r
    assert (r.rule, r.field, r.value, r.section) == (rule, fld, value, section)
    assert fld in r.message and f"{value:#x}" in r.message and section in r.message
    assert rule in str(r) and str(r).startswith("VMEXIT_INVALID")


@pytest.mark.parametrize("base", BASES)
def test_baselines_pass(base):
    assert check(vm(base)) is None


# (rule, field, bad value for long64, bad value for prot32, section).  Each
# breaks exactly one field of the baseline.
ONE_FIELD = [
    ("EFER.SVME", "EFER", 0x0D01, 0x0000, S1),
    ("CR0.CD_NW", "CR0", 0xA0050033, 0xA0000011, S1),
    ("CR0_HI", "CR0", 0x1_80050033, 0x100_80000011, S1),
    ("CR3_MBZ", "CR3", 1 << 48 | 0x1000, 1 << 63 | 0x2000, S1),
    ("CR4_MBZ", "CR4", 0x6A0 | 1 << 23, 0x10 | 1 << 15, S1),
    ("DR6_HI", "DR6", 1 << 32 | 0xFFFF0FF0, 1 << 63 | 0xFFFF0FF0, S1),
    ("DR7_HI", "DR7", 1 << 40 | 0x400, 1 << 32 | 0x400, S1),
    ("EFER_MBZ", "EFER", 0x1D01 | 1 << 9, 0x1000 | 1 << 2, S1),
    ("VMRUN_INTERCEPT", "INTERCEPT_MISC2", 0x3E, 0, S1),
    ("MSRPM_RANGE", "MSRPM_BASE_PA", (1 << 48) - 0x1000, 1 << 50, S1),
    ("IOPM_RANGE", "IOPM_BASE_PA", (1 << 48) - 0x2000, (1 << 64) - 0x1000, S1),
    ("EVENTINJ", "EVENTINJ", 0x80000102, 0x80000302, S2),
    ("ASID_ZERO", "GUEST_ASID", 0, 0, S3),
    ("NP_NCR3_MBZ", "N_CR3", 1 << 51 | 0x30000, 1 << 48, NP4),
    ("NP_GPAT", "G_PAT", 0x0007040600070402, 0x0807040600070406, NP4),
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("rule,fld,bad64,bad32,section", ONE_FIELD, ids=[r[0] for r in ONE_FIELD])
def test_each_rule_one_field(base, rule, fld, bad64, bad32, section):
    bad = bad64 if base == "long64" else bad32
    d = vm(base)
    d[fld] = bad
    assert_reason(check(d), rule, fld, bad, section)


# Long-mode rules: only a guest that loads EFER.LME = 1 with CR0.PG = 1.
def test_lme_pg_without_pae():
    assert_reason(check(vm("long64", CR4=0x680)), "LME_PG_NO_PAE", "CR4", 0x680, S1)


def test_lme_pg_without_pe():
    assert_reason(check(vm("long64", CR0=0x80050032)), "LME_PG_NO_PE", "CR0", 0x80050032, S1)


def test_cs_l_and_d_in_long_mode():
    assert_reason(check(vm("long64", CS__ATTRIB=0x69B)), "CS_L_AND_D", "CS.ATTRIB", 0x69B, S1)


def test_cs_l_and_d_outside_long_mode_is_legal():
    # The APM's rule needs EFER.LME, CR0.PG and CR4.PAE too (Bochs is stricter).
    assert check(vm("prot32", CS__ATTRIB=0xE9B)) is None


def test_lme_without_paging_is_legal():
    # LME = 1 with CR0.PG = 0: long mode not yet active, no rule applies.
    assert check(vm("prot32", EFER=0x1100, CR0=0x11, CR4=0)) is None


@pytest.mark.parametrize("base,efer", [("long64", 0x1D01), ("prot32", 0x1100)])
def test_long_mode_unsupported(base, efer):
    caps = CpuCaps(phys_bits=36, long_mode=False)
    d = vm(base, EFER=efer, CR3=0x1000, MSRPM_BASE_PA=0x10000, IOPM_BASE_PA=0x20000,
           N_CR3=0x30000)
    assert_reason(check(d, caps), "LONG_MODE_UNSUPPORTED", "EFER", efer, S1)


def test_np_enable_with_host_paging_off():
    host = SimpleNamespace(cr0=0x11, efer=0x1000)
    r = check(vm("prot32"), host=host)
    assert_reason(r, "NP_HOST_PAGING_OFF", "NP_ENABLE", 1, NP3)
    assert "host CR0 = 0x11" in r.message


def test_np_rules_need_np_enable():
    host = SimpleNamespace(cr0=0x11, efer=0x1000)
    d = vm("long64", NP_ENABLE=0, N_CR3=1 << 60, G_PAT=0x0202020202020202)
    assert check(d, host=host) is None


def test_np_rules_ignored_without_npt_support():
    caps = CpuCaps(npt=False)
    assert check(vm("long64", N_CR3=1 << 60), caps) is None


# ---------------------------------------------------------------- rule details
def test_cr3_reserved_but_not_mbz_bits_pass():
    # Bits 11:5 and 2:0 are "reserved" but hardware runs the guest
    # (kvm-unit-tests test_cr3); only bits >= MAXPHYADDR are MBZ.
    assert check(vm("long64", CR3=0x1FE7)) is None
    assert check(vm("prot32", CR3=0x2FFF)) is None
    assert check(vm("long64", CR3=(1 << 48) - 0x1000)) is None


def test_cr3_mbz_follows_maxphyaddr():
    caps = CpuCaps(phys_bits=40)
    d = vm("long64", CR3=1 << 40, MSRPM_BASE_PA=0x10000)
    r = check(d, caps)
    assert r.rule == "CR3_MBZ" and "MAXPHYADDR (40)" in r.message and "bits 40:40" not in r.message


def test_cr4_mbz_uses_supported_mask():
    caps = CpuCaps(cr4_supported=0x6A0 | 0x10)
    assert check(vm("long64"), caps) is None
    assert check(vm("long64", CR4=0x6A0 | 1 << 17), caps).rule == "CR4_MBZ"


def test_efer_bits_7_1_and_unsupported_features_are_mbz():
    assert check(vm("long64", EFER=0x1D01 | 1 << 1)).rule == "EFER_MBZ"
    assert check(vm("long64", EFER=0x1D01 | 1 << 14)).rule == "EFER_MBZ"     # FFXSR unsupported
    caps = CpuCaps(efer_supported=CAPS.efer_supported | C.EFER_FFXSR)
    assert check(vm("long64", EFER=0x1D01 | 1 << 14), caps) is None


def test_bitmap_bases_ignore_bits_11_0():
    assert check(vm("long64", MSRPM_BASE_PA=0x10FFF, IOPM_BASE_PA=0x20ABC)) is None


def test_bitmap_range_edges():
    top = 1 << 48
    ok = vm("long64", MSRPM_BASE_PA=top - C.MSRPM_SIZE, IOPM_BASE_PA=top - C.IOPM_SIZE)
    assert check(ok) is None
    bad = vm("long64", IOPM_BASE_PA=top - C.IOPM_SIZE + 0x1000)
    r = check(bad)
    assert r.rule == "IOPM_RANGE" and "12 KiB" in r.message


@pytest.mark.parametrize("evt", [
    0, 0x0000_0102,                  # V = 0: ignored, whatever the rest says
    0x8000_0020, 0x8000_0200,        # INTR 0x20, NMI
    0x8000_0B0E, 0x8000_0300,        # #PF with EV, #DE
    0x8000_0480, 0x8000_0312,        # INT 0x80, #MC
    0xFFFF_FFFF_8000_0B0D,           # error code in 63:32 is not checked
])
def test_eventinj_legal(evt):
    assert check(vm("long64", EVENTINJ=evt)) is None


@pytest.mark.parametrize("evt,why", [
    (0x8000_0100, "TYPE 1 is reserved"),
    (0x8000_0500, "TYPE 5 is reserved"),
    (0x8000_0600, "TYPE 6 is reserved"),
    (0x8000_0700, "TYPE 7 is reserved"),
    (0x8000_0302, "NMI vector"),
    (0x8000_0309, "not an exception"),
    (0x8000_030F, "not an exception"),
    (0x8000_031F, "not an exception"),
    (0x8000_0320, "not an exception"),
    (0x8000_0315, "not an exception"),   # #CP without shadow stacks
])
def test_eventinj_illegal(evt, why):
    r = check(vm("long64", EVENTINJ=evt))
    assert_reason(r, "EVENTINJ", "EVENTINJ", evt, S2)
    assert why in r.message


def test_eventinj_reserved_bits_are_not_a_vmrun_rule():
    """Bits 30:12 are "Reserved, SBZ" (figure 15-5), but 15.20's reasons for
    VMEXIT_INVALID are only a reserved TYPE and TYPE 3 with a vector that is
    not an exception."""
    assert check(vm("long64", EVENTINJ=0x8001_0020)) is None


def test_eventinj_br_into_a_64_bit_guest_is_invalid():
    """15.20: "If the VMM attempts to inject an event that is impossible for
    the guest mode (e.g., a #BR exception when the guest is in 64-bit mode),
    the event injection will fail ... VMRUN will immediately exit with an
    error code of VMEXIT_INVALID."  A 32-bit guest may take #BR."""
    r = check(vm("long64", EVENTINJ=0x8000_0305))
    assert_reason(r, "EVENTINJ", "EVENTINJ", 0x8000_0305, S2)
    assert "64-bit" in r.message
    assert check(vm("prot32", EVENTINJ=0x8000_0305)) is None


def test_eventinj_exception_vectors_follow_caps():
    caps = CpuCaps(exception_vectors=C.BASE_EXCEPTION_VECTORS | {21, 29})
    assert check(vm("long64", EVENTINJ=0x8000_0B15), caps) is None


@pytest.mark.parametrize("pat", [0x0000000000000002, 0x0300000000000000, 0x0000000000001000])
def test_gpat_bad_entries(pat):
    r = check(vm("long64", G_PAT=pat))
    assert r.rule == "NP_GPAT" and r.value == pat


def test_gpat_all_valid_types():
    assert check(vm("long64", G_PAT=0x0706050401000706)) is None


# ---------------------------------------------------------------- order
def test_first_failing_rule_in_documented_order():
    d = vm("long64", EFER=0x0D01 | 1 << 9, CR0=0x1_A0050033, DR7=1 << 40, GUEST_ASID=0,
           EVENTINJ=0x8000_0100, INTERCEPT_MISC2=0, N_CR3=1 << 60)
    seen = []
    while (r := check(d)) is not None:
        seen.append(r.rule)
        d[r.field] = BASE64[r.field]            # repair, find the next one
    assert seen == ["EFER.SVME", "CR0.CD_NW", "DR7_HI", "VMRUN_INTERCEPT", "EVENTINJ",
                    "ASID_ZERO", "NP_NCR3_MBZ"]
    assert [s for s in C.RULE_ORDER if s in seen] == seen


def test_rule_order_table():
    assert C.RULE_ORDER[:4] == ("EFER.SVME", "CR0.CD_NW", "CR0_HI", "CR3_MBZ")
    assert C.RULE_ORDER.index("MSRPM_RANGE") + 1 == C.RULE_ORDER.index("IOPM_RANGE")
    assert C.RULE_ORDER[-5:] == ("NP_HOST_PAGING_OFF", "NP_NCR3_MBZ", "NP_GPAT", "V_NMI_NO_NMI_INTERCEPT",
                                 "PAE_PDPTE")


def test_later_checks_hook_runs_after_the_table(monkeypatch):
    def sev(vmcb, caps, host):
        return InvalidReason("SEV_TEST", "NP_ENABLE", 1, "APM vol 2, 15.34", "test")
    monkeypatch.setattr(C, "LATER_CHECKS", [("SEV_TEST", sev)])
    assert check(vm("long64")).rule == "SEV_TEST"
    assert check(vm("long64", GUEST_ASID=0)).rule == "ASID_ZERO"


def test_reason_is_frozen_and_serialisable():
    r = check(vm("long64", EFER=0x0D01))
    with pytest.raises(Exception):
        r.rule = "x"
    assert r.as_dict() == {"rule": "EFER.SVME", "field": "EFER", "value": 0x0D01,
                           "section": S1, "message": r.message}
    assert r.message == ("guest EFER = 0xd01: EFER.SVME is 0, but VMRUN requires the "
                         "guest's EFER.SVME = 1 (APM vol 2, 15.5.1)")


# ---------------------------------------------------------------- the instruction
def cpu(**kw):
    state = dict(efer=0x1D01, cr0=0x80050033, rflags=0x2, cpl=0, bits=64, maxphyaddr=48,
                 regs=[0x5000] + [0] * 15)
    state.update(kw)
    return SimpleNamespace(**state)


def test_vmrun_instruction_ok():
    assert check_vmrun_instruction(cpu()) is None


@pytest.mark.parametrize("kw,vector,code,text", [
    (dict(efer=0x0D01), 6, None, "EFER.SVME = 0"),
    (dict(cr0=0x10, bits=16), 6, None, "real mode"),
    (dict(rflags=0x20002, cpl=3, bits=16), 6, None, "virtual-8086"),
    (dict(cpl=3), 13, 0, "CPL 3"),
    (dict(regs=[0x5008] + [0] * 15), 13, 0, "not 4 KiB aligned"),
    (dict(regs=[1 << 48] + [0] * 15), 13, 0, "48-bit physical"),
])
def test_vmrun_instruction_faults(kw, vector, code, text):
    vec, err, detail = check_vmrun_instruction(cpu(**kw))
    assert (vec, err) == (vector, code) and text in detail


def test_vmrun_instruction_order():
    # SVME before protected mode before CPL before rAX (APM vol 3, VMRUN).
    assert check_vmrun_instruction(cpu(efer=0, cr0=0x10, cpl=3))[0] == 6
    assert check_vmrun_instruction(cpu(cpl=3, regs=[1] + [0] * 15))[2] == "VMRUN at CPL 3"


def test_vmrun_rax_width_follows_address_size():
    high = [0xFFFF_FFFF_0000_5000] + [0] * 15
    assert check_vmrun_instruction(cpu(bits=32, regs=high)) is None      # EAX in legacy mode
    assert check_vmrun_instruction(cpu(regs=high))[0] == 13               # RAX in 64-bit mode
    assert check_vmrun_instruction(cpu(regs=high), asize=4) is None        # 67h prefix


def test_caps_from_a_real_cpu():
    from svmsim.machine import Machine
    m = Machine(mem_size="16M")
    caps = CpuCaps.from_cpu(m.cpus[0])
    assert caps.phys_bits == m.profile.phys_bits and caps.long_mode
    assert caps.efer_supported & C.EFER_SVME
