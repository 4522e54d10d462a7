/*
 * kcpu_avx512.c: the AVX-512 (F/BW/VL/DQ + VNNI) table: activation
 * quantizers, float-type products, Q4_0/Q8_0 row kernels, the attention
 * helpers, and the dispatch from matmul to the row or the tiled kernels.
 * The K-quant row kernels are in kcpu_kq_avx512.c, the tiled (prefill)
 * kernels in kcpu_gemm_avx512.c.
 *
 * Invariants:
 * 1. Activation quantizers write the same bytes as the quant module's
 *    reference: same amax (NaN ignored), same multiplier (127/amax for Q8_0,
 *    -127/max for Q8_K, computed in scalar float exactly as the reference
 *    does), and the reference's own rounding (tt_nearest_int's add of
 *    1.5 * 2^23 and mantissa arithmetic, then a saturating narrow), which
 *    matches it bit for bit for every input, NaN and inf included.
 * 2. Integer products inside a quantization block are exact; float scales
 *    are applied once per block, as in the reference; only the order of the
 *    float sums differs.
 * 3. Nothing allocates, nothing keeps state; any thread may call anything.
 * 4. Two tables: kcpu_ops_avx512 needs only the base set above;
 *    kcpu_ops_avx512_bf16 differs in the BF16 product, which uses vdpbf16ps.
 */
#include "kcpu_avx512.h"

#include <math.h>
#include <string.h>

/* Float-weight decode prefetch hint: into L2 (T1), as in kcpu_kq_avx512.c,
 * where it beat T0 clearly on Zen 4 (T0 prefetches hold L1 miss buffers);
 * here F16 1-thread decode ~5% faster. The Q4_0 / Q8_0 row kernel keeps T0:
 * T1 measured ~20% slower there (its prefetch is only 64 blocks ahead). */
#ifndef KCPU_PF_HINT
#define KCPU_PF_HINT _MM_HINT_T1
#endif

/* ---- activation quantizers ---- */

static void quantize_f32(const float *x, void *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void quantize_f16(const float *x, void *vy, int64_t n)
{
    tt_f16 *y = vy;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_si256((__m256i *)(y + i), h);
    }
    for (; i < n; i++) y[i] = tt_f32_to_f16(x[i]);
}

/* bf16 = top half of (u + 0x7fff + bit16(u)); NaN -> (u >> 16) | 0x40. */
static void quantize_bf16(const float *x, void *vy, int64_t n)
{
    tt_bf16 *y = vy;
    const __m512i one = _mm512_set1_epi32(1), r = _mm512_set1_epi32(0x7fff);
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i u = _mm512_loadu_si512((const void *)(x + i));
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
        __m512i v = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(r, lsb)), 16);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
        v = _mm512_mask_or_epi32(v, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(v));
    }
    for (; i < n; i++) y[i] = tt_f32_to_bf16(x[i]);
}

/* Largest |x| over 16 lanes with NaN ignored: vmaxps returns its second
 * operand when either is NaN, so the running maximum goes second. */
KCPU_INLINE __m512 amax_step(__m512 m, __m512 v)
{
    return _mm512_max_ps(_mm512_abs_ps(v), m);
}

/* clamp_i8(tt_nearest_int(v)) for 16 lanes, bit for bit: the same float add
 * of 1.5 * 2^23 (round to nearest even for |v| < 2^22, and the same bits as
 * the scalar code for anything else, NaN and inf included), the same
 * mantissa arithmetic, then a saturating narrow (the clamp). Returns int32
 * lanes; narrow with _mm512_cvtsepi32_epi8. */
KCPU_INLINE __m512i round_i8_range(__m512 v)
{
    const __m512i u = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12582912.0f)));
    return _mm512_sub_epi32(_mm512_and_si512(u, _mm512_set1_epi32(0x007fffff)),
                            _mm512_set1_epi32(0x00400000));
}

