/*
 * kcuda_moe.cu: the mixture-of-experts steps on the device: the router
 * (softmax and top-k, alone or fused with the router's product), the plans
 * that group slots by expert, the decode down products fused with the
 * join, the grouped expert products of prompt batches on the tensor cores,
 * and the ordered join of the experts' outputs.
 *
 * A slot is one (token, choice) pair: token t's k-th expert is slot
 * t * n_used + k. Decode (up to 8 tokens) takes 5 launches per MoE layer:
 * the norm and Q8_K conversion, the router (its product, softmax and top-k
 * in one launch: kcuda_moe_router, which also writes one tile record per
 * slot), gate/up with SwiGLU through kcuda_matvec_experts, the Q8_K
 * conversion, then kcuda_moe_down_join (every chosen expert's down rows and
 * the weighted join into the residual stream). Prompt batches above
 * KCUDA_MATVEC_TOK_MAX tokens sort the slots by expert on the device
 * (kcuda_moe_group: a counting sort in one block) and run one grouped
 * product per weight (kcuda_moe_gemm): each block takes 64 rows of one
 * expert's weight and up to KCUDA_MOE_GROUP slots of that expert, expands
 * the weights to F16 in shared memory as it goes (Q4_K and Q6_K read
 * directly; other types are first expanded into the context's scratch by
 * kcuda_dequant_f16, a chunk of experts at a time), and multiplies on the
 * tensor cores (WMMA, F16 operands, F32 sums) against the slots' activation
 * rows, which were rounded as the CPU rounds them (Q8_0/Q8_K) and widened to
 * F16. So batch expert products carry the same F16 rounding as
 * kcuda_linear's batch path, and no scratch at all for Q4_K/Q6_K weights.
 *
 * Invariants:
 *   1. Where the CPU engine's float operations have a fixed order (the
 *      router's selection and renormalization, the expert join), the kernels
 *      repeat that order with explicitly rounded operations (__fmul_rn,
 *      __fadd_rn) so the compiler cannot fuse them into FMAs.
 *   2. Each slot's product is computed whole by one block, with a fixed
 *      summation order that does not depend on the other slots of its
 *      group, so the order of slots within a group (atomics in the sort)
 *      never changes results.
 *   3. The fused router's per-token counters are zero between launches: the
 *      last block of a token resets its counter.
 *   4. Expert parallelism over GPU ranks: with a local map the routers write
 *      each choice as its index among this rank's experts, or -1 for
 *      another rank's; every kernel after them (plans, groups, products,
 *      joins) leaves -1 slots out, so a rank's join holds its experts only.
 */
#include "kcuda_kdot.cuh"

#include <mma.h>

#define MOE_EXPERTS_MAX 1024
#define MOE_USED_MAX 32

/* How expert weights are read: F16 rows, or GGML Q4_K / Q6_K blocks. */
enum mg_src { MG_F16, MG_Q4_K, MG_Q6_K };

/* Whether every expert's rows start 16-byte aligned (uint4 weight loads). */
static bool rows_aligned16(const struct kcuda_weight *w)
{
    return w->row_stride % 16 == 0 && w->expert_stride % 16 == 0 && (uintptr_t)w->data % 16 == 0;
}

/* ---- routing ---- */

/* One warp: softmax over a token's X logits into p (shared memory), then
 * n_used rounds of "largest probability not yet taken, lowest id on ties",
 * as moe_route_token (moe module); the probabilities renormalized when
 * `norm`, the sum clamped as llama.cpp does. With `tiles`, the one-slot
 * tile record of each choice (kcuda_moe_plan with tile_tok 1). The logits
 * are read through L2 (another block may have written them), or are in p
 * already when row is p. */
__device__ void moe_route_warp(const float *row, int X, int K, int norm, float *p, int32_t *s,
                               float *w, int32_t *tiles, int slot0, const int32_t *local)
{
    const int lane = threadIdx.x & 31;
    float mx = -INFINITY;
    for (int i = lane; i < X; i += 32) { /* the row read once: each lane rereads its own p[i] */
        const float v = row == p ? p[i] : __ldcg(row + i);
        p[i] = v;
        mx = fmaxf(mx, v);
    }
    mx = kc_warp_max(mx);
    double sum = 0.0;
    for (int i = lane; i < X; i += 32) {
        const float e = expf(p[i] - mx);
        p[i] = e;
        sum += (double)e;
    }
    sum = kc_warp_sum_d(sum);
    for (int i = lane; i < X; i += 32) p[i] = (float)((double)p[i] / sum);
    __syncwarp();
    float wsum = 0.0f;
    for (int k = 0; k < K; k++) {
        float best = -1.0f;
        int at = X;
        for (int i = lane; i < X; i += 32)
            if (p[i] > best) best = p[i], at = i;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float b2 = __shfl_xor_sync(0xffffffffu, best, o);
            const int a2 = __shfl_xor_sync(0xffffffffu, at, o);
            if (b2 > best || (b2 == best && a2 < at)) best = b2, at = a2;
        }
        if (lane == 0) {
            s[k] = at;
            w[k] = best;
            p[at] = -1.0f; /* taken: probabilities are >= 0 */
        }
        wsum = __fadd_rn(wsum, best);
        __syncwarp();
    }
    if (norm && lane == 0) {
        wsum = wsum < 6.103515625e-5f ? 6.103515625e-5f : wsum;
        for (int k = 0; k < K; k++) w[k] /= wsum;
    }
    __syncwarp();
    if (local && lane < K) s[lane] = local[s[lane]]; /* another rank's expert: -1 */
    __syncwarp();
    if (tiles && lane < K) {
        int32_t *r = tiles + (size_t)(slot0 + lane) * KCUDA_MOE_TILE_INTS;
        r[0] = s[lane];
        r[1] = 1;
        r[2] = slot0 + lane;
    }
}

/* One warp per token. */
__global__ void k_moe_route(const float *logits, int X, int K, int norm, int32_t *sel, float *wout,
                            int32_t *tiles, const int32_t *local)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ float p[MOE_EXPERTS_MAX];
    const int t = blockIdx.x;
    moe_route_warp(logits + (size_t)t * X, X, K, norm, p, sel + (size_t)t * K, wout + (size_t)t * K, tiles,
                   t * K, local);
}

static int route_check(int n_expert, int n_used)
{
    if (n_expert < 1 || n_expert > MOE_EXPERTS_MAX || n_used < 1 || n_used > n_expert || n_used > MOE_USED_MAX)
        return tt_error_set(TT_EUNSUPPORTED, "%d of %d experts: the GPU router takes up to %d of %d", n_used,
                            n_expert, MOE_USED_MAX, MOE_EXPERTS_MAX);
    return 0;
}

int kcuda_moe_route(struct kcuda *k, const float *d_logits, int64_t n_tok, int n_expert,
                    int n_used, bool norm, int32_t *d_sel, float *d_w, int32_t *d_tiles, const int32_t *d_local)
{
    if (n_tok <= 0) return 0;
    int err = route_check(n_expert, n_used);
    if (err) return err;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_moe_route, dim3((unsigned)n_tok), dim3(32), d_logits, n_expert, n_used, (int)norm, d_sel, d_w,
              d_tiles, d_local);
    KC_PROF_END(k, "moe_route");
    return 0;
}

