/*
 * svm.h - AMD SVM for the bare-metal test hypervisors: VMCB layout as named
 * offsets, exit codes, intercept bits, the SVM instructions, and helpers that
 * build a guest VMCB (64-bit guest sharing the host's page tables, 32-bit
 * protected-mode guest, real-mode guest).
 *
 * Sources: AMD APM vol 2, chapter 15 and appendix B ("Layout of VMCB"),
 * appendix C (exit codes); offsets cross-checked against Linux
 * arch/x86/include/asm/svm.h (see shared/docs/reference/svm-emulators-and-
 * layouts.md).  Guest physical = host physical: no nested paging here.
 */
#ifndef SVM_H
#define SVM_H
#include "rt.h"

/* ---- MSRs and CPUID (APM vol 2, 15.4, 15.30) ---- */
#define MSR_VM_CR 0xC0010114
#define MSR_VM_HSAVE_PA 0xC0010117
#define VM_CR_LOCK (1u << 3)
#define VM_CR_SVMDIS (1u << 4)
#define EFER_SCE (1ul << 0)
#define EFER_LME (1ul << 8)
#define EFER_LMA (1ul << 10)
#define EFER_NXE (1ul << 11)
#define EFER_SVME (1ul << 12)
#define CPUID_8000_0001_ECX_SVM (1u << 2)
/* CPUID Fn8000_000A_EDX feature bits (APM vol 3, appendix E.4.9). */
#define SVM_FEAT_NP (1u << 0)
#define SVM_FEAT_LBRV (1u << 1)
#define SVM_FEAT_SVML (1u << 2)
#define SVM_FEAT_NRIPS (1u << 3)
#define SVM_FEAT_TSCRATE (1u << 4)
#define SVM_FEAT_VMCBCLEAN (1u << 5)
#define SVM_FEAT_FLUSHBYASID (1u << 6)
#define SVM_FEAT_DECODEASSISTS (1u << 7)
#define SVM_FEAT_PAUSEFILTER (1u << 10)
#define SVM_FEAT_PFTHRESHOLD (1u << 12)
#define SVM_FEAT_AVIC (1u << 13)
#define SVM_FEAT_VVMSAVE (1u << 15)
#define SVM_FEAT_VGIF (1u << 16)
#define SVM_FEAT_X2AVIC (1u << 18)

/* ---- VMCB control area (APM vol 2, appendix B, Table B-1) ---- */
#define VMCB_INTERCEPT_CR 0x000      /* 15:0 reads, 31:16 writes */
#define VMCB_INTERCEPT_DR 0x004      /* 15:0 reads, 31:16 writes */
#define VMCB_INTERCEPT_EXC 0x008     /* bit n: exception vector n */
#define VMCB_INTERCEPT_MISC1 0x00C   /* bit n -> exit code 0x60 + n */
#define VMCB_INTERCEPT_MISC2 0x010   /* bit n -> exit code 0x80 + n */
#define VMCB_PAUSE_FILTER_THRESH 0x03C
#define VMCB_PAUSE_FILTER_COUNT 0x03E
#define VMCB_IOPM_BASE_PA 0x040
#define VMCB_MSRPM_BASE_PA 0x048
#define VMCB_TSC_OFFSET 0x050
#define VMCB_GUEST_ASID 0x058        /* 32 bits */
#define VMCB_TLB_CONTROL 0x05C       /* 8 bits */
#define VMCB_V_INTR 0x060            /* V_TPR, V_IRQ, V_INTR_PRIO, ... */
#define VMCB_V_INTR_VECTOR 0x064
#define VMCB_INTERRUPT_SHADOW 0x068
#define VMCB_EXITCODE 0x070
#define VMCB_EXITINFO1 0x078
#define VMCB_EXITINFO2 0x080
#define VMCB_EXITINTINFO 0x088
#define VMCB_NP_CONTROL 0x090
#define VMCB_EVENTINJ 0x0A8          /* 32 bits + 32-bit error code at 0x0AC */
#define VMCB_AVIC_APIC_BAR 0x098    /* AVIC (15.29.4): guest physical APIC page */
#define VMCB_N_CR3 0x0B0
#define VMCB_LBR_CONTROL 0x0B8
#define VMCB_CLEAN_BITS 0x0C0
#define VMCB_NRIP 0x0C8
#define VMCB_INSN_LEN 0x0D0
#define VMCB_INSN_BYTES 0x0D1
#define VMCB_AVIC_BACKING 0x0E0      /* vAPIC backing page (15.29.4) */
#define VMCB_AVIC_LOGICAL 0x0F0      /* logical APIC ID table */
#define VMCB_AVIC_PHYSICAL 0x0F8     /* physical APIC ID table | max index (11:0) */
#define V_INTR_MASKING (1u << 24)    /* in the 32 bits at VMCB_V_INTR */
#define X2AVIC_ENABLE (1u << 30)
#define AVIC_ENABLE (1u << 31)
/* Physical APIC ID table entry (15.29.5.2, table 15-23). */
#define AVIC_PHYS_VALID (1ul << 63)
#define AVIC_PHYS_RUNNING (1ul << 62)
#define MSR_AVIC_DOORBELL 0xC001011B

