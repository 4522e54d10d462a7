/*
 * kcuda_matvec.cu: weight-streaming products for decode and small batches.
 *
 * Decode reads every weight once per token, so these kernels are built to
 * keep the memory system busy: each row of W is split into "items" (16 bytes
 * of quantized weights with their scales, or 8 F16 values), a row's items
 * are spread over one to four warps (one for a single token), every thread
 * keeps a few items' loads in flight (MV_UNROLL: few enough registers for 8
 * blocks per multiprocessor with one token), one block per group of rows so
 * that blocks finishing their reductions overlap with blocks still loading,
 * and up to 8 tokens share each load (NT); a token's products of large
 * regrouped K-quant matrices instead stream whole row groups into shared
 * memory through the bulk-copy engine (k_matvec_bulk, sm_90). Integer dot products use
 * dp4a on the GGML blocks as stored, against activations already converted
 * by kcuda_quant.cu: the integer sums are exact, so results differ from the
 * CPU's scalar reference only in float summation order.
 *
 * Item layouts (it = item index within the row):
 *   Q4_0, Q8_0  one block of 32 (blocks are 2-byte aligned: funnel-shift loads)
 *   Q4_K        block it/4, pair of sub-blocks g = it%4: 32 bytes of nibbles
 *               for elements 64g+[0,32) (low) and 64g+32+[0,32) (high); the
 *               same items in KCUDA_LAYOUT_Q4_K_GROUPS (kcuda.h), two planes
 *               of 16-byte chunks and a plane of block headers
 *   Q5_K        block it/8, pair of sub-blocks g = (it%8)/2, half h = it%2:
 *               16 bytes of nibbles for elements 64g+16h+[0,16) and 64g+32+16h+[0,16)
 *   Q6_K        block it/4, half h = (it%4)/2, j = it%2: elements
 *               128h + 32k + 16j + [0,16) for k = 0..3; the same items in
 *               KCUDA_LAYOUT_Q6_K_GROUPS (kcuda.h), where lane l of a warp
 *               reads item l of a group with 16-byte loads of three planes
 *   F16, BF16   8 values (2 when rows are not 16-byte aligned); F32: 4 (or 1)
 * One launch handles one matrix, or in KCUDA_OUT_SWIGLU mode the gate and up
 * matrices together, or up to three matrices of the same activations as
 * consecutive row ranges (q, k, v: kcuda_matvec_multi; one token's two
 * K-quant kinds run as the two halves of one grid, k_matvec_two over the
 * shared block body mv_block, three kinds as its thirds, k_matvec_three); stacked experts take their expert and token
 * rows from tile records built on the device (kcuda_moe_plan). A decode
 * token's q, k and v launch can also finish kcuda_rope_store's work in its
 * store epilogue (mv_qkv_store: llama's RoPE pairs are neighbouring rows,
 * so a block holds both rows of each pair).
 */
#include "kcuda_kdot.cuh"

enum mv_kind {
    MV_Q4_0,
    MV_Q8_0,
    MV_Q4_K,
    MV_Q4_KG,
    MV_Q5_K,
    MV_Q6_K,
    MV_Q6_KG,
    MV_F16_8,
    MV_F16_2,
    MV_BF16_8,
    MV_BF16_2,
    MV_F32_4,
    MV_F32_1,
    MV_KIND_COUNT
};

/* One matrix of a launch: rows [previous row_end, row_end) of the launch. */
struct mv_task {
    const uint8_t *w;
    float *out;
    const float *bias;
    int64_t ldo;
    int row_end;
    int role; /* with mv_args.qkv: MV_ROLE_* */
};

/* A decode token's q, k and v products finishing kcuda_rope_store's work
 * (kcuda_matvec_qkv_rope): q rotated, k rotated and stored, v stored. */
enum { MV_ROLE_PLAIN, MV_ROLE_Q, MV_ROLE_K, MV_ROLE_V };
struct mv_qkv {
    const float *cs;             /* the token's cos/sin pairs */
    const int32_t *pos, *seq;
    __half *kc, *vc;             /* NULL: no q/k/v epilogue */
    int hd, n_rot, n_ctx, n_kv;
};

struct mv_args {
    const uint8_t *w2;     /* up projection (SwiGLU), else NULL */
    size_t row_stride, expert_stride;
    int n_in, n_out, n_items; /* n_out: rows of all tasks */
    const uint8_t *act;
    size_t act_stride;
    int n_tasks;
    mv_task task[KCUDA_MULTI_MAX];
    int mode;
    int n_tok;             /* dense: tokens in this launch */
    const int32_t *tiles;  /* experts: tile records, or NULL */
    int act_div;
    int stage;             /* one token's activation row goes to shared memory (dynamic, act_stride bytes) */
    mv_qkv qkv;
};

/* ---- per-kind weight loads and dots (Q4_K and Q6_K: kcuda_kdot.cuh) ---- */

template <int K> struct mv_item;

template <> struct mv_item<MV_Q4_0> {
    uint32_t q[4];
    float d;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const uint8_t *b = wr + (size_t)it * 18;
        kc_load16_a2(b + 2, q);
        d = __half2float(*(const __half *)b);
    }
    __device__ __forceinline__ float dot(const uint8_t *ar, int n_in, int it, bool) const
    {
        const int4 a0 = *(const int4 *)(ar + 32 * it), a1 = *(const int4 *)(ar + 32 * it + 16);
        const int al[4] = { a0.x, a0.y, a0.z, a0.w }, ah[4] = { a1.x, a1.y, a1.z, a1.w };
        int s = 0, sa = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            s = dp4a((int)(q[i] & 0x0F0F0F0Fu), al[i], s);
            s = dp4a((int)((q[i] >> 4) & 0x0F0F0F0Fu), ah[i], s);
            sa = dp4a(ONES, al[i], sa);
            sa = dp4a(ONES, ah[i], sa);
        }
        const float dy = ((const float *)(ar + n_in))[it];
        return (d * dy) * (float)(s - 8 * sa);
    }
};

template <> struct mv_item<MV_Q8_0> {
    uint32_t q[8];
    float d;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const uint8_t *b = wr + (size_t)it * 34;
        kc_load16_a2(b + 2, q);
        kc_load16_a2(b + 18, q + 4);
        d = __half2float(*(const __half *)b);
    }
    __device__ __forceinline__ float dot(const uint8_t *ar, int n_in, int it, bool) const
    {
        const int4 a0 = *(const int4 *)(ar + 32 * it), a1 = *(const int4 *)(ar + 32 * it + 16);
        const int a[8] = { a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w };
        int s = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) s = dp4a((int)q[i], a[i], s);
        const float dy = ((const float *)(ar + n_in))[it];
        return (d * dy) * (float)s;
    }
};

/* The Q8_K side of a Q5_K item: lo/hi are the two sub-blocks' levels. */
__device__ __forceinline__ float k_affine_dot(const uint32_t lo[4], const uint32_t hi[4], uint4 hdr,
                                              const uint8_t *ar, int n_in, int it)
{
    const int ib = it >> 3, g = (it & 7) >> 1, h = it & 1;
    const uint8_t *base = ar + 256 * ib + 64 * g + 16 * h;
    const int4 a0 = *(const int4 *)base, a1 = *(const int4 *)(base + 32);
    const int al[4] = { a0.x, a0.y, a0.z, a0.w }, ah[4] = { a1.x, a1.y, a1.z, a1.w };
    int dlo = 0, dhi = 0, slo = 0, shi = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        dlo = dp4a((int)lo[i], al[i], dlo);
        dhi = dp4a((int)hi[i], ah[i], dhi);
        slo = dp4a(ONES, al[i], slo);
        shi = dp4a(ONES, ah[i], shi);
    }
    int sc0, m0, sc1, m1;
    k_scales(hdr.y, hdr.z, hdr.w, g, sc0, m0, sc1, m1);
    /* The 8 lanes of this super-block add their integer sums first, so the
     * float step is the CPU's: (d*dy)*isum - (dmin*dy)*imin per super-block. */
    int isum = sc0 * dlo + sc1 * dhi, imin = m0 * slo + m1 * shi;
    const unsigned gm = 0xFFu << (threadIdx.x & 24);
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) {
        isum += __shfl_xor_sync(gm, isum, o);
        imin += __shfl_xor_sync(gm, imin, o);
    }
    if (threadIdx.x & 7) return 0.0f;
    const __half2 dd = *(const __half2 *)&hdr.x;
    const float d = __low2float(dd), dmin = __high2float(dd);
    const float dy = ((const float *)(ar + n_in))[ib];
    return (d * dy) * (float)isum - (dmin * dy) * (float)imin;
}

