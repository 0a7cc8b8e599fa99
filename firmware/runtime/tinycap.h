/* TinyCap on-device API: camera frames in, caption token ids out.
 *
 * Portable C99, no heap. The model (weights, quantisation parameters, static activation
 * buffers, vocabulary) comes from the generated sources in data/firmware/gen/ (tc_model.h/.c,
 * written by tinycap/firmware.py, never hand-edited), which define:
 *   TC_NUM_FRAMES  frames per clip (T)
 *   TC_DIM         frame embedding size (D)
 *   TC_MAX_LEN     most tokens a caption has (EOS not counted)
 *   TC_VOCAB_SIZE  vocabulary size (ids 0 .. TC_VOCAB_SIZE-1)
 *   TC_HAS_ENCODER 1 when the int8 frame encoder is generated (camera frames in), then also
 *   TC_FRAME_SIZE, TC_FRAME_BYTES  one frame: TC_FRAME_SIZE x TC_FRAME_SIZE uint8 RGB (H, W, 3)
 *
 * The device path (TC_HAS_ENCODER): a camera gives a frame at a time,
 *   tc_push_frame(rgb)  x TC_NUM_FRAMES   each frame encoded as it arrives -> one int8 row of MicroCap's input
 *   tc_caption(tokens)                    pool the T rows and decode
 * tc_caption_frames() does both on T frames at once (tests). Every buffer is static; the encoder's
 * activations share the arena with MicroCap's (never live at once).
 */
#ifndef TINYCAP_H
#define TINYCAP_H

#include <stdint.h>

#include "tc_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (negative; a caption's token count is >= 0). */
#define TC_ERR_FRAME_COUNT (-1) /* tc_push_frame: already TC_NUM_FRAMES frames; tc_caption: fewer were pushed */

/* Greedy caption of one clip from its int8 frame embeddings (MicroCap alone: pooler + decoder).
 * frames: TC_NUM_FRAMES * TC_DIM int8 values, row-major (T, D), quantised with the pooler's
 *         input scale / zero point (TC_FRAMES_SCALE, TC_FRAMES_ZERO_POINT).
 * tokens: room for TC_MAX_LEN ids.
 * Returns the number of tokens written: decoding starts from <bos> and stops at <eos> (not
 * written) or after TC_MAX_LEN tokens, whichever comes first. */
int tc_caption_embeddings(const int8_t *frames, uint16_t *tokens);

#if TC_HAS_ENCODER
/* Encode one camera frame (TC_FRAME_BYTES uint8 RGB, row-major (H, W, 3)) into the next row of
 * MicroCap's input. Returns 0, or TC_ERR_FRAME_COUNT (nothing written) when TC_NUM_FRAMES frames
 * are already waiting for tc_caption(). */
int tc_push_frame(const uint8_t *rgb);

/* Caption the TC_NUM_FRAMES pushed frames (tokens: room for TC_MAX_LEN ids); returns the number of
 * tokens, as tc_caption_embeddings(), and starts a new clip. Fewer frames pushed: TC_ERR_FRAME_COUNT,
 * nothing written, the pushed frames kept. */
int tc_caption(uint16_t *tokens);

/* Drop the frames pushed so far (start a new clip). */
void tc_reset(void);

/* One shot: tc_reset(), tc_push_frame() of TC_NUM_FRAMES frames stored back to back in rgb, tc_caption(). */
int tc_caption_frames(const uint8_t *rgb, uint16_t *tokens);
#endif

/* The word of a token id; an id outside the vocabulary gives "<unk>". */
const char *tc_token_text(uint16_t id);

/* Debug/parity: when set, called after every decoder step with the step's TC_VOCAB_SIZE int8
 * logits: float logit = (q - TC_LOGITS_ZERO_POINT) * TC_LOGITS_SCALE + TC_LOGITS_OFFSET, clipped
 * below at TC_LOGITS_OFFSET (quant.json logits_window; argmax needs none of it). NULL (default) = off. */
typedef void (*tc_step_fn)(int step, const int8_t *logits, void *user);
void tc_set_step_callback(tc_step_fn fn, void *user);

/* Per-op breakdowns: every kernel is its own non-inlined function (tc_k_* in tc_kernels.c and
 * tc_kernels_cortexm.c), so an instruction counter can attribute by symbol; and the generated graph
 * code calls TC_OP_HOOK(graph, index, op) before every op (see tc_kernels.h; a no-op unless defined). */

#ifdef __cplusplus
}
#endif

#endif /* TINYCAP_H */
