/*
 * server.c: the server's life: options checked and copied, scheduler and
 * HTTP threads started in that order, and stopped in the reverse order.
 *
 * Shutdown (server_stop), so that every answered request is whole:
 *   1. stop accepting connections (the listening socket closes);
 *   2. the scheduler refuses waiting jobs (503), lets running ones finish
 *      within shutdown_grace_s, ends the rest ("length"), and exits;
 *   3. connections still writing their last events get a moment to finish;
 *   4. libmicrohttpd stops, closing idle keep-alive connections.
 * After that no thread touches the engine; the caller releases the workers.
 */
#include "server_internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_WAIT_S 5.0 /* step 3's limit */

static int check_opts(const struct server_opts *o)
{
    if (!o->model_id || !o->model_id[0] || strlen(o->model_id) > SERVER_MODEL_ID_MAX)
        return tt_error_set(TT_EINVAL, "the model id must have 1 to %d bytes", SERVER_MODEL_ID_MAX);
    if (o->port < 0 || o->port > 65535)
        return tt_error_set(TT_EINVAL, "port %d is not in [0, 65535]", o->port);
    if (o->queue_max < 0 || o->queue_max > SERVER_QUEUE_MAX)
        return tt_error_set(TT_EINVAL, "queue size %d is not in [0, %d]", o->queue_max,
                            SERVER_QUEUE_MAX);
    if (o->body_max_bytes > SERVER_BODY_MAX_MAX || o->messages_max < 0 ||
        o->messages_max > SERVER_MESSAGES_MAX_MAX || o->connections_max < 0 ||
        o->connections_max > SERVER_CONNECTIONS_MAX || o->timeout_s < 0 || o->shutdown_grace_s < 0)
        return tt_error_set(TT_EINVAL, "server limits out of range");
    if (o->n_batch < 0 || o->n_batch > 65536)
        return tt_error_set(TT_EINVAL, "batch %d out of range", o->n_batch);
    if (!o->chat_template) return tt_error_set(TT_EINVAL, "no chat template given");
    return 0;
}

static int server_init(struct server *s, struct engine *e, const struct tok_vocab *v,
                       const struct server_opts *o)
{
    s->opts = *o;
    s->e = e;
    s->v = v;
    s->n_seq = engine_n_seq(e);
    s->n_ctx = engine_n_ctx(e);
    s->n_vocab = engine_model(e)->hp.n_vocab;
    s->n_batch = TT_MAX(s->n_seq, o->n_batch > 0 ? o->n_batch : ENGINE_BATCH_DEFAULT);
    s->created = (long long)time(NULL);
    if (!s->opts.body_max_bytes) s->opts.body_max_bytes = SERVER_BODY_MAX_DEFAULT;
    if (!s->opts.messages_max) s->opts.messages_max = SERVER_MESSAGES_MAX_DEFAULT;
    if (!s->opts.timeout_s) s->opts.timeout_s = 600;
    if (!s->opts.connections_max)
        s->opts.connections_max =
            TT_MIN(SERVER_CONNECTIONS_MAX, TT_MAX(64, 2 * (s->n_seq + o->queue_max) + 32));
    s->model_id = strdup(o->model_id);
    s->chat_template = strdup(o->chat_template);
    s->api_key = o->api_key && o->api_key[0] ? strdup(o->api_key) : NULL;
    s->opts.model_id = s->model_id;
    s->opts.api_key = s->api_key;
    s->opts.chat_template = s->chat_template;
    if (!s->model_id || !s->chat_template || (o->api_key && o->api_key[0] && !s->api_key))
        return tt_error_set(TT_ENOMEM, "out of memory");
    server_metrics_init(&s->metrics);
    s->metrics.n_seq = s->n_seq;
    s->metrics.kv_total = (int64_t)s->n_seq * s->n_ctx;
    s->metrics.n_ranks = engine_n_ranks(e);
    return sched_init(s);
}

int server_start(struct server **out, struct engine *e, const struct tok_vocab *v,
                 const struct server_opts *o)
{
    *out = NULL;
    int err = check_opts(o);
    if (err) return err;
    struct server *s = calloc(1, sizeof(*s));
    if (!s) return tt_error_set(TT_ENOMEM, "out of memory");
    if (pthread_mutex_init(&s->lock, NULL)) goto fail_mutex;
    if (pthread_cond_init(&s->sched_cond, NULL)) goto fail_cond;
    if ((err = server_init(s, e, v, o))) goto fail_init;
    if ((err = sched_start(s))) goto fail_init;
    if ((err = http_start(s))) goto fail_http;
    *out = s;
    return 0;

fail_http:
    sched_stop(s);
fail_init:
    sched_free(s);
    free(s->model_id);
    free(s->chat_template);
    free(s->api_key);
    pthread_cond_destroy(&s->sched_cond);
fail_cond:
    pthread_mutex_destroy(&s->lock);
fail_mutex:
    free(s);
    return err ? err : tt_error_set(TT_ENOMEM, "cannot create the server's locks");
}

int server_port(const struct server *s)
{
    return s->port;
}

bool server_failed(const struct server *s)
{
    pthread_mutex_lock((pthread_mutex_t *)&s->lock);
    bool f = s->failed;
    pthread_mutex_unlock((pthread_mutex_t *)&s->lock);
    return f;
}

void server_stop(struct server *s)
{
    if (!s->daemon && !s->sched_started) return;
    http_quiesce(s);
    sched_stop(s);
    const double until = tt_now_s() + DRAIN_WAIT_S;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        const int busy = s->n_conn_jobs;
        pthread_mutex_unlock(&s->lock);
        if (!busy || tt_now_s() > until) break;
        nanosleep(&(struct timespec){0, 10 * 1000000L}, NULL);
    }
    http_stop(s);
}

void server_free(struct server *s)
{
    if (!s) return;
    server_stop(s);
    sched_free(s);
    free(s->model_id);
    free(s->chat_template);
    free(s->api_key);
    pthread_cond_destroy(&s->sched_cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
