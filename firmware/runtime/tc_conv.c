/* Portable int8 convolution / pooling kernels, bit-exact with TFLM's reference integer kernels
 * (see tc_conv.h). The Cortex-M fast path is in tc_conv_cortexm.c. */
#include "tc_conv.h"
#include "tc_kernels_internal.h"

/* ---- CONV_2D ------------------------------------------------------------------------------ */

TC_CONV_NOINLINE void tc_k_conv2d(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                  void *scratch) {
#if TC_CONV_DSP
  tc_k_conv2d_dsp(p, batches, in, out, scratch);
#else
  (void)scratch;
  tc_k_conv2d_ref(p, batches, in, out);
#endif
}

TC_CONV_NOINLINE void tc_k_conv2d_ref(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out) {
  const int32_t in_c = p->in_c, out_c = p->out_c;
  const int32_t in_image = p->in_h * p->in_w * in_c;
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
      const int32_t y0 = oy * p->stride_h - p->pad_h;
      for (int32_t ox = 0; ox < p->out_w; ++ox) {
        const int32_t x0 = ox * p->stride_w - p->pad_w;
        for (int32_t oc = 0; oc < out_c; ++oc) {
          const int8_t *w = p->weights + (size_t)oc * p->k_h * p->k_w * in_c;
          int32_t acc = 0;
          for (int32_t ky = 0; ky < p->k_h; ++ky) {
            const int32_t y = y0 + ky;
            for (int32_t kx = 0; kx < p->k_w; ++kx) {
              const int32_t x = x0 + kx;
              if (x < 0 || x >= p->in_w || y < 0 || y >= p->in_h) continue; /* zero padding */
              const int8_t *px = in + (y * p->in_w + x) * in_c;
              const int8_t *wk = w + (ky * p->k_w + kx) * in_c;
              for (int32_t c = 0; c < in_c; ++c) acc += (int32_t)wk[c] * ((int32_t)px[c] + p->in_offset);
            }
          }
          if (p->bias) acc += p->bias[oc];
          acc = multiply_by_quantized_multiplier(acc, p->mult[oc], p->shift[oc]) + p->out_offset;
          *out++ = (int8_t)clamp(acc, p->act_min, p->act_max);
        }
      }
    }
  }
}

/* ---- DEPTHWISE_CONV_2D (depth_multiplier 1) ----------------------------------------------- */

TC_CONV_NOINLINE void tc_k_depthwise_conv2d(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                            void *scratch) {
#if TC_CONV_DSP
  if (p->k_h == 3 && p->k_w == 3 && (p->stride_w == 1 || p->stride_w == 2)) {
    tc_k_depthwise3_dsp(p, batches, in, out, scratch);
    return;
  }
  if (p->in_c % 4 == 0) {
    tc_k_depthwise_conv2d_dsp(p, batches, in, out);
    return;
  }
#else
  (void)scratch;
#endif
  tc_k_depthwise_conv2d_ref(p, batches, in, out);
}

TC_CONV_NOINLINE void tc_k_depthwise_conv2d_ref(const tc_conv_params *p, int32_t batches, const int8_t *in,
                                                int8_t *out) {
  const int32_t c_n = p->in_c;
  const int32_t in_image = p->in_h * p->in_w * c_n;
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
      const int32_t y0 = oy * p->stride_h - p->pad_h;
      for (int32_t ox = 0; ox < p->out_w; ++ox) {
        const int32_t x0 = ox * p->stride_w - p->pad_w;
        for (int32_t c = 0; c < c_n; ++c) {
          int32_t acc = 0;
          for (int32_t ky = 0; ky < p->k_h; ++ky) {
            const int32_t y = y0 + ky;
            if (y < 0 || y >= p->in_h) continue;
            for (int32_t kx = 0; kx < p->k_w; ++kx) {
              const int32_t x = x0 + kx;
              if (x < 0 || x >= p->in_w) continue;
              acc += (int32_t)p->weights[(ky * p->k_w + kx) * c_n + c] * ((int32_t)in[(y * p->in_w + x) * c_n + c] + p->in_offset);
            }
          }
          if (p->bias) acc += p->bias[c];
          acc = multiply_by_quantized_multiplier(acc, p->mult[c], p->shift[c]) + p->out_offset;
          *out++ = (int8_t)clamp(acc, p->act_min, p->act_max);
        }
      }
    }
  }
}

/* ---- AVERAGE_POOL_2D ---------------------------------------------------------------------- */

TC_CONV_NOINLINE void tc_k_avg_pool2d(const tc_pool_params *p, int32_t batches, const int8_t *in, int8_t *out) {
  const int32_t c_n = p->c;
  const int32_t in_image = p->in_h * p->in_w * c_n;
  for (int32_t b = 0; b < batches; ++b, in += in_image) {
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
      const int32_t y0 = oy * p->stride_h - p->pad_h;
      const int32_t ky0 = y0 < 0 ? -y0 : 0;
      const int32_t ky1 = p->k_h < p->in_h - y0 ? p->k_h : p->in_h - y0;
      for (int32_t ox = 0; ox < p->out_w; ++ox) {
        const int32_t x0 = ox * p->stride_w - p->pad_w;
        const int32_t kx0 = x0 < 0 ? -x0 : 0;
        const int32_t kx1 = p->k_w < p->in_w - x0 ? p->k_w : p->in_w - x0;
        const int32_t count = (ky1 - ky0) * (kx1 - kx0);
        for (int32_t c = 0; c < c_n; ++c) {
          int32_t acc = 0;
          for (int32_t ky = ky0; ky < ky1; ++ky)
            for (int32_t kx = kx0; kx < kx1; ++kx) acc += in[((y0 + ky) * p->in_w + x0 + kx) * c_n + c];
          /* TFLM returns an error for an empty window; the build rejects such shapes. */
          if (count > 0) acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
          *out++ = (int8_t)clamp(acc, p->act_min, p->act_max);
        }
      }
    }
  }
}
