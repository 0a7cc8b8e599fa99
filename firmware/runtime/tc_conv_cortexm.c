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

/* n bytes 4 at a time (unaligned LDR / STR), then the rest one at a time. */
static inline void copy_bytes(int8_t *dst, const int8_t *src, int32_t n) {
  int32_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint32_t v = load_u32(src + i);
    memcpy(dst + i, &v, 4);
  }
  for (; i < n; ++i) dst[i] = src[i];
}

/* The receptive fields of 2 output pixels ("columns" j = 0, 1) of a pair as int16 (input + in_offset;
 * 0 where padded, which is exactly TFLM's "skip the taps outside the image"; 0 past k up to k4, k
 * rounded up to 4), interleaved for the SMLAD loop: for each group of 4 taps g, 4 words
 * cols[4g..4g+3] = column 0 (x0, x2), (x1, x3), column 1 (x0, x2), (x1, x3) -- the halfword pairs
 * SXTB16 gives of a word (plain and ROR #8); the weights are laid out the same way (unpack_weights). */
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

/* A 1x1 stride-1 unpadded conv (in_c % 4 == 0): the columns of `pairs` pixel pairs straight from the input
 * pixels from `in` on (`pixels` of them left; an odd last one pairs with itself), im2col_by4's words without
 * the window arithmetic. */
static void im2col_pointwise(const tc_conv_params *p, const int8_t *in, int32_t pairs, int32_t pixels,
                             uint32_t *cols) {
  const uint32_t off2 = ((uint32_t)p->in_offset & 0xffffu) * 0x10001u;
  const int32_t in_c = p->in_c;
  for (int32_t q = 0; q < pairs; ++q, in += 2 * in_c, pixels -= 2) {
    const int8_t *b = pixels > 1 ? in + in_c : in;
    for (int32_t c = 0; c < in_c; c += 4, cols += 4) {
      const uint32_t va = load_u32(in + c), vb = load_u32(b + c);
      cols[0] = __sadd16(__sxtb16(va), off2);
      cols[1] = __sadd16(sxtb16_ror8(va), off2);
      cols[2] = __sadd16(__sxtb16(vb), off2);
      cols[3] = __sadd16(sxtb16_ror8(vb), off2);
    }
  }
}

/* Any in_c: the receptive field's k bytes in order into `plain` (k4 bytes: the input zero point where
 * padded and past k, which the input offset turns into 0), a kernel row at a time (k_w * in_c bytes in a
 * row of the image), then widened a word at a time as in im2col_by4. */
static void im2col_any(const tc_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t j, uint32_t *cols,
                       int8_t *plain) {
  const int32_t y0 = oy * p->stride_h - p->pad_h, x0 = ox * p->stride_w - p->pad_w, in_c = p->in_c;
  const int32_t row = p->k_w * in_c, k = p->k_h * row, groups = (k + 3) >> 2;
  const int8_t zero_point = (int8_t)-p->in_offset;
  const int whole_rows = x0 >= 0 && x0 + p->k_w <= p->in_w;
  int8_t *dst = plain;
  ((uint32_t *)plain)[groups - 1] = (uint8_t)zero_point * 0x01010101u; /* the zero points past k (the rows overwrite
                                                                          the rest of the last word) */
  for (int32_t ky = 0; ky < p->k_h; ++ky, dst += row) {
    const int32_t y = y0 + ky;
    if (y < 0 || y >= p->in_h) {
      memset(dst, zero_point, (size_t)row);
    } else if (whole_rows) {
      const int8_t *src = in + (y * p->in_w + x0) * in_c;
      if (row == 9) { /* a 3x3 stem over RGB: 2 words and a byte */
        const uint32_t a = load_u32(src), b = load_u32(src + 4);
        memcpy(dst, &a, 4), memcpy(dst + 4, &b, 4), dst[8] = src[8];
      } else {
        copy_bytes(dst, src, row);
      }
    } else {
      for (int32_t kx = 0; kx < p->k_w; ++kx) {
        const int8_t *src = pixel_tap(p, in, y, x0 + kx);
        for (int32_t c = 0; c < in_c; ++c) dst[kx * in_c + c] = src ? src[c] : zero_point;
      }
    }
  }
  const uint32_t off2 = ((uint32_t)p->in_offset & 0xffffu) * 0x10001u;
  uint32_t *d = cols + 2 * j;
  for (int32_t g = 0; g < groups; ++g, d += 4) {
    const uint32_t v = load_u32(plain + 4 * g);
    d[0] = __sadd16(__sxtb16(v), off2);
    d[1] = __sadd16(sxtb16_ror8(v), off2);
  }
}

/* The weight rows of output channels c0 and c1 (k int8 each, OHWI) as int16 in the columns' order:
 * per group of 4 taps, c0 (w0, w2), (w1, w3), c1 (w0, w2), (w1, w3); 0 past k. With `twice` every
 * weight is doubled (|2 w| <= 256 fits; SADD16 doubles each half alone), so the dot products come out
 * as 2 x, the operand SMMULR wants (requantise_channel). */
static inline __attribute__((always_inline)) void unpack_word(uint32_t v, uint32_t *dst, const int twice) {
  const uint32_t lo = __sxtb16(v), hi = sxtb16_ror8(v);
  dst[0] = twice ? (uint32_t)__sadd16(lo, lo) : lo;
  dst[1] = twice ? (uint32_t)__sadd16(hi, hi) : hi;
}

static inline __attribute__((always_inline)) void unpack_weights(const int8_t *w0, const int8_t *w1, int32_t k,
                                                                 uint32_t *dst, const int twice) {
  const int32_t full = k >> 2;
  for (int32_t g = 0; g < full; ++g, w0 += 4, w1 += 4, dst += 4) {
    unpack_word(load_u32(w0), dst, twice);
    unpack_word(load_u32(w1), dst + 2, twice);
  }
  if (k & 3) {
    int8_t ta[4] = {0, 0, 0, 0}, tb[4] = {0, 0, 0, 0};
    memcpy(ta, w0, (size_t)(k & 3)), memcpy(tb, w1, (size_t)(k & 3));
    unpack_word(load_u32(ta), dst, twice);
    unpack_word(load_u32(tb), dst + 2, twice);
  }
}

/* An assembly function's head and tail: its own section (--gc-sections drops it unused), Thumb. */
#define TC_ASM_FUNCTION(NAME_) \
    "  .section .text." NAME_ ", \"ax\", %progbits\n" \
    "  .syntax unified\n" \
    "  .thumb\n" \
    "  .global " NAME_ "\n" \
    "  .type " NAME_ ", %function\n" \
    "  .p2align 2\n" \
    "  .thumb_func\n" \
    NAME_ ":\n"
