/*
 * moe: expert load statistics and expert placement for mixture-of-experts
 * layers spread over ranks.
 *
 * Statistics: per layer and expert, the tokens routed over a sliding window
 * of the last `window` steps (a ring of per-step counts and their running
 * sum). Every rank computes the same routing, so every rank holds the same
 * statistics and reaches the same placement without exchanging them.
 *
 * Placement: each expert has 1..n_ranks copies on distinct ranks; a rank has
 * `slots` places per layer. moe_balance() chooses copies and places them
 * (greedy replication, then bin packing; the EPLB approach) so the most
 * loaded rank's work is small over the window.
 *
 * Dealing: within one step, moe_deal() gives each (token, expert) pair of
 * the step to one copy of its expert so that this step's most loaded rank
 * has little work: a placement balanced over the window is not balanced per
 * step when the copies of several hot experts are all chosen on the same
 * rank at once (a decode step has only n_expert_used pairs). The cost of a
 * rank in a step is, per expert copy it computes, MOE_DEAL_COPY_COST (reading
 * the expert's weights) plus one per token. Every rank deals the same pairs
 * the same way (the routing is the same everywhere). The window's steps,
 * dealt again under a candidate placement, tell what it would cost in time
 * (moe_window_dealt_cost): a placement whose load split is uneven may still
 * let dealing give every rank the same work in each step. All functions
 * here are pure.
 */
#ifndef TT_MOE_H
#define TT_MOE_H

#include "../base/base.h"

/* The router of one token: the n_expert logits in p become softmax
 * probabilities (in place); sel/w get the n_used most probable experts (ties
 * to the lower id) and their probabilities, renormalized to sum 1 when
 * `renorm` (qwen3moe, Mixtral), as the reference engine does. */
void moe_route_token(float *p, int n_expert, int n_used, bool renorm, int32_t *sel, float *w);

#define MOE_WINDOW_MAX 4096
#define MOE_RANKS_MAX 4096

struct moe_stats {
    int n_layer, n_expert, window;
    int pos;          /* ring slot of the current step */
    uint64_t steps;   /* steps recorded */
    uint32_t *ring;   /* [window][n_layer][n_expert] tokens per step */
    uint64_t *sum;    /* [n_layer][n_expert] over the window */
};

int moe_stats_init(struct moe_stats *s, int n_layer, int n_expert, int window);
void moe_stats_free(struct moe_stats *s);
/* Start a new step: the oldest step leaves the window. */
void moe_stats_step(struct moe_stats *s);
static inline void moe_stats_add(struct moe_stats *s, int layer, int expert, uint32_t n)
{
    s->ring[((size_t)s->pos * s->n_layer + layer) * s->n_expert + expert] += n;
    s->sum[(size_t)layer * s->n_expert + expert] += n;
}
static inline const uint64_t *moe_stats_layer(const struct moe_stats *s, int layer)
{
    return s->sum + (size_t)layer * s->n_expert;
}

struct moe_placement {
    int n_expert, n_ranks, slots;  /* slots: experts a rank can hold */
    int16_t *n_copies;             /* [n_expert] */
    int16_t *copies;               /* [n_expert][n_ranks] ranks holding a copy (first n_copies) */
};

int moe_placement_init(struct moe_placement *p, int n_expert, int n_ranks, int slots);
void moe_placement_free(struct moe_placement *p);
void moe_placement_copy(struct moe_placement *dst, const struct moe_placement *src);
/* Contiguous blocks of experts per rank, one copy each (the static layout). */
void moe_place_static(struct moe_placement *p);
/* Rank loads when each expert's load is split evenly over its copies. */
void moe_rank_loads(const struct moe_placement *p, const uint64_t *load, double *rank_load);
/* max rank load / mean rank load (1 = perfect; 1 when there is no load). */
double moe_imbalance(const struct moe_placement *p, const uint64_t *load);
/* Packing keeps copies on the ranks that held them while such a rank's
 * load stays within this fraction above the mean rank load... */
#define MOE_KEEP_SLACK 0.05
/* ... or packs from scratch, whichever moves fewer copies unless its
 * imbalance is worse than the other's by more than this fraction. */
#define MOE_KEEP_TOLERANCE 0.05
/* Choose copies and their ranks for these loads, starting from p (copies
 * stay where they are when nearly as good); p's sizes are kept. */
void moe_balance(struct moe_placement *p, const uint64_t *load);
/* Copies in `to` on ranks that do not hold that expert in `from`. */
int moe_moved_copies(const struct moe_placement *from, const struct moe_placement *to);
/* Does `rank` hold expert x; its index among the copies or -1. */
int moe_copy_index(const struct moe_placement *p, int x, int rank);
/* Cost of computing one expert copy in a step, in tokens: reading the
 * weights once costs about as much as this many tokens of products. */
#define MOE_DEAL_COPY_COST 8

struct moe_dealer {
    int n_expert, n_ranks;
    int32_t *count;     /* [n_expert] pairs per expert this step */
    int32_t *quota;     /* [n_expert][n_ranks] pairs per copy */
    int64_t *order;     /* [n_expert] replicated experts, by pairs descending */
    int64_t *rank_cost; /* [n_ranks] */
};

int moe_dealer_init(struct moe_dealer *d, int n_expert, int n_ranks);
void moe_dealer_free(struct moe_dealer *d);
/* pair_rank[i] = the rank that computes pair i (expert sel[i], 0 <= sel[i] <
 * n_expert) of this step's n_pairs. Pairs of an expert go to its copies in
 * pair order: the first quota to the first chosen copy, and so on. Experts
 * with one copy go to it; then replicated experts, most pairs first, spread
 * each pair onto the copy whose rank would cost least (ties: lower copy). */
void moe_deal(struct moe_dealer *d, const struct moe_placement *p, const int32_t *sel,
              int64_t n_pairs, int16_t *pair_rank);
/* What a placement of one layer costs in time, over the statistics' window:
 * each recorded step's pairs dealt (moe_deal) to p's copies, and the
 * busiest rank's cost summed over the steps (a step lasts as long as its
 * busiest rank). *bound gets the sum of each step's mean rank cost, which no
 * placement beats. sel and pair_rank are scratch for max_pairs pairs; steps
 * with more pairs are left out of both sums. */
double moe_window_dealt_cost(const struct moe_stats *s, int layer, const struct moe_placement *p,
                             struct moe_dealer *d, int32_t *sel, int16_t *pair_rank,
                             int64_t max_pairs, double *bound);

/* Assert the invariants (copies on distinct ranks, slots respected). */
void moe_placement_check(const struct moe_placement *p);

#endif
