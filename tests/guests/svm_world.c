/*
 * svm_world: events and exit information across the world switch.
 *
 * A hypervisor runs short 64-bit guest snippets (gw_* labels) and prints what
 * the AMD APM vol 2 specifies for each:
 * - 15.20 EVENTINJ of every type: INTR, NMI, exception with and without an
 *   error code, software interrupt; the guest IDT handler records the
 *   vector, error code and pushed RIP; EVENTINJ.V is cleared at #VMEXIT.
 * - 15.7.2 EXITINTINFO: an injected INTR whose gate is not present raises
 *   #NP, intercepted: EXITINFO1 = the #NP error code, EXITINTINFO = the event.
 * - 15.12 #PF intercept: EXITINFO1 = error code, EXITINFO2 = the address,
 *   the guest's CR2 unchanged; reflecting it with EVENTINJ.
 * - 15.21 virtual interrupts: V_IRQ taken when V_INTR_PRIO > V_TPR and
 *   cleared, held when not, the VINTR intercept.
 * - 15.11 MSR intercepts in each of the three MSRPM ranges, read and write,
 *   and an MSR outside them (always intercepted).
 * - 15.10 IOIO: string and REP forms, segment override, an access that
 *   straddles into an intercepted port.
 * Lines tagged [qemu] print a value where QEMU TCG departs from the APM, with
 * the APM's value; [cpu] lines depend on the CPU model (decode assists).
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[8192] __attribute__((aligned(16)));
static uint64_t guest_idt[2 * 256] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static struct svm_info info;
static int fails;
static uint8_t out_buf[4] = "abc";

/* Written by the guest's IDT handlers. */
volatile uint64_t rec_vec, rec_ec, rec_rip;

#define NO_EC 0xFFFFFFFFFFFFFFFFul

asm(".pushsection .text\n"
    ".macro GW_NOEC v\n"
    "gw_isr_\\v:\n  movq $\\v, rec_vec(%rip)\n  movq $-1, rec_ec(%rip)\n"
    "  push %rax\n  mov 8(%rsp), %rax\n  mov %rax, rec_rip(%rip)\n  pop %rax\n  hlt\n"
    ".endm\n"
    ".macro GW_EC v\n"
    "gw_isr_\\v:\n  movq $\\v, rec_vec(%rip)\n"
    "  push %rax\n  mov 8(%rsp), %rax\n  mov %rax, rec_ec(%rip)\n"
    "  mov 16(%rsp), %rax\n  mov %rax, rec_rip(%rip)\n  pop %rax\n  hlt\n"
    ".endm\n"
    "GW_NOEC 0\n GW_NOEC 2\n GW_EC 13\n GW_EC 14\n GW_NOEC 0x41\n GW_NOEC 0x50\n"
    "GW_NOEC 0x80\n"
    "gw_hlt: hlt\n"
    "gw_sti: sti\n  nop\n  nop\n  hlt\n"
    "gw_pf: mov (%rax), %rbx\n  hlt\n"
    "gw_rdmsr: rdmsr\n  hlt\n"
    "gw_wrmsr: wrmsr\n  hlt\n"
    "gw_outs: rep outsb\n  hlt\n"
    "gw_outs_fs: fs outsb\n  hlt\n"
    "gw_ins: rep insw\n  hlt\n"
    "gw_in_straddle: in %dx, %ax\n  hlt\n"
    ".popsection\n");

extern char gw_isr_0[], gw_isr_2[], gw_isr_13[], gw_isr_14[], gw_isr_0x41[], gw_isr_0x50[],
    gw_isr_0x80[], gw_hlt[], gw_sti[], gw_pf[], gw_rdmsr[], gw_wrmsr[], gw_outs[],
    gw_outs_fs[], gw_ins[], gw_in_straddle[];

static const struct svm_label labels[] = {
    {"gw_hlt", gw_hlt}, {"gw_sti", gw_sti}, {"gw_pf", gw_pf}, {"gw_rdmsr", gw_rdmsr},
    {"gw_wrmsr", gw_wrmsr}, {"gw_outs", gw_outs}, {"gw_outs_fs", gw_outs_fs},
    {"gw_ins", gw_ins}, {"gw_in_straddle", gw_in_straddle},
    {"gw_isr_0", gw_isr_0}, {"gw_isr_2", gw_isr_2}, {"gw_isr_13", gw_isr_13},
    {"gw_isr_14", gw_isr_14}, {"gw_isr_0x41", gw_isr_0x41}, {"gw_isr_0x50", gw_isr_0x50},
    {"gw_isr_0x80", gw_isr_0x80},
};