template <> struct mv_item<MV_Q4_K> : kq4k_item {};

/* Q4_K regrouped (KCUDA_LAYOUT_Q4_K_GROUPS): item it is item it%32 of group
 * it/32; the lanes of a warp read consecutive 16-byte chunks of each plane
 * and four lanes share a block's header. The dot is the stored layout's. */
template <> struct mv_item<MV_Q4_KG> : kq4k_item {
    static constexpr int group_bytes = Q4G_BYTES;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const uint8_t *g = wr + (size_t)(it >> 5) * Q4G_BYTES;
        const int i = it & 31;
        hdr = __ldg((const uint4 *)(g + Q4G_HDR + 16 * (i >> 2)));
        q0 = __ldg((const uint4 *)(g + 16 * i));
        q1 = __ldg((const uint4 *)(g + 512 + 16 * i));
    }
    /* item i of group g in shared memory (k_matvec_bulk; the same offsets;
     * one loader for both changed the multi-token kernels' registers) */
    __device__ __forceinline__ void load_shared(const uint8_t *g, int i)
    {
        hdr = *(const uint4 *)(g + Q4G_HDR + 16 * (i >> 2));
        q0 = *(const uint4 *)(g + 16 * i);
        q1 = *(const uint4 *)(g + 512 + 16 * i);
    }
};

template <> struct mv_item<MV_Q5_K> {
    uint4 hdr, qh, qv;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const int ib = it >> 3, g = (it & 7) >> 1, h = it & 1;
        const uint8_t *b = wr + (size_t)ib * 176;
        hdr = __ldg((const uint4 *)b);
        qh = __ldg((const uint4 *)(b + 16 + 16 * h));
        qv = __ldg((const uint4 *)(b + 48 + 32 * g + 16 * h));
    }
    __device__ __forceinline__ float dot(const uint8_t *ar, int n_in, int it, bool) const
    {
        const int g = (it & 7) >> 1;
        const uint32_t q[4] = { qv.x, qv.y, qv.z, qv.w }, hb[4] = { qh.x, qh.y, qh.z, qh.w };
        uint32_t lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            lo[i] = (q[i] & 0x0F0F0F0Fu) | (((hb[i] >> (2 * g)) & 0x01010101u) << 4);
            hi[i] = ((q[i] >> 4) & 0x0F0F0F0Fu) | (((hb[i] >> (2 * g + 1)) & 0x01010101u) << 4);
        }
        return k_affine_dot(lo, hi, hdr, ar, n_in, it);
    }
};

template <> struct mv_item<MV_Q6_K> : kq6k_item {};

/* Q6_K regrouped (KCUDA_LAYOUT_Q6_K_GROUPS): item it is item it%32 of group
 * it/32; the warp's lanes read consecutive 16-byte chunks of each plane. */
template <> struct mv_item<MV_Q6_KG> {
    uint4 la, lb, hb;
    uint32_t sc4;
    float d;
    static constexpr int group_bytes = Q6G_BYTES;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const uint8_t *g = wr + (size_t)(it >> 5) * Q6G_BYTES;
        const int i = it & 31;
        la = __ldg((const uint4 *)(g + 16 * i));
        lb = __ldg((const uint4 *)(g + 512 + 16 * i));
        hb = __ldg((const uint4 *)(g + 1024 + 16 * i));
        sc4 = __ldg((const uint32_t *)(g + Q6G_SCALES + 4 * i));
        d = __half2float(*(const __half *)(g + Q6G_D + 2 * (i >> 2)));
    }
    /* item i of group g in shared memory (as mv_item<MV_Q4_KG>'s) */
    __device__ __forceinline__ void load_shared(const uint8_t *g, int i)
    {
        la = *(const uint4 *)(g + 16 * i);
        lb = *(const uint4 *)(g + 512 + 16 * i);
        hb = *(const uint4 *)(g + 1024 + 16 * i);
        sc4 = *(const uint32_t *)(g + Q6G_SCALES + 4 * i);
        d = __half2float(*(const __half *)(g + Q6G_D + 2 * (i >> 2)));
    }
    __device__ __forceinline__ float dot(const uint8_t *ar, int n_in, int it, bool sw) const
    {
        return q6_dot(la, lb, hb, sc4, d, ar, n_in, it, sw);
    }
};

template <> struct mv_item<MV_F16_8> {
    uint4 v;
    __device__ __forceinline__ void load(const uint8_t *wr, int it) { v = __ldg((const uint4 *)(wr + 16 * (size_t)it)); }
    __device__ __forceinline__ float dot(const uint8_t *ar, int, int it, bool) const
    {
        const uint4 a = *(const uint4 *)(ar + 16 * (size_t)it);
        const __half2 *w = (const __half2 *)&v, *x = (const __half2 *)&a;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 wf = __half22float2(w[i]), xf = __half22float2(x[i]);
            s += wf.x * xf.x + wf.y * xf.y;
        }
        return s;
    }
};

template <> struct mv_item<MV_F16_2> {
    __half2 v;
    __device__ __forceinline__ void load(const uint8_t *wr, int it) { v = *(const __half2 *)(wr + 4 * (size_t)it); }
    __device__ __forceinline__ float dot(const uint8_t *ar, int, int it, bool) const
    {
        const float2 wf = __half22float2(v), xf = __half22float2(*(const __half2 *)(ar + 4 * (size_t)it));
        return wf.x * xf.x + wf.y * xf.y;
    }
};

template <> struct mv_item<MV_BF16_8> {
    uint4 v;
    __device__ __forceinline__ void load(const uint8_t *wr, int it) { v = __ldg((const uint4 *)(wr + 16 * (size_t)it)); }
    __device__ __forceinline__ float dot(const uint8_t *ar, int, int it, bool) const
    {
        const uint4 a = *(const uint4 *)(ar + 16 * (size_t)it);
        const __nv_bfloat162 *w = (const __nv_bfloat162 *)&v, *x = (const __nv_bfloat162 *)&a;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 wf = __bfloat1622float2(w[i]), xf = __bfloat1622float2(x[i]);
            s += wf.x * xf.x + wf.y * xf.y;
        }
        return s;
    }
};

template <> struct mv_item<MV_BF16_2> {
    __nv_bfloat162 v;
    __device__ __forceinline__ void load(const uint8_t *wr, int it) { v = *(const __nv_bfloat162 *)(wr + 4 * (size_t)it); }
    __device__ __forceinline__ float dot(const uint8_t *ar, int, int it, bool) const
    {
        const float2 wf = __bfloat1622float2(v);
        const float2 xf = __bfloat1622float2(*(const __nv_bfloat162 *)(ar + 4 * (size_t)it));
        return wf.x * xf.x + wf.y * xf.y;
    }
};

template <> struct mv_item<MV_F32_4> {
    float4 v;
    __device__ __forceinline__ void load(const uint8_t *wr, int it) { v = __ldg((const float4 *)(wr + 16 * (size_t)it)); }
    __device__ __forceinline__ float dot(const uint8_t *ar, int, int it, bool) const
    {
        const float4 a = *(const float4 *)(ar + 16 * (size_t)it);
        return v.x * a.x + v.y * a.y + v.z * a.z + v.w * a.w;
    }
};

template <> struct mv_item<MV_F32_1> {
    float v;
    __device__ __forceinline__ void load(const uint8_t *wr, int it) { v = ((const float *)wr)[it]; }
    __device__ __forceinline__ float dot(const uint8_t *ar, int, int it, bool) const
    {
        return v * ((const float *)ar)[it];
    }
};

