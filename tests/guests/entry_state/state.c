/*
 * entry_state: print the machine state a Multiboot kernel finds at entry
 * (registers, MSRs, 8259 PIC, 8254 PIT, CMOS, local and I/O APIC, port 92h)
 * as "name=value" lines on COM1, then exit through isa-debug-exit.  Values
 * that change with time (clock registers, counter values, PIT output and
 * refresh bits) are left out so two runs of one platform print the same.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

struct saved {
    u32 eax, ebx, ecx, edx, esi, edi, ebp, esp, eflags, cr0, cr2, cr3, cr4, dr6, dr7;
    u16 cs, ds, es, fs, gs, ss;
    u16 gdt_limit; u32 gdt_base; u16 pad0;
    u16 idt_limit; u32 idt_base; u16 pad1;
    u16 ldtr, tr;
} __attribute__((packed));

extern u32 fpuenv[7];                   /* FNSTENV, 32-bit protected mode */
extern volatile u32 last_vector, vector_count, gp_count, irq_mode;

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0,%1" : : "a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 mmio(u32 a) { return *(volatile u32 *)a; }
static inline void mmio_w(u32 a, u32 v) { *(volatile u32 *)a = v; }

static void puts(const char *s) { while (*s) outb(0x3f8, *s++); }
static void hex(u64 v)
{
    char b[19]; int i = 18; b[i] = 0;
    do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    b[--i] = 'x'; b[--i] = '0'; puts(b + i);
}
static void kv(const char *k, u64 v) { puts(k); puts("="); hex(v); puts("\n"); }
static void kvi(const char *k, u32 i, u64 v) { puts(k); puts("["); hex(i); puts("]="); hex(v); puts("\n"); }

static void rdmsr_show(u32 msr)
{
    u32 lo = 0, hi = 0, before = gp_count;
    __asm__ volatile("rdmsr" : "+a"(lo), "+d"(hi) : "c"(msr));
    puts("msr["); hex(msr); puts("]=");
    if (gp_count != before) puts("#GP"); else hex((u64)hi << 32 | lo);
    puts("\n");
}

static u8 cmos(u8 idx) { outb(0x70, idx); return inb(0x71); }

/* Unmask one 8259 line, let it interrupt once, report the vector it used. */
static u32 irq_vector(u8 master_mask, u8 slave_mask)
{
    u8 m = inb(0x21), s = inb(0xA1);
    u32 before = vector_count;
    irq_mode = 1;
    outb(0xA1, slave_mask);
    outb(0x21, master_mask);
    for (u32 spins = 0; vector_count == before && spins < 100; spins++)
        __asm__ volatile("sti; hlt; cli");
    outb(0x21, m);
    outb(0xA1, s);
    irq_mode = 0;
    outb(0x20, 0x20);                       /* EOI */
    outb(0xA0, 0x20);
    return vector_count == before ? 0xFFFFFFFF : last_vector;
}

