/*
 * kcpu_scalar.c: the reference table, built on the quant module's scalar
 * functions. It is the oracle every SIMD table is tested against, so it adds
 * nothing of its own: a matrix product is a loop over tokens and rows calling
 * the type's reference vec_dot, activation quantization is the reference
 * from_float of the activation type, and the attention helpers are plain
 * loops summing in order.
 */
#include "kcpu.h"

#include <string.h>

static void copy_f32(const float *x, void *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

static inline void matmul_ref(tt_vec_dot_fn dot, int64_t n, const void *w, size_t w_row_bytes,
                              int64_t r0, int64_t r1, const void *act, size_t act_row_bytes,
                              int64_t n_tok, float *out, int64_t ldo)
{
    for (int64_t t = 0; t < n_tok; t++) {
        const char *a = (const char *)act + t * act_row_bytes;
        for (int64_t r = r0; r < r1; r++) {
            dot((int)n, &out[t * ldo + r], (const char *)w + r * w_row_bytes, a);
        }
    }
}

#define MATMUL_REF(name, dot)                                                                     \
    static void name(int64_t n, const void *w, size_t w_row_bytes, int64_t r0, int64_t r1,        \
                     const void *act, size_t act_row_bytes, int64_t n_tok, float *out, int64_t ldo) \
    {                                                                                             \
        matmul_ref(dot, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_tok, out, ldo);          \
    }

MATMUL_REF(matmul_f32, tt_vec_dot_f32)
MATMUL_REF(matmul_f16, tt_vec_dot_f16)
MATMUL_REF(matmul_bf16, tt_vec_dot_bf16)
MATMUL_REF(matmul_q4_0, tt_vec_dot_q4_0_q8_0)
MATMUL_REF(matmul_q8_0, tt_vec_dot_q8_0_q8_0)
MATMUL_REF(matmul_q4_K, tt_vec_dot_q4_K_q8_K)
MATMUL_REF(matmul_q5_K, tt_vec_dot_q5_K_q8_K)
MATMUL_REF(matmul_q6_K, tt_vec_dot_q6_K_q8_K)

static float dot_f16_f32(int64_t n, const tt_f16 *a, const float *b)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += tt_f16_to_f32(a[i]) * b[i];
    return sum;
}

static float dot_f32(int64_t n, const float *a, const float *b)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static void axpy_f16(int64_t n, float alpha, const tt_f16 *x, float *y)
{
    for (int64_t i = 0; i < n; i++) y[i] += alpha * tt_f16_to_f32(x[i]);
}

static void axpy_f32(int64_t n, float alpha, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

const struct kcpu_ops kcpu_ops_scalar = {
    .isa = KCPU_ISA_SCALAR,
    .quantize_act = {
        [TT_TYPE_F32] = copy_f32,
        [TT_TYPE_F16] = tt_quantize_row_f16,
        [TT_TYPE_BF16] = tt_quantize_row_bf16,
        [TT_TYPE_Q8_0] = tt_quantize_row_q8_0,
        [TT_TYPE_Q8_K] = tt_quantize_row_q8_K,
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
