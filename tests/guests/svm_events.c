/*
 * svm_events: event handling across the SVM world switch.
 *
 * A hypervisor runs short 64-bit guest snippets (ge_* labels, a CPL3 one at
 * gu_int) and prints, for each, what the AMD APM vol 2 specifies.  Every
 * section starts from a fresh VMCB (vmcb_init + vmcb_guest_long).
 *
 * 1. EVENTINJ (15.20): INTR 41h; NMI through the guest's vector 2; #GP with
 *    error code 10h; #PF with an error code (injection does not write CR2:
 *    the guest sees the VMCB's CR2); #DE (no error code); software
 *    interrupt 80h, whose return RIP is the VMCB RIP without NRIP save (with
 *    NRIP save the CPU pushes the VMCB's NRIP, as KVM relies on: [cpu] line);
 *    EVENTINJ.V is clear in the VMCB after the next #VMEXIT.
 * 2. EXITINTINFO (15.7.2): an injected INTR 42h whose gate is not present,
 *    #NP intercepted: EXCP_NP, EXITINFO1 = the #NP error code, EXITINTINFO =
 *    the injected event; re-injecting it after fixing the gate leaves
 *    EXITINTINFO.V = 0 at the next exit.  A CPL3 guest's INT 44h through a
 *    DPL0 gate with #GP intercepted: EXITINTINFO = type 4 (software
 *    interrupt) vector 44h.
 * 3. Virtual interrupts (15.21): V_IRQ taken when V_INTR_PRIO > V_TPR (the
 *    APM's "priority greater than V_TPR"), held when V_INTR_PRIO <= V_TPR,
 *    V_IGN_TPR; V_IRQ cleared when taken; VINTR intercept (64h) when the
 *    guest could take it; V_INTR_MASKING: CR8 reads/writes go to V_TPR
 *    (15.21.2) and the host's TPR is untouched; guest RFLAGS.IF
 *    does not mask physical interrupts, the host's IF does (15.21.1): INTR
 *    intercept with the guest's IF = 0, and the interrupt stays pending for
 *    the host (taken after STGI).
 * 4. Interrupt shadow (15.21.5): INT_STATE.INTERRUPT_SHADOW at #VMEXIT after
 *    STI and MOV SS; a shadow set by the hypervisor delays a virtual
 *    interrupt by one guest instruction; EVENTINJ ignores it (15.20).
 * 5. GIF (15.17): a self-NMI and a self-IPI are held while GIF = 0 (host
 *    IF = 1) and taken at STGI; an NMI pending at VMRUN with the NMI
 *    intercept exits NMI (61h) and stays pending for the host.
 * 6. RFLAGS.TF across VMRUN (APM vol 2 ch. 15, "VMRUN and TF/RF Bits in
 *    EFLAGS", quoted in kvm-unit-tests' host_rflags test): VMRUN is one host instruction; a single-step #DB is taken in
 *    the host after the #VMEXIT, on the instruction after VMRUN.
 *
 * Lines tagged [qemu] show where QEMU 7.2 TCG departs from the APM, with the
 * APM's value; [cpu] lines depend on the CPU model (NRIP save).
 */
#include "svm.h"

#define USER_VA 0x41000000ul         /* the CPL3 guest code page */
#define HOST_IPI_VECTOR 0x60
#define ICR_NMI (4u << 8)
#define INT_CTL_V_IRQ (1u << 8)
#define INT_CTL_PRIO(p) ((uint32_t)(p) << 16)
#define INT_CTL_V_IGN_TPR (1u << 20)
#define INT_CTL_V_INTR_MASKING (1u << 24)
#define RFLAGS_IF 0x200ul
#define SEG_ATTR_UCODE64 0x0AFB      /* 64-bit code, DPL 3 */
#define SEG_ATTR_UDATA 0x0CF3        /* data, DPL 3 */
#define NO_REC 0xFFFFFFFFFFFFFFFFul

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t user_page[4096] __attribute__((aligned(4096)));
static uint8_t guest_stack[8192] __attribute__((aligned(16)));
static uint64_t guest_idt[2 * 256] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static struct svm_info info;
static int fails;

/* Written by the guest's IDT handlers (same memory as the host's). */
volatile uint64_t rec_vec, rec_ec, rec_rip, rec_cr2, tf_guest_ran;

/* ================================================================ guest code */

