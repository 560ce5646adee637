/*
 * sev_es_nae: one of each instruction that is a non-automatic exit (NAE) of an
 * SEV-ES guest (APM vol 2, 15.35.4-5; GHCB spec 56421, table 5), written as
 * an ordinary kernel for QEMU's conventions (`-smp 2 -device edu`).
 *
 * Bare (QEMU, svmsim) each instruction just runs.  As an SEV-ES guest of
 * svmsim's reference VMM each one raises #VC, and the runtime's #VC handler
 * (lib/sev_es.c) turns it into a GHCB request: the lines without a tag are
 * the same either way; lines tagged "[sev] " are printed only as an SEV-ES
 * guest and show the #VC error code (the exit code) and what only a GHCB
 * server can answer (hypercalls, MONITOR/MWAIT, RDPMC, refused MSRs).
 */
#include "sev.h"
#include "edu.h"

#define MSR_TSC_AUX 0xC0000103
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define CMOS_SCRATCH 0x34             /* a CMOS RAM byte no firmware field uses */

static int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        failures++;
    }
}

/* Under SEV-ES: the #VC error code the last NAE raised. */
static void vc(const char *what, uint64_t expect)
{
    uint64_t code = sev_es_last_vc;   /* before kprintf's own #VCs */
    if (!sev_es_active())
        return;
    kprintf("[sev] %s: #VC error code 0x%lx\n", what, code);
    check(code == expect, what);
}

static void t_cpuid(void)
{
    uint32_t r[4];
    char vendor[13];
    cpuid(0, 0, r);
    uint64_t code = sev_es_last_vc;
    memcpy(vendor, &r[1], 4);
    memcpy(vendor + 4, &r[3], 4);
    memcpy(vendor + 8, &r[2], 4);
    vendor[12] = 0;
    kprintf("CPUID 0: vendor %s\n", vendor);
    sev_es_last_vc = code;
    vc("CPUID", 0x72);
    if (sev_es_active()) {
        cpuid(0x40000000, 0, r);
        char sig[13];
        memcpy(sig, &r[1], 4);
        memcpy(sig + 4, &r[2], 4);
        memcpy(sig + 8, &r[3], 4);
        sig[12] = 0;
        kprintf("[sev] CPUID 40000000h from the GHCB server: %s\n", sig);
        cpuid(0x8000001F, 0, r);
        kprintf("[sev] CPUID 8000001Fh: SEV %u, SEV-ES %u, C-bit %u\n", (r[0] >> 1) & 1,
                (r[0] >> 3) & 1, r[1] & 0x3F);
    }
}

static void t_ioio(void)
{
    outb(CMOS_INDEX, CMOS_SCRATCH);
    outb(CMOS_DATA, 0x5A);
    outb(CMOS_INDEX, CMOS_SCRATCH);
    uint8_t b = inb(CMOS_DATA);
    vc("IN byte", 0x7B);
    kprintf("IOIO byte: CMOS 0x%x wrote 0x5a, read 0x%x\n", CMOS_SCRATCH, b);
    check(b == 0x5A, "CMOS byte");

    pci_select(0, 0, PCI_VENDOR);
    uint16_t w = inw(0xCFE);
    uint32_t l = inl(0xCFC);
    kprintf("IOIO word/dword: host bridge device %04x, id %08x\n", w, l);
    check(l >> 16 == w, "host bridge id");

    uint32_t ids[4] = {0};
    pci_select(0, 0, PCI_VENDOR);
    uint64_t n = 4;
    uint32_t *dst = ids;
    asm volatile("cld; rep insl" : "+D"(dst), "+c"(n) : "d"(0xCFC) : "memory");
    vc("REP INSL", 0x7B);
    kprintf("IOIO REP INSL x4: %08x %08x %08x %08x, RCX %lu, RDI +%lu\n", ids[0], ids[1], ids[2],
            ids[3], n, (uint64_t)(dst - ids) * 4);
    check(ids[3] == l && n == 0 && dst == ids + 4, "REP INSL");

    static const char msg[] = "IOIO REP OUTSB: this line went to COM1 in one instruction\n";
    const char *src = msg;
    n = sizeof(msg) - 1;
    asm volatile("cld; rep outsb" : "+S"(src), "+c"(n) : "d"(0x3F8) : "memory");
    vc("REP OUTSB", 0x7B);
    check(n == 0 && src == msg + sizeof(msg) - 1, "REP OUTSB");
}

static void t_msr(void)
{
    uint64_t base = rdmsr(MSR_APIC_BASE);
    vc("RDMSR", 0x7C);
    kprintf("MSR APIC_BASE: base 0x%lx, BSP %lu\n", base & ~0xFFFul, (base >> 8) & 1);
    check((base & ~0xFFFul) == LAPIC_BASE, "APIC base");
    wrmsr(MSR_TSC_AUX, 0x1234);
    vc("WRMSR", 0x7C);
    uint32_t lo, hi, aux;
    asm volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
    vc("RDTSCP", 0x87);
    kprintf("RDTSCP: TSC_AUX 0x%x\n", aux);
    check(aux == 0x1234, "TSC_AUX");
    if (sev_es_active()) {
        int v = TRY("rdmsr", "c"(0xC0011FFF));
        kprintf("[sev] RDMSR c0011fffh: %s\n", v == 13 ? "#GP, raised at the GHCB server's request" : "no #GP");
        check(v == 13, "refused MSR");
    }
}

