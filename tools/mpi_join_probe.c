/*
 * mpi_join_probe.c: what a join of two MPI ranks costs, measured the way a
 * tensor-parallel step meets one (after a stretch of work) and the way a
 * stream of prompt joins or a pipeline's logits use a link; the planner's
 * link model (docs/PLANNER.md, "Collectives and sends") is checked against
 * it. Plain MPI, no tutti code, so that what it shows belongs to the
 * machine, the links and Open MPI.
 *
 *   joins   all-gathers of 1 KiB to 1 MiB per rank after 0, 50 and 200 us
 *           of work (both ranks start together after a barrier), mean and
 *           best; then chains of work + 4 KiB all-gather without barriers
 *           (a decode step's rhythm), the time per join beyond the work;
 *   stream  the rate per direction of 1 and 3 all-gathers of 256 KiB and
 *           of 1 MiB per rank back to back (both directions loaded);
 *   oneway  a message of 4 to 64 KiB from rank 1 to rank 0 and 8 bytes
 *           back, each after 20 ms idle (a pipeline's logits per step);
 *   sweep   streams of 1, 2, 4 and 8 all-gathers of 64 KiB to 4 MiB per
 *           rank (at most 8 MiB per stream), each after one untimed
 *           all-gather of the same size: the rate per direction of each;
 *   prompt  a tensor-parallel prompt's joins: 8 layers of all-gathers of
 *           256, 256, 704 and 256 KiB per rank (a 128-token chunk of the
 *           netns bench's 1024-wide model, gather join), each after PROMPT_WORK_US
 *           (default 1500) of work; the rate per direction of the joins
 *           beyond the work;
 *   blocks  all-gathers of 64 KiB to 1 MiB per rank, each after
 *           PROMPT_WORK_US of work, one untimed then 16 per size (3 rounds
 *           of the sizes, each sent from its own buffer and in place, as
 *           tutti's all-reduce sends; BLOCKS_IDLE_MS of idle link before
 *           each stream): the time per join beyond the work, to tell a
 *           fixed cost per join from the rate (a tensor-parallel prompt's
 *           sum join sends 2 blocks of 512 KiB per layer where the gather
 *           join sends 4 of 256-704 KiB).
 *
 * Build and run (two ranks; the namespace pair of netns_plan_bench.sh):
 *   mpicc -O2 -o /tmp/mpi_join_probe tools/mpi_join_probe.c
 *   mpirun -np 2 --bind-to none ... /tmp/mpi_join_probe [joins|stream|oneway]...
 * With no argument it runs all three.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROBE_MAX_BYTES (4u << 20)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static volatile double sink;

/* Busy work for us microseconds (a rank computing between two joins). */
static void work_us(double us)
{
    const double t0 = now_s();
    double x = 1.0;
    while ((now_s() - t0) * 1e6 < us)
        x = x * 1.0000001 + 1e-9;
    sink = x;
}

static void joins(int rank, char *send, char *recv)
{
    static const double works[] = {0, 50, 200};
    static const int sizes[] = {1024, 4096, 16384, 65536, 262144, 1048576};
    for (int wi = 0; wi < 3; wi++)
        for (int si = 0; si < 6; si++) {
            const int reps = sizes[si] >= 262144 ? 20 : 200;
            double best = 1e9, sum = 0.0;
            for (int i = -5; i < reps; i++) {
                MPI_Barrier(MPI_COMM_WORLD);
                work_us(works[wi]);
                const double t0 = now_s();
                MPI_Allgather(send, sizes[si], MPI_BYTE, recv, sizes[si], MPI_BYTE, MPI_COMM_WORLD);
                const double t = now_s() - t0;
                if (i < 0) continue;
                sum += t;
                if (t < best) best = t;
            }
            if (rank == 0)
                printf("joins: %3.0f us of work, then all-gather of %7d B per rank: mean %8.1f us, "
                       "best %8.1f us\n",
                       works[wi], sizes[si], sum / reps * 1e6, best * 1e6);
        }
    for (int wi = 0; wi < 3; wi++) {
        const int reps = 400;
        const double t0 = now_s();
        for (int i = 0; i < reps; i++) {
            work_us(works[wi]);
            MPI_Allgather(send, 4096, MPI_BYTE, recv, 4096, MPI_BYTE, MPI_COMM_WORLD);
        }
        const double per = (now_s() - t0) / reps * 1e6 - works[wi];
        if (rank == 0)
            printf("joins: chain of %3.0f us of work + 4 KiB all-gather: %.1f us per join beyond "
                   "the work\n",
                   works[wi], per);
    }
}

static void stream(int rank, char *send, char *recv)
{
    static const int sizes[] = {262144, 1048576}, counts[] = {1, 3};
    for (int si = 0; si < 2; si++)
        for (int ci = 0; ci < 2; ci++) {
            MPI_Barrier(MPI_COMM_WORLD);
            const double t0 = now_s();
            for (int i = 0; i < counts[ci]; i++)
                MPI_Allgather(send, sizes[si], MPI_BYTE, recv, sizes[si], MPI_BYTE, MPI_COMM_WORLD);
            const double t = now_s() - t0;
            if (rank == 0)
                printf("stream: %d all-gather(s) of %7d B per rank: %.3f MB/s per direction\n",
                       counts[ci], sizes[si], (double)sizes[si] * counts[ci] / t / 1e6);
        }
}

