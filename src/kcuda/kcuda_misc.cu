/*
 * kcuda_misc.cu: the small element-wise and per-token steps: SwiGLU, biases,
 * residual adds, row gathers, a deterministic F32 sum and the block maxima
 * of a row of logits. (The MoE steps are in kcuda_moe.cu.)
 */
#include "kcuda_impl.cuh"

__global__ void k_swiglu(float *a, int64_t lda, const float *b, int64_t ldb, int n, int64_t total)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int64_t t = i / n, j = i % n;
    const float g = a[t * lda + j];
    a[t * lda + j] = g / (1.0f + expf(-g)) * b[t * ldb + j];
}

int kcuda_swiglu_ld(struct kcuda *k, float *d_a, int64_t lda, const float *d_b, int64_t ldb,
                    int64_t n_tok, int64_t n)
{
    const int64_t total = n_tok * n;
    if (total <= 0) return 0;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_swiglu, dim3(kc_blocks(total, 256)), dim3(256), d_a, lda, d_b, ldb, (int)n, total);
    KC_PROF_END(k, "swiglu");
    return 0;
}

int kcuda_swiglu(struct kcuda *k, float *d_a, const float *d_b, int64_t n_tok, int64_t n, int64_t ld)
{
    return kcuda_swiglu_ld(k, d_a, ld, d_b, ld, n_tok, n);
}

__global__ void k_add_bias(float *y, const float *bias, int n, int64_t ld, int64_t total)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    y[(i / n) * ld + i % n] += bias[i % n];
}

int kcuda_add_bias(struct kcuda *k, float *d_y, const float *d_bias, int64_t n_tok, int64_t n,
                   int64_t ld)
{
    const int64_t total = n_tok * n;
    if (total <= 0) return 0;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_add_bias, dim3(kc_blocks(total, 256)), dim3(256), d_y, d_bias, (int)n, ld, total);
    KC_PROF_END(k, "add_bias");
    return 0;
}

__global__ void k_add(float *y, const float *x, int64_t n)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

int kcuda_add(struct kcuda *k, float *d_y, const float *d_x, int64_t n)
{
    if (n <= 0) return 0;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_add, dim3(kc_blocks(n, 256)), dim3(256), d_y, d_x, n);
    KC_PROF_END(k, "add");
    return 0;
}

__global__ void k_gather_rows(const float *x, const int32_t *rows, int64_t n, float *out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const float *src = x + (size_t)rows[blockIdx.x] * n;
    float *dst = out + (size_t)blockIdx.x * n;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

int kcuda_gather_rows(struct kcuda *k, const float *d_x, const int32_t *d_rows, int64_t n_rows,
                      int64_t n, float *d_out)
{
    if (n_rows <= 0) return 0;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_gather_rows, dim3((unsigned)n_rows), dim3(256), d_x, d_rows, n, d_out);
    KC_PROF_END(k, "gather_rows");
    return 0;
}

__global__ void k_sum_f32(const float *x, int64_t n, float *out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ double part[32];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i];
    s = kc_warp_sum_d(s);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += part[i];
        out[0] = (float)t;
    }
}

int kcuda_sum_f32(struct kcuda *k, const float *d_x, int64_t n, float *d_out)
{
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_sum_f32, dim3(1), dim3(1024), d_x, n, d_out);
    KC_PROF_END(k, "sum_f32");
    return 0;
}

/* Warp w: the largest of x[64w .. 64w + 64), two elements per lane (NaN
 * ignored, as fmaxf does; an empty tail counts as -inf). */
__global__ void k_block_max64(const float *__restrict__ x, int n, float *__restrict__ out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int w = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (w * 64 >= n) return;
    const int i = 64 * w + lane;
    const float m = kc_warp_max(fmaxf(i < n ? x[i] : -INFINITY, i + 32 < n ? x[i + 32] : -INFINITY));
    if (lane == 0) out[w] = m;
}

int kcuda_block_max64(struct kcuda *k, const float *d_x, int64_t n, float *d_out)
{
    if (n <= 0) return 0;
    if (n > INT32_MAX - 64) return tt_error_set(TT_EINVAL, "block maxima of %lld values", (long long)n);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_block_max64, dim3(kc_blocks((n + 63) / 64 * 32, 256)), dim3(256), d_x, (int)n, d_out);
    KC_PROF_END(k, "block_max");
    return 0;
}
