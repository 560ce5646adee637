/*
 * pci.h - PCI configuration mechanism #1 (ports CF8h/CFCh, PCI Local Bus 3.0,
 * 3.2.2.3.2) on bus 0, the capability list (6.7), and the I/O APIC's
 * redirection table (82093AA datasheet) for routing INTx.
 */
#ifndef PCI_H
#define PCI_H
#include "rt.h"

#define PCI_VENDOR 0x00
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_HEADER_TYPE 0x0E
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM 0x2C
#define PCI_CAP_PTR 0x34
#define PCI_INT_LINE 0x3C
#define PCI_INT_PIN 0x3D
#define PCI_CMD_IO 0x1
#define PCI_CMD_MEMORY 0x2
#define PCI_CMD_MASTER 0x4
#define PCI_CMD_INTX_DISABLE 0x400
#define PCI_CAP_MSI 0x05

static inline void pci_select(int slot, int fn, int reg)
{
    outl(0xCF8, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)fn << 8 | (reg & 0xFC));
}
static inline uint32_t pci_read32(int slot, int fn, int reg) { pci_select(slot, fn, reg); return inl(0xCFC); }
static inline uint16_t pci_read16(int slot, int fn, int reg) { pci_select(slot, fn, reg); return inw(0xCFC + (reg & 2)); }
static inline uint8_t pci_read8(int slot, int fn, int reg) { pci_select(slot, fn, reg); return inb(0xCFC + (reg & 3)); }
static inline void pci_write32(int slot, int fn, int reg, uint32_t v) { pci_select(slot, fn, reg); outl(0xCFC, v); }
static inline void pci_write16(int slot, int fn, int reg, uint16_t v) { pci_select(slot, fn, reg); outw(0xCFC + (reg & 2), v); }
static inline void pci_write8(int slot, int fn, int reg, uint8_t v) { pci_select(slot, fn, reg); outb(0xCFC + (reg & 3), v); }

/* The slot of the first function 0 on bus 0 with this vendor/device, or -1. */
static inline int pci_find(uint16_t vendor, uint16_t device)
{
    for (int slot = 0; slot < 32; slot++)
        if (pci_read32(slot, 0, PCI_VENDOR) == ((uint32_t)device << 16 | vendor))
            return slot;
    return -1;
}

/* Offset of capability `id` in the function's list, or 0. */
static inline uint8_t pci_find_cap(int slot, int fn, uint8_t id)
{
    if (!(pci_read16(slot, fn, PCI_STATUS) & 0x10))
        return 0;
    for (uint8_t p = pci_read8(slot, fn, PCI_CAP_PTR) & 0xFC, n = 0; p && n < 48; n++) {
        if (pci_read8(slot, fn, p) == id)
            return p;
        p = pci_read8(slot, fn, p + 1) & 0xFC;
    }
    return 0;
}

/* Route a function's INTx pin to ISA IRQ `irq` on QEMU's pc (and svmsim):
 * INTx of slot s drives the PIIX3's PIRQ (pin - 1 + s - 1) mod 4, whose route
 * register (PIIX3 00:01.0, 60h-63h) names the ISA IRQ; that IRQ reaches the
 * 8259 and I/O APIC pin `irq`.  Returns the PIRQ (0-3 = A-D), -1 if no pin. */
static inline int pci_route_intx(int slot, int fn, int irq)
{
    int pin = pci_read8(slot, fn, PCI_INT_PIN);
    if (!pin)
        return -1;
    int pirq = (pin - 1 + slot - 1) & 3;
    pci_write8(1, 0, 0x60 + pirq, (uint8_t)irq);
    return pirq;
}

/* ---- I/O APIC at FEC00000h ---- */
#define IOAPIC_BASE 0xFEC00000ul
static inline void ioapic_write(uint32_t reg, uint32_t v)
{
    *(volatile uint32_t *)IOAPIC_BASE = reg;
    *(volatile uint32_t *)(IOAPIC_BASE + 0x10) = v;
}
/* Route a pin to `vector` on APIC ID `dest`, fixed, physical; level or edge. */
static inline void ioapic_route(int pin, int vector, bool level, uint32_t dest)
{
    ioapic_write(0x10 + 2 * pin + 1, dest << 24);
    ioapic_write(0x10 + 2 * pin, (uint32_t)vector | (level ? 1u << 15 : 0));
}
static inline void ioapic_mask(int pin) { ioapic_write(0x10 + 2 * pin, 1u << 16); }

#endif
