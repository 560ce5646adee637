"""Attach the standard PC devices to a machine, where QEMU's ``pc`` puts them.

Kernels written for QEMU find: COM1 at 0x3F8 (IRQ 4), isa-debug-exit at
0xF4, the 8259 pair at 0x20/0xA0, the 8254 PIT at 0x40, port B at 0x61,
the CMOS RTC at 0x70, fw_cfg at 0x510, the local APIC at 0xFEE00000 and
the I/O APIC at 0xFEC00000, and PCI bus 0 (host bridge and PIIX3) behind
ports 0xCF8/0xCFC; and, for SKINIT, a TPM 1.2 TIS at 0xFED40000 (QEMU's pc
has one only with -device tpm-tis).  ``MachineConfig.devices`` adds optional ones (QEMU's
``-device pc-testdev``, ``-device edu``).
"""
from .apic import LocalApic, ApicMmioRouter
from .ioapic import IoApic
from . import pc_legacy
from . import edu, pc_testdev
from ..errors import ConfigError


OPTIONAL = {**pc_testdev.OPTIONAL, **edu.OPTIONAL}


def attach(machine) -> None:
    machine.pic = None
    machine.ioapic = IoApic(machine)
    machine.bus.add_mmio(0xFEC00000, 0x1000, machine.ioapic, "ioapic")
    from ..cpu.cpuid import features
    has = features(machine)
    for cpu in machine.cpus:
        # The APIC offers what the CPU model reports (AMD parts have no TSC-deadline mode).
        cpu.lapic = LocalApic(machine, cpu, x2apic="x2apic" in has, tsc_deadline="tsc_deadline" in has)
    machine.bus.add_mmio(0xFEE00000, 0x1000, ApicMmioRouter(machine), "lapic")
    machine.cpus[0].lapic.firmware_setup()     # what SeaBIOS leaves for a -kernel boot
    pc_legacy.attach(machine)
    from . import pci
    pci.attach(machine)
    from .apm import ApmControl
    ApmControl(machine).register()      # ports B2h/B3h: SMI by command (QEMU's PIIX4 APM)
    from .tpm import Tpm
    machine.tpm = Tpm(machine)          # TIS at FED4_0000h: SKINIT's measurement (APM 15.27.4)
    machine.tpm.register()
    for name in machine.config.devices:
        if name not in OPTIONAL:
            raise ConfigError(f"unknown device {name!r} (optional devices: {', '.join(sorted(OPTIONAL))})")
        OPTIONAL[name](machine).register(machine)
