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
"""
from dataclasses import dataclass

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
GUEST_BASE = 0x1000000                      # 16 MiB
PASSTHROUGH = ((0xFEC00000, 0xFEC01000), (0xFEE00000, 0xFEE01000))   # I/O APIC, local APIC
HV_SIGNATURE = b"svmsimRefVMM"              # CPUID 4000_0000h EBX:ECX:EDX
QUANTUM = 1000
GPR_INDEX = {"rcx": 1, "rdx": 2, "rbx": 3, "rbp": 5, "rsi": 6, "rdi": 7}


class GuestExit(Exception):
    """The VMM stopped the guest (with a reason a user can read)."""


@dataclass
class VmmResult:
    reason: str
    exits: dict
    guest_rip: int


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
    """Run one guest on CPU 0 of ``machine`` (which must have SVM)."""

    GUEST_MEM = 32 << 20

    def __init__(self, machine, guest_mem: int = GUEST_MEM, asid: int = 1):
        if GUEST_BASE + guest_mem > machine.bus.low_top:
            raise GuestExit(f"the machine needs at least {(GUEST_BASE + guest_mem) >> 20} MiB of RAM")
        self.m = machine
        self.cpu = machine.cpus[0]
        self.guest_mem = guest_mem
        self.asid = asid
        self.mem = _GuestMemory(machine.bus, guest_mem)
        self.vmcb = VmcbView(machine.bus, VMCB_PA)
        self.exits: dict = {}
        self.gprs: dict = {}
        self._next_table = NESTED_BASE
        self._host_setup()
        self.n_cr3 = self._nested_tables()
        self._vmcb_setup()

    # ---------------------------------------------------------------- host
    def _host_setup(self):
        bus, cpu = self.m.bus, self.cpu
        bus.write(HOST_PML4, 8, HOST_PDPT | 3)
        for g in range(4):
            bus.write(HOST_PDPT + 8 * g, 8, (HOST_PD + 0x1000 * g) | 3)
            for i in range(512):
                bus.write(HOST_PD + 0x1000 * g + 8 * i, 8, ((g * 512 + i) << 21) | 0x83)
        bus.write(HOST_GDT + 8, 8, 0x00AF9A000000FFFF)            # 64-bit code
        bus.write(HOST_GDT + 16, 8, 0x00CF92000000FFFF)           # data
        bus.write_bytes(HOST_STUB, bytes.fromhex("48b8") + VMCB_PA.to_bytes(8, "little")
                        + bytes.fromhex("0f01d8f4"))              # mov rax, VMCB; vmrun; hlt
        cpu.gdtr_base, cpu.gdtr_limit = HOST_GDT, 23
        cpu.idtr_base, cpu.idtr_limit = 0, 0
        data = Segment(0x10, 0, 0xFFFFFFFF, 0xC93)
        for i in (ES, SS, DS, FS, GS):
            cpu.segs[i] = data.copy()
        cpu.segs[CS] = Segment(0x08, 0, 0xFFFFFFFF, 0xA9B)
        cpu.cr3, cpu.cr4 = HOST_PML4, 1 << 5
        cpu.efer = (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12)   # LME LMA NXE SVME
        cpu.cr0 = 0x80010031
        cpu.msr[0xC0010117] = HSAVE_PA
        cpu.regs[4] = HOST_STACK
        cpu.wait_for_sipi = False
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

    def _map(self, root, gpa, spa, size):
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
                  spa | 7 | (0x80 if level == 2 else 0))

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
    def _vmcb_setup(self):
        v = self.vmcb
        self.m.bus.write_bytes(VMCB_PA, bytes(4096))
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
    def run(self, max_exits: int = 1_000_000, max_insns: int = 200_000_000) -> VmmResult:
        """VMRUN until the guest is done; handle each exit."""
        cpu, m = self.cpu, self.m
        regs = cpu.regs
        for name, value in self.gprs.items():          # the guest's GPRs other than RAX
            regs[GPR_INDEX[name]] = value
        done = 0
        for _ in range(max_exits):
            cpu.rip, cpu.halted = HOST_STUB, False
            while not cpu.halted and not m.stopping and done < max_insns:
                stalled = cpu.stall > 0                 # paying for a PAUSE or a long REP
                n = m.engine.run(cpu, QUANTUM)
                done += n
                self._tick()
                if n == 0 and not cpu.pending and not stalled:
                    break
            if m.stopping:
                return VmmResult(m.stop_reason, dict(self.exits), self.vmcb["RIP"])
            if done >= max_insns:
                return VmmResult(f"instruction budget of {max_insns} exhausted", dict(self.exits),
                                 self.vmcb["RIP"])
            reason = self._handle_exit()
            if reason:
                return VmmResult(reason, dict(self.exits), self.vmcb["RIP"])
        return VmmResult(f"{max_exits} exits", dict(self.exits), self.vmcb["RIP"])

    def _handle_exit(self):
        v = self.vmcb
        code = from_vmcb(v["EXITCODE"])
        name = exit_name(code)
        self.exits[name] = self.exits.get(name, 0) + 1
        v["TLB_CONTROL"] = 0
        if code == ExitCode.IOIO:
            self._ioio(v["EXITINFO1"])
            v["RIP"] = v["EXITINFO2"]
        elif code == ExitCode.CPUID:
            self._cpuid()
            v["RIP"] = v["NRIP"]
        elif code == ExitCode.MSR:
            return self._msr(v["EXITINFO1"])
        elif code == ExitCode.HLT:
            v["RIP"] = v["NRIP"]
            if not self._wait_for_interrupt():
                return f"guest halted at rip={v['RIP']:#x} and nothing can wake it"
        elif code == ExitCode.INVALID:
            return f"VMRUN failed: {self.cpu.svm.invalid[-1]}"
        else:
            return (f"guest exit {name} ({int(code):#x}) info1={v['EXITINFO1']:#x} "
                    f"info2={v['EXITINFO2']:#x} at rip={v['RIP']:#x}")
        return None

    def _tick(self):
        """Virtual time passes by quanta, as in the machine's own loop."""
        clock = self.m.clock
        clock.advance(QUANTUM * clock.ns_per_insn)
        if clock.next_deadline <= clock.now_ns:
            clock.run_due()

    def _wait_for_interrupt(self):
        """HLT with the guest's IF set: let time pass until an interrupt is
        pending, then re-enter (it is delivered through the guest's IDT)."""
        if not self.vmcb["RFLAGS"] & (1 << 9):
            return False
        m, clock = self.m, self.m.clock
        while not m.interrupt_pending(self.cpu):
            if clock.next_deadline == float("inf"):
                return False
            clock.now_ns = max(clock.now_ns, clock.next_deadline)
            clock.run_due()
        return True

    def _ioio(self, info1):
        """Forward the guest's port access to the machine's devices."""
        f = decode_ioio(info1)
        if f["string"]:
            raise GuestExit("string port I/O from the guest is not handled by the reference VMM")
        v, io = self.vmcb, self.m.io
        mask = (1 << (8 * f["size"])) - 1
        if f["in"]:
            v["RAX"] = (v["RAX"] & ~mask) | (io.read(f["port"], f["size"]) & mask)
        else:
            io.write(f["port"], f["size"], v["RAX"] & mask)

    def _cpuid(self):
        from ..cpu.cpuid import cpuid
        cpu, v = self.cpu, self.vmcb
        leaf, sub = v["RAX"] & 0xFFFFFFFF, cpu.regs[1] & 0xFFFFFFFF
        if 0x40000000 <= leaf <= 0x400000FF:
            sig = HV_SIGNATURE
            a, b, c, d = (0x40000000, int.from_bytes(sig[0:4], "little"),
                          int.from_bytes(sig[4:8], "little"), int.from_bytes(sig[8:12], "little")) \
                if leaf == 0x40000000 else (0, 0, 0, 0)
        else:
            a, b, c, d = cpuid(cpu, leaf, sub)
            if leaf == 1:
                c |= 1 << 31                     # a hypervisor is present (seed S7)
            if leaf == 0x80000001:
                c &= ~(1 << 2)                   # no nested SVM for this guest
        v["RAX"] = a
        cpu.regs[3], cpu.regs[1], cpu.regs[2] = b, c, d

    def _msr(self, info1):
        return f"guest MSR access ({'WRMSR' if info1 else 'RDMSR'} {self.cpu.regs[1] & 0xFFFFFFFF:#x}) " \
               "outside the MSRPM ranges"
