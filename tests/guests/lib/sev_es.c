/*
 * sev_es.c - the runtime as an SEV-ES guest: GHCB protocol negotiation, the
 * #VC handler and its GHCB client, AP start and park.  See sev.h.
 *
 * Sources: APM vol 2, 15.35 (#VC, VMGEXIT, the GHCB MSR); AMD pub. 56421
 * "SEV-ES Guest-Hypervisor Communication Block Standardization" (MSR
 * protocol, NAE events and which registers each one exchanges).  Every
 * value the hypervisor returns is copied out of the shared page and checked
 * for its valid bit before use: the GHCB is hypervisor-writable memory.
 */
#include "sev.h"

#define GHCBS_PER_CPU 2              /* a #VC during a request uses the backup */
#define DEBUG_EXIT_PORT 0xF4

uint32_t sev_status, sev_cbit, sev_cbit_hi;   /* written by boot64.S (sev_detect) */
uint16_t ghcb_protocol;
uint64_t ghcb_hv_features;
volatile bool sev_es_park_with_msr_protocol;
volatile uint64_t sev_es_last_vc;    /* the error code of the latest #VC (for tests) */
volatile uint32_t sev_es_vc_count;

/* Shared with the hypervisor: boot64.S maps .bss.shared with the C-bit clear. */
static struct ghcb ghcb_pages[MAX_CPUS][GHCBS_PER_CPU] __attribute__((section(".bss.shared")));
static bool ghcb_busy[MAX_CPUS][GHCBS_PER_CPU];   /* private: the hypervisor cannot see it */
static uint64_t ghcb_saved_flags[MAX_CPUS][GHCBS_PER_CPU];

void isr_dispatch(struct trap_frame *f);

/* ================================================================ MSR protocol */

static inline uint64_t irq_save(void)
{
    uint64_t flags;
    asm volatile("pushfq; pop %0; cli" : "=r"(flags) : : "memory");
    return flags;
}

static inline void irq_restore(uint64_t flags)
{
    if (flags & (1u << 9))
        sti();
}

uint64_t ghcb_msr_protocol(uint64_t request)
{
    uint64_t flags = irq_save();
    uint64_t saved = rdmsr(MSR_GHCB);
    wrmsr(MSR_GHCB, request);
    vmgexit();
    uint64_t response = rdmsr(MSR_GHCB);
    wrmsr(MSR_GHCB, saved);
    irq_restore(flags);
    return response;
}

void sev_es_terminate(unsigned reason_set, unsigned reason)
{
    cli();
    for (;;) {
        wrmsr(MSR_GHCB, GHCB_TERM_REQ(reason_set, reason));
        vmgexit();
        asm volatile("hlt");
    }
}

/* CPUID before this CPU has a GHCB: one register per MSR-protocol request
 * (no sub-leaf: ECX is not passed, as the protocol defines). */
static void cpuid_msr_protocol(struct trap_frame *f)
{
    uint64_t *out[4] = {&f->rax, &f->rbx, &f->rcx, &f->rdx};
    uint32_t fn = (uint32_t)f->rax;
    for (int reg = 0; reg < 4; reg++) {
        uint64_t r = ghcb_msr_protocol(GHCB_CPUID_REQ(fn, reg));
        if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_CPUID_RESP)
            sev_es_terminate(0, GHCB_TERM_GENERAL);
        *out[reg] = r >> 32;
    }
    f->rip += 2;
}

/* ================================================================ GHCB pages */

uint64_t ghcb_gpa(const struct ghcb *g)
{
    return (uint64_t)g;              /* identity mapped; shared pages carry no C-bit */
}

/* This CPU's index: its primary GHCB's GPA is in the GHCB MSR (or, inside
 * a nested request, its backup's); -1 before sev_es_init_*. */
static int ghcb_cpu(void)
{
    uint64_t msr = rdmsr(MSR_GHCB), base = (uint64_t)ghcb_pages;
    if (msr & GHCB_MSR_INFO_MASK || msr < base || msr >= base + sizeof(ghcb_pages))
        return -1;
    return (int)((msr - base) / (GHCBS_PER_CPU * sizeof(struct ghcb)));
}

struct ghcb *ghcb_get(void)
{
    uint64_t flags = irq_save();
    int cpu = ghcb_cpu();
    if (cpu < 0)
        sev_es_terminate(0, GHCB_TERM_GENERAL);
    for (int i = 0; i < GHCBS_PER_CPU; i++) {
        if (!ghcb_busy[cpu][i]) {
            ghcb_busy[cpu][i] = true;
            ghcb_saved_flags[cpu][i] = flags;
            return &ghcb_pages[cpu][i];
        }
    }
    sev_es_terminate(0, GHCB_TERM_GENERAL);   /* a #VC inside a #VC inside a request */
}

void ghcb_put(struct ghcb *g)
{
    int cpu = (int)((g - &ghcb_pages[0][0]) / GHCBS_PER_CPU);
    int i = (int)((g - &ghcb_pages[0][0]) % GHCBS_PER_CPU);
    ghcb_busy[cpu][i] = false;
    wrmsr(MSR_GHCB, ghcb_gpa(&ghcb_pages[cpu][0]));
    irq_restore(ghcb_saved_flags[cpu][i]);
}

int ghcb_call(struct ghcb *g, uint64_t exit_code, uint64_t info1, uint64_t info2)
{
    GHCB_SET(g, sw_exit_code, exit_code);
    GHCB_SET(g, sw_exit_info_1, info1);
    GHCB_SET(g, sw_exit_info_2, info2);
    g->protocol_version = ghcb_protocol;
    g->usage = 0;                    /* the standard GHCB format */
    wrmsr(MSR_GHCB, ghcb_gpa(g));
    vmgexit();
    return (int)(uint32_t)g->sw_exit_info_1;
}

/* A fresh request: nothing valid from an earlier one. */
static void ghcb_clear(struct ghcb *g)
{
    g->valid_bitmap[0] = g->valid_bitmap[1] = 0;
    g->sw_exit_code = 0;
}

/* ================================================================ set-up */

static void ghcb_init_cpu(int cpu)
{
    /* The pages read as ciphertext of the zeros boot64.S wrote through the
     * private mapping: clear them through the shared one. */
    memset(ghcb_pages[cpu], 0, sizeof(ghcb_pages[cpu]));
    if (sev_snp_active()) {
        /* An SEV-SNP guest registers its GHCB before it uses it (GHCB spec
         * 2.3.2, MSR protocol 012h): the answer names the same GFN. */
        uint64_t gfn = ghcb_gpa(&ghcb_pages[cpu][0]) >> 12;
        uint64_t r = ghcb_msr_protocol(gfn << 12 | GHCB_MSR_REG_GPA_REQ);
        if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_REG_GPA_RESP || r >> 12 != gfn)
            sev_es_terminate(0, GHCB_TERM_GENERAL);
    }
    wrmsr(MSR_GHCB, ghcb_gpa(&ghcb_pages[cpu][0]));
}

static void vc_handler(struct trap_frame *f);

void sev_es_init_bsp(void)
{
    if (!sev_es_active())
        return;
    set_handler(29, vc_handler);
    uint64_t info = ghcb_msr_protocol(GHCB_MSR_SEV_INFO_REQ);
    uint32_t vmax = info >> 48, vmin = (info >> 32) & 0xFFFF, cbit = (info >> 24) & 0xFF;
    if ((info & GHCB_MSR_INFO_MASK) != GHCB_MSR_SEV_INFO_RESP ||
        vmax < GHCB_PROTOCOL_MIN || vmin > GHCB_PROTOCOL_MAX)
        sev_es_terminate(0, GHCB_TERM_PROTOCOL_UNSUPPORTED);
    if (cbit != sev_cbit)            /* the hypervisor's C-bit is not the CPU's */
        sev_es_terminate(0, GHCB_TERM_GENERAL);
    ghcb_protocol = vmax < GHCB_PROTOCOL_MAX ? vmax : GHCB_PROTOCOL_MAX;
    if (ghcb_protocol >= 2) {
        uint64_t r = ghcb_msr_protocol(GHCB_MSR_HV_FEATURES_REQ);
        if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_HV_FEATURES_RESP)
            sev_es_terminate(0, GHCB_TERM_GENERAL);
        ghcb_hv_features = r >> 12;
    }
    if (sev_snp_active())
        sev_snp_init_bsp();
    ghcb_init_cpu(0);
    /* As a firmware does: tell the hypervisor where the AP jump table is, so
     * the OS part (start_ap) finds it with a GET. */
    if (sev_es_set_ap_jump_table((uint64_t)sev_es_ap_jump_table))
        sev_es_terminate(0, GHCB_TERM_GENERAL);
}

void sev_es_init_ap(uint32_t apic_id)
{
    if (sev_es_active())
        ghcb_init_cpu(apic_id % MAX_CPUS);
}

/* ================================================================ instruction decoding */

struct insn {
    const uint8_t *start, *p;
    bool opsize, adsize, rep;
    int seg;                         /* 0 ES .. 5 GS, the IOIO EXITINFO1 encoding */
    uint8_t rex, op;
    bool twobyte;
};

static void decode(struct insn *in, uint64_t rip)
{
    memset(in, 0, sizeof(*in));
    in->start = in->p = (const uint8_t *)rip;
    in->seg = 3;                     /* DS */
    for (;; in->p++) {
        uint8_t b = *in->p;
        if (b == 0x66)
            in->opsize = true;
        else if (b == 0x67)
            in->adsize = true;
        else if (b == 0xF3 || b == 0xF2)
            in->rep = true;
        else if (b == 0x26 || b == 0x2E || b == 0x36 || b == 0x3E)
            in->seg = (b >> 3) & 3;  /* 26 ES, 2E CS, 36 SS, 3E DS */
        else if (b == 0x64 || b == 0x65)
            in->seg = b - 0x60;      /* FS 4, GS 5 */
        else
            break;
    }
    if ((*in->p & 0xF0) == 0x40)
        in->rex = *in->p++;
    in->op = *in->p++;
    if (in->op == 0x0F) {
        in->twobyte = true;
        in->op = *in->p++;
    }
}

static uint64_t *gpr(struct trap_frame *f, int n)
{
    uint64_t *low[8] = {&f->rax, &f->rcx, &f->rdx, &f->rbx, &f->rsp, &f->rbp, &f->rsi, &f->rdi};
    uint64_t *high[8] = {&f->r8, &f->r9, &f->r10, &f->r11, &f->r12, &f->r13, &f->r14, &f->r15};
    return n < 8 ? low[n] : high[n - 8];
}

/* Register operand n of `size` bytes (AH..BH for 4-7 without REX). */
static uint64_t reg_read(struct trap_frame *f, const struct insn *in, int n, int size)
{
    if (size == 1 && !in->rex && n >= 4 && n < 8)
        return (*gpr(f, n - 4) >> 8) & 0xFF;
    return size == 8 ? *gpr(f, n) : *gpr(f, n) & ((1ul << (8 * size)) - 1);
}

static void reg_write(struct trap_frame *f, const struct insn *in, int n, int size, uint64_t v)
{
    uint64_t *r;
    if (size == 1 && !in->rex && n >= 4 && n < 8) {
        r = gpr(f, n - 4);
        *r = (*r & ~0xFF00ul) | (v & 0xFF) << 8;
    } else if (size >= 4) {
        *gpr(f, n) = size == 8 ? v : v & 0xFFFFFFFF;   /* 32-bit writes zero-extend */
    } else {
        r = gpr(f, n);
        uint64_t mask = (1ul << (8 * size)) - 1;
        *r = (*r & ~mask) | (v & mask);
    }
}

