"""The VMCB as data (svmsim/svm/vmcb.py), exit codes and event/IOIO
encodings (exits.py), intercept vectors, MSRPM and IOPM (intercepts.py).

References: APM vol 2 Appendix B tables B-1/B-2 (layout), Appendix C (exit
codes), 15.7.2 (EXITINTINFO), 15.10.1 (IOPM), 15.10.2 (IOIO EXITINFO1),
15.11 (MSRPM), 15.15.3 (clean bits), 15.20 (EVENTINJ)."""
import random
from types import SimpleNamespace

import pytest

from svmsim.memory.bus import PhysBus
from svmsim.svm import exits as X
from svmsim.svm import intercepts as I
from svmsim.svm import vmcb as V
from svmsim.svm.exits import ExitCode
from svmsim.svm.vmcb import BY_NAME, FIELDS, VmcbView

M64 = (1 << 64) - 1


# ================================================================ layout
def _bits(f):
    return range(f.first_bit, f.first_bit + f.width)


def test_names_unique_and_areas():
    assert len(BY_NAME) == len(FIELDS)
    assert {f.area for f in FIELDS} == {"control", "save"}
    for f in FIELDS:
        assert f.section.startswith("APM vol 2, table B-"), f
        assert f.width > 0 and 0 <= f.bit < 64


def test_no_two_fields_overlap_bit_exact():
    """Only a sub-field and its own container may share bits (table B-1)."""
    spans = sorted(FIELDS, key=lambda f: f.first_bit)
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if b.first_bit >= a.first_bit + a.width:
                break
            assert a.name == b.parent or b.name == a.parent, (a.name, b.name)
    for f in FIELDS:
        if f.parent:
            p = BY_NAME[f.parent]
            assert set(_bits(f)) <= set(_bits(p)), f.name
            assert p.parent is None
    # sub-fields of one container never overlap each other
    for kids in V.CHILDREN.values():
        seen = set()
        for k in kids:
            assert not seen & set(_bits(k)), k.name
            seen |= set(_bits(k))


def test_areas_fit_their_limits():
    assert V.VMCB_SIZE == 4096 and V.CONTROL_SIZE == 0x400
    for f in FIELDS:
        end = f.offset + f.nbytes
        if f.area == "control":
            assert end <= V.CONTROL_SIZE, f.name
        else:
            assert V.CONTROL_SIZE <= f.offset and end <= V.CONTROL_SIZE + V.SAVE_SIZE, f.name
        assert end <= V.VMCB_SIZE


