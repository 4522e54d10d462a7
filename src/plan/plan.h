/*
 * plan: which rank holds which slice of which tensor. A pure function of the
 * model's shape, the alignment its weight types demand, and each rank's
 * capacity: no I/O, no globals, so `tutti plan` can print it and the tests can
 * check it exhaustively.
 *
 * Tensor parallelism, for ANY number of ranks:
 *  - attention: query heads split into contiguous ranges; each rank computes
 *    the KV heads its query heads read (a KV head whose query heads straddle
 *    two ranks is computed on both: GQA groups need not divide evenly, and
 *    fewer KV heads than ranks still works);
 *  - the FFN gate/up projections are split by FFN columns (their rows);
 *  - the output projection is split by vocabulary rows.
 * The attention output and FFN down projections are joined in one of two ways:
 *  PLAN_JOIN_GATHER (default, exact): the per-head attention outputs and the
 *    FFN hidden activations are all-gathered, and each rank computes whole
 *    rows (`embd` range) of the projection, which are all-gathered again. Every
 *    dot product is the one a single rank computes, so the logits are
 *    bit-identical for any number of ranks. Four all-gathers per layer.
 *  PLAN_JOIN_SUM (Megatron): the projections are split by the same columns and
 *    their partial sums meet in one all-reduce each per layer: half the
 *    collectives (better over slow links), but the partial sums add in
 *    another order, so results differ at rounding level. Column split points
 *    are then multiples of the activation block of the weights that read them
 *    (256 for K-quants, 32 for Q4_0/Q8_0, 1 for float types), so every rank
 *    quantizes whole activation blocks exactly as one rank does.
 * Experts (MoE) are placed whole on ranks (expert parallelism); each rank
 * computes its experts' outputs for the tokens routed to them, and the
 * outputs are gathered and added in expert order on every rank, so MoE layers
 * are exact too.
 *
 * Stages (pipeline and hybrid layouts): the layers are cut into contiguous
 * ranges, one per stage; each stage is a tensor-parallel group of one or
 * more ranks (any ranks, in rank order within the stage), split among
 * themselves as above; only the last stage holds the output rows. A rank
 * may be idle (PLAN_STAGE_IDLE): it holds nothing and only follows the
 * steps, so a layout can leave slow ranks out.
 *
 * Invariants of a plan (plan_check asserts them):
 *  1. Within each stage, for each dimension the ranges of its ranks (in
 *     rank order) are adjacent and cover [0, n) exactly; empty ranges are
 *     allowed. Vocabulary: the last stage covers it, the others hold none.
 *     Idle ranks hold empty ranges. Stage st's layers follow stage st-1's,
 *     all ranks of a stage hold the same layers, and the stages cover
 *     [0, n_layer); every stage has a rank.
 *  2. With PLAN_JOIN_SUM, every column split point is a multiple of its
 *     alignment unit (or n).
 *  3. kv range = the KV heads of the rank's query heads.
 */
#ifndef TT_PLAN_H
#define TT_PLAN_H

#include "../model/model.h"

#define PLAN_RANKS_MAX 4096

/* Granularity of column splits, from the weight types (model-dependent). */
struct plan_align {
    int32_t head_unit;   /* query heads per split unit (wo's activation block / head_dim, >= 1) */
    int32_t ff_unit;     /* FFN columns per unit (ffn_down's activation block) */
    int32_t ff_exp_unit; /* expert FFN columns per unit */
    int32_t shexp_unit;  /* shared-expert columns per unit */
};

struct plan_range {
    int32_t begin, end;
};

enum plan_join { PLAN_JOIN_GATHER, PLAN_JOIN_SUM, PLAN_JOIN_COUNT };

struct plan_rank {
    struct plan_range layers; /* layers held (pipeline stages; all layers in tensor parallel) */
    struct plan_range head;  /* query heads */
    struct plan_range embd;  /* output rows of the attention-output and FFN-down projections (GATHER) */
    struct plan_range expert; /* experts placed here (MoE) */
    struct plan_range kv;    /* KV heads computed here */
    struct plan_range ff;    /* dense FFN columns */
    struct plan_range ff_exp; /* expert FFN columns (every expert split the same way) */
    struct plan_range shexp; /* shared expert columns */
    struct plan_range vocab; /* output rows */
    double weight;           /* relative capacity used */
    int32_t stage;           /* pipeline stage (0 first), or PLAN_STAGE_IDLE */
};

#define PLAN_STAGE_IDLE (-1)

struct plan {
    int n_ranks;
    enum plan_join join;
    bool pipeline;           /* n_stages > 1: stages of whole layers */
    int n_stages;            /* 1: tensor parallel over the ranks that are not idle */
    struct plan_rank ranks[]; /* n_ranks entries */
};

/* Elements of one activation block of a weight type (the block of its
 * vec_dot type: 256 for K-quants, 32 for Q4_0/Q8_0, 1 for float types). */
int32_t plan_act_block(uint32_t type);
/* Smallest count of `width`-sized items whose total is a multiple of block. */
int32_t plan_units_per_block(int32_t block, int32_t width);
/* Alignment units for a loaded model (max over layers of the relevant blocks). */
void plan_align_for_model(const struct model *m, struct plan_align *a);

/* Split for n_ranks with relative capacities `weights` (NULL: even). Returns
 * a malloc'd plan (free with free()), or NULL with TT_EINVAL detail when
 * n_ranks is out of [1, PLAN_RANKS_MAX] or a weight is not positive. */
struct plan *plan_tensor_parallel(const struct model_hparams *hp, const struct plan_align *a,
                                  int n_ranks, const double *weights, enum plan_join join);
/* Pipeline parallelism: contiguous layer ranges per rank, proportional to
 * weights (NULL: even); every rank holds whole layers; the last stage holds
 * the output projection. A stage with no layers only passes activations on.
 * Returns a malloc'd plan or NULL (TT_EINVAL detail). */
struct plan *plan_pipeline(const struct model_hparams *hp, int n_ranks, const double *weights);
/* Stages of tensor-parallel groups (hybrid; also pipelines and layouts
 * leaving ranks out): rank r belongs to stage stage_of[r] in [0, n_stages),
 * or is idle (PLAN_STAGE_IDLE); each stage needs a rank. Layers go to the
 * stages in proportion to the sum of their ranks' weights (layer_ends,
 * when not NULL, gives stage st's end instead: increasing, the last
 * n_layer), the stage's dimensions to its ranks in proportion to their
 * weights (NULL: even). Returns a malloc'd plan or NULL (TT_EINVAL detail). */
struct plan *plan_staged(const struct model_hparams *hp, const struct plan_align *a, int n_ranks,
                         const int32_t *stage_of, int n_stages, const int32_t *layer_ends,
                         const double *weights, enum plan_join join);
/* Parse --split: "even", "auto" (weights = NULL for the caller to fill), or
 * "2,1,1" (exactly n_ranks positive numbers). Returns 0 or TT_EINVAL. */
int plan_parse_split(const char *s, int n_ranks, double *weights, bool *is_auto);
/* Split [0, n) into n_ranks ranges, proportional to weights, at multiples
 * of unit (the last range ends at n). starts has n_ranks + 1 entries. */
void plan_split_units(int64_t n, int64_t unit, int n_ranks, const double *weights, int64_t *starts);
/* Assert the invariants; used by tests and debug builds. */
void plan_check(const struct plan *p, const struct model_hparams *hp, const struct plan_align *a);

#endif
