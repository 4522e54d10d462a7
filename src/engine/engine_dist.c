/*
 * engine_dist.c: evaluation as seen from outside, on one rank or many.
 *
 * Protocol (SPMD, rank 0 drives). Every public call on rank 0 first
 * broadcasts a step header and its payload; ranks > 0 sit in
 * engine_worker_run() and execute the same step, so all ranks run the
 * forward pass in lockstep:
 *
 *   rank 0                          ranks > 0
 *   bcast(step) ------------------> bcast(step): op, n tokens, k, n_hist
 *   bcast(tokens, history) -------> validated like rank 0's input
 *   forward (2 all-reduces/layer)   forward
 *   EVAL/ALL:  allgatherv(logit slices)      SAMPLE: gather(k candidates)
 *
 * State: n_past advances identically on every rank, because every rank
 * executes every step. A worker that receives a step it cannot accept
 * (bad op, counts or ids) returns TT_ECOMM: the cluster is out of step.
 */
#include "engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum step_op { STEP_EVAL, STEP_SAMPLE, STEP_TRUNCATE, STEP_STOP, STEP_OP_COUNT };

struct step {
    int32_t op;
    int32_t n;      /* tokens (EVAL/SAMPLE) or new n_past (TRUNCATE) */
    int32_t mode;   /* enum engine_logits (EVAL) */
    int32_t k;      /* candidates per rank (SAMPLE) */
    int32_t n_hist; /* history ids for the repetition penalty (SAMPLE) */
};

static int check_tokens(const struct engine *e, const int32_t *tokens, int n)
{
    if (n <= 0) return tt_error_set(TT_EINVAL, "nothing to evaluate");
    if (n > e->n_ctx - e->n_past)
        return tt_error_set(TT_ERANGE, "context full: %d cached + %d new tokens exceed the context "
                            "size %d (use --ctx to raise it)", e->n_past, n, e->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= e->m->hp.n_vocab)
            return tt_error_set(TT_EINVAL, "token id %d at index %d is outside the vocabulary [0, %d)",
                                tokens[i], i, e->m->hp.n_vocab);
    return 0;
}

/* Broadcast a step from rank 0 (no-op on one rank). */
static int send_step(struct engine *e, const struct step *st, const int32_t *tokens,
                     const int32_t *hist)
{
    if (e->n_ranks == 1) return 0;
    struct step copy = *st;
    int err = comm_bcast(e->comm, &copy, sizeof(copy), 0);
    if (!err && st->n > 0 && (st->op == STEP_EVAL || st->op == STEP_SAMPLE))
        err = comm_bcast(e->comm, (void *)tokens, sizeof(int32_t) * (size_t)st->n, 0);
    if (!err && st->n_hist > 0) err = comm_bcast(e->comm, (void *)hist, sizeof(int32_t) * (size_t)st->n_hist, 0);
    return err;
}

/* Full logits of `rows` rows to rank 0: gather every rank's vocabulary slice
 * and interleave them into [rows][n_vocab]. */
static int gather_logits(struct engine *e, int rows, float *out)
{
    const int nv = e->m->hp.n_vocab, R = e->n_ranks;
    if (R == 1) {
        memcpy(out, e->logits_local, sizeof(float) * (size_t)rows * (size_t)nv);
        return 0;
    }
    size_t *sizes = malloc(sizeof(size_t) * (size_t)R);
    int32_t *counts = malloc(sizeof(int32_t) * (size_t)R);
    float *all = malloc(sizeof(float) * (size_t)rows * (size_t)nv);
    int err = sizes && counts && all ? 0 : tt_error_set(TT_ENOMEM, "out of memory gathering logits");
    if (!err) {
        /* slice sizes are exchanged rather than recomputed, so any plan works */
        int32_t mine = e->n_vocab_local;
        err = comm_allgather(e->comm, &mine, sizeof(mine), counts);
        for (int r = 0; !err && r < R; r++) sizes[r] = sizeof(float) * (size_t)rows * (size_t)counts[r];
        if (!err) err = comm_allgatherv(e->comm, e->logits_local, sizes[e->rank], all, sizes);
        if (!err && e->rank == 0) {
            const float *src = all;
            int32_t col = 0;
            for (int r = 0; r < R; r++) {
                for (int t = 0; t < rows; t++)
                    memcpy(out + (size_t)t * nv + col, src + (size_t)t * counts[r], sizeof(float) * (size_t)counts[r]);
                src += (size_t)rows * counts[r];
                col += counts[r];
            }
        }
    }
    free(all);
    free(counts);
    free(sizes);
    return err;
}

