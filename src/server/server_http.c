/*
 * server_http.c: HTTP with libmicrohttpd, one thread per connection.
 *
 * A connection thread does everything for its request except the forward
 * pass: route, check the API key, read the body (at most body_max_bytes;
 * larger is 413, told by Content-Length before a byte is read when it can
 * be), parse and validate (server_api.c), render the chat template,
 * tokenize, submit the job, then wait for its text on the job's condition
 * variable. One thread per connection lets that wait block: libmicrohttpd
 * allows blocking handlers and content readers in this mode, and the number
 * of threads is capped by the connection limit.
 *
 * Streaming: the reply is a chunked response whose content reader blocks
 * until the job has new text, then returns server-sent events. Chat streams
 * start with an empty assistant delta at once, so clients see the reply
 * begin while the request still waits in the queue.
 *
 * Disconnects: a client that goes away is noticed (a) by libmicrohttpd when
 * a write fails or the request ends abnormally, which ends in on_completed(),
 * and (b) while we wait for tokens, by polling the socket every
 * WAIT_POLL_MS for a hang-up. Either way the job is cancelled and its
 * sequence is free at the next step.
 */
#include "server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAIT_POLL_MS 100
#define DISCARD_MAX_BYTES (64u << 20) /* of an oversized body, read before hanging up */
#define JSON_TYPE "application/json"
#define ERR_INVALID "invalid_request_error"

enum route {
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_MODELS,
    ROUTE_MODEL, /* /v1/models/ID */
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_COUNT
};

static const struct {
    const char *path;
    bool post;
    enum route route;
} routes[] = {
    {"/health", false, ROUTE_HEALTH},
    {"/metrics", false, ROUTE_METRICS},
    {"/v1/models", false, ROUTE_MODELS},
    {"/models", false, ROUTE_MODELS},
    {"/v1/chat/completions", true, ROUTE_CHAT},
    {"/chat/completions", true, ROUTE_CHAT},
    {"/v1/completions", true, ROUTE_COMPLETIONS},
    {"/completions", true, ROUTE_COMPLETIONS},
};

/* One HTTP request (libmicrohttpd's per-request closure). */
struct conn {
    struct server *s;
    struct MHD_Connection *mc;
    enum route route;
    struct server_buf body;
    size_t body_seen; /* bytes received, kept or not */
    bool replied;
    struct server_job *job; /* one reference, while we hold the job */
    struct server_reply_id rid;
    char id[48];
    bool stream, include_usage;
    struct server_buf out; /* SSE bytes not yet handed to libmicrohttpd */
    size_t out_pos;
    size_t sent; /* bytes of the job's text already sent */
    bool role_sent, ended;
};

/* ---- replies ---- */

/* Browser front-ends call from other origins; the API key (a bearer
 * header, never a cookie) is what protects the server, so any origin may. */
static void add_cors(struct MHD_Response *r)
{
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, "*");
}

static enum MHD_Result reply_preflight(struct conn *c)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    add_cors(r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
    MHD_add_response_header(r, "Access-Control-Max-Age", "86400");
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_NO_CONTENT, r);
    MHD_destroy_response(r);
    c->replied = true;
    return ret;
}

static enum MHD_Result reply(struct conn *c, int status, const char *type, char *body)
{
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":null}}";
    struct MHD_Response *r =
        body
            ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE)
            : MHD_create_response_from_buffer(sizeof(oom) - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    if (!body) status = 500;
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, body ? type : JSON_TYPE);
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    add_cors(r);
    enum MHD_Result ret = MHD_queue_response(c->mc, (unsigned)status, r);
    MHD_destroy_response(r);
    c->replied = true;
    pthread_mutex_lock(&c->s->lock);
    server_metrics_count_status(&c->s->metrics, status);
    pthread_mutex_unlock(&c->s->lock);
    return ret;
}

static enum MHD_Result reply_error(struct conn *c, const struct server_error *err)
{
    return reply(c, err->status, JSON_TYPE, server_error_json(err));
}

static enum MHD_Result reply_simple_error(struct conn *c, int status, const char *type,
                                          const char *code, const char *msg)
{
    struct server_error err;
    server_error_set(&err, status, type, NULL, code, "%s", msg);
    return reply_error(c, &err);
}

