/* int8 convolution kernels for the image encoder (issue 14), bit-exact with TFLM's reference
 * integer kernels (reference/integer_ops/conv.h, depthwise_conv.h, pooling.h):
 * CONV_2D and DEPTHWISE_CONV_2D with per-channel requantisation, AVERAGE_POOL_2D.
 * Global average pooling (MEAN over axes 1 and 2) is tc_k_mean (tc_kernels.h) on the
 * (batch, H*W, C) view: TFLM's int8 MEAN over several axes is the same sum - zp * count and one
 * requantisation with count = H*W, so no new kernel.
 *
 * Layouts as in .tflite: activations NHWC; CONV_2D weights OHWI [out_c][k_h][k_w][in_c];
 * DEPTHWISE_CONV_2D weights 1HWC [k_h][k_w][out_c]. Limits: dilation 1 only, depthwise
 * depth_multiplier 1 only (out_c == in_c), no grouped convolution (filter depth == in_c); the
 * Python side (tinycap/conv_prepare.py) rejects anything else at build time.
 *
 * The parameters are computed at build time exactly as TFLM's Prepare does (conv_prepare.py).
 * Every kernel is its own non-inlined tc_k_* function. Scratch memory is an argument. */
#ifndef TC_CONV_H
#define TC_CONV_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define TC_CONV_NOINLINE __attribute__((noinline))
#else
#define TC_CONV_NOINLINE
#endif

/* The Cortex-M fast path (tc_conv_cortexm.c) exists where the DSP extension does. */
#if defined(__ARM_FEATURE_DSP) && defined(__thumb2__) && defined(__GNUC__)
#define TC_CONV_DSP 1
#else
#define TC_CONV_DSP 0
#endif

typedef struct {
  int32_t in_h, in_w, in_c;
  int32_t out_h, out_w, out_c;
  int32_t k_h, k_w;
  int32_t stride_h, stride_w;
  int32_t pad_h, pad_w;          /* TFLM padding_values: top / left padding */
  int32_t in_offset, out_offset; /* -input zero point, output zero point */
  int32_t act_min, act_max;      /* fused activation as a clamp (NONE / RELU / RELU6) */
  const int8_t *weights;         /* OHWI (conv) or 1HWC (depthwise) */
  const int32_t *bias;           /* out_c values, or NULL */
  const int32_t *mult;           /* out_c multipliers (a per-tensor one repeated) */
  const int32_t *shift;          /* out_c TFLM shifts (> 0: left) */
  const int32_t *packed;         /* or NULL: the Cortex-M fast route's words, packed at build time
                                    (tinycap/conv_prepare.py cortexm_words: per channel pair or channel) */
} tc_conv_params;

/* CONV_2D. scratch: TC_CONV2D_SCRATCH_BYTES(k_h, k_w, in_c, out_h * out_w) bytes, 4-byte aligned (used by the
 * DSP path only; the portable build ignores it and accepts NULL). Dispatches to tc_k_conv2d_dsp on
 * Cortex-M with DSP, to tc_k_conv2d_ref elsewhere. */
void tc_k_conv2d(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out, void *scratch);
/* The Cortex-M path works on chunks of up to TC_CONV2D_CHUNK_PAIRS pairs of output pixels. */
#define TC_CONV2D_CHUNK_PAIRS 64
#define TC_CONV2D_K4(k_h, k_w, in_c) ((size_t)(((k_h) * (k_w) * (in_c) + 3) & ~3))
#define TC_CONV2D_CHUNK(pixels) \
  ((size_t)(((pixels) + 1) / 2 < TC_CONV2D_CHUNK_PAIRS ? ((pixels) + 1) / 2 : TC_CONV2D_CHUNK_PAIRS))
/* Per chunk pair 2 int16 im2col columns of k4 taps (k rounded up to 4) and 4 int32 accumulators; one
 * channel pair's unpacked weights (2 x k4 int16); one column's k4 bytes before widening. */
#define TC_CONV2D_SCRATCH_BYTES(k_h, k_w, in_c, pixels) \
  (TC_CONV2D_CHUNK(pixels) * (4 * TC_CONV2D_K4(k_h, k_w, in_c) + 16) + 5 * TC_CONV2D_K4(k_h, k_w, in_c))

/* The portable reference: TFLM's ConvPerChannel loop order and arithmetic. */
void tc_k_conv2d_ref(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out);

#if TC_CONV_DSP
/* Cortex-M (SXTB16 + SMLAD), weight-stationary over a chunk of output pixel pairs: the chunk's
 * receptive fields are expanded once into int16 columns (input + in_offset, 0 where padded, so
 * padding needs no test in the inner loop); then per pair of output channels its int16 weights (packed at
 * build time, p->packed, or unpacked here) and the assembly loop (tc_k_conv2d_pairs_requant) runs every pixel
 * pair of the chunk: per group of 4 taps 8 LDR (4 weight words, 4 column words), each issued beside one of
 * 8 SMLAD = 16 MACs, software-pipelined and unrolled 8 groups deep; then the channel pair is requantised in
 * registers. Weights stay OHWI as in the .tflite. */
void tc_k_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out, void *scratch);
#endif

/* DEPTHWISE_CONV_2D, depth_multiplier 1 (p->out_c == p->in_c). scratch: TC_DEPTHWISE_SCRATCH_BYTES(out_h,
 * out_w, stride_h, stride_w) bytes, 4-byte aligned (DSP path only; NULL is accepted elsewhere). Dispatches on
 * Cortex-M with DSP to tc_k_depthwise3_dsp for 3x3 kernels of stride_w 1 or 2, else to
 * tc_k_depthwise_conv2d_dsp when in_c % 4 == 0; to the reference otherwise. */
void tc_k_depthwise_conv2d(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out, void *scratch);
/* 4 channels' int16 planes of a 3x3 depthwise op: each its windows' rows, one column more, the width even. */
#define TC_DEPTHWISE_SCRATCH_BYTES(out_h, out_w, stride_h, stride_w) \
  ((size_t)8 * (size_t)(((out_h) - 1) * (stride_h) + 3) * (size_t)((((out_w) - 1) * (stride_w) + 5) & ~1))
/* The portable reference: TFLM's DepthwiseConvPerChannel loop order and arithmetic. */
void tc_k_depthwise_conv2d_ref(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out);
#if TC_CONV_DSP
/* Cortex-M, in_c % 4 == 0: 4 channels per pass, SXTB16 + SADD16 (input offset) + SMLABB/SMLATT,
 * the window clipped to the image once per output pixel. */
void tc_k_depthwise_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out);
/* Cortex-M, 3x3, stride_w 1 or 2, any in_c: one channel at a time over its zero-point-padded int16 plane
 * (scratch; the planes of 4 channels are built at once where in_c % 4 == 0 and pad_w <= 1), four neighbouring
 * outputs per pass (rows of a width divisible by 4 in assembly, tc_k_dw3_rows_s1 / _s2): SMLAD / SMLABT /
 * SMLATB with two weight words per kernel row, (w0, w1) and (w1, w2), the input offset folded into the bias. */
void tc_k_depthwise3_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out, void *scratch);
#endif

/* AVERAGE_POOL_2D int8 (input and output share scale and zero point, as TFLM requires): the sum
 * of the window clipped to the image, divided by its element count rounding half away from 0. */
typedef struct {
  int32_t in_h, in_w, c;
  int32_t out_h, out_w;
  int32_t k_h, k_w;
  int32_t stride_h, stride_w;
  int32_t pad_h, pad_w;
  int32_t act_min, act_max;
} tc_pool_params;
void tc_k_avg_pool2d(const tc_pool_params *p, int32_t batches, const int8_t *in, int8_t *out);

#endif /* TC_CONV_H */
