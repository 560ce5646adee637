"""TLB_CONTROL flushes that keep what a walk made now would give (svmsim/cpu/tlbkeep.py).

A VMRUN with TLB_CONTROL 1, 3 or 7 keeps a translation whose walk is a kept
walk (cpu/walkmemo.py) none of whose entries was written since, under the
inputs the guest (or the host) runs with: it is what the walk the flush
forces would give.  The differential test runs the same random hypervisor
session twice, keeping on and off: between runs the host changes guest
PTEs, the PD entry, nested PTEs and their A/D bits (by a bus store, DMA or
its own CPU store), INVLPGA, the guest's ASID, CR3, EFER.NXE and
TLB_CONTROL; the guest may INVLPG, reads three pages and writes one.  Every
exit, every value the guest read, the tables (A/D bits included) and the
flush statistics must be the same, and keeping must have saved walks.
"""
import random

import pytest

from cpuharness import asm, PML4
from svmharness import SvmRig, NestedTables
from svmsim.cpu import tlbkeep
from svmsim.cpu.segments import DS
from svmsim.memory.dma import DmaPort
from svmsim.svm.exits import ExitCode
from cpuharness import PD

VLIN = 0x600000              # four 4 KiB guest pages from here (PD entry 3 -> PT or ALT_PT)
PT, ALT_PT = 0x30000, 0x34000
FRAMES = 0x38000             # eight frames: PTE i maps frame i (PT) or frame i + 4 (ALT_PT)
ROOT2 = 0x36000              # a copy of the PML4: the same tables under another CR3
P_RW_A_D = 0x63
A, D = 0x20, 0x40

GUEST = """
    mov rbx, 0x600000
    test r9, r9
    jz 1f
    invlpg [rbx]
1:  mov rax, [rbx]
    add rax, [rbx + 0x1000]
    add rax, [rbx + 0x2000]
    mov [rbx + 0x3000], rax
    add rax, [rbx + 0x3000]
    vmmcall
"""


def _rig(npt):
    r = SvmRig(GUEST, intercepts=[ExitCode.VMMCALL, ExitCode.EXCP_PF], NP_ENABLE=int(npt))
    m = r.m
    m.engine.hot_threshold = 5
    for i in range(4):
        m.bus.write(PT + 8 * i, 8, (FRAMES + 0x1000 * i) | P_RW_A_D)
        m.bus.write(ALT_PT + 8 * i, 8, (FRAMES + 0x1000 * (i + 4)) | P_RW_A_D)
    for k in range(8):
        m.bus.write(FRAMES + 0x1000 * k, 8, 0x1111 * (k + 1))
    m.bus.write(PD + 8 * 3, 8, PT | 0x23)
    m.bus.write_bytes(ROOT2, m.bus.read_bytes(PML4, 4096))
    if npt:
        r.nt = NestedTables(m.bus)
        for a in range(0, 0x200000, 0x1000):
            r.nt.map(a, a)
        r.nt.identity(0x200000, 0x1000000)
        r.vmcb["N_CR3"] = r.nt.root
    r.cpu.tlb.flush_all("test")
    return r


def _entries(r, npt):
    """(address, XOR values) of the entries the host changes."""
    out = [(PT + 8 * i, (0x1000 * (i ^ 1)) ^ (0x1000 * i)) for i in range(4)]
    out += [(PT + 8 * i, A) for i in range(4)] + [(PT + 8 * i, D) for i in range(4)]
    out += [(PD + 8 * 3, PT ^ ALT_PT)]
    if npt:
        for k in range(4):
            e = r.nt.entry_addr(FRAMES + 0x1000 * k, 1)
            out += [(e, (FRAMES + 0x1000 * k) ^ (FRAMES + 0x1000 * (k + 4))), (e, D), (e, A)]
        out += [(r.nt.entry_addr(PT, 1), PT ^ ALT_PT), (r.nt.entry_addr(PT, 1), A)]
    return out


def _session(npt, seed, keep, monkeypatch, steps=120):
    monkeypatch.setattr(tlbkeep, "ENABLED", keep)
    rng = random.Random(seed)
    r = _rig(npt)
    m, cpu, v = r.m, r.cpu, r.vmcb
    port = DmaPort(m, "edu")
    entries = _entries(r, npt)
    cr3s = [cpu.cr3, ROOT2]
    out = []
    for step in range(steps):
        if rng.random() < 0.4:
            addr, x = rng.choice(entries)
            value = m.bus.read(addr, 8) ^ x
            how = rng.choice(["bus", "dma", "store"])
            if how == "bus":
                m.bus.write(addr, 8, value)
            elif how == "dma":
                port.write_bytes(addr, value.to_bytes(8, "little"))
            else:
                cpu.write(DS, addr, 8, value)
        if rng.random() < 0.1:
            cpu.tlb.flush_page(VLIN >> 12, "invlpga", asid=rng.choice([1, 2]))
        v["TLB_CONTROL"] = rng.choice([0, 1, 1, 1, 3, 7])
        if rng.random() < 0.15:
            v["GUEST_ASID"] = rng.choice([1, 2])
        if rng.random() < 0.1:
            v["CR3"] = rng.choice(cr3s)
        if rng.random() < 0.05:
            v["EFER"] ^= 1 << 11
        cpu.regs[9] = int(rng.random() < 0.1)
        v["RIP"] = r.guest_label(0)
        r.run()
        out.append((step, r.exitcode, v["RAX"], v["EXITINFO1"], v["EXITINFO2"]))
    tables = bytes(m.bus.read_bytes(0x30000, 0x10000))
    nested = bytes(m.bus.read_bytes(0x1000000, 0x8000)) if npt else b""
    return out, tables, nested, dict(cpu.tlb.stats["flushes"]), cpu.tlb.stats["misses"]