asm(".pushsection .text\n"
    /* Handlers record vector, error code (or -1), return RIP, CR2; then HLT. */
    ".macro GE_NOEC v\n"
    "ge_isr_\\v:\n  movq $\\v, rec_vec(%rip)\n  movq $-1, rec_ec(%rip)\n"
    "  push %rax\n  mov 8(%rsp), %rax\n  mov %rax, rec_rip(%rip)\n"
    "  mov %cr2, %rax\n  mov %rax, rec_cr2(%rip)\n  pop %rax\n  hlt\n"
    ".endm\n"
    ".macro GE_EC v\n"
    "ge_isr_\\v:\n  movq $\\v, rec_vec(%rip)\n"
    "  push %rax\n  mov 8(%rsp), %rax\n  mov %rax, rec_ec(%rip)\n"
    "  mov 16(%rsp), %rax\n  mov %rax, rec_rip(%rip)\n"
    "  mov %cr2, %rax\n  mov %rax, rec_cr2(%rip)\n  pop %rax\n  hlt\n"
    ".endm\n"
    "GE_NOEC 0\n GE_NOEC 2\n GE_EC 13\n GE_EC 14\n GE_NOEC 0x41\n GE_NOEC 0x42\n"
    "GE_NOEC 0x44\n GE_NOEC 0x50\n GE_NOEC 0x80\n"
    "ge_hlt: hlt\n"
    "ge_int80: int $0x80\n  hlt\n"
    "ge_sti: sti\n  nop\n  nop\n  hlt\n"
    "ge_noint: nop\n  hlt\n"
    "ge_cli: cli\n  nop\n  hlt\n"
    "ge_cr8: mov %cr8, %rcx\n  mov $5, %eax\n  mov %rax, %cr8\n  mov %cr8, %rbx\n"
    "ge_cr8_hlt: hlt\n"
    "ge_sti_hlt: sti\n  hlt\n"
    "ge_movss: mov %ss, %eax\n  mov %eax, %ss\n  hlt\n"
    "ge_sti_nop_hlt: sti\n  nop\n  hlt\n"
    "ge_nops: nop\n  nop\n  hlt\n"
    "ge_tf: incq tf_guest_ran(%rip)\n"
    "ge_tf_hlt: hlt\n"
    ".popsection\n"
    /* CPL3 code, copied to the user page at USER_VA. */
    ".pushsection .rodata\n"
    "gu_start: int $0x44\n  ud2\n"
    "gu_end:\n"
    ".popsection\n");

/*
 * void step_vmrun(void *vmcb): VMRUN with RFLAGS.TF = 1.  POPF sets TF, so
 * the single-step trap belongs to the next instruction, VMRUN (APM vol 3,
 * POPF; vol 2, 13.1.4.1).  After #VMEXIT the host's RAX and RSP are back;
 * the guest (ge_tf) touches no register.
 */
asm(".pushsection .text\n"
    ".globl step_vmrun\n"
    "step_vmrun:\n"
    "  push %rbx\n  push %rbp\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
    "  mov %rdi, %rax\n"
    "  pushfq\n  orq $0x100, (%rsp)\n  popfq\n"
    "hs_vmrun: vmrun %rax\n"
    "hs_after: pushfq\n  andq $-0x101, (%rsp)\n  popfq\n"
    "hs_done: pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbp\n  pop %rbx\n"
    "  ret\n"
    ".popsection\n");

extern char ge_isr_0[], ge_isr_2[], ge_isr_13[], ge_isr_14[], ge_isr_0x41[], ge_isr_0x42[],
    ge_isr_0x44[], ge_isr_0x50[], ge_isr_0x80[], ge_hlt[], ge_int80[], ge_sti[], ge_noint[],
    ge_cli[], ge_cr8[], ge_cr8_hlt[], ge_sti_hlt[], ge_movss[], ge_sti_nop_hlt[], ge_nops[], ge_tf[], ge_tf_hlt[], gu_start[],
    gu_end[], hs_vmrun[], hs_after[], hs_done[];
void step_vmrun(void *vmcb);

static const struct svm_label labels[] = {
    {"ge_isr_0", ge_isr_0}, {"ge_isr_2", ge_isr_2}, {"ge_isr_13", ge_isr_13},
    {"ge_isr_14", ge_isr_14}, {"ge_isr_0x41", ge_isr_0x41}, {"ge_isr_0x42", ge_isr_0x42},
    {"ge_isr_0x44", ge_isr_0x44}, {"ge_isr_0x50", ge_isr_0x50}, {"ge_isr_0x80", ge_isr_0x80},
    {"ge_hlt", ge_hlt}, {"ge_int80", ge_int80}, {"ge_sti", ge_sti}, {"ge_noint", ge_noint},
    {"ge_cli", ge_cli}, {"ge_cr8", ge_cr8}, {"ge_cr8_hlt", ge_cr8_hlt},
    {"ge_sti_hlt", ge_sti_hlt},
    {"ge_movss", ge_movss}, {"ge_sti_nop_hlt", ge_sti_nop_hlt}, {"ge_nops", ge_nops},
    {"ge_tf", ge_tf}, {"ge_tf_hlt", ge_tf_hlt}, {"hs_vmrun", hs_vmrun},
    {"hs_after", hs_after}, {"hs_done", hs_done}, {"gu_int", (char *)USER_VA},
};

