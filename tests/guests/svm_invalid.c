/*
 * svm_invalid: VMRUN with deliberately broken VMCBs, one per consistency
 * check, each expected to end in #VMEXIT with EXITCODE = VMEXIT_INVALID (-1).
 *
 * APM vol 2, 15.5.1 "Basic Operation" lists the "Canonicalization and
 * Consistency Checks" VMRUN makes on the guest state it is about to load;
 * 15.20 makes an impossible EVENTINJ fail VMRUN the same way; 15.16 reserves
 * ASID 0 for the host.  A valid baseline VMCB (a 64-bit guest that executes
 * HLT, intercepted) runs first, and each rule changes exactly one field of a
 * fresh copy of it.  After each failed VMRUN the host simply continues (the
 * host state is reloaded from VM_HSAVE_PA as for any #VMEXIT).
 *
 * Every rule below is checked by QEMU 7.2 TCG as well as stated by the APM,
 * so both give the recorded lines.  Checks of the APM that the transcript
 * does NOT contain, because QEMU does not make them or they cannot be
 * provoked on this CPU:
 * - EFER.LME/LMA set on a CPU without long mode (EPYC has long mode).
 * - The nested-paging checks (NP_ENABLE with host CR0.PG = 0, nCR3 MBZ bits,
 *   an invalid G_PAT; APM 15.25.3/15.25.4): QEMU makes none of them.
 * - EVENTINJ of an exception the guest mode cannot have (the APM's "impossible
 *   for the guest mode", e.g. #BR in 64-bit mode): QEMU only rejects vector 2
 *   and vectors >= 31; Bochs and KVM differ again.  Only vector 2 is recorded.
 * QEMU also rejects an exception-type EVENTINJ with vector 31, which the APM
 * does not list; that is not recorded either.
 *
 * EXITCODE is a 64-bit field and VMEXIT_INVALID is -1 (APM vol 2, appendix
 * C).  QEMU 7.2 stores the exit code zero-extended from 32 bits, so it
 * writes 0000_0000_FFFF_FFFFh.  The rule lines therefore print EXITCODE[31:0]
 * only, and one "[qemu]" line records bits 63:32 (svmsim must give FFFF_FFFFh
 * there, as the APM says).
 */
#include "svm.h"

