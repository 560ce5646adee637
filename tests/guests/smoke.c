/*
 * smoke: the acceptance kernel (run with -smp 2).  One boot covers serial
 * output, the Multiboot handoff, exceptions with error codes and CR2, the
 * APIC timer and IPIs, and an AP started by INIT-SIPI-SIPI.
 */
#include "suites.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    int fails = t_hello(magic, mbi);
    fails += t_exceptions();
    fails += t_apic_timer();
    fails += t_smp();
    kprintf("smoke: %s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
