/*
 * svm_avic: an SMP hypervisor with AVIC (AMD APM vol 2, 15.29), on the
 * manual alone (QEMU has no AVIC).  Boot with --smp 2.
 *
 * Two host CPUs each run vCPUs with AVIC on, nested paging identity-mapped:
 *   CPU 0: A0 (VM A, guest APIC ID 0)
 *   CPU 1: A1 (VM A, guest APIC ID 1), later B2 (VM B, guest APIC ID 2)
 * VM A's physical APIC ID table holds A0 and A1 (AVIC_PHYSICAL_MAX_INDEX 1);
 * VM B's holds only B2.  The host sets an entry's IsRunning bit (with its
 * own APIC ID as the host physical APIC ID) just before VMRUN and clears it
 * after #VMEXIT, as a hypervisor does when it schedules a vCPU in and out.
 *
 * The guests write the APIC's ICR through the APIC page at FEE0_0000h,
 * which AVIC redirects to their backing pages (15.29.3), and count the
 * vectors their handlers take (the handlers EOI through the same page):
 *   1. A0 <-> A1 both running: each IPI lands in the target's IRR and the
 *      doorbell makes the running target take it, with no #VMEXIT at all
 *      (15.29.6.1 step 5);
 *   2. A0 -> A1 while A1 is halted (HLT exit, IsRunning 0): the IRR bit is
 *      set and A0 exits with AVIC_INCOMPLETE_IPI, ID 1 "IPI target not
 *      running" (15.29.9.1, table 15-27); the hypervisor wakes A1 (a host
 *      IPI to CPU 1), whose VMRUN delivers the interrupt (15.29.8.3);
 *   3. the hypervisor posts a vector to running A1 itself: IRR bit, then the
 *      doorbell MSR with CPU 1's APIC ID (15.29.8.2); no exit on A1;
 *   4. A1 -> A0 while A0 is halted: the same exit, on CPU 1, other way;
 *   5. isolation: while B2 runs on CPU 1, A0 sends to ID 2 (not in VM A's
 *      table: ID 2 "invalid target"), all-excluding-self and broadcast FFh;
 *      only VM A's vCPUs receive them, never B2 nor either host CPU.
 * The host prints each vCPU's exits and what each vCPU took at the end.
 *
 * With -append x2avic=1 the same runs under x2AVIC (15.29.10): the guests
 * reach their APICs through the x2APIC MSRs (ID 802h, EOI 80Bh, ICR 830h
 * with a 32-bit destination, broadcast FFFF_FFFFh).
 */
#include "svm.h"

#define NVCPU 3
#define NCPU 2
#define KICK_VECTOR 0xE0             /* host IPI: "a vCPU of yours is runnable" */
#define GVEC_FIRST 0x50              /* guest vectors 50h-5Fh */
#define GVEC_COUNT 16
#define MAX_LOG 16
#define ICR_ALL_BUT_SELF (3u << 18)

/* Hypercalls (VMMCALL, RAX = op, RBX, RCX = arguments). */
#define HC_DONE 0                    /* this vCPU has finished */
#define HC_WAIT_HALTED 1             /* return once vCPU RBX is halted */
#define HC_POST 2                    /* post vector RCX to vCPU RBX (host side) */
#define HC_START 3                   /* make vCPU RBX runnable */

struct exit_rec {
    uint32_t step;
    uint64_t code, info1, info2, rax;
};

struct vcpu {
    const char *name;
    int id;                          /* guest physical APIC ID = table index */
    int cpu;                         /* host CPU (its APIC ID) */
    int asid;
    uint8_t *vmcb;
    volatile uint32_t *backing;
    volatile uint64_t *table;        /* its VM's physical APIC ID table */
    uint32_t max_index;
    void *logical;
    void (*entry)(void);
    uint8_t *stack_top;
    struct svm_gprs gprs;
    volatile uint32_t runnable, halted, done;
    volatile uint32_t step;          /* written by the guest */
    volatile uint32_t got[256];      /* written by the guest's handlers */
    uint32_t nlog, intr_exits;
    struct exit_rec log[MAX_LOG];
};

static uint8_t hsave[NCPU][4096] __attribute__((aligned(4096)));
static uint8_t vmcbs[NVCPU][4096] __attribute__((aligned(4096)));
static uint32_t backings[NVCPU][1024] __attribute__((aligned(4096)));
static uint64_t phys_a[512] __attribute__((aligned(4096)));
static uint64_t phys_b[512] __attribute__((aligned(4096)));
static uint32_t logical_a[1024] __attribute__((aligned(4096)));
static uint32_t logical_b[1024] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint64_t npml4[512] __attribute__((aligned(4096)));
static uint64_t npdpt[512] __attribute__((aligned(4096)));
static uint64_t npd[4][512] __attribute__((aligned(4096)));
static uint64_t gidt[512] __attribute__((aligned(16)));
static uint8_t gstacks[NVCPU][8192] __attribute__((aligned(16)));

static struct vcpu vcpus[NVCPU];
static volatile uint32_t idle[NCPU], kicks[NCPU], host_leaks[NCPU], cpu_finished[NCPU];
static volatile uint32_t host_apic_hits[NCPU];   /* guest vectors set in a host APIC */
static volatile uint32_t stop_b;
static volatile uint32_t doorbells, post_wakes;   /* how HC_POST reached its target */
static int fails;
static bool have_nrips;
static volatile bool x2;             /* x2AVIC run: the guests use the x2APIC MSRs */

/* Past the intercepted HLT or VMMCALL: NRIP, or decoded without NRIP save. */
static void skip_insn(struct vcpu *v)
{
    uint64_t rip = VMCB_U64(v->vmcb, VMCB_RIP);
    VMCB_U64(v->vmcb, VMCB_RIP) = have_nrips ? VMCB_U64(v->vmcb, VMCB_NRIP)
                                             : rip + svm_insn_len((const uint8_t *)rip);
}

static inline void mfence(void) { asm volatile("mfence" ::: "memory"); }

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        fails++;
    }
}

/* ================================================================ the guests */

#define GAPIC(off) (*(volatile uint32_t *)(LAPIC_BASE + (off)))

/* Called by the guest handlers with the vector: the guest finds itself by
 * its APIC ID (read from the backing page) and EOIs (accelerated). */
void guest_irq(uint64_t vector)
{
    uint32_t id = x2 ? (uint32_t)rdmsr(0x802) : GAPIC(LAPIC_ID) >> 24;
    if (id < NVCPU)
        vcpus[id].got[vector & 0xFF]++;
    if (x2)
        wrmsr(0x80B, 0);
    else
        GAPIC(LAPIC_EOI) = 0;
}

/* Handlers for vectors 50h-5Fh, 16 bytes apart, saving what the SysV ABI
 * lets guest_irq clobber. */
asm(".pushsection .text\n"
    ".balign 16\n"
    "gisr_stubs:\n"
    ".set gvec, 0x50\n"
    ".rept 16\n"
    "  .balign 16\n"
    "  push %rdi\n  mov $gvec, %edi\n  jmp gisr_common\n"
    "  .set gvec, gvec + 1\n"
    ".endr\n"
    "gisr_common:\n"
    "  push %rax\n  push %rcx\n  push %rdx\n  push %rsi\n"
    "  push %r8\n  push %r9\n  push %r10\n  push %r11\n"
    "  call guest_irq\n"
    "  pop %r11\n  pop %r10\n  pop %r9\n  pop %r8\n"
    "  pop %rsi\n  pop %rdx\n  pop %rcx\n  pop %rax\n  pop %rdi\n"
    "  iretq\n"
    ".popsection\n");
extern char gisr_stubs[];

static inline void g_send(uint32_t dest, uint32_t icrl)
{
    if (x2) {
        wrmsr(0x830, (uint64_t)(dest == 0xFF ? 0xFFFFFFFFu : dest) << 32 | icrl);
        return;
    }
    GAPIC(LAPIC_ICR_HI) = dest << 24;
    GAPIC(LAPIC_ICR_LO) = icrl;
}

static inline void g_hypercall(uint64_t op, uint64_t a, uint64_t b)
{
    asm volatile("vmmcall" : "+a"(op) : "b"(a), "c"(b) : "memory");
}

static inline void g_hlt(void) { asm volatile("hlt" ::: "memory"); }

static void g_until(volatile uint32_t *p, uint32_t at_least)
{
    while (*p < at_least)
        pause();
}