/* "label" or "label+n" (nearest label at or below, within 64 bytes). */
static void print_sym(uint64_t addr)
{
    if (!svm_print_label(labels, sizeof(labels) / sizeof(labels[0]), addr, 64)) {
        kprintf(" FAIL: not at a known label");
        fails++;
    }
}

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        fails++;
    }
}

/* A 64-bit interrupt gate (type Eh), APM vol 2, 4.8.4. */
static void gate(int vector, char *handler, bool present, int dpl)
{
    svm_idt_gate64(guest_idt, vector, handler, present, dpl);
}

/* ================================================================ hypervisor */

/* A fresh VMCB: a 64-bit guest at rip, HLT and SHUTDOWN intercepted. */
static void guest_at(char *rip)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)rip, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    guest_idt, sizeof(guest_idt) - 1);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    svm_vmsave(vmcb);
    memset(&gprs, 0, sizeof(gprs));
    rec_vec = rec_ec = rec_rip = rec_cr2 = NO_REC;
}

/* VMRUN with GIF already 0 (the caller's CLGI); GIF stays 0 after. */
static uint64_t run_gif0(void)
{
    svm_vmload(vmcb);
    svm_run_guest(vmcb, &gprs);
    svm_vmsave(vmcb);
    svm_vmload(host_save);
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}

static uint64_t run(void)
{
    svm_clgi();
    uint64_t code = run_gif0();
    svm_stgi();
    return code;
}

static uint64_t exitintinfo(void) { return VMCB_U64(vmcb, VMCB_EXITINTINFO); }
static uint32_t int_ctl(void) { return VMCB_U32(vmcb, VMCB_V_INTR); }
static uint32_t v_irq(void) { return (int_ctl() >> 8) & 1; }

/* EXITINTINFO in full when V = 1; only V otherwise (the APM defines the
 * other bits only for a valid event). */
static void print_intinfo(void)
{
    if (exitintinfo() & EVENT_VALID)
        kprintf("exitintinfo=0x%lx", exitintinfo());
    else
        kprintf("exitintinfo.V=0");
}

static void print_exit(const char *what, bool with_info1)
{
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
    kprintf("%s: exit %s (0x%lx) ", what, svm_exit_name(code), code);
    if (with_info1)
        kprintf("info1=0x%lx ", VMCB_U64(vmcb, VMCB_EXITINFO1));
    kprintf("info2=0x%lx ", VMCB_U64(vmcb, VMCB_EXITINFO2));
    print_intinfo();
    kprintf(" rip=");
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf("\n");
}

static void print_record(void)
{
    if (rec_vec == NO_REC) {
        kprintf("  guest handler: not run\n");
        return;
    }
    kprintf("  guest handler: vector 0x%lx, ", rec_vec);
    if (rec_ec == NO_REC)
        kprintf("no error code");
    else
        kprintf("error code 0x%lx", rec_ec);
    kprintf(", return RIP ");
    print_sym(rec_rip);
    kprintf("\n");
}

/* ================================================================ 1. EVENTINJ */

static void inject_case(const char *what, uint64_t event, uint64_t vector, uint64_t ec)
{
    guest_at(ge_hlt);
    VMCB_U64(vmcb, VMCB_EVENTINJ) = event;
    uint64_t code = run();
    kprintf("inject %s (EVENTINJ=0x%lx): exit %s, EVENTINJ.V after = %lu, ", what, event,
            svm_exit_name(code), (VMCB_U64(vmcb, VMCB_EVENTINJ) >> 31) & 1);
    print_intinfo();
    kprintf("\n");
    print_record();
    check(code == SVM_EXIT_HLT && rec_vec == vector && rec_ec == ec &&
          rec_rip == (uint64_t)ge_hlt, what);
    check(!(VMCB_U64(vmcb, VMCB_EVENTINJ) & EVENT_VALID), "EVENTINJ.V cleared (15.20)");
    check(!(exitintinfo() & EVENT_VALID), "delivered: EXITINTINFO.V = 0");
}

