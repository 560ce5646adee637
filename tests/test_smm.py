"""System management mode (APM vol 2, chapter 10; 15.22, 15.30.3, 15.35.11):
the kernel tests/guests/smm.c against its QEMU transcript, and the rules one
by one with machine code: the AMD64 state-save map, the entry state, RSM,
SMBASE relocation, NMI/SMI blocking, SMM_BASE/ADDR/MASK/CTL and
HWCR.SMMLOCK, SMRAM (TSeg, the i440FX's SMRAM register), the APM port,
SMIs in guest mode (intercept, SMMLOCK, SEV-ES, RSM back into the guest)."""
import io
import re

import pytest

import guestbuild as gb
from cpuharness import asm, run_code, make_machine, CODE_ADDR
from svmharness import SvmRig, NestedTables, GUEST_CODE
from test_svm_guests_qemu import apm_lines
from svmsim.machine import Machine
from svmsim.cpu import msr, smm as S
from svmsim.svm.exits import ExitCode

SMBASE = 0x300000
HANDLER = SMBASE + 0x8000
HWCR = 0xC0010015


def save(m, name, base=SMBASE):
    off, size = S.SAVE[name]
    return m.bus.read(base + off, size)


def with_handler(code16: str, smbase=SMBASE):
    """A setup() for run_code: SMBASE, a 16-bit handler, an SMI pending."""
    def setup(m, cpu):
        cpu.msr[S.SMM_BASE] = smbase
        m.bus.write_bytes(smbase + 0x8000, asm(code16, bits=16))
        cpu.signal_smi("test")
    return setup


# ---------------------------------------------------------------- the kernel
@pytest.fixture(scope="module")
def kernel():
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    m.load_kernel(str(gb.build_guest("smm")), "")
    r = m.run(max_insns=200_000_000, timeout=300)
    return r, out.getvalue().decode(), m


def test_kernel_matches_qemu_where_qemu_follows_the_apm(kernel):
    r, text, m = kernel
    assert r.status == gb.STATUS_PASS, text + r.reason
    assert apm_lines(text) == apm_lines(gb.expected_transcript("smm").decode())
    assert m.counters["SMIs"] == 7


def test_kernel_qemu_lines_show_the_apm_value(kernel):
    lines = [line for line in kernel[1].splitlines() if line.startswith("[qemu] ")]
    assert len(lines) == 4
    for needle in ("saved CS attributes 0a9b (APM: 0a9b)", "auto-halt restart field = 1 (APM: 1)",
                   "SVM guest flag 1, VMCB the VMCB", "EXITINFO1 SMISRC = 1 (APM: 1"):
        assert needle in kernel[1]


# ---------------------------------------------------------------- entry and RSM
def test_state_save_map_and_entry_state():
    """Table 10-2 (AMD64 map at SMBASE + FE00h) and table 10-3 (initial state)."""
    handler = "mov ebx, cr0\nmov esi, cr4\nmov edi, 0x1234\nmov ax, cs\nhlt"
    r = run_code(asm("mov rax, 0xfeedface\nmov r15, 7\nnop"), setup=with_handler(handler))
    cpu, m = r.cpu, r.machine
    assert cpu.smm and cpu.halted and cpu.rip == 0x8000 + len(asm(handler, bits=16))
    assert cpu.segs[1].sel == (SMBASE >> 4) & 0xFFFF and cpu.segs[1].base == SMBASE and cpu.segs[1].limit == 0xFFFFFFFF
    assert cpu.regs[3] & 0x80000001 == 0 and cpu.regs[6] == 0 and cpu.efer == 0 and cpu.dr[7] == 0x400
    assert cpu.regs[0] & 0xFFFF == (SMBASE >> 4) & 0xFFFF
    assert save(m, "REVISION") == 0x00020064 and save(m, "SMBASE") == SMBASE
    assert save(m, "RIP") == CODE_ADDR and save(m, "GPR0") == 0 and save(m, "CR3") == 0x10000
    assert save(m, "EFER") == 0xD01 and save(m, "CR0") & 0x80000001 == 0x80000001
    assert m.bus.read(SMBASE + 0xFE10, 2) == 0x08 and m.bus.read(SMBASE + 0xFE12, 2) == 0xA9A
    assert save(m, "SVM_GUEST") == 0


def test_rsm_restores_and_the_handler_can_change_the_saved_state():
    r = run_code(asm("mov rax, 1\nmov rbx, 2\nhlt"),
                 setup=with_handler("mov dword ptr cs:[0xffe0], 0x77\nrsm"))
    assert not r.cpu.smm and r.cpu.regs[3] == 2        # RBX reloaded, then the guest code ran
    assert r.cpu.bits == 64 and r.cpu.rip == CODE_ADDR + 15


def test_rsm_loads_rbx_the_handler_wrote():
    r = run_code(asm("nop\nnop\nhlt"), setup=with_handler("mov dword ptr cs:[0xffe0], 0x77\nrsm"))
    assert r.cpu.regs[3] == 0x77


def test_rsm_outside_smm_is_ud():
    assert run_code(asm("rsm")).exception[0] == 6


def test_smbase_relocation():
    """Revision bit 17: RSM reloads SMBASE from the save area (FF00h)."""
    r = run_code(asm("nop\nhlt"), setup=with_handler("mov dword ptr cs:[0xff00], 0x400000\nrsm"))
    assert r.cpu.msr[S.SMM_BASE] == 0x400000 and msr.rdmsr(r.cpu, S.SMM_BASE) == 0x400000


def test_rsm_of_an_invalid_state_is_a_shutdown():
    r = run_code(asm("nop\nhlt"), setup=with_handler("and dword ptr cs:[0xff58], 0xfffffffe\nrsm"))
    assert r.shutdown and r.cpu.smm


def test_smm_blocks_nmi_and_smi_until_rsm():
    """10.3.3: NMI and further SMIs are held in SMM; RSM restores NMI blocking."""
    def setup(m, cpu):
        with_handler("pause\npause\nrsm")(m, cpu)
    r = run_code(asm("nop\nnop\nhlt"), setup=setup, max_insns=3)
    cpu = r.cpu
    assert cpu.smm and cpu.nmi_blocked
    cpu.signal_smi("second")
    cpu.signal_nmi()
    from svmsim.cpu import interrupts
    interrupts.service(cpu)
    assert cpu.smi_pending and cpu.nmi_pending and cpu.smm
    assert r.machine.counters["SMIs"] == 1


def test_auto_halt_restart():
    """FEC9h bit 0 = 1 for an SMI taken in HLT; RSM with it set halts again."""
    def setup(m, cpu):
        cpu.msr[S.SMM_BASE] = SMBASE
        m.bus.write_bytes(HANDLER, asm("rsm", bits=16))
    r = run_code(asm("hlt\nmov eax, 5\nhlt"), setup=setup)
    cpu = r.cpu
    assert cpu.halted and cpu.rip == CODE_ADDR + 1
    cpu.signal_smi("test")
    r.machine.engine.run(cpu, 10)
    assert save(r.machine, "AUTO_HALT_RESTART") == 1 and cpu.halted and cpu.regs[0] != 5


# ---------------------------------------------------------------- MSRs and locking
def test_smm_ctl_is_write_only_and_locked_by_smmlock():
    m = make_machine()
    cpu = m.cpus[0]
    with pytest.raises(Exception, match="write-only"):
        msr.rdmsr(cpu, S.SMM_CTL)
    cpu.signal_smi("x")
    msr.wrmsr(cpu, S.SMM_CTL, S.CTL_DISMISS)
    assert not cpu.smi_pending
    msr.wrmsr(cpu, S.SMM_CTL, S.CTL_ENTER)
    assert cpu.smm and cpu.nmi_blocked
    msr.wrmsr(cpu, S.SMM_CTL, S.CTL_EXIT | S.CTL_RSM_CYCLE)
    assert not cpu.smm and not cpu.nmi_blocked
    msr.wrmsr(cpu, HWCR, 1)
    with pytest.raises(Exception, match="SMMLOCK"):
        msr.wrmsr(cpu, S.SMM_CTL, S.CTL_DISMISS)


def test_smmlock_makes_the_smm_registers_read_only():
    m = make_machine()
    cpu = m.cpus[0]
    assert msr.rdmsr(cpu, S.SMM_BASE) == 0x30000               # reset value
    msr.wrmsr(cpu, HWCR, 1)
    msr.wrmsr(cpu, HWCR, 0)
    assert msr.rdmsr(cpu, HWCR) & 1                            # sticky
    for idx in (S.SMM_BASE, S.SMM_ADDR, S.SMM_MASK):
        before = msr.rdmsr(cpu, idx)
        msr.wrmsr(cpu, idx, 0x200000)
        assert msr.rdmsr(cpu, idx) == before
    assert any("SMMLOCK" in n for n in m.notes)
    with pytest.raises(Exception, match="reserved"):
        msr.wrmsr(make_machine().cpus[0], S.SMM_MASK, 1 << 16)


def test_tseg_is_dram_in_smm_and_nothing_outside():
    """10.2.5: with TValid, TSeg (address & mask = base & mask) is reached
    only in SMM; outside, accesses go to MMIO (all ones here)."""
    m = make_machine()
    cpu = m.cpus[0]
    m.bus.write(0x400000, 4, 0x12345678)
    msr.wrmsr(cpu, S.SMM_ADDR, 0x400000)
    msr.wrmsr(cpu, S.SMM_MASK, (((1 << 48) - 1) & ~0xFFFFF) | 0x2)    # 1 MiB, TValid
    assert m.bus.read(0x400000, 4) == 0xFFFFFFFF and m.bus.read(0x4FFFFC, 4) == 0xFFFFFFFF
    assert m.bus.read(0x500000, 4) == 0                          # beyond it: DRAM
    m.bus.write(0x400000, 4, 0)                                  # dropped
    cpu.smm = True
    assert m.bus.read(0x400000, 4) == 0x12345678
    from svmsim.memory.dma import DmaPort
    assert DmaPort(m, "dev").read_bytes(0x400000, 4) == b"\xFF" * 4   # devices never
    cpu.smm = False
    msr.wrmsr(cpu, S.SMM_MASK, 0)
    assert m.bus.read(0x400000, 4) == 0x12345678


def test_chipset_smram_register_and_its_lock():
    """i440FX 72h: G_SMRAME, D_OPEN shows A_0000h outside SMM, D_LCK locks it closed."""
    m = Machine(mem_size="16M")
    m.pci.host.config_write(0x72, 1, 0x0A)
    m.bus.write(0xA0000, 4, 0x55)
    assert m.bus.read(0xA0000, 4) == 0xFFFFFFFF
    m.pci.host.config_write(0x72, 1, 0x4A)                       # D_OPEN
    m.bus.write(0xA0000, 4, 0x66)
    assert m.bus.read(0xA0000, 4) == 0x66
    m.pci.host.config_write(0x72, 1, 0x5A)                       # D_LCK clears D_OPEN
    assert m.pci.host.smram == 0x1A and m.bus.read(0xA0000, 4) == 0xFFFFFFFF
    m.pci.host.config_write(0x72, 1, 0x42)
    assert m.pci.host.smram == 0x1A                              # locked until reset


@pytest.mark.parametrize("enabled, command, smi", [(True, 0x42, True), (True, 0xF1, False), (False, 0x42, False)])
def test_apm_port_raises_an_smi_on_the_bsp(enabled, command, smi):
    m = Machine(mem_size="16M", smp=2)
    if not enabled:
        m.pci.pm.config_write(0x58, 4, 0)
    m.io.write(0xB2, 1, command)
    assert m.cpus[0].smi_pending == smi and not m.cpus[1].smi_pending
    assert m.io.read(0xB2, 1) == command
    m.io.write(0xB3, 1, 0x5A)
    assert m.io.read(0xB3, 1) == 0x5A


