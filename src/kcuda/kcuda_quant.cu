/*
 * kcuda_quant.cu: activation conversion (fused with RMSNorm) and weight
 * dequantization.
 *
 * The Q8_0 and Q8_K conversions reproduce quant.c's activation quantizers
 * bit for bit: Q8_0 takes d = F16(amax / 127) and q = rint(x * 127 / amax);
 * Q8_K takes the first element of largest magnitude as max, q =
 * rint(-127 / max * x), d = 1 / (-127 / max); rounding is to nearest even in
 * both, as tt_nearest_int. One block of threads handles one token row: it
 * sums the squares (in double, as ops_rmsnorm), then each warp converts
 * whole quantization blocks, recomputing the normed values it needs.
 */
#include "kcuda_impl.cuh"

#include <stdlib.h>


static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

size_t kcuda_act_row_bytes(int type, int64_t n)
{
    switch (type) {
    case KCUDA_F32: return align16((size_t)n * 4);
    case KCUDA_F16: case KCUDA_BF16: return align16((size_t)n * 2);
    case KCUDA_Q8_0: return align16((size_t)n + 4 * (size_t)(n / 32));
    case KCUDA_Q8_K: return align16((size_t)n + 4 * (size_t)(n / 256));
    default: return 0;
    }
}

#define NC_THREADS 128
#define NC_CHUNK 1024 /* elements one block converts: each warp 256 (8 per lane) */

/* Sum of the squares of row xr (n floats), in double as ops_rmsnorm, over
 * the block: eight loads of each thread in flight (16-byte ones when the
 * row is aligned), so the row costs about one memory latency. */
__device__ __forceinline__ double nc_sum_squares(const float *__restrict__ xr, int n, bool vec4)
{
    __shared__ double part[NC_THREADS / 32];
    double s = 0.0;
    if (vec4) {
        const float4 *x4 = (const float4 *)xr;
        const int n4 = n >> 2;
        for (int i = threadIdx.x; i < n4; i += 8 * NC_THREADS) {
            float4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = i + u * NC_THREADS < n4 ? x4[i + u * NC_THREADS] : make_float4(0, 0, 0, 0);
#pragma unroll
            for (int u = 0; u < 8; u++)
                s += ((double)__fmul_rn(v[u].x, v[u].x) + (double)__fmul_rn(v[u].y, v[u].y)) +
                     ((double)__fmul_rn(v[u].z, v[u].z) + (double)__fmul_rn(v[u].w, v[u].w));
        }
    } else {
        for (int i = threadIdx.x; i < n; i += 8 * NC_THREADS) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = i + u * NC_THREADS < n ? xr[i + u * NC_THREADS] : 0.0f;
#pragma unroll
            for (int u = 0; u < 8; u++) s += (double)__fmul_rn(v[u], v[u]);
        }
    }
    s = kc_warp_sum_d(s);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    s = 0.0;
    for (int i = 0; i < NC_THREADS / 32; i++) s += part[i];
    return s;
}

/* Eight consecutive floats from p (16-byte loads when aligned). */
__device__ __forceinline__ void nc_load8(const float *__restrict__ p, bool vec4, float *v)
{
    if (vec4) {
        const float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = p[i];
    }
}

/* The conversions of one launch: output z of every row in type[z]. */
struct nc_outs {
    int type[KCUDA_CONVERT_MAX];
    uint8_t *dst[KCUDA_CONVERT_MAX];
    size_t stride[KCUDA_CONVERT_MAX];
};

/* Block (token t, chunk c, output z): every block sums the squares of the
 * whole row (the row is small and cached), then each warp converts 256
 * elements of its chunk, 8 consecutive ones per lane, whose norm weights it
 * loaded before waiting for the previous kernel (weights never depend on
 * it). Q8 blocks never straddle warps (256 = 8 x 32 = 1 x 256). Rows of a
 * length that is not a multiple of 8 take the element loops (F32, F16,
 * BF16). Output 0 also writes yf. */
