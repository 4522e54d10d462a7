/*
 * kcuda: the CUDA kernels of the forward pass, behind a plain C header.
 *
 * One .cu file per op family:
 *   kcuda_core.cu    context (device, stream, cuBLAS handle), memory, copies, graphs,
 *                    the checked-call machinery and a device bandwidth probe
 *   kcuda_quant.cu   activation conversion (Q8_0, Q8_K, F16, BF16, F32), fused with RMSNorm
 *   kcuda_matvec.cu  quantized matrix-vector products for decode (dp4a on the GGML blocks),
 *                    also for stacked experts picked on the device
 *   kcuda_gemm.cu    matrix-matrix products for prompt batches: cuBLAS on dequantized F16 tiles
 *   kcuda_attn.cu    RoPE, per-head RMSNorm, KV-cache store, attention split over keys
 *   kcuda_flash.cu   attention of prompt batches on the tensor cores (causal, flash-style)
 *   kcuda_misc.cu    SwiGLU, bias, row gathers, reductions
 *   kcuda_moe.cu     MoE routing (alone or fused with the router product), slot
 *                    plans, grouped expert products on tensor cores, weighted joins
 *
 * Numerics follow the CPU engine (engine_ops.c), which follows llama.cpp:
 * activations are converted to the weight type's vec_dot type before a
 * product, with the same rounding as quant.c (so the device and the CPU
 * produce identical Q8 activations); RMSNorm sums squares in double; with an
 * F16 KV cache queries are rounded to F16. Results then differ from the CPU
 * only by float summation order, except in kcuda_linear's batch path, which
 * rounds the (already Q8-rounded) activations and the dequantized weights to
 * F16 for the tensor cores.
 *
 * Every pointer argument named d_* or described as "device" is device memory.
 * All kernels run asynchronously on the context's stream in call order;
 * kcuda_sync() waits and reports any asynchronous fault. Functions return 0
 * or a negative TT_E* code (base.h) with a detail naming the failed CUDA or
 * cuBLAS call, its file:line and the library's own error string
 * (TT_ENOMEM for out-of-memory, TT_EDEVICE otherwise).
 *
 * Device activation rows (kcuda_act_row_bytes): F32, F16 and BF16 rows are
 * plain arrays; Q8_0 and Q8_K rows hold n int8 values followed by one float
 * scale per block of 32 (Q8_0) or 256 (Q8_K). Q8_K block sums are not
 * stored: the kernels recompute them with dp4a (storing them and reading
 * them instead measured no faster on the H200: 8B-shape decode 325.7-326.7
 * vs 328.1 tok/s).
 */
#ifndef TT_KCUDA_H
#define TT_KCUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GGML type ids, equal to enum tt_type (quant.h; engine_cuda.c asserts it). */
enum kcuda_type {
    KCUDA_F32 = 0,
    KCUDA_F16 = 1,
    KCUDA_Q4_0 = 2,
    KCUDA_Q8_0 = 8,
    KCUDA_Q4_K = 12,
    KCUDA_Q5_K = 13,
    KCUDA_Q6_K = 14,
    KCUDA_Q8_K = 15, /* activations only */
    KCUDA_BF16 = 30,
};

/* Longest head the attention kernels take, and the most key splits. */
#define KCUDA_HEAD_DIM_MAX 256
#define KCUDA_ATTN_SPLIT_MAX 32
/* Up to this many tokens a product streams the weights once per 8 tokens
 * (matrix-vector kernels: exact integer dots, as the CPU); above it
 * kcuda_linear uses the tensor cores on F16 operands. */
#define KCUDA_MATVEC_TOK_MAX 128
/* Device weights must be followed by this many readable bytes: the kernels
 * read 2-byte aligned blocks with aligned 4-byte loads. */
#define KCUDA_WEIGHT_PAD 64
/* Tokens per expert tile in kcuda_moe_plan / kcuda_matvec_experts. */
#define KCUDA_MOE_TILE 8
/* Size of one tile record: expert id, slot count, KCUDA_MOE_TILE slots. */
#define KCUDA_MOE_TILE_INTS (2 + KCUDA_MOE_TILE)
/* Slots per group in kcuda_moe_group / kcuda_moe_gemm (prompt batches), and
 * the size of a group record: expert id, first index into the slot order,
 * slot count, unused. */
