"""AVIC and x2AVIC (APM vol 2, 15.29): the backing page behind the guest's
APIC page, the register filter of table 15-22, accelerated TPR/EOI/ICR,
IPIs through the physical and logical APIC ID tables, AVIC_NOACCEL and
AVIC_INCOMPLETE_IPI, the doorbell, VMRUN's AVIC rules (issue 11)."""
import pytest

from svmharness import SvmRig, NestedTables, GUEST_CODE, REC
from cpuharness import asm
from svmsim.svm.exits import ExitCode
from svmsim.svm.avic import Backing

APIC = 0xFEE00000
BACKING, BACKING2, LOGICAL, PHYSICAL = 0x700000, 0x701000, 0x702000, 0x703000
V = 1 << 63
IR = 1 << 62


class AvicRig(SvmRig):
    def __init__(self, guest_asm, x2=False, intercepts=(ExitCode.HLT,), **fields):
        super().__init__(f"mov edi, {APIC:#x}\n" + guest_asm, idt=True, intercepts=intercepts, **fields)
        m, v = self.m, self.vmcb
        nt = NestedTables(m.bus)
        nt.identity(0, 0x1000000)
        nt.map(APIC, APIC, 4096)                      # permission only: AVIC uses the backing page
        v["NP_ENABLE"], v["N_CR3"] = 1, nt.root
        v["AVIC_ENABLE"], v["X2AVIC_ENABLE"] = 1, int(x2)
        v["AVIC_APIC_BAR"], v["AVIC_BACKING_PAGE"] = APIC, BACKING
        v["AVIC_LOGICAL_TABLE"], v["AVIC_PHYSICAL_TABLE"] = LOGICAL, PHYSICAL
        v["AVIC_PHYSICAL_MAX_INDEX"] = 1
        self.page = Backing(m.bus, BACKING)
        self.page[0x20] = 0                           # vCPU 0's APIC ID
        self.page[0xF0] = 0x1FF
        self.entry(0, BACKING, running=True)          # this vCPU, on host CPU 0
        self.entry(1, BACKING2, running=False)
        if "RFLAGS" not in fields:
            v["RFLAGS"] = 0x202                       # IF = 1: virtual interrupts can be taken

    def entry(self, index, backing, running, host_id=0):
        self.m.bus.write(PHYSICAL + 8 * index, 8, V | (IR if running else 0) | backing | host_id)


def test_reads_come_from_the_backing_page():
    r = AvicRig(f"mov eax, [rdi + 0x20]\nmov ebx, [rdi + 0xF0]\nhlt")
    r.page[0x20] = 0x05000000
    r.run()
    assert r.exitcode == ExitCode.HLT
    assert (r.vmcb["RAX"] & 0xFFFFFFFF) == 0x05000000


def test_tpr_write_is_accelerated_into_v_tpr():
    """15.29.3.1: a TPR write updates the backing page and V_TPR = TPR[7:4]."""
    r = AvicRig(f"mov dword ptr [rdi + 0x80], 0x50\nmov rax, cr8\nhlt").run()
    assert r.exitcode == ExitCode.HLT and r.page[0x80] == 0x50
    assert r.vmcb["V_TPR"] == 5 and r.vmcb["RAX"] == 5


def test_cr8_write_updates_the_backing_tpr():
    r = AvicRig("mov eax, 7\nmov cr8, rax\nhlt").run()
    assert r.page[0x80] == 0x70 and r.vmcb["V_TPR"] == 7


def test_trap_register_write_exits_after_the_write():
    """APIC ID write: #VMEXIT (trap) with EXITINFO1 = offset | write bit;
    the backing page holds the new value and the guest resumes after it."""
    src = "mov dword ptr [rdi + 0x20], 0x7000000"
    r = AvicRig(src + "\nhlt").run()
    assert r.exitcode == ExitCode.AVIC_NOACCEL
    assert r.vmcb["EXITINFO1"] == 0x20 | 1 << 32 and r.page[0x20] == 0x7000000
    assert r.vmcb["RIP"] == GUEST_CODE + len(asm(f"mov edi, {APIC:#x}\n" + src))


