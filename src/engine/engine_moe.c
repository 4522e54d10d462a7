/*
 * engine_moe.c: where the experts of MoE layers live on this rank, their
 * load statistics, and live rebalancing.
 *
 * Slots: on several ranks each layer has `moe_slots` expert slots per rank
 * (its share of the experts plus spare slots for hot copies); the expert
 * matrices of a slot are copied from the model file into this rank's slot
 * storage, and the layer's gate/up/down_exps views index slots. On one rank
 * the views are the file's expert stacks and slot = expert.
 *
 * Rebalancing happens at a step boundary on every rank at once (a step from
 * rank 0). All ranks hold the same statistics (routing is computed on every
 * rank), so they compute the same placement without exchanging it. Experts
 * that stay keep their slot; only new copies are copied in, from the local
 * model file. Results do not change: a token's expert output is computed in
 * full by whichever copy it is dealt to, and outputs are added in expert
 * order (engine_forward.c).
 */
#include "engine_internal.h"

#include <stdlib.h>
#include <string.h>

#define MOE_REPLICAS_DEFAULT 2
#define MOE_EVERY_DEFAULT 16
#define MOE_THRESHOLD_DEFAULT 1.1

/* Bytes of one expert of a stacked expert weight. */
static size_t expert_bytes(const struct model_weight *w) { return w->row_bytes * (size_t)w->ne[1]; }

/* Copy expert x of layer il into slot s (several ranks). */
static int load_slot(struct engine *e, int il, int s, int x)
{
    const struct model_layer *ml = &e->m->layers[il];
    struct engine_layer *l = &e->layers[il];
    const struct model_weight *src[3] = { &ml->gate_exps, &ml->up_exps, &ml->down_exps };
    struct engine_weight *dst[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
    for (int i = 0; i < 3; i++) {
        int err = shard_read(e, model_weight_row(src[i], x, 0), expert_bytes(src[i]),
                             (uint8_t *)dst[i]->data + (size_t)s * dst[i]->expert_stride);
        if (err) return err;
    }
    e->moe_slot_expert[(size_t)il * e->moe_slots + s] = x;
    e->moe_slot_of[(size_t)il * e->m->hp.n_expert + x] = s;
    return 0;
}

/* Slot storage and views for several ranks; fills the static placement. */
static int setup_slots(struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    size_t total = 0; /* layers may differ in expert types (Q4_K_M mixes) */
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *ml = &e->m->layers[il];
        total += (expert_bytes(&ml->gate_exps) + expert_bytes(&ml->up_exps) +
                  expert_bytes(&ml->down_exps)) * (size_t)e->moe_slots;
    }
    e->moe_buf = tt_alloc(total);
    if (!e->moe_buf)
        return tt_error_set(TT_ENOMEM, "cannot allocate %.1f MiB for expert slots",
                            (double)total / 1048576.0);
    uint8_t *at = e->moe_buf;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *ml = &e->m->layers[il];
        struct engine_layer *l = &e->layers[il];
        const struct model_weight *src[3] = { &ml->gate_exps, &ml->up_exps, &ml->down_exps };
        struct engine_weight *dst[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
        for (int i = 0; i < 3; i++) {
            *dst[i] = (struct engine_weight){ at, src[i]->type, src[i]->ne[0], src[i]->ne[1],
                                              src[i]->row_bytes, expert_bytes(src[i]) };
            at += expert_bytes(src[i]) * (size_t)e->moe_slots;
        }
        const struct moe_placement *p = &e->moe_place[il];
        int s = 0, err = 0;
        for (int x = 0; x < hp->n_expert && !err; x++)
            if (moe_copy_index(p, x, e->tp_rank) >= 0) err = load_slot(e, il, s++, x);
        if (err) return err;
    }
    return 0;
}

int moe_setup(struct engine *e, const struct engine_opts *opts)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0) return 0;
    const int R = e->tp_size, X = hp->n_expert;
    const int replicas = opts->moe_replicas < 0 ? 0 : opts->moe_replicas ? opts->moe_replicas : MOE_REPLICAS_DEFAULT;
    e->moe_slots = R == 1 ? X : TT_MIN(X, (X + R - 1) / R + replicas);
    e->moe_every = opts->moe_every < 0 ? 0 : opts->moe_every ? opts->moe_every : MOE_EVERY_DEFAULT;
    e->moe_threshold = opts->moe_threshold > 0 ? opts->moe_threshold : MOE_THRESHOLD_DEFAULT;
    int err = moe_stats_init(&e->moe_stats, hp->n_layer, X, ENGINE_MOE_WINDOW);
    if (err) return err;
    e->moe_place = calloc((size_t)hp->n_layer, sizeof(*e->moe_place));
    e->moe_slot_of = malloc(sizeof(int32_t) * (size_t)hp->n_layer * X);
    e->moe_slot_expert = malloc(sizeof(int32_t) * (size_t)hp->n_layer * e->moe_slots);
    e->moe_pair_rank = malloc(sizeof(int16_t) * (size_t)e->n_batch * hp->n_expert_used);
    if (!err) err = moe_dealer_init(&e->moe_dealer, X, R);
    if (err) return err;
    if (!e->moe_place || !e->moe_slot_of || !e->moe_slot_expert || !e->moe_pair_rank)
        return tt_error_set(TT_ENOMEM, "out of memory for the expert placement");
    for (int il = 0; il < hp->n_layer && !err; il++)
        err = moe_placement_init(&e->moe_place[il], X, R, e->moe_slots);
    if (err) return err;
    for (size_t i = 0; i < (size_t)hp->n_layer * X; i++) e->moe_slot_of[i] = R == 1 ? (int32_t)(i % X) : -1;
    for (size_t i = 0; i < (size_t)hp->n_layer * e->moe_slots; i++)
        e->moe_slot_expert[i] = R == 1 ? (int32_t)(i % X) : -1;
    return R == 1 ? 0 : setup_slots(e);
}