static void sweep(int rank, char *send, char *recv)
{
    static const int sizes[] = {65536, 262144, 1048576, 4194304}, counts[] = {1, 2, 4, 8};
    for (int si = 0; si < 4; si++)
        for (int ci = 0; ci < 4; ci++) {
            if ((double)sizes[si] * counts[ci] > 8.0 * 1048576) continue;
            MPI_Barrier(MPI_COMM_WORLD);
            MPI_Allgather(send, sizes[si], MPI_BYTE, recv, sizes[si], MPI_BYTE, MPI_COMM_WORLD);
            const double t0 = now_s();
            for (int i = 0; i < counts[ci]; i++)
                MPI_Allgather(send, sizes[si], MPI_BYTE, recv, sizes[si], MPI_BYTE, MPI_COMM_WORLD);
            const double t = now_s() - t0;
            if (rank == 0)
                printf("sweep: %d all-gather(s) of %7d B per rank after one: %.3f MB/s per direction\n",
                       counts[ci], sizes[si], (double)sizes[si] * counts[ci] / t / 1e6);
            fflush(stdout);
        }
}

static void prompt(int rank, char *send, char *recv)
{
    static const int sizes[] = {262144, 262144, 720896, 262144};
    const char *w = getenv("PROMPT_WORK_US");
    const double work = w ? atof(w) : 1500.0;
    for (int rep = 0; rep < 3; rep++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double bytes = 0.0, t_work = 0.0;
        const double t0 = now_s();
        for (int layer = 0; layer < 8; layer++)
            for (int j = 0; j < 4; j++) {
                const double w0 = now_s();
                work_us(work);
                t_work += now_s() - w0;
                MPI_Allgather(send, sizes[j], MPI_BYTE, recv, sizes[j], MPI_BYTE, MPI_COMM_WORLD);
                bytes += sizes[j];
            }
        const double t = now_s() - t0;
        if (rank == 0)
            printf("prompt: 32 joins, %.0f us work each: %.1f ms, joins %.1f ms, %.3f MB/s per direction\n",
                   work, t * 1e3, (t - t_work) * 1e3, bytes / (t - t_work) / 1e6);
        fflush(stdout);
    }
}

static void blocks(int rank, char *send, char *recv)
{
    static const int sizes[] = {65536, 131072, 262144, 524288, 1048576};
    const char *w = getenv("PROMPT_WORK_US");
    const double work = w ? atof(w) : 1500.0;
    const char *idle = getenv("BLOCKS_IDLE_MS");
    const int idle_ms = idle ? atoi(idle) : 0;
    for (int rep = 0; rep < 3; rep++)
        for (int si = 0; si < 5; si++)
            for (int in_place = 0; in_place < 2; in_place++) {
                MPI_Barrier(MPI_COMM_WORLD);
                if (idle_ms > 0) /* the link quiet first, as before a prompt */
                    nanosleep(&(struct timespec){idle_ms / 1000, (long)(idle_ms % 1000) * 1000000}, NULL);
                double t_join = 0.0;
                for (int i = 0; i <= 16; i++) {
                    work_us(work);
                    const double t0 = now_s();
                    MPI_Allgather(in_place ? MPI_IN_PLACE : send, sizes[si], MPI_BYTE, recv, sizes[si],
                                  MPI_BYTE, MPI_COMM_WORLD);
                    if (i > 0) t_join += now_s() - t0;
                }
                if (rank == 0)
                    printf("blocks: %7d B per rank%s after %.0f us work: %.2f ms per join, %.3f MB/s per "
                           "direction\n",
                           sizes[si], in_place ? " (in place)" : "", work, t_join / 16 * 1e3,
                           (double)sizes[si] * 16 / t_join / 1e6);
                fflush(stdout);
            }
}

static void oneway(int rank, char *send, char *recv)
{
    static const int sizes[] = {4096, 16384, 32768, 65536};
    for (int si = 0; si < 4; si++) {
        double sum = 0.0;
        const int reps = 20;
        for (int i = 0; i < reps; i++) {
            MPI_Barrier(MPI_COMM_WORLD);
            nanosleep(&(struct timespec){0, 20000000}, NULL);
            const double t0 = now_s();
            if (rank == 1) {
                MPI_Send(send, sizes[si], MPI_BYTE, 0, 1, MPI_COMM_WORLD);
                MPI_Recv(recv, 8, MPI_BYTE, 0, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else if (rank == 0) {
                MPI_Recv(recv, sizes[si], MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(send, 8, MPI_BYTE, 1, 2, MPI_COMM_WORLD);
            }
            sum += now_s() - t0;
        }
        if (rank == 0)
            printf("oneway: %6d B from rank 1, 8 B back, after 20 ms idle: %.2f ms\n", sizes[si],
                   sum / reps * 1e3);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char *send = calloc(1, PROBE_MAX_BYTES), *recv = calloc((size_t)size, PROBE_MAX_BYTES);
    if (size != 2 || !send || !recv) {
        if (rank == 0) fprintf(stderr, "mpi_join_probe: run with exactly 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    for (int i = 1; i < argc || i == 1; i++) {
        const char *mode = i < argc ? argv[i] : "all";
        const int all = !strcmp(mode, "all");
        if (all || !strcmp(mode, "joins")) joins(rank, send, recv);
        if (all || !strcmp(mode, "stream")) stream(rank, send, recv);
        if (all || !strcmp(mode, "oneway")) oneway(rank, send, recv);
        if (all || !strcmp(mode, "sweep")) sweep(rank, send, recv);
        if (all || !strcmp(mode, "prompt")) prompt(rank, send, recv);
        if (!strcmp(mode, "blocks")) blocks(rank, send, recv);
        if (!all && strcmp(mode, "joins") && strcmp(mode, "stream") && strcmp(mode, "oneway") &&
            strcmp(mode, "sweep") && strcmp(mode, "prompt") && strcmp(mode, "blocks") && rank == 0)
            fprintf(stderr, "mpi_join_probe: unknown mode '%s' (joins, stream, oneway, sweep, prompt, blocks)\n",
                    mode);
    }
    free(recv);
    free(send);
    MPI_Finalize();
    return 0;
}
