/*
 * plan_cost.c: the cost model and the planner (see plan_cost.h for the
 * contract, docs/PLANNER.md for the formulas with worked examples; the
 * model's bytes and multiply-adds come from plan_model.c).
 *
 * The model, in one paragraph. A rank's time for one layer and n tokens is
 *     max(bytes / (read_gbs * bw_efficiency), flops / gflops)
 *     + attention_flops / attn_gflops + overhead
 * plus, once per forward pass (decode step, prompt chunk), a fixed step
 * overhead and a cost per token of the pass (embedding, staging copies); bytes are the weights of its slice (experts: those the tokens
 * touch) plus the KV cache it reads, flops are 2 per weight and token, and the
 * attention products (query-key dots, softmax, value sums) run at their own
 * speed: on CPUs they are vector loops, far slower than matrix products. A
 * tensor-parallel group takes the slowest member's
 * time plus its joins: per layer 4 all-gathers (gather join) or 2
 * all-reduces (sum join); a collective of k ranks costs
 *     steps * latency + (k-1)/k * bytes / bandwidth
 * with steps = ceil(log2 k) for small blocks (< 64 KiB per rank) and k-1 for
 * large ones, over the group's slowest link (largest latency, smallest
 * bandwidth). A pipeline adds its stages' times and one activation send per
 * stage boundary: a single stream gets no speedup from it, only memory.
 * Stages get contiguous layers: for one stream the split that minimizes the
 * sum of stage times under the memory limits (exact, by dynamic programming
 * over layers); for several streams the one that minimizes the slowest stage
 * (micro-batches keep the stages busy).
 *
 * Invariants (plan_cost.h) are asserted in choose() and check_candidate().
 * Nothing here reads a clock, a file or a global: the same inputs give the
 * same bytes out.
 */
#include "plan_cost.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GIB 1073741824.0
#define PLAN_CTX_DEFAULT 4096  /* as ENGINE_CTX_DEFAULT */
#define PLAN_BATCH_DEFAULT 256 /* as ENGINE_BATCH_DEFAULT */
#define PLAN_PROMPT_DEFAULT 512
#define PLAN_MOE_SPARE_SLOTS 2       /* engine_opts.moe_replicas default: hot-expert copies */
#define PLAN_SMALL_BLOCK_BYTES 65536 /* below: latency-bound collectives (log2 k steps) */
/* sampling candidates a rank sends per token (engine_dist.c): 8-byte (id,
 * logit) pairs, run's default top-k of them (40; greedy sends 1) */
#define PLAN_CAND_BYTES (8 * 40)
#define PLAN_CHUNK_SAMPLES 64        /* prompt chunks evaluated one by one at most */
#define PLAN_PARTITIONS_MAX 16
#define PLAN_LATENCY_BREAK 1.5 /* links this much slower than the last start a new level */

/* ================================================================
 * Costs: links, collectives, one rank's layer, memory
 * ================================================================ */

/* A group's slowest link: the largest latency and the smallest bandwidths,
 * one way (sends, broadcasts and gathers to one rank) and each way while
 * both carry data (all-gathers and all-reduces: every rank sends and
 * receives at once). */
struct net {
    int k;
    double lat_s, bw_bps, bw2_bps;
    double burst_bytes; /* the smallest token bucket of its links (0: none) */
};

static struct net pairs_net(const struct plan_cluster *c, const int32_t *a, int ka,
                            const int32_t *b, int kb)
{
    struct net n = {2, 0.0, INFINITY, INFINITY, INFINITY};
    for (int i = 0; i < ka; i++)
        for (int j = 0; j < kb; j++) {
            if (a[i] == b[j]) continue;
            const struct plan_link *l = &c->links[a[i]][b[j]];
            n.lat_s = fmax(n.lat_s, l->latency_us * 1e-6);
            n.bw_bps = fmin(n.bw_bps, l->bandwidth_gbs * 1e9);
            n.bw2_bps = fmin(n.bw2_bps, plan_link_both_gbs(l) * 1e9);
            n.burst_bytes = fmin(n.burst_bytes, l->burst_kib * 1024.0);
        }
    if (isinf(n.bw_bps)) n.k = 1; /* one rank: nothing to cross */
    if (isinf(n.burst_bytes)) n.burst_bytes = 0.0;
    return n;
}

static struct net group_net(const struct plan_cluster *c, const int32_t *ranks, int k)
{
    struct net n = pairs_net(c, ranks, k, ranks, k);
    n.k = k;
    return n;
}

static double coll_steps(int k, double block_bytes)
{
    return block_bytes < PLAN_SMALL_BLOCK_BYTES ? ceil(log2((double)k)) : (double)(k - 1);
}

/* The bandwidth a collective's blocks see: both ways at once for large
 * blocks; a small block's bytes leave within TCP's first window, before any
 * acknowledgement is needed, so the reverse direction's traffic (which
 * acknowledgements queue behind) does not slow them: the one-way rate. */
static double coll_bw(const struct net *n, double block_bytes)
{
    return block_bytes < PLAN_SMALL_BLOCK_BYTES ? n->bw_bps : n->bw2_bps;
}

/* The time `bytes` in one direction take beyond the latency at `bw`, when
 * the link has had gap_s since its last message (the work between two joins
 * or two steps): a token bucket (burst_bytes, refilled at the one-way rate)
 * passes what it holds at once, the rest at the rate. */
static double xfer_s(const struct net *n, double bytes, double bw, double gap_s)
{
    const double held = fmin(n->burst_bytes, n->bw_bps * gap_s);
    return fmax(0.0, bytes - held) / bw;
}

/* All-gather of total_bytes (each rank contributes its part) after gap_s. */
static double allgather_s(const struct net *n, double total_bytes, double gap_s)
{
    if (n->k <= 1) return 0.0;
    const double k = n->k;
    return coll_steps(n->k, total_bytes / k) * n->lat_s +
           xfer_s(n, (k - 1) / k * total_bytes, coll_bw(n, total_bytes / k), gap_s);
}

/* comm_allreduce_sum of `bytes` per rank (F32 wire), as comm.h describes it:
 * reduce-scatter + all-gather from 64 KiB when that moves fewer bytes,
 * else every rank gathers every contribution. */
static double allreduce_s(const struct net *n, double bytes, double gap_s)
{
    if (n->k <= 1) return 0.0;
    const double k = n->k;
    if (bytes >= PLAN_SMALL_BLOCK_BYTES && n->k > 2)
        return 2.0 * coll_steps(n->k, bytes / k) * n->lat_s +
               xfer_s(n, 2.0 * (k - 1) / k * bytes, coll_bw(n, bytes / k), gap_s);
    return coll_steps(n->k, bytes) * n->lat_s + xfer_s(n, (k - 1) * bytes, coll_bw(n, bytes), gap_s);
}

/* One message of `bytes` one way, gap_s after the link's last one. */
static double send_s(const struct net *n, double bytes, double gap_s)
{
    return n->k <= 1 ? 0.0 : n->lat_s + xfer_s(n, bytes, n->bw_bps, gap_s);
}

/* Expected experts of one token on the busiest of k equally likely ranks
 * (K balls into k bins): sum over m of P(max > m), with P(max <= m) =
 * K!/k^K [x^K] (sum_{j<=m} x^j/j!)^k. Beyond 16 experts, a normal bound. */
