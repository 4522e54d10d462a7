/*
 * kcuda_impl.cuh: what the kcuda .cu files share: the context, the checked
 * call macros, the GGML block layouts as the device reads them, and small
 * device helpers (warp reductions, loads from 2-byte aligned blocks).
 */
#ifndef TT_KCUDA_IMPL_CUH
#define TT_KCUDA_IMPL_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#define _Noreturn __attribute__((noreturn)) /* base.h is C11; this is C++ */
#include "../base/base.h"
#undef _Noreturn
}
#include "kcuda.h"

#define KC_PROF_MAX 64
struct kc_prof_entry {
    const char *name;
    double ms;
    long calls;
};

struct kcuda {
    int device;
    bool prof;                 /* kcuda_profile on */
    cudaEvent_t prof_e0, prof_e1;
    int n_prof;
    struct kc_prof_entry prof_tab[KC_PROF_MAX];
    cudaStream_t stream;
    cublasHandle_t blas;
    char name[256];
    void *scratch; /* kcuda_linear's batch path */
    size_t scratch_bytes;
    bool pdl;                  /* programmatic dependent launch (sm_90) */
    bool mv_stage;             /* decode K-quant products stage activations in shared memory (TT_GPU_MV_STAGE) */
    int mv_bulk;               /* one token's regrouped K-quant products through the bulk-copy engine (sm_90,
                                  TT_GPU_MV_BULK: 0 none, 1 all that fit, 2 the large ones, 3 those and
                                  the ones of one wave, the default: kcuda_matvec.cu) */
    int bulk_smem[4];          /* dynamic shared memory allowed so far, per k_matvec_bulk instance */
    int bulk_per_sm[4], bulk_occ_smem[4]; /* its blocks per multiprocessor with bulk_occ_smem bytes */
    int dj_rows;               /* rows a decode down+join block (TT_GPU_DJ_ROWS, at most what its units
                                  allow; 0: the fewest that fit the grid in one wave, kcuda_moe.cu) */
    int dj_per_sm[2];          /* its Q4_K and Q6_K kernels' blocks per multiprocessor (0: not yet asked) */
    bool experts_bulk;         /* a decode token's Q4_K expert tiles through the bulk-copy engine:
                                  kcuda_set_experts_bulk */
    bool moe_prefetch;         /* grouped expert products prefetch their next tiles (TT_GPU_MOE_PREFETCH) */
    bool clusters;             /* thread block clusters (sm_90) */
    int attn_cluster;          /* blocks per KV head of the decode attention's clusters (sm_90: 8 or 16; 0: the
                                  split kernels joined through global memory): kcuda_set_attn_cluster */
    const void *attn_cluster_ok; /* the attention kernel last found to fit such clusters on this GPU */
    int attn_cl_threads;       /* threads of such a cluster block: kcuda_set_attn_cluster_threads */
    int router_cluster;        /* blocks per token of the fused MoE router's clusters (sm_90: 8 or 16; 0: the
                                  blocks joined through global memory): kcuda_set_router_cluster */
    const void *router_cluster_ok; /* the router kernel last found to fit them */
    int router_cluster_smem;   /* ... with this much dynamic shared memory */
    int n_sm;                  /* multiprocessors */
};

struct kcuda_graph {
    cudaGraphExec_t exec;
};

/* Report a failed CUDA call: "file:line: call failed: error string (name)". */
int kcuda_fail_cuda(cudaError_t err, const char *call, const char *file, int line);
int kcuda_fail_blas(cublasStatus_t st, const char *call, const char *file, int line);

/* cuBLAS, loaded with dlopen when the first context is created (a GPU is
 * there), not linked: linking maps hundreds of MB of library into every
 * tutti process, CPU-only runs included. */
struct kcuda_blas_api {
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                              const void *, const void *, cudaDataType, int, const void *,
                              cudaDataType, int, const void *, void *, cudaDataType, int,
                              cublasComputeType_t, cublasGemmAlgo_t);
    decltype(&cublasGetStatusString) status_string;
};
extern struct kcuda_blas_api kcuda_blas;

/* Check a CUDA runtime call; on failure return the TT_E* code from the
 * enclosing function. */
