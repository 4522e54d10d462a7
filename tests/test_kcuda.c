/*
 * test_kcuda.c: every CUDA kernel against the CPU's scalar reference, on
 * random inputs, and the GPU engine against the CPU engine.
 *
 * Bounds (normalized MSE, sum (gpu - ref)^2 / sum ref^2):
 *   activation conversion (Q8_0, Q8_K, F16, BF16, F32)     bit-identical
 *   RMSNorm + conversion                                    floats 1e-12, dequantized 1e-5
 *   matrix-vector products, all weight types, 1..128 tokens 1e-10 (float summation order)
 *   batch products on cuBLAS (> 128 tokens): F32/F16/BF16   1e-9; quantized 1e-5 (F16 operands)
 *   RoPE with head norms, KV store                          1e-12
 *   attention (F16 and F32 caches, GQA, several sequences)  1e-10
 *   prompt-batch attention (tensor cores, F16 probabilities) 1e-6, each row 1e-5
 *   GPU engine vs CPU engine (logits): as the golden tests, F16/F32 models
 *   max |diff| <= 0.02, quantized mean <= 0.05 and max <= 0.5; prompts long
 *   enough for the cuBLAS path (F16 operands, where MoE router near-ties may
 *   pick another expert): mean <= 0.05 and the same argmax at >= 95%.
 * The MoE kernels are tested in test_kcuda_moe.c; the helpers both files use
 * (device context, buffers, random weights, nmse) are in kcuda_test.h.
 * Without a GPU (or in a build without CUDA) every case prints SKIP.
 */
#include "test.h"

#include "engine/engine_internal.h"
#include "quant/quant.h"

#ifdef TT_HAVE_CUDA
#include "kcuda_test.h"

static const enum tt_type act_types[] = { TT_TYPE_Q8_0, TT_TYPE_Q8_K, TT_TYPE_F16, TT_TYPE_BF16, TT_TYPE_F32 };

/* The device row of one token as the CPU's block layout would hold it, as floats. */
static void dev_row_values(enum tt_type t, const uint8_t *row, int64_t n, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        switch (t) {
        case TT_TYPE_Q8_0: out[j] = (float)((const int8_t *)row)[j] * ((const float *)(row + n))[j / 32]; break;
        case TT_TYPE_Q8_K: out[j] = (float)((const int8_t *)row)[j] * ((const float *)(row + n))[j / 256]; break;
        case TT_TYPE_F16: out[j] = tt_f16_to_f32(((const tt_f16 *)row)[j]); break;
        case TT_TYPE_BF16: out[j] = tt_bf16_to_f32(((const tt_bf16 *)row)[j]); break;
        default: out[j] = ((const float *)row)[j]; break;
        }
    }
}

static void test_convert(void)
{
    if (!gpu()) return;
    enum { T = 4, N = 1024 };
    float *x = malloc(sizeof(float) * T * N), *got = malloc(sizeof(float) * N), *want = malloc(sizeof(float) * N);
    uint8_t *cpu = malloc(8 * N), *host = malloc((size_t)T * 8 * N);
    fill(x, T * N, 3.0f);
    for (int j = 0; j < 64; j++) x[j] = (float)(j % 9 - 4) * 0.5f; /* exact ties in the rounding */
    memset(x + N, 0, sizeof(float) * 256);                             /* an all-zero block */
    x[2 * N + 5] = -4.0f, x[2 * N + 7] = 4.0f; /* +-max in one Q8_K block: the first wins */
    float *dx = dev_from(x, sizeof(float) * T * N);
    for (size_t ti = 0; ti < TT_ARRAY_LEN(act_types); ti++) {
        const enum tt_type t = act_types[ti];
        const size_t st = kcuda_act_row_bytes(t, N);
        uint8_t *da = dev(st * T);
        CHECK_EQ_INT(kcuda_convert(K, t, dx, N, T, N, da, st), 0);
        to_host(host, da, st * T);
        int bad = 0;
        for (int r = 0; r < T; r++) {
            tt_type_get(t)->from_float(x + r * N, cpu, N);
            if (tt_type_get(t)->to_float) tt_type_get(t)->to_float(cpu, want, N);
            else memcpy(want, cpu, sizeof(float) * N);
            dev_row_values(t, host + r * st, N, got);
            for (int j = 0; j < N; j++) bad += memcmp(&got[j], &want[j], 4) != 0;
        }
        if (bad) fprintf(stderr, "  %s: %d values differ from quant.c\n", tt_type_name(t), bad);
        CHECK_EQ_INT(bad, 0);
        kcuda_free(da);
    }
    kcuda_free(dx);
    free(x), free(got), free(want), free(cpu), free(host);
}

static void test_norm_convert(void)
{
    if (!gpu()) return;
    enum { T = 3, N = 768 };
    float *x = malloc(sizeof(float) * T * N), *w = malloc(sizeof(float) * N);
    float *y = malloc(sizeof(float) * T * N), *ref = malloc(sizeof(float) * T * N);
    float *got = malloc(sizeof(float) * N), *want = malloc(sizeof(float) * N);
    uint8_t *host = malloc(8 * T * N), *cpu = malloc(8 * N);
    fill(x, T * N, 2.0f);
    for (int i = 0; i < N; i++) w[i] = 1.0f + 0.1f * frand();
    for (int r = 0; r < T; r++) ops_rmsnorm(x + r * N, w, ref + r * N, N, 1e-5f);
    float *dx = dev_from(x, sizeof(float) * T * N), *dw = dev_from(w, sizeof(float) * N);
    float *dy = dev(sizeof(float) * T * N);
    for (size_t ti = 0; ti < TT_ARRAY_LEN(act_types); ti++) {
        const enum tt_type t = act_types[ti];
        if (t == TT_TYPE_Q8_K && N % 256) continue;
        const size_t st = kcuda_act_row_bytes(t, N);
        uint8_t *da = dev(st * T);
        CHECK_EQ_INT(kcuda_norm_convert(K, t, dx, N, T, N, dw, 1e-5f, dy, da, st), 0);
        to_host(y, dy, sizeof(float) * T * N);
        to_host(host, da, st * T);
        CHECK_NMSE("rmsnorm", y, ref, T * N, 1e-12);
        for (int r = 0; r < T; r++) {
            tt_type_get(t)->from_float(ref + r * N, cpu, N);
            if (tt_type_get(t)->to_float) tt_type_get(t)->to_float(cpu, want, N);
            else memcpy(want, cpu, sizeof(float) * N);
            dev_row_values(t, host + r * st, N, got);
            CHECK_NMSE(tt_type_name(t), got, want, N, 1e-5);
        }
        kcuda_free(da);
    }
    /* three types in one launch: the same bytes as one launch each */
    const int types[3] = { KCUDA_Q8_K, KCUDA_Q8_0, KCUDA_F16 };
    void *dm[3];
    size_t sm[3];
    uint8_t *one = malloc(8 * T * N);
    for (int z = 0; z < 3; z++) { /* zeroed: rows end in padding that no conversion writes */
        sm[z] = kcuda_act_row_bytes(types[z], N), dm[z] = dev(sm[z] * T);
        CHECK_EQ_INT(kcuda_memset(K, dm[z], 0, sm[z] * T), 0);
    }
    CHECK_EQ_INT(kcuda_norm_convert_multi(K, 3, types, dm, sm, dx, N, T, N, dw, 1e-5f, dy), 0);
    for (int z = 0; z < 3; z++) {
        uint8_t *da = dev(sm[z] * T);
        CHECK_EQ_INT(kcuda_memset(K, da, 0, sm[z] * T), 0);
        CHECK_EQ_INT(kcuda_norm_convert(K, types[z], dx, N, T, N, dw, 1e-5f, NULL, da, sm[z]), 0);
        to_host(one, da, sm[z] * T);
        to_host(host, dm[z], sm[z] * T);
        CHECK(memcmp(one, host, sm[z] * T) == 0);
        kcuda_free(da), kcuda_free(dm[z]);
    }
    CHECK(kcuda_norm_convert_multi(K, KCUDA_CONVERT_MAX + 1, types, dm, sm, dx, N, T, N, dw, 1e-5f, dy) != 0);
    tt_error_clear();
    free(one);
    kcuda_free(dx), kcuda_free(dw), kcuda_free(dy);
    free(x), free(w), free(y), free(ref), free(got), free(want), free(host), free(cpu);
}

/* ---- products ---- */

struct prod_case {
    enum tt_type t;
    int64_t n_in, n_out;
};

/* Upload a weight to dw->data: as stored, or with `regroup` through
 * kcuda_upload_weight, which must then regroup it. */
