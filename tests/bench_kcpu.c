/*
 * bench_kcpu.c: how fast the kernel table is against the machine's limits.
 *
 *   cc ... -o bench_kcpu tests/bench_kcpu.c libtutti.a -lm   (see the kcpu report)
 *   bench_kcpu [-t threads] [-r reps] [-i isa] [-p n_tok] [-l rows|tile16] [-s 4] [types...]
 *
 * 1. Memory read bandwidth: a plain read loop over 1 GiB, with 1 and with
 *    the requested number of threads; the best of a few passes.
 * 2. Decode: one Llama-3-8B-shaped layer (q 4096x4096, k and v 1024x4096,
 *    o 4096x4096, gate and up 14336x4096, down 4096x14336) per weight type,
 *    n_tok = 1, rows split between the threads as the engine splits them;
 *    reports weight GB/s and its fraction of the measured bandwidth. "q4_K_M"
 *    is the usual mix: Q6_K for v and down, Q4_K elsewhere.
 * 3. Prefill: the same layer with n_tok tokens (default 128); reports
 *    GOPS (2 * rows * n * n_tok per second) and the implied tokens/s of an
 *    8-layer model's matrix products.
 * 4. Compute rate of the packed kernels against the core's peak (x86 with
 *    AVX-512 VNNI only): the clock (a chain of dependent adds), the peak
 *    vpdpbusd rate (independent accumulators, 64 multiply-adds each), then
 *    each KCPU_LAYOUT_TILE16 kernel, one thread, on a 256 x 4096 matrix
 *    held in L2 (compute only) and on a 14336 x 4096 one (from memory), for
 *    1, 2, 4, 8 and 16 tokens: CPU time per row-block (one row x 256
 *    weights) and token, in ns and cycles, and multiply-adds per cycle
 *    against the peak.
 * -s 4 runs section 4 alone.
 * -l tile16 runs sections 2 and 3 on weights packed to KCPU_LAYOUT_TILE16
 * (kcpu_tile16_pack, as the engine packs them at load) where the table has
 * a kernel for the type, as `tutti serve` computes; -p 8 then times the
 * 8-stream decode step.
 * Timings take the best of `reps` runs: the machine may be shared. The
 * bandwidth is measured again before every decode run (over the weights
 * themselves) and the best figure kept, so a busy moment cannot make the
 * kernels look better than the machine's limit.
 */
#include "base/base.h"
#include "kcpu/kcpu.h"
#include "kcpu/kcpu_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* ---- memory bandwidth ---- */

struct bw_job {
    const uint64_t *buf; /* read-only */
    size_t n_words;
    uint64_t sink[64];
};

static void bw_run(void *ctx, int ith, int nth)
{
    struct bw_job *j = ctx;
    int64_t b, e;
    tt_split_range((int64_t)j->n_words, ith, nth, 64, &b, &e);
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (int64_t i = b; i < e; i += 8) {
        s0 += j->buf[i];
        s1 += j->buf[i + 1];
        s2 += j->buf[i + 2];
        s3 += j->buf[i + 3];
        s4 += j->buf[i + 4];
        s5 += j->buf[i + 5];
        s6 += j->buf[i + 6];
        s7 += j->buf[i + 7];
    }
    j->sink[ith % 64] = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}

/* Read bandwidth over `bytes` at p (a multiple of 512), GB/s. */
static double read_bw(struct tt_pool *pool, const void *p, size_t bytes)
{
    struct bw_job j = { .buf = p, .n_words = bytes / 8 };
    const double t = tt_now_s();
    tt_pool_run(pool, bw_run, &j);
    return (double)bytes / (tt_now_s() - t) / 1e9;
}

static double measure_bw(struct tt_pool *pool, int reps)
{
    const size_t bytes = (size_t)1 << 30;
    uint64_t *buf = tt_alloc(bytes);
    if (!buf) return 0;
    memset(buf, 1, bytes);
    double best = 0;
    for (int r = 0; r < reps; r++) best = TT_MAX(best, read_bw(pool, buf, bytes));
    tt_free(buf);
    return best;
}

/* ---- the layer ---- */

enum { N_MAT = 7 };
static const struct {
    const char *name;
    int64_t rows, n;
} layer[N_MAT] = {
    { "q", 4096, 4096 },     { "k", 1024, 4096 },  { "v", 1024, 4096 },   { "o", 4096, 4096 },
    { "gate", 14336, 4096 }, { "up", 14336, 4096 }, { "down", 4096, 14336 },
};

struct mat {
    enum tt_type type;
    enum kcpu_layout layout;
    int64_t rows, n;
    size_t row_bytes;
    uint8_t *w;
};

/* Random levels with sane scales: what matters here is the traffic. */
static void fill_mat(struct mat *m, uint64_t seed)
{
    const struct tt_type_traits *tr = tt_type_get(m->type);
    const size_t total = m->row_bytes * (size_t)m->rows;
    uint64_t s = seed | 1;
    for (size_t i = 0; i + 8 <= total; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        memcpy(m->w + i, &s, 8);
    }
    const tt_f16 d = tt_f32_to_f16(0.01f);
    if (!tr->is_quantized) {
        const size_t es = tr->type_size, n_el = total / es;
        for (size_t i = 0; i < n_el; i++) {
            const float v = (float)((int)(m->w[i * es] % 200) - 100) * 0.01f;
            if (m->type == TT_TYPE_F32) memcpy(m->w + i * 4, &v, 4);
            else if (m->type == TT_TYPE_F16) {
                const tt_f16 h = tt_f32_to_f16(v);
                memcpy(m->w + i * 2, &h, 2);
            } else {
                const tt_bf16 h = tt_f32_to_bf16(v);
                memcpy(m->w + i * 2, &h, 2);
            }
        }
        return;
    }
    const size_t n_blocks = total / tr->type_size;
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *blk = m->w + b * tr->type_size;
        memcpy(m->type == TT_TYPE_Q6_K ? blk + 208 : blk, &d, 2);
        if (m->type == TT_TYPE_Q4_K || m->type == TT_TYPE_Q5_K) memcpy(blk + 2, &d, 2);
    }
}

/* Into KCPU_LAYOUT_TILE16 when the table has a kernel for the type (rows
 * are a multiple of 16 here), on huge pages as the engine asks for them;
 * false if out of memory. */
static bool pack_mat(const struct kcpu_ops *ops, struct mat *m)
{
    if (!kcpu_tile16_wanted(ops, m->type)) return true;
    const size_t bytes = kcpu_tile16_bytes(m->type, m->n, m->rows);
    uint8_t *p = tt_alloc(bytes);
    if (!p) return false;
    const uintptr_t page = 4096, a = ((uintptr_t)p + page - 1) & ~(page - 1);
    const uintptr_t e = ((uintptr_t)p + bytes) & ~(page - 1);
    if (e > a) madvise((void *)a, e - a, MADV_HUGEPAGE); /* before the first touch; advice only */
    kcpu_tile16_pack(m->type, m->n, m->w, m->row_bytes, m->rows, 0, (m->rows + 15) / 16, p);
    tt_free(m->w);
    m->w = p;
    m->layout = KCPU_LAYOUT_TILE16;
    return true;
}

struct mm_job {
    const struct kcpu_ops *ops;
    const struct mat *m;
    const void *act;
    size_t act_row_bytes;
    int64_t n_tok;
    float *out;
};

static void mm_run(void *ctx, int ith, int nth)
{
    const struct mm_job *j = ctx;
    int64_t r0, r1;
    tt_split_range(j->m->rows, ith, nth, 16, &r0, &r1);
    if (r1 > r0)
        kcpu_matmul_get(j->ops, j->m->layout, j->m->type)(j->m->n, j->m->w, j->m->row_bytes, r0,
                                                          r1, j->act, j->act_row_bytes, j->n_tok,
                                                          j->out, j->m->rows);
}

