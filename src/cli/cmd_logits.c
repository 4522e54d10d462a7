/*
 * cmd_logits.c: `tutti logits` (float32 logits of every position) and
 * `tutti tokenize` (token ids of a text).
 */
#include "cli.h"
#include "../tok/tok.h"

#include <stdlib.h>
#include <string.h>

static const char logits_help[] =
    "usage: tutti logits -m MODEL (--tokens 1,2,3 | -p TEXT) --out FILE [options]\n"
    "Evaluate the tokens in one sequence and write the logits of every position as\n"
    "raw little-endian float32, row-major [n_tokens][n_vocab].\n\n"
    "%s"
    "      --tokens IDS     comma-separated token ids\n"
    "  -p, --prompt TEXT    tokenize TEXT instead (BOS added as the model says)\n"
    "  -o, --out FILE       output file (required)\n";

int cmd_logits(int argc, char **argv)
{
    struct cli_model_opts mo = { 0 };
    const char *ids_arg = NULL, *prompt = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf(logits_help, cli_model_opts_help);
            return 0;
        }
        if (cli_model_opt(argc, argv, &i, &mo)) continue;
        if (!strcmp(a, "--tokens")) ids_arg = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) out_path = cli_value(argc, argv, &i);
        else cli_die(0, "unknown option '%s' (see tutti logits --help)", a);
    }
    if (!out_path) cli_die(0, "no output file given (--out FILE)");
    if (!ids_arg == !prompt) cli_die(0, "give exactly one of --tokens IDS or -p TEXT");
    struct model m;
    cli_load_model_opts(&mo, &m);
    int n = 0;
    int32_t *ids;
    if (ids_arg) {
        ids = malloc(sizeof(int32_t) * (strlen(ids_arg) / 2 + 1));
        if (!ids) cli_die(TT_ENOMEM, "parsing --tokens");
        n = cli_parse_ids("--tokens", ids_arg, ids, (int)(strlen(ids_arg) / 2 + 1));
    } else {
        struct tok_vocab *v;
        int err = tok_load(&v, &m.file);
        if (err) cli_die(err, "cannot load the tokenizer");
        ids = cli_tokenize(v, prompt, strlen(prompt), true, true, &n);
        tok_free(v);
    }
    if (mo.engine.n_ctx < n) mo.engine.n_ctx = TT_MAX(n, mo.engine.n_ctx);
    struct engine *e;
    int err = engine_create(&e, &m, &mo.engine);
    if (err) cli_die(err, "cannot set up the engine");
    if (engine_rank(e) != 0) { /* every rank computed the same ids; rank 0 drives */
        err = engine_worker_run(e);
        if (err) cli_die(err, "rank %d stopped", engine_rank(e));
        engine_destroy(e);
        model_free(&m);
        free(mo.plan);
        free(ids);
        return 0;
    }
    const size_t n_vocab = (size_t)m.hp.n_vocab;
    float *logits = malloc(sizeof(float) * n_vocab * (size_t)n);
    if (!logits) cli_die(TT_ENOMEM, "no memory for %d x %zu logits", n, n_vocab);
    if ((err = engine_eval(e, ids, n, ENGINE_LOGITS_ALL, logits))) cli_die(err, "evaluation failed");
    engine_stop_workers(e);
    FILE *fp = fopen(out_path, "wb");
    if (!fp) cli_die(0, "cannot create '%s'", out_path);
    size_t wrote = fwrite(logits, sizeof(float) * n_vocab, (size_t)n, fp);
    if (fclose(fp) != 0 || wrote != (size_t)n) cli_die(0, "writing '%s' failed", out_path);
    free(logits);
    free(ids);
    engine_destroy(e);
    model_free(&m);
    free(mo.plan);
    return 0;
}

static const char tokenize_help[] =
    "usage: tutti tokenize -m MODEL -p TEXT [--ids] [--no-bos] [--no-parse-special]\n"
    "Print the tokens of TEXT: one 'id<TAB>piece' line each, or with --ids the ids\n"
    "comma-separated on one line.\n\n"
    "  -m, --model FILE     GGUF model or vocabulary-only file\n"
    "  -p, --prompt TEXT    the text\n"
    "  -f, --file FILE      read the text from FILE\n"
    "      --ids            ids only, comma-separated\n"
    "      --no-bos         add no special tokens (BOS/EOS)\n"
    "      --no-parse-special  treat special-token text as plain text\n";

int cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL, *prompt = NULL, *file = NULL;
    bool ids_only = false, add_special = true, parse_special = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(tokenize_help, stdout);
            return 0;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) path = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = cli_value(argc, argv, &i);
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--ids")) ids_only = true;
        else if (!strcmp(a, "--no-bos")) add_special = false;
        else if (!strcmp(a, "--no-parse-special")) parse_special = false;
        else cli_die(0, "unknown option '%s' (see tutti tokenize --help)", a);
    }
    if (!path) cli_die(0, "no model given (-m FILE)");
    size_t len;
    char *text = cli_load_prompt(prompt, file, &len);
    /* Vocabulary-only files have no weights: read just the GGUF. */
    struct gguf_file f;
    int err = gguf_open(&f, path);
    if (err) cli_die(err, "cannot open '%s'", path);
    struct tok_vocab *v;
    if ((err = tok_load(&v, &f))) cli_die(err, "cannot load the tokenizer of '%s'", path);
    int n;
    int32_t *ids = cli_tokenize(v, text, len, add_special, parse_special, &n);
    char piece[512];
    for (int i = 0; i < n; i++) {
        if (ids_only) {
            printf("%s%d", i ? "," : "", ids[i]);
            continue;
        }
        int pl = tok_piece(v, ids[i], piece, sizeof(piece));
        printf("%6d\t", ids[i]);
        cli_json_str(stdout, piece, pl > 0 ? (size_t)pl : 0);
        printf("\n");
    }
    if (ids_only) printf("\n");
    free(ids);
    tok_free(v);
    gguf_close(&f);
    free(text);
    return 0;
}
