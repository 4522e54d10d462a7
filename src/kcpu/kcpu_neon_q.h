/*
 * kcpu_neon_q.h: the quantized NEON products, written once for both NEON
 * tables. Included by kcpu_neon.c with KN_DOT 0 (baseline Advanced SIMD:
 * vmull_s8 + vpadalq_s16) and by kcpu_dot_neon.c with KN_DOT 1 (SDOT, the
 * file compiled for armv8.2-a+dotprod). Every name here is static, so the
 * two copies do not collide.
 *
 * Each kernel computes one weight row against one or two tokens. Levels are
 * unpacked to int8 once per block and used for both tokens. Per sub-block
 * the int8 x int8 products are summed exactly in int32 (baseline: int16
 * products, |q * a| <= 128 * 128, widened pairwise), multiplied by the
 * sub-block scale in int32, and the float scales are applied once per block,
 * as in the reference. Rows go in groups of KN_ROW_GROUP against every pair
 * of tokens, so a group's weights stay in cache across tokens.
 */
#ifndef TT_KCPU_NEON_Q_H
#define TT_KCPU_NEON_Q_H

#include <arm_neon.h>
#include <string.h>

#define KN_INL static inline __attribute__((always_inline))
#define KN_UNROLL _Pragma("GCC unroll 16")
#define KN_ARGS                                                                            \
    int64_t n, const void *w, size_t w_row_bytes, int64_t r0, int64_t r1, const void *act, \
        size_t act_row_bytes, int64_t n_tok, float *out, int64_t ldo

/* acc (4 x int32) += the 16 products a[i] * b[i], grouped by lane in some
 * order (callers only use the sum over lanes). */
#if KN_DOT
KN_INL int32x4_t kn_dot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    return vdotq_s32(acc, a, b);
}
#else
KN_INL int32x4_t kn_dot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}
#endif

KN_INL float kn_f16(const void *p)
{
    tt_f16 h;
    memcpy(&h, p, 2);
    return tt_f16_to_f32(h);
}

/* Defined once in kcpu_neon.c and shared by both tables. */
void kcpu_neon_quantize_f32(const float *x, void *y, int64_t n);
void kcpu_neon_quantize_f16(const float *x, void *y, int64_t n);
void kcpu_neon_quantize_bf16(const float *x, void *y, int64_t n);
void kcpu_neon_quantize_q8_0(const float *x, void *y, int64_t n);
void kcpu_neon_quantize_q8_K(const float *x, void *y, int64_t n);
void kcpu_neon_matmul_f32(KN_ARGS);
void kcpu_neon_matmul_f16(KN_ARGS);
void kcpu_neon_matmul_bf16(KN_ARGS);
float kcpu_neon_dot_f16_f32(int64_t n, const tt_f16 *a, const float *b);
float kcpu_neon_dot_f32(int64_t n, const float *a, const float *b);
void kcpu_neon_axpy_f16(int64_t n, float alpha, const tt_f16 *x, float *y);
void kcpu_neon_axpy_f32(int64_t n, float alpha, const float *x, float *y);

#define KN_TABLE(isa_)                                                                            \
    {                                                                                             \
        .isa = isa_,                                                                              \
        .quantize_act = {                                                                         \
            [TT_TYPE_F32] = kcpu_neon_quantize_f32,                                               \
            [TT_TYPE_F16] = kcpu_neon_quantize_f16,                                               \
            [TT_TYPE_BF16] = kcpu_neon_quantize_bf16,                                             \
            [TT_TYPE_Q8_0] = kcpu_neon_quantize_q8_0,                                             \
            [TT_TYPE_Q8_K] = kcpu_neon_quantize_q8_K,                                             \
        },                                                                                        \
        .matmul = {                                                                               \
            [TT_TYPE_F32] = kcpu_neon_matmul_f32,                                                 \
            [TT_TYPE_F16] = kcpu_neon_matmul_f16,                                                 \
            [TT_TYPE_BF16] = kcpu_neon_matmul_bf16,                                               \
            [TT_TYPE_Q4_0] = kn_matmul_q4_0,                                                      \
            [TT_TYPE_Q8_0] = kn_matmul_q8_0,                                                      \
            [TT_TYPE_Q4_K] = kn_matmul_q4_K,                                                      \
            [TT_TYPE_Q5_K] = kn_matmul_q5_K,                                                      \
            [TT_TYPE_Q6_K] = kn_matmul_q6_K,                                                      \
        },                                                                                        \
        .dot_f16_f32 = kcpu_neon_dot_f16_f32,                                                     \
        .dot_f32 = kcpu_neon_dot_f32,                                                             \
        .axpy_f16 = kcpu_neon_axpy_f16,                                                           \
        .axpy_f32 = kcpu_neon_axpy_f32,                                                           \
    }

#define KN_Q8K_QS 4
#define KN_Q8K_BSUMS 260

/* ---- Q4_K / Q5_K ---- */

