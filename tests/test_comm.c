/*
 * test_comm.c: the communicator, with local groups of 1..4 ranks driven by
 * one thread each.
 *
 * The checks are SPMD functions (spmd_*): every rank runs the same one on its
 * own communicator and counts its own failures. Here they run on local
 * groups of 1, 2, 3 and 4 threads; tests/mpi_comm_driver.c includes this file
 * with COMM_TEST_SPMD_ONLY defined and runs the very same functions on MPI
 * ranks under mpirun (tests/comm_mpi_test.sh). Each rank generates every
 * rank's input from a seed, so it can compute the expected results alone.
 *
 * All-reduce is checked per wire type against the exact sum (double): F32
 * bit-equal to the rank-order float sum; F16 and Q8 within the per-element
 * bounds of comm.h and within its relative RMS bounds; the same bits on every
 * rank (hash all-gathered) and under both algorithms. The local-only cases
 * below test what only the local backend does: detecting ranks that disagree,
 * a rank that leaves, a rank that never comes (timeout), and measure the
 * wire encodings' error for comm.h (case wire_error prints it).
 */
#include "test.h"

#include "comm/comm.h"

#include <pthread.h>

#define F16_RMS_BOUND 5e-4
#define Q8_RMS_BOUND 2e-2

/* ---- per-rank failure counting (thread-local: one rank per thread) ---- */

static _Thread_local int spmd_fails_;
static _Thread_local int spmd_rank_;

#define RCHECK(cond)                                                                       \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "  rank %d: %s:%d: RCHECK(%s) failed\n", spmd_rank_, __FILE__, \
                    __LINE__, #cond);                                                      \
            spmd_fails_++;                                                                 \
        }                                                                                  \
    } while (0)

#define RCHECK_RC(expr, want)                                                                 \
    do {                                                                                      \
        int rc_ = (expr), want_ = (want);                                                     \
        if (rc_ != want_) {                                                                   \
            fprintf(stderr, "  rank %d: %s:%d: %s = %d (%s: %s), want %d (%s)\n", spmd_rank_, \
                    __FILE__, __LINE__, #expr, rc_, tt_strerror(rc_), tt_error_detail(),     \
                    want_, tt_strerror(want_));                                               \
            spmd_fails_++;                                                                    \
        }                                                                                     \
    } while (0)

/* ---- deterministic inputs ---- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static double rng_unit(uint64_t *s)
{
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

enum input_kind { INPUT_GAUSS, INPUT_OUTLIERS };

/* Rank r's contribution: N(0,1), or N(0,1) with every 64th channel 30x. */
static void gen_input(float *x, int64_t n, uint64_t seed, int r, enum input_kind kind)
{
    uint64_t s = seed * 1000003u + (uint64_t)r * 7919u + 1;
    for (int64_t i = 0; i < n; i++) {
        double g = sqrt(-2.0 * log(rng_unit(&s))) * cos(6.283185307179586 * rng_unit(&s));
        x[i] = (float)(kind == INPUT_OUTLIERS && i % 64 == 17 ? 30.0 * g : g);
    }
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* True if every rank holds the same bytes (hashes all-gathered). */
static bool same_on_all_ranks(struct comm *c, const void *p, size_t n)
{
    int size = comm_size(c);
    uint64_t h = hash_bytes(p, n), *all = calloc((size_t)size, sizeof(*all));
    int rc = comm_allgather(c, &h, sizeof(h), all);
    bool same = rc == TT_OK;
    for (int r = 0; same && r < size; r++) same = all[r] == h;
    free(all);
    return same;
}

/* ---- all-reduce ---- */

struct ar_ref {
    double *exact;  /* sum in double */
    float *ordered; /* rank-order float sum */
    double *bound;  /* per-element error bound of the wire */
};

static float block_absmax(const float *x, int64_t n, int64_t i)
{
    int64_t b0 = i / 32 * 32, b1 = TT_MIN(b0 + 32, n);
    float m = 0;
    for (int64_t j = b0; j < b1; j++) m = fmaxf(m, fabsf(x[j]));
    return m;
}

static void ar_reference(struct ar_ref *ref, int size, int64_t n, uint64_t seed,
                         enum input_kind kind, enum comm_wire wire, float *tmp)
{
    for (int r = 0; r < size; r++) {
        gen_input(tmp, n, seed, r, kind);
        for (int64_t i = 0; i < n; i++) {
            double a = fabs((double)tmp[i]), b;
            if (wire == COMM_WIRE_F16) b = a * 0x1p-11 + 0x1p-25;
            else if (wire == COMM_WIRE_Q8) b = block_absmax(tmp, n, i) / 254.0 * 1.001;
            else b = 0;
            ref->exact[i] = (r ? ref->exact[i] : 0) + tmp[i];
            ref->ordered[i] = r ? ref->ordered[i] + tmp[i] : tmp[i];
            ref->bound[i] = (r ? ref->bound[i] : 0) + b + a * 1e-6; /* + float sum rounding */
        }
    }
}

/* Compare an all-reduce result with the reference; return relative RMS error. */
static double ar_compare(const float *y, const struct ar_ref *ref, int64_t n, enum comm_wire wire)
{
    double err2 = 0, ref2 = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)y[i] - ref->exact[i];
        err2 += d * d, ref2 += ref->exact[i] * ref->exact[i];
        bool ok = wire == COMM_WIRE_F32 ? y[i] == ref->ordered[i] : fabs(d) <= ref->bound[i];
        if (!ok && bad++ == 0)
            fprintf(stderr, "  rank %d: %s n=%lld [%lld]: %.9g, exact %.9g, bound %.3g\n",
                    spmd_rank_, comm_wire_name(wire), (long long)n, (long long)i, y[i],
                    ref->exact[i], ref->bound[i]);
    }
    RCHECK(bad == 0);
    return ref2 > 0 ? sqrt(err2 / ref2) : 0;
}

