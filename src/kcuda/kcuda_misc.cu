/*
 * kcuda_misc.cu: the small element-wise and per-token steps: SwiGLU, biases,
 * residual adds, row gathers, the MoE router and expert join, and a
 * deterministic F32 sum.
 *
 * Where the CPU engine's float operations have a fixed order (the router's
 * selection and renormalization, the expert join), the kernels repeat that
 * order with explicitly rounded operations (__fmul_rn, __fadd_rn) so the
 * compiler cannot fuse them into FMAs the CPU code does not use.
 */
#include "kcuda_impl.cuh"

#define MOE_EXPERTS_MAX 1024
#define MOE_USED_MAX 32

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

/* ---- MoE ---- */

/* One warp per token: softmax, then n_used rounds of "largest probability
 * not yet taken, lowest id on ties", as route() in engine_forward.c. */
__global__ void k_moe_route(const float *logits, int X, int K, int norm, int32_t *sel, float *wout,
                            int32_t *tiles)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ float p[MOE_EXPERTS_MAX];
    const int lane = threadIdx.x;
    const float *row = logits + (size_t)blockIdx.x * X;
    float mx = -INFINITY;
    for (int i = lane; i < X; i += 32) mx = fmaxf(mx, row[i]);
    mx = kc_warp_max(mx);
    double sum = 0.0;
    for (int i = lane; i < X; i += 32) {
        const float e = expf(row[i] - mx);
        p[i] = e;
        sum += (double)e;
    }
    sum = kc_warp_sum_d(sum);
    for (int i = lane; i < X; i += 32) p[i] = (float)((double)p[i] / sum);
    __syncwarp();
    int32_t *s = sel + (size_t)blockIdx.x * K;
    float *w = wout + (size_t)blockIdx.x * K;
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
    if (tiles && lane < K) { /* one slot per tile, in slot order (kcuda_moe_plan, tile_tok 1) */
        const int slot = (int)blockIdx.x * K + lane;
        int32_t *r = tiles + (size_t)slot * KCUDA_MOE_TILE_INTS;
        r[0] = s[lane];
        r[1] = 1;
        r[2] = slot;
    }
}

int kcuda_moe_route(struct kcuda *k, const float *d_logits, int64_t n_tok, int n_expert,
                    int n_used, bool norm, int32_t *d_sel, float *d_w, int32_t *d_tiles)
{
    if (n_tok <= 0) return 0;
    if (n_expert > MOE_EXPERTS_MAX || n_used > n_expert || n_used > MOE_USED_MAX)
        return tt_error_set(TT_EUNSUPPORTED, "%d of %d experts: the GPU router takes up to %d of %d",
                            n_used, n_expert, MOE_USED_MAX, MOE_EXPERTS_MAX);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_moe_route, dim3((unsigned)n_tok), dim3(32), d_logits, n_expert, n_used, norm, d_sel, d_w,
              d_tiles);
    KC_PROF_END(k, "moe_route");
    return 0;
}

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

/* Block (token, 256 dimensions): thread 0 sorts the token's slots by
 * expert id into shared memory (n_used is small); the shared expert's gate
 * is a dot product each block computes for itself. */
__global__ void k_moe_join(float *x, const float *y, const int32_t *sel, const float *w, int K,
                           int n, const float *ysh, const float *gate_sh, const float *xn)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ int order[MOE_USED_MAX];
    __shared__ float part[8];
    const int64_t t = blockIdx.x;
    if (threadIdx.x == 0) {
        for (int a = 0; a < K; a++) order[a] = a;
        for (int a = 1; a < K; a++) /* insertion sort by expert id */
            for (int b = a; b > 0 && sel[t * K + order[b - 1]] > sel[t * K + order[b]]; b--) {
                const int tmp = order[b];
                order[b] = order[b - 1];
                order[b - 1] = tmp;
            }
    }
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
        acc = __fadd_rn(acc, __fmul_rn(w[slot], y[slot * n + i]));
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
