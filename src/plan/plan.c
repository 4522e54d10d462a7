/*
 * plan.c: tensor-parallel split (see plan.h for the rules and invariants).
 *
 * Proportional splitting uses largest remainders over whole units: rank r gets
 * floor(units * w_r / sum w) units, and the units left over go to the ranks
 * with the largest fractional parts (ties to the lower rank), so an even split
 * of 8 over 3 gives 3/3/2 and the result never depends on float noise beyond
 * the weights themselves.
 */
#include "plan.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void plan_split_units(int64_t n, int64_t unit, int n_ranks, const double *weights, int64_t *starts)
{
    TT_ASSERT(n >= 0 && unit >= 1 && n_ranks >= 1 && n_ranks <= PLAN_RANKS_MAX);
    const int64_t units = (n + unit - 1) / unit;
    double total = 0.0;
    for (int r = 0; r < n_ranks; r++) total += weights ? weights[r] : 1.0;
    int64_t count[PLAN_RANKS_MAX];
    double frac[PLAN_RANKS_MAX];
    int64_t given = 0;
    for (int r = 0; r < n_ranks; r++) {
        double share = (double)units * (weights ? weights[r] : 1.0) / total;
        count[r] = (int64_t)floor(share);
        frac[r] = share - (double)count[r];
        given += count[r];
    }
    while (given < units) { /* largest remainder, lower rank first on ties */
        int best = 0;
        for (int r = 1; r < n_ranks; r++)
            if (frac[r] > frac[best]) best = r;
        count[best]++;
        frac[best] = -1.0;
        given++;
    }
    starts[0] = 0;
    for (int r = 0; r < n_ranks; r++) starts[r + 1] = TT_MIN(n, starts[r] + count[r] * unit);
    starts[n_ranks] = n;
}

/* Activation block of a weight type: how many input columns one quantized
 * activation block covers. */
int32_t plan_act_block(uint32_t type)
{
    const struct tt_type_traits *tr = tt_type_get(type);
    return tr ? tt_type_get(tr->vec_dot_type)->block_size : 1;
}

int32_t plan_units_per_block(int32_t block, int32_t width)
{
    /* smallest count of `width`-sized items whose total is a multiple of block */
    return (int32_t)(block / gcd64(block, width));
}

void plan_align_for_model(const struct model *m, struct plan_align *a)
{
    const struct model_hparams *hp = &m->hp;
    int32_t wo = 1, down = 1, dexp = 1, dsh = 1;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *l = &m->layers[il];
        wo = TT_MAX(wo, plan_act_block(l->wo.type));
        if (l->w_down.data) down = TT_MAX(down, plan_act_block(l->w_down.type));
        if (l->down_exps.data) dexp = TT_MAX(dexp, plan_act_block(l->down_exps.type));
        if (l->down_shexp.data) dsh = TT_MAX(dsh, plan_act_block(l->down_shexp.type));
    }
    a->head_unit = plan_units_per_block(wo, hp->head_dim);
    a->ff_unit = down;
    a->ff_exp_unit = dexp;
    a->shexp_unit = dsh;
}

static void assign(struct plan *p, int64_t n, int64_t unit, const double *w, size_t field_offset)
{
    int64_t starts[PLAN_RANKS_MAX + 1];
    plan_split_units(n, unit, p->n_ranks, w, starts);
    for (int r = 0; r < p->n_ranks; r++) {
        struct plan_range *rg = (struct plan_range *)((char *)&p->ranks[r] + field_offset);
        rg->begin = (int32_t)starts[r];
        rg->end = (int32_t)starts[r + 1];
    }
}

