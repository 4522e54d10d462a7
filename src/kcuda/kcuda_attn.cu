/*
 * kcuda_attn.cu: RoPE with the optional per-head norms and the KV-cache
 * store, then attention over the cache.
 *
 * Cache layout per layer: [n_seq][n_ctx][n_kv * head_dim] of F16 (or F32),
 * as the CPU engine's per-layer slice of its cache.
 *
 * Attention is split over keys ("flash decoding"): block (s, g, t) takes
 * the query heads of token t that share KV head g (grouped-query attention:
 * each key and value is read once for the group) over part s of the
 * positions 0..pos[t] (parts of at least 16 keys, so short prefixes use
 * fewer parts), walks it in tiles of ATT_TILE keys with an online softmax,
 * and leaves its maximum, its sum of exponentials and its unnormalized
 * output; the last part to finish (an atomic ticket per token and KV head)
 * weighs the parts together, so attention is one launch. Splitting is
 * decided from the positions on the device, so one launch shape serves every
 * decode step (a graph replays it). Queries are rounded to F16 first with an
 * F16 cache, as the CPU and llama.cpp's flash attention do. On sm_90 the
 * decode tokens' attention can instead take one cluster of 8 or 16 blocks
 * (of 256 threads, or 128) per KV head (k_attn_cl), whose blocks join in
 * distributed shared memory: no ticket and no global round trip, faster at
 * short contexts; the engine picks the form by position
 * (kcuda_set_attn_cluster, kcuda_set_attn_cluster_threads).
 */
#include "kcuda_impl.cuh"

#define ATT_THREADS 128
#define ATT_TILE ATT_THREADS
#define ATT_MIN_PART 16


template <typename T> __device__ __forceinline__ float ld_kv(const T *p);
template <> __device__ __forceinline__ float ld_kv<__half>(const __half *p) { return __half2float(*p); }
template <> __device__ __forceinline__ float ld_kv<float>(const float *p) { return *p; }
template <typename T> __device__ __forceinline__ T st_kv(float v);
template <> __device__ __forceinline__ __half st_kv<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ float st_kv<float>(float v) { return v; }

struct rope_args {
    int H, KV, hd, n_rot, head_kv_begin, n_ctx, neox;
    float eps;
    float *q, *k;
    const float *v, *q_norm, *k_norm, *cs;
    const int32_t *pos, *seq;
    void *kc, *vc;
};

/* Block (t, head): head < H is a query head, else KV head head - H. */
template <typename T>
__global__ void k_rope_store(const rope_args a)
{
    __shared__ float buf[KCUDA_HEAD_DIM_MAX];
    __shared__ double red[KCUDA_HEAD_DIM_MAX / 32];
    kc_pdl_trigger();
    kc_pdl_wait();
    const int t = blockIdx.x, hh = blockIdx.y, i = threadIdx.x, hd = a.hd;
    const bool isq = hh < a.H;
    const int kvh = hh - a.H;
    float *vec = isq ? a.q + ((size_t)t * a.H + hh) * hd : a.k + ((size_t)t * a.KV + kvh) * hd;
    const float *nw = isq ? a.q_norm : a.k_norm;
    float v = i < hd ? vec[i] : 0.0f;
    if (nw) {
        double s = kc_warp_sum_d((double)__fmul_rn(v, v));
        if ((i & 31) == 0) red[i >> 5] = s;
        __syncthreads();
        s = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += red[w];
        const float scale = 1.0f / sqrtf((float)(s / (double)hd) + a.eps);
        if (i < hd) v = __fmul_rn(__fmul_rn(v, scale), nw[i]);
    }
    if (i < hd) buf[i] = v;
    __syncthreads();
    float out = v;
    if (i < a.n_rot) {
        const float *c = a.cs + (size_t)t * a.n_rot;
        const int half = a.n_rot / 2;
        int p, i0;
        bool second;
        if (a.neox) p = i < half ? i : i - half, i0 = p, second = i >= half;
        else p = i / 2, i0 = 2 * p, second = i & 1;
        const int i1 = a.neox ? p + half : i0 + 1;
        out = kc_rope_elem(buf[i0], buf[i1], c[2 * p], c[2 * p + 1], second);
    }
    if (i >= hd) return;
    vec[i] = out;
    if (isq) return;
    const size_t off = (((size_t)a.seq[t] * a.n_ctx + a.pos[t]) * a.KV + kvh) * hd + i;
    ((T *)a.kc)[off] = st_kv<T>(out);
    ((T *)a.vc)[off] = st_kv<T>(a.v[((size_t)t * a.KV + kvh) * hd + i]);
}

