/* Fixed-point helpers shared by tc_conv.c and tc_conv_cortexm.c (not part of the API):
 * gemmlowp's / TFLM's integer arithmetic, inlined into the kernels. */
#ifndef TC_CONV_INTERNAL_H
#define TC_CONV_INTERNAL_H

#include <stdint.h>

/* SaturatingRoundingDoublingHighMul (gemmlowp): (a * b * 2) >> 32, rounded half away from zero. */
static inline int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C division truncates toward zero */
}

/* RoundingDivideByPOT (gemmlowp): x / 2^e rounded half away from zero, 0 <= e <= 31. */
static inline int32_t rounding_divide_by_pot(int32_t x, int32_t e) {
  int32_t mask = (int32_t)((1u << e) - 1u);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier (TFLM, double rounding: the reference build's default). */
static inline int32_t multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
  int32_t left = shift > 0 ? shift : 0;
  int32_t right = shift > 0 ? 0 : -shift;
  return rounding_divide_by_pot(saturating_rounding_doubling_high_mul((int32_t)((uint32_t)x << left), multiplier),
                                right);
}

/* multiply_by_quantized_multiplier() with fewer instructions for shift <= 0 (every multiplier < 1),
 * the same result for multiplier >= 0 (QuantizeMultiplier never gives a negative one): with
 * s = sign(x), SaturatingRoundingDoublingHighMul(x, m) = s * ((|x| * m + 2^30 - (x < 0)) >> 31)
 * (nudge toward zero below 0), and RoundingDivideByPOT rounds half away from zero on both sides,
 * so both run on |x| (one UMULL / UMLAL) and the sign goes back on at the end. */
static inline int32_t multiply_by_quantized_multiplier_fast(int32_t x, int32_t multiplier, int32_t shift) {
  if (shift > 0) return multiply_by_quantized_multiplier(x, multiplier, shift);
  const uint32_t e = (uint32_t)-shift, sgn = (uint32_t)(x >> 31);
  const uint32_t u = ((uint32_t)x ^ sgn) - sgn;
  const uint32_t v = (uint32_t)(((uint64_t)u * (uint32_t)multiplier + ((1u << 30) + sgn)) >> 31);
  const uint32_t q = (v + ((1u << e) >> 1)) >> e;
  return (int32_t)((q ^ sgn) - sgn);
}

static inline int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

#endif /* TC_CONV_INTERNAL_H */
