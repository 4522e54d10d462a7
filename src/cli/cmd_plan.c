/*
 * cmd_plan.c: `tutti plan`, how a model would be split over a cluster and
 * how fast it would run, before running it.
 *
 * The model comes from a GGUF file (-m: only its header and tensor
 * directory are read) or from a shape (--shape NAME and/or the `tutti gen`
 * shape options with --type), so a user can plan for a model they have not
 * downloaded. The cluster comes from a description (--cluster FILE.json,
 * docs/PLANNER.md; `tutti topo --json` writes one) or, without one, from
 * this machine measured now: its memory read bandwidth, its matrix-product
 * speed, its thread-pool overhead and its free memory. The planner itself
 * (plan_cost.h) is pure; this file only gathers inputs and prints.
 */
#include "cli.h"
#include "plan/plan_cost.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GIB 1073741824.0
#define PATH_MAX_DESC 512


static const char plan_help[] =
    "usage: tutti plan (-m MODEL | --shape NAME | --arch A --n-embd N ...) [--cluster FILE.json]\n"
    "                  [--prompt N] [--ctx N] [--streams N] [--plan MODE] [--optimize WHAT] "
    "[--split S] [--json]\n"
    "Predict decode tok/s and time to first token for every way of splitting the\n"
    "model over the cluster (one rank, tensor parallel, pipeline, hybrid), and\n"
    "show the layout chosen: which rank holds which layers, heads, FFN columns,\n"
    "experts and vocabulary rows, and the memory each needs.\n\n"
    "model (one of):\n"
    "  -m, --model FILE   a GGUF file (only its header and tensor directory are read)\n"
    "  --shape NAME       a known shape: llama-3.1-8b, llama-3.3-70b, llama-3.1-405b,\n"
    "                     qwen2.5-32b, mixtral-8x7b, qwen3-30b-a3b, qwen3-235b-a22b\n"
    "  --arch A --n-embd N --n-layer N --n-head N [--n-head-kv N --head-dim N --n-ff N\n"
    "   --vocab N --n-expert N --n-expert-used N --n-ff-exp N --n-ff-shexp N --tied]\n"
    "                     any shape, as `tutti gen` takes it (overrides --shape's values)\n"
    "  --type T           quantization of a shape: f32, f16, bf16, q4_0, q8_0, q4_k, q5_k,\n"
    "                     q6_k, q4_k_m, q5_k_m (default q4_k_m)\n"
    "cluster:\n"
    "  --cluster FILE     a cluster description (JSON; see docs/PLANNER.md and docs/clusters/)\n"
    "                     default: this machine, measured now (-t threads, default all cores;\n"
    "                     its GPU when it has one, as the engine runs there; --cpu: its CPU)\n"
    "  --time-engine      on the CPU too, fit the description to the engine's own times on\n"
    "                     models of this shape with n and 2n layers (always done on a GPU)\n"
    "workload:\n"
    "  --prompt N         prompt tokens for TTFT; decode attends over them (default 512)\n"
    "  --ctx N            KV cache positions per stream (default 4096)\n"
    "  --streams N        sequences decoded together (default 1: single stream)\n"
    "  --batch N          prompt tokens per forward pass (default 256)\n"
    "  --plan MODE        auto (default), or a comma list of single, tp, pp, hybrid to\n"
    "                     choose among (the others are still shown)\n"
    "  --optimize WHAT    decode (default: highest tok/s) or ttft (lowest time to first token)\n"
    "  --split S          speed (default: each rank's share of heads, columns and layers by\n"
    "                     its measured speed, as --split auto runs) or even (equal shares,\n"
    "                     as the engine's default --split even runs)\n"
    "  --logits           every step returns full logits to rank 0, as `tutti bench` and\n"
    "                     `tutti logits` do (default: sampled tokens, as run and serve)\n"
    "  --json             print one JSON object instead of tables\n";

/* Public shapes (the models' config.json files). MoE shapes have no dense FFN. */
static const struct shape_preset {
    const char *name, *arch;
    int32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_expert, n_expert_used,
        n_ff_exp;
} presets[] = {
    {"llama-3.1-8b", "llama", 4096, 32, 32, 8, 128, 14336, 128256, 0, 0, 0},
    {"llama-3.3-70b", "llama", 8192, 80, 64, 8, 128, 28672, 128256, 0, 0, 0},
    {"llama-3.1-405b", "llama", 16384, 126, 128, 8, 128, 53248, 128256, 0, 0, 0},
    {"qwen2.5-32b", "qwen2", 5120, 64, 40, 8, 128, 27648, 152064, 0, 0, 0},
    {"mixtral-8x7b", "llama", 4096, 32, 32, 8, 128, 14336, 32000, 8, 2, 14336},
    {"qwen3-30b-a3b", "qwen3moe", 2048, 48, 32, 4, 128, 768, 151936, 128, 8, 768},
    {"qwen3-235b-a22b", "qwen3moe", 4096, 94, 64, 4, 128, 1536, 151936, 128, 8, 1536},
};

struct plan_opts {
    const char *model_path, *cluster_path, *shape, *type, *arch;
    struct model_hparams hp; /* shape options given (0 = not given) */
    bool tied, json, cpu, time_engine;
    int threads;
    struct plan_workload w;
};