static void test_eventinj(void)
{
    kprintf("== 1. EVENTINJ (APM 15.20) ==\n");
    inject_case("INTR 0x41", EVENT_VALID | EVENT_TYPE_INTR | 0x41, 0x41, NO_REC);
    inject_case("NMI", EVENT_VALID | EVENT_TYPE_NMI | 2, 2, NO_REC);
    inject_case("#GP(0x10)", EVENT_VALID | EVENT_TYPE_EXCEPTION | EVENT_EV | 13 |
                EVENT_ERROR(0x10), 13, 0x10);
    inject_case("#DE", EVENT_VALID | EVENT_TYPE_EXCEPTION | 0, 0, NO_REC);

    /* #PF: the error code is pushed; CR2 is whatever the VMCB holds (the
     * hypervisor's job to set it: injection does not write CR2). */
    guest_at(ge_hlt);
    VMCB_U64(vmcb, VMCB_CR2) = 0x1234;
    uint64_t ev = EVENT_VALID | EVENT_TYPE_EXCEPTION | EVENT_EV | 14 | EVENT_ERROR(0x6);
    VMCB_U64(vmcb, VMCB_EVENTINJ) = ev;
    uint64_t code = run();
    kprintf("inject #PF(0x6) with VMCB CR2=0x1234 (EVENTINJ=0x%lx): exit %s, "
            "EVENTINJ.V after = %lu\n", ev, svm_exit_name(code),
            (VMCB_U64(vmcb, VMCB_EVENTINJ) >> 31) & 1);
    print_record();
    kprintf("  guest CR2 in the handler = 0x%lx, VMCB CR2 after = 0x%lx\n", rec_cr2,
            VMCB_U64(vmcb, VMCB_CR2));
    check(rec_vec == 14 && rec_ec == 6 && rec_rip == (uint64_t)ge_hlt && rec_cr2 == 0x1234 &&
          VMCB_U64(vmcb, VMCB_CR2) == 0x1234, "#PF injected, CR2 untouched");

    /* Software interrupt (type 4): no instruction is executed, so the
     * return RIP is the VMCB RIP; with NRIP save the CPU pushes NRIP (the
     * hypervisor leaves RIP at the INT and NRIP after it).  [cpu] line. */
    guest_at(ge_int80);
    VMCB_U64(vmcb, VMCB_NRIP) = (uint64_t)ge_int80 + 2;
    ev = EVENT_VALID | EVENT_TYPE_SOFT_INT | 0x80;
    VMCB_U64(vmcb, VMCB_EVENTINJ) = ev;
    code = run();
    kprintf("inject INT 0x80 (type 4, EVENTINJ=0x%lx) at RIP=ge_int80, NRIP=ge_int80+2: "
            "exit %s, EVENTINJ.V after = %lu\n", ev, svm_exit_name(code),
            (VMCB_U64(vmcb, VMCB_EVENTINJ) >> 31) & 1);
    bool nrips = (info.features & SVM_FEAT_NRIPS) != 0;
    kprintf("[cpu]   type 4 return RIP = ");
    print_sym(rec_rip);
    kprintf(" (NRIP save: %s, so the VMCB's %s)\n", nrips ? "yes" : "no", nrips ? "NRIP" : "RIP");
    check(code == SVM_EXIT_HLT && rec_vec == 0x80 && rec_ec == NO_REC &&
          rec_rip == (uint64_t)ge_int80 + (nrips ? 2 : 0), "software interrupt injected");
    check(!(VMCB_U64(vmcb, VMCB_EVENTINJ) & EVENT_VALID), "EVENTINJ.V cleared (15.20)");
}

/* ================================================================ 2. EXITINTINFO */

