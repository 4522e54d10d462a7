/*
 * engine.c: set-up of an engine and the layer loop of the forward pass.
 *
 * Data flow of one batch of B tokens (shapes in floats):
 *   x[B][E] = embed(tokens)
 *   per layer:  xn = rmsnorm(x) ; q,k,v = Wq,Wk,Wv . xn (+bias) ; (qwen3: q,k head norms)
 *               rope(q,k) ; cache <- k,v ; attn = softmax(q.K/sqrt(d)) V ; x += Wo . attn
 *               xn = rmsnorm(x) ; x += FFN(xn)   (dense SwiGLU or mixture of experts)
 *   logits = Wout . rmsnorm(x)   (last row or every row)
 * Invariant: seq_pos[s] counts the positions of sequence s whose K/V are in
 * the cache; a token of s in a batch sits at seq_pos[s] plus the number of
 * tokens of s before it in the batch, attends to positions 0..its own, and
 * seq_pos[s] advances when the batch completes.
 */
#include "engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int alloc_buffers(struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    const size_t B = (size_t)e->n_batch, E = (size_t)hp->n_embd, HD = (size_t)hp->head_dim;
    const size_t qd = (size_t)e->n_head_local * HD, kvd = (size_t)e->n_kv_local * HD;
    size_t ff = (size_t)TT_MAX(hp->n_ff, TT_MAX(hp->n_ff_exp, hp->n_ff_shexp));
    size_t in_max = TT_MAX(TT_MAX(E, (size_t)hp->n_head * HD), ff);
    e->kv_row_bytes = tt_row_size(e->kv_type, (int64_t)TT_MAX(kvd, 1));
    const size_t n_kv_layers = (size_t)(e->slice.layers.end - e->slice.layers.begin); /* the stage's */
    size_t kv_bytes = (size_t)e->n_seq * TT_MAX(n_kv_layers, 1) * (size_t)e->n_ctx * e->kv_row_bytes;
    e->k_cache = tt_alloc(kv_bytes);
    e->v_cache = tt_alloc(kv_bytes);
    e->x = tt_alloc(B * E * 4);
    e->xn = tt_alloc(B * E * 4);
    e->q = tt_alloc(B * TT_MAX(qd, 1) * 4);
    e->k = tt_alloc(B * TT_MAX(kvd, 1) * 4);
    e->v = tt_alloc(B * TT_MAX(kvd, 1) * 4);
    e->attn = tt_alloc(B * TT_MAX(qd, 1) * 4);
    e->ffn_a = tt_alloc(B * ff * 4);
    e->ffn_b = tt_alloc(B * ff * 4);
    e->ffn_out = tt_alloc(B * E * 4);
    e->rope_cs = tt_alloc(B * (size_t)hp->n_rot * 4);
    e->scores = tt_alloc((size_t)e->n_threads * (size_t)e->n_ctx * 4);
    e->q_half = tt_alloc((size_t)e->n_threads * HD * 4);
    e->act_bytes = B * in_max * 4;
    e->buffers_bytes = 2 * kv_bytes + ENGINE_MATMULS_MAX * e->act_bytes;
    e->logits_local = tt_alloc(B * (size_t)TT_MAX(e->n_vocab_local, 1) * 4);
    e->cand = tt_alloc(sizeof(struct sampler_cand) * (size_t)(e->n_ranks + 1) * B * ENGINE_CAND_SLOTS);
    /* gathering joins: whole rows, and the all-gather receive buffer */
    const size_t row_max = TT_MAX(TT_MAX(E, (size_t)hp->n_head * HD), ff);
    const size_t K = (size_t)TT_MAX(hp->n_expert_used, 1);
    e->full = tt_alloc(B * row_max * 4);
    e->part = tt_alloc(B * TT_MAX(row_max, hp->n_expert ? K * E : 0) * 4);
    e->gathered = tt_alloc(B * TT_MAX(row_max, hp->n_expert ? K * E : 0) * 4);
    e->sizes = tt_alloc(sizeof(size_t) * (size_t)e->n_ranks);
    e->seq_pos = tt_alloc(sizeof(int) * (size_t)e->n_seq);
    e->tok_seq = tt_alloc(B * 4);
    e->tok_pos = tt_alloc(B * 4);
    e->rows = tt_alloc(B * 4);

    bool ok = e->k_cache && e->v_cache && e->x && e->xn && e->q && e->k && e->v && e->attn &&
              e->ffn_a && e->ffn_b && e->ffn_out && e->rope_cs && e->scores && e->q_half &&
              e->logits_local && e->cand && e->seq_pos && e->tok_seq && e->tok_pos && e->rows &&
              e->full && e->part && e->gathered && e->sizes;
    for (int i = 0; i < ENGINE_MATMULS_MAX; i++) ok = (e->act[i] = tt_alloc(e->act_bytes)) && ok;
    if (hp->n_expert) {
        const size_t X = (size_t)hp->n_expert, K = (size_t)hp->n_expert_used;
        e->router = tt_alloc(B * X * 4);
        e->sel = tt_alloc(B * K * 4);
        e->sel_w = tt_alloc(B * K * 4);
        e->gather = tt_alloc(B * 4);
        e->xg = tt_alloc(B * E * 4);
        e->yg = tt_alloc(B * E * 4);
        ok = ok && e->router && e->sel && e->sel_w && e->gather && e->xg && e->yg;
    }
    if (!ok)
        return tt_error_set(TT_ENOMEM, "cannot allocate the KV cache (%.1f MiB) and buffers; "
                            "try a smaller --ctx", 2.0 * (double)kv_bytes / 1048576.0);
    return 0;
}