static double expected_max_load(int K, int k)
{
    if (K <= 1 || k <= 1) return K < 0 ? 0.0 : (double)K;
    if (K > 16) return fmin(K, (double)K / k + sqrt(2.0 * K / k * log((double)k)));
    double a[17], pw[17], tmp[17], e = 0.0;
    const double scale = exp(lgamma(K + 1.0) - K * log((double)k));
    for (int m = 0; m < K; m++) {
        for (int j = 0; j <= K; j++) {
            a[j] = j <= m ? exp(-lgamma(j + 1.0)) : 0.0;
            pw[j] = j == 0;
        }
        for (int r = 0; r < k; r++) {
            for (int j = 0; j <= K; j++) {
                tmp[j] = 0.0;
                for (int i = 0; i <= j; i++)
                    tmp[j] += pw[i] * a[j - i];
            }
            memcpy(pw, tmp, sizeof(pw));
        }
        e += 1.0 - fmin(1.0, scale * pw[K]);
    }
    return e;
}

/* The part of every tensor one rank of a group holds and reads. */
struct share {
    double f[PLAN_PART_COUNT]; /* fraction of each part (experts: see expert_work) */
    double q_heads, kv_heads;
    double experts, expert_frac;
    double vocab_frac;
    double bw;    /* bytes/s this rank reads at in this layout (host_read_gbs shared) */
    double flops; /* FLOP/s of its matrix products in this layout (host_gflops shared) */
    double attn;  /* FLOP/s of its attention in this layout */
    int k;        /* group size */
};

static double frac(struct plan_range r, int32_t n)
{
    return n > 0 ? (double)(r.end - r.begin) / (double)n : 0.0;
}

static void share_of(const struct plan_model *pm, const struct plan_rank *s, enum plan_join join,
                     int k, struct share *sh)
{
    const struct model_hparams *hp = &pm->hp;
    const bool gather = join == PLAN_JOIN_GATHER;
    const double heads = frac(s->head, hp->n_head), embd = frac(s->embd, hp->n_embd);
    const double ff = frac(s->ff, hp->n_ff), shx = frac(s->shexp, hp->n_ff_shexp);
    memset(sh, 0, sizeof(*sh));
    sh->f[PLAN_PART_NORM] = sh->f[PLAN_PART_ROUTER] = 1.0;
    sh->f[PLAN_PART_Q] = heads;
    sh->f[PLAN_PART_KV] = frac(s->kv, hp->n_head_kv);
    sh->f[PLAN_PART_O] = gather ? embd : heads;
    sh->f[PLAN_PART_UP] = ff;
    sh->f[PLAN_PART_DOWN] = gather ? embd : ff;
    sh->f[PLAN_PART_SH_UP] = shx;
    sh->f[PLAN_PART_SH_DOWN] = gather ? embd : shx;
    sh->q_heads = s->head.end - s->head.begin;
    sh->kv_heads = s->kv.end - s->kv.begin;
    sh->experts = s->expert.end - s->expert.begin;
    sh->expert_frac = frac(s->expert, hp->n_expert);
    sh->vocab_frac = frac(s->vocab, hp->n_vocab);
    sh->k = k;
}

/* Experts of one layer a rank reads for n tokens, and the (token, expert)
 * pairs it computes. One token on several ranks: the busiest rank gets
 * emax (expected_max_load) of the token's experts, in proportion to its
 * share; several tokens: each expert is read once if any token picks it. */
static void expert_work(const struct model_hparams *hp, const struct share *sh, double n_tok,
                        double emax, double *touched, double *pairs)
{
    *touched = *pairs = 0.0;
    if (!hp->n_expert || sh->experts == 0) return;
    const double X = hp->n_expert, K = hp->n_expert_used;
    if (n_tok == 1.0 && sh->k > 1) {
        *touched = *pairs = emax * sh->expert_frac * fmin(sh->k, X);
        return;
    }
    *touched = sh->experts * (1.0 - pow(1.0 - K / X, n_tok));
    *pairs = n_tok * K * sh->expert_frac;
}

static double eff_bw(const struct plan_hw_rank *h)
{
    return h->read_gbs * h->bw_efficiency * 1e9;
}

/* Tokens of one forward pass: how many, the KV positions they read, and
 * their query-key pairs (attention products). */
struct tok_work {
    double n_tok, kv_positions, attn_pairs;
};

static double rank_layer_s(const struct plan_model *pm, int il, const struct share *sh,
                           const struct plan_hw_rank *hw, const struct tok_work *tw, double emax)
{
    const struct plan_layer_cost *lc = &pm->layers[il];
    const struct model_hparams *hp = &pm->hp;
    double bytes = 0.0, elems = 0.0, touched, pairs;
    for (int p = 0; p < PLAN_PART_COUNT; p++) {
        bytes += (double)lc->bytes[p] * sh->f[p];
        elems += (double)lc->elems[p] * sh->f[p];
    }
    expert_work(hp, sh, tw->n_tok, emax, &touched, &pairs);
    bytes += touched * (double)(lc->bytes[PLAN_PART_EXP_UP] + lc->bytes[PLAN_PART_EXP_DOWN]);
    const double flops =
        2.0 * tw->n_tok * elems +
        2.0 * pairs * (double)(lc->elems[PLAN_PART_EXP_UP] + lc->elems[PLAN_PART_EXP_DOWN]);
    const double attn = 4.0 * sh->q_heads * hp->head_dim * tw->attn_pairs;
    bytes += tw->kv_positions * 2.0 * sh->kv_heads * hp->head_dim * pm->kv_elem_bytes;
    return fmax(bytes / sh->bw, flops / sh->flops) + attn / sh->attn + hw->overhead_us * 1e-6;
}

/* Expected largest of k independent standard normal values (k >= 1):
 * tabulated to 8, then the asymptote sqrt(2 ln k) less its known bias. */
static double normal_max(int k)
{
    static const double e[9] = {0, 0, 0.5642, 0.8463, 1.0294, 1.1630, 1.2672, 1.3522, 1.4236};
    if (k <= 8) return e[k < 0 ? 0 : k];
    const double l = sqrt(2.0 * log((double)k));
    return l - (log(log((double)k)) + log(4.0 * M_PI)) / (2.0 * l);
}

/* The joins of one layer in a tensor-parallel group (engine_forward.c):
 * gather: attention outputs and embd rows, FFN hidden and embd rows (MoE:
 * the experts' outputs; shared expert: hidden and rows); sum: one
 * all-reduce per block. The layer's work (work_s) is spread evenly before
 * its joins: the gap a token bucket refills in. */
static double layer_comm_s(const struct model_hparams *hp, const struct net *n, enum plan_join join,
                           double n_tok, double work_s)
{
    if (n->k <= 1) return 0.0;
    const double E = 4.0 * hp->n_embd * n_tok;
    const bool g = join == PLAN_JOIN_GATHER;
    const int joins = g ? (hp->n_expert ? 3 + (hp->n_ff_shexp ? 2 : 0) : 4)
                        : (hp->n_expert ? 2 + (hp->n_ff_shexp ? 1 : 0) : 2);
    const double gap = work_s / joins;
    double t = g ? allgather_s(n, 4.0 * hp->n_head * hp->head_dim * n_tok, gap) + allgather_s(n, E, gap)
                 : allreduce_s(n, E, gap);
    if (!hp->n_expert)
        return t + (g ? allgather_s(n, 4.0 * hp->n_ff * n_tok, gap) + allgather_s(n, E, gap)
                      : allreduce_s(n, E, gap));
    t += g ? allgather_s(n, E * hp->n_expert_used, gap) : allreduce_s(n, E, gap);
    if (hp->n_ff_shexp)
        t += g ? allgather_s(n, 4.0 * hp->n_ff_shexp * n_tok, gap) + allgather_s(n, E, gap)
               : allreduce_s(n, E, gap);
    return t;
}

/* Weights and KV cache one rank holds for one layer. Several ranks: its
 * slices, its experts plus the spare slots for hot copies. */
