"""The reference VMM: a Multiboot kernel as an SVM guest under nested paging.

Host side (all in host RAM below ``GUEST_BASE``): a 64-bit host with
identity paging for the first 4 GiB, the VMM's host stub, the VMCB, the host
save area, the IOPM/MSRPM and the nested page tables.  Guest side: guest-
physical 0..``guest_mem`` is host RAM at ``GUEST_BASE``; the local and I/O
APIC pages are passed through.  The guest boots exactly as QEMU's -kernel
would boot it (``svmsim.boot.multiboot``), in 32-bit protected mode with
paging off.

Exits handled (APM vol 2, ch. 15): IOIO (port I/O is forwarded to the
machine's devices, so COM1 prints and isa-debug-exit ends the run), CPUID
(passed through with the hypervisor bit and leaves 4000_0000h), HLT (the
guest is done unless an interrupt can wake it), SHUTDOWN, #NPF and
VMEXIT_INVALID (reported).  ``Vmm.exits`` counts them by name.

vCPU *i* runs on the machine's CPU *i* (one host stub, VMCB and host save
area each; vCPU 0 at the addresses above, the others in ``VCPU_AREA``), in
the machine's round-robin quanta.  The guest's local APIC page is passed
through, so each vCPU uses its own CPU's APIC: an AP's INIT-SIPI-SIPI
reaches that CPU, which waits for it in the host; the VMM starts the vCPU
when the SIPI arrives (an SEV-ES guest's vCPUs: ``sev_es``).
"""
from dataclasses import dataclass, field

from ..boot import multiboot
from ..cpu.segments import Segment, ES, CS, SS, DS, FS, GS
from ..svm.exits import ExitCode, exit_name, decode_ioio, from_vmcb
from ..svm.intercepts import set_intercept
from ..svm.vmcb import VmcbView

# Host RAM layout of the VMM (the guest's memory starts at GUEST_BASE).
HOST_PML4, HOST_PDPT, HOST_PD = 0x10000, 0x11000, 0x12000      # 0x12000-0x15FFF
HOST_GDT, HOST_STUB = 0x16000, 0x17000
VMCB_PA, HSAVE_PA, MSRPM_PA, IOPM_PA = 0x18000, 0x19000, 0x1A000, 0x1C000
NESTED_BASE = 0x20000                       # nested tables: bump-allocated pages
NESTED_LIMIT = 0x80000
HOST_STACK = 0x90000
VCPU_AREA, VCPU_STRIDE = 0x200000, 0x4000   # per vCPU: VMSA, then (vCPU 1..) VMCB, host save, stub
GUEST_BASE = 0x1000000                      # 16 MiB
PASSTHROUGH = ((0xFEC00000, 0xFEC01000), (0xFEE00000, 0xFEE01000))   # I/O APIC, local APIC
HV_SIGNATURE = b"svmsimRefVMM"              # CPUID 4000_0000h EBX:ECX:EDX
QUANTUM = 1000
GPR_INDEX = {"rcx": 1, "rdx": 2, "rbx": 3, "rbp": 5, "rsi": 6, "rdi": 7}


def skip(vmcb, rip: int) -> None:
    """Resume the guest after the instruction it exited on: that instruction
    is done, so an interrupt shadow it ran in (STI; HLT) ends with it, as KVM
    clears it when it skips an emulated instruction."""
    vmcb["RIP"], vmcb["INTERRUPT_SHADOW"] = rip, 0


class GuestExit(Exception):
    """The VMM stopped the guest (with a reason a user can read)."""


@dataclass
class VmmResult:
    reason: str
    exits: dict
    guest_rip: int | None           # None for an SEV-ES guest: its RIP is in the encrypted VMSA
    ghcb: dict = field(default_factory=dict)    # SEV-ES: GHCB requests by name


@dataclass
class Vcpu:
    """One virtual CPU, pinned to a physical CPU of the machine."""
    index: int
    cpu: object
    vmcb_pa: int
    hsave_pa: int
    stub_pa: int
    stack: int
    vmsa_pa: int
    vmcb: VmcbView
    state: str = "running"          # running | halted | wait-sipi | held | stopped
    es: bool = False                # an SEV-ES vCPU (svmsim.vmm.sev_es)
    hold: str = ""                  # SEV-ES AP reset hold: "nae" or "msr"
    dr7: int = 0x400                # SEV-ES: the DR7 the guest gave through the GHCB
    tsc_aux: int = 0
    ghcb_registered: int | None = None


