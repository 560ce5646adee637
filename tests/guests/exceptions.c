/* exceptions: #DE #UD #BP #GP #PF (not present, read-only, CPL3) #DF, int n. */
#include "suites.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    return t_exceptions();
}
