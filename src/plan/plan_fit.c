/*
 * plan_fit.c: a rank described by timing the engine itself.
 *
 * A description built from kernel benchmarks (copy bandwidth, one large
 * product, one small kernel) misses much of what a layer costs on a GPU: a
 * dozen small latency-bound kernels, attention, MoE routing and its expert
 * tiles, the host's part of a step. `tutti plan` on a GPU therefore runs the
 * engine on two models of the target's shape that differ only in their
 * layer count (n and 2n), and this file turns those wall-clock times into the
 * rank's figures. The cost model is linear in the fitted figures wherever a
 * step stays on one side of its max(bytes, flops) (a decode step on the
 * bytes' side, a prompt chunk on the flops' side), so each figure is solved
 * from the planner's own predictions at probe points, never from a second
 * copy of its formulas:
 *
 *   decode(model)  = base(model) + layers(model) * overhead + step
 *       the two models give `overhead_us` (per layer and pass) and
 *       `step_overhead_us` (per pass); base is the prediction without them;
 *   prompt(2 layers) - prompt(1 layer) = products / gflops
 *                                      + attention / attn_gflops + rest
 *       at two prompt lengths (products grow with the tokens, attention
 *       with their square) gives both speeds; the slopes come from probes.
 *       When noise makes that split implausible, one factor scales both
 *       speeds (keeping the ratio the kernels measured) to the longer prompt.
 *   prompt(model, length) - its prediction = tokens * token_overhead
 *       what the four prompts take beyond their layers and the step's
 *       fixed cost grows with their tokens (the host's embedding rows and
 *       RoPE tables, the residual rows' copies to and from a device):
 *       least squares over the four, through zero. The differences above
 *       do not see it (both models run the same tokens).
 *
 * The decode fit depends on the attention speed (a little) and the token
 * overhead (one token's worth), the prompt fits on the overheads, so the
 * three alternate a few times; each round's probes are taken around the
 * previous round's figures.
 *
 * Pure: no I/O, no clock, no globals; the same inputs give the same figures.
 */
#include "plan_cost.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIT_ROUNDS 6
#define FIT_MEM_GIB 1e6   /* the predictions only need the models to fit */
#define FIT_FIGURE_MAX 1e6 /* the overheads' microseconds, as plan_cluster_check allows */
#define FIT_GFLOPS_MAX 1e9
/* The two speeds are taken apart only if products come out at most this
 * many times faster than the kernel measured alone, and attention no faster
 * than products (as on every CPU and GPU measured: vector loops or fused
 * kernels against matrix units); else noise decided the split. */
#define FIT_OVER_KERNEL 2.0

struct fit {
    const struct plan_engine_times *t;
    struct plan_cluster *c; /* one rank: the description under test */
    double kernel_gflops;   /* the description's gflops before the fit */
};

/* The planner's decode step and TTFT of model m, prompt of P tokens, on
 * rank h alone. */
static int predict(struct fit *f, const struct plan_hw_rank *h, int m, int32_t P, double *decode_s,
                   double *ttft_s)
{
    struct plan_workload w;
    plan_workload_default(&w);
    w.prompt_tokens = w.n_ctx = P;
    w.n_batch = f->t->n_batch;
    w.n_streams = 1;
    w.layouts = 1u << PLAN_LAYOUT_SINGLE;
    struct plan_hw_rank *r = &f->c->ranks[0];
    *r = *h;
    r->mem_avail_gib = r->mem_total_gib = FIT_MEM_GIB;
    if (!r->host[0]) strcpy(r->host, "rank");
    struct plan_result res;
    int err = plan_search(&res, f->t->model[m], f->c, &w);
    if (err) return err;
    TT_ASSERT(res.best_single >= 0);
    *decode_s = res.cands[res.best_single].decode_step_s;
    *ttft_s = res.cands[res.best_single].ttft_s;
    plan_result_free(&res);
    return 0;
}

