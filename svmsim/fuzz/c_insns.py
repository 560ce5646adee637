"""Campaign ``insns``: random instruction streams in every mode (real,
16/32-bit protected, compatibility, 64-bit), with interrupts and timers (PIT
through the 8259s, the local APIC timer), EFER.SVME on (VMRUN, VMLOAD,
VMSAVE, STGI, CLGI, INVLPGA, SKINIT reach the SVM unit), memory encryption on
(SYSCFG.MemEncryptionModEn and the C-bit in every leaf), and code placed at
the end of a page (the next one not present), at the end of RAM and at the
PCI hole under 4 GiB (issue 13, finding 3).  The random bytes are mixed with
snippets of system instructions so that the rare paths are reached.

Invariant: the run ends with an architectural outcome (a fault, shutdown,
halt, debug exit, budget), never status 70, within the driver's bounds."""
import random

from .driver import Campaign, Failure, campaign
from . import modes
from ..machine import STATUS_INTERNAL

# Snippets: system instructions random bytes seldom form (APM vol 3 encodings).
SNIPPETS = [
    b"\x0f\x01\xd8", b"\x0f\x01\xda", b"\x0f\x01\xdb", b"\x0f\x01\xdc", b"\x0f\x01\xdd",   # VMRUN VMLOAD VMSAVE STGI CLGI
    b"\x0f\x01\xde", b"\x0f\x01\xdf", b"\x0f\x01\xd9", b"\x0f\x01\xfa",    # SKINIT INVLPGA VMMCALL MONITORX
    b"\x0f\x30", b"\x0f\x32", b"\x0f\x31", b"\x0f\xa2", b"\xfb", b"\xfa", b"\xf4", b"\xcc",  # WRMSR RDMSR RDTSC CPUID STI CLI HLT INT3
    b"\xcd\x30", b"\xcd\x80", b"\xcf", b"\x48\xcf", b"\x0f\x22\xc0", b"\x0f\x22\xe0", b"\x0f\x22\xd8",  # INT n, IRET(Q), MOV CRn
    b"\x0f\x20\xc0", b"\x0f\x23\xf8", b"\x0f\x00\xd8", b"\x0f\x01\x10", b"\x0f\x01\x18",   # MOV from CR0, MOV DR7, LTR, LGDT, LIDT
    b"\x0f\x07", b"\x0f\x05", b"\x0f\x34", b"\x0f\x35", b"\xe6\xf4", b"\xee", b"\xef", b"\xec",  # SYSRET SYSCALL SYSENTER SYSEXIT OUT IN
    b"\xf3\xa4", b"\xf3\x48\xab", b"\x0f\xae\x38", b"\x0f\x09", b"\x0f\x08", b"\x0f\x0b",     # REP MOVSB, REP STOSQ, CLFLUSH, WBINVD, INVD, UD2
    b"\xb9\x10\x00\x01\xc0", b"\xb9\x14\x01\x01\xc0", b"\xb9\x17\x01\x01\xc0", b"\xb9\x80\x00\x00\xc0",  # MOV ECX, SYSCFG/VM_CR/HSAVE/EFER
    b"\xb8\x00\x10\x30\x00", b"\x9c", b"\x9d", b"\x17", b"\x8e\xd0", b"\xea", b"\x66", b"\xf0", b"\x67", b"\x48",
]
PLACES = ("normal", "normal", "page-end", "ram-end", "hole-end")
HSAVE, VMCB = 0x300000, 0x301000
PSP_SYSCFG = 0xC0010010


def stream(rnd: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        if rnd.random() < 0.3:
            out += rnd.choice(SNIPPETS)
        else:
            out += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8)))
    return bytes(out[:n])


