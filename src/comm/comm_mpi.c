/*
 * comm_mpi.c: ranks that are MPI processes (struct comm_ops "mpi"), built
 * with MPI=1 (the Makefile defines TT_HAVE_MPI and compiles this file with
 * mpicc's flags; without it the file is empty).
 *
 * Each communicator holds three duplicates of MPI_COMM_WORLD (or, made by
 * comm_split, of its part of MPI_Comm_split's result): `user` carries
 * the API's point-to-point messages, `coll` the collectives and the
 * point-to-point messages that large collectives are built from, so user
 * tags can never match internal traffic; `leave` only comm_free's barrier.
 *
 * Leaving: MPI_Finalize waits for the other ranks, so a rank that frees its
 * communicator while the others wait for it in a collective (it failed
 * alone, e.g. could not read its file) would hang the whole job forever.
 * comm_free therefore first runs a non-blocking barrier on `leave` and polls
 * it for TT_COMM_LEAVE_TIMEOUT_S seconds (default 30): if every rank
 * arrives, MPI_Finalize; if not, the others are stuck and MPI_Abort ends the
 * job (mpirun then kills every rank and exits non-zero). comm_abort ends it
 * at once.
 *
 * Errors: MPI_ERRORS_RETURN is set on MPI_COMM_WORLD and both duplicates, and
 * every MPI call goes through MPI_TRY, which turns a failure into TT_ECOMM
 * with the call, its file:line and MPI_Error_string's text. (MPI_Init itself
 * still aborts on failure: no error handler exists before it.)
 *
 * Sizes: MPI counts are int, ours size_t. A transfer is never larger than
 * m->chunk bytes (<= INT_MAX; TT_COMM_CHUNK_BYTES, default 1 GiB, which tests
 * set small to exercise this): larger point-to-point messages go as several
 * messages with the same tag (MPI keeps their order); larger collectives
 * switch to a form built from chunked pieces: allgather(v) as one chunked
 * broadcast per rank, gather as chunked sends to the root, alltoallv as
 * rounds of non-blocking sends and receives of at most one chunk per peer.
 *
 * Invariants:
 *   1. Which form a collective takes depends only on arguments that all ranks
 *      share (sizes of allgather, the recv_bytes array of allgatherv, bytes of
 *      gather and bcast), so all ranks take the same one. alltoallv's rounds
 *      are point to point, so ranks may run different numbers of them: round
 *      k of every rank carries piece k of each of its slices, and its peers
 *      post the matching piece in their round k.
 *   2. MPI_Finalize runs once, when the last communicator is freed, and only
 *      if comm_init called MPI_Init.
 *
 * A rank that dies is not reported here: Open MPI's mpirun sees the process
 * end and kills the whole job (see comm.h).
 */
#ifdef TT_HAVE_MPI

#include "comm_internal.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MPI_CHUNK_DEFAULT ((size_t)1 << 30)
#define MPI_LEAVE_TIMEOUT_DEFAULT_S 30.0
#define TAG_GATHER 1
#define TAG_ALLTOALLV 2

struct mpi_impl {
    MPI_Comm user, coll;
    MPI_Comm leave;      /* only the barrier of comm_free runs on it */
    size_t chunk;        /* largest single transfer, 1..INT_MAX */
    int *counts, *displs; /* [size] for MPI_Allgatherv */
    size_t *soff, *roff; /* [size] slice offsets of alltoallv */
    MPI_Request *reqs;   /* [2 size] */
};

static int mpi_users;     /* open MPI communicators in this process */
static bool mpi_we_init;  /* comm_init called MPI_Init_thread */

static int mpi_error(int code, const char *call, const char *file, int line)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof(msg), "MPI error code %d", code);
    return tt_error_set(TT_ECOMM, "%.*s failed at %s:%d: %s", (int)strcspn(call, "("), call, file,
                        line, msg);
}

