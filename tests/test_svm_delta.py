"""The world switch's delta (svm/switch.py): a VMRUN of the VMCB the last one
ran compares the bytes it decides on with those of that run and reuses its
values when they are the same.  Whatever changed in between -- written by the
host, by the guest while it ran, a control, a segment, a register, a field
covered by a clean bit, an illegal value -- must act exactly as on a first
VMRUN: loaded ("load guest state"), obeyed (intercepts), or refused with
#VMEXIT(VMEXIT_INVALID) (APM vol 2, 15.5.1; vol 3 VMRUN).  Each scenario runs
the same host and guest code twice, the common case with its delta and the
general path (``world.DIRECT = False``, a copy of the page and its field
view), and the two must agree byte for byte: VMCB, host save area, registers,
segments, exits, the VMEXIT_INVALID reasons and every vmrun/vmexit event."""
import pytest

from svmharness import SvmRig, NestedTables, VMCB, HSAVE, GUEST_CODE, GUEST_STACK
from svmsim.svm import world
from svmsim.svm.exits import ExitCode
from svmsim.svm.intercepts import set_intercept
from svmsim.svm.vmcb import field

# CPUID exits (the host re-enters at the same RIP: it exits again), unless an
# edit lifts the intercept: then HLT exits.  RDTSC's value reaches the VMCB's
# RAX when an edit restarts the guest at its first instruction.
GUEST = "rdtsc\ncpuid\nhlt"
CR0_NW, CR0_CD = 1 << 29, 1 << 30


def _set(name, value):
    def edit(v, rig):
        v[name] = value
    edit.__name__ = f"{name}={value:#x}"
    return edit


def _xor(name, bits):
    def edit(v, rig):
        v[name] ^= bits
    edit.__name__ = f"{name}^={bits:#x}"
    return edit


def _no_cpuid_intercept(v, rig):
    set_intercept(v, ExitCode.CPUID, False)


def _no_vmrun_intercept(v, rig):
    set_intercept(v, ExitCode.VMRUN, False)


def _clean_bits_then_tsc(v, rig):
    """VMCB_CLEAN all ones, then a field a clean bit covers changes: the
    processor may use its copy (15.15.3); both paths must agree on which."""
    v["VMCB_CLEAN"] = 0xFFFFFFFF
    v["TSC_OFFSET"] = 0x1234


def _tsc_offset_from_the_start(v, rig):
    v["TSC_OFFSET"] = 1 << 40
    v["RIP"] = GUEST_CODE


def _raw_byte(offset, value):
    def edit(v, rig):
        rig.m.bus.write(VMCB + offset, 1, value)
    edit.__name__ = f"byte[{offset:#x}]={value:#x}"
    return edit


EDITS = [
    # volatile fields (read at every VMRUN)
    _set("RIP", GUEST_CODE + 2), _set("RSP", GUEST_STACK - 0x100), _set("RAX", 0xDEAD),
    _set("RFLAGS", 0x246), _set("NRIP", 0x1234),
    _set("RFLAGS", 0x40202), _set("RFLAGS", 0x20202),            # AC; VM (virtual-8086: CPL 3)
    # controls
    _set("RIP", GUEST_CODE), _no_cpuid_intercept, _tsc_offset_from_the_start, _set("GUEST_ASID", 7),
    _set("V_TPR", 5),
    _set("INTERRUPT_SHADOW", 1), _set("TLB_CONTROL", 1), _set("MSRPM_BASE_PA", 0x306000),
    _clean_bits_then_tsc, _set("VMCB_CLEAN", 0xFFFFFFFF),
    # guest state
    _set("DS.BASE", 0x3000), _set("SS.SEL", 0x18), _xor("ES.ATTRIB", 1), _set("CR2", 0xCAFE000),
    _set("DR7", 0x401), _set("DR6", 0xFFFF0FF1), _set("CPL", 3), _xor("CR0", 1 << 16),
    _set("GDTR.BASE", 0x0000900000001000), _set("IDTR.BASE", 0x0000_8000_0000_2000),  # canonicalized
    _set("IDTR.LIMIT", 0xFFF), _set("CS.BASE", 0x0000_A000_0000_0000),
    # illegal guest state: #VMEXIT(VMEXIT_INVALID) (15.5.1)
    _xor("CR0", CR0_NW), _xor("CR0", 1 << 32), _xor("EFER", 1 << 12), _set("GUEST_ASID", 0),
    _xor("CR4", 1 << 31), _set("EVENTINJ", (1 << 31) | (3 << 8) | 1), _no_vmrun_intercept,
    _set("DR7", 1 << 40),
    # fields VMRUN does not read, and software's bytes
    _set("EXITCODE", 0x55), _set("FS.BASE", 0x9000), _raw_byte(0x3E0, 0xA5),
]


