/* t_hello: boot banner, multiboot magic and the -append arguments. */
#include "suites.h"

int check_(bool ok, const char *what, int line)
{
    if (!ok)
        kprintf("FAIL: %s (line %d)\n", what, line);
    return !ok;
}

int t_hello(uint32_t magic, uint32_t mbi)
{
    int fails = 0;
    kputs("hello from svmsim test kernel");
    fails += CHECK(magic == MULTIBOOT_BOOTLOADER_MAGIC, "multiboot magic");
    kprintf("multiboot magic ok: %s\n", magic == MULTIBOOT_BOOTLOADER_MAGIC ? "yes" : "no");
    /* The full command line starts with the kernel's path, which depends on
     * where it was built; print only what follows it. */
    kprintf("cmdline args: '%s'\n", mb_args());
    return fails;
}
