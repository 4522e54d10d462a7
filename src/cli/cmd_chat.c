/*
 * cmd_chat.c: `tutti chat`, an interactive multi-turn chat in the terminal.
 *
 * A turn: the user's line joins the conversation (a list of messages); the
 * whole conversation is rendered with the chat template and tokenized, and
 * only the tokens after the longest common prefix with what the KV cache
 * already holds are evaluated. The answer then streams through the streaming
 * detokenizer (never half a UTF-8 character) until an end-of-generation
 * token, -n tokens, a full context or Ctrl-C, and its text joins the
 * conversation as an assistant message. The next turn's rendering therefore
 * starts with the tokens already cached and costs only its new ones; where
 * the answer's text re-tokenizes differently from how it was generated, the
 * cache is cut back to the first difference and the rest evaluated again, so
 * the result is always exactly that of evaluating the rendered conversation.
 *
 * Invariants (rank 0):
 *   1. cache[0..n_cache) are the tokens in the engine's KV cache, in order:
 *      n_cache == engine_n_past(e) between engine calls.
 *   2. msgs[] is the conversation: an optional system message, then user and
 *      assistant messages alternating; between turns it ends with an
 *      assistant message (a partial one when the answer was stopped).
 *   3. Nothing is allocated per token: the token arrays (n_ctx each) and the
 *      detokenizer buffer are sized once; the answer buffer only grows.
 *
 * Chat format: the family of the model's tokenizer.chat_template, or
 * --chat-template NAME. A model without a template (a base model such as
 * stories260K) gets the "plain" format, with a warning: the system text on
 * its own line, then the messages concatenated, each user message after an
 * answer starting a new line, and no generation prompt, so the model simply
 * continues the text. A template that tok does not recognise falls back to
 * chatml, with a warning.
 *
 * Input: libedit's readline() (line editing, history) when stdin is a
 * terminal; plain lines otherwise, so scripts and tests can pipe a chat in.
 *
 * Ctrl-C: the SIGINT handler (sigaction, SA_RESTART) only counts presses in
 * a volatile sig_atomic_t. Generation polls the count before every token
 * and between prompt batches: one press stops the answer and returns to the
 * prompt, two quit. At the prompt, libedit's own handler (installed for the
 * duration of readline) calls ours and makes readline() return NULL; a press
 * seen there, or between two answers, quits with status 0.
 *
 * Cluster: ranks other than 0 only follow rank 0's steps in
 * engine_worker_run(); rank 0 owns the terminal.
 */
#include "cli.h"
#include "../tok/tok.h"

#include <editline/readline.h>
#include <langinfo.h>
#include <locale.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHAT_PLAIN "plain"      /* the format for models without a template */
#define CHAT_FALLBACK "chatml"  /* for templates that tok does not recognise */
#define CHAT_LINE_MAX (1 << 20) /* bytes in one input line */
#define CHAT_HISTORY_MAX 1000   /* lines kept for the up-arrow */

struct chat_opts {
    struct cli_model_opts mo;
    struct sampler_opts so;
    const char *system;
    const char *template_name; /* NULL: from the model */
    int n_predict;             /* most tokens per answer; -1: no limit */
    bool ignore_eos;
    bool stats;
};

/* Why an answer ended. */
enum chat_end { CHAT_END_DONE, CHAT_END_STOPPED, CHAT_END_FULL, CHAT_END_COUNT };

struct chat {
    struct chat_opts o;
    struct engine *e;
    const struct tok_vocab *v;
    const char *tmpl;          /* a tok template name, or CHAT_PLAIN */
    struct sampler s;
    struct tok_chat_msg *msgs; /* [n_msgs]; roles static, contents malloc'd and owned */
    int n_msgs, cap_msgs;
    int32_t *cache;            /* [n_ctx] the tokens in the KV cache */
    int n_cache;
    int32_t *prompt;           /* [n_ctx] the rendered conversation's tokens */
    char *piece;               /* [piece_cap] detokenizer output */
    int piece_cap;
    char *answer;              /* [answer_cap] the answer so far, NUL-terminated */
    size_t answer_len, answer_cap;
    enum chat_end end;
    bool interactive;          /* stdin is a terminal: readline() */
    bool quit;
};

/* One turn's figures, for --stats. */
struct chat_stats {
    int n_reused, n_evaluated; /* prompt tokens taken from the cache / evaluated */
    int n_answer, n_decoded;   /* answer tokens / of them, evaluated one by one */
    double prefill_s, decode_s;
};

/* Ctrl-C presses not yet acted on (0, 1, 2). Written by the handler only,
 * read and cleared by the chat loop. */
