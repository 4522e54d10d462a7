/*
 * test_comm_nccl.c: the NCCL backend (src/comm/comm_nccl.c).
 *
 * Without a GPU: loading a library that is not there fails with
 * TT_EUNSUPPORTED and a message naming TT_NCCL_LIB; NVLink multicast is
 * switched off (NCCL_NVLS_ENABLE=0) before NCCL could read it; the library
 * of this machine, if any, loads and reports a version >= 2.10.
 * With a GPU (CUDA build): one rank (ncclCommInitRank with nranks = 1)
 * all-reduces and all-gathers device buffers, and rejects bad arguments;
 * with two or more GPUs, two ranks (threads of this process over a local
 * comm group, one GPU each) sum and gather exactly. NCCL refuses two ranks
 * on one GPU, so that case needs a machine with several.
 */
#include "test.h"

#include "comm/comm_nccl.h"

#include <pthread.h>

static void test_missing_library(void)
{
    unsetenv("NCCL_NVLS_ENABLE");
    setenv("TT_NCCL_LIB", "/nonexistent/libnccl.so.2", 1);
    tt_error_clear();
    int err = comm_nccl_load();
    unsetenv("TT_NCCL_LIB");
    if (err == 0) { /* loaded by an earlier case in this process: nothing to check */
        TEST_SKIP("NCCL already loaded");
        return;
    }
    CHECK_EQ_INT(err, TT_EUNSUPPORTED);
    CHECK(strstr(tt_error_detail(), "TT_NCCL_LIB") != NULL);
    CHECK(comm_nccl_version() == 0);
    CHECK_STR(getenv("NCCL_NVLS_ENABLE"), "0");
}

static void test_load(void)
{
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    int err = comm_nccl_load();
    if (err) {
        TEST_SKIP("no NCCL library here (%s)", tt_error_detail());
        tt_error_clear();
        return;
    }
    CHECK(comm_nccl_version() >= 21000);
    CHECK_STR(getenv("NCCL_NVLS_ENABLE"), "0");
}

#ifdef TT_HAVE_CUDA
#include "kcuda/kcuda.h"

#define N_FLOATS 1000

/* One rank's part of the collectives test: its own GPU and context, the
 * NCCL communicator over `c`, then a sum and a gather checked exactly. */
struct rank_job {
    struct comm *c;
    int device;
    int failed;
    char why[512];
};

static int rank_collectives(struct rank_job *j)
{
    struct kcuda *k = NULL;
    struct comm_nccl *n = NULL;
    float *d = NULL, *dg = NULL;
    const int r = comm_rank(j->c), R = comm_size(j->c);
    float *h = malloc(sizeof(float) * N_FLOATS * (size_t)R);
    int bad = 0, err = h ? kcuda_create(&k, j->device, 0) : TT_ENOMEM;
    if (!err) err = comm_nccl_init(&n, j->c);
    if (!err) err = kcuda_malloc(k, (void **)&d, sizeof(float) * N_FLOATS, "test");
    if (!err) err = kcuda_malloc(k, (void **)&dg, sizeof(float) * N_FLOATS * (size_t)R, "test");
    for (int i = 0; !err && i < N_FLOATS; i++) h[i] = (float)(i % 17) * 0.25f + (float)r;
    if (!err) err = kcuda_upload(k, d, h, sizeof(float) * N_FLOATS);
    if (!err) err = comm_nccl_allgather(n, d, sizeof(float) * N_FLOATS, dg, kcuda_stream(k));
    if (!err) err = comm_nccl_allreduce_sum(n, d, N_FLOATS, kcuda_stream(k));
    if (!err) err = kcuda_download(k, h, d, sizeof(float) * N_FLOATS);
    if (!err) err = kcuda_sync(k);
    for (int i = 0; !err && i < N_FLOATS; i++) /* small integers and quarters: exact in any order */
        bad += h[i] != (float)(i % 17) * 0.25f * (float)R + (float)(R * (R - 1) / 2);
    if (!err) err = kcuda_download(k, h, dg, sizeof(float) * N_FLOATS * (size_t)R);
    if (!err) err = kcuda_sync(k);
    for (int q = 0; !err && q < R; q++)
        for (int i = 0; i < N_FLOATS; i++) bad += h[q * N_FLOATS + i] != (float)(i % 17) * 0.25f + (float)q;
    if (!err && (comm_nccl_allreduce_sum(n, d, -1, kcuda_stream(k)) != TT_EINVAL ||
                 comm_nccl_allgather(n, NULL, 4, dg, kcuda_stream(k)) != TT_EINVAL))
        bad++;
    if (err) snprintf(j->why, sizeof(j->why), "rank %d: %s", r, tt_error_detail());
    else if (bad) snprintf(j->why, sizeof(j->why), "rank %d: %d wrong values or unchecked arguments", r, bad);
    kcuda_free(d);
    kcuda_free(dg);
    comm_nccl_free(n);
    kcuda_destroy(k);
    free(h);
    return err || bad;
}

static void *rank_main(void *p)
{
    struct rank_job *j = p;
    j->failed = rank_collectives(j);
    return NULL;
}

/* Run the collectives on n ranks (threads), rank r on GPU r. */
static void run_ranks(int n)
{
    struct comm *comms[8];
    struct rank_job jobs[8];
    pthread_t th[8];
    TT_ASSERT(n <= 8);
    if (comm_local_group(comms, n) != 0) {
        CHECK(!"comm_local_group");
        return;
    }
    for (int r = 0; r < n; r++) {
        jobs[r] = (struct rank_job){ .c = comms[r], .device = r };
        pthread_create(&th[r], NULL, rank_main, &jobs[r]);
    }
    for (int r = 0; r < n; r++) {
        pthread_join(th[r], NULL);
        if (jobs[r].failed) fprintf(stderr, "  %s\n", jobs[r].why);
        CHECK(!jobs[r].failed);
        comm_free(comms[r]);
    }
}

static bool have_gpu_and_nccl(int min_gpus)
{
    tt_base_init();
    const int n = kcuda_device_count();
    if (n < min_gpus) {
        TEST_SKIP("%d CUDA GPU(s) here, the case needs %d", n, min_gpus);
        return false;
    }
    if (comm_nccl_load()) {
        TEST_SKIP("no NCCL library (%s)", tt_error_detail());
        tt_error_clear();
        return false;
    }
    return true;
}

static void test_one_rank(void)
{
    if (have_gpu_and_nccl(1)) run_ranks(1);
}

static void test_two_gpus(void)
{
    if (have_gpu_and_nccl(2)) run_ranks(2);
}

static void test_all_gpus(void)
{
    if (!have_gpu_and_nccl(3)) return;
    run_ranks(TT_MIN(kcuda_device_count(), 8));
}

static const struct test_case cases[] = {
    { "missing_library", test_missing_library },
    { "load", test_load },
    { "one_rank", test_one_rank },
    { "two_gpus", test_two_gpus },
    { "all_gpus", test_all_gpus },
};
#else
static void test_no_cuda(void) { TEST_SKIP("built without CUDA (make CUDA=1 where nvcc is installed)"); }

static const struct test_case cases[] = {
    { "missing_library", test_missing_library },
    { "load", test_load },
    { "one_rank", test_no_cuda },
};
#endif

TEST_MAIN(cases)
