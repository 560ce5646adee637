/*
 * fpu_sse: ordinary gcc -O2 code with SSE2 and x87 (this file alone is built
 * with -msse2 -mfpmath=sse and the x87 enabled; guestbuild.SOURCE_CFLAGS).
 *
 * The boot path turns the units on as an OS does: CR0.EM=0, MP=1, NE=1,
 * CR4.OSFXSR and OSXMMEXCPT, and CR4.OSXSAVE with XCR0 = every component
 * CPUID 0Dh reports (x87, SSE and, where present, AVX).  Then float and
 * double arithmetic, loops gcc vectorises, structure copies and clears, an
 * SSE2 strlen, long double (x87) arithmetic, rounding modes, FTZ and the
 * MXCSR/FSW exception flags.  Every result is printed as its bit pattern, so
 * the transcript recorded on QEMU pins each bit.
 */
#include "rt.h"

typedef unsigned long long u64;
typedef char v16qi __attribute__((vector_size(16)));

static u64 dbits(double d) { u64 u; __builtin_memcpy(&u, &d, 8); return u; }
static uint32_t fbits(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }
static void ldbits(long double x, u64 *lo, uint32_t *hi)
{
    unsigned char b[16];
    __builtin_memcpy(b, &x, 10);
    __builtin_memcpy(lo, b, 8);
    *hi = b[8] | (b[9] << 8);
}

static uint32_t stmxcsr(void) { uint32_t v; asm volatile("stmxcsr %0" : "=m"(v)); return v; }
static void ldmxcsr(uint32_t v) { asm volatile("ldmxcsr %0" :: "m"(v)); }
static uint16_t fnstsw(void) { uint16_t v; asm volatile("fnstsw %0" : "=m"(v)); return v; }
static void fldcw(uint16_t v) { asm volatile("fldcw %0" :: "m"(v)); }

static void enable_fpu(void)
{
    u64 cr0, cr4;
    uint32_t r[4];
    asm volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 = (cr0 & ~(1ull << 2) & ~(1ull << 3)) | (1ull << 1) | (1ull << 5);
    asm volatile("mov %0, %%cr0" :: "r"(cr0));
    asm volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= (1ull << 9) | (1ull << 10);
    cpuid(1, 0, r);
    if (r[2] & (1u << 26)) {
        cr4 |= 1ull << 18;
        asm volatile("mov %0, %%cr4" :: "r"(cr4));
        cpuid(0xD, 0, r);
        uint32_t xcr0 = r[0] & 7;
        asm volatile("xsetbv" :: "a"(xcr0), "d"(0), "c"(0));
    } else {
        asm volatile("mov %0, %%cr4" :: "r"(cr4));
    }
    asm volatile("fninit");
}

/* ---- double and float ---- */
static volatile double vd[8] = {1.0, 3.0, 0.1, 1e300, 2.5e-308, -7.25, 1e-3, 123456789.0};
static volatile float vf[4] = {1.0f, 3.0f, 0.1f, 1e-30f};

static void scalar_math(void)
{
    double h = 0;
    for (int i = 1; i <= 1000; i++)
        h += 1.0 / i;
    kprintf("harmonic(1000) = %llx\n", dbits(h));
    double p = 1;
    for (int i = 0; i < 8; i++)
        p = p * vd[i] + vd[(i + 3) & 7];
    kprintf("poly = %llx\n", dbits(p));
    kprintf("sqrt(2) = %llx sqrt(1e300) = %llx\n", dbits(__builtin_sqrt(2.0 * vd[0])),
            dbits(__builtin_sqrt(vd[3])));
    kprintf("1e300*1e300 = %llx tiny/3 = %llx\n", dbits(vd[3] * vd[3]), dbits(vd[4] / vd[1]));
    long long n = (long long)(vd[7] * 1000.5);
    int m = (int)(vd[5] * 3.3);
    kprintf("cvt: %lld %d %llx\n", n, m, dbits((double)(n ^ 0x5555)));
    float f = 0;
    for (int i = 1; i <= 100; i++)
        f += vf[2] * i / vf[1];
    kprintf("float sum = %x tiny^2 = %x\n", fbits(f), fbits(vf[3] * vf[3]));
    int lt = 0;
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            lt += vd[i] < vd[j];
    kprintf("compares = %d\n", lt);
}

/* ---- loops gcc vectorises (mulps/addps, cvtdq2ps...) ---- */
#define N 256
static float a[N], b[N], c[N];
static int ia[N];

static void vector_loops(void)
{
    for (int i = 0; i < N; i++) {
        ia[i] = i * 7 - 300;
        a[i] = (float)ia[i] * 0.25f;
        b[i] = 1.0f / (float)(i + 1);
    }
    for (int i = 0; i < N; i++)
        c[i] = a[i] * b[i] + c[i];
    float s = 0;
    for (int i = 0; i < N; i++)
        s += c[i];
    int mx = 0;
    for (int i = 0; i < N; i++)
        mx = ia[i] > mx ? ia[i] : mx;
    kprintf("saxpy sum = %x max = %d c[17] = %x\n", fbits(s), mx, fbits(c[17]));
}

/* ---- memcpy / memset the way gcc emits them ---- */
struct blob { u64 q[12]; char tail[37]; };
static struct blob src_blob, dst_blob;

