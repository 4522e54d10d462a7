/*
 * plan: which rank holds which slice of which tensor. A pure function of the
 * model's shape, the alignment its weight types demand, and each rank's
 * capacity: no I/O, no globals, so `tutti plan` can print it and the tests can
 * check it exhaustively.
 *
 * Tensor parallelism (Megatron-style), for ANY number of ranks:
 *  - attention: query heads split into contiguous ranges; each rank computes
 *    the KV heads its query heads read (a KV head whose query heads straddle
 *    two ranks is computed on both: GQA groups need not divide evenly, and
 *    fewer KV heads than ranks still works);
 *  - the attention output projection is split by the same columns and the
 *    FFN down projection by the FFN columns; their partial sums meet in one
 *    all-reduce each per layer;
 *  - the output projection is split by vocabulary rows.
 * Column split points are multiples of the activation block of the weights
 * that read those columns (256 for K-quants, 32 for Q4_0/Q8_0, 1 for float
 * types), so every rank quantizes whole activation blocks exactly as one rank
 * does: no weight is re-quantized and per-block products are bit-identical;
 * only the order in which the partial sums are added differs.
 *
 * Invariants of a plan (plan_check asserts them):
 *  1. For each dimension the ranges of consecutive ranks are adjacent and
 *     cover [0, n) exactly; empty ranges are allowed.
 *  2. Every column split point is a multiple of its alignment unit (or n).
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

struct plan_rank {
    struct plan_range head;  /* query heads */
    struct plan_range kv;    /* KV heads computed here */
    struct plan_range ff;    /* dense FFN columns */
    struct plan_range ff_exp; /* expert FFN columns (every expert split the same way) */
    struct plan_range shexp; /* shared expert columns */
    struct plan_range vocab; /* output rows */
    double weight;           /* relative capacity used */
};

struct plan {
    int n_ranks;
    struct plan_rank ranks[]; /* n_ranks entries */
};

/* Alignment units for a loaded model (max over layers of the relevant blocks). */
void plan_align_for_model(const struct model *m, struct plan_align *a);

/* Split for n_ranks with relative capacities `weights` (NULL: even). Returns
 * a malloc'd plan (free with free()), or NULL with TT_EINVAL detail when
 * n_ranks is out of [1, PLAN_RANKS_MAX] or a weight is not positive. */
struct plan *plan_tensor_parallel(const struct model_hparams *hp, const struct plan_align *a,
                                  int n_ranks, const double *weights);
/* Parse --split: "even", "auto" (weights = NULL for the caller to fill), or
 * "2,1,1" (exactly n_ranks positive numbers). Returns 0 or TT_EINVAL. */
int plan_parse_split(const char *s, int n_ranks, double *weights, bool *is_auto);
/* Split [0, n) into n_ranks ranges, proportional to weights, at multiples
 * of unit (the last range ends at n). starts has n_ranks + 1 entries. */
void plan_split_units(int64_t n, int64_t unit, int n_ranks, const double *weights, int64_t *starts);
/* Assert the invariants; used by tests and debug builds. */
void plan_check(const struct plan *p, const struct model_hparams *hp, const struct plan_align *a);

#endif