/* ---- waiting for a job ---- */

/* Whether the client closed its end (polled while we wait for tokens). */
static bool peer_gone(struct conn *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) return true;
    char b;
    return (p.revents & POLLIN) && recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* Wait until the job has more than `have` bytes ready or is done. Returns
 * false (and cancels the job) if the client went away meanwhile: the socket
 * is looked at every WAIT_POLL_MS, however often the job wakes us. */
static bool wait_job(struct conn *c, size_t have)
{
    struct server *s = c->s;
    struct server_job *j = c->job;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    pthread_mutex_lock(&s->lock);
    while (j->state != JOB_DONE && j->ready <= have) {
        next.tv_nsec += WAIT_POLL_MS * 1000000L;
        next.tv_sec += next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        int rc = 0;
        while (rc != ETIMEDOUT && j->state != JOB_DONE && j->ready <= have)
            rc = pthread_cond_timedwait(&j->cond, &s->lock, &next);
        if (j->state == JOB_DONE || j->ready > have) break;
        pthread_mutex_unlock(&s->lock);
        bool gone = peer_gone(c);
        pthread_mutex_lock(&s->lock);
        if (gone) {
            sched_cancel_locked(s, j);
            pthread_mutex_unlock(&s->lock);
            return false;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return true;
}

/* ---- streaming ---- */

static int sse_chunk(struct conn *c, const struct server_chunk *ch)
{
    char *json = server_chunk_json(&c->rid, ch);
    int rc = json ? server_sse_append(&c->out, json) : TT_ENOMEM;
    free(json);
    return rc;
}

/* The final events: the finish chunk (or an error event), the usage chunk,
 * then [DONE]. */
static int sse_end(struct conn *c, const struct server_job *j)
{
    int rc = 0;
    if (j->failed) {
        char *e = server_error_json(&j->err);
        rc = e ? server_sse_append(&c->out, e) : TT_ENOMEM;
        free(e);
    } else {
        struct server_usage u = {j->n_prompt, j->n_gen};
        const bool chat = c->rid.kind == SERVER_KIND_CHAT;
        struct server_chunk fin = {
            .text = chat ? NULL : "", .finish_reason = j->finish, .with_usage = c->include_usage};
        rc = sse_chunk(c, &fin);
        struct server_chunk usage = {.usage_only = true, .usage = &u};
        if (!rc && c->include_usage) rc = sse_chunk(c, &usage);
    }
    c->ended = true;
    return rc ? rc : server_sse_append(&c->out, SERVER_SSE_DONE);
}

/* Wait for the job's next text and turn it into events in c->out. */
static int stream_fill(struct conn *c)
{
    struct server_chunk ch = {.with_usage = c->include_usage};
    if (!c->role_sent && c->rid.kind == SERVER_KIND_CHAT) {
        c->role_sent = true;
        ch.role_first = true;
        ch.text = "";
        return sse_chunk(c, &ch);
    }
    if (!wait_job(c, c->sent)) return TT_ECANCELED;
    struct server *s = c->s;
    struct server_job *j = c->job;
    struct server_buf text = {0};
    pthread_mutex_lock(&s->lock);
    int rc = j->ready > c->sent
                 ? server_buf_append(&text, j->text.data + c->sent, j->ready - c->sent)
                 : 0;
    c->sent = j->ready;
    const bool done = j->state == JOB_DONE;
    pthread_mutex_unlock(&s->lock);
    if (!rc && text.len) {
        ch.text = text.data;
        ch.len = text.len;
        rc = sse_chunk(c, &ch);
    }
    server_buf_free(&text);
    /* j's counters and finish are final once DONE; the connection holds a reference */
    if (!rc && done) rc = sse_end(c, j);
    return rc;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct conn *c = cls;
    while (c->out_pos >= c->out.len) {
        if (c->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        c->out.len = c->out_pos = 0;
        if (stream_fill(c)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = TT_MIN(max, c->out.len - c->out_pos);
    memcpy(buf, c->out.data + c->out_pos, n);
    c->out_pos += n;
    return (ssize_t)n;
}

static enum MHD_Result start_stream(struct conn *c)
{
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, c, NULL);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_cors(r);
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    c->replied = true;
    pthread_mutex_lock(&c->s->lock);
    server_metrics_count_status(&c->s->metrics, 200);
    pthread_mutex_unlock(&c->s->lock);
    return ret;
}

/* Non-streaming: wait for the whole answer, then reply with it. */
static enum MHD_Result finish_blocking(struct conn *c)
{
    if (!wait_job(c, SIZE_MAX)) return MHD_NO; /* the client is gone: close */
    struct server_job *j = c->job;
    if (j->failed) return reply_error(c, &j->err);
    struct server_usage u = {j->n_prompt, j->n_gen};
    return reply(c, 200, JSON_TYPE,
                 server_reply_json(&c->rid, j->text.data, j->text.len, j->finish, &u));
}

/* ---- generation requests ---- */

/* Prompt tokens of the request into j->prompt; 400 when empty or longer
 * than the context. */
static int job_tokenize(struct server *s, const struct server_params *p, struct server_job *j,
                        struct server_error *err)
{
    if (!(j->prompt = malloc(sizeof(int32_t) * (size_t)s->n_ctx)))
        return server_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    int n;
    if (p->n_prompt_ids) {
        n = p->n_prompt_ids;
        for (int i = 0; i < n && n <= s->n_ctx; i++) {
            if (p->prompt_ids[i] >= s->n_vocab)
                return server_error_set(err, 400, ERR_INVALID, "prompt", "invalid_value",
                                        "token id %d is outside the vocabulary [0, %d)",
                                        p->prompt_ids[i], s->n_vocab);
            j->prompt[i] = p->prompt_ids[i];
        }
    } else {
        char *chat = NULL;
        const char *text = p->prompt;
        size_t len = p->prompt_len;
        if (p->kind == SERVER_KIND_CHAT) {
            int rc = tok_chat_render_alloc(s->chat_template, p->msgs, p->n_msgs, true, &chat);
            if (rc < 0)
                return server_error_set(err, 400, ERR_INVALID, "messages", "invalid_value",
                                        "cannot apply the chat template: %s", tt_error_detail());
            text = chat;
            len = (size_t)rc;
        }
        n = tok_encode(s->v, text, len, true, true, j->prompt, s->n_ctx);
        free(chat);
        if (n == TT_ERANGE)
            n = s->n_ctx + 1;
        else if (n < 0)
            return server_error_set(err, 400, ERR_INVALID, "prompt", "invalid_value",
                                    "cannot tokenize the prompt: %s", tt_error_detail());
    }
    if (n > s->n_ctx)
        return server_error_set(err, 400, ERR_INVALID,
                                p->kind == SERVER_KIND_CHAT ? "messages" : "prompt",
                                "context_length_exceeded",
                                "the prompt is longer than the context of %d tokens per sequence "
                                "(raise --ctx)",
                                s->n_ctx);
    if (n == 0)
        return server_error_set(err, 400, ERR_INVALID, "prompt", "invalid_value",
                                "the prompt is empty");
    j->n_prompt = n;
    return 0;
}

/* A random seed for requests without one (0 would mean the fixed default). */
static uint64_t fresh_seed(void)
{
    static _Atomic uint64_t counter;
    uint64_t x =
        (uint64_t)(tt_now_s() * 1e9) + 0x9E3779B97F4A7C15ull * (atomic_fetch_add(&counter, 1) + 1);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return (x ^ (x >> 31)) | 1;
}

static int job_prepare(struct server *s, const struct server_params *p, struct server_job *j,
                       struct server_error *err)
{
    j->kind = p->kind;
    if (job_tokenize(s, p, j, err)) return -1;
    j->max_tokens = p->max_tokens > 0 ? p->max_tokens : SERVER_MAX_TOKENS_MAX;
    j->sampling = p->sampling;
    if (!p->seed_given) j->sampling.seed = fresh_seed();
    j->ignore_eos = p->ignore_eos;
    j->stream = p->stream;
    for (int i = 0; i < p->n_stop; i++) {
        if (!(j->stop[i] = strdup(p->stop[i])))
            return server_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        j->n_stop++;
    }
    j->t_submit = tt_now_s();
    return 0;
}

static void reply_id_init(struct conn *c, enum server_kind kind)
{
    static _Atomic uint64_t counter;
    uint64_t n = atomic_fetch_add(&counter, 1);
    snprintf(c->id, sizeof(c->id), "%s-%08llx%08llx",
             kind == SERVER_KIND_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)(c->s->created & 0xffffffff), (unsigned long long)n);
    c->rid = (struct server_reply_id){kind, c->id, (long long)time(NULL), c->s->model_id};
}

static enum MHD_Result handle_generate(struct conn *c, enum server_kind kind)
{
    struct server *s = c->s;
    struct server_params p;
    struct server_error err;
    struct server_limits lim = {s->model_id, s->opts.messages_max};
    if (server_params_parse(&p, kind, c->body.data ? c->body.data : "", c->body.len, &lim, &err)) {
        server_params_free(&p);
        return reply_error(c, &err);
    }
    struct server_job *j = job_new();
    int rc = j ? job_prepare(s, &p, j, &err)
               : server_error_set(&err, 500, "server_error", NULL, NULL, "out of memory");
    c->stream = p.stream;
    c->include_usage = p.include_usage;
    server_params_free(&p);
    if (!rc) rc = sched_submit(s, j, &err);
    pthread_mutex_lock(&s->lock);
    if (rc && j) job_unref_locked(j);
    if (!rc) s->n_conn_jobs++;
    pthread_mutex_unlock(&s->lock);
    if (rc) return reply_error(c, &err);
    c->job = j;
    reply_id_init(c, kind);
    return c->stream ? start_stream(c) : finish_blocking(c);
}

/* ---- other endpoints ---- */

static enum MHD_Result handle_metrics(struct conn *c)
{
    struct server_metrics m;
    pthread_mutex_lock(&c->s->lock);
    m = c->s->metrics;
    pthread_mutex_unlock(&c->s->lock);
    struct server_buf out = {0};
    if (server_metrics_render(&m, &out)) server_buf_free(&out);
    return reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", out.data);
}

static enum MHD_Result handle_get(struct conn *c, const char *url)
{
    struct server *s = c->s;
    if (c->route == ROUTE_HEALTH) {
        pthread_mutex_lock(&s->lock);
        const bool down = s->stopping || s->failed;
        pthread_mutex_unlock(&s->lock);
        return reply(c, down ? 503 : 200, JSON_TYPE,
                     strdup(down ? "{\"status\":\"unavailable\"}" : "{\"status\":\"ok\"}"));
    }
    if (c->route == ROUTE_METRICS) return handle_metrics(c);
    if (c->route == ROUTE_MODELS)
        return reply(c, 200, JSON_TYPE, server_models_json(s->model_id, s->created, true));
    const char *id = url + strlen("/v1/models/");
    if (strcmp(id, s->model_id) != 0) {
        struct server_error err;
        server_error_set(&err, 404, ERR_INVALID, "model", "model_not_found",
                         "The model '%.200s' does not exist", id);
        return reply_error(c, &err);
    }
    return reply(c, 200, JSON_TYPE, server_models_json(s->model_id, s->created, false));
}

/* ---- the request handler ---- */

static bool authorized(struct conn *c)
{
    const char *key = c->s->api_key;
    if (!key || c->route == ROUTE_HEALTH) return true;
    const char *h =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ')
        h++;
    const size_t n = strlen(key), m = strlen(h);
    unsigned char diff = n != m;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(key[i] ^ h[i < m ? i : 0]);
    return diff == 0;
}

static enum MHD_Result reply_too_large(struct conn *c)
{
    struct server_error err;
    server_error_set(&err, 413, ERR_INVALID, NULL, "request_too_large",
                     "the request body is larger than %zu bytes", c->s->opts.body_max_bytes);
    return reply_error(c, &err);
}

/* Route, method, API key and declared body size, before any body is read. */
static enum MHD_Result on_first_call(struct conn *c, const char *url, const char *method)
{
    const bool post = !strcmp(method, "POST"),
               get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int found = -1;
    for (size_t i = 0; i < TT_ARRAY_LEN(routes) && found < 0; i++)
        if (!strcmp(url, routes[i].path)) found = (int)i;
    if (found >= 0)
        c->route = routes[found].route;
    else if (!strncmp(url, "/v1/models/", 11) && url[11])
        c->route = ROUTE_MODEL;
    else
        return reply_simple_error(c, 404, ERR_INVALID, "not_found", "unknown endpoint");
    if (!strcmp(method, "OPTIONS")) return reply_preflight(c); /* CORS preflight: no key */
    const bool wants_post = found >= 0 && routes[found].post;
    if (wants_post ? !post : !get)
        return reply_simple_error(c, 405, ERR_INVALID, "method_not_allowed",
                                  wants_post ? "this endpoint takes POST"
                                             : "this endpoint takes GET");
    if (!authorized(c))
        return reply_simple_error(c, 401, "authentication_error", "invalid_api_key",
                                  "missing or wrong API key (send 'Authorization: Bearer KEY')");
    const char *cl =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > c->s->opts.body_max_bytes) return reply_too_large(c);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct conn *c = *con_cls;
    if (!c) {
        if (!(c = calloc(1, sizeof(*c)))) return MHD_NO;
        *c = (struct conn){.s = cls, .mc = mc};
        *con_cls = c;
        return on_first_call(c, url, method);
    }
    if (*upload_size) {
        /* A body over the limit is read and dropped, then answered with 413
         * (clients that are still sending would miss an early reply); one
         * that goes on beyond DISCARD_MAX_BYTES loses its connection. */
        const size_t n = *upload_size;
        *upload_size = 0;
        if (c->replied) return MHD_YES;
        c->body_seen += n;
        if (c->body_seen > c->s->opts.body_max_bytes) {
            server_buf_free(&c->body);
            return c->body_seen > DISCARD_MAX_BYTES ? MHD_NO : MHD_YES;
        }
        return server_buf_append(&c->body, upload, n) ? MHD_NO : MHD_YES;
    }
    if (c->replied) return MHD_YES;
    if (c->body_seen > c->s->opts.body_max_bytes) return reply_too_large(c);
    if (c->route == ROUTE_CHAT) return handle_generate(c, SERVER_KIND_CHAT);
    if (c->route == ROUTE_COMPLETIONS) return handle_generate(c, SERVER_KIND_COMPLETION);
    return handle_get(c, url);
}

/* The request ended (answered, failed or the client vanished). */
static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct server *s = cls;
    struct conn *c = *con_cls;
    if (!c) return;
    if (c->job) {
        pthread_mutex_lock(&s->lock);
        sched_cancel_locked(s, c->job); /* no-op when the job is done */
        job_unref_locked(c->job);
        s->n_conn_jobs--;
        pthread_mutex_unlock(&s->lock);
    }
    server_buf_free(&c->body);
    server_buf_free(&c->out);
    free(c);
    *con_cls = NULL;
}

static void on_log(void *cls, const char *fmt, va_list ap)
{
    struct server *s = cls;
    vsnprintf(s->last_log, sizeof(s->last_log), fmt, ap);
    size_t n = strlen(s->last_log);
    while (n && s->last_log[n - 1] == '\n')
        s->last_log[--n] = 0;
    tt_debug("server: http: %s", s->last_log);
}

/* ---- start and stop ---- */

static int parse_host(const char *host, int port, struct sockaddr_storage *ss, bool *v6)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (!strcmp(host, "localhost")) host = "127.0.0.1";
    *v6 = false;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *v6 = true;
    } else {
        return tt_error_set(TT_EINVAL,
                            "--host must be a numeric IPv4 or IPv6 address (or "
                            "localhost), got '%s'",
                            host);
    }
    return 0;
}

int http_start(struct server *s)
{
    const char *host = s->opts.host ? s->opts.host : "127.0.0.1";
    struct sockaddr_storage ss;
    bool v6;
    int err = parse_host(host, s->opts.port, &ss, &v6);
    if (err) return err;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    s->daemon = MHD_start_daemon(flags, (uint16_t)s->opts.port, NULL, NULL, on_request, s,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->opts.connections_max,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->opts.timeout_s,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_log, s, MHD_OPTION_END);
    if (!s->daemon)
        return tt_error_set(TT_EIO, "cannot listen on %s port %d: %s", host, s->opts.port,
                            s->last_log[0] ? s->last_log : "address in use or not permitted");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->opts.port;
    return 0;
}

void http_quiesce(struct server *s)
{
    if (!s->daemon) return;
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void http_stop(struct server *s)
{
    if (!s->daemon) return;
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
