/*
 * edu.h - QEMU's educational PCI device (1234:11e8, QEMU docs/specs/edu.rst)
 * for the kernels that need a DMA-capable device: registers in BAR 0, which
 * edu_setup() places at EDU_BAR itself (no firmware assumption).
 */
#ifndef EDU_H
#define EDU_H
#include "rt.h"
#include "pci.h"

#define EDU_BAR 0xE0000000ul          /* in the uncached top GiB of the identity map */
#define EDU_BUF 0x40000               /* the device's 4 KiB DMA buffer */
#define EDU_DMA_TO_RAM 2

static inline uint32_t er(uint32_t off) { return *(volatile uint32_t *)(EDU_BAR + off); }
static inline void ew(uint32_t off, uint32_t v) { *(volatile uint32_t *)(EDU_BAR + off) = v; }
static inline uint64_t erq(uint32_t off) { return *(volatile uint64_t *)(EDU_BAR + off); }
static inline void ewq(uint32_t off, uint64_t v) { *(volatile uint64_t *)(EDU_BAR + off) = v; }

/* Find the device, put BAR 0 at EDU_BAR, enable memory decoding and bus
 * mastering; returns its slot or -1. */
static inline int edu_setup(void)
{
    int slot = pci_find(0x1234, 0x11E8);
    if (slot < 0)
        return -1;
    pci_write16(slot, 0, PCI_COMMAND, 0);
    pci_write32(slot, 0, PCI_BAR0, EDU_BAR);
    pci_write16(slot, 0, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER);
    return slot;
}

static inline void edu_dma_wait(void)
{
    while (er(0x98) & 1)
        pause();
    asm volatile("" ::: "memory");    /* the device wrote memory behind the compiler's back */
}

/* One transfer (command: 1 = RAM -> device, 3 = device -> RAM), waited for. */
static inline void edu_dma(uint64_t src, uint64_t dst, uint64_t count, uint64_t cmd)
{
    ewq(0x80, src);
    ewq(0x88, dst);
    ewq(0x90, count);
    ewq(0x98, cmd);
    edu_dma_wait();
}

#endif