static void parse_args(int argc, char **argv, struct plan_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(plan_help, stdout);
            exit(0);
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!strcmp(a, "--tied")) {
            o->tied = true;
            continue;
        }
        if (!strcmp(a, "--cpu")) {
            o->cpu = true;
            continue;
        }
        if (!strcmp(a, "--time-engine")) {
            o->time_engine = true;
            continue;
        }
        if (!strcmp(a, "--logits")) {
            o->w.full_logits = true;
            continue;
        }
        const char *v = cli_value(argc, argv, &i);
        if (cli_shape_opt(a, v, &o->hp)) continue;
        if (!strcmp(a, "-m") || !strcmp(a, "--model"))
            o->model_path = v;
        else if (!strcmp(a, "--cluster"))
            o->cluster_path = v;
        else if (!strcmp(a, "--shape"))
            o->shape = v;
        else if (!strcmp(a, "--type"))
            o->type = v;
        else if (!strcmp(a, "--arch"))
            o->arch = v;
        else if (!strcmp(a, "--prompt"))
            o->w.prompt_tokens = (int32_t)cli_parse_int(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--ctx"))
            o->w.n_ctx = (int32_t)cli_parse_int(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--streams"))
            o->w.n_streams = (int32_t)cli_parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--batch"))
            o->w.n_batch = (int32_t)cli_parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            o->threads = (int)cli_parse_int(a, v, 1, 512);
        else if (!strcmp(a, "--plan")) {
            int err = plan_parse_layouts(v, &o->w.layouts);
            if (err) cli_die(err, "--plan");
        } else if (!strcmp(a, "--split")) {
            if (!strcmp(v, "even") || !strcmp(v, "speed"))
                o->w.even_split = !strcmp(v, "even");
            else
                cli_die(0, "--split '%s': expected speed or even", v);
        } else if (!strcmp(a, "--optimize")) {
            if (!strcmp(v, "decode"))
                o->w.objective = PLAN_OBJECTIVE_DECODE;
            else if (!strcmp(v, "ttft"))
                o->w.objective = PLAN_OBJECTIVE_TTFT;
            else
                cli_die(0, "--optimize '%s': expected decode or ttft", v);
        } else
            cli_die(0, "unknown option '%s' (see tutti plan --help)", a);
    }
    if (o->time_engine && o->cluster_path)
        cli_die(0, "--time-engine times this machine's engine; it cannot describe --cluster %s",
                o->cluster_path);
    if (o->w.n_ctx < o->w.prompt_tokens)
        cli_die(0, "--ctx %d is shorter than the prompt (%d tokens)", o->w.n_ctx,
                o->w.prompt_tokens);
}

/* ---- the model ---- */

/* hp from --shape, then the explicit options, then gen's defaults. */
static void shape_hparams(const struct plan_opts *o, struct model_hparams *hp)
{
    *hp = (struct model_hparams){.n_embd = 256,
                                 .n_layer = 2,
                                 .n_head = 8,
                                 .n_vocab = 512,
                                 .n_ctx_train = 4096,
                                 .n_expert_used = 2};
    const char *arch = "llama";
    if (o->shape) {
        size_t i = 0;
        while (i < TT_ARRAY_LEN(presets) && strcmp(presets[i].name, o->shape))
            i++;
        if (i == TT_ARRAY_LEN(presets))
            cli_die(0, "unknown --shape '%s' (see tutti plan --help)", o->shape);
        const struct shape_preset *p = &presets[i];
        arch = p->arch;
        *hp = (struct model_hparams){.n_embd = p->n_embd,
                                     .n_layer = p->n_layer,
                                     .n_head = p->n_head,
                                     .n_head_kv = p->n_head_kv,
                                     .head_dim = p->head_dim,
                                     .n_ff = p->n_ff,
                                     .n_vocab = p->n_vocab,
                                     .n_expert = p->n_expert,
                                     .n_expert_used = p->n_expert_used,
                                     .n_ff_exp = p->n_ff_exp,
                                     .n_ctx_train = 4096};
    }
    if (o->arch) arch = o->arch;
    int ai = model_arch_from_name(arch);
    if (ai < 0)
        cli_die(0, "unknown architecture '%s' (supported: %s)", arch, model_arch_supported_list());
    hp->arch = (enum model_arch)ai;
#define OVERRIDE(f)                                                                                \
    if (o->hp.f) hp->f = o->hp.f
    OVERRIDE(n_embd);
    OVERRIDE(n_layer);
    OVERRIDE(n_head);
    OVERRIDE(n_head_kv);
    OVERRIDE(head_dim);
    OVERRIDE(n_ff);
    OVERRIDE(n_vocab);
    OVERRIDE(n_expert);
    OVERRIDE(n_expert_used);
    OVERRIDE(n_ff_exp);
    OVERRIDE(n_ff_shexp);
#undef OVERRIDE
    if (!hp->n_head_kv) hp->n_head_kv = hp->n_head;
    if (!hp->head_dim) hp->head_dim = hp->n_embd / hp->n_head;
    if (!hp->n_ff) hp->n_ff = (hp->n_embd * 8 / 3 + 255) / 256 * 256;
    if (!hp->n_ff_exp) hp->n_ff_exp = hp->n_ff;
    hp->n_rot = hp->head_dim;
}

int cli_plan_shape_model(const char *shape, struct plan_model *pm)
{
    struct plan_opts o = {.shape = shape};
    struct model_hparams hp;
    enum tt_type base;
    bool mix;
    shape_hparams(&o, &hp);
    int err = model_gen_parse_type("q4_k_m", &base, &mix);
    return err ? err : plan_model_from_shape(pm, &hp, base, mix, false);
}

static void load_model(const struct plan_opts *o, struct plan_model *pm, char *desc, size_t cap)
{
    int err;
    const bool shape_given = o->shape || o->arch || o->hp.n_embd || o->hp.n_layer || o->hp.n_head;
    if (o->model_path && (shape_given || o->type))
        cli_die(0, "give either -m MODEL or a shape (--shape, --arch ...), not both");
    if (o->model_path) {
        struct model m;
        if ((err = model_load(&m, o->model_path))) cli_die(err, "cannot load '%s'", o->model_path);
        if ((err = plan_model_from_model(pm, &m))) cli_die(err, "planning");
        snprintf(desc, cap, "%s (%s)", o->model_path, model_arch_name(m.hp.arch));
        model_free(&m);
        return;
    }
    if (!shape_given)
        cli_die(0, "no model: give -m MODEL, --shape NAME or a shape (see tutti plan --help)");
    struct model_hparams hp;
    shape_hparams(o, &hp);
    enum tt_type base;
    bool mix;
    const char *type = o->type ? o->type : "q4_k_m";
    if ((err = model_gen_parse_type(type, &base, &mix))) cli_die(err, "--type");
    if ((err = plan_model_from_shape(pm, &hp, base, mix, o->tied))) cli_die(err, "the model shape");
    snprintf(desc, cap, "%s shape%s, %s", o->shape ? o->shape : model_arch_name(hp.arch),
             o->shape && !o->arch && !o->hp.n_embd ? "" : " (given)", type);
}