#define KCUDA_MOE_GROUP 32
#define KCUDA_MOE_GROUP_INTS 4

struct kcuda;       /* one device, one stream, one cuBLAS handle */
struct kcuda_graph; /* a captured sequence of kernels */

/* ---- context and memory (kcuda_core.cu) ---- */

/* Usable CUDA devices; 0 when there is no driver, no device or any error
 * (no message: callers use it to decide whether to try). */
int kcuda_device_count(void);
/* Take device `device`: a stream, a cuBLAS handle, a scratch pool of
 * `scratch_bytes` for the batch products. Errors: TT_EDEVICE, TT_ENOMEM. */
int kcuda_create(struct kcuda **out, int device, size_t scratch_bytes);
void kcuda_destroy(struct kcuda *k); /* NULL is fine; frees the scratch, not user buffers */
const char *kcuda_device_name(const struct kcuda *k);
/* The context's stream as a cudaStream_t, for libraries that queue work on
 * it (NCCL in comm_nccl.c). */
void *kcuda_stream(struct kcuda *k);
int kcuda_mem_info(struct kcuda *k, size_t *free_bytes, size_t *total_bytes);

/* Device memory: *ptr = NULL on failure, with a TT_ENOMEM detail that says
 * what was being allocated, how much, and how much is free. */
int kcuda_malloc(struct kcuda *k, void **ptr, size_t bytes, const char *what);
void kcuda_free(void *ptr); /* NULL is fine */
/* Page-locked host memory, for copies that overlap and for graphs. */
int kcuda_host_alloc(void **ptr, size_t bytes);
void kcuda_host_free(void *ptr);

/* Asynchronous copies on the context's stream (host memory may be pageable;
 * then the call returns when the source may be reused). */
int kcuda_upload(struct kcuda *k, void *d_dst, const void *src, size_t bytes);
int kcuda_download(struct kcuda *k, void *dst, const void *d_src, size_t bytes);
/* Copy up to KCUDA_GATHER_MAX pieces from page-locked host memory
 * (kcuda_host_alloc) to the device in one kernel that reads the host memory
 * directly: captured in a graph, it copies what the host buffers hold at
 * each launch, so a decode step's inputs need no copy calls of their own. */
#define KCUDA_GATHER_MAX 4
int kcuda_upload_gather(struct kcuda *k, int n, void *const *d_dst, const void *const *h_src,
                        const size_t *bytes);
/* Copy `rows` rows of `width` bytes with the given pitches (weight slices). */
int kcuda_upload_2d(struct kcuda *k, void *d_dst, size_t dpitch, const void *src, size_t spitch,
                    size_t width, size_t rows);
int kcuda_memset(struct kcuda *k, void *d_ptr, int value, size_t bytes);
/* Wait for everything queued; reports asynchronous kernel faults. */
int kcuda_sync(struct kcuda *k);

/* Capture the kernels queued between begin and end into a graph (no copies
 * to pageable memory and no kcuda_sync in between). */
int kcuda_graph_begin(struct kcuda *k);
int kcuda_graph_end(struct kcuda *k, struct kcuda_graph **out);
int kcuda_graph_launch(struct kcuda *k, struct kcuda_graph *g);
void kcuda_graph_destroy(struct kcuda_graph *g);

/* Per-kernel timing, for diagnosis (TT_GPU_PROFILE=1 in the engine): while
 * on, every kcuda call waits for its kernels and adds their device time to a
 * table under the kernel's name; the report prints the table to stderr with
 * times divided by `per` (e.g. tokens) and clears it. Not inside graphs. */
void kcuda_profile(struct kcuda *k, bool on);
void kcuda_profile_report(struct kcuda *k, const char *title, double per);
/* Device time of `reps` launches of a graph, in ms each (graph already captured). */
double kcuda_graph_time_ms(struct kcuda *k, struct kcuda_graph *g, int reps);

/* Device-to-device copy bandwidth in GB/s (bytes read + bytes written per
 * second), best of a few 2 GiB copies; 0 on error. */
double kcuda_copy_bandwidth_gbs(struct kcuda *k);

/* ---- activations (kcuda_quant.cu) ---- */

/* Bytes of one device activation row of n elements of `type` (F32, F16,
 * BF16, Q8_0, Q8_K), a multiple of 16. */