int kcuda_rope_store(struct kcuda *k, const struct kcuda_attn_shape *s, int64_t n_tok, float *d_q,
                     float *d_k, const float *d_v, const float *d_q_norm, const float *d_k_norm,
                     const float *d_cs, const int32_t *d_pos, const int32_t *d_seq,
                     void *d_k_cache, void *d_v_cache)
{
    if (n_tok <= 0 || s->n_head + s->n_head_kv == 0) return 0;
    if (s->head_dim > KCUDA_HEAD_DIM_MAX || s->n_rot > s->head_dim || s->n_rot % 2)
        return tt_error_set(TT_EUNSUPPORTED, "head size %d (rope %d): the GPU takes up to %d",
                            s->head_dim, s->n_rot, KCUDA_HEAD_DIM_MAX);
    rope_args a = { s->n_head, s->n_head_kv, s->head_dim, s->n_rot, s->kv_begin, s->n_ctx, s->neox,
                    s->eps, d_q, d_k, d_v, d_q_norm, d_k_norm, d_cs, d_pos, d_seq, d_k_cache,
                    d_v_cache };
    const dim3 grid((unsigned)n_tok, (unsigned)(s->n_head + s->n_head_kv));
    const int threads = (s->head_dim + 31) / 32 * 32;
    KC_PROF_BEGIN(k);
    void (*kern)(const rope_args) = s->kv_type == KCUDA_F16 ? k_rope_store<__half> : k_rope_store<float>;
    KC_LAUNCH(k, kern, grid, dim3(threads), a);
    KC_PROF_END(k, "rope_store");
    return 0;
}

/* ---- attention ---- */

#define ATT_GROUP_MAX 8 /* query heads per KV head the kernel takes */

struct attn_args {
    int H, KV, hd, group, head_begin, kv_begin, n_ctx, n_split, G;
    float scale;
    const float *q;
    const void *kc, *vc;
    const int32_t *pos, *seq;
    float *part, *out;
    int *count; /* [n_tok][KV] parts finished; the last one joins and resets it */
    uint8_t *q8k; /* or NULL: the output rows also in Q8_K, q8k_stride bytes apart (k_attn_vec) */
    size_t q8k_stride;
};

size_t kcuda_attn_part_floats(const struct kcuda_attn_shape *s, int64_t n_tok, int n_split)
{
    return (size_t)n_tok * (size_t)s->n_head * (size_t)n_split * (size_t)(s->head_dim + 2);
}

/* d[r] += the 16 bytes `raw` of a key row (elements i..) dotted with query r. */
template <typename T>
__device__ __forceinline__ void att_dot16(uint4 raw, const float *qs, int hd, int i, int G, float *d)
{
    constexpr int V = 16 / sizeof(T);
    float kf[V];
    const uint32_t wd[4] = { raw.x, raw.y, raw.z, raw.w };
    if (sizeof(T) == 2) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            kf[2 * e] = __half2float(__ushort_as_half((unsigned short)(wd[e] & 0xFFFFu)));
            kf[(2 * e + 1) % V] = __half2float(__ushort_as_half((unsigned short)(wd[e] >> 16)));
        }
    } else {
#pragma unroll
        for (int e = 0; e < V; e++) kf[e] = __uint_as_float(wd[e % 4]);
    }
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) {
        if (r < G) {
#pragma unroll
            for (int e = 0; e < V; e++) d[r] += kf[e] * qs[r * hd + i + e];
        }
    }
}

/* Key row kr of the block's KV head dotted with the G queries in shared
 * memory; four 16-byte loads in flight at a time. */
template <typename T>
__device__ __forceinline__ void att_key_dots(const T *kr, const float *qs, int hd, int G, float *d)
{
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) d[r] = 0.0f;
    constexpr int V = 16 / sizeof(T);
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int i = 0; i < hd; i += 4 * V) {
        const uint4 r0 = *(const uint4 *)(kr + i);
        const uint4 r1 = i + V < hd ? *(const uint4 *)(kr + i + V) : zero;
        const uint4 r2 = i + 2 * V < hd ? *(const uint4 *)(kr + i + 2 * V) : zero;
        const uint4 r3 = i + 3 * V < hd ? *(const uint4 *)(kr + i + 3 * V) : zero;
        att_dot16<T>(r0, qs, hd, i, G, d);
        if (i + V < hd) att_dot16<T>(r1, qs, hd, i + V, G, d);
        if (i + 2 * V < hd) att_dot16<T>(r2, qs, hd, i + 2 * V, G, d);
        if (i + 3 * V < hd) att_dot16<T>(r3, qs, hd, i + 3 * V, G, d);
    }
}

/* The join of all parts of the G query heads of (t, group), by the block
 * that finished last: thread p < n_split reads part p's maximum and sum, the
 * block reduces them, and thread d sums dimension d over the parts (four
 * parts' loads in flight). */
