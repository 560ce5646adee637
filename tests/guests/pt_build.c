/*
 * pt_build: the page-table benchmark kernel (bench/pt_bench.py; issue 14,
 * item 2).  It builds 4-level page tables that identity-map "gib=N" GiB
 * (default 1) with 4 KiB pages, the way kvm-unit-tests' setup_mmu builds
 * its tables before every SVM subtest: one install_page() call per page,
 * which walks PML4 -> PDPT -> PD from the top, allocating a zeroed table
 * (memset, a byte loop) wherever an entry is missing, then writes the PTE
 * (APM vol 2, 5.3.3, figure 5-17: 4-Kbyte page translation, long mode).
 * "mib=M" maps M MiB instead (the tests' small runs; at least 64 MiB so
 * the kernel, its stack and the tables stay mapped).  "reps=R" (default 1)
 * builds them R times, each time from scratch.
 *
 * It then loads CR3 with the new PML4, reads a marker through the new
 * mapping, restores the boot page tables and prints the table count and a
 * checksum of every entry, which QEMU and svmsim must agree on.
 */
#include "rt.h"

#define TABLES_BASE 0x2000000ul          /* 32 MiB: above the kernel, in the boot identity map */
#define PAGE 4096ul
#define PTE_P 1ul
#define PTE_W 2ul

static uint64_t next_table;
static uint64_t tables;

static uint64_t *alloc_table(void)
{
    uint64_t *t = (uint64_t *)next_table;
    next_table += PAGE;
    tables++;
    memset(t, 0, PAGE);
    return t;
}

static uint64_t *get_pte(uint64_t *pml4, uint64_t virt)
{
    uint64_t *pt = pml4;
    for (int level = 4; level > 1; level--) {
        unsigned idx = (virt >> (12 + 9 * (level - 1))) & 511;
        if (!(pt[idx] & PTE_P))
            pt[idx] = (uint64_t)alloc_table() | PTE_P | PTE_W;
        pt = (uint64_t *)(pt[idx] & ~0xFFFul);
    }
    return &pt[(virt >> 12) & 511];
}

static void __attribute__((noinline)) install_page(uint64_t *pml4, uint64_t phys, uint64_t virt)
{
    *get_pte(pml4, virt) = phys | PTE_P | PTE_W;
}

static uint64_t *build(uint64_t bytes)
{
    next_table = TABLES_BASE;
    tables = 0;
    uint64_t *pml4 = alloc_table();
    for (uint64_t a = 0; a < bytes; a += PAGE)
        install_page(pml4, a, a);
    return pml4;
}

static volatile uint64_t marker = 0x50544255494c44ul;       /* "PTBUILD" */

int kmain(uint32_t magic, uint32_t mbi)
{
    uint64_t gib = 1, mib = 0, reps = 1;
    cmdline_u64("gib", &gib);
    cmdline_u64("mib", &mib);
    cmdline_u64("reps", &reps);
    if (!mib)
        mib = gib << 10;
    kprintf("pt_build: mib=%lu reps=%lu\n", mib, reps);
    if (mib < 64 || mib > (64ul << 10)) {
        kprintf("pt_build: mib must be 64..65536\n");
        return 1;
    }
    uint64_t *pml4 = 0;
    for (uint64_t r = 0; r < reps; r++)
        pml4 = build(mib << 20);
    uint64_t sum = 0;
    for (uint64_t *p = (uint64_t *)TABLES_BASE; p < (uint64_t *)next_table; p++)
        sum = (sum ^ *p) * 0x100000001b3ul;
    /* The new tables map the kernel, its stack and the tables themselves
     * where the boot tables did: switch to them, read, switch back. */
    uint64_t old_cr3, seen;
    asm volatile("mov %%cr3, %0" : "=r"(old_cr3));
    asm volatile("mov %0, %%cr3" : : "r"((uint64_t)pml4) : "memory");
    seen = marker;
    asm volatile("mov %0, %%cr3" : : "r"(old_cr3) : "memory");
    kprintf("pt_build: %lu tables, checksum=0x%016lx, marker %s\n", tables, sum,
            seen == 0x50544255494c44ul ? "ok" : "WRONG");
    kprintf("pt_build: %s\n", seen == 0x50544255494c44ul ? "PASS" : "FAIL");
    return seen == 0x50544255494c44ul ? 0 : 1;
}
