/*
 * cmd_topo.c: `tutti topo`, what the cluster is, measured. Under mpirun every
 * rank reports its host, cores, instruction set, memory, memory read
 * bandwidth and matrix-vector speed (the decode kernel, on a matrix larger
 * than the caches: Q4_K as matvec_gbs, and per weight type of
 * topo_matvec_types as matvec_type_gbs, which `tutti plan --cluster` mixes
 * by a model's bytes); then every pair of ranks measures its latency
 * (as a decode's joins see it, below) and bandwidth (4 MiB messages), one pair at a time
 * so pairs do not compete: one way (what a pipeline's sends see), then both
 * ways at once (what collectives see: every rank sends and receives at the
 * same time; a shaped or half-duplex link, or TCP acknowledgements queued
 * behind data, can deliver less per direction then). Which ranks share a
 * host comes from the host names the communicator exchanged at start;
 * nothing is configured.
 *
 * A rank with a CUDA GPU (a CUDA build; the engine puts every layer there
 * by default) is described by its GPU, as `tutti plan` describes one
 * (cmd_plan_gpu.c's kernel figures, without timing the engine): read_gbs
 * the device's copy bandwidth, matvec_gbs what the one-token Q4_K/Q6_K
 * products on Llama 3.1 8B's FFN shapes reach, gflops and overhead_us from
 * the prompt products and a small kernel, the device's free memory and
 * name; the GPU is the one the engine would use (local rank % devices).
 * `--cpu` describes the CPUs instead. `--plan auto` (cli_topo_json) still
 * describes CPUs: pipeline layouts and idle ranks keep ranks on the CPU.
 * When every rank is a GPU and NCCL loads everywhere, the links are the
 * GPUs' (cli_gpu_join_link: NCCL all-reduces and their adds in a graph, as
 * the engine's joins run) instead of MPI's between the processes: on two
 * H200s MPI's shared memory read 5.4 GB/s, and plan then predicted a
 * 512-token prompt 4.5x slower than NCCL ran it.
 *
 * The latency is what a join costs a tensor-parallel decode: a chain of
 * TOPO_LAT_JOINS all-gathers of 8 bytes, each after TOPO_LAT_WORK_US of
 * work, the time per join beyond the work (both ranks send and receive at
 * once, and each waits for the other's message after its own work). An
 * 8-byte ping-pong without work reads less: 9-10 us over the namespace
 * veth where such joins take 12-17 us (tools/mpi_join_probe.c joins); the
 * ping-pong's round trip still corrects the burst measurement below.
 *
 * Both ways is measured as a prompt's joins use the link: all-gathers of
 * TOPO_JOIN_BYTES per rank (a prompt chunk's block: 128-256 tokens of a
 * 1024-4096-wide row split over two ranks), each after TOPO_JOIN_GAP_US of
 * work, one untimed first, then a stream of them (at least TOPO_JOINS_MIN,
 * about TOPO_BOTH_S seconds), the work not counted. On shaped links the
 * rate of a stream varies from join to join (100 Mbit/s: 5.4-6.8 MB/s per
 * 16 joins, and one 1 s reading of 8.2 among 6.1-6.7), so the stream is
 * long: about 3 s, up to TOPO_JOINS_MAX joins, and at least 4 MiB each way:
 * a stream either keeps about the one-way rate each way or falls to half
 * of it (tools/mpi_join_probe.c blocks), and at 10 Mbit/s a prompt's
 * streams (8-11.5 MiB) always ran at 0.6-0.65 MB/s each way where 8 joins
 * (2 MiB) read 0.9 (one way: 1.2) in 2 of 12 readings, 0.6-0.7 in the rest. Measured on tbf-shaped links
 * (tools/mpi_join_probe.c, docs/PLANNER.md): over 10 and 100 Mbit/s a single
 * block each way passes at the one-way rate, the queues and windows still
 * empty, where a stream of them gets 0.5-0.6 of it; over 1 Gbit/s
 * back-to-back joins got 55-77 MB/s and joins after 0.3-3 ms of work
 * 100-117, the one-way rate.
 *
 * A shaped link may also pass a burst at once: a token bucket of
 * burst_kib, refilled at the rate (tbf, cloud instances' network credits).
 * Messages of 4-32 KiB one way, each after the link has been idle long
 * enough to refill 64 KiB, show it: the bytes that did not take the
 * one-way rate (size - (time - the 8-byte round trip) x rate; median of 3
 * per size, the largest over the sizes). Measured: 4 KiB over the 10
 * Mbit/s tbf link (4 KiB bucket) in 0.26 ms, where the rate needs 3.3.
 */