static void upload_weight(struct kcuda_weight *dw, const uint8_t *w, bool regroup)
{
    if (!regroup) {
        TT_ASSERT(kcuda_upload(K, (void *)dw->data, w, dw->row_stride * (size_t)dw->n_out) == 0);
        return;
    }
    CHECK_EQ_INT(kcuda_upload_weight(K, dw, 0, w, dw->row_stride), 0);
    CHECK_EQ_INT(dw->layout, dw->type == KCUDA_Q6_K ? KCUDA_LAYOUT_Q6_K_GROUPS : KCUDA_LAYOUT_Q4_K_GROUPS);
}

/* One weight type and shape, every token count and output mode; the
 * weights regrouped at upload when `regroup`. */
static void check_products(const struct prod_case *pc, bool regroup)
{
    static const int toks[] = { 1, 2, 3, 5, 8, 20, 40, KCUDA_MATVEC_TOK_MAX + 3 };
    const int64_t n_in = pc->n_in, n_out = pc->n_out, TMAX = KCUDA_MATVEC_TOK_MAX + 3;
    const enum tt_type vt = tt_type_get(pc->t)->vec_dot_type;
    uint8_t *w = make_weight(pc->t, n_in, n_out, 1.0f), *w2 = make_weight(pc->t, n_in, n_out, 1.0f);
    float *x = malloc(sizeof(float) * (size_t)(TMAX * n_in)), *bias = malloc(sizeof(float) * (size_t)n_out);
    float *ref = malloc(sizeof(float) * (size_t)(TMAX * n_out)), *ref2 = malloc(sizeof(float) * (size_t)(TMAX * n_out));
    float *pre = malloc(sizeof(float) * (size_t)(TMAX * n_out)), *got = malloc(sizeof(float) * (size_t)(TMAX * n_out));
    float *want = malloc(sizeof(float) * (size_t)(TMAX * n_out));
    fill(x, TMAX * n_in, 1.0f);
    fill(bias, n_out, 1.0f);
    fill(pre, TMAX * n_out, 4.0f);
    ref_products(pc->t, w, n_in, n_out, x, TMAX, ref);
    ref_products(pc->t, w2, n_in, n_out, x, TMAX, ref2);
    const size_t rb = tt_row_size(pc->t, n_in), st = kcuda_act_row_bytes((int)vt, n_in);
    struct kcuda_weight dw = { dev(rb * (size_t)n_out), (int)pc->t, n_in, n_out, rb, rb * (size_t)n_out, 0 };
    struct kcuda_weight dw2 = dw;
    dw2.data = dev(rb * (size_t)n_out);
    upload_weight(&dw, w, regroup);
    upload_weight(&dw2, w2, regroup);
    float *dx = dev_from(x, sizeof(float) * (size_t)(TMAX * n_in)), *dbias = dev_from(bias, sizeof(float) * (size_t)n_out);
    float *dout = dev(sizeof(float) * (size_t)(TMAX * n_out));
    uint8_t *da = dev(st * (size_t)TMAX);
    CHECK_EQ_INT(kcuda_convert(K, (int)vt, dx, n_in, TMAX, n_in, da, st), 0);
    for (size_t ti = 0; ti < TT_ARRAY_LEN(toks); ti++) {
        const int n = toks[ti];
        const double bound = n <= KCUDA_MATVEC_TOK_MAX ? 1e-10 : pc->t == TT_TYPE_F32 || pc->t == TT_TYPE_F16 || pc->t == TT_TYPE_BF16 ? 1e-9 : 1e-5;
        char what[96];
        for (int mode = 0; mode < 4; mode++) { /* store, store + bias, add, swiglu */
            const int64_t m = (int64_t)n * n_out;
            TT_ASSERT(kcuda_upload(K, dout, pre, sizeof(float) * (size_t)m) == 0);
            int err = mode == 0   ? kcuda_linear(K, &dw, NULL, da, st, n, dout, n_out, NULL, KCUDA_OUT_STORE)
                      : mode == 1 ? kcuda_linear(K, &dw, NULL, da, st, n, dout, n_out, dbias, KCUDA_OUT_STORE)
                      : mode == 2 ? kcuda_linear(K, &dw, NULL, da, st, n, dout, n_out, NULL, KCUDA_OUT_ADD)
                                  : kcuda_linear(K, &dw, &dw2, da, st, n, dout, n_out, NULL, KCUDA_OUT_SWIGLU);
            if (err) fprintf(stderr, "  %s\n", tt_error_detail());
            CHECK_EQ_INT(err, 0);
            to_host(got, dout, sizeof(float) * (size_t)m);
            for (int64_t i = 0; i < m; i++)
                want[i] = mode == 0 ? ref[i] : mode == 1 ? ref[i] + bias[i % n_out]
                        : mode == 2 ? pre[i] + ref[i] : silu_mul(ref[i], ref2[i]);
            snprintf(what, sizeof(what), "%s%s %lldx%lld, %d tokens, mode %d", tt_type_name(pc->t),
                     regroup ? " regrouped" : "", (long long)n_out, (long long)n_in, n, mode);
            CHECK_NMSE(what, got, want, m, mode == 2 ? bound * 0.1 : bound);
        }
    }
    kcuda_free((void *)dw.data), kcuda_free((void *)dw2.data), kcuda_free(dx), kcuda_free(dbias);
    kcuda_free(dout), kcuda_free(da);
    free(w), free(w2), free(x), free(bias), free(ref), free(ref2), free(pre), free(got), free(want);
}

static void test_products(void)
{
    if (!gpu()) return;
    static const struct prod_case cases[] = {
        { TT_TYPE_F32, 512, 37 },  { TT_TYPE_F32, 172, 29 },  { TT_TYPE_F16, 512, 37 },
        { TT_TYPE_F16, 100, 29 },  { TT_TYPE_BF16, 512, 37 }, { TT_TYPE_BF16, 100, 29 },
        { TT_TYPE_Q4_0, 512, 37 }, { TT_TYPE_Q4_0, 96, 29 },  { TT_TYPE_Q8_0, 512, 37 },
        { TT_TYPE_Q8_0, 96, 29 },  { TT_TYPE_Q4_K, 512, 37 }, { TT_TYPE_Q4_K, 4096, 70 },
        { TT_TYPE_Q5_K, 512, 37 }, { TT_TYPE_Q5_K, 2048, 70 }, { TT_TYPE_Q6_K, 512, 37 },
        { TT_TYPE_Q6_K, 1792, 70 }, { TT_TYPE_Q4_K, 14336, 9 }, { TT_TYPE_Q6_K, 14336, 9 },
        { TT_TYPE_Q4_K, 768, 21 },  { TT_TYPE_Q6_K, 768, 21 },
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(cases); i++) check_products(&cases[i], false);
}

/* Q6_K and Q4_K regrouped at upload (KCUDA_LAYOUT_Q6_K_GROUPS,
 * KCUDA_LAYOUT_Q4_K_GROUPS): dequantized values equal quant.c's, products
 * as the stored layout's (matrix-vector kernels and the cuBLAS path through
 * its F16 tiles, odd row counts, one to seven groups per row); rows without
 * whole groups stay as stored. */
static void check_groups(enum tt_type t, int format)
{
    enum { N = 4096, R = 5, N2 = 1792 };
    const size_t rb = tt_row_size(t, N), rb2 = tt_row_size(t, N2);
    const char *name = tt_type_name(t);
    char what[64];
    uint8_t *w = make_weight(t, N, R, 2.0f), *w2 = make_weight(t, N2, R, 2.0f);
    float *ref = malloc(sizeof(float) * N * R), *got = malloc(sizeof(float) * N * R);
    float *dout = dev(sizeof(float) * N * R);
    for (int r = 0; r < R; r++) tt_type_get(t)->to_float(w + r * rb, ref + r * N, N);
    struct kcuda_weight dw = { dev(rb * R), (int)t, N, R, rb, rb * R, 0 };
    upload_weight(&dw, w, true);
    CHECK_EQ_INT(kcuda_weight_format(&dw), format);
    CHECK_EQ_INT(kcuda_dequant_f32(K, kcuda_weight_format(&dw), dw.data, rb, R, N, dout), 0);
    to_host(got, dout, sizeof(float) * N * R);
    snprintf(what, sizeof(what), "%s regrouped", name);
    CHECK_NMSE(what, got, ref, N * R, 1e-13);
    for (int r = 0; r < R; r++) tt_type_get(t)->to_float(w2 + r * rb2, ref + r * N2, N2);
    struct kcuda_weight dw2 = { dev(rb2 * R), (int)t, N2, R, rb2, rb2 * R, 0 };
    CHECK_EQ_INT(kcuda_upload_weight(K, &dw2, 0, w2, rb2), 0);
    CHECK_EQ_INT(dw2.layout, KCUDA_LAYOUT_GGML);
    CHECK_EQ_INT(kcuda_dequant_f32(K, kcuda_weight_format(&dw2), dw2.data, rb2, R, N2, dout), 0);
    to_host(got, dout, sizeof(float) * N2 * R);
    snprintf(what, sizeof(what), "%s not regrouped", name);
    CHECK_NMSE(what, got, ref, N2 * R, 1e-13);
    kcuda_free((void *)dw.data), kcuda_free((void *)dw2.data), kcuda_free(dout);
    free(w), free(w2), free(ref), free(got);
    /* 2760 rows: more row groups than the SwiGLU pair's bulk-copy grid
     * holds at once, so with TT_GPU_MV_BULK=1 (make test-gpu runs this case
     * so too) its blocks take several row groups through both stages */
    const struct prod_case cases[] = { { t, 2048, 37 }, { t, 4096, 9 }, { t, 14336, 5 }, { t, 4096, 2760 } };
    for (size_t i = 0; i < TT_ARRAY_LEN(cases); i++) check_products(&cases[i], true);
}