static void test_exitintinfo(void)
{
    kprintf("== 2. EXITINTINFO (APM 15.7.2) ==\n");
    /* Injected INTR 42h through a not-present gate, #NP intercepted. */
    guest_at(ge_hlt);
    gate(0x42, ge_isr_0x42, false, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 11;
    uint64_t ev = EVENT_VALID | EVENT_TYPE_INTR | 0x42;
    VMCB_U64(vmcb, VMCB_EVENTINJ) = ev;
    uint64_t code = run();
    print_exit("INTR 0x42 injected, gate not present", false);
    /* #NP error code (APM vol 2, 8.4.1): IDT index = the vector (bits 15:3),
     * IDT = 1, EXT = 1 (an external interrupt).  QEMU 7.2 uses the gate's
     * byte offset (vector * 16) and no EXT. */
    kprintf("[qemu]   #NP error code in EXITINFO1 = 0x%lx (APM: 0x%x)\n",
            VMCB_U64(vmcb, VMCB_EXITINFO1), 0x42 * 8 + 2 + 1);
    check(code == SVM_EXIT_EXCP_BASE + 11 && exitintinfo() == ev &&
          VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)ge_hlt, "#NP exit with EXITINTINFO = the event");
    check(rec_vec == NO_REC, "no guest handler ran");

    /* The hypervisor fixes the gate and re-injects EXITINTINFO: delivered,
     * and the next exit (HLT in the handler) interrupted no delivery. */
    gate(0x42, ge_isr_0x42, true, 0);
    VMCB_U64(vmcb, VMCB_EVENTINJ) = exitintinfo();
    code = run();
    print_exit("re-injected from EXITINTINFO", true);
    print_record();
    check(code == SVM_EXIT_HLT && !(exitintinfo() & EVENT_VALID) && rec_vec == 0x42 &&
          rec_rip == (uint64_t)ge_hlt, "re-injection delivered, EXITINTINFO.V = 0");

    /* A CPL3 guest's INT 44h through a DPL0 gate: #GP(44h*8+2), intercepted
     * while delivering a software interrupt. */
    memcpy(user_page, gu_start, (size_t)(gu_end - gu_start));
    map_page(USER_VA, (uint64_t)user_page, PTE_P | PTE_W | PTE_U);
    guest_at((char *)USER_VA);
    gate(0x44, ge_isr_0x44, true, 0);
    vmcb_set_seg(vmcb, VMCB_CS, SEL_UCODE64, SEG_ATTR_UCODE64, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_SS, SEL_UDATA, SEG_ATTR_UDATA, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_DS, SEL_UDATA, SEG_ATTR_UDATA, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_ES, SEL_UDATA, SEG_ATTR_UDATA, 0xFFFFFFFF, 0);
    VMCB_U8(vmcb, VMCB_CPL) = 3;
    VMCB_U64(vmcb, VMCB_RSP) = USER_VA + 4096 - 16;
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 13;
    code = run();
    print_exit("CPL3 INT 0x44, gate DPL 0", false);
    kprintf("[qemu]   #GP error code in EXITINFO1 = 0x%lx (APM: 0x%x)\n",
            VMCB_U64(vmcb, VMCB_EXITINFO1), 0x44 * 8 + 2);
    kprintf("  guest CPL in the VMCB = %u\n", VMCB_U8(vmcb, VMCB_CPL));
    check(code == SVM_EXIT_EXCP_BASE + 13 &&
          exitintinfo() == (EVENT_VALID | EVENT_TYPE_SOFT_INT | 0x44) &&
          VMCB_U64(vmcb, VMCB_RIP) == USER_VA, "#GP exit with EXITINTINFO = INT 44h");
    unmap_page(USER_VA);

    /* A plain exit in a fresh VMCB. */
    guest_at(ge_hlt);
    run();
    print_exit("plain HLT", true);
    check(!(exitintinfo() & EVENT_VALID), "EXITINTINFO.V = 0");
}

/* ================================================================ 3. virtual interrupts */

/* V_IRQ with vector 50h at ge_sti (sti; nop; nop; hlt), guest IF = 0 first. */
static uint64_t virq(char *rip, uint32_t prio, uint32_t tpr, uint32_t extra, bool vintr)
{
    guest_at(rip);
    if (vintr)
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_VINTR;
    VMCB_U32(vmcb, VMCB_V_INTR) = tpr | INT_CTL_V_IRQ | INT_CTL_PRIO(prio) |
                                  INT_CTL_V_INTR_MASKING | extra;
    VMCB_U8(vmcb, VMCB_V_INTR_VECTOR) = 0x50;
    return run();
}

static void virq_line(const char *what, uint64_t code)
{
    kprintf("%s: exit %s at ", what, svm_exit_name(code));
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf(", V_IRQ after = %u, V_TPR after = %u\n", v_irq(), int_ctl() & 0xFF);
    print_record();
}

static volatile uint32_t host_ipis, host_nmis;

static void host_ipi(struct trap_frame *f)
{
    host_ipis++;
    lapic_eoi();
}

static void host_nmi(struct trap_frame *f)
{
    host_nmis++;
}

static void spin(void)
{
    for (volatile int i = 0; i < 20000; i++)
        pause();
}