#define MPI_TRY(call)                                                                  \
    do {                                                                               \
        int mpi_rc_ = (call);                                                          \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_error(mpi_rc_, #call, __FILE__, __LINE__); \
    } while (0)

#define MPI_TRY_GOTO(rc, label, call)                                  \
    do {                                                               \
        int mpi_rc_ = (call);                                          \
        if (mpi_rc_ != MPI_SUCCESS) {                                  \
            (rc) = mpi_error(mpi_rc_, #call, __FILE__, __LINE__);      \
            goto label;                                                \
        }                                                              \
    } while (0)

static struct mpi_impl *impl(struct comm *c) { return c->impl; }

/* ---- chunked building blocks ---- */

static int send_chunked(struct mpi_impl *m, MPI_Comm comm, const void *buf, size_t bytes, int dst,
                        int tag)
{
    const unsigned char *p = buf;
    size_t off = 0;
    do { /* at least one message, even of 0 bytes */
        int len = (int)TT_MIN(m->chunk, bytes - off);
        MPI_TRY(MPI_Send(p + off, len, MPI_BYTE, dst, tag, comm));
        off += (size_t)len;
    } while (off < bytes);
    return TT_OK;
}

static int recv_chunked(struct mpi_impl *m, MPI_Comm comm, void *buf, size_t bytes, int src,
                        int tag)
{
    unsigned char *p = buf;
    size_t off = 0;
    do {
        int len = (int)TT_MIN(m->chunk, bytes - off), got = 0;
        MPI_Status st;
        MPI_TRY(MPI_Recv(p + off, len, MPI_BYTE, src, tag, comm, &st));
        MPI_TRY(MPI_Get_count(&st, MPI_BYTE, &got));
        if (got != len)
            return tt_error_set(TT_ECOMM, "comm_recv: rank %d sent a message of another size than "
                                "the %zu bytes expected (comm_send and comm_recv sizes must "
                                "agree)", src, bytes);
        off += (size_t)len;
    } while (off < bytes);
    return TT_OK;
}

static int bcast_chunked(struct mpi_impl *m, void *buf, size_t bytes, int root)
{
    unsigned char *p = buf;
    for (size_t off = 0; off < bytes;) {
        int len = (int)TT_MIN(m->chunk, bytes - off);
        MPI_TRY(MPI_Bcast(p + off, len, MPI_BYTE, root, m->coll));
        off += (size_t)len;
    }
    return TT_OK;
}

/* ---- collectives ---- */

static int mpi_barrier(struct comm *c)
{
    MPI_TRY(MPI_Barrier(impl(c)->coll));
    return TT_OK;
}

static int mpi_bcast(struct comm *c, void *buf, size_t bytes, int root)
{
    return bcast_chunked(impl(c), buf, bytes, root);
}

static int mpi_gather(struct comm *c, const void *send, size_t bytes, void *recv, int root)
{
    struct mpi_impl *m = impl(c);
    if (bytes <= m->chunk / (size_t)c->size) {
        MPI_TRY(MPI_Gather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, root, m->coll));
        return TT_OK;
    }
    if (c->rank != root) return send_chunked(m, m->coll, send, bytes, root, TAG_GATHER);
    unsigned char *out = recv;
    memcpy(out + (size_t)root * bytes, send, bytes);
    for (int r = 0; r < c->size; r++) {
        if (r == root) continue;
        int rc = recv_chunked(m, m->coll, out + (size_t)r * bytes, bytes, r, TAG_GATHER);
        if (rc) return rc;
    }
    return TT_OK;
}

static int mpi_allgather(struct comm *c, const void *send, size_t bytes, void *recv)
{
    struct mpi_impl *m = impl(c);
    unsigned char *out = recv, *own = out + (size_t)c->rank * bytes;
    if (bytes <= m->chunk / (size_t)c->size) {
        const void *s = send == own ? MPI_IN_PLACE : send;
        MPI_TRY(MPI_Allgather(s, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->coll));
        return TT_OK;
    }
    if (send != own) memcpy(own, send, bytes);
    for (int r = 0; r < c->size; r++) {
        int rc = bcast_chunked(m, out + (size_t)r * bytes, bytes, r);
        if (rc) return rc;
    }
    return TT_OK;
}

static int mpi_allgatherv(struct comm *c, const void *send, size_t send_bytes, void *recv,
                          const size_t *recv_bytes)
{
    struct mpi_impl *m = impl(c);
    unsigned char *out = recv;
    size_t total = 0, own = 0;
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank) own = total;
        m->displs[r] = (int)TT_MIN(total, (size_t)INT_MAX); /* used only when total fits */
        m->counts[r] = (int)TT_MIN(recv_bytes[r], (size_t)INT_MAX);
        total += recv_bytes[r];
    }
    if (total <= m->chunk) {
        const void *s = send == out + own ? MPI_IN_PLACE : send;
        MPI_TRY(MPI_Allgatherv(s, (int)send_bytes, MPI_BYTE, recv, m->counts, m->displs, MPI_BYTE,
                               m->coll));
        return TT_OK;
    }
    if (send != out + own && send_bytes) memcpy(out + own, send, send_bytes);
    size_t off = 0;
    for (int r = 0; r < c->size; r++) {
        int rc = bcast_chunked(m, out + off, recv_bytes[r], r);
        if (rc) return rc;
        off += recv_bytes[r];
    }
    return TT_OK;
}

