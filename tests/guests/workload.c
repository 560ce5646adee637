/*
 * workload: the benchmark kernel of realistic code (bench/workload_bench.py).
 * Each phase runs when its key is on the command line (none given: every
 * phase with a small count) and prints one checksum line:
 *
 *   pt=R      build 4-level page tables mapping mib=M MiB (default 4096) with
 *             4 KiB pages, R times - install_pte() walks the levels and
 *             allocates and memsets missing tables, as kvm-unit-tests'
 *             setup_npt() does before every SVM subtest
 *   calls=R   naive recursive Fibonacci of 15 (1973 calls), R times
 *   stos=R    REP STOSQ over a 64 KiB buffer, R times (memset)
 *   movs=R    REP MOVSQ of a 64 KiB buffer, R times (memcpy)
 *   apic=N    N local-APIC MMIO round trips (TPR write, TPR read, CCR read)
 *   uart=N    N lines of 64 characters on COM1
 *   near=N    a loop of N iterations whose counter shares its code page
 *   far=N     the same loop with the counter on another page
 *   smc=N     N iterations of code that rewrites an immediate of an
 *             instruction it executes next (self-modifying code)
 */
#include "rt.h"

#define PAGE 4096ul
#define PT_P 1ul
#define PT_W 2ul
#define PT_ADDR 0x000FFFFFFFFFF000ul
#define POOL_BASE (16ul << 20)          /* page-table pool: 16 MiB and up */
#define BUF_SIZE (64ul << 10)

static uint64_t pool_next;
static uint8_t buf_a[BUF_SIZE] __attribute__((aligned(4096)));
static uint8_t buf_b[BUF_SIZE] __attribute__((aligned(4096)));

static void *alloc_page(void)
{
    void *p = (void *)pool_next;
    pool_next += PAGE;
    return p;
}

/* Walk from the PML4 down to the level-1 table, creating missing tables. */
static __attribute__((noinline)) uint64_t *install_pte(uint64_t *pml4, uint64_t virt, uint64_t pte)
{
    uint64_t *pt = pml4;
    for (int level = 4; level > 1; level--) {
        unsigned off = (virt >> (12 + 9 * (level - 1))) & 511;
        if (!(pt[off] & PT_P)) {
            uint64_t *new_pt = alloc_page();
            memset(new_pt, 0, PAGE);
            pt[off] = (uint64_t)new_pt | PT_P | PT_W;
        }
        pt = (uint64_t *)(pt[off] & PT_ADDR);
    }
    unsigned off = (virt >> 12) & 511;
    pt[off] = pte;
    return &pt[off];
}

static void phase_pt(uint64_t rounds, uint64_t mib)
{
    uint64_t sum = 0, tables = 0;
    for (uint64_t r = 0; r < rounds; r++) {
        pool_next = POOL_BASE;
        uint64_t *pml4 = alloc_page();
        memset(pml4, 0, PAGE);
        for (uint64_t pa = 0; pa < (mib << 20); pa += PAGE)
            install_pte(pml4, pa, pa | PT_P | PT_W);
        tables = (pool_next - POOL_BASE) / PAGE;
        /* Check a few translations by walking the new tables. */
        for (uint64_t va = 0; va < (mib << 20); va += (mib << 20) / 7 + PAGE * 3) {
            uint64_t *pt = pml4;
            for (int level = 4; level > 1; level--)
                pt = (uint64_t *)(pt[(va >> (12 + 9 * (level - 1))) & 511] & PT_ADDR);
            sum = sum * 31 + pt[(va >> 12) & 511];
        }
    }
    kprintf("pt: mib=%lu rounds=%lu tables=%lu checksum=0x%016lx\n", mib, rounds, tables, sum);
}

