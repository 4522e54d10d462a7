/*
 * engine_dist.c: evaluation as seen from outside, on one rank or many.
 *
 * Protocol (SPMD, rank 0 drives). Every public call on rank 0 first
 * broadcasts a step header and its payload; ranks > 0 sit in
 * engine_worker_run() and execute the same step, so all ranks run the
 * forward pass in lockstep:
 *
 * Ranks a plan leaves out (idle, not rank 0) take no part: they wait in
 * engine_worker_run() for one stop message; the others' step traffic runs
 * on e->step_comm.
 *
 *   rank 0                           ranks > 0
 *   bcast(step header) ------------> op, n tokens, logits mode, k, payload size
 *   bcast(payload) ----------------> (id, seq, sample) per token, then for each
 *                                    sampled token its penalty history
 *   forward (2 all-reduces/layer)    forward (same batch, same positions)
 *   logits asked for: allgatherv of vocabulary slices, interleaved on rank 0
 *   sampled tokens: gather of k candidates per row to rank 0, which samples
 *
 * Candidates carry only what sampling needs: k is 1 for greedy decoding and
 * the samplers' largest top-k when they all cut to one (the tokens of the
 * global top k are each among their rank's k best), else ENGINE_CAND_MAX;
 * histories (the penalty's tokens, each rank adding the logits it owns)
 * travel only for rows whose sampler applies a penalty. Each rank sends
 * k + the step's longest history slots per row (cand_slots), padded with id
 * -1: a pipeline's last stage sends 8 bytes per greedy token, not a padded
 * 4 KiB, nor the vocabulary's logits.
 *
 * Both sides validate a step before touching any state (ids, sequences,
 * room in each sequence's context), so on error nothing changes; a worker
 * that receives a step it cannot accept returns TT_ECOMM: the cluster is out
 * of step and must stop.
 */
#include "engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum step_op { STEP_DECODE, STEP_TRUNCATE, STEP_STOP, STEP_REBALANCE, STEP_OP_COUNT };

struct step {
    int32_t op;
    int32_t n;         /* tokens (DECODE) or new position count (TRUNCATE) */
    int32_t mode;      /* enum engine_logits, gathered to rank 0 (DECODE) */
    int32_t k;         /* candidates per sampled row and rank (DECODE) */
    int32_t n_payload; /* int32 words after the header */
    int32_t seq;       /* TRUNCATE */
};

/* What a step needs besides the header: tokens and the sampling context. */
struct step_io {
    const struct engine_tok *toks;
    const int32_t *hist;            /* per sampled token: count, then ids */
    float *logits;                  /* rank 0: gathered logits, or NULL */
    struct sampler *const *samplers; /* rank 0: per sequence */
    int32_t *next;                  /* rank 0: sampled tokens */
};

static int check_batch(const struct engine *e, const struct engine_tok *toks, int n)
{
    int count[ENGINE_SEQ_MAX] = { 0 };
    if (n <= 0) return tt_error_set(TT_EINVAL, "nothing to evaluate");
    for (int i = 0; i < n; i++) {
        if (toks[i].id < 0 || toks[i].id >= e->m->hp.n_vocab)
            return tt_error_set(TT_EINVAL, "token id %d at index %d is outside the vocabulary [0, %d)",
                                toks[i].id, i, e->m->hp.n_vocab);
        if (toks[i].seq < 0 || toks[i].seq >= e->n_seq)
            return tt_error_set(TT_EINVAL, "sequence %d outside [0, %d)", toks[i].seq, e->n_seq);
        if (e->seq_pos[toks[i].seq] + ++count[toks[i].seq] > e->n_ctx)
            return tt_error_set(TT_ERANGE, "context full: sequence %d has %d cached tokens and %d new "
                                "ones, more than the context size %d (use --ctx to raise it)",
                                toks[i].seq, e->seq_pos[toks[i].seq], count[toks[i].seq], e->n_ctx);
    }
    return 0;
}

/* Full logits of `rows` rows (in logits_local) to rank 0: gather every rank's
 * vocabulary slice and interleave them into [rows][n_vocab]. */