static void guest_a0(void)
{
    struct vcpu *me = &vcpus[0], *a1 = &vcpus[1], *b2 = &vcpus[2];
    sti();
    g_until(&a1->step, 1);                       /* A1 is running */
    me->step = 1;
    g_send(1, 0x50);                             /* 1: to a running target */
    g_until(&me->got[0x51], 1);                  /* A1's answer, also exit-free */
    me->step = 2;
    g_hypercall(HC_WAIT_HALTED, 1, 0);
    me->step = 3;
    g_send(1, 0x52);                             /* 2: A1 halted: exit */
    g_until(&a1->got[0x52], 1);
    g_until(&a1->step, 5);                       /* A1 runs, waiting for 53h */
    me->step = 4;
    g_hypercall(HC_POST, 1, 0x53);               /* 3: the host's doorbell */
    g_until(&a1->got[0x53], 1);
    me->step = 5;
    g_hlt();                                     /* 4: A1's IPI 57h wakes us */
    g_until(&me->got[0x57], 1);
    me->step = 6;
    g_hypercall(HC_WAIT_HALTED, 1, 0);
    g_hypercall(HC_START, 2, 0);                 /* 5: VM B's vCPU on CPU 1 */
    g_until(&b2->step, 1);
    me->step = 7;
    g_send(2, 0x54);                             /* ID 2 is not VM A's */
    me->step = 8;
    g_send(0, ICR_ALL_BUT_SELF | 0x55);
    me->step = 9;
    g_send(0xFF, 0x56);                          /* broadcast, self included */
    g_until(&me->got[0x56], 1);
    me->step = 10;
    stop_b = 1;
    g_until(&b2->done, 1);
    g_until(&a1->got[0x56], 1);
    g_hypercall(HC_DONE, 0, 0);
}

static void guest_a1(void)
{
    struct vcpu *me = &vcpus[1];
    sti();
    me->step = 1;
    g_until(&me->got[0x50], 1);
    me->step = 2;
    g_send(0, 0x51);                             /* A0 is running: no exit */
    me->step = 3;
    g_hlt();                                     /* woken by A0's 52h */
    g_until(&me->got[0x52], 1);
    me->step = 5;
    g_until(&me->got[0x53], 1);                  /* posted by the host */
    me->step = 6;
    g_hypercall(HC_WAIT_HALTED, 0, 0);
    g_send(0, 0x57);                             /* A0 halted: exit */
    me->step = 7;
    g_hlt();                                     /* woken by A0's 55h */
    g_until(&me->got[0x55], 1);
    g_until(&me->got[0x56], 1);
    me->step = 8;
    g_hypercall(HC_DONE, 0, 0);
}

static void guest_b2(void)
{
    struct vcpu *me = &vcpus[2];
    sti();
    me->step = 1;
    while (!stop_b)
        pause();
    me->step = 2;
    g_hypercall(HC_DONE, 0, 0);
}

/* ================================================================ the hypervisor */

static void kick_handler(struct trap_frame *f)
{
    kicks[lapic_id() % NCPU]++;
    lapic_eoi();
}

static void leak_handler(struct trap_frame *f)
{
    host_leaks[lapic_id() % NCPU]++;
    lapic_eoi();
}

static bool irr_pending(struct vcpu *v)
{
    for (int i = 0; i < 8; i++)
        if (v->backing[(LAPIC_IRR + 0x10 * i) / 4])
            return true;
    return false;
}

/* Make v runnable; if its CPU is idle (in HLT), wake it with a host IPI.
 * The fences order "runnable" against "idle" on both sides. */
static void wake(struct vcpu *v)
{
    v->halted = 0;
    v->runnable = 1;
    mfence();
    if (idle[v->cpu])
        lapic_send_ipi(v->cpu, KICK_VECTOR);
}

static struct vcpu *vcpu_at(volatile uint64_t *table, uint32_t index)
{
    for (int i = 0; i < NVCPU; i++)
        if (vcpus[i].table == table && (uint32_t)vcpus[i].id == index)
            return &vcpus[i];
    return NULL;
}

static void log_exit(struct vcpu *v, uint64_t code)
{
    if (v->nlog < MAX_LOG) {
        struct exit_rec *r = &v->log[v->nlog++];
        r->step = v->step;
        r->code = code;
        r->info1 = VMCB_U64(v->vmcb, VMCB_EXITINFO1);
        r->info2 = VMCB_U64(v->vmcb, VMCB_EXITINFO2);
        r->rax = VMCB_U64(v->vmcb, VMCB_RAX);
    }
}

