/*
 * sev_snp.c - the runtime as an SEV-SNP guest (see sev.h).
 *
 * Sources: APM vol 2, 15.36 (the RMP, PVALIDATE 15.36.6, RMPADJUST and VMPLs
 * 15.36.7, the #VC of an access to an unvalidated page); AMD pub. 56421, the
 * GHCB spec (MSR protocol page state change and register GPA, the PSC,
 * GUEST_REQUEST, AP_CREATION and RUN_VMPL NAE events); the SNP firmware ABI
 * (the secrets page, guest messages: lib/snp_msg.c).
 *
 * What the hypervisor can do against us is limited by the RMP: a page it
 * takes back is no longer validated (our next access is #VC(404h)), a page
 * it gives us is not validated until we PVALIDATE it.  So every page state
 * change here goes with the matching PVALIDATE, and a PVALIDATE that finds
 * a page already validated (CF = 1) when we just asked for it to be made
 * private means the hypervisor is replaying a page: we stop.
 */
#include "sev.h"
#include "snp_msg.h"

#define PAGE_4K 4096ul
#define PAGE_2M (2ul << 20)
#define SECRETS_VMPCK0 0x20          /* VMPCK0..3 at 20h, 40h, 60h, 80h */

uint64_t snp_vmpl;
extern char __shared_start[], __shared_end[];
extern uint64_t pt_shared[512];      /* boot64.S: 4 KiB PTEs of the shared section's 2 MiB */

/* The request and response pages of guest messages: shared with the VMM. */
static uint8_t msg_req[SNP_MSG_PAGE] __attribute__((section(".bss.shared"), aligned(4096)));
static uint8_t msg_rsp[SNP_MSG_PAGE] __attribute__((section(".bss.shared"), aligned(4096)));
static uint8_t msg_private[SNP_MSG_PAGE] __attribute__((aligned(4096)));
static uint8_t vmpl_probe[PAGE_4K] __attribute__((aligned(4096)));
static uint64_t msg_seqno[4];        /* the last sequence number used with each VMPCK */

static void snp_fail(void)
{
    sev_es_terminate(1, 0);          /* reason set 1: this runtime's own */
}

/* ================================================================ CPUID */

/* Leaves whose answer depends on ECX (Linux snp_cpuid_get_validated_func). */
static bool has_subleaves(uint32_t leaf)
{
    return leaf == 4 || leaf == 7 || leaf == 0xB || leaf == 0xD || leaf == 0xF || leaf == 0x10
           || leaf == 0x8000001D || leaf == 0x80000020;
}

bool snp_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    const uint32_t count = *(const uint32_t *)snp_cpuid_page;
    const uint8_t *e = (const uint8_t *)snp_cpuid_page + 16;
    for (uint32_t i = 0; i < count && i < 64; i++, e += 0x30) {
        if (*(const uint32_t *)e == leaf && (!has_subleaves(leaf) || *(const uint32_t *)(e + 4) == sub)) {
            memcpy(r, e + 24, 16);
            return true;
        }
    }
    r[0] = r[1] = r[2] = r[3] = 0;   /* outside the table: zero, as AMD reports unknown leaves */
    return false;
}

/* ================================================================ page state */

int snp_page_state_msr(uint64_t gpa, int op)
{
    uint64_t r = ghcb_msr_protocol(GHCB_PSC_MSR(gpa >> 12, op));
    if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_PSC_RESP)
        return -1;
    return (int)(r >> 32);
}

/* The PSC NAE event: the descriptor goes in the GHCB's shared buffer; the
 * hypervisor advances cur_entry as it goes and may return before the end. */
int snp_page_state(uint64_t gpa, uint64_t npages, int op, bool huge)
{
    uint64_t step = huge ? PAGE_2M : PAGE_4K;
    while (npages) {
        struct ghcb *g = ghcb_get();
        struct psc_desc *d = (struct psc_desc *)g->shared_buffer;
        unsigned n = npages < PSC_MAX_ENTRIES ? (unsigned)npages : PSC_MAX_ENTRIES;
        g->valid_bitmap[0] = g->valid_bitmap[1] = 0;
        d->hdr.cur_entry = 0;
        d->hdr.end_entry = (uint16_t)(n - 1);
        d->hdr.reserved = 0;
        for (unsigned i = 0; i < n; i++)
            d->entries[i] = PSC_ENTRY((gpa + i * step) >> 12, op, huge);
        int tries = 0;
        while (d->hdr.cur_entry <= d->hdr.end_entry) {
            GHCB_SET(g, sw_scratch, ghcb_gpa(g) + __builtin_offsetof(struct ghcb, shared_buffer));
            if (ghcb_call(g, SVM_VMGEXIT_PSC, 0, 0) != GHCB_RESP_OK || g->sw_exit_info_2 ||
                ++tries > PSC_MAX_ENTRIES) {
                ghcb_put(g);
                return -1;
            }
        }
        ghcb_put(g);
        gpa += n * step;
        npages -= n;
    }
    return 0;
}

