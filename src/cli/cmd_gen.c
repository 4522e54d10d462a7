/*
 * cmd_gen.c: `tutti gen`, a random-weight model of any supported
 * architecture, shape and type, written by tutti's own quantizers.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char gen_help[] =
    "usage: tutti gen --arch A --n-embd N --n-layer N --n-head N [options] -o FILE\n"
    "Write a model with random weights (for benchmarks and tests).\n\n"
    "  --arch A           llama, qwen2, qwen3, qwen2moe, qwen3moe (default llama)\n"
    "  --n-embd N         hidden size (default 256)\n"
    "  --n-layer N        layers (default 2)\n"
    "  --n-head N         query heads (default 8)\n"
    "  --n-head-kv N      key/value heads (default: n-head)\n"
    "  --head-dim N       size of one head (default n-embd / n-head)\n"
    "  --n-ff N           feed-forward width (default 4 x n-embd... rounded; see below)\n"
    "  --vocab N          vocabulary size, >= 260 (default 512)\n"
    "  --ctx N            training context length written to the file (default 4096)\n"
    "  --rope-base F      rope frequency base (default 10000 llama, 1000000 qwen)\n"
    "  --n-expert N       experts per layer (MoE)\n"
    "  --n-expert-used N  experts used per token (default 2)\n"
    "  --n-ff-exp N       expert width (default n-ff)\n"
    "  --n-ff-shexp N     shared expert width (qwen2moe; default 0 = none)\n"
    "  --router-skew S    make the first eighth of the experts hot (e.g. 0.3; default 0)\n"
    "  --type T           f32, f16, bf16, q4_0, q8_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m (default q4_k_m)\n"
    "  --tied             no output matrix: reuse the token embeddings\n"
    "  --vocab-from FILE  copy the tokenizer from another GGUF file\n"
    "  --seed N           random seed (default 1)\n"
    "  -t, --threads N    worker threads (default: all cores)\n"
    "  -o, --out FILE     output file (required)\n";

/* gen's own shape options beyond the shared ones. */
static bool gen_shape_opt(const char *a, const char *v, struct model_hparams *hp)
{
    if (cli_shape_opt(a, v, hp)) return true;
    if (!strcmp(a, "--ctx")) hp->n_ctx_train = (int32_t)cli_parse_int(a, v, 1, 1 << 24);
    else if (!strcmp(a, "--rope-base")) hp->rope_base = (float)cli_parse_float(a, v, 1, 1e12);
    else return false;
    return true;
}

static void gen_progress(void *ctx, double done, double total)
{
    cli_progress_update(ctx, done, total);
}

int cmd_gen(int argc, char **argv)
{
    struct model_gen_opts o = { .seed = 1 };
    struct model_hparams *hp = &o.hp;
    *hp = (struct model_hparams){ .n_embd = 256, .n_layer = 2, .n_head = 8, .n_vocab = 512,
                                  .n_ctx_train = 4096, .n_expert_used = 2, .rms_eps = 1e-5f };
    const char *out = NULL, *type = "q4_k_m", *arch = "llama", *vocab_from = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(gen_help, stdout);
            return 0;
        }
        if (!strcmp(a, "--tied")) { o.tied_output = true; continue; }
        const char *v = cli_value(argc, argv, &i);
        if (gen_shape_opt(a, v, hp)) continue;
        if (!strcmp(a, "--arch")) arch = v;
        else if (!strcmp(a, "--type")) type = v;
        else if (!strcmp(a, "--vocab-from")) vocab_from = v;
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)cli_parse_int(a, v, 0, INT64_MAX);
        else if (!strcmp(a, "--router-skew")) o.router_skew = (float)cli_parse_float(a, v, 0, 100);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) o.n_threads = (int)cli_parse_int(a, v, 1, 512);
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) out = v;
        else cli_die(0, "unknown option '%s' (see tutti gen --help)", a);
    }
    if (!out) cli_die(0, "no output file given (-o FILE)");
    int ai = model_arch_from_name(arch);
    if (ai < 0) cli_die(0, "unknown architecture '%s' (supported: %s)", arch, model_arch_supported_list());
    hp->arch = (enum model_arch)ai;
    int err = model_gen_parse_type(type, &o.base_type, &o.mix_m);
    if (err) cli_die(err, "--type");
    if (!hp->n_head_kv) hp->n_head_kv = hp->n_head;
    if (!hp->head_dim) hp->head_dim = hp->n_embd / hp->n_head;
    if (!hp->n_ff) hp->n_ff = (hp->n_embd * 8 / 3 + 255) / 256 * 256;
    if (!hp->n_ff_exp) hp->n_ff_exp = hp->n_ff;
    if (!hp->rope_base) hp->rope_base = hp->arch == MODEL_ARCH_LLAMA ? 10000.0f : 1000000.0f;
    hp->n_rot = hp->head_dim;
    if (hp->arch != MODEL_ARCH_LLAMA) hp->rms_eps = 1e-6f;
    struct gguf_file vf = { 0 };
    if (vocab_from && (err = gguf_open(&vf, vocab_from))) cli_die(err, "cannot open '%s'", vocab_from);
    o.vocab_from = vocab_from ? &vf : NULL;
    struct cli_progress p;
    cli_progress_start(&p, "writing");
    o.progress = gen_progress;
    o.progress_ctx = &p;
    if ((err = model_gen(&o, out))) cli_die(err, "cannot write '%s'", out);
    cli_progress_end(&p);
    gguf_close(&vf);
    return 0;
}
