/*
 * plan_cost: how fast a model would run on a cluster, for every way of
 * splitting it, and which way to choose. Part of the plan module (pure: no
 * I/O, no globals, no clock); `tutti plan` prints it, docs/PLANNER.md gives
 * the formulas and tests/test_plan_cost.c checks it over many shapes.
 *
 * Three inputs:
 *  - the model, reduced to bytes and multiply-adds per layer and per part
 *    (how each part splits under tensor parallelism), from a GGUF file or
 *    from a shape and a quantization mix (plan_model_from_shape), so a user
 *    can plan for a model without having it;
 *  - the cluster: per rank its memory read bandwidth, compute speed, memory
 *    and a fixed cost per layer; per pair of ranks the link latency and
 *    bandwidth; which ranks share a host (from `tutti topo --json` or a
 *    hand-written description, parsed by plan_cluster_parse in
 *    plan_cluster.c, the one file that sees the JSON library);
 *  - the workload: prompt length, context, sequences decoded together.
 *
 * Candidates (plan_search): every single rank; tensor parallelism (TP) over
 * groups of ranks; pipeline parallelism (PP) over ranks, layers split into
 * contiguous stages sized by speed and memory; hybrids, TP inside groups of
 * closely linked ranks and PP across the groups; the fastest ranks of each,
 * the slower ones left out; both TP joins (gather: exact, 4 all-gathers per
 * layer; sum: 2 all-reduces). Each is predicted (decode tok/s, TTFT, memory
 * per rank) and the best that fits is chosen.
 *
 * Invariants of a result (asserted):
 *  1. A chosen layout fits: every rank's predicted memory <= its free memory.
 *  2. With no layout restriction, the chosen layout is never predicted slower
 *     (by the objective) than the best single rank that holds the model.
 *  3. Results depend only on the inputs (deterministic, ties broken by
 *     candidate order: fewer ranks first, exact join first).
 *  4. A candidate's stages cover the layers [0, n_layer) in order, each
 *     stage at least one layer; its ranks are distinct.
 */
#ifndef TT_PLAN_COST_H
#define TT_PLAN_COST_H

#include "plan.h"

/* ---- the model as the cost model sees it ---- */

/* Parts of a layer, by how tensor parallelism splits them. */
enum plan_part {
    PLAN_PART_NORM,     /* vectors every rank holds: norms, q/k norms, shared-expert gate */
    PLAN_PART_Q,        /* wq, bq: split by query heads */
    PLAN_PART_KV,       /* wk, wv, bk, bv: split by KV heads (straddling heads on both ranks) */
    PLAN_PART_O,        /* wo: embd rows (gather join) or head columns (sum join) */
    PLAN_PART_UP,       /* w_gate, w_up: split by FFN columns */
    PLAN_PART_DOWN,     /* w_down: embd rows (gather) or FFN columns (sum) */
    PLAN_PART_ROUTER,   /* gate_inp: every rank */
    PLAN_PART_EXP_UP,   /* gate_exps + up_exps of ONE expert (all experts / n_expert) */
    PLAN_PART_EXP_DOWN, /* down_exps of one expert */
    PLAN_PART_SH_UP,    /* gate_shexp, up_shexp: split by shared-expert columns */
    PLAN_PART_SH_DOWN,  /* down_shexp: embd rows (gather) or columns (sum) */
    PLAN_PART_COUNT
};

struct plan_layer_cost {
    uint64_t bytes[PLAN_PART_COUNT]; /* stored bytes */
    uint64_t elems[PLAN_PART_COUNT]; /* weights (one multiply-add each per token) */
};

struct plan_model {
    struct model_hparams hp;
    struct plan_align align;        /* column alignment of the sum join */
    struct plan_layer_cost *layers; /* [hp.n_layer], owned */
    uint64_t embd_bytes;            /* token_embd, whole */
    uint64_t embd_row_bytes;        /* one row of it (read per token) */
    uint64_t output_bytes;          /* output matrix (= token_embd when tied) */
    uint64_t output_elems;
    uint64_t output_norm_bytes;
    uint32_t output_type;   /* the output matrix's type (TT_TYPE_COUNT: none) */
    uint64_t file_bytes;    /* what one rank maps: the whole file (or all tensors) */
    uint32_t kv_elem_bytes; /* bytes of one KV cache element (2: F16, the default) */
    /* Weights (multiply-adds per token) stored in each type, over the layers
     * (all experts) and the output matrix: which kernels a prompt runs. */
    uint64_t elems_by_type[TT_TYPE_COUNT];
    /* Bytes of the weights one decode token reads (the used experts' share of
     * the experts) in each type, over the layers and the output matrix; with
     * the embedding row and the output norm they add up to
     * plan_model_bytes_per_token: which kernels a decode step streams. */
    uint64_t decode_bytes_by_type[TT_TYPE_COUNT];
};

