"""The gdb stub (issue 15, item 1), driven by the real gdb (Debian's package)
in batch mode, and by a raw remote-protocol client for what batch mode
cannot do (Ctrl-C).

Each session starts ``svmsim run KERNEL --gdb tcp::0 -S`` (a free port,
printed on stderr), runs ``gdb -batch`` with a list of commands and checks
gdb's output, svmsim's output and svmsim's exit status.
"""
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import guestbuild as gb

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed (apt-get install gdb)")


class Svmsim:
    """svmsim with a gdb server, started and waiting (-S) on a free port."""

    def __init__(self, kernel, *args, wait=True, append=""):
        cmd = [sys.executable, "-m", "svmsim", "run", str(kernel), "--gdb", "tcp::0", *args]
        if wait:
            cmd.append("-S")
        if append:
            cmd += ["--append", append]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        m = re.search(r"gdb server on tcp:[\d.]+:(\d+)", line)
        assert m, line
        self.port = int(m[1])

    def finish(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()


def gdb(kernel, port, *commands, timeout=90):
    args = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", "set architecture i386:x86-64", "-ex", f"file {kernel}", "-ex", f"target remote :{port}"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def target():
    return gb.build_guest("debug_target")


def session(kernel, *commands, append="", args=()):
    sv = Svmsim(kernel, *args, append=append)
    out = gdb(kernel, sv.port, *commands)
    status, sout, serr = sv.finish()
    return out, status, sout, serr


def test_registers_breakpoints_step_and_exit(target):
    out, status, sout, serr = session(
        target,
        "info registers rip cs eflags cr0 efer asid svm_guest",
        "break bump", "continue", "p $rdi", "continue", "p $rdi",
        "x/2i $pc", "stepi", "p/x $pc", "info threads",
        "set $ymm0.v4_int64 = {1, 2, 3, 4}", "p $ymm0.v4_int64", "p/x $ymm0h", "delete", "continue")
    # The first instruction: Multiboot's 32-bit entry as QEMU -kernel leaves it.
    assert re.search(r"rip\s+0x10000c\s+0x10000c <_start>", out), out
    assert re.search(r"cr0\s+0x11\b", out) and re.search(r"efer\s+0x0\b", out)
    assert re.search(r"asid\s+0x0", out) and re.search(r"svm_guest\s+0x0", out)
    assert re.search(r"Breakpoint 1, 0x[0-9a-f]+ in bump", out)
    assert re.findall(r"^\$\d+ = (\d+)$", out, re.M)[:2] == ["1", "2"]
    assert "svmsim: cpu0 stopped (breakpoint at" in out and "in host, 64-bit mode, CPL 0" in out
    assert re.search(r"=> 0x[0-9a-f]+ <bump>:\s+mov\s+0x[0-9a-f]+\(%rip\),%rax", out)
    bp = int(re.search(r"Breakpoint 1, (0x[0-9a-f]+) in bump", out)[1], 16)
    assert int(re.search(r"\$3 = (0x[0-9a-f]+)", out)[1], 16) == bp + 7    # one instruction (7 bytes) on
    assert re.search(r"Thread 1 \(cpu0: host, 64-bit mode, CPL 0\)", out)
    assert "= {1, 2, 3, 4}" in out and "0x40000000000000003" in out     # YMM0's upper half: 4:3
    assert "exited with code 01" in out
    assert status == gb.STATUS_PASS and "counter=15 total=35" in sout


@pytest.mark.slow
def test_watchpoints_report_old_and_new_values(target):
    out, status, sout, _ = session(
        target,
        "watch *(long *)&dbg_counter", "continue", "continue", "continue", "delete",
        "awatch *(char *)((char *)&dbg_buffer + 63)", "continue", "x/2i $pc - 2", "delete", "continue")
    assert re.findall(r"Old value = (\d+)\nNew value = (\d+)", out)[:3] == [("0", "1"), ("1", "3"), ("3", "6")]
    assert "New value = 90 'Z'" in out                 # after the whole REP STOSB
    assert re.search(r"rep stos %al,%es:\(%rdi\)\n=> 0x[0-9a-f]+ <fill\+\d+>:\s+ret", out), out
    assert status == gb.STATUS_PASS


@pytest.mark.slow
def test_register_and_memory_writes_change_the_guest(target):
    out, status, sout, _ = session(
        target, "break bump", "continue", "set $rdi = 10", "delete",
        "set {long}&dbg_counter = 100", "continue")
    # bump(10) instead of bump(1), from 100: 110, 112, 115, 119, 124.
    assert "counter=124 total=580" in sout and status == gb.STATUS_FAIL


def test_svm_scope_vmcb_exits_and_walk():
    k = gb.build_guest("svm_basic")
    out, status, sout, _ = session(
        k, "monitor scope guest asid 1", "break guest_main", "continue",
        "p $asid", "p $svm_guest", "info threads", "monitor vmcb", "monitor walk $rip",
        "monitor scope asid 2", "break gx_putc", "delete 1",
        "monitor stop-on vmexit CPUID", "continue", "x/2i $pc - 3", "monitor exits",
        "monitor walk guest gx_cpuid", "monitor stop-on vmexit off", "monitor scope any", "delete",
        "continue")
    assert "breakpoints and watchpoints stop: guest asid 1" in out
    assert "svmsim: cpu0 stopped (breakpoint at" in out and "in guest ASID 1, VMCB 0x" in out
    assert re.findall(r"^\$\d+ = (\d+)$", out, re.M)[:2] == ["1", "1"]
    assert re.search(r"Thread 1 \(cpu0: guest ASID 1, VMCB 0x[0-9a-f]+, 64-bit mode, CPL 0\)", out)
    assert re.search(r"VMCB at 0x[0-9a-f]+ \(running\):", out) and re.search(r"GUEST_ASID\s+0x1", out)
    assert "guest (ASID 1) linear 0x" in out and "PML4E" in out
    # gx_putc runs in ASID 1 only: a breakpoint scoped to ASID 2 never stops.
    assert "(#VMEXIT CPUID) in host" in out
    assert re.search(r"vmrun\s*\n=> 0x[0-9a-f]+ <svm_run_guest\+\d+>", out), out
    assert re.search(r"0x072 CPUID: 1\b", out) and "last exits (oldest first):" in out
    assert status == gb.STATUS_PASS and "svm_basic: PASS" in sout


def test_two_dimensional_walk_in_gdb():
    k = gb.build_guest("svm_npt")
    out, status, _, _ = session(k, "monitor scope guest", "break gn_read", "continue",
                                "monitor walk $rsi", "monitor walk gpa $rsi", "delete", "continue")
    assert re.search(r"guest \(ASID \d+\) linear 0x[0-9a-f]+: 4-level paging, CR3=0x[0-9a-f]+, "
                     r"nested paging N_CR3=0x[0-9a-f]+", out), out
    assert re.search(r"guest PML4E\s+at gPA 0x", out) and re.search(r"\n\s+nested PML4E\s+at 0x", out)
    assert "final gPA" in out and "=> SPA" in out
    assert status == gb.STATUS_PASS


@pytest.mark.slow
def test_physical_memory_mode(target):
    out, status, _, _ = session(
        target, "x/2xw 0x100000", "maint packet Qqemu.PhyMemMode:1", "x/2xw 0x100000",
        "maint packet qqemu.PhyMemMode", "maint packet Qqemu.PhyMemMode:0", "monitor physmem",
        "x/xb 0xfee00000", "continue")
    words = re.findall(r"0x100000[^:]*:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", out)
    assert len(words) == 2 and words[0] == words[1]            # paging off: virtual = physical
    assert words[0][0] == "0x1badb002"                         # the Multiboot header's magic
    assert 'received: "1"' in out and "gdb memory accesses are virtual" in out
    assert "Cannot access memory at address 0xfee00000" in out  # MMIO: not read by the debugger
    assert status == gb.STATUS_PASS


@pytest.mark.slow
def test_smp_threads():
    k = gb.build_guest("smp")
    out, status, _, _ = session(k, "break rt_ap_main", "continue", "info threads", "p $_thread", "delete",
                                "continue", args=("--smp", "2"))
    assert re.search(r"Thread 2 \(cpu1: host, 64-bit mode, CPL 0\)", out), out
    assert "svmsim: cpu1 stopped (breakpoint at" in out and "$1 = 2" in out
    assert status == gb.STATUS_PASS


def test_ctrl_c_and_kill_with_a_raw_client():
    """Ctrl-C (a bare 0x03) stops a running machine with SIGINT; k ends svmsim."""
    k = gb.build_guest("loop")
    sv = Svmsim(k, append="iters=100000000")
    s = socket.create_connection(("127.0.0.1", sv.port))
    rsp = RawRsp(s)
    assert rsp.request("?").startswith("T05thread:1;")
    rsp.send("c")
    time.sleep(1.0)
    s.sendall(b"\x03")
    reply = rsp.reply()
    while reply.startswith("O"):
        reply = rsp.reply()
    assert reply.startswith("T02thread:1;"), reply
    assert int(rsp.request("p10"), 16) != 0x10000c               # rip moved on
    s.sendall(b"$k#6b")
    status, _, err = sv.finish()
    assert "killed by gdb" in err and status == 0


@pytest.mark.slow
def test_attach_to_a_running_machine():
    """Without -S the machine runs at once; gdb connecting stops it (QEMU too)."""
    k = gb.build_guest("loop")
    sv = Svmsim(k, wait=False, append="iters=100000000")
    time.sleep(1.0)
    out = gdb(k, sv.port, "p $pc", "kill")
    status, _, err = sv.finish()
    assert re.search(r"\$1 = \(void \(\*\)\(\)\) 0x[0-9a-f]+ <", out), out
    assert "killed by gdb" in err


def test_minus_capital_s_needs_a_gdb_address(target):
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", str(target), "-S"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "-S waits for gdb" in p.stderr


class RawRsp:
    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def send(self, data: str):
        body = data.encode()
        self.s.sendall(b"$" + body + b"#%02x" % (sum(body) & 0xFF))
        assert self._read(1) == b"+"

    def _read(self, n):
        while len(self.buf) < n:
            self.buf += self.s.recv(4096)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def reply(self) -> str:
        while self._read(1) != b"$":
            pass
        body = b""
        while not body.endswith(b"#"):
            body += self._read(1)
        self._read(2)
        self.s.sendall(b"+")
        return body[:-1].decode()

    def request(self, data: str) -> str:
        self.send(data)
        return self.reply()