#define KC_CHECK(call)                                                              \
    do {                                                                            \
        cudaError_t kc_err_ = (call);                                               \
        if (kc_err_ != cudaSuccess) return kcuda_fail_cuda(kc_err_, #call, __FILE__, __LINE__); \
    } while (0)
#define KC_CHECK_BLAS(call)                                                         \
    do {                                                                            \
        cublasStatus_t kc_st_ = (call);                                             \
        if (kc_st_ != CUBLAS_STATUS_SUCCESS)                                        \
            return kcuda_fail_blas(kc_st_, #call, __FILE__, __LINE__);              \
    } while (0)
/* After a kernel launch: configuration errors show here, faults at kcuda_sync. */
#define KC_CHECK_LAUNCH() KC_CHECK(cudaGetLastError())

/* Programmatic dependent launch (Hopper): a kernel launched with kc_launch
 * may start while the previous kernel on the stream is finishing. Every
 * kernel therefore calls kc_pdl_wait() before it reads anything an earlier
 * kernel wrote or writes anything an earlier kernel reads, and
 * kc_pdl_trigger() to let the next kernel start its own launch early. Both
 * are no-ops before sm_90 and when the launch had no PDL attribute. */
__device__ __forceinline__ void kc_pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void kc_pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/* The shared-memory address of p (a pointer into this block's shared memory). */
__device__ __forceinline__ uint32_t kc_smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* Bulk copies into shared memory (sm_90): a barrier at shared address bar
 * (kc_smem_addr) initialised for one arrival, made visible to the copy
 * engine; the bytes its next phase expects (the arrival); a copy of bytes
 * (a multiple of 16, both ends 16-byte aligned) completing on it. */
__device__ __forceinline__ void kc_mbar_init(uint32_t bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar));
#endif
}
__device__ __forceinline__ void kc_mbar_init_fence()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void kc_mbar_expect(uint32_t bar, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void kc_bulk_copy(void *dst, const void *src, uint32_t bytes, uint32_t bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(kc_smem_addr(dst)), "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
#endif
}
/* Spin until the barrier has completed the phase of the given parity (its
 * copies landed). */
__device__ __forceinline__ void kc_mbar_wait(uint32_t bar, uint32_t parity)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
#endif
}

/* Thread block clusters (sm_90): *p in block `rank` of this cluster (p in
 * this block's shared memory), read or written through distributed shared
 * memory, and the cluster barrier's two halves (every thread of every block
 * of the cluster takes part; arrive releases this thread's writes, wait
 * acquires the others'). */
__device__ __forceinline__ uint32_t kc_cluster_addr(const void *p, int rank)
{
    uint32_t remote = kc_smem_addr(p);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(kc_smem_addr(p)), "r"(rank));
#endif
    return remote;
}
__device__ __forceinline__ float kc_cluster_load(const float *p, int rank)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(kc_cluster_addr(p, rank)) : "memory");
    return v;
#else
    return *p;
#endif
}
__device__ __forceinline__ void kc_cluster_store(float *p, int rank, float v)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(kc_cluster_addr(p, rank)), "f"(v) : "memory");
#else
    *p = v;
#endif
}
__device__ __forceinline__ void kc_cluster_arrive()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
/* An arrive that orders nothing: for a barrier that only keeps every block's
 * shared memory alive until the others are done reading it (their loads
 * have completed: the values were used), so no fence waits on this block's
 * global stores. */
__device__ __forceinline__ void kc_cluster_arrive_relaxed()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void kc_cluster_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

/* Whether the GPU can hold a cluster of cs blocks of kern, `threads` each
 * with `smem` bytes of dynamic shared memory; allows the sizes that need
 * the kernel's permission (clusters above 8 blocks, shared memory above
 * 48 KiB) on the way. */
template <typename... KArgs>
static bool kc_cluster_fits(void (*kern)(KArgs...), int cs, int threads, size_t smem)
{
    if ((cs > 8 && cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) ||
        (smem > (48u << 10) &&
         cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)) {
        cudaGetLastError();
        return false;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)cs);
    cfg.blockDim = dim3((unsigned)threads);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)cs;
    attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int n = 0;
    if (cudaOccupancyMaxActiveClusters(&n, kern, &cfg) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return n >= 1;
}

/* Launch on the context's stream, with PDL when the context allows it,
 * `smem` bytes of dynamic shared memory and clusters of `cluster` blocks
 * along x (1: none). */