/* ---- the kernel ---- */

#define MV_THREADS 128
#define MV_MIN_BLOCKS(nt) ((nt) == 1 ? 8 : 1) /* blocks per multiprocessor the registers allow */
#define MV_STAGE_MAX (48u << 10) /* staged activation rows: within the default shared memory */

/* Items in flight per thread (of each matrix): one token (decode) 2, or 1
 * per matrix of the SwiGLU pair, so that with at most 64 registers 8
 * blocks share a multiprocessor (H200, one binary: 8B decode 355 -> 371
 * tok/s against 4 and 2 at 96-125 registers: more warps, not more loads
 * per thread, hide the latency); two tokens of one matrix 4, else 2. */
#define MV_UNROLL(nt, pair) ((nt) == 1 ? ((pair) ? 1 : 2) : (nt) <= 2 && !(pair) ? 4 : 2)
#define MV_UNROLL_1 MV_UNROLL(1, false)

/* Prefetch this thread's share of a weight row into L2 while the previous
 * kernel finishes (PDL): the weights never depend on it. */
__device__ __forceinline__ void prefetch_row(const uint8_t *wr, size_t bytes, int tid, int step)
{
    for (size_t o = (size_t)tid * 128; o < bytes; o += (size_t)step * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + o));
}

/* The task of a row in a fused launch, and the row within it. */
struct mv_row {
    const uint8_t *w;
    float *out;
    const float *bias;
    int64_t ldo;
    int lrow;
    int role;
};
__device__ __forceinline__ mv_row row_task(const mv_args &a, int row)
{
    const int t = a.n_tasks > 1 && row >= a.task[0].row_end ? (a.n_tasks > 2 && row >= a.task[1].row_end ? 2 : 1) : 0;
    mv_row r;
    r.w = t == 0 ? a.task[0].w : t == 1 ? a.task[1].w : a.task[2].w;
    r.out = t == 0 ? a.task[0].out : t == 1 ? a.task[1].out : a.task[2].out;
    r.bias = t == 0 ? a.task[0].bias : t == 1 ? a.task[1].bias : a.task[2].bias;
    r.ldo = t == 0 ? a.task[0].ldo : t == 1 ? a.task[1].ldo : a.task[2].ldo;
    r.role = t == 0 ? a.task[0].role : t == 1 ? a.task[1].role : a.task[2].role;
    r.lrow = t == 0 ? row : row - (t == 1 ? a.task[0].row_end : a.task[1].row_end);
    return r;
}

/* A token's activation row (a.act_stride bytes at act) into shared memory,
 * the quants swizzled (mv_swizzle), the scales in place; all nthr threads
 * of the block (this one is tid) take part, F loads in flight before
 * their stores, so the row costs one memory latency, not one per 16 bytes
 * x threads (F = 4 where registers are scarce). */
template <int F = 8>
__device__ __forceinline__ void mv_stage_act(const mv_args &a, const uint8_t *act, int4 *act_sh, int nthr, int tid)
{
    const int n_chunks = (int)(a.act_stride >> 4), n_sw = a.n_in >> 4;
    for (int c0 = tid; c0 < n_chunks; c0 += F * nthr) {
        int4 v[F];
#pragma unroll
        for (int u = 0; u < F; u++)
            if (c0 + u * nthr < n_chunks) v[u] = *(const int4 *)(act + ((size_t)(c0 + u * nthr) << 4));
#pragma unroll
        for (int u = 0; u < F; u++) {
            const int c = c0 + u * nthr;
            if (c < n_chunks) act_sh[c < n_sw ? mv_swizzle(c) : c] = v[u];
        }
    }
    __syncthreads();
}

/* Output row orow of a product: v (plus bias) stored, added, or the SwiGLU
 * of v and v2. */
template <bool PAIR>
__device__ __forceinline__ void mv_store(const mv_args &a, const mv_row &r, int orow, float v, float v2)
{
    float *o = r.out + (size_t)orow * (size_t)r.ldo + r.lrow;
    if (r.bias) v += r.bias[r.lrow];
    if (PAIR) *o = v / (1.0f + expf(-v)) * v2;
    else if (a.mode == KCUDA_OUT_ADD) *o += v;
    else *o = v;
}

/* One decode token's row of q, k or v (one warp per row, 4 rows per block,
 * lane 0 holding v), as kcuda_rope_store leaves it: the bias added, then q
 * and k rows rotated with their pair's row (llama's adjacent pairs: rows
 * 2p and 2p+1 of a head are warps y and y^1 of this block) and stored, k
 * and v rows also stored in the F16 cache at the token's position. */
__device__ __forceinline__ void mv_qkv_store(const mv_args &a, const mv_row &r, bool active, float v)
{
    __shared__ float pv[4];
    const int y = threadIdx.y;
    if (active && r.bias) v += r.bias[r.lrow];
    if (threadIdx.x == 0) pv[y & 3] = v;
    __syncthreads();
    if (threadIdx.x == 0 && active) {
        const mv_qkv &q = a.qkv;
        const int i = r.lrow % q.hd, head = r.lrow / q.hd;
        float out = v;
        if (r.role != MV_ROLE_V && r.role != MV_ROLE_PLAIN && i < q.n_rot) { /* q or k */
            const int p = i / 2;
            out = kc_rope_elem(pv[y & 2], pv[(y & 2) + 1], q.cs[2 * p], q.cs[2 * p + 1], i & 1);
        }
        r.out[r.lrow] = out;
        if (r.role == MV_ROLE_K || r.role == MV_ROLE_V) {
            const size_t off = (((size_t)q.seq[0] * q.n_ctx + q.pos[0]) * q.n_kv + head) * q.hd + i;
            (r.role == MV_ROLE_K ? q.kc : q.vc)[off] = __float2half_rn(out);
        }
    }
    __syncthreads(); /* pv is rewritten by the next row group */
}

/* Block bx of nb: blockDim.y rows at a time, each row on blockDim.x / 32
 * warps; the launch gives every row group its own block (the loop over
 * groups also serves smaller grids). */
