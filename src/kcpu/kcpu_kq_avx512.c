/*
 * kcpu_kq_avx512.c: K-quant (Q4_K, Q5_K, Q6_K) x Q8_K products for a few
 * tokens at a time (decode), AVX-512 + VNNI.
 *
 * Decode reads every weight once per token, so these kernels are built to
 * keep up with memory:
 * - One row at a time, so each thread reads its rows as one sequential
 *   stream (on Zen 4, 2 threads reach ~80% of the read bandwidth that way,
 *   under 50% with four interleaved row streams); up to four tokens share
 *   each unpacked block.
 * - Whatever depends on the activation alone is done once per call: the
 *   Q4_K/Q5_K activation is put in the weights' level order (below) into a
 *   16 KB stack buffer, a chunk of K at a time.
 * - Scales of four consecutive blocks are unpacked together, and so are their
 *   d, dmin and d_act products.
 *
 * Per 256-weight block and (row, token), exactly as the reference sums:
 * 1. vpdpbusd (u8 levels x s8 activations) into zeroed accumulators gives
 *    16 int32 lanes of 4-product sums, each below 2^15 in magnitude
 *    (4 * 63 * 128 at most), so vpackssdw packs two such vectors to int16
 *    without saturation;
 * 2. vpmaddwd / vpdpwssd multiply the packed sums by the sub-block scales,
 *    laid out to match the packing, giving the exact int32 sum_j sc_j * dot_j
 *    spread over lanes;
 * 3. min / offset terms come from the Q8_K bsums in int32 (vpmaddwd);
 * 4. the int32 lanes are converted to float and scaled by d * d_act once per
 *    block. Only the float summation order differs from the reference.
 *
 * Zen 4 executes vpdpbusd, vpmaddwd, vpdpwssd, FMAs and vpternlogd on the
 * same two pipes; shifts, logic, conversions and most shuffles go elsewhere.
 * What counts is the total number of vector instructions per block: variable
 * shifts, gathers and register broadcasts were replaced by fixed shifts,
 * per-call arrays and memory broadcasts (each step measured).
 */
#include "kcpu_avx512.h"

#include <string.h>

#define Q8K_QS 4    /* offset of qs in block_q8_K */
#define Q8K_BSUMS 260
/* Software prefetch distance (blocks ahead in the row) and hint; measured
 * on Zen 4 with both cores streaming: 48 blocks (7 KB) beat 16 and 32, and
 * prefetching into L2 (T1) beat T0 (into L1) and NTA: 1 thread, one 8B
 * layer, Q4_K 6.1 -> 4.8 ms and Q6_K 9.9 -> 6.6 ms (to ~93% of the read
 * bandwidth); 2-thread decode of an 8-layer Q4_K_M model 8-30% faster in
 * alternating runs (the prefetched lines no longer hold L1's miss buffers;
 * the demand loads then hit L2). */
#ifndef KQ_PF
#define KQ_PF 48
#endif
/* Per-token stride of the d_act pair arrays (two floats per block, up to 64
 * blocks per pass). */
#define Q45K_DY_STRIDE 128
#ifndef KQ_HINT
#define KQ_HINT _MM_HINT_T1
#endif

/* sum_j sc_j * dot_j of one block: L[i] holds the levels of elements
 * 64i .. 64i + 63, A the activation block; sc01 / sc23 are the int16 scales
 * matching packs(p0, p1) / packs(p2, p3), whose 128-bit lane l holds the
 * 4-product sums of lanes 4l..4l+3 of both operands. */