def test_fault_register_access_exits_before_it():
    r = AvicRig("mov eax, [rdi + 0x90]\nhlt").run()
    assert r.exitcode == ExitCode.AVIC_NOACCEL and r.vmcb["EXITINFO1"] == 0x90
    assert r.vmcb["RIP"] == GUEST_CODE + len(asm(f"mov edi, {APIC:#x}"))


def test_self_ipi_is_delivered_and_moves_to_isr():
    """ICRL with destination shorthand self: the IRR bit is set and the
    interrupt is delivered through the guest IDT, IRR -> ISR (15.29.6.1).
    (svmsim recognizes it at the end of the translated block: the jump.)"""
    r = AvicRig(f"mov dword ptr [rdi + 0x300], {1 << 18 | 0x41:#x}\njmp 1f\n1: hlt").run()
    assert r.recorded() == 0x41
    assert not r.page.test_bit(0x200, 0x41) and r.page.test_bit(0x100, 0x41)
    assert r.page[0xA0] == 0x40                     # PPR follows the in-service vector
    (ev,) = [e for e in r.events if e["type"] == "deliver"]
    assert ev["vector"] == 0x41 and ev["via"] == "AVIC"


def test_eoi_clears_the_in_service_vector():
    r = AvicRig(f"mov dword ptr [rdi + 0xB0], 0\nhlt")
    r.page.set_bit(0x100, 0x51)
    r.page.update_ppr()
    r.run()
    assert r.exitcode == ExitCode.HLT and not r.page.test_bit(0x100, 0x51) and r.page[0xA0] == 0


def test_level_triggered_eoi_exits_with_the_vector():
    r = AvicRig(f"mov dword ptr [rdi + 0xB0], 0\nhlt")
    r.page.set_bit(0x100, 0x52)
    r.page.set_bit(0x180, 0x52)
    r.run()
    assert r.exitcode == ExitCode.AVIC_NOACCEL and r.vmcb["EXITINFO2"] & 0xFF == 0x52


def test_ipi_to_a_vcpu_that_is_not_running():
    """The IRR bit is set in the target's backing page; the target is not
    running, so #VMEXIT(AVIC_INCOMPLETE_IPI) with ID 1 and its index."""
    icrh = f"mov dword ptr [rdi + 0x310], {1 << 24:#x}\n"
    r = AvicRig(icrh + f"mov dword ptr [rdi + 0x300], 0x42\nhlt").run()
    assert r.exitcode == ExitCode.AVIC_INCOMPLETE_IPI
    assert r.vmcb["EXITINFO2"] == 1 << 32 | 1 and r.vmcb["EXITINFO1"] == 1 << 56 | 0x42
    assert Backing(r.m.bus, BACKING2).test_bit(0x200, 0x42)


@pytest.mark.parametrize("icrl,dest,cause", [
    (0x4 << 8 | 0x42, 1, 0),            # SMI delivery mode: invalid type
    (1 << 15 | 0x42, 1, 0),             # level-triggered
    (0x0F, 1, 4),                       # vector below 16
    (0x42, 5, 2),                       # beyond AVIC_PHYSICAL_MAX_INDEX
])
def test_ipi_causes(icrl, dest, cause):
    """Table 15-27."""
    r = AvicRig(f"mov dword ptr [rdi + 0x310], {dest << 24:#x}\n"
                f"mov dword ptr [rdi + 0x300], {icrl:#x}\nhlt").run()
    assert r.exitcode == ExitCode.AVIC_INCOMPLETE_IPI and r.vmcb["EXITINFO2"] >> 32 == cause


def test_logical_flat_ipi_through_the_logical_table():
    r = AvicRig(f"mov dword ptr [rdi + 0x310], {0x02 << 24:#x}\n"
                f"mov dword ptr [rdi + 0x300], {1 << 11 | 0x43:#x}\nhlt")
    r.page[0xE0] = 0xFFFFFFFF                        # flat model
    r.m.bus.write(LOGICAL + 4 * 1, 4, 1 << 31 | 1)   # logical ID bit 1 -> guest physical APIC 1
    r.run()
    assert r.exitcode == ExitCode.AVIC_INCOMPLETE_IPI and Backing(r.m.bus, BACKING2).test_bit(0x200, 0x43)


