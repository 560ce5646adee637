/* hello: the smallest kernel - a line, the multiboot command line, exit 0. */
#include "rt.h"
#include "suites.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    return t_hello(magic, mbi);
}