/* Round `done`: post piece [done, done+chunk) of every slice to and from each
 * peer; returns the number of requests posted in *n_req. */
static int alltoallv_round(struct comm *c, const unsigned char *send, const size_t *send_bytes,
                           unsigned char *recv, const size_t *recv_bytes, size_t done, int *n_req)
{
    struct mpi_impl *m = impl(c);
    int n = 0;
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank) continue;
        if (recv_bytes[r] > done) {
            int len = (int)TT_MIN(m->chunk, recv_bytes[r] - done);
            MPI_TRY(MPI_Irecv(recv + m->roff[r] + done, len, MPI_BYTE, r, TAG_ALLTOALLV, m->coll,
                              &m->reqs[n++]));
        }
        if (send_bytes[r] > done) {
            int len = (int)TT_MIN(m->chunk, send_bytes[r] - done);
            MPI_TRY(MPI_Isend(send + m->soff[r] + done, len, MPI_BYTE, r, TAG_ALLTOALLV, m->coll,
                              &m->reqs[n++]));
        }
    }
    *n_req = n;
    return TT_OK;
}

static int mpi_alltoallv(struct comm *c, const void *send, const size_t *send_bytes, void *recv,
                         const size_t *recv_bytes)
{
    struct mpi_impl *m = impl(c);
    size_t so = 0, ro = 0;
    for (int r = 0; r < c->size; r++) {
        m->soff[r] = so, m->roff[r] = ro;
        so += send_bytes[r], ro += recv_bytes[r];
    }
    const unsigned char *s = send;
    unsigned char *d = recv;
    if (send_bytes[c->rank])
        memcpy(d + m->roff[c->rank], s + m->soff[c->rank], send_bytes[c->rank]);
    for (size_t done = 0;; done += m->chunk) {
        int n_req = 0;
        int rc = alltoallv_round(c, s, send_bytes, d, recv_bytes, done, &n_req);
        if (rc) return rc;
        if (n_req == 0) break;
        MPI_TRY(MPI_Waitall(n_req, m->reqs, MPI_STATUSES_IGNORE));
    }
    return TT_OK;
}

/* ---- point to point ---- */

static int mpi_send(struct comm *c, const void *buf, size_t bytes, int dst, int tag)
{
    return send_chunked(impl(c), impl(c)->user, buf, bytes, dst, tag);
}

static int mpi_recv(struct comm *c, void *buf, size_t bytes, int src, int tag)
{
    return recv_chunked(impl(c), impl(c)->user, buf, bytes, src, tag);
}

/* ---- setup and teardown ---- */

