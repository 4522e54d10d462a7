/*
 * test_moe_live.c: live expert moves while generating. A generated MoE model
 * with a skewed router runs on 4 ranks (comm_local threads) with live
 * balancing every 4 steps; the greedy tokens must be those of one rank,
 * moves must finish (switch at a later step boundary than their start), over
 * the communicator decode steps must run while a move is in flight
 * (generation does not stop for it), and the placement must end balanced. Both ways of
 * moving are covered: new copies read from the file on a helper thread, and
 * copies sent over the communicator by the rank holding the expert, a share
 * per step; and a forced rebalance while a move is in flight. A model file
 * that can no longer be read makes a rebalance fail with an error on every
 * rank (no abort, no hang).
 */
#include "test.h"

#include "comm/comm.h"
#include "engine/engine.h"
#include "test_moe_stats.h"
#include "model/model.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIVE_STEPS 48
#define LIVE_RANKS 4

struct live_rank {
    const struct model *m;
    struct comm *comm;
    bool over_comm;
    int64_t move_bytes;
    int32_t tokens[LIVE_STEPS];
    int steps_moving;   /* decode steps that ran with a move in flight */
    int switches;       /* moves seen to finish */
    double imbalance;   /* largest layer imbalance at the end */
    bool force;         /* force a rebalance while a move is in flight */
    int forced;         /* 1: forced, 2: and no move was in flight after it */
    const char *break_path; /* rank 0: truncate this file, then force a rebalance */
    char detail[256];   /* the error's message */
    int err;
};

static const int32_t prompt[] = { 1, 403, 407, 261, 378, 300, 301, 302, 303, 325, 371, 396 };

/* Rank 0: greedy decoding, watching for moves in flight. */
static void lead(struct engine *e, struct live_rank *r)
{
    struct sampler s;
    int32_t tok;
    r->err = test_greedy_start(e, &s, prompt, (int)(sizeof(prompt) / sizeof(prompt[0])), &tok);
    bool was_moving = false;
    for (int i = 0; i < LIVE_STEPS && !r->err; i++) {
        r->tokens[i] = tok;
        const bool moving = engine_moe_moving(e);
        r->steps_moving += moving && was_moving; /* a whole step ran during the move */
        r->switches += was_moving && !moving;
        was_moving = moving;
        if (r->force && moving && r->steps_moving >= 1 && !r->forced) {
            r->err = engine_moe_rebalance(e); /* completes the move in flight, then its own */
            r->forced = engine_moe_moving(e) ? 1 : 2;
            was_moving = false;
        }
        if (i + 1 < LIVE_STEPS) r->err = engine_eval_sample(e, &tok, 1, &s, &tok);
    }
    r->imbalance = test_moe_max_imbalance(e);
    sampler_free(&s);
}

/* Rank 0: a few steps, then the model file loses its experts (truncated)
 * and a forced rebalance must fail: the copies cannot be read. */
static void lead_broken_file(struct engine *e, struct live_rank *r)
{
    struct sampler s;
    int32_t tok;
    r->err = test_greedy_start(e, &s, prompt, (int)(sizeof(prompt) / sizeof(prompt[0])), &tok);
    for (int i = 0; i < 4 && !r->err; i++) r->err = engine_eval_sample(e, &tok, 1, &s, &tok);
    if (!r->err && truncate(r->break_path, 4096) != 0) r->err = -1;
    if (!r->err) r->err = engine_moe_rebalance(e);
    sampler_free(&s);
}

static void *rank_main(void *p)
{
    struct live_rank *r = p;
    struct engine_opts o = { .n_threads = 1, .n_ctx = 256, .comm = r->comm,
                             .moe_every = r->comm && !r->break_path ? 4 : -1,
                             .moe_threshold = 1.05, .moe_move_over_comm = r->over_comm,
                             .moe_move_bytes = r->move_bytes };
    struct engine *e;
    if ((r->err = engine_create(&e, r->m, &o))) return NULL;
    if (engine_rank(e) != 0) r->err = engine_worker_run(e);
    else if (r->break_path) {
        lead_broken_file(e, r);
        if (!r->err) engine_stop_workers(e); /* else they stopped with the error */
    } else {
        lead(e, r);
        engine_stop_workers(e);
    }
    snprintf(r->detail, sizeof(r->detail), "%s", r->err ? tt_error_detail() : "");
    engine_destroy(e);
    return NULL;
}

/* n ranks (1: no comm) as `like` says (its m, over_comm, move_bytes, force,
 * break_path); every rank's results in all[0..n). Returns rank 0's error,
 * else another rank's. */