static void print_sym(uint64_t addr)
{
    if (!svm_print_label(labels, sizeof(labels) / sizeof(labels[0]), addr, 64)) {
        fails++;
        kprintf(" FAIL: not at a known label");
    }
}

static void gate(int vector, char *handler, bool present)
{
    svm_idt_gate64(guest_idt, vector, handler, present, 0);
}

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        fails++;
    }
}

/* A fresh guest at `rip` with HLT and SHUTDOWN intercepted. */
static void guest_at(char *rip)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)rip, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    guest_idt, sizeof(guest_idt) - 1);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    svm_vmsave(vmcb);
    rec_vec = rec_ec = rec_rip = NO_EC;
}

static uint64_t run(void)
{
    return svm_run_switched(vmcb, host_save, &gprs);
}

static void print_exit(const char *what)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
    kprintf("%s: exit %s (0x%lx) info1=0x%lx info2=0x%lx exitintinfo=0x%lx rip=", what,
            svm_exit_name(code), code, VMCB_U64(vmcb, VMCB_EXITINFO1),
            VMCB_U64(vmcb, VMCB_EXITINFO2), VMCB_U64(vmcb, VMCB_EXITINTINFO));
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf("\n");
}

static void print_guest_record(void)
{
    kprintf("  guest handler: vector 0x%lx, ", rec_vec);
    if (rec_ec == NO_EC)
        kprintf("no error code");
    else
        kprintf("error code 0x%lx", rec_ec);
    kprintf(", return RIP ");
    print_sym(rec_rip);
    kprintf("\n");
}

/* ================================================================ 15.20 */
static void test_inject(const char *what, uint64_t event, uint64_t vector, uint64_t ec)
{
    guest_at(gw_hlt);
    VMCB_U64(vmcb, VMCB_EVENTINJ) = event;
    /* A software interrupt returns to RIP, or with NRIP save to NRIP (15.20,
     * 15.7.1): the RIP of the instruction after the INT n being emulated. */
    VMCB_U64(vmcb, VMCB_NRIP) = (uint64_t)gw_hlt;
    uint64_t code = run();
    kprintf("inject %s: exit %s, EVENTINJ.V after = %lu\n", what, svm_exit_name(code),
            (VMCB_U64(vmcb, VMCB_EVENTINJ) >> 31) & 1);
    print_guest_record();
    check(code == SVM_EXIT_HLT && rec_vec == vector && rec_ec == ec &&
          rec_rip == (uint64_t)gw_hlt, what);
}

static void test_injection(void)
{
    test_inject("INTR 0x41", EVENT_VALID | EVENT_TYPE_INTR | 0x41, 0x41, NO_EC);
    test_inject("NMI", EVENT_VALID | EVENT_TYPE_NMI | 2, 2, NO_EC);
    test_inject("#GP(0x10)", EVENT_VALID | EVENT_TYPE_EXCEPTION | EVENT_EV | 13 | EVENT_ERROR(0x10),
                13, 0x10);
    test_inject("#DE", EVENT_VALID | EVENT_TYPE_EXCEPTION | 0, 0, NO_EC);
    test_inject("INT 0x80 (type 4)", EVENT_VALID | EVENT_TYPE_SOFT_INT | 0x80, 0x80, NO_EC);
}