static void test_virq(void)
{
    kprintf("== 3. virtual interrupts (APM 15.21) ==\n");
    uint64_t code = virq(ge_sti, 2, 1, 0, false);
    virq_line("V_IRQ prio 2 > V_TPR 1", code);
    check(code == SVM_EXIT_HLT && rec_vec == 0x50 && rec_rip == (uint64_t)ge_sti + 2 &&
          v_irq() == 0, "V_IRQ taken after the STI shadow, V_IRQ cleared");

    /* Equal priority: the APM takes a virtual interrupt only when its
     * priority is greater than V_TPR; QEMU 7.2 compares with >=. */
    code = virq(ge_sti, 2, 2, 0, false);
    kprintf("[qemu] V_IRQ prio 2 = V_TPR 2: taken = %d (APM: 0)\n", rec_vec != NO_REC);
    kprintf("[qemu]   V_IRQ after = %u (APM: 1)\n", v_irq());

    code = virq(ge_sti, 2, 3, 0, false);
    virq_line("V_IRQ prio 2 < V_TPR 3", code);
    check(code == SVM_EXIT_HLT && rec_vec == NO_REC && v_irq() == 1 &&
          VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)ge_sti + 3, "V_IRQ held by V_TPR");

    code = virq(ge_sti, 2, 3, INT_CTL_V_IGN_TPR, false);
    virq_line("V_IRQ prio 2 < V_TPR 3, V_IGN_TPR=1", code);
    check(rec_vec == 0x50 && rec_rip == (uint64_t)ge_sti + 2 && v_irq() == 0,
          "V_IGN_TPR overrides V_TPR");

    code = virq(ge_noint, 2, 1, 0, false);
    virq_line("V_IRQ prio 2 > V_TPR 1, guest IF=0", code);
    check(code == SVM_EXIT_HLT && rec_vec == NO_REC && v_irq() == 1, "guest IF masks V_IRQ");

    code = virq(ge_sti, 2, 1, 0, true);
    print_exit("VINTR intercept, V_IRQ prio 2 > V_TPR 1", true);
    kprintf("  V_IRQ after = %u\n", v_irq());
    print_record();
    check(code == SVM_EXIT_VINTR && VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)ge_sti + 2 &&
          v_irq() == 1 && rec_vec == NO_REC, "VINTR exit instead of taking V_IRQ");

    code = virq(ge_sti, 2, 3, 0, true);
    virq_line("VINTR intercept, V_IRQ prio 2 < V_TPR 3", code);
    check(code == SVM_EXIT_HLT && v_irq() == 1, "no VINTR exit while V_TPR blocks");

    /* CR8 is V_TPR with V_INTR_MASKING = 1 (15.21.2); the host's TPR stays. */
    guest_at(ge_cr8);
    VMCB_U32(vmcb, VMCB_V_INTR) = 7 | INT_CTL_V_INTR_MASKING;
    uint32_t host_tpr = lapic_read(LAPIC_TPR);
    code = run();
    kprintf("CR8 with V_INTR_MASKING=1, V_TPR=7: exit %s at ", svm_exit_name(code));
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf(", guest read CR8 = %lu, wrote 5, read back %lu, V_TPR after = %u, host TPR "
            "%s\n", gprs.rcx, gprs.rbx, int_ctl() & 0xFF,
            lapic_read(LAPIC_TPR) == host_tpr ? "unchanged" : "CHANGED");
    check(code == SVM_EXIT_HLT && gprs.rcx == 7 && gprs.rbx == 5 && (int_ctl() & 0xFF) == 5 &&
          lapic_read(LAPIC_TPR) == host_tpr, "CR8 accesses V_TPR");

    /* Not tested: a guest MOV to CR8 that makes a held V_IRQ deliverable.
     * QEMU 7.2 aborts there (helper_write_crN raises CPU_INTERRUPT_VIRQ
     * without the iothread lock: tcg_handle_interrupt assertion). */

    /* Physical interrupts (15.21.1): a self-IPI made pending with GIF = 0
     * and host IF = 1, then VMRUN of a guest with RFLAGS.IF = 0 running
     * cli; nop; hlt, INTR intercepted. */
    for (int masking = 1; masking >= 0; masking--) {
        guest_at(ge_cli);
        VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_INTR;
        VMCB_U32(vmcb, VMCB_V_INTR) = masking ? INT_CTL_V_INTR_MASKING : 0;
        host_ipis = 0;
        svm_clgi();
        sti();
        lapic_send_ipi(0, ICR_SELF | ICR_FIXED | HOST_IPI_VECTOR);
        spin();
        uint32_t before = host_ipis;
        code = run_gif0();
        spin();
        uint32_t after_exit = host_ipis;
        svm_stgi();
        spin();
        cli();
        kprintf("self-IPI pending, V_INTR_MASKING=%d, guest IF=0: exit %s at ", masking,
                svm_exit_name(code));
        print_sym(VMCB_U64(vmcb, VMCB_RIP));
        kprintf("; host took it: before VMRUN %u, after #VMEXIT (GIF=0) %u, after STGI %u\n",
                before, after_exit, host_ipis);
        check(code == (masking ? SVM_EXIT_INTR : SVM_EXIT_HLT) && before == 0 &&
              after_exit == 0 && host_ipis == 1, "physical INTR masking");
        check(VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)(masking ? ge_cli : ge_cli + 2),
              "exit RIP");
    }
}