/* The router's product and the routing in one launch. Block (rows, token):
 * RT_ROWS rows, each on RT_WARPS / RT_ROWS warps (F32 weights, float4
 * loads, the first ones issued before the previous kernel ends), their
 * partial sums added in a fixed order; the last block of a token to finish
 * (a ticket in count[t]) routes it.
 * NORM: x is the residual row, RMS-normed here as kcuda_norm_convert does
 * (each block sums the squares itself; the row is small and cached); block b
 * < n_in / 256 also writes the normed floats b*256.. to rn.yf (when set) and
 * their Q8_K block to rn.q8k, the experts' activations (one launch less per
 * layer). rn is unused without NORM. */
#define RT_WARPS 8
#define RT_ROWS 2
#define RT_LANES (32 * RT_WARPS / RT_ROWS) /* threads per row */
__device__ __forceinline__ float4 rt_normed(float4 a, float scale, float4 nw)
{
    return make_float4(__fmul_rn(__fmul_rn(a.x, scale), nw.x), __fmul_rn(__fmul_rn(a.y, scale), nw.y),
                       __fmul_rn(__fmul_rn(a.z, scale), nw.z), __fmul_rn(__fmul_rn(a.w, scale), nw.w));
}

/* The squares of row xr's floats first, first + step, ... (4 at a time)
 * summed in double, as ops_rmsnorm, then over the warp. */
__device__ __forceinline__ double rt_sumsq_warp(const float *xr, int n_in, int first, int step)
{
    double ss = 0.0;
    for (int i = first; i < n_in; i += step) {
        const float4 a = *(const float4 *)(xr + i);
        ss += ((double)__fmul_rn(a.x, a.x) + (double)__fmul_rn(a.y, a.y)) +
              ((double)__fmul_rn(a.z, a.z) + (double)__fmul_rn(a.w, a.w));
    }
    return kc_warp_sum_d(ss);
}

/* One warp: block b (256 floats) of token t's normed row (residual xr,
 * scale) into rn.yf (when set) and as its Q8_K block into rn.q8k. */
__device__ __forceinline__ void rt_q8k_block(const kcuda_router_norm &rn, const float *xr, float scale, int t,
                                             int n_in, int b)
{
    const int j0 = 256 * b + 8 * (threadIdx.x & 31);
    const float4 a0 = rt_normed(*(const float4 *)(xr + j0), scale, __ldg((const float4 *)(rn.w + j0)));
    const float4 a1 = rt_normed(*(const float4 *)(xr + j0 + 4), scale, __ldg((const float4 *)(rn.w + j0 + 4)));
    const float v[8] = { a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w };
    if (rn.yf) {
        *(float4 *)(rn.yf + (size_t)t * n_in + j0) = a0;
        *(float4 *)(rn.yf + (size_t)t * n_in + j0 + 4) = a1;
    }
    kc_q8k_warp(v, true, j0, (uint8_t *)rn.q8k + (size_t)t * rn.q8k_stride, n_in);
}

template <bool NORM>
__global__ void __launch_bounds__(RT_WARPS * 32)
    k_moe_router(const float *__restrict__ w, int64_t ldw, int n_in, const float *__restrict__ x, int X, int K,
                 int norm, float *logits, int *count, int32_t *sel, float *wout, int32_t *tiles,
                 const int32_t *local, const kcuda_router_norm rn)
{
    kc_pdl_trigger();
    __shared__ float p[MOE_EXPERTS_MAX];
    __shared__ float part[RT_WARPS];
    __shared__ double sq[RT_WARPS];
    __shared__ int last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = blockIdx.y;
    const int rr = threadIdx.x / RT_LANES, l = threadIdx.x % RT_LANES, r = blockIdx.x * RT_ROWS + rr;
    const float *wr = w + (size_t)(r < X ? r : 0) * ldw;
    float4 wv[4], nv[4]; /* the first weights in flight before the previous kernel ends */
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int i = 4 * (l + RT_LANES * u);
        wv[u] = i < n_in ? __ldg((const float4 *)(wr + i)) : make_float4(0.f, 0.f, 0.f, 0.f);
        nv[u] = NORM && i < n_in ? __ldg((const float4 *)(rn.w + i)) : make_float4(1.f, 1.f, 1.f, 1.f);
    }
    kc_pdl_wait();
    const float *xr = x + (size_t)t * n_in;
    float scale = 1.0f;
    if (NORM) { /* each row's threads sum the squares of the whole row */
        double ss = rt_sumsq_warp(xr, n_in, 4 * l, 4 * RT_LANES);
        if (lane == 0) sq[warp] = ss;
        __syncthreads();
        ss = 0.0;
        for (int i = 0; i < RT_WARPS / RT_ROWS; i++) ss += sq[rr * (RT_WARPS / RT_ROWS) + i];
        scale = 1.0f / sqrtf((float)(ss / (double)n_in) + rn.eps);
    }
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int i = 4 * (l + RT_LANES * u);
        if (i < n_in) {
            float4 a = *(const float4 *)(xr + i);
            if (NORM) a = rt_normed(a, scale, nv[u]);
            s += wv[u].x * a.x + wv[u].y * a.y + wv[u].z * a.z + wv[u].w * a.w;
        }
    }
    for (int i = 4 * (l + 4 * RT_LANES); i < n_in; i += 4 * RT_LANES) {
        const float4 b = __ldg((const float4 *)(wr + i));
        float4 a = *(const float4 *)(xr + i);
        if (NORM) a = rt_normed(a, scale, __ldg((const float4 *)(rn.w + i)));
        s += b.x * a.x + b.y * a.y + b.z * a.z + b.w * a.w;
    }
    if (NORM && warp == 0 && 256 * (int)blockIdx.x < n_in) rt_q8k_block(rn, xr, scale, t, n_in, blockIdx.x);
    s = kc_warp_sum(s);
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (l == 0 && r < X) {
        float v = 0.0f;
        for (int i = 0; i < RT_WARPS / RT_ROWS; i++) v += part[rr * (RT_WARPS / RT_ROWS) + i];
        logits[(size_t)t * X + r] = v;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&count[t], 1) == (int)gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    if (threadIdx.x == 0) count[t] = 0;
    __threadfence();
    if (warp == 0)
        moe_route_warp(logits + (size_t)t * X, X, K, norm, p, sel + (size_t)t * K, wout + (size_t)t * K, tiles,
                       t * K, local);
}

/* ---- the fused router in one cluster per token (sm_90) ----
 * k_moe_router's blocks meet through global memory: each writes its logits,
 * fences, takes a ticket, and the last one reads them all back before it
 * routes: several L2 round trips in series on every MoE layer's critical
 * path. Here the RC blocks of a cluster share a token. Block b takes rows
 * b*R.. (R = X / RC rounded up), whose weights its thread 0 hands to the
 * copy engine before the dependency wait (they never depend on the
 * previous kernel); after the wait the block norms the token's row into
 * shared memory (and writes its Q8_K blocks b, b + RC, ...), each warp takes
 * a row at a time, and each logit goes to global memory and straight into
 * block 0's shared memory; after one cluster barrier block 0's first warp
 * routes them. */
#define RC_THREADS 256
#define RC_SMEM_MAX (200u << 10) /* a block's rows and normed row (the H200 allows 227 KiB) */
template <bool NORM>
__global__ void __launch_bounds__(RC_THREADS)
    k_moe_router_cl(const float *__restrict__ w, int64_t ldw, int n_in, const float *__restrict__ x, int X, int K,
                    int norm, float *logits, int32_t *sel, float *wout, int32_t *tiles, const int32_t *local,
                    const kcuda_router_norm rn)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) float rc_sh[]; /* [R][n_in] weights, then the token's [n_in] normed row */
    __shared__ float p[MOE_EXPERTS_MAX];
    __shared__ double sq[RC_THREADS / 32];
    __shared__ __align__(8) uint64_t bar;
    const int RC = gridDim.x, b = blockIdx.x, t = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int R = (X + RC - 1) / RC, r0 = b * R, rows = max(0, min(R, X - r0));
    float *ws = rc_sh, *xs = rc_sh + (size_t)R * n_in;
    const uint32_t row_bytes = (uint32_t)n_in * 4u, b_bar = kc_smem_addr(&bar);
    if (tid == 0) {
        kc_mbar_init(b_bar);
        kc_mbar_init_fence();
    }
    __syncthreads();
    kc_cluster_arrive(); /* this block has started: its shared memory can take the others' stores */
    kc_pdl_trigger();
    if (tid == 0 && rows > 0) {
        kc_mbar_expect(b_bar, rows * row_bytes);
        for (int r = 0; r < rows; r++) kc_bulk_copy(ws + (size_t)r * n_in, w + (size_t)(r0 + r) * ldw, row_bytes, b_bar);
    }
    kc_pdl_wait();
    const float *xr = x + (size_t)t * n_in;
    float scale = 1.0f;
    if (NORM) {
        double ss = rt_sumsq_warp(xr, n_in, 4 * tid, 4 * RC_THREADS);
        if (lane == 0) sq[warp] = ss;
        __syncthreads();
        ss = 0.0;
        for (int i = 0; i < RC_THREADS / 32; i++) ss += sq[i];
        scale = 1.0f / sqrtf((float)(ss / (double)n_in) + rn.eps);
    }
    for (int i = 4 * tid; i < n_in; i += 4 * RC_THREADS) {
        float4 a = *(const float4 *)(xr + i);
        if (NORM) a = rt_normed(a, scale, __ldg((const float4 *)(rn.w + i)));
        *(float4 *)(xs + i) = a;
    }
    if (NORM && warp == 0)
        for (int q = b; 256 * q < n_in; q += RC) rt_q8k_block(rn, xr, scale, t, n_in, q);
    __syncthreads();
    if (rows > 0) kc_mbar_wait(b_bar, 0); /* this block's weights have landed */
    kc_cluster_wait(); /* every block has started */
    for (int r = warp; r < rows; r += RC_THREADS / 32) {
        const float4 *wr = (const float4 *)(ws + (size_t)r * n_in), *xv = (const float4 *)xs;
        float s = 0.0f;
        for (int i = lane; i < n_in / 4; i += 32) {
            const float4 a = xv[i], c = wr[i];
            s += c.x * a.x + c.y * a.y + c.z * a.z + c.w * a.w;
        }
        s = kc_warp_sum(s);
        if (lane == 0) {
            logits[(size_t)t * X + r0 + r] = s;
            kc_cluster_store(&p[r0 + r], 0, s);
        }
    }
    kc_cluster_arrive(); /* the logits are in block 0 */
    kc_cluster_wait();
    if (b == 0 && warp == 0)
        moe_route_warp(p, X, K, norm, p, sel + (size_t)t * K, wout + (size_t)t * K, tiles, t * K, local);
#endif
}

/* Dynamic shared memory of k_moe_router_cl with clusters of rc blocks. */
static size_t router_cl_smem(const struct kcuda_weight *w, int rc)
{
    return sizeof(float) * (size_t)w->n_in * (size_t)(kc_blocks(w->n_out, rc) + 1);
}

bool kcuda_moe_router_norm_ok(const struct kcuda_weight *w)
{
    return w->n_in % 256 == 0 && (int64_t)kc_blocks(w->n_out, RT_ROWS) * 256 >= w->n_in;
}

int kcuda_moe_router(struct kcuda *k, const struct kcuda_weight *w, const float *d_x, int64_t n_tok,
                     int n_used, bool norm, float *d_logits, int *d_count, int32_t *d_sel, float *d_w,
                     int32_t *d_tiles, const int32_t *d_local, const struct kcuda_router_norm *rn)
{
    if (n_tok <= 0) return 0;
    const int X = (int)w->n_out;
    int err = route_check(X, n_used);
    if (err) return err;
    if (w->type != KCUDA_F32 || w->n_in % 4 || w->row_stride % 16 || (uintptr_t)w->data % 16 || n_tok > 65535)
        return tt_error_set(TT_EUNSUPPORTED, "fused router: needs F32 rows of a multiple of 4 inputs");
    if (rn && (!kcuda_moe_router_norm_ok(w) || (uintptr_t)rn->w % 16 || (uintptr_t)rn->yf % 16 ||
               (uintptr_t)rn->q8k % 16 || rn->q8k_stride % 16))
        return tt_error_set(TT_EUNSUPPORTED, "router with the norm: %lld inputs, %lld experts", (long long)w->n_in,
                            (long long)w->n_out);
    const kcuda_router_norm r = rn ? *rn : kcuda_router_norm{};
    typedef void (*router_kernel)(const float *, int64_t, int, const float *, int, int, int, float *, int32_t *,
                                  float *, int32_t *, const int32_t *, const kcuda_router_norm);
    const router_kernel cl = rn ? k_moe_router_cl<true> : k_moe_router_cl<false>;
    while (k->router_cluster > 1) {
        const int RC = k->router_cluster;
        const size_t smem = router_cl_smem(w, RC);
        if (k->router_cluster_ok != (const void *)cl || k->router_cluster_smem != (int)smem) {
            const bool room = smem <= RC_SMEM_MAX;
            if (!room || !kc_cluster_fits(cl, RC, RC_THREADS, smem)) {
                /* smaller clusters (more rows a block), then the ticket */
                kcuda_set_router_cluster(k, room && RC > 8 ? 8 : 0);
                continue;
            }
            k->router_cluster_ok = (const void *)cl;
            k->router_cluster_smem = (int)smem;
        }
        if (RC > 8) KC_CHECK(cudaFuncSetAttribute(cl, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        KC_PROF_BEGIN(k);
        KC_CHECK(kc_launch_cluster(k, cl, dim3((unsigned)RC, (unsigned)n_tok), dim3(RC_THREADS), smem, (unsigned)RC,
                                   (const float *)w->data, (int64_t)(w->row_stride / 4), (int)w->n_in, d_x, X, n_used,
                                   (int)norm, d_logits, d_sel, d_w, d_tiles, d_local, r));
        KC_PROF_END(k, "moe_router");
        return 0;
    }
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, rn ? k_moe_router<true> : k_moe_router<false>, dim3(kc_blocks(X, RT_ROWS), (unsigned)n_tok),
              dim3(RT_WARPS * 32), (const float *)w->data, (int64_t)(w->row_stride / 4), (int)w->n_in, d_x, X,
              n_used, (int)norm, d_logits, d_count, d_sel, d_w, d_tiles, d_local, r);
    KC_PROF_END(k, "moe_router");
    return 0;
}

/* ---- plans: slots grouped by expert ---- */

int kcuda_moe_max_tiles(int64_t n_slots, int n_expert)
{
    const int64_t used = n_slots < n_expert ? n_slots : n_expert;
    return (int)((n_slots + KCUDA_MOE_TILE - 1) / KCUDA_MOE_TILE + used);
}

/* One block: each thread owns experts e = tid, tid + blockDim.x, ...; it
 * counts its slots, a serial prefix over experts gives each expert its first
 * tile, then each thread writes its experts' tiles (slots in ascending
 * order). Unused records get expert -1. With tile_tok = 1 every slot is its
 * own tile, in slot order. */
__global__ void k_moe_plan(const int32_t *sel, int n_slots, int X, int tile_tok, int max_tiles,
                           int32_t *tiles)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ int first[MOE_EXPERTS_MAX + 1];
    if (tile_tok == 1) {
        for (int s = threadIdx.x; s < max_tiles; s += blockDim.x) {
            int32_t *r = tiles + (size_t)s * KCUDA_MOE_TILE_INTS;
            r[0] = s < n_slots ? sel[s] : -1;
            r[1] = 1;
            r[2] = s;
        }
        return;
    }
    for (int e = threadIdx.x; e < X; e += blockDim.x) {
        int c = 0;
        for (int s = 0; s < n_slots; s++) c += sel[s] == e;
        first[e + 1] = (c + tile_tok - 1) / tile_tok;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        first[0] = 0;
        for (int e = 0; e < X; e++) first[e + 1] += first[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < X; e += blockDim.x) {
        int tile = first[e], n = 0;
        for (int s = 0; s < n_slots; s++) {
            if (sel[s] != e) continue;
            int32_t *r = tiles + (size_t)tile * KCUDA_MOE_TILE_INTS;
            r[2 + n++] = s;
            r[0] = e;
            r[1] = n;
            if (n == tile_tok) tile++, n = 0;
        }
    }
    for (int t = first[X] + threadIdx.x; t < max_tiles; t += blockDim.x)
        tiles[(size_t)t * KCUDA_MOE_TILE_INTS] = -1;
}

int kcuda_moe_plan(struct kcuda *k, const int32_t *d_sel, int64_t n_slots, int n_expert,
                   int tile_tok, int32_t *d_tiles)
{
    if (n_slots <= 0) return 0;
    if (n_expert > MOE_EXPERTS_MAX) return tt_error_set(TT_EUNSUPPORTED, "%d experts", n_expert);
    const int max_tiles = tile_tok == 1 ? (int)n_slots : kcuda_moe_max_tiles(n_slots, n_expert);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_moe_plan, dim3(1), dim3(256), d_sel, (int)n_slots, n_expert, tile_tok == 1 ? 1 : KCUDA_MOE_TILE,
              max_tiles, d_tiles);
    KC_PROF_END(k, "moe_plan");
    return 0;
}

