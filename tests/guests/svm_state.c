/*
 * svm_state: the world switch's state handling and the SVM instructions
 * themselves (AMD APM vol 2, chapter 15; vol 3, the SVM instruction pages).
 *
 * 1. Host state after #VMEXIT (15.5.1 saves it, 15.6 reloads it): RSP, RAX,
 *    RFLAGS (IF and the arithmetic flags as at VMRUN), CR0/CR3/CR4/EFER,
 *    ES/CS/SS/DS, GDTR/IDTR; host DR7 (15.6: "disables all breakpoints");
 *    FS and STAR (VMLOAD/VMSAVE state) stay the guest's.  Guest state
 *    written to the VMCB (15.6): RIP, RSP, RAX, RFLAGS, CR0/CR2/CR3/CR4,
 *    EFER, CPL, segments in VMCB attribute form, GDTR/IDTR, DR6/DR7.
 * 2. VMSAVE/VMLOAD (15.5.2; vol 3): exactly FS, GS, TR, LDTR (with the
 *    hidden base/limit/attributes), KernelGsBase, STAR, LSTAR, CSTAR,
 *    SFMASK, SYSENTER_CS/ESP/EIP -- no other byte of the page written, no
 *    other register loaded; the LDTR base VMLOAD loaded is used by a later
 *    MOV FS.  #GP(0) for rAX not 4 KiB aligned or at/above 2^MAXPHYADDR;
 *    #UD with EFER.SVME = 0 (VMRUN, VMLOAD, VMSAVE, INVLPGA; STGI/CLGI stay
 *    legal when SVM-Lock or SKINIT is supported: [cpu]); VMMCALL in the host
 *    is always #UD.
 * 3. The SVM instructions in a guest (vol 3; ch. 15 "Instruction
 *    Intercepts"): VMLOAD, VMSAVE, STGI, CLGI, VMRUN, INVLPGA, SKINIT
 *    intercepted -> 82h-85h, 80h, 7Ah, 86h with RIP at the instruction; an
 *    unintercepted VMMCALL -> #UD (seen through the #UD intercept).  With
 *    the guest's EFER.SVME = 0 and every intercept still on, the #UD comes
 *    first (simple exceptions are checked before instruction intercepts;
 *    Bochs and QEMU agree, VMMCALL included).  Such a guest cannot be
 *    re-entered (VMRUN requires EFER.SVME = 1, 15.5.1), so it runs in one go
 *    and logs the #UDs through its own IDT.
 * 4. TSC_OFFSET: added to the guest's RDTSC, RDTSCP and RDMSR TSC, not to
 *    the host's; the RDTSC (6Eh), RDTSCP (87h) and RDPMC (6Fh) intercepts,
 *    each on its own.
 * 5. SHUTDOWN intercept (7Fh): a guest triple fault (IDT limit 0, INT3)
 *    exits instead of resetting the machine; the host runs another guest.
 * 6. A 32-bit guest with its own paging, non-PAE (CR4.PSE, 4 MiB pages)
 *    then PAE, guest physical = host physical: it reads 4000_0000h through
 *    its tables; #PF intercept with EXITINFO1 = error code and EXITINFO2 =
 *    address (ch. 15 "Exception Intercepts"); an exit at CPL 3 (VMCB CPL,
 *    CS/SS attributes); the host CR3 is back after each #VMEXIT.
 *
 * Guest RIPs print as labels.  "[cpu]" lines hold values of the CPU model,
 * "[qemu]" lines places where QEMU 7.2 TCG departs from the APM, with the
 * APM's value alongside: the hidden TR type after LTR, host DR7 after
 * #VMEXIT, RDMSR TSC without TSC_OFFSET, the RDTSCP intercept.
 * (QEMU 7.2 also crashes -- SIGSEGV -- when the host has a data breakpoint
 * armed in DR7 across VMRUN, so the host's breakpoint here is an
 * instruction breakpoint on an address that is never executed.)
 */
#include "svm.h"

#define MSR_TSC 0x10
#define MSR_SYSENTER_CS 0x174
#define MSR_SYSENTER_ESP 0x175
#define MSR_SYSENTER_EIP 0x176
#define MSR_STAR 0xC0000081
#define MSR_LSTAR 0xC0000082
#define MSR_CSTAR 0xC0000083
#define MSR_SFMASK 0xC0000084
#define MSR_FS_BASE 0xC0000100
#define MSR_GS_BASE 0xC0000101
#define MSR_KERNEL_GS_BASE 0xC0000102

/* State-save fields svm.h does not name (APM vol 2, appendix B, Table B-2). */
#define VMCB_CSTAR 0x610
#define VMCB_SFMASK 0x618
#define VMCB_SYSENTER_CS 0x628
#define VMCB_SYSENTER_ESP 0x630
#define VMCB_SYSENTER_EIP 0x638

/* Exit codes svm.h does not name (APM vol 2, appendix C). */
#define EXIT_RDPMC 0x06F
#define EXIT_INVLPGA 0x07A
#define EXIT_VMLOAD 0x082
#define EXIT_VMSAVE 0x083
#define EXIT_STGI 0x084
#define EXIT_CLGI 0x085
#define EXIT_SKINIT 0x086
#define EXIT_RDTSCP 0x087
#define EXIT_EXCP_UD (SVM_EXIT_EXCP_BASE + 6)
#define EXIT_EXCP_PF (SVM_EXIT_EXCP_BASE + 14)

#define CPUID_8000_0001_ECX_SKINIT (1u << 12)
#define CPUID_8000_0001_EDX_RDTSCP (1u << 27)

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t page_a[4096] __attribute__((aligned(4096)));
static uint8_t page_b[4096] __attribute__((aligned(4096)));
static uint8_t page_c[4096] __attribute__((aligned(4096)));
static uint8_t scratch[3 * 4096] __attribute__((aligned(4096)));
uint8_t guest_page[4096] __attribute__((aligned(4096)));
uint64_t pml4_copy[512] __attribute__((aligned(4096)));
static uint8_t guest_stack[8192] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static struct svm_info info;
static int fails;

static int check(bool ok, const char *what)
{
    if (!ok)
        kprintf("FAIL: %s\n", what);
    return !ok;
}
#define CHECK(cond, what) (fails += check((cond), (what)))

static const char *yes(bool b) { return b ? "yes" : "no"; }

/* ================================================================ guest code */

/* Section 1: the guest changes every piece of state VMRUN loads, then
 * exits with an intercepted VMMCALL. */
asm(".pushsection .text\n"
    "g1_entry:\n"
    "  mov $0x23, %ax\n  mov %ax, %ds\n  mov %ax, %es\n  mov %ax, %fs\n"
    "  mov $0xC0000100, %ecx\n  mov $0x5a5a000, %eax\n  xor %edx, %edx\n  wrmsr\n"
    "  mov $0xC0000081, %ecx\n  mov $0x11112222, %eax\n  mov $0x00330044, %edx\n  wrmsr\n"
    "  mov %cr0, %rax\n  xor $0xa, %rax\n  mov %rax, %cr0\n"            /* TS, MP */
    "  movabs $0xc2c2deadbeef, %rax\n  mov %rax, %cr2\n"
    "  mov g1_cr3(%rip), %rax\n  mov %rax, %cr3\n"
    "  mov %cr4, %rax\n  xor $0x404, %rax\n  mov %rax, %cr4\n"          /* TSD, OSXMMEXCPT */
    "  mov $0xC0000080, %ecx\n  rdmsr\n  xor $0x801, %eax\n  wrmsr\n"   /* SCE, NXE */
    "  mov $0xffff4ff1, %eax\n  mov %rax, %dr6\n"
    "  mov $0xf0f00700, %eax\n  mov %rax, %dr7\n"
    "  lgdt g1_gdtr(%rip)\n  lidt g1_idtr(%rip)\n"
    "  pushq $0xcd7\n  popfq\n"
    "  mov g1_rsp(%rip), %rsp\n"
    "  movabs $0x1122334455667788, %rax\n"
    "g1_vmmcall: vmmcall\n"
    "g1_hlt: hlt\n  jmp g1_hlt\n"
    ".popsection\n");

