/*
 * sev_work: the SEV benchmark guest (bench/sev_bench.py).  Runtime-less, in
 * 32-bit protected mode with paging off, so under SEV every access is
 * private (encrypted with the guest's key; seed S20).  It runs ITERS
 * iterations of loop.c's 10-instruction body (32-bit) on private data at
 * 0x300000, then SWEEPS passes that add up and rewrite the dwords of a
 * 64 KiB private buffer at 0x310000, then CLEARS rounds of memset/memcpy
 * (REP STOSD over a 64 KiB private buffer at 0x320000, REP MOVSD of it to
 * 0x330004, so the copy's lines are partial at both ends), prints the three
 * checksums on COM1 and exits through isa-debug-exit with 0.  Build with
 * -DITERS=N -DSWEEPS=M -DCLEARS=K.
 * Not an SEV guest (QEMU, or a plain guest of the reference VMM): the same
 * work on plaintext memory.
 */
#ifndef ITERS
#define ITERS 100000
#endif
#ifndef SWEEPS
#define SWEEPS 4
#endif
#ifndef CLEARS
#define CLEARS 4
#endif
    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    .section .text32, "ax"
    .code32
    .globl _start
_start:
    mov $0x300000, %esi
    movl $0, (%esi)
    movl $0, 4(%esi)
    mov $ITERS, %ecx
    xor %edx, %edx
1:  mov (%esi), %eax                    /* loop.c's body, 32-bit */
    add %ecx, %eax
    xor %edx, %eax
    mov %eax, (%esi)
    add %eax, 4(%esi)
    mov 4(%esi), %edx
    xor %ecx, %edx
    add $0x5bd1e995, %edx
    dec %ecx
    jnz 1b
    mov (%esi), %eax
    xor 4(%esi), %eax
    call puthex

    mov $0x310000, %edi                 /* fill the buffer: dword i = i * 7 */
    xor %ecx, %ecx
2:  lea (%ecx,%ecx,2), %eax
    lea (%eax,%ecx,4), %eax
    mov %eax, (%edi,%ecx,4)
    inc %ecx
    cmp $0x4000, %ecx
    jne 2b
    mov $SWEEPS, %ebp
    xor %ebx, %ebx
3:  xor %ecx, %ecx                      /* one sweep: sum, and rewrite each dword */
4:  mov (%edi,%ecx,4), %eax
    add %eax, %ebx
    rol $1, %ebx
    add %ebp, %eax
    mov %eax, (%edi,%ecx,4)
    inc %ecx
    cmp $0x4000, %ecx
    jne 4b
    dec %ebp
    jnz 3b
    mov %ebx, %eax
    call puthex

    cld                                 /* memset and memcpy: REP STOSD, REP MOVSD */
    mov $CLEARS, %ebp
    xor %ebx, %ebx
10: mov %ebp, %eax
    imul $0x01010101, %eax
    mov $0x320000, %edi
    mov $0x4000, %ecx
    rep stosl
    mov $0x320000, %esi
    mov $0x330004, %edi
    mov $0x4000, %ecx
    rep movsl
    add 0x330004, %ebx
    add 0x340000, %ebx
    rol $1, %ebx
    dec %ebp
    jnz 10b
    mov %ebx, %eax
    call puthex

    mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
5:  cli
    hlt
    jmp 5b

puthex:                                 /* "sev_work: 0x%08x\n" of EAX on COM1 */
    mov %eax, %ebx
    mov $0x3F8, %dx
    mov $msg, %esi
6:  lodsb
    test %al, %al
    jz 7f
    out %al, %dx
    jmp 6b
7:  mov $8, %ecx
8:  rol $4, %ebx
    mov %ebx, %eax
    and $0xF, %eax
    movb hexdigits(%eax), %al
    out %al, %dx
    dec %ecx
    jnz 8b
    mov $10, %al
    out %al, %dx
    ret

    .section .rodata
msg: .asciz "sev_work: 0x"
hexdigits: .ascii "0123456789abcdef"