/* 15.29.9.1: the IRR bits are already set in every valid target's backing
 * page; the hypervisor only has to get the ones that are not running
 * scheduled.  A broadcast names one of them: wake every other vCPU of the
 * VM that has something pending. */
static void incomplete_ipi(struct vcpu *v)
{
    uint64_t icr = VMCB_U64(v->vmcb, VMCB_EXITINFO1), info2 = VMCB_U64(v->vmcb, VMCB_EXITINFO2);
    uint32_t cause = (uint32_t)(info2 >> 32), index = (uint32_t)(info2 & 0xFFF);
    bool broadcast = ((icr >> 18) & 3) >= 2 ||
                     (x2 ? (icr >> 32) == 0xFFFFFFFF : (icr >> 56) == 0xFF);
    if (cause != 1)
        return;                      /* invalid type/target/vector: dropped, as on APIC errors */
    for (int i = 0; i < NVCPU; i++) {
        struct vcpu *t = &vcpus[i];
        if (t == v || t->table != v->table || t->done)
            continue;
        if ((broadcast && irr_pending(t)) || (!broadcast && (uint32_t)t->id == index))
            if (!(t->table[t->id] & AVIC_PHYS_RUNNING))
                wake(t);
    }
}

static void hypercall(struct vcpu *v)
{
    uint64_t op = VMCB_U64(v->vmcb, VMCB_RAX);
    struct vcpu *t = v->gprs.rbx < NVCPU ? &vcpus[v->gprs.rbx] : NULL;
    switch (op) {
    case HC_DONE:
        v->done = 1;
        v->runnable = 0;
        break;
    case HC_WAIT_HALTED:
        while (t && !t->halted)
            pause();
        break;
    case HC_POST:
        /* What an IOMMU does for a device interrupt (15.29.6.2): set the
         * IRR bit, then ring the doorbell of the core the target runs on,
         * or let it be picked up at its next VMRUN. */
        if (!t)
            break;
        asm volatile("lock btsl %1, %0"
                     : "+m"(t->backing[(LAPIC_IRR + 0x10 * (v->gprs.rcx / 32)) / 4])
                     : "r"((uint32_t)(v->gprs.rcx % 32)) : "memory");
        mfence();
        uint64_t e = t->table[t->id];
        if (e & AVIC_PHYS_RUNNING) {
            wrmsr(MSR_AVIC_DOORBELL, e & 0xFF);
            doorbells++;
        } else {
            wake(t);
            post_wakes++;
        }
        break;
    case HC_START:
        if (t)
            wake(t);
        break;
    }
}

static void run_vcpu(struct vcpu *v, uint32_t host_id)
{
    volatile uint64_t *entry = &v->table[v->id];
    *entry = (*entry & ~0xFFul) | host_id | AVIC_PHYS_RUNNING;
    svm_clgi();
    svm_run_guest(v->vmcb, &v->gprs);
    svm_stgi();
    *entry &= ~AVIC_PHYS_RUNNING;
    mfence();
    uint64_t code = VMCB_U64(v->vmcb, VMCB_EXITCODE);
    if (code == SVM_EXIT_INTR) {     /* a host kick arrived while the guest ran */
        v->intr_exits++;
        sti();
        asm volatile("nop");
        cli();
        return;
    }
    log_exit(v, code);
    switch (code) {
    case SVM_EXIT_HLT:
        skip_insn(v);
        v->runnable = 0;
        mfence();
        if (irr_pending(v))          /* an IPI raced with the exit: do not sleep */
            v->runnable = 1;
        else
            v->halted = 1;
        break;
    case SVM_EXIT_VMMCALL:
        skip_insn(v);
        hypercall(v);
        break;
    case SVM_EXIT_AVIC_INCOMPLETE_IPI:   /* trap: RIP is past the ICR write */
        incomplete_ipi(v);
        break;
    default:                         /* unexpected (AVIC_NOACCEL, a fault, ...) */
        v->done = 1;
        v->runnable = 0;
        break;
    }
}

static bool any_runnable(int cpu)
{
    for (int i = 0; i < NVCPU; i++)
        if (vcpus[i].cpu == cpu && vcpus[i].runnable && !vcpus[i].done)
            return true;
    return false;
}