/* How many of three products' outputs, n_tok rows of rows[i] floats
 * ldos[i] apart, came out the same both ways (outs[0] and outs[1]), bit
 * for bit. */
static int same_products(float *const outs[2][3], const int64_t rows[3], const int64_t ldos[3], int n_tok)
{
    int same = 0;
    for (int i = 0; i < 3; i++) {
        const size_t bytes = sizeof(float) * (size_t)(n_tok * ldos[i]);
        float *a = malloc(bytes), *b = malloc(bytes);
        to_host(a, outs[0][i], bytes), to_host(b, outs[1][i], bytes);
        bool eq = true;
        for (int t = 0; t < n_tok; t++) eq &= !memcmp(a + t * ldos[i], b + t * ldos[i], sizeof(float) * (size_t)rows[i]);
        same += eq;
        free(a), free(b);
    }
    return same;
}

/* kcuda_matvec_multi against one kcuda_matvec per weight, bit for bit:
 * q, k, v of one type (1 and 3 tokens), of two K-quant types (one token;
 * weights regrouped at upload or as stored), with biases on k; and what
 * kcuda_matvec_multi_ok refuses (three kinds, two kinds for 2 tokens). */
static void check_multi(enum tt_type tq, enum tt_type tv, bool regroup, int n_tok)
{
    enum { N = 2048, Q = 72, KV = 20 };
    const enum tt_type types[3] = { tq, tq, tv };
    const int64_t rows[3] = { Q, KV, KV };
    const enum tt_type vt = tt_type_get(tq)->vec_dot_type;
    const size_t st = kcuda_act_row_bytes((int)vt, N);
    struct kcuda_weight dw[3];
    const struct kcuda_weight *ws[3];
    float *outs[2][3];
    int64_t ldos[3];
    for (int i = 0; i < 3; i++) {
        const size_t rb = tt_row_size(types[i], N);
        uint8_t *w = make_weight(types[i], N, rows[i], 1.0f);
        dw[i] = (struct kcuda_weight){ dev(rb * (size_t)rows[i]), (int)types[i], N, rows[i], rb, rb * (size_t)rows[i], 0 };
        upload_weight(&dw[i], w, regroup);
        free(w);
        ws[i] = &dw[i];
        ldos[i] = rows[i] + 3;
        for (int way = 0; way < 2; way++) outs[way][i] = dev(sizeof(float) * (size_t)(n_tok * ldos[i]));
    }
    float *x = malloc(sizeof(float) * (size_t)(n_tok * N)), bias[KV];
    fill(x, (int64_t)n_tok * N, 1.0f);
    fill(bias, KV, 1.0f);
    float *dx = dev_from(x, sizeof(float) * (size_t)(n_tok * N)), *dbias = dev_from(bias, sizeof(bias));
    const float *biases[3] = { NULL, dbias, NULL };
    uint8_t *da = dev(st * (size_t)n_tok);
    CHECK_EQ_INT(kcuda_convert(K, (int)vt, dx, N, n_tok, N, da, st), 0);
    CHECK(kcuda_matvec_multi_ok(ws, 3, st, n_tok));
    CHECK_EQ_INT(kcuda_matvec_multi(K, ws, 3, da, st, n_tok, outs[1], ldos, biases), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(kcuda_matvec(K, ws[i], NULL, da, st, n_tok, outs[0][i], ldos[i], biases[i], KCUDA_OUT_STORE), 0);
    const int same = same_products(outs, rows, ldos, n_tok);
    if (same != 3)
        fprintf(stderr, "  multi %s+%s%s, %d tokens: %d of 3 outputs as single products\n", tt_type_name(tq),
                tt_type_name(tv), regroup ? " regrouped" : "", n_tok, same);
    CHECK_EQ_INT(same, 3);
    if (tq != tv) { /* two kinds take one token only; a third kind never */
        CHECK(!kcuda_matvec_multi_ok(ws, 3, st, 2));
        const struct kcuda_weight *mixed[3] = { ws[2], ws[0], ws[2] };
        CHECK(!kcuda_matvec_multi_ok(mixed, 3, st, 1));
        CHECK(kcuda_matvec_multi(K, mixed, 3, da, st, 1, outs[1], ldos, biases) == TT_EINVAL);
        tt_error_clear();
    }
    for (int i = 0; i < 3; i++) kcuda_free((void *)dw[i].data), kcuda_free(outs[0][i]), kcuda_free(outs[1][i]);
    kcuda_free(dx), kcuda_free(dbias), kcuda_free(da);
    free(x);
}

static void ref_rope_table(int pos, int n_rot, float base, float *cs);

/* kcuda_matvec_qkv_rope against kcuda_matvec_multi then kcuda_rope_store,
 * bit for bit: the q, k and v rows and both caches, one token at position
 * pos of sequence 1 (llama's adjacent pairs; bias on k when `bias`). */
static void check_qkv_rope(enum tt_type tq, enum tt_type tv, bool regroup, int H, int KV, int hd, int n_rot,
                           bool bias, int pos)
{
    enum { N = 2048, NS = 2, CTX = 40 };
    const int32_t seq = 1;
    const enum tt_type types[3] = { tq, tq, tv };
    const int64_t rows[3] = { (int64_t)H * hd, (int64_t)KV * hd, (int64_t)KV * hd };
    const size_t st = kcuda_act_row_bytes(KCUDA_Q8_K, N), cn = (size_t)NS * CTX * KV * hd;
    struct kcuda_weight dw[3];
    const struct kcuda_weight *ws[3];
    float *outs[2][3];
    for (int i = 0; i < 3; i++) {
        const size_t rb = tt_row_size(types[i], N);
        uint8_t *w = make_weight(types[i], N, rows[i], 1.0f);
        dw[i] = (struct kcuda_weight){ dev(rb * (size_t)rows[i] + KCUDA_WEIGHT_PAD), (int)types[i], N, rows[i], rb,
                                       rb * (size_t)rows[i], 0 };
        upload_weight(&dw[i], w, regroup);
        free(w);
        ws[i] = &dw[i];
        for (int way = 0; way < 2; way++) outs[way][i] = dev(sizeof(float) * (size_t)rows[i]);
    }
    float *x = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * (size_t)rows[1]), *cs = malloc(sizeof(float) * 256);
    fill(x, N, 1.0f);
    fill(b, rows[1], 1.0f);
    ref_rope_table(pos, n_rot, 10000.0f, cs);
    float *dx = dev_from(x, sizeof(float) * N), *db = dev_from(b, sizeof(float) * (size_t)rows[1]);
    float *dcs = dev_from(cs, sizeof(float) * 256);
    const float *biases[3] = { NULL, bias ? db : NULL, NULL };
    int32_t *dpos = dev_from(&pos, 4), *dseq = dev_from(&seq, 4);
    uint8_t *da = dev(st), *kc = malloc(cn * 2);
    CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dx, N, 1, N, da, st), 0);
    float *tmp = malloc(sizeof(float) * cn);
    fill(tmp, (int64_t)cn, 1.0f);
    tt_type_get(TT_TYPE_F16)->from_float(tmp, kc, (int64_t)cn);
    void *kcs[2] = { dev_from(kc, cn * 2), dev_from(kc, cn * 2) }, *vcs[2] = { dev_from(kc, cn * 2), dev_from(kc, cn * 2) };
    const struct kcuda_attn_shape sh = { .n_head = H, .n_head_kv = KV, .head_dim = hd, .n_rot = n_rot, .group = H / KV,
                                         .kv_type = KCUDA_F16, .n_ctx = CTX, .eps = 1e-6f };
    CHECK(kcuda_matvec_qkv_rope_ok(ws, st, &sh, false));
    CHECK(!kcuda_matvec_qkv_rope_ok(ws, st, &sh, true));
    const int64_t ldos[3] = { rows[0], rows[1], rows[2] };
    CHECK_EQ_INT(kcuda_matvec_multi(K, ws, 3, da, st, 1, outs[0], ldos, biases), 0);
    CHECK_EQ_INT(kcuda_rope_store(K, &sh, 1, outs[0][0], outs[0][1], outs[0][2], NULL, NULL, dcs, dpos, dseq, kcs[0],
                                  vcs[0]), 0);
    CHECK_EQ_INT(kcuda_matvec_qkv_rope(K, ws, da, st, outs[1], biases, &sh, dcs, dpos, dseq, kcs[1], vcs[1]), 0);
    int same = same_products(outs, rows, rows, 1);
    uint8_t *c0 = malloc(cn * 2), *c1 = malloc(cn * 2);
    for (int c = 0; c < 2; c++) {
        to_host(c0, c ? vcs[0] : kcs[0], cn * 2), to_host(c1, c ? vcs[1] : kcs[1], cn * 2);
        same += !memcmp(c0, c1, cn * 2);
    }
    if (same != 5)
        fprintf(stderr, "  qkv+rope %s+%s%s, %d/%d heads of %d, rope %d, position %d: %d of 5 buffers as the two steps\n",
                tt_type_name(tq), tt_type_name(tv), regroup ? " regrouped" : "", H, KV, hd, n_rot, pos, same);
    CHECK_EQ_INT(same, 5);
    for (int i = 0; i < 3; i++) kcuda_free((void *)dw[i].data), kcuda_free(outs[0][i]), kcuda_free(outs[1][i]);
    for (int w = 0; w < 2; w++) kcuda_free(kcs[w]), kcuda_free(vcs[w]);
    kcuda_free(dx), kcuda_free(db), kcuda_free(dcs), kcuda_free(dpos), kcuda_free(dseq), kcuda_free(da);
    free(x), free(b), free(cs), free(kc), free(tmp), free(c0), free(c1);
}

