"""Page walks kept across TLB flushes (svmsim/cpu/walkmemo.py).

A flush guarantees only that no stale translation is used (APM 15.16); a walk
kept in the memo must therefore give exactly what a fresh walk of the same
memory gives.  The differential test runs the same random walks and random
writes (slow-path and fast-path stores of two CPUs, DMA, the walker's own
A/D updates) on two machines, memo on and off, and compares every result
and the tables at the end.  The machine-code tests change a page-table
entry after a flush (INVLPG, MOV CR3) by a store, by DMA and by the other
CPU, in the interpreter and compiled, and check the new mapping is seen.
"""
import random

import pytest

from cpuharness import make_machine, asm, start_like_bsp, CODE_ADDR, DATA_ADDR, PD
from svmsim.cpu.exceptions import CpuException, PF_W, PF_U, PF_I
from svmsim.cpu.segments import DS
from svmsim.memory.dma import DmaPort

TABLES = 0x400000            # random tables: 64 pages from 4 MiB (identity-mapped by the harness)
NPAGES = 64
P, RW, US, A, D, PS, NX = 1, 2, 4, 0x20, 0x40, 0x80, 1 << 63


def _random_entry(rng, leaf_ok):
    """An entry pointing at one of the table pages (or a frame), with random
    present/RW/US/A/D/PS/NX bits (mostly valid)."""
    e = TABLES + rng.randrange(NPAGES) * 0x1000
    e |= rng.choice([P | RW | US, P | RW | US, P | RW | US | A, P | RW | US | A | D, P | US | A, P | RW | A, 0])
    if leaf_ok and rng.random() < 0.1:
        e |= PS
    if rng.random() < 0.05:
        e |= NX
    return e


def _fill(m, rng):
    for i in range(NPAGES * 512):
        m.bus.write(TABLES + 8 * i, 8, _random_entry(rng, True) if rng.random() < 0.95 else 0)


def _walk(m, cpu, lin, access, cr3, nxe):
    efer = (1 << 8) | (1 << 10) | ((1 << 11) if nxe else 0)
    try:
        t = cpu.walker.walk(lin, 0x80010011, cr3, 1 << 5, efer, access)
        return ("t", t.spa, bool(t.rw), bool(t.us), bool(t.nx), bool(t.g), bool(t.d), t.size)
    except CpuException as e:
        return ("pf", e.vector, e.error_code)


