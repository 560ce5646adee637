/*
 * t_smp: start APIC ID 1 with INIT-SIPI-SIPI (lib/rt.c start_ap), let it say
 * hello, then both CPUs add to one counter with LOCK XADD.  Output order is
 * fixed by handshakes: the BSP prints only after the AP has finished printing.
 */
#include "suites.h"

#define INCREMENTS 100000

static volatile uint32_t counter, go, ap_hello, ap_done;

static void smp_ap_main(int apic_id)
{
    kprintf("AP %d online\n", apic_id);
    atomic_xadd(&ap_hello, 1);
    while (!go)
        pause();
    for (int i = 0; i < INCREMENTS; i++)
        atomic_xadd(&counter, 1);
    atomic_xadd(&ap_done, 1);
}

/* Spin (with PAUSE) until *flag != 0, at most ~`ms` milliseconds. */
static bool wait_flag(volatile uint32_t *flag, int ms)
{
    for (int i = 0; i < ms * 10 && !*flag; i++)
        delay_us(100);
    return *flag != 0;
}

int t_smp(void)
{
    int fails = 0;
    kputs("smp: start");
    lapic_enable();
    ap_main = smp_ap_main;
    kprintf("smp: BSP apic id %u\n", lapic_id());
    bool started = start_ap(1) && wait_flag(&ap_hello, 1000);
    kprintf("smp: AP 1 started by INIT-SIPI-SIPI: %s\n", started ? "yes" : "no");
    fails += CHECK(started, "AP start");
    if (started) {
        go = 1;
        for (int i = 0; i < INCREMENTS; i++)
            atomic_xadd(&counter, 1);
        bool done = wait_flag(&ap_done, 2000);
        kprintf("smp: lock xadd counter=%u (expected %u)\n", counter, 2 * INCREMENTS);
        fails += CHECK(done && counter == 2 * INCREMENTS, "counter");
    }
    kprintf("smp: %s\n", fails ? "FAIL" : "PASS");
    return fails;
}
