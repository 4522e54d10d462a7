/*
 * engine: the forward pass, the KV cache and the sampler.
 *
 * An engine evaluates tokens of one sequence on top of its KV cache:
 * engine_eval(tokens at positions n_past .. n_past+n-1) appends their keys and
 * values to the cache and returns logits for the last or for every position.
 * Prompts go through in batches of up to n_batch tokens (matrix-matrix
 * products); decode is the same call with n = 1 (matrix-vector).
 *
 * Numerics follow the reference engine (llama.cpp) so results match its
 * goldens: activations are converted to each weight's vec_dot type before a
 * product (Q8_0 / Q8_K / F16), RMSNorm sums in double, RoPE angles are built
 * by repeated multiplication, and with an F16 KV cache queries are rounded to
 * F16 before the key products, as its flash-attention path does.
 *
 * Memory: everything is allocated by engine_create(); engine_eval() does not
 * allocate. On one rank weights stay in the model's read-only map; on several,
 * each rank copies its slices into its own memory (so it holds about 1/N of
 * the weights) and the map is not touched again.
 *
 * Cluster (SPMD): every rank builds an engine with the same comm and plan.
 * Rank 0 drives: each of its engine_eval / engine_eval_sample /
 * engine_truncate calls is broadcast as a step that the other ranks, running
 * engine_worker_run(), execute in lockstep. Two all-reduces per layer join
 * the partial sums; logits are gathered to rank 0 only when asked for, and
 * sampling reduces each rank's vocabulary slice to ENGINE_CAND_MAX candidates.
 */
#ifndef TT_ENGINE_H
#define TT_ENGINE_H

#include "../comm/comm.h"
#include "../kcpu/kcpu.h"
#include "../model/model.h"
#include "../plan/plan.h"

#define ENGINE_BATCH_DEFAULT 256
#define ENGINE_CTX_DEFAULT 4096

enum engine_kv {
    ENGINE_KV_F16, /* default, as llama.cpp */
    ENGINE_KV_F32,
    ENGINE_KV_COUNT
};

struct engine_opts {
    int n_threads;          /* 0: all cores */
    int n_ctx;              /* 0: min(model's training context, ENGINE_CTX_DEFAULT) */
    int n_batch;            /* 0: ENGINE_BATCH_DEFAULT */
    enum engine_kv kv;      /* KV cache element type; zero = F16 */
    /* Cluster: NULL comm = one rank. With a comm, `plan` says what every rank
     * holds (NULL: an even tensor-parallel split) and `wire` how partial sums
     * travel. */
    struct comm *comm;
    const struct plan *plan;
    enum comm_wire wire;
    enum plan_join join;    /* without a plan: GATHER (exact, default) or SUM */
    int n_seq;              /* sequences with their own KV cache (0: 1), for batching */
    int n_gpu_layers;       /* layers on the GPU: -1 = as many as fit (default when a GPU
                               is found), 0 = CPU only */
    /* MoE on several ranks: spare expert slots per rank and layer for hot
     * copies (default 2; negative = 0), and live rebalancing: every
     * moe_every steps (default 16; negative = never) when the imbalance
     * exceeds moe_threshold (default 1.1). */
    int moe_replicas;
    int moe_every;
    double moe_threshold;
    /* Live moves: new expert copies are read from the model file by each
     * rank's threads at step boundaries, or come over the communicator from
     * the rank holding the expert (always when a rank has no file; forced by
     * moe_move_over_comm), moe_move_bytes per step (default 256 MiB per rank
     * from the file, 64 MiB over the communicator). */
    bool moe_move_over_comm;
    int64_t moe_move_bytes;
    /* Refuse (TT_ENOMEM, saying how much is needed) when this rank's weights,
     * KV cache and buffers would exceed this many bytes; 0 = no limit. */
    uint64_t mem_limit_bytes;
};

enum engine_logits {
    ENGINE_LOGITS_NONE,  /* only fill the cache */
    ENGINE_LOGITS_LAST,  /* logits[n_vocab] for the last token */
    ENGINE_LOGITS_ALL,   /* logits[n][n_vocab] */
    ENGINE_LOGITS_COUNT
};

struct engine;
struct sampler;

/* Errors: TT_ENOMEM, TT_EINVAL (bad options, with detail). The model must
 * outlive the engine. */
int engine_create(struct engine **out, const struct model *m, const struct engine_opts *opts);
void engine_destroy(struct engine *e);

/* Evaluate n tokens after the cached ones. Token ids are checked against the
 * vocabulary (TT_EINVAL); exceeding the context gives TT_ERANGE with a
 * message naming the limit. On error the cache is unchanged. */
int engine_eval(struct engine *e, const int32_t *tokens, int n, enum engine_logits mode,
                float *logits);
/* Evaluate and choose the next token with distributed sampling (rank 0).
 * Same result as sampling full logits, except that with top-k off only the
 * ENGINE_CAND_MAX best tokens of each rank are candidates. */
int engine_eval_sample(struct engine *e, const int32_t *tokens, int n, struct sampler *s,
                       int32_t *next);
/* Ranks > 0: follow rank 0's steps until it calls engine_stop_workers().
 * Returns 0, or the error that ended the loop. */