template <int K, int NT, bool PAIR, int U>
__device__ __forceinline__ void mv_block(const mv_args &a, int bx, int nb)
{
    kc_pdl_trigger();
    const int W = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_groups = (a.n_out + blockDim.y - 1) / blockDim.y;
    if (!a.tiles && bx < n_groups) { /* weights never depend on the previous kernel */
        const int row = bx * blockDim.y + threadIdx.y;
        if (row < a.n_out) {
            const mv_row r = row_task(a, row);
            prefetch_row(r.w + (size_t)r.lrow * a.row_stride, a.row_stride, threadIdx.x, 32 * W);
            if (PAIR) prefetch_row(a.w2 + (size_t)r.lrow * a.row_stride, a.row_stride, threadIdx.x, 32 * W);
        }
    }
    kc_pdl_wait();
    int n = a.n_tok;
    int arow[NT], orow[NT];
    size_t ex_off = 0;
    if (a.tiles) {
        const int32_t *tile = a.tiles + (size_t)blockIdx.y * KCUDA_MOE_TILE_INTS;
        const int ex = tile[0];
        if (ex < 0) return; /* the whole block leaves: no barrier is skipped */
        n = min(tile[1], NT);
        ex_off = (size_t)ex * a.expert_stride;
#pragma unroll
        for (int u = 0; u < NT; u++) {
            const int s = u < n ? tile[2 + u] : 0;
            arow[u] = s / a.act_div;
            orow[u] = s;
        }
    } else {
#pragma unroll
        for (int u = 0; u < NT; u++) arow[u] = orow[u] = u;
    }
    const uint8_t *ar[NT];
#pragma unroll
    for (int u = 0; u < NT; u++) ar[u] = a.act + (size_t)arow[u] * a.act_stride;
    const bool staged = NT == 1 && a.stage;
    if (NT == 1 && a.stage) { /* every row of the block reads the same activations */
        extern __shared__ int4 act_sh[];
        mv_stage_act(a, ar[0], act_sh, blockDim.x * blockDim.y, threadIdx.y * blockDim.x + threadIdx.x);
        ar[0] = (const uint8_t *)act_sh;
    }
    __shared__ float red[MV_THREADS / 32][2 * NT];
    for (int grp = bx; grp < n_groups; grp += nb) {
        const int row = grp * blockDim.y + threadIdx.y;
        const bool active = row < a.n_out;
        const mv_row r = row_task(a, active ? row : 0);
        float acc[NT], acc2[NT];
#pragma unroll
        for (int u = 0; u < NT; u++) acc[u] = acc2[u] = 0.0f;
        if (active) {
            const uint8_t *wr = r.w + ex_off + (size_t)r.lrow * a.row_stride;
            const uint8_t *wr2 = PAIR ? a.w2 + ex_off + (size_t)r.lrow * a.row_stride : NULL;
            const int step = 32 * W;
            /* U items per thread in flight (of each matrix), the last round
             * predicated; the lanes of one K-quant super-block are valid or
             * not together (rows hold whole blocks of 8 items) */
            for (int it = threadIdx.x; it < a.n_items; it += U * step) {
                mv_item<K> x[U], y[U];
#pragma unroll
                for (int k = 0; k < U; k++) {
                    if (it + k * step < a.n_items) {
                        x[k].load(wr, it + k * step);
                        if (PAIR) y[k].load(wr2, it + k * step);
                    }
                }
#pragma unroll
                for (int k = 0; k < U; k++) {
                    if (it + k * step < a.n_items) {
#pragma unroll
                        for (int u = 0; u < NT; u++) {
                            if (u < n) {
                                acc[u] += x[k].dot(ar[u], a.n_in, it + k * step, staged);
                                if (PAIR) acc2[u] += y[k].dot(ar[u], a.n_in, it + k * step, staged);
                            }
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < NT; u++) {
            acc[u] = kc_warp_sum(acc[u]);
            if (PAIR) acc2[u] = kc_warp_sum(acc2[u]);
        }
        if (W > 1) {
            if (lane == 0) {
#pragma unroll
                for (int u = 0; u < NT; u++) {
                    red[threadIdx.y * W + warp][u] = acc[u];
                    red[threadIdx.y * W + warp][NT + u] = acc2[u];
                }
            }
            __syncthreads();
            if (threadIdx.x == 0) {
#pragma unroll
                for (int u = 0; u < NT; u++) {
                    float s = 0.0f, s2 = 0.0f;
                    for (int j = 0; j < W; j++) {
                        s += red[threadIdx.y * W + j][u];
                        s2 += red[threadIdx.y * W + j][NT + u];
                    }
                    acc[u] = s;
                    acc2[u] = s2;
                }
            }
            __syncthreads(); /* red is rewritten by the next row group */
        }
        if (!PAIR && NT == 1 && a.qkv.kc) { /* block-uniform: every warp reaches its barriers */
            mv_qkv_store(a, r, active, acc[0]);
            continue;
        }
        if (threadIdx.x != 0 || !active) continue;
#pragma unroll
        for (int u = 0; u < NT; u++) {
            if (u >= n) break;
            mv_store<PAIR>(a, r, orow[u], acc[u], acc2[u]);
        }
    }
}

template <int K, int NT, bool PAIR, int U>
__global__ void __launch_bounds__(MV_THREADS, MV_MIN_BLOCKS(NT)) k_matvec(const mv_args a)
{
    mv_block<K, NT, PAIR, U>(a, blockIdx.x, gridDim.x);
}

/* One token's products of two weight kinds with the same activation row
 * in one launch (q and k in Q4_K beside v in Q6_K): the first blocks_a
 * blocks run a's rows, the rest b's. */
template <int KA, int KB>
__global__ void __launch_bounds__(MV_THREADS, MV_MIN_BLOCKS(1)) k_matvec_two(const mv_args a, const mv_args b,
                                                                             int blocks_a)
{
    if ((int)blockIdx.x < blocks_a) mv_block<KA, 1, false, MV_UNROLL_1>(a, blockIdx.x, blocks_a);
    else mv_block<KB, 1, false, MV_UNROLL_1>(b, blockIdx.x - blocks_a, gridDim.x - blocks_a);
}

/* Three kinds, each against its own activation row (MoE files' q in Q4_K
 * and v in Q6_K on Q8_K rows, k in Q8_0 on Q8_0 rows): blocks [0, ba) run
 * a's rows, [ba, bab) b's, the rest c's. */
template <int KA, int KB, int KC>
__global__ void __launch_bounds__(MV_THREADS, MV_MIN_BLOCKS(1))
    k_matvec_three(const mv_args a, const mv_args b, const mv_args c, int ba, int bab)
{
    if ((int)blockIdx.x < ba) mv_block<KA, 1, false, MV_UNROLL_1>(a, blockIdx.x, ba);
    else if ((int)blockIdx.x < bab) mv_block<KB, 1, false, MV_UNROLL_1>(b, blockIdx.x - ba, bab - ba);
    else mv_block<KC, 1, false, MV_UNROLL_1>(c, blockIdx.x - bab, gridDim.x - bab);
}

/* ---- one token's K-quant products through the bulk-copy engine (sm_90) ----
 *
 * The kernel above keeps as many weight bytes in flight as its registers
 * hold. Here one thread of each block hands whole weight rows (4 rows, one
 * per warp, both matrices of a SwiGLU pair) to the copy engine in groups of
 * 2048 weights, each group completing on its own shared-memory barrier; a
 * warp starts on group g as soon as it has landed, every lane on one item.
 * With one stage every block takes one group of 4 rows and issues its
 * copies before the dependency wait (the weights never depend on the
 * previous kernel), so they overlap that kernel's tail and the activation
 * staging. With two stages the grid is what fits on the GPU at once, each
 * block strides over the row groups, staging the activation row once, and
 * the copies of its next row group but one go out as soon as a stage is
 * free, so its share of the weights streams without gaps. Rows must fit
 * in the budget (MV_BULK_BYTES of weights per stage); larger rows take the
 * register kernel. */
#define MV_BULK_BYTES (64u << 10)
#define MV_BULK_GROUPS 32


/* Thread 0: the copies of row group rg (rows 4rg.., matrices m) into stage
 * st, group g completing on bar[g]. */
template <int GB, int M>
__device__ __forceinline__ void bulk_issue(const mv_args &a, int rg, uint8_t *st, uint64_t *bar, int n_grp)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const int row0 = rg * 4, rows = min(4, a.n_out - row0);
    for (int g = 0; g < n_grp; g++) {
        kc_mbar_expect(kc_smem_addr(&bar[g]), rows * M * GB);
        for (int r = 0; r < rows; r++) {
            const mv_row t = row_task(a, row0 + r);
            const size_t off = (size_t)t.lrow * a.row_stride + (size_t)g * GB;
            uint8_t *dst = st + ((size_t)(g * 4 + r) * M) * GB;
#pragma unroll
            for (int m = 0; m < M; m++) kc_bulk_copy(dst + m * GB, (m ? a.w2 : t.w) + off, GB, kc_smem_addr(&bar[g]));
        }
    }
#endif
}

template <int K, bool PAIR>
__global__ void __launch_bounds__(MV_THREADS, 2) k_matvec_bulk(const mv_args a, int n_stage)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int GB = mv_item<K>::group_bytes, M = PAIR ? 2 : 1;
    extern __shared__ __align__(128) uint8_t mv_sh[];
    __shared__ __align__(8) uint64_t bar[2][MV_BULK_GROUPS];
    const int n_grp = a.n_items >> 5, n_rg = (a.n_out + 3) >> 2, tid = threadIdx.y * 32 + threadIdx.x;
    const size_t stage_bytes = (size_t)n_grp * 4 * M * GB;
    uint8_t *wsh = mv_sh + ((a.stage ? a.act_stride : 0) + 127) / 128 * 128;
    if (tid == 0) {
        for (int s = 0; s < n_stage; s++)
            for (int g = 0; g < n_grp; g++)
                kc_mbar_init(kc_smem_addr(&bar[s][g]));
        kc_mbar_init_fence();
    }
    __syncthreads();
    kc_pdl_trigger();
    if (tid == 0)
        for (int s = 0; s < n_stage && blockIdx.x + s * gridDim.x < n_rg; s++)
            bulk_issue<GB, M>(a, blockIdx.x + s * gridDim.x, wsh + s * stage_bytes, bar[s], n_grp);
    kc_pdl_wait();
    const uint8_t *ar = a.act;
    if (a.stage) {
        mv_stage_act(a, a.act, (int4 *)mv_sh, MV_THREADS, tid);
        ar = mv_sh;
    }
    const int r = threadIdx.y, lane = threadIdx.x;
    int use = 0;
    for (int rg = blockIdx.x; rg < n_rg; rg += gridDim.x, use++) {
        const int s = n_stage > 1 ? use & 1 : 0;
        const uint32_t parity = (uint32_t)(n_stage > 1 ? use >> 1 : use) & 1u;
        const uint8_t *st = wsh + s * stage_bytes;
        const int rows = min(4, a.n_out - rg * 4);
        float acc = 0.0f, acc2 = 0.0f;
        if (r < rows) {
            for (int g = 0; g < n_grp; g++) {
                kc_mbar_wait(kc_smem_addr(&bar[s][g]), parity);
                const uint8_t *grp = st + ((size_t)(g * 4 + r) * M) * GB;
                mv_item<K> x;
                x.load_shared(grp, lane);
                acc += x.dot(ar, a.n_in, g * 32 + lane, a.stage);
                if (PAIR) {
                    mv_item<K> y;
                    y.load_shared(grp + GB, lane);
                    acc2 += y.dot(ar, a.n_in, g * 32 + lane, a.stage);
                }
            }
        }
        acc = kc_warp_sum(acc);
        if (PAIR) acc2 = kc_warp_sum(acc2);
        if (lane == 0 && r < rows) mv_store<PAIR>(a, row_task(a, rg * 4 + r), 0, acc, acc2);
        if (n_stage > 1 && rg + 2 * (int)gridDim.x < n_rg) { /* the stage is free: the row group after next */
            __syncthreads();
            if (tid == 0) {
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                bulk_issue<GB, M>(a, rg + 2 * gridDim.x, wsh + s * stage_bytes, bar[s], n_grp);
            }
        }
    }
#endif
}

/* ---- one token's expert products through the bulk-copy engine (sm_90) ----
 *
 * The register kernel's expert tiles (one warp a row, 4 rows of gate and up
 * a block) hold their weights in registers: 64 a thread, so the 1,536
 * blocks of the Qwen3-MoE shape's gate/up take 1.45 waves, the second
 * paying the memory latency again. Here thread 0 of a block hands its rows
 * (GGML Q4_K, whole rows of each matrix) to the copy engine as soon as the
 * tile names the expert, the block stages the slot's activation row while
 * they fly, and each warp dots its row out of shared memory: few registers,
 * so the grid fits one wave. */
#define MV_XB_MIN_BLOCKS 12 /* 40 registers: 1,584 blocks of 128 threads in one wave on 132 multiprocessors */
template <bool PAIR>
__global__ void __launch_bounds__(MV_THREADS, MV_XB_MIN_BLOCKS) k_experts_bulk(const mv_args a, uint32_t row_bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int M = PAIR ? 2 : 1;
    extern __shared__ __align__(128) uint8_t mv_sh[]; /* the staged activation row, then [rows][M][row_bytes] */
    __shared__ __align__(8) uint64_t bar;
    const int tid = threadIdx.y * 32 + threadIdx.x, lane = threadIdx.x, r = threadIdx.y;
    uint8_t *wsh = mv_sh + (a.act_stride + 127) / 128 * 128;
    const uint32_t b_bar = kc_smem_addr(&bar);
    if (tid == 0) {
        kc_mbar_init(b_bar);
        kc_mbar_init_fence();
    }
    __syncthreads();
    kc_pdl_trigger();
    kc_pdl_wait();
    const int32_t *tile = a.tiles + (size_t)blockIdx.y * KCUDA_MOE_TILE_INTS;
    const int ex = tile[0], slot = tile[2];
    if (ex < 0) return; /* the whole block leaves: no barrier is skipped */
    const int row0 = blockIdx.x * 4, rows = min(4, a.n_out - row0);
    if (tid == 0) {
        kc_mbar_expect(b_bar, (uint32_t)(rows * M) * row_bytes);
        const size_t off = (size_t)ex * a.expert_stride + (size_t)row0 * a.row_stride;
        for (int i = 0; i < rows * M; i++)
            kc_bulk_copy(wsh + (size_t)i * row_bytes, (i % M ? a.w2 : a.task[0].w) + off + (size_t)(i / M) * a.row_stride,
                         row_bytes, b_bar);
    }
    mv_stage_act<4>(a, a.act + (size_t)(slot / a.act_div) * a.act_stride, (int4 *)mv_sh, MV_THREADS, tid);
    kc_mbar_wait(b_bar, 0);
    float acc = 0.0f, acc2 = 0.0f;
    if (r < rows) {
        const uint8_t *wr = wsh + (size_t)(r * M) * row_bytes;
        for (int it = lane; it < a.n_items; it += 32) {
            kq4k_item x;
            x.load_shared(wr, it);
            acc += x.dot(mv_sh, a.n_in, it, true);
            if (PAIR) {
                kq4k_item y;
                y.load_shared(wr + row_bytes, it);
                acc2 += y.dot(mv_sh, a.n_in, it, true);
            }
        }
    }
    acc = kc_warp_sum(acc);
    if (PAIR) acc2 = kc_warp_sum(acc2);
    if (lane == 0 && r < rows) mv_store<PAIR>(a, row_task(a, row0 + r), slot, acc, acc2);
#endif
}

/* k_experts_bulk for a decode token's Q4_K expert tiles, if it takes them
 * (sm_90, kcuda_set_experts_bulk, the staged activation row and 4 rows of
 * each matrix within the default 48 KiB of shared memory): 1 taken, 0 not. */
static int launch_experts_bulk(struct kcuda *k, const mv_args *a, int kind, bool pair, unsigned n_tiles)
{
    const uint32_t row_bytes = (uint32_t)(a->n_items / 4) * 144u; /* whole Q4_K blocks */
    const size_t smem = (a->act_stride + 127) / 128 * 128 + (size_t)4 * (pair ? 2 : 1) * row_bytes;
    if (!k->experts_bulk || kind != MV_Q4_K || !a->stage || a->n_items % 4 || smem > (48u << 10)) return 0;
    KC_PROF_BEGIN(k);
    if (pair) KC_LAUNCH_SMEM(k, k_experts_bulk<true>, dim3(kc_blocks(a->n_out, 4), n_tiles), dim3(32, 4), smem, *a, row_bytes);
    else KC_LAUNCH_SMEM(k, k_experts_bulk<false>, dim3(kc_blocks(a->n_out, 4), n_tiles), dim3(32, 4), smem, *a, row_bytes);
    KC_PROF_END(k, pair ? "experts q4_K swiglu (bulk)" : "experts q4_K (bulk)");
    return 1;
}

/* ---- dispatch ---- */

typedef void (*mv_kernel)(const mv_args);
typedef void (*mv_kernel_two)(const mv_args, const mv_args, int);
typedef void (*mv_kernel_three)(const mv_args, const mv_args, const mv_args, int, int);


template <int K, int NT>
static mv_kernel pick_pair(bool pair)
{
    return pair ? k_matvec<K, NT, true, MV_UNROLL(NT, true)> : k_matvec<K, NT, false, MV_UNROLL(NT, false)>;
}

template <int K>
static mv_kernel pick_nt(int nt, bool pair)
{
    if (nt <= 1) return pick_pair<K, 1>(pair);
    if (nt <= 2) return pick_pair<K, 2>(pair);
    if (nt <= 4) return pick_pair<K, 4>(pair);
    return pick_pair<K, 8>(pair);
}

static int item_elems(int kind)
{
    switch (kind) {
    case MV_Q4_K: case MV_Q4_KG: case MV_Q6_K: case MV_Q6_KG: return 64;
    case MV_F16_8: case MV_BF16_8: return 8;
    case MV_F16_2: case MV_BF16_2: return 2;
    case MV_F32_4: return 4;
    case MV_F32_1: return 1;
    default: return 32;
    }
}

/* The kernel kind for a weight, given the alignment of its rows and of the
 * activation rows; -1 if the type has no device kernel. */
static int kind_of(const struct kcuda_weight *w, size_t act_stride)
{
    const bool a16 = w->row_stride % 16 == 0 && act_stride % 16 == 0 &&
                     (uintptr_t)w->data % 16 == 0;
    switch (w->type) {
    case KCUDA_Q4_0: return MV_Q4_0;
    case KCUDA_Q8_0: return MV_Q8_0;
    case KCUDA_Q4_K: return w->layout == KCUDA_LAYOUT_Q4_K_GROUPS ? MV_Q4_KG : a16 ? MV_Q4_K : -1;
    case KCUDA_Q5_K: return a16 ? MV_Q5_K : -1;
    case KCUDA_Q6_K: return w->layout == KCUDA_LAYOUT_Q6_K_GROUPS ? MV_Q6_KG : MV_Q6_K;
    case KCUDA_F16: return w->n_in % 8 == 0 && a16 ? MV_F16_8 : w->n_in % 2 == 0 ? MV_F16_2 : -1;
    case KCUDA_BF16: return w->n_in % 8 == 0 && a16 ? MV_BF16_8 : w->n_in % 2 == 0 ? MV_BF16_2 : -1;
    case KCUDA_F32: return w->n_in % 4 == 0 && a16 ? MV_F32_4 : MV_F32_1;
    default: return -1;
    }
}

static mv_kernel pick(int kind, int nt, bool pair)
{
    switch (kind) {
    case MV_Q4_0: return pick_nt<MV_Q4_0>(nt, pair);
    case MV_Q8_0: return pick_nt<MV_Q8_0>(nt, pair);
    case MV_Q4_K: return pick_nt<MV_Q4_K>(nt, pair);
    case MV_Q4_KG: return pick_nt<MV_Q4_KG>(nt, pair);
    case MV_Q5_K: return pick_nt<MV_Q5_K>(nt, pair);
    case MV_Q6_K: return pick_nt<MV_Q6_K>(nt, pair);
    case MV_Q6_KG: return pick_nt<MV_Q6_KG>(nt, pair);
    case MV_F16_8: return pick_nt<MV_F16_8>(nt, pair);
    case MV_F16_2: return pick_nt<MV_F16_2>(nt, pair);
    case MV_BF16_8: return pick_nt<MV_BF16_8>(nt, pair);
    case MV_BF16_2: return pick_nt<MV_BF16_2>(nt, pair);
    case MV_F32_4: return pick_nt<MV_F32_4>(nt, pair);
    default: return pick_nt<MV_F32_1>(nt, pair);
    }
}

static const char *prof_name(int kind, bool pair, bool experts)
{
    static const char *const names[MV_KIND_COUNT][4] = {
#define MV_NAMES(t) { "matvec " t, "matvec " t " swiglu", "experts " t, "experts " t " swiglu" }
        MV_NAMES("q4_0"), MV_NAMES("q8_0"), MV_NAMES("q4_K"), MV_NAMES("q4_K/g"), MV_NAMES("q5_K"), MV_NAMES("q6_K"),
        MV_NAMES("q6_K/g"),
        MV_NAMES("f16"), MV_NAMES("f16/2"), MV_NAMES("bf16"), MV_NAMES("bf16/2"), MV_NAMES("f32"),
        MV_NAMES("f32/1"),
#undef MV_NAMES
    };
    return names[kind][(pair ? 1 : 0) + (experts ? 2 : 0)];
}

/* Bytes of one k_matvec_bulk stage: 4 rows of every matrix. */
static size_t bulk_stage_bytes(const mv_args *a, int kind, bool pair)
{
    const size_t group = kind == MV_Q4_KG ? mv_item<MV_Q4_KG>::group_bytes : mv_item<MV_Q6_KG>::group_bytes;
    return (size_t)(a->n_items / 32) * 4 * (pair ? 2 : 1) * group;
}

/* Whether a dense product can take k_matvec_bulk: a regrouped K-quant
 * weight, every matrix 16-byte aligned, 4 rows' weights within the budget. */
static bool bulk_fits(const struct kcuda *k, const mv_args *a, int kind, bool pair)
{
    if (!k->mv_bulk || (kind != MV_Q4_KG && kind != MV_Q6_KG) || a->n_items % 32 || a->row_stride % 16 ||
        a->n_items / 32 > MV_BULK_GROUPS || (pair && (uintptr_t)a->w2 % 16))
        return false;
    for (int i = 0; i < a->n_tasks; i++)
        if ((uintptr_t)a->task[i].w % 16) return false;
    return bulk_stage_bytes(a, kind, pair) <= MV_BULK_BYTES;
}

/* k_matvec_bulk for a product that bulk_fits, if it takes it. By default
 * (TT_GPU_MV_BULK=3): products of at least MV_BULK_RING_MIN row groups per
 * block of the grid that fits at once, in two stages (the output matrices:
 * on the H200 the MoE shape's decode graph 0.944 -> 0.912 ms and the 8B's
 * 2.621 -> 2.606 ms with it), and products whose row groups that grid
 * covers, one stage per block, so that all of their copies go out before
 * the dependency wait (in the MoE shape only wo: 1,248 and 1,254 -> 1,268
 * and 1,282 tok/s, 8B 404.6 -> 406.3, one H200 call). The layers' products
 * in between, 4-6 row groups per block, ran 3% slower in two stages and, in
 * two of three calls, no faster with one stage per block than in k_matvec.
 * TT_GPU_MV_BULK=1 takes every product that fits, 2 only the ring ones, 0
 * none. Returns 1 if launched. */
#define MV_BULK_RING_MIN 8
static int launch_bulk(struct kcuda *k, mv_args *a, int kind, bool pair)
{
    typedef void (*bulk_kernel)(const mv_args, int);
    const bulk_kernel kern = kind == MV_Q4_KG ? (pair ? k_matvec_bulk<MV_Q4_KG, true> : k_matvec_bulk<MV_Q4_KG, false>)
                                              : (pair ? k_matvec_bulk<MV_Q6_KG, true> : k_matvec_bulk<MV_Q6_KG, false>);
    const int slot = (kind == MV_Q4_KG ? 0 : 2) + (pair ? 1 : 0), n_rg = (a->n_out + 3) / 4;
    const size_t stage = bulk_stage_bytes(a, kind, pair);
    const size_t act = a->stage ? (a->act_stride + 127) / 128 * 128 : 0;
    size_t smem = act + 2 * stage;
    if ((int)smem > k->bulk_smem[slot]) { /* once per kernel and size */
        KC_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        k->bulk_smem[slot] = (int)smem;
    }
    if ((int)smem != k->bulk_occ_smem[slot]) { /* blocks per multiprocessor, once per kernel and size */
        KC_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k->bulk_per_sm[slot], kern, MV_THREADS, smem));
        k->bulk_occ_smem[slot] = (int)smem;
    }
    int n_stage = 2, grid = TT_MAX(k->bulk_per_sm[slot], 1) * k->n_sm;
    const bool ring = n_rg >= MV_BULK_RING_MIN * grid, one_wave = grid >= n_rg;
    if (!(k->mv_bulk == 1 || ring || (k->mv_bulk == 3 && one_wave))) return 0;
    if (one_wave) n_stage = 1, grid = n_rg, smem = act + stage; /* every block one row group */
    KC_PROF_BEGIN(k);
    KC_LAUNCH_SMEM(k, kern, dim3(grid), dim3(32, 4), smem, *a, n_stage);
    KC_PROF_END(k, prof_name(kind, pair, false));
    return 1;
}

