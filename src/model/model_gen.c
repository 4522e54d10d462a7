/*
 * model_gen.c: writing random-weight models of any supported shape, so that
 * benchmarks and tests can use real sizes (an 8B or 70B layout) without
 * downloading anything.
 *
 * The tensors and their shapes come from model_visit_layer(), the same list
 * model_bind() checks, so a generated file always loads. Values: embeddings
 * N(0,1), q/k projections N(0,1/fan_in), other matrices N(0,0.25/fan_in),
 * norms 1+N(0,0.01), biases N(0,0.09), routers N(0,0.01) (the recipe of the
 * reference synthetic models). Every row draws from its own generator seeded
 * by (seed, tensor, row), so the file does not depend on the thread count.
 * Skewed routers (router_skew > 0, for MoE balancing tests): every token
 * embedding gets a shared direction m, and the router rows of the first
 * eighth of the experts get router_skew * (1 - i/n_hot) * m/|m|, so those
 * experts win for most tokens, the first ones most often.
 * Quantization mixes follow llama-quantize's choices for *_M files: Q6_K for
 * the output matrix and for attn_v / ffn_down of the first and last eighth of
 * the layers and every third layer between.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kcpu/kcpu.h"

struct gen_tensor {
    char name[96];
    int64_t ne[3];
    uint32_t type;
    int init;   /* enum gen_init */
};

enum gen_init { INIT_EMBED, INIT_QK, INIT_MATRIX, INIT_NORM, INIT_BIAS, INIT_ROUTER, INIT_COUNT };

struct gen_list {
    struct gen_tensor *t;
    int n, cap;
    const struct model_gen_opts *o;
    int il;
    int err;
};

static bool use_more_bits(int il, int n_layer)
{
    return il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2;
}

/* The stored type of a matrix under the chosen mix; falls back to Q8_0 or F16
 * when the row length is not a whole number of blocks. */
static uint32_t pick_type(const struct model_gen_opts *o, const char *name, int il, int64_t ne0)
{
    uint32_t t = (uint32_t)o->base_type;
    const bool mix = o->mix_m;
    const bool v_or_down = strstr(name, "attn_v") || strstr(name, "ffn_down");
    if (mix && !strcmp(name, "output.weight")) t = TT_TYPE_Q6_K;
    else if (mix && v_or_down && use_more_bits(il, o->hp.n_layer)) t = TT_TYPE_Q6_K;
    else if (mix && o->hp.n_expert >= 8 && (strstr(name, "attn_k.") || strstr(name, "attn_v.")))
        t = TT_TYPE_Q8_0;
    const struct tt_type_traits *tr = tt_type_get(t);
    if (ne0 % tr->block_size == 0) return t;
    return ne0 % QK8_0 == 0 && tr->is_quantized ? TT_TYPE_Q8_0 : TT_TYPE_F16;
}

static void gen_add(struct gen_list *l, const char *name, int init, int64_t ne0, int64_t ne1,
                    int64_t ne2, bool vector)
{
    if (l->err) return;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        struct gen_tensor *t = realloc(l->t, sizeof(*t) * (size_t)l->cap);
        if (!t) {
            l->err = tt_error_set(TT_ENOMEM, "out of memory");
            return;
        }
        l->t = t;
    }
    struct gen_tensor *t = &l->t[l->n++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->init = init;
    if (vector || init == INIT_ROUTER) t->type = TT_TYPE_F32;
    else t->type = pick_type(l->o, name, l->il, ne0);
}

static void gen_visit(void *ctx, struct model_weight *w, const char *name, bool required,
                      bool vector, int64_t ne0, int64_t ne1, int64_t ne2)
{
    struct gen_list *l = ctx;
    (void)w;
    if (!required) return;
    int init = INIT_MATRIX;
    if (vector) init = strstr(name, ".bias") ? INIT_BIAS : strstr(name, "gate_inp") ? INIT_ROUTER : INIT_NORM;
    else if (strstr(name, "ffn_gate_inp")) init = INIT_ROUTER;
    else if (strstr(name, "attn_q.") || strstr(name, "attn_k.")) init = INIT_QK;
    gen_add(l, name, init, ne0, ne1, ne2, vector);
}

