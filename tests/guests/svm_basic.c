/*
 * svm_basic: a small hypervisor, written for AMD hardware, that runs one
 * 64-bit guest and handles its exits.
 *
 * What it shows (APM vol 2, chapter 15):
 * - 15.4 enabling: CPUID 8000_0001 ECX[2], CPUID 8000_000A, VM_CR.SVMDIS,
 *   EFER.SVME, VM_HSAVE_PA (15.30.4).
 * - 15.5/15.6 VMRUN and #VMEXIT with a guest that shares the host's CR3 and
 *   GDT but has its own stack and IDT, ASID 1; VMLOAD/VMSAVE (15.5.2) for the
 *   state VMRUN does not switch; CLGI/STGI around each run (15.17).
 * - 15.7-15.13 intercepts: VMRUN (required), VMMCALL, CPUID, HLT, IOIO
 *   through an IOPM that covers COM1 (3F8h-3FFh) and port 80h (15.10), MSR
 *   through an MSRPM that intercepts RDMSR of EFER and WRMSR of
 *   KERNEL_GS_BASE (15.11), exception #UD (15.12), SHUTDOWN (to catch bugs).
 * - Guest CPUID (seed S7/S8, APM vol 3 appendix E.3.1 / E.3.2): the
 *   hypervisor presents CPUID 1 ECX[31] = 1 and leaves 4000_0000h-4000_0001h.
 * - 15.20 event injection: an INTR (vector 40h), #GP with an error code, and
 *   #UD reflected back into the guest after the #UD intercept.
 * - 15.17 GIF: with GIF = 0 and RFLAGS.IF = 1 a self-IPI stays pending;
 *   STGI lets it in.
 *
 * The guest's serial output goes through the hypervisor: every byte written
 * to COM1 is an IOIO exit whose byte the hypervisor writes to the real UART.
 * Those exits are counted but not logged one by one; every other exit is
 * logged with its EXITINFO1/2 and the guest RIP, named by the label of the
 * guest instruction (gx_*) so the transcript does not depend on addresses.
 *
 * No NRIP save on QEMU TCG: the hypervisor skips an intercepted instruction
 * by decoding its length (svm_insn_len); for IOIO it uses EXITINFO2, which
 * holds the next RIP (15.10.2).  Where CPUID 8000_000A EDX[3] says NRIP is
 * saved, NextRIP is checked against the decoded length.
 *
 * Lines starting with "[cpu]" print CPU-model-specific values (CPUID
 * 8000_000A, the host's own CPUID bits); they are recorded from QEMU's EPYC
 * model and may differ on another CPU.
 */
#include "svm.h"

#define GUEST_INTR_VECTOR 0x40
#define GP_ERROR_CODE 0x18
#define HV_WRMSR 0xC0000102          /* KERNEL_GS_BASE: write intercepted */
#define HV_STAR 0xC0000081           /* STAR: not intercepted */
#define GIF_TEST_VECTOR 0x50

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[16384] __attribute__((aligned(16)));
static uint64_t guest_idt[2 * (GUEST_INTR_VECTOR + 1)] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static struct svm_info info;
static int fails;

/* What the guest saw, written by the guest (same memory) for the host to check. */
static volatile struct {
    uint32_t hv_bit, sig_ok, max_leaf;
    uint64_t efer, star, kgs, vmmcall_ret;
    uint32_t intr, gp, gp_error, ud;
} seen;

static int check(bool ok, const char *what)
{
    if (!ok)
        kprintf("FAIL: %s\n", what);
    return !ok;
}

/* ================================================================ guest */

/* Each exiting guest instruction sits at a gx_* label. */
asm(".pushsection .text\n"
    "guest_entry:\n"
    "  call guest_main\n"
    "  jmp gx_hlt_fn\n"
    "gx_cpuid_fn:\n"                 /* (leaf, subleaf, uint32_t out[4]) */
    "  push %rbx\n  mov %edi, %eax\n  mov %esi, %ecx\n  mov %rdx, %r8\n"
    "gx_cpuid: cpuid\n"
    "  mov %eax, (%r8)\n  mov %ebx, 4(%r8)\n  mov %ecx, 8(%r8)\n  mov %edx, 12(%r8)\n"
    "  pop %rbx\n  ret\n"
    "gx_putc_fn:\n  mov %edi, %eax\n  mov $0x3f8, %edx\n"
    "gx_putc: outb %al, %dx\n  ret\n"
    "gx_post_fn:\n  mov %edi, %eax\n"
    "gx_post: outb %al, $0x80\n  ret\n"
    "gx_rdmsr_fn:\n  mov %edi, %ecx\n"
    "gx_rdmsr: rdmsr\n  shl $32, %rdx\n  or %rdx, %rax\n  ret\n"
    "gx_wrmsr_fn:\n  mov %edi, %ecx\n  mov %rsi, %rax\n  mov %rsi, %rdx\n  shr $32, %rdx\n"
    "gx_wrmsr: wrmsr\n  ret\n"
    "gx_vmmcall_fn:\n  mov %rdi, %rax\n"
    "gx_vmmcall: vmmcall\n  ret\n"
    "gx_ud2_fn:\n"
    "gx_ud2: ud2\n  ret\n"
    "gx_hlt_fn:\n"
    "gx_hlt: hlt\n  jmp gx_hlt_fn\n"
    /* IDT stubs: 64-bit mode aligns RSP to 16 before the frame (APM vol 2,
     * 8.9.3), so 9 pushes (+8 with an error code) keep calls aligned. */
    ".macro GX_PUSH\n push %rax\n push %rcx\n push %rdx\n push %rsi\n push %rdi\n"
    "  push %r8\n push %r9\n push %r10\n push %r11\n.endm\n"
    ".macro GX_POP\n pop %r11\n pop %r10\n pop %r9\n pop %r8\n pop %rdi\n"
    "  pop %rsi\n pop %rdx\n pop %rcx\n pop %rax\n.endm\n"
    "gx_isr_intr:\n  GX_PUSH\n  mov $0x40, %edi\n  xor %esi, %esi\n  call guest_event\n"
    "  GX_POP\n  iretq\n"
    "gx_isr_ud:\n  GX_PUSH\n  mov $6, %edi\n  xor %esi, %esi\n  call guest_event\n"
    "  GX_POP\n  addq $2, (%rsp)\n  iretq\n"   /* #UD is a fault: skip UD2 */
    "gx_isr_gp:\n  GX_PUSH\n  sub $8, %rsp\n  mov $13, %edi\n  mov 80(%rsp), %rsi\n"
    "  call guest_event\n  add $8, %rsp\n  GX_POP\n  add $8, %rsp\n  iretq\n"
    ".popsection\n");

extern char gx32_entry[], gx32_out[], gx32_hlt[], gx16_start[], gx16_end[];
extern char guest_entry[], gx_cpuid[], gx_putc[], gx_post[], gx_rdmsr[], gx_wrmsr[],
    gx_vmmcall[], gx_ud2[], gx_hlt[], gx_isr_intr[], gx_isr_ud[], gx_isr_gp[];
void gx_cpuid_fn(uint32_t leaf, uint32_t sub, uint32_t out[4]);
void gx_putc_fn(int c);
void gx_post_fn(int v);
uint64_t gx_rdmsr_fn(uint32_t msr);
void gx_wrmsr_fn(uint32_t msr, uint64_t v);
uint64_t gx_vmmcall_fn(uint64_t code);
void gx_ud2_fn(void);
void guest_main(void);
void guest_event(uint64_t vector, uint64_t error);

static void gputs(const char *s)
{
    while (*s)
        gx_putc_fn(*s++);
}

