/*
 * test_kcuda_top.c: kcuda_top_cands, a sampler's best candidates found on
 * the device, against a plain reference: qsort of every (id, logit) pair in
 * the sampler's order (larger logit first, equal logits by lower id), then
 * the first min(n_cand, n). The device's answer must be identical, ids and
 * logit bits, or -1 where the contract allows it (a NaN read, a scratch
 * overflowed by ties). The block maxima come from kcuda_block_max64, as the
 * engine makes them.
 *
 * Cases: random logits of real vocabulary sizes; sizes that are not
 * multiples of 64 or smaller than n_cand; ties across the n_cand boundary,
 * infinities and signed zeros; NaN; all logits equal (the kernel reports
 * -1: 128256 equal logits overflow its scratch of 4096); the size limits
 * and invalid arguments; and the pair captured in a graph.
 * Without a GPU (or in a build without CUDA) the device cases print SKIP.
 */
#include "test.h"

#ifdef TT_HAVE_CUDA
#include "kcuda_test.h"

/* Normally distributed logits: urand and nrand draw on kcuda_test.h's
 * generator state (this file does not use its uniform frand). */
static double urand(void) /* uniform in (0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static float nrand(void) /* standard normal (Box-Muller) */
{
    return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()));
}
static void fill_normal(float *x, int n, float scale)
{
    for (int i = 0; i < n; i++)
        x[i] = nrand() * scale;
}

static int cand_cmp(const void *a, const void *b)
{
    const struct kcuda_cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

/* ref[0..min(n_cand, n)) = the reference answer; returns its length. */
static int top_ref(const float *logits, int n, int n_cand, struct kcuda_cand *ref)
{
    struct kcuda_cand *all = malloc((size_t)n * sizeof(*all));
    TT_ASSERT(all);
    for (int i = 0; i < n; i++)
        all[i] = (struct kcuda_cand){i, logits[i]};
    qsort(all, (size_t)n, sizeof(*all), cand_cmp);
    const int m = n_cand < n ? n_cand : n;
    memcpy(ref, all, (size_t)m * sizeof(*ref));
    free(all);
    return m;
}

/* Device buffers for up to N_MAX logits. */
#define N_MAX (1 << 19)
struct bufs {
    float *logits, *block_max;
    struct kcuda_cand *out;
    int32_t *count;
    float *x; /* host scratch of N_MAX logits */
};

static void bufs_init(struct bufs *b)
{
    void *p[4] = {0};
    const size_t bytes[4] = {N_MAX * 4, (N_MAX / 64 + 1) * 4,
                             KCUDA_TOP_CANDS * sizeof(struct kcuda_cand), 4};
    for (int i = 0; i < 4; i++)
        TT_ASSERT(kcuda_malloc(K, &p[i], bytes[i], "test buffer") == 0);
    *b = (struct bufs){p[0], p[1], p[2], p[3], malloc(N_MAX * 4)};
    TT_ASSERT(b->x);
}
/* The buffers of a case, or false (the case skipped) without a GPU. */
static bool bufs_open(struct bufs *b)
{
    if (!gpu()) return false;
    bufs_init(b);
    return true;
}
static void bufs_free(struct bufs *b)
{
    kcuda_free(b->logits), kcuda_free(b->block_max), kcuda_free(b->out), kcuda_free(b->count);
    free(b->x);
}

/* Run the device on logits[0..n) and compare. allow_fail: -1 is also fine
 * (ties may overflow the scratch); must_fail: only -1 is right (a NaN is
 * read). Prints the first mismatch. */
static void check_top(struct bufs *b, const float *logits, int n, int n_cand, bool allow_fail,
                      bool must_fail)
{
    struct kcuda_cand ref[KCUDA_TOP_CANDS], got[KCUDA_TOP_CANDS];
    int32_t count = -2;
    memset(got, 0xAB, sizeof(got));
    int err = kcuda_upload(K, b->logits, logits, (size_t)n * 4);
    if (!err) err = kcuda_memset(K, b->out, 0xAB, sizeof(got));
    if (!err) err = kcuda_block_max64(K, b->logits, n, b->block_max);
    if (!err) err = kcuda_top_cands(K, b->logits, n, b->block_max, n_cand, b->out, b->count);
    if (!err) err = kcuda_download(K, got, b->out, sizeof(got));
    if (!err) err = kcuda_download(K, &count, b->count, 4);
    if (!err) err = kcuda_sync(K);
    if (err) fprintf(stderr, "  n %d, n_cand %d: %s\n", n, n_cand, tt_error_detail());
    CHECK_EQ_INT(err, 0);
    if (must_fail) {
        if (count != -1) fprintf(stderr, "  n %d, n_cand %d: expected -1\n", n, n_cand);
        CHECK_EQ_INT(count, -1);
        return;
    }
    if (allow_fail && count == -1) return;
    const int m = top_ref(logits, n, n_cand, ref);
    if (count != m) fprintf(stderr, "  n %d, n_cand %d: count\n", n, n_cand);
    CHECK_EQ_INT(count, m);
    for (int i = 0; i < m && count == m; i++) {
        if (got[i].id == ref[i].id && memcmp(&got[i].logit, &ref[i].logit, 4) == 0) continue;
        fprintf(stderr, "  n %d, n_cand %d: [%d] is (%d, %.9g), expected (%d, %.9g)\n", n, n_cand,
                i, got[i].id, got[i].logit, ref[i].id, ref[i].logit);
        test_failed_ = 1;
        break;
    }
}

static const int n_cands[] = {64, 40, 1};

static void test_random(void)
{
    static const int sizes[] = {128256, 151936, 32000};
    struct bufs b;
    if (!bufs_open(&b)) return;
    float *x = b.x;
    for (int s = 0; s < 3; s++) {
        for (int c = 0; c < 3; c++) {
            fill_normal(x, sizes[s], 3.0f);
            check_top(&b, x, sizes[s], n_cands[c], false, false);
        }
    }
    /* many blocks (up to the largest n taken), and the best clustered in
     * 64 neighbouring blocks */
    for (int n = 262144; n <= N_MAX && kcuda_top_cands_ok(n); n *= 2) {
        fill_normal(x, n, 1.0f);
        check_top(&b, x, n, 64, false, false);
    }
    for (int i = 0; i < 128256; i++)
        x[i] = i >= 70016 && i < 70016 + 64 * 64 ? 10.0f + nrand() : nrand();
    check_top(&b, x, 128256, 64, false, false);
    bufs_free(&b);
}

static void test_sizes(void)
{
    static const int sizes[] = {1000, 65, 64, 63, 10, 1, 4097};
    struct bufs b;
    if (!bufs_open(&b)) return;
    float x[4097];
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (int c = 0; c < 3; c++) {
            fill_normal(x, sizes[s], 2.0f);
            check_top(&b, x, sizes[s], n_cands[c], false, false);
        }
    }
    bufs_free(&b);
}

