/*
 * engine_forward.c: one batch through every layer.
 *
 * See engine.c for the data flow. Products that read the same input (q/k/v,
 * gate/up) run as one parallel job; the input is converted once per distinct
 * vec_dot type among their weights (Q4_K_M files mix Q4_K, Q6_K and Q8_0).
 * On several ranks each rank computes its heads and FFN columns; the partial
 * outputs of the attention and FFN down projections are summed across ranks
 * (forward_allreduce), after which every rank holds the same residual stream.
 */
#include "engine_internal.h"

#include <math.h>
#include <string.h>

void forward_allreduce(struct engine *e, float *x, int64_t n)
{
    if (e->tp_size == 1) return;
    int err = comm_allreduce_sum(e->tp_comm, x, n, e->wire);
    TT_ASSERT(err == 0 && "all-reduce failed: a rank is gone"); /* see engine_worker_run */
}

/* Every rank's `col` slice of n_tok rows, gathered into whole rows of
 * full_w floats: out[t] = [rank 0's part | rank 1's part | ...]. */
static void gather_rows(struct engine *e, const float *local, int64_t n_tok, enum join_width col,
                        int64_t full_w, float *out)
{
    const int R = e->tp_size;
    for (int r = 0; r < R; r++)
        e->sizes[r] = sizeof(float) * (size_t)n_tok * (size_t)e->widths[r * JOIN_WIDTHS_COUNT + col];
    int err = comm_allgatherv(e->tp_comm, local, e->sizes[e->tp_rank], e->gathered, e->sizes);
    TT_ASSERT(err == 0 && "all-gather failed: a rank is gone");
    const float *src = e->gathered;
    int64_t off = 0;
    for (int r = 0; r < R; r++) {
        const int64_t w = e->widths[r * JOIN_WIDTHS_COUNT + col];
        for (int64_t t = 0; t < n_tok; t++)
            memcpy(out + t * full_w + off, src + t * w, sizeof(float) * (size_t)w);
        src += n_tok * w;
        off += w;
    }
    TT_ASSERT(off == full_w);
}

static bool joins_by_gather(const struct engine *e)
{
    return e->join == PLAN_JOIN_GATHER && e->tp_size > 1;
}

/* out[t] (n_embd, complete on every rank) = W . in[t], where `in` is this
 * rank's `col` slice of the projection's input: gathered into whole rows and
 * projected onto this rank's output rows, then gathered again (GATHER), or
 * projected by this rank's columns and all-reduced (SUM). */
static void project_join(struct engine *e, const struct engine_weight *w, const float *in,
                         int64_t n_tok, enum join_width col, int64_t full_in, float *out)
{
    const int64_t E = e->m->hp.n_embd;
    if (joins_by_gather(e)) {
        gather_rows(e, in, n_tok, col, full_in, e->full);
        ops_linear(e, w, 0, e->full, n_tok, e->part);
        gather_rows(e, e->part, n_tok, JOIN_EMBD, E, out);
        return;
    }
    if (w->n_in) ops_linear(e, w, 0, in, n_tok, out);
    else memset(out, 0, sizeof(float) * (size_t)(n_tok * E));
    forward_allreduce(e, out, n_tok * E);
}

/* outs[i][t] = ws[i] . x[t]: one conversion per distinct activation type,
 * then one fused job. Views with no rows (a rank without heads) are skipped. */
