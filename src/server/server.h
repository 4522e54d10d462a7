/*
 * server: an OpenAI-compatible HTTP API in front of one engine, with
 * continuous batching.
 *
 *   HTTP threads (libmicrohttpd, one per connection)      scheduler thread
 *   -----------------------------------------------      ----------------
 *   read body (capped) -> check API key -> parse JSON     owns the engine
 *   (server_params_parse) -> render chat template ->      each step: admit waiting
 *   tokenize -> submit a job (bounded queue, else 503) -> jobs into free sequences,
 *   wait for its text, write JSON or SSE chunks            one engine_decode() over
 *                                                          all of them, deliver tokens
 *
 * Endpoints: POST /v1/chat/completions, POST /v1/completions (both streaming
 * with server-sent events ending in "data: [DONE]", or one JSON reply),
 * GET /v1/models[/ID], GET /health, GET /metrics (Prometheus text).
 * Every error is a 4xx/5xx reply with OpenAI's JSON shape
 * {"error":{"message","type","param","code"}}; no input crashes the server.
 *
 * Under mpirun, rank 0 runs the server and the other ranks sit in
 * engine_worker_run(); nothing here differs, since every engine call on
 * rank 0 is a cluster step.
 *
 * The second half of this header lists the pure building blocks (request
 * parsing, response JSON, SSE framing, stop strings, metrics text), exported
 * so that tests/test_server.c can check them without a network.
 */
#ifndef TT_SERVER_H
#define TT_SERVER_H

#include "../comm/comm.h"
#include "../engine/engine.h"
#include "../tok/tok.h"

#include <stddef.h>
#include <stdint.h>

#define SERVER_PORT_DEFAULT 8080
#define SERVER_BODY_MAX_DEFAULT (1u << 20) /* bytes of one request body */
#define SERVER_BODY_MAX_MAX (256u << 20)
#define SERVER_MESSAGES_MAX_DEFAULT 1024 /* chat messages in one request */
#define SERVER_MESSAGES_MAX_MAX 100000
#define SERVER_QUEUE_DEFAULT 64 /* waiting requests beyond the busy sequences */
#define SERVER_QUEUE_MAX 65536
#define SERVER_STOP_MAX 16              /* stop strings in one request */
#define SERVER_STOP_LEN_MAX 512         /* bytes of one stop string */
#define SERVER_MAX_TOKENS_MAX (1 << 24) /* largest max_tokens accepted */
#define SERVER_CONNECTIONS_MAX 4096
#define SERVER_MODEL_ID_MAX 256

/* ---- the server ---- */

struct server_opts {
    const char *host;          /* numeric IPv4 or IPv6 address; NULL: 127.0.0.1 */
    int port;                  /* 0: any free port (server_port() tells which) */
    const char *api_key;       /* NULL or "": no authentication */
    const char *model_id;      /* the name clients must use (the model file's basename) */
    const char *chat_template; /* tok_chat_render template name */
    int queue_max;             /* waiting requests when all sequences are busy */
    int n_batch;               /* most tokens in one step (the engine's n_batch); 0: default */
    size_t body_max_bytes;     /* 0: SERVER_BODY_MAX_DEFAULT */
    int messages_max;          /* 0: SERVER_MESSAGES_MAX_DEFAULT */
    int connections_max;       /* 0: derived from sequences and queue */
    int timeout_s;             /* idle connection timeout; 0: 600 */
    double shutdown_grace_s;   /* how long in-flight requests may run after server_stop */
    struct comm *comm;         /* for rank 0's communication time in /metrics; may be NULL */
};

struct server; /* opaque */

/* Start serving: bind, start the HTTP threads and the scheduler thread, which
 * from now on is the only user of `e` (created with .n_seq = sequences).
 * `e` and `v` must outlive the server. Errors: TT_EINVAL (bad options),
 * TT_EIO (cannot bind: the detail names the address), TT_ENOMEM. */