static int gather_logits(struct engine *e, int rows, float *out)
{
    const int nv = e->m->hp.n_vocab, R = e->step_size;
    if (R == 1) {
        if (out) memcpy(out, e->logits_local, sizeof(float) * (size_t)rows * (size_t)nv);
        return 0;
    }
    size_t *sizes = malloc(sizeof(size_t) * (size_t)R);
    int32_t *counts = malloc(sizeof(int32_t) * (size_t)R);
    float *all = malloc(sizeof(float) * (size_t)rows * (size_t)nv);
    int err = sizes && counts && all ? 0 : tt_error_set(TT_ENOMEM, "out of memory gathering logits");
    int32_t mine = e->n_vocab_local; /* sizes are exchanged, so any plan works */
    if (!err) err = comm_allgather(e->step_comm, &mine, sizeof(mine), counts);
    for (int r = 0; !err && r < R; r++) sizes[r] = sizeof(float) * (size_t)rows * (size_t)counts[r];
    if (!err) err = comm_allgatherv(e->step_comm, e->logits_local, sizes[e->step_rank], all, sizes);
    if (!err && out) {
        const float *src = all;
        for (int r = 0, col = 0; r < R; col += counts[r], src += (size_t)rows * counts[r], r++)
            for (int t = 0; t < rows; t++)
                memcpy(out + (size_t)t * nv + col, src + (size_t)t * counts[r],
                       sizeof(float) * (size_t)counts[r]);
    }
    free(all);
    free(counts);
    free(sizes);
    return err;
}

/* Candidate slots per row of a step: k, plus its longest history (the
 * payload's histories, the same on every rank). */
static int cand_slots(const struct step *st, const struct engine_tok *toks, const int32_t *hist)
{
    int longest = 0;
    for (int i = 0; i < st->n; i++)
        if (toks[i].sample) {
            longest = TT_MAX(longest, *hist);
            hist += 1 + *hist;
        }
    TT_ASSERT(st->k + longest <= ENGINE_CAND_SLOTS);
    return st->k + longest;
}

/* Candidates of one row of this rank's logits slice: the k best, then the
 * history tokens it owns (for the repetition penalty), padded with id -1 to
 * `slots`. */
static void local_candidates(const struct engine *e, const float *logits, int k,
                             const int32_t *hist, int n_hist, int slots, struct sampler_cand *c)
{
    const int nvl = e->n_vocab_local, v0 = e->slice.vocab.begin;
    int n = sampler_top_k(logits, nvl, v0, TT_MIN(k, nvl), c);
    for (int h = 0; h < n_hist && n < slots; h++) {
        const int id = hist[h];
        bool have = id < v0 || id >= v0 + nvl;
        for (int j = 0; j < n && !have; j++) have = c[j].id == id;
        if (!have) c[n++] = (struct sampler_cand){ id, logits[id - v0] };
    }
    for (; n < slots; n++) c[n] = (struct sampler_cand){ -1, -INFINITY };
}

/* Grow the step scratch to hold `words` int32 and `n` tokens. */
static int step_reserve(struct engine *e, int64_t words, int n)
{
    if (words > e->step_words) {
        int32_t *buf = realloc(e->step_buf, sizeof(int32_t) * (size_t)words);
        if (!buf) return tt_error_set(TT_ENOMEM, "out of memory for a step of %d tokens", n);
        e->step_buf = buf;
        e->step_words = words;
    }
    if (n > e->step_toks_cap) {
        struct engine_tok *toks = realloc(e->step_toks, sizeof(*toks) * (size_t)n);
        if (!toks) return tt_error_set(TT_ENOMEM, "out of memory for a step of %d tokens", n);
        e->step_toks = toks;
        e->step_toks_cap = n;
    }
    return 0;
}

/* Sample the listed rows of the current batch: candidates from every rank
 * gathered at rank 0, which picks with the row's sequence's sampler. */
