/*
 * test_plan_fit.c: plan_fit_engine, a rank's figures fitted to the engine's
 * own times on two models of one shape (what `tutti plan` does on a GPU).
 *
 * The engine's times are stood in for by the cost model's predictions for
 * a known rank ("the truth"): fitting a rank that starts from other figures
 * must give the truth back (including the prompts' cost per token outside
 * the layers), and with it the full model's predictions; with
 * one prompt length, or an implausible split, one factor scales both
 * speeds; with times the model cannot reproduce (a layer cheaper than its
 * bytes), figures clamped at 0 that still pass the cluster check; bad
 * inputs are refused.
 */
#include "test.h"

#include "plan/plan_cost.h"

static struct model_hparams shape(enum model_arch arch, int E, int L, int H, int KV, int ff,
                                  int vocab, int X, int K, int ffe)
{
    return (struct model_hparams){.arch = arch,
                                  .n_embd = E,
                                  .n_layer = L,
                                  .n_head = H,
                                  .n_head_kv = KV,
                                  .head_dim = 128,
                                  .n_ff = ff,
                                  .n_vocab = vocab,
                                  .n_ctx_train = 4096,
                                  .n_rot = 128,
                                  .rope_base = 10000.0f,
                                  .rms_eps = 1e-5f,
                                  .n_expert = X,
                                  .n_expert_used = K,
                                  .n_ff_exp = ffe};
}

static struct model_hparams llama_8b(int L)
{
    return shape(MODEL_ARCH_LLAMA, 4096, L, 32, 8, 14336, 128256, 0, 0, 0);
}

static struct model_hparams qwen3_moe(int L)
{
    return shape(MODEL_ARCH_QWEN3MOE, 2048, L, 32, 4, 6144, 151936, 128, 8, 768);
}

/* An H200-like rank as the engine behaves (the truth) and as its kernels
 * alone describe it (where a fit starts). */
static struct plan_hw_rank gpu_truth(void)
{
    return (struct plan_hw_rank){.host = "gpu",
                                 .read_gbs = 4250,
                                 .bw_efficiency = 0.62,
                                 .gflops = 60000,
                                 .attn_gflops = 9000,
                                 .mem_avail_gib = 130,
                                 .mem_total_gib = 139,
                                 .overhead_us = 45,
                                 .step_overhead_us = 180,
                                 .token_overhead_us = 6};
}

static struct plan_hw_rank gpu_kernels(void)
{
    struct plan_hw_rank r = gpu_truth();
    r.gflops = r.attn_gflops = 230000;
    r.overhead_us = 5;
    r.step_overhead_us = r.token_overhead_us = 0;
    return r;
}

/* The cost model's decode step and TTFT for pm on rank h alone. */
static void predict(const struct plan_model *pm, const struct plan_hw_rank *h, int prompt,
                    int batch, double *decode_s, double *ttft_s)
{
    struct plan_cluster *c = calloc(1, sizeof(*c));
    TT_ASSERT(c);
    c->n_ranks = 1;
    snprintf(c->name, sizeof(c->name), "one rank");
    c->ranks[0] = *h;
    struct plan_workload w;
    plan_workload_default(&w);
    w.prompt_tokens = w.n_ctx = prompt;
    w.n_batch = batch;
    struct plan_result res;
    CHECK_EQ_INT(plan_search(&res, pm, c, &w), 0);
    CHECK(res.best_single >= 0);
    *decode_s = res.cands[res.best_single].decode_step_s;
    *ttft_s = res.cands[res.best_single].ttft_s;
    plan_result_free(&res);
    free(c);
}

/* What the engine would measure on `truth` for models pm[0] and pm[1]. */
static struct plan_engine_times times_of(const struct plan_model *pm, int p0, int p1, int batch,
                                         const struct plan_hw_rank *truth)
{
    struct plan_engine_times t = {.model = {&pm[0], &pm[1]},
                                  .prompt_tokens = {p0, p1},
                                  .n_batch = batch};
    double dec;
    for (int m = 0; m < 2; m++) {
        predict(&pm[m], truth, p0, batch, &dec, &t.prompt_s[m][0]);
        predict(&pm[m], truth, p1, batch, &t.decode_s[m], &t.prompt_s[m][1]);
    }
    return t;
}

