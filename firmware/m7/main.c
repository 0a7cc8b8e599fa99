/* MicroCap on a Cortex-M7: int8 frame embeddings in, token ids and caption text out.
 *
 * One source and one main path for both link maps (Makefile): the QEMU mps2-an500 and the STM32H743
 * images are the same code, linked at different addresses.
 * Input, through the input buffer tc_input_frames (TC_NUM_FRAMES * TC_DIM int8):
 *   semihosting command line "tinycap [-l] PATH": N clips (N * TC_NUM_FRAMES * TC_DIM int8, nothing
 *   else) read one at a time from the file PATH; no PATH (a board whose debugger passes none): the
 *   built-in sample clip (tc_sample_clip, generated), copied into the input buffer.
 * Output, one line each (parsed by tinycap/m7.py):
 *   clip <i> step <s> logits <hex>     with -l, before the clip's tokens: decoder step s's TC_VOCAB_SIZE
 *                                      int8 logits, two hex digits each (two's complement)
 *   clip <i> tokens <id> <id> ...
 *   clip <i> caption <text>
 *   clip <i> dwt_cycles <n>            (or "dwt_cycles unavailable" when CYCCNT reads 0, as under QEMU)
 *   stack_peak_bytes <n> of <size>
 * Exit status: 0 ok, 2 input not readable, 3 input size not a multiple of one clip,
 *              4 stack overflow, 70 CPU fault. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "semihost.h"
#include "tinycap.h"

#define CLIP_BYTES (TC_NUM_FRAMES * TC_DIM)
#define TOKEN_EOS 2

/* The device's input buffer: one clip of quantised frame embeddings (counted in RAM, .bss). */
int8_t tc_input_frames[CLIP_BYTES];
extern const int8_t tc_sample_clip[CLIP_BYTES];

static uint16_t tokens[TC_MAX_LEN];

/* Step callback (with -l): one line of hex logits. Harness code: tinycap/m7.py leaves it and the
 * console functions out of the caption's instruction count. */
static void print_step_logits(int step, const int8_t *logits, void *user)
{
    static const char hex[] = "0123456789abcdef";
    char pair[3] = {0, 0, 0};
    out_str("clip ");
    out_u32(*(const uint32_t *)user);
    out_str(" step ");
    out_u32((uint32_t)step);
    out_str(" logits ");
    for (int i = 0; i < TC_VOCAB_SIZE; i++) {
        pair[0] = hex[(uint8_t)logits[i] >> 4];
        pair[1] = hex[(uint8_t)logits[i] & 15];
        out_str(pair);
    }
    out_str("\n");
    out_flush();
}

static void caption_clip(uint32_t index)
{
    tc_dwt_start();
    uint32_t c0 = tc_dwt_cycles();
    tc_mark();
    int n = tc_caption(tc_input_frames, tokens);
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

/* The words after the program name: "-l" turns logits on, the last other word is the clip file. */
static const char *parse_cmdline(char *cmdline, int len, int *logits)
{
    *logits = 0;
    if (sh_get_cmdline(cmdline, len) != 0)
        return 0;
    const char *path = 0;
    char *p = cmdline;
    for (int word = 0; *p; word++) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        char *start = p;
        while (*p && *p != ' ')
            p++;
        if (*p)
            *p++ = '\0';
        if (word == 0)
            continue; /* the program name */
        if (strcmp(start, "-l") == 0)
            *logits = 1;
        else
            path = start;
    }
    return path;
}

static int run(void)
{
    static char cmdline[512];
    static uint32_t index;
    int logits;
    const char *path = parse_cmdline(cmdline, sizeof(cmdline), &logits);
    if (logits)
        tc_set_step_callback(print_step_logits, &index);
    if (!path) {
        memcpy(tc_input_frames, tc_sample_clip, CLIP_BYTES);
        caption_clip(0);
        return 0;
    }
    int fh = sh_open(path, 1);
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
    for (index = 0; index < (uint32_t)(len / CLIP_BYTES); index++) {
        if (sh_read(fh, tc_input_frames, CLIP_BYTES) != 0) {
            out_str("error: short read from the clip file\n");
            out_flush();
            return 2;
        }
        caption_clip(index);
    }
    sh_close(fh);
    return 0;
}

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