/* The memory operand of a ModRM instruction: its linear address (the RIP-
 * relative form is finished by the caller once the length is known). */
static uint64_t modrm_mem(struct trap_frame *f, struct insn *in, int *reg, bool *rip_rel)
{
    uint8_t m = *in->p++;
    int mod = m >> 6, rm = m & 7;
    uint64_t a = 0;
    *reg = ((m >> 3) & 7) | (in->rex & 4 ? 8 : 0);
    *rip_rel = false;
    if (mod == 3)
        sev_es_terminate(0, GHCB_TERM_GENERAL);     /* a register operand cannot fault */
    if (rm == 4) {
        uint8_t sib = *in->p++;
        int index = ((sib >> 3) & 7) | (in->rex & 2 ? 8 : 0), base = sib & 7;
        if (index != 4)
            a += *gpr(f, index) << (sib >> 6);
        if (base == 5 && mod == 0) {
            a += (int64_t)*(const int32_t *)in->p;
            in->p += 4;
        } else {
            a += *gpr(f, base | (in->rex & 1 ? 8 : 0));
        }
    } else if (rm == 5 && mod == 0) {
        a = (int64_t)*(const int32_t *)in->p;
        in->p += 4;
        *rip_rel = true;
    } else {
        a = *gpr(f, rm | (in->rex & 1 ? 8 : 0));
    }
    if (mod == 1)
        a += (int64_t)*(const int8_t *)in->p++;
    else if (mod == 2) {
        a += (int64_t)*(const int32_t *)in->p;
        in->p += 4;
    }
    return in->adsize ? a & 0xFFFFFFFF : a;
}

static int insn_len(const struct insn *in)
{
    return (int)(in->p - in->start);
}

/* ================================================================ the NAE events */

/* The hypervisor's answer, or what the guest does when it is not usable:
 * an exception it asked for is raised at the instruction; a malformed-input
 * reply or anything else ends the guest. */
static bool vc_response(struct trap_frame *f, struct ghcb *g, int resp)
{
    if (resp == GHCB_RESP_OK)
        return true;
    if (resp == GHCB_RESP_ISSUE_EXCEPTION && GHCB_IS_VALID(g, sw_exit_info_2)) {
        uint64_t ev = g->sw_exit_info_2;
        if ((ev & (1u << 31)) && ((ev >> 8) & 7) == 3) {   /* valid, exception */
            ghcb_put(g);
            f->vector = ev & 0xFF;
            f->error = (ev & (1u << 11)) ? ev >> 32 : 0;
            isr_dispatch(f);
            return false;
        }
    }
    sev_es_terminate(0, GHCB_TERM_GENERAL);
}

static void need(bool valid)
{
    if (!valid)                      /* the hypervisor left out a result */
        sev_es_terminate(0, GHCB_TERM_GENERAL);
}

