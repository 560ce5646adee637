/*
 * smm: system management mode as a kernel meets it on QEMU's pc (and on
 * svmsim): AMD APM vol 2, chapter 10 (SMI, the AMD64 state-save area at
 * SMBASE + FE00h, RSM) and 15.22 (SMIs and guests).
 *
 * SeaBIOS leaves the BSP's SMBASE at A_0000h with SMRAM enabled but closed
 * in the i440FX (72h) and the PIIX4's APMC_EN set.  The kernel opens SMRAM
 * (D_OPEN), installs its own SMI handler at SMBASE + 8000h, closes it, and
 * raises SMIs by port B2h, by an APIC SMI message to itself, by the APIC
 * timer's LVT in SMI mode while halted, with GIF = 0, and from an SVM guest
 * with and without the SMI intercept.  The handler (16-bit code, 4 GiB
 * segment limits) records its entry state and copies the state-save area
 * into a mailbox in low memory, may change the saved RAX and the auto-halt
 * restart field, and returns with RSM.
 *
 * "[qemu]" lines show where QEMU 7.2 departs from the APM, with the APM's
 * value (printed on every platform; svmsim shows the APM's).
 */
#include "svm.h"
#include "pci.h"

#define SMBASE 0xA0000ul
#define MAILBOX 0x6000ul              /* below 64 KiB: the handler's DS-relative data */
#define MB_COUNT 0x00
#define MB_CMD 0x04
#define MB_CS 0x08
#define MB_CR0 0x0C
#define MB_CR4 0x10
#define MB_EFER 0x14
#define MB_EFLAGS 0x18
#define MB_FLAGS 0x1C                 /* bit 0: saved RAX := 5EEDh; bit 1: clear auto-halt restart */
#define MB_AUTOHALT 0x20
#define MB_SAVE 0x100                 /* the 512 bytes at SMBASE + FE00h */
#define SAVED(off) (*(volatile uint64_t *)(MAILBOX + MB_SAVE + (off) - 0xFE00))
#define SAVED32(off) (*(volatile uint32_t *)(MAILBOX + MB_SAVE + (off) - 0xFE00))
#define SAVED16(off) (*(volatile uint16_t *)(MAILBOX + MB_SAVE + (off) - 0xFE00))
#define MB(off) (*(volatile uint32_t *)(MAILBOX + (off)))

extern char smm_handler[], smm_handler_end[], after_out[], after_loop[], after_hlt[];
extern char g_after_out[], g_hlt[];

/* The SMI handler, copied to SMBASE + 8000h: CS = SMBASE >> 4, the other
 * segments base 0, all limits 4 GiB, 16-bit code (APM vol 2, 10.3.4). */
asm(".pushsection .rodata\n"
    ".code16\n"
    "smm_handler:\n"
    "  mov $0x6f00, %esp\n"
    "  pushfl\n  popl 0x6018\n"
    "  incl 0x6000\n"
    "  in $0xb2, %al\n  movzbl %al, %eax\n  mov %eax, 0x6004\n"
    "  xor %eax, %eax\n  mov %cs, %ax\n  mov %eax, 0x6008\n"
    "  mov %cr0, %eax\n  mov %eax, 0x600c\n"
    "  mov %cr4, %eax\n  mov %eax, 0x6010\n"
    "  mov $0xc0000080, %ecx\n  rdmsr\n  mov %eax, 0x6014\n"
    "  xor %esi, %esi\n  mov %cs, %si\n  shl $4, %esi\n  add $0xfe00, %esi\n"
    "  mov $0x6100, %edi\n  mov $128, %ecx\n  cld\n  addr32 rep movsl\n"
    "  movzbl %cs:0xfec9, %eax\n  mov %eax, 0x6020\n"
    "  testl $2, 0x601c\n  jz 1f\n  movb $0, %cs:0xfec9\n"
    "1:testl $1, 0x601c\n  jz 2f\n  movl $0x5eed, %cs:0xfff8\n  movl $0, %cs:0xfffc\n"
    "2:rsm\n"
    "smm_handler_end:\n"
    ".code64\n"
    ".popsection\n");