int model_gen_parse_type(const char *s, enum tt_type *base, bool *mix_m)
{
    char buf[32];
    size_t n = strlen(s);
    if (n >= sizeof(buf)) return tt_error_set(TT_EINVAL, "unknown type '%s'", s);
    for (size_t i = 0; i <= n; i++) buf[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    *mix_m = n > 2 && !strcmp(buf + n - 2, "_m");
    if (*mix_m) buf[n - 2] = 0;
    int t = tt_type_from_name(buf);
    if (t < 0 || t == TT_TYPE_Q8_K || (*mix_m && t != TT_TYPE_Q4_K && t != TT_TYPE_Q5_K))
        return tt_error_set(TT_EINVAL, "unknown type '%s' (known: %s)", s, model_gen_types_list());
    *base = (enum tt_type)t;
    return 0;
}

const char *model_gen_types_list(void)
{
    return "f32, f16, bf16, q4_0, q8_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m";
}

static int collect_tensors(const struct model_gen_opts *o, struct gen_list *l)
{
    const struct model_hparams *hp = &o->hp;
    memset(l, 0, sizeof(*l));
    l->o = o;
    gen_add(l, "token_embd.weight", INIT_EMBED, hp->n_embd, hp->n_vocab, 1, false);
    struct model_layer dummy;
    for (int il = 0; il < hp->n_layer; il++) {
        l->il = il;
        model_visit_layer(hp, il, &dummy, gen_visit, l);
    }
    l->il = hp->n_layer - 1;
    gen_add(l, "output_norm.weight", INIT_NORM, hp->n_embd, 1, 1, true);
    if (!o->tied_output) gen_add(l, "output.weight", INIT_MATRIX, hp->n_embd, hp->n_vocab, 1, false);
    return l->err;
}

/* ---- metadata ---- */

/* llama.cpp's general.file_type (enum llama_ftype) for a base type and mix:
 * only a label (its tools print it), the tensors carry their own types. */
static uint32_t file_type(enum tt_type base, bool mix_m)
{
    switch (base) {
    case TT_TYPE_F32: return 0;
    case TT_TYPE_F16: return 1;
    case TT_TYPE_Q4_0: return 2;
    case TT_TYPE_Q8_0: return 7;
    case TT_TYPE_Q4_K: return mix_m ? 15 : 14; /* Q4_K_M, Q4_K_S */
    case TT_TYPE_Q5_K: return mix_m ? 17 : 16; /* Q5_K_M, Q5_K_S */
    case TT_TYPE_Q6_K: return 18;
    case TT_TYPE_BF16: return 32;
    default: return 0;
    }
}

static int write_hparams(struct gguf_writer *w, const struct model_gen_opts *o)
{
    const struct model_hparams *hp = &o->hp;
    const char *a = model_arch_name(hp->arch);
    char k[128];
    int err = gguf_writer_set_str(w, "general.architecture", a);
    if (!err) err = gguf_writer_set_str(w, "general.name", "tutti random-weight model");
    if (!err) err = gguf_writer_set_u32(w, "general.file_type", file_type(o->base_type, o->mix_m));
#define U32(suffix, v) if (!err) { snprintf(k, sizeof(k), "%s." suffix, a); err = gguf_writer_set_u32(w, k, (uint32_t)(v)); }
#define F32(suffix, v) if (!err) { snprintf(k, sizeof(k), "%s." suffix, a); err = gguf_writer_set_f32(w, k, (v)); }
    U32("context_length", hp->n_ctx_train);
    U32("embedding_length", hp->n_embd);
    U32("block_count", hp->n_layer);
    U32("feed_forward_length", hp->n_ff);
    U32("attention.head_count", hp->n_head);
    U32("attention.head_count_kv", hp->n_head_kv);
    U32("attention.key_length", hp->head_dim);
    U32("attention.value_length", hp->head_dim);
    U32("rope.dimension_count", hp->n_rot);
    U32("vocab_size", hp->n_vocab);
    F32("rope.freq_base", hp->rope_base);
    F32("attention.layer_norm_rms_epsilon", hp->rms_eps);
    if (hp->n_expert) {
        U32("expert_count", hp->n_expert);
        U32("expert_used_count", hp->n_expert_used);
        if (hp->arch != MODEL_ARCH_LLAMA) U32("expert_feed_forward_length", hp->n_ff_exp);
        if (hp->n_ff_shexp) U32("expert_shared_feed_forward_length", hp->n_ff_shexp);
    }
#undef U32
#undef F32
    return err;
}

/* A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then
 * "▁", letters, and "▁"-prefixed letter strings with descending scores. */
static int write_builtin_vocab(struct gguf_writer *w, int32_t n_vocab)
{
    static const char letters[] = "etaoinshrdlcumwfgypbvkjxqz";
    char **tok = calloc((size_t)n_vocab, sizeof(char *));
    float *score = calloc((size_t)n_vocab, sizeof(float));
    int32_t *type = calloc((size_t)n_vocab, sizeof(int32_t));
    int err = tok && score && type ? 0 : tt_error_set(TT_ENOMEM, "out of memory for the vocabulary");
    for (int32_t i = 0; i < n_vocab && !err; i++) {
        char buf[64];
        if (i < 3) snprintf(buf, sizeof(buf), "%s", (const char *[]){ "<unk>", "<s>", "</s>" }[i]);
        else if (i < 259) snprintf(buf, sizeof(buf), "<0x%02X>", i - 3);
        else {
            /* piece j: base-26 digits of j, "▁"-prefixed when j is odd */
            int32_t j = i - 259, v = j / 2 + 1;
            int n = 0;
            char body[32];
            while (v > 0 && n < 30) {
                body[n++] = letters[(v - 1) % 26];
                v = (v - 1) / 26;
            }
            body[n] = 0;
            snprintf(buf, sizeof(buf), "%s%s", j % 2 ? "\xe2\x96\x81" : "", body);
        }
        tok[i] = strdup(buf);
        if (!tok[i]) err = tt_error_set(TT_ENOMEM, "out of memory for the vocabulary");
        score[i] = i < 259 ? 0.0f : -(float)(i - 259);
        type[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
    }
    if (!err) err = gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (!err) err = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, (uint64_t)n_vocab);
    if (!err) err = gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, score, (uint64_t)n_vocab);
    if (!err) err = gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, type, (uint64_t)n_vocab);
    if (!err) err = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (!err) err = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (!err) err = gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    for (int32_t i = 0; tok && i < n_vocab; i++) free(tok[i]);
    free(tok);
    free(score);
    free(type);
    return err;
}

