/*
 * t_exceptions: raise each exception on purpose and check what the CPU
 * reports (vector, error code, CR2), then resume.  Vectors and error codes:
 * AMD APM vol 2, 8.2 ("Vectors") and 8.4.2 (page-fault error code).
 */
#include "suites.h"

/* Test pages live in an otherwise unused, identity-mapped GiB. */
#define VA_NP 0x40000000ul           /* never present */
#define VA_RO 0x40001000ul           /* read-only alias of ro_page */
#define VA_SUP 0x40002000ul          /* supervisor-only alias of sup_page */
#define VA_UCODE 0x40003000ul        /* user alias of the .user code page */
#define VA_USTACK 0x40004000ul       /* user stack */

static uint64_t ro_page[512] __attribute__((aligned(4096)));
static uint64_t sup_page[512] __attribute__((aligned(4096)));
static uint64_t user_stack[512] __attribute__((aligned(4096)));

static int fails;

static void report(const char *what, bool show_cr2)
{
    kprintf("%s: vector=%d error=0x%lx", what, last_trap.vector, last_trap.error);
    if (show_cr2)
        kprintf(" cr2=0x%lx", last_trap.cr2);
    kprintf("\n");
}

static void expect(const char *what, int vector, uint64_t error, bool check_cr2, uint64_t cr2)
{
    report(what, check_cr2);
    fails += CHECK(last_trap.vector == vector, "vector");
    fails += CHECK(last_trap.error == error, "error code");
    if (check_cr2)
        fails += CHECK(last_trap.cr2 == cr2, "cr2");
}

/* #UD is a fault: RIP points at UD2; we resume by skipping its 2 bytes. */
static void ud_handler(struct trap_frame *f)
{
    record_trap(f);
    f->rip += 2;
}

/* #BP is a trap: the saved RIP already points after INT3 (APM vol 2, 8.2.4). */
static void record_handler(struct trap_frame *f)
{
    record_trap(f);
}

static void test_faults(void)
{
    TRY("xor %%edx, %%edx\n\tdiv %0", "c"(0));
    expect("#DE div by zero", 0, 0, false, 0);

    set_handler(6, ud_handler);
    trap_arm();
    asm volatile("ud2" ::: "memory");
    expect("#UD ud2, resumed at rip+2", 6, 0, false, 0);
    set_handler(6, NULL);

    uint64_t next_rip;
    set_handler(3, record_handler);
    trap_arm();
    asm volatile("int3\n.Lbp%=: lea .Lbp%=(%%rip), %0" : "=r"(next_rip) : : "memory");
    expect("#BP int3", 3, 0, false, 0);
    kprintf("#BP saved rip is the next instruction: %s\n",
            last_trap.rip == next_rip ? "yes" : "no");
    fails += CHECK(last_trap.rip == next_rip, "#BP rip");
    set_handler(3, NULL);

    /* #GP(0) from RDMSR of an unimplemented MSR is what AMD hardware does
     * (APM vol 3, RDMSR) but QEMU's TCG returns 0 instead, so the "bad MSR
     * read" check is RDMSR at CPL3, in test_user_mode(). */
    TRY("mov (%0), %%rax", "r"(0x8000000000000000ul));
    expect("#GP non-canonical load", 13, 0, false, 0);
}

static void test_page_faults(void)
{
    unmap_page(VA_NP);
    TRY("mov (%0), %%rax", "r"(VA_NP + 0x10));
    expect("#PF read of not-present page", 14, 0, true, VA_NP + 0x10);
    TRY("movq $1, (%0)", "r"(VA_NP + 0x18));
    expect("#PF write to not-present page", 14, 2, true, VA_NP + 0x18);

    /* CR0.WP = 1 makes read-only pages read-only for CPL0 too (APM 5.6.4). */
    uint64_t cr0 = read_cr0();
    map_page(VA_RO, (uint64_t)ro_page, PTE_P);
    write_cr0(cr0 | CR0_WP);
    fails += CHECK(TRY("mov (%0), %%rax", "r"(VA_RO)) == -1, "read of read-only page");
    TRY("movq $1, (%0)", "r"(VA_RO + 8));
    expect("#PF write to read-only page, CR0.WP=1", 14, 3, true, VA_RO + 8);
    write_cr0(cr0 & ~CR0_WP);
    int v = TRY("movq $7, (%0)", "r"(VA_RO + 8));
    kprintf("write to read-only page with CR0.WP=0: %s\n",
            v == -1 && ro_page[1] == 7 ? "allowed" : "FAULTED");
    fails += CHECK(v == -1 && ro_page[1] == 7, "CR0.WP=0 write");
    write_cr0(cr0);
    unmap_page(VA_RO);
}