/* From a loaded model: its tensors' real types and sizes. Errors: TT_ENOMEM. */
int plan_model_from_model(struct plan_model *pm, const struct model *m);
/* From a shape and a type mix, without a file: the tensors and types `tutti
 * gen` would write (model_visit_layer and model_gen's *_M mix), so the bytes
 * equal those of the generated file's tensors. hp must be complete (head_dim,
 * n_ff_exp, ...). Errors: TT_EINVAL (with detail) for a shape the
 * architecture cannot have, TT_ENOMEM. */
int plan_model_from_shape(struct plan_model *pm, const struct model_hparams *hp, enum tt_type base,
                          bool mix_m, bool tied_output);
void plan_model_free(struct plan_model *pm);
/* Weight bytes read to decode one token (used experts only), as
 * model_bytes_per_token. */
uint64_t plan_model_bytes_per_token(const struct plan_model *pm);
/* The share (0 to 1) of the model's multiply-adds per token on weights of
 * `type` (elems_by_type); 0 for a model without weights. */
double plan_model_type_share(const struct plan_model *pm, enum tt_type type);
/* The rate of a mix of weight types: amount[t] of the work is on weights of
 * type t, which go at rate[t] (GB/s, GFLOP/s); since the times add, the mix
 * goes at sum(amount) / sum(amount_t / rate_t). A type without a rate
 * (<= 0) goes at `other`, or with other <= 0 is left out. 0 when nothing
 * is left. */
double plan_mix_rate(const uint64_t amount[TT_TYPE_COUNT], const double rate[TT_TYPE_COUNT], double other);

/* ---- the cluster ---- */

#define PLAN_CLUSTER_RANKS_MAX 64
#define PLAN_CLUSTER_JSON_MAX (1 << 20) /* bytes of a cluster description */
#define PLAN_HOST_MAX 64
#define PLAN_NAME_MAX 128

struct plan_hw_rank {
    char host[PLAN_HOST_MAX];
    char device[PLAN_NAME_MAX]; /* free text, may be empty */
    double read_gbs;            /* memory read bandwidth, GB/s (1e9 bytes) */
    double bw_efficiency;       /* fraction of read_gbs a decode step reaches, (0, 1] */
    double gflops;              /* matrix-product speed on quantized weights, GFLOP/s */
    double attn_gflops;         /* attention products over the KV cache, GFLOP/s */
    double host_read_gbs;       /* bandwidth the ranks of its host share; 0: its own memory */
    double host_gflops;         /* compute the ranks of its host share; 0: its own cores */
    double mem_avail_gib;       /* memory tutti may use, GiB */
    double mem_total_gib;       /* informative */
    double overhead_us;         /* fixed cost per layer and step (launches, syncs), >= 0 */
    double step_overhead_us;    /* fixed cost per forward pass (a decode step, a prompt chunk):
                                 * graph launch, host-device copies, the step's bookkeeping; >= 0 */
    double token_overhead_us;   /* cost per token of a forward pass outside its layers: the
                                 * embedding rows, RoPE tables, copies of the residual rows to
                                 * and from a device; >= 0 */
    double jitter;              /* relative spread (std. dev.) of its time between two joins, >= 0 */
    /* GB/s of one-token products on weights of each type, as `tutti topo`
     * measures them (matvec_type_gbs); 0: not measured. plan_cluster_for_model
     * turns them into bw_efficiency for a model's mix of types. */
    double matvec_type_gbs[TT_TYPE_COUNT];
};

struct plan_link {
    double latency_us;         /* one-way latency of a small message */
    double bandwidth_gbs;      /* GB/s of large messages, one way (pipeline sends) */
    double bandwidth_both_gbs; /* GB/s each way while both ways carry data (collectives);
                                * 0: bandwidth_gbs (a full-duplex link) */
    double burst_kib;          /* a shaped link's token bucket: KiB a message may carry at
                                * once after the link has been idle, refilled at
                                * bandwidth_gbs; 0: none (every byte at the rate) */
};