size_t kcuda_act_row_bytes(int type, int64_t n);
/* For each of n_tok rows: y = x * rsqrt(mean(x^2) + eps) * w (the sum in
 * double, as ops_rmsnorm), or y = x when w is NULL and eps < 0; then
 * d_dst row = y converted to `type` (rows dst_stride bytes apart), and, if
 * d_yf is not NULL, d_yf row = y as floats ([n_tok][n]). x rows are ld
 * floats apart. */
int kcuda_norm_convert(struct kcuda *k, int type, const float *d_x, int64_t ld, int64_t n_tok,
                       int64_t n, const float *d_w, float eps, float *d_yf, void *d_dst,
                       size_t dst_stride);
/* Several conversions of the same rows in one launch: row t of output z
 * (z < n_out <= KCUDA_CONVERT_MAX) in types[z] at d_dst[z] + t *
 * dst_stride[z]; d_yf as above. */
#define KCUDA_CONVERT_MAX 3
int kcuda_norm_convert_multi(struct kcuda *k, int n_out, const int *types, void *const *d_dst,
                             const size_t *dst_stride, const float *d_x, int64_t ld, int64_t n_tok,
                             int64_t n, const float *d_w, float eps, float *d_yf);
/* Plain conversion: kcuda_norm_convert without the norm. */
int kcuda_convert(struct kcuda *k, int type, const float *d_x, int64_t ld, int64_t n_tok,
                  int64_t n, void *d_dst, size_t dst_stride);
/* Dequantize activation rows (any activation type) to F16 [n_tok][n]. */
int kcuda_act_to_f16(struct kcuda *k, int type, const void *d_act, size_t act_stride,
                     int64_t n_tok, int64_t n, void *d_out_f16);
/* Dequantize rows [r0, r0 + n_rows) of a weight (any stored type, or
 * KCUDA_Q6_K_GROUPS, KCUDA_Q4_K_GROUPS: kcuda_weight_format) to F16, out[n_rows][n]. */
int kcuda_dequant_f16(struct kcuda *k, int type, const void *d_w, size_t row_stride, int64_t r0,
                      int64_t n_rows, int64_t n, void *d_out_f16);
/* Rows to floats (as kcuda_dequant_f16): out[n_rows][n]; for tests and checks. */
int kcuda_dequant_f32(struct kcuda *k, int type, const void *d_w, size_t row_stride,
                      int64_t n_rows, int64_t n, float *d_out);

/* ---- products (kcuda_matvec.cu, kcuda_gemm.cu) ---- */

enum kcuda_out_mode {
    KCUDA_OUT_STORE,  /* out = W.a (+ bias) */
    KCUDA_OUT_ADD,    /* out += W.a (+ bias): a residual add fused into the product */
    KCUDA_OUT_SWIGLU, /* out = silu(W.a) * (W2.a): gate and up in one pass */
    KCUDA_OUT_MODE_COUNT
};

/* How a weight's bytes are arranged on the device. */
enum kcuda_layout {
    KCUDA_LAYOUT_GGML,       /* the GGML blocks, as in the file */
    KCUDA_LAYOUT_Q6_K_GROUPS, /* Q6_K regrouped for coalesced loads (kcuda_upload_weight) */
    KCUDA_LAYOUT_Q4_K_GROUPS, /* Q4_K regrouped likewise */
    KCUDA_LAYOUT_COUNT
};
/* Type code of a Q6_K weight in KCUDA_LAYOUT_Q6_K_GROUPS, for
 * kcuda_dequant_f16/f32 (kcuda_weight_format gives it). Same bytes per row as
 * Q6_K; every row is a run of groups of 8 blocks (2048 weights, 1680 bytes):
 *   [1536 bytes: the group's 32 items of 64 weights, as 3 planes of 32
 *    16-byte chunks: low nibbles ql[64h+16j..] (plane 0), ql[64h+32+16j..]
 *    (plane 1), high bits qh[32h+16j..] (plane 2), for item i = 4b + 2h + j
 *    of block b of the group]
 *   [128 bytes: item i's 4 scales scales[8h + j + 2k], k = 0..3, at 4i]
 *   [16 bytes: block b's F16 d at 2b]
 * so the 32 lanes of a warp, one item each, read every plane with one
 * coalesced 16-byte load. */
