/*
 * dev: the Device Exclusion Vector (AMD APM vol 2, 15.24) from a kernel:
 * the DEV capability block in the host bridge's configuration space, a DEV
 * table with one bit per 4 KiB page, and DMA by two devices (QEMU's edu,
 * fw_cfg's DMA interface) blocked or allowed by it.  Boot with --device edu
 * on svmsim; QEMU has no DEV (the kernel says so and fails).
 *
 * Lines tagged "[cpu]" show what the manual leaves to the implementation
 * (here: that the host bridge caches DEV lines until DEV_FLUSH).
 */
#include "edu.h"

#define DEV_BASE_LO 0
#define DEV_BASE_HI 1
#define DEV_MAP 2
#define DEV_CAP 3
#define DEV_CR 4
#define DEV_ERR_STATUS 5
#define DEV_ERR_ADDR_LO 6
#define CR_EN 0x1
#define CR_FLUSH 0x10

static uint8_t cap;
static int slot, failures;
static uint8_t table0[128 * 1024] __attribute__((aligned(4096)));   /* SIZE 0: 4 GiB of pages */
static uint8_t table1[128 * 1024] __attribute__((aligned(4096)));
static uint8_t target[4096] __attribute__((aligned(4096)));
static uint8_t other[4096] __attribute__((aligned(4096)));
static volatile struct { uint32_t control, length; uint64_t address; } __attribute__((aligned(16))) fwdma;

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        failures++;
    }
}

static uint32_t dev_read(int function, int index)
{
    pci_write32(0, 0, cap + 4, (uint32_t)function << 8 | index);
    return pci_read32(0, 0, cap + 8);
}

static void dev_write(int function, int index, uint32_t v)
{
    pci_write32(0, 0, cap + 4, (uint32_t)function << 8 | index);
    pci_write32(0, 0, cap + 8, v);
}

static void dev_flush(void)
{
    dev_write(DEV_CR, 0, dev_read(DEV_CR, 0) | CR_FLUSH);
    while (dev_read(DEV_CR, 0) & CR_FLUSH)
        pause();
}

static void protect(uint8_t *table, void *page, bool on)
{
    uint64_t pfn = (uint64_t)page >> 12;
    if (on)
        table[pfn >> 3] |= 1 << (pfn & 7);
    else
        table[pfn >> 3] &= ~(1 << (pfn & 7));
}

/* The edu device writes `count` bytes of `fill` into `dst` (through its buffer). */
static void edu_fill(void *dst, uint8_t fill, int count)
{
    memset(other, fill, count);
    edu_dma((uint64_t)other, EDU_BUF, count, 1);
    edu_dma(EDU_BUF, (uint64_t)dst, count, 3);
}

/* fw_cfg's DMA interface reads the 4-byte signature (key 0) into `dst`. */
static uint32_t fw_cfg_signature(void *dst)
{
    fwdma.control = __builtin_bswap32(0x00000000 | 0x08 | 0x02);    /* select key 0, read */
    fwdma.length = __builtin_bswap32(4);
    fwdma.address = __builtin_bswap64((uint64_t)dst);
    uint64_t a = (uint64_t)&fwdma;
    outl(0x514, __builtin_bswap32((uint32_t)(a >> 32)));
    outl(0x518, __builtin_bswap32((uint32_t)a));
    asm volatile("" ::: "memory");    /* the device wrote memory behind the compiler's back */
    return __builtin_bswap32(fwdma.control);
}

