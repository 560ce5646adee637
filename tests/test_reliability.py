"""Issue 13's findings, each reproduced through the path a user or a guest
takes: the command line (``python3 -m svmsim``), kernels booted by the
Multiboot loader, the PSP mailbox driven from guest code, VMRUN.

Kernels are built from raw machine code (svmsim.fuzz.kernels), so these
tests need no toolchain.
"""
import gc
import os
import pathlib
import struct
import subprocess
import sys

import pytest

from svmsim.fuzz import kernels as K
from svmsim.machine import Machine, STATUS_BUDGET

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 1 << 20


def svmsim(*args, timeout=60):
    """``python3 -m svmsim ARGS`` from the source tree: (status, stdout, stderr lines)."""
    p = subprocess.run([sys.executable, "-m", "svmsim", *args], cwd=ROOT, capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace").splitlines()


def svmsim_rss(*args, timeout=60):
    """As svmsim(), and the peak RSS of that process in MiB (it runs svmsim's
    own __main__, then reports its peak RSS, VmHWM)."""
    # VmHWM, not getrusage's maxrss: Linux carries ru_maxrss over fork and exec,
    # so the child would report the (large) pytest parent's peak.
    prog = ("import runpy, sys\n"
            "sys.argv = ['svmsim'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('svmsim', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print('maxrss', hwm, file=sys.stderr)\n"
            "sys.exit(code)\n")
    p = subprocess.run([sys.executable, "-c", prog, *args], cwd=ROOT, capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    lines = p.stderr.decode("utf-8", "replace").splitlines()
    rss = int(lines[-1].split()[1]) >> 10
    return p.returncode, p.stdout, lines[:-1], rss


def user_error(status, err):
    """A user mistake: status 2 and exactly one line on stderr."""
    return status == 2 and len(err) == 1 and err[0].startswith("svmsim")


@pytest.fixture
def flat(tmp_path):
    """A kernel that exits at once (status 1)."""
    path = tmp_path / "k.bin"
    path.write_bytes(K.kernel(K.Code().exit(0)))
    return path


def boot(image: bytes, mem="64M", **run):
    """Boot ``image`` through the Multiboot loader; (RunResult, COM1 bytes, machine)."""
    import io
    import tempfile
    m = Machine(mem_size=mem)
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(image)
        f.flush()
        m.load_kernel(f.name)
    m.uart.out = out = io.BytesIO()
    return m.run(**run), out.getvalue(), m


# -- finding 1: hostile ELF program-header offsets ----------------------------------------
def _elf(cls64: bool, phoff: int) -> bytes:
    """A Multiboot ELF (ELF32 i386 or ELF64 x86-64) whose e_phoff is ``phoff``."""
    mb = struct.pack("<III", K.MAGIC, 0, -K.MAGIC & 0xFFFFFFFF) + b"\xEB\xFE"
    if cls64:
        eh = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
            "<HHIQQQIHHHHHH", 2, 62, 1, 0x10000C, phoff, 0, 0, 64, 56, 1, 64, 0, 0)
        ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x100000, 0x100000, len(mb), len(mb), 0x1000)
    else:
        eh = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
            "<HHIIIIIHHHHHH", 2, 3, 1, 0x10000C, phoff, 0, 0, 52, 32, 1, 40, 0, 0)
        ph = struct.pack("<8I", 1, 0x1000, 0x100000, 0x100000, len(mb), len(mb), 5, 0x1000)
    head = eh + ph
    return head + bytes(0x1000 - len(head)) + mb


def run_main(capsys, *args):
    """svmsim's main() in this process (same code as ``python3 -m svmsim``,
    without the interpreter start): (status, stderr lines)."""
    from svmsim.cli import main
    try:
        status = main(list(args))
    except SystemExit as e:                 # argparse's own errors
        status = e.code
    return status, capsys.readouterr().err.splitlines()


def test_elf_program_header_offset_at_2_pow_63(tmp_path):
    """Finding 1: e_phoff >= 2^63 raised OverflowError in pyelftools."""
    path = tmp_path / "k.elf"
    path.write_bytes(_elf(True, 1 << 63))
    status, _, err = svmsim("run", str(path))
    assert user_error(status, err) and "program header" in err[0], err


@pytest.mark.parametrize("cls64,phoff", [(True, (1 << 64) - 1), (True, 1 << 40),
                                         (False, 0xFFFFFFF0), (True, 0x0FFF)])
def test_elf_program_header_offset_outside_the_file(tmp_path, capsys, cls64, phoff):
    path = tmp_path / "k.elf"
    path.write_bytes(_elf(cls64, phoff))
    status, err = run_main(capsys, "run", str(path))
    assert user_error(status, err), err