/* kcuda_matvec_multi_acts: Q4_K q against Q8_K rows beside Q8_0 k and v
 * against Q8_0 rows in one launch, bit for bit as single products. */
static void check_multi_acts(bool regroup, enum tt_type tv)
{
    enum { N = 2048, Q = 72, KV = 20 };
    const enum tt_type types[3] = { TT_TYPE_Q4_K, TT_TYPE_Q8_0, tv };
    const int64_t rows[3] = { Q, KV, KV };
    struct kcuda_weight dw[3];
    const struct kcuda_weight *ws[3];
    const void *acts[3];
    size_t sts[3];
    int64_t ldos[3];
    float *outs[2][3];
    float *x = malloc(sizeof(float) * N);
    fill(x, N, 1.0f);
    float *dx = dev_from(x, sizeof(float) * N);
    uint8_t *da[3];
    for (int i = 0; i < 3; i++) {
        const size_t rb = tt_row_size(types[i], N);
        uint8_t *w = make_weight(types[i], N, rows[i], 1.0f);
        dw[i] = (struct kcuda_weight){ dev(rb * (size_t)rows[i] + KCUDA_WEIGHT_PAD), (int)types[i], N, rows[i], rb,
                                       rb * (size_t)rows[i], 0 };
        if (types[i] != TT_TYPE_Q8_0) upload_weight(&dw[i], w, regroup);
        else TT_ASSERT(kcuda_upload(K, (void *)dw[i].data, w, rb * (size_t)rows[i]) == 0);
        free(w);
        ws[i] = &dw[i];
        const int vt = (int)tt_type_get(types[i])->vec_dot_type;
        sts[i] = kcuda_act_row_bytes(vt, N);
        da[i] = dev(sts[i]);
        CHECK_EQ_INT(kcuda_convert(K, vt, dx, N, 1, N, da[i], sts[i]), 0);
        acts[i] = da[i];
        ldos[i] = rows[i];
        for (int way = 0; way < 2; way++) outs[way][i] = dev(sizeof(float) * (size_t)rows[i]);
    }
    CHECK(kcuda_matvec_multi_acts_ok(ws, 3, sts, 1));
    CHECK(!kcuda_matvec_multi_acts_ok(ws, 3, sts, 2));
    CHECK_EQ_INT(kcuda_matvec_multi_acts(K, ws, 3, acts, sts, 1, outs[1], ldos, NULL), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(kcuda_matvec(K, ws[i], NULL, acts[i], sts[i], 1, outs[0][i], ldos[i], NULL, KCUDA_OUT_STORE), 0);
    const int same = same_products(outs, rows, ldos, 1);
    if (same != 3)
        fprintf(stderr, "  multi_acts %s v%s: %d of 3 outputs as single products\n", tt_type_name(tv),
                regroup ? " regrouped" : "", same);
    CHECK_EQ_INT(same, 3);
    for (int i = 0; i < 3; i++)
        kcuda_free((void *)dw[i].data), kcuda_free(da[i]), kcuda_free(outs[0][i]), kcuda_free(outs[1][i]);
    kcuda_free(dx);
    free(x);
}

static void test_multi(void)
{
    if (!gpu()) return;
    check_multi(TT_TYPE_Q4_K, TT_TYPE_Q4_K, true, 1);
    check_multi(TT_TYPE_Q4_K, TT_TYPE_Q4_K, false, 3);
    check_multi(TT_TYPE_Q8_0, TT_TYPE_Q8_0, false, 2);
    check_multi(TT_TYPE_Q4_K, TT_TYPE_Q6_K, true, 1);  /* Q4_K_M's q, k and v, regrouped */
    check_multi(TT_TYPE_Q6_K, TT_TYPE_Q4_K, true, 1);
    check_multi(TT_TYPE_Q4_K, TT_TYPE_Q6_K, false, 1); /* as stored (TT_GPU_REPACK=0) */
    check_multi_acts(true, TT_TYPE_Q8_0);  /* MoE files' q (Q4_K) beside k and v (Q8_0), two activation types */
    check_multi_acts(false, TT_TYPE_Q8_0);
    check_multi_acts(true, TT_TYPE_Q6_K);  /* ... and their layers with v in Q6_K: three kinds */
    check_multi_acts(false, TT_TYPE_Q6_K);
    check_qkv_rope(TT_TYPE_Q4_K, TT_TYPE_Q6_K, true, 8, 2, 128, 128, false, 17); /* Llama-3's q, k, v kinds */
    check_qkv_rope(TT_TYPE_Q4_K, TT_TYPE_Q4_K, true, 4, 4, 64, 32, true, 0);    /* one kind, partial rotation, bias */
    check_qkv_rope(TT_TYPE_Q8_0, TT_TYPE_Q8_0, false, 6, 2, 32, 32, false, 39);
}

static void test_groups(void)
{
    if (!gpu()) return;
    check_groups(TT_TYPE_Q6_K, KCUDA_Q6_K_GROUPS);
    check_groups(TT_TYPE_Q4_K, KCUDA_Q4_K_GROUPS);
}

/* Whole weights to F16 and F32 on the device vs quant.c's dequantizers. */
static void test_dequant(void)
{
    if (!gpu()) return;
    static const enum tt_type types[] = { TT_TYPE_F32, TT_TYPE_F16, TT_TYPE_BF16, TT_TYPE_Q4_0,
                                          TT_TYPE_Q8_0, TT_TYPE_Q4_K, TT_TYPE_Q5_K, TT_TYPE_Q6_K };
    enum { N = 512, R = 9 };
    float *ref = malloc(sizeof(float) * N * R), *got = malloc(sizeof(float) * N * R);
    for (size_t i = 0; i < TT_ARRAY_LEN(types); i++) {
        uint8_t *w = make_weight(types[i], N, R, 2.0f);
        const size_t rb = tt_row_size(types[i], N);
        for (int r = 0; r < R; r++) tt_type_get(types[i])->to_float(w + r * rb, ref + r * N, N);
        void *dw = dev_from(w, rb * R);
        float *dout = dev(sizeof(float) * N * R);
        CHECK_EQ_INT(kcuda_dequant_f32(K, types[i], dw, rb, R, N, dout), 0);
        to_host(got, dout, sizeof(float) * N * R);
        CHECK_NMSE(tt_type_name(types[i]), got, ref, N * R, 1e-13);
        kcuda_free(dw), kcuda_free(dout), free(w);
    }
    free(ref), free(got);
}

/* ---- RoPE, head norms, KV store ---- */

/* The CPU's angle table (ops_rope_table) and rotation (ops_rope) for one head. */
static void ref_rope_table(int pos, int n_rot, float base, float *cs)
{
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
        theta *= theta_scale;
    }
}
static void ref_rope(float *v, const float *c, int n_rot, bool neox)
{
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c[2 * i] - x1 * c[2 * i + 1];
        v[b] = x0 * c[2 * i + 1] + x1 * c[2 * i];
    }
}

