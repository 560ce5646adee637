"""The resumable Python API (issue 15, item 2): run/step/until, breakpoints,
watchpoints, hooks, registers and memory in every address space.

Everything runs real kernels (tests/guests/debug_target.c and the SVM test
hypervisors); expected values come from the kernels' own symbols and
transcripts, and every stop is checked to leave the run exactly as it would
have been without stopping (same instruction count, virtual time, output).
"""
import io
import os
import signal
import sys
import threading

import iced_x86
import pytest

import guestbuild as gb
from svmsim.machine import Machine, STATUS_STOPPED
from svmsim.debug.control import Scope
from svmsim.debug.memory import DebugMemoryError


def boot(name="debug_target", append="", smp=1, **kw):
    out = io.BytesIO()
    m = Machine(mem_size="128M", smp=smp, serial_out=out, **kw)
    m.load_kernel(str(gb.build_guest(name)), append)
    m.out = out
    return m


def sym(m, name):
    for address, _, n in m.symbols._syms:
        if n == name:
            return address
    raise KeyError(name)


@pytest.fixture(scope="module")
def free_run():
    """debug_target run without any stop: the reference."""
    m = boot()
    r = m.run(timeout=60)
    assert r.status == gb.STATUS_PASS, r.reason
    return r.instructions, m.clock.now_ns, m.out.getvalue()


def finish(m):
    r = m.run(timeout=60)
    while r.resumable and r.kind != "budget":
        r = m.run(timeout=60)
    return r


def test_breakpoint_stops_before_the_instruction_and_resumes_identically(free_run):
    m = boot()
    bump = sym(m, "bump")
    bp = m.breakpoint(bump)
    hits = []
    r = m.run()
    while r.kind == "breakpoint":
        assert (r.cpu, r.address, m.regs.rip, r.status) == (0, bump, bump, STATUS_STOPPED)
        hits.append(m.regs.rdi)                  # bump(i): the argument, not yet used
        r = m.run()
    assert hits == [1, 2, 3, 4, 5] and bp.hits == 5
    assert r.status == gb.STATUS_PASS
    assert (r.instructions, m.clock.now_ns, m.out.getvalue()) == free_run


def test_step_executes_exactly_one_instruction(free_run):
    m = boot()
    bump = sym(m, "bump")
    m.run(until=bump)
    assert m.regs.rip == bump
    straight = 0
    for _ in range(20):
        insn = iced_x86.Decoder(64, m.mem.read(m.regs.rip, 15), ip=m.regs.rip).decode()
        before = m.cpus[0].retired
        r = m.step()
        assert r.kind == "step" and m.cpus[0].retired == before + 1 and r.executed == 1
        if insn.flow_control == iced_x86.FlowControl.NEXT:
            assert m.regs.rip == insn.next_ip
            straight += 1
    assert straight >= 10
    r = finish(m)
    assert (r.instructions, m.clock.now_ns, m.out.getvalue()) == free_run


def test_budget_and_timeout_stops_are_resumable(free_run):
    m = boot()
    r = m.run(max_insns=3000)
    assert r.kind == "budget" and r.resumable and r.executed >= 3000
    r = m.run(max_insns=2000)
    assert r.kind == "budget" and r.executed >= 2000
    r = finish(m)
    assert (r.instructions, m.clock.now_ns, m.out.getvalue()) == free_run
    again = m.run()                      # final: nothing runs any more
    assert again.kind == "debug-exit" and again.executed == 0


def test_watchpoint_stops_after_the_writing_instruction():
    m = boot()
    counter = sym(m, "dbg_counter")
    wp = m.watchpoint(counter, 8, "w")
    seen = []
    r = m.run()
    while r.kind == "watchpoint":
        assert r.address == counter
        seen.append(m.mem.read_int(counter))     # the write has happened
        r = m.run()
    m.delete(wp)
    assert seen[-5:] == [1, 3, 6, 10, 15]
    assert r.status == gb.STATUS_PASS


def test_watchpoint_sees_rep_stos_element_by_element():
    """Watched memory takes the element-by-element path of REP STOS (the bulk
    copy would skip the check): the stop comes after the REP instruction."""
    m = boot()
    buf = sym(m, "dbg_buffer")
    m.watchpoint(buf + 63, 1, "w")
    r = m.run()
    while r.kind == "watchpoint" and m.mem.read(buf + 63, 1) != b"\x5a":
        r = m.run()
    assert r.kind == "watchpoint" and m.mem.read(buf, 64) == b"\x5a" * 64
    prev = m.mem.read(m.regs.rip - 2, 2)
    assert prev == b"\xf3\xaa"                   # just after rep stosb


