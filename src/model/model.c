/*
 * model.c: binds a GGUF file to the model structs.
 *
 * Invariants after a successful model_bind():
 *  1. Every hyperparameter is within MODEL_*_MAX and consistent
 *     (n_head % n_head_kv == 0, n_rot <= head_dim and even, ...).
 *  2. Every required tensor exists with the expected shape, a supported type,
 *     and a row length that is a whole number of blocks; 1-D tensors (norms,
 *     biases, routers' shared gates) are F32 because the engine reads them
 *     directly.
 *  3. `output` points at token_embd when the file has no output.weight (tied).
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const char *const arch_names[MODEL_ARCH_COUNT] = {
    [MODEL_ARCH_LLAMA] = "llama",
    [MODEL_ARCH_QWEN2] = "qwen2",
    [MODEL_ARCH_QWEN3] = "qwen3",
    [MODEL_ARCH_QWEN2MOE] = "qwen2moe",
    [MODEL_ARCH_QWEN3MOE] = "qwen3moe",
};

const char *model_arch_name(enum model_arch arch)
{
    return (unsigned)arch < MODEL_ARCH_COUNT ? arch_names[arch] : "unknown";
}

int model_arch_from_name(const char *name)
{
    for (int i = 0; i < MODEL_ARCH_COUNT; i++)
        if (strcmp(name, arch_names[i]) == 0) return i;
    return -1;
}

const char *model_arch_supported_list(void) { return "llama, qwen2, qwen3, qwen2moe, qwen3moe"; }

/* ---- metadata ---- */

struct key_reader {
    const struct gguf_file *f;
    const char *arch;
    int err;
};

/* Read "<arch>.<suffix>" as u32 into *out; absent keys keep the default
 * unless `required`. Range-checks against [lo, hi]. */
static void read_u32(struct key_reader *r, const char *suffix, int32_t *out, bool required,
                     int32_t lo, int32_t hi)
{
    if (r->err) return;
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", r->arch, suffix);
    uint32_t v;
    int err = gguf_get_u32(r->f, key, &v);
    if (err == TT_ENOTFOUND && !required) return;
    if (err == TT_ENOTFOUND) {
        r->err = tt_error_set(TT_EFORMAT, "metadata key '%s' is missing", key);
        return;
    }
    if (err) {
        r->err = err;
        return;
    }
    if ((int64_t)v < lo || (int64_t)v > hi) {
        r->err = tt_error_set(TT_EFORMAT, "metadata '%s' = %u is outside [%d, %d]", key, v, lo, hi);
        return;
    }
    *out = (int32_t)v;
}

static void read_f32(struct key_reader *r, const char *suffix, float *out)
{
    if (r->err) return;
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", r->arch, suffix);
    int err = gguf_get_f32(r->f, key, out);
    if (err && err != TT_ENOTFOUND) r->err = err;
}