/* ================================================================ 4. interrupt shadow */

static void shadow_case(const char *what, char *rip, uint64_t expect)
{
    guest_at(rip);
    uint64_t code = run();
    kprintf("%s: exit %s at ", what, svm_exit_name(code));
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf(", INTERRUPT_SHADOW = %lu\n", VMCB_U64(vmcb, VMCB_INTERRUPT_SHADOW) & 1);
    check(code == SVM_EXIT_HLT && (VMCB_U64(vmcb, VMCB_INTERRUPT_SHADOW) & 1) == expect, what);
}

static void test_shadow(void)
{
    kprintf("== 4. interrupt shadow (APM 15.21.5) ==\n");
    shadow_case("sti; hlt (IF was 0)", ge_sti_hlt, 1);
    shadow_case("mov ss; hlt", ge_movss, 1);
    shadow_case("sti; nop; hlt", ge_sti_nop_hlt, 0);
    shadow_case("nop; hlt", ge_noint, 0);

    /* INTERRUPT_SHADOW = 1 written by the hypervisor, guest IF = 1, a V_IRQ
     * pending and VINTR intercepted: the first guest instruction runs in the
     * shadow, the VINTR exit comes after it. */
    guest_at(ge_nops);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_VINTR;
    VMCB_U32(vmcb, VMCB_V_INTR) = INT_CTL_V_IRQ | INT_CTL_PRIO(15) | INT_CTL_V_INTR_MASKING;
    VMCB_U8(vmcb, VMCB_V_INTR_VECTOR) = 0x50;
    VMCB_U64(vmcb, VMCB_RFLAGS) = 0x2 | RFLAGS_IF;
    VMCB_U64(vmcb, VMCB_INTERRUPT_SHADOW) = 1;
    uint64_t code = run();
    kprintf("INTERRUPT_SHADOW=1 at VMRUN, V_IRQ pending, VINTR intercepted: exit %s\n",
            svm_exit_name(code));
    kprintf("[qemu]   VINTR exit rip = ");
    print_sym(VMCB_U64(vmcb, VMCB_RIP));
    kprintf(" (APM: ge_nops+1)\n");
    check(code == SVM_EXIT_VINTR, "VINTR exit");

    /* The same without the shadow: before the first instruction. */
    guest_at(ge_nops);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_VINTR;
    VMCB_U32(vmcb, VMCB_V_INTR) = INT_CTL_V_IRQ | INT_CTL_PRIO(15) | INT_CTL_V_INTR_MASKING;
    VMCB_U64(vmcb, VMCB_RFLAGS) = 0x2 | RFLAGS_IF;
    code = run();
    print_exit("INTERRUPT_SHADOW=0 at VMRUN, V_IRQ pending, VINTR intercepted", true);
    check(code == SVM_EXIT_VINTR && VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)ge_nops,
          "VINTR exit before the first instruction");

    /* EVENTINJ with INTERRUPT_SHADOW = 1 and guest IF = 0: delivered. */
    guest_at(ge_hlt);
    VMCB_U64(vmcb, VMCB_INTERRUPT_SHADOW) = 1;
    VMCB_U64(vmcb, VMCB_EVENTINJ) = EVENT_VALID | EVENT_TYPE_INTR | 0x41;
    code = run();
    kprintf("INTR 0x41 injected with INTERRUPT_SHADOW=1, IF=0: exit %s\n", svm_exit_name(code));
    print_record();
    check(code == SVM_EXIT_HLT && rec_vec == 0x41 && rec_rip == (uint64_t)ge_hlt,
          "injection ignores the shadow and IF");
}

/* ================================================================ 5. GIF */