__global__ void __launch_bounds__(NC_THREADS) k_norm_convert(const float *__restrict__ x, int64_t ld, int n,
                                                             const float *__restrict__ w, float eps, int do_norm,
                                                             float *__restrict__ yf_all, const nc_outs o)
{
    kc_pdl_trigger();
    const int64_t t = blockIdx.x;
    const int T = o.type[blockIdx.z];
    float *__restrict__ yf = blockIdx.z == 0 ? yf_all : NULL;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j0 = blockIdx.y * NC_CHUNK + 256 * warp + 8 * lane; /* this lane's 8 elements */
    const bool by8 = n % 8 == 0, lane_on = by8 && j0 < n;
    const bool wvec = w && (uintptr_t)w % 16 == 0;
    float wv[8] = { 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f };
    if (do_norm && w && lane_on) nc_load8(w + j0, wvec, wv);
    kc_pdl_wait();
    const float *xr = x + t * ld;
    uint8_t *dr = o.dst[blockIdx.z] + (size_t)t * o.stride[blockIdx.z];
    const bool xvec = (uintptr_t)xr % 16 == 0;
    const float scale = do_norm ? 1.0f / sqrtf((float)(nc_sum_squares(xr, n, xvec && n % 4 == 0) / (double)n) + eps)
                                : 1.0f;
#define NC_Y(j) (do_norm ? __fmul_rn(__fmul_rn(xr[j], scale), w ? w[j] : 1.0f) : xr[j])
    if (!by8) { /* odd lengths: element by element (never a Q8 type) */
        const int c0 = blockIdx.y * NC_CHUNK, c1 = min(n, c0 + NC_CHUNK);
        for (int i = c0 + threadIdx.x; i < c1; i += NC_THREADS) {
            const float y = NC_Y(i);
            if (yf) yf[(size_t)t * n + i] = y;
            if (T == KCUDA_F32) ((float *)dr)[i] = y;
            else if (T == KCUDA_F16) ((__half *)dr)[i] = __float2half_rn(y);
            else if (T == KCUDA_BF16) ((__nv_bfloat16 *)dr)[i] = __float2bfloat16_rn(y);
        }
        return;
    }
#undef NC_Y
    float v[8];
    if (lane_on) {
        nc_load8(xr + j0, xvec, v);
        if (do_norm)
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = __fmul_rn(__fmul_rn(v[i], scale), wv[i]);
        if (yf) {
            float *yr = yf + (size_t)t * n + j0;
#pragma unroll
            for (int i = 0; i < 8; i++) yr[i] = v[i];
        }
    }
    if (T == KCUDA_F32) {
        if (lane_on)
#pragma unroll
            for (int i = 0; i < 8; i++) ((float *)dr)[j0 + i] = v[i];
    } else if (T == KCUDA_F16) {
        if (lane_on)
#pragma unroll
            for (int i = 0; i < 8; i++) ((__half *)dr)[j0 + i] = __float2half_rn(v[i]);
    } else if (T == KCUDA_BF16) {
        if (lane_on)
#pragma unroll
            for (int i = 0; i < 8; i++) ((__nv_bfloat16 *)dr)[j0 + i] = __float2bfloat16_rn(v[i]);
    } else if (T == KCUDA_Q8_0) { /* 4 lanes per block of 32 */
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) amax = fmaxf(amax, lane_on ? fabsf(v[i]) : 0.0f);
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
        if (lane_on) {
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            union { int8_t q[8]; uint2 u; } pk;
#pragma unroll
            for (int i = 0; i < 8; i++) pk.q[i] = kc_clamp_i8(__float2int_rn(v[i] * id));
            *(uint2 *)(dr + j0) = pk.u;
            if ((lane & 3) == 0) ((float *)(dr + n))[j0 / 32] = __half2float(__float2half_rn(amax / 127.0f));
        }
    } else { /* Q8_K: the warp's 256 elements are one block (n % 256 == 0) */
        kc_q8k_warp(v, lane_on, j0, dr, n);
    }
}

