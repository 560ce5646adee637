/*
 * boot64.S - Multiboot v1 entry, 32-bit -> long-mode switch, AP trampoline.
 *
 * Compiled as x86-64 ELF64 (the 32- and 16-bit parts use .code32/.code16)
 * and turned into ELF32 with objcopy, because QEMU's Multiboot loader only
 * takes ELF32 images.  Everything is linked at 1 MiB and runs identity mapped.
 *
 * State on entry (Multiboot spec 0.6.96, 3.2 "Machine state"): 32-bit
 * protected mode, paging off, flat CS/DS, EAX = 0x2BADB002, EBX = physical
 * address of the Multiboot information structure, no valid stack, IF = 0.
 */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003          /* bit 0: page-align modules, bit 1: mem info */

#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18

#define CR0_PE 0x00000001
#define CR0_CD_NW 0x60000000
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xC0000080
#define MAX_CPUS 8                   /* as rt.h */
#define AP_STACK_SHIFT 14            /* 16 KiB per AP: rt.c ap_stacks */
#define EFER_LME 0x00000100

#define PG_P 0x001
#define PG_W 0x002
#define PG_U 0x004
#define PG_PWT 0x008
#define PG_PCD 0x010
#define PG_PS 0x080

#define TRAMPOLINE_BASE 0x8000       /* SIPI vector 0x08: CS = 0x0800, IP = 0 */
#define IMAGE_BASE 0x100000          /* kernel.ld links the image here */

#define MSR_GHCB 0xC0010130
#define MSR_SEV_STATUS 0xC0010131
#define GHCB_MSR_CPUID_REQ 0x004
#define GHCB_MSR_CPUID_RESP 0x005
#define GHCB_MSR_TERM_REQ 0x100
#define SVM_EXIT_CPUID 0x72
#define SEV_STATUS_ES 0x2
#define SEV_STATUS_SNP 0x4
#define SNP_CPUID_PAGE 0x10000       /* SEV-SNP: the CPUID page (.sev_metadata) */
#define SNP_SECRETS_PAGE 0x11000     /* SEV-SNP: the secrets page */
#define CPUID_ENTRY 0x30             /* struct snp_cpuid_fn (Linux) */

/* ------------------------------------------------------------------ */
/* Multiboot header: must be 32-bit aligned in the first 8 KiB of the file
 * (Multiboot spec 3.1.1).  No a.out kludge (flag 16): the loader uses the
 * ELF program headers. */
    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

/*
 * SEV-ES AP reset block (kernel.ld puts it after the 32-bit boot code,
 * still in the first 8 KiB).  The hypervisor cannot set an SEV-ES vCPU's
 * registers, so each AP's initial state is a VMSA built and measured at
 * launch; this block tells the hypervisor where an AP starts: the GUID
 * OVMF gives its SEV-ES reset block (00f771de-1a7e-4fcb-890e-68c77e2fb44e),
 * then the reset EIP.  The AP starts there in real mode with CS base =
 * EIP & FFFF0000h and IP = EIP & FFFFh, as an OVMF AP does.
 */
    .section .sev_es_reset, "a"
    .balign 4
    .globl sev_es_reset_block
sev_es_reset_block:
    .byte 0xde, 0x71, 0xf7, 0x00, 0x7e, 0x1a, 0xcb, 0x4f
    .byte 0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e
    .long sev_es_ap_reset

/*
 * SEV metadata (OVMF's ASEV layout: signature, size, version, count, then
 * {gPA, size, type}): what an SEV-SNP launch prepares besides the image, the
 * CPUID page (type 3) the AMD-SP checks and the secrets page (type 2) with
 * the VMPCKs.  Not loaded: the VMM reads the section from the ELF file
 * (svmsim/vmm/snp_kernel.py); QEMU ignores it.
 */
    .section .sev_metadata, ""
    .ascii "ASEV"
    .long 16 + 2 * 12, 1, 2
    .long SNP_CPUID_PAGE, 0x1000, 3
    .long SNP_SECRETS_PAGE, 0x1000, 2
    .globl snp_cpuid_page, snp_secrets_page
    .set snp_cpuid_page, SNP_CPUID_PAGE
    .set snp_secrets_page, SNP_SECRETS_PAGE

/* ------------------------------------------------------------------ */
/*
 * Long-mode activation, AMD APM vol 2, 14.6.1 "Activating Long Mode" /
 * Intel SDM vol 3A "Initializing IA-32e Mode": with paging off, set CR4.PAE,
 * load CR3 with the PML4, set EFER.LME, then set CR0.PG; the CPU sets
 * EFER.LMA and runs in compatibility mode until a far jump loads a code
 * segment with L = 1 (APM vol 2, 14.7).  CR0.CD/NW are cleared because an AP
 * leaves INIT with caches disabled (CR0 = 6000_0010h, APM vol 2, 14.1.3).
 */
