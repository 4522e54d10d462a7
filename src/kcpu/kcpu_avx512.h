/*
 * kcpu_avx512.h: what the AVX-512 kernel files share. Include only from files
 * named *_avx512.c (the Makefile compiles those with -mavx512f/bw/vl/dq/vnni).
 *
 * The AVX-512 table is spread over several files by type family:
 *   kcpu_avx512.c       activation quantizers, float types, attention helpers,
 *                       Q4_0/Q8_0, and the tables themselves
 *   kcpu_kq_avx512.c    K-quant products for few tokens (decode)
 *   kcpu_gemm_avx512.c  quantized products for many tokens (prefill)
 */
#ifndef TT_KCPU_AVX512_H
#define TT_KCPU_AVX512_H

#include "kcpu_impl.h"

#include <immintrin.h>

#define KCPU_INLINE static inline __attribute__((always_inline))
/* Full unrolling of the small constant loops of a register tile, so that the
 * tile's arrays of vectors live in registers. */
#define KCPU_UNROLL _Pragma("GCC unroll 16")

/* A matrix product's arguments, as in kcpu_matmul_fn. */
#define KCPU_MATMUL_ARGS                                                                   \
    int64_t n, const void *w, size_t w_row_bytes, int64_t r0, int64_t r1, const void *act, \
        size_t act_row_bytes, int64_t n_tok, float *out, int64_t ldo

/* From n_tok at or above this many tokens, quantized products use the
 * tiled GEMM kernels (weights repacked on the fly, used for many tokens);
 * below it, the row kernels that stream each weight row once. */
#define KCPU_AVX512_GEMM_MIN_TOK 6

/* Row kernels (kcpu_kq_avx512.c, kcpu_avx512.c). */
void kcpu_avx512_rows_q4_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_rows_q5_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_rows_q6_K(KCPU_MATMUL_ARGS);

/* Tiled kernels (kcpu_gemm_avx512.c). */
void kcpu_avx512_gemm_q4_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_gemm_q5_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_gemm_q6_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_gemm_q8_0(KCPU_MATMUL_ARGS);
void kcpu_avx512_gemm_q4_0(KCPU_MATMUL_ARGS);

/* Two F16 values (d, dmin of a K-quant block) to floats in lanes 0 and 1. */
KCPU_INLINE __m128 kcpu_f16x2(const void *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)v));
}

KCPU_INLINE float kcpu_f16(const void *p)
{
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v)));
}

/* Unpack the 12 packed 6-bit scale/min bytes of a Q4_K/Q5_K block: the
 * 16 bytes at `p` (d, dmin, scales[12]) become bytes sc0..sc7, m0..m7. */
KCPU_INLINE __m128i kcpu_q4k_scales(const void *p)
{
    const __m128i s = _mm_loadu_si128((const __m128i *)p); /* S[i] = byte 4 + i */
    /* P: S0..3, S8..11, S4..7, S8..11. Q: -, S0..3, -, S4..7. */
    const __m128i P = _mm_shuffle_epi8(s, _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11,
                                                        12, 13, 14, 15));
    const __m128i Q = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1,
                                                        8, 9, 10, 11));
    const __m128i P2 = _mm_mask_blend_epi8(0xF000, P, _mm_srli_epi16(P, 4));
    const __m128i lo = _mm_and_si128(P2, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63,
                                                       63, 15, 15, 15, 15));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(Q, 2), _mm_setr_epi8(0, 0, 0, 0, 0x30, 0x30,
                                                                         0x30, 0x30, 0, 0, 0, 0,
                                                                         0x30, 0x30, 0x30, 0x30));
    return _mm_or_si128(lo, hi);
}

#endif