/* A zeroed plan for n_ranks after checking the count and the capacities. */
static struct plan *plan_alloc(int n_ranks, const double *weights)
{
    if (n_ranks < 1 || n_ranks > PLAN_RANKS_MAX) {
        tt_error_set(TT_EINVAL, "rank count %d outside [1, %d]", n_ranks, PLAN_RANKS_MAX);
        return NULL;
    }
    for (int r = 0; weights && r < n_ranks; r++)
        if (!(weights[r] > 0) || !isfinite(weights[r])) {
            tt_error_set(TT_EINVAL, "capacity of rank %d must be a positive number", r);
            return NULL;
        }
    struct plan *p = calloc(1, sizeof(*p) + sizeof(struct plan_rank) * (size_t)n_ranks);
    if (!p) tt_error_set(TT_ENOMEM, "out of memory");
    return p;
}

struct plan *plan_tensor_parallel(const struct model_hparams *hp, const struct plan_align *align,
                                  int n_ranks, const double *weights, enum plan_join join)
{
    /* Gathering joins read whole rows: no column alignment is needed. */
    static const struct plan_align unaligned = { 1, 1, 1, 1 };
    const struct plan_align *a = join == PLAN_JOIN_SUM ? align : &unaligned;
    struct plan *p = plan_alloc(n_ranks, weights);
    if (!p) return NULL;
    p->n_ranks = n_ranks;
    p->join = join;
    p->n_stages = 1;
    for (int r = 0; r < n_ranks; r++) p->ranks[r].layers = (struct plan_range){ 0, hp->n_layer };
    assign(p, hp->n_head, a->head_unit, weights, offsetof(struct plan_rank, head));
    assign(p, hp->n_embd, 1, weights, offsetof(struct plan_rank, embd));
    assign(p, hp->n_expert, 1, weights, offsetof(struct plan_rank, expert));
    assign(p, hp->n_ff, a->ff_unit, weights, offsetof(struct plan_rank, ff));
    assign(p, hp->n_expert ? hp->n_ff_exp : 0, a->ff_exp_unit, weights, offsetof(struct plan_rank, ff_exp));
    assign(p, hp->n_ff_shexp, a->shexp_unit, weights, offsetof(struct plan_rank, shexp));
    assign(p, hp->n_vocab, 1, weights, offsetof(struct plan_rank, vocab));
    const int32_t group = hp->n_head / hp->n_head_kv;
    for (int r = 0; r < n_ranks; r++) {
        struct plan_rank *pr = &p->ranks[r];
        pr->weight = weights ? weights[r] : 1.0;
        if (pr->head.end > pr->head.begin) {
            pr->kv.begin = pr->head.begin / group;
            pr->kv.end = (pr->head.end - 1) / group + 1;
        }
    }
    plan_check(p, hp, align);
    return p;
}

/* Validate the arguments of plan_staged. */
static int check_stages(const struct model_hparams *hp, int n_ranks, const int32_t *stage_of,
                        int n_stages, const int32_t *layer_ends)
{
    if (n_ranks < 1 || n_ranks > PLAN_RANKS_MAX || n_stages < 1 || n_stages > n_ranks)
        return tt_error_set(TT_EINVAL, "%d stages over %d ranks: need 1 <= stages <= ranks <= %d",
                            n_stages, n_ranks, PLAN_RANKS_MAX);
    int32_t count[PLAN_RANKS_MAX] = { 0 };
    for (int r = 0; r < n_ranks; r++) {
        if (stage_of[r] != PLAN_STAGE_IDLE && (stage_of[r] < 0 || stage_of[r] >= n_stages))
            return tt_error_set(TT_EINVAL, "rank %d: stage %d outside [0, %d)", r, stage_of[r], n_stages);
        if (stage_of[r] >= 0) count[stage_of[r]]++;
    }
    for (int st = 0; st < n_stages; st++) {
        if (!count[st]) return tt_error_set(TT_EINVAL, "stage %d has no rank", st);
        if (layer_ends && (layer_ends[st] < (st ? layer_ends[st - 1] : 0) ||
                           (st == n_stages - 1 && layer_ends[st] != hp->n_layer)))
            return tt_error_set(TT_EINVAL, "stage layer ends must rise to %d layers", hp->n_layer);
    }
    return 0;
}

