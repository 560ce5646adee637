/*
 * rt.c - runtime of the test kernels: serial console, kprintf, exit, GDT/TSS,
 * IDT and trap dispatch, 4 KiB page mapping, local APIC, AP startup.
 */
#include "rt.h"
#include "sev.h"

/* ================================================================ memory */

void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    if (p < q)
        return memcpy(d, s, n);
    while (n--)
        p[n] = q[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (uint8_t)*a - (uint8_t)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

/* ================================================================ console */

#define COM1 0x3F8
#define UART_LSR_THRE 0x20           /* 16550 datasheet: THR empty */
#define DEBUG_EXIT_PORT 0xF4         /* QEMU isa-debug-exit */

/* 115200 8N1, FIFOs on.  QEMU ignores the rate; real UARTs need it. */
void serial_init(void)
{
    outb(COM1 + 1, 0x00);            /* IER: no interrupts */
    outb(COM1 + 3, 0x80);            /* LCR: DLAB = 1 */
    outb(COM1 + 0, 0x01);            /* DLL: divisor 1 = 115200 baud */
    outb(COM1 + 1, 0x00);            /* DLM */
    outb(COM1 + 3, 0x03);            /* LCR: 8 data bits, no parity, 1 stop */
    outb(COM1 + 2, 0xC7);            /* FCR: enable and clear FIFOs */
    outb(COM1 + 4, 0x03);            /* MCR: DTR | RTS */
}

void serial_putc(char c)
{
    /* Bounded: with no UART present LSR reads as FFh or never sets THRE. */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & UART_LSR_THRE); i++)
        pause();
    outb(COM1, (uint8_t)c);
}

/* One lock for the console so lines from two CPUs do not interleave.  It
 * is re-entrant per CPU so a fault inside kprintf can still be reported. */
static volatile uint32_t console_owner = 0xFFFFFFFF;
static uint32_t console_depth;

static uint32_t this_apic_id(void)
{
    uint32_t r[4];
    cpuid(1, 0, r);
    return r[1] >> 24;
}

static void console_lock(void)
{
    uint32_t me = this_apic_id();
    if (console_owner == me) {
        console_depth++;
        return;
    }
    uint32_t free = 0xFFFFFFFF;
    while (!__atomic_compare_exchange_n(&console_owner, &free, me, false,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        free = 0xFFFFFFFF;
        pause();
    }
    console_depth = 1;
}

static void console_unlock(void)
{
    if (--console_depth == 0)
        __atomic_store_n(&console_owner, 0xFFFFFFFF, __ATOMIC_RELEASE);
}

static void put_str(const char *s, int width, char pad)
{
    int n = (int)strlen(s);
    for (; width > n; width--)
        serial_putc(pad);
    while (*s)
        serial_putc(*s++);
}

static void put_num(uint64_t v, unsigned base, bool neg, int width, char pad)
{
    char buf[24];
    int i = sizeof(buf) - 1;
    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg) {
        if (pad == '0') {
            serial_putc('-');
            width--;
        } else {
            buf[--i] = '-';
        }
    }
    put_str(&buf[i], width, pad);
}

/* printf subset: %d %i %u %x %p %s %c %%, with 0-padding, width, l/ll. */
static void vkprintf(const char *fmt, __builtin_va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        char pad = ' ';
        int width = 0, longs = 0;
        if (*++fmt == '0')
            pad = '0', fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l')
            longs++, fmt++;
        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = longs ? __builtin_va_arg(ap, int64_t) : __builtin_va_arg(ap, int);
            put_num(v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, pad);
            break;
        }
        case 'u':
        case 'x': {
            uint64_t v = longs ? __builtin_va_arg(ap, uint64_t) : __builtin_va_arg(ap, uint32_t);
            put_num(v, *fmt == 'u' ? 10 : 16, false, width, pad);
            break;
        }
        case 'p':
            put_str("0x", 0, ' ');
            put_num((uint64_t)__builtin_va_arg(ap, void *), 16, false, 16, '0');
            break;
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            put_str(s ? s : "(null)", width, ' ');
            break;
        }
        case 'c':
            serial_putc((char)__builtin_va_arg(ap, int));
            break;
        case '%':
            serial_putc('%');
            break;
        case 0:
            return;
        default:
            serial_putc('%');
            serial_putc(*fmt);
        }
    }
}

void kprintf(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    console_lock();
    vkprintf(fmt, ap);
    console_unlock();
    __builtin_va_end(ap);
}