static volatile sig_atomic_t chat_sigint;

static void chat_on_sigint(int sig)
{
    (void)sig;
    chat_sigint = chat_sigint < 2 ? chat_sigint + 1 : 2;
}

static const char chat_help[] =
    "usage: tutti chat -m MODEL [options]\n"
    "Chat with a model in the terminal: type a message, the answer streams back. The\n"
    "conversation (and its KV cache) is kept between turns, so each turn costs only its\n"
    "new tokens. Reads plain lines when stdin is not a terminal.\n\n"
    "%s"
    "  -s, --system TEXT    system prompt\n"
    "      --chat-template NAME  chat format: %s, " CHAT_PLAIN "\n"
    "                       (default: the model's; " CHAT_PLAIN " if it has none: the\n"
    "                       conversation as one text that the model continues)\n"
    "  -n, --n-predict N    most tokens per answer (default -1: until the model ends its\n"
    "                       turn or the context is full)\n"
    "%s"
    "      --ignore-eos     do not stop at end-of-generation tokens\n"
    "      --stats          after each answer, print prompt and answer tokens/s to stderr\n\n"
    "In the chat: /help, /reset (forget the conversation), /quit (or Ctrl-D).\n"
    "Ctrl-C stops an answer; at the prompt, or twice in a row, it quits.\n";

static const char chat_commands_help[] =
    "  /help    this list\n"
    "  /reset   forget the conversation (the system prompt stays) and clear the KV cache\n"
    "  /quit    leave (also /exit, Ctrl-D, or Ctrl-C at the prompt)\n"
    "Ctrl-C while an answer streams stops it; the partial answer stays in the conversation.\n";

/* Die unless name is a template tok renders, or CHAT_PLAIN. */
static void chat_template_check(const char *name)
{
    if (!strcmp(name, CHAT_PLAIN) || tok_chat_render(name, NULL, 0, false, NULL, 0) >= 0) return;
    cli_die(0, "unknown chat template '%s' (known: %s, %s)", name, tok_chat_template_names(),
            CHAT_PLAIN);
}

static void parse_chat(int argc, char **argv, struct chat_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->n_predict = -1;
    sampler_opts_default(&o->so);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf(chat_help, cli_model_opts_help, tok_chat_template_names(),
                   cli_sampler_opts_help);
            exit(0);
        }
        if (cli_model_opt(argc, argv, &i, &o->mo) || cli_sampler_opt(argc, argv, &i, &o->so))
            continue;
        if (!strcmp(a, "-s") || !strcmp(a, "--system")) o->system = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--chat-template")) o->template_name = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict"))
            o->n_predict = (int)cli_parse_int(a, cli_value(argc, argv, &i), -1, 1 << 24);
        else if (!strcmp(a, "--ignore-eos")) o->ignore_eos = true;
        else if (!strcmp(a, "--stats")) o->stats = true;
        else cli_die(0, "unknown option '%s' (see tutti chat --help)", a);
    }
    if (o->n_predict == 0) cli_die(0, "-n must be at least 1, or -1 for no limit");
    if (o->template_name) chat_template_check(o->template_name);
}

/* The format to use: the option, else the model's template family, else a
 * fallback with a warning. */
static const char *chat_template_pick(const struct chat_opts *o, const struct gguf_file *f)
{
    if (o->template_name) return o->template_name;
    const char *name;
    int err = tok_chat_template_detect(f, &name);
    if (!err) return name;
    if (err == TT_ENOTFOUND) {
        fprintf(stderr, "tutti: warning: the model has no chat template; using the %s format (the "
                "conversation as one text that the model continues); --chat-template NAME picks "
                "another\n", CHAT_PLAIN);
        return CHAT_PLAIN;
    }
    fprintf(stderr, "tutti: warning: %s; using %s\n", tt_error_detail(), CHAT_FALLBACK);
    return CHAT_FALLBACK;
}

/* ---- the conversation ---- */

static void chat_push(struct chat *c, const char *role, const char *text, size_t len)
{
    if (c->n_msgs == c->cap_msgs) {
        int cap = c->cap_msgs ? 2 * c->cap_msgs : 16;
        struct tok_chat_msg *m = realloc(c->msgs, sizeof(*m) * (size_t)cap);
        if (!m) cli_die(TT_ENOMEM, "growing the conversation");
        c->msgs = m;
        c->cap_msgs = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) cli_die(TT_ENOMEM, "storing a message");
    memcpy(copy, text, len);
    copy[len] = 0;
    c->msgs[c->n_msgs++] = (struct tok_chat_msg){ .role = role, .content = copy };
}

