/*
 * svm_resolve: intercepts set and cleared between VMRUNs of the same guest
 * code (tests/test_svm_resolve.py).
 *
 * svmsim decides some intercepts when it translates guest code (CPUID,
 * PUSHF, ...: the exit or the instruction itself) and keys the translated
 * blocks by the intercept words (svm/guards.py).  The intercept words are
 * the VMCB's at each VMRUN (APM vol 2, 15.5.1; clean bit 0 is cleared
 * whenever they change, 15.15.3), so the same guest code must exit, or
 * not, as each VMRUN says, however hot it is.  Eight phases run one guest
 * loop of "phases=" iterations each with the CPUID intercept (phase bit 0),
 * the PUSHF intercept (bit 1) and the RDTSC intercept (bit 2) set or clear:
 *
 *   loop: xor eax,eax; cpuid; add r10,rbx; pushf; pop rax; add r11,rax;
 *         rdtsc; shl rdx,32; or rax,rdx; add r12,rax;
 *         inc r8; dec r9; jnz loop; vmmcall
 *
 * An intercepted CPUID is skipped with RBX = 0x1000 + phase; an
 * intercepted PUSHF is emulated by pushing 0xf00d + phase; an intercepted
 * RDTSC by EDX:EAX = 0x2000 + phase.  Each phase checks the exit counts and
 * the sums the guest made; a sum of real RDTSCs is printed (the runs that
 * compare tiers compare it: the same TSC at the same instruction).
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static struct svm_gprs gprs;

asm(".pushsection .text\n"
    "gr_loop:\n  xor %eax, %eax\n  cpuid\n  add %rbx, %r10\n  pushf\n  pop %rax\n"
    "  add %rax, %r11\n  rdtsc\n  shl $32, %rdx\n  or %rdx, %rax\n  add %rax, %r12\n"
    "  inc %r8\n  dec %r9\n  jnz gr_loop\n  vmmcall\n"
    ".popsection\n");
extern char gr_loop[];

static uint64_t run(void)
{
    svm_clgi();
    svm_run_guest(vmcb, &gprs);
    svm_stgi();
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint64_t iters = 300;
    cmdline_u64("phases", &iters);
    kprintf("svm_resolve: %lu iterations per phase\n", iters);
    const char *err = svm_enable(hsave);
    if (err) {
        kprintf("svm_resolve: %s\n", err);
        return 1;
    }
    vmcb_init(vmcb, iopm, msrpm);
    bool ok = true;
    for (uint64_t phase = 0; phase < 8; phase++) {
        bool icpuid = phase & 1, ipushf = phase & 2, irdtsc = phase & 4;
        uint32_t misc1 = VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1)
                         & ~(INTERCEPT_CPUID | INTERCEPT_PUSHF | INTERCEPT_RDTSC);
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = misc1 | (icpuid ? INTERCEPT_CPUID : 0)
                                              | (ipushf ? INTERCEPT_PUSHF : 0)
                                              | (irdtsc ? INTERCEPT_RDTSC : 0);
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) |= INTERCEPT_VMMCALL;
        VMCB_U32(vmcb, VMCB_CLEAN_BITS) = 0;
        vmcb_guest_long(vmcb, (uint64_t)gr_loop, (uint64_t)&guest_stack[sizeof(guest_stack)], 0, 0);
        gprs.r8 = gprs.r10 = gprs.r11 = gprs.r12 = 0;
        gprs.r9 = iters;
        uint64_t ncpuid = 0, npushf = 0, nrdtsc = 0, code;
        for (;;) {
            code = run();
            if (code == SVM_EXIT_CPUID) {
                ncpuid++;
                gprs.rbx = 0x1000 + phase;
                VMCB_U64(vmcb, VMCB_RIP) += 2;
            } else if (code == SVM_EXIT_PUSHF) {
                npushf++;
                uint64_t rsp = VMCB_U64(vmcb, VMCB_RSP) - 8;
                *(uint64_t *)rsp = 0xf00d + phase;
                VMCB_U64(vmcb, VMCB_RSP) = rsp;
                VMCB_U64(vmcb, VMCB_RIP) += 1;
            } else if (code == SVM_EXIT_RDTSC) {
                nrdtsc++;
                VMCB_U64(vmcb, VMCB_RAX) = 0x2000 + phase;
                gprs.rdx = 0;
                VMCB_U64(vmcb, VMCB_RIP) += 2;
            } else {
                break;
            }
        }
        bool good = code == SVM_EXIT_VMMCALL && gprs.r8 == iters
                    && ncpuid == (icpuid ? iters : 0) && npushf == (ipushf ? iters : 0)
                    && (!icpuid || gprs.r10 == iters * (0x1000 + phase))
                    && (!ipushf || gprs.r11 == iters * (0xf00d + phase))
                    && nrdtsc == (irdtsc ? iters : 0)
                    && (!irdtsc || gprs.r12 == iters * (0x2000 + phase));
        kprintf("svm_resolve: phase %lu cpuid=%d pushf=%d rdtsc=%d: exit 0x%lx, cpuid exits %lu, "
                "pushf exits %lu, rdtsc exits %lu, r8=%lu r10=0x%lx r11=0x%lx r12=0x%lx %s\n",
                phase, icpuid, ipushf, irdtsc, code, ncpuid, npushf, nrdtsc,
                gprs.r8, gprs.r10, gprs.r11, gprs.r12, good ? "ok" : "WRONG");
        ok = ok && good;
    }
    kprintf("svm_resolve: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