.macro ENTER_LONG_MODE target
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    and $~CR0_CD_NW, %eax
    or $(CR0_PG | CR0_PE), %eax
    mov %eax, %cr0
    ljmp $SEL_CODE64, $\target
.endm

.macro LOAD_DATA_SEGMENTS
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
.endm

    .section .text32, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    mov %eax, %ebp                   /* keep the Multiboot magic and info */
    mov %ebx, %esi                   /* pointer across the .bss clear */

    /* Loaders zero .bss, but the spec does not promise it: do it here. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl
    mov %ebp, mb_magic
    mov %esi, mb_info

    /* The loader's GDT may be anywhere (the spec says not to rely on it). */
    lgdt gdt_desc
    ljmp $SEL_CODE32, $1f
1:  LOAD_DATA_SEGMENTS
    mov $boot_stack_top, %esp
    call early_idt_init
    call sev_detect
    call build_page_tables
    ENTER_LONG_MODE bsp_entry64

/*
 * A 32-bit IDT for the boot path: in an SEV-ES guest CPUID raises #VC
 * (APM vol 2, 15.36.23: CPUID is always intercepted), so vector 29 serves
 * it through the GHCB MSR protocol; any other exception halts.  Without
 * SEV-ES nothing here ever runs.
 */
early_idt_init:
    xor %ecx, %ecx
1:  mov $early_fault, %eax
    cmp $29, %ecx
    jne 2f
    mov $vc32, %eax
2:  mov %eax, %edx
    and $0xFFFF, %eax
    or $(SEL_CODE32 << 16), %eax
    mov %eax, early_idt(,%ecx,8)
    and $0xFFFF0000, %edx
    or $0x8E00, %edx                 /* present, DPL 0, 32-bit interrupt gate */
    mov %edx, early_idt+4(,%ecx,8)
    inc %ecx
    cmp $32, %ecx
    jb 1b
    lidt early_idt_desc
    ret

early_fault:
    cli
    hlt
    jmp early_fault

/* #VC in 32-bit mode: CPUID only.  An SEV-SNP guest takes the answer from
 * its CPUID page, which the AMD-SP checked at launch (the hypervisor is not
 * trusted with it; the boot path asks only for leaves without sub-leaves);
 * an SEV-ES guest asks the hypervisor, one register per MSR-protocol
 * request (GHCB spec 56421, 2.3.1: GHCBData[63:32] = function, [31:30] =
 * register). */
vc32:
    cmpl $SVM_EXIT_CPUID, (%esp)
    jne vc32_terminate
    push %esi
    push %edi
    mov %eax, %esi                   /* the CPUID function */
    mov $MSR_SEV_STATUS, %ecx        /* readable: this is an SEV-ES guest */
    rdmsr
    test $SEV_STATUS_SNP, %eax
    jz 3f
    movl $0, vc32_regs               /* not in the table: all zero */
    movl $0, vc32_regs+4
    movl $0, vc32_regs+8
    movl $0, vc32_regs+12
    mov SNP_CPUID_PAGE, %ecx         /* the entry count */
    mov $SNP_CPUID_PAGE + 16, %edi
4:  test %ecx, %ecx
    jz 6f
    cmp %esi, (%edi)
    je 5f
    add $CPUID_ENTRY, %edi
    dec %ecx
    jmp 4b
5:  mov 24(%edi), %eax
    mov %eax, vc32_regs
    mov 28(%edi), %eax
    mov %eax, vc32_regs+4
    mov 32(%edi), %eax
    mov %eax, vc32_regs+8
    mov 36(%edi), %eax
    mov %eax, vc32_regs+12
    jmp 6f
3:  xor %edi, %edi                   /* register: 0 EAX, 1 EBX, 2 ECX, 3 EDX */
1:  mov %edi, %eax
    shl $30, %eax
    or $GHCB_MSR_CPUID_REQ, %eax
    mov %esi, %edx
    mov $MSR_GHCB, %ecx
    wrmsr
    rep; vmmcall                     /* VMGEXIT */
    rdmsr
    and $0xFFF, %eax
    cmp $GHCB_MSR_CPUID_RESP, %eax
    jne vc32_terminate
    mov %edx, vc32_regs(,%edi,4)
    inc %edi
    cmp $4, %edi
    jb 1b
6:  pop %edi
    pop %esi
    mov vc32_regs, %eax
    mov vc32_regs+4, %ebx
    mov vc32_regs+8, %ecx
    mov vc32_regs+12, %edx
    add $4, %esp                     /* the error code */
    addl $2, (%esp)                  /* past CPUID (0F A2) */
    iret
