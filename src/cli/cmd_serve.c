/*
 * cmd_serve.c: `tutti serve`, an OpenAI-compatible HTTP API (src/server).
 *
 * Every rank loads the model and builds the engine with --parallel
 * sequences; rank 0 starts the server, the others follow its steps in
 * engine_worker_run() until it releases them.
 *
 * Signals: SIGINT and SIGTERM are blocked in every thread before any thread
 * starts (the engine's pool, libmicrohttpd's threads, the scheduler), and
 * the main thread of rank 0 waits for them with sigtimedwait(); so the
 * shutdown runs in ordinary code, not in a handler: stop accepting, finish
 * or end in-flight requests, release the workers, exit 0. Ranks > 0 keep
 * them blocked too: under mpirun a Ctrl-C reaches every rank, and the
 * workers must wait for rank 0's stop rather than die under it.
 */
#include "../server/server.h"
#include "../tok/tok.h"
#include "cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct serve_opts {
    struct cli_model_opts mo;
    struct server_opts so;
    int n_parallel;
    const char *chat_template;
    const char *model_id;
};

static const char serve_help[] =
    "usage: tutti serve -m MODEL [options]\n"
    "Serve the model over an OpenAI-compatible HTTP API: POST /v1/chat/completions and\n"
    "/v1/completions (streaming or not), GET /v1/models, /health and /metrics (Prometheus).\n"
    "Requests are batched together as they come (continuous batching). Under mpirun, rank 0\n"
    "serves and every rank computes. SIGINT/SIGTERM stop it cleanly (under mpirun: send\n"
    "SIGTERM to rank 0, whose pid the start-up line shows).\n\n"
    "%s"
    "  (-c, --ctx is the context of each sequence: the KV cache holds --parallel x --ctx)\n\n"
    "      --host ADDR      address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)\n"
    "      --port N         TCP port (default 8080; 0 = any free port, printed at start)\n"
    "      --api-key KEY    require 'Authorization: Bearer KEY' (default: $TUTTI_API_KEY if set)\n"
    "      --parallel N     sequences computed together (default 4)\n"
    "      --queue N        requests that may wait for a sequence (default 64); beyond: 503\n"
    "      --chat-template T  template family (default: the model's; chatml if it has none)\n"
    "      --model-id NAME  the model name clients use (default: the file's basename)\n"
    "      --max-body N     largest request body in bytes (default 1048576)\n"
    "      --max-messages N most messages in one chat request (default 1024)\n"
    "      --timeout S      close idle connections after S seconds (default 600)\n"
    "      --shutdown-grace S  seconds running requests may go on after SIGINT/SIGTERM (default "
    "10)\n";

static bool serve_opt(int argc, char **argv, int *i, struct serve_opts *o)
{
    const char *a = argv[*i];
    struct server_opts *so = &o->so;
    if (!strcmp(a, "--host"))
        so->host = cli_value(argc, argv, i);
    else if (!strcmp(a, "--port"))
        so->port = (int)cli_parse_int(a, cli_value(argc, argv, i), 0, 65535);
    else if (!strcmp(a, "--api-key"))
        so->api_key = cli_value(argc, argv, i);
    else if (!strcmp(a, "--parallel") || !strcmp(a, "-np"))
        o->n_parallel = (int)cli_parse_int(a, cli_value(argc, argv, i), 1, ENGINE_SEQ_MAX);
    else if (!strcmp(a, "--queue"))
        so->queue_max = (int)cli_parse_int(a, cli_value(argc, argv, i), 0, SERVER_QUEUE_MAX);
    else if (!strcmp(a, "--chat-template"))
        o->chat_template = cli_value(argc, argv, i);
    else if (!strcmp(a, "--model-id"))
        o->model_id = cli_value(argc, argv, i);
    else if (!strcmp(a, "--max-body"))
        so->body_max_bytes =
            (size_t)cli_parse_int(a, cli_value(argc, argv, i), 1024, SERVER_BODY_MAX_MAX);
    else if (!strcmp(a, "--max-messages"))
        so->messages_max =
            (int)cli_parse_int(a, cli_value(argc, argv, i), 1, SERVER_MESSAGES_MAX_MAX);
    else if (!strcmp(a, "--timeout"))
        so->timeout_s = (int)cli_parse_int(a, cli_value(argc, argv, i), 1, 86400);
    else if (!strcmp(a, "--shutdown-grace"))
        so->shutdown_grace_s = cli_parse_float(a, cli_value(argc, argv, i), 0, 86400);
    else
        return false;
    return true;
}

