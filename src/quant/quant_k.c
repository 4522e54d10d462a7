/*
 * quant_k.c: the K-quant weight formats Q4_K, Q5_K and Q6_K: dequantization,
 * the reference quantizers, and the scalar dot products with Q8_K.
 *
 * A K-quant super-block covers 256 weights of a row.
 * - Q4_K and Q5_K cut it into 8 sub-blocks of 32, each an affine map
 *   weight = d*sc*q - dmin*m with a 6-bit scale sc and 6-bit min m packed in
 *   `scales` (tt_q4_K_scale_min), and q of 4 (Q4_K) or 5 (Q5_K) bits.
 * - Q6_K cuts it into 16 sub-blocks of 16, each weight = d*sc*(q - 32) with
 *   an int8 scale sc and q of 6 bits.
 * Every function first unpacks a block's levels into a plain array in
 * element order (one helper per format), so each bit layout is written once.
 *
 * The quantizers are llama-quantize's without an importance matrix, with the
 * same float operations in the same order, so quantizing the same weights
 * gives the same bytes (checked against files llama-quantize wrote):
 * - Q4_K/Q5_K: each sub-block gets a weighted least-squares affine fit
 *   (weights av_x + |x|, av_x the sub-block's RMS) tried at a sweep of
 *   inverse scales around nmax/(max - min), keeping the one of least error;
 *   the 8 scales and 8 mins are then rounded to 6 bits against their maxima
 *   and the levels recomputed with the rounded values.
 * - Q6_K: each sub-block gets a symmetric fit weighted by x^2, tried at 19
 *   inverse scales around nmax/max; the 16 scales are rounded to int8
 *   against the one of largest magnitude and the levels recomputed.
 *
 * The dot products sum level * activation products exactly in int32 per
 * sub-block, weight them by the integer sub-block scales, and apply the float
 * super-block scales once per super-block; the Q4_K/Q5_K min term uses the
 * activation block's bsums. Bounds: |sum| <= 2^27 for every format, so int32
 * never overflows.
 */
#include "quant.h"

/* Bit-exactness with the reference needs every a*b + c rounded twice, never
 * fused into one FMA. GCC in ISO mode (-std=c11, as the Makefile builds)
 * does not contract; clang and GCC's GNU modes do unless told not to. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <string.h>

/* Fits of a block whose largest magnitude is below this are all zero. */
#define GROUP_MAX_EPS 1e-15f

/* ---- unpacking and packing levels ---- */

/* Q4_K: group g of 64 elements uses qs[32g .. 32g+31], low nibbles for its
 * first 32 elements, high nibbles for the next 32. */
static void q4_K_unpack(const struct block_q4_K *b, uint8_t q[QK_K])
{
    for (int g = 0; g < QK_K / 64; g++) {
        const uint8_t *qs = b->qs + 32 * g;
        for (int l = 0; l < 32; l++) {
            q[64 * g + l] = qs[l] & 0xF;
            q[64 * g + 32 + l] = qs[l] >> 4;
        }
    }
}