vc32_terminate:                      /* GHCB MSR protocol TERMINATE, reason 0/0 */
    mov $GHCB_MSR_TERM_REQ, %eax
    xor %edx, %edx
    mov $MSR_GHCB, %ecx
    wrmsr
    rep; vmmcall
    jmp early_fault

/*
 * Are we an SEV guest?  CPUID Fn8000_001F EAX[1] says the CPU has SEV; the
 * SEV_STATUS MSR (C001_0131h) bit 0 says it is active for this guest (APM
 * vol 2, 15.34.10); EBX[5:0] is the C-bit position.  Leaves sev_status,
 * sev_cbit and sev_cbit_hi (the C-bit within a PTE's high dword) at 0
 * otherwise.
 */
sev_detect:
    mov $0x80000000, %eax
    cpuid
    cmp $0x8000001F, %eax
    jb 1f
    mov $0x8000001F, %eax
    cpuid
    bt $1, %eax
    jnc 1f
    and $0x3F, %ebx
    mov %ebx, %esi
    mov $MSR_SEV_STATUS, %ecx
    rdmsr
    bt $0, %eax
    jnc 1f
    mov %eax, sev_status
    mov %esi, sev_cbit
    lea -32(%esi), %ecx
    mov $1, %eax
    shl %cl, %eax
    mov %eax, sev_cbit_hi
1:  ret

/*
 * Identity map 0..4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..3] -> four
 * page directories.  Non-leaf entries allow user access (U = 1) so a leaf's
 * U bit alone decides; leaves are supervisor-only.  The top GiB (MMIO: local
 * APIC at FEE0_0000h, I/O APIC) is mapped uncacheable (PCD | PWT).
 *
 * In an SEV guest RAM is private: every entry below 3 GiB carries the C-bit
 * (APM vol 2, 15.34.5), MMIO does not.  The 2 MiB region holding the shared
 * section (the GHCB pages) is mapped with 4 KiB pages so that only those
 * pages are shared.  An SEV-SNP guest launched them as private, validated
 * pages: they keep the C-bit here and sev_snp.c shares them (rescind the
 * validation, page state change, clear the C-bit), as the RMP requires.
 */