/* Best time of `reps` passes over the layer's matrices; bytes and ops out. */
static double time_layer(struct tt_pool *pool, const struct kcpu_ops *ops, struct mat *mats,
                         int64_t n_tok, int reps, double *bytes, double *ops_count, double *bw)
{
    const int64_t nmax = 14336;
    float *x = tt_alloc((size_t)nmax * sizeof(float));
    float *out = tt_alloc((size_t)(14336 * n_tok) * sizeof(float));
    uint8_t *act[2] = { NULL, NULL }; /* for n = 4096 and n = 14336 */
    size_t arb[2] = { 0, 0 };
    for (int64_t i = 0; i < nmax; i++) x[i] = (float)((i * 7919) % 1000) * 0.002f - 1.0f;
    double best = 1e30;
    *bytes = 0;
    *ops_count = 0;
    for (int i = 0; i < N_MAT; i++) {
        *bytes += (double)mats[i].row_bytes * (double)mats[i].rows;
        *ops_count += 2.0 * (double)mats[i].rows * (double)mats[i].n * (double)n_tok;
    }
    for (int rep = 0; rep < reps; rep++) {
        if (bw) {
            /* the same bytes the decode run reads, just summed */
            double t = 0, b = 0;
            for (int i = 0; i < N_MAT; i++) {
                const size_t sz = (mats[i].row_bytes * (size_t)mats[i].rows) & ~(size_t)511;
                const double t0 = tt_now_s();
                read_bw(pool, mats[i].w, sz);
                t += tt_now_s() - t0;
                b += (double)sz;
            }
            *bw = TT_MAX(*bw, b / t / 1e9);
        }
        double total = 0;
        for (int i = 0; i < N_MAT; i++) {
            const enum tt_type vt = tt_type_get(mats[i].type)->vec_dot_type;
            const int which = mats[i].n == 4096 ? 0 : 1;
            const size_t rb = tt_row_size(vt, mats[i].n);
            if (!act[which] || arb[which] != rb) {
                tt_free(act[which]);
                act[which] = tt_alloc(rb * (size_t)n_tok);
                arb[which] = rb;
                for (int64_t t = 0; t < n_tok; t++) ops->quantize_act[vt](x, act[which] + t * rb, mats[i].n);
            }
            struct mm_job j = { ops, &mats[i], act[which], rb, n_tok, out };
            const double t0 = tt_now_s();
            tt_pool_run(pool, mm_run, &j);
            total += tt_now_s() - t0;
        }
        best = TT_MIN(best, total);
    }
    tt_free(act[0]);
    tt_free(act[1]);
    tt_free(x);
    tt_free(out);
    return best;
}

/* ---- 4. the packed kernels against the core's peak ---- */

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if defined(__x86_64__)
#include <immintrin.h>

/* The core clock in GHz: a chain of dependent adds, one cycle each; best of
 * three (a busy moment only makes it look slower). */
static double clock_ghz(void)
{
    const long n = 100000000;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        uint64_t x = 0;
        const double t = thread_cpu_s();
        for (long i = 0; i < n; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
        best = TT_MAX(best, 4.0 * (double)n / (thread_cpu_s() - t) / 1e9);
    }
    return best;
}

/* Peak vpdpbusd rate of one core, multiply-adds per ns: 16 independent
 * accumulators (more than latency x throughput), operands opaque to the
 * compiler. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double dpbusd_macs_per_ns(void)
{
    const long n = 20000000;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        __m512i acc[16];
        __m512i w = _mm512_set1_epi8(3), a = _mm512_set1_epi8(5);
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_epi32(i);
        const double t = thread_cpu_s();
        for (long it = 0; it < n; it++) {
            __asm__ volatile("" : "+v"(w), "+v"(a));
            _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
                acc[i] = _mm512_dpbusd_epi32(acc[i], w, a);
        }
        const double dt = thread_cpu_s() - t;
        int sink = 0;
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
            sink += _mm512_reduce_add_epi32(acc[i]);
        __asm__ volatile("" : : "r"(sink));
        best = TT_MAX(best, 64.0 * 16.0 * (double)n / dt / 1e9);
    }
    return best;
}

/* Clock (GHz) and peak multiply-adds per cycle; false where not measurable. */
static bool core_peak(double *ghz, double *macs_per_cycle)
{
    if (!kcpu_get_isa(KCPU_ISA_AVX512)) return false;
    *ghz = clock_ghz();
    *macs_per_cycle = dpbusd_macs_per_ns() / *ghz;
    return true;
}
#else
static bool core_peak(double *ghz, double *macs_per_cycle)
{
    (void)ghz;
    (void)macs_per_cycle;
    return false;
}
#endif

