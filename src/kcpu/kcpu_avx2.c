/*
 * kcpu_avx2.c: the AVX2 + FMA + F16C table (no AVX-512, no VNNI).
 *
 * Products work row by row: a row block's levels are unpacked into ymm
 * vectors once and used for up to two tokens; for more tokens, groups of
 * rows small enough to stay in L1/L2 are run against every token pair in
 * turn, so weights come from memory once per call.
 *
 * Integer products: vpmaddubsw (u8 levels x s8 activations, pairs summed to
 * int16) is exact when a pair cannot exceed 32767: levels up to 63 (Q4_K,
 * Q5_K, Q6_K, Q4_0) times |a| <= 128 give at most 16128. Q8_0 weights are
 * signed, so they and the activations are widened to int16 and multiplied
 * with vpmaddwd (exact for every byte, -128 included). Then vpmaddwd by the
 * int16 sub-block scales gives exact int32 sums per sub-block, scaled by the
 * float d's once per block, as in the reference.
 *
 * Activation quantizers reproduce the reference bytes exactly, using the
 * reference's own rounding (the add of 1.5 * 2^23) and saturating packs.
 */
#include "kcpu_impl.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define INL static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")
#define MM_ARGS                                                                            \
    int64_t n, const void *w, size_t w_row_bytes, int64_t r0, int64_t r1, const void *act, \
        size_t act_row_bytes, int64_t n_tok, float *out, int64_t ldo

INL float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL float f16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v)));
}

/* ---- activation quantizers ---- */

static void quantize_f32(const float *x, void *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void quantize_f16(const float *x, void *vy, int64_t n)
{
    tt_f16 *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = tt_f32_to_f16(x[i]);
}

static void quantize_bf16(const float *x, void *vy, int64_t n)
{
    tt_bf16 *y = vy;
    const __m256i one = _mm256_set1_epi32(1), r = _mm256_set1_epi32(0x7fff);
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_loadu_si256((const __m256i *)(x + i));
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        const __m256i v = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(r, lsb)), 16);
        /* NaN: (u & 0x7fffffff) > 0x7f800000, as signed compare (both positive) */
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
        const __m256i b = _mm256_blendv_epi8(v, q, nan);
        /* narrow 8 x 32 -> 8 x 16 (values < 65536: packus is exact) */
        const __m256i p = _mm256_packus_epi32(b, b);
        const __m256i o = _mm256_permute4x64_epi64(p, 0x08);
        _mm_storeu_si128((__m128i *)(y + i), _mm256_castsi256_si128(o));
    }
    for (; i < n; i++) y[i] = tt_f32_to_bf16(x[i]);
}

/* Largest |x| with NaN ignored (vmaxps returns its second operand on NaN). */
INL __m256 amax_step(__m256 m, __m256 v)
{
    return _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), m);
}

INL float hmax(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* tt_nearest_int(v) for 8 lanes, bit for bit (clamping follows, by packs). */
INL __m256i nearest(__m256 v)
{
    const __m256i u = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0f)));
    return _mm256_sub_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x007fffff)),
                            _mm256_set1_epi32(0x00400000));
}

/* 32 int32 (4 vectors, in order) -> 32 int8, saturating = clamp_i8. */
INL __m256i narrow32(__m256i a, __m256i b, __m256i c, __m256i d)
{
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i q = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static void quantize_q8_0(const float *x, void *vy, int64_t n)
{
    struct block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) m = amax_step(m, v[i] = _mm256_loadu_ps(x + 8 * i));
        const float amax = hmax(m);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = tt_f32_to_f16(amax / 127.0f);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int i = 0; i < 4; i++) q[i] = nearest(_mm256_mul_ps(v[i], vid));
        _mm256_storeu_si256((__m256i *)y[b].qs, narrow32(q[0], q[1], q[2], q[3]));
    }
}

static void quantize_q8_K(const float *x, void *vy, int64_t n)
{
    struct block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < QK_K; i += 8) m = amax_step(m, _mm256_loadu_ps(x + i));
        const float amax = hmax(m);
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
        const __m256 vis = _mm256_set1_ps(iscale);
        for (int i = 0; i < QK_K; i += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) q[k] = nearest(_mm256_mul_ps(vis, _mm256_loadu_ps(x + i + 8 * k)));
            const __m256i q8 = narrow32(q[0], q[1], q[2], q[3]);
            _mm256_storeu_si256((__m256i *)(y[b].qs + i), q8);
            /* bsums of the two groups of 16 */
            const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q8);
            const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            __m128i s = _mm_hadd_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            s = _mm_hadd_epi32(s, s);
            y[b].bsums[i / 16] = (int16_t)_mm_cvtsi128_si32(s);
            y[b].bsums[i / 16 + 1] = (int16_t)_mm_extract_epi32(s, 1);
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- float types: tiles of R rows x T tokens, dot-product form ---- */