def _scenario(edit, guest=GUEST, npt=False):
    rig = SvmRig(guest, intercepts=(ExitCode.CPUID, ExitCode.HLT, ExitCode.SHUTDOWN),
                 **({"NP_ENABLE": 1} if npt else {}))
    if npt:                       # nested tables identity-mapping the first 16 MiB (2 MiB pages)
        rig.nt = NestedTables(rig.m.bus)
        rig.nt.identity(0, 0x1000000)
        rig.vmcb["N_CR3"] = rig.nt.root
    for _ in range(3):            # the first VMRUN, the common case, and its delta
        rig.run(at_vmrun=True)
    delta = rig.cpu.svm.delta
    edit(rig.vmcb, rig)
    rig.run(at_vmrun=True)
    rig.run(at_vmrun=True)
    cpu, bus = rig.cpu, rig.m.bus
    segs = tuple((s.sel, s.attr, s.limit, s.base) for s in cpu.segs)
    return {"vmcb": bus.read_bytes(VMCB, 4096), "hsave": bus.read_bytes(HSAVE, 4096),
            "regs": (cpu.rip, tuple(cpu.regs), cpu.get_rflags(), cpu.cr0, cpu.cr2, cpu.cr3,
                     cpu.cr4, cpu.efer, cpu.cpl, cpu.gif, cpu.svm_guest, segs, cpu.retired),
            "exits": dict(cpu.svm.exits), "vmruns": cpu.svm.vmruns,
            "invalid": [r.as_dict() for r in cpu.svm.invalid], "events": rig.events,
            "exitcode": rig.exitcode}, delta


@pytest.mark.parametrize("edit", EDITS, ids=lambda e: e.__name__)
def test_a_change_between_vmruns_acts_as_on_the_general_path(edit, monkeypatch):
    fast, delta = _scenario(edit)
    assert delta is not None                       # the common case ran and kept its values
    monkeypatch.setattr(world, "DIRECT", False)
    general, _ = _scenario(edit)
    for key in fast:
        assert fast[key] == general[key], key


def _other_nested_tables(v, rig):
    """N_CR3 moved to a second set of tables that map guest page 0x400000
    (the guest's code) to a copy with CPUID replaced by HLT, the TLB
    flushed."""
    nt = NestedTables(rig.m.bus, base=0x1800000)
    nt.identity(0, 0x400000)
    nt.identity(0x600000, 0x1000000)
    nt.identity(0x400000, 0x600000, size=4096)
    rig.m.bus.write_bytes(0x1700000, rig.m.bus.read_bytes(GUEST_CODE, 4096))
    rig.m.bus.write_bytes(0x1700002, b"\xf4")
    nt.map(GUEST_CODE, 0x1700000, size=4096)
    v["N_CR3"] = nt.root
    v["TLB_CONTROL"] = 1          # translations of the old tables may be cached (15.16.1)


NPT_EDITS = [_set("G_PAT", 0x0606060606060606), _set("G_PAT", 0x0808080808080808),   # the second is illegal
             _other_nested_tables, _set("NP_ENABLE", 0), _set("RIP", GUEST_CODE)]


@pytest.mark.parametrize("edit", NPT_EDITS, ids=lambda e: e.__name__)
def test_with_nested_paging_a_change_acts_as_on_the_general_path(edit, monkeypatch):
    """Nested paging's fields (N_CR3, G_PAT: 15.25.3-4) read by name at
    VMRUN from the areas the delta kept: a change is seen, an illegal G_PAT
    is VMEXIT_INVALID (15.25.4), as on the general path."""
    fast, delta = _scenario(edit, npt=True)
    assert delta is not None
    assert fast["exitcode"] == {"_other_nested_tables": ExitCode.HLT,
                                "G_PAT=0x808080808080808": ExitCode.INVALID}.get(edit.__name__,
                                                                                ExitCode.CPUID)
    monkeypatch.setattr(world, "DIRECT", False)
    general, _ = _scenario(edit, npt=True)
    for key in fast:
        assert fast[key] == general[key], key


def test_the_delta_is_taken_and_an_unchanged_vmcb_keeps_it():
    rig = SvmRig(GUEST, intercepts=(ExitCode.CPUID, ExitCode.HLT))
    rig.run(at_vmrun=True)
    rig.run(at_vmrun=True)
    d = rig.cpu.svm.delta
    for _ in range(3):
        rig.vmcb["RIP"] = GUEST_CODE             # a volatile field: still the delta
        rig.run(at_vmrun=True)
        assert rig.exitcode == ExitCode.CPUID and rig.cpu.svm.delta is d
    rig.vmcb["DS.BASE"] = 0x3000                 # a byte it decides on: recomputed
    rig.run(at_vmrun=True)
    assert rig.cpu.svm.delta is not d and rig.vmcb["DS.BASE"] == 0x3000