static void chat_pop(struct chat *c) { free((char *)c->msgs[--c->n_msgs].content); }

/* The plain format (see the top of the file); malloc'd, NULL when out of memory. */
static char *chat_render_plain(const struct tok_chat_msg *m, int n)
{
    size_t len = 1;
    for (int i = 0; i < n; i++) len += strlen(m[i].content) + 1;
    char *out = malloc(len), *p = out;
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        if (i > 0 && !strcmp(m[i].role, "user") && !strcmp(m[i - 1].role, "assistant")) *p++ = '\n';
        size_t l = strlen(m[i].content);
        memcpy(p, m[i].content, l);
        p += l;
        if (!strcmp(m[i].role, "system")) *p++ = '\n';
    }
    *p = 0;
    return out;
}

/* Render the conversation with the generation prompt and tokenize it into
 * c->prompt (BOS as the vocabulary wants, never EOS). Returns the count,
 * TT_ERANGE when it would leave no room in the context for an answer, or
 * another error. */
static int chat_tokenize(struct chat *c)
{
    char *text = NULL;
    if (!strcmp(c->tmpl, CHAT_PLAIN)) {
        if (!(text = chat_render_plain(c->msgs, c->n_msgs))) return TT_ENOMEM;
    } else {
        int rc = tok_chat_render_alloc(c->tmpl, c->msgs, c->n_msgs, true, &text);
        if (rc < 0) return rc;
    }
    const int32_t bos = tok_add_bos(c->v) ? tok_bos(c->v) : -1;
    const int first = bos >= 0, max = engine_n_ctx(c->e) - 1 - first;
    const size_t len = strlen(text);
    int n = max < 1 || len > TOK_INPUT_MAX ? TT_ERANGE
          : tok_encode(c->v, text, len, false, true, c->prompt + first, max);
    free(text);
    if (n < 0) return n;
    if (first) c->prompt[0] = bos;
    return n + first;
}

/* ---- one turn ---- */

/* Evaluate c->prompt[0..n) on top of the cache: keep the longest common
 * prefix (at most n - 1 tokens, since the last one must be evaluated to get
 * its logits), evaluate the rest in batches, checking for Ctrl-C between
 * them, and sample the answer's first token into *next. Returns 0, 1 if
 * stopped by Ctrl-C, or an engine error. */
static int chat_prefill(struct chat *c, int n, int32_t *next, struct chat_stats *st)
{
    const int n_batch = c->o.mo.engine.n_batch > 0 ? c->o.mo.engine.n_batch : ENGINE_BATCH_DEFAULT;
    int keep = 0;
    while (keep < c->n_cache && keep < n - 1 && c->cache[keep] == c->prompt[keep]) keep++;
    engine_truncate(c->e, keep);
    c->n_cache = keep;
    st->n_reused = keep;
    for (int i = keep; i < n; i++) sampler_accept(&c->s, c->prompt[i]);
    const double t0 = tt_now_s();
    int err = 0;
    while (c->n_cache < n && !err) {
        if (chat_sigint) return 1;
        const int32_t *toks = c->prompt + c->n_cache;
        const int nb = TT_MIN(n_batch, n - c->n_cache);
        err = c->n_cache + nb < n ? engine_eval(c->e, toks, nb, ENGINE_LOGITS_NONE, NULL)
                                  : engine_eval_sample(c->e, toks, nb, &c->s, next);
        if (err) break;
        memcpy(c->cache + c->n_cache, toks, sizeof(*toks) * (size_t)nb);
        c->n_cache += nb;
        st->n_evaluated += nb;
    }
    st->prefill_s = tt_now_s() - t0;
    return err;
}

/* Print n bytes of detokenized text (n < 0: an error) and add them to the answer. */
static void chat_emit(struct chat *c, int n)
{
    if (n < 0) cli_die(n, "cannot detokenize the answer");
    if (n == 0) return;
    if (c->answer_len + (size_t)n + 1 > c->answer_cap) {
        size_t cap = 2 * (c->answer_len + (size_t)n + 1);
        char *a = realloc(c->answer, cap);
        if (!a) cli_die(TT_ENOMEM, "collecting the answer");
        c->answer = a;
        c->answer_cap = cap;
    }
    memcpy(c->answer + c->answer_len, c->piece, (size_t)n);
    c->answer_len += (size_t)n;
    c->answer[c->answer_len] = 0;
    fwrite(c->piece, 1, (size_t)n, stdout);
    fflush(stdout);
}

/* A Ctrl-C stopped the answer: twice quits the chat. */
static void chat_stopped(struct chat *c)
{
    c->end = CHAT_END_STOPPED;
    if (chat_sigint >= 2) c->quit = true;
    chat_sigint = 0;
}

