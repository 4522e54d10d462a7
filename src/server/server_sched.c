/*
 * server_sched.c: continuous batching. One thread owns the engine and runs
 * steps; requests join and leave between steps.
 *
 * A step, with the lock held only around the bookkeeping:
 *
 *   lock:   end cancelled jobs (their sequences are free at once), admit
 *           waiting jobs into free sequences, build the batch:
 *             1. every generating job: its last sampled token, sampled;
 *             2. then prompt chunks of newly admitted jobs, up to n_batch
 *                tokens in all, and at most SCHED_MIXED_PROMPT_TOKENS of
 *                them while some job is generating; only a prompt's final
 *                token is sampled.
 *   unlock: clear the newly assigned sequences (engine_seq_truncate(seq, 0)),
 *           set up their samplers, engine_decode(batch)
 *   lock:   deliver each sampled token to its job: detokenize (never
 *           splitting a UTF-8 character), cut at stop strings, finish on
 *           end-of-generation, max_tokens or a full context; wake the
 *           job's connection.
 *
 * Invariants:
 *   1. slots[seq] is the only RUNNING job of sequence seq; a job's n_fed
 *      equals engine_seq_n_past(e, seq) between steps.
 *   2. A RUNNING job with n_fed < n_prompt is still reading its prompt; one
 *      with n_fed >= n_prompt has `last` to feed next.
 *   3. A job with n_fed == n_ctx cannot go on and is finished ("length").
 *   4. Every engine call happens on this thread, so under mpirun the steps
 *      reach the other ranks in one order.
 */
#include "server_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MOE_METRICS_EVERY 16 /* steps between MoE load snapshots */
/* Prompt tokens a step may carry while other jobs are generating: a long
 * prefill step stalls every running stream for its whole length, so
 * prompts go in chunks of this size beside the decoding tokens (their
 * first tokens then come out one chunk after another instead of all after
 * the last prompt). Alone, a prompt takes n_batch tokens per step. */
#ifndef SCHED_MIXED_PROMPT_TOKENS
#define SCHED_MIXED_PROMPT_TOKENS 64
#endif

struct server_job *job_new(void)
{
    struct server_job *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    /* connections wait with timeouts on the monotonic clock */
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr)) {
        free(j);
        return NULL;
    }
    bool ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
              pthread_cond_init(&j->cond, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!ok) {
        free(j);
        return NULL;
    }
    j->refs = 1;
    j->seq = -1;
    return j;
}

void job_unref_locked(struct server_job *j)
{
    TT_ASSERT(j->refs > 0);
    if (--j->refs) return;
    pthread_cond_destroy(&j->cond);
    free(j->prompt);
    for (int i = 0; i < j->n_stop; i++)
        free(j->stop[i]);
    server_buf_free(&j->text);
    free(j);
}

int sched_init(struct server *s)
{
    const int n_seq = s->n_seq, nb = s->n_batch;
    s->slots = calloc((size_t)n_seq, sizeof(*s->slots));
    s->samplers = calloc((size_t)n_seq, sizeof(*s->samplers));
    s->sampler_ptrs = calloc((size_t)n_seq, sizeof(*s->sampler_ptrs));
    s->reset = calloc((size_t)n_seq, sizeof(*s->reset));
    s->toks = calloc((size_t)nb, sizeof(*s->toks));
    s->next = calloc((size_t)nb, sizeof(*s->next));
    s->sampled = calloc((size_t)nb, sizeof(*s->sampled));
    const int n_expert = engine_model(s->e)->hp.n_expert;
    s->moe_loads = n_expert > 0 ? calloc((size_t)n_expert, sizeof(*s->moe_loads)) : NULL;
    if (n_expert > 0 && !s->moe_loads) return tt_error_set(TT_ENOMEM, "out of memory");
    s->piece_cap = tok_piece_max(s->v) + 8;
    s->piece = malloc((size_t)s->piece_cap);
    if (!s->slots || !s->samplers || !s->sampler_ptrs || !s->reset || !s->toks || !s->next ||
        !s->sampled || !s->piece)
        return tt_error_set(TT_ENOMEM, "out of memory for the scheduler");
    struct sampler_opts o;
    sampler_opts_default(&o);
    for (int i = 0; i < n_seq; i++) {
        int err = sampler_init(&s->samplers[i], &o, s->n_vocab);
        if (err) return err;
        s->sampler_ptrs[i] = &s->samplers[i];
    }
    return 0;
}