/* Per-layer and per-pass overheads from the two models' decode steps. */
static int fit_decode(struct fit *f, struct plan_hw_rank *h)
{
    const struct plan_engine_times *t = f->t;
    struct plan_hw_rank z = *h;
    z.overhead_us = z.step_overhead_us = 0.0;
    double rest[2], layers[2], ttft;
    for (int m = 0; m < 2; m++) {
        double base;
        int err = predict(f, &z, m, t->prompt_tokens[1], &base, &ttft);
        if (err) return err;
        rest[m] = t->decode_s[m] - base;
        layers[m] = t->model[m]->hp.n_layer;
    }
    double O = (rest[1] - rest[0]) / (layers[1] - layers[0]), S = rest[0] - layers[0] * O;
    if (O < 0) { /* the extra layer cost less than its bytes predict: no overhead */
        O = 0.0;
        S = (rest[0] + rest[1]) / 2.0;
    }
    if (S < 0) {
        S = 0.0;
        O = fmax(0.0, (rest[0] + rest[1]) / (layers[0] + layers[1]));
    }
    h->overhead_us = fmin(FIT_FIGURE_MAX, O * 1e6);
    h->step_overhead_us = fmin(FIT_FIGURE_MAX, S * 1e6);
    return 0;
}

/* The predicted prompt time of the second model less the first's, prompt
 * length j, with the given speeds. */
static int layers_prompt_s(struct fit *f, const struct plan_hw_rank *h, double gflops,
                           double attn_gflops, int j, double *d)
{
    struct plan_hw_rank x = *h;
    x.gflops = gflops;
    x.attn_gflops = attn_gflops;
    double dec, p[2];
    for (int m = 0; m < 2; m++) {
        int err = predict(f, &x, m, f->t->prompt_tokens[j], &dec, &p[m]);
        if (err) return err;
    }
    *d = p[1] - p[0];
    return 0;
}

/* gflops and attn_gflops from the prompts: per length j the predicted
 * difference is m_j / gflops + a_j / attn_gflops + c_j; m, a and c come
 * from probes around the current speeds (each halved in turn). Two lengths
 * give both speeds when the split is plausible (FIT_OVER_KERNEL); else both
 * are scaled by one factor that reproduces the longer prompt, keeping their
 * ratio. Keeps the current speeds when no positive solution exists (a
 * prompt on the bytes' side of the model). */
static int fit_prompt(struct fit *f, struct plan_hw_rank *h)
{
    const struct plan_engine_times *t = f->t;
    const double F0 = h->gflops, A0 = h->attn_gflops;
    double m[2], a[2], want[2];
    for (int j = 0; j < 2; j++) {
        double d0, dF, dA;
        int err = layers_prompt_s(f, h, F0, A0, j, &d0);
        if (!err) err = layers_prompt_s(f, h, F0 / 2.0, A0, j, &dF);
        if (!err) err = layers_prompt_s(f, h, F0, A0 / 2.0, j, &dA);
        if (err) return err;
        m[j] = (dF - d0) * F0; /* per unit of 1 / gflops */
        a[j] = (dA - d0) * A0;
        const double c = d0 - m[j] / F0 - a[j] / A0;
        want[j] = t->prompt_s[1][j] - t->prompt_s[0][j] - c;
    }
    double u = 0.0, v = 0.0; /* 1 / gflops, 1 / attn_gflops */
    const double det = m[0] * a[1] - m[1] * a[0];
    bool ok = false;
    if (t->prompt_tokens[0] != t->prompt_tokens[1] && fabs(det) > 1e-9 * fabs(m[0] * a[1])) {
        u = (want[0] * a[1] - want[1] * a[0]) / det;
        v = (m[0] * want[1] - m[1] * want[0]) / det;
        ok = u > 0 && v >= u * (1.0 - 1e-9) && 1.0 / u <= FIT_OVER_KERNEL * f->kernel_gflops;
    }
    const double base = m[1] / F0 + a[1] / A0; /* the longer prompt's speed-bound part now */
    if (!ok && base > 0 && want[1] > 0) {     /* one factor for both */
        const double scale = base / want[1];
        u = 1.0 / (F0 * scale);
        v = 1.0 / (A0 * scale);
        ok = true;
    }
    if (!ok) return 0;
    h->gflops = fmin(FIT_GFLOPS_MAX, 1.0 / u);
    h->attn_gflops = fmin(FIT_GFLOPS_MAX, 1.0 / v);
    return 0;
}

/* token_overhead_us from the prompts' residuals: each prompt's prediction
 * grows by g seconds per microsecond of it (probed); the least-squares
 * change over the four prompts, kept at 0 or more. */