static int failures;
static struct svm_info info;
static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t iopm[IOPM_SIZE] __attribute__((aligned(4096)));
static uint8_t msrpm[MSRPM_SIZE] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static struct svm_gprs gprs;

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        failures++;
    }
}

/* An SMI by APM command; the CPU spins after the OUT (after_out ..
 * after_loop) until the handler has counted it. */
static __attribute__((noinline)) uint64_t smi_by_port(uint8_t cmd, uint64_t rax)
{
    uint32_t before = MB(MB_COUNT);
    asm volatile("mov %1, %%al\n\t"
                 "out %%al, $0xb2\n"
                 "after_out:\n\t"
                 "cmp %2, 0x6000\n\t"
                 "je after_out\n"
                 "after_loop:"
                 : "+a"(rax) : "r"(cmd), "r"(before) : "memory");
    return rax;
}

static void plain_out_b2(uint8_t cmd)
{
    outb(0xB2, cmd);
}

static void print_attr(const char *what, uint16_t got, uint16_t apm)
{
    kprintf("[qemu] %s attributes %04x (APM: %04x)\n", what, got, apm);
}

static void first_smi(void)
{
    uint64_t efer = rdmsr(MSR_EFER), cr0 = read_cr0(), cr3 = read_cr3(), cr4 = read_cr4();
    MB(MB_COUNT) = 0;
    uint64_t rax = smi_by_port(0x42, 0x1122334455667700ul);
    kprintf("smm: port B2h = 42h: %u SMI(s), the handler read command %02x\n", MB(MB_COUNT), MB(MB_CMD));
    check(MB(MB_COUNT) == 1 && MB(MB_CMD) == 0x42, "SMI by port B2h");
    kprintf("smm: handler entry: CS %04x (SMBASE >> 4), CR0.PE %u, CR0.PG %u, CR4 %x, EFER %x, EFLAGS %x\n",
            MB(MB_CS), MB(MB_CR0) & 1, MB(MB_CR0) >> 31, MB(MB_CR4), MB(MB_EFER), MB(MB_EFLAGS) & ~0x2u);
    check(MB(MB_CS) == SMBASE >> 4 && !(MB(MB_CR0) & 0x80000001u) && MB(MB_CR4) == 0 && MB(MB_EFER) == 0,
          "SMM entry state");
    kprintf("smm: save area: revision %08x, SMBASE %08x\n", SAVED32(0xFEFC), SAVED32(0xFF00));
    /* The SMI is taken at an instruction boundary after the OUT: the APM's
     * synchronous SMI right after it; QEMU TCG and svmsim at the end of a
     * translated block, a few instructions later. */
    bool after = SAVED(0xFF78) >= (uint64_t)after_out && SAVED(0xFF78) <= (uint64_t)after_loop;
    kprintf("smm: saved RIP at a boundary after the OUT: %s, RAX %016lx, RAX back %016lx\n",
            after ? "yes" : "no", SAVED(0xFFF8), rax);
    kprintf("smm: saved CR0/CR3/CR4/EFER = the kernel's: %s %s %s %s\n", SAVED32(0xFF58) == (uint32_t)cr0 ? "yes" : "no",
            SAVED(0xFF50) == cr3 ? "yes" : "no", SAVED32(0xFF48) == (uint32_t)cr4 ? "yes" : "no",
            SAVED(0xFED0) == efer ? "yes" : "no");
    kprintf("smm: saved CS %04x, SS %04x, DS %04x, TR %04x, GDTR limit %04x\n", SAVED16(0xFE10), SAVED16(0xFE20),
            SAVED16(0xFE30), SAVED16(0xFE90), SAVED16(0xFE64));
    print_attr("smm: saved CS", SAVED16(0xFE12), SEG_ATTR_CODE64);
    check(after && SAVED(0xFFF8) == 0x1122334455667742ul &&
          SAVED16(0xFE10) == SEL_CODE64 && SAVED32(0xFF00) == SMBASE && rax == 0x1122334455667742ul,
          "state-save area");
}

