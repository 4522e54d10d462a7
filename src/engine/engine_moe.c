/*
 * engine_moe.c: where the experts of MoE layers live on this rank, their
 * load statistics, and live rebalancing.
 *
 * Slots: on several ranks each layer has `moe_slots` places per rank for
 * experts in the placement (its share plus spare places for hot copies) and
 * as many again, so that new copies can arrive while the old ones are still
 * in use (any new placement fits); the layer's gate/up/down_exps views index
 * physical slots (moe_phys_slots per layer). The second half is allocated
 * but only touched by moves. On one rank the views are the file's expert
 * stacks and slot = expert.
 *
 * Rebalancing (a REBALANCE step from rank 0, at a step boundary): every rank
 * holds the same statistics (routing is computed everywhere), so every rank
 * computes the same next placement and the same list of copy jobs (layer,
 * expert, source rank, destination rank) without exchanging them.
 * While the move is in progress decoding goes on with the old placement:
 *  - every rank has the model file: a helper thread on each rank reads its
 *    new copies from the file into free slots; at each step boundary the
 *    ranks all-reduce a done flag and switch together once all are done;
 *  - some rank has no file (--weights-from 0): at each step boundary the
 *    ranks walk the common job list for up to moe_move_bytes, the rank
 *    holding the expert sending it to the one receiving (one sender and one
 *    receiver per job, all ranks in the same order: no deadlock); after the
 *    last job they switch.
 * A switch only rewrites slot tables and placements (no copying), so no step
 * waits for more than one step's share of a move. Results do not change: a
 * token's expert output is computed in full by whichever copy it is dealt
 * to, and outputs are added in expert order (engine_forward.c).
 * A forced rebalance (engine_moe_rebalance) completes its move at once.
 */
#include "engine_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MOE_REPLICAS_DEFAULT 2
#define MOE_EVERY_DEFAULT 16
#define MOE_THRESHOLD_DEFAULT 1.1
#define MOE_MOVE_BYTES_DEFAULT (64ll << 20)
#define MOE_MOVE_TAG 7907

/* One new copy: expert x of layer il, sent by rank src (or read from the
 * file) to rank dst, into dst's physical slot `slot` (known on dst only). */
struct moe_job {
    int il, x, src, dst, slot;
};