@campaign
class Insns(Campaign):
    name = "insns"
    description = "random instruction streams in every mode, with interrupts, timers, SVME, memory encryption"

    def generate(self, rnd):
        mode = rnd.choice(modes.MODES)
        place = "normal" if mode == "real" else rnd.choice(PLACES)
        return {
            "mode": mode, "place": place, "code": stream(rnd, rnd.choice((16, 64, 256))),
            "regs": [rnd.choice((0, 1, 0x1000, VMCB, 0xFEE00000, 0xFE000000, (1 << 64) - 1,
                                 rnd.getrandbits(64), rnd.getrandbits(32), rnd.getrandbits(12)))
                     for _ in range(16)],
            "irq": rnd.random() < 0.5, "timer": rnd.choice(("none", "pit", "apic")),
            "timer_count": rnd.choice((1, 16, 1000, rnd.getrandbits(16))),
            "handler": rnd.choice((b"", b"", stream(rnd, 16))),
            "svme": rnd.random() < 0.5, "sme": rnd.random() < 0.3, "smp": rnd.choice((1, 1, 1, 2)),
            "budget": rnd.choice((500, 2000, 20000)),
        }

    def build(self, inp):
        mode, place = inp["mode"], inp["place"]
        mem = "4G" if place == "hole-end" else "16M"
        m = modes.machine(mode, mem, smp=inp["smp"],
                          cbit=47 if inp["sme"] and mode in ("long64", "compat32") else None)
        cpu = m.cpus[0]
        code = inp["code"]
        if mode == "real":
            addr = 0x7C00
        elif place == "page-end":
            addr = 0x200000 - len(code) // 2
            if mode in ("long64", "compat32"):
                m.bus.write(modes.PD + 8, 8, 0)       # 2-4 MiB not present
        elif place == "ram-end":
            addr = m.config.mem_size - len(code) // 2
        elif place == "hole-end":
            addr = 0xC0000000 - len(code) // 2
        else:
            addr = modes.CODE_ADDR
        top = (m.config.mem_size if place != "hole-end" else 0xC0000000)
        m.bus.write_bytes(addr, code[:max(0, top - addr)])
        cpu.rip = addr
        for i, v in enumerate(inp["regs"]):
            cpu.regs[i] = v & ((1 << 64) - 1)
        cpu.regs[4] = modes.STACK_TOP
        if inp["irq"]:
            self._idt(m, mode, inp["handler"])
            cpu.set_rflags(cpu.get_rflags() | (1 << 9))
        if inp["timer"] == "pit":
            for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE),
                                (0x43, 0x34), (0x40, inp["timer_count"] & 0xFF),
                                (0x40, inp["timer_count"] >> 8 & 0xFF)):
                m.io.write(port, 1, value)
        elif inp["timer"] == "apic":
            for reg, value in ((0xF0, 0x1FF), (0x3E0, 0xB), (0x320, 0x20030), (0x380, inp["timer_count"])):
                m.bus.write(0xFEE00000 + reg, 4, value)
        from ..cpu import msr
        if inp["svme"]:
            cpu.efer |= 1 << 12
            cpu.msr[msr.VM_HSAVE_PA] = HSAVE
        if inp["sme"]:
            msr.wrmsr(cpu, PSP_SYSCFG, 1 << 23)
        cpu.tlb.flush_all("fuzz")
        cpu.update_mode()
        return m

    @staticmethod
    def _idt(m, mode, handler):
        """Every vector's gate leads to HANDLER: an IRET, or random bytes."""
        h = 0x9000
        iret = b"\x48\xcf" if mode == "long64" else b"\xcf"
        m.bus.write_bytes(h, handler or iret)
        cpu = m.cpus[0]
        if mode == "real":
            for v in range(256):
                m.bus.write(4 * v, 4, h)              # segment 0, offset 0x9000
            return
        if mode in ("long64", "compat32"):
            for v in range(256):                      # 64-bit interrupt gates (APM vol 2, 4.8.4)
                lo = (h & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | ((h >> 16) << 48)
                m.bus.write(modes.IDT + 16 * v, 8, lo)
                m.bus.write(modes.IDT + 16 * v + 8, 8, 0)
            cpu.idtr_base, cpu.idtr_limit = modes.IDT, 16 * 256 - 1
        else:
            for v in range(256):                      # 32-bit interrupt gates, CS 0x18
                m.bus.write(modes.IDT + 8 * v, 8, (h & 0xFFFF) | (0x18 << 16) | (0x8E << 40) | ((h >> 16) << 48))
            cpu.idtr_base, cpu.idtr_limit = modes.IDT, 8 * 256 - 1

    def execute(self, inp):
        import io
        m = self.build(inp)
        m.uart.out = io.BytesIO()
        try:
            r = m.run(max_insns=inp["budget"], timeout=20, max_virtual_ns=2_000_000_000)
        finally:
            m.close()
        if r.status == STATUS_INTERNAL:
            raise Failure(r.reason)
        return f"{inp['mode']} {r.kind}"