/* ---- the cluster ---- */

/* Matrix-product speed (GFLOP/s) on weights of `type` in prompt-sized
 * batches: the engine's batch of 256 tokens against 2048 rows of 4096
 * columns (several MiB: past the private caches, as a layer's matrices).
 * A sample is as many products as take PLAN_GEMM_SAMPLE_S (a layer's
 * products in a prompt chunk take milliseconds to tens of them: a sample
 * that short would also catch clock boosts a long prompt does not keep);
 * the best sample over CLI_PROBE_WINDOW_S. */
#define PLAN_GEMM_SAMPLE_S 0.02

struct gemm_probe {
    struct cli_product p;
    struct tt_pool *pool;
};

static double gemm_sample(void *ctx)
{
    struct gemm_probe *g = ctx;
    const struct cli_product *p = &g->p;
    const double flops = 2.0 * (double)(p->rows * p->n * p->n_tok) * p->reps;
    return flops / cli_product_time(&g->p, g->pool) / 1e9;
}

static double measure_gemm(struct tt_pool *pool, enum tt_type type)
{
    const int64_t n = 4096, rows = 2048, n_tok = 256;
    struct gemm_probe g = {.pool = pool};
    if (!cli_type_probed(type) || !cli_product_init(&g.p, type, n, rows, n_tok, false)) return 0.0;
    while (cli_product_time(&g.p, pool) < PLAN_GEMM_SAMPLE_S && g.p.reps < (1 << 20))
        g.p.reps *= 2;
    const double gflops = cli_probe_best(gemm_sample, &g, CLI_PROBE_WINDOW_S);
    cli_product_free(&g.p);
    return gflops;
}

/* Types holding less than this share of what a probe mixes (the norms'
 * F32, a stray tensor) are not timed: they count at the mixed rate. */
#define PLAN_TYPE_SHARE_MIN 0.02

/* The rate of a mix of weight types: amount[t] of the model's work is on
 * weights of type t (bytes a decode step reads, or multiply-adds of a
 * prompt); each type holding at least PLAN_TYPE_SHARE_MIN of it is timed
 * by probe, and the mix runs at plan_mix_rate over the timed types. 0 when
 * a probe fails or no type can be timed. */
static double type_mix(struct tt_pool *pool, const uint64_t amount[TT_TYPE_COUNT],
                       double (*probe)(struct tt_pool *, enum tt_type), const char *what)
{
    double all = 0.0, rate[TT_TYPE_COUNT] = { 0 };
    for (int t = 0; t < TT_TYPE_COUNT; t++)
        all += (double)amount[t];
    for (int t = 0; t < TT_TYPE_COUNT; t++) {
        if (!amount[t] || (double)amount[t] < PLAN_TYPE_SHARE_MIN * all ||
            !cli_type_probed((enum tt_type)t))
            continue;
        rate[t] = probe(pool, (enum tt_type)t);
        if (!(rate[t] > 0)) return 0.0;
        tt_info("%s: %s %.1f (%.0f%% of the model's)", what, tt_type_name((uint32_t)t), rate[t],
                100.0 * (double)amount[t] / all);
    }
    return plan_mix_rate(amount, rate, 0.0);
}

