/*
 * test_quant.c: the quant module against its specification.
 *
 * - The type table: traits, row sizes, names.
 * - F16/BF16 conversion edge cases (subnormals, inf, NaN, ties), exhaustive
 *   for F16.
 * - Dequantization of hand-built blocks, whose bytes are laid out here from
 *   the GGML layout descriptions, independently of the module's packers.
 * - Quantization: round-trip error bounds per type on random data, exact
 *   levels and rounding ties of Q4_0/Q8_0/Q8_K, zero/constant/non-finite rows,
 *   Q8_K bsums.
 * - Dot products against the float dot of the dequantized operands, and at
 *   the extremes of every format (no int overflow).
 * - Byte-identity with llama-quantize: when ../shared/models is present, the
 *   F16 synthetic model is re-quantized and compared with the Q4_K_M and
 *   Q8_0 files llama-quantize made from it (a small GGUF reader lives here so
 *   that this test depends on nothing but quant and base).
 */
#include "quant/quant.h"
#include "test.h"

#include <stdint.h>

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double rng_uniform(void) /* (0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static float rng_gauss(void)
{
    return (float)(sqrt(-2.0 * log(rng_uniform())) * cos(6.283185307179586 * rng_uniform()));
}

static void fill_gauss(float *x, int64_t n, float scale, float offset)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_gauss() * scale + offset;
}

static float bits_to_f32(uint32_t u)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = u};
    return v.f;
}

/* Quantize then dequantize n values of x with type t into y. */
static void round_trip(enum tt_type t, const float *x, float *y, int64_t n)
{
    const struct tt_type_traits *tr = tt_type_get(t);
    void *q = calloc(1, tt_row_size(t, n));
    tr->from_float(x, q, n);
    tr->to_float(q, y, n);
    free(q);
}

static double nmse(const float *x, const float *y, int64_t n)
{
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; i++) {
        err += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        ref += (double)x[i] * x[i];
    }
    return ref > 0 ? err / ref : err;
}

static const enum tt_type all_types[] = {
    TT_TYPE_F32,  TT_TYPE_F16,  TT_TYPE_BF16, TT_TYPE_Q4_0, TT_TYPE_Q8_0,
    TT_TYPE_Q4_K, TT_TYPE_Q5_K, TT_TYPE_Q6_K, TT_TYPE_Q8_K,
};

/* ---- the type table ---- */

static void test_traits(void)
{
    static const struct {
        enum tt_type type;
        const char *name;
        int block_size;
        size_t type_size;
        bool quantized;
        enum tt_type vec_dot_type;
    } want[] = {
        {TT_TYPE_F32, "f32", 1, 4, false, TT_TYPE_F32},
        {TT_TYPE_F16, "f16", 1, 2, false, TT_TYPE_F16},
        {TT_TYPE_BF16, "bf16", 1, 2, false, TT_TYPE_BF16},
        {TT_TYPE_Q4_0, "q4_0", 32, 18, true, TT_TYPE_Q8_0},
        {TT_TYPE_Q8_0, "q8_0", 32, 34, true, TT_TYPE_Q8_0},
        {TT_TYPE_Q4_K, "q4_K", 256, 144, true, TT_TYPE_Q8_K},
        {TT_TYPE_Q5_K, "q5_K", 256, 176, true, TT_TYPE_Q8_K},
        {TT_TYPE_Q6_K, "q6_K", 256, 210, true, TT_TYPE_Q8_K},
        {TT_TYPE_Q8_K, "q8_K", 256, 292, true, TT_TYPE_Q8_K},
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(want); i++) {
        const struct tt_type_traits *t = tt_type_get(want[i].type);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK_STR(t->name, want[i].name);
        CHECK_EQ_INT(t->block_size, want[i].block_size);
        CHECK_EQ_INT(t->type_size, want[i].type_size);
        CHECK_EQ_INT(t->is_quantized, want[i].quantized);
        CHECK_EQ_INT(t->vec_dot_type, want[i].vec_dot_type);
        CHECK(t->to_float != NULL && t->from_float != NULL);
        CHECK((t->vec_dot != NULL) == (want[i].type != TT_TYPE_Q8_K));
        CHECK_EQ_INT(tt_type_is_stored(want[i].type), want[i].type != TT_TYPE_Q8_K);
    }
    /* Ids GGML has but we do not support, and ids past the table. */
    const uint32_t unsupported[] = {3, 6, 7, 9, 10, 11, 16, 29, 31, 39, 1000, UINT32_MAX};
    for (size_t i = 0; i < TT_ARRAY_LEN(unsupported); i++) {
        CHECK(tt_type_get(unsupported[i]) == NULL);
        CHECK(!tt_type_is_stored(unsupported[i]));
    }
}

static void test_row_size(void)
{
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q4_K, 4096), 16 * 144);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q5_K, 512), 2 * 176);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q6_K, 14336), 56 * 210);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q8_K, 256), 292);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q4_0, 64), 36);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q8_0, 4096), 128 * 34);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_F32, 7), 28);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_F16, 7), 14);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_BF16, 3), 6);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_F32, 0), 0);
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q4_0, 33), 0);    /* not a multiple */
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q4_K, 128), 0);   /* half a super-block */
    CHECK_EQ_INT(tt_row_size(TT_TYPE_Q8_0, -32), 0);   /* negative */
    CHECK_EQ_INT(tt_row_size((enum tt_type)3, 32), 0); /* unsupported */
}