static void changed_rax(void)
{
    MB(MB_FLAGS) = 1;
    uint64_t rax = smi_by_port(0x43, 0);
    MB(MB_FLAGS) = 0;
    kprintf("smm: the handler wrote 5EEDh into the saved RAX: RAX after RSM %lx\n", rax);
    check(rax == 0x5EED, "RSM reloads the saved RAX");
}

static void apic_smi(void)
{
    uint32_t before = MB(MB_COUNT);
    lapic_send_ipi(lapic_id(), 2u << 8);       /* delivery mode SMI (010b), vector 0 */
    kprintf("smm: APIC SMI message to itself: %u SMI(s)\n", MB(MB_COUNT) - before);
    check(MB(MB_COUNT) == before + 1, "APIC SMI");
}

/* An SMI while halted: the PIT's IRQ 0 (running since the firmware) routed
 * by the I/O APIC pin 2 as an SMI message (delivery mode 010b). */
static void halted_smi(void)
{
    uint32_t before = MB(MB_COUNT);
    MB(MB_FLAGS) = 2;                           /* resume after HLT, not in it */
    ioapic_write(0x10 + 2 * 2 + 1, lapic_id() << 24);
    ioapic_write(0x10 + 2 * 2, 2u << 8);
    asm volatile("sti\n\thlt\nafter_hlt:\n\tcli" ::: "memory");
    ioapic_mask(2);
    MB(MB_FLAGS) = 0;
    kprintf("smm: SMI from the I/O APIC (PIT IRQ 0) while halted: %s, saved RIP after HLT: %s\n",
            MB(MB_COUNT) > before ? "taken" : "none", SAVED(0xFF78) == (uint64_t)after_hlt ? "yes" : "no");
    kprintf("[qemu] smm: auto-halt restart field = %u (APM: 1)\n", MB(MB_AUTOHALT));
    check(MB(MB_COUNT) > before && SAVED(0xFF78) == (uint64_t)after_hlt, "SMI while halted");
}

static void gif_holds_smi(void)
{
    uint32_t before = MB(MB_COUNT);
    svm_clgi();
    plain_out_b2(0x44);
    delay_us(100);
    uint32_t held = MB(MB_COUNT) - before;
    svm_stgi();
    asm volatile("nop" ::: "memory");
    kprintf("smm: GIF = 0: %u SMI(s) taken; after STGI: %u\n", held, MB(MB_COUNT) - before);
    check(held == 0 && MB(MB_COUNT) == before + 1, "GIF holds an SMI (15.22.2)");
}

/* A 64-bit guest: OUT to B2h (not intercepted), then HLT (intercepted). */
asm(".pushsection .text\n"
    "guest_code:\n"
    "  mov $0x45, %al\n"
    "g_out: out %al, $0xb2\n"
    "g_after_out: jmp 1f\n"                  /* block ends: the SMI is seen before HLT */
    "1: jmp 2f\n"
    "2: nop\n"
    "g_hlt: hlt\n"
    "  jmp g_hlt\n"
    ".popsection\n");
extern char guest_code[];

static bool in_guest_code(uint64_t rip)
{
    return rip >= (uint64_t)g_after_out && rip <= (uint64_t)g_hlt;
}

static uint64_t run_guest(void)
{
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)guest_code, (uint64_t)guest_stack + sizeof guest_stack, NULL, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_HLT;
    svm_clgi();
    svm_run_guest(vmcb, &gprs);
    return VMCB_U64(vmcb, VMCB_EXITCODE);
}

