/*
 * test_plan.c: the tensor-parallel and staged (pipeline, hybrid, idle
 * ranks) splits, exhaustively over model shapes, rank counts, stage
 * assignments and capacity weights. Every plan is checked for complete,
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

/* Stages: 2 stages x 2 ranks over 7 layers; a TP stage's ranks need not be
 * consecutive; idle ranks hold nothing; only the last stage has output rows. */
static void test_staged_examples(void)
{
    struct model_hparams hp = shape(8, 4, 64, 768, 512);
    hp.n_layer = 7;
    struct plan_align a = { 1, 32, 32, 32 };
    const int32_t two_by_two[4] = { 0, 0, 1, 1 };
    struct plan *p = plan_staged(&hp, &a, 4, two_by_two, 2, NULL, NULL, PLAN_JOIN_GATHER);
    CHECK(p != NULL);
    if (!p) return;
    CHECK(p->pipeline && p->n_stages == 2);
    CHECK(p->ranks[0].layers.begin == 0 && p->ranks[0].layers.end == 4); /* 7 = 4 + 3, larger first */
    CHECK(p->ranks[1].layers.end == 4 && p->ranks[2].layers.begin == 4 && p->ranks[3].layers.end == 7);
    CHECK(p->ranks[0].head.end == 4 && p->ranks[1].head.begin == 4 && p->ranks[2].head.end == 4);
    CHECK(p->ranks[0].vocab.end == 0 && p->ranks[1].vocab.end == 0);
    CHECK(p->ranks[2].vocab.begin == 0 && p->ranks[2].vocab.end == 256 && p->ranks[3].vocab.end == 512);
    free(p);
    /* stage 0 = ranks 1 and 3 (weights 3:1), stage 1 = rank 0, rank 2 idle; fixed layer ends */
    const int32_t mixed[4] = { 1, 0, PLAN_STAGE_IDLE, 0 }, ends[2] = { 2, 7 };
    const double w[4] = { 1, 3, 5, 1 };
    p = plan_staged(&hp, &a, 4, mixed, 2, ends, w, PLAN_JOIN_SUM);
    CHECK(p != NULL);
    if (!p) return;
    CHECK(p->ranks[1].layers.end == 2 && p->ranks[0].layers.begin == 2 && p->ranks[0].layers.end == 7);
    CHECK(p->ranks[1].head.begin == 0 && p->ranks[1].head.end == 6 && p->ranks[3].head.begin == 6);
    CHECK(p->ranks[0].head.end == 8 && p->ranks[0].vocab.end == 512);
    CHECK(p->ranks[2].stage == PLAN_STAGE_IDLE && p->ranks[2].layers.end == 0 && p->ranks[2].head.end == 0 &&
          p->ranks[2].vocab.end == 0);
    free(p);
    /* a pipeline is stages of one rank each */
    p = plan_pipeline(&hp, 3, NULL);
    CHECK(p && p->n_stages == 3 && p->ranks[2].stage == 2 && p->ranks[1].vocab.end == 0);
    free(p);
    /* errors: an empty stage, a stage out of range, layer ends that do not reach n_layer */
    const int32_t empty[3] = { 0, 0, 2 }, out[2] = { 0, 3 }, bad_ends[2] = { 4, 6 };
    CHECK(plan_staged(&hp, &a, 3, empty, 3, NULL, NULL, PLAN_JOIN_GATHER) == NULL);
    CHECK(plan_staged(&hp, &a, 2, out, 2, NULL, NULL, PLAN_JOIN_GATHER) == NULL);
    CHECK(plan_staged(&hp, &a, 4, two_by_two, 2, bad_ends, NULL, PLAN_JOIN_GATHER) == NULL);
}

/* Random stage assignments (idle ranks included) over shapes: invariants,
 * and layers in proportion to the stages' summed weights. */
static void test_staged_exhaustive(void)
{
    uint64_t seed = 777;
    long n_plans = 0;
    for (int layers = 1; layers <= 40; layers += 3)
        for (int ranks = 1; ranks <= 9; ranks++)
            for (int rep = 0; rep < 12; rep++) {
                struct model_hparams hp = shape(8 + 4 * (rep % 3), 4, 64, 512 + 256 * rep, 300 + rep);
                hp.n_layer = layers;
                struct plan_align a = { 1 + rep % 2, 32, 32, 32 };
                int32_t stage_of[9];
                double w[9], stage_w[9] = { 0 }, total = 0;
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                const int n_stages = 1 + (int)((seed >> 33) % (uint64_t)TT_MIN(ranks, layers));
                for (int r = 0; r < ranks; r++) {
                    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                    /* the first n_stages ranks seed the stages; the others land anywhere or idle */
                    stage_of[r] = r < n_stages ? r : (int32_t)((seed >> 35) % (uint64_t)(n_stages + 1)) - 1;
                    w[r] = 0.5 + (double)((seed >> 20) & 1023) / 512.0;
                    if (stage_of[r] >= 0) stage_w[stage_of[r]] += w[r], total += w[r];
                }
                struct plan *p = plan_staged(&hp, &a, ranks, stage_of, n_stages, NULL, w,
                                             (enum plan_join)(rep % 2));
                CHECK(p != NULL);
                if (!p) continue;
                plan_check(p, &hp, &a);
                for (int r = 0; r < ranks; r++) {
                    CHECK(p->ranks[r].stage == stage_of[r]);
                    if (stage_of[r] < 0) continue;
                    const double want = layers * stage_w[stage_of[r]] / total;
                    const double got = p->ranks[r].layers.end - p->ranks[r].layers.begin;
                    CHECK(fabs(got - want) <= 1.0 + 1e-9);
                }
                free(p);
                n_plans++;
            }
    CHECK(n_plans > 1000);
}

static const struct test_case tests[] = {
    { "staged_examples", test_staged_examples },
    { "staged_exhaustive", test_staged_exhaustive },
    { "even_examples", test_even_examples },
    { "weighted", test_weighted },
    { "parse_split", test_parse_split },
    { "exhaustive", test_exhaustive },
};

TEST_MAIN(tests)