static int run_ranks_all(int n, const struct live_rank *like, struct live_rank *all)
{
    struct comm *comms[LIVE_RANKS] = { NULL };
    pthread_t th[LIVE_RANKS];
    if (n > 1 && comm_local_group(comms, n)) return -1;
    for (int i = 0; i < n; i++) {
        all[i] = (struct live_rank){ .m = like->m, .comm = comms[i], .over_comm = like->over_comm,
                                     .move_bytes = like->move_bytes, .force = like->force,
                                     .break_path = like->break_path };
        pthread_create(&th[i], NULL, rank_main, &all[i]);
    }
    int err = 0;
    for (int i = n - 1; i >= 0; i--) {
        pthread_join(th[i], NULL);
        if (all[i].err) err = all[i].err;
        if (comms[i]) comm_free(comms[i]);
    }
    return err;
}

/* n ranks (1: no comm); rank 0's results in *out. */
static int run_ranks(const struct model *m, int n, bool over_comm, int64_t move_bytes, bool force,
                     struct live_rank *out)
{
    struct live_rank all[LIVE_RANKS];
    const struct live_rank like = { .m = m, .over_comm = over_comm, .move_bytes = move_bytes, .force = force };
    int err = run_ranks_all(n, &like, all);
    *out = all[0];
    return err;
}

static int make_model(char *path, struct model *m)
{
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    if (test_gen_skewed_moe(path)) return -1;
    return model_load(m, path);
}

static void check_live(bool over_comm, int64_t move_bytes, bool force)
{
    char path[] = "/tmp/tt_test_live_XXXXXX";
    struct model m;
    if (make_model(path, &m)) {
        TEST_SKIP("cannot make the test model in /tmp");
        return;
    }
    struct live_rank one, four;
    CHECK_EQ_INT(run_ranks(&m, 1, false, 0, false, &one), 0);
    CHECK_EQ_INT(run_ranks(&m, LIVE_RANKS, over_comm, move_bytes, force, &four), 0);
    int same = 0;
    while (same < LIVE_STEPS && four.tokens[same] == one.tokens[same]) same++;
    if (same < LIVE_STEPS || (over_comm && four.steps_moving < 1) || four.switches < 1 ||
        four.imbalance > 1.3 || getenv("TT_TEST_VERBOSE"))
        fprintf(stderr, "  %s: tokens same for %d/%d steps, %d steps ran during moves, %d moves "
                "finished, imbalance at the end %.3f\n", over_comm ? "over the comm" : "from the file",
                same, LIVE_STEPS, four.steps_moving, four.switches, four.imbalance);
    CHECK_EQ_INT(same, LIVE_STEPS);
    /* From the file the helper may finish before the next step boundary (the
     * switch then comes at that boundary); over the comm, at this budget, a
     * move always spans several steps. */
    CHECK(!over_comm || four.steps_moving >= 1);
    CHECK(four.switches >= 1);
    CHECK(four.imbalance <= 1.3);
    if (force) CHECK_EQ_INT(four.forced, 2);
    model_free(&m);
    unlink(path);
}

/* Copies read from the file on a helper thread; switch when all ranks are done. */
static void test_live_move_from_file(void) { check_live(false, 0, false); }

/* Copies sent by the ranks holding the experts, 256 KiB per step: a move
 * spans several steps (each expert is ~104 KiB). */
static void test_live_move_over_comm(void) { check_live(true, 256 << 10, false); }

/* A forced rebalance while a move is in flight completes that move first. */
static void test_forced_during_move(void) { check_live(true, 64 << 10, true); }

/* The model file truncated under running ranks: a forced rebalance cannot
 * read the new copies; every rank stops with TT_EIO (rank 0's message names
 * the file), nothing aborts or hangs. */
static void test_move_read_fails(void)
{
    char path[] = "/tmp/tt_test_live_XXXXXX";
    struct model m;
    if (make_model(path, &m)) {
        TEST_SKIP("cannot make the test model in /tmp");
        return;
    }
    struct live_rank all[LIVE_RANKS];
    const struct live_rank like = { .m = &m, .break_path = path };
    CHECK(run_ranks_all(LIVE_RANKS, &like, all) != 0);
    CHECK_EQ_INT(all[0].err, TT_EIO);
    for (int i = 1; i < LIVE_RANKS; i++) CHECK_EQ_INT(all[i].err, TT_EIO);
    CHECK(strstr(all[0].detail, "expert") != NULL);
    if (getenv("TT_TEST_VERBOSE"))
        for (int i = 0; i < LIVE_RANKS; i++) fprintf(stderr, "  rank %d: %s\n", i, all[i].detail);
    model_free(&m);
    unlink(path);
}

static const struct test_case tests[] = {
    { "live_move_from_file", test_live_move_from_file },
    { "live_move_over_comm", test_live_move_over_comm },
    { "forced_rebalance_during_move", test_forced_during_move },
    { "move_read_fails", test_move_read_fails },
};

TEST_MAIN(tests)