/* One packed kernel, one thread, rows x 4096 (256 rows stay in L2): CPU time
 * per row-block (256 weights of one row) and token for 1..16 tokens, best of
 * 5 runs of `calls` calls. */
static void kernel_rate(const struct kcpu_ops *ops, enum tt_type type, int64_t rows, int64_t n,
                        int calls, double ghz, double peak)
{
    static const int64_t toks[] = { 1, 2, 4, 8, 16 };
    const int64_t nt_max = 16;
    const enum tt_type vt = tt_type_get(type)->vec_dot_type;
    struct mat m = { type, KCPU_LAYOUT_ROWS, rows, n, tt_row_size(type, n), NULL };
    const size_t arb = tt_row_size(vt, n);
    m.w = tt_alloc(m.row_bytes * (size_t)rows);
    uint8_t *act = tt_alloc(arb * (size_t)nt_max);
    float *x = tt_alloc((size_t)n * sizeof(float));
    float *out = tt_alloc((size_t)(rows * nt_max) * sizeof(float));
    if (!m.w || !act || !x || !out) goto done;
    fill_mat(&m, 99);
    if (!pack_mat(ops, &m) || m.layout != KCPU_LAYOUT_TILE16) goto done;
    for (int64_t t = 0; t < nt_max; t++) {
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)(((i + 31 * t) * 7919) % 1000) * 0.002f - 1.0f;
        ops->quantize_act[vt](x, act + (size_t)t * arb, n);
    }
    const kcpu_matmul_fn fn = kcpu_matmul_get(ops, m.layout, type);
    const size_t bytes = m.row_bytes * (size_t)rows;
    printf("%-5s %5lld x %5lld %-5s |", tt_type_name(type), (long long)rows, (long long)n,
           bytes < ((size_t)1 << 20) ? "(L2)" : bytes < ((size_t)16 << 20) ? "(L3)" : "(mem)");
    for (size_t k = 0; k < TT_ARRAY_LEN(toks); k++) {
        double best = 1e30;
        for (int r = 0; r < 5; r++) {
            const double t = thread_cpu_s();
            for (int c = 0; c < calls; c++)
                fn(n, m.w, m.row_bytes, 0, rows, act, arb, toks[k], out, rows);
            best = TT_MIN(best, thread_cpu_s() - t);
        }
        const double ns = best / calls / ((double)rows * (double)(n / 256) * (double)toks[k]) * 1e9;
        if (ghz > 0)
            printf(" %2lld: %5.2f ns %5.2f cyc %4.1f MAC/c %3.0f%% |", (long long)toks[k], ns,
                   ns * ghz, 256.0 / (ns * ghz), 100.0 * 256.0 / (ns * ghz) / peak);
        else
            printf(" %2lld: %5.2f ns |", (long long)toks[k], ns);
    }
    printf("\n");
done:
    tt_free(m.w);
    tt_free(act);
    tt_free(x);
    tt_free(out);
}

static void kernel_rates(const struct kcpu_ops *ops)
{
    double ghz = 0, peak = 0;
    if (core_peak(&ghz, &peak))
        printf("core: %.2f GHz, peak vpdpbusd %.1f multiply-adds per cycle (%.0f per ns)\n", ghz,
               peak, peak * ghz);
    printf("packed kernels, 1 thread, CPU time per row-block (256 weights) and token:\n");
    for (int type = 0; type < TT_TYPE_COUNT; type++) {
        if (!kcpu_tile16_wanted(ops, (enum tt_type)type)) continue;
        kernel_rate(ops, (enum tt_type)type, 256, 4096, 100, ghz, peak);
        kernel_rate(ops, (enum tt_type)type, 2048, 4096, 12, ghz, peak);
        kernel_rate(ops, (enum tt_type)type, 14336, 4096, 2, ghz, peak);
        kernel_rate(ops, (enum tt_type)type, 4096, 14336, 2, ghz, peak);
    }
}