void kputs(const char *s)
{
    kprintf("%s\n", s);
}

/* QEMU's isa-debug-exit ends the run with status (code << 1) | 1.  On
 * hardware the write goes nowhere and we halt forever. */
void exit_qemu(int code)
{
    outl(DEBUG_EXIT_PORT, (uint32_t)code);
    for (;;)
        asm volatile("cli; hlt");
}

/* ================================================================ multiboot */

static uint32_t boot_mbi;

const char *mb_cmdline(void)
{
    /* Multiboot info: flags bit 2 says `cmdline` (offset 16) is valid. */
    const uint32_t *mbi = (const uint32_t *)(uintptr_t)boot_mbi;
    if (!mbi || !(mbi[0] & (1u << 2)) || !mbi[4])
        return "";
    return (const char *)(uintptr_t)mbi[4];
}

/* QEMU (like GRUB) passes "<kernel path> <-append text>"; skip the path. */
const char *mb_args(void)
{
    const char *s = mb_cmdline();
    while (*s && *s != ' ')
        s++;
    while (*s == ' ')
        s++;
    return s;
}

bool cmdline_u64(const char *key, uint64_t *out)
{
    size_t klen = strlen(key);
    for (const char *s = mb_args(); *s;) {
        if (!strncmp(s, key, klen) && s[klen] == '=') {
            const char *p = s + klen + 1;
            unsigned base = 10;
            uint64_t v = 0;
            if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
                base = 16, p += 2;
            for (;; p++) {
                int d = (*p >= '0' && *p <= '9') ? *p - '0'
                      : (base == 16 && *p >= 'a' && *p <= 'f') ? *p - 'a' + 10
                      : (*p == '_') ? -2 : -1;
                if (d == -2)
                    continue;
                if (d < 0)
                    break;
                v = v * base + (unsigned)d;
            }
            *out = v;
            return true;
        }
        while (*s && *s != ' ')
            s++;
        while (*s == ' ')
            s++;
    }
    return false;
}

/* ================================================================ GDT / TSS */

/* 64-bit TSS, APM vol 2, 12.2.5 (Figure 12-8). */
struct tss {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
} __attribute__((packed));

#define KSTACK 8192
extern uint64_t gdt[], gdt_tss[];
extern struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdt_desc;

static struct tss tss[MAX_CPUS] __attribute__((aligned(16)));
static uint8_t int_stack[MAX_CPUS][KSTACK] __attribute__((aligned(16)));
static uint8_t df_stack[MAX_CPUS][KSTACK] __attribute__((aligned(16)));
/* AP i's stack is ap_stacks[i]: boot64.S finds it from the APIC ID (1 << AP_STACK_SHIFT). */
uint8_t ap_stacks[MAX_CPUS][16384] __attribute__((aligned(16)));

/* A 16-byte system descriptor, type 9 = available 64-bit TSS (APM vol 2,
 * 4.8.3, Figure 4-22). */
static void gdt_set_tss(int cpu)
{
    uint64_t base = (uint64_t)&tss[cpu], limit = sizeof(struct tss) - 1;
    gdt_tss[2 * cpu] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) |
                       (0x89ul << 40) | (((limit >> 16) & 0xF) << 48) |
                       (((base >> 24) & 0xFF) << 56);
    gdt_tss[2 * cpu + 1] = base >> 32;
}

/* RSP0 is used when an interrupt arrives at CPL3; IST1 gives #DF a known
 * good stack (APM vol 2, 8.9.4 "Interrupt-Stack Table"). */
static void cpu_tables_init(int cpu)
{
    memset(&tss[cpu], 0, sizeof(tss[cpu]));
    tss[cpu].rsp[0] = (uint64_t)&int_stack[cpu][KSTACK];
    tss[cpu].ist[0] = (uint64_t)&df_stack[cpu][KSTACK];
    tss[cpu].iomap_base = sizeof(struct tss);      /* no I/O bitmap */
    gdt_set_tss(cpu);
    asm volatile("lgdt %0" : : "m"(gdt_desc));
    asm volatile("ltr %w0" : : "r"(SEL_TSS(cpu)));
}

/* ================================================================ IDT */

struct idt_gate {
    uint16_t offset_lo, selector;
    uint8_t ist, type_attr;
    uint16_t offset_mid;
    uint32_t offset_hi, reserved;
} __attribute__((packed));