# Offsets from shared/docs/reference/svm-emulators-and-layouts.md section 3.
REFERENCE_OFFSETS = {
    "INTERCEPT_CR": 0x000, "INTERCEPT_DR": 0x004, "INTERCEPT_EXCEPTION": 0x008,
    "INTERCEPT_MISC1": 0x00C, "INTERCEPT_MISC2": 0x010, "INTERCEPT_MISC3": 0x014,
    "PAUSE_FILTER_THRESHOLD": 0x03C, "PAUSE_FILTER_COUNT": 0x03E,
    "IOPM_BASE_PA": 0x040, "MSRPM_BASE_PA": 0x048, "TSC_OFFSET": 0x050,
    "GUEST_ASID": 0x058, "TLB_CONTROL": 0x05C, "ERAP_CONTROL": 0x05D, "INT_CTL": 0x060,
    "V_INTR_VECTOR": 0x064, "INT_STATE": 0x068, "EXITCODE": 0x070, "EXITINFO1": 0x078,
    "EXITINFO2": 0x080, "EXITINTINFO": 0x088, "MISC_CTL": 0x090, "AVIC_APIC_BAR": 0x098,
    "GHCB_GPA": 0x0A0, "EVENTINJ": 0x0A8, "N_CR3": 0x0B0, "MISC_CTL2": 0x0B8,
    "VMCB_CLEAN": 0x0C0, "NRIP": 0x0C8, "INSN_LEN": 0x0D0, "INSN_BYTES": 0x0D1,
    "AVIC_BACKING_PAGE": 0x0E0, "AVIC_LOGICAL_TABLE": 0x0F0, "AVIC_PHYSICAL_TABLE": 0x0F8,
    "VMSA_PA": 0x108, "BUS_LOCK_COUNTER": 0x120,
    "ES.SEL": 0x400, "CS.SEL": 0x410, "SS.SEL": 0x420, "DS.SEL": 0x430, "FS.SEL": 0x440,
    "GS.SEL": 0x450, "GDTR.LIMIT": 0x464, "LDTR.SEL": 0x470, "IDTR.BASE": 0x488,
    "TR.SEL": 0x490, "CS.ATTRIB": 0x412, "CS.LIMIT": 0x414, "CS.BASE": 0x418,
    "VMPL": 0x4CA, "CPL": 0x4CB, "EFER": 0x4D0, "CR4": 0x548, "CR3": 0x550, "CR0": 0x558,
    "DR7": 0x560, "DR6": 0x568, "RFLAGS": 0x570, "RIP": 0x578, "RSP": 0x5D8,
    "S_CET": 0x5E0, "SSP": 0x5E8, "ISST_ADDR": 0x5F0, "RAX": 0x5F8, "STAR": 0x600,
    "LSTAR": 0x608, "CSTAR": 0x610, "SFMASK": 0x618, "KERNEL_GS_BASE": 0x620,
    "SYSENTER_CS": 0x628, "SYSENTER_ESP": 0x630, "SYSENTER_EIP": 0x638, "CR2": 0x640,
    "G_PAT": 0x668, "DBGCTL": 0x670, "BR_FROM": 0x678, "BR_TO": 0x680,
    "LASTEXCP_FROM": 0x688, "LASTEXCP_TO": 0x690, "SPEC_CTRL": 0x6E0,
}


@pytest.mark.parametrize("name,offset", sorted(REFERENCE_OFFSETS.items()))
def test_reference_offsets(name, offset):
    assert BY_NAME[name].offset == offset