static void linear_multi(struct engine *e, const struct engine_weight *const *ws, int n_w,
                         int64_t expert, const float *x, int64_t n_tok, float *const *outs)
{
    struct matmul_task tasks[ENGINE_MATMULS_MAX];
    enum tt_type slot_type[ENGINE_MATMULS_MAX];
    int n_slots = 0, n_tasks = 0;
    TT_ASSERT(n_w <= ENGINE_MATMULS_MAX);
    for (int i = 0; i < n_w; i++) {
        const struct engine_weight *w = ws[i];
        if (w->n_out == 0) continue;
        enum tt_type at = tt_type_get(w->type)->vec_dot_type;
        size_t arb = tt_row_size(at, w->n_in);
        int s = 0;
        while (s < n_slots && slot_type[s] != at) s++;
        if (s == n_slots) {
            slot_type[n_slots++] = at;
            ops_convert(e, x, w->n_in, n_tok, w->n_in, at, e->act[s], arb);
        }
        tasks[n_tasks++] = (struct matmul_task){ w, expert, e->act[s], arb, n_tok, outs[i], w->n_out };
    }
    if (n_tasks) ops_matmul(e, tasks, n_tasks);
}

static void add_bias(float *y, const float *bias, int64_t n, int64_t n_tok)
{
    if (!bias) return;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < n; i++) y[t * n + i] += bias[i];
}

static void head_norm(float *x, const float *w, int64_t n_rows, int hd, float eps)
{
    if (!w) return;
    for (int64_t r = 0; r < n_rows; r++) ops_rmsnorm(x + r * hd, w, x + r * hd, hd, eps);
}

struct swiglu_job {
    float *a;
    const float *b;
    int64_t n;
};

static void swiglu_run(void *p, int ith, int nth)
{
    struct swiglu_job *j = p;
    int64_t i0, i1;
    tt_split_range(j->n, ith, nth, 64, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) j->a[i] = j->a[i] / (1.0f + expf(-j->a[i])) * j->b[i];
}

/* a = silu(a) * b over n elements, spread over the pool (expf is the cost). */
static void swiglu(struct engine *e, float *a, const float *b, int64_t n)
{
    struct swiglu_job j = { a, b, n };
    if (n < 4096) swiglu_run(&j, 0, 1);
    else tt_pool_run(e->pool, swiglu_run, &j);
}

static void store_kv(struct engine *e, int il, int n_tok)
{
    const int64_t kvd = (int64_t)e->n_kv_local * e->m->hp.head_dim;
    if (kvd == 0) return;
    for (int t = 0; t < n_tok; t++) {
        size_t off = kv_offset(e, e->tok_seq[t], il, e->tok_pos[t]);
        e->ops->quantize_act[e->kv_type](e->k + t * kvd, e->k_cache + off, kvd);
        e->ops->quantize_act[e->kv_type](e->v + t * kvd, e->v_cache + off, kvd);
    }
}

static void attention_block(struct engine *e, int il, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct engine_layer *l = &e->layers[il];
    const int64_t E = hp->n_embd, hd = hp->head_dim;
    for (int t = 0; t < n_tok; t++) ops_rmsnorm(e->x + t * E, l->attn_norm, e->xn + t * E, E, hp->rms_eps);
    const struct engine_weight *ws[] = { &l->wq, &l->wk, &l->wv };
    float *outs[] = { e->q, e->k, e->v };
    linear_multi(e, ws, 3, 0, e->xn, n_tok, outs);
    add_bias(e->q, l->bq, e->n_head_local * hd, n_tok);
    add_bias(e->k, l->bk, e->n_kv_local * hd, n_tok);
    add_bias(e->v, l->bv, e->n_kv_local * hd, n_tok);
    head_norm(e->q, l->q_norm, (int64_t)n_tok * e->n_head_local, (int)hd, hp->rms_eps);
    head_norm(e->k, l->k_norm, (int64_t)n_tok * e->n_kv_local, (int)hd, hp->rms_eps);
    ops_rope(e, e->q, n_tok, e->n_head_local, e->rope_cs);
    ops_rope(e, e->k, n_tok, e->n_kv_local, e->rope_cs);
    store_kv(e, il, n_tok);
    ops_attention(e, il, n_tok);
    project_join(e, &l->wo, e->attn, n_tok, JOIN_HEADS, hp->n_head * hd, e->ffn_out);
    for (int64_t i = 0; i < n_tok * E; i++) e->x[i] += e->ffn_out[i];
}

