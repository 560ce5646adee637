/*
 * debug_target: a small kernel for the debugger's tests (tests/test_debug_*.py).
 * Everything it does is at a named symbol so tests can set breakpoints and
 * watchpoints by name: a function called N times, a counter it writes, a
 * buffer it fills with REP STOSB, a port it writes, a #UD it recovers from.
 * With crash=N on the command line it ends badly instead, for crash reports.
 */
#include "rt.h"

#define CALLS 5
#define DEBUG_PORT 0x80

volatile uint64_t dbg_counter;
volatile uint8_t dbg_buffer[64];
uint64_t dbg_total;

__attribute__((noinline)) uint64_t bump(uint64_t by)
{
    dbg_counter = dbg_counter + by;
    return dbg_counter;
}

__attribute__((noinline)) void fill(uint8_t value)
{
    asm volatile("rep stosb" : : "D"(dbg_buffer), "a"(value), "c"(sizeof dbg_buffer) : "memory");
}

/* crash=1: #UD with an empty IDT (#UD, #GP, #GP -> #DF, #GP -> triple fault);
 * crash=2: halt with interrupts off; crash=3: spin forever. */
__attribute__((noinline)) void crash_idt(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idt = {0, 0};
    asm volatile("lidt %0\n\tud2" : : "m"(idt));
}

__attribute__((noinline)) void crash_hang(void)
{
    asm volatile("cli\n\thlt");
}

__attribute__((noinline)) void crash_spin(void)
{
    for (;;)
        dbg_counter++;
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint64_t crash = 0;
    if (cmdline_u64("crash", &crash))
        kprintf("debug_target: crash=%lu\n", (unsigned long)crash);
    if (crash == 1)
        crash_idt();
    if (crash == 2)
        crash_hang();
    if (crash == 3)
        crash_spin();
    for (uint64_t i = 1; i <= CALLS; i++)
        dbg_total += bump(i);
    fill(0x5a);
    outb(DEBUG_PORT, 0x42);
    int v = TRY("ud2");
    kprintf("debug_target: counter=%lu total=%lu buffer[63]=0x%x ud=%d\n",
            (unsigned long)dbg_counter, (unsigned long)dbg_total, dbg_buffer[63], v);
    return !(dbg_counter == 15 && dbg_total == 35 && dbg_buffer[63] == 0x5a && v == 6);
}
