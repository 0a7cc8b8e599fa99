/* Cortex-M fast path of CONV_2D (DSP extension: SXTB16 + SMLAD), bit-exact with
 * tc_k_conv2d_ref (see tc_conv.h). Compiled to nothing where the DSP extension is absent. */
#include "tc_conv.h"

#if TC_CONV_DSP
#include <arm_acle.h>
#include <string.h>

#include "tc_conv_internal.h"

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

/* One im2col column: the receptive field of output pixel (oy, ox) as int16 (input + in_offset;
 * 0 where padded, which is exactly TFLM's "skip the taps outside the image"), in groups of 4
 * stored as (x0, x2, x1, x3) so that one word holds (x0, x2) and the next (x1, x3): the pairs
 * SXTB16 gives of a weight word (plain and ROR #8). The k % 4 tail stays in order. */
static inline void im2col(const tc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int16_t *col) {
  const int32_t in_c = p->in_c, off = p->in_offset;
  const int32_t y0 = oy * p->stride_h - p->pad_h, x0 = ox * p->stride_w - p->pad_w;
  int16_t *dst = col;
  for (int32_t ky = 0; ky < p->k_h; ++ky) {
    const int32_t y = y0 + ky;
    for (int32_t kx = 0; kx < p->k_w; ++kx, dst += in_c) {
      const int32_t x = x0 + kx;
      if (x < 0 || x >= p->in_w || y < 0 || y >= p->in_h) {
        memset(dst, 0, (size_t)in_c * sizeof(int16_t));
      } else {
        const int8_t *src = in + (y * p->in_w + x) * in_c;
        for (int32_t c = 0; c < in_c; ++c) dst[c] = (int16_t)(src[c] + off);
      }
    }
  }
  const int32_t k4 = (p->k_h * p->k_w * in_c) & ~3;
  for (int32_t k = 0; k < k4; k += 4) {
    int16_t t = col[k + 1];
    col[k + 1] = col[k + 2];
    col[k + 2] = t;
  }
}

static inline int8_t requantise(const tc_conv_params *p, int32_t acc, int32_t oc) {
  acc = multiply_by_quantized_multiplier_fast(acc, p->mult[oc], p->shift[oc]) + p->out_offset;
  return (int8_t)clamp(acc, p->act_min, p->act_max);
}

TC_CONV_NOINLINE void tc_k_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                      void *scratch) {
  const int32_t k = p->k_h * p->k_w * p->in_c, out_c = p->out_c;
  const int32_t groups = k >> 2, tail = k & 3;
  const int32_t pixels = p->out_h * p->out_w;
  const int32_t in_image = p->in_h * p->in_w * p->in_c;
  int16_t *col0 = (int16_t *)scratch;
  int16_t *col1 = col0 + ((k + 1) & ~1); /* stays word aligned */
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t px = 0; px < pixels; px += 2) {
      /* Two output pixels per pass (the last one twice when the count is odd). */
      const int32_t px1 = px + 1 < pixels ? px + 1 : px;
      im2col(p, in, px / p->out_w, px % p->out_w, col0);
      im2col(p, in, px1 / p->out_w, px1 % p->out_w, col1);
      int8_t *out0 = out + (size_t)px * out_c, *out1 = out + (size_t)px1 * out_c;
      for (int32_t oc = 0; oc < out_c; oc += 2) {
        /* Two output channels per pass (the last one twice when out_c is odd). */
        const int32_t oc1 = oc + 1 < out_c ? oc + 1 : oc;
        const int8_t *w0 = p->weights + (size_t)oc * k, *w1 = p->weights + (size_t)oc1 * k;
        const uint32_t *a = (const uint32_t *)col0, *c = (const uint32_t *)col1;
        int32_t acc00 = 0, acc01 = 0, acc10 = 0, acc11 = 0; /* acc<pixel><channel> */
        for (int32_t g = groups; g > 0; --g) {
          const uint32_t wa = load_u32(w0), wb = load_u32(w1);
          w0 += 4;
          w1 += 4;
          const uint32_t wa02 = __sxtb16(wa), wa13 = sxtb16_ror8(wa);
          const uint32_t wb02 = __sxtb16(wb), wb13 = sxtb16_ror8(wb);
          const uint32_t a02 = a[0], a13 = a[1], c02 = c[0], c13 = c[1];
          a += 2;
          c += 2;
          acc00 = __smlad(wa02, a02, acc00);
          acc00 = __smlad(wa13, a13, acc00);
          acc01 = __smlad(wb02, a02, acc01);
          acc01 = __smlad(wb13, a13, acc01);
          acc10 = __smlad(wa02, c02, acc10);
          acc10 = __smlad(wa13, c13, acc10);
          acc11 = __smlad(wb02, c02, acc11);
          acc11 = __smlad(wb13, c13, acc11);
        }
        const int16_t *ta = (const int16_t *)a, *tc = (const int16_t *)c;
        for (int32_t t = 0; t < tail; ++t) {
          acc00 += w0[t] * ta[t];
          acc01 += w1[t] * ta[t];
          acc10 += w0[t] * tc[t];
          acc11 += w1[t] * tc[t];
        }
        if (p->bias) {
          acc00 += p->bias[oc];
          acc10 += p->bias[oc];
          acc01 += p->bias[oc1];
          acc11 += p->bias[oc1];
        }
        /* Odd counts: the duplicate results land on the same bytes, written last with the same value. */
        out0[oc] = requantise(p, acc00, oc);
        out1[oc] = requantise(p, acc10, oc);
        out0[oc1] = requantise(p, acc01, oc1);
        out1[oc1] = requantise(p, acc11, oc1);
      }
    }
    out += (size_t)pixels * out_c;
  }
}

