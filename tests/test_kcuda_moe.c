/*
 * test_kcuda_moe.c: the mixture-of-experts kernels against the CPU's scalar
 * reference, on random inputs: routing (kcuda_moe_route, the fused router
 * kcuda_moe_router with and without the ffn norm), the expert products
 * (kcuda_matvec_experts on planned tiles, kcuda_moe_gemm on grouped slots),
 * the join and decode's fused down+join, and experts split over two ranks.
 *
 * Bounds (normalized MSE, sum (gpu - ref)^2 / sum ref^2):
 *   routing: identical choices, weights within 1e-6
 *   fused router (blocks joined by a ticket, and in clusters of 8 and 16):
 *   logits 1e-10; with the ffn norm, the normed rows, Q8_K rows, logits and
 *   choices bit-identical to norm then router
 *   expert products (tiles) 1e-10; grouped tensor-core products 1e-5
 *   (F16 operands, as the batch products); join 1e-12
 *   fused down+join vs products then join 1e-12
 *   experts split over ranks: partials summed vs one rank 1e-12
 * Helpers shared with test_kcuda.c are in kcuda_test.h.
 * Without a GPU (or in a build without CUDA) every case prints SKIP.
 */
#include "test.h"

#include "moe/moe.h"

#ifdef TT_HAVE_CUDA
#include "kcuda_test.h"

/* The CPU engine's router (moe_route_token), for one token. */
static void ref_route(const float *logits, int X, int Kx, bool norm, int32_t *sel, float *w)
{
    float p[64];
    memcpy(p, logits, sizeof(float) * (size_t)X);
    moe_route_token(p, X, Kx, norm, sel, w);
}

