/* ARM semihosting (the `bkpt 0xab` convention), the firmware's only I/O.
 *
 * Under QEMU (-semihosting-config enable=on,target=native) these calls reach the host: files,
 * the console and the exit code. On a real board they need an attached debugger with
 * semihosting enabled (e.g. OpenOCD `arm semihosting enable`); without one the BKPT faults. */
#ifndef TC_SEMIHOST_H
#define TC_SEMIHOST_H

#include <stdint.h>

int sh_open(const char *path, int mode);            /* mode: 1 = "rb"; returns a handle or -1 */
int sh_close(int handle);
int sh_flen(int handle);                             /* file length in bytes, or -1 */
int sh_read(int handle, void *buf, int len);         /* returns the number of bytes NOT read */
int sh_get_cmdline(char *buf, int len);              /* 0 on success */
void sh_write0(const char *s);                       /* NUL-terminated string to the console */
__attribute__((noreturn)) void sh_exit(int code);    /* ends the emulator with exit status `code` */

/* Small console helpers (no printf: it would cost flash). Text is buffered per line. */
void out_str(const char *s);
void out_u32(uint32_t v);
void out_flush(void);                               /* writes the buffered line(s) */

#endif