static void gputx(uint64_t v)
{
    char buf[19];
    int i = sizeof(buf);
    buf[--i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    gputs(&buf[i]);
}

static void gputs_x(const char *s, uint64_t v)
{
    gputs(s);
    gputx(v);
    gputs("\n");
}

void guest_event(uint64_t vector, uint64_t error)
{
    if (vector == GUEST_INTR_VECTOR) {
        seen.intr++;
        gputs("guest: interrupt 0x40 delivered through the guest IDT\n");
    } else if (vector == 13) {
        seen.gp++;
        seen.gp_error = (uint32_t)error;
        gputs_x("guest: #GP delivered, error code ", error);
    } else if (vector == 6) {
        seen.ud++;
        gputs("guest: #UD delivered, skipping ud2\n");
    }
}

void guest_main(void)
{
    uint32_t r[4];
    char sig[13];

    gputs("guest: hello from a 64-bit SVM guest\n");
    gx_cpuid_fn(1, 0, r);
    seen.hv_bit = r[2] >> 31;
    gputs_x("guest: CPUID 1 ECX[31] (hypervisor present) = ", r[2] >> 31);
    gx_cpuid_fn(0x40000000, 0, r);
    memcpy(sig, &r[1], 4);
    memcpy(sig + 4, &r[2], 4);
    memcpy(sig + 8, &r[3], 4);
    sig[12] = 0;
    seen.max_leaf = r[0];
    seen.sig_ok = !memcmp(sig, "svmsimtestHV", 12);
    gputs("guest: CPUID 4000_0000 signature '");
    gputs(sig);
    gputs_x("', max leaf ", r[0]);
    gx_cpuid_fn(0x40000001, 0, r);
    gputs_x("guest: CPUID 4000_0001 EAX = ", r[0]);

    gx_post_fn(0x42);
    seen.efer = gx_rdmsr_fn(MSR_EFER);
    gputs_x("guest: RDMSR EFER = ", seen.efer);
    seen.star = gx_rdmsr_fn(HV_STAR);
    gputs_x("guest: RDMSR STAR (not intercepted) = ", seen.star);
    gx_wrmsr_fn(HV_WRMSR, 0x123456789ul);
    seen.kgs = gx_rdmsr_fn(HV_WRMSR);
    gputs_x("guest: KERNEL_GS_BASE after the intercepted WRMSR = ", seen.kgs);

    seen.vmmcall_ret = gx_vmmcall_fn(1);
    gputs_x("guest: VMMCALL 1 (inject INTR) returned ", seen.vmmcall_ret);
    gputs_x("guest: VMMCALL 2 (inject #GP) returned ", gx_vmmcall_fn(2));
    gx_ud2_fn();
    gputs("guest: back from ud2, halting\n");
}

/* ================================================================ hypervisor */

static const struct svm_label labels[] = {
    {"guest_entry", guest_entry}, {"gx_cpuid", gx_cpuid}, {"gx_putc", gx_putc},
    {"gx_post", gx_post}, {"gx_rdmsr", gx_rdmsr}, {"gx_wrmsr", gx_wrmsr},
    {"gx_vmmcall", gx_vmmcall}, {"gx_ud2", gx_ud2}, {"gx_hlt", gx_hlt},
    {"gx32_entry", gx32_entry}, {"gx32_out", gx32_out}, {"gx32_hlt", gx32_hlt},
};

/* "label" or "label+n" for a guest address at or just after one of our
 * labels (the nearest one below it). */
static void print_sym(uint64_t addr)
{
    if (!svm_print_label(labels, sizeof(labels) / sizeof(labels[0]), addr, 16))
        fails += check(false, "guest address is not at a known label");
}

static void set_guest_idt_gate(int vector, char *handler)
{
    svm_idt_gate64(guest_idt, vector, handler, true, 0);
}

static void build_guest(void)
{
    vmcb_init(vmcb, iopm, msrpm);
    set_guest_idt_gate(6, gx_isr_ud);
    set_guest_idt_gate(13, gx_isr_gp);
    set_guest_idt_gate(GUEST_INTR_VECTOR, gx_isr_intr);
    vmcb_guest_long(vmcb, (uint64_t)guest_entry, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    guest_idt, sizeof(guest_idt) - 1);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_CPUID | INTERCEPT_HLT |
        INTERCEPT_IOIO | INTERCEPT_MSR | INTERCEPT_SHUTDOWN;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | INTERCEPT_VMMCALL;
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 6;     /* #UD */
    for (uint16_t port = 0x3F8; port <= 0x3FF; port++)
        iopm_intercept(iopm, port, true);
    iopm_intercept(iopm, 0x80, true);
    msrpm_intercept(msrpm, MSR_EFER, true, false);
    msrpm_intercept(msrpm, HV_WRMSR, false, true);
    /* The VMSAVE state (FS, GS, TR, LDTR, KernelGsBase, STAR...) starts as
     * the host's own. */
    svm_vmsave(vmcb);
}

static uint64_t guest_rip(void) { return VMCB_U64(vmcb, VMCB_RIP); }

/* Advance past the intercepted instruction (fixed-length decode). */
static void skip_insn(void)
{
    uint64_t rip = guest_rip();
    int len = svm_insn_len((const uint8_t *)rip);
    fails += check(len > 0, "instruction length decode");
    if ((info.features & SVM_FEAT_NRIPS) && VMCB_U64(vmcb, VMCB_NRIP) != rip + (uint64_t)len)
        fails += check(false, "NextRIP disagrees with the decoded length");
    VMCB_U64(vmcb, VMCB_RIP) = rip + (uint64_t)len;
}

static void set_rax_rdx(uint64_t v)
{
    VMCB_U64(vmcb, VMCB_RAX) = (uint32_t)v;
    gprs.rdx = v >> 32;
}

/* CPUID as this hypervisor presents it (seed S7/S8): the real values, plus
 * ECX[31] of leaf 1 and the 4000_0000h leaves. */
static void handle_cpuid(void)
{
    uint32_t leaf = (uint32_t)VMCB_U64(vmcb, VMCB_RAX), r[4];
    if (leaf == 0x40000000) {
        r[0] = 0x40000001;
        memcpy(&r[1], "svms", 4);
        memcpy(&r[2], "imte", 4);
        memcpy(&r[3], "stHV", 4);
    } else if (leaf == 0x40000001) {
        r[0] = 0x1, r[1] = r[2] = r[3] = 0;   /* interface version 1 */
    } else {
        cpuid(leaf, (uint32_t)gprs.rcx, r);
        if (leaf == 1)
            r[2] |= 1u << 31;
    }
    kprintf("  hv: CPUID leaf 0x%x emulated\n", leaf);
    VMCB_U64(vmcb, VMCB_RAX) = r[0];
    gprs.rbx = r[1], gprs.rcx = r[2], gprs.rdx = r[3];
    skip_insn();
}

/* IOIO EXITINFO1 bits 9:7 give the address size (APM vol 2, 15.10.2,
 * Figure 15-2).  QEMU 7.2 TCG leaves them 0, so they are printed apart, on a
 * "[qemu]" line, and left out of the "exit" line. */
static void print_ioio_asize(uint64_t info1, uint64_t apm)
{
    kprintf("[qemu] IOIO address-size bits 9:7 = 0x%lx (APM: 0x%lx)\n",
            info1 & IOIO_ASIZE_MASK, apm);
}

static uint32_t serial_bytes;

/* Returns true when the exit is one of the guest's COM1 data bytes. */
static bool handle_ioio(uint64_t info1, uint64_t info2)
{
    uint32_t port = IOIO_PORT(info1);
    uint8_t al = (uint8_t)VMCB_U64(vmcb, VMCB_RAX);
    bool quiet = false;
    if (info1 & IOIO_TYPE_IN) {
        VMCB_U64(vmcb, VMCB_RAX) |= 0xFF;         /* nothing to read */
    } else if (port == 0x3F8) {
        serial_putc((char)al);
        serial_bytes++;
        quiet = true;
    } else if (port == 0x80) {
        kprintf("  hv: POST code 0x%x written to port 0x80\n", al);
    }
    VMCB_U64(vmcb, VMCB_RIP) = info2;   /* EXITINFO2 = next RIP (15.10.2) */
    return quiet;
}

static void handle_msr(uint64_t info1)
{
    uint32_t msr = (uint32_t)gprs.rcx;
    if (info1 == 0 && msr == MSR_EFER) {
        /* Hide SVME from the guest: it is ours. */
        uint64_t v = VMCB_U64(vmcb, VMCB_EFER) & ~EFER_SVME;
        kprintf("  hv: RDMSR EFER -> 0x%lx (SVME hidden)\n", v);
        set_rax_rdx(v);
    } else if (info1 == 1 && msr == HV_WRMSR) {
        uint64_t v = (uint32_t)VMCB_U64(vmcb, VMCB_RAX) | (gprs.rdx << 32);
        kprintf("  hv: WRMSR 0x%x <- 0x%lx dropped\n", msr, v);
    } else {
        fails += check(false, "unexpected MSR exit");
    }
    skip_insn();
}

static void handle_vmmcall(void)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_RAX);
    skip_insn();
    if (code == 1) {
        kprintf("  hv: injecting INTR vector 0x%x\n", GUEST_INTR_VECTOR);
        VMCB_U64(vmcb, VMCB_EVENTINJ) = EVENT_VALID | EVENT_TYPE_INTR |
                                        EVENT_VECTOR(GUEST_INTR_VECTOR);
    } else if (code == 2) {
        kprintf("  hv: injecting #GP with error code 0x%x\n", GP_ERROR_CODE);
        VMCB_U64(vmcb, VMCB_EVENTINJ) = EVENT_VALID | EVENT_TYPE_EXCEPTION | EVENT_EV |
                                        EVENT_VECTOR(13) | EVENT_ERROR(GP_ERROR_CODE);
    }
    VMCB_U64(vmcb, VMCB_RAX) = 0x1000 + code;
}