static void guest_smis(void)
{
    uint32_t before = MB(MB_COUNT);
    vmcb_init(vmcb, iopm, msrpm);
    uint64_t code = run_guest();                /* without the SMI intercept */
    uint32_t in_guest = MB(MB_COUNT) - before;
    svm_stgi();
    kprintf("smm: guest without SMI intercept: exit %s, %u SMI(s) in the guest's context, saved RIP %s\n",
            svm_exit_name(code), in_guest, in_guest_code(SAVED(0xFF78)) ? "in the guest after the OUT" : "elsewhere");
    kprintf("[qemu] smm: SVM guest flag %lu, VMCB %s (APM: 1, the VMCB)\n", SAVED(0xFED8),
            SAVED(0xFEE0) == (uint64_t)vmcb ? "the VMCB" : "0");
    check(code == SVM_EXIT_HLT && in_guest == 1 && in_guest_code(SAVED(0xFF78)), "SMI in a guest");

    before = MB(MB_COUNT);
    vmcb_init(vmcb, iopm, msrpm);
    vmcb_guest_long(vmcb, (uint64_t)guest_code, (uint64_t)guest_stack + sizeof guest_stack, NULL, 0);
    VMCB_U32(vmcb, VMCB_INTERCEPT_MISC1) |= INTERCEPT_HLT | INTERCEPT_SMI;
    svm_clgi();
    svm_run_guest(vmcb, &gprs);
    code = VMCB_U64(vmcb, VMCB_EXITCODE);
    uint64_t info1 = VMCB_U64(vmcb, VMCB_EXITINFO1), grip = VMCB_U64(vmcb, VMCB_RIP);
    uint32_t at_exit = MB(MB_COUNT) - before;
    svm_stgi();
    asm volatile("nop" ::: "memory");
    kprintf("smm: guest with SMI intercept: exit %s (%03lx) %s, %u SMI(s) before STGI, %u after\n",
            svm_exit_name(code), code, in_guest_code(grip) ? "after the OUT" : "elsewhere", at_exit,
            MB(MB_COUNT) - before);
    kprintf("[qemu] smm: EXITINFO1 SMISRC = %lu (APM: 1, external)\n", info1 & 1);
    kprintf("smm: the held SMI was taken in the host after STGI (saved RIP in the host): %s\n",
            in_guest_code(SAVED(0xFF78)) ? "no" : "yes");
    check(code == 0x62 && at_exit == 0 && MB(MB_COUNT) == before + 1, "SMI intercept (table 15-14)");
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint8_t smram = pci_read8(0, 0, 0x72);
    kprintf("smm: i440FX SMRAM %02x (G_SMRAME %d, D_OPEN %d), PIIX4 PM %08x, APMC_EN %d\n", smram,
            (smram >> 3) & 1, (smram >> 6) & 1, pci_read32(1, 3, 0), (pci_read8(1, 3, 0x5B) >> 1) & 1);
    pci_write8(0, 0, 0x72, smram | 0x40);                       /* D_OPEN */
    memcpy((void *)(SMBASE + 0x8000), smm_handler, smm_handler_end - smm_handler);
    bool copied = memcmp((void *)(SMBASE + 0x8000), smm_handler, smm_handler_end - smm_handler) == 0;
    pci_write8(0, 0, 0x72, smram);
    bool hidden = memcmp((void *)(SMBASE + 0x8000), smm_handler, 16) != 0;
    kprintf("smm: handler installed with D_OPEN: %s; hidden again once closed: %s\n", copied ? "yes" : "no",
            hidden ? "yes" : "no");
    check(copied && hidden, "SMRAM opened and closed");
    lapic_enable();
    memset((void *)MAILBOX, 0, 0x300);
    first_smi();
    changed_rax();
    apic_smi();
    halted_smi();
    svm_cpuid(&info);
    const char *err = svm_enable(hsave);
    if (err) {
        kprintf("smm: no SVM (%s)\n", err);
        return 1;
    }
    gif_holds_smi();
    guest_smis();
    kprintf("smm: %s\n", failures ? "FAIL" : "PASS");
    return failures;
}