int server_start(struct server **out, struct engine *e, const struct tok_vocab *v,
                 const struct server_opts *o);
/* The TCP port actually bound. */
int server_port(const struct server *s);
/* True once the scheduler stopped on its own (the cluster failed). */
bool server_failed(const struct server *s);
/* Stop accepting connections, answer waiting requests with 503, let running
 * ones finish for up to shutdown_grace_s (then end them with finish_reason
 * "length"), stop the threads. Blocks until done. The engine is idle after. */
void server_stop(struct server *s);
/* Stop (if needed) and free. NULL is fine. */
void server_free(struct server *s);

/* ---- building blocks (pure; tested on their own) ---- */

/* A growable byte buffer, always NUL-terminated when data != NULL. */
struct server_buf {
    char *data;
    size_t len, cap;
};
int server_buf_append(struct server_buf *b, const char *s, size_t n); /* 0 or TT_ENOMEM */
int server_buf_printf(struct server_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void server_buf_free(struct server_buf *b);

/* An error reply: HTTP status plus OpenAI's error object. */
struct server_error {
    int status;        /* 400, 401, 404, 405, 413, 500, 503 */
    const char *type;  /* "invalid_request_error", "authentication_error", "server_error" */
    const char *param; /* the offending field, or NULL */
    const char *code;  /* e.g. "model_not_found", or NULL */
    char message[384];
};
/* Fill *err and return -1, so parsers write `return server_error_set(...)`. */
int server_error_set(struct server_error *err, int status, const char *type, const char *param,
                     const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{...}} as a malloc'ed string (NULL only when out of memory). */
char *server_error_json(const struct server_error *err);

enum server_kind { SERVER_KIND_CHAT, SERVER_KIND_COMPLETION, SERVER_KIND_COUNT };

struct server_limits {
    const char *model_id; /* requests naming another model get 404 */
    int messages_max;
};

/* A validated request. Strings point into the parsed JSON, which the params
 * own until server_params_free. */
struct server_params {
    enum server_kind kind;
    struct tok_chat_msg *msgs; /* chat: n_msgs messages */
    int n_msgs;
    const char *prompt; /* completion given as text (may contain no NUL) */
    size_t prompt_len;
    int32_t *prompt_ids; /* completion given as token ids (ids not yet range-checked) */
    int n_prompt_ids;
    int max_tokens; /* 0: until the context is full */
    struct sampler_opts sampling;
    bool seed_given;
    const char *stop[SERVER_STOP_MAX];
    int n_stop;
    bool stream;
    bool include_usage;
    bool ignore_eos; /* extension (as llama.cpp's server): do not stop at end-of-generation */
    void *json_;     /* the parsed document (owned) */
};

/* Parse and validate a request body. 0 on success (free *p with
 * server_params_free); -1 with *err filled: 400 for malformed JSON, invalid
 * UTF-8, wrong types, values out of range or n != 1; 404 for an unknown
 * model. Unknown fields are ignored, as OpenAI's API does. */
int server_params_parse(struct server_params *p, enum server_kind kind, const char *body,
                        size_t len, const struct server_limits *lim, struct server_error *err);
void server_params_free(struct server_params *p); /* safe on a zeroed struct */

/* Token counts of a finished (or last streamed) answer. */
struct server_usage {
    int prompt_tokens;
    int completion_tokens;
};

/* Identity shared by every JSON object of one answer. */
struct server_reply_id {
    enum server_kind kind;
    const char *id;    /* "chatcmpl-..." or "cmpl-..." */
    long long created; /* Unix seconds */
    const char *model;
};

/* The whole non-streaming answer (JSON, malloc'ed). `text` may hold any bytes:
 * invalid UTF-8 is replaced by U+FFFD. */
char *server_reply_json(const struct server_reply_id *r, const char *text, size_t len,
                        const char *finish_reason, const struct server_usage *u);
/* One streaming chunk. Chat: `role_first` adds "role":"assistant" to the
 * delta; text == NULL gives an empty delta. finish_reason NULL gives null.
 * with_usage: a "usage" member, null unless u is given; usage_only: the final
 * chunk of stream_options.include_usage, with empty choices. */
struct server_chunk {
    const char *text;
    size_t len;
    bool role_first;
    const char *finish_reason;
    bool with_usage;
    bool usage_only;
    const struct server_usage *usage;
};
char *server_chunk_json(const struct server_reply_id *r, const struct server_chunk *c);
/* GET /v1/models (model == NULL) or /v1/models/ID. */
char *server_models_json(const char *model_id, long long created, bool list);

/* Server-sent event framing: appends "data: <payload>\n\n". The payload must
 * not contain a newline (compact JSON never does). */
int server_sse_append(struct server_buf *b, const char *payload);
#define SERVER_SSE_DONE "[DONE]"

/* Bytes of s[0..n) with invalid UTF-8 replaced by U+FFFD appended to b. */
int server_utf8_append(struct server_buf *b, const char *s, size_t n);

/* Stop strings. text[0..len) is the answer so far; matches ending at or
 * before `checked` were looked for already. Returns the offset of the
 * earliest stop string found (the answer is cut there), or -1. In both cases
 * *safe_len is how many bytes may be sent now: text that could still turn
 * into the start of a stop string is held back. */
long server_stop_find(const char *text, size_t len, size_t checked, const char *const *stops,
                      int n_stop, size_t *safe_len);

/* ---- metrics ---- */

#define SERVER_HIST_BUCKETS 14
struct server_hist {
    const double *bounds; /* SERVER_HIST_BUCKETS upper bounds, seconds, ascending */
    uint64_t counts[SERVER_HIST_BUCKETS + 1]; /* last: +Inf */
    uint64_t count;
    double sum;
};

enum server_finish {
    SERVER_FINISH_STOP,
    SERVER_FINISH_LENGTH,
    SERVER_FINISH_CANCELLED,
    SERVER_FINISH_ERROR,
    SERVER_FINISH_COUNT
};

#define SERVER_STATUS_TRACKED 10
#define SERVER_EXPERTS_MAX 256
struct server_metrics {
    uint64_t requests[SERVER_KIND_COUNT];         /* generation requests accepted */
    int status_code[SERVER_STATUS_TRACKED];       /* HTTP statuses seen ... */
    uint64_t status_count[SERVER_STATUS_TRACKED]; /* ... and their counts */
    uint64_t finished[SERVER_FINISH_COUNT];
    uint64_t rejected_full; /* 503: queue full */
    uint64_t prompt_tokens, completion_tokens;
    uint64_t steps, step_tokens; /* engine_decode calls and their tokens */
    double step_seconds;
    struct server_hist ttft;          /* submit -> first token */
    struct server_hist token_latency; /* between tokens of one answer */
    struct server_hist queue_wait;    /* submit -> admitted */
    int running, waiting, n_seq;
    int64_t kv_used, kv_total; /* cache positions */
    int n_ranks;
    double comm_seconds; /* rank 0's time in communication */
    uint64_t comm_bytes;
    int n_expert; /* MoE models: experts per layer (at most SERVER_EXPERTS_MAX shown) */
    uint64_t
        expert_tokens[SERVER_EXPERTS_MAX]; /* routed to each expert, all layers, recent steps */
    double moe_imbalance;                  /* max over layers of max/mean rank load */
    double start_s;
};
void server_metrics_init(struct server_metrics *m);
void server_hist_observe(struct server_hist *h, double v);
void server_metrics_count_status(struct server_metrics *m, int status);
/* Prometheus text exposition format (version 0.0.4), names prefixed "tutti_". */
int server_metrics_render(const struct server_metrics *m, struct server_buf *out);

#endif