class _GuestMemory:
    """The guest-physical address space as the Multiboot loader sees a bus."""

    def __init__(self, bus, size):
        self.bus, self.size = bus, size
        self.ram = type("Ram", (), {"size": size})()
        self.low_top = size
        self.high_top = 1 << 32

    def ram_offset(self, gpa):
        return gpa if 0 <= gpa < self.size else None

    def write_bytes(self, gpa, data):
        self.bus.write_bytes(GUEST_BASE + gpa, data)

    def read_bytes(self, gpa, n):
        return self.bus.read_bytes(GUEST_BASE + gpa, n)

    def zero_bytes(self, gpa, n):
        self.bus.zero_bytes(GUEST_BASE + gpa, n)


class Vmm:
    """Run one guest with ``vcpus`` vCPUs on the first CPUs of ``machine``
    (which must have SVM)."""

    GUEST_MEM = 32 << 20

    def __init__(self, machine, guest_mem: int = GUEST_MEM, asid: int = 1, vcpus: int = 1):
        if GUEST_BASE + guest_mem > machine.bus.low_top:
            raise GuestExit(f"the machine needs at least {(GUEST_BASE + guest_mem) >> 20} MiB of RAM")
        if not 1 <= vcpus <= len(machine.cpus):
            raise GuestExit(f"{vcpus} vCPUs need a machine with at least {vcpus} CPUs "
                            f"(it has {len(machine.cpus)})")
        self.m = machine
        self.guest_mem = guest_mem
        self.asid = asid
        self.mem = _GuestMemory(machine.bus, guest_mem)
        self.vcpus = [self._make_vcpu(i) for i in range(vcpus)]
        self.cpu, self.vmcb = self.vcpus[0].cpu, self.vcpus[0].vmcb
        self.exits: dict = {}
        self.gprs: dict = {}
        self.es = None                   # the SEV-ES exit handler, once launched as one
        self._next_table = NESTED_BASE
        self._page_tables()
        for v in self.vcpus:
            self._host_setup(v)
            v.cpu.wait_for_sipi = v.state == "wait-sipi"      # an AP's CPU waits for its SIPI
        self.n_cr3 = self._nested_tables()
        for v in self.vcpus:
            self._vmcb_setup(v)

    def _make_vcpu(self, i):
        base = VCPU_AREA + i * VCPU_STRIDE
        if i == 0:
            vmcb, hsave, stub, stack = VMCB_PA, HSAVE_PA, HOST_STUB, HOST_STACK
        else:
            vmcb, hsave, stub, stack = base + 0x1000, base + 0x2000, base + 0x3000, base + 0x4000
        return Vcpu(i, self.m.cpus[i], vmcb, hsave, stub, stack, base,
                    VmcbView(self.m.bus, vmcb), state="running" if i == 0 else "wait-sipi")

    # ---------------------------------------------------------------- host
    def _page_tables(self):
        bus = self.m.bus
        bus.write(HOST_PML4, 8, HOST_PDPT | 3)
        for g in range(4):
            bus.write(HOST_PDPT + 8 * g, 8, (HOST_PD + 0x1000 * g) | 3)
            for i in range(512):
                bus.write(HOST_PD + 0x1000 * g + 8 * i, 8, ((g * 512 + i) << 21) | 0x83)
        bus.write(HOST_GDT + 8, 8, 0x00AF9A000000FFFF)            # 64-bit code
        bus.write(HOST_GDT + 16, 8, 0x00CF92000000FFFF)           # data

    def _host_setup(self, vcpu: Vcpu, stub: bytes = b""):
        """The host side of one CPU: 64-bit mode, SVM on, its host save area,
        and the stub ``mov rax, VMCB; vmrun; hlt`` (``stub`` goes first)."""
        bus, cpu = self.m.bus, vcpu.cpu
        bus.write_bytes(vcpu.stub_pa, stub + bytes.fromhex("48b8") + vcpu.vmcb_pa.to_bytes(8, "little")
                        + bytes.fromhex("0f01d8f4"))
        cpu.gdtr_base, cpu.gdtr_limit = HOST_GDT, 23
        cpu.idtr_base, cpu.idtr_limit = 0, 0
        data = Segment(0x10, 0, 0xFFFFFFFF, 0xC93)
        for i in (ES, SS, DS, FS, GS):
            cpu.segs[i] = data.copy()
        cpu.segs[CS] = Segment(0x08, 0, 0xFFFFFFFF, 0xA9B)
        cpu.cr3, cpu.cr4 = HOST_PML4, 1 << 5
        cpu.efer = (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12)   # LME LMA NXE SVME
        cpu.cr0 = 0x80010031
        cpu.msr[0xC0010117] = vcpu.hsave_pa
        cpu.regs[4] = vcpu.stack
        cpu.wait_for_sipi = cpu.init_pending = False
        cpu.tlb.flush_all("vmm")
        cpu.update_mode()

    # ---------------------------------------------------------------- nested tables
    def _alloc(self):
        a = self._next_table
        if a >= NESTED_LIMIT:
            raise GuestExit("out of room for nested page tables")
        self._next_table += 0x1000
        self.m.bus.write_bytes(a, bytes(4096))
        return a

    def _map(self, root, gpa, spa, size, flags=7):
        """One nested mapping (4 KiB or 2 MiB), host long-mode format, P|RW|US."""
        bus, table = self.m.bus, root
        for level in (4, 3) if size == 1 << 21 else (4, 3, 2):
            addr = table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8
            e = bus.read(addr, 8)
            if not e & 1:
                e = self._alloc() | 7
                bus.write(addr, 8, e)
            table = e & 0x000FFFFFFFFFF000
        level = 2 if size == 1 << 21 else 1
        bus.write(table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8, 8,
                  spa | flags | (0x80 if level == 2 else 0))

    def map_region(self, gpa, spa, size):
        """Map host memory at ``spa`` to guest-physical ``gpa`` (a firmware
        image, say), with 2 MiB pages where both sides are aligned."""
        end = gpa + size
        while gpa < end:
            step = 1 << 21 if not (gpa | spa) & ((1 << 21) - 1) and end - gpa >= 1 << 21 else 0x1000
            self._map(self.n_cr3, gpa, spa, step)
            gpa, spa = gpa + step, spa + step

    def _nested_tables(self):
        root = self._alloc()
        for gpa in range(0, self.guest_mem, 1 << 21):
            self._map(root, gpa, GUEST_BASE + gpa, 1 << 21)
        for lo, hi in PASSTHROUGH:
            for a in range(lo, hi, 0x1000):
                self._map(root, a, a, 0x1000)
        return root

    # ---------------------------------------------------------------- VMCB
    def _vmcb_setup(self, vcpu: Vcpu):
        v = vcpu.vmcb
        self.m.bus.write_bytes(vcpu.vmcb_pa, bytes(4096))
        self.m.bus.write_bytes(IOPM_PA, b"\xff" * 0x3000)         # every port exits
        self.m.bus.write_bytes(MSRPM_PA, bytes(0x2000))
        for code in (ExitCode.VMRUN, ExitCode.IOIO, ExitCode.CPUID, ExitCode.HLT,
                     ExitCode.SHUTDOWN, ExitCode.MSR, ExitCode.VMMCALL):
            set_intercept(v, code)
        v["GUEST_ASID"], v["IOPM_BASE_PA"], v["MSRPM_BASE_PA"] = self.asid, IOPM_PA, MSRPM_PA
        v["NP_ENABLE"], v["N_CR3"], v["G_PAT"] = 1, self.n_cr3, 0x0007040600070406
        v["TLB_CONTROL"] = 1

    def load_kernel(self, path: str, append: str = ""):
        """Load a Multiboot kernel into guest memory and set the guest's entry
        state as QEMU's -kernel leaves it (32-bit protected mode, paging off)."""
        info = multiboot.load_multiboot(self.mem, path, append, [], mem_size=self.guest_mem,
                                        amd_ht_hole=False)
        v = self.vmcb
        for name, seg in (("ES", "es"), ("CS", "cs"), ("SS", "ss"), ("DS", "ds")):
            s = info.segments[seg]
            v.set_segment(name, s.selector, s.attrib, s.limit, s.base)
        v.set_segment("GDTR", 0, 0, info.gdtr.limit, info.gdtr.base)
        v.set_segment("IDTR", 0, 0, info.idtr.limit, info.idtr.base)
        v["CR0"], v["CR3"], v["CR4"] = info.cr0, info.cr3, info.cr4
        v["EFER"] = info.efer | (1 << 12)                           # SVME for VMRUN's check
        v["RFLAGS"], v["RIP"] = info.eflags, info.regs.get("eip", info.entry)
        v["RSP"], v["RAX"] = info.regs.get("esp", 0), info.regs.get("eax", 0)
        v["DR7"], v["DR6"] = 0x400, 0xFFFF0FF0
        self.gprs = {"rbx": info.regs.get("ebx", 0), "rcx": info.regs.get("ecx", 0)}
        return info

    # ---------------------------------------------------------------- running
    def run(self, max_exits: int = 1_000_000, max_insns: int = 200_000_000,
            timeout: float | None = None) -> VmmResult:
        """VMRUN every runnable vCPU in turn, a quantum each, handling each
        exit, until the guest is done (or ``timeout`` seconds of host time)."""
        import time
        m = self.m
        deadline = None if timeout is None else time.monotonic() + timeout
        for name, value in self.gprs.items():          # the BSP's GPRs other than RAX
            self.cpu.regs[GPR_INDEX[name]] = value
        for v in self.vcpus:
            if v.state == "running":
                self._enter(v)
        done = exits = 0
        while True:
            ran = False
            for v in self.vcpus:
                if v.state != "running" and not self._wake(v):
                    continue
                cpu = v.cpu
                m.current_cpu = cpu
                busy = cpu.stall > 0 or cpu.pending    # paying for a PAUSE or a long REP
                n = m.engine.run(cpu, QUANTUM)
                done += n
                ran = ran or n > 0 or busy
                if m.stopping:
                    return self._result(m.stop_reason)
                if cpu.halted and not cpu.svm_guest:          # the stub's HLT: an exit
                    exits += 1
                    reason = self._handle_exit(v)
                    if reason:
                        return self._result(reason)
                    if v.state == "running":
                        self._enter(v)
            if done >= max_insns:
                return self._result(f"instruction budget of {max_insns} exhausted")
            if exits >= max_exits:
                return self._result(f"{max_exits} exits")
            if deadline is not None and time.monotonic() > deadline:
                return self._result(f"timeout after {timeout:g} s")
            if ran:
                self._tick()
            elif not self._idle():
                return self._result(self._stuck_reason())

    def _enter(self, v: Vcpu):
        v.cpu.rip, v.cpu.halted = v.stub_pa, False

    def _result(self, reason):
        if self.m.enc_lines is not None:
            self.m.enc_lines.write_back_all()        # DRAM up to date for whoever looks next
        rip = None if self.vcpus[0].es else self.vmcb["RIP"]
        ghcb = dict(self.es.requests) if self.es else {}
        return VmmResult(reason, dict(self.exits), rip, ghcb)

    def _idle(self) -> bool:
        """No vCPU ran: if one halted with interrupts enabled, let time pass
        to the next timer; False if nothing can ever wake any of them."""
        clock = self.m.clock
        if clock.next_deadline == float("inf") or not any(v.state == "halted" for v in self.vcpus):
            return False
        clock.now_ns = max(clock.now_ns, clock.next_deadline)
        clock.run_due()
        return True

    def _stuck_reason(self):
        v = self.vcpus[0]
        if self.vcpus[0].es:
            return "guest halted and nothing can wake it"
        return f"guest halted at rip={v.vmcb['RIP']:#x} and nothing can wake it"

    def _wake(self, v: Vcpu) -> bool:
        """A halted vCPU wakes when its CPU has an interrupt for it; one that
        waits for a SIPI (or, SEV-ES, holds in AP reset hold) when its CPU got
        one.  True if it is running again."""
        cpu = v.cpu
        if v.state == "halted" and self.m.interrupt_pending(cpu):
            v.state = "running"
        elif v.state in ("wait-sipi", "held") and not cpu.wait_for_sipi and not cpu.halted:
            # INIT put the CPU in wait-for-SIPI and a SIPI took it out of it.
            vector = cpu.segs[CS].sel >> 8
            self._host_setup(v, self.es.stub_prologue(v) if self.es else b"")
            self._sipi(v, vector)
        if v.state == "running":
            self._enter(v)
            return True
        return False

    def _sipi(self, v: Vcpu, vector: int):
        """An AP got INIT-SIPI-SIPI: it starts in real mode at vector:0000 (a
        plain guest) or as its SEV-ES state says."""
        if self.es and v.es:
            self.es.sipi(v)
            return
        g = v.vmcb
        g.set_segment("CS", vector << 8, 0x9B, 0xFFFF, vector << 12)
        for seg in ("DS", "ES", "SS", "FS", "GS"):
            g.set_segment(seg, 0, 0x93, 0xFFFF, 0)
        g.set_segment("GDTR", 0, 0, 0xFFFF, 0)
        g.set_segment("IDTR", 0, 0, 0xFFFF, 0)
        g["RIP"], g["RSP"], g["RAX"], g["RFLAGS"] = 0, 0, 0, 2
        g["CR0"], g["CR3"], g["CR4"], g["EFER"] = 0x10, 0, 0, 1 << 12
        g["DR7"], g["DR6"] = 0x400, 0xFFFF0FF0
        v.state = "running"

    def _handle_exit(self, vcpu: Vcpu):
        if self.es and vcpu.es:
            return self.es.handle_exit(vcpu)
        v = vcpu.vmcb
        code = from_vmcb(v["EXITCODE"])
        self.count_exit(code)
        v["TLB_CONTROL"] = 0
        if code == ExitCode.IOIO:
            self._ioio(vcpu, v["EXITINFO1"])
            skip(v, v["EXITINFO2"])
        elif code == ExitCode.CPUID:
            self._cpuid(vcpu)
            skip(v, v["NRIP"])
        elif code == ExitCode.MSR:
            return self._msr(vcpu, v["EXITINFO1"])
        elif code == ExitCode.HLT:
            skip(v, v["NRIP"])
            vcpu.state = "halted" if v["RFLAGS"] & (1 << 9) else "stopped"
        elif code == ExitCode.INVALID:
            return f"VMRUN failed: {vcpu.cpu.svm.invalid[-1]}"
        else:
            return (f"guest exit {exit_name(code)} ({int(code):#x}) info1={v['EXITINFO1']:#x} "
                    f"info2={v['EXITINFO2']:#x} at rip={v['RIP']:#x}")
        return None

    def count_exit(self, code):
        name = exit_name(code)
        self.exits[name] = self.exits.get(name, 0) + 1

    def _tick(self):
        """Virtual time passes by quanta, as in the machine's own loop."""
        clock = self.m.clock
        clock.advance(QUANTUM * clock.ns_per_insn)
        if clock.next_deadline <= clock.now_ns:
            clock.run_due()

    def _ioio(self, vcpu: Vcpu, info1):
        """Forward the guest's port access to the machine's devices."""
        f = decode_ioio(info1)
        if f["string"]:
            raise GuestExit("string port I/O from the guest is not handled by the reference VMM")
        v = vcpu.vmcb
        mask = (1 << (8 * f["size"])) - 1
        if f["in"]:
            v["RAX"] = (v["RAX"] & ~mask) | (self.port_read(f["port"], f["size"]) & mask)
        else:
            self.port_write(f["port"], f["size"], v["RAX"] & mask)

    def port_read(self, port: int, size: int) -> int:
        return self.m.io.read(port, size)

    def port_write(self, port: int, size: int, value: int) -> None:
        self.m.io.write(port, size, value)

    def _cpuid(self, vcpu: Vcpu = None):
        vcpu = vcpu or self.vcpus[0]
        cpu, v = vcpu.cpu, vcpu.vmcb
        a, b, c, d = self.cpuid(cpu, v["RAX"] & 0xFFFFFFFF, cpu.regs[1] & 0xFFFFFFFF)
        v["RAX"] = a
        cpu.regs[3], cpu.regs[1], cpu.regs[2] = b, c, d

    @staticmethod
    def cpuid(cpu, leaf: int, sub: int) -> tuple:
        """CPUID as this hypervisor presents it: the CPU's leaves with the
        hypervisor bit, its own leaves at 4000_0000h, no nested SVM."""
        from ..cpu.cpuid import cpuid
        if 0x40000000 <= leaf <= 0x400000FF:
            sig = HV_SIGNATURE
            return (0x40000000, int.from_bytes(sig[0:4], "little"),
                    int.from_bytes(sig[4:8], "little"), int.from_bytes(sig[8:12], "little")) \
                if leaf == 0x40000000 else (0, 0, 0, 0)
        a, b, c, d = cpuid(cpu, leaf, sub)
        if leaf == 1:
            c |= 1 << 31                     # a hypervisor is present (seed S7)
        if leaf == 0x80000001:
            c &= ~(1 << 2)                   # no nested SVM for this guest
        return a, b, c, d

    def _msr(self, vcpu: Vcpu, info1):
        return f"guest MSR access ({'WRMSR' if info1 else 'RDMSR'} {vcpu.cpu.regs[1] & 0xFFFFFFFF:#x}) " \
               "outside the MSRPM ranges"