/* ---- VMCB state-save area (APM vol 2, appendix B, Table B-2) ---- */
#define VMCB_ES 0x400                /* each segment: selector, attrib, limit, base */
#define VMCB_CS 0x410
#define VMCB_SS 0x420
#define VMCB_DS 0x430
#define VMCB_FS 0x440
#define VMCB_GS 0x450
#define VMCB_GDTR 0x460
#define VMCB_LDTR 0x470
#define VMCB_IDTR 0x480
#define VMCB_TR 0x490
#define SEG_SEL 0
#define SEG_ATTRIB 2
#define SEG_LIMIT 4
#define SEG_BASE 8
#define VMCB_CPL 0x4CB
#define VMCB_EFER 0x4D0
#define VMCB_CR4 0x548
#define VMCB_CR3 0x550
#define VMCB_CR0 0x558
#define VMCB_DR7 0x560
#define VMCB_DR6 0x568
#define VMCB_RFLAGS 0x570
#define VMCB_RIP 0x578
#define VMCB_RSP 0x5D8
#define VMCB_RAX 0x5F8
#define VMCB_STAR 0x600
#define VMCB_LSTAR 0x608
#define VMCB_KERNEL_GS_BASE 0x620
#define VMCB_CR2 0x640
#define VMCB_G_PAT 0x668

/* Segment attributes in VMCB form: descriptor bits 47:40 -> 7:0 and
 * 55:52 -> 11:8 (type, S, DPL, P, AVL, L, D/B, G).  APM vol 2, 15.5.1. */
#define SEG_ATTR_CODE64 0x0A9B
#define SEG_ATTR_DATA 0x0C93
#define SEG_ATTR_CODE32 0x0C9B
#define SEG_ATTR_REAL_CODE 0x009B    /* 16-bit, present, accessed code */
#define SEG_ATTR_REAL_DATA 0x0093
#define SEG_ATTR_TSS64 0x0089
#define SEG_ATTR_LDT 0x0082

/* ---- intercept vector bits ---- */
/* Word at 0x00C: bit n intercepts exit code 0x60 + n. */
#define INTERCEPT_INTR (1u << 0)
#define INTERCEPT_NMI (1u << 1)
#define INTERCEPT_SMI (1u << 2)
#define INTERCEPT_INIT (1u << 3)
#define INTERCEPT_VINTR (1u << 4)
#define INTERCEPT_CR0_SEL_WRITE (1u << 5)
#define INTERCEPT_IDTR_READ (1u << 6)
#define INTERCEPT_GDTR_READ (1u << 7)
#define INTERCEPT_LDTR_READ (1u << 8)
#define INTERCEPT_TR_READ (1u << 9)
#define INTERCEPT_IDTR_WRITE (1u << 10)
#define INTERCEPT_GDTR_WRITE (1u << 11)
#define INTERCEPT_LDTR_WRITE (1u << 12)
#define INTERCEPT_TR_WRITE (1u << 13)
#define INTERCEPT_RDTSC (1u << 14)
#define INTERCEPT_RDPMC (1u << 15)
#define INTERCEPT_PUSHF (1u << 16)
#define INTERCEPT_POPF (1u << 17)
#define INTERCEPT_CPUID (1u << 18)
#define INTERCEPT_RSM (1u << 19)
#define INTERCEPT_IRET (1u << 20)
#define INTERCEPT_INTN (1u << 21)
#define INTERCEPT_INVD (1u << 22)
#define INTERCEPT_PAUSE (1u << 23)
#define INTERCEPT_HLT (1u << 24)
#define INTERCEPT_INVLPG (1u << 25)
#define INTERCEPT_INVLPGA (1u << 26)
#define INTERCEPT_IOIO (1u << 27)
#define INTERCEPT_MSR (1u << 28)
#define INTERCEPT_TASK_SWITCH (1u << 29)
#define INTERCEPT_FERR_FREEZE (1u << 30)
#define INTERCEPT_SHUTDOWN (1u << 31)
/* Word at 0x010: bit n intercepts exit code 0x80 + n. */
#define INTERCEPT_VMRUN (1u << 0)
#define INTERCEPT_VMMCALL (1u << 1)
#define INTERCEPT_VMLOAD (1u << 2)
#define INTERCEPT_VMSAVE (1u << 3)
#define INTERCEPT_STGI (1u << 4)
#define INTERCEPT_CLGI (1u << 5)
#define INTERCEPT_SKINIT (1u << 6)
#define INTERCEPT_RDTSCP (1u << 7)
#define INTERCEPT_ICEBP (1u << 8)
#define INTERCEPT_WBINVD (1u << 9)
#define INTERCEPT_MONITOR (1u << 10)
#define INTERCEPT_MWAIT (1u << 11)

