/*
 * model: what a GGUF file describes, bound to names the engine uses.
 *
 * model_load() maps the file (gguf), reads the architecture's
 * hyperparameters from metadata only (nothing is assumed from tensor shapes
 * or names), finds every tensor the architecture needs and checks its type
 * and shape against the hyperparameters. The engine never looks at GGUF
 * keys or tensor names itself.
 *
 * Supported: llama (Llama 2/3/3.1, Mistral, Mixtral-style experts), qwen2 (q/k/v
 * biases), qwen3 (per-head q/k RMSNorm), qwen2moe (shared expert with sigmoid
 * gate), qwen3moe. Shapes follow GGML: ne[0] is the contiguous row length, so a
 * projection from n_in to n_out features has ne = {n_in, n_out}.
 */
#ifndef TT_MODEL_H
#define TT_MODEL_H

#include "../gguf/gguf.h"
#include "../quant/quant.h"

enum model_arch {
    MODEL_ARCH_LLAMA,
    MODEL_ARCH_QWEN2,
    MODEL_ARCH_QWEN3,
    MODEL_ARCH_QWEN2MOE,
    MODEL_ARCH_QWEN3MOE,
    MODEL_ARCH_COUNT
};

enum model_rope_type {
    MODEL_ROPE_NORMAL, /* rotate adjacent pairs (2i, 2i+1): llama */
    MODEL_ROPE_NEOX,   /* rotate (i, i + n_rot/2): qwen family */
    MODEL_ROPE_TYPE_COUNT
};

#define MODEL_LAYERS_MAX 1024
#define MODEL_EXPERTS_MAX 1024
#define MODEL_DIM_MAX (1 << 20)
#define MODEL_VOCAB_MAX (1 << 22)

/* A weight in the file: up to 3 dims (experts stack matrices on ne[2]). */
struct model_weight {
    const void *data;  /* in the map; NULL if the tensor is absent (optional ones) */
    uint32_t type;     /* enum tt_type */
    int64_t ne[3];
    size_t row_bytes;  /* bytes of one row of ne[0] elements */
    const char *name;
};

struct model_hparams {
    enum model_arch arch;
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;    /* attention.key_length (= value_length) */
    int32_t n_ff;        /* dense FFN width */
    int32_t n_ctx_train;
    int32_t n_rot;       /* rope.dimension_count */
    float rope_base;
    float rope_freq_scale; /* 1 / linear scaling factor */
    float rms_eps;
    enum model_rope_type rope_type;
    /* MoE; n_expert = 0 for dense models */
    int32_t n_expert;
    int32_t n_expert_used;
    int32_t n_ff_exp;
    int32_t n_ff_shexp;  /* 0 if no shared expert */
    bool expert_norm;    /* renormalize the selected experts' weights to sum 1 */
};

struct model_layer {
    struct model_weight attn_norm;          /* [n_embd] */
    struct model_weight wq;                 /* [n_embd, n_head*head_dim] */
    struct model_weight wk, wv;             /* [n_embd, n_head_kv*head_dim] */
    struct model_weight wo;                 /* [n_head*head_dim, n_embd] */
    struct model_weight bq, bk, bv;         /* qwen2: biases, else absent */
    struct model_weight q_norm, k_norm;     /* qwen3: [head_dim], else absent */
    struct model_weight ffn_norm;           /* [n_embd] */
    struct model_weight w_gate, w_up;       /* dense: [n_embd, n_ff] */
    struct model_weight w_down;             /* dense: [n_ff, n_embd] */
    struct model_weight gate_inp;           /* MoE router: [n_embd, n_expert] */
    struct model_weight gate_exps, up_exps; /* [n_embd, n_ff_exp, n_expert] */
    struct model_weight down_exps;          /* [n_ff_exp, n_embd, n_expert] */
    struct model_weight gate_inp_shexp;     /* qwen2moe: [n_embd] */
    struct model_weight gate_shexp, up_shexp; /* [n_embd, n_ff_shexp] */
    struct model_weight down_shexp;         /* [n_ff_shexp, n_embd] */
};

