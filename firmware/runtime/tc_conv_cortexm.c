/* Cortex-M fast paths (DSP extension: SXTB16, SADD16, SMLAD, SMLABB/SMLATT) of CONV_2D and
 * DEPTHWISE_CONV_2D, bit-exact with tc_k_conv2d_ref / tc_k_depthwise_conv2d_ref (see tc_conv.h;
 * checked under QEMU by firmware/m7/conv_check.c). Compiled to nothing where the DSP extension is
 * absent. */
#include "tc_conv.h"

#if TC_CONV_DSP
#include <arm_acle.h>
#include <string.h>

#include "tc_kernels_internal.h"

static inline uint32_t sxtb16_ror8(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}

static inline uint32_t load_u32(const int8_t *p) { /* LDR allows unaligned addresses on ARMv7E-M */
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* The receptive fields of 2 output pixels ("columns" j = 0, 1) as int16 (input + in_offset; 0 where
 * padded, which is exactly TFLM's "skip the taps outside the image"), interleaved for the SMLAD
 * loop: for each group of 4 taps g, 4 words cols[4g..4g+3] = column 0 (x0, x2), (x1, x3), column 1
 * (x0, x2), (x1, x3) -- the halfword pairs SXTB16 gives of a weight word (plain and ROR #8). The
 * k % 4 tail follows in order, column 0 then column 1. */
static const int8_t *pixel_tap(const tc_conv_params *p, const int8_t *in, int32_t y, int32_t x) {
  return x < 0 || x >= p->in_w || y < 0 || y >= p->in_h ? NULL : in + (y * p->in_w + x) * p->in_c;
}

/* in_c % 4 == 0: each 4 input bytes straight into the 2 words of their group (SXTB16 + SADD16). */
static void im2col_by4(const tc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t j, uint32_t *cols) {
  const int32_t y0 = oy * p->stride_h - p->pad_h, x0 = ox * p->stride_w - p->pad_w, in_c = p->in_c;
  const uint32_t off2 = ((uint32_t)p->in_offset & 0xffffu) * 0x10001u;
  uint32_t *dst = cols + 2 * j;
  for (int32_t ky = 0; ky < p->k_h; ++ky)
    for (int32_t kx = 0; kx < p->k_w; ++kx) {
      const int8_t *src = pixel_tap(p, in, y0 + ky, x0 + kx);
      for (int32_t c = 0; c < in_c; c += 4, dst += 4) {
        if (!src) {
          dst[0] = dst[1] = 0;
        } else {
          const uint32_t v = load_u32(src + c);
          dst[0] = __sadd16(__sxtb16(v), off2);
          dst[1] = __sadd16(sxtb16_ror8(v), off2);
        }
      }
    }
}

/* Any in_c: the column in order into `plain` (k int16), then regrouped. */
static void im2col_any(const tc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t j, uint32_t *cols,
                       int16_t *plain) {
  const int32_t y0 = oy * p->stride_h - p->pad_h, x0 = ox * p->stride_w - p->pad_w, in_c = p->in_c;
  const int32_t off = p->in_offset, k = p->k_h * p->k_w * in_c, groups = k >> 2, tail = k & 3;
  int16_t *dst = plain;
  for (int32_t ky = 0; ky < p->k_h; ++ky)
    for (int32_t kx = 0; kx < p->k_w; ++kx, dst += in_c) {
      const int8_t *src = pixel_tap(p, in, y0 + ky, x0 + kx);
      if (!src)
        memset(dst, 0, (size_t)in_c * sizeof(int16_t));
      else
        for (int32_t c = 0; c < in_c; ++c) dst[c] = (int16_t)(src[c] + off);
    }
  const uint32_t *w = (const uint32_t *)plain; /* (x0, x1), (x2, x3) */
  uint32_t *d = cols + 2 * j;
  for (int32_t g = 0; g < groups; ++g, w += 2, d += 4) {
    d[0] = (w[0] & 0xffffu) | (w[1] << 16);
    d[1] = (w[0] >> 16) | (w[1] & 0xffff0000u);
  }
  int16_t *t = (int16_t *)(cols + 4 * groups) + j * tail;
  for (int32_t i = 0; i < tail; ++i) t[i] = plain[4 * groups + i];
}

/* The loop both dot routines share: r3 groups of 4 taps, weight rows at r0 and r1, the 2 interleaved
 * columns at r2, accumulators r4-r7 (pixel, channel) 00, 01, 10, 11 (label 1). */
#define TC_DOT2X2_GROUPS \
    "1:\n" \
    "  ldr r8, [r0], #4\n"           /* weights of channel 0 */ \
    "  ldr r9, [r1], #4\n"           /* weights of channel 1 */ \
    "  ldrd r10, r11, [r2], #8\n"    /* column 0: (x0, x2), (x1, x3) */ \
    "  sxtb16 r12, r8\n" \
    "  sxtb16 r8, r8, ror #8\n" \
    "  smlad r4, r12, r10, r4\n  smlad r4, r8, r11, r4\n" \
    "  sxtb16 lr, r9\n" \
    "  sxtb16 r9, r9, ror #8\n" \
    "  smlad r5, lr, r10, r5\n  smlad r5, r9, r11, r5\n" \
    "  ldrd r10, r11, [r2], #8\n"    /* column 1 */ \
    "  smlad r6, r12, r10, r6\n  smlad r6, r8, r11, r6\n" \
    "  smlad r7, lr, r10, r7\n  smlad r7, r9, r11, r7\n" \
    "  subs r3, r3, #1\n" \
    "  bne 1b\n"

/* acc[0..3] = (pixel 0, channel 0), (0, 1), (1, 0), (1, 1): acc[] (the bias) plus the dot products of
 * weight rows w0, w1 with the 2 interleaved columns over `groups` (>= 1) groups of 4 taps. Per group:
 * 2 LDR (weights, unaligned), 2 LDRD (columns), 4 SXTB16, 8 SMLAD (16 MACs), SUBS + BNE: 18
 * instructions. */
void tc_k_conv2d_dot2x2(const int8_t *w0, const int8_t *w1, const uint32_t *cols, int32_t groups, int32_t *acc);
__asm__(
    "  .section .text.tc_k_conv2d_dot2x2, \"ax\", %progbits\n" /* its own section: --gc-sections drops it unused */
    "  .syntax unified\n"
    "  .thumb\n"
    "  .global tc_k_conv2d_dot2x2\n"
    "  .type tc_k_conv2d_dot2x2, %function\n"
    "  .p2align 2\n"
    "  .thumb_func\n"
    "tc_k_conv2d_dot2x2:\n"
    "  push {r4-r11, lr}\n"
    "  ldr r8, [sp, #36]\n"          /* acc: the 5th argument, above the 9 saved registers */
    "  ldm r8, {r4-r7}\n"
    TC_DOT2X2_GROUPS
    "  ldr r0, [sp, #36]\n"
    "  stmia r0, {r4-r7}\n"
    "  pop {r4-r11, pc}\n"
    "  .size tc_k_conv2d_dot2x2, . - tc_k_conv2d_dot2x2\n"
    "  .text\n");

/* Every channel pair of 2 pixels: for pair j (channels 2j, 2j + 1; weight rows w + 2j * k, each
 * k = 4 * groups bytes), acc[4j..4j+3] = (pixel 0, channel 2j), (0, 2j + 1), (1, 2j), (1, 2j + 1),
 * each its channel's bias plus the dot product with the 2 interleaved columns (the loop of
 * tc_k_conv2d_dot2x2, TC_DOT2X2_GROUPS). Per pair 17 instructions besides the 18 per group of 4 taps. */
void tc_k_conv2d_dot2xn(const int8_t *w, const uint32_t *cols, int32_t groups, int32_t pairs, const int32_t *bias,
                        int32_t *acc);
__asm__(
    "  .section .text.tc_k_conv2d_dot2xn, \"ax\", %progbits\n"
    "  .syntax unified\n"
    "  .thumb\n"
    "  .global tc_k_conv2d_dot2xn\n"
    "  .type tc_k_conv2d_dot2xn, %function\n"
    "  .p2align 2\n"
    "  .thumb_func\n"
    "tc_k_conv2d_dot2xn:\n"
    "  push {r4-r11, lr}\n"
    "  sub sp, sp, #16\n"            /* [sp] cols, [sp+4] groups, [sp+8] pairs left, [sp+12] k bytes */
    "  str r1, [sp, #0]\n"
    "  str r2, [sp, #4]\n"
    "  str r3, [sp, #8]\n"
    "  lsls r12, r2, #2\n"
    "  str r12, [sp, #12]\n"
    "  add r1, r0, r12\n"            /* weight row of the pair's second channel */
    "2:\n"
    "  ldr r8, [sp, #52]\n"          /* bias: the 5th argument, above the 16 bytes and 9 saved registers */
    "  ldrd r4, r5, [r8], #8\n"
    "  str r8, [sp, #52]\n"
    "  mov r6, r4\n"
    "  mov r7, r5\n"
    "  ldr r2, [sp, #0]\n"
    "  ldr r3, [sp, #4]\n"
    TC_DOT2X2_GROUPS
    "  ldr r8, [sp, #56]\n"          /* acc: the 6th argument */
    "  stmia r8!, {r4-r7}\n"
    "  str r8, [sp, #56]\n"
    "  mov r0, r1\n"                 /* the rows just read end where the next pair's begin */
    "  ldr r12, [sp, #12]\n"
    "  add r1, r1, r12\n"
    "  ldr r12, [sp, #8]\n"
    "  subs r12, r12, #1\n"
    "  str r12, [sp, #8]\n"
    "  bne 2b\n"
    "  add sp, sp, #16\n"
    "  pop {r4-r11, pc}\n"
    "  .size tc_k_conv2d_dot2xn, . - tc_k_conv2d_dot2xn\n"
    "  .text\n");

/* The requantisation of an op's outputs, read once from its parameters: per output channel TFLM's
 * MultiplyByQuantizedMultiplier, the output offset and the fused clamp. `fast` ops (requant_fast())
 * take requantize_small() (5 instructions) and SSAT instead of the general routine and the clamp. */
typedef struct {
  const int32_t *mult, *shift;
  int32_t out_offset, act_min, act_max;
} requant_params;

/* 1 when every output of the op can take the fast route: every accumulator stays below 2^30 in
 * magnitude (k products of a weight and an offset input, |w| <= 128, |x + in_offset| <= 255, plus the
 * bias), every channel's shift is <= -1 with a multiplier >= 0, and the fused activation clamps to the
 * whole int8 range (the usual case: a ReLU's output zero point is -128). Inlined, so its instructions
 * count under the kernel's own symbol in metrics/m7.json. */
static inline __attribute__((always_inline)) int requant_fast(const tc_conv_params *p, int32_t k, int32_t channels) {
  int64_t bias = 0;
  int fast = p->act_min == -128 && p->act_max == 127;
  for (int32_t c = 0; c < channels; ++c) {
    const int64_t b = p->bias ? (p->bias[c] < 0 ? -(int64_t)p->bias[c] : p->bias[c]) : 0;
    bias = b > bias ? b : bias;
    fast &= p->shift[c] < 0 && p->mult[c] >= 0;
  }
  return fast && (int64_t)k * 128 * 255 + bias < ((int64_t)1 << 30);
}

static inline __attribute__((always_inline)) int8_t requantise(const requant_params *r, int32_t acc, int32_t c,
                                                               const int fast) {
  if (fast) {
    const int32_t right_shift = -r->shift[c];
    return (int8_t)__ssat(requantize_small(acc, r->mult[c], right_shift, 1 << (right_shift - 1)) + r->out_offset, 8);
  }
  return (int8_t)clamp(requantize(acc, r->mult[c], r->shift[c]) + r->out_offset, r->act_min, r->act_max);
}

/* tc_k_conv2d_dsp's body, specialised by `fast` (requant_fast()). */
static inline __attribute__((always_inline)) void conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in,
                                                             int8_t *out, void *scratch, const int fast) {
  const requant_params r = {p->mult, p->shift, p->out_offset, p->act_min, p->act_max};
  const int8_t *const weights = p->weights;
  const int32_t *const bias = p->bias;
  const int32_t k = p->k_h * p->k_w * p->in_c, out_c = p->out_c;
  const int32_t groups = k >> 2, tail = k & 3;
  const int32_t pixels = p->out_h * p->out_w, out_w = p->out_w;
  const int32_t in_image = p->in_h * p->in_w * p->in_c;
  uint32_t *cols = (uint32_t *)scratch;                          /* 4 * k4 bytes, k4 = k rounded up to 4 */
  int16_t *plain = (int16_t *)(cols + ((k + 3) & ~3));           /* 2 * k4 bytes (im2col_any only) */
  int32_t *accs = (int32_t *)(plain + ((k + 3) & ~3));           /* 8 * out_c bytes (tc_k_conv2d_dot2xn) */
  const int by4 = p->in_c % 4 == 0, all_pairs = by4 && out_c % 2 == 0 && bias != NULL;
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t px = 0; px < pixels; px += 2) {
      /* Two output pixels per pass (the last one twice when the count is odd). */
      const int32_t px1 = px + 1 < pixels ? px + 1 : px;
      if (by4) {
        im2col_by4(p, in, px / out_w, px % out_w, 0, cols);
        im2col_by4(p, in, px1 / out_w, px1 % out_w, 1, cols);
      } else {
        im2col_any(p, in, px / out_w, px % out_w, 0, cols, plain);
        im2col_any(p, in, px1 / out_w, px1 % out_w, 1, cols, plain);
      }
      const int16_t *t0 = (const int16_t *)(cols + 4 * groups), *t1 = t0 + tail;
      int8_t *out0 = out + (size_t)px * out_c, *out1 = out + (size_t)px1 * out_c;
      if (all_pairs) { /* k % 4 == 0: every pair in one call, then the requantisation */
        tc_k_conv2d_dot2xn(weights, cols, groups, out_c / 2, bias, accs);
        const int32_t *a = accs;
        for (int32_t oc = 0; oc < out_c; oc += 2, a += 4) {
          out0[oc] = requantise(&r, a[0], oc, fast);
          out0[oc + 1] = requantise(&r, a[1], oc + 1, fast);
          out1[oc] = requantise(&r, a[2], oc, fast);
          out1[oc + 1] = requantise(&r, a[3], oc + 1, fast);
        }
        continue;
      }
      for (int32_t oc = 0; oc < out_c; oc += 2) {
        /* Two output channels per pass (the last one twice when out_c is odd). */
        const int32_t oc1 = oc + 1 < out_c ? oc + 1 : oc;
        const int8_t *w0 = weights + (size_t)oc * k, *w1 = weights + (size_t)oc1 * k;
        const int32_t b0 = bias ? bias[oc] : 0, b1 = bias ? bias[oc1] : 0;
        int32_t acc[4] = {b0, b1, b0, b1}; /* (pixel, channel) 00, 01, 10, 11 */
        if (groups > 0) tc_k_conv2d_dot2x2(w0, w1, cols, groups, acc);
        w0 += 4 * groups, w1 += 4 * groups;
        for (int32_t t = 0; t < tail; ++t) {
          acc[0] += w0[t] * t0[t];
          acc[1] += w1[t] * t0[t];
          acc[2] += w0[t] * t1[t];
          acc[3] += w1[t] * t1[t];
        }
        /* Odd counts: the duplicate results land on the same bytes, written last with the same value. */
        out0[oc] = requantise(&r, acc[0], oc, fast);
        out1[oc] = requantise(&r, acc[2], oc, fast);
        out0[oc1] = requantise(&r, acc[1], oc1, fast);
        out1[oc1] = requantise(&r, acc[3], oc1, fast);
      }
    }
    out += (size_t)pixels * out_c;
  }
}

