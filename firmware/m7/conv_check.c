/* Cortex-M7 check of the fast paths (tests/test_conv_kernels.py): tc_k_conv2d_dsp against
 * tc_k_conv2d_ref, tc_k_depthwise_conv2d_dsp and tc_k_depthwise3_dsp against tc_k_depthwise_conv2d_ref on random
 * shapes, parameters and data (a fixed xorshift stream),
 * byte for byte, under QEMU mps2-an500; built with firmware/runtime/tc_conv*.c, startup.c,
 * semihost.c, marker.c (no Makefile target: the test compiles it).
 *
 * Segments for the instruction counter (tc_mark pairs): for each benchmark shape first, 4 pairs:
 * reference CONV_2D, fast CONV_2D, reference and fast DEPTHWISE_CONV_2D (3x3 stride 1 SAME on the
 * same input); then the random cases, unmarked. Prints one line per case
 * ("case I macs M diff D", "dwcase I macs M diff D"), "bench I macs M dw_macs N", and exits with the number of cases
 * that differ. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "semihost.h"
#include "tc_conv.h"

#if !TC_CONV_DSP
#error "conv_check.c is for a Cortex-M with the DSP extension"
#endif

#define MAX_IN (20 * 20 * 64)
#define MAX_OUT (20 * 20 * 96)
#define MAX_W (96 * 3 * 3 * 64)
#define MAX_C 96
#define NUM_RANDOM 40

static int8_t in[MAX_IN], w[MAX_W], out_ref[MAX_OUT], out_dsp[MAX_OUT];
static int32_t bias[MAX_C], mult[MAX_C], shift[MAX_C];
static uint32_t scratch[TC_CONV2D_SCRATCH_BYTES(3, 3, 64, 20 * 20) / 4]; /* k <= 3 * 3 * 64, pixels <= 20 * 20 */
static uint32_t dw_scratch[TC_DEPTHWISE_SCRATCH_BYTES(20, 20, 2, 2) / 4];

static uint32_t rng = 2463534242u;
static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return rng;
}
static int32_t uniform(int32_t lo, int32_t hi) { return lo + (int32_t)(next() % (uint32_t)(hi - lo + 1)); }

static int32_t out_size(int32_t same, int32_t in_size, int32_t k, int32_t stride) {
  return same ? (in_size + stride - 1) / stride : (in_size + stride - k) / stride;
}
static int32_t pad_before(int32_t in_size, int32_t k, int32_t stride, int32_t out) {
  int32_t total = (out - 1) * stride + k - in_size;
  return total > 0 ? total / 2 : 0;
}

/* Random data and quantisation for a shape (a depthwise one reads the first k * k * c weights);
 * returns 0 if it does not fit the buffers. Half the shapes get a converter-like quantisation (every
 * shift <= -1, the activation clamping to the whole int8 range: the kernels' fast requantisation),
 * the other half any shift in -14..2 and any clamp (the general one). */
static int make(tc_conv_params *p, int32_t b, int32_t h, int32_t wd, int32_t c, int32_t oc, int32_t k, int32_t stride,
                int32_t same, int32_t depthwise) {
  const int general = (int)(next() % 2);
  const int32_t nw = depthwise ? k * k * c : oc * k * k * c;
  memset(p, 0, sizeof *p);
  p->in_h = h, p->in_w = wd, p->in_c = c, p->out_c = oc, p->k_h = k, p->k_w = k;
  p->stride_h = p->stride_w = stride;
  p->out_h = out_size(same, h, k, stride), p->out_w = out_size(same, wd, k, stride);
  if (p->out_h < 1 || p->out_w < 1 || b * h * wd * c > MAX_IN || b * p->out_h * p->out_w * oc > MAX_OUT ||
      nw > MAX_W || oc > MAX_C || (!depthwise && k * k * c > 3 * 3 * 64))
    return 0;
  p->pad_h = pad_before(h, k, stride, p->out_h), p->pad_w = pad_before(wd, k, stride, p->out_w);
  p->in_offset = uniform(-127, 128);
  p->out_offset = uniform(-128, 127);
  p->act_min = !general || next() % 2 ? -128 : uniform(-128, 0);
  p->act_max = !general || next() % 2 ? 127 : uniform(p->act_min, 127);
  for (int32_t i = 0; i < b * h * wd * c; ++i) in[i] = (int8_t)next();
  for (int32_t i = 0; i < nw; ++i) w[i] = (int8_t)uniform(-127, 127);
  for (int32_t i = 0; i < oc; ++i) {
    bias[i] = uniform(-20000, 20000);
    mult[i] = uniform(1 << 30, 0x7fffffff);
    shift[i] = !general ? uniform(-14, -1) : next() % 8 ? uniform(-14, -4) : uniform(-1, 2);
  }
  p->weights = w, p->bias = next() % 4 ? bias : NULL, p->mult = mult, p->shift = shift;
  p->packed = NULL; /* the kernels pack at run time (the generated graphs carry cortexm_words) */
  return 1;
}

