/*
 * rt.h - the tiny freestanding runtime of svmsim's bare-metal test kernels.
 *
 * A kernel provides `int kmain(uint32_t magic, uint32_t mbi)`; the runtime
 * (lib/boot64.S + lib/rt.c + lib/isr.S) enters long mode, installs the GDT,
 * TSS and IDT, calls kmain and passes its return value to exit_qemu().
 * Exit convention: 0 = pass (QEMU status 1), anything else = fail.
 */
#ifndef RT_H
#define RT_H

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define MAX_CPUS 8

/* Selectors of the GDT built in boot64.S. */
#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18
#define SEL_UDATA (0x20 | 3)
#define SEL_UCODE64 (0x28 | 3)
#define SEL_TSS(cpu) (0x30 + 16 * (cpu))

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u

/* ---- entry points ---- */
int kmain(uint32_t magic, uint32_t mbi);   /* provided by each kernel */
extern void (*volatile ap_main)(int apic_id);   /* what each AP runs once started (NULL: halt) */

/* ---- string/memory (gcc may emit calls to these) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* ---- port I/O and privileged instructions ---- */
static inline void outb(uint16_t port, uint8_t v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { asm volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
    asm volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    asm volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#define DEFINE_CR(n) \
    static inline uint64_t read_cr##n(void) { uint64_t v; asm volatile("mov %%cr" #n ", %0" : "=r"(v)); return v; } \
    static inline void write_cr##n(uint64_t v) { asm volatile("mov %0, %%cr" #n : : "r"(v) : "memory"); }
DEFINE_CR(0)
DEFINE_CR(2)
DEFINE_CR(3)
DEFINE_CR(4)
static inline void invlpg(uint64_t va) { asm volatile("invlpg (%0)" : : "r"(va) : "memory"); }
static inline void cli(void) { asm volatile("cli" ::: "memory"); }
static inline void sti(void) { asm volatile("sti" ::: "memory"); }
static inline void pause(void) { asm volatile("pause" ::: "memory"); }
/* STI's interrupt shadow makes "sti; hlt" race-free: an interrupt that is
 * already pending is taken after HLT starts, so it wakes us (APM vol 3, STI). */
static inline void sti_hlt_cli(void) { asm volatile("sti; hlt; cli" ::: "memory"); }

#define CR0_PE (1ul << 0)
#define CR0_WP (1ul << 16)
#define CR0_PG (1ul << 31)
#define MSR_APIC_BASE 0x1B
#define MSR_EFER 0xC0000080

/* The number of CPUs, from QEMU's fw_cfg (selector port 510h, data 511h;
 * FW_CFG_NB_CPUS = 05h), which svmsim has too. */
static inline uint32_t fw_cfg_ncpus(void)
{
    outw(0x510, 0x05);
    uint32_t lo = inb(0x511);
    return lo | (uint32_t)inb(0x511) << 8;
}

/* ---- serial console and exit ---- */
void serial_init(void);
void serial_putc(char c);
void kputs(const char *s);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void exit_qemu(int code) __attribute__((noreturn));

/* ---- multiboot ---- */
const char *mb_cmdline(void);        /* whole command line, "" if none */
const char *mb_args(void);           /* command line without the kernel path */
bool cmdline_u64(const char *key, uint64_t *out);   /* parses "key=N" */

/* ---- interrupts ---- */
struct trap_frame {                  /* layout pushed by isr.S, low to high */
    uint64_t cr2;
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;   /* pushed by the CPU */
};
typedef void (*trap_handler_t)(struct trap_frame *f);
void set_handler(int vector, trap_handler_t h);
void idt_set_gate(int vector, int dpl, int ist);
void idt_set_present(int vector, bool present);

/*
 * Recoverable faults.  TRY(asm text, inputs...) runs the instructions; if one
 * of them faults the exception is recorded in `last_trap` and execution resumes
 * after the asm block (RIP and RSP are restored).  Yields the vector or -1.
 * Inputs must not use rax or rdx (both are clobbered).
 */
struct trap_info { int vector; uint64_t error, cr2, cs, rip; int count; };
extern volatile struct trap_info last_trap;
extern volatile uint64_t trap_fixup_rip, trap_fixup_rsp;
void record_trap(struct trap_frame *f);
void trap_arm(void);
int trap_done(void);
#define TRY(insns, ...) ({                                          \
    trap_arm();                                                     \
    asm volatile("lea .Lfix%=(%%rip), %%rax\n\t"                    \
                 "mov %%rax, trap_fixup_rip(%%rip)\n\t"             \
                 "mov %%rsp, trap_fixup_rsp(%%rip)\n\t"             \
                 insns "\n"                                         \
                 ".Lfix%=:" : : __VA_ARGS__ : "rax", "rdx", "memory"); \
    trap_done(); })

/* Enter CPL3 at rip with stack rsp (rdi = arg); returns the rax that the user
 * code passes to `int 0x80`.  Implemented in isr.S. */
uint64_t enter_user(uint64_t rip, uint64_t rsp, uint64_t arg);
extern char user_code_start[], user_code_end[];

/* ---- paging (4-level, identity map of the first 4 GiB with 2 MiB pages) ---- */
#define PTE_P (1ul << 0)
#define PTE_W (1ul << 1)
#define PTE_U (1ul << 2)
#define PTE_PWT (1ul << 3)
#define PTE_PCD (1ul << 4)
#define PTE_PS (1ul << 7)
uint64_t *pte_for(uint64_t va);      /* splits a 2 MiB page if needed */
void map_page(uint64_t va, uint64_t pa, uint64_t flags);
void unmap_page(uint64_t va);

/* ---- local APIC (xAPIC MMIO, APM vol 2 ch. 16) ---- */
#define LAPIC_BASE 0xFEE00000ul
#define LAPIC_ID 0x020
#define LAPIC_VER 0x030
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0B0
#define LAPIC_SVR 0x0F0
#define LAPIC_ISR 0x100
#define LAPIC_IRR 0x200
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3E0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define ICR_FIXED (0u << 8)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_PENDING (1u << 12)
#define ICR_ASSERT (1u << 14)
#define ICR_LEVEL (1u << 15)
#define ICR_SELF (1u << 18)
#define SPURIOUS_VECTOR 0xFF

uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t v);
void lapic_enable(void);
uint32_t lapic_id(void);
void lapic_eoi(void);
bool lapic_vector_bit(uint32_t base_reg, int vector);   /* ISR/IRR/TMR bit */
void lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo);
void delay_us(uint32_t us);
bool start_ap(uint32_t apic_id);     /* INIT-SIPI-SIPI, then wait for it */

/* ---- SMP helpers ---- */
static inline uint32_t atomic_xadd(volatile uint32_t *p, uint32_t v)
{
    asm volatile("lock xaddl %0, %1" : "+r"(v), "+m"(*p) : : "memory");
    return v;
}
extern volatile uint32_t ap_started;   /* bumped by each AP before ap_main() */

#endif