struct plan *plan_staged(const struct model_hparams *hp, const struct plan_align *a, int n_ranks,
                         const int32_t *stage_of, int n_stages, const int32_t *layer_ends,
                         const double *weights, enum plan_join join)
{
    if (check_stages(hp, n_ranks, stage_of, n_stages, layer_ends)) return NULL;
    struct plan *p = plan_alloc(n_ranks, weights);
    if (!p) return NULL;
    p->n_ranks = n_ranks;
    p->join = join;
    p->n_stages = n_stages;
    p->pipeline = n_stages > 1;
    double stage_w[PLAN_RANKS_MAX] = { 0 };
    int64_t starts[PLAN_RANKS_MAX + 1];
    for (int r = 0; r < n_ranks; r++)
        if (stage_of[r] >= 0) stage_w[stage_of[r]] += weights ? weights[r] : 1.0;
    plan_split_units(hp->n_layer, 1, n_stages, stage_w, starts);
    for (int st = 0; st < n_stages && layer_ends; st++) starts[st + 1] = layer_ends[st];
    for (int r = 0; r < n_ranks; r++)
        p->ranks[r] = (struct plan_rank){ .stage = PLAN_STAGE_IDLE, .weight = weights ? weights[r] : 1.0 };
    for (int st = 0; st < n_stages; st++) {
        int members[PLAN_RANKS_MAX], k = 0;
        double w[PLAN_RANKS_MAX];
        for (int r = 0; r < n_ranks; r++)
            if (stage_of[r] == st) {
                w[k] = weights ? weights[r] : 1.0;
                members[k++] = r;
            }
        struct plan *g = plan_tensor_parallel(hp, a, k, w, join);
        if (!g) {
            free(p);
            return NULL;
        }
        for (int i = 0; i < k; i++) {
            struct plan_rank *pr = &p->ranks[members[i]];
            *pr = g->ranks[i];
            pr->stage = st;
            pr->layers = (struct plan_range){ (int32_t)starts[st], (int32_t)starts[st + 1] };
            if (st < n_stages - 1) pr->vocab = (struct plan_range){ 0, 0 };
        }
        free(g);
    }
    plan_check(p, hp, a);
    return p;
}

struct plan *plan_pipeline(const struct model_hparams *hp, int n_ranks, const double *weights)
{
    int32_t stage_of[PLAN_RANKS_MAX];
    for (int r = 0; r < n_ranks && r < PLAN_RANKS_MAX; r++) stage_of[r] = r;
    static const struct plan_align unaligned = { 1, 1, 1, 1 };
    return plan_staged(hp, &unaligned, n_ranks, stage_of, n_ranks, NULL, weights, PLAN_JOIN_GATHER);
}

int plan_parse_split(const char *s, int n_ranks, double *weights, bool *is_auto)
{
    *is_auto = false;
    if (!strcmp(s, "even")) {
        for (int r = 0; r < n_ranks; r++) weights[r] = 1.0;
        return 0;
    }
    if (!strcmp(s, "auto")) {
        *is_auto = true;
        return 0;
    }
    const char *p = s;
    for (int r = 0; r < n_ranks; r++) {
        char *end;
        weights[r] = strtod(p, &end);
        if (end == p || !(weights[r] > 0) || !isfinite(weights[r]))
            return tt_error_set(TT_EINVAL, "--split '%s': expected %d positive numbers, even or auto",
                                s, n_ranks);
        p = end;
        if (r + 1 < n_ranks && *p++ != ',')
            return tt_error_set(TT_EINVAL, "--split '%s' has fewer than %d values (one per rank)", s,
                                n_ranks);
    }
    if (*p) return tt_error_set(TT_EINVAL, "--split '%s' has more than %d values (one per rank)", s, n_ranks);
    return 0;
}

