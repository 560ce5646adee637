"""Counted store loops (codegen ``Gen.bulk_store_loop``): a memset-style
self-loop -- a store of a loop-invariant register to an advancing pointer,
the pointer step, a CMP and a branch back -- runs many iterations at once as
bulk RAM writes.  Each case runs the same machine code three times: with the
interpreter, compiled with the bulk path off (``codegen.BULK_LOOPS``) and
compiled with it on; registers, RFLAGS (the last CMP's), RIP, the retired
count, memory, the exception taken (vector, error code, RIP, CR2) and what
a device saw must be identical.  The compiled runs enter the loop both
directly (the block compiled before its first execution: the flags are the
ones it was entered with) and after iterations run in the same call ("hot":
compiled after a few executions, then re-entered through the loop's own
backward branch)."""
import pytest

from cpuharness import CODE_ADDR, DATA_ADDR, PD, asm
from svmsim.cpu import codegen
from test_codegen import DATA_LEN, Runner, _regs

# Loop bodies: byte, word, dword and qword stores, the step before or after
# the store, both CMP orders, JNE (exact count) and JB/JA (while below).
SHAPES = [
    ["mov [rcx], sil", "add rcx, 1", "cmp rcx, rdx", "jne 1b"],
    ["add rcx, 1", "mov [rcx-1], sil", "cmp rcx, rdx", "jne 1b"],
    ["mov [rcx], sil", "inc rcx", "cmp rdx, rcx", "ja 1b"],
    ["mov [rcx], si", "add rcx, 2", "cmp rdx, rcx", "jne 1b"],
    ["mov [rcx], esi", "lea rcx, [rcx+4]", "cmp rcx, rdx", "jb 1b"],
    ["mov [rcx+8], rsi", "add rcx, 8", "cmp rdx, rcx", "ja 1b"],
    ["mov [rcx], rsi", "add rcx, 8", "cmp rcx, rdx", "jne 1b"],
]
VALUE = 0x1122334455667788
MODES = ("interp", "off", "on")


def _size(body):
    reg = next(i for i in body if i.startswith("mov")).split(", ")[1]
    return {"sil": 1, "si": 2, "esi": 4, "rsi": 8}[reg]


@pytest.fixture
def runs(monkeypatch):
    """run(code, regs, budget, setup, extra): the three results."""
    runners = {}

    def run(code, regs, budget, setup=None, extra=None, entry="direct", flags=0x202, bulk=True):
        out = {}
        for mode in MODES:
            if mode not in runners:
                runners[mode] = Runner("long64", monkeypatch)
            r = runners[mode]
            monkeypatch.setattr(codegen, "BULK_LOOPS", mode == "on")
            compiled = False if mode == "interp" else (True if entry == "direct" else "hot")
            got = r.run(code, regs, bytes(DATA_LEN), flags, budget, compiled, setup)
            got["retired"] = got.pop("n")
            if extra is not None:
                got["extra"] = extra(r.m, r.cpu)
            out[mode] = got
            assert _has_bulk(r.m) == (mode == "on" and bulk)
        for mode in ("off", "on"):
            for key, want in out["interp"].items():
                assert out[mode][key] == want, f"{mode}: {key} differs"
        return out["on"], runners["on"]
    return run


def _has_bulk(m):
    """Whether a compiled block of ``m`` has the bulk path in it."""
    return any(b.compiled is not None and "to_bytes" in getattr(b.compiled, "source", "")
               for b in m.engine.blocks.values())


def _loop(body):
    return asm("\n".join(["1:"] + body + ["hlt"]))


def _unmap_4m(m, cpu):
    """[4 MiB, 6 MiB) not present; the page below it zeroed and in the
    write cache (so the loop's bulk path can reach the boundary)."""
    m.bus.write(PD + 8 * 2, 8, 0)
    m.bus.write_bytes(0x3FE000, bytes(0x2000))
    cpu.tlb.flush_all("test")
    cpu.write(3, 0x3FF000, 1, 0)