/* ---- exit codes (APM vol 2, appendix C) ---- */
#define SVM_EXIT_READ_CR0 0x000
#define SVM_EXIT_WRITE_CR0 0x010
#define SVM_EXIT_READ_DR0 0x020
#define SVM_EXIT_WRITE_DR0 0x030
#define SVM_EXIT_EXCP_BASE 0x040
#define SVM_EXIT_INTR 0x060
#define SVM_EXIT_NMI 0x061
#define SVM_EXIT_VINTR 0x064
#define SVM_EXIT_CR0_SEL_WRITE 0x065
#define SVM_EXIT_IDTR_READ 0x066
#define SVM_EXIT_GDTR_READ 0x067
#define SVM_EXIT_RDTSC 0x06E
#define SVM_EXIT_PUSHF 0x070
#define SVM_EXIT_POPF 0x071
#define SVM_EXIT_CPUID 0x072
#define SVM_EXIT_IRET 0x074
#define SVM_EXIT_SWINT 0x075
#define SVM_EXIT_INVD 0x076
#define SVM_EXIT_PAUSE 0x077
#define SVM_EXIT_HLT 0x078
#define SVM_EXIT_INVLPG 0x079
#define SVM_EXIT_IOIO 0x07B
#define SVM_EXIT_MSR 0x07C
#define SVM_EXIT_SHUTDOWN 0x07F
#define SVM_EXIT_VMRUN 0x080
#define SVM_EXIT_VMMCALL 0x081
#define SVM_EXIT_WBINVD 0x089
#define SVM_EXIT_NPF 0x400
#define SVM_EXIT_AVIC_INCOMPLETE_IPI 0x401
#define SVM_EXIT_AVIC_NOACCEL 0x402
#define SVM_EXIT_INVALID 0xFFFFFFFFFFFFFFFFul   /* -1 */

/* ---- EVENTINJ / EXITINTINFO (APM vol 2, 15.20) ---- */
#define EVENT_VECTOR(v) ((uint64_t)(v) & 0xFF)
#define EVENT_TYPE_INTR (0ul << 8)
#define EVENT_TYPE_NMI (2ul << 8)
#define EVENT_TYPE_EXCEPTION (3ul << 8)
#define EVENT_TYPE_SOFT_INT (4ul << 8)
#define EVENT_EV (1ul << 11)           /* push the error code in bits 63:32 */
#define EVENT_VALID (1ul << 31)
#define EVENT_ERROR(e) ((uint64_t)(uint32_t)(e) << 32)

/* ---- IOIO EXITINFO1 (APM vol 2, 15.10.2, Figure 15-2) ---- */
#define IOIO_TYPE_IN (1u << 0)
#define IOIO_STR (1u << 2)
#define IOIO_REP (1u << 3)
#define IOIO_SZ8 (1u << 4)
#define IOIO_SZ16 (1u << 5)
#define IOIO_SZ32 (1u << 6)
#define IOIO_A16 (1u << 7)
#define IOIO_A32 (1u << 8)
#define IOIO_A64 (1u << 9)
#define IOIO_ASIZE_MASK (7u << 7)
#define IOIO_PORT(info1) ((uint32_t)((info1) >> 16) & 0xFFFF)

#define IOPM_SIZE (12 * 1024)        /* 3 pages: one bit per port + 1 (15.10.1) */
#define MSRPM_SIZE (8 * 1024)        /* 2 pages: two bits per MSR (15.11) */

