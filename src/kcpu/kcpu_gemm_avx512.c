/*
 * kcpu_gemm_avx512.c: quantized matrix products for many tokens (prefill),
 * AVX-512 + VNNI. Compute-bound, so built around vpdpbusd throughput.
 *
 * Layout. A zmm holds 16 rows (one int32 lane per row). For a 256-element
 * chunk of K (one K-quant block, or eight Q4_0/Q8_0 blocks), the 16 rows'
 * levels are repacked on the fly into 64 "step" vectors: step s holds, in
 * lane i, the 4 levels of row i at k = 4s..4s+3 (a dword transpose of the
 * packed data, 64 shuffles per 16x16 dwords). One vpdpbusd then multiplies a
 * step vector by 4 activation bytes of one token broadcast to all lanes, so
 * every repacked weight is used for every token, and each instruction does
 * 64 useful multiply-adds. The repack costs a few hundred instructions per
 * 16 rows x 256 elements, against tens of thousands for 128 tokens.
 *
 * Scales. Integer sums run over one sub-block (the unit that shares a scale:
 * 32 elements for Q4_K/Q5_K/Q4_0/Q8_0, 16 for Q6_K), then one FMA per
 * sub-block applies the per-row float scale (sc_j * d, precomputed at repack)
 * and accumulates in float. The integer part of every sub-block is exact, as
 * in the reference; only float rounding order differs. On Zen 4 vpdpbusd,
 * vpdpwssd, vpmaddwd and FMAs share two pipes, so those per-sub-block
 * instructions are the overhead to minimise:
 * - Q4_K/Q5_K mins: -dmin * sum_j m_j * (bsum of sub-block j), four vpdpwssd
 *   per chunk and token on pairs (m_2i, m_2i+1) x (S_2i, S_2i+1), where the
 *   sub-block sums S_j of the activation are prepared once per chunk.
 * - Q6_K (levels 0..63, value = level - 32) keeps its levels unsigned, like
 *   Q4_K: sum (l - 32) a = sum l a - 32 * bsum over each 16-element
 *   sub-block, and the integer sum of sub-block j starts at -32 * bsum_j of
 *   the token (prepared with the activation chunk) instead of at zero, so the
 *   offset costs nothing per token and nothing at repack.
 * - Q4_0 (level - 8) and Q8_0 (signed) use signed weights and activations
 *   offset by +128 (sign bit flipped when the activation chunk is prepared),
 *   so sum (a + 128) w = sum a w + 128 sum w, and the surplus depends on the
 *   row alone: it is folded into a per-row constant at repack time and costs
 *   nothing per token.
 *
 * Loop order. Tokens go in slabs of up to SLAB_TOK; rows in panels of
 * PANEL_ROWS; for each 256-element chunk the slab's activation chunk is
 * prepared once (copied, flipped, sums taken) into a stack buffer, then each
 * 16-row group of the panel is repacked and run against all the slab's
 * tokens, 12 (or 4, or 1) tokens per register tile, adding into `out`
 * (zeroed first; a panel's rows x slab's tokens stay in L2). Up to FEW_TOK
 * tokens (batched decode) take another order, gemm_few below: the weights
 * are then read once per call, in the order they lie in memory.
 *
 * Weights packed once at load (KCPU_LAYOUT_TILE16, kcpu.h; K-quants) are
 * already the dword transpose the repack starts with: the same drivers then
 * load each 16-row block with 36 (Q4_K) to 53 (Q6_K) plain vector loads
 * instead of gathering 16 rows and transposing them (the transposes were
 * most of the repack's cost), and read the whole matrix as one sequential
 * stream; that serves every token count, one included. Packed Q4_K and Q6_K
 * go further: their tiles make each step vector from the packed bits where
 * the token loop uses it (tile_q4k_packed, tile_q6k_packed), so no step
 * vector is stored and loaded again. Measured on Zen 4 (one thread, 256 x
 * 4096 in L2, CPU time per row-block and token, rows -> packed): Q4_K 1
 * token 4.7 -> 3.2 ns, 8 tokens 2.10 -> 1.48; Q6_K 1 token 6.4 -> 5.4, 8
 * tokens 2.62 -> 1.75, 128 tokens 1.6 -> 1.55. From 8 tokens the packed
 * tiles also bring the next packed block into L1 while they compute
 * (PF_L1_MIN_TOK), and packed Q6_K runs its tokens in tiles of 8 (its
 * 12-token tile spills).
 *
 * Limits (bench_kcpu -s 4 measures them): Zen 4 issues one zmm vpdpbusd
 * per cycle (64 multiply-adds), and the FMAs, vpdpwssd and vpmaddwd take
 * the same slots. Per 16 rows x 256 weights x token a packed Q4_K tile
 * spends 64 vpdpbusd + 8 scale FMAs + 4 mins products + 2 FMAs = 78 slots
 * (82% of peak at best), Q6_K 64 + 16 + 1 = 81; in L1 the tiles reach 98%
 * and 94% of that, from memory about 85% and 70%.
 *
 * Stack use is bounded (about 60 KB; gemm_few about 110 KB, its activation
 * piece of FEW_PREP (chunk, token) pairs); nothing is allocated.
 */
#include "kcpu_avx512.h"

#include <string.h>

#define SLAB_TOK 128
#define FEW_TOK 16 /* up to this many tokens: gemm_few */
#define PANEL_ROWS 512
#define CHUNK 256
/* From this many tokens a packed Q4_K/Q6_K tile brings the next block into
 * L1 while it computes (compute_chunk). Measured on Zen 4, one thread,
 * 14336 x 4096 from memory (bench_kcpu -s 4), cycles per row-block and
 * token: 8 tokens Q4_K 6.2-6.3 -> 5.7-5.9, Q6_K 8.2-9.4 -> 7.0-7.8, 16
 * tokens Q6_K 7.5-7.9 -> 6.7-6.9. With fewer tokens the tile waits on
 * memory: no gain could be told from the noise of those runs (one token
 * varies by 30% between runs), so the memory-bound path is left as it was. */
#define PF_L1_MIN_TOK 8

static const uint8_t zero_block[512] __attribute__((aligned(64)));

/* ---- repacked weights of 16 rows x one chunk ---- */

