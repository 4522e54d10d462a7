/*
 * engine_internal.h: the engine's private state, shared by its files:
 *   engine.c          set-up and teardown
 *   engine_shard.c    this rank's views of the weights (mapped, or copied slices)
 *   engine_forward.c  the layer loop
 *   engine_ops.c      parallel operations (products, attention, rope)
 *   engine_dist.c     steps broadcast from rank 0, gathered logits, distributed sampling
 */
#ifndef TT_ENGINE_INTERNAL_H
#define TT_ENGINE_INTERNAL_H

#include "engine.h"
#include "../moe/moe.h"

#define ENGINE_MATMULS_MAX 4 /* products fused into one parallel job */
#define ENGINE_MOE_TASKS_MAX 64 /* expert products in one job (they share act buffers) */
#define ENGINE_HIST_MAX SAMPLER_HISTORY_MAX /* repetition-penalty window in a step */
#define ENGINE_CAND_SLOTS (ENGINE_CAND_MAX + ENGINE_HIST_MAX) /* candidates per rank */

/* This rank's slice of a weight: rows [0, n_out) of `n_in` columns each; row r
 * of expert x starts at data + x*expert_stride + r*row_stride. For a column
 * slice, data already points at the first column of the slice and
 * row_stride is the full row's size. layout KCPU_LAYOUT_TILE16 (dense
 * weights of CPU layers, packed once by shard_pack): data is the packed
 * matrix and row_stride the unpadded row size, as kcpu.h describes; every
 * product picks its kernel by (layout, type) with kcpu_matmul_get. */
struct engine_weight {
    const uint8_t *data; /* NULL: absent */
    uint32_t type;
    int64_t n_in, n_out;
    size_t row_stride, expert_stride;
    uint32_t layout; /* enum kcpu_layout (last: positional initializers leave it ROWS) */
};

struct engine_layer {
    struct engine_weight wq, wk, wv, wo;
    struct engine_weight w_gate, w_up, w_down;
    struct engine_weight gate_inp, gate_exps, up_exps, down_exps;
    struct engine_weight gate_shexp, up_shexp, down_shexp;
    const float *attn_norm, *ffn_norm;   /* [n_embd] */
    const float *bq, *bk, *bv;           /* local slices, or NULL */
    const float *q_norm, *k_norm;        /* [head_dim], or NULL */
    const float *gate_inp_shexp;         /* [n_embd], or NULL */
};

/* An accelerator backend (engine_cuda.c) runs whole layers on a device.
 * The engine keeps the batch bookkeeping (tok_seq, tok_pos, seq_pos) and the
 * residual stream e->x on the host between calls:
 *   run_layers: layers [il0, il1) for the current batch; reads e->x (n_tok
 *               rows), writes the result back to e->x; the device keeps its own
 *               KV cache for those layers. Partial sums of several ranks are
 *               joined with forward_allreduce (host-staged) or its own NCCL.
 *   logits:     final norm and output rows of this rank for the listed batch
 *               rows into out[n][n_vocab_local] (host); NULL = do it on the CPU.
 *   logits_host: the last one-token batch's logits where the device left
 *               them on the host, and their SAMPLER_BLOCK maxima, or NULL
 *               (then logits); optional.
 * Layers >= n_layers_accel run on the CPU. */
struct engine_accel {
    void *ctx;
    int n_layers_accel;
    int (*run_layers)(void *ctx, struct engine *e, int il0, int il1, int n_tok);
    int (*logits)(void *ctx, struct engine *e, const int32_t *rows, int n, float *out);
    const float *(*logits_host)(void *ctx, const float **block_max);
    /* the last decode token's best tokens in the sampler's order, or NULL */
    const struct sampler_cand *(*cands_host)(void *ctx, int *n);
    void (*destroy)(void *ctx);
    double (*copy_bandwidth_gbs)(void *ctx); /* the device's measured copy bandwidth (0: unknown) */
};
/* Create the CUDA backend for this engine (engine_cuda.c); returns
 * TT_EUNSUPPORTED when built without CUDA or no GPU is usable. */
int engine_accel_cuda_create(struct engine *e, int n_gpu_layers, struct engine_accel *out);