static int fit_tokens(struct fit *f, struct plan_hw_rank *h)
{
    const struct plan_engine_times *t = f->t;
    struct plan_hw_rank x = *h;
    x.token_overhead_us = h->token_overhead_us + 1.0;
    double gr = 0.0, gg = 0.0;
    for (int m = 0; m < 2; m++)
        for (int j = 0; j < 2; j++) {
            double dec, p0, p1;
            int err = predict(f, h, m, t->prompt_tokens[j], &dec, &p0);
            if (!err) err = predict(f, &x, m, t->prompt_tokens[j], &dec, &p1);
            if (err) return err;
            gr += (p1 - p0) * (t->prompt_s[m][j] - p0);
            gg += (p1 - p0) * (p1 - p0);
        }
    if (gg > 0)
        h->token_overhead_us = fmin(FIT_FIGURE_MAX, fmax(0.0, h->token_overhead_us + gr / gg));
    return 0;
}

static int check_times(const struct plan_engine_times *t)
{
    bool ok = t->model[0] && t->model[1] && t->n_batch >= 1 && t->prompt_tokens[0] >= 1 &&
              t->prompt_tokens[1] >= t->prompt_tokens[0];
    for (int m = 0; m < 2 && ok; m++) {
        ok = isfinite(t->decode_s[m]) && t->decode_s[m] > 0;
        for (int j = 0; j < 2 && ok; j++)
            ok = isfinite(t->prompt_s[m][j]) && t->prompt_s[m][j] > 0;
    }
    if (!ok)
        return tt_error_set(TT_EINVAL, "engine times: missing models, or times, prompt lengths "
                                       "or batch not positive");
    const struct model_hparams *a = &t->model[0]->hp, *b = &t->model[1]->hp;
    if (a->n_layer >= b->n_layer)
        return tt_error_set(TT_EINVAL, "engine times: the second model must have more layers "
                                       "(%d, %d)", a->n_layer, b->n_layer);
    if (a->arch != b->arch || a->n_embd != b->n_embd || a->n_head != b->n_head ||
        a->n_head_kv != b->n_head_kv || a->head_dim != b->head_dim || a->n_ff != b->n_ff ||
        a->n_vocab != b->n_vocab || a->n_expert != b->n_expert ||
        a->n_expert_used != b->n_expert_used || a->n_ff_exp != b->n_ff_exp ||
        a->n_ff_shexp != b->n_ff_shexp)
        return tt_error_set(TT_EINVAL, "engine times: the two models differ in more than "
                                       "their layer count");
    return 0;
}

/* The largest relative difference between the predicted and measured times. */
static int worst_difference(struct fit *f, const struct plan_hw_rank *h, double *worst)
{
    const struct plan_engine_times *t = f->t;
    *worst = 0.0;
    for (int m = 0; m < 2; m++)
        for (int j = 0; j < 2; j++) {
            double dec, ttft;
            int err = predict(f, h, m, t->prompt_tokens[j], &dec, &ttft);
            if (err) return err;
            *worst = fmax(*worst, fabs(ttft - t->prompt_s[m][j]) / t->prompt_s[m][j]);
            if (j == 1) *worst = fmax(*worst, fabs(dec - t->decode_s[m]) / t->decode_s[m]);
        }
    return 0;
}

int plan_fit_engine(struct plan_hw_rank *h, const struct plan_engine_times *t, double *worst_rel)
{
    int err = check_times(t);
    if (err) return err;
    struct fit f = {t, calloc(1, sizeof(struct plan_cluster)), h->gflops};
    if (!f.c) return tt_error_set(TT_ENOMEM, "out of memory for the planner");
    f.c->n_ranks = 1;
    strcpy(f.c->name, "engine fit");
    struct plan_hw_rank g = *h;
    for (int round = 0; round < FIT_ROUNDS && !err; round++) {
        err = fit_decode(&f, &g);
        if (!err) err = fit_prompt(&f, &g);
        if (!err) err = fit_tokens(&f, &g);
    }
    if (!err) err = fit_decode(&f, &g); /* the overheads for the final speeds */
    if (!err) err = worst_difference(&f, &g, worst_rel);
    if (!err) *h = g;
    free(f.c);
    return err;
}
