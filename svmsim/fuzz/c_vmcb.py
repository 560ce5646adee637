"""Campaign ``vmcb``: random VMCBs run by a host in 64-bit mode (APM vol 2,
15.5 VMRUN, 15.6 #VMEXIT, appendix B).

Each input is a short host program: up to four VMRUNs, each on a VMCB at
its own address (page aligned or not, at the end of RAM, past RAM, on MMIO),
with the host save area moved between them (WRMSR VM_HSAVE_PA), and the
host writing VMCB fields between two VMRUNs of the same VMCB with its clean
bits set (15.15.3: what the CPU may keep cached).  A VMCB starts as a valid
64-bit guest sharing the host's paging and is then mutated: fields of the
VMCB table (svm/vmcb.py) set to boundary or random values, the IOPM and
MSRPM placed anywhere (in RAM, across its end, past it) with random bits,
intercept words, EVENTINJ, nested paging (N_CR3), AVIC, LBR and SEV
fields; sometimes the whole page random.  The guest runs random code.

With ``--kernel FILE`` (option ``kernel``) a hypervisor developer runs the
same inputs against their own hypervisor: FILE is booted as a Multiboot
kernel with the VMCB page as module 0 (4 KiB), the guest code as module 1
and the IOPM (12 KiB) and MSRPM (8 KiB) as modules 2 and 3; what the kernel
does with them is up to it (copy the VMCB into its own, fix up what it
must, VMRUN).  The invariant is svmsim's: no exception, no hang.

Invariant: VMRUN ends in a #VMEXIT, VMEXIT_INVALID, a fault or shutdown, or
a budget; never status 70 (issue 13)."""
import io
import os
import struct
import tempfile

from .driver import Campaign, Failure, campaign
from .c_insns import stream
from . import modes
from ..machine import Machine, STATUS_INTERNAL
from ..svm import vmcb as V

MSR_HSAVE = 0xC0010117
GUEST_CODE, GUEST_STACK = 0x400000, 0x480000
VALUES = [0, 1, 2, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 47, 1 << 52,
          (1 << 64) - 1, 0xFFFF800000000000, 0x1000, 0xFEE00000, 0xFE000000]


def base_vmcb(asid: int = 1) -> bytearray:
    """A VMCB for a 64-bit guest on the host's GDT and page tables (modes.py),
    VMRUN intercepted (required: 15.5.1), at GUEST_CODE."""
    buf = bytearray(V.VMCB_SIZE)
    v = V.VmcbView(buf)
    from ..svm.intercepts import set_intercept
    from ..svm.exits import ExitCode
    set_intercept(v, ExitCode.VMRUN)
    set_intercept(v, ExitCode.HLT)
    v["GUEST_ASID"] = asid
    for seg, sel, attr in (("CS", 0x08, 0xA9B), ("SS", 0x10, 0xC93), ("DS", 0x10, 0xC93), ("ES", 0x10, 0xC93)):
        v.set_segment(seg, sel, attr, 0xFFFFFFFF, 0)
    v.set_segment("GDTR", 0, 0, 8 * len(modes.GDT_ENTRIES) - 1, modes.GDT)
    v["CR0"], v["CR3"], v["CR4"], v["EFER"] = 0x80010031, modes.PML4, 0x20, 0x1D01
    v["RFLAGS"], v["RIP"], v["RSP"] = 2, GUEST_CODE, GUEST_STACK
    v["DR7"], v["DR6"], v["G_PAT"] = 0x400, 0xFFFF0FF0, 0x0007040600070406
    return buf


def _value(rnd, width):
    if rnd.random() < 0.5:
        v = rnd.choice(VALUES)
    elif rnd.random() < 0.5:
        v = 1 << rnd.randrange(max(width, 1))
    else:
        v = rnd.getrandbits(width)
    return v & ((1 << width) - 1)


def _place(rnd, ram: int) -> int:
    """Where a VMCB, host save area, IOPM or MSRPM goes."""
    return rnd.choice([0x600000 + 0x1000 * rnd.randrange(64), 0x600000 + 0x1000 * rnd.randrange(64),
                       ram - 0x1000, ram - 0x2000, ram, ram + 0x10000, 0xFEE00000, 0xFE000000,
                       0x600000 + rnd.randrange(0x1000), 1 << 52, 0])