/* Columns of e->widths: what each rank holds of the gathered dimensions. */
enum join_width { JOIN_HEADS, JOIN_FF, JOIN_SHEXP, JOIN_EMBD, JOIN_EXPERT_BEGIN, JOIN_EXPERT_END,
                  JOIN_WIDTHS_COUNT };

/* One product out[t][r] = W[r] . act[t] for t < n_tok, all rows of the view. */
struct matmul_task {
    const struct engine_weight *w;
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
    int n_ctx;           /* positions per sequence */
    int n_batch;
    int n_seq;
    int *seq_pos;        /* [n_seq] positions cached per sequence */
    enum tt_type kv_type;

    /* cluster */
    struct comm *comm;       /* NULL: one rank */
    int rank, n_ranks;
    enum comm_wire wire;
    struct plan_rank slice;  /* what this rank holds */
    bool pipeline;           /* stages of whole layers (plan_pipeline, plan_staged) */
    int stage;               /* this rank's pipeline stage, or PLAN_STAGE_IDLE (holds nothing) */
    int prev_leader, next_leader; /* first rank of the previous / next stage, -1: none */
    int tp_size, tp_rank;    /* the tensor-parallel group: the ranks of this rank's stage */
    struct comm *tp_comm;    /* its communicator: comm, a part of it (comm_split), or NULL */
    bool tp_comm_owned;
    /* The steps' broadcasts, logits and candidate gathers run among rank 0
     * and the ranks holding layers: comm, or its part when a layout leaves
     * ranks out; an idle rank outside it (NULL here) only waits for the stop
     * message. outside[r]: rank r is such a rank. */
    struct comm *step_comm;
    bool step_comm_owned;
    int step_rank, step_size;
    uint8_t *outside;        /* [n_ranks] */
    enum plan_join join;
    int32_t *widths;         /* [n_ranks][JOIN_WIDTHS_COUNT] every rank's slice sizes */
    float *full;             /* [B][max row] a gathered activation (whole rows) */
    float *part;             /* [B][max row] this rank's part of a projection's rows */
    float *gathered;         /* [B][max(row, n_expert_used*n_embd)] all-gather receive buffer */
    size_t *sizes;           /* [n_ranks] all-gather byte counts */
    int n_head_local, n_kv_local; /* heads computed here */
    int n_vocab_local;
    uint8_t *shard;          /* copied weight slices (multi-rank), or NULL */
    uint64_t shard_bytes;
    uint8_t *packed;         /* KCPU_LAYOUT_TILE16 copies of the CPU layers' dense weights, or NULL */
    uint64_t packed_bytes;
    int fd;                  /* the model file, read with pread on several ranks (-1: map) */
    bool remote;             /* no model file here: weights come from rank 0 */
    struct shard_req { uint64_t offset, size; void *dst; } *reqs; /* deferred remote reads */
    int n_reqs, cap_reqs;
    const uint8_t *embd_local; /* remote ranks: a copy of token_embd */
    uint64_t mem_limit;      /* bytes, 0 = none */
    uint64_t buffers_bytes;  /* KV cache and activations */
    const float *output_norm; /* [n_embd] (copied on several ranks) */
    const float *rope_freqs;  /* [n_rot/2] or NULL */
    uint8_t *embd_row;        /* one token_embd row read from the file */