static void test_moe(void)
{
    if (!gpu()) return;
    enum { X = 6, KX = 2, T = 11, S = T * KX, E = 256, FF = 64 };
    float logits[T * X], w_ref[S], w_got[S];
    int32_t sel_ref[S], sel_got[S];
    fill(logits, T * X, 2.0f);
    logits[3 * X + 1] = logits[3 * X + 4]; /* a tie: the lower id wins */
    for (int t = 0; t < T; t++) ref_route(logits + t * X, X, KX, t % 2 == 0, sel_ref + t * KX, w_ref + t * KX);
    float *dlog = dev_from(logits, sizeof(logits)), *dw = dev(sizeof(w_got));
    int32_t *dsel = dev(sizeof(sel_got));
    /* routing: the two halves of the tokens with and without renormalization */
    CHECK_EQ_INT(kcuda_moe_route(K, dlog, T, X, KX, true, dsel, dw, NULL, NULL), 0);
    to_host(sel_got, dsel, sizeof(sel_got));
    to_host(w_got, dw, sizeof(w_got));
    for (int t = 0; t < T; t += 2)
        for (int k = 0; k < KX; k++) {
            CHECK_EQ_INT(sel_got[t * KX + k], sel_ref[t * KX + k]);
            CHECK_NEAR(w_got[t * KX + k], w_ref[t * KX + k], 1e-6);
        }
    int32_t rt[S * KCUDA_MOE_TILE_INTS], *drt = dev(sizeof(rt));
    CHECK_EQ_INT(kcuda_moe_route(K, dlog, T, X, KX, false, dsel, dw, drt, NULL), 0);
    to_host(sel_got, dsel, sizeof(sel_got));
    to_host(w_got, dw, sizeof(w_got));
    to_host(rt, drt, sizeof(rt));
    for (int sl = 0; sl < S; sl++) /* the decode tiles the router writes: one slot each */
        CHECK(rt[sl * KCUDA_MOE_TILE_INTS] == sel_got[sl] && rt[sl * KCUDA_MOE_TILE_INTS + 1] == 1 &&
              rt[sl * KCUDA_MOE_TILE_INTS + 2] == sl);
    kcuda_free(drt);
    for (int t = 1; t < T; t += 2)
        for (int k = 0; k < KX; k++) {
            CHECK_EQ_INT(sel_got[t * KX + k], sel_ref[t * KX + k]);
            CHECK_NEAR(w_got[t * KX + k], w_ref[t * KX + k], 1e-6);
        }
    /* experts: gate/up Q4_K [X][FF][E], down Q8_0 [X][E][FF] */
    uint8_t *gate = make_weight(TT_TYPE_Q4_K, E, X * FF, 1.0f), *up = make_weight(TT_TYPE_Q4_K, E, X * FF, 1.0f);
    uint8_t *down = make_weight(TT_TYPE_Q8_0, FF, X * E, 1.0f);
    const size_t rg = tt_row_size(TT_TYPE_Q4_K, E), rd = tt_row_size(TT_TYPE_Q8_0, FF);
    struct kcuda_weight dg = { dev_from(gate, rg * X * FF), TT_TYPE_Q4_K, E, FF, rg, rg * FF, 0 };
    struct kcuda_weight du = dg, dd = { dev_from(down, rd * X * E), TT_TYPE_Q8_0, FF, E, rd, rd * E, 0 };
    du.data = dev_from(up, rg * X * FF);
    float *x = malloc(sizeof(float) * T * E);
    fill(x, T * E, 1.0f);
    float *dx = dev_from(x, sizeof(float) * T * E), *dh = dev(sizeof(float) * S * FF), *dy = dev(sizeof(float) * S * E);
    const size_t sa = kcuda_act_row_bytes(KCUDA_Q8_K, E), sh = kcuda_act_row_bytes(KCUDA_Q8_0, FF);
    uint8_t *da = dev(sa * T), *dha = dev(sh * S);
    int32_t *dtiles = dev(sizeof(int32_t) * KCUDA_MOE_TILE_INTS * (size_t)kcuda_moe_max_tiles(S, X));
    float *h = malloc(sizeof(float) * S * FF), *href = malloc(sizeof(float) * S * FF);
    float *y = malloc(sizeof(float) * S * E), *yref = malloc(sizeof(float) * S * E), g1, u1;
    CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dx, E, T, E, da, sa), 0);
    for (int pass = 0; pass < 2; pass++) { /* tiles of up to 8 slots, then one slot per tile (T = 1) */
        const int nt = pass == 0 ? T : 1, ns = nt * KX, tt = pass == 0 ? KCUDA_MOE_TILE : 1;
        const int mt = tt == 1 ? ns : kcuda_moe_max_tiles(ns, X);
        CHECK_EQ_INT(kcuda_moe_plan(K, dsel, ns, X, tt, dtiles), 0);
        CHECK_EQ_INT(kcuda_matvec_experts(K, &dg, &du, dtiles, mt, tt, da, sa, KX, dh, FF, KCUDA_OUT_SWIGLU), 0);
        CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_0, dh, FF, ns, FF, dha, sh), 0);
        CHECK_EQ_INT(kcuda_matvec_experts(K, &dd, NULL, dtiles, mt, tt, dha, sh, 1, dy, E, KCUDA_OUT_STORE), 0);
        to_host(h, dh, sizeof(float) * (size_t)ns * FF);
        to_host(y, dy, sizeof(float) * (size_t)ns * E);
        for (int s = 0; s < ns; s++) {
            const int ex = sel_got[s];
            for (int r = 0; r < FF; r++) {
                ref_products(TT_TYPE_Q4_K, gate + (size_t)(ex * FF + r) * rg, E, 1, x + (s / KX) * E, 1, &g1);
                ref_products(TT_TYPE_Q4_K, up + (size_t)(ex * FF + r) * rg, E, 1, x + (s / KX) * E, 1, &u1);
                href[s * FF + r] = silu_mul(g1, u1);
            }
            ref_products(TT_TYPE_Q8_0, down + (size_t)ex * E * rd, FF, E, h + s * FF, 1, yref + s * E);
        }
        CHECK_NMSE("expert gate/up", h, href, ns * FF, 1e-10);
        CHECK_NMSE("expert down", y, yref, ns * E, 1e-10);
    }
    /* the join, with a shared expert */
    float *x0 = malloc(sizeof(float) * T * E), *ysh = malloc(sizeof(float) * T * E), *gsh = malloc(sizeof(float) * E);
    float *xr = malloc(sizeof(float) * T * E);
    fill(x0, T * E, 1.0f), fill(ysh, T * E, 1.0f), fill(gsh, E, 0.1f);
    float *dx0 = dev_from(x0, sizeof(float) * T * E), *dysh = dev_from(ysh, sizeof(float) * T * E), *dgsh = dev_from(gsh, sizeof(float) * E);
    CHECK_EQ_INT(kcuda_moe_join(K, dx0, dy, dsel, dw, 1, KX, E, dysh, dgsh, dx), 0);
    to_host(xr, dx0, sizeof(float) * E);
    float s = 0.0f;
    for (int i = 0; i < E; i++) s += gsh[i] * x[i];
    s = 1.0f / (1.0f + expf(-s));
    const int lo = sel_got[0] < sel_got[1] ? 0 : 1;
    for (int i = 0; i < E; i++) {
        float acc = 0.0f;
        acc += w_got[lo] * y[lo * E + i];
        acc += w_got[1 - lo] * y[(1 - lo) * E + i];
        acc += s * ysh[i];
        x0[i] += acc;
    }
    CHECK_NMSE("join", xr, x0, E, 1e-12);
    kcuda_free(dlog), kcuda_free(dw), kcuda_free(dsel), kcuda_free((void *)dg.data), kcuda_free((void *)du.data);
    kcuda_free((void *)dd.data), kcuda_free(dx), kcuda_free(dh), kcuda_free(dy), kcuda_free(da), kcuda_free(dha);
    kcuda_free(dtiles), kcuda_free(dx0), kcuda_free(dysh), kcuda_free(dgsh);
    free(gate), free(up), free(down), free(x), free(h), free(href), free(y), free(yref);
    free(x0), free(ysh), free(gsh), free(xr);
}

/* The fused router (product, softmax, top-k in one launch) against the CPU's
 * dot products and moe_route_token on the device's own logits (so near-ties
 * cannot flip), twice over the same tickets (they must reset themselves). */