# Linux arch/x86/include/asm/svm.h, transcribed as (member, bytes); reserved
# members are None.  Offsets are computed here by summing sizes (packed).
LINUX_CONTROL = [
    ("intercepts", 24), (None, 36), ("pause_filter_thresh", 2), ("pause_filter_count", 2),
    ("iopm_base_pa", 8), ("msrpm_base_pa", 8), ("tsc_offset", 8), ("asid", 4),
    ("tlb_ctl", 1), ("erap_ctl", 1), (None, 2), ("int_ctl", 4), ("int_vector", 4),
    ("int_state", 4), (None, 4), ("exit_code", 8), ("exit_info_1", 8), ("exit_info_2", 8),
    ("exit_int_info", 4), ("exit_int_info_err", 4), ("misc_ctl", 8), ("avic_vapic_bar", 8),
    ("ghcb_gpa", 8), ("event_inj", 4), ("event_inj_err", 4), ("nested_cr3", 8),
    ("misc_ctl2", 8), ("clean", 4), (None, 4), ("next_rip", 8), ("insn_len", 1),
    ("insn_bytes", 15), ("avic_backing_page", 8), (None, 8), ("avic_logical_id", 8),
    ("avic_physical_id", 8), (None, 8), ("vmsa_pa", 8), (None, 16), ("bus_lock_counter", 2),
    (None, 22), ("allowed_sev_features", 8), ("guest_sev_features", 8), (None, 664),
    ("reserved_sw", 32),
]
LINUX_SAVE = ([(s, 16) for s in ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")]
              + [(None, 42), ("vmpl", 1), ("cpl", 1), (None, 4), ("efer", 8), (None, 112)]
              + [(r, 8) for r in ("cr4", "cr3", "cr0", "dr7", "dr6", "rflags", "rip")]
              + [(None, 88)]
              + [(r, 8) for r in ("rsp", "s_cet", "ssp", "isst_addr", "rax", "star", "lstar",
                                  "cstar", "sfmask", "kernel_gs_base", "sysenter_cs",
                                  "sysenter_esp", "sysenter_eip", "cr2")]
              + [(None, 32)]
              + [(r, 8) for r in ("g_pat", "dbgctl", "br_from", "br_to", "last_excp_from",
                                  "last_excp_to")]
              + [(None, 72), ("spec_ctrl", 8)])
LINUX_TO_OURS = {
    "intercepts": "INTERCEPT_CR", "pause_filter_thresh": "PAUSE_FILTER_THRESHOLD",
    "pause_filter_count": "PAUSE_FILTER_COUNT", "iopm_base_pa": "IOPM_BASE_PA",
    "msrpm_base_pa": "MSRPM_BASE_PA", "tsc_offset": "TSC_OFFSET", "asid": "GUEST_ASID",
    "tlb_ctl": "TLB_CONTROL", "erap_ctl": "ERAP_CONTROL", "int_ctl": "INT_CTL",
    "int_vector": "V_INTR_VECTOR", "int_state": "INT_STATE", "exit_code": "EXITCODE",
    "exit_info_1": "EXITINFO1", "exit_info_2": "EXITINFO2", "exit_int_info": "EXITINTINFO",
    "misc_ctl": "MISC_CTL", "avic_vapic_bar": "AVIC_APIC_BAR", "ghcb_gpa": "GHCB_GPA",
    "event_inj": "EVENTINJ", "nested_cr3": "N_CR3", "misc_ctl2": "MISC_CTL2",
    "clean": "VMCB_CLEAN", "next_rip": "NRIP", "insn_len": "INSN_LEN",
    "insn_bytes": "INSN_BYTES", "avic_backing_page": "AVIC_BACKING_PAGE",
    "avic_logical_id": "AVIC_LOGICAL_TABLE", "avic_physical_id": "AVIC_PHYSICAL_TABLE",
    "vmsa_pa": "VMSA_PA", "bus_lock_counter": "BUS_LOCK_COUNTER",
    "allowed_sev_features": "ALLOWED_SEV_FEATURES", "guest_sev_features": "GUEST_SEV_FEATURES",
    "vmpl": "VMPL", "cpl": "CPL", "kernel_gs_base": "KERNEL_GS_BASE",
    "last_excp_from": "LASTEXCP_FROM", "last_excp_to": "LASTEXCP_TO",
}


def _linux_offsets(members, base):
    out, off = {}, base
    for name, size in members:
        if name:
            out[name] = off
        off += size
    return out, off


def test_linux_struct_offsets_match():
    ctl, ctl_end = _linux_offsets(LINUX_CONTROL, 0)
    save, save_end = _linux_offsets(LINUX_SAVE, V.SAVE_BASE)
    assert ctl_end == V.CONTROL_SIZE and save_end - V.SAVE_BASE == V.SAVE_SIZE == 744
    ctl.pop("reserved_sw")
    # Linux's error-code halves are the upper dwords of our 64-bit fields.
    assert ctl.pop("exit_int_info_err") == BY_NAME["EXITINTINFO"].offset + 4
    assert ctl.pop("event_inj_err") == BY_NAME["EVENTINJ"].offset + 4
    checked = 0
    for lname, off in {**ctl, **save}.items():
        ours = LINUX_TO_OURS.get(lname)
        if ours is None:
            ours = f"{lname.upper()}.SEL" if lname in ("es", "cs", "ss", "ds", "fs", "gs",
                                                      "ldtr", "tr") else lname.upper()
        if lname in ("gdtr", "idtr"):
            assert BY_NAME[f"{lname.upper()}.LIMIT"].offset == off + 4
            assert BY_NAME[f"{lname.upper()}.BASE"].offset == off + 8
        else:
            assert BY_NAME[ours].offset == off, (lname, ours)
        checked += 1
    assert checked >= 65


def test_bit_positions_of_subfields():
    """Table B-1 bit positions (and Linux V_*_SHIFT / SVM_MISC_ENABLE_*)."""
    expect = {"V_TPR": (0x60, 0, 8), "V_IRQ": (0x60, 8, 1), "V_GIF": (0x60, 9, 1),
              "V_NMI_PENDING": (0x60, 11, 1), "V_NMI_BLOCKING": (0x60, 12, 1),
              "V_INTR_PRIO": (0x60, 16, 4), "V_IGN_TPR": (0x60, 20, 1),
              "V_INTR_MASKING": (0x60, 24, 1), "V_GIF_ENABLE": (0x60, 25, 1),
              "V_NMI_ENABLE": (0x60, 26, 1), "X2AVIC_ENABLE": (0x60, 30, 1),
              "AVIC_ENABLE": (0x60, 31, 1), "INTERRUPT_SHADOW": (0x68, 0, 1),
              "GUEST_INTERRUPT_MASK": (0x68, 1, 1), "NP_ENABLE": (0x90, 0, 1),
              "SEV_ENABLE": (0x90, 1, 1), "SEV_ES_ENABLE": (0x90, 2, 1),
              "LBR_VIRTUALIZATION_ENABLE": (0xB8, 0, 1), "V_VMSAVE_VMLOAD_ENABLE": (0xB8, 1, 1),
              "INTERCEPT_CR_WRITE": (0x0, 16, 16), "INTERCEPT_DR_READ": (0x4, 0, 16)}
    for name, (off, bit, width) in expect.items():
        f = BY_NAME[name]
        assert (f.offset, f.bit, f.width) == (off, bit, width), name
    assert V.field("INT_SHADOW") is BY_NAME["INTERRUPT_SHADOW"]      # alias
    assert BY_NAME["INSN_BYTES"].width == 15 * 8


def test_clean_bits_cover_the_apm_groups():
    """APM vol 2, 15.15.3, figure 15-4: which fields each clean bit covers
    (exactly those it lists: not NP_ENABLE, the LBR enable bit or the
    pause-filter threshold, which VMRUN always reads)."""
    cb = {b: set(names) for b, names in V.CLEAN_BITS.items()}
    assert cb[5] == {"EFER", "CR0", "CR3", "CR4"}
    assert cb[6] == {"DR6", "DR7"}
    assert cb[9] == {"CR2"}
    assert cb[2] == {"GUEST_ASID"}
    assert cb[1] == {"IOPM_BASE_PA", "MSRPM_BASE_PA"}
    assert {"N_CR3", "G_PAT"} == cb[4]
    assert {"GDTR.BASE", "GDTR.LIMIT", "IDTR.BASE", "IDTR.LIMIT"} == cb[7]
    assert "CPL" in cb[8] and "CS.ATTRIB" in cb[8] and "FS.BASE" not in cb[8]
    assert {"INTERCEPT_MISC2", "TSC_OFFSET", "PAUSE_FILTER_COUNT"} <= cb[0]
    assert "PAUSE_FILTER_THRESHOLD" not in cb[0]
    assert cb[10] == {"DBGCTL", "BR_FROM", "BR_TO", "LASTEXCP_FROM", "LASTEXCP_TO"}
    assert BY_NAME["TLB_CONTROL"].clean is None and BY_NAME["EXITCODE"].clean is None


# ================================================================ the view
def test_every_field_roundtrips_without_touching_other_bits():
    rng = random.Random(3)
    for f in FIELDS:
        buf = bytearray(rng.getrandbits(8) for _ in range(4096))
        before = int.from_bytes(buf, "little")
        value = rng.getrandbits(f.width)
        VmcbView(buf)[f.name] = value
        assert VmcbView(buf)[f.name] == value, f.name
        diff = before ^ int.from_bytes(buf, "little")
        assert diff & ~(f.mask << f.first_bit) == 0, f.name


def test_subfield_write_keeps_neighbours_and_masks_value():
    v = VmcbView(bytearray(4096))
    v["INT_CTL"] = 0xFFFF_FFFF
    v["V_INTR_PRIO"] = 0x13                  # 4-bit field: 0x13 -> 0x3
    assert v["V_INTR_PRIO"] == 3
    assert v["INT_CTL"] == 0xFFF3_FFFF
    v["V_IRQ"] = 0
    assert v["INT_CTL"] == 0xFFF3_FEFF and v["V_TPR"] == 0xFF and v["V_GIF"] == 1


def test_view_over_physbus():
    bus = PhysBus(1 << 20)
    pa = 0x3000
    v = VmcbView(bus, pa)
    v["EXITCODE"] = X.to_vmcb(ExitCode.INVALID)
    assert bus.read(pa + 0x70, 8) == M64
    v["RIP"] = 0xFFFF_8000_0010_0000
    assert bus.read(pa + 0x578, 8) == 0xFFFF_8000_0010_0000
    v["INSN_LEN"] = 3
    v["INSN_BYTES"] = int.from_bytes(bytes(range(1, 16)), "little")
    assert bus.read_bytes(pa + 0xD0, 16) == bytes([3]) + bytes(range(1, 16))
    v["V_IRQ"] = 1
    assert bus.read(pa + 0x60, 4) == 0x100


def test_segments():
    v = VmcbView(bytearray(4096))
    v.set_segment("CS", 0x08, 0x29B, 0xFFFF_FFFF, 0)
    v.set_segment("GDTR", 0x1234, 0x99, 0x27, 0x5000)       # sel/attrib reserved
    assert v.segment("CS") == (0x08, 0x29B, 0xFFFF_FFFF, 0)
    assert v.segment("GDTR") == (0, 0, 0x27, 0x5000)
    assert v["CS.ATTRIB"] == 0x29B and v["GDTR.BASE"] == 0x5000


def test_dump_and_to_dict():
    v = VmcbView(bytearray(4096))
    v["EXITCODE"] = ExitCode.CPUID
    v["EVENTINJ"] = X.encode_event(14, X.EVENT_EXCEPTION, error_code=2)
    v["V_IRQ"] = 1
    v.set_segment("CS", 0x10, 0x29B, 0xFFFF_FFFF, 0)
    text = v.dump()
    assert "EXITCODE" in text and "0x72 (CPUID)" in text
    assert "#PF (exception), error code 0x2" in text
    assert "V_IRQ=0x1" in text and "CS" in text and "attrib=0x29b" in text
    assert "RIP" not in text and "GUEST_ASID" not in text      # zero fields omitted
    d = v.to_dict()
    assert set(d) == set(BY_NAME) and d["EXITCODE"] == 0x72 and d["RAX"] == 0
    assert VmcbView(bytearray(4096)).dump() == "(all fields zero)"


def test_view_serves_the_vmrun_consistency_checks():
    """checks.check_guest_state reads the VMCB by these field names."""
    from svmsim.svm.checks import CpuCaps, check_guest_state
    v = VmcbView(bytearray(4096))
    for name, value in {"EFER": 0x1D01, "CR0": 0x80050033, "CR3": 0x1000, "CR4": 0x6A0,
                        "DR6": 0xFFFF0FF0, "DR7": 0x400, "CS.ATTRIB": 0x29B,
                        "INTERCEPT_MISC2": 1, "MSRPM_BASE_PA": 0x10000,
                        "IOPM_BASE_PA": 0x20000, "GUEST_ASID": 1}.items():
        v[name] = value
    host = SimpleNamespace(cr0=0x80050033, efer=0x1D01)
    assert check_guest_state(v, CpuCaps(), host) is None
    v["GUEST_ASID"] = 0
    assert check_guest_state(v, CpuCaps(), host).rule == "ASID_ZERO"


# ================================================================ exit codes
LINUX_UAPI_EXITS = {          # arch/x86/include/uapi/asm/svm.h
    "CR0_READ": 0x000, "CR8_READ": 0x008, "CR0_WRITE": 0x010, "CR8_WRITE": 0x018,
    "DR0_READ": 0x020, "DR7_READ": 0x027, "DR0_WRITE": 0x030, "DR7_WRITE": 0x037,
    "EXCP_DE": 0x040, "EXCP_PF": 0x04E, "EXCP_AC": 0x051, "EXCP_VC": 0x05D,
    "INTR": 0x060, "VINTR": 0x064, "CR0_SEL_WRITE": 0x065, "TR_WRITE": 0x06D,
    "RDTSC": 0x06E, "CPUID": 0x072, "SWINT": 0x075, "PAUSE": 0x077, "HLT": 0x078,
    "IOIO": 0x07B, "MSR": 0x07C, "SHUTDOWN": 0x07F, "VMRUN": 0x080, "VMMCALL": 0x081,
    "SKINIT": 0x086, "RDTSCP": 0x087, "ICEBP": 0x088, "WBINVD": 0x089, "MONITOR": 0x08A,
    "MWAIT": 0x08B, "MWAIT_COND": 0x08C, "XSETBV": 0x08D, "RDPRU": 0x08E,
    "EFER_WRITE_TRAP": 0x08F, "CR0_WRITE_TRAP": 0x090, "CR8_WRITE_TRAP": 0x098,
    "CR15_WRITE_TRAP": 0x09F, "INVLPGB": 0x0A0, "INVLPGB_ILLEGAL": 0x0A1,
    "INVPCID": 0x0A2, "MCOMMIT": 0x0A3, "TLBSYNC": 0x0A4, "BUS_LOCK": 0x0A5,
    "IDLE_HLT": 0x0A6, "NPF": 0x400, "AVIC_INCOMPLETE_IPI": 0x401,
    "AVIC_NOACCEL": 0x402, "VMGEXIT": 0x403, "INVALID": -1,
}


@pytest.mark.parametrize("name,code", sorted(LINUX_UAPI_EXITS.items()))
def test_exit_codes(name, code):
    assert ExitCode[name] == code


def test_exit_code_ranges_complete():
    codes = {int(c) for c in ExitCode}
    assert set(range(0x000, 0x0A7)) <= codes          # 0x000-0x0A6 all defined
    assert len(ExitCode) == 0xA7 + 5                  # + NPF, AVIC x2, VMGEXIT, INVALID
    assert X.exception_exit(14) == ExitCode.EXCP_PF


def test_invalid_exit_code_in_the_vmcb():
    assert X.to_vmcb(ExitCode.INVALID) == M64
    assert X.from_vmcb(M64) is ExitCode.INVALID
    assert X.from_vmcb(0x7B) is ExitCode.IOIO
    assert X.exit_name(-1) == X.exit_name(M64) == "INVALID"
    assert X.exit_name(0x8000_0001) == "MMIO_READ"           # SEV-ES software exit
    assert X.exit_name(0x3FF) == "UNKNOWN_0x3ff"


# ================================================================ EVENTINJ / EXITINTINFO
def test_event_encode_decode():
    """APM 15.20: vector 7:0, TYPE 10:8, EV 11, V 31, error code 63:32."""
    value = X.encode_event(13, X.EVENT_EXCEPTION, error_code=0x18)
    assert value == 0x18_8000_0B0D
    assert X.decode_event(value) == X.Event(13, 3, 0x18, True)
    assert X.encode_event(0x20, X.EVENT_INTR) == 0x8000_0020
    assert X.decode_event(0x8000_0020).error_code is None
    assert X.Event(2, X.EVENT_NMI).encode() == 0x8000_0202
    assert X.describe_event(0) == "none"
    assert X.describe_event(X.encode_event(0x80, X.EVENT_SWINT)) == \
        "vector 0x80 (software interrupt)"


@pytest.mark.parametrize("value,problem", [
    (0, None),                                               # V = 0: nothing checked
    (0x0000_0100 | 0x7F_F000, None),                         # V = 0 even with junk
    (0x8000_0020, None),                                     # INTR 0x20
    (0x8000_0202, None),                                     # NMI
    (0x8000_0B0E, None),                                     # #PF with EV
    (0x8000_0480, None),                                     # INT 0x80
    (0x8000_0100, "TYPE 1 is reserved"),
    (0x8000_0520, "TYPE 5 is reserved"),
    (0x8000_0600, "TYPE 6 is reserved"),
    (0x8000_0700, "TYPE 7 is reserved"),
    (0x8000_0302, "vector 0x2, which is the NMI vector"),
    (0x8000_0320, "vector 0x20, which is not an exception vector"),
    (0x8000_1020, None),                # bits 30:12: SBZ, but not a VMRUN rule (15.20)
])
def test_eventinj_problem(value, problem):
    got = X.eventinj_problem(value)
    assert (got is None) if problem is None else (problem in got)


def test_eventinj_problem_with_cpu_exception_list():
    assert X.eventinj_problem(0x8000_0309) is None               # 9 < 32 by default
    assert "not an exception" in X.eventinj_problem(0x8000_0309, exception_vectors={0, 14})


# ================================================================ IOIO EXITINFO1
def test_ioio_exitinfo1_layout():
    """APM 15.10.2: TYPE 0, STR 2, REP 3, SZ8/16/32 4-6, A16/32/64 7-9, SEG 12:10,
    port 31:16."""
    # in al, dx (port 0x3F8) in 64-bit code
    assert X.ioio_exitinfo1(0x3F8, 1, is_in=True, asize=8) == 0x03F8_0000 | 1 | 1 << 4 | 1 << 9
    # rep outsw with a 16-bit address size and a DS override
    v = X.ioio_exitinfo1(0x1F0, 2, is_in=False, string=True, rep=True, asize=2, seg=3)
    assert v == 0x01F0_0000 | 1 << 2 | 1 << 3 | 1 << 5 | 1 << 7 | 3 << 10
    assert X.decode_ioio(v) == {"port": 0x1F0, "in": False, "string": True, "rep": True,
                                "size": 2, "asize": 2, "seg": 3}
    assert X.decode_ioio(X.ioio_exitinfo1(0xCFC, 4, True, asize=4))["size"] == 4


# ================================================================ intercept vectors
def test_intercept_table():
    by = {(i.offset, i.bit): i.exit_code for i in I.INTERCEPTS}
    assert by[(0x000, 3)] == ExitCode.CR3_READ and by[(0x000, 16 + 8)] == ExitCode.CR8_WRITE
    assert by[(0x004, 7)] == ExitCode.DR7_READ and by[(0x004, 16)] == ExitCode.DR0_WRITE
    assert by[(0x008, 14)] == ExitCode.EXCP_PF
    assert by[(0x00C, 5)] == ExitCode.CR0_SEL_WRITE and by[(0x00C, 27)] == ExitCode.IOIO
    assert by[(0x00C, 31)] == ExitCode.SHUTDOWN
    assert by[(0x010, 0)] == ExitCode.VMRUN and by[(0x010, 14)] == ExitCode.RDPRU
    assert by[(0x010, 15)] == ExitCode.EFER_WRITE_TRAP
    assert by[(0x010, 16)] == ExitCode.CR0_WRITE_TRAP
    assert by[(0x010, 31)] == ExitCode.CR15_WRITE_TRAP
    assert by[(0x014, 0)] == ExitCode.INVLPGB and by[(0x014, 6)] == ExitCode.IDLE_HLT
    assert len(by) == len(I.INTERCEPTS) == len(I.BY_EXIT) == 167
    for i in I.INTERCEPTS:                        # word offsets agree with the VMCB table
        assert BY_NAME[I.WORD_NAMES[i.word]].offset == i.offset


def test_intercepted_from_view_and_cached_words():
    v = VmcbView(bytearray(4096))
    I.set_intercept(v, ExitCode.CPUID)
    I.set_intercept(v, ExitCode.VMRUN)
    I.set_intercept(v, ExitCode.CR4_WRITE_TRAP)
    I.set_intercept(v, ExitCode.EXCP_GP)
    assert v["INTERCEPT_MISC1"] == 1 << 18 and v["INTERCEPT_MISC2"] == 1 | 1 << 20
    words = I.read_words(v)
    for src in (v, words):
        assert I.intercepted(src, ExitCode.CPUID)
        assert I.intercepted(src, ExitCode.EXCP_GP) and not I.intercepted(src, ExitCode.EXCP_PF)
        assert not I.intercepted(src, ExitCode.HLT)
        assert I.intercepted(src, ExitCode.NPF)           # no bit: always exits
    assert I.intercept_names(words) == ["EXCP_GP", "CPUID", "VMRUN", "CR4_WRITE_TRAP"]
    I.set_intercept(v, ExitCode.CPUID, on=False)
    assert not I.intercepted(v, ExitCode.CPUID)
    with pytest.raises(ValueError):
        I.intercepted(v, ExitCode.INVALID)


# ================================================================ MSRPM
def _mem(size=0x10000):
    buf = bytearray(size)
    return buf, (lambda pa, n: bytes(buf[pa:pa + n]))


def test_msrpm_positions():
    """APM 15.11: ranges at byte 0x0, 0x800, 0x1000; two bits per MSR."""
    assert I.msrpm_position(0x0000_0000) == (0x000, 0)
    assert I.msrpm_position(0x0000_0010) == (0x004, 0)        # TSC
    assert I.msrpm_position(0x0000_1FFF) == (0x7FF, 6)
    assert I.msrpm_position(0xC000_0080) == (0x820, 0)        # EFER
    assert I.msrpm_position(0xC000_0103) == (0x840, 6)        # TSC_AUX
    assert I.msrpm_position(0xC001_0117) == (0x1045, 6)       # VM_HSAVE_PA
    for outside in (0x2000, 0x4000_0000, 0xBFFF_FFFF, 0xC000_2000, 0xC001_2000, 0xFFFF_FFFF):
        assert I.msrpm_position(outside) is None


def test_msr_intercepted():
    buf, rd = _mem()
    base = 0x4000
    buf[base + 0x820] = 0b10                   # EFER: write intercepted, read not
    buf[base + 0x004] = 0b01                   # TSC (0x10): read intercepted
    buf[base + 0x1045] = 0b1100_0000           # VM_HSAVE_PA (C001_0117): both
    pa = base | 0xABC                          # bits 11:0 ignored
    assert I.msr_intercepted(rd, pa, 0xC000_0080, write=True)
    assert not I.msr_intercepted(rd, pa, 0xC000_0080, write=False)
    assert I.msr_intercepted(rd, pa, 0x10, write=False)
    assert not I.msr_intercepted(rd, pa, 0x10, write=True)
    assert not I.msr_intercepted(rd, pa, 0x11, write=False)
    assert I.msr_intercepted(rd, pa, 0xC001_0117, False)
    assert I.msr_intercepted(rd, pa, 0xC001_0117, True)
    # outside the three ranges: always intercepted, whatever the map says
    assert I.msr_intercepted(rd, pa, 0x4000_0000, write=False)
    assert I.msr_intercepted(rd, pa, 0xC000_2000, write=True)


def test_msr_intercepted_over_physbus():
    bus = PhysBus(1 << 20)
    bus.write(0x8000 + 0x820, 1, 0b11)
    assert I.msr_intercepted(bus.read_bytes, 0x8000, 0xC000_0080, False)


# ================================================================ IOPM
def test_io_intercepted_single_and_multi_byte():
    """APM 15.10.1: one bit per port; a 2- or 4-byte access checks every port."""
    buf, rd = _mem()
    base = 0x1000
    buf[base + (0x3F8 >> 3)] |= 1 << (0x3F8 & 7)
    assert I.io_intercepted(rd, base, 0x3F8, 1)
    assert not I.io_intercepted(rd, base, 0x3F9, 1)
    assert I.io_intercepted(rd, base, 0x3F6, 4)           # 3F6-3F9 includes 3F8
    assert I.io_intercepted(rd, base, 0x3F7, 2)           # straddles a byte boundary
    assert not I.io_intercepted(rd, base, 0x3F4, 4)       # 3F4-3F7
    assert not I.io_intercepted(rd, base, 0x3F9, 4)
    assert I.io_intercepted(rd, base | 0xFFF, 0x3F8, 1)   # bits 11:0 of the base ignored


def test_io_intercepted_port_ffff_reaches_third_page():
    """The IOPM is 12 KiB: bits for ports 0x10000+ sit in the third page."""
    buf, rd = _mem()
    base = 0x1000
    buf[base + 0x2000] = 0b10                # bit 0x10001
    assert not I.io_intercepted(rd, base, 0xFFFF, 1)
    assert not I.io_intercepted(rd, base, 0xFFFF, 2)      # ports FFFF, 10000
    assert I.io_intercepted(rd, base, 0xFFFF, 4)          # ... 10001, 10002
    assert I.io_intercepted(rd, base, 0xFFFE, 4)          # FFFE..10001
    assert not I.io_intercepted(rd, base, 0x0000, 2)      # no modulo-64K wrap to port 0
    assert I.IOPM_SIZE == 3 * 4096 and I.MSRPM_SIZE == 2 * 4096
