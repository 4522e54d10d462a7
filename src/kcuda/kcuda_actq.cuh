/*
 * kcuda_actq.cuh: activation rows converted to Q8_0 / Q8_K on the device,
 * with quant.c's rounding (kcuda_quant.cu states the rules), one warp per
 * quantization block. Shared by the conversion kernels (kcuda_quant.cu) and
 * by the kernels that convert their own outputs for the next product
 * (kcuda_matvec.cu, kcuda_attn.cu; struct kcuda_act_out in kcuda.h):
 *   - kc_q8_0_store / kc_q8_K_store: one block from values in the lanes;
 *   - kc_convert_block_warp: one block of finished rows, by one warp;
 *   - kc_convert_rows_block: whole rows, RMS-normed first when asked, by a
 *     whole thread block (the norm needs the sum over the row).
 * Rows read here were written by other blocks of the same launch, after a
 * ticket (__threadfence, atomicAdd) said they are done: they are read with
 * __ldcg, from L2, never from a possibly stale L1 line.
 */
#ifndef TT_KCUDA_ACTQ_CUH
#define TT_KCUDA_ACTQ_CUH

#include "kcuda_impl.cuh"

/* Elements of one quantization block of an activation type (Q8_0 or Q8_K). */
__host__ __device__ __forceinline__ int kc_q8_block(int type) { return type == KCUDA_Q8_K ? 256 : 32; }

__device__ __forceinline__ int8_t kc_clamp_i8(int v) { return (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v); }

/* Q8_0 block b of a row of n (n int8 values, then a float scale per block):
 * lane l holds element 32b + l. d = F16(amax / 127), q = rint(v * 127 / amax). */
__device__ __forceinline__ void kc_q8_0_store(float v, uint8_t *row, int n, int b, int lane)
{
    const float amax = kc_warp_max(fabsf(v));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    ((int8_t *)row)[32 * b + lane] = kc_clamp_i8(__float2int_rn(v * id));
    if (lane == 0) ((float *)(row + n))[b] = __half2float(__float2half_rn(amax / 127.0f));
}

/* Q8_K block b of a row of n: lane l holds elements 256b + 8l + i in v[i].
 * The first element of largest magnitude is the max; q = rint(-127 / max *
 * v), d = 1 / (-127 / max). */
__device__ __forceinline__ void kc_q8_K_store(const float v[8], uint8_t *row, int n, int b, int lane)
{
    const int j0 = 256 * b + 8 * lane;
    float amax = 0.0f, mx = 0.0f;
    int at = 1 << 30;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (fabsf(v[i]) > amax) {
            amax = fabsf(v[i]);
            mx = v[i];
            at = j0 + i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float a2 = __shfl_xor_sync(0xffffffffu, amax, o);
        const float m2 = __shfl_xor_sync(0xffffffffu, mx, o);
        const int at2 = __shfl_xor_sync(0xffffffffu, at, o);
        if (a2 > amax || (a2 == amax && at2 < at)) {
            amax = a2;
            mx = m2;
            at = at2;
        }
    }
    union { int8_t q[8]; uint2 u; } pk;
    float *ds = (float *)(row + n);
    if (amax == 0.0f) {
        pk.u = make_uint2(0, 0);
        if (lane == 0) ds[b] = 0.0f;
    } else {
        const float iscale = -127.0f / mx;
#pragma unroll
        for (int i = 0; i < 8; i++) pk.q[i] = kc_clamp_i8(__float2int_rn(iscale * v[i]));
        if (lane == 0) ds[b] = 1.0f / iscale;
    }
    *(uint2 *)(row + j0) = pk.u;
}

/* Whether conv can take rows of n outputs (host side, every kernel that
 * converts its outputs checks it): a Q8 type whose blocks divide n, and
 * rows of room enough, 16-byte aligned. */