static int read_hparams(const struct gguf_file *f, struct model_hparams *hp)
{
    const char *arch;
    int err = gguf_get_str(f, "general.architecture", &arch);
    if (err == TT_ENOTFOUND) return tt_error_set(TT_EFORMAT, "general.architecture is missing");
    if (err) return err;
    int a = model_arch_from_name(arch);
    if (a < 0)
        return tt_error_set(TT_EUNSUPPORTED, "architecture '%s' is not supported (supported: %s)",
                            arch, model_arch_supported_list());
    memset(hp, 0, sizeof(*hp));
    hp->arch = (enum model_arch)a;
    struct key_reader r = { .f = f, .arch = arch };
    read_u32(&r, "embedding_length", &hp->n_embd, true, 1, MODEL_DIM_MAX);
    read_u32(&r, "block_count", &hp->n_layer, true, 1, MODEL_LAYERS_MAX);
    read_u32(&r, "attention.head_count", &hp->n_head, true, 1, 4096);
    hp->n_head_kv = hp->n_head;
    read_u32(&r, "attention.head_count_kv", &hp->n_head_kv, false, 1, 4096);
    read_u32(&r, "feed_forward_length", &hp->n_ff, hp->arch != MODEL_ARCH_QWEN3MOE, 1, MODEL_DIM_MAX);
    hp->n_ctx_train = 2048;
    read_u32(&r, "context_length", &hp->n_ctx_train, false, 1, 1 << 24);
    if (r.err) return r.err;
    hp->head_dim = hp->n_embd / hp->n_head;
    read_u32(&r, "attention.key_length", &hp->head_dim, false, 1, 4096);
    int32_t v_len = hp->head_dim;
    read_u32(&r, "attention.value_length", &v_len, false, 1, 4096);
    hp->n_rot = hp->head_dim;
    read_u32(&r, "rope.dimension_count", &hp->n_rot, false, 2, 4096);
    hp->rope_base = 10000.0f;
    read_f32(&r, "rope.freq_base", &hp->rope_base);
    hp->rms_eps = 1e-5f;
    read_f32(&r, "attention.layer_norm_rms_epsilon", &hp->rms_eps);
    float scale_factor = 0.0f;
    read_f32(&r, "rope.scaling.factor", &scale_factor);
    read_u32(&r, "expert_count", &hp->n_expert, false, 0, MODEL_EXPERTS_MAX);
    read_u32(&r, "expert_used_count", &hp->n_expert_used, false, 0, MODEL_EXPERTS_MAX);
    hp->n_ff_exp = hp->n_ff;
    read_u32(&r, "expert_feed_forward_length", &hp->n_ff_exp, false, 1, MODEL_DIM_MAX);
    read_u32(&r, "expert_shared_feed_forward_length", &hp->n_ff_shexp, false, 0, MODEL_DIM_MAX);
    if (r.err) return r.err;
    if (v_len != hp->head_dim)
        return tt_error_set(TT_EUNSUPPORTED, "attention key_length %d != value_length %d",
                            hp->head_dim, v_len);
    hp->rope_freq_scale = 1.0f;
    const char *scaling;
    if (gguf_get_str(f, "llama.rope.scaling.type", &scaling) == 0 && strcmp(scaling, "linear") == 0 &&
        scale_factor > 0)
        hp->rope_freq_scale = 1.0f / scale_factor;
    hp->rope_type = hp->arch == MODEL_ARCH_LLAMA ? MODEL_ROPE_NORMAL : MODEL_ROPE_NEOX;
    hp->expert_norm = hp->arch != MODEL_ARCH_QWEN2MOE;
    return 0;
}

static int check_hparams(struct model_hparams *hp)
{
    if (hp->n_head % hp->n_head_kv)
        return tt_error_set(TT_EFORMAT, "head_count %d is not a multiple of head_count_kv %d",
                            hp->n_head, hp->n_head_kv);
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return tt_error_set(TT_EFORMAT, "rope dimension %d must be even and <= head size %d",
                            hp->n_rot, hp->head_dim);
    if (!(hp->rms_eps > 0 && hp->rms_eps < 1) || !(hp->rope_base > 0))
        return tt_error_set(TT_EFORMAT, "rms epsilon %g or rope base %g out of range",
                            (double)hp->rms_eps, (double)hp->rope_base);
    bool moe_arch = hp->arch == MODEL_ARCH_QWEN2MOE || hp->arch == MODEL_ARCH_QWEN3MOE;
    if (moe_arch && hp->n_expert == 0)
        return tt_error_set(TT_EFORMAT, "%s model without expert_count", model_arch_name(hp->arch));
    if (hp->n_expert && (hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert))
        return tt_error_set(TT_EFORMAT, "expert_used_count %d must be in [1, expert_count %d]",
                            hp->n_expert_used, hp->n_expert);
    return 0;
}

/* ---- tensors ---- */

struct binder {
    const struct gguf_file *f;
    int err;
    uint64_t bytes;
};

/* Find `name` and check it has shape {ne0, ne1, ne2} (trailing 1s for lower
 * ranks). `vector` tensors (norms, biases, gates) must be F32. Absent
 * optional tensors leave w zeroed. */
static void bind(void *ctx, struct model_weight *w, const char *name, bool required, bool vector,
                 int64_t ne0, int64_t ne1, int64_t ne2)
{
    struct binder *b = ctx;
    memset(w, 0, sizeof(*w));
    if (b->err) return;
    const struct gguf_tensor *t = gguf_find_tensor(b->f, name);
    if (!t) {
        if (required) b->err = tt_error_set(TT_EFORMAT, "tensor '%s' is missing", name);
        return;
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != ne2 || t->ne[3] != 1) {
        b->err = tt_error_set(TT_EFORMAT,
                              "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld]",
                              name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                              (long long)t->ne[3], (long long)ne0, (long long)ne1, (long long)ne2);
        return;
    }
    const struct tt_type_traits *tr = tt_type_get(t->type);
    if (!tr || !tr->vec_dot || (vector && t->type != TT_TYPE_F32)) {
        b->err = tt_error_set(TT_EUNSUPPORTED, "tensor '%s' has type %s; supported: %s", name,
                              tt_type_name(t->type), vector ? "f32" : tt_type_supported_list());
        return;
    }
    w->data = t->data;
    w->type = t->type;
    w->ne[0] = ne0;
    w->ne[1] = ne1;
    w->ne[2] = ne2;
    w->row_bytes = tt_row_size(t->type, ne0);
    w->name = t->name;
    TT_ASSERT(w->row_bytes * (uint64_t)ne1 * (uint64_t)ne2 == t->size_bytes);
}