def test_code_hook_sees_every_instruction_of_a_range():
    m = boot()
    bump = sym(m, "bump")
    size = next(s for a, s, n in m.symbols._syms if n == "bump")
    seen = []
    m.hook_code(lambda m, cpu, address, size: seen.append(address), bump, bump + size - 1)
    r = m.run()
    assert r.status == gb.STATUS_PASS
    per_call = len(seen) // 5
    assert len(seen) == 5 * per_call and seen[0] == bump and all(bump <= a < bump + size for a in seen)


def test_hook_stop_is_before_the_instruction():
    m = boot()
    fill = sym(m, "fill")
    m.hook_address(lambda m, cpu, address, size: m.stop(), fill)
    r = m.run()
    assert (r.kind, m.regs.rip) == ("stopped", fill)
    r = m.run()                                  # the hook does not stop it again at once
    assert r.status == gb.STATUS_PASS


def test_memory_hooks_report_writes_with_values():
    m = boot()
    counter = sym(m, "dbg_counter")
    writes = []
    m.hook_mem_write(lambda m, cpu, access, address, size, value: writes.append((address, size, value)),
                     counter, counter + 7)
    r = m.run()
    assert r.status == gb.STATUS_PASS
    assert [v for a, s, v in writes if a == counter][-5:] == [1, 3, 6, 10, 15]


def test_io_hook_sees_port_writes_and_can_supply_reads():
    m = boot()
    outs = []
    m.hook_io(lambda m, cpu, port, size, direction, value: outs.append((direction, value)), 0x80)
    serial = []
    m.hook_io(lambda m, cpu, port, size, d, value: serial.append(value) if d == "out" else None, 0x3F8)
    r = m.run()
    assert r.status == gb.STATUS_PASS
    assert ("out", 0x42) in outs
    # What the guest sent to THR, after serial_init's divisor latch write.
    assert bytes(serial).endswith(m.out.getvalue()) and len(serial) - len(m.out.getvalue()) <= 2


def test_io_read_hook_supplies_the_value():
    """An "in" hook's return value is what the guest reads: here COM1's LSR
    says the transmitter is never empty... for a while."""
    m = boot()
    reads = []

    def lsr(m, cpu, port, size, direction, value):
        reads.append(port)
        return 0x00 if len(reads) < 5 else None   # then the real device

    m.hook_io(lsr, 0x3FD)
    r = m.run()
    assert r.status == gb.STATUS_PASS and len(reads) >= 5


def test_exception_hook_and_fault_log():
    m = boot()
    seen = []
    m.hook_exception(lambda m, cpu, e: seen.append((e["vector"], e["rip"])))
    r = m.run()
    assert r.status == gb.STATUS_PASS
    assert [v for v, _ in seen] == [6]
    assert m.fault_log[-1].vector == 6 and m.fault_log[-1].rip == seen[0][1]
    assert m.mem.read(seen[0][1], 2) == b"\x0f\x0b"


def test_registers_by_name_and_instruction_like_writes():
    m = boot()
    m.run(until=sym(m, "bump"))
    regs = m.regs
    assert regs.rdi == 1 and regs.edi == 1 and regs["di"] == 1
    regs.rax = 0x1122334455667788
    assert (regs.eax, regs.ax, regs.al, regs.ah) == (0x55667788, 0x7788, 0x88, 0x77)
    regs.eax = 0xFFFFFFFF                          # 32-bit writes zero-extend
    assert regs.rax == 0xFFFFFFFF
    assert regs.cr0 & 0x80000001 == 0x80000001 and regs.efer & 0x500 == 0x500
    with pytest.raises(ValueError, match="PAE"):
        regs.cr4 = 0                               # MOV CR4 in long mode would #GP
    with pytest.raises(ValueError, match="real mode"):
        regs.cs = 0x10
    assert m.cpu(0).mode == "64-bit mode, CPL 0" and not m.cpu(0).guest
    assert "rip=" in repr(regs) and "cr0=" in repr(regs)


