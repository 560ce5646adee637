/*
 * sev_guest: a runtime-less SEV guest for svmsim.vmm (issue 5) and `svmsim
 * demo sev`.  It stays in 32-bit protected mode with paging off, where every
 * access of an SEV guest is private (encrypted with its key; seed S20), and:
 * - reads SEV_STATUS (MSR C001_0131h) bit 0 to see that it runs encrypted;
 * - writes a line of private data at 0x300000 (the host sees ciphertext);
 * - prints the secret the guest owner injected at 0x200000 (LAUNCH_SECRET)
 *   and the private line, over COM1 (IOIO exits the VMM forwards);
 * - exits through isa-debug-exit with 0 (status 1).
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
    mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
3:  cli
    hlt
    jmp 3b

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