def test_x2avic_msrs_reach_the_backing_page():
    """15.29.10: x2APIC MSRs map to backing-page offsets; ICR (830h) writes
    are accelerated; the timer current count (839h) faults."""
    r = AvicRig("mov ecx, 0x802\nrdmsr\nmov ebx, eax\nmov ecx, 0x808\nmov eax, 0x30\nxor edx, edx\n"
                "wrmsr\nmov ecx, 0x839\nrdmsr\nhlt", x2=True)
    r.page[0x20] = 9
    r.run()
    assert r.exitcode == ExitCode.AVIC_NOACCEL and r.vmcb["EXITINFO1"] == 0x390
    assert r.page[0x80] == 0x30 and r.vmcb["V_TPR"] == 3


@pytest.mark.parametrize("fields,rule", [
    ({"NP_ENABLE": 0}, "AVIC_NP"),
    ({"AVIC_ENABLE": 0, "X2AVIC_ENABLE": 1}, "X2AVIC_WITHOUT_AVIC"),
    ({"AVIC_PHYSICAL_MAX_INDEX": 256}, "AVIC_MAX_INDEX"),
    ({"AVIC_BACKING_PAGE": 1 << 50}, "AVIC_POINTER"),
])
def test_avic_vmrun_rules(fields, rule):
    r = AvicRig("hlt")
    for name, value in fields.items():
        r.vmcb[name] = value
    r.run()
    assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == rule


def test_doorbell_msr_is_write_only():
    from cpuharness import run_code
    res = run_code(asm("mov ecx, 0xC001011B\nrdmsr"))
    assert res.exception[:2] == (13, 0)
    res = run_code(asm("mov ecx, 0xC001011B\nmov eax, 0x100\nxor edx, edx\nwrmsr"))
    assert res.exception[:2] == (13, 0)


def test_stale_tlb_reaches_the_previous_vcpus_backing_page():
    """15.29.4.3: a vCPU run on a core that last ran another vCPU of the same
    VM must be entered with TLB_CONTROL = 3, or its APIC accesses may use the
    other vCPU's backing page.  svmsim shows the hazard, and the flush."""
    r = AvicRig(f"mov eax, [rdi + 0x20]\nhlt")
    r.page[0x20] = 0x11
    Backing(r.m.bus, BACKING2)[0x20] = 0x22
    r.run()
    assert r.vmcb["RAX"] & 0xFF == 0x11
    r.vmcb["AVIC_BACKING_PAGE"], r.vmcb["RIP"] = BACKING2, GUEST_CODE    # vCPU 1, same ASID
    r.run()
    assert r.vmcb["RAX"] & 0xFF == 0x11                                  # stale: vCPU 0's page
    r.vmcb["TLB_CONTROL"], r.vmcb["RIP"] = 3, GUEST_CODE
    r.run()
    assert r.vmcb["RAX"] & 0xFF == 0x22