void model_visit_layer(const struct model_hparams *hp, int il, struct model_layer *l,
                       model_visit_fn bind, void *b)
{
    char n[96];
    const int64_t E = hp->n_embd, HD = hp->head_dim;
    const int64_t q_dim = (int64_t)hp->n_head * HD, kv_dim = (int64_t)hp->n_head_kv * HD;
    bool qwen2 = hp->arch == MODEL_ARCH_QWEN2 || hp->arch == MODEL_ARCH_QWEN2MOE;
    bool qwen3 = hp->arch == MODEL_ARCH_QWEN3 || hp->arch == MODEL_ARCH_QWEN3MOE;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d." s, il), n)
    bind(b, &l->attn_norm, NAME("attn_norm.weight"), true, true, E, 1, 1);
    bind(b, &l->wq, NAME("attn_q.weight"), true, false, E, q_dim, 1);
    bind(b, &l->wk, NAME("attn_k.weight"), true, false, E, kv_dim, 1);
    bind(b, &l->wv, NAME("attn_v.weight"), true, false, E, kv_dim, 1);
    bind(b, &l->wo, NAME("attn_output.weight"), true, false, q_dim, E, 1);
    bind(b, &l->bq, NAME("attn_q.bias"), qwen2, true, q_dim, 1, 1);
    bind(b, &l->bk, NAME("attn_k.bias"), qwen2, true, kv_dim, 1, 1);
    bind(b, &l->bv, NAME("attn_v.bias"), qwen2, true, kv_dim, 1, 1);
    bind(b, &l->q_norm, NAME("attn_q_norm.weight"), qwen3, true, HD, 1, 1);
    bind(b, &l->k_norm, NAME("attn_k_norm.weight"), qwen3, true, HD, 1, 1);
    bind(b, &l->ffn_norm, NAME("ffn_norm.weight"), true, true, E, 1, 1);
    if (hp->n_expert == 0) {
        bind(b, &l->w_gate, NAME("ffn_gate.weight"), true, false, E, hp->n_ff, 1);
        bind(b, &l->w_up, NAME("ffn_up.weight"), true, false, E, hp->n_ff, 1);
        bind(b, &l->w_down, NAME("ffn_down.weight"), true, false, hp->n_ff, E, 1);
    } else {
        const int64_t X = hp->n_expert, F = hp->n_ff_exp;
        bind(b, &l->gate_inp, NAME("ffn_gate_inp.weight"), true, false, E, X, 1);
        bind(b, &l->gate_exps, NAME("ffn_gate_exps.weight"), true, false, E, F, X);
        bind(b, &l->up_exps, NAME("ffn_up_exps.weight"), true, false, E, F, X);
        bind(b, &l->down_exps, NAME("ffn_down_exps.weight"), true, false, F, E, X);
        if (hp->n_ff_shexp > 0) {
            const int64_t S = hp->n_ff_shexp;
            bind(b, &l->gate_inp_shexp, NAME("ffn_gate_inp_shexp.weight"), true, true, E, 1, 1);
            bind(b, &l->gate_shexp, NAME("ffn_gate_shexp.weight"), true, false, E, S, 1);
            bind(b, &l->up_shexp, NAME("ffn_up_shexp.weight"), true, false, E, S, 1);
            bind(b, &l->down_shexp, NAME("ffn_down_shexp.weight"), true, false, S, E, 1);
        }
    }
#undef NAME
}

