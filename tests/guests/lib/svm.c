/*
 * svm.c - helpers for the bare-metal test hypervisors (see svm.h).
 * Nothing here runs unless a kernel calls it, so kernels that do not use
 * SVM behave exactly as before.
 */
#include "svm.h"

/*
 * void svm_run_guest(void *vmcb, struct svm_gprs *g)
 *
 * VMRUN saves only RAX, RSP, RIP, RFLAGS and the control/segment state to
 * VM_HSAVE_PA and restores them at #VMEXIT (APM vol 2, 15.5.1 and 15.6), so
 * the other GPRs are switched here: callee-saved host registers go on the
 * stack, the guest's are loaded from *g, and after #VMEXIT (RAX = the VMCB
 * address again, RSP restored) the guest's are stored back into *g.
 */
asm(".pushsection .text\n"
    ".globl svm_run_guest\n"
    "svm_run_guest:\n"
    "  push %rbx\n  push %rbp\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
    "  push %rsi\n"                  /* &gprs, found again after the exit */
    "  mov %rdi, %rax\n"
    "  mov 0x00(%rsi), %rbx\n  mov 0x08(%rsi), %rcx\n  mov 0x10(%rsi), %rdx\n"
    "  mov 0x20(%rsi), %rdi\n  mov 0x28(%rsi), %rbp\n"
    "  mov 0x30(%rsi), %r8\n  mov 0x38(%rsi), %r9\n  mov 0x40(%rsi), %r10\n"
    "  mov 0x48(%rsi), %r11\n  mov 0x50(%rsi), %r12\n  mov 0x58(%rsi), %r13\n"
    "  mov 0x60(%rsi), %r14\n  mov 0x68(%rsi), %r15\n"
    "  mov 0x18(%rsi), %rsi\n"
    "  vmrun %rax\n"
    "  xchg %rsi, (%rsp)\n"          /* rsi = &gprs, stack = guest rsi */
    "  mov %rbx, 0x00(%rsi)\n  mov %rcx, 0x08(%rsi)\n  mov %rdx, 0x10(%rsi)\n"
    "  mov %rdi, 0x20(%rsi)\n  mov %rbp, 0x28(%rsi)\n"
    "  mov %r8, 0x30(%rsi)\n  mov %r9, 0x38(%rsi)\n  mov %r10, 0x40(%rsi)\n"
    "  mov %r11, 0x48(%rsi)\n  mov %r12, 0x50(%rsi)\n  mov %r13, 0x58(%rsi)\n"
    "  mov %r14, 0x60(%rsi)\n  mov %r15, 0x68(%rsi)\n"
    "  pop %rax\n  mov %rax, 0x18(%rsi)\n"
    "  pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbp\n  pop %rbx\n"
    "  ret\n"
    ".popsection\n");

/* ================================================================ setup */

void svm_cpuid(struct svm_info *info)
{
    uint32_t r[4];
    memset(info, 0, sizeof(*info));
    cpuid(0x80000000, 0, r);
    if (r[0] < 0x8000000A)
        return;
    cpuid(0x80000001, 0, r);
    info->svm = (r[2] & CPUID_8000_0001_ECX_SVM) != 0;
    if (!info->svm)
        return;
    cpuid(0x8000000A, 0, r);
    info->revision = r[0] & 0xFF;
    info->nasid = r[1];
    info->features = r[3];
}

/* APM vol 2, 15.4 "Enabling SVM": SVM is usable when CPUID says so and
 * VM_CR.SVMDIS is clear; then EFER.SVME = 1 enables the SVM instructions.
 * VMRUN saves host state to the page named by VM_HSAVE_PA (15.30.4). */
const char *svm_enable(void *hsave)
{
    struct svm_info info;
    svm_cpuid(&info);
    if (!info.svm)
        return "CPUID 8000_0001 ECX.SVM = 0";
    if (rdmsr(MSR_VM_CR) & VM_CR_SVMDIS)
        return "VM_CR.SVMDIS = 1";
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
    wrmsr(MSR_VM_HSAVE_PA, (uint64_t)hsave);
    if (!(rdmsr(MSR_EFER) & EFER_SVME))
        return "EFER.SVME did not stick";
    if (rdmsr(MSR_VM_HSAVE_PA) != (uint64_t)hsave)
        return "VM_HSAVE_PA did not stick";
    return NULL;
}

