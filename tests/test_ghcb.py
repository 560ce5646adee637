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
                        ("GHCB_RESP_MALFORMED_INPUT", ghcb.Response.MALFORMED_INPUT)):
        lines.append(f"_Static_assert({name} == {int(value):#x}, \"{name}\");")
    src = tmp_path / "check.c"
    src.write_text("\n".join(lines) + "\n")
    p = subprocess.run(["gcc", *gb.BASE_CFLAGS, "-I", str(gb.LIB_DIR), "-c", str(src),
                        "-o", str(tmp_path / "check.o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("code,name", [(0x8000FFFF, "UNSUPPORTED"), (0x403, "VMGEXIT")])
def test_nae_names(code, name):
    assert ghcb.nae_name(code) == name