/* The page table entry that maps a page of the shared section. */
static uint64_t *shared_pte(uint64_t va)
{
    return &pt_shared[(va >> 12) & 511];
}

/* A private page of ours becomes shared (Linux snp_set_memory_shared): we
 * rescind its validation while it is still mapped private, ask the
 * hypervisor to make it shared, then map it without the C-bit. */
void snp_make_shared(void *p, size_t npages)
{
    uint64_t va = (uint64_t)p;
    for (size_t i = 0; i < npages; i++, va += PAGE_4K) {
        if (pvalidate(va, RMP_PAGE_4K, 0, NULL) != PVALIDATE_OK)
            snp_fail();
        if (snp_page_state_msr(va, SNP_PAGE_SHARED))
            snp_fail();
        *shared_pte(va) &= ~(1ul << sev_cbit);
        asm volatile("invlpg (%0)" : : "r"(va) : "memory");
    }
}

/* Accept memory the launch did not give us (Linux's accept_memory): private
 * by page state change, then validated; 2 MiB at a time where the range
 * allows, 4 KiB pages where the hypervisor gave 4 KiB RMP entries
 * (PVALIDATE FAIL_SIZEMISMATCH, 15.36.6) or at the range's ends. */
int snp_accept(uint64_t gpa, uint64_t len, unsigned *n2m, unsigned *n4k)
{
    uint64_t end = gpa + len;
    bool unchanged;
    *n2m = *n4k = 0;
    while (gpa < end) {
        if (!(gpa & (PAGE_2M - 1)) && end - gpa >= PAGE_2M) {
            if (snp_page_state(gpa, 1, SNP_PAGE_PRIVATE, true))
                return -1;
            int rc = pvalidate(gpa, RMP_PAGE_2M, 1, &unchanged);
            if (rc == PVALIDATE_OK && !unchanged) {
                (*n2m)++;
                gpa += PAGE_2M;
                continue;
            }
            if (rc != PVALIDATE_FAIL_SIZEMISMATCH)
                return -1;
            for (uint64_t a = gpa; a < gpa + PAGE_2M; a += PAGE_4K, (*n4k)++)
                if (pvalidate(a, RMP_PAGE_4K, 1, &unchanged) != PVALIDATE_OK || unchanged)
                    return -1;
            gpa += PAGE_2M;
            continue;
        }
        /* 4 KiB pages up to the next 2 MiB boundary (or the end): one PSC. */
        uint64_t stop = (gpa + PAGE_2M) & ~(PAGE_2M - 1);
        uint64_t n = ((stop < end ? stop : end) - gpa) / PAGE_4K;
        if (snp_page_state(gpa, n, SNP_PAGE_PRIVATE, false))
            return -1;
        for (; n; n--, gpa += PAGE_4K, (*n4k)++)
            if (pvalidate(gpa, RMP_PAGE_4K, 1, &unchanged) != PVALIDATE_OK || unchanged)
                return -1;
    }
    return 0;
}

/* ================================================================ set-up */

void sev_snp_init_bsp(void)
{
    if (!(ghcb_hv_features & GHCB_HV_FT_SNP) || ghcb_protocol < 2)
        sev_es_terminate(0, GHCB_TERM_SNP_UNSUPPORTED);
    /* Our VMPL, as Linux finds it: only VMPL0 may lower VMPL1's rights. */
    snp_vmpl = rmpadjust((uint64_t)vmpl_probe, RMP_PAGE_4K, RMPADJUST_ATTRS(1, 0, 0)) ? 1 : 0;
    snp_make_shared(__shared_start, (size_t)(__shared_end - __shared_start) / PAGE_4K);
}

/* ================================================================ guest messages */

/* One guest message (GHCB 4.1.8): sealed in private memory, copied to the
 * shared request page; the answer copied out of the shared response page
 * before it is opened.  ``certs``: the extended form, with the certificate
 * buffer in RAX (gPA) and RBX (pages); *certs_pages then says how many
 * pages the VMM needed when it answers INVALID_LEN. */
