/* Raw Linux x86-64 system calls for the test init (no C library). */
#ifndef SVMSIM_INIT_SYS_H
#define SVMSIM_INIT_SYS_H

#define O_RDONLY 0
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321FEDC

static inline long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long sys_read(long fd, void *buf, long n) { return syscall6(0, fd, (long)buf, n, 0, 0, 0); }
static inline long sys_write(long fd, const void *buf, long n) { return syscall6(1, fd, (long)buf, n, 0, 0, 0); }
static inline long sys_open(const char *path, long flags) { return syscall6(2, (long)path, flags, 0, 0, 0, 0); }
static inline long sys_close(long fd) { return syscall6(3, fd, 0, 0, 0, 0, 0); }
static inline long sys_ioperm(long from, long num, long on) { return syscall6(173, from, num, on, 0, 0, 0); }
static inline long sys_mount(const char *src, const char *dst, const char *type, long flags, const void *data)
{
    return syscall6(165, (long)src, (long)dst, (long)type, flags, (long)data, 0);
}
static inline long sys_reboot(long cmd)
{
    return syscall6(169, 0xfee1dead, 672274793, cmd, 0, 0, 0);
}
static inline void sys_exit(long code) { syscall6(60, code, 0, 0, 0, 0, 0); }
static inline void outb(unsigned char v, unsigned short port)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline long strlen_(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    return n;
}
static inline void puts_(const char *s) { sys_write(1, s, strlen_(s)); }

#endif