def test_elf_with_sane_offset_still_boots(tmp_path):
    path = tmp_path / "k.elf"
    path.write_bytes(_elf(True, 64))
    status, _, err = svmsim("run", str(path), "--max-insns", "1000", "-q")
    assert status == STATUS_BUDGET, err


# -- finding 2: mistakes on the command line ----------------------------------------------
@pytest.mark.parametrize("args", [["-m", "infG"], ["--serial-out", "/nonexistent-dir/out.txt"]])
def test_command_line_mistakes_through_python_m_svmsim(flat, args):
    """Finding 2, the real path: -m infG raised OverflowError; --serial-out
    into a missing directory FileNotFoundError."""
    status, _, err = svmsim("run", str(flat), *args)
    assert user_error(status, err), (args, status, err)


@pytest.mark.parametrize("args", [
    ["-m", "1e30G"], ["-m", "nan"], ["--memory=-5M"], ["-m", "2000G"], ["-m", "1M"],
    ["--timeout", "nan"], ["--timeout", "inf"], ["--timeout", "-1"], ["--timeout", "0"],
    ["--max-insns", "-1"], ["--smp", "0"], ["--smp", "65"],
    ["--trace-file", "/nonexistent-dir/t.jsonl"], ["--serial-in", "/nonexistent-dir/in.txt"],
    ["--module", "/nonexistent-dir/mod"], ["--cpu", "no-such-cpu"], ["--trace", "bogus"],
])
def test_command_line_mistakes_are_one_line_and_status_2(flat, capsys, args):
    status, err = run_main(capsys, "run", str(flat), *args)
    assert user_error(status, err), (args, status, err)


def test_internal_error_is_one_line_and_status_70(flat, capsys, monkeypatch):
    """A bug in svmsim outside the run loop: one line and status 70; the
    traceback only with --debug."""
    from svmsim import machine

    def broken(self, *a, **kw):
        raise KeyError("a bug")
    monkeypatch.setattr(machine.Machine, "load_kernel", broken)
    status, err = run_main(capsys, "run", str(flat))
    assert status == 70 and len(err) == 1 and "internal error: KeyError" in err[0], err
    status, err = run_main(capsys, "--debug", "run", str(flat))
    assert status == 70 and err[0].startswith("Traceback") and "internal error" in err[-1]


def test_ram_is_sparse_and_not_reserved(flat):
    """-m 32G and more run on a host with less memory: the mapping reserves
    nothing (MAP_NORESERVE) and costs only what the guest touches."""
    status, _, err, rss = svmsim_rss("run", str(flat), "-m", "512G", "-q")
    assert status == 1, err
    assert rss < 200


def test_huge_module_is_refused_without_being_read(flat, tmp_path):
    """A module larger than RAM (a sparse 3 GiB file) is refused from its size."""
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    status, _, err, rss = svmsim_rss("run", str(flat), "-m", "128M", "--module", str(big))
    assert user_error(status, err), err
    assert rss < 200
    status, _, err = svmsim("run", str(big), "-m", "128M")
    assert user_error(status, err) and "kernel is" in err[0], err


def test_module_beyond_4gib_is_a_load_error(flat, tmp_path):
    """Modules placed past 4 GiB used to fail in struct.pack (struct.error)."""
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    status, _, err = svmsim("run", str(flat), "-m", "8G", "--module", str(big), "--module", str(big))
    assert user_error(status, err), err


def _echo_kernel() -> bytes:
    """Prints the kernel command line and the first module's command line,
    byte for byte, on COM1 (Multiboot info: cmdline at +16, mods_addr at +24)."""
    c = K.Code()
    c.emit(0x8B, 0x73, 0x10).call("puts")                    # mov esi, [ebx+16]
    c.emit(0x8B, 0x73, 0x18, 0x8B, 0x76, 0x08).call("puts")  # mov esi, [ebx+24]; mov esi, [esi+8]
    c.exit(0).halt_forever()
    c.label("puts").emit(0x66, 0xBA, struct.pack("<H", K.COM1))   # mov dx, 0x3F8
    c.label("puts_loop").emit(0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE)  # lodsb; test al, al; jz +3; out
    c.emit(0xEB, 0xF8, 0xB0, 0x0A, 0xEE, 0xC3)              # jmp puts_loop; mov al, 10; out; ret
    return K.kernel(c)