/* ================================================================ 15.7.2 */
static void test_exitintinfo(void)
{
    guest_at(gw_hlt);
    gate(0x41, gw_isr_0x41, false);
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 11;             /* #NP */
    uint64_t event = EVENT_VALID | EVENT_TYPE_INTR | 0x41;
    VMCB_U64(vmcb, VMCB_EVENTINJ) = event;
    uint64_t code = run();
    uint64_t info1 = VMCB_U64(vmcb, VMCB_EXITINFO1);
    VMCB_U64(vmcb, VMCB_EXITINFO1) = 0;          /* printed on its own line */
    print_exit("injected INTR 0x41 through a not-present gate");
    /* The #NP error code: selector index = the vector, IDT bit 1, EXT bit 0
     * (an external event); QEMU uses the 16-byte gate offset and no EXT. */
    kprintf("[qemu]   #NP error code in EXITINFO1 = 0x%lx (APM: 0x%x)\n", info1, 0x41 * 8 + 2 + 1);
    check(code == SVM_EXIT_EXCP_BASE + 11, "#NP intercepted");
    check(VMCB_U64(vmcb, VMCB_EXITINTINFO) == event, "EXITINTINFO = the injected event");
    gate(0x41, gw_isr_0x41, true);
    /* An exit that interrupted no delivery has EXITINTINFO.V = 0. */
    guest_at(gw_hlt);
    run();
    print_exit("plain HLT");
    check(!(VMCB_U64(vmcb, VMCB_EXITINTINFO) & EVENT_VALID), "EXITINTINFO.V = 0");
}

/* ================================================================ 15.12 */
static void test_pf(void)
{
    guest_at(gw_pf);
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 14;
    VMCB_U64(vmcb, VMCB_CR2) = 0x1234;
    VMCB_U64(vmcb, VMCB_RAX) = 0x100000000ul;                  /* above the 4 GiB map */
    uint64_t code = run();
    print_exit("#PF intercept");
    kprintf("  guest CR2 in the VMCB after the #PF intercept: 0x%lx\n", VMCB_U64(vmcb, VMCB_CR2));
    check(code == SVM_EXIT_EXCP_BASE + 14 && VMCB_U64(vmcb, VMCB_EXITINFO2) == 0x100000000ul,
          "#PF intercept with the address in EXITINFO2");
    if (info.features & SVM_FEAT_DECODEASSISTS)
        kprintf("[cpu]   decode assists: INSN_LEN=%u first bytes %02x %02x %02x\n",
                VMCB_U8(vmcb, VMCB_INSN_LEN), VMCB_U8(vmcb, VMCB_INSN_BYTES),
                VMCB_U8(vmcb, VMCB_INSN_BYTES + 1), VMCB_U8(vmcb, VMCB_INSN_BYTES + 2));
    else
        kprintf("[cpu]   decode assists: not supported\n");
    /* Reflect it: the hypervisor sets CR2 and injects #PF with the error code. */
    VMCB_U64(vmcb, VMCB_CR2) = VMCB_U64(vmcb, VMCB_EXITINFO2);
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 0;
    VMCB_U64(vmcb, VMCB_EVENTINJ) = EVENT_VALID | EVENT_TYPE_EXCEPTION | EVENT_EV | 14 |
                                    EVENT_ERROR(VMCB_U64(vmcb, VMCB_EXITINFO1));
    code = run();
    kprintf("#PF reflected: exit %s\n", svm_exit_name(code));
    print_guest_record();
    check(rec_vec == 14 && rec_ec == 0 && rec_rip == (uint64_t)gw_pf, "#PF reflected");
}

/* ================================================================ 15.21 */
static uint64_t virq(uint32_t prio, uint32_t tpr, bool vintr)
{
    guest_at(gw_sti);
    if (vintr)
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_VINTR;
    VMCB_U32(vmcb, VMCB_V_INTR) = tpr | (1u << 8) | (prio << 16) | (1u << 24);
    VMCB_U8(vmcb, VMCB_V_INTR_VECTOR) = 0x50;
    return run();
}

static void test_virq(void)
{
    uint64_t code = virq(2, 1, false);
    kprintf("V_IRQ prio 2 > V_TPR 1: exit %s, V_IRQ after = %u\n", svm_exit_name(code),
            (VMCB_U32(vmcb, VMCB_V_INTR) >> 8) & 1);
    print_guest_record();
    check(rec_vec == 0x50 && !((VMCB_U32(vmcb, VMCB_V_INTR) >> 8) & 1), "V_IRQ taken");
    code = virq(2, 3, false);
    kprintf("V_IRQ prio 2, V_TPR 3: exit %s at ", svm_exit_name(code));
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf(", V_IRQ after = %u, taken = %d\n", (VMCB_U32(vmcb, VMCB_V_INTR) >> 8) & 1,
            rec_vec != NO_EC);
    check(rec_vec == NO_EC, "V_IRQ held by V_TPR");
    code = virq(2, 1, true);
    print_exit("V_IRQ with the VINTR intercept");
    check(code == SVM_EXIT_VINTR, "VINTR exit");
}