enum gfam { FAM_Q45K, FAM_Q6K, FAM_Q80 }; /* FAM_Q80: Q8_0 and Q4_0 */

struct wtile {
    __m512i w[64];  /* step vectors */
    __m512 sd[16];  /* per sub-block float scale of each row */
    __m512 cw[8];   /* FAM_Q80: per block constant */
    __m512i mp[4];  /* FAM_Q45K: (m_2i, m_2i+1) int16 pairs */
    __m512 cm;      /* FAM_Q45K: -dmin */
};

/* Activation chunk of one token, prepared once per chunk. */
struct aprep {
    int8_t qs[CHUNK]; /* FAM_Q45K, FAM_Q6K: as is; FAM_Q80: sign bit flipped (a + 128) */
    float d[8];       /* d_act (FAM_Q80: of each of the 8 blocks) */
    int32_t pairs[4]; /* FAM_Q45K: sub-block sums (S_2i, S_2i+1) as int16 pairs */
    int32_t pad[4];
    int32_t off[16];  /* FAM_Q6K: -32 * bsum of each 16-element sub-block */
};

/* In-register transpose of a 16x16 dword matrix: r[i] lane j -> r[j] lane i. */
KCPU_INLINE void transpose16(__m512i r[16])
{
    __m512i t[16], u[16];
    KCPU_UNROLL
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    KCPU_UNROLL
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* u[4i + k] lane L holds rows 4i..4i+3 at dword 4L + k */
    KCPU_UNROLL
    for (int k = 0; k < 4; k++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);
        const __m512i v1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);
        const __m512i v2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
        const __m512i v3 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[8 + k] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        r[4 + k] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[12 + k] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

/* Transposed 64-byte spans at offset `off` of the 16 rows. */
KCPU_INLINE void load_t16(const uint8_t *const x[16], size_t off, __m512i r[16])
{
    KCPU_UNROLL
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512((const void *)(x[i] + off));
    transpose16(r);
}

/* The 16 bytes at x[i] + off of the 16 rows, as four vectors: H[d] lane i
 * is dword d of row i. */
KCPU_INLINE void load_heads16(const uint8_t *const x[16], size_t off, __m512i H[4])
{
    __m512i Z[4];
    KCPU_UNROLL
    for (int k = 0; k < 4; k++) {
        const __m256i lo = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const void *)(x[k] + off))),
            _mm_loadu_si128((const void *)(x[4 + k] + off)), 1);
        const __m256i hi = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const void *)(x[8 + k] + off))),
            _mm_loadu_si128((const void *)(x[12 + k] + off)), 1);
        Z[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    /* Z[k] lane L is row 4L + k; interleaving puts row 4L + k at lane 4L + k */
    const __m512i a = _mm512_unpacklo_epi32(Z[0], Z[1]), b = _mm512_unpacklo_epi32(Z[2], Z[3]);
    const __m512i c = _mm512_unpackhi_epi32(Z[0], Z[1]), d = _mm512_unpackhi_epi32(Z[2], Z[3]);
    H[0] = _mm512_unpacklo_epi64(a, b);
    H[1] = _mm512_unpackhi_epi64(a, b);
    H[2] = _mm512_unpacklo_epi64(c, d);
    H[3] = _mm512_unpackhi_epi64(c, d);
}

KCPU_INLINE __m512 f16_lo(__m512i v)
{
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
}

KCPU_INLINE __m512 byte_f32(__m512i v, int j)
{
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(0xFF)));
}

/* Sum over each lane's 4 signed bytes (int32). */
KCPU_INLINE __m512i sum4_s8(__m512i w)
{
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), w);
}

/* ---- repack, per family ---- */

/* Scales of 16 Q4_K/Q5_K blocks: H[d] lane i is dword d (bytes 4d..4d+3:
 * d and dmin, then the 12 bytes of 6-bit scales and mins) of row i's block. */
KCPU_INLINE void q45k_scales(const __m512i H[4], struct wtile *wt)
{
    const __m512i m6 = _mm512_set1_epi8(0x3F), m4 = _mm512_set1_epi8(0x0F);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    const __m512 d = f16_lo(H[0]), dmin = f16_lo(_mm512_srli_epi32(H[0], 16));
    const __m512i sc03 = _mm512_and_si512(H[1], m6), m03 = _mm512_and_si512(H[2], m6);
    const __m512i sc47 = _mm512_or_si512(_mm512_and_si512(H[3], m4),
                                         _mm512_and_si512(_mm512_srli_epi32(H[1], 2), m30));
    const __m512i m47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(H[3], 4), m4),
                                        _mm512_and_si512(_mm512_srli_epi32(H[2], 2), m30));
    KCPU_UNROLL
    for (int j = 0; j < 4; j++) {
        wt->sd[j] = _mm512_mul_ps(byte_f32(sc03, j), d);
        wt->sd[4 + j] = _mm512_mul_ps(byte_f32(sc47, j), d);
    }
    const __m512i lo_pair = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1));
    const __m512i hi_pair = _mm512_add_epi8(lo_pair, _mm512_broadcast_i32x4(_mm_setr_epi8(
                                                         2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0)));
    wt->mp[0] = _mm512_shuffle_epi8(m03, lo_pair);
    wt->mp[1] = _mm512_shuffle_epi8(m03, hi_pair);
    wt->mp[2] = _mm512_shuffle_epi8(m47, lo_pair);
    wt->mp[3] = _mm512_shuffle_epi8(m47, hi_pair);
    wt->cm = _mm512_sub_ps(_mm512_setzero_ps(), dmin);
}

/* Levels of half `half` (qs dwords 16 * half .. 16 * half + 15) of 16
 * Q4_K/Q5_K blocks: T[c] lane i is qs dword 16 * half + c of row i; QH[c]
 * (Q5_K) lane i is qh dword c of row i. */
