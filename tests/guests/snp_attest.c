/*
 * snp_attest: a bare-metal SEV-SNP guest that proves what it is (issue 10;
 * `svmsim demo sev-snp`; tests/test_snp_guest.py).
 *
 * Launched by the reference VMM from this file (svmsim/vmm/snp_kernel.py:
 * its image measured page by page, the CPUID and secrets pages its
 * .sev_metadata names), it:
 *  1. finds out it is an SEV-SNP guest (CPUID 8000_001F through its CPUID
 *     page, SEV_STATUS bit 2; APM vol 2, 15.34.10) and at which VMPL;
 *  2. accepts the RAM the launch did not give it: page state change to
 *     private through the GHCB, then PVALIDATE (2 MiB where it can), and
 *     writes and reads back every page (15.36.6); its GHCB pages were made
 *     shared the same way, in reverse, by the runtime (lib/sev_snp.c);
 *  3. reads its secrets page (VMPCK0) and asks the AMD-SP for an attestation
 *     report with its own REPORT_DATA: a guest message sealed under VMPCK0,
 *     sent by the EXT_GUEST_REQUEST NAE event (lib/snp_msg.c), which also
 *     brings the VMM's certificate table (VCEK, ASK, ARK); then a key
 *     derived from the chip's secret and its measurement (MSG_KEY_REQ);
 *  4. prints the report's main fields and hands the report and the
 *     certificates to the hypervisor in shared pages, for a relying party to
 *     check: the report is signed by the VCEK, so the untrusted channel
 *     cannot change it.
 */
#include "rt.h"
#include "sev.h"

#define MIB (1ul << 20)
#define OUTBOX_MAGIC 0x54524F50504E53ul   /* "SNPPORT" */

/* What the guest hands out: {magic, report length, certificate table gPA,
 * its length, the report}.  Shared with the VMM, as is the certificate
 * buffer the VMM fills with the extended report. */
static uint8_t outbox[4096] __attribute__((section(".bss.shared"), aligned(4096)));
#define CERT_PAGES 4
static uint8_t certs[CERT_PAGES * 4096] __attribute__((section(".bss.shared"), aligned(4096)));
static uint8_t report[0x4A0];
extern char __bss_end[];

static void hex(const char *name, const uint8_t *p, size_t n)
{
    kprintf("%s ", name);
    for (size_t i = 0; i < n; i++)
        kprintf("%02x", p[i]);
    kprintf("\n");
}

static uint64_t u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

int kmain(uint32_t magic, uint32_t mbi)
{
    if (!sev_snp_active()) {
        kprintf("not an SEV-SNP guest (SEV_STATUS %x)\n", sev_status);
        return 1;
    }
    uint32_t r[4];
    cpuid(0x8000001F, 0, r);
    kprintf("SEV-SNP guest: SEV_STATUS %x, C-bit %u (CPUID page: %u), VMPLs %u, running at VMPL%u\n",
            sev_status, sev_cbit, r[1] & 0x3F, (r[1] >> 12) & 0xF, (unsigned)snp_vmpl);
    kprintf("GHCB protocol %u, hypervisor features %x\n", ghcb_protocol, (unsigned)ghcb_hv_features);

    /* 2. Accept guest RAM above the image and its Multiboot information. */
    const uint32_t *info = (const uint32_t *)(uintptr_t)mbi;
    uint64_t top = MIB + (uint64_t)info[2] * 1024;          /* mem_upper, KiB above 1 MiB */
    uint64_t start = ((uint64_t)__bss_end + 0x10000 + 0x1FFFFF) & ~0x1FFFFFul;
    unsigned n2m, n4k;
    if (snp_accept(start, top - start, &n2m, &n4k)) {
        kprintf("accepting memory at %lx failed\n", start);
        return 2;
    }
    for (uint64_t a = start; a < top; a += 4096)
        *(volatile uint64_t *)a = a ^ 0x5EC0DE5EC0DEul;
    for (uint64_t a = start; a < top; a += 4096)
        if (*(volatile uint64_t *)a != (a ^ 0x5EC0DE5EC0DEul)) {
            kprintf("accepted page %lx reads back wrong\n", a);
            return 3;
        }
    kprintf("validated %lx-%lx: %u 2M pages, %u 4K pages; every page written and read back\n",
            start, top, n2m, n4k);

    /* 3. The secrets page and an attestation report with our own data. */
    const uint8_t *secrets = (const uint8_t *)snp_secrets_page;
    kprintf("secrets page: version %u, VMPCK0 %s\n", u32(secrets),
            u64(secrets + 0x20) | u64(secrets + 0x28) ? "present" : "absent");
    uint8_t data[64];
    const char *text = "svmsim snp_attest: my own report data";
    memset(data, 0, sizeof data);
    memcpy(data, text, strlen(text));
    for (int i = 48; i < 64; i++)
        data[i] = (uint8_t)(i * 7);
    uint64_t pages = CERT_PAGES;
    long rc = snp_get_ext_report(data, (uint32_t)snp_vmpl, report, certs, &pages);
    if (rc) {
        kprintf("report request failed: %lx (certificate pages %lu)\n", (unsigned long)rc, pages);
        return 4;
    }
    uint32_t ncerts = 0;
    for (const uint8_t *e = certs; e < certs + sizeof certs - 24 && (u64(e) | u64(e + 8)); e += 24)
        ncerts++;
    kprintf("extended report: %u certificates from the VMM\n", ncerts);

    /* 4. The report's fields (SNP ABI, ATTESTATION_REPORT). */
    kprintf("report: version %u, guest SVN %u, policy %lx, VMPL %u, signature algorithm %u\n",
            u32(report), u32(report + 4), u64(report + 8), u32(report + 0x30), u32(report + 0x34));
    kprintf("report: current TCB %lx, reported TCB %lx, platform info %lx\n",
            u64(report + 0x38), u64(report + 0x180), u64(report + 0x40));
    hex("report_data", report + 0x50, 64);
    hex("measurement", report + 0x90, 48);
    hex("chip_id", report + 0x1A0, 64);
    kprintf("report data is mine: %s\n", memcmp(report + 0x50, data, 64) ? "NO" : "yes");

    /* A sealing key bound to our measurement (MSG_KEY_REQ): the same each time. */
    uint8_t key1[32], key2[32];
    if (snp_get_derived_key(SNP_KEY_FIELD_MEASUREMENT, (uint32_t)snp_vmpl, key1) ||
        snp_get_derived_key(SNP_KEY_FIELD_MEASUREMENT, (uint32_t)snp_vmpl, key2)) {
        kprintf("key request failed\n");
        return 5;
    }
    kprintf("derived key bound to the measurement: the same twice: %s, not all zero: %s\n",
            memcmp(key1, key2, 32) ? "NO" : "yes", (u64(key1) | u64(key1 + 8)) ? "yes" : "NO");
    memset(key1, 0, sizeof key1);
    memset(key2, 0, sizeof key2);

    *(volatile uint64_t *)(outbox + 8) = sizeof report;
    *(volatile uint64_t *)(outbox + 16) = (uint64_t)certs;
    *(volatile uint64_t *)(outbox + 24) = sizeof certs;
    memcpy(outbox + 32, report, sizeof report);
    *(volatile uint64_t *)outbox = OUTBOX_MAGIC;
    kprintf("report handed out at gPA %lx\n", (uint64_t)outbox);
    return 0;
}
