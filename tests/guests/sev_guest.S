/*
 * sev_guest: a runtime-less SEV guest for svmsim.vmm (issue 5) and `svmsim
 * demo sev`.  It stays in 32-bit protected mode with paging off, where every
 * access of an SEV guest is private (encrypted with its key; seed S20), and:
 * - reads SEV_STATUS (MSR C001_0131h) bit 0 to see that it runs encrypted;
 * - writes a line of private data at 0x300000 (the host sees ciphertext);
 * - prints the secret the guest owner injected at 0x200000 (LAUNCH_SECRET)
 *   and the private line, over COM1 (IOIO exits the VMM forwards);
 * - then turns on PAE paging with its C-bit (CPUID 8000_001F EBX[5:0]) set
 *   in every mapping except the 2 MiB page at 0x600000, which it shares with
 *   the host: a line written there is plaintext in DRAM (seed S20, S21);
 * - exits through isa-debug-exit with 0 (status 1).
 * Not an SEV guest (SEV_STATUS.SEV = 0, e.g. on QEMU): no C-bits.
 */
    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    .section .text32, "ax"
    .code32
    .globl _start
_start:
    mov $0xC0010131, %ecx
    rdmsr
    mov $msg_plain, %esi
    test $1, %eax
    jz 1f
    mov $msg_enc, %esi
1:  call puts
    mov $private_line, %esi             /* copy the line into private memory */
    mov $0x300000, %edi
2:  lodsb
    stosb
    test %al, %al
    jnz 2b
    mov $msg_secret, %esi
    call puts
    mov $0x200000, %esi
    call puts
    mov $msg_nl, %esi
    call puts
    mov $msg_private, %esi
    call puts
    mov $0x300000, %esi
    call puts
    call paging
    mov $shared_line, %esi               /* now through the shared (C=0) mapping */
    mov $0x600000, %edi
6:  lodsb
    stosb
    test %al, %al
    jnz 6b
    mov $msg_shared, %esi
    call puts
    mov $0x600000, %esi
    call puts
    mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
3:  cli
    hlt
    jmp 3b

paging:                                 /* PAE, 2 MiB pages, 0-8 MiB identity */
    mov $0xC0010131, %ecx
    rdmsr
    xor %edi, %edi                      /* EDI: the C-bit within the high dword */
    test $1, %eax
    jz 7f
    mov $0x8000001F, %eax
    cpuid
    mov %ebx, %ecx
    and $0x3F, %ecx
    sub $32, %ecx
    mov $1, %edi
    shl %cl, %edi
7:  mov $0x500000, %ebx                 /* PD */
    xor %ecx, %ecx
8:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                      /* P, RW, PS */
    mov %eax, (%ebx,%ecx,8)
    mov %edi, 4(%ebx,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 8b
    movl $0, 28(%ebx)                   /* PDE 3 (0x600000): shared, C = 0 */
    mov $0x501000, %eax                 /* PDPT: entry 0 -> PD; 1-3 not present */
    movl $0x500001, (%eax)
    mov %edi, 4(%eax)
    movl $0, 8(%eax)
    movl $0, 12(%eax)
    movl $0, 16(%eax)
    movl $0, 20(%eax)
    movl $0, 24(%eax)
    movl $0, 28(%eax)
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    jmp 9f
9:  ret

puts:                                   /* print the NUL-terminated string at ESI */
    mov $0x3F8, %dx
4:  lodsb
    test %al, %al
    jz 5f
    out %al, %dx
    jmp 4b
5:  ret

    .section .rodata
msg_enc: .asciz "sev guest: SEV_STATUS.SEV = 1, my memory is encrypted\n"
msg_plain: .asciz "sev guest: SEV_STATUS.SEV = 0 (not an SEV guest)\n"
msg_secret: .asciz "sev guest: secret from the guest owner: "
msg_private: .asciz "sev guest: private page at 0x300000 reads: "
msg_nl: .asciz "\n"
private_line: .asciz "only the guest can read this line\n"
msg_shared: .asciz "sev guest: shared page at 0x600000 reads: "
shared_line: .asciz "hello host, this page is shared\n"