def test_non_utf8_arguments_reach_the_guest_as_bytes(tmp_path):
    """Finding 2: a non-UTF-8 byte in --append, a module path or the kernel
    path raised UnicodeEncodeError.  QEMU hands argv bytes to the kernel
    unchanged; so does svmsim (one binary boots the same on both)."""
    kdir = os.fsencode(tmp_path)
    kpath = kdir + b"/k\xff.bin"
    mpath = kdir + b"/m\xfe"
    with open(kpath, "wb") as f:
        f.write(_echo_kernel())
    with open(mpath, "wb") as f:
        f.write(b"module")
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", kpath, b"--append", b"a\xffb",
                        b"--module", mpath + b" x\xfdy", b"-q"], cwd=ROOT, capture_output=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stdout == kpath + b" a\xffb\n" + mpath + b" x\xfdy\n"


# -- finding 3: an instruction that runs on from the last byte of RAM ----------------------
def _runs_off_ram(top: int) -> bytes:
    """Writes B8 (mov eax, imm32) at the last byte of RAM and jumps there: the
    immediate comes from beyond RAM.  The #UD at top + 4 (more of the same
    bytes) lands in a handler that exits with EAX + 1: status 1 if the
    missing bytes read as all ones, as the PC's open bus does."""
    c = K.Code()
    c.lidt("idtr").mov_store8(top - 1, 0xB8).mov_eax(top - 1).jmp_eax()
    c.label("handler").emit(0x40).exit_eax().halt_forever()     # inc eax; out 0xF4, eax
    c.idt("handler")
    return K.kernel(c)


@pytest.mark.parametrize("mem,top", [("128M", 128 * MIB), ("4G", 0xC0000000)])
def test_instruction_running_off_the_end_of_ram(tmp_path, mem, top):
    """Finding 3: this ended the run with status 70 (AssertionError in the
    engine).  RAM's end (-m 128M) and the PCI hole under 4 GiB (-m 4G)."""
    path = tmp_path / "k.bin"
    path.write_bytes(_runs_off_ram(top))
    status, _, err = svmsim("run", str(path), "-m", mem, "--max-insns", "10000")
    assert status == 1, err


# -- finding 4: every CPU halted, the timer's interrupt blocked forever ---------------------
def _blocked_timer_kernel() -> bytes:
    """Programs the 8259s (vectors 0x20/0x28, only IRQ0 unmasked) and the PIT
    (10 ms periodic), then sti; hlt in a loop.  The IRQ0 handler returns
    without EOI, so IRQ0 stays in service and is never delivered again."""
    c = K.Code()
    c.lidt("idtr")
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                        (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01),
                        (0x21, 0xFE), (0xA1, 0xFF), (0x43, 0x34), (0x40, 0x9B), (0x40, 0x2E)):
        c.out8(port, value)
    c.emit(0xFB).label("idle").emit(0xF4).jmp("idle")          # sti; 1: hlt; jmp 1b
    c.label("handler").emit(0xCF)                                # iret, no EOI
    c.idt("handler")
    return K.kernel(c)


def test_budget_ends_a_run_whose_interrupts_can_never_come(tmp_path):
    """Finding 4: --max-insns never ended this run (virtual time jumped from
    tick to tick, no instruction retired).  The budget counts the halted
    time in which timers fire and wake nothing."""
    path = tmp_path / "k.bin"
    path.write_bytes(_blocked_timer_kernel())
    status, _, err = svmsim("run", str(path), "--max-insns", "100000")
    assert status == STATUS_BUDGET, err
    assert "halted" in err[0]


def test_virtual_time_bound_ends_the_same_run():
    r, _, m = boot(_blocked_timer_kernel(), max_virtual_ns=50_000_000)
    assert r.status == STATUS_BUDGET and "virtual time" in r.reason
    assert m.clock.now_ns >= 50_000_000


def test_halted_guest_woken_by_its_timer_is_not_charged():
    """A guest that halts between ticks and handles each one (EOI) retires
    instructions at every wake-up: its idle time is not charged."""
    c = K.Code()
    c.lidt("idtr")
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                        (0x21, 0xFE), (0x43, 0x34), (0x40, 0x9B), (0x40, 0x2E)):
        c.out8(port, value)
    c.emit(0xFB).label("idle").emit(0xF4).jmp("idle")
    c.label("handler").out8(0x20, 0x20).emit(0xCF)               # EOI; iret
    c.idt("handler")
    r, _, _ = boot(K.kernel(c), max_insns=100_000, max_virtual_ns=1_000_000_000)
    assert "virtual time" in r.reason and r.instructions < 2000     # 100 ticks, 1 s


# -- finding 7: memory ---------------------------------------------------------------------------
def test_untouched_bss_costs_nothing(tmp_path):
    """Finding 7: a kernel with 1.5 GiB of .bss cost 1.6 GB RSS (the loader
    wrote zeros over anonymous memory that is already zero)."""
    path = tmp_path / "k.bin"
    path.write_bytes(K.kernel(K.Code().exit(0), bss=1536 * MIB))
    status, _, err, rss = svmsim_rss("run", str(path), "-m", "2G", "-q")
    assert status == 1, err
    assert rss < 200


