/* int8 kernels, bit-exact with TFLM's reference integer kernels (see tc_kernels.h). */
#include "tc_kernels.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* ---- gemmlowp / TFLM fixed-point primitives ---------------------------------------------- */

/* SaturatingRoundingDoublingHighMul: (a * b * 2) >> 32, rounded half away from zero. */
static inline int32_t srdhm(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C division truncates toward zero */
}

/* RoundingDivideByPOT: x / 2^e rounded half away from zero. */
static inline int32_t rdbpot(int32_t x, int32_t e) {
  int32_t mask = (int32_t)((1u << e) - 1u);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier (TFLM default, double rounding). */
static inline int32_t mbqm(int32_t x, int32_t mult, int32_t shift) {
  int32_t left = shift > 0 ? shift : 0;
  int32_t right = shift > 0 ? 0 : -shift;
  return rdbpot(srdhm((int32_t)((uint32_t)x << left), mult), right);
}

/* mbqm() for shift <= 0 (multiplier < 1) with fewer instructions, same result: SRDHM rounds
 * half away from zero for x * m >= 0 and half toward zero below, RDBPOT rounds half away from
 * zero on both sides, so both run on |x| (one UMULL) and the sign goes back on at the end.
 * e = -shift, half = e > 0 ? 1 << (e - 1) : 0; needs mult >= 0. */
static inline int32_t requant_rs(int32_t x, int32_t mult, int32_t e, uint32_t half) {
  uint32_t u = x < 0 ? 0u - (uint32_t)x : (uint32_t)x;
  uint32_t nudge = x < 0 ? (1u << 30) - 1u : (1u << 30);
  uint32_t v = (uint32_t)(((uint64_t)u * (uint32_t)mult + nudge) >> 31);
  uint32_t r = (v + half) >> e;
  return x < 0 ? -(int32_t)r : (int32_t)r;
}

static inline int32_t requant(int32_t x, int32_t mult, int32_t shift) {
  if (shift > 0 || mult < 0) return mbqm(x, mult, shift);
  return requant_rs(x, mult, -shift, shift < 0 ? 1u << (-shift - 1) : 0u);
}

static inline int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

#if defined(__ARM_FEATURE_SAT) && defined(__ARM_FEATURE_DSP)
#define TC_SAT8(v) ((int8_t)__ssat((v), 8))
#else
#define TC_SAT8(v) ((int8_t)clamp((v), -128, 127))
#endif

/* ---- FULLY_CONNECTED ---------------------------------------------------------------------- */

/* One fast row {bias_eff, mult, e, half}, e = -shift >= 0: requant_rs() written branch-free
 * (sign mask s: |x| = (x ^ s) - s), before the output zero point and clamp. */
static inline int32_t fc_rq_fast(int32_t acc, const int32_t *rq) {
  int32_t x = acc + rq[0];
  uint32_t sgn = (uint32_t)(x >> 31);
  uint32_t u = (x ^ sgn) - sgn;
  uint32_t v = (uint32_t)(((uint64_t)u * (uint32_t)rq[1] + ((1u << 30) + sgn)) >> 31);
  uint32_t q = (v + (uint32_t)rq[3]) >> rq[2];
  return (int32_t)((q ^ sgn) - sgn);
}

/* Requantise `count` accumulators of rows row0.. into out (rq: 4 ints per row). */
static void fc_store(const tc_fc_params *p, int32_t row0, int32_t count, const int32_t *acc, int8_t *out) {
  const int32_t *rq = p->rq + 4 * row0;
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
  out += row0;
  if (p->right_shifts && count == 4 && lo == -128 && hi == 127) { /* the common case, unrolled */
    out[0] = TC_SAT8(fc_rq_fast(acc[0], rq) + zp);
    out[1] = TC_SAT8(fc_rq_fast(acc[1], rq + 4) + zp);
    out[2] = TC_SAT8(fc_rq_fast(acc[2], rq + 8) + zp);
    out[3] = TC_SAT8(fc_rq_fast(acc[3], rq + 12) + zp);
  } else if (p->right_shifts) {
    for (int32_t r = 0; r < count; ++r, rq += 4) out[r] = (int8_t)clamp(fc_rq_fast(acc[r], rq) + zp, lo, hi);
  } else {
    for (int32_t r = 0; r < count; ++r, rq += 4) out[r] = (int8_t)clamp(mbqm(acc[r] + rq[0], rq[1], rq[2]) + zp, lo, hi);
  }
}

#if defined(__ARM_FEATURE_DSP) && defined(__thumb2__) && defined(__GNUC__)
#define TC_FC_DSP 1
/* Input expanded once per call into sign-extended halfword pairs: for k = 4j..4j+3,
 * xe[2j] = (x0, x2), xe[2j+1] = (x1, x3); each weight word needs the same two SXTB16s
 * (plain and ROR #8), so each SMLAD does 2 MACs. tc_fc_scratch (generated, sized for the
 * model's largest padded depth) holds it. */
static inline uint32_t sxtb16_ror8(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}

/* acc[0..3] = dot products of 4 pre-arranged weight rows with the expanded input, 16 inputs per
 * iteration: per 4 inputs one LDM of the input pair, one LDM of 4 weight words, 8 SXTB16 and
 * 8 SMLAD (16 MACs) — 18 instructions, plus 2 loop instructions per 64 MACs. */
void tc_k_fc_rows4(const uint32_t *w, const uint32_t *xe, int32_t iterations, int32_t *acc);
#define TC_FC_BLOCK                                                                            \
  "  ldmia r1!, {r8, r9}\n"                                                                    \
  "  ldmia r0!, {r10, r11, r12, lr}\n"                                                         \
  "  sxtb16 r3, r10\n  smlad r4, r3, r8, r4\n  sxtb16 r3, r10, ror #8\n  smlad r4, r3, r9, r4\n" \
  "  sxtb16 r3, r11\n  smlad r5, r3, r8, r5\n  sxtb16 r3, r11, ror #8\n  smlad r5, r3, r9, r5\n" \
  "  sxtb16 r3, r12\n  smlad r6, r3, r8, r6\n  sxtb16 r3, r12, ror #8\n  smlad r6, r3, r9, r6\n" \
  "  sxtb16 r3, lr\n  smlad r7, r3, r8, r7\n  sxtb16 r3, lr, ror #8\n  smlad r7, r3, r9, r7\n"
__asm__(
    "  .text\n"
    "  .syntax unified\n"
    "  .thumb\n"
    "  .global tc_k_fc_rows4\n"
    "  .type tc_k_fc_rows4, %function\n"
    "  .p2align 2\n"
    "  .thumb_func\n"
    "tc_k_fc_rows4:\n"
    "  push {r3-r11, lr}\n"
    "  movs r4, #0\n  movs r5, #0\n  movs r6, #0\n  movs r7, #0\n"
    "1:\n" TC_FC_BLOCK TC_FC_BLOCK TC_FC_BLOCK TC_FC_BLOCK
    "  subs r2, r2, #1\n"
    "  bne 1b\n"
    "  ldr r3, [sp]\n"
    "  stmia r3, {r4, r5, r6, r7}\n"
    "  pop {r3-r11, pc}\n"
    "  .size tc_k_fc_rows4, .-tc_k_fc_rows4\n");

/* The common case in one routine: `groups` groups of 4 rows, each the loop above followed by the
 * fast requantisation of fc_rq_fast() and SSAT to int8 (full int8 range) — no call or C loop per
 * group. st->rq and st->out advance past the rows done. */
typedef struct {
  const int32_t *rq;
  int8_t *out;
  int32_t zp, groups;
} tc_fc_state;
void tc_k_fc_groups(const uint32_t *w, const uint32_t *xe, int32_t iterations, tc_fc_state *st);
#define TC_FC_ROW(ACC)                                                                          \
  "  ldmia r1!, {r8, r9, r10, r11}\n" /* bias_eff, mult, e, half */                             \
  "  adds " ACC ", " ACC ", r8\n"                                                               \
  "  asrs r3, " ACC ", #31\n"                                                                   \
  "  eors " ACC ", " ACC ", r3\n"                                                               \
  "  subs " ACC ", " ACC ", r3\n"      /* |x| */                                                \
  "  add lr, r3, #0x40000000\n"        /* nudge: 2^30, or 2^30 - 1 below zero */                \
  "  movs r8, #0\n"                                                                             \
  "  umlal lr, r8, " ACC ", r9\n"                                                               \
  "  lsrs lr, lr, #31\n"                                                                        \
  "  orr lr, lr, r8, lsl #1\n"         /* SRDHM */                                              \
  "  add lr, lr, r11\n"                                                                         \
  "  lsr lr, lr, r10\n"                /* RDBPOT */                                             \
  "  eors lr, lr, r3\n"                                                                         \
  "  subs lr, lr, r3\n"                /* sign back */                                          \
  "  add lr, lr, r12\n"                                                                         \
  "  ssat lr, #8, lr\n"                                                                         \
  "  strb lr, [r2], #1\n"
__asm__(
    "  .text\n"
    "  .syntax unified\n"
    "  .thumb\n"
    "  .global tc_k_fc_groups\n"
    "  .type tc_k_fc_groups, %function\n"
    "  .p2align 2\n"
    "  .thumb_func\n"
    "tc_k_fc_groups:\n"
    "  push {r3-r11, lr}\n"
    "  sub sp, sp, #16\n"
    "  str r1, [sp, #0]\n"  /* xe */
    "  str r2, [sp, #4]\n"  /* iterations */
    "  ldr r3, [r3, #12]\n"
    "  str r3, [sp, #8]\n"  /* groups left */
    "2:\n"
    "  ldr r1, [sp, #0]\n"
    "  ldr r2, [sp, #4]\n"
    "  movs r4, #0\n  movs r5, #0\n  movs r6, #0\n  movs r7, #0\n"
    "1:\n" TC_FC_BLOCK TC_FC_BLOCK TC_FC_BLOCK TC_FC_BLOCK
    "  subs r2, r2, #1\n"
    "  bne 1b\n"
    "  ldr r3, [sp, #16]\n"
    "  ldm r3, {r1, r2, r12}\n" /* rq, out, zp */
    TC_FC_ROW("r4") TC_FC_ROW("r5") TC_FC_ROW("r6") TC_FC_ROW("r7")
    "  ldr r3, [sp, #16]\n"
    "  stm r3, {r1, r2}\n"
    "  ldr r3, [sp, #8]\n"
    "  subs r3, r3, #1\n"
    "  str r3, [sp, #8]\n"
    "  bne 2b\n"
    "  add sp, sp, #16\n"
    "  pop {r3-r11, pc}\n"
    "  .size tc_k_fc_groups, .-tc_k_fc_groups\n");
#endif

TC_NOINLINE void tc_k_fully_connected(const tc_fc_params *p, int32_t batches, const int8_t *in, int8_t *out) {
  const int32_t groups = (p->n + 3) / 4;
  for (int32_t b = 0; b < batches; ++b, in += p->k, out += p->n) {
#if defined(TC_FC_DSP)
    for (int32_t j = 0; j < p->k4; j += 4) {
      uint32_t x = 0;
      if (j + 4 <= p->k) {
        memcpy(&x, in + j, 4);
      } else if (j < p->k) { /* tail: zero-padded word */
        uint8_t tail[4] = {0, 0, 0, 0};
        memcpy(tail, in + j, (size_t)(p->k - j));
        memcpy(&x, tail, 4);
      }
      tc_fc_scratch[j / 2] = __sxtb16(x);
      tc_fc_scratch[j / 2 + 1] = sxtb16_ror8(x);
    }
    const uint32_t *w = (const uint32_t *)(const void *)p->weights;
    int32_t g = 0;
    if (p->right_shifts && p->act_min == -128 && p->act_max == 127 && p->n >= 4) {
      tc_fc_state st = {p->rq, out, p->out_zp, p->n / 4};
      tc_k_fc_groups(w, tc_fc_scratch, p->k4 / 16, &st);
      g = p->n / 4;
      w += g * p->k4;
    }
    for (; g < groups; ++g, w += p->k4) {
      int32_t acc[4];
      tc_k_fc_rows4(w, tc_fc_scratch, p->k4 / 16, acc);
      fc_store(p, 4 * g, 4 * g + 4 <= p->n ? 4 : p->n - 4 * g, acc, out);
    }
#else
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
      fc_store(p, 4 * g, 4 * g + 4 <= p->n ? 4 : p->n - 4 * g, acc, out);
    }
#endif
  }
}

/* ---- ADD / SUB / MUL ---------------------------------------------------------------------- */

static inline int8_t add_one(const tc_add_params *p, int8_t x, int8_t y) {
  int32_t a = requant((p->in1_offset + x) * (1 << 20), p->in1_mult, p->in1_shift);
  int32_t b = requant((p->in2_offset + y) * (1 << 20), p->in2_mult, p->in2_shift);
  int32_t raw = p->sign > 0 ? a + b : a - b;
  return (int8_t)clamp(requant(raw, p->out_mult, p->out_shift) + p->out_offset, p->act_min, p->act_max);
}

static inline int8_t mul_one(const tc_mul_params *p, int8_t x, int8_t y) {
  int32_t prod = (p->in1_offset + x) * (p->in2_offset + y);
  return (int8_t)clamp(p->out_offset + requant(prod, p->mult, p->shift), p->act_min, p->act_max);
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
      out[i] = (int8_t)clamp(mbqm(p->sign > 0 ? a + b : a - b, m, s) + zp, lo, hi);
    }
    return;
  }
  const int32_t e = -s;
  const uint32_t half = e > 0 ? 1u << (e - 1) : 0u;
  const int32_t *c1 = t1 + 128, *c2 = t2 + 128; /* indexed by the signed int8 value */
  if (p->sign > 0 && lo == -128 && hi == 127) {
    for (int32_t i = 0; i < count; ++i) out[i] = TC_SAT8(requant_rs(c1[x[i]] + c2[y[i]], m, e, half) + zp);
  } else if (p->sign > 0) {
    for (int32_t i = 0; i < count; ++i) out[i] = (int8_t)clamp(requant_rs(c1[x[i]] + c2[y[i]], m, e, half) + zp, lo, hi);
  } else {
    for (int32_t i = 0; i < count; ++i) out[i] = (int8_t)clamp(requant_rs(c1[x[i]] - c2[y[i]], m, e, half) + zp, lo, hi);
  }
}

