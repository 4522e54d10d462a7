/*
 * kcuda_flash.cu: causal attention of prompt batches on the tensor cores
 * ("flash attention"), for an F16 cache and head sizes 64 and 128;
 * kcuda_attention (kcuda_attn.cu) sends batches of FA_MIN_TOK tokens or
 * more here and keeps its split kernels for decode, the F32 cache and the
 * shapes this kernel does not take.
 *
 * Rows. Block (row tile b, KV head g) computes FA_ROWS = 64 output rows:
 * row r is query head r % G of the G heads sharing KV head g (grouped-query
 * attention), for token t0 + r / G of the batch. Every key and value the
 * block loads serves all its rows, so a KV head's cache is read once per
 * 64 / G tokens. Four warps own 16 rows each; lane l holds rows l / 4 and
 * l / 4 + 8 of its warp, as the m16n8k16 accumulator layout places them.
 *
 * Keys. The block walks positions 0..end of a sequence in tiles of
 * FA_KEYS = 64, copied into shared memory with cp.async one tile ahead of
 * the tile being used (two stages; keys past `end` are zero-filled, never
 * read from the cache). Per tile each warp computes its 16 x 64 scores with
 * mma.sync (F16 operands, F32 accumulators; the queries are rounded to F16
 * as the split kernels and the CPU do, then the scores are scaled in F32),
 * masks keys past each row's position, updates the rows' running maxima
 * and sums (online softmax in F32, in registers: the four lanes of a quad
 * share a row), rounds the probabilities to F16 (as llama.cpp's flash
 * attention does: about 1e-4 relative error per output, the only rounding
 * the split kernels do not have) and adds P V to its F32 output registers.
 * A warp whose rows all end before a tile skips the tile's arithmetic.
 *
 * Sequences. Tokens of one block may belong to several sequences and sit
 * at any positions: the block makes one pass over the keys per distinct
 * sequence among its tokens, in increasing order of sequence id, from
 * position 0 to the largest position of that sequence's tokens; rows of
 * other sequences are masked in that pass, and the online softmax joins the
 * passes as it joins tiles. A token thus attends to positions 0..pos[t] of
 * its sequence, cache entries written by earlier batches included, which is
 * kcuda_attention's contract.
 *
 * Blocks start with the last row tile: a causal prompt's later tokens have
 * the most keys, so the longest blocks begin first.
 *
 * Measured (H200, head size 128, kernel times of 20 launches in a row):
 * 512 tokens from position 0 take 22.4 us against the split kernels' 243
 * (32 query heads over 4 KV heads) and 193 (32 over 8); 512 tokens after
 * 2048 cached positions 90 us against 1638 and 1347. From 16 tokens on it
 * was as fast as the split kernels or faster at every length and offset
 * tried (16 tokens of one sequence after 2048 positions: 48 us against 60
 * and 48). Tried and not kept: key tiles of 32 (168 registers, three
 * blocks per multiprocessor, but 30 us at 512 tokens), a grid that starts
 * every KV head's last row tile first, mma.sync as non-volatile asm (both
 * no faster).
 *
 * Not for decode batches of many sequences: a block walks its sequences
 * one after the other, so a row tile of 64 / G tokens that are each the
 * next token of a different long sequence takes 64 / G whole walks in one
 * block, where the split kernels spread every token over parts. The host
 * cannot see the batch's sequences here, so FA_MIN_TOK is 64, not 16:
 * servers with fewer than 64 sequences decoding keep the split kernels
 * (prompts of 16-63 tokens lose a few microseconds per layer). Mixed
 * batches (a server's decode tokens first, then a prompt chunk) are cut by
 * the engine (engine_cuda.c, attention_rows): the decode tokens go to the
 * split kernels in a launch of their own, the prompt run comes here.
 */
#include "kcuda_impl.cuh"

#include <climits>

#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * 32)
#define FA_ROWS (FA_WARPS * 16) /* (token, head) rows per block */
#define FA_KEYS 64              /* key positions per tile */
#define FA_MIN_TOK 64           /* smaller batches (decode) keep the split kernels (see above) */

struct flash_args {
    int H, KV, group, head_begin, kv_begin, n_ctx, n_tok;
    float scale_log2; /* 1/sqrt(head_dim) * log2(e): scores as base-2 exponents */
    const float *q;   /* [n_tok][H][hd] */
    const __half *kc, *vc; /* [n_seq][n_ctx][KV][hd] */
    const int32_t *pos, *seq;
    float *out; /* [n_tok][H][hd] */
};