/* The ranks that take part in the steps (engine_internal.h: step_comm):
 * all, or rank 0 and those the plan gives layers (comm_split, collective). */
static int split_steps(struct engine *e, const struct plan *p)
{
    bool any = false;
    e->outside = calloc((size_t)e->n_ranks, 1);
    if (!e->outside) return tt_error_set(TT_ENOMEM, "out of memory");
    for (int r = 1; r < e->n_ranks; r++) any |= (e->outside[r] = p->ranks[r].stage == PLAN_STAGE_IDLE);
    e->step_comm = e->comm;
    e->step_rank = e->rank;
    e->step_size = e->n_ranks;
    if (!any) return 0;
    int err = comm_split(e->comm, e->outside[e->rank] ? COMM_COLOR_NONE : 0, e->rank, &e->step_comm);
    if (err) return err;
    e->step_comm_owned = e->step_comm != NULL;
    e->step_rank = e->step_comm ? comm_rank(e->step_comm) : 0;
    e->step_size = e->step_comm ? comm_size(e->step_comm) : 1;
    return 0;
}

/* This rank's stage group: its size and rank, the stage leaders around it,
 * every member's widths (for gathering slices into whole rows), and the
 * group's communicator: the whole comm when the group is every rank, a part
 * of it (comm_split, collective: decided from the plan, so every rank
 * calls it or none) when stages have several ranks, else none. */
