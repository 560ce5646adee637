"""Cpu.update_mode's 64-bit path (issue 14: the world switch recomputes the
mode twice per round trip) gives what the rule for every mode gives
(``Cpu._update_mode_general``): code and stack size, address masks,
effective bases, limit checks, the fast caches of the privilege (none with
alignment checking, APM vol 2, 8.2.18) and the block-cache key, host and
guest mode, CPL 0 and 3, after state changes an instruction can make."""
import itertools

import pytest

from cpuharness import make_machine, run_code
from svmsim.cpu.flags import AC, VM
from svmsim.cpu.segments import Segment, CS, FS, GS, SS
from svmsim.cpu.state import CR0_AM, CR0_PG, EFER_LMA

DERIVED = ("bits", "long64", "lin_mask", "lin_mask_sys", "ebase", "seg_chk", "stack_bits",
           "paging", "user_access", "fr", "fw", "fx", "fc", "a8r", "a8w", "a4r", "a4w", "a1r",
           "align_check", "mode_key")


def _derived(cpu):
    out = {}
    for name in DERIVED:
        v = getattr(cpu, name)
        # The fast caches: the same dict objects (or, with alignment checks,
        # empty ones of their own).
        out[name] = (id(v) if v else "empty") if isinstance(v, dict) else v
    return out


def _both(cpu):
    cpu.update_mode()
    fast = _derived(cpu)
    cpu._update_mode_general()
    return fast, _derived(cpu)


STATES = list(itertools.product((0, 3), (False, True), (False, True), (0, 0x7FFF0000),
                                (False, True)))


@pytest.mark.parametrize("cpl, am_ac, guest, fs_base, compat", STATES)
def test_the_64_bit_path_gives_the_general_rule(cpl, am_ac, guest, fs_base, compat):
    m = make_machine("long64")
    cpu = m.cpus[0]
    cpu.cpl = cpl
    if am_ac:
        cpu.cr0 |= CR0_AM
        cpu.rflags |= AC
    cpu.segs[FS] = Segment(0, fs_base, 0xFFFF, 0x93)
    cpu.segs[GS] = Segment(0, fs_base * 3, 0xFFFF, 0x93)
    cpu.segs[SS] = Segment(0x10, 0x1000, 0xFFFF, 0x93 | (0x400 if compat else 0))
    if compat:
        cpu.segs[CS] = Segment(0x18, 0x2000, 0xFFFFF, 0xC9B)       # L = 0: compatibility mode
    if guest:
        cpu.svm.words = (0, 1 << 18, 1, 0, 0, 0)                    # CPUID intercepted
        cpu.svm_guest = True
    fast, general = _both(cpu)
    assert fast == general
    assert (general["bits"] == 64) == (not compat)
    assert general["align_check"] == (am_ac and cpl == 3)


def test_a_64_bit_guest_after_its_code_ran_has_the_general_mode():
    """Machine code changes FS's base (WRMSR) and RFLAGS.AC (STAC-free POPF
    at CPL 0): the state the engine leaves is that of the general rule."""
    code = bytes.fromhex(
        "b9000100c0"            # mov ecx, 0xC0000100 (FS_BASE)
        "b800100000"            # mov eax, 0x1000
        "31d2"                  # xor edx, edx
        "0f30"                  # wrmsr
        "9c"                    # pushfq
        "810c2400000400"        # or dword [rsp], 0x40000 (AC)
        "9d")                   # popfq
    r = run_code(code)
    cpu = r.cpu
    assert cpu.segs[FS].base == 0x1000 and cpu.rflags & AC
    before = _derived(cpu)
    fast, general = _both(cpu)
    assert fast == general == before
    assert cpu.ebase[4] == 0x1000


def test_legacy_and_virtual_8086_modes_take_the_general_rule():
    m = make_machine("long64")
    cpu = m.cpus[0]
    cpu.efer &= ~EFER_LMA
    cpu.cr0 &= ~CR0_PG
    cpu.segs[CS] = Segment(0x18, 0, 0xFFFFFFFF, 0xC9B)              # 32-bit protected mode
    fast, general = _both(cpu)
    assert fast == general and general["bits"] == 32
    cpu.rflags |= VM
    fast, general = _both(cpu)
    assert fast == general and general["bits"] == 16


@pytest.mark.parametrize("guest_rflags", (0x2, 0x40202))
def test_the_mode_after_a_world_switch_is_the_general_rule(guest_rflags):
    """VMRUN and #VMEXIT load RFLAGS without Cpu.set_rflags' own mode update
    and recompute the mode once at the end (svm/switch.py, world.restore_host):
    the state after each is that of the general rule, with RFLAGS.AC set in
    one world and not in the other."""
    from svmharness import SvmRig
    from svmsim.svm.exits import ExitCode
    rig = SvmRig("cpuid\nhlt", intercepts=(ExitCode.CPUID,), RFLAGS=guest_rflags)
    cpu = rig.cpu
    seen = []
    update = cpu.update_mode

    def recorded():
        update()
        fast = _derived(cpu)
        cpu._update_mode_general()
        general = _derived(cpu)
        seen.append((cpu.svm_guest, fast == general, cpu.rflags & AC))
    cpu.update_mode = recorded
    for _ in range(3):
        rig.run(at_vmrun=True)
        assert rig.exitcode == ExitCode.CPUID
    assert all(same for _, same, _ in seen)
    modes = {(g, ac) for g, _, ac in seen}
    assert (True, guest_rflags & AC) in modes and (False, 0) in modes