struct plan_cluster {
    char name[PLAN_NAME_MAX];
    int n_ranks;
    struct plan_hw_rank ranks[PLAN_CLUSTER_RANKS_MAX];
    struct plan_link links[PLAN_CLUSTER_RANKS_MAX][PLAN_CLUSTER_RANKS_MAX]; /* symmetric */
};

/* Parse a cluster description (JSON, docs/PLANNER.md; `tutti topo --json`
 * output is one). Fills *c (memory the caller owns, ~100 KiB). Errors:
 * TT_EFORMAT with a detail naming the field ("ranks[2].read_gbs: must be a
 * number > 0") or the JSON syntax error's line and column; TT_ERANGE for
 * too many ranks or too long a text. Never crashes on any input. */
int plan_cluster_parse(struct plan_cluster *c, const char *text, size_t len);
/* Check a cluster built in code: TT_EINVAL with detail if a figure is out
 * of range. plan_cluster_parse ends with it. */
int plan_cluster_check(const struct plan_cluster *c);
/* Whether two ranks share a host. */
bool plan_cluster_same_host(const struct plan_cluster *c, int a, int b);
/* Fit the ranks that have per-type product speeds (matvec_type_gbs) to
 * this model: bw_efficiency becomes the rate its decode bytes stream at,
 * sum(bytes) / sum(bytes_t / gbs_t), over read_gbs (clamped to [0.05, 1]
 * as matvec_gbs is), a type not measured counting at the rank's previous
 * read_gbs * bw_efficiency. Ranks without such figures are unchanged. */
void plan_cluster_for_model(struct plan_cluster *c, const struct plan_model *pm);
/* A link's GB/s each way while both ways carry data (bandwidth_both_gbs,
 * or bandwidth_gbs where that is 0). */
double plan_link_both_gbs(const struct plan_link *l);

/* ---- the workload ---- */

enum plan_objective {
    PLAN_OBJECTIVE_DECODE, /* highest decode tok/s, then lowest TTFT */
    PLAN_OBJECTIVE_TTFT,   /* lowest TTFT, then highest decode tok/s */
    PLAN_OBJECTIVE_COUNT
};

enum plan_layout {
    PLAN_LAYOUT_SINGLE, /* one rank holds everything */
    PLAN_LAYOUT_TP,     /* one tensor-parallel group */
    PLAN_LAYOUT_PP,     /* pipeline stages of one rank each */
    PLAN_LAYOUT_HYBRID, /* pipeline stages of tensor-parallel groups */
    PLAN_LAYOUT_COUNT
};

struct plan_workload {
    int32_t prompt_tokens; /* prompt length for TTFT; decode attends over it too (>= 1) */
    int32_t n_ctx;         /* KV cache positions per sequence (memory), >= prompt_tokens */
    int32_t n_batch;       /* prompt tokens per forward pass (ENGINE_BATCH_DEFAULT) */
    int32_t n_streams;     /* sequences decoded together; 1 = single stream */
    enum plan_objective objective;
    uint32_t layouts; /* mask of 1u << enum plan_layout to consider; 0 = all (auto) */
    bool full_logits; /* each step returns the last token's full logits to rank 0 (`tutti
                       * bench`, `tutti logits`) instead of sampling (run, serve) */
    bool even_split;  /* the engine's --split even: equal shares of a tensor-parallel
                       * group's heads and columns, and layers per stage in proportion
                       * to its ranks, instead of shares sized by each rank's speed */
};

/* ---- candidates and the choice ---- */

struct plan_stage {
    int32_t layer_begin, layer_end; /* layers [begin, end) */
    int32_t rank_begin, rank_end;   /* its ranks: candidate ranks[rank_begin, rank_end) */
    double decode_s;                /* its part of a decode step (compute and TP joins) */
    double prefill_s;               /* its part of the prompt */
};

struct plan_cand_rank {
    int32_t rank; /* cluster rank */
    int32_t stage;
    struct plan_rank slice; /* heads, kv, embd, ff, experts, vocab of its TP group */
    uint64_t weight_bytes;  /* weights it holds */
    uint64_t kv_bytes;      /* its KV cache */
    uint64_t mem_bytes;     /* weights + KV cache + buffers */
};