void sched_free(struct server *s)
{
    for (int i = 0; s->samplers && i < s->n_seq; i++)
        sampler_free(&s->samplers[i]);
    free(s->samplers);
    free(s->sampler_ptrs);
    free(s->slots);
    free(s->reset);
    free(s->toks);
    free(s->next);
    free(s->sampled);
    free(s->piece);
    free(s->moe_loads);
    s->samplers = NULL;
}

/* ---- job endings (lock held) ---- */

static void queue_remove(struct server *s, struct server_job *j)
{
    struct server_job **pp = &s->queue_head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = j->next;
    if (s->queue_tail == j) s->queue_tail = prev;
    j->next = NULL;
    s->n_waiting--;
}

/* Move j to DONE, free its sequence, wake its connection and drop the
 * scheduler's reference (j may be freed on return). */
static void job_end(struct server *s, struct server_job *j, enum server_finish how)
{
    static const char *reasons[SERVER_FINISH_COUNT] = {"stop", "length", NULL, NULL};
    if (j->state == JOB_WAITING) queue_remove(s, j);
    if (j->state == JOB_RUNNING) {
        s->slots[j->seq] = NULL;
        s->n_running--;
        /* whatever the streaming detokenizer still holds goes out now */
        int n = tok_stream_flush(&j->ts, s->piece, s->piece_cap);
        if (n > 0 && how != SERVER_FINISH_CANCELLED)
            server_buf_append(&j->text, s->piece, (size_t)n);
    }
    j->state = JOB_DONE;
    j->ready = j->text.len;
    j->finish = reasons[how];
    j->failed = how == SERVER_FINISH_ERROR;
    s->metrics.finished[how]++;
    pthread_cond_broadcast(&j->cond);
    job_unref_locked(j);
}

static void job_fail(struct server *s, struct server_job *j, int status, const char *msg)
{
    server_error_set(&j->err, status, "server_error", NULL,
                     status == 503 ? "server_unavailable" : "engine_error", "%s", msg);
    job_end(s, j, SERVER_FINISH_ERROR);
}

void sched_cancel_locked(struct server *s, struct server_job *j)
{
    if (j->state == JOB_DONE || j->cancelled) return;
    j->cancelled = true;
    if (j->state == JOB_WAITING)
        job_end(s, j, SERVER_FINISH_CANCELLED);
    else
        pthread_cond_signal(&s->sched_cond);
}

