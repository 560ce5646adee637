"""Run small pieces of machine code on a fresh svmsim CPU in a chosen mode.

``run_code(code, mode=...)`` places ``code`` at CODE_ADDR followed by HLT,
puts the BSP into ``mode`` ("long64", "compat32", "prot32", "prot16" or
"real") with flat segments (and identity paging for long modes: the first
4 GiB with 2 MiB pages), runs until the CPU halts, and returns a Result
holding the CPU.  The IDT is empty, so the first exception is recorded in
``result.exception`` (vector, error code, rip, cr2) and ends the run, unless
``idt=True`` asks for an IDT whose handlers record the vector and halt.
"""
from dataclasses import dataclass, field

from svmsim.machine import Machine
from svmsim.cpu.segments import Segment, ES, CS, SS, DS, FS, GS
from svmsim.cpu.exceptions import Shutdown
from svmsim.cpu.interrupts import HWEXC

CODE_ADDR = 0x100000
STACK_TOP = 0x80000
DATA_ADDR = 0x200000          # a scratch area tests may use (2 MiB in)
PML4, PDPT, PD = 0x10000, 0x11000, 0x12000   # PD: 4 tables, 0x12000-0x15FFF
GDT = 0x500

CODE64 = 0x00AF9A000000FFFF   # L=1 code, DPL 0
CODE32 = 0x00CF9A000000FFFF
DATA32 = 0x00CF92000000FFFF
CODE16 = 0x00009A000000FFFF
GDT_ENTRIES = [0, CODE64, DATA32, CODE32, CODE16, DATA32 | (3 << 45), CODE64 | (3 << 45)]
SEL_CODE64, SEL_DATA, SEL_CODE32, SEL_CODE16 = 0x08, 0x10, 0x18, 0x20


@dataclass
class Result:
    cpu: object
    machine: object
    exception: tuple = None          # (vector, error_code, rip, cr2) of the first fault
    shutdown: bool = False
    events: list = field(default_factory=list)

    @property
    def regs(self):
        return self.cpu.regs

    @property
    def rflags(self):
        return self.cpu.get_rflags()


def _seg_from(desc, sel):
    from svmsim.cpu.segments import descriptor_to_segment
    return descriptor_to_segment(sel, desc & 0xFFFFFFFF, desc >> 32)


def make_machine(mode="long64", mem_size="16M", **kw):
    m = Machine(mem_size=mem_size, **kw)
    cpu = m.cpus[0]
    for i, d in enumerate(GDT_ENTRIES):
        m.bus.write(GDT + 8 * i, 8, d)
    cpu.gdtr_base, cpu.gdtr_limit = GDT, 8 * len(GDT_ENTRIES) - 1
    cpu.idtr_base, cpu.idtr_limit = 0, 0
    if mode == "real":
        cpu.cr0 = 0x10
        for i in range(6):
            cpu.segs[i] = Segment(0, 0, 0xFFFF, 0x93)
        cpu.segs[CS] = Segment(0, 0, 0xFFFF, 0x9B)
    else:
        cpu.cr0 = 0x11 | (1 << 5)                # PE, ET, NE
        data = _seg_from(DATA32, SEL_DATA)
        for i in (ES, SS, DS, FS, GS):
            cpu.segs[i] = data.copy()
        code = {"long64": (CODE64, SEL_CODE64), "compat32": (CODE32, SEL_CODE32),
                "prot32": (CODE32, SEL_CODE32), "prot16": (CODE16, SEL_CODE16)}[mode]
        cpu.segs[CS] = _seg_from(*code)
        if mode in ("long64", "compat32"):
            m.bus.write(PML4, 8, PDPT | 3)
            for g in range(4):                   # identity-map 4 GiB with 2 MiB pages
                m.bus.write(PDPT + 8 * g, 8, (PD + 0x1000 * g) | 3)
                for i in range(512):
                    m.bus.write(PD + 0x1000 * g + 8 * i, 8, ((g * 512 + i) << 21) | 0x83)
            cpu.cr3 = PML4
            cpu.cr4 = 1 << 5                     # PAE
            cpu.efer = (1 << 8) | (1 << 10) | (1 << 11) | 1   # LME, LMA, NXE, SCE
            cpu.cr0 |= 1 << 31 | 1 << 16         # PG, WP
    cpu.regs[4] = STACK_TOP
    cpu.tlb.flush_all("harness")
    cpu.update_mode()
    return m


