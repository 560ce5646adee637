/*
 * entry_state: the machine as a Multiboot kernel finds it (QEMU -kernel after
 * SeaBIOS, and svmsim).  _start saves every register before touching any,
 * then sets up a stack and an IDT whose gates record the vector (so the C
 * part can read MSRs that may #GP and find the 8259 vector bases), and calls
 * state_main(saved registers).  Built 32-bit: this is the state a 32-bit
 * protected-mode kernel sees.
 */
    .text
    .align 4                        /* first in .text: within the first 8 KiB */
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)
    .globl _start
_start:
    mov %eax, saved + 0
    mov %ebx, saved + 4
    mov %ecx, saved + 8
    mov %edx, saved + 12
    mov %esi, saved + 16
    mov %edi, saved + 20
    mov %ebp, saved + 24
    mov %esp, saved + 28
    pushf
    popl saved + 32
    mov %cr0, %eax
    mov %eax, saved + 36
    mov %cr2, %eax
    mov %eax, saved + 40
    mov %cr3, %eax
    mov %eax, saved + 44
    mov %cr4, %eax
    mov %eax, saved + 48
    mov %dr6, %eax
    mov %eax, saved + 52
    mov %dr7, %eax
    mov %eax, saved + 56
    mov %cs, saved + 60
    mov %ds, saved + 62
    mov %es, saved + 64
    mov %fs, saved + 66
    mov %gs, saved + 68
    mov %ss, saved + 70
    sgdt saved + 72
    sidt saved + 80
    sldt saved + 88
    str saved + 90
    fnstenv fpuenv                  /* x87 control, status and tag words */
    mov $stack_top, %esp
    call idt_setup
    push $saved
    call state_main
1:  hlt
    jmp 1b

/* 256 gates: gate n pushes n and jumps to common. */
    .set n, 0
    .balign 16
stubs:
    .rept 256
    .balign 16
    push $n
    jmp common
    .set n, n + 1
    .endr

/* Exceptions with an error code drop it (unless irq_mode says an IRQ is due).  A #GP from RDMSR
 * (2 bytes) is recorded and skipped; any other vector is recorded. */
common:
    push %eax
    mov 4(%esp), %eax               /* vector */
    mov %eax, last_vector
    incl vector_count
    cmpl $0, irq_mode               /* waiting for an 8259 IRQ: vectors 8-15 */
    jne 4f                          /* are interrupts, without error code */
    cmp $13, %eax
    jne 2f
    incl gp_count
    addl $2, 12(%esp)               /* EIP, above the error code */
    pop %eax
    add $8, %esp                    /* vector, error code */
    iret
2:  cmp $8, %eax                     /* #DF and 10-14, 17: error code */
    je 3f
    cmp $17, %eax
    je 3f
    cmp $10, %eax
    jb 4f
    cmp $14, %eax
    ja 4f
3:  pop %eax
    add $8, %esp
    iret
4:  pop %eax
    add $4, %esp
    iret

idt_setup:
    mov $idt, %edi
    mov $stubs, %eax
    mov $256, %ecx
5:  mov %eax, %edx
    mov %ax, (%edi)                 /* offset 15:0 */
    movw %cs, 2(%edi)
    movw $0x8E00, 4(%edi)           /* present, DPL 0, 32-bit interrupt gate */
    shr $16, %edx
    mov %dx, 6(%edi)
    add $8, %edi
    add $16, %eax
    loop 5b
    lidt idt_desc
    ret

    .data
    .balign 8
idt_desc:
    .word 256 * 8 - 1
    .long idt
    .globl saved, last_vector, vector_count, gp_count, irq_mode
saved: .space 96
    .globl fpuenv
fpuenv: .space 28
last_vector: .long 0
vector_count: .long 0
gp_count: .long 0
irq_mode: .long 0

    .bss
    .balign 16
idt: .space 256 * 8
    .space 16384
stack_top:
