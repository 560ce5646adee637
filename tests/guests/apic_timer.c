/* apic_timer: runs t_apic_timer() from suites/apic_timer.c. */
#include "suites.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    return t_apic_timer();
}