static void check_router(int X, int n_in, int T, int KX, bool norm)
{
    float *w = malloc(sizeof(float) * (size_t)X * n_in), *x = malloc(sizeof(float) * (size_t)T * n_in);
    float *ref = malloc(sizeof(float) * (size_t)T * X), *got = malloc(sizeof(float) * (size_t)T * X);
    float wg[8 * 32], wr[32];
    int32_t sel[8 * 32], sr[32], tiles[8 * 32 * KCUDA_MOE_TILE_INTS];
    TT_ASSERT(T <= 8 && KX <= 32 && X <= 64);
    fill(w, (int64_t)X * n_in, 0.1f);
    fill(x, (int64_t)T * n_in, 1.0f);
    for (int t = 0; t < T; t++)
        for (int r = 0; r < X; r++) {
            double d = 0.0;
            for (int i = 0; i < n_in; i++) d += (double)w[(size_t)r * n_in + i] * x[(size_t)t * n_in + i];
            ref[t * X + r] = (float)d;
        }
    const struct kcuda_weight dw = { .data = dev_from(w, sizeof(float) * (size_t)X * n_in), .type = KCUDA_F32,
                                     .n_in = n_in, .n_out = X, .row_stride = sizeof(float) * (size_t)n_in };
    float *dx = dev_from(x, sizeof(float) * (size_t)T * n_in), *dlog = dev(sizeof(float) * (size_t)T * X);
    float *dwt = dev(sizeof(wg));
    int32_t *dsel = dev(sizeof(sel)), *dtiles = dev(sizeof(tiles));
    int *dcount = dev(sizeof(int) * (size_t)T);
    TT_ASSERT(kcuda_memset(K, dcount, 0, sizeof(int) * (size_t)T) == 0);
    for (int rep = 0; rep < 2; rep++) {
        int err = kcuda_moe_router(K, &dw, dx, T, KX, norm, dlog, dcount, dsel, dwt, dtiles, NULL, NULL);
        if (err) fprintf(stderr, "  %s\n", tt_error_detail());
        CHECK_EQ_INT(err, 0);
        to_host(got, dlog, sizeof(float) * (size_t)T * X);
        to_host(sel, dsel, sizeof(int32_t) * (size_t)T * KX);
        to_host(wg, dwt, sizeof(float) * (size_t)T * KX);
        to_host(tiles, dtiles, sizeof(int32_t) * (size_t)T * KX * KCUDA_MOE_TILE_INTS);
        CHECK_NMSE("router logits", got, ref, (int64_t)T * X, 1e-10);
        for (int t = 0; t < T; t++) {
            ref_route(got + t * X, X, KX, norm, sr, wr);
            for (int k = 0; k < KX; k++) {
                const int sl = t * KX + k;
                CHECK_EQ_INT(sel[sl], sr[k]);
                CHECK_NEAR(wg[sl], wr[k], 1e-6);
                CHECK(tiles[sl * KCUDA_MOE_TILE_INTS] == sel[sl] && tiles[sl * KCUDA_MOE_TILE_INTS + 1] == 1 &&
                      tiles[sl * KCUDA_MOE_TILE_INTS + 2] == sl);
            }
        }
    }
    kcuda_free((void *)dw.data), kcuda_free(dx), kcuda_free(dlog), kcuda_free(dwt), kcuda_free(dsel);
    kcuda_free(dtiles), kcuda_free(dcount);
    free(w), free(x), free(ref), free(got);
}

/* The router doing the ffn norm (decode) against kcuda_norm_convert then
 * the router: the same normed floats and Q8_K rows bit for bit, the same
 * choices. */
static void check_router_norm(int X, int n_in, int T, int KX)
{
    const size_t xs = (size_t)T * n_in, qs = kcuda_act_row_bytes(KCUDA_Q8_K, n_in);
    float *w = malloc(sizeof(float) * (size_t)X * n_in), *x = malloc(sizeof(float) * xs);
    float *nw = malloc(sizeof(float) * (size_t)n_in), *yf[2], *lg[2];
    uint8_t *q[2];
    int32_t *sel[2];
    fill(w, (int64_t)X * n_in, 0.1f);
    fill(x, (int64_t)xs, 3.0f);
    fill(nw, n_in, 1.0f);
    const struct kcuda_weight dw = { .data = dev_from(w, sizeof(float) * (size_t)X * n_in), .type = KCUDA_F32,
                                     .n_in = n_in, .n_out = X, .row_stride = sizeof(float) * (size_t)n_in };
    CHECK(kcuda_moe_router_norm_ok(&dw));
    float *dx = dev_from(x, sizeof(float) * xs), *dnw = dev_from(nw, sizeof(float) * (size_t)n_in);
    float *dyf = dev(sizeof(float) * xs), *dlog = dev(sizeof(float) * (size_t)T * X), *dwt = dev(sizeof(float) * 256);
    uint8_t *dq = dev(qs * (size_t)T);
    int32_t *dsel = dev(sizeof(int32_t) * 256), *dtiles = dev(sizeof(int32_t) * 256 * KCUDA_MOE_TILE_INTS);
    int *dcount = dev(sizeof(int) * (size_t)T);
    TT_ASSERT(kcuda_memset(K, dcount, 0, sizeof(int) * (size_t)T) == 0);
    for (int f = 0; f < 2; f++) {
        int err = 0;
        if (f == 0) {
            const int type = KCUDA_Q8_K;
            void *dst = dq;
            err = kcuda_norm_convert_multi(K, 1, &type, &dst, &qs, dx, n_in, T, n_in, dnw, 1e-5f, dyf);
            if (!err) err = kcuda_moe_router(K, &dw, dyf, T, KX, true, dlog, dcount, dsel, dwt, dtiles, NULL, NULL);
        } else {
            const struct kcuda_router_norm rn = { dnw, 1e-5f, dyf, dq, qs };
            err = kcuda_moe_router(K, &dw, dx, T, KX, true, dlog, dcount, dsel, dwt, dtiles, NULL, &rn);
        }
        if (err) fprintf(stderr, "  %s\n", tt_error_detail());
        CHECK_EQ_INT(err, 0);
        yf[f] = malloc(sizeof(float) * xs), lg[f] = malloc(sizeof(float) * (size_t)T * X);
        q[f] = malloc(qs * (size_t)T), sel[f] = malloc(sizeof(int32_t) * (size_t)T * KX);
        to_host(yf[f], dyf, sizeof(float) * xs);
        to_host(lg[f], dlog, sizeof(float) * (size_t)T * X);
        to_host(q[f], dq, qs * (size_t)T);
        to_host(sel[f], dsel, sizeof(int32_t) * (size_t)T * KX);
        TT_ASSERT(kcuda_memset(K, dyf, 0, sizeof(float) * xs) == 0 && kcuda_memset(K, dq, 0, qs * (size_t)T) == 0);
    }
    CHECK(memcmp(yf[0], yf[1], sizeof(float) * xs) == 0);
    CHECK(memcmp(q[0], q[1], qs * (size_t)T) == 0);
    CHECK(memcmp(lg[0], lg[1], sizeof(float) * (size_t)T * X) == 0);
    CHECK(memcmp(sel[0], sel[1], sizeof(int32_t) * (size_t)T * KX) == 0);
    for (int f = 0; f < 2; f++) free(yf[f]), free(lg[f]), free(q[f]), free(sel[f]);
    kcuda_free((void *)dw.data), kcuda_free(dx), kcuda_free(dnw), kcuda_free(dyf), kcuda_free(dlog);
    kcuda_free(dwt), kcuda_free(dq), kcuda_free(dsel), kcuda_free(dtiles), kcuda_free(dcount);
    free(w), free(x), free(nw);
}

