/*
 * loop: the benchmark kernel.  N iterations (cmdline "iters=N", default
 * 10,000,000) of a 10-instruction body mixing register ALU ops, loads,
 * stores and a read-modify-write of memory, then a checksum that
 * tests/test_guests_qemu.py recomputes in Python.
 */
#include "rt.h"

#define DEFAULT_ITERS 10000000ul

static uint64_t mem[2];

int kmain(uint32_t magic, uint32_t mbi)
{
    uint64_t n = DEFAULT_ITERS;
    cmdline_u64("iters", &n);
    kprintf("loop: iters=%lu\n", n);
    if (n) {
        asm volatile("xor %%edx, %%edx\n"
                     "1:\n\t"
                     "mov (%1), %%rax\n\t"           /* load */
                     "add %0, %%rax\n\t"
                     "xor %%rdx, %%rax\n\t"
                     "mov %%rax, (%1)\n\t"           /* store */
                     "add %%rax, 8(%1)\n\t"          /* read-modify-write */
                     "mov 8(%1), %%rdx\n\t"
                     "xor %0, %%rdx\n\t"
                     "add $0x5bd1e995, %%rdx\n\t"
                     "dec %0\n\t"
                     "jnz 1b"
                     : "+c"(n) : "S"(mem) : "rax", "rdx", "memory", "cc");
    }
    kprintf("loop: checksum=0x%016lx\n", mem[0] ^ mem[1]);
    return 0;
}
