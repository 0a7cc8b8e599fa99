/* Board services shared by both link maps: boot, stack high-water mark, DWT cycle counter,
 * and the marker the instruction-counting QEMU plugin keys on. */
#ifndef TC_BOARD_H
#define TC_BOARD_H

#include <stdint.h>

/* Called before and after each measured region. The QEMU plugin (firmware/qemu_plugin) is
 * given this function's address and closes an instruction-count segment every time it runs.
 * Never inlined, never removed. */
void tc_mark(void);

uint32_t tc_stack_peak_bytes(void);     /* deepest stack use since boot (painted stack) */
uint32_t tc_stack_size_bytes(void);
int tc_stack_overflowed(void);          /* the lowest stack word was overwritten */
void tc_print_stack_peak(void);         /* the line "stack_peak_bytes P of S" that tinycap.m7 reads */

void tc_dwt_start(void);                /* enables and zeroes DWT CYCCNT */
uint32_t tc_dwt_cycles(void);           /* reads CYCCNT (0 under QEMU, which does not model it) */

#endif