static int parse_type(const char *s, enum tt_type types[N_MAT])
{
    const bool mix = strcmp(s, "q4_K_M") == 0 || strcmp(s, "q4_k_m") == 0;
    const int t = mix ? TT_TYPE_Q4_K : tt_type_from_name(s);
    if (t < 0 || !tt_type_get((uint32_t)t) || t == TT_TYPE_Q8_K) return -1;
    for (int i = 0; i < N_MAT; i++) {
        types[i] = (enum tt_type)t;
        if (mix && (i == 2 || i == 6)) types[i] = TT_TYPE_Q6_K;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int n_threads = 2, reps = 5;
    int64_t n_tok_prefill = 128;
    const char *isa = NULL;
    bool tile16 = false;
    int only_section = 0;
    const char *deflt[] = { "q4_K_M", "q4_K", "q5_K", "q6_K", "q8_0", "q4_0", "f16", "bf16", "f32" };
    const char **names = deflt;
    int n_names = (int)TT_ARRAY_LEN(deflt);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i += 2) {
        if (i + 1 >= argc) break;
        if (!strcmp(argv[i], "-t")) n_threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-r")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-i")) isa = argv[i + 1];
        else if (!strcmp(argv[i], "-p")) n_tok_prefill = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "-l")) tile16 = !strcmp(argv[i + 1], "tile16");
        else if (!strcmp(argv[i], "-s")) only_section = atoi(argv[i + 1]);
    }
    if (i < argc) {
        names = (const char **)(argv + i);
        n_names = argc - i;
    }
    tt_base_init();
    const struct kcpu_ops *ops = kcpu_select(isa);
    if (only_section == 4) {
        kernel_rates(ops);
        return 0;
    }
    struct tt_pool *pool1 = tt_pool_create(1), *pool = tt_pool_create(n_threads);
    if (!pool || !pool1) return 1;
    const double bw1 = measure_bw(pool1, 3), bw = measure_bw(pool, 3);
    printf("isa %s, %d threads, %s weights\n", kcpu_isa_name(ops->isa), n_threads,
           tile16 ? "tile16 (packed where the table can)" : "row");
    printf("memory read bandwidth: %.1f GB/s (1 thread), %.1f GB/s (%d threads)\n", bw1, bw, n_threads);
    printf("%-8s | %-37s | %-34s\n", "type", "decode n_tok=1: GB/s of read GB/s", "prefill");
    for (int k = 0; k < n_names; k++) {
        enum tt_type types[N_MAT];
        if (parse_type(names[k], types) < 0) {
            fprintf(stderr, "unknown type %s\n", names[k]);
            continue;
        }
        struct mat mats[N_MAT];
        bool ok = true;
        for (int m = 0; m < N_MAT; m++) {
            mats[m].type = types[m];
            mats[m].layout = KCPU_LAYOUT_ROWS;
            mats[m].rows = layer[m].rows;
            mats[m].n = layer[m].n;
            mats[m].row_bytes = tt_row_size(types[m], layer[m].n);
            mats[m].w = tt_alloc(mats[m].row_bytes * (size_t)mats[m].rows);
            if (!mats[m].w) ok = false;
            else fill_mat(&mats[m], 1234 + (uint64_t)m);
            if (ok && tile16 && !pack_mat(ops, &mats[m])) ok = false;
        }
        if (ok) {
            double bytes, opsn, lbw = 0;
            const double td = time_layer(pool, ops, mats, 1, reps, &bytes, &opsn, &lbw);
            const double gbs = bytes / td / 1e9;
            printf("%-8s | %6.1f GB/s of %5.1f %4.0f%% %6.2f ms | ", names[k], gbs, lbw, 100.0 * gbs / lbw, td * 1e3);
            fflush(stdout);
            const double tp = time_layer(pool, ops, mats, n_tok_prefill, TT_MAX(1, reps / 2), &bytes, &opsn, NULL);
            printf("%6.0f GOPS n_tok=%lld, %5.0f tok/s (8 layers)\n", opsn / tp / 1e9,
                   (long long)n_tok_prefill, (double)n_tok_prefill / (8.0 * tp));
        }
        for (int m = 0; m < N_MAT; m++) tt_free(mats[m].w);
    }
    kernel_rates(ops);
    tt_pool_destroy(pool);
    tt_pool_destroy(pool1);
    return 0;
}