static double matvec_probe(struct tt_pool *pool, enum tt_type type)
{
    return cli_measure_matvec_gbs(pool, type, NULL);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void empty_job(void *p, int ith, int nth) {}

/* The cost of one parallel job (seconds): the median of 201 empty jobs (a
 * busy machine delays some calls a lot). */
static double measure_job(struct tt_pool *pool)
{
    double calls[201];
    for (int k = 0; k < 201; k++) {
        const double t0 = tt_now_s();
        tt_pool_run(pool, empty_job, NULL);
        calls[k] = tt_now_s() - t0;
    }
    qsort(calls, 201, sizeof(double), cmp_double);
    return calls[100];
}

/* The share of the isolated kernel's speed that the engine's prompt
 * batches reach (activation conversion, fused jobs of unequal matrices,
 * stores into strided outputs, the real matrices' sizes): 0.65, 0.74 and
 * 0.71 with 4, 8 and 16 threads on the 16-core device machine (16-layer
 * Llama-3-8B-shaped Q4_K_M, 512-token prompt; docs/PLANNER.md), about 0.7
 * in the session before. A property of the engine, not of the machine. */
#define PLAN_GEMM_IN_ENGINE 0.70

/* Prompt matrix-product speed for this model's weights: each type's kernel
 * timed and mixed by the model's multiply-adds in it (type_mix), the
 * output matrix left out (a prompt computes the last token's logits only:
 * a one-token product, not a batch's); times PLAN_GEMM_IN_ENGINE. */
static double model_gflops(struct tt_pool *pool, const struct plan_model *pm)
{
    uint64_t elems[TT_TYPE_COUNT];
    memcpy(elems, pm->elems_by_type, sizeof(elems));
    if (pm->output_type < TT_TYPE_COUNT && elems[pm->output_type] >= pm->output_elems)
        elems[pm->output_type] -= pm->output_elems;
    return PLAN_GEMM_IN_ENGINE * type_mix(pool, elems, measure_gemm, "prompt GFLOP/s");
}

/* The one-token products' speed for this model's weights (what its decode
 * streams them at): each type's over 512 MiB, mixed by the bytes a decode
 * step reads in it (type_mix). A Q4_K_M model is mostly Q4_K and Q6_K;
 * on the 2-core machine the Q6_K kernel read 0.85-1.15 as fast as Q4_K's
 * (slower where memory limits both, faster where its cores do: fewer
 * weights to decode per byte). */
static double model_matvec_gbs(struct tt_pool *pool, const struct plan_model *pm)
{
    return type_mix(pool, pm->decode_bytes_by_type, matvec_probe, "decode GB/s");
}

/* Attention as the engine runs it on an F16 cache (engine_ops.c,
 * attend_one): per query head, the key scores over strided cache rows
 * (kcpu_scores_f16: the registers-kept op where the kernel table has one,
 * as the engine calls it; the loops over dot_f16_f32 that an earlier probe
 * timed are slower), exponentials and their sum, the value mix
 * (kcpu_mix_f16). The model's head size and KV heads (the cache's row
 * stride); each thread works one KV head of an n_pos-position cache. */
struct attn_bench {
    const struct kcpu_ops *ops;
    const tt_f16 *kv; /* [n_pos][n_kv][hd] */
    const float *q;   /* [hd] */
    float *scores;    /* [threads][n_pos] */
    float *out;       /* [threads][hd] */
    int64_t n_pos, hd, n_kv;
    int reps;
};

static void attn_bench_run(void *p, int ith, int nth)
{
    const struct attn_bench *j = p;
    float *sc = j->scores + (size_t)ith * j->n_pos, *out = j->out + (size_t)ith * j->hd;
    const tt_f16 *kv = j->kv + (size_t)(ith % j->n_kv) * j->hd;
    const size_t stride = (size_t)(j->n_kv * j->hd);
    const float scale = 1.0f / sqrtf((float)j->hd);
    for (int r = 0; r < j->reps; r++) {
        const float maxs = kcpu_scores_f16(j->ops, j->hd, j->n_pos, kv, stride, j->q, scale, sc);
        double sum = 0.0;
        for (int64_t t = 0; t < j->n_pos; t++) {
            sc[t] = expf(sc[t] - maxs);
            sum += sc[t];
        }
        kcpu_mix_f16(j->ops, j->hd, j->n_pos, kv, stride, sc, (float)(1.0 / sum), out);
    }
}

struct attn_probe {
    struct attn_bench j;
    struct tt_pool *pool;
    int n_threads;
};

/* GFLOP/s of one run (4 per position and head dimension, per thread). */
static double attn_sample(void *ctx)
{
    struct attn_probe *a = ctx;
    const double t0 = tt_now_s();
    tt_pool_run(a->pool, attn_bench_run, &a->j);
    const double t = tt_now_s() - t0;
    return 4.0 * (double)(a->j.hd * a->j.n_pos) * a->j.reps * a->n_threads / t / 1e9;
}

/* GFLOP/s of attention over the positions a prompt of `prompt` tokens
 * attends on average (half of it, 128-2048), the best over
 * CLI_PROBE_WINDOW_S of samples of PLAN_GEMM_SAMPLE_S. */
static double measure_attention(struct tt_pool *pool, int n_threads, const struct model_hparams *hp,
                                int32_t prompt)
{
    const int64_t n_pos = TT_MAX(128, TT_MIN(2048, prompt / 2));
    const int64_t hd = hp->head_dim >= 16 && hp->head_dim <= 512 ? hp->head_dim : 128;
    const int64_t n_kv = TT_MAX(1, TT_MIN(16, hp->n_head_kv));
    struct attn_probe a = {{kcpu_get(), tt_alloc(sizeof(tt_f16) * (size_t)(n_pos * n_kv * hd)),
                            tt_alloc(sizeof(float) * (size_t)hd),
                            tt_alloc(sizeof(float) * (size_t)(n_threads * n_pos)),
                            tt_alloc(sizeof(float) * (size_t)(n_threads * hd)), n_pos, hd, n_kv, 1},
                           pool,
                           n_threads};
    struct attn_bench *j = &a.j;
    double gflops = 0.0;
    if (j->kv && j->q && j->scores && j->out) {
        for (int64_t i = 0; i < n_pos * n_kv * hd; i++)
            ((tt_f16 *)j->kv)[i] = tt_f32_to_f16((float)(i % 7) * 0.01f);
        for (int64_t i = 0; i < hd; i++)
            ((float *)j->q)[i] = 0.5f;
        for (;; j->reps *= 2) {
            const double t0 = tt_now_s();
            tt_pool_run(pool, attn_bench_run, j);
            if (tt_now_s() - t0 >= PLAN_GEMM_SAMPLE_S || j->reps >= (1 << 20)) break;
        }
        gflops = cli_probe_best(attn_sample, &a, CLI_PROBE_WINDOW_S);
    }
    tt_free(j->out);
    tt_free(j->scores);
    tt_free((void *)j->q);
    tt_free((void *)j->kv);
    return gflops;
}

/* The spread of a rank's time between two joins: 64 runs of one decode-sized
 * stretch of work (a matrix-vector product over 8 MiB of Q4_K, about a
 * quarter of an 8B layer), as a relative standard deviation estimated from
 * the 16th and 84th percentiles (robust to a single preemption). */
static double measure_jitter(struct tt_pool *pool)
{
    struct cli_product p;
    const int64_t n = 4096;
    double t[64];
    if (!cli_product_init(&p, TT_TYPE_Q4_K, n, (8ll << 20) / (int64_t)tt_row_size(TT_TYPE_Q4_K, n), 1, true))
        return 0.0;
    for (int k = -4; k < 64; k++) {
        const double dt = cli_product_time(&p, pool);
        if (k >= 0) t[k] = dt;
    }
    cli_product_free(&p);
    qsort(t, 64, sizeof(double), cmp_double);
    return (t[53] - t[10]) / 2.0 / t[32];
}

/* This machine as a one-rank cluster: measured read bandwidth and, as a
 * fraction of it, the bandwidth of the model's matrix-vector products (its
 * weight types mixed); matrix-product and attention speed; free memory
 * from /proc/meminfo; a per-layer overhead: the cost of one parallel job
 * times the jobs a decode step runs per layer (engine_ops.c: q/k/v,
 * attention, output, gate/up, down; MoE: router and two per expert). */
static void this_machine(const struct plan_opts *o, const struct plan_model *pm,
                         struct plan_cluster *c)
{
    const struct model_hparams *hp = &pm->hp;
    memset(c, 0, sizeof(*c));
    struct plan_hw_rank *r = &c->ranks[0];
    const int n_threads = o->threads ? o->threads : tt_cpu_count();
    c->n_ranks = 1;
    if (gethostname(r->host, sizeof(r->host) - 1) || !r->host[0])
        snprintf(r->host, sizeof(r->host), "localhost");
    snprintf(c->name, sizeof(c->name), "this machine (%s, %d threads, measured now)", r->host,
             n_threads);
    snprintf(r->device, sizeof(r->device), "%s CPU", kcpu_isa_name(kcpu_get()->isa));
    cli_meminfo(&r->mem_total_gib, &r->mem_avail_gib);
    if (!(r->mem_avail_gib > 0))
        cli_die(0, "cannot read this machine's free memory; use --cluster FILE");
    if (!o->cpu && cli_gpu_describe(pm, &o->w, n_threads, r)) {
        snprintf(c->name, sizeof(c->name), "this machine's GPU (%.30s, %.50s, measured now)",
                 r->host, r->device);
        return;
    }
    r->read_gbs = cli_measure_read_bw(n_threads, NULL);
    struct tt_pool *pool = tt_pool_create(n_threads);
    if (!pool) cli_die(TT_ENOMEM, "measuring this machine");
    r->gflops = model_gflops(pool, pm);
    const double job_s = measure_job(pool);
    const double matvec = model_matvec_gbs(pool, pm);
    r->jitter = measure_jitter(pool);
    r->attn_gflops = measure_attention(pool, n_threads, hp, o->w.prompt_tokens);
    tt_pool_destroy(pool);
    if (!(r->read_gbs > 0) || !(r->gflops > 0) || !(matvec > 0) || !(r->attn_gflops > 0))
        cli_die(TT_ENOMEM, "measuring this machine");
    r->bw_efficiency = fmin(1.0, matvec / r->read_gbs);
    r->overhead_us = (hp->n_expert ? 4.0 + 2.0 * hp->n_expert_used : 5.0) * job_s * 1e6;
    if (o->time_engine && cli_engine_fit(pm, &o->w, n_threads, false, r))
        snprintf(c->name, sizeof(c->name), "this machine (%s, %d threads, engine timed now)",
                 r->host, n_threads);
}

/* ---- printing ---- */

/* Cluster ranks of candidate ranks [b, e) as "0-3,5". */
static void fmt_ranks(const struct plan_candidate *cd, int b, int e, char *buf, size_t cap)
{
    int32_t ids[PLAN_CLUSTER_RANKS_MAX];
    int n = 0;
    for (int i = b; i < e; i++)
        ids[n++] = cd->ranks[i].rank;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && ids[j] < ids[j - 1]; j--) {
            int32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    size_t at = 0;
    buf[0] = 0;
    for (int i = 0; i < n && at < cap; i++) {
        int j = i;
        while (j + 1 < n && ids[j + 1] == ids[j] + 1)
            j++;
        at += (size_t)snprintf(buf + at, cap - at, j > i ? "%s%d-%d" : "%s%d", i ? "," : "", ids[i],
                               ids[j]);
        i = j;
    }
}

/* "0-3" (one stage) or "0,1|2|3" (stages), and layers per stage "27+27+26". */
static void fmt_layout(const struct plan_candidate *cd, char *ranks, size_t rcap, char *stages,
                       size_t scap)
{
    size_t ra = 0, sa = 0;
    ranks[0] = stages[0] = 0;
    for (int st = 0; st < cd->n_stages && ra < rcap && sa < scap; st++) {
        const struct plan_stage *g = &cd->stages[st];
        char part[256];
        fmt_ranks(cd, g->rank_begin, g->rank_end, part, sizeof(part));
        ra += (size_t)snprintf(ranks + ra, rcap - ra, "%s%s", st ? "|" : "", part);
        sa += (size_t)snprintf(stages + sa, scap - sa, "%s%d", st ? "+" : "",
                               g->layer_end - g->layer_begin);
    }
    if (sa > 18) { /* too long for the table: the range of stage sizes */
        int lo = INT32_MAX, hi = 0;
        for (int st = 0; st < cd->n_stages; st++) {
            lo = TT_MIN(lo, cd->stages[st].layer_end - cd->stages[st].layer_begin);
            hi = TT_MAX(hi, cd->stages[st].layer_end - cd->stages[st].layer_begin);
        }
        snprintf(stages, scap, lo == hi ? "%d x %d" : "%d x %d-%d", cd->n_stages, lo, hi);
    }
}

static double mem_frac(const struct plan_candidate *cd, const struct plan_cluster *c)
{
    double worst = 0.0;
    for (int i = 0; i < cd->n_ranks; i++)
        worst = fmax(worst, (double)cd->ranks[i].mem_bytes /
                                (c->ranks[cd->ranks[i].rank].mem_avail_gib * GIB));
    return worst;
}

struct sort_ctx {
    const struct plan_result *res;
    enum plan_objective obj;
};

/* Fitting candidates first, best first by the objective; then the index. */
static int cmp_cands(const void *pa, const void *pb, void *ctx)
{
    const struct sort_ctx *sc = ctx;
    const int a = *(const int *)pa, b = *(const int *)pb;
    const struct plan_candidate *x = &sc->res->cands[a], *y = &sc->res->cands[b];
    if (x->fits != y->fits) return x->fits ? -1 : 1;
    const double kx = sc->obj == PLAN_OBJECTIVE_DECODE ? x->decode_tok_s : -x->ttft_s;
    const double ky = sc->obj == PLAN_OBJECTIVE_DECODE ? y->decode_tok_s : -y->ttft_s;
    if (kx != ky) return kx > ky ? -1 : 1;
    return a - b;
}

static void print_table(const struct plan_result *res, const struct plan_cluster *c,
                        enum plan_objective obj)
{
    int *order = malloc(sizeof(int) * (size_t)res->n_cands);
    if (!order) cli_die(TT_ENOMEM, "printing");
    for (int i = 0; i < res->n_cands; i++)
        order[i] = i;
    struct sort_ctx sc = {res, obj};
    qsort_r(order, (size_t)res->n_cands, sizeof(int), cmp_cands, &sc);
    printf("\ncandidates (%d), best first; * chosen; memory: the fullest rank's share of its free "
           "memory\n"
           "   layout  join    ranks                 layers per stage   decode tok/s     TTFT ms  "
           "comm  memory\n",
           res->n_cands);
    for (int k = 0; k < res->n_cands; k++) {
        const struct plan_candidate *cd = &res->cands[order[k]];
        char ranks[128], stages[128];
        fmt_layout(cd, ranks, sizeof(ranks), stages, sizeof(stages));
        const bool tp = cd->layout == PLAN_LAYOUT_TP || cd->layout == PLAN_LAYOUT_HYBRID;
        printf(" %s %-7s %-7s %-21.21s %-18.18s %12.2f %11.0f  %3.0f%%  %4.0f%%%s\n",
               order[k] == res->chosen ? "*" : " ", plan_layout_name(cd->layout),
               tp ? (cd->join == PLAN_JOIN_GATHER ? "gather" : "sum") : "-", ranks, stages,
               cd->decode_tok_s, cd->ttft_s * 1e3, 100.0 * cd->comm_s / cd->decode_step_s,
               100.0 * mem_frac(cd, c), cd->fits ? "" : "  does not fit");
    }
    free(order);
}

static void fmt_range(struct plan_range r, char *buf, size_t cap)
{
    if (r.end <= r.begin)
        snprintf(buf, cap, "-");
    else
        snprintf(buf, cap, "%d-%d", r.begin, r.end - 1);
}

static void print_chosen(const struct plan_candidate *cd, const struct plan_model *pm,
                         const struct plan_cluster *c)
{
    printf("\nrank  host                stage  layers   heads    kv     ffn cols       experts  "
           "vocab rows       "
           "weights GiB  KV GiB  total/free GiB\n");
    for (int i = 0; i < cd->n_ranks; i++) {
        const struct plan_cand_rank *cr = &cd->ranks[i];
        const struct plan_stage *g = &cd->stages[cr->stage];
        char layers[32], heads[32], kv[32], ff[32], ex[32], voc[32];
        fmt_range((struct plan_range){g->layer_begin, g->layer_end}, layers, sizeof(layers));
        fmt_range(cr->slice.head, heads, sizeof(heads));
        fmt_range(cr->slice.kv, kv, sizeof(kv));
        fmt_range(pm->hp.n_expert ? cr->slice.ff_exp : cr->slice.ff, ff, sizeof(ff));
        fmt_range(cr->slice.expert, ex, sizeof(ex));
        fmt_range(cr->stage == cd->n_stages - 1 ? cr->slice.vocab : (struct plan_range){0, 0}, voc,
                  sizeof(voc));
        printf("%4d  %-19.19s %5d  %-8s %-8s %-6s %-14s %-8s %-16s %11.2f  %6.2f  %6.2f/%.2f\n",
               cr->rank, c->ranks[cr->rank].host, cr->stage, layers, heads, kv, ff,
               pm->hp.n_expert ? ex : "-", voc, (double)cr->weight_bytes / GIB,
               (double)cr->kv_bytes / GIB, (double)cr->mem_bytes / GIB,
               c->ranks[cr->rank].mem_avail_gib);
    }
}

/* Decode speed limits from bandwidth alone: the fastest rank, all ranks. */
static void bw_limits(const struct plan_model *pm, const struct plan_cluster *c, double *one,
                      double *all)
{
    const double bpt = (double)plan_model_bytes_per_token(pm);
    double best = 0.0, sum = 0.0;
    for (int r = 0; r < c->n_ranks; r++) {
        const double b = c->ranks[r].read_gbs * 1e9; /* the physical limit */
        best = fmax(best, b);
        sum += b;
    }
    *one = best / bpt;
    *all = sum / bpt;
}

static void print_verdict(const struct plan_result *res, const struct plan_model *pm,
                          const struct plan_cluster *c)
{
    const struct plan_candidate *ch = res->chosen >= 0 ? &res->cands[res->chosen] : NULL;
    const struct plan_candidate *one = res->best_single >= 0 ? &res->cands[res->best_single] : NULL;
    char ranks[128], stages[128];
    double have = 0.0, alone = 0.0;
    for (int r = 0; r < c->n_ranks; r++)
        have += c->ranks[r].mem_avail_gib;
    for (int i = 0; i < res->n_cands; i++)
        if (res->cands[i].layout == PLAN_LAYOUT_SINGLE)
            alone = fmax(alone, res->cands[i].decode_tok_s);
    if (!ch) {
        printf("\nno layout fits: the weights alone take %.1f GiB; the cluster has %.1f GiB free "
               "in all\n",
               (double)pm->file_bytes / GIB, have);
        return;
    }
    fmt_layout(ch, ranks, sizeof(ranks), stages, sizeof(stages));
    const bool piped = ch->n_stages > 1;
    printf("\nchosen: %s %s %s%s%s%s%s: %.2f tok/s, TTFT %.0f ms\n", plan_layout_name(ch->layout),
           ch->n_ranks > 1 ? "over ranks" : "on rank", ranks, piped ? " (layers " : "",
           piped ? stages : "", piped ? ")" : "",
           ch->layout == PLAN_LAYOUT_TP || ch->layout == PLAN_LAYOUT_HYBRID
               ? (ch->join == PLAN_JOIN_GATHER ? ", gather join" : ", sum join (--tp-join sum)")
               : "",
           ch->decode_tok_s, ch->ttft_s * 1e3);
    if (ch->n_ranks < c->n_ranks)
        printf("        ranks left out: %d of %d (under mpirun, --plan auto runs this layout with "
               "them idle)\n", c->n_ranks - ch->n_ranks, c->n_ranks);
    switch (res->verdict) {
    case PLAN_VERDICT_FASTER:
        printf("        %.2fx the best single rank (rank %d: %.2f tok/s, TTFT %.0f ms)\n",
               ch->decode_tok_s / one->decode_tok_s, one->ranks[0].rank, one->decode_tok_s,
               one->ttft_s * 1e3);
        break;
    case PLAN_VERDICT_SINGLE:
        if (c->n_ranks > 1)
            printf("        the cluster cannot beat one machine here: rank %d alone is predicted "
                   "fastest\n",
                   ch->ranks[0].rank);
        break;
    case PLAN_VERDICT_MEMORY:
        printf("        no rank holds the model alone: the cluster is used for its memory, in the "
               "layout\n"
               "        predicted fastest (the fastest rank, had it the memory: %.2f tok/s)\n",
               alone);
        break;
    case PLAN_VERDICT_SLOWER:
        printf("        slower than rank %d alone (%.2f tok/s): forced by --plan\n",
               one->ranks[0].rank, one->decode_tok_s);
        break;
    default:
        break;
    }
}

static void print_text(const struct plan_result *res, const struct plan_model *pm,
                       const struct plan_cluster *c, const struct plan_workload *w,
                       const char *model_desc)
{
    const struct model_hparams *hp = &pm->hp;
    double one, all, have = 0.0, bw = 0.0, flops = 0.0;
    int hosts = 0;
    bw_limits(pm, c, &one, &all);
    for (int r = 0; r < c->n_ranks; r++) {
        bool first = true;
        for (int q = 0; q < r && first; q++)
            first = !plan_cluster_same_host(c, q, r);
        hosts += first;
        have += c->ranks[r].mem_avail_gib;
        bw += c->ranks[r].read_gbs * c->ranks[r].bw_efficiency;
        flops += c->ranks[r].gflops;
    }
    printf("model:    %s\n          %d layers, %.2f GB of weights, %.2f GB read per token, KV "
           "cache %.0f KiB "
           "per position\n",
           model_desc, hp->n_layer, (double)pm->file_bytes / 1e9,
           (double)plan_model_bytes_per_token(pm) / 1e9,
           2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim * pm->kv_elem_bytes / 1024.0);
    printf("cluster:  %s\n          %d rank%s on %d host%s: %.0f GB/s of memory bandwidth, %.0f "
           "GFLOP/s, "
           "%.1f GiB free\n",
           c->name, c->n_ranks, c->n_ranks > 1 ? "s" : "", hosts, hosts > 1 ? "s" : "", bw, flops,
           have);
    printf("workload: prompt %d tokens, context %d, %d stream%s, batch %d%s; choosing for %s\n",
           w->prompt_tokens, w->n_ctx, w->n_streams, w->n_streams > 1 ? "s" : "", w->n_batch,
           w->full_logits ? ", full logits to rank 0" : "",
           w->objective == PLAN_OBJECTIVE_DECODE ? "decode tok/s" : "time to first token");
    printf(
        "limit:    decode <= %.2f tok/s on the fastest rank, <= %.2f tok/s on all ranks together\n"
        "          (memory bandwidth / bytes read per token)\n",
        one, all);
    print_verdict(res, pm, c);
    if (res->chosen >= 0) print_chosen(&res->cands[res->chosen], pm, c);
    print_table(res, c, w->objective);
}

/* ---- JSON ---- */

static json_t *jrange(struct plan_range r)
{
    return json_pack("[ii]", r.begin, r.end);
}

static json_t *cand_json(const struct plan_candidate *cd, const struct plan_cluster *c, bool detail)
{
    json_t *stages = json_array(), *ranks = json_array();
    for (int st = 0; st < cd->n_stages; st++) {
        const struct plan_stage *g = &cd->stages[st];
        json_t *ids = json_array();
        for (int i = g->rank_begin; i < g->rank_end; i++)
            json_array_append_new(ids, json_integer(cd->ranks[i].rank));
        json_array_append_new(stages,
                              json_pack("{s:o,s:[ii],s:f,s:f}", "ranks", ids, "layers",
                                        g->layer_begin, g->layer_end, "decode_ms",
                                        g->decode_s * 1e3, "prefill_ms", g->prefill_s * 1e3));
    }
    for (int i = 0; detail && i < cd->n_ranks; i++) {
        const struct plan_cand_rank *cr = &cd->ranks[i];
        json_array_append_new(
            ranks, json_pack("{s:i,s:s,s:i,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:f,s:f,s:f,s:f}", "rank",
                             cr->rank, "host", c->ranks[cr->rank].host, "stage", cr->stage, "heads",
                             jrange(cr->slice.head), "kv_heads", jrange(cr->slice.kv), "embd_rows",
                             jrange(cr->slice.embd), "ffn_cols", jrange(cr->slice.ff), "experts",
                             jrange(cr->slice.expert), "expert_ffn_cols", jrange(cr->slice.ff_exp),
                             "vocab_rows", jrange(cr->slice.vocab), "weights_gib",
                             (double)cr->weight_bytes / GIB, "kv_gib", (double)cr->kv_bytes / GIB,
                             "mem_gib", (double)cr->mem_bytes / GIB, "mem_avail_gib",
                             c->ranks[cr->rank].mem_avail_gib));
    }
    json_t *o = json_pack(
        "{s:s,s:s,s:o,s:b,s:f,s:f,s:f,s:f,s:f}", "layout", plan_layout_name(cd->layout), "join",
        cd->join == PLAN_JOIN_GATHER ? "gather" : "sum", "stages", stages, "fits", cd->fits,
        "decode_tok_s", cd->decode_tok_s, "decode_step_ms", cd->decode_step_s * 1e3, "ttft_ms",
        cd->ttft_s * 1e3, "comm_ms", cd->comm_s * 1e3, "mem_frac", mem_frac(cd, c));
    if (detail)
        json_object_set_new(o, "ranks", ranks);
    else
        json_decref(ranks);
    return o;
}

/* The cluster as a description plan_cluster_parse reads back: save this
 * machine's measurement with `tutti plan --json | jq .cluster`. */
static json_t *cluster_json(const struct plan_cluster *c)
{
    json_t *ranks = json_array(), *links = json_array();
    for (int r = 0; r < c->n_ranks; r++) {
        const struct plan_hw_rank *h = &c->ranks[r];
        json_t *o = json_pack("{s:s,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "host", h->host, "read_gbs",
                              h->read_gbs, "bw_efficiency", h->bw_efficiency, "gflops", h->gflops,
                              "attn_gflops", h->attn_gflops, "mem_total_gib", h->mem_total_gib,
                              "mem_avail_gib", h->mem_avail_gib, "overhead_us", h->overhead_us);
        if (o && h->device[0]) json_object_set_new(o, "device", json_string(h->device));
        if (o && h->jitter > 0) json_object_set_new(o, "jitter", json_real(h->jitter));
        if (o && h->step_overhead_us > 0)
            json_object_set_new(o, "step_overhead_us", json_real(h->step_overhead_us));
        if (o && h->token_overhead_us > 0)
            json_object_set_new(o, "token_overhead_us", json_real(h->token_overhead_us));
        if (o && h->host_read_gbs > 0)
            json_object_set_new(o, "host_read_gbs", json_real(h->host_read_gbs));
        if (o && h->host_gflops > 0)
            json_object_set_new(o, "host_gflops", json_real(h->host_gflops));
        json_array_append_new(ranks, o);
        for (int b = r + 1; b < c->n_ranks; b++) {
            json_t *l = json_pack("{s:i,s:i,s:f,s:f,s:f}", "a", r, "b", b, "latency_us",
                                  c->links[r][b].latency_us, "bandwidth_gbs",
                                  c->links[r][b].bandwidth_gbs, "bandwidth_both_gbs",
                                  plan_link_both_gbs(&c->links[r][b]));
            if (l && c->links[r][b].burst_kib > 0)
                json_object_set_new(l, "burst_kib", json_real(c->links[r][b].burst_kib));
            json_array_append_new(links, l);
        }
    }
    return json_pack("{s:s,s:o,s:o}", "name", c->name, "ranks", ranks, "links", links);
}

static void print_json(const struct plan_result *res, const struct plan_model *pm,
                       const struct plan_cluster *c, const struct plan_workload *w,
                       const char *model_desc)
{
    static const char *const verdicts[PLAN_VERDICT_COUNT] = {"faster", "single", "memory", "no_fit",
                                                             "slower"};
    double one, all;
    bw_limits(pm, c, &one, &all);
    json_t *cands = json_array();
    for (int i = 0; i < res->n_cands; i++)
        json_array_append_new(cands, cand_json(&res->cands[i], c, false));
    json_t *root = json_pack(
        "{s:{s:s,s:I,s:I,s:i},s:o,s:{s:i,s:i,s:i,s:i,s:s,s:b},s:{s:f,s:f},s:s,s:o,s:o,s:o,s:o}",
        "model", "name", model_desc, "weight_bytes", (json_int_t)pm->file_bytes, "bytes_per_token",
        (json_int_t)plan_model_bytes_per_token(pm), "n_layer", pm->hp.n_layer, "cluster",
        cluster_json(c), "workload", "prompt_tokens", w->prompt_tokens, "n_ctx", w->n_ctx,
        "n_batch", w->n_batch, "n_streams", w->n_streams, "objective",
        w->objective == PLAN_OBJECTIVE_DECODE ? "decode" : "ttft", "full_logits", w->full_logits,
        "bandwidth_limit_tok_s",
        "one_rank", one, "all_ranks", all, "verdict", verdicts[res->verdict], "chosen",
        res->chosen >= 0 ? json_integer(res->chosen) : json_null(), "best_single",
        res->best_single >= 0 ? json_integer(res->best_single) : json_null(), "chosen_layout",
        res->chosen >= 0 ? cand_json(&res->cands[res->chosen], c, true) : json_null(), "candidates",
        cands);
    if (!root) cli_die(TT_ENOMEM, "building the JSON output");
    json_dumpf(root, stdout, JSON_COMPACT | JSON_REAL_PRECISION(6));
    putchar('\n');
    json_decref(root);
}

int cmd_plan(int argc, char **argv)
{
    struct plan_opts o;
    memset(&o, 0, sizeof(o));
    plan_workload_default(&o.w);
    o.w.n_ctx = ENGINE_CTX_DEFAULT;
    o.w.n_batch = ENGINE_BATCH_DEFAULT;
    parse_args(argc, argv, &o);
    struct plan_model pm;
    char desc[PATH_MAX_DESC];
    load_model(&o, &pm, desc, sizeof(desc));
    struct plan_cluster *c = calloc(1, sizeof(*c));
    if (!c) cli_die(TT_ENOMEM, "planning");
    if (o.cluster_path) {
        cli_load_cluster(o.cluster_path, c);
        plan_cluster_for_model(c, &pm); /* per-type product speeds, where `tutti topo` gave them */
    } else
        this_machine(&o, &pm, c);
    struct plan_result res;
    int err = plan_search(&res, &pm, c, &o.w);
    if (err) cli_die(err, "planning");
    if (o.json)
        print_json(&res, &pm, c, &o.w, desc);
    else
        print_text(&res, &pm, c, &o.w, desc);
    plan_result_free(&res);
    free(c);
    plan_model_free(&pm);
    return 0;
}