def start_like_bsp(m, i=1):
    """CPU ``i`` of ``m`` set up in CPU 0's mode (control registers, GDT,
    segments) and running, as an AP is after INIT-SIPI and its own set-up."""
    c0, c = m.cpus[0], m.cpus[i]
    c.cr0, c.cr3, c.cr4, c.efer = c0.cr0, c0.cr3, c0.cr4, c0.efer
    c.gdtr_base, c.gdtr_limit = c0.gdtr_base, c0.gdtr_limit
    c.segs[:] = [s.copy() for s in c0.segs]
    c.wait_for_sipi = False
    c.tlb.flush_all("harness")
    c.update_mode()
    return c



def count_region_calls(m) -> list:
    """Wrap every compiled region of ``m``'s engine so that each call appends
    its entry to the returned list (tests that count region calls)."""
    calls = []
    for b in list(m.engine.blocks.values()):
        f = b.compiled
        if f is not None:
            def counted(c, budget, entry, f=f):
                calls.append(entry)
                return f(c, budget, entry)
            b.compiled = counted
    return calls

def run_code(code: bytes, mode="long64", regs=None, rflags=None, mem=None, max_insns=100_000,
             setup=None, mem_size="16M", addr=None):
    """Run ``code`` (then HLT) and return a Result.  ``regs`` maps index or
    name ('rax'...) to a value; ``mem`` maps physical address -> bytes."""
    m = make_machine(mode, mem_size)
    cpu = m.cpus[0]
    addr = addr if addr is not None else (0x7C00 if mode == "real" else CODE_ADDR)
    m.bus.write_bytes(addr, bytes(code) + b"\xf4")
    cpu.rip = addr
    names = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()
    for k, v in (regs or {}).items():
        cpu.regs[names.index(k) if isinstance(k, str) else k] = v & ((1 << 64) - 1)
    if rflags is not None:
        cpu.set_rflags(rflags)
    for a, data in (mem or {}).items():
        m.bus.write_bytes(a, data)
    if setup:
        setup(m, cpu)
    result = Result(cpu, m)

    def on_event(ev):
        result.events.append(ev)
        if ev["type"] == "deliver" and ev["kind"] == HWEXC and result.exception is None:
            result.exception = (ev["vector"], ev["error_code"], ev["rip"], cpu.cr2 if ev["vector"] == 14 else None)
            m.request_stop(0, "exception", "exception")
    m.listeners.append(on_event)
    try:
        done = 0
        while not cpu.halted and not m.stopping and done < max_insns:
            n = m.engine.run(cpu, max_insns - done)
            done += n
            if n == 0 and not cpu.halted and not m.stopping and not cpu.pending:
                break
    except Shutdown:
        result.shutdown = True
    if result.exception is not None and result.exception[3] is None and result.exception[0] == 14:
        result.exception = result.exception[:3] + (cpu.cr2,)
    return result


def asm(source: str, bits=64) -> bytes:
    """Assemble GNU-as Intel-syntax ``source`` to raw bytes (for tests)."""
    import os
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("a.s", "a.o", "a.bin"))
        with open(s, "w") as f:
            f.write(f".intel_syntax noprefix\n.code{bits}\n{source}\n")
        p = subprocess.run(["as", "--64", "-o", o, s], capture_output=True, text=True)
        if p.returncode:
            raise ValueError(f"as failed: {p.stderr.strip()}")
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True, capture_output=True)
        return open(b, "rb").read()
