/*
 * run_ahead: a byte-loop memset (lib/rt.c memset, the loop kvm-unit-tests'
 * page allocator zeroes every allocation with) while a periodic APIC timer
 * interrupts it and the second CPU is halted: what svmsim's run-ahead
 * (Machine.run_ahead, the rounds it skips) must leave exactly as the rounds
 * one at a time would.  The timer handler records how far the memset had
 * got when the interrupt came (the first byte not yet written, found by
 * bisection: each pass writes a new value from the bottom up) and the TSC;
 * the main loop records the TSC after each pass.  Everything printed
 * depends on which instruction each interrupt lands on (tests/test_run_ahead.py
 * compares the transcripts with run-ahead on and off).
 *
 * "bytes=N" (default 262144): the buffer; "passes=P" (default 6);
 * "period=T" (default 150000): the timer's initial count, divide by 1.
 * "smp=0": do not start the AP; "spin=1": the AP does not halt but spins
 * (PAUSE) until the passes are done, so nothing may run ahead; "nmi=K": the
 * AP sends the BSP an NMI after every K PAUSEs until the passes are done,
 * and the BSP's NMI handler records where the memset was, as the timer's.
 */
#include "rt.h"

#define TIMER_VECTOR 0x40
#define MAX_TICKS 64
#define BUF ((volatile uint8_t *)0x3000000ul)     /* 48 MiB: in the boot identity map */

static volatile uint32_t ticks;
static volatile uint8_t cur;
static uint64_t nbytes;
static uint64_t where[MAX_TICKS], when[MAX_TICKS];
static volatile uint32_t done;
static uint64_t nmi_every;
static volatile uint32_t nmis;
static uint64_t nmi_where[MAX_TICKS], nmi_when[MAX_TICKS];

static void spin_ap_main(int apic_id)
{
    while (!done)
        pause();
}

static void nmi_ap_main(int apic_id)
{
    while (!done) {
        for (uint64_t i = 0; i < nmi_every && !done; i++)
            pause();
        lapic_send_ipi(0, (4u << 8) | ICR_ASSERT);     /* delivery mode NMI */
    }
}

static uint64_t progress(void)
{
    uint64_t lo = 0, hi = nbytes;            /* BUF[0, lo) == cur, BUF[hi, n) != cur */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (BUF[mid] == cur)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void timer_handler(struct trap_frame *f)
{
    uint32_t t = ticks++;
    if (t < MAX_TICKS) {
        where[t] = progress();
        when[t] = rdtsc();
    }
    lapic_eoi();
}

static void nmi_handler(struct trap_frame *f)
{
    uint32_t t = nmis++;
    if (t < MAX_TICKS) {
        nmi_where[t] = progress();
        nmi_when[t] = rdtsc();
    }
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint64_t passes = 6, period = 150000, smp = 1, spin = 0;
    nbytes = 262144;
    cmdline_u64("bytes", &nbytes);
    cmdline_u64("passes", &passes);
    cmdline_u64("period", &period);
    cmdline_u64("smp", &smp);
    cmdline_u64("spin", &spin);
    cmdline_u64("nmi", &nmi_every);
    if (spin)
        ap_main = spin_ap_main;
    if (nmi_every) {
        set_handler(2, nmi_handler);
        ap_main = nmi_ap_main;
    }
    if (smp)
        kprintf("run_ahead: AP started: %s\n", start_ap(1) ? "yes" : "no");
    set_handler(TIMER_VECTOR, timer_handler);
    lapic_write(LAPIC_TIMER_DCR, 0xB);                  /* divide by 1 */
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_ICR, (uint32_t)period);
    uint64_t t0 = rdtsc();
    uint64_t after[16];
    sti();
    for (uint64_t p = 0; p < passes && p < 16; p++) {
        cur = (uint8_t)(p + 1);
        memset((void *)BUF, cur, nbytes);
        after[p] = rdtsc() - t0;
    }
    cli();
    done = 1;
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
    uint32_t n = ticks < MAX_TICKS ? ticks : MAX_TICKS;
    kprintf("run_ahead: %lu bytes, %lu passes, %u ticks\n", nbytes, passes, ticks);
    for (uint64_t p = 0; p < passes && p < 16; p++)
        kprintf("pass %lu: done at tsc+%lu\n", p, after[p]);
    for (uint32_t t = 0; t < n; t++)
        kprintf("tick %u: byte %lu tsc+%lu\n", t, where[t], when[t] - t0);
    for (uint32_t t = 0; t < nmis && t < MAX_TICKS; t++)
        kprintf("nmi %u: byte %lu tsc+%lu\n", t, nmi_where[t], nmi_when[t] - t0);
    int ok = progress() == nbytes && BUF[nbytes] != cur;  /* the last pass wrote every byte, no more */
    kprintf("run_ahead: %s\n", ok && ticks > 0 ? "PASS" : "FAIL");
    return ok && ticks > 0 ? 0 : 1;
}