static void rank_layer_mem(const struct plan_model *pm, int il, const struct share *sh,
                           const struct plan_workload *w, double *weights, double *kv)
{
    const struct plan_layer_cost *lc = &pm->layers[il];
    const struct model_hparams *hp = &pm->hp;
    double b = 0.0;
    for (int p = 0; p < PLAN_PART_COUNT; p++)
        b += (double)lc->bytes[p] * sh->f[p];
    if (hp->n_expert) {
        const double slots =
            sh->k > 1 ? fmin(hp->n_expert, sh->experts + PLAN_MOE_SPARE_SLOTS) : hp->n_expert;
        b += slots * (double)(lc->bytes[PLAN_PART_EXP_UP] + lc->bytes[PLAN_PART_EXP_DOWN]);
    }
    *weights = b;
    *kv = (double)w->n_streams * w->n_ctx * 2.0 * sh->kv_heads * hp->head_dim * pm->kv_elem_bytes;
}

/* Activation buffers, about as engine.c allocates them for n_batch tokens. */
static double rank_scratch_bytes(const struct plan_model *pm, const struct share *sh,
                                 const struct plan_workload *w)
{
    const struct model_hparams *hp = &pm->hp;
    const double E = hp->n_embd, hd = hp->head_dim;
    const double ff = TT_MAX(hp->n_ff, TT_MAX(hp->n_ff_exp, hp->n_ff_shexp));
    const double in_max = fmax(fmax(E, (double)hp->n_head * hd), ff);
    const double row_max = fmax(in_max, (double)hp->n_expert_used * E);
    const double floats = 3 * E + 2 * sh->q_heads * hd + 2 * sh->kv_heads * hd + 2 * ff +
                          sh->vocab_frac * hp->n_vocab + (sh->k > 1 ? 3 * row_max : 0) + 4 * in_max;
    return 4.0 * w->n_batch * floats;
}

/* The output matrix share of one rank (the last stage's group). */
static double rank_output_bytes(const struct plan_model *pm, const struct share *sh)
{
    return (double)pm->output_bytes * sh->vocab_frac + (double)pm->output_norm_bytes;
}

/* ================================================================
 * One candidate: slices, layer split, predictions
 * ================================================================ */

struct search {
    const struct plan_model *pm;
    const struct plan_cluster *c;
    const struct plan_workload *w;
    double emax[PLAN_CLUSTER_RANKS_MAX + 1]; /* expected_max_load by group size */
    /* the candidate being evaluated: */
    int32_t ids[PLAN_CLUSTER_RANKS_MAX];     /* cluster rank of each candidate rank */
    struct share sh[PLAN_CLUSTER_RANKS_MAX]; /* per candidate rank */
    struct net net[PLAN_CLUSTER_RANKS_MAX];  /* per stage: its group's links */
    struct net hop[PLAN_CLUSTER_RANKS_MAX];  /* per stage: the link to the next stage */
    double *cost, *mem;                      /* [stage][layer]: decode time, memory fraction */
    double *comm;                            /* [stage][layer]: the joins' part of cost */
    double *dp;                              /* [stage + 1][layer + 1] */
    int32_t *arg;
    struct plan_result *res;
};

/* A group of k ranks meets at every join: each stretch of work between two
 * joins lasts as long as its slowest member's. Members whose time spreads
 * by `jitter` (relative standard deviation) stretch the group's time by the
 * expected maximum of k such spreads. */
static double straggle(const struct search *s, const struct plan_stage *g)
{
    const int k = g->rank_end - g->rank_begin;
    double j = 0.0;
    for (int i = g->rank_begin; i < g->rank_end; i++) j = fmax(j, s->c->ranks[s->ids[i]].jitter);
    return 1.0 + j * normal_max(k);
}

/* The ranks of a group run at once: those on one host with a shared memory
 * bandwidth (host_read_gbs) or shared cores (host_gflops) split them in
 * proportion to their own figures. Stages of a pipeline take turns and do
 * not compete. */
static void group_speeds(struct search *s, const struct plan_stage *g)
{
    for (int i = g->rank_begin; i < g->rank_end; i++) {
        const struct plan_hw_rank *h = &s->c->ranks[s->ids[i]];
        double bw = 0.0, fl = 0.0;
        for (int j = g->rank_begin; j < g->rank_end; j++)
            if (plan_cluster_same_host(s->c, s->ids[i], s->ids[j])) {
                bw += s->c->ranks[s->ids[j]].read_gbs;
                fl += s->c->ranks[s->ids[j]].gflops;
            }
        const double fb = h->host_read_gbs > 0 ? fmin(1.0, h->host_read_gbs / bw) : 1.0;
        const double ff = h->host_gflops > 0 ? fmin(1.0, h->host_gflops / fl) : 1.0;
        s->sh[i].bw = eff_bw(h) * fb;
        s->sh[i].flops = h->gflops * 1e9 * ff;
        s->sh[i].attn = h->attn_gflops * 1e9 * ff;
    }
}

static int make_slices(struct search *s, struct plan_candidate *cd)
{
    for (int st = 0; st < cd->n_stages; st++) {
        const struct plan_stage *g = &cd->stages[st];
        const int k = g->rank_end - g->rank_begin;
        double wts[PLAN_CLUSTER_RANKS_MAX];
        for (int i = 0; i < k; i++)
            wts[i] = s->w->even_split ? 1.0 : eff_bw(&s->c->ranks[s->ids[g->rank_begin + i]]);
        struct plan *p = plan_tensor_parallel(&s->pm->hp, &s->pm->align, k, wts, cd->join);
        if (!p) return TT_ENOMEM;
        for (int i = 0; i < k; i++) {
            struct plan_cand_rank *cr = &cd->ranks[g->rank_begin + i];
            cr->slice = p->ranks[i];
            cr->stage = st;
            share_of(s->pm, &cr->slice, cd->join, k, &s->sh[g->rank_begin + i]);
        }
        free(p);
        group_speeds(s, g);
        s->net[st] = group_net(s->c, s->ids + g->rank_begin, k);
        if (st > 0) {
            const struct plan_stage *f = &cd->stages[st - 1];
            s->hop[st - 1] = pairs_net(s->c, s->ids + f->rank_begin, f->rank_end - f->rank_begin,
                                       s->ids + g->rank_begin, k);
        }
    }
    return 0;
}

/* Memory one rank of stage st may give to layers: its free memory less
 * buffers and (last stage) the output matrix. */
static double layer_budget(const struct search *s, const struct plan_candidate *cd, int st, int i)
{
    const struct plan_hw_rank *hw = &s->c->ranks[s->ids[i]];
    double b = hw->mem_avail_gib * GIB - rank_scratch_bytes(s->pm, &s->sh[i], s->w);
    if (st == cd->n_stages - 1) b -= rank_output_bytes(s->pm, &s->sh[i]);
    return b;
}

/* A stage's cost per forward pass of n_tok tokens outside its layers: its
 * slowest rank's step and token overheads (the group meets at the pass's
 * first join). */
static double stage_step_s(const struct search *s, const struct plan_stage *g, double n_tok)
{
    double t = 0.0;
    for (int i = g->rank_begin; i < g->rank_end; i++) {
        const struct plan_hw_rank *h = &s->c->ranks[s->ids[i]];
        t = fmax(t, (h->step_overhead_us + n_tok * h->token_overhead_us) * 1e-6);
    }
    return t;
}

/* cost[st][l]: layer l's decode time on stage st (slowest rank and joins);
 * mem[st][l]: the largest fraction of a rank's budget it takes there. */
