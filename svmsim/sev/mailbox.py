"""The PSP mailbox through which x86 code reaches the SEV firmware."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .firmware import SevFirmware

class SevMailbox:
    """The PSP's SEV mailbox registers, as Linux's ccp driver drives them
    (drivers/crypto/ccp/sev-dev.c, __sev_do_cmd_locked):

    1. write the buffer's physical address to CMDBUFF_ADDR_LO and _HI;
    2. write CMDRESP = cmd << 16 | IOC (bit 0);
    3. poll CMDRESP bit 31 (RESP), or wait for the interrupt; status = bits 15:0.

    Offsets are relative to the PSP's MMIO BAR (BAR 2).  Layout "v2" is Linux's
    ``pspv2``/``sevv2`` (sp-pci.c), the one used for PCI device 1022:1486 (the
    Rome/Milan PSP): CMDRESP 0x10980 (C2PMSG_32), CMDBUFF_ADDR_LO 0x109E0
    (C2PMSG_56), CMDBUFF_ADDR_HI 0x109E4 (C2PMSG_57), FEATURE 0x109FC (C2PMSG_63),
    P2CMSG_INTEN 0x10690, P2CMSG_INTSTS 0x10694.  1022:14CA (Genoa) uses the same
    SEV registers; 1022:15DF has no SEV mailbox in current kernels (pspv3).
    Layout "v1" is the Naples PSP (1022:1456): 0x10580/0x105E0/0x105E4,
    feature 0x105FC, INTEN 0x10610, INTSTS 0x10614.

    The command runs synchronously inside the CMDRESP write; afterwards CMDRESP
    reads RESP | status.  With IOC set, INTSTS bit 1 (PSP_CMD_COMPLETE) is set
    and, if INTEN bit 1 is set, ``irq()`` is called (wire it to the PSP's
    interrupt).  INTSTS is write-one-to-clear.  FEATURE reads 1 (bit 0: SEV).
    """

    LAYOUTS = {
        "v1": dict(CMDRESP=0x10580, CMDBUFF_ADDR_LO=0x105E0, CMDBUFF_ADDR_HI=0x105E4,
                   FEATURE=0x105FC, INTEN=0x10610, INTSTS=0x10614),
        "v2": dict(CMDRESP=0x10980, CMDBUFF_ADDR_LO=0x109E0, CMDBUFF_ADDR_HI=0x109E4,
                   FEATURE=0x109FC, INTEN=0x10690, INTSTS=0x10694),
    }
    MMIO_SIZE = 0x100000            # BAR 2: 1 MiB covers every register offset
    CMD_SHIFT = 16
    CMD_MASK = 0x7FF                # bits 26:16
    IOC = 1 << 0
    RESP = 1 << 31
    STATUS_MASK = 0xFFFF
    CMD_COMPLETE = 1 << 1           # PSP_CMD_COMPLETE in P2CMSG_INTSTS
    FEATURE_SEV = 1 << 0

    def __init__(self, firmware: SevFirmware, layout: str = "v2", irq=None):
        self.firmware = firmware
        self.regs_at = dict(self.LAYOUTS[layout])
        for name, off in self.regs_at.items():
            setattr(self, name, off)
        self.irq = irq
        self._regs = {off: 0 for off in self.regs_at.values()}
        self._regs[self.FEATURE] = self.FEATURE_SEV
        self.last_command: tuple | None = None   # (cmd, buffer_pa, status), for logs
        self._busy = False

    def mmio_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            reg = (offset + i) & ~3
            byte = (self._regs.get(reg, 0) >> (8 * ((offset + i) & 3))) & 0xFF
            value |= byte << (8 * i)
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        touched = {}
        for i in range(size):
            reg = (offset + i) & ~3
            shift = 8 * ((offset + i) & 3)
            old = touched.get(reg, self._regs.get(reg, 0))
            touched[reg] = (old & ~(0xFF << shift)) | (((value >> (8 * i)) & 0xFF) << shift)
        for reg, new in touched.items():
            if reg == self.INTSTS:
                self._regs[reg] &= ~new
            elif reg == self.FEATURE:
                pass
            elif reg == self.CMDRESP:
                self._regs[reg] = new
                self._execute(new)
            elif reg in self._regs:
                self._regs[reg] = new

    def _execute(self, value: int) -> None:
        if self._busy:
            return                  # the firmware never writes MMIO; a backstop against re-entry
        cmd = (value >> self.CMD_SHIFT) & self.CMD_MASK
        pa = self._regs[self.CMDBUFF_ADDR_HI] << 32 | self._regs[self.CMDBUFF_ADDR_LO]
        self._busy = True
        try:
            status = int(self.firmware.command(cmd, pa))
        finally:
            self._busy = False
        self.last_command = (cmd, pa, status)
        self._regs[self.CMDRESP] = self.RESP | (status & self.STATUS_MASK)
        if value & self.IOC:
            self._regs[self.INTSTS] |= self.CMD_COMPLETE
            if self._regs[self.INTEN] & self.CMD_COMPLETE and self.irq is not None:
                self.irq()