/* One all-reduce of n floats under every algorithm; returns the relative RMS
 * error of the last. */
static double ar_one(struct comm *c, int64_t n, uint64_t seed, enum input_kind kind,
                     enum comm_wire wire)
{
    int size = comm_size(c);
    struct ar_ref ref = { calloc((size_t)n, sizeof(double)), calloc((size_t)n, sizeof(float)),
                          calloc((size_t)n, sizeof(double)) };
    float *y = calloc((size_t)n, sizeof(float)), *first = calloc((size_t)n, sizeof(float));
    ar_reference(&ref, size, n, seed, kind, wire, y);
    double rel = 0;
    for (int a = COMM_ALGO_AUTO; a < COMM_ALGO_COUNT; a++) {
        comm_set_algo(c, (enum comm_algo)a);
        gen_input(y, n, seed, comm_rank(c), kind);
        RCHECK_RC(comm_allreduce_sum(c, y, n, wire), TT_OK);
        if (size > 1) rel = ar_compare(y, &ref, n, wire); /* one rank: nothing is encoded */
        RCHECK(same_on_all_ranks(c, y, (size_t)n * sizeof(float)));
        if (a == COMM_ALGO_AUTO) memcpy(first, y, (size_t)n * sizeof(float));
        else RCHECK(memcmp(first, y, (size_t)n * sizeof(float)) == 0);
    }
    comm_set_algo(c, COMM_ALGO_AUTO);
    free(first), free(y), free(ref.bound), free(ref.ordered), free(ref.exact);
    return rel;
}

static void spmd_allreduce(struct comm *c, enum comm_wire wire, double rms_bound)
{
    static const int64_t sizes[] = { 1, 31, 32, 33, 100, 1000, 4097, 40000 };
    float dummy = 1;
    RCHECK_RC(comm_allreduce_sum(c, &dummy, 0, wire), TT_OK);
    RCHECK(dummy == 1);
    for (size_t k = 0; k < TT_ARRAY_LEN(sizes); k++) {
        for (int kind = INPUT_GAUSS; kind <= INPUT_OUTLIERS; kind++) {
            double rel = ar_one(c, sizes[k], (uint64_t)k + 1, (enum input_kind)kind, wire);
            if (sizes[k] >= 1000 && !(rel <= rms_bound)) {
                fprintf(stderr, "  rank %d: %s n=%lld relative RMS error %.3g > %.3g\n",
                        spmd_rank_, comm_wire_name(wire), (long long)sizes[k], rel, rms_bound);
                spmd_fails_++;
            }
        }
    }
}

static void spmd_allreduce_f32(struct comm *c) { spmd_allreduce(c, COMM_WIRE_F32, 1e-6); }
static void spmd_allreduce_f16(struct comm *c) { spmd_allreduce(c, COMM_WIRE_F16, F16_RMS_BOUND); }
static void spmd_allreduce_q8(struct comm *c) { spmd_allreduce(c, COMM_WIRE_Q8, Q8_RMS_BOUND); }

/* A NaN on one rank: F32/F16 poison that element, Q8 its whole block. */
static void spmd_allreduce_nan(struct comm *c)
{
    if (comm_size(c) < 2) return;
    for (int w = 0; w < COMM_WIRE_COUNT; w++) {
        float x[64];
        for (int i = 0; i < 64; i++) x[i] = (float)(i + comm_rank(c));
        if (comm_rank(c) == 1) x[5] = NAN;
        RCHECK_RC(comm_allreduce_sum(c, x, 64, (enum comm_wire)w), TT_OK);
        for (int i = 0; i < 64; i++) {
            bool want_nan = w == COMM_WIRE_Q8 ? i < 32 : i == 5;
            if (isnan(x[i]) != want_nan) {
                fprintf(stderr, "  rank %d: %s [%d] = %g\n", spmd_rank_,
                        comm_wire_name((enum comm_wire)w), i, x[i]);
                spmd_fails_++;
                break;
            }
        }
    }
}

/* ---- the other collectives ---- */

static unsigned char pattern(int r, size_t i) { return (unsigned char)(r * 31 + i * 7 + i / 251); }

