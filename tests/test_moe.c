/*
 * test_moe.c: expert load statistics and the balancer.
 */
#include "test.h"

#include "moe/moe.h"

static void test_stats_window(void)
{
    struct moe_stats s;
    CHECK_EQ_INT(moe_stats_init(&s, 2, 4, 3), 0);
    for (int step = 0; step < 5; step++) {
        moe_stats_add(&s, 1, 2, (uint32_t)(step + 1));
        moe_stats_add(&s, 0, 0, 1);
        moe_stats_step(&s);
    }
    /* window of 3 steps: the last two recorded (4 and 5) plus the fresh one (0) */
    CHECK_EQ_INT(moe_stats_layer(&s, 1)[2], 4 + 5);
    CHECK_EQ_INT(moe_stats_layer(&s, 0)[0], 2);
    moe_stats_free(&s);
    CHECK_EQ_INT(moe_stats_init(&s, 0, 4, 3), TT_EINVAL);
}

static void test_static_and_invariants(void)
{
    struct moe_placement p;
    CHECK_EQ_INT(moe_placement_init(&p, 8, 3, 3), 0);
    moe_placement_check(&p);
    CHECK_EQ_INT(p.copies[0], 0);
    CHECK_EQ_INT(p.copies[7 * 3], 2);
    uint64_t even[8] = { 1, 1, 1, 1, 1, 1, 1, 1 };
    CHECK(moe_imbalance(&p, even) < 1.2);
    moe_placement_free(&p);
    CHECK_EQ_INT(moe_placement_init(&p, 8, 3, 2), TT_EINVAL); /* 6 slots < 8 experts */
}

/* Skewed (Zipf-like) loads: static placement is badly imbalanced, the balancer
 * with two spare slots per rank brings it near 1. */
static void test_balance_skewed(void)
{
    for (int R = 2; R <= 8; R++) {
        const int X = 128, slots = X / R + 2;
        uint64_t load[128];
        for (int x = 0; x < X; x++) load[x] = (uint64_t)(100000.0 / (1.0 + x * 0.5));
        struct moe_placement p;
        CHECK_EQ_INT(moe_placement_init(&p, X, R, slots), 0);
        double before = moe_imbalance(&p, load);
        moe_balance(&p, load);
        double after = moe_imbalance(&p, load);
        if (after > 1.15 || before < 1.5) fprintf(stderr, "  R=%d: imbalance %.3f -> %.3f\n", R, before, after);
        CHECK(before >= 1.5);
        CHECK(after <= 1.15);
        moe_placement_free(&p);
    }
}

/* Random loads and shapes: invariants always hold, never worse than static. */
static void test_balance_random(void)
{
    uint64_t seed = 99;
    for (int trial = 0; trial < 500; trial++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        const int X = 1 + (int)(seed >> 58) * 4 + (int)((seed >> 20) % 7);
        const int R = 1 + (int)((seed >> 30) % 9);
        const int slots = (X + R - 1) / R + (int)((seed >> 40) % 4);
        uint64_t load[300];
        for (int x = 0; x < X; x++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            load[x] = (seed >> 33) % 1000 * ((seed >> 13) % 5 == 0 ? 50 : 1);
        }
        struct moe_placement p;
        CHECK_EQ_INT(moe_placement_init(&p, X, R, slots), 0);
        double before = moe_imbalance(&p, load);
        moe_balance(&p, load); /* asserts its invariants */
        CHECK(moe_imbalance(&p, load) <= before + 1e-9);
        moe_placement_free(&p);
    }
}

/* Balancing twice with the same loads moves nothing; balancing after a small
 * change of loads moves few copies. */
static void test_balance_stable(void)
{
    const int X = 128, R = 4, slots = X / R + 4;
    uint64_t load[128];
    for (int x = 0; x < X; x++) load[x] = x < 8 ? 1000 : x < 16 ? 300 : 20 + (uint64_t)(x * 7 % 13);
    struct moe_placement p, q;
    CHECK_EQ_INT(moe_placement_init(&p, X, R, slots), 0);
    CHECK_EQ_INT(moe_placement_init(&q, X, R, slots), 0);
    moe_balance(&p, load);
    moe_placement_copy(&q, &p);
    moe_balance(&q, load);
    int moved = 0;
    for (int x = 0; x < X; x++)
        for (int c = 0; c < q.n_copies[x]; c++)
            moved += moe_copy_index(&p, x, q.copies[(size_t)x * R + c]) < 0;
    CHECK_EQ_INT(moved, 0);
    for (int x = 16; x < X; x += 5) load[x] += 9; /* drift of the cold experts */
    moe_balance(&q, load);
    moved = 0;
    for (int x = 0; x < X; x++)
        for (int c = 0; c < q.n_copies[x]; c++)
            moved += moe_copy_index(&p, x, q.copies[(size_t)x * R + c]) < 0;
    if (moved > 8) fprintf(stderr, "  %d copies moved after a small drift\n", moved);
    CHECK(moved <= 8);
    CHECK(moe_imbalance(&q, load) <= 1.15);
    moe_placement_free(&q);
    moe_placement_free(&p);
}

