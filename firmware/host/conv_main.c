/* Test harness for the convolution kernels (tests/test_conv_kernels.py): one kernel call on
 * parameters and tensors from stdin, the output tensor to stdout. All integers little-endian int32.
 *
 *   kind batches                            kind: 1 CONV_2D, 2 DEPTHWISE_CONV_2D, 3 MEAN, 4 AVERAGE_POOL_2D
 *   CONV / DEPTHWISE: the 16 int32 fields of tc_conv_params from in_h to act_max, has_bias,
 *                     weights (int8, out_c*k_h*k_w*in_c or k_h*k_w*out_c), [bias], mult, shift (int32[out_c])
 *   MEAN:             outer axis inner in_zp mult shift out_zp (tc_mean_params; batches unused, use 1)
 *   AVERAGE_POOL:     the 13 int32 fields of tc_pool_params
 *   then the int8 input tensor. */
#include <stdio.h>
#include <stdlib.h>

#include "tc_conv.h"
#include "tc_kernels.h"

static void *read_exact(size_t n) {
  void *buf = malloc(n ? n : 1);
  if (!buf || fread(buf, 1, n, stdin) != n) {
    fprintf(stderr, "short input (%zu bytes wanted)\n", n);
    exit(1);
  }
  return buf;
}

static int32_t read_i32(void) {
  int32_t *v = read_exact(4);
  int32_t x = *v;
  free(v);
  return x;
}

int main(void) {
  const int32_t kind = read_i32(), batches = read_i32();
  size_t out_n = 0;
  int8_t *out = NULL;
  if (kind == 1 || kind == 2) {
    int32_t f[16];
    for (int i = 0; i < 16; ++i) f[i] = read_i32();
    tc_conv_params p = {f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14],
                        f[15], NULL, NULL, NULL, NULL, NULL};
    const int32_t has_bias = read_i32();
    const size_t wn = (size_t)p.k_h * p.k_w * (kind == 1 ? (size_t)p.in_c * p.out_c : (size_t)p.out_c);
    p.weights = read_exact(wn);
    p.bias = has_bias ? read_exact(4 * (size_t)p.out_c) : NULL;
    p.mult = read_exact(4 * (size_t)p.out_c);
    p.shift = read_exact(4 * (size_t)p.out_c);
    const int8_t *in = read_exact((size_t)batches * p.in_h * p.in_w * p.in_c);
    out_n = (size_t)batches * p.out_h * p.out_w * p.out_c;
    out = malloc(out_n);
    if (kind == 1) {
      void *scratch = malloc(TC_CONV2D_SCRATCH_BYTES(p.k_h, p.k_w, p.in_c, p.out_h * p.out_w));
      tc_k_conv2d(&p, batches, in, out, scratch);
    } else {
      void *scratch = malloc(TC_DEPTHWISE_SCRATCH_BYTES(p.out_h, p.out_w, p.stride_h, p.stride_w));
      tc_k_depthwise_conv2d(&p, batches, in, out, scratch);
    }
  } else if (kind == 3) {
    tc_mean_params p;
    p.outer = read_i32();
    p.axis = read_i32();
    p.inner = read_i32();
    p.in_zp = read_i32();
    p.mult = read_i32();
    p.shift = read_i32();
    p.out_zp = read_i32();
    const int8_t *in = read_exact((size_t)p.outer * p.axis * p.inner);
    out_n = (size_t)p.outer * p.inner;
    out = malloc(out_n);
    tc_k_mean(&p, in, out);
  } else if (kind == 4) {
    int32_t f[13];
    for (int i = 0; i < 13; ++i) f[i] = read_i32();
    const tc_pool_params p = {f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12]};
    const int8_t *in = read_exact((size_t)batches * p.in_h * p.in_w * p.c);
    out_n = (size_t)batches * p.out_h * p.out_w * p.c;
    out = malloc(out_n);
    tc_k_avg_pool2d(&p, batches, in, out);
  } else {
    fprintf(stderr, "unknown kind %d\n", (int)kind);
    return 2;
  }
  fwrite(out, 1, out_n, stdout);
  return 0;
}