def _tail(m, cpu):
    return bytes(m.bus.read_bytes(0x3FE000, 0x2000))


@pytest.mark.parametrize("entry", ["direct", "hot"])
@pytest.mark.parametrize("body", SHAPES)
def test_page_fault_after_bulk_iterations(runs, body, entry):
    """The store that reaches a not-present page faults (#PF, CR2 = the page
    start) after the iterations before it: the flags the fault leaves are
    the last CMP's (a bulk run's), not the ones the loop was entered with."""
    size = _size(body)
    off = 8 if "[rcx+8]" in body[0] else (-1 if "[rcx-1]" in body[1] else 0)
    start = 0x3FF120 - off - (size if off < 0 else 0)
    regs = _regs(rcx=start, rdx=start + 0x1000 * size, rsi=VALUE)
    got, _ = runs(_loop(body), regs, 10 ** 6, _unmap_4m, _tail, entry)
    assert got["faults"] and got["faults"][0][0] == 14 and got["faults"][0][3] == 0x400000
    assert got["retired"] > 4 * 0x100


@pytest.mark.parametrize("budget,entry", [(5, "direct")] + [
    (b, e) for b in (4 * 37 + 1, 4 * 0x200, 10 ** 5) for e in ("direct", "hot")])
@pytest.mark.parametrize("body", SHAPES[:1] + SHAPES[-1:])
def test_budget_stops_mid_loop(runs, body, budget, entry):
    """The instruction budget ends the run at the block end it ended at
    without the bulk path (the first with the budget used up).  (Five
    instructions are too few for the loop to get hot.)"""
    size = _size(body)
    regs = _regs(rcx=DATA_ADDR + 0x10, rdx=DATA_ADDR + 0x10 + 0x700 * size, rsi=VALUE)
    got, _ = runs(_loop(body), regs, budget, entry=entry)
    assert got["retired"] == min(budget + (-budget) % 4, 4 * 0x700 + 1)


def test_store_onto_the_loops_own_code_page(runs):
    """The pointer runs over the rest of the loop's code page (data bytes
    after the code: the code-page cache, no bulk) and then into the HLT
    after the loop, whose block is translated code: the store there ends
    the loop's block as self-modifying code does."""
    body = SHAPES[0]
    code = _loop(body)
    end = CODE_ADDR + 0x300
    regs = _regs(rcx=CODE_ADDR + len(code) + 0x10, rdx=end, rsi=0x90)
    extra = (lambda m, cpu: bytes(m.bus.read_bytes(CODE_ADDR, 0x1000)))
    got, _ = runs(code + bytes(0x20), regs, 10 ** 5, extra=extra)
    assert got["extra"][len(code) + 0x10:0x300] == b"\x90" * (0x300 - len(code) - 0x10)
    # Over its own HLT: a NOP now, then the zero bytes after it run (add [rax], al).
    regs = _regs(rcx=CODE_ADDR + len(code) - 1, rdx=CODE_ADDR + len(code) + 0x30, rsi=0x90, rax=DATA_ADDR)
    got, _ = runs(code + bytes(0x40), regs, 10 ** 4, extra=extra)
    assert got["extra"][len(code) - 1:len(code) + 0x30] == b"\x90" * 0x31


class _Recorder:
    """An MMIO device that keeps every access."""

    def __init__(self):
        self.log = []

    def mmio_read(self, off, size):
        self.log.append(("r", off, size))
        return 0

    def mmio_write(self, off, size, value):
        self.log.append(("w", off, size, value))