def _machines(seed):
    out = []
    for memo in (True, False):
        m = make_machine("long64", smp=2)
        for c in m.cpus[1:]:
            c0 = m.cpus[0]
            c.cr0, c.cr3, c.cr4, c.efer = c0.cr0, c0.cr3, c0.cr4, c0.efer
            c.segs[:] = [s.copy() for s in c0.segs]
            c.gdtr_base, c.gdtr_limit = c0.gdtr_base, c0.gdtr_limit
            c.tlb.flush_all("test")
            c.update_mode()
        if not memo:
            for c in m.cpus:
                c.walker.disable_memo()
        _fill(m, random.Random(seed))
        out.append(m)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_memo_matches_fresh_walks(seed):
    """Random walks (two roots, NXE on and off, read/write/fetch, user and
    supervisor) interleaved with random entry writes by every writer, with
    or without a commit (the engine's between-block step) in between: the
    memo's machine gives every walk's result and ends with the same tables."""
    rng = random.Random(1000 + seed)
    ma, mb = _machines(seed)
    ports = [DmaPort(m, "edu") for m in (ma, mb)]
    roots = [TABLES + rng.randrange(NPAGES) * 0x1000 for _ in range(2)]
    # a few linear pages, so walks repeat (and hit the memo)
    lins = [rng.randrange(1 << 47) & ~0xFFF for _ in range(12)]
    for step in range(4000):
        r = rng.random()
        if r < 0.75:
            lin, access = rng.choice(lins), rng.choice([0, PF_W, PF_I, PF_U, PF_U | PF_W])
            cr3, nxe = rng.choice(roots), rng.random() < 0.7
            cpu_i = rng.randrange(2)
            got = [_walk(m, m.cpus[cpu_i], lin, access, cr3, nxe) for m in (ma, mb)]
            assert got[0] == got[1], f"step {step}: {got}"
        elif r < 0.92:
            # an entry the walks use (a step of a recent walk) or any entry
            off = TABLES + 8 * rng.randrange(NPAGES * 512)
            used = sorted(o for o in ma.pt_watch.deps if TABLES <= o < TABLES + NPAGES * 0x1000)
            if rng.random() < 0.7 and used:
                off = rng.choice(used)
            old = ma.bus.read(off, 8)
            value = rng.choice([old ^ A, old ^ D, old ^ P, old ^ RW, old ^ NX, _random_entry(rng, True),
                                old ^ (rng.randrange(NPAGES) << 12)])
            size, at = rng.choice([(8, 0), (4, 0), (4, 4), (1, 0), (2, 2)])
            part = (value >> (8 * at)) & ((1 << (8 * size)) - 1)
            how = rng.choice(["bus", "dma", "cpu0", "cpu1", "bytes"])
            for m, port in zip((ma, mb), ports):
                if how == "bus":
                    m.bus.write(off + at, size, part)
                elif how == "dma":
                    port.write_bytes(off + at, part.to_bytes(size, "little"))
                elif how == "bytes":
                    m.bus.write_bytes(off + at, part.to_bytes(size, "little"))
                else:                        # a store of CPU 0 or 1 (its write caches, the harness's identity map)
                    m.cpus[int(how[-1])].write(DS, off + at, size, part)
        else:
            ma.pt_watch.commit()
        if rng.random() < 0.3:
            ma.pt_watch.commit()
    assert ma.bus.read_bytes(TABLES, NPAGES * 0x1000) == mb.bus.read_bytes(TABLES, NPAGES * 0x1000)
    assert ma.pt_watch.stats["entered"] > 4 and ma.pt_watch.stats["dropped"] > 2


# ---------------------------------------------------------------- machine code
PT = 0x30000                 # a 4 KiB page table for linear 0x600000 (PD entry 3)
P1, P2 = 0x31000, 0x32000    # the two frames the PTE flips between
VLIN = 0x600000


def _map_4k(m):
    m.bus.write(PT, 8, P1 | 0x23)                      # present, RW, accessed
    m.bus.write(P1, 8, 0x1111)
    m.bus.write(P2, 8, 0x2222)
    m.bus.write(PD + 8 * 3, 8, PT | 0x23)
    for c in m.cpus:
        c.tlb.flush_all("test")


FLUSHES = {"invlpg": "invlpg [rbx]",
           "cr3": "mov rdx, cr3\n    mov cr3, rdx"}


def _flip_loop(flush, writer):
    """rcx times: read the mapped page (twice, across a flush: the second
    walk is the memo's), have ``writer`` point the PTE at the other frame,
    flush, read again; sum of the values read in r8."""
    return asm(f"""
        mov rbx, {VLIN:#x}
        xor r8, r8
    1:  add r8, [rbx]
        {FLUSHES[flush]}
        jmp 2f
    2:  add r8, [rbx]
        {FLUSHES[flush]}
        jmp 3f
    3:  add r8, [rbx]
        {writer}
        {FLUSHES[flush]}
        add r8, [rbx]
        dec rcx
        jnz 1b
        hlt
    """)


def _expected(n):
    total, cur = 0, 0x1111
    for _ in range(n):
        total += 3 * cur
        cur = 0x2222 if cur == 0x1111 else 0x1111
        total += cur
    return total


def _run(m, cpu, budget=10 ** 6):
    while not cpu.halted and budget > 0:
        budget -= max(1, m.engine.run(cpu, 1000))