static uint64_t guest_xcr0(void)
{
    uint32_t lo, hi;
    if (!(read_cr4() & (1ul << 18)))        /* CR4.OSXSAVE clear: XCR0 is its reset value */
        return 1;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* An SEV-SNP guest's CPUID comes from its CPUID page; only the initial
 * APIC ID (leaf 1 EBX[31:24]), which differs per vCPU, is the hypervisor's
 * (as Linux snp_cpuid_postprocess takes it). */
static bool vc_cpuid_snp(struct trap_frame *f, struct ghcb *g, struct insn *in)
{
    uint32_t r[4], leaf = (uint32_t)f->rax, sub = (uint32_t)f->rcx;
    uint32_t apic = 0;
    if (leaf == 1) {
        GHCB_SET(g, rax, 1);
        GHCB_SET(g, rcx, 0);
        if (!vc_response(f, g, ghcb_call(g, SVM_EXIT_CPUID, 0, 0)))
            return false;
        need(GHCB_IS_VALID(g, rbx));
        apic = (uint32_t)g->rbx & 0xFF000000u;
    }
    snp_cpuid(leaf, sub, r);
    if (leaf == 1)
        r[1] = (r[1] & 0x00FFFFFFu) | apic;
    f->rax = r[0];
    f->rbx = r[1];
    f->rcx = r[2];
    f->rdx = r[3];
    return true;
}

static bool vc_cpuid(struct trap_frame *f, struct ghcb *g, struct insn *in)
{
    if (sev_snp_active())
        return vc_cpuid_snp(f, g, in);
    GHCB_SET(g, rax, (uint32_t)f->rax);
    GHCB_SET(g, rcx, (uint32_t)f->rcx);
    if ((uint32_t)f->rax == 0xD)            /* XSAVE sizes depend on XCR0 */
        GHCB_SET(g, xcr0, guest_xcr0());
    if (!vc_response(f, g, ghcb_call(g, SVM_EXIT_CPUID, 0, 0)))
        return false;
    need(GHCB_IS_VALID(g, rax) && GHCB_IS_VALID(g, rbx) && GHCB_IS_VALID(g, rcx) &&
            GHCB_IS_VALID(g, rdx));
    f->rax = (uint32_t)g->rax;
    f->rbx = (uint32_t)g->rbx;
    f->rcx = (uint32_t)g->rcx;
    f->rdx = (uint32_t)g->rdx;
    return true;
}

/* IN/OUT and INS/OUTS (APM vol 2, 15.10.2 gives EXITINFO1); string forms
 * move their data through the GHCB's shared buffer (sw_scratch), in chunks. */
static bool vc_ioio(struct trap_frame *f, struct ghcb *g, struct insn *in)
{
    uint8_t op = in->op;
    bool string = op >= 0x6C && op <= 0x6F, is_in;
    int size = (op & 1) ? (in->opsize ? 2 : 4) : 1;
    uint32_t port;
    if (in->twobyte)
        sev_es_terminate(0, GHCB_TERM_GENERAL);
    if (op >= 0xE4 && op <= 0xE7) {          /* IN/OUT with an imm8 port */
        port = *in->p++;
        is_in = !(op & 2);
    } else if (op >= 0xEC && op <= 0xEF) {   /* IN/OUT with the port in DX */
        port = (uint16_t)f->rdx;
        is_in = !(op & 2);
    } else if (string) {                     /* INS 6C/6D, OUTS 6E/6F */
        port = (uint16_t)f->rdx;
        is_in = op <= 0x6D;
    } else {
        sev_es_terminate(0, GHCB_TERM_GENERAL);
    }
    uint64_t info1 = (uint64_t)port << 16 | (size == 1 ? IOIO_SZ8 : size == 2 ? IOIO_SZ16 : IOIO_SZ32)
                     | (in->adsize ? IOIO_A32 : IOIO_A64) | (is_in ? IOIO_TYPE_IN : 0);
    if (!string) {
        if (!is_in)
            GHCB_SET(g, rax, f->rax & ((1ul << (8 * size)) - 1));
        if (!vc_response(f, g, ghcb_call(g, SVM_EXIT_IOIO, info1, 0)))
            return false;
        if (is_in) {
            need(GHCB_IS_VALID(g, rax));
            reg_write(f, in, 0, size, g->rax);
        }
        return true;
    }
    info1 |= IOIO_STR | (in->rep ? IOIO_REP : 0) | (uint64_t)(is_in ? 0 : in->seg) << 10;
    uint64_t mask = in->adsize ? 0xFFFFFFFF : ~0ul;
    uint64_t count = in->rep ? f->rcx & mask : 1;
    int64_t step = (f->rflags & (1u << 10)) ? -size : size;    /* DF */
    uint64_t *ptr = is_in ? &f->rdi : &f->rsi;
    while (count) {
        uint64_t n = count < sizeof(g->shared_buffer) / size ? count : sizeof(g->shared_buffer) / size;
        if (!is_in)
            for (uint64_t i = 0; i < n; i++)
                memcpy(&g->shared_buffer[i * size], (void *)((*ptr + i * step) & mask), size);
        GHCB_SET(g, sw_scratch, ghcb_gpa(g) + __builtin_offsetof(struct ghcb, shared_buffer));
        if (!vc_response(f, g, ghcb_call(g, SVM_EXIT_IOIO, info1, n)))
            return false;
        if (is_in)
            for (uint64_t i = 0; i < n; i++)
                memcpy((void *)((*ptr + i * step) & mask), &g->shared_buffer[i * size], size);
        *ptr = (*ptr & ~mask) | ((*ptr + n * step) & mask);
        count -= n;
        if (in->rep)
            f->rcx = (f->rcx & ~mask) | (count & mask);
        ghcb_clear(g);
    }
    return true;
}

static bool vc_msr(struct trap_frame *f, struct ghcb *g, struct insn *in)
{
    bool write = in->op == 0x30;
    GHCB_SET(g, rcx, (uint32_t)f->rcx);
    if (write) {
        GHCB_SET(g, rax, (uint32_t)f->rax);
        GHCB_SET(g, rdx, (uint32_t)f->rdx);
    }
    if (!vc_response(f, g, ghcb_call(g, SVM_EXIT_MSR, write, 0)))
        return false;
    if (!write) {
        need(GHCB_IS_VALID(g, rax) && GHCB_IS_VALID(g, rdx));
        f->rax = (uint32_t)g->rax;
        f->rdx = (uint32_t)g->rdx;
    }
    return true;
}

/* VMMCALL: the hypercall registers (RAX number, RBX, RCX, RDX, RSI
 * arguments) and the CPL, which the hypervisor needs to refuse CPL 3. */
static bool vc_vmmcall(struct trap_frame *f, struct ghcb *g, struct insn *in)
{
    GHCB_SET(g, rax, f->rax);
    GHCB_SET(g, rbx, f->rbx);
    GHCB_SET(g, rcx, f->rcx);
    GHCB_SET(g, rdx, f->rdx);
    GHCB_SET(g, rsi, f->rsi);
    GHCB_SET(g, cpl, f->cs & 3);
    if (!vc_response(f, g, ghcb_call(g, SVM_EXIT_VMMCALL, 0, 0)))
        return false;
    need(GHCB_IS_VALID(g, rax));
    f->rax = g->rax;
    return true;
}

/* A reserved-bit #NPF: emulated MMIO.  Decode the access and hand it to the
 * hypervisor through the shared buffer (MMIO_READ/WRITE: info1 = GPA,
 * info2 = length, sw_scratch = the buffer). */
static bool vc_mmio(struct trap_frame *f, struct ghcb *g, struct insn *in)
{
    int reg, size;
    bool rip_rel, write, movzx = false, moffs = false;
    uint64_t value = 0;
    if (!in->twobyte && (in->op == 0x88 || in->op == 0x89 || in->op == 0x8A || in->op == 0x8B ||
                         in->op == 0xC6 || in->op == 0xC7)) {
        size = (in->op & 1) ? ((in->rex & 8) ? 8 : in->opsize ? 2 : 4) : 1;
        write = in->op != 0x8A && in->op != 0x8B;
    } else if (in->twobyte && (in->op == 0xB6 || in->op == 0xB7)) {
        size = in->op == 0xB6 ? 1 : 2;
        write = false;
        movzx = true;
    } else if (!in->twobyte && in->op >= 0xA0 && in->op <= 0xA3) {
        /* MOV AL/rAX <-> moffs: an absolute address of the address size. */
        size = (in->op & 1) ? ((in->rex & 8) ? 8 : in->opsize ? 2 : 4) : 1;
        write = in->op >= 0xA2;
        moffs = true;
    } else {
        sev_es_terminate(0, GHCB_TERM_GENERAL);
    }
    uint64_t gpa;
    if (moffs) {
        gpa = in->adsize ? *(const uint32_t *)in->p : *(const uint64_t *)in->p;
        in->p += in->adsize ? 4 : 8;
        reg = 0;                     /* AL / rAX */
        rip_rel = false;
    } else {
        gpa = modrm_mem(f, in, &reg, &rip_rel);
    }
    if (in->op == 0xC6 || (in->op == 0xC7 && !in->twobyte)) {
        int n = size == 1 ? 1 : size == 2 ? 2 : 4;
        value = n == 1 ? *in->p : n == 2 ? *(const uint16_t *)in->p
                                         : (uint64_t)(int64_t)*(const int32_t *)in->p;
        in->p += n;
    } else if (write) {
        value = reg_read(f, in, reg, size);
    }
    if (rip_rel)
        gpa += f->rip + insn_len(in);
    uint64_t scratch = ghcb_gpa(g) + __builtin_offsetof(struct ghcb, shared_buffer);
    if (write)
        memcpy(g->shared_buffer, &value, size);
    GHCB_SET(g, sw_scratch, scratch);
    if (!vc_response(f, g, ghcb_call(g, write ? SVM_VMGEXIT_MMIO_WRITE : SVM_VMGEXIT_MMIO_READ,
                                     gpa, size)))
        return false;
    if (!write) {
        memcpy(&value, g->shared_buffer, size);
        reg_write(f, in, reg, movzx ? ((in->rex & 8) ? 8 : in->opsize ? 2 : 4) : size, value);
    }
    return true;
}

/* RDTSC, RDTSCP, RDPMC: results in RAX/RDX (and RCX = TSC_AUX). */
static bool vc_counter(struct trap_frame *f, struct ghcb *g, uint64_t code)
{
    if (code == SVM_EXIT_RDPMC)
        GHCB_SET(g, rcx, (uint32_t)f->rcx);
    if (!vc_response(f, g, ghcb_call(g, code, 0, 0)))
        return false;
    need(GHCB_IS_VALID(g, rax) && GHCB_IS_VALID(g, rdx));
    f->rax = (uint32_t)g->rax;
    f->rdx = (uint32_t)g->rdx;
    if (code == SVM_EXIT_RDTSCP) {
        need(GHCB_IS_VALID(g, rcx));
        f->rcx = (uint32_t)g->rcx;
    }
    return true;
}

static bool vc_monitor(struct trap_frame *f, struct ghcb *g, uint64_t code)
{
    GHCB_SET(g, rax, f->rax);
    GHCB_SET(g, rcx, (uint32_t)f->rcx);
    if (code == SVM_EXIT_MONITOR)
        GHCB_SET(g, rdx, (uint32_t)f->rdx);
    return vc_response(f, g, ghcb_call(g, code, 0, 0));
}

/* MOV from/to DR7 (0F 21 / 0F 23, ModRM.reg = 7, ModRM.rm = the GPR). */
static bool vc_dr7(struct trap_frame *f, struct ghcb *g, struct insn *in, uint64_t code)
{
    uint8_t m = *in->p++;
    int r = (m & 7) | (in->rex & 1 ? 8 : 0);
    if (code == SVM_EXIT_WRITE_DR7)
        GHCB_SET(g, rax, *gpr(f, r));
    if (!vc_response(f, g, ghcb_call(g, code, 0, 0)))
        return false;
    if (code == SVM_EXIT_READ_DR7) {
        need(GHCB_IS_VALID(g, rax));
        *gpr(f, r) = g->rax;
    }
    return true;
}

/* #VC (vector 29): the error code is the exit code of the non-automatic
 * exit (APM vol 2, 15.35.5); the saved RIP is the instruction's. */
static void vc_handler(struct trap_frame *f)
{
    uint64_t code = f->error;
    sev_es_last_vc = code;
    sev_es_vc_count++;
    if (ghcb_cpu() < 0) {            /* no GHCB yet: only CPUID can be served */
        if (code != SVM_EXIT_CPUID)
            sev_es_terminate(0, GHCB_TERM_GENERAL);
        cpuid_msr_protocol(f);
        return;
    }
    struct insn in;
    decode(&in, f->rip);
    struct ghcb *g = ghcb_get();
    ghcb_clear(g);
    bool done;
    switch (code) {
    case SVM_EXIT_CPUID:
        done = vc_cpuid(f, g, &in);
        break;
    case SVM_EXIT_IOIO:
        done = vc_ioio(f, g, &in);
        break;
    case SVM_EXIT_MSR:
        done = vc_msr(f, g, &in);
        break;
    case SVM_EXIT_VMMCALL:
        done = vc_vmmcall(f, g, &in);
        break;
    case SVM_EXIT_NPF:
        done = vc_mmio(f, g, &in);
        break;
    case SVM_EXIT_RDTSC:
    case SVM_EXIT_RDTSCP:
    case SVM_EXIT_RDPMC:
        done = vc_counter(f, g, code);
        if (code == SVM_EXIT_RDTSCP)
            in.p++;                  /* 0F 01 F9 */
        break;
    case SVM_EXIT_WBINVD:
    case SVM_EXIT_INVD:
        done = vc_response(f, g, ghcb_call(g, code, 0, 0));
        break;
    case SVM_EXIT_MONITOR:
    case SVM_EXIT_MWAIT:
        done = vc_monitor(f, g, code);
        in.p++;                      /* 0F 01 C8 / C9 */
        break;
    case SVM_EXIT_READ_DR7:
    case SVM_EXIT_WRITE_DR7:
        done = vc_dr7(f, g, &in, code);
        break;
    default:
        ghcb_call(g, SVM_VMGEXIT_UNSUPPORTED, code, 0);
        sev_es_terminate(0, GHCB_TERM_GENERAL);
    }
    if (!done)                       /* an exception was raised instead */
        return;
    if (code == SVM_EXIT_VMMCALL)
        in.p++;                      /* 0F 01 D9 */
    f->rip += insn_len(&in);
    ghcb_put(g);
}

/* ================================================================ APs */

int sev_es_set_ap_jump_table(uint64_t gpa)
{
    struct ghcb *g = ghcb_get();
    ghcb_clear(g);
    int resp = ghcb_call(g, SVM_VMGEXIT_AP_JUMP_TABLE, 0, gpa);
    ghcb_put(g);
    return resp;
}

uint64_t sev_es_get_ap_jump_table(void)
{
    struct ghcb *g = ghcb_get();
    ghcb_clear(g);
    uint64_t gpa = 0;
    if (ghcb_call(g, SVM_VMGEXIT_AP_JUMP_TABLE, 1, 0) == GHCB_RESP_OK &&
        GHCB_IS_VALID(g, sw_exit_info_2))
        gpa = g->sw_exit_info_2;
    ghcb_put(g);
    return gpa;
}

extern char ap_entry64[];

/* Park this AP until the BSP starts it again with INIT-SIPI-SIPI: the AP
 * reset hold (GHCB 8000_0004h, or MSR protocol 006h), which returns a non-zero
 * result once the hypervisor saw the SIPI.  Then start over at the 64-bit
 * AP entry (the hypervisor cannot set an SEV-ES vCPU's registers). */
void sev_es_ap_park(void)
{
    cli();
    for (;;) {
        bool woken;
        if (sev_es_park_with_msr_protocol) {
            uint64_t r = ghcb_msr_protocol(GHCB_MSR_AP_RESET_HOLD_REQ);
            woken = (r & GHCB_MSR_INFO_MASK) == GHCB_MSR_AP_RESET_HOLD_RESP && (r >> 12);
        } else {
            struct ghcb *g = ghcb_get();
            ghcb_clear(g);
            woken = ghcb_call(g, SVM_VMGEXIT_AP_HLT_LOOP, 0, 0) == GHCB_RESP_OK &&
                    GHCB_IS_VALID(g, sw_exit_info_2) && g->sw_exit_info_2;
            ghcb_put(g);
        }
        if (woken)
            asm volatile("jmp ap_entry64");
    }
}