KN_INL void kn_row_q45k(const int HAS_QH, const int NT, int64_t nb, const uint8_t *x,
                        const uint8_t *a, size_t arb, float *s)
{
    const size_t bsz = HAS_QH ? sizeof(struct block_q5_K) : sizeof(struct block_q4_K);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float32x4_t acc[2] = { vdupq_n_f32(0), vdupq_n_f32(0) };
    float accm[2] = { 0, 0 };
    for (int64_t b = 0; b < nb; b++, x += bsz) {
        __builtin_prefetch(x + 8 * bsz);
        __builtin_prefetch(x + 8 * bsz + 64);
        __builtin_prefetch(x + 8 * bsz + 128);
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) tt_q4_K_scale_min(j, x + 4, &sc[j], &mn[j]);
        const float d = kn_f16(x), dmin = kn_f16(x + 2);
        const uint8_t *qs = x + (HAS_QH ? 48 : 16);
        int8x16_t L[16]; /* sub-block j: L[2j], L[2j + 1] */
        KN_UNROLL
        for (int g = 0; g < 4; g++) {
            KN_UNROLL
            for (int h = 0; h < 2; h++) {
                const uint8x16_t q = vld1q_u8(qs + 32 * g + 16 * h);
                uint8x16_t lo = vandq_u8(q, m4), hi = vshrq_n_u8(q, 4);
                if (HAS_QH) {
                    const uint8x16_t qh = vld1q_u8(x + 16 + 16 * h);
                    const uint8x16_t one = vdupq_n_u8(1);
                    const uint8x16_t bl = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * g))), one);
                    const uint8x16_t bh = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * g - 1))), one);
                    lo = vorrq_u8(lo, vshlq_n_u8(bl, 4));
                    hi = vorrq_u8(hi, vshlq_n_u8(bh, 4));
                }
                L[4 * g + h] = vreinterpretq_s8_u8(lo);
                L[4 * g + 2 + h] = vreinterpretq_s8_u8(hi);
            }
        }
        const int32x4_t mlo = { mn[0], mn[1], mn[2], mn[3] }, mhi = { mn[4], mn[5], mn[6], mn[7] };
        KN_UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + b * sizeof(struct block_q8_K);
            const int8_t *aq = (const int8_t *)(ab + KN_Q8K_QS);
            int32x4_t isum = vdupq_n_s32(0);
            KN_UNROLL
            for (int j = 0; j < 8; j++) {
                int32x4_t p = kn_dot16(vdupq_n_s32(0), L[2 * j], vld1q_s8(aq + 32 * j));
                p = kn_dot16(p, L[2 * j + 1], vld1q_s8(aq + 32 * j + 16));
                isum = vmlaq_n_s32(isum, p, sc[j]);
            }
            int16_t bs[16];
            memcpy(bs, ab + KN_Q8K_BSUMS, sizeof(bs));
            const int32x4_t s0 = vpaddlq_s16(vld1q_s16(bs)), s1 = vpaddlq_s16(vld1q_s16(bs + 8));
            /* s0 = S0..S3 as (bs0+bs1, ...): pairs of groups of 16 */
            const int32_t imin = vaddvq_s32(vaddq_s32(vmulq_s32(s0, mlo), vmulq_s32(s1, mhi)));
            float dy;
            memcpy(&dy, ab, 4);
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(isum), d * dy);
            accm[t] += dmin * dy * (float)imin;
        }
    }
    KN_UNROLL
    for (int t = 0; t < NT; t++) s[t] = vaddvq_f32(acc[t]) - accm[t];
}

/* ---- Q6_K ---- */