#define TC_ASM_END(NAME_) \
    "  .size " NAME_ ", . - " NAME_ "\n" \
    "  .text\n"

/* Group I (0..7) of the 8 in the pair kernels' unrolled loop (TC_PAIRS_PROLOGUE): 4 taps, 8 SMLAD (16 MACs) into
 * (pixel, channel) 00 r3, 01 r4, 10 r5, 11 r6 from the channel pair's 4 weight words w0..w3 (r7-r10: channel 0
 * taps (0, 2), (1, 3), channel 1 likewise) and the pixel pair's 4 column words c0..c3 (r2, r11: pixel 0; r12, lr:
 * pixel 1), software-pipelined: each SMLAD is preceded by an LDR (immediate offset, no writeback), which the
 * Cortex-M7 issues with it in one cycle. A group loads its own w3 and c3 first, then, as the registers free up,
 * w0..w2, c0..c2 of the next group (offset 16 on; after the last group the loop has moved r0 and r1 on by 128,
 * and after the last pass they read up to 12 bytes past the weights and the columns: scratch, never used).
 * 64 bytes of code (every instruction 32-bit), so the kernels can enter the loop at any group. */
#define TC_PAIRS_GROUP(I) \
    "  ldr.w r10, [r0, #16*" #I "+12]\n" \
    "  smlad r3, r7, r2, r3\n" \
    "  ldr.w lr, [r1, #16*" #I "+12]\n" \
    "  smlad r4, r9, r2, r4\n" \
    "  ldr.w r2, [r1, #16*" #I "+16]\n" \
    "  smlad r5, r7, r12, r5\n" \
    "  ldr.w r7, [r0, #16*" #I "+16]\n" \
    "  smlad r6, r9, r12, r6\n" \
    "  ldr.w r9, [r0, #16*" #I "+24]\n" \
    "  smlad r3, r8, r11, r3\n" \
    "  ldr.w r12, [r1, #16*" #I "+24]\n" \
    "  smlad r4, r10, r11, r4\n" \
    "  ldr.w r11, [r1, #16*" #I "+20]\n" \
    "  smlad r5, r8, lr, r5\n" \
    "  ldr.w r8, [r0, #16*" #I "+20]\n" \
    "  smlad r6, r10, lr, r6\n"

/* The head of a pixel pair (r1 at its columns): the bias into the accumulators r3-r6 and the first group's
 * w0..w2, c0..c2 (see TC_PAIRS_GROUP). */
#define TC_PAIRS_HEAD \
    "  ldr r0, [sp, #4]\n" \
    "  ldr r3, [sp, #16]\n" \
    "  ldr r4, [sp, #20]\n" \
    "  ldr.w r2, [r1]\n" \
    "  ldr.w r7, [r0]\n" \
    "  ldr.w r9, [r0, #8]\n" \
    "  ldr.w r12, [r1, #8]\n" \
    "  ldr.w r11, [r1, #4]\n" \
    "  ldr.w r8, [r0, #4]\n" \
    "  ldr r5, [sp, #16]\n" \
    "  ldr r6, [sp, #20]\n"

/* Into the group loop at group e: r0 and r1 moved back 16 e bytes. */
#define TC_PAIRS_ENTER \
    "  ldr r10, [sp, #60]\n" \
    "  subs r0, r0, r10\n" \
    "  subs r1, r1, r10\n" \
    "  ldr r10, [sp, #8]\n" \
    "  bx r10\n"

/* The body both pair kernels share, up to the end of a pixel pair's dot products (accumulators r3-r6):
 * r0 the channel pair's unpacked weights (wp: k4 words, unpack_weights), r1 the pixel pairs' columns
 * (k4 words each, im2col order), r2 `groups` = k4 / 4 (>= 1), r3 `pairs`; the 5th argument (at [sp, #100]
 * once inside) points at `PRM_WORDS_` words: the two channels' starting accumulators (the bias) first, copied to
 * the frame at [16]; the 6th (at [104]) is copied to [56]. The group loop is unrolled 8 times and entered at
 * group e = (-groups) mod 8 with r0 and r1 moved back 16 e bytes, so that group e reads the first taps; the
 * first group's w0..w2, c0..c2 are loaded before the jump. The loop ends when the weight pointer reaches the
 * end of the weights; r1 is then at the next pair's columns. No counter register is left: the kernel stops when
 * r1 reaches the end of the columns ([0]). NAME_ is the function. */
#define TC_PAIRS_PROLOGUE(NAME_, PRM_WORDS_) \
    TC_ASM_FUNCTION(NAME_) \
    "  push {r4-r11, lr}\n" \
    "  sub sp, sp, #64\n"            /* [0] columns end, [4] wp, [8] entry, [12] wp end, [16] the 5th argument's */ \
    "  str r0, [sp, #4]\n"           /* words, [56] the 6th argument, [60] 16 e */ \
    "  add r12, r0, r2, lsl #4\n" \
    "  str r12, [sp, #12]\n" \
    "  mul r12, r2, r3\n" \
    "  add r12, r1, r12, lsl #4\n" \
    "  str r12, [sp, #0]\n" \
    "  rsbs r12, r2, #0\n" \
    "  and r12, r12, #7\n"           /* e, the group to enter at */ \
    "  lsl r3, r12, #4\n" \
    "  str r3, [sp, #60]\n" \
    "  adr.w r3, 3f\n" \
    "  add r12, r3, r12, lsl #6\n"   /* 64 bytes a group */ \
    "  orr r12, r12, #1\n"           /* Thumb state */ \
    "  str r12, [sp, #8]\n" \
    "  ldr r12, [sp, #100]\n"        /* the 5th argument, above the 64 bytes and 9 saved registers */ \
    "  ldm r12, {r2-r" PRM_WORDS_ "}\n" \
    "  add r12, sp, #16\n" \
    "  stm r12, {r2-r" PRM_WORDS_ "}\n" \
    "  ldr r12, [sp, #104]\n" \
    "  str r12, [sp, #56]\n" \
    TC_PAIRS_HEAD \
    TC_PAIRS_ENTER \
    "  .p2align 2\n" \
    "3:\n" \
    TC_PAIRS_GROUP(0) TC_PAIRS_GROUP(1) TC_PAIRS_GROUP(2) TC_PAIRS_GROUP(3) \
    TC_PAIRS_GROUP(4) TC_PAIRS_GROUP(5) TC_PAIRS_GROUP(6) TC_PAIRS_GROUP(7) \
    "  ldr r10, [sp, #12]\n" \
    "  adds r0, r0, #128\n" \
    "  adds r1, r1, #128\n" \
    "  cmp r0, r10\n" \
    "  bne 3b\n"

/* After a kernel's tail has loaded the next pair's head (TC_PAIRS_HEAD) and the columns' end into lr: the next
 * pair, or the return. */