/* a's items per row, and whether one token's activation row is staged in
 * shared memory (K-quant weights). */
static void shape_items(const struct kcuda *k, mv_args *a, const struct kcuda_weight *w, int kind, int nt)
{
    a->n_items = (int)(w->n_in / item_elems(kind));
    a->stage = nt == 1 && k->mv_stage && (kind == MV_Q4_K || kind == MV_Q4_KG || kind == MV_Q6_K || kind == MV_Q6_KG) &&
               a->act_stride <= MV_STAGE_MAX && a->act_stride % 16 == 0;
}

static int launch(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                  mv_args *a, int nt, unsigned n_grid_y)
{
    const bool pair = a->mode == KCUDA_OUT_SWIGLU;
    if (pair && (!w2 || w2->type != w->type || w2->n_in != w->n_in || w2->n_out != w->n_out ||
                 w2->row_stride != w->row_stride || w2->expert_stride != w->expert_stride))
        return tt_error_set(TT_EINVAL, "SwiGLU product needs gate and up of one type and shape");
    const int kind = kind_of(w, a->act_stride);
    if (kind < 0 || (pair && kind_of(w2, a->act_stride) != kind))
        return tt_error_set(TT_EUNSUPPORTED, "no device product for type %d with %lld columns",
                            w->type, (long long)w->n_in);
    shape_items(k, a, w, kind, nt);
    if (nt == 1 && a->tiles) {
        const int taken = launch_experts_bulk(k, a, kind, pair, n_grid_y);
        if (taken) return taken < 0 ? taken : 0;
    }
    if (nt == 1 && !a->tiles && !a->qkv.kc && bulk_fits(k, a, kind, pair)) {
        const int taken = launch_bulk(k, a, kind, pair);
        if (taken) return taken < 0 ? taken : 0;
    }
    /* warps per row: one for a token's dense products (4 rows share a
     * block's staged activation row: 8B FFN down 1.5 us per layer faster
     * than 2 warps per row), else enough that each thread has about one
     * round of MV_UNROLL items */
    const int per_warp = 32 * MV_UNROLL(nt, pair);
    const int W = nt == 1 && !a->tiles ? 1 : a->n_items > 2 * per_warp ? 4 : a->n_items > per_warp ? 2 : 1;
    const int RB = 4 / W;
    const dim3 block(32 * W, RB);
    const mv_kernel kern = pick(kind, nt, pair);
    /* one block per row group, so the scheduler overlaps one block's
     * reductions with the next blocks' loads (one wave of blocks striding
     * over the rows measured the same or slower: 8B shape 234 vs 241 tok/s) */
    const dim3 grid(kc_blocks(a->n_out, RB), n_grid_y);
    KC_PROF_BEGIN(k);
    KC_LAUNCH_SMEM(k, kern, grid, block, a->stage ? a->act_stride : 0, *a);
    KC_PROF_END(k, prof_name(kind, pair, a->tiles != NULL));
    return 0;
}

