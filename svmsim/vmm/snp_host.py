"""What a host kernel does for SEV-SNP before and around the AMD-SP's commands
(Linux arch/x86/virt/svm/sev.c and drivers/crypto/ccp/sev-dev.c), for the
reference VMM and for tests:

* ``enable_snp``: carve the RMP out of the top of RAM, program RMP_BASE /
  RMP_END and set SYSCFG.SNPEn (with MemEncryptionModEn and VMPLEn) on every
  CPU, as ``snp_rmptable_init`` and ``snp_enable`` do (APM vol 2, 15.36.2,
  15.36.4), then SNP_INIT_EX with INIT_RMP;
* ``rmpupdate``, ``psmash``: the RMPUPDATE and PSMASH instructions'
  semantics (svm/snp.py) on CPU 0, as ``rmp_make_private`` /
  ``rmp_make_shared`` / ``psmash`` use them;
* ``firmware_page`` / ``reclaim``: hand a page to the AMD-SP (assigned,
  ASID 0, immutable) and take it back (SNP_PAGE_RECLAIM, then RMPUPDATE to
  the hypervisor), as ``snp_alloc_firmware_page`` / ``snp_reclaim_pages``.
"""
from __future__ import annotations

from ..memory.rmp import BOOKKEEPING, ENTRY, PAGE
from ..sev.api import SevStatus
from ..sev.snp_api import INIT_EX_INIT_RMP, SnpCmd
from .vmm import GuestExit

SYSCFG, HWCR, RMP_BASE, RMP_END = 0xC0010010, 0xC0010015, 0xC0010132, 0xC0010133
MEM_ENCRYPTION_MOD_EN, SNP_EN, VMPL_EN = 1 << 23, 1 << 24, 1 << 25
_8K = 0x2000


def rmp_bounds(ram_top: int) -> tuple[int, int]:
    """(RMP_BASE, RMP_END) of an RMP covering [0, ram_top) and placed at its top."""
    size = (BOOKKEEPING + ENTRY * (ram_top // PAGE) + _8K - 1) & ~(_8K - 1)
    base = (ram_top - size) & ~0xFFFFF                # 1 MiB aligned, below the top
    return base, base + size - 1


def enable_snp(machine, psp=None) -> tuple[int, int]:
    """RMP in RAM, SNPEn on every CPU, and (with ``psp``) SNP_INIT_EX."""
    from ..cpu import msr
    base, end = rmp_bounds(machine.bus.low_top)
    for cpu in machine.cpus:
        if msr.rdmsr(cpu, SYSCFG) & SNP_EN:
            continue                                   # already on (its bounds can no longer change)
        msr.wrmsr(cpu, RMP_BASE, base)
        msr.wrmsr(cpu, RMP_END, end)
        cpu.msr[HWCR] = cpu.msr.get(HWCR, 0) | 1                       # SmmLock
        msr.wrmsr(cpu, SYSCFG, msr.rdmsr(cpu, SYSCFG) | MEM_ENCRYPTION_MOD_EN | SNP_EN | VMPL_EN)
    if psp is not None:
        psp.call(SnpCmd.INIT_EX, "init_ex", flags=INIT_EX_INIT_RMP)
    return base, end


def rmpupdate(machine, spa: int, gpa: int = 0, assigned: bool = False, asid: int = 0,
              immutable: bool = False, size: int = 0) -> None:
    """RMPUPDATE on CPU 0 (host mode); GuestExit naming the failure code."""
    from ..svm.snp import rmp_update
    cpu = machine.cpus[0]
    rc = rmp_update(cpu, machine.rmp, spa, gpa, int(assigned), size, int(immutable), asid)
    if rc:
        raise GuestExit(f"RMPUPDATE {spa:#x} failed with {rc}")


def psmash(machine, spa: int) -> None:
    """PSMASH on CPU 0 (host mode): the 2 MiB RMP entry at ``spa`` becomes 512
    4 KiB entries, Validated kept (APM vol 2, 15.36.11)."""
    from ..svm.snp import rmp_psmash
    rc = rmp_psmash(machine.cpus[0], machine.rmp, spa)
    if rc:
        raise GuestExit(f"PSMASH {spa:#x} failed with {rc}")


def firmware_page(machine, spa: int) -> int:
    rmpupdate(machine, spa, assigned=True, immutable=True)
    return spa


def reclaim(psp, spa: int) -> None:
    """SNP_PAGE_RECLAIM, then RMPUPDATE back to the hypervisor."""
    status, _ = psp.command(SnpCmd.PAGE_RECLAIM, "page", paddr=spa)
    if status != SevStatus.SUCCESS:
        raise GuestExit(f"SNP_PAGE_RECLAIM {spa:#x}: {SevStatus(status).name}")
    rmpupdate(psp.m, spa)
