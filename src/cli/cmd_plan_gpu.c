/*
 * cmd_plan_gpu.c: a GPU measured as `tutti plan` and `tutti topo` describe
 * a rank, so that a machine whose engine runs on its GPU (CUDA builds run
 * every layer there by default) is planned with the GPU's figures, not the
 * CPU's. The same kernels the engine's decode and prompt steps run are
 * timed on matrices of the model's own shapes:
 *
 *   read_gbs       device-to-device copy bandwidth (kcuda_copy_bandwidth_gbs:
 *                  bytes read + written per second);
 *   bw_efficiency  one-token products (kcuda_matvec, captured in a graph as
 *                  decode runs them) on a Q4_K FFN gate/up pair and, when the
 *                  model has Q6_K weights, a Q6_K FFN-down-shaped matrix,
 *                  mixed by the model's weights per type (harmonic: times
 *                  add), over read_gbs;
 *   gflops         kcuda_linear with the engine's 256-token prompt batch
 *                  against the Q4_K gate matrix (dequantized tiles, cuBLAS);
 *   overhead_us    the device time of one small kernel in a graph (RMSNorm
 *                  and conversion of an n_embd row) times the kernels a
 *                  decode layer launches besides its large products: norms
 *                  and activation conversions, RoPE and cache store,
 *                  attention, and for MoE the router, top-k and join
 *                  (engine_cuda.c);
 *   mem_avail_gib  the device's free memory.
 *
 * Attention keeps attn_gflops = gflops (fused kernels, as the cluster files
 * assume for GPUs). Without CUDA, or without a device, the functions say
 * there is none and the caller measures the CPU.
 */
#include "cli.h"
#include "plan/plan_cost.h"

#ifdef TT_HAVE_CUDA

#include "kcuda/kcuda.h"

#include <math.h>
#include <string.h>

#define GPU_GEMM_TOKENS 256 /* the engine's prompt batch (ENGINE_BATCH_DEFAULT) */
#define GPU_GRAPH_LAUNCHES 16
#define GPU_SMALL_KERNELS 64

/* Kernels of a decode layer other than its large products: dense layers run
 * norm+convert, RoPE+store, attention (two launches: split parts, join),
 * convert before wo, norm+convert before the FFN and convert before down;
 * MoE layers add the router product, top-k and the expert join and their
 * own conversions (engine_cuda.c's attention_block, dense_ffn, moe_ffn). */
#define GPU_SMALL_PER_DENSE_LAYER 7
#define GPU_SMALL_PER_MOE_LAYER 10

struct gpu_bench {
    struct kcuda *k;
    void *w, *act; /* weights (row pattern 0x11: finite scales), activations */
    float *out;
};

/* Device ms of one kcuda_matvec of w (and w2 for SWIGLU) inside a graph,
 * as decode runs it; 0 on error. */
static double matvec_ms(struct gpu_bench *b, const struct kcuda_weight *w,
                        const struct kcuda_weight *w2)
{
    struct kcuda_graph *g = NULL;
    const size_t st = kcuda_act_row_bytes(tt_type_get((enum tt_type)w->type)->vec_dot_type, w->n_in);
    int err = kcuda_graph_begin(b->k);
    for (int i = 0; i < GPU_GRAPH_LAUNCHES && !err; i++)
        err = kcuda_matvec(b->k, w, w2, b->act, st, 1, b->out, w->n_out, NULL,
                           w2 ? KCUDA_OUT_SWIGLU : KCUDA_OUT_STORE);
    int end = kcuda_graph_end(b->k, &g);
    double ms = !err && !end && g ? kcuda_graph_time_ms(b->k, g, 8) / GPU_GRAPH_LAUNCHES : 0.0;
    kcuda_graph_destroy(g);
    return ms;
}

/* Device ms of one small kernel inside a graph: the engine's most frequent
 * one, RMSNorm of one n-float row fused with its conversion to Q8_K (a
 * reduction, then a dependent pass: latency-bound, as the layer's other
 * small kernels are; an element-wise add measured 0.7 us on the H200, the
 * engine's norm, RoPE and attention kernels 3.3-18 us). */
static double small_kernel_ms(struct gpu_bench *b, int64_t n)
{
    struct kcuda_graph *g = NULL;
    const size_t st = kcuda_act_row_bytes(KCUDA_Q8_K, n);
    int err = kcuda_graph_begin(b->k);
    for (int i = 0; i < GPU_SMALL_KERNELS && !err; i++)
        err = kcuda_norm_convert(b->k, KCUDA_Q8_K, b->out, n, 1, n, b->out + n, 1e-5f, NULL, b->act,
                                 st);
    int end = kcuda_graph_end(b->k, &g);
    double ms = !err && !end && g ? kcuda_graph_time_ms(b->k, g, 8) / GPU_SMALL_KERNELS : 0.0;
    kcuda_graph_destroy(g);
    return ms;
}

/* GFLOP/s of a prompt batch through kcuda_linear on w (host-timed, as the
 * engine's prompt steps are not graphs). */
static double gemm_gflops(struct gpu_bench *b, const struct kcuda_weight *w)
{
    const size_t st = kcuda_act_row_bytes(tt_type_get((enum tt_type)w->type)->vec_dot_type, w->n_in);
    int err = kcuda_linear(b->k, w, NULL, b->act, st, GPU_GEMM_TOKENS, b->out, w->n_out, NULL,
                           KCUDA_OUT_STORE); /* warm: cuBLAS picks its kernels */
    if (!err) err = kcuda_sync(b->k);
    int reps = 0;
    const double t0 = tt_now_s();
    double t = 0.0;
    while (!err && (t = tt_now_s() - t0) < 0.1) {
        for (int i = 0; i < 4 && !err; i++, reps++)
            err = kcuda_linear(b->k, w, NULL, b->act, st, GPU_GEMM_TOKENS, b->out, w->n_out, NULL,
                               KCUDA_OUT_STORE);
        if (!err) err = kcuda_sync(b->k);
    }
    t = tt_now_s() - t0;
    return err || !(t > 0) ? 0.0 : 2.0 * (double)w->n_in * (double)w->n_out * GPU_GEMM_TOKENS * reps / t / 1e9;
}

static struct kcuda_weight weight_of(const struct gpu_bench *b, enum tt_type type, int64_t n_out,
                                     int64_t n_in)
{
    return (struct kcuda_weight){
        .data = b->w, .type = (int)type, .n_in = n_in, .n_out = n_out, .row_stride = tt_row_size(type, n_in)};
}

/* A token's FFN width: n_ff, or for MoE the rows its experts read, as one
 * matrix. */
static int64_t ffn_width(const struct model_hparams *hp)
{
    return hp->n_expert ? (int64_t)hp->n_ff_exp * hp->n_expert_used : hp->n_ff;
}

/* The measurements above on the model's FFN shapes (ffn_width by n_embd).
 * Returns false on any error. */