#include "cli.h"
#include "plan/plan_cost.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOPO_PINGS 200
#define TOPO_BW_BYTES (4u << 20)
#define TOPO_BW_REPS 8
#define TOPO_PROBE_BYTES (256u << 10)
#define TOPO_JOIN_BYTES (256u << 10) /* per rank, both ways */
#define TOPO_JOIN_GAP_US 500.0       /* work before each join */
#define TOPO_JOINS_MIN 16 /* 4 MiB each way: a prompt's stream (a slow link's 8 read its fast state) */
#define TOPO_JOINS_MAX 192
#define TOPO_BOTH_S 3.0              /* seconds of joins both ways (a slow link's 8 joins take longer) */
#define TOPO_LAT_JOINS 400
#define TOPO_LAT_WORK_US 50.0
#define TOPO_BURST_REPS 3
#define TOPO_BURST_MAX_BYTES (32u << 10) /* below Open MPI's TCP eager limit */
#define TOPO_TAG 7801
/* The weight types whose one-token products a CPU rank times (matvec_type_gbs):
 * those of the files users bring (Q4_K_M and Q5_K_M: Q4_K or Q5_K with
 * Q6_K; Q6_K; Q8_0); `tutti plan --cluster` mixes them by each model's
 * bytes (plan_cluster_for_model). On the 2-core machine Q6_K read 0.85-1.15
 * as fast as Q4_K and Q8_0 0.9-1.2, as memory or the cores limited them.
 * Q4_K comes first: it is also matvec_gbs. */
#define TOPO_MATVEC_TYPES 4
static const enum tt_type topo_matvec_types[TOPO_MATVEC_TYPES] = { TT_TYPE_Q4_K, TT_TYPE_Q5_K, TT_TYPE_Q6_K,
                                                                   TT_TYPE_Q8_0 };

struct topo_rank {
    char host[COMM_HOST_MAX];
    int32_t cores;
    int32_t isa;
    double mem_total_gib, mem_avail_gib;
    double read_gbs;
    double matvec_gbs;   /* Q4_K weights streamed per second by the decode kernel */
    double matvec_type_gbs[TOPO_MATVEC_TYPES]; /* the same per type of topo_matvec_types (CPU) */
    double gflops;       /* a GPU rank's prompt products (0: a CPU rank) */
    double overhead_us;  /* a GPU rank's small kernels per layer */
    char device[PLAN_NAME_MAX];
};

/* This rank as its GPU (see the top): false, *mine untouched, without one. */
static bool describe_gpu(struct topo_rank *mine, int local_rank)
{
    struct plan_model pm;
    struct plan_hw_rank g = { 0 };
    if (cli_plan_shape_model("llama-3.1-8b", &pm)) return false;
    const bool ok = cli_gpu_describe_kernels(&pm, local_rank, &g);
    plan_model_free(&pm);
    if (!ok) return false;
    mine->read_gbs = g.read_gbs;
    mine->matvec_gbs = g.read_gbs * g.bw_efficiency;
    mine->gflops = g.gflops;
    mine->overhead_us = g.overhead_us;
    mine->mem_total_gib = g.mem_total_gib;
    mine->mem_avail_gib = g.mem_avail_gib;
    snprintf(mine->device, sizeof(mine->device), "%s", g.device);
    return true;
}

/* GB/s of each of topo_matvec_types' weights through the decode kernel with
 * n_threads threads (cli_measure.c: the engine's layout on this CPU), the
 * ranks together: one barrier per type. */