/* ================================================================ 15.11 */
static void msr_case(uint32_t msr, bool write)
{
    guest_at(write ? gw_wrmsr : gw_rdmsr);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_MSR;
    for (unsigned i = 0; i < MSRPM_SIZE; i++)
        msrpm[i] = 0;
    msrpm_intercept(msrpm, msr, !write, write);
    gprs.rcx = msr;
    gprs.rdx = 0;
    VMCB_U64(vmcb, VMCB_RAX) = 0;
    uint64_t code = run();
    kprintf("%s 0x%x: exit %s info1=0x%lx\n", write ? "WRMSR" : "RDMSR", msr,
            svm_exit_name(code), VMCB_U64(vmcb, VMCB_EXITINFO1));
    check(code == SVM_EXIT_MSR && VMCB_U64(vmcb, VMCB_EXITINFO1) == write, "MSR intercept");
}

static void test_msr(void)
{
    static const uint32_t msrs[] = {0x00000174, 0xC0000081, 0xC0010114};
    for (unsigned i = 0; i < 3; i++) {
        msr_case(msrs[i], false);
        msr_case(msrs[i], true);
    }
    guest_at(gw_rdmsr);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_MSR;
    for (unsigned i = 0; i < MSRPM_SIZE; i++)
        msrpm[i] = 0;
    gprs.rcx = 0xC0020000;
    uint64_t code = run();
    kprintf("RDMSR 0xc0020000 (outside the MSRPM ranges): exit %s\n", svm_exit_name(code));
    check(code == SVM_EXIT_MSR, "MSR outside the ranges always exits");
}

/* ================================================================ 15.10 */
static void io_case(const char *what, char *rip, uint16_t port, uint16_t marked, uint64_t apm)
{
    guest_at(rip);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_IOIO;
    for (unsigned i = 0; i < IOPM_SIZE; i++)
        iopm[i] = 0;
    iopm_intercept(iopm, marked, true);
    gprs.rdx = port;
    gprs.rcx = 3;
    gprs.rsi = gprs.rdi = (uint64_t)out_buf;
    uint64_t code = run();
    uint64_t info1 = VMCB_U64(vmcb, VMCB_EXITINFO1);
    kprintf("%s: exit %s info1=0x%lx info2=", what, svm_exit_name(code),
            info1 & ~(uint64_t)(IOIO_ASIZE_MASK | (7u << 10)));
    print_sym(VMCB_U64(vmcb, VMCB_EXITINFO2));
    kprintf(" rip=");
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf(" rcx=%lu\n", gprs.rcx);
    kprintf("[qemu]   address size and segment bits 12:7 = 0x%lx (APM: 0x%lx)\n",
            info1 & (IOIO_ASIZE_MASK | (7u << 10)), apm);
    check(code == SVM_EXIT_IOIO && gprs.rcx == 3, what);
}

static void test_io(void)
{
    /* Segment: DS (3) for OUTS, FS (4) with the override, ES (0) for INS. */
    io_case("rep outsb to 0x3f8", gw_outs, 0x3F8, 0x3F8, IOIO_A64 | (3u << 10));
    io_case("fs outsb to 0x3f8", gw_outs_fs, 0x3F8, 0x3F8, IOIO_A64 | (4u << 10));
    io_case("rep insw from 0x3f8", gw_ins, 0x3F8, 0x3F8, IOIO_A64);
    io_case("in ax from 0x3ff, 0x400 marked", gw_in_straddle, 0x3FF, 0x400, IOIO_A64);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("svm_world: events and exit information across the world switch\n");
    svm_cpuid(&info);
    const char *err = svm_enable(hsave);
    if (err) {
        kprintf("svm_world: %s\n", err);
        return 1;
    }
    svm_vmsave(host_save);
    gate(0, gw_isr_0, true);
    gate(2, gw_isr_2, true);
    gate(13, gw_isr_13, true);
    gate(14, gw_isr_14, true);
    gate(0x41, gw_isr_0x41, true);
    gate(0x50, gw_isr_0x50, true);
    gate(0x80, gw_isr_0x80, true);
    test_injection();
    test_exitintinfo();
    test_pf();
    test_virq();
    test_msr();
    test_io();
    kprintf("svm_world: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
