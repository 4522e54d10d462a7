/*
 * engine_internal.h: the engine's private state, shared by engine.c (set-up,
 * the layer loop) and engine_ops.c (the parallel operations).
 */
#ifndef TT_ENGINE_INTERNAL_H
#define TT_ENGINE_INTERNAL_H

#include "engine.h"

#define ENGINE_MATMULS_MAX 4 /* products fused into one parallel job */

/* One product out[t][r] = W(expert)[r] . act[t] for t < n_tok, all rows. */
struct matmul_task {
    const struct model_weight *w;
    int64_t expert;
    const void *act;      /* n_tok rows in w's vec_dot type */
    size_t act_row_bytes;
    int64_t n_tok;
    float *out;
    int64_t ldo;
};

struct engine {
    const struct model *m;
    const struct kcpu_ops *ops;
    struct tt_pool *pool;
    int n_threads;
    int n_ctx;
    int n_batch;
    int n_past;
    enum tt_type kv_type;
    size_t kv_row_bytes;  /* one position of one layer's K (or V) */
    uint8_t *k_cache;     /* [n_layer][n_ctx][n_head_kv*head_dim] of kv_type */
    uint8_t *v_cache;

    /* Activations for a batch of up to n_batch tokens. */
    float *x;       /* [B][n_embd] residual stream */
    float *xn;      /* [B][n_embd] normed */
    float *q;       /* [B][n_head*head_dim] */
    float *k;       /* [B][kv_dim] */
    float *v;       /* [B][kv_dim] */
    float *attn;    /* [B][n_head*head_dim] */
    float *ffn_a;   /* [B][ff_max] gate, then silu(gate)*up */
    float *ffn_b;   /* [B][ff_max] up */
    float *ffn_out; /* [B][n_embd] */
    float *rope_cs; /* [B][n_rot] cos,sin pairs per position */
    float *scores;  /* [n_threads][n_ctx] attention scratch */
    float *q_half;  /* [n_threads][head_dim] query rounded to F16 */
    uint8_t *act[ENGINE_MATMULS_MAX]; /* converted activations, one per vec_dot type */
    size_t act_bytes;
    /* MoE scratch */
    float *router;     /* [B][n_expert] */
    int32_t *sel;      /* [B][n_expert_used] */
    float *sel_w;      /* [B][n_expert_used] */
    int32_t *gather;   /* [B] token indices routed to the current expert */
    float *xg;         /* [B][n_embd] gathered rows */
    float *yg;         /* [B][n_embd] expert outputs */
};

/* engine_ops.c */
void ops_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps);
/* Convert n_tok rows of x (length n_in, stride ld) to `type`, in parallel. */
void ops_convert(struct engine *e, const float *x, int64_t ld, int64_t n_tok, int64_t n_in,
                 enum tt_type type, uint8_t *dst, size_t dst_row_bytes);
/* Run up to ENGINE_MATMULS_MAX products in one parallel job. */
void ops_matmul(struct engine *e, const struct matmul_task *tasks, int n_tasks);
/* y[t] = W . x[t] for t < n_tok (converts x itself). */
void ops_linear(struct engine *e, const struct model_weight *w, int64_t expert, const float *x,
                int64_t n_tok, float *y);
void ops_attention(struct engine *e, int il, int n_tok);
void ops_rope(const struct engine *e, float *x, int64_t n_tok, int n_heads, const float *cs);
void ops_rope_table(const struct engine *e, int pos0, int n_tok, float *cs);

#endif