static void args_common(mv_args *a, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                        const void *d_act, size_t act_stride, enum kcuda_out_mode mode)
{
    *a = mv_args{};
    a->w2 = w2 ? (const uint8_t *)w2->data : NULL;
    a->row_stride = w->row_stride;
    a->expert_stride = w->expert_stride;
    a->n_in = (int)w->n_in;
    a->n_out = (int)w->n_out;
    a->act = (const uint8_t *)d_act;
    a->act_stride = act_stride;
    a->mode = mode;
    a->act_div = 1;
    a->n_tasks = 1;
    a->task[0].w = (const uint8_t *)w->data;
    a->task[0].row_end = (int)w->n_out;
}

int kcuda_matvec(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                 const void *d_act, size_t act_stride, int64_t n_tok, float *d_out, int64_t ldo,
                 const float *d_bias, enum kcuda_out_mode mode)
{
    if (w->n_out == 0 || n_tok <= 0) return 0;
    if (n_tok > 8) return tt_error_set(TT_EINVAL, "kcuda_matvec takes at most 8 tokens");
    mv_args a;
    args_common(&a, w, w2, d_act, act_stride, mode);
    a.task[0].out = d_out;
    a.task[0].ldo = ldo;
    a.task[0].bias = d_bias;
    a.n_tok = (int)n_tok;
    return launch(k, w, w2, &a, (int)n_tok, 1);
}