build_page_tables:
    mov sev_cbit_hi, %edx
    mov $pdpt, %eax
    or $(PG_P | PG_W | PG_U), %eax
    mov %eax, pml4
    mov %edx, pml4+4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $pd, %eax
    or $(PG_P | PG_W | PG_U), %eax
    mov %eax, pdpt(,%ecx,8)
    mov %edx, pdpt+4(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $(PG_P | PG_W | PG_PS), %eax
    cmp $1536, %ecx                  /* entry 1536 maps 3 GiB */
    jb 3f
    or $(PG_PCD | PG_PWT), %eax
    movl $0, pd+4(,%ecx,8)
    jmp 4f
3:  mov %edx, pd+4(,%ecx,8)
4:  mov %eax, pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b
    /* The shared section's 2 MiB region: a page table, C-bit except there
     * (SEV only: elsewhere the 2 MiB mapping stays, as QEMU runs it). */
    test %edx, %edx
    jz 7f
    mov $__shared_start, %ebx
    shr $21, %ebx                    /* its PD index */
    mov %ebx, %esi
    shl $21, %esi                    /* the region's first address */
    xor %ecx, %ecx
5:  mov %ecx, %eax
    shl $12, %eax
    add %esi, %eax                   /* this page's address */
    mov %edx, %edi
    cmp $__shared_start, %eax
    jb 6f
    cmp $__shared_end, %eax
    jae 6f
    testl $SEV_STATUS_SNP, sev_status
    jnz 6f                           /* SEV-SNP: shared later, by sev_snp.c */
    xor %edi, %edi                   /* shared: no C-bit */
6:  or $(PG_P | PG_W), %eax
    mov %eax, pt_shared(,%ecx,8)
    mov %edi, pt_shared+4(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jb 5b
    mov $pt_shared, %eax
    or $(PG_P | PG_W | PG_U), %eax
    mov %eax, pd(,%ebx,8)
    mov %edx, pd+4(,%ebx,8)
7:  ret

/* An AP arrives here from the trampoline in 32-bit protected mode; it reuses
 * the BSP's page tables. */
    .globl ap_entry32
ap_entry32:
    LOAD_DATA_SEGMENTS
    ENTER_LONG_MODE ap_entry64

/*
 * An SEV-ES AP's first instruction (see sev_es_reset_block): far-jump
 * through the AP jump table, where start_ap() put the real-mode entry of
 * the trampoline ({IP, CS}, as Linux and OVMF lay it out).  Runs in real
 * mode with CS base = IMAGE_BASE, so the table must lie in the image's
 * first 64 KiB (kernel.ld checks it).
 */
    .code16
    .globl sev_es_ap_reset
sev_es_ap_reset:
    cli
    ljmpw *%cs:(sev_es_ap_jump_table - IMAGE_BASE)
    .code32

/* The AP jump table (GHCB NAE event 8000_0005h): a page of the image. */
    .section .ap_jump_table, "aw"
    .balign 4096
    .globl sev_es_ap_jump_table
sev_es_ap_jump_table:
    .fill 4096, 1, 0

/* ------------------------------------------------------------------ */
    .text
    .code64
bsp_entry64:
    LOAD_DATA_SEGMENTS
    mov $boot_stack_top, %rsp
    mov mb_magic(%rip), %edi
    mov mb_info(%rip), %esi
    call rt_bsp_main                 /* never returns: it calls exit_qemu */
4:  cli
    hlt
    jmp 4b

/* Also where a parked SEV-ES AP starts over (sev_es_ap_park). */
    .globl ap_entry64
ap_entry64:
    LOAD_DATA_SEGMENTS
    lidt rt_idt_desc(%rip)           /* CPUID may raise #VC (SEV-ES) ... */
    testl $SEV_STATUS_ES, sev_status(%rip)
    jz 1f
    /* ... but no stack yet: ask for CPUID Fn0000_0001 EBX with the GHCB
     * MSR protocol directly (sev_es_init_ap sets the GHCB MSR again). */
    mov $MSR_GHCB, %ecx
    mov $(1 << 30 | GHCB_MSR_CPUID_REQ), %eax
    mov $1, %edx
    wrmsr
    rep; vmmcall
    rdmsr
    and $0xFFF, %eax
    cmp $GHCB_MSR_CPUID_RESP, %eax
    jne 5f
    mov %edx, %ebx
    jmp 2f
1:
    mov $1, %eax                     /* CPUID Fn0000_0001 EBX[31:24]: initial */
    cpuid                            /* APIC ID of this processor */
2:  shr $24, %ebx
    cmp $MAX_CPUS, %ebx              /* no stack for it: halt */
    jae 5f
    mov %ebx, %edi
    lea 1(%rbx), %eax                /* each AP its own stack, so several */
    shl $AP_STACK_SHIFT, %rax        /* may start at once (one broadcast */
    lea ap_stacks(%rip), %rsp        /* STARTUP, as kvm-unit-tests sends) */
    add %rax, %rsp
    call rt_ap_main
5:  cli
    hlt
    jmp 5b

/* ------------------------------------------------------------------ */
/*
 * AP trampoline, copied by start_ap() to TRAMPOLINE_BASE.  A startup IPI
 * with vector VV starts the AP in real mode at CS = VV00h, IP = 0 (AMD APM
 * vol 2, 16.5 "Interprocessor Interrupts"; Intel SDM vol 3A "MP
 * Initialization", INIT-SIPI-SIPI).  It must be position independent: it
 * addresses its GDTR through DS = CS, then enters protected mode with the
 * kernel's GDT and far-jumps to ap_entry32 (absolute, below 4 GiB).
 */
    .section .rodata.trampoline, "a"
    .code16
    .globl ap_tramp_start, ap_tramp_end
    .balign 16
ap_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdtr - ap_tramp_start)
    mov %cr0, %eax
    or $CR0_PE, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .balign 8
tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:
    .code64

/* ------------------------------------------------------------------ */
/* GDT (APM vol 2, 4.8): flat segments; TSS descriptors filled by rt.c. */
    .data
    .balign 16
    .globl gdt, gdt_tss, gdt_end
gdt:
    .quad 0                          /* 00h null */
    .quad 0x00af9a000000ffff         /* 08h code, 64-bit (L = 1), DPL 0 */
    .quad 0x00cf92000000ffff         /* 10h data, flat 4 GiB, DPL 0 */
    .quad 0x00cf9a000000ffff         /* 18h code, 32-bit flat, DPL 0 (boot only) */
    .quad 0x00cff2000000ffff         /* 20h data, DPL 3 */
    .quad 0x00affa000000ffff         /* 28h code, 64-bit, DPL 3 */
gdt_tss:
    .fill 8 * 2, 8, 0                /* 30h + 16*cpu: 16-byte TSS descriptors */
gdt_end:

    /* 10 bytes: in 32-bit mode LGDT reads the low 6, in 64-bit mode all 10. */
    .balign 8
    .globl gdt_desc
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

    .balign 8
early_idt_desc:
    .word 32 * 8 - 1
    .long early_idt
vc32_regs: .long 0, 0, 0, 0

    .globl mb_magic, mb_info
mb_magic: .long 0
mb_info: .long 0
    .balign 8

    .bss
    .balign 4096
    .globl pml4, pdpt, pd, pt_shared
pml4: .skip 4096
pdpt: .skip 4096
pd: .skip 4 * 4096
pt_shared: .skip 4096
early_idt: .skip 32 * 8
boot_stack: .skip 16384
boot_stack_top:
