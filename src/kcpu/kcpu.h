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
 *
 * Weight layouts (enum kcpu_layout). KCPU_LAYOUT_ROWS is the file's: rows of
 * blocks, as above. KCPU_LAYOUT_TILE16 is made once at load by
 * kcpu_tile16_pack for the tables that have a kernel reading it
 * (matmul_tile16[type] not NULL; kcpu_tile16_wanted is the one place that
 * decides): rows go in groups of 16, group g at w + g * 16 * w_row_bytes
 * (w_row_bytes = tt_row_size(type, n), no padding), and within a group the
 * 16 rows' block b lies at b * 16 * type_size, stored transposed by dwords:
 * dword p of row i's block at byte 64 * p + 4 * i, then the type_size % 4
 * trailing bytes of the 16 rows one row after the other. A last group of
 * fewer than 16 rows is padded with zero rows. The tiled kernels want
 * exactly that (16 rows in the 16 lanes of a zmm register), so they load it
 * instead of transposing the rows on every call; every token count, one
 * included, reads it in one sequential stream. A TILE16 product takes r0 a
 * multiple of 16 and any r1 up to the row count.
 */
#ifndef TT_KCPU_H
#define TT_KCPU_H

#include "../quant/quant.h"

enum kcpu_isa { KCPU_ISA_SCALAR, KCPU_ISA_AVX2, KCPU_ISA_AVX512, KCPU_ISA_NEON, KCPU_ISA_COUNT };

typedef void (*kcpu_quantize_fn)(const float *x, void *y, int64_t n);
enum kcpu_layout { KCPU_LAYOUT_ROWS, KCPU_LAYOUT_TILE16, KCPU_LAYOUT_COUNT };

typedef void (*kcpu_matmul_fn)(int64_t n, const void *w, size_t w_row_bytes, int64_t r0,
                               int64_t r1, const void *act, size_t act_row_bytes, int64_t n_tok,
                               float *out, int64_t ldo);

struct kcpu_ops {
    enum kcpu_isa isa;
    /* Indexed by the activation (vec_dot) type: F32 (copy), F16, BF16, Q8_0, Q8_K. */
    kcpu_quantize_fn quantize_act[TT_TYPE_COUNT];
    /* Indexed by the weight type: F32, F16, BF16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K. */
    kcpu_matmul_fn matmul[TT_TYPE_COUNT];
    /* The same products on KCPU_LAYOUT_TILE16 weights; NULL where this
     * table has no such kernel (the weight then stays in rows). */
    kcpu_matmul_fn matmul_tile16[TT_TYPE_COUNT];
    /* Attention helpers over an F16 or F32 KV cache. */
    float (*dot_f16_f32)(int64_t n, const tt_f16 *a, const float *b);
    float (*dot_f32)(int64_t n, const float *a, const float *b);
    void (*axpy_f16)(int64_t n, float alpha, const tt_f16 *x, float *y); /* y += alpha*x */
    void (*axpy_f32)(int64_t n, float alpha, const float *x, float *y);
    /* One attention head over F16 cache rows j = 0..n_pos-1 (row j at
     * base + j * stride elements), bit for bit what the loops over the
     * helpers above compute, with the query and the output kept in
     * registers; NULL where the table has none (kcpu_scores_f16 and
     * kcpu_mix_f16 call whichever applies).
     * scores_f16: scores[j] = dot_f16_f32(hd, k_j, q) * scale, returns the
     * largest. mix_f16: out = sum over j of (w[j] * inv) * v_j, from zero,
     * in order of j, as axpy_f16 adds. */
    float (*scores_f16)(int64_t hd, int64_t n_pos, const tt_f16 *k, size_t stride, const float *q,
                        float scale, float *scores);
    void (*mix_f16)(int64_t hd, int64_t n_pos, const tt_f16 *v, size_t stride, const float *w, float inv,
                    float *out);
};

/* The product of `ops` for a weight of this type and layout (never NULL for
 * a layout the weight was packed into with kcpu_tile16_wanted's consent). */
static inline kcpu_matmul_fn kcpu_matmul_get(const struct kcpu_ops *ops, enum kcpu_layout layout,
                                             enum tt_type type)
{
    return layout == KCPU_LAYOUT_TILE16 ? ops->matmul_tile16[type] : ops->matmul[type];
}

/* One attention head as ops->scores_f16 / ops->mix_f16 compute it, for
 * every table: their own op where they have one, else the _loop forms, the
 * loops over the table's dot_f16_f32 / axpy_f16 (which the ops equal bit
 * for bit, and defer to for head dims they do not keep in registers). */
float kcpu_scores_f16(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *k, size_t stride,
                      const float *q, float scale, float *scores);
void kcpu_mix_f16(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *v, size_t stride,
                  const float *w, float inv, float *out);
float kcpu_scores_f16_loop(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *k,
                           size_t stride, const float *q, float scale, float *scores);
void kcpu_mix_f16_loop(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *v, size_t stride,
                       const float *w, float inv, float *out);

/* Whether weights of this type should be packed to KCPU_LAYOUT_TILE16 for
 * `ops`: the one place that decides (a kernel must exist for it). */
bool kcpu_tile16_wanted(const struct kcpu_ops *ops, enum tt_type type);
/* Bytes of an n_rows x n matrix of `type` in KCPU_LAYOUT_TILE16 (row groups
 * padded to 16 rows). */
size_t kcpu_tile16_bytes(enum tt_type type, int64_t n, int64_t n_rows);
/* Pack row groups [g0, g1) of the n_rows x n matrix at src (rows
 * src_row_bytes apart, in the file's layout) into dst, the start of the
 * whole packed matrix (kcpu_tile16_bytes long). Groups are independent, so
 * threads may pack disjoint ranges at once. */
void kcpu_tile16_pack(enum tt_type type, int64_t n, const void *src, size_t src_row_bytes,
                      int64_t n_rows, int64_t g0, int64_t g1, void *dst);

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