/* A move in progress (engine_moe.c's top comment). */
struct moe_move {
    struct moe_placement *next; /* [n_layer] the placement after the switch */
    bool *moving;               /* [n_layer] */
    struct moe_job *jobs;       /* all ranks' new copies, in (layer, dst, expert) order */
    int n_jobs, cursor;         /* comm: jobs done */
    uint64_t steps;             /* step boundaries seen */
    bool threaded;              /* file reads on a helper thread */
    pthread_t thread;
    atomic_int done;            /* helper: finished (1) */
    int err;                    /* helper's error */
};

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
    uint8_t *at = e->moe_buf;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *ml = &e->m->layers[il];
        struct engine_layer *l = &e->layers[il];
        const struct model_weight *src[3] = { &ml->gate_exps, &ml->up_exps, &ml->down_exps };
        struct engine_weight *dst[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
        for (int i = 0; i < 3; i++) {
            *dst[i] = (struct engine_weight){ at, src[i]->type, src[i]->ne[0], src[i]->ne[1],
                                              src[i]->row_bytes, expert_bytes(src[i]) };
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

int moe_setup(struct engine *e, const struct engine_opts *opts)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0) return 0;
    const int R = e->tp_size, X = hp->n_expert;
    const int replicas = opts->moe_replicas < 0 ? 0 : opts->moe_replicas ? opts->moe_replicas : MOE_REPLICAS_DEFAULT;
    e->moe_slots = R == 1 ? X : TT_MIN(X, (X + R - 1) / R + replicas);
    e->moe_phys_slots = R == 1 ? X : 2 * e->moe_slots; /* room for a whole new placement */
    e->moe_move_bytes = opts->moe_move_bytes > 0 ? opts->moe_move_bytes : MOE_MOVE_BYTES_DEFAULT;
    e->moe_from_ranks = opts->moe_move_over_comm;
    e->moe_every = opts->moe_every < 0 ? 0 : opts->moe_every ? opts->moe_every : MOE_EVERY_DEFAULT;
    e->moe_threshold = opts->moe_threshold > 0 ? opts->moe_threshold : MOE_THRESHOLD_DEFAULT;
    int err = moe_stats_init(&e->moe_stats, hp->n_layer, X, ENGINE_MOE_WINDOW);
    if (err) return err;
    e->moe_place = calloc((size_t)hp->n_layer, sizeof(*e->moe_place));
    e->moe_slot_of = malloc(sizeof(int32_t) * (size_t)hp->n_layer * X);
    e->moe_slot_expert = malloc(sizeof(int32_t) * (size_t)hp->n_layer * e->moe_phys_slots);
    e->moe_pair_rank = malloc(sizeof(int16_t) * (size_t)e->n_batch * hp->n_expert_used);
    if (!err) err = moe_dealer_init(&e->moe_dealer, X, R);
    if (err) return err;
    if (!e->moe_place || !e->moe_slot_of || !e->moe_slot_expert || !e->moe_pair_rank)
        return tt_error_set(TT_ENOMEM, "out of memory for the expert placement");
    for (int il = 0; il < hp->n_layer && !err; il++)
        err = moe_placement_init(&e->moe_place[il], X, R, e->moe_slots);
    if (err) return err;
    for (size_t i = 0; i < (size_t)hp->n_layer * X; i++) e->moe_slot_of[i] = R == 1 ? (int32_t)(i % X) : -1;
    for (size_t i = 0; i < (size_t)hp->n_layer * e->moe_phys_slots; i++)
        e->moe_slot_expert[i] = R == 1 ? (int32_t)(i % X) : -1;
    return R == 1 ? 0 : setup_slots(e);
}

static void move_free(struct engine *e);

void moe_teardown(struct engine *e)
{
    move_free(e);
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
    moe_deal(&e->moe_dealer, &e->moe_place[il], e->sel, n_tok * e->m->hp.n_expert_used,
             e->moe_pair_rank);
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
    struct moe_placement next;
    if (moe_placement_init(&next, hp->n_expert, e->tp_size, e->moe_slots)) return false;
    bool want = false;
    for (int il = 0; il < hp->n_layer && !want; il++) want = propose_layer(e, il, &next);
    moe_placement_free(&next);
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

/* Read this rank's new copies from the model file into their slots. */
static int read_jobs(struct engine *e, const struct moe_move *m)
{
    int err = 0;
    for (int i = 0; i < m->n_jobs && !err; i++)
        if (m->jobs[i].dst == e->tp_rank)
            err = read_slot(e, m->jobs[i].il, m->jobs[i].slot, m->jobs[i].x);
    return err;
}

/* The helper shares the rank's cores with the compute threads (whose pool
 * spins between jobs): at a low priority it would barely run and a move
 * would outlast the benchmark; at normal priority the first move of a
 * 48-layer model switched after 2 steps on the device machine. */
static void *move_thread(void *arg)
{
    struct engine *e = arg;
    e->moe_move->err = read_jobs(e, e->moe_move);
    atomic_store_explicit(&e->moe_move->done, 1, memory_order_release);
    return NULL;
}

static void move_free(struct engine *e)
{
    struct moe_move *m = e->moe_move;
    if (!m) return;
    if (m->threaded) pthread_join(m->thread, NULL);
    for (int il = 0; m->next && il < e->m->hp.n_layer; il++) moe_placement_free(&m->next[il]);
    free(m->next);
    free(m->moving);
    free(m->jobs);
    free(m);
    e->moe_move = NULL;
}

/* Allocate a move with room for every layer's jobs. */
static int move_alloc(struct engine *e, struct moe_move **out)
{
    const struct model_hparams *hp = &e->m->hp;
    struct moe_move *m = calloc(1, sizeof(*m));
    *out = m;
    if (!m) return tt_error_set(TT_ENOMEM, "out of memory for an expert move");
    m->next = calloc((size_t)hp->n_layer, sizeof(*m->next));
    m->moving = calloc((size_t)hp->n_layer, sizeof(bool));
    m->jobs = malloc(sizeof(*m->jobs) * (size_t)hp->n_layer * e->tp_size * e->moe_phys_slots);
    if (!m->next || !m->moving || !m->jobs)
        return tt_error_set(TT_ENOMEM, "out of memory for an expert move");
    int err = 0;
    for (int il = 0; il < hp->n_layer && !err; il++)
        err = moe_placement_init(&m->next[il], hp->n_expert, e->tp_size, e->moe_slots);
    return err;
}

/* Give the memory of slot s of layer il back to the system (the whole pages
 * inside each of its three matrices; they read as zeros until a new copy
 * fills the slot), so that resident memory follows the live placement rather
 * than every slot ever used. */
static void release_slot(struct engine *e, int il, int s)
{
    const struct engine_layer *l = &e->layers[il];
    const struct engine_weight *w[3] = { &l->gate_exps, &l->up_exps, &l->down_exps };
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < 3; i++) {
        const uintptr_t b = (uintptr_t)w[i]->data + (size_t)s * w[i]->expert_stride;
        const uintptr_t lo = (b + page - 1) & ~(page - 1), hi = (b + w[i]->expert_stride) & ~(page - 1);
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED); /* advice: failure only costs memory */
    }
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
            if (err) return err;
            sent += (int64_t)bytes;
        }
    }
    return 0;
}