/* The two-kind kernel for weights of kinds ka then kb, or NULL. */
static mv_kernel_two pick_two(int ka, int kb)
{
    if (ka == MV_Q4_KG && kb == MV_Q6_KG) return k_matvec_two<MV_Q4_KG, MV_Q6_KG>;
    if (ka == MV_Q6_KG && kb == MV_Q4_KG) return k_matvec_two<MV_Q6_KG, MV_Q4_KG>;
    if (ka == MV_Q4_K && kb == MV_Q6_K) return k_matvec_two<MV_Q4_K, MV_Q6_K>;
    if (ka == MV_Q6_K && kb == MV_Q4_K) return k_matvec_two<MV_Q6_K, MV_Q4_K>;
    if (ka == MV_Q4_KG && kb == MV_Q8_0) return k_matvec_two<MV_Q4_KG, MV_Q8_0>; /* MoE files' q beside k, v */
    if (ka == MV_Q4_K && kb == MV_Q8_0) return k_matvec_two<MV_Q4_K, MV_Q8_0>;
    return NULL;
}

/* The three-kind kernel for weights of kinds ka, kb, kc in that order, or NULL. */
static mv_kernel_three pick_three(int ka, int kb, int kc)
{
    if (ka == MV_Q4_KG && kb == MV_Q8_0 && kc == MV_Q6_KG) return k_matvec_three<MV_Q4_KG, MV_Q8_0, MV_Q6_KG>;
    if (ka == MV_Q4_K && kb == MV_Q8_0 && kc == MV_Q6_K) return k_matvec_three<MV_Q4_K, MV_Q8_0, MV_Q6_K>;
    return NULL;
}

/* The runs of one kind (same type, row length, activation rows and kernel)
 * in ws[0..n_w): their count, run j starting at starts[j]; -1 when the row
 * lengths differ. */
static int kind_runs(const struct kcuda_weight *const *ws, int n_w, const size_t *act_strides, int *starts)
{
    int r = 1;
    starts[0] = 0;
    for (int i = 1; i < n_w; i++) {
        const struct kcuda_weight *w = ws[i], *p = ws[i - 1];
        if (w->n_in != ws[0]->n_in) return -1;
        const bool same = w->type == p->type && w->row_stride == p->row_stride && act_strides[i] == act_strides[i - 1] &&
                          kind_of(w, act_strides[i]) == kind_of(p, act_strides[i - 1]);
        if (!same) starts[r++] = i;
    }
    return r;
}

/* The tasks ws[i0..i1) into a (rows counted from the first). */
static void multi_tasks(mv_args *a, const struct kcuda_weight *const *ws, int i0, int i1, float *const *outs,
                        const int64_t *ldos, const float *const *biases)
{
    int rows = 0;
    for (int i = i0; i < i1; i++) {
        rows += (int)ws[i]->n_out;
        a->task[i - i0] = mv_task{ (const uint8_t *)ws[i]->data, outs[i], biases ? biases[i] : NULL, ldos[i], rows,
                                   MV_ROLE_PLAIN };
    }
    a->n_tasks = i1 - i0;
    a->n_out = rows;
}

/* The runs of one kind that one launch of ws[0..n_w), each against its
 * activation rows (act_strides[i] bytes), takes (kind_runs; several only for
 * one token and a kernel of those kinds), or -1 if one launch cannot. */