@pytest.mark.parametrize("flush", sorted(FLUSHES))
@pytest.mark.parametrize("hot", [False, True])
def test_store_to_pte_after_flush_is_seen(flush, hot):
    """The CPU itself rewrites the PTE (XOR of the frame bits: a
    read-modify-write, in compiled code inline through the code-page cache
    once the table page is watched)."""
    m = make_machine("long64")
    cpu = m.cpus[0]
    _map_4k(m)
    code = _flip_loop(flush, f"xor qword ptr [{PT:#x}], {P1 ^ P2:#x}")
    m.bus.write_bytes(CODE_ADDR, code)
    cpu.rip, cpu.regs[1] = CODE_ADDR, 40
    m.engine.hot_threshold = 3 if hot else 10 ** 9
    _run(m, cpu)
    assert cpu.halted and cpu.regs[8] == _expected(40)
    assert m.pt_watch.stats["entered"] > 0 and m.pt_watch.stats["dropped"] >= 39
    if hot:
        assert m.engine.stats["blocks_compiled"] > 0


@pytest.mark.parametrize("quantum", [3, 11, 200])
def test_dma_rewrites_pte_after_flush(quantum):
    """A device rewrites the PTE through its DMA port while the CPU waits for
    a flag the device sets with it; the CPU flushes and reads the new frame."""
    m = make_machine("long64")
    cpu = m.cpus[0]
    _map_4k(m)
    code = _flip_loop("invlpg", f"""
        mov byte ptr [{DATA_ADDR:#x}], 1
    4:  cmp byte ptr [{DATA_ADDR:#x}], 1
        je 4b""")
    m.bus.write_bytes(CODE_ADDR, code)
    m.bus.write(DATA_ADDR, 1, 0)
    cpu.rip, cpu.regs[1] = CODE_ADDR, 30
    m.engine.hot_threshold = 5
    port = DmaPort(m, "edu")
    frame = P1
    for _ in range(10 ** 5):
        if cpu.halted:
            break
        if m.bus.read(DATA_ADDR, 1) == 1:
            frame ^= P1 ^ P2
            port.write_bytes(PT, (frame | 0x23).to_bytes(8, "little"))
            port.write_bytes(DATA_ADDR, b"\x00")
        m.engine.run(cpu, quantum)
    assert cpu.halted and cpu.regs[8] == _expected(30)
    assert m.pt_watch.stats["dropped"] >= 29


@pytest.mark.parametrize("q0,q1", [(5, 3), (64, 17), (300, 1000)])
def test_other_cpu_rewrites_pte_after_flush(q0, q1):
    """CPU 1 flips the PTE CPU 0 uses each time CPU 0 waits for it; CPU 0
    flushes (MOV CR3) and reads the new frame, whatever the interleaving."""
    m = make_machine("long64", smp=2)
    c0, c1 = m.cpus[0], start_like_bsp(m)
    _map_4k(m)
    code0 = _flip_loop("cr3", f"""
        mov byte ptr [{DATA_ADDR:#x}], 1
    4:  cmp byte ptr [{DATA_ADDR:#x}], 1
        je 4b""")
    code1 = asm(f"""
    1:  cmp byte ptr [{DATA_ADDR:#x}], 1
        jne 1b
        xor qword ptr [{PT:#x}], {P1 ^ P2:#x}
        mov byte ptr [{DATA_ADDR:#x}], 0
        dec rcx
        jnz 1b
        hlt
    """)
    m.bus.write_bytes(CODE_ADDR, code0)
    m.bus.write_bytes(CODE_ADDR + 0x3000, code1)
    m.bus.write(DATA_ADDR, 1, 0)
    c0.rip, c1.rip = CODE_ADDR, CODE_ADDR + 0x3000
    c0.regs[1] = c1.regs[1] = 30
    c0.regs[4], c1.regs[4] = 0x80000 - 0x100, 0x70000
    m.engine.hot_threshold = 5
    for _ in range(10 ** 5):
        if c0.halted and c1.halted:
            break
        for c, q in ((c0, q0), (c1, q1)):
            if not c.halted:
                m.engine.run(c, q)
    assert c0.halted and c1.halted and c0.regs[8] == _expected(30)
    assert m.pt_watch.stats["dropped"] >= 29


# ---------------------------------------------------------------- TLB_CONTROL, nested paging
ALT_PT = 0x34000             # a second page table: entry 0 maps VLIN to P2