/* Slots grouped by expert, then the grouped tensor-core products (gate/up
 * with SwiGLU, then down) against the CPU's dots: F16 operands, so the batch
 * products' bound 1e-5. One expert takes more slots than a group holds.
 * With `regroup`, the (Q6_K) down experts go through kcuda_upload_weight,
 * which regroups them: the products then expand them through
 * kcuda_weight_format, and the decode down+join refuses them. */
static void check_grouped(enum tt_type tg, enum tt_type td, int X, int KX, int T, int E, int FF, bool regroup)
{
    const int S = T * KX, mg = kcuda_moe_max_groups(S, X);
    const enum tt_type vg = tt_type_get(tg)->vec_dot_type, vd = tt_type_get(td)->vec_dot_type;
    uint8_t *gate = make_weight(tg, E, (int64_t)X * FF, 1.0f), *up = make_weight(tg, E, (int64_t)X * FF, 1.0f);
    uint8_t *down = make_weight(td, FF, (int64_t)X * E, 1.0f);
    const size_t rg = tt_row_size(tg, E), rd = tt_row_size(td, FF);
    struct kcuda_weight dg = { .data = dev_from(gate, rg * X * FF), .type = (int)tg, .n_in = E, .n_out = FF,
                               .row_stride = rg, .expert_stride = rg * FF };
    struct kcuda_weight du = dg, dd = { .data = regroup ? dev(rd * X * E) : dev_from(down, rd * X * E), .type = (int)td,
                                        .n_in = FF, .n_out = E, .row_stride = rd, .expert_stride = rd * E };
    du.data = dev_from(up, rg * X * FF);
    for (int x = 0; regroup && x < X; x++) CHECK_EQ_INT(kcuda_upload_weight(K, &dd, x, down + (size_t)x * E * rd, rd), 0);
    CHECK(!regroup || dd.layout == KCUDA_LAYOUT_Q6_K_GROUPS);
    int32_t *sel = malloc(sizeof(int32_t) * S), *order = malloc(sizeof(int32_t) * S);
    int32_t *groups = malloc(sizeof(int32_t) * KCUDA_MOE_GROUP_INTS * (size_t)mg);
    for (int s = 0; s < S; s++) sel[s] = s % 3 == 0 ? 1 : (int)((frand() + 1.0f) * 0.5f * (float)X) % X;
    float *x = malloc(sizeof(float) * (size_t)T * E), *h = malloc(sizeof(float) * (size_t)S * FF);
    float *href = malloc(sizeof(float) * (size_t)S * FF), *y = malloc(sizeof(float) * (size_t)S * E);
    float *yref = malloc(sizeof(float) * (size_t)S * E), g1, u1;
    fill(x, (int64_t)T * E, 1.0f);
    const size_t sa = kcuda_act_row_bytes((int)vg, E), sh = kcuda_act_row_bytes((int)vd, FF);
    int32_t *dsel = dev_from(sel, sizeof(int32_t) * S), *dorder = dev(sizeof(int32_t) * S);
    int32_t *dgroups = dev(sizeof(int32_t) * KCUDA_MOE_GROUP_INTS * (size_t)mg);
    float *dx = dev_from(x, sizeof(float) * (size_t)T * E), *dh = dev(sizeof(float) * (size_t)S * FF);
    float *dy = dev(sizeof(float) * (size_t)S * E);
    uint8_t *da = dev(sa * (size_t)T), *dha = dev(sh * (size_t)S), *df16 = dev(2 * (size_t)S * (size_t)(E > FF ? E : FF));
    CHECK_EQ_INT(kcuda_moe_group(K, dsel, S, X, dorder, dgroups), 0);
    to_host(order, dorder, sizeof(int32_t) * S);
    to_host(groups, dgroups, sizeof(int32_t) * KCUDA_MOE_GROUP_INTS * (size_t)mg);
    int seen = 0, prev_e = -1, big = 0; /* groups: consecutive runs of one expert's slots */
    for (int g = 0; g < mg && groups[g * KCUDA_MOE_GROUP_INTS] >= 0; g++) {
        const int32_t *r = groups + g * KCUDA_MOE_GROUP_INTS;
        CHECK(r[0] >= prev_e && r[0] < X && r[1] == seen && r[2] >= 1 && r[2] <= KCUDA_MOE_GROUP);
        for (int i = 0; i < r[2]; i++) CHECK_EQ_INT(sel[order[r[1] + i]], r[0]);
        big += r[0] == prev_e;
        prev_e = r[0], seen += r[2];
    }
    CHECK_EQ_INT(seen, S);
    CHECK(big > 0);
    CHECK_EQ_INT(kcuda_convert(K, (int)vg, dx, E, T, E, da, sa), 0);
    CHECK_EQ_INT(kcuda_act_to_f16(K, (int)vg, da, sa, T, E, df16), 0);
    int err = kcuda_moe_gemm(K, &dg, &du, X, dgroups, mg, dorder, df16, E, KX, dh, FF, KCUDA_OUT_SWIGLU);
    if (err) fprintf(stderr, "  %s\n", tt_error_detail());
    CHECK_EQ_INT(err, 0);
    CHECK_EQ_INT(kcuda_convert(K, (int)vd, dh, FF, S, FF, dha, sh), 0);
    CHECK_EQ_INT(kcuda_act_to_f16(K, (int)vd, dha, sh, S, FF, df16), 0);
    err = kcuda_moe_gemm(K, &dd, NULL, X, dgroups, mg, dorder, df16, FF, 1, dy, E, KCUDA_OUT_STORE);
    if (err) fprintf(stderr, "  %s\n", tt_error_detail());
    CHECK_EQ_INT(err, 0);
    if (regroup) {
        CHECK_EQ_INT(kcuda_moe_down_join(K, &dd, dha, sh, dy, dsel, dy, 1, KX, NULL, NULL, NULL), TT_EUNSUPPORTED);
        tt_error_clear();
    }
    to_host(h, dh, sizeof(float) * (size_t)S * FF);
    to_host(y, dy, sizeof(float) * (size_t)S * E);
    for (int s = 0; s < S; s++) {
        const int ex = sel[s];
        for (int r = 0; r < FF; r++) {
            ref_products(tg, gate + (size_t)(ex * FF + r) * rg, E, 1, x + (size_t)(s / KX) * E, 1, &g1);
            ref_products(tg, up + (size_t)(ex * FF + r) * rg, E, 1, x + (size_t)(s / KX) * E, 1, &u1);
            href[(size_t)s * FF + r] = silu_mul(g1, u1);
        }
        ref_products(td, down + (size_t)ex * E * rd, FF, E, h + (size_t)s * FF, 1, yref + (size_t)s * E);
    }
    char what[96];
    snprintf(what, sizeof(what), "grouped gate/up %s %dx%d", tt_type_name(tg), FF, E);
    CHECK_NMSE(what, h, href, (int64_t)S * FF, 1e-5);
    snprintf(what, sizeof(what), "grouped down %s %dx%d", tt_type_name(td), E, FF);
    CHECK_NMSE(what, y, yref, (int64_t)S * E, 1e-5);
    kcuda_free((void *)dg.data), kcuda_free((void *)du.data), kcuda_free((void *)dd.data), kcuda_free(dsel);
    kcuda_free(dorder), kcuda_free(dgroups), kcuda_free(dx), kcuda_free(dh), kcuda_free(dy), kcuda_free(da);
    kcuda_free(dha), kcuda_free(df16);
    free(gate), free(up), free(down), free(sel), free(order), free(groups), free(x), free(h), free(href);
    free(y), free(yref);
}