static int sample_rows(struct engine *e, const struct step *st, const struct engine_tok *toks,
                       int nr, int slots, const int32_t **hist, const struct step_io *io, int *n_next)
{
    const int nvl = e->n_vocab_local, R = e->step_size;
    if (R == 1 && nr == 1 && e->rows[0] == 0) {
        /* one decode token: the accelerator's candidates, else its host logits read in place */
        struct sampler *s = io->samplers[toks[0].seq];
        int n_cand = 0;
        const struct sampler_cand *cand = forward_cands_host(e, &n_cand);
        int32_t id = cand ? sampler_sample_top(s, cand, n_cand) : -1;
        const float *bmax = NULL, *lg = id < 0 ? forward_logits_host(e, &bmax) : NULL;
        if (lg) id = sampler_sample_maxima(s, lg, bmax);
        if (id >= 0) {
            *hist += 1 + **hist;
            io->next[(*n_next)++] = id;
            return 0;
        }
    }
    forward_logits(e, e->rows, nr, e->logits_local);
    if (R == 1) {
        for (int i = 0; i < nr; i++) {
            *hist += 1 + **hist;
            io->next[(*n_next)++] = sampler_sample(io->samplers[toks[e->rows[i]].seq], e->logits_local + (size_t)i * nvl);
        }
        return 0;
    }
    struct sampler_cand *mine = e->cand + (size_t)R * e->n_batch * ENGINE_CAND_SLOTS;
    for (int i = 0; i < nr; i++) {
        const int n_hist = **hist;
        local_candidates(e, e->logits_local + (size_t)i * nvl, st->k, *hist + 1, n_hist, slots,
                         mine + (size_t)i * slots);
        *hist += 1 + n_hist;
    }
    int err = comm_gather(e->step_comm, mine, sizeof(*mine) * (size_t)nr * slots, e->cand, 0);
    for (int i = 0; !err && e->rank == 0 && i < nr; i++) {
        struct sampler *s = io->samplers[toks[e->rows[i]].seq];
        int m = 0;
        for (int r = 0; r < R; r++) {
            const struct sampler_cand *c = e->cand + ((size_t)r * nr + i) * slots;
            for (int j = 0; j < slots; j++)
                if (c[j].id >= 0) s->cand[m++] = c[j];
        }
        io->next[(*n_next)++] = sampler_sample_cands(s, s->cand, m);
    }
    return err;
}

/* Run a validated DECODE step on this rank. */
static int execute(struct engine *e, const struct step *st, const struct step_io *io)
{
    const int nv = e->m->hp.n_vocab, n = st->n;
    const int32_t *hist = io->hist;
    const int slots = cand_slots(st, io->toks, hist);
    int err = 0, n_next = 0;
    if (e->m->hp.n_expert) {
        err = moe_move_progress(e);    /* a live expert move advances at step boundaries */
        moe_stats_step(&e->moe_stats); /* one window slot per step */
    }
    for (int c = 0; c < n && !err; c += e->n_batch) {
        const int nb = TT_MIN(e->n_batch, n - c);
        forward_batch(e, io->toks + c, nb);
        if (st->mode == ENGINE_LOGITS_ALL || (st->mode == ENGINE_LOGITS_LAST && c + nb == n)) {
            const int first = st->mode == ENGINE_LOGITS_ALL ? 0 : nb - 1;
            for (int t = first; t < nb; t++) e->rows[t - first] = t;
            forward_logits(e, e->rows, nb - first, e->logits_local);
            float *out = io->logits ? io->logits + (st->mode == ENGINE_LOGITS_ALL ? (size_t)c * nv : 0) : NULL;
            err = gather_logits(e, nb - first, out);
        }
        int nr = 0;
        for (int t = 0; t < nb; t++)
            if (io->toks[c + t].sample) e->rows[nr++] = t;
        if (!err && nr) err = sample_rows(e, st, io->toks + c, nr, slots, &hist, io, &n_next);
    }
    return err;
}

static int send_control(struct engine *e, const struct step *st);

static bool penalized(const struct sampler *s) { return s->opts.repeat_penalty != 1.0f; }

/* Candidates each rank sends per sampled row: 1 when every row is greedy,
 * the largest top-k when every row cuts to one, ENGINE_CAND_MAX otherwise
 * (no cut, or a penalty, which may demote a rank's best tokens below
 * others). */
static int32_t step_cand_k(const struct engine_tok *toks, int n, struct sampler *const *samplers)
{
    int32_t k = 1;
    for (int i = 0; i < n; i++) {
        if (!toks[i].sample) continue;
        const struct sampler_opts *o = &samplers[toks[i].seq]->opts;
        if (o->repeat_penalty != 1.0f || (o->temperature > 0 && o->top_k <= 0)) return ENGINE_CAND_MAX;
        if (o->temperature > 0) k = TT_MAX(k, TT_MIN(o->top_k, ENGINE_CAND_MAX));
    }
    return k;
}

