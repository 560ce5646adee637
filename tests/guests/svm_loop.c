/*
 * svm_loop: the SVM benchmark kernel (bench/svm_bench.py).
 *
 * A hypervisor runs one 64-bit guest in two phases (APM vol 2, 15.5-15.7):
 * 1. "exits=E": the guest executes CPUID in a loop with CPUID intercepted;
 *    the hypervisor skips it (RIP += 2) and resumes, E times: the cost of a
 *    world switch (VMRUN + #VMEXIT + a minimal handler).
 * 2. "iters=N": the guest runs loop.c's 10-instruction body N times with no
 *    exit, then HLT (intercepted): guest-mode execution speed.
 * The checksum equals loop.c's for the same N.
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static uint64_t mem[2];
static struct svm_gprs gprs;

asm(".pushsection .text\n"
    "gl_spin:\n  cpuid\n  jmp gl_spin\n"
    "gl_loop:\n  xor %edx, %edx\n"
    "1:\n  mov (%rsi), %rax\n  add %rcx, %rax\n  xor %rdx, %rax\n  mov %rax, (%rsi)\n"
    "  add %rax, 8(%rsi)\n  mov 8(%rsi), %rdx\n  xor %rcx, %rdx\n  add $0x5bd1e995, %rdx\n"
    "  dec %rcx\n  jnz 1b\n"
    "  hlt\n"
    ".popsection\n");
extern char gl_spin[], gl_loop[];

static uint64_t run(void)
{
    svm_clgi();
    svm_run_guest(vmcb, &gprs);
    svm_stgi();
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint64_t exits = 100000, iters = 1000000;
    cmdline_u64("exits", &exits);
    cmdline_u64("iters", &iters);
    kprintf("svm_loop: exits=%lu iters=%lu\n", exits, iters);
    const char *err = svm_enable(hsave);
    if (err) {
        kprintf("svm_loop: %s\n", err);
        return 1;
    }
    vmcb_init(vmcb, iopm, msrpm);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_CPUID | INTERCEPT_HLT;
    vmcb_guest_long(vmcb, (uint64_t)gl_spin, (uint64_t)&guest_stack[sizeof(guest_stack)], 0, 0);
    uint64_t n = 0;
    for (; n < exits; n++) {
        if (run() != SVM_EXIT_CPUID)
            break;
        VMCB_U64(vmcb, VMCB_RIP) += 2;
    }
    kprintf("svm_loop: %lu CPUID exits handled\n", n);
    VMCB_U64(vmcb, VMCB_RIP) = (uint64_t)gl_loop;
    gprs.rcx = iters;
    gprs.rsi = (uint64_t)mem;
    uint64_t code = iters ? run() : SVM_EXIT_HLT;
    kprintf("svm_loop: guest loop ended with exit 0x%lx, checksum=0x%016lx\n", code,
            mem[0] ^ mem[1]);
    bool ok = n == exits && code == SVM_EXIT_HLT;
    kprintf("svm_loop: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