static void measure_matvec(int n_threads, struct comm *together, double gbs[TOPO_MATVEC_TYPES])
{
    struct tt_pool *pool = tt_pool_create(n_threads);
    for (int k = 0; k < TOPO_MATVEC_TYPES; k++) /* 0 without a pool, after the barrier */
        gbs[k] = cli_measure_matvec_gbs(pool, topo_matvec_types[k], together);
    tt_pool_destroy(pool);
}

/* Busy for us microseconds, as a rank computing between two joins. */
static void work_us(double us)
{
    const double t0 = tt_now_s();
    while ((tt_now_s() - t0) * 1e6 < us) {}
}

/* The latency of a's link to b as a decode's joins see it, in us: a chain
 * of TOPO_LAT_JOINS all-gathers of 8 bytes (8 untimed first), each after
 * TOPO_LAT_WORK_US of work, the mean time per join beyond the work.
 * Collective over c, as measure_both_ways; 0 on the other ranks. */
static double measure_join_latency(struct comm *c, int a, int b, uint8_t *buf)
{
    struct comm *pair = NULL;
    const int me = comm_rank(c);
    int err = comm_split(c, me == a || me == b ? 0 : COMM_COLOR_NONE, me, &pair);
    double joined = 0.0;
    for (int i = -8; i < TOPO_LAT_JOINS && !err && pair; i++) {
        work_us(TOPO_LAT_WORK_US);
        const double t0 = tt_now_s();
        err = comm_allgather(pair, buf, 8, buf + TOPO_BW_BYTES);
        if (i >= 0) joined += tt_now_s() - t0;
    }
    if (pair) comm_free(pair);
    if (err) cli_die(err, "measuring the link %d-%d's joins", a, b);
    return joined / TOPO_LAT_JOINS * 1e6;
}

/* GB/s per direction while a and b run `joins` all-gathers of
 * TOPO_JOIN_BYTES per rank (each sends its block and receives the other's),
 * each after TOPO_JOIN_GAP_US of work, one untimed first; the work is not
 * counted. buf holds 3 x TOPO_BW_BYTES. Collective over c: the pair gets its
 * own communicator, the other ranks none. */
static double measure_both_ways(struct comm *c, int a, int b, uint8_t *buf, int64_t joins)
{
    const int me = comm_rank(c);
    struct comm *pair = NULL;
    int err = comm_split(c, me == a || me == b ? 0 : COMM_COLOR_NONE, me, &pair);
    double gbs = 0.0;
    if (!err && pair) {
        double joined = 0.0;
        for (int64_t i = 0; i <= joins && !err; i++) {
            work_us(TOPO_JOIN_GAP_US);
            const double t0 = tt_now_s();
            err = comm_allgather(pair, buf, TOPO_JOIN_BYTES, buf + TOPO_BW_BYTES);
            if (i > 0) joined += tt_now_s() - t0;
        }
        gbs = (double)TOPO_JOIN_BYTES * (double)joins / joined / 1e9;
        comm_free(pair);
    }
    if (err) cli_die(err, "measuring the link %d-%d both ways", a, b);
    return gbs;
}

/* Bytes of a message that pass a's link to `peer` at once after idle_us
 * (a token bucket; 0 on an unshaped link): messages of 4 KiB to
 * TOPO_BURST_MAX_BYTES from a, 8 bytes back, each after idle_us, less the
 * 8-byte round trip (2 x lat_us), against the one-way rate gbs. */