# ---------------------------------------------------------------- two vCPUs on two CPUs
def _smp_vm(ir1=True, vm_b=False):
    """Two CPUs in long mode, each running one vCPU with AVIC.  vCPU 0 sends
    vector 0x50 to vCPU 1 (physical APIC ID 1) and waits for vector 0x51 back;
    vCPU 1's handler answers, EOIs, and both halt.  With ``vm_b`` the second
    CPU runs a vCPU of another VM whose backing page is not in VM A's table."""
    from cpuharness import make_machine, CODE_ADDR
    from svmsim.svm.vmcb import VmcbView
    from svmsim.svm.intercepts import set_intercept
    from svmsim.cpu.segments import ES, CS, SS, DS
    m = make_machine("long64", mem_size="32M", smp=2)
    c0, c1 = m.cpus
    for name in ("segs", "gdtr_base", "gdtr_limit", "cr0", "cr3", "cr4", "efer"):
        setattr(c1, name, [s.copy() for s in c0.segs] if name == "segs" else getattr(c0, name))
    nt = NestedTables(m.bus)
    nt.identity(0, 0x1000000)
    nt.map(APIC, APIC, 4096)
    flags, idt, code = 0x600000, 0x610000, 0x620000
    handlers = {0x50: f"mov edi, {APIC:#x}\nmov dword ptr [{flags + 4:#x}], 0x50\n"
                      f"mov dword ptr [rdi + 0xB0], 0\nmov dword ptr [rdi + 0x310], 0\n"
                      f"mov dword ptr [rdi + 0x300], 0x51\niretq",
                0x51: f"mov edi, {APIC:#x}\nmov dword ptr [{flags:#x}], 0x51\nmov dword ptr [rdi + 0xB0], 0\niretq"}
    for vec, src in handlers.items():
        at = code + 0x100 * vec
        m.bus.write_bytes(at, asm(src))
        m.bus.write(idt + 16 * vec, 8, (at & 0xFFFF) | 8 << 16 | 0x8E00 << 32 | (at >> 16 & 0xFFFF) << 48)
        m.bus.write(idt + 16 * vec + 8, 8, at >> 32)
    guest0 = asm(f"mov edi, {APIC:#x}\nmov dword ptr [rdi + 0x310], {1 << 24:#x}\n"
                 f"mov dword ptr [rdi + 0x300], 0x50\n1: pause\ncmp dword ptr [{flags:#x}], 0\nje 1b\nhlt")
    guest1 = asm(f"mov edi, {APIC:#x}\n1: pause\ncmp dword ptr [{flags + 4:#x}], 0\nje 1b\nhlt")
    table_b = 0x704000
    for i, (cpu, guest, backing, table) in enumerate(((c0, guest0, BACKING, PHYSICAL),
                                                      (c1, guest1, BACKING2, table_b if vm_b else PHYSICAL))):
        vmcb, hsave, stub = 0x300000 + 0x10000 * i, 0x301000 + 0x10000 * i, CODE_ADDR + 0x1000 * i
        m.bus.write_bytes(stub, asm(f"mov rax, {vmcb:#x}\nvmrun\nhlt"))
        m.bus.write_bytes(code + 0x1000 * i, guest)
        cpu.efer |= 1 << 12
        cpu.msr[0xC0010117] = hsave
        v = VmcbView(m.bus, vmcb)
        set_intercept(v, ExitCode.VMRUN)
        set_intercept(v, ExitCode.HLT)
        v["GUEST_ASID"], v["NP_ENABLE"], v["N_CR3"] = 1 + (i if vm_b else 0), 1, nt.root
        for name, idx in (("ES", ES), ("CS", CS), ("SS", SS), ("DS", DS)):
            s = cpu.segs[idx]
            v.set_segment(name, s.sel, s.attr, s.limit, s.base)
        v.set_segment("GDTR", 0, 0, cpu.gdtr_limit, cpu.gdtr_base)
        v.set_segment("IDTR", 0, 0, 0xFFF, idt)
        for name in ("CR0", "CR3", "CR4", "EFER"):
            v[name] = getattr(cpu, name.lower())
        v["RFLAGS"], v["RIP"], v["RSP"] = 0x202, code + 0x1000 * i, 0x680000 + 0x10000 * i
        v["DR7"], v["DR6"], v["G_PAT"] = 0x400, 0xFFFF0FF0, 0x0007040600070406
        v["AVIC_ENABLE"], v["AVIC_APIC_BAR"], v["AVIC_BACKING_PAGE"] = 1, APIC, backing
        v["AVIC_LOGICAL_TABLE"], v["AVIC_PHYSICAL_TABLE"], v["AVIC_PHYSICAL_MAX_INDEX"] = LOGICAL, table, 1
        Backing(m.bus, backing)[0x20] = i << 24
        cpu.rip, cpu.halted, cpu.wait_for_sipi = stub, False, False
        cpu.regs[4] = 0x690000 + 0x10000 * i
        cpu.update_mode()
    m.bus.write(PHYSICAL, 8, V | IR | BACKING | 0)
    if vm_b:
        m.bus.write(table_b + 8, 8, V | IR | BACKING2 | 1)     # B's own table; A has no vCPU 1
    else:
        m.bus.write(PHYSICAL + 8, 8, V | (IR if ir1 else 0) | BACKING2 | 1)
    m.run(max_insns=2_000_000)
    return m, flags