/* Run this CPU's vCPUs until all of them are done; sleep in HLT when none
 * is runnable. */
static void host_loop(int cpu)
{
    uint32_t host_id = lapic_id();
    cli();
    for (;;) {
        bool all_done = true;
        struct vcpu *pick = NULL;
        for (int i = 0; i < NVCPU; i++) {
            struct vcpu *v = &vcpus[i];
            if (v->cpu != cpu || v->done)
                continue;
            all_done = false;
            if (v->runnable && !pick)
                pick = v;
        }
        if (all_done)
            break;
        if (pick) {
            run_vcpu(pick, host_id);
            continue;
        }
        idle[cpu] = 1;
        mfence();
        if (!any_runnable(cpu))
            sti_hlt_cli();
        idle[cpu] = 0;
    }
    for (int v = GVEC_FIRST; v < GVEC_FIRST + GVEC_COUNT; v++)
        if (lapic_vector_bit(LAPIC_IRR, v) || lapic_vector_bit(LAPIC_ISR, v))
            host_apic_hits[cpu]++;
    cpu_finished[cpu] = 1;
}

/* ================================================================ setup */

static void nested_init(void)
{
    npml4[0] = (uint64_t)npdpt | 7;
    for (uint64_t g = 0; g < 4; g++) {
        npdpt[g] = (uint64_t)npd[g] | 7;
        for (uint64_t i = 0; i < 512; i++)
            npd[g][i] = (g << 30) | (i << 21) | 7 | 0x80;   /* P RW US PS */
    }
}

static void vcpu_init(int i, const char *name, int id, int cpu, int asid, volatile uint64_t *table,
                      uint32_t max_index, void *logical, void (*entry)(void))
{
    struct vcpu *v = &vcpus[i];
    v->name = name, v->id = id, v->cpu = cpu, v->asid = asid, v->table = table;
    v->max_index = max_index, v->logical = logical, v->entry = entry;
    v->vmcb = vmcbs[i];
    v->backing = backings[i];
    v->stack_top = gstacks[i] + sizeof(gstacks[i]);
    /* The backing page: the guest's APIC at reset, software-enabled
     * (APM vol 2, 16.3: ID, version, DFR flat, SVR). */
    v->backing[LAPIC_ID / 4] = x2 ? (uint32_t)id : (uint32_t)id << 24;   /* x2APIC: 32-bit ID */
    v->backing[LAPIC_VER / 4] = 0x80050010;
    v->backing[0xE0 / 4] = 0xFFFFFFFF;
    v->backing[LAPIC_SVR / 4] = 0x100 | SPURIOUS_VECTOR;
    table[id] = AVIC_PHYS_VALID | (uint64_t)v->backing | (uint64_t)cpu;

    uint8_t *vmcb = v->vmcb;
    vmcb_init(vmcb, iopm, msrpm);
    VMCB_U32(vmcb, VMCB_GUEST_ASID) = asid;
    vmcb_guest_long(vmcb, (uint64_t)entry, (uint64_t)v->stack_top, gidt, sizeof(gidt) - 1);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_INTR | INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN | INTERCEPT_VMMCALL;
    VMCB_U64(vmcb, VMCB_NP_CONTROL) = 1;
    VMCB_U64(vmcb, VMCB_N_CR3) = (uint64_t)npml4;
    VMCB_U32(vmcb, VMCB_V_INTR) = V_INTR_MASKING | AVIC_ENABLE | (x2 ? X2AVIC_ENABLE : 0);
    VMCB_U64(vmcb, VMCB_AVIC_APIC_BAR) = LAPIC_BASE;
    VMCB_U64(vmcb, VMCB_AVIC_BACKING) = (uint64_t)v->backing;
    VMCB_U64(vmcb, VMCB_AVIC_LOGICAL) = (uint64_t)logical;
    VMCB_U64(vmcb, VMCB_AVIC_PHYSICAL) = (uint64_t)table | max_index;
}

static void ap_entry(int apic_id)
{
    if (svm_enable(hsave[1]))
        return;
    host_loop(1);
}

/* ================================================================ report */

static const char *const causes[] = {
    "invalid interrupt type", "IPI target not running", "invalid IPI target",
    "invalid backing page pointer", "invalid IPI vector",
};
static const char *const hc_names[] = {"DONE", "WAIT_HALTED", "POST", "START"};