void vmcb_set_seg(void *vmcb, uint32_t off, uint16_t sel, uint16_t attrib,
                  uint32_t limit, uint64_t base)
{
    VMCB_U16(vmcb, off + SEG_SEL) = sel;
    VMCB_U16(vmcb, off + SEG_ATTRIB) = attrib;
    VMCB_U32(vmcb, off + SEG_LIMIT) = limit;
    VMCB_U64(vmcb, off + SEG_BASE) = base;
}

void vmcb_init(void *vmcb, void *iopm, void *msrpm)
{
    memset(vmcb, 0, 4096);
    /* 15.5.1: VMRUN fails with VMEXIT_INVALID unless VMRUN is intercepted. */
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC2) = INTERCEPT_VMRUN;
    VMCB_U32(vmcb, VMCB_GUEST_ASID) = 1;          /* ASID 0 is the host's */
    VMCB_U64(vmcb, VMCB_IOPM_BASE_PA) = (uint64_t)iopm;
    VMCB_U64(vmcb, VMCB_MSRPM_BASE_PA) = (uint64_t)msrpm;
    VMCB_U64(vmcb, VMCB_G_PAT) = 0x0007040600070406ul;   /* power-on PAT */
    VMCB_U64(vmcb, VMCB_DR6) = 0xFFFF0FF0;        /* architectural reset values */
    VMCB_U64(vmcb, VMCB_DR7) = 0x400;
}

static void flat_data_segments(void *vmcb, uint16_t sel, uint16_t attrib)
{
    vmcb_set_seg(vmcb, VMCB_DS, sel, attrib, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_ES, sel, attrib, 0xFFFFFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_SS, sel, attrib, 0xFFFFFFFF, 0);
}

void vmcb_guest_long(void *vmcb, uint64_t rip, uint64_t rsp, void *idt, uint16_t idt_limit)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdtr;
    asm volatile("sgdt %0" : "=m"(gdtr));
    vmcb_set_seg(vmcb, VMCB_CS, SEL_CODE64, SEG_ATTR_CODE64, 0xFFFFFFFF, 0);
    flat_data_segments(vmcb, SEL_DATA, SEG_ATTR_DATA);
    vmcb_set_seg(vmcb, VMCB_GDTR, 0, 0, gdtr.limit, gdtr.base);
    vmcb_set_seg(vmcb, VMCB_IDTR, 0, 0, idt_limit, (uint64_t)idt);
    VMCB_U64(vmcb, VMCB_CR0) = read_cr0();
    VMCB_U64(vmcb, VMCB_CR3) = read_cr3();
    VMCB_U64(vmcb, VMCB_CR4) = read_cr4();
    VMCB_U64(vmcb, VMCB_EFER) = rdmsr(MSR_EFER);  /* LME, LMA, SVME */
    VMCB_U64(vmcb, VMCB_RFLAGS) = 0x2;
    VMCB_U64(vmcb, VMCB_RIP) = rip;
    VMCB_U64(vmcb, VMCB_RSP) = rsp;
}

void vmcb_guest_prot32(void *vmcb, uint32_t eip, uint32_t esp)
{
    vmcb_set_seg(vmcb, VMCB_CS, SEL_CODE32, SEG_ATTR_CODE32, 0xFFFFFFFF, 0);
    flat_data_segments(vmcb, SEL_DATA, SEG_ATTR_DATA);
    vmcb_set_seg(vmcb, VMCB_IDTR, 0, 0, 0x3FF, 0);
    VMCB_U64(vmcb, VMCB_CR0) = CR0_PE | (1ul << 4);   /* ET is fixed to 1 */
    VMCB_U64(vmcb, VMCB_CR3) = 0;
    VMCB_U64(vmcb, VMCB_CR4) = 0;
    VMCB_U64(vmcb, VMCB_EFER) = EFER_SVME;
    VMCB_U64(vmcb, VMCB_RFLAGS) = 0x2;
    VMCB_U64(vmcb, VMCB_RIP) = eip;
    VMCB_U64(vmcb, VMCB_RSP) = esp;
}