static void spmd_allgather(struct comm *c)
{
    static const size_t sizes[] = { 1, 7, 1000, 70001 };
    int p = comm_size(c), me = comm_rank(c);
    for (size_t k = 0; k < TT_ARRAY_LEN(sizes); k++) {
        size_t b = sizes[k];
        unsigned char *send = malloc(b), *recv = malloc(b * (size_t)p);
        for (size_t i = 0; i < b; i++) send[i] = pattern(me, i);
        for (int in_place = 0; in_place < 2; in_place++) {
            memset(recv, 0xee, b * (size_t)p);
            if (in_place) memcpy(recv + (size_t)me * b, send, b);
            RCHECK_RC(comm_allgather(c, in_place ? recv + (size_t)me * b : send, b, recv), TT_OK);
            size_t bad = 0;
            for (int r = 0; r < p; r++)
                for (size_t i = 0; i < b; i++) bad += recv[(size_t)r * b + i] != pattern(r, i);
            RCHECK(bad == 0);
        }
        free(recv), free(send);
    }
}

static void spmd_allgatherv(struct comm *c)
{
    int p = comm_size(c), me = comm_rank(c);
    size_t *counts = calloc((size_t)p, sizeof(size_t));
    RCHECK_RC(comm_allgatherv(c, NULL, 0, NULL, counts), TT_OK); /* all empty */
    for (int k = 0; k < 4; k++) {
        size_t total = 0, own = 0;
        for (int r = 0; r < p; r++) {
            counts[r] = (size_t)((r + k) % 3 == 0 ? 0 : 1 + r * 997 + k * 40000);
            if (r == me) own = total;
            total += counts[r];
        }
        unsigned char *send = malloc(counts[me] + 1), *recv = malloc(total + 1);
        for (size_t i = 0; i < counts[me]; i++) send[i] = pattern(me, i);
        for (int in_place = 0; in_place < 2; in_place++) {
            memset(recv, 0xee, total);
            if (in_place) memcpy(recv + own, send, counts[me]);
            const void *s = in_place ? recv + own : send;
            RCHECK_RC(comm_allgatherv(c, s, counts[me], recv, counts), TT_OK);
            size_t bad = 0, off = 0;
            for (int r = 0; r < p; r++)
                for (size_t i = 0; i < counts[r]; i++) bad += recv[off++] != pattern(r, i);
            RCHECK(bad == 0);
        }
        free(recv), free(send);
    }
    free(counts);
}

/* Bytes rank i sends rank j in round k of the alltoallv check (some zero). */
static size_t a2a_len(int i, int j, int k) { return (size_t)((i * 7 + j * 13 + k) % 5) * 9001; }

static void spmd_alltoallv(struct comm *c)
{
    int p = comm_size(c), me = comm_rank(c);
    size_t *sb = calloc((size_t)p, sizeof(size_t)), *rb = calloc((size_t)p, sizeof(size_t));
    for (int k = 0; k < 5; k++) {
        size_t st = 0, rt = 0;
        for (int j = 0; j < p; j++) st += sb[j] = a2a_len(me, j, k), rt += rb[j] = a2a_len(j, me, k);
        unsigned char *send = malloc(st + 1), *recv = malloc(rt + 1), *s = send;
        for (int j = 0; j < p; j++)
            for (size_t i = 0; i < sb[j]; i++) *s++ = pattern(me * 16 + j, i);
        memset(recv, 0xee, rt);
        RCHECK_RC(comm_alltoallv(c, send, sb, recv, rb), TT_OK);
        size_t bad = 0;
        const unsigned char *r = recv;
        for (int j = 0; j < p; j++)
            for (size_t i = 0; i < rb[j]; i++) bad += *r++ != pattern(j * 16 + me, i);
        RCHECK(bad == 0);
        free(recv), free(send);
    }
    free(rb), free(sb);
}

static void spmd_bcast(struct comm *c)
{
    static const size_t sizes[] = { 1, 1000, 100003 };
    int p = comm_size(c), me = comm_rank(c);
    for (size_t k = 0; k < TT_ARRAY_LEN(sizes); k++) {
        unsigned char *buf = malloc(sizes[k]);
        for (int root = 0; root < p; root++) {
            for (size_t i = 0; i < sizes[k]; i++) buf[i] = me == root ? pattern(root, i) : 0;
            RCHECK_RC(comm_bcast(c, buf, sizes[k], root), TT_OK);
            size_t bad = 0;
            for (size_t i = 0; i < sizes[k]; i++) bad += buf[i] != pattern(root, i);
            RCHECK(bad == 0);
        }
        free(buf);
    }
}

static void spmd_gather(struct comm *c)
{
    static const size_t sizes[] = { 3, 5000 };
    int p = comm_size(c), me = comm_rank(c);
    for (size_t k = 0; k < TT_ARRAY_LEN(sizes); k++) {
        size_t b = sizes[k];
        unsigned char *send = malloc(b), *recv = malloc(b * (size_t)p);
        for (size_t i = 0; i < b; i++) send[i] = pattern(me, i);
        for (int root = 0; root < p; root++) {
            memset(recv, 0xee, b * (size_t)p);
            RCHECK_RC(comm_gather(c, send, b, me == root ? recv : NULL, root), TT_OK);
            size_t bad = 0;
            for (int r = 0; me == root && r < p; r++)
                for (size_t i = 0; i < b; i++) bad += recv[(size_t)r * b + i] != pattern(r, i);
            RCHECK(bad == 0);
        }
        free(recv), free(send);
    }
}