int kcuda_norm_convert_multi(struct kcuda *k, int n_out, const int *types, void *const *d_dst,
                             const size_t *dst_stride, const float *d_x, int64_t ld, int64_t n_tok,
                             int64_t n, const float *d_w, float eps, float *d_yf)
{
    if (n_tok <= 0) return 0;
    if (n_out < 1 || n_out > KCUDA_CONVERT_MAX)
        return tt_error_set(TT_EINVAL, "%d conversions in one launch", n_out);
    nc_outs o = {};
    for (int z = 0; z < n_out; z++) {
        const int type = types[z];
        if (type != KCUDA_F32 && type != KCUDA_F16 && type != KCUDA_BF16 && type != KCUDA_Q8_0 && type != KCUDA_Q8_K)
            return tt_error_set(TT_EUNSUPPORTED, "no device conversion to type %d", type);
        if ((type == KCUDA_Q8_0 && n % 32) || (type == KCUDA_Q8_K && n % 256))
            return tt_error_set(TT_EINVAL, "%s row of %lld elements", type == KCUDA_Q8_0 ? "Q8_0" : "Q8_K",
                                (long long)n);
        o.type[z] = type, o.dst[z] = (uint8_t *)d_dst[z], o.stride[z] = dst_stride[z];
    }
    const int do_norm = !(d_w == NULL && eps < 0.0f);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_norm_convert, dim3((unsigned)n_tok, kc_blocks(n, NC_CHUNK), (unsigned)n_out), dim3(NC_THREADS),
              d_x, ld, (int)n, d_w, eps, do_norm, d_yf, o);
    KC_PROF_END(k, "norm_convert");
    return 0;
}

int kcuda_norm_convert(struct kcuda *k, int type, const float *d_x, int64_t ld, int64_t n_tok,
                       int64_t n, const float *d_w, float eps, float *d_yf, void *d_dst,
                       size_t dst_stride)
{
    return kcuda_norm_convert_multi(k, 1, &type, &d_dst, &dst_stride, d_x, ld, n_tok, n, d_w, eps, d_yf);
}

int kcuda_convert(struct kcuda *k, int type, const float *d_x, int64_t ld, int64_t n_tok,
                  int64_t n, void *d_dst, size_t dst_stride)
{
    return kcuda_norm_convert(k, type, d_x, ld, n_tok, n, NULL, -1.0f, NULL, d_dst, dst_stride);
}

/* ---- activations back to F16 (the batch path's operand) ---- */

/* Block (row t, column block): one element per thread. */
__global__ void k_act_to_f16(int type, const uint8_t *__restrict__ act, size_t stride, int n,
                             __half *__restrict__ out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const uint8_t *r = act + (size_t)blockIdx.x * stride;
    float v;
    if (type == KCUDA_Q8_0) v = (float)((const int8_t *)r)[j] * ((const float *)(r + n))[j / 32];
    else if (type == KCUDA_Q8_K) v = (float)((const int8_t *)r)[j] * ((const float *)(r + n))[j / 256];
    else if (type == KCUDA_F16) v = __half2float(((const __half *)r)[j]);
    else if (type == KCUDA_BF16) v = __bfloat162float(((const __nv_bfloat16 *)r)[j]);
    else v = ((const float *)r)[j];
    out[(size_t)blockIdx.x * n + j] = __float2half_rn(v);
}

int kcuda_act_to_f16(struct kcuda *k, int type, const void *d_act, size_t act_stride,
                     int64_t n_tok, int64_t n, void *d_out_f16)
{
    if (n_tok <= 0 || n <= 0) return 0;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_act_to_f16, dim3((unsigned)n_tok, kc_blocks(n, 256)), dim3(256), type,
              (const uint8_t *)d_act, act_stride, (int)n, (__half *)d_out_f16);
    KC_PROF_END(k, "act_to_f16");
    return 0;
}

/* ---- weights to F16 / F32 ---- */

/* Elements j0..j0+7 (j0 a multiple of 8) of a KCUDA_Q6_K_GROUPS row, as
 * the Q6_K case of dequant_elem computes them: element e of block b is
 * position l = e % 32 of quarter qu = (e % 128) / 32 of half h = e / 128, in
 * item i = 4 (b % 8) + 2h + l / 16 at byte l % 16 of its chunks. */