/* Complete the move in flight now (every rank at the same step boundary):
 * wait for the helper, or move the remaining jobs; then switch. */
static void move_finish(struct engine *e)
{
    struct moe_move *m = e->moe_move;
    int err = 0;
    if (m->threaded) {
        pthread_join(m->thread, NULL);
        m->threaded = false;
        err = m->err;
    } else if (e->moe_from_ranks) {
        err = move_transfer(e, -1);
    }
    TT_ASSERT(err == 0 && "expert copies could not be read or received");
    move_switch(e);
}

void moe_move_progress(struct engine *e)
{
    struct moe_move *m = e->moe_move;
    if (!m) return;
    m->steps++;
    if (!m->threaded) {
        int err = move_transfer(e, e->moe_move_bytes);
        TT_ASSERT(err == 0 && "expert transfer failed: a rank is gone");
        if (m->cursor == m->n_jobs) move_switch(e);
        return;
    }
    float done = (float)atomic_load_explicit(&m->done, memory_order_acquire);
    int err = comm_allreduce_sum(e->comm, &done, 1, COMM_WIRE_F32);
    TT_ASSERT(err == 0 && "all-reduce failed: a rank is gone");
    if (done == (float)e->tp_size) move_finish(e);
}

bool moe_moving(const struct engine *e) { return e->moe_move != NULL; }

int moe_rebalance(struct engine *e, bool background)
{
    const struct model_hparams *hp = &e->m->hp;
    if (hp->n_expert == 0 || e->tp_size == 1 || e->pipeline) return 0;
    if (e->moe_move) {
        if (background) return 0;
        move_finish(e); /* a forced rebalance completes the move in flight first */
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
        if (propose_layer(e, il, &m->next[il])) {
            m->moving[il] = true;
            plan_jobs(e, m, il, &m->next[il]);
            n_layers++;
        }
    if (n_layers == 0) { /* nothing worth moving */
        move_free(e);
        return 0;
    }
    tt_debug("rank %d: expert move of %d layers, %d copies (%s)", e->rank, n_layers, m->n_jobs,
             e->moe_from_ranks ? "over the communicator" : "from the file");
    if (!e->moe_from_ranks && background && pthread_create(&m->thread, NULL, move_thread, e) == 0) {
        m->threaded = true;
        return 0;
    }
    if (e->moe_from_ranks && background) return 0; /* moe_move_progress moves a share per step */
    if (!e->moe_from_ranks) {
        err = read_jobs(e, m);
        TT_ASSERT(err == 0 && "the model file can no longer be read");
    }
    move_finish(e);
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