static void spmd_barrier(struct comm *c)
{
    for (int i = 0; i < 50; i++) RCHECK_RC(comm_barrier(c), TT_OK);
    RCHECK(comm_rank(c) >= 0 && comm_rank(c) < comm_size(c));
    RCHECK(!strcmp(comm_backend_name(c), "local") || !strcmp(comm_backend_name(c), "mpi"));
    for (int r = 0; r < comm_size(c); r++) RCHECK(comm_host(c, r)[0] != 0);
    RCHECK(comm_host(c, -1)[0] == 0 && comm_host(c, comm_size(c))[0] == 0);
}

/* ---- point to point ---- */

/* A ring, even ranks sending first so that blocking MPI sends cannot deadlock. */
static void ring_exchange(struct comm *c, size_t bytes, int tag)
{
    int p = comm_size(c), me = comm_rank(c), next = (me + 1) % p, prev = (me + p - 1) % p;
    unsigned char *out = malloc(bytes + 1), *in = malloc(bytes + 1);
    for (size_t i = 0; i < bytes; i++) out[i] = pattern(me, i);
    for (int step = 0; step < 2; step++) {
        if ((step == 0) == (me % 2 == 0)) RCHECK_RC(comm_send(c, out, bytes, next, tag), TT_OK);
        else RCHECK_RC(comm_recv(c, in, bytes, prev, tag), TT_OK);
    }
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++) bad += in[i] != pattern(prev, i);
    RCHECK(bad == 0);
    free(in), free(out);
}

static void spmd_send_recv(struct comm *c)
{
    if (comm_size(c) < 2) return;
    static const size_t sizes[] = { 0, 5, 1000, 300007 };
    for (size_t k = 0; k < TT_ARRAY_LEN(sizes); k++) ring_exchange(c, sizes[k], (int)k);
    int me = comm_rank(c);
    if (me == 0) { /* tags 1 and 2 received in the other order; three in order on tag 3 */
        int a = 11, b = 22;
        RCHECK_RC(comm_send(c, &a, sizeof(a), 1, 1), TT_OK);
        RCHECK_RC(comm_send(c, &b, sizeof(b), 1, 2), TT_OK);
        for (int v = 1; v <= 3; v++) RCHECK_RC(comm_send(c, &v, sizeof(v), 1, COMM_TAG_MAX), TT_OK);
    } else if (me == 1) {
        int a = 0, b = 0;
        RCHECK_RC(comm_recv(c, &b, sizeof(b), 0, 2), TT_OK);
        RCHECK_RC(comm_recv(c, &a, sizeof(a), 0, 1), TT_OK);
        RCHECK(a == 11 && b == 22);
        for (int v = 1; v <= 3; v++) {
            int got = 0;
            RCHECK_RC(comm_recv(c, &got, sizeof(got), 0, COMM_TAG_MAX), TT_OK);
            RCHECK(got == v);
        }
    }
    RCHECK_RC(comm_barrier(c), TT_OK);
}

/* A receive of another size than was sent fails with TT_ECOMM; the
 * communicator stays usable. */
static void spmd_recv_mismatch(struct comm *c)
{
    if (comm_size(c) < 2) return;
    char buf[16] = "0123456789abcde";
    if (comm_rank(c) == 0) {
        RCHECK_RC(comm_send(c, buf, 16, 1, 7), TT_OK);
        RCHECK_RC(comm_send(c, buf, 8, 1, 8), TT_OK);
    } else if (comm_rank(c) == 1) {
        RCHECK_RC(comm_recv(c, buf, 8, 0, 7), TT_ECOMM); /* larger message */
        RCHECK(tt_error_detail()[0] != 0);
        RCHECK_RC(comm_recv(c, buf, 16, 0, 8), TT_ECOMM); /* smaller message */
    }
    RCHECK_RC(comm_barrier(c), TT_OK);
}

/* ---- invalid arguments (every rank alike, so no rank is left waiting) ---- */

