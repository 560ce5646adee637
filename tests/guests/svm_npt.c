/*
 * svm_npt: nested paging (AMD APM vol 2, 15.25) seen by a hypervisor.
 *
 * The 64-bit guest uses the host's own page tables (identity, so guest
 * linear = guest physical); the hypervisor's nested tables identity-map the
 * first GiB with 2 MiB pages, split into 4 KiB pages where a test needs it.
 * - remapping: a guest-physical page backed by another host page;
 * - #NPF (15.25.6): not present on the final gPA (EXITINFO1 bit 32, US),
 *   a write to a read-only nested page (P, RW), a guest page-table access
 *   that is not mapped (bit 33), EXITINFO2 = the faulting gPA;
 * - nested Accessed/Dirty bits (15.25.5);
 * - MMIO: a guest-physical page mapped to the local APIC;
 * - the ASID-tagged TLB (15.16): after the nested tables change, TLB_CONTROL
 *   = 1 makes the guest see the new mapping; without a flush the CPU may
 *   still use the old one ([cpu] line: QEMU flushes at every VMRUN).
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static uint64_t npml4[512] __attribute__((aligned(4096)));
static uint64_t npdpt[512] __attribute__((aligned(4096)));
static uint64_t npd[512] __attribute__((aligned(4096)));
static uint64_t npt_pool[8][512] __attribute__((aligned(4096)));
static unsigned npt_used;
/* Test pages, each its own 4 KiB page. */
static uint8_t page_a[4096] __attribute__((aligned(4096)));
static uint8_t page_b[4096] __attribute__((aligned(4096)));
static uint8_t page_c[4096] __attribute__((aligned(4096)));
static uint8_t page_d[4096] __attribute__((aligned(4096)));
static uint8_t page_e[4096] __attribute__((aligned(4096)));
static uint8_t page_f[4096] __attribute__((aligned(4096)));
static uint8_t page_g[4096] __attribute__((aligned(4096)));
static struct svm_gprs gprs;
static int fails;

#define NP_P 1ul
#define NP_RW 2ul
#define NP_US 4ul
#define NP_A 0x20ul
#define NP_D 0x40ul
#define NP_PS 0x80ul
#define NPF_FINAL (1ul << 32)
#define NPF_TABLE (1ul << 33)
#define VMCB_NP_ENABLE 1ul

asm(".pushsection .text\n"
    "gn_read: mov (%rsi), %eax\n  cpuid\n  hlt\n"
    "gn_write: movl $0x99, 0x10(%rsi)\n  cpuid\n  hlt\n"
    ".popsection\n");
extern char gn_read[], gn_write[];

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        fails++;
    }
}

static void nested_init(void)
{
    npml4[0] = (uint64_t)npdpt | NP_P | NP_RW | NP_US;
    npdpt[0] = (uint64_t)npd | NP_P | NP_RW | NP_US;
    for (uint64_t i = 0; i < 512; i++)
        npd[i] = (i << 21) | NP_P | NP_RW | NP_US | NP_PS;
}

/* The nested PTE of a gPA below 1 GiB, splitting its 2 MiB page once. */
static uint64_t *npte(uint64_t gpa)
{
    uint64_t i = gpa >> 21;
    if (npd[i] & NP_PS) {
        uint64_t *t = npt_pool[npt_used++];
        for (uint64_t j = 0; j < 512; j++)
            t[j] = (i << 21) + (j << 12) | NP_P | NP_RW | NP_US;
        npd[i] = (uint64_t)t | NP_P | NP_RW | NP_US;
    }
    return (uint64_t *)(npd[i] & ~0xFFFul) + ((gpa >> 12) & 511);
}

static uint64_t run(char *rip, uint64_t rsi, uint8_t tlb_control)
{
    VMCB_U64(vmcb, VMCB_RIP) = (uint64_t)rip;
    VMCB_U8(vmcb, VMCB_TLB_CONTROL) = tlb_control;
    gprs.rsi = rsi;
    svm_clgi();
    svm_run_guest(vmcb, &gprs);
    svm_stgi();
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}

static void print_npf(const char *what, uint64_t base, const char *base_name)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE), info2 = VMCB_U64(vmcb, VMCB_EXITINFO2);
    kprintf("%s: exit %s (0x%lx) info1=0x%lx info2=", what, svm_exit_name(code), code,
            VMCB_U64(vmcb, VMCB_EXITINFO1));
    if (base_name)
        kprintf("%s+0x%lx\n", base_name, info2 - base);
    else
        kprintf("0x%lx\n", info2);
}

static void test_remap(void)
{
    *(volatile uint32_t *)page_a = 0xAAAA;
    *(volatile uint32_t *)page_b = 0xBBBB;
    *npte((uint64_t)page_a) = (uint64_t)page_b | NP_P | NP_RW | NP_US;
    uint64_t code = run(gn_read, (uint64_t)page_a, 1);
    uint32_t got = (uint32_t)VMCB_U64(vmcb, VMCB_RAX);
    kprintf("gPA page_a backed by page_b: exit %s, guest read 0x%x\n", svm_exit_name(code), got);
    check(code == SVM_EXIT_CPUID && got == 0xBBBB, "remapped read");
}

