/*
 * sev.h - the SEV / SEV-ES side of the runtime (lib/sev_es.c, boot64.S).
 *
 * The runtime finds out at boot whether it runs as an SEV or SEV-ES guest
 * (CPUID Fn8000_001F, SEV_STATUS MSR C001_0131h, APM vol 2, 15.34.1 and
 * 15.34.10) and then behaves as such a guest must; without SEV nothing
 * changes, so one kernel runs on QEMU, bare svmsim and as an encrypted guest:
 *
 *  - boot64.S: a 32-bit #VC handler answers CPUID through the GHCB MSR
 *    protocol before the C-bit is known; page tables set the C-bit on RAM
 *    and leave the GHCB pages (section .bss.shared) and MMIO shared;
 *  - sev_es.c: the 64-bit #VC handler turns each non-automatic exit
 *    (APM vol 2, 15.35.4-5) into a GHCB request (AMD pub. 56421, protocol
 *    version 2) and copies back only what the hypervisor may change;
 *  - sev_snp.c: as an SEV-SNP guest (SEV_STATUS bit 2) it also answers
 *    CPUID from the CPUID page, shares its GHCB pages by the RMP's rules,
 *    validates memory it accepts (PVALIDATE, 15.36.6), grants pages to
 *    higher VMPLs (RMPADJUST, 15.36.7) and talks to the AMD-SP with guest
 *    messages sealed under a VMPCK from its secrets page.
 */
#ifndef SEV_H
#define SEV_H
#include "rt.h"
#include "ghcb.h"

extern uint32_t sev_status;          /* SEV_STATUS as read at boot, 0 without SEV */
extern uint32_t sev_cbit;            /* C-bit position (CPUID Fn8000_001F EBX[5:0]) or 0 */
extern uint16_t ghcb_protocol;       /* negotiated GHCB protocol version */
extern uint64_t ghcb_hv_features;    /* HV_FEATURES (protocol 2), 0 before */
extern volatile uint64_t sev_es_last_vc;     /* error code (= exit code) of the latest #VC */
extern volatile uint32_t sev_es_vc_count;    /* #VCs taken so far */

static inline bool sev_active(void) { return sev_status & SEV_STATUS_SEV; }
static inline bool sev_es_active(void) { return sev_status & SEV_STATUS_ES; }
static inline bool sev_snp_active(void) { return sev_status & SEV_STATUS_SNP; }

void sev_es_init_bsp(void);          /* protocol negotiation, #VC handler, this CPU's GHCB */
void sev_es_init_ap(uint32_t apic_id);
void sev_es_terminate(unsigned reason_set, unsigned reason) __attribute__((noreturn));

/* One MSR-protocol exchange (the GHCB MSR is restored afterwards). */
uint64_t ghcb_msr_protocol(uint64_t request);

/*
 * GHCB page protocol.  ghcb_get() hands out this CPU's GHCB (its backup page
 * when a #VC interrupted a request in flight) with interrupts disabled;
 * ghcb_call() fills SW_EXITCODE/INFO1/INFO2, executes VMGEXIT and returns
 * SW_EXITINFO1[31:0] (GHCB_RESP_*); ghcb_put() releases it.
 */
struct ghcb *ghcb_get(void);
int ghcb_call(struct ghcb *g, uint64_t exit_code, uint64_t info1, uint64_t info2);
void ghcb_put(struct ghcb *g);
uint64_t ghcb_gpa(const struct ghcb *g);

/* The AP jump table (NAE event 8000_0005h) and AP reset hold (8000_0004h or
 * the MSR protocol's 006h): how an SEV-ES guest starts and parks its APs. */
extern uint16_t sev_es_ap_jump_table[];           /* boot64.S: {IP, CS} of an AP's start */
uint64_t sev_es_get_ap_jump_table(void);
int sev_es_set_ap_jump_table(uint64_t gpa);
extern volatile bool sev_es_park_with_msr_protocol;
void sev_es_ap_park(void) __attribute__((noreturn));

/* ---------------------------------------------------------------- SEV-SNP (sev_snp.c) */

/* PVALIDATE / RMPADJUST return codes (APM vol 2, 15.36.6-7) */
#define PVALIDATE_OK 0
#define PVALIDATE_FAIL_INPUT 1
#define PVALIDATE_FAIL_PERMISSION 2
#define PVALIDATE_FAIL_SIZEMISMATCH 6
#define RMP_PAGE_4K 0
#define RMP_PAGE_2M 1
/* RMPADJUST RDX: target VMPL 7:0, permission mask 15:8, VMSA 16 */
#define VMPL_R (1u << 0)
#define VMPL_W (1u << 1)
#define VMPL_XU (1u << 2)
#define VMPL_XS (1u << 3)
#define VMPL_ALL (VMPL_R | VMPL_W | VMPL_XU | VMPL_XS)
#define RMPADJUST_ATTRS(vmpl, perms, vmsa) \
    ((uint64_t)(vmpl) | ((uint64_t)(perms) << 8) | ((uint64_t)(vmsa) << 16))