static void spmd_invalid(struct comm *c)
{
    int p = comm_size(c), me = comm_rank(c);
    float f[8] = { 0 };
    unsigned char buf[64];
    size_t counts[COMM_LOCAL_MAX] = { 0 };
    RCHECK_RC(comm_allreduce_sum(c, f, -1, COMM_WIRE_F32), TT_EINVAL);
    RCHECK_RC(comm_allreduce_sum(c, f, 4, (enum comm_wire)99), TT_EINVAL);
    RCHECK_RC(comm_allreduce_sum(c, NULL, 4, COMM_WIRE_F32), TT_EINVAL);
    RCHECK_RC(comm_reserve(c, -5), TT_EINVAL);
    RCHECK_RC(comm_bcast(c, buf, 4, -1), TT_EINVAL);
    RCHECK_RC(comm_bcast(c, buf, 4, p), TT_EINVAL);
    RCHECK_RC(comm_bcast(c, NULL, 4, 0), TT_EINVAL);
    RCHECK_RC(comm_gather(c, buf, 1, buf + 8, p), TT_EINVAL);
    RCHECK_RC(comm_gather(c, NULL, 1, buf + 8, 0), TT_EINVAL);
    RCHECK_RC(comm_allgather(c, buf + 1, 4, buf), TT_EINVAL); /* overlap, not own slot */
    RCHECK_RC(comm_allgather(c, NULL, 4, buf), TT_EINVAL);
    RCHECK_RC(comm_allgatherv(c, buf, 1, buf + 8, NULL), TT_EINVAL);
    counts[me] = 2;
    RCHECK_RC(comm_allgatherv(c, buf, 1, buf + 8, counts), TT_EINVAL); /* 1 != counts[me] */
    RCHECK_RC(comm_alltoallv(c, buf, NULL, buf + 8, counts), TT_EINVAL);
    RCHECK_RC(comm_alltoallv(c, buf, counts, buf + 8, counts + 1), TT_EINVAL); /* self: 2 vs 0 */
    RCHECK_RC(comm_alltoallv(c, buf, counts, buf + 1, counts), TT_EINVAL);     /* overlap */
    RCHECK_RC(comm_send(c, buf, 1, me, 0), TT_EINVAL);                /* to itself */
    RCHECK_RC(comm_send(c, buf, 1, -1, 0), TT_EINVAL);
    RCHECK_RC(comm_send(c, buf, 1, p, 0), TT_EINVAL);
    RCHECK_RC(comm_recv(c, buf, 1, p, 0), TT_EINVAL);
    RCHECK_RC(comm_recv(c, buf, 1, me, 0), TT_EINVAL);
    if (p > 1) {
        int peer = (me + 1) % p;
        RCHECK_RC(comm_send(c, buf, 1, peer, -1), TT_EINVAL);
        RCHECK_RC(comm_send(c, buf, 1, peer, COMM_TAG_MAX + 1), TT_EINVAL);
        RCHECK_RC(comm_send(c, NULL, 1, peer, 0), TT_EINVAL);
        RCHECK_RC(comm_recv(c, NULL, 1, peer, 0), TT_EINVAL);
    }
    /* Nothing was sent, so the communicator still works. */
    RCHECK_RC(comm_barrier(c), TT_OK);
    for (int i = 0; i < 8; i++) f[i] = (float)i;
    RCHECK_RC(comm_allreduce_sum(c, f, 8, COMM_WIRE_F32), TT_OK);
    RCHECK(f[3] == 3.0f * (float)p);
}

static void spmd_stats(struct comm *c)
{
    int p = comm_size(c);
    float x[1000] = { 0 };
    double s;
    uint64_t b;
    comm_stats_reset(c);
    comm_stats(c, &s, &b);
    RCHECK(s == 0 && b == 0);
    RCHECK_RC(comm_reserve(c, 1000), TT_OK);
    RCHECK_RC(comm_allreduce_sum(c, x, 1000, COMM_WIRE_F32), TT_OK);
    comm_stats(c, &s, &b);
    RCHECK(s >= 0 && s < 60);
    RCHECK(b == (p > 1 ? 2 * (uint64_t)(p - 1) * 4000 : 0)); /* GATHER below 64 KiB */
    RCHECK_RC(comm_allreduce_sum(c, x, 1000, COMM_WIRE_Q8), TT_OK);
    comm_stats(c, NULL, &b);
    RCHECK(b == (p > 1 ? 2 * (uint64_t)(p - 1) * (4000 + comm_wire_bytes(COMM_WIRE_Q8, 1000)) : 0));
}

/* comm_split: colors rank % 2 (rank 3 of 4 stays out), keys reversing the
 * order; the parts work on their own and beside the parent. */
static void spmd_split(struct comm *c)
{
    const int p = comm_size(c), me = comm_rank(c);
    const int color = p == 4 && me == 3 ? COMM_COLOR_NONE : me % 2;
    struct comm *s = NULL;
    RCHECK_RC(comm_split(c, -2, 0, &s), TT_EINVAL);
    RCHECK(s == NULL);
    RCHECK_RC(comm_split(c, color, -me, &s), TT_OK);
    if (color == COMM_COLOR_NONE) {
        RCHECK(s == NULL);
    } else if (s) {
        int members = 0, below = 0; /* same color; of them, higher ranks come first */
        for (int r = 0; r < p; r++)
            if (r % 2 == color && !(p == 4 && r == 3)) {
                members++;
                below += r > me;
            }
        RCHECK(comm_size(s) == members);
        RCHECK(comm_rank(s) == below);
        RCHECK(!strcmp(comm_host(s, comm_rank(s)), comm_host(c, me)));
        RCHECK(!strcmp(comm_backend_name(s), comm_backend_name(c)));
        float x[3] = { (float)me, 1.0f, 2.0f };
        RCHECK_RC(comm_allreduce_sum(s, x, 3, COMM_WIRE_F32), TT_OK);
        float want = 0.0f;
        for (int r = 0; r < p; r++)
            if (r % 2 == color && !(p == 4 && r == 3)) want += (float)r;
        RCHECK(x[0] == want && x[1] == (float)members);
        if (members > 1) { /* a message around the part, tag shared with the parent */
            int tok = me, got = -1, sr = comm_rank(s), n = comm_size(s);
            RCHECK_RC(comm_send(s, &tok, sizeof(tok), (sr + 1) % n, 3), TT_OK);
            RCHECK_RC(comm_recv(s, &got, sizeof(got), (sr + n - 1) % n, 3), TT_OK);
            RCHECK(got % 2 == color && got != me);
        }
    }
    /* the parent still works, and so does a second split of it */
    float y = 1.0f;
    RCHECK_RC(comm_allreduce_sum(c, &y, 1, COMM_WIRE_F32), TT_OK);
    RCHECK(y == (float)p);
    struct comm *all = NULL;
    RCHECK_RC(comm_split(c, 0, me, &all), TT_OK);
    RCHECK(all && comm_size(all) == p && comm_rank(all) == me);
    if (all) RCHECK_RC(comm_barrier(all), TT_OK);
    comm_free(all);
    comm_free(s);
}

