/* TinyCap on-device API: int8 frame embeddings in, caption token ids out.
 *
 * Portable C99, no heap. The model (weights, quantisation parameters, static activation
 * buffers, vocabulary) comes from the generated sources in data/firmware/gen/ (tc_model.h/.c,
 * written by tinycap/firmware.py, never hand-edited), which define:
 *   TC_NUM_FRAMES  frames per clip (T)
 *   TC_DIM         frame embedding size (D)
 *   TC_MAX_LEN     most tokens tc_caption() writes (EOS not counted)
 *   TC_VOCAB_SIZE  vocabulary size (ids 0 .. TC_VOCAB_SIZE-1)
 */
#ifndef TINYCAP_H
#define TINYCAP_H

#include <stdint.h>

#include "tc_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Greedy caption of one clip.
 * frames: TC_NUM_FRAMES * TC_DIM int8 values, row-major (T, D), quantised with the pooler's
 *         input scale / zero point (TC_FRAMES_SCALE, TC_FRAMES_ZERO_POINT).
 * tokens: room for TC_MAX_LEN ids.
 * Returns the number of tokens written: decoding starts from <bos> and stops at <eos> (not
 * written) or after TC_MAX_LEN tokens, whichever comes first. */
int tc_caption(const int8_t *frames, uint16_t *tokens);

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