KCPU_INLINE void q45k_levels16(const int HAS_QH, int half, const __m512i T[16], const __m512i QH[8],
                               struct wtile *wt)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    KCPU_UNROLL
    for (int c = 0; c < 16; c++) {
        const int g = 2 * half + c / 8, cc = c % 8; /* qs dword 8g + cc */
        __m512i lo = _mm512_and_si512(T[c], m4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(T[c], 4), m4);
        if (HAS_QH) {
            const __m512i b1 = _mm512_set1_epi8(1);
            const __m512i bl = _mm512_and_si512(_mm512_srli_epi16(QH[cc], 2 * g), b1);
            const __m512i bh = _mm512_and_si512(_mm512_srli_epi16(QH[cc], 2 * g + 1), b1);
            lo = _mm512_or_si512(lo, _mm512_slli_epi16(bl, 4));
            hi = _mm512_or_si512(hi, _mm512_slli_epi16(bh, 4));
        }
        wt->w[16 * g + cc] = lo;
        wt->w[16 * g + 8 + cc] = hi;
    }
}

/* Q4_K (HAS_QH 0) / Q5_K (1): x[i] -> block of row i. */
KCPU_INLINE void repack_q45k(const int HAS_QH, const uint8_t *const x[16], struct wtile *wt)
{
    __m512i H[4];
    load_heads16(x, 0, H);
    q45k_scales(H, wt);
    const size_t qs = HAS_QH ? 48 : 16;
    __m512i QH[16];
    if (HAS_QH) {
        KCPU_UNROLL
        for (int i = 0; i < 16; i++)
            QH[i] = _mm512_castsi256_si512(_mm256_loadu_si256((const void *)(x[i] + 16)));
        transpose16(QH); /* QH[c] lane i: qh bytes 4c..4c+3 of row i (c < 8) */
    }
    KCPU_UNROLL
    for (int half = 0; half < 2; half++) {
        __m512i T[16];
        load_t16(x, qs + 64 * half, T);
        q45k_levels16(HAS_QH, half, T, QH, wt);
    }
}

/* Vector v of a KCPU_LAYOUT_TILE16 block: lane i is dword v of row i. */
KCPU_INLINE __m512i tile_dw(const uint8_t *t, int v)
{
    return _mm512_loadu_si512((const void *)(t + 64 * v));
}

/* Q4_K / Q5_K from a KCPU_LAYOUT_TILE16 block t: the same vectors as
 * repack_q45k, loaded instead of transposed (dwords 0..3 head, Q5_K 4..11
 * qh, then the qs). */
KCPU_INLINE void unpack_q45k(const int HAS_QH, const uint8_t *t, struct wtile *wt)
{
    __m512i H[4], QH[8], T[16];
    KCPU_UNROLL
    for (int d = 0; d < 4; d++) H[d] = tile_dw(t, d);
    q45k_scales(H, wt);
    const int qs = HAS_QH ? 12 : 4;
    if (HAS_QH) {
        KCPU_UNROLL
        for (int c = 0; c < 8; c++) QH[c] = tile_dw(t, 4 + c);
    }
    KCPU_UNROLL
    for (int half = 0; half < 2; half++) {
        KCPU_UNROLL
        for (int c = 0; c < 16; c++) T[c] = tile_dw(t, qs + 16 * half + c);
        q45k_levels16(HAS_QH, half, T, QH, wt);
    }
}

/* Q6_K scales: H[d] lane i is dword d of row i's int8 scales; d the rows'
 * d. */
KCPU_INLINE void q6k_scales(const __m512i H[4], __m512 d, struct wtile *wt)
{
    KCPU_UNROLL
    for (int j = 0; j < 16; j++) {
        const __m512i sc = _mm512_srai_epi32(_mm512_slli_epi32(H[j / 4], 24 - 8 * (j % 4)), 24);
        wt->sd[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(sc), d);
    }
}

/* Q6_K levels 0..63 (the -32 comes with the activation): TL[c] lane i is ql
 * dword c of row i, TH[c] qh dword c. */
KCPU_INLINE void q6k_levels16(const __m512i TL[32], const __m512i TH[16], struct wtile *wt)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    KCPU_UNROLL
    for (int h = 0; h < 2; h++) {
        KCPU_UNROLL
        for (int q = 0; q < 4; q++) {
            KCPU_UNROLL
            for (int c = 0; c < 8; c++) {
                const __m512i l = TL[16 * h + 8 * (q & 1) + c];
                const __m512i nib = _mm512_and_si512(q >> 1 ? _mm512_srli_epi16(l, 4) : l, m4);
                /* bits 2q, 2q+1 of qh to bits 4, 5 */
                const __m512i th = TH[8 * h + c];
                const __m512i top = q == 0   ? _mm512_slli_epi16(th, 4)
                                    : q == 1 ? _mm512_slli_epi16(th, 2)
                                    : q == 2 ? th
                                             : _mm512_srli_epi16(th, 2);
                wt->w[32 * h + 8 * q + c] = _mm512_or_si512(nib, _mm512_and_si512(top, m30));
            }
        }
    }
}

/* Q6_K from the 16 rows' blocks x[i]. */
KCPU_INLINE void repack_q6k(const uint8_t *const x[16], struct wtile *wt, const uint8_t *x0,
                            size_t wrb, __mmask16 valid)
{
    __m512i H[4];
    load_heads16(x, 192, H); /* scales, int8 */
    const __m512i dv = _mm512_mask_i32gather_epi32(
        _mm512_setzero_si512(), valid,
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)wrb)),
        (const int *)(x0 + 206), 1); /* scales[14..15], d: d is the high half */
    q6k_scales(H, f16_lo(_mm512_srli_epi32(dv, 16)), wt);
    __m512i TL[32], TH[16];
    load_t16(x, 0, TL);
    load_t16(x, 64, TL + 16);
    load_t16(x, 128, TH);
    q6k_levels16(TL, TH, wt);
}

/* Q8_0 (IS_Q4 0) / Q4_0 (1): 8 blocks per chunk, x[i] -> first block of the
 * chunk of row i; blocks at or past nblk read as zero. Signed levels; per
 * block: sd = d_w, cw = -128 * d_w * sum(w). */
