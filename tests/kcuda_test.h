/*
 * kcuda_test.h: what the CUDA kernel tests (tests/test_kcuda*.c) share: the
 * one device context per test binary, a seeded random generator, device
 * buffers and copies, the normalized-MSE check, and the CPU side of the
 * product tests (random quantized weights and their scalar-dot reference).
 *
 * Invariants:
 *   1. gpu() creates the context once, with 256 MiB of scratch, and skips
 *      the calling case when there is no GPU; every other helper here
 *      assumes gpu() has returned it.
 *   2. dev() and dev_from() abort on an allocation failure: a test buffer
 *      that cannot be had is a broken machine, not a test result. Each
 *      buffer carries KCUDA_WEIGHT_PAD spare bytes, as weights do.
 *   3. The generator is a fixed-seed LCG per binary: a full run sees the
 *      same inputs every time, but a case's inputs depend on the cases run
 *      before it (a case run alone by name sees other inputs).
 * Every function is static inline: each test binary includes this and uses
 * only some of them. Include it only inside #ifdef TT_HAVE_CUDA.
 */
#ifndef TT_KCUDA_TEST_H
#define TT_KCUDA_TEST_H

#include "test.h"

#include "kcuda/kcuda.h"
#include "quant/quant.h"

static struct kcuda *K;
static bool k_tried;

/* The shared context, or NULL (and the case skipped) without a GPU. */
static inline struct kcuda *gpu(void)
{
    if (!k_tried) {
        k_tried = true;
        tt_base_init();
        if (kcuda_device_count() > 0 && kcuda_create(&K, 0, 256u << 20) != 0) {
            fprintf(stderr, "  kcuda_create: %s\n", tt_error_detail());
            K = NULL;
        }
    }
    if (!K) TEST_SKIP("no CUDA GPU (cudaGetDeviceCount found none)");
    return K;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static inline void fill(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) x[i] = frand() * scale;
}

/* Device buffers (aborting when the device is out of memory) and copies. */
static inline void *dev(size_t bytes)
{
    void *p = NULL;
    if (kcuda_malloc(K, &p, bytes + KCUDA_WEIGHT_PAD, "test buffer")) {
        fprintf(stderr, "  %s\n", tt_error_detail());
        abort();
    }
    return p;
}
static inline void *dev_from(const void *src, size_t bytes)
{
    void *p = dev(bytes);
    TT_ASSERT(kcuda_upload(K, p, src, bytes) == 0 && kcuda_sync(K) == 0);
    return p;
}
static inline void to_host(void *dst, const void *src, size_t bytes)
{
    int err = kcuda_download(K, dst, src, bytes);
    if (!err) err = kcuda_sync(K);
    if (err) fprintf(stderr, "  %s\n", tt_error_detail());
    TT_ASSERT(err == 0);
}

/* sum (a - ref)^2 / sum ref^2; infinite when a holds a NaN. */
static inline double nmse(const float *a, const float *ref, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
        if (a[i] != a[i]) return INFINITY;
    }
    return den > 0.0 ? num / den : num;
}

#define CHECK_NMSE(what, a, ref, n, bound)                                                 \
    do {                                                                                   \
        const double e_ = nmse(a, ref, n);                                                 \
        if (!(e_ <= (bound))) {                                                            \
            fprintf(stderr, "  %s:%d: %s: nmse %.3g > %.3g\n", __FILE__, __LINE__, what, e_, \
                    (double)(bound));                                                      \
            test_failed_ = 1;                                                              \
        }                                                                                  \
    } while (0)

/* n_rows random rows of n_in elements quantized by quant.c. */
static inline uint8_t *make_weight(enum tt_type t, int64_t n_in, int64_t n_rows, float scale)
{
    const size_t rb = tt_row_size(t, n_in);
    uint8_t *w = malloc(rb * (size_t)n_rows + KCUDA_WEIGHT_PAD);
    float *row = malloc(sizeof(float) * (size_t)n_in);
    for (int64_t r = 0; r < n_rows; r++) {
        fill(row, n_in, scale);
        tt_type_get(t)->from_float(row, w + (size_t)r * rb, n_in);
    }
    free(row);
    return w;
}

/* out[t][r] = W[r] . x[t] with the CPU's activation conversion and scalar dots. */
static inline void ref_products(enum tt_type t, const uint8_t *w, int64_t n_in, int64_t n_out,
                                const float *x, int64_t n_tok, float *out)
{
    const enum tt_type vt = tt_type_get(t)->vec_dot_type;
    const size_t rb = tt_row_size(t, n_in), ab = tt_row_size(vt, n_in);
    uint8_t *a = malloc(ab);
    for (int64_t k = 0; k < n_tok; k++) {
        tt_type_get(vt)->from_float(x + k * n_in, a, n_in);
        for (int64_t r = 0; r < n_out; r++)
            tt_type_get(t)->vec_dot((int)n_in, &out[k * n_out + r], w + (size_t)r * rb, a);
    }
    free(a);
}

/* The SwiGLU output of one gate and up value, as the CPU computes it. */
static inline float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

#endif