def test_memory_virtual_physical_and_the_walk():
    m = boot()
    bump = sym(m, "bump")
    m.run(until=bump)
    elf_code = m.mem.read(bump, 16)
    assert m.mem.read_phys(bump, 16) == elf_code          # identity-mapped kernel
    w = m.mem.translate(bump)
    assert [s[1] for s in w.steps] == ["PML4E", "PDPE", "PDE"]   # 2 MiB pages
    assert w.spa == bump and not w.fault
    text = str(w)
    assert "PML4E" in text and f"=> SPA {bump:#x}" in text
    pde = w.steps[-1][3]
    assert pde & 0x80                                      # PS
    # Nothing changed by looking: A/D bits and the TLB are untouched.
    unmapped = 0x7FFF_0000_0000
    w = m.mem.translate(unmapped)
    assert w.fault and "not present" in w.fault
    with pytest.raises(DebugMemoryError):
        m.mem.read(unmapped, 4)
    with pytest.raises(DebugMemoryError, match="MMIO"):
        m.mem.read_phys(0xFEE00000, 4)
    counter = sym(m, "dbg_counter")
    m.mem.write(counter, (100).to_bytes(8, "little"))
    assert m.mem.read_int(counter) == 100


def test_writing_code_drops_translated_blocks():
    m = boot()
    bump = sym(m, "bump")
    m.run(until=bump)
    m.run(until=bump)                              # bump is translated now
    m.mem.write(bump, b"\x0f\x0b")                 # ud2
    seen = []
    m.hook_exception(lambda m, cpu, e: seen.append(e["rip"]))
    m.step()
    assert seen == [bump]


def test_scoped_breakpoints_in_a_hypervisor_and_its_guest():
    """svm_basic runs guest_main in guest mode (ASID 1): a guest-scoped
    breakpoint stops there, a host-scoped one never does, an ASID scope of
    another ASID never does."""
    m = boot("svm_basic")
    gm = sym(m, "guest_main")
    host_only = m.breakpoint(gm, "host")
    other = m.breakpoint(gm, Scope(asid=7))
    guest = m.breakpoint(gm, Scope(world="guest", asid=1))
    r = m.run(timeout=60)
    assert r.kind == "breakpoint" and m.cpu(0).guest and m.cpu(0).asid == 1
    assert m.regs.rip == gm and m.regs.svm_guest == 1 and m.regs.asid == 1
    assert (host_only.hits, other.hits, guest.hits) == (0, 0, 1)
    assert m.cpu(0).vmcb["GUEST_ASID"] == 1


def test_vmexit_and_vmrun_hooks():
    m = boot("svm_basic")
    exits, runs = [], []
    m.hook_vmexit(lambda m, cpu, e: exits.append(e["name"]))
    m.hook_vmrun(lambda m, cpu, e: runs.append(e["asid"]))
    r = m.run(max_insns=150_000)
    svm = m.svm_summary()
    assert r.kind == "budget" and len(exits) == sum(svm["exits"].values()) > 10
    assert len(runs) == svm["vmruns"] and set(runs) == {1}
    assert exits.count("CPUID") == svm["exits"]["CPUID"] > 0


def test_stop_at_a_vmexit_lands_in_the_host_after_vmrun():
    m = boot("svm_basic")
    m.hook_vmexit(lambda m, cpu, e: m.stop(), exit="CPUID")
    r = m.run(timeout=60)
    cpu = m.cpu(0)
    assert r.kind == "stopped" and not cpu.guest
    vmcb = cpu.vmcb
    assert vmcb["EXITCODE"] == 0x72
    prev = m.mem.read(m.regs.rip - 3, 3)
    assert prev == b"\x0f\x01\xd8"                 # the host is just after its VMRUN


def test_two_dimensional_walk_of_a_guest_under_nested_paging():
    """svm_npt's guest reads through remapped nested tables: stopped in the
    guest, the walk shows guest steps each with its nested walk, and the
    virtual read equals the system-physical bytes the walk ends at."""
    m = boot("svm_npt")
    gn_read = sym(m, "gn_read")
    m.breakpoint(gn_read, "guest")
    r = m.run(timeout=60)
    assert r.kind == "breakpoint" and m.cpu(0).guest
    rsi = m.regs.rsi
    w = m.mem.translate(rsi)
    assert w.context.nested is not None and not w.fault
    guest_levels = [s[1] for s in w.steps if s[0] == "guest"]
    assert guest_levels[:2] == ["PML4E", "PDPE"]
    assert len(w.nested_steps) == len(w.steps) + 1          # + the final gPA
    assert all(ns[2] is not None for ns in w.nested_steps)
    assert m.mem.read(rsi, 4) == m.mem.read_phys(w.spa, 4)
    assert m.mem.read_gpa(w.gpa, 4) == m.mem.read_phys(w.spa, 4)
    text = str(w)
    assert "guest PML4E" in text and "nested PML4E" in text and "final gPA" in text
    # From the host after the exit, walking the last guest gives the same SPA.
    m.hook_vmexit(lambda m, cpu, e: m.stop())
    m.run(timeout=60)
    assert not m.cpu(0).guest
    assert m.mem.translate(rsi, guest=True).spa == w.spa