extern char isr_stubs[];
extern uint64_t user_return_rsp;
extern char user_return[];
static struct idt_gate idt[256] __attribute__((aligned(16)));
/* Global: boot64.S loads it on an AP before its first CPUID (a #VC under SEV-ES). */
struct { uint16_t limit; uint64_t base; } __attribute__((packed)) rt_idt_desc;
static trap_handler_t handlers[256];

/* 64-bit interrupt gate (type Eh: clears IF on entry), APM vol 2, 4.8.4. */
void idt_set_gate(int vector, int dpl, int ist)
{
    uint64_t off = (uint64_t)isr_stubs + 16 * (uint64_t)vector;
    struct idt_gate *g = &idt[vector];
    g->offset_lo = off & 0xFFFF;
    g->selector = SEL_CODE64;
    g->ist = ist & 7;
    g->type_attr = 0x80 | (dpl & 3) << 5 | 0xE;
    g->offset_mid = (off >> 16) & 0xFFFF;
    g->offset_hi = off >> 32;
    g->reserved = 0;
}

void idt_set_present(int vector, bool present)
{
    idt[vector].type_attr = (idt[vector].type_attr & 0x7F) | (present ? 0x80 : 0);
}

void set_handler(int vector, trap_handler_t h)
{
    handlers[vector & 0xFF] = h;
}

volatile struct trap_info last_trap;
volatile uint64_t trap_fixup_rip, trap_fixup_rsp;

void trap_arm(void)
{
    last_trap.vector = -1;
    last_trap.error = last_trap.cr2 = last_trap.cs = last_trap.rip = 0;
}

int trap_done(void)
{
    trap_fixup_rip = 0;
    return last_trap.vector;
}

void record_trap(struct trap_frame *f)
{
    last_trap.rip = f->rip;
    last_trap.vector = (int)f->vector;
    last_trap.error = f->error;
    last_trap.cr2 = f->cr2;
    last_trap.cs = f->cs;
    last_trap.count++;
}

/* Resume a faulting TRY() block; false if none is armed. */
static bool take_fixup(struct trap_frame *f)
{
    if ((f->cs & 3) == 0 && trap_fixup_rip) {
        record_trap(f);
        f->rip = trap_fixup_rip;
        f->rsp = trap_fixup_rsp;     /* matters for #DF, whose RIP/RSP are undefined */
        f->cs = SEL_CODE64;
        f->ss = SEL_DATA;
        trap_fixup_rip = 0;
        return true;
    }
    return false;
}

/* int 0x80 from CPL3: return to enter_user's caller, at CPL0, with RAX. */
static void int80_handler(struct trap_frame *f)
{
    record_trap(f);
    if ((f->cs & 3) != 3)
        return;
    f->rip = (uint64_t)user_return;
    f->cs = SEL_CODE64;
    f->ss = SEL_DATA;
    f->rsp = user_return_rsp;
    f->rflags = 0x2;
}

static void unexpected(struct trap_frame *f)
{
    kprintf("FAIL: unexpected vector %lu error 0x%lx rip 0x%lx cs 0x%lx "
            "rflags 0x%lx cr2 0x%lx\n", f->vector, f->error, f->rip, f->cs,
            f->rflags, f->cr2);
    exit_qemu(2);
}

void isr_dispatch(struct trap_frame *f)
{
    int v = (int)f->vector;
    if (handlers[v])
        handlers[v](f);
    else if (v < 32 && take_fixup(f))
        return;
    else if (v == SPURIOUS_VECTOR)
        return;                      /* spurious: no EOI (APM vol 2, 16.4.7) */
    else
        unexpected(f);
}

static void idt_init(void)
{
    for (int v = 0; v < 256; v++)
        idt_set_gate(v, 0, 0);
    idt_set_gate(8, 0, 1);           /* #DF on IST1 */
    idt_set_gate(0x80, 3, 0);        /* reachable by `int 0x80` at CPL3 */
    set_handler(0x80, int80_handler);
    rt_idt_desc.limit = sizeof(idt) - 1;
    rt_idt_desc.base = (uint64_t)idt;
}

static void idt_load(void)
{
    asm volatile("lidt %0" : : "m"(rt_idt_desc));
}

/* ================================================================ paging */

extern uint64_t pml4[];
static uint64_t pt_pool[16][512] __attribute__((aligned(4096)));
static int pt_used;

#define ADDR_MASK 0x000FFFFFFFFFF000ul