static void layer_costs(struct search *s, const struct plan_candidate *cd,
                        const struct tok_work *tw)
{
    const int L = s->pm->hp.n_layer;
    for (int st = 0; st < cd->n_stages; st++) {
        const struct plan_stage *g = &cd->stages[st];
        const int k = g->rank_end - g->rank_begin;
        double budget[PLAN_CLUSTER_RANKS_MAX];
        for (int i = g->rank_begin; i < g->rank_end; i++)
            budget[i] = layer_budget(s, cd, st, i);
        const double stretch = straggle(s, g);
        for (int l = 0; l < L; l++) {
            double t = 0.0, f = 0.0, wb, kv;
            for (int i = g->rank_begin; i < g->rank_end; i++) {
                t = fmax(
                    t, rank_layer_s(s->pm, l, &s->sh[i], &s->c->ranks[s->ids[i]], tw, s->emax[k]));
                rank_layer_mem(s->pm, l, &s->sh[i], s->w, &wb, &kv);
                f = fmax(f, budget[i] > 0 ? (wb + kv) / budget[i] : 1e30);
            }
            const double comm =
                layer_comm_s(&s->pm->hp, &s->net[st], cd->join, tw->n_tok, t * stretch);
            s->cost[(size_t)st * L + l] = t * stretch + comm;
            s->comm[(size_t)st * L + l] = comm;
            s->mem[(size_t)st * L + l] = f;
        }
    }
}

/* Contiguous layers for S stages, each at least one, minimizing the sum of
 * stage times; with `limit`, no stage over its memory. Dynamic programming:
 * dp[st][j] = best time of layers [0, j) on stages [0, st), over the split
 * points i of a sliding window (a deque keeps its minimum). Returns false
 * when nothing fits. */
static bool split_min_sum(struct search *s, int S, bool limit, int32_t *ends)
{
    const int L = s->pm->hp.n_layer;
    double *dp = s->dp, pc[MODEL_LAYERS_MAX + 1], pm[MODEL_LAYERS_MAX + 1];
    int32_t *arg = s->arg, dq[MODEL_LAYERS_MAX + 1];
    for (int j = 0; j <= L; j++)
        dp[j] = j ? INFINITY : 0.0;
    for (int st = 1; st <= S; st++) {
        const double *cost = s->cost + (size_t)(st - 1) * L, *mem = s->mem + (size_t)(st - 1) * L;
        const double *prev = dp + (size_t)(st - 1) * (L + 1);
        double *cur = dp + (size_t)st * (L + 1);
        pc[0] = pm[0] = 0.0;
        for (int l = 0; l < L; l++) {
            pc[l + 1] = pc[l] + cost[l];
            pm[l + 1] = pm[l] + mem[l];
        }
        int head = 0, tail = 0;
        cur[0] = INFINITY;
        for (int j = 1; j <= L; j++) {
            const int i = j - 1;
            if (isfinite(prev[i])) {
                while (tail > head && prev[dq[tail - 1]] - pc[dq[tail - 1]] >= prev[i] - pc[i])
                    tail--;
                dq[tail++] = i;
            }
            while (limit && tail > head && pm[j] - pm[dq[head]] > 1.0)
                head++;
            cur[j] = tail > head ? pc[j] + prev[dq[head]] - pc[dq[head]] : INFINITY;
            arg[(size_t)st * (L + 1) + j] = tail > head ? dq[head] : -1;
        }
    }
    if (!isfinite(dp[(size_t)S * (L + 1) + L])) return false;
    for (int st = S, j = L; st >= 1; st--) {
        ends[st - 1] = j;
        j = arg[(size_t)st * (L + 1) + j];
    }
    return true;
}

/* Whether every stage can stay within time T: each takes as many layers as
 * it can (leaving one for each later stage). */
static bool greedy_fits(const struct search *s, int S, bool limit, double T, int32_t *ends)
{
    const int L = s->pm->hp.n_layer;
    int j = 0;
    for (int st = 0; st < S; st++) {
        const double *cost = s->cost + (size_t)st * L, *mem = s->mem + (size_t)st * L;
        double c = 0.0, m = 0.0;
        int e = j;
        while (e < L - (S - 1 - st) && c + cost[e] <= T && (!limit || m + mem[e] <= 1.0)) {
            c += cost[e];
            m += mem[e];
            e++;
        }
        if (e == j || (st == S - 1 && e < L)) return false;
        ends[st] = e;
        j = e;
    }
    return true;
}

/* Contiguous layers minimizing the slowest stage (several streams keep
 * every stage busy), by bisection on the stage time. */
static bool split_min_max(const struct search *s, int S, bool limit, int32_t *ends)
{
    const int L = s->pm->hp.n_layer;
    double lo = 0.0, hi = 0.0;
    for (int st = 0; st < S; st++) {
        double sum = 0.0;
        for (int l = 0; l < L; l++)
            sum += s->cost[(size_t)st * L + l];
        hi = fmax(hi, sum);
    }
    if (!greedy_fits(s, S, limit, hi, ends)) return false;
    for (int it = 0; it < 60; it++) {
        const double mid = 0.5 * (lo + hi);
        if (greedy_fits(s, S, limit, mid, ends))
            hi = mid;
        else
            lo = mid;
    }
    return greedy_fits(s, S, limit, hi, ends);
}

static void set_ends(struct plan_candidate *cd, const int32_t *ends)
{
    for (int st = 0; st < cd->n_stages; st++) {
        cd->stages[st].layer_begin = st ? ends[st - 1] : 0;
        cd->stages[st].layer_end = ends[st];
    }
}

/* Full logits to rank 0 (engine_dist.c's gather_logits): an all-gather of
 * the slice sizes, then an all-gather of the vocabulary slices among the
 * step's ranks; every rank receives what it does not hold (a rank outside
 * the last stage: all of it). A collective's bandwidth when several ranks
 * hold slices, one way from a single last-stage rank. */
static double logits_gather_s(const struct search *s, const struct plan_candidate *cd,
                              const struct net *n, double n_logits, double gap_s)
{
    const struct plan_stage *g = &cd->stages[cd->n_stages - 1];
    const double all = 4.0 * n_logits * s->pm->hp.n_vocab;
    bool has0 = false;
    for (int i = 0; i < cd->n_ranks; i++)
        has0 |= cd->ranks[i].rank == 0;
    double least = cd->n_stages > 1 || !has0 ? 0.0 : 1.0; /* a rank with no slice receives all */
    for (int i = g->rank_begin; i < g->rank_end; i++)
        least = fmin(least, s->sh[i].vocab_frac);
    /* several holders each wait for the others' sizes before sending their
     * slices; a single holder sends its size and its slice back to back */
    const bool several = g->rank_end - g->rank_begin > 1;
    const double bw = several ? coll_bw(n, all / n->k) : n->bw_bps;
    return (several ? 2.0 : 1.0) * coll_steps(n->k, all / n->k) * n->lat_s +
           xfer_s(n, (1.0 - least) * all, bw, gap_s);
}

/* The output projection and sampling on the last stage, and rank 0 driving
 * the step (engine_dist.c): two broadcasts of the step to every rank that
 * takes part (the candidate's ranks and rank 0; ranks left out do not), one
 * right after the other, so their latencies overlap (one tree's worth), and
 * the gather of every such rank's sampling candidates (PLAN_CAND_BYTES per
 * token, whether it holds output rows or not) to rank 0, or, when the
 * workload asks for full logits instead, their gather. When rank 0 alone
 * is the first of several stages, it goes on computing right after
 * broadcasting: the later stages receive the step during its first_s of
 * work, and only what the broadcast takes beyond that is waited for. The
 * returns travel gap_s (the step's work) after the previous step's. */