/* SwiGLU FFN of n_tok rows of `in` into `out` (each [n_tok][n_embd]).
 * col = JOIN_FF / JOIN_SHEXP: a tensor-parallel FFN whose columns are split
 * over the ranks, joined so that `out` is complete on every rank;
 * col = JOIN_WIDTHS_COUNT: a whole expert held here (local index `expert`). */
static void swiglu_ffn(struct engine *e, const struct engine_weight *gate,
                       const struct engine_weight *up, const struct engine_weight *down,
                       int64_t expert, const float *in, int64_t n_tok, float *out,
                       enum join_width col, int64_t full_ff)
{
    const struct engine_weight *ws[] = { gate, up };
    float *outs[] = { e->ffn_a, e->ffn_b };
    linear_multi(e, ws, 2, expert, in, n_tok, outs);
    swiglu(e, e->ffn_a, e->ffn_b, n_tok * gate->n_out);
    if (col == JOIN_WIDTHS_COUNT) ops_linear(e, down, expert, e->ffn_a, n_tok, out);
    else project_join(e, down, e->ffn_a, n_tok, col, full_ff, out);
}

/* Router of every token of the batch (moe_route_token). */
static void route(struct engine *e, int64_t n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const int X = hp->n_expert, K = hp->n_expert_used;
    for (int64_t t = 0; t < n_tok; t++)
        moe_route_token(e->router + t * X, X, K, hp->expert_norm, e->sel + t * K, e->sel_w + t * K);
}

/* Append the pairs of expert x dealt to this rank, in token order, from row
 * n: their indices into e->gather, their input rows into e->xg. Returns the
 * new row count. */
static int gather_expert_pairs(struct engine *e, int x, int64_t n_tok, int n)
{
    const int64_t E = e->m->hp.n_embd;
    const int K = e->m->hp.n_expert_used;
    for (int64_t t = 0; t < n_tok; t++)
        for (int k = 0; k < K; k++)
            if (e->sel[t * K + k] == x && e->moe_pair_rank[t * K + k] == e->tp_rank) {
                e->gather[n] = (int32_t)(t * K + k);
                memcpy(e->xg + n * E, e->xn + t * E, sizeof(float) * (size_t)E);
                n++;
            }
    return n;
}

/* The experts held here when this rank's pairs of the step fit one batch
 * (decode): every expert's gate and up products in one parallel job, one
 * SwiGLU, every down product in a second job, instead of two jobs per
 * expert. The same products on the same rows as local_experts, so the same
 * bits. Returns false (nothing done) when the pairs do not fit. */
