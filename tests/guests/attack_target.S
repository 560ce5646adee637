/*
 * attack_target: the confidential guest of the malicious-hypervisor gallery
 * (issue 10 item 9; svmsim/vmm/attacks.py, `svmsim demo attacks`).
 *
 * A runtime-less Multiboot kernel that runs unchanged as an SEV, SEV-ES or
 * SEV-SNP guest of the reference VMM.  It boots in 32-bit protected mode with
 * paging off (every access private), reads SEV_STATUS (MSR C001_0131h) and
 * learns its C-bit position the way its mode allows:
 *   SEV     the CPUID instruction, leaf 8000_001Fh (intercepted: the
 *           hypervisor answers);
 *   SEV-ES  the GHCB MSR protocol's CPUID request (GHCB spec 2.3.1: the
 *           hypervisor answers);
 *   SEV-SNP the CPUID page the AMD-SP checked at launch (its gPA is in this
 *           kernel's .sev_metadata, OVMF's ASEV format).
 * It then turns on PAE paging with that C-bit in every mapping but the
 * 2 MiB at 0x600000, its mailbox shared with the hypervisor; draws a
 * session key with RDRAND into private memory; keeps its PIN in EBP; and
 * serves the hypervisor's requests in the mailbox, stopping at HLT between
 * them (an intercept, or an automatic exit under SEV-ES):
 *   1 PUBLIC  copy its public page to OUT
 *   2 PIN     check the PIN in ARG: 3 attempts, then locked; the right PIN
 *             copies its secret to OUT
 *   3 RECEIVE copy the 64-byte "packet" in ARG into its private rx page
 *   4 PLUGIN  call the plugin in its code page at `plugin`
 *   5 KEY     a fingerprint of its session key (the XOR of its dwords)
 * Any exception (#VC, #PF, #GP...) is recorded at FAULT in the mailbox (magic,
 * vector, error code, CR2, EIP) and the guest halts for good.
 */
#define MBOX        0x600000
#define REQ         (MBOX + 0x000)
#define STATUS      (MBOX + 0x004)
#define ARG         (MBOX + 0x010)
#define OUT         (MBOX + 0x100)
#define FAULT       (MBOX + 0x800)
#define CPUID_PAGE  0x10000              /* SNP: the CPUID page (.sev_metadata) */
#define SECRETS     0x11000              /* SNP: the secrets page */
#define SEV_STATUS  0xC0010131
#define GHCB_MSR    0xC0010130

    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    /* The SEV metadata (OVMF's ASEV layout: signature, size, version, count,
       then {gPA, size, type}): what an SEV-SNP launch prepares besides the
       image.  Not loaded; the VMM reads it from the ELF file. */
    .section .sev_metadata, ""
    .ascii "ASEV"
    .long 16 + 2 * 12, 1, 2
    .long CPUID_PAGE, 0x1000, 3          /* CPUID */
    .long SECRETS, 0x1000, 2             /* SNP_SECRETS */

    .text
    .code32
    .globl _start
_start:
    lgdt gdt_desc
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $stack_top, %esp
    call setup_idt
    mov $SEV_STATUS, %ecx
    rdmsr
    mov %eax, sev_status
    call c_bit_position
    jmp paging                           /* not a call: what it pushed would be read */
paging_done:                             /* back through the new mappings */
    mov $key_page, %edi                  /* the session key: 4 dwords of RDRAND */
    mov $4, %ecx
2:  rdrand %eax
    jnc 2b
    stosl
    loop 2b
    mov secret_page, %ebp                /* the PIN, kept in a register */

    .globl serve
serve:
    movl $1, STATUS                      /* ready for the next request */
    hlt
    mov REQ, %eax
    cmp $1, %eax
    je req_public
    cmp $2, %eax
    je req_pin
    cmp $3, %eax
    je req_receive
    cmp $4, %eax
    je req_plugin
    cmp $5, %eax
    je req_key
    movl $0xFFFFFFFF, OUT                /* unknown request */
    jmp serve

req_public:
    mov $public_page, %esi
    mov $OUT, %edi
    mov $16, %ecx
    rep movsl
    jmp serve

req_pin:
    mov attempts, %edx
    test %edx, %edx
    jz 1f
    cmp %ebp, ARG
    je pin_ok
    dec %edx
    mov %edx, attempts
    movl $1, OUT                         /* wrong, OUT+4 = attempts left */
    mov %edx, OUT + 4
    jmp serve
1:  movl $2, OUT                         /* locked */
    movl $0, OUT + 4
    jmp serve

    .globl pin_ok
pin_ok:
    movl $0, OUT
    mov attempts, %edx
    mov %edx, OUT + 4
    mov $secret_page + 16, %esi
    mov $OUT + 16, %edi
    mov $12, %ecx
    rep movsl
    jmp serve

req_receive:
    mov $ARG, %esi
    mov $rx_page, %edi
    mov $16, %ecx
    rep movsl
    jmp serve

req_plugin:
    call plugin
    jmp serve

req_key:
    mov key_page, %eax
    xor key_page + 4, %eax
    xor key_page + 8, %eax
    xor key_page + 12, %eax
    mov %eax, OUT
    jmp serve