@pytest.mark.parametrize("which", ["guest_pte", "nested_pte", "nested_table", "none"])
def test_entry_changed_between_vmruns_with_tlb_control(which):
    """A hypervisor runs a nested-paging guest (TLB_CONTROL = 1 at every
    VMRUN) that reads VLIN; after each #VMEXIT it flips one entry by a
    store: the guest's PTE, the nested PTE of the final gPA, or the nested
    PTE of the guest's page-table page (the guest walk's nested dependency).
    Every run sees the new mapping (APM 15.16.1: TLB_CONTROL 1 flushes every
    ASID)."""
    from svmharness import SvmRig, NestedTables, VMCB
    from svmsim.svm.exits import ExitCode
    rig = SvmRig("mov rdx, [rbx]\nvmmcall", intercepts=[ExitCode.VMMCALL])
    m, cpu = rig.m, rig.cpu
    _map_4k(m)
    m.bus.write(ALT_PT, 8, P2 | 0x23)
    nt = NestedTables(m.bus)
    for a in range(0, 0x200000, 0x1000):
        nt.map(a, a)
    nt.identity(0x200000, 0x2000000)
    entry, flip = {"guest_pte": (PT, P1 ^ P2), "nested_pte": (nt.entry_addr(P1, 1), P1 ^ P2),
                   "nested_table": (nt.entry_addr(PT, 1), PT ^ ALT_PT), "none": (DATA_ADDR, 0)}[which]
    rig.vmcb["NP_ENABLE"], rig.vmcb["N_CR3"], rig.vmcb["TLB_CONTROL"] = 1, nt.root, 1
    host = asm(f"""
        xor r8, r8
    1:  mov rax, {VMCB:#x}
        mov qword ptr [{VMCB + 0x578:#x}], {0x400000:#x}
        vmrun
        add r8, rdx
        xor qword ptr [{entry:#x}], {flip:#x}
        dec rcx
        jnz 1b
        hlt
    """)
    from cpuharness import CODE_ADDR as HOST
    m.bus.write_bytes(HOST, host)
    cpu.rip, cpu.regs[1], cpu.regs[3] = HOST, 30, VLIN
    cpu.halted = False
    m.engine.hot_threshold = 5
    _run(m, cpu)
    assert cpu.halted and not cpu.svm_guest
    n1 = 30 if which == "none" else 15
    assert cpu.regs[8] == n1 * 0x1111 + (30 - n1) * 0x2222
    assert m.pt_watch.stats["entered"] > 0
    if which != "none":
        assert m.pt_watch.stats["dropped"] >= 29


# ---------------------------------------------------------------- what is not memoized
class _TableDevice:
    """An MMIO window whose qwords read as ``value`` (a page table a device
    answers): it may change without any write."""
    value = 0

    def mmio_read(self, offset, size):
        return self.value & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset, size, value):
        pass


def _walk_twice(m, cpu, lin=VLIN):
    out = []
    for _ in range(3):
        out.append(_walk(m, cpu, lin, 0, cpu.cr3, True))
        m.pt_watch.commit()
    return out


def test_walk_reading_mmio_is_not_kept():
    """A page table in an MMIO window is read at every walk (a device may
    change what it returns without a write anyone sees)."""
    m = make_machine("long64")
    cpu = m.cpus[0]
    dev = _TableDevice()
    m.bus.add_mmio(0xE0000000, 0x1000, dev, "table")
    m.bus.write(PD + 8 * 3, 8, 0xE0000000 | 0x23)       # the PT of VLIN is the device
    dev.value = P1 | 0x63
    assert [r[1] for r in _walk_twice(m, cpu)] == [P1] * 3
    dev.value = P2 | 0x63
    assert _walk(m, cpu, VLIN, 0, cpu.cr3, True)[1] == P2
    assert m.pt_watch.stats["entered"] == 0