/* Forward n tokens; logits per `mode` into out (rank 0, full width). */
static int do_eval(struct engine *e, const int32_t *tokens, int n, enum engine_logits mode, float *out)
{
    const int nv = e->m->hp.n_vocab;
    int err = 0;
    for (int c = 0; c < n && !err; c += e->n_batch) {
        const int nb = TT_MIN(e->n_batch, n - c);
        forward_batch(e, tokens + c, nb);
        if (mode == ENGINE_LOGITS_ALL) {
            forward_logits(e, 0, nb, e->logits_local);
            err = gather_logits(e, nb, out ? out + (size_t)c * nv : NULL);
        } else if (mode == ENGINE_LOGITS_LAST && c + nb == n) {
            forward_logits(e, nb - 1, 1, e->logits_local);
            err = gather_logits(e, 1, out);
        }
        e->n_past += nb;
    }
    return err;
}

int engine_eval(struct engine *e, const int32_t *tokens, int n, enum engine_logits mode,
                float *logits)
{
    TT_ASSERT(e->rank == 0 && (unsigned)mode < ENGINE_LOGITS_COUNT);
    int err = check_tokens(e, tokens, n);
    if (err) return err;
    struct step st = { .op = STEP_EVAL, .n = n, .mode = mode };
    if ((err = send_step(e, &st, tokens, NULL))) return err;
    return do_eval(e, tokens, n, mode, logits);
}

void engine_truncate(struct engine *e, int n_past)
{
    TT_ASSERT(e->rank == 0);
    if (n_past < 0 || n_past >= e->n_past) return;
    struct step st = { .op = STEP_TRUNCATE, .n = n_past };
    if (send_step(e, &st, NULL, NULL) == 0) e->n_past = n_past;
}

void engine_stop_workers(struct engine *e)
{
    struct step st = { .op = STEP_STOP };
    if (e->rank == 0) send_step(e, &st, NULL, NULL);
}