static bool local_experts_batched(struct engine *e, int il, int64_t n_tok, float *pairs, bool acc)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct engine_layer *l = &e->layers[il];
    const struct moe_placement *p = &e->moe_place[il];
    const int64_t E = hp->n_embd, F = hp->n_ff_exp;
    const int K = hp->n_expert_used;
    struct matmul_task tasks[ENGINE_MOE_TASKS_MAX];
    int first[ENGINE_MOE_TASKS_MAX / 2 + 1], n_exp = 0, n = 0;
    for (int64_t i = 0; i < n_tok * K; i++) n += e->moe_pair_rank[i] == e->tp_rank;
    if (n > e->n_batch) return false;
    n = 0;
    for (int x = 0; x < hp->n_expert; x++) { /* rows of xg in (expert, token) order */
        if (moe_copy_index(p, x, e->tp_rank) < 0) continue;
        const int n0 = n;
        n = gather_expert_pairs(e, x, n_tok, n);
        if (n == n0) continue;
        if (2 * (n_exp + 1) > ENGINE_MOE_TASKS_MAX) return false;
        const int64_t slot = e->moe_slot_of[(size_t)il * hp->n_expert + x];
        tasks[2 * n_exp] =
            (struct matmul_task){ &l->gate_exps, slot, NULL, 0, n - n0, e->ffn_a + n0 * F, F };
        tasks[2 * n_exp + 1] =
            (struct matmul_task){ &l->up_exps, slot, NULL, 0, n - n0, e->ffn_b + n0 * F, F };
        first[n_exp++] = n0;
    }
    first[n_exp] = n;
    if (n_exp == 0) return true;
    const struct engine_weight *in_w[2] = { &l->gate_exps, &l->up_exps };
    const enum tt_type gate_at = tt_type_get(l->gate_exps.type)->vec_dot_type;
    for (int i = 0; i < 2; i++) { /* gate and up inputs, converted once per type */
        const enum tt_type at = tt_type_get(in_w[i]->type)->vec_dot_type;
        const size_t arb = tt_row_size(at, E);
        const uint8_t *act = e->act[i > 0 && at != gate_at];
        if (i == 0 || at != gate_at) ops_convert(e, e->xg, E, n, E, at, e->act[i], arb);
        for (int j = 0; j < n_exp; j++) {
            tasks[2 * j + i].act = act + (size_t)first[j] * arb;
            tasks[2 * j + i].act_row_bytes = arb;
        }
    }
    ops_matmul(e, tasks, 2 * n_exp);
    swiglu(e, e->ffn_a, e->ffn_b, n * F);
    const enum tt_type dt = tt_type_get(l->down_exps.type)->vec_dot_type;
    const size_t drb = tt_row_size(dt, F);
    ops_convert(e, e->ffn_a, F, n, F, dt, e->act[0], drb);
    float *y = pairs ? pairs : e->yg;
    for (int j = 0; j < n_exp; j++)
        tasks[j] = (struct matmul_task){ &l->down_exps, tasks[2 * j].expert,
                                         e->act[0] + (size_t)first[j] * drb, drb,
                                         first[j + 1] - first[j], y + first[j] * E, E };
    ops_matmul(e, tasks, n_exp);
    for (int i = 0; acc && i < n; i++) { /* expert order, as local_experts adds */
        const int64_t t = e->gather[i] / K;
        const float w = e->sel_w[e->gather[i]];
        for (int64_t d = 0; d < E; d++) e->ffn_out[t * E + d] += w * y[i * E + d];
    }
    return true;
}

/* The experts held here, each on the tokens dealt to this rank (moe_deal:
 * e->moe_pair_rank), in expert order. Outputs in pair order (expert, token)
 * into `pairs` [n][n_embd]; with `acc`, also weighted and added into
 * e->ffn_out. */
static void local_experts(struct engine *e, int il, int64_t n_tok, float *pairs, bool acc)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct engine_layer *l = &e->layers[il];
    const struct moe_placement *p = &e->moe_place[il];
    const int64_t E = hp->n_embd;
    const int K = hp->n_expert_used;
    int n_pairs = 0;
    for (int x = 0; x < hp->n_expert; x++) {
        if (moe_copy_index(p, x, e->tp_rank) < 0) continue;
        const int n = gather_expert_pairs(e, x, n_tok, 0);
        if (n == 0) continue;
        float *y = pairs ? pairs + (size_t)n_pairs * E : e->yg;
        swiglu_ffn(e, &l->gate_exps, &l->up_exps, &l->down_exps,
                   e->moe_slot_of[(size_t)il * hp->n_expert + x], e->xg, n, y, JOIN_WIDTHS_COUNT, 0);
        for (int i = 0; acc && i < n; i++) {
            const int64_t t = e->gather[i] / K;
            const float w = e->sel_w[e->gather[i]];
            for (int64_t d = 0; d < E; d++) e->ffn_out[t * E + d] += w * y[i * E + d];
        }
        n_pairs += n;
    }
}

/* GATHER join of the experts: every rank's pairs are all-gathered, then
 * added per token in expert order, exactly as one rank adds them. Rank r's
 * block lists its pairs in (expert, token) order, so walking all pairs in
 * that order with a cursor per rank finds each output. */
