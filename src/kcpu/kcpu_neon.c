/*
 * kcpu_neon.c: the baseline NEON (Advanced SIMD, every AArch64 CPU) table,
 * plus the pieces both NEON tables share: activation quantizers, float-type
 * products and attention helpers. The quantized products are in
 * kcpu_neon_q.h, compiled here without and in kcpu_dot_neon.c with SDOT.
 *
 * Activation quantizers reproduce the reference bytes: amax ignores NaN by
 * the same comparison as the scalar code (a select on "greater than", not
 * FMAXNM, which would let a signalling NaN through), rounding is the
 * reference's add of 1.5 * 2^23 (the same IEEE add on the same machine), and
 * clamping is a saturating narrow.
 */
#include "kcpu_impl.h"

#define KN_DOT 0
#include "kcpu_neon_q.h"

#include <math.h>

/* ---- activation quantizers ---- */

void kcpu_neon_quantize_f32(const float *x, void *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

void kcpu_neon_quantize_f16(const float *x, void *vy, int64_t n)
{
    tt_f16 *y = vy;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) y[i] = tt_f32_to_f16(x[i]);
}

void kcpu_neon_quantize_bf16(const float *x, void *vy, int64_t n)
{
    tt_bf16 *y = vy;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32x4_t u = vld1q_u32((const uint32_t *)(x + i));
        const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
        const uint32x4_t v = vshrq_n_u32(vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7fff), lsb)), 16);
        const uint32x4_t nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffff)), vdupq_n_u32(0x7f800000));
        const uint32x4_t q = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
        vst1_u16(y + i, vmovn_u32(vbslq_u32(nan, q, v)));
    }
    for (; i < n; i++) y[i] = tt_f32_to_bf16(x[i]);
}

/* m = |v| > m ? |v| : m, lane by lane (NaN never wins, as in the scalar code). */
static inline float32x4_t amax_step(float32x4_t m, float32x4_t v)
{
    const float32x4_t a = vabsq_f32(v);
    return vbslq_f32(vcgtq_f32(a, m), a, m);
}

/* clamp_i8(tt_nearest_int(v)) for 8 lanes. */
static inline int8x8_t round_i8(float32x4_t v0, float32x4_t v1)
{
    const float32x4_t magic = vdupq_n_f32(12582912.0f);
    const int32x4_t mask = vdupq_n_s32(0x007fffff), bias = vdupq_n_s32(0x00400000);
    const int32x4_t i0 = vsubq_s32(vandq_s32(vreinterpretq_s32_f32(vaddq_f32(v0, magic)), mask), bias);
    const int32x4_t i1 = vsubq_s32(vandq_s32(vreinterpretq_s32_f32(vaddq_f32(v1, magic)), mask), bias);
    return vqmovn_s16(vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1)));
}

void kcpu_neon_quantize_q8_0(const float *x, void *vy, int64_t n)
{
    struct block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float32x4_t v[8], m = vdupq_n_f32(0);
        for (int i = 0; i < 8; i++) m = amax_step(m, v[i] = vld1q_f32(x + 4 * i));
        const float amax = vmaxvq_f32(m);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = tt_f32_to_f16(amax / 127.0f);
        for (int i = 0; i < 4; i++)
            vst1_s8(y[b].qs + 8 * i, round_i8(vmulq_n_f32(v[2 * i], id), vmulq_n_f32(v[2 * i + 1], id)));
    }
}

