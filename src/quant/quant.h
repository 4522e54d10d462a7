/*
 * quant: tensor element types and their block formats.
 *
 * Type ids are GGML's (they are what GGUF files store), so a file's type
 * field indexes tt_type_traits directly. The block layouts below are the
 * published GGML layouts, byte for byte; every quantized type is a sequence
 * of fixed-size blocks, each covering `block_size` consecutive elements of a
 * row. A row of n elements therefore takes n / block_size * type_size bytes
 * and n must be a multiple of block_size.
 *
 * Matrix products follow the reference engine: the activation row is first
 * converted to the weight type's `vec_dot_type` (Q8_0 for Q4_0/Q8_0, Q8_K for
 * the K-quants, F16 for F16, BF16 for BF16, F32 for F32), then every weight
 * row is dotted with it. The functions here are the scalar specification and
 * test oracle; kcpu has the fast versions and must agree with these.
 */
#ifndef TT_QUANT_H
#define TT_QUANT_H

#include "../base/base.h"

enum tt_type {
    TT_TYPE_F32 = 0,
    TT_TYPE_F16 = 1,
    TT_TYPE_Q4_0 = 2,
    TT_TYPE_Q8_0 = 8,
    TT_TYPE_Q4_K = 12,
    TT_TYPE_Q5_K = 13,
    TT_TYPE_Q6_K = 14,
    TT_TYPE_Q8_K = 15, /* activations only: never stored in model files we write */
    TT_TYPE_BF16 = 30,
    TT_TYPE_COUNT = 31 /* one past the largest id; ids not listed are unsupported */
};

#define QK4_0 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* Q4_0: 32 weights = d * (q - 8), q in 0..15; low nibbles hold elements
 * 0..15, high nibbles 16..31. */
struct block_q4_0 {
    tt_f16 d;
    uint8_t qs[QK4_0 / 2];
};
/* Q8_0: 32 weights = d * q, q int8. */
struct block_q8_0 {
    tt_f16 d;
    int8_t qs[QK8_0];
};
/* Q4_K: 256 weights in 8 sub-blocks of 32; sub-block j has a 6-bit scale and
 * 6-bit min packed in `scales`; weight = d*sc_j*q - dmin*m_j, q in 0..15. */
struct block_q4_K {
    tt_f16 d;
    tt_f16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
};
/* Q5_K: as Q4_K with a fifth bit per weight in qh. */
struct block_q5_K {
    tt_f16 d;
    tt_f16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
/* Q6_K: 256 weights in 16 sub-blocks of 16; weight = d*scales[j]*(q-32), q 6 bits
 * (low 4 in ql, high 2 in qh). */
struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    tt_f16 d;
};
/* Q8_K: activation format for K-quant products; bsums[j] = sum of qs in
 * group j of 16. */
struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};

_Static_assert(sizeof(struct block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(struct block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(struct block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(struct block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(struct block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(struct block_q8_K) == 292, "q8_K layout");

/* Scalar reference functions. n is the row length in elements (a multiple
 * of block_size). `x` float rows, `vx` packed rows. */
typedef void (*tt_to_float_fn)(const void *vx, float *y, int64_t n);
typedef void (*tt_from_float_fn)(const float *x, void *vy, int64_t n);
/* s = dot(weight row vx, activation row vy), vy in the weight type's vec_dot_type. */
typedef void (*tt_vec_dot_fn)(int n, float *s, const void *vx, const void *vy);

struct tt_type_traits {
    const char *name;        /* "q4_K", as GGML names it; NULL if unsupported */
    int block_size;          /* elements per block */
    size_t type_size;        /* bytes per block */
    bool is_quantized;
    enum tt_type vec_dot_type; /* what activations are converted to */
    tt_to_float_fn to_float;     /* dequantize */
    tt_from_float_fn from_float; /* quantize (reference quality, as llama-quantize without imatrix) */
    tt_vec_dot_fn vec_dot;       /* scalar reference dot */
};

/* Traits of a type id; returns NULL for ids outside the supported set. */
const struct tt_type_traits *tt_type_get(uint32_t type);
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t tt_row_size(enum tt_type type, int64_t n);
/* Name of a type or "unknown". */
const char *tt_type_name(uint32_t type);
/* Parse "q4_k", "Q4_K", "f16", ... ; returns -1 if unknown. */
int tt_type_from_name(const char *name);
/* Comma-separated list of supported stored types, for error messages. */
const char *tt_type_supported_list(void);

/* ---- additions: the per-type reference functions ----
 * The functions the traits table points to, callable by name (kcpu's scalar
 * table and the tests use them). Contracts as tt_to_float_fn, tt_from_float_fn
 * and tt_vec_dot_fn: n is a multiple of the block size (asserted), nothing is
 * allocated, no state is kept, any thread may call them. */

/* Type ids whose traits exist but which are never written to model files
 * (Q8_K) answer false; so do unsupported ids. */
bool tt_type_is_stored(uint32_t type);

void tt_dequantize_row_f16(const void *vx, float *y, int64_t n);
void tt_dequantize_row_bf16(const void *vx, float *y, int64_t n);
void tt_dequantize_row_q4_0(const void *vx, float *y, int64_t n);
void tt_dequantize_row_q8_0(const void *vx, float *y, int64_t n);
void tt_dequantize_row_q4_K(const void *vx, float *y, int64_t n);
void tt_dequantize_row_q5_K(const void *vx, float *y, int64_t n);
void tt_dequantize_row_q6_K(const void *vx, float *y, int64_t n);
void tt_dequantize_row_q8_K(const void *vx, float *y, int64_t n);

void tt_quantize_row_f16(const float *x, void *vy, int64_t n);  /* round to nearest even */
void tt_quantize_row_bf16(const float *x, void *vy, int64_t n); /* round to nearest even */
void tt_quantize_row_q4_0(const float *x, void *vy, int64_t n);
/* Q8_0 as llama.cpp's x86 CPU backend quantizes activations (what the traits'
 * from_float is): d = amax/127 stored as F16, q = x * (127/amax) rounded half
 * to even. */
void tt_quantize_row_q8_0(const float *x, void *vy, int64_t n);
/* Q8_0 as llama-quantize writes weights (quantize_row_q8_0_ref): q = x * (1/d)
 * rounded half away from zero. Differs from the above only on exact ties and
 * in the last bit of the multiplier; use it to write files byte-identical to
 * llama-quantize's. */
void tt_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n);
void tt_quantize_row_q4_K(const float *x, void *vy, int64_t n);
void tt_quantize_row_q5_K(const float *x, void *vy, int64_t n);
void tt_quantize_row_q6_K(const float *x, void *vy, int64_t n);
/* Q8_K as llama.cpp quantizes activations (quantize_row_q8_K_ref): with max
 * the first element of largest magnitude, iscale = -127/max (so that element
 * becomes -127), q = iscale*x rounded half to even, d = 1/iscale; bsums
 * filled. An all-zero block has d = 0 and zero sums. */
void tt_quantize_row_q8_K(const float *x, void *vy, int64_t n);

void tt_vec_dot_f32(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_f16(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_bf16(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_q4_0_q8_0(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_q8_0_q8_0(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_q4_K_q8_K(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_q5_K_q8_K(int n, float *s, const void *vx, const void *vy);
void tt_vec_dot_q6_K_q8_K(int n, float *s, const void *vx, const void *vy);

/* Round to the nearest integer, ties to even, as llama.cpp's nearest_int and
 * the x86 round instructions do (default rounding mode assumed). Exact for
 * |v| <= 2^22 - 1; for larger values, inf or NaN the result is unspecified
 * but defined (no undefined behaviour), so callers clamp it afterwards. */
static inline int tt_nearest_int(float v)
{
    union { float f; int32_t i; } u = { .f = v + 12582912.0f }; /* 1.5 * 2^23 */
    return (u.i & 0x007fffff) - 0x00400000;
}

/* Scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, both 6 bits:
 * j < 4 keep them in the low 6 bits of scales[j] and scales[j + 4]; j >= 4 keep
 * their low 4 bits in the nibbles of scales[j + 4] and their top 2 bits in the
 * top bits of scales[j - 4] (scale) and scales[j] (min). */
static inline void tt_q4_K_scale_min(int j, const uint8_t *scales, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (uint8_t)((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
        *m = (uint8_t)((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
    }
}

#endif
