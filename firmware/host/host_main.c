/* Host build of the firmware runtime (gcc), for parity tests against TFLM.
 *
 * usage: tc_host [-l] [-e | [-o] [-n K] [-s H W C]] [CLIPS_FILE]   (default: stdin)
 * Input: N clips back to back, each
 *   -e            TC_NUM_FRAMES * TC_DIM int8 (quantised frame embeddings) -> tc_caption_embeddings()
 *   otherwise     TC_NUM_FRAMES camera frames, TC_FRAME_BYTES uint8 RGB each (TC_HAS_ENCODER builds):
 *                 tc_push_frame() per frame then tc_caption() (streaming), or with -o tc_caption_frames()
 *   -n K          K frames a clip instead of TC_NUM_FRAMES, all pushed (API test: K != T gives error codes)
 *   -s H W C      the input frames' geometry: must be the model's, else one error line naming both
 * Output, one line per clip: "T n id_1 ... id_n" (token ids, EOS not included; n < 0: the error code
 * tc_caption returned); with -n, "P i rc" for every push that returned rc != 0; with -l, each decoder
 * step's int8 logits first, one line "L step v_0 ... v_{V-1}" per step.
 * The tokens buffer lies between canary bytes: a write outside it (or into it on an error) exits 1.
 * Also: "tc_host -t ID" prints the text of token ID (defined for any ID). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinycap.h"

#define CANARY 0xA5

static void print_logits(int step, const int8_t *logits, void *user) {
  (void)user;
  printf("L %d", step);
  for (int i = 0; i < TC_VOCAB_SIZE; ++i) printf(" %d", logits[i]);
  putchar('\n');
}

/* the tokens buffer with canary bytes on both sides */
static struct {
  uint8_t before[32];
  uint16_t tokens[TC_MAX_LEN];
  uint8_t after[32];
} out;

static int canaries_intact(int n) {
  for (size_t i = 0; i < sizeof out.before; ++i)
    if (out.before[i] != CANARY) return 0;
  for (size_t i = 0; i < sizeof out.after; ++i)
    if (out.after[i] != CANARY) return 0;
  /* tokens past the n written (all of them on an error) keep the fill */
  const uint8_t *t = (const uint8_t *)out.tokens;
  for (size_t i = (size_t)(n > 0 ? n : 0) * sizeof(uint16_t); i < sizeof out.tokens; ++i)
    if (t[i] != CANARY) return 0;
  return 1;
}

static int error(const char *what) {
  fprintf(stderr, "error: %s\n", what);
  return 1;
}

int main(int argc, char **argv) {
  int logits = 0, embeddings = !TC_HAS_ENCODER, one_shot = 0, frames_per_clip = TC_NUM_FRAMES;
  long geometry[3] = {0, 0, 0};
  const char *path = NULL;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "-l") == 0) {
      logits = 1;
    } else if (strcmp(argv[i], "-e") == 0) {
      embeddings = 1;
    } else if (strcmp(argv[i], "-o") == 0) {
      one_shot = 1;
    } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
      frames_per_clip = atoi(argv[++i]);
    } else if (strcmp(argv[i], "-s") == 0 && i + 3 < argc) {
      for (int k = 0; k < 3; ++k) geometry[k] = strtol(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
      long id = strtol(argv[++i], NULL, 10);
      printf("%s\n", tc_token_text((uint16_t)(id < 0 || id > 65535 ? 65535 : id)));
      return 0;
    } else {
      path = argv[i];
    }
  }
  FILE *f = path ? fopen(path, "rb") : stdin;
  if (f == NULL) {
    fprintf(stderr, "error: cannot open %s\n", path);
    return 1;
  }
  if (logits) tc_set_step_callback(print_logits, NULL);
  size_t clip_bytes = (size_t)TC_NUM_FRAMES * TC_DIM;
#if TC_HAS_ENCODER
  if (!embeddings) {
    if (geometry[0] && (geometry[0] != TC_FRAME_SIZE || geometry[1] != TC_FRAME_SIZE || geometry[2] != 3)) {
      fprintf(stderr, "error: frames are %ldx%ldx%ld, the encoder takes %dx%dx3 uint8 RGB\n", geometry[0], geometry[1],
              geometry[2], TC_FRAME_SIZE, TC_FRAME_SIZE);
      return 1;
    }
    if (frames_per_clip < 1 || frames_per_clip > 4 * TC_NUM_FRAMES) return error("-n takes 1 .. 4 T frames");
    if (one_shot && frames_per_clip != TC_NUM_FRAMES) return error("-o captions exactly TC_NUM_FRAMES frames");
    clip_bytes = (size_t)frames_per_clip * TC_FRAME_BYTES;
  }
#else
  (void)one_shot;
  (void)geometry;
  (void)frames_per_clip;
  if (!embeddings) return error("this build has no encoder: embeddings in only (-e)");
#endif
#if TC_HAS_ENCODER
  static uint8_t clip[4 * TC_NUM_FRAMES * TC_FRAME_BYTES]; /* up to 4 T frames (-n) */
#else
  static uint8_t clip[TC_NUM_FRAMES * TC_DIM];
#endif
  size_t got;
  while ((got = fread(clip, 1, clip_bytes, f)) == clip_bytes) {
    memset(&out, CANARY, sizeof out);
    int n;
    if (embeddings) {
      n = tc_caption_embeddings((const int8_t *)clip, out.tokens);
    } else {
#if TC_HAS_ENCODER
      if (one_shot) {
        n = tc_caption_frames(clip, out.tokens);
      } else {
        for (int t = 0; t < frames_per_clip; ++t) {
          int rc = tc_push_frame(clip + (size_t)t * TC_FRAME_BYTES);
          if (rc != 0) printf("P %d %d\n", t, rc);
        }
        n = tc_caption(out.tokens);
        if (n < 0) tc_reset();
      }
#else
      n = -1;
#endif
    }
    if (!canaries_intact(n)) return error("tokens written outside the buffer (canary bytes changed)");
    printf("T %d", n);
    for (int i = 0; i < n; ++i) printf(" %u", out.tokens[i]);
    putchar('\n');
  }
  if (got != 0 && got != clip_bytes) {
    fprintf(stderr, "error: input ends inside a clip (%zu bytes left over)\n", got);
    return 1;
  }
  return 0;
}
