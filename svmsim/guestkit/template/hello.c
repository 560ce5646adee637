/*
 * A kernel of your own on svmsim's runtime (lib/): the runtime boots into
 * 64-bit long mode with paging, a GDT, a TSS and an IDT, calls kmain, and
 * passes its return value to exit_qemu(): 0 ends the run with status 1 on
 * QEMU (isa-debug-exit) and svmsim alike.
 *
 *   make && svmsim run hello.elf --append "name=world"
 *   qemu-system-x86_64 -kernel hello.elf -append "name=world" -serial stdio \
 *       -display none -device isa-debug-exit,iobase=0xf4,iosize=4
 */
#include "rt.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    kprintf("hello from my kernel: multiboot magic %s, command line '%s'\n",
            magic == MULTIBOOT_BOOTLOADER_MAGIC ? "ok" : "bad", mb_args());
    return 0;
}
