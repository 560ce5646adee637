"""The GHCB layout (GHCB spec 56421; svmsim/sev/ghcb.py) and its C twin for
guests (tests/guests/lib/ghcb.h): declared once on each side, checked
against each other and against Linux's sizes."""
import subprocess

import pytest

import guestbuild as gb
from svmsim.sev import ghcb
from svmsim.svm import vmsa

C_NAMES = {"VALID_BITMAP_0": "valid_bitmap[0]", "VALID_BITMAP_1": "valid_bitmap[1]",
           "USAGE": "usage", "PROTOCOL_VERSION": "protocol_version"}


def test_layout_fields_do_not_overlap_and_fill_a_page():
    fields = sorted(ghcb.FIELDS, key=lambda f: f.offset)
    for a, b in zip(fields, fields[1:]):
        assert a.end <= b.offset, (a.name, b.name)
    assert fields[-1].end == ghcb.GHCB_SIZE
    assert ghcb.BY_NAME["X87_STATE_GPA"].end == ghcb.SAVE_AREA_SIZE == 1032   # Linux
    assert ghcb.SHARED_BUFFER + ghcb.SHARED_BUFFER_SIZE == 0xFF0


def test_register_fields_sit_at_their_vmsa_offsets():
    """GHCB spec: the save area keeps the VMSA's register offsets."""
    for f in ghcb.FIELDS:
        if f.name in vmsa.BY_NAME:
            assert vmsa.BY_NAME[f.name].offset == f.offset, f.name


def test_valid_bitmap_bits():
    assert ghcb.valid_bit("RAX") == 0x1F8 // 8 == 63
    assert ghcb.valid_bit("SW_EXIT_CODE") == 114 and ghcb.valid_bit("CPL") == 25
    v = ghcb.GhcbView(bytearray(4096))
    v.set_valid("RAX", "SW_SCRATCH")
    assert v.is_valid("RAX") and v.is_valid("SW_SCRATCH") and not v.is_valid("RBX")
    assert v["VALID_BITMAP_0"] == 1 << 63 and v["VALID_BITMAP_1"] == 1 << (117 - 64)


def test_snp_msr_protocol_encodings():
    """GHCB spec 2.3.1: PSC GFN 51:12, operation 55:52; VMPL in 39:32."""
    assert ghcb.psc_request(0x7F, ghcb.PscOp.SHARED) == 2 << 52 | 0x7F << 12 | 0x14
    assert ghcb.vmpl_request(1) == 1 << 32 | 0x16
    assert ghcb.nae_name(0x80000018) == "RUN_VMPL" and ghcb.nae_name(0x80000011) == "GUEST_REQUEST"


def test_msr_protocol_encodings():
    assert ghcb.sev_info(47) == 2 << 48 | 1 << 32 | 47 << 24 | 1
    assert ghcb.cpuid_request(0x8000001F, 1) == 0x8000001F << 32 | 1 << 30 | 4
    assert ghcb.term_request(1, 3) == 3 << 16 | 1 << 12 | 0x100
    assert ghcb.msr_code(ghcb.msr_request(ghcb.MsrProto.REG_GPA_RESP, 0x1234)) == 0x13
    assert ghcb.nae_name(0x80000002) == "MMIO_WRITE" and ghcb.nae_name(0x7B) == "IOIO"