static void quantize_q8_0(const float *x, void *vy, int64_t n)
{
    struct block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(amax_step(amax_step(_mm512_setzero_ps(), x0), x1));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = tt_f32_to_f16(amax / 127.0f);
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = round_i8_range(_mm512_mul_ps(x0, vid));
        const __m512i q1 = round_i8_range(_mm512_mul_ps(x1, vid));
        _mm_storeu_si128((__m128i *)y[b].qs, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(y[b].qs + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

static void quantize_q8_K(const float *x, void *vy, int64_t n)
{
    struct block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < QK_K; i += 16) m = amax_step(m, _mm512_loadu_ps(x + i));
        const float amax = _mm512_reduce_max_ps(m);
        memset(&y[b], 0, sizeof(y[b]));
        if (amax == 0.0f) continue;
        /* The reference keeps the first element of largest magnitude. */
        float max = 0.0f;
        for (int i = 0; i < QK_K; i += 16) {
            const __m512 v = _mm512_loadu_ps(x + i);
            const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (eq) {
                max = x[i + __builtin_ctz(eq)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m512 vis = _mm512_set1_ps(iscale);
        for (int g = 0; g < QK_K / 16; g++) {
            __m512i q = round_i8_range(_mm512_mul_ps(vis, _mm512_loadu_ps(x + 16 * g)));
            q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-128));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * g), _mm512_cvtsepi32_epi8(q));
            y[b].bsums[g] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- float types: tiles of R rows x T tokens, dot-product form ---- */

enum fkind { FK_F32, FK_F16, FK_BF16 };

KCPU_INLINE __m512 fload(const int kind, const uint8_t *p, int64_t i)
{
    if (kind == FK_F32) return _mm512_loadu_ps((const float *)p + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (kind == FK_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

KCPU_INLINE __m512 fload_mask(const int kind, const uint8_t *p, int64_t i, __mmask16 k)
{
    if (kind == FK_F32) return _mm512_maskz_loadu_ps(k, (const float *)p + i);
    const __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)p + i);
    if (kind == FK_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

KCPU_INLINE void float_tile(const int kind, const int R, const int T, int64_t n, const uint8_t *w,
                            size_t wrb, const uint8_t *a, size_t arb, float *out, int64_t ldo)
{
    __m512 acc[4][6];
    KCPU_UNROLL
    for (int r = 0; r < R; r++) {
        KCPU_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 wv[4];
        KCPU_UNROLL
        for (int r = 0; r < R; r++) wv[r] = fload(kind, w + r * wrb, k);
        KCPU_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 av = fload(kind, a + t * arb, k);
            KCPU_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], av, acc[r][t]);
        }
    }
    if (k < n) {
        const __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        __m512 wv[4];
        KCPU_UNROLL
        for (int r = 0; r < R; r++) wv[r] = fload_mask(kind, w + r * wrb, k, m);
        KCPU_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 av = fload_mask(kind, a + t * arb, k, m);
            KCPU_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], av, acc[r][t]);
        }
    }
    KCPU_UNROLL
    for (int t = 0; t < T; t++) {
        KCPU_UNROLL
        for (int r = 0; r < R; r++) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
}

/* BF16 with vdpbf16ps: 32 products per instruction, pairs summed in float. */
__attribute__((target("avx512bf16"))) KCPU_INLINE void bf16dp_tile(const int R, const int T,
                                                                   int64_t n, const uint8_t *w,
                                                                   size_t wrb, const uint8_t *a,
                                                                   size_t arb, float *out,
                                                                   int64_t ldo)
{
    __m512 acc[4][6];
    KCPU_UNROLL
    for (int r = 0; r < R; r++) {
        KCPU_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < n; k += 32) {
        const __mmask32 m = n - k >= 32 ? 0xffffffffu : (__mmask32)((1u << (n - k)) - 1);
        __m512bh wv[4];
        KCPU_UNROLL
        for (int r = 0; r < R; r++)
            wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)(w + r * wrb) + k);
        KCPU_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512bh av =
                (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)(a + t * arb) + k);
            KCPU_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], av);
        }
    }
    KCPU_UNROLL
    for (int t = 0; t < T; t++) {
        KCPU_UNROLL
        for (int r = 0; r < R; r++) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
}

