/* Cortex-M7 boot for both link maps (QEMU mps2-an500 and STM32H743): vector table, FPU
 * enable, caches on, .data copy, .bss clear, stack painting, main(), exit code through semihosting.
 * The same code for both: nothing here depends on the link map. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "semihost.h"

/* Linker-script symbols (sections.ld). */
extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __stack_limit[], __stack_top[];

int main(void);
void Reset_Handler(void);
void tc_c_start(void);
static void Fault_Handler(void);

#define STACK_PAINT 0xA5A5A5A5u
#define EXIT_FAULT 70

#define REG(addr) (*(volatile uint32_t *)(addr))
#define SCB_CPACR REG(0xE000ED88)
#define DEMCR REG(0xE000EDFC)
#define DWT_CTRL REG(0xE0001000)
#define DWT_CYCCNT REG(0xE0001004)
#define DWT_LAR REG(0xE0001FB0)

/* Initial SP + the 15 Cortex-M system exceptions; no device interrupts are used. */
__attribute__((section(".isr_vector"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))__stack_top,
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    Fault_Handler, /* SysTick */
};

/* The FPU must be on before any compiled C runs (hard-float code may use VFP registers
 * anywhere), so this part is assembly. */
__attribute__((naked, noreturn)) void Reset_Handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n"       /* CPACR: full access to CP10/CP11 */
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b tc_c_start\n");
}

#define SCB_CCR REG(0xE000ED14)
#define SCB_CCSIDR REG(0xE000ED80)
#define SCB_CSSELR REG(0xE000ED84)
#define SCB_ICIALLU REG(0xE000EF50)
#define SCB_DCISW REG(0xE000EF60)

/* Instruction and data caches on (weights live in flash). Cortex-M7 sequence: invalidate, then
 * enable; D-cache invalidated by set/way (32-byte lines, way field at bit 30). Written from the
 * Armv7-M / Cortex-M7 manuals. Both images run it (one code path): QEMU does not model the caches
 * (the maintenance registers are no-ops there), a board gets them; boot is outside the counts. */
static void enable_caches(void)
{
    __asm__ volatile("dsb\n isb" ::: "memory");
    SCB_ICIALLU = 0;
    __asm__ volatile("dsb\n isb" ::: "memory");
    SCB_CCR |= 1u << 17; /* IC */
    SCB_CSSELR = 0;      /* level 1 data cache */
    __asm__ volatile("dsb" ::: "memory");
    uint32_t ccsidr = SCB_CCSIDR;
    uint32_t sets = (ccsidr >> 13) & 0x7FFF, ways = (ccsidr >> 3) & 0x3FF;
    for (uint32_t s = 0; s <= sets; s++)
        for (uint32_t w = 0; w <= ways; w++)
            SCB_DCISW = (s << 5) | (w << 30);
    __asm__ volatile("dsb" ::: "memory");
    SCB_CCR |= 1u << 16; /* DC */
    __asm__ volatile("dsb\n isb" ::: "memory");
}

__attribute__((noreturn, used)) void tc_c_start(void)
{
    enable_caches();
    memcpy(__data_start, __data_load, (size_t)((char *)__data_end - (char *)__data_start));
    memset(__bss_start, 0, (size_t)((char *)__bss_end - (char *)__bss_start));
    /* Paint the stack below this frame; tc_stack_peak_bytes() finds the high-water mark. */
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = __stack_limit; p < sp - 16; p++)
        *(volatile uint32_t *)p = STACK_PAINT;
    sh_exit(main());
}

uint32_t tc_stack_size_bytes(void)
{
    return (uint32_t)((char *)__stack_top - (char *)__stack_limit);
}

uint32_t tc_stack_peak_bytes(void)
{
    const volatile uint32_t *p = __stack_limit;
    while (p < __stack_top && *p == STACK_PAINT)
        p++;
    return (uint32_t)((const char *)__stack_top - (const char *)p);
}

void tc_print_stack_peak(void)
{
    out_str("stack_peak_bytes ");
    out_u32(tc_stack_peak_bytes());
    out_str(" of ");
    out_u32(tc_stack_size_bytes());
    out_str("\n");
    out_flush();
}

int tc_stack_overflowed(void)
{
    return *(volatile uint32_t *)__stack_limit != STACK_PAINT;
}

void tc_dwt_start(void)
{
    DEMCR |= 1u << 24;      /* TRCENA */
    DWT_LAR = 0xC5ACCE55;   /* unlock (Cortex-M7) */
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;         /* CYCCNTENA */
}

uint32_t tc_dwt_cycles(void)
{
    return DWT_CYCCNT;
}

static void Fault_Handler(void)
{
    out_flush();
    sh_write0("error: CPU fault (HardFault/BusFault/UsageFault or unexpected exception)\n");
    sh_exit(EXIT_FAULT);
}