KCPU_INLINE void repack_q80(const int IS_Q4, const uint8_t *const x[16], int nblk,
                            struct wtile *wt, const uint8_t *x0, size_t wrb, __mmask16 valid)
{
    const size_t bsz = IS_Q4 ? sizeof(struct block_q4_0) : sizeof(struct block_q8_0);
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)wrb));
    for (int j = 0; j < 8; j++) {
        const __m512i dv = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(),
                                                       j < nblk ? valid : 0, rows,
                                                       (const int *)(x0 + j * bsz), 1);
        wt->sd[j] = f16_lo(dv);
    }
    if (IS_Q4) {
        const __m512i m4 = _mm512_set1_epi8(0x0F), b8 = _mm512_set1_epi8(8);
        for (int j0 = 0; j0 < 8; j0 += 4) {
            __m512i T[16];
            KCPU_UNROLL
            for (int i = 0; i < 16; i++) {
                __m128i q[4];
                KCPU_UNROLL
                for (int b = 0; b < 4; b++)
                    q[b] = j0 + b < nblk ? _mm_loadu_si128((const void *)(x[i] + (j0 + b) * bsz + 2))
                                         : _mm_setzero_si128();
                const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(q[0]), q[1], 1);
                const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(q[2]), q[3], 1);
                T[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            }
            transpose16(T); /* T[4b + c]: dword c of block j0 + b */
            KCPU_UNROLL
            for (int b = 0; b < 4; b++) {
                KCPU_UNROLL
                for (int c = 0; c < 4; c++) {
                    const __m512i v = T[4 * b + c];
                    const __m512i lo = _mm512_sub_epi8(_mm512_and_si512(v, m4), b8);
                    const __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), m4), b8);
                    wt->w[8 * (j0 + b) + c] = lo;
                    wt->w[8 * (j0 + b) + 4 + c] = hi;
                }
            }
        }
    } else {
        for (int j0 = 0; j0 < 8; j0 += 2) {
            __m512i T[16];
            KCPU_UNROLL
            for (int i = 0; i < 16; i++) {
                const __m256i a = j0 < nblk ? _mm256_loadu_si256((const void *)(x[i] + j0 * bsz + 2))
                                            : _mm256_setzero_si256();
                const __m256i b = j0 + 1 < nblk
                                      ? _mm256_loadu_si256((const void *)(x[i] + (j0 + 1) * bsz + 2))
                                      : _mm256_setzero_si256();
                T[i] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
            }
            transpose16(T); /* T[c] (c < 8): dword c of block j0; T[8 + c]: of j0 + 1 */
            KCPU_UNROLL
            for (int c = 0; c < 16; c++) wt->w[8 * j0 + c] = T[c];
        }
    }
    for (int j = 0; j < 8; j++) {
        __m512i s = _mm512_setzero_si512();
        KCPU_UNROLL
        for (int c = 0; c < 8; c++) s = _mm512_add_epi32(s, sum4_s8(wt->w[8 * j + c]));
        wt->cw[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(wt->sd[j], _mm512_set1_ps(-128.0f)));
    }
}

/* ---- activation preparation, per chunk, for the slab's tokens ---- */

static void prep_q8k(const uint8_t *a, size_t arb, int64_t c, int64_t nt, struct aprep *p)
{
    for (int64_t t = 0; t < nt; t++) {
        const uint8_t *blk = a + t * arb + c * sizeof(struct block_q8_K);
        memcpy(p[t].qs, blk + 4, CHUNK);
        memcpy(&p[t].d[0], blk, 4);
        /* S_j = bsums[2j] + bsums[2j + 1], as int16 pairs (S_2i, S_2i+1) */
        const __m256i bs = _mm256_loadu_si256((const void *)(blk + 260));
        const __m256i s = _mm256_madd_epi16(bs, _mm256_set1_epi16(1));
        _mm_storeu_si128((__m128i *)p[t].pairs, _mm256_cvtepi32_epi16(s));
        _mm512_storeu_si512((void *)p[t].off, _mm512_mullo_epi32(_mm512_cvtepi16_epi32(bs),
                                                                 _mm512_set1_epi32(-32)));
    }
}

static void prep_q80(const uint8_t *a, size_t arb, int64_t c, int nblk, int64_t nt, struct aprep *p)
{
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t t = 0; t < nt; t++) {
        const uint8_t *blk = a + t * arb + c * 8 * sizeof(struct block_q8_0);
        for (int j = 0; j < 8; j++) {
            const uint8_t *b = blk + j * sizeof(struct block_q8_0);
            const __m256i q = j < nblk ? _mm256_loadu_si256((const void *)(b + 2)) : _mm256_setzero_si256();
            _mm256_storeu_si256((__m256i *)(p[t].qs + 32 * j), _mm256_xor_si256(q, flip));
            p[t].d[j] = j < nblk ? kcpu_f16(b) : 0.0f;
        }
    }
}

/* ---- compute tiles: 16 rows (mask m) x T tokens, adding into out ---- */

/* FAM_Q45K and FAM_Q6K: NSUB sub-blocks of 256 / NSUB elements. */
KCPU_INLINE void tile_k(const int FAM, const int T, const struct wtile *wt, const struct aprep *p,
                        float *out, int64_t ldo, __mmask16 m)
{
    const int NSUB = FAM == FAM_Q6K ? 16 : 8, S = 64 / NSUB;
    __m512 blk[12];
    KCPU_UNROLL
    for (int t = 0; t < T; t++) blk[t] = _mm512_setzero_ps();
    for (int j = 0; j < NSUB; j++) {
        __m512i sub[12];
        KCPU_UNROLL
        for (int t = 0; t < T; t++)
            sub[t] = FAM == FAM_Q6K ? _mm512_set1_epi32(p[t].off[j]) : _mm512_setzero_si512();
        KCPU_UNROLL
        for (int s = 0; s < S; s++) {
            const __m512i w = wt->w[j * S + s];
            KCPU_UNROLL
            for (int t = 0; t < T; t++) {
                int32_t av;
                __builtin_memcpy(&av, p[t].qs + 4 * (j * S + s), 4);
                sub[t] = _mm512_dpbusd_epi32(sub[t], w, _mm512_set1_epi32(av));
            }
        }
        KCPU_UNROLL
        for (int t = 0; t < T; t++) blk[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sub[t]), wt->sd[j], blk[t]);
    }
    if (FAM == FAM_Q45K) {
        KCPU_UNROLL
        for (int t = 0; t < T; t++) {
            __m512i c = _mm512_madd_epi16(wt->mp[0], _mm512_set1_epi32(p[t].pairs[0]));
            c = _mm512_dpwssd_epi32(c, wt->mp[1], _mm512_set1_epi32(p[t].pairs[1]));
            c = _mm512_dpwssd_epi32(c, wt->mp[2], _mm512_set1_epi32(p[t].pairs[2]));
            c = _mm512_dpwssd_epi32(c, wt->mp[3], _mm512_set1_epi32(p[t].pairs[3]));
            blk[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), wt->cm, blk[t]);
        }
    }
    KCPU_UNROLL
    for (int t = 0; t < T; t++) {
        float *o = out + t * ldo;
        const __m512 prev = _mm512_maskz_loadu_ps(m, o);
        _mm512_mask_storeu_ps(o, m, _mm512_fmadd_ps(blk[t], _mm512_set1_ps(p[t].d[0]), prev));
    }
}