static void test_names(void)
{
    CHECK_STR(tt_type_name(TT_TYPE_Q4_K), "q4_K");
    CHECK_STR(tt_type_name(TT_TYPE_BF16), "bf16");
    CHECK_STR(tt_type_name(3), "unknown");
    CHECK_STR(tt_type_name(12345), "unknown");
    CHECK_EQ_INT(tt_type_from_name("q4_k"), TT_TYPE_Q4_K);
    CHECK_EQ_INT(tt_type_from_name("q4_K"), TT_TYPE_Q4_K);
    CHECK_EQ_INT(tt_type_from_name("Q4_K"), TT_TYPE_Q4_K);
    CHECK_EQ_INT(tt_type_from_name("Q6_k"), TT_TYPE_Q6_K);
    CHECK_EQ_INT(tt_type_from_name("F16"), TT_TYPE_F16);
    CHECK_EQ_INT(tt_type_from_name("bf16"), TT_TYPE_BF16);
    CHECK_EQ_INT(tt_type_from_name("Q8_0"), TT_TYPE_Q8_0);
    CHECK_EQ_INT(tt_type_from_name("q4_k_m"), -1); /* a file type, not a tensor type */
    CHECK_EQ_INT(tt_type_from_name("q4_1"), -1);
    CHECK_EQ_INT(tt_type_from_name("q4"), -1);
    CHECK_EQ_INT(tt_type_from_name(""), -1);
    CHECK_EQ_INT(tt_type_from_name(NULL), -1);
    for (size_t i = 0; i < TT_ARRAY_LEN(all_types); i++) {
        CHECK_EQ_INT(tt_type_from_name(tt_type_name(all_types[i])), all_types[i]);
    }
    const char *list = tt_type_supported_list();
    const char *stored[] = {"f32", "f16", "bf16", "q4_0", "q8_0", "q4_K", "q5_K", "q6_K"};
    for (size_t i = 0; i < TT_ARRAY_LEN(stored); i++)
        CHECK(strstr(list, stored[i]) != NULL);
    CHECK(strstr(list, "q8_K") == NULL);
}

/* ---- F16 / BF16 ---- */

static tt_f16 to_f16(float f)
{
    tt_f16 h;
    tt_quantize_row_f16(&f, &h, 1);
    return h;
}

static float from_f16(tt_f16 h)
{
    float f;
    tt_dequantize_row_f16(&h, &f, 1);
    return f;
}