__device__ __forceinline__ uint32_t fa_smem(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void fa_cp16(uint32_t dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void fa_cp_commit()
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N> __device__ __forceinline__ void fa_cp_wait()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* Four 8x8 F16 matrices from shared memory (lanes 8i..8i+7 give matrix i's
 * row addresses); lane l gets row l / 4, columns 2(l % 4) and 2(l % 4) + 1
 * of each, or with _t the transpose: column l / 4, rows 2(l % 4), +1. */
__device__ __forceinline__ void fa_ldsm4(uint32_t addr, uint32_t r[4])
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void fa_ldsm4_t(uint32_t addr, uint32_t r[4])
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

/* c (16x8, F32) += a (16x16, F16, row-major fragment) * b (16x8, F16). */
__device__ __forceinline__ void fa_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t fa_pack(float lo, float hi)
{
    const __half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *)&h;
}

/* Keys and values j0..j0+FA_KEYS-1 into ks, vs [FA_KEYS][HD + 8]; rows past
 * `end` are zeroed (the cache there may hold anything, NaN included). */
template <int HD>
__device__ __forceinline__ void fa_load_tile(__half *ks, __half *vs, const __half *kb, const __half *vb,
                                             size_t kvd, int j0, int end, int tid)
{
    constexpr int CPR = HD / 8, LD = HD + 8; /* 16-byte chunks per row; padded row length */
#pragma unroll
    for (int u = 0; u < FA_KEYS * CPR / FA_THREADS; u++) {
        const int i = tid + u * FA_THREADS, r = i / CPR, c = i % CPR, j = j0 + r;
        __half *kd = ks + r * LD + c * 8, *vd = vs + r * LD + c * 8;
        if (j <= end) {
            fa_cp16(fa_smem(kd), kb + (size_t)j * kvd + c * 8);
            fa_cp16(fa_smem(vd), vb + (size_t)j * kvd + c * 8);
        } else {
            *(uint4 *)kd = make_uint4(0, 0, 0, 0);
            *(uint4 *)vd = make_uint4(0, 0, 0, 0);
        }
    }
}

/* One key tile for one warp's 16 rows: scores, mask (key j counts for row i
 * when j <= lim[i]), online softmax, P V. m, l: the rows' running maxima
 * (base-2 units) and this lane's part of their sums. */
template <int HD>
__device__ __forceinline__ void fa_tile(const __half *ks, const __half *vs, int j0, const int lim[2],
                                        const uint32_t (&qa)[HD / 16][4], float (&o)[HD / 8][4], float m[2],
                                        float l[2], float scale_log2, int lane)
{
    constexpr int LD = HD + 8, NT = FA_KEYS / 8;
    const int quad = lane & 3, mi = lane >> 3, mr = lane & 7;
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    /* keys as B (k = dimension, n = key): matrices (keys +0, dims +0), (+0, +8), (+8, +0), (+8, +8) */
    const uint32_t kaddr = fa_smem(ks + ((mi >> 1) * 8 + mr) * LD + (mi & 1) * 8);
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t b[4];
            fa_ldsm4(kaddr + (uint32_t)(np * 16 * LD + kk * 16) * 2u, b);
            fa_mma(s[2 * np], qa[kk], b[0], b[1]);
            fa_mma(s[2 * np + 1], qa[kk], b[2], b[3]);
        }
    }
    float mx[2] = { -INFINITY, -INFINITY };
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int j = j0 + n * 8 + 2 * quad + (e & 1);
            const float v = j <= lim[e >> 1] ? s[n][e] * scale_log2 : -INFINITY;
            s[n][e] = v;
            mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
    }
    float mu[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float m_new = fmaxf(m[i], mx[i]);
        mu[i] = m_new == -INFINITY ? 0.0f : m_new; /* no key yet: exp2(-inf - 0) = 0, never NaN */
        const float corr = exp2f(m[i] - mu[i]);
        m[i] = m_new;
        l[i] *= corr;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) o[n][2 * i] *= corr, o[n][2 * i + 1] *= corr;
    }
    /* probabilities as A fragments: two 8-key accumulator tiles make one 16-key A tile */
    uint32_t pa[FA_KEYS / 16][4];
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[n][e] = exp2f(s[n][e] - mu[e >> 1]);
            l[e >> 1] += s[n][e];
        }
        pa[n >> 1][2 * (n & 1)] = fa_pack(s[n][0], s[n][1]);
        pa[n >> 1][2 * (n & 1) + 1] = fa_pack(s[n][2], s[n][3]);
    }
    /* values as B (k = key, n = dimension), transposed: (keys +0, dims +0), (+8, +0), (+0, +8), (+8, +8) */
    const uint32_t vaddr = fa_smem(vs + ((mi & 1) * 8 + mr) * LD + (mi >> 1) * 8);