    struct engine_layer *layers; /* n_layer */
    /* MoE: where experts live (engine_moe.c). Each layer's gate/up/down_exps
     * views index experts by local slot: slot_of[il][x] (-1: not here). */
    struct moe_stats moe_stats;
    struct moe_placement *moe_place; /* [n_layer] */
    int32_t *moe_slot_of;            /* [n_layer][n_expert] */
    int32_t *moe_slot_expert;        /* [n_layer][slots] expert in each slot, -1 free */
    uint8_t *moe_buf;                /* slot storage of all layers (several ranks) */
    int moe_slots;                   /* slots per layer on this rank */
    int moe_every;                   /* rebalance check period in steps (0: never) */
    double moe_threshold;            /* rebalance when imbalance exceeds this */
    uint64_t moe_steps;
    struct moe_dealer moe_dealer;    /* this step's pairs to copies (moe_deal) */
    int16_t *moe_pair_rank;          /* [B][n_expert_used] rank computing each pair */
    double moe_dealt_max, moe_dealt_mean; /* sums over layer steps of the dealt rank costs */
    int moe_phys_slots;              /* slots per layer incl. room for arriving copies */
    struct moe_move *moe_move;       /* an expert move in progress, or NULL */
    bool moe_from_ranks;             /* new copies come over the communicator, not the file */
    int64_t moe_move_bytes;          /* bytes moved per step (0: the default of the way) */
    struct moe_check *moe_check;     /* several ranks: the balancer's scratch (engine_moe.c) */
    struct moe_prof *moe_prof;       /* several ranks: where the time goes (engine_moe.c) */
    struct engine_accel accel;   /* ctx NULL: CPU only */
    struct engine_weight output; /* vocab rows of this rank */
    size_t kv_row_bytes;  /* one position of one layer's local K (or V) */
    uint8_t *k_cache;     /* [n_seq][stage layers][n_ctx][n_kv_local*head_dim] of kv_type */
    uint8_t *v_cache;

    /* The batch being computed: sequence and position of each token. */
    int32_t *tok_seq;     /* [B] */
    int32_t *tok_pos;     /* [B] */
    int32_t *rows;        /* [B] rows whose logits are needed */

    /* Activations for a batch of up to n_batch tokens (local widths). */
    float *x;       /* [B][n_embd] residual stream (replicated on every rank) */
    float *xn;      /* [B][n_embd] normed */
    float *q;       /* [B][n_head_local*head_dim] */
    float *k;       /* [B][n_kv_local*head_dim] */
    float *v;       /* [B][n_kv_local*head_dim] */
    float *attn;    /* [B][n_head_local*head_dim] */
    float *ffn_a;   /* [B][ff_max] gate, then silu(gate)*up */
    float *ffn_b;   /* [B][ff_max] up */
    float *ffn_out; /* [B][n_embd] */
    float *rope_cs; /* [B][n_rot] cos,sin pairs per position */
    float *scores;  /* [n_threads][n_ctx] attention scratch */
    float *q_half;  /* [n_threads][head_dim] query rounded to F16 */
    uint8_t *act[ENGINE_MATMULS_MAX]; /* converted activations, one per vec_dot type */
    size_t act_bytes;
    float *logits_local; /* [B][n_vocab_local] (multi-rank) */
    /* MoE scratch */
    float *router;     /* [B][n_expert] */
    int32_t *sel;      /* [B][n_expert_used] */
    float *sel_w;      /* [B][n_expert_used] */
    int32_t *gather;   /* [B] token indices routed to the current expert */
    float *xg;         /* [B][n_embd] gathered rows */
    float *yg;         /* [B][n_embd] expert outputs */
    /* distributed sampling scratch */
    struct sampler_cand *cand;  /* [(n_ranks + 1) * B * ENGINE_CAND_SLOTS] */
    int32_t *step_buf;          /* step payload, grown on demand (not on the decode path) */
    int64_t step_words;
    struct engine_tok *step_toks; /* workers: the step's tokens */
    int step_toks_cap;
};

/* engine_moe.c */
int moe_setup(struct engine *e, const struct engine_opts *opts);
void moe_teardown(struct engine *e);
/* Record the routing of the current batch (e->sel) in the statistics. */
void moe_record(struct engine *e, int il, int64_t n_tok);
/* Deal this layer's routed pairs (e->sel) to expert copies: e->moe_pair_rank. */
void moe_deal_layer(struct engine *e, int il, int64_t n_tok);
/* All ranks: choose new placements from the statistics and start moving
 * the new copies in; `background`: decoding goes on and the switch comes at
 * a later step boundary (moe_move_progress), else the move completes now
 * (after the one in flight, if any). A background rebalance is ignored while
 * a move is in flight. */
int moe_rebalance(struct engine *e, bool background);
/* All ranks, at each step boundary: advance a move in progress; switch to
 * the new placement when every rank has its copies. A failed read or
 * transfer gives the move up (the placement stays) and returns the error
 * (TT_EIO, TT_ECOMM) on every rank. */