__device__ __forceinline__ void att_join(const attn_args &a, int t, int h0, int tid, int lane, int warp)
{
    __shared__ float fac[ATT_GROUP_MAX][KCUDA_ATTN_SPLIT_MAX];
    __shared__ float wred[ATT_THREADS / 32][ATT_GROUP_MAX];
    const int G = a.G, hd = a.hd, S = a.n_split;
    const size_t ps = (size_t)hd + 2;
    const float *pb = a.part + ((size_t)t * a.H + h0) * S * ps; /* head r, part p at pb + (r*S + p)*ps */
    float mp[ATT_GROUP_MAX], lp[ATT_GROUP_MAX], mx[ATT_GROUP_MAX], l[ATT_GROUP_MAX];
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) {
        const bool on = r < G && tid < S;
        mp[r] = on ? __ldcg(pb + ((size_t)r * S + tid) * ps + hd) : -INFINITY;
        lp[r] = on ? __ldcg(pb + ((size_t)r * S + tid) * ps + hd + 1) : 0.0f;
        const float w = kc_warp_max(mp[r]);
        if (lane == 0) wred[warp][r] = w;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) {
        mx[r] = fmaxf(fmaxf(wred[0][r], wred[1][r]), fmaxf(wred[2][r], wred[3][r]));
        const float f = mp[r] == -INFINITY ? 0.0f : expf(mp[r] - mx[r]);
        if (r < G && tid < S) fac[r][tid] = f;
        lp[r] *= f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) {
        const float w = kc_warp_sum(lp[r]);
        if (lane == 0) wred[warp][r] = w;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) l[r] = (wred[0][r] + wred[1][r]) + (wred[2][r] + wred[3][r]);
    float o0[ATT_GROUP_MAX], o1[ATT_GROUP_MAX];
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) o0[r] = o1[r] = 0.0f;
    const int d0 = tid < hd ? tid : 0, d1 = tid + ATT_THREADS < hd ? tid + ATT_THREADS : 0;
#pragma unroll 4
    for (int p = 0; p < S; p++) {
#pragma unroll
        for (int r = 0; r < ATT_GROUP_MAX; r++) {
            if (r < G) {
                const float *pr = pb + ((size_t)r * S + p) * ps;
                o0[r] += fac[r][p] * __ldcg(pr + d0);
                o1[r] += fac[r][p] * __ldcg(pr + d1);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) {
        if (r >= G) continue;
        float *out = a.out + ((size_t)t * a.H + h0 + r) * hd;
        if (tid < hd) out[tid] = o0[r] / l[r];
        if (tid + ATT_THREADS < hd) out[tid + ATT_THREADS] = o1[r] / l[r];
    }
}

/* One tile of the online softmax: warp w takes heads w, w + warps, ...; the
 * n scores of head r in sc[r] become exp(score - running max), and the head's
 * running max m, sum l and the factor c that rescales what was accumulated
 * before this tile are updated. */
template <int W>
__device__ __forceinline__ void att_online_softmax(float (*sc)[W], int G, int n, int warp, int lane,
                                                   float *m_sh, float *l_sh, float *c_sh, int n_warps = ATT_THREADS / 32)
{
    for (int r = warp; r < G; r += n_warps) {
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32) mx = fmaxf(mx, sc[r][j]);
        mx = kc_warp_max(mx);
        const float m_new = fmaxf(m_sh[r], mx);
        float sum = 0.0f;
        for (int j = lane; j < n; j += 32) {
            const float p = expf(sc[r][j] - m_new);
            sc[r][j] = p;
            sum += p;
        }
        sum = kc_warp_sum(sum);
        if (lane == 0) {
            const float corr = expf(m_sh[r] - m_new);
            c_sh[r] = corr;
            l_sh[r] = l_sh[r] * corr + sum;
            m_sh[r] = m_new;
        }
    }
}

/* Block (part s, KV head g, token t): the G query heads sharing KV head g,
 * over part s of the keys 0..pos[t] in tiles of ATT_THREADS keys: thread j
 * scores key j against every query head; each warp turns a head's scores
 * into probabilities (online softmax); thread d accumulates dimension d of
 * the values for every head. The last part to finish joins all parts. */
template <typename T, bool RQ>
__global__ void __launch_bounds__(ATT_THREADS) k_attn(const attn_args a)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ float qs[ATT_GROUP_MAX * KCUDA_HEAD_DIM_MAX];
    __shared__ float sc[ATT_GROUP_MAX][ATT_TILE];
    __shared__ float m_sh[ATT_GROUP_MAX], l_sh[ATT_GROUP_MAX], c_sh[ATT_GROUP_MAX];
    __shared__ int last;
    const int s = blockIdx.x, g = blockIdx.y, t = blockIdx.z, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, hd = a.hd, G = a.G;
    const int h0 = (a.kv_begin + g) * a.group - a.head_begin; /* first local query head of the group */
    const int len = a.pos[t] + 1;
    int chunk = (len + a.n_split - 1) / a.n_split;
    chunk = chunk < ATT_MIN_PART ? ATT_MIN_PART : chunk;
    const int j0 = s * chunk, j1 = min(len, j0 + chunk);
    for (int i = tid; i < G * hd; i += ATT_THREADS) {
        const float v = a.q[((size_t)t * a.H + h0) * hd + i];
        qs[i] = RQ ? __half2float(__float2half_rn(v)) : v;
    }
    if (tid < ATT_GROUP_MAX) m_sh[tid] = -INFINITY, l_sh[tid] = 0.0f;
    const size_t kvd = (size_t)a.KV * hd;
    const T *kb = (const T *)a.kc + (size_t)a.seq[t] * a.n_ctx * kvd + (size_t)g * hd;
    const T *vb = (const T *)a.vc + (size_t)a.seq[t] * a.n_ctx * kvd + (size_t)g * hd;
    float acc0[ATT_GROUP_MAX], acc1[ATT_GROUP_MAX];
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) acc0[r] = acc1[r] = 0.0f;
    __syncthreads();
    for (int tile = j0; tile < j1; tile += ATT_TILE) {
        const int nt = min(ATT_TILE, j1 - tile);
        if (tid < nt) {
            float d[ATT_GROUP_MAX];
            att_key_dots<T>(kb + (size_t)(tile + tid) * kvd, qs, hd, G, d);
#pragma unroll
            for (int r = 0; r < ATT_GROUP_MAX; r++)
                if (r < G) sc[r][tid] = d[r] * a.scale;
        }
        __syncthreads();
        att_online_softmax<ATT_TILE>(sc, G, nt, warp, lane, m_sh, l_sh, c_sh);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ATT_GROUP_MAX; r++) {
            if (r < G) {
                acc0[r] *= c_sh[r];
                acc1[r] *= c_sh[r];
            }
        }
        int j = 0;
        for (; j + 4 <= nt; j += 4) { /* four value rows in flight */
            float v0[4], v1[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const T *vr = vb + (size_t)(tile + j + u) * kvd;
                v0[u] = tid < hd ? ld_kv<T>(vr + tid) : 0.0f;
                v1[u] = tid + ATT_THREADS < hd ? ld_kv<T>(vr + tid + ATT_THREADS) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int r = 0; r < ATT_GROUP_MAX; r++) {
                    if (r < G) {
                        acc0[r] += sc[r][j + u] * v0[u];
                        acc1[r] += sc[r][j + u] * v1[u];
                    }
                }
            }
        }
        for (; j < nt; j++) {
            const T *vr = vb + (size_t)(tile + j) * kvd;
            const float v0 = tid < hd ? ld_kv<T>(vr + tid) : 0.0f;
            const float v1 = tid + ATT_THREADS < hd ? ld_kv<T>(vr + tid + ATT_THREADS) : 0.0f;
#pragma unroll
            for (int r = 0; r < ATT_GROUP_MAX; r++) {
                if (r < G) {
                    acc0[r] += sc[r][j] * v0;
                    acc1[r] += sc[r][j] * v1;
                }
            }
        }
        __syncthreads(); /* sc is rewritten by the next tile */
    }
    const size_t ps = (size_t)hd + 2;
#pragma unroll
    for (int r = 0; r < ATT_GROUP_MAX; r++) {
        if (r >= G) continue;
        float *part = a.part + (((size_t)t * a.H + h0 + r) * a.n_split + s) * ps;
        if (tid < hd) part[tid] = acc0[r];
        if (tid + ATT_THREADS < hd) part[tid + ATT_THREADS] = acc1[r];
        if (tid == 0) part[hd] = m_sh[r], part[hd + 1] = l_sh[r];
    }
    /* the last part of (t, g) to finish joins all parts */
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        int *cnt = a.count + (size_t)t * a.KV + g;
        last = atomicAdd(cnt, 1) == a.n_split - 1;
        if (last) *cnt = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    att_join(a, t, h0, tid, lane, warp);
}

/* ---- attention with coalesced key rows (F16 cache, head_dim 8*LPR, G a power of two) ----
 *
 * Block (part s, KV head g, token t) as k_attn, but each key row is read by
 * LPR lanes at once (16 bytes = 8 dimensions each), so a warp reads 32/LPR
 * whole rows per load and every thread has AV_ROUNDS key loads and as many
 * value loads in flight before any arithmetic. Queries live in registers
 * (8 dimensions of each of the G heads per thread); a key's score is the
 * lanes' partial dots summed with shuffles. Tiles of AV_ROUNDS * 4 * (32 /
 * LPR) keys go through the same online softmax as k_attn; at the end the
 * key slots' partial outputs are summed (shuffles, then shared memory) and
 * written as one part. Parts hold at least one tile, and only parts that
 * hold keys run and take a join ticket, so short prefixes join few parts;
 * the last part joins them with many loads in flight (av_join): the old
 * join, one L2 round trip per part and head, took most of a decode step's
 * attention (ncu, H200, 8B shape at 515 positions: 23 us -> 12 us).
 */
#define AV_ROUNDS 4

__device__ __forceinline__ void av_widen(uint4 raw, float f[8])
{
    const __half2 *h = (const __half2 *)&raw;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 v = __half22float2(h[e]);
        f[2 * e] = v.x;
        f[2 * e + 1] = v.y;
    }
}

/* The join for k_attn_vec: warp r % 4 weighs head r's parts (one lane per
 * part: maximum, factors, sum), then each thread sums its AV_JOIN_PER
 * output elements (head, dimension) over the parts, AV_JOIN_BATCH parts at
 * a time with every element's loads of those parts in flight together: the
 * join is a few L2 round trips (parts / AV_JOIN_BATCH), where walking the
 * elements one after another took one round trip per element and batch
 * (24 for 8 heads of 128 over 19 parts: most of a decode attention's time
 * at 600 positions). With a.q8k the block also writes its G heads' outputs
 * as Q8_K (G * HD is a multiple of 256, kcuda_attention checks): whole
 * blocks of the row, so the output projection needs no conversion launch. */
#define AV_JOIN_BATCH 4
template <int HD, int G>
__device__ __forceinline__ void av_join(const attn_args &a, int t, int h0, int n_parts)
{
    constexpr int N = G * HD, PER = (N + ATT_THREADS - 1) / ATT_THREADS;
    __shared__ float fac[G][KCUDA_ATTN_SPLIT_MAX];
    __shared__ float l_sum[G];
    __shared__ __align__(16) float ob[N % 256 == 0 ? N : 1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, S = a.n_split, P = n_parts;
    const size_t ps = (size_t)HD + 2;
    const float *pb = a.part + ((size_t)t * a.H + h0) * S * ps; /* head r, part p at pb + (r*S + p)*ps */
    for (int r = warp; r < G; r += ATT_THREADS / 32) {
        const float *pr = pb + ((size_t)r * S + lane) * ps;
        const float m = lane < P ? __ldcg(pr + HD) : -INFINITY, l = lane < P ? __ldcg(pr + HD + 1) : 0.0f;
        const float mx = kc_warp_max(m);
        const float f = m == -INFINITY ? 0.0f : expf(m - mx);
        const float sum = kc_warp_sum(l * f);
        fac[r][lane] = f;
        if (lane == 0) l_sum[r] = sum;
    }
    __syncthreads();
    float o[PER];
#pragma unroll
    for (int k = 0; k < PER; k++) o[k] = 0.0f;
    for (int p0 = 0; p0 < P; p0 += AV_JOIN_BATCH) {
        float v[AV_JOIN_BATCH][PER];
#pragma unroll
        for (int u = 0; u < AV_JOIN_BATCH; u++)
#pragma unroll
            for (int k = 0; k < PER; k++) {
                const int i = tid + k * ATT_THREADS, r = i / HD, d = i % HD;
                v[u][k] = p0 + u < P && i < N ? __ldcg(pb + ((size_t)r * S + p0 + u) * ps + d) : 0.0f;
            }
#pragma unroll
        for (int u = 0; u < AV_JOIN_BATCH; u++)
#pragma unroll
            for (int k = 0; k < PER; k++) {
                const int i = tid + k * ATT_THREADS;
                if (p0 + u < P && i < N) o[k] += fac[i / HD][p0 + u] * v[u][k];
            }
    }
#pragma unroll
    for (int k = 0; k < PER; k++) {
        const int i = tid + k * ATT_THREADS, r = i / HD, d = i % HD;
        if (i >= N) continue;
        const float y = o[k] / l_sum[r];
        a.out[((size_t)t * a.H + h0 + r) * HD + d] = y;
        if (N % 256 == 0) ob[i] = y;
    }
    if (N % 256 == 0 && a.q8k) {
        __syncthreads();
        for (int b = warp; b < N / 256; b += ATT_THREADS / 32) {
            float v[8];
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = ob[256 * b + 8 * lane + e];
            kc_q8k_warp(v, true, h0 * HD + 256 * b + 8 * lane, a.q8k + (size_t)t * a.q8k_stride, a.H * HD);
        }
    }
}

/* The shared memory of a k_attn_vec or k_attn_cl block of NTH threads. */
template <int HD, int G, int TILE, int NTH = ATT_THREADS>
struct av_shared {
    float sc[G][TILE];
    float m[G], l[G], c[G];
    float red[NTH / 32][G][HD];
};
/* Keys a tile of av_keys holds: AV_ROUNDS per key slot of the block. */
#define AV_TILE(LPR, NTH) (32 / (LPR) * ((NTH) / 32) * AV_ROUNDS)

/* A block's keys of KV head g of token t: the tiles starting at first,
 * first + stride, ... below end (keys past end masked). Leaves the G heads'
 * running maxima and sums in sh.m, sh.l and each warp's unnormalized
 * outputs in sh.red[warp] (the block's are their sum over the warps). */
template <int LPR, int G, int NTH = ATT_THREADS>
__device__ __forceinline__ void av_keys(const attn_args &a, int t, int g, int h0, int first, int stride, int end,
                                        av_shared<8 * LPR, G, AV_TILE(LPR, NTH), NTH> &sh)
{
    constexpr int HD = 8 * LPR, KPW = 32 / LPR, KPR = KPW * (NTH / 32), TILE = KPR * AV_ROUNDS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, c = lane % LPR, slot = warp * KPW + lane / LPR;
    float qf[G][8];
#pragma unroll
    for (int r = 0; r < G; r++) {
        const float4 *qp = (const float4 *)(a.q + ((size_t)t * a.H + h0 + r) * HD + 8 * c);
        const float4 x0 = qp[0], x1 = qp[1];
        const float v[8] = { x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w };
#pragma unroll
        for (int e = 0; e < 8; e++) qf[r][e] = __half2float(__float2half_rn(v[e])) * a.scale;
    }
    if (tid < G) sh.m[tid] = -INFINITY, sh.l[tid] = 0.0f;
    const size_t kvd = (size_t)a.KV * HD;
    const __half *kb = (const __half *)a.kc + (size_t)a.seq[t] * a.n_ctx * kvd + (size_t)g * HD + 8 * c;
    const __half *vb = (const __half *)a.vc + (size_t)a.seq[t] * a.n_ctx * kvd + (size_t)g * HD + 8 * c;
    float acc[G][8];
#pragma unroll
    for (int r = 0; r < G; r++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[r][e] = 0.0f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int tile = first; tile < end; tile += stride) {
        uint4 kr[AV_ROUNDS], vr[AV_ROUNDS];
#pragma unroll
        for (int u = 0; u < AV_ROUNDS; u++) {
            const int j = tile + u * KPR + slot;
            kr[u] = j < end ? *(const uint4 *)(kb + (size_t)j * kvd) : zero;
            vr[u] = j < end ? *(const uint4 *)(vb + (size_t)j * kvd) : zero;
        }
#pragma unroll
        for (int u = 0; u < AV_ROUNDS; u++) {
            float kf[8];
            av_widen(kr[u], kf);
            const int j = tile + u * KPR + slot;
#pragma unroll
            for (int r = 0; r < G; r++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += kf[e] * qf[r][e];
#pragma unroll
                for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                if (c == 0) sh.sc[r][u * KPR + slot] = j < end ? d : -INFINITY;
            }
        }
        __syncthreads();
        att_online_softmax<TILE>(sh.sc, G, TILE, warp, lane, sh.m, sh.l, sh.c, NTH / 32);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < G; r++)
#pragma unroll
            for (int e = 0; e < 8; e++) acc[r][e] *= sh.c[r];
#pragma unroll
        for (int u = 0; u < AV_ROUNDS; u++) {
            float vf[8];
            av_widen(vr[u], vf);
#pragma unroll
            for (int r = 0; r < G; r++) {
                const float p = sh.sc[r][u * KPR + slot];
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r][e] += p * vf[e];
            }
        }
        __syncthreads(); /* sc is rewritten by the next tile */
    }
    /* sum the key slots: lanes of one warp with the same columns, then the warps */