#pragma unroll
    for (int kk = 0; kk < FA_KEYS / 16; kk++) {
#pragma unroll
        for (int np = 0; np < HD / 16; np++) {
            uint32_t b[4];
            fa_ldsm4_t(vaddr + (uint32_t)(kk * 16 * LD + np * 16) * 2u, b);
            fa_mma(o[2 * np], pa[kk], b[0], b[1]);
            fa_mma(o[2 * np + 1], pa[kk], b[2], b[3]);
        }
    }
}

/* Warp 0 finds the block's next sequence (the smallest id above `after`
 * among its tokens, INT_MAX when none) and that sequence's last position. */
__device__ __forceinline__ void fa_next_seq(const flash_args &a, int t0, int n_tok_blk, int after, int lane,
                                            int &seq, int &end)
{
    int sq = INT_MAX;
    for (int u = lane; u < n_tok_blk; u += 32) {
        const int s = a.seq[t0 + u];
        if (s > after && s < sq) sq = s;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sq = min(sq, __shfl_xor_sync(0xffffffffu, sq, o));
    int e = -1;
    for (int u = lane; u < n_tok_blk; u += 32)
        if (a.seq[t0 + u] == sq) e = max(e, a.pos[t0 + u]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) e = max(e, __shfl_xor_sync(0xffffffffu, e, o));
    seq = sq, end = e;
}

template <int HD, int G>
__global__ void __launch_bounds__(FA_THREADS) k_flash(const flash_args a)
{
    constexpr int LD = HD + 8, TOK = FA_ROWS / G, STAGE = FA_KEYS * LD;
    extern __shared__ uint4 fa_dyn[];
    __half *ks = (__half *)fa_dyn; /* [2][FA_KEYS][LD] */
    __half *vs = ks + 2 * STAGE;   /* [2][FA_KEYS][LD] */
    __shared__ int pass_seq, pass_end;
    kc_pdl_trigger();
    kc_pdl_wait();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, quad = lane & 3;
    const int t0 = (int)(gridDim.x - 1 - blockIdx.x) * TOK, g = blockIdx.y;
    const int n_tok_blk = min(TOK, a.n_tok - t0);
    const int h0 = (a.kv_begin + g) * a.group - a.head_begin; /* first local query head of the group */
    int row_t[2], row_h[2], row_pos[2], row_seq[2];
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = warp * 16 + (lane >> 2) + 8 * i;
        row_t[i] = t0 + r / G, row_h[i] = h0 + r % G;
        const bool in = row_t[i] < a.n_tok;
        row_pos[i] = in ? a.pos[row_t[i]] : -1;
        row_seq[i] = in ? a.seq[row_t[i]] : -1;
        const float *qr = a.q + ((size_t)row_t[i] * a.H + row_h[i]) * HD + 2 * quad;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const float2 v = in ? *(const float2 *)(qr + kk * 16 + c * 8) : make_float2(0.0f, 0.0f);
                qa[kk][i + 2 * c] = fa_pack(v.x, v.y);
            }
        }
    }
    float o[HD / 8][4], m[2] = { -INFINITY, -INFINITY }, l[2] = { 0.0f, 0.0f };
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    const size_t kvd = (size_t)a.KV * HD;
    for (int after = -1;;) {
        if (warp == 0) {
            int sq, end;
            fa_next_seq(a, t0, n_tok_blk, after, lane, sq, end);
            if (lane == 0) pass_seq = sq, pass_end = end;
        }
        __syncthreads();
        const int sq = pass_seq, end = pass_end;
        __syncthreads(); /* read before warp 0 writes the next pass's */
        if (sq == INT_MAX) break;
        after = sq;
        const int lim[2] = { row_seq[0] == sq ? row_pos[0] : -1, row_seq[1] == sq ? row_pos[1] : -1 };
        int wlim = max(lim[0], lim[1]); /* the warp's last key in this pass */
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) wlim = max(wlim, __shfl_xor_sync(0xffffffffu, wlim, o2));
        const __half *kb = a.kc + (size_t)sq * a.n_ctx * kvd + (size_t)g * HD;
        const __half *vb = a.vc + (size_t)sq * a.n_ctx * kvd + (size_t)g * HD;
        const int n_tiles = end / FA_KEYS + 1;
        fa_load_tile<HD>(ks, vs, kb, vb, kvd, 0, end, tid);
        fa_cp_commit();
        for (int it = 0; it < n_tiles; it++) {
            const int st = it & 1;
            if (it + 1 < n_tiles) {
                fa_load_tile<HD>(ks + (st ^ 1) * STAGE, vs + (st ^ 1) * STAGE, kb, vb, kvd, (it + 1) * FA_KEYS, end,
                                 tid);
                fa_cp_commit();
                fa_cp_wait<1>();
            } else {
                fa_cp_wait<0>();
            }
            __syncthreads();
            if (it * FA_KEYS <= wlim)
                fa_tile<HD>(ks + st * STAGE, vs + st * STAGE, it * FA_KEYS, lim, qa, o, m, l, a.scale_log2, lane);
            __syncthreads(); /* the stage is refilled by the next iteration's copies */
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        if (row_t[i] >= a.n_tok) continue;
        const float inv = 1.0f / l[i];
        float *orow = a.out + ((size_t)row_t[i] * a.H + row_h[i]) * HD + 2 * quad;
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
            *(float2 *)(orow + n * 8) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    }
}