/* Stream the answer that starts with the sampled token `id` to stdout and
 * c->answer. Returns 0 or an engine error. */
static int chat_generate(struct chat *c, int32_t id, struct chat_stats *st)
{
    struct tok_stream ts = { 0 };
    const int n_ctx = engine_n_ctx(c->e);
    const double t0 = tt_now_s();
    int err = 0;
    for (;;) {
        sampler_accept(&c->s, id);
        const bool eog = !c->o.ignore_eos && tok_is_eog(c->v, id);
        if (eog) break;
        chat_emit(c, tok_stream_push(c->v, &ts, id, c->piece, c->piece_cap));
        if (++st->n_answer == c->o.n_predict) break;
        if (chat_sigint) {
            chat_stopped(c);
            break;
        }
        if (c->n_cache == n_ctx) {
            c->end = CHAT_END_FULL;
            break;
        }
        c->cache[c->n_cache] = id;
        if ((err = engine_eval_sample(c->e, &id, 1, &c->s, &id))) break;
        c->n_cache++;
        st->n_decoded++;
    }
    st->decode_s = tt_now_s() - t0;
    chat_emit(c, tok_stream_flush(&ts, c->piece, c->piece_cap));
    return err;
}

static void chat_context_full(const struct chat *c)
{
    fprintf(stderr, "tutti: the context is full (%d tokens): type /reset to start a new "
            "conversation (or restart with a larger --ctx)\n", engine_n_ctx(c->e));
}

static void chat_print_stats(const struct chat_stats *st)
{
    const double prefill_tok_s = st->prefill_s > 0 ? st->n_evaluated / st->prefill_s : 0.0;
    const double decode_tok_s = st->decode_s > 0 ? st->n_decoded / st->decode_s : 0.0;
    fprintf(stderr, "tutti: prompt %d tokens (%d new, %d from the cache), %.1f tok/s, first token "
            "after %.1f ms; answer %d tokens, %.1f tok/s\n", st->n_reused + st->n_evaluated,
            st->n_evaluated, st->n_reused, prefill_tok_s, st->prefill_s * 1e3, st->n_answer,
            decode_tok_s);
}

/* Answer one user message. */
static void chat_turn(struct chat *c, const char *line)
{
    chat_push(c, "user", line, strlen(line));
    int n = c->n_msgs + 1 < TOK_CHAT_MSGS_MAX ? chat_tokenize(c) : TT_ERANGE;
    if (n == TT_ERANGE || n == 0) {
        chat_pop(c);
        if (n == TT_ERANGE) chat_context_full(c);
        return;
    }
    if (n < 0) cli_die(n, "cannot prepare the conversation");
    struct chat_stats st = { 0 };
    int32_t id;
    c->answer_len = 0;
    c->end = CHAT_END_DONE;
    int err = chat_prefill(c, n, &id, &st);
    if (err == 1) chat_stopped(c);
    else if (!err) err = chat_generate(c, id, &st);
    if (err < 0) cli_die(err, "generation failed");
    chat_push(c, "assistant", c->answer ? c->answer : "", c->answer_len);
    if (c->answer_len == 0 || c->answer[c->answer_len - 1] != '\n') putchar('\n');
    fflush(stdout);
    if (c->end == CHAT_END_STOPPED) fprintf(stderr, "tutti: (answer stopped)\n");
    if (c->end == CHAT_END_FULL) chat_context_full(c);
    if (c->o.stats) chat_print_stats(&st);
}

/* ---- the session ---- */

/* Forget the conversation but the system prompt; clear the cache and the
 * sampler (so a reset chat answers as a new one would). */
static void chat_reset(struct chat *c)
{
    while (c->n_msgs > (c->o.system ? 1 : 0)) chat_pop(c);
    engine_truncate(c->e, 0);
    c->n_cache = 0;
    sampler_free(&c->s);
    int err = sampler_init(&c->s, &c->o.so, engine_model(c->e)->hp.n_vocab);
    if (err) cli_die(err, "cannot set up the sampler");
}

/* Handle a line that starts with '/'. */
static void chat_command(struct chat *c, const char *line)
{
    if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) c->quit = true;
    else if (!strcmp(line, "/help")) fputs(chat_commands_help, stdout);
    else if (!strcmp(line, "/reset")) {
        chat_reset(c);
        fprintf(stderr, "tutti: conversation cleared\n");
    } else fprintf(stderr, "tutti: unknown command '%s'; /help lists the commands\n", line);
}

/* The next input line (malloc'd), or NULL at end of input or on Ctrl-C at
 * the prompt. */