static long guest_message(int vmpck, uint8_t type, const void *req, size_t len, void *rsp,
                          size_t max, size_t *rsp_len, void *certs, uint64_t *certs_pages)
{
    const uint8_t *key = (const uint8_t *)snp_secrets_page + SECRETS_VMPCK0 + 0x20 * vmpck;
    uint64_t seqno = msg_seqno[vmpck] + 1;
    snp_msg_seal(key, (uint8_t)vmpck, seqno, type, req, len, msg_private);
    memcpy(msg_req, msg_private, SNP_MSG_PAGE);
    struct ghcb *g = ghcb_get();
    g->valid_bitmap[0] = g->valid_bitmap[1] = 0;
    if (certs) {
        GHCB_SET(g, rax, (uint64_t)certs);
        GHCB_SET(g, rbx, *certs_pages);
    }
    int resp = ghcb_call(g, certs ? SVM_VMGEXIT_EXT_GUEST_REQUEST : SVM_VMGEXIT_GUEST_REQUEST,
                         (uint64_t)msg_req, (uint64_t)msg_rsp);
    uint64_t err = g->sw_exit_info_2;
    if (certs && (err >> 32) == SNP_VMM_ERR_INVALID_LEN && GHCB_IS_VALID(g, rbx))
        *certs_pages = g->rbx;
    ghcb_put(g);
    if (resp != GHCB_RESP_OK)
        return 0x100000000l;
    if (err)
        return (long)err;            /* VMM error 63:32, firmware error 31:0 */
    memcpy(msg_private, msg_rsp, SNP_MSG_PAGE);
    /* The sequence number advances whether or not the answer authenticates:
     * the AMD-SP has seen the request (Linux snp_inc_msg_seqno). */
    msg_seqno[vmpck] = seqno + 1;
    if (snp_msg_open(key, msg_private, seqno + 1, type + 1, rsp, max, rsp_len))
        return -1;
    return 0;
}

long snp_guest_request(int vmpck, uint8_t type, const void *req, size_t len, void *rsp,
                       size_t max, size_t *rsp_len)
{
    return guest_message(vmpck, type, req, len, rsp, max, rsp_len, NULL, NULL);
}

static struct snp_report_req report_req;
static struct snp_report_rsp report_rsp;

static long report(const uint8_t report_data[64], uint32_t vmpl, uint8_t out[0x4A0], void *certs,
                   uint64_t *certs_pages)
{
    size_t len;
    memset(&report_req, 0, sizeof report_req);
    memcpy(report_req.user_data, report_data, 64);
    report_req.vmpl = vmpl;
    long rc = guest_message((int)snp_vmpl, SNP_MSG_REPORT_REQ, &report_req, sizeof report_req,
                            &report_rsp, sizeof report_rsp, &len, certs, certs_pages);
    if (rc)
        return rc;
    if (len < sizeof report_rsp || report_rsp.status || report_rsp.report_size != 0x4A0)
        return 0x200000000l | report_rsp.status;
    memcpy(out, report_rsp.report, 0x4A0);
    return 0;
}

long snp_get_report(const uint8_t report_data[64], uint32_t vmpl, uint8_t out[0x4A0])
{
    return report(report_data, vmpl, out, NULL, NULL);
}

long snp_get_ext_report(const uint8_t report_data[64], uint32_t vmpl, uint8_t out[0x4A0],
                        void *certs, uint64_t *certs_pages)
{
    uint64_t have = *certs_pages;
    long rc = report(report_data, vmpl, out, certs, certs_pages);
    if ((rc >> 32) == SNP_VMM_ERR_INVALID_LEN && *certs_pages > have) {
        /* The AMD-SP never saw the request: send it as a plain one so our
         * sequence number and the firmware's stay together (as Linux does). */
        uint8_t scratch[0x4A0];
        report(report_data, vmpl, scratch, NULL, NULL);
    }
    return rc;
}

long snp_get_derived_key(uint64_t field_select, uint32_t vmpl, uint8_t key[32])
{
    struct snp_key_req req;
    struct snp_key_rsp rsp;
    size_t len;
    memset(&req, 0, sizeof req);
    req.root_key_select = 0;         /* the VCEK's secret */
    req.guest_field_select = field_select;
    req.vmpl = vmpl;
    long rc = snp_guest_request((int)snp_vmpl, SNP_MSG_KEY_REQ, &req, sizeof req, &rsp, sizeof rsp,
                                &len);
    if (rc)
        return rc;
    if (len < sizeof rsp || rsp.status)
        return 0x200000000l | rsp.status;
    memcpy(key, rsp.key, 32);
    memset(&rsp, 0, sizeof rsp);
    return 0;
}

/* ================================================================ VMSAs, APs, VMPLs */

void snp_vmsa_set(uint8_t *v, unsigned off, uint64_t x)
{
    memcpy(v + off, &x, 8);
}