static double ends_s(const struct search *s, const struct plan_candidate *cd, double n_logits,
                     double first_s, double gap_s, double *comm)
{
    const struct plan_stage *g = &cd->stages[cd->n_stages - 1];
    int32_t step_ranks[PLAN_CLUSTER_RANKS_MAX + 1];
    int ks = 0;
    bool has0 = false;
    double t = 0.0;
    for (int i = g->rank_begin; i < g->rank_end; i++) {
        const double flops = 2.0 * n_logits * (double)s->pm->output_elems * s->sh[i].vocab_frac;
        t = fmax(t,
                 fmax(rank_output_bytes(s->pm, &s->sh[i]) / s->sh[i].bw, flops / s->sh[i].flops));
    }
    for (int i = 0; i < cd->n_ranks; i++) {
        step_ranks[ks++] = s->ids[i];
        has0 |= s->ids[i] == 0;
    }
    if (!has0) step_ranks[ks++] = 0;
    const struct net n = group_net(s->c, step_ranks, ks);
    const double cand = PLAN_CAND_BYTES * n_logits;
    const struct plan_stage *g0 = &cd->stages[0];
    const bool hidden = cd->n_stages > 1 && g0->rank_end - g0->rank_begin == 1 &&
                        s->ids[g0->rank_begin] == 0;
    const double bcast = coll_steps(ks, 0) * n.lat_s;
    double c = hidden ? fmax(0.0, bcast - first_s) : bcast;
    if (ks > 1)
        c += s->w->full_logits ? logits_gather_s(s, cd, &n, n_logits, gap_s)
                               : coll_steps(ks, cand) * n.lat_s +
                                     (ks - 1) * xfer_s(&n, cand, n.bw_bps, gap_s);
    *comm += c;
    return t + c;
}

/* One decode round: M micro-batches of m tokens through the stages. A
 * micro-batch's trip is the sum of the stages and sends; the busiest stage
 * must also serve all M of them. A link between stages carries one message
 * per micro-batch, the stages' work (busy) apart. */
static double decode_round(struct search *s, struct plan_candidate *cd, double m, int M,
                           double *comm)
{
    const int L = s->pm->hp.n_layer;
    const double E4 = 4.0 * s->pm->hp.n_embd * m;
    double sum = 0.0, worst = 0.0, busy = 0.0;
    *comm = 0.0;
    for (int st = 0; st < cd->n_stages; st++) {
        struct plan_stage *g = &cd->stages[st];
        for (int l = g->layer_begin; l < g->layer_end; l++)
            busy += s->cost[(size_t)st * L + l];
        busy += stage_step_s(s, g, m);
    }
    for (int st = 0; st < cd->n_stages; st++) {
        struct plan_stage *g = &cd->stages[st];
        double t = 0.0;
        for (int l = g->layer_begin; l < g->layer_end; l++) {
            t += s->cost[(size_t)st * L + l];
            *comm += s->comm[(size_t)st * L + l];
        }
        t += stage_step_s(s, g, m);
        if (st == cd->n_stages - 1)
            t += ends_s(s, cd, m, cd->stages[0].decode_s, busy, comm);
        else {
            const double snd = send_s(&s->hop[st], E4, busy);
            t += snd;
            *comm += snd;
        }
        g->decode_s = t;
        sum += t;
        worst = fmax(worst, t);
    }
    return fmax(sum, M * worst);
}

/* One prompt chunk of t tokens starting at position p0 through every stage;
 * adds wgt times each stage's part to its prefill_s. */
static double chunk_s(struct search *s, struct plan_candidate *cd, double t, double p0, double wgt)
{
    const struct tok_work tw = {t, p0 + t, t * p0 + t * (t + 1) / 2};
    double sum = 0.0;
    for (int st = 0; st < cd->n_stages; st++) {
        struct plan_stage *g = &cd->stages[st];
        const int k = g->rank_end - g->rank_begin;
        double x = 0.0;
        for (int l = g->layer_begin; l < g->layer_end; l++) {
            double worst = 0.0;
            for (int i = g->rank_begin; i < g->rank_end; i++)
                worst = fmax(worst, rank_layer_s(s->pm, l, &s->sh[i], &s->c->ranks[s->ids[i]], &tw,
                                                 s->emax[k]));
            worst *= straggle(s, g);
            x += worst + layer_comm_s(&s->pm->hp, &s->net[st], cd->join, t, worst);
        }
        x += stage_step_s(s, g, t);
        if (st < cd->n_stages - 1) x += send_s(&s->hop[st], 4.0 * s->pm->hp.n_embd * t, x);
        g->prefill_s += wgt * x;
        sum += x;
    }
    return sum;
}

/* TTFT: the prompt in chunks of n_batch tokens, stage after stage (a stage
 * does not start the next chunk early), then the first token's logits.
 * Beyond PLAN_CHUNK_SAMPLES full chunks, evenly spaced ones stand for the
 * rest. */
static double prefill_total(struct search *s, struct plan_candidate *cd)
{
    const int64_t P = s->w->prompt_tokens, nb = s->w->n_batch, F = P / nb, rem = P % nb;
    const int64_t n_samp = TT_MIN(F, PLAN_CHUNK_SAMPLES);
    double total = 0.0, comm = 0.0;
    for (int st = 0; st < cd->n_stages; st++)
        cd->stages[st].prefill_s = 0.0;
    for (int64_t i = 0; i < n_samp; i++) {
        const int64_t c =
            F <= PLAN_CHUNK_SAMPLES ? i : (int64_t)(((double)i + 0.5) * (double)F / (double)n_samp);
        const double wgt = (double)F / (double)n_samp;
        total += wgt * chunk_s(s, cd, (double)nb, (double)(c * nb), wgt);
    }
    if (rem) total += chunk_s(s, cd, (double)rem, (double)(F * nb), 1.0);
    const double out = ends_s(s, cd, 1.0, cd->stages[0].prefill_s, total, &comm);
    cd->stages[cd->n_stages - 1].prefill_s += out;
    return total + out;
}

/* Exact memory of every rank under the split; fits and short_rank. One rank
 * holding the whole model maps the whole file, as the engine does. */
static void rank_memory(struct search *s, struct plan_candidate *cd)
{
    double worst = 0.0;
    cd->fits = true;
    cd->short_rank = -1;
    for (int st = 0; st < cd->n_stages; st++) {
        const struct plan_stage *g = &cd->stages[st];
        for (int i = g->rank_begin; i < g->rank_end; i++) {
            struct plan_cand_rank *cr = &cd->ranks[i];
            double wsum = 0.0, kvsum = 0.0, wb, kv;
            for (int l = g->layer_begin; l < g->layer_end; l++) {
                rank_layer_mem(s->pm, l, &s->sh[i], s->w, &wb, &kv);
                wsum += wb;
                kvsum += kv;
            }
            if (st == cd->n_stages - 1) wsum += rank_output_bytes(s->pm, &s->sh[i]);
            if (cd->n_ranks == 1) wsum = (double)s->pm->file_bytes;
            cr->weight_bytes = (uint64_t)wsum;
            cr->kv_bytes = (uint64_t)kvsum;
            cr->mem_bytes = (uint64_t)(wsum + kvsum + rank_scratch_bytes(s->pm, &s->sh[i], s->w));
            const double need = (double)cr->mem_bytes / (s->c->ranks[cr->rank].mem_avail_gib * GIB);
            if (need > 1.0) cd->fits = false;
            if (need > worst) {
                worst = need;
                cd->short_rank = cr->rank;
            }
        }
    }
    if (cd->fits) cd->short_rank = -1;
}

/* Invariant 4 of plan_cost.h. */
static void check_candidate(const struct plan_candidate *cd, const struct plan_model *pm)
{
    bool seen[PLAN_CLUSTER_RANKS_MAX] = {false};
    TT_ASSERT(cd->n_stages >= 1 && cd->n_ranks >= cd->n_stages &&
              cd->n_ranks <= PLAN_CLUSTER_RANKS_MAX);
    for (int st = 0, at = 0, r = 0; st < cd->n_stages; st++) {
        const struct plan_stage *g = &cd->stages[st];
        TT_ASSERT(g->layer_begin == at && g->layer_end > g->layer_begin);
        TT_ASSERT(g->rank_begin == r && g->rank_end > g->rank_begin);
        at = g->layer_end;
        r = g->rank_end;
        TT_ASSERT(st < cd->n_stages - 1 || (at == pm->hp.n_layer && r == cd->n_ranks));
    }
    for (int i = 0; i < cd->n_ranks; i++) {
        TT_ASSERT(!seen[cd->ranks[i].rank]);
        seen[cd->ranks[i].rank] = true;
    }
}