static bool models(struct plan_model *pm, struct model_hparams hp, int n0, int n1)
{
    hp.n_layer = n0;
    int err = plan_model_from_shape(&pm[0], &hp, TT_TYPE_Q4_K, true, false);
    hp.n_layer = n1;
    if (!err) err = plan_model_from_shape(&pm[1], &hp, TT_TYPE_Q4_K, true, false);
    CHECK_EQ_INT(err, 0);
    return err == 0;
}

#define REL(a, b) (fabs((a) - (b)) / fabs(b))

/* Fit from the kernel figures to the truth's times: the truth comes back,
 * and the whole model is predicted as the truth predicts it. */
static void fit_shape(struct model_hparams target, int n0, int prompt, int batch)
{
    struct plan_model pm[2], full;
    if (!models(pm, target, n0, 2 * n0)) return;
    const struct plan_hw_rank truth = gpu_truth();
    const struct plan_engine_times t = times_of(pm, prompt / 2, prompt, batch, &truth);
    struct plan_hw_rank h = gpu_kernels();
    double worst = 1.0;
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), 0);
    CHECK(worst < 1e-6);
    CHECK(REL(h.overhead_us, truth.overhead_us) < 1e-4);
    CHECK(REL(h.step_overhead_us, truth.step_overhead_us) < 1e-4);
    CHECK(REL(h.token_overhead_us, truth.token_overhead_us) < 1e-4);
    CHECK(REL(h.gflops, truth.gflops) < 1e-4);
    CHECK(REL(h.attn_gflops, truth.attn_gflops) < 1e-4);
    CHECK_EQ_INT(h.read_gbs, truth.read_gbs);
    CHECK_EQ_INT(h.mem_avail_gib, truth.mem_avail_gib);
    CHECK_EQ_INT(plan_model_from_shape(&full, &target, TT_TYPE_Q4_K, true, false), 0);
    double d_fit, p_fit, d_true, p_true;
    predict(&full, &h, prompt, batch, &d_fit, &p_fit);
    predict(&full, &truth, prompt, batch, &d_true, &p_true);
    CHECK(REL(d_fit, d_true) < 1e-6);
    CHECK(REL(p_fit, p_true) < 1e-6);
    plan_model_free(&full);
    plan_model_free(&pm[1]);
    plan_model_free(&pm[0]);
}

static void test_dense_recovered(void)
{
    fit_shape(llama_8b(32), 3, 512, 512);
    fit_shape(llama_8b(32), 1, 512, 256); /* two chunks: the second attends over the first */
}

static void test_moe_recovered(void)
{
    fit_shape(qwen3_moe(12), 1, 512, 512);
}

/* One prompt length: products and attention get one speed, which
 * reproduces that prompt. */
static void test_one_length(void)
{
    struct plan_model pm[2];
    if (!models(pm, llama_8b(32), 1, 2)) return;
    struct plan_hw_rank truth = gpu_truth();
    truth.attn_gflops = truth.gflops;
    const struct plan_engine_times t = times_of(pm, 256, 256, 256, &truth);
    struct plan_hw_rank h = gpu_kernels();
    double worst = 1.0;
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), 0);
    CHECK_EQ_INT(h.gflops, h.attn_gflops);
    CHECK(REL(h.gflops, truth.gflops) < 1e-4);
    CHECK(worst < 1e-6);
    plan_model_free(&pm[1]);
    plan_model_free(&pm[0]);
}

/* Times whose split between products and attention is implausible
 * (attention faster than products, as noise can make it): both speeds are
 * scaled by one factor, keeping the kernels' ratio, and the longer prompt's
 * layers are reproduced. */
