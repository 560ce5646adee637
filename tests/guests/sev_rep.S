/*
 * sev_rep: REP STOS and REP MOVS on an SEV guest's private memory
 * (tests/test_sev_rep.py; issue 14, item 4).  Runtime-less, 32-bit.
 * With paging off every access is private (seed S20); it then turns on PAE
 * paging with the C-bit in every mapping, two 4 KiB pages not present, and
 * runs a REP STOSD and a REP MOVSB into them: the #PF handler records ECX,
 * EDI, CR2 and ESI at 0x30F010 + 16 * n (n at 0x30F000), maps the page and
 * IRETs, so the instruction restarts where it stopped (APM vol 1, 3.10.3;
 * vol 3 "REP").  Layout (guest-physical = linear):
 *   0x300000-0x30FFFF  the data the string instructions work on
 *   0x500000 PD, 0x501000 PDPT, 0x502000 the PT of 0x200000-0x3FFFFF,
 *   0x503000 the IDT; stack below 0x380000.  Its GDT is in its launched
 * (private) image: the loader's, outside it, would read as garbage.
 * Prints "sev_rep: done" on COM1, exits through isa-debug-exit with 0.
 */
    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    .section .text32, "ax"
    .code32
    .globl _start
_start:
    lgdt gdtr                           /* our own GDT: the loader's is not in private memory */
    ljmp $0x08, $0f
0:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $0x380000, %esp
    cld
    mov $0x300ff3, %edi                 /* A: stosb across a page, partial lines at both ends */
    mov $0x2345, %ecx
    mov $0x5A, %al
    rep stosb
    std                                 /* B: backward stosw across a page */
    mov $0x305006, %edi
    mov $0x803, %ecx
    mov $0xA55A, %ax
    rep stosw
    cld
    mov $0x303800, %esi                 /* C: movsb, source and destination misaligned differently */
    mov $0x305807, %edi
    mov $0x1000, %ecx
    rep movsb
    movl $0x11111111, 0x307000          /* D: forward overlap by two dwords replicates them */
    movl $0x22222222, 0x307004
    mov $0x307000, %esi
    mov $0x307008, %edi
    mov $0x600, %ecx
    rep movsd
    std                                 /* E: backward movsd across pages */
    mov $0x301ffc, %esi
    mov $0x30dffe, %edi
    mov $0x500, %ecx
    rep movsd
    cld

    call paging                         /* F: faults in the middle */
    movl $0, 0x30F000
    mov $0x309F02, %edi                 /* the 64th dword straddles into the hole at 0x30A000 */
    mov $0x100, %ecx
    mov $0x11223344, %eax
    rep stosl
    mov $0x300ff3, %esi                 /* the 129th byte lands in the hole at 0x30C000 */
    mov $0x30BF80, %edi
    mov $0x200, %ecx
    rep movsb

    mov $msg, %esi
    mov $0x3F8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
3:  cli
    hlt
    jmp 3b

pf_handler:
    push %eax
    push %ebx
    mov 0x30F000, %ebx
    shl $4, %ebx
    mov %ecx, 0x30F010(%ebx)
    mov %edi, 0x30F014(%ebx)
    mov %cr2, %eax
    mov %eax, 0x30F018(%ebx)
    mov %esi, 0x30F01C(%ebx)
    incl 0x30F000
    shr $12, %eax                       /* map the page: PTE (CR2 - 0x200000) >> 12 */
    sub $0x200, %eax
    orl $1, 0x502000(,%eax,8)
    mov %cr2, %eax
    invlpg (%eax)
    pop %ebx
    pop %eax
    add $4, %esp                        /* the error code */
    iret

paging:                                 /* PAE with the C-bit everywhere, 0-8 MiB identity */
    mov $0x8000001F, %eax
    cpuid
    mov %ebx, %ecx
    and $0x3F, %ecx
    sub $32, %ecx
    mov $1, %edi
    shl %cl, %edi                       /* EDI: the C-bit within the high dword */
    mov $0x500000, %ebx                 /* PD: 2 MiB pages, but 0x200000 through the PT */
    xor %ecx, %ecx
4:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                      /* P, RW, PS */
    mov %eax, (%ebx,%ecx,8)
    mov %edi, 4(%ebx,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 4b
    movl $0x502003, 8(%ebx)
    mov $0x502000, %ebx                 /* PT: 4 KiB pages from 0x200000 */
    xor %ecx, %ecx
5:  mov %ecx, %eax
    shl $12, %eax
    add $0x200003, %eax                 /* P, RW */
    mov %eax, (%ebx,%ecx,8)
    mov %edi, 4(%ebx,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 5b
    andl $~1, 8 * 0x10A(%ebx)           /* 0x30A000 and 0x30C000 not present */
    andl $~1, 8 * 0x10C(%ebx)
    mov $0x501000, %eax                 /* PDPT: entry 0 -> PD; 1-3 not present */
    movl $0x500001, (%eax)
    mov %edi, 4(%eax)
    movl $0, 8(%eax)
    movl $0, 16(%eax)
    movl $0, 24(%eax)
    mov %eax, %cr3
    mov $pf_handler, %eax               /* IDT: vector 14, a 32-bit interrupt gate */
    mov $0x08 << 16, %ecx
    mov %ax, %cx
    mov %ecx, 0x503000 + 14 * 8
    and $0xFFFF0000, %eax
    or $0x8E00, %eax
    mov %eax, 0x503000 + 14 * 8 + 4
    lidt idtr
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    jmp 6f
6:  ret

    .section .rodata
    .balign 4
gdt:  .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF
gdtr: .word 3 * 8 - 1
      .long gdt
idtr: .word 15 * 8 - 1
      .long 0x503000
msg: .asciz "sev_rep: done\n"