static void check_rope(int hd, int n_rot, bool neox, bool norms, int kv_type)
{
    enum { T = 3, H = 4, KV = 2, NS = 2, CTX = 16 };
    const int32_t pos[T] = { 0, 5, 9 }, seq[T] = { 0, 1, 1 };
    const size_t qn = (size_t)T * H * hd, kn = (size_t)T * KV * hd, cn = (size_t)NS * CTX * KV * hd;
    const size_t es = kv_type == KCUDA_F16 ? 2 : 4;
    float *q = malloc(4 * qn), *k = malloc(4 * kn), *v = malloc(4 * kn), *cs = malloc(4 * (size_t)T * n_rot);
    float *qn_w = malloc(4 * (size_t)hd), *kn_w = malloc(4 * (size_t)hd), *got = malloc(4 * qn);
    uint8_t *kc = calloc(cn, es), *vc = calloc(cn, es);
    fill(q, (int64_t)qn, 2.0f), fill(k, (int64_t)kn, 2.0f), fill(v, (int64_t)kn, 2.0f);
    for (int i = 0; i < hd; i++) qn_w[i] = 1.0f + 0.1f * frand(), kn_w[i] = 1.0f + 0.1f * frand();
    for (int t = 0; t < T; t++) ref_rope_table(pos[t], n_rot, 10000.0f, cs + t * n_rot);
    float *dq = dev_from(q, 4 * qn), *dk = dev_from(k, 4 * kn), *dv = dev_from(v, 4 * kn);
    float *dcs = dev_from(cs, 4 * (size_t)T * n_rot), *dqn = dev_from(qn_w, 4 * (size_t)hd), *dkn = dev_from(kn_w, 4 * (size_t)hd);
    int32_t *dpos = dev_from(pos, sizeof(pos)), *dseq = dev_from(seq, sizeof(seq));
    void *dkc = dev_from(kc, cn * es), *dvc = dev_from(vc, cn * es);
    const struct kcuda_attn_shape sh = { .n_head = H, .n_head_kv = KV, .head_dim = hd, .n_rot = n_rot, .group = H / KV,
                                         .neox = neox, .kv_type = kv_type, .n_ctx = CTX, .eps = 1e-6f };
    CHECK_EQ_INT(kcuda_rope_store(K, &sh, T, dq, dk, dv, norms ? dqn : NULL, norms ? dkn : NULL, dcs, dpos, dseq, dkc, dvc), 0);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H + KV; h++) {
            float *x = h < H ? q + ((size_t)t * H + h) * hd : k + ((size_t)t * KV + h - H) * hd;
            if (norms) ops_rmsnorm(x, h < H ? qn_w : kn_w, x, hd, 1e-6f);
            ref_rope(x, cs + t * n_rot, n_rot, neox);
        }
    }
    char what[80];
    snprintf(what, sizeof(what), "rope hd %d rot %d %s%s", hd, n_rot, neox ? "neox" : "normal", norms ? " norms" : "");
    to_host(got, dq, 4 * qn);
    CHECK_NMSE(what, got, q, (int64_t)qn, 1e-12);
    to_host(got, dk, 4 * kn);
    CHECK_NMSE(what, got, k, (int64_t)kn, 1e-12);
    to_host(kc, dkc, cn * es);
    to_host(vc, dvc, cn * es);
    float *gk = malloc(4 * kn), *gv = malloc(4 * kn);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < KV * hd; i++) {
            const size_t off = ((size_t)seq[t] * CTX + (size_t)pos[t]) * KV * hd + (size_t)i;
            gk[t * KV * hd + i] = es == 2 ? tt_f16_to_f32(((tt_f16 *)kc)[off]) : ((float *)kc)[off];
            gv[t * KV * hd + i] = es == 2 ? tt_f16_to_f32(((tt_f16 *)vc)[off]) : ((float *)vc)[off];
        }
    CHECK_NMSE("k cache", gk, k, (int64_t)kn, es == 2 ? 1e-6 : 1e-12);
    CHECK_NMSE("v cache", gv, v, (int64_t)kn, es == 2 ? 1e-6 : 0.0);
    kcuda_free(dq), kcuda_free(dk), kcuda_free(dv), kcuda_free(dcs), kcuda_free(dqn), kcuda_free(dkn);
    kcuda_free(dpos), kcuda_free(dseq), kcuda_free(dkc), kcuda_free(dvc);
    free(q), free(k), free(v), free(cs), free(qn_w), free(kn_w), free(got), free(kc), free(vc), free(gk), free(gv);
}

static void test_rope(void)
{
    if (!gpu()) return;
    check_rope(8, 8, false, false, KCUDA_F16);
    check_rope(32, 32, false, false, KCUDA_F32);
    check_rope(64, 64, true, true, KCUDA_F16);
    check_rope(128, 64, true, false, KCUDA_F32);
    check_rope(128, 128, false, true, KCUDA_F16);
    check_rope(256, 256, true, true, KCUDA_F16);
}

/* ---- attention ---- */

/* The CPU engine's attend_one for query head h of token t. */
static void ref_attend(const float *q, const uint8_t *kc, const uint8_t *vc, bool f16, int hd, int KV,
                       int kvh, int n_ctx, int seq, int pos, float *out)
{
    const size_t es = f16 ? 2 : 4, row = (size_t)KV * hd;
    float qh[256], *sc = malloc(sizeof(float) * (size_t)(pos + 1)), mx = -INFINITY;
    for (int i = 0; i < hd; i++) qh[i] = f16 ? tt_f16_to_f32(tt_f32_to_f16(q[i])) : q[i];
#define KV_AT(c, j, i) (f16 ? tt_f16_to_f32(((const tt_f16 *)(c))[((size_t)seq * n_ctx + (j)) * row + (size_t)kvh * hd + (i)]) \
                            : ((const float *)(c))[((size_t)seq * n_ctx + (j)) * row + (size_t)kvh * hd + (i)])
    for (int j = 0; j <= pos; j++) {
        float d = 0.0f;
        for (int i = 0; i < hd; i++) d += KV_AT(kc, j, i) * qh[i];
        sc[j] = d * (1.0f / sqrtf((float)hd));
        mx = sc[j] > mx ? sc[j] : mx;
    }
    double sum = 0.0;
    for (int j = 0; j <= pos; j++) sum += (sc[j] = expf(sc[j] - mx));
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < hd; i++) out[i] = 0.0f;
    for (int j = 0; j <= pos; j++)
        for (int i = 0; i < hd; i++) out[i] += sc[j] * inv * KV_AT(vc, j, i);
#undef KV_AT
    (void)es;
    free(sc);
}

/* H query heads over KV cache heads; T tokens at the positions below, in
 * two sequences of CTX positions. */