/* Walk PML4 -> PDPT -> PD (all identity mapped); if the PD entry is a
 * 2 MiB page, replace it by a page table with the same 512 mappings. */
uint64_t *pte_for(uint64_t va)
{
    uint64_t *pdpt = (uint64_t *)(pml4[(va >> 39) & 511] & ADDR_MASK);
    uint64_t *pd = (uint64_t *)(pdpt[(va >> 30) & 511] & ADDR_MASK);
    uint64_t *pde = &pd[(va >> 21) & 511];
    if (*pde & PTE_PS) {
        if (pt_used == 16) {
            kputs("FAIL: page-table pool exhausted");
            exit_qemu(2);
        }
        uint64_t *pt = pt_pool[pt_used++];
        uint64_t base = *pde & 0x000FFFFFFFE00000ul;
        uint64_t flags = *pde & (PTE_P | PTE_W | PTE_U | PTE_PWT | PTE_PCD);
        for (int i = 0; i < 512; i++)
            pt[i] = (base + 4096ul * i) | flags;
        *pde = (uint64_t)pt | PTE_P | PTE_W | PTE_U;
        write_cr3(read_cr3());       /* drop the 2 MiB TLB entry */
    }
    uint64_t *pt = (uint64_t *)(*pde & ADDR_MASK);
    return &pt[(va >> 12) & 511];
}

void map_page(uint64_t va, uint64_t pa, uint64_t flags)
{
    *pte_for(va) = (pa & ADDR_MASK) | flags;
    invlpg(va);
}

void unmap_page(uint64_t va)
{
    *pte_for(va) = 0;
    invlpg(va);
}

/* ================================================================ local APIC */

uint32_t lapic_read(uint32_t reg)
{
    return *(volatile uint32_t *)(LAPIC_BASE + reg);
}

void lapic_write(uint32_t reg, uint32_t v)
{
    *(volatile uint32_t *)(LAPIC_BASE + reg) = v;
}

/* Global enable in APIC_BASE (MSR 1Bh bit 11), then software enable in the
 * spurious-interrupt vector register (APM vol 2, 16.3.1 and 16.4.7). */
void lapic_enable(void)
{
    uint64_t base = rdmsr(MSR_APIC_BASE);
    if (!(base & (1u << 11)))
        wrmsr(MSR_APIC_BASE, base | (1u << 11));
    lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
    lapic_write(LAPIC_TPR, 0);
}

uint32_t lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

void lapic_eoi(void)
{
    lapic_write(LAPIC_EOI, 0);
}

