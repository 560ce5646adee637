/*
 * skinit: SKINIT (AMD APM vol 2, 15.27) from a bare-metal kernel, on the
 * manual alone (QEMU has no SKINIT).  Boot with --smp 2 --device edu.
 *
 * The kernel reads PCR 17 of the TPM (TIS at FED4_0000h) before, INITs the
 * AP, copies a secure loader (SL) into a 64 KiB-aligned SLB and executes
 * SKINIT.  The SL, in flat 32-bit protected mode, records the state SKINIT
 * left and returns to the kernel's long mode through a resume block the
 * kernel left in the SLB's scratch area (outside the measured image).  The
 * kernel then checks that state, GIF = 0 until STGI, PCR 17 = the
 * measurement of the SL image it computes itself with SHA-1, SL_DEV's
 * protection of the SLB from the edu device's DMA, the secure start-up of
 * the AP, and VM_CR.R_INIT turning an INIT into #SX.
 */
#include "edu.h"

#define TPM 0xFED40000ul
#define MSR_VM_CR 0xC0010114
#define VEC_SELF 0x50
#define SCRATCH 0x8000                /* the SL's records, beyond the image */
#define RESUME 0x8100                 /* the resume block the kernel fills */

static uint8_t slb[0x10000] __attribute__((aligned(0x10000)));
static int failures;
static volatile uint32_t self_ipis, sx_count, sx_error, ap_vm_cr, ap_held, ap_done;
static volatile uint64_t saved_rsp;
static struct { uint16_t limit; uint64_t base; } __attribute__((packed)) saved_idtr;

extern char sl_start[], sl_end[], skinit_resume64[];
void skinit_after(void);

/* The secure loader: position independent 32-bit code, EAX = SLB base. */
asm(".section .rodata.sl, \"a\"\n"
    ".code32\n"
    ".globl sl_start, sl_end\n"
    ".balign 16\n"
    "sl_start:\n"
    "  .word sl_code - sl_start\n"            /* entry point offset */
    "  .word sl_end - sl_start\n"             /* image length */
    "  .balign 16\n"
    "sl_code:\n"
    "  mov %eax, %ebp\n"
    "  mov %eax, %ss:0x8000(%ebp)\n"
    "  mov %edx, %ss:0x8004(%ebp)\n"
    "  mov %esp, %ss:0x8008(%ebp)\n"
    "  pushfl\n"
    "  popl %ss:0x800c(%ebp)\n"
    "  mov %cr0, %ecx\n  mov %ecx, %ss:0x8010(%ebp)\n"
    "  mov %cr4, %ecx\n  mov %ecx, %ss:0x8014(%ebp)\n"
    "  mov %cs, %ecx\n  mov %ecx, %ss:0x8018(%ebp)\n"
    "  mov %ss, %ecx\n  mov %ecx, %ss:0x801c(%ebp)\n"
    "  mov %ds, %ecx\n  mov %ecx, %ss:0x8020(%ebp)\n"
    "  mov %ebx, %ss:0x8024(%ebp)\n"
    "  mov $0xC0000080, %ecx\n  rdmsr\n  mov %eax, %ss:0x8028(%ebp)\n"
    "  mov $0xC0010114, %ecx\n  rdmsr\n  mov %eax, %ss:0x802c(%ebp)\n"
    /* back to the kernel's long mode (its GDT, CR4, CR3, EFER, CR0) */
    "  lgdtl %ss:0x8100(%ebp)\n"
    "  mov $0x10, %ecx\n  mov %ecx, %ds\n  mov %ecx, %es\n  mov %ecx, %ss\n"
    "  mov 0x8108(%ebp), %ecx\n  mov %ecx, %cr4\n"
    "  mov 0x810c(%ebp), %ecx\n  mov %ecx, %cr3\n"
    "  mov $0xC0000080, %ecx\n  mov 0x8110(%ebp), %eax\n  mov 0x8114(%ebp), %edx\n  wrmsr\n"
    "  mov 0x8118(%ebp), %ecx\n  mov %ecx, %cr0\n"
    "  ljmpl *0x8120(%ebp)\n"
    "sl_end:\n"
    ".code64\n"
    ".text\n"
    ".globl skinit_resume64\n"
    "skinit_resume64:\n"
    "  mov $0x10, %ax\n  mov %ax, %ds\n  mov %ax, %es\n  mov %ax, %ss\n  mov %ax, %fs\n  mov %ax, %gs\n"
    "  mov saved_rsp(%rip), %rsp\n"
    "  lidt saved_idtr(%rip)\n"
    "  call skinit_after\n"
    "1: cli\n  hlt\n  jmp 1b\n");