static void test_npf(void)
{
    uint64_t code = run(gn_read, 0x50000123ul, 1);
    print_npf("read of gPA 0x50000123 (no nested entry)", 0, 0);
    check(code == SVM_EXIT_NPF && VMCB_U64(vmcb, VMCB_EXITINFO1) == (NPF_FINAL | NP_US) &&
          VMCB_U64(vmcb, VMCB_EXITINFO2) == 0x50000123ul, "NPF not present");
    *npte((uint64_t)page_c) = (uint64_t)page_c | NP_P | NP_US;
    code = run(gn_write, (uint64_t)page_c, 1);
    print_npf("write to a read-only nested page", (uint64_t)page_c, "page_c");
    check(code == SVM_EXIT_NPF && VMCB_U64(vmcb, VMCB_EXITINFO1) ==
          (NPF_FINAL | NP_US | NP_RW | NP_P), "NPF write protection");
    /* A guest CR3 in guest-physical memory the nested tables do not map. */
    uint64_t cr3 = VMCB_U64(vmcb, VMCB_CR3);
    VMCB_U64(vmcb, VMCB_CR3) = 0x60000000ul;
    code = run(gn_read, (uint64_t)page_a, 1);
    print_npf("guest CR3 at gPA 0x60000000 (no nested entry)", 0, 0);
    check(code == SVM_EXIT_NPF && (VMCB_U64(vmcb, VMCB_EXITINFO1) & NPF_TABLE) &&
          !(VMCB_U64(vmcb, VMCB_EXITINFO1) & NPF_FINAL), "NPF on a guest page-table access");
    VMCB_U64(vmcb, VMCB_CR3) = cr3;
}

static void test_accessed_dirty(void)
{
    uint64_t *pte = npte((uint64_t)page_d);
    *pte &= ~(NP_A | NP_D);
    run(gn_read, (uint64_t)page_d, 1);
    kprintf("nested PTE after a guest read: A=%lu D=%lu\n", (*pte >> 5) & 1, (*pte >> 6) & 1);
    check((*pte & (NP_A | NP_D)) == NP_A, "A after read");
    run(gn_write, (uint64_t)page_d, 0);
    kprintf("nested PTE after a guest write: A=%lu D=%lu\n", (*pte >> 5) & 1, (*pte >> 6) & 1);
    check((*pte & (NP_A | NP_D)) == (NP_A | NP_D), "D after write");
}

static void test_mmio(void)
{
    *npte((uint64_t)page_g) = 0xFEE00000ul | NP_P | NP_RW | NP_US;
    run(gn_read, (uint64_t)page_g + 0x30, 1);
    uint32_t guest = (uint32_t)VMCB_U64(vmcb, VMCB_RAX);
    uint32_t host = *(volatile uint32_t *)0xFEE00030ul;
    kprintf("gPA page_g mapped to the local APIC: guest read the APIC version register: %s\n",
            guest == host ? "same as the host's" : "DIFFERENT");
    check(guest == host, "MMIO through nested tables");
}

static void test_tlb(void)
{
    *(volatile uint32_t *)page_e = 0xE;
    *(volatile uint32_t *)page_f = 0xF;
    run(gn_read, (uint64_t)page_e, 1);
    *npte((uint64_t)page_e) = (uint64_t)page_f | NP_P | NP_RW | NP_US;
    run(gn_read, (uint64_t)page_e, 0);
    kprintf("[cpu] nested remap without a TLB flush: guest read 0x%lx "
            "(0xe: the old translation, 0xf: the new one)\n", VMCB_U64(vmcb, VMCB_RAX) & 0xFF);
    run(gn_read, (uint64_t)page_e, 1);
    kprintf("after TLB_CONTROL=1: guest read 0x%lx\n", VMCB_U64(vmcb, VMCB_RAX) & 0xFF);
    check((VMCB_U64(vmcb, VMCB_RAX) & 0xFF) == 0xF, "flush shows the new mapping");
}

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("svm_npt: nested paging\n");
    struct svm_info info;
    svm_cpuid(&info);
    kprintf("nested paging supported: %u\n", info.features & SVM_FEAT_NP);
    const char *err = svm_enable(hsave);
    if (err || !(info.features & SVM_FEAT_NP)) {
        kprintf("svm_npt: %s\n", err ? err : "no nested paging");
        return 1;
    }
    nested_init();
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)gn_read, (uint64_t)&guest_stack[sizeof(guest_stack)], 0, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_CPUID | INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    VMCB_U64(vmcb, VMCB_NP_CONTROL) = VMCB_NP_ENABLE;
    VMCB_U64(vmcb, VMCB_N_CR3) = (uint64_t)npml4;
    VMCB_U64(vmcb, VMCB_G_PAT) = 0x0007040600070406ul;
    test_remap();
    test_npf();
    test_accessed_dirty();
    test_mmio();
    test_tlb();
    kprintf("svm_npt: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