static void q4_K_pack(const uint8_t L[QK_K], struct block_q4_K *b)
{
    for (int g = 0; g < QK_K / 64; g++) {
        for (int l = 0; l < 32; l++) {
            b->qs[32 * g + l] = (uint8_t)(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
        }
    }
}

/* Q5_K: the Q4_K nibbles plus a fifth bit (value 16) in qh[l]: bit 2g for
 * element 64g + l, bit 2g + 1 for element 64g + 32 + l. */
static void q5_K_unpack(const struct block_q5_K *b, uint8_t q[QK_K])
{
    for (int g = 0; g < QK_K / 64; g++) {
        const uint8_t *qs = b->qs + 32 * g;
        for (int l = 0; l < 32; l++) {
            q[64 * g + l] = (uint8_t)((qs[l] & 0xF) | (((b->qh[l] >> (2 * g)) & 1) << 4));
            q[64 * g + 32 + l] = (uint8_t)((qs[l] >> 4) | (((b->qh[l] >> (2 * g + 1)) & 1) << 4));
        }
    }
}

static void q5_K_pack(const uint8_t L[QK_K], struct block_q5_K *b)
{
    memset(b->qh, 0, sizeof(b->qh));
    for (int g = 0; g < QK_K / 64; g++) {
        for (int l = 0; l < 32; l++) {
            const uint8_t lo = L[64 * g + l], hi = L[64 * g + 32 + l];
            b->qh[l] |= (uint8_t)(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
            b->qs[32 * g + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
        }
    }
}

/* Q6_K, per half h of 128 elements (ql += 64h, qh += 32h, out += 128h):
 * element l (l < 32) has its low 4 bits in the low nibble of ql[l], l + 32
 * in the low nibble of ql[l + 32], l + 64 in the high nibble of ql[l], l + 96
 * in the high nibble of ql[l + 32]; their top 2 bits are bits 0-1, 2-3, 4-5,
 * 6-7 of qh[l]. Unpacked levels are returned minus 32. */
static void q6_K_unpack(const struct block_q6_K *b, int8_t q[QK_K])
{
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

/* L holds levels 0..63 (not minus 32). */
static void q6_K_pack(const uint8_t L[QK_K], struct block_q6_K *b)
{
    for (int h = 0; h < 2; h++) {
        uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        const uint8_t *in = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            const uint8_t q1 = in[l], q2 = in[l + 32], q3 = in[l + 64], q4 = in[l + 96];
            ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

/* The inverse of tt_q4_K_scale_min for sub-block j; `scales` starts zeroed
 * and ls, lm are at most 63. */
static void pack_scale_min(int j, uint8_t ls, uint8_t lm, uint8_t scales[K_SCALE_SIZE])
{
    if (j < 4) {
        scales[j] |= ls;
        scales[j + 4] |= lm;
    } else {
        scales[j + 4] |= (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        scales[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* ---- dequantization ---- */

/* Q4_K/Q5_K sub-block arithmetic shared by both: y = (d*sc)*q - dmin*m. */
static void dequantize_affine(float d, float dmin, const uint8_t *scales, const uint8_t *q,
                              float *y)
{
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        tt_q4_K_scale_min(j, scales, &sc, &m);
        const float d1 = d * sc, m1 = dmin * m;
        for (int l = 0; l < 32; l++)
            y[32 * j + l] = d1 * q[32 * j + l] - m1;
    }
}

void tt_dequantize_row_q4_K(const void *vx, float *y, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q4_K *x = vx;
    uint8_t q[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        q4_K_unpack(&x[b], q);
        dequantize_affine(tt_f16_to_f32(x[b].d), tt_f16_to_f32(x[b].dmin), x[b].scales, q, y);
    }
}

void tt_dequantize_row_q5_K(const void *vx, float *y, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q5_K *x = vx;
    uint8_t q[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        q5_K_unpack(&x[b], q);
        dequantize_affine(tt_f16_to_f32(x[b].d), tt_f16_to_f32(x[b].dmin), x[b].scales, q, y);
    }
}

void tt_dequantize_row_q6_K(const void *vx, float *y, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q6_K *x = vx;
    int8_t q[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        q6_K_unpack(&x[b], q);
        const float d = tt_f16_to_f32(x[b].d);
        for (int i = 0; i < QK_K; i++)
            y[i] = d * x[b].scales[i / 16] * q[i];
    }
}

/* ---- Q4_K / Q5_K quantization ---- */

/* The affine fit of a sub-block tries up to 21 candidate scales in turn,
 * each starting from the min the best one so far left, and each trial's sums
 * must run in element order to reproduce the reference bit for bit: one fit
 * is a chain of dependent float adds. The 8 sub-blocks of a super-block are
 * independent, so they are fitted side by side, one per lane: a `lanes` value
 * is a GCC/Clang generic vector of 4 floats (one SSE or NEON register), and
 * the 8 sub-blocks are two of them, G = 2 groups, so two independent chains
 * overlap. Every operation on a vector is the IEEE operation per lane, so a
 * lane computes bit for bit what scalar code would. */
#define LANES 4
#define GROUPS (QK_K / 32 / LANES)

typedef float lanes __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t lanes_mask __attribute__((vector_size(LANES * sizeof(int32_t))));

/* Per lane: mask ? a : b (masks are comparison results, all ones or zero). */
static inline lanes lanes_select(lanes_mask mask, lanes a, lanes b)
{
    return (lanes)(((lanes_mask)a & mask) | ((lanes_mask)b & ~mask));
}

/* Per lane: t clamped to [lo, hi] (integers) and rounded to the nearest
 * integer, ties to even, in float arithmetic: adding and subtracting
 * 1.5*2^23 leaves the rounded value exactly. Equal to clamping
 * tt_nearest_int(t), without int conversions. */
static inline lanes lanes_round_clamped(lanes t, lanes lo, lanes hi)
{
    t = lanes_select(t > lo, t, lo);
    t = lanes_select(t < hi, t, hi);
    return (t + 12582912.0f) - 12582912.0f;
}

/* Sub-block LANES*g + j of the super-block is lane j of group g. */
struct affine_fit {
    lanes x[32][GROUPS], w[32][GROUPS];
    lanes nmax, zero;
    lanes min[GROUPS], max[GROUPS], sum_w[GROUPS], sum_x[GROUPS];
    lanes scale[GROUPS], best[GROUPS]; /* best fit so far and its error */
    /* The best fit's levels are those of inverse scale lev_iscale about
     * lev_min; they are recomputed once at the end rather than copied. */
    lanes lev_iscale[GROUPS], lev_min[GROUPS];
};

/* Level of x under x ~ min + q/iscale, in [0, nmax]. */
static inline lanes affine_level(const struct affine_fit *f, lanes x, lanes min, lanes iscale)
{
    return lanes_round_clamped(iscale * (x - min), f->zero, f->nmax);
}

/* Loads the sub-blocks of x into lanes with the reference's weights
 * av_x + |x| (av_x the sub-block's RMS) and their min (at most 0) and max. */
static void affine_fit_load(struct affine_fit *f, const float *x, int nmax)
{
    f->zero = (lanes){0};
    f->nmax = f->zero + (float)nmax;
    for (int g = 0; g < GROUPS; g++) {
        lanes sum_x2 = f->zero, av_x;
        for (int i = 0; i < 32; i++) {
            for (int j = 0; j < LANES; j++)
                f->x[i][g][j] = x[32 * (LANES * g + j) + i];
        }
        for (int i = 0; i < 32; i++)
            sum_x2 += f->x[i][g] * f->x[i][g];
        for (int j = 0; j < LANES; j++)
            av_x[j] = sqrtf(sum_x2[j] / 32);
        for (int i = 0; i < 32; i++) {
            f->w[i][g] = av_x + (lanes)((lanes_mask)f->x[i][g] & 0x7fffffff);
        }
        lanes min = f->x[0][g], max = f->x[0][g], sum_w = f->w[0][g];
        lanes sum_x = sum_w * f->x[0][g];
        for (int i = 1; i < 32; i++) {
            min = lanes_select(f->x[i][g] < min, f->x[i][g], min);
            max = lanes_select(f->x[i][g] > max, f->x[i][g], max);
            sum_w += f->w[i][g];
            sum_x += f->w[i][g] * f->x[i][g];
        }
        f->min[g] = lanes_select(min > 0.0f, f->zero, min);
        f->max[g] = max;
        f->sum_w[g] = sum_w;
        f->sum_x[g] = sum_x;
    }
}

/* The starting fit: the map of [min, max] onto [0, nmax] and its error.
 * Lanes with max == min (constant sub-blocks) get inf/NaN here and are
 * never used (see affine_fit_try and fit_affine_block). */
static void affine_fit_start(struct affine_fit *f)
{
    for (int g = 0; g < GROUPS; g++) {
        f->lev_iscale[g] = f->nmax / (f->max[g] - f->min[g]);
        f->lev_min[g] = f->min[g];
        f->scale[g] = 1.0f / f->lev_iscale[g];
        lanes best = f->zero;
        for (int i = 0; i < 32; i++) {
            const lanes l = affine_level(f, f->x[i][g], f->min[g], f->lev_iscale[g]);
            const lanes diff = f->scale[g] * l + f->min[g] - f->x[i][g];
            best += f->w[i][g] * (diff * diff);
        }
        f->best[g] = best;
    }
}

/* One trial at inverse scale num/(max - min): round the levels, solve the
 * weighted least squares for scale and min (min <= 0) given them, and keep
 * the result in lanes where it is solvable and has less error. The element
 * loops run the groups together so their chains of adds overlap. */
static void affine_fit_try(struct affine_fit *f, float num)
{
    lanes iscale[GROUPS], sum_l[GROUPS], sum_l2[GROUPS], sum_xl[GROUPS];
    lanes det[GROUPS], scale[GROUPS], min[GROUPS], err[GROUPS], lev[32][GROUPS];
    for (int g = 0; g < GROUPS; g++) {
        iscale[g] = num / (f->max[g] - f->min[g]);
        sum_l[g] = sum_l2[g] = sum_xl[g] = err[g] = f->zero;
    }
    for (int i = 0; i < 32; i++) {
#pragma GCC unroll 2 /* keeps the per-group sums in registers */
        for (int g = 0; g < GROUPS; g++) {
            const lanes l = lev[i][g] = affine_level(f, f->x[i][g], f->min[g], iscale[g]);
            sum_l[g] += f->w[i][g] * l;
            sum_l2[g] += f->w[i][g] * l * l;
            sum_xl[g] += f->w[i][g] * l * f->x[i][g];
        }
    }
    for (int g = 0; g < GROUPS; g++) {
        det[g] = f->sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g];
        const lanes s = (f->sum_w[g] * sum_xl[g] - f->sum_x[g] * sum_l[g]) / det[g];
        const lanes m = (sum_l2[g] * f->sum_x[g] - sum_l[g] * sum_xl[g]) / det[g];
        scale[g] = lanes_select(m > 0.0f, sum_xl[g] / sum_l2[g], s);
        min[g] = lanes_select(m > 0.0f, f->zero, m);
    }
    for (int i = 0; i < 32; i++) {
#pragma GCC unroll 2
        for (int g = 0; g < GROUPS; g++) {
            const lanes diff = scale[g] * lev[i][g] + min[g] - f->x[i][g];
            err[g] += f->w[i][g] * (diff * diff);
        }
    }
    for (int g = 0; g < GROUPS; g++) {
        const lanes_mask take = (det[g] > 0.0f) & (f->max[g] != f->min[g]) & (err[g] < f->best[g]);
        f->best[g] = lanes_select(take, err[g], f->best[g]);
        f->scale[g] = lanes_select(take, scale[g], f->scale[g]);
        f->lev_iscale[g] = lanes_select(take, iscale[g], f->lev_iscale[g]);
        f->lev_min[g] = lanes_select(take, f->min[g], f->lev_min[g]);
        f->min[g] = lanes_select(take, min[g], f->min[g]);
    }
}

/* Fits each sub-block j of x[0..256) as sc[j]*L - mn[j] with L in [0, nmax]
 * and mn[j] >= 0, minimizing the weighted squared error: from the min/max
 * map, trials at inverse scales (nmax + rmin + rdelta*k)/(max - min) for
 * k = 0..nstep, keeping the first best ("make_qkx2_quants"). */
static void fit_affine_block(const float *x, int nmax, float rmin, float rdelta, int nstep,
                             float sc[QK_K / 32], float mn[QK_K / 32], uint8_t L[QK_K])
{
    struct affine_fit f;
    affine_fit_load(&f, x, nmax);
    affine_fit_start(&f);
    for (int k = 0; k <= nstep; k++)
        affine_fit_try(&f, rmin + rdelta * k + nmax);
    for (int g = 0; g < GROUPS; g++) {
        for (int i = 0; i < 32; i++) {
            const lanes l = affine_level(&f, f.x[i][g], f.lev_min[g], f.lev_iscale[g]);
            for (int j = 0; j < LANES; j++)
                L[32 * (LANES * g + j) + i] = (uint8_t)l[j];
        }
        for (int j = 0; j < LANES; j++) {
            const int sb = LANES * g + j;
            const bool constant = f.max[g][j] == f.min[g][j];
            sc[sb] = constant ? 0.0f : f.scale[g][j];
            mn[sb] = -f.min[g][j];
            if (constant) memset(L + 32 * sb, 0, 32);
        }
    }
}

/* The shared part of Q4_K/Q5_K: fits the 8 sub-blocks of x[0..256), rounds
 * their scales and mins to 6 bits (into d, dmin, scales) and fills L with the
 * levels (0..nmax) recomputed against the rounded values. */
static void quantize_affine_block(const float *x, int nmax, float rmin, int nstep, tt_f16 *d_out,
                                  tt_f16 *dmin_out, uint8_t scales[K_SCALE_SIZE], uint8_t L[QK_K])
{
    float sc[QK_K / 32], mn[QK_K / 32];
    fit_affine_block(x, nmax, rmin, 0.1f, nstep, sc, mn, L);
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        if (sc[j] > max_scale) max_scale = sc[j];
        if (mn[j] > max_min) max_min = mn[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; j++) {
        /* As the reference: the int goes to uint8_t (mod 256), then <= 63. */
        const uint8_t ls = (uint8_t)tt_nearest_int(inv_scale * sc[j]);
        const uint8_t lm = (uint8_t)tt_nearest_int(inv_min * mn[j]);
        pack_scale_min(j, TT_MIN(ls, 63), TT_MIN(lm, 63), scales);
    }
    *d_out = tt_f32_to_f16(max_scale / 63.f);
    *dmin_out = tt_f32_to_f16(max_min / 63.f);
    const float d = tt_f16_to_f32(*d_out), dmin = tt_f16_to_f32(*dmin_out);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t s, m;
        tt_q4_K_scale_min(j, scales, &s, &m);
        const float dj = d * s;
        if (dj == 0.0f) continue; /* keep the fit's levels, as the reference */
        const float dm = dmin * m;
        for (int l = 0; l < 32; l++) {
            const int q = tt_nearest_int((x[32 * j + l] + dm) / dj);
            L[32 * j + l] = (uint8_t)(q < 0 ? 0 : q > nmax ? nmax : q);
        }
    }
}

void tt_quantize_row_q4_K(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    struct block_q4_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        quantize_affine_block(x, 15, -1.0f, 20, &y[b].d, &y[b].dmin, y[b].scales, L);
        q4_K_pack(L, &y[b]);
    }
}

void tt_quantize_row_q5_K(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    struct block_q5_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        quantize_affine_block(x, 31, -0.5f, 15, &y[b].d, &y[b].dmin, y[b].scales, L);
        q5_K_pack(L, &y[b]);
    }
}

/* ---- Q6_K quantization ---- */

/* The symmetric fit of Q6_K, sub-blocks side by side as for the affine fit:
 * 16 sub-blocks of 16 elements are 4 groups of lanes. A sub-block's trials
 * do not feed into each other (only the comparison with the best so far is
 * sequential), so each trial is one pass over all lanes. */
#define Q6_GROUPS (QK_K / 16 / LANES)
#define Q6_NMAX 32

/* Sub-block LANES*g + j of the super-block is lane j of group g. */
struct symmetric_fit {
    lanes x[16][Q6_GROUPS], w[16][Q6_GROUPS], wx[16][Q6_GROUPS]; /* w = x^2 */
    lanes lo, hi;                                                /* level bounds -nmax, nmax - 1 */
    lanes max[Q6_GROUPS]; /* first element of largest magnitude */
    lanes scale[Q6_GROUPS], best[Q6_GROUPS];
    lanes lev_iscale[Q6_GROUPS]; /* the best fit's levels are those of this */
};

static void symmetric_fit_load(struct symmetric_fit *f, const float *x)
{
    const lanes zero = {0};
    f->lo = zero - Q6_NMAX;
    f->hi = zero + (Q6_NMAX - 1);
    for (int g = 0; g < Q6_GROUPS; g++) {
        lanes amax = zero, max = zero;
        for (int i = 0; i < 16; i++) {
            for (int j = 0; j < LANES; j++)
                f->x[i][g][j] = x[16 * (LANES * g + j) + i];
        }
        for (int i = 0; i < 16; i++) {
            const lanes v = f->x[i][g], av = (lanes)((lanes_mask)v & 0x7fffffff);
            f->w[i][g] = v * v;
            f->wx[i][g] = f->w[i][g] * v;
            const lanes_mask larger = av > amax;
            max = lanes_select(larger, v, max);
            amax = lanes_select(larger, av, amax);
        }
        f->max[g] = max;
    }
}

/* Trial at inverse scale -(nmax + k/10)/max: sums of w*x*l and w*l*l over
 * the levels l in [-nmax, nmax-1]; the first trial (k = 0) sets the best,
 * later ones replace it where they fit better. */
static void symmetric_fit_try(struct symmetric_fit *f, int k)
{
    lanes iscale[Q6_GROUPS], sumlx[Q6_GROUPS], suml2[Q6_GROUPS];
    for (int g = 0; g < Q6_GROUPS; g++) {
        iscale[g] = -(Q6_NMAX + 0.1f * k) / f->max[g];
        sumlx[g] = suml2[g] = f->lo - f->lo;
    }
    for (int i = 0; i < 16; i++) {
#pragma GCC unroll 4 /* keeps the per-group sums in registers */
        for (int g = 0; g < Q6_GROUPS; g++) {
            const lanes l = lanes_round_clamped(iscale[g] * f->x[i][g], f->lo, f->hi);
            sumlx[g] += f->wx[i][g] * l;
            suml2[g] += f->w[i][g] * l * l;
        }
    }
    for (int g = 0; g < Q6_GROUPS; g++) {
        const lanes scale = sumlx[g] / suml2[g], zero = f->lo - f->lo;
        if (k == 0) {
            f->scale[g] = lanes_select(suml2[g] != 0.0f, scale, zero);
            f->best[g] = f->scale[g] * sumlx[g];
            f->lev_iscale[g] = iscale[g];
            continue;
        }
        const lanes_mask take = (suml2[g] > 0.0f) & (sumlx[g] * sumlx[g] > f->best[g] * suml2[g]);
        f->scale[g] = lanes_select(take, scale, f->scale[g]);
        f->best[g] = lanes_select(take, scale * sumlx[g], f->best[g]);
        f->lev_iscale[g] = lanes_select(take, iscale[g], f->lev_iscale[g]);
    }
}

/* Fits each sub-block j of x[0..256) as sc[j]*(L - nmax), L in [0, 2*nmax),
 * minimizing the x^2-weighted squared error over 19 inverse scales
 * -(nmax + k/10)/max, k = -9..9, max the sub-block's first element of
 * largest magnitude ("make_qx_quants"); the first trial is k = 0. A scale's
 * sign is opposite to its max's. */
static void fit_symmetric_block(const float *x, float sc[QK_K / 16], uint8_t L[QK_K])
{
    struct symmetric_fit f;
    symmetric_fit_load(&f, x);
    symmetric_fit_try(&f, 0);
    for (int k = -9; k <= 9; k++) {
        if (k != 0) symmetric_fit_try(&f, k);
    }
    for (int g = 0; g < Q6_GROUPS; g++) {
        for (int i = 0; i < 16; i++) {
            const lanes l = lanes_round_clamped(f.lev_iscale[g] * f.x[i][g], f.lo, f.hi);
            for (int j = 0; j < LANES; j++)
                L[16 * (LANES * g + j) + i] = (uint8_t)(l[j] + Q6_NMAX);
        }
        for (int j = 0; j < LANES; j++) {
            const int sb = LANES * g + j;
            const bool zero = !(fabsf(f.max[g][j]) >= GROUP_MAX_EPS);
            sc[sb] = zero ? 0.0f : f.scale[g][j];
            if (zero) memset(L + 16 * sb, 0, 16);
        }
    }
}

/* One Q6_K super-block: scales to int8 against the one of largest magnitude
 * (which becomes -128), then levels recomputed with the rounded scales. */
static void quantize_q6_K_block(const float *x, struct block_q6_K *y)
{
    uint8_t L[QK_K];
    float sc[QK_K / 16];
    fit_symmetric_block(x, sc, L);
    float max_scale = 0, max_abs = 0;
    for (int j = 0; j < QK_K / 16; j++) {
        if (fabsf(sc[j]) > max_abs) {
            max_abs = fabsf(sc[j]);
            max_scale = sc[j];
        }
    }
    memset(y, 0, sizeof(*y));
    if (max_abs < GROUP_MAX_EPS) return; /* all zero, d = 0 */
    const float iscale = -128.f / max_scale;
    y->d = tt_f32_to_f16(1 / iscale);
    for (int j = 0; j < QK_K / 16; j++) {
        const int s = tt_nearest_int(iscale * sc[j]);
        y->scales[j] = (int8_t)(s < -128 ? -128 : s > 127 ? 127 : s);
    }
    const float d = tt_f16_to_f32(y->d);
    for (int j = 0; j < QK_K / 16; j++) {
        const float dj = d * y->scales[j];
        if (dj == 0.0f) continue; /* keep the fit's levels, as the reference */
        for (int i = 0; i < 16; i++) {
            int l = tt_nearest_int(x[16 * j + i] / dj);
            l = l < -32 ? -32 : l > 31 ? 31 : l;
            L[16 * j + i] = (uint8_t)(l + 32);
        }
    }
    q6_K_pack(L, y);
}

void tt_quantize_row_q6_K(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    struct block_q6_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++)
        quantize_q6_K_block(x + b * QK_K, &y[b]);
}

/* ---- dot products with Q8_K ---- */

/* One Q4_K/Q5_K super-block (levels q) against one Q8_K block:
 * (d*dy) * sum_j sc_j*dot_j - (dmin*dy) * sum_j m_j*(sum of y over j). */
static float dot_affine_q8_K(const uint8_t *q, const uint8_t *scales, float d, float dmin,
                             const struct block_q8_K *y)
{
    int32_t isum = 0, imin = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        tt_q4_K_scale_min(j, scales, &sc, &m);
        int32_t dot = 0;
        for (int l = 0; l < 32; l++)
            dot += q[32 * j + l] * y->qs[32 * j + l];
        isum += sc * dot;
        imin += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    return (d * y->d) * (float)isum - (dmin * y->d) * (float)imin;
}

void tt_vec_dot_q4_K_q8_K(int n, float *s, const void *vx, const void *vy)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q4_K *x = vx;
    const struct block_q8_K *y = vy;
    uint8_t q[QK_K];
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        q4_K_unpack(&x[b], q);
        sum +=
            dot_affine_q8_K(q, x[b].scales, tt_f16_to_f32(x[b].d), tt_f16_to_f32(x[b].dmin), &y[b]);
    }
    *s = sum;
}

void tt_vec_dot_q5_K_q8_K(int n, float *s, const void *vx, const void *vy)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q5_K *x = vx;
    const struct block_q8_K *y = vy;
    uint8_t q[QK_K];
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        q5_K_unpack(&x[b], q);
        sum +=
            dot_affine_q8_K(q, x[b].scales, tt_f16_to_f32(x[b].d), tt_f16_to_f32(x[b].dmin), &y[b]);
    }
    *s = sum;
}

void tt_vec_dot_q6_K_q8_K(int n, float *s, const void *vx, const void *vy)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q6_K *x = vx;
    const struct block_q8_K *y = vy;
    int8_t q[QK_K];
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        q6_K_unpack(&x[b], q);
        int32_t isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int32_t dot = 0;
            for (int l = 0; l < 16; l++)
                dot += q[16 * j + l] * y[b].qs[16 * j + l];
            isum += x[b].scales[j] * dot;
        }
        sum += (tt_f16_to_f32(x[b].d) * y[b].d) * (float)isum;
    }
    *s = sum;
}