void vmcb_guest_real(void *vmcb, uint16_t cs, uint16_t ip, uint16_t sp)
{
    vmcb_set_seg(vmcb, VMCB_CS, cs, SEG_ATTR_REAL_CODE, 0xFFFF, (uint64_t)cs << 4);
    vmcb_set_seg(vmcb, VMCB_DS, 0, SEG_ATTR_REAL_DATA, 0xFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_ES, 0, SEG_ATTR_REAL_DATA, 0xFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_SS, 0, SEG_ATTR_REAL_DATA, 0xFFFF, 0);
    vmcb_set_seg(vmcb, VMCB_IDTR, 0, 0, 0x3FF, 0);
    VMCB_U64(vmcb, VMCB_CR0) = 1ul << 4;
    VMCB_U64(vmcb, VMCB_CR3) = 0;
    VMCB_U64(vmcb, VMCB_CR4) = 0;
    VMCB_U64(vmcb, VMCB_EFER) = EFER_SVME;
    VMCB_U64(vmcb, VMCB_RFLAGS) = 0x2;
    VMCB_U64(vmcb, VMCB_RIP) = ip;
    VMCB_U64(vmcb, VMCB_RSP) = sp;
}

/* IOPM: bit n intercepts port n (APM vol 2, 15.10.1). */
void iopm_intercept(void *iopm, uint16_t port, bool on)
{
    uint8_t *b = (uint8_t *)iopm + port / 8, m = (uint8_t)(1u << (port % 8));
    *b = on ? (*b | m) : (*b & ~m);
}

/* MSRPM ranges (APM vol 2, 15.11 "MSR Intercepts"): 0000_0000-0000_1FFF at byte
 * 0, C000_0000-C000_1FFF at 800h, C001_0000-C001_1FFF at 1000h; the even bit
 * of each pair intercepts RDMSR, the odd bit WRMSR.  False if the MSR is in
 * no range (such MSRs always exit when the MSR intercept is on). */
bool msrpm_intercept(void *msrpm, uint32_t msr, bool rd, bool wr)
{
    uint32_t base;
    if (msr <= 0x1FFF)
        base = 0;
    else if (msr - 0xC0000000u <= 0x1FFF)
        base = 0x800, msr -= 0xC0000000u;
    else if (msr - 0xC0010000u <= 0x1FFF)
        base = 0x1000, msr -= 0xC0010000u;
    else
        return false;
    uint8_t *b = (uint8_t *)msrpm + base + msr / 4;
    int shift = 2 * (msr % 4);
    *b = (uint8_t)((*b & ~(3u << shift)) | ((rd ? 1u : 0u) << shift) |
                   ((wr ? 2u : 0u) << shift));
    return true;
}

/* ================================================================ names */

static const char *const misc_names[] = {
    "INTR", "NMI", "SMI", "INIT", "VINTR", "CR0_SEL_WRITE", "IDTR_READ",
    "GDTR_READ", "LDTR_READ", "TR_READ", "IDTR_WRITE", "GDTR_WRITE",
    "LDTR_WRITE", "TR_WRITE", "RDTSC", "RDPMC", "PUSHF", "POPF", "CPUID",
    "RSM", "IRET", "SWINT", "INVD", "PAUSE", "HLT", "INVLPG", "INVLPGA",
    "IOIO", "MSR", "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN",
    "VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT",
    "RDTSCP", "ICEBP", "WBINVD", "MONITOR", "MWAIT", "MWAIT_CONDITIONAL",
    "XSETBV", "RDPRU",
};

static const char *const exc_names[32] = {
    "DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "09", "TS", "NP",
    "SS", "GP", "PF", "15", "MF", "AC", "MC", "XF", "20", "CP", "22", "23",
    "24", "25", "26", "27", "HV", "VC", "SX", "31",
};

/* Names as in APM vol 2, appendix C, with the CR/DR/exception number. */
const char *svm_exit_name(uint64_t code)
{
    static char buf[16];
    static const char digits[] = "0123456789";
    if (code == SVM_EXIT_INVALID)
        return "INVALID";
    if (code < 0x40) {
        const char *kind = code < 0x20 ? "CR" : "DR";
        int n = (int)(code & 0xF), i = 0;
        const char *rw = (code & 0x10) ? "_WRITE" : "_READ";
        buf[i++] = kind[0];
        buf[i++] = kind[1];
        if (n >= 10)
            buf[i++] = '1';
        buf[i++] = digits[n % 10];
        while (*rw)
            buf[i++] = *rw++;
        buf[i] = 0;
        return buf;
    }
    if (code < 0x60) {
        const char *e = exc_names[code - 0x40];
        buf[0] = 'E', buf[1] = 'X', buf[2] = 'C', buf[3] = 'P', buf[4] = '_';
        buf[5] = e[0], buf[6] = e[1], buf[7] = 0;
        return buf;
    }
    if (code - 0x60 < sizeof(misc_names) / sizeof(misc_names[0]))
        return misc_names[code - 0x60];
    if (code == SVM_EXIT_NPF)
        return "NPF";
    if (code == SVM_EXIT_AVIC_INCOMPLETE_IPI)
        return "AVIC_INCOMPLETE_IPI";
    if (code == SVM_EXIT_AVIC_NOACCEL)
        return "AVIC_NOACCEL";
    return "UNKNOWN";
}

