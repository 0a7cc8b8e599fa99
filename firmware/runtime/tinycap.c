/* The on-device path: camera frames encoded one at a time into MicroCap's int8 input (TC_HAS_ENCODER),
 * then the decode loop: pooler once, greedy decoder steps until <eos> or TC_MAX_LEN. */
#include "tinycap.h"

#include <stddef.h>
#include <string.h>

#include "tc_kernels.h"

static int8_t tc_h_a[TC_HIDDEN], tc_h_b[TC_HIDDEN]; /* h and h_new, swapped every step */
static int8_t tc_context[TC_CONTEXT];
static int8_t tc_logits[TC_VOCAB_SIZE];
static tc_step_fn tc_step_cb;
static void *tc_step_user;

void tc_set_step_callback(tc_step_fn fn, void *user) {
  tc_step_cb = fn;
  tc_step_user = user;
}

int tc_caption_embeddings(const int8_t *frames, uint16_t *tokens) {
  int8_t *h = tc_h_a, *h_new = tc_h_b;
  tc_model_pool(frames, h, tc_context);
  int32_t token = TC_BOS;
  int n = 0;
  for (int step = 0; step < TC_MAX_LEN; ++step) {
    tc_model_step(token, h, tc_context, tc_logits, h_new);
    if (tc_step_cb != NULL) tc_step_cb(step, tc_logits, tc_step_user);
    token = tc_k_argmax(tc_logits, TC_VOCAB_SIZE);
    if (token == TC_EOS) break;
    tokens[n++] = (uint16_t)token;
    int8_t *t = h; /* h_new and h share one quantisation: the next step reads h_new as h */
    h = h_new;
    h_new = t;
  }
  return n;
}

#if TC_HAS_ENCODER
static int8_t tc_frames[TC_NUM_FRAMES * TC_DIM]; /* (T, D) MicroCap's input, one row per pushed frame */
static int8_t tc_pixels_q[TC_FRAME_BYTES];       /* (S, S, 3) the frame being encoded, q = pixel - 128 */
static int tc_frames_pushed;

/* q = pixel - 128 of n bytes: the flip of each byte's top bit, 4 bytes a word (any alignment: memcpy is one
 * LDR / STR on ARMv7E-M), the last n % 4 bytes one at a time. */
static void tc_center_pixels(const uint8_t *rgb, int8_t *q, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    uint32_t v;
    memcpy(&v, rgb + i, 4);
    v ^= 0x80808080u;
    memcpy(q + i, &v, 4);
  }
  for (; i < n; ++i) q[i] = (int8_t)(rgb[i] ^ 0x80u);
}

int tc_push_frame(const uint8_t *rgb) {
  if (tc_frames_pushed >= TC_NUM_FRAMES) return TC_ERR_FRAME_COUNT;
  tc_center_pixels(rgb, tc_pixels_q, TC_FRAME_BYTES);
  int8_t *row = tc_frames + tc_frames_pushed * TC_DIM;
  tc_model_encode(tc_pixels_q, row);
  for (int i = 0; i < TC_DIM; ++i) row[i] = tc_requant_table[row[i] + 128];
  ++tc_frames_pushed;
  return 0;
}

int tc_caption(uint16_t *tokens) {
  if (tc_frames_pushed != TC_NUM_FRAMES) return TC_ERR_FRAME_COUNT;
  tc_frames_pushed = 0;
  return tc_caption_embeddings(tc_frames, tokens);
}

void tc_reset(void) {
  tc_frames_pushed = 0;
}

int tc_caption_frames(const uint8_t *rgb, uint16_t *tokens) {
  tc_reset();
  for (int t = 0; t < TC_NUM_FRAMES; ++t) tc_push_frame(rgb + t * TC_FRAME_BYTES);
  return tc_caption(tokens);
}
#endif

const char *tc_token_text(uint16_t id) {
  return id < TC_VOCAB_SIZE ? tc_vocab[id] : "<unk>";
}