KCPU_INLINE __m512i dot_scaled(const __m512i L[4], const uint8_t *A, __m512i sc01, __m512i sc23)
{
    const __m512i z = _mm512_setzero_si512();
    const __m512i p0 = _mm512_dpbusd_epi32(z, L[0], _mm512_loadu_si512((const void *)A));
    const __m512i p1 = _mm512_dpbusd_epi32(z, L[1], _mm512_loadu_si512((const void *)(A + 64)));
    const __m512i p2 = _mm512_dpbusd_epi32(z, L[2], _mm512_loadu_si512((const void *)(A + 128)));
    const __m512i p3 = _mm512_dpbusd_epi32(z, L[3], _mm512_loadu_si512((const void *)(A + 192)));
    const __m512i acc = _mm512_madd_epi16(_mm512_packs_epi32(p0, p1), sc01);
    return _mm512_dpwssd_epi32(acc, _mm512_packs_epi32(p2, p3), sc23);
}

/* The 6-bit scales and mins of up to 4 consecutive Q4_K/Q5_K blocks of a
 * row: 128-bit lane j of the result holds sc0..sc7, m0..m7 of block j
 * (tt_q4_K_scale_min's fields, four blocks per instruction). R holds the first
 * 16 bytes (d, dmin, scales) of block j in lane j. */
KCPU_INLINE __m512i q4k_scales_x4(__m512i R)
{
    const __m512i P = _mm512_shuffle_epi8(
        R, _mm512_broadcast_i32x4(_mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13,
                                                14, 15)));
    const __m512i Q = _mm512_shuffle_epi8(
        R, _mm512_broadcast_i32x4(_mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9,
                                                10, 11)));
    const __m512i P2 = _mm512_mask_blend_epi8(0xF000F000F000F000ull, P, _mm512_srli_epi16(P, 4));
    const __m512i lo = _mm512_and_si512(
        P2, _mm512_broadcast_i32x4(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63,
                                                 15, 15, 15, 15)));
    const __m512i hi = _mm512_and_si512(
        _mm512_srli_epi16(Q, 2),
        _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30, 0, 0, 0, 0, 0x30,
                                             0x30, 0x30, 0x30)));
    return _mm512_or_si512(lo, hi);
}

/* Lane j of R: the 16 bytes at x + j * bsz (j < g); lanes past g repeat
 * block 0 (valid memory, results unused). */
KCPU_INLINE __m512i load_heads(const uint8_t *x, size_t bsz, int g)
{
    const __m128i h0 = _mm_loadu_si128((const void *)x);
    const __m128i h1 = _mm_loadu_si128((const void *)(x + (g > 1 ? bsz : 0)));
    const __m128i h2 = _mm_loadu_si128((const void *)(x + (g > 2 ? 2 * bsz : 0)));
    const __m128i h3 = _mm_loadu_si128((const void *)(x + (g > 3 ? 3 * bsz : 0)));
    const __m256i a = _mm256_inserti128_si256(_mm256_castsi128_si256(h0), h1, 1);
    const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(h2), h3, 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* d_act of the blocks of one Q8_K row, each twice (dy0, dy0, dy1, dy1, ...),
 * for nblk blocks: the row kernels multiply four blocks' (d, dmin) pairs by
 * these with one load instead of a gather. */
static void act_dy_pairs(const uint8_t *a, int64_t nblk, float *dst)
{
    for (int64_t b = 0; b < nblk; b++, a += sizeof(struct block_q8_K)) {
        memcpy(&dst[2 * b], a, 4);
        dst[2 * b + 1] = dst[2 * b];
    }
    for (int64_t b = nblk; b % 4; b++) dst[2 * b] = dst[2 * b + 1] = 0.0f;
}

/* Scale vectors of block j for dot_scaled, from U = q4k_scales_x4(...).
 * With the activation in Q4_K level order (see act_q4k_order), p0 covers
 * sub-blocks 0 (lanes 0-7) and 2 (8-15), p1 sub-blocks 1 and 3, so
 * packs(p0, p1) holds sb0, sb1 in 128-bit lanes 0, 1 and sb2, sb3 in lanes
 * 2, 3, four words each; sc01 matches that, sc23 likewise for sub-blocks
 * 4..7. m16 is m0, m0, m1, m1, ..., m7, m7 for vpmaddwd with the 16 bsums. */
KCPU_INLINE void q4k_scale_vectors(__m512i U, int j, __m512i *sc01, __m512i *sc23, __m256i *m16)
{
    const __m512i u4 = _mm512_permutexvar_epi32(
        _mm512_add_epi32(_mm512_set1_epi32(4 * j),
                         _mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3)),
        U);
    const char z = -1;
#define PAIR(a, b) a, z, a, z, a, z, a, z, b, z, b, z, b, z, b, z
    const __m512i i01 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_setr_epi8(PAIR(0, 1), PAIR(0, 1))), _mm256_setr_epi8(PAIR(2, 3), PAIR(2, 3)), 1);
    const __m512i i23 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_setr_epi8(PAIR(4, 5), PAIR(4, 5))), _mm256_setr_epi8(PAIR(6, 7), PAIR(6, 7)), 1);