int sched_submit(struct server *s, struct server_job *j, struct server_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->stopping || s->failed) {
        rc = server_error_set(err, 503, "server_error", NULL, "server_unavailable",
                              s->failed ? "the engine failed; the server is not serving"
                                        : "the server is shutting down");
    } else if (s->n_waiting + s->n_running >= s->n_seq + s->opts.queue_max) {
        s->metrics.rejected_full++;
        rc = server_error_set(err, 503, "server_error", NULL, "server_overloaded",
                              "the server is busy: %d requests running and %d waiting; retry later",
                              s->n_running, s->n_waiting);
    } else {
        j->state = JOB_WAITING;
        j->refs++;
        if (s->queue_tail)
            s->queue_tail->next = j;
        else
            s->queue_head = j;
        s->queue_tail = j;
        s->n_waiting++;
        s->metrics.requests[j->kind]++;
        pthread_cond_signal(&s->sched_cond);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- one step ---- */

/* End cancelled and (after the shutdown grace) all jobs; admit waiting ones
 * into free sequences, listing them in s->reset. Returns how many. */
static int sched_admit(struct server *s, double now)
{
    const bool expired = s->stopping && now >= s->stop_deadline_s;
    for (int q = 0; q < s->n_seq; q++) {
        struct server_job *j = s->slots[q];
        if (j && j->cancelled)
            job_end(s, j, SERVER_FINISH_CANCELLED);
        else if (j && s->failed)
            job_fail(s, j, 500, "the engine failed");
        else if (j && expired)
            job_end(s, j, SERVER_FINISH_LENGTH);
    }
    while (s->queue_head && (s->stopping || s->failed))
        job_fail(s, s->queue_head, 503,
                 s->failed ? "the engine failed" : "the server is shutting down");
    int n_reset = 0;
    for (int q = 0; q < s->n_seq && s->queue_head; q++) {
        if (s->slots[q]) continue;
        struct server_job *j = s->queue_head;
        queue_remove(s, j);
        j->state = JOB_RUNNING;
        j->seq = q;
        j->t_last = j->t_submit;
        s->slots[q] = j;
        s->n_running++;
        s->reset[n_reset++] = q;
        server_hist_observe(&s->metrics.queue_wait, now - j->t_submit);
    }
    return n_reset;
}

/* The batch of this step into s->toks; s->sampled[] lists the job of each
 * sampled token in batch order. Returns the token count. */
static int sched_batch(struct server *s, int *n_sampled)
{
    int n = 0, ns = 0;
    for (int q = 0; q < s->n_seq && n < s->n_batch; q++) {
        struct server_job *j = s->slots[q];
        if (!j || j->n_fed < j->n_prompt) continue;
        s->toks[n++] = (struct engine_tok){j->last, q, true};
        s->sampled[ns++] = j;
    }
    const int limit = ns > 0 ? TT_MIN(s->n_batch, n + SCHED_MIXED_PROMPT_TOKENS) : s->n_batch;
    for (int q = 0; q < s->n_seq && n < limit; q++) {
        struct server_job *j = s->slots[q];
        if (!j || j->n_fed >= j->n_prompt) continue;
        const int k = TT_MIN(j->n_prompt - j->n_fed, limit - n);
        for (int i = 0; i < k; i++) {
            const bool last = j->n_fed + i == j->n_prompt - 1;
            s->toks[n++] = (struct engine_tok){j->prompt[j->n_fed + i], q, last};
            if (last) s->sampled[ns++] = j;
        }
    }
    *n_sampled = ns;
    return n;
}

/* Fresh sequences and samplers for newly admitted jobs (engine thread, no
 * lock: the jobs cannot leave their slots meanwhile, only be cancelled).
 * Returns how many samplers could not be set up; their sequences are listed
 * first in s->reset. */
static int sched_reset(struct server *s, int n_reset)
{
    int n_bad = 0;
    for (int r = 0; r < n_reset; r++) {
        const int q = s->reset[r];
        struct server_job *j = s->slots[q];
        engine_seq_truncate(s->e, q, 0);
        sampler_free(&s->samplers[q]);
        if (sampler_init(&s->samplers[q], &j->sampling, s->n_vocab)) {
            s->reset[n_bad++] = q;
            continue;
        }
        for (int i = 0; i < j->n_prompt; i++)
            sampler_accept(&s->samplers[q], j->prompt[i]);
    }
    return n_bad;
}

/* Append the sampled token `id` to job j and decide whether it ends. */
static void job_token(struct server *s, struct server_job *j, int32_t id, double now)
{
    struct server_metrics *m = &s->metrics;
    server_hist_observe(j->n_gen ? &m->token_latency : &m->ttft, now - j->t_last);
    j->t_last = now;
    j->n_gen++;
    m->completion_tokens++;
    sampler_accept(&s->samplers[j->seq], id);
    if (!j->ignore_eos && tok_is_eog(s->v, id)) {
        job_end(s, j, SERVER_FINISH_STOP);
        return;
    }
    int n = tok_stream_push(s->v, &j->ts, id, s->piece, s->piece_cap);
    if (n > 0 && server_buf_append(&j->text, s->piece, (size_t)n)) {
        job_fail(s, j, 500, "out of memory");
        return;
    }
    size_t safe = j->text.len;
    long cut = -1;
    if (j->n_stop)
        cut = server_stop_find(j->text.data ? j->text.data : "", j->text.len, j->checked,
                               (const char *const *)j->stop, j->n_stop, &safe);
    j->checked = j->text.len;
    if (cut >= 0) {
        j->text.len = (size_t)cut;
        j->ts = (struct tok_stream){0};
        job_end(s, j, SERVER_FINISH_STOP);
        return;
    }
    j->ready = safe;
    j->last = id;
    if (j->n_gen >= j->max_tokens || j->n_fed >= s->n_ctx) {
        job_end(s, j, SERVER_FINISH_LENGTH);
        return;
    }
    if (j->stream) pthread_cond_broadcast(&j->cond);
}

/* MoE models: expert loads summed over layers, and the worst rank imbalance. */
static void sched_moe_metrics(struct server *s)
{
    const struct model_hparams *hp = &engine_model(s->e)->hp;
    struct server_metrics *m = &s->metrics;
    m->n_expert = TT_MIN(hp->n_expert, SERVER_EXPERTS_MAX);
    memset(m->expert_tokens, 0, sizeof(m->expert_tokens));
    m->moe_imbalance = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        double imb;
        if (engine_moe_loads(s->e, l, s->moe_loads, &imb)) continue;
        for (int x = 0; x < m->n_expert; x++)
            m->expert_tokens[x] += s->moe_loads[x];
        m->moe_imbalance = TT_MAX(m->moe_imbalance, imb);
    }
}