void state_main(struct saved *r)
{
    /* COM1 before the first character goes out (LCR.DLAB selects the divisor). */
    u8 ier = inb(0x3F9), lcr = inb(0x3FB), mcr = inb(0x3FC);
    outb(0x3FB, lcr | 0x80);
    u8 dll = inb(0x3F8), dlm = inb(0x3F9);
    outb(0x3FB, lcr);
    kv("eax", r->eax); kv("ebx", r->ebx); kv("ecx", r->ecx); kv("edx", r->edx);
    kv("esi", r->esi); kv("edi", r->edi); kv("ebp", r->ebp); kv("esp", r->esp);
    kv("eflags", r->eflags);
    kv("cr0", r->cr0); kv("cr2", r->cr2); kv("cr3", r->cr3); kv("cr4", r->cr4);
    kv("dr6", r->dr6); kv("dr7", r->dr7);
    kv("cs", r->cs); kv("ds", r->ds); kv("es", r->es); kv("fs", r->fs); kv("gs", r->gs);
    kv("ss", r->ss);
    kv("gdt_base", r->gdt_base); kv("gdt_limit", r->gdt_limit);
    kv("idt_base", r->idt_base); kv("idt_limit", r->idt_limit);
    kv("ldtr", r->ldtr); kv("tr", r->tr);
    kv("x87_fcw", fpuenv[0] & 0xFFFF); kv("x87_fsw", fpuenv[1] & 0xFFFF);
    kv("x87_ftw", fpuenv[2] & 0xFFFF);
    kv("com1_ier", ier); kv("com1_lcr", lcr); kv("com1_mcr", mcr);
    kv("com1_divisor", dll | dlm << 8);
    /* ld -m elf_i386 -Ttext=0x100000 puts the ELF headers in a first PT_LOAD
     * at 0xFF000: QEMU loads it there, in the BIOS-shadow RAM. */
    kv("mem_ff000", *(volatile u32 *)0xFF000);

    static const u32 msrs[] = {
        0x1B, 0xFE, 0x277, 0x2FF, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C,
        0x26D, 0x26E, 0x26F, 0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207,
        0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084, 0xC0010010, 0xC0010015,
        0xC001001A, 0xC001001D, 0xC0010114, 0xC0010117, 0x174, 0x175, 0x176,
    };
    for (u32 i = 0; i < sizeof(msrs) / sizeof(msrs[0]); i++)
        rdmsr_show(msrs[i]);

    /* 8259 pair: masks, IRR/ISR (OCW3), ELCR. */
    kv("pic_imr_master", inb(0x21)); kv("pic_imr_slave", inb(0xA1));
    outb(0x20, 0x0A); outb(0xA0, 0x0A);
    kv("pic_irr_master", inb(0x20) & ~1);    /* IRQ0: whether the PIT ticked yet */
    kv("pic_irr_slave", inb(0xA0));
    outb(0x20, 0x0B); outb(0xA0, 0x0B);
    kv("pic_isr_master", inb(0x20)); kv("pic_isr_slave", inb(0xA0));
    outb(0x20, 0x0A); outb(0xA0, 0x0A);
    kv("elcr", inb(0x4D0) | inb(0x4D1) << 8);

    /* 8254: read-back status of each channel, OUTPUT (bit 7) masked. */
    for (u32 ch = 0; ch < 3; ch++) {
        outb(0x43, 0xE0 | 2 << ch);          /* latch status only, channel ch */
        kvi("pit_status", ch, inb(0x40 + ch) & 0x7F);
    }
    kv("port61", inb(0x61) & 0x0F);          /* gate 2, speaker, parity/IOCHK enables */
    kv("port92", inb(0x92));

    /* CMOS: status A (UIP masked), B, D, and the configuration bytes. */
    kv("cmos_a", cmos(0x0A) & 0x7F); kv("cmos_b", cmos(0x0B)); kv("cmos_d", cmos(0x0D));
    for (u32 i = 0x0E; i < 0x80; i++)
        kvi("cmos", i, cmos(i));

    /* Local APIC (xAPIC page) and I/O APIC. */
    static const u16 lapic[] = { 0x20, 0x30, 0x80, 0xD0, 0xE0, 0xF0, 0x280, 0x320, 0x330,
                                 0x340, 0x350, 0x360, 0x370, 0x380, 0x3E0 };
    for (u32 i = 0; i < sizeof(lapic) / sizeof(lapic[0]); i++)
        kvi("lapic", lapic[i], mmio(0xFEE00000 + lapic[i]));
    for (u32 i = 0; i < 0x40; i++) {
        if (i == 2 || (i > 2 && i < 0x10))
            continue;
        mmio_w(0xFEC00000, i);
        kvi("ioapic", i, mmio(0xFEC00010));
    }

    /* 8259 vector bases: IRQ0 (the PIT SeaBIOS left running) and IRQ8 (the
     * RTC's periodic interrupt) delivered through the IDT. */
    kv("irq0_vector", irq_vector(0xFE, 0xFF));
    u8 b = cmos(0x0B);
    outb(0x70, 0x0B); outb(0x71, b | 0x40);  /* periodic interrupt enable */
    kv("irq8_vector", irq_vector(0xFB, 0xFE));
    outb(0x70, 0x0B); outb(0x71, b);
    cmos(0x0C);                              /* acknowledge */
    kv("gp_count", gp_count);
    outb(0xf4, 0);
}