static void print_log(struct vcpu *v)
{
    kprintf("%s exits:\n", v->name);
    for (uint32_t i = 0; i < v->nlog; i++) {
        struct exit_rec *r = &v->log[i];
        kprintf("  step %u: %s", r->step, svm_exit_name(r->code));
        if (r->code == SVM_EXIT_AVIC_INCOMPLETE_IPI) {
            uint32_t id = (uint32_t)(r->info2 >> 32);
            kprintf(" ICR %08lx:%08lx, ID %u (%s), index %lu", r->info1 >> 32,
                    r->info1 & 0xFFFFFFFF, id, id < 5 ? causes[id] : "?", r->info2 & 0xFFF);
        } else if (r->code == SVM_EXIT_VMMCALL) {
            kprintf(" %s", r->rax < 4 ? hc_names[r->rax] : "?");
        } else if (r->code != SVM_EXIT_HLT) {
            kprintf(" info1 0x%lx info2 0x%lx", r->info1, r->info2);
        }
        kprintf("\n");
    }
}

static void print_got(struct vcpu *v)
{
    kprintf("%s took:", v->name);
    bool any = false;
    for (int vec = GVEC_FIRST; vec < GVEC_FIRST + GVEC_COUNT; vec++)
        if (v->got[vec]) {
            kprintf(" %x", vec);
            if (v->got[vec] != 1)
                kprintf("(x%u)", v->got[vec]);
            any = true;
        }
    kprintf(any ? "\n" : " nothing\n");
}

static int count_exits(struct vcpu *v, uint64_t code, uint32_t step)
{
    int n = 0;
    for (uint32_t i = 0; i < v->nlog; i++)
        if (v->log[i].code == code && v->log[i].step == step)
            n++;
    return n;
}

static bool has_ipi_exit(struct vcpu *v, uint32_t step, uint32_t vector, uint32_t id, uint32_t index)
{
    for (uint32_t i = 0; i < v->nlog; i++) {
        struct exit_rec *r = &v->log[i];
        if (r->code == SVM_EXIT_AVIC_INCOMPLETE_IPI && r->step == step &&
            (r->info1 & 0xFF) == vector && (r->info2 >> 32) == id && (r->info2 & 0xFFF) == index)
            return true;
    }
    return false;
}