__device__ __forceinline__ void q6g_dequant8(const uint8_t *row, int j0, float *y)
{
    const int b = j0 / 256, e = j0 % 256, h = e / 128, qu = (e % 128) / 32, l0 = e % 32;
    const uint8_t *g = row + (size_t)(b / Q6G_BLOCKS) * Q6G_BYTES;
    const int i = 4 * (b % Q6G_BLOCKS) + 2 * h + l0 / 16, p0 = l0 % 16;
    const uint8_t *lo = g + 16 * (32 * (qu & 1) + i) + p0, *hi = g + 16 * (64 + i) + p0;
    const float ds = __half2float(*(const __half *)(g + Q6G_D + 2 * (b % Q6G_BLOCKS))) *
                     (float)(int8_t)g[Q6G_SCALES + 4 * i + qu];
#pragma unroll
    for (int t = 0; t < 8; t++) {
        const int nib = qu >= 2 ? lo[t] >> 4 : lo[t] & 15;
        y[t] = __fmul_rn(ds, (float)((nib | (((hi[t] >> (2 * qu)) & 3) << 4)) - 32));
    }
}

/* Elements j0..j0+7 of a Q4_K, KCUDA_Q4_K_GROUPS or Q5_K row (j0 a
 * multiple of 8), as dequant_elem computes them. */
__device__ __forceinline__ void kq_dequant8(int type, const uint8_t *row, int j0, float *y)
{
    const int e = j0 % 256, g = e / 64, hi = (e % 64) >= 32, l0 = e % 32, sb = 2 * g + hi;
    const uint8_t *scales, *qs, *qh = NULL; /* qs: the 8 bytes at qs[32 * g + l0] */
    float d, dmin;
    if (type == KCUDA_Q4_K) {
        const blk_q4_K *b = (const blk_q4_K *)row + j0 / 256;
        scales = b->scales, qs = b->qs + 32 * g + l0, d = __half2float(b->d), dmin = __half2float(b->dmin);
    } else if (type == KCUDA_Q4_K_GROUPS) { /* kcuda.h draws the layout */
        const int b = (j0 / 256) % Q4G_BLOCKS;
        const uint8_t *grp = row + (size_t)(j0 / (256 * Q4G_BLOCKS)) * Q4G_BYTES;
        const blk_q4_K *h = (const blk_q4_K *)(grp + Q4G_HDR + 16 * b); /* its header fields only */
        scales = h->scales, d = __half2float(h->d), dmin = __half2float(h->dmin);
        qs = grp + 512 * (l0 / 16) + 16 * (4 * b + g) + l0 % 16;
    } else {
        const blk_q5_K *b = (const blk_q5_K *)row + j0 / 256;
        scales = b->scales, qs = b->qs + 32 * g + l0, qh = b->qh, d = __half2float(b->d), dmin = __half2float(b->dmin);
    }
    int sc, m;
    kc_scale_min(sb, scales, sc, m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    const uint2 q8 = *(const uint2 *)qs; /* one 8-byte load: qs is 8-byte aligned in both layouts */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint8_t byte = (uint8_t)((i < 4 ? q8.x : q8.y) >> (8 * (i & 3)));
        int q = hi ? byte >> 4 : byte & 15;
        if (qh) q |= ((qh[l0 + i] >> sb) & 1) << 4;
        y[i] = __fsub_rn(__fmul_rn(d1, (float)q), m1);
    }
}

