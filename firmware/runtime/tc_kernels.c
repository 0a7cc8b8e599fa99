/* int8 kernels, bit-exact with TFLM's reference integer kernels (see tc_kernels.h): the portable
 * reference implementations, built for every target. tc_kernels_cortexm.c replaces
 * tc_k_fully_connected() on Cortex-M cores with the DSP extension (see TC_REPLACEABLE). */
#include "tc_kernels.h"

#include <string.h>

#include "tc_kernels_internal.h"

/* ---- FULLY_CONNECTED ---------------------------------------------------------------------- */

void tc_fully_connected_store_rows(const tc_fc_params *p, int32_t row0, int32_t count, const int32_t *acc, int8_t *out) {
  const int32_t *rq = p->rq + 4 * row0;
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
  out += row0;
  if (p->right_shifts && count == 4 && lo == -128 && hi == 127) { /* the common case, unrolled */
    out[0] = TC_SATURATE_INT8(fully_connected_requantize_fast(acc[0], rq) + zp);
    out[1] = TC_SATURATE_INT8(fully_connected_requantize_fast(acc[1], rq + 4) + zp);
    out[2] = TC_SATURATE_INT8(fully_connected_requantize_fast(acc[2], rq + 8) + zp);
    out[3] = TC_SATURATE_INT8(fully_connected_requantize_fast(acc[3], rq + 12) + zp);
  } else if (p->right_shifts) {
    for (int32_t r = 0; r < count; ++r, rq += 4)
      out[r] = (int8_t)clamp(fully_connected_requantize_fast(acc[r], rq) + zp, lo, hi);
  } else {
    for (int32_t r = 0; r < count; ++r, rq += 4)
      out[r] = (int8_t)clamp(multiply_by_quantized_multiplier(acc[r] + rq[0], rq[1], rq[2]) + zp, lo, hi);
  }
}

/* Portable C over the pre-arranged weights (4 rows per group, depth padded to k4); the scratch
 * buffer is the DSP path's and goes unused here. */
TC_REPLACEABLE TC_NOINLINE void tc_k_fully_connected(const tc_fc_params *p, int32_t batches, const int8_t *in,
                                                     int8_t *out, uint32_t *scratch) {
  (void)scratch;
  const int32_t groups = (p->n + 3) / 4;
  for (int32_t b = 0; b < batches; ++b, in += p->k, out += p->n) {
    const int8_t *w = p->weights;
    for (int32_t g = 0; g < groups; ++g, w += 4 * p->k4) {
      int32_t acc[4] = {0, 0, 0, 0};
      for (int32_t kb = 0; kb < p->k4 / 4; ++kb) {
        const int8_t *wb = w + 16 * kb;
        for (int32_t j = 0; j < 4; ++j) {
          int32_t k = 4 * kb + j;
          if (k >= p->k) break;
          int32_t x = in[k];
          acc[0] += wb[j] * x;
          acc[1] += wb[4 + j] * x;
          acc[2] += wb[8 + j] * x;
          acc[3] += wb[12 + j] * x;
        }
      }
      tc_fully_connected_store_rows(p, 4 * g, 4 * g + 4 <= p->n ? 4 : p->n - 4 * g, acc, out);
    }
  }
}

/* ---- ADD / SUB / MUL ---------------------------------------------------------------------- */

static inline int8_t add_one(const tc_add_params *p, int8_t x, int8_t y) {
  int32_t a = requantize((p->in1_offset + x) * (1 << 20), p->in1_mult, p->in1_shift);
  int32_t b = requantize((p->in2_offset + y) * (1 << 20), p->in2_mult, p->in2_shift);
  int32_t raw = p->sign > 0 ? a + b : a - b;
  return (int8_t)clamp(requantize(raw, p->out_mult, p->out_shift) + p->out_offset, p->act_min, p->act_max);
}

static inline int8_t mul_one(const tc_mul_params *p, int8_t x, int8_t y) {
  int32_t prod = (p->in1_offset + x) * (p->in2_offset + y);
  return (int8_t)clamp(p->out_offset + requantize(prod, p->mult, p->shift), p->act_min, p->act_max);
}

#define TC_BCAST_LOOP(EXPR)                                                                  \
  if (b->flat) {                                                                             \
    for (int32_t i = 0; i < b->count; ++i) out[i] = EXPR(p, x[i], y[i]);                     \
  } else {                                                                                   \
    int32_t o = 0;                                                                           \
    for (int32_t i0 = 0; i0 < b->shape[0]; ++i0)                                             \
      for (int32_t i1 = 0; i1 < b->shape[1]; ++i1)                                           \
        for (int32_t i2 = 0; i2 < b->shape[2]; ++i2)                                         \
          for (int32_t i3 = 0; i3 < b->shape[3]; ++i3) {                                     \
            int32_t o1 = i0 * b->s1[0] + i1 * b->s1[1] + i2 * b->s1[2] + i3 * b->s1[3];     \
            int32_t o2 = i0 * b->s2[0] + i1 * b->s2[1] + i2 * b->s2[2] + i3 * b->s2[3];     \
            out[o++] = EXPR(p, x[o1], y[o2]);                                                \
          }                                                                                  \
  }

TC_NOINLINE void tc_k_add(const tc_add_params *p, const tc_bcast *b, const int8_t *x, const int8_t *y, int8_t *out) {
  TC_BCAST_LOOP(add_one)
}

TC_NOINLINE void tc_k_add_tables(const tc_add_params *p, const int32_t *t1, const int32_t *t2, int32_t count,
                                 const int8_t *x, const int8_t *y, int8_t *out) {
  const int32_t m = p->out_mult, s = p->out_shift, zp = p->out_offset, lo = p->act_min, hi = p->act_max;
  if (s > 0 || m < 0) {
    for (int32_t i = 0; i < count; ++i) {
      int32_t a = t1[(uint8_t)(x[i] + 128)], b = t2[(uint8_t)(y[i] + 128)];
      out[i] = (int8_t)clamp(multiply_by_quantized_multiplier(p->sign > 0 ? a + b : a - b, m, s) + zp, lo, hi);
    }
    return;
  }
  const int32_t e = -s;
  const uint32_t half = e > 0 ? 1u << (e - 1) : 0u;
  const int32_t *c1 = t1 + 128, *c2 = t2 + 128; /* indexed by the signed int8 value */
  if (p->sign > 0 && lo == -128 && hi == 127) {
    for (int32_t i = 0; i < count; ++i) out[i] = TC_SATURATE_INT8(multiply_by_quantized_multiplier_smaller_than_one(c1[x[i]] + c2[y[i]], m, e, half) + zp);
  } else if (p->sign > 0) {
    for (int32_t i = 0; i < count; ++i) out[i] = (int8_t)clamp(multiply_by_quantized_multiplier_smaller_than_one(c1[x[i]] + c2[y[i]], m, e, half) + zp, lo, hi);
  } else {
    for (int32_t i = 0; i < count; ++i) out[i] = (int8_t)clamp(multiply_by_quantized_multiplier_smaller_than_one(c1[x[i]] - c2[y[i]], m, e, half) + zp, lo, hi);
  }
}

TC_NOINLINE void tc_k_mul(const tc_mul_params *p, const tc_bcast *b, const int8_t *x, const int8_t *y, int8_t *out) {
  if (b->flat && p->shift <= 0 && p->mult >= 0) { /* parameters in locals: int8 stores may alias *p */
    const int32_t o1 = p->in1_offset, o2 = p->in2_offset, zp = p->out_offset, m = p->mult, e = -p->shift;
    const int32_t lo = p->act_min, hi = p->act_max, n = b->count;
    const uint32_t half = e > 0 ? 1u << (e - 1) : 0u;
    for (int32_t i = 0; i < n; ++i) out[i] = (int8_t)clamp(zp + multiply_by_quantized_multiplier_smaller_than_one((o1 + x[i]) * (o2 + y[i]), m, e, half), lo, hi);
    return;
  }
  TC_BCAST_LOOP(mul_one)
}

/* ---- table lookup, gather, copies, argmax ------------------------------------------------- */

TC_NOINLINE void tc_k_lut(const int8_t *table, int32_t count, const int8_t *in, int8_t *out) {
  for (int32_t i = 0; i < count; ++i) out[i] = table[(uint8_t)(in[i] + 128)];
}

TC_NOINLINE void tc_k_gather(const int8_t *table, int32_t rows, int32_t row_len, int8_t fill, const int32_t *idx,
                             int32_t n, int8_t *out) {
  for (int32_t i = 0; i < n; ++i, out += row_len) {
    if (idx[i] >= 0 && idx[i] < rows)
      memcpy(out, table + (size_t)idx[i] * (size_t)row_len, (size_t)row_len);
    else
      memset(out, fill, (size_t)row_len);
  }
}

TC_NOINLINE void tc_k_copy(int32_t outer, int32_t len, const int8_t *src, int32_t src_step, int8_t *dst,
                           int32_t dst_step) {
  for (int32_t i = 0; i < outer; ++i) memmove(dst + (size_t)i * dst_step, src + (size_t)i * src_step, (size_t)len);
}

TC_NOINLINE int32_t tc_k_argmax(const int8_t *x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

/* ---- BATCH_MATMUL, MEAN ------------------------------------------------------------------ */

TC_NOINLINE void tc_k_batch_matmul(const tc_bmm_params *p, const int8_t *lhs, const int8_t *rhs, int8_t *out) {
  for (int32_t b = 0; b < p->batches; ++b) {
    const int8_t *l = lhs + b * p->lhs_bstride, *r = rhs + b * p->rhs_bstride;
    for (int32_t i = 0; i < p->m; ++i)
      for (int32_t j = 0; j < p->n; ++j) {
        int32_t acc = 0;
        for (int32_t kk = 0; kk < p->k; ++kk) {
          int32_t lv = p->lhs_t ? l[kk * p->m + i] : l[i * p->k + kk];
          int32_t rv = p->rhs_t ? r[j * p->k + kk] : r[kk * p->n + j];
          acc += (lv + p->lhs_offset) * (rv + p->rhs_offset);
        }
        *out++ = (int8_t)clamp(requantize(acc, p->mult, p->shift) + p->out_offset, -128, 127);
      }
  }
}

static inline int8_t mean_output(const tc_mean_params *p, int32_t sum) {
  return (int8_t)clamp(requantize(sum - p->in_zp * p->axis, p->mult, p->shift) + p->out_zp, -128, 127);
}

/* 4 neighbouring inner positions per pass down the axis (4 sums in registers, one pointer step a row). */
TC_NOINLINE void tc_k_mean(const tc_mean_params *p, const int8_t *in, int8_t *out) {
  const int32_t inner = p->inner, axis = p->axis;
  for (int32_t o = 0; o < p->outer; ++o, in += axis * inner, out += inner) {
    int32_t i = 0;
    for (; i + 4 <= inner; i += 4) {
      int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      const int8_t *x = in + i;
      for (int32_t a = 0; a < axis; ++a, x += inner) s0 += x[0], s1 += x[1], s2 += x[2], s3 += x[3];
      out[i] = mean_output(p, s0), out[i + 1] = mean_output(p, s1);
      out[i + 2] = mean_output(p, s2), out[i + 3] = mean_output(p, s3);
    }
    for (; i < inner; ++i) {
      int32_t sum = 0;
      for (int32_t a = 0; a < axis; ++a) sum += in[a * inner + i];
      out[i] = mean_output(p, sum);
    }
  }
}

/* ---- SOFTMAX (gemmlowp fixed point, as TFLM's reference int8 softmax) --------------------- */

/* Saturating x * 2^e for e > 0. */
static inline int32_t saturating_left_shift(int32_t x, int e) {
  int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
  if (x > threshold) return INT32_MAX;
  if (x < -threshold) return INT32_MIN;
  return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a in [-1/4, 0), Q0.31. */
static int32_t exp_on_negative_quarter_interval(int32_t a) {
  const int32_t constant_term = 1895147668, one_third = 715827883;
  int32_t x = a + (1 << 28);
  int32_t x2 = saturating_rounding_doubling_high_mul(x, x), x3 = saturating_rounding_doubling_high_mul(x2, x), x4 = saturating_rounding_doubling_high_mul(x2, x2);
  int32_t x4_over_4 = rounding_divide_by_power_of_two(x4, 2);
  int32_t poly = rounding_divide_by_power_of_two(saturating_rounding_doubling_high_mul(x4_over_4 + x3, one_third) + x2, 1);
  return constant_term + saturating_rounding_doubling_high_mul(constant_term, x + poly);
}

/* exp(a) for a <= 0 given in Q5.26, result Q0.31. */
static int32_t exp_on_negative_values(int32_t a) {
  const int32_t one_quarter = 1 << 24, mask = one_quarter - 1;
  int32_t a_mod_q = (a & mask) - one_quarter;
  int32_t result = exp_on_negative_quarter_interval(saturating_left_shift(a_mod_q, 5));
  int32_t remainder = a_mod_q - a;
  static const int32_t mults[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  for (int i = 0; i < 7; ++i)
    if (remainder & (1 << (24 + i))) result = saturating_rounding_doubling_high_mul(result, mults[i]);
  return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 in and out (Newton-Raphson, 3 iterations). */
static int32_t one_over_one_plus_x_for_x_in_0_1(int32_t a) {
  int64_t sum = (int64_t)a + INT32_MAX;
  int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
  int32_t x = 1515870810 + saturating_rounding_doubling_high_mul(half_den, -1010580540); /* Q2.29 */
  for (int i = 0; i < 3; ++i) {
    int32_t hdx = saturating_rounding_doubling_high_mul(half_den, x);
    int32_t one_minus = (1 << 29) - hdx;
    x = x + saturating_left_shift(saturating_rounding_doubling_high_mul(x, one_minus), 2);
  }
  return saturating_left_shift(x, 1);
}

static int count_leading_zeros(uint32_t x) {
  int n = 0;
  if (x == 0) return 32;
  while (!(x & 0x80000000u)) { x <<= 1; ++n; }
  return n;
}

TC_NOINLINE void tc_k_softmax(const tc_softmax_params *p, int32_t outer, int32_t depth, const int8_t *in, int8_t *out) {
  for (int32_t i = 0; i < outer; ++i, in += depth, out += depth) {
    int32_t max_v = -128;
    for (int32_t c = 0; c < depth; ++c) max_v = in[c] > max_v ? in[c] : max_v;
    int32_t sum = 0; /* Q12.19 */
    for (int32_t c = 0; c < depth; ++c) {
      int32_t diff = in[c] - max_v;
      if (diff >= p->diff_min) {
        int32_t scaled = saturating_rounding_doubling_high_mul(diff * (1 << p->input_left_shift), p->input_multiplier);
        sum += rounding_divide_by_power_of_two(exp_on_negative_values(scaled), 12);
      }
    }
    int headroom = count_leading_zeros((uint32_t)sum);
    int bits_over_unit = 12 - headroom;
    int32_t shifted_sum_minus_one = (int32_t)(((uint32_t)sum << headroom) - (1u << 31));
    int32_t scale = one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one);
    for (int32_t c = 0; c < depth; ++c) {
      int32_t diff = in[c] - max_v;
      if (diff >= p->diff_min) {
        int32_t scaled = saturating_rounding_doubling_high_mul(diff * (1 << p->input_left_shift), p->input_multiplier);
        int32_t e = exp_on_negative_values(scaled);
        int32_t o = rounding_divide_by_power_of_two(saturating_rounding_doubling_high_mul(scale, e), bits_over_unit + 31 - 8) - 128;
        out[c] = (int8_t)clamp(o, -128, 127);
      } else {
        out[c] = -128;
      }
    }
  }
}

/* ---- L2_NORMALIZATION (TFLM reference_integer_ops::L2Normalization) ------------------------ */

/* GetInvSqrtQuantizedMultiplierExp (TFLM common.h) with reverse_shift = -1: 1 / sqrt(x) as a
 * multiplier and a TFLM shift (> 0: left), Newton-Raphson in gemmlowp Q3.28 fixed point. */
static void inv_sqrt_quantized_multiplier(int32_t x, int32_t *mult, int32_t *shift) {
  if (x <= 1) { /* 0 (no signal) and 1 as TFLM: the largest multiplier */
    *mult = INT32_MAX;
    *shift = 0;
    return;
  }
  int32_t right = 11;
  while (x >= (1 << 29)) {
    x /= 4;
    ++right;
  }
  const int32_t pairs = (count_leading_zeros((uint32_t)x) - 1) / 2 - 1;
  right -= pairs;
  x = (int32_t)((uint32_t)x << (2 * pairs)); /* now in [2^27, 2^29) */
  const int32_t half_input = rounding_divide_by_power_of_two(x >> 1, 1); /* Q3.28 */
  const int32_t half_three = (1 << 28) + (1 << 27);                      /* 1.5 in Q3.28 */
  int32_t r = 1 << 28;                                                   /* 1.0 in Q3.28 */
  for (int i = 0; i < 5; ++i) {
    /* x3 = Rescale<3>(r * r * r): Q6 * Q3 = Q9 raw, back to Q3 by a saturating << 6 */
    int32_t r3 = saturating_left_shift(saturating_rounding_doubling_high_mul(saturating_rounding_doubling_high_mul(r, r), r), 6);
    int32_t d = (int32_t)((uint32_t)saturating_rounding_doubling_high_mul(half_three, r) -
                          (uint32_t)saturating_rounding_doubling_high_mul(half_input, r3)); /* Q6 */
    r = saturating_left_shift(d, 3);
  }
  r = saturating_rounding_doubling_high_mul(r, 1518500250); /* * sqrt(2) / 2 (Q0.31) */
  if (right < 0) {
    r = (int32_t)((uint32_t)r << -right);
    right = 0;
  }
  *mult = r;
  *shift = -right;
}

TC_NOINLINE void tc_k_l2_normalization(int32_t outer, int32_t depth, int32_t in_zp, const int8_t *in, int8_t *out) {
  for (int32_t o = 0; o < outer; ++o, in += depth, out += depth) {
    int32_t acc = 0;
    for (int32_t c = 0; c < depth; ++c) acc += (in[c] - in_zp) * (in[c] - in_zp);
    int32_t mult, shift;
    inv_sqrt_quantized_multiplier(acc, &mult, &shift);
    for (int32_t c = 0; c < depth; ++c) /* output scale 1/128, zero point 0: shift + 7 */
      out[c] = (int8_t)clamp(multiply_by_quantized_multiplier(in[c] - in_zp, mult, shift + 7), -128, 127);
  }
}