static int32_t compare(int32_t n) {
  int32_t d = 0;
  for (int32_t i = 0; i < n; ++i) d += out_ref[i] != out_dsp[i];
  return d;
}

static void line(const char *a, int32_t i, const char *b, uint32_t x, const char *c, uint32_t y) {
  out_str(a), out_u32((uint32_t)i), out_str(b), out_u32(x), out_str(c), out_u32(y), out_str("\n");
}

/* A 1x1 conv and a 3x3 depthwise on its input with a ReLU's output zero point and the shifts set in `shift`:
 * the DSP paths against the references; the number of ops that differ. */
static int32_t relu_shift_case(int32_t id, tc_conv_params *p) {
  p->out_offset = -128, p->act_min = -128, p->act_max = 127, p->bias = bias;
  const int32_t n = p->out_h * p->out_w * p->out_c;
  tc_k_conv2d_ref(p, 1, in, out_ref);
  tc_k_conv2d_dsp(p, 1, in, out_dsp, scratch);
  const int32_t d = compare(n);
  line("case ", id, " macs ", (uint32_t)(n * p->in_c), " diff ", (uint32_t)d);
  tc_conv_params q = *p;
  q.out_c = p->in_c, q.k_h = q.k_w = 3, q.pad_h = q.pad_w = 1;
  tc_k_depthwise_conv2d_ref(&q, 1, in, out_ref);
  tc_k_depthwise3_dsp(&q, 1, in, out_dsp, dw_scratch);
  const int32_t dd = compare(n);
  line("dwcase ", id, " macs ", (uint32_t)(n * 9), " diff ", (uint32_t)dd);
  return (d != 0) + (dd != 0);
}

