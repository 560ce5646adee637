"""The hypervisor's own instructions, run on CPU 0 in host mode between two
VMRUNs of the reference VMM.

Python that writes the machine's RAM directly stands for nothing on real
hardware; what a hypervisor does to a guest's memory it does with
instructions, and those are what the processor checks (SEV-SNP: a host
write to a page the RMP does not give to the hypervisor is #PF with the RMP
error-code bit, APM vol 2, 15.36.10, table 15-37; RMPUPDATE returns its
result code, 15.36.5).  ``HostCode`` runs such instructions: a short
sequence ending in HLT at ``CODE``, with a host IDT whose 32 exception
gates lead to a HLT, so a fault ends the sequence and is reported from the
machine's event stream (vector, error code, svmsim's reason).

Host memory used (below the guest's, ``vmm.GUEST_BASE``): the IDT, the
halt, the code and RMPUPDATE's 16-byte operand in the first pages of
``HOST_AREA``, a 64 KiB data buffer after them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .vmm import HOST_STACK

HOST_AREA = 0xC00000
IDT, HALT, CODE, STATE = HOST_AREA, HOST_AREA + 0x1000, HOST_AREA + 0x2000, HOST_AREA + 0x3000
BUF, BUF_SIZE = HOST_AREA + 0x10000, 0x10000
MAX_INSNS = 1_000_000


@dataclass
class HostFault:
    """An exception the hypervisor's own instruction raised."""
    vector: int
    error_code: int
    detail: str

    def __str__(self) -> str:
        if self.vector != 14:
            return f"{ {13: '#GP', 6: '#UD'}.get(self.vector, f'exception {self.vector}')}({self.error_code:#x})"
        bits = [n for b, n in ((0, "P"), (1, "W"), (2, "U"), (31, "RMP")) if self.error_code >> b & 1]
        return f"#PF error code {self.error_code:#x} ({', '.join(bits)})"


def _mov_imm64(reg: int, value: int) -> bytes:
    """MOV r64, imm64 (REX.W B8+r)."""
    return bytes([0x48, 0xB8 + reg]) + (value & (1 << 64) - 1).to_bytes(8, "little")


RAX, RCX, RSI, RDI = 0, 1, 6, 7
REP_MOVSB, RMPUPDATE, HLT = b"\xf3\xa4", b"\xf2\x0f\x01\xfe", b"\xf4"


class HostCode:
    def __init__(self, vmm):
        self.vmm, self.m, self.cpu = vmm, vmm.m, vmm.cpu
        bus = self.m.bus
        bus.write_bytes(HALT, HLT)
        gate = ((HALT & 0xFFFF) | 0x08 << 16 | 0x8E00 << 32 | (HALT >> 16 & 0xFFFF) << 48).to_bytes(8, "little") \
            + (HALT >> 32).to_bytes(8, "little")
        bus.write_bytes(IDT, gate * 32)
        self.cpu.idtr_base, self.cpu.idtr_limit = IDT, 32 * 16 - 1

    def execute(self, code: bytes) -> HostFault | None:
        """Run ``code`` (then HLT) in host mode; the first fault it raised, or None."""
        cpu, m = self.cpu, self.m
        m.bus.write_bytes(CODE, code + HLT)
        faults = []

        def listen(ev):
            if ev["type"] == "exception" and ev["cpu"] == cpu.index and not faults:
                faults.append(HostFault(ev["vector"], ev["error_code"] or 0, ev["detail"]))
        m.listeners.append(listen)
        try:
            cpu.rip, cpu.halted, cpu.regs[4] = CODE, False, HOST_STACK
            done = 0
            while not cpu.halted and done < MAX_INSNS:
                n = m.engine.run(cpu, MAX_INSNS - done)
                done += n
                if n == 0 and not cpu.pending:
                    break
        finally:
            m.listeners.remove(listen)
        return faults[0] if faults else None

    def write(self, spa: int, data: bytes) -> HostFault | None:
        """Copy ``data`` to system-physical ``spa`` with REP MOVSB (the host
        maps memory 1:1 without the C-bit: the bytes land as they are)."""
        if len(data) > BUF_SIZE:
            raise ValueError("at most 64 KiB at a time")
        self.m.bus.write_bytes(BUF, data)
        return self.execute(_mov_imm64(RDI, spa) + _mov_imm64(RSI, BUF) + _mov_imm64(RCX, len(data))
                            + REP_MOVSB)

    def rmpupdate(self, spa: int, gpa: int = 0, assigned: bool = False, asid: int = 0,
                  immutable: bool = False, size: int = 0) -> int:
        """RMPUPDATE (APM vol 2, 15.36.5): RAX = the page, RCX = the new
        state {u64 gPA, u8 Assigned, u8 Page_Size, u8 Immutable, u8 -, u32 ASID};
        returns the result code it leaves in RAX."""
        state = gpa.to_bytes(8, "little") + bytes([int(assigned), size, int(immutable), 0]) \
            + asid.to_bytes(4, "little")
        self.m.bus.write_bytes(STATE, state)
        fault = self.execute(_mov_imm64(RAX, spa) + _mov_imm64(RCX, STATE) + RMPUPDATE)
        if fault:
            raise RuntimeError(f"RMPUPDATE faulted: {fault}")
        return self.cpu.regs[RAX]