/* ---- tensor data ---- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Approximately N(0,1): the sum of four 16-bit uniforms, centred and scaled
 * (Irwin-Hall); cheap enough to fill 70B weights. */
static float gauss(uint64_t *s)
{
    uint64_t r = splitmix64(s);
    float sum = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) +
                (float)(r >> 48);
    return (sum / 65536.0f - 2.0f) * 1.7320508f;
}

struct fill_job {
    const struct gen_tensor *t;
    uint64_t seed;
    int ti;
    uint8_t *data;
    size_t row_bytes;
    float *scratch;        /* [n_threads][ne0] */
    const float *shared;   /* [n_embd] unit direction m/|m| when skewed, else NULL */
    float skew;
    int n_hot;
};

/* The skew added to row `row` of tensor t (see the top of the file). */
static void add_skew(const struct fill_job *j, int64_t row, float *x)
{
    const struct gen_tensor *t = j->t;
    const int64_t n = t->ne[0];
    if (t->init == INIT_EMBED)
        for (int64_t i = 0; i < n; i++) x[i] += j->shared[i] * sqrtf((float)n);
    else if (t->init == INIT_ROUTER && t->ne[1] > 1 && row < j->n_hot)
        for (int64_t i = 0; i < n; i++) x[i] += j->skew * (1.0f - (float)row / (float)j->n_hot) * j->shared[i] * sqrtf((float)n) / sqrtf(2.0f);
}

static void fill_row(const struct gen_tensor *t, uint64_t seed, int ti, int64_t row, float *x)
{
    uint64_t s = seed * 0x100000001B3ull ^ ((uint64_t)ti << 40) ^ (uint64_t)row;
    splitmix64(&s);
    const int64_t n = t->ne[0];
    float mean = 0.0f, sd;
    switch (t->init) {
    case INIT_EMBED: sd = 1.0f; break;
    case INIT_QK: sd = 1.0f / sqrtf((float)n); break;
    case INIT_NORM: mean = 1.0f; sd = 0.1f; break;
    case INIT_BIAS: sd = 0.3f; break;
    case INIT_ROUTER: sd = 0.1f; break;
    default: sd = 0.5f / sqrtf((float)n); break;
    }
    for (int64_t i = 0; i < n; i++) x[i] = mean + sd * gauss(&s);
}

static void fill_run(void *p, int ith, int nth)
{
    struct fill_job *j = p;
    const struct gen_tensor *t = j->t;
    const struct tt_type_traits *tr = tt_type_get(t->type);
    int64_t r0, r1;
    tt_split_range(t->ne[1] * t->ne[2], ith, nth, 1, &r0, &r1);
    float *x = j->scratch + (size_t)ith * (size_t)t->ne[0];
    for (int64_t r = r0; r < r1; r++) {
        fill_row(t, j->seed, j->ti, r, x);
        if (j->shared) add_skew(j, r, x);
        tr->from_float(x, j->data + (size_t)r * j->row_bytes, t->ne[0]);
    }
}