static int measure_burst(struct comm *c, int a, int peer, uint8_t *buf, double idle_us, double lat_us,
                         double gbs, double *burst_bytes)
{
    const bool me_a = comm_rank(c) == a;
    int err = 0;
    *burst_bytes = 0.0;
    for (uint32_t bytes = 4096; bytes <= TOPO_BURST_MAX_BYTES && !err; bytes *= 2) {
        double held[TOPO_BURST_REPS];
        for (int r = 0; r < TOPO_BURST_REPS && !err; r++) {
            work_us(idle_us);
            const double t0 = tt_now_s();
            err = me_a ? comm_send(c, buf, bytes, peer, TOPO_TAG) : comm_recv(c, buf, bytes, peer, TOPO_TAG);
            if (!err) err = me_a ? comm_recv(c, buf, 8, peer, TOPO_TAG) : comm_send(c, buf, 8, peer, TOPO_TAG);
            const double xfer_s = fmax(0.0, tt_now_s() - t0 - 2.0 * lat_us * 1e-6);
            held[r] = (double)bytes - xfer_s * gbs * 1e9;
        }
        for (int i = 1; i < TOPO_BURST_REPS; i++) /* sort the few estimates for the median */
            for (int j = i; j > 0 && held[j] < held[j - 1]; j--) {
                const double x = held[j];
                held[j] = held[j - 1];
                held[j - 1] = x;
            }
        *burst_bytes = fmax(*burst_bytes, held[TOPO_BURST_REPS / 2]);
    }
    return err;
}

/* Ranks a and b measure their link; everyone else waits. Returns (on a) the
 * latency of a join in microseconds (the larger of a chain of joins after
 * work and half an 8-byte round trip), the one-way bandwidth and the bandwidth
 * per direction both ways at once in GB/s, and the burst the link passes at
 * once in KiB. */
static void measure_pair(struct comm *c, int a, int b, uint8_t *buf, double *lat_us, double *gbs,
                         double *both_gbs, double *burst_kib)
{
    const int me = comm_rank(c);
    int64_t plan[2] = { TOPO_PROBE_BYTES, 1 }; /* message bytes, messages */
    int64_t ctl[2] = { TOPO_JOINS_MIN, 0 };     /* joins both ways, idle us before a burst */
    int err = 0;
    if (me == a || me == b) {
        const int peer = me == a ? b : a;
        double t0 = tt_now_s();
        for (int i = 0; i < TOPO_PINGS && !err; i++) {
            if (me == a) {
                err = comm_send(c, buf, 8, peer, TOPO_TAG);
                if (!err) err = comm_recv(c, buf, 8, peer, TOPO_TAG);
            } else {
                err = comm_recv(c, buf, 8, peer, TOPO_TAG);
                if (!err) err = comm_send(c, buf, 8, peer, TOPO_TAG);
            }
        }
        *lat_us = (tt_now_s() - t0) / TOPO_PINGS / 2 * 1e6;
        /* bandwidth: a 256 KiB probe sizes the measurement to ~0.2 s, so a
         * throttled link does not take minutes; `a` decides, `b` is told */
        t0 = tt_now_s();
        if (!err) err = me == a ? comm_send(c, buf, TOPO_PROBE_BYTES, peer, TOPO_TAG)
                                : comm_recv(c, buf, TOPO_PROBE_BYTES, peer, TOPO_TAG);
        if (!err) err = me == a ? comm_recv(c, buf, 8, peer, TOPO_TAG) : comm_send(c, buf, 8, peer, TOPO_TAG);
        if (me == a) {
            const double target = (double)TOPO_PROBE_BYTES / (tt_now_s() - t0) * 0.2;
            plan[0] = target >= TOPO_BW_BYTES ? TOPO_BW_BYTES : TOPO_PROBE_BYTES;
            plan[1] = (int64_t)(target / (double)plan[0]);
            plan[1] = plan[1] < 1 ? 1 : plan[1] > TOPO_BW_REPS ? TOPO_BW_REPS : plan[1];
        }
        if (!err) err = me == a ? comm_send(c, plan, sizeof(plan), peer, TOPO_TAG)
                                : comm_recv(c, plan, sizeof(plan), peer, TOPO_TAG);
        if (!err && (plan[0] < 1 || plan[0] > TOPO_BW_BYTES || plan[1] < 1 || plan[1] > TOPO_BW_REPS))
            err = tt_error_set(TT_ECOMM, "bad measurement plan from rank %d", peer);
        t0 = tt_now_s();
        for (int64_t i = 0; i < plan[1] && !err; i++)
            err = me == a ? comm_send(c, buf, (size_t)plan[0], peer, TOPO_TAG)
                          : comm_recv(c, buf, (size_t)plan[0], peer, TOPO_TAG);
        if (!err) err = me == a ? comm_recv(c, buf, 8, peer, TOPO_TAG) : comm_send(c, buf, 8, peer, TOPO_TAG);
        *gbs = (double)plan[0] * (double)plan[1] / (tt_now_s() - t0) / 1e9;
        /* both ways: about TOPO_BOTH_S of joins at half the one-way rate; a burst
         * after the time the rate takes for twice the largest message
         * (2-100 ms), which refills a bucket of that size */
        if (me == a) {
            const double n = TOPO_BOTH_S * *gbs * 1e9 / 2.0 / TOPO_JOIN_BYTES;
            ctl[0] = n < TOPO_JOINS_MIN ? TOPO_JOINS_MIN : n > TOPO_JOINS_MAX ? TOPO_JOINS_MAX : (int64_t)n;
            ctl[1] = (int64_t)fmin(1e5, fmax(2e3, 2.0 * TOPO_BURST_MAX_BYTES / (*gbs * 1e3)));
        }
        if (!err) err = me == a ? comm_send(c, ctl, sizeof(ctl), peer, TOPO_TAG)
                                : comm_recv(c, ctl, sizeof(ctl), peer, TOPO_TAG);
        if (!err && (ctl[0] < TOPO_JOINS_MIN || ctl[0] > TOPO_JOINS_MAX || ctl[1] < 2000 || ctl[1] > 100000))
            err = tt_error_set(TT_ECOMM, "bad measurement plan from rank %d", peer);
        double burst = 0.0;
        if (!err) err = measure_burst(c, a, peer, buf, (double)ctl[1], *lat_us, *gbs, &burst);
        *burst_kib = burst / 1024.0;
    }
    if (err) cli_die(err, "measuring the link %d-%d", a, b);
    const double join_us = measure_join_latency(c, a, b, buf);
    if (me == a) *lat_us = fmax(*lat_us, join_us);
    *both_gbs = measure_both_ways(c, a, b, buf, ctl[0]);
    if ((err = comm_barrier(c))) cli_die(err, "barrier");
}