void kcpu_neon_quantize_q8_K(const float *x, void *vy, int64_t n)
{
    struct block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float32x4_t m = vdupq_n_f32(0);
        for (int i = 0; i < QK_K; i += 4) m = amax_step(m, vld1q_f32(x + i));
        const float amax = vmaxvq_f32(m);
        memset(&y[b], 0, sizeof(y[b]));
        if (amax == 0.0f) continue;
        float max = 0.0f; /* the first element of largest magnitude */
        for (int i = 0; i < QK_K; i++) {
            if (fabsf(x[i]) == amax) {
                max = x[i];
                break;
            }
        }
        const float iscale = -127.0f / max;
        for (int g = 0; g < QK_K / 16; g++) {
            const float *xg = x + 16 * g;
            const int8x8_t a = round_i8(vmulq_n_f32(vld1q_f32(xg), iscale), vmulq_n_f32(vld1q_f32(xg + 4), iscale));
            const int8x8_t c = round_i8(vmulq_n_f32(vld1q_f32(xg + 8), iscale), vmulq_n_f32(vld1q_f32(xg + 12), iscale));
            const int8x16_t q = vcombine_s8(a, c);
            vst1q_s8(y[b].qs + 16 * g, q);
            y[b].bsums[g] = (int16_t)vaddlvq_s8(q);
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- float types: tiles of R rows x T tokens, dot-product form ---- */

enum fkind { FK_F32, FK_F16, FK_BF16 };

static inline __attribute__((always_inline)) float32x4_t fload(const int kind, const uint8_t *p, int64_t i)
{
    if (kind == FK_F32) return vld1q_f32((const float *)p + i);
    const uint16x4_t h = vld1_u16((const uint16_t *)p + i);
    if (kind == FK_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static inline __attribute__((always_inline)) float fscalar(const int kind, const uint8_t *p, int64_t i)
{
    if (kind == FK_F32) return ((const float *)p)[i];
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return kind == FK_F16 ? tt_f16_to_f32(h) : tt_bf16_to_f32(h);
}

static inline __attribute__((always_inline)) void float_tile(const int kind, const int R, const int T,
                                                             int64_t n, const uint8_t *w, size_t wrb,
                                                             const uint8_t *a, size_t arb, float *out,
                                                             int64_t ldo)
{
    float32x4_t acc[4][4];
    KN_UNROLL
    for (int r = 0; r < R; r++) {
        KN_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = vdupq_n_f32(0);
    }
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        float32x4_t wv[4];
        KN_UNROLL
        for (int r = 0; r < R; r++) wv[r] = fload(kind, w + r * wrb, k);
        KN_UNROLL
        for (int t = 0; t < T; t++) {
            const float32x4_t av = fload(kind, a + t * arb, k);
            KN_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = vfmaq_f32(acc[r][t], wv[r], av);
        }
    }
    KN_UNROLL
    for (int t = 0; t < T; t++) {
        KN_UNROLL
        for (int r = 0; r < R; r++) {
            float s = vaddvq_f32(acc[r][t]);
            for (int64_t j = k; j < n; j++) s += fscalar(kind, w + r * wrb, j) * fscalar(kind, a + t * arb, j);
            out[t * ldo + r] = s;
        }
    }
}

/* One token: a row at a time, so each thread reads one sequential stream. */
static inline __attribute__((always_inline)) float float_dot1(const int kind, int64_t n, const uint8_t *w,
                                                              const uint8_t *a)
{
    float32x4_t s[4] = { vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0) };
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        KN_UNROLL
        for (int i = 0; i < 4; i++) s[i] = vfmaq_f32(s[i], fload(kind, w, k + 4 * i), fload(kind, a, k + 4 * i));
    }
    float r = vaddvq_f32(vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3])));
    for (; k < n; k++) r += fscalar(kind, w, k) * fscalar(kind, a, k);
    return r;
}

#define FLOAT_MATMUL(name, kind)                                                                  \
    void name(KN_ARGS)                                                                            \
    {                                                                                             \
        const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;                       \
        if (n_tok == 1) {                                                                         \
            for (int64_t r = r0; r < r1; r++) out[r] = float_dot1(kind, n, wb + r * w_row_bytes, ab); \
            return;                                                                               \
        }                                                                                         \
        for (int64_t t0 = 0; t0 < n_tok;) {                                                       \
            const int nt = n_tok - t0 >= 4 ? 4 : 1;                                               \
            for (int64_t r = r0; r < r1;) {                                                       \
                const int nr = r + 4 <= r1 ? 4 : 1;                                               \
                const uint8_t *wr = wb + r * w_row_bytes, *at = ab + t0 * act_row_bytes;          \
                float *o = out + t0 * ldo + r;                                                    \
                if (nr == 4 && nt == 4) float_tile(kind, 4, 4, n, wr, w_row_bytes, at, act_row_bytes, o, ldo); \
                else if (nr == 4) float_tile(kind, 4, 1, n, wr, w_row_bytes, at, act_row_bytes, o, ldo); \
                else if (nt == 4) float_tile(kind, 1, 4, n, wr, w_row_bytes, at, act_row_bytes, o, ldo); \
                else float_tile(kind, 1, 1, n, wr, w_row_bytes, at, act_row_bytes, o, ldo);       \
                r += nr;                                                                          \
            }                                                                                     \
            t0 += nt;                                                                             \
        }                                                                                         \
    }

FLOAT_MATMUL(kcpu_neon_matmul_f32, FK_F32)
FLOAT_MATMUL(kcpu_neon_matmul_f16, FK_F16)
FLOAT_MATMUL(kcpu_neon_matmul_bf16, FK_BF16)

/* ---- attention helpers ---- */

float kcpu_neon_dot_f16_f32(int64_t n, const tt_f16 *a, const float *b)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(a + i));
        s0 = vfmaq_f32(s0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vcvt_high_f32_f16(h), vld1q_f32(b + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += tt_f16_to_f32(a[i]) * b[i];
    return s;
}

float kcpu_neon_dot_f32(int64_t n, const float *a, const float *b)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

void kcpu_neon_axpy_f16(int64_t n, float alpha, const tt_f16 *x, float *y)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t xv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i)));
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), xv, alpha));
    }
    for (; i < n; i++) y[i] = fmaf(alpha, tt_f16_to_f32(x[i]), y[i]);
}

void kcpu_neon_axpy_f32(int64_t n, float alpha, const float *x, float *y)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), alpha));
    for (; i < n; i++) y[i] = fmaf(alpha, x[i], y[i]);
}

const struct kcpu_ops kcpu_ops_neon = KN_TABLE(KCPU_ISA_NEON);