static int take_group(struct engine *e, const struct plan *p)
{
    const struct model_hparams *hp = &e->m->hp;
    int lead[PLAN_RANKS_MAX], size[PLAN_RANKS_MAX] = { 0 };
    bool split = false;
    for (int r = e->n_ranks - 1; r >= 0; r--) {
        const int st = p->ranks[r].stage;
        if (st < 0) continue;
        lead[st] = r;
        size[st]++;
    }
    for (int st = 0; st < p->n_stages; st++) split |= size[st] > 1 && size[st] < e->n_ranks;
    e->stage = e->slice.stage;
    e->prev_leader = e->stage > 0 ? lead[e->stage - 1] : -1;
    e->next_leader = e->stage >= 0 && e->stage + 1 < p->n_stages ? lead[e->stage + 1] : -1;
    e->tp_size = 0;
    e->tp_rank = 0;
    e->widths = calloc((size_t)e->n_ranks * JOIN_WIDTHS_COUNT, sizeof(int32_t));
    if (!e->widths) return tt_error_set(TT_ENOMEM, "out of memory");
    for (int r = 0; r < e->n_ranks; r++) {
        const struct plan_rank *pr = &p->ranks[r];
        if (e->stage < 0 ? r != e->rank : pr->stage != e->stage) continue;
        if (r == e->rank) e->tp_rank = e->tp_size;
        int32_t *w = e->widths + (size_t)e->tp_size++ * JOIN_WIDTHS_COUNT;
        w[JOIN_HEADS] = (pr->head.end - pr->head.begin) * hp->head_dim;
        w[JOIN_FF] = pr->ff.end - pr->ff.begin;
        w[JOIN_SHEXP] = pr->shexp.end - pr->shexp.begin;
        w[JOIN_EMBD] = pr->embd.end - pr->embd.begin;
        w[JOIN_EXPERT_BEGIN] = pr->expert.begin;
        w[JOIN_EXPERT_END] = pr->expert.end;
    }
    if (e->tp_size == e->n_ranks) e->tp_comm = e->comm;
    int err = split_steps(e, p);
    if (err || !split) return err;
    err = comm_split(e->comm, e->stage >= 0 ? e->stage : COMM_COLOR_NONE, e->rank, &e->tp_comm);
    if (err) return err;
    e->tp_comm_owned = e->tp_comm != NULL;
    if (e->tp_comm && e->tp_size == 1) { /* a stage of one rank needs no group */
        comm_free(e->tp_comm);
        e->tp_comm = NULL;
        e->tp_comm_owned = false;
    }
    TT_ASSERT(!e->tp_comm || (comm_size(e->tp_comm) == e->tp_size && comm_rank(e->tp_comm) == e->tp_rank));
    return 0;
}

/* This rank's part of the plan (an even split when none is given). */
static int take_slice(struct engine *e, const struct engine_opts *opts)
{
    const struct model_hparams *hp = &e->m->hp;
    e->rank = e->comm ? comm_rank(e->comm) : 0;
    e->n_ranks = e->comm ? comm_size(e->comm) : 1;
    struct plan *own = NULL;
    const struct plan *p = opts->plan;
    if (!p) {
        struct plan_align a;
        plan_align_for_model(e->m, &a);
        if (!(own = plan_tensor_parallel(hp, &a, e->n_ranks, NULL, opts->join))) return TT_EINVAL;
        p = own;
    }
    if (p->n_ranks != e->n_ranks) {
        free(own);
        return tt_error_set(TT_EINVAL, "plan for %d ranks used with %d ranks", p->n_ranks, e->n_ranks);
    }
    e->slice = p->ranks[e->rank];
    e->join = p->join;
    e->pipeline = p->pipeline;
    int err = take_group(e, p);
    free(own);
    e->n_head_local = e->slice.head.end - e->slice.head.begin;
    e->n_kv_local = e->slice.kv.end - e->slice.kv.begin;
    e->n_vocab_local = e->slice.vocab.end - e->slice.vocab.begin;
    return err;
}

