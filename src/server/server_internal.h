/*
 * server_internal.h: what the server's files share: the server object, the
 * job that carries one request from its HTTP thread to the scheduler and
 * back, and the scheduler's entry points.
 *
 * Ownership and locking:
 *   1. s->lock guards the queue, the slots, every job field marked "locked",
 *      the metrics and the stop flags. It is never held across
 *      engine_decode() or any network write.
 *   2. A job has two owners, its connection and the scheduler (refs = 2 while
 *      submitted). Whoever drops the last reference frees it, under the lock.
 *   3. A job's prompt, limits, sampling options and stop strings are written
 *      before submission and read-only afterwards; fields marked "scheduler"
 *      are touched only by the scheduler thread.
 *   4. Job states move one way: WAITING -> RUNNING -> DONE, or WAITING -> DONE
 *      (cancelled, or refused at shutdown). A job in DONE never returns.
 */
#ifndef TT_SERVER_INTERNAL_H
#define TT_SERVER_INTERNAL_H

#include "server.h"

#include <pthread.h>

enum job_state { JOB_WAITING, JOB_RUNNING, JOB_DONE, JOB_STATE_COUNT };

struct server_job {
    /* ---- written before submission, read-only after ---- */
    enum server_kind kind;
    int32_t *prompt; /* n_prompt ids, owned */
    int n_prompt;
    int max_tokens; /* >= 1 */
    struct sampler_opts sampling;
    bool ignore_eos;
    bool stream;                 /* wake the connection at every token, not only at the end */
    char *stop[SERVER_STOP_MAX]; /* owned copies */
    int n_stop;
    double t_submit;

    /* ---- scheduler ---- */
    int seq;      /* engine sequence while RUNNING */
    int n_fed;    /* tokens in the sequence's KV cache */
    int32_t last; /* sampled, not yet fed */
    struct tok_stream ts;
    size_t checked; /* text scanned for stop strings */
    double t_last;  /* time of the previous token */

    /* ---- locked ---- */
    enum job_state state;
    struct server_buf text; /* the answer so far (stop strings cut) */
    size_t ready;           /* bytes of text that may be sent */
    const char *finish;     /* "stop" or "length" once DONE without error */
    bool failed;            /* DONE with err set */
    struct server_error err;
    int n_gen;      /* completion tokens */
    bool cancelled; /* the client went away */
    int refs;
    pthread_cond_t cond;     /* signalled when text, state or finish change */
    struct server_job *next; /* queue link while WAITING */
};

struct MHD_Daemon;

struct server {
    struct server_opts opts;
    char *model_id; /* owned copy of opts.model_id */
    char *api_key;
    char *chat_template;
    struct engine *e;
    const struct tok_vocab *v;
    int n_seq, n_ctx, n_batch, n_vocab;
    long long created; /* start time, Unix seconds */

    pthread_mutex_t lock;
    pthread_cond_t sched_cond; /* wakes the scheduler: new job, cancel, stop */
    pthread_t sched_thread;
    bool sched_started;
    bool stopping;          /* locked: server_stop was called */
    bool failed;            /* locked: the engine failed; nothing more is served */
    double stop_deadline_s; /* locked: running jobs end by then */
    struct server_job *queue_head, *queue_tail; /* locked: WAITING jobs, FIFO */
    int n_waiting;
    struct server_job **slots; /* locked: n_seq, the RUNNING job of each sequence */
    int n_running;
    int n_conn_jobs;               /* locked: connections still holding a job */
    struct server_metrics metrics; /* locked */

    /* scheduler-only work arrays, sized once */
    struct sampler *samplers; /* n_seq */
    struct sampler **sampler_ptrs;
    struct engine_tok *toks;     /* n_batch */
    int32_t *next;               /* n_batch */
    struct server_job **sampled; /* n_batch: the job of each sampled token */
    int *reset;                  /* n_seq: sequences to clear before the step */
    uint64_t *moe_loads;         /* n_expert: one layer's expert loads */
    char *piece;                 /* piece_cap */
    int piece_cap;

    struct MHD_Daemon *daemon;
    int port;
    char last_log[256]; /* libmicrohttpd's last message, for bind errors */
};

/* ---- scheduler (server_sched.c) ---- */
int sched_init(struct server *s);  /* work arrays; TT_ENOMEM */
int sched_start(struct server *s); /* the thread */
/* Ask for shutdown, wait for the scheduler thread to end. */
void sched_stop(struct server *s);
void sched_free(struct server *s);
/* A new job (refs = 1, WAITING). NULL when out of memory. */
struct server_job *job_new(void);
/* Queue the job (refs becomes 2). -1 with err set (503) when the queue is
 * full or the server stops. Locks. */
int sched_submit(struct server *s, struct server_job *j, struct server_error *err);
/* The client went away: a waiting job leaves the queue at once, a running
 * one frees its sequence at the next step. Lock held by the caller. */
void sched_cancel_locked(struct server *s, struct server_job *j);
/* Drop one reference; frees at zero. Lock held by the caller. */
void job_unref_locked(struct server_job *j);

/* ---- HTTP (server_http.c) ---- */
int http_start(struct server *s);
void http_quiesce(struct server *s); /* stop accepting new connections */
void http_stop(struct server *s);

#endif