@campaign
class Vmcb(Campaign):
    name = "vmcb"
    description = "random VMCBs (IOPM/MSRPM, clean bits, intercepts, EVENTINJ, NPT, AVIC) at moving addresses"
    RAM = 16 << 20

    def generate(self, rnd):
        runs = []
        for _ in range(rnd.choice((1, 1, 2, 4))):
            buf = base_vmcb(rnd.choice((1, 1, 2, 0, 0xFFFF)))
            if rnd.random() < 0.1:
                buf = bytearray(rnd.getrandbits(8) for _ in range(V.VMCB_SIZE))
            v = V.VmcbView(buf)
            for _ in range(rnd.choice((0, 1, 2, 4, 8, 16))):
                f = rnd.choice(V.FIELDS)
                v.write(f, _value(rnd, f.width))
            iopm, msrpm = _place(rnd, self.RAM) & ~0xFFF, _place(rnd, self.RAM) & ~0xFFF
            v["IOPM_BASE_PA"], v["MSRPM_BASE_PA"] = iopm, msrpm
            pokes = [(rnd.choice(V.FIELDS).offset & ~3, _value(rnd, 32)) for _ in range(rnd.choice((0, 0, 1, 3)))]
            runs.append({"vmcb": bytes(buf), "at": _place(rnd, self.RAM), "hsave": _place(rnd, self.RAM),
                         "iopm_bits": [rnd.randrange(12 * 8192) for _ in range(rnd.randrange(4))],
                         "msrpm_bits": [rnd.randrange(8 * 8192) for _ in range(rnd.randrange(4))],
                         "pokes": pokes, "clean": rnd.choice((0, 0xFFFFFFFF, rnd.getrandbits(12))),
                         "again": rnd.random() < 0.3})
        return {"runs": runs, "guest": stream(rnd, rnd.choice((8, 64))), "budget": rnd.choice((2000, 20000))}

    # -- svmsim's own host -------------------------------------------------------------------
    def build(self, inp):
        m = modes.machine("long64", self.RAM)
        cpu = m.cpus[0]
        cpu.efer |= 1 << 12                                   # EFER.SVME
        cpu.msr[MSR_HSAVE] = 0x500000
        m.bus.write_bytes(GUEST_CODE, inp["guest"])
        host = bytearray()
        for run in inp["runs"]:
            at = run["at"]
            self._put(m, at, run["vmcb"])
            v = V.VmcbView(bytearray(run["vmcb"]))
            for base, bits, size in ((v["IOPM_BASE_PA"], run["iopm_bits"], 12 << 10),
                                     (v["MSRPM_BASE_PA"], run["msrpm_bits"], 8 << 10)):
                for b in bits:
                    self._put(m, base + b // 8, bytes([1 << (b % 8)]))
            hs = run["hsave"]
            host += b"\xB9" + struct.pack("<I", MSR_HSAVE) + b"\xB8" + struct.pack("<I", hs & 0xFFFFFFFF)
            host += b"\xBA" + struct.pack("<I", hs >> 32 & 0xFFFFFFFF) + b"\x0F\x30"        # WRMSR
            host += b"\x48\xB8" + struct.pack("<Q", at) + b"\x0F\x01\xD8"                  # mov rax, at; VMRUN
            if run["again"] and at < 0x80000000:
                host += b"\xC7\x04\x25" + struct.pack("<iI", at + 0xC0, run["clean"])    # VMCB_CLEAN
                for off, value in run["pokes"]:
                    host += b"\xC7\x04\x25" + struct.pack("<iI", at + off, value)
                host += b"\x48\xB8" + struct.pack("<Q", at) + b"\x0F\x01\xD8"
        host += b"\xF4"
        m.bus.write_bytes(modes.CODE_ADDR, bytes(host))
        cpu.rip = modes.CODE_ADDR
        cpu.update_mode()
        return m

    @staticmethod
    def _put(m, addr, data):
        """Write where RAM is (a VMCB past RAM or on MMIO stays unwritten)."""
        end = min(addr + len(data), m.config.mem_size)
        if addr < end:
            m.bus.write_bytes(addr, data[:end - addr])

    def execute(self, inp):
        if self.options.get("kernel"):
            return self._execute_kernel(inp)
        m = self.build(inp)
        m.uart.out = io.BytesIO()
        try:
            r = m.run(max_insns=inp["budget"], timeout=20, max_virtual_ns=2_000_000_000)
            exits = sum(r.svm.get("exits", {}).values()) if r.svm else 0
        finally:
            m.close()
        if r.status == STATUS_INTERNAL:
            raise Failure(r.reason)
        return f"{r.kind}, {'some' if exits else 'no'} #VMEXIT"

    # -- the user's hypervisor kernel ------------------------------------------------------------
    def _execute_kernel(self, inp):
        run = inp["runs"][0]
        iopm, msrpm = bytearray(12 << 10), bytearray(8 << 10)
        for b in run["iopm_bits"]:
            iopm[b // 8] |= 1 << (b % 8)
        for b in run["msrpm_bits"]:
            msrpm[b // 8] |= 1 << (b % 8)
        with tempfile.TemporaryDirectory(prefix="svmsim-fuzz-vmcb-") as d:
            mods = []
            for name, data in (("vmcb", run["vmcb"]), ("guest", inp["guest"]), ("iopm", iopm), ("msrpm", msrpm)):
                p = os.path.join(d, name)
                with open(p, "wb") as f:
                    f.write(data)
                mods.append((p, name))
            with Machine(mem_size="128M") as m:
                m.uart.out = io.BytesIO()
                m.load_kernel(self.options["kernel"], "svmsim-fuzz-vmcb", mods)
                r = m.run(max_insns=int(self.options.get("max_insns", 5_000_000)), timeout=60,
                          max_virtual_ns=10_000_000_000)
        if r.status == STATUS_INTERNAL:
            raise Failure(r.reason)
        return f"status {r.status} ({r.kind})"