/* Section 3: the SVM instructions inside a guest.  RAX = guest_page. */
asm(".pushsection .text\n"
    "g3_entry:\n"
    "  lea guest_page(%rip), %rax\n  xor %ecx, %ecx\n"
    "g3_vmload: vmload %rax\n"
    "g3_vmsave: vmsave %rax\n"
    "g3_stgi: stgi\n"
    "g3_clgi: clgi\n"
    "g3_vmrun: vmrun %rax\n"
    "g3_invlpga: invlpga %rax, %ecx\n"
    "g3_skinit: skinit %eax\n"
    "g3_vmmcall: vmmcall\n"
    "g3_vmmcall2: vmmcall\n"
    /* EFER.SVME = 0 in the guest (EFER is not intercepted).  A VMRUN
     * cannot re-enter a guest whose EFER.SVME is 0 (15.5.1), so this part
     * runs in one go: the guest's own #UD handler logs each RIP. */
    "  mov $0xC0000080, %ecx\n  rdmsr\n  btr $12, %eax\n  wrmsr\n"
    "  lea guest_page(%rip), %rax\n  xor %ecx, %ecx\n"
    "g3u_vmrun: vmrun %rax\n"
    "g3u_vmload: vmload %rax\n"
    "g3u_vmsave: vmsave %rax\n"
    "g3u_invlpga: invlpga %rax, %ecx\n"
    "g3u_vmmcall: vmmcall\n"
    "g3u_stgi: stgi\n"
    "g3u_clgi: clgi\n"
    "g3u_skinit: skinit %eax\n"
    "  mov $0xC0000080, %ecx\n  rdmsr\n  bts $12, %eax\n  wrmsr\n"
    "g3_hlt: hlt\n  jmp g3_hlt\n"
    "g3_ud_isr:\n"
    "  push %rax\n  push %rcx\n  push %rdx\n"
    "  mov 24(%rsp), %rax\n  mov g3_ud_count(%rip), %ecx\n  lea g3_ud_log(%rip), %rdx\n"
    "  mov %rax, (%rdx,%rcx,8)\n  incl g3_ud_count(%rip)\n  addq $3, 24(%rsp)\n"
    "  pop %rdx\n  pop %rcx\n  pop %rax\n  iretq\n"
    ".popsection\n");

/* Section 4: TSC reads (phase 1, not intercepted), then the intercepted
 * forms (phase 2). */
asm(".pushsection .text\n"
    "g4_entry:\n"
    "  rdtsc\n  shl $32, %rdx\n  or %rdx, %rax\n  mov %rax, g4_vals(%rip)\n"
    "  rdtscp\n  shl $32, %rdx\n  or %rdx, %rax\n  mov %rax, g4_vals+8(%rip)\n"
    "  mov $0x10, %ecx\n  rdmsr\n  shl $32, %rdx\n  or %rdx, %rax\n  mov %rax, g4_vals+16(%rip)\n"
    "g4_hlt1: hlt\n"
    "g4_rdtsc: rdtsc\n"
    "g4_hlt2: hlt\n"
    "g4_rdtscp: rdtscp\n"
    "g4_hlt3: hlt\n"
    "g4_pmc: xor %ecx, %ecx\n"
    "g4_rdpmc: rdpmc\n"
    "g4_hlt4: hlt\n  jmp g4_hlt4\n"
    ".popsection\n");

/* Section 5: with IDTR.limit = 0, INT3 -> #GP -> #DF -> triple fault. */
asm(".pushsection .text\n"
    "g5_entry: nop\n"
    "g5_int3: int3\n"
    "g5_hlt: hlt\n  jmp g5_hlt\n"
    ".popsection\n");

/* Section 6: 32-bit protected mode with paging; its own GDT (g6_gdt). */
#define G6_MAPPED 0x40000000u        /* mapped by the guest's tables only */
#define G6_UNMAPPED 0x50000000u
asm(".pushsection .text\n"
    ".code32\n"
    "g6_entry:\n"
    "  mov 0x40000000, %eax\n  mov 0x40000004, %ebx\n"
    "g6_vmmcall: vmmcall\n"
    "g6_pf: mov 0x50000000, %eax\n"
    "g6_after_pf:\n"
    "  pushl $0x23\n  pushl $g6_ustack_top\n  pushfl\n  pushl $0x1b\n  pushl $g6_ucpuid\n  iretl\n"
    "g6_ucpuid: cpuid\n"
    "g6_hlt: jmp g6_hlt\n"
    ".code64\n"
    ".popsection\n");

extern char g1_entry[], g1_vmmcall[], g1_hlt[], g3_entry[], g3_vmload[], g3_vmsave[],
    g3_stgi[], g3_clgi[], g3_vmrun[], g3_invlpga[], g3_skinit[], g3_vmmcall[], g3_vmmcall2[],
    g3u_vmrun[], g3u_vmload[], g3u_vmsave[], g3u_invlpga[], g3u_vmmcall[], g3u_stgi[],
    g3u_clgi[], g3u_skinit[], g3_hlt[], g4_entry[], g4_hlt1[], g4_rdtsc[], g4_rdtscp[],
    g4_rdpmc[], g4_hlt2[], g4_hlt3[], g4_hlt4[], g4_pmc[], g3_ud_isr[], g5_entry[], g5_int3[], g5_hlt[], g6_entry[], g6_vmmcall[],
    g6_pf[], g6_after_pf[], g6_ucpuid[], g6_hlt[];

/* Data the guests use (section 1 and 4). */
uint64_t g1_cr3, g1_rsp;
struct { uint16_t limit; uint64_t base; } __attribute__((packed)) g1_gdtr, g1_idtr;
uint64_t g1_idt[16] __attribute__((aligned(16)));
volatile uint64_t g4_vals[3];
uint8_t g6_ustack[1024] __attribute__((aligned(16)));
#define g6_ustack_top_val ((uint64_t)g6_ustack + sizeof(g6_ustack))
asm(".set g6_ustack_top, g6_ustack + 1024\n");

#define L(x) {#x, x}
static const struct svm_label labels[] = {
    L(g1_entry), L(g1_vmmcall), L(g1_hlt), L(g3_entry), L(g3_vmload), L(g3_vmsave),
    L(g3_stgi), L(g3_clgi), L(g3_vmrun), L(g3_invlpga), L(g3_skinit), L(g3_vmmcall),
    L(g3_vmmcall2), L(g3u_vmrun), L(g3u_vmload), L(g3u_vmsave), L(g3u_invlpga),
    L(g3u_vmmcall), L(g3u_stgi), L(g3u_clgi), L(g3u_skinit), L(g3_hlt), L(g4_entry),
    L(g4_hlt1), L(g4_rdtsc), L(g4_rdtscp), L(g4_rdpmc), L(g4_hlt2), L(g4_hlt3),
    L(g4_hlt4), L(g4_pmc), L(g5_entry),
    L(g5_int3), L(g5_hlt), L(g6_entry), L(g6_vmmcall), L(g6_pf), L(g6_after_pf),
    L(g6_ucpuid), L(g6_hlt),
};

/* "label" or "label+n" for an address at or just after a guest label. */
static void print_sym(uint64_t addr)
{
    if (!svm_print_label(labels, sizeof(labels) / sizeof(labels[0]), addr, 16))
        CHECK(false, "guest address is not at a known label");
}

/* ================================================================ helpers */

static uint64_t exitcode(void) { return VMCB_U64(vmcb, VMCB_EXITCODE); }
static uint64_t vrip(void) { return VMCB_U64(vmcb, VMCB_RIP); }