template <typename... KArgs, typename... Args>
static inline cudaError_t kc_launch_cluster(struct kcuda *k, void (*kern)(KArgs...), dim3 grid, dim3 block,
                                            size_t smem, unsigned cluster, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = k->stream;
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (k->pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n++].val.clusterDim.z = 1;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kern, ((KArgs)args)...);
}
#define KC_LAUNCH(k, kern, grid, block, ...) KC_CHECK(kc_launch_cluster((k), kern, (grid), (block), 0, 1, __VA_ARGS__))
#define KC_LAUNCH_SMEM(k, kern, grid, block, smem, ...) \
    KC_CHECK(kc_launch_cluster((k), kern, (grid), (block), (smem), 1, __VA_ARGS__))

/* Profiling brackets around a kernel launch (kcuda_profile). */
void kc_prof_end(struct kcuda *k, const char *name);
#define KC_PROF_BEGIN(k)                                                  \
    do {                                                                  \
        if ((k)->prof) cudaEventRecord((k)->prof_e0, (k)->stream);        \
    } while (0)
#define KC_PROF_END(k, name)                                              \
    do {                                                                  \
        if ((k)->prof) kc_prof_end((k), (name));                          \
    } while (0)

/* ---- GGML blocks ---- */
#define QK4_0 32
#define QK8_0 32
#define QK_K 256
struct blk_q4_0 {
    __half d;
    uint8_t qs[16];
};
struct blk_q8_0 {
    __half d;
    int8_t qs[32];
};
struct blk_q4_K {
    __half d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
};
struct blk_q5_K {
    __half d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
};
struct blk_q6_K {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    __half d;
};
static_assert(sizeof(blk_q4_0) == 18, "q4_0");
static_assert(sizeof(blk_q8_0) == 34, "q8_0");
static_assert(sizeof(blk_q4_K) == 144, "q4_K");
static_assert(sizeof(blk_q5_K) == 176, "q5_K");
static_assert(sizeof(blk_q6_K) == 210, "q6_K");
/* KCUDA_LAYOUT_Q6_K_GROUPS (kcuda.h): blocks and bytes of one group, and
 * where its scale and d planes start. */
#define Q6G_BLOCKS 8
#define Q6G_BYTES (Q6G_BLOCKS * 210)
#define Q6G_SCALES 1536
#define Q6G_D 1664
/* KCUDA_LAYOUT_Q4_K_GROUPS: blocks and bytes of one group, where its header
 * plane starts. */
#define Q4G_BLOCKS 8
#define Q4G_BYTES (Q4G_BLOCKS * 144)
#define Q4G_HDR 1024

/* Elements per block and bytes per block of a stored type (0: unknown). */
static inline int kc_block_elems(int type)
{
    switch (type) {
    case KCUDA_F32: case KCUDA_F16: case KCUDA_BF16: return 1;
    case KCUDA_Q4_0: case KCUDA_Q8_0: return 32;
    case KCUDA_Q4_K: case KCUDA_Q5_K: case KCUDA_Q6_K: case KCUDA_Q6_K_GROUPS: case KCUDA_Q4_K_GROUPS: return 256;
    default: return 0;
    }
}
static inline size_t kc_block_bytes(int type)
{
    switch (type) {
    case KCUDA_F32: return 4;
    case KCUDA_F16: case KCUDA_BF16: return 2;
    case KCUDA_Q4_0: return 18;
    case KCUDA_Q8_0: return 34;
    case KCUDA_Q4_K: case KCUDA_Q4_K_GROUPS: return 144;
    case KCUDA_Q5_K: return 176;
    case KCUDA_Q6_K: case KCUDA_Q6_K_GROUPS: return 210;
    default: return 0;
    }
}
/* The activation type a weight type's products take. */
static inline int kc_vec_dot_type(int type)
{
    switch (type) {
    case KCUDA_Q4_0: case KCUDA_Q8_0: return KCUDA_Q8_0;
    case KCUDA_Q4_K: case KCUDA_Q5_K: case KCUDA_Q6_K: return KCUDA_Q8_K;
    default: return type;
    }
}

static inline unsigned kc_blocks(int64_t n, int per)
{
    return (unsigned)((n + per - 1) / per);
}