static void check(bool ok, const char *what)
{
    if (!ok) {
        kprintf("FAIL: %s\n", what);
        failures++;
    }
}

/* ---------------------------------------------------------------- SHA-1 (FIPS 180-4) */
struct sha1 { uint32_t h[5]; uint8_t block[64]; uint64_t len; };

static uint32_t rol(uint32_t x, int n) { return x << n | x >> (32 - n); }

static void sha1_block(struct sha1 *s)
{
    uint32_t w[80], a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)s->block[4 * i] << 24 | s->block[4 * i + 1] << 16 | s->block[4 * i + 2] << 8 |
               s->block[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d; d = c; c = rol(b, 30); b = a; a = t;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}

static void sha1(const uint8_t *data, uint64_t n, uint8_t out[20])
{
    struct sha1 s = { { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 }, { 0 }, 0 };
    for (uint64_t i = 0; i < n; i++) {
        s.block[s.len++ % 64] = data[i];
        if (s.len % 64 == 0)
            sha1_block(&s);
    }
    uint64_t bits = s.len * 8;
    s.block[s.len++ % 64] = 0x80;
    while (s.len % 64 != 56) {
        if (s.len % 64 == 0)
            sha1_block(&s);
        s.block[s.len++ % 64] = 0;
    }
    for (int i = 7; i >= 0; i--)
        s.block[s.len++ % 64] = (uint8_t)(bits >> (8 * i));
    sha1_block(&s);
    for (int i = 0; i < 20; i++)
        out[i] = (uint8_t)(s.h[i / 4] >> (24 - 8 * (i % 4)));
}

/* ---------------------------------------------------------------- TPM 1.2 over TIS, locality 0 */
static uint8_t tpm8(uint32_t reg) { return *(volatile uint8_t *)(TPM + reg); }
static void tpm8w(uint32_t reg, uint8_t v) { *(volatile uint8_t *)(TPM + reg) = v; }

/* TPM_PCRRead (ordinal 15h); returns the TPM's return code. */
static uint32_t tpm_pcr_read(uint32_t index, uint8_t digest[20])
{
    static const uint8_t head[10] = { 0x00, 0xC1, 0, 0, 0, 14, 0, 0, 0, 0x15 };
    uint8_t cmd[14], rsp[30];
    memcpy(cmd, head, 10);
    for (int i = 0; i < 4; i++)
        cmd[10 + i] = (uint8_t)(index >> (24 - 8 * i));
    tpm8w(0x00, 0x02);                        /* TPM_ACCESS.requestUse */
    tpm8w(0x18, 0x40);                        /* TPM_STS.commandReady */
    for (int i = 0; i < 14; i++)
        tpm8w(0x24, cmd[i]);
    tpm8w(0x18, 0x20);                        /* TPM_STS.tpmGo */
    while (!(tpm8(0x18) & 0x10))              /* dataAvail */
        pause();
    for (int i = 0; i < 30 && (tpm8(0x18) & 0x10); i++)
        rsp[i] = tpm8(0x24);
    tpm8w(0x18, 0x40);
    tpm8w(0x00, 0x20);                        /* relinquish the locality */
    memcpy(digest, rsp + 10, 20);
    return (uint32_t)rsp[6] << 24 | rsp[7] << 16 | rsp[8] << 8 | rsp[9];
}

static void print_digest(const char *what, const uint8_t d[20])
{
    kprintf("%s", what);
    for (int i = 0; i < 20; i++)
        kprintf("%02x", d[i]);
    kprintf("\n");
}

/* ---------------------------------------------------------------- interrupts */
static void self_isr(struct trap_frame *f)
{
    self_ipis++;
    lapic_eoi();
}

static void sx_isr(struct trap_frame *f)
{
    sx_count++;
    sx_error = (uint32_t)f->error;
}

static void stgi(void) { asm volatile("stgi" ::: "memory"); }

