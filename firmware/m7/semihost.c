#include "semihost.h"

#include <string.h>

enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE0 = 0x04,
    SYS_READ = 0x06,
    SYS_FLEN = 0x0C,
    SYS_GET_CMDLINE = 0x15,
    SYS_EXIT_EXTENDED = 0x20,
    ADP_Stopped_ApplicationExit = 0x20026,
};

static int sh_call(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int sh_open(const char *path, int mode)
{
    uint32_t block[3] = {(uint32_t)path, (uint32_t)mode, (uint32_t)strlen(path)};
    return sh_call(SYS_OPEN, block);
}

int sh_close(int handle)
{
    uint32_t block[1] = {(uint32_t)handle};
    return sh_call(SYS_CLOSE, block);
}

int sh_flen(int handle)
{
    uint32_t block[1] = {(uint32_t)handle};
    return sh_call(SYS_FLEN, block);
}

int sh_read(int handle, void *buf, int len)
{
    uint32_t block[3] = {(uint32_t)handle, (uint32_t)buf, (uint32_t)len};
    return sh_call(SYS_READ, block);
}

int sh_get_cmdline(char *buf, int len)
{
    uint32_t block[2] = {(uint32_t)buf, (uint32_t)len};
    return sh_call(SYS_GET_CMDLINE, block);
}

void sh_write0(const char *s)
{
    sh_call(SYS_WRITE0, s);
}

void sh_exit(int code)
{
    uint32_t block[2] = {ADP_Stopped_ApplicationExit, (uint32_t)code};
    for (;;)
        sh_call(SYS_EXIT_EXTENDED, block);
}

static char line[256];
static unsigned line_len;

void out_flush(void)
{
    line[line_len] = '\0';
    if (line_len)
        sh_write0(line);
    line_len = 0;
}

void out_str(const char *s)
{
    while (*s) {
        if (line_len == sizeof(line) - 1)
            out_flush();
        line[line_len++] = *s++;
    }
}

void out_u32(uint32_t v)
{
    char digits[11];
    int i = 10;
    digits[i] = '\0';
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    out_str(&digits[i]);
}