/* One run: CLGI, VMLOAD guest, VMRUN, VMSAVE guest, VMLOAD host, STGI. */
static void run_once(void)
{
    svm_run_switched(vmcb, host_save, &gprs);
}

/* Print "<what>: NAME (0xCODE) rip=label". */
static void print_exit(const char *what)
{
    kprintf("%s: %s (0x%lx) rip=", what, svm_exit_name(exitcode()), exitcode());
    print_sym(vrip());
    kprintf("\n");
}

static void new_vmcb_long(char *rip, void *idt, uint16_t idt_limit)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)rip, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    idt, idt_limit);
    svm_vmsave(vmcb);                /* VMLOAD state: the host's */
    memset(&gprs, 0, sizeof(gprs));
}

static uint16_t read_sel(int which)
{
    uint16_t v = 0;
    switch (which) {
    case 0: asm volatile("mov %%es, %0" : "=r"(v)); break;
    case 1: asm volatile("mov %%cs, %0" : "=r"(v)); break;
    case 2: asm volatile("mov %%ss, %0" : "=r"(v)); break;
    case 3: asm volatile("mov %%ds, %0" : "=r"(v)); break;
    case 4: asm volatile("mov %%fs, %0" : "=r"(v)); break;
    case 5: asm volatile("mov %%gs, %0" : "=r"(v)); break;
    case 6: asm volatile("sldt %0" : "=r"(v)); break;
    case 7: asm volatile("str %0" : "=r"(v)); break;
    }
    return v;
}

struct dtr { uint16_t limit; uint64_t base; } __attribute__((packed));
static void read_dtrs(struct dtr *g, struct dtr *i)
{
    asm volatile("sgdt %0" : "=m"(*g));
    asm volatile("sidt %0" : "=m"(*i));
}
static uint64_t read_dr6(void) { uint64_t v; asm volatile("mov %%dr6, %0" : "=r"(v)); return v; }
static uint64_t read_dr7(void) { uint64_t v; asm volatile("mov %%dr7, %0" : "=r"(v)); return v; }
static void write_dr0(uint64_t v) { asm volatile("mov %0, %%dr0" : : "r"(v)); }
static void write_dr7(uint64_t v) { asm volatile("mov %0, %%dr7" : : "r"(v)); }

static void print_seg(const char *name, void *page, uint32_t off)
{
    kprintf("  %s: sel=0x%x attr=0x%04x limit=0x%x", name, VMCB_U16(page, off + SEG_SEL),
            VMCB_U16(page, off + SEG_ATTRIB), VMCB_U32(page, off + SEG_LIMIT));
}

/* ================================================================ 1. host state */

/*
 * s1_vmrun(vmcb): VMRUN with known host RFLAGS (IF = 1 plus every
 * arithmetic flag and AC) and records RSP before, RAX/RFLAGS/RSP after.
 * GIF is 0 (CLGI by the caller), so IF = 1 lets nothing in.
 */
uint64_t s1_rsp_before, s1_rsp_after, s1_rax_after, s1_rflags_after;
#define S1_HOST_RFLAGS 0x40ad7ul     /* AC OF IF SF ZF AF PF CF + bit 1 */
asm(".pushsection .text\n"
    ".globl s1_vmrun\n"
    "s1_vmrun:\n"
    "  push %rbx\n  push %rbp\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
    "  mov %rsp, s1_rsp_before(%rip)\n"
    "  pushq $0x40ad7\n  popfq\n"
    "  mov %rdi, %rax\n"
    "  vmrun %rax\n"
    "  mov %rax, s1_rax_after(%rip)\n"
    "  pushfq\n  popq s1_rflags_after(%rip)\n"
    "  mov %rsp, s1_rsp_after(%rip)\n"
    "  pushq $2\n  popfq\n"
    "  pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbp\n  pop %rbx\n"
    "  ret\n"
    ".popsection\n");
void s1_vmrun(void *vmcb);

static volatile uint64_t dr_dummy;