static const char topo_help[] =
    "usage: mpirun -np N [--hostfile H] tutti topo [-t threads] [--cpu] [--json]\n"
    "Describe the cluster as measured: per rank its host, cores, instruction set,\n"
    "memory and read bandwidth (a rank with a CUDA GPU: the GPU's, with its\n"
    "product speed; --cpu: the CPU's); per pair of ranks the latency, bandwidth\n"
    "and burst of their link, and whether they share a host (GPU ranks with NCCL:\n"
    "its all-reduces between the GPUs). Works on one rank too.\n";

struct topo {
    int n;
    struct topo_rank *all; /* [n] */
    double *lat, *bw, *bw2, *burst; /* [n][n], rank 0: latency, one-way and both-ways bandwidth,
                                     * burst KiB */
    bool nccl;                      /* the links are the GPUs' NCCL all-reduces (cli_gpu_join_link) */
};

/* Collective: every rank describes itself (its GPU if `gpu` and it has
 * one), every pair measures its link. */
static void topo_measure(struct topo *t, int threads, bool gpu)
{
    struct comm *c = cli_comm();
    const int n = comm_size(c), me = comm_rank(c);
    struct topo_rank mine = { .cores = tt_cpu_count(), .isa = kcpu_get()->isa };
    snprintf(mine.host, sizeof(mine.host), "%s", comm_host(c, me));
    int local_rank = 0;
    for (int r = 0; r < me; r++) local_rank += !strcmp(comm_host(c, r), comm_host(c, me));
    /* the CPU ranks read memory at once (a barrier before each timing), as
     * the layouts they run do: ranks sharing a host each measure their share
     * of its bandwidth (started apart, they took turns: 4 ranks of 4 threads
     * on a 16-core host read 105 GB/s in all where they decode at 70) */
    if (!gpu || !describe_gpu(&mine, local_rank)) {
        cli_meminfo(&mine.mem_total_gib, &mine.mem_avail_gib);
        mine.read_gbs = cli_measure_read_bw(threads ? threads : mine.cores, c);
        measure_matvec(threads ? threads : mine.cores, c, mine.matvec_type_gbs);
        mine.matvec_gbs = mine.matvec_type_gbs[0];
    } else { /* the CPU ranks' barriers: one for the read, one per product type */
        for (int k = 0; k <= TOPO_MATVEC_TYPES; k++)
            if (comm_barrier(c)) cli_die(TT_ECOMM, "measuring the ranks at once");
    }
    t->n = n;
    t->all = calloc((size_t)n, sizeof(*t->all));
    t->lat = calloc((size_t)n * n, sizeof(double));
    t->bw = calloc((size_t)n * n, sizeof(double));
    t->bw2 = calloc((size_t)n * n, sizeof(double));
    t->burst = calloc((size_t)n * n, sizeof(double));
    uint8_t *buf = tt_alloc(3 * (size_t)TOPO_BW_BYTES); /* send block, then both blocks received */
    if (!t->all || !t->lat || !t->bw || !t->bw2 || !t->burst || !buf) cli_die(TT_ENOMEM, "topo");
    int err = comm_allgather(c, &mine, sizeof(mine), t->all);
    if (err) cli_die(err, "exchanging rank descriptions");
    /* GPU ranks join with NCCL (engine_cuda.c): their links are what its
     * all-reduces take, not what MPI's messages between the processes take */
    bool every_gpu = gpu;
    for (int r = 0; r < n; r++) every_gpu &= t->all[r].gflops > 0;
    struct plan_link nccl;
    t->nccl = every_gpu && cli_gpu_join_link(c, local_rank, &nccl);
    for (int a = 0; a < n && t->nccl; a++)
        for (int b = 0; b < n; b++) {
            if (a == b) continue;
            t->lat[a * n + b] = nccl.latency_us;
            t->bw[a * n + b] = nccl.bandwidth_gbs;
            t->bw2[a * n + b] = nccl.bandwidth_both_gbs;
        }
    for (int a = 0; a < n && !t->nccl; a++)
        for (int b = a + 1; b < n; b++) {
            double l = 0, g = 0, g2 = 0, kib = 0;
            measure_pair(c, a, b, buf, &l, &g, &g2, &kib);
            double lg[4] = { l, g, g2, kib }; /* rank a's figures to rank 0 */
            if (a != 0 && me == a) err = comm_send(c, lg, sizeof(lg), 0, TOPO_TAG);
            if (a != 0 && me == 0) err = comm_recv(c, lg, sizeof(lg), a, TOPO_TAG);
            if (err) cli_die(err, "collecting link figures");
            t->lat[a * n + b] = t->lat[b * n + a] = lg[0];
            t->bw[a * n + b] = t->bw[b * n + a] = lg[1];
            t->bw2[a * n + b] = t->bw2[b * n + a] = lg[2];
            t->burst[a * n + b] = t->burst[b * n + a] = lg[3];
        }
    tt_free(buf);
}