int kcuda_moe_max_groups(int64_t n_slots, int n_expert)
{
    const int64_t used = n_slots < n_expert ? n_slots : n_expert;
    return (int)((n_slots + KCUDA_MOE_GROUP - 1) / KCUDA_MOE_GROUP + used);
}

/* One block, a counting sort: slots per expert (shared atomics), a serial
 * prefix over the experts (at most MOE_EXPERTS_MAX), then each slot takes
 * its place in its expert's run of `order` and each expert writes its
 * group records. */
__global__ void k_moe_group(const int32_t *sel, int n_slots, int X, int max_groups, int32_t *order,
                            int4 *groups)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ int cnt[MOE_EXPERTS_MAX], off[MOE_EXPERTS_MAX + 1], gfirst[MOE_EXPERTS_MAX + 1];
    for (int e = threadIdx.x; e < X; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int s = threadIdx.x; s < n_slots; s += blockDim.x)
        if (sel[s] >= 0) atomicAdd(&cnt[sel[s]], 1); /* -1: another rank's expert */
    __syncthreads();
    if (threadIdx.x == 0) {
        off[0] = gfirst[0] = 0;
        for (int e = 0; e < X; e++) {
            off[e + 1] = off[e] + cnt[e];
            gfirst[e + 1] = gfirst[e] + (cnt[e] + KCUDA_MOE_GROUP - 1) / KCUDA_MOE_GROUP;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < X; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int s = threadIdx.x; s < n_slots; s += blockDim.x) {
        const int e = sel[s];
        if (e >= 0) order[off[e] + atomicAdd(&cnt[e], 1)] = s;
    }
    for (int e = threadIdx.x; e < X; e += blockDim.x) {
        const int n = off[e + 1] - off[e];
        for (int g = 0; g * KCUDA_MOE_GROUP < n; g++)
            groups[gfirst[e] + g] = make_int4(e, off[e] + g * KCUDA_MOE_GROUP, min(KCUDA_MOE_GROUP, n - g * KCUDA_MOE_GROUP), 0);
    }
    for (int g = gfirst[X] + threadIdx.x; g < max_groups; g += blockDim.x) groups[g] = make_int4(-1, 0, 0, 0);
}

int kcuda_moe_group(struct kcuda *k, const int32_t *d_sel, int64_t n_slots, int n_expert, int32_t *d_order,
                    int32_t *d_groups)
{
    if (n_slots <= 0) return 0;
    if (n_expert < 1 || n_expert > MOE_EXPERTS_MAX || n_slots > INT32_MAX / 2)
        return tt_error_set(TT_EUNSUPPORTED, "%d experts, %lld slots", n_expert, (long long)n_slots);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_moe_group, dim3(1), dim3(1024), d_sel, (int)n_slots, n_expert,
              kcuda_moe_max_groups(n_slots, n_expert), d_order, (int4 *)d_groups);
    KC_PROF_END(k, "moe_group");
    return 0;
}

/* ---- the join ---- */

/* order[0..K) = a token's choices 0..K-1 in ascending expert id sel[k],
 * ties in slot order: thread k < K writes slot k at its rank (K loads in
 * parallel, where one thread's insertion sort was a serial chain of loads
 * on the join's critical path). The caller syncs before reading order. */
__device__ __forceinline__ void moe_rank_slot(const int32_t *sel, int K, int k, int *order)
{
    const int s = sel[k];
    int r = 0;
    for (int j = 0; j < K; j++) {
        const int o = sel[j];
        r += o < s || (o == s && j < k);
    }
    order[r] = k;
}

/* Block (token, 256 dimensions): the first n_used threads order the
 * token's slots by expert id in shared memory; the shared expert's gate
 * is a dot product each block computes for itself. */
__global__ void k_moe_join(float *x, const float *y, const int32_t *sel, const float *w, int K,
                           int n, const float *ysh, const float *gate_sh, const float *xn)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ int order[MOE_USED_MAX];
    __shared__ float part[8];
    const int64_t t = blockIdx.x;
    if ((int)threadIdx.x < K) moe_rank_slot(sel + t * K, K, threadIdx.x, order);
    float gs = 0.0f;
    if (ysh) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) s += gate_sh[i] * xn[t * n + i];
        s = kc_warp_sum(s);
        if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    }
    __syncthreads();
    if (ysh) {
        float s = 0.0f;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) s += part[i];
        gs = 1.0f / (1.0f + expf(-s));
    }
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float acc = 0.0f;
    for (int a = 0; a < K; a++) {
        const int64_t slot = t * K + order[a];
        if (sel[slot] >= 0) acc = __fadd_rn(acc, __fmul_rn(w[slot], y[slot * n + i]));
    }
    if (ysh) acc = __fadd_rn(acc, __fmul_rn(gs, ysh[t * n + i]));
    x[t * n + i] = __fadd_rn(x[t * n + i], acc);
}

int kcuda_moe_join(struct kcuda *k, float *d_x, const float *d_y, const int32_t *d_sel,
                   const float *d_w, int64_t n_tok, int n_used, int64_t n, const float *d_ysh,
                   const float *d_gate_sh, const float *d_xn)
{
    if (n_tok <= 0) return 0;
    if (n_used > MOE_USED_MAX) return tt_error_set(TT_EUNSUPPORTED, "%d experts per token", n_used);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_moe_join, dim3((unsigned)n_tok, kc_blocks(n, 256)), dim3(256), d_x, d_y, d_sel, d_w, n_used,
              (int)n, d_ysh, d_gate_sh, d_xn);
    KC_PROF_END(k, "moe_join");
    return 0;
}