def test_ipis_between_running_vcpus_need_no_exit():
    """15.29.6.1: both vCPUs run (IsRunning); each IPI sets the target's IRR
    and rings its core's doorbell, and the target takes it at once."""
    m, flags = _smp_vm()
    assert m.bus.read(flags + 4, 4) == 0x50 and m.bus.read(flags, 4) == 0x51
    exits = {code for c in m.cpus for code in c.svm.exits}
    assert exits == {int(ExitCode.HLT)}


def test_ipi_cannot_reach_another_vm():
    """Isolation: VM A's physical APIC ID table holds only A's backing pages;
    A's IPI to an ID it does not own exits (invalid target) and VM B's vCPU
    on the other core never sees it."""
    m, flags = _smp_vm(vm_b=True)
    assert m.bus.read(flags + 4, 4) == 0                  # B got nothing
    assert not Backing(m.bus, BACKING2).test_bit(0x200, 0x50)
    assert m.cpus[0].svm.exits.get(int(ExitCode.AVIC_INCOMPLETE_IPI)) == 1


def test_noaccel_exit_is_named_in_the_trace():
    from svmsim.trace import decorate, format_event
    r = AvicRig("mov eax, [rdi + 0x90]\nhlt").run()
    (ev,) = [e for e in r.events if e["type"] == "vmexit"]
    assert format_event(decorate(r.m, ev)).startswith("[cpu0] #VMEXIT AVIC_NOACCEL (0x402) info1=0x90 ")


# ---------------------------------------------------------------- the SMP hypervisor kernel
@pytest.fixture(scope="module")
def smp_kernel_run():
    """tests/guests/svm_avic.c on two CPUs, as a user runs it, with the exit trace."""
    import subprocess
    import sys
    import guestbuild as gb
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", "--smp", "2", "--trace", "vmexit,interrupts",
                        "--exit-coverage", str(gb.build_guest("svm_avic"))], capture_output=True, text=True, timeout=300)
    return p, gb


def test_smp_hypervisor_kernel_ipis_with_and_without_exits(smp_kernel_run):
    """Two vCPUs of one VM on two CPUs (15.29.6.1, 15.29.8, 15.29.9.1): IPIs
    between running vCPUs and the host's doorbell need no #VMEXIT; an IPI to
    a halted vCPU exits with AVIC_INCOMPLETE_IPI ID 1 and the hypervisor's
    wake-up delivers it at VMRUN; nothing reaches VM B or the hosts."""
    p, gb = smp_kernel_run
    assert p.returncode == gb.STATUS_PASS, p.stdout + p.stderr[-2000:]
    for line in (
            "svm_avic: xAVIC, the APIC page; VM A = A0 on CPU 0, A1 on CPU 1; VM B = B2 on CPU 1",
            "A0 took: 51 56 57", "A1 took: 50 52 53 55 56", "B2 took: nothing",
            "  step 3: AVIC_INCOMPLETE_IPI ICR 01000000:00000052, ID 1 (IPI target not running), index 1",
            "  step 6: AVIC_INCOMPLETE_IPI ICR 00000000:00000057, ID 1 (IPI target not running), index 0",
            "  step 7: AVIC_INCOMPLETE_IPI ICR 02000000:00000054, ID 2 (invalid IPI target), index 2",
            "  step 8: AVIC_INCOMPLETE_IPI ICR 00000000:000c0055, ID 1 (IPI target not running), index 1",
            "1. A0 -> A1 50h and A1 -> A0 51h while both run: delivered, no #VMEXIT",
            "3. host posts 53h to running A1 (IRR bit, doorbell MSR to CPU 1): taken, no #VMEXIT",
            "   VM B's vCPU: nothing in its IRR, ISR or handlers",
            "   host CPUs: no guest vector in their APICs or handlers",
            "svm_avic: PASS"):
        assert line + "\n" in p.stdout, line
    assert "FAIL" not in p.stdout


