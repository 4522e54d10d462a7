/*
 * kcuda_misc.cu: the small element-wise and per-token steps: SwiGLU, biases,
 * residual adds, row gathers, a deterministic F32 sum, the block maxima
 * of a row of logits and a sampler's top candidates from them. (The MoE
 * steps are in kcuda_moe.cu.)
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

/*
 * Top candidates (kcuda_top_cands), in one block of TOPC_THREADS threads:
 *  1. each thread loads up to TOPC_KEYS block maxima into registers, as
 *     order-preserving keys (topc_key); a NaN maximum gives up at once;
 *  2. T = a floor for the n_cand-th largest maximum, counting repeats: the
 *     smallest key sharing its top TOPC_SELECT_BITS bits (radix select of
 *     those bits: half the passes of an exact select, for a few blocks
 *     more to read), or the smallest key when there are no more blocks
 *     than n_cand;
 *  3. the blocks whose maximum reaches T are listed, and every logit >= T
 *     in them goes into the candidate scratch as a 64-bit key;
 *  4. a bitonic sort of the scratch, largest first; the first m are written.
 * Exact: the n_cand blocks of largest maxima each hold a logit >= T (or a
 * NaN, which is seen: they are read), so the n_cand best logits are >= T,
 * and a logit >= T lies in a block whose maximum is >= T. The blocks read
 * are the n_cand largest and those whose maximum shares the n_cand-th's
 * top 16 bits (a range of 1/128 of its size): a few on real logits, so
 * TOPC_CAP overflows only on ties or logits crowded into such a range
 * (then the answer is -1, never a wrong one).
 */
#define TOPC_SELECT_BITS 16
#define TOPC_THREADS 1024
#define TOPC_KEYS 8 /* block maxima per thread */
#define TOPC_BLOCKS_MAX (TOPC_THREADS * TOPC_KEYS)
#define TOPC_CAP 4096 /* candidate scratch, a power of two; block list of as many */
static_assert(TOPC_BLOCKS_MAX <= 65536, "block numbers are listed in 16 bits");
static_assert(TOPC_CAP >= 64 * KCUDA_TOP_CANDS, "n_cand blocks of 64 fit the scratch");

/* A float as an unsigned key in the sampler's order (larger float, larger
 * key; -0 and +0 equal, as the sampler's comparison finds them). Every
 * non-NaN float's key is above 0; NaN is caught before keys are compared. */