/* ---- decode: the experts' down products fused with the join ----
 * Block (rows, token): every (slot, row, 64-weight item) of the block is one
 * unit; each thread keeps DJ_UNROLL units' loads in flight, writes each
 * unit's float to shared memory, then each (slot, row) adds its items in
 * order and each row joins its slots in ascending expert order, as
 * kcuda_moe_join, into x. The dots are the matrix-vector kernels' (dp4a on
 * the GGML blocks against Q8_K rows, per-lane float scaling). The kernel is
 * latency-bound: once the loads land, each warp's dots are a serial chain,
 * so the launch takes the fewest rows a block that still fit the grid in
 * one wave of DJ_MIN_BLOCKS blocks a multiprocessor (registers capped to
 * allow it): the most warps to hide each other's latency. A unit's (slot,
 * row, item) comes from multiply-high divisions, not the ~20 instructions of
 * a runtime integer division. (A gate/up kernel of the same shape measured
 * slower than kcuda_matvec_experts: 26 vs 15 us per layer on the Qwen3-MoE
 * shape, H200, profile mode.) */

#define DJ_THREADS 256
#define DJ_UNROLL 2
#define DJ_MIN_BLOCKS 4 /* 64 registers a thread */
#define DJ_UNITS (DJ_THREADS * DJ_UNROLL) /* units per block, at most */

/* The items and dots of kcuda_kdot.cuh, the activations read in place. */
template <int SRC> struct dj_item;
template <> struct dj_item<MG_Q4_K> : kq4k_item {};
template <> struct dj_item<MG_Q6_K> : kq6k_item {};

/* u / d for u, d < 2^16 as __umulhi(u, m) with m = ceil(2^32 / d) (d >= 2):
 * exact because u * (m * d - 2^32) < u * d < 2^32. */
static uint32_t dj_magic(uint32_t d) { return (uint32_t)((((uint64_t)1 << 32) + d - 1) / d); }

struct dj_args {
    const uint8_t *w;
    size_t row_stride, expert_stride;
    int n_in, n_out, n_items, rows; /* rows per block */
    uint32_t ri_magic, items_magic; /* dj_magic(rows * n_items), dj_magic(n_items) */
    const uint8_t *act;            /* Q8_K rows of the slots */
    size_t act_stride;
    float *x;
    const int32_t *sel;
    const float *wt;
    int K;
    const float *ysh, *gate_sh, *xn;
};

template <int SRC>
__global__ void __launch_bounds__(DJ_THREADS, DJ_MIN_BLOCKS) k_moe_down_join(const dj_args a)
{
    kc_pdl_trigger();
    extern __shared__ float dj_part[]; /* [K][rows][n_items], then ys [K][rows] */
    __shared__ int order[MOE_USED_MAX];
    __shared__ float gpart[DJ_THREADS / 32];
    const int t = blockIdx.y, row0 = blockIdx.x * a.rows, ri = a.rows * a.n_items;
    const int units = a.K * ri;
    kc_pdl_wait();
    const int32_t *sel = a.sel + (size_t)t * a.K;
    for (int u0 = threadIdx.x; u0 < units; u0 += DJ_UNITS) {
        /* every expert id first, then every unit's loads (from a valid
         * row where the unit does not count), so no branch on a loaded id
         * holds the next unit's loads back */
        int e[DJ_UNROLL], r[DJ_UNROLL], ui[DJ_UNROLL], uk[DJ_UNROLL];
#pragma unroll
        for (int i = 0; i < DJ_UNROLL; i++) {
            const int u = u0 + i * DJ_THREADS, k = (int)__umulhi((uint32_t)u, a.ri_magic), rem = u - k * ri;
            r[i] = (int)__umulhi((uint32_t)rem, a.items_magic);
            ui[i] = rem - r[i] * a.n_items;
            uk[i] = u < units ? k : 0;
            e[i] = sel[uk[i]];
        }
        dj_item<SRC> it[DJ_UNROLL];
#pragma unroll
        for (int i = 0; i < DJ_UNROLL; i++)
            if (u0 + i * DJ_THREADS < units)
                it[i].load(a.w + (size_t)max(e[i], 0) * a.expert_stride +
                               (size_t)min(row0 + r[i], a.n_out - 1) * a.row_stride,
                           ui[i]);
#pragma unroll
        for (int i = 0; i < DJ_UNROLL; i++) {
            const int u = u0 + i * DJ_THREADS;
            if (u >= units) break;
            const float v = it[i].dot(a.act + (size_t)(t * a.K + uk[i]) * a.act_stride, a.n_in, ui[i], false);
            dj_part[u] = row0 + r[i] < a.n_out && e[i] >= 0 ? v : 0.0f;
        }
    }
    if ((int)threadIdx.x < a.K) moe_rank_slot(sel, a.K, threadIdx.x, order);
    if (a.ysh) { /* the shared expert's gate, as kcuda_moe_join */
        float s = 0.0f;
        for (int i = threadIdx.x; i < a.n_out; i += DJ_THREADS) s += a.gate_sh[i] * a.xn[(size_t)t * a.n_out + i];
        s = kc_warp_sum(s);
        if ((threadIdx.x & 31) == 0) gpart[threadIdx.x >> 5] = s;
    }
    __syncthreads();
    float *ys = dj_part + units;
    for (int p = threadIdx.x; p < a.K * a.rows; p += DJ_THREADS) {
        float s = 0.0f;
        for (int i = 0; i < a.n_items; i++) s += dj_part[p * a.n_items + i];
        ys[p] = s;
    }
    __syncthreads();
    const int r = threadIdx.x;
    if (r >= a.rows || row0 + r >= a.n_out) return;
    float acc = 0.0f;
    for (int i = 0; i < a.K; i++) {
        const int k = order[i];
        if (sel[k] >= 0) acc = __fadd_rn(acc, __fmul_rn(a.wt[(size_t)t * a.K + k], ys[k * a.rows + r]));
    }
    const size_t xi = (size_t)t * a.n_out + row0 + r;
    if (a.ysh) {
        float s = 0.0f;
        for (int i = 0; i < DJ_THREADS / 32; i++) s += gpart[i];
        acc = __fadd_rn(acc, __fmul_rn(1.0f / (1.0f + expf(-s)), a.ysh[xi]));
    }
    a.x[xi] = __fadd_rn(a.x[xi], acc);
}

