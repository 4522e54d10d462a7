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

static const struct test_case tests[] = {
    { "stats_window", test_stats_window },
    { "static_and_invariants", test_static_and_invariants },
    { "balance_skewed", test_balance_skewed },
    { "balance_random", test_balance_random },
};

TEST_MAIN(tests)