#pragma unroll
    for (int r = 0; r < G; r++)
#pragma unroll
        for (int e = 0; e < 8; e++)
#pragma unroll
            for (int o = LPR; o < 32; o <<= 1) acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], o);
    if (lane < LPR) {
#pragma unroll
        for (int r = 0; r < G; r++)
#pragma unroll
            for (int e = 0; e < 8; e++) sh.red[warp][r][8 * c + e] = acc[r][e];
    }
    __syncthreads();
}

template <int LPR, int G>
__global__ void __launch_bounds__(ATT_THREADS) k_attn_vec(const attn_args a)
{
    constexpr int HD = 8 * LPR, TILE = AV_TILE(LPR, ATT_THREADS);
    __shared__ av_shared<HD, G, TILE> sh;
    __shared__ int last;
    kc_pdl_trigger();
    kc_pdl_wait();
    const int s = blockIdx.x, g = blockIdx.y, t = blockIdx.z, tid = threadIdx.x;
    const int len = a.pos[t] + 1;
    int chunk = (len + a.n_split - 1) / a.n_split;
    chunk = chunk < TILE ? TILE : (chunk + TILE - 1) / TILE * TILE;
    const int n_parts = (len + chunk - 1) / chunk;
    if (s >= n_parts) return; /* holds no keys: neither writes a part nor takes a ticket */
    const int j0 = s * chunk, j1 = min(len, j0 + chunk);
    const int h0 = (a.kv_begin + g) * a.group - a.head_begin;
    av_keys<LPR, G>(a, t, g, h0, j0, TILE, j1, sh);
    const size_t ps = (size_t)HD + 2;
    for (int i = tid; i < G * HD; i += ATT_THREADS) {
        const int r = i / HD, d = i % HD;
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_THREADS / 32; w++) v += sh.red[w][r][d];
        a.part[(((size_t)t * a.H + h0 + r) * a.n_split + s) * ps + d] = v;
    }
    if (tid < G) {
        float *part = a.part + (((size_t)t * a.H + h0 + tid) * a.n_split + s) * ps;
        part[HD] = sh.m[tid], part[HD + 1] = sh.l[tid];
    }
    /* the last part of (t, g) to finish joins all parts */
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        int *cnt = a.count + (size_t)t * a.KV + g;
        last = atomicAdd(cnt, 1) == n_parts - 1;
        if (last) *cnt = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    av_join<HD, G>(a, t, h0, n_parts);
}

/* ---- decode attention in one cluster per KV head (sm_90) ----
 *
 * k_attn_vec's blocks join through global memory: each writes its part,
 * takes a ticket, and the last one reads every part back, several L2 round
 * trips in series after the keys (most of a MoE decode token's attention at
 * 500+ positions). Here the CS blocks of a cluster (one per KV head and
 * token) take the key tiles in turn (block s: tiles s, s + CS, ...), keep
 * their partial outputs, maxima and sums in shared memory, and after one
 * cluster barrier read each other's through distributed shared memory:
 * every block joins the heads' maxima and sums by shuffles (one lane per
 * head and block), then block s weighs the heads' partials of the
 * 256-element units s, s + CS, ... of the G heads' output (whole Q8_K
 * blocks for wo when a.q8k), every block's partial of an element loaded at
 * once, and writes them. No ticket, no part scratch, no global round trip.
 * (Units of 2*NTH elements, two rounds of 8 blocks' loads, and one thread
 * per head joining the maxima in series kept most blocks waiting at the
 * last barrier: ~40% of the kernel's stall samples, ncu on the H200.)
 * Blocks of NTH = 256 threads take tiles of twice the keys of 128-thread
 * ones, so at 500-600 positions each block walks one tile instead of two in
 * series. */