#undef PAIR
    *sc01 = _mm512_shuffle_epi8(u4, i01);
    *sc23 = _mm512_shuffle_epi8(u4, i23);
    *m16 = _mm256_shuffle_epi8(
        _mm512_castsi512_si256(u4),
        _mm256_setr_epi8(8, z, 8, z, 9, z, 9, z, 10, z, 10, z, 11, z, 11, z, 12, z, 12, z, 13, z,
                         13, z, 14, z, 14, z, 15, z, 15, z));
}

/* acc += f[0] * isum (16 lanes), accm += f[1] * imin (8 lanes); both summed
 * over lanes at the end. f points at the pair (d * d_act, -dmin * d_act) of
 * the block in a small array, so both factors are broadcast by the FMAs'
 * memory operands instead of shuffles. */
KCPU_INLINE void add_block(__m512 *acc, __m256 *accm, __m512i isum, __m256i imin, const float *f)
{
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(f[0]), *acc);
    *accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_set1_ps(f[1]), *accm);
}

/* ---- Q4_K / Q5_K ----
 * Block layout (bytes): d 0, dmin 2, scales 4..15, [Q5_K: qh 16..47], qs.
 * qs[32g .. 32g+31] hold elements 64g .. 64g+31 (low nibbles) and
 * 64g+32 .. 64g+63 (high nibbles). A zmm load of qs[0..63] therefore gives
 * elements 0..31 and 64..95 (low nibbles), 32..63 and 96..127 (high); the
 * activation is put in that order once per call (act_q4k_order), which is
 * far cheaper than reordering the weights of every row. HAS_QH selects Q5_K:
 * level bit 4 of element 64g + l (l < 32) is bit 2g of qh[l], of element
 * 64g + 32 + l bit 2g + 1. */
KCPU_INLINE void q45k_levels(const uint8_t *x, const int HAS_QH, __m512i L[4])
{
    const uint8_t *qs = x + (HAS_QH ? 48 : 16);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i q0 = _mm512_loadu_si512((const void *)qs);
    const __m512i q1 = _mm512_loadu_si512((const void *)(qs + 64));
    L[0] = _mm512_and_si512(q0, m4);
    L[1] = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4);
    L[2] = _mm512_and_si512(q1, m4);
    L[3] = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4);
    if (HAS_QH) {
        /* qh bit b of the two halves of L[i] (b = 0|2, 1|3, 4|6, 5|7) to bit
         * 4 of each byte: with h = qh | qh >> 2 (lower | upper half) these
         * are bits 0, 1, 4, 5 of h, moved by fixed shifts and merged above
         * the nibble (GCC fuses the and/or into vpternlogd, which measured
         * faster than keeping them apart). */
        const __m256i qh = _mm256_loadu_si256((const void *)(x + 16));
        const __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
        const __m512i b4 = _mm512_set1_epi8(0x10);
        L[0] = _mm512_or_si512(L[0], _mm512_and_si512(_mm512_slli_epi16(h, 4), b4));
        L[1] = _mm512_or_si512(L[1], _mm512_and_si512(_mm512_slli_epi16(h, 3), b4));
        L[2] = _mm512_or_si512(L[2], _mm512_and_si512(h, b4));
        L[3] = _mm512_or_si512(L[3], _mm512_and_si512(_mm512_srli_epi16(h, 1), b4));
    }
}