static void report_error_log(void)
{
    uint32_t st = dev_read(DEV_ERR_STATUS, 0);
    kprintf("dev: DEV_ERR_STATUS %06x (valid %d, write %d, overflow %d, device %02x.%d), address %s\n", st,
            st & 1, (st >> 1) & 1, (st >> 2) & 1, (st >> 11) & 0x1F, (st >> 8) & 7,
            dev_read(DEV_ERR_ADDR_LO, 0) == (uint32_t)(uint64_t)target ? "the protected page" : "elsewhere");
    dev_write(DEV_ERR_STATUS, 0, 1);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    cap = pci_find_cap(0, 0, 0x0F);
    slot = edu_setup();
    if (!cap || slot < 0) {
        kprintf("dev: no DEV capability in the host bridge or no edu device\n");
        return 1;
    }
    uint32_t devcap = dev_read(DEV_CAP, 0);
    kprintf("dev: DEV capability at %02x, DEV_HDR %08x, DEV_CAP %08x: %d domains, %d maps, revision %d\n", cap,
            pci_read32(0, 0, cap), devcap, (devcap >> 8) & 0xFF, (devcap >> 16) & 0xFF, devcap & 0xFF);
    kprintf("dev: DEV_CR after reset %08x\n", dev_read(DEV_CR, 0));

    dev_write(DEV_BASE_LO, 0, (uint32_t)(uint64_t)table0 | 1);
    dev_write(DEV_BASE_HI, 0, 0);
    dev_write(DEV_CR, 0, CR_EN);
    kprintf("dev: domain 0 table: DEV_BASE_LO %s, DEV_CR %08x\n",
            dev_read(DEV_BASE_LO, 0) == ((uint32_t)(uint64_t)table0 | 1) ? "set" : "WRONG", dev_read(DEV_CR, 0));

    memset(target, 0x11, sizeof target);
    edu_fill(target, 0x22, 64);
    kprintf("dev: edu writes an unprotected page: %02x\n", target[0]);
    check(target[0] == 0x22, "unprotected DMA write");

    memset(target, 0x11, sizeof target);
    protect(table0, target, true);
    dev_flush();
    edu_fill(target, 0x33, 64);
    kprintf("dev: edu writes the protected page: %02x (blocked, unchanged)\n", target[0]);
    check(target[0] == 0x11, "protected DMA write blocked");
    report_error_log();

    edu_dma((uint64_t)target, EDU_BUF, 16, 1);
    edu_dma(EDU_BUF, (uint64_t)other, 16, 3);
    kprintf("dev: edu reads the protected page: %02x %02x (all ones)\n", other[0], other[15]);
    check(other[0] == 0xFF, "protected DMA read returns all ones");
    report_error_log();
    target[1] = 0x44;
    kprintf("dev: the CPU is never checked: it reads %02x %02x\n", target[0], target[1]);

    protect(table0, target, false);
    edu_fill(target, 0x55, 1);
    kprintf("[cpu] dev: bit cleared without DEV_FLUSH: %02x (the host bridge's cached line)\n", target[0]);
    dev_write(DEV_ERR_STATUS, 0, 1);
    dev_flush();
    edu_fill(target, 0x66, 1);
    kprintf("dev: after DEV_FLUSH: %02x\n", target[0]);
    check(target[0] == 0x66, "DEV_FLUSH makes the change visible");

    protect(table0, target, true);
    dev_write(DEV_BASE_LO, 1, (uint32_t)(uint64_t)table1 | 1);
    dev_write(DEV_MAP, 0, (uint32_t)slot | 1u << 5 | 1u << 20);    /* bus 0, UNIT0 = edu, V0, DOM0 = 1 */
    dev_flush();
    edu_fill(target, 0x77, 1);
    kprintf("dev: edu mapped to domain 1 (DEV_MAP[0] %08x) writes the page: %02x\n", dev_read(DEV_MAP, 0),
            target[0]);
    check(target[0] == 0x77, "domain 1 allows the edu device");
    memset(other, 0, 4);
    uint32_t ctl = fw_cfg_signature(target);
    kprintf("dev: fw_cfg (domain 0) DMA into it: control %08x, page %02x\n", ctl, target[0]);
    report_error_log();
    fw_cfg_signature(other);
    kprintf("dev: fw_cfg DMA elsewhere: '%c%c%c%c'\n", other[0], other[1], other[2], other[3]);
    check(target[0] == 0x77 && other[0] == 'Q', "fw_cfg stays in domain 0");

    dev_write(DEV_CR, 0, 0);
    fw_cfg_signature(target);
    kprintf("dev: DEV_CR.EN = 0: fw_cfg writes the page: '%c'\n", target[0]);
    check(target[0] == 'Q', "DEV disabled");
    kprintf("dev: %s\n", failures ? "FAIL" : "PASS");
    return failures;
}