static void test_implausible_split(void)
{
    struct plan_model pm[2];
    if (!models(pm, llama_8b(32), 1, 2)) return;
    struct plan_hw_rank truth = gpu_truth();
    truth.attn_gflops = 3.0 * truth.gflops;
    const struct plan_engine_times t = times_of(pm, 256, 512, 512, &truth);
    struct plan_hw_rank h = gpu_kernels();
    h.attn_gflops = h.gflops / 4.0;
    double worst = 1.0, dec, p0, p1;
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), 0);
    CHECK(REL(h.gflops / h.attn_gflops, 4.0) < 1e-9);
    predict(&pm[0], &h, 512, 512, &dec, &p0);
    predict(&pm[1], &h, 512, 512, &dec, &p1);
    CHECK(REL(p1 - p0, t.prompt_s[1][1] - t.prompt_s[0][1]) < 1e-6);
    plan_model_free(&pm[1]);
    plan_model_free(&pm[0]);
}

/* Times the cost model cannot reproduce: the second model's extra layers
 * take less than their bytes at the rank's bandwidth (a cache), and a
 * prompt faster at twice the length. The figures clamp at 0, stay in
 * range, and the difference left is reported. */
static void test_unreachable_times(void)
{
    struct plan_model pm[2];
    if (!models(pm, llama_8b(32), 1, 2)) return;
    const struct plan_hw_rank truth = gpu_truth();
    struct plan_engine_times t = times_of(pm, 256, 512, 512, &truth);
    t.decode_s[1] = t.decode_s[0] * 1.01;
    t.prompt_s[1][1] = t.prompt_s[0][1] * 1.001;
    struct plan_hw_rank h = gpu_kernels();
    double worst = 0.0;
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), 0);
    CHECK(h.overhead_us >= 0 && h.step_overhead_us >= 0);
    CHECK(h.gflops > 0 && h.attn_gflops > 0);
    CHECK(worst > 0.1);
    struct plan_cluster *c = calloc(1, sizeof(*c));
    TT_ASSERT(c);
    c->n_ranks = 1;
    c->ranks[0] = h;
    CHECK_EQ_INT(plan_cluster_check(c), 0);
    free(c);
    plan_model_free(&pm[1]);
    plan_model_free(&pm[0]);
}

static void test_bad_inputs(void)
{
    struct plan_model pm[2], other[2];
    if (!models(pm, llama_8b(32), 1, 2) || !models(other, qwen3_moe(12), 1, 2)) return;
    const struct plan_hw_rank truth = gpu_truth();
    const struct plan_engine_times good = times_of(pm, 256, 512, 512, &truth);
    struct plan_hw_rank h = gpu_kernels();
    const struct plan_hw_rank before = h;
    double worst;
    struct plan_engine_times t = good;
    t.model[0] = &pm[1], t.model[1] = &pm[0]; /* more layers first */
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), TT_EINVAL);
    t = good;
    t.model[1] = &other[1]; /* another shape */
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), TT_EINVAL);
    t = good;
    t.decode_s[1] = 0.0;
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), TT_EINVAL);
    t = good;
    t.prompt_s[0][1] = NAN;
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), TT_EINVAL);
    t = good;
    t.prompt_tokens[0] = 1024; /* longer than the second */
    CHECK_EQ_INT(plan_fit_engine(&h, &t, &worst), TT_EINVAL);
    CHECK(!memcmp(&h, &before, sizeof(h))); /* untouched on error */
    tt_error_clear();
    for (int m = 0; m < 2; m++) {
        plan_model_free(&pm[m]);
        plan_model_free(&other[m]);
    }
}

static const struct test_case cases[] = {
    {"dense_recovered", test_dense_recovered},
    {"moe_recovered", test_moe_recovered},
    {"one_length", test_one_length},
    {"implausible_split", test_implausible_split},
    {"unreachable_times", test_unreachable_times},
    {"bad_inputs", test_bad_inputs},
};

TEST_MAIN(cases)