static void test_f16_edges(void)
{
    CHECK_EQ_INT(to_f16(1.0f), 0x3c00);
    CHECK_EQ_INT(to_f16(-2.0f), 0xc000);
    CHECK_EQ_INT(to_f16(0.0f), 0x0000);
    CHECK_EQ_INT(to_f16(-0.0f), 0x8000);
    CHECK_EQ_INT(to_f16(65504.0f), 0x7bff); /* largest finite */
    CHECK_EQ_INT(to_f16(65519.0f), 0x7bff); /* below the midpoint */
    CHECK_EQ_INT(to_f16(65520.0f), 0x7c00); /* tie rounds to even: inf */
    CHECK_EQ_INT(to_f16(1e10f), 0x7c00);
    CHECK_EQ_INT(to_f16(-INFINITY), 0xfc00);
    CHECK_EQ_INT(to_f16(ldexpf(1, -24)), 0x0001); /* smallest subnormal */
    CHECK_EQ_INT(to_f16(ldexpf(1, -25)), 0x0000); /* tie to even: 0 */
    CHECK_EQ_INT(to_f16(ldexpf(3, -25)), 0x0002); /* tie to even: 2 */
    CHECK_EQ_INT(to_f16(ldexpf(1.0000001f, -25)), 0x0001);
    CHECK_EQ_INT(to_f16(ldexpf(1023, -24)), 0x03ff);     /* largest subnormal */
    CHECK_EQ_INT(to_f16(ldexpf(1, -14)), 0x0400);        /* smallest normal */
    CHECK_EQ_INT(to_f16(1.0f + ldexpf(1, -11)), 0x3c00); /* tie, even down */
    CHECK_EQ_INT(to_f16(1.0f + ldexpf(3, -11)), 0x3c02); /* tie, even up */
    CHECK_EQ_INT(to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3c01);
    const tt_f16 nan = to_f16(NAN);
    CHECK((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
    CHECK(isnan(from_f16(0x7e00)) && isnan(from_f16(0xfc01)));
    CHECK(from_f16(0x7c00) == INFINITY && from_f16(0xfc00) == -INFINITY);
    CHECK(from_f16(0x0001) == ldexpf(1, -24));
    CHECK(from_f16(0x8000) == 0.0f && signbit(from_f16(0x8000)));
    /* Every half survives half -> float -> half, NaNs stay NaN. */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = from_f16((tt_f16)h);
        const bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (is_nan ? !isnan(f) : to_f16(f) != h) bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_bf16_edges(void)
{
    tt_bf16 b[8];
    const float x[8] = {
        1.0f,
        bits_to_f32(0x3f808000), /* tie, even down */
        bits_to_f32(0x3f818000), /* tie, even up */
        bits_to_f32(0x3f808001), /* above the tie */
        bits_to_f32(0x00018000), /* subnormal tie, even up */
        bits_to_f32(0x7f7fffff), /* largest float rounds to inf */
        -INFINITY,
        bits_to_f32(0x7f800001), /* signalling NaN: quieted, stays NaN */
    };
    tt_quantize_row_bf16(x, b, 8);
    CHECK_EQ_INT(b[0], 0x3f80);
    CHECK_EQ_INT(b[1], 0x3f80);
    CHECK_EQ_INT(b[2], 0x3f82);
    CHECK_EQ_INT(b[3], 0x3f81);
    CHECK_EQ_INT(b[4], 0x0002);
    CHECK_EQ_INT(b[5], 0x7f80);
    CHECK_EQ_INT(b[6], 0xff80);
    CHECK_EQ_INT(b[7], 0x7fc0);
    float y[8];
    tt_dequantize_row_bf16(b, y, 8);
    CHECK(y[0] == 1.0f && y[2] == bits_to_f32(0x3f820000) && y[6] == -INFINITY && isnan(y[7]));
}

/* ---- dequantization of hand-built blocks ---- */

static void test_dequant_q4_0_q8_0(void)
{
    struct block_q4_0 b4 = {.d = 0x3800}; /* 0.5 */
    for (int j = 0; j < 16; j++)
        b4.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    tt_dequantize_row_q4_0(&b4, y, 32);
    for (int j = 0; j < 16; j++) {
        CHECK_NEAR(y[j], (j - 8) * 0.5, 0);
        CHECK_NEAR(y[j + 16], (7 - j) * 0.5, 0);
    }
    struct block_q8_0 b8 = {.d = 0x3400}; /* 0.25 */
    for (int j = 0; j < 32; j++)
        b8.qs[j] = (int8_t)(j * 8 - 128);
    tt_dequantize_row_q8_0(&b8, y, 32);
    for (int j = 0; j < 32; j++)
        CHECK_NEAR(y[j], (j * 8 - 128) * 0.25, 0);
}

/* The 6-bit scales and mins of a Q4_K/Q5_K block, packed as the format
 * describes: j < 4 in the low 6 bits of bytes j and j + 4; j >= 4 with low
 * nibbles in byte j + 4 (scale low, min high) and top 2 bits in the top of
 * bytes j - 4 (scale) and j (min). */
static const uint8_t kq_sc[8] = {1, 2, 17, 63, 5, 33, 48, 62};
static const uint8_t kq_m[8] = {0, 3, 40, 1, 63, 16, 2, 31};

static void pack_kq_scales(uint8_t s[12])
{
    memset(s, 0, 12);
    for (int j = 0; j < 4; j++) {
        s[j] = kq_sc[j] | (uint8_t)((kq_sc[j + 4] >> 4) << 6);
        s[j + 4] = kq_m[j] | (uint8_t)((kq_m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((kq_sc[j + 4] & 0xF) | ((kq_m[j + 4] & 0xF) << 4));
    }
}

static void test_dequant_q4_K(void)
{
    struct block_q4_K b = {.d = 0x3c00, .dmin = 0x3800}; /* 1.0, 0.5 */
    pack_kq_scales(b.scales);
    /* Literal bytes for the first sub-blocks, as read off the layout. */
    CHECK_EQ_INT(b.scales[0], 0x01);
    CHECK_EQ_INT(b.scales[1], 0x82); /* 2 | (33 >> 4) << 6 */
    CHECK_EQ_INT(b.scales[8], 0xF5); /* 5 | (63 & 15) << 4 */
    int q[256];
    for (int e = 0; e < 256; e++) {
        q[e] = (e * 7 + e / 32) % 16;
        const int g = e / 64, r = e % 64; /* element e: group g, nibble by r < 32 */
        if (r < 32)
            b.qs[32 * g + r] |= (uint8_t)q[e];
        else
            b.qs[32 * g + r - 32] |= (uint8_t)(q[e] << 4);
    }
    float y[256];
    tt_dequantize_row_q4_K(&b, y, 256);
    for (int e = 0; e < 256; e++)
        CHECK_NEAR(y[e], 1.0 * kq_sc[e / 32] * q[e] - 0.5 * kq_m[e / 32], 0);
    uint8_t sc, m;
    for (int j = 0; j < 8; j++) {
        tt_q4_K_scale_min(j, b.scales, &sc, &m);
        CHECK_EQ_INT(sc, kq_sc[j]);
        CHECK_EQ_INT(m, kq_m[j]);
    }
    CHECK_NEAR(y[0], 0.0, 0);            /* sub-block 0: sc 1, m 0; q 0 */
    CHECK_NEAR(y[33], 2.0 * 8 - 1.5, 0); /* sub-block 1: sc 2, m 3; q (231 + 1) % 16 = 8 */
    CHECK_NEAR(y[255], -15.5, 0);        /* sub-block 7: sc 62, m 31; q (1785 + 7) % 16 = 0 */
}

static void test_dequant_q5_K(void)
{
    struct block_q5_K b = {.d = 0x3800, .dmin = 0x3c00}; /* 0.5, 1.0 */
    pack_kq_scales(b.scales);
    int q[256];
    for (int e = 0; e < 256; e++) {
        q[e] = (e * 13 + e / 32 * 7 + 5) % 32; /* differs between e and e + 32 */
        const int g = e / 64, r = e % 64, l = r % 32;
        /* Low 4 bits as Q4_K; bit 4 in qh[l], bit 2g (first 32) or 2g+1. */
        b.qs[32 * g + l] |= (uint8_t)((q[e] & 15) << (r < 32 ? 0 : 4));
        b.qh[l] |= (uint8_t)((q[e] >> 4) << (2 * g + (r < 32 ? 0 : 1)));
    }
    float y[256];
    tt_dequantize_row_q5_K(&b, y, 256);
    for (int e = 0; e < 256; e++)
        CHECK_NEAR(y[e], 0.5 * kq_sc[e / 32] * q[e] - 1.0 * kq_m[e / 32], 0);
}

static void test_dequant_q6_K(void)
{
    struct block_q6_K b = {.d = 0x3800}; /* 0.5 */
    for (int j = 0; j < 16; j++)
        b.scales[j] = (int8_t)(j * 17 - 128);
    int q[256];
    for (int e = 0; e < 256; e++) {
        q[e] = (e * 5 + e / 16) % 64;
        /* Half h = e / 128; within it r = e % 128: quarter r / 32 picks the
         * ql byte (l or l + 32), its nibble, and the qh bit pair. */
        const int h = e / 128, r = e % 128, l = r % 32, quarter = r / 32;
        const int ql_index = 64 * h + l + (quarter & 1) * 32;
        b.ql[ql_index] |= (uint8_t)((q[e] & 15) << (quarter >= 2 ? 4 : 0));
        b.qh[32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * quarter));
    }
    float y[256];
    tt_dequantize_row_q6_K(&b, y, 256);
    for (int e = 0; e < 256; e++)
        CHECK_NEAR(y[e], 0.5 * b.scales[e / 16] * (q[e] - 32), 0);
}

static void test_dequant_q8_K(void)
{
    struct block_q8_K b = {.d = -0.125f};
    for (int j = 0; j < 256; j++)
        b.qs[j] = (int8_t)(j - 128);
    float y[256];
    tt_dequantize_row_q8_K(&b, y, 256);
    for (int j = 0; j < 256; j++)
        CHECK_NEAR(y[j], -0.125 * (j - 128), 0);
}

/* ---- quantization ---- */

static void test_round_trip_error(void)
{
    static const struct {
        enum tt_type type;
        double gauss, offset, uniform; /* NMSE bounds per input kind */
    } bound[] = {
        {TT_TYPE_F32, 0, 0, 0},
        {TT_TYPE_F16, 1e-7, 1e-7, 1e-7},
        {TT_TYPE_BF16, 5e-6, 5e-6, 5e-6},
        {TT_TYPE_Q4_0, 0.0085, 0.008, 0.005},
        {TT_TYPE_Q8_0, 3.5e-5, 3.5e-5, 2e-5},
        {TT_TYPE_Q4_K, 0.006, 0.0045, 0.0035},
        {TT_TYPE_Q5_K, 0.0016, 0.0012, 0.001},
        {TT_TYPE_Q6_K, 0.0004, 0.0004, 0.00025},
        {TT_TYPE_Q8_K, 6e-5, 6e-5, 2.5e-5},
    };
    const int64_t n = 8 * 4096;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (int kind = 0; kind < 3; kind++) {
        if (kind == 0) fill_gauss(x, n, 1.0f, 0.0f);
        if (kind == 1) fill_gauss(x, n, 0.02f, 0.01f); /* weight-like scale, off-centre */
        if (kind == 2) {
            for (int64_t i = 0; i < n; i++)
                x[i] = (float)(rng_uniform() * 2 - 1);
        }
        for (size_t t = 0; t < TT_ARRAY_LEN(bound); t++) {
            round_trip(bound[t].type, x, y, n);
            const double limit = kind == 0   ? bound[t].gauss
                                 : kind == 1 ? bound[t].offset
                                             : bound[t].uniform;
            const double e = nmse(x, y, n);
            if (!(e <= limit)) {
                fprintf(stderr, "  %s, input kind %d: nmse %.3g > %.3g\n",
                        tt_type_name(bound[t].type), kind, e, limit);
                test_failed_ = 1;
            }
        }
    }
    free(x);
    free(y);
}

/* Q4_0 levels are trunc(x/d + 8.5), d = -max/8 for the first element of
 * largest magnitude: integers in [-8, 7] come back exactly. */
static void test_quant_q4_0_levels(void)
{
    float x[32], y[32];
    for (int j = 0; j < 32; j++)
        x[j] = (float)((j * 5) % 16 - 8);
    x[3] = -8.0f; /* max magnitude, negative: d = 1 */
    struct block_q4_0 b;
    tt_quantize_row_q4_0(x, &b, 32);
    CHECK_EQ_INT(b.d, 0x3c00);
    tt_dequantize_row_q4_0(&b, y, 32);
    for (int j = 0; j < 32; j++)
        CHECK_NEAR(y[j], x[j], 0);
    /* A positive max maps to -8: d = -max/8; 16.5 truncates to 16, clamped. */
    memset(x, 0, sizeof(x));
    x[0] = 8.0f;
    x[1] = -8.0f;
    x[2] = 0.5f; /* x/d = -0.5: level trunc(8.0) = 8 -> 0 */
    tt_quantize_row_q4_0(x, &b, 32);
    CHECK_EQ_INT(b.d, 0xbc00); /* -1 */
    CHECK_EQ_INT(b.qs[0] & 15, 0);
    CHECK_EQ_INT(b.qs[1] & 15, 15);
    CHECK_EQ_INT(b.qs[2] & 15, 8);
}

/* Activation Q8_0 rounds half to even with multiplier 127/amax; the
 * llama-quantize variant rounds half away from zero. */
static void test_quant_q8_0_ties(void)
{
    float x[32] = {127.0f, 0.5f, 1.5f, 2.5f, -2.5f, -0.5f, 3.5f, 126.5f};
    for (int j = 8; j < 32; j++)
        x[j] = (float)(j - 20) * 0.25f;
    struct block_q8_0 act, ref;
    tt_quantize_row_q8_0(x, &act, 32);
    tt_quantize_row_q8_0_ref(x, &ref, 32);
    CHECK_EQ_INT(act.d, 0x3c00);
    CHECK_EQ_INT(ref.d, 0x3c00);
    const int want_act[8] = {127, 0, 2, 2, -2, 0, 4, 126};
    const int want_ref[8] = {127, 1, 2, 3, -3, -1, 4, 127};
    for (int j = 0; j < 8; j++) {
        CHECK_EQ_INT(act.qs[j], want_act[j]);
        CHECK_EQ_INT(ref.qs[j], want_ref[j]);
    }
    float zero[32] = {0};
    tt_quantize_row_q8_0(zero, &act, 32);
    CHECK_EQ_INT(act.d, 0);
    for (int j = 0; j < 32; j++)
        CHECK_EQ_INT(act.qs[j], 0);
}

/* The activation multiplier is 127/amax, which differs from the reference's
 * 1/(amax/127) in the last bit for some amax; find values of x where that
 * changes the level and check the 127/amax one is produced. */
static void test_quant_q8_0_multiplier(void)
{
    int found = 0;
    for (int i = 1; i < 8192 && found < 32; i++) {
        const float amax = 1.0f + (float)i / 8192;
        const float id_act = 127.0f / amax, id_ref = 1.0f / (amax / 127.0f);
        if (id_act == id_ref) continue;
        for (int k = 0; k < 126 && found < 32; k++) {
            float v = (k + 0.5f) / id_act;
            v = nextafterf(nextafterf(v, 0.0f), 0.0f);
            for (int u = 0; u < 5; u++, v = nextafterf(v, 1e9f)) {
                if (nearbyintf(v * id_act) == nearbyintf(v * id_ref)) continue;
                float x[32] = {amax, v};
                struct block_q8_0 b;
                tt_quantize_row_q8_0(x, &b, 32);
                CHECK_EQ_INT(b.qs[1], (int)nearbyintf(v * id_act));
                found++;
            }
        }
    }
    CHECK(found > 0);
}

static void test_quant_q8_K(void)
{
    float x[512];
    struct block_q8_K b[2];
    /* The first element of largest magnitude becomes -127 and d carries the
     * sign: here max = -127, so d = 1 and ties round to even. */
    memset(x, 0, sizeof(x));
    x[0] = -127.0f, x[1] = 0.5f, x[2] = 1.5f, x[3] = 2.5f, x[4] = -2.5f, x[5] = 127.0f;
    tt_quantize_row_q8_K(x, b, 256);
    CHECK_NEAR(b[0].d, 1.0, 0);
    const int want[6] = {-127, 0, 2, 2, -2, 127};
    for (int j = 0; j < 6; j++)
        CHECK_EQ_INT(b[0].qs[j], want[j]);
    /* Positive max first: d is negative, values are negated. */
    x[0] = 127.0f, x[5] = -127.0f;
    tt_quantize_row_q8_K(x, b, 256);
    CHECK_NEAR(b[0].d, -1.0, 0);
    CHECK_EQ_INT(b[0].qs[0], -127);
    CHECK_EQ_INT(b[0].qs[5], 127);
    CHECK_EQ_INT(b[0].qs[2], -2);
    /* bsums are the sums of groups of 16, on random data; a zero block has
     * d = 0 and zero sums. */
    fill_gauss(x, 256, 3.0f, 0.5f);
    memset(x + 256, 0, 256 * sizeof(float));
    tt_quantize_row_q8_K(x, b, 512);
    for (int g = 0; g < 16; g++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += b[0].qs[16 * g + j];
        CHECK_EQ_INT(b[0].bsums[g], sum);
        CHECK_EQ_INT(b[1].bsums[g], 0);
    }
    CHECK_NEAR(b[1].d, 0, 0);
    for (int j = 0; j < 256; j++)
        CHECK_NEAR(b[0].d * b[0].qs[j], x[j], fabsf(b[0].d) * 0.5001);
}

/* Zero rows come back exactly zero; constant rows come back close; rows with
 * inf and NaN quantize without undefined behaviour (the sanitizer build
 * checks that) and leave finite rows after them intact. */
static void test_quant_special_rows(void)
{
    const int64_t n = 512;
    float x[512], y[512];
    for (size_t t = 0; t < TT_ARRAY_LEN(all_types); t++) {
        const enum tt_type type = all_types[t];
        memset(x, 0, sizeof(x));
        round_trip(type, x, y, n);
        for (int64_t i = 0; i < n; i++)
            CHECK_NEAR(y[i], 0.0, 0);
        for (int64_t i = 0; i < n; i++)
            x[i] = i < 256 ? 0.75f : -0.3f;
        round_trip(type, x, y, n);
        for (int64_t i = 0; i < n; i++)
            CHECK_NEAR(y[i], x[i], fabsf(x[i]) * 0.02);
        fill_gauss(x, n, 1.0f, 0.0f);
        x[3] = NAN, x[40] = INFINITY, x[77] = -INFINITY;
        round_trip(type, x, y, n); /* junk in the first 256 only */
        CHECK(nmse(x + 256, y + 256, 256) < 0.01);
    }
}

/* ---- dot products ---- */

/* s = vec_dot(quantized w, quantized a) must equal the double dot of the
 * dequantized operands up to float rounding, and approximate the dot of the
 * original floats within the quantization error. */
static void check_vec_dot(enum tt_type wt, int n, double approx_tol)
{
    const struct tt_type_traits *w_tr = tt_type_get(wt);
    const enum tt_type at = w_tr->vec_dot_type;
    const struct tt_type_traits *a_tr = tt_type_get(at);
    float *w = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * n);
    float *wd = malloc(sizeof(float) * n), *ad = malloc(sizeof(float) * n);
    void *wq = malloc(tt_row_size(wt, n)), *aq = malloc(tt_row_size(at, n));
    fill_gauss(w, n, 0.05f, 0.0f);
    fill_gauss(a, n, 2.0f, 0.1f);
    w_tr->from_float(w, wq, n);
    a_tr->from_float(a, aq, n);
    w_tr->to_float(wq, wd, n);
    a_tr->to_float(aq, ad, n);
    double exact = 0, magnitude = 0, orig = 0, ww = 0, aa = 0;
    for (int i = 0; i < n; i++) {
        exact += (double)wd[i] * ad[i];
        magnitude += fabs((double)wd[i] * ad[i]);
        orig += (double)w[i] * a[i];
        ww += (double)w[i] * w[i];
        aa += (double)a[i] * a[i];
    }
    float s = NAN;
    w_tr->vec_dot(n, &s, wq, aq);
    if (!(fabs(s - exact) <= 2e-5 * magnitude + 1e-30) ||
        !(fabs(s - orig) <= approx_tol * sqrt(ww * aa))) {
        fprintf(stderr, "  %s . %s: dot %.9g, dequantized %.9g (|.| %.3g), float %.9g\n",
                w_tr->name, a_tr->name, s, exact, magnitude, orig);
        test_failed_ = 1;
    }
    free(w), free(a), free(wd), free(ad), free(wq), free(aq);
}

static void test_vec_dot(void)
{
    for (int rep = 0; rep < 4; rep++) {
        check_vec_dot(TT_TYPE_F32, 4096, 1e-6);
        check_vec_dot(TT_TYPE_F16, 4096, 1e-4);
        check_vec_dot(TT_TYPE_BF16, 4096, 5e-4);
        check_vec_dot(TT_TYPE_Q4_0, 4096, 0.01);
        check_vec_dot(TT_TYPE_Q8_0, 4096, 0.002);
        check_vec_dot(TT_TYPE_Q4_K, 4096, 0.01);
        check_vec_dot(TT_TYPE_Q5_K, 4096, 0.005);
        check_vec_dot(TT_TYPE_Q6_K, 4096, 0.003);
    }
}

/* Every format at its extreme levels and scales against extreme activations:
 * the integer sums must not overflow and must match the dequantized dot. */
static void check_extreme(enum tt_type wt, const void *w, int8_t aq_value)
{
    struct block_q8_0 a0[8];
    struct block_q8_K ak;
    const bool k = tt_type_get(wt)->vec_dot_type == TT_TYPE_Q8_K;
    const int n = 256;
    ak.d = 0.5f;
    memset(ak.qs, aq_value, sizeof(ak.qs));
    for (int g = 0; g < 16; g++)
        ak.bsums[g] = (int16_t)(16 * aq_value);
    for (int b = 0; b < 8; b++) {
        a0[b].d = 0x3800;
        memset(a0[b].qs, aq_value, sizeof(a0[b].qs));
    }
    float wd[256];
    tt_type_get(wt)->to_float(w, wd, n);
    double exact = 0;
    for (int i = 0; i < n; i++)
        exact += (double)wd[i] * 0.5 * aq_value;
    float s;
    tt_type_get(wt)->vec_dot(n, &s, w, k ? (const void *)&ak : (const void *)a0);
    CHECK_NEAR(s, exact, fabs(exact) * 1e-6);
}

static void test_vec_dot_extremes(void)
{
    for (int sign = 0; sign < 2; sign++) {
        const int8_t av = sign ? -128 : 127;
        struct block_q4_K q4k;
        q4k.d = q4k.dmin = 0x3c00;
        memset(q4k.scales, 0xFF, sizeof(q4k.scales)); /* all scales and mins 63 */
        memset(q4k.qs, 0xFF, sizeof(q4k.qs));
        check_extreme(TT_TYPE_Q4_K, &q4k, av);
        struct block_q5_K q5k;
        q5k.d = q5k.dmin = 0x3c00;
        memset(q5k.scales, 0xFF, sizeof(q5k.scales));
        memset(q5k.qs, 0xFF, sizeof(q5k.qs));
        memset(q5k.qh, 0xFF, sizeof(q5k.qh));
        check_extreme(TT_TYPE_Q5_K, &q5k, av);
        struct block_q6_K q6k;
        q6k.d = 0x3c00;
        memset(q6k.ql, sign ? 0x00 : 0xFF, sizeof(q6k.ql)); /* q = 31 or -32 */
        memset(q6k.qh, sign ? 0x00 : 0xFF, sizeof(q6k.qh));
        memset(q6k.scales, sign ? 0x80 : 0x7F, sizeof(q6k.scales)); /* -128 or 127 */
        check_extreme(TT_TYPE_Q6_K, &q6k, av);
        struct block_q8_0 q80[8];
        struct block_q4_0 q40[8];
        for (int b = 0; b < 8; b++) {
            q80[b].d = q40[b].d = 0x3c00;
            memset(q80[b].qs, 0x80, sizeof(q80[b].qs)); /* -128 */
            memset(q40[b].qs, 0x00, sizeof(q40[b].qs)); /* -8 */
        }
        check_extreme(TT_TYPE_Q8_0, q80, av);
        check_extreme(TT_TYPE_Q4_0, q40, av);
    }
}

/* ---- byte-identity with llama-quantize ---- */

/* Just enough GGUF to find tensors: see src/gguf/gguf.h for the layout.
 * Lengths are checked against the buffer; the files are trusted test data. */
struct mini_gguf {
    unsigned char *buf;
    size_t size, pos, data;
    uint64_t n_tensors, tensors_at;
};

static bool mg_read(struct mini_gguf *g, void *out, size_t n)
{
    if (g->pos + n > g->size) return false;
    if (out) memcpy(out, g->buf + g->pos, n);
    g->pos += n;
    return true;
}

static bool mg_skip_value(struct mini_gguf *g, uint32_t type, int depth)
{
    static const uint8_t size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    uint64_t len;
    uint32_t elem;
    if (type == 8) return mg_read(g, &len, 8) && mg_read(g, NULL, len);
    if (type != 9) return type < 13 && mg_read(g, NULL, size[type]);
    if (depth > 4 || !mg_read(g, &elem, 4) || !mg_read(g, &len, 8)) return false;
    for (uint64_t i = 0; i < len; i++) {
        if (!mg_skip_value(g, elem, depth + 1)) return false;
    }
    return true;
}

static bool mg_open(struct mini_gguf *g, const char *path)
{
    memset(g, 0, sizeof(*g));
    g->buf = test_read_file(path, &g->size);
    uint32_t version, align = 32;
    uint64_t n_kv;
    if (!g->buf || !mg_read(g, NULL, 4) || !mg_read(g, &version, 4) ||
        !mg_read(g, &g->n_tensors, 8) || !mg_read(g, &n_kv, 8))
        return false;
    for (uint64_t i = 0; i < n_kv; i++) {
        uint64_t key_len;
        uint32_t type;
        if (!mg_read(g, &key_len, 8) || key_len > 256 || g->pos + key_len > g->size) return false;
        const bool is_align = key_len == 17 && !memcmp(g->buf + g->pos, "general.alignment", 17);
        if (!mg_read(g, NULL, key_len) || !mg_read(g, &type, 4)) return false;
        if (is_align && type == 4) {
            if (!mg_read(g, &align, 4)) return false;
        } else if (!mg_skip_value(g, type, 0)) {
            return false;
        }
    }
    g->tensors_at = g->pos;
    for (uint64_t i = 0; i < g->n_tensors; i++) { /* walk to the end of the infos */
        uint64_t len, ne;
        uint32_t n_dims;
        if (!mg_read(g, &len, 8) || !mg_read(g, NULL, len) || !mg_read(g, &n_dims, 4) || n_dims > 4)
            return false;
        for (uint32_t d = 0; d < n_dims; d++)
            mg_read(g, &ne, 8);
        if (!mg_read(g, NULL, 12)) return false;
    }
    g->data = (g->pos + align - 1) / align * align;
    return g->data <= g->size;
}

/* Tensor number i: name (copied), ne0, row count, type, data. */
static bool mg_tensor(struct mini_gguf *g, uint64_t index, char name[257], int64_t *ne0,
                      int64_t *rows, uint32_t *type, const unsigned char **data)
{
    g->pos = g->tensors_at;
    for (uint64_t i = 0; i <= index; i++) {
        uint64_t len, ne[4] = {1, 1, 1, 1}, offset;
        uint32_t n_dims;
        if (!mg_read(g, &len, 8) || len > 256 || g->pos + len > g->size) return false;
        memcpy(name, g->buf + g->pos, len);
        name[len] = 0;
        mg_read(g, NULL, len);
        if (!mg_read(g, &n_dims, 4) || n_dims > 4) return false;
        for (uint32_t d = 0; d < n_dims; d++)
            mg_read(g, &ne[d], 8);
        if (!mg_read(g, type, 4) || !mg_read(g, &offset, 8)) return false;
        *ne0 = (int64_t)ne[0];
        *rows = (int64_t)(ne[1] * ne[2] * ne[3]);
        *data = g->buf + g->data + offset;
    }
    return true;
}

static bool mg_find(struct mini_gguf *g, const char *want, int64_t *ne0, int64_t *rows,
                    uint32_t *type, const unsigned char **data)
{
    char name[257];
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (mg_tensor(g, i, name, ne0, rows, type, data) && !strcmp(name, want)) return true;
    }
    return false;
}

/* Re-quantizes every quantized tensor of `quantized` from the F16 tensor
 * of the same name in `source`; returns the number of rows that differ. */
static int64_t requantize_and_compare(struct mini_gguf *source, struct mini_gguf *quantized,
                                      int *n_tensors)
{
    int64_t bad_rows = 0;
    char name[257];
    for (uint64_t i = 0; i < quantized->n_tensors; i++) {
        int64_t ne0, rows, sne0, srows;
        uint32_t type, stype;
        const unsigned char *qdata, *sdata;
        if (!mg_tensor(quantized, i, name, &ne0, &rows, &type, &qdata)) return -1;
        const struct tt_type_traits *tr = tt_type_get(type);
        if (!tr || !tr->is_quantized) continue;
        if (!mg_find(source, name, &sne0, &srows, &stype, &sdata) || stype != TT_TYPE_F16 ||
            sne0 != ne0 || srows != rows)
            return -1;
        /* llama-quantize writes Q8_0 weights with its own rounding. */
        const tt_from_float_fn quantize =
            type == TT_TYPE_Q8_0 ? tt_quantize_row_q8_0_ref : tr->from_float;
        const size_t row_bytes = tt_row_size(type, ne0);
        float *row = malloc(sizeof(float) * ne0);
        unsigned char *out = malloc(row_bytes);
        for (int64_t r = 0; r < rows; r++) {
            tt_dequantize_row_f16(sdata + r * ne0 * 2, row, ne0);
            quantize(row, out, ne0);
            bad_rows += memcmp(out, qdata + r * row_bytes, row_bytes) != 0;
        }
        free(row);
        free(out);
        (*n_tensors)++;
    }
    return bad_rows;
}

static void test_matches_llama_quantize(void)
{
    const char *src_path = test_shared_path("models/synth-llama.f16.gguf");
    if (!test_file_exists(src_path)) {
        TEST_SKIP("%s not found", src_path);
        return;
    }
    const char *variants[] = {"models/synth-llama.q4_k_m.gguf", "models/synth-llama.q8_0.gguf",
                              "models/synth-qwen3.q4_k_m.gguf"};
    const char *sources[] = {"models/synth-llama.f16.gguf", "models/synth-llama.f16.gguf",
                             "models/synth-qwen3.f16.gguf"};
    for (size_t v = 0; v < TT_ARRAY_LEN(variants); v++) {
        struct mini_gguf src, q;
        const bool ok = mg_open(&src, test_shared_path(sources[v])) &&
                        mg_open(&q, test_shared_path(variants[v]));
        CHECK(ok);
        int n_tensors = 0;
        const int64_t bad = ok ? requantize_and_compare(&src, &q, &n_tensors) : -1;
        if (bad != 0 || n_tensors == 0) {
            fprintf(stderr, "  %s: %lld rows differ (%d tensors compared)\n", variants[v],
                    (long long)bad, n_tensors);
            test_failed_ = 1;
        }
        free(src.buf);
        free(q.buf);
    }
}

static const struct test_case cases[] = {
    {"traits", test_traits},
    {"row_size", test_row_size},
    {"names", test_names},
    {"f16_edges", test_f16_edges},
    {"bf16_edges", test_bf16_edges},
    {"dequant_q4_0_q8_0", test_dequant_q4_0_q8_0},
    {"dequant_q4_K", test_dequant_q4_K},
    {"dequant_q5_K", test_dequant_q5_K},
    {"dequant_q6_K", test_dequant_q6_K},
    {"dequant_q8_K", test_dequant_q8_K},
    {"round_trip_error", test_round_trip_error},
    {"quant_q4_0_levels", test_quant_q4_0_levels},
    {"quant_q8_0_ties", test_quant_q8_0_ties},
    {"quant_q8_0_multiplier", test_quant_q8_0_multiplier},
    {"quant_q8_K", test_quant_q8_K},
    {"quant_special_rows", test_quant_special_rows},
    {"vec_dot", test_vec_dot},
    {"vec_dot_extremes", test_vec_dot_extremes},
    {"matches_llama_quantize", test_matches_llama_quantize},
};

TEST_MAIN(cases)