/* A decode token's Q4_K expert tiles through the bulk-copy kernel against
 * the register kernel, bit for bit (the same per-lane dots and warp sums):
 * gate/up SwiGLU pairs and a plain product whose rows are not a multiple of
 * the block's 4, an expert of -1 (another rank's) left alone. */
static void check_experts_bulk(int X, int KX, int E, int FF)
{
    const int S = KX;
    uint8_t *gate = make_weight(TT_TYPE_Q4_K, E, (int64_t)X * FF, 1.0f), *up = make_weight(TT_TYPE_Q4_K, E, (int64_t)X * FF, 1.0f);
    const size_t rg = tt_row_size(TT_TYPE_Q4_K, E), sa = kcuda_act_row_bytes(KCUDA_Q8_K, E);
    struct kcuda_weight dg = { dev_from(gate, rg * X * FF), TT_TYPE_Q4_K, E, FF, rg, rg * FF, 0 };
    struct kcuda_weight du = dg;
    du.data = dev_from(up, rg * X * FF);
    int32_t tiles[16 * KCUDA_MOE_TILE_INTS];
    TT_ASSERT(S <= 16 && S >= 2);
    for (int k = 0; k < S; k++) { /* one slot a tile, as the decode router writes them; slot 1 elsewhere */
        int32_t *t = tiles + k * KCUDA_MOE_TILE_INTS;
        memset(t, 0, sizeof(int32_t) * KCUDA_MOE_TILE_INTS);
        t[0] = k == 1 ? -1 : (k * 7 + 3) % X, t[1] = 1, t[2] = k;
    }
    float *x = malloc(sizeof(float) * E), *got = malloc(sizeof(float) * S * FF), *want = malloc(sizeof(float) * S * FF);
    fill(x, E, 1.0f);
    float *dx = dev_from(x, sizeof(float) * E), *dh = dev(sizeof(float) * S * FF);
    uint8_t *da = dev(sa);
    int32_t *dt = dev_from(tiles, sizeof(int32_t) * KCUDA_MOE_TILE_INTS * S);
    CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dx, E, 1, E, da, sa), 0);
    if (!kcuda_set_experts_bulk(K, true)) fprintf(stderr, "  (no bulk copies on this GPU: both runs take the register kernel)\n");
    for (int pair = 1; pair >= 0; pair--) {
        float *out[2] = { want, got };
        for (int bulk = 0; bulk < 2; bulk++) {
            kcuda_set_experts_bulk(K, bulk);
            CHECK_EQ_INT(kcuda_memset(K, dh, 0, sizeof(float) * S * FF), 0);
            CHECK_EQ_INT(kcuda_matvec_experts(K, &dg, pair ? &du : NULL, dt, S, 1, da, sa, KX, dh, FF,
                                              pair ? KCUDA_OUT_SWIGLU : KCUDA_OUT_STORE), 0);
            to_host(out[bulk], dh, sizeof(float) * S * FF);
        }
        char what[96];
        snprintf(what, sizeof(what), "bulk experts %dx%d%s", FF, E, pair ? " swiglu" : "");
        if (memcmp(got, want, sizeof(float) * S * FF)) {
            fprintf(stderr, "  %s: not bit for bit the register kernel's\n", what);
            test_failed_ = 1;
        }
        float sum = 0.0f, other = 0.0f;
        for (int i = 0; i < S * FF; i++) {
            if (i / FF == 1) other += fabsf(got[i]);
            else sum += fabsf(got[i]);
        }
        if (other != 0.0f || sum == 0.0f) {
            fprintf(stderr, "  %s: the other rank's slot written (%g) or nothing computed (%g)\n", what, other, sum);
            test_failed_ = 1;
        }
    }
    kcuda_set_experts_bulk(K, true); /* as kcuda_create left it (without TT_GPU_EXPERTS_BULK) */
    kcuda_free((void *)dg.data), kcuda_free((void *)du.data), kcuda_free(dx), kcuda_free(dh), kcuda_free(da);
    kcuda_free(dt);
    free(gate), free(up), free(x), free(got), free(want);
}