static void t_counters(void)
{
    uint64_t t0 = rdtsc();
    vc("RDTSC", 0x6E);
    uint64_t t1 = rdtsc();
    kprintf("RDTSC: %s\n", t1 > t0 ? "increases" : "does not increase");
    check(t1 > t0, "RDTSC");
    if (sev_es_active()) {
        uint32_t lo, hi;
        asm volatile("rdpmc" : "=a"(lo), "=d"(hi) : "c"(0));
        vc("RDPMC", 0x6F);
        kprintf("[sev] RDPMC 0: 0x%lx\n", (uint64_t)hi << 32 | lo);
        int v = TRY("rdpmc", "c"(7));
        kprintf("[sev] RDPMC 7: %s\n", v == 13 ? "#GP" : "no #GP");
        check(v == 13, "RDPMC 7");
    }
}

static void t_caches(void)
{
    asm volatile("wbinvd" ::: "memory");
    vc("WBINVD", 0x89);
    asm volatile("invd" ::: "memory");
    vc("INVD", 0x76);
    kprintf("WBINVD, INVD: done\n");
}

static void t_dr7(void)
{
    uint64_t v;
    asm volatile("mov %0, %%dr7" : : "r"(0x700ul));
    vc("MOV DR7, reg", 0x37);
    asm volatile("mov %%dr7, %0" : "=r"(v));
    vc("MOV reg, DR7", 0x27);
    kprintf("DR7: wrote 0x700, read 0x%lx\n", v);
    check(v == 0x700, "DR7");
    asm volatile("mov %0, %%dr7" : : "r"(0x400ul));
}

static void t_es_only(void)
{
    if (!sev_es_active())
        return;
    uint64_t rax = 1;
    asm volatile("vmmcall" : "+a"(rax) : : "memory");
    vc("VMMCALL", 0x81);
    kprintf("[sev] VMMCALL 1 (KVM_HC_VAPIC_POLL_IRQ): %ld\n", (int64_t)rax);
    rax = 0x99;
    asm volatile("vmmcall" : "+a"(rax) : : "memory");
    kprintf("[sev] VMMCALL 99h: %ld (-KVM_ENOSYS)\n", (int64_t)rax);
    check(rax == (uint64_t)-1000, "VMMCALL 99h");
    static volatile uint64_t line;
    asm volatile("monitor" : : "a"(&line), "c"(0), "d"(0));
    vc("MONITOR", 0x8A);
    asm volatile("mwait" : : "a"(0), "c"(0));
    vc("MWAIT", 0x8B);
    kprintf("[sev] MONITOR, MWAIT: answered by the GHCB server\n");
    kprintf("[sev] GHCB protocol %u, HV features 0x%lx\n", ghcb_protocol, ghcb_hv_features);
}

static void t_mmio(void)
{
    if (edu_setup() < 0) {
        kprintf("MMIO: no edu device\n");
        failures++;
        return;
    }
    uint32_t id = er(0x00);
    vc("MMIO read", 0x400);
    kprintf("MMIO dword: edu ident 0x%x\n", id);
    ew(0x04, 0x12345678);
    vc("MMIO write", 0x400);
    kprintf("MMIO dword: liveness of 0x12345678 reads 0x%x\n", er(0x04));
    uint8_t b = *(volatile uint8_t *)(EDU_BAR + 0);
    uint16_t w = *(volatile uint16_t *)(EDU_BAR + 2);
    kprintf("MMIO byte/word: 0x%x 0x%x (edu answers only dword and qword reads)\n", b, w);
    ewq(0x80, 0x1122334455667788ul);
    kprintf("MMIO qword: DMA source reads 0x%lx\n", erq(0x80));
    check(id == 0x010000ED, "edu ident");
}

/* AP start and park: as an SEV-ES guest the AP starts from its launched
 * VMSA through the AP jump table, parks in AP reset hold (GHCB NAE event the
 * first time, MSR protocol the second) and INIT-SIPI-SIPI releases it. */
static volatile uint32_t ap_runs;

static void ap_work(int apic_id)
{
    atomic_xadd(&ap_runs, 1);
}

static void t_ap(void)
{
    ap_main = ap_work;
    for (int round = 0; round < 3; round++) {
        sev_es_park_with_msr_protocol = round == 1;
        bool ok = start_ap(1);
        kprintf("AP 1 start %d: %s, runs %u\n", round + 1, ok ? "yes" : "no", ap_runs);
        check(ok && ap_runs == (uint32_t)round + 1, "AP start");
        delay_us(1000);              /* let it park (SEV-ES) or halt */
    }
}

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("sev_es_nae: start\n");
    if (sev_es_active())
        kprintf("[sev] SEV-ES active: SEV_STATUS 0x%x, C-bit %u\n", sev_status, sev_cbit);
    t_cpuid();
    t_ioio();
    t_msr();
    t_counters();
    t_caches();
    t_dr7();
    t_es_only();
    t_mmio();
    t_ap();
    if (sev_es_active())
        kprintf("[sev] %u #VCs\n", sev_es_vc_count);
    kprintf("sev_es_nae: %s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