static void topo_free(struct topo *t)
{
    free(t->all);
    free(t->lat);
    free(t->bw);
    free(t->bw2);
    free(t->burst);
}

/* The cluster as JSON (the format `tutti plan --cluster` reads). */
static void topo_json(FILE *fp, const struct topo *t)
{
    const int n = t->n;
    const struct topo_rank *all = t->all;
    fprintf(fp, "{\"ranks\":[");
    for (int r = 0; r < n; r++) {
        fprintf(fp, "%s{\"rank\":%d,\"host\":", r ? "," : "", r);
        cli_json_str(fp, all[r].host, strlen(all[r].host));
        fprintf(fp, ",\"cores\":%d,\"isa\":\"%s\",\"mem_total_gib\":%.2f,\"mem_avail_gib\":%.2f,"
                "\"read_gbs\":%.2f,\"matvec_gbs\":%.2f", all[r].cores,
                kcpu_isa_name((enum kcpu_isa)all[r].isa), all[r].mem_total_gib, all[r].mem_avail_gib,
                all[r].read_gbs, all[r].matvec_gbs);
        int n_types = 0;
        for (int k = 0; k < TOPO_MATVEC_TYPES; k++)
            if (all[r].matvec_type_gbs[k] > 0)
                fprintf(fp, "%s\"%s\":%.2f", n_types++ ? "," : ",\"matvec_type_gbs\":{",
                        tt_type_name(topo_matvec_types[k]), all[r].matvec_type_gbs[k]);
        if (n_types) fprintf(fp, "}");
        if (all[r].gflops > 0) {
            fprintf(fp, ",\"gflops\":%.1f,\"attn_gflops\":%.1f,\"overhead_us\":%.2f,\"device\":",
                    all[r].gflops, all[r].gflops, all[r].overhead_us);
            cli_json_str(fp, all[r].device, strnlen(all[r].device, sizeof(all[r].device)));
        }
        fprintf(fp, "}");
    }
    fprintf(fp, "],\"links\":[");
    for (int a = 0, k = 0; a < n; a++)
        for (int b = a + 1; b < n; b++, k++)
            fprintf(fp, "%s{\"a\":%d,\"b\":%d,\"same_host\":%s,\"latency_us\":%.2f,\"bandwidth_gbs\":%.6f,"
                    "\"bandwidth_both_gbs\":%.6f,\"burst_kib\":%.2f%s}",
                    k ? "," : "", a, b, strcmp(all[a].host, all[b].host) ? "false" : "true",
                    t->lat[a * n + b], t->bw[a * n + b], t->bw2[a * n + b], t->burst[a * n + b],
                    t->nccl ? ",\"comment\":\"NCCL all-reduces between the GPUs, each with its add, in a CUDA graph\"" : "");
    fprintf(fp, "]}\n");
}