/* Split the layers of a pipeline: within memory if possible, else
 * regardless (the candidate is then reported as not fitting). Of the split
 * with the least total time (one stream) and the one with the fastest
 * slowest stage (several streams), the faster round wins; on a tie, the
 * second, which is the balanced one (equal ranks get equal layers). */
static void split_layers(struct search *s, struct plan_candidate *cd, double m, int M,
                         int32_t *ends)
{
    const int S = cd->n_stages;
    if (S == 1) {
        ends[0] = s->pm->hp.n_layer;
        return;
    }
    if (s->w->even_split) { /* as plan_staged sizes the engine's stages */
        double w[PLAN_CLUSTER_RANKS_MAX];
        int64_t starts[PLAN_CLUSTER_RANKS_MAX + 1];
        for (int st = 0; st < S; st++) w[st] = cd->stages[st].rank_end - cd->stages[st].rank_begin;
        plan_split_units(s->pm->hp.n_layer, 1, S, w, starts);
        for (int st = 0; st < S; st++) ends[st] = (int32_t)starts[st + 1];
        return;
    }
    bool limit = split_min_sum(s, S, true, ends);
    if (!limit) split_min_sum(s, S, false, ends);
    int32_t alt[PLAN_CLUSTER_RANKS_MAX];
    if (!split_min_max(s, S, limit, alt)) return;
    double comm, a, b;
    set_ends(cd, ends);
    a = decode_round(s, cd, m, M, &comm);
    set_ends(cd, alt);
    b = decode_round(s, cd, m, M, &comm);
    if (b <= a * (1.0 + 1e-9)) memcpy(ends, alt, sizeof(int32_t) * (size_t)S);
}

static int evaluate(struct search *s, struct plan_candidate *cd)
{
    for (int i = 0; i < cd->n_ranks; i++)
        s->ids[i] = cd->ranks[i].rank;
    int err = make_slices(s, cd);
    if (err) return err;
    const int S = cd->n_stages, n = s->w->n_streams;
    const int M = S > 1 ? TT_MIN(n, S) : 1;
    const double m = ceil((double)n / M), ctx = s->w->prompt_tokens;
    const struct tok_work tw = {m, m * ctx, m * ctx};
    layer_costs(s, cd, &tw);
    int32_t ends[PLAN_CLUSTER_RANKS_MAX];
    split_layers(s, cd, m, M, ends);
    set_ends(cd, ends);
    check_candidate(cd, s->pm);
    rank_memory(s, cd);
    cd->decode_step_s = decode_round(s, cd, m, M, &cd->comm_s);
    cd->decode_tok_s = n / cd->decode_step_s;
    cd->ttft_s = prefill_total(s, cd);
    return 0;
}

/* ================================================================
 * The search: candidates and the choice
 * ================================================================ */

static bool same_layout(const struct plan_candidate *a, const struct plan_candidate *b)
{
    if (a->layout != b->layout || a->join != b->join || a->n_stages != b->n_stages ||
        a->n_ranks != b->n_ranks)
        return false;
    for (int st = 0; st < a->n_stages; st++)
        if (a->stages[st].rank_end != b->stages[st].rank_end) return false;
    for (int i = 0; i < a->n_ranks; i++)
        if (a->ranks[i].rank != b->ranks[i].rank) return false;
    return true;
}

/* Add (and predict) a layout of n_stages stages of stage_sizes[st] ranks,
 * ranks listed stage after stage, unless it is there already. Beyond
 * PLAN_CANDIDATES_MAX, later candidates are dropped. */
static int add_candidate(struct search *s, enum plan_layout layout, enum plan_join join,
                         const int32_t *ranks, const int *stage_sizes, int n_stages)
{
    struct plan_result *res = s->res;
    if (res->n_cands == PLAN_CANDIDATES_MAX || n_stages > s->pm->hp.n_layer) return 0;
    struct plan_candidate *cd = &res->cands[res->n_cands];
    memset(cd, 0, sizeof(*cd));
    cd->layout = layout;
    cd->join = join;
    cd->n_stages = n_stages;
    for (int st = 0, at = 0; st < n_stages; st++) {
        cd->stages[st].rank_begin = at;
        cd->stages[st].rank_end = at += stage_sizes[st];
        cd->n_ranks = at;
    }
    for (int i = 0; i < cd->n_ranks; i++)
        cd->ranks[i].rank = ranks[i];
    for (int j = 0; j < res->n_cands; j++)
        if (same_layout(&res->cands[j], cd)) return 0;
    int err = evaluate(s, cd);
    if (!err) res->n_cands++;
    return err;
}

/* Sort rank ids by a key, largest first, lower rank first on ties. */
static void sort_by(int32_t *ids, int n, const double *key)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && (key[ids[j]] > key[ids[j - 1]] ||
                                  (key[ids[j]] == key[ids[j - 1]] && ids[j] < ids[j - 1]));
             j--) {
            int32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
}

static void sort_ids(int32_t *ids, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && ids[j] < ids[j - 1]; j--) {
            int32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
}

/* Every rank alone; ranks identical to a lower one (figures, link to rank
 * 0) are left out. */
static int single_candidates(struct search *s)
{
    const struct plan_cluster *c = s->c;
    const int one = 1;
    for (int r = 0; r < c->n_ranks; r++) {
        bool dup = false;
        for (int q = 1; q < r && !dup; q++) {
            const struct plan_hw_rank *a = &c->ranks[r], *b = &c->ranks[q];
            dup = a->read_gbs == b->read_gbs && a->bw_efficiency == b->bw_efficiency &&
                  a->gflops == b->gflops && a->attn_gflops == b->attn_gflops &&
                  a->mem_avail_gib == b->mem_avail_gib && a->overhead_us == b->overhead_us &&
                  a->step_overhead_us == b->step_overhead_us &&
                  a->token_overhead_us == b->token_overhead_us &&
                  c->links[0][r].latency_us == c->links[0][q].latency_us &&
                  c->links[0][r].bandwidth_gbs == c->links[0][q].bandwidth_gbs &&
                  c->links[0][r].bandwidth_both_gbs == c->links[0][q].bandwidth_both_gbs &&
                  c->links[0][r].burst_kib == c->links[0][q].burst_kib;
        }
        const int32_t id = r;
        int err = dup ? 0 : add_candidate(s, PLAN_LAYOUT_SINGLE, PLAN_JOIN_GATHER, &id, &one, 1);
        if (err) return err;
    }
    return 0;
}

/* Tensor parallelism over the j first members of `members` (ordered by a
 * key), j = 2..n, both joins. */
static int tp_candidates(struct search *s, const int32_t *members, int n)
{
    for (int j = 2; j <= n; j++) {
        int32_t ids[PLAN_CLUSTER_RANKS_MAX];
        memcpy(ids, members, sizeof(int32_t) * (size_t)j);
        sort_ids(ids, j);
        for (int join = 0; join < PLAN_JOIN_COUNT; join++) {
            int err = add_candidate(s, PLAN_LAYOUT_TP, (enum plan_join)join, ids, &j, 1);
            if (err) return err;
        }
    }
    return 0;
}

/* Groups of ranks joined (transitively) by links of latency <= t_us, or by
 * host. group_of[r] numbers the groups in order of their lowest rank. */