extern char snp_cpuid_page[], snp_secrets_page[];     /* boot64.S: .sev_metadata */
extern uint64_t snp_vmpl;            /* the VMPL this code runs at (secrets page VMPCK to use) */

/* PVALIDATE: EAX = result; *unchanged = CF (Validated already had that value). */
static inline int pvalidate(uint64_t va, int page_size, int validate, bool *unchanged)
{
    int rc;
    bool cf;
    asm volatile(".byte 0xF2, 0x0F, 0x01, 0xFF"          /* PVALIDATE */
                 : "=a"(rc), "=@ccc"(cf) : "a"(va), "c"(page_size), "d"(validate) : "memory");
    if (unchanged)
        *unchanged = cf;
    return rc;
}

static inline int rmpadjust(uint64_t va, int page_size, uint64_t attrs)
{
    int rc;
    asm volatile(".byte 0xF3, 0x0F, 0x01, 0xFE"          /* RMPADJUST */
                 : "=a"(rc) : "a"(va), "c"(page_size), "d"(attrs) : "memory");
    return rc;
}

void sev_snp_init_bsp(void);         /* from sev_es_init_bsp: share the GHCB pages, register */
bool snp_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]);   /* the CPUID page's entry */
int snp_page_state_msr(uint64_t gpa, int op);                  /* one page, MSR protocol */
int snp_page_state(uint64_t gpa, uint64_t npages, int op, bool huge);   /* PSC NAE event */
void snp_make_shared(void *va, size_t npages);
/* Accept [gpa, gpa + len): private, validated (2 MiB where it can); counts. */
int snp_accept(uint64_t gpa, uint64_t len, unsigned *n2m, unsigned *n4k);

/* A guest message to the AMD-SP (GUEST_REQUEST NAE event) under VMPCK
 * ``vmpck``: 0 and the answer's payload, or the VMM/firmware error (>0) or
 * -1 if the answer does not authenticate. */
long snp_guest_request(int vmpck, uint8_t type, const void *req, size_t len, void *rsp,
                       size_t max, size_t *rsp_len);
/* MSG_REPORT_REQ with ``report_data`` at ``vmpl``: the 0x4A0-byte report. */
long snp_get_report(const uint8_t report_data[64], uint32_t vmpl, uint8_t report[0x4A0]);
/* The same through EXT_GUEST_REQUEST: the VMM also writes its certificate
 * table (VCEK, ASK, ARK) into ``certs`` (*certs_pages shared pages); too
 * small: VMM error INVALID_LEN (bits 63:32) and *certs_pages = pages needed. */
#define SNP_VMM_ERR_INVALID_LEN 1
long snp_get_ext_report(const uint8_t report_data[64], uint32_t vmpl, uint8_t report[0x4A0],
                        void *certs, uint64_t *certs_pages);
/* MSG_KEY_REQ: a key derived from the VCEK's secret and the guest facts
 * ``field_select`` names (bit 0 policy, 1 image ID, 2 family ID, 3
 * measurement, 4 guest SVN, 5 TCB version). */
#define SNP_KEY_FIELD_MEASUREMENT (1u << 3)
long snp_get_derived_key(uint64_t field_select, uint32_t vmpl, uint8_t key[32]);

/* VMSA fields (APM vol 2, table B-4) a guest fills to start a vCPU or a VMPL. */
#define VMSA_RBX 0x318
#define VMSA_RSI 0x330
#define VMSA_RDI 0x338
void snp_vmsa_set(uint8_t *vmsa, unsigned offset, uint64_t value);
/* A VMSA page for 32-bit protected mode, paging off, flat segments (code
 * selector ``cs``), at ``vmpl``, starting at ``rip``; SEV_FEATURES = SNPActive. */
void snp_vmsa_flat32(uint8_t *vmsa, unsigned vmpl, uint64_t rip, uint16_t cs);
/* Start the AP with this APIC ID from a VMSA of ours (AP_CREATION), at
 * ap_entry32 with the kernel's GDT: 0, or the GHCB's error. */
int snp_start_ap(uint32_t apic_id);

/* AP creation (GHCB 4.1.9) and RUN_VMPL (4.1.13). */
int snp_ap_create(uint32_t apic_id, unsigned vmpl, uint64_t vmsa_gpa, uint64_t sev_features,
                  unsigned request);
int snp_run_vmpl(unsigned vmpl);

#endif
