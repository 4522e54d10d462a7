/*
 * mpi_comm_driver.c: the SPMD checks of test_comm.c on MPI ranks; run by
 * tests/comm_mpi_test.sh under mpirun. Built only with MPI=1 (its name keeps
 * it out of the Makefile's tests/test_*.c rule).
 *
 *   mpi_comm_driver checks PREFIX   every SPMD case; rank 0 prints
 *                                   "PASS comm_mpi/PREFIX_<case>" or FAIL
 *   mpi_comm_driver die-HOW         all-reduces in a loop; rank 1 leaves
 *                                   while the others wait in the collective.
 *                                   HOW: kill (SIGKILL), exit (_exit(0)
 *                                   without comm_free), free (comm_free, then
 *                                   exit status 1: an error on one rank),
 *                                   abort (comm_abort)
 *
 * A case's verdict is the sum of every rank's failures, all-gathered, so a
 * failure on any rank fails the case. The exit status is 1 if a case failed.
 */
#define COMM_TEST_SPMD_ONLY
#include "test_comm.c"

#include <signal.h>
#include <unistd.h>

static int run_checks(struct comm *c, const char *prefix)
{
    int p = comm_size(c), n_failed = 0;
    int *all = calloc((size_t)p, sizeof(int));
    for (size_t i = 0; i < TT_ARRAY_LEN(spmd_cases); i++) {
        int fails = spmd_run(c, spmd_cases[i].fn), total = 0;
        int rc = comm_allgather(c, &fails, sizeof(fails), all);
        for (int r = 0; rc == TT_OK && r < p; r++) total += all[r];
        if (rc) fprintf(stderr, "rank %d: comm_allgather: %s\n", comm_rank(c), tt_error_detail());
        if (comm_rank(c) == 0) {
            if (rc || total) printf("FAIL comm_mpi/%s_%s\n", prefix, spmd_cases[i].name);
            else printf("PASS comm_mpi/%s_%s\n", prefix, spmd_cases[i].name);
            fflush(stdout);
        }
        n_failed += rc || total;
        if (rc) break;
    }
    free(all);
    return n_failed ? 1 : 0;
}

/* Rank 1 dies in the middle of a stream of all-reduces. */
static int run_die(struct comm **c_, const char *how)
{
    struct comm *c = *c_;
    float x[4096] = { 0 };
    for (int i = 0; i < 1000000; i++) {
        if (comm_rank(c) == 1 && i == 20) {
            fprintf(stderr, "rank 1: dying (%s)\n", how);
            if (!strcmp(how, "kill")) raise(SIGKILL);
            if (!strcmp(how, "exit")) _exit(0);
            if (!strcmp(how, "abort")) comm_abort(c, 5);
            comm_free(c);
            *c_ = NULL;
            return 1;
        }
        int rc = comm_allreduce_sum(c, x, 4096, COMM_WIRE_F32);
        if (rc) {
            fprintf(stderr, "rank %d: all-reduce failed: %s\n", comm_rank(c), tt_error_detail());
            return 3;
        }
    }
    return 0; /* not reached while the test works */
}

int main(int argc, char **argv)
{
    struct comm *c;
    int rc = comm_init(&c, COMM_BACKEND_MPI, &argc, &argv);
    if (rc) {
        fprintf(stderr, "mpi_comm_driver: comm_init: %s: %s\n", tt_strerror(rc), tt_error_detail());
        return 2;
    }
    const char *mode = argc > 1 ? argv[1] : "checks";
    if (!strcmp(mode, "checks")) rc = run_checks(c, argc > 2 ? argv[2] : "np");
    else if (!strncmp(mode, "die-", 4)) rc = run_die(&c, mode + 4);
    else rc = 2, fprintf(stderr, "mpi_comm_driver: unknown mode '%s'\n", mode);
    comm_free(c);
    return rc;
}