/* comm_all_true: true only when every rank says so, the same answer on
 * every rank. */
static void spmd_all_true(struct comm *c)
{
    const int me = comm_rank(c), p = comm_size(c);
    bool all = false;
    RCHECK_RC(comm_all_true(c, true, &all), TT_OK);
    RCHECK(all);
    RCHECK_RC(comm_all_true(c, me != p - 1, &all), TT_OK);
    RCHECK(!all);
    RCHECK_RC(comm_all_true(c, false, &all), TT_OK);
    RCHECK(!all);
}

struct spmd_case {
    const char *name;
    void (*fn)(struct comm *c);
};

static const struct spmd_case spmd_cases[] = {
    { "barrier", spmd_barrier },
    { "allreduce_f32", spmd_allreduce_f32 },
    { "allreduce_f16", spmd_allreduce_f16 },
    { "allreduce_q8", spmd_allreduce_q8 },
    { "allreduce_nan", spmd_allreduce_nan },
    { "allgather", spmd_allgather },
    { "allgatherv", spmd_allgatherv },
    { "alltoallv", spmd_alltoallv },
    { "bcast", spmd_bcast },
    { "gather", spmd_gather },
    { "send_recv", spmd_send_recv },
    { "recv_mismatch", spmd_recv_mismatch },
    { "invalid", spmd_invalid },
    { "stats", spmd_stats },
    { "split", spmd_split },
    { "all_true", spmd_all_true },
};

/* Run one check on this rank; its number of failures. */
static int spmd_run(struct comm *c, void (*fn)(struct comm *c))
{
    spmd_fails_ = 0;
    spmd_rank_ = comm_rank(c);
    fn(c);
    return spmd_fails_;
}

#ifndef COMM_TEST_SPMD_ONLY

/* ---- local groups: one thread per rank ---- */

struct rank_thread {
    pthread_t th;
    struct comm *c;
    void (*fn)(struct comm *c);
    int fails;
};

static void *rank_main(void *arg)
{
    struct rank_thread *t = arg;
    t->fails = spmd_run(t->c, t->fn);
    return NULL;
}

/* Run fn on a local group of n threads; total failures. */
static int run_group(int n, void (*fn)(struct comm *c))
{
    struct comm *comms[16];
    struct rank_thread t[16];
    TT_ASSERT(n <= 16);
    if (comm_local_group(comms, n) != TT_OK) return 1;
    for (int r = 0; r < n; r++) {
        t[r] = (struct rank_thread){ .c = comms[r], .fn = fn };
        pthread_create(&t[r].th, NULL, rank_main, &t[r]);
    }
    int fails = 0;
    for (int r = 0; r < n; r++) {
        pthread_join(t[r].th, NULL);
        fails += t[r].fails;
    }
    for (int r = 0; r < n; r++) comm_free(comms[r]);
    return fails;
}

static void run_groups_1_to_4(void (*fn)(struct comm *c))
{
    for (int n = 1; n <= 4; n++) {
        int fails = run_group(n, fn);
        if (fails) fprintf(stderr, "  (group of %d ranks)\n", n);
        CHECK_EQ_INT(fails, 0);
    }
}

static void (*spmd_find(const char *name))(struct comm *c)
{
    for (size_t i = 0; i < TT_ARRAY_LEN(spmd_cases); i++)
        if (!strcmp(spmd_cases[i].name, name)) return spmd_cases[i].fn;
    TT_ASSERT(!"no such SPMD case");
}

/* test_<name>: the SPMD case <name> on groups of 1..4 ranks. */
#define GROUP_CASE(name) \
    static void test_##name(void) { run_groups_1_to_4(spmd_find(#name)); }
