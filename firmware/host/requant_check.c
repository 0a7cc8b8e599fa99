/* Host check (tests/test_conv_kernels.py): requantize() equals TFLM's
 * multiply_by_quantized_multiplier() on 20 M pseudo-random (x, multiplier >= 0, shift) triples,
 * including INT32_MIN / INT32_MAX, small |x|, shifts -31..3; requantize_small() equals it wherever it
 * applies (|x| < 2^30, shift <= -1), including |x| = 2^30 - 1 and exact halves. Exit status 1 and the
 * first cases on a difference. */
#include <stdio.h>
#include "tc_kernels_internal.h"
static unsigned long long s = 88172645463325252ull;
static unsigned long long nx(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
int main(void) {
  long bad = 0;
  for (long i = 0; i < 20000000; ++i) {
    unsigned long long r = nx();
    int32_t x = (int32_t)(uint32_t)r;
    if (i % 4 == 1) x >>= (r >> 32) % 31;           /* small magnitudes too */
    if (i % 1000 == 7) x = (i & 1) ? INT32_MIN : INT32_MAX;
    int32_t m = (int32_t)((nx() >> 33) | (i % 3 ? 0x40000000u : 0));
    int32_t sh = -(int32_t)(nx() % 32) + (i % 5 == 0 ? (int32_t)(nx() % 4) : 0);
    const int32_t want = multiply_by_quantized_multiplier(x, m, sh);
    if (requantize(x, m, sh) != want) {
      if (bad++ < 5) printf("x %d m %d sh %d\n", x, m, sh);
    }
    int32_t xs = x >> 2;                                        /* |xs| < 2^30 */
    if (i % 7 == 3) xs = (i & 8) ? (1 << 30) - 1 : 1 - (1 << 30);
    if (i % 7 == 5) xs = (int32_t)((uint32_t)(xs >> 12) << 12); /* many exact halves */
    const int32_t rs = sh < -1 ? -sh : 1;
    if (requantize_small(xs, m, rs, 1 << (rs - 1)) != multiply_by_quantized_multiplier(xs, m, -rs)) {
      if (bad++ < 5) printf("small: x %d m %d right_shift %d\n", xs, m, rs);
    }
  }
  printf("bad %ld\n", bad);
  return bad != 0;
}