static void impl_free(struct mpi_impl *m)
{
    if (m->leave != MPI_COMM_NULL && MPI_Comm_free(&m->leave) != MPI_SUCCESS)
        tt_warn("comm: MPI_Comm_free failed");
    if (m->coll != MPI_COMM_NULL && MPI_Comm_free(&m->coll) != MPI_SUCCESS)
        tt_warn("comm: MPI_Comm_free failed");
    if (m->user != MPI_COMM_NULL && MPI_Comm_free(&m->user) != MPI_SUCCESS)
        tt_warn("comm: MPI_Comm_free failed");
    free(m->reqs);
    free(m->roff);
    free(m->soff);
    free(m->displs);
    free(m->counts);
    free(m);
}

static void mpi_release(void)
{
    if (--mpi_users == 0 && mpi_we_init && MPI_Finalize() != MPI_SUCCESS)
        tt_warn("comm: MPI_Finalize failed");
}

static double env_seconds(const char *name, double dflt)
{
    const char *s = getenv(name);
    if (!s) return dflt;
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0)) {
        tt_warn("%s='%s' is not a number of seconds; using %.0f", name, s, dflt);
        return dflt;
    }
    return v;
}

/* True when every rank reached comm_free within the timeout. */
static bool leave_together(struct mpi_impl *m)
{
    double timeout = env_seconds("TT_COMM_LEAVE_TIMEOUT_S", MPI_LEAVE_TIMEOUT_DEFAULT_S);
    double t0 = tt_now_s();
    MPI_Request req;
    int done = 0;
    if (MPI_Ibarrier(m->leave, &req) != MPI_SUCCESS) return false;
    for (;;) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
        if (done) return true;
        if (tt_now_s() - t0 > timeout) return false;
        nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
    }
}

static void mpi_close(struct comm *c)
{
    struct mpi_impl *m = impl(c);
    if (!leave_together(m)) {
        tt_log(TT_LOG_ERROR, "comm: rank %d is leaving but the other ranks did not reach "
               "comm_free within TT_COMM_LEAVE_TIMEOUT_S; aborting the job so that none hangs",
               c->rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    impl_free(m);
    c->impl = NULL;
    mpi_release();
}

static void mpi_abort(struct comm *c, int code)
{
    tt_log(TT_LOG_ERROR, "comm: rank %d aborts the job (code %d)", c->rank, code);
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
}

static int mpi_split(struct comm *c, int color, int key, const int *members, struct comm *out);

static const struct comm_ops mpi_ops = {
    .name = "mpi",
    .barrier = mpi_barrier,
    .bcast = mpi_bcast,
    .gather = mpi_gather,
    .allgather = mpi_allgather,
    .allgatherv = mpi_allgatherv,
    .alltoallv = mpi_alltoallv,
    .send = mpi_send,
    .recv = mpi_recv,
    .split = mpi_split,
    .close = mpi_close,
    .abort = mpi_abort,
};

static size_t chunk_from_env(void)
{
    const char *s = getenv("TT_COMM_CHUNK_BYTES");
    if (!s) return MPI_CHUNK_DEFAULT;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || v < 1 || v > INT_MAX) {
        tt_warn("TT_COMM_CHUNK_BYTES='%s' is not in 1..%d; using %zu", s, INT_MAX,
                MPI_CHUNK_DEFAULT);
        return MPI_CHUNK_DEFAULT;
    }
    return (size_t)v;
}

static int mpi_start(int *argc, char ***argv)
{
    int flag = 0, provided = 0;
    MPI_TRY(MPI_Finalized(&flag));
    if (flag)
        return tt_error_set(TT_EUNSUPPORTED, "comm: MPI was finalized in this process and "
                            "cannot start again");
    MPI_TRY(MPI_Initialized(&flag));
    if (!flag) {
        /* Open MPI: a rank waiting in MPI yields its core now and then.
         * When ranks share cores (more ranks than cores, or a binding
         * that puts two on one core), a rank busy-polling without yielding
         * holds the core its partner needs, and each message waits for a
         * 4 ms scheduler tick (two ranks on one core between network
         * namespaces: 4,000 against 12-17 us with a core each). The yield
         * costs 0.25 us over shared memory on an idle machine; with other
         * busy programs on the cores it hands the core away for a time
         * slice, so there the user sets mpi_yield_when_idle=0 (the
         * user's or mpirun's setting wins). */
        setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
        MPI_TRY(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided));
        mpi_we_init = true;
        if (provided < MPI_THREAD_SERIALIZED)
            tt_warn("comm: MPI gives thread level %d < MPI_THREAD_SERIALIZED; call comm "
                    "only from the thread that created it", provided);
    }
    MPI_TRY(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    return TT_OK;
}

static int dup_comm(MPI_Comm base, MPI_Comm *out)
{
    MPI_TRY(MPI_Comm_dup(base, out));
    MPI_TRY(MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN));
    return TT_OK;
}