struct model {
    struct gguf_file file;
    struct model_hparams hp;
    struct model_weight token_embd;  /* [n_embd, n_vocab] */
    struct model_weight output_norm; /* [n_embd] */
    struct model_weight output;      /* [n_embd, n_vocab]; = token_embd when tied */
    struct model_weight rope_freqs;  /* optional [n_rot/2] frequency factors (llama3 scaling) */
    struct model_layer *layers;      /* n_layer */
    uint64_t weight_bytes;           /* all tensor data */
    char *path;                      /* the file (model_load), for ranks that read slices */
    void *remote_map;                /* model_bind_header: zero pages standing for the data */
    uint64_t remote_size;
};

/* Map `path` and bind it. Errors: TT_EIO, TT_EFORMAT, TT_EUNSUPPORTED (with a
 * detail naming what is missing or unsupported and listing what is). */
int model_load(struct model *m, const char *path);
/* Bind an already opened file; takes ownership of *f on success. */
int model_bind(struct model *m, struct gguf_file *f);
void model_free(struct model *m);
/* Bind a model from the first header_bytes of a file of file_bytes (its
 * metadata and tensor directory, e.g. received from another rank): the
 * tensor data are zero pages that this process must never read; path is
 * NULL. For ranks that get their weights over the network. */
int model_bind_header(struct model *m, const void *header, uint64_t header_bytes,
                      uint64_t file_bytes);

const char *model_arch_name(enum model_arch arch);
int model_arch_from_name(const char *name); /* -1 if unknown */
const char *model_arch_supported_list(void);
/* The tensors of layer `il` for these hyperparameters, one call each:
 * fn(ctx, &l->field, name, required, vector, ne0, ne1, ne2). `vector` tensors
 * are 1-D F32 (norms, biases, gates). model_bind() binds with it and the
 * generator writes with it, so both agree on names and shapes. */
typedef void (*model_visit_fn)(void *ctx, struct model_weight *w, const char *name, bool required,
                               bool vector, int64_t ne0, int64_t ne1, int64_t ne2);
void model_visit_layer(const struct model_hparams *hp, int il, struct model_layer *l,
                       model_visit_fn fn, void *ctx);

/* Bytes of weights read to compute one token (experts: only the used ones). */
uint64_t model_bytes_per_token(const struct model *m);
/* Pointer to row `row` of expert `e` (e = 0 for 2-D weights). */
static inline const void *model_weight_row(const struct model_weight *w, int64_t e, int64_t row)
{
    return (const uint8_t *)w->data + ((size_t)e * (size_t)w->ne[1] + (size_t)row) * w->row_bytes;
}

/* ---- random-weight models (model_gen.c) ---- */
struct model_gen_opts {
    struct model_hparams hp;     /* arch and shape; n_vocab >= 260 unless vocab_from */
    enum tt_type base_type;      /* type of the large matrices */
    bool mix_m;                  /* llama-quantize *_M mix (Q6_K for output, some attn_v/ffn_down) */
    uint64_t seed;
    bool tied_output;            /* no output.weight: reuse token_embd */
    float router_skew;           /* > 0: make the first experts hot (MoE balancing tests) */
    const struct gguf_file *vocab_from; /* copy tokenizer.* from this file (NULL: built-in SPM vocab) */
    int n_threads;
    void (*progress)(void *ctx, double done, double total);
    void *progress_ctx;
};
/* Parse "q4_k_m", "q5_k_m", "q4_k", "q8_0", "f16", ... into a base type and mix flag. */
int model_gen_parse_type(const char *s, enum tt_type *base, bool *mix_m);
const char *model_gen_types_list(void);
/* Write the model to `path` (atomically: temp file then rename). */
int model_gen(const struct model_gen_opts *o, const char *path);

#endif