/* Stage st's ranks, in rank order, cover [0, n) of one dimension. */
static void check_cover(const struct plan *p, int st, size_t off, int32_t n, int32_t unit)
{
    int32_t at = 0;
    for (int r = 0; r < p->n_ranks; r++) {
        if (p->ranks[r].stage != st) continue;
        const struct plan_range *rg = (const struct plan_range *)((const char *)&p->ranks[r] + off);
        TT_ASSERT(rg->begin == at && rg->end >= rg->begin);
        TT_ASSERT(rg->end == n || rg->end % unit == 0);
        at = rg->end;
    }
    TT_ASSERT(at == n);
}

static bool range_empty(struct plan_range r) { return r.begin == r.end; }

void plan_check(const struct plan *p, const struct model_hparams *hp, const struct plan_align *align)
{
    static const struct plan_align unaligned = { 1, 1, 1, 1 };
    const struct plan_align *a = p->join == PLAN_JOIN_SUM ? align : &unaligned;
    TT_ASSERT(p->n_stages >= 1 && p->n_stages <= p->n_ranks && p->pipeline == (p->n_stages > 1));
    int32_t layer_at = 0;
    for (int st = 0; st < p->n_stages; st++) {
        int first = -1;
        for (int r = 0; r < p->n_ranks; r++) {
            if (p->ranks[r].stage != st) continue;
            if (first < 0) first = r;
            TT_ASSERT(p->ranks[r].layers.begin == p->ranks[first].layers.begin &&
                      p->ranks[r].layers.end == p->ranks[first].layers.end);
            if (st < p->n_stages - 1) TT_ASSERT(range_empty(p->ranks[r].vocab));
        }
        TT_ASSERT(first >= 0 && p->ranks[first].layers.begin == layer_at);
        layer_at = p->ranks[first].layers.end;
        TT_ASSERT(layer_at >= p->ranks[first].layers.begin);
        check_cover(p, st, offsetof(struct plan_rank, embd), hp->n_embd, 1);
        check_cover(p, st, offsetof(struct plan_rank, expert), hp->n_expert, 1);
        check_cover(p, st, offsetof(struct plan_rank, head), hp->n_head, a->head_unit);
        check_cover(p, st, offsetof(struct plan_rank, ff), hp->n_ff, a->ff_unit);
        check_cover(p, st, offsetof(struct plan_rank, ff_exp), hp->n_expert ? hp->n_ff_exp : 0,
                    a->ff_exp_unit);
        check_cover(p, st, offsetof(struct plan_rank, shexp), hp->n_ff_shexp, a->shexp_unit);
        if (st == p->n_stages - 1)
            check_cover(p, st, offsetof(struct plan_rank, vocab), hp->n_vocab, 1);
    }
    TT_ASSERT(layer_at == hp->n_layer);
    const int32_t group = hp->n_head / hp->n_head_kv;
    for (int r = 0; r < p->n_ranks; r++) {
        const struct plan_rank *pr = &p->ranks[r];
        TT_ASSERT(pr->stage == PLAN_STAGE_IDLE || (pr->stage >= 0 && pr->stage < p->n_stages));
        if (pr->stage == PLAN_STAGE_IDLE)
            TT_ASSERT(range_empty(pr->layers) && range_empty(pr->head) && range_empty(pr->embd) &&
                      range_empty(pr->ff) && range_empty(pr->expert) && range_empty(pr->vocab) &&
                      range_empty(pr->kv) && range_empty(pr->ff_exp) && range_empty(pr->shexp));
        if (pr->head.end == pr->head.begin) {
            TT_ASSERT(pr->kv.begin == pr->kv.end);
            continue;
        }
        TT_ASSERT(pr->kv.begin == pr->head.begin / group);
        TT_ASSERT(pr->kv.end == (pr->head.end - 1) / group + 1 && pr->kv.end <= hp->n_head_kv);
    }
}
