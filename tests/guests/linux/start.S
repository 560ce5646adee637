/* _start for the test init: argc, argv from the initial stack (x86-64 ABI). */
    .globl _start
    .text
_start:
    xor %ebp, %ebp
    mov (%rsp), %rdi            /* argc */
    lea 8(%rsp), %rsi           /* argv */
    and $-16, %rsp
    call main
    mov %eax, %edi
    mov $60, %eax               /* exit */
    syscall
    hlt