enum fkind { FK_F32, FK_F16, FK_BF16 };

INL __m256 fload(const int kind, const uint8_t *p, int64_t i)
{
    if (kind == FK_F32) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (kind == FK_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INL float fscalar(const int kind, const uint8_t *p, int64_t i)
{
    if (kind == FK_F32) return ((const float *)p)[i];
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return kind == FK_F16 ? tt_f16_to_f32(h) : tt_bf16_to_f32(h);
}

INL void float_tile(const int kind, const int R, const int T, int64_t n, const uint8_t *w,
                    size_t wrb, const uint8_t *a, size_t arb, float *out, int64_t ldo)
{
    __m256 acc[4][2];
    UNROLL
    for (int r = 0; r < R; r++) {
        UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 wv[4];
        UNROLL
        for (int r = 0; r < R; r++) wv[r] = fload(kind, w + r * wrb, k);
        UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 av = fload(kind, a + t * arb, k);
            UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], av, acc[r][t]);
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) {
        UNROLL
        for (int r = 0; r < R; r++) {
            float s = hsum(acc[r][t]);
            for (int64_t j = k; j < n; j++)
                s += fscalar(kind, w + r * wrb, j) * fscalar(kind, a + t * arb, j);
            out[t * ldo + r] = s;
        }
    }
}

/* One token: a row at a time, so each thread reads one sequential stream. */
INL float float_dot1(const int kind, int64_t n, const uint8_t *w, const uint8_t *a)
{
    __m256 s[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        UNROLL
        for (int i = 0; i < 4; i++) s[i] = _mm256_fmadd_ps(fload(kind, w, k + 8 * i), fload(kind, a, k + 8 * i), s[i]);
    }
    float r = hsum(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
    for (; k < n; k++) r += fscalar(kind, w, k) * fscalar(kind, a, k);
    return r;
}

#define FLOAT_MATMUL(name, kind)                                                                  \
    static void name(MM_ARGS)                                                                     \
    {                                                                                             \
        const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;                       \
        if (n_tok == 1) {                                                                         \
            for (int64_t r = r0; r < r1; r++) out[r] = float_dot1(kind, n, wb + r * w_row_bytes, ab); \
            return;                                                                               \
        }                                                                                         \
        for (int64_t t0 = 0; t0 < n_tok;) {                                                       \
            const int nt = n_tok - t0 >= 2 ? 2 : 1;                                               \
            for (int64_t r = r0; r < r1;) {                                                       \
                const int nr = r + 4 <= r1 ? 4 : 1;                                               \
                const uint8_t *wr = wb + r * w_row_bytes, *at = ab + t0 * act_row_bytes;          \
                float *o = out + t0 * ldo + r;                                                    \
                if (nr == 4 && nt == 2) float_tile(kind, 4, 2, n, wr, w_row_bytes, at, act_row_bytes, o, ldo); \
                else if (nr == 4) float_tile(kind, 4, 1, n, wr, w_row_bytes, at, act_row_bytes, o, ldo); \
                else if (nt == 2) float_tile(kind, 1, 2, n, wr, w_row_bytes, at, act_row_bytes, o, ldo); \
                else float_tile(kind, 1, 1, n, wr, w_row_bytes, at, act_row_bytes, o, ldo);       \
                r += nr;                                                                          \
            }                                                                                     \
            t0 += nt;                                                                             \
        }                                                                                         \
    }

FLOAT_MATMUL(matmul_f32, FK_F32)
FLOAT_MATMUL(matmul_f16, FK_F16)
FLOAT_MATMUL(matmul_bf16, FK_BF16)

/* ---- quantized rows ----
 * Each kernel computes one row against NT (1 or 2) tokens and adds nothing:
 * it returns the dots in s[t]. */

#define Q8K_QS 4
#define Q8K_BSUMS 260

/* Q4_K / Q5_K scales: the 16 bytes at p (d, dmin, scales[12]) become bytes
 * sc0..sc7, m0..m7 (the 6-bit fields of tt_q4_K_scale_min). */
INL __m128i q4k_scales(const uint8_t *p)
{
    const __m128i s = _mm_loadu_si128((const __m128i *)p); /* S[i] = byte 4 + i */
    /* P: S0..3, S8..11, S4..7, S8..11; Q: -, S0..3, -, S4..7 */
    const __m128i P = _mm_shuffle_epi8(s, _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m128i Q = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11));
    const __m128i sel = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1);
    const __m128i P2 = _mm_blendv_epi8(P, _mm_srli_epi16(P, 4), sel);
    const __m128i lo = _mm_and_si128(P2, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(Q, 2), _mm_setr_epi8(0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30, 0, 0, 0, 0,
                                                                     0x30, 0x30, 0x30, 0x30));
    return _mm_or_si128(lo, hi);
}