GROUP_CASE(barrier)
GROUP_CASE(allreduce_f32)
GROUP_CASE(allreduce_f16)
GROUP_CASE(allreduce_q8)
GROUP_CASE(allreduce_nan)
GROUP_CASE(allgather)
GROUP_CASE(allgatherv)
GROUP_CASE(alltoallv)
GROUP_CASE(bcast)
GROUP_CASE(gather)
GROUP_CASE(send_recv)
GROUP_CASE(recv_mismatch)
GROUP_CASE(invalid)
GROUP_CASE(stats)
GROUP_CASE(split)
GROUP_CASE(all_true)

static void test_init(void)
{
    struct comm *c = NULL;
    CHECK_EQ_INT(comm_init(&c, COMM_BACKEND_COUNT, NULL, NULL), TT_EINVAL);
    CHECK(c == NULL);
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) {
        TEST_SKIP("running under an MPI launcher");
        return;
    }
    CHECK_EQ_INT(comm_init(&c, COMM_BACKEND_AUTO, NULL, NULL), TT_OK);
    CHECK_STR(comm_backend_name(c), "local");
    CHECK_EQ_INT(comm_size(c), 1);
    CHECK_EQ_INT(comm_rank(c), 0);
    float x[3] = { 1, 2, 3 };
    CHECK_EQ_INT(comm_allreduce_sum(c, x, 3, COMM_WIRE_Q8), TT_OK);
    CHECK(x[0] == 1 && x[1] == 2 && x[2] == 3); /* one rank: untouched */
    unsigned char a[4] = { 1, 2, 3, 4 }, b[4] = { 0 };
    CHECK_EQ_INT(comm_gather(c, a, 4, NULL, 0), TT_EINVAL); /* root needs recv */
    CHECK_EQ_INT(comm_gather(c, a, 4, b, 0), TT_OK);
    CHECK(memcmp(a, b, 4) == 0);
    comm_free(c);
    comm_free(NULL);
#ifndef TT_HAVE_MPI
    CHECK_EQ_INT(comm_init(&c, COMM_BACKEND_MPI, NULL, NULL), TT_EUNSUPPORTED);
    CHECK(strstr(tt_error_detail(), "MPI=1") != NULL);
#endif
    struct comm *g[2];
    CHECK_EQ_INT(comm_local_group(g, 0), TT_EINVAL);
    CHECK_EQ_INT(comm_local_group(g, COMM_LOCAL_MAX + 1), TT_ERANGE);
}

static void test_wire_bytes(void)
{
    CHECK_EQ_INT(comm_wire_bytes(COMM_WIRE_F32, 10), 40);
    CHECK_EQ_INT(comm_wire_bytes(COMM_WIRE_F16, 10), 20);
    CHECK_EQ_INT(comm_wire_bytes(COMM_WIRE_Q8, 0), 0);
    CHECK_EQ_INT(comm_wire_bytes(COMM_WIRE_Q8, 32), 36);
    CHECK_EQ_INT(comm_wire_bytes(COMM_WIRE_Q8, 33), 41);
    CHECK_EQ_INT(comm_wire_bytes(COMM_WIRE_Q8, 4096), 4608);
    CHECK_STR(comm_wire_name(COMM_WIRE_Q8), "q8");
}

/* ---- what only the local backend checks ---- */

/* Ranks calling different collectives, roots or sizes: TT_EINVAL on all of
 * them, and the group still works. */
static void spmd_disagree(struct comm *c)
{
    int me = comm_rank(c);
    unsigned char buf[64] = { 0 };
    if (me == 0) RCHECK_RC(comm_bcast(c, buf, 4, 0), TT_EINVAL);
    else RCHECK_RC(comm_allgather(c, buf, 4, buf + 8), TT_EINVAL);
    RCHECK(strstr(tt_error_detail(), "called") != NULL);
    RCHECK_RC(comm_bcast(c, buf, 4, me), TT_EINVAL);                  /* roots differ */
    RCHECK_RC(comm_gather(c, buf, (size_t)me + 1, buf + 8, 0), TT_EINVAL); /* sizes differ */
    float x[40] = { 0 };
    RCHECK_RC(comm_allreduce_sum(c, x, 32 + me, COMM_WIRE_F32), TT_EINVAL); /* n differs */
    RCHECK_RC(comm_barrier(c), TT_OK);
}

static void test_local_disagree(void) { CHECK_EQ_INT(run_group(3, spmd_disagree), 0); }

struct leave_arg {
    struct comm *c;
    int rc;
    double waited_s;
};

static void *barrier_main(void *p)
{
    struct leave_arg *a = p;
    double t0 = tt_now_s();
    a->rc = comm_barrier(a->c);
    a->waited_s = tt_now_s() - t0;
    return NULL;
}