static void vmsa_seg(uint8_t *v, int index, uint16_t sel, uint16_t attrib, uint32_t limit, uint64_t base)
{
    uint8_t *s = v + 16 * index;     /* ES CS SS DS FS GS GDTR LDTR IDTR TR, 16 bytes each */
    memcpy(s, &sel, 2);
    memcpy(s + 2, &attrib, 2);
    memcpy(s + 4, &limit, 4);
    memcpy(s + 8, &base, 8);
}

void snp_vmsa_flat32(uint8_t *v, unsigned vmpl, uint64_t rip, uint16_t cs)
{
    memset(v, 0, PAGE_4K);
    for (int s = 0; s < 6; s++)
        vmsa_seg(v, s, s == 1 ? cs : 0x10, s == 1 ? 0xC9B : 0xC93, 0xFFFFFFFF, 0);
    vmsa_seg(v, 6, 0, 0, 0xFFFF, 0);                      /* GDTR */
    vmsa_seg(v, 7, 0, 0x82, 0xFFFF, 0);                   /* LDTR */
    vmsa_seg(v, 8, 0, 0, 0xFFFF, 0);                      /* IDTR */
    vmsa_seg(v, 9, 0, 0x8B, 0xFFFF, 0);                   /* TR */
    v[0xCA] = (uint8_t)vmpl;                              /* VMPL */
    snp_vmsa_set(v, 0xD0, 1ul << 12);                     /* EFER.SVME */
    snp_vmsa_set(v, 0x158, 0x11);                         /* CR0: PE, ET */
    snp_vmsa_set(v, 0x160, 0x400);                        /* DR7 */
    snp_vmsa_set(v, 0x168, 0xFFFF0FF0);                   /* DR6 */
    snp_vmsa_set(v, 0x170, 0x2);                          /* RFLAGS */
    snp_vmsa_set(v, 0x178, rip);
    snp_vmsa_set(v, 0x268, 0x0007040600070406ul);         /* G_PAT */
    snp_vmsa_set(v, 0x3B0, 1);                            /* SEV_FEATURES: SNPActive */
    snp_vmsa_set(v, 0x3E8, 1);                            /* XCR0 */
    *(uint32_t *)(v + 0x408) = 0x1F80;                    /* MXCSR */
    *(uint16_t *)(v + 0x410) = 0x037F;                    /* x87 FCW */
}

/* One VMSA page per AP (one more, so none need be 2 MiB aligned: KVM
 * refuses such a VMSA, an SNP erratum). */
static uint8_t ap_vmsas[MAX_CPUS + 1][PAGE_4K] __attribute__((aligned(4096)));
extern char ap_entry32[], gdt[], gdt_end[];

int snp_start_ap(uint32_t apic_id)
{
    unsigned i = apic_id;
    for (unsigned k = 0; k <= apic_id; k++)
        if (!((uint64_t)ap_vmsas[k] & (PAGE_2M - 1))) {
            i++;
            break;
        }
    uint8_t *v = ap_vmsas[i];
    /* An AP whose VMSA page we rewrite must not be running from it: take
     * the VMSA attribute away first (RMPADJUST by VMPL0, 15.36.7). */
    if (rmpadjust((uint64_t)v, RMP_PAGE_4K, RMPADJUST_ATTRS(1, 0, 0)))
        return -1;
    snp_vmsa_flat32(v, 0, (uint64_t)ap_entry32, 0x18);
    vmsa_seg(v, 6, 0, 0, (uint32_t)(gdt_end - gdt - 1), (uint64_t)gdt);
    if (rmpadjust((uint64_t)v, RMP_PAGE_4K, RMPADJUST_ATTRS(1, 0, 1)))
        return -1;
    return snp_ap_create(apic_id, 0, (uint64_t)v, 1, SNP_AP_CREATE);
}

int snp_ap_create(uint32_t apic_id, unsigned vmpl, uint64_t vmsa_gpa, uint64_t sev_features,
                  unsigned request)
{
    struct ghcb *g = ghcb_get();
    g->valid_bitmap[0] = g->valid_bitmap[1] = 0;
    GHCB_SET(g, rax, sev_features);
    int resp = ghcb_call(g, SVM_VMGEXIT_AP_CREATION,
                         (uint64_t)apic_id << 32 | (uint64_t)(vmpl & 0xFF) << 16 | request, vmsa_gpa);
    ghcb_put(g);
    return resp;
}

/* Leave this VMPL for ``vmpl`` (GHCB MSR protocol 016h): returns when the
 * hypervisor runs this VMPL again (another RUN_VMPL names it). */
int snp_run_vmpl(unsigned vmpl)
{
    uint64_t r = ghcb_msr_protocol(GHCB_VMPL_MSR(vmpl));
    if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_VMPL_RESP)
        return -1;
    return (int)(r >> 32);
}