static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t base_vmcb[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t host_save[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static struct svm_gprs gprs;
static int fails;

asm(".pushsection .text\n"
    "gi_hlt: hlt\n  jmp gi_hlt\n"
    ".popsection\n");
extern char gi_hlt[];

/* A beyond-any-physical-address table base: 4 KiB below 2^52 (the
 * architectural maximum), so a 12 KiB IOPM or 8 KiB MSRPM cannot fit. */
#define BEYOND_PA 0x000FFFFFFFFFF000ul

struct rule {
    const char *id, *what;
    void (*apply)(void *v);
};

static void r_efer_svme(void *v) { VMCB_U64(v, VMCB_EFER) &= ~EFER_SVME; }
static void r_cr0_nw(void *v) { VMCB_U64(v, VMCB_CR0) = (VMCB_U64(v, VMCB_CR0) & ~(1ul << 30)) | (1ul << 29); }
static void r_cr0_high(void *v) { VMCB_U64(v, VMCB_CR0) |= 1ul << 32; }
static void r_cr3_mbz(void *v) { VMCB_U64(v, VMCB_CR3) |= 1ul << 62; }
static void r_cr4_mbz(void *v) { VMCB_U64(v, VMCB_CR4) |= 1ul << 63; }
static void r_dr6_high(void *v) { VMCB_U64(v, VMCB_DR6) |= 1ul << 32; }
static void r_dr7_high(void *v) { VMCB_U64(v, VMCB_DR7) |= 1ul << 32; }
static void r_efer_mbz(void *v) { VMCB_U64(v, VMCB_EFER) |= 1ul << 63; }
static void r_lme_no_pae(void *v) { VMCB_U64(v, VMCB_CR4) &= ~(1ul << 5); }
static void r_lme_no_pe(void *v) { VMCB_U64(v, VMCB_CR0) &= ~CR0_PE; }
static void r_cs_l_d(void *v) { VMCB_U16(v, VMCB_CS + SEG_ATTRIB) |= 1u << 10; }
static void r_no_vmrun(void *v) { VMCB_U32(v, VMCB_INTERCEPT_MISC2) &= ~INTERCEPT_VMRUN; }
static void r_iopm(void *v) { VMCB_U64(v, VMCB_IOPM_BASE_PA) = BEYOND_PA; }
static void r_msrpm(void *v) { VMCB_U64(v, VMCB_MSRPM_BASE_PA) = BEYOND_PA; }
static void r_asid0(void *v) { VMCB_U32(v, VMCB_GUEST_ASID) = 0; }
static void r_evt_type1(void *v) { VMCB_U64(v, VMCB_EVENTINJ) = EVENT_VALID | (1ul << 8) | 0x20; }
static void r_evt_type7(void *v) { VMCB_U64(v, VMCB_EVENTINJ) = EVENT_VALID | (7ul << 8) | 0x20; }
static void r_evt_nmi_exc(void *v) { VMCB_U64(v, VMCB_EVENTINJ) = EVENT_VALID | EVENT_TYPE_EXCEPTION | 2; }

/* In the order of APM 15.5.1's list, then 15.20 and ASID. */
static const struct rule rules[] = {
    {"efer_svme", "guest EFER.SVME = 0", r_efer_svme},
    {"cr0_cd_nw", "CR0.CD = 0 and CR0.NW = 1", r_cr0_nw},
    {"cr0_high", "CR0[63:32] != 0 (bit 32)", r_cr0_high},
    {"cr3_mbz", "CR3 MBZ bit set (bit 62, long mode)", r_cr3_mbz},
    {"cr4_mbz", "CR4 MBZ bit set (bit 63)", r_cr4_mbz},
    {"dr6_high", "DR6[63:32] != 0 (bit 32)", r_dr6_high},
    {"dr7_high", "DR7[63:32] != 0 (bit 32)", r_dr7_high},
    {"efer_mbz", "EFER MBZ bit set (bit 63)", r_efer_mbz},
    {"lme_pg_no_pae", "EFER.LME = 1, CR0.PG = 1, CR4.PAE = 0", r_lme_no_pae},
    {"lme_pg_no_pe", "EFER.LME = 1, CR0.PG = 1, CR0.PE = 0", r_lme_no_pe},
    {"lme_pg_pae_cs_l_d", "EFER.LME, CR0.PG, CR4.PAE, CS.L and CS.D all 1", r_cs_l_d},
    {"no_vmrun_intercept", "VMRUN intercept clear", r_no_vmrun},
    {"iopm_beyond_pa", "IOPM_BASE_PA beyond the physical address space", r_iopm},
    {"msrpm_beyond_pa", "MSRPM_BASE_PA beyond the physical address space", r_msrpm},
    {"eventinj_type1", "EVENTINJ with reserved TYPE 1", r_evt_type1},
    {"eventinj_type7", "EVENTINJ with reserved TYPE 7", r_evt_type7},
    {"eventinj_exc_vector2", "EVENTINJ TYPE 3 (exception) with vector 2", r_evt_nmi_exc},
    {"asid0", "guest ASID 0", r_asid0},
};

static void build_baseline(void)
{
    vmcb_init(base_vmcb, iopm, msrpm);
    vmcb_guest_long(base_vmcb, (uint64_t)gi_hlt, (uint64_t)&guest_stack[sizeof(guest_stack)],
                    NULL, 0);
    VMCB_U32(base_vmcb, VMCB_INTERCEPT_MISC1) = INTERCEPT_HLT | INTERCEPT_SHUTDOWN;
    svm_vmsave(base_vmcb);
}

/* Fresh copy of the baseline, broken by `apply`, run once; the exit code. */
static uint64_t try_vmrun(void (*apply)(void *v))
{
    memcpy(vmcb, base_vmcb, sizeof(vmcb));
    if (apply)
        apply(vmcb);
    svm_clgi();
    svm_vmload(vmcb);
    svm_run_guest(vmcb, &gprs);
    svm_vmsave(vmcb);
    svm_vmload(host_save);
    svm_stgi();
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}

/* VMEXIT_INVALID by its low 32 bits (see the header on QEMU's high half). */
static bool is_invalid(uint64_t code)
{
    return (uint32_t)code == 0xFFFFFFFFu;
}

static const char *code_str(uint64_t code)
{
    return is_invalid(code) ? "VMEXIT_INVALID" : svm_exit_name(code);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    struct svm_info info;
    kprintf("svm_invalid: VMRUN consistency checks (APM vol 2, 15.5.1)\n");
    svm_cpuid(&info);
    const char *err = svm_enable(hsave);
    kprintf("enable: %s\n", err ? err : "ok");
    if (err)
        return 1;
    svm_vmsave(host_save);
    build_baseline();

    uint64_t code = try_vmrun(NULL);
    kprintf("baseline: exitcode=0x%lx (%s) rip=%s\n", code, code_str(code),
            VMCB_U64(vmcb, VMCB_RIP) == (uint64_t)gi_hlt ? "gi_hlt" : "?");
    if (code != SVM_EXIT_HLT) {
        kprintf("FAIL: the baseline VMCB must run\n");
        return 1;
    }
    uint64_t high = 0;
    for (unsigned i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        code = try_vmrun(rules[i].apply);
        kprintf("rule %s (%s): exitcode[31:0]=0x%lx (%s)\n", rules[i].id, rules[i].what,
                code & 0xFFFFFFFFu, code_str(code));
        if (!is_invalid(code)) {
            kprintf("FAIL: expected VMEXIT_INVALID\n");
            fails++;
        } else if (i == 0) {
            high = code >> 32;
            kprintf("[qemu] VMEXIT_INVALID EXITCODE[63:32] = 0x%lx (APM: 0xffffffff)\n", high);
        } else if (code >> 32 != high) {
            kprintf("FAIL: EXITCODE[63:32] differs between rules\n");
            fails++;
        }
    }
    /* The host is still sound: the baseline runs again. */
    code = try_vmrun(NULL);
    kprintf("baseline again: exitcode=0x%lx (%s)\n", code, code_str(code));
    fails += code != SVM_EXIT_HLT;
    kprintf("svm_invalid: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