#define KCUDA_Q6_K_GROUPS 270
/* Type code of a Q4_K weight in KCUDA_LAYOUT_Q4_K_GROUPS. Same bytes per
 * row as Q4_K; every row is a run of groups of 8 blocks (2048 weights, 1152
 * bytes):
 *   [1024 bytes: the group's 32 items of 64 weights, as 2 planes of 32
 *    16-byte chunks: qs[32g..32g+16) (plane 0) and qs[32g+16..32g+32)
 *    (plane 1) for item i = 4b + g of block b of the group]
 *   [128 bytes: block b's 16 header bytes (d, dmin, 12 scale bytes) at 16b]
 * so the lanes of a warp read both planes with coalesced 16-byte loads and
 * each block's header with one broadcast load. */
#define KCUDA_Q4_K_GROUPS 271

/* A weight on the device: n_out rows of n_in elements of `type`, rows
 * row_stride bytes apart, stacked experts expert_stride bytes apart, in
 * `layout` (zero: KCUDA_LAYOUT_GGML). */
struct kcuda_weight {
    const void *data;
    int type;
    int64_t n_in, n_out;
    size_t row_stride, expert_stride;
    int layout;
};

/* Upload expert `expert` of w (w->data already points at device memory of
 * the weight's full size plus KCUDA_WEIGHT_PAD) from host rows src_row_stride
 * bytes apart, and set w->layout: Q6_K and Q4_K weights whose rows hold
 * whole groups (n_in a multiple of 2048, 16-byte aligned rows and experts)
 * are regrouped into KCUDA_LAYOUT_Q6_K_GROUPS / KCUDA_LAYOUT_Q4_K_GROUPS
 * through the context's scratch (Q6_K: 5 coalesced loads per 64 weights in
 * the decode products instead of 19 unaligned ones; Q4_K: every load of a
 * warp coalesced, where the stored blocks' 16-byte halves interleave);
 * everything else is copied as stored. TT_GPU_REPACK=0 turns regrouping
 * off. Every expert of a weight gets the same layout (the engine uploads
 * stacked experts as stored: the MoE grouped products read Q4_K blocks
 * directly). Errors: TT_EDEVICE. */
int kcuda_upload_weight(struct kcuda *k, struct kcuda_weight *w, int64_t expert, const void *src,
                        size_t src_row_stride);
/* The type code kcuda_dequant_f16/f32 take for w: w->type, or
 * KCUDA_Q6_K_GROUPS / KCUDA_Q4_K_GROUPS for a regrouped weight. */
int kcuda_weight_format(const struct kcuda_weight *w);

/* out[t * ldo + r] (mode) W[r] . act[t] for r < n_out, t < n_tok, where act
 * rows (act_stride bytes apart) are already in W's vec_dot type. `w2` is
 * the up projection in KCUDA_OUT_SWIGLU mode (same type and shape), else
 * NULL. `bias` (n_out floats) or NULL. Picks the matrix-vector kernels for
 * n_tok <= KCUDA_MATVEC_TOK_MAX, else cuBLAS with F32 accumulation on F16
 * operands (BF16 for BF16 weights, F32 for F32 weights): quantized weights
 * are dequantized to F16 in tiles of rows in the context's scratch, and
 * Q8 activations expanded to F16, so the Q8 rounding of the CPU is kept. */
int kcuda_linear(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                 const void *d_act, size_t act_stride, int64_t n_tok, float *d_out, int64_t ldo,
                 const float *d_bias, enum kcuda_out_mode mode);
/* Scratch bytes kcuda_linear needs for n_tok tokens, n_in inputs and n_out
 * outputs (beside its weight tiles, at least KCUDA_TILE_BYTES). */
#define KCUDA_TILE_BYTES (64u << 20)
size_t kcuda_linear_scratch_bytes(int64_t n_tok, int64_t n_in, int64_t n_out);
/* Matrix-vector kernels only (n_tok <= 8). */
int kcuda_matvec(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                 const void *d_act, size_t act_stride, int64_t n_tok, float *d_out, int64_t ldo,
                 const float *d_bias, enum kcuda_out_mode mode);
/* Up to KCUDA_MULTI_MAX products of the same activations in one launch
 * (q, k and v): weights of one row length and of one type (n_tok <= 8),
 * or one token's products of two K-quant types, each type's weights
 * together (q and k in Q4_K, then v in Q6_K); outs[i] rows ldos[i] apart,
 * biases[i] or NULL. kcuda_matvec_multi_ok says whether the weights, in
 * that order, can take it; TT_EINVAL if not. */