@pytest.mark.parametrize("body", SHAPES)
def test_mmio_between_ram_pages(runs, body):
    """RAM page, MMIO page, RAM page: the device sees each of its stores,
    in order, whatever runs the RAM pages."""
    dev = {}
    base = DATA_ADDR + 0x10000

    def setup(m, cpu):
        if base >> 12 not in m.bus._mmio_pages:
            dev[m] = _Recorder()
            m.bus.add_mmio(base + 0x1000, 0x1000, dev[m], "recorder")
        m.bus.write_bytes(base, bytes(0x1000))
        m.bus.write_bytes(base + 0x2000, bytes(0x1000))
        dev[m].log.clear()
        cpu.tlb.flush_all("test")

    size = _size(body)
    start = base + 0x1000 - 0x40 * size
    regs = _regs(rcx=start, rdx=start + 0x1080 * size, rsi=VALUE)
    extra = (lambda m, cpu: (list(dev[m].log), bytes(m.bus.read_bytes(base, 0x1000)),
                             bytes(m.bus.read_bytes(base + 0x2000, 0x1000))))
    got, _ = runs(_loop(body), regs, 10 ** 6, setup, extra, entry="hot")
    assert len(got["extra"][0]) == 0x1000 // size and not got["faults"]


def test_unassigned_addresses_after_ram(runs):
    """The loop runs off the end of RAM (16 MiB here): those stores go to
    the bus and are dropped."""
    body = SHAPES[0]
    regs = _regs(rcx=(16 << 20) - 0x300, rdx=(16 << 20) + 0x300, rsi=0x5A)
    extra = (lambda m, cpu: bytes(m.bus.read_bytes((16 << 20) - 0x1000, 0x1000)))
    got, _ = runs(_loop(body), regs, 10 ** 5, extra=extra, entry="hot")
    assert got["extra"][-0x300:] == b"\x5a" * 0x300 and got["retired"] == 4 * 0x600 + 1


@pytest.mark.parametrize("small", [False, True])
def test_nested_guest(monkeypatch, small):
    """In an SVM guest with nested paging, the loop runs from a mapped gPA
    range into one the nested tables lack: #VMEXIT(NPF) at the store that
    reaches it, with the guest state (RFLAGS the last CMP's), the retired
    count and memory as without the bulk path.  ``small``: the guest's own
    tables map its data with 4 KiB pages, Accessed and Dirty clear, so each
    page's first store is a two-dimensional walk setting them, and the
    tenth page maps a gPA the nested tables lack."""
    from test_svm_npt import npt_rig
    from svmsim.svm.exits import ExitCode
    start, end = (0x201010, 0x209400) if small else (0x5FE010, 0x600400)
    results = {}
    for mode in MODES:
        monkeypatch.setattr(codegen, "BULK_LOOPS", mode == "on")
        guest = "\n".join([f"mov rcx, {start:#x}", f"mov rdx, {end:#x}", "mov esi, 0xa5", "1:"]
                          + SHAPES[0] + ["hlt"])
        r = npt_rig(guest, identity_to=0x600000)
        if small:
            for i in range(512):
                r.m.bus.write(PT + 8 * i, 8, (DATA_ADDR + 0x1000 * i if i < 9 else 0x700000) | 3)
            r.m.bus.write(PD + 8, 8, PT | 3)
        r.m.engine.hot_threshold = 10 ** 9 if mode == "interp" else 3
        r.run(max_insns=10 ** 6)
        v = r.vmcb
        results[mode] = (r.exitcode, v["EXITINFO1"], v["EXITINFO2"], v["RIP"], v["RFLAGS"],
                         list(r.cpu.regs[1:4]), r.cpu.retired,
                         bytes(r.m.bus.read_bytes(start & ~0xFFF, (end - start) | 0xFFF)),
                         bytes(r.m.bus.read_bytes(PT, 0x1000)))
        if small:
            assert r.exitcode == ExitCode.NPF and v["EXITINFO2"] == 0x700000
        else:
            assert r.exitcode == ExitCode.NPF and v["EXITINFO2"] == 0x600000
        assert _has_bulk(r.m) == (mode == "on")
    assert results["on"] == results["off"] == results["interp"]