/* Rank 0: validate, broadcast and execute a DECODE step. */
static int run_decode(struct engine *e, const struct engine_tok *toks, int n, enum engine_logits mode,
                      float *logits, struct sampler *const *samplers, int32_t *next)
{
    TT_ASSERT(e->rank == 0 && (unsigned)mode < ENGINE_LOGITS_COUNT);
    int err = check_batch(e, toks, n);
    int64_t words = 3 * (int64_t)n;
    for (int i = 0; !err && i < n; i++)
        if (toks[i].sample) {
            const struct sampler *s = samplers ? samplers[toks[i].seq] : NULL;
            if (!s) return tt_error_set(TT_EINVAL, "no sampler for sequence %d", toks[i].seq);
            if (s->n_vocab != e->m->hp.n_vocab || s->n_history > ENGINE_HIST_MAX)
                return tt_error_set(TT_EINVAL, "sampler of sequence %d does not fit this model", toks[i].seq);
            words += 1 + (penalized(s) ? s->n_history : 0);
        }
    if (!err) err = step_reserve(e, words, n);
    if (err) return err;
    int32_t *p = e->step_buf, *h = e->step_buf + 3 * n;
    for (int i = 0; i < n; i++) {
        *p++ = toks[i].id;
        *p++ = toks[i].seq;
        *p++ = toks[i].sample;
        if (!toks[i].sample) continue;
        const struct sampler *s = samplers[toks[i].seq];
        const int n_hist = penalized(s) ? s->n_history : 0; /* only a penalty reads it */
        *h++ = n_hist;
        memcpy(h, s->history, sizeof(int32_t) * (size_t)n_hist);
        h += n_hist;
    }
    struct step st = { .op = STEP_DECODE, .n = n, .mode = mode, .k = step_cand_k(toks, n, samplers),
                       .n_payload = (int32_t)words };
    if (e->step_size > 1) {
        err = comm_bcast(e->step_comm, &st, sizeof(st), 0);
        if (!err) err = comm_bcast(e->step_comm, e->step_buf, sizeof(int32_t) * (size_t)words, 0);
        if (err) return err;
    }
    struct step_io io = { toks, e->step_buf + 3 * n, logits, samplers, next };
    if ((err = execute(e, &st, &io))) return err;
    /* live expert balancing: checked every moe_every steps, moved in the background */
    if (e->moe_every && e->tp_size > 1 && ++e->moe_steps % (uint64_t)e->moe_every == 0 &&
        moe_rebalance_wanted(e)) {
        struct step rb = { .op = STEP_REBALANCE, .n = 1 };
        err = send_control(e, &rb);
        if (!err) err = moe_rebalance(e, true);
    }
    return err;
}

/* Sequence 0's tokens as a batch in e->step_toks; the last one sampled if asked. */
static int seq0_batch(struct engine *e, const int32_t *tokens, int n, bool sample_last)
{
    if (n <= 0) return tt_error_set(TT_EINVAL, "nothing to evaluate");
    int err = step_reserve(e, 3 * (int64_t)n, n);
    for (int i = 0; !err && i < n; i++)
        e->step_toks[i] = (struct engine_tok){ tokens[i], 0, sample_last && i == n - 1 };
    return err;
}

int engine_eval(struct engine *e, const int32_t *tokens, int n, enum engine_logits mode,
                float *logits)
{
    int err = seq0_batch(e, tokens, n, false);
    return err ? err : run_decode(e, e->step_toks, n, mode, logits, NULL, NULL);
}

int engine_eval_sample(struct engine *e, const int32_t *tokens, int n, struct sampler *s,
                       int32_t *next)
{
    int err = seq0_batch(e, tokens, n, true);
    struct sampler *samplers[1] = { s };
    return err ? err : run_decode(e, e->step_toks, n, ENGINE_LOGITS_NONE, NULL, samplers, next);
}

int engine_decode(struct engine *e, const struct engine_tok *toks, int n,
                  struct sampler *const *samplers, int32_t *next)
{
    return run_decode(e, toks, n, ENGINE_LOGITS_NONE, NULL, samplers, next);
}

static int send_control(struct engine *e, const struct step *st)
{
    TT_ASSERT(e->rank == 0);
    return e->step_size > 1 ? comm_bcast(e->step_comm, (void *)st, sizeof(*st), 0) : 0;
}

void engine_seq_truncate(struct engine *e, int seq, int n_past)
{
    if (seq < 0 || seq >= e->n_seq || n_past < 0 || n_past >= e->seq_pos[seq]) return;
    struct step st = { .op = STEP_TRUNCATE, .n = n_past, .seq = seq };
    if (send_control(e, &st) == 0) e->seq_pos[seq] = n_past;
}

void engine_truncate(struct engine *e, int n_past) { engine_seq_truncate(e, 0, n_past); }

