/* Test harness: run one generated graph on raw inputs from stdin, raw outputs to stdout.
 * usage: tc_graph NAME  (inputs: the graph's input tensors back to back, little-endian) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tc_graphs.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s GRAPH < inputs > outputs\n", argv[0]);
    return 2;
  }
  for (int g = 0; g < TC_NUM_GRAPHS; ++g) {
    const tc_graph_info *gi = &tc_graph_table[g];
    if (strcmp(gi->name, argv[1]) != 0) continue;
    const void *in[16];
    void *out[16];
    for (int i = 0; i < gi->n_in; ++i) {
      void *buf = malloc((size_t)gi->in_bytes[i]);
      if (fread(buf, 1, (size_t)gi->in_bytes[i], stdin) != (size_t)gi->in_bytes[i]) {
        fprintf(stderr, "short input %d\n", i);
        return 1;
      }
      in[i] = buf;
    }
    for (int i = 0; i < gi->n_out; ++i) out[i] = calloc(1, (size_t)gi->out_bytes[i]);
    gi->run(in, out);
    for (int i = 0; i < gi->n_out; ++i) fwrite(out[i], 1, (size_t)gi->out_bytes[i], stdout);
    return 0;
  }
  fprintf(stderr, "no graph %s\n", argv[1]);
  return 2;
}