static void check_attention(int hd, bool f16, int n_split, int H, int KV)
{
    enum { T = 6, NS = 2, CTX = 600 };
    const int32_t pos[T] = { 0, 17, 299, 150, 40, 514 }, seq[T] = { 0, 1, 0, 1, 1, 0 };
    const size_t es = f16 ? 2 : 4, cn = (size_t)NS * CTX * KV * hd, qn = (size_t)T * H * hd;
    uint8_t *kc = malloc(cn * es), *vc = malloc(cn * es);
    float *tmp = malloc(4 * cn), *q = malloc(4 * qn), *ref = malloc(4 * qn), *got = malloc(4 * qn);
    for (int c = 0; c < 2; c++) {
        fill(tmp, (int64_t)cn, 1.5f);
        tt_type_get(f16 ? TT_TYPE_F16 : TT_TYPE_F32)->from_float(tmp, c ? vc : kc, (int64_t)cn);
    }
    fill(q, (int64_t)qn, 1.5f);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            ref_attend(q + ((size_t)t * H + h) * hd, kc, vc, f16, hd, KV, h / (H / KV), CTX, seq[t], pos[t],
                       ref + ((size_t)t * H + h) * hd);
    const struct kcuda_attn_shape sh = { .n_head = H, .n_head_kv = KV, .head_dim = hd, .n_rot = hd, .group = H / KV,
                                         .kv_type = f16 ? KCUDA_F16 : KCUDA_F32, .n_ctx = CTX };
    void *dkc = dev_from(kc, cn * es), *dvc = dev_from(vc, cn * es);
    float *dq = dev_from(q, 4 * qn), *dout = dev(4 * qn), *dpart = dev(4 * kcuda_attn_part_floats(&sh, T, n_split));
    int *dcount = dev(sizeof(int) * T * KV);
    TT_ASSERT(kcuda_memset(K, dcount, 0, sizeof(int) * T * KV) == 0);
    int32_t *dpos = dev_from(pos, sizeof(pos)), *dseq = dev_from(seq, sizeof(seq));
    for (int rep = 0; rep < 2; rep++) { /* twice: the join's counters must be left at zero */
        TT_ASSERT(kcuda_memset(K, dout, 0xff, 4 * qn) == 0);
        CHECK_EQ_INT(kcuda_attention(K, &sh, T, n_split, dq, dkc, dvc, dpos, dseq, dpart, dcount, dout, NULL), 0);
    }
    to_host(got, dout, 4 * qn);
    char what[64];
    snprintf(what, sizeof(what), "attention hd %d %s, %d/%d heads, %d parts", hd, f16 ? "f16" : "f32", H, KV, n_split);
    CHECK_NMSE(what, got, ref, (int64_t)qn, 1e-10);
    if (kcuda_attention_q8k(&sh, T)) { /* the joins' Q8_K rows: a conversion of the float rows, bit for bit */
        const int64_t n = (int64_t)H * hd;
        const size_t st = kcuda_act_row_bytes(KCUDA_Q8_K, n), used = (size_t)n + 4 * (size_t)(n / 256);
        uint8_t *dq8 = dev(st * T), *dcv = dev(st * T), *a = malloc(st * T), *b = malloc(st * T);
        float *got2 = malloc(4 * qn);
        TT_ASSERT(kcuda_memset(K, dq8, 0x5a, st * T) == 0);
        CHECK_EQ_INT(kcuda_attention(K, &sh, T, n_split, dq, dkc, dvc, dpos, dseq, dpart, dcount, dout, dq8), 0);
        CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dout, n, T, n, dcv, st), 0);
        to_host(a, dq8, st * T);
        to_host(b, dcv, st * T);
        to_host(got2, dout, 4 * qn);
        int rows_equal = 0;
        for (int t = 0; t < T; t++) rows_equal += !memcmp(a + (size_t)t * st, b + (size_t)t * st, used);
        CHECK_EQ_INT(rows_equal, T);
        CHECK(!memcmp(got, got2, 4 * qn));
        kcuda_free(dq8), kcuda_free(dcv);
        free(a), free(b), free(got2);
    }
    /* each token alone, as decode runs it: the same outputs */
    TT_ASSERT(kcuda_memset(K, dout, 0xff, 4 * qn) == 0);
    for (int t = 0; t < T; t++) {
        const size_t o = (size_t)t * H * hd;
        CHECK_EQ_INT(kcuda_attention(K, &sh, 1, n_split, dq + o, dkc, dvc, dpos + t, dseq + t, dpart, dcount, dout + o,
                                     NULL), 0);
    }
    to_host(got, dout, 4 * qn);
    snprintf(what, sizeof(what), "decode attention hd %d %s, %d/%d heads, %d parts", hd, f16 ? "f16" : "f32", H, KV,
             n_split);
    CHECK_NMSE(what, got, ref, (int64_t)qn, 1e-10);
    kcuda_free(dkc), kcuda_free(dvc), kcuda_free(dq), kcuda_free(dout), kcuda_free(dpart), kcuda_free(dpos), kcuda_free(dseq);
    kcuda_free(dcount);
    free(kc), free(vc), free(tmp), free(q), free(ref), free(got);
}

/* worst normalized MSE over rows of `len` values */
static double nmse_rows_max(const float *a, const float *ref, int64_t n_rows, int64_t len)
{
    double worst = 0.0;
    for (int64_t r = 0; r < n_rows; r++) {
        const double e = nmse(a + r * len, ref + r * len, len);
        worst = e > worst || e != e ? e : worst;
    }
    return worst;
}

/* A prompt batch as the engine sends one: n tokens from position off on (a
 * cache continued at an offset, earlier positions random), in sequence 0
 * (mode 0), or in two: first half sequence 0, second half sequence 1 from
 * position off / 2 (mode 1), or tokens alternating between them (mode 2).
 * From 64 tokens with an F16 cache and head size 64 or 128 kcuda_attention
 * takes the tensor-core kernel (kcuda_flash.cu), which rounds probabilities
 * to F16: bounds 1e-6 on the whole output and 1e-5 on each (token, head)
 * row against the CPU reference. */
static void check_attention_batch(int hd, bool f16, int H, int KV, int n, int off, int mode)
{
    enum { NS = 2, SPLIT = 4 };
    const int ctx = off + n + 8;
    const size_t es = f16 ? 2 : 4, cn = (size_t)NS * ctx * KV * hd, qn = (size_t)n * H * hd;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *seq = malloc(sizeof(int32_t) * (size_t)n);
    for (int t = 0; t < n; t++) {
        seq[t] = mode == 1 ? t >= n / 2 : mode == 2 ? t & 1 : 0;
        pos[t] = mode == 1 ? (t < n / 2 ? off + t : off / 2 + t - n / 2) : mode == 2 ? off + t / 2 : off + t;
    }
    uint8_t *kc = malloc(cn * es), *vc = malloc(cn * es);
    float *kf = malloc(4 * cn), *vf = malloc(4 * cn), *q = malloc(4 * qn), *qr = malloc(4 * qn);
    float *ref = malloc(4 * qn), *got = malloc(4 * qn);
    for (int c = 0; c < 2; c++) { /* the reference reads the cache's values as floats */
        float *f = c ? vf : kf;
        fill(f, (int64_t)cn, 1.5f);
        tt_type_get(f16 ? TT_TYPE_F16 : TT_TYPE_F32)->from_float(f, c ? vc : kc, (int64_t)cn);
        tt_type_get(f16 ? TT_TYPE_F16 : TT_TYPE_F32)->to_float(c ? vc : kc, f, (int64_t)cn);
    }
    fill(q, (int64_t)qn, 1.5f);
    for (size_t i = 0; i < qn; i++) qr[i] = f16 ? tt_f16_to_f32(tt_f32_to_f16(q[i])) : q[i];
    for (int t = 0; t < n; t++)
        for (int h = 0; h < H; h++)
            ref_attend(qr + ((size_t)t * H + h) * hd, (const uint8_t *)kf, (const uint8_t *)vf, false, hd, KV,
                       h / (H / KV), ctx, seq[t], pos[t], ref + ((size_t)t * H + h) * hd);
    const struct kcuda_attn_shape sh = { .n_head = H, .n_head_kv = KV, .head_dim = hd, .n_rot = hd, .group = H / KV,
                                         .kv_type = f16 ? KCUDA_F16 : KCUDA_F32, .n_ctx = ctx };
    void *dkc = dev_from(kc, cn * es), *dvc = dev_from(vc, cn * es);
    float *dq = dev_from(q, 4 * qn), *dout = dev(4 * qn), *dpart = dev(4 * kcuda_attn_part_floats(&sh, n, SPLIT));
    int *dcount = dev(sizeof(int) * (size_t)n * KV);
    TT_ASSERT(kcuda_memset(K, dcount, 0, sizeof(int) * (size_t)n * KV) == 0);
    TT_ASSERT(kcuda_memset(K, dout, 0xff, 4 * qn) == 0);
    int32_t *dpos = dev_from(pos, sizeof(int32_t) * (size_t)n), *dseq = dev_from(seq, sizeof(int32_t) * (size_t)n);
    CHECK_EQ_INT(kcuda_attention(K, &sh, n, SPLIT, dq, dkc, dvc, dpos, dseq, dpart, dcount, dout, NULL), 0);
    to_host(got, dout, 4 * qn);
    char what[96];
    snprintf(what, sizeof(what), "attention batch hd %d %s, %d/%d heads, %d tokens from %d, mode %d", hd,
             f16 ? "f16" : "f32", H, KV, n, off, mode);
    CHECK_NMSE(what, got, ref, (int64_t)qn, 1e-6);
    const double worst = nmse_rows_max(got, ref, (int64_t)n * H, hd);
    if (!(worst <= 1e-5)) {
        fprintf(stderr, "  %s: worst row nmse %.3g > 1e-5\n", what, worst);
        test_failed_ = 1;
    }
    kcuda_free(dkc), kcuda_free(dvc), kcuda_free(dq), kcuda_free(dout), kcuda_free(dpart), kcuda_free(dpos);
    kcuda_free(dseq), kcuda_free(dcount);
    free(pos), free(seq), free(kc), free(vc), free(kf), free(vf), free(q), free(qr), free(ref), free(got);
}