bool lapic_vector_bit(uint32_t base_reg, int vector)
{
    return (lapic_read(base_reg + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

static void icr_wait_idle(void)
{
    for (int i = 0; i < 1000000 && (lapic_read(LAPIC_ICR_LO) & ICR_PENDING); i++)
        pause();
}

/* Writing ICR low sends the IPI, so the destination goes in first. */
void lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
    icr_wait_idle();
    lapic_write(LAPIC_ICR_HI, apic_id << 24);
    lapic_write(LAPIC_ICR_LO, icr_lo);
    icr_wait_idle();
}

/*
 * Busy-wait at least `us` microseconds with the (masked) APIC timer at
 * divide-by-1.  QEMU counts it at 1 GHz; real APIC timers run at the bus or
 * core-crystal clock (~100 MHz), which only makes the wait longer.  Leaves
 * the timer stopped and restores LVT and divide configuration.
 */
void delay_us(uint32_t us)
{
    uint32_t lvt = lapic_read(LAPIC_LVT_TIMER), dcr = lapic_read(LAPIC_TIMER_DCR);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_TIMER_DCR, 0xB);
    while (us) {
        uint32_t chunk = us > 1000 ? 1000 : us;
        lapic_write(LAPIC_TIMER_ICR, chunk * 1000);
        while (lapic_read(LAPIC_TIMER_CCR) != 0)
            pause();
        us -= chunk;
    }
    lapic_write(LAPIC_TIMER_ICR, 0);
    lapic_write(LAPIC_TIMER_DCR, dcr);
    lapic_write(LAPIC_LVT_TIMER, lvt);
}

extern char ap_tramp_start[], ap_tramp_end[];
volatile uint32_t ap_started;

#define TRAMPOLINE_BASE 0x8000ul

/*
 * Start the AP with this APIC ID: the universal INIT-SIPI-SIPI sequence
 * (Intel SDM vol 3A, "MP Initialization Protocol Algorithm"/"Typical BSP
 * Initialization Sequence"; AMD APM vol 2, 16.5): INIT, 10 ms, STARTUP,
 * 200 us, STARTUP.  A second STARTUP is ignored by an AP already running.
 * Returns whether the AP reached rt_ap_main within ~1 s.
 */
bool start_ap(uint32_t apic_id)
{
    if (apic_id >= MAX_CPUS)
        return false;
    uint32_t before = ap_started;
    if (sev_snp_active()) {
        /* An SEV-SNP AP starts from a VMSA the guest builds and hands to
         * the hypervisor (GHCB AP creation), not from INIT-SIPI-SIPI. */
        if (snp_start_ap(apic_id))
            return false;
        for (int ms = 0; ms < 1000 && ap_started == before; ms++)
            delay_us(1000);
        return ap_started != before;
    }
    memcpy((void *)TRAMPOLINE_BASE, ap_tramp_start, ap_tramp_end - ap_tramp_start);
    if (sev_es_active()) {
        /* An SEV-ES AP starts from its measured VMSA, not at the SIPI
         * vector: it jumps through the AP jump table, whose address the
         * hypervisor keeps (GHCB NAE event 8000_0005h, "get"). */
        volatile uint16_t *jt = (volatile uint16_t *)sev_es_get_ap_jump_table();
        if (!jt)
            return false;
        jt[0] = 0;                           /* IP */
        jt[1] = TRAMPOLINE_BASE >> 4;        /* CS */
    }
    lapic_write(LAPIC_ESR, 0);
    lapic_send_ipi(apic_id, ICR_INIT | ICR_ASSERT | ICR_LEVEL);
    delay_us(10000);
    for (int i = 0; i < 2; i++) {
        lapic_send_ipi(apic_id, ICR_STARTUP | ICR_ASSERT | (TRAMPOLINE_BASE >> 12));
        delay_us(200);
    }
    for (int ms = 0; ms < 1000 && ap_started == before; ms++)
        delay_us(1000);
    return ap_started != before;
}

/* ================================================================ 8259 PIC */

#define PIC_VECTOR_BASE 0x20

/*
 * The firmware leaves the 8259 pair programmed for real mode (IRQ0 -> vector
 * 8) with the PIT ticking, so the first STI would deliver timer IRQs that look
 * like #DF.  Re-initialise both PICs (8259A datasheet, ICW1-ICW4) to vectors
 * 20h-2Fh and mask every line: our tests use only the local APIC.
 */
static void pic_disable(void)
{
    outb(0x20, 0x11);                /* ICW1: edge, cascade, ICW4 needed */
    outb(0xA0, 0x11);
    outb(0x21, PIC_VECTOR_BASE);     /* ICW2: vector base */
    outb(0xA1, PIC_VECTOR_BASE + 8);
    outb(0x21, 0x04);                /* ICW3: slave on IRQ2 */
    outb(0xA1, 0x02);                /*       slave identity 2 */
    outb(0x21, 0x01);                /* ICW4: 8086 mode */
    outb(0xA1, 0x01);
    outb(0x21, 0xFF);                /* OCW1: mask all */
    outb(0xA1, 0xFF);
}

/* A masked 8259 can still signal IRQ7/IRQ15 as spurious: ignore them. */
static void pic_spurious(struct trap_frame *f)
{
}

/* ================================================================ entry */

void (*volatile ap_main)(int apic_id);

void rt_bsp_main(uint32_t magic, uint32_t mbi)
{
    boot_mbi = mbi;
    idt_init();                      /* before any port I/O: under SEV-ES it is a #VC */
    idt_load();
    sev_es_init_bsp();
    serial_init();
    pic_disable();
    set_handler(PIC_VECTOR_BASE + 7, pic_spurious);
    set_handler(PIC_VECTOR_BASE + 15, pic_spurious);
    cpu_tables_init(this_apic_id() % MAX_CPUS);
    exit_qemu(kmain(magic, mbi));
}

void rt_ap_main(uint32_t apic_id)
{
    if (apic_id >= MAX_CPUS)
        return;                      /* boot64.S halts it */
    sev_es_init_ap(apic_id);
    cpu_tables_init(apic_id);
    lapic_enable();
    atomic_xadd(&ap_started, 1);
    if (ap_main)
        ap_main(apic_id);
    if (sev_es_active())
        sev_es_ap_park();            /* an SEV-ES AP waits in AP reset hold, not in HLT */
}
