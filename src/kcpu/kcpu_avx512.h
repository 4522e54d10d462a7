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

/* From n_tok at or above these many tokens, quantized products use the
 * tiled kernels (weights repacked on the fly, every repacked block used for
 * all tokens); below, the row kernels that stream each weight row once with
 * up to four tokens per pass. Measured on Zen 4 (one thread, an 8B-shaped
 * 14336 x 4096 matrix, CPU time per token): the few-token tiles overtake the
 * rows from 5 tokens, Q4_K 1.00 vs 1.12 ms at 5 and 0.69 vs 0.90 at 8, Q6_K
 * 1.22 vs 1.45 at 5 and 0.80 vs 1.09 at 8 (at 4 the rows win: Q6_K 1.10 vs
 * 1.44). Q4_0 and Q8_0 keep the crossover measured before the few-token
 * tiles existed. */
#define KCPU_AVX512_GEMM_MIN_TOK 12
#define KCPU_AVX512_GEMM_MIN_TOK_KQ 5

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
/* The same on KCPU_LAYOUT_TILE16 weights, every token count (kcpu.h). */
void kcpu_avx512_tile16_q4_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_tile16_q5_K(KCPU_MATMUL_ARGS);
void kcpu_avx512_tile16_q6_K(KCPU_MATMUL_ARGS);

KCPU_INLINE float kcpu_f16(const void *p)
{
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v)));
}

#endif