/* One row against one token (decode): four accumulators over 64 elements
 * per step, reading the row as a single sequential stream. */
KCPU_INLINE float float_dot1(const int kind, int64_t n, const uint8_t *w, const uint8_t *a)
{
    const int es = kind == FK_F32 ? 4 : 2;
    __m512 s[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    int64_t k = 0;
    for (; k + 64 <= n; k += 64) {
        _mm_prefetch((const char *)w + (k + 512) * es, KCPU_PF_HINT);
        _mm_prefetch((const char *)w + (k + 512) * es + 64, KCPU_PF_HINT);
        if (es == 4) {
            _mm_prefetch((const char *)w + (k + 512) * es + 128, KCPU_PF_HINT);
            _mm_prefetch((const char *)w + (k + 512) * es + 192, KCPU_PF_HINT);
        }
        KCPU_UNROLL
        for (int i = 0; i < 4; i++)
            s[i] = _mm512_fmadd_ps(fload(kind, w, k + 16 * i), fload(kind, a, k + 16 * i), s[i]);
    }
    for (; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
        s[0] = _mm512_fmadd_ps(fload_mask(kind, w, k, m), fload_mask(kind, a, k, m), s[0]);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
}

/* One token: a row at a time (one sequential stream per thread, which the
 * prefetchers follow best). More tokens: tiles of 4 rows x {6, 4, 2, 1}
 * tokens, remainders one row at a time. */
#define FLOAT_DRIVER(KIND, TILE, ...)                                                              \
    do {                                                                                           \
        const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;                        \
        int64_t t0 = 0;                                                                            \
        if (n_tok == 1) {                                                                          \
            for (int64_t r = r0; r < r1; r++) out[r] = float_dot1(KIND, n, wb + r * w_row_bytes, ab); \
            break;                                                                                 \
        }                                                                                          \
        while (t0 < n_tok) {                                                                       \
            const int64_t rem = n_tok - t0;                                                        \
            const int nt = rem >= 6 ? 6 : rem >= 4 ? 4 : rem >= 2 ? 2 : 1;                          \
            const uint8_t *at = ab + t0 * act_row_bytes;                                           \
            float *ot = out + t0 * ldo;                                                            \
            for (int64_t r = r0; r < r1;) {                                                        \
                const uint8_t *wr = wb + r * w_row_bytes;                                          \
                const int nr = r + 4 <= r1 ? 4 : 1;                                                \
                if (nr == 4) {                                                                     \
                    if (nt == 6) TILE(__VA_ARGS__ 4, 6, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                    else if (nt == 4) TILE(__VA_ARGS__ 4, 4, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                    else if (nt == 2) TILE(__VA_ARGS__ 4, 2, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                    else TILE(__VA_ARGS__ 4, 1, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                } else {                                                                           \
                    if (nt == 6) TILE(__VA_ARGS__ 1, 6, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                    else if (nt == 4) TILE(__VA_ARGS__ 1, 4, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                    else if (nt == 2) TILE(__VA_ARGS__ 1, 2, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                    else TILE(__VA_ARGS__ 1, 1, n, wr, w_row_bytes, at, act_row_bytes, ot + r, ldo); \
                }                                                                                  \
                r += nr;                                                                           \
            }                                                                                      \
            t0 += nt;                                                                              \
        }                                                                                          \
    } while (0)

static void matmul_f32(KCPU_MATMUL_ARGS)
{
    FLOAT_DRIVER(FK_F32, float_tile, FK_F32, );
}

static void matmul_f16(KCPU_MATMUL_ARGS)
{
    FLOAT_DRIVER(FK_F16, float_tile, FK_F16, );
}

static void matmul_bf16(KCPU_MATMUL_ARGS)
{
    FLOAT_DRIVER(FK_BF16, float_tile, FK_BF16, );
}

__attribute__((target("avx512bf16"))) static void matmul_bf16_dp(KCPU_MATMUL_ARGS)
{
    FLOAT_DRIVER(FK_BF16, bf16dp_tile, );
}

/* ---- Q8_0 / Q4_0 row kernels ----
 * A chunk is up to 8 blocks (256 elements). Q8_0 levels are made unsigned
 * by flipping the sign bit (w + 128), Q4_0 levels are the nibbles 0..15;
 * vpdpbusd then sums (w + 128) * a or q * a per lane of 4 products, and the
 * surplus, 128 or 8 times the block's activation sum, is subtracted in float
 * once per block (d_w times bias * d_a * sum(a), the latter prepared per
 * call). Each block's lanes are scaled by d_w * d_a.
 *
 * Everything that depends on the activation alone is prepared once per
 * call, a chunk of K at a time, into a stack buffer (struct q80_act): the
 * activation bytes in the order the weight lanes come in, d_a and the
 * surplus. The rows then stream through one at a time.
 *
 * Lane order. Q8_0: a zmm holds two blocks' 32 quants in order. Q4_0: a zmm
 * holds four blocks' 16 packed bytes; its low nibbles are elements 0..15 of
 * the four blocks, its high nibbles elements 16..31, so the activation is
 * stored as [blocks 0-3: a0..15] then [blocks 0-3: a16..31] per half chunk. */

struct q80_act {
    int8_t q[256]; /* activation bytes in lane order */
    float d[8];    /* d_a of the 8 blocks (0 past the row's end) */
    float k[8];    /* the surplus of each block: bias * d_a * sum(a) */
};

#define Q80_BUF 16384 /* bytes of prepared activation per tile of tokens */

static void q80_prep(const int IS_Q4, const uint8_t *a, int nblk, struct q80_act *p)
{
    int8_t raw[256];
    for (int j = 0; j < 8; j++) {
        const uint8_t *b = a + j * sizeof(struct block_q8_0);
        if (j < nblk) memcpy(raw + 32 * j, b + 2, 32);
        else memset(raw + 32 * j, 0, 32);
        p->d[j] = j < nblk ? kcpu_f16(b) : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; i++) sum += raw[32 * j + i];
        p->k[j] = (float)(IS_Q4 ? 8 : 128) * p->d[j] * (float)sum;
    }
    if (IS_Q4) {
        for (int h = 0; h < 2; h++) { /* blocks 4h .. 4h+3 */
            for (int k = 0; k < 4; k++) {
                memcpy(p->q + 128 * h + 16 * k, raw + 32 * (4 * h + k), 16);
                memcpy(p->q + 128 * h + 64 + 16 * k, raw + 32 * (4 * h + k) + 16, 16);
            }
        }
    } else {
        memcpy(p->q, raw, 256);
    }
}

/* The d of the chunk's nblk blocks (0 for the others): the chunk's bytes
 * loaded as words (masked at its end) and the words at block starts picked
 * by vpermt2w, which costs less than a gather. Q4_0 blocks are 9 words, so
 * the 8 d's lie in the first 64 words; Q8_0 blocks 17 words, in 128. */
KCPU_INLINE __m256 chunk_scales(const int IS_Q4, const uint8_t *x, int nblk)
{
    const int bw = IS_Q4 ? 9 : 17; /* block size in words */
    const int words = (nblk - 1) * bw + 1;
    __m512i z[4];
    KCPU_UNROLL
    for (int i = 0; i < 4; i++) {
        if (IS_Q4 && i >= 2) break;
        const int left = words - 32 * i;
        const __mmask32 m = left >= 32 ? 0xffffffffu : left <= 0 ? 0 : (__mmask32)((1u << left) - 1);
        z[i] = _mm512_maskz_loadu_epi16(m, x + 64 * i);
    }
    __m512i d;
    if (IS_Q4) {
        d = _mm512_permutex2var_epi16(z[0], _mm512_setr_epi32(9 << 16, (27 << 16) | 18, (45 << 16) | 36,
                                                               (63 << 16) | 54, 0, 0, 0, 0, 0, 0, 0, 0,
                                                               0, 0, 0, 0), z[1]);
    } else {
        /* d0..d3 at words 0, 17, 34, 51 of z0:z1; d4..d7 at 4, 21, 38, 55 of z2:z3 */
        const __m512i i03 = _mm512_setr_epi32(17 << 16, (51 << 16) | 34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m512i i47 = _mm512_setr_epi32((21 << 16) | 4, (55 << 16) | 38, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m512i lo = _mm512_permutex2var_epi16(z[0], i03, z[1]);
        const __m512i hi = _mm512_permutex2var_epi16(z[2], i47, z[3]);
        d = _mm512_mask_permutexvar_epi64(lo, 0x2, _mm512_setzero_si512(), hi); /* qword 1 = hi's 0 */
    }
    const __m256 f = _mm256_cvtph_ps(_mm512_castsi512_si128(d));
    return _mm256_maskz_mov_ps((__mmask8)((1u << nblk) - 1), f);
}

/* One chunk (nblk <= 8 blocks) of one row against NT tokens: acc[t] += ... */
KCPU_INLINE void q80_chunk(const int IS_Q4, const int NT, const int nblk, const uint8_t *x,
                           const struct q80_act *p, size_t p_stride, __m512 acc[4], __m256 corr[4])
{
    const size_t bsz = IS_Q4 ? sizeof(struct block_q4_0) : sizeof(struct block_q8_0);
    const __m512i z = _mm512_setzero_si512(), m4 = _mm512_set1_epi8(0x0F);
    _mm_prefetch((const char *)x + 64 * bsz, KCPU_PF_HINT);
    _mm_prefetch((const char *)x + 64 * bsz + 64, _MM_HINT_T0);
    _mm_prefetch((const char *)x + 64 * bsz + 128, _MM_HINT_T0);
    _mm_prefetch((const char *)x + 64 * bsz + 192, _MM_HINT_T0);
    _mm_prefetch((const char *)x + 64 * bsz + 256, _MM_HINT_T0);
    const __m256 dw = chunk_scales(IS_Q4, x, nblk);
    __m256 sc[4];
    KCPU_UNROLL
    for (int t = 0; t < NT; t++) {
        const struct q80_act *pt = (const struct q80_act *)((const uint8_t *)p + t * p_stride);
        sc[t] = _mm256_mul_ps(dw, _mm256_loadu_ps(pt->d));
        corr[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(pt->k), corr[t]); /* the surplus, d_w scaled */
    }
    if (IS_Q4) {
        KCPU_UNROLL
        for (int h = 0; h < 2; h++) {
            if (4 * h >= nblk) break;
            const uint8_t *q = x + 4 * h * bsz + 2;
            __m128i v[4];
            KCPU_UNROLL
            for (int k = 0; k < 4; k++)
                v[k] = 4 * h + k < nblk ? _mm_loadu_si128((const void *)(q + k * bsz)) : _mm_setzero_si128();
            const __m512i W = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(v[0]), v[1], 1)),
                _mm256_inserti128_si256(_mm256_castsi128_si256(v[2]), v[3], 1), 1);
            const __m512i lo = _mm512_and_si512(W, m4), hi = _mm512_and_si512(_mm512_srli_epi16(W, 4), m4);
            const __m512i idx = _mm512_setr_epi32(4 * h, 4 * h, 4 * h, 4 * h, 4 * h + 1, 4 * h + 1,
                                                  4 * h + 1, 4 * h + 1, 4 * h + 2, 4 * h + 2, 4 * h + 2,
                                                  4 * h + 2, 4 * h + 3, 4 * h + 3, 4 * h + 3, 4 * h + 3);
            KCPU_UNROLL
            for (int t = 0; t < NT; t++) {
                const struct q80_act *pt = (const struct q80_act *)((const uint8_t *)p + t * p_stride);
                __m512i d = _mm512_dpbusd_epi32(z, lo, _mm512_loadu_si512((const void *)(pt->q + 128 * h)));
                d = _mm512_dpbusd_epi32(d, hi, _mm512_loadu_si512((const void *)(pt->q + 128 * h + 64)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                                         _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(sc[t])), acc[t]);
            }
        }
    } else {
        KCPU_UNROLL
        for (int i = 0; i < 4; i++) {
            if (2 * i >= nblk) break;
            const uint8_t *q = x + 2 * i * bsz + 2;
            const __m256i lo = _mm256_loadu_si256((const void *)q);
            const __m256i hi = 2 * i + 1 < nblk ? _mm256_loadu_si256((const void *)(q + bsz))
                                                : _mm256_setzero_si256();
            const __m512i W = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                               _mm512_set1_epi8((char)0x80));
            const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * i), _mm256_set1_epi32(2 * i + 1), 1);
            KCPU_UNROLL
            for (int t = 0; t < NT; t++) {
                const struct q80_act *pt = (const struct q80_act *)((const uint8_t *)p + t * p_stride);
                __m512i d = _mm512_dpbusd_epi32(z, W, _mm512_loadu_si512((const void *)(pt->q + 64 * i)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                                         _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(sc[t])), acc[t]);
            }
        }
    }
}

KCPU_INLINE void q80_row(const int IS_Q4, const int NT, int64_t nchunk, int64_t nb, const uint8_t *x,
                         const struct q80_act *p, size_t p_stride, float *s)
{
    const size_t bsz = IS_Q4 ? sizeof(struct block_q4_0) : sizeof(struct block_q8_0);
    __m512 acc[4];
    __m256 corr[4];
    KCPU_UNROLL
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        corr[t] = _mm256_setzero_ps();
    }
    const int64_t full = nb / 8; /* chunks of 8 blocks; the last may be short */
    int64_t c = 0;
    for (; c < TT_MIN(full, nchunk); c++, x += 8 * bsz, p++) q80_chunk(IS_Q4, NT, 8, x, p, p_stride, acc, corr);
    if (c < nchunk) q80_chunk(IS_Q4, NT, (int)(nb - 8 * c), x, p, p_stride, acc, corr);
    KCPU_UNROLL
    for (int t = 0; t < NT; t++)
        s[t] = _mm512_reduce_add_ps(_mm512_sub_ps(acc[t], _mm512_zextps256_ps512(corr[t])));
}

static void rows_q80(const int IS_Q4, KCPU_MATMUL_ARGS)
{
    const size_t bsz = IS_Q4 ? sizeof(struct block_q4_0) : sizeof(struct block_q8_0);
    const int64_t nb = n / QK8_0, nchunk = (nb + 7) / 8;
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
    struct q80_act buf[Q80_BUF / sizeof(struct q80_act)];
    const int64_t cap = (int64_t)TT_ARRAY_LEN(buf);
    for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = (int)TT_MIN(4, n_tok - t0);
        const int64_t kch = cap / nt; /* chunks per pass */
        for (int64_t c0 = 0; c0 < nchunk; c0 += kch) {
            const int64_t cc = TT_MIN(kch, nchunk - c0);
            for (int t = 0; t < nt; t++) {
                const uint8_t *at = ab + (t0 + t) * act_row_bytes + c0 * 8 * sizeof(struct block_q8_0);
                for (int64_t c = 0; c < cc; c++)
                    q80_prep(IS_Q4, at + c * 8 * sizeof(struct block_q8_0),
                             (int)TT_MIN(8, nb - 8 * (c0 + c)), &buf[t * kch + c]);
            }
            const int64_t nbc = TT_MIN(nb - 8 * c0, 8 * cc);
            const size_t ps = (size_t)kch * sizeof(struct q80_act);
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *wr = wb + r * w_row_bytes + c0 * 8 * bsz;
                float s[4];
                if (nt == 1) q80_row(IS_Q4, 1, cc, nbc, wr, buf, ps, s);
                else if (nt == 2) q80_row(IS_Q4, 2, cc, nbc, wr, buf, ps, s);
                else if (nt == 3) q80_row(IS_Q4, 3, cc, nbc, wr, buf, ps, s);
                else q80_row(IS_Q4, 4, cc, nbc, wr, buf, ps, s);
                for (int t = 0; t < nt; t++) {
                    float *o = out + (t0 + t) * ldo + r;
                    *o = c0 > 0 ? *o + s[t] : s[t];
                }
            }
        }
    }
}

static void rows_q8_0(KCPU_MATMUL_ARGS)
{
    rows_q80(0, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);
}

static void rows_q4_0(KCPU_MATMUL_ARGS)
{
    rows_q80(1, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);
}

/* ---- dispatch: few tokens stream rows, many tokens use tiles ---- */

#define MATMUL_DISPATCH(name, rows_fn, gemm_fn, min_tok)                                           \
    static void name(KCPU_MATMUL_ARGS)                                                             \
    {                                                                                              \
        if (n_tok >= (min_tok))                                                                    \
            gemm_fn(n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);               \
        else                                                                                       \
            rows_fn(n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);               \
    }

MATMUL_DISPATCH(matmul_q4_0, rows_q4_0, kcpu_avx512_gemm_q4_0, KCPU_AVX512_GEMM_MIN_TOK)
MATMUL_DISPATCH(matmul_q8_0, rows_q8_0, kcpu_avx512_gemm_q8_0, KCPU_AVX512_GEMM_MIN_TOK)
MATMUL_DISPATCH(matmul_q4_K, kcpu_avx512_rows_q4_K, kcpu_avx512_gemm_q4_K, KCPU_AVX512_GEMM_MIN_TOK_KQ)
MATMUL_DISPATCH(matmul_q5_K, kcpu_avx512_rows_q5_K, kcpu_avx512_gemm_q5_K, KCPU_AVX512_GEMM_MIN_TOK_KQ)
MATMUL_DISPATCH(matmul_q6_K, kcpu_avx512_rows_q6_K, kcpu_avx512_gemm_q6_K, KCPU_AVX512_GEMM_MIN_TOK_KQ)

/* ---- attention helpers ---- */

static float dot_f16_f32(int64_t n, const tt_f16 *a, const float *b)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))),
                             _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i + 16))),
                             _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, a + i)),
                             _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static float dot_f32(int64_t n, const float *a, const float *b)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void axpy_f16(int64_t n, float alpha, const tt_f16 *x, float *y)
{
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 xv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, xv, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static void axpy_f32(int64_t n, float alpha, const float *x, float *y)
{
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, xv, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* One head's scores and value mix with the query (or the output) held in
 * NC zmm registers (hd = 16 NC, a multiple of 32): the same operations in
 * the same order as dot_f16_f32 and axpy_f16, without a call, a reload of
 * the query or a store of the output per cached row. */
static inline __attribute__((always_inline)) float scores_f16_regs(const int nc, int64_t n_pos,
                                                                   const tt_f16 *k, size_t stride,
                                                                   const float *q, float scale, float *scores)
{
    __m512 qv[8];
    for (int c = 0; c < nc; c++) qv[c] = _mm512_loadu_ps(q + 16 * c);
    float maxs = -INFINITY;
    for (int64_t j = 0; j < n_pos; j++) {
        const tt_f16 *kj = k + (size_t)j * stride;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        for (int c = 0; c < nc; c += 2) {
            s0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * c))), qv[c], s0);
            s1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * c + 16))),
                                 qv[c + 1], s1);
        }
        scores[j] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) * scale;
        maxs = scores[j] > maxs ? scores[j] : maxs;
    }
    return maxs;
}