/* FAM_Q80: 8 blocks of 32, each with its own d_w (rows) and d_a (tokens). */
KCPU_INLINE void tile_q80(const int T, const struct wtile *wt, const struct aprep *p, float *out,
                          int64_t ldo, __mmask16 m)
{
    __m512 acc[12];
    KCPU_UNROLL
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int j = 0; j < 8; j++) {
        __m512i sub[12];
        KCPU_UNROLL
        for (int t = 0; t < T; t++) sub[t] = _mm512_setzero_si512();
        KCPU_UNROLL
        for (int s = 0; s < 8; s++) {
            const __m512i w = wt->w[8 * j + s];
            KCPU_UNROLL
            for (int t = 0; t < T; t++) {
                int32_t av;
                __builtin_memcpy(&av, p[t].qs + 4 * (8 * j + s), 4);
                sub[t] = _mm512_dpbusd_epi32(sub[t], _mm512_set1_epi32(av), w);
            }
        }
        KCPU_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sub[t]), wt->sd[j], wt->cw[j]);
            acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(p[t].d[j]), acc[t]);
        }
    }
    KCPU_UNROLL
    for (int t = 0; t < T; t++) {
        float *o = out + t * ldo;
        _mm512_mask_storeu_ps(o, m, _mm512_add_ps(acc[t], _mm512_maskz_loadu_ps(m, o)));
    }
}

/* All of a slab's tokens against one repacked 16-row tile: tiles of BIG
 * (12, or 8) tokens, then 8, 4, 2, 1 for the rest (small tiles leave too
 * few independent accumulators to hide vpdpbusd's latency, so they are kept
 * for the remainder). TOKEN_TILES(RUN, BIG) is that sequence for any tile
 * kind. */
#define TOKEN_TILES(RUN, BIG)                                                                      \
    do {                                                                                           \
        int64_t t = 0;                                                                             \
        if ((BIG) == 12)                                                                           \
            while (t + 12 <= nt) RUN(12);                                                          \
        while (t + 8 <= nt) RUN(8);                                                                \
        if (t + 4 <= nt) RUN(4);                                                                   \
        if (t + 2 <= nt) RUN(2);                                                                   \
        if (t < nt) RUN(1);                                                                        \
    } while (0)

#define RUN_TILE(T)                                                                                \
    do {                                                                                           \
        if (FAM == FAM_Q80) tile_q80(T, wt, p + t, out + t * ldo, ldo, m);                         \
        else tile_k(FAM, T, wt, p + t, out + t * ldo, ldo, m);                                     \
        t += T;                                                                                    \
    } while (0)

KCPU_INLINE void run_tokens(const int FAM, const struct wtile *wt, const struct aprep *p,
                            int64_t nt, float *out, int64_t ldo, __mmask16 m)
{
    TOKEN_TILES(RUN_TILE, 12);
}

/* Packed Q4_K straight from its KCPU_LAYOUT_TILE16 block t (wt holds only
 * the scales): each step vector is made from the packed nibbles where it is
 * used (a load from L1 and one or two logic ops) instead of going through
 * wt->w, whose 64 stores and reloads per tile cost about as much as the
 * unpacking itself. Sub-block 2g takes the low nibbles of qs dwords
 * 8g .. 8g + 7, sub-block 2g + 1 their high nibbles (see q45k_levels16). */
KCPU_INLINE void tile_q4k_packed(const int T, const uint8_t *t, const struct wtile *wt,
                                 const struct aprep *p, float *out, int64_t ldo, __mmask16 m,
                                 const char *next)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 blk[12];
    KCPU_UNROLL
    for (int k = 0; k < T; k++) blk[k] = _mm512_setzero_ps();
    for (int g = 0; g < 4; g++) {
        KCPU_UNROLL
        for (int hi = 0; hi < 2; hi++) {
            const int j = 2 * g + hi;
            __m512i sub[12];
            KCPU_UNROLL
            for (int k = 0; k < T; k++) sub[k] = _mm512_setzero_si512();
            KCPU_UNROLL
            for (int s = 0; s < 8; s++) {
                const __m512i v = tile_dw(t, 4 + 8 * g + s);
                if (T >= PF_L1_MIN_TOK && !hi) {
                    _mm_prefetch(next + 64 * (4 + 8 * g + s), _MM_HINT_T0);
                    if (g == 0 && s < 4) _mm_prefetch(next + 64 * s, _MM_HINT_T0); /* head */
                }
                const __m512i w = _mm512_and_si512(hi ? _mm512_srli_epi16(v, 4) : v, m4);
                KCPU_UNROLL
                for (int k = 0; k < T; k++) {
                    int32_t av;
                    __builtin_memcpy(&av, p[k].qs + 4 * (8 * j + s), 4);
                    sub[k] = _mm512_dpbusd_epi32(sub[k], w, _mm512_set1_epi32(av));
                }
            }
            KCPU_UNROLL
            for (int k = 0; k < T; k++) blk[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sub[k]), wt->sd[j], blk[k]);
        }
    }
    KCPU_UNROLL
    for (int k = 0; k < T; k++) {
        __m512i c = _mm512_madd_epi16(wt->mp[0], _mm512_set1_epi32(p[k].pairs[0]));
        c = _mm512_dpwssd_epi32(c, wt->mp[1], _mm512_set1_epi32(p[k].pairs[1]));
        c = _mm512_dpwssd_epi32(c, wt->mp[2], _mm512_set1_epi32(p[k].pairs[2]));
        c = _mm512_dpwssd_epi32(c, wt->mp[3], _mm512_set1_epi32(p[k].pairs[3]));
        blk[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), wt->cm, blk[k]);
        float *o = out + k * ldo;
        const __m512 prev = _mm512_maskz_loadu_ps(m, o);
        _mm512_mask_storeu_ps(o, m, _mm512_fmadd_ps(blk[k], _mm512_set1_ps(p[k].d[0]), prev));
    }
}