static bool gpu_measure(struct gpu_bench *b, const struct plan_model *pm, struct plan_hw_rank *r)
{
    const struct model_hparams *hp = &pm->hp;
    const int64_t E = hp->n_embd;
    const int64_t F = ffn_width(hp);
    const struct kcuda_weight up = weight_of(b, TT_TYPE_Q4_K, F, E), up2 = up;
    const struct kcuda_weight down = weight_of(b, TT_TYPE_Q6_K, E, F);
    const double up_ms = matvec_ms(b, &up, &up2), down_ms = matvec_ms(b, &down, NULL);
    const double up_gbs = 2.0 * (double)(up.row_stride * (size_t)F) / (up_ms * 1e-3) / 1e9;
    const double down_gbs = (double)(down.row_stride * (size_t)E) / (down_ms * 1e-3) / 1e9;
    const double f6 = plan_model_type_share(pm, TT_TYPE_Q6_K);
    const double matvec_gbs = 1.0 / ((1.0 - f6) / up_gbs + f6 / down_gbs);
    const double small_us = small_kernel_ms(b, E) * 1e3;
    r->gflops = gemm_gflops(b, &up);
    r->read_gbs = kcuda_copy_bandwidth_gbs(b->k);
    if (!(up_ms > 0) || !(down_ms > 0) || !(small_us > 0) || !(r->gflops > 0) || !(r->read_gbs > 0))
        return false;
    r->bw_efficiency = fmin(1.0, matvec_gbs / r->read_gbs);
    r->attn_gflops = r->gflops;
    r->overhead_us = small_us * (hp->n_expert ? GPU_SMALL_PER_MOE_LAYER : GPU_SMALL_PER_DENSE_LAYER);
    tt_info("GPU figures: copy %.0f GB/s; one-token products %.0f GB/s (Q4_K gate/up pair %.1f us, "
            "Q6_K down %.1f us); %d-token products %.0f GFLOP/s; small kernel %.2f us",
            r->read_gbs, matvec_gbs, up_ms * 1e3, down_ms * 1e3, GPU_GEMM_TOKENS, r->gflops, small_us);
    return true;
}

bool cli_gpu_describe(const struct plan_model *pm, struct plan_hw_rank *r)
{
    if (kcuda_device_count() <= 0) return false;
    const struct model_hparams *hp = &pm->hp;
    const int64_t E = hp->n_embd;
    const int64_t F = ffn_width(hp);
    const size_t w_bytes = 2 * tt_row_size(TT_TYPE_Q4_K, E) * (size_t)F + tt_row_size(TT_TYPE_Q6_K, F) * (size_t)E;
    const int64_t wide = TT_MAX(F, E);
    const size_t act_bytes = kcuda_act_row_bytes(KCUDA_Q8_K, wide) * GPU_GEMM_TOKENS;
    const size_t out_bytes = sizeof(float) * (size_t)wide * GPU_GEMM_TOKENS * 2;
    struct gpu_bench b = {0};
    struct plan_hw_rank g = *r;
    size_t free_b = 0, total_b = 0;
    bool ok = false;
    int err = kcuda_create(&b.k, 0, kcuda_linear_scratch_bytes(GPU_GEMM_TOKENS, wide, F));
    if (!err) err = kcuda_malloc(b.k, &b.w, w_bytes + KCUDA_WEIGHT_PAD, "planner: weights");
    if (!err) err = kcuda_malloc(b.k, &b.act, act_bytes, "planner: activations");
    if (!err) err = kcuda_malloc(b.k, (void **)&b.out, out_bytes, "planner: outputs");
    if (!err) err = kcuda_memset(b.k, b.w, 0x11, w_bytes + KCUDA_WEIGHT_PAD);
    if (!err) err = kcuda_memset(b.k, b.act, 0x01, act_bytes);
    if (!err) err = kcuda_memset(b.k, b.out, 0, out_bytes);
    if (!err) err = kcuda_sync(b.k);
    if (!err && (ok = gpu_measure(&b, pm, &g))) {
        err = kcuda_mem_info(b.k, &free_b, &total_b);
        g.mem_avail_gib = (double)(free_b + w_bytes + act_bytes + out_bytes) / 1073741824.0;
        g.mem_total_gib = (double)total_b / 1073741824.0;
        g.jitter = 0.0;
        snprintf(g.device, sizeof(g.device), "%s", kcuda_device_name(b.k));
        ok = !err;
    }
    if (ok) *r = g;
    if (err) tt_warn("measuring the GPU failed (%s); describing the CPU instead", tt_strerror(err));
    kcuda_free(b.out);
    kcuda_free(b.act);
    kcuda_free(b.w);
    kcuda_destroy(b.k);
    return ok;
}

#else

bool cli_gpu_describe(const struct plan_model *pm, struct plan_hw_rank *r)
{
    (void)pm;
    (void)r;
    return false;
}

#endif
