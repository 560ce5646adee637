/*
 * snp_vmpl1.S - the code snp_vmpl.c runs at VMPL1 (issue 10 item 4).
 *
 * It runs from a VMSA the VMPL0 kernel built (32-bit protected mode, paging
 * off: every access private, APM vol 2, 15.34.5) on a page VMPL0 granted it
 * read and supervisor-execute rights with RMPADJUST (15.36.7).  EBX = its
 * data page (read/write for VMPL1), ESI = a page VMPL1 may only read, EDI =
 * a page only VMPL0 may touch.  No stack, no IDT: it needs neither.
 *
 *  1. writes a marker to its data page and copies a word from the
 *     read-only page (both allowed by its VMPL permission masks);
 *  (RMPADJUST, which would let it try to raise its own rights, exists only
 *  in 64-bit mode: #UD here; VMPL0 shows its FAIL_PERMISSION instead.)
 *  2. returns to VMPL0 (GHCB MSR protocol 016h, "run at VMPL 0");
 *  3. when run again, reads the VMPL0-only page: the RMP's VMPL check
 *     refuses it with #VMEXIT(NPF), EXITINFO1 bit 36 (VMPL) and bit 31
 *     (RMP) set (15.36.10); the hypervisor sees the fault, not the data.
 */
#define MSR_GHCB 0xC0010130
#define GHCB_MSR_VMPL_REQ 0x016

    .section .text.vmpl1, "ax"
    .balign 4096
    .code32
    .globl vmpl1_entry
vmpl1_entry:
    movl $0x314C504D, (%ebx)         /* "MPL1" */
    mov (%esi), %eax
    mov %eax, 4(%ebx)
    mov $MSR_GHCB, %ecx              /* run at VMPL0 */
    mov $GHCB_MSR_VMPL_REQ, %eax
    xor %edx, %edx
    wrmsr
    rep; vmmcall
    movl $1, 12(%ebx)                /* VMPL0 ran us again */
    mov (%edi), %eax                 /* a page only VMPL0 may read */
    mov %eax, 16(%ebx)
    movl $2, 12(%ebx)                /* never reached */
1:  hlt
    jmp 1b
    .balign 4096
    .code64