TC_NOINLINE void tc_k_mul(const tc_mul_params *p, const tc_bcast *b, const int8_t *x, const int8_t *y, int8_t *out) {
  if (b->flat && p->shift <= 0 && p->mult >= 0) { /* parameters in locals: int8 stores may alias *p */
    const int32_t o1 = p->in1_offset, o2 = p->in2_offset, zp = p->out_offset, m = p->mult, e = -p->shift;
    const int32_t lo = p->act_min, hi = p->act_max, n = b->count;
    const uint32_t half = e > 0 ? 1u << (e - 1) : 0u;
    for (int32_t i = 0; i < n; ++i) out[i] = (int8_t)clamp(zp + requant_rs((o1 + x[i]) * (o2 + y[i]), m, e, half), lo, hi);
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
        *out++ = (int8_t)clamp(requant(acc, p->mult, p->shift) + p->out_offset, -128, 127);
      }
  }
}

TC_NOINLINE void tc_k_mean(const tc_mean_params *p, const int8_t *in, int8_t *out) {
  for (int32_t o = 0; o < p->outer; ++o)
    for (int32_t i = 0; i < p->inner; ++i) {
      int32_t sum = 0;
      for (int32_t a = 0; a < p->axis; ++a) sum += in[(o * p->axis + a) * p->inner + i];
      int32_t v = requant(sum - p->in_zp * p->axis, p->mult, p->shift) + p->out_zp;
      out[o * p->inner + i] = (int8_t)clamp(v, -128, 127);
    }
}

