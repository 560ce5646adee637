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

/* ------------------------------------------------------------------ */
/* Multiboot header: must be 32-bit aligned in the first 8 KiB of the file
 * (Multiboot spec 3.1.1).  No a.out kludge (flag 16): the loader uses the
 * ELF program headers. */
    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

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
    call build_page_tables
    ENTER_LONG_MODE bsp_entry64

/*
 * Identity map 0..4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..3] -> four
 * page directories.  Non-leaf entries allow user access (U = 1) so a leaf's
 * U bit alone decides; leaves are supervisor-only.  The top GiB (MMIO: local
 * APIC at FEE0_0000h, I/O APIC) is mapped uncacheable (PCD | PWT).
 */
build_page_tables:
    mov $pdpt, %eax
    or $(PG_P | PG_W | PG_U), %eax
    mov %eax, pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $pd, %eax
    or $(PG_P | PG_W | PG_U), %eax
    mov %eax, pdpt(,%ecx,8)
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
3:  mov %eax, pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b
    ret

/* An AP arrives here from the trampoline in 32-bit protected mode; it reuses
 * the BSP's page tables. */
    .globl ap_entry32
ap_entry32:
    LOAD_DATA_SEGMENTS
    ENTER_LONG_MODE ap_entry64

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

ap_entry64:
    LOAD_DATA_SEGMENTS
    mov $1, %eax                     /* CPUID Fn0000_0001 EBX[31:24]: initial */
    cpuid                            /* APIC ID of this processor */
    shr $24, %ebx
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

    .globl mb_magic, mb_info
mb_magic: .long 0
mb_info: .long 0
    .balign 8

    .bss
    .balign 4096
    .globl pml4, pdpt, pd
pml4: .skip 4096
pdpt: .skip 4096
pd: .skip 4 * 4096
boot_stack: .skip 16384
boot_stack_top:
