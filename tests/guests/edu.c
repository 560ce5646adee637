/*
 * edu: a driver for QEMU's educational PCI device (1234:11e8, QEMU
 * docs/specs/edu.rst), booted with `-device edu` on QEMU and `--device edu`
 * on svmsim.  It finds the device through configuration mechanism #1,
 * sizes and places BAR 0 itself (no firmware assumption), then exercises
 * the registers, the factorial unit, the DMA engine in both directions, and
 * the interrupt as INTx (through the I/O APIC) and as MSI.
 */
#include "edu.h"

#define VEC_INTX 0x40
#define VEC_MSI 0x41
#define EDU_IRQ 11                    /* the ISA IRQ its PIRQ is routed to */

static int slot;
static int failures;
static volatile uint32_t irq_count, irq_seen, irq_vector;

static uint8_t er8(uint32_t off) { return *(volatile uint8_t *)(EDU_BAR + off); }

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        failures++;
    }
}

static void edu_isr(struct trap_frame *f)
{
    uint32_t s = er(0x24);
    irq_seen |= s;
    irq_vector = f->vector;
    irq_count++;
    ew(0x64, s);                      /* acknowledge: INTx goes low */
    lapic_eoi();
}

static void wait_irq(uint32_t count)
{
    for (int i = 0; i < 1000000 && irq_count < count; i++)
        sti_hlt_cli();
}

static uint8_t ram_a[4096] __attribute__((aligned(4096)));
static uint8_t ram_b[4096] __attribute__((aligned(4096)));

static void config_space(void)
{
    uint32_t id = pci_read32(slot, 0, PCI_VENDOR);
    kprintf("edu: found %04x:%04x on bus 0\n", id & 0xFFFF, id >> 16);
    uint32_t rev = pci_read32(slot, 0, PCI_REVISION);
    kprintf("edu: revision %02x, class %06x, header type %02x\n", rev & 0xFF, rev >> 8,
            pci_read8(slot, 0, PCI_HEADER_TYPE));
    uint32_t sub = pci_read32(slot, 0, PCI_SUBSYSTEM);
    kprintf("edu: subsystem %04x:%04x, interrupt pin %d\n", sub & 0xFFFF, sub >> 16,
            pci_read8(slot, 0, PCI_INT_PIN));
    pci_write16(slot, 0, PCI_COMMAND, 0);
    pci_write32(slot, 0, PCI_BAR0, 0xFFFFFFFF);
    kprintf("edu: BAR0 sizing reads %08x (1 MiB, 32-bit memory)\n", pci_read32(slot, 0, PCI_BAR0));
    pci_write32(slot, 0, PCI_BAR0, EDU_BAR);
    kprintf("edu: BAR0 = %08x\n", pci_read32(slot, 0, PCI_BAR0));
    uint8_t msi = pci_find_cap(slot, 0, PCI_CAP_MSI);
    kprintf("edu: status %04x, capability pointer %02x, MSI at %02x, control %04x\n",
            pci_read16(slot, 0, PCI_STATUS), pci_read8(slot, 0, PCI_CAP_PTR), msi,
            msi ? pci_read16(slot, 0, msi + 2) : 0);
    pci_write16(slot, 0, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER);
    kprintf("edu: command %04x\n", pci_read16(slot, 0, PCI_COMMAND));
}

static void registers(void)
{
    kprintf("edu: id %08x\n", er(0));
    ew(4, 0x12345678);
    kprintf("edu: liveness ~0x12345678 = %08x\n", er(4));
    kprintf("edu: byte read of id %02x, 8-byte read of id %016lx, unaligned %08x, unused 10h %08x\n",
            er8(0), erq(0), *(volatile uint32_t *)(EDU_BAR + 2), er(0x10));
    ewq(0x80, 0x1122334455667788ul);
    kprintf("edu: DMA source (64-bit) %016lx, low half %08x, high half %08x\n", erq(0x80), er(0x80),
            er(0x84));
    ew(0x80, 0xAABBCCDD);
    kprintf("edu: 4-byte write sets the source to %016lx\n", erq(0x80));
    check(er(0) == 0x010000ED && er(4) == ~0x12345678u, "identification and liveness");
}

static uint32_t factorial(uint32_t n)
{
    ew(8, n);
    while (er(0x20) & 1)
        pause();
    return er(8);
}

static void factorials(void)
{
    kprintf("edu: 10! = %u, 12! = %u, 13! mod 2^32 = %u, 0! = %u\n", factorial(10), factorial(12),
            factorial(13), factorial(0));
    check(factorial(5) == 120, "5!");
    ew(0x20, 0x80);
    uint32_t before = irq_count;
    ew(8, 6);
    wait_irq(before + 1);
    kprintf("edu: factorial interrupt: status %02x, 6! = %u, interrupt status seen %03x, vector %02x\n",
            er(0x20), er(8), irq_seen, irq_vector);
    ew(0x20, 0);
    check(irq_count == before + 1 && irq_seen == 1, "factorial interrupt");
}

static void interrupts_intx(void)
{
    irq_seen = 0;
    uint32_t before = irq_count;
    ew(0x60, 0x5A);
    kprintf("edu: after raise 5Ah: interrupt status %02x\n", er(0x24));
    wait_irq(before + 1);
    kprintf("edu: INTx handled: vector %02x, status seen %02x, now %02x\n", irq_vector, irq_seen,
            er(0x24));
    check(irq_vector == VEC_INTX && irq_seen == 0x5A, "INTx interrupt");
    pci_write16(slot, 0, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER | PCI_CMD_INTX_DISABLE);
    ew(0x60, 0x1);
    delay_us(100);
    sti();
    delay_us(100);
    cli();
    kprintf("edu: with INTx disabled: %u interrupts, status bit 3 (interrupt) %d\n",
            irq_count - before - 1, (pci_read16(slot, 0, PCI_STATUS) >> 3) & 1);
    ew(0x64, 0x1);
    pci_write16(slot, 0, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER);
}

static void dma(void)
{
    for (int i = 0; i < 4096; i++)
        ram_a[i] = (uint8_t)(i * 7 + 3);
    memset(ram_b, 0, sizeof ram_b);
    ewq(0x80, (uint64_t)ram_a);
    ewq(0x88, EDU_BUF);
    ewq(0x90, 2048);                  /* QEMU 7.2 aborts on a transfer that ends at the buffer's end */
    ewq(0x98, 1);
    ewq(0x80, 0);                     /* ignored while the transfer runs */
    kprintf("edu: DMA started: command %lx, source still %s\n", erq(0x98),
            erq(0x80) == (uint64_t)ram_a ? "the buffer" : "changed");
    edu_dma_wait();
    edu_dma(EDU_BUF + 0x100, (uint64_t)ram_b + 16, 100, 3);
    bool same = memcmp(ram_b + 16, ram_a + 0x100, 100) == 0;
    kprintf("edu: DMA RAM -> device -> RAM: %s, bytes around it %02x %02x\n", same ? "equal" : "DIFFERENT",
            ram_b[15], ram_b[116]);
    check(same && ram_b[15] == 0 && ram_b[116] == 0, "DMA round trip");

    irq_seen = 0;
    uint32_t before = irq_count;
    ewq(0x80, EDU_BUF);
    ewq(0x88, (uint64_t)ram_b);
    ewq(0x90, 8);
    ewq(0x98, 7);
    wait_irq(before + 1);
    kprintf("edu: DMA with interrupt: status seen %03x, command %lx, first byte %02x\n", irq_seen,
            erq(0x98), ram_b[0]);
    check(irq_seen == 0x100 && ram_b[0] == ram_a[0], "DMA interrupt");
}

static void msi(void)
{
    uint8_t cap = pci_find_cap(slot, 0, PCI_CAP_MSI);
    pci_write32(slot, 0, cap + 4, 0xFEE00000u | lapic_id() << 12);
    pci_write32(slot, 0, cap + 8, 0);
    pci_write16(slot, 0, cap + 12, VEC_MSI);
    pci_write16(slot, 0, cap + 2, 1);
    kprintf("edu: MSI control %04x, address %08x, data %04x\n", pci_read16(slot, 0, cap + 2),
            pci_read32(slot, 0, cap + 4), pci_read16(slot, 0, cap + 12));
    irq_seen = 0;
    uint32_t before = irq_count;
    ew(0x60, 0x3);
    wait_irq(before + 1);
    kprintf("edu: MSI handled: vector %02x, status seen %02x, INTx status bit %d\n", irq_vector, irq_seen,
            (pci_read16(slot, 0, PCI_STATUS) >> 3) & 1);
    check(irq_vector == VEC_MSI && irq_seen == 3, "MSI interrupt");
    pci_write16(slot, 0, cap + 2, 0);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    slot = pci_find(0x1234, 0x11E8);
    if (slot < 0) {
        kprintf("edu: no edu device (boot with -device edu)\n");
        return 1;
    }
    lapic_enable();
    set_handler(VEC_INTX, edu_isr);
    set_handler(VEC_MSI, edu_isr);
    pci_route_intx(slot, 0, EDU_IRQ);
    ioapic_route(EDU_IRQ, VEC_INTX, true, lapic_id());
    config_space();
    registers();
    factorials();
    interrupts_intx();
    dma();
    msi();
    kprintf("edu: %s\n", failures ? "FAIL" : "PASS");
    return failures;
}