# ---------------------------------------------------------------- guests
def _guest(intercept_smi=False, np=False, **fields):
    r = SvmRig("mov ecx, 300\n1: dec ecx\njnz 1b\nhlt", intercepts=[ExitCode.HLT] + ([ExitCode.SMI] if intercept_smi else []),
               **fields)
    r.cpu.msr[S.SMM_BASE] = SMBASE
    r.m.bus.write_bytes(HANDLER, asm("rsm", bits=16))
    if np:
        nt = NestedTables(r.m.bus)
        nt.identity(0, 0x1000000)
        r.vmcb["NP_ENABLE"], r.vmcb["N_CR3"] = 1, nt.root
    return r


def test_smi_intercept_exits_and_the_smi_stays_pending():
    """Table 15-14: GIF = 1, intercept: #VMEXIT(SMI), SMI still pending; EXITINFO1 bit 0 = external."""
    r = _guest(intercept_smi=True)
    r.run(at_vmrun=True, max_insns=3)
    r.cpu.signal_smi("test")
    r.m.engine.run(r.cpu, 20)
    assert r.exitcode == ExitCode.SMI and r.vmcb["EXITINFO1"] & 1
    assert r.cpu.smi_pending and not r.cpu.gif and r.m.counters["SMIs"] == 0


def test_smmlock_makes_the_smi_intercept_ignored():
    """15.13.3: "The SMI intercept is ignored when HWCR[SMMLOCK] is set"."""
    r = _guest(intercept_smi=True)
    r.cpu.msr[HWCR] = 1
    r.run(at_vmrun=True, max_insns=3)
    r.cpu.signal_smi("test")
    r.m.engine.run(r.cpu, 2000)
    assert r.m.counters["SMIs"] == 1 and r.exitcode == ExitCode.HLT
    assert save(r.m, "SVM_GUEST") == 1 and save(r.m, "SVM_GUEST_VMCB") == r.vmcb.pa


def test_smi_in_a_nested_paging_guest_returns_to_it():
    """15.22.3: taken in the guest context; the save area holds the host's
    EFER/CR4/CR0 and nested CR3; RSM goes back into the guest."""
    r = _guest(np=True)
    r.run(at_vmrun=True, max_insns=3)
    assert r.cpu.svm_guest and r.cpu.npt is not None
    r.cpu.signal_smi("test")
    r.m.engine.run(r.cpu, 2000)
    assert r.exitcode == ExitCode.HLT and r.m.counters["SMIs"] == 1
    assert save(r.m, "NESTED_CR3") == r.vmcb["N_CR3"] and save(r.m, "HOST_EFER") & (1 << 12)
    assert save(r.m, "GUEST_PAT") == r.vmcb["G_PAT"] and save(r.m, "RIP") >= GUEST_CODE


def test_sev_es_guest_always_exits_on_smi():
    """15.35.11: an SMI while an SEV-ES guest runs is #VMEXIT(SMI) "regardless
    of the value of the SMI intercept bit" (SMMLOCK is set for SEV guests)."""
    from esharness import EsRig
    r = EsRig("pause\njmp $-2")
    r.run(max_insns=100)
    assert r.in_guest
    r.cpu.signal_smi("test")
    r.m.engine.run(r.cpu, 20)
    assert r.exitcode == ExitCode.SMI and r.cpu.smi_pending and r.m.counters["SMIs"] == 0


# ---------------------------------------------------------------- reports
def test_smis_in_the_trace_and_the_run_report():
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", str(gb.build_guest("smm")), "--trace", "smm"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == gb.STATUS_PASS
    assert re.search(r"\[cpu0\] SMI \(APM port B2h\) -> SMM at SMBASE 0xa0000 from rip=", p.stderr)
    assert "[cpu0] SMI (APIC)" in p.stderr and "RSM -> rip=" in p.stderr
    assert "(back into the guest)" in p.stderr
    assert "svmsim: platform: 7 SMIs" in p.stderr