static void test_attention(void)
{
    if (!gpu()) return;
    /* parts joined in global memory, then clusters of 8 and 16 blocks of 128 and 256 threads */
    static const int clusters[] = { 0, 8, 8, 16, 16 }, threads[] = { 128, 128, 256, 128, 256 };
    for (int c = 0; c < 5; c++) {
        if (kcuda_set_attn_cluster(K, clusters[c]) != clusters[c]) {
            fprintf(stderr, "  no thread block clusters on this GPU: attention in clusters of %d not run\n", clusters[c]);
            continue;
        }
        kcuda_set_attn_cluster_threads(K, threads[c]);
        check_attention(8, true, 1, 4, 2);
        check_attention(32, true, 5, 4, 2);
        check_attention(64, false, 3, 4, 2);
        check_attention(64, true, 3, 2, 2);
        check_attention(128, true, 16, 4, 2);
        check_attention(128, false, 16, 4, 2);
        check_attention(128, true, KCUDA_ATTN_SPLIT_MAX, 8, 2);  /* Llama-3 grouping, decode splits */
        check_attention(128, true, KCUDA_ATTN_SPLIT_MAX, 16, 2); /* Qwen3-MoE grouping */
        check_attention(128, true, 3, 6, 2);                     /* a group the coalesced kernel does not take */
        check_attention(256, true, 2, 4, 2);
        check_attention(64, true, 4, 16, 2);                     /* 8 heads per KV head of 64: units of 4 heads */
        check_attention_batch(64, true, 2, 2, 1, 0, 0);          /* one token: split kernels */
        check_attention_batch(64, true, 2, 2, 37, 0, 0);         /* a short prompt: split kernels */
    }
    kcuda_set_attn_cluster(K, 16); /* as kcuda_create left it */
    kcuda_set_attn_cluster_threads(K, 256);
    check_attention_batch(64, true, 2, 2, 77, 0, 0);     /* group 1 */
    check_attention_batch(128, true, 4, 2, 65, 0, 0);    /* group 2: two row tiles and one token more */
    check_attention_batch(128, true, 8, 2, 600, 0, 0);   /* Llama-3 grouping, a long prompt */
    check_attention_batch(128, true, 16, 2, 255, 300, 0); /* Qwen3-MoE grouping, continuing a cache */
    check_attention_batch(64, true, 8, 2, 201, 80, 1);   /* two sequences, one after the other */
    check_attention_batch(128, true, 16, 2, 100, 10, 2); /* two sequences, alternating tokens */
    check_attention_batch(32, true, 8, 2, 70, 0, 0);     /* a head size the tensor cores do not take */
    check_attention_batch(128, false, 8, 2, 70, 5, 1);   /* F32 cache: split kernels */
}

/* ---- the small kernels ---- */

/* kcuda_upload_gather: pieces of odd sizes and alignments land whole, and a
 * captured graph copies what the host buffers hold at each launch. */
static void check_upload_gather(void)
{
    enum { N = 3 };
    const size_t bytes[N] = { 16388, 7, 4 }, off[N] = { 0, 3, 0 };
    uint8_t *h = NULL, *d[N], *got = malloc(bytes[0]);
    TT_ASSERT(kcuda_host_alloc((void **)&h, 3 * 16400) == 0 && got);
    void *dst[N];
    const void *src[N];
    for (int i = 0; i < N; i++) {
        d[i] = dev(bytes[i] + off[i]);
        dst[i] = d[i] + off[i], src[i] = h + 16400 * i + off[i];
    }
    struct kcuda_graph *g = NULL;
    CHECK_EQ_INT(kcuda_graph_begin(K), 0);
    CHECK_EQ_INT(kcuda_upload_gather(K, N, dst, src, bytes), 0);
    CHECK_EQ_INT(kcuda_graph_end(K, &g), 0);
    for (int round = 0; round < 2 && g; round++) {
        for (size_t i = 0; i < 3 * 16400; i++) h[i] = (uint8_t)(i * 7 + 13 * round);
        CHECK_EQ_INT(kcuda_graph_launch(K, g), 0);
        for (int i = 0; i < N; i++) {
            to_host(got, dst[i], bytes[i]);
            CHECK(memcmp(got, src[i], bytes[i]) == 0);
        }
    }
    kcuda_graph_destroy(g);
    CHECK(kcuda_upload_gather(K, KCUDA_GATHER_MAX + 1, dst, src, bytes) != 0);
    for (int i = 0; i < N; i++) kcuda_free(d[i]);
    kcuda_host_free(h);
    free(got);
}

static void test_misc(void)
{
    if (!gpu()) return;
    enum { T = 3, N = 1000 };
    float a[T * N], b[T * N], bias[N], got[T * N], want[T * N];
    fill(a, T * N, 4.0f), fill(b, T * N, 1.0f), fill(bias, N, 1.0f);
    float *da = dev_from(a, sizeof(a)), *db = dev_from(b, sizeof(b)), *dbias = dev_from(bias, sizeof(bias));
    CHECK_EQ_INT(kcuda_swiglu(K, da, db, T, N, N), 0);
    to_host(got, da, sizeof(got));
    for (int i = 0; i < T * N; i++) want[i] = silu_mul(a[i], b[i]);
    CHECK_NMSE("swiglu", got, want, T * N, 1e-13);
    CHECK_EQ_INT(kcuda_add_bias(K, da, dbias, T, N, N), 0);
    CHECK_EQ_INT(kcuda_add(K, da, db, T * N), 0);
    to_host(got, da, sizeof(got));
    for (int i = 0; i < T * N; i++) want[i] = want[i] + bias[i % N] + b[i];
    CHECK_NMSE("bias, add", got, want, T * N, 1e-13);
    const int32_t rows[2] = { 2, 0 };
    int32_t *drows = dev_from(rows, sizeof(rows));
    CHECK_EQ_INT(kcuda_gather_rows(K, db, drows, 2, N, da), 0);
    to_host(got, da, sizeof(float) * 2 * N);
    CHECK(memcmp(got, b + 2 * N, sizeof(float) * N) == 0 && memcmp(got + N, b, sizeof(float) * N) == 0);
    double s = 0.0;
    for (int i = 0; i < T * N; i++) s += b[i];
    CHECK_EQ_INT(kcuda_sum_f32(K, db, T * N, da), 0);
    to_host(got, da, sizeof(float));
    CHECK_NEAR(got[0], s, 1e-5 * fabs(s) + 1e-6);
    kcuda_free(da), kcuda_free(db), kcuda_free(dbias), kcuda_free(drows);
    check_upload_gather();
}

/* Errors are reported, not crashed on: a bad type and an impossible allocation. */
static void test_errors(void)
{
    if (!gpu()) return;
    void *p = NULL;
    CHECK(kcuda_malloc(K, &p, (size_t)1 << 50, "a test of failure") == TT_ENOMEM);
    CHECK(p == NULL && strstr(tt_error_detail(), "out of GPU memory") != NULL);
    const struct kcuda_weight w = { NULL, 99, 32, 1, 32, 32, 0 };
    CHECK(kcuda_matvec(K, &w, NULL, NULL, 64, 1, NULL, 1, NULL, KCUDA_OUT_STORE) == TT_EUNSUPPORTED);
    CHECK_EQ_INT(kcuda_sync(K), 0);
    tt_error_clear();
}

/* The copy bandwidth, for the benchmark notes (always passes when measured). */
static void test_bandwidth(void)
{
    if (!gpu()) return;
    const double gbs = kcuda_copy_bandwidth_gbs(K);
    fprintf(stderr, "  %s: device-to-device copy %.0f GB/s (read + write)\n", kcuda_device_name(K), gbs);
    CHECK(gbs > 0.0);
}

/* ---- the GPU engine against the CPU engine ---- */

static const char *const engine_models[] = {
    "stories260K",          "synth-llama.f16",      "synth-llama.q4_k_m",  "synth-llama.q8_0",
    "synth-mixtral.q4_k_m", "synth-mixtral.q8_0",   "synth-qwen2.f16",     "synth-qwen2.q4_k_m",
    "synth-qwen2.q8_0",     "synth-qwen2moe.q4_k_m", "synth-qwen2moe.q8_0", "synth-qwen3.f16",
    "synth-qwen3.q4_k_m",   "synth-qwen3.q8_0",     "synth-qwen3moe.q4_k_m", "synth-qwen3moe.q8_0",
};

struct lstats {
    double max, sum;
    int64_t n;
};

static void lstats_add(struct lstats *s, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        s->max = d > s->max || d != d ? d : s->max;
        s->sum += d;
    }
    s->n += n;
}

/* Prompt of 40 tokens (batch products), 5 tokens (matrix-vector loop), then
 * greedy decode steps (graph), CPU and GPU side by side. Returns false if
 * the model is missing. */