int engine_create(struct engine **out, const struct model *m, const struct engine_opts *opts)
{
    *out = NULL;
    tt_base_init();
    struct engine *e = calloc(1, sizeof(*e));
    if (!e) return tt_error_set(TT_ENOMEM, "out of memory");
    e->m = m;
    e->ops = kcpu_get();
    e->comm = opts->comm;
    e->wire = opts->wire;
    e->n_threads = opts->n_threads > 0 ? opts->n_threads : tt_cpu_count();
    e->n_ctx = opts->n_ctx > 0 ? opts->n_ctx : TT_MIN(m->hp.n_ctx_train, ENGINE_CTX_DEFAULT);
    e->n_batch = opts->n_batch > 0 ? opts->n_batch : ENGINE_BATCH_DEFAULT;
    e->kv_type = opts->kv == ENGINE_KV_F32 ? TT_TYPE_F32 : TT_TYPE_F16;
    e->n_seq = opts->n_seq > 0 ? opts->n_seq : 1;
    e->mem_limit = opts->mem_limit_bytes;
    int err = 0;
    if (e->n_seq > ENGINE_SEQ_MAX)
        err = tt_error_set(TT_EINVAL, "%d sequences exceed the limit %d", e->n_seq, ENGINE_SEQ_MAX);
    if (!err && ((unsigned)opts->kv >= ENGINE_KV_COUNT || (unsigned)opts->wire >= COMM_WIRE_COUNT))
        err = tt_error_set(TT_EINVAL, "KV cache type must be f16 or f32; wire f32, f16 or q8");
    else if (!err && (e->n_ctx > (1 << 24) || e->n_batch > 65536 || e->n_threads > 512))
        err = tt_error_set(TT_EINVAL, "context %d, batch %d or threads %d out of range", e->n_ctx,
                           e->n_batch, e->n_threads);
    if (!err) err = take_slice(e, opts);
    if (!err) err = alloc_buffers(e);
    if (!err) err = shard_build(e);
    if (!err) err = moe_setup(e, opts);
    if (!err) err = shard_exchange(e);
    if (!err && !(e->pool = tt_pool_create(e->n_threads)))
        err = tt_error_set(TT_ENOMEM, "cannot start %d threads", e->n_threads);
    if (!err && opts->n_gpu_layers != 0 && !e->pipeline) { /* collective (engine_cuda.c) */
        int aerr = engine_accel_cuda_create(e, opts->n_gpu_layers, &e->accel);
        if (aerr == TT_EUNSUPPORTED && opts->n_gpu_layers < 0) tt_error_clear(); /* auto: CPU is fine */
        else if (aerr) err = aerr;
    }
    if (!err) err = shard_pack(e); /* after the accelerator took its layers */
    if (err) {
        engine_destroy(e);
        return err;
    }
    *out = e;
    return 0;
}

void engine_destroy(struct engine *e)
{
    if (!e) return;
    if (e->accel.ctx) e->accel.destroy(e->accel.ctx);
    tt_pool_destroy(e->pool);
    moe_teardown(e);
    shard_free(e);
    if (e->tp_comm_owned) comm_free(e->tp_comm);
    if (e->step_comm_owned) comm_free(e->step_comm);
    free(e->outside);
    void *bufs[] = { e->k_cache, e->v_cache, e->x,      e->xn,      e->q,      e->k,
                     e->v,       e->attn,    e->ffn_a,  e->ffn_b,   e->ffn_out, e->rope_cs,
                     e->scores,  e->q_half,  e->router, e->sel,     e->sel_w,   e->gather,
                     e->xg,      e->yg,      e->logits_local, e->cand, e->seq_pos,
                     e->tok_seq, e->tok_pos, e->rows, e->full, e->part, e->gathered, e->sizes };
    for (size_t i = 0; i < TT_ARRAY_LEN(bufs); i++) tt_free(bufs[i]);
    for (int i = 0; i < ENGINE_MATMULS_MAX; i++) tt_free(e->act[i]);
    free(e->step_buf);
    free(e->step_toks);
    free(e->widths);
    free(e);
}

int engine_rank(const struct engine *e) { return e->rank; }
int engine_n_ranks(const struct engine *e) { return e->n_ranks; }
int engine_n_past(const struct engine *e) { return e->seq_pos[0]; }
int engine_n_seq(const struct engine *e) { return e->n_seq; }

int engine_seq_n_past(const struct engine *e, int seq)
{
    return seq >= 0 && seq < e->n_seq ? e->seq_pos[seq] : 0;
}
int engine_n_ctx(const struct engine *e) { return e->n_ctx; }
int engine_n_threads(const struct engine *e) { return e->n_threads; }
int engine_n_gpu_layers(const struct engine *e) { return e->accel.ctx ? e->accel.n_layers_accel : 0; }
double engine_gpu_bandwidth_gbs(struct engine *e)
{
    return e->accel.ctx && e->accel.copy_bandwidth_gbs ? e->accel.copy_bandwidth_gbs(e->accel.ctx) : 0.0;
}
const struct model *engine_model(const struct engine *e) { return e->m; }


uint64_t engine_memory_bytes(const struct engine *e)
{
    const uint64_t n_kv_layers = (uint64_t)(e->slice.layers.end - e->slice.layers.begin);
    return 2ull * (uint64_t)e->n_seq * n_kv_layers * (uint64_t)e->n_ctx * e->kv_row_bytes +
           (uint64_t)ENGINE_MATMULS_MAX * e->act_bytes + e->shard_bytes + e->packed_bytes;
}