INL void row_q45k(const int HAS_QH, const int NT, int64_t nb, const uint8_t *x, const uint8_t *a,
                  size_t arb, float *s)
{
    const size_t bsz = HAS_QH ? sizeof(struct block_q5_K) : sizeof(struct block_q4_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[2] = { _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int64_t b = 0; b < nb; b++, x += bsz) {
        _mm_prefetch((const char *)x + 8 * bsz, _MM_HINT_T0);
        _mm_prefetch((const char *)x + 8 * bsz + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)x + 8 * bsz + 128, _MM_HINT_T0);
        const __m128i u = q4k_scales(x);
        const __m256i u2 = _mm256_broadcastsi128_si256(u);
        const float d = f16(x), dmin = f16(x + 2);
        const uint8_t *qs = x + (HAS_QH ? 48 : 16);
        const __m256i qh = HAS_QH ? _mm256_loadu_si256((const __m256i *)(x + 16)) : _mm256_setzero_si256();
        /* m0, m0, m1, m1, ... for the 16 bsums */
        const __m256i mpair = _mm256_shuffle_epi8(
            u2, _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1, 12, -1,
                                 12, -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1));
        __m256i L[8];
        UNROLL
        for (int g = 0; g < 4; g++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
            L[2 * g] = _mm256_and_si256(q, m4);
            L[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (HAS_QH) {
                const __m256i b1 = _mm256_set1_epi8(1);
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), b1);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g + 1), b1);
                L[2 * g] = _mm256_or_si256(L[2 * g], _mm256_slli_epi16(lo, 4));
                L[2 * g + 1] = _mm256_or_si256(L[2 * g + 1], _mm256_slli_epi16(hi, 4));
            }
        }
        UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + b * sizeof(struct block_q8_K);
            __m256i isum = _mm256_setzero_si256();
            UNROLL
            for (int j = 0; j < 8; j++) {
                const __m256i p = _mm256_maddubs_epi16(L[j], _mm256_loadu_si256((const __m256i *)(ab + Q8K_QS + 32 * j)));
                const __m256i scj = _mm256_shuffle_epi8(u2, _mm256_set1_epi16((short)j | (short)0xFF00));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, scj));
            }
            const __m256i imin = _mm256_madd_epi16(mpair, _mm256_loadu_si256((const __m256i *)(ab + Q8K_BSUMS)));
            float dy;
            memcpy(&dy, ab, 4);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dy), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_set1_ps(dmin * dy), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < NT; t++) s[t] = hsum(acc[t]);
}

INL void row_q6k(const int NT, int64_t nb, const uint8_t *x, const uint8_t *a, size_t arb, float *s)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x03);
    __m256 acc[2] = { _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int64_t b = 0; b < nb; b++, x += sizeof(struct block_q6_K)) {
        _mm_prefetch((const char *)x + 1680, _MM_HINT_T0);
        _mm_prefetch((const char *)x + 1680 + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)x + 1680 + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)x + 1680 + 192, _MM_HINT_T0);
        const float d = f16(x + 208);
        const __m256i S = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 192)));
        __m256i L[8], SC[8];
        UNROLL
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x + 128 + 32 * h));
            const __m256i t0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
            const __m256i t1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
            const __m256i t2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
            const __m256i t3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
            L[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), t0);
            L[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), t1);
            L[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), t2);
            L[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), t3);
        }
        /* SC[k]: sc[2k] in the low 128 bits, sc[2k+1] in the high, as words */
        UNROLL
        for (int k = 0; k < 8; k++) {
            const __m256i dw = _mm256_permutevar8x32_epi32(S, _mm256_set1_epi32(k));
            SC[k] = _mm256_shuffle_epi8(dw, _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                                             2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
        }
        UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + b * sizeof(struct block_q8_K);
            __m256i isum = _mm256_setzero_si256();
            UNROLL
            for (int k = 0; k < 8; k++) {
                const __m256i p = _mm256_maddubs_epi16(L[k], _mm256_loadu_si256((const __m256i *)(ab + Q8K_QS + 32 * k)));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, SC[k]));
            }
            const __m256i off = _mm256_madd_epi16(S, _mm256_loadu_si256((const __m256i *)(ab + Q8K_BSUMS)));
            isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(off, 5));
            float dy;
            memcpy(&dy, ab, 4);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dy), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < NT; t++) s[t] = hsum(acc[t]);
}