def test_a_lifted_intercept_takes_effect_on_the_next_vmrun():
    """Intercepts are loaded at every VMRUN ("load control information"):
    with CPUID no longer intercepted the guest runs it and exits at HLT."""
    fast, _ = _scenario(_no_cpuid_intercept)
    assert fast["exitcode"] == ExitCode.HLT
    assert fast["exits"][int(ExitCode.CPUID)] == 3 and fast["exits"][int(ExitCode.HLT)] == 2


@pytest.mark.parametrize("edit, rule", [(_xor("CR0", CR0_NW), "CR0.CD_NW"),
                                        (_xor("CR0", 1 << 32), "CR0_HI"),
                                        (_xor("EFER", 1 << 12), "EFER.SVME"),
                                        (_set("GUEST_ASID", 0), "ASID_ZERO"),
                                        (_no_vmrun_intercept, "VMRUN_INTERCEPT")])
def test_state_made_illegal_between_vmruns_is_vmexit_invalid(edit, rule):
    """15.5.1: "VMRUN ... checks the guest state ... If illegal state is
    found, the processor exits with VMEXIT_INVALID" -- also when the VMRUN
    before it, with the same VMCB, passed."""
    fast, _ = _scenario(edit)
    assert fast["exitcode"] == ExitCode.INVALID
    assert [r["rule"] for r in fast["invalid"]] == [rule, rule]
    assert not fast["regs"][10]                    # in the host, GIF = 0
    assert fast["regs"][9] is False


def test_a_change_the_guest_makes_to_its_own_vmcb_is_seen():
    """The guest shares the host's memory here and rewrites its VMCB's CPUID
    intercept while it runs: the next VMRUN loads the intercepts as they are
    in memory then."""
    misc1 = VMCB + field("INTERCEPT_MISC1").offset
    guest = f"cpuid\nmov rax, {misc1}\nand dword ptr [rax], {~(1 << 18) & 0xFFFFFFFF}\ncpuid\nhlt"

    def advance(v, rig):
        v["RIP"] = v["NRIP"]                       # past the first CPUID, into the store
    fast, _ = _scenario(advance, guest)
    assert fast["exitcode"] == ExitCode.HLT        # the second CPUID ran in the guest


def test_pack_changed_writes_the_bytes_a_full_pack_writes():
    """Runs.pack_changed (#VMEXIT's and the host save area's writes) leaves
    the buffer as pack_into does, and names a range holding every byte it
    changed."""
    import random
    rng = random.Random(14)
    for runs in (world._EXIT_RUNS[True, True, True], world._EXIT_RUNS[False, False, False],
                 world.HOST_RUNS):
        for _ in range(100):
            page = bytearray(rng.randbytes(4096))
            old = runs.unpack(page)
            new = list(old)
            for i in rng.sample(range(len(new)), rng.randint(0, 3)):
                new[i] = rng.getrandbits(72) & (runs.masks[i] if rng.random() < 0.8 else -1)
            ref, before = bytearray(page), bytes(page)
            runs.pack_into(ref, 0, new)
            span = runs.pack_changed(page, 0, old, new)
            assert page == ref
            changed = [i for i in range(4096) if page[i] != before[i]]
            if span is None:
                assert not changed and all(n & m == o for n, m, o in zip(new, runs.masks, old))
            else:
                assert all(span[0] <= i < span[1] for i in changed)


def test_the_stable_bytes_are_the_fields_vmrun_decides_on():
    """switch._STABLE sees a change of any byte of a field VMRUN decides on,
    and none of the volatile fields, the exit information, VMLOAD's state or
    the software's bytes at 3E0h."""
    from svmsim.svm import switch
    from svmsim.svm.vmcb import BY_NAME
    page = bytearray(4096)
    ref = switch._STABLE(page, 0)
    for name in ("INTERCEPT_MISC1", "VMCB_CLEAN", "EVENTINJ", "CS.ATTRIB", "CR0", "DR6", "CR2",
                 "G_PAT", "INT_CTL", "INT_STATE", "TLB_CONTROL", "GHCB_GPA", "DBGCTL"):
        f = BY_NAME[name]
        for b in (f.offset, f.end - 1):
            page[b] ^= 0x80
            assert switch._STABLE(page, 0) != ref, name
            page[b] ^= 0x80
    for name in (*switch._VOLATILE_NAMES, *switch._UNREAD, "FS.BASE", "TR.SEL", "STAR",
                 "KERNEL_GS_BASE"):
        f = BY_NAME[name]
        page[f.offset:f.end] = b"\xff" * (f.end - f.offset)
        assert switch._STABLE(page, 0) == ref, name
    page[0x3E0:0x400] = b"\xff" * 32                # the bytes the APM leaves to software
    assert switch._STABLE(page, 0) == ref