static __attribute__((noinline)) uint64_t fib(uint64_t n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

static void phase_stos(uint64_t rounds)
{
    uint64_t sum = 0;
    for (uint64_t r = 0; r < rounds; r++) {
        void *d = buf_a;
        uint64_t n = BUF_SIZE / 8, v = r * 0x0101010101010101ul;
        asm volatile("rep stosq" : "+D"(d), "+c"(n) : "a"(v) : "memory");
        sum += ((uint64_t *)buf_a)[r % (BUF_SIZE / 8)];
    }
    kprintf("stos: rounds=%lu checksum=0x%016lx\n", rounds, sum);
}

static void phase_movs(uint64_t rounds)
{
    for (uint64_t i = 0; i < BUF_SIZE; i++)
        buf_a[i] = (uint8_t)(i * 7);
    uint64_t sum = 0;
    for (uint64_t r = 0; r < rounds; r++) {
        void *d = buf_b;
        const void *s = buf_a;
        uint64_t n = BUF_SIZE / 8;
        buf_a[r % BUF_SIZE] ^= 1;
        asm volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
        sum += buf_b[(r * 13) % BUF_SIZE];
    }
    kprintf("movs: rounds=%lu checksum=0x%016lx\n", rounds, sum);
}

static void phase_apic(uint64_t n)
{
    volatile uint32_t *tpr = (volatile uint32_t *)(LAPIC_BASE + LAPIC_TPR);
    volatile uint32_t *ccr = (volatile uint32_t *)(LAPIC_BASE + LAPIC_TIMER_CCR);
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        *tpr = (uint32_t)(i & 0xF0);
        sum += *tpr + *ccr;          /* the timer is stopped: CCR reads 0 */
    }
    *tpr = 0;
    kprintf("apic: n=%lu checksum=0x%lx\n", n, sum);
}

static void phase_uart(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        kprintf("uart %08lu: the quick brown fox jumps over the lazy dog..\n", i);
    kprintf("uart: n=%lu\n", n);
}

/*
 * Code and data on one page.  near_loop's counter is the quad after its
 * code, in the same 4 KiB page (.text is writable: the runtime maps
 * everything RW); far_loop's counter is in .data.  smc_loop stores the
 * iteration number into the immediate of the `add` it executes next.
 */
extern uint64_t near_loop(uint64_t n), far_loop(uint64_t n), smc_loop(uint64_t n);
uint64_t far_counter;
asm(".pushsection .text.workload, \"ax\"\n"
    ".balign 4096\n"
    "near_loop:\n"
    "    movq $0, near_counter(%rip)\n"
    "1:  addq $3, near_counter(%rip)\n"
    "    xorq %rdi, near_counter(%rip)\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    mov near_counter(%rip), %rax\n"
    "    ret\n"
    ".balign 8\n"
    "near_counter: .quad 0\n"
    "far_loop:\n"
    "    movq $0, far_counter(%rip)\n"
    "1:  addq $3, far_counter(%rip)\n"
    "    xorq %rdi, far_counter(%rip)\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    mov far_counter(%rip), %rax\n"
    "    ret\n"
    "smc_loop:\n"
    "    xor %eax, %eax\n"
    "1:  mov %edi, smc_imm(%rip)\n"      /* patch the immediate below */
    "    .byte 0x05\n"                   /* add $imm32, %eax */
    "smc_imm: .long 0\n"
    "    rol $5, %eax\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    ret\n"
    ".balign 4096\n"
    ".popsection\n");

int kmain(uint32_t magic, uint32_t mbi)
{
    static const char *const keys[] = {"pt", "calls", "stos", "movs", "apic", "uart",
                                       "near", "far", "smc"};
    static const uint64_t small[] = {1, 2, 4, 4, 100, 3, 1000, 1000, 1000};
    uint64_t count[9], mib = 4096, v;
    bool any = false;
    for (int i = 0; i < 9; i++)
        any |= cmdline_u64(keys[i], &v);
    for (int i = 0; i < 9; i++) {
        count[i] = any ? 0 : small[i];
        cmdline_u64(keys[i], &count[i]);
    }
    if (!any)
        mib = 64;
    cmdline_u64("mib", &mib);
    if (mib > (32 << 10)) {
        kprintf("workload: mib=%lu is more than 32 GiB\n", mib);
        return 1;
    }
    if (count[0])
        phase_pt(count[0], mib);
    if (count[1]) {
        static volatile uint64_t depth = 15;
        uint64_t sum = 0;
        for (uint64_t r = 0; r < count[1]; r++)
            sum += fib(depth);
        kprintf("calls: rounds=%lu sum=%lu\n", count[1], sum);
    }
    if (count[2])
        phase_stos(count[2]);
    if (count[3])
        phase_movs(count[3]);
    if (count[4]) {
        lapic_enable();
        phase_apic(count[4]);
    }
    if (count[5])
        phase_uart(count[5]);
    if (count[6])
        kprintf("near: n=%lu checksum=0x%lx\n", count[6], near_loop(count[6]));
    if (count[7])
        kprintf("far: n=%lu checksum=0x%lx\n", count[7], far_loop(count[7]));
    if (count[8])
        kprintf("smc: n=%lu checksum=0x%lx\n", count[8], smc_loop(count[8]));
    return 0;
}
