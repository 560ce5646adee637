/* Test bodies shared by the single-purpose kernels and `smoke`.
 * Each prints its transcript and returns 0 on success, else the failures. */
#ifndef SUITES_H
#define SUITES_H
#include "rt.h"

int t_hello(uint32_t magic, uint32_t mbi);
int t_exceptions(void);
int t_apic_timer(void);
int t_smp(void);

/* Report a check: prints "FAIL: what" and counts it when !ok. */
#define CHECK(ok, what) check_((ok), (what), __LINE__)
int check_(bool ok, const char *what, int line);

#endif