static void parse_serve(int argc, char **argv, struct serve_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->so.port = SERVER_PORT_DEFAULT;
    o->so.queue_max = SERVER_QUEUE_DEFAULT;
    o->so.shutdown_grace_s = 10;
    o->n_parallel = 4;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf(serve_help, cli_model_opts_help);
            exit(0);
        }
        if (cli_model_opt(argc, argv, &i, &o->mo) || serve_opt(argc, argv, &i, o)) continue;
        cli_die(0, "unknown option '%s' (see tutti serve --help)", a);
    }
    if (!o->mo.model_path) cli_die(0, "no model given (-m FILE)");
    if (!o->so.api_key) o->so.api_key = getenv("TUTTI_API_KEY");
    if (o->model_id && (!o->model_id[0] || strlen(o->model_id) > SERVER_MODEL_ID_MAX))
        cli_die(0, "--model-id must have 1 to %d bytes", SERVER_MODEL_ID_MAX);
    o->mo.engine.n_seq = o->n_parallel;
}

/* The chat template: --chat-template, else the model's, else chatml. */
static const char *pick_template(const struct serve_opts *o, const struct model *m)
{
    const char *name = o->chat_template;
    if (!name && tok_chat_template_detect(&m->file, &name)) {
        tt_warn("serve: %s; using chatml for chat requests", tt_error_detail());
        name = "chatml";
    }
    struct tok_chat_msg probe = {"user", "hi"};
    if (tok_chat_render(name, &probe, 1, true, NULL, 0) < 0) return NULL;
    return name;
}

/* Rank 0: wait for SIGINT/SIGTERM (or a failed engine). */
static int wait_for_signal(struct server *srv, const sigset_t *set)
{
    for (;;) {
        struct timespec ts = {0, 250 * 1000000L};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "tutti: %s received, shutting down\n",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
            return 0;
        }
        if (server_failed(srv)) return 1;
    }
}

static int serve_leader(struct serve_opts *o, struct model *m, struct engine *e,
                        const sigset_t *set)
{
    struct tok_vocab *v;
    int err = tok_load(&v, &m->file);
    if (err) {
        engine_stop_workers(e);
        cli_die(err, "cannot load the tokenizer of '%s'", o->mo.model_path);
    }
    const char *base = strrchr(o->mo.model_path, '/');
    o->so.model_id = o->model_id ? o->model_id : base ? base + 1 : o->mo.model_path;
    o->so.chat_template = pick_template(o, m);
    o->so.comm = cli_comm();
    o->so.n_batch = o->mo.engine.n_batch;
    struct server *srv = NULL;
    if (!o->so.chat_template)
        err = TT_EINVAL;
    else
        err = server_start(&srv, e, v, &o->so);
    if (err) {
        engine_stop_workers(e);
        cli_die(err, "%s", o->so.chat_template ? "cannot start the server" : "--chat-template");
    }
    fprintf(stderr,
            "tutti: serving '%s' on http://%s:%d/v1 (%d sequences x %d tokens, %d rank%s, "
            "chat template %s, pid %d)\n",
            o->so.model_id, o->so.host ? o->so.host : "127.0.0.1", server_port(srv),
            engine_n_seq(e), engine_n_ctx(e), engine_n_ranks(e), engine_n_ranks(e) > 1 ? "s" : "",
            o->so.chat_template, (int)getpid());
    int rc = wait_for_signal(srv, set);
    server_free(srv);
    engine_stop_workers(e);
    tok_free(v);
    if (rc) fprintf(stderr, "tutti: error: the engine failed; the server stopped\n");
    return rc;
}

int cmd_serve(int argc, char **argv)
{
    struct serve_opts o;
    parse_serve(argc, argv, &o);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread starts */
    signal(SIGPIPE, SIG_IGN);
    struct model m;
    cli_load_model_opts(&o.mo, &m);
    struct engine *e;
    int err = engine_create(&e, &m, &o.mo.engine);
    if (err) cli_die(err, "cannot set up the engine");
    int rc = 0;
    if (comm_rank(cli_comm()) == 0) {
        rc = serve_leader(&o, &m, e, &set);
    } else if ((err = engine_worker_run(e))) {
        cli_die(err, "rank %d stopped", comm_rank(cli_comm()));
    }
    engine_destroy(e);
    model_free(&m);
    free(o.mo.plan);
    return rc;
}