/* The qs of nblk Q8_K blocks (from `a`) in Q4_K level order, 256 bytes per
 * block: elements 0..31, 64..95, 32..63, 96..127, then the same for 128.. */
static void act_q4k_order(const uint8_t *a, int64_t nblk, uint8_t *dst)
{
    for (int64_t b = 0; b < nblk; b++, a += sizeof(struct block_q8_K), dst += QK_K) {
        for (int h = 0; h < 2; h++) {
            const uint8_t *q = a + Q8K_QS + 128 * h;
            uint8_t *o = dst + 128 * h;
            _mm256_storeu_si256((void *)o, _mm256_loadu_si256((const void *)q));
            _mm256_storeu_si256((void *)(o + 32), _mm256_loadu_si256((const void *)(q + 64)));
            _mm256_storeu_si256((void *)(o + 64), _mm256_loadu_si256((const void *)(q + 32)));
            _mm256_storeu_si256((void *)(o + 96), _mm256_loadu_si256((const void *)(q + 96)));
        }
    }
}

/* One row x NT tokens over nb blocks: acc[t] += this row's dot with token
 * t. aq: the activation qs in level order (token t at aq + t * aq_stride);
 * a: the Q8_K rows themselves (for d and bsums). Blocks go in groups of
 * four: their scales are unpacked together, their d, dmin and d_act
 * multiplied together. */
KCPU_INLINE void q45k_group(const int HAS_QH, const int NT, const int g, const uint8_t *x,
                            const uint8_t *aq, size_t aq_stride, const float *dy, const uint8_t *a,
                            size_t arb, __m512 acc[4], __m256 accm[4])
{
    const size_t bsz = HAS_QH ? sizeof(struct block_q5_K) : sizeof(struct block_q4_K);
    const __m256 neg_min = _mm256_castsi256_ps(_mm256_set1_epi64x((long long)0x8000000000000000ull));
    const __m512i R = load_heads(x, bsz, g);
    const __m512i U = q4k_scales_x4(R);
    /* d_j, -dmin_j for the group */
    const __m256 DD = _mm256_xor_ps(
        _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), R))),
        neg_min);
    float DDt[4][8] __attribute__((aligned(32)));
    KCPU_UNROLL
    for (int t = 0; t < NT; t++)
        _mm256_store_ps(DDt[t], _mm256_mul_ps(DD, _mm256_loadu_ps(dy + t * Q45K_DY_STRIDE)));
    /* keep DDt in memory: the FMAs below broadcast from it for free,
     * where broadcasts from a register would cost shuffles */
    __asm__ volatile("" ::: "memory");
    KCPU_UNROLL
    for (int j = 0; j < 4; j++) {
        if (j >= g) break;
        const uint8_t *xb = x + j * bsz;
        _mm_prefetch((const char *)xb + KQ_PF * bsz, KQ_HINT);
        _mm_prefetch((const char *)xb + KQ_PF * bsz + 64, KQ_HINT);
        _mm_prefetch((const char *)xb + KQ_PF * bsz + 128, KQ_HINT);
        __m512i L[4], sc01, sc23;
        __m256i m16;
        q45k_levels(xb, HAS_QH, L);
        q4k_scale_vectors(U, j, &sc01, &sc23, &m16);
        KCPU_UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + j * sizeof(struct block_q8_K);
            const __m512i isum = dot_scaled(L, aq + t * aq_stride + j * QK_K, sc01, sc23);
            const __m256i imin = _mm256_madd_epi16(
                m16, _mm256_loadu_si256((const void *)(ab + Q8K_BSUMS)));
            add_block(&acc[t], &accm[t], isum, imin, &DDt[t][2 * j]);
        }
    }
}

