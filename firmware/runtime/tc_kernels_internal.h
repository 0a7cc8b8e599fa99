/* Shared by the kernel implementations (tc_kernels.c: portable reference, always built;
 * tc_kernels_cortexm.c: Cortex-M DSP fast paths) — not part of the runtime's API (tc_kernels.h).
 * TFLM's / gemmlowp's fixed-point primitives with their names spelled out (and requantize_small, the
 * short form the conv fast paths take where it is exact), and the
 * requantisation of fully-connected accumulators both FULLY_CONNECTED implementations share. */
#ifndef TC_KERNELS_INTERNAL_H
#define TC_KERNELS_INTERNAL_H

#include <stdint.h>

#include "tc_kernels.h"

#if defined(__ARM_FEATURE_SAT) && defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* The portable definition of a kernel that a Cortex-M fast path may replace: tc_kernels_cortexm.c
 * defines the same symbol when the target has the DSP extension, and the linker takes that one
 * (TFLM swaps kernels/reference for kernels/cmsis_nn the same way, file by file). */
#if defined(__GNUC__)
#define TC_REPLACEABLE __attribute__((weak))
#else
#define TC_REPLACEABLE
#endif

/* SaturatingRoundingDoublingHighMul: (a * b * 2) >> 32, rounded half away from zero. */
static inline int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C division truncates toward zero */
}

/* RoundingDivideByPOT: x / 2^exponent rounded half away from zero. */
static inline int32_t rounding_divide_by_power_of_two(int32_t x, int32_t exponent) {
  int32_t mask = (int32_t)((1u << exponent) - 1u);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier (TFLM default, double rounding). */
static inline int32_t multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
  int32_t left = shift > 0 ? shift : 0;
  int32_t right = shift > 0 ? 0 : -shift;
  return rounding_divide_by_power_of_two(saturating_rounding_doubling_high_mul((int32_t)((uint32_t)x << left), multiplier), right);
}

/* multiply_by_quantized_multiplier() for shift <= 0 (multiplier < 1) with fewer instructions, same
 * result: SaturatingRoundingDoublingHighMul rounds half away from zero for x * m >= 0 and half
 * toward zero below, RoundingDivideByPOT rounds half away from zero on both sides, so both run on
 * |x| (one UMULL) and the sign goes back on at the end.
 * right_shift = -shift, half = right_shift > 0 ? 1 << (right_shift - 1) : 0; needs multiplier >= 0. */
static inline int32_t multiply_by_quantized_multiplier_smaller_than_one(int32_t x, int32_t multiplier,
                                                                        int32_t right_shift, uint32_t half) {
  uint32_t u = x < 0 ? 0u - (uint32_t)x : (uint32_t)x;
  uint32_t nudge = x < 0 ? (1u << 30) - 1u : (1u << 30);
  uint32_t v = (uint32_t)(((uint64_t)u * (uint32_t)multiplier + nudge) >> 31);
  uint32_t r = (v + half) >> right_shift;
  return x < 0 ? -(int32_t)r : (int32_t)r;
}

/* multiply_by_quantized_multiplier(), through the shorter routine whenever it applies. */
static inline int32_t requantize(int32_t x, int32_t multiplier, int32_t shift) {
  if (shift > 0 || multiplier < 0) return multiply_by_quantized_multiplier(x, multiplier, shift);
  return multiply_by_quantized_multiplier_smaller_than_one(x, multiplier, -shift, shift < 0 ? 1u << (-shift - 1) : 0u);
}

/* multiply_by_quantized_multiplier() for an accumulator with |x| < 2^30, multiplier >= 0 and
 * shift <= -1 (right_shift = -shift >= 1, half = 1 << (right_shift - 1)), in 5 instructions on a
 * Cortex-M with the DSP extension. SaturatingRoundingDoublingHighMul(x, m) rounds half up on both
 * sides ((a*b + nudge) / 2^31 truncated equals floor((a*b + 2^30) / 2^31)) and cannot saturate when
 * |x| < 2^30, so it is SMMULR(2x, m) = floor((2x*m + 2^31) / 2^32). RoundingDivideByPOT rounds half
 * away from zero: floor((v + half - (v < 0)) / 2^right_shift) (ADD with an ASR #31 operand).
 * Checked against multiply_by_quantized_multiplier() by firmware/host/requant_check.c. */