/* Q8_0 / Q4_0 against Q8_0 activations, one 32-block at a time. */
INL void row_q80(const int IS_Q4, const int NT, int64_t nb, const uint8_t *x, const uint8_t *a,
                 size_t arb, float *s)
{
    const size_t bsz = IS_Q4 ? sizeof(struct block_q4_0) : sizeof(struct block_q8_0);
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[2] = { _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int64_t b = 0; b < nb; b++, x += bsz) {
        _mm_prefetch((const char *)x + 16 * bsz, _MM_HINT_T0);
        const float dw = f16(x);
        __m256i lv, w0, w1;
        if (IS_Q4) {
            const __m128i q = _mm_loadu_si128((const __m128i *)(x + 2));
            lv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
            w0 = w1 = lv;
        } else {
            w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 2)));
            w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 18)));
            lv = w0;
        }
        UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + b * sizeof(struct block_q8_0);
            __m256i p;
            if (IS_Q4) {
                const __m256i av = _mm256_loadu_si256((const __m256i *)(ab + 2));
                const __m256i qa = _mm256_maddubs_epi16(lv, av);
                const __m256i sa = _mm256_maddubs_epi16(_mm256_set1_epi8(8), av);
                p = _mm256_madd_epi16(_mm256_sub_epi16(qa, sa), ones);
            } else {
                const __m256i a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ab + 2)));
                const __m256i a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ab + 18)));
                p = _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * f16(ab)), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < NT; t++) s[t] = hsum(acc[t]);
}

/* Rows in groups of ROW_GROUP, each group against all tokens two at a time:
 * a group's weights (a few KB to tens of KB) stay in cache across tokens. */
#define ROW_GROUP 8
#define QROWS_DRIVER(ROW, ...)                                                                    \
    do {                                                                                          \
        const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;                       \
        for (int64_t g0 = r0; g0 < r1; g0 += ROW_GROUP) {                                         \
            const int64_t g1 = TT_MIN(g0 + ROW_GROUP, r1);                                        \
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

static void matmul_q4_K(MM_ARGS)
{
    const int64_t nb = n / QK_K;
    QROWS_DRIVER(row_q45k, 0, );
}

static void matmul_q5_K(MM_ARGS)
{
    const int64_t nb = n / QK_K;
    QROWS_DRIVER(row_q45k, 1, );
}

static void matmul_q6_K(MM_ARGS)
{
    const int64_t nb = n / QK_K;
    QROWS_DRIVER(row_q6k, );
}

static void matmul_q8_0(MM_ARGS)
{
    const int64_t nb = n / QK8_0;
    QROWS_DRIVER(row_q80, 0, );
}

static void matmul_q4_0(MM_ARGS)
{
    const int64_t nb = n / QK8_0;
    QROWS_DRIVER(row_q80, 1, );
}

/* ---- attention helpers ---- */

static float dot_f16_f32(int64_t n, const tt_f16 *a, const float *b)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8))), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += tt_f16_to_f32(a[i]) * b[i];
    return s;
}

static float dot_f32(int64_t n, const float *a, const float *b)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_f16(int64_t n, float alpha, const tt_f16 *x, float *y)
{
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(alpha, tt_f16_to_f32(x[i]), y[i]);
}

static void axpy_f32(int64_t n, float alpha, const float *x, float *y)
{
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(alpha, x[i], y[i]);
}

const struct kcpu_ops kcpu_ops_avx2 = {
    .isa = KCPU_ISA_AVX2,
    .quantize_act = {
        [TT_TYPE_F32] = quantize_f32,
        [TT_TYPE_F16] = quantize_f16,
        [TT_TYPE_BF16] = quantize_bf16,
        [TT_TYPE_Q8_0] = quantize_q8_0,
        [TT_TYPE_Q8_K] = quantize_q8_K,
    },
    .matmul = {
        [TT_TYPE_F32] = matmul_f32,
        [TT_TYPE_F16] = matmul_f16,
        [TT_TYPE_BF16] = matmul_bf16,
        [TT_TYPE_Q4_0] = matmul_q4_0,
        [TT_TYPE_Q8_0] = matmul_q8_0,
        [TT_TYPE_Q4_K] = matmul_q4_K,
        [TT_TYPE_Q5_K] = matmul_q5_K,
        [TT_TYPE_Q6_K] = matmul_q6_K,
    },
    .dot_f16_f32 = dot_f16_f32,
    .dot_f32 = dot_f32,
    .axpy_f16 = axpy_f16,
    .axpy_f32 = axpy_f32,
};
