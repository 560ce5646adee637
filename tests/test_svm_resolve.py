"""Intercepts resolved when guest code is translated (svm/guards.py RESOLVED,
codegen ``t_direct``), with real machine code: tests/guests/svm_resolve.c
runs the same guest loop under eight VMRUNs' intercept words (CPUID, PUSHF
and RDTSC intercepts set and cleared between VMRUNs, APM vol 2 15.5.1,
15.7.1, clean bit 0 cleared each time, 15.15.3).

The guest code is hot (220 iterations per phase, compiled after 200), so
the compiled tier runs each phase's blocks translated for that phase's
words; the interpreted tier (compilation off) runs the same blocks as
handlers.  Both must give the kernel's own checks (exit counts, what the
guest computed from the hypervisor's emulation) and identical transcripts,
#VMEXIT events and retired instructions.  RDTSC with its intercept clear
is the handler itself in guest blocks (``guards.CLEAR_RESOLVED``): a run
with every RDTSC guarded gives the same transcript (the TSC sums included).
"""
import io

import iced_x86
import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.svm import guards


def _run(hot, resolve_rdtsc=True):
    out, events = io.BytesIO(), []
    saved = dict(guards.CLEAR_RESOLVED)
    if not resolve_rdtsc:
        guards.CLEAR_RESOLVED.clear()
    m = Machine(mem_size="128M", serial_out=out)
    m.listeners.append(events.append)
    if hot is not None:
        m.engine.hot_threshold = hot
    m.load_kernel(str(gb.build_guest("svm_resolve")), "phases=220")
    try:
        r = m.run(max_insns=50_000_000, timeout=300)
    finally:
        guards.CLEAR_RESOLVED.update(saved)
    return m, r, out.getvalue().decode(), events


@pytest.fixture(scope="module")
def tiers():
    return {"compiled": _run(None), "interpreted": _run(10 ** 9),
            "guarded": _run(None, resolve_rdtsc=False)}


@pytest.mark.parametrize("tier", ["compiled", "interpreted"])
def test_every_phase_exits_as_its_vmrun_says(tiers, tier):
    m, r, out, _ = tiers[tier]
    assert r.status == gb.STATUS_PASS, out
    lines = [l for l in out.splitlines() if " phase " in l]
    assert len(lines) == 8 and all(l.endswith(" ok") for l in lines), out
    assert "phase 1 cpuid=1 pushf=0 rdtsc=0: exit 0x81, cpuid exits 220, pushf exits 0, rdtsc exits 0" in out
    assert "phase 4 cpuid=0 pushf=0 rdtsc=1: exit 0x81, cpuid exits 0, pushf exits 0, rdtsc exits 220" in out


@pytest.mark.parametrize("other", ["interpreted", "guarded"])
def test_tiers_agree(tiers, other):
    (_, ra, oa, ea), (_, rb, ob, eb) = tiers["compiled"], tiers[other]
    assert oa == ob and ra.instructions == rb.instructions
    assert ea == eb and sum(1 for e in ea if "vmexit" in repr(e)) > 800


def test_rdtsc_resolved_when_clear(tiers):
    """Guest blocks translated with the RDTSC intercept clear hold the RDTSC
    handler itself (compiled code then goes on after it, as in host mode:
    codegen ``_stays``); with it set, the guard; the run that guards every
    RDTSC holds no bare handler in guest blocks."""
    from svmsim.cpu.ops import system

    def kinds(m):
        return {ins.fn is system.rdtsc for k, b in m.engine.blocks.items()
                if k[1][3] is not False for ins in b.insns if ins.mnemonic == iced_x86.Mnemonic.RDTSC}
    assert kinds(tiers["compiled"][0]) == {True, False}
    assert kinds(tiers["guarded"][0]) == {False}


