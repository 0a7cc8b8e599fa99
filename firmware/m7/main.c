/* MicroCap on a Cortex-M7: int8 frame embeddings in, token ids and caption text out.
 *
 * One source, two link maps (Makefile):
 *   TC_TARGET_QEMU       reads N clips (N * TC_NUM_FRAMES * TC_DIM int8, nothing else) from the
 *                        file named by the 2nd word of the semihosting command line.
 *   TC_TARGET_STM32H743  captions the built-in sample clip (tc_sample_clip, generated).
 * Output, one line each (parsed by tinycap/m7.py):
 *   clip <i> tokens <id> <id> ...
 *   clip <i> caption <text>
 *   clip <i> dwt_cycles <n>            (or "dwt_cycles unavailable" when CYCCNT reads 0, as under QEMU)
 *   stack_peak_bytes <n> of <size>
 * Exit status: 0 ok, 2 input not readable, 3 input size not a multiple of one clip,
 *              4 stack overflow, 70 CPU fault. */
#include <stdint.h>

#include "board.h"
#include "semihost.h"
#include "tinycap.h"

#define CLIP_BYTES (TC_NUM_FRAMES * TC_DIM)
#define TOKEN_EOS 2

static uint16_t tokens[TC_MAX_LEN];

static void caption_clip(uint32_t index, const int8_t *frames)
{
    tc_dwt_start();
    uint32_t c0 = tc_dwt_cycles();
    tc_mark();
    int n = tc_caption(frames, tokens);
    tc_mark();
    uint32_t cycles = tc_dwt_cycles() - c0;

    out_str("clip ");
    out_u32(index);
    out_str(" tokens");
    for (int i = 0; i < n; i++) {
        out_str(" ");
        out_u32(tokens[i]);
    }
    out_str("\nclip ");
    out_u32(index);
    out_str(" caption");
    for (int i = 0; i < n && tokens[i] != TOKEN_EOS; i++) {
        out_str(" ");
        out_str(tc_token_text(tokens[i]));
    }
    out_str("\nclip ");
    out_u32(index);
    if (cycles == 0) {
        out_str(" dwt_cycles unavailable (DWT CYCCNT reads 0: emulator)\n");
    } else {
        out_str(" dwt_cycles ");
        out_u32(cycles);
        out_str("\n");
    }
    out_flush();
}

#ifdef TC_TARGET_QEMU
static int8_t frames[CLIP_BYTES];

/* "prog path": the path is the second word (no spaces in it). */
static const char *input_path(char *cmdline, int len)
{
    if (sh_get_cmdline(cmdline, len) != 0)
        return 0;
    char *p = cmdline;
    while (*p && *p != ' ')
        p++;
    while (*p == ' ')
        p++;
    return *p ? p : 0;
}

static int run(void)
{
    static char cmdline[512];
    const char *path = input_path(cmdline, sizeof(cmdline));
    int fh = path ? sh_open(path, 1) : -1;
    if (fh < 0) {
        out_str("error: cannot open the clip file named on the semihosting command line\n");
        out_flush();
        return 2;
    }
    int len = sh_flen(fh);
    if (len <= 0 || len % CLIP_BYTES != 0) {
        out_str("error: clip file size is not a multiple of TC_NUM_FRAMES * TC_DIM bytes\n");
        out_flush();
        return 3;
    }
    for (uint32_t i = 0; i < (uint32_t)(len / CLIP_BYTES); i++) {
        if (sh_read(fh, frames, CLIP_BYTES) != 0) {
            out_str("error: short read from the clip file\n");
            out_flush();
            return 2;
        }
        caption_clip(i, frames);
    }
    sh_close(fh);
    return 0;
}
#elif defined(TC_TARGET_STM32H743)
extern const int8_t tc_sample_clip[CLIP_BYTES];

static int run(void)
{
    caption_clip(0, tc_sample_clip);
    return 0;
}
#else
#error "define TC_TARGET_QEMU or TC_TARGET_STM32H743"
#endif

int main(void)
{
    int status = run();
    out_str("stack_peak_bytes ");
    out_u32(tc_stack_peak_bytes());
    out_str(" of ");
    out_u32(tc_stack_size_bytes());
    out_str("\n");
    out_flush();
    if (tc_stack_overflowed()) {
        sh_write0("error: stack overflow (raise __stack_size in sections.ld)\n");
        return 4;
    }
    return status;
}
