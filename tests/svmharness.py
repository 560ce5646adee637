"""A tiny hypervisor harness: a host stub that executes VMRUN on one VMCB,
and helpers to build the VMCB from Python (for unit tests of SVM rules).

``SvmRig(guest_asm)`` puts the BSP in 64-bit mode with SVM enabled
(EFER.SVME, VM_HSAVE_PA), writes a VMCB for a 64-bit guest that shares the
host's page tables and GDT (VMRUN intercepted, ASID 1, zeroed IOPM and
MSRPM), and places the guest code at GUEST_CODE.  ``rig.run()`` (re)starts
the host stub ``mov rax, VMCB; vmrun; hlt`` and runs until a CPU halts,
so it returns after the first #VMEXIT (the host halts) or when the guest
itself halts without an intercept.  ``rig.vmcb`` is a VmcbView.

With ``idt=True`` the guest gets an IDT whose gate v records v (dword at
REC) and the error-code-free RSP (qword at REC + 8) and halts.
"""
from cpuharness import make_machine, asm, CODE_ADDR
from svmsim.svm.vmcb import VmcbView
from svmsim.svm.intercepts import set_intercept
from svmsim.svm.exits import ExitCode, from_vmcb
from svmsim.cpu.segments import ES, CS, SS, DS

VMCB, HSAVE, MSRPM, IOPM = 0x300000, 0x301000, 0x302000, 0x304000
GUEST_CODE, GUEST_STACK = 0x400000, 0x480000
IDT, STUBS, REC = 0x500000, 0x501000, 0x510000
HOST_STUB = asm(f"mov rax, {VMCB}\nvmrun\nhlt")


class SvmRig:
    def __init__(self, guest_asm: str = "hlt", idt=False, intercepts=(), mem_size="32M", cpu=None,
                 **vmcb_fields):
        self.m = m = make_machine("long64", mem_size=mem_size, **({"cpu": cpu} if cpu else {}))
        self.cpu = cpu = m.cpus[0]
        self.events = []
        m.listeners.append(self.events.append)
        cpu.efer |= 1 << 12
        cpu.msr[0xC0010117] = HSAVE
        cpu.update_mode()
        m.bus.write_bytes(CODE_ADDR, HOST_STUB)
        self.guest_code = asm(guest_asm) if isinstance(guest_asm, str) else bytes(guest_asm)
        m.bus.write_bytes(GUEST_CODE, self.guest_code)
        self.vmcb = v = VmcbView(m.bus, VMCB)
        set_intercept(v, ExitCode.VMRUN)
        for code in intercepts:
            set_intercept(v, code)
        v["GUEST_ASID"] = 1
        v["IOPM_BASE_PA"] = IOPM
        v["MSRPM_BASE_PA"] = MSRPM
        for name, idx in (("ES", ES), ("CS", CS), ("SS", SS), ("DS", DS)):
            s = cpu.segs[idx]
            v.set_segment(name, s.sel, s.attr, s.limit, s.base)
        v.set_segment("GDTR", 0, 0, cpu.gdtr_limit, cpu.gdtr_base)
        for name in ("CR0", "CR3", "CR4", "EFER"):
            v[name] = getattr(cpu, name.lower())
        v["RFLAGS"], v["RIP"], v["RSP"] = 2, GUEST_CODE, GUEST_STACK
        v["DR7"], v["DR6"], v["G_PAT"] = 0x400, 0xFFFF0FF0, 0x0007040600070406
        if idt:
            self._guest_idt()
        for name, value in vmcb_fields.items():
            v[name] = value

    def _guest_idt(self):
        bus, v = self.m.bus, self.vmcb
        for vec in range(256):
            stub = STUBS + 32 * vec
            # mov dword ptr [REC], vec ; mov qword ptr [REC + 8], rsp ; hlt
            code = (b"\xc7\x04\x25" + REC.to_bytes(4, "little") + vec.to_bytes(4, "little")
                    + b"\x48\x89\x24\x25" + (REC + 8).to_bytes(4, "little") + b"\xf4")
            bus.write_bytes(stub, code)
            lo = (stub & 0xFFFF) | (0x08 << 16) | (0x8E00 << 32) | ((stub >> 16) & 0xFFFF) << 48
            bus.write(IDT + 16 * vec, 8, lo)
            bus.write(IDT + 16 * vec + 8, 8, stub >> 32)
        v.set_segment("IDTR", 0, 0, 16 * 256 - 1, IDT)
        bus.write(REC, 4, 0xFFFFFFFF)

    # -- running -------------------------------------------------------------
    def run(self, max_insns=200_000, at_vmrun=False):
        """Start (or restart) the host stub; returns self after the run stops.
        ``at_vmrun`` starts at the VMRUN itself (RAX already = VMCB)."""
        cpu, m = self.cpu, self.m
        cpu.rip = CODE_ADDR
        if at_vmrun:
            cpu.regs[0] = VMCB
            cpu.rip = CODE_ADDR + len(HOST_STUB) - 4
        cpu.halted = False
        done = 0
        while not cpu.halted and not m.stopping and done < max_insns:
            n = m.engine.run(cpu, max_insns - done)
            done += n
            if n == 0 and not cpu.halted and not cpu.pending:
                break
        return self

    @property
    def exitcode(self):
        return from_vmcb(self.vmcb["EXITCODE"])

    @property
    def in_guest(self) -> bool:
        return self.cpu.svm_guest

    def recorded(self):
        """The vector the guest IDT stub recorded (None if none ran)."""
        v = self.m.bus.read(REC, 4)
        return None if v == 0xFFFFFFFF else v

    def guest_label(self, offset: int) -> int:
        return GUEST_CODE + offset


class NestedTables:
    """Nested page tables (host long-mode format) built from Python: 4-level,
    4 KiB and 2 MiB leaves, allocated from ``base`` upward."""

    def __init__(self, bus, base=0x1000000):
        self.bus, self.next = bus, base
        self.root = self._alloc()

    def _alloc(self):
        a = self.next
        self.next += 0x1000
        self.bus.write_bytes(a, bytes(4096))
        return a

    def entry_addr(self, gpa, level):
        """Address of the entry that maps ``gpa`` at ``level`` (4 = PML4 .. 1 = PTE),
        creating the tables above it."""
        table = self.root
        for lv in range(4, level, -1):
            addr = table + ((gpa >> (12 + 9 * (lv - 1))) & 0x1FF) * 8
            e = self.bus.read(addr, 8)
            if not e & 1:
                e = self._alloc() | 7
                self.bus.write(addr, 8, e)
            table = e & 0x000FFFFFFFFFF000
        return table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8

    def map(self, gpa, spa, size=4096, flags=7):
        """Map one page; ``flags`` = P|RW|US (7) by default, NX with 1 << 63."""
        if size == 4096:
            self.bus.write(self.entry_addr(gpa, 1), 8, spa | flags)
        else:
            self.bus.write(self.entry_addr(gpa, 2), 8, spa | flags | 0x80)

    def identity(self, start, end, size=1 << 21):
        for a in range(start, end, size):
            self.map(a, a, size)