/* Packed Q6_K likewise (wt holds only the scales): step 32h + 8q + c
 * (c < 8) of a tile is built from ql dword 16h + 8(q & 1) + c (low nibbles
 * for q < 2, high for q >= 2) and bits 2q, 2q + 1 of qh dword 32 + 8h + c,
 * as in q6k_levels16; sub-block j (16 elements, 4 steps) is steps 4j ..
 * 4j + 3, each sum starting at the token's -32 * bsum. */
KCPU_INLINE void tile_q6k_packed(const int T, const uint8_t *t, const struct wtile *wt,
                                 const struct aprep *p, float *out, int64_t ldo, __mmask16 m,
                                 const char *next)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 blk[12];
    KCPU_UNROLL
    for (int k = 0; k < T; k++) blk[k] = _mm512_setzero_ps();
    for (int h = 0; h < 2; h++) {
        KCPU_UNROLL
        for (int q = 0; q < 4; q++) {
            KCPU_UNROLL
            for (int c0 = 0; c0 < 8; c0 += 4) {
                const int j = 8 * h + 2 * q + c0 / 4;
                __m512i sub[12];
                KCPU_UNROLL
                for (int k = 0; k < T; k++) sub[k] = _mm512_set1_epi32(p[k].off[j]);
                KCPU_UNROLL
                for (int c = c0; c < c0 + 4; c++) {
                    const __m512i l = tile_dw(t, 16 * h + 8 * (q & 1) + c);
                    const __m512i th = tile_dw(t, 32 + 8 * h + c);
                    const __m512i nib = _mm512_and_si512(q >> 1 ? _mm512_srli_epi16(l, 4) : l, m4);
                    const __m512i top = q == 0   ? _mm512_slli_epi16(th, 4)
                                        : q == 1 ? _mm512_slli_epi16(th, 2)
                                        : q == 2 ? th
                                                 : _mm512_srli_epi16(th, 2);
                    const __m512i w = _mm512_or_si512(nib, _mm512_and_si512(top, m30));
                    const int st = 32 * h + 8 * q + c;
                    if (T >= PF_L1_MIN_TOK && st < 53) /* 53 lines: 3360 bytes */
                        _mm_prefetch(next + 64 * st, _MM_HINT_T0);
                    KCPU_UNROLL
                    for (int k = 0; k < T; k++) {
                        int32_t av;
                        __builtin_memcpy(&av, p[k].qs + 4 * st, 4);
                        sub[k] = _mm512_dpbusd_epi32(sub[k], w, _mm512_set1_epi32(av));
                    }
                }
                KCPU_UNROLL
                for (int k = 0; k < T; k++)
                    blk[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sub[k]), wt->sd[j], blk[k]);
            }
        }
    }
    KCPU_UNROLL
    for (int k = 0; k < T; k++) {
        float *o = out + k * ldo;
        const __m512 prev = _mm512_maskz_loadu_ps(m, o);
        _mm512_mask_storeu_ps(o, m, _mm512_fmadd_ps(blk[k], _mm512_set1_ps(p[k].d[0]), prev));
    }
}

/* ---- the drivers ---- */

enum gtype { G_Q4_K, G_Q5_K, G_Q6_K, G_Q8_0, G_Q4_0 };

/* The shape of a weight type in this file's terms. */
struct gshape {
    int fam;              /* enum gfam */
    size_t bsz;           /* bytes per block */
    int blocks_per_chunk; /* blocks per 256-element chunk */
    int64_t nchunks;      /* chunks per row */
};

KCPU_INLINE struct gshape gemm_shape(const int GT, int64_t n)
{
    struct gshape g;
    g.fam = GT == G_Q6_K ? FAM_Q6K : (GT == G_Q8_0 || GT == G_Q4_0) ? FAM_Q80 : FAM_Q45K;
    g.bsz = GT == G_Q4_K   ? sizeof(struct block_q4_K)
            : GT == G_Q5_K ? sizeof(struct block_q5_K)
            : GT == G_Q6_K ? sizeof(struct block_q6_K)
            : GT == G_Q8_0 ? sizeof(struct block_q8_0)
                           : sizeof(struct block_q4_0);
    g.blocks_per_chunk = g.fam == FAM_Q80 ? 8 : 1;
    const int64_t nblocks = g.fam == FAM_Q80 ? n / QK8_0 : n / QK_K;
    g.nchunks = (nblocks + g.blocks_per_chunk - 1) / g.blocks_per_chunk;
    return g;
}

/* Repack chunk c (blocks nblk of it) of the 16 rows at x (rows past the
 * mask m read zero_block), as the type needs. */
KCPU_INLINE void repack_chunk(const int GT, const uint8_t *const x[16], int nblk, struct wtile *wt,
                              const uint8_t *x0, size_t w_row_bytes, __mmask16 m)
{
    if (GT == G_Q4_K) repack_q45k(0, x, wt);
    else if (GT == G_Q5_K) repack_q45k(1, x, wt);
    else if (GT == G_Q6_K) repack_q6k(x, wt, x0, w_row_bytes, m);
    else repack_q80(GT == G_Q4_0, x, nblk, wt, x0, w_row_bytes, m);
}

KCPU_INLINE void prep_chunk(const int FAM, const uint8_t *a, size_t arb, int64_t c, int nblk,
                            int64_t nt, struct aprep *p)
{
    if (FAM == FAM_Q80) prep_q80(a, arb, c, nblk, nt, p);
    else prep_q8k(a, arb, c, nt, p);
}