static int write_tensors(const struct model_gen_opts *o, const struct gen_list *l,
                         struct gguf_writer *w)
{
    struct tt_pool *pool = tt_pool_create(o->n_threads > 0 ? o->n_threads : tt_cpu_count());
    size_t max_bytes = 0, total = 0, done = 0;
    int64_t max_ne0 = 0;
    for (int i = 0; i < l->n; i++) {
        size_t b = tt_row_size(l->t[i].type, l->t[i].ne[0]) * (size_t)(l->t[i].ne[1] * l->t[i].ne[2]);
        max_bytes = TT_MAX(max_bytes, b);
        max_ne0 = TT_MAX(max_ne0, l->t[i].ne[0]);
        total += b;
    }
    uint8_t *data = malloc(max_bytes);
    float *scratch = malloc(sizeof(float) * (size_t)max_ne0 * (size_t)tt_pool_size(pool));
    float *shared = o->router_skew > 0 ? malloc(sizeof(float) * (size_t)o->hp.n_embd) : NULL;
    int err = pool && data && scratch && (shared || o->router_skew <= 0)
                  ? 0 : tt_error_set(TT_ENOMEM, "out of memory (%zu MiB buffer)", max_bytes >> 20);
    if (shared && !err) { /* a unit direction drawn from the seed */
        uint64_t st = o->seed ^ 0x5DEECE66Dull;
        double norm = 0.0;
        for (int i = 0; i < o->hp.n_embd; i++) {
            shared[i] = gauss(&st);
            norm += (double)shared[i] * shared[i];
        }
        for (int i = 0; i < o->hp.n_embd; i++) shared[i] /= (float)sqrt(norm);
    }
    for (int i = 0; i < l->n && !err; i++) {
        const struct gen_tensor *t = &l->t[i];
        size_t rb = tt_row_size(t->type, t->ne[0]), size = rb * (size_t)(t->ne[1] * t->ne[2]);
        struct fill_job j = { t, o->seed, i, data, rb, scratch, shared, o->router_skew,
                              TT_MAX(1, o->hp.n_expert / 8) };
        tt_pool_run(pool, fill_run, &j);
        err = gguf_writer_write_tensor(w, data, size);
        done += size;
        if (o->progress) o->progress(o->progress_ctx, (double)done, (double)total);
    }
    free(shared);
    free(scratch);
    free(data);
    tt_pool_destroy(pool);
    return err;
}

static int check_gen_opts(const struct model_gen_opts *o)
{
    const struct model_hparams *hp = &o->hp;
    if (hp->n_embd < 1 || hp->n_layer < 1 || hp->n_head < 1 || hp->n_head_kv < 1 ||
        hp->n_head % hp->n_head_kv || hp->head_dim < 2 || hp->head_dim % 2 || hp->n_ff < 1 ||
        hp->n_embd > MODEL_DIM_MAX || hp->n_layer > MODEL_LAYERS_MAX || hp->n_vocab > MODEL_VOCAB_MAX)
        return tt_error_set(TT_EINVAL, "inconsistent shape: n_embd %d, layers %d, heads %d/%d, "
                            "head dim %d, n_ff %d", hp->n_embd, hp->n_layer, hp->n_head,
                            hp->n_head_kv, hp->head_dim, hp->n_ff);
    if (!o->vocab_from && hp->n_vocab < 260)
        return tt_error_set(TT_EINVAL, "vocabulary must have at least 260 tokens (got %d)", hp->n_vocab);
    bool moe_arch = hp->arch == MODEL_ARCH_QWEN2MOE || hp->arch == MODEL_ARCH_QWEN3MOE;
    if (moe_arch && hp->n_expert == 0)
        return tt_error_set(TT_EINVAL, "%s needs --n-expert", model_arch_name(hp->arch));
    if (hp->n_expert && (hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert || hp->n_expert > MODEL_EXPERTS_MAX))
        return tt_error_set(TT_EINVAL, "--n-expert-used must be in [1, n_expert]");
    return 0;
}

int model_gen(const struct model_gen_opts *opts, const char *path)
{
    struct model_gen_opts o = *opts;
    if (o.vocab_from) {
        const struct gguf_value *toks;
        int err = gguf_get_arr(o.vocab_from, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks);
        if (err) return tt_error_set(TT_EFORMAT, "the vocabulary file has no tokenizer.ggml.tokens");
        o.hp.n_vocab = (int32_t)toks->arr.n;
    }
    int err = check_gen_opts(&o);
    if (err) return err;
    struct gen_list l;
    err = collect_tensors(&o, &l);
    struct gguf_writer *w = err ? NULL : gguf_writer_create();
    if (!err && !w) err = tt_error_set(TT_ENOMEM, "out of memory");
    if (!err) err = write_hparams(w, &o);
    if (!err) err = o.vocab_from ? gguf_writer_copy_kv(w, o.vocab_from, "tokenizer.")
                                 : write_builtin_vocab(w, o.hp.n_vocab);
    for (int i = 0; i < l.n && !err; i++) {
        const struct gen_tensor *t = &l.t[i];
        uint32_t nd = t->ne[2] > 1 ? 3 : t->ne[1] > 1 ? 2 : 1;
        err = gguf_writer_add_tensor(w, t->name, nd, t->ne, t->type);
    }
    if (!err) err = gguf_writer_begin(w, path);
    if (!err) err = write_tensors(&o, &l, w);
    if (!err) err = gguf_writer_finish(w);
    gguf_writer_free(w);
    free(l.t);
    return err;
}