int kcuda_moe_down_join(struct kcuda *k, const struct kcuda_weight *w, const void *d_act, size_t act_stride,
                        float *d_x, const int32_t *d_sel, const float *d_w, int64_t n_tok, int n_used,
                        const float *d_ysh, const float *d_gate_sh, const float *d_xn)
{
    if (n_tok <= 0) return 0;
    const bool a16 = rows_aligned16(w);
    const int src = w->layout != KCUDA_LAYOUT_GGML ? -1
                    : w->type == KCUDA_Q4_K && a16 ? MG_Q4_K : w->type == KCUDA_Q6_K ? MG_Q6_K : -1;
    if (src < 0 || w->n_in % 256 || act_stride % 16 || n_used < 1 || n_used > MOE_USED_MAX || n_tok > 65535)
        return tt_error_set(TT_EUNSUPPORTED, "fused expert down and join: type %d, %lld inputs, %d experts",
                            w->type, (long long)w->n_in, n_used);
    const auto kern = src == MG_Q4_K ? k_moe_down_join<MG_Q4_K> : k_moe_down_join<MG_Q6_K>;
    int *per_sm = &k->dj_per_sm[src == MG_Q4_K ? 0 : 1];
    if (!*per_sm) { /* blocks a multiprocessor holds (registers decide it: the shared memory is small) */
        KC_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, kern, DJ_THREADS,
                                                               sizeof(float) * (DJ_UNITS + DJ_THREADS)));
        *per_sm = TT_MAX(*per_sm, 1);
    }
    dj_args a = {};
    a.w = (const uint8_t *)w->data;
    a.row_stride = w->row_stride;
    a.expert_stride = w->expert_stride;
    a.n_in = (int)w->n_in;
    a.n_out = (int)w->n_out;
    a.n_items = a.n_in / 64;
    const int per_row = n_used * a.n_items;
    const int rows_max = per_row > DJ_UNITS ? 1 : TT_MIN(DJ_UNITS / per_row, DJ_THREADS);
    const int64_t wave = (int64_t)*per_sm * k->n_sm / n_tok; /* blocks per token in one wave */
    a.rows = wave > 0 ? (int)TT_MIN((int64_t)rows_max, (a.n_out + wave - 1) / wave) : rows_max;
    if (k->dj_rows > 0) a.rows = TT_MIN(rows_max, k->dj_rows);
    a.ri_magic = dj_magic((uint32_t)(a.rows * a.n_items));
    a.items_magic = dj_magic((uint32_t)a.n_items);
    a.act = (const uint8_t *)d_act;
    a.act_stride = act_stride;
    a.x = d_x;
    a.sel = d_sel;
    a.wt = d_w;
    a.K = n_used;
    a.ysh = d_ysh;
    a.gate_sh = d_gate_sh;
    a.xn = d_xn;
    const size_t smem = sizeof(float) * ((size_t)per_row * a.rows + (size_t)n_used * a.rows);
    if (smem > (48u << 10)) /* also keeps a block's units, and so dj_magic's divisors, below 2^16 */
        return tt_error_set(TT_EUNSUPPORTED, "fused expert down and join: rows of %lld inputs", (long long)w->n_in);
    const dim3 grid(kc_blocks(a.n_out, a.rows), (unsigned)n_tok);
    KC_PROF_BEGIN(k);
    KC_LAUNCH_SMEM(k, kern, grid, dim3(DJ_THREADS), smem, a);
    KC_PROF_END(k, "moe_down_join");
    return 0;
}

/* ---- grouped expert products on the tensor cores ---- */

#define MG_BM 64                   /* weight rows per block */
#define MG_BN KCUDA_MOE_GROUP      /* slots per block */
#define MG_BK 64                   /* inputs per step */
#define MG_LD (MG_BK + 8)          /* shared row pitch in halves (rows 16 bytes apart in banks) */
#define MG_LDC (MG_BM + 4)         /* shared result pitch in floats */
#define MG_THREADS 128             /* 4 warps, each 16 rows x 32 slots */
static_assert(MG_BN == 32, "the warp tiling below takes 32 slots");

struct mg_args {
    const uint8_t *w, *w2;         /* expert 0's first row (w2: up, SwiGLU) */
    size_t row_stride, expert_stride;
    int n_in, n_out;
    int e0, e1;                    /* experts [e0, e1) are handled; w points at expert e0 */
    const int4 *groups;
    const int32_t *order;
    const __half *act;             /* F16 rows act_ld apart; slot s reads row s / act_div */
    int64_t act_ld;
    int act_div;
    float *out;                    /* slot s: out + s * ldo */
    int64_t ldo;
    int mode;
};

/* Eight weights j0..j0+7 of a row (j0 a multiple of 8), in two stages so
 * that a step's loads are in flight while the previous step multiplies:
 * fetch() issues the loads, expand() turns them into 8 F16 values with the
 * same float operations as kcuda_dequant_f16 (both paths give the same
 * operands). */
template <int SRC> struct mg_raw;

template <> struct mg_raw<MG_F16> {
    uint4 v;
    __device__ __forceinline__ void fetch(const uint8_t *wr, int j0) { v = __ldg((const uint4 *)(wr + 2 * (size_t)j0)); }
    __device__ __forceinline__ uint4 expand(int) const { return v; }
};

__device__ __forceinline__ uint4 mg_pack8(const float y[8])
{
    union { __half2 h[4]; uint4 u; } pk;
#pragma unroll
    for (int i = 0; i < 4; i++) pk.h[i] = __floats2half2_rn(y[2 * i], y[2 * i + 1]);
    return pk.u;
}

template <> struct mg_raw<MG_Q4_K> {
    uint4 hdr; /* d, dmin, 12 scale bytes */
    uint2 q;   /* 8 bytes of nibbles */
    __device__ __forceinline__ void fetch(const uint8_t *wr, int j0)
    {
        const uint8_t *b = wr + (size_t)(j0 >> 8) * 144;
        const int e = j0 & 255;
        hdr = __ldg((const uint4 *)b);
        q = __ldg((const uint2 *)(b + 16 + 32 * (e >> 6) + (e & 31)));
    }
    __device__ __forceinline__ uint4 expand(int j0) const
    {
        const int e = j0 & 255, g = e >> 6, hi = (e & 63) >= 32, j = 2 * g + hi;
        int sc, m;
        k_scale_min(hdr.y, hdr.z, hdr.w, j, sc, m);
        const __half2 dd = *(const __half2 *)&hdr.x;
        const float d1 = __low2float(dd) * (float)sc, m1 = __high2float(dd) * (float)m;
        const uint32_t qw[2] = { q.x, q.y };
        float y[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t byte = byte_of(qw[i >> 2], i & 3);
            y[i] = __fsub_rn(__fmul_rn(d1, (float)(hi ? byte >> 4 : byte & 15)), m1);
        }
        return mg_pack8(y);
    }
};

/* Q6_K blocks are 210 bytes, 2-byte aligned: the 8 low-bit and 8 high-bit
 * bytes come as three aligned words each, shifted into place in expand(). */
template <> struct mg_raw<MG_Q6_K> {
    uint32_t l[3], h[3];
    uint32_t sh;     /* bit shift of the misalignment (0 or 16) */
    __half d;
    int8_t sc;
    __device__ __forceinline__ void fetch(const uint8_t *wr, int j0)
    {
        const uint8_t *b = wr + (size_t)(j0 >> 8) * 210;
        const int e = j0 & 255, hh = e >> 7, r = e & 127, l0 = r & 31, qu = r >> 5;
        const uintptr_t pl = (uintptr_t)(b + 64 * hh + l0 + (qu & 1) * 32), ph = (uintptr_t)(b + 128 + 32 * hh + l0);
        const uint32_t *ql = (const uint32_t *)(pl & ~(uintptr_t)3), *qh = (const uint32_t *)(ph & ~(uintptr_t)3);
#pragma unroll
        for (int i = 0; i < 3; i++) l[i] = __ldg(ql + i), h[i] = __ldg(qh + i);
        sh = (uint32_t)(pl & 3) * 8u; /* pl and ph differ by a multiple of 8 */
        d = __ldg((const __half *)(b + 208));
        sc = (int8_t)__ldg(b + 192 + (e >> 4));
    }
    __device__ __forceinline__ uint4 expand(int j0) const
    {
        const int qu = (j0 & 127) >> 5;
        const uint32_t lw[2] = { __funnelshift_r(l[0], l[1], sh), __funnelshift_r(l[1], l[2], sh) };
        const uint32_t hw[2] = { __funnelshift_r(h[0], h[1], sh), __funnelshift_r(h[1], h[2], sh) };
        const float ds = __half2float(d) * (float)sc;
        float y[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t lb = byte_of(lw[i >> 2], i & 3), hv = byte_of(hw[i >> 2], i & 3);
            const int nib = qu >= 2 ? (int)(lb >> 4) : (int)(lb & 15);
            y[i] = __fmul_rn(ds, (float)((nib | (int)(((hv >> (2 * qu)) & 3) << 4)) - 32));
        }
        return mg_pack8(y);
    }
};

