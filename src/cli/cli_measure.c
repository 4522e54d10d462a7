/*
 * cli_measure.c: the kernel timings, memory figures and timing prompt `tutti
 * topo`, `tutti plan` and `tutti bench` describe and time a machine with.
 *
 * A product is timed on weights in the layout the engine gives them on this
 * CPU: packed to KCPU_LAYOUT_TILE16 where kcpu_tile16_wanted says the engine
 * packs them (engine_shard.c, on one rank and on several; in memory advised
 * to huge pages before its first touch, as the engine's packed copy is:
 * with 4 KB pages a stream of hundreds of MiB walks the page tables every 4
 * KB), in rows otherwise, so a rank is described by the kernels its decode and prompt
 * steps will run. Large decode-sized matrices repeat one row (the speed does
 * not depend on the values, and one packed row group is then copied instead
 * of packing hundreds of MiB).
 *
 * Every probe repeats its sample over a window (cli_probe_best) and keeps
 * the best: on a shared host one sample can fall in a neighbour's burst or
 * a descheduled slice (the 16-core device machine read 61.8 GB/s in one
 * call and 72.6 minutes later; its decode streamed 78.9), and the best of
 * many short samples is what the machine gives when it is quiet, which is
 * what a run of the engine long enough to matter gets most of the time.
 * Only samples that end inside the window count, so ranks that start
 * together after a barrier (`tutti topo`) are all still busy during every
 * sample they keep: none is timed while the others have stopped.
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void cli_advise_huge_pages(void *p, size_t bytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

static void product_run(void *p, int ith, int nth)
{
    const struct cli_product *j = p;
    int64_t r0, r1;
    tt_split_range(j->rows, ith, nth, 16, &r0, &r1);
    const kcpu_matmul_fn f = kcpu_matmul_get(j->ops, j->layout, j->type);
    for (int k = 0; k < j->reps && r1 > r0; k++)
        f(j->n, j->w, j->w_row, r0, r1, j->act, j->act_row, j->n_tok, j->out, j->rows);
}

void cli_product_free(struct cli_product *p)
{
    tt_free(p->out);
    tt_free(p->act);
    tt_free(p->w);
    memset(p, 0, sizeof(*p));
}

/* Pseudo-random values in [-0.5, 0.5). */
static void fill_random(float *x, int64_t n, uint64_t *rng)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)((*rng = *rng * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
}

/* Weights: every row random, or (repeat) row 0 copied to all rows; then
 * packed if the engine would pack them. */
static bool make_weights(struct cli_product *p, bool repeat, float *x, uint64_t *rng)
{
    const struct tt_type_traits *tr = tt_type_get(p->type);
    const int64_t made = repeat ? TT_MIN(p->rows, 16) : p->rows; /* rows quantized from values */
    const bool pack = kcpu_tile16_wanted(p->ops, p->type);
    const size_t rows_bytes = p->w_row * (size_t)(pack && repeat ? made : p->rows);
    uint8_t *rows = tt_alloc(rows_bytes);
    if (!rows) return false;
    for (int64_t r = 0; r < made; r++) {
        if (r == 0 || !repeat) fill_random(x, p->n, rng);
        tr->from_float(x, rows + (size_t)r * p->w_row, p->n);
    }
    if (!pack) {
        for (int64_t r = made; r < p->rows; r++) memcpy(rows + (size_t)r * p->w_row, rows, p->w_row);
        p->w = rows;
        p->layout = KCPU_LAYOUT_ROWS;
        return true;
    }
    const size_t group = kcpu_tile16_bytes(p->type, p->n, 16), total = kcpu_tile16_bytes(p->type, p->n, p->rows);
    uint8_t *packed = tt_alloc(total);
    if (packed) {
        cli_advise_huge_pages(packed, total); /* as the engine's packed copy (engine_shard.c) */
        const int64_t groups = (p->rows + 15) / 16;
        if (repeat && total == group * (size_t)groups) { /* identical groups: pack one, copy it */
            kcpu_tile16_pack(p->type, p->n, rows, p->w_row, made, 0, 1, packed);
            for (int64_t g = 1; g < groups; g++) memcpy(packed + (size_t)g * group, packed, group);
        } else if (!repeat) {
            kcpu_tile16_pack(p->type, p->n, rows, p->w_row, p->rows, 0, groups, packed);
        } else { /* a layout whose groups differ in size: not expected */
            tt_free(packed);
            packed = NULL;
        }
    }
    tt_free(rows);
    p->w = packed;
    p->layout = KCPU_LAYOUT_TILE16;
    return packed != NULL;
}

bool cli_product_init(struct cli_product *p, enum tt_type type, int64_t n, int64_t rows, int64_t n_tok,
                      bool repeat)
{
    memset(p, 0, sizeof(*p));
    p->ops = kcpu_get();
    p->type = type;
    const enum tt_type at = tt_type_get(type)->vec_dot_type;
    p->n = n, p->rows = rows, p->n_tok = n_tok, p->reps = 1;
    p->w_row = tt_row_size(type, n);
    p->act_row = tt_row_size(at, n);
    float *x = tt_alloc(sizeof(float) * (size_t)n);
    p->act = tt_alloc(p->act_row * (size_t)n_tok);
    p->out = tt_alloc(sizeof(float) * (size_t)(rows * n_tok));
    uint64_t rng = 1;
    bool ok = x && p->act && p->out && make_weights(p, repeat, x, &rng);
    for (int64_t t = 0; ok && t < n_tok; t++) {
        fill_random(x, n, &rng);
        p->ops->quantize_act[at](x, p->act + (size_t)t * p->act_row, n);
    }
    tt_free(x);
    if (!ok) cli_product_free(p);
    return ok;
}

double cli_product_time(struct cli_product *p, struct tt_pool *pool)
{
    const double t0 = tt_now_s();
    tt_pool_run(pool, product_run, p);
    return tt_now_s() - t0;
}

double cli_probe_best(double (*sample)(void *ctx), void *ctx, double window_s)
{
    const double t0 = tt_now_s();
    double best = 0.0, t = t0;
    for (int k = 0; t - t0 < window_s; k++) {
        const double x = sample(ctx);
        t = tt_now_s();
        if (k == 0 || t - t0 <= window_s) best = fmax(best, x);
    }
    return best;
}

bool cli_type_probed(enum tt_type type)
{
    const struct kcpu_ops *ops = kcpu_get();
    if (type >= TT_TYPE_COUNT || !tt_type_is_stored(type) || !ops->matmul[type]) return false;
    return ops->quantize_act[tt_type_get(type)->vec_dot_type] != NULL;
}

struct matvec_probe {
    struct cli_product p;
    struct tt_pool *pool;
};

/* GB/s of weights one pass over the product reads. */
static double matvec_sample(void *ctx)
{
    struct matvec_probe *m = ctx;
    return (double)(m->p.w_row * (size_t)m->p.rows) / cli_product_time(&m->p, m->pool) / 1e9;
}

double cli_measure_matvec_gbs(struct tt_pool *pool, enum tt_type type, struct comm *together)
{
    struct matvec_probe m = { .pool = pool };
    const int64_t n = 4096, bytes = 512ll << 20;
    const bool made = cli_type_probed(type) &&
                      cli_product_init(&m.p, type, n, bytes / (int64_t)tt_row_size(type, n), 1, true);
    if (together && comm_barrier(together)) tt_warn("ranks not measured at once: %s", tt_error_detail());
    if (!made) return 0.0;
    /* after the barrier even without a pool: topo's ranks take it together */
    const double best = pool ? cli_probe_best(matvec_sample, &m, CLI_PROBE_WINDOW_S) : 0.0;
    cli_product_free(&m.p);
    return best;
}

void cli_meminfo(double *total_gib, double *avail_gib)
{
    FILE *fp = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb;
    *total_gib = *avail_gib = 0.0;
    while (fp && fgets(line, sizeof(line), fp)) {
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) *total_gib = (double)kb / 1048576.0;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) *avail_gib = (double)kb / 1048576.0;
    }
    if (fp) fclose(fp);
}

void cli_prompt_ids(int32_t *ids, int n, int n_vocab)
{
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(3 + (int64_t)i * 7919 % (n_vocab - 3));
}