KN_INL void kn_row_q6k(const int NT, int64_t nb, const uint8_t *x, const uint8_t *a, size_t arb,
                       float *s)
{
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
    float32x4_t acc[2] = { vdupq_n_f32(0), vdupq_n_f32(0) };
    for (int64_t b = 0; b < nb; b++, x += sizeof(struct block_q6_K)) {
        __builtin_prefetch(x + 1680);
        __builtin_prefetch(x + 1680 + 64);
        __builtin_prefetch(x + 1680 + 128);
        __builtin_prefetch(x + 1680 + 192);
        const float d = kn_f16(x + 208);
        const int8_t *scales = (const int8_t *)(x + 192);
        int8x16_t L[16]; /* element order: L[k] covers elements 16k .. 16k + 15 */
        KN_UNROLL
        for (int h = 0; h < 2; h++) {
            KN_UNROLL
            for (int l = 0; l < 2; l++) {
                const uint8x16_t l0 = vld1q_u8(x + 64 * h + 16 * l);
                const uint8x16_t l1 = vld1q_u8(x + 64 * h + 32 + 16 * l);
                const uint8x16_t qh = vld1q_u8(x + 128 + 32 * h + 16 * l);
                const uint8x16_t t0 = vshlq_n_u8(vandq_u8(qh, m3), 4);
                const uint8x16_t t1 = vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m3), 4);
                const uint8x16_t t2 = vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m3), 4);
                const uint8x16_t t3 = vshlq_n_u8(vshrq_n_u8(qh, 6), 4);
                L[8 * h + 0 + l] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l0, m4), t0));
                L[8 * h + 2 + l] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l1, m4), t1));
                L[8 * h + 4 + l] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l0, 4), t2));
                L[8 * h + 6 + l] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l1, 4), t3));
            }
        }
        int16_t sc16[16];
        for (int j = 0; j < 16; j++) sc16[j] = scales[j];
        KN_UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + b * sizeof(struct block_q8_K);
            const int8_t *aq = (const int8_t *)(ab + KN_Q8K_QS);
            int32x4_t isum = vdupq_n_s32(0);
            KN_UNROLL
            for (int j = 0; j < 16; j++) {
                const int32x4_t p = kn_dot16(vdupq_n_s32(0), L[j], vld1q_s8(aq + 16 * j));
                isum = vmlaq_n_s32(isum, p, scales[j]);
            }
            int16_t bs[16];
            memcpy(bs, ab + KN_Q8K_BSUMS, sizeof(bs));
            int32x4_t off = vmull_s16(vld1_s16(bs), vld1_s16(sc16));
            off = vmlal_s16(off, vld1_s16(bs + 4), vld1_s16(sc16 + 4));
            off = vmlal_s16(off, vld1_s16(bs + 8), vld1_s16(sc16 + 8));
            off = vmlal_s16(off, vld1_s16(bs + 12), vld1_s16(sc16 + 12));
            isum = vsubq_s32(isum, vshlq_n_s32(off, 5));
            float dy;
            memcpy(&dy, ab, 4);
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(isum), d * dy);
        }
    }
    KN_UNROLL
    for (int t = 0; t < NT; t++) s[t] = vaddvq_f32(acc[t]);
}

/* ---- Q8_0 / Q4_0 ---- */

KN_INL void kn_row_q80(const int IS_Q4, const int NT, int64_t nb, const uint8_t *x,
                       const uint8_t *a, size_t arb, float *s)
{
    const size_t bsz = IS_Q4 ? sizeof(struct block_q4_0) : sizeof(struct block_q8_0);
    float32x4_t acc[2] = { vdupq_n_f32(0), vdupq_n_f32(0) };
    for (int64_t b = 0; b < nb; b++, x += bsz) {
        __builtin_prefetch(x + 16 * bsz);
        const float dw = kn_f16(x);
        int8x16_t w0, w1;
        if (IS_Q4) {
            const uint8x16_t q = vld1q_u8(x + 2);
            w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
            w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
        } else {
            w0 = vld1q_s8((const int8_t *)(x + 2));
            w1 = vld1q_s8((const int8_t *)(x + 18));
        }
        KN_UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + b * sizeof(struct block_q8_0);
            int32x4_t p = kn_dot16(vdupq_n_s32(0), w0, vld1q_s8((const int8_t *)(ab + 2)));
            p = kn_dot16(p, w1, vld1q_s8((const int8_t *)(ab + 18)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(p), dw * kn_f16(ab));
        }
    }
    KN_UNROLL
    for (int t = 0; t < NT; t++) s[t] = vaddvq_f32(acc[t]);
}

#define KN_ROW_GROUP 8
#define KN_DRIVER(ROW, ...)                                                                       \
    do {                                                                                          \
        const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;                       \
        for (int64_t g0 = r0; g0 < r1; g0 += KN_ROW_GROUP) {                                      \
            const int64_t g1 = TT_MIN(g0 + KN_ROW_GROUP, r1);                                     \
            for (int64_t t = 0; t < n_tok; t += 2) {                                              \
                const uint8_t *at = ab + t * act_row_bytes;                                       \
                for (int64_t r = g0; r < g1; r++) {                                               \
                    float s[2];                                                                   \
                    const uint8_t *wr = wb + r * w_row_bytes;                                     \
                    if (t + 1 < n_tok) {                                                          \
                        ROW(__VA_ARGS__ 2, nb, wr, at, act_row_bytes, s);                         \
                        out[(t + 1) * ldo + r] = s[1];                                            \
                    } else {                                                                      \
                        ROW(__VA_ARGS__ 1, nb, wr, at, act_row_bytes, s);                         \
                    }                                                                             \
                    out[t * ldo + r] = s[0];                                                      \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    } while (0)

static void kn_matmul_q4_K(KN_ARGS)
{
    const int64_t nb = n / QK_K;
    KN_DRIVER(kn_row_q45k, 0, );
}

static void kn_matmul_q5_K(KN_ARGS)
{
    const int64_t nb = n / QK_K;
    KN_DRIVER(kn_row_q45k, 1, );
}

static void kn_matmul_q6_K(KN_ARGS)
{
    const int64_t nb = n / QK_K;
    KN_DRIVER(kn_row_q6k, );
}

static void kn_matmul_q8_0(KN_ARGS)
{
    const int64_t nb = n / QK8_0;
    KN_DRIVER(kn_row_q80, 0, );
}

static void kn_matmul_q4_0(KN_ARGS)
{
    const int64_t nb = n / QK8_0;
    KN_DRIVER(kn_row_q80, 1, );
}

#endif