/* Scale and min of sub-block j of a Q4_K/Q5_K block (quant.h's tt_q4_K_scale_min). */
__device__ __forceinline__ void kc_scale_min(int j, const uint8_t *s, int &sc, int &m)
{
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* ---- reductions ---- */
__device__ __forceinline__ float kc_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double kc_warp_sum_d(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float kc_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ int8_t kc_clamp_i8(int v) { return (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v); }

/* Element `second` (0: first, 1: second) of the pair (x0, x1) rotated by
 * the angle whose cosine and sine are cc and ss, rounded as the CPU
 * engine's RoPE: the one formula of k_rope_store and of the q/k/v
 * products' epilogue (kcuda_matvec.cu), which must agree bit for bit. */
__device__ __forceinline__ float kc_rope_elem(float x0, float x1, float cc, float ss, bool second)
{
    return second ? __fadd_rn(__fmul_rn(x0, ss), __fmul_rn(x1, cc)) : __fsub_rn(__fmul_rn(x0, cc), __fmul_rn(x1, ss));
}

/* Q8_K of one 256-element block held by a warp, 8 consecutive elements v
 * per lane (lane_on: the lane's 8 exist) from element j0 on, as quant.c's
 * quantizer: the first element of largest magnitude is max, q =
 * rint(-127 / max * x), d = 1 / (-127 / max). Writes the lane's 8 levels
 * at dr + j0 and (lane 0) the block's d at ((float *)(dr + n))[j0 / 256],
 * n the row's length. */
__device__ __forceinline__ void kc_q8k_warp(const float v[8], bool lane_on, int j0, uint8_t *dr, int n)
{
    const int lane = threadIdx.x & 31;
    float amax = 0.0f, mx = 0.0f;
    int at = 1 << 30;
    if (lane_on) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            if (fabsf(v[i]) > amax) {
                amax = fabsf(v[i]);
                mx = v[i];
                at = j0 + i;
            }
        }
    }
    /* the first element of largest magnitude, over the warp */
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
    if (!lane_on) return;
    union { int8_t q[8]; uint2 u; } pk;
    if (amax == 0.0f) {
        pk.u = make_uint2(0, 0);
    } else {
        const float iscale = -127.0f / mx;
#pragma unroll
        for (int i = 0; i < 8; i++) pk.q[i] = kc_clamp_i8(__float2int_rn(iscale * v[i]));
    }
    *(uint2 *)(dr + j0) = pk.u;
    if (lane == 0) ((float *)(dr + n))[j0 / 256] = amax == 0.0f ? 0.0f : 1.0f / (-127.0f / mx);
}

/* Eight bytes at a 2-byte aligned address as two words, from three aligned
 * 32-bit loads (the last may read up to 2 bytes past the 8: device weight
 * buffers are padded by KCUDA_WEIGHT_PAD). */
__device__ __forceinline__ void kc_load8_a2(const uint8_t *p, uint32_t &w0, uint32_t &w1)
{
    const uintptr_t a = (uintptr_t)p;
    const uint32_t *q = (const uint32_t *)(a & ~(uintptr_t)3);
    const unsigned sh = (unsigned)(a & 3) * 8u;
    const uint32_t x0 = __ldg(q), x1 = __ldg(q + 1), x2 = __ldg(q + 2);
    w0 = __funnelshift_r(x0, x1, sh);
    w1 = __funnelshift_r(x1, x2, sh);
}
/* 16 bytes at a 2-byte aligned address as four words. */
__device__ __forceinline__ void kc_load16_a2(const uint8_t *p, uint32_t w[4])
{
    const uintptr_t a = (uintptr_t)p;
    const uint32_t *q = (const uint32_t *)(a & ~(uintptr_t)3);
    const unsigned sh = (unsigned)(a & 3) * 8u;
    uint32_t x[5];
#pragma unroll
    for (int i = 0; i < 5; i++) x[i] = __ldg(q + i);
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = __funnelshift_r(x[i], x[i + 1], sh);
}

/* SwiGLU with separate row strides (kcuda_misc.cu), for kcuda_gemm.cu. */
int kcuda_swiglu_ld(struct kcuda *k, float *d_a, int64_t lda, const float *d_b, int64_t ldb,
                    int64_t n_tok, int64_t n);

/* Causal flash attention on the tensor cores for prompt batches
 * (kcuda_flash.cu), kcuda_attention's contract without the split scratch:
 * kc_flash_takes says whether it takes this call (F16 cache, head size 64
 * or 128, 1/2/4/8 query heads per KV head, enough tokens, aligned
 * buffers); kc_flash_attention runs it. */
bool kc_flash_takes(const struct kcuda_attn_shape *s, int64_t n_tok, const float *d_q, const void *d_k_cache,
                    const void *d_v_cache, const float *d_out);
int kc_flash_attention(struct kcuda *k, const struct kcuda_attn_shape *s, int64_t n_tok, const float *d_q,
                       const void *d_k_cache, const void *d_v_cache, const int32_t *d_pos, const int32_t *d_seq,
                       float *d_out);

#endif