/* The AP after its secure start-up: VM_CR, then GIF = 0 holds a self-IPI until STGI. */
static void ap_secure(int apic_id)
{
    ap_vm_cr = (uint32_t)rdmsr(MSR_VM_CR);
    uint32_t before = self_ipis;
    lapic_write(LAPIC_ICR_LO, ICR_SELF | VEC_SELF);
    sti();
    delay_us(100);
    ap_held = self_ipis == before;
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | (1ul << 12));
    stgi();
    delay_us(100);
    cli();
    lapic_send_ipi(0, ICR_INIT | ICR_ASSERT | ICR_LEVEL);   /* to the BSP, whose R_INIT is set */
    ap_done = 1;
    for (;;)
        asm volatile("hlt");
}

/* ---------------------------------------------------------------- after SKINIT */
extern uint64_t gdt_tss[];

void skinit_after(void)
{
    gdt_tss[0] &= ~(1ul << 41);               /* TR was reset: make the TSS available again */
    asm volatile("ltr %w0" : : "r"((uint16_t)SEL_TSS(0)));
    uint32_t *rec = (uint32_t *)(slb + SCRATCH);
    uint32_t sig[4];
    cpuid(1, 0, sig);
    uint32_t base = (uint32_t)(uint64_t)slb;
    kprintf("skinit: SL entered: EAX %s, ESP %s, EDX %s, EBX %08x\n",
            rec[0] == base ? "= SLB base" : "WRONG", rec[2] == base + 0x10000 ? "= SLB base + 64 KiB" : "WRONG",
            rec[1] == sig[0] ? "= family/model/stepping" : "WRONG", rec[9]);
    kprintf("skinit: EFLAGS %08x, CR0 %08x (PE %d, PG %d), CR4 %08x, EFER %08x\n", rec[3], rec[4], rec[4] & 1,
            rec[4] >> 31, rec[5], rec[10]);
    kprintf("skinit: CS %02x, SS %02x, DS %02x, VM_CR %02x\n", rec[6] & 0xFFFF, rec[7] & 0xFFFF, rec[8] & 0xFFFF,
            rec[11]);
    check(rec[0] == base && rec[2] == base + 0x10000 && (rec[4] & 0x80000001) == 1 && rec[10] == 0 &&
          (rec[6] & 0xFFFF) == 8 && (rec[7] & 0xFFFF) == 0x10 && (rec[11] & 7) == 7, "SKINIT's state");

    lapic_write(LAPIC_ICR_LO, ICR_SELF | VEC_SELF);
    sti();
    delay_us(100);
    cli();
    kprintf("skinit: GIF = 0 holds a self-IPI: %u taken\n", self_ipis);
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | (1ul << 12));
    stgi();
    sti();
    delay_us(100);
    cli();
    kprintf("skinit: after STGI: %u taken\n", self_ipis);
    check(self_ipis == 1, "GIF");

    uint8_t pcr[20], inner[20], outer[40], expect[20];
    uint32_t rc = tpm_pcr_read(17, pcr);
    sha1(slb, sl_end - sl_start, inner);
    memset(outer, 0, 20);
    memcpy(outer + 20, inner, 20);
    sha1(outer, 40, expect);
    kprintf("skinit: TPM_ACCESS %02x (tpmEstablishment 0 after the locality-4 hash)\n", tpm8(0x00));
    print_digest("skinit: PCR17 = ", pcr);
    print_digest("skinit: SHA-1(0^20 || SHA-1(SL image)) = ", expect);
    check(rc == 0 && memcmp(pcr, expect, 20) == 0, "PCR 17 is the measurement of the SL");

    static uint8_t outside[16];
    edu_setup();
    memset(slb + 0x9000, 0x11, 16);
    memset(outside, 0x22, 16);
    edu_dma((uint64_t)slb + 0x9000, EDU_BUF, 16, 1);
    edu_dma(EDU_BUF, (uint64_t)outside, 16, 3);
    kprintf("skinit: edu DMA reads the SLB: %02x (all ones: SL_DEV blocks it)\n", outside[0]);
    memset(outside, 0x22, 16);
    edu_dma((uint64_t)outside, EDU_BUF, 16, 1);
    edu_dma(EDU_BUF, (uint64_t)slb + 0x9000, 16, 3);
    kprintf("skinit: edu DMA writes the SLB: %02x (unchanged)\n", slb[0x9000]);
    pci_write32(0, 0, 0xF4, 4 << 8);          /* DEV_CR through the host bridge's DEV block */
    uint32_t cr = pci_read32(0, 0, 0xF8);
    pci_write32(0, 0, 0xF8, cr & ~0x20u);     /* the SL/SK clears SL_DEV_EN */
    edu_dma(EDU_BUF, (uint64_t)slb + 0x9000, 16, 3);
    kprintf("skinit: DEV_CR %02x (SL_DEV_EN), cleared: DMA writes %02x\n", cr, slb[0x9000]);
    check((cr & 0x20) && slb[0x9000] == 0x22, "SL_DEV");

    set_handler(30, sx_isr);
    ap_main = ap_secure;
    lapic_send_ipi(1, ICR_STARTUP | ICR_ASSERT | 0x08);
    for (int i = 0; i < 10000 && !ap_done; i++)
        delay_us(10);
    delay_us(100);
    kprintf("skinit: AP started by SIPI: VM_CR %02x, GIF = 0 held its self-IPI: %s\n", ap_vm_cr & 0xFF,
            ap_held ? "yes" : "no");
    kprintf("skinit: INIT to the BSP with VM_CR.R_INIT: #SX %u time(s), error code %u\n", sx_count, sx_error);
    check(ap_done && (ap_vm_cr & 7) == 7 && ap_held && sx_count == 1 && sx_error == 1, "AP start-up and #SX");
    kprintf("skinit: %s\n", failures ? "FAIL" : "PASS");
    exit_qemu(failures);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint8_t pcr[20];
    uint32_t r[4];
    cpuid(0x80000001, 0, r);
    kprintf("skinit: CPUID 8000_0001 ECX[SKINIT] = %u\n", (r[2] >> 12) & 1);
    if (!((r[2] >> 12) & 1))
        return 1;
    if (fw_cfg_ncpus() < 2 || pci_find(0x1234, 0x11E8) < 0) {
        kprintf("skinit: needs --smp 2 --device edu (the AP's secure start-up, DMA at the SLB); "
                "the machine has %u CPU(s) and %s\n", fw_cfg_ncpus(),
                pci_find(0x1234, 0x11E8) < 0 ? "no edu device" : "an edu device");
        return 1;
    }
    uint32_t rc = tpm_pcr_read(17, pcr);
    kprintf("skinit: TPM %08x, TPM_ACCESS %02x, PCR17 read rc %u\n", *(volatile uint32_t *)(TPM + 0xF00),
            tpm8(0x00), rc);
    print_digest("skinit: PCR17 before = ", pcr);
    *(volatile uint8_t *)(TPM + 0x4028) = 0;  /* software's TPM_HASH_START at locality 4 */
    tpm_pcr_read(17, pcr);
    print_digest("skinit: PCR17 after a software HASH_START = ", pcr);

    lapic_enable();
    set_handler(VEC_SELF, self_isr);
    kprintf("skinit: AP 1 %s\n", start_ap(1) ? "online" : "missing");
    lapic_send_ipi(1, ICR_INIT | ICR_ASSERT | ICR_LEVEL);   /* 15.27.8: INIT the APs first */

    memcpy(slb, sl_start, sl_end - sl_start);
    uint8_t *res = slb + RESUME;
    asm volatile("sgdt %0" : "=m"(*(char(*)[10])res));
    asm volatile("sidt %0" : "=m"(saved_idtr));
    *(uint32_t *)(res + 0x08) = (uint32_t)read_cr4();
    *(uint32_t *)(res + 0x0C) = (uint32_t)read_cr3();
    *(uint64_t *)(res + 0x10) = rdmsr(MSR_EFER) & ~(1ul << 10);     /* LMA is the processor's */
    *(uint32_t *)(res + 0x18) = (uint32_t)read_cr0();
    *(uint32_t *)(res + 0x20) = (uint32_t)(uint64_t)skinit_resume64;
    *(uint16_t *)(res + 0x24) = SEL_CODE64;
    kprintf("skinit: SLB at %s, SL image %d bytes, EFER.SVME = %lu\n",
            ((uint64_t)slb & 0xFFFF) ? "a misaligned address" : "a 64 KiB boundary", (int)(sl_end - sl_start),
            (rdmsr(MSR_EFER) >> 12) & 1);
    asm volatile("mov %%rsp, saved_rsp(%%rip)\n\t"
                 "skinit" : : "a"((uint32_t)(uint64_t)slb + 0x1234) : "memory");
    kprintf("skinit: SKINIT returned\n");
    return 1;
}