#define KCUDA_MULTI_MAX 3
bool kcuda_matvec_multi_ok(const struct kcuda_weight *const *ws, int n_w, size_t act_stride, int64_t n_tok);
int kcuda_matvec_multi(struct kcuda *k, const struct kcuda_weight *const *ws, int n_w,
                       const void *d_act, size_t act_stride, int64_t n_tok, float *const *outs,
                       const int64_t *ldos, const float *const *biases);
/* The same with each weight's own activation rows (d_acts[i], act_strides[i]
 * bytes apart): one token's kinds may then read two activation types
 * (Q4_K q against Q8_K rows beside Q8_0 k and v against Q8_0 rows), and
 * three kinds take one launch too (Q4_K q, Q8_0 k, Q6_K v). */
bool kcuda_matvec_multi_acts_ok(const struct kcuda_weight *const *ws, int n_w, const size_t *act_strides,
                                int64_t n_tok);
int kcuda_matvec_multi_acts(struct kcuda *k, const struct kcuda_weight *const *ws, int n_w,
                            const void *const *d_acts, const size_t *act_strides, int64_t n_tok, float *const *outs,
                            const int64_t *ldos, const float *const *biases);
/* One decode token's q, k and v (ws[0..3), one launch as kcuda_matvec_multi
 * takes them) with kcuda_rope_store's work done as their rows are stored:
 * q and k rotated (adjacent pairs: llama's RoPE, no per-head norms), k and
 * v also stored in the F16 caches at position pos[0] of sequence seq[0].
 * outs[0..3): q, k, v rows (q rotated, k rotated, v as computed), the same
 * bits as the products then kcuda_rope_store. For what
 * kcuda_matvec_qkv_rope_ok takes (norms: the model has q/k norms); else
 * TT_EINVAL. */
struct kcuda_attn_shape;
bool kcuda_matvec_qkv_rope_ok(const struct kcuda_weight *const *ws, size_t act_stride,
                              const struct kcuda_attn_shape *s, bool norms);
int kcuda_matvec_qkv_rope(struct kcuda *k, const struct kcuda_weight *const *ws, const void *d_act,
                          size_t act_stride, float *const *outs, const float *const *biases,
                          const struct kcuda_attn_shape *s, const float *d_cs, const int32_t *d_pos,
                          const int32_t *d_seq, void *d_k_cache, void *d_v_cache);
/* Stacked experts chosen on the device. d_tiles holds up to max_tiles
 * records of KCUDA_MOE_TILE_INTS ints (kcuda_moe_plan): expert id, count
 * n <= KCUDA_MOE_TILE, then n slot ids; a record with expert < 0 ends the
 * list. For each slot s of a tile, out row s (mode) W_expert . act row
 * (s / act_div). `tile_tok` (1 or KCUDA_MOE_TILE) bounds the slots per tile
 * the kernel handles, so decode (one slot per tile) runs the narrow kernel. */
int kcuda_matvec_experts(struct kcuda *k, const struct kcuda_weight *w,
                         const struct kcuda_weight *w2, const int32_t *d_tiles, int max_tiles,
                         int tile_tok, const void *d_act, size_t act_stride, int act_div,
                         float *d_out, int64_t ldo, enum kcuda_out_mode mode);

/* ---- attention (kcuda_attn.cu) ---- */

struct kcuda_attn_shape {
    int n_head, n_head_kv;   /* heads computed here (query, key/value) */
    int head_dim, n_rot;
    int group;               /* query heads per KV head (whole model) */
    int head_begin, kv_begin; /* first local query / KV head in the whole model */
    bool neox;               /* rotate (i, i + n_rot/2) instead of (2i, 2i + 1) */
    int kv_type;             /* KCUDA_F16 or KCUDA_F32 */
    int n_ctx;               /* positions per sequence in the cache */
    float eps;               /* of the per-head norms */
};

/* For every token t: optional per-head RMSNorm of q and k (q_norm, k_norm
 * [head_dim] or NULL), RoPE with the angle table cs[t][n_rot] (cos, sin
 * pairs as ops_rope_table builds them), then k and v stored at position
 * pos[t] of sequence seq[t] in the layer's caches [n_seq][n_ctx][n_kv*hd].
 * q is [n_tok][n_head*hd], k and v [n_tok][n_kv*hd], all floats. */
