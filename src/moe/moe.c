/*
 * moe.c: load statistics and the balancer (see moe.h).
 *
 * Balancer, for loads L[x] over R ranks with S slots each (S*R >= X):
 *  1. replication: every expert gets one copy; the S*R - X spare slots go,
 *     one at a time, to the expert with the largest load per copy (at most R
 *     copies: copies live on distinct ranks);
 *  2. packing: copies sorted by load per copy, largest first, each left on
 *     a rank that held that expert before if that rank's load stays within
 *     (1 + MOE_KEEP_SLACK) of the mean (so a rebalance moves few experts),
 *     else put on the least loaded rank that has a free slot and no copy of
 *     that expert (ties: lower rank). Loaded copies come first, so the cold
 *     experts that stay cannot take the slots the hot copies need. A second
 *     candidate packs from scratch (least loaded rank only) and renames
 *     ranks to keep the most copies in place; of the two, the one moving
 *     fewer copies is taken unless its imbalance exceeds the other's by
 *     more than the fraction MOE_KEEP_TOLERANCE;
 *  3. the old placement stays when the new one is not better.
 * Invariants: 1 <= n_copies[x] <= R; copies of x are distinct ranks; no rank
 * holds more than S experts; every expert is held somewhere.
 */
#include "moe.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void moe_route_token(float *p, int n_expert, int n_used, bool renorm, int32_t *sel, float *w)
{
    const int X = n_expert;
    float mx = -INFINITY;
    for (int i = 0; i < X; i++) mx = p[i] > mx ? p[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < X; i++) sum += (p[i] = expf(p[i] - mx));
    for (int i = 0; i < X; i++) p[i] = (float)(p[i] / sum);
    float wsum = 0.0f;
    for (int k = 0; k < n_used; k++) {
        int best = -1;
        for (int i = 0; i < X; i++) {
            bool taken = false;
            for (int j = 0; j < k; j++) taken |= sel[j] == i;
            if (!taken && (best < 0 || p[i] > p[best])) best = i;
        }
        sel[k] = best;
        w[k] = p[best];
        wsum += w[k];
    }
    if (renorm) {
        wsum = wsum < 6.103515625e-5f ? 6.103515625e-5f : wsum;
        for (int k = 0; k < n_used; k++) w[k] /= wsum;
    }
}

int moe_stats_init(struct moe_stats *s, int n_layer, int n_expert, int window)
{
    memset(s, 0, sizeof(*s));
    if (n_layer < 1 || n_expert < 1 || window < 1 || window > MOE_WINDOW_MAX)
        return tt_error_set(TT_EINVAL, "MoE statistics: bad sizes (layers %d, experts %d, window %d)",
                            n_layer, n_expert, window);
    s->n_layer = n_layer;
    s->n_expert = n_expert;
    s->window = window;
    s->ring = calloc((size_t)window * n_layer * n_expert, sizeof(uint32_t));
    s->sum = calloc((size_t)n_layer * n_expert, sizeof(uint64_t));
    if (!s->ring || !s->sum) {
        moe_stats_free(s);
        return tt_error_set(TT_ENOMEM, "out of memory for MoE statistics");
    }
    return 0;
}

void moe_stats_free(struct moe_stats *s)
{
    free(s->ring);
    free(s->sum);
    memset(s, 0, sizeof(*s));
}

void moe_stats_step(struct moe_stats *s)
{
    s->pos = (s->pos + 1) % s->window;
    uint32_t *old = s->ring + (size_t)s->pos * s->n_layer * s->n_expert;
    for (size_t i = 0; i < (size_t)s->n_layer * s->n_expert; i++) {
        s->sum[i] -= old[i];
        old[i] = 0;
    }
    s->steps++;
}