#define ATT_CLUSTER_MAX 16
template <int LPR, int G, int NTH>
__global__ void __launch_bounds__(NTH) k_attn_cl(const attn_args a)
{
    constexpr int HD = 8 * LPR, TILE = AV_TILE(LPR, NTH), N = G * HD, UE = 256, EPT = UE / NTH;
    static_assert(UE % NTH == 0, "a unit of the output is whole rounds of the block's threads");
    __shared__ av_shared<HD, G, TILE, NTH> sh;
    __shared__ float fac[G][ATT_CLUSTER_MAX], lsum[G];
    __shared__ __align__(16) float ob[UE];
    kc_pdl_trigger();
    kc_pdl_wait();
    const int s = blockIdx.x, CS = gridDim.x, g = blockIdx.y, t = blockIdx.z, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int h0 = (a.kv_begin + g) * a.group - a.head_begin;
    av_keys<LPR, G, NTH>(a, t, g, h0, s * TILE, CS * TILE, a.pos[t] + 1, sh);
    for (int i = tid; i < N; i += NTH) { /* the block's partial into red[0] */
        const int r = i / HD, d = i % HD;
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < NTH / 32; w++) v += sh.red[w][r][d];
        sh.red[0][r][d] = v;
    }
    kc_cluster_arrive();
    kc_cluster_wait();
    if (warp < (G * CS + 31) / 32) { /* lane (r, b): block b's maximum and sum of head r, joined over b by shuffles */
        const bool on = tid < G * CS; /* CS is 8 or 16: head r's lanes are CS neighbours of one warp */
        const int r = tid / CS, b = tid % CS;
        const float m = on ? kc_cluster_load(&sh.m[r], b) : -INFINITY, l = on ? kc_cluster_load(&sh.l[r], b) : 0.0f;
        float mx = m;
        for (int o = CS / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float f = m == -INFINITY ? 0.0f : expf(m - mx);
        float sum = f * l;
        for (int o = CS / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (on) fac[r][b] = f;
        if (on && b == 0) lsum[r] = sum;
    }
    __syncthreads();
    for (int u0 = s * UE; u0 < N; u0 += CS * UE) { /* this block's units of the output */
        float y[EPT];
#pragma unroll
        for (int e = 0; e < EPT; e++) { /* every block's partial in flight at once */
            const int i = u0 + e * NTH + tid, r = min(i, N - 1) / HD, d = i % HD;
            float v[ATT_CLUSTER_MAX];
#pragma unroll
            for (int b = 0; b < ATT_CLUSTER_MAX; b++)
                v[b] = b < CS && i < N ? kc_cluster_load(&sh.red[0][r][d], b) : 0.0f;
            float o = 0.0f;
#pragma unroll
            for (int b = 0; b < ATT_CLUSTER_MAX; b++)
                if (b < CS) o += fac[r][b] * v[b];
            y[e] = o / lsum[r];
        }
        __syncthreads(); /* ob held the previous unit */
#pragma unroll
        for (int e = 0; e < EPT; e++) {
            const int i = u0 + e * NTH + tid, r = i / HD, d = i % HD;
            if (i >= N) continue;
            a.out[((size_t)t * a.H + h0 + r) * HD + d] = y[e];
            ob[e * NTH + tid] = y[e];
        }
        if (N % UE == 0 && a.q8k) { /* the unit is one Q8_K block for wo */
            __syncthreads();
            if (warp == 0) {
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; e++) v[e] = ob[8 * lane + e];
                kc_q8k_warp(v, true, h0 * HD + u0 + 8 * lane, a.q8k + (size_t)t * a.q8k_stride, a.H * HD);
            }
        }
    }
    kc_cluster_arrive_relaxed(); /* done with the other blocks' shared memory */
    kc_cluster_wait();           /* ... and they with this one's */
}

typedef void (*attn_kernel)(const attn_args);

/* The coalesced kernel for G heads per KV head, or with nth its cluster
 * form: of *nth threads (256 or 128) as asked, or of ATT_THREADS where the
 * wider block's partial outputs would not fit the static shared memory;
 * *nth says which. */
template <int LPR, int G>
static attn_kernel pick_vec_form(int *nth)
{
    if (!nth) return k_attn_vec<LPR, G>;
    if constexpr (sizeof(av_shared<8 * LPR, G, AV_TILE(LPR, 2 * ATT_THREADS), 2 * ATT_THREADS>) <= (40u << 10))
        if (*nth > ATT_THREADS) return k_attn_cl<LPR, G, 2 * ATT_THREADS>;
    *nth = ATT_THREADS;
    return k_attn_cl<LPR, G, ATT_THREADS>;
}
template <int LPR>
static attn_kernel pick_vec_g(int G, int *nth)
{
    switch (G) {
    case 1: return pick_vec_form<LPR, 1>(nth);
    case 2: return pick_vec_form<LPR, 2>(nth);
    case 4: return pick_vec_form<LPR, 4>(nth);
    case 8: return pick_vec_form<LPR, 8>(nth);
    default: return NULL;
    }
}