static int cmp_logit_desc(const void *a, const void *b)
{
    const struct sampler_cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

/* This rank's candidates from its logits slice: the k best, then the
 * history tokens it owns (for the repetition penalty), padded with id -1. */
static void local_candidates(struct engine *e, int k, const int32_t *hist, int n_hist,
                             struct sampler_cand *c)
{
    const int nvl = e->n_vocab_local, v0 = e->slice.vocab.begin, cap = ENGINE_CAND_SLOTS;
    int n = 0;
    for (int i = 0; i < nvl; i++) {
        struct sampler_cand x = { v0 + i, e->logits_local[i] };
        if (n < k) {
            c[n++] = x;
            if (n == k) qsort(c, (size_t)n, sizeof(*c), cmp_logit_desc);
        } else if (x.logit > c[k - 1].logit) { /* insert, keep sorted */
            int j = k - 1;
            while (j > 0 && c[j - 1].logit < x.logit) {
                c[j] = c[j - 1];
                j--;
            }
            c[j] = x;
        }
    }
    for (int h = 0; h < n_hist && n < cap; h++) {
        int id = hist[h];
        bool have = id < v0 || id >= v0 + nvl;
        for (int j = 0; j < n && !have; j++) have = c[j].id == id;
        if (!have) c[n++] = (struct sampler_cand){ id, e->logits_local[id - v0] };
    }
    for (; n < cap; n++) c[n] = (struct sampler_cand){ -1, -INFINITY };
}

/* Forward the tokens, then reduce the last row's logits to candidates
 * gathered at rank 0 (into e->cand, ENGINE_CAND_SLOTS per rank). */
static int sample_step(struct engine *e, const int32_t *tokens, int n, int k, const int32_t *hist,
                       int n_hist)
{
    for (int c = 0; c < n; c += e->n_batch) {
        const int nb = TT_MIN(e->n_batch, n - c);
        forward_batch(e, tokens + c, nb);
        if (c + nb == n) forward_logits(e, nb - 1, 1, e->logits_local);
        e->n_past += nb;
    }
    if (e->n_ranks == 1) return 0;
    const size_t slots = ENGINE_CAND_SLOTS;
    struct sampler_cand *mine = e->cand + (size_t)e->n_ranks * slots;
    local_candidates(e, TT_MIN(k, TT_MAX(e->n_vocab_local, 1)), hist, n_hist, mine);
    return comm_gather(e->comm, mine, slots * sizeof(*mine), e->cand, 0);
}

int engine_eval_sample(struct engine *e, const int32_t *tokens, int n, struct sampler *s,
                       int32_t *next)
{
    TT_ASSERT(e->rank == 0);
    int err = check_tokens(e, tokens, n);
    if (err) return err;
    if (s->n_history > ENGINE_HIST_MAX)
        return tt_error_set(TT_EINVAL, "repetition window %d exceeds %d", s->n_history, ENGINE_HIST_MAX);
    const bool greedy = s->opts.temperature <= 0.0f && s->opts.repeat_penalty == 1.0f;
    struct step st = { .op = STEP_SAMPLE, .n = n, .k = greedy ? 1 : ENGINE_CAND_MAX, .n_hist = s->n_history };
    if ((err = send_step(e, &st, tokens, s->history))) return err;
    if ((err = sample_step(e, tokens, n, st.k, s->history, s->n_history))) return err;
    if (e->n_ranks == 1) {
        *next = sampler_sample(s, e->logits_local);
        return 0;
    }
    const size_t slots = ENGINE_CAND_SLOTS;
    int m = 0;
    for (size_t i = 0; i < (size_t)e->n_ranks * slots; i++)
        if (e->cand[i].id >= 0) e->cand[m++] = e->cand[i];
    *next = sampler_sample_cands(s, e->cand, m);
    return 0;
}

/* Receive and check a step's token payload on a worker. */
static int recv_tokens(struct engine *e, const struct step *st, int32_t *tokens, int32_t *hist)
{
    int err = comm_bcast(e->comm, tokens, sizeof(int32_t) * (size_t)st->n, 0);
    if (!err && st->n_hist > 0) err = comm_bcast(e->comm, hist, sizeof(int32_t) * (size_t)st->n_hist, 0);
    if (!err && check_tokens(e, tokens, st->n))
        err = tt_error_set(TT_ECOMM, "rank %d: step from rank 0 rejected: %s", e->rank, tt_error_detail());
    for (int i = 0; !err && i < st->n_hist; i++)
        if (hist[i] < 0 || hist[i] >= e->m->hp.n_vocab)
            err = tt_error_set(TT_ECOMM, "rank %d: bad history token %d from rank 0", e->rank, hist[i]);
    return err;
}

int engine_worker_run(struct engine *e)
{
    TT_ASSERT(e->rank != 0);
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)e->n_ctx);
    int32_t hist[ENGINE_HIST_MAX];
    int err = tokens ? 0 : tt_error_set(TT_ENOMEM, "out of memory");
    for (bool stop = false; !err && !stop;) {
        struct step st;
        if ((err = comm_bcast(e->comm, &st, sizeof(st), 0))) break;
        bool sized = st.n > 0 && st.n <= e->n_ctx - e->n_past && st.n_hist >= 0 &&
                     st.n_hist <= ENGINE_HIST_MAX;
        switch (st.op) {
        case STEP_EVAL:
        case STEP_SAMPLE:
            if (!sized || (st.op == STEP_EVAL && (unsigned)st.mode >= ENGINE_LOGITS_COUNT) ||
                (st.op == STEP_SAMPLE && (st.k < 1 || st.k > ENGINE_CAND_MAX))) {
                err = tt_error_set(TT_ECOMM, "rank %d: malformed step from rank 0 (op %d, n %d)", e->rank, st.op, st.n);
                break;
            }
            if ((err = recv_tokens(e, &st, tokens, hist))) break;
            err = st.op == STEP_EVAL ? do_eval(e, tokens, st.n, (enum engine_logits)st.mode, NULL)
                                     : sample_step(e, tokens, st.n, st.k, hist, st.n_hist);
            break;
        case STEP_TRUNCATE:
            if (st.n < 0 || st.n >= e->n_past)
                err = tt_error_set(TT_ECOMM, "rank %d: bad truncate to %d from rank 0", e->rank, st.n);
            else e->n_past = st.n;
            break;
        case STEP_STOP: stop = true; break;
        default: err = tt_error_set(TT_ECOMM, "rank %d: unknown step %d from rank 0", e->rank, st.op);
        }
    }
    free(tokens);
    return err;
}