def test_c_header_matches_the_python_table(tmp_path):
    """Static assertions generated from svmsim/sev/ghcb.py, compiled against
    the guests' ghcb.h: one layout, two declarations that cannot drift."""
    lines = ['#include "ghcb.h"', "#define OFF(m) __builtin_offsetof(struct ghcb, m)"]
    for f in ghcb.FIELDS:
        member = C_NAMES.get(f.name, f.name.lower())
        lines.append(f"_Static_assert(OFF({member}) == {f.offset:#x}, \"{f.name}\");")
        lines.append(f"_Static_assert(sizeof(((struct ghcb *)0)->{member}) == {f.width // 8}, "
                     f"\"{f.name} width\");")
    lines.append(f"_Static_assert(OFF(shared_buffer) == {ghcb.SHARED_BUFFER:#x}, \"buffer\");")
    lines.append(f"_Static_assert(sizeof(struct ghcb) == {ghcb.GHCB_SIZE}, \"size\");")
    for name, value in (("GHCB_MSR_SEV_INFO_REQ", ghcb.MsrProto.SEV_INFO_REQ),
                        ("GHCB_MSR_REG_GPA_REQ", ghcb.MsrProto.REG_GPA_REQ),
                        ("GHCB_MSR_HV_FEATURES_REQ", ghcb.MsrProto.HV_FEATURES_REQ),
                        ("GHCB_MSR_TERM_REQ", ghcb.MsrProto.TERM_REQ),
                        ("SVM_VMGEXIT_AP_JUMP_TABLE", ghcb.NaeExit.AP_JUMP_TABLE),
                        ("SVM_VMGEXIT_MMIO_WRITE", ghcb.NaeExit.MMIO_WRITE),
                        ("GHCB_RESP_MALFORMED_INPUT", ghcb.Response.MALFORMED_INPUT),
                        ("GHCB_MSR_PSC_REQ", ghcb.MsrProto.PSC_REQ),
                        ("GHCB_MSR_PSC_RESP", ghcb.MsrProto.PSC_RESP),
                        ("GHCB_MSR_VMPL_REQ", ghcb.MsrProto.VMPL_REQ),
                        ("GHCB_MSR_VMPL_RESP", ghcb.MsrProto.VMPL_RESP),
                        ("SVM_VMGEXIT_PSC", ghcb.NaeExit.PSC),
                        ("SVM_VMGEXIT_GUEST_REQUEST", ghcb.NaeExit.GUEST_REQUEST),
                        ("SVM_VMGEXIT_EXT_GUEST_REQUEST", ghcb.NaeExit.EXT_GUEST_REQUEST),
                        ("SVM_VMGEXIT_AP_CREATION", ghcb.NaeExit.AP_CREATION),
                        ("SVM_VMGEXIT_SNP_RUN_VMPL", ghcb.NaeExit.RUN_VMPL),
                        ("SNP_PAGE_PRIVATE", ghcb.PscOp.PRIVATE),
                        ("SNP_PAGE_SHARED", ghcb.PscOp.SHARED),
                        ("SNP_PAGE_PSMASH", ghcb.PscOp.PSMASH),
                        ("GHCB_HV_FT_SNP", ghcb.HvFeature.SNP),
                        ("GHCB_HV_FT_SNP_AP_CREATION", ghcb.HvFeature.SNP_AP_CREATION),
                        ("GHCB_HV_FT_SNP_MULTI_VMPL", ghcb.HvFeature.SNP_MULTI_VMPL),
                        ("SNP_AP_CREATE", ghcb.ApCreation.CREATE),
                        ("SNP_AP_DESTROY", ghcb.ApCreation.DESTROY),
                        ("PSC_MAX_ENTRIES", ghcb.PSC_MAX_ENTRIES),
                        ("GHCB_TERM_SNP_UNSUPPORTED", ghcb.TermReason.SNP_UNSUPPORTED),
                        ("GHCB_PSC_MSR(0x12345, 2)", ghcb.psc_request(0x12345, 2)),
                        ("GHCB_VMPL_MSR(1)", ghcb.vmpl_request(1)),
                        ("sizeof(struct psc_desc)", ghcb.SHARED_BUFFER_SIZE)):
        lines.append(f"_Static_assert({name} == {int(value):#x}, \"{name}\");")
    src = tmp_path / "check.c"
    src.write_text("\n".join(lines) + "\n")
    p = subprocess.run(["gcc", *gb.BASE_CFLAGS, "-I", str(gb.LIB_DIR), "-c", str(src),
                        "-o", str(tmp_path / "check.o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("code,name", [(0x8000FFFF, "UNSUPPORTED"), (0x403, "VMGEXIT")])
def test_nae_names(code, name):
    assert ghcb.nae_name(code) == name
