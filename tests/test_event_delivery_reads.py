"""Event delivery and IRET read the IDT and the GDT through ``Cpu.read_sys``,
which now reads a page in the supervisor read cache directly instead of
translating it again (kvm-unit-tests' msr intercept check takes a #GP from
RDMSR/WRMSR of an MSR that does not exist every other round trip: six such
reads per #GP and IRET).

Machine code takes #GP from RDMSR and WRMSR of a missing MSR in a loop; the
handler steps over the instruction and IRETQs (APM vol 2, 8.9: 16-byte
gates, the 64-bit frame; vol 3 IRET).  Host mode, and a guest with nested
paging: registers, RFLAGS, the stack, the retired count, the faults logged
and the TLB misses must be the same with the cache read and with every
read_sys translated as before."""
import pytest

from svmsim.cpu.state import Cpu
from cpuharness import make_machine, asm, CODE_ADDR, SEL_CODE64, STACK_TOP
from test_svm_npt import npt_rig
from svmsim.svm.exits import ExitCode

IDT = 0x300000
HANDLER = 0x301000
MISSING_MSR = 0xDEAD0000

# #GP: skip the two-byte RDMSR/WRMSR, count in R15, return.
GP_HANDLER = "add qword ptr [rsp + 8], 2\nadd rsp, 8\ninc r15\niretq"
LOOP = f"""
    xor r15d, r15d
    mov ecx, {MISSING_MSR}
    mov ebx, 150
1:  rdmsr
    wrmsr
    dec ebx
    jnz 1b
"""


def _idt(bus):
    """Vector 13 -> HANDLER, a present DPL-0 64-bit interrupt gate (type 0Eh)."""
    lo = (HANDLER & 0xFFFF) | (SEL_CODE64 << 16) | (0x8E00 << 32) | ((HANDLER >> 16) & 0xFFFF) << 48
    bus.write(IDT + 16 * 13, 8, lo)
    bus.write(IDT + 16 * 13 + 8, 8, HANDLER >> 32)
    bus.write_bytes(HANDLER, asm(GP_HANDLER))


@pytest.fixture
def sys_reads(monkeypatch):
    """``slow=True``: every read_sys translated (the rule before the cache
    read); ``slow_reads`` counts the read_sys calls that translated."""
    state = {"slow": False, "slow_reads": 0, "in_sys": False}
    fast, slow_path = Cpu.read_sys, Cpu.read_lin_slow

    def read_lin_slow(self, *a):
        state["slow_reads"] += state["in_sys"]
        return slow_path(self, *a)

    def read_sys(self, lin, size):
        state["in_sys"] = True
        try:
            if state["slow"]:
                return self.read_lin_slow(lin, size, 0, False)
            return fast(self, lin, size)
        finally:
            state["in_sys"] = False
    monkeypatch.setattr(Cpu, "read_lin_slow", read_lin_slow)
    monkeypatch.setattr(Cpu, "read_sys", read_sys)
    return state


def _both(sys_reads, run):
    out = []
    for slow in (False, True):
        sys_reads["slow"], sys_reads["slow_reads"] = slow, 0
        out.append((run(), sys_reads["slow_reads"]))
    return out


def _host_run():
    m = make_machine("long64")
    cpu = m.cpus[0]
    _idt(m.bus)
    cpu.idtr_base, cpu.idtr_limit = IDT, 16 * 256 - 1
    m.bus.write_bytes(CODE_ADDR, asm(LOOP) + b"\xf4")
    cpu.rip = CODE_ADDR
    done = 0
    while not cpu.halted and done < 100_000:
        done += m.engine.run(cpu, 100_000 - done)
    return (list(cpu.regs), cpu.rip, cpu.get_rflags(), cpu.retired, len(m.fault_log),
            [(f.vector, f.error_code, f.rip) for f in m.fault_log],
            bytes(m.bus.read_bytes(STACK_TOP - 64, 64)), cpu.tlb.stats["misses"])


def test_host_gp_and_iretq_read_the_same_tables(sys_reads):
    (fast, fast_slow_reads), (slow, slow_reads) = _both(sys_reads, _host_run)
    assert fast == slow
    regs = fast[0]
    assert regs[15] == 300 and regs[3] == 0 and fast[5][-1][:2] == (13, 0)
    # 4 reads per #GP (three gate dwords, the code descriptor), 2 per IRETQ (CS, SS).
    assert slow_reads == 300 * 6
    assert fast_slow_reads <= 2                  # the IDT's page and the GDT's, once each


def _guest_run():
    """The same loop in a guest with nested paging; VMMCALL ends it."""
    r = npt_rig(LOOP + "vmmcall", intercepts=(ExitCode.VMMCALL,), identity_to=0x1000000)
    _idt(r.m.bus)
    r.vmcb.set_segment("IDTR", 0, 0, 16 * 256 - 1, IDT)
    r.run(max_insns=100_000)
    c = r.cpu
    return (r.exitcode, r.vmcb["RIP"], list(c.regs[1:4]), c.regs[15], c.retired,
            bytes(r.m.bus.read_bytes(0x480000 - 64, 64)), c.tlb.stats["misses"])


def test_guest_gp_and_iretq_read_the_same_tables(sys_reads):
    (fast, fast_slow_reads), (slow, slow_reads) = _both(sys_reads, _guest_run)
    assert fast == slow
    assert fast[0] == ExitCode.VMMCALL and fast[3] == 300
    assert slow_reads >= 300 * 6 and fast_slow_reads < slow_reads // 100
