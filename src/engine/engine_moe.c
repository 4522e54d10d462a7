/*
 * engine_moe.c: where the experts of MoE layers live on this rank, their
 * load statistics, and live rebalancing.
 *
 * Slots: on several ranks each layer has `moe_slots` places per rank for
 * experts in the placement (its share plus spare places for hot copies) and
 * as many again, so that new copies can arrive while the old ones are still
 * in use (any new placement fits); the layer's gate/up/down_exps views index
 * physical slots (moe_phys_slots per layer). On one rank the views are the
 * file's expert stacks and slot = expert. The slot storage asks for huge
 * pages. With live balancing a slot keeps its pages when its copy leaves,
 * so the next copy to arrive there takes no page faults and no zeroing
 * (--mem-limit counts both halves anyway); without it (forced moves only)
 * a slot whose copy leaves gives its pages back.
 *
 * Rebalancing (a REBALANCE step from rank 0, at a step boundary): every rank
 * holds the same statistics (routing is computed everywhere), so every rank
 * computes the same next placement and the same list of copy jobs (layer,
 * expert, source rank, destination rank) without exchanging them.
 * While the move is in progress decoding goes on with the old placement, and
 * at each step boundary every rank moves one share of it, at most
 * moe_move_bytes of its own new copies:
 *  - every rank has the model file: the rank reads its share from the file
 *    with all its threads (the pool), between steps. A helper thread beside
 *    the compute threads was tried first: it preempted spinning workers on
 *    the rank's cores and made every step of a move slow. Every rank knows
 *    every rank's jobs, so every rank knows at which boundary the last share
 *    is read and all switch there; a flag is all-reduced with each share so
 *    that a failed read stops every rank with an error;
 *  - some rank has no file (--weights-from 0): the ranks walk the common job
 *    list for up to moe_move_bytes, the rank holding the expert sending it to
 *    the one receiving (one sender and one receiver per job, all ranks in the
 *    same order: no deadlock); after the last job they switch.
 * A switch only rewrites slot tables and placements (no copying), so no step
 * waits for more than one share of a move. Results do not change: a token's
 * expert output is computed in full by whichever copy it is dealt to, and
 * outputs are added in expert order (engine_forward.c).
 * A forced rebalance (engine_moe_rebalance) completes its move at once.
 *
 * Profile (TT_LOG_LEVEL=3, several ranks): each rank logs, every
 * MOE_PROF_EVERY single-token steps and per phase at the end (static: no
 * move yet; moving; balanced: after a switch), its wall time per step, the
 * part spent in communication calls (waiting for slower ranks included),
 * the experts it computed per step against the busiest rank's and the mean,
 * its page faults, and the time its share of the moves took.
 */
#include "engine_internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define MOE_REPLICAS_DEFAULT 2
#define MOE_EVERY_DEFAULT 16
#define MOE_THRESHOLD_DEFAULT 1.1
#define MOE_MOVE_BYTES_DEFAULT (64ll << 20)  /* over the communicator, per step */
#define MOE_READ_BYTES_DEFAULT (256ll << 20) /* from the file, per rank and step */
#define MOE_MOVE_TAG 7907
#define MOE_PROF_EVERY 32                    /* single-token steps per profile line */

/* One new copy: expert x of layer il, sent by rank src (or read from the
 * file) to rank dst, into dst's physical slot `slot` (known on dst only). */
struct moe_job {
    int il, x, src, dst, slot;
};

/* One contiguous piece of a copy read from the file: one matrix of one
 * expert. */
struct moe_piece {
    const uint8_t *src; /* in the model file's map (read with pread) */
    size_t bytes;
    uint8_t *dst;
};

/* A move in progress (engine_moe.c's top comment). */
struct moe_move {
    struct moe_placement *next; /* [n_layer] the placement after the switch */
    bool *moving;               /* [n_layer] */
    struct moe_job *jobs;       /* all ranks' new copies, in (layer, dst, expert) order */
    int n_jobs, cursor;         /* jobs done: comm, all ranks; file, this rank's */
    int shares;                 /* file: boundaries at which the busiest rank's jobs are all read */
    uint64_t steps;             /* step boundaries seen */
    struct moe_piece *pieces;   /* file: [3 * n_jobs] room for one share */
};

/* Phases of a run for the profile. */
enum moe_phase { MOE_PHASE_STATIC, MOE_PHASE_MOVING, MOE_PHASE_BALANCED, MOE_PHASE_COUNT };
static const char *const moe_phase_names[MOE_PHASE_COUNT] = { "static", "moving", "balanced" };

/* Sums over single-token steps. */
struct moe_prof_sum {
    uint64_t steps;
    double step_s, comm_s, move_s; /* wall, in comm calls, reading/sending this rank's share */
    double mine, max, mean;        /* experts computed here, by the busiest rank, mean rank */
    double faults;                 /* page faults of the process */
};

/* The profile of this rank (engine_moe.c's top comment). */
struct moe_prof {
    double t_last, comm_last;      /* at the last step boundary */
    long faults_last;
    bool started, switched;
    int64_t tokens;                /* tokens of the current step (layer 0's dealing) */
    double mine, max, mean, move_s; /* of the current step */
    enum moe_phase cur_phase;       /* of the current step */
    struct moe_prof_sum phase[MOE_PHASE_COUNT], window;
    int window_moving;              /* steps of the window that ran during a move */
    uint64_t step;                  /* single-token steps counted */
};

/* One profile line: means per step of a sum. */
static void prof_print(const struct engine *e, const char *label, const struct moe_prof_sum *s)
{
    if (s->steps == 0) return;
    const double n = (double)s->steps;
    tt_debug("rank %d: profile %s: %llu steps, %.2f ms/step, comm %.2f, compute %.2f, move %.2f; "
             "experts here %.2f, busiest %.2f, mean %.2f; page faults %.0f",
             e->rank, label, (unsigned long long)s->steps, 1e3 * s->step_s / n, 1e3 * s->comm_s / n,
             1e3 * (s->step_s - s->comm_s) / n, 1e3 * s->move_s / n, s->mine / n, s->max / n,
             s->mean / n, s->faults / n);
}

/* Bytes of one expert of a stacked expert weight. */
static size_t expert_bytes(const struct model_weight *w) { return w->row_bytes * (size_t)w->ne[1]; }

/* Read expert x of layer il from the model file into slot s's storage. */
static int read_slot(struct engine *e, int il, int s, int x)
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
    return 0;
}

static void assign_slot(struct engine *e, int il, int s, int x)
{
    e->moe_slot_expert[(size_t)il * e->moe_phys_slots + s] = x;
    e->moe_slot_of[(size_t)il * e->m->hp.n_expert + x] = s;
}

/* Slot storage and views for several ranks; fills the static placement. */
static int setup_slots(struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    size_t total = 0; /* layers may differ in expert types (Q4_K_M mixes) */
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *ml = &e->m->layers[il];
        total += (expert_bytes(&ml->gate_exps) + expert_bytes(&ml->up_exps) +
                  expert_bytes(&ml->down_exps)) * (size_t)e->moe_phys_slots;
    }
    /* --mem-limit: the live placement's slots; with balancing on, both halves
     * (a move fills the second while the first serves). */
    const size_t resident = e->moe_every > 0 ? total : total / 2;
    if (e->mem_limit && e->shard_bytes + e->buffers_bytes + resident > e->mem_limit)
        return tt_error_set(TT_ENOMEM, "rank %d needs %.0f MiB (its weights %.0f MiB, expert slots %.0f MiB%s, "
                            "KV cache and buffers %.0f MiB) but its memory limit is %.0f MiB; use more "
                            "ranks, fewer --moe-replicas or --moe-every -1", e->rank,
                            (double)(e->shard_bytes + e->buffers_bytes + resident) / 1048576.0,
                            (double)e->shard_bytes / 1048576.0, (double)resident / 1048576.0,
                            e->moe_every > 0 ? " with room for a move" : "",
                            (double)e->buffers_bytes / 1048576.0, (double)e->mem_limit / 1048576.0);
    e->moe_buf = tt_alloc(total);
    if (!e->moe_buf)
        return tt_error_set(TT_ENOMEM, "cannot allocate %.1f MiB for expert slots",
                            (double)total / 1048576.0);
    /* Huge pages where the system gives them on advice: fewer TLB misses
     * while streaming experts, and a copy arriving in a fresh slot takes one
     * fault per 2 MiB instead of one per 4 KiB. */
    engine_advise_pages(e->moe_buf, total, MADV_HUGEPAGE);
    uint8_t *at = e->moe_buf;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *ml = &e->m->layers[il];
        struct engine_layer *l = &e->layers[il];
        const struct model_weight *src[3] = { &ml->gate_exps, &ml->up_exps, &ml->down_exps };
        struct engine_weight *dst[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
        for (int i = 0; i < 3; i++) {
            *dst[i] = (struct engine_weight){ .data = at, .type = src[i]->type, .n_in = src[i]->ne[0],
                                              .n_out = src[i]->ne[1], .row_stride = src[i]->row_bytes,
                                              .expert_stride = expert_bytes(src[i]) };
            at += expert_bytes(src[i]) * (size_t)e->moe_phys_slots;
        }
        const struct moe_placement *p = &e->moe_place[il];
        int s = 0, err = 0;
        for (int x = 0; x < hp->n_expert && !err; x++)
            if (moe_copy_index(p, x, e->tp_rank) >= 0) {
                err = read_slot(e, il, s, x);
                assign_slot(e, il, s++, x);
            }
        if (err) return err;
    }
    return 0;
}

static int check_init(struct engine *e);

int moe_setup(struct engine *e, const struct engine_opts *opts)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0) return 0;
    const int R = e->tp_size, X = hp->n_expert;
    const int replicas = opts->moe_replicas < 0 ? 0 : opts->moe_replicas ? opts->moe_replicas : MOE_REPLICAS_DEFAULT;
    e->moe_slots = R == 1 ? X : TT_MIN(X, (X + R - 1) / R + replicas);
    e->moe_phys_slots = R == 1 ? X : 2 * e->moe_slots; /* room for a whole new placement */
    e->moe_move_bytes = opts->moe_move_bytes > 0 ? opts->moe_move_bytes : 0;
    e->moe_from_ranks = opts->moe_move_over_comm;
    e->moe_every = opts->moe_every < 0 ? 0 : opts->moe_every ? opts->moe_every : MOE_EVERY_DEFAULT;
    e->moe_threshold = opts->moe_threshold > 0 ? opts->moe_threshold : MOE_THRESHOLD_DEFAULT;
    int err = moe_stats_init(&e->moe_stats, hp->n_layer, X, ENGINE_MOE_WINDOW);
    if (err) return err;
    e->moe_place = calloc((size_t)hp->n_layer, sizeof(*e->moe_place));
    e->moe_slot_of = malloc(sizeof(int32_t) * (size_t)hp->n_layer * X);
    e->moe_slot_expert = malloc(sizeof(int32_t) * (size_t)hp->n_layer * e->moe_phys_slots);
    e->moe_pair_rank = malloc(sizeof(int16_t) * (size_t)e->n_batch * hp->n_expert_used);
    e->moe_prof = R > 1 ? calloc(1, sizeof(*e->moe_prof)) : NULL;
    if (!err) err = moe_dealer_init(&e->moe_dealer, X, R);
    if (err) return err;
    if (!e->moe_place || !e->moe_slot_of || !e->moe_slot_expert || !e->moe_pair_rank ||
        (R > 1 && !e->moe_prof))
        return tt_error_set(TT_ENOMEM, "out of memory for the expert placement");
    for (int il = 0; il < hp->n_layer && !err; il++)
        err = moe_placement_init(&e->moe_place[il], X, R, e->moe_slots);
    if (err) return err;
    for (size_t i = 0; i < (size_t)hp->n_layer * X; i++) e->moe_slot_of[i] = R == 1 ? (int32_t)(i % X) : -1;
    for (size_t i = 0; i < (size_t)hp->n_layer * e->moe_phys_slots; i++)
        e->moe_slot_expert[i] = R == 1 ? (int32_t)(i % X) : -1;
    if (R > 1 && (err = check_init(e))) return err;
    return R == 1 ? 0 : setup_slots(e);
}

static void move_free(struct engine *e);
static void check_free(struct engine *e);

void moe_teardown(struct engine *e)
{
    move_free(e);
    check_free(e);
    if (e->moe_dealt_mean > 0)
        tt_debug("rank %d: MoE work per step, most loaded rank / mean: %.3f", e->rank,
                 e->moe_dealt_max / e->moe_dealt_mean);
    if (e->moe_prof) {
        for (int ph = 0; ph < MOE_PHASE_COUNT; ph++)
            prof_print(e, moe_phase_names[ph], &e->moe_prof->phase[ph]);
        free(e->moe_prof);
        e->moe_prof = NULL;
    }
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
    const int K = e->m->hp.n_expert_used;
    moe_deal(&e->moe_dealer, &e->moe_place[il], e->sel, n_tok * K, e->moe_pair_rank);
    int64_t max = 0, sum = 0;
    for (int r = 0; r < e->tp_size; r++) {
        max = TT_MAX(max, e->moe_dealer.rank_cost[r]);
        sum += e->moe_dealer.rank_cost[r];
    }
    e->moe_dealt_max += (double)max;
    e->moe_dealt_mean += (double)sum / e->tp_size;
    struct moe_prof *pf = e->moe_prof;
    if (!pf) return;
    if (il == 0) pf->tokens = n_tok;
    if (n_tok != 1) return;
    /* One token: its K pairs are K distinct experts, each a whole expert read
     * costing the dealer MOE_DEAL_COPY_COST + 1, so a rank's cost counts its
     * experts. */
    pf->mine += (double)(e->moe_dealer.rank_cost[e->tp_rank] / (MOE_DEAL_COPY_COST + 1));
    pf->max += (double)(max / (MOE_DEAL_COPY_COST + 1));
    pf->mean += (double)K / e->tp_size;
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

/* Scratch for judging placements by the work of each recorded step
 * (moe_window_dealt_cost). */
struct deal_scratch {
    struct moe_dealer dealer;
    int32_t *sel;
    int16_t *pair_rank;
    int64_t max_pairs;
};

static void scratch_free(struct deal_scratch *sc)
{
    moe_dealer_free(&sc->dealer);
    free(sc->sel);
    free(sc->pair_rank);
}

static int scratch_init(const struct engine *e, struct deal_scratch *sc)
{
    memset(sc, 0, sizeof(*sc));
    sc->max_pairs = (int64_t)e->n_batch * e->m->hp.n_expert_used;
    int err = moe_dealer_init(&sc->dealer, e->m->hp.n_expert, e->tp_size);
    sc->sel = malloc(sizeof(int32_t) * (size_t)sc->max_pairs);
    sc->pair_rank = malloc(sizeof(int16_t) * (size_t)sc->max_pairs);
    if (!err && (!sc->sel || !sc->pair_rank)) err = tt_error_set(TT_ENOMEM, "out of memory");
    if (err) scratch_free(sc);
    return err;
}

/* Several ranks: what the balancer's checks work in, made once by moe_setup
 * (the checks run every moe_every decode steps). */
struct moe_check {
    struct deal_scratch sc;
    struct moe_placement next; /* a layer's proposed placement */
};

static void check_free(struct engine *e)
{
    if (!e->moe_check) return;
    scratch_free(&e->moe_check->sc);
    moe_placement_free(&e->moe_check->next);
    free(e->moe_check);
    e->moe_check = NULL;
}

static int check_init(struct engine *e)
{
    if (!(e->moe_check = calloc(1, sizeof(*e->moe_check))))
        return tt_error_set(TT_ENOMEM, "out of memory for the expert balancer");
    int err = scratch_init(e, &e->moe_check->sc);
    if (!err) err = moe_placement_init(&e->moe_check->next, e->m->hp.n_expert, e->tp_size, e->moe_slots);
    return err;
}

/* The placement of layer il the balancer would choose now, and whether it is
 * worth moving to. The layer must be above the threshold (max/mean rank
 * load over the window) and the new placement must cut that imbalance by
 * MOE_GAIN_MIN. For live balancing (sc not NULL) below MOE_LOAD_CAP it must
 * also cut the time by MOE_GAIN_MIN: the window's steps dealt again, each
 * step as long as its busiest rank; nothing is tried while dealing already
 * keeps every step within MOE_DEALT_SLACK of even. Above the cap the loads
 * alone decide: dealing evens the steps only while the hot experts keep
 * their mix, and the imbalance is what the server reports. Spare copies let
 * dealing even out a placement whose load split is uneven: on the device
 * machine (4 ranks, 48 layers) the largest layer load imbalance hovered at
 * 1.1-1.15 while every step dealt 2 of the 8 experts to each rank in every
 * layer, and judging by loads still moved copies in 1-4 layers at most
 * checks. */
#define MOE_GAIN_MIN 0.10
#define MOE_DEALT_SLACK 0.02
#define MOE_LOAD_CAP 1.25
static bool propose_layer(const struct engine *e, int il, struct moe_placement *next,
                          struct deal_scratch *sc)
{
    const uint64_t *load = moe_stats_layer(&e->moe_stats, il);
    const double now = moe_imbalance(&e->moe_place[il], load);
    if (now <= e->moe_threshold) return false;
    const bool by_time = sc && now <= MOE_LOAD_CAP;
    double bound = 0.0, dealt_now = 0.0;
    if (by_time) {
        dealt_now = moe_window_dealt_cost(&e->moe_stats, il, &e->moe_place[il], &sc->dealer,
                                          sc->sel, sc->pair_rank, sc->max_pairs, &bound);
        if (dealt_now <= bound * (1.0 + MOE_DEALT_SLACK)) return false;
    }
    moe_placement_copy(next, &e->moe_place[il]);
    moe_balance(next, load);
    if (moe_imbalance(next, load) >= now * (1.0 - MOE_GAIN_MIN)) return false;
    return !by_time || moe_window_dealt_cost(&e->moe_stats, il, next, &sc->dealer, sc->sel,
                                             sc->pair_rank, sc->max_pairs, &bound) <
                           dealt_now * (1.0 - MOE_GAIN_MIN);
}

bool moe_rebalance_wanted(const struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0 || e->tp_size == 1 || e->pipeline) return false;
    if (tt_log_get_level() >= TT_LOG_DEBUG) { /* the imbalance over time, for benchmarks */
        double sum = 0.0;
        for (int il = 0; il < hp->n_layer; il++)
            sum += moe_imbalance(&e->moe_place[il], moe_stats_layer(&e->moe_stats, il));
        tt_debug("rank %d: step %llu: imbalance max %.3f mean %.3f%s", e->rank,
                 (unsigned long long)e->moe_stats.steps, moe_max_imbalance(e), sum / hp->n_layer,
                 e->moe_move ? " (moving)" : "");
    }
    if (e->moe_move) return false;
    bool want = false;
    for (int il = 0; il < hp->n_layer && !want; il++)
        want = propose_layer(e, il, &e->moe_check->next, &e->moe_check->sc);
    return want;
}

