"""INS probes its memory write before it reads the port (system.py
``_probe_write``): a page already in the fast write caches (``cpu.fw``, or
``cpu.fc`` for a page holding translated code) needs no translation, any
other page is checked by ``Cpu.check_write`` as before.  kvm-unit-tests'
reg_corruption spins on INSB from its guest with nested paging (1.7 M of
them), where the full translation was 30% of the subtest.

Each case runs machine code twice, with the shortcut and with every probe
forced through ``check_write``: registers, RFLAGS, memory, the fault or
#VMEXIT and the retired count must be the same (APM vol 3 INS: the store
to ES:rDI; a #PF or #NPF leaves rDI and the port unread)."""
import pytest

import svmsim.cpu.ops.system as system
from cpuharness import run_code, asm, CODE_ADDR, DATA_ADDR, PD
from test_svm_npt import npt_rig, FINAL
from svmsim.svm.exits import ExitCode

IMR = 0x21          # the master PIC's mask register: reads back what OUT wrote


@pytest.fixture
def probes(monkeypatch):
    """Count the probes that needed ``check_write``; ``slow=True`` forces all."""
    calls = {"check_write": 0, "slow": False}
    real = system._probe_write

    def counting(cpu, seg, off, size):
        orig = cpu.check_write

        def check_write(*a):
            calls["check_write"] += 1
            return orig(*a)
        cpu.check_write = check_write
        try:
            if calls["slow"]:
                return check_write(seg, off, size)
            return real(cpu, seg, off, size)
        finally:
            del cpu.check_write
    monkeypatch.setattr(system, "_probe_write", counting)
    return calls


def _outcome(r, mem_at, mem_len):
    cpu = r.cpu
    return (list(cpu.regs), cpu.rip, cpu.get_rflags(), cpu.retired, r.exception,
            bytes(r.machine.bus.read_bytes(mem_at, mem_len)))


def _both(probes, run):
    probes["slow"] = False
    probes["check_write"] = 0
    fast = run()
    fast_checks = probes["check_write"]
    probes["slow"] = True
    probes["check_write"] = 0
    slow = run()
    return fast, slow, fast_checks


# 300 INSB/INSW/INSD into one warm page: only the first of each probes through check_write.
WARM = f"""
    mov dx, {IMR}
    mov al, 0x5a
    out dx, al
    mov rdi, {DATA_ADDR}
    mov ecx, 100
1:  insb
    insw
    insd
    dec ecx
    jnz 1b
"""


def test_warm_page_takes_no_translation_and_writes_the_same(probes):
    run = lambda: _outcome(run_code(asm(WARM)), DATA_ADDR, 700)
    fast, slow, fast_checks = _both(probes, run)
    assert fast == slow
    assert fast[4] is None and fast[0][7] == DATA_ADDR + 700
    # The IMR as a byte, then with the unassigned port 22h (FFh) above it.
    assert fast[5] == (b"\x5a" + b"\x5a\xff" + b"\x5a\xff\xff\xff") * 100
    assert fast_checks == 1 and probes["check_write"] == 300


# INSB stores the IMR into the immediate of the MOV after it, in a loop: the
# page holds translated code (in cpu.fc, not cpu.fw) and each store changes it.
SMC = f"""
    mov dx, {IMR}
    xor ebx, ebx
    mov ecx, 200
    lea rsi, [rip + 2f + 1]
1:  mov al, cl
    out dx, al
    mov rdi, rsi
    insb
2:  mov al, 0
    add ebx, eax
    dec ecx
    jnz 1b
"""


def test_insb_into_translated_code_is_seen_by_the_next_instruction(probes):
    run = lambda: _outcome(run_code(asm(SMC)), CODE_ADDR, 64)
    fast, slow, fast_checks = _both(probes, run)
    assert fast == slow
    assert fast[0][3] == sum(range(1, 201))       # each MOV read the byte just stored
    assert fast_checks == 1


def test_read_only_page_faults_before_the_port_is_read(probes):
    """A 2 MiB page made read-only (CR0.WP = 1), read first so its read cache
    is warm: #PF with P|W, RDI unchanged, nothing stored."""
    ro = 0x600000

    def setup(m, cpu):
        m.bus.write(PD + 8 * (ro >> 21), 8, ro | 0x81)          # P, PS; not RW
        m.bus.write(ro, 4, 0x11223344)
    code = asm(f"mov eax, [{ro}]\nmov dx, {IMR}\nmov rdi, {ro}\ninsd")
    run = lambda: _outcome(run_code(code, setup=setup), ro, 4)
    fast, slow, fast_checks = _both(probes, run)
    assert fast == slow
    assert fast[4][:2] == (14, 3) and fast[4][3] == ro
    assert fast[0][7] == ro and fast[5] == (0x11223344).to_bytes(4, "little")
    assert fast_checks == 1


def test_guest_insb_into_a_read_only_nested_page_exits_npf(probes):
    """In a guest with nested paging, INSB to a gPA the nested tables map
    read-only (its read cache warm): #VMEXIT(NPF) as without the shortcut."""
    guest = f"mov eax, [0x600010]\nmov dx, {IMR}\nmov rdi, 0x600010\ninsb\nhlt"

    def run():
        r = npt_rig(guest, identity_to=0x600000)
        r.nt.map(0x600000, 0x600000, 1 << 21, flags=5)          # P | US, read-only
        r.run()
        v = r.vmcb
        return (r.exitcode, v["EXITINFO1"], v["EXITINFO2"], v["RIP"], r.cpu.regs[7], r.cpu.retired)
    fast, slow, _ = _both(probes, run)
    assert fast == slow
    assert fast[0] == ExitCode.NPF and fast[1] == FINAL | 4 | 2 | 1 and fast[2] == 0x600010