int moe_placement_init(struct moe_placement *p, int n_expert, int n_ranks, int slots)
{
    memset(p, 0, sizeof(*p));
    if (n_expert < 1 || n_ranks < 1 || n_ranks > MOE_RANKS_MAX || slots < 1 ||
        (int64_t)slots * n_ranks < n_expert)
        return tt_error_set(TT_EINVAL, "expert placement: %d experts do not fit %d ranks x %d slots",
                            n_expert, n_ranks, slots);
    p->n_expert = n_expert;
    p->n_ranks = n_ranks;
    p->slots = slots;
    p->n_copies = calloc((size_t)n_expert, sizeof(int16_t));
    p->copies = calloc((size_t)n_expert * n_ranks, sizeof(int16_t));
    if (!p->n_copies || !p->copies) {
        moe_placement_free(p);
        return tt_error_set(TT_ENOMEM, "out of memory for the expert placement");
    }
    moe_place_static(p);
    return 0;
}

void moe_placement_free(struct moe_placement *p)
{
    free(p->n_copies);
    free(p->copies);
    memset(p, 0, sizeof(*p));
}

void moe_placement_copy(struct moe_placement *dst, const struct moe_placement *src)
{
    TT_ASSERT(dst->n_expert == src->n_expert && dst->n_ranks == src->n_ranks);
    dst->slots = src->slots;
    memcpy(dst->n_copies, src->n_copies, sizeof(int16_t) * (size_t)src->n_expert);
    memcpy(dst->copies, src->copies, sizeof(int16_t) * (size_t)src->n_expert * src->n_ranks);
}

void moe_place_static(struct moe_placement *p)
{
    for (int x = 0; x < p->n_expert; x++) {
        p->n_copies[x] = 1;
        p->copies[(size_t)x * p->n_ranks] = (int16_t)((int64_t)x * p->n_ranks / p->n_expert);
    }
}

void moe_rank_loads(const struct moe_placement *p, const uint64_t *load, double *rank_load)
{
    for (int r = 0; r < p->n_ranks; r++) rank_load[r] = 0.0;
    for (int x = 0; x < p->n_expert; x++)
        for (int c = 0; c < p->n_copies[x]; c++)
            rank_load[p->copies[(size_t)x * p->n_ranks + c]] += (double)load[x] / p->n_copies[x];
}

double moe_imbalance(const struct moe_placement *p, const uint64_t *load)
{
    double rl[MOE_RANKS_MAX], max = 0.0, sum = 0.0;
    moe_rank_loads(p, load, rl);
    for (int r = 0; r < p->n_ranks; r++) {
        sum += rl[r];
        max = rl[r] > max ? rl[r] : max;
    }
    return sum > 0 ? max / (sum / p->n_ranks) : 1.0;
}

int moe_copy_index(const struct moe_placement *p, int x, int rank)
{
    for (int c = 0; c < p->n_copies[x]; c++)
        if (p->copies[(size_t)x * p->n_ranks + c] == rank) return c;
    return -1;
}

struct copy_item {
    int expert;
    double share;
};

static int cmp_share_desc(const void *a, const void *b)
{
    const struct copy_item *x = a, *y = b;
    if (x->share != y->share) return x->share < y->share ? 1 : -1;
    return x->expert - y->expert;
}

/* The least loaded rank with a free slot and no copy of x yet (ties: lower
 * rank), among those that held x before (`old`) when `only_old`; with
 * `cap` >= 0, only ranks whose load stays within it. -1 when none. */
static int pack_rank(const struct moe_placement *p, const struct moe_placement *old, int x,
                     const double *rank_load, const int *used, bool only_old, double share,
                     double cap)
{
    int best = -1;
    for (int r = 0; r < p->n_ranks; r++) {
        if (used[r] >= p->slots || moe_copy_index(p, x, r) >= 0) continue;
        if (only_old && moe_copy_index(old, x, r) < 0) continue;
        if (cap >= 0 && rank_load[r] + share > cap) continue;
        if (best < 0 || rank_load[r] < rank_load[best]) best = r;
    }
    return best;
}

/* Packing: p->n_copies[x] copies of each expert, largest load per copy
 * first, each on the least loaded rank that can take it; with keep_slack >=
 * 0, on a rank that held it before if that rank stays within (1 +
 * keep_slack) of the mean load. */
static void pack(struct moe_placement *p, const struct moe_placement *old, const uint64_t *load,
                 double keep_slack)
{
    const int X = p->n_expert, R = p->n_ranks;
    int n_items = 0;
    double total = 0.0;
    struct copy_item *items = malloc(sizeof(*items) * (size_t)X * R);
    double *rank_load = calloc((size_t)R, sizeof(double));
    int *used = calloc((size_t)R, sizeof(int));
    TT_ASSERT(items && rank_load && used);
    for (int x = 0; x < X; x++) {
        total += (double)load[x];
        for (int c = 0; c < p->n_copies[x]; c++)
            items[n_items++] = (struct copy_item){ x, (double)load[x] / p->n_copies[x] };
    }
    qsort(items, (size_t)n_items, sizeof(*items), cmp_share_desc);
    memset(p->n_copies, 0, sizeof(int16_t) * (size_t)X);
    for (int i = 0; i < n_items; i++) {
        const int x = items[i].expert;
        int best = -1;
        if (keep_slack >= 0) /* stay on a rank that held x while it is within the cap */
            best = pack_rank(p, old, x, rank_load, used, true, items[i].share,
                             (1.0 + keep_slack) * total / R);
        if (best < 0) best = pack_rank(p, old, x, rank_load, used, false, 0.0, -1.0);
        if (best < 0) { /* only ranks holding x have room: keep fewer copies */
            TT_ASSERT(p->n_copies[x] > 0);
            continue;
        }
        p->copies[(size_t)x * R + p->n_copies[x]++] = (int16_t)best;
        rank_load[best] += items[i].share;
        used[best]++;
    }
    free(used);
    free(rank_load);
    free(items);
}

int moe_moved_copies(const struct moe_placement *from, const struct moe_placement *to)
{
    int moved = 0;
    for (int x = 0; x < to->n_expert; x++)
        for (int c = 0; c < to->n_copies[x]; c++)
            moved += moe_copy_index(from, x, to->copies[(size_t)x * to->n_ranks + c]) < 0;
    return moved;
}

/* Rename p's ranks (which changes no rank's load) so that as many copies as
 * possible stay where `old` has them: greedy matching of new to old ranks by
 * the number of experts they share, largest first (up to MOE_RELABEL_RANKS). */
#define MOE_RELABEL_RANKS 64
static void relabel(struct moe_placement *p, const struct moe_placement *old)
{
    const int R = p->n_ranks, X = p->n_expert;
    if (R > MOE_RELABEL_RANKS) return;
    int shared[MOE_RELABEL_RANKS][MOE_RELABEL_RANKS] = { { 0 } }, to[MOE_RELABEL_RANKS];
    bool new_done[MOE_RELABEL_RANKS] = { false }, old_done[MOE_RELABEL_RANKS] = { false };
    for (int x = 0; x < X; x++)
        for (int c = 0; c < p->n_copies[x]; c++)
            for (int d = 0; d < old->n_copies[x]; d++)
                shared[p->copies[(size_t)x * R + c]][old->copies[(size_t)x * R + d]]++;
    for (int n = 0; n < R; n++) {
        int bn = -1, bo = -1;
        for (int a = 0; a < R; a++)
            for (int b = 0; b < R && !new_done[a]; b++)
                if (!old_done[b] && (bn < 0 || shared[a][b] > shared[bn][bo])) {
                    bn = a;
                    bo = b;
                }
        new_done[bn] = old_done[bo] = true;
        to[bn] = bo;
    }
    for (int x = 0; x < X; x++)
        for (int c = 0; c < p->n_copies[x]; c++)
            p->copies[(size_t)x * R + c] = (int16_t)to[p->copies[(size_t)x * R + c]];
}