/* ---- field access: a VMCB is a 4 KiB page of bytes ---- */
#define VMCB_U8(v, off) (*(volatile uint8_t *)((uint8_t *)(v) + (off)))
#define VMCB_U16(v, off) (*(volatile uint16_t *)((uint8_t *)(v) + (off)))
#define VMCB_U32(v, off) (*(volatile uint32_t *)((uint8_t *)(v) + (off)))
#define VMCB_U64(v, off) (*(volatile uint64_t *)((uint8_t *)(v) + (off)))

/* ---- the SVM instructions (APM vol 3).  rAX = physical address. ---- */
static inline void svm_vmload(void *vmcb) { asm volatile("vmload %%rax" : : "a"(vmcb) : "memory"); }
static inline void svm_vmsave(void *vmcb) { asm volatile("vmsave %%rax" : : "a"(vmcb) : "memory"); }
static inline void svm_stgi(void) { asm volatile("stgi" ::: "memory"); }
static inline void svm_clgi(void) { asm volatile("clgi" ::: "memory"); }

/* Guest general registers that VMRUN does not switch (RAX, RSP, RIP and
 * RFLAGS live in the VMCB).  svm_run_guest loads them before VMRUN and
 * stores them back after #VMEXIT. */
struct svm_gprs {
    uint64_t rbx, rcx, rdx, rsi, rdi, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
};
/* CLGI is the caller's job; this is just the register switch + VMRUN. */
void svm_run_guest(void *vmcb, struct svm_gprs *gprs);

/* ---- setup ---- */
struct svm_info {
    bool svm;                        /* CPUID 8000_0001 ECX[2] */
    uint32_t revision, nasid, features;   /* CPUID 8000_000A EAX, EBX, EDX */
};
void svm_cpuid(struct svm_info *info);
/* VM_CR.SVMDIS check, EFER.SVME = 1, VM_HSAVE_PA = hsave.  0 or an error
 * string (printed by the caller). */
const char *svm_enable(void *hsave);

/* Zero the VMCB and set what every guest needs: VMRUN intercepted, ASID 1,
 * the IOPM/MSRPM bases. */
void vmcb_init(void *vmcb, void *iopm, void *msrpm);
/* A 64-bit guest with the host's CR0/CR3/CR4/EFER/GDT/PAT, flat segments
 * (CS = SEL_CODE64), the given IDT, RIP and RSP, RFLAGS = 2. */
void vmcb_guest_long(void *vmcb, uint64_t rip, uint64_t rsp, void *idt, uint16_t idt_limit);
/* 32-bit protected mode, paging off (CS = SEL_CODE32 from the host GDT). */
void vmcb_guest_prot32(void *vmcb, uint32_t eip, uint32_t esp);
/* Real mode: CS = cs, IP = ip, SS:SP = 0:sp. */
void vmcb_guest_real(void *vmcb, uint16_t cs, uint16_t ip, uint16_t sp);
void vmcb_set_seg(void *vmcb, uint32_t off, uint16_t sel, uint16_t attrib,
                  uint32_t limit, uint64_t base);

void iopm_intercept(void *iopm, uint16_t port, bool on);
/* MSRPM: two bits per MSR in three 2 KiB ranges (APM vol 2, 15.11). */
bool msrpm_intercept(void *msrpm, uint32_t msr, bool rd, bool wr);

const char *svm_exit_name(uint64_t code);

/* ---- helpers shared by the test hypervisors ---- */
/* A named guest address, for printing RIPs as labels in transcripts. */
struct svm_label {
    const char *name;
    const void *addr;
};
/* Print addr as "label" or "label+N" (the nearest label at or below it,
 * less than `window` bytes away).  Prints the raw address and returns false
 * if there is none. */
bool svm_print_label(const struct svm_label *labels, unsigned n, uint64_t addr,
                     uint64_t window);
/* A present-or-not 64-bit interrupt gate (CS = SEL_CODE64, IST 0) in an IDT of
 * 16-byte entries. */
void svm_idt_gate64(uint64_t *idt, int vector, const void *handler, bool present, int dpl);
/* CLGI; VMLOAD the guest's VMSAVE state; VMRUN; VMSAVE it back; VMLOAD the
 * host's; STGI.  Returns EXITCODE. */
uint64_t svm_run_switched(void *vmcb, void *host_save, struct svm_gprs *gprs);
/* Length of the instruction at p, for the few we use in guests (no NRIP
 * save on QEMU TCG); 0 if not recognised. */
int svm_insn_len(const uint8_t *p);

#endif