__device__ __forceinline__ uint32_t topc_key(float x)
{
    const uint32_t u = x == 0.0f ? 0u : __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* A candidate as one 64-bit key: the logit's key above, 0x7FFFFFFF - id
 * below (so a larger key is the sampler's earlier candidate: larger logit,
 * then lower id), shifted left one to keep the sign of a zero logit. */
__device__ __forceinline__ unsigned long long topc_pack(float x, int id)
{
    const uint32_t lo =
        ((0x7FFFFFFFu - (uint32_t)id) << 1) | (__float_as_uint(x) == 0x80000000u ? 1u : 0u);
    return (unsigned long long)topc_key(x) << 32 | lo;
}

__device__ __forceinline__ struct kcuda_cand topc_unpack(unsigned long long c)
{
    const uint32_t key = (uint32_t)(c >> 32), lo = (uint32_t)c;
    uint32_t u = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
    if (key == 0x80000000u && (lo & 1u)) u = 0x80000000u; /* -0 */
    struct kcuda_cand r;
    r.id = (int32_t)(0x7FFFFFFFu - (lo >> 1));
    r.logit = __uint_as_float(u);
    return r;
}

/* Warp-aggregated append: the lanes with `take` get consecutive slots from
 * *n, one shared atomic per warp. Every lane of the warp calls it. */
__device__ __forceinline__ int topc_append(int *n, bool take)
{
    const unsigned m = __ballot_sync(0xffffffffu, take);
    const int lane = threadIdx.x & 31, leader = m ? __ffs(m) - 1 : 0;
    int base = 0;
    if (m && lane == leader) base = atomicAdd(n, __popc(m));
    base = __shfl_sync(0xffffffffu, base, leader);
    return base + __popc(m & ((1u << lane) - 1u));
}

/* The top TOPC_SELECT_BITS bits of the rank-th largest (1 <= rank <= nb)
 * of nb keys, the rest zero, key j of thread t being number t + j *
 * TOPC_THREADS, by radix select 8 bits at a time: a
 * pass counts the keys that agree with the digits chosen so far by their
 * next digit (lanes of a warp with the same digit add once), then warp 0
 * finds the digit whose bin holds the rank-th. The histograms alternate so
 * that one is cleared while the other is read. hist[0] is zero on entry
 * and every thread calls this. */
__device__ uint32_t topc_select(const uint32_t key[TOPC_KEYS], int nb, int rank, int (*hist)[256],
                                uint32_t *sel)
{
    const int t = threadIdx.x, lane = t & 31;
    uint32_t prefix = 0, mask = 0;
    for (int p = 0; p < TOPC_SELECT_BITS / 8; p++) {
        const int shift = 24 - 8 * p;
        int *h = hist[p & 1];
#pragma unroll
        for (int j = 0; j < TOPC_KEYS; j++) {
            if (j * TOPC_THREADS >= nb) break;
            const bool in = t + j * TOPC_THREADS < nb && (key[j] & mask) == prefix;
            const int bin = in ? (int)((key[j] >> shift) & 255u) : 256;
            const unsigned peers = __match_any_sync(0xffffffffu, bin);
            if (in && lane == __ffs(peers) - 1) atomicAdd(&h[bin], __popc(peers));
        }
        __syncthreads();
        if (t < 32) {
            /* lane l holds bins 255 - 8l down to 248 - 8l; scan from the top */
            int c[8], s = 0;
#pragma unroll
            for (int i = 0; i < 8; i++)
                s += c[i] = h[255 - 8 * lane - i];
            int incl = s;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int v = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += v;
            }
            int above = incl - s;
            if (above < rank && rank <= incl) {
                for (int i = 0; i < 8; i++) {
                    if (above + c[i] >= rank) {
                        sel[0] = 255u - 8u * lane - i;
                        sel[1] = (uint32_t)(rank - above);
                        break;
                    }
                    above += c[i];
                }
            }
        } else if (t < 32 + 256) {
            hist[(p + 1) & 1][t - 32] = 0;
        }
        __syncthreads();
        prefix |= sel[0] << shift;
        mask |= 255u << shift;
        rank = (int)sel[1];
    }
    return prefix;
}

/* Sort a[0..p2) (p2 a power of two) largest first, by a bitonic network:
 * threads t < n_thr take the pairs t, t + n_thr, ...; `warp` when those
 * threads are one warp (then no block barrier). */
__device__ void topc_sort(unsigned long long *a, int p2, int n_thr, bool warp)
{
    const int t = threadIdx.x;
    for (int k = 2; k <= p2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int q = t; q < p2 / 2; q += n_thr) {
                const int i = ((q & ~(j - 1)) << 1) | (q & (j - 1)), l = i | j;
                const unsigned long long x = a[i], y = a[l];
                const bool down = (i & k) == 0; /* this run largest first */
                if (down ? x < y : x > y) {
                    a[i] = y;
                    a[l] = x;
                }
            }
            if (warp)
                __syncwarp();
            else
                __syncthreads();
        }
    }
}

/* Every logit >= thr in the n_list listed blocks of 64 into cand (while
 * TOPC_CAP hold them; *n_cand counts them all), four loads in flight per
 * thread. Returns whether this thread read a NaN. Every thread calls it. */
__device__ bool topc_collect(const float *__restrict__ logits, int n, const uint16_t *list,
                             int n_list, uint32_t thr, unsigned long long *cand, int *n_cand)
{
    const int t = threadIdx.x, n_elem = n_list * 64;
    bool bad = false;
    for (int e0 = 0; e0 < n_elem; e0 += 4 * TOPC_THREADS) {
        float x[4];
        int id[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int e = e0 + u * TOPC_THREADS + t;
            id[u] = e < n_elem ? (int)list[e >> 6] * 64 + (e & 63) : n;
            x[u] = id[u] < n ? logits[id[u]] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            bad |= x[u] != x[u];
            const bool take = id[u] < n && x[u] == x[u] && topc_key(x[u]) >= thr;
            const int at = topc_append(n_cand, take);
            if (take && at < TOPC_CAP) cand[at] = topc_pack(x[u], id[u]);
        }
    }
    return bad;
}