static void join_experts(struct engine *e, int il, int64_t n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const int64_t E = hp->n_embd;
    const int K = hp->n_expert_used, R = e->tp_size;
    int64_t count[MOE_RANKS_MAX] = { 0 }, cursor[MOE_RANKS_MAX];
    for (int64_t i = 0; i < n_tok * K; i++) count[e->moe_pair_rank[i]]++;
    for (int r = 0, at = 0; r < R; at += (int)count[r], r++) {
        e->sizes[r] = sizeof(float) * (size_t)count[r] * (size_t)E;
        cursor[r] = at;
    }
    int err = comm_allgatherv(e->tp_comm, e->part, e->sizes[e->tp_rank], e->gathered, e->sizes);
    TT_ASSERT(err == 0 && "all-gather failed: a rank is gone");
    for (int x = 0; x < hp->n_expert; x++) {
        for (int64_t t = 0; t < n_tok; t++)
            for (int k = 0; k < K; k++) {
                if (e->sel[t * K + k] != x) continue;
                const int r = e->moe_pair_rank[t * K + k];
                const float *y = e->gathered + (size_t)cursor[r]++ * E, w = e->sel_w[t * K + k];
                for (int64_t d = 0; d < E; d++) e->ffn_out[t * E + d] += w * y[d];
            }
    }
}

/* Mixture of experts: whole experts on ranks (expert parallelism); each
 * expert computes only the tokens routed to it. */
static void moe_ffn(struct engine *e, int il, int64_t n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct engine_layer *l = &e->layers[il];
    const int64_t E = hp->n_embd;
    ops_linear(e, &l->gate_inp, 0, e->xn, n_tok, e->router);
    route(e, n_tok);
    moe_record(e, il, n_tok);
    moe_deal_layer(e, il, n_tok);
    memset(e->ffn_out, 0, sizeof(float) * (size_t)(n_tok * E));
    if (joins_by_gather(e)) {
        if (!local_experts_batched(e, il, n_tok, e->part, false))
            local_experts(e, il, n_tok, e->part, false);
        join_experts(e, il, n_tok);
    } else {
        if (!local_experts_batched(e, il, n_tok, NULL, true))
            local_experts(e, il, n_tok, NULL, true);
        forward_allreduce(e, e->ffn_out, n_tok * E);
    }
    if (hp->n_ff_shexp > 0) { /* complete on every rank after its own join */
        swiglu_ffn(e, &l->gate_shexp, &l->up_shexp, &l->down_shexp, 0, e->xn, n_tok, e->yg,
                   JOIN_SHEXP, hp->n_ff_shexp);
        for (int64_t t = 0; t < n_tok; t++) {
            float s = e->ops->dot_f32(E, l->gate_inp_shexp, e->xn + t * E);
            s = 1.0f / (1.0f + expf(-s));
            for (int64_t d = 0; d < E; d++) e->ffn_out[t * E + d] += s * e->yg[t * E + d];
        }
    }
}

static void ffn_block(struct engine *e, int il, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct engine_layer *l = &e->layers[il];
    const int64_t E = hp->n_embd;
    for (int t = 0; t < n_tok; t++) ops_rmsnorm(e->x + t * E, l->ffn_norm, e->xn + t * E, E, hp->rms_eps);
    if (hp->n_expert) moe_ffn(e, il, n_tok);
    else swiglu_ffn(e, &l->w_gate, &l->w_up, &l->w_down, 0, e->xn, n_tok, e->ffn_out, JOIN_FF, hp->n_ff);
    for (int64_t i = 0; i < n_tok * E; i++) e->x[i] += e->ffn_out[i];
}

const float *forward_logits_host(struct engine *e, const float **block_max)
{
    if (!e->accel.ctx || !e->accel.logits_host || e->accel.n_layers_accel != e->m->hp.n_layer) return NULL;
    return e->accel.logits_host(e->accel.ctx, block_max);
}