/* Eight F16 activations j0..j0+7 of a row (zeros past the group's slots
 * or the row's end). The activations are widened to F16 once per batch
 * (kcuda_act_to_f16): widening them here instead, in every block of rows,
 * measured slower (prefill 23.8-25.4k vs 25.3-26.9k tok/s). */
__device__ __forceinline__ uint4 mg_fetch_a(const mg_args &a, const __half *row, int j0)
{
    return row && j0 < a.n_in ? *(const uint4 *)(row + j0) : make_uint4(0, 0, 0, 0);
}

/* Units of one step: MG_BM rows x MG_BK inputs of a weight in chunks of 8
 * (MG_WU per thread), MG_BN slots x MG_BK inputs of the activations
 * (MG_AU per thread); unit i of thread tid is row (or slot) tid / 8 + 16 i,
 * chunk tid % 8. */
#define MG_WU (MG_BM * (MG_BK / 8) / MG_THREADS)
#define MG_AU (MG_BN * (MG_BK / 8) / MG_THREADS)

template <int SRC>
__device__ __forceinline__ void mg_fetch_w(const mg_args &a, const uint8_t *w, int row0, int k0, mg_raw<SRC> *raw)
{
    const int j0 = k0 + 8 * (threadIdx.x % 8);
#pragma unroll
    for (int i = 0; i < MG_WU; i++) {
        const int row = row0 + threadIdx.x / 8 + 16 * i;
        if (row < a.n_out && j0 < a.n_in) raw[i].fetch(w + (size_t)row * a.row_stride, j0);
    }
}

template <int SRC>
__device__ __forceinline__ void mg_store_w(const mg_args &a, const mg_raw<SRC> *raw, int row0, int k0, __half *ws)
{
    const int c = threadIdx.x % 8, j0 = k0 + 8 * c;
#pragma unroll
    for (int i = 0; i < MG_WU; i++) {
        const int r = threadIdx.x / 8 + 16 * i;
        const bool ok = row0 + r < a.n_out && j0 < a.n_in;
        *(uint4 *)(ws + r * MG_LD + 8 * c) = ok ? raw[i].expand(j0) : make_uint4(0, 0, 0, 0);
    }
}

/* Without prefetch: each unit loaded, expanded and stored in turn (few
 * registers, so more blocks resident to hide the loads). */
template <int SRC>
__device__ __forceinline__ void mg_load_w(const mg_args &a, const uint8_t *w, int row0, int k0, __half *ws)
{
    const int c = threadIdx.x % 8, j0 = k0 + 8 * c;
#pragma unroll 1
    for (int i = 0; i < MG_WU; i++) {
        const int r = threadIdx.x / 8 + 16 * i;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row0 + r < a.n_out && j0 < a.n_in) {
            mg_raw<SRC> raw;
            raw.fetch(w + (size_t)(row0 + r) * a.row_stride, j0);
            v = raw.expand(j0);
        }
        *(uint4 *)(ws + r * MG_LD + 8 * c) = v;
    }
}

/* Block (64 rows, one group): out[slot][row] (mode) W_expert[row] . act[slot / act_div].
 * PF: the next step's loads are issued before this step's products (at
 * least 4 blocks per multiprocessor); else each step loads, then multiplies
 * (more blocks resident). */
template <int SRC, bool PAIR, bool PF>
__global__ void __launch_bounds__(MG_THREADS, PF ? 4 : 1) k_moe_gemm(const mg_args a)
{
    using namespace nvcuda;
    kc_pdl_trigger();
    kc_pdl_wait();
    const int4 grp = a.groups[blockIdx.y];
    if (grp.x < a.e0 || grp.x >= a.e1) return; /* the whole block leaves */
    const int row0 = blockIdx.x * MG_BM, n = grp.z, warp = threadIdx.x >> 5;
    const size_t ex_off = (size_t)(grp.x - a.e0) * a.expert_stride;
    const uint8_t *w = a.w + ex_off, *w2 = PAIR ? a.w2 + ex_off : NULL;
    constexpr int IN_BYTES = ((PAIR ? 2 : 1) * MG_BM + MG_BN) * MG_LD * 2;
    constexpr int OUT_BYTES = (PAIR ? 2 : 1) * MG_BN * MG_LDC * 4;
    __shared__ __align__(128) uint8_t sm[IN_BYTES > OUT_BYTES ? IN_BYTES : OUT_BYTES];
    __half *ws = (__half *)sm, *ws2 = ws + MG_BM * MG_LD, *as = ws + (PAIR ? 2 : 1) * MG_BM * MG_LD;
    const __half *arow[MG_AU]; /* this thread's activation rows, NULL past the group's slots */
#pragma unroll
    for (int i = 0; i < MG_AU; i++) {
        const int j = threadIdx.x / 8 + 16 * i;
        arow[i] = j < n ? a.act + (size_t)(a.order[grp.y + j] / a.act_div) * a.act_ld : NULL;
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2], acc2[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        wmma::fill_fragment(acc[j], 0.0f);
        if (PAIR) wmma::fill_fragment(acc2[j], 0.0f);
    }
    mg_raw<SRC> rw[PF ? MG_WU : 1], rw2[PF && PAIR ? MG_WU : 1];
    uint4 ra[MG_AU];
    const int c8 = 8 * (threadIdx.x % 8);
#define MG_FETCH(k0)                                                                          \
    do {                                                                                      \
        mg_fetch_w<SRC>(a, w, row0, (k0), rw);                                                \
        if (PAIR) mg_fetch_w<SRC>(a, w2, row0, (k0), rw2);                                    \
        _Pragma("unroll") for (int i = 0; i < MG_AU; i++) ra[i] = mg_fetch_a(a, arow[i], (k0) + c8); \
    } while (0)
    if (PF) MG_FETCH(0);
    for (int k0 = 0; k0 < a.n_in; k0 += MG_BK) {
        __syncthreads(); /* the previous step's operands are used */
        if (PF) {
            mg_store_w<SRC>(a, rw, row0, k0, ws);
            if (PAIR) mg_store_w<SRC>(a, rw2, row0, k0, ws2);
        } else {
            mg_load_w<SRC>(a, w, row0, k0, ws);
            if (PAIR) mg_load_w<SRC>(a, w2, row0, k0, ws2);
#pragma unroll
            for (int i = 0; i < MG_AU; i++)
                ra[i] = mg_fetch_a(a, arow[i], k0 + c8);
        }
#pragma unroll
        for (int i = 0; i < MG_AU; i++) *(uint4 *)(as + (threadIdx.x / 8 + 16 * i) * MG_LD + c8) = ra[i];
        __syncthreads();
        if (PF && k0 + MG_BK < a.n_in) MG_FETCH(k0 + MG_BK); /* in flight while this step multiplies */
#pragma unroll
        for (int kk = 0; kk < MG_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa, fa2;
            wmma::load_matrix_sync(fa, ws + 16 * warp * MG_LD + kk, MG_LD);
            if (PAIR) wmma::load_matrix_sync(fa2, ws2 + 16 * warp * MG_LD + kk, MG_LD);
#pragma unroll
            for (int j = 0; j < 2; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
                wmma::load_matrix_sync(fb, as + 16 * j * MG_LD + kk, MG_LD);
                wmma::mma_sync(acc[j], fa, fb, acc[j]);
                if (PAIR) wmma::mma_sync(acc2[j], fa2, fb, acc2[j]);
            }
        }
    }
#undef MG_FETCH
    __syncthreads(); /* the operands' memory now takes the results: cs[slot][row] */
    float *cs = (float *)sm, *cs2 = cs + MG_BN * MG_LDC;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        wmma::store_matrix_sync(cs + 16 * j * MG_LDC + 16 * warp, acc[j], MG_LDC, wmma::mem_col_major);
        if (PAIR) wmma::store_matrix_sync(cs2 + 16 * j * MG_LDC + 16 * warp, acc2[j], MG_LDC, wmma::mem_col_major);
    }
    __syncthreads();
    for (int u = threadIdx.x; u < MG_BN * MG_BM; u += MG_THREADS) {
        const int j = u / MG_BM, r = u % MG_BM;
        if (j >= n || row0 + r >= a.n_out) continue;
        const float v = cs[j * MG_LDC + r];
        float *o = a.out + (size_t)a.order[grp.y + j] * (size_t)a.ldo + row0 + r;
        if (PAIR) *o = v / (1.0f + expf(-v)) * cs2[j * MG_LDC + r];
        else *o = v;
    }
}