/* DEPTHWISE_CONV_2D, 4 channels at a time (in_c % 4 == 0): per tap one word of 4 input bytes and
 * one of 4 weights, each split by SXTB16 (plain / ROR #8) into halfword pairs (c0, c2), (c1, c3),
 * the input offset added by SADD16 (x + in_offset fits 16 bits), then SMLABB / SMLATT into 4
 * accumulators. The window is clipped to the image once per pixel (no test per tap). */
TC_CONV_NOINLINE void tc_k_depthwise_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in,
                                                int8_t *out) {
  const int32_t c_n = p->in_c, in_w = p->in_w, k_w = p->k_w;
  const int32_t in_image = p->in_h * in_w * c_n;
  const uint32_t off2 = ((uint32_t)p->in_offset & 0xffffu) * 0x10001u;
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
      const int32_t y0 = oy * p->stride_h - p->pad_h;
      const int32_t ky0 = y0 < 0 ? -y0 : 0, ky1 = p->k_h < p->in_h - y0 ? p->k_h : p->in_h - y0;
      for (int32_t ox = 0; ox < p->out_w; ++ox) {
        const int32_t x0 = ox * p->stride_w - p->pad_w;
        const int32_t kx0 = x0 < 0 ? -x0 : 0, kx1 = k_w < in_w - x0 ? k_w : in_w - x0;
        const int8_t *in0 = in + ((y0 + ky0) * in_w + x0 + kx0) * c_n;
        const int8_t *w0 = p->weights + (ky0 * k_w + kx0) * c_n;
        for (int32_t c = 0; c < c_n; c += 4, out += 4) {
          int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
          const int8_t *xr = in0 + c, *wr = w0 + c;
          for (int32_t ky = ky0; ky < ky1; ++ky, xr += in_w * c_n, wr += k_w * c_n) {
            const int8_t *xp = xr, *wp = wr;
            for (int32_t kx = kx0; kx < kx1; ++kx, xp += c_n, wp += c_n) {
              const uint32_t xv = load_u32(xp), wv = load_u32(wp);
              const uint32_t x02 = __sadd16(__sxtb16(xv), off2), x13 = __sadd16(sxtb16_ror8(xv), off2);
              const uint32_t w02 = __sxtb16(wv), w13 = sxtb16_ror8(wv);
              acc0 = __smlabb(x02, w02, acc0);
              acc2 = __smlatt(x02, w02, acc2);
              acc1 = __smlabb(x13, w13, acc1);
              acc3 = __smlatt(x13, w13, acc3);
            }
          }
          if (p->bias) {
            acc0 += p->bias[c], acc1 += p->bias[c + 1], acc2 += p->bias[c + 2], acc3 += p->bias[c + 3];
          }
          out[0] = requantise(p, acc0, c);
          out[1] = requantise(p, acc1, c + 1);
          out[2] = requantise(p, acc2, c + 2);
          out[3] = requantise(p, acc3, c + 3);
        }
      }
    }
  }
}

#else
typedef int tc_conv_cortexm_unused; /* ISO C: a translation unit must not be empty */
#endif