int kcuda_rope_store(struct kcuda *k, const struct kcuda_attn_shape *s, int64_t n_tok, float *d_q,
                     float *d_k, const float *d_v, const float *d_q_norm, const float *d_k_norm,
                     const float *d_cs, const int32_t *d_pos, const int32_t *d_seq,
                     void *d_k_cache, void *d_v_cache);
/* Causal attention of each token's query heads over positions 0..pos[t] of
 * its sequence. Batches of 64+ tokens with an F16 cache and head size 64 or
 * 128 run on the tensor cores (kcuda_flash.cu; n_split, d_part and d_count
 * unused); the rest are split over keys into n_split parts (<=
 * KCUDA_ATTN_SPLIT_MAX) joined with their softmax maxima. d_part: scratch of
 * kcuda_attn_part_floats(...) floats; d_count: n_tok * n_head_kv ints,
 * zeroed once before the first call (the kernel leaves them at zero).
 * out [n_tok][n_head*hd]. Up to 8 query heads per KV head; head_dim a
 * multiple of 8 (F16 cache) or 4 (F32). d_q8k, where kcuda_attention_q8k
 * allows it (else NULL): the output rows also as Q8_K activation rows
 * (kcuda_act_row_bytes(KCUDA_Q8_K, n_head*hd) bytes apart), bit for bit
 * kcuda_convert's, written by the split kernels' joins (the tensor-core
 * path is then not taken). */
size_t kcuda_attn_part_floats(const struct kcuda_attn_shape *s, int64_t n_tok, int n_split);
bool kcuda_attention_q8k(const struct kcuda_attn_shape *s, int64_t n_tok);
int kcuda_attention(struct kcuda *k, const struct kcuda_attn_shape *s, int64_t n_tok, int n_split,
                    const float *d_q, const void *d_k_cache, const void *d_v_cache,
                    const int32_t *d_pos, const int32_t *d_seq, float *d_part, int *d_count,
                    float *d_out, void *d_q8k);

/* Decode attention (the split kernels' tokens) in clusters of cs blocks per
 * KV head that join in distributed shared memory: 8 or 16 (sm_90), or 0 for
 * parts joined through global memory. Returns what was set (0 where the GPU
 * has no clusters); the default is 16, and a launch falls back to smaller
 * clusters, then parts, where the GPU cannot hold them. At long contexts
 * parts spread the keys over more blocks (the engine switches, TT_GPU_ATTN_CLUSTER
 * and TT_GPU_ATTN_CLUSTER_POS). */
int kcuda_set_attn_cluster(struct kcuda *k, int cs);
/* Threads of each block of those clusters: 256 (the default; TT_GPU_ATTN_CL_THREADS)
 * or 128. Wider blocks walk twice the keys per tile, so a block takes half
 * as many tiles one after another (H200, MoE-12L at 512-640 positions:
 * 1,306 and 1,281 -> 1,349 and 1,346 tok/s; 8B 402.2 -> 409.0). Shapes
 * whose wider block's partials would not fit its static shared memory keep
 * 128. Returns what was set. */
int kcuda_set_attn_cluster_threads(struct kcuda *k, int nth);

/* ---- the rest (kcuda_misc.cu) ---- */

/* a[i] = silu(a[i]) * b[i] for n_tok rows of n, rows ld apart. */
int kcuda_swiglu(struct kcuda *k, float *d_a, const float *d_b, int64_t n_tok, int64_t n,
                 int64_t ld);
/* y[t][i] += bias[i]. */
int kcuda_add_bias(struct kcuda *k, float *d_y, const float *d_bias, int64_t n_tok, int64_t n,
                   int64_t ld);
/* y[i] += x[i]. */
int kcuda_add(struct kcuda *k, float *d_y, const float *d_x, int64_t n);
/* out[b] = the largest of x[64b .. 64b + 64) for b < ceil(n / 64) (NaN
 * ignored): what a sampler needs to skip most of a vocabulary's logits. */