/* Element j of a weight row, as quant.c's dequantizers compute it. */
__device__ __forceinline__ float dequant_elem(int type, const uint8_t *row, int j)
{
    switch (type) {
    case KCUDA_F32: return ((const float *)row)[j];
    case KCUDA_F16: return __half2float(((const __half *)row)[j]);
    case KCUDA_BF16: return __bfloat162float(((const __nv_bfloat16 *)row)[j]);
    case KCUDA_Q4_0: {
        const blk_q4_0 *b = (const blk_q4_0 *)row + j / 32;
        const int e = j % 32;
        const int q = e < 16 ? (b->qs[e] & 15) : (b->qs[e - 16] >> 4);
        return (float)(q - 8) * __half2float(b->d);
    }
    case KCUDA_Q8_0: {
        const blk_q8_0 *b = (const blk_q8_0 *)row + j / 32;
        return (float)b->qs[j % 32] * __half2float(b->d);
    }
    case KCUDA_Q4_K:
    case KCUDA_Q5_K: {
        const int e = j % 256, g = e / 64, hi = (e % 64) >= 32, l = e % 32, sb = 2 * g + hi;
        const uint8_t *scales, *qs;
        float d, dmin;
        int q;
        if (type == KCUDA_Q4_K) {
            const blk_q4_K *b = (const blk_q4_K *)row + j / 256;
            scales = b->scales, qs = b->qs, d = __half2float(b->d), dmin = __half2float(b->dmin);
            q = hi ? qs[32 * g + l] >> 4 : qs[32 * g + l] & 15;
        } else {
            const blk_q5_K *b = (const blk_q5_K *)row + j / 256;
            scales = b->scales, qs = b->qs, d = __half2float(b->d), dmin = __half2float(b->dmin);
            q = hi ? qs[32 * g + l] >> 4 : qs[32 * g + l] & 15;
            q |= ((b->qh[l] >> sb) & 1) << 4;
        }
        int sc, m;
        kc_scale_min(sb, scales, sc, m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        return __fsub_rn(__fmul_rn(d1, (float)q), m1);
    }
    case KCUDA_Q6_K: {
        const blk_q6_K *b = (const blk_q6_K *)row + j / 256;
        const int e = j % 256, h = e / 128, r = e % 128, l = r % 32, qu = r / 32;
        const uint8_t lb = b->ql[64 * h + l + (qu & 1) * 32];
        const int nib = qu >= 2 ? lb >> 4 : lb & 15;
        const int q = (nib | (((b->qh[32 * h + l] >> (2 * qu)) & 3) << 4)) - 32;
        return __fmul_rn(__half2float(b->d) * (float)b->scales[e / 16], (float)q);
    }
    case KCUDA_Q6_K_GROUPS:
    case KCUDA_Q4_K_GROUPS: { /* not through dequant8, which calls this function */
        float y[8];
        if (type == KCUDA_Q6_K_GROUPS) q6g_dequant8(row, j & ~7, y);
        else kq_dequant8(type, row, j & ~7, y);
        return y[j & 7];
    }
    default: return 0.0f;
    }
}

/* Elements j0..j0+7 of a weight row (j0 a multiple of 8), as dequant_elem
 * computes them: the 8 share one scale in every block format. */
__device__ __forceinline__ void dequant8(int type, const uint8_t *row, int j0, float *y)
{
    switch (type) {
    case KCUDA_Q4_0: {
        const blk_q4_0 *b = (const blk_q4_0 *)row + j0 / 32;
        const int e = j0 % 32;
        const float d = __half2float(b->d);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int q = e < 16 ? (b->qs[e + i] & 15) : (b->qs[e - 16 + i] >> 4);
            y[i] = (float)(q - 8) * d;
        }
        return;
    }
    case KCUDA_Q8_0: {
        const blk_q8_0 *b = (const blk_q8_0 *)row + j0 / 32;
        const float d = __half2float(b->d);
#pragma unroll
        for (int i = 0; i < 8; i++) y[i] = (float)b->qs[j0 % 32 + i] * d;
        return;
    }
    case KCUDA_Q4_K:
    case KCUDA_Q4_K_GROUPS:
    case KCUDA_Q5_K: kq_dequant8(type, row, j0, y); return;
    case KCUDA_Q6_K: {
        const blk_q6_K *b = (const blk_q6_K *)row + j0 / 256;
        const int e = j0 % 256, h = e / 128, r = e % 128, l0 = r % 32, qu = r / 32;
        const float ds = __half2float(b->d) * (float)b->scales[e / 16];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint8_t lb = b->ql[64 * h + l0 + i + (qu & 1) * 32];
            const int nib = qu >= 2 ? lb >> 4 : lb & 15;
            const int q = (nib | (((b->qh[32 * h + l0 + i] >> (2 * qu)) & 3) << 4)) - 32;
            y[i] = __fmul_rn(ds, (float)q);
        }
        return;
    }
    case KCUDA_Q6_K_GROUPS: q6g_dequant8(row, j0, y); return;
    default:
#pragma unroll
        for (int i = 0; i < 8; i++) y[i] = dequant_elem(type, row, j0 + i);
        return;
    }
}