/* #PF / #GP from CPL3: log it and resume where the user code's R11 says. */
static struct { uint64_t vector, error, cr2, cs; } user_trap[4];
static int n_user_trap;

static void user_trap_handler(struct trap_frame *f)
{
    if ((f->cs & 3) != 3 || n_user_trap == 4) {
        kprintf("FAIL: vector %lu at CPL%lu error 0x%lx cr2 0x%lx\n", f->vector,
                f->cs & 3, f->error, f->cr2);
        exit_qemu(2);
    }
    user_trap[n_user_trap].vector = f->vector;
    user_trap[n_user_trap].error = f->error;
    user_trap[n_user_trap].cr2 = f->vector == 14 ? f->cr2 : 0;
    user_trap[n_user_trap].cs = f->cs;
    n_user_trap++;
    f->rip = f->r11;
}

/*
 * IRETQ to CPL3 code (isr.S) that reads and writes a supervisor page and
 * executes RDMSR (privileged: #GP(0) at CPL3, APM vol 3 RDMSR), then comes
 * back with int 0x80.
 */
static void test_user_mode(void)
{
    static const char *const what[3] = {
        "#PF CPL3 read of supervisor page", "#PF CPL3 write of supervisor page",
        "#GP rdmsr at CPL3",
    };
    static const uint64_t want_vec[3] = { 14, 14, 13 }, want_err[3] = { 5, 7, 0 };
    static const uint64_t want_cr2[3] = { VA_SUP + 8, VA_SUP + 8, 0 };

    map_page(VA_SUP, (uint64_t)sup_page, PTE_P | PTE_W);
    map_page(VA_UCODE, (uint64_t)user_code_start, PTE_P | PTE_U);
    map_page(VA_USTACK, (uint64_t)user_stack, PTE_P | PTE_W | PTE_U);
    set_handler(13, user_trap_handler);
    set_handler(14, user_trap_handler);
    n_user_trap = 0;
    trap_arm();
    uint64_t rax = enter_user(VA_UCODE, VA_USTACK + 4096, VA_SUP + 8);
    set_handler(13, NULL);
    set_handler(14, NULL);
    for (int i = 0; i < 3 && i < n_user_trap; i++) {
        kprintf("%s: vector=%lu error=0x%lx", what[i], user_trap[i].vector, user_trap[i].error);
        if (user_trap[i].vector == 14)
            kprintf(" cr2=0x%lx", user_trap[i].cr2);
        kprintf(" cpl=%lu\n", user_trap[i].cs & 3);
        fails += CHECK(user_trap[i].vector == want_vec[i] && user_trap[i].error == want_err[i]
                       && user_trap[i].cr2 == want_cr2[i], what[i]);
    }
    fails += CHECK(n_user_trap == 3, "three CPL3 faults");
    kprintf("int 0x80 from CPL3: vector=%d cs=0x%lx rax=0x%lx\n", last_trap.vector,
            last_trap.cs, rax);
    fails += CHECK(last_trap.vector == 0x80 && last_trap.cs == SEL_UCODE64 && rax == 0x600d,
                   "int 0x80");
    fails += CHECK(sup_page[1] == 0, "supervisor page unchanged");
    unmap_page(VA_SUP);
    unmap_page(VA_UCODE);
    unmap_page(VA_USTACK);
}

/*
 * #DF: with the #PF gate marked not present, delivering a #PF raises #NP,
 * a contributory exception, and "#PF then contributory" is a double fault
 * (APM vol 2, 8.2.9, Table 8-7).  #DF runs on IST1; its saved RIP is
 * undefined by the manual, so TRY() restores RIP and RSP itself.
 */
static void test_double_fault(void)
{
    idt_set_present(14, false);
    TRY("mov (%0), %%rax", "r"(VA_NP));
    idt_set_present(14, true);
    expect("#DF from #NP while delivering #PF", 8, 0, false, 0);
}

static void test_soft_int(void)
{
    set_handler(0x30, record_handler);
    trap_arm();
    asm volatile("int $0x30" ::: "memory");
    set_handler(0x30, NULL);
    kprintf("int 0x30: vector=%d\n", last_trap.vector);
    fails += CHECK(last_trap.vector == 0x30, "int 0x30");
}

int t_exceptions(void)
{
    fails = 0;
    kputs("exceptions: start");
    test_faults();
    test_page_faults();
    test_user_mode();
    test_double_fault();
    test_soft_int();
    kprintf("exceptions: %s\n", fails ? "FAIL" : "PASS");
    return fails;
}