def test_bus_layout_change_drops_kept_walks():
    """An MMIO window that comes over a page-table page drops every kept walk:
    the next walk reads the device."""
    m = make_machine("long64")
    cpu = m.cpus[0]
    _map_4k(m)
    assert [r[1] for r in _walk_twice(m, cpu)] == [P1] * 3
    assert m.pt_watch.stats["entered"] == 1
    dev = _TableDevice()
    dev.value = P2 | 0x63
    m.bus.add_mmio(PT, 0x1000, dev, "table")
    assert _walk(m, cpu, VLIN, 0, cpu.cr3, True)[1] == P2


def test_no_memo_through_the_encryption_engine():
    """With SYSCFG.MemEncryptionModEn the walker reads page tables through
    the encryption engine, not the bus: no walk is kept (walkmemo.py)."""
    m = make_machine("long64", cpu="epyc")
    cpu = m.cpus[0]
    assert cpu.walker.memo is not None
    cpu.set_mem_encryption(True)
    assert cpu.walker.memo is None
    cpu.set_mem_encryption(False)
    assert cpu.walker.memo is not None


@pytest.mark.parametrize("flush", sorted(FLUSHES))
def test_guest_store_to_its_pte_under_nested_paging(flush):
    """A nested-paging guest rewrites its own PTE (its store goes through its
    write caches: the table page, once watched, through the code-page cache)
    and flushes with INVLPG or MOV CR3 (its own ASID): it reads the new frame
    every time, its walks and their nested walks served by the memo between."""
    from svmharness import SvmRig, NestedTables
    from svmsim.svm.exits import ExitCode
    code = _flip_loop(flush, f"xor qword ptr [{PT:#x}], {P1 ^ P2:#x}")
    rig = SvmRig(code, intercepts=[ExitCode.HLT])
    m, cpu = rig.m, rig.cpu
    _map_4k(m)
    nt = NestedTables(m.bus)
    nt.identity(0, 0x2000000)
    rig.vmcb["NP_ENABLE"], rig.vmcb["N_CR3"], rig.vmcb["TLB_CONTROL"] = 1, nt.root, 1
    cpu.regs[1] = 40
    m.engine.hot_threshold = 3
    rig.run(max_insns=10 ** 6)
    assert rig.exitcode == ExitCode.HLT
    assert cpu.regs[8] == _expected(40)
    assert m.pt_watch.stats["entered"] > 0 and m.pt_watch.stats["dropped"] >= 39


def test_written_entry_is_released_and_its_page_is_plain_again():
    """A watched page-table page leaves the write caches (a code page with
    its entries marked); once its watched entry is written, nothing is kept
    on it and it is a plain page again: a CPU store to it goes through the
    write cache (W), and a later kept walk watches it anew."""
    from svmsim.cpu.tlb import W
    m = make_machine("long64")
    cpu = m.cpus[0]
    _map_4k(m)
    _walk_twice(m, cpu)
    page = PT >> 12
    assert page in m.code_pages and m.code_pages[page].map[0] == 1
    cpu.write(DS, PT, 8, P2 | 0x23)                  # the watched PTE: the kept walk goes
    assert page not in m.code_pages and m.pt_watch.stats["dropped"] == 1
    cpu.tlb.flush_all("test")
    cpu.write(DS, PT + 0x800, 8, 0)                  # data on the page: the write cache again
    assert cpu.tlb.fast[0][W].get(PT >> 12) == PT
    assert [r[1] for r in _walk_twice(m, cpu)] == [P2] * 3
    assert page in m.code_pages and m.code_pages[page].map[0] == 1


# ---------------------------------------------------------------- large pages
LROOT, LPDPT, LPD = TABLES, TABLES + 0x1000, TABLES + 0x2000


def _large_tables(m, rng):
    """PML4E 0 -> PDPT: PDPTE 0 -> a PD of 2 MiB pages with random bits,
    PDPTE 1 a 1 GiB page."""
    m.bus.write(LROOT, 8, LPDPT | P | RW | US | A)
    m.bus.write(LPDPT, 8, LPD | P | RW | US | A)
    m.bus.write(LPDPT + 8, 8, (1 << 30) | P | RW | US | A | PS)
    for i in range(8):
        m.bus.write(LPD + 8 * i, 8, ((8 + i) << 21) | PS | rng.choice(
            [P | RW | US | A | D, P | RW | US | A, P | RW | US, P | US | A | D, 0]))