/* Whole groups of four blocks with g known to the compiler, then the rest. */
KCPU_INLINE void q45k_row(const int HAS_QH, const int NT, int64_t nb, const uint8_t *x,
                          const uint8_t *aq, size_t aq_stride, const float *dy, const uint8_t *a,
                          size_t arb, __m512 acc[4], __m256 accm[4])
{
    const size_t bsz = HAS_QH ? sizeof(struct block_q5_K) : sizeof(struct block_q4_K);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4, x += 4 * bsz, a += 4 * sizeof(struct block_q8_K), aq += 4 * QK_K, dy += 8)
        q45k_group(HAS_QH, NT, 4, x, aq, aq_stride, dy, a, arb, acc, accm);
    if (b < nb) q45k_group(HAS_QH, NT, (int)(nb - b), x, aq, aq_stride, dy, a, arb, acc, accm);
}

/* out[t * ldo] = (ADD ? out : 0) + the row's dots over nb blocks. */
KCPU_INLINE void q45k_tile(const int HAS_QH, const int NT, int64_t nb, const uint8_t *w,
                           const uint8_t *aq, size_t aq_stride, const float *dy, const uint8_t *a,
                           size_t arb, float *out, int64_t ldo, int add)
{
    __m512 acc[4];
    __m256 accm[4];
    KCPU_UNROLL
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        accm[t] = _mm256_setzero_ps();
    }
    q45k_row(HAS_QH, NT, nb, w, aq, aq_stride, dy, a, arb, acc, accm);
    KCPU_UNROLL
    for (int t = 0; t < NT; t++) {
        const float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], _mm512_zextps256_ps512(accm[t])));
        out[t * ldo] = add ? out[t * ldo] + v : v;
    }
}

/* Q4_K / Q5_K rows: the activation is put in level order a chunk of K at a
 * time (16 KB of stack: 64 blocks for one token, 16 for four); the rows then
 * stream through, a chunk each; more than one chunk (n > 16384 for one
 * token) adds the partial dots into out. */
#define Q45K_BUF 16384
static void rows_q45k(const int HAS_QH, KCPU_MATMUL_ARGS)
{
    const size_t bsz = HAS_QH ? sizeof(struct block_q5_K) : sizeof(struct block_q4_K);
    const int64_t nb = n / QK_K;
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
    uint8_t buf[Q45K_BUF] __attribute__((aligned(64)));
    float dy[4 * Q45K_DY_STRIDE];
    for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = (int)TT_MIN(4, n_tok - t0);
        const int64_t kch = nt == 1 ? 64 : nt == 2 ? 32 : 16;
        const size_t stride = (size_t)kch * QK_K;
        const uint8_t *at = ab + t0 * act_row_bytes;
        float *ot = out + t0 * ldo;
        for (int64_t c0 = 0; c0 < nb; c0 += kch) {
            const int64_t cb = TT_MIN(kch, nb - c0);
            const uint8_t *ac = at + c0 * sizeof(struct block_q8_K);
            for (int t = 0; t < nt; t++) {
                act_q4k_order(ac + t * act_row_bytes, cb, buf + t * stride);
                act_dy_pairs(ac + t * act_row_bytes, cb, dy + t * Q45K_DY_STRIDE);
            }
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *wr = wb + r * w_row_bytes + c0 * bsz;
                const int add = c0 > 0;
                if (nt == 1) q45k_tile(HAS_QH, 1, cb, wr, buf, stride, dy, ac, act_row_bytes, ot + r, ldo, add);
                else if (nt == 2) q45k_tile(HAS_QH, 2, cb, wr, buf, stride, dy, ac, act_row_bytes, ot + r, ldo, add);
                else if (nt == 3) q45k_tile(HAS_QH, 3, cb, wr, buf, stride, dy, ac, act_row_bytes, ot + r, ldo, add);
                else q45k_tile(HAS_QH, 4, cb, wr, buf, stride, dy, ac, act_row_bytes, ot + r, ldo, add);
            }
        }
    }
}