/* ECX = the C-bit position, or -1 for a guest without SEV. */
c_bit_position:
    mov sev_status, %eax
    test $4, %eax
    jnz cbit_from_cpuid_page
    test $2, %eax
    jnz cbit_from_ghcb
    test $1, %eax
    jnz cbit_from_cpuid
    mov $-1, %ecx
    ret
cbit_from_cpuid:
    mov $0x8000001F, %eax
    cpuid
    mov %ebx, %ecx
    and $0x3F, %ecx
    ret
cbit_from_ghcb:                          /* GHCB MSR protocol CPUID request (004h) */
    mov $GHCB_MSR, %ecx
    mov $0x8000001F, %edx                /* the function */
    mov $(1 << 30) | 0x004, %eax         /* register EBX */
    wrmsr
    .byte 0xF3, 0x0F, 0x01, 0xD9         /* VMGEXIT (rep vmmcall) */
    rdmsr
    and $0xFFF, %eax
    cmp $0x005, %eax                     /* CPUID response */
    jne 1f
    mov %edx, %ecx
    and $0x3F, %ecx
    ret
cbit_from_cpuid_page:
    mov $CPUID_PAGE, %esi
    mov (%esi), %edx                     /* entries */
    add $16, %esi
2:  test %edx, %edx
    jz 1f
    cmpl $0x8000001F, (%esi)             /* eax_in */
    je 3f
    add $0x30, %esi
    dec %edx
    jmp 2b
3:  mov 0x1C(%esi), %ecx                 /* its EBX */
    and $0x3F, %ecx
    ret
1:  ud2                                  /* no answer: give up (#UD) */

/* PAE paging, 2 MiB pages identity-mapping 0-8 MiB; the C-bit (ECX, 32..63,
   or -1: none) in every entry but the mailbox's.  Returns by a jump. */
paging:
    xor %edi, %edi                       /* the C-bit within the high dword */
    cmp $-1, %ecx
    je 1f
    sub $32, %ecx
    jb 4f
    mov $1, %edi
    shl %cl, %edi
1:  mov $pd, %ebx
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                       /* P, RW, PS */
    mov %eax, (%ebx,%ecx,8)
    mov %edi, 4(%ebx,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 2b
    movl $0, (MBOX >> 21) * 8 + 4(%ebx)  /* the mailbox: shared, C = 0 */
    mov $pdpt, %eax
    movl $pd + 1, (%eax)
    mov %edi, 4(%eax)
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                       /* PAE */
    mov %eax, %cr4
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    jmp paging_done
4:  ud2                                  /* a C-bit below 32: not handled */

/* 32 interrupt gates to the stubs below. */
setup_idt:
    xor %ecx, %ecx
1:  mov stubs(,%ecx,4), %eax
    mov %ax, idt(,%ecx,8)
    movw $0x08, idt + 2(,%ecx,8)
    movw $0x8E00, idt + 4(,%ecx,8)
    shr $16, %eax
    mov %ax, idt + 6(,%ecx,8)
    inc %ecx
    cmp $32, %ecx
    jne 1b
    lidt idt_desc
    ret

    .irp vec, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
stub\vec: push $0
    push $\vec
    jmp fault
    .endr
    .irp vec, 8,10,11,12,13,14,17,21,29,30
stub\vec: push $\vec
    jmp fault
    .endr

fault:
    pop %eax
    mov %eax, FAULT + 4                  /* vector */
    pop %eax
    mov %eax, FAULT + 8                  /* error code */
    mov %cr2, %eax
    mov %eax, FAULT + 12
    mov (%esp), %eax
    mov %eax, FAULT + 16                 /* EIP */
    movl $0x544C4146, FAULT              /* "FALT" */
1:  hlt
    jmp 1b

    /* The plugin: code in a page of its own. */
    .balign 4096
    .globl plugin
plugin:
    mov $plugin_says, %esi
    mov $OUT, %edi
    mov $4, %ecx
    rep movsl
    ret
    .balign 4096

    .section .rodata
    .balign 4
stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long stub\vec
    .endr
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF             /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF             /* 0x10: data */
gdt_desc:
    .word 3 * 8 - 1
    .long gdt
idt_desc:
    .word 32 * 8 - 1
    .long idt
plugin_says:
    .ascii "plugin v1: ok\0\0\0"

    .data
    .balign 4096
    .globl public_page
public_page:
    .ascii "public: the attack gallery's guest, serving requests\0"
    .balign 4096
    .globl secret_page
secret_page:
    .long 0x00004711                     /* the PIN */
    .balign 16
    .ascii "TOP SECRET: launch code 0000-1234-5678\0"
    .balign 4096
    .globl attempts_page
attempts_page:
attempts:
    .long 3
    .balign 4096
    .globl key_page
key_page:
    .fill 4096, 1, 0
    .globl rx_page
rx_page:
    .fill 4096, 1, 0
pd:
    .fill 4096, 1, 0
pdpt:
    .fill 32, 1, 0
sev_status:
    .long 0
    .balign 8
idt:
    .fill 32 * 8, 1, 0
    .balign 16
    .fill 4096, 1, 0
stack_top:
