/* Exact executed-instruction counts per translation block, cut into segments at a marker.
 *
 *   qemu-system-arm ... -plugin libinsncount.so,out=counts.txt,mark=0x1c0
 *
 * Every translated block (TB) gets a 64-bit counter that QEMU increments inline each time the
 * block is entered (no helper call, so the emulation stays fast). A block runs to its end unless
 * an exception is taken inside it, which the measured firmware code never does, so
 * count x instructions-per-block is exact. Each time the block starting at `mark` (the firmware's
 * tc_mark()) is entered, the counts since the previous mark are written out as a segment.
 *
 * Output (text, one record a line):
 *   S <segment>                          a segment starts (segment 0 = boot up to the first mark)
 *   C <block id> <executions>            a block executed in the current segment
 *   B <block id> <n insns> <addr> ...    at exit: each block's instruction addresses (hex)
 * The same block translated again (after a code-cache flush) keeps its id and counter. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = TC_QEMU_PLUGIN_VERSION;

struct block {
    uint64_t count;      /* incremented inline by QEMU: keep first, address must stay fixed */
    uint64_t reported;   /* count at the last segment boundary */
    uint32_t id, n;
    uint32_t *addrs;     /* n instruction addresses */
    struct block *next;  /* hash chain */
};

#define HASH_BITS 16
static struct block *table[1u << HASH_BITS];
static struct block **blocks;
static uint32_t n_blocks, cap_blocks;
static uint64_t mark_addr = UINT64_MAX;
static uint32_t segment;
static FILE *out;

static uint32_t hash(uint64_t vaddr)
{
    return (uint32_t)((vaddr >> 1) * 2654435761u) >> (32 - HASH_BITS);
}

static struct block *find_or_add(const struct qemu_plugin_tb *tb)
{
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    uint32_t n = (uint32_t)qemu_plugin_tb_n_insns(tb);
    uint32_t h = hash(vaddr);
    for (struct block *b = table[h]; b; b = b->next) {
        if (b->n != n || b->addrs[0] != (uint32_t)vaddr)
            continue;
        uint32_t i = 0;
        while (i < n && b->addrs[i] == (uint32_t)qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, i)))
            i++;
        if (i == n)
            return b;
    }
    struct block *b = calloc(1, sizeof(*b));
    uint32_t *addrs = malloc(n * sizeof(uint32_t));
    if (!b || !addrs) {
        fprintf(stderr, "insncount: out of memory\n");
        exit(1);
    }
    b->addrs = addrs;
    for (uint32_t i = 0; i < n; i++)
        b->addrs[i] = (uint32_t)qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, i));
    b->n = n;
    b->id = n_blocks;
    b->next = table[h];
    table[h] = b;
    if (n_blocks == cap_blocks) {
        cap_blocks = cap_blocks ? 2 * cap_blocks : 4096;
        blocks = realloc(blocks, cap_blocks * sizeof(*blocks));
        if (!blocks) {
            fprintf(stderr, "insncount: out of memory\n");
            exit(1);
        }
    }
    blocks[n_blocks++] = b;
    return b;
}

static void close_segment(void)
{
    for (uint32_t i = 0; i < n_blocks; i++) {
        struct block *b = blocks[i];
        if (b->count != b->reported) {
            fprintf(out, "C %" PRIu32 " %" PRIu64 "\n", b->id, b->count - b->reported);
            b->reported = b->count;
        }
    }
}

/* Runs before the marker block's own inline counter (registered after it is, see tb_trans),
 * so tc_mark's instructions always open the next segment. */
static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    close_segment();
    fprintf(out, "S %" PRIu32 "\n", ++segment);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    struct block *b = find_or_add(tb);
    if (qemu_plugin_tb_vaddr(tb) == mark_addr)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, 1);
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    close_segment();
    for (uint32_t i = 0; i < n_blocks; i++) {
        struct block *b = blocks[i];
        fprintf(out, "B %" PRIu32 " %" PRIu32, b->id, b->n);
        for (uint32_t k = 0; k < b->n; k++)
            fprintf(out, " %" PRIx32, b->addrs[k]);
        fputc('\n', out);
    }
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0)
            path = argv[i] + 4;
        else if (strncmp(argv[i], "mark=", 5) == 0)
            mark_addr = strtoull(argv[i] + 5, NULL, 0) & ~1ull;
        else {
            fprintf(stderr, "insncount: unknown argument '%s' (expected out=PATH, mark=ADDR)\n", argv[i]);
            return 1;
        }
    }
    if (!path) {
        fprintf(stderr, "insncount: missing out=PATH\n");
        return 1;
    }
    out = fopen(path, "w");
    if (!out) {
        fprintf(stderr, "insncount: cannot write %s\n", path);
        return 1;
    }
    fprintf(out, "S 0\n");
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
