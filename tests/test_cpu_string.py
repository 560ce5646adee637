"""String instructions (svmsim/cpu/ops/string.py): REP semantics, the bulk
fast path, overlap, address sizes, MMIO, bounded work and restartable
faults (APM vol 3 "MOVS", "REP"; vol 1, 3.10.3)."""
from cpuharness import run_code, make_machine, asm, DATA_ADDR, PD
from svmsim.cpu.exceptions import CpuException, PF
from svmsim.cpu.flags import ZF, CF
from svmsim.cpu.segments import FS
from svmsim.cpu.ops import string as string_ops

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
SRC, DST = DATA_ADDR, DATA_ADDR + 0x10000


def run(src, mode="long64", **kw):
    """Run assembled code; it must reach its final HLT without faulting."""
    code = asm(src, 64 if mode == "long64" else 32 if mode == "prot32" else 16)
    r = run_code(code, mode=mode, **kw)
    end = (0x7C00 if mode == "real" else 0x100000) + len(code)
    ok = (r.exception is None and r.cpu.halted) or (r.exception and r.exception[0] == 6 and r.exception[2] == end)
    assert ok, f"stopped early: {r.exception} at rip={r.cpu.rip:#x}"
    return r


def mem(r, addr, n):
    return r.machine.bus.read_bytes(addr, n)


# ---------------------------------------------------------------- bulk copies
def test_rep_movsb_across_pages():
    data = bytes((i * 7 + 3) & 0xFF for i in range(10000))
    r = run("rep movsb", regs={"rsi": SRC + 0x123, "rdi": DST + 0x777, "rcx": len(data)},
            mem={SRC + 0x123: data})
    assert mem(r, DST + 0x777, len(data)) == data
    assert r.regs[RCX] == 0
    assert r.regs[RSI] == SRC + 0x123 + len(data) and r.regs[RDI] == DST + 0x777 + len(data)


def test_rep_stosq_and_stosb():
    r = run("rep stosq\nmov eax, 0x5a\nmov ecx, 3\nrep stosb",
            regs={"rdi": DST + 4, "rcx": 0x900, "rax": 0x1122334455667788})
    q = mem(r, DST + 4, 0x900 * 8)
    assert q == (0x1122334455667788).to_bytes(8, "little") * 0x900
    assert mem(r, DST + 4 + 0x4800, 4) == b"\x5a\x5a\x5a\x00"
    assert r.regs[RDI] == DST + 4 + 0x4803


def test_forward_overlap_replicates_like_element_copies():
    """MOVSB with rDI = rSI + 1 smears the first byte (element semantics)."""
    r = run("rep movsb", regs={"rsi": SRC, "rdi": SRC + 1, "rcx": 300},
            mem={SRC: bytes(range(1, 256)) + bytes(100)})
    assert mem(r, SRC, 301) == b"\x01" * 301


def test_forward_overlap_by_three_bytes_keeps_period():
    pattern = b"abc"
    r = run("rep movsb", regs={"rsi": SRC, "rdi": SRC + 3, "rcx": 5000},
            mem={SRC: pattern + bytes(6000)})
    assert mem(r, SRC, 5003) == (pattern * 1668)[:5003]


def test_movsq_overlap_smaller_than_element():
    """Each qword is read whole before it is written: a 4-byte overlap moves
    qwords, not a repeating 4-byte pattern."""
    src = bytes(range(64))
    r = run("rep movsq", regs={"rsi": SRC, "rdi": SRC + 4, "rcx": 4}, mem={SRC: src})
    expect = bytearray(src)
    for k in range(4):
        expect[4 + 8 * k:12 + 8 * k] = expect[8 * k:8 * k + 8]
    assert mem(r, SRC, 64) == bytes(expect)


def test_backward_rep_movsb_is_a_memmove():
    data = bytes(range(200))
    r = run("std\nrep movsb\ncld", regs={"rsi": SRC + 199, "rdi": SRC + 209, "rcx": 200},
            mem={SRC: data})
    assert mem(r, SRC + 10, 200) == data
    assert r.regs[RSI] == SRC - 1 and r.regs[RDI] == SRC + 9


def test_backward_overlap_replicates_like_element_copies():
    """DF=1 with rDI one below rSI: each element read was just written."""
    data = bytes(range(100, 160))
    r = run("std\nrep movsb\ncld", regs={"rsi": SRC + 50, "rdi": SRC + 49, "rcx": 50},
            mem={SRC: data})
    assert mem(r, SRC, 51) == bytes([data[50]]) * 51


def test_backward_bulk_copy_across_pages():
    data = bytes((i * 13) & 0xFF for i in range(9000))
    r = run("std\nrep movsd\ncld", regs={"rsi": SRC + 0x101 + 8996, "rdi": DST + 0x7FE + 8996, "rcx": 2250},
            mem={SRC + 0x101: data})
    assert mem(r, DST + 0x7FE, 9000) == data
    assert r.regs[RSI] == SRC + 0x101 - 4 and r.regs[RDI] == DST + 0x7FE - 4


def test_backward_stosw():
    r = run("std\nrep stosw\ncld", regs={"rdi": DST + 10, "rcx": 3, "rax": 0xBEEF})
    assert mem(r, DST + 6, 6) == b"\xef\xbe" * 3
    assert r.regs[RDI] == DST + 4


# ---------------------------------------------------------------- compares and scans
def test_repne_scasb_finds_the_terminator():
    text = b"hello, world\x00junk"
    r = run("xor eax, eax\nmov rcx, -1\nrepne scasb", regs={"rdi": SRC}, mem={SRC: text})
    assert r.regs[RDI] == SRC + 13
    assert r.regs[RCX] == (1 << 64) - 1 - 13
    assert r.rflags & ZF


def test_repe_cmpsb_stops_at_the_first_difference():
    r = run("repe cmpsb", regs={"rsi": SRC, "rdi": DST, "rcx": 10},
            mem={SRC: b"abcdefgh", DST: b"abcdXfgh"})
    assert r.regs[RCX] == 5 and r.regs[RSI] == SRC + 5 and r.regs[RDI] == DST + 5
    assert not r.rflags & ZF and not r.rflags & CF  # 'e' (0x65) - 'X' (0x58): no borrow


def test_repe_cmpsb_flags_of_last_compare():
    r = run("repe cmpsb", regs={"rsi": SRC, "rdi": DST, "rcx": 10},
            mem={SRC: b"abcdA", DST: b"abcdZ"})
    assert r.regs[RCX] == 5
    assert not r.rflags & ZF and r.rflags & CF      # 'A' - 'Z' borrows


def test_lodsd_zero_extends_rax():
    r = run("lodsd\nlodsw", regs={"rsi": SRC, "rax": (1 << 64) - 1}, mem={SRC: bytes.fromhex("7856341221436587")})
    assert r.regs[RAX] == 0x12344321 and r.regs[RSI] == SRC + 6


def test_rep_with_zero_count_does_nothing():
    r = run("rep movsb\nrepe cmpsb", regs={"rsi": SRC, "rdi": DST, "rcx": 0}, rflags=0x2 | CF)
    assert r.regs[RSI] == SRC and r.regs[RDI] == DST and r.rflags & CF


# ---------------------------------------------------------------- address size and segments
def test_addr32_uses_esi_edi_ecx_and_zero_extends():
    r = run("addr32 rep movsb",
            regs={"rsi": (0xAB << 32) | SRC, "rdi": (0xCD << 32) | DST, "rcx": (0xEF << 32) | 5},
            mem={SRC: b"12345"})
    assert mem(r, DST, 5) == b"12345"
    assert (r.regs[RSI], r.regs[RDI], r.regs[RCX]) == (SRC + 5, DST + 5, 0)


def test_addr16_wraps_di_and_keeps_upper_bits():
    r = run("addr16 rep stosb", mode="prot32", regs={"rdi": 0x1230FFFE, "rcx": 0x55550004, "rax": 0x77})
    assert mem(r, 0xFFFE, 2) == b"\x77\x77" and mem(r, 0, 2) == b"\x77\x77"
    assert r.regs[RDI] == 0x12300002 and r.regs[RCX] == 0x55550000


def test_fs_override_on_source():
    def setup(m, cpu):
        cpu.segs[FS].base = 0x1000
        cpu.update_mode()
    r = run("fs movsd", regs={"rsi": SRC, "rdi": DST}, mem={SRC + 0x1000: b"FSFS", SRC: b"DSDS"}, setup=setup)
    assert mem(r, DST, 4) == b"FSFS"


# ---------------------------------------------------------------- MMIO
class Recorder:
    def __init__(self):
        self.log = []
        self.next = 0

    def mmio_read(self, off, size):
        self.log.append(("r", off, size))
        self.next += 1
        return self.next

    def mmio_write(self, off, size, value):
        self.log.append(("w", off, size, value))


MMIO = 0xE0000000


def _with_mmio(dev):
    def setup(m, cpu):
        m.bus.add_mmio(MMIO, 0x1000, dev, "recorder")
    return setup


def test_rep_stosw_to_mmio_is_element_by_element():
    dev = Recorder()
    run("rep stosw", regs={"rdi": MMIO + 0x10, "rcx": 3, "rax": 0xABCD}, setup=_with_mmio(dev))
    assert dev.log == [("w", 0x10, 2, 0xABCD), ("w", 0x12, 2, 0xABCD), ("w", 0x14, 2, 0xABCD)]


def test_rep_movsd_from_mmio_reads_each_element():
    dev = Recorder()
    r = run("rep movsd", regs={"rsi": MMIO, "rdi": DST, "rcx": 4}, setup=_with_mmio(dev))
    assert [e[:3] for e in dev.log] == [("r", 0, 4), ("r", 4, 4), ("r", 8, 4), ("r", 12, 4)]
    assert mem(r, DST, 16) == b"".join(i.to_bytes(4, "little") for i in (1, 2, 3, 4))


