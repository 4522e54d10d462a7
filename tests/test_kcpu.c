/*
 * test_kcpu.c: every kernel table this CPU runs against the scalar table.
 *
 * For each table (flavours included: avx512 and avx512+bf16, neon and
 * neon+dotprod) three cases: activation quantization must give the same
 * bytes as the reference (the goldens depend on activation rounding);
 * every weight type's matrix product must agree with the reference within a
 * tight relative tolerance, on shapes that exercise row tails (r0, r1 not
 * multiples of any row block), every batch size 1..16 and token tails
 * (n_tok = 17, 33, 128), short and long rows, padded row strides, and must
 * write nothing outside its [r0, r1) x [0, n_tok) window; the attention helpers likewise. A table
 * the CPU cannot run, or that this build lacks, is skipped with the reason.
 */
#include "kcpu/kcpu.h"
#include "kcpu/kcpu_impl.h"
#include "test.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- helpers ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* Uniform in [-1, 1). */
static float rnd_f(void)
{
    return (float)((double)rnd_u32() / 2147483648.0 - 1.0);
}

/* Roughly normal, with occasional outliers as real activations have. */
static float rnd_act(void)
{
    float v = rnd_f() + rnd_f() + rnd_f();
    if (rnd_u32() % 97 == 0) v *= 12.0f;
    return v;
}

static const struct kcpu_ops *find_variant(const char *want, const char **why)
{
    const char *name;
    bool runnable;
    for (int i = 0; kcpu_variant(i, &name, &runnable); i++) {
        if (strcmp(name, want) != 0) continue;
        if (!runnable) {
            *why = "this CPU lacks the instructions";
            return NULL;
        }
        return kcpu_variant(i, NULL, NULL);
    }
    *why = "not compiled for this architecture";
    return NULL;
}

/* Memory whose last byte is followed by an inaccessible page, so a kernel
 * that reads even one byte past the end of its weights or activations
 * (a vector load, a gather) crashes the test instead of passing by luck.
 * Free with guarded_free(p, size). */
static void *guarded_alloc(size_t size)
{
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    const size_t span = (size + pg - 1) / pg * pg;
    uint8_t *base = mmap(NULL, span + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return NULL;
    mprotect(base + span, pg, PROT_NONE);
    return base + span - size;
}

static void guarded_free(void *p, size_t size)
{
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    const size_t span = (size + pg - 1) / pg * pg;
    munmap((uint8_t *)p + size - span, span + pg);
}

/* ---- activation quantization: byte equality ---- */

/* Inputs that reach every rounding path: several magnitudes, exact ties
 * (a block whose max is 127 makes the multiplier 1, so half-integers are
 * ties), duplicated +-max (first one wins in Q8_K), zero blocks, NaN, inf,
 * subnormals. n is a multiple of 256 plus `extra`. */
static void fill_act_specials(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float scale = (i / 256) % 3 == 0 ? 1e-3f : (i / 256) % 3 == 1 ? 1.0f : 700.0f;
        x[i] = rnd_act() * scale;
    }
    if (n < 4 * 256) return;
    for (int i = 0; i < 256; i++) x[i] = (float)((int)(rnd_u32() % 255) - 127) + 0.5f; /* ties */
    x[0] = 127.0f;
    x[32] = 127.0f; /* every Q8_0 block of the tie region needs its own max */
    for (int b = 2; b < 8; b++) x[32 * b] = -127.0f;
    memset(x + 256, 0, 256 * sizeof(float)); /* a zero block */
    x[512 + 10] = -3.0f;                    /* -max first, then +max */
    x[512 + 200] = 3.0f;
    for (int i = 512; i < 768; i++) {
        if (i != 512 + 10 && i != 512 + 200) x[i] = rnd_f() * 2.9f;
    }
    x[768 + 5] = 1e-41f;  /* subnormal */
    x[768 + 6] = -7e-39f; /* subnormal */
    x[768 + 7] = 65520.0f; /* rounds to f16 inf */
    x[768 + 8] = 3.3895e38f;
}

static void fill_act_nonfinite(float *x, int64_t n)
{
    if (n < 6 * 256) return;
    union { uint32_t u; float f; } nan = { .u = 0x7fc01234u }, snan = { .u = 0x7f800001u };
    x[1024 + 3] = nan.f;
    x[1024 + 40] = snan.f;
    x[1280 + 17] = 1.0f / 0.0f; /* inf: amax inf, every level 0 */
}

static int check_quantize(const struct kcpu_ops *ops, enum tt_type type, int64_t n, bool nonfinite)
{
    /* input and output end at guard pages: no read or write past them */
    const size_t bytes = tt_row_size(type, n);
    float *x = guarded_alloc((size_t)n * sizeof(float));
    uint8_t *want = malloc(bytes), *got = guarded_alloc(bytes);
    fill_act_specials(x, n);
    if (nonfinite) fill_act_nonfinite(x, n);
    memset(want, 0xAB, bytes);
    memset(got, 0xAB, bytes);
    kcpu_ops_scalar.quantize_act[type](x, want, n);
    ops->quantize_act[type](x, got, n);
    int bad = memcmp(want, got, bytes) != 0;
    if (bad) {
        for (size_t i = 0; i < bytes; i++) {
            if (want[i] != got[i]) {
                fprintf(stderr, "  quantize %s n=%lld: first difference at byte %zu: %02x vs %02x\n",
                        tt_type_name(type), (long long)n, i, want[i], got[i]);
                break;
            }
        }
    }
    guarded_free(x, (size_t)n * sizeof(float));
    free(want);
    guarded_free(got, bytes);
    return bad;
}

static void run_quantize(const char *variant)
{
    const char *why;
    const struct kcpu_ops *ops = find_variant(variant, &why);
    if (!ops) {
        TEST_SKIP("%s: %s", variant, why);
        return;
    }
    static const enum tt_type types[] = { TT_TYPE_F32, TT_TYPE_F16, TT_TYPE_BF16, TT_TYPE_Q8_0,
                                          TT_TYPE_Q8_K };
    for (size_t i = 0; i < TT_ARRAY_LEN(types); i++) {
        const enum tt_type t = types[i];
        CHECK(ops->quantize_act[t] != NULL);
        if (!ops->quantize_act[t]) continue;
        const int bs = tt_type_get(t)->block_size;
        const int64_t ns[] = { 256, 2048, 4096, 256 * 7 + (bs == 1 ? 13 : 0) };
        for (size_t j = 0; j < TT_ARRAY_LEN(ns); j++) {
            CHECK_EQ_INT(check_quantize(ops, t, ns[j], false), 0);
            if (t != TT_TYPE_F32) CHECK_EQ_INT(check_quantize(ops, t, ns[j], true), 0);
        }
    }
}

/* ---- matrix products ---- */

/* Weights: reference-quantized random rows, or (raw) random bytes with sane
 * scales, which reach extreme levels and scales the quantizer rarely makes. */
static void fill_weights(enum tt_type type, uint8_t *w, int64_t rows, int64_t n, size_t stride,
                         bool raw)
{
    const struct tt_type_traits *tr = tt_type_get(type);
    const size_t row = tt_row_size(type, n);
    float *tmp = malloc((size_t)n * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *wr = w + r * stride;
        for (int64_t k = 0; k < n; k++) tmp[k] = rnd_f() * (1.0f + (float)(r % 3));
        tr->from_float(tmp, wr, n);
        if (r + 1 < rows) memset(wr + row, 0xEE, stride - row); /* padding must not matter */
        if (!raw || !tr->is_quantized) continue;
        for (size_t i = 0; i < row; i++) wr[i] = (uint8_t)rnd_u32();
        for (int64_t b = 0; b < n / tr->block_size; b++) {
            uint8_t *blk = wr + b * tr->type_size;
            const tt_f16 d = tt_f32_to_f16((rnd_u32() & 1 ? 1.0f : -1.0f) * (0.001f + 0.01f * (rnd_f() + 1.0f)));
            const tt_f16 dm = tt_f32_to_f16(0.001f + 0.01f * (rnd_f() + 1.0f));
            if (type == TT_TYPE_Q6_K) {
                memcpy(blk + 208, &d, 2);
            } else {
                memcpy(blk, &d, 2);
                if (type == TT_TYPE_Q4_K || type == TT_TYPE_Q5_K) memcpy(blk + 2, &dm, 2);
            }
        }
    }
    free(tmp);
}

/* Activations in the vec_dot type: reference-quantized random floats, or
 * (raw, Q8 only) random levels over the full int8 range with d = 1/64. */
static void fill_acts(enum tt_type vt, uint8_t *a, int64_t n_tok, int64_t n, size_t stride, bool raw)
{
    float *tmp = malloc((size_t)n * sizeof(float));
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t k = 0; k < n; k++) tmp[k] = rnd_act();
        kcpu_ops_scalar.quantize_act[vt](tmp, a + t * stride, n);
        if (!raw) continue;
        if (vt == TT_TYPE_Q8_K) {
            struct block_q8_K *y = (struct block_q8_K *)(a + t * stride);
            for (int64_t b = 0; b < n / QK_K; b++) {
                y[b].d = 1.0f / 64;
                for (int g = 0; g < QK_K / 16; g++) {
                    int s = 0;
                    for (int j = 0; j < 16; j++) {
                        y[b].qs[16 * g + j] = (int8_t)(rnd_u32() & 0xFF);
                        s += y[b].qs[16 * g + j];
                    }
                    y[b].bsums[g] = (int16_t)s;
                }
            }
        } else if (vt == TT_TYPE_Q8_0) {
            struct block_q8_0 *y = (struct block_q8_0 *)(a + t * stride);
            for (int64_t b = 0; b < n / QK8_0; b++) {
                y[b].d = tt_f32_to_f16(1.0f / 64);
                for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t)(rnd_u32() & 0xFF);
            }
        }
    }
    free(tmp);
}

/* sum_k |w_k * a_k|: the scale of the float rounding a reordered sum may
 * show. */
static double abs_dot(enum tt_type wt, enum tt_type vt, const uint8_t *w, const uint8_t *a,
                      int64_t n, float *wf, float *af)
{
    tt_type_get(wt)->to_float(w, wf, n);
    tt_type_get(vt)->to_float(a, af, n);
    double s = 0;
    for (int64_t k = 0; k < n; k++) s += fabs((double)wf[k] * af[k]);
    return s;
}

struct shape {
    int64_t n, rows, r0, r1, n_tok;
    int pad; /* extra bytes between weight rows */
};

/* `layout` KCPU_LAYOUT_TILE16: the weights are packed (kcpu_tile16_pack,
 * into memory that ends at a guard page) and ops->matmul_tile16 runs on
 * them from r0 rounded down to a multiple of 16, against the scalar product
 * of the rows. */
static int check_matmul(const struct kcpu_ops *ops, enum tt_type wt, struct shape s, bool raw,
                        enum kcpu_layout layout)
{
    if (layout == KCPU_LAYOUT_TILE16) s.r0 = s.r0 / 16 * 16;
    const enum tt_type vt = tt_type_get(wt)->vec_dot_type;
    const size_t wrow = tt_row_size(wt, s.n), arow = tt_row_size(vt, s.n);
    const size_t wstride = wrow + (size_t)s.pad, astride = arow + 8;
    const int64_t ldo = s.rows + 3;
    /* The last row and token end exactly at a guard page. */
    const size_t wbytes = wstride * (size_t)(s.rows - 1) + wrow;
    const size_t abytes = astride * (size_t)(s.n_tok - 1) + arow;
    uint8_t *w = guarded_alloc(wstride * (size_t)s.rows);
    uint8_t *a = guarded_alloc(astride * (size_t)s.n_tok);
    w = w + wstride * (size_t)s.rows - wbytes; /* drop the last row's padding */
    a = a + astride * (size_t)s.n_tok - abytes;
    float *want = malloc((size_t)(ldo * s.n_tok) * sizeof(float));
    float *got = malloc((size_t)(ldo * s.n_tok) * sizeof(float));
    float *wf = malloc((size_t)s.n * sizeof(float)), *af = malloc((size_t)s.n * sizeof(float));
    fill_weights(wt, w, s.rows, s.n, wstride, raw);
    fill_acts(vt, a, s.n_tok, s.n, astride, raw);
    const float sentinel = -12345.5f;
    for (int64_t i = 0; i < ldo * s.n_tok; i++) want[i] = got[i] = sentinel;
    kcpu_ops_scalar.matmul[wt](s.n, w, wstride, s.r0, s.r1, a, astride, s.n_tok, want, ldo);
    if (layout == KCPU_LAYOUT_TILE16) {
        const size_t pbytes = kcpu_tile16_bytes(wt, s.n, s.rows);
        uint8_t *packed = guarded_alloc(pbytes);
        kcpu_tile16_pack(wt, s.n, w, wstride, s.rows, 0, (s.rows + 15) / 16, packed);
        kcpu_matmul_get(ops, layout, wt)(s.n, packed, wrow, s.r0, s.r1, a, astride, s.n_tok, got, ldo);
        guarded_free(packed, pbytes);
    } else {
        ops->matmul[wt](s.n, w, wstride, s.r0, s.r1, a, astride, s.n_tok, got, ldo);
    }
    int bad = 0;
    for (int64_t t = 0; t < s.n_tok && bad < 3; t++) {
        for (int64_t r = 0; r < ldo && bad < 3; r++) {
            const float g = got[t * ldo + r], e = want[t * ldo + r];
            if (r < s.r0 || r >= s.r1) {
                if (g != sentinel) {
                    fprintf(stderr, "  %s: wrote outside its rows: t=%lld r=%lld\n",
                            tt_type_name(wt), (long long)t, (long long)r);
                    bad++;
                }
                continue;
            }
            const double tol = 1e-5 * abs_dot(wt, vt, w + r * wstride, a + t * astride, s.n, wf, af) + 1e-30;
            if (!(fabs((double)g - e) <= tol)) {
                fprintf(stderr,
                        "  %s%s%s n=%lld rows=[%lld,%lld) n_tok=%lld: out[t=%lld][r=%lld] = %.9g, "
                        "reference %.9g (tolerance %.3g)\n",
                        tt_type_name(wt), raw ? " (raw)" : "",
                        layout == KCPU_LAYOUT_TILE16 ? " tile16" : "", (long long)s.n, (long long)s.r0,
                        (long long)s.r1, (long long)s.n_tok, (long long)t, (long long)r, g, e, tol);
                bad++;
            }
        }
    }
    guarded_free(w - (wstride * (size_t)s.rows - wbytes), wstride * (size_t)s.rows);
    guarded_free(a - (astride * (size_t)s.n_tok - abytes), astride * (size_t)s.n_tok);
    free(want);
    free(got);
    free(wf);
    free(af);
    return bad;
}

static void run_matmul(const char *variant)
{
    const char *why;
    const struct kcpu_ops *ops = find_variant(variant, &why);
    if (!ops) {
        TEST_SKIP("%s: %s", variant, why);
        return;
    }
    static const enum tt_type types[] = { TT_TYPE_F32,  TT_TYPE_F16,  TT_TYPE_BF16, TT_TYPE_Q4_0,
                                          TT_TYPE_Q8_0, TT_TYPE_Q4_K, TT_TYPE_Q5_K, TT_TYPE_Q6_K };
    /* n values are multiples of 256 (every type) unless a type allows less. */
    static const struct shape shapes[] = {
        { 256, 5, 0, 5, 1, 0 },      { 512, 37, 3, 35, 1, 0 },   { 4096, 21, 1, 20, 1, 0 },
        { 4352, 9, 0, 9, 2, 0 },     { 1024, 19, 2, 19, 3, 32 }, { 768, 70, 5, 67, 8, 0 },
        { 2048, 40, 0, 40, 5, 0 },   { 1280, 23, 4, 23, 17, 0 }, { 256, 50, 16, 47, 33, 0 },
        { 512, 35, 1, 34, 6, 16 },   { 4096, 18, 0, 17, 4, 0 },  { 256, 3, 1, 2, 128, 0 },
        /* rows longer than one pass of the row kernels' activation buffers */
        { 8448, 5, 0, 5, 1, 0 },     { 4608, 7, 1, 6, 4, 0 },    { 16640, 3, 0, 3, 1, 0 },
        { 16640, 4, 1, 3, 3, 0 },
    };
    static const struct shape small[] = {
        /* Q4_0 / Q8_0: rows of 32-blocks not a multiple of 8 blocks */
        { 32, 7, 0, 7, 1, 0 }, { 96, 9, 2, 9, 3, 0 }, { 288, 33, 0, 33, 17, 2 }, { 160, 17, 1, 16, 6, 0 },
    };
    static const struct shape tiny[] = {
        /* float types: any n */
        { 1, 4, 0, 4, 1, 0 }, { 15, 5, 0, 5, 2, 0 }, { 17, 9, 3, 8, 7, 4 }, { 100, 6, 0, 6, 17, 0 },
        { 4099, 5, 1, 5, 3, 0 },
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(types); i++) {
        const enum tt_type wt = types[i];
        const struct tt_type_traits *tr = tt_type_get(wt);
        CHECK(ops->matmul[wt] != NULL);
        if (!ops->matmul[wt]) continue;
        for (size_t j = 0; j < TT_ARRAY_LEN(shapes); j++) {
            CHECK_EQ_INT(check_matmul(ops, wt, shapes[j], false, KCPU_LAYOUT_ROWS), 0);
            if (tr->is_quantized) CHECK_EQ_INT(check_matmul(ops, wt, shapes[j], true, KCPU_LAYOUT_ROWS), 0);
        }
        /* Every batch size of batched decode and of short prompt chunks,
         * 1..16 (row-kernel passes of up to four tokens, the few-token tiles
         * and their token tails), on rows of 18 chunks of 256 (longer than
         * one 16-chunk piece of the few-token tiles), row tails at both
         * ends, padded rows on odd sizes. */
        for (int64_t nt = 1; nt <= 16; nt++) {
            const struct shape batch = { 4608, 23, 3, 22, nt, (int)(nt % 2) * 16 };
            CHECK_EQ_INT(check_matmul(ops, wt, batch, false, KCPU_LAYOUT_ROWS), 0);
            if (tr->is_quantized) CHECK_EQ_INT(check_matmul(ops, wt, batch, true, KCPU_LAYOUT_ROWS), 0);
        }
        if (tr->block_size == 32) {
            for (size_t j = 0; j < TT_ARRAY_LEN(small); j++) {
                CHECK_EQ_INT(check_matmul(ops, wt, small[j], false, KCPU_LAYOUT_ROWS), 0);
                CHECK_EQ_INT(check_matmul(ops, wt, small[j], true, KCPU_LAYOUT_ROWS), 0);
            }
        }
        if (tr->block_size == 1) {
            for (size_t j = 0; j < TT_ARRAY_LEN(tiny); j++)
                CHECK_EQ_INT(check_matmul(ops, wt, tiny[j], false, KCPU_LAYOUT_ROWS), 0);
        }
    }
}

/* KCPU_LAYOUT_TILE16 products, for every type the table packs: every batch
 * size 1..16 and the many-token tails, row counts that leave a part group
 * (padded with zero rows), ranges that start at a group and end anywhere,
 * rows padded in the source, rows longer than one piece of the few-token
 * kernel (n = 16640, 65 chunks, with 1, 5, 8 and 12 tokens). A type the table does not
 * pack must not be asked for (kcpu_tile16_wanted says no). */
static void run_matmul_tile16(const char *variant)
{
    const char *why;
    const struct kcpu_ops *ops = find_variant(variant, &why);
    if (!ops) {
        TEST_SKIP("%s: %s", variant, why);
        return;
    }
    static const struct shape shapes[] = {
        { 256, 5, 0, 5, 1, 0 },     { 512, 37, 16, 35, 1, 0 },  { 4096, 21, 0, 20, 1, 0 },
        { 1024, 19, 2, 19, 3, 32 }, { 768, 70, 5, 67, 8, 0 },   { 1280, 23, 4, 23, 17, 0 },
        { 256, 50, 16, 47, 33, 0 }, { 256, 3, 0, 2, 128, 0 },   { 16640, 3, 0, 3, 1, 0 },
        { 16640, 17, 0, 17, 5, 0 }, { 2048, 600, 16, 589, 130, 0 },
        /* batched decode on long rows (several pieces of the few-token
         * driver, whose 8-token tiles bring the next block into L1) */
        { 16640, 41, 16, 39, 8, 16 }, { 16640, 35, 0, 35, 12, 0 },
    };
    int packed = 0;
    for (int wt = 0; wt < TT_TYPE_COUNT; wt++) {
        if (!kcpu_tile16_wanted(ops, (enum tt_type)wt)) continue;
        packed++;
        for (size_t j = 0; j < TT_ARRAY_LEN(shapes); j++) {
            CHECK_EQ_INT(check_matmul(ops, (enum tt_type)wt, shapes[j], false, KCPU_LAYOUT_TILE16), 0);
            CHECK_EQ_INT(check_matmul(ops, (enum tt_type)wt, shapes[j], true, KCPU_LAYOUT_TILE16), 0);
        }
        for (int64_t nt = 1; nt <= 16; nt++) {
            const struct shape batch = { 4608, 23 + nt % 3, 0, 22 + nt % 3, nt, (int)(nt % 2) * 16 };
            CHECK_EQ_INT(check_matmul(ops, (enum tt_type)wt, batch, false, KCPU_LAYOUT_TILE16), 0);
            CHECK_EQ_INT(check_matmul(ops, (enum tt_type)wt, batch, true, KCPU_LAYOUT_TILE16), 0);
        }
    }
    if (!packed) TEST_SKIP("%s packs no type (reads rows only)", variant);
    CHECK(!kcpu_tile16_wanted(&kcpu_ops_scalar, TT_TYPE_Q4_K));
}

