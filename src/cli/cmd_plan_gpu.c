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
 *
 * Those kernel figures miss much of a real layer's cost (a dozen small
 * latency-bound kernels, attention, MoE routing and expert tiles, the
 * host's part of a step): they predicted 519 tok/s for the 8B shape where
 * the engine ran 326. So the description is then fitted to the engine
 * itself (cli_engine_fit, also on a CPU with `plan --time-engine`): two
 * models of the target's shape with n and 2n layers (n at least
 * FIT_MIN_LAYERS and enough layers that no cache holds them, up to half the
 * target's) and a small
 * vocabulary (`tutti gen`'s code, in a temporary directory), both loaded
 * with the workload's context and batch, are warmed up with untimed
 * prompts for FIT_WARM_S each, then run prompts of the workload's length
 * and of half of it in alternating rounds (model and length) and decode
 * steps after them, timed as `tutti bench` times them; plan_fit_engine
 * (plan_fit.c, pure) turns the times into overhead_us, step_overhead_us,
 * token_overhead_us, gflops and attn_gflops. The
 * bandwidth figures stay the kernels': the output matrix, absent from the
 * small models, is predicted from them.
 */
#include "cli.h"
#include "plan/plan_cost.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the engine timed on models of the target's shape ---- */

#define FIT_VOCAB 512        /* the small models' vocabulary (>= gen's 260) */
/* The smaller model's layers hold at least this many bytes, several times
 * the last-level caches (50 MB of L2 on the H200, tens to hundreds of MB of
 * L3 on CPUs), so that both models stream their weights as the target
 * does instead of finding them in a cache. */
#define FIT_CACHE_BYTES (256.0 * 1048576.0)
/* ... and at least this many layers: the host's share of a prompt pass
 * (embedding rows, tables, copies, launching the kernels) runs while the
 * device computes, so a model whose layers take the device less than that
 * hides them (H200, Qwen3-30B-A3B shape, 512-token prompts, 1.3 ms of
 * kernels per layer: 1, 2, 4 and 12 layers took 5.30, 5.89, 8.93 and 16.99
 * ms; fitted from 1 and 2 layers the 12-layer prompt came out 38% short). */
#define FIT_MIN_LAYERS 4
#define FIT_DECODE_STEPS 32  /* per timed run */
#define FIT_REPS 5           /* timed runs of each kind: the best counts, as in bench */
/* Untimed prompts before the timed ones, for at least this long: a device
 * that was idle (the models' generation runs on the CPU for seconds) runs
 * its first milliseconds of work at lower clocks, and the small models'
 * prompts take a few milliseconds each, so one untimed run is not enough
 * (session 4's H200 fit: a 3-layer 8B-shaped model's 512-token prompt took
 * 9.3 ms and the 6-layer one's 10.8, a layer's share half of what the full
 * model's 38.6 ms TTFT gives per layer). */
#define FIT_WARM_S 0.5
#define FIT_PATH_MAX 512

/* The base type and *_M mix `tutti gen` would use for a model with pm's
 * weights: the type holding most multiply-adds, mixed with Q6_K where the
 * model has Q6_K beside Q4_K or Q5_K (llama-quantize's *_M files). */
static void fit_types(const struct plan_model *pm, enum tt_type *base, bool *mix)
{
    int best = 0;
    for (int t = 1; t < TT_TYPE_COUNT; t++)
        if (pm->elems_by_type[t] > pm->elems_by_type[best]) best = t;
    *base = (enum tt_type)best;
    *mix = (best == TT_TYPE_Q4_K || best == TT_TYPE_Q5_K) && pm->elems_by_type[TT_TYPE_Q6_K] > 0;
}

struct fit_progress {
    struct cli_progress bar;
    double base, span; /* this phase's part of the whole */
};

static void fit_gen_progress(void *ctx, double done, double total)
{
    struct fit_progress *p = ctx;
    if (total > 0) cli_progress_update(&p->bar, p->base + p->span * done / total, 1.0);
}

/* Write pm's shape with n_layer layers and a FIT_VOCAB vocabulary to path. */
static int fit_gen(const struct plan_model *pm, int n_layer, int n_ctx, int threads,
                   struct fit_progress *p, const char *path)
{
    struct model_gen_opts o = {.seed = 1, .n_threads = threads};
    o.hp = pm->hp;
    o.hp.n_layer = n_layer;
    o.hp.n_vocab = TT_MAX(260, TT_MIN(pm->hp.n_vocab, FIT_VOCAB));
    o.hp.n_ctx_train = TT_MAX(o.hp.n_ctx_train, n_ctx);
    if (!(o.hp.rope_base > 0)) o.hp.rope_base = 10000.0f; /* shapes leave them 0; */
    if (!(o.hp.rms_eps > 0)) o.hp.rms_eps = 1e-5f;        /* the time does not depend on them */
    fit_types(pm, &o.base_type, &o.mix_m);
    o.progress = fit_gen_progress;
    o.progress_ctx = p;
    return model_gen(&o, path);
}

/* Seconds of one prompt of n tokens from an empty cache. */
static int prompt_once(struct engine *e, const int32_t *ids, int n, float *logits, double *s)
{
    engine_truncate(e, 0);
    const double t0 = tt_now_s();
    int err = engine_eval(e, ids, n, ENGINE_LOGITS_LAST, logits);
    *s = tt_now_s() - t0;
    return err;
}

/* Untimed prompts of n tokens for FIT_WARM_S (at least one: library
 * set-up, the device's clocks); returns how many ran. */
static int warm_up(struct engine *e, const int32_t *ids, int n, float *logits, int *runs)
{
    const double t0 = tt_now_s();
    double s;
    int err = 0;
    *runs = 0;
    do {
        err = prompt_once(e, ids, n, logits, &s);
        ++*runs;
    } while (!err && tt_now_s() - t0 < FIT_WARM_S);
    return err;
}

/* Best mean seconds of one decode step over FIT_REPS runs of
 * FIT_DECODE_STEPS steps after the cached prompt ids[0, n_past), after one
 * untimed run (the decode graph is captured on first use). The steps' tokens
 * vary, so that MoE layers read different experts, not a cached few. */
static int time_decode(struct engine *e, const int32_t *ids, int n_past, float *logits,
                       double *best)
{
    *best = 0.0;
    for (int r = -1; r < FIT_REPS; r++) {
        engine_truncate(e, n_past);
        const double t0 = tt_now_s();
        int err = 0;
        for (int i = 0; i < FIT_DECODE_STEPS && !err; i++)
            err = engine_eval(e, &ids[(i * 37 + r * 11 + 11) % n_past], 1, ENGINE_LOGITS_LAST,
                              logits);
        const double t = (tt_now_s() - t0) / FIT_DECODE_STEPS;
        if (err) return err;
        if (r >= 0 && (r == 0 || t < *best)) *best = t;
    }
    return 0;
}

/* Layers of the smaller model: at least FIT_MIN_LAYERS, enough for FIT_CACHE_BYTES of the
 * target's average layer (all its experts: the decode steps' tokens vary,
 * so over the steps every expert is read), but the larger model no larger
 * than the target: a target small enough for a cache finds its weights
 * there too, and larger maps than the target's would meet other limits
 * (huge pages, TLB reach) that it does not. */
static int fit_layers(const struct plan_model *pm)
{
    double bytes = 0.0;
    for (int il = 0; il < pm->hp.n_layer; il++) {
        const struct plan_layer_cost *lc = &pm->layers[il];
        for (int p = 0; p < PLAN_PART_COUNT; p++)
            bytes += (double)lc->bytes[p] *
                     (p == PLAN_PART_EXP_UP || p == PLAN_PART_EXP_DOWN ? pm->hp.n_expert : 1);
    }
    const double per_layer = bytes / TT_MAX(1, pm->hp.n_layer);
    const double n = per_layer > 0 ? ceil(FIT_CACHE_BYTES / per_layer) : 1.0;
    return (int)fmax(1.0, fmin(fmax(n, FIT_MIN_LAYERS), pm->hp.n_layer / 2));
}

/* One of the two models, loaded with its engine. */
struct fit_run {
    struct model m;
    struct engine *e;
    int32_t *ids; /* a prompt's tokens */
    float *logits;
    bool loaded;
};

static void fit_run_free(struct fit_run *f)
{
    if (f->e) engine_destroy(f->e);
    free(f->logits);
    free(f->ids);
    if (f->loaded) model_free(&f->m);
    memset(f, 0, sizeof(*f));
}

/* Generate and load model k (0: n_layer layers, 1: twice as many) with its
 * engine; its plan_model goes to *pm (the caller frees it). */
static int fit_open(const struct plan_model *target, const struct plan_workload *w, int threads,
                    bool gpu, const char *dir, int k, int n_layer, struct fit_progress *p,
                    struct plan_model *pm, struct fit_run *f)
{
    char path[FIT_PATH_MAX + 32];
    /* the workload's context: the engine sizes its KV cache and splits
     * attention by it (engine_cuda.c), as for the target */
    const int P = w->prompt_tokens, n_ctx = TT_MAX(w->n_ctx, P + FIT_DECODE_STEPS + 1);
    snprintf(path, sizeof(path), "%s/%d.gguf", dir, k + 1);
    p->base = k ? 0.25 : 0.0; /* generating takes about the layers' share of 3/4 */
    p->span = k ? 0.5 : 0.25;
    int err = fit_gen(target, n_layer, n_ctx, threads, p, path);
    if (!err) err = model_load(&f->m, path);
    unlink(path); /* the mapping stays valid */
    if (err) return err;
    f->loaded = true;
    struct engine_opts eo = {.n_threads = threads, .n_ctx = n_ctx, .n_batch = w->n_batch,
                             .n_gpu_layers = gpu ? -1 : 0};
    f->ids = malloc(sizeof(int32_t) * (size_t)P);
    f->logits = malloc(sizeof(float) * (size_t)f->m.hp.n_vocab);
    if (!f->ids || !f->logits) err = tt_error_set(TT_ENOMEM, "out of memory timing the engine");
    if (!err) err = plan_model_from_model(pm, &f->m);
    if (!err) err = engine_create(&f->e, &f->m, &eo);
    if (!err) cli_prompt_ids(f->ids, P, f->m.hp.n_vocab);
    return err;
}

/* Both models' prompts and decode steps into t: each model warmed up
 * first, then FIT_REPS rounds that alternate the models and the lengths
 * (whatever drifts, the device's clocks or the host's load, reaches both
 * alike), the best of each counting. */
static int fit_time(struct fit_run f[2], struct plan_engine_times *t)
{
    const int P = t->prompt_tokens[1];
    int err = 0, warm[2] = {0, 0};
    double first[2] = {0, 0};
    for (int k = 0; k < 2 && !err; k++)
        err = warm_up(f[k].e, f[k].ids, P, f[k].logits, &warm[k]);
    for (int r = 0; r < FIT_REPS && !err; r++)
        for (int k = 0; k < 2 && !err; k++)
            for (int j = 0; j < 2 && !err; j++) {
                double s;
                err = prompt_once(f[k].e, f[k].ids, t->prompt_tokens[j], f[k].logits, &s);
                if (r == 0 || s < t->prompt_s[k][j]) t->prompt_s[k][j] = s;
                if (r == 0 && j == 1) first[k] = s;
            }
    for (int k = 0; k < 2 && !err; k++)
        err = time_decode(f[k].e, f[k].ids, P, f[k].logits, &t->decode_s[k]);
    if (!err)
        tt_info("engine timing: %d and %d untimed prompts of %d tokens first; then the first "
                "timed ones %.2f and %.2f ms",
                warm[0], warm[1], P, first[0] * 1e3, first[1] * 1e3);
    return err;
}

bool cli_engine_fit(const struct plan_model *target, const struct plan_workload *w, int threads,
                    bool gpu, struct plan_hw_rank *r)
{
    struct plan_model pm[2] = {0};
    struct plan_engine_times t = {.model = {&pm[0], &pm[1]},
                                  .prompt_tokens = {TT_MAX(1, w->prompt_tokens / 2), w->prompt_tokens},
                                  .n_batch = w->n_batch};
    const char *tmp = getenv("TMPDIR");
    char dir[FIT_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/tutti-plan-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    struct fit_progress p;
    cli_progress_start(&p.bar, "timing the engine");
    const bool made = mkdtemp(dir) != NULL;
    const int n_layer = fit_layers(target);
    int err = made ? 0 : tt_error_set(TT_EIO, "cannot make a directory like %s", dir);
    struct fit_run f[2] = {0};
    for (int k = 0; k < 2 && !err; k++)
        err = fit_open(target, w, threads, gpu, dir, k, n_layer * (k + 1), &p, &pm[k], &f[k]);
    if (!err) err = fit_time(f, &t);
    fit_run_free(&f[1]);
    fit_run_free(&f[0]);
    if (made) rmdir(dir);
    cli_progress_end(&p.bar);
    struct plan_hw_rank g = *r;
    double worst = 0.0;
    if (!err) err = plan_fit_engine(&g, &t, &worst);
    plan_model_free(&pm[1]);
    plan_model_free(&pm[0]);
    if (err) {
        tt_warn("timing the engine failed (%s): %s", tt_strerror(err), tt_error_detail());
        tt_error_clear();
        return false;
    }
    tt_info("engine on %d and %d layers of this shape: decode %.1f / %.1f us per step; prompts "
            "of %d and %d tokens %.2f / %.2f and %.2f / %.2f ms",
            n_layer, 2 * n_layer, t.decode_s[0] * 1e6, t.decode_s[1] * 1e6, t.prompt_tokens[0], t.prompt_tokens[1],
            t.prompt_s[0][0] * 1e3, t.prompt_s[1][0] * 1e3, t.prompt_s[0][1] * 1e3,
            t.prompt_s[1][1] * 1e3);
    tt_info("fitted: overhead %.1f us per layer (was %.1f), %.1f us per pass, %.2f us per token "
            "of a pass; %.0f GFLOP/s products (was %.0f), %.0f attention (was %.0f); largest "
            "difference left %.1f%%",
            g.overhead_us, r->overhead_us, g.step_overhead_us, g.token_overhead_us, g.gflops,
            r->gflops, g.attn_gflops, r->attn_gflops, 100.0 * worst);
    *r = g;
    return true;
}

#ifdef TT_HAVE_CUDA

#include "comm/comm_nccl.h"
#include "kcuda/kcuda.h"

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

/* GPU `device` by its kernels on pm's FFN shapes (gpu_measure), its free
 * memory and name into *r (other fields kept). False, *r untouched, on an
 * error. */
static bool gpu_kernels(const struct plan_model *pm, int device, struct plan_hw_rank *r)
{
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
    int err = kcuda_create(&b.k, device, kcuda_linear_scratch_bytes(GPU_GEMM_TOKENS, wide, F));
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
    if (err) tt_warn("measuring the GPU failed (%s); describing the CPU instead", tt_strerror(err));
    kcuda_free(b.out);
    kcuda_free(b.act);
    kcuda_free(b.w);
    kcuda_destroy(b.k);
    if (ok) *r = g;
    return ok;
}

bool cli_gpu_describe_kernels(const struct plan_model *pm, int local_rank, struct plan_hw_rank *r)
{
    const int n_dev = kcuda_device_count();
    return n_dev > 0 && gpu_kernels(pm, local_rank % n_dev, r);
}

bool cli_gpu_describe(const struct plan_model *pm, const struct plan_workload *w, int threads,
                      struct plan_hw_rank *r)
{
    struct plan_hw_rank g = *r;
    if (kcuda_device_count() <= 0 || !gpu_kernels(pm, 0, &g)) return false;
    if (cli_engine_fit(pm, w, threads, true, &g)) {
        const size_t n = strlen(g.device);
        snprintf(g.device + n, sizeof(g.device) - n, " (engine timed on this shape)");
    } else {
        tt_warn("describing the GPU by its kernels alone");
    }
    *r = g;
    return true;
}

/* ---- the GPUs' link: NCCL all-reduces, as the engine's joins run them ---- */

#define LINK_SMALL_FLOATS 4096       /* a decode join: one n_embd row (Llama 3 8B) */
#define LINK_BIG_FLOATS (512 * 4096) /* a prompt batch's join: 512 tokens of 4096 */
#define LINK_JOINS 32                /* small joins per graph */

/* Device ms of `joins` all-reduces of n floats, each followed by the add
 * of the summed row into another (project_add in engine_cuda.c), captured
 * in one graph; 0 on error. Collective over the communicator. */
static double join_ms(struct kcuda *k, struct comm_nccl *nc, float *buf, int64_t n, int joins)
{
    struct kcuda_graph *g = NULL;
    int err = kcuda_graph_begin(k);
    for (int i = 0; i < joins && !err; i++) {
        err = comm_nccl_allreduce_sum(nc, buf, n, kcuda_stream(k));
        if (!err) err = kcuda_add(k, buf + n, buf, n);
    }
    const int end = kcuda_graph_end(k, &g);
    const double ms = !err && !end && g ? kcuda_graph_time_ms(k, g, 8) / joins : 0.0;
    kcuda_graph_destroy(g);
    return ms;
}

/* Whether every rank of c set up what the measurement needs (collective;
 * false on a failed exchange). */
static bool all_ranks(struct comm *c, bool mine)
{
    bool all = false;
    return comm_all_true(c, mine, &all) == 0 && all;
}

bool cli_gpu_join_link(struct comm *c, int local_rank, struct plan_link *out)
{
    const int n = comm_size(c), n_dev = kcuda_device_count();
    if (n < 2 || !all_ranks(c, n_dev > 0 && comm_nccl_load() == 0)) return false;
    struct kcuda *k = NULL;
    struct comm_nccl *nc = NULL;
    float *buf = NULL;
    const size_t bytes = sizeof(float) * 2 * (size_t)LINK_BIG_FLOATS;
    int err = kcuda_create(&k, local_rank % n_dev, 0);
    if (!err) err = kcuda_malloc(k, (void **)&buf, bytes, "topo: join buffers");
    if (!err) err = kcuda_memset(k, buf, 0, bytes);
    if (!err) err = kcuda_sync(k);
    bool ok = all_ranks(c, !err);
    if (ok) {
        err = comm_nccl_init(&nc, c);
        if (!err) err = comm_nccl_allreduce_sum(nc, buf, LINK_SMALL_FLOATS, kcuda_stream(k)); /* connects */
        if (!err) err = kcuda_sync(k);
        ok = all_ranks(c, !err);
    }
    double small_ms = 0.0, big_ms = 0.0;
    if (ok) {
        small_ms = join_ms(k, nc, buf, LINK_SMALL_FLOATS, LINK_JOINS);
        big_ms = join_ms(k, nc, buf, LINK_BIG_FLOATS, 1);
        ok = all_ranks(c, small_ms > 0 && big_ms > small_ms);
    }
    if (err) tt_warn("measuring the GPUs' NCCL link failed (%s); measuring the MPI link instead", tt_strerror(err));
    comm_nccl_free(nc);
    kcuda_free(buf);
    kcuda_destroy(k);
    if (!ok) return false;
    /* the per-link figures from which plan_cost.c's all-reduce of k ranks
     * (allreduce_s) gives the two times measured: a small block takes
     * ceil(log2 k) latencies, a large one 2 (k - 1) / k of its bytes at the
     * both-ways rate after its steps' latencies (k = 2: the bytes once,
     * one latency) */
    const double kk = n, steps = ceil(log2(kk)), big_bytes = sizeof(float) * (double)LINK_BIG_FLOATS;
    const double lat_s = small_ms * 1e-3 / steps;
    const double big_steps = n > 2 ? 2.0 * (kk - 1.0) * lat_s : lat_s;
    const double moved = n > 2 ? 2.0 * (kk - 1.0) / kk * big_bytes : big_bytes;
    const double gbs = moved / fmax(big_ms * 1e-3 - big_steps, 1e-7) / 1e9;
    *out = (struct plan_link){ .latency_us = lat_s * 1e6, .bandwidth_gbs = gbs, .bandwidth_both_gbs = gbs };
    tt_info("GPUs' NCCL link: all-reduce + add of %d floats %.2f us, of %d floats %.1f us (%d ranks): "
            "latency %.2f us, %.1f GB/s", LINK_SMALL_FLOATS, small_ms * 1e3, LINK_BIG_FLOATS, big_ms * 1e3, n,
            lat_s * 1e6, gbs);
    return true;
}

#else

bool cli_gpu_describe_kernels(const struct plan_model *pm, int local_rank, struct plan_hw_rank *r)
{
    (void)pm;
    (void)local_rank;
    (void)r;
    return false;
}

bool cli_gpu_describe(const struct plan_model *pm, const struct plan_workload *w, int threads,
                      struct plan_hw_rank *r)
{
    (void)pm;
    (void)w;
    (void)threads;
    (void)r;
    return false;
}

bool cli_gpu_join_link(struct comm *c, int local_rank, struct plan_link *out)
{
    (void)c;
    (void)local_rank;
    (void)out;
    return false;
}

#endif
