/*
 * quant.c: the type table, type names, and the simple formats: F32, F16,
 * BF16, Q4_0, Q8_0 and the Q8_K activation format. The K-quant weight
 * formats (Q4_K, Q5_K, Q6_K) are in quant_k.c.
 *
 * Everything here is the scalar specification that faster kernels are
 * tested against, so it is written for exactness first:
 *
 * 1. Layouts are GGML's, byte for byte (see quant.h); type ids are GGML's.
 * 2. Dequantization evaluates the same float expressions, in the same order,
 *    as GGML's dequantize_row_* functions, so a dequantized weight is
 *    bit-identical to llama.cpp's.
 * 3. Activation quantizers reproduce what llama.cpp's CPU backend computes
 *    on x86 (the machine the goldens come from), because activations are
 *    re-quantized before every matrix product and a one-step difference in
 *    one activation moves logits visibly:
 *    - Q8_0 (used for Q4_0 and Q8_0 weights): the AVX path, not the scalar
 *      quantize_row_q8_0_ref. The multiplier is 127/amax (not 1/(amax/127),
 *      which can differ in the last bit) and rounding is to nearest with
 *      ties to even (_mm256_round_ps), not roundf's ties away from zero.
 *      The repacked Q4_0 path (q4_0_8x8 activations) computes the same.
 *    - Q8_K (used for the K-quants): quantize_row_q8_K_ref, which x86 also
 *      uses for un-repacked weights (Q5_K, Q6_K): iscale = -127/max where
 *      max is the first element of largest magnitude, nearest_int (ties to
 *      even), d = 1/iscale. The AVX repack path for Q4_K agrees except when
 *      +a and -a are both the largest magnitude in a block (it then picks
 *      the positive one); we keep the reference's first-occurrence rule.
 *    llama-quantize's own Q8_0 weight rounding is kept as
 *    tt_quantize_row_q8_0_ref, for writing files identical to its output.
 * 4. Weight quantizers follow llama-quantize without an importance matrix
 *    (quantize_row_*_ref), in the same float operation order, so quantizing
 *    the same F16 weights gives the same bytes.
 * 5. Dot products sum integer products inside a block exactly, then apply
 *    the float scales once per block, as llama.cpp's kernels do.
 * 6. Nothing allocates and nothing keeps state: any thread may call anything.
 *    F16 values are converted with tt_f16_to_f32, so nothing depends on
 *    tt_base_init() having filled the lookup table.
 */
#include "quant.h"

/* Bit-exactness with the reference needs every a*b + c rounded twice, never
 * fused into one FMA. GCC in ISO mode (-std=c11, as the Makefile builds)
 * does not contract; clang and GCC's GNU modes do unless told not to. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <string.h>
#include <strings.h>

static inline int8_t clamp_i8(int v)
{
    return (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
}

/* ---- F32, F16, BF16 ---- */

static void copy_row_f32(const void *vx, float *y, int64_t n)
{
    memmove(y, vx, (size_t)n * sizeof(float));
}

static void quantize_row_f32(const float *x, void *vy, int64_t n)
{
    memmove(vy, x, (size_t)n * sizeof(float));
}

void tt_dequantize_row_f16(const void *vx, float *y, int64_t n)
{
    const tt_f16 *x = vx;
    for (int64_t i = 0; i < n; i++)
        y[i] = tt_f16_to_f32(x[i]);
}

void tt_quantize_row_f16(const float *x, void *vy, int64_t n)
{
    tt_f16 *y = vy;
    for (int64_t i = 0; i < n; i++)
        y[i] = tt_f32_to_f16(x[i]);
}

void tt_dequantize_row_bf16(const void *vx, float *y, int64_t n)
{
    const tt_bf16 *x = vx;
    for (int64_t i = 0; i < n; i++)
        y[i] = tt_bf16_to_f32(x[i]);
}

void tt_quantize_row_bf16(const float *x, void *vy, int64_t n)
{
    tt_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++)
        y[i] = tt_f32_to_bf16(x[i]);
}

/* Float dots accumulate in one float, in order: the specification is the
 * plain sum; SIMD versions differ only by summation order. */
void tt_vec_dot_f32(int n, float *s, const void *vx, const void *vy)
{
    const float *x = vx, *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n; i++)
        sum += x[i] * y[i];
    *s = sum;
}