#define TC_PAIRS_EPILOGUE(NAME_) \
    "  cmp r1, lr\n" \
    "  beq 9f\n" \
    TC_PAIRS_ENTER \
    "9:\n" \
    "  add sp, sp, #64\n" \
    "  pop {r4-r11, pc}\n" \
    TC_ASM_END(NAME_)

/* For each of `pairs` pixel pairs the dot products with one channel pair's weights plus bias2[0] /
 * bias2[1] (TC_PAIRS_PROLOGUE); acc: 4 int32 per pixel pair, (pixel, channel) 00, 01, 10, 11. */
void tc_k_conv2d_pairs(const uint32_t *wp, const uint32_t *cols, int32_t groups, int32_t pairs, const int32_t *bias2,
                       int32_t *acc);
__asm__(
    TC_PAIRS_PROLOGUE("tc_k_conv2d_pairs", "3")
    "  ldr r12, [sp, #56]\n"         /* acc */
    "  stmia r12!, {r3-r6}\n"
    "  str r12, [sp, #56]\n"
    TC_PAIRS_HEAD
    "  ldr lr, [sp, #0]\n"
    TC_PAIRS_EPILOGUE("tc_k_conv2d_pairs"));

/* tc_k_conv2d_pairs with the fast requantisation (rq_words) of the 4 results in registers and their
 * bytes stored: prm = {2 bias0, 2 bias1, mult0, half0, unit0, mult1, half1, unit1, out_c, out_offset}
 * (TC_CONV2D_PAIR_WORDS); out: the first pair's (pixel 0, channel 0) byte; channel 1 follows it, the pair's pixel 1 is
 * out_c bytes on, the next pair 2 out_c. For channel pairs and pixel pairs without duplicates (out_c and the
 * pixel count even). Ordered for the Cortex-M7's dual issue: 8 multiplies (SMMLAR, SMMLA) beside the 8 shifter
 * ops (ADD ASR, SSAT), the loads and the stores. */
void tc_k_conv2d_pairs_requant(const uint32_t *wp, const uint32_t *cols, int32_t groups, int32_t pairs,
                               const int32_t *prm, int8_t *out);
__asm__(
    TC_PAIRS_PROLOGUE("tc_k_conv2d_pairs_requant", "11")
    "  ldr r0, [sp, #24]\n"          /* mult0 */
    "  ldr r2, [sp, #28]\n"          /* half0 */
    "  ldr r8, [sp, #36]\n"          /* mult1 */
    "  ldr r9, [sp, #40]\n"          /* half1 */
    "  smmlar r12, r3, r0, r2\n"     /* (pixel, channel) 00 */
    "  ldr r7, [sp, #32]\n"          /* unit0 */
    "  smmlar lr, r5, r0, r2\n"      /* 10 */
    "  ldr r10, [sp, #44]\n"         /* unit1 */
    "  smmlar r0, r4, r8, r9\n"      /* 01 */
    "  add r12, r12, r3, asr #31\n"
    "  smmlar r2, r6, r8, r9\n"      /* 11 */
    "  add lr, lr, r5, asr #31\n"
    "  ldr r11, [sp, #52]\n"         /* out_offset */
    "  add r0, r0, r4, asr #31\n"
    "  smmla r3, r12, r7, r11\n"
    "  add r2, r2, r6, asr #31\n"
    "  smmla r5, lr, r7, r11\n"
    "  ldr lr, [sp, #56]\n"          /* out */
    "  smmla r4, r0, r10, r11\n"
    "  ldr r0, [sp, #4]\n"           /* the next pair's head (TC_PAIRS_HEAD) beside the stores */
    "  smmla r6, r2, r10, r11\n"
    "  ldr r10, [sp, #48]\n"         /* out_c */
    "  ssat r3, #8, r3\n"
    "  ldr.w r2, [r1]\n"
    "  ssat r4, #8, r4\n"
    "  strb r3, [lr]\n"
    "  ssat r5, #8, r5\n"
    "  strb r4, [lr, #1]\n"
    "  ssat r6, #8, r6\n"
    "  strb r5, [lr, r10]\n"
    "  add lr, lr, r10\n"
    "  ldr.w r7, [r0]\n"
    "  strb r6, [lr, #1]\n"
    "  ldr.w r9, [r0, #8]\n"
    "  add lr, lr, r10\n"
    "  ldr.w r12, [r1, #8]\n"
    "  str lr, [sp, #56]\n"
    "  ldr r10, [sp, #60]\n"         /* and TC_PAIRS_ENTER's moves before the test (SUB keeps the flags) */
    "  ldr.w r11, [r1, #4]\n"
    "  ldr.w r8, [r0, #4]\n"
    "  ldr r3, [sp, #16]\n"
    "  ldr r4, [sp, #20]\n"
    "  ldr lr, [sp, #0]\n"
    "  ldr r5, [sp, #16]\n"
    "  sub r0, r0, r10\n"
    "  ldr r6, [sp, #20]\n"
    "  cmp r1, lr\n"
    "  sub r1, r1, r10\n"
    "  ldr r10, [sp, #8]\n"
    "  beq 9f\n"
    "  bx r10\n"
    "9:\n"
    "  add sp, sp, #64\n"
    "  pop {r4-r11, pc}\n"
    TC_ASM_END("tc_k_conv2d_pairs_requant"));

/* The assembly kernels' fast requantisation of a doubled accumulator a = 2 acc (the weights were doubled), for
 * |acc| < 2^30, mult >= 0 and a right shift s in 2..22 (requant_fast), 2 multiplies and 2 shifter ops:
 *   t = SMMLAR(a, mult, half) + (a >> 31)      half = 2^(s - 1)
 *   out = SSAT(SMMLA(t, unit, out_offset), 8)  unit = 2^(32 - s)
 * SMMLAR gives half + SMMULR(a, mult) = half + v, v = SaturatingRoundingDoublingHighMul(acc, mult) (see
 * requantize_small_of_doubled); + (a >> 31) is RoundingDivideByPOT's - (v < 0): a and v have the same sign
 * except where v = 0, and there floor((half - 1) / 2^s) = floor(half / 2^s) = 0. SMMLA adds the high word of
 * t 2^(32 - s), floor(t / 2^s) exactly, to the output offset: no shift by a register, and the Cortex-M7's
 * one shifter, which ADD ASR and SSAT need too, is free for them. Writes {mult, half, unit} of channel c. */
#define TC_CONV2D_PAIR_WORDS 10 /* a channel pair's {2 bias0, 2 bias1, rq_words x 2, out_c, out_offset} */
#define TC_DW3_CHANNEL_WORDS 10 /* a depthwise channel's {W01, W12 x 3 kernel rows, bias, rq_words} */

static inline void rq_words(const tc_conv_params *p, int32_t c, int32_t *dst) {
  const int32_t right_shift = -p->shift[c];
  dst[0] = p->mult[c], dst[1] = 1 << (right_shift - 1), dst[2] = (int32_t)(1u << (32 - right_shift));
}

/* The requantisation of an op's outputs, read once from its parameters: per output channel TFLM's
 * MultiplyByQuantizedMultiplier, the output offset and the fused clamp. `fast` ops (requant_fast())
 * take requantize_small() (5 instructions) and SSAT instead of the general routine and the clamp. */
typedef struct {
  const int32_t *mult, *shift;
  int32_t out_offset, act_min, act_max;
} requant_params;

/* 1 when every output of the op can take the fast route: every accumulator stays below 2^30 in
 * magnitude (k products of a weight and an offset input, |w| <= 128, |x + in_offset| <= 255, plus the
 * bias), every channel's shift is in -22..-2 (TC_FAST_MAX_RIGHT_SHIFT, rq_words) with a multiplier >= 0, and the fused activation clamps to the
 * whole int8 range (the usual case: a ReLU's output zero point is -128). Inlined, so its instructions
 * count under the kernel's own symbol in metrics/m7.json. */
static inline __attribute__((always_inline)) int requant_fast(const tc_conv_params *p, int32_t k, int32_t channels) {
  int64_t bias = 0;
  int fast = p->act_min == -128 && p->act_max == 127;
  for (int32_t c = 0; c < channels; ++c) {
    const int64_t b = p->bias ? (p->bias[c] < 0 ? -(int64_t)p->bias[c] : p->bias[c]) : 0;
    bias = b > bias ? b : bias;
    fast &= p->shift[c] <= -2 && p->shift[c] >= -TC_FAST_MAX_RIGHT_SHIFT && p->mult[c] >= 0;
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

/* Requantise one output channel of a chunk of pixel pairs: acc[4 q + a] (a: its place in the
 * (pixel, channel) quadruple) -> out0[q * step] and, for the pair's second pixel, out1[q * step]. The
 * channel's parameters are read once. The fast route takes 2 x acc (the weights were doubled:
 * unpack_weights) and adds the output offset before the shift, (off << right_shift) with the
 * rounding half: floor((a + off 2^s) / 2^s) = floor(a / 2^s) + off, so SSAT is the only step after it.
 * Both pixels' accumulators are read before either byte is stored (a byte store may alias them). */
static inline __attribute__((always_inline)) void requantise_channel(const requant_params *r, int32_t c, const int32_t *acc,
                                                                     int32_t pairs, int8_t *out0, int8_t *out1,
                                                                     int32_t step, const int fast) {
  if (fast) {
    const int32_t mult = r->mult[c], right_shift = -r->shift[c], half_off = half_and_offset(right_shift, r->out_offset);
    for (int32_t q = 0; q < pairs; ++q, acc += 4, out0 += step, out1 += step) {
      const int32_t a0 = acc[0], a1 = acc[2];
      out0[0] = (int8_t)__ssat(requantize_small_of_doubled(a0, mult, right_shift, half_off), 8);
      out1[0] = (int8_t)__ssat(requantize_small_of_doubled(a1, mult, right_shift, half_off), 8);
    }
  } else {
    for (int32_t q = 0; q < pairs; ++q, acc += 4, out0 += step, out1 += step) {
      const int32_t a0 = acc[0], a1 = acc[2];
      out0[0] = (int8_t)clamp(requantize(a0, r->mult[c], r->shift[c]) + r->out_offset, r->act_min, r->act_max);
      out1[0] = (int8_t)clamp(requantize(a1, r->mult[c], r->shift[c]) + r->out_offset, r->act_min, r->act_max);
    }
  }
}

/* tc_k_conv2d_dsp's body, specialised by `fast` (requant_fast()): the output pixels in chunks of up to
 * TC_CONV2D_CHUNK_PAIRS pairs; per chunk every pair's receptive fields into int16 columns once, then per
 * output channel pair its weights unpacked once and tc_k_conv2d_pairs over the whole chunk, then the
 * requantisation. An odd last pixel is paired with itself (its duplicate lands on the same bytes, last,
 * with the same value); an odd last channel likewise. */
static inline __attribute__((always_inline)) void conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in,
                                                             int8_t *out, void *scratch, const int fast) {
  const requant_params r = {p->mult, p->shift, p->out_offset, p->act_min, p->act_max};
  const int32_t k = p->k_h * p->k_w * p->in_c, k4 = (k + 3) & ~3, out_c = p->out_c;
  const int32_t pixels = p->out_h * p->out_w, out_w = p->out_w, all_pairs = (pixels + 1) >> 1;
  const int32_t in_image = p->in_h * p->in_w * p->in_c;
  const int32_t chunk = all_pairs < TC_CONV2D_CHUNK_PAIRS ? all_pairs : TC_CONV2D_CHUNK_PAIRS;
  uint32_t *cols = (uint32_t *)scratch;        /* chunk * k4 words */
  uint32_t *wp = cols + (size_t)chunk * k4;    /* k4 words */
  int32_t *accs = (int32_t *)(wp + k4);        /* 4 * chunk words */
  int8_t *plain = (int8_t *)(accs + 4 * chunk); /* k4 bytes (im2col_any only) */
  const int by4 = p->in_c % 4 == 0, even = out_c % 2 == 0 && pixels % 2 == 0; /* no duplicated channel or pixel */
  const int pointwise = by4 && p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_h == 0 &&
                        p->pad_w == 0 && p->in_h == p->out_h && p->in_w == p->out_w; /* output pixel i reads input pixel i */
  const int32_t twice = fast ? 2 : 1; /* the fast requantisation takes 2 x the accumulator */
  const int32_t *packed = fast ? p->packed : NULL;
  for (int32_t b = 0; b < batches; ++b, in += in_image, out += (size_t)pixels * out_c) {
    for (int32_t q0 = 0; q0 < all_pairs; q0 += chunk) {
      const int32_t pairs = all_pairs - q0 < chunk ? all_pairs - q0 : chunk;
      if (pointwise) im2col_pointwise(p, in + (size_t)(2 * q0) * p->in_c, pairs, pixels - 2 * q0, cols);
      for (int32_t q = 0; q < pairs && !pointwise; ++q) {
        const int32_t px = 2 * (q0 + q), px1 = px + 1 < pixels ? px + 1 : px;
        uint32_t *c = cols + (size_t)q * k4;
        if (by4) {
          im2col_by4(p, in, px / out_w, px % out_w, 0, c);
          im2col_by4(p, in, px1 / out_w, px1 % out_w, 1, c);
        } else {
          im2col_any(p, in, px / out_w, px % out_w, 0, c, plain);
          im2col_any(p, in, px1 / out_w, px1 % out_w, 1, c, plain);
        }
      }
      /* the pixels of this chunk: 2 q0 .. ; the last pair's second pixel may be its first again */
      const int32_t last1 = 2 * (q0 + pairs) - 1 < pixels ? 2 * (q0 + pairs) - 1 : pixels - 1;
      int8_t *out0 = out + (size_t)(2 * q0) * out_c, *out1 = out0 + out_c;
      for (int32_t oc = 0; oc < out_c; oc += 2) {
        const int32_t oc1 = oc + 1 < out_c ? oc + 1 : oc;
        /* {2 bias, requantisation, out_c, out_offset} and the unpacked weights: built at build time (packed,
           tc_conv_params) or here */
        int32_t words[TC_CONV2D_PAIR_WORDS];
        const int32_t *prm = words;
        const uint32_t *w = wp;
        if (packed) {
          prm = packed + (size_t)(oc / 2) * (TC_CONV2D_PAIR_WORDS + k4);
          w = (const uint32_t *)(prm + TC_CONV2D_PAIR_WORDS);
        } else {
          words[0] = p->bias ? twice * p->bias[oc] : 0, words[1] = p->bias ? twice * p->bias[oc1] : 0;
          if (fast) rq_words(p, oc, words + 2), rq_words(p, oc1, words + 5), words[8] = out_c, words[9] = p->out_offset;
          unpack_weights(p->weights + (size_t)oc * k, p->weights + (size_t)oc1 * k, k, wp, fast);
        }
        if (fast && even) { /* the requantisation in the assembly loop */
          tc_k_conv2d_pairs_requant(w, cols, k4 >> 2, pairs, prm, out0 + oc);
          continue;
        }
        tc_k_conv2d_pairs(w, cols, k4 >> 2, pairs, prm, accs);
        /* every pair but the last, then the last with its own second pixel */
        requantise_channel(&r, oc, accs, pairs - 1, out0 + oc, out1 + oc, 2 * out_c, fast);
        requantise_channel(&r, oc1, accs + 1, pairs - 1, out0 + oc1, out1 + oc1, 2 * out_c, fast);
        const int32_t *a = accs + 4 * (pairs - 1);
        int8_t *l0 = out0 + (size_t)(2 * (pairs - 1)) * out_c, *l1 = out + (size_t)last1 * out_c;
        requantise_channel(&r, oc, a, 1, l0 + oc, l1 + oc, 0, fast);
        requantise_channel(&r, oc1, a + 1, 1, l0 + oc1, l1 + oc1, 0, fast);
      }
    }
  }
}

TC_CONV_NOINLINE void tc_k_conv2d_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                      void *scratch) {
  if (p->packed || requant_fast(p, p->k_h * p->k_w * p->in_c, p->out_c)) /* packed only where fast */
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

/* A word of two int16 of the depthwise plane (4-byte aligned: even columns of rows of even width). */
typedef uint32_t plane_word __attribute__((may_alias, aligned(4)));

static inline __attribute__((always_inline)) uint32_t plane_pair(const int16_t *row, int32_t x) {
  return *(const plane_word *)(row + x);
}

/* The fast requantisation of a doubled accumulator (see requantise_channel) or the general one. */
static inline __attribute__((always_inline)) int8_t requantise_dw(const requant_params *r, int32_t acc, int32_t c,
                                                                  int32_t mult, int32_t right_shift, int32_t half_off,
                                                                  const int fast) {
  if (fast) {
    return (int8_t)__ssat(requantize_small_of_doubled(acc, mult, right_shift, half_off), 8);
  }
  return (int8_t)clamp(requantize(acc, r->mult[c], r->shift[c]) + r->out_offset, r->act_min, r->act_max);
}

/* The row loops of tc_k_depthwise3_dsp's fast route in assembly, one call a channel: for each of `rows` output
 * rows its `quads` runs of 4 neighbouring outputs (the row's width a multiple of 4), each requantised in
 * registers and stored (out, out + c_n, ...; the next run 4 c_n on, the next row right after). plane: the
 * channel's plane at the first window's top row; channel = {W01 and W12 of kernel rows 0, 1, 2 (6 words),
 * 2 bias, mult, half, unit (rq_words)} (TC_DW3_CHANNEL_WORDS) and op = {c_n, the plane's row stride in bytes,
 * quads, the bytes from a row's last window to the next row's first, rows, out_offset}, copied to the frame at
 * [0] and [40]. Registers: r0 the run's
 * window at its top row, r1 the row stride, r2 out, r3-r6 the 4 accumulators, r7 / r8 the kernel row's W01 /
 * W12, r9-r11 plane words, r12 the window row, lr the runs left. Every multiply is preceded by at most one
 * load, ALU op or store that does not feed it, which the Cortex-M7 issues with it: each kernel row loads the
 * next row's first plane words and W01 while it multiplies. */
#define TC_DW3_PROLOGUE(NAME_) \
    TC_ASM_FUNCTION(NAME_) \
    "  push {r4-r11, lr}\n" \
    "  sub sp, sp, #64\n" \
    "  ldm r2, {r4-r12, lr}\n" \
    "  stm sp, {r4-r12, lr}\n" \
    "  ldm r3, {r4-r9}\n" \
    "  add r12, sp, #40\n" \
    "  stm r12, {r4-r9}\n" \
    "  mov r2, r1\n" \
    "  ldr r1, [sp, #44]\n" \
    "0:\n"                           /* an output row */ \
    "  ldr lr, [sp, #48]\n" \
    "  ldr r9, [r0]\n" \
    "  ldr r10, [r0, #4]\n" \
    "  ldr r7, [sp, #0]\n" \
    "1:\n"                           /* a run of 4 outputs */ \
    "  ldr r3, [sp, #24]\n" \
    "  ldr r4, [sp, #24]\n" \
    "  ldr r5, [sp, #24]\n" \
    "  ldr r6, [sp, #24]\n"

/* The run's 4 accumulators requantised (rq_words' route) and stored; r0 moves STEP_ bytes
 * on to the next run, whose first plane words and W01 are loaded; then the next run, or the next row. */
#define TC_DW3_EPILOGUE(NAME_, STEP_) \
    "  ldrd r8, r11, [sp, #28]\n"    /* mult, half */ \
    "  ldr r12, [sp, #36]\n"         /* unit */ \
    "  smmlar r7, r3, r8, r11\n" \
    "  ldr r10, [sp, #60]\n"         /* out_offset */ \
    "  smmlar r9, r4, r8, r11\n" \
    "  add r7, r7, r3, asr #31\n" \
    "  smmlar r3, r5, r8, r11\n" \
    "  add r9, r9, r4, asr #31\n" \
    "  smmlar r4, r6, r8, r11\n" \
    "  add r3, r3, r5, asr #31\n" \
    "  smmla r7, r7, r12, r10\n" \
    "  add r4, r4, r6, asr #31\n" \
    "  smmla r9, r9, r12, r10\n" \
    "  ldr r8, [sp, #40]\n"          /* c_n */ \
    "  smmla r3, r3, r12, r10\n" \
    "  ssat r7, #8, r7\n" \
    "  smmla r4, r4, r12, r10\n" \
    "  ssat r9, #8, r9\n" \
    "  adds r0, r0, #" STEP_ "\n" \
    "  ssat r3, #8, r3\n" \
    "  strb r7, [r2]\n" \
    "  ssat r4, #8, r4\n" \
    "  strb r9, [r2, r8]\n" \
    "  add r2, r2, r8, lsl #1\n" \
    "  strb r3, [r2]\n" \
    "  ldr r9, [r0]\n" \
    "  strb r4, [r2, r8]\n" \
    "  ldr r10, [r0, #4]\n" \
    "  add r2, r2, r8, lsl #1\n" \
    "  ldr r7, [sp, #0]\n" \
    "  subs lr, lr, #1\n" \
    "  bne 1b\n" \
    "  ldrd r8, r11, [sp, #52]\n"    /* row skip, rows left */ \
    "  add r0, r0, r8\n" \
    "  subs r11, r11, #1\n" \
    "  str r11, [sp, #56]\n" \
    "  bne 0b\n" \
    "  add sp, sp, #64\n" \
    "  pop {r4-r11, pc}\n" \
    TC_ASM_END(NAME_)

/* Stride 1: outputs x..x+3 from a kernel row's plane words A = (x0, x1) r9, B = (x2, x3) r10, C = (x4, x5) r11:
 *   out(x)     += SMLAD(W01, A) + SMLATB(W12, B)     out(x + 1) += SMLABT(W01, A) + SMLAD(W12, B)
 *   out(x + 2) += SMLAD(W01, B) + SMLATB(W12, C)     out(x + 3) += SMLABT(W01, B) + SMLAD(W12, C).
 * ROW_: the row's base register; W12_ / W01N_: the frame offsets of its W12 and of the next row's W01, whose A and
 * B it loads into r9 / r10 as they fall free (r12 = the next row). The last row loads nothing ahead. */
#define TC_DW3_S1_ROW(ROW_, W12_, W01N_) \
    "  ldr r11, [" ROW_ ", #8]\n" \
    "  smlad r3, r7, r9, r3\n" \
    "  add r12, " ROW_ ", r1\n" \
    "  smlabt r4, r7, r9, r4\n" \
    "  ldr r8, [sp, #" W12_ "]\n" \
    "  smlad r5, r7, r10, r5\n" \
    "  ldr r9, [r12]\n" \
    "  smlabt r6, r7, r10, r6\n" \
    "  ldr r7, [sp, #" W01N_ "]\n" \
    "  smlatb r3, r8, r10, r3\n" \
    "  smlad r4, r8, r10, r4\n" \
    "  ldr r10, [r12, #4]\n" \
    "  smlatb r5, r8, r11, r5\n" \
    "  smlad r6, r8, r11, r6\n"
#define TC_DW3_S1_LAST_ROW \
    "  ldr r8, [sp, #20]\n" \
    "  smlad r3, r7, r9, r3\n" \
    "  ldr r11, [r12, #8]\n" \
    "  smlabt r4, r7, r9, r4\n" \
    "  smlad r5, r7, r10, r5\n" \
    "  smlabt r6, r7, r10, r6\n" \
    "  smlatb r3, r8, r10, r3\n" \
    "  smlad r4, r8, r10, r4\n" \
    "  smlatb r5, r8, r11, r5\n" \
    "  smlad r6, r8, r11, r6\n"

void tc_k_dw3_rows_s1(const int16_t *plane, int8_t *out, const int32_t *channel, const int32_t *op);
__asm__(
    TC_DW3_PROLOGUE("tc_k_dw3_rows_s1")
    TC_DW3_S1_ROW("r0", "4", "8")
    TC_DW3_S1_ROW("r12", "12", "16")
    TC_DW3_S1_LAST_ROW
    TC_DW3_EPILOGUE("tc_k_dw3_rows_s1", "8"));

/* Stride 2: outputs x..x+3 from a kernel row's words A = (x0, x1), B = (x2, x3), C = (x4, x5), D = (x6, x7),
 * E = (x8, x9): out(x + i) += SMLAD(W01, word i) + SMLATB(W12, word i + 1). A_ and B_ hold A and B on entry;
 * C goes to F_, D to A_, E to B_, and the next row's A and B (r12 = the next row) to F_ and A_: three registers
 * in turn, so that row 1 takes (r11, r9, r10) and row 2 (r10, r11, r9). */
#define TC_DW3_S2_ROW(ROW_, A_, B_, F_, W12_, W01N_) \
    "  ldr r8, [sp, #" W12_ "]\n" \
    "  smlad r3, r7, " A_ ", r3\n" \
    "  ldr " F_ ", [" ROW_ ", #8]\n" \
    "  smlad r4, r7, " B_ ", r4\n" \
    "  ldr " A_ ", [" ROW_ ", #12]\n" \
    "  smlatb r3, r8, " B_ ", r3\n" \
    "  ldr " B_ ", [" ROW_ ", #16]\n" \
    "  smlad r5, r7, " F_ ", r5\n" \
    "  add r12, " ROW_ ", r1\n" \
    "  smlatb r4, r8, " F_ ", r4\n" \
    "  ldr " F_ ", [r12]\n" \
    "  smlad r6, r7, " A_ ", r6\n" \
    "  ldr r7, [sp, #" W01N_ "]\n" \
    "  smlatb r5, r8, " A_ ", r5\n" \
    "  ldr " A_ ", [r12, #4]\n" \
    "  smlatb r6, r8, " B_ ", r6\n"
#define TC_DW3_S2_LAST_ROW(A_, B_, F_) \
    "  ldr r8, [sp, #20]\n" \
    "  smlad r3, r7, " A_ ", r3\n" \
    "  ldr " F_ ", [r12, #8]\n" \
    "  smlad r4, r7, " B_ ", r4\n" \
    "  ldr " A_ ", [r12, #12]\n" \
    "  smlatb r3, r8, " B_ ", r3\n" \
    "  ldr " B_ ", [r12, #16]\n" \
    "  smlad r5, r7, " F_ ", r5\n" \
    "  smlatb r4, r8, " F_ ", r4\n" \
    "  smlad r6, r7, " A_ ", r6\n" \
    "  smlatb r5, r8, " A_ ", r5\n" \
    "  smlatb r6, r8, " B_ ", r6\n"

void tc_k_dw3_rows_s2(const int16_t *plane, int8_t *out, const int32_t *channel, const int32_t *op);
__asm__(
    TC_DW3_PROLOGUE("tc_k_dw3_rows_s2")
    TC_DW3_S2_ROW("r0", "r9", "r10", "r11", "4", "8")
    TC_DW3_S2_ROW("r12", "r11", "r9", "r10", "12", "16")
    TC_DW3_S2_LAST_ROW("r10", "r11", "r9")
    TC_DW3_EPILOGUE("tc_k_dw3_rows_s2", "16"));

static inline __attribute__((always_inline)) void dw3_rows(int32_t stride_w, const int16_t *plane, int8_t *out,
                                                           const int32_t *channel, const int32_t *op) {
  if (stride_w == 1)
    tc_k_dw3_rows_s1(plane, out, channel, op);
  else
    tc_k_dw3_rows_s2(plane, out, channel, op);
}

/* PKHBT / PKHTB: the low (high) halves of two words as one word, a's first. */
static inline uint32_t pack_low_halves(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

static inline uint32_t pack_high_halves(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(b), "r"(a));
  return r;
}

/* One word (2 neighbouring plane columns) of the planes of 4 channels d0..d3 from va, vb, the 4 input bytes of
 * each column (4 zero points where it is padding): PKHBT / PKHTB pair the columns' bytes of channels 0, 1
 * (c0a c1a c0b c1b) and of channels 2, 3, then SXTB16 (plain and ROR #8) widens each into one word per
 * channel. 6 DSP instructions for 8 plane entries. */
static inline __attribute__((always_inline)) void plane_word4(uint32_t va, uint32_t vb, uint32_t *d0, uint32_t *d1,
                                                              uint32_t *d2, uint32_t *d3, int32_t j) {
  const uint32_t lo = pack_low_halves(va, vb), hi = pack_high_halves(va, vb);
  d0[j] = __sxtb16(lo);
  d1[j] = sxtb16_ror8(lo);
  d2[j] = __sxtb16(hi);
  d3[j] = sxtb16_ror8(hi);
}

/* n words of a row of 4 planes (plane_words apart) from n column pairs of the input from x: its own function
 * so that its loop keeps every value in a register. */
static TC_CONV_NOINLINE void dw3_plane_words(const int8_t *x, int32_t c_n, uint32_t *d0, int32_t plane_words,
                                             int32_t n) {
  uint32_t *d1 = d0 + plane_words, *d2 = d1 + plane_words, *d3 = d2 + plane_words;
  for (int32_t j = 0; j < n; ++j, x += 2 * c_n) plane_word4(load_u32(x), load_u32(x + c_n), d0, d1, d2, d3, j);
}

/* The planes (see depthwise3_dsp) of `count` channels from c: 4 at once (plane_word4; pad_w <= 1, as TFLM's
 * SAME or VALID padding gives a 3x3 kernel), or 1. A plane row py is input row py - pad_h, column px input
 * column px - pad_w; padding holds the zero point. */
static void dw3_planes(const tc_conv_params *p, const int8_t *in, int32_t c, int32_t count, int16_t *plane,
                       int32_t plane_h, int32_t plane_w) {
  const int32_t c_n = p->in_c, in_w = p->in_w, in_h = p->in_h, pad_w = p->pad_w, pad_h = p->pad_h;
  const int16_t zero_point = (int16_t)-p->in_offset;
  if (count == 4) {
    const int32_t words = plane_w / 2, plane_words = plane_h * words;
    const uint32_t zp4 = (uint8_t)zero_point * 0x01010101u, zp2 = (uint16_t)zero_point * 0x10001u;
    /* the words whose both columns are inside the image end at j_hi; with pad_w = 1 word 0 is (pad, x0) */
    const int32_t j_hi = (in_w + pad_w) / 2 < words ? (in_w + pad_w) / 2 : words;
    uint32_t *d0 = (uint32_t *)plane, *d1 = d0 + plane_words, *d2 = d1 + plane_words, *d3 = d2 + plane_words;
    for (int32_t py = 0; py < plane_h; ++py, d0 += words, d1 += words, d2 += words, d3 += words) {
      const int32_t y = py - pad_h;
      int32_t j = 0;
      if (y >= 0 && y < in_h) {
        const int8_t *src = in + (size_t)y * in_w * c_n + c, *x = src + (pad_w ? c_n : 0);
        if (pad_w) plane_word4(zp4, load_u32(src), d0, d1, d2, d3, j++);
        dw3_plane_words(x, c_n, d0 + j, plane_words, j_hi - j);
        j = j_hi > j ? j_hi : j;
        if ((in_w + pad_w) % 2 && j < words) plane_word4(load_u32(src + (in_w - 1) * c_n), zp4, d0, d1, d2, d3, j++);
      }
      for (; j < words; ++j) d0[j] = d1[j] = d2[j] = d3[j] = zp2;
    }
    return;
  }
  const int32_t x_lo = pad_w, x_hi = pad_w + in_w < plane_w ? pad_w + in_w : plane_w;
  for (int32_t py = 0; py < plane_h; ++py) {
    int16_t *row = plane + py * plane_w;
    const int32_t y = py - pad_h;
    if (y < 0 || y >= in_h) {
      for (int32_t px = 0; px < plane_w; ++px) row[px] = zero_point;
      continue;
    }
    const int8_t *src = in + ((size_t)y * in_w + (size_t)(x_lo - pad_w)) * c_n + c;
    for (int32_t px = 0; px < x_lo; ++px) row[px] = zero_point;
    for (int32_t px = x_lo; px < x_hi; ++px, src += c_n) row[px] = *src;
    for (int32_t px = x_hi; px < plane_w; ++px) row[px] = zero_point;
  }
}

/* DEPTHWISE_CONV_2D 3x3, stride_w 1 or 2, one channel at a time over a plane:
 * the channel's input as int16, raw (no offset), with the padding (and one column past the last window, the
 * plane's width even) set to the input zero point, so that sum w (x + in_offset) = sum w x + in_offset sum w
 * holds at every tap, padded ones included (they give w (zp + in_offset) = 0 as TFLM's skipped taps). The
 * planes of 4 channels are built at once where in_c % 4 == 0 and pad_w <= 1 (dw3_planes).
 * Per kernel row r two weight words, W01 = (w0, w1), W12 = (w1, w2), so that with the row's words
 * A = (x0, x1), B = (x2, x3) two neighbouring outputs are
 *   out(x)     += SMLAD(W01, A) + SMLATB(W12, B)   (w0 x0 + w1 x1 + w2 x2)
 *   out(x + 1) += SMLABT(W01, A) + SMLAD(W12, B)   (w0 x1 + w1 x2 + w2 x3):
 * 18 MACs in 12 multiply instructions (the C loop below, for widths not divisible by 4; the assembly rows,
 * tc_k_dw3_rows_s1 / _s2, take 4 outputs a pass). With `fast` the weights and the bias are doubled (the
 * accumulator is 2 x, as requantise_channel's); with p->packed they come from the build (cortexm_words). */
static inline __attribute__((always_inline)) void depthwise3_dsp(const tc_conv_params *p, int32_t batches,
                                                                 const int8_t *in, int8_t *out, int16_t *planes,
                                                                 const int fast) {
  const requant_params r = {p->mult, p->shift, p->out_offset, p->act_min, p->act_max};
  const int32_t c_n = p->in_c, in_w = p->in_w, in_h = p->in_h, out_h = p->out_h, out_w = p->out_w;
  const int32_t stride_h = p->stride_h, stride_w = p->stride_w;
  const int32_t plane_h = (out_h - 1) * stride_h + 3, plane_w = ((out_w - 1) * stride_w + 4 + 1) & ~1;
  const int32_t twice = fast ? 2 : 1, by4 = c_n % 4 == 0 && p->pad_w <= 1;
  /* every row in assembly (direct calls: the cycle model charges an indirect BLX ~100 cycles), with the op's
     words {c_n, the plane's row stride in bytes, quads, row skip, rows, out_offset} */
  const int rows_asm = fast && out_w % 4 == 0;
  const int32_t quads = out_w / 4, row_skip = 2 * (stride_h * plane_w - quads * 4 * stride_w);
  const int32_t op_words[6] = {c_n, 2 * plane_w, quads, row_skip, out_h, p->out_offset};
  for (int32_t b = 0; b < batches; ++b, in += in_h * in_w * c_n, out += out_h * out_w * c_n) {
    for (int32_t c = 0; c < c_n; ++c) {
      const int32_t quad = by4 ? c % 4 : 0; /* this channel's plane among the 4 built at once */
      if (quad == 0) dw3_planes(p, in, c, by4 ? 4 : 1, planes, plane_h, plane_w);
      const int16_t *plane = planes + (size_t)quad * plane_h * plane_w;
      int8_t *o = out + c;
      if (rows_asm && p->packed) {
        dw3_rows(stride_w, plane, o, p->packed + (size_t)c * TC_DW3_CHANNEL_WORDS, op_words);
        continue;
      }
      const int8_t *w = p->weights + c;
      uint32_t w01[3], w12[3];
      int32_t sum_w = 0;
      for (int32_t ky = 0; ky < 3; ++ky) {
        const int32_t w0 = twice * w[(3 * ky) * c_n], w1 = twice * w[(3 * ky + 1) * c_n], w2 = twice * w[(3 * ky + 2) * c_n];
        w01[ky] = ((uint32_t)w0 & 0xffffu) | ((uint32_t)w1 << 16);
        w12[ky] = ((uint32_t)w1 & 0xffffu) | ((uint32_t)w2 << 16);
        sum_w += w0 + w1 + w2;
      }
      /* int32 wraps like the accumulators: the sum comes out exact whenever TFLM's does */
      const int32_t bias = (int32_t)((uint32_t)(p->bias ? twice * p->bias[c] : 0) + (uint32_t)p->in_offset * (uint32_t)sum_w);
      const int32_t mult = fast ? p->mult[c] : 0, right_shift = fast ? -p->shift[c] : 0;
      const int32_t half_off = fast ? half_and_offset(right_shift, p->out_offset) : 0;
      const uint32_t a0 = w01[0], a1 = w01[1], a2 = w01[2], b0 = w12[0], b1 = w12[1], b2 = w12[2];
      if (rows_asm) {
        int32_t words[TC_DW3_CHANNEL_WORDS] = {(int32_t)a0, (int32_t)b0, (int32_t)a1, (int32_t)b1, (int32_t)a2,
                                               (int32_t)b2, bias};
        rq_words(p, c, words + 7);
        dw3_rows(stride_w, plane, o, words, op_words);
        continue;
      }
      for (int32_t oy = 0; oy < out_h; ++oy) {
        const int16_t *r0 = plane + oy * stride_h * plane_w, *r1 = r0 + plane_w, *r2 = r1 + plane_w;
        int32_t ox = 0;
        if (stride_w == 1)
          for (; ox + 1 < out_w; ox += 2, o += 2 * c_n) {
            const uint32_t x0a = plane_pair(r0, ox), x0b = plane_pair(r0, ox + 2);
            const uint32_t x1a = plane_pair(r1, ox), x1b = plane_pair(r1, ox + 2);
            const uint32_t x2a = plane_pair(r2, ox), x2b = plane_pair(r2, ox + 2);
            int32_t acc0 = __smlad(a0, x0a, bias), acc1 = __smlabt(a0, x0a, bias);
            acc0 = __smlatb(b0, x0b, acc0), acc1 = __smlad(b0, x0b, acc1);
            acc0 = __smlad(a1, x1a, acc0), acc1 = __smlabt(a1, x1a, acc1);
            acc0 = __smlatb(b1, x1b, acc0), acc1 = __smlad(b1, x1b, acc1);
            acc0 = __smlad(a2, x2a, acc0), acc1 = __smlabt(a2, x2a, acc1);
            acc0 = __smlatb(b2, x2b, acc0), acc1 = __smlad(b2, x2b, acc1);
            o[0] = requantise_dw(&r, acc0, c, mult, right_shift, half_off, fast);
            o[c_n] = requantise_dw(&r, acc1, c, mult, right_shift, half_off, fast);
          }
        for (; ox < out_w; ++ox, o += c_n) { /* stride 2, or the last of an odd row */
          const int32_t x = ox * stride_w;
          int32_t acc = __smlad(a0, plane_pair(r0, x), bias);
          acc = __smlatb(b0, plane_pair(r0, x + 2), acc);
          acc = __smlad(a1, plane_pair(r1, x), acc);
          acc = __smlatb(b1, plane_pair(r1, x + 2), acc);
          acc = __smlad(a2, plane_pair(r2, x), acc);
          acc = __smlatb(b2, plane_pair(r2, x + 2), acc);
          o[0] = requantise_dw(&r, acc, c, mult, right_shift, half_off, fast);
        }
      }
    }
  }
}

TC_CONV_NOINLINE void tc_k_depthwise3_dsp(const tc_conv_params *p, int32_t batches, const int8_t *in, int8_t *out,
                                          void *scratch) {
  if (p->packed || requant_fast(p, 9, p->in_c)) /* packed only where fast */
    depthwise3_dsp(p, batches, in, out, (int16_t *)scratch, 1);
  else
    depthwise3_dsp(p, batches, in, out, (int16_t *)scratch, 0);
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
