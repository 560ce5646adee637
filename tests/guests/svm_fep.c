/*
 * svm_fep: KVM's forced-emulation prefix (ud2; .ascii "kvm") under a
 * hypervisor, as kvm-unit-tests' *_emulate subtests use it.  svmsim only:
 * no processor has the prefix; svmsim offers it as the opt-in CPU property
 * force-emulation-prefix (svmsim run --cpu epyc,+fep).
 *
 * 1. The host probes the prefix as kvm-unit-tests does (lib/x86/desc.c,
 *    is_fep_available): the prefix and a NOP under TRY; #UD means absent,
 *    and the kernel stops there (that is the line a run without the opt-in
 *    prints; everything else needs the prefix).
 * 2. A 64-bit guest runs four prefixed instructions with the selective CR0
 *    write intercept (APM 15.9.1, table 15-7) and HLT intercepted: MOV CR0
 *    setting CD (CR0_SEL_WRITE), LMSW changing only MP (CR0_SEL_WRITE: LMSW
 *    always takes it), MOV CR0 changing only MP (no exit), HLT (HLT).  Each
 *    exit's RIP is the instruction after the prefix (where KVM leaves RIP)
 *    and NRIP the one after it; the hypervisor resumes at NRIP.
 * 3. The same guest with #UD intercepted: the prefix itself exits with #UD
 *    at its own address (KVM reflects the prefix's #UD to an L1 that
 *    intercepts #UD).
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static int fails;

#define FEP "ud2; .byte 0x6b, 0x76, 0x6d\n"

asm(".pushsection .text\n"
    "gf_start:\n"
    "  mov %cr0, %rax\n"
    "  mov %rax, %rbx\n"
    "  bts $30, %rax\n"
    "gf_fep1: " FEP
    "gf_mov_cd: mov %rax, %cr0\n"          /* CR0_SEL_WRITE */
    "  mov %rbx, %rax\n"
    "  xor $2, %eax\n"
    "gf_fep2: " FEP
    "gf_lmsw: lmsw %ax\n"                  /* CR0_SEL_WRITE, MP only */
    "gf_fep3: " FEP
    "gf_mov_mp: mov %rax, %cr0\n"          /* MP only: no exit */
    "gf_fep4: " FEP
    "gf_hlt: hlt\n"
    "  jmp gf_hlt\n"
    ".popsection\n");
extern char gf_start[], gf_fep1[], gf_mov_cd[], gf_fep2[], gf_lmsw[], gf_fep3[], gf_mov_mp[],
    gf_fep4[], gf_hlt[];

static const struct svm_label labels[] = {
    {"gf_start", gf_start}, {"gf_fep1", gf_fep1}, {"gf_mov_cd", gf_mov_cd},
    {"gf_fep2", gf_fep2}, {"gf_lmsw", gf_lmsw}, {"gf_fep3", gf_fep3},
    {"gf_mov_mp", gf_mov_mp}, {"gf_fep4", gf_fep4}, {"gf_hlt", gf_hlt},
};
#define NLABELS (sizeof(labels) / sizeof(labels[0]))

static void build(bool intercept_ud)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)gf_start, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    NULL, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = intercept_ud ? 1u << 6 : 0;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_CR0_SEL_WRITE | INTERCEPT_HLT |
                                           INTERCEPT_SHUTDOWN;
    svm_vmsave(vmcb);
}

static void expect_exit(int n, uint64_t want_code, const void *want_rip, const void *want_nrip)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
    uint64_t rip = VMCB_U64(vmcb, VMCB_RIP), nrip = VMCB_U64(vmcb, VMCB_NRIP);
    kprintf("exit %d: %s rip=", n, svm_exit_name(code));
    svm_print_label(labels, NLABELS, rip, 64);
    if (want_nrip) {                       /* NRIP: instruction intercepts only (15.7.1) */
        kprintf(" nrip=");
        svm_print_label(labels, NLABELS, nrip, 64);
    }
    kprintf("\n");
    if (code != want_code || rip != (uint64_t)want_rip ||
        (want_nrip && nrip != (uint64_t)want_nrip)) {
        kprintf("FAIL: expected %s at ", svm_exit_name(want_code));
        svm_print_label(labels, NLABELS, (uint64_t)want_rip, 64);
        kprintf("\n");
        fails++;
    }
}

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("svm_fep: KVM's forced-emulation prefix under a hypervisor\n");
    int v = TRY(FEP "nop");
    kprintf("host: forced-emulation prefix %s\n", v < 0 ? "available" : "absent (#UD)");
    if (v >= 0) {
        fails += v != 6;
        kprintf("svm_fep: %s\n", fails ? "FAIL" : "PASS");
        return fails ? 1 : 0;
    }
    struct svm_info info;
    svm_cpuid(&info);
    const char *err = svm_enable(hsave);
    kprintf("enable: %s\n", err ? err : "ok");
    if (err)
        return 1;
    svm_vmsave(host_save);

    build(false);
    svm_run_switched(vmcb, host_save, &gprs);
    expect_exit(1, SVM_EXIT_CR0_SEL_WRITE, gf_mov_cd, gf_mov_cd + 3);
    kprintf("guest CR0.CD after it: %lu\n", (VMCB_U64(vmcb, VMCB_CR0) >> 30) & 1);
    fails += (VMCB_U64(vmcb, VMCB_CR0) >> 30) & 1;
    VMCB_U64(vmcb, VMCB_RIP) = VMCB_U64(vmcb, VMCB_NRIP);
    svm_run_switched(vmcb, host_save, &gprs);
    expect_exit(2, SVM_EXIT_CR0_SEL_WRITE, gf_lmsw, gf_lmsw + 3);
    VMCB_U64(vmcb, VMCB_RIP) = VMCB_U64(vmcb, VMCB_NRIP);
    svm_run_switched(vmcb, host_save, &gprs);
    expect_exit(3, SVM_EXIT_HLT, gf_hlt, gf_hlt + 1);
    uint64_t host_cr0;
    asm volatile("mov %%cr0, %0" : "=r"(host_cr0));
    bool mp_changed = ((VMCB_U64(vmcb, VMCB_CR0) ^ host_cr0) >> 1) & 1;
    kprintf("guest CR0.MP changed by the MOV behind gf_fep3: %s\n", mp_changed ? "yes" : "no");
    fails += !mp_changed;

    kprintf("with #UD intercepted:\n");
    build(true);
    svm_run_switched(vmcb, host_save, &gprs);
    expect_exit(4, SVM_EXIT_EXCP_BASE + 6, gf_fep1, NULL);

    kprintf("svm_fep: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
