/*
 * kcpu: the CPU kernels that carry the weight: quantized matrix products and
 * the few vector loops of attention, one implementation per instruction set.
 *
 * Each instruction set is one file (kcpu_scalar.c, kcpu_avx2.c, kcpu_avx512.c,
 * kcpu_neon.c) compiled with its own flags and exporting one filled-in
 * struct kcpu_ops. kcpu_get() picks the best one the running CPU supports
 * (cpuid / hwcaps), once; TT_ISA=scalar|avx2|avx512|neon overrides it.
 * The scalar table is built on the quant module's reference functions and is
 * the oracle the others are tested against.
 *
 * Matrix product contract (all ISAs):
 *   out[t * ldo + r] = sum_k W[r][k] * act[t][k]   for r in [r0, r1), t in [0, n_tok)
 * W is a row-major matrix of `n` columns stored in type `wtype`, rows
 * `w_row_bytes` apart; act is n_tok rows already converted to
 * tt_type_get(wtype)->vec_dot_type by quantize_act, rows `act_row_bytes`
 * apart. The caller splits [0, n_rows) among threads; kernels do not
 * allocate and keep no state.
 */
#ifndef TT_KCPU_H
#define TT_KCPU_H

#include "../quant/quant.h"

enum kcpu_isa { KCPU_ISA_SCALAR, KCPU_ISA_AVX2, KCPU_ISA_AVX512, KCPU_ISA_NEON, KCPU_ISA_COUNT };

typedef void (*kcpu_quantize_fn)(const float *x, void *y, int64_t n);
typedef void (*kcpu_matmul_fn)(int64_t n, const void *w, size_t w_row_bytes, int64_t r0,
                               int64_t r1, const void *act, size_t act_row_bytes, int64_t n_tok,
                               float *out, int64_t ldo);

struct kcpu_ops {
    enum kcpu_isa isa;
    /* Indexed by the activation (vec_dot) type: F32 (copy), F16, BF16, Q8_0, Q8_K. */
    kcpu_quantize_fn quantize_act[TT_TYPE_COUNT];
    /* Indexed by the weight type: F32, F16, BF16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K. */
    kcpu_matmul_fn matmul[TT_TYPE_COUNT];
    /* Attention helpers over an F16 or F32 KV cache. */
    float (*dot_f16_f32)(int64_t n, const tt_f16 *a, const float *b);
    float (*dot_f32)(int64_t n, const float *a, const float *b);
    void (*axpy_f16)(int64_t n, float alpha, const tt_f16 *x, float *y); /* y += alpha*x */
    void (*axpy_f32)(int64_t n, float alpha, const float *x, float *y);
};

/* The best table for this CPU; never NULL (scalar at worst). Thread-safe
 * after the first call (call it once at start-up). */
const struct kcpu_ops *kcpu_get(void);
/* The table of one ISA, or NULL if it is not compiled in or the CPU lacks it. */
const struct kcpu_ops *kcpu_get_isa(enum kcpu_isa isa);
const char *kcpu_isa_name(enum kcpu_isa isa);

/* Per-ISA tables, defined in their files (only those compiled in exist). */
extern const struct kcpu_ops kcpu_ops_scalar;
extern const struct kcpu_ops kcpu_ops_avx2;
extern const struct kcpu_ops kcpu_ops_avx512;
extern const struct kcpu_ops kcpu_ops_neon;

#endif