struct plan_candidate {
    enum plan_layout layout;
    enum plan_join join; /* TP and hybrid */
    int32_t n_stages, n_ranks;
    struct plan_stage stages[PLAN_CLUSTER_RANKS_MAX];
    struct plan_cand_rank ranks[PLAN_CLUSTER_RANKS_MAX];
    bool fits;            /* every rank's memory suffices */
    int32_t short_rank;   /* !fits: the rank most short of memory */
    double decode_step_s; /* one decode round: every stream advances one token */
    double decode_tok_s;  /* tokens per second, all streams together */
    double ttft_s;        /* prompt in, first token out (one stream) */
    double comm_s;        /* of decode_step_s: collectives and stage-to-stage sends */
};

enum plan_verdict {
    PLAN_VERDICT_FASTER, /* several ranks beat the best single rank */
    PLAN_VERDICT_SINGLE, /* one rank is best: the cluster brings no speed */
    PLAN_VERDICT_MEMORY, /* no rank holds the model alone: the cluster is used for memory */
    PLAN_VERDICT_NO_FIT, /* no layout fits */
    PLAN_VERDICT_SLOWER, /* a forced layout (workload.layouts) is slower than the best single rank
                          */
    PLAN_VERDICT_COUNT
};

#define PLAN_CANDIDATES_MAX 512

struct plan_result {
    int n_cands;
    struct plan_candidate *cands; /* [n_cands], owned */
    int chosen;                   /* index into cands, -1 if nothing fits */
    int best_single;              /* fastest single rank that fits, -1 if none */
    enum plan_verdict verdict;
};

/* Predict every candidate layout and choose. The cluster must pass
 * plan_cluster_check. Errors: TT_EINVAL (bad workload or cluster, with
 * detail), TT_ENOMEM. On success the caller frees with plan_result_free. */
int plan_search(struct plan_result *res, const struct plan_model *pm, const struct plan_cluster *c,
                const struct plan_workload *w);
void plan_result_free(struct plan_result *res);

/* The engine's plan (plan.h) for running candidate cd on a cluster of
 * n_ranks ranks (cd's rank ids must be below it): cd's ranks in its stages,
 * with its layers and TP splits; every other rank idle. Returns a malloc'd
 * plan, or NULL (TT_EINVAL, TT_ENOMEM detail). */
struct plan *plan_from_candidate(const struct plan_model *pm, const struct plan_candidate *cd,
                                 int n_ranks);

/* ---- a rank described by timing the engine itself (plan_fit.c) ---- */

/* What one rank measured running the engine on two models of one shape
 * that differ only in their layer count (`tutti plan` on a GPU, or with
 * --time-engine: n and 2n layers). Seconds of wall clock, as `tutti bench`
 * takes them. */
struct plan_engine_times {
    const struct plan_model *model[2]; /* fewer layers first */
    int32_t prompt_tokens[2];          /* two prompt lengths, shorter first (may be equal) */
    int32_t n_batch;                   /* prompt tokens per forward pass */
    double decode_s[2];                /* [model]: one decode step after prompt_tokens[1] tokens */
    double prompt_s[2][2];             /* [model][length]: the prompt from an empty cache to
                                        * its last token's logits */
};

/* Fit rank *h to the engine's measured times: overhead_us and
 * step_overhead_us from the decode steps (the layer count's difference
 * gives a layer's, the rest the step's), token_overhead_us from what the
 * prompts take beyond their layers (a pass's cost that grows with its
 * tokens), gflops and attn_gflops from the
 * prompts (a layer's time at two lengths: the products grow with the
 * tokens, attention with their square; with one length, or a split that is
 * implausible (products over twice the speed h's kernels measured, or
 * attention faster than products), both speeds scaled by one factor that
 * reproduces the longer prompt). read_gbs, bw_efficiency and the
 * memory figures are kept: the bytes' time comes from them, the fit puts
 * everything else in the fitted figures. With the fitted figures the cost
 * model reproduces the six times (up to the clamping of figures at 0);
 * *worst_rel gets the largest relative difference left. h must pass
 * plan_cluster_check as a rank. Errors: TT_EINVAL (times not positive,
 * models not of one shape with different layer counts), TT_ENOMEM. */
int plan_fit_engine(struct plan_hw_rank *h, const struct plan_engine_times *t, double *worst_rel);

const char *plan_layout_name(enum plan_layout layout);
/* Parse "auto", "single", "tp", "pp", "hybrid" into a layout mask. */
int plan_parse_layouts(const char *s, uint32_t *mask);
/* Default workload: 512-token prompt, ENGINE-sized context and batch, one stream. */
void plan_workload_default(struct plan_workload *w);

#endif