int engine_moe_rebalance(struct engine *e)
{
    if (e->m->hp.n_expert == 0 || e->tp_size == 1) return 0;
    if (engine_n_gpu_layers(e) > 0) /* engine_cuda.c uploads each rank's experts once */
        return tt_error_set(TT_EUNSUPPORTED, "experts on GPU ranks stay where they are: no rebalancing");
    struct step st = { .op = STEP_REBALANCE, .n = 0 };
    int err = send_control(e, &st);
    return err ? err : moe_rebalance(e, false);
}

bool engine_moe_moving(const struct engine *e) { return moe_moving(e); }

#define STOP_TAG 7902

void engine_stop_workers(struct engine *e)
{
    struct step st = { .op = STEP_STOP };
    if (e->rank != 0) return;
    send_control(e, &st);
    for (int r = 1; r < e->n_ranks; r++) /* idle ranks outside the steps */
        if (e->outside[r] && comm_send(e->comm, &st, sizeof(st), r, STOP_TAG))
            tt_warn("rank %d did not get the stop message: %s", r, tt_error_detail());
}

/* A worker's check of a DECODE step's payload: the tokens, and histories
 * that exactly fill the payload. */
static int worker_accept(struct engine *e, const struct step *st)
{
    for (int i = 0; i < st->n; i++) {
        const int32_t *w = e->step_buf + 3 * i;
        e->step_toks[i] = (struct engine_tok){ w[0], w[1], w[2] != 0 };
    }
    if (check_batch(e, e->step_toks, st->n)) return TT_ECOMM;
    int64_t at = 3 * (int64_t)st->n;
    for (int i = 0; i < st->n; i++) {
        if (!e->step_toks[i].sample) continue;
        if (at >= st->n_payload) return TT_ECOMM;
        const int32_t cnt = e->step_buf[at];
        if (cnt < 0 || cnt > ENGINE_HIST_MAX || at + 1 + cnt > st->n_payload) return TT_ECOMM;
        for (int j = 0; j < cnt; j++)
            if (e->step_buf[at + 1 + j] < 0 || e->step_buf[at + 1 + j] >= e->m->hp.n_vocab) return TT_ECOMM;
        at += 1 + cnt;
    }
    return at == st->n_payload ? 0 : TT_ECOMM;
}

static int worker_step(struct engine *e, const struct step *st, bool *stop)
{
    switch (st->op) {
    case STEP_DECODE: {
        const int64_t max_words = 3 * (int64_t)st->n + (int64_t)st->n * (ENGINE_HIST_MAX + 1);
        if (st->n <= 0 || st->n > e->n_seq * e->n_ctx || st->n_payload < 3 * st->n ||
            st->n_payload > max_words || (unsigned)st->mode >= ENGINE_LOGITS_COUNT ||
            st->k < 1 || st->k > ENGINE_CAND_MAX)
            return TT_ECOMM;
        int err = step_reserve(e, st->n_payload, st->n);
        if (!err) err = comm_bcast(e->step_comm, e->step_buf, sizeof(int32_t) * (size_t)st->n_payload, 0);
        if (!err) err = worker_accept(e, st);
        if (err) return err;
        struct step_io io = { e->step_toks, e->step_buf + 3 * st->n, NULL, NULL, NULL };
        return execute(e, st, &io);
    }
    case STEP_TRUNCATE:
        if (st->seq < 0 || st->seq >= e->n_seq || st->n < 0 || st->n >= e->seq_pos[st->seq]) return TT_ECOMM;
        e->seq_pos[st->seq] = st->n;
        return 0;
    case STEP_STOP: *stop = true; return 0;
    case STEP_REBALANCE: return moe_rebalance(e, st->n == 1);
    default: return TT_ECOMM;
    }
}

int engine_worker_run(struct engine *e)
{
    TT_ASSERT(e->rank != 0);
    bool stop = false;
    int err = 0;
    if (e->outside[e->rank]) { /* left out by the plan: nothing to do until the end */
        struct step st;
        err = comm_recv(e->comm, &st, sizeof(st), 0, STOP_TAG);
        return err ? err : st.op == STEP_STOP ? 0 : TT_ECOMM;
    }
    while (!err && !stop) {
        struct step st;
        if ((err = comm_bcast(e->step_comm, &st, sizeof(st), 0))) break;
        tt_error_clear();
        if ((err = worker_step(e, &st, &stop)) == TT_ECOMM && !tt_error_detail()[0])
            tt_error_set(TT_ECOMM, "rank %d: malformed step from rank 0 (op %d, n %d)", e->rank, st.op, st.n);
    }
    return err;
}