int model_bind(struct model *m, struct gguf_file *f)
{
    memset(m, 0, sizeof(*m));
    struct model_hparams hp;
    int err = read_hparams(f, &hp);
    if (!err) err = check_hparams(&hp);
    if (err) return err;
    const struct gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    if (!emb) return tt_error_set(TT_EFORMAT, "tensor 'token_embd.weight' is missing");
    if (emb->ne[1] < 1 || emb->ne[1] > MODEL_VOCAB_MAX)
        return tt_error_set(TT_EFORMAT, "vocabulary size %lld out of range", (long long)emb->ne[1]);
    hp.n_vocab = (int32_t)emb->ne[1];
    struct binder b = { .f = f };
    bind(&b, &m->token_embd, "token_embd.weight", true, false, hp.n_embd, hp.n_vocab, 1);
    bind(&b, &m->output_norm, "output_norm.weight", true, true, hp.n_embd, 1, 1);
    bind(&b, &m->output, "output.weight", false, false, hp.n_embd, hp.n_vocab, 1);
    bind(&b, &m->rope_freqs, "rope_freqs.weight", false, true, hp.n_rot / 2, 1, 1);
    if (b.err) return b.err;
    if (!m->output.data) m->output = m->token_embd;
    m->layers = calloc((size_t)hp.n_layer, sizeof(*m->layers));
    if (!m->layers) return tt_error_set(TT_ENOMEM, "no memory for %d layers", hp.n_layer);
    for (int il = 0; il < hp.n_layer && !b.err; il++)
        model_visit_layer(&hp, il, &m->layers[il], bind, &b);
    if (b.err) {
        free(m->layers);
        m->layers = NULL;
        return b.err;
    }
    m->hp = hp;
    for (uint64_t i = 0; i < f->n_tensors; i++) m->weight_bytes += f->tensors[i].size_bytes;
    m->file = *f;
    memset(f, 0, sizeof(*f));
    return 0;
}

int model_load(struct model *m, const char *path)
{
    struct gguf_file f;
    int err = gguf_open(&f, path);
    if (err) return err;
    err = model_bind(m, &f);
    if (err) {
        gguf_close(&f);
        return err;
    }
    if (!(m->path = strdup(path))) {
        model_free(m);
        return tt_error_set(TT_ENOMEM, "out of memory");
    }
    return 0;
}

int model_bind_header(struct model *m, const void *header, uint64_t header_bytes,
                      uint64_t file_bytes)
{
    memset(m, 0, sizeof(*m));
    if (header_bytes > file_bytes || file_bytes > (1ull << 48))
        return tt_error_set(TT_EFORMAT, "header of %llu bytes for a file of %llu bytes",
                            (unsigned long long)header_bytes, (unsigned long long)file_bytes);
    void *map = mmap(NULL, (size_t)file_bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) return tt_error_set(TT_ENOMEM, "cannot reserve %llu bytes of address space",
                                               (unsigned long long)file_bytes);
    memcpy(map, header, (size_t)header_bytes);
    struct gguf_file f;
    int err = gguf_parse_buffer(&f, map, file_bytes);
    if (!err) err = model_bind(m, &f);
    if (err) {
        gguf_close(&f);
        munmap(map, (size_t)file_bytes);
        return err;
    }
    m->remote_map = map;
    m->remote_size = file_bytes;
    return 0;
}

void model_free(struct model *m)
{
    if (m->remote_map) {
        gguf_close(&m->file);
        munmap(m->remote_map, (size_t)m->remote_size);
        m->remote_map = NULL;
    }
    free(m->path);
    free(m->layers);
    gguf_close(&m->file);
    memset(m, 0, sizeof(*m));
}

static uint64_t weight_bytes(const struct model_weight *w)
{
    return w->data ? w->row_bytes * (uint64_t)w->ne[1] * (uint64_t)w->ne[2] : 0;
}

uint64_t model_bytes_per_token(const struct model *m)
{
    const struct model_hparams *hp = &m->hp;
    uint64_t total = weight_bytes(&m->output) + weight_bytes(&m->output_norm) + m->token_embd.row_bytes;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *l = &m->layers[il];
        const struct model_weight *dense[] = {
            &l->attn_norm, &l->wq, &l->wk, &l->wv, &l->wo, &l->bq, &l->bk, &l->bv,
            &l->q_norm, &l->k_norm, &l->ffn_norm, &l->w_gate, &l->w_up, &l->w_down,
            &l->gate_inp, &l->gate_inp_shexp, &l->gate_shexp, &l->up_shexp, &l->down_shexp,
        };
        for (size_t i = 0; i < TT_ARRAY_LEN(dense); i++) total += weight_bytes(dense[i]);
        if (hp->n_expert) {
            uint64_t per_expert = (weight_bytes(&l->gate_exps) + weight_bytes(&l->up_exps) +
                                   weight_bytes(&l->down_exps)) / (uint64_t)hp->n_expert;
            total += per_expert * (uint64_t)hp->n_expert_used;
        }
    }
    return total;
}
