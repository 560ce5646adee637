/*
 * Floating-point and SSE check for the test init: ordinary gcc -O2 C (SSE2
 * for float/double, x87 for long double, SSE2 intrinsics), the code every
 * x86-64 user program is made of.  Each result is fixed by IEEE 754 (correct
 * rounding) or by the instruction's definition, so the expected bit patterns
 * hold on any conforming x86-64 CPU.  Inputs are volatile so gcc cannot fold
 * the arithmetic at compile time.
 */
#include <emmintrin.h>
#include "sys.h"

typedef unsigned long u64;

static int failures;

static void hex(u64 v)
{
    char b[19] = "0x";
    for (int i = 0; i < 16; i++)
        b[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
    sys_write(1, b, 18);
}

static void check(const char *name, u64 got, u64 want)
{
    puts_("init: fpcheck ");
    puts_(name);
    if (got == want) {
        puts_(" ok\n");
        return;
    }
    failures++;
    puts_(" FAIL got ");
    hex(got);
    puts_(" want ");
    hex(want);
    puts_("\n");
}

static u64 dbits(double d) { union { double d; u64 u; } x = { .d = d }; return x.u; }
static u64 fbits(float f) { union { float f; unsigned u; } x = { .f = f }; return x.u; }
static u64 ldbits_mant(long double v) { union { long double v; u64 u[2]; } x = { .v = v }; return x.u[0]; }
static u64 ldbits_exp(long double v) { union { long double v; u64 u[2]; } x = { .v = v }; return x.u[1] & 0xFFFF; }

static volatile double two = 2.0, tenth = 0.1, fifth = 0.2, m25 = -2.5, big = 1e10, zero = 0.0;
static volatile float fone = 1.0f, fthree = 3.0f;
static volatile long double lone = 1.0L, lthree = 3.0L, ltwo = 2.0L;
static volatile int seed = 3;
static int ivals[64];

int fpcheck(void)
{
    check("double-add", dbits(tenth + fifth), 0x3FD3333333333334UL);
    check("double-sqrt", dbits(__builtin_sqrt(two)), 0x3FF6A09E667F3BCDUL);
    check("float-div", fbits(fone / fthree), 0x3EAAAAABUL);
    check("cvttsd2si", (u64)(long)m25, (u64)-2L);
    check("cvttsd2si-overflow", (unsigned)(int)big, 0x80000000UL);
    check("div-by-zero", dbits(two / zero), 0x7FF0000000000000UL);
    check("nan-unordered", (zero / zero) != (zero / zero), 1);
    check("x87-div-mantissa", ldbits_mant(lone / lthree), 0xAAAAAAAAAAAAAAABUL);
    check("x87-div-exponent", ldbits_exp(lone / lthree), 0x3FFD);
    check("x87-sqrt", ldbits_mant(__builtin_sqrtl(ltwo)), 0xB504F333F9DE6484UL);

    long sum = 0;                       /* gcc -O2 vectorizes this with SSE2 */
    for (int i = 0; i < 64; i++)
        ivals[i] = i * seed - 7;
    for (int i = 0; i < 64; i++)
        sum += ivals[i] * ivals[i];
    check("int-vector-loop", (u64)sum, 686560);

    __m128d v = _mm_mul_pd(_mm_set_pd(tenth, two), _mm_set_pd(two, two));
    check("mulpd-lo", dbits(_mm_cvtsd_f64(v)), dbits(4.0));
    check("mulpd-hi", dbits(_mm_cvtsd_f64(_mm_unpackhi_pd(v, v))), 0x3FC999999999999AUL);
    __m128i a = _mm_set_epi32(4, 3, 2, 1), b = _mm_shuffle_epi32(a, 0x1B);
    check("pshufd", (u64)_mm_cvtsi128_si32(b), 4);
    __m128i bytes = _mm_set1_epi8((char)ivals[5]), eq = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(8));
    check("pcmpeqb-pmovmskb", (u64)_mm_movemask_epi8(eq), 0xFFFF);
    check("mxcsr-control", _mm_getcsr() & 0xFFC0, 0x1F80);   /* masks, RN, no FZ/DAZ */
    return failures;
}