int kmain(uint32_t magic, uint32_t mbi)
{
    struct svm_info info;
    svm_cpuid(&info);
    kputs("svm_avic: start");
    if (!info.svm || !(info.features & SVM_FEAT_NP)) {
        kputs("svm_avic: needs SVM with nested paging");
        return 1;
    }
    have_nrips = (info.features & SVM_FEAT_NRIPS) != 0;
    if (!(info.features & SVM_FEAT_AVIC)) {
        kputs("svm_avic: CPUID 8000_000A EDX[AVIC] = 0");
        return 1;
    }
    uint64_t want_x2 = 0;
    cmdline_u64("x2avic", &want_x2);
    if (want_x2 && !(info.features & SVM_FEAT_X2AVIC)) {
        kputs("svm_avic: CPUID 8000_000A EDX[x2AVIC] = 0");
        return 1;
    }
    x2 = want_x2 != 0;
    uint32_t ncpus = fw_cfg_ncpus();
    if (ncpus < NCPU) {
        kprintf("svm_avic: needs %d CPUs (--smp %d), the machine has %u\n", NCPU, NCPU, ncpus);
        return 1;
    }
    const char *err = svm_enable(hsave[0]);
    if (err) {
        kprintf("svm_avic: %s\n", err);
        return 1;
    }
    lapic_enable();
    set_handler(KICK_VECTOR, kick_handler);
    for (int vec = GVEC_FIRST; vec < GVEC_FIRST + GVEC_COUNT; vec++) {
        set_handler(vec, leak_handler);
        svm_idt_gate64(gidt, vec, gisr_stubs + 16 * (vec - GVEC_FIRST), true, 0);
    }
    nested_init();
    vcpu_init(0, "A0", 0, 0, 1, phys_a, 1, logical_a, guest_a0);
    vcpu_init(1, "A1", 1, 1, 1, phys_a, 1, logical_a, guest_a1);
    vcpu_init(2, "B2", 2, 1, 2, phys_b, 2, logical_b, guest_b2);
    vcpus[0].runnable = vcpus[1].runnable = 1;
    kprintf("svm_avic: %s; VM A = A0 on CPU 0, A1 on CPU 1; VM B = B2 on CPU 1\n",
            x2 ? "x2AVIC, x2APIC MSRs" : "xAVIC, the APIC page");

    ap_main = ap_entry;
    if (!start_ap(1)) {
        kputs("svm_avic: AP 1 did not start");
        return 1;
    }
    host_loop(0);
    for (int ms = 0; ms < 2000 && !cpu_finished[1]; ms++)
        delay_us(1000);
    check(cpu_finished[1], "CPU 1 finished its vCPUs");

    struct vcpu *a0 = &vcpus[0], *a1 = &vcpus[1], *b2 = &vcpus[2];
    for (int i = 0; i < NVCPU; i++)
        print_log(&vcpus[i]);
    for (int i = 0; i < NVCPU; i++)
        print_got(&vcpus[i]);

    bool p1 = a1->got[0x50] == 1 && a0->got[0x51] == 1 && a0->nlog && a0->log[0].step == 2 &&
              a1->nlog && a1->log[0].step == 3 && a1->log[0].code == SVM_EXIT_HLT;
    kprintf("1. A0 -> A1 50h and A1 -> A0 51h while both run: %s\n",
            p1 ? "delivered, no #VMEXIT" : "FAILED");
    check(p1, "IPIs between running vCPUs without exits");

    bool p2 = has_ipi_exit(a0, 3, 0x52, 1, 1) && a1->got[0x52] == 1;
    kprintf("2. A0 -> halted A1 52h: %s\n",
            p2 ? "AVIC_INCOMPLETE_IPI (target not running), A1 woken, took it" : "FAILED");
    check(p2, "IPI to a halted vCPU");

    bool p3 = a1->got[0x53] == 1 && a1->nlog >= 2 && a1->log[1].step == 6 && doorbells == 1 &&
              !post_wakes;
    kprintf("3. host posts 53h to running A1 (IRR bit, doorbell MSR to CPU 1): %s\n",
            p3 ? "taken, no #VMEXIT" : "FAILED");
    check(p3, "doorbell");

    bool p4 = has_ipi_exit(a1, 6, 0x57, 1, 0) && a0->got[0x57] == 1 &&
              count_exits(a0, SVM_EXIT_HLT, 5) == 1;
    kprintf("4. A1 -> halted A0 57h: %s\n",
            p4 ? "AVIC_INCOMPLETE_IPI (target not running), A0 woken, took it" : "FAILED");
    check(p4, "IPI to a halted vCPU, the other way");

    bool nothing_b = true;
    for (int vec = 0; vec < 256; vec++)
        nothing_b = nothing_b && !b2->got[vec];
    for (int i = 0; i < 8; i++)
        nothing_b = nothing_b && !b2->backing[(LAPIC_IRR + 0x10 * i) / 4] &&
                    !b2->backing[(LAPIC_ISR + 0x10 * i) / 4];
    bool p5 = has_ipi_exit(a0, 7, 0x54, 2, 2) && has_ipi_exit(a0, 8, 0x55, 1, 1) &&
              has_ipi_exit(a0, 9, 0x56, 1, 1) && a0->got[0x56] == 1 && a1->got[0x55] == 1 &&
              a1->got[0x56] == 1 && !a0->got[0x54] && !a1->got[0x54] && !a0->got[0x55];
    kprintf("5. A0 -> ID 2, all-but-self, broadcast while B2 runs: %s\n",
            p5 ? "ID 2 invalid in VM A; A's vCPUs took 55h/56h" : "FAILED");
    kprintf("   VM B's vCPU: %s\n", nothing_b ? "nothing in its IRR, ISR or handlers" : "REACHED");
    check(p5, "isolation: VM A's IPIs");
    check(nothing_b, "isolation: VM B untouched");

    uint32_t leaks = host_leaks[0] + host_leaks[1] + host_apic_hits[0] + host_apic_hits[1];
    kprintf("   host CPUs: %s\n", leaks ? "REACHED" : "no guest vector in their APICs or handlers");
    check(!leaks, "isolation: the hosts untouched");
    kprintf("svm_avic: %s\n", fails ? "FAIL" : "PASS");
    return fails;
}
