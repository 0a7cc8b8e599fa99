/* int8 kernels with TFLM's integer arithmetic (reference kernels' rounding and requantisation).
 * Each kernel is its own non-inlined function (tc_k_*) so an instruction counter can attribute
 * executed instructions by symbol. Quantisation parameters are precomputed at build time by
 * tinycap/firmware.py exactly as TFLM's Prepare() computes them. */
#ifndef TC_KERNELS_H
#define TC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Hook called by the generated graph code before every op: define TC_OP_HOOK(graph, index, op)
 * (graph name string, op position in the .tflite graph, builtin op name string) when compiling
 * the generated sources to observe ops; a no-op by default. */
#ifndef TC_OP_HOOK
#define TC_OP_HOOK(graph, index, op) ((void)0)
#endif

#if defined(__GNUC__)
#define TC_NOINLINE __attribute__((noinline))
#else
#define TC_NOINLINE
#endif

/* Fully connected, weights pre-arranged by the generator: rows in groups of 4, the K axis
 * zero-padded to k4 (a multiple of 16), block (g, kb) = rows 4g..4g+3, 4 bytes each
 * (k = 4kb..4kb+3). Portable C in tc_kernels.c; on Cortex-M with DSP, tc_kernels_cortexm.c:
 * tc_k_fully_connected_groups (SXTB16 + SMLAD loop and requantisation in one routine) for full
 * groups with the fast requantisation, tc_k_fully_connected_rows4 + C otherwise.
 * rq: per output row {bias_eff, multiplier, e, half}, bias_eff = bias - input_zero_point *
 * sum_k w[n][k] (the input offset folded at build time; a per-tensor multiplier is repeated).
 * right_shifts = 1: every TFLM shift is <= 0, e = -shift and half = e ? 1 << (e - 1) : 0 (the
 * fast requantisation); right_shifts = 0: e is TFLM's shift itself and half is 0. */
typedef struct {
  const int8_t *weights; /* (N4/4) * K4 * 4 bytes */
  const int32_t *rq;     /* 4 * N */
  int32_t right_shifts;
  int32_t k, k4, n;      /* input depth, padded depth, output rows */
  int32_t out_zp, act_min, act_max;
} tc_fc_params;
/* scratch: TC_FC_SCRATCH_WORDS(k4) words the kernel may overwrite (the DSP path expands the input
 * there); the caller owns it (the generated code: one buffer for the model's largest k4). */
#define TC_FC_SCRATCH_WORDS(k4) ((k4) / 2)
void tc_k_fully_connected(const tc_fc_params *p, int32_t batches, const int8_t *in, int8_t *out, uint32_t *scratch);

/* ADD / SUB (TFLM left_shift 20, twice-max-scale rescaling); sign = +1 or -1.
 * Broadcast: shapes given as 4-D with strides (0 on broadcast axes). */
typedef struct {
  int32_t in1_offset, in2_offset, out_offset; /* -zp1, -zp2, zp_out */
  int32_t in1_mult, in2_mult, out_mult;
  int8_t in1_shift, in2_shift, out_shift, sign;
  int32_t act_min, act_max;
} tc_add_params;
typedef struct {
  int32_t shape[4];    /* output shape */
  int32_t s1[4], s2[4]; /* element strides of input 1 and 2 per output axis (0: broadcast) */
  int32_t flat;         /* 1: no broadcast, plain loop over count elements */
  int32_t count;
} tc_bcast;
void tc_k_add(const tc_add_params *p, const tc_bcast *b, const int8_t *x, const int8_t *y, int8_t *out);
/* The same ADD / SUB without broadcasting, the rescaled inputs read from two 256-entry int32
 * tables computed at build time (t1[x + 128] = input 1's term of TFLM's AddFunc, exactly), so
 * one requantisation per element instead of three. */
void tc_k_add_tables(const tc_add_params *p, const int32_t *t1, const int32_t *t2, int32_t count, const int8_t *x,
                     const int8_t *y, int8_t *out);

typedef struct {
  int32_t in1_offset, in2_offset, out_offset;
  int32_t mult;
  int8_t shift;
  int32_t act_min, act_max;
} tc_mul_params;
void tc_k_mul(const tc_mul_params *p, const tc_bcast *b, const int8_t *x, const int8_t *y, int8_t *out);

/* Any elementwise int8 -> int8 function as a 256-entry table indexed by (uint8_t)(x + 128):
 * LOGISTIC, TANH, QUANTIZE (requantise) — tables computed at build time by running TFLM. */
void tc_k_lut(const int8_t *table, int32_t count, const int8_t *in, int8_t *out);

/* GATHER rows of an int8 table (rows, row_len) by int32 indices; an out-of-range index
 * writes a zero-point row (TFLM would fail the invoke; the decoder only feeds argmax ids). */
void tc_k_gather(const int8_t *table, int32_t rows, int32_t row_len, int8_t fill, const int32_t *idx,
                 int32_t n, int8_t *out);

/* SOFTMAX int8 -> int8 (output scale 1/256, zero point -128), gemmlowp fixed point like TFLM. */
typedef struct {
  int32_t input_multiplier, input_left_shift, diff_min;
} tc_softmax_params;
void tc_k_softmax(const tc_softmax_params *p, int32_t outer, int32_t depth, const int8_t *in, int8_t *out);

/* BATCH_MATMUL int8: out[b] = lhs[b] (M, K) @ rhs[b] (K, N), both operands activations;
 * lhs_t / rhs_t: operand stored transposed (adj_x / adj_y); batch stride 0 broadcasts. */
typedef struct {
  int32_t batches, m, k, n;
  int32_t lhs_bstride, rhs_bstride; /* elements between batches (0: broadcast) */
  int32_t lhs_t, rhs_t;
  int32_t lhs_offset, rhs_offset, out_offset; /* -zp_lhs, -zp_rhs, zp_out */
  int32_t mult;
  int8_t shift;
} tc_bmm_params;
void tc_k_batch_matmul(const tc_bmm_params *p, const int8_t *lhs, const int8_t *rhs, int8_t *out);

/* MEAN / SUM int8 over one axis of a (outer, axis, inner) view, as TFLM's integer path:
 * sum - zp_in * count requantised (for MEAN, 1/count folded into the multiplier at build time). */
typedef struct {
  int32_t outer, axis, inner;
  int32_t in_zp, mult, shift, out_zp;
} tc_mean_params;
void tc_k_mean(const tc_mean_params *p, const int8_t *in, int8_t *out);

/* L2_NORMALIZATION int8 over the last axis (depth), as TFLM's reference integer kernel: output
 * scale 1/128 and zero point 0 (what the converter fixes; TFLM's kernel assumes them). */
void tc_k_l2_normalization(int32_t outer, int32_t depth, int32_t in_zp, const int8_t *in, int8_t *out);

/* Strided copy for CONCATENATION / SPLIT / STRIDED_SLICE / SLICE / RESHAPE outputs:
 * `outer` blocks of `len` bytes, source stride src_step, destination stride dst_step. */
void tc_k_copy(int32_t outer, int32_t len, const int8_t *src, int32_t src_step, int8_t *dst, int32_t dst_step);

/* Index of the largest int8 value (first one on ties, like numpy.argmax). */
int32_t tc_k_argmax(const int8_t *x, int32_t n);

#endif /* TC_KERNELS_H */