typedef void (*mg_kernel)(const mg_args);

template <int SRC>
static mg_kernel mg_pick_pf(bool pair, bool pf)
{
    if (pair) return pf ? k_moe_gemm<SRC, true, true> : k_moe_gemm<SRC, true, false>;
    return pf ? k_moe_gemm<SRC, false, true> : k_moe_gemm<SRC, false, false>;
}

/* TT_GPU_MOE_PREFETCH (default 1, read once by kcuda_create) picks the PF
 * kernels (prefill 25.3-26.9k vs 22.2-24.0k tok/s without, Qwen3-MoE shape,
 * H200), except for Q6_K gate/up pairs, whose PF kernel spills registers. */
static mg_kernel mg_pick(const struct kcuda *k, int src, bool pair)
{
    const bool pf = k->moe_prefetch && !(src == MG_Q6_K && pair);
    switch (src) {
    case MG_Q4_K: return mg_pick_pf<MG_Q4_K>(pair, pf);
    case MG_Q6_K: return mg_pick_pf<MG_Q6_K>(pair, pf);
    default: return mg_pick_pf<MG_F16>(pair, pf);
    }
}

/* Which source a weight is read from: directly (Q4_K, Q6_K, F16 in GGML's
 * layout with aligned rows), else F16 expanded into the scratch (regrouped
 * Q6_K through kcuda_weight_format). */
static int mg_source(const struct kcuda_weight *w)
{
    if (w->layout != KCUDA_LAYOUT_GGML) return -1; /* regrouped: through kcuda_dequant_f16 */
    const bool a16 = rows_aligned16(w);
    if (w->type == KCUDA_Q4_K && a16) return MG_Q4_K;
    if (w->type == KCUDA_Q6_K && w->row_stride % 2 == 0 && w->expert_stride % 2 == 0) return MG_Q6_K;
    if (w->type == KCUDA_F16 && a16) return MG_F16;
    return -1;
}

int kcuda_moe_gemm(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                   int n_expert, const int32_t *d_groups, int max_groups, const int32_t *d_order, const void *d_act_f16,
                   int64_t act_ld, int act_div, float *d_out, int64_t ldo, enum kcuda_out_mode mode)
{
    if (w->n_out == 0 || max_groups <= 0) return 0;
    const bool pair = mode == KCUDA_OUT_SWIGLU;
    if ((mode != KCUDA_OUT_STORE && !pair) || max_groups > 65535 || act_div < 1 || w->n_in % 8 || act_ld % 8 ||
        n_expert < 1 || n_expert > MOE_EXPERTS_MAX)
        return tt_error_set(TT_EINVAL, "kcuda_moe_gemm: mode %d, %d groups, %lld inputs", (int)mode, max_groups,
                            (long long)w->n_in);
    if (pair && (!w2 || w2->type != w->type || w2->n_in != w->n_in || w2->n_out != w->n_out ||
                 w2->row_stride != w->row_stride || w2->expert_stride != w->expert_stride))
        return tt_error_set(TT_EINVAL, "SwiGLU product needs gate and up of one type and shape");
    mg_args a = {};
    a.n_in = (int)w->n_in;
    a.n_out = (int)w->n_out;
    a.groups = (const int4 *)d_groups;
    a.order = d_order;
    a.act = (const __half *)d_act_f16;
    a.act_ld = act_ld;
    a.act_div = act_div;
    a.out = d_out;
    a.ldo = ldo;
    a.mode = mode;
    const dim3 grid(kc_blocks(w->n_out, MG_BM), (unsigned)max_groups);
    const int src = mg_source(w);
    if (src >= 0) {
        a.w = (const uint8_t *)w->data;
        a.w2 = pair ? (const uint8_t *)w2->data : NULL;
        a.row_stride = w->row_stride;
        a.expert_stride = w->expert_stride;
        a.e0 = 0;
        a.e1 = MOE_EXPERTS_MAX;
        KC_PROF_BEGIN(k);
        KC_LAUNCH(k, mg_pick(k, src, pair), grid, dim3(MG_THREADS), a);
        KC_PROF_END(k, pair ? "moe_gemm swiglu" : "moe_gemm");
        return 0;
    }
    /* other types: chunks of experts expanded to F16 in the scratch */
    const size_t f16_expert = (size_t)w->n_out * (size_t)w->n_in * 2, per = f16_expert * (pair ? 2 : 1);
    const int chunk = (int)TT_MIN(k->scratch_bytes / per, (size_t)n_expert);
    if (chunk < 1)
        return tt_error_set(TT_ENOMEM, "GPU scratch of %zu bytes holds no expert of %zu bytes as F16",
                            k->scratch_bytes, per);
    uint8_t *s1 = (uint8_t *)k->scratch, *s2 = s1 + (size_t)chunk * f16_expert;
    a.w = s1;
    a.w2 = pair ? s2 : NULL;
    a.row_stride = (size_t)w->n_in * 2;
    a.expert_stride = f16_expert;
    for (int e0 = 0; e0 < n_expert; e0 += chunk) {
        a.e0 = e0;
        a.e1 = TT_MIN(e0 + chunk, n_expert);
        for (int e = a.e0; e < a.e1; e++) {
            const size_t at = (size_t)(e - e0) * f16_expert;
            int err = kcuda_dequant_f16(k, kcuda_weight_format(w),
                                        (const uint8_t *)w->data + (size_t)e * w->expert_stride,
                                        w->row_stride, 0, w->n_out, w->n_in, s1 + at);
            if (!err && pair)
                err = kcuda_dequant_f16(k, kcuda_weight_format(w2),
                                        (const uint8_t *)w2->data + (size_t)e * w2->expert_stride,
                                        w2->row_stride, 0, w2->n_out, w2->n_in, s2 + at);
            if (err) return err;
        }
        KC_PROF_BEGIN(k);
        KC_LAUNCH(k, mg_pick(k, MG_F16, pair), grid, dim3(MG_THREADS), a);
        KC_PROF_END(k, pair ? "moe_gemm swiglu (f16 scratch)" : "moe_gemm (f16 scratch)");
    }
    return 0;
}
