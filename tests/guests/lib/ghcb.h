/*
 * ghcb.h - the Guest-Hypervisor Communication Block of an SEV-ES guest and
 * the GHCB protocol's numbers (AMD pub. 56421, GHCB protocol version 2).
 *
 * The same layout is declared as data for the hypervisor side in
 * svmsim/sev/ghcb.py; tests/test_ghcb.py compiles static assertions generated
 * from that table against this header, so the two cannot drift apart.
 * Register fields sit at their VMSA offsets (APM vol 2, table B-4); each
 * save-area field has a bit in valid_bitmap at (offset / 8).
 */
#ifndef GHCB_H
#define GHCB_H
#include "rt.h"

struct ghcb {
    uint8_t reserved_000[0x0CB];
    uint8_t cpl;                         /* 0CBh */
    uint8_t reserved_0cc[0x140 - 0x0CC];
    uint64_t xss;                        /* 140h */
    uint8_t reserved_148[0x160 - 0x148];
    uint64_t dr7;                        /* 160h */
    uint8_t reserved_168[0x178 - 0x168];
    uint64_t rip;                        /* 178h */
    uint8_t reserved_180[0x1D8 - 0x180];
    uint64_t rsp;                        /* 1D8h */
    uint8_t reserved_1e0[0x1F8 - 0x1E0];
    uint64_t rax;                        /* 1F8h */
    uint8_t reserved_200[0x308 - 0x200];
    uint64_t rcx, rdx, rbx;              /* 308h, 310h, 318h */
    uint8_t reserved_320[0x328 - 0x320];
    uint64_t rbp, rsi, rdi;              /* 328h .. */
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint8_t reserved_380[0x390 - 0x380];
    uint64_t sw_exit_code;               /* 390h */
    uint64_t sw_exit_info_1;             /* 398h */
    uint64_t sw_exit_info_2;             /* 3A0h */
    uint64_t sw_scratch;                 /* 3A8h */
    uint8_t reserved_3b0[0x3E8 - 0x3B0];
    uint64_t xcr0;                       /* 3E8h */
    uint64_t valid_bitmap[2];            /* 3F0h */
    uint64_t x87_state_gpa;              /* 400h */
    uint8_t reserved_408[0x800 - 0x408];
    uint8_t shared_buffer[0x7F0];        /* 800h: scratch area for string I/O and MMIO */
    uint8_t reserved_ff0[0x0A];
    uint16_t protocol_version;           /* FFAh */
    uint32_t usage;                      /* FFCh */
} __attribute__((packed, aligned(4096)));

#define GHCB_VALID_BIT(field) (__builtin_offsetof(struct ghcb, field) / 8)
#define GHCB_SET(g, field, value) do {                                          \
        (g)->field = (value);                                                    \
        (g)->valid_bitmap[GHCB_VALID_BIT(field) / 64] |= 1ul << (GHCB_VALID_BIT(field) % 64); \
    } while (0)
#define GHCB_IS_VALID(g, field) \
    (((g)->valid_bitmap[GHCB_VALID_BIT(field) / 64] >> (GHCB_VALID_BIT(field) % 64)) & 1)

/* The GHCB MSR and the protocol versions this runtime speaks. */
#define MSR_GHCB 0xC0010130
#define MSR_SEV_STATUS 0xC0010131
#define SEV_STATUS_SEV (1u << 0)
#define SEV_STATUS_ES (1u << 1)
#define SEV_STATUS_SNP (1u << 2)
#define GHCB_PROTOCOL_MIN 1
#define GHCB_PROTOCOL_MAX 2

/* MSR protocol (request/response code in GHCB MSR bits 11:0). */
#define GHCB_MSR_INFO_MASK 0xFFFul
#define GHCB_MSR_SEV_INFO_RESP 0x001
#define GHCB_MSR_SEV_INFO_REQ 0x002
#define GHCB_MSR_CPUID_REQ 0x004
#define GHCB_MSR_CPUID_RESP 0x005
#define GHCB_MSR_AP_RESET_HOLD_REQ 0x006
#define GHCB_MSR_AP_RESET_HOLD_RESP 0x007
#define GHCB_MSR_PREF_GPA_REQ 0x010
#define GHCB_MSR_PREF_GPA_RESP 0x011
#define GHCB_MSR_REG_GPA_REQ 0x012
#define GHCB_MSR_REG_GPA_RESP 0x013
#define GHCB_MSR_PSC_REQ 0x014             /* SEV-SNP: GFN 51:12, operation 55:52 */
#define GHCB_MSR_PSC_RESP 0x015            /* error code 63:32, 0 = done */
#define GHCB_MSR_VMPL_REQ 0x016            /* SEV-SNP: run at the VMPL in 39:32 */
#define GHCB_MSR_VMPL_RESP 0x017           /* error code 63:32 */
#define GHCB_MSR_HV_FEATURES_REQ 0x080
#define GHCB_MSR_HV_FEATURES_RESP 0x081
#define GHCB_MSR_TERM_REQ 0x100
#define GHCB_GPA_NONE 0xFFFFFFFFFFFFFul   /* "no GFN" in bits 63:12 */