static inline bool kc_act_out_fits(const struct kcuda_act_out *conv, int64_t n)
{
    return (conv->type == KCUDA_Q8_0 || conv->type == KCUDA_Q8_K) && conv->data && n % kc_q8_block(conv->type) == 0 &&
           conv->stride >= kcuda_act_row_bytes(conv->type, n) && (uintptr_t)conv->data % 16 == 0 &&
           conv->stride % 16 == 0;
}

/* Where kernels write their outputs converted (the device side of struct
 * kcuda_act_out): type KCUDA_Q8_0 or KCUDA_Q8_K; data == NULL: none. */
struct kc_act_dst {
    int type;
    uint8_t *data;
    size_t stride;
    const float *norm;
    float eps;
    float *yf;
    int *count;
};

/* Element j of a row, RMS-normed as ops_rmsnorm when the destination asks. */
__device__ __forceinline__ float kc_dst_value(const kc_act_dst &d, const float *xr, int j, float scale)
{
    const float x = __ldcg(xr + j);
    return d.norm ? __fmul_rn(__fmul_rn(x, scale), d.norm[j]) : x;
}

/* One warp (lane = its lane) converts quantization block b of rows u <
 * n_rows of x (rows ld floats apart, n elements each), without a norm. */
__device__ __forceinline__ void kc_convert_block_warp(const kc_act_dst &d, const float *x, int64_t ld, int n_rows,
                                                      int n, int b, int lane)
{
    for (int u = 0; u < n_rows; u++) {
        const float *xr = x + (size_t)u * ld;
        uint8_t *row = d.data + (size_t)u * d.stride;
        if (d.type == KCUDA_Q8_K) {
            float v[8];
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = __ldcg(xr + 256 * b + 8 * lane + i);
            kc_q8_K_store(v, row, n, b, lane);
        } else {
            kc_q8_0_store(__ldcg(xr + 32 * b + lane), row, n, b, lane);
        }
    }
}

/* Threads tid < nth of a block (nth a multiple of 32, at most 1024) convert
 * rows u < n_rows of x (ld floats apart, n elements), RMS-normed with
 * d.norm first when it is set (the sum of squares in double, as
 * ops_rmsnorm); the normed rows also go to d.yf ([n_rows][n]) when set.
 * Every thread of the block calls it (it synchronizes). */
__device__ __forceinline__ void kc_convert_rows_block(const kc_act_dst &d, const float *x, int64_t ld, int n_rows,
                                                      int n, int tid, int nth)
{
    __shared__ double kc_part[32];
    const int lane = tid & 31, warp = tid >> 5, n_warps = nth >> 5, qb = kc_q8_block(d.type);
    for (int u = 0; u < n_rows; u++) {
        const float *xr = x + (size_t)u * ld;
        float scale = 1.0f;
        if (d.norm) {
            double s = 0.0;
            for (int i = tid; i < n; i += nth) {
                const float v = __ldcg(xr + i);
                s += (double)__fmul_rn(v, v);
            }
            s = kc_warp_sum_d(s);
            if (lane == 0) kc_part[warp] = s;
            __syncthreads();
            s = 0.0;
            for (int i = 0; i < n_warps; i++) s += kc_part[i];
            scale = 1.0f / sqrtf((float)(s / (double)n) + d.eps);
            __syncthreads(); /* kc_part is rewritten for the next row */
        }
        uint8_t *row = d.data + (size_t)u * d.stride;
        for (int b = warp; b < n / qb; b += n_warps) {
            if (d.type == KCUDA_Q8_K) {
                float v[8];
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = kc_dst_value(d, xr, 256 * b + 8 * lane + i, scale);
                kc_q8_K_store(v, row, n, b, lane);
            } else {
                kc_q8_0_store(kc_dst_value(d, xr, 32 * b + lane, scale), row, n, b, lane);
            }
        }
        if (d.yf)
            for (int i = tid; i < n; i += nth) d.yf[(size_t)u * n + i] = kc_dst_value(d, xr, i, scale);
    }
}

#endif