static inline __attribute__((always_inline)) void mix_f16_regs(const int nc, int64_t n_pos, const tt_f16 *v,
                                                               size_t stride, const float *w, float inv,
                                                               float *out)
{
    __m512 acc[8];
    for (int c = 0; c < nc; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_pos; j++) {
        const tt_f16 *vj = v + (size_t)j * stride;
        const __m512 va = _mm512_set1_ps(w[j] * inv);
        for (int c = 0; c < nc; c++)
            acc[c] = _mm512_fmadd_ps(va, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c))), acc[c]);
    }
    for (int c = 0; c < nc; c++) _mm512_storeu_ps(out + 16 * c, acc[c]);
}

static float scores_f16(int64_t hd, int64_t n_pos, const tt_f16 *k, size_t stride, const float *q, float scale,
                        float *scores)
{
    switch (hd) {
    case 64: return scores_f16_regs(4, n_pos, k, stride, q, scale, scores);
    case 128: return scores_f16_regs(8, n_pos, k, stride, q, scale, scores);
    default: return kcpu_scores_f16_loop(&kcpu_ops_avx512, hd, n_pos, k, stride, q, scale, scores);
    }
}

static void mix_f16(int64_t hd, int64_t n_pos, const tt_f16 *v, size_t stride, const float *w, float inv,
                    float *out)
{
    switch (hd) {
    case 64: mix_f16_regs(4, n_pos, v, stride, w, inv, out); return;
    case 128: mix_f16_regs(8, n_pos, v, stride, w, inv, out); return;
    default: kcpu_mix_f16_loop(&kcpu_ops_avx512, hd, n_pos, v, stride, w, inv, out); return;
    }
}