static void test_gif(void)
{
    kprintf("== 5. GIF (APM 15.17) ==\n");
    uint32_t me = lapic_id();
    host_nmis = 0;
    svm_clgi();
    lapic_send_ipi(me, ICR_NMI | ICR_ASSERT);
    spin();
    uint32_t held = host_nmis;
    svm_stgi();
    spin();
    kprintf("self-NMI with GIF=0: taken before STGI %u, after STGI %u\n", held, host_nmis);
    check(held == 0 && host_nmis == 1, "GIF holds NMI");

    host_ipis = 0;
    svm_clgi();
    sti();
    lapic_send_ipi(0, ICR_SELF | ICR_FIXED | HOST_IPI_VECTOR);
    spin();
    held = host_ipis;
    svm_stgi();
    spin();
    cli();
    kprintf("self-IPI with GIF=0, IF=1: taken before STGI %u, after STGI %u\n", held, host_ipis);
    check(held == 0 && host_ipis == 1, "GIF holds INTR");

    /* An NMI pending at VMRUN with the NMI intercept: #VMEXIT(NMI) before the
     * first guest instruction; the NMI stays pending until STGI. */
    guest_at(ge_noint);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_NMI;
    host_nmis = 0;
    svm_clgi();
    lapic_send_ipi(me, ICR_NMI | ICR_ASSERT);
    spin();
    uint64_t code = run_gif0();
    spin();
    held = host_nmis;
    svm_stgi();
    spin();
    print_exit("NMI pending at VMRUN, NMI intercepted", true);
    kprintf("  host NMI handler: after #VMEXIT (GIF=0) %u, after STGI %u\n", held, host_nmis);
    check(code == SVM_EXIT_NMI && VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)ge_noint &&
          held == 0 && host_nmis == 1, "NMI intercept leaves the NMI pending");
}

/* ================================================================ 6. TF */

static volatile uint64_t db_rip, db_dr6;
static volatile uint32_t db_count;

static void host_db(struct trap_frame *f)
{
    uint64_t dr6;
    asm volatile("mov %%dr6, %0" : "=r"(dr6));
    if (!db_count++) {
        db_rip = f->rip;
        db_dr6 = dr6;
    }
    f->rflags &= ~0x100ul;
    asm volatile("mov %0, %%dr6" : : "r"(0xFFFF0FF0ul));
}

static void test_tf(void)
{
    kprintf("== 6. RFLAGS.TF across VMRUN (APM ch. 15, VMRUN and TF/RF Bits in EFLAGS) ==\n");
    set_handler(1, host_db);
    guest_at(ge_tf);
    VMCB_U32(vmcb, VMCB_INTERCEPT_EXC) = 1u << 1;      /* a #DB in the guest would exit */
    tf_guest_ran = 0;
    db_count = 0;
    svm_clgi();
    step_vmrun(vmcb);
    uint64_t ran_at_db = tf_guest_ran;
    svm_vmload(host_save);
    svm_stgi();
    uint64_t code = VMCB_U64(vmcb, VMCB_EXITCODE);
    kprintf("host TF=1, VMRUN: guest exit %s, guest instructions run = %lu (%lu when the "
            "#DB was taken)\n", svm_exit_name(code), tf_guest_ran, ran_at_db);
    kprintf("host #DB: count %u, DR6.BS = %lu\n", db_count, (db_dr6 >> 14) & 1);
    /* QEMU 7.2 raises no #DB for VMRUN itself; the TF restored from the host
     * save area traps one host instruction later. */
    kprintf("[qemu]   host #DB rip = ");
    print_sym(db_rip);
    kprintf(" (APM: hs_after)\n");
    check(code == SVM_EXIT_HLT && tf_guest_ran == 1 && ran_at_db == 1,
          "the guest ran to its HLT before the #DB");
    check(db_count == 1 && (db_dr6 & 0x4000), "one single-step #DB in the host");
    set_handler(1, 0);
}

/* ================================================================ main */

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("svm_events: event handling across the world switch\n");
    svm_cpuid(&info);
    kprintf("[cpu] CPUID 8000_000A EDX = 0x%x (NRIP save: %s)\n", info.features,
            info.features & SVM_FEAT_NRIPS ? "yes" : "no");
    const char *err = svm_enable(hsave);
    if (err) {
        kprintf("svm_events: %s\n", err);
        return 1;
    }
    svm_vmsave(host_save);
    lapic_enable();
    set_handler(HOST_IPI_VECTOR, host_ipi);
    set_handler(2, host_nmi);
    gate(0, ge_isr_0, true, 0);
    gate(2, ge_isr_2, true, 0);
    gate(13, ge_isr_13, true, 0);
    gate(14, ge_isr_14, true, 0);
    gate(0x41, ge_isr_0x41, true, 0);
    gate(0x42, ge_isr_0x42, true, 0);
    gate(0x50, ge_isr_0x50, true, 0);
    gate(0x80, ge_isr_0x80, true, 0);
    test_eventinj();
    test_exitintinfo();
    test_virq();
    test_shadow();
    test_gif();
    test_tf();
    kprintf("svm_events: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