const struct sampler_cand *forward_cands_host(struct engine *e, int *n)
{
    if (!e->accel.ctx || !e->accel.cands_host || e->accel.n_layers_accel != e->m->hp.n_layer) return NULL;
    return e->accel.cands_host(e->accel.ctx, n);
}

void forward_logits(struct engine *e, const int32_t *rows, int n, float *out)
{
    if (e->accel.ctx && e->accel.logits && e->accel.n_layers_accel == e->m->hp.n_layer) {
        int err = e->accel.logits(e->accel.ctx, e, rows, n, out);
        TT_ASSERT(err == 0 && "accelerator failed computing logits");
        return;
    }
    const struct model_hparams *hp = &e->m->hp;
    const int64_t E = hp->n_embd;
    if (e->n_vocab_local == 0) return; /* not in the last stage: no output rows here */
    for (int i = 0; i < n; i++)
        ops_rmsnorm(e->x + rows[i] * E, e->output_norm, e->xn + i * E, E, hp->rms_eps);
    ops_linear(e, &e->output, 0, e->xn, n, out);
}

#define PIPELINE_TAG 7901

/* The residual stream from the previous stage: its first rank sends it to
 * this stage's first rank, which passes it to the others of its group. */
static void stage_receive(struct engine *e, size_t bytes)
{
    int err = 0;
    if (e->tp_rank == 0) err = comm_recv(e->comm, e->x, bytes, e->prev_leader, PIPELINE_TAG);
    if (!err && e->tp_size > 1) err = comm_bcast(e->tp_comm, e->x, bytes, 0);
    TT_ASSERT(err == 0 && "pipeline receive failed: a rank is gone");
}

/* Every rank of a group holds the same stream after the joins: the first
 * sends it on. */
static void stage_send(struct engine *e, size_t bytes)
{
    if (e->next_leader < 0 || e->tp_rank != 0) return;
    int err = comm_send(e->comm, e->x, bytes, e->next_leader, PIPELINE_TAG);
    TT_ASSERT(err == 0 && "pipeline send failed: a rank is gone");
}

/* Layers [il0, il1) of a batch whose rope table is not made yet. */
static void run_layers(struct engine *e, int il0, int il1, int n_tok)
{
    if (il0 < il1) ops_rope_table(e, n_tok, e->rope_cs);
    for (int il = il0; il < il1; il++) {
        attention_block(e, il, n_tok);
        ffn_block(e, il, n_tok);
    }
}

void forward_batch(struct engine *e, const struct engine_tok *toks, int n_tok)
{
    TT_ASSERT(n_tok <= e->n_batch);
    const struct model_weight *w = &e->m->token_embd;
    const struct tt_type_traits *tr = tt_type_get(w->type);
    const size_t x_bytes = sizeof(float) * (size_t)n_tok * (size_t)w->ne[0];
    const bool first_stage = e->stage == 0;
    for (int t = 0; t < n_tok; t++) {
        const int s = toks[t].seq;
        e->tok_seq[t] = s;
        e->tok_pos[t] = e->seq_pos[s]++; /* later tokens of s sit after this one */
        if (first_stage) tr->to_float(shard_embd_row(e, toks[t].id), e->x + (size_t)t * w->ne[0], w->ne[0]);
    }
    if (e->stage == PLAN_STAGE_IDLE) return; /* an idle rank only keeps the positions */
    if (!first_stage) stage_receive(e, x_bytes);
    int il = e->slice.layers.begin;
    if (e->accel.ctx && e->accel.n_layers_accel > 0) { /* one rank holding every layer */
        il = e->accel.n_layers_accel;
        int err = e->accel.run_layers(e->accel.ctx, e, 0, il, n_tok);
        TT_ASSERT(err == 0 && "accelerator failed running layers");
    }
    run_layers(e, il, e->slice.layers.end, n_tok);
    stage_send(e, x_bytes);
}