/* Dealing one decode step: every pair goes to a rank holding its expert,
 * and 8 hot experts with two copies each on 4 ranks give each rank two. */
static void test_deal_decode(void)
{
    const int X = 32, R = 4, slots = X / R + 4;
    uint64_t load[32] = { 0 };
    for (int x = 0; x < 8; x++) load[x] = 100; /* experts 0..7 on rank 0 in the static layout */
    struct moe_placement p;
    struct moe_dealer d;
    CHECK_EQ_INT(moe_placement_init(&p, X, R, slots), 0);
    CHECK_EQ_INT(moe_dealer_init(&d, X, R), 0);
    const int32_t sel[8] = { 3, 0, 7, 1, 6, 2, 5, 4 };
    int16_t rank[8];
    int per_rank[4] = { 0 };
    moe_deal(&d, &p, sel, 8, rank);
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(rank[i], 0); /* static: all on rank 0 */
    moe_balance(&p, load);
    moe_deal(&d, &p, sel, 8, rank);
    for (int i = 0; i < 8; i++) {
        CHECK(moe_copy_index(&p, sel[i], rank[i]) >= 0);
        per_rank[rank[i]]++;
    }
    for (int r = 0; r < R; r++) CHECK_EQ_INT(per_rank[r], 2);
    /* a prompt batch: 64 tokens on the same 8 experts split over the copies;
     * the greedy dealing is within 20% of the ideal (all copies busy, tokens
     * evenly split: 512 / R + 4 copies each); static placement costs 576 */
    int32_t many[512];
    int16_t many_rank[512];
    for (int i = 0; i < 512; i++) many[i] = sel[i % 8];
    moe_deal(&d, &p, many, 512, many_rank);
    int64_t max = 0;
    for (int r = 0; r < R; r++) max = d.rank_cost[r] > max ? d.rank_cost[r] : max;
    const int64_t ideal = 512 / R + 4 * MOE_DEAL_COPY_COST;
    if (max > ideal * 6 / 5) fprintf(stderr, "  prompt batch: most loaded rank costs %lld\n", (long long)max);
    CHECK(max <= ideal * 6 / 5);
    moe_dealer_free(&d);
    moe_placement_free(&p);
}

/* The window's steps dealt again: 8 hot experts, each decode step picks 4
 * of them. Static placement (all on rank 0) costs 4 copies a step on that
 * rank, twice the bound; a balanced placement with two copies of each deals
 * every step evenly, at the bound. Steps above the scratch size are left
 * out of both sums. */
static void test_window_dealt_cost(void)
{
    const int X = 32, R = 4, K = 4, L = 2, steps = 20;
    struct moe_stats s;
    struct moe_placement p;
    struct moe_dealer d;
    CHECK_EQ_INT(moe_stats_init(&s, L, X, 16), 0);
    CHECK_EQ_INT(moe_placement_init(&p, X, R, X / R + 4), 0);
    CHECK_EQ_INT(moe_dealer_init(&d, X, R), 0);
    uint64_t load[32] = { 0 };
    for (int t = 0; t < steps; t++) {
        moe_stats_step(&s);
        for (int k = 0; k < K; k++) {
            const int x = (t + 2 * k) % 8;
            moe_stats_add(&s, 1, x, 1);
            load[x]++;
        }
    }
    int32_t sel[8];
    int16_t rank[8];
    double bound = 0.0;
    const double per_step = (double)K * (MOE_DEAL_COPY_COST + 1);
    CHECK(moe_window_dealt_cost(&s, 1, &p, &d, sel, rank, 8, &bound) == 16 * per_step);
    CHECK(bound == 16 * per_step / R);
    moe_balance(&p, load);
    CHECK(moe_window_dealt_cost(&s, 1, &p, &d, sel, rank, 8, &bound) == bound);
    CHECK(moe_window_dealt_cost(&s, 0, &p, &d, sel, rank, 8, &bound) == 0.0); /* no pairs */
    CHECK(moe_window_dealt_cost(&s, 1, &p, &d, sel, rank, K - 1, &bound) == 0.0 && bound == 0.0);
    moe_dealer_free(&d);
    moe_placement_free(&p);
    moe_stats_free(&s);
}

static const struct test_case tests[] = {
    { "stats_window", test_stats_window },
    { "static_and_invariants", test_static_and_invariants },
    { "balance_skewed", test_balance_skewed },
    { "balance_random", test_balance_random },
    { "balance_stable", test_balance_stable },
    { "deal_decode", test_deal_decode },
    { "window_dealt_cost", test_window_dealt_cost },
};

TEST_MAIN(tests)