/* Duplicate `base` (not consumed) into a new impl for c: the three
 * communicators, c->rank and c->size, the per-rank arrays. */
static int impl_open(struct comm *c, MPI_Comm base)
{
    int rc = TT_OK;
    struct mpi_impl *m = calloc(1, sizeof(*m));
    if (!m) return tt_error_set(TT_ENOMEM, "comm: out of memory");
    m->user = m->coll = m->leave = MPI_COMM_NULL;
    m->chunk = chunk_from_env();
    if ((rc = dup_comm(base, &m->user)) || (rc = dup_comm(base, &m->coll)) ||
        (rc = dup_comm(base, &m->leave)))
        goto fail_impl;
    MPI_TRY_GOTO(rc, fail_impl, MPI_Comm_rank(m->coll, &c->rank));
    MPI_TRY_GOTO(rc, fail_impl, MPI_Comm_size(m->coll, &c->size));
    size_t p = (size_t)c->size;
    m->counts = calloc(p, sizeof(int));
    m->displs = calloc(p, sizeof(int));
    m->soff = calloc(p, sizeof(size_t));
    m->roff = calloc(p, sizeof(size_t));
    m->reqs = calloc(2 * p, sizeof(MPI_Request));
    if (!m->counts || !m->displs || !m->soff || !m->roff || !m->reqs) {
        rc = tt_error_set(TT_ENOMEM, "comm: out of memory for %d MPI ranks", c->size);
        goto fail_impl;
    }
    c->ops = &mpi_ops;
    c->impl = m;
    mpi_users++;
    return TT_OK;
fail_impl:
    impl_free(m);
    return rc;
}

int comm_mpi_open(struct comm *c, int *argc, char ***argv)
{
    int rc = mpi_start(argc, argv);
    if (rc) return rc;
    mpi_users++; /* held while opening, so a failure can finalize */
    rc = impl_open(c, MPI_COMM_WORLD);
    mpi_release();
    return rc;
}

/* MPI_Comm_split of the collectives' communicator; the result is
 * duplicated like MPI_COMM_WORLD (impl_open) and then freed. MPI ranks the
 * members by (key, rank in c) as comm.c does; asserted. */
static int mpi_split(struct comm *c, int color, int key, const int *members, struct comm *out)
{
    MPI_Comm part = MPI_COMM_NULL;
    MPI_TRY(MPI_Comm_split(impl(c)->coll, color >= 0 ? color : MPI_UNDEFINED, key, &part));
    if (!out) return TT_OK;
    const int want_rank = out->rank, want_size = out->size;
    int rc = impl_open(out, part);
    if (MPI_Comm_free(&part) != MPI_SUCCESS) tt_warn("comm: MPI_Comm_free failed");
    TT_ASSERT(rc || (out->rank == want_rank && out->size == want_size));
    (void)members;
    return rc;
}

#else
/* Built without MPI: nothing here (ISO C wants a declaration). */
typedef int comm_mpi_not_built;
#endif
