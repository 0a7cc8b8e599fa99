/* Host build of the firmware runtime (gcc), for parity tests against TFLM.
 *
 * usage: tc_host [-l] [CLIPS_FILE]   (default: stdin)
 * Input: N clips back to back, each TC_NUM_FRAMES * TC_DIM int8 (quantised frame embeddings).
 * Output, one line per clip: "T n id_1 ... id_n" (token ids, EOS not included); with -l, each
 * decoder step's int8 logits first, one line "L step v_0 ... v_{V-1}" per step.
 * Also: "tc_host -t ID" prints the text of token ID (defined for any ID). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinycap.h"

static void print_logits(int step, const int8_t *logits, void *user) {
  (void)user;
  printf("L %d", step);
  for (int i = 0; i < TC_VOCAB_SIZE; ++i) printf(" %d", logits[i]);
  putchar('\n');
}

int main(int argc, char **argv) {
  int logits = 0;
  const char *path = NULL;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "-l") == 0) {
      logits = 1;
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
  static int8_t frames[TC_NUM_FRAMES * TC_DIM];
  static uint16_t tokens[TC_MAX_LEN];
  size_t got;
  while ((got = fread(frames, 1, sizeof frames, f)) == sizeof frames) {
    int n = tc_caption(frames, tokens);
    printf("T %d", n);
    for (int i = 0; i < n; ++i) printf(" %u", tokens[i]);
    putchar('\n');
  }
  if (got != 0) {
    fprintf(stderr, "error: input ends inside a clip (%zu bytes left over)\n", got);
    return 1;
  }
  return 0;
}