/* The 16-row tile of rows rg .. rg + nr - 1 and chunk c (nblk blocks of it)
 * into wt: loaded from a KCPU_LAYOUT_TILE16 weight (PACKED; rg a multiple
 * of 16; only Q5_K comes this way), or repacked from rows (rows past nr
 * read zero). */
KCPU_INLINE void load_chunk(const int GT, const int PACKED, const struct gshape *g, const uint8_t *wb,
                            size_t w_row_bytes, int64_t rg, int nr, int64_t c, int nblk,
                            struct wtile *wt)
{
    const size_t coff = (size_t)c * g->blocks_per_chunk * g->bsz;
    if (PACKED) { /* Q5_K: Q4_K and Q6_K compute from the packed block (compute_chunk) */
        unpack_q45k(GT == G_Q5_K, wb + (size_t)rg * w_row_bytes + 16 * coff, wt);
        return;
    }
    const uint8_t *x[16];
    KCPU_UNROLL
    for (int i = 0; i < 16; i++) x[i] = i < nr ? wb + (rg + i) * w_row_bytes + coff : zero_block;
    repack_chunk(GT, x, nblk, wt, wb + rg * w_row_bytes + coff, w_row_bytes, (__mmask16)((1u << nr) - 1));
}

/* One token tile of packed Q4_K or Q6_K, straight from the block `tile`;
 * the first brings `next` into L1, the others touch `tile` again (in L1). */
#define RUN_TILE_PACKED(T)                                                                         \
    do {                                                                                           \
        const char *pf = t == 0 ? next : (const char *)tile;                                       \
        if (GT == G_Q6_K) tile_q6k_packed(T, tile, wt, p + t, out + t * ldo, ldo, m, pf);          \
        else tile_q4k_packed(T, tile, wt, p + t, out + t * ldo, ldo, m, pf);                       \
        t += T;                                                                                    \
    } while (0)

/* The KCPU_LAYOUT_TILE16 block of rows rg .. rg + 15 and chunk c. */
KCPU_INLINE const char *packed_tile(const struct gshape *g, const uint8_t *wb, size_t w_row_bytes,
                                    int64_t rg, int64_t c)
{
    return (const char *)(wb + (size_t)rg * w_row_bytes + (size_t)c * 16 * g->bsz);
}

/* All tokens of p (nt) against the 16-row tile of rows rg.. and chunk c,
 * adding into out: packed Q4_K and Q6_K compute from the packed block
 * itself (wt gets only their scales), the rest through wt (load_chunk).
 * `next` (PACKED) is the packed block the caller computes next: packed Q4_K
 * and Q6_K tiles of PF_L1_MIN_TOK tokens or more bring it into L1 while they
 * compute, one line beside each step vector they load (the callers'
 * prefetches bring it only into L2). After the last block of a
 * range `next` points past it: a prefetch never faults, and the tests run
 * the kernels on packed weights that end at a guard page. */
KCPU_INLINE void compute_chunk(const int GT, const int PACKED, const struct gshape *g,
                               const uint8_t *wb, size_t w_row_bytes, int64_t rg, int nr, int64_t c,
                               int nblk, struct wtile *wt, const struct aprep *p, int64_t nt,
                               float *out, int64_t ldo, const char *next)
{
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    if (PACKED && (GT == G_Q4_K || GT == G_Q6_K)) {
        const uint8_t *tile = (const uint8_t *)packed_tile(g, wb, w_row_bytes, rg, c);
        const int h0 = GT == G_Q6_K ? 48 : 0; /* Q6_K: the scales after ql and qh */
        __m512i H[4];
        KCPU_UNROLL
        for (int d = 0; d < 4; d++) H[d] = tile_dw(tile, h0 + d);
        if (GT == G_Q6_K)
            q6k_scales(H, _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(tile + 64 * 52))), wt);
        else
            q45k_scales(H, wt);
        /* Packed Q6_K's 12-token tile spills (24 accumulators beside its
         * unpacking): on Zen 4, in L1, 5.90 cycles per row-block and token
         * against 5.71 in tiles of 8; Q4_K's 12 and 8 are equal (5.06). */
        TOKEN_TILES(RUN_TILE_PACKED, GT == G_Q6_K ? 8 : 12);
        return;
    }
    load_chunk(GT, PACKED, g, wb, w_row_bytes, rg, nr, c, nblk, wt);
    run_tokens(g->fam, wt, p, nt, out, ldo, m);
}

/* Into L2: the tile of rows rg .. min(rg + 16, r1) - 1 and chunk c (one
 * contiguous span when PACKED, 16 row pieces otherwise). */
KCPU_INLINE void prefetch_chunk(const int PACKED, const struct gshape *g, const uint8_t *wb,
                                size_t w_row_bytes, int64_t rg, int64_t r1, int64_t c)
{
    const size_t cb = (size_t)g->blocks_per_chunk * g->bsz, coff = (size_t)c * cb;
    if (PACKED) {
        const char *t = (const char *)(wb + (size_t)rg * w_row_bytes + 16 * coff);
        for (size_t o = 0; o < 16 * cb; o += 64) _mm_prefetch(t + o, _MM_HINT_T1);
        return;
    }
    const int npr = (int)TT_MIN(16, r1 - rg);
    for (int i = 0; i < npr; i++) {
        const char *x = (const char *)(wb + (rg + i) * w_row_bytes + coff);
        for (size_t o = 0; o < cb; o += 64) _mm_prefetch(x + o, _MM_HINT_T1);
    }
}