static void section1(void)
{
    kprintf("== 1. host state after #VMEXIT, guest state in the VMCB (15.5.1, 15.6)\n");
    new_vmcb_long(g1_entry, NULL, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | INTERCEPT_VMMCALL;
    memcpy(pml4_copy, (void *)(read_cr3() & ~0xFFFul), 4096);
    g1_cr3 = (uint64_t)pml4_copy | 0x18;          /* PWT | PCD */
    g1_rsp = (uint64_t)&guest_stack[sizeof(guest_stack)] - 0x48;
    g1_gdtr.limit = 0x2F;
    struct dtr hg0, hi0, hg1, hi1;
    read_dtrs(&hg0, &hi0);
    g1_gdtr.base = hg0.base;
    g1_idtr.limit = sizeof(g1_idt) - 1;
    g1_idtr.base = (uint64_t)g1_idt;

    uint64_t cr0 = read_cr0(), cr3 = read_cr3(), cr4 = read_cr4(), efer = rdmsr(MSR_EFER);
    uint64_t star = rdmsr(MSR_STAR);
    uint16_t sel0[6];
    for (int i = 0; i < 6; i++)
        sel0[i] = read_sel(i);
    /* Host DR7: G0 with a write breakpoint on a variable nobody writes. */
    write_dr0((uint64_t)&dr_dummy);
    write_dr7(0x00000402);
    uint64_t dr7_before = read_dr7();

    svm_clgi();
    s1_vmrun(vmcb);
    uint64_t dr7_after = read_dr7();
    write_dr7(0x400);
    uint64_t cr0a = read_cr0(), cr3a = read_cr3(), cr4a = read_cr4(), efera = rdmsr(MSR_EFER);
    uint16_t sel1[6];
    for (int i = 0; i < 6; i++)
        sel1[i] = read_sel(i);
    read_dtrs(&hg1, &hi1);
    uint64_t fs_base_a = rdmsr(MSR_FS_BASE), star_a = rdmsr(MSR_STAR);
    svm_vmload(host_save);          /* FS, STAR... back to the host's */
    svm_stgi();

    print_exit("exit");
    CHECK(exitcode() == SVM_EXIT_VMMCALL && vrip() == (uint64_t)g1_vmmcall, "section 1 exit");

    kprintf("host after #VMEXIT:\n");
    kprintf("  RSP = RSP at VMRUN: %s\n", yes(s1_rsp_after == s1_rsp_before));
    kprintf("  RAX = VMCB address (RAX at VMRUN): %s\n", yes(s1_rax_after == (uint64_t)vmcb));
    kprintf("  RFLAGS = 0x%lx (at VMRUN 0x%lx: IF and arithmetic flags restored)\n",
            s1_rflags_after, S1_HOST_RFLAGS);
    CHECK(s1_rsp_after == s1_rsp_before && s1_rax_after == (uint64_t)vmcb &&
          s1_rflags_after == S1_HOST_RFLAGS, "host RSP/RAX/RFLAGS");
    kprintf("  CR0, CR3, CR4, EFER as before VMRUN: %s %s %s %s (EFER=0x%lx)\n",
            yes(cr0a == cr0), yes(cr3a == cr3), yes(cr4a == cr4), yes(efera == efer), efera);
    CHECK(cr0a == cr0 && cr3a == cr3 && cr4a == cr4 && efera == efer, "host CRs/EFER");
    kprintf("  ES CS SS DS = 0x%x 0x%x 0x%x 0x%x (before: 0x%x 0x%x 0x%x 0x%x)\n",
            sel1[0], sel1[1], sel1[2], sel1[3], sel0[0], sel0[1], sel0[2], sel0[3]);
    CHECK(!memcmp(sel0, sel1, 4 * sizeof(uint16_t)), "host ES/CS/SS/DS");
    kprintf("  GDTR limit 0x%x, IDTR limit 0x%x, bases as before: %s\n", hg1.limit, hi1.limit,
            yes(hg1.base == hg0.base && hi1.base == hi0.base));
    CHECK(hg1.limit == hg0.limit && hi1.limit == hi0.limit && hg1.base == hg0.base &&
          hi1.base == hi0.base, "host GDTR/IDTR");
    /* 15.6: "Disables all breakpoints in the host DR7 register"; Bochs and
     * KVM load 0x400.  QEMU 7.2 reloads the DR7 saved at VMRUN. */
    kprintf("[qemu] host DR7 after #VMEXIT = 0x%lx, before VMRUN 0x%lx (APM: 0x400, "
            "breakpoints disabled)\n", dr7_after, dr7_before);
    CHECK(dr7_after == 0x400 || dr7_after == dr7_before, "host DR7 after #VMEXIT");
    kprintf("  not switched by #VMEXIT (VMSAVE/VMLOAD state): FS = 0x%x, FS_BASE = 0x%lx, "
            "STAR = 0x%lx (the guest's: %s)\n", sel1[4], fs_base_a, star_a,
            yes(sel1[4] == 0x23 && fs_base_a == 0x5a5a000 && star_a == 0x0033004411112222ul));
    CHECK(sel1[4] == 0x23 && fs_base_a == 0x5a5a000 && star_a == 0x0033004411112222ul &&
          star != star_a, "FS/STAR stay the guest's");

    kprintf("guest state in the VMCB:\n");
    kprintf("  RIP = ");
    print_sym(vrip());
    kprintf(", RSP = guest stack top - 0x%lx, RAX = 0x%lx, RFLAGS = 0x%lx\n",
            (uint64_t)&guest_stack[sizeof(guest_stack)] - VMCB_U64(vmcb, VMCB_RSP),
            VMCB_U64(vmcb, VMCB_RAX), VMCB_U64(vmcb, VMCB_RFLAGS));
    CHECK(VMCB_U64(vmcb, VMCB_RSP) == g1_rsp && VMCB_U64(vmcb, VMCB_RAX) == 0x1122334455667788ul &&
          VMCB_U64(vmcb, VMCB_RFLAGS) == 0xcd7, "guest RSP/RAX/RFLAGS");
    uint64_t gcr3 = VMCB_U64(vmcb, VMCB_CR3);
    kprintf("  CR0 ^ host CR0 = 0x%lx, CR2 = 0x%lx, CR3 = pml4_copy+0x%lx, CR4 ^ host CR4 = 0x%lx\n",
            VMCB_U64(vmcb, VMCB_CR0) ^ cr0, VMCB_U64(vmcb, VMCB_CR2), gcr3 - (uint64_t)pml4_copy,
            VMCB_U64(vmcb, VMCB_CR4) ^ cr4);
    CHECK(VMCB_U64(vmcb, VMCB_CR0) == (cr0 ^ 0xa) && VMCB_U64(vmcb, VMCB_CR2) == 0xc2c2deadbeeful &&
          gcr3 == g1_cr3 && VMCB_U64(vmcb, VMCB_CR4) == (cr4 ^ 0x404), "guest CRs");
    kprintf("  EFER = 0x%lx, CPL = %u, DR6 = 0x%lx, DR7 = 0x%lx\n", VMCB_U64(vmcb, VMCB_EFER),
            VMCB_U8(vmcb, VMCB_CPL), VMCB_U64(vmcb, VMCB_DR6), VMCB_U64(vmcb, VMCB_DR7));
    CHECK(VMCB_U64(vmcb, VMCB_EFER) == (efer ^ 0x801) && VMCB_U8(vmcb, VMCB_CPL) == 0 &&
          VMCB_U64(vmcb, VMCB_DR6) == 0xffff4ff1 && VMCB_U64(vmcb, VMCB_DR7) == 0xf0f00700,
          "guest EFER/CPL/DR6/DR7");
    static const struct { const char *n; uint32_t off; uint16_t sel, attr; } segs[] = {
        {"CS", VMCB_CS, SEL_CODE64, 0x0a9b}, {"SS", VMCB_SS, SEL_DATA, 0x0c93},
        {"DS", VMCB_DS, SEL_UDATA, 0x0cf3}, {"ES", VMCB_ES, SEL_UDATA, 0x0cf3},
    };
    for (unsigned i = 0; i < 4; i++) {
        print_seg(segs[i].n, vmcb, segs[i].off);
        kprintf(" base=0x%lx\n", VMCB_U64(vmcb, segs[i].off + SEG_BASE));
        CHECK(VMCB_U16(vmcb, segs[i].off + SEG_SEL) == segs[i].sel &&
              VMCB_U16(vmcb, segs[i].off + SEG_ATTRIB) == segs[i].attr &&
              VMCB_U32(vmcb, segs[i].off + SEG_LIMIT) == 0xFFFFFFFF, "guest segment");
    }
    kprintf("  GDTR limit 0x%x (base = host GDT: %s), IDTR limit 0x%x (base = g1_idt: %s)\n",
            VMCB_U32(vmcb, VMCB_GDTR + SEG_LIMIT),
            yes(VMCB_U64(vmcb, VMCB_GDTR + SEG_BASE) == hg0.base),
            VMCB_U32(vmcb, VMCB_IDTR + SEG_LIMIT),
            yes(VMCB_U64(vmcb, VMCB_IDTR + SEG_BASE) == (uint64_t)g1_idt));
    CHECK(VMCB_U32(vmcb, VMCB_GDTR + SEG_LIMIT) == 0x2f &&
          VMCB_U32(vmcb, VMCB_IDTR + SEG_LIMIT) == sizeof(g1_idt) - 1, "guest GDTR/IDTR");
}

/* ================================================================ 2. VMSAVE / VMLOAD */

/* The bytes VMSAVE writes and VMLOAD reads (APM vol 2, 15.5.2; Table B-2). */
static bool in_vmsave_set(uint32_t off)
{
    return (off >= VMCB_FS && off < VMCB_GS + 16) || (off >= VMCB_LDTR && off < VMCB_LDTR + 16) ||
           (off >= VMCB_TR && off < VMCB_TR + 16) || (off >= VMCB_STAR && off < VMCB_SYSENTER_EIP + 8);
}

static const struct { const char *n; uint32_t msr, off; } msrs[] = {
    {"KERNEL_GS_BASE", MSR_KERNEL_GS_BASE, VMCB_KERNEL_GS_BASE}, {"STAR", MSR_STAR, VMCB_STAR},
    {"LSTAR", MSR_LSTAR, VMCB_LSTAR}, {"CSTAR", MSR_CSTAR, VMCB_CSTAR},
    {"SFMASK", MSR_SFMASK, VMCB_SFMASK}, {"SYSENTER_CS", MSR_SYSENTER_CS, VMCB_SYSENTER_CS},
    {"SYSENTER_ESP", MSR_SYSENTER_ESP, VMCB_SYSENTER_ESP},
    {"SYSENTER_EIP", MSR_SYSENTER_EIP, VMCB_SYSENTER_EIP},
};
static const uint64_t msr_vals_a[] = {
    0xFFFF803344445000ul, 0x001B000812345678ul, 0xFFFF804455556000ul, 0xFFFF805566667000ul,
    0x47FD5, 0x48, 0x88776650, 0x99887760,
};
static const uint64_t msr_vals_b[] = {
    0x00007F0011112000ul, 0x0023001087654321ul, 0xFFFFFFFF81000000ul, 0xFFFFFFFF82000000ul,
    0x700, 0x10, 0x11223340, 0x22334450,
};

/* A 16-byte LDT system descriptor (type 2) in a spare GDT slot (the TSS
 * slot of CPU 7, unused with one CPU): selector 0xA0. */
#define SEL_LDT 0xA0
extern uint64_t gdt[];
static uint64_t ldt_a[4] __attribute__((aligned(16)));
static uint64_t ldt_b[4] __attribute__((aligned(16)));

static void gdt_set_ldt(uint64_t base, uint32_t limit)
{
    uint64_t *d = &gdt[SEL_LDT / 8];
    d[0] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x82ul << 40) |
           ((uint64_t)((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
    d[1] = base >> 32;
}

static uint64_t tss_base(void)
{
    uint64_t *d = &gdt[SEL_TSS(0) / 8];
    return ((d[0] >> 16) & 0xFFFFFF) | (((d[0] >> 56) & 0xFF) << 24) | (d[1] << 32);
}

static void section2_vmsave_vmload(void)
{
    kprintf("== 2. VMSAVE/VMLOAD (15.5.2, vol 3)\n");
    /* Host state with distinct values in every VMSAVE field. */
    gdt_set_ldt((uint64_t)ldt_a, sizeof(ldt_a) - 1);
    asm volatile("lldt %w0" : : "r"((uint16_t)SEL_LDT));
    asm volatile("mov %w0, %%fs\n mov %w0, %%gs" : : "r"((uint16_t)SEL_DATA));
    wrmsr(MSR_FS_BASE, 0x00007F1122223000ul);
    wrmsr(MSR_GS_BASE, 0xFFFF802233334000ul);
    for (unsigned i = 0; i < 8; i++)
        wrmsr(msrs[i].msr, msr_vals_a[i]);

    memset(page_a, 0xA5, sizeof(page_a));
    svm_vmsave(page_a);
    kprintf("VMSAVE of distinct host values:\n");
    print_seg("FS", page_a, VMCB_FS);
    kprintf(" base=0x%lx\n", VMCB_U64(page_a, VMCB_FS + SEG_BASE));
    print_seg("GS", page_a, VMCB_GS);
    kprintf(" base=0x%lx\n", VMCB_U64(page_a, VMCB_GS + SEG_BASE));
    print_seg("LDTR", page_a, VMCB_LDTR);
    kprintf(" base=ldt_a: %s\n", yes(VMCB_U64(page_a, VMCB_LDTR + SEG_BASE) == (uint64_t)ldt_a));
    /* LTR marks the descriptor busy (type 0Bh); QEMU keeps type 9 in the
     * hidden TR attributes. */
    kprintf("[qemu]");
    print_seg("TR", page_a, VMCB_TR);
    kprintf(" base=the TSS: %s (APM: attr=0x008b, busy TSS after LTR)\n",
            yes(VMCB_U64(page_a, VMCB_TR + SEG_BASE) == tss_base()));
    CHECK(VMCB_U16(page_a, VMCB_FS) == SEL_DATA && VMCB_U16(page_a, VMCB_FS + SEG_ATTRIB) == 0x0c93 &&
          VMCB_U64(page_a, VMCB_FS + SEG_BASE) == 0x00007F1122223000ul &&
          VMCB_U64(page_a, VMCB_GS + SEG_BASE) == 0xFFFF802233334000ul, "VMSAVE FS/GS");
    CHECK(VMCB_U16(page_a, VMCB_LDTR) == SEL_LDT && VMCB_U16(page_a, VMCB_LDTR + SEG_ATTRIB) == 0x82 &&
          VMCB_U32(page_a, VMCB_LDTR + SEG_LIMIT) == sizeof(ldt_a) - 1 &&
          VMCB_U64(page_a, VMCB_LDTR + SEG_BASE) == (uint64_t)ldt_a, "VMSAVE LDTR");
    CHECK(VMCB_U16(page_a, VMCB_TR) == SEL_TSS(0) && (VMCB_U16(page_a, VMCB_TR + SEG_ATTRIB) | 2) == 0x8b &&
          VMCB_U64(page_a, VMCB_TR + SEG_BASE) == tss_base(), "VMSAVE TR");
    for (unsigned i = 0; i < 8; i++) {
        kprintf("  %s = 0x%lx\n", msrs[i].n, VMCB_U64(page_a, msrs[i].off));
        CHECK(VMCB_U64(page_a, msrs[i].off) == msr_vals_a[i], "VMSAVE MSR field");
    }
    uint32_t other = 0;
    for (uint32_t off = 0; off < 4096; off++)
        if (!in_vmsave_set(off) && page_a[off] != 0xA5)
            other++;
    kprintf("  bytes written outside FS/GS/LDTR/TR and 600h-63Fh: %u\n", other);
    CHECK(other == 0, "VMSAVE writes only its fields");

    /* VMLOAD from a page whose other fields are all garbage. */
    memset(page_b, 0x5A, sizeof(page_b));
    ldt_b[1] = 0xFFFF | (0xABC000ul << 16) | (0x92ul << 40) | (0xCul << 52);  /* data, base ABC000h */
    vmcb_set_seg(page_b, VMCB_FS, SEL_UDATA, 0x0cf3, 0xFFFFF, 0x00007F0033334000ul);
    vmcb_set_seg(page_b, VMCB_GS, 0, 0, 0, 0xFFFF804444445000ul);
    vmcb_set_seg(page_b, VMCB_LDTR, SEL_LDT, 0x82, sizeof(ldt_b) - 1, (uint64_t)ldt_b);
    vmcb_set_seg(page_b, VMCB_TR, SEL_TSS(1), 0x8b, VMCB_U32(page_a, VMCB_TR + SEG_LIMIT), tss_base());
    for (unsigned i = 0; i < 8; i++)
        VMCB_U64(page_b, msrs[i].off) = msr_vals_b[i];
    uint16_t sel0[4];
    for (int i = 0; i < 4; i++)
        sel0[i] = read_sel(i);
    uint64_t cr0 = read_cr0(), cr3 = read_cr3(), cr4 = read_cr4(), efer = rdmsr(MSR_EFER);
    svm_vmload(page_b);
    uint16_t fs = read_sel(4), gs = read_sel(5), ldtr = read_sel(6), tr = read_sel(7);
    uint64_t fsb = rdmsr(MSR_FS_BASE), gsb = rdmsr(MSR_GS_BASE), vals[8];
    for (unsigned i = 0; i < 8; i++)
        vals[i] = rdmsr(msrs[i].msr);
    uint16_t sel1[4];
    for (int i = 0; i < 4; i++)
        sel1[i] = read_sel(i);
    bool ctl_same = read_cr0() == cr0 && read_cr3() == cr3 && read_cr4() == cr4 &&
                    rdmsr(MSR_EFER) == efer;
    memset(page_c, 0xA5, sizeof(page_c));
    svm_vmsave(page_c);
    /* LDTR's hidden base is live: FS from LDT entry 1 gets base 0xABC000. */
    asm volatile("mov %w0, %%fs" : : "r"((uint16_t)0x0C));
    uint64_t fs_ldt_base = rdmsr(MSR_FS_BASE);
    svm_vmload(host_save);          /* the boot state back */

    kprintf("VMLOAD of new values (every other byte of the page 5Ah):\n");
    kprintf("  FS = 0x%x base 0x%lx, GS = 0x%x base 0x%lx, LDTR = 0x%x, TR = 0x%x\n",
            fs, fsb, gs, gsb, ldtr, tr);
    CHECK(fs == SEL_UDATA && fsb == 0x00007F0033334000ul && gs == 0 &&
          gsb == 0xFFFF804444445000ul && ldtr == SEL_LDT && tr == SEL_TSS(1), "VMLOAD segments");
    bool ok = true;
    for (unsigned i = 0; i < 8; i++)
        ok &= vals[i] == msr_vals_b[i];
    kprintf("  RDMSR KERNEL_GS_BASE..SYSENTER_EIP = the page's values: %s\n", yes(ok));
    CHECK(ok, "VMLOAD MSRs");
    kprintf("  ES CS SS DS unchanged: %s; CR0 CR3 CR4 EFER unchanged: %s\n",
            yes(!memcmp(sel0, sel1, sizeof(sel0))), yes(ctl_same));
    CHECK(!memcmp(sel0, sel1, sizeof(sel0)) && ctl_same, "VMLOAD touches only its state");
    uint32_t diff = 0;
    for (uint32_t off = 0; off < 4096; off++)
        if (in_vmsave_set(off) && page_c[off] != page_b[off])
            diff++;
    kprintf("  VMSAVE after VMLOAD gives back the page: %s (%u bytes differ)\n", yes(diff == 0), diff);
    CHECK(diff == 0, "VMLOAD/VMSAVE round trip");
    kprintf("  MOV FS, 0x0c (LDT entry 1) -> FS_BASE = 0x%lx (LDTR base from VMLOAD used)\n",
            fs_ldt_base);
    CHECK(fs_ldt_base == 0xABC000, "LDTR hidden base loaded by VMLOAD");
}

static void section2_faults(void)
{
    uint32_t r[4];
    cpuid(0x80000008, 0, r);
    unsigned pa_bits = r[0] & 0xFF;
    uint64_t beyond = 1ul << pa_bits;
    uint8_t *mis = scratch + 0x800;
    kprintf("[cpu] MAXPHYADDR = %u bits\n", pa_bits);
    /* If an implementation skips the check, the misaligned page holds the
     * host's VMLOAD state and a VMCB that VMRUN rejects (no VMRUN intercept
     * -> VMEXIT_INVALID), so the run goes on either way. */
    memset(scratch, 0, sizeof(scratch));
    memcpy(mis, host_save, 4096);
    static const char *const names[] = {"VMRUN", "VMLOAD", "VMSAVE"};
    for (int k = 0; k < 2; k++) {
        uint64_t addr = k ? beyond : (uint64_t)mis;
        for (int i = 0; i < 3; i++) {
            int v;
            svm_clgi();
            if (i == 0)
                v = TRY("mov %0, %%rax\n vmrun %%rax", "c"(addr));
            else if (i == 1)
                v = TRY("mov %0, %%rax\n vmload %%rax", "c"(addr));
            else
                v = TRY("mov %0, %%rax\n vmsave %%rax", "c"(addr));
            svm_vmload(host_save);
            svm_stgi();
            bool gp = v == 13 && last_trap.error == 0;
            const char *what = k ? "rAX = 1 << MAXPHYADDR" : "rAX 4 KiB aligned + 0x800";
            if (gp)
                kprintf("%s with %s: #GP(0)\n", names[i], what);
            else
                kprintf("[qemu] %s with %s: %s (APM: #GP(0))\n", names[i], what,
                        v < 0 ? "no fault" : "other fault");
        }
    }

    /* EFER.SVME = 0: the SVM instructions are #UD (vol 3). */
    kprintf("with EFER.SVME = 0:\n");
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) & ~EFER_SVME);
    uint64_t a = (uint64_t)page_a;
    int ud[4];
    ud[0] = TRY("mov %0, %%rax\n vmrun %%rax", "c"(a));
    ud[1] = TRY("mov %0, %%rax\n vmload %%rax", "c"(a));
    ud[2] = TRY("mov %0, %%rax\n vmsave %%rax", "c"(a));
    ud[3] = TRY("mov %0, %%rax\n invlpga %%rax, %%ecx", "S"(a), "c"(0));
    static const char *const udn[] = {"VMRUN", "VMLOAD", "VMSAVE", "INVLPGA"};
    for (int i = 0; i < 4; i++) {
        kprintf("  %s: %s\n", udn[i], ud[i] == 6 ? "#UD" : ud[i] < 0 ? "no fault" : "other fault");
        CHECK(ud[i] == 6, "#UD with EFER.SVME = 0");
    }
    /* STGI/CLGI stay legal with SVME = 0 when SVM-Lock (8000_000A EDX[2])
     * or SKINIT/DEV (8000_0001 ECX[12]) is supported (vol 3, STGI/CLGI). */
    cpuid(0x80000001, 0, r);
    bool skinit = r[2] & CPUID_8000_0001_ECX_SKINIT, svml = info.features & SVM_FEAT_SVML;
    int clgi = TRY("clgi", "c"(0)), stgi = TRY("stgi", "c"(0));
    bool want_ud = !skinit && !svml;
    kprintf("[cpu]   CLGI: %s, STGI: %s (SVM-Lock %d, SKINIT %d)\n",
            clgi == 6 ? "#UD" : clgi < 0 ? "executed" : "other fault",
            stgi == 6 ? "#UD" : stgi < 0 ? "executed" : "other fault", svml, skinit);
    CHECK(clgi == (want_ud ? 6 : -1) && stgi == (want_ud ? 6 : -1), "CLGI/STGI with SVME = 0");
    int vmm0 = TRY("vmmcall", "c"(0));
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
    int vmm1 = TRY("vmmcall", "c"(0));
    kprintf("VMMCALL in the host (never intercepted): SVME=0 %s, SVME=1 %s\n",
            vmm0 == 6 ? "#UD" : "no #UD", vmm1 == 6 ? "#UD" : "no #UD");
    CHECK(vmm0 == 6 && vmm1 == 6, "host VMMCALL #UD");
    svm_stgi();
}

/* ================================================================ 3. SVM insns in a guest */

uint64_t g3_ud_log[8];
uint32_t g3_ud_count;
static uint64_t g3_idt[2 * 7] __attribute__((aligned(16)));

static void section3(void)
{
    kprintf("== 3. SVM instructions in the guest (vol 3)\n");
    /* Guest IDT: vector 6 -> g3_ud_isr (64-bit interrupt gate). */
    uint64_t off = (uint64_t)g3_ud_isr;
    g3_idt[12] = (off & 0xFFFF) | ((uint64_t)SEL_CODE64 << 16) | (0x8Eul << 40) |
                 (((off >> 16) & 0xFFFF) << 48);
    g3_idt[13] = off >> 32;
    new_vmcb_long(g3_entry, g3_idt, sizeof(g3_idt) - 1);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN | INTERCEPT_HLT | INTERCEPT_INVLPGA;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | INTERCEPT_VMLOAD | INTERCEPT_VMSAVE |
        INTERCEPT_STGI | INTERCEPT_CLGI | INTERCEPT_SKINIT;
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 6;
    /* SKINIT exists only with CPUID Fn8000_0001_ECX[SKINIT]: without it the
     * instruction is #UD, before its intercept (15.7: intercepts come "after
     * simple exceptions (such as ... #UD)"); QEMU checks the intercept first. */
    uint32_t e1[4];
    cpuid(0x80000001, 0, e1);
    uint64_t skinit_apm = (e1[2] & CPUID_8000_0001_ECX_SKINIT) ? EXIT_SKINIT : EXIT_EXCP_UD;
    static const struct { char *at; uint64_t code; } want[] = {
        {g3_vmload, EXIT_VMLOAD}, {g3_vmsave, EXIT_VMSAVE}, {g3_stgi, EXIT_STGI},
        {g3_clgi, EXIT_CLGI}, {g3_vmrun, SVM_EXIT_VMRUN}, {g3_invlpga, EXIT_INVLPGA},
        {g3_skinit, EXIT_SKINIT}, {g3_vmmcall, EXIT_EXCP_UD}, {g3_vmmcall2, SVM_EXIT_VMMCALL},
    };
    for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        run_once();
        uint64_t code = exitcode(), rip = vrip();
        bool skinit = want[i].at == g3_skinit;
        if (skinit) {
            kprintf("[qemu] exit: %s (0x%lx) rip=", svm_exit_name(code), code);
            print_sym(rip);
            kprintf(" (APM: %s, 0x%lx)\n", svm_exit_name(skinit_apm), skinit_apm);
        } else {
            print_exit("exit");
        }
        if (want[i].at == g3_vmmcall)
            kprintf("  exitintinfo=0x%lx\n", VMCB_U64(vmcb, VMCB_EXITINTINFO));
        bool ok = (code == want[i].code || (skinit && code == skinit_apm)) && rip == (uint64_t)want[i].at;
        CHECK(ok, "guest SVM instruction exit");
        if (!ok)
            return;
        VMCB_U64(vmcb, VMCB_RIP) = rip + 3;          /* all are 0F 01 xx */
        if (want[i].at == g3_vmmcall) {
            kprintf("  hv: #UD not reflected; VMMCALL intercept on from here\n");
            VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) |= INTERCEPT_VMMCALL;
        }
    }
    /* EFER.SVME = 0: the #UD is a simple exception, checked before the
     * instruction intercepts, which all stay on (vol 3).  #UD is
     * no longer intercepted: the guest's handler logs and skips. */
    kprintf("  hv: #UD intercept off; the guest clears EFER.SVME, its #UD handler logs:\n");
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 0;
    uint32_t r[4];
    cpuid(0x80000001, 0, r);
    bool svme0_legal = (r[2] & CPUID_8000_0001_ECX_SKINIT) || (info.features & SVM_FEAT_SVML);
    run_once();
    static char *const ud_want[] = {g3u_vmrun, g3u_vmload, g3u_vmsave, g3u_invlpga, g3u_vmmcall,
                                    g3u_stgi, g3u_clgi, g3u_skinit};
    for (uint32_t i = 0; i < g3_ud_count && i < 8; i++) {
        /* STGI/CLGI/SKINIT: #UD only without SVM-Lock and SKINIT support. */
        kprintf("%s  #UD at ", i >= 5 ? "[cpu]" : "");
        print_sym(g3_ud_log[i]);
        kprintf("\n");
    }
    kprintf("[cpu] ");
    print_exit("exit");
    bool ok = g3_ud_count >= 5;
    for (uint32_t i = 0; ok && i < 5; i++)
        ok = g3_ud_log[i] == (uint64_t)ud_want[i];
    CHECK(ok, "#UD before the intercepts with EFER.SVME = 0");
    if (!svme0_legal)
        CHECK(g3_ud_count == 8 && g3_ud_log[5] == (uint64_t)g3u_stgi &&
              g3_ud_log[7] == (uint64_t)g3u_skinit && exitcode() == SVM_EXIT_HLT &&
              vrip() == (uint64_t)g3_hlt, "STGI/CLGI/SKINIT #UD with EFER.SVME = 0");
    kprintf("[cpu] guest EFER at the last exit = 0x%lx\n", VMCB_U64(vmcb, VMCB_EFER));
}