@pytest.mark.slow
def test_smp_hypervisor_kernel_under_x2avic():
    """The same hypervisor with X2AVIC_ENABLE (15.29.10): the guests use the
    x2APIC MSRs (ICR 830h with a 32-bit destination, EOI 80Bh, ID 802h)."""
    import io
    import guestbuild as gb
    from svmsim.machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size="128M", smp=2, serial_out=out)
    m.load_kernel(str(gb.build_guest("svm_avic")), "x2avic=1")
    r = m.run(max_insns=50_000_000, timeout=300)
    text = out.getvalue().decode()
    assert r.status == gb.STATUS_PASS, text + r.reason
    for line in ("svm_avic: x2AVIC, x2APIC MSRs; VM A = A0 on CPU 0, A1 on CPU 1; VM B = B2 on CPU 1",
                 "  step 3: AVIC_INCOMPLETE_IPI ICR 00000001:00000052, ID 1 (IPI target not running), index 1",
                 "  step 9: AVIC_INCOMPLETE_IPI ICR ffffffff:00000056, ID 1 (IPI target not running), index 1",
                 "A0 took: 51 56 57", "A1 took: 50 52 53 55 56", "B2 took: nothing",
                 "1. A0 -> A1 50h and A1 -> A0 51h while both run: delivered, no #VMEXIT"):
        assert line + "\n" in text, line
    assert "FAIL" not in text


def test_smp_hypervisor_kernel_exits_named_in_trace_and_report(smp_kernel_run):
    p, _ = smp_kernel_run
    assert "[cpu0] #VMEXIT AVIC_INCOMPLETE_IPI (0x401) info1=0x100000000000052 info2=0x100000001 " in p.stderr
    assert "[cpu1] #VMEXIT AVIC_INCOMPLETE_IPI (0x401) info1=0x57 info2=0x100000000 " in p.stderr
    assert "svmsim:   0x401 AVIC_INCOMPLETE_IPI: 5\n" in p.stderr
    assert "svmsim:   AVIC_INCOMPLETE_IPI fired 5 (no intercept bit)\n" in p.stderr
    assert "[cpu1 guest] deliver interrupt vector=0x50 (AVIC) rip=" in p.stderr      # from the backing page
    assert "[cpu1] deliver interrupt vector=0xe0 rip=" in p.stderr                 # the host's wake-up IPI
    assert "svmsim:   HLT                 fired 3\n" in p.stderr      # the column fits the AVIC name


def test_smp_hypervisor_kernel_needs_avic():
    import io
    import guestbuild as gb
    from svmsim.machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size="128M", smp=2, cpu="epyc,-avic", serial_out=out)
    m.load_kernel(str(gb.build_guest("svm_avic")), "")
    assert m.run(max_insns=5_000_000).status == gb.STATUS_FAIL
    assert out.getvalue() == b"svm_avic: start\nsvm_avic: CPUID 8000_000A EDX[AVIC] = 0\n"


def test_smp_hypervisor_kernel_on_qemu_finds_no_avic():
    """QEMU 7.2 TCG has no AVIC (CPUID 8000_000A EDX[13] = 0): the kernel
    says so and fails there; the manual alone decides svmsim's transcript."""
    import guestbuild as gb
    if not gb.qemu_available():
        pytest.skip("qemu-system-x86_64 not installed")
    status, out = gb.qemu_run(gb.build_guest("svm_avic"), smp=2)
    assert (status, out) == (gb.STATUS_FAIL, b"svm_avic: start\nsvm_avic: CPUID 8000_000A EDX[AVIC] = 0\n")


def test_smp_hypervisor_kernel_on_one_cpu_says_what_it_needs():
    import io
    import guestbuild as gb
    from svmsim.machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size="128M", smp=1, serial_out=out)
    m.load_kernel(str(gb.build_guest("svm_avic")), "")
    assert m.run(max_insns=5_000_000).status == gb.STATUS_FAIL
    assert out.getvalue() == b"svm_avic: start\nsvm_avic: needs 2 CPUs (--smp 2), the machine has 1\n"