static uint32_t counts[0xA0], invalid_count;

static void count_exit(uint64_t code)
{
    if (code < sizeof(counts) / sizeof(counts[0]))
        counts[code]++;
    else
        invalid_count++;
}

static void print_summary(void)
{
    uint32_t total = invalid_count;
    for (unsigned c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
        total += counts[c];
    kprintf("exit summary: %u exits\n", total);
    for (unsigned c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
        if (counts[c])
            kprintf("  0x%03x %s: %u\n", c, svm_exit_name(c), counts[c]);
    if (invalid_count)
        kprintf("  other %u\n", invalid_count);
}

/* One guest run: CLGI, VMLOAD, VMRUN, VMSAVE, host VMLOAD, STGI. */
static void run_guest_once(void)
{
    svm_run_switched(vmcb, host_save, &gprs);
}

/* Returns false when the guest is done (HLT) or broken. */
static bool handle_exit(int n)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
    uint64_t info1 = VMCB_U64(vmcb, VMCB_EXITINFO1), info2 = VMCB_U64(vmcb, VMCB_EXITINFO2);
    uint64_t intinfo = VMCB_U64(vmcb, VMCB_EXITINTINFO);
    count_exit(code);
    VMCB_U64(vmcb, VMCB_EVENTINJ) = 0;
    if (code == SVM_EXIT_IOIO && IOIO_PORT(info1) == 0x3F8 && !(info1 & IOIO_TYPE_IN)) {
        handle_ioio(info1, info2);
        return true;
    }
    kprintf("exit %d: %s (0x%lx) info1=0x%lx info2=", n, svm_exit_name(code), code,
            code == SVM_EXIT_IOIO ? info1 & ~IOIO_ASIZE_MASK : info1);
    if (code == SVM_EXIT_IOIO)
        print_sym(info2);
    else
        kprintf("0x%lx", info2);
    kprintf(" rip=");
    print_sym(guest_rip());
    kprintf("\n");
    if (code == SVM_EXIT_IOIO)
        print_ioio_asize(info1, IOIO_A64);
    if (intinfo & EVENT_VALID)
        kprintf("  exitintinfo=0x%lx\n", intinfo);
    switch (code) {
    case SVM_EXIT_CPUID:
        handle_cpuid();
        return true;
    case SVM_EXIT_IOIO:
        handle_ioio(info1, info2);
        return true;
    case SVM_EXIT_MSR:
        handle_msr(info1);
        return true;
    case SVM_EXIT_VMMCALL:
        handle_vmmcall();
        return true;
    case SVM_EXIT_EXCP_BASE + 6:
        kprintf("  hv: reflecting #UD into the guest\n");
        VMCB_U64(vmcb, VMCB_EVENTINJ) = EVENT_VALID | EVENT_TYPE_EXCEPTION | EVENT_VECTOR(6);
        return true;
    case SVM_EXIT_HLT:
        kprintf("  hv: guest halted\n");
        skip_insn();
        return false;
    default:
        fails += check(false, "unexpected exit");
        return false;
    }
}

static void run_guest(void)
{
    build_guest();
    for (int n = 1; n < 10000; n++) {
        run_guest_once();
        if (!handle_exit(n))
            break;
    }
    kprintf("hv: %u bytes of guest serial output passed to COM1\n", serial_bytes);
    fails += check(seen.hv_bit == 1, "guest sees CPUID 1 ECX[31] = 1");
    fails += check(seen.sig_ok && seen.max_leaf == 0x40000001, "hypervisor CPUID leaves");
    fails += check(seen.efer == (VMCB_U64(vmcb, VMCB_EFER) & ~EFER_SVME), "emulated EFER");
    fails += check(seen.kgs == 0, "intercepted WRMSR did not reach the MSR");
    fails += check(rdmsr(HV_WRMSR) == 0, "host KERNEL_GS_BASE unchanged");
    fails += check(seen.vmmcall_ret == 0x1001, "VMMCALL return value");
    fails += check(seen.intr == 1 && seen.gp == 1 && seen.gp_error == GP_ERROR_CODE &&
                   seen.ud == 1, "injected events delivered once each");
    fails += check(counts[SVM_EXIT_HLT] == 1, "HLT exit");
}

/* ================================================================ other modes */

/* A 32-bit protected-mode guest (paging off, CS = the host GDT's 32-bit
 * code segment) and a real-mode guest (code copied below 1 MiB): each writes
 * port 80h and halts.  Guest physical = host physical (no nested paging). */
asm(".pushsection .text\n"
    ".code32\n"
    "gx32_entry: mov $0x32, %al\n"
    "gx32_out: outb %al, $0x80\n"
    "gx32_hlt: hlt\n  jmp gx32_hlt\n"
    ".code64\n"
    ".popsection\n"
    ".pushsection .rodata\n"
    ".code16\n"
    "gx16_start: mov $0x16, %al\n  outb %al, $0x80\n  hlt\n"
    "gx16_end:\n"
    ".code64\n"
    ".popsection\n");

#define REAL_MODE_CODE 0x7000ul      /* CS = 0700h, IP = 0 */

static void print_addr(uint64_t a, bool symbolic)
{
    if (symbolic)
        print_sym(a);
    else
        kprintf("0x%lx", a);
}

/* Run until HLT; print each exit (real-mode RIPs are small and fixed, so
 * raw; protected-mode ones by label). */
static void run_small_guest(const char *what, bool symbolic)
{
    for (int n = 1; n < 10; n++) {
        run_guest_once();
        uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
        uint64_t info1 = VMCB_U64(vmcb, VMCB_EXITINFO1), info2 = VMCB_U64(vmcb, VMCB_EXITINFO2);
        count_exit(code);
        kprintf("%s exit %d: %s (0x%lx) info1=0x%lx info2=", what, n, svm_exit_name(code),
                code, code == SVM_EXIT_IOIO ? info1 & ~IOIO_ASIZE_MASK : info1);
        print_addr(info2, symbolic && code == SVM_EXIT_IOIO);
        kprintf(" rip=");
        print_addr(VMCB_U64(vmcb, VMCB_RIP), symbolic);
        kprintf("\n");
        if (code == SVM_EXIT_IOIO) {
            print_ioio_asize(info1, VMCB_U16(vmcb, VMCB_CS + SEG_ATTRIB) & (1u << 10)
                             ? IOIO_A32 : IOIO_A16);
            kprintf("  hv: port 0x%x <- 0x%lx\n", IOIO_PORT(info1),
                    VMCB_U64(vmcb, VMCB_RAX) & 0xFF);
            VMCB_U64(vmcb, VMCB_RIP) = info2;
            continue;
        }
        if (code == SVM_EXIT_HLT)
            kprintf("  hv: halted with CR0=0x%lx EFER=0x%lx CS=0x%x\n",
                    VMCB_U64(vmcb, VMCB_CR0), VMCB_U64(vmcb, VMCB_EFER),
                    VMCB_U16(vmcb, VMCB_CS + SEG_SEL));
        else
            fails += check(false, "unexpected exit");
        return;
    }
    fails += check(false, "guest did not halt");
}

static void run_other_modes(void)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_prot32(vmcb, (uint32_t)(uint64_t)gx32_entry, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_IOIO | INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    kprintf("prot32 guest: entry at gx32_entry%s\n",
            VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)gx32_entry ? "" : " (bad)");
    run_small_guest("prot32", true);
    fails += check(VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)gx32_hlt, "prot32 guest halted at gx32_hlt");

    memcpy((void *)REAL_MODE_CODE, gx16_start, gx16_end - gx16_start);
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_real(vmcb, REAL_MODE_CODE >> 4, 0, 0x1000);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_IOIO | INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    kprintf("real-mode guest: CS:IP = 0x%lx:0\n", REAL_MODE_CODE >> 4);
    run_small_guest("real", false);
}