/* ---- Q6_K ----
 * Block layout (bytes): ql 0..127, qh 128..191, scales 192..207 (int8), d 208.
 * In half h (128 elements), ql[64h .. 64h+63] low nibbles are elements
 * 128h + 0..63 and high nibbles 128h + 64..127, in order; the top two bits
 * of element 128h + 32q + l are bits 2q, 2q+1 of qh[32h + l]. Levels are
 * 0..63 (value = level - 32); the -32 is applied through the bsums. */
KCPU_INLINE void q6k_levels(const uint8_t *x, __m512i L[4])
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    KCPU_UNROLL
    for (int h = 0; h < 2; h++) {
        const __m512i ql = _mm512_loadu_si512((const void *)(x + 64 * h));
        /* H = qh | qh >> 2 (lower | upper half): the top bits of elements
         * 0..31 / 32..63 of the half are bits 0-1 of H, of elements 64..95 /
         * 96..127 bits 4-5; fixed shifts move them to bits 4-5. */
        const __m256i qh = _mm256_loadu_si256((const void *)(x + 128 + 32 * h));
        const __m512i H = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
        L[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_slli_epi16(H, 4), m30));
        L[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(H, m30));
    }
}

KCPU_INLINE void q6k_group(const int NT, const int g, const uint8_t *x, const float *dy,
                           const uint8_t *a, size_t arb, __m512 acc[4], __m256 accm[4])
{
    const size_t bsz = sizeof(struct block_q6_K);
    /* packs(p_lo, p_hi) of half h holds in 128-bit lane l the sub-blocks
     * 8h + l (4 words) and 8h + 4 + l (4 words). */
    const __m512i perm0 = _mm512_set_epi16(7, 7, 7, 7, 3, 3, 3, 3, 6, 6, 6, 6, 2, 2, 2, 2, 5, 5, 5,
                                           5, 1, 1, 1, 1, 4, 4, 4, 4, 0, 0, 0, 0);
    const __m512i perm1 = _mm512_add_epi16(perm0, _mm512_set1_epi16(8));
    const __m256 neg_odd = _mm256_castsi256_ps(_mm256_set1_epi64x((long long)0x8000000000000000ull));
    /* d_j, -d_j for the group (the offset term is subtracted) */
    uint16_t d[4] = { 0, 0, 0, 0 };
    KCPU_UNROLL
    for (int j = 0; j < 4; j++) {
        if (j < g) __builtin_memcpy(&d[j], x + j * bsz + 208, 2);
    }
    const __m128i dd16 = _mm_setr_epi16((short)d[0], (short)d[0], (short)d[1], (short)d[1], (short)d[2],
                                        (short)d[2], (short)d[3], (short)d[3]);
    const __m256 DD = _mm256_xor_ps(_mm256_cvtph_ps(dd16), neg_odd);
    float DDt[4][8] __attribute__((aligned(32)));
    KCPU_UNROLL
    for (int t = 0; t < NT; t++)
        _mm256_store_ps(DDt[t], _mm256_mul_ps(DD, _mm256_loadu_ps(dy + t * Q45K_DY_STRIDE)));
    __asm__ volatile("" ::: "memory"); /* as in q45k_group */
    KCPU_UNROLL
    for (int j = 0; j < 4; j++) {
        if (j >= g) break;
        const uint8_t *xb = x + j * bsz;
        _mm_prefetch((const char *)xb + KQ_PF * bsz, KQ_HINT);
        _mm_prefetch((const char *)xb + KQ_PF * bsz + 64, KQ_HINT);
        _mm_prefetch((const char *)xb + KQ_PF * bsz + 128, KQ_HINT);
        _mm_prefetch((const char *)xb + KQ_PF * bsz + 192, KQ_HINT);
        __m512i L[4];
        q6k_levels(xb, L);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(xb + 192)));
        const __m512i sc512 = _mm512_castsi256_si512(sc16);
        const __m512i sca = _mm512_permutexvar_epi16(perm0, sc512);
        const __m512i scb = _mm512_permutexvar_epi16(perm1, sc512);
        KCPU_UNROLL
        for (int t = 0; t < NT; t++) {
            const uint8_t *ab = a + t * arb + j * sizeof(struct block_q8_K);
            const __m512i isum = dot_scaled(L, ab + Q8K_QS, sca, scb);
            /* the -32 offset: 32 * sum_j sc_j * bsum_j, scaled by -d */
            const __m256i off = _mm256_slli_epi32(
                _mm256_madd_epi16(sc16, _mm256_loadu_si256((const void *)(ab + Q8K_BSUMS))), 5);
            add_block(&acc[t], &accm[t], isum, off, &DDt[t][2 * j]);
        }
    }
}