void moe_balance(struct moe_placement *p, const uint64_t *load)
{
    const int X = p->n_expert, R = p->n_ranks;
    struct moe_placement old, fresh;
    int err = moe_placement_init(&old, X, R, p->slots);
    if (!err) err = moe_placement_init(&fresh, X, R, p->slots);
    TT_ASSERT(err == 0);
    moe_placement_copy(&old, p);
    int spare = p->slots * R - X;
    for (int x = 0; x < X; x++) p->n_copies[x] = 1;
    for (; spare > 0; spare--) { /* 1. replicate the largest load per copy */
        int best = -1;
        for (int x = 0; x < X; x++)
            if (p->n_copies[x] < R && (best < 0 || (double)load[x] / p->n_copies[x] >
                                                       (double)load[best] / p->n_copies[best]))
                best = x;
        if (best < 0 || load[best] == 0) break;
        p->n_copies[best]++;
    }
    moe_placement_copy(&fresh, p);
    pack(p, &old, load, MOE_KEEP_SLACK); /* 2. packing, keeping copies in place */
    pack(&fresh, &old, load, -1.0);      /*    and packing from scratch, ranks renamed */
    relabel(&fresh, &old);
    /* 3. of the two, the one moving fewer copies unless clearly less balanced */
    const double im_keep = moe_imbalance(p, load), im_fresh = moe_imbalance(&fresh, load);
    const double im_best = im_keep < im_fresh ? im_keep : im_fresh;
    const bool keep_ok = im_keep <= im_best * (1.0 + MOE_KEEP_TOLERANCE);
    const bool fresh_ok = im_fresh <= im_best * (1.0 + MOE_KEEP_TOLERANCE);
    if (!keep_ok || (fresh_ok && moe_moved_copies(&old, &fresh) < moe_moved_copies(&old, p)))
        moe_placement_copy(p, &fresh);
    if (moe_imbalance(p, load) > moe_imbalance(&old, load)) moe_placement_copy(p, &old);
    moe_placement_free(&fresh);
    moe_placement_free(&old);
    moe_placement_check(p);
}

void moe_placement_check(const struct moe_placement *p)
{
    int used[MOE_RANKS_MAX] = { 0 };
    for (int x = 0; x < p->n_expert; x++) {
        TT_ASSERT(p->n_copies[x] >= 1 && p->n_copies[x] <= p->n_ranks);
        for (int c = 0; c < p->n_copies[x]; c++) {
            const int r = p->copies[(size_t)x * p->n_ranks + c];
            TT_ASSERT(r >= 0 && r < p->n_ranks);
            for (int d = 0; d < c; d++) TT_ASSERT(p->copies[(size_t)x * p->n_ranks + d] != r);
            used[r]++;
        }
    }
    for (int r = 0; r < p->n_ranks; r++) TT_ASSERT(used[r] <= p->slots);
}

int moe_dealer_init(struct moe_dealer *d, int n_expert, int n_ranks)
{
    memset(d, 0, sizeof(*d));
    if (n_expert < 1 || n_ranks < 1 || n_ranks > MOE_RANKS_MAX)
        return tt_error_set(TT_EINVAL, "expert dealing: bad sizes (%d experts, %d ranks)", n_expert,
                            n_ranks);
    d->n_expert = n_expert;
    d->n_ranks = n_ranks;
    d->count = calloc((size_t)n_expert, sizeof(int32_t));
    d->quota = calloc((size_t)n_expert * n_ranks, sizeof(int32_t));
    d->order = calloc((size_t)n_expert, sizeof(int64_t));
    d->rank_cost = calloc((size_t)n_ranks, sizeof(int64_t));
    if (!d->count || !d->quota || !d->order || !d->rank_cost) {
        moe_dealer_free(d);
        return tt_error_set(TT_ENOMEM, "out of memory for expert dealing");
    }
    return 0;
}

void moe_dealer_free(struct moe_dealer *d)
{
    free(d->count);
    free(d->quota);
    free(d->order);
    free(d->rank_cost);
    memset(d, 0, sizeof(*d));
}