/* ================================================================ GIF */

static volatile int gif_irqs;

static void gif_irq(struct trap_frame *f)
{
    gif_irqs++;
    lapic_eoi();
}

/* APM vol 2, 15.17: while GIF = 0 an INTR is held pending even with
 * RFLAGS.IF = 1; STGI lets it be taken. */
static void test_gif(void)
{
    lapic_enable();
    set_handler(GIF_TEST_VECTOR, gif_irq);
    svm_clgi();
    sti();
    lapic_send_ipi(0, ICR_SELF | ICR_FIXED | GIF_TEST_VECTOR);
    for (volatile int i = 0; i < 100000; i++)
        pause();
    int held = gif_irqs;
    svm_stgi();
    for (volatile int i = 0; i < 100000 && !gif_irqs; i++)
        pause();
    cli();
    kprintf("gif: CLGI/STGI execute; with GIF=0 the self-IPI was %s, after STGI %s\n",
            held ? "taken" : "held", gif_irqs == 1 ? "taken" : "not taken");
    fails += check(held == 0 && gif_irqs == 1, "GIF gates INTR");
}

/* ================================================================ main */

int kmain(uint32_t magic, uint32_t mbi)
{
    uint32_t r[4];
    kprintf("svm_basic: a hypervisor with one 64-bit guest\n");
    svm_cpuid(&info);
    kprintf("CPUID 8000_0001 ECX.SVM = %d\n", info.svm);
    if (!info.svm)
        return 1;
    kprintf("[cpu] CPUID 8000_000A: revision %u, %u ASIDs, features EDX=0x%x\n",
            info.revision, info.nasid, info.features);
    cpuid(1, 0, r);
    kprintf("[cpu] host CPUID 1 ECX[31] = %u\n", r[2] >> 31);
    kprintf("VM_CR.SVMDIS = %lu\n", (rdmsr(MSR_VM_CR) >> 4) & 1);
    const char *err = svm_enable(hsave);
    kprintf("enable: %s\n", err ? err : "EFER.SVME = 1, VM_HSAVE_PA set");
    if (err)
        return 1;
    svm_vmsave(host_save);
    run_guest();
    run_other_modes();
    print_summary();
    test_gif();
    kprintf("svm_basic: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