static __attribute__((noinline)) size_t sse2_strlen(const char *s)
{
    const v16qi zero = {0};
    size_t off = (uintptr_t)s & 15;
    const v16qi *p = (const v16qi *)(s - off);
    unsigned mask = __builtin_ia32_pmovmskb128(__builtin_ia32_pcmpeqb128(*p, zero)) >> off;
    size_t n = 0;
    if (mask)
        return __builtin_ctz(mask);
    n = 16 - off;
    for (p++;; p++, n += 16) {
        mask = __builtin_ia32_pmovmskb128(__builtin_ia32_pcmpeqb128(*p, zero));
        if (mask)
            return n + __builtin_ctz(mask);
    }
}

static void memory_code(void)
{
    for (int i = 0; i < 12; i++)
        src_blob.q[i] = 0x0101010101010101ull * (i + 1);
    for (int i = 0; i < 37; i++)
        src_blob.tail[i] = 'a' + i % 26;
    src_blob.tail[36] = 0;
    dst_blob = src_blob;                      /* structure copy */
    u64 sum = 0;
    for (int i = 0; i < 12; i++)
        sum += dst_blob.q[i] * (i + 3);
    kprintf("copy: sum=%llx tail=%s len=%u\n", sum, dst_blob.tail + 20,
            (unsigned)sse2_strlen(dst_blob.tail + 3));
    static u64 clear[40];
    for (int i = 0; i < 40; i++)
        clear[i] = ~0ull;
    for (int i = 0; i < 40; i++)             /* gcc: pxor + aligned stores */
        clear[i] = 0;
    u64 any = 0;
    for (int i = 0; i < 40; i++)
        any |= clear[i];
    kprintf("clear: %llx strlen(\"%s\") = %u\n", any, "hello, world", (unsigned)sse2_strlen("hello, world"));
}

/* ---- long double: the x87 ---- */
static volatile long double vl[3] = {1.0L, 3.0L, 1e4000L};

static void x87_math(void)
{
    u64 lo;
    uint32_t hi;
    long double h = 0;
    for (int i = 1; i <= 300; i++)
        h += vl[0] / i;
    ldbits(h, &lo, &hi);
    kprintf("x87 harmonic(300) = %04x:%016llx\n", hi, lo);
    long double q = vl[0] / vl[1];
    ldbits(q, &lo, &hi);
    kprintf("x87 1/3 = %04x:%016llx\n", hi, lo);
    ldbits(__builtin_sqrtl(vl[1]), &lo, &hi);
    kprintf("x87 sqrt(3) = %04x:%016llx\n", hi, lo);
    ldbits(vl[2] * vl[2], &lo, &hi);
    kprintf("x87 big^2 = %04x:%016llx\n", hi, lo);
    long long n = (long long)(vl[1] * 1e15L);
    kprintf("x87 cvt = %lld %d\n", n, (int)(vl[1] / vl[0] < vl[0]));
}

/* ---- rounding modes and exception flags ---- */
static void modes_and_flags(void)
{
    static const char *name[4] = {"nearest", "down", "up", "zero"};
    for (int rc = 0; rc < 4; rc++) {
        ldmxcsr(0x1F80 | rc << 13);
        double d = vd[0] / vd[1];
        float f = vf[0] / vf[1];
        fldcw((uint16_t)(0x37F | rc << 10));
        long double l = vl[0] / vl[1];
        u64 lo;
        uint32_t hi;
        ldbits(l, &lo, &hi);
        kprintf("rc=%s: %llx %x %04x:%016llx\n", name[rc], dbits(-d), fbits(f), hi, lo);
    }
    fldcw(0x37F);
    ldmxcsr(0x1F80);
    volatile double t = vd[0] / vd[1];
    kprintf("mxcsr after 1/3: %x\n", stmxcsr() & 0x3F);
    ldmxcsr(0x1F80);
    t = vd[0] / (vd[0] - vd[0]);
    kprintf("mxcsr after 1/0: %x (%llx)\n", stmxcsr() & 0x3F, dbits(t));
    ldmxcsr(0x1F80);
    t = __builtin_sqrt(-vd[1]);
    kprintf("mxcsr after sqrt(-3): %x (%llx)\n", stmxcsr() & 0x3F, dbits(t));
    ldmxcsr(0x1F80);
    t = vd[4] * vd[6];
    kprintf("mxcsr after tiny*1e-3: %x (%llx)\n", stmxcsr() & 0x3F, dbits(t));
    ldmxcsr(0x1F80 | 0x8000);                 /* FTZ */
    t = vd[4] * vd[6];
    kprintf("FTZ: tiny*1e-3 = %llx mxcsr %x\n", dbits(t), stmxcsr() & 0x3F);
    ldmxcsr(0x1F80);
    t = vd[3] * vd[3];
    kprintf("mxcsr after overflow: %x\n", stmxcsr() & 0x3F);
    ldmxcsr(0x1F80);
    asm volatile("fnclex");
    volatile long double l = vl[0] / vl[1];
    kprintf("fsw after 1/3: %x\n", fnstsw() & 0x3F);
    asm volatile("fnclex");
    l = vl[0] / (vl[0] - vl[0]);
    kprintf("fsw after 1/0: %x\n", fnstsw() & 0x3F);
    asm volatile("fnclex");
    (void)t;
    (void)l;
}

int kmain(uint32_t magic, uint32_t mbi)
{
    enable_fpu();
    kprintf("fpu_sse: units on\n");
    scalar_math();
    vector_loops();
    memory_code();
    x87_math();
    modes_and_flags();
    kprintf("fpu_sse: PASS\n");
    return 0;
}