int kcuda_block_max64(struct kcuda *k, const float *d_x, int64_t n, float *d_out);
/* A sampler's candidates on the device: the n_cand (<= KCUDA_TOP_CANDS) best
 * of n logits in the sampler's order (larger logit first, equal logits by
 * lower id), from the logits and their block maxima (kcuda_block_max64),
 * into d_out[0..n_cand) (same layout as the sampler's candidates); *d_count
 * = the number written (n_cand, or n when smaller), or -1 when the set
 * could not be found here (a NaN among the logits read, or so many equal
 * logits that they overflow the block's scratch): the caller then reads the
 * full logits. One block; no host sync, so it can be captured in a graph.
 * kcuda_top_cands_ok: whether n logits fit. */
#define KCUDA_TOP_CANDS 64
struct kcuda_cand {
    int32_t id;
    float logit;
};
bool kcuda_top_cands_ok(int64_t n);
int kcuda_top_cands(struct kcuda *k, const float *d_logits, int64_t n, const float *d_block_max, int n_cand,
                    struct kcuda_cand *d_out, int32_t *d_count);
/* Gather rows: out[i] = x[rows[i]] (n floats each). */
int kcuda_gather_rows(struct kcuda *k, const float *d_x, const int32_t *d_rows, int64_t n_rows,
                      int64_t n, float *d_out);
/* out[0] = sum of x[0..n) (in double, deterministic). */
int kcuda_sum_f32(struct kcuda *k, const float *d_x, int64_t n, float *d_out);

/* ---- mixture of experts (kcuda_moe.cu) ---- */

/* Router: for each token, softmax over n_expert logits, the top n_used by
 * probability (ties to the lower id) into sel[t][n_used] and their
 * probabilities into w (renormalized to sum 1 when `norm`, the sum clamped
 * as llama.cpp does), exactly as the CPU engine's route(). With d_tiles,
 * also the one-slot-per-tile records kcuda_moe_plan(tile_tok = 1) would
 * write (saves a launch per layer in decode). With d_local (n_expert ints:
 * each expert's index among the experts this rank computes, -1 for another
 * rank's), sel and the tiles hold those indices, and the plans, products
 * and joins below leave the -1 slots out: expert parallelism over GPU ranks,
 * whose partial joins are then summed over the ranks. */
int kcuda_moe_route(struct kcuda *k, const float *d_logits, int64_t n_tok, int n_expert,
                    int n_used, bool norm, int32_t *d_sel, float *d_w, int32_t *d_tiles, const int32_t *d_local);
/* The router's product and kcuda_moe_route in one launch: logits[t] =
 * W . x[t] (W: n_expert F32 rows of n_in, n_in a multiple of 4; x rows n_in
 * floats apart) into d_logits [n_tok][n_expert], then the routing as above.
 * d_count: n_tok ints, zeroed once before the first call (the kernel leaves
 * them at zero). TT_EUNSUPPORTED for other weight types. */
/* With rn, x holds the residual rows: the router RMS-norms them itself
 * (weights rn->w, rn->eps, as kcuda_norm_convert) and also writes the normed
 * rows to rn->yf (or not, NULL) and as Q8_K rows to rn->q8k, rn->q8k_stride
 * apart: the experts' activations without a launch of their own
 * (kcuda_moe_router_norm_ok: n_in a multiple of 256 the blocks cover). */
struct kcuda_router_norm {
    const float *w;
    float eps;
    float *yf;
    void *q8k;
    size_t q8k_stride;
};
bool kcuda_moe_router_norm_ok(const struct kcuda_weight *w);
int kcuda_moe_router(struct kcuda *k, const struct kcuda_weight *w, const float *d_x, int64_t n_tok,
                     int n_used, bool norm, float *d_logits, int *d_count, int32_t *d_sel, float *d_w,
                     int32_t *d_tiles, const int32_t *d_local, const struct kcuda_router_norm *rn);
/* The fused router's blocks in clusters of cs per token that join in
 * distributed shared memory: 8 or 16 (sm_90), or 0 for blocks joined
 * through global memory (a ticket). Returns what was set (0 where the GPU
 * has no clusters); the default is 16 (TT_GPU_ROUTER_CLUSTER), and a
 * launch falls back to smaller clusters, then the ticket, where the GPU
 * cannot hold them or a block's rows do not fit its shared memory. */
int kcuda_set_router_cluster(struct kcuda *k, int cs);
/* Group n_slots slots (token t's k-th choice is slot t*n_used + k) by
 * expert into the tile records kcuda_matvec_experts reads: with tile_tok = 1
 * one tile per slot, in slot order (n_slots records); otherwise up to
 * KCUDA_MOE_TILE slots of one expert per tile (kcuda_moe_max_tiles records,
 * the unused ones marked with expert -1). */