/* Decode's fused down products and join against kcuda_matvec_experts (one
 * slot per tile) then kcuda_moe_join, with and without a shared expert. */
static void check_down_join(enum tt_type td, int X, int KX, int T, int E, int FF)
{
    const int S = T * KX;
    uint8_t *down = make_weight(td, FF, (int64_t)X * E, 1.0f);
    const size_t rd = tt_row_size(td, FF), sa = kcuda_act_row_bytes(KCUDA_Q8_K, FF);
    struct kcuda_weight dd = { .data = dev_from(down, rd * X * E), .type = (int)td, .n_in = FF, .n_out = E,
                               .row_stride = rd, .expert_stride = rd * E };
    int32_t *sel = malloc(sizeof(int32_t) * S);
    for (int t = 0; t < T; t++) /* distinct experts per token, not in order */
        for (int k = 0; k < KX; k++) sel[t * KX + k] = (t * 5 + (KX - 1 - k) * 3) % X;
    float *h = malloc(sizeof(float) * (size_t)S * FF), *wt = malloc(sizeof(float) * S);
    float *x0 = malloc(sizeof(float) * (size_t)T * E), *ysh = malloc(sizeof(float) * (size_t)T * E);
    float *gsh = malloc(sizeof(float) * E), *xn = malloc(sizeof(float) * (size_t)T * E);
    float *want = malloc(sizeof(float) * (size_t)T * E), *got = malloc(sizeof(float) * (size_t)T * E);
    fill(h, (int64_t)S * FF, 1.0f), fill(wt, S, 1.0f), fill(x0, (int64_t)T * E, 1.0f);
    fill(ysh, (int64_t)T * E, 1.0f), fill(gsh, E, 0.1f), fill(xn, (int64_t)T * E, 1.0f);
    int32_t *dsel = dev_from(sel, sizeof(int32_t) * S), *dtiles = dev(sizeof(int32_t) * KCUDA_MOE_TILE_INTS * S);
    float *dh = dev_from(h, sizeof(float) * (size_t)S * FF), *dwt = dev_from(wt, sizeof(float) * S);
    float *dx = dev(sizeof(float) * (size_t)T * E), *dy = dev(sizeof(float) * (size_t)S * E);
    float *dysh = dev_from(ysh, sizeof(float) * (size_t)T * E), *dgsh = dev_from(gsh, sizeof(float) * E);
    float *dxn = dev_from(xn, sizeof(float) * (size_t)T * E);
    uint8_t *da = dev(sa * S);
    CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dh, FF, S, FF, da, sa), 0);
    CHECK_EQ_INT(kcuda_moe_plan(K, dsel, S, X, 1, dtiles), 0);
    for (int sh = 0; sh < 2; sh++) {
        TT_ASSERT(kcuda_upload(K, dx, x0, sizeof(float) * (size_t)T * E) == 0);
        CHECK_EQ_INT(kcuda_matvec_experts(K, &dd, NULL, dtiles, S, 1, da, sa, 1, dy, E, KCUDA_OUT_STORE), 0);
        CHECK_EQ_INT(kcuda_moe_join(K, dx, dy, dsel, dwt, T, KX, E, sh ? dysh : NULL, dgsh, dxn), 0);
        to_host(want, dx, sizeof(float) * (size_t)T * E);
        TT_ASSERT(kcuda_upload(K, dx, x0, sizeof(float) * (size_t)T * E) == 0);
        int err = kcuda_moe_down_join(K, &dd, da, sa, dx, dsel, dwt, T, KX, sh ? dysh : NULL, dgsh, dxn);
        if (err) fprintf(stderr, "  %s\n", tt_error_detail());
        CHECK_EQ_INT(err, 0);
        to_host(got, dx, sizeof(float) * (size_t)T * E);
        char what[96];
        snprintf(what, sizeof(what), "down+join %s %dx%d, %d tokens of %d experts%s", tt_type_name(td), E, FF, T,
                 KX, sh ? ", shared" : "");
        CHECK_NMSE(what, got, want, (int64_t)T * E, 1e-12);
    }
    kcuda_free((void *)dd.data), kcuda_free(dsel), kcuda_free(dtiles), kcuda_free(dh), kcuda_free(dwt);
    kcuda_free(dx), kcuda_free(dy), kcuda_free(dysh), kcuda_free(dgsh), kcuda_free(dxn), kcuda_free(da);
    free(down), free(sel), free(h), free(wt), free(x0), free(ysh), free(gsh), free(xn), free(want), free(got);
}

