/*
 * t_apic_timer: local APIC timer (one-shot, periodic), self-IPI, EOI and
 * TPR masking.  Only exact counts are printed: the periodic timer is masked
 * from inside its own handler at the N-th tick, so nothing more can arrive.
 * Local APIC: AMD APM vol 2, 16.4 (timer), 16.5 (IPIs), 16.6 (TPR/PPR).
 */
#include "suites.h"

#define TIMER_VECTOR 0x40
#define IPI_VECTOR 0x41              /* priority class 4 */
#define PERIODIC_TICKS 10

static volatile uint32_t ticks, tick_limit, ipis;
static volatile bool isr_bit_in_handler, isr_bit_after_eoi;
static int fails;

static void timer_handler(struct trap_frame *f)
{
    if (++ticks == tick_limit)
        lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
    lapic_eoi();
}

/* In service until EOI: the ISR bit is set now and cleared by the EOI. */
static void ipi_handler(struct trap_frame *f)
{
    ipis++;
    isr_bit_in_handler = lapic_vector_bit(LAPIC_ISR, IPI_VECTOR);
    lapic_eoi();
    isr_bit_after_eoi = lapic_vector_bit(LAPIC_ISR, IPI_VECTOR);
}

/* Sleep with interrupts enabled until `*count` reaches `n` (bounded). */
static void wait_count(volatile uint32_t *count, uint32_t n)
{
    for (int i = 0; i < 100000 && *count < n; i++)
        sti_hlt_cli();
}

static void test_one_shot(void)
{
    ticks = 0;
    tick_limit = 0;
    lapic_write(LAPIC_TIMER_DCR, 0x3);               /* divide by 16 */
    lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR);      /* one-shot, unmasked */
    lapic_write(LAPIC_TIMER_ICR, 100000);
    wait_count(&ticks, 1);
    delay_us(2000);                                  /* would show a 2nd tick */
    uint32_t ccr = lapic_read(LAPIC_TIMER_CCR);
    kprintf("apic timer one-shot: ticks=%u current-count=%u\n", ticks, ccr);
    fails += CHECK(ticks == 1 && ccr == 0, "one-shot");
}

static void test_periodic(void)
{
    ticks = 0;
    tick_limit = PERIODIC_TICKS;
    lapic_write(LAPIC_TIMER_DCR, 0x3);
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_ICR, 62500);             /* 1 ms on QEMU */
    wait_count(&ticks, PERIODIC_TICKS);
    uint32_t masked = lapic_read(LAPIC_LVT_TIMER) & LVT_MASKED;
    /* Masking stops delivery, not counting; still no tick may arrive. */
    sti();
    delay_us(5000);
    cli();
    lapic_write(LAPIC_TIMER_ICR, 0);
    kprintf("apic timer periodic: ticks=%u (masked by handler: %s)\n", ticks,
            masked ? "yes" : "no");
    fails += CHECK(ticks == PERIODIC_TICKS && masked, "periodic");
}

static void test_self_ipi(void)
{
    ipis = 0;
    lapic_send_ipi(0, ICR_SELF | ICR_ASSERT | IPI_VECTOR);
    bool pending = lapic_vector_bit(LAPIC_IRR, IPI_VECTOR);  /* IF = 0 here */
    wait_count(&ipis, 1);
    kprintf("self IPI: pending in IRR while IF=0: %s, delivered=%u, "
            "ISR bit in handler: %s, after EOI: %s\n", pending ? "yes" : "no", ipis,
            isr_bit_in_handler ? "set" : "clear", isr_bit_after_eoi ? "set" : "clear");
    fails += CHECK(pending && ipis == 1 && isr_bit_in_handler && !isr_bit_after_eoi,
                   "self IPI");
}

/* TPR class 5 blocks class 4 vectors: they wait in IRR until TPR drops. */
static void test_tpr(void)
{
    ipis = 0;
    lapic_write(LAPIC_TPR, 0x50);
    lapic_send_ipi(0, ICR_SELF | ICR_ASSERT | IPI_VECTOR);
    sti();
    delay_us(1000);
    cli();
    uint32_t blocked = ipis;
    bool pending = lapic_vector_bit(LAPIC_IRR, IPI_VECTOR);
    lapic_write(LAPIC_TPR, 0);
    wait_count(&ipis, 1);
    kprintf("TPR=0x50 holds vector 0x41: delivered=%u pending=%s; TPR=0: delivered=%u\n",
            blocked, pending ? "yes" : "no", ipis);
    fails += CHECK(blocked == 0 && pending && ipis == 1, "TPR");
}

int t_apic_timer(void)
{
    fails = 0;
    kputs("apic_timer: start");
    lapic_enable();
    uint32_t ver = lapic_read(LAPIC_VER) & 0xFF;
    kprintf("apic: id=%u integrated=%s\n", lapic_id(), ver >= 0x10 ? "yes" : "no");
    set_handler(TIMER_VECTOR, timer_handler);
    set_handler(IPI_VECTOR, ipi_handler);
    test_one_shot();
    test_periodic();
    test_self_ipi();
    test_tpr();
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    set_handler(TIMER_VECTOR, NULL);
    set_handler(IPI_VECTOR, NULL);
    kprintf("apic_timer: %s\n", fails ? "FAIL" : "PASS");
    return fails;
}
