/* smp: runs t_smp() from suites/smp.c. */
#include "suites.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    return t_smp();
}