/* Expert parallelism over GPU ranks (engine_cuda.c): R = 2 "ranks" on one
 * GPU, each holding every other expert (a local map with -1 for the other
 * rank's), route, compute and join only their own choices into a zeroed
 * partial; the partials summed equal the one-rank join. Decode (router
 * tiles, fused down+join) and a 5-token batch (plan tiles, products, the
 * separate join); the counting sort of prompt batches leaves -1 slots out. */
static void test_moe_split(void)
{
    if (!gpu()) return;
    enum { X = 8, KX = 3, TB = 5, S = TB * KX, E = 256, FF = 256, R = 2 };
    uint8_t *gate = make_weight(TT_TYPE_Q4_K, E, X * FF, 1.0f), *up = make_weight(TT_TYPE_Q4_K, E, X * FF, 1.0f);
    uint8_t *down = make_weight(TT_TYPE_Q4_K, FF, X * E, 1.0f);
    const size_t rg = tt_row_size(TT_TYPE_Q4_K, E), rd = tt_row_size(TT_TYPE_Q4_K, FF);
    const size_t sa = kcuda_act_row_bytes(KCUDA_Q8_K, E), sh = kcuda_act_row_bytes(KCUDA_Q8_K, FF);
    float logits[TB * X], x[TB * E], x0[TB * E], want[TB * E], got[TB * E], part[TB * E];
    fill(logits, TB * X, 2.0f), fill(x, TB * E, 1.0f), fill(x0, TB * E, 1.0f);
    float *dlog = dev_from(logits, sizeof(logits)), *dwt = dev(sizeof(float) * S);
    float *dx = dev_from(x, sizeof(x)), *dj = dev(sizeof(x)), *dh = dev(sizeof(float) * S * FF);
    float *dy = dev(sizeof(float) * S * E);
    int32_t *dsel = dev(sizeof(int32_t) * S), *dtiles = dev(sizeof(int32_t) * KCUDA_MOE_TILE_INTS * (size_t)kcuda_moe_max_tiles(S, X));
    uint8_t *da = dev(sa * TB), *dha = dev(sh * S);
    CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dx, E, TB, E, da, sa), 0);
    for (int T = 1; T <= TB; T += TB - 1) {
        const int ns = T * KX, tt = T == 1 ? 1 : KCUDA_MOE_TILE;
        for (int r = -1; r < R; r++) { /* r = -1: one rank with all experts */
            int32_t local[X], pick[X];
            int n = 0;
            for (int e = 0; e < X; e++) {
                local[e] = r < 0 || e % R == r ? n : -1;
                if (local[e] >= 0) pick[n++] = e;
            }
            uint8_t *g = malloc(rg * FF * X), *u = malloc(rg * FF * X), *d = malloc(rd * E * X);
            for (int j = 0; j < n; j++) {
                memcpy(g + j * rg * FF, gate + pick[j] * rg * FF, rg * FF);
                memcpy(u + j * rg * FF, up + pick[j] * rg * FF, rg * FF);
                memcpy(d + j * rd * E, down + pick[j] * rd * E, rd * E);
            }
            struct kcuda_weight dg = { dev_from(g, rg * FF * n), TT_TYPE_Q4_K, E, FF, rg, rg * FF, 0 };
            struct kcuda_weight du = dg, dd = { dev_from(d, rd * E * n), TT_TYPE_Q4_K, FF, E, rd, rd * E, 0 };
            du.data = dev_from(u, rg * FF * n);
            int32_t *dlocal = r < 0 ? NULL : dev_from(local, sizeof(local));
            const int mt = tt == 1 ? ns : kcuda_moe_max_tiles(ns, n);
            CHECK_EQ_INT(kcuda_moe_route(K, dlog, T, X, KX, true, dsel, dwt, tt == 1 ? dtiles : NULL, dlocal), 0);
            if (tt != 1) CHECK_EQ_INT(kcuda_moe_plan(K, dsel, ns, n, tt, dtiles), 0);
            CHECK_EQ_INT(kcuda_matvec_experts(K, &dg, &du, dtiles, mt, tt, da, sa, KX, dh, FF, KCUDA_OUT_SWIGLU), 0);
            CHECK_EQ_INT(kcuda_convert(K, KCUDA_Q8_K, dh, FF, ns, FF, dha, sh), 0);
            if (r >= 0) CHECK_EQ_INT(kcuda_memset(K, dj, 0, sizeof(float) * T * E), 0);
            else TT_ASSERT(kcuda_upload(K, dj, x0, sizeof(float) * T * E) == 0);
            if (T == 1) {
                CHECK_EQ_INT(kcuda_moe_down_join(K, &dd, dha, sh, dj, dsel, dwt, T, KX, NULL, NULL, NULL), 0);
            } else {
                CHECK_EQ_INT(kcuda_matvec_experts(K, &dd, NULL, dtiles, mt, tt, dha, sh, 1, dy, E, KCUDA_OUT_STORE), 0);
                CHECK_EQ_INT(kcuda_moe_join(K, dj, dy, dsel, dwt, T, KX, E, NULL, NULL, NULL), 0);
            }
            to_host(part, dj, sizeof(float) * T * E);
            if (r < 0) memcpy(want, part, sizeof(float) * T * E), memcpy(got, x0, sizeof(float) * T * E);
            else for (int i = 0; i < T * E; i++) got[i] += part[i];
            if (r == 0) { /* the choices: each expert's local index, or -1 */
                int32_t sel[S];
                to_host(sel, dsel, sizeof(int32_t) * ns);
                int mine = 0;
                for (int i = 0; i < ns; i++) {
                    CHECK(sel[i] >= -1 && sel[i] < n);
                    mine += sel[i] >= 0;
                }
                int32_t order[S], groups[KCUDA_MOE_GROUP_INTS * 16];
                int32_t *dorder = dev(sizeof(order)), *dgroups = dev(sizeof(int32_t) * KCUDA_MOE_GROUP_INTS * (size_t)kcuda_moe_max_groups(ns, n));
                CHECK_EQ_INT(kcuda_moe_group(K, dsel, ns, n, dorder, dgroups), 0);
                to_host(groups, dgroups, sizeof(int32_t) * KCUDA_MOE_GROUP_INTS * (size_t)kcuda_moe_max_groups(ns, n));
                to_host(order, dorder, sizeof(int32_t) * ns);
                int grouped = 0;
                for (int q = 0; q < kcuda_moe_max_groups(ns, n); q++) {
                    const int32_t *gr = groups + q * KCUDA_MOE_GROUP_INTS;
                    if (gr[0] < 0) continue;
                    for (int i = 0; i < gr[2]; i++) CHECK_EQ_INT(sel[order[gr[1] + i]], gr[0]);
                    grouped += gr[2];
                }
                CHECK_EQ_INT(grouped, mine);
                kcuda_free(dorder), kcuda_free(dgroups);
            }
            kcuda_free((void *)dg.data), kcuda_free((void *)du.data), kcuda_free((void *)dd.data), kcuda_free(dlocal);
            free(g), free(u), free(d);
        }
        char what[64];
        snprintf(what, sizeof(what), "experts split over %d ranks, %d token(s)", R, T);
        CHECK_NMSE(what, got, want, T * E, 1e-12);
    }
    kcuda_free(dlog), kcuda_free(dwt), kcuda_free(dx), kcuda_free(dj), kcuda_free(dh), kcuda_free(dy);
    kcuda_free(dsel), kcuda_free(dtiles), kcuda_free(da), kcuda_free(dha);
    free(gate), free(up), free(down);
}