KCPU_INLINE void gemm(const int GT, const int PACKED, KCPU_MATMUL_ARGS)
{
    const struct gshape g = gemm_shape(GT, n);
    const int FAM = g.fam;
    const int blocks_per_chunk = g.blocks_per_chunk;
    const int64_t nblocks = FAM == FAM_Q80 ? n / QK8_0 : n / QK_K, nchunks = g.nchunks;
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
    struct aprep prep[SLAB_TOK];
    struct wtile wt;

    for (int64_t t0 = 0; t0 < n_tok; t0 += SLAB_TOK) {
        const int64_t nt = TT_MIN(SLAB_TOK, n_tok - t0);
        for (int64_t p0 = r0; p0 < r1; p0 += PANEL_ROWS) {
            const int64_t p1 = TT_MIN(p0 + PANEL_ROWS, r1);
            for (int64_t t = 0; t < nt; t++) memset(out + (t0 + t) * ldo + p0, 0, (size_t)(p1 - p0) * sizeof(float));
            for (int64_t c = 0; c < nchunks; c++) {
                const int nblk = (int)TT_MIN(blocks_per_chunk, nblocks - c * blocks_per_chunk);
                prep_chunk(FAM, ab + t0 * act_row_bytes, act_row_bytes, c, nblk, nt, prep);
                for (int64_t rg = p0; rg < p1; rg += 16) {
                    const int nr = (int)TT_MIN(16, p1 - rg);
                    /* the next group's rows of this chunk, while this one computes,
                     * into L2 (T1 measured 6-9% faster than T0 at 64 tokens) */
                    if (rg + 16 < p1) prefetch_chunk(PACKED, &g, wb, w_row_bytes, rg + 16, p1, c);
                    const bool last = rg + 16 >= p1;
                    const int64_t nrg = last ? p0 : rg + 16, nc1 = last ? c + 1 : c;
                    const char *next = PACKED ? packed_tile(&g, wb, w_row_bytes, nrg, nc1) : NULL;
                    compute_chunk(GT, PACKED, &g, wb, w_row_bytes, rg, nr, c, nblk, &wt, prep, nt,
                                  out + t0 * ldo + rg, ldo, next);
                }
            }
        }
    }
}

/* Few tokens (batched decode, n_tok <= FEW_TOK): the weights stream from
 * memory once per call, so they are read in the order they lie: each
 * 16-row group runs through a piece of FEW_PREP / n_tok chunks of its rows
 * (sixteen sequential streams, or one for KCPU_LAYOUT_TILE16, prefetched
 * FEW_PF chunks ahead) before the next group starts; the activation of the
 * whole piece is prepared once, before the rows. The many-token driver
 * above goes chunk by chunk over a panel of rows instead (the weights of a
 * panel stay in L2 for the slab's tokens), which leaves small batches
 * waiting on memory. */
#define FEW_PREP 256 /* prepared (chunk, token) pairs of a piece: ~100 KB of stack */
/* Prefetch distance (chunks), measured on Zen 4 (one thread, 8 tokens,
 * 14336 x 4096, CPU time): into L2 (T1) beat T0 and NTA, Q4_K 8.3 vs 10.4
 * cycles per row-block and token, Q6_K 9.9 vs 12.9; distances 2 to 12
 * within 3% of each other. */
#ifndef FEW_PF
#define FEW_PF 4
#endif

KCPU_INLINE void gemm_few(const int GT, const int PACKED, KCPU_MATMUL_ARGS)
{
    const struct gshape g = gemm_shape(GT, n);
    const int64_t nblocks = g.fam == FAM_Q80 ? n / QK8_0 : n / QK_K;
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
    struct aprep prep[FEW_PREP];
    struct wtile wt;
    TT_ASSERT(n_tok >= 1 && n_tok <= FEW_TOK);
    const int64_t piece = FEW_PREP / n_tok;
    for (int64_t t = 0; t < n_tok; t++) memset(out + t * ldo + r0, 0, (size_t)(r1 - r0) * sizeof(float));
    for (int64_t c0 = 0; c0 < g.nchunks; c0 += piece) {
        const int nc = (int)TT_MIN(piece, g.nchunks - c0);
        for (int c = 0; c < nc; c++) {
            const int nblk = (int)TT_MIN(g.blocks_per_chunk, nblocks - (c0 + c) * g.blocks_per_chunk);
            prep_chunk(g.fam, ab, act_row_bytes, c0 + c, nblk, n_tok, prep + c * n_tok);
        }
        for (int64_t rg = r0; rg < r1; rg += 16) {
            const int nr = (int)TT_MIN(16, r1 - rg);
            for (int c = 0; c < nc; c++) {
                const int64_t cc = c0 + c;
                const int nblk = (int)TT_MIN(g.blocks_per_chunk, nblocks - cc * g.blocks_per_chunk);
                /* FEW_PF chunks ahead in this group's rows, or the start of
                 * the next group's once this piece of the rows runs out */
                const int64_t pr = c + FEW_PF < nc ? rg : rg + 16;
                const int64_t pc = c + FEW_PF < nc ? cc + FEW_PF : c0 + c + FEW_PF - nc;
                if (pr < r1 && pc < g.nchunks) prefetch_chunk(PACKED, &g, wb, w_row_bytes, pr, r1, pc);
                const bool last = c + 1 >= nc;
                const int64_t nrg = last ? rg + 16 : rg, ncc = last ? c0 : cc + 1;
                const char *next = PACKED ? packed_tile(&g, wb, w_row_bytes, nrg, ncc) : NULL;
                compute_chunk(GT, PACKED, &g, wb, w_row_bytes, rg, nr, cc, nblk, &wt, prep + c * n_tok,
                              n_tok, out + rg, ldo, next);
            }
        }
    }
}

#define GEMM_ENTRY(name, GT, PACKED)                                                               \
    void name(KCPU_MATMUL_ARGS)                                                                    \
    {                                                                                              \
        TT_ASSERT(!(PACKED) || r0 % 16 == 0);                                                      \
        if (n_tok <= FEW_TOK)                                                                      \
            gemm_few(GT, PACKED, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);  \
        else                                                                                       \
            gemm(GT, PACKED, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);      \
    }

GEMM_ENTRY(kcpu_avx512_gemm_q4_K, G_Q4_K, 0)
GEMM_ENTRY(kcpu_avx512_gemm_q5_K, G_Q5_K, 0)
GEMM_ENTRY(kcpu_avx512_gemm_q6_K, G_Q6_K, 0)
GEMM_ENTRY(kcpu_avx512_gemm_q8_0, G_Q8_0, 0)
GEMM_ENTRY(kcpu_avx512_gemm_q4_0, G_Q4_0, 0)
GEMM_ENTRY(kcpu_avx512_tile16_q4_K, G_Q4_K, 1)
GEMM_ENTRY(kcpu_avx512_tile16_q5_K, G_Q5_K, 1)
GEMM_ENTRY(kcpu_avx512_tile16_q6_K, G_Q6_K, 1)