int engine_worker_run(struct engine *e);
/* Rank 0: release the workers (they return from engine_worker_run). */
void engine_stop_workers(struct engine *e);
/* ---- several sequences at once (continuous batching) ----
 * Sequences 0..n_seq-1 each have their own KV cache of n_ctx positions.
 * One engine_decode() call runs tokens of any mix of sequences through one
 * forward pass (prompt chunks of new requests beside single decode tokens
 * of running ones): each token is appended at its sequence's next position,
 * in the order given. For every token with `sample` set, the next token is
 * chosen with samplers[seq] (distributed sampling, as engine_eval_sample) and
 * written to next[i] for the i-th such token. Errors as engine_eval; on
 * error no sequence changes. engine_eval* and engine_truncate act on
 * sequence 0. */
#define ENGINE_SEQ_MAX 1024
struct engine_tok {
    int32_t id;
    int32_t seq;
    bool sample;
};
int engine_decode(struct engine *e, const struct engine_tok *toks, int n,
                  struct sampler *const *samplers, int32_t *next);
int engine_n_seq(const struct engine *e);
int engine_seq_n_past(const struct engine *e, int seq);
/* Forget positions >= n_past of one sequence (0 frees it for a new request). */
void engine_seq_truncate(struct engine *e, int seq, int n_past);
/* ---- MoE load statistics and balancing ----
 * Tokens routed to each expert of a layer over the last ENGINE_MOE_WINDOW
 * steps, and max/mean rank load under the current placement. */
#define ENGINE_MOE_WINDOW 64
int engine_moe_loads(const struct engine *e, int layer, uint64_t *loads /* [n_expert] */,
                     double *imbalance);
/* Rank 0: re-place experts now (all ranks, at this step boundary; the copies
 * are moved before it returns). */
int engine_moe_rebalance(struct engine *e);
/* Is an expert move (from live balancing) in progress on this rank? */
bool engine_moe_moving(const struct engine *e);
int engine_rank(const struct engine *e);
int engine_n_ranks(const struct engine *e);
int engine_n_past(const struct engine *e);
int engine_n_ctx(const struct engine *e);
int engine_n_threads(const struct engine *e);
/* CUDA GPUs this process can use (0 in a build without CUDA). */
int engine_gpu_count(void);
/* Layers this rank runs on a GPU (0: CPU only). */
int engine_n_gpu_layers(const struct engine *e);
/* This rank's GPU device-to-device copy bandwidth in GB/s (read + write),
 * measured now; 0 without a GPU or when the probe's buffers do not fit. */
double engine_gpu_bandwidth_gbs(struct engine *e);
/* Forget positions >= n_past (0 clears the sequence). */
void engine_truncate(struct engine *e, int n_past);
const struct model *engine_model(const struct engine *e);
/* Bytes held by the KV cache and scratch buffers. */
uint64_t engine_memory_bytes(const struct engine *e);

#define ENGINE_CAND_MAX 256
#define SAMPLER_HISTORY_MAX 256 /* longest repetition-penalty window */

/* ---- sampling ---- */
struct sampler_opts {
    float temperature;   /* <= 0: greedy */
    int top_k;           /* 0: off */
    float top_p;         /* 1: off */
    float min_p;         /* 0: off */
    float repeat_penalty; /* 1: off */
    int repeat_last_n;   /* window for the penalty */
    uint64_t seed;
};
struct sampler {
    struct sampler_opts opts;
    uint64_t rng;
    int n_vocab;
    struct sampler_cand { int32_t id; float logit; } *cand; /* n_vocab scratch */
    float *probs;        /* n_vocab scratch */
    int32_t *blocks;     /* n_vocab / SAMPLER_BLOCK + 1 scratch: blocks a top-k scan reads */
    int32_t *history;    /* last repeat_last_n tokens, ring */
    int n_history;
    int history_pos;
};
void sampler_opts_default(struct sampler_opts *o);
int sampler_init(struct sampler *s, const struct sampler_opts *o, int n_vocab);
void sampler_free(struct sampler *s);
/* Pick the next token from logits[n_vocab] (not modified). */
int32_t sampler_sample(struct sampler *s, const float *logits);
/* The same pick, given block_max[b] = the largest of logits[b * SAMPLER_BLOCK
 * .. (b + 1) * SAMPLER_BLOCK) (NaN ignored; NULL: computed here): greedy and
 * top-k then read only the blocks that can hold a candidate. */
#define SAMPLER_BLOCK 64
int32_t sampler_sample_maxima(struct sampler *s, const float *logits, const float *block_max);
/* The same pick from c[0..n), the n best tokens of the vocabulary in
 * sampler_cand_cmp order, when they are all it needs (no repetition
 * penalty, a top-k cut of at most n below the vocabulary, or greedy);
 * else -1, and nothing is drawn. */
int32_t sampler_sample_top(struct sampler *s, const struct sampler_cand *c, int n);
/* The k best of n logits as candidates (ids id0 + i) into c[0..k), in
 * qsort order; returns min(k, n). */
int sampler_top_k(const float *logits, int n, int32_t id0, int k, struct sampler_cand *c);
/* qsort order of candidates: higher logit first, then lower id. */
int sampler_cand_cmp(const void *a, const void *b);
/* Pick from candidates (ids and raw logits, any order; modified). `n_vocab`
 * candidates means the full distribution. Used by distributed sampling. */
int32_t sampler_sample_cands(struct sampler *s, struct sampler_cand *c, int n);
/* Record a token (prompt or generated) for the repetition penalty. */
void sampler_accept(struct sampler *s, int32_t id);

#endif
