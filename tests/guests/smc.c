/*
 * smc: code and data on one page, and self-modifying code
 * (bench/smc_bench.py, tests/test_smc.py).  Each phase runs when its key is
 * on the command line (none given: every phase with a count of 1000) and
 * prints one checksum line:
 *
 *   near=N     a 4-instruction loop whose counter is the quad after its code,
 *              in the same 4 KiB page
 *   far=N      the same loop with the counter on a page holding no code
 *   smc=N      a 5-instruction loop that stores the iteration number into the
 *              immediate of the `add` it executes next (true self-modifying
 *              code: the store and the instruction it rewrites are adjacent)
 *   smcref=N   the same loop with the store going to a data page and the
 *              `add` reading it from there (the reference for smc)
 *   flip=N     a 6-instruction loop that rewrites the opcode of the next
 *              instruction every iteration, ADD <-> SUB (re-decoding)
 *   flipref=N  the same loop with the opcode byte stored to a data page
 *
 * The rewritten instruction runs right after the store, with no jump or
 * serializing instruction in between.  How far ahead a processor may have
 * fetched is model-specific; svmsim and QEMU TCG both execute the stored
 * bytes (docs/DESIGN.md).
 */
#include "rt.h"

extern uint64_t near_loop(uint64_t n), far_loop(uint64_t n);
extern uint64_t smc_loop(uint64_t n), smcref_loop(uint64_t n);
extern uint64_t flip_loop(uint64_t n), flipref_loop(uint64_t n);
uint64_t ref_data[512] __attribute__((aligned(4096)));

asm(".pushsection .text.smc, \"ax\"\n"
    ".balign 4096\n"
    "near_loop:\n"
    "    movq $0, near_counter(%rip)\n"
    "1:  addq $3, near_counter(%rip)\n"
    "    xorq %rdi, near_counter(%rip)\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    mov near_counter(%rip), %rax\n"
    "    ret\n"
    ".balign 8\n"
    "near_counter: .quad 0\n"
    "far_loop:\n"
    "    movq $0, ref_data(%rip)\n"
    "1:  addq $3, ref_data(%rip)\n"
    "    xorq %rdi, ref_data(%rip)\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    mov ref_data(%rip), %rax\n"
    "    ret\n"
    "smc_loop:\n"
    "    xor %eax, %eax\n"
    "1:  mov %edi, smc_imm(%rip)\n"      /* patch the immediate below */
    "    .byte 0x05\n"                   /* add $imm32, %eax */
    "smc_imm: .long 0\n"
    "    rol $5, %eax\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    ret\n"
    "smcref_loop:\n"
    "    xor %eax, %eax\n"
    "1:  mov %edi, ref_data+8(%rip)\n"
    "    add ref_data+8(%rip), %eax\n"
    "    rol $5, %eax\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    ret\n"
    "flip_loop:\n"
    "    xor %eax, %eax\n"
    "    mov $0x01, %ecx\n"
    "1:  mov %cl, flip_op(%rip)\n"       /* 01 /r = ADD r/m32, r32; 29 /r = SUB */
    "flip_op: .byte 0x01, 0xf8\n"        /* add %edi, %eax (or sub) */
    "    xor $0x28, %ecx\n"
    "    rol $3, %eax\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    ret\n"
    "flipref_loop:\n"
    "    xor %eax, %eax\n"
    "    mov $0x01, %ecx\n"
    "1:  mov %cl, ref_data+16(%rip)\n"
    "    add %edi, %eax\n"
    "    xor $0x28, %ecx\n"
    "    rol $3, %eax\n"
    "    dec %rdi\n"
    "    jnz 1b\n"
    "    ret\n"
    ".balign 4096\n"
    ".popsection\n");

int kmain(uint32_t magic, uint32_t mbi)
{
    static const char *const keys[] = {"near", "far", "smc", "smcref", "flip", "flipref"};
    static uint64_t (*const loops[])(uint64_t) = {near_loop, far_loop, smc_loop, smcref_loop,
                                                  flip_loop, flipref_loop};
    enum { PHASES = sizeof(keys) / sizeof(keys[0]) };
    uint64_t count[PHASES], v;
    bool any = false;
    for (int i = 0; i < PHASES; i++)
        any |= cmdline_u64(keys[i], &v);
    for (int i = 0; i < PHASES; i++) {
        count[i] = any ? 0 : 1000;
        cmdline_u64(keys[i], &count[i]);
    }
    for (int i = 0; i < PHASES; i++)
        if (count[i])
            kprintf("%s: n=%lu checksum=0x%lx\n", keys[i], count[i], loops[i](count[i]));
    return 0;
}