/* Block (row, 2048 columns): 8 elements per thread, one 16-byte store. */
__global__ void k_dequant_f16(int type, const uint8_t *__restrict__ w, size_t stride, int n,
                              __half *__restrict__ out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int j0 = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (j0 >= n) return;
    float y[8];
    dequant8(type, w + (size_t)blockIdx.x * stride, j0, y);
    union { __half2 h[4]; uint4 u; } pk;
#pragma unroll
    for (int i = 0; i < 4; i++) pk.h[i] = __floats2half2_rn(y[2 * i], y[2 * i + 1]);
    *(uint4 *)(out + (size_t)blockIdx.x * n + j0) = pk.u;
}

__global__ void k_dequant_f32(int type, const uint8_t *__restrict__ w, size_t stride, int n,
                              float *__restrict__ out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= n) return;
    out[(size_t)blockIdx.x * n + j] = dequant_elem(type, w + (size_t)blockIdx.x * stride, j);
}

int kcuda_dequant_f16(struct kcuda *k, int type, const void *d_w, size_t row_stride, int64_t r0,
                      int64_t n_rows, int64_t n, void *d_out_f16)
{
    if (n_rows <= 0 || n <= 0) return 0;
    if (!kc_block_bytes(type)) return tt_error_set(TT_EUNSUPPORTED, "no device dequantizer for type %d", type);
    KC_PROF_BEGIN(k);
    if (n % 8) return tt_error_set(TT_EUNSUPPORTED, "F16 tiles of rows of %lld elements", (long long)n);
    KC_LAUNCH(k, k_dequant_f16, dim3((unsigned)n_rows, kc_blocks(n, 8 * 256)), dim3(256), type,
              (const uint8_t *)d_w + (size_t)r0 * row_stride, row_stride, (int)n, (__half *)d_out_f16);
    KC_PROF_END(k, "dequant_f16");
    return 0;
}

int kcuda_dequant_f32(struct kcuda *k, int type, const void *d_w, size_t row_stride,
                      int64_t n_rows, int64_t n, float *d_out)
{
    if (n_rows <= 0 || n <= 0) return 0;
    if (!kc_block_bytes(type)) return tt_error_set(TT_EUNSUPPORTED, "no device dequantizer for type %d", type);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_dequant_f32, dim3((unsigned)n_rows, kc_blocks(n, 256)), dim3(256), type,
              (const uint8_t *)d_w, row_stride, (int)n, d_out);
    KC_PROF_END(k, "dequant_f32");
    return 0;
}

/* ---- weight upload, regrouped (KCUDA_LAYOUT_Q6_K_GROUPS, _Q4_K_GROUPS) ---- */

/* Where byte o of a regrouped group comes from in the group's 8 GGML
 * blocks (kcuda.h draws the layouts). */
__device__ __forceinline__ int q6g_source(int o)
{
    if (o < Q6G_SCALES) {
        const int c = o / 512, i = (o % 512) / 16, p = o % 16;
        const int b = i / 4, h = (i % 4) / 2, j = i % 2;
        return 210 * b + (c == 2 ? 128 + 32 * h + 16 * j + p : 64 * h + 32 * c + 16 * j + p);
    }
    if (o < Q6G_D) {
        const int i = (o - Q6G_SCALES) / 4, k = (o - Q6G_SCALES) % 4;
        const int b = i / 4, h = (i % 4) / 2, j = i % 2;
        return 210 * b + 192 + 8 * h + j + 2 * k;
    }
    return 210 * ((o - Q6G_D) / 2) + 208 + (o - Q6G_D) % 2;
}
__device__ __forceinline__ int q4g_source(int o)
{
    if (o < Q4G_HDR) { /* plane o / 512, item i = 4b + g, byte p */
        const int plane = o / 512, i = (o % 512) / 16, p = o % 16;
        return 144 * (i / 4) + 16 + 32 * (i % 4) + 16 * plane + p;
    }
    return 144 * ((o - Q4G_HDR) / 16) + (o - Q4G_HDR) % 16;
}