KCPU_INLINE void q6k_tile(const int NT, int64_t nb, const uint8_t *x, const float *dy,
                          const uint8_t *a, size_t arb, float *out, int64_t ldo, int add)
{
    const size_t bsz = sizeof(struct block_q6_K);
    __m512 acc[4];
    __m256 accm[4];
    KCPU_UNROLL
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        accm[t] = _mm256_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4, x += 4 * bsz, a += 4 * sizeof(struct block_q8_K), dy += 8)
        q6k_group(NT, 4, x, dy, a, arb, acc, accm);
    if (b < nb) q6k_group(NT, (int)(nb - b), x, dy, a, arb, acc, accm);
    KCPU_UNROLL
    for (int t = 0; t < NT; t++) {
        const float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], _mm512_zextps256_ps512(accm[t])));
        out[t * ldo] = add ? out[t * ldo] + v : v;
    }
}

/* ---- drivers ---- */

/* Q6_K rows: like rows_q45k, without reordering the activation (Q6_K levels
 * come out in element order); only the d_act pairs are prepared, 64 blocks
 * at a time. */
static void rows_q6k(KCPU_MATMUL_ARGS)
{
    const int64_t nb = n / QK_K, kch = 64;
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
    float dy[4 * Q45K_DY_STRIDE];
    for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = (int)TT_MIN(4, n_tok - t0);
        const uint8_t *at = ab + t0 * act_row_bytes;
        float *ot = out + t0 * ldo;
        for (int64_t c0 = 0; c0 < nb; c0 += kch) {
            const int64_t cb = TT_MIN(kch, nb - c0);
            const uint8_t *ac = at + c0 * sizeof(struct block_q8_K);
            for (int t = 0; t < nt; t++) act_dy_pairs(ac + t * act_row_bytes, cb, dy + t * Q45K_DY_STRIDE);
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *wr = wb + r * w_row_bytes + c0 * sizeof(struct block_q6_K);
                const int add = c0 > 0;
                if (nt == 1) q6k_tile(1, cb, wr, dy, ac, act_row_bytes, ot + r, ldo, add);
                else if (nt == 2) q6k_tile(2, cb, wr, dy, ac, act_row_bytes, ot + r, ldo, add);
                else if (nt == 3) q6k_tile(3, cb, wr, dy, ac, act_row_bytes, ot + r, ldo, add);
                else q6k_tile(4, cb, wr, dy, ac, act_row_bytes, ot + r, ldo, add);
            }
        }
    }
}

void kcpu_avx512_rows_q4_K(KCPU_MATMUL_ARGS)
{
    rows_q45k(0, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);
}

void kcpu_avx512_rows_q5_K(KCPU_MATMUL_ARGS)
{
    rows_q45k(1, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);
}

void kcpu_avx512_rows_q6_K(KCPU_MATMUL_ARGS)
{
    rows_q6k(n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);
}