#define GHCB_CPUID_REQ(fn, reg) (((uint64_t)(fn) << 32) | ((uint64_t)(reg) << 30) | GHCB_MSR_CPUID_REQ)
#define GHCB_TERM_REQ(set, reason) ((((uint64_t)(reason) & 0xFF) << 16) | \
                                    (((uint64_t)(set) & 0xF) << 12) | GHCB_MSR_TERM_REQ)
#define GHCB_TERM_GENERAL 0
#define GHCB_TERM_PROTOCOL_UNSUPPORTED 1
#define GHCB_TERM_SNP_UNSUPPORTED 2

/* SEV-SNP (GHCB spec 56421, 4.1.6-4.1.13): page state change operations,
 * HV_FEATURES bits, AP creation requests. */
#define GHCB_PSC_MSR(gfn, op) ((((uint64_t)(op) & 0xF) << 52) | \
                               (((uint64_t)(gfn) & 0xFFFFFFFFFFul) << 12) | GHCB_MSR_PSC_REQ)
#define GHCB_VMPL_MSR(vmpl) ((((uint64_t)(vmpl) & 0xFF) << 32) | GHCB_MSR_VMPL_REQ)
#define SNP_PAGE_PRIVATE 1
#define SNP_PAGE_SHARED 2
#define SNP_PAGE_PSMASH 3
#define SNP_PAGE_UNSMASH 4
#define GHCB_HV_FT_SNP (1ul << 0)
#define GHCB_HV_FT_SNP_AP_CREATION (1ul << 1)
#define GHCB_HV_FT_SNP_MULTI_VMPL (1ul << 5)
#define SNP_AP_CREATE_ON_INIT 0
#define SNP_AP_CREATE 1
#define SNP_AP_DESTROY 2

/* The PSC NAE event's descriptor, in the GHCB's shared buffer (Linux
 * struct snp_psc_desc): entries cur_entry..end_entry are processed. */
struct psc_hdr {
    uint16_t cur_entry;
    uint16_t end_entry;
    uint32_t reserved;
} __attribute__((packed));
#define PSC_ENTRY(gfn, op, huge) (((uint64_t)(gfn) << 12) | ((uint64_t)(op) << 52) | \
                                  ((uint64_t)(huge) << 56))
#define PSC_MAX_ENTRIES 253
struct psc_desc {
    struct psc_hdr hdr;
    uint64_t entries[PSC_MAX_ENTRIES];
} __attribute__((packed));

/* SW_EXITCODE values: the SVM exit codes plus the GHCB spec's own. */
#define SVM_EXIT_READ_DR7 0x027
#define SVM_EXIT_WRITE_DR7 0x037
#define SVM_EXIT_RDTSC 0x06E
#define SVM_EXIT_RDPMC 0x06F
#define SVM_EXIT_CPUID 0x072
#define SVM_EXIT_INVD 0x076
#define SVM_EXIT_IOIO 0x07B
#define SVM_EXIT_MSR 0x07C
#define SVM_EXIT_VMMCALL 0x081
#define SVM_EXIT_RDTSCP 0x087
#define SVM_EXIT_WBINVD 0x089
#define SVM_EXIT_MONITOR 0x08A
#define SVM_EXIT_MWAIT 0x08B
#define SVM_EXIT_NPF 0x400
#define SVM_VMGEXIT_MMIO_READ 0x80000001ul
#define SVM_VMGEXIT_MMIO_WRITE 0x80000002ul
#define SVM_VMGEXIT_AP_HLT_LOOP 0x80000004ul
#define SVM_VMGEXIT_AP_JUMP_TABLE 0x80000005ul
#define SVM_VMGEXIT_PSC 0x80000010ul
#define SVM_VMGEXIT_GUEST_REQUEST 0x80000011ul
#define SVM_VMGEXIT_EXT_GUEST_REQUEST 0x80000012ul
#define SVM_VMGEXIT_AP_CREATION 0x80000013ul
#define SVM_VMGEXIT_SNP_RUN_VMPL 0x80000018ul
#define SVM_VMGEXIT_HV_FEATURES 0x8000FFFDul
#define SVM_VMGEXIT_TERM_REQUEST 0x8000FFFEul
#define SVM_VMGEXIT_UNSUPPORTED 0x8000FFFFul

/* SW_EXITINFO1[31:0] in the hypervisor's answer. */
#define GHCB_RESP_OK 0
#define GHCB_RESP_ISSUE_EXCEPTION 1     /* SW_EXITINFO2: the event, EVENTINJ format */
#define GHCB_RESP_MALFORMED_INPUT 2     /* SW_EXITINFO2: GHCB_ERR_* */

/* The IOIO exit information (APM vol 2, 15.10.2), as the #VC handler builds it. */
#define IOIO_TYPE_IN (1u << 0)
#define IOIO_STR (1u << 2)
#define IOIO_REP (1u << 3)
#define IOIO_SZ8 (1u << 4)
#define IOIO_SZ16 (1u << 5)
#define IOIO_SZ32 (1u << 6)
#define IOIO_A16 (1u << 7)
#define IOIO_A32 (1u << 8)
#define IOIO_A64 (1u << 9)

/* VMGEXIT: REP VMMCALL (F3 0F 01 D9), APM vol 3. */
static inline void vmgexit(void) { asm volatile("rep; vmmcall" ::: "memory"); }

#endif