/* ---- SOFTMAX (gemmlowp fixed point, as TFLM's reference int8 softmax) --------------------- */

/* Saturating x * 2^e for e > 0. */
static inline int32_t sat_shl(int32_t x, int e) {
  int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
  if (x > threshold) return INT32_MAX;
  if (x < -threshold) return INT32_MIN;
  return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a in [-1/4, 0), Q0.31. */
static int32_t exp_quarter(int32_t a) {
  const int32_t constant_term = 1895147668, one_third = 715827883;
  int32_t x = a + (1 << 28);
  int32_t x2 = srdhm(x, x), x3 = srdhm(x2, x), x4 = srdhm(x2, x2);
  int32_t x4_over_4 = rdbpot(x4, 2);
  int32_t poly = rdbpot(srdhm(x4_over_4 + x3, one_third) + x2, 1);
  return constant_term + srdhm(constant_term, x + poly);
}

/* exp(a) for a <= 0 given in Q5.26, result Q0.31. */
static int32_t exp_negative(int32_t a) {
  const int32_t one_quarter = 1 << 24, mask = one_quarter - 1;
  int32_t a_mod_q = (a & mask) - one_quarter;
  int32_t result = exp_quarter(sat_shl(a_mod_q, 5));
  int32_t remainder = a_mod_q - a;
  static const int32_t mults[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  for (int i = 0; i < 7; ++i)
    if (remainder & (1 << (24 + i))) result = srdhm(result, mults[i]);
  return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 in and out (Newton-Raphson, 3 iterations). */
static int32_t one_over_one_plus_x(int32_t a) {
  int64_t sum = (int64_t)a + INT32_MAX;
  int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
  int32_t x = 1515870810 + srdhm(half_den, -1010580540); /* Q2.29 */
  for (int i = 0; i < 3; ++i) {
    int32_t hdx = srdhm(half_den, x);
    int32_t one_minus = (1 << 29) - hdx;
    x = x + sat_shl(srdhm(x, one_minus), 2);
  }
  return sat_shl(x, 1);
}

static int clz32(uint32_t x) {
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
        int32_t scaled = srdhm(diff * (1 << p->input_left_shift), p->input_multiplier);
        sum += rdbpot(exp_negative(scaled), 12);
      }
    }
    int headroom = clz32((uint32_t)sum);
    int bits_over_unit = 12 - headroom;
    int32_t shifted_sum_minus_one = (int32_t)(((uint32_t)sum << headroom) - (1u << 31));
    int32_t scale = one_over_one_plus_x(shifted_sum_minus_one);
    for (int32_t c = 0; c < depth; ++c) {
      int32_t diff = in[c] - max_v;
      if (diff >= p->diff_min) {
        int32_t scaled = srdhm(diff * (1 << p->input_left_shift), p->input_multiplier);
        int32_t e = exp_negative(scaled);
        int32_t o = rdbpot(srdhm(scale, e), bits_over_unit + 31 - 8) - 128;
        out[c] = (int8_t)clamp(o, -128, 127);
      } else {
        out[c] = -128;
      }
    }
  }
}