int kcuda_moe_max_tiles(int64_t n_slots, int n_expert);
int kcuda_moe_plan(struct kcuda *k, const int32_t *d_sel, int64_t n_slots, int n_expert,
                   int tile_tok, int32_t *d_tiles);
/* x[t] += sum over the token's slots in ascending expert order of
 * w[slot] * y[slot] (+ sigmoid(gate_sh . xn[t]) * ysh[t] when ysh is not
 * NULL): the CPU engine's expert join, then the residual add. */
int kcuda_moe_join(struct kcuda *k, float *d_x, const float *d_y, const int32_t *d_sel,
                   const float *d_w, int64_t n_tok, int n_used, int64_t n, const float *d_ysh,
                   const float *d_gate_sh, const float *d_xn);
/* Decode: the experts' down products and kcuda_moe_join in one launch:
 * x[t] += sum over token t's slots in ascending expert order of w[slot] *
 * (W_sel[slot] . act[slot]) (+ the shared expert's term as above), where
 * act rows are Q8_K (act_stride bytes apart) and W holds stacked Q4_K or
 * Q6_K experts in GGML's layout (n_out = n); the dots are the
 * matrix-vector kernels'. TT_EUNSUPPORTED for other weights (then
 * kcuda_matvec_experts and kcuda_moe_join). */
int kcuda_moe_down_join(struct kcuda *k, const struct kcuda_weight *w, const void *d_act, size_t act_stride,
                        float *d_x, const int32_t *d_sel, const float *d_w, int64_t n_tok, int n_used,
                        const float *d_ysh, const float *d_gate_sh, const float *d_xn);
/* Rows of one kcuda_moe_down_join block: 0 (the default; TT_GPU_DJ_ROWS
 * sets another) takes the fewest that fit the grid in one wave, rows > 0
 * at most that many, within what a block's units allow. Returns what was
 * set. */
int kcuda_set_down_join_rows(struct kcuda *k, int rows);
/* Whether a decode token's expert tiles of Q4_K weights in GGML's layout
 * (kcuda_matvec_experts with tile_tok 1) go through the bulk-copy engine:
 * each block's rows copied whole into shared memory once its tile names
 * the expert, few registers, one wave of blocks (sm_90; default on,
 * TT_GPU_EXPERTS_BULK=0 off), or the register kernel. Returns what was set
 * (false where the GPU has no bulk copies). */
bool kcuda_set_experts_bulk(struct kcuda *k, bool on);
/* Group n_slots slots by expert for kcuda_moe_gemm: d_order [n_slots]
 * receives the slot ids sorted by expert (in no fixed order within an
 * expert), d_groups kcuda_moe_max_groups records of KCUDA_MOE_GROUP_INTS
 * ints: expert, first index into d_order, count <= KCUDA_MOE_GROUP; the
 * unused ones have expert -1. */
int kcuda_moe_max_groups(int64_t n_slots, int n_expert);
int kcuda_moe_group(struct kcuda *k, const int32_t *d_sel, int64_t n_slots, int n_expert, int32_t *d_order,
                    int32_t *d_groups);
/* Grouped expert products on the tensor cores: for every slot s of every
 * group, out[s * ldo + r] = W_expert[r] . act[s / act_div] (KCUDA_OUT_STORE)
 * or silu(W . a) * (W2 . a) (KCUDA_OUT_SWIGLU; w2 of W's type and shape),
 * r < n_out. W holds n_expert stacked experts; act rows are F16, act_ld
 * elements apart (kcuda_act_to_f16 of the rows the CPU would use), n_in and
 * act_ld multiples of 8. Products use F16 weights and F32 sums, as
 * kcuda_linear's batch path. Q4_K, Q6_K and F16 weights in GGML's layout
 * are read as stored; other types and layouts are expanded to F16 in the
 * context's scratch (kcuda_weight_format), as many experts at a time as it
 * holds (TT_ENOMEM if not even one fits). */
int kcuda_moe_gemm(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                   int n_expert, const int32_t *d_groups, int max_groups, const int32_t *d_order,
                   const void *d_act_f16, int64_t act_ld, int act_div, float *d_out, int64_t ldo,
                   enum kcuda_out_mode mode);

#ifdef __cplusplus
}
#endif

#endif