static int cmp_i64_desc(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Spread the count[x] pairs of replicated expert x over its copies, one
 * pair at a time onto the copy whose rank's cost after taking it is least. */
static void deal_expert(struct moe_dealer *d, const struct moe_placement *p, int x)
{
    const int R = p->n_ranks, nc = p->n_copies[x];
    int32_t *quota = d->quota + (size_t)x * R;
    for (int i = 0; i < d->count[x]; i++) {
        int best = 0;
        int64_t best_cost = INT64_MAX;
        for (int c = 0; c < nc; c++) {
            const int64_t cost = d->rank_cost[p->copies[(size_t)x * R + c]] + 1 +
                                 (quota[c] ? 0 : MOE_DEAL_COPY_COST);
            if (cost < best_cost) {
                best = c;
                best_cost = cost;
            }
        }
        d->rank_cost[p->copies[(size_t)x * R + best]] = best_cost;
        quota[best]++;
    }
}

void moe_deal(struct moe_dealer *d, const struct moe_placement *p, const int32_t *sel,
              int64_t n_pairs, int16_t *pair_rank)
{
    const int X = p->n_expert, R = p->n_ranks;
    TT_ASSERT(d->n_expert == X && d->n_ranks == R);
    memset(d->count, 0, sizeof(int32_t) * (size_t)X);
    memset(d->rank_cost, 0, sizeof(int64_t) * (size_t)R);
    for (int64_t i = 0; i < n_pairs; i++) d->count[sel[i]]++;
    int n_order = 0;
    for (int x = 0; x < X; x++) {
        if (!d->count[x]) continue;
        memset(d->quota + (size_t)x * R, 0, sizeof(int32_t) * (size_t)R);
        if (p->n_copies[x] == 1) {
            d->quota[(size_t)x * R] = d->count[x];
            d->rank_cost[p->copies[(size_t)x * R]] += MOE_DEAL_COPY_COST + d->count[x];
        } else { /* key: pairs descending, then expert ascending */
            d->order[n_order++] = ((int64_t)d->count[x] << 32) | (int64_t)(X - 1 - x);
        }
    }
    qsort(d->order, (size_t)n_order, sizeof(int64_t), cmp_i64_desc);
    for (int i = 0; i < n_order; i++) deal_expert(d, p, X - 1 - (int)(d->order[i] & 0xffffffff));
    for (int64_t i = 0; i < n_pairs; i++) {
        int32_t *quota = d->quota + (size_t)sel[i] * R;
        int c = 0;
        while (quota[c] == 0) c++;
        quota[c]--;
        pair_rank[i] = p->copies[(size_t)sel[i] * R + c];
    }
}

double moe_window_dealt_cost(const struct moe_stats *s, int layer, const struct moe_placement *p,
                             struct moe_dealer *d, int32_t *sel, int16_t *pair_rank,
                             int64_t max_pairs, double *bound)
{
    const int X = s->n_expert, W = s->window;
    TT_ASSERT(p->n_expert == X && layer >= 0 && layer < s->n_layer);
    const int n_steps = s->steps < (uint64_t)W ? (int)s->steps : W;
    double cost = 0.0, lower = 0.0;
    for (int i = 0; i < n_steps; i++) { /* the current step's slot, then older ones */
        const uint32_t *count = s->ring + ((size_t)((s->pos - i + W) % W) * s->n_layer + layer) * X;
        int64_t n = 0, total = 0;
        bool fits = true;
        for (int x = 0; x < X && fits; x++) {
            if (!count[x]) continue;
            total += MOE_DEAL_COPY_COST + count[x];
            fits = n + count[x] <= max_pairs;
            for (uint32_t k = 0; fits && k < count[x]; k++) sel[n++] = x;
        }
        if (!fits || n == 0) continue;
        moe_deal(d, p, sel, n, pair_rank);
        int64_t busiest = 0;
        for (int r = 0; r < p->n_ranks; r++) busiest = d->rank_cost[r] > busiest ? d->rank_cost[r] : busiest;
        cost += (double)busiest;
        lower += (double)total / p->n_ranks;
    }
    *bound = lower;
    return cost;
}