/* kcuda_top_cands' kernel: one block of TOPC_THREADS; *count = -1 on a NaN
 * read, on a full scratch, or (maxima not of these logits) too few found. */
__global__ void __launch_bounds__(TOPC_THREADS)
    k_top_cands(const float *__restrict__ logits, int n, const float *__restrict__ block_max,
                int n_cand, struct kcuda_cand *__restrict__ out, int32_t *__restrict__ count)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ unsigned long long s_cand[TOPC_CAP];
    __shared__ uint16_t s_list[TOPC_CAP];
    __shared__ int s_hist[2][256];
    __shared__ uint32_t s_sel[2];
    __shared__ int s_n_list, s_n_cand;
    const int t = threadIdx.x, nb = (n + 63) / 64, m = min(n_cand, n);

    uint32_t key[TOPC_KEYS];
    bool bad = false;
#pragma unroll
    for (int j = 0; j < TOPC_KEYS; j++) {
        const int b = t + j * TOPC_THREADS;
        const float x = b < nb ? block_max[b] : 0.0f;
        bad |= x != x;
        key[j] = topc_key(x);
    }
    if (t < 256) s_hist[0][t] = 0;
    if (t == 0) s_n_list = 0, s_n_cand = 0;
    if (__syncthreads_or(bad)) {
        if (t == 0) *count = -1;
        return;
    }
    const uint32_t thr = nb > n_cand ? topc_select(key, nb, n_cand, s_hist, s_sel) : 0u;

    /* the blocks that can hold a candidate */
#pragma unroll
    for (int j = 0; j < TOPC_KEYS; j++) {
        if (j * TOPC_THREADS >= nb) break;
        const int b = t + j * TOPC_THREADS;
        const bool take = b < nb && key[j] >= thr;
        const int at = topc_append(&s_n_list, take);
        if (take && at < TOPC_CAP) s_list[at] = (uint16_t)b;
    }
    __syncthreads();
    const int n_list = s_n_list;
    if (n_list > TOPC_CAP) {
        if (t == 0) *count = -1;
        return;
    }

    /* their logits >= T */
    bad = topc_collect(logits, n, s_list, n_list, thr, s_cand, &s_n_cand);
    bad = __syncthreads_or(bad);
    const int nc = s_n_cand;
    if (bad || nc > TOPC_CAP || nc < m) {
        if (t == 0) *count = -1;
        return;
    }

    int p2 = 1;
    while (p2 < nc)
        p2 <<= 1;
    for (int i = nc + t; i < p2; i += TOPC_THREADS)
        s_cand[i] = 0; /* below every candidate */
    __syncthreads();
    if (p2 <= 128) {
        if (t < 32) topc_sort(s_cand, p2, 32, true);
    } else {
        topc_sort(s_cand, p2, TOPC_THREADS, false);
    }
    __syncthreads();
    if (t < m) out[t] = topc_unpack(s_cand[t]);
    if (t == 0) *count = m;
}

bool kcuda_top_cands_ok(int64_t n)
{
    return n >= 1 && n <= (int64_t)TOPC_BLOCKS_MAX * 64;
}

int kcuda_top_cands(struct kcuda *k, const float *d_logits, int64_t n, const float *d_block_max,
                    int n_cand, struct kcuda_cand *d_out, int32_t *d_count)
{
    if (n_cand < 1 || n_cand > KCUDA_TOP_CANDS)
        return tt_error_set(TT_EINVAL, "top candidates: n_cand %d is outside 1..%d", n_cand,
                            KCUDA_TOP_CANDS);
    if (!kcuda_top_cands_ok(n))
        return tt_error_set(TT_EINVAL, "top candidates of %lld logits: the GPU takes 1..%d",
                            (long long)n, TOPC_BLOCKS_MAX * 64);
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, k_top_cands, dim3(1), dim3(TOPC_THREADS), d_logits, (int)n, d_block_max, n_cand,
              d_out, d_count);
    KC_PROF_END(k, "top_cands");
    return 0;
}