/* Equal logits across the n_cand boundary (the lower id goes first),
 * infinities, and -0 beside +0 (equal for the sampler). */
static void test_ties(void)
{
    struct bufs b;
    if (!bufs_open(&b)) return;
    const int n = 128256;
    float *x = b.x;
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < n; i++)
            x[i] = roundf(nrand() * 4.0f) * 0.5f; /* dozens a level at the cut */
        check_top(&b, x, n, n_cands[c], false, false);
        for (int i = 0; i < n; i++)
            x[i] = floorf(nrand() * 2.0f); /* about 100 a level at the cut */
        check_top(&b, x, n, n_cands[c], false, false);
        for (int i = 0; i < n; i++)
            x[i] = nrand();
        for (int i = 5; i < n; i += 4999)
            x[i] = INFINITY;
        for (int i = 7; i < n; i += 997)
            x[i] = -INFINITY;
        check_top(&b, x, n, n_cands[c], false, false);
        for (int i = 0; i < n; i++)
            x[i] = -INFINITY;
        for (int i = 3; i < n; i += 1999)
            x[i] = 1.0f; /* 65 of them, in 65 blocks */
        check_top(&b, x, n, n_cands[c], false, false);
        for (int i = 0; i < n; i++)
            x[i] = -1.0f - fabsf(nrand());
        for (int i = 11; i < n; i += 3001)
            x[i] = (i / 3001) % 2 ? -0.0f : 0.0f;
        check_top(&b, x, n, n_cands[c], false, false);
    }
    /* with so few, every block is read: all -inf, or equal, fit */
    for (int i = 0; i < 1000; i++)
        x[i] = i % 3 ? -INFINITY : 2.0f;
    check_top(&b, x, 1000, 64, false, false);
    for (int i = 0; i < 100; i++)
        x[i] = -INFINITY;
    check_top(&b, x, 100, 64, false, false);
    bufs_free(&b);
}

static int argmax(const float *x, int n)
{
    int at = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[at]) at = i;
    return at;
}

/* A NaN in a block that is read gives -1: beside the best logit, alone in
 * the tail (n <= 64 * n_cand: every block is read), or filling a block
 * (kcuda_block_max64 then gives NaN, fmaxf(NaN, NaN), and a NaN maximum
 * gives -1 at once). */