def test_the_host_save_area_rewritten_while_the_guest_runs_is_reloaded():
    """#VMEXIT reloads the host state from the host save area (APM 15.6; svmsim
    keeps it in the VMCB save-area layout, world.py): a guest that rewrites the
    saved RAX there gets that value into the host's RAX, also when the area's
    bytes were unchanged at the VMRUNs before (the values VMRUN saw are reused
    only for the same bytes)."""
    rax = HSAVE + field("RAX").offset
    guest = f"cpuid\nmov rax, {rax}\nmov qword ptr [rax], 0x5a5a\ncpuid\nhlt"
    rig = SvmRig(guest, intercepts=(ExitCode.CPUID, ExitCode.HLT))
    for _ in range(3):
        rig.run(at_vmrun=True)
        assert rig.exitcode == ExitCode.CPUID and rig.cpu.regs[0] == VMCB
    rig.vmcb["RIP"] = rig.vmcb["NRIP"]
    rig.run(at_vmrun=True)
    assert rig.exitcode == ExitCode.CPUID and rig.cpu.regs[0] == 0x5A5A
    rig.vmcb["RIP"] = rig.vmcb["NRIP"]
    rig.run(at_vmrun=True)                       # VMRUN writes the area again
    assert rig.exitcode == ExitCode.HLT and rig.cpu.regs[0] == VMCB


@pytest.mark.parametrize("name, value, loaded", [
    ("GDTR.BASE", 0x0000_9000_0000_1000, 0xFFFF_9000_0000_1000),     # canonicalized (15.6)
    ("IDTR.BASE", 0x0000_7000_0000_2000, 0x0000_7000_0000_2000),
    ("ES.BASE", 0x0000_8000_0000_0000, 0xFFFF_8000_0000_0000)])
def test_host_bases_rewritten_while_the_guest_runs_are_canonicalized(name, value, loaded):
    """#VMEXIT reloads the host's segment and descriptor-table bases from the
    host save area and canonicalizes them ("sign-extend to bit 63", 15.6
    with 15.5.1), also when VMRUN set the host's Segment objects aside for
    reuse (the values differ, or a base needs sign-extending)."""
    at = HSAVE + field(name).offset
    guest = f"cpuid\nmov rax, {at}\nmov rbx, {value}\nmov qword ptr [rax], rbx\ncpuid\nhlt"
    rig = SvmRig(guest, intercepts=(ExitCode.CPUID, ExitCode.HLT))
    for _ in range(2):
        rig.run(at_vmrun=True)
    rig.vmcb["RIP"] = rig.vmcb["NRIP"]
    rig.run(at_vmrun=True)
    cpu = rig.cpu
    assert rig.exitcode == ExitCode.CPUID and not cpu.svm_guest
    got = {"GDTR.BASE": cpu.gdtr_base, "IDTR.BASE": cpu.idtr_base, "ES.BASE": cpu.segs[0].base}[name]
    assert got == loaded


def _wide_selector_run(monkeypatch, direct):
    monkeypatch.setattr(world, "DIRECT", direct)
    monkeypatch.setattr(world.HOST_RUNS, "exact", True)     # the cut below clears it
    rig = SvmRig(GUEST, intercepts=(ExitCode.CPUID, ExitCode.HLT))
    for _ in range(2):
        rig.run(at_vmrun=True)
    rig.cpu.segs[3].sel = 0x10010          # DS: wider than the 16-bit field (set from Python)
    for _ in range(2):
        rig.run(at_vmrun=True)
    cpu = rig.cpu
    return (rig.m.bus.read_bytes(HSAVE, 4096), [(s.sel, s.attr, s.limit, s.base) for s in cpu.segs],
            cpu.regs[:], cpu.rip)


def test_a_host_value_cut_to_its_field_is_reloaded_cut(monkeypatch):
    """The host save area holds what fits its fields (a value wider than one
    is cut, as a store into the field would): #VMEXIT reloads the cut value,
    not the Segment object VMRUN set aside with the wider one (world.save_host
    takes the area's values by identity only while nothing was cut), on both
    paths alike."""
    fast = _wide_selector_run(monkeypatch, True)
    general = _wide_selector_run(monkeypatch, False)
    assert fast == general
    assert fast[1][3][0] == 0x0010