def test_bss_is_zero_even_over_dirty_ram(tmp_path):
    """Loading over RAM that was written before still gives a zero .bss."""
    path = tmp_path / "k.bin"
    path.write_bytes(K.kernel(K.Code().exit(0), bss=2 * MIB))
    m = Machine(mem_size="32M")
    m.bus.write_bytes(0x100000, b"\x55" * (4 * MIB))
    info = m.load_kernel(str(path))
    start = info.load_end - 2 * MIB
    assert m.bus.read_bytes(start, 2 * MIB) == bytes(2 * MIB)
    assert m.bus.read_bytes(0x100000 + 4 * MIB - 16, 16) == b"\x55" * 16   # beyond: untouched


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def test_dropped_machines_free_their_ram():
    """Finding 7: Machines sat in reference cycles, so machines created in a
    loop kept their RAM until the cyclic GC ran.  With the GC off, each
    dropped machine's 64 MiB of touched RAM must go at once."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        before = _rss_mib()
        for _ in range(12):
            m = Machine(mem_size="128M")
            m.bus.ram.buf[16 * MIB:80 * MIB] = b"\x55" * (64 * MIB)      # the guest's RAM, touched
            m.bus.write_bytes(0x100000, b"\xEB\xFE")
            m.cpus[0].rip = 0x100000
            m.run(max_insns=3000)
            del m
        grown = _rss_mib() - before
    finally:
        if was:
            gc.enable()
    assert grown < 150, f"RSS grew by {grown} MiB over 12 machines of 64 MiB each"


def test_closed_machine_frees_ram_and_refuses_to_run():
    from svmsim.errors import SvmsimError
    with Machine(mem_size="64M") as m:
        m.bus.write_bytes(0, b"\x55" * (32 * MIB))
    assert m.closed
    with pytest.raises(SvmsimError):
        m.run(max_insns=10)


# -- found by the insns campaign: a fault loop that retires nothing ------------------------------
def _fault_loop_kernel(dr7: bool = False) -> bytes:
    """ESP in the PCI hole (pushes go nowhere), then UD2; every IDT gate leads
    to a handler that is UD2 too: each #UD is delivered and faults again at
    the handler's first instruction, and no instruction ever retires (the
    CPU loops as hardware would).  ``dr7``: a breakpoint enabled in DR7
    first (never hit), so the engine runs one instruction at a time."""
    c = K.Code()
    c.lidt("idtr")
    if dr7:
        c.mov_eax(0x1).emit(0x0F, 0x23, 0xF8)                  # mov dr7, eax: L0 (DR0 = 0).emit(0xBC, struct.pack("<I", 0xF0000000)).emit(0x0F, 0x0B)   # mov esp, imm; ud2
    c.label("handler").emit(0x0F, 0x0B)
    c.idt("handler")
    return K.kernel(c)


def test_timeout_ends_a_fault_loop_that_retires_nothing(tmp_path):
    """The insns campaign's finding: the engine's quantum counted only retired
    instructions, so this loop never left it: neither --timeout nor
    --max-insns could end the run.  Each delivered exception now takes a
    step of the quantum and of the budget."""
    path = tmp_path / "k.bin"
    path.write_bytes(_fault_loop_kernel())
    status, _, err = svmsim("run", str(path), "--timeout", "1", "-q", timeout=120)
    assert status == 8, err
    status, _, err = svmsim("run", str(path), "--max-insns", "2000", timeout=120)
    assert status == STATUS_BUDGET and "exceptions delivered" in err[0], err
    assert "times in a row]" in err[-1] and len(err) < 20, err      # the repeated #UD, once


@pytest.mark.parametrize("dr7", [False, True])
def test_fault_loop_counts_against_the_budget_from_python(dr7):
    """Also when the engine single-steps (a DR7 breakpoint is enabled: the
    vmcb campaign's guests with random DR7 ran into this)."""
    r, _, _ = boot(_fault_loop_kernel(dr7), max_insns=1500, timeout=60)
    assert r.status == STATUS_BUDGET and r.instructions < 10, r.reason


def test_kernel_without_header_is_refused_from_its_head(tmp_path):
    """A sparse 3 GiB file that fits RAM but has no Multiboot header is refused after
    reading its first 8 KiB (found by the cli campaign: it was read whole, 30 s)."""
    big = tmp_path / "huge"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    status, _, err, rss = svmsim_rss("run", str(big), "-m", "3.5G")
    assert user_error(status, err) and "no Multiboot header" in err[0], err
    assert rss < 200