static void test_nan(void)
{
    struct bufs b;
    if (!bufs_open(&b)) return;
    const int n = 128256;
    float *x = b.x;
    for (int c = 0; c < 3; c++) {
        fill_normal(x, n, 3.0f);
        const int at = argmax(x, n);
        x[at / 64 * 64 + (at % 64 + 1) % 64] = NAN;
        check_top(&b, x, n, n_cands[c], false, true);
    }
    fill_normal(x, n, 3.0f);
    for (int i = 640; i < 704; i++)
        x[i] = NAN;
    check_top(&b, x, n, 40, false, true);
    fill_normal(x, 65, 1.0f);
    x[64] = NAN;
    check_top(&b, x, 65, 64, false, true);
    bufs_free(&b);
}

/* 128256 equal logits: every block reaches the n_cand-th maximum, so all
 * would be candidates; the kernel reports -1 (the caller reads the full
 * logits), though a correct answer would also be right. */
static void test_all_equal(void)
{
    struct bufs b;
    if (!bufs_open(&b)) return;
    const int n = 128256;
    float *x = b.x;
    for (int i = 0; i < n; i++)
        x[i] = 0.25f;
    check_top(&b, x, n, 64, true, false);
    check_top(&b, x, n, 1, true, false);
    bufs_free(&b);
}

static void test_limits(void)
{
    CHECK(!kcuda_top_cands_ok(0));
    CHECK(!kcuda_top_cands_ok(-1));
    CHECK(kcuda_top_cands_ok(1));
    CHECK(kcuda_top_cands_ok(151936));
    CHECK(kcuda_top_cands_ok(262144));
    CHECK(!kcuda_top_cands_ok(INT64_C(1) << 40));
    struct bufs b;
    if (!bufs_open(&b)) return;
    CHECK_EQ_INT(kcuda_top_cands(K, b.logits, 1000, b.block_max, 0, b.out, b.count), TT_EINVAL);
    CHECK_EQ_INT(
        kcuda_top_cands(K, b.logits, 1000, b.block_max, KCUDA_TOP_CANDS + 1, b.out, b.count),
        TT_EINVAL);
    CHECK_EQ_INT(kcuda_top_cands(K, b.logits, 0, b.block_max, 1, b.out, b.count), TT_EINVAL);
    int64_t big = 262144;
    while (kcuda_top_cands_ok(big + 1))
        big++;
    CHECK_EQ_INT(kcuda_top_cands(K, b.logits, big + 1, b.block_max, 1, b.out, b.count), TT_EINVAL);
    CHECK_EQ_INT(kcuda_sync(K), 0);
    bufs_free(&b);
}

/* Block maxima and candidates captured in a graph: the replay sees the
 * logits of its time. Prints the pair's device time. */
static void test_graph(void)
{
    struct bufs b;
    if (!bufs_open(&b)) return;
    const int n = 151936;
    float *x = b.x;
    struct kcuda_graph *g = NULL;
    fill_normal(x, n, 3.0f);
    CHECK_EQ_INT(kcuda_upload(K, b.logits, x, (size_t)n * 4), 0);
    CHECK_EQ_INT(kcuda_sync(K), 0);
    int err = kcuda_graph_begin(K);
    if (!err) err = kcuda_block_max64(K, b.logits, n, b.block_max);
    if (!err) err = kcuda_top_cands(K, b.logits, n, b.block_max, 40, b.out, b.count);
    int err_end = kcuda_graph_end(K, &g);
    if (!err) err = err_end;
    if (err) fprintf(stderr, "  %s\n", tt_error_detail());
    CHECK_EQ_INT(err, 0);
    if (!err) {
        fill_normal(x, n, 3.0f);
        struct kcuda_cand ref[KCUDA_TOP_CANDS], got[40];
        int32_t count = -2;
        err = kcuda_upload(K, b.logits, x, (size_t)n * 4);
        if (!err) err = kcuda_graph_launch(K, g);
        if (!err) err = kcuda_download(K, got, b.out, sizeof(got));
        if (!err) err = kcuda_download(K, &count, b.count, 4);
        if (!err) err = kcuda_sync(K);
        CHECK_EQ_INT(err, 0);
        CHECK_EQ_INT(count, top_ref(x, n, 40, ref));
        for (int i = 0; i < 40; i++)
            CHECK(got[i].id == ref[i].id && got[i].logit == ref[i].logit);
        fprintf(stderr, "  block maxima + top 40 of %d: %.2f us per replay\n", n,
                kcuda_graph_time_ms(K, g, 200) * 1000.0);
    }
    kcuda_graph_destroy(g);
    bufs_free(&b);
}

static const struct test_case cases[] = {
    {"random", test_random}, {"sizes", test_sizes},         {"ties", test_ties},
    {"nan", test_nan},       {"all_equal", test_all_equal}, {"limits", test_limits},
    {"graph", test_graph},
};

#else /* no CUDA in this build */

static void test_no_cuda(void)
{
    TEST_SKIP("built without CUDA (make CUDA=1 where nvcc is installed)");
}

static const struct test_case cases[] = {{"cuda", test_no_cuda}};

#endif

TEST_MAIN(cases)