/* ---- the tables ---- */

#define AVX512_TABLE(bf16_fn)                                                                      \
    {                                                                                              \
        .isa = KCPU_ISA_AVX512,                                                                    \
        .quantize_act = {                                                                          \
            [TT_TYPE_F32] = quantize_f32,                                                          \
            [TT_TYPE_F16] = quantize_f16,                                                          \
            [TT_TYPE_BF16] = quantize_bf16,                                                        \
            [TT_TYPE_Q8_0] = quantize_q8_0,                                                        \
            [TT_TYPE_Q8_K] = quantize_q8_K,                                                        \
        },                                                                                         \
        .matmul = {                                                                                \
            [TT_TYPE_F32] = matmul_f32,                                                            \
            [TT_TYPE_F16] = matmul_f16,                                                            \
            [TT_TYPE_BF16] = bf16_fn,                                                              \
            [TT_TYPE_Q4_0] = matmul_q4_0,                                                          \
            [TT_TYPE_Q8_0] = matmul_q8_0,                                                          \
            [TT_TYPE_Q4_K] = matmul_q4_K,                                                          \
            [TT_TYPE_Q5_K] = matmul_q5_K,                                                          \
            [TT_TYPE_Q6_K] = matmul_q6_K,                                                          \
        },                                                                                         \
        .matmul_tile16 = {                                                                         \
            [TT_TYPE_Q4_K] = kcpu_avx512_tile16_q4_K,                                              \
            [TT_TYPE_Q5_K] = kcpu_avx512_tile16_q5_K,                                              \
            [TT_TYPE_Q6_K] = kcpu_avx512_tile16_q6_K,                                              \
        },                                                                                         \
        .dot_f16_f32 = dot_f16_f32,                                                                \
        .dot_f32 = dot_f32,                                                                        \
        .axpy_f16 = axpy_f16,                                                                      \
        .axpy_f32 = axpy_f32,                                                                      \
        .scores_f16 = scores_f16,                                                                  \
        .mix_f16 = mix_f16,                                                                        \
    }

const struct kcpu_ops kcpu_ops_avx512 = AVX512_TABLE(matmul_bf16);
const struct kcpu_ops kcpu_ops_avx512_bf16 = AVX512_TABLE(matmul_bf16_dp);