# ---------------------------------------------------------------- bounded work, faults, restart
def _machine_with(code_src):
    m = make_machine("long64")
    cpu = m.cpus[0]
    code = asm(code_src)
    m.bus.write_bytes(0x100000, code)
    cpu.rip = 0x100000
    return m, cpu, code


def _exec_once(m, cpu):
    """Execute the instruction at RIP once (no exception delivery)."""
    blk = m.engine.translate(cpu, cpu.rip, ("t", cpu.rip), max_len=1)
    ins = blk.insns[0]
    ins.fn(cpu, ins)
    if not ins.ends_block:
        cpu.rip = ins.next_ip
    return ins


def test_long_rep_is_split_into_bounded_executions():
    m, cpu, code = _machine_with("rep stosb")
    cpu.regs[RDI], cpu.regs[RCX], cpu.regs[RAX] = DST, 200_000, 0x11
    ins = _exec_once(m, cpu)
    assert cpu.rip == 0x100000 and cpu.regs[RCX] == 200_000 - string_ops.MAX_FAST
    runs = 1
    while cpu.rip == 0x100000:
        _exec_once(m, cpu)
        runs += 1
    assert runs == 4 and cpu.rip == ins.next_ip and cpu.regs[RCX] == 0
    assert m.bus.read_bytes(DST, 200_000) == b"\x11" * 200_000


def test_slow_path_is_bounded_too():
    m, cpu, code = _machine_with("rep lodsb")      # no bulk path for LODS
    cpu.regs[RSI], cpu.regs[RCX] = SRC, string_ops.MAX_SLOW + 5
    _exec_once(m, cpu)
    assert cpu.rip == 0x100000 and cpu.regs[RCX] == 5
    _exec_once(m, cpu)
    assert cpu.rip == 0x100000 + len(code) and cpu.regs[RCX] == 0


def _unmap_2m(m, cpu, addr):
    """Make the 2 MiB page at ``addr`` not present (harness identity map)."""
    m.bus.write(PD + 8 * (addr >> 21), 8, 0)
    cpu.tlb.flush_all("test")


def test_fault_mid_rep_movsb_is_precise_and_restartable():
    hole = 0x400000
    m, cpu, code = _machine_with("rep movsb")
    m.bus.write_bytes(SRC, bytes(range(64)))
    _unmap_2m(m, cpu, hole)
    cpu.regs[RSI], cpu.regs[RDI], cpu.regs[RCX] = SRC, hole - 16, 64
    try:
        _exec_once(m, cpu)
        raise AssertionError("no #PF")
    except CpuException as e:
        assert e.vector == PF and e.cr2 == hole
    # 16 iterations completed; RIP still at the instruction
    assert (cpu.regs[RSI], cpu.regs[RDI], cpu.regs[RCX]) == (SRC + 16, hole, 48)
    assert cpu.rip == 0x100000
    assert m.bus.read_bytes(hole - 16, 16) == bytes(range(16))
    # the "#PF handler" maps the page; the instruction restarts and finishes
    m.bus.write(PD + 8 * (hole >> 21), 8, hole | 0x83)
    cpu.tlb.flush_all("test")
    while cpu.rip == 0x100000:
        _exec_once(m, cpu)
    assert cpu.regs[RCX] == 0 and m.bus.read_bytes(hole - 16, 64) == bytes(range(64))


def test_fault_mid_backward_stos_reports_completed_iterations():
    hole = 0x400000
    r = run_code(asm("std\nrep stosd"), regs={"rdi": hole + 8, "rcx": 10, "rax": 0x01020304},
                 setup=lambda m, cpu: _unmap_2m(m, cpu, hole))
    vec, _, rip, cr2 = r.exception
    assert vec == PF and rip == 0x100001                     # at REP STOSD, after STD
    assert r.regs[RDI] == hole + 8 and r.regs[RCX] == 10    # the first element already faults
    assert cr2 == hole + 8


def test_fault_in_the_source_page():
    hole = 0x600000
    r = run_code(asm("rep movsq"), regs={"rsi": hole - 24, "rdi": DST, "rcx": 8},
                 mem={hole - 24: b"A" * 24}, setup=lambda m, cpu: _unmap_2m(m, cpu, hole))
    assert r.exception[0] == PF and r.exception[3] == hole
    assert r.regs[RCX] == 5 and r.regs[RSI] == hole and r.regs[RDI] == DST + 24
    assert mem(r, DST, 32) == b"A" * 24 + bytes(8)


# ---------------------------------------------------------------- self-modifying code
def test_rep_movsb_over_translated_code_invalidates_it():
    r = run("""
        call target
        mov edx, eax
        lea rsi, [rip + newcode]
        lea rdi, [rip + target]
        mov ecx, 6
        rep movsb
        call target
        jmp done
    target:
        mov eax, 1
        ret
    newcode:
        mov eax, 2
        ret
    done:
    """)
    assert r.regs[RDX] == 1 and r.regs[RAX] == 2