/* After a successful decode: advance every job of the batch, deliver tokens. */
static void sched_deliver(struct server *s, int n, int n_sampled, double dt)
{
    const double now = tt_now_s();
    for (int i = 0; i < n; i++) {
        struct server_job *j = s->slots[s->toks[i].seq];
        TT_ASSERT(j);
        if (j->n_fed < j->n_prompt) s->metrics.prompt_tokens++;
        j->n_fed++;
    }
    for (int i = 0; i < n_sampled; i++) {
        struct server_job *j = s->sampled[i];
        if (j->state == JOB_RUNNING && !j->cancelled) job_token(s, j, s->next[i], now);
    }
    s->metrics.steps++;
    s->metrics.step_tokens += (uint64_t)n;
    s->metrics.step_seconds += dt;
    int64_t used = 0;
    for (int q = 0; q < s->n_seq; q++)
        if (s->slots[q]) used += s->slots[q]->n_fed;
    s->metrics.kv_used = used;
    if (s->opts.comm) comm_stats(s->opts.comm, &s->metrics.comm_seconds, &s->metrics.comm_bytes);
    if (s->moe_loads && s->metrics.steps % MOE_METRICS_EVERY == 1) sched_moe_metrics(s);
}

/* The engine failed: TT_ECOMM means the cluster is gone (nothing more can
 * run); other errors end the jobs of this batch only. */
static void sched_engine_error(struct server *s, int err, int n)
{
    const char *detail = tt_error_detail()[0] ? tt_error_detail() : tt_strerror(err);
    tt_log(TT_LOG_ERROR, "server: engine step failed: %s", detail);
    char msg[320];
    snprintf(msg, sizeof(msg), "engine error: %s", detail);
    if (err == TT_ECOMM) s->failed = true;
    for (int i = 0; i < n; i++) {
        struct server_job *j = s->slots[s->toks[i].seq];
        if (j && j->state == JOB_RUNNING) job_fail(s, j, 500, msg);
    }
}

static void *sched_main(void *arg)
{
    struct server *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        const int n_reset = sched_admit(s, tt_now_s());
        s->metrics.running = s->n_running;
        s->metrics.waiting = s->n_waiting;
        if (s->n_running == 0) {
            if (s->stopping || s->failed) break;
            pthread_cond_wait(&s->sched_cond, &s->lock);
            continue;
        }
        int n_sampled, n = sched_batch(s, &n_sampled);
        pthread_mutex_unlock(&s->lock);
        const int n_bad = sched_reset(s, n_reset);
        const double t0 = tt_now_s();
        int err = n_bad ? 0 : engine_decode(s->e, s->toks, n, s->sampler_ptrs, s->next);
        const double dt = tt_now_s() - t0;
        pthread_mutex_lock(&s->lock);
        for (int r = 0; r < n_bad; r++) /* the batch is built again without them */
            job_fail(s, s->slots[s->reset[r]], 500, "out of memory for the sampler");
        if (err)
            sched_engine_error(s, err, n);
        else if (!n_bad)
            sched_deliver(s, n, n_sampled, dt);
    }
    s->metrics.running = s->metrics.waiting = 0;
    s->metrics.kv_used = 0;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int sched_start(struct server *s)
{
    s->sched_started = true; /* before the thread runs: it reads the fields beside */
    if (pthread_create(&s->sched_thread, NULL, sched_main, s)) {
        s->sched_started = false;
        return tt_error_set(TT_ENOMEM, "cannot start the scheduler thread");
    }
    return 0;
}

void sched_stop(struct server *s)
{
    pthread_mutex_lock(&s->lock);
    if (!s->stopping) {
        s->stopping = true;
        s->stop_deadline_s = tt_now_s() + s->opts.shutdown_grace_s;
    }
    pthread_cond_signal(&s->sched_cond);
    pthread_mutex_unlock(&s->lock);
    if (s->sched_started) pthread_join(s->sched_thread, NULL);
    s->sched_started = false;
}
