/*
 * cmd_run.c: `tutti run` (generate), `tutti logits` and `tutti tokenize`.
 *
 * run: tokenize the prompt (BOS and special-token text as the model's
 * metadata says), evaluate it in batches, then sample and evaluate one token
 * at a time, streaming text that never splits a UTF-8 character. Timings:
 * TTFT = from the start of prompt evaluation to the first sampled token;
 * prefill tok/s = prompt tokens / prompt evaluation time; decode tok/s =
 * tokens evaluated after the first / their time.
 */
#include "cli.h"
#include "../tok/tok.h"

#include <stdlib.h>
#include <string.h>

struct run_opts {
    struct cli_model_opts mo;
    const char *prompt;
    const char *prompt_file;
    int n_predict;
    bool ignore_eos;
    bool json;
    bool no_bos;
    struct sampler_opts so;
};

static const char run_help[] =
    "usage: tutti run -m MODEL -p TEXT [options]\n"
    "Generate text from a prompt; streams it to stdout, timings to stderr.\n\n"
    "%s"
    "  -p, --prompt TEXT    the prompt\n"
    "  -f, --file FILE      read the prompt from FILE\n"
    "  -n, --n-predict N    tokens to generate (default 128)\n"
    "%s"
    "      --ignore-eos     do not stop at end-of-sequence; generate exactly N tokens\n"
    "      --no-bos         do not add the beginning-of-sequence token\n"
    "      --json           print one JSON object with tokens, text and timings\n";

static void parse_run(int argc, char **argv, struct run_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->n_predict = 128;
    sampler_opts_default(&o->so);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf(run_help, cli_model_opts_help, cli_sampler_opts_help);
            exit(0);
        }
        if (cli_model_opt(argc, argv, &i, &o->mo) || cli_sampler_opt(argc, argv, &i, &o->so)) continue;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) o->prompt_file = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict"))
            o->n_predict = (int)cli_parse_int(a, cli_value(argc, argv, &i), 0, 1 << 24);
        else if (!strcmp(a, "--ignore-eos")) o->ignore_eos = true;
        else if (!strcmp(a, "--no-bos")) o->no_bos = true;
        else if (!strcmp(a, "--json")) o->json = true;
        else cli_die(0, "unknown option '%s' (see tutti run --help)", a);
    }
}

struct gen_result {
    int32_t *tokens;
    int n_tokens;
    char *text;
    size_t text_len, text_cap;
    double ttft_ms, prefill_s, decode_s;
    int n_decoded; /* tokens evaluated after the first sampled one */
};

static void append_text(struct gen_result *r, const char *s, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        r->text_cap = (r->text_len + n + 1) * 2;
        r->text = realloc(r->text, r->text_cap);
        if (!r->text) cli_die(TT_ENOMEM, "collecting output");
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
}

/* Evaluate the prompt and generate up to o->n_predict tokens (rank 0; the
 * other ranks follow in engine_worker_run). */
static void generate(struct engine *e, const struct tok_vocab *v, const struct run_opts *o,
                     const int32_t *prompt, int n_prompt, struct gen_result *r)
{
    const int n_vocab = engine_model(e)->hp.n_vocab;
    struct sampler s;
    int err = sampler_init(&s, &o->so, n_vocab);
    r->tokens = malloc(sizeof(int32_t) * (size_t)(o->n_predict + 1));
    if (err || !r->tokens) cli_die(err ? err : TT_ENOMEM, "setting up the sampler");
    for (int i = 0; i < n_prompt; i++) sampler_accept(&s, prompt[i]);
    struct tok_stream ts = { 0 };
    char piece[256];
    int32_t id;
    double t0 = tt_now_s();
    if ((err = engine_eval_sample(e, prompt, n_prompt, &s, &id))) cli_die(err, "evaluating the prompt");
    r->prefill_s = tt_now_s() - t0;
    r->ttft_ms = r->prefill_s * 1e3;
    double t_dec = tt_now_s();
    for (int i = 0; i < o->n_predict; i++) {
        sampler_accept(&s, id);
        r->tokens[r->n_tokens++] = id;
        int n = tok_piece(v, id, piece, sizeof(piece));
        if (n > 0) append_text(r, piece, (size_t)n);
        n = tok_stream_push(v, &ts, id, piece, sizeof(piece));
        if (!o->json && n > 0) {
            fwrite(piece, 1, (size_t)n, stdout);
            fflush(stdout);
        }
        if ((!o->ignore_eos && tok_is_eog(v, id)) || i + 1 == o->n_predict) break;
        if ((err = engine_eval_sample(e, &id, 1, &s, &id))) cli_die(err, "generating token %d", i + 1);
        r->n_decoded++;
    }
    r->decode_s = r->n_decoded ? tt_now_s() - t_dec : 0;
    int n = tok_stream_flush(&ts, piece, sizeof(piece));
    if (!o->json && n > 0) fwrite(piece, 1, (size_t)n, stdout);
    sampler_free(&s);
}

static void print_json(const struct gen_result *r, int n_prompt, int n_ranks, const uint64_t *rss)
{
    printf("{\"tokens\":[");
    for (int i = 0; i < r->n_tokens; i++) printf("%s%d", i ? "," : "", r->tokens[i]);
    printf("],\"text\":");
    cli_json_str(stdout, r->text ? r->text : "", r->text_len);
    printf(",\"prompt_tokens\":%d,\"generated_tokens\":%d,\"ttft_ms\":%.3f,\"prefill_tok_s\":%.3f,"
           "\"decode_tok_s\":%.3f,\"ranks\":%d,\"rss_peak_mib\":[",
           n_prompt, r->n_tokens, r->ttft_ms, r->prefill_s > 0 ? n_prompt / r->prefill_s : 0.0,
           r->decode_s > 0 ? r->n_decoded / r->decode_s : 0.0, n_ranks);
    for (int i = 0; i < n_ranks; i++) printf("%s%.1f", i ? "," : "", (double)rss[i] / 1048576.0);
    printf("]}\n");
}

int cmd_run(int argc, char **argv)
{
    struct run_opts o;
    parse_run(argc, argv, &o);
    const bool leader = comm_rank(cli_comm()) == 0;
    size_t len = 0;
    char *text = leader ? cli_load_prompt(o.prompt, o.prompt_file, &len) : NULL;
    struct model m;
    cli_load_model_opts(&o.mo, &m);
    struct engine *e;
    int err = engine_create(&e, &m, &o.mo.engine);
    if (err) cli_die(err, "cannot set up the engine");
    if (!leader) {
        err = engine_worker_run(e);
        if (err) cli_die(err, "rank %d stopped", comm_rank(cli_comm()));
        uint64_t rss = tt_peak_rss_bytes();
        comm_gather(cli_comm(), &rss, sizeof(rss), NULL, 0);
        engine_destroy(e);
        model_free(&m);
        free(o.mo.plan);
        return 0;
    }
    struct tok_vocab *v;
    if ((err = tok_load(&v, &m.file))) cli_die(err, "cannot load the tokenizer of '%s'", o.mo.model_path);
    int n_prompt;
    int32_t *prompt = cli_tokenize(v, text, len, !o.no_bos, true, &n_prompt);
    if (n_prompt == 0) cli_die(0, "the prompt is empty after tokenization");
    if (n_prompt + o.n_predict > engine_n_ctx(e))
        cli_die(0, "the prompt (%d tokens) plus -n %d exceed the context size %d; raise --ctx",
                n_prompt, o.n_predict, engine_n_ctx(e));
    struct gen_result r = { 0 };
    generate(e, v, &o, prompt, n_prompt, &r);
    engine_stop_workers(e);
    const int n_ranks = engine_n_ranks(e);
    uint64_t *rss = calloc((size_t)n_ranks, sizeof(uint64_t));
    if (!rss) cli_die(TT_ENOMEM, "collecting memory figures");
    const uint64_t my_rss = tt_peak_rss_bytes();
    rss[0] = my_rss;
    if (n_ranks > 1 && (err = comm_gather(cli_comm(), &my_rss, sizeof(uint64_t), rss, 0)))
        cli_die(err, "collecting memory figures");
    if (o.json) {
        print_json(&r, n_prompt, n_ranks, rss);
    } else {
        printf("\n");
        fflush(stdout);
        fprintf(stderr, "tutti: %d rank%s, prompt %d tokens, TTFT %.1f ms, prefill %.1f tok/s, "
                "decode %.2f tok/s (%d tokens)\n", engine_n_ranks(e), engine_n_ranks(e) > 1 ? "s" : "",
                n_prompt, r.ttft_ms, r.prefill_s > 0 ? n_prompt / r.prefill_s : 0.0,
                r.decode_s > 0 ? r.n_decoded / r.decode_s : 0.0, r.n_tokens);
    }
    free(rss);
    free(r.tokens);
    free(r.text);
    engine_destroy(e);
    free(prompt);
    tok_free(v);
    model_free(&m);
    free(o.mo.plan);
    free(text);
    return 0;
}
