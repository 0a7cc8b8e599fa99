/* The on-device decode loop: pooler once, then greedy decoder steps until <eos> or TC_MAX_LEN. */
#include "tinycap.h"

#include <stddef.h>

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

int tc_caption(const int8_t *frames, uint16_t *tokens) {
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

const char *tc_token_text(uint16_t id) {
  return id < TC_VOCAB_SIZE ? tc_vocab[id] : "<unk>";
}