static int partition(const struct plan_cluster *c, double t_us, bool by_host, int *group_of)
{
    const int n = c->n_ranks;
    for (int r = 0; r < n; r++)
        group_of[r] = r;
    for (bool changed = true; changed;) {
        changed = false;
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++) {
                const bool joined =
                    by_host ? plan_cluster_same_host(c, a, b) : c->links[a][b].latency_us <= t_us;
                if (!joined || group_of[a] == group_of[b]) continue;
                const int lo = TT_MIN(group_of[a], group_of[b]),
                          hi = TT_MAX(group_of[a], group_of[b]);
                for (int r = 0; r < n; r++)
                    if (group_of[r] == hi) group_of[r] = lo;
                changed = true;
            }
    }
    int n_groups = 0, label[PLAN_CLUSTER_RANKS_MAX];
    for (int r = 0; r < n; r++)
        label[r] = -1;
    for (int r = 0; r < n; r++) {
        if (label[group_of[r]] < 0) label[group_of[r]] = n_groups++;
        group_of[r] = label[group_of[r]];
    }
    return n_groups;
}

/* Link levels: latencies where the next one is PLAN_LATENCY_BREAK times
 * slower, and the largest; ranks linked at or below a level form groups. */
static int link_levels(const struct plan_cluster *c, double *levels, int max)
{
    static const int pairs_max = PLAN_CLUSTER_RANKS_MAX * (PLAN_CLUSTER_RANKS_MAX - 1) / 2;
    double lat[PLAN_CLUSTER_RANKS_MAX * (PLAN_CLUSTER_RANKS_MAX - 1) / 2];
    int n = 0, n_levels = 0;
    for (int a = 0; a < c->n_ranks; a++)
        for (int b = a + 1; b < c->n_ranks && n < pairs_max; b++)
            lat[n++] = c->links[a][b].latency_us;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && lat[j] < lat[j - 1]; j--) {
            double t = lat[j];
            lat[j] = lat[j - 1];
            lat[j - 1] = t;
        }
    for (int i = 0; i < n; i++) {
        if (i < n - 1 && lat[i + 1] <= PLAN_LATENCY_BREAK * lat[i]) continue;
        if (n_levels == max) n_levels--; /* keep the largest */
        levels[n_levels++] = lat[i];
    }
    return n_levels;
}

/* Pipelines over the j first groups of `order` (j = 2..n_groups), stages in
 * order of their lowest rank: PP when every group is one rank, else hybrid
 * (TP inside each group), both joins. */
static int pipeline_candidates(struct search *s, const int *group_of, const int *order,
                               int n_groups)
{
    for (int j = 2; j <= n_groups; j++) {
        int32_t ids[PLAN_CLUSTER_RANKS_MAX];
        int sizes[PLAN_CLUSTER_RANKS_MAX], n_ids = 0, n_st = 0;
        bool single = true;
        for (int g = 0; g < n_groups; g++) { /* groups in rank order */
            bool chosen = false;
            for (int q = 0; q < j; q++)
                chosen |= order[q] == g;
            if (!chosen) continue;
            sizes[n_st] = 0;
            for (int r = 0; r < s->c->n_ranks; r++)
                if (group_of[r] == g) {
                    ids[n_ids++] = r;
                    sizes[n_st]++;
                }
            single &= sizes[n_st++] == 1;
        }
        for (int join = 0; join < (single ? 1 : PLAN_JOIN_COUNT); join++) {
            int err = add_candidate(s, single ? PLAN_LAYOUT_PP : PLAN_LAYOUT_HYBRID,
                                    (enum plan_join)join, ids, sizes, n_st);
            if (err) return err;
        }
    }
    return 0;
}

/* The candidates of one grouping: TP inside each group (its fastest or
 * largest members), pipelines over its fastest or largest groups. */
static int partition_candidates(struct search *s, const int *group_of, int n_groups,
                                const double *keys[2])
{
    const struct plan_cluster *c = s->c;
    for (int g = 0; g < n_groups; g++) {
        int32_t members[PLAN_CLUSTER_RANKS_MAX];
        int n = 0;
        for (int r = 0; r < c->n_ranks; r++)
            if (group_of[r] == g) members[n++] = r;
        for (int k = 0; k < 2; k++) {
            sort_by(members, n, keys[k]);
            int err = tp_candidates(s, members, n);
            if (err) return err;
        }
    }
    for (int k = 0; k < 2 && n_groups > 1; k++) {
        double gkey[PLAN_CLUSTER_RANKS_MAX] = {0};
        int32_t order[PLAN_CLUSTER_RANKS_MAX];
        int ord[PLAN_CLUSTER_RANKS_MAX];
        for (int r = 0; r < c->n_ranks; r++)
            gkey[group_of[r]] += keys[k][r];
        for (int g = 0; g < n_groups; g++)
            order[g] = g;
        sort_by(order, n_groups, gkey);
        for (int g = 0; g < n_groups; g++)
            ord[g] = order[g];
        int err = pipeline_candidates(s, group_of, ord, n_groups);
        if (err) return err;
    }
    return 0;
}

static int enumerate(struct search *s)
{
    const struct plan_cluster *c = s->c;
    double speed[PLAN_CLUSTER_RANKS_MAX], memory[PLAN_CLUSTER_RANKS_MAX],
        levels[PLAN_PARTITIONS_MAX];
    for (int r = 0; r < c->n_ranks; r++) {
        speed[r] = eff_bw(&c->ranks[r]);
        memory[r] = c->ranks[r].mem_avail_gib;
    }
    const double *keys[2] = {speed, memory};
    int err = single_candidates(s);
    const int n_levels = link_levels(c, levels, PLAN_PARTITIONS_MAX - 2);
    int parts[PLAN_PARTITIONS_MAX][PLAN_CLUSTER_RANKS_MAX], n_groups[PLAN_PARTITIONS_MAX],
        n_parts = 0;
    for (int p = -2; p < n_levels && !err; p++) { /* -2: one rank each, -1: by host, then levels */
        int *g = parts[n_parts];
        n_groups[n_parts] = partition(c, p == -2 ? -1.0 : p >= 0 ? levels[p] : 0.0, p == -1, g);
        bool dup = false;
        for (int q = 0; q < n_parts && !dup; q++)
            dup = !memcmp(parts[q], g, sizeof(int) * (size_t)c->n_ranks);
        if (dup) continue;
        err = partition_candidates(s, g, n_groups[n_parts], keys);
        n_parts++;
    }
    return err;
}

static int cmp_rel(double a, double b)
{
    if (fabs(a - b) <= 1e-9 * fmax(fabs(a), fabs(b))) return 0;
    return a > b ? 1 : -1;
}

/* Whether a is strictly better than b: the objective, the other figure,
 * fewer ranks, the exact join. Equal candidates keep their order. */
static bool better(const struct plan_candidate *a, const struct plan_candidate *b,
                   enum plan_objective o)
{
    const int d = cmp_rel(a->decode_tok_s, b->decode_tok_s), t = cmp_rel(b->ttft_s, a->ttft_s);
    const int first = o == PLAN_OBJECTIVE_DECODE ? d : t,
              second = o == PLAN_OBJECTIVE_DECODE ? t : d;
    if (first) return first > 0;
    if (second) return second > 0;
    if (a->n_ranks != b->n_ranks) return a->n_ranks < b->n_ranks;
    return a->join == PLAN_JOIN_GATHER && b->join == PLAN_JOIN_SUM;
}