static void test_moe_fused(void)
{
    if (!gpu()) return;
    static const int clusters[] = { 0, 8, 16 }; /* blocks joined by a ticket, then in clusters */
    for (int c = 0; c < 3; c++) {
        if (kcuda_set_router_cluster(K, clusters[c]) != clusters[c]) {
            fprintf(stderr, "  no thread block clusters on this GPU: router in clusters of %d not run\n", clusters[c]);
            continue;
        }
        check_router(60, 2048, 1, 8, true);
        check_router(60, 2048, 5, 4, false);
        check_router(17, 100, 3, 2, true);
        check_router(64, 4096, 2, 8, true); /* rows of 16 KiB: 64 KiB a block in clusters of 16, 128 in 8 */
        check_router_norm(128, 2048, 1, 8);
        check_router_norm(60, 4096, 3, 4);
        check_router_norm(128, 2560, 1, 8); /* 10 Q8_K blocks: more than a cluster of 8 has blocks */
    }
    kcuda_set_router_cluster(K, 16); /* as kcuda_create left it */
    check_grouped(TT_TYPE_Q4_K, TT_TYPE_Q6_K, 10, 3, 50, 512, 256, false); /* read as stored */
    check_grouped(TT_TYPE_Q8_0, TT_TYPE_Q8_0, 7, 2, 45, 160, 96, false);   /* F16 scratch, ragged tiles */
    check_grouped(TT_TYPE_Q5_K, TT_TYPE_Q4_K, 5, 2, 40, 256, 256, false);
    check_grouped(TT_TYPE_Q4_K, TT_TYPE_Q6_K, 4, 2, 40, 256, 2048, true); /* regrouped Q6_K down */
    check_experts_bulk(128, 8, 2048, 768); /* the Qwen3-MoE shape */
    check_experts_bulk(5, 3, 256, 70);     /* rows not a multiple of 4 */
    static const int rows[] = { 0, 1, 3, 7 }; /* 0: the one-wave default */
    for (int r = 0; r < (int)(sizeof(rows) / sizeof(rows[0])); r++) {
        kcuda_set_down_join_rows(K, rows[r]);
        check_down_join(TT_TYPE_Q6_K, 16, 8, 1, 2048, 768);
        check_down_join(TT_TYPE_Q4_K, 9, 4, 3, 300, 512);
        check_down_join(TT_TYPE_Q6_K, 40, 2, 5, 64, 2560); /* more items per row than a block's units */
    }
    kcuda_set_down_join_rows(K, 0); /* as kcuda_create left it (without TT_GPU_DJ_ROWS) */
}

static const struct test_case cases[] = {
    { "moe", test_moe },
    { "moe_fused", test_moe_fused },
    { "moe_split", test_moe_split },
};

#else /* no CUDA in this build */

static void test_no_cuda(void) { TEST_SKIP("built without CUDA (make CUDA=1 where nvcc is installed)"); }

static const struct test_case cases[] = { { "cuda", test_no_cuda } };

#endif

TEST_MAIN(cases)