/* ================================================================ decode */

/* Bytes taken by a ModRM operand (ModRM byte included), 64-bit addressing. */
static int modrm_len(const uint8_t *p)
{
    int mod = p[0] >> 6, rm = p[0] & 7, n = 1;
    if (mod == 3)
        return n;
    if (rm == 4) {                   /* SIB */
        n++;
        if (mod == 0 && (p[1] & 7) == 5)
            n += 4;
    } else if (mod == 0 && rm == 5) {
        n += 4;                      /* RIP-relative disp32 */
    }
    if (mod == 1)
        n += 1;
    else if (mod == 2)
        n += 4;
    return n;
}

/*
 * Length of the guest instructions our kernels intercept.  A hypervisor on
 * a CPU without NRIP save must decode to skip an instruction; we know the
 * guest code, so a short table suffices.  Prefixes: 66, F3, REX.
 */
int svm_insn_len(const uint8_t *p)
{
    int n = 0;
    while (p[n] == 0x66 || p[n] == 0xF3 || (p[n] & 0xF0) == 0x40)
        n++;
    const uint8_t *o = p + n;
    switch (o[0]) {
    case 0xF4: case 0x9C: case 0x9D: case 0xEC: case 0xED: case 0xEE: case 0xEF:
    case 0xCF: case 0xF1: case 0x90:
        return n + 1;                /* HLT PUSHF POPF IN/OUT dx IRET ICEBP PAUSE */
    case 0xCC:
        return n + 1;                /* INT3 */
    case 0xCD: case 0xE4: case 0xE5: case 0xE6: case 0xE7:
        return n + 2;                /* INT n, IN/OUT imm8 */
    case 0x0F:
        break;
    default:
        return 0;
    }
    switch (o[1]) {
    case 0xA2: case 0x30: case 0x31: case 0x32: case 0x33: case 0x08: case 0x09:
    case 0x0B: case 0x06:
        return n + 2;                /* CPUID WRMSR RDTSC RDMSR RDPMC INVD WBINVD UD2 CLTS */
    case 0x20: case 0x21: case 0x22: case 0x23:
        return n + 2 + modrm_len(o + 2);   /* MOV CR/DR */
    case 0x00:
        return n + 2 + modrm_len(o + 2);   /* SLDT STR LLDT LTR ... */
    case 0x01:
        if ((o[2] >> 6) == 3)
            return n + 3;            /* VMRUN VMMCALL ... RDTSCP, LMSW reg */
        return n + 2 + modrm_len(o + 2);   /* SGDT SIDT LGDT LIDT SMSW LMSW INVLPG */
    }
    return 0;
}


/* ================================================================ shared helpers */

bool svm_print_label(const struct svm_label *labels, unsigned n, uint64_t addr,
                     uint64_t window)
{
    const char *name = NULL;
    uint64_t best = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t a = (uint64_t)labels[i].addr;
        if (a <= addr && addr - a < window && (!name || a > best))
            name = labels[i].name, best = a;
    }
    if (!name) {
        kprintf("0x%lx", addr);
        return false;
    }
    kprintf(addr == best ? "%s" : "%s+%lu", name, addr - best);
    return true;
}

void svm_idt_gate64(uint64_t *idt, int vector, const void *handler, bool present, int dpl)
{
    uint64_t off = (uint64_t)handler;
    uint64_t attr = (present ? 0x80ul : 0) | ((uint64_t)dpl << 5) | 0xE;
    idt[2 * vector] = (off & 0xFFFF) | ((uint64_t)SEL_CODE64 << 16) | (attr << 40) |
                      (((off >> 16) & 0xFFFF) << 48);
    idt[2 * vector + 1] = off >> 32;
}

uint64_t svm_run_switched(void *vmcb, void *host_save, struct svm_gprs *gprs)
{
    svm_clgi();
    svm_vmload(vmcb);
    svm_run_guest(vmcb, gprs);
    svm_vmsave(vmcb);
    svm_vmload(host_save);
    svm_stgi();
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}
