/*
 * snp_vmpl: a two-VMPL SEV-SNP guest (issue 10 item 4; tests/test_snp_guest.py).
 *
 * This kernel is a small "SVSM": it runs at VMPL0, the most privileged
 * level (APM vol 2, 15.36.7), and starts a second guest context at VMPL1 on
 * the same vCPU, as an SVSM starts the OS it protects:
 *  1. RMPADJUST gives VMPL1 its rights, page by page: read + supervisor
 *     execute on its code (snp_vmpl1.S), read + write on its data, read on
 *     one more page; a fourth page stays VMPL0's alone.  The page that will
 *     hold VMPL1's VMSA gets the VMSA attribute (only VMPL0 may set it);
 *  2. it writes VMPL1's initial state into that page (32-bit protected
 *     mode, VMPL = 1, SEV_FEATURES = SNPActive) and asks the hypervisor to
 *     use it (AP_CREATION NAE event, VMPL 1 in SW_EXITINFO1[23:16]);
 *  3. RUN_VMPL 1 (GHCB MSR protocol 016h): VMPL1 runs until it asks for
 *     VMPL0 back; VMPL0 prints what VMPL1 did;
 *  4. RUN_VMPL 1 again: VMPL1 reads the VMPL0-only page and the RMP stops
 *     it with #VMEXIT(NPF), EXITINFO1 bits 31 (RMP) and 36 (VMPL), 15.36.10.
 */
#include "rt.h"
#include "sev.h"

#define PAGE 4096

static uint8_t vmpl1_data[PAGE] __attribute__((aligned(PAGE)));
static uint8_t vmpl1_ro[PAGE] __attribute__((aligned(PAGE)));
static uint8_t vmpl0_only[PAGE] __attribute__((aligned(PAGE)));
static uint8_t vmpl1_vmsa[2 * PAGE] __attribute__((aligned(PAGE)));   /* one page is not 2 MiB aligned */
extern char vmpl1_entry[];

/* VMPL1's entry state (APM vol 2, table B-4): 32-bit protected mode,
 * paging off, VMPL 1; its three pages in EBX, ESI, EDI. */
static void build_vmsa(uint8_t *v)
{
    snp_vmsa_flat32(v, 1, (uint64_t)vmpl1_entry, 0x08);
    snp_vmsa_set(v, VMSA_RBX, (uint64_t)vmpl1_data);
    snp_vmsa_set(v, VMSA_RSI, (uint64_t)vmpl1_ro);
    snp_vmsa_set(v, VMSA_RDI, (uint64_t)vmpl0_only);
}

static void grant(const char *what, void *page, unsigned perms, int vmsa)
{
    int rc = rmpadjust((uint64_t)page, RMP_PAGE_4K, RMPADJUST_ATTRS(1, perms, vmsa));
    kprintf("RMPADJUST %s %lx for VMPL1, mask %x%s: %d\n", what, (uint64_t)page, perms,
            vmsa ? " + VMSA" : "", rc);
    if (rc)
        exit_qemu(2);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    if (!sev_snp_active() || snp_vmpl != 0) {
        kprintf("not an SEV-SNP guest at VMPL0\n");
        return 1;
    }
    kprintf("VMPL0: SEV-SNP guest, hypervisor features %x\n", (unsigned)ghcb_hv_features);
    if (!(ghcb_hv_features & GHCB_HV_FT_SNP_MULTI_VMPL)) {
        kprintf("the hypervisor does not run several VMPLs\n");
        return 1;
    }
    uint8_t *vmsa = ((uint64_t)vmpl1_vmsa & 0x1FFFFF) ? vmpl1_vmsa : vmpl1_vmsa + PAGE;
    memcpy(vmpl1_ro, "read-only for VMPL1", 20);
    memcpy(vmpl0_only, "VMPL0's own secret", 19);

    /* 1. VMPL1's rights; an RMPADJUST for VMPL0 itself is refused. */
    grant("code", vmpl1_entry, VMPL_R | VMPL_XS, 0);
    grant("data", vmpl1_data, VMPL_R | VMPL_W, 0);
    grant("read-only page", vmpl1_ro, VMPL_R, 0);
    kprintf("RMPADJUST of VMPL0's own rights: %d (a VMPL may only lower a higher one's)\n",
            rmpadjust((uint64_t)vmpl0_only, RMP_PAGE_4K, RMPADJUST_ATTRS(0, VMPL_R, 0)));

    /* 2. VMPL1's VMSA and AP creation. */
    build_vmsa(vmsa);
    grant("VMSA page", vmsa, 0, 1);
    int rc = snp_ap_create(0, 1, (uint64_t)vmsa, 1, SNP_AP_CREATE);
    kprintf("AP creation of vCPU 0 at VMPL1, VMSA at %lx: %d\n", (uint64_t)vmsa, rc);
    if (rc)
        return 3;

    /* 3. Run VMPL1 until it hands the vCPU back. */
    rc = snp_run_vmpl(1);
    const uint32_t *d = (const uint32_t *)vmpl1_data;
    kprintf("back at VMPL0 (%d): VMPL1 wrote %x and copied %x from its read-only page\n",
            rc, d[0], d[1]);
    if (d[0] != 0x314C504D || d[1] != *(const uint32_t *)vmpl1_ro)
        return 4;

    /* 4. VMPL1 touches the VMPL0-only page. */
    kprintf("VMPL1 now reads the page only VMPL0 may read (%lx)\n", (uint64_t)vmpl0_only);
    snp_run_vmpl(1);
    kprintf("VMPL1 came back: %x %x\n", d[3], d[4]);
    return 5;
}