void tt_vec_dot_f16(int n, float *s, const void *vx, const void *vy)
{
    const tt_f16 *x = vx, *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n; i++)
        sum += tt_f16_to_f32(x[i]) * tt_f16_to_f32(y[i]);
    *s = sum;
}

void tt_vec_dot_bf16(int n, float *s, const void *vx, const void *vy)
{
    const tt_bf16 *x = vx, *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n; i++)
        sum += tt_bf16_to_f32(x[i]) * tt_bf16_to_f32(y[i]);
    *s = sum;
}

/* ---- Q4_0 ---- */

void tt_dequantize_row_q4_0(const void *vx, float *y, int64_t n)
{
    TT_ASSERT(n % QK4_0 == 0);
    const struct block_q4_0 *x = vx;
    for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
        const float d = tt_f16_to_f32(x[b].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const int lo = (x[b].qs[j] & 0x0F) - 8;
            const int hi = (x[b].qs[j] >> 4) - 8;
            y[j] = (float)lo * d;
            y[j + QK4_0 / 2] = (float)hi * d;
        }
    }
}

/* One level of Q4_0: v = x/d + 8.5 truncated toward zero, at most 15. The
 * reference converts with (int8_t)v; v is in [0.5, 16.5] for finite input,
 * and the comparisons here keep NaN and overflow defined. */
static inline uint8_t q4_0_level(float v)
{
    if (!(v > 0.0f)) return 0;
    return v >= 15.0f ? 15 : (uint8_t)(int)v;
}

void tt_quantize_row_q4_0(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK4_0 == 0);
    struct block_q4_0 *y = vy;
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        /* The element of largest magnitude (first one on ties) maps to -8. */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = tt_f32_to_f16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const uint8_t lo = q4_0_level(x[j] * id + 8.5f);
            const uint8_t hi = q4_0_level(x[j + QK4_0 / 2] * id + 8.5f);
            y[b].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

void tt_vec_dot_q4_0_q8_0(int n, float *s, const void *vx, const void *vy)
{
    TT_ASSERT(n % QK8_0 == 0);
    const struct block_q4_0 *x = vx;
    const struct block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK8_0; b++) {
        int isum = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            isum += ((x[b].qs[j] & 0x0F) - 8) * y[b].qs[j];
            isum += ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + QK4_0 / 2];
        }
        sum += (tt_f16_to_f32(x[b].d) * tt_f16_to_f32(y[b].d)) * (float)isum;
    }
    *s = sum;
}

/* ---- Q8_0 ---- */

void tt_dequantize_row_q8_0(const void *vx, float *y, int64_t n)
{
    TT_ASSERT(n % QK8_0 == 0);
    const struct block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
        const float d = tt_f16_to_f32(x[b].d);
        for (int j = 0; j < QK8_0; j++)
            y[j] = (float)x[b].qs[j] * d;
    }
}

static float block_amax(const float *x, int n)
{
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    return amax;
}

void tt_quantize_row_q8_0(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK8_0 == 0);
    struct block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        const float amax = block_amax(x, QK8_0);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = tt_f32_to_f16(amax / 127.0f);
        for (int j = 0; j < QK8_0; j++)
            y[b].qs[j] = clamp_i8(tt_nearest_int(x[j] * id));
    }
}

void tt_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK8_0 == 0);
    struct block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        const float d = block_amax(x, QK8_0) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = tt_f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++) {
            float v = roundf(x[j] * id); /* ties away from zero */
            v = v == v ? fminf(fmaxf(v, -128.0f), 127.0f) : 0.0f;
            y[b].qs[j] = (int8_t)v;
        }
    }
}

void tt_vec_dot_q8_0_q8_0(int n, float *s, const void *vx, const void *vy)
{
    TT_ASSERT(n % QK8_0 == 0);
    const struct block_q8_0 *x = vx;
    const struct block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK8_0; b++) {
        int isum = 0;
        for (int j = 0; j < QK8_0; j++)
            isum += x[b].qs[j] * y[b].qs[j];
        sum += (tt_f16_to_f32(x[b].d) * tt_f16_to_f32(y[b].d)) * (float)isum;
    }
    *s = sum;
}

/* ---- Q8_K ---- */

void tt_dequantize_row_q8_K(const void *vx, float *y, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    const struct block_q8_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        for (int j = 0; j < QK_K; j++)
            y[j] = x[b].d * (float)x[b].qs[j];
    }
}

void tt_quantize_row_q8_K(const float *x, void *vy, int64_t n)
{
    TT_ASSERT(n % QK_K == 0);
    struct block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        memset(&y[b], 0, sizeof(y[b]));
        if (amax == 0.0f) continue;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++)
            y[b].qs[j] = clamp_i8(tt_nearest_int(iscale * x[j]));
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++)
                sum += y[b].qs[16 * g + j];
            y[b].bsums[g] = (int16_t)sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- the type table ---- */

static const struct tt_type_traits type_traits[TT_TYPE_COUNT] = {
    [TT_TYPE_F32] = {"f32", 1, sizeof(float), false, TT_TYPE_F32, copy_row_f32, quantize_row_f32,
                     tt_vec_dot_f32},
    [TT_TYPE_F16] = {"f16", 1, sizeof(tt_f16), false, TT_TYPE_F16, tt_dequantize_row_f16,
                     tt_quantize_row_f16, tt_vec_dot_f16},
    [TT_TYPE_BF16] = {"bf16", 1, sizeof(tt_bf16), false, TT_TYPE_BF16, tt_dequantize_row_bf16,
                      tt_quantize_row_bf16, tt_vec_dot_bf16},
    [TT_TYPE_Q4_0] = {"q4_0", QK4_0, sizeof(struct block_q4_0), true, TT_TYPE_Q8_0,
                      tt_dequantize_row_q4_0, tt_quantize_row_q4_0, tt_vec_dot_q4_0_q8_0},
    [TT_TYPE_Q8_0] = {"q8_0", QK8_0, sizeof(struct block_q8_0), true, TT_TYPE_Q8_0,
                      tt_dequantize_row_q8_0, tt_quantize_row_q8_0, tt_vec_dot_q8_0_q8_0},
    [TT_TYPE_Q4_K] = {"q4_K", QK_K, sizeof(struct block_q4_K), true, TT_TYPE_Q8_K,
                      tt_dequantize_row_q4_K, tt_quantize_row_q4_K, tt_vec_dot_q4_K_q8_K},
    [TT_TYPE_Q5_K] = {"q5_K", QK_K, sizeof(struct block_q5_K), true, TT_TYPE_Q8_K,
                      tt_dequantize_row_q5_K, tt_quantize_row_q5_K, tt_vec_dot_q5_K_q8_K},
    [TT_TYPE_Q6_K] = {"q6_K", QK_K, sizeof(struct block_q6_K), true, TT_TYPE_Q8_K,
                      tt_dequantize_row_q6_K, tt_quantize_row_q6_K, tt_vec_dot_q6_K_q8_K},
    /* Activation format only: no weight type dots with it as the weight side. */
    [TT_TYPE_Q8_K] = {"q8_K", QK_K, sizeof(struct block_q8_K), true, TT_TYPE_Q8_K,
                      tt_dequantize_row_q8_K, tt_quantize_row_q8_K, NULL},
};

const struct tt_type_traits *tt_type_get(uint32_t type)
{
    if (type >= TT_TYPE_COUNT || !type_traits[type].name) return NULL;
    return &type_traits[type];
}

bool tt_type_is_stored(uint32_t type)
{
    return tt_type_get(type) != NULL && type != TT_TYPE_Q8_K;
}

size_t tt_row_size(enum tt_type type, int64_t n)
{
    const struct tt_type_traits *t = tt_type_get((uint32_t)type);
    if (!t || n < 0 || n % t->block_size != 0) return 0;
    return (size_t)(n / t->block_size) * t->type_size;
}

const char *tt_type_name(uint32_t type)
{
    const struct tt_type_traits *t = tt_type_get(type);
    return t ? t->name : "unknown";
}

int tt_type_from_name(const char *name)
{
    if (!name) return -1;
    for (uint32_t i = 0; i < TT_TYPE_COUNT; i++) {
        if (type_traits[i].name && strcasecmp(type_traits[i].name, name) == 0) return (int)i;
    }
    return -1;
}

const char *tt_type_supported_list(void)
{
    return "f32, f16, bf16, q4_0, q8_0, q4_K, q5_K, q6_K";
}