static int multi_runs(const struct kcuda_weight *const *ws, int n_w, const size_t *act_strides, int64_t n_tok,
                      int *starts)
{
    if (n_w < 1 || n_w > KCUDA_MULTI_MAX || n_tok <= 0 || n_tok > 8) return -1;
    const int r = kind_runs(ws, n_w, act_strides, starts);
    if (r <= 1) return r;
    if (n_tok != 1) return -1;
    int kinds[KCUDA_MULTI_MAX];
    for (int j = 0; j < r; j++) kinds[j] = kind_of(ws[starts[j]], act_strides[starts[j]]);
    if (r == 2) return pick_two(kinds[0], kinds[1]) ? 2 : -1;
    return pick_three(kinds[0], kinds[1], kinds[2]) ? 3 : -1;
}

bool kcuda_matvec_multi_ok(const struct kcuda_weight *const *ws, int n_w, size_t act_stride, int64_t n_tok)
{
    const size_t st[KCUDA_MULTI_MAX] = { act_stride, act_stride, act_stride };
    int starts[KCUDA_MULTI_MAX];
    return multi_runs(ws, n_w, st, n_tok, starts) >= 1;
}

bool kcuda_matvec_multi_acts_ok(const struct kcuda_weight *const *ws, int n_w, const size_t *act_strides,
                                int64_t n_tok)
{
    int starts[KCUDA_MULTI_MAX];
    return multi_runs(ws, n_w, act_strides, n_tok, starts) >= 1;
}

/* kcuda_matvec_multi with each weight's activation rows (d_acts[i],
 * act_strides[i]), and the q/k/v epilogue when qkv (roles: the task order
 * q, k, v). */
static int multi_launch(struct kcuda *k, const struct kcuda_weight *const *ws, int n_w, const void *const *d_acts,
                        const size_t *act_strides, int64_t n_tok, float *const *outs, const int64_t *ldos,
                        const float *const *biases, const mv_qkv *qkv)
{
    int starts[KCUDA_MULTI_MAX + 1];
    const int r = multi_runs(ws, n_w, act_strides, n_tok, starts);
    if (r < 1)
        return tt_error_set(TT_EINVAL, "kcuda_matvec_multi: %d weights of these types and shapes, %lld tokens", n_w,
                            (long long)n_tok);
    starts[r] = n_w;
    static const int roles[3] = { MV_ROLE_Q, MV_ROLE_K, MV_ROLE_V };
    mv_args m[KCUDA_MULTI_MAX];
    for (int j = 0; j < r; j++) {
        const int i0 = starts[j], i1 = starts[j + 1];
        args_common(&m[j], ws[i0], NULL, d_acts[i0], act_strides[i0], KCUDA_OUT_STORE);
        multi_tasks(&m[j], ws, i0, i1, outs, ldos, biases);
        m[j].n_tok = (int)n_tok;
        if (qkv) {
            m[j].qkv = *qkv;
            for (int i = i0; i < i1; i++) m[j].task[i - i0].role = roles[i];
        }
    }
    if (r == 1) return launch(k, ws[0], NULL, &m[0], (int)n_tok, 1);
    /* two or three kinds, one token: 4 rows per block (one warp each), as
     * launch; each part reads its own activation rows, the staged ones from
     * the dynamic shared memory sized for the largest */
    int kinds[KCUDA_MULTI_MAX], blocks[KCUDA_MULTI_MAX];
    size_t smem = 0;
    for (int j = 0; j < r; j++) {
        kinds[j] = kind_of(ws[starts[j]], act_strides[starts[j]]);
        shape_items(k, &m[j], ws[starts[j]], kinds[j], 1);
        blocks[j] = kc_blocks(m[j].n_out, 4);
        smem = TT_MAX(smem, m[j].stage ? m[j].act_stride : 0);
    }
    KC_PROF_BEGIN(k);
    if (r == 2) {
        const mv_kernel_two kern = pick_two(kinds[0], kinds[1]);
        KC_LAUNCH_SMEM(k, kern, dim3(blocks[0] + blocks[1]), dim3(32, 4), smem, m[0], m[1], blocks[0]);
        KC_PROF_END(k, "matvec two kinds");
    } else {
        const mv_kernel_three kern = pick_three(kinds[0], kinds[1], kinds[2]);
        KC_LAUNCH_SMEM(k, kern, dim3(blocks[0] + blocks[1] + blocks[2]), dim3(32, 4), smem, m[0], m[1], m[2],
                       blocks[0], blocks[0] + blocks[1]);
        KC_PROF_END(k, "matvec three kinds");
    }
    return 0;
}

int kcuda_matvec_multi(struct kcuda *k, const struct kcuda_weight *const *ws, int n_w,
                       const void *d_act, size_t act_stride, int64_t n_tok, float *const *outs,
                       const int64_t *ldos, const float *const *biases)
{
    const void *acts[KCUDA_MULTI_MAX] = { d_act, d_act, d_act };
    const size_t st[KCUDA_MULTI_MAX] = { act_stride, act_stride, act_stride };
    return multi_launch(k, ws, n_w, acts, st, n_tok, outs, ldos, biases, NULL);
}

int kcuda_matvec_multi_acts(struct kcuda *k, const struct kcuda_weight *const *ws, int n_w,
                            const void *const *d_acts, const size_t *act_strides, int64_t n_tok, float *const *outs,
                            const int64_t *ldos, const float *const *biases)
{
    return multi_launch(k, ws, n_w, d_acts, act_strides, n_tok, outs, ldos, biases, NULL);
}

bool kcuda_matvec_qkv_rope_ok(const struct kcuda_weight *const *ws, size_t act_stride,
                              const struct kcuda_attn_shape *s, bool norms)
{
    return kcuda_matvec_multi_ok(ws, 3, act_stride, 1) && !norms && !s->neox && s->kv_type == KCUDA_F16 &&
           s->head_dim % 4 == 0 && s->n_rot <= s->head_dim && s->n_rot % 2 == 0 &&
           ws[0]->n_out == (int64_t)s->n_head * s->head_dim && ws[1]->n_out == (int64_t)s->n_head_kv * s->head_dim &&
           ws[2]->n_out == ws[1]->n_out;
}

int kcuda_matvec_qkv_rope(struct kcuda *k, const struct kcuda_weight *const *ws, const void *d_act,
                          size_t act_stride, float *const *outs, const float *const *biases,
                          const struct kcuda_attn_shape *s, const float *d_cs, const int32_t *d_pos,
                          const int32_t *d_seq, void *d_k_cache, void *d_v_cache)
{
    if (!kcuda_matvec_qkv_rope_ok(ws, act_stride, s, false) || !d_k_cache || !d_v_cache)
        return tt_error_set(TT_EINVAL, "kcuda_matvec_qkv_rope: head size %d (rope %d%s) with these weights",
                            s->head_dim, s->n_rot, s->neox ? ", neox" : "");
    const int64_t ldos[3] = { ws[0]->n_out, ws[1]->n_out, ws[2]->n_out };
    const mv_qkv q = { d_cs, d_pos, d_seq, (__half *)d_k_cache, (__half *)d_v_cache, s->head_dim, s->n_rot,
                       s->n_ctx, s->n_head_kv };
    const void *acts[3] = { d_act, d_act, d_act };
    const size_t st[3] = { act_stride, act_stride, act_stride };
    return multi_launch(k, ws, 3, acts, st, 1, outs, ldos, biases, &q);
}

int kcuda_matvec_experts(struct kcuda *k, const struct kcuda_weight *w,
                         const struct kcuda_weight *w2, const int32_t *d_tiles, int max_tiles,
                         int tile_tok, const void *d_act, size_t act_stride, int act_div,
                         float *d_out, int64_t ldo, enum kcuda_out_mode mode)
{
    if (w->n_out == 0 || max_tiles <= 0) return 0;
    if (max_tiles > 65535) return tt_error_set(TT_EINVAL, "%d expert tiles in one launch", max_tiles);
    mv_args a;
    args_common(&a, w, w2, d_act, act_stride, mode);
    a.task[0].out = d_out;
    a.task[0].ldo = ldo;
    a.tiles = d_tiles;
    a.act_div = act_div;
    return launch(k, w, w2, &a, tile_tok <= 1 ? 1 : KCUDA_MOE_TILE, (unsigned)max_tiles);
}
