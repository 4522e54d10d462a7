/*
 * test_plan.c: the tensor-parallel planner, exhaustively over model shapes,
 * rank counts and capacity weights. Every plan is checked for complete,
 * ordered coverage, block-aligned column splits, proportionality to the
 * weights within one unit, and KV ranges that match the query heads.
 */
#include "test.h"

#include "plan/plan.h"

static struct model_hparams shape(int n_head, int n_kv, int hd, int n_ff, int vocab)
{
    return (struct model_hparams){ .n_embd = n_head * hd, .n_head = n_head, .n_head_kv = n_kv,
                                   .head_dim = hd, .n_ff = n_ff, .n_vocab = vocab, .n_layer = 1 };
}

static void test_even_examples(void)
{
    /* 8 heads / 8 KV heads over 3 ranks with float weights: 3/3/2 */
    struct model_hparams hp = shape(8, 8, 64, 768, 512);
    struct plan_align a = { 1, 1, 1, 1 };
    struct plan *p = plan_tensor_parallel(&hp, &a, 3, NULL, PLAN_JOIN_SUM);
    CHECK(p != NULL);
    CHECK_EQ_INT(p->ranks[0].kv.end - p->ranks[0].kv.begin, 3);
    CHECK_EQ_INT(p->ranks[1].kv.end - p->ranks[1].kv.begin, 3);
    CHECK_EQ_INT(p->ranks[2].kv.end - p->ranks[2].kv.begin, 2);
    free(p);
    /* Llama-3-8B shape, Q4_K (256-column blocks, head_dim 128: 2 heads per unit) over 3 ranks */
    hp = shape(32, 8, 128, 14336, 128256);
    a = (struct plan_align){ 2, 256, 256, 256 };
    p = plan_tensor_parallel(&hp, &a, 3, NULL, PLAN_JOIN_GATHER); /* no alignment needed: 11/11/10 */
    CHECK_EQ_INT(p->ranks[0].head.end, 11);
    CHECK_EQ_INT(p->ranks[2].embd.end - p->ranks[2].embd.begin, 1365);
    free(p);
    p = plan_tensor_parallel(&hp, &a, 3, NULL, PLAN_JOIN_SUM);
    CHECK_EQ_INT(p->ranks[0].head.end, 12);
    CHECK_EQ_INT(p->ranks[1].head.end, 22);
    CHECK_EQ_INT(p->ranks[1].kv.begin, 3); /* heads 12..21 read KV heads 3..5 */
    CHECK_EQ_INT(p->ranks[1].kv.end, 6);
    CHECK_EQ_INT(p->ranks[2].kv.begin, 5); /* KV head 5 is computed on ranks 1 and 2 */
    CHECK_EQ_INT(p->ranks[0].ff.end % 256, 0);
    free(p);
    /* fewer KV heads than ranks: each rank computes the KV head of its queries */
    hp = shape(8, 1, 64, 256, 512);
    a = (struct plan_align){ 1, 32, 32, 32 };
    p = plan_tensor_parallel(&hp, &a, 4, NULL, PLAN_JOIN_SUM);
    for (int r = 0; r < 4; r++) {
        CHECK_EQ_INT(p->ranks[r].kv.begin, 0);
        CHECK_EQ_INT(p->ranks[r].kv.end, 1);
    }
    free(p);
}

static void test_weighted(void)
{
    struct model_hparams hp = shape(32, 8, 128, 14336, 1000);
    struct plan_align a = { 1, 256, 256, 256 };
    double w[3] = { 2, 1, 1 };
    struct plan *p = plan_tensor_parallel(&hp, &a, 3, w, PLAN_JOIN_SUM);
    CHECK_EQ_INT(p->ranks[0].head.end, 16);
    CHECK_EQ_INT(p->ranks[0].vocab.end, 500);
    free(p);
    double bad[2] = { 1, 0 };
    CHECK(plan_tensor_parallel(&hp, &a, 2, bad, PLAN_JOIN_SUM) == NULL);
    CHECK(plan_tensor_parallel(&hp, &a, 0, NULL, PLAN_JOIN_SUM) == NULL);
}

static void test_parse_split(void)
{
    double w[4];
    bool is_auto;
    CHECK_EQ_INT(plan_parse_split("even", 3, w, &is_auto), 0);
    CHECK(!is_auto && w[2] == 1.0);
    CHECK_EQ_INT(plan_parse_split("auto", 3, w, &is_auto), 0);
    CHECK(is_auto);
    CHECK_EQ_INT(plan_parse_split("2,1,1", 3, w, &is_auto), 0);
    CHECK(w[0] == 2.0 && w[1] == 1.0);
    CHECK_EQ_INT(plan_parse_split("2,1", 3, w, &is_auto), TT_EINVAL);
    CHECK_EQ_INT(plan_parse_split("2,1,1,1", 3, w, &is_auto), TT_EINVAL);
    CHECK_EQ_INT(plan_parse_split("2,-1,1", 3, w, &is_auto), TT_EINVAL);
    CHECK_EQ_INT(plan_parse_split("x", 3, w, &is_auto), TT_EINVAL);
}

/* Every shape x rank count x weighting: invariants and proportionality. */
static void test_exhaustive(void)
{
    static const int heads[] = { 1, 2, 3, 4, 6, 8, 12, 14, 16, 28, 32, 40, 64 };
    static const int units[] = { 1, 2, 4 };
    uint64_t seed = 12345;
    long n_plans = 0;
    for (size_t hi = 0; hi < sizeof(heads) / sizeof(heads[0]); hi++)
        for (int kv = 1; kv <= heads[hi]; kv++) {
            if (heads[hi] % kv) continue;
            for (size_t ui = 0; ui < 3; ui++)
                for (int ranks = 1; ranks <= 9; ranks++)
                    for (int weighted = 0; weighted < 2; weighted++) {
                        struct model_hparams hp = shape(heads[hi], kv, 64, 256 * (1 + (int)hi), 97 + (int)hi);
                        struct plan_align a = { units[ui], 32 << ui, 32, 32 };
                        double w[9];
                        for (int r = 0; r < ranks; r++) {
                            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                            w[r] = weighted ? 0.5 + (double)(seed >> 40) / (double)(1ull << 24) : 1.0;
                        }
                        struct plan *p = plan_tensor_parallel(&hp, &a, ranks, weighted ? w : NULL,
                                                              (enum plan_join)(n_plans % 2));
                        CHECK(p != NULL);
                        if (!p) continue;
                        plan_check(p, &hp, &a); /* aborts on a broken invariant */
                        double total = 0;
                        for (int r = 0; r < ranks; r++) total += w[r];
                        const int ff_unit = p->join == PLAN_JOIN_SUM ? a.ff_unit : 1;
                        int64_t units_ff = (hp.n_ff + ff_unit - 1) / ff_unit;
                        for (int r = 0; r < ranks; r++) {
                            double want = (double)units_ff * w[r] / total;
                            double got = (double)(p->ranks[r].ff.end - p->ranks[r].ff.begin) / ff_unit;
                            CHECK(fabs(got - want) <= 1.0 + 1e-9);
                        }
                        free(p);
                        n_plans++;
                    }
        }
    CHECK(n_plans > 1000);
}

static const struct test_case tests[] = {
    { "even_examples", test_even_examples },
    { "weighted", test_weighted },
    { "parse_split", test_parse_split },
    { "exhaustive", test_exhaustive },
};

TEST_MAIN(tests)
