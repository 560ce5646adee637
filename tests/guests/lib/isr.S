/*
 * isr.S - the 256 interrupt entry stubs, the common save/restore path, and
 * the CPL3 entry/exit helpers.
 *
 * Each stub is 16-byte aligned so rt.c finds stub N at isr_stubs + 16*N.
 * The CPU pushes an error code only for vectors 8, 10-14, 17, 21, 29, 30
 * (APM vol 2, 8.2 and Table 8-1); for the others the stub pushes a 0 so the
 * C dispatcher always sees the same struct trap_frame.
 */

    .text
    .code64
    .globl isr_stubs
    .balign 16
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if !(vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

/* In long mode the CPU aligns RSP to 16 bytes before pushing SS:RSP,
 * RFLAGS, CS:RIP (APM vol 2, 8.9.3), but we realign anyway: the frame size
 * depends on the error code. */
isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %cr2, %rax                   /* only meaningful for #PF */
    push %rax
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    cld
    call isr_dispatch
    mov %rbx, %rsp
    add $8, %rsp                     /* cr2 */
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp                    /* vector, error code */
    iretq

/*
 * uint64_t enter_user(rip, rsp, arg): IRETQ to CPL3 (APM vol 2, 8.9.4 /
 * IRET).  The `int $0x80` handler in rt.c comes back to user_return at CPL0
 * on the stack saved here, with RAX = the value the user code passed.
 */
    .globl enter_user, user_return
enter_user:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, user_return_rsp(%rip)
    pushq $(0x20 | 3)                /* SS: user data */
    push %rsi                        /* RSP */
    pushq $0x2                       /* RFLAGS: IF = 0, IOPL = 0 */
    pushq $(0x28 | 3)                /* CS: user code, 64-bit */
    push %rdi                        /* RIP */
    mov %rdx, %rdi
    iretq
user_return:
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .data
    .balign 8
    .globl user_return_rsp
user_return_rsp: .quad 0

/*
 * CPL3 code, alone in a 4 KiB page that a test maps with U = 1 at any
 * address (it is position independent).  RDI = a supervisor-only address.
 * Before each access that will fault, R11 holds where to resume: the #PF
 * handler the test installs moves RIP there (user code cannot write the
 * kernel's variables, so TRY() cannot be used at CPL3).
 */
    .section .user, "ax"
    .globl user_code_start, user_code_end
user_code_start:
    lea 1f(%rip), %r11
    mov (%rdi), %eax                 /* read: #PF, error code 5 (P | U) */
1:  lea 2f(%rip), %r11
    movl $0x55, (%rdi)               /* write: #PF, error code 7 (P | W | U) */
2:  lea 3f(%rip), %r11
    mov $0x10, %ecx                  /* TSC */
    rdmsr                            /* at CPL3: #GP(0) */
3:  mov $0x600d, %eax
    int $0x80                        /* back to CPL0 through a DPL 3 gate */
    ud2
user_code_end:
