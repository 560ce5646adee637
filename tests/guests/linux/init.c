/*
 * init for svmsim's Linux test workload (issue 16): the first user-space
 * program of the test initramfs, run by the kernel as /init.
 *
 * It prints a line, mounts /proc and prints parts of /proc/cpuinfo, runs the
 * floating-point and SSE check (fpcheck.c), and ends the run through QEMU's
 * isa-debug-exit (port 0xF4): 0 when everything passed (exit status 1), 1
 * otherwise (3).
 *
 * No C library: raw system calls, so this file needs only general-purpose
 * registers (built with -mgeneral-regs-only); fpcheck.c is ordinary gcc -O2
 * code that uses SSE2 and x87.  Linked with gcc -static -nostdlib.
 */
#include "sys.h"

int fpcheck(void);          /* fpcheck.c: 0 = all results right */

static char cpuinfo[8192];

/* The /proc/cpuinfo lines that do not depend on the host's speed. */
static const char *const keep[] = {
    "processor", "vendor_id", "cpu family", "model\t", "stepping", "fpu\t", "wp\t",
    "cpuid level", "address sizes", 0,
};

static int starts_with(const char *s, const char *p)
{
    while (*p)
        if (*s++ != *p++)
            return 0;
    return 1;
}

static void print_cpuinfo(void)
{
    long fd = sys_open("/proc/cpuinfo", O_RDONLY);
    long n = 0, r;
    if (fd < 0) {
        puts_("init: cannot open /proc/cpuinfo\n");
        return;
    }
    while ((r = sys_read(fd, cpuinfo + n, sizeof(cpuinfo) - 1 - n)) > 0)
        n += r;
    sys_close(fd);
    cpuinfo[n] = 0;
    puts_("init: /proc/cpuinfo:\n");
    for (char *line = cpuinfo; *line;) {
        char *end = line;
        while (*end && *end != '\n')
            end++;
        for (int k = 0; keep[k]; k++)
            if (starts_with(line, keep[k])) {
                sys_write(1, "init:   ", 8);
                sys_write(1, line, end - line + (*end == '\n'));
                break;
            }
        line = *end ? end + 1 : end;
    }
}

static void debug_exit(int value)
{
    if (sys_ioperm(0xF4, 1, 1) == 0)
        outb(value, 0xF4);
    puts_("init: isa-debug-exit is not there; powering off\n");
    sys_reboot(LINUX_REBOOT_CMD_POWER_OFF);
}

int main(void)
{
    int failed;
    puts_("init: hello from user space (svmsim Linux test workload)\n");
    if (sys_mount("proc", "/proc", "proc", 0, 0) != 0)
        puts_("init: mount /proc failed\n");
    print_cpuinfo();
    failed = fpcheck();
    puts_(failed ? "init: floating-point and SSE check FAILED\n"
                 : "init: floating-point and SSE check passed\n");
    puts_("init: done\n");
    debug_exit(failed ? 1 : 0);
    return 0;
}
