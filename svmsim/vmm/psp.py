"""The reference VMM's way to the AMD Secure Processor: its PSP mailbox, as
Linux's ccp driver drives it (drivers/crypto/ccp/sev-dev.c).

A command's parameter buffer is written to host RAM, its address to
CMDBUFF_ADDR_LO/HI and the command to CMDRESP; the status comes back in
CMDRESP[15:0].  The platform is initialised as the driver does at probe
time: with SEV_INIT_FLAGS_SEV_ES and a 1 MiB trusted memory region (TMR)
when the CPU reports SEV-ES (CPUID Fn8000_001F EAX[3]).
"""
from __future__ import annotations

from ..sev.api import (SevCmd, SevState, SevStatus, SEV_INIT_FLAGS_SEV_ES, TMR_SIZE,
                       buffer_size, pack_buffer, unpack_buffer)
from ..sev import snp_api
from ..sev.crypto import CERT_LEN
from ..sev.mailbox import SevMailbox
from .vmm import GuestExit

SEV_SCRATCH = 0x98000        # host RAM for command buffers and their data (0x98000-0x9FFFF)
SEV_DATA = SEV_SCRATCH + 0x100
TMR_PA = 0x100000            # 1 MiB-aligned host RAM between the VMM's pages and the guest's


class Psp:
    """Commands to the machine's AMD-SP through its mailbox registers."""

    def __init__(self, machine, buffer_pa: int = SEV_SCRATCH):
        if machine.amd_sp is None:
            raise GuestExit("this CPU model has no AMD Secure Processor (no SEV)")
        self.m, self.bus, self.buffer_pa = machine, machine.bus, buffer_pa
        self.regs = {name: machine.AMD_SP_MMIO + off
                     for name, off in SevMailbox.LAYOUTS["v2"].items()}
        self.log: list = []                      # (command name, status name) in order

    @property
    def firmware(self):
        return self.m.amd_sp

    def command(self, cmd: SevCmd, layout: str | None = None, **fields) -> tuple[int, dict]:
        """Run one command; (status, the parameter buffer as the firmware left it).
        SNP commands (81h and up) take ``snp_api`` layouts."""
        bus, regs = self.bus, self.regs
        snp = cmd >= snp_api.SnpCmd.INIT
        pack = snp_api.pack if snp else pack_buffer
        unpack = snp_api.unpack if snp else unpack_buffer
        size = snp_api.buffer_size if snp else buffer_size
        if layout:
            bus.write_bytes(self.buffer_pa, pack(layout, **fields))
        bus.write(regs["CMDBUFF_ADDR_LO"], 4, self.buffer_pa & 0xFFFFFFFF)
        bus.write(regs["CMDBUFF_ADDR_HI"], 4, self.buffer_pa >> 32)
        bus.write(regs["CMDRESP"], 4, int(cmd) << SevMailbox.CMD_SHIFT)
        status = bus.read(regs["CMDRESP"], 4) & SevMailbox.STATUS_MASK
        self.log.append((_command_name(cmd), _status_name(status)))
        out = unpack(layout, bus.read_bytes(self.buffer_pa, size(layout))) if layout else {}
        return status, out

    def call(self, cmd: SevCmd, layout: str | None = None, **fields) -> dict:
        """Run one command that must succeed (else GuestExit naming it)."""
        status, out = self.command(cmd, layout, **fields)
        if status != SevStatus.SUCCESS:
            raise GuestExit(f"AMD-SP {self.log[-1][0]} failed: {_status_name(status)}")
        return out

    def cpu_has_sev_es(self) -> bool:
        from ..cpu.cpuid import cpuid
        return bool(cpuid(self.m.cpus[0], 0x8000001F)[0] & (1 << 3))

    def init_platform(self) -> None:
        """INIT once, as the ccp driver does when it probes the PSP."""
        if self.firmware.state != SevState.UNINIT:
            return
        if self.cpu_has_sev_es():
            self.call(SevCmd.INIT, "init", flags=SEV_INIT_FLAGS_SEV_ES, tmr_address=TMR_PA,
                      tmr_len=TMR_SIZE)
        else:
            self.call(SevCmd.INIT, "init")

    def launch_start(self, owner) -> int:
        """The platform's PDH to the guest owner, whose DH key and session
        (wrapping its TEK and TIK) go to LAUNCH_START; the new guest's handle."""
        bus, pdh, session_pa = self.bus, SEV_DATA, SEV_DATA + 0x1000
        self.call(SevCmd.PDH_CERT_EXPORT, "pdh_cert_export", pdh_cert_address=pdh,
                  pdh_cert_len=CERT_LEN, cert_chain_address=pdh + 0x1000,
                  cert_chain_len=3 * CERT_LEN)
        godh, session = owner.start(bus.read_bytes(pdh, CERT_LEN))
        bus.write_bytes(SEV_DATA, godh)
        bus.write_bytes(session_pa, session)
        return self.call(SevCmd.LAUNCH_START, "launch_start", policy=owner.policy,
                         dh_cert_address=SEV_DATA, dh_cert_len=len(godh),
                         session_address=session_pa, session_len=len(session))["handle"]


def _status_name(status: int) -> str:
    try:
        return SevStatus(status).name
    except ValueError:
        return f"{status:#x}"


def _command_name(cmd: int) -> str:
    try:
        return "SNP_" + snp_api.SnpCmd(cmd).name if cmd >= snp_api.SnpCmd.INIT else SevCmd(cmd).name
    except ValueError:
        return f"command {cmd:#x}"