void moe_teardown(struct engine *e)
{
    if (e->moe_dealt_mean > 0)
        tt_debug("rank %d: MoE work per step, most loaded rank / mean: %.3f", e->rank,
                 e->moe_dealt_max / e->moe_dealt_mean);
    for (int il = 0; e->moe_place && il < e->m->hp.n_layer; il++) moe_placement_free(&e->moe_place[il]);
    free(e->moe_place);
    free(e->moe_slot_of);
    free(e->moe_slot_expert);
    free(e->moe_pair_rank);
    moe_dealer_free(&e->moe_dealer);
    tt_free(e->moe_buf);
    moe_stats_free(&e->moe_stats);
}

void moe_record(struct engine *e, int il, int64_t n_tok)
{
    const int K = e->m->hp.n_expert_used;
    for (int64_t i = 0; i < n_tok * K; i++) moe_stats_add(&e->moe_stats, il, e->sel[i], 1);
}

void moe_deal_layer(struct engine *e, int il, int64_t n_tok)
{
    moe_deal(&e->moe_dealer, &e->moe_place[il], e->sel, n_tok * e->m->hp.n_expert_used, e->moe_pair_rank);
    int64_t max = 0, sum = 0;
    for (int r = 0; r < e->tp_size; r++) {
        max = TT_MAX(max, e->moe_dealer.rank_cost[r]);
        sum += e->moe_dealer.rank_cost[r];
    }
    e->moe_dealt_max += (double)max;
    e->moe_dealt_mean += (double)sum / e->tp_size;
}

double moe_max_imbalance(const struct engine *e)
{
    double worst = 1.0;
    for (int il = 0; il < e->m->hp.n_layer; il++) {
        double im = moe_imbalance(&e->moe_place[il], moe_stats_layer(&e->moe_stats, il));
        worst = im > worst ? im : worst;
    }
    return worst;
}

/* The placement of layer il the balancer would choose now, and whether it is
 * worth moving to: the layer is above the threshold and the new placement
 * cuts its imbalance by at least MOE_GAIN_MIN (no churn for small gains). */
#define MOE_GAIN_MIN 0.10
static bool propose_layer(const struct engine *e, int il, struct moe_placement *next)
{
    const uint64_t *load = moe_stats_layer(&e->moe_stats, il);
    const double now = moe_imbalance(&e->moe_place[il], load);
    if (now <= e->moe_threshold) return false;
    moe_placement_copy(next, &e->moe_place[il]);
    moe_balance(next, load);
    return moe_imbalance(next, load) < now * (1.0 - MOE_GAIN_MIN);
}

bool moe_rebalance_wanted(const struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0 || e->tp_size == 1) return false;
    struct moe_placement next;
    if (moe_placement_init(&next, hp->n_expert, e->tp_size, e->moe_slots)) return false;
    bool want = false;
    for (int il = 0; il < hp->n_layer && !want; il++) want = propose_layer(e, il, &next);
    moe_placement_free(&next);
    return want;
}

/* Move layer il to `next` (from propose_layer); experts that stay keep
 * their slots, only new copies are read in. */
static int rebalance_layer(struct engine *e, int il, struct moe_placement *next)
{
    const int X = e->m->hp.n_expert, S = e->moe_slots;
    int32_t *slot_of = e->moe_slot_of + (size_t)il * X, *slot_x = e->moe_slot_expert + (size_t)il * S;
    for (int s = 0; s < S; s++) /* free the slots of experts that leave */
        if (slot_x[s] >= 0 && moe_copy_index(next, slot_x[s], e->tp_rank) < 0) {
            slot_of[slot_x[s]] = -1;
            slot_x[s] = -1;
        }
    int n_new = 0;
    for (int x = 0, s = 0; x < X; x++) {
        if (moe_copy_index(next, x, e->tp_rank) < 0 || slot_of[x] >= 0) continue;
        while (s < S && slot_x[s] >= 0) s++;
        TT_ASSERT(s < S);
        int err = load_slot(e, il, s, x);
        TT_ASSERT(err == 0 && "the model file can no longer be read");
        n_new++;
    }
    moe_placement_copy(&e->moe_place[il], next);
    return n_new;
}

int moe_rebalance(struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0 || e->tp_size == 1) return 0;
    struct moe_placement next;
    int err = moe_placement_init(&next, hp->n_expert, e->tp_size, e->moe_slots);
    if (err) return err;
    int moved = 0;
    for (int il = 0; il < hp->n_layer; il++)
        if (propose_layer(e, il, &next)) moved += rebalance_layer(e, il, &next);
    moe_placement_free(&next);
    tt_debug("rank %d: rebalanced experts, %d copies loaded, max imbalance now %.3f", e->rank, moved,
             moe_max_imbalance(e));
    return 0;
}

int engine_moe_loads(const struct engine *e, int layer, uint64_t *loads, double *imbalance)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0 || layer < 0 || layer >= hp->n_layer)
        return tt_error_set(TT_EINVAL, "no MoE layer %d", layer);
    memcpy(loads, moe_stats_layer(&e->moe_stats, layer), sizeof(uint64_t) * (size_t)hp->n_expert);
    if (imbalance) *imbalance = moe_imbalance(&e->moe_place[layer], loads);
    return 0;
}
