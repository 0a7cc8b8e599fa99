/* Cortex-M fast paths (DSP extension: SXTB16, SMLAD, SSAT) for the kernels of tc_kernels.c, bit-exact
 * with them and with TFLM. Built for every target; without the DSP extension it compiles to nothing and
 * the portable kernels of tc_kernels.c are used. Where it is compiled in, its tc_k_fully_connected()
 * replaces the portable one (TC_REPLACEABLE), as TFLM's kernels/cmsis_nn replace kernels/reference. */
#include "tc_kernels.h"

#if defined(__ARM_FEATURE_DSP) && defined(__thumb2__) && defined(__GNUC__)

#include <arm_acle.h>
#include <string.h>

#include "tc_kernels_internal.h"

/* ---- FULLY_CONNECTED ---------------------------------------------------------------------- */

/* Input expanded once per call into sign-extended halfword pairs: for k = 4j..4j+3,
 * xe[2j] = (x0, x2), xe[2j+1] = (x1, x3); each weight word needs the same two SXTB16s
 * (plain and ROR #8), so each SMLAD does 2 MACs. The caller's scratch buffer
 * (k4 / 2 words; the generated code owns one sized for the model's largest padded depth) holds it. */
static inline uint32_t sxtb16_ror8(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}

/* acc[0..3] = dot products of 4 pre-arranged weight rows with the expanded input, 16 inputs per
 * iteration (r1 from xe to the end the caller computed), 4 blocks of 4 inputs: per block the 4 weight words
 * and the input pair by LDR (immediate offsets, no writeback), 8 SXTB16 and 8 SMLAD (16 MACs), ordered so that
 * the Cortex-M7 issues each SXTB16 beside a SMLAD and the loads in pairs (13 cycles a block in LLVM's model;
 * LDM never dual-issues). r2 and r3 hold the unpacked weights; r4-r7 the sums. */
#define TC_FC_BLOCK(B)                                                                         \
  "  ldr r10, [r0, #16*" #B "]\n"                                                              \
  "  ldr r11, [r0, #16*" #B "+4]\n"                                                            \
  "  ldr r8, [r1, #8*" #B "]\n"                                                                \
  "  ldr r9, [r1, #8*" #B "+4]\n"                                                              \
  "  sxtb16 r2, r10\n"                                                                         \
  "  ldr r12, [r0, #16*" #B "+8]\n"                                                            \
  "  sxtb16 r3, r10, ror #8\n"                                                                 \
  "  ldr lr, [r0, #16*" #B "+12]\n"                                                            \
  "  smlad r4, r2, r8, r4\n  sxtb16 r2, r11\n  smlad r4, r3, r9, r4\n  sxtb16 r3, r11, ror #8\n" \
  "  smlad r5, r2, r8, r5\n  sxtb16 r2, r12\n  smlad r5, r3, r9, r5\n  sxtb16 r3, r12, ror #8\n" \
  "  smlad r6, r2, r8, r6\n  sxtb16 r2, lr\n  smlad r6, r3, r9, r6\n  sxtb16 r3, lr, ror #8\n"   \
  "  smlad r7, r2, r8, r7\n  smlad r7, r3, r9, r7\n"
/* The loop over the input (END_: where the end of the expanded input is kept), from zeroed sums. */
#define TC_FC_LOOP(END_)                                                                       \
  "  movs r4, #0\n  movs r5, #0\n  movs r6, #0\n  movs r7, #0\n"                               \
  "1:\n" TC_FC_BLOCK(0) TC_FC_BLOCK(1) TC_FC_BLOCK(2) TC_FC_BLOCK(3)                           \
  "  ldr r2, " END_ "\n"                                                                       \
  "  adds r0, r0, #64\n"                                                                       \
  "  adds r1, r1, #32\n"                                                                       \
  "  cmp r1, r2\n"                                                                             \
  "  bne 1b\n"
void tc_k_fully_connected_rows4(const uint32_t *w, const uint32_t *xe, int32_t iterations, int32_t *acc);
__asm__(
    "  .text\n"
    "  .syntax unified\n"
    "  .thumb\n"
    "  .global tc_k_fully_connected_rows4\n"
    "  .type tc_k_fully_connected_rows4, %function\n"
    "  .p2align 2\n"
    "  .thumb_func\n"
    "tc_k_fully_connected_rows4:\n"
    "  push {r3-r11, lr}\n"
    "  sub sp, sp, #8\n"
    "  add r2, r1, r2, lsl #5\n"
    "  str r2, [sp, #0]\n"  /* the end of xe */
    TC_FC_LOOP("[sp, #0]")
    "  ldr r3, [sp, #8]\n"  /* acc */
    "  stmia r3, {r4, r5, r6, r7}\n"
    "  add sp, sp, #8\n"
    "  pop {r3-r11, pc}\n"
    "  .size tc_k_fully_connected_rows4, .-tc_k_fully_connected_rows4\n");

/* The common case in one routine: `groups` groups of 4 rows, each the loop above followed by the
 * fast requantisation of fully_connected_requantize_fast() and SSAT to int8 (full int8 range) — no
 * call or C loop per group. st->rq and st->out advance past the rows done. */
typedef struct {
  const int32_t *rq;
  int8_t *out;
  int32_t zp, groups;
} tc_fc_state;
void tc_k_fully_connected_groups(const uint32_t *w, const uint32_t *xe, int32_t iterations, tc_fc_state *st);
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
    "  .global tc_k_fully_connected_groups\n"
    "  .type tc_k_fully_connected_groups, %function\n"
    "  .p2align 2\n"
    "  .thumb_func\n"
    "tc_k_fully_connected_groups:\n"
    "  push {r3-r11, lr}\n"
    "  sub sp, sp, #16\n"
    "  str r1, [sp, #0]\n"  /* xe */
    "  add r2, r1, r2, lsl #5\n"
    "  str r2, [sp, #4]\n"  /* the end of xe */
    "  ldr r3, [r3, #12]\n"
    "  str r3, [sp, #8]\n"  /* groups left */
    "2:\n"
    "  ldr r1, [sp, #0]\n"
    TC_FC_LOOP("[sp, #4]")
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
    "  .size tc_k_fully_connected_groups, .-tc_k_fully_connected_groups\n");

TC_NOINLINE void tc_k_fully_connected(const tc_fc_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                      uint32_t *scratch) {
  const int32_t groups = (p->n + 3) / 4;
  for (int32_t b = 0; b < batches; ++b, in += p->k, out += p->n) {
    for (int32_t j = 0; j < p->k4; j += 4) {
      uint32_t x = 0;
      if (j + 4 <= p->k) {
        memcpy(&x, in + j, 4);
      } else if (j < p->k) { /* tail: zero-padded word */
        uint8_t tail[4] = {0, 0, 0, 0};
        memcpy(tail, in + j, (size_t)(p->k - j));
        memcpy(&x, tail, 4);
      }
      scratch[j / 2] = __sxtb16(x);
      scratch[j / 2 + 1] = sxtb16_ror8(x);
    }
    const uint32_t *w = (const uint32_t *)(const void *)p->weights;
    int32_t g = 0;
    if (p->right_shifts && p->act_min == -128 && p->act_max == 127 && p->n >= 4) {
      tc_fc_state st = {p->rq, out, p->out_zp, p->n / 4};
      tc_k_fully_connected_groups(w, scratch, p->k4 / 16, &st);
      g = p->n / 4;
      w += g * p->k4;
    }
    for (; g < groups; ++g, w += p->k4) {
      int32_t acc[4];
      tc_k_fully_connected_rows4(w, scratch, p->k4 / 16, acc);
      tc_fully_connected_store_rows(p, 4 * g, 4 * g + 4 <= p->n ? 4 : p->n - 4 * g, acc, out);
    }
  }
}

#else
typedef int tc_kernels_cortexm_empty; /* ISO C: a translation unit holds at least one declaration */
#endif