char *cli_topo_json(int threads)
{
    struct topo t;
    topo_measure(&t, threads, false);
    char *text = NULL;
    size_t len = 0;
    if (comm_rank(cli_comm()) == 0) {
        FILE *fp = open_memstream(&text, &len);
        if (!fp) cli_die(TT_ENOMEM, "topo");
        topo_json(fp, &t);
        fclose(fp);
    }
    topo_free(&t);
    return text;
}

int cmd_topo(int argc, char **argv)
{
    bool json = false, cpu = false;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(topo_help, stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--json")) json = true;
        else if (!strcmp(argv[i], "--cpu")) cpu = true;
        else if (!strcmp(argv[i], "-t") || !strcmp(argv[i], "--threads"))
            threads = (int)cli_parse_int(argv[i], cli_value(argc, argv, &i), 1, 512);
        else cli_die(0, "unknown option '%s' (see tutti topo --help)", argv[i]);
    }
    struct topo t;
    topo_measure(&t, threads, !cpu);
    const int n = t.n;
    const struct topo_rank *all = t.all;
    if (comm_rank(cli_comm()) == 0 && json) topo_json(stdout, &t);
    else if (comm_rank(cli_comm()) == 0) {
        printf("rank  host                 cores  isa      memory (free) GiB  read GB/s  Q4_K matvec GB/s\n");
        for (int r = 0; r < n; r++)
            printf("%4d  %-20s %5d  %-7s  %7.1f (%6.1f)     %7.1f  %16.1f\n", r, all[r].host, all[r].cores,
                   kcpu_isa_name((enum kcpu_isa)all[r].isa), all[r].mem_total_gib, all[r].mem_avail_gib,
                   all[r].read_gbs, all[r].matvec_gbs);
        for (int r = 0; r < n; r++)
            if (all[r].gflops > 0)
                printf("rank %d runs on its GPU, %s: read bandwidth is its copy bandwidth, %.0f GFLOP/s "
                       "prompt products, %.1f us of small kernels per layer\n",
                       r, all[r].device, all[r].gflops, all[r].overhead_us);
        if (n > 1) printf("\nlink    same host  latency us  bandwidth GB/s  both ways GB/s  burst KiB\n");
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++)
                printf("%2d-%-2d   %-9s  %10.2f  %14.4f  %14.4f  %9.1f\n", a, b,
                       strcmp(all[a].host, all[b].host) ? "no" : "yes", t.lat[a * n + b], t.bw[a * n + b],
                       t.bw2[a * n + b], t.burst[a * n + b]);
    }
    topo_free(&t);
    return 0;
}