/* ---- attention helpers ---- */

/* The one-head ops give bit for bit what the loops over the same table's
 * dot_f16_f32 and axpy_f16 give (kcpu_*_f16_loop) (register paths: head dims 64 and
 * 128; others fall back), over rows laid out with a stride (several KV
 * heads per cached row). */
static void check_heads_f16(const struct kcpu_ops *ops)
{
    static const int64_t hds[] = { 64, 128, 96, 8 };
    static const int64_t n_poss[] = { 1, 2, 31, 200 };
    for (size_t a = 0; a < TT_ARRAY_LEN(hds); a++) {
        for (size_t b = 0; b < TT_ARRAY_LEN(n_poss); b++) {
            const int64_t hd = hds[a], n_pos = n_poss[b];
            const size_t stride = (size_t)hd * 3; /* three KV heads per row; the second one is used */
            tt_f16 *rows = malloc(sizeof(tt_f16) * stride * (size_t)n_pos);
            float *q = malloc(sizeof(float) * (size_t)hd), *w = malloc(sizeof(float) * (size_t)n_pos);
            float *s1 = malloc(sizeof(float) * (size_t)n_pos), *s2 = malloc(sizeof(float) * (size_t)n_pos);
            float *o1 = malloc(sizeof(float) * (size_t)hd), *o2 = malloc(sizeof(float) * (size_t)hd);
            for (size_t i = 0; i < stride * (size_t)n_pos; i++) rows[i] = tt_f32_to_f16(rnd_act());
            for (int64_t i = 0; i < hd; i++) q[i] = rnd_act();
            for (int64_t j = 0; j < n_pos; j++) w[j] = rnd_f() + 1.5f;
            const tt_f16 *head = rows + hd;
            const float max1 = kcpu_scores_f16_loop(ops, hd, n_pos, head, stride, q, 0.125f, s1);
            const float max2 = ops->scores_f16(hd, n_pos, head, stride, q, 0.125f, s2);
            CHECK(max2 == max1);
            CHECK(memcmp(s1, s2, sizeof(float) * (size_t)n_pos) == 0);
            kcpu_mix_f16_loop(ops, hd, n_pos, head, stride, w, 0.3f, o1);
            ops->mix_f16(hd, n_pos, head, stride, w, 0.3f, o2);
            CHECK(memcmp(o1, o2, sizeof(float) * (size_t)hd) == 0);
            free(rows);
            free(q);
            free(w);
            free(s1);
            free(s2);
            free(o1);
            free(o2);
        }
    }
}