/* SMMULR: floor((x2 * m + 2^31) / 2^32); with x2 = 2 x, rounding_doubling_high_mul_small(x, m). */
static inline int32_t rounding_high_mul_of_doubled(int32_t x2, int32_t m) {
#if defined(__ARM_FEATURE_DSP) && defined(__thumb2__) && defined(__GNUC__)
  int32_t v;
  __asm__("smmulr %0, %1, %2" : "=r"(v) : "r"(x2), "r"(m));
  return v;
#else
  return (int32_t)(((int64_t)x2 * m + ((int64_t)1 << 31)) >> 32); /* >> of a negative: arithmetic in gcc */
#endif
}

static inline int32_t rounding_doubling_high_mul_small(int32_t x, int32_t m) {
  return rounding_high_mul_of_doubled(x * 2, m);
}

/* requantize_small() given 2 x (a doubled accumulator: the conv fast paths double their weights). With
 * half = (1 << (right_shift - 1)) + (out_offset << right_shift) it also adds the output offset:
 * floor((a + off 2^s) / 2^s) = floor(a / 2^s) + off (half_and_offset()). */
static inline int32_t requantize_small_of_doubled(int32_t x2, int32_t multiplier, int32_t right_shift, int32_t half) {
  const int32_t v = rounding_high_mul_of_doubled(x2, multiplier);
  return (v + (v >> 31) + half) >> right_shift;
}

/* The deepest right shift half_and_offset() takes: its term plus a rounded product below 2^30 must stay inside
 * int32 with |out_offset| <= 128, 2^(s-1) + 2^(s+7) + 2^30 < 2^31 (the fast routes check it: requant_fast). */
#define TC_FAST_MAX_RIGHT_SHIFT 22

static inline int32_t half_and_offset(int32_t right_shift, int32_t out_offset) {
  return (1 << (right_shift - 1)) + out_offset * (1 << right_shift); /* a product: << of a negative is undefined */
}

static inline int32_t requantize_small(int32_t x, int32_t multiplier, int32_t right_shift, int32_t half) {
  return requantize_small_of_doubled(x * 2, multiplier, right_shift, half);
}

static inline int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

#if defined(__ARM_FEATURE_SAT) && defined(__ARM_FEATURE_DSP)
#define TC_SATURATE_INT8(v) ((int8_t)__ssat((v), 8))
#else
#define TC_SATURATE_INT8(v) ((int8_t)clamp((v), -128, 127))
#endif

/* FULLY_CONNECTED: one row's fast requantisation {bias_eff, multiplier, right_shift, half}
 * (tc_fc_params.rq with right_shifts = 1) — multiply_by_quantized_multiplier_smaller_than_one()
 * written branch-free (sign mask s: |x| = (x ^ s) - s), before the output zero point and clamp. */
static inline int32_t fully_connected_requantize_fast(int32_t acc, const int32_t *rq) {
  int32_t x = acc + rq[0];
  uint32_t sign = (uint32_t)(x >> 31);
  uint32_t u = (x ^ sign) - sign;
  uint32_t v = (uint32_t)(((uint64_t)u * (uint32_t)rq[1] + ((1u << 30) + sign)) >> 31);
  uint32_t q = (v + (uint32_t)rq[3]) >> rq[2];
  return (int32_t)((q ^ sign) - sign);
}

/* Requantise `count` (<= 4) accumulators of output rows row0.. into out (tc_kernels.c). */
void tc_fully_connected_store_rows(const tc_fc_params *p, int32_t row0, int32_t count, const int32_t *acc, int8_t *out);

#endif /* TC_KERNELS_INTERNAL_H */