def test_guest_blocks_keyed_by_intercepts(tiers):
    """The compiled run holds the guest loop under four guest keys (one per
    set of intercept words), compiled; where CPUID or PUSHF is intercepted
    the region leaves for the exit without raising (``cpu.event_ins``)."""
    m = tiers["compiled"][0]
    keys = {k[1][3] for k, b in m.engine.blocks.items() if k[1][3] is not False}
    assert len(keys) >= 4
    direct = [b for k, b in m.engine.blocks.items()
              if k[1][3] is not False and b.compiled is not None and "cpu.event_ins" in b.compiled.source]
    assert direct
    exits = {ins.fn.__name__ for k, b in m.engine.blocks.items() if k[1][3] is not False
             for ins in b.insns if getattr(ins.fn, "direct", None) is not None}
    assert exits == {"exit_cpuid", "exit_pushf", "exit_vmmcall"}


def test_block_key_numbers_are_not_reused(monkeypatch):
    """A forgotten set of words gets a new number, never an old one."""
    class S:
        es = False
        words = (1, 2, 3, 4, 5, 6)

    class C:
        svm = S()
    monkeypatch.setattr(guards, "_KEYS", {})
    monkeypatch.setattr(guards, "_KEYS_MAX", 2)
    a = guards.block_key(C)
    assert guards.block_key(C) == a
    S.words = (0,) * 6
    b = guards.block_key(C)
    S.words = (7,) * 6
    c = guards.block_key(C)                 # the table was full: cleared
    S.words = (1, 2, 3, 4, 5, 6)
    assert len({a, b, c}) == 3 and guards.block_key(C) not in (a, b, c)


VMMCALL_GUEST = ("mov ecx, 0xC0000080\nrdmsr\nand eax, {mask:#x}\nwrmsr\n"
                 "add rbx, 1\nvmmcall\nadd rbx, 0x100\nhlt")


def _vmmcall_runs(svme, hot, resolve=True, monkeypatch=None):
    """A guest that keeps or clears its EFER.SVME (an uninterrupted WRMSR),
    then VMMCALL with the VMMCALL and #UD intercepts set, entered four
    times: the #UD (SVME = 0, APM vol 3 VMMCALL) or the VMMCALL exit each
    time, however hot the code is."""
    from svmharness import SvmRig
    from svmsim.svm.exits import ExitCode
    if not resolve:
        monkeypatch.setattr(guards, "VMMCALL_EXIT", None)
        monkeypatch.setattr(guards, "_VMMCALL_BIT", (1, 64))   # never set: the guard
    r = SvmRig(VMMCALL_GUEST.format(mask=0xFFFFFFFF if svme else ~(1 << 12) & 0xFFFFFFFF),
               intercepts=[ExitCode.VMMCALL, ExitCode.EXCP_UD])
    r.m.engine.hot_threshold = hot
    efer, out = r.vmcb["EFER"], []
    for _ in range(4):
        r.vmcb["RIP"], r.vmcb["EFER"] = r.guest_label(0), efer
        r.run()
        out.append((r.exitcode, r.vmcb["RIP"], r.vmcb["NRIP"], r.cpu.regs[3], r.cpu.retired, r.vmcb["EFER"]))
    blocks = {ins.fn.__name__ for k, b in r.m.engine.blocks.items() if k[1][3] is not False
              for ins in b.insns if ins.mnemonic == iced_x86.Mnemonic.VMMCALL}
    return out, blocks


@pytest.mark.parametrize("svme", [True, False])
def test_vmmcall_resolved_exit_keeps_the_svme_ud_first(monkeypatch, svme):
    from svmsim.svm.exits import ExitCode
    hot, hot_names = _vmmcall_runs(svme, 1)
    cold, _ = _vmmcall_runs(svme, 10 ** 9)
    guarded, guarded_names = _vmmcall_runs(svme, 1, resolve=False, monkeypatch=monkeypatch)
    assert hot == cold == guarded
    assert {e[0] for e in hot} == {ExitCode.VMMCALL if svme else ExitCode.EXCP_UD}
    assert hot_names == {"exit_vmmcall"} and guarded_names == {"guarded"}
