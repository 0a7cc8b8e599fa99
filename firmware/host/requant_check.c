/* Host check (tests/test_conv_kernels.py): requantize() equals TFLM's
 * multiply_by_quantized_multiplier() on 20 M pseudo-random (x, multiplier >= 0, shift) triples,
 * including INT32_MIN / INT32_MAX, small |x|, shifts -31..3. Exit status 1 and the first cases on a
 * difference. */
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
    if (requantize(x, m, sh) != multiply_by_quantized_multiplier(x, m, sh)) {
      if (bad++ < 5) printf("x %d m %d sh %d\n", x, m, sh);
    }
  }
  printf("bad %ld\n", bad);
  return bad != 0;
}