static char *chat_read_line(const struct chat *c)
{
    if (c->interactive) {
        char *line = readline("> ");
        if (line && line[0]) add_history(line);
        return line;
    }
    char *line = NULL;
    size_t cap = 0;
    if (getline(&line, &cap, stdin) >= 0) return line;
    free(line);
    return NULL;
}

static bool chat_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* s without leading and trailing whitespace (in place). */
static char *chat_trim(char *s)
{
    while (chat_space(*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && chat_space(s[n - 1])) n--;
    s[n] = 0;
    return s;
}

static void chat_loop(struct chat *c)
{
    while (!c->quit && !chat_sigint) {
        char *line = chat_read_line(c);
        if (!line || chat_sigint) { /* end of input, or Ctrl-C at the prompt */
            if (c->interactive) putchar('\n');
            free(line);
            break;
        }
        char *text = chat_trim(line);
        if (strlen(text) > CHAT_LINE_MAX)
            fprintf(stderr, "tutti: line too long (at most %d bytes); ignored\n", CHAT_LINE_MAX);
        else if (text[0] == '/') chat_command(c, text);
        else if (text[0]) chat_turn(c, text);
        free(line);
    }
}

/* libedit decodes multibyte input by LC_CTYPE; the models speak UTF-8. */
static void chat_terminal_init(void)
{
    if (!setlocale(LC_CTYPE, "") || strcmp(nl_langinfo(CODESET), "UTF-8"))
        setlocale(LC_CTYPE, "C.UTF-8");
    rl_readline_name = "tutti"; /* for "tutti:" lines in ~/.editrc */
    stifle_history(CHAT_HISTORY_MAX);
}

/* Buffers, sampler, system prompt, input mode. */
static void chat_init(struct chat *c)
{
    const size_t n_ctx = (size_t)engine_n_ctx(c->e);
    c->cache = malloc(sizeof(int32_t) * n_ctx);
    c->prompt = malloc(sizeof(int32_t) * n_ctx);
    c->piece_cap = 4 + tok_piece_max(c->v);
    c->piece = malloc((size_t)c->piece_cap);
    if (!c->cache || !c->prompt || !c->piece) cli_die(TT_ENOMEM, "allocating the chat buffers");
    int err = sampler_init(&c->s, &c->o.so, engine_model(c->e)->hp.n_vocab);
    if (err) cli_die(err, "cannot set up the sampler");
    if (c->o.system) chat_push(c, "system", c->o.system, strlen(c->o.system));
    c->interactive = isatty(STDIN_FILENO);
    if (c->interactive) {
        chat_terminal_init();
        fprintf(stderr, "tutti chat: %s, %s format, %d-token context. /help lists the commands; "
                "Ctrl-C stops an answer; Ctrl-C or Ctrl-D at the prompt quits.\n",
                c->o.mo.model_path, c->tmpl, engine_n_ctx(c->e));
    }
}

static void chat_free(struct chat *c)
{
    while (c->n_msgs > 0) chat_pop(c);
    free(c->msgs);
    sampler_free(&c->s);
    free(c->answer);
    free(c->piece);
    free(c->prompt);
    free(c->cache);
}

/* Rank 0: the conversation, with Ctrl-C caught for its duration. */
static void chat_run(struct chat *c)
{
    struct sigaction sa = { .sa_handler = chat_on_sigint, .sa_flags = SA_RESTART }, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    chat_init(c);
    chat_loop(c);
    sigaction(SIGINT, &old, NULL);
    chat_free(c);
}

int cmd_chat(int argc, char **argv)
{
    struct chat c = { 0 };
    parse_chat(argc, argv, &c.o);
    struct model m;
    cli_load_model_opts(&c.o.mo, &m);
    int err = engine_create(&c.e, &m, &c.o.mo.engine);
    if (err) cli_die(err, "cannot set up the engine");
    if (engine_rank(c.e) != 0) {
        err = engine_worker_run(c.e);
        engine_destroy(c.e);
        model_free(&m);
        free(c.o.mo.plan);
        if (err) cli_die(err, "rank %d stopped", comm_rank(cli_comm()));
        return 0;
    }
    struct tok_vocab *v;
    if ((err = tok_load(&v, &m.file)))
        cli_die(err, "cannot load the tokenizer of '%s'", c.o.mo.model_path);
    c.v = v;
    c.tmpl = chat_template_pick(&c.o, &m.file);
    chat_run(&c);
    engine_stop_workers(c.e);
    engine_destroy(c.e);
    tok_free(v);
    model_free(&m);
    free(c.o.mo.plan);
    return 0;
}