int moe_move_progress(struct engine *e);
bool moe_moving(const struct engine *e);
/* Largest imbalance over layers under the current placement. */
double moe_max_imbalance(const struct engine *e);
/* Would a rebalance now move some layer to a clearly better placement? */
bool moe_rebalance_wanted(const struct engine *e);

/* engine_shard.c */
/* madvise the whole pages inside [p, p + bytes). Advice only: failure
 * costs speed or memory, nothing else. */
void engine_advise_pages(const void *p, size_t bytes, int advice);
int shard_build(struct engine *e);
/* After the accelerator took its layers: the dense weights the CPU products
 * read are packed to KCPU_LAYOUT_TILE16 where the kernel table wants it
 * (kcpu_tile16_wanted), into e->packed, and the mapped pages they came from
 * (or, on several ranks, the slice buffer's) are given back. Experts and
 * GPU layers stay in rows. Packing is an optimisation: out of memory or past --mem-limit the
 * weights stay as they are (logged). */
int shard_pack(struct engine *e);
void shard_free(struct engine *e);
/* Bytes [src, src+size) of the model's map into dst: from the map itself on
 * one rank, with pread on several (so the map's pages are never touched). */
int shard_read(struct engine *e, const void *src, size_t size, void *dst);
/* Row `id` of the token embeddings (pointer valid until the next call). */
const void *shard_embd_row(struct engine *e, int32_t id);
/* Collective, at the end of set-up: ranks without the file send rank 0 the
 * list of byte ranges they read (deferred by shard_read) and receive them,
 * each chunk checked with its XXH64; rank 0 serves every such rank. */
int shard_exchange(struct engine *e);

/* Byte offset of (sequence, layer, position) in k_cache / v_cache, which
 * hold the layers of this rank's stage (slice.layers) only. */
static inline size_t kv_offset(const struct engine *e, int seq, int il, int pos)
{
    const int32_t l0 = e->slice.layers.begin, n_l = e->slice.layers.end - l0; /* cached here */
    TT_ASSERT(il >= l0 && il < l0 + n_l);
    return (((size_t)seq * (size_t)n_l + (size_t)(il - l0)) * (size_t)e->n_ctx + (size_t)pos) *
           e->kv_row_bytes;
}

/* engine_forward.c: one batch (at most n_batch tokens) through every layer,
 * each token appended at its sequence's next position (seq_pos advances);
 * then the logits of the listed batch rows into out[n][n_vocab_local]. */
void forward_batch(struct engine *e, const struct engine_tok *toks, int n_tok);
void forward_logits(struct engine *e, const int32_t *rows, int n, float *out);
/* The accelerator's host copy of the last one-token batch's logits and its
 * SAMPLER_BLOCK maxima (engine_accel.logits_host), or NULL. */
const float *forward_logits_host(struct engine *e, const float **block_max);
/* The accelerator's candidates for the last decode token (the best tokens of
 * the whole vocabulary in sampler_cand_cmp order, *n of them), or NULL. */
const struct sampler_cand *forward_cands_host(struct engine *e, int *n);
/* Sum partial results of all ranks (no-op on one rank). */
void forward_allreduce(struct engine *e, float *x, int64_t n);

/* engine_ops.c */
void ops_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps);
/* Convert n_tok rows of x (length n_in, stride ld) to `type`, in parallel. */
void ops_convert(struct engine *e, const float *x, int64_t ld, int64_t n_tok, int64_t n_in,
                 enum tt_type type, uint8_t *dst, size_t dst_row_bytes);
/* Run up to ENGINE_MOE_TASKS_MAX products in one parallel job. */
void ops_matmul(struct engine *e, const struct matmul_task *tasks, int n_tasks);
/* y[t] = W . x[t] for t < n_tok (converts x itself). */
void ops_linear(struct engine *e, const struct engine_weight *w, int64_t expert, const float *x,
                int64_t n_tok, float *y);
void ops_attention(struct engine *e, int il, int n_tok);
void ops_rope(const struct engine *e, float *x, int64_t n_tok, int n_heads, const float *cs);
void ops_rope_table(const struct engine *e, int n_tok, float *cs);

#endif