int main(void) {
  static const int32_t bench[][7] = {
      /* b, h, w, c, out_c, k, stride (SAME) -- MobileNet-like layers */
      {1, 8, 8, 64, 64, 1, 1}, /* pointwise */
      {1, 12, 12, 32, 48, 1, 1},
      {1, 16, 16, 3, 16, 3, 2}, /* the stem: 3x3 stride 2 on RGB */
      {1, 8, 8, 16, 32, 3, 1},
  };
  const int32_t num_bench = (int32_t)(sizeof bench / sizeof bench[0]);
  int32_t failed = 0;
  tc_conv_params p;
  for (int32_t i = 0; i < num_bench; ++i) {
    const int32_t *s = bench[i];
    make(&p, s[0], s[1], s[2], s[3], s[4], s[5], s[6], 1, 0);
    p.act_min = -128, p.act_max = 127, p.bias = bias; /* benchmark shapes: quantised as the converter does */
    for (int32_t c = 0; c < MAX_C; ++c) shift[c] = -2 - c % 13; /* the fast route's right shifts, 2..14 */
    const int32_t n = s[0] * p.out_h * p.out_w * p.out_c;
    tc_mark();
    tc_k_conv2d_ref(&p, s[0], in, out_ref);
    tc_mark();
    tc_mark();
    tc_k_conv2d_dsp(&p, s[0], in, out_dsp, scratch);
    tc_mark();
    const int32_t d = compare(n);
    failed += d != 0;
    /* depthwise 3x3 stride 1 on the same input (weights: the first 9 * c bytes of w) */
    tc_conv_params q = p;
    q.out_c = p.in_c, q.k_h = q.k_w = 3, q.stride_h = q.stride_w = 1, q.out_h = p.in_h, q.out_w = p.in_w;
    q.pad_h = q.pad_w = 1;
    const int32_t dn = s[0] * q.out_h * q.out_w * q.out_c;
    tc_mark();
    tc_k_depthwise_conv2d_ref(&q, s[0], in, out_ref);
    tc_mark();
    tc_mark();
    tc_k_depthwise3_dsp(&q, s[0], in, out_dsp, dw_scratch);
    tc_mark();
    const int32_t dd = compare(dn);
    failed += dd != 0;
    line("bench ", i, " macs ", (uint32_t)(n * s[5] * s[5] * s[3]), " dw_macs ", (uint32_t)(dn * 9));
    line("dwcase ", i, " macs ", (uint32_t)(dn * 9), " diff ", (uint32_t)dd);
    line("case ", i, " macs ", (uint32_t)(n * s[5] * s[5] * s[3]), " diff ", (uint32_t)d);
  }
  /* case 2000: right shifts of 15..31, where the fast requantisation's rounding term (out_offset << shift) would
     overflow (it must not be taken below -22); case 2001: the fast route's bounds, right shifts 2 and 22 (and 9) */
  for (int32_t id = 2000; id <= 2001; ++id) {
    make(&p, 1, 8, 8, 16, 16, 1, 1, 1, 0);
    for (int32_t c = 0; c < MAX_C; ++c) shift[c] = id == 2000 ? -15 - c % 17 : c % 3 == 0 ? -2 : c % 3 == 1 ? -22 : -9;
    failed += relu_shift_case(id, &p);
  }
  for (int32_t i = 0; i < NUM_RANDOM; ++i) {
    const int32_t b = uniform(1, 2), h = uniform(1, 11), wd = uniform(1, 11), c = uniform(1, 40);
    const int32_t oc = uniform(1, 40), k = next() % 2 ? 1 : 3, stride = uniform(1, 2), same = (int32_t)(next() % 2);
    if (!make(&p, b, h, wd, c, oc, k, stride, same, 0)) continue;
    const int32_t n = b * p.out_h * p.out_w * p.out_c;
    memset(out_dsp, 0x55, (size_t)n + 4);
    tc_k_conv2d_ref(&p, b, in, out_ref);
    tc_k_conv2d_dsp(&p, b, in, out_dsp, scratch);
    int32_t d = compare(n);
    d += out_dsp[n] != 0x55; /* no write past the output */
    failed += d != 0;
    line("case ", num_bench + i, " macs ", (uint32_t)(n * k * k * c), " diff ", (uint32_t)d);
  }
  for (int32_t i = 0; i < NUM_RANDOM; ++i) { /* depthwise, channels a multiple of 4 */
    const int32_t b = uniform(1, 2), h = uniform(1, 11), wd = uniform(1, 11), c = 4 * uniform(1, 12);
    const int32_t k = next() % 2 ? 3 : 5, stride = uniform(1, 2), same = (int32_t)(next() % 2);
    if (!make(&p, b, h, wd, c, c, k, stride, same, 1) && !make(&p, b, h, wd, c, c, k, stride, 1, 1)) continue;
    const int32_t n = b * p.out_h * p.out_w * c;
    memset(out_dsp, 0x55, (size_t)n + 4);
    tc_k_depthwise_conv2d_ref(&p, b, in, out_ref);
    tc_k_depthwise_conv2d_dsp(&p, b, in, out_dsp);
    int32_t d = compare(n);
    d += out_dsp[n] != 0x55;
    failed += d != 0;
    line("dwcase ", num_bench + i, " macs ", (uint32_t)(n * k * k), " diff ", (uint32_t)d);
  }
  for (int32_t i = 0; i < NUM_RANDOM; ++i) { /* depthwise 3x3 (tc_k_depthwise3_dsp), any channel count */
    const int32_t b = uniform(1, 2), h = uniform(1, 11), wd = uniform(1, 11), c = uniform(1, 40);
    const int32_t stride = uniform(1, 2), same = (int32_t)(next() % 2);
    if (!make(&p, b, h, wd, c, c, 3, stride, same, 1) && !make(&p, b, h, wd, c, c, 3, stride, 1, 1)) continue;
    p.stride_w = uniform(1, 2); /* stride_h and stride_w apart */
    p.out_w = out_size(same, wd, 3, p.stride_w), p.pad_w = pad_before(wd, 3, p.stride_w, p.out_w);
    if (p.out_w < 1) continue;
    const int32_t n = b * p.out_h * p.out_w * c;
    memset(out_dsp, 0x55, (size_t)n + 4);
    tc_k_depthwise_conv2d_ref(&p, b, in, out_ref);
    tc_k_depthwise3_dsp(&p, b, in, out_dsp, dw_scratch);
    int32_t d = compare(n);
    d += out_dsp[n] != 0x55;
    failed += d != 0;
    line("dwcase ", 1000 + i, " macs ", (uint32_t)(n * 9), " diff ", (uint32_t)d);
  }
  tc_print_stack_peak();
  return failed;
}
