"""The firmware tables SeaBIOS leaves in the F segment under QEMU's ``pc``
machine, for kernels that look for them (Linux without ACPI): the
MultiProcessor Specification table and the $PIR PCI interrupt routing table.

References: Intel MultiProcessor Specification 1.4 (4.1 the floating
pointer, 4.2 the configuration table header, 4.3 the entries); Microsoft's
"PCI IRQ Routing Table Specification" 1.0 ($PIR); what SeaBIOS (src/fw/
mptable.c, pirtable.c) builds and where QEMU 7.2 leaves it (observed with
``-m 128M -cpu EPYC-Milan``: floating pointer at 0xF5BA0, configuration
table at 0xF5BB0, $PIR at 0xF5C80).

Entries are generated from the machine, as SeaBIOS does: one CPU entry per
CPU (signature and features from CPUID 1, the local APIC's version), a PCI
bus (if there are PCI functions) and an ISA bus, the I/O APIC, an interrupt
entry for each PCI pin in use, the ISA IRQs 0-15 except the four SeaBIOS
keeps for PCI (5, 9, 10, 11) with IRQ 0 on I/O APIC pin 2 (QEMU's
``etc/irq0-override``), and LINT0 ExtINT / LINT1 NMI.
"""
from __future__ import annotations

import struct

MP_FLOATING_ADDR = 0xF5BA0
MP_CONFIG_ADDR = 0xF5BB0
PIR_ADDR = 0xF5C80

LAPIC_ADDR, IOAPIC_ADDR, IOAPIC_ID, IOAPIC_VERSION = 0xFEE00000, 0xFEC00000, 0, 0x11
PCI_IRQS = (5, 9, 10, 11)             # SeaBIOS's BUILD_PCI_IRQS: not ISA entries
PIRQ_IRQS = (10, 10, 11, 11)          # what SeaBIOS programs into PIRQA..D
PIRQ_IRQ_BITMAP = 0xDEF8              # IRQs a PIRQ may take, in $PIR
PIR_SLOTS = 6
ROUTER_ID = (0x8086, 0x122E)          # "compatible PCI interrupt router": PIIX


def _checksum_fix(blob: bytearray, at: int) -> None:
    blob[at] = (-sum(blob)) & 0xFF


def mp_config_table(cpus, pci_functions, has_pci: bool = True) -> bytes:
    """The configuration table (MP spec 4.2, 4.3) for ``cpus`` (signature,
    features, lapic version per CPU) and the PCI functions with a pin
    (slot, pin, interrupt line)."""
    entries = []
    for i, (sig, feat, ver) in enumerate(cpus):
        flags = 0x01 | (0x02 if i == 0 else 0)           # enabled, BSP
        entries.append(struct.pack("<BBBBIIQ", 0, i, ver, flags, sig, feat, 0))
    isa_bus = 0
    if has_pci:
        entries.append(struct.pack("<BB6s", 1, 0, b"PCI   "))
        isa_bus = 1
    entries.append(struct.pack("<BB6s", 1, isa_bus, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, IOAPIC_ID, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    seen = set()
    for slot, pin, line in pci_functions:                # INT, active high
        if (slot, pin) not in seen:
            seen.add((slot, pin))
            entries.append(struct.pack("<BBHBBBB", 3, 0, 1, 0, slot << 2 | (pin - 1), IOAPIC_ID, line))
    for irq in range(16):
        if irq in PCI_IRQS or irq == 2:                  # 2: covered by the IRQ 0 override
            continue
        entries.append(struct.pack("<BBHBBBB", 3, 0, 0, isa_bus, irq, IOAPIC_ID, 2 if irq == 0 else irq))
    entries.append(struct.pack("<BBHBBBB", 4, 3, 0, isa_bus, 0, 0, 0))       # ExtINT -> LINT0
    entries.append(struct.pack("<BBHBBBB", 4, 1, 0, isa_bus, 0, 0xFF, 1))    # NMI -> LINT1
    body = b"".join(entries)
    head = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0,
                                 b"BOCHSCPU", b"0.1         ", 0, 0, len(entries),
                                 LAPIC_ADDR, 0, 0, 0))
    blob = head + body
    _checksum_fix(blob, 7)
    return bytes(blob)


def mp_floating_pointer(config_addr: int) -> bytes:
    """The 16-byte floating pointer structure (MP spec 4.1)."""
    blob = bytearray(struct.pack("<4sIBBB5s", b"_MP_", config_addr, 1, 4, 0, bytes(5)))
    _checksum_fix(blob, 10)
    return bytes(blob)


def pir_table(router_devfn: int) -> bytes:
    """$PIR: the router and devices 1..6 of bus 0, pin INTx of device d
    wired to PIRQ (x + d - 1) mod 4 (links 60h-63h, the PIIX3's route
    registers), as QEMU's PIIX3 swizzles."""
    slots = b""
    for n in range(PIR_SLOTS):                       # devices 1..6, slot numbers 0..5
        links = b"".join(struct.pack("<BH", 0x60 + (pin + n) % 4, PIRQ_IRQ_BITMAP) for pin in range(4))
        slots += struct.pack("<BB12sBB", 0, (n + 1) << 3, links, n, 0)
    head = bytearray(struct.pack("<4sHHBBHHHI11sB", b"$PIR", 0x0100, 32 + len(slots), 0,
                                 router_devfn, 0, *ROUTER_ID, 0, bytes(11), 0))
    blob = head + slots
    _checksum_fix(blob, 31)
    return bytes(blob)


def tables(machine) -> list[tuple[int, bytes]]:
    """(address, bytes) of the MP floating pointer, its configuration table
    and $PIR for ``machine``'s CPUs and PCI functions (setting each PCI pin's
    interrupt line as SeaBIOS does)."""
    from ..cpu.cpuid import cpuid
    from ..devices.apic import APIC_VERSION
    cpus = []
    for cpu in machine.cpus:
        sig, _, _, feat = cpuid(cpu, 1, 0)
        cpus.append((sig, feat, APIC_VERSION & 0xFF))    # SeaBIOS reads the APIC's register
    pci = getattr(machine, "pci", None)
    funcs, out = [], []
    if pci is not None:
        for (slot, fn), f in sorted(pci.functions.items()):
            if f.interrupt_pin:                          # SeaBIOS sets the line
                line = PIRQ_IRQS[pci.pirq_of(f)]
                f.config_write(0x3C, 1, line)
                funcs.append((slot, f.interrupt_pin, line))
        out.append((PIR_ADDR, pir_table(pci.isa.slot << 3 | pci.isa.fn)))
    out.append((MP_CONFIG_ADDR, mp_config_table(cpus, funcs, has_pci=pci is not None)))
    out.append((MP_FLOATING_ADDR, mp_floating_pointer(MP_CONFIG_ADDR)))
    return out


def program_chipset(machine) -> None:
    """The PIIX3's PIRQ routes and the ELCR as SeaBIOS leaves them (PCI IRQs
    level-triggered)."""
    pci = getattr(machine, "pci", None)
    if pci is not None:
        for i, irq in enumerate(PIRQ_IRQS):
            pci.isa.config_write(0x60 + i, 1, irq)
    elcr = 0
    for irq in set(PIRQ_IRQS):
        elcr |= 1 << irq
    machine.io.write(0x4D0, 1, elcr & 0xFF)
    machine.io.write(0x4D1, 1, elcr >> 8)


def install(machine) -> None:
    """Write the tables where SeaBIOS leaves them and program the chipset."""
    for addr, blob in tables(machine):
        machine.bus.write_bytes(addr, blob)
    program_chipset(machine)
