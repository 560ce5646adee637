/*
 * smp_burst: start the APs the way kvm-unit-tests does (lib/x86/smp.c):
 * one INIT to all excluding self and one STARTUP right after it, with no
 * delay in between; then restart a halted AP the same way.  On hardware an
 * AP takes the INIT before the STARTUP arrives (the STARTUP finds it waiting
 * for a SIPI), so every AP starts.  The universal INIT, 10 ms, STARTUP,
 * STARTUP sequence of lib/rt.c start_ap() never exercises this ordering.
 *
 * The number of CPUs comes from fw_cfg (FW_CFG_NB_CPUS, as kvm-unit-tests'
 * fwcfg_get_nb_cpus).  With "x2apic" on the command line the restart goes
 * through the x2APIC ICR MSR (830h) instead of the xAPIC page.
 */
#include "rt.h"

#define TRAMPOLINE_BASE 0x8000ul
#define ICR_ALLBUT (3u << 18)
#define MSR_X2APIC_ICR 0x830
#define APIC_BASE_EXTD (1ul << 10)

static volatile uint32_t online_mask, ap_done;
extern char ap_tramp_start[], ap_tramp_end[];

static void burst_ap_main(int apic_id)
{
    asm volatile("lock orl %1, %0" : "+m"(online_mask) : "r"(1u << apic_id) : "memory");
    atomic_xadd(&ap_done, 1);
}

static uint16_t fw_cfg_nb_cpus(void)
{
    asm volatile("outw %0, %1" : : "a"((uint16_t)0x05), "Nd"((uint16_t)0x510));
    return inb(0x511) | (uint16_t)inb(0x511) << 8;
}

/* Wait for ap_started to reach `want`, for ~3e9 TSC ticks at most (about a
 * second of QEMU on a loaded host).  The TSC, not the APIC timer: the xAPIC
 * page is gone in x2APIC mode. */
static bool wait_started(uint32_t want)
{
    uint64_t t0 = rdtsc();
    while (ap_started < want && rdtsc() - t0 < 3000000000ul)
        pause();
    return ap_started >= want;
}

static void send(bool x2apic, uint32_t dest, uint32_t icr_lo)
{
    if (x2apic)
        wrmsr(MSR_X2APIC_ICR, (uint64_t)dest << 32 | icr_lo);
    else
        lapic_send_ipi(dest, icr_lo);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    int fails = 0;
    uint32_t ncpus = fw_cfg_nb_cpus();
    bool x2apic = strncmp(mb_args(), "x2apic", 6) == 0;
    lapic_enable();
    ap_main = burst_ap_main;
    memcpy((void *)TRAMPOLINE_BASE, ap_tramp_start, ap_tramp_end - ap_tramp_start);
    kprintf("smp_burst: %u CPUs, INIT then STARTUP to all excluding self\n", ncpus);
    lapic_send_ipi(0, ICR_ALLBUT | ICR_INIT | ICR_ASSERT);
    lapic_send_ipi(0, ICR_ALLBUT | ICR_STARTUP | (TRAMPOLINE_BASE >> 12));
    bool all = wait_started(ncpus - 1);
    while (ap_done < ap_started)
        pause();
    kprintf("smp_burst: APs online:");
    for (uint32_t i = 1; i < ncpus; i++)
        if (online_mask & (1u << i))
            kprintf(" %u", i);
    kprintf("\n");
    fails += !all || online_mask != ((1u << ncpus) - 2);
    if (ncpus > 1) {
        /* AP 1 is halted (cli; hlt) after ap_main: INIT, then STARTUP at once. */
        if (x2apic)
            wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_EXTD);
        uint32_t before = ap_started;
        online_mask = 0;
        send(x2apic, 1, ICR_INIT | ICR_ASSERT);
        send(x2apic, 1, ICR_STARTUP | (TRAMPOLINE_BASE >> 12));
        bool again = wait_started(before + 1);
        while (ap_done < ap_started)
            pause();
        kprintf("smp_burst: halted AP 1 restarted by INIT then STARTUP (%s): %s\n",
                x2apic ? "x2APIC" : "xAPIC", again && online_mask == 2 ? "yes" : "no");
        fails += !again || online_mask != 2;
    }
    kprintf("smp_burst: %s\n", fails ? "FAIL" : "PASS");
    return fails;
}