/* A free physical slot of layer il on this rank, reserved (-2). */
static int reserve_slot(struct engine *e, int il)
{
    int32_t *slot_x = e->moe_slot_expert + (size_t)il * e->moe_phys_slots;
    for (int s = 0; s < e->moe_phys_slots; s++)
        if (slot_x[s] == -1) {
            slot_x[s] = -2;
            return s;
        }
    TT_ASSERT(!"no free expert slot (there are twice the placement's slots)");
    return -1;
}

/* The copy jobs of layer il's move to `next`, appended to m->jobs; slots on
 * this rank reserved for the copies it receives. */
static void plan_jobs(struct engine *e, struct moe_move *m, int il,
                      const struct moe_placement *next)
{
    const struct moe_placement *now = &e->moe_place[il];
    for (int r = 0; r < e->tp_size; r++)
        for (int x = 0; x < now->n_expert; x++) {
            if (moe_copy_index(now, x, r) >= 0 || moe_copy_index(next, x, r) < 0) continue;
            struct moe_job j = { il, x, now->copies[(size_t)x * now->n_ranks], r, -1 };
            if (r == e->tp_rank) j.slot = reserve_slot(e, il);
            m->jobs[m->n_jobs++] = j;
        }
}

/* Bytes of one copy of an expert of layer il (its three matrices). */
static int64_t copy_bytes(const struct engine *e, int il)
{
    const struct engine_layer *l = &e->layers[il];
    return (int64_t)(l->gate_exps.expert_stride + l->up_exps.expert_stride +
                     l->down_exps.expert_stride);
}

/* Bytes a rank moves per step boundary. */
static int64_t move_budget(const struct engine *e)
{
    if (e->moe_move_bytes > 0) return e->moe_move_bytes;
    return e->moe_from_ranks ? MOE_MOVE_BYTES_DEFAULT : MOE_READ_BYTES_DEFAULT;
}

/* File: rank r's share of the jobs from index `at` on: its jobs (others'
 * skipped) up to `budget` bytes, at least one (all with budget < 0). Returns
 * the index after the share; *bytes = the share's bytes (0: none left). */
static int share_end(const struct engine *e, const struct moe_move *m, int r, int at,
                     int64_t budget, int64_t *bytes)
{
    *bytes = 0;
    for (; at < m->n_jobs && (budget < 0 || *bytes < budget); at++)
        if (m->jobs[at].dst == r) *bytes += copy_bytes(e, m->jobs[at].il);
    return at;
}

/* File: the boundaries the busiest rank needs to read its jobs (every rank
 * computes the same number, so all switch at the same boundary). */
static int count_shares(const struct engine *e, const struct moe_move *m)
{
    int most = 0;
    for (int r = 0; r < e->tp_size; r++) {
        int n = 0, at = 0;
        int64_t bytes;
        while ((at = share_end(e, m, r, at, move_budget(e), &bytes)), bytes > 0) n++;
        most = TT_MAX(most, n);
    }
    return most;
}

/* A parallel read of pieces from the model file: each thread reads its
 * range of the pieces' bytes laid end to end. */
struct read_ctx {
    struct engine *e;
    const struct moe_piece *pieces;
    int n_pieces;
    int64_t total;
    atomic_int err;
    char detail[256]; /* the first failing thread's message */
};