def _large_lins(rng):
    return [(rng.randrange(8) << 21) | (rng.randrange(512) << 12) for _ in range(30)] + \
           [(1 << 30) | (rng.randrange(1 << 18) << 12) for _ in range(10)]


@pytest.mark.parametrize("seed", range(4))
def test_large_page_chunks_match_fresh_walks(seed):
    """Walks of many 4 KiB pages of a few 2 MiB and 1 GiB pages (a kept
    chunk serves them, paging.Chunk) interleaved with writes of the large
    entries by every writer: memo on and off give the same results, A/D
    bits and tables."""
    rng = random.Random(2000 + seed)
    ma, mb = _machines(seed)
    for m in (ma, mb):
        _large_tables(m, random.Random(seed))
    ports = [DmaPort(m, "edu") for m in (ma, mb)]
    lins = _large_lins(rng)
    entries = [LPD + 8 * i for i in range(8)] + [LPDPT, LPDPT + 8, LROOT]
    for step in range(3000):
        r = rng.random()
        if r < 0.8:
            lin, access = rng.choice(lins), rng.choice([0, PF_W, PF_I, PF_U, PF_U | PF_W])
            got = [_walk(m, m.cpus[step & 1], lin, access, LROOT, True) for m in (ma, mb)]
            assert got[0] == got[1], f"step {step}: {got}"
        elif r < 0.9:
            off = rng.choice(entries)
            old = ma.bus.read(off, 8)
            value = rng.choice([old ^ A, old ^ D, old ^ P, old ^ RW, old ^ US, old ^ NX, old ^ (1 << 21)])
            how = rng.choice(["bus", "dma", "cpu0", "cpu1"])
            for m, port in zip((ma, mb), ports):
                if how == "bus":
                    m.bus.write(off, 8, value)
                elif how == "dma":
                    port.write_bytes(off, value.to_bytes(8, "little"))
                else:
                    m.cpus[int(how[-1])].write(DS, off, 8, value)
        if rng.random() < 0.3:
            ma.pt_watch.commit()
    assert ma.bus.read_bytes(TABLES, 0x3000) == mb.bus.read_bytes(TABLES, 0x3000)
    assert ma.pt_watch.stats["entered"] > 4 and ma.pt_watch.stats["dropped"] > 2


def test_fresh_page_of_a_kept_large_page_reads_no_entry():
    """Once a walk of a 2 MiB page is kept (at the walk of a second page of
    it, as a walk of a page is at its second), a walk of another 4 KiB page of
    it reads no entry and gives that page's frame; a write to the PDE drops
    the chunk and its slices (the next walk reads the tables again)."""
    m = make_machine("long64")
    cpu = m.cpus[0]
    _large_tables(m, random.Random(0))
    m.bus.write(LPD, 8, (8 << 21) | PS | P | RW | US | A | D)
    reads = []
    read = cpu.walker.read_pte
    cpu.walker.read_pte = lambda spa, size: reads.append(spa) or read(spa, size)
    first = _walk(m, cpu, 0x5000, PF_W, LROOT, True)
    _walk(m, cpu, 0x6000, 0, LROOT, True)              # a second page of the chunk: kept
    m.pt_watch.commit()
    n = len(reads)
    got = [_walk(m, cpu, lin, PF_W, LROOT, True) for lin in (0x7000, 0x1FF000, 0x5000)]
    assert len(reads) == n and n > 0
    assert [g[1] for g in got] == [(8 << 21) + 0x7000, (8 << 21) + 0x1FF000, (8 << 21) + 0x5000]
    assert first == got[2]
    m.bus.write(LPD, 8, (9 << 21) | PS | P | RW | US | A | D)
    assert _walk(m, cpu, 0x7000, 0, LROOT, True)[1] == (9 << 21) + 0x7000
    assert len(reads) > n