/* The coalesced kernel for this shape (with nth: its cluster form, as
 * pick_vec_form), or NULL (then k_attn). */
static attn_kernel pick_vec(int hd, int G, int kv_type, int *nth = NULL)
{
    if (kv_type != KCUDA_F16) return NULL;
    switch (hd) {
    case 32: return pick_vec_g<4>(G, nth);
    case 64: return pick_vec_g<8>(G, nth);
    case 128: return pick_vec_g<16>(G, nth);
    case 256: return pick_vec_g<32>(G, nth);
    default: return NULL;
    }
}

bool kcuda_attention_q8k(const struct kcuda_attn_shape *s, int64_t n_tok)
{
    const int G = s->n_head / (s->n_head_kv ? s->n_head_kv : 1);
    return n_tok >= 1 && s->n_head_kv > 0 && G * s->n_head_kv == s->n_head &&
           (G * s->head_dim) % 256 == 0 && pick_vec(s->head_dim, G, s->kv_type) != NULL;
}

int kcuda_attention(struct kcuda *k, const struct kcuda_attn_shape *s, int64_t n_tok, int n_split,
                    const float *d_q, const void *d_k_cache, const void *d_v_cache,
                    const int32_t *d_pos, const int32_t *d_seq, float *d_part, int *d_count,
                    float *d_out, void *d_q8k)
{
    if (n_tok <= 0 || s->n_head == 0) return 0;
    const int G = s->n_head / (s->n_head_kv ? s->n_head_kv : 1);
    const int esz = s->kv_type == KCUDA_F16 ? 8 : 4;
    if (s->head_dim > KCUDA_HEAD_DIM_MAX || s->head_dim % esz || n_split < 1 || n_split > KCUDA_ATTN_SPLIT_MAX ||
        n_tok > 65535 || G > ATT_GROUP_MAX || G * s->n_head_kv != s->n_head || G != s->group)
        return tt_error_set(TT_EUNSUPPORTED, "attention of head size %d, %d query heads per KV head, %d parts, "
                            "%lld tokens", s->head_dim, G, n_split, (long long)n_tok);
    if (d_q8k && !kcuda_attention_q8k(s, n_tok))
        return tt_error_set(TT_EUNSUPPORTED, "attention output in Q8_K for %lld tokens, head size %d, %d heads per KV head",
                            (long long)n_tok, s->head_dim, G);
    if (!d_q8k && kc_flash_takes(s, n_tok, d_q, d_k_cache, d_v_cache, d_out)) /* prompt batches: tensor cores */
        return kc_flash_attention(k, s, n_tok, d_q, d_k_cache, d_v_cache, d_pos, d_seq, d_out);
    float *part = d_part;
    int *count = d_count;
    attn_args a = { s->n_head, s->n_head_kv, s->head_dim, s->group, s->head_begin, s->kv_begin, s->n_ctx,
                    n_split, G, 1.0f / sqrtf((float)s->head_dim), d_q, d_k_cache, d_v_cache, d_pos, d_seq,
                    part, d_out, count, (uint8_t *)d_q8k, kcuda_act_row_bytes(KCUDA_Q8_K, (int64_t)s->n_head * s->head_dim) };
    int nth = k->attn_cl_threads;
    const attn_kernel cl = pick_vec(s->head_dim, G, s->kv_type, &nth);
    while (cl && k->attn_cluster > 1 && G * k->attn_cluster <= nth) {
        const int CS = k->attn_cluster; /* one cluster per KV head */
        if (k->attn_cluster_ok != (const void *)cl) {
            if (!kc_cluster_fits(cl, CS, nth, 0)) {
                kcuda_set_attn_cluster(k, CS > 8 ? 8 : 0); /* this GPU holds no such cluster: smaller, then parts */
                continue;
            }
            k->attn_cluster_ok = (const void *)cl;
        }
        if (CS > 8) KC_CHECK(cudaFuncSetAttribute(cl, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        KC_PROF_BEGIN(k);
        KC_CHECK(kc_launch_cluster(k, cl, dim3((unsigned)CS, (unsigned)s->n_head_kv, (unsigned)n_tok),
                                   dim3((unsigned)nth), 0, (unsigned)CS, a));
        KC_PROF_END(k, "attention");
        return 0;
    }
    const dim3 grid((unsigned)n_split, (unsigned)s->n_head_kv, (unsigned)n_tok);
    attn_kernel kern = pick_vec(s->head_dim, G, s->kv_type);
    if (!kern) kern = s->kv_type == KCUDA_F16 ? k_attn<__half, true> : k_attn<float, false>;
    KC_PROF_BEGIN(k);
    KC_LAUNCH(k, kern, grid, dim3(ATT_THREADS), a);
    KC_PROF_END(k, "attention");
    return 0;
}