static void run_attention(const char *variant)
{
    const char *why;
    const struct kcpu_ops *ops = find_variant(variant, &why);
    if (!ops) {
        TEST_SKIP("%s: %s", variant, why);
        return;
    }
    static const int64_t ns[] = { 1, 7, 16, 33, 64, 128, 1000 };
    for (size_t i = 0; i < TT_ARRAY_LEN(ns); i++) {
        const int64_t n = ns[i];
        tt_f16 *h = malloc((size_t)n * sizeof(tt_f16));
        float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
        float *y1 = malloc((size_t)n * sizeof(float)), *y2 = malloc((size_t)n * sizeof(float));
        double s16 = 0, s32 = 0;
        for (int64_t k = 0; k < n; k++) {
            h[k] = tt_f32_to_f16(rnd_act());
            x[k] = rnd_act();
            y[k] = rnd_act();
            s16 += fabs((double)tt_f16_to_f32(h[k]) * y[k]);
            s32 += fabs((double)x[k] * y[k]);
        }
        CHECK_NEAR(ops->dot_f16_f32(n, h, y), kcpu_ops_scalar.dot_f16_f32(n, h, y), 1e-5 * s16 + 1e-30);
        CHECK_NEAR(ops->dot_f32(n, x, y), kcpu_ops_scalar.dot_f32(n, x, y), 1e-5 * s32 + 1e-30);
        const float alpha = 0.37f;
        memcpy(y1, y, (size_t)n * sizeof(float));
        memcpy(y2, y, (size_t)n * sizeof(float));
        kcpu_ops_scalar.axpy_f16(n, alpha, h, y1);
        ops->axpy_f16(n, alpha, h, y2);
        for (int64_t k = 0; k < n; k++) CHECK_NEAR(y2[k], y1[k], 1e-6 * (fabsf(y1[k]) + fabsf(y[k])) + 1e-30);
        memcpy(y1, y, (size_t)n * sizeof(float));
        memcpy(y2, y, (size_t)n * sizeof(float));
        kcpu_ops_scalar.axpy_f32(n, alpha, x, y1);
        ops->axpy_f32(n, alpha, x, y2);
        for (int64_t k = 0; k < n; k++) CHECK_NEAR(y2[k], y1[k], 1e-6 * (fabsf(y1[k]) + fabsf(y[k])) + 1e-30);
        free(h);
        free(x);
        free(y);
        free(y1);
        free(y2);
    }
    if (ops->scores_f16) check_heads_f16(ops);
}

/* ---- dispatch ---- */

static void test_dispatch(void)
{
    const struct kcpu_ops *best = kcpu_get();
    CHECK(best != NULL);
    CHECK(kcpu_get() == best);
    CHECK(kcpu_get_isa(KCPU_ISA_SCALAR) == &kcpu_ops_scalar);
    CHECK_STR(kcpu_isa_name(KCPU_ISA_AVX512), "avx512");
    CHECK_STR(kcpu_isa_name(KCPU_ISA_COUNT), "unknown");
    CHECK(kcpu_select("scalar") == &kcpu_ops_scalar);
    CHECK(kcpu_select(NULL) == kcpu_select(""));
    const enum tt_log_level lvl = tt_log_get_level();
    tt_log_set_level(TT_LOG_ERROR); /* the two refusals below warn */
    CHECK(kcpu_select("no-such-isa") == kcpu_select(NULL));
    const bool x86 = kcpu_get_isa(KCPU_ISA_NEON) == NULL;
    CHECK(kcpu_select(x86 ? "neon" : "avx2") == kcpu_select(NULL));
    tt_log_set_level(lvl);
    /* Every table fills every slot the engine uses. */
    const char *name;
    bool runnable;
    for (int i = 0; kcpu_variant(i, &name, &runnable); i++) {
        const struct kcpu_ops *ops = kcpu_variant(i, NULL, NULL);
        CHECK(ops->dot_f16_f32 && ops->dot_f32 && ops->axpy_f16 && ops->axpy_f32);
        if (runnable) CHECK(kcpu_get_isa(ops->isa) != NULL);
    }
}

#define VARIANT_CASES(v, id)                                               \
    static void test_quantize_##id(void) { run_quantize(v); }             \
    static void test_matmul_##id(void) { run_matmul(v); }                 \
    static void test_tile16_##id(void) { run_matmul_tile16(v); }          \
    static void test_attention_##id(void) { run_attention(v); }
#define VARIANT_ENTRIES(v, id)                                                              \
    { v "_quantize", test_quantize_##id }, { v "_matmul", test_matmul_##id },              \
    { v "_tile16", test_tile16_##id },                                                     \
    { v "_attention", test_attention_##id }

VARIANT_CASES("avx2", avx2)
VARIANT_CASES("avx512", avx512)
VARIANT_CASES("avx512+bf16", avx512bf16)
VARIANT_CASES("neon", neon)
VARIANT_CASES("neon+dotprod", neondot)

static const struct test_case cases[] = {
    { "dispatch", test_dispatch },
    VARIANT_ENTRIES("avx2", avx2),
    VARIANT_ENTRIES("avx512", avx512),
    VARIANT_ENTRIES("avx512+bf16", avx512bf16),
    VARIANT_ENTRIES("neon", neon),
    VARIANT_ENTRIES("neon+dotprod", neondot),
};

TEST_MAIN(cases)
