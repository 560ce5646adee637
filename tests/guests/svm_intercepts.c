/*
 * svm_intercepts: one 64-bit guest runs a fixed list of instructions, each
 * intercepted (APM vol 2, 15.7-15.15), and the hypervisor logs the exit.
 *
 * Covered: CR0/CR3/CR4 reads, CR3/CR4 writes (15.9), the selective CR0
 * write intercept (15.9.1: a MOV CR0 that writes the same value does not
 * exit, one that sets CD exits with CR0_SEL_WRITE), DR7 read/write (15.8), RDTSC,
 * PAUSE without a pause filter (15.14.4), INVLPG, INT n, PUSHF, POPF, INVD,
 * WBINVD, SIDT, SGDT (15.14), HLT.
 *
 * The hypervisor emulates what the guest relies on (CR and DR reads go to
 * the GPR named by the ModRM byte, decoded here because QEMU has no decode
 * assists) and skips every other intercepted instruction without executing
 * it.  RIPs print as offsets from the guest's first instruction (gt_start).
 *
 * EXITINFO1 for MOV CR/DR, INVLPG and INT n is defined by the decode assists
 * (15.33; CPUID 8000_000A EDX[7]); QEMU TCG has none and stores 0, so those
 * values are printed on separate "[cpu]" lines, not in the "exit" lines.
 * EXITINFO1/2 of the other exits here are 0 under QEMU (the APM does not
 * define them for these intercepts).
 *
 * QEMU 7.2 TCG reports an intercepted INVD with exit code 0x89 (WBINVD)
 * instead of 0x76 (INVD); the INVD exit's line is therefore always tagged
 * "[qemu]" (tagged lines appear on every platform, only their values may
 * differ; untagged lines must match exactly).
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
uint8_t gt_buf[16] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static struct svm_info info;
static int fails;

asm(".pushsection .text\n"
    "gt_start:\n"
    "  mov %cr0, %rax\n"             /* CR0_READ */
    "  mov %rax, %cr0\n"             /* same value: no exit */
    "  bts $30, %rax\n"
    "  mov %rax, %cr0\n"             /* sets CD: CR0_SEL_WRITE */
    "  mov %cr3, %rbx\n"             /* CR3_READ */
    "  mov %rbx, %cr3\n"             /* CR3_WRITE */
    "  mov %cr4, %rcx\n"             /* CR4_READ */
    "  mov %rcx, %cr4\n"             /* CR4_WRITE */
    "  mov %dr7, %rdx\n"             /* DR7_READ */
    "  mov %rdx, %dr7\n"             /* DR7_WRITE */
    "  rdtsc\n"
    "  pause\n"
    "  mov $0x200000, %esi\n"
    "  invlpg (%rsi)\n"
    "  int $0x30\n"
    "  pushf\n"
    "  popf\n"
    "  invd\n"
    "  wbinvd\n"
    "  lea gt_buf(%rip), %rdi\n"
    "  sidt (%rdi)\n"
    "  sgdt (%rdi)\n"
    "gt_hlt: hlt\n"
    "  jmp gt_hlt\n"
    ".popsection\n");
extern char gt_start[], gt_hlt[];

static void build(void)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)gt_start, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    NULL, 0);
    /* CR reads of 0, 3, 4 (bits 0-15); CR writes of 3, 4 (bits 16-31). */
    VMCB_U32(vmcb, VMCB_INTERCEPT_CR) = (1u << 0) | (1u << 3) | (1u << 4) |
                                        (1u << (16 + 3)) | (1u << (16 + 4));
    VMCB_U32(vmcb, VMCB_INTERCEPT_DR) = (1u << 7) | (1u << (16 + 7));
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_CR0_SEL_WRITE | INTERCEPT_IDTR_READ |
        INTERCEPT_GDTR_READ | INTERCEPT_RDTSC | INTERCEPT_PUSHF | INTERCEPT_POPF |
        INTERCEPT_INTN | INTERCEPT_INVD | INTERCEPT_PAUSE | INTERCEPT_HLT |
        INTERCEPT_INVLPG | INTERCEPT_SHUTDOWN;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | INTERCEPT_WBINVD;
    svm_vmsave(vmcb);
}

static void set_gpr(int n, uint64_t v)
{
    uint64_t *r[16] = {NULL, &gprs.rcx, &gprs.rdx, &gprs.rbx, NULL, &gprs.rbp, &gprs.rsi,
                       &gprs.rdi, &gprs.r8, &gprs.r9, &gprs.r10, &gprs.r11, &gprs.r12,
                       &gprs.r13, &gprs.r14, &gprs.r15};
    if (n == 0)
        VMCB_U64(vmcb, VMCB_RAX) = v;
    else if (n == 4)
        VMCB_U64(vmcb, VMCB_RSP) = v;
    else
        *r[n] = v;
}

