/*
 * bare32: a runtime-less kernel (build_guest("bare32", kind="asm")) that
 * stays in the 32-bit protected mode the Multiboot loader left it in,
 * checks EAX = 2BADB002h, writes a line to COM1 and exits through
 * isa-debug-exit with 0x10 (QEMU status 0x21).  The first thing a
 * simulator has to get right; no stack, no paging, no long mode.
 */
    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    .section .text32, "ax"
    .code32
    .globl _start
_start:
    mov $msg_ok, %esi
    cmp $0x2BADB002, %eax
    je 1f
    mov $msg_bad, %esi
1:  mov $0x3F8, %dx
2:  lodsb
    test %al, %al
    jz 3f
    out %al, %dx                     /* no LSR polling: kept minimal */
    jmp 2b
3:  mov $0xF4, %dx
    mov $0x10, %eax
    out %eax, %dx
4:  cli
    hlt
    jmp 4b

    .section .rodata
msg_ok: .asciz "bare32: multiboot magic ok\n"
msg_bad: .asciz "bare32: bad multiboot magic\n"