def test_jupyter_safe_default_console(monkeypatch):
    """With no serial_out the guest's bytes go to whatever sys.stdout is,
    also a text-only stream (a notebook cell has no .buffer)."""
    text = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text)
    m = Machine(mem_size="128M")
    m.load_kernel(str(gb.build_guest("hello")), "x")
    r = m.run(timeout=60)
    assert r.status == gb.STATUS_PASS
    assert "hello from svmsim test kernel" in text.getvalue()


def test_ctrl_c_pauses_at_a_round_boundary(free_run):
    m = boot()
    calls = []

    def interrupt(m, cpu, address, size):
        calls.append(address)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    m.hook_address(interrupt, sym(m, "bump"))
    r = m.run()
    assert r.kind == "interrupted" and r.resumable and r.status == 130
    r = finish(m)
    assert (r.instructions, m.clock.now_ns, m.out.getvalue()) == free_run


def test_stop_from_another_thread():
    m = boot("loop", "iters=100000000")
    timer = threading.Timer(0.3, m.stop)
    timer.start()
    r = m.run(timeout=60)
    timer.join()
    assert r.kind == "stopped" and r.resumable
    r = m.run(max_insns=10_000)
    assert r.kind == "budget" and r.executed >= 10_000


@pytest.mark.slow
def test_smp_breakpoints_keep_the_schedule():
    def reference():
        m = boot("smp", smp=2)
        r = m.run(timeout=60)
        return r.instructions, m.clock.now_ns, m.out.getvalue()

    m = boot("smp", smp=2)
    m.breakpoint(sym(m, "kprintf"))
    cpus = set()
    r = m.run(timeout=60)
    while r.kind == "breakpoint":
        cpus.add(r.cpu)
        r = m.run(timeout=60)
    assert r.status == gb.STATUS_PASS and cpus == {0, 1}
    assert (r.instructions, m.clock.now_ns, m.out.getvalue()) == reference()


def test_sev_guest_private_memory_as_the_cpu_and_as_dram_see_it():
    """The debugger reads an SEV guest's private page as the CPU in the guest
    does (plaintext, through its key); system-physical reads see DRAM
    (ciphertext); monitor sev names the key slots and the guest, never a key."""
    from svmsim.vmm import Vmm, launch_sev
    from svmsim.sev.crypto import GuestOwner
    from svmsim.debug.monitor import Monitor
    m = Machine(mem_size="128M", serial_out=io.BytesIO())
    vmm = Vmm(m, asid=5)                 # SEV (not SEV-ES) ASIDs start at 5 on the epyc profile
    kernel = str(gb.build_guest("sev_guest", kind="asm"))
    info = vmm.load_kernel(kernel)
    launch = launch_sev(vmm, GuestOwner(policy=1), b"secret\0", 0x200000,
                        regions=[(info.load_addr, info.load_end - info.load_addr)])
    assert launch.verified
    m.symbols.load_elf(kernel)
    line = b"only the guest can read this line\n"
    # Stop when the guest prints its private page (puts with rsi = 0x300000); the
    # reference VMM's loop is not resumable, so one stop.
    m.hook_address(lambda m, cpu, a, n: m.stop() if cpu.regs.rsi == 0x300000 else None, sym(m, "puts"), "guest")
    vmm.run()
    assert m.stop_kind == "stopped" and m.cpu(0).guest
    assert m.mem.read(0x300000, len(line)) == line                 # the CPU's view: plaintext
    w = m.mem.translate(0x300000)
    assert w.private and w.context.sev_slot == 5
    assert m.mem.read_phys(w.spa, len(line)) != line              # DRAM: ciphertext
    text = Monitor(m).run("sev")
    assert "key slots loaded (ASID): 0 (SME), 5" in text and "handle 1: ASID 5, state RUNNING" in text
    assert "running SEV guest ASID 5" in text