/* MOV reg, CRn / DRn: ModRM.rm (+ REX.B) names the destination GPR. */
static void emulate_mov_from(const uint8_t *p, uint64_t value)
{
    int rex = (p[0] & 0xF0) == 0x40 ? p[0] : 0;
    const uint8_t *modrm = p + (rex ? 3 : 2);
    set_gpr((*modrm & 7) | ((rex & 1) << 3), value);
}

static bool decode_defines_info1(uint64_t code)
{
    return code < 0x40 || code == SVM_EXIT_CR0_SEL_WRITE || code == SVM_EXIT_INVLPG ||
           code == SVM_EXIT_SWINT;
}

static bool handle(int n)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
    uint64_t info1 = VMCB_U64(vmcb, VMCB_EXITINFO1), info2 = VMCB_U64(vmcb, VMCB_EXITINFO2);
    uint64_t rip = VMCB_U64(vmcb, VMCB_RIP);
    const uint8_t *p = (const uint8_t *)rip;
    bool da = decode_defines_info1(code);
    /* QEMU 7.2 reports INVD (0F 08) as WBINVD: the INVD line is tagged
     * whatever the code, so untagged lines are the same on every platform. */
    bool qemu_invd = p[0] == 0x0F && p[1] == 0x08;
    kprintf("%sexit %d: %s (0x%lx)", qemu_invd ? "[qemu] " : "", n, svm_exit_name(code), code);
    if (!da)
        kprintf(" info1=0x%lx", info1);
    kprintf(" info2=0x%lx rip=gt_start+%lu%s\n", info2, rip - (uint64_t)gt_start,
            qemu_invd ? " (APM: INVD, 0x76)" : "");
    if (da)
        kprintf("[cpu]   info1=0x%lx (decode assists: %s)\n", info1,
                (info.features & SVM_FEAT_DECODEASSISTS) ? "yes" : "no");
    if (code == SVM_EXIT_HLT)
        return false;
    if (code == SVM_EXIT_SHUTDOWN || code == SVM_EXIT_INVALID || rip < (uint64_t)gt_start ||
        rip > (uint64_t)gt_hlt) {
        kprintf("FAIL: unexpected exit\n");
        fails++;
        return false;
    }
    if (code == SVM_EXIT_READ_CR0 + 0)
        emulate_mov_from(p, VMCB_U64(vmcb, VMCB_CR0));
    else if (code == SVM_EXIT_READ_CR0 + 3)
        emulate_mov_from(p, VMCB_U64(vmcb, VMCB_CR3));
    else if (code == SVM_EXIT_READ_CR0 + 4)
        emulate_mov_from(p, VMCB_U64(vmcb, VMCB_CR4));
    else if (code == SVM_EXIT_READ_DR0 + 7)
        emulate_mov_from(p, VMCB_U64(vmcb, VMCB_DR7));
    int len = svm_insn_len(p);
    if (len == 0) {
        kprintf("FAIL: cannot decode the instruction\n");
        fails++;
        return false;
    }
    VMCB_U64(vmcb, VMCB_RIP) = rip + (uint64_t)len;
    return true;
}

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("svm_intercepts: instruction intercepts of a 64-bit guest\n");
    svm_cpuid(&info);
    const char *err = svm_enable(hsave);
    kprintf("enable: %s\n", err ? err : "ok");
    if (err)
        return 1;
    svm_vmsave(host_save);
    build();
    int n = 1;
    for (; n < 64; n++) {
        svm_clgi();
        svm_vmload(vmcb);
        svm_run_guest(vmcb, &gprs);
        svm_vmsave(vmcb);
        svm_vmload(host_save);
        svm_stgi();
        if (!handle(n))
            break;
    }
    /* The intercepted CR0 write with CD set never reached the guest. */
    uint64_t cr0 = VMCB_U64(vmcb, VMCB_CR0);
    kprintf("guest CR0.CD after the intercepted write: %lu\n", (cr0 >> 30) & 1);
    fails += ((cr0 >> 30) & 1) != 0;
    fails += VMCB_U64(vmcb, VMCB_RIP) != (uint64_t)gt_hlt;
    fails += n != 19;
    kprintf("exits: %d\n", n);
    kprintf("svm_intercepts: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
