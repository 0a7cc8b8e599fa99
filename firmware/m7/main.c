/* TinyCap on a Cortex-M7: camera frames in (TC_HAS_ENCODER; else int8 frame embeddings), token ids and
 * caption text out.
 *
 * One source and one main path for both link maps (Makefile): the QEMU mps2-an500 and the STM32H743
 * images are the same code, linked at different addresses.
 * Input, through the input buffer tc_input_frames: with an encoder one camera frame (TC_FRAME_BYTES
 * uint8 RGB, the camera's frame buffer), pushed (tc_push_frame) as it arrives, TC_NUM_FRAMES of them
 * then tc_caption(); without, one clip of TC_NUM_FRAMES * TC_DIM int8 embeddings (tc_caption_embeddings).
 *   semihosting command line "tinycap [-l] PATH": N clips (N * CLIP_BYTES, nothing else) read from the
 *   file PATH a frame (a clip) at a time; no PATH (a board whose debugger passes none): the built-in
 *   sample clip (tc_sample_clip, generated), copied into the input buffer.
 * Every call into the model sits between two tc_mark() calls (a measured segment for the counter): per
 * clip TC_NUM_FRAMES tc_push_frame() calls then tc_caption(), or one tc_caption_embeddings().
 * Output, one line each (parsed by tinycap/m7.py):
 *   clip <i> step <s> logits <hex>     with -l, before the clip's tokens: decoder step s's TC_VOCAB_SIZE
 *                                      int8 logits, two hex digits each (two's complement)
 *   clip <i> tokens <id> <id> ...
 *   clip <i> caption <text>
 *   clip <i> dwt_cycles <n>            (or "dwt_cycles unavailable" when CYCCNT reads 0, as under QEMU)
 *   stack_peak_bytes <n> of <size>
 * Exit status: 0 ok, 2 input not readable, 3 input size not a multiple of one clip,
 *              4 stack overflow, 5 the model returned an error code, 70 CPU fault. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "semihost.h"
#include "tinycap.h"

#define TOKEN_EOS 2
#if TC_HAS_ENCODER
#define INPUT_BYTES TC_FRAME_BYTES /* one camera frame */
#define CLIP_BYTES (TC_NUM_FRAMES * TC_FRAME_BYTES)
#else
#define INPUT_BYTES (TC_NUM_FRAMES * TC_DIM) /* one clip of embeddings */
#define CLIP_BYTES INPUT_BYTES
#endif

/* The device's input buffer (counted in RAM, .bss): a camera frame, or a clip of embeddings. */
uint8_t tc_input_frames[INPUT_BYTES];
extern const uint8_t tc_sample_clip[CLIP_BYTES];

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

/* The next INPUT_BYTES of the clip into the input buffer: from the clip file (fh >= 0) or the sample clip. */
static int next_input(int fh, uint32_t offset)
{
    if (fh < 0) {
        memcpy(tc_input_frames, tc_sample_clip + offset, INPUT_BYTES);
        return 0;
    }
    return sh_read(fh, tc_input_frames, INPUT_BYTES);
}

/* Caption one clip; returns 0, or 2 on a short read. */
static int caption_clip(int fh, uint32_t index)
{
    tc_dwt_start();
    uint32_t c0 = tc_dwt_cycles();
#if TC_HAS_ENCODER
    for (int t = 0; t < TC_NUM_FRAMES; t++) {
        if (next_input(fh, (uint32_t)t * INPUT_BYTES) != 0)
            return 2;
        tc_mark();
        int rc = tc_push_frame(tc_input_frames);
        tc_mark();
        if (rc != 0)
            return 5;
    }
    tc_mark();
    int n = tc_caption(tokens);
    tc_mark();
#else
    if (next_input(fh, 0) != 0)
        return 2;
    tc_mark();
    int n = tc_caption_embeddings((const int8_t *)tc_input_frames, tokens);
    tc_mark();
#endif
    uint32_t cycles = tc_dwt_cycles() - c0;
    if (n < 0)
        return 5;

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
    return 0;
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
    if (!path)
        return caption_clip(-1, 0);
    int fh = sh_open(path, 1);
    if (fh < 0) {
        out_str("error: cannot open the clip file named on the semihosting command line\n");
        out_flush();
        return 2;
    }
    int len = sh_flen(fh);
    if (len <= 0 || len % CLIP_BYTES != 0) {
        out_str("error: clip file size is not a multiple of one clip (CLIP_BYTES)\n");
        out_flush();
        return 3;
    }
    for (index = 0; index < (uint32_t)(len / CLIP_BYTES); index++) {
        int status = caption_clip(fh, index);
        if (status != 0) {
            out_str(status == 2 ? "error: short read from the clip file\n" : "error: the model returned an error code\n");
            out_flush();
            return status;
        }
    }
    sh_close(fh);
    return 0;
}

int main(void)
{
    int status = run();
    tc_print_stack_peak();
    if (tc_stack_overflowed()) {
        sh_write0("error: stack overflow (raise __stack_size in sections.ld)\n");
        return 4;
    }
    return status;
}