@pytest.mark.parametrize("npt", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_keeping_matches_flushing(npt, seed, monkeypatch):
    on = _session(npt, seed, True, monkeypatch)
    off = _session(npt, seed, False, monkeypatch)
    assert on[:4] == off[:4]
    assert on[4] < off[4]                     # kept translations were not walked again
    assert sum(1 for o in on[0] if o[1] == ExitCode.VMMCALL) > 60


@pytest.mark.parametrize("npt", [False, True])
def test_round_trip_walks_nothing_again(npt, monkeypatch):
    """A guest that reads the same pages at every VMRUN (TLB_CONTROL = 1, as
    kvm-unit-tests sets it) misses the TLB only while its walks are not yet
    kept: then neither it nor the host walks again."""
    monkeypatch.setattr(tlbkeep, "ENABLED", True)
    r = _rig(npt)
    r.vmcb["TLB_CONTROL"] = 1
    misses = []
    for _ in range(8):
        r.cpu.regs[9] = 0
        r.vmcb["RIP"] = r.guest_label(0)
        r.run()
        assert r.exitcode == ExitCode.VMMCALL
        misses.append(r.cpu.tlb.stats["misses"])
    assert misses[-1] == misses[-3] and misses[0] > 0
    assert r.cpu.tlb.stats["flushes"]["tlb_control"] == 8


@pytest.mark.parametrize("npt", [False, True])
def test_write_after_the_flush_sets_dirty(npt, monkeypatch):
    """A kept translation of a clean page serves reads only: the first write
    after the flush walks and sets the PTE's Dirty bit (APM 5.4.2)."""
    monkeypatch.setattr(tlbkeep, "ENABLED", True)
    r = _rig(npt)
    r.vmcb["TLB_CONTROL"] = 1
    for _ in range(4):                         # the store page's walk kept, D set
        r.vmcb["RIP"] = r.guest_label(0)
        r.run()
    r.m.bus.write(PT + 8 * 3, 8, r.m.bus.read(PT + 8 * 3, 8) & ~D)
    r.vmcb["RIP"] = r.guest_label(0)
    r.run()
    assert r.exitcode == ExitCode.VMMCALL and r.m.bus.read(PT + 8 * 3, 8) & D


@pytest.mark.parametrize("keep", [True, False])
def test_change_after_the_flush_without_invlpg(keep, monkeypatch):
    """svmsim's choice (docs/DESIGN.md, "Flushes that keep what a walk
    gives"): the flush keeps a translation as a walk made at the flush
    would have cached it, so a guest that rewrites its PTE after the VMRUN
    and reads without INVLPG may see the translation of the flush's time
    (nothing flushed it since, as on a processor that walked at once); with
    INVLPG, always the new one.  Keeping off, the read walks."""
    monkeypatch.setattr(tlbkeep, "ENABLED", keep)
    code = asm(f"""
        mov rbx, {VLIN:#x}
        mov qword ptr [{PT:#x}], {(FRAMES + 0x1000) | P_RW_A_D:#x}
        test r9, r9
        jz 1f
        invlpg [rbx]
    1:  mov rax, [rbx]
        mov qword ptr [{PT:#x}], {FRAMES | P_RW_A_D:#x}
        invlpg [rbx]
        mov rdx, [rbx]
        vmmcall
    """)
    r = _rig(False)
    r.m.bus.write_bytes(r.guest_label(0), code)
    r.vmcb["TLB_CONTROL"] = 1
    got = []
    for i in range(8):
        r.cpu.regs[9] = i & 1
        r.vmcb["RIP"] = r.guest_label(0)
        r.run()
        got.append(r.vmcb["RAX"])
    assert got[4:] == ([0x1111, 0x2222] * 2 if keep else [0x2222] * 4)


@pytest.mark.parametrize("npt", [False, True])
@pytest.mark.parametrize("how", ["bus", "dma", "store"])
def test_quiet_round_trips_then_a_change(npt, how, monkeypatch):
    """Once every kept entry was found valid, a flush with nothing changed
    since looks at none of them (the same check, no walk dropped, no entry
    added: Tlb._clean); a change after such quiet round trips is still seen
    at the next VMRUN, by whichever writer."""
    monkeypatch.setattr(tlbkeep, "ENABLED", True)
    r = _rig(npt)
    r.vmcb["TLB_CONTROL"] = 1
    seen = []
    for _ in range(6):
        r.vmcb["RIP"] = r.guest_label(0)
        r.run()
        seen.append(dict(r.cpu.tlb._clean))
    assert seen[-1] and all(seen[-1][k] is seen[-2][k] for k in seen[-1])
    value = r.m.bus.read(PT, 8) ^ (FRAMES ^ (FRAMES + 0x4000))
    if how == "bus":
        r.m.bus.write(PT, 8, value)
    elif how == "dma":
        DmaPort(r.m, "edu").write_bytes(PT, value.to_bytes(8, "little"))
    else:
        r.cpu.write(DS, PT, 8, value)
    before = r.vmcb["RAX"]
    r.vmcb["RIP"] = r.guest_label(0)
    r.run()
    assert r.vmcb["RAX"] == before - 2 * 0x1111 + 2 * 0x5555


def _count_calls(monkeypatch, owner, name):
    """Count the calls of ``owner.name`` (a function or method) from now on."""
    calls = []
    real = getattr(owner, name)

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("npt", [False, True])
def test_quiet_flushes_redo_nothing(npt, monkeypatch):
    """A TLB_CONTROL = 1 flush with the same inputs as the last one and
    nothing added, dropped or set aside since (a hypervisor's quiet loop)
    makes no check again (world._keep_checks: the same list) and goes over
    no tag and no fast set (Tlb._settled): it only counts.  A host page
    walked afresh (an entry added), a guest CR3 change (other checks) or a
    written table entry (a walk dropped) makes the next flush do its work,
    and the guest still reads what the tables give."""
    from svmsim.svm import world
    from svmsim.cpu.tlb import Tlb
    monkeypatch.setattr(tlbkeep, "ENABLED", True)
    r = _rig(npt)
    r.vmcb["TLB_CONTROL"] = 1

    def trip():
        r.cpu.regs[9] = 0
        r.vmcb["RIP"] = r.guest_label(0)
        r.run()
        assert r.exitcode == ExitCode.VMMCALL
        return r.vmcb["RAX"]
    for _ in range(4):
        first = trip()
    made = _count_calls(monkeypatch, world, "_make_keep_checks")
    kept = _count_calls(monkeypatch, Tlb, "_keep_fast")
    flushes = r.cpu.tlb.stats["flushes"]["tlb_control"]
    for _ in range(4):
        assert trip() == first
    assert made == [] and kept == []
    assert r.cpu.tlb.stats["flushes"]["tlb_control"] == flushes + 4
    r.cpu.read(DS, 0x900000, 8)                # the host walks a page it never used: an insert
    trip()
    assert made == [] and kept == [1]          # the same checks; this flush looked again
    trip()
    assert kept == [1]
    r.vmcb["CR3"] = ROOT2                      # the same tables under another CR3: other checks
    assert trip() == first
    assert made == [1] and len(kept) == 2
    value = r.m.bus.read(PT, 8) ^ (FRAMES ^ (FRAMES + 0x4000))
    r.m.bus.write(PT, 8, value)                # a kept walk dropped
    assert trip() == first - 2 * 0x1111 + 2 * 0x5555
    assert len(kept) == 3
