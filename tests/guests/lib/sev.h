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
 *    version 2) and copies back only what the hypervisor may change.
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

#endif