# ---------------------------------------------------------------- 4 KiB pages, one walk per page
PT = 0x16000                   # a page table for [2 MiB, 4 MiB) (DATA_ADDR's), after the harness's
PAGES = 8                      # pages of the data area the loops run over
MMIO_PAGE = 0xE0000000         # where the recorder sits (outside RAM)


def _small_pages(special=None):
    """A setup mapping [2 MiB, 4 MiB) with 4 KiB pages, Accessed and Dirty
    clear, so the loop's first store in each page walks and sets them;
    ``special`` maps data page i (PTE value) for faults, MMIO and aliases."""
    dev = {}

    def setup(m, cpu):
        if MMIO_PAGE >> 12 not in m.bus._mmio_pages:
            dev[m] = _Recorder()
            m.bus.add_mmio(MMIO_PAGE, 0x1000, dev[m], "recorder")
        dev[m].log.clear()
        m.bus.write_bytes(DATA_ADDR, bytes(PAGES * 0x1000))
        for i in range(512):
            m.bus.write(PT + 8 * i, 8, (DATA_ADDR + 0x1000 * i) | 3)
        for i, pte in (special or {}).items():
            m.bus.write(PT + 8 * i, 8, pte)
        m.bus.write(PD + 8, 8, PT | 3)
        cpu.tlb.flush_all("test")

    def extra(m, cpu):
        return (list(dev[m].log), bytes(m.bus.read_bytes(DATA_ADDR, PAGES * 0x1000)),
                bytes(m.bus.read_bytes(PT, 8 * PAGES)), m.bus.read(PD + 8, 8),
                bytes(m.bus.read_bytes(CODE_ADDR, 0x1000)))
    return setup, extra


def _over_pages(body, start=0x100, end=PAGES * 0x1000 - 0x100):
    return _regs(rcx=DATA_ADDR + start, rdx=DATA_ADDR + end, rsi=VALUE)