static bool engine_pair(const char *name, int n_gpu_layers, enum engine_kv kv)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "models/%s.gguf", name);
    const char *path = test_shared_path(rel);
    struct model m;
    if (!test_file_exists(path) || model_load(&m, path)) return false;
    const int V = m.hp.n_vocab, NP = 40, NB = KCUDA_MATVEC_TOK_MAX + 12;
    struct engine_opts o = { .n_threads = 4, .n_ctx = NB + 16, .n_batch = NB, .kv = kv };
    struct engine *cpu = NULL, *g = NULL;
    CHECK_EQ_INT(engine_create(&cpu, &m, &o), 0);
    o.n_gpu_layers = n_gpu_layers;
    int err = engine_create(&g, &m, &o);
    if (err) fprintf(stderr, "  %s: GPU engine: %s\n", name, tt_error_detail());
    CHECK_EQ_INT(err, 0);
    float *a = malloc(sizeof(float) * (size_t)(NB * V)), *b = malloc(sizeof(float) * (size_t)(NB * V));
    int32_t ids[KCUDA_MATVEC_TOK_MAX + 12];
    for (int i = 0; i < NB; i++) ids[i] = i == 0 ? 1 : 3 + (i * 37) % (V - 3);
    struct lstats s = { 0 }, sb = { 0 };
    int same = 0;
    if (cpu && g) { /* a batch for the cuBLAS path */
        CHECK_EQ_INT(engine_eval(cpu, ids, NB, ENGINE_LOGITS_ALL, a), 0);
        CHECK_EQ_INT(engine_eval(g, ids, NB, ENGINE_LOGITS_ALL, b), 0);
        lstats_add(&sb, b, a, (int64_t)NB * V);
        for (int r = 0; r < NB; r++) {
            int ia = 0, ib = 0;
            for (int i = 1; i < V; i++) {
                ia = a[(size_t)r * V + i] > a[(size_t)r * V + ia] ? i : ia;
                ib = b[(size_t)r * V + i] > b[(size_t)r * V + ib] ? i : ib;
            }
            same += ia == ib;
        }
    }
    for (int pass = 0; cpu && g && pass < 2; pass++) {
        const int n = pass == 0 ? NP : 5;
        engine_truncate(cpu, 0);
        engine_truncate(g, 0);
        CHECK_EQ_INT(engine_eval(cpu, ids, n, ENGINE_LOGITS_ALL, a), 0);
        CHECK_EQ_INT(engine_eval(g, ids, n, ENGINE_LOGITS_ALL, b), 0);
        lstats_add(&s, b, a, (int64_t)n * V);
        for (int step = 0; step < 6; step++) {
            int32_t tok = 0;
            for (int i = 1; i < V; i++) tok = a[(size_t)(n - 1) * V + i] > a[(size_t)(n - 1) * V + tok] ? i : tok;
            CHECK_EQ_INT(engine_eval(cpu, &tok, 1, ENGINE_LOGITS_LAST, a + (size_t)(n - 1) * V), 0);
            CHECK_EQ_INT(engine_eval(g, &tok, 1, ENGINE_LOGITS_LAST, b + (size_t)(n - 1) * V), 0);
            lstats_add(&s, b + (size_t)(n - 1) * V, a + (size_t)(n - 1) * V, V);
        }
    }
    const bool flt = !strcmp(name, "stories260K") || strstr(name, ".f16");
    const double mean = s.n ? s.sum / (double)s.n : 0.0;
    const double mean_b = sb.n ? sb.sum / (double)sb.n : 0.0;
    const bool ok = flt ? s.max <= 0.02 : mean <= 0.05 && s.max <= 0.5;
    const bool ok_b = mean_b <= 0.05 && same * 100 >= NB * 95;
    if (!ok || !ok_b || getenv("TT_TEST_VERBOSE"))
        fprintf(stderr, "  %s (gpu layers %d, kv %s): GPU vs CPU max %.5f mean %.5f; %d-token batch max %.5f "
                "mean %.5f argmax %d/%d\n", name, n_gpu_layers, kv == ENGINE_KV_F16 ? "f16" : "f32", s.max, mean,
                NB, sb.max, mean_b, same, NB);
    CHECK(ok);
    CHECK(ok_b);
    engine_destroy(g);
    engine_destroy(cpu);
    model_free(&m);
    free(a), free(b);
    return true;
}

static void test_engine_models(void)
{
    if (!gpu()) return;
    int n = 0;
    for (size_t i = 0; i < TT_ARRAY_LEN(engine_models); i++) n += engine_pair(engine_models[i], -1, ENGINE_KV_F16);
    if (n == 0) TEST_SKIP("no models in %s", test_shared_path("models"));
}

static void test_engine_split(void)
{
    if (!gpu()) return;
    int n = engine_pair("stories260K", 2, ENGINE_KV_F16);
    n += engine_pair("synth-llama.q4_k_m", 1, ENGINE_KV_F16);
    n += engine_pair("synth-qwen3moe.q4_k_m", 1, ENGINE_KV_F16);
    n += engine_pair("stories260K", -1, ENGINE_KV_F32);
    n += engine_pair("synth-qwen3.q8_0", -1, ENGINE_KV_F32);
    if (n == 0) TEST_SKIP("no models in %s", test_shared_path("models"));
}

/* Batches that mix sequences as a server's do, on a qwen3 model (head size
 * 64: prompt runs of 64+ tokens take the tensor-core attention): two
 * prompts; then decode tokens of sequences 1 and 0 before a prompt of
 * sequence 2, and decode tokens of 1 and 2 before a prompt run of sequence
 * 0 (engine_cuda.c gives such leading decode tokens their own attention
 * launch). Sequence 0's next logits, which depend on every row it had in
 * those batches (through the second layer's cache), are compared with the
 * CPU engine's. */
static void test_engine_mixed(void)
{
    if (!gpu()) return;
    const char *path = test_shared_path("models/synth-qwen3.f16.gguf");
    struct model m;
    if (!test_file_exists(path) || model_load(&m, path)) {
        TEST_SKIP("%s missing", path);
        return;
    }
    const int V = m.hp.n_vocab;
    struct engine_opts o = { .n_threads = 4, .n_ctx = 256, .n_batch = 160, .n_seq = 3 };
    struct engine *eng[2] = { NULL, NULL };
    CHECK_EQ_INT(engine_create(&eng[0], &m, &o), 0);
    o.n_gpu_layers = -1;
    CHECK_EQ_INT(engine_create(&eng[1], &m, &o), 0);
    struct engine_tok toks[160];
    float *lg[2] = { malloc(sizeof(float) * (size_t)V), malloc(sizeof(float) * (size_t)V) };
    for (int side = 0; side < 2 && eng[0] && eng[1]; side++) {
        struct engine *e = eng[side];
        int n = 0, id = 5;
        for (int i = 0; i < 40; i++) toks[n++] = (struct engine_tok){ 3 + (id++ * 37) % (V - 3), 0, false };
        for (int i = 0; i < 30; i++) toks[n++] = (struct engine_tok){ 3 + (id++ * 37) % (V - 3), 1, false };
        CHECK_EQ_INT(engine_decode(e, toks, n, NULL, NULL), 0);
        n = 0;
        toks[n++] = (struct engine_tok){ 11, 1, false };
        toks[n++] = (struct engine_tok){ 12, 0, false };
        for (int i = 0; i < 70; i++) toks[n++] = (struct engine_tok){ 3 + (id++ * 37) % (V - 3), 2, false };
        CHECK_EQ_INT(engine_decode(e, toks, n, NULL, NULL), 0);
        n = 0;
        toks[n++] = (struct engine_tok){ 13, 1, false };
        toks[n++] = (struct engine_tok){ 14, 2, false };
        for (int i = 0; i < 66; i++) toks[n++] = (struct engine_tok){ 3 + (id++ * 37) % (V - 3), 0, false };
        CHECK_EQ_INT(engine_decode(e, toks, n, NULL, NULL), 0);
        const int32_t last = 15;
        CHECK_EQ_INT(engine_eval(e, &last, 1, ENGINE_LOGITS_LAST, lg[side]), 0);
    }
    struct lstats s = { 0 };
    lstats_add(&s, lg[1], lg[0], V);
    if (s.max > 0.02 || getenv("TT_TEST_VERBOSE"))
        fprintf(stderr, "  mixed batches (synth-qwen3.f16): GPU vs CPU max %.5f mean %.5f\n", s.max,
                s.n ? s.sum / (double)s.n : 0.0);
    CHECK(s.max <= 0.02);
    engine_destroy(eng[1]);
    engine_destroy(eng[0]);
    model_free(&m);
    free(lg[0]), free(lg[1]);
}

static const struct test_case cases[] = {
    { "convert", test_convert },       { "norm_convert", test_norm_convert },
    { "dequant", test_dequant },       { "products", test_products },
    { "q6_q4_groups", test_groups },  { "multi", test_multi },
    { "rope", test_rope },
    { "attention", test_attention },   { "misc", test_misc },
    { "errors", test_errors },         { "engine_models", test_engine_models },
    { "engine_split", test_engine_split }, { "engine_mixed", test_engine_mixed },
    { "bandwidth", test_bandwidth },
};

#else /* no CUDA in this build */

static void test_no_cuda(void) { TEST_SKIP("built without CUDA (make CUDA=1 where nvcc is installed)"); }

static const struct test_case cases[] = { { "cuda", test_no_cuda } };

#endif

TEST_MAIN(cases)
