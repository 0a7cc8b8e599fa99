/* Calibration workload for the instruction counter (tests/test_m7.py), no model needed.
 *
 * Segment 1: tc_calib_loop(CALIB_N)  -- hand-written, executes exactly 2 * CALIB_N + 1 instructions.
 * Segment 3: tc_calib_dot(...)        -- an int8 dot product in C (SMLAD inner loop), checked for
 *                                        its result; its count is whatever the compiler emitted.
 * Prints the dot product and exits with status 0. */
#include <stdint.h>

#include "board.h"
#include "semihost.h"

#ifndef CALIB_N
#define CALIB_N 1000
#endif
#define DOT_LEN 256

/* subs + bne per iteration, then bx lr: 2 * n + 1 instructions for n >= 1. */
__attribute__((naked, noinline)) void tc_calib_loop(__attribute__((unused)) uint32_t n)
{
    __asm__ volatile(
        "1: subs r0, r0, #1\n"
        "   bne 1b\n"
        "   bx lr\n");
}

__attribute__((noinline)) int32_t tc_calib_dot(const int8_t *a, const int8_t *b, int n)
{
    int32_t acc = 0;
    for (int i = 0; i < n; i++)
        acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}

static int8_t a[DOT_LEN], b[DOT_LEN];

int main(void)
{
    for (int i = 0; i < DOT_LEN; i++) {
        a[i] = (int8_t)(i * 7 - 100);
        b[i] = (int8_t)(50 - i * 3);
    }
    tc_mark();
    tc_calib_loop(CALIB_N);
    tc_mark();
    tc_mark();
    int32_t dot = tc_calib_dot(a, b, DOT_LEN);
    tc_mark();
    out_str("calib_n ");
    out_u32(CALIB_N);
    out_str("\ndot ");
    out_u32((uint32_t)dot);
    out_str("\n");
    tc_print_stack_peak();
    return 0;
}