@pytest.mark.parametrize("entry", ["direct", "hot"])
@pytest.mark.parametrize("body", SHAPES[:2] + SHAPES[3:4] + SHAPES[5:])
def test_fresh_pages_walked_as_the_stores_would(runs, body, entry):
    """Eight pages the TLB does not hold: each page's first store walks the
    tables and sets its Accessed and Dirty bits; the bulk path does that
    walk for it and goes on to the next page within the same call."""
    setup, extra = _small_pages()
    got, runner = runs(_loop(body), _over_pages(body), 10 ** 6, setup, extra, entry)
    assert not got["faults"] and got["retired"] == 4 * ((PAGES * 0x1000 - 0x200) // _size(body)) + 1
    ptes = got["extra"][2]
    assert all(int.from_bytes(ptes[8 * i:8 * i + 8], "little") & 0x60 == 0x60 for i in range(PAGES))


@pytest.mark.parametrize("pte,vector", [(0, 14), ((DATA_ADDR + 0x5000) | 1, 14)])
@pytest.mark.parametrize("body", SHAPES[:1] + SHAPES[3:4] + SHAPES[-1:])
def test_fault_on_a_later_page(runs, body, pte, vector):
    """Page 5 not present, or read-only: #PF at its first store, after the
    pages before it went in bulk."""
    setup, extra = _small_pages({5: pte})
    got, _ = runs(_loop(body), _over_pages(body), 10 ** 6, setup, extra, "hot")
    assert got["faults"][0][0] == vector and got["faults"][0][3] == DATA_ADDR + 0x5000


@pytest.mark.parametrize("body", SHAPES[:1] + SHAPES[-1:])
def test_mmio_page_among_fresh_pages(runs, body):
    """Page 3 maps the recorder device: it sees each store, in order."""
    setup, extra = _small_pages({3: MMIO_PAGE | 3})
    got, _ = runs(_loop(body), _over_pages(body), 10 ** 6, setup, extra, "hot")
    assert len(got["extra"][0]) == 0x1000 // _size(body) and not got["faults"]


def test_alias_of_the_loops_own_code_page(runs):
    """Page 2 maps the loop's own code page: its first store there puts a
    NOP over the loop's REX prefix, which takes effect at the next
    instruction (self-modifying code: ``mov [rcx], dh`` from then on), and
    the run goes on from there alike."""
    setup, extra = _small_pages({2: CODE_ADDR | 3})
    regs = _over_pages(SHAPES[0], 0x1F00, 0x3100)
    regs[6] = 0x90
    got, _ = runs(_loop(SHAPES[0]) + b"\xf4" * 16, regs, 10 ** 5, setup, extra, "hot")
    assert got["extra"][4][0] == 0x90 and got["extra"][4][1] == 0x31 and not got["faults"]


@pytest.fixture
def calls(monkeypatch):
    """The budgets the compiled region functions were called with."""
    got = []
    real = codegen.compile_block

    def counting(blk, cpu, *a, **kw):
        fn = real(blk, cpu, *a, **kw)
        if fn is None:
            return None

        def counted(cpu, budget, pc=0):
            got.append(budget)
            return fn(cpu, budget, pc)
        counted.__dict__.update(fn.__dict__)
        return counted
    monkeypatch.setattr(codegen, "compile_block", counting)
    return got


def test_one_call_runs_every_fresh_page(runs, calls):
    """The loop's region is left neither at each new page (the bulk path
    walks it) nor after the store that walks it: one call runs all pages."""
    setup, extra = _small_pages()
    got, _ = runs(_loop(SHAPES[0]), _over_pages(SHAPES[0]), 10 ** 6, setup, extra)
    assert calls == [10 ** 6] * 2              # the bulk path off (one call too), then on


def test_a_store_that_walks_does_not_end_the_region(runs, calls):
    """One 8-byte store per page (no bulk path), each to a page the TLB
    does not hold: its slow path walks and gives a plain RAM page, so the
    region goes on as after any RAM store: one call, every A and D bit set
    where the interpreter sets them."""
    code = asm("1:\nmov [rcx], rsi\nadd rcx, 0x1000\ndec rdx\njnz 1b\nhlt")
    setup, extra = _small_pages()
    got, _ = runs(code, _regs(rcx=DATA_ADDR + 8, rdx=PAGES, rsi=VALUE), 10 ** 6, setup, extra, bulk=False)
    assert calls == [10 ** 6] * 2 and got["retired"] == 4 * PAGES + 1
    ptes = got["extra"][2]
    assert all(int.from_bytes(ptes[8 * i:8 * i + 8], "little") & 0x60 == 0x60 for i in range(PAGES))


def test_walk_that_rewrites_translated_code(runs):
    """The first store to page 3 walks the tables and sets its PTE's
    Accessed and Dirty bits -- bytes of translated code here (the PTE is
    the immediate of ``mov rax, imm64`` in a block translated from the page
    table's page; its high bytes are the previous PTE's, unused).  The walk
    changes code, so the store ends the loop's block after it, as without
    the bulk path (which walks that page for the store and must not then
    run the store from the write cache)."""
    pte3 = (DATA_ADDR + 0x3000) | 3
    base_setup, base_extra = _small_pages({3: pte3, 4: (DATA_ADDR + 0x4000) | 0xC3})
    stub = PT + 8 * 3 - 2                        # 48 B8 <PTE 3> C3: mov rax, PTE 3; ret

    def setup(m, cpu):
        base_setup(m, cpu)
        m.bus.write_bytes(stub, b"\x48\xb8")
        m.engine.translate(cpu, stub, (stub, cpu.mode_key))

    def extra(m, cpu):
        return base_extra(m, cpu) + ((stub, m.cpus[0].mode_key) in m.engine.blocks,)

    got, _ = runs(_loop(SHAPES[0]), _over_pages(SHAPES[0], 0x3100), 10 ** 6, setup, extra)
    assert got["extra"][-1] is False and not got["faults"]
    assert int.from_bytes(got["extra"][2][24:32], "little") == pte3 | 0x60