/* A rank that frees its communicator releases the ranks waiting for it. */
static void test_local_rank_leaves(void)
{
    struct comm *g[3];
    CHECK_EQ_INT(comm_local_group(g, 3), TT_OK);
    struct leave_arg a[2] = { { .c = g[0] }, { .c = g[1] } };
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, barrier_main, &a[i]);
    comm_free(g[2]); /* rank 2 leaves instead of arriving */
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(a[i].rc, TT_ECOMM);
    }
    int x = 0;
    CHECK_EQ_INT(comm_send(g[0], &x, sizeof(x), 1, 0), TT_ECOMM);
    comm_free(g[1]);
    comm_free(g[0]);
    /* comm_abort: the same, but the communicator stays to be freed. */
    CHECK_EQ_INT(comm_local_group(g, 2), TT_OK);
    a[0] = (struct leave_arg){ .c = g[0] };
    pthread_create(&th[0], NULL, barrier_main, &a[0]);
    comm_abort(g[1], 3);
    pthread_join(th[0], NULL);
    CHECK_EQ_INT(a[0].rc, TT_ECOMM);
    CHECK_EQ_INT(comm_barrier(g[1]), TT_ECOMM);
    CHECK(strstr(tt_error_detail(), "rank 1 aborted") != NULL);
    comm_free(g[0]);
    comm_free(g[1]);
}

/* A rank that never comes: the others time out (TT_COMM_TIMEOUT_S). */
static void test_local_timeout(void)
{
    setenv("TT_COMM_TIMEOUT_S", "1", 1);
    struct comm *g[2], *h[2];
    int rc1 = comm_local_group(g, 2), rc2 = comm_local_group(h, 2);
    unsetenv("TT_COMM_TIMEOUT_S");
    CHECK_EQ_INT(rc1, TT_OK);
    CHECK_EQ_INT(rc2, TT_OK);
    if (rc1 || rc2) return;
    struct leave_arg a = { .c = g[0] };
    barrier_main(&a);
    CHECK_EQ_INT(a.rc, TT_ECOMM);
    CHECK(a.waited_s >= 0.9 && a.waited_s < 10);
    CHECK(strstr(tt_error_detail(), "TT_COMM_TIMEOUT_S") != NULL);
    CHECK_EQ_INT(comm_barrier(g[1]), TT_ECOMM); /* the group is down for everyone */
    int x;
    CHECK_EQ_INT(comm_recv(h[1], &x, sizeof(x), 0, 0), TT_ECOMM); /* nobody sends */
    for (int r = 0; r < 2; r++) comm_free(g[r]), comm_free(h[r]);
}

/* Measured relative RMS error of F16/Q8 all-reduce (quoted in comm.h). */
static double wire_rel;
static enum comm_wire wire_w;
static enum input_kind wire_kind;

static void spmd_wire_error(struct comm *c)
{
    const int64_t n = 1 << 18;
    float *y = malloc((size_t)n * sizeof(float));
    double *exact = calloc((size_t)n, sizeof(double));
    for (int r = 0; r < comm_size(c); r++) {
        gen_input(y, n, 99, r, wire_kind);
        for (int64_t i = 0; i < n; i++) exact[i] += y[i];
    }
    gen_input(y, n, 99, comm_rank(c), wire_kind);
    RCHECK_RC(comm_allreduce_sum(c, y, n, wire_w), TT_OK);
    double e2 = 0, r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = y[i] - exact[i];
        e2 += d * d, r2 += exact[i] * exact[i];
    }
    if (comm_rank(c) == 0) wire_rel = sqrt(e2 / r2);
    free(exact), free(y);
}

static void test_wire_error(void)
{
    static const int ps[] = { 2, 4, 8 };
    for (int w = COMM_WIRE_F16; w <= COMM_WIRE_Q8; w++) {
        for (int k = INPUT_GAUSS; k <= INPUT_OUTLIERS; k++) {
            fprintf(stderr, "  wire_error %s %-8s", comm_wire_name((enum comm_wire)w),
                    k == INPUT_GAUSS ? "N(0,1)" : "outliers");
            for (size_t i = 0; i < TT_ARRAY_LEN(ps); i++) {
                wire_w = (enum comm_wire)w, wire_kind = (enum input_kind)k;
                CHECK_EQ_INT(run_group(ps[i], spmd_wire_error), 0);
                fprintf(stderr, "  p=%d %.2e", ps[i], wire_rel);
                CHECK(wire_rel <= (w == COMM_WIRE_F16 ? F16_RMS_BOUND : Q8_RMS_BOUND));
            }
            fprintf(stderr, "\n");
        }
    }
}

static const struct test_case cases[] = {
    { "init", test_init },
    { "wire_bytes", test_wire_bytes },
    { "barrier", test_barrier },
    { "allreduce_f32", test_allreduce_f32 },
    { "allreduce_f16", test_allreduce_f16 },
    { "allreduce_q8", test_allreduce_q8 },
    { "allreduce_nan", test_allreduce_nan },
    { "allgather", test_allgather },
    { "allgatherv", test_allgatherv },
    { "alltoallv", test_alltoallv },
    { "bcast", test_bcast },
    { "gather", test_gather },
    { "send_recv", test_send_recv },
    { "recv_mismatch", test_recv_mismatch },
    { "invalid", test_invalid },
    { "stats", test_stats },
    { "split", test_split },
    { "all_true", test_all_true },
    { "local_disagree", test_local_disagree },
    { "local_rank_leaves", test_local_rank_leaves },
    { "local_timeout", test_local_timeout },
    { "wire_error", test_wire_error },
};

TEST_MAIN(cases)

#endif /* COMM_TEST_SPMD_ONLY */
