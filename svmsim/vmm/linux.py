"""A Linux bzImage as a guest of the reference VMM (issue 16, item 4).

The VMM plays the part of QEMU's loader for its guest: ``load_linux`` puts
the kernel, its boot_params (the VMM's own E820 map: the guest's RAM laid
out as SeaBIOS would report it), the command line and the initrd into guest
memory with ``svmsim.boot.linux`` -- the same code a bare boot uses -- writes
SeaBIOS's MP and $PIR tables into the guest's F segment (the guest sees the
machine's PIC, PIT, UART and PCI bus through the VMM's forwarded port I/O,
and the I/O and local APIC pages passed through), and sets the VMCB to the
state the kernel's setup code leaves for code32_start: 32-bit protected
mode, paging off, the setup code's GDT, TR and a null IDT, ESI = boot_params.

``sev_regions`` lists what an SEV launch must encrypt with LAUNCH_UPDATE_DATA
(everything the kernel reads before it knows about encryption is private
memory in an SEV guest: the image, boot_params, the GDT, the command line,
the initrd and the firmware tables); ``launch_sev`` in ``sev_launch`` takes it.

What an SEV-ES (and SEV-SNP) Linux guest needs beyond this path: a VMSA
holding this entry state (LAUNCH_UPDATE_VMSA) instead of VMCB fields, a
GHCB page the kernel registers through the GHCB MSR protocol, and #VC
handling in the VMM for the kernel's CPUID, port I/O, MSR and MMIO exits
(its early #VC handler uses the MSR protocol for CPUID before the GHCB
exists); SNP adds the CC blob (boot_params.cc_blob_address) with the
secrets and CPUID pages, and page validation (PVALIDATE) of the E820 RAM.
"""
from __future__ import annotations

from ..boot import linux, mptable
from ..boot.multiboot import e820_map



def load_linux(vmm, path: str, append: str = "", initrd: str | None = None):
    """Load a bzImage into ``vmm``'s guest memory and set the guest's entry
    state; returns the LinuxBootInfo (addresses are guest-physical)."""
    e820 = e820_map(vmm.mem, amd_ht_hole=vmm.m.profile.vendor == "AuthenticAMD")   # as QEMU does
    info = linux.load_linux(vmm.mem, path, append, initrd, e820=e820)
    for addr, blob in mptable.tables(vmm.m):
        vmm.mem.write_bytes(addr, blob)
    mptable.program_chipset(vmm.m)
    _set_entry_state(vmm, info)
    vmm.linux_info = info
    return info


def _set_entry_state(vmm, info) -> None:
    v = vmm.vmcb
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "tr", "ldtr"):
        s = info.segments[name]
        v.set_segment(name.upper(), s.selector, s.attrib, s.limit, s.base)
    v.set_segment("GDTR", 0, 0, info.gdtr.limit, info.gdtr.base)
    v.set_segment("IDTR", 0, 0, info.idtr.limit, info.idtr.base)
    v["CR0"], v["CR3"], v["CR4"] = info.cr0, info.cr3, info.cr4
    v["EFER"] = info.efer | (1 << 12)                   # SVME, for VMRUN's check
    v["RFLAGS"], v["RIP"] = info.eflags, info.regs["eip"]
    v["RSP"], v["RAX"] = info.regs["esp"], info.regs["eax"]
    v["DR7"], v["DR6"] = 0x400, 0xFFFF0FF0
    vmm.gprs = {name: info.regs[e] for name, e in
                (("rbx", "ebx"), ("rcx", "ecx"), ("rdx", "edx"), ("rsi", "esi"),
                 ("rdi", "edi"), ("rbp", "ebp"))}


def sev_regions(info) -> list[tuple[int, int]]:
    """(gPA, length) ranges an SEV launch encrypts for this guest: the legacy
    low megabyte (boot_params, the GDT, the command line, the MP tables) and
    the kernel image, and the initrd."""
    end_of_cmdline = linux.CMDLINE_ADDR + 0x1000                  # cmdline_size < 4 KiB
    regions = [(linux.TSS_BASE, end_of_cmdline - linux.TSS_BASE),  # TSS, boot_params, GDT, cmdline
               (mptable.MP_FLOATING_ADDR & ~0xFFF, 0x1000),
               (info.load_addr, info.load_end - info.load_addr)]
    if info.initrd_size:
        regions.append((info.initrd_addr, info.initrd_size))
    return regions


def launch_linux_sev(vmm, owner=None):
    """Launch the loaded kernel as an SEV guest (issue 16, item 4): the
    regions of ``sev_regions`` encrypted and measured through the AMD-SP,
    the measurement checked by ``owner`` (a default owner with policy NODBG
    when None), then SEV_ENABLE -- ``sev_launch.launch_sev``'s sequence."""
    from ..sev.crypto import GuestOwner
    from .sev_launch import launch_sev
    from .vmm import GuestExit
    low = vmm.m.profile.extra.get("sev", {}).get("min_sev_asid", 1)
    if vmm.asid < low:
        raise GuestExit(f"ASID {vmm.asid} is not an SEV ASID on this CPU (SEV guests use "
                        f"{low} and up: CPUID 8000_001F EDX); create the Vmm with asid={low}")
    owner = owner or GuestOwner(policy=1)
    return launch_sev(vmm, owner, regions=sev_regions(vmm.linux_info))