typedef void (*flash_kernel)(const flash_args);

template <int HD>
static flash_kernel fa_pick_g(int G)
{
    switch (G) {
    case 1: return k_flash<HD, 1>;
    case 2: return k_flash<HD, 2>;
    case 4: return k_flash<HD, 4>;
    case 8: return k_flash<HD, 8>;
    default: return NULL;
    }
}

static flash_kernel fa_pick(int hd, int G)
{
    switch (hd) {
    case 64: return fa_pick_g<64>(G);
    case 128: return fa_pick_g<128>(G);
    default: return NULL;
    }
}

static bool fa_aligned(const void *p, uintptr_t n)
{
    return ((uintptr_t)p & (n - 1)) == 0;
}

bool kc_flash_takes(const struct kcuda_attn_shape *s, int64_t n_tok, const float *d_q, const void *d_k_cache,
                    const void *d_v_cache, const float *d_out)
{
    const int G = s->n_head / (s->n_head_kv ? s->n_head_kv : 1);
    return s->kv_type == KCUDA_F16 && n_tok >= FA_MIN_TOK && G * s->n_head_kv == s->n_head &&
           fa_pick(s->head_dim, G) && fa_aligned(d_k_cache, 16) && fa_aligned(d_v_cache, 16) &&
           fa_aligned(d_q, 8) && fa_aligned(d_out, 8);
}

int kc_flash_attention(struct kcuda *k, const struct kcuda_attn_shape *s, int64_t n_tok, const float *d_q,
                       const void *d_k_cache, const void *d_v_cache, const int32_t *d_pos, const int32_t *d_seq,
                       float *d_out)
{
    const int G = s->n_head / s->n_head_kv, tok = FA_ROWS / G;
    const flash_kernel kern = fa_pick(s->head_dim, G);
    TT_ASSERT(kern && n_tok > 0 && n_tok <= INT_MAX - tok);
    const size_t smem = 2u * 2u * FA_KEYS * (size_t)(s->head_dim + 8) * sizeof(__half);
    KC_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const flash_args a = { s->n_head, s->n_head_kv, s->group, s->head_begin, s->kv_begin, s->n_ctx, (int)n_tok,
                           1.4426950408889634f / sqrtf((float)s->head_dim), d_q, (const __half *)d_k_cache,
                           (const __half *)d_v_cache, d_pos, d_seq, d_out };
    const dim3 grid((unsigned)((n_tok + tok - 1) / tok), (unsigned)s->n_head_kv);
    KC_PROF_BEGIN(k);
    KC_LAUNCH_SMEM(k, kern, grid, dim3(FA_THREADS), smem, a);
    KC_PROF_END(k, "attention_flash");
    return 0;
}