/* dst = the n_groups groups of src regrouped, one byte per thread. */
template <int LAYOUT>
__global__ void k_regroup(const uint8_t *__restrict__ src, uint8_t *__restrict__ dst, size_t n_groups)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    constexpr int G = LAYOUT == KCUDA_LAYOUT_Q6_K_GROUPS ? Q6G_BYTES : Q4G_BYTES;
    const size_t n = n_groups * G;
    for (size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x) {
        const int o = (int)(x % G);
        dst[x] = src[x - o + (size_t)(LAYOUT == KCUDA_LAYOUT_Q6_K_GROUPS ? q6g_source(o) : q4g_source(o))];
    }
}

/* The layout kcuda_upload_weight gives w. */
static int upload_layout(const struct kcuda *k, const struct kcuda_weight *w)
{
    const size_t block = w->type == KCUDA_Q6_K ? 210 : w->type == KCUDA_Q4_K ? 144 : 0;
    const bool ok = block && tt_env_int("TT_GPU_REPACK", 1) && w->n_in > 0 && w->n_out > 0 && w->n_in % 2048 == 0 &&
                    w->row_stride == (size_t)(w->n_in / 256) * block && (uintptr_t)w->data % 16 == 0 &&
                    w->expert_stride % 16 == 0 && k->scratch && k->scratch_bytes >= w->row_stride;
    return !ok ? KCUDA_LAYOUT_GGML : w->type == KCUDA_Q6_K ? KCUDA_LAYOUT_Q6_K_GROUPS : KCUDA_LAYOUT_Q4_K_GROUPS;
}

int kcuda_weight_format(const struct kcuda_weight *w)
{
    return w->layout == KCUDA_LAYOUT_Q6_K_GROUPS   ? KCUDA_Q6_K_GROUPS
           : w->layout == KCUDA_LAYOUT_Q4_K_GROUPS ? KCUDA_Q4_K_GROUPS
                                                   : w->type;
}

int kcuda_upload_weight(struct kcuda *k, struct kcuda_weight *w, int64_t expert, const void *src,
                        size_t src_row_stride)
{
    uint8_t *dst = (uint8_t *)w->data + (size_t)expert * w->expert_stride;
    const size_t row = w->row_stride;
    w->layout = upload_layout(k, w);
    if (w->layout == KCUDA_LAYOUT_GGML)
        return kcuda_upload_2d(k, dst, row, src, src_row_stride, row, (size_t)w->n_out);
    const bool q6 = w->layout == KCUDA_LAYOUT_Q6_K_GROUPS;
    const size_t group = q6 ? Q6G_BYTES : Q4G_BYTES;
    /* rows through the scratch in chunks, each regrouped into place */
    const int64_t chunk = (int64_t)(k->scratch_bytes / row);
    for (int64_t r0 = 0; r0 < w->n_out; r0 += chunk) {
        const int64_t rows = w->n_out - r0 < chunk ? w->n_out - r0 : chunk;
        KC_CHECK(cudaMemcpy2DAsync(k->scratch, row, (const uint8_t *)src + (size_t)r0 * src_row_stride,
                                   src_row_stride, row, (size_t)rows, cudaMemcpyHostToDevice, k->stream));
        const size_t n_groups = (size_t)rows * row / group;
        const dim3 grid((unsigned)TT_MIN((n_groups * group + 255) / 256, (size_t)65535));
        if (q6)
            KC_LAUNCH(k, k_regroup<KCUDA_LAYOUT_Q6_K_GROUPS>, grid, dim3(256), (const uint8_t *)k->scratch,
                      dst + (size_t)r0 * row, n_groups);
        else
            KC_LAUNCH(k, k_regroup<KCUDA_LAYOUT_Q4_K_GROUPS>, grid, dim3(256), (const uint8_t *)k->scratch,
                      dst + (size_t)r0 * row, n_groups);
    }
    return 0;
}