TC_CONV_NOINLINE void tc_k_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                      void *scratch) {
  if (requant_fast(p, p->k_h * p->k_w * p->in_c, p->out_c))
    conv2d_dsp(p, batches, in, out, scratch, 1);
  else
    conv2d_dsp(p, batches, in, out, scratch, 0);
}

/* DEPTHWISE_CONV_2D, 4 channels at a time (in_c % 4 == 0): per tap one word of 4 input bytes and
 * one of 4 weights, each split by SXTB16 (plain / ROR #8) into halfword pairs (c0, c2), (c1, c3),
 * the input offset added by SADD16 (x + in_offset fits 16 bits), then SMLABB / SMLATT into 4
 * accumulators. The window is clipped to the image once per pixel (no test per tap). */
static inline __attribute__((always_inline)) void depthwise_conv2d_dsp(const tc_conv_params *p, int32_t batches,
                                                                       const int8_t *in, int8_t *out, const int fast) {
  const requant_params r = {p->mult, p->shift, p->out_offset, p->act_min, p->act_max};
  const int32_t *const bias = p->bias;
  const int32_t c_n = p->in_c, in_w = p->in_w, in_h = p->in_h, k_w = p->k_w, k_h = p->k_h;
  const int32_t out_h = p->out_h, out_w = p->out_w, stride_h = p->stride_h, stride_w = p->stride_w;
  const int32_t in_image = in_h * in_w * c_n;
  const uint32_t off2 = ((uint32_t)p->in_offset & 0xffffu) * 0x10001u;
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t oy = 0; oy < out_h; ++oy) {
      const int32_t y0 = oy * stride_h - p->pad_h;
      const int32_t ky0 = y0 < 0 ? -y0 : 0, ky1 = k_h < in_h - y0 ? k_h : in_h - y0;
      for (int32_t ox = 0; ox < out_w; ++ox) {
        const int32_t x0 = ox * stride_w - p->pad_w;
        const int32_t kx0 = x0 < 0 ? -x0 : 0, kx1 = k_w < in_w - x0 ? k_w : in_w - x0;
        const int8_t *in0 = in + ((y0 + ky0) * in_w + x0 + kx0) * c_n;
        const int8_t *w0 = p->weights + (ky0 * k_w + kx0) * c_n;
        for (int32_t c = 0; c < c_n; c += 4, out += 4) {
          int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
          if (bias) acc0 = bias[c], acc1 = bias[c + 1], acc2 = bias[c + 2], acc3 = bias[c + 3];
          const int8_t *xr = in0 + c, *wr = w0 + c;
#define TC_DW_TAP(xp, wp)                                                                    \
  do {                                                                                      \
    const uint32_t xv = load_u32(xp), wv = load_u32(wp);                                    \
    const uint32_t x02 = __sadd16(__sxtb16(xv), off2), x13 = __sadd16(sxtb16_ror8(xv), off2); \
    const uint32_t w02 = __sxtb16(wv), w13 = sxtb16_ror8(wv);                               \
    acc0 = __smlabb(x02, w02, acc0);                                                        \
    acc2 = __smlatt(x02, w02, acc2);                                                        \
    acc1 = __smlabb(x13, w13, acc1);                                                        \
    acc3 = __smlatt(x13, w13, acc3);                                                        \
  } while (0)
          if (kx1 - kx0 == 3) { /* the common full 3-wide row unrolled (10.0 -> 9.1 instr/MAC) */
            for (int32_t ky = ky0; ky < ky1; ++ky, xr += in_w * c_n, wr += k_w * c_n) {
              TC_DW_TAP(xr, wr);
              TC_DW_TAP(xr + c_n, wr + c_n);
              TC_DW_TAP(xr + 2 * c_n, wr + 2 * c_n);
            }
          } else {
            for (int32_t ky = ky0; ky < ky1; ++ky, xr += in_w * c_n, wr += k_w * c_n) {
              const int8_t *xp = xr, *wp = wr;
              for (int32_t kx = kx0; kx < kx1; ++kx, xp += c_n, wp += c_n) TC_DW_TAP(xp, wp);
            }
          }
#undef TC_DW_TAP
          out[0] = requantise(&r, acc0, c, fast);
          out[1] = requantise(&r, acc1, c + 1, fast);
          out[2] = requantise(&r, acc2, c + 2, fast);
          out[3] = requantise(&r, acc3, c + 3, fast);
        }
      }
    }
  }
}

TC_CONV_NOINLINE void tc_k_depthwise_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in,
                                                int8_t *out) {
  if (requant_fast(p, p->k_h * p->k_w, p->in_c))
    depthwise_conv2d_dsp(p, batches, in, out, 1);
  else
    depthwise_conv2d_dsp(p, batches, in, out, 0);
}

#else
typedef int tc_conv_cortexm_unused; /* ISO C: a translation unit must not be empty */
#endif