/* ================================================================ 4. TSC */

static bool within(uint64_t g, uint64_t off, uint64_t h0, uint64_t h1)
{
    uint64_t v = g - off;
    return v >= h0 && v <= h1;
}

static void section4(void)
{
    uint32_t r[4];
    kprintf("== 4. TSC_OFFSET and the RDTSC/RDTSCP/RDPMC intercepts\n");
    cpuid(0x80000001, 0, r);
    if (!(r[3] & CPUID_8000_0001_EDX_RDTSCP)) {
        kprintf("[cpu] RDTSCP: not supported, skipped\n");
        return;
    }
    new_vmcb_long(g4_entry, NULL, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN | INTERCEPT_HLT;
    static const char *const what[] = {"RDTSC", "RDTSCP", "RDMSR TSC"};
    for (int pass = 0; pass < 2; pass++) {
        uint64_t h0 = rdtsc();
        uint64_t off = pass == 0 ? 0x0010000000000000ul : -(h0 / 2);
        VMCB_U64(vmcb, VMCB_TSC_OFFSET) = off;
        VMCB_U64(vmcb, VMCB_RIP) = (uint64_t)g4_entry;
        h0 = rdtsc();
        run_once();
        uint64_t h1 = rdtsc();
        print_exit(pass == 0 ? "offset +2^52: exit" : "offset -TSC/2: exit");
        CHECK(exitcode() == SVM_EXIT_HLT && vrip() == (uint64_t)g4_hlt1, "TSC run exit");
        for (int i = 0; i < 3; i++) {
            /* QEMU 7.2 adds TSC_OFFSET to RDTSC/RDTSCP only, not to RDMSR
             * TSC; the APM (and Bochs) apply it to all three. */
            bool ok = within(g4_vals[i], off, h0, h1);
            kprintf("%s  guest %s - offset within the host's window: %s%s\n", i == 2 ? "[qemu]" : "",
                    what[i], yes(ok), i == 2 ? " (APM: yes)" : "");
            if (i < 2)
                CHECK(ok, "TSC offset applied");
        }
        kprintf("  host TSC after #VMEXIT has no offset: %s\n", yes(h1 - h0 < (1ul << 40)));
        CHECK(h1 - h0 < (1ul << 40), "host TSC without offset");
    }
    /* Each intercept alone: RDTSC (6Eh) and RDTSCP (87h) are
     * separate bits; an RDTSCP is not caught by the RDTSC bit (vol 3, RDTSCP;
     * Bochs agrees).  QEMU 7.2 checks the RDTSC bit for RDTSCP and ignores
     * the RDTSCP bit. */
    static const struct {
        char *from; uint32_t misc1, misc2; char *at; uint64_t code; bool qemu; const char *apm;
    } runs[] = {
        {g4_rdtsc, INTERCEPT_RDTSC, 0, g4_rdtsc, SVM_EXIT_RDTSC, false, NULL},
        {g4_rdtscp, 0, INTERCEPT_RDTSCP, g4_rdtscp, EXIT_RDTSCP, true, "RDTSCP (0x87) rip=g4_rdtscp"},
        {g4_rdtscp, INTERCEPT_RDTSC, 0, g4_hlt3, SVM_EXIT_HLT, true, "HLT (0x78) rip=g4_hlt3"},
        {g4_pmc, INTERCEPT_RDPMC, 0, g4_rdpmc, EXIT_RDPMC, false, NULL},
    };
    static const char *const names[] = {"RDTSC intercept, RDTSC", "RDTSCP intercept, RDTSCP",
                                        "RDTSC intercept, RDTSCP", "RDPMC intercept, RDPMC"};
    for (unsigned i = 0; i < 4; i++) {
        VMCB_U64(vmcb, VMCB_RIP) = (uint64_t)runs[i].from;
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN | INTERCEPT_HLT | runs[i].misc1;
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | runs[i].misc2;
        run_once();
        bool ok = exitcode() == runs[i].code && vrip() == (uint64_t)runs[i].at;
        kprintf("%s%s: exit %s (0x%lx) rip=", runs[i].qemu ? "[qemu] " : "", names[i],
                svm_exit_name(exitcode()), exitcode());
        print_sym(vrip());
        if (runs[i].qemu)
            kprintf(" (APM: %s)", runs[i].apm);
        kprintf("\n");
        if (!runs[i].qemu)
            CHECK(ok, "TSC/PMC intercept exit");
    }
}

/* ================================================================ 5. SHUTDOWN */

static void section5(void)
{
    kprintf("== 5. SHUTDOWN intercept\n");
    /* IDTR limit 0: INT3 -> #GP (IDT limit) -> #DF -> shutdown. */
    new_vmcb_long(g5_entry, g1_idt, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN | INTERCEPT_HLT;
    run_once();
    kprintf("triple fault in the guest: exit %s (0x%lx)\n", svm_exit_name(exitcode()), exitcode());
    kprintf("[cpu]   rip=");
    print_sym(vrip());
    kprintf(" (the saved RIP of a triple fault is not checked)\n");
    CHECK(exitcode() == SVM_EXIT_SHUTDOWN, "SHUTDOWN exit");
    /* The host goes on: a fresh guest runs to its HLT. */
    new_vmcb_long(g5_hlt, NULL, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN | INTERCEPT_HLT;
    run_once();
    print_exit("host continues; next guest: exit");
    CHECK(exitcode() == SVM_EXIT_HLT && vrip() == (uint64_t)g5_hlt, "guest after SHUTDOWN");
}

/* ================================================================ 6. paged 32-bit guest */

static uint64_t g6_gdt[5] __attribute__((aligned(16))) = {
    0,
    0x00cf9b000000ffff,              /* 08h code32, DPL 0 (accessed bits preset, */
    0x00cf93000000ffff,              /* 10h data, DPL 0    so the loaded attributes */
    0x00cffb000000ffff,              /* 18h code32, DPL 3  do not depend on who sets */
    0x00cff3000000ffff,              /* 20h data, DPL 3    them) */
};
static uint32_t pd32[1024] __attribute__((aligned(4096)));
static uint32_t pt32[1024] __attribute__((aligned(4096)));
static uint64_t pdpt_pae[512] __attribute__((aligned(4096)));
static uint64_t pd_pae_lo[512] __attribute__((aligned(4096)));
static uint64_t pd_pae_hi[512] __attribute__((aligned(4096)));
static uint64_t pt_pae[512] __attribute__((aligned(4096)));
static uint32_t magic_page[1024] __attribute__((aligned(4096)));
extern char __bss_end[];

#define P_P 1u
#define P_W 2u
#define P_U 4u
#define P_PS 0x80u
#define CR4_PSE (1ul << 4)
#define CR4_PAE (1ul << 5)

static void run_paged32(bool pae)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_prot32(vmcb, (uint32_t)(uint64_t)g6_entry, (uint32_t)(uint64_t)&guest_stack[4096]);
    vmcb_set_seg(vmcb, VMCB_CS, 0x08, SEG_ATTR_CODE32, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_DS, 0x10, SEG_ATTR_DATA, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_ES, 0x10, SEG_ATTR_DATA, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_SS, 0x10, SEG_ATTR_DATA, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_GDTR, 0, 0, sizeof(g6_gdt) - 1, (uint64_t)g6_gdt);
    uint64_t cr3 = pae ? (uint64_t)pdpt_pae : (uint64_t)pd32;
    VMCB_U64(vmcb, VMCB_CR0) = CR0_PG | CR0_PE | (1ul << 4);
    VMCB_U64(vmcb, VMCB_CR3) = cr3;
    VMCB_U64(vmcb, VMCB_CR4) = pae ? CR4_PAE : CR4_PSE;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_SHUTDOWN | INTERCEPT_HLT | INTERCEPT_CPUID;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | INTERCEPT_VMMCALL;
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 14;
    /* ASID 1 ran other address spaces before: its TLB entries must go (APM
     * 15.16: VMRUN does not flush; a reused ASID needs TLB_CONTROL). */
    VMCB_U8(vmcb, VMCB_TLB_CONTROL) = 1;
    svm_vmsave(vmcb);
    memset(&gprs, 0, sizeof(gprs));
    const char *mode = pae ? "PAE" : "non-PAE";
    uint64_t host_cr3 = read_cr3();

    run_once();
    print_exit(pae ? "PAE: exit" : "non-PAE: exit");
    kprintf("  EAX = 0x%lx EBX = 0x%lx (read at 0x%x through the guest's tables)\n",
            VMCB_U64(vmcb, VMCB_RAX), gprs.rbx, G6_MAPPED);
    kprintf("  CR0 = 0x%lx, CR3 = %s: %s, CR4 = 0x%lx, EFER = 0x%lx, host CR3 restored: %s\n",
            VMCB_U64(vmcb, VMCB_CR0), pae ? "pdpt_pae" : "pd32", yes(VMCB_U64(vmcb, VMCB_CR3) == cr3),
            VMCB_U64(vmcb, VMCB_CR4), VMCB_U64(vmcb, VMCB_EFER), yes(read_cr3() == host_cr3));
    CHECK(exitcode() == SVM_EXIT_VMMCALL && vrip() == (uint64_t)g6_vmmcall, mode);
    CHECK((uint32_t)VMCB_U64(vmcb, VMCB_RAX) == magic_page[0] &&
          (uint32_t)gprs.rbx == magic_page[1], "guest read through its tables");
    CHECK(VMCB_U64(vmcb, VMCB_CR3) == cr3 && read_cr3() == host_cr3, "CR3 guest/host");
    VMCB_U64(vmcb, VMCB_RIP) = vrip() + 3;

    run_once();
    print_exit("  unmapped read: exit");
    kprintf("  EXITINFO1 (error code) = 0x%lx, EXITINFO2 (address) = 0x%lx\n",
            VMCB_U64(vmcb, VMCB_EXITINFO1), VMCB_U64(vmcb, VMCB_EXITINFO2));
    CHECK(exitcode() == EXIT_EXCP_PF && vrip() == (uint64_t)g6_pf &&
          VMCB_U64(vmcb, VMCB_EXITINFO1) == 0 && VMCB_U64(vmcb, VMCB_EXITINFO2) == G6_UNMAPPED,
          "#PF intercept");
    VMCB_U64(vmcb, VMCB_RIP) = (uint64_t)g6_after_pf;

    run_once();
    print_exit("  after IRET to CPL 3: exit");
    kprintf("  CPL = %u,", VMCB_U8(vmcb, VMCB_CPL));
    print_seg("CS", vmcb, VMCB_CS);
    kprintf(",");
    print_seg("SS", vmcb, VMCB_SS);
    kprintf("\n  RSP = g6_ustack top: %s\n", yes(VMCB_U64(vmcb, VMCB_RSP) == g6_ustack_top_val));
    CHECK(exitcode() == SVM_EXIT_CPUID && vrip() == (uint64_t)g6_ucpuid &&
          VMCB_U8(vmcb, VMCB_CPL) == 3 && VMCB_U16(vmcb, VMCB_CS) == 0x1b &&
          VMCB_U16(vmcb, VMCB_CS + SEG_ATTRIB) == 0x0cfb && VMCB_U16(vmcb, VMCB_SS) == 0x23 &&
          VMCB_U16(vmcb, VMCB_SS + SEG_ATTRIB) == 0x0cf3, "CPL 3 exit");
}

static void section6(void)
{
    kprintf("== 6. 32-bit guests with their own paging\n");
    uint64_t end = (uint64_t)__bss_end;
    CHECK(end < (8ul << 20), "kernel image below 8 MiB");
    magic_page[0] = 0x600DF00D;
    magic_page[1] = 0x5AFE7AB1;
    /* Non-PAE, CR4.PSE: 0-8 MiB identity with 4 MiB pages (U = 1), 4000_0000h
     * -> magic_page through a page table. */
    pd32[0] = 0x000000 | P_P | P_W | P_U | P_PS;
    pd32[1] = 0x400000 | P_P | P_W | P_U | P_PS;
    pd32[G6_MAPPED >> 22] = (uint32_t)(uint64_t)pt32 | P_P | P_W | P_U;
    pt32[0] = (uint32_t)(uint64_t)magic_page | P_P | P_W | P_U;
    run_paged32(false);
    /* PAE: PDPTEs have only P (the other low bits are reserved); 0-8 MiB
     * with 2 MiB pages, 4000_0000h -> magic_page. */
    pdpt_pae[0] = (uint64_t)pd_pae_lo | P_P;
    pdpt_pae[1] = (uint64_t)pd_pae_hi | P_P;
    for (int i = 0; i < 4; i++)
        pd_pae_lo[i] = ((uint64_t)i << 21) | P_P | P_W | P_U | P_PS;
    pd_pae_hi[0] = (uint64_t)pt_pae | P_P | P_W | P_U;
    pt_pae[0] = (uint64_t)magic_page | P_P | P_W | P_U;
    magic_page[0] = 0xFACEB00C;
    run_paged32(true);
}

/* ================================================================ main */

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("svm_state: world-switch state and the SVM instructions\n");
    svm_cpuid(&info);
    if (!info.svm) {
        kprintf("no SVM\n");
        return 1;
    }
    kprintf("[cpu] CPUID 8000_000A EDX = 0x%x\n", info.features);
    const char *err = svm_enable(hsave);
    if (err) {
        kprintf("enable: %s\n", err);
        return 1;
    }
    svm_vmsave(host_save);
    section1();
    section2_vmsave_vmload();
    section2_faults();
    section3();
    section4();
    section5();
    section6();
    kprintf("svm_state: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