static void read_pieces_job(void *arg, int ith, int nth)
{
    struct read_ctx *c = arg;
    int64_t begin, end, at = 0;
    tt_split_range(c->total, ith, nth, 4096, &begin, &end);
    for (int i = 0; i < c->n_pieces && at < end; at += (int64_t)c->pieces[i++].bytes) {
        const struct moe_piece *p = &c->pieces[i];
        const int64_t lo = TT_MAX(begin, at), hi = TT_MIN(end, at + (int64_t)p->bytes);
        if (lo >= hi) continue;
        int err = shard_read(c->e, p->src + (lo - at), (size_t)(hi - lo), p->dst + (lo - at));
        int none = 0;
        if (err && atomic_compare_exchange_strong(&c->err, &none, err))
            snprintf(c->detail, sizeof(c->detail), "%s", tt_error_detail());
        if (err) return;
    }
}

/* File: read this rank's jobs among jobs [from, to) into their slots, with
 * all the rank's threads. */
static int read_share(struct engine *e, struct moe_move *m, int from, int to)
{
    int n = 0;
    int64_t total = 0;
    for (int i = from; i < to; i++) {
        const struct moe_job *j = &m->jobs[i];
        if (j->dst != e->tp_rank) continue;
        const struct model_layer *ml = &e->m->layers[j->il];
        const struct engine_layer *l = &e->layers[j->il];
        const struct model_weight *src[3] = { &ml->gate_exps, &ml->up_exps, &ml->down_exps };
        const struct engine_weight *dst[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
        for (int k = 0; k < 3; k++) {
            m->pieces[n++] = (struct moe_piece){ model_weight_row(src[k], j->x, 0), dst[k]->expert_stride,
                                                 (uint8_t *)dst[k]->data + (size_t)j->slot * dst[k]->expert_stride };
            total += (int64_t)dst[k]->expert_stride;
        }
    }
    if (n == 0) return 0;
    struct read_ctx c = { .e = e, .pieces = m->pieces, .n_pieces = n, .total = total };
    atomic_init(&c.err, 0);
    tt_pool_run(e->pool, read_pieces_job, &c);
    const int err = atomic_load(&c.err);
    return err ? tt_error_set(err, "reading expert copies from the model file: %s", c.detail) : 0;
}

static void move_free(struct engine *e)
{
    struct moe_move *m = e->moe_move;
    if (!m) return;
    for (int il = 0; m->next && il < e->m->hp.n_layer; il++) moe_placement_free(&m->next[il]);
    free(m->next);
    free(m->moving);
    free(m->jobs);
    free(m->pieces);
    free(m);
    e->moe_move = NULL;
}

/* Give up the move in flight (an error): the slots reserved for it are free
 * again; the placement stays as it is. */
static void move_abort(struct engine *e)
{
    struct moe_move *m = e->moe_move;
    for (int i = 0; m && i < m->n_jobs; i++)
        if (m->jobs[i].dst == e->tp_rank && m->jobs[i].slot >= 0)
            e->moe_slot_expert[(size_t)m->jobs[i].il * e->moe_phys_slots + m->jobs[i].slot] = -1;
    move_free(e);
}

/* Allocate a move with room for every layer's jobs. */
static int move_alloc(struct engine *e, struct moe_move **out)
{
    const struct model_hparams *hp = &e->m->hp;
    struct moe_move *m = calloc(1, sizeof(*m));
    *out = m;
    if (!m) return tt_error_set(TT_ENOMEM, "out of memory for an expert move");
    const size_t max_jobs = (size_t)hp->n_layer * e->tp_size * e->moe_phys_slots;
    m->next = calloc((size_t)hp->n_layer, sizeof(*m->next));
    m->moving = calloc((size_t)hp->n_layer, sizeof(bool));
    m->jobs = malloc(sizeof(*m->jobs) * max_jobs);
    m->pieces = malloc(sizeof(*m->pieces) * 3 * max_jobs);
    if (!m->next || !m->moving || !m->jobs || !m->pieces)
        return tt_error_set(TT_ENOMEM, "out of memory for an expert move");
    int err = 0;
    for (int il = 0; il < hp->n_layer && !err; il++)
        err = moe_placement_init(&m->next[il], hp->n_expert, e->tp_size, e->moe_slots);
    return err;
}

/* Give the memory of slot s of layer il back to the system (the whole pages
 * inside each of its three matrices; they read as zeros until a new copy
 * fills the slot), so that resident memory follows the live placement rather
 * than every slot ever used. Not with live balancing: there the slots keep
 * their pages for the next moves (engine_moe.c's top comment). */
static void release_slot(struct engine *e, int il, int s)
{
    if (e->moe_every > 0) return;
    const struct engine_layer *l = &e->layers[il];
    const struct engine_weight *w[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
    for (int i = 0; i < 3; i++)
        engine_advise_pages((const uint8_t *)w[i]->data + (size_t)s * w[i]->expert_stride,
                     w[i]->expert_stride, MADV_DONTNEED);
}

/* Every rank at once: the moved layers take their new placements. Slots of
 * copies that leave are freed (and their memory released); received copies
 * take their reserved slots. */
static void move_switch(struct engine *e)
{
    struct moe_move *m = e->moe_move;
    const int X = e->m->hp.n_expert, S = e->moe_phys_slots;
    int moved = 0;
    for (int il = 0; il < e->m->hp.n_layer; il++) {
        if (!m->moving[il]) continue;
        int32_t *slot_of = e->moe_slot_of + (size_t)il * X;
        int32_t *slot_x = e->moe_slot_expert + (size_t)il * S;
        for (int s = 0; s < S; s++)
            if (slot_x[s] >= 0 && moe_copy_index(&m->next[il], slot_x[s], e->tp_rank) < 0) {
                slot_of[slot_x[s]] = -1;
                slot_x[s] = -1;
                release_slot(e, il, s);
            }
        moe_placement_copy(&e->moe_place[il], &m->next[il]);
    }
    for (int i = 0; i < m->n_jobs; i++)
        if (m->jobs[i].dst == e->tp_rank) {
            assign_slot(e, m->jobs[i].il, m->jobs[i].slot, m->jobs[i].x);
            moved++;
        }
    tt_debug("rank %d: expert move switched after %llu steps: %d copies received here, "
             "max imbalance now %.3f",
             e->rank, (unsigned long long)m->steps, moved, moe_max_imbalance(e));
    if (e->moe_prof) e->moe_prof->switched = true;
    move_free(e);
}

/* Comm: the jobs from the cursor on, up to `budget` bytes (at least one job;
 * all with budget < 0). */
static int move_transfer(struct engine *e, int64_t budget)
{
    struct moe_move *m = e->moe_move;
    int64_t sent = 0;
    while (m->cursor < m->n_jobs && (budget < 0 || sent < budget)) {
        const struct moe_job *j = &m->jobs[m->cursor++];
        struct engine_layer *l = &e->layers[j->il];
        const struct engine_weight *w[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
        for (int i = 0; i < 3; i++) {
            const size_t bytes = w[i]->expert_stride;
            int err = 0;
            if (j->src == e->tp_rank) {
                const int s = e->moe_slot_of[(size_t)j->il * e->m->hp.n_expert + j->x];
                TT_ASSERT(s >= 0);
                err = comm_send(e->comm, (uint8_t *)w[i]->data + (size_t)s * bytes, bytes, j->dst,
                                MOE_MOVE_TAG);
            } else if (j->dst == e->tp_rank) {
                err = comm_recv(e->comm, (uint8_t *)w[i]->data + (size_t)j->slot * bytes, bytes,
                                j->src, MOE_MOVE_TAG);
            }
            if (err)
                return tt_error_set(err, "moving expert %d of layer %d from rank %d to rank %d: %s",
                                    j->x, j->il, j->src, j->dst, tt_error_detail());
            sent += (int64_t)bytes;
        }
    }
    return 0;
}

/* File: this rank reads its next share (all that is left with budget < 0);
 * then every rank learns whether all ranks succeeded. */
static int move_read(struct engine *e, int64_t budget)
{
    struct moe_move *m = e->moe_move;
    int64_t bytes;
    const int end = share_end(e, m, e->tp_rank, m->cursor, budget, &bytes);
    int err = read_share(e, m, m->cursor, end);
    m->cursor = end;
    float failed = err != 0;
    int cerr = comm_allreduce_sum(e->comm, &failed, 1, COMM_WIRE_F32);
    if (cerr) return cerr;
    if (!err && failed > 0)
        err = tt_error_set(TT_EIO, "another rank could not read its expert copies from the model "
                                   "file (its log says why); is the file still there on every host?");
    return err;
}

/* Complete the move in flight now (every rank at the same step boundary):
 * the remaining reads or transfers, then the switch. On an error the move
 * is given up. */
static int move_finish(struct engine *e)
{
    int err = e->moe_from_ranks ? move_transfer(e, -1) : move_read(e, -1);
    if (err) {
        move_abort(e);
        return err;
    }
    move_switch(e);
    return 0;
}

/* Seconds this rank spent in communication calls so far, each of its
 * communicators counted once (they may be the same one). */
static double prof_comm_s(const struct engine *e)
{
    struct comm *const cs[3] = { e->comm, e->tp_comm, e->step_comm };
    double total = 0;
    for (int i = 0; i < 3; i++) {
        bool counted = cs[i] == NULL;
        for (int j = 0; j < i; j++) counted |= cs[j] == cs[i];
        double sec = 0;
        if (!counted) comm_stats(cs[i], &sec, NULL);
        total += sec;
    }
    return total;
}

/* Profile: end the step that ran since the last boundary (only single-token
 * steps are counted), and start the next one at this boundary. */
static void prof_boundary(struct engine *e)
{
    struct moe_prof *pf = e->moe_prof;
    const double now = tt_now_s();
    const double comm_s = prof_comm_s(e);
    struct rusage ru;
    const long faults = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_minflt + ru.ru_majflt : 0;
    if (pf->started && pf->tokens == 1) {
        const struct moe_prof_sum step = { 1, now - pf->t_last, comm_s - pf->comm_last, pf->move_s,
                                           pf->mine, pf->max, pf->mean, (double)(faults - pf->faults_last) };
        struct moe_prof_sum *sums[2] = { &pf->phase[pf->cur_phase], &pf->window };
        for (int i = 0; i < 2; i++) {
            sums[i]->steps++;
            sums[i]->step_s += step.step_s;
            sums[i]->comm_s += step.comm_s;
            sums[i]->move_s += step.move_s;
            sums[i]->mine += step.mine;
            sums[i]->max += step.max;
            sums[i]->mean += step.mean;
            sums[i]->faults += step.faults;
        }
        pf->window_moving += pf->cur_phase == MOE_PHASE_MOVING;
        if (pf->window.steps == MOE_PROF_EVERY) {
            char label[96];
            snprintf(label, sizeof(label), "steps %llu-%llu (%d moving)",
                     (unsigned long long)(pf->step - MOE_PROF_EVERY + 1), (unsigned long long)pf->step,
                     pf->window_moving);
            prof_print(e, label, &pf->window);
            memset(&pf->window, 0, sizeof(pf->window));
            pf->window_moving = 0;
        }
        pf->step++;
    }
    pf->started = true;
    pf->t_last = now;
    pf->comm_last = comm_s;
    pf->faults_last = faults;
    pf->tokens = 0;
    pf->mine = pf->max = pf->mean = pf->move_s = 0;
}

int moe_move_progress(struct engine *e)
{
    if (e->moe_prof) prof_boundary(e);
    struct moe_move *m = e->moe_move;
    int err = 0;
    if (m) {
        const double t0 = tt_now_s();
        m->steps++;
        if (e->moe_from_ranks) err = move_transfer(e, move_budget(e));
        else err = move_read(e, move_budget(e));
        if (err) move_abort(e);
        else if (e->moe_from_ranks ? m->cursor == m->n_jobs : m->steps >= (uint64_t)m->shares)
            move_switch(e);
        if (e->moe_prof) e->moe_prof->move_s = tt_now_s() - t0;
    }
    if (e->moe_prof)
        e->moe_prof->cur_phase = e->moe_move ? MOE_PHASE_MOVING
                                 : e->moe_prof->switched ? MOE_PHASE_BALANCED : MOE_PHASE_STATIC;
    return err;
}

bool moe_moving(const struct engine *e) { return e->moe_move != NULL; }

int moe_rebalance(struct engine *e, bool background)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0 || e->tp_size == 1 || e->pipeline) return 0;
    if (e->moe_move) {
        if (background) return 0;
        int err = move_finish(e); /* a forced rebalance completes the move in flight first */
        if (err) return err;
    }
    struct moe_move *m;
    int err = move_alloc(e, &m);
    e->moe_move = m;
    if (err) {
        move_free(e);
        return err;
    }
    int n_layers = 0;
    for (int il = 0; il < hp->n_layer; il++)
        if (propose_layer(e, il, &m->next[il], background ? &e->moe_check->sc : NULL)) {
            m->moving[il] = true;
            plan_jobs(e, m, il, &m->next[il]);
            n_layers++;
        }
    if (n_layers == 0) { /* nothing worth moving */
        move_free(e);
        return 0;
    }
    if (!e->moe_from_ranks) m->shares = count_shares(e, m);
    tt_debug("rank %d: expert move of %d layers, %d copies (%s, %d steps)", e->rank, n_layers,
             m->n_jobs, e->moe_from_ranks ? "over the communicator" : "from the file",
             e->moe_from_ranks ? -1 : m->shares);
    return background ? 0 : move_finish(e);
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