static void choose(struct plan_result *res, const struct plan_workload *w)
{
    const uint32_t all = (1u << PLAN_LAYOUT_COUNT) - 1, mask = w->layouts ? w->layouts : all;
    res->chosen = res->best_single = -1;
    for (int i = 0; i < res->n_cands; i++) {
        const struct plan_candidate *cd = &res->cands[i];
        if (!cd->fits) continue;
        if (cd->layout == PLAN_LAYOUT_SINGLE &&
            (res->best_single < 0 || better(cd, &res->cands[res->best_single], w->objective)))
            res->best_single = i;
        if ((mask & (1u << cd->layout)) &&
            (res->chosen < 0 || better(cd, &res->cands[res->chosen], w->objective)))
            res->chosen = i;
    }
    const struct plan_candidate *ch = res->chosen >= 0 ? &res->cands[res->chosen] : NULL;
    const struct plan_candidate *one = res->best_single >= 0 ? &res->cands[res->best_single] : NULL;
    if (!ch)
        res->verdict = PLAN_VERDICT_NO_FIT;
    else if (ch->layout == PLAN_LAYOUT_SINGLE)
        res->verdict = PLAN_VERDICT_SINGLE;
    else if (!one)
        res->verdict = PLAN_VERDICT_MEMORY;
    else if (better(one, ch, w->objective))
        res->verdict = PLAN_VERDICT_SLOWER;
    else
        res->verdict = PLAN_VERDICT_FASTER;
    /* invariants 1 and 2 */
    TT_ASSERT(!ch || ch->fits);
    TT_ASSERT(!(mask & (1u << PLAN_LAYOUT_SINGLE)) || !one || !better(one, ch, w->objective));
}

static int check_workload(const struct plan_workload *w)
{
    if (w->prompt_tokens < 1 || w->prompt_tokens > (1 << 24) || w->n_ctx < w->prompt_tokens ||
        w->n_ctx > (1 << 24))
        return tt_error_set(TT_EINVAL, "workload: need 1 <= prompt (%d) <= context (%d) <= %d",
                            w->prompt_tokens, w->n_ctx, 1 << 24);
    if (w->n_batch < 1 || w->n_batch > (1 << 20) || w->n_streams < 1 || w->n_streams > 4096)
        return tt_error_set(TT_EINVAL,
                            "workload: batch %d must be in [1, %d], streams %d in [1, 4096]",
                            w->n_batch, 1 << 20, w->n_streams);
    if ((unsigned)w->objective >= PLAN_OBJECTIVE_COUNT || w->layouts >= (1u << PLAN_LAYOUT_COUNT))
        return tt_error_set(TT_EINVAL, "workload: unknown objective or layout");
    return 0;
}

int plan_search(struct plan_result *res, const struct plan_model *pm, const struct plan_cluster *c,
                const struct plan_workload *w)
{
    memset(res, 0, sizeof(*res));
    res->chosen = res->best_single = -1;
    int err = check_workload(w);
    if (!err) err = plan_cluster_check(c);
    if (err) return err;
    const size_t L = (size_t)pm->hp.n_layer, S = (size_t)c->n_ranks;
    struct search *s = calloc(1, sizeof(*s));
    res->cands = calloc(PLAN_CANDIDATES_MAX, sizeof(*res->cands));
    if (s) {
        s->cost = malloc(sizeof(double) * S * L);
        s->mem = malloc(sizeof(double) * S * L);
        s->comm = malloc(sizeof(double) * S * L);
        s->dp = malloc(sizeof(double) * (S + 1) * (L + 1));
        s->arg = malloc(sizeof(int32_t) * (S + 1) * (L + 1));
    }
    if (!s || !res->cands || !s->cost || !s->mem || !s->comm || !s->dp || !s->arg) {
        err = tt_error_set(TT_ENOMEM, "out of memory for the planner");
        goto fail_alloc;
    }
    *s = (struct search){.pm = pm,
                         .c = c,
                         .w = w,
                         .res = res,
                         .cost = s->cost,
                         .mem = s->mem,
                         .comm = s->comm,
                         .dp = s->dp,
                         .arg = s->arg};
    for (int k = 1; k <= c->n_ranks; k++)
        s->emax[k] = expected_max_load(pm->hp.n_expert_used, TT_MIN(k, TT_MAX(pm->hp.n_expert, 1)));
    err = enumerate(s);
    if (!err) choose(res, w);
fail_alloc:
    if (s) {
        free(s->arg);
        free(s->dp);
        free(s->mem);
        free(s->comm);
        free(s->cost);
    }
    free(s);
    if (err) plan_result_free(res);
    return err;
}

void plan_result_free(struct plan_result *res)
{
    free(res->cands);
    res->cands = NULL;
    res->n_cands = 0;
    res->chosen = res->best_single = -1;
}

struct plan *plan_from_candidate(const struct plan_model *pm, const struct plan_candidate *cd,
                                 int n_ranks)
{
    if (n_ranks < 1 || n_ranks > PLAN_RANKS_MAX) {
        tt_error_set(TT_EINVAL, "rank count %d outside [1, %d]", n_ranks, PLAN_RANKS_MAX);
        return NULL;
    }
    int32_t *stage_of = malloc(sizeof(int32_t) * (size_t)n_ranks), ends[PLAN_CLUSTER_RANKS_MAX];
    double *weights = malloc(sizeof(double) * (size_t)n_ranks);
    struct plan *p = NULL;
    if (!stage_of || !weights) {
        tt_error_set(TT_ENOMEM, "out of memory");
        goto done;
    }
    for (int r = 0; r < n_ranks; r++) {
        stage_of[r] = PLAN_STAGE_IDLE;
        weights[r] = 1.0;
    }
    for (int i = 0; i < cd->n_ranks; i++) {
        const struct plan_cand_rank *cr = &cd->ranks[i];
        if (cr->rank < 0 || cr->rank >= n_ranks) {
            tt_error_set(TT_EINVAL, "the layout uses rank %d of a %d-rank cluster", cr->rank, n_ranks);
            goto done;
        }
        stage_of[cr->rank] = cr->stage;
        weights[cr->rank] = cr->slice.weight > 0 ? cr->slice.weight : 1.0;
    }
    for (int st = 0; st < cd->n_stages; st++) ends[st] = cd->stages[st].layer_end;
    p = plan_staged(&pm->hp, &pm->align, n_ranks, stage_of, cd->n_stages, ends, weights, cd->join);
done:
    free(weights);
    free(stage_of);
    return p;
}

const char *plan_layout_name(enum plan_layout layout)
{
    static const char *const names[PLAN_LAYOUT_COUNT] = {"single", "tp", "pp", "hybrid"};
    return (unsigned)layout < PLAN_LAYOUT_COUNT ? names[layout] : "unknown";
}

int plan_parse_layouts(const char *s, uint32_t *mask)
{
    *mask = 0;
    if (!strcmp(s, "auto")) return 0;
    const char *p = s;
    while (*p) {
        const size_t n = strcspn(p, ",");
        int found = -1;
        for (int l = 0; l < PLAN_LAYOUT_COUNT && found < 0; l++)
            if (strlen(plan_layout_name((enum plan_layout)l)) == n &&
                !strncmp(p, plan_layout_name((enum plan_layout)l), n))
                found = l;
        if (found < 0)
            return tt_error_set(TT_EINVAL,
                                "unknown layout in '%s' (auto, or a comma list of single, tp, pp, "
                                "hybrid)",
                                s);
        *mask |= 1u << found;
        p += n + (p[n] == ',');
    }
    return *mask ? 0 : tt_error_set(TT_EINVAL, "no layout in '%s'", s);
}

void plan_workload_default(struct plan_workload *w)
{
    *w = (struct plan_workload){.prompt_tokens = PLAN_PROMPT_DEFAULT,
                                .n_ctx = PLAN_CTX_DEFAULT,
                                .n_batch = PLAN_BATCH_DEFAULT,
                                .n_streams = 1,
                                .objective = PLAN_OBJECTIVE_DECODE,
                                .layouts = 0};
}
