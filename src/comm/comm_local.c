/*
 * comm_local.c: ranks that are threads of one process (struct comm_ops
 * "local").
 *
 * A group of n ranks shares one struct local_group: a mutex, a condition
 * variable, one post slot per rank for collectives and one inbox per rank
 * for point-to-point messages. comm_init(LOCAL) is a group of one; tests make
 * groups of several with comm_local_group() and drive each rank from its own
 * thread, which runs the engine's multi-rank code paths in one process.
 *
 * A collective is two barriers around a pull:
 *
 *   post own arguments -> barrier 1 -> check all posts -> pull what this
 *   rank needs from the others' buffers -> barrier 2 -> return
 *
 * Invariants:
 *   1. posts[r] is written only by rank r, only outside barrier 1..barrier 2,
 *      and read by others only inside it; the mutex taken by the barriers
 *      orders the writes before the reads.
 *   2. A rank reads other ranks' buffers only between the two barriers, when
 *      their owners are blocked, and writes only its own buffers.
 *   3. Every rank runs the same check over the same posts, so all ranks agree
 *      on whether a collective matches (same op, root and sizes); a mismatch
 *      is TT_EINVAL on every rank and the group stays usable. This makes the
 *      local backend the checking twin of the MPI one.
 *   4. `dead` only goes from false to true (a rank left with comm_free, or a
 *      wait timed out); from then on every call of every rank returns
 *      TT_ECOMM with the reason, except receives of messages already queued.
 *      A barrier that completed (gen advanced) counts as completed even if
 *      the group died just after.
 * Sends are buffered: the message is copied into the receiver's inbox and
 * send returns at once, so no send/recv order can deadlock here (MPI may
 * block large sends until they are received: write code that works either
 * way). Waits give up after TT_COMM_TIMEOUT_S seconds (default 300, 0 =
 * never) so that a test whose ranks disagree fails instead of hanging.
 */
#include "comm_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOCAL_TIMEOUT_DEFAULT_S 300.0

enum local_op {
    LOCAL_BARRIER,
    LOCAL_BCAST,
    LOCAL_GATHER,
    LOCAL_ALLGATHER,
    LOCAL_ALLGATHERV,
    LOCAL_ALLTOALLV,
    LOCAL_OP_COUNT
};

static const char *const op_names[LOCAL_OP_COUNT] = {
    "comm_barrier",   "comm_bcast",      "comm_gather",
    "comm_allgather", "comm_allgatherv", "an all-reduce (alltoallv)",
};

/* One rank's arguments to the collective in progress. */
struct local_post {
    enum local_op op;
    int root;
    size_t bytes;              /* bcast, gather, allgather: per rank; allgatherv: send */
    const void *send;          /* bcast: the buffer itself */
    void *recv;
    const size_t *send_counts; /* alltoallv [n] */
    const size_t *recv_counts; /* allgatherv, alltoallv [n] */
};

struct local_msg {
    struct local_msg *next;
    int src, tag;
    size_t bytes;
    unsigned char data[];
};

struct local_group {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* barrier generations, new messages, death */
    int n, refs;       /* ranks; communicators not yet freed */
    int arrived;       /* at the current barrier */
    uint64_t gen;      /* barriers completed */
    bool dead;
    char why[256];
    double timeout_s;
    struct local_post *posts; /* [n] */
    struct local_msg **inbox; /* [n] FIFO lists */
};

/* ---- group state (all with g->mu held) ---- */

static void group_kill(struct local_group *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void group_kill(struct local_group *g, const char *fmt, ...)
{
    if (g->dead) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->why, sizeof(g->why), fmt, ap);
    va_end(ap);
    g->dead = true;
    pthread_cond_broadcast(&g->cv);
}

static int dead_error(const struct local_group *g, int rank)
{
    return tt_error_set(TT_ECOMM, "comm (local rank %d): the group is down: %s", rank, g->why);
}

/* Absolute deadline for a wait starting now, or NULL for none. */
static const struct timespec *deadline(const struct local_group *g, struct timespec *ts)
{
    if (g->timeout_s <= 0) return NULL;
    clock_gettime(CLOCK_MONOTONIC, ts);
    double s = (double)ts->tv_sec + (double)ts->tv_nsec * 1e-9 + g->timeout_s;
    ts->tv_sec = (time_t)s;
    ts->tv_nsec = (long)((s - (double)ts->tv_sec) * 1e9);
    return ts;
}

/* Wait for a broadcast; false once the deadline has passed. */
static bool group_wait(struct local_group *g, const struct timespec *until)
{
    if (!until) return pthread_cond_wait(&g->cv, &g->mu) == 0;
    return pthread_cond_timedwait(&g->cv, &g->mu, until) != ETIMEDOUT;
}

static int group_barrier(struct comm *c, enum local_op op)
{
    struct local_group *g = c->impl;
    struct timespec ts;
    const struct timespec *until = deadline(g, &ts);
    int rc = TT_OK;
    pthread_mutex_lock(&g->mu);
    uint64_t gen = g->gen;
    if (g->dead) {
        rc = dead_error(g, c->rank);
    } else if (++g->arrived == g->n) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (g->gen == gen && !g->dead)
            if (!group_wait(g, until))
                group_kill(g, "rank %d waited %.0f s in %s for ranks that never came "
                              "(TT_COMM_TIMEOUT_S)", c->rank, g->timeout_s, op_names[op]);
        if (g->gen == gen) rc = dead_error(g, c->rank);
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

/* ---- collectives ---- */

static int mismatch(const struct local_post *p, int r, const char *what, long long a, long long b)
{
    return tt_error_set(TT_EINVAL, "comm (local): ranks disagree in %s: %s is %lld on rank 0, "
                        "%lld on rank %d", op_names[p->op], what, a, b, r);
}

/* The same verdict on every rank (invariant 3). */
static int posts_check(const struct local_group *g)
{
    const struct local_post *p = g->posts, *a = &p[0];
    for (int r = 1; r < g->n; r++) {
        const struct local_post *b = &p[r];
        if (b->op != a->op)
            return tt_error_set(TT_EINVAL, "comm (local): rank 0 called %s while rank %d called %s",
                                op_names[a->op], r, op_names[b->op]);
        bool rooted = a->op == LOCAL_BCAST || a->op == LOCAL_GATHER;
        if (rooted && b->root != a->root) return mismatch(a, r, "root", a->root, b->root);
        if ((rooted || a->op == LOCAL_ALLGATHER) && b->bytes != a->bytes)
            return mismatch(a, r, "the size", (long long)a->bytes, (long long)b->bytes);
    }
    if (a->op != LOCAL_ALLGATHERV && a->op != LOCAL_ALLTOALLV) return TT_OK;
    for (int i = 0; i < g->n; i++) {
        for (int r = 0; r < g->n; r++) {
            size_t want = a->op == LOCAL_ALLGATHERV ? p[r].bytes : p[r].send_counts[i];
            if (want != p[i].recv_counts[r])
                return tt_error_set(TT_EINVAL, "comm (local): in %s rank %d expects %zu bytes from "
                                    "rank %d, which sends %zu", op_names[a->op], i,
                                    p[i].recv_counts[r], r, want);
        }
    }
    return TT_OK;
}

static size_t prefix(const size_t *counts, int upto)
{
    size_t s = 0;
    for (int r = 0; r < upto; r++) s += counts[r];
    return s;
}

/* Pull into rank me's buffers what the collective gives it (invariant 2). */
static void posts_pull(const struct local_group *g, int me)
{
    const struct local_post *p = g->posts, *mine = &p[me];
    unsigned char *recv = mine->recv;
    for (int r = 0; r < g->n; r++) {
        const void *src = p[r].send;
        unsigned char *dst;
        size_t len;
        switch (mine->op) {
        case LOCAL_BCAST:
            if (r != mine->root || r == me) continue;
            dst = recv, len = mine->bytes;
            break;
        case LOCAL_GATHER:
            if (me != mine->root) return;
            /* fall through */
        case LOCAL_ALLGATHER:
            dst = recv + (size_t)r * mine->bytes, len = mine->bytes;
            break;
        case LOCAL_ALLGATHERV:
            dst = recv + prefix(mine->recv_counts, r), len = mine->recv_counts[r];
            break;
        case LOCAL_ALLTOALLV:
            src = (const unsigned char *)src + prefix(p[r].send_counts, me);
            dst = recv + prefix(mine->recv_counts, r), len = mine->recv_counts[r];
            break;
        default:
            return;
        }
        if (len && dst != src) memcpy(dst, src, len);
    }
}

static int local_collective(struct comm *c, const struct local_post *post)
{
    struct local_group *g = c->impl;
    g->posts[c->rank] = *post;
    int rc = group_barrier(c, post->op);
    if (rc) return rc;
    rc = posts_check(g);
    if (rc == TT_OK) posts_pull(g, c->rank);
    int rc2 = group_barrier(c, post->op);
    return rc ? rc : rc2;
}

static int local_barrier(struct comm *c)
{
    return local_collective(c, &(struct local_post){ .op = LOCAL_BARRIER });
}

static int local_bcast(struct comm *c, void *buf, size_t bytes, int root)
{
    struct local_post p = { .op = LOCAL_BCAST, .root = root, .bytes = bytes, .send = buf,
                            .recv = buf };
    return local_collective(c, &p);
}

static int local_gather(struct comm *c, const void *send, size_t bytes, void *recv, int root)
{
    struct local_post p = { .op = LOCAL_GATHER, .root = root, .bytes = bytes, .send = send,
                            .recv = recv };
    return local_collective(c, &p);
}

static int local_allgather(struct comm *c, const void *send, size_t bytes, void *recv)
{
    struct local_post p = { .op = LOCAL_ALLGATHER, .bytes = bytes, .send = send, .recv = recv };
    return local_collective(c, &p);
}

static int local_allgatherv(struct comm *c, const void *send, size_t send_bytes, void *recv,
                            const size_t *recv_bytes)
{
    struct local_post p = { .op = LOCAL_ALLGATHERV, .bytes = send_bytes, .send = send,
                            .recv = recv, .recv_counts = recv_bytes };
    return local_collective(c, &p);
}

static int local_alltoallv(struct comm *c, const void *send, const size_t *send_bytes,
                           void *recv, const size_t *recv_bytes)
{
    struct local_post p = { .op = LOCAL_ALLTOALLV, .send = send, .recv = recv,
                            .send_counts = send_bytes, .recv_counts = recv_bytes };
    return local_collective(c, &p);
}

/* ---- point to point ---- */

static int local_send(struct comm *c, const void *buf, size_t bytes, int dst, int tag)
{
    struct local_group *g = c->impl;
    if (bytes > SIZE_MAX - sizeof(struct local_msg))
        return tt_error_set(TT_ENOMEM, "comm_send: %zu bytes is too large", bytes);
    struct local_msg *m = malloc(sizeof(*m) + bytes);
    if (!m) return tt_error_set(TT_ENOMEM, "comm_send: out of memory for %zu bytes", bytes);
    *m = (struct local_msg){ .src = c->rank, .tag = tag, .bytes = bytes };
    if (bytes) memcpy(m->data, buf, bytes);
    pthread_mutex_lock(&g->mu);
    if (g->dead) {
        int rc = dead_error(g, c->rank);
        pthread_mutex_unlock(&g->mu);
        free(m);
        return rc;
    }
    struct local_msg **tail = &g->inbox[dst];
    while (*tail) tail = &(*tail)->next;
    *tail = m;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return TT_OK;
}

/* Unlink the first message from src with tag in rank me's inbox, or NULL. */
static struct local_msg *inbox_take(struct local_group *g, int me, int src, int tag)
{
    for (struct local_msg **pm = &g->inbox[me]; *pm; pm = &(*pm)->next) {
        struct local_msg *m = *pm;
        if (m->src == src && m->tag == tag) {
            *pm = m->next;
            return m;
        }
    }
    return NULL;
}

static int local_recv(struct comm *c, void *buf, size_t bytes, int src, int tag)
{
    struct local_group *g = c->impl;
    struct timespec ts;
    const struct timespec *until = deadline(g, &ts);
    struct local_msg *m;
    pthread_mutex_lock(&g->mu);
    while (!(m = inbox_take(g, c->rank, src, tag)) && !g->dead)
        if (!group_wait(g, until))
            group_kill(g, "rank %d waited %.0f s for a message from rank %d with tag %d "
                          "(TT_COMM_TIMEOUT_S)", c->rank, g->timeout_s, src, tag);
    int rc = m ? TT_OK : dead_error(g, c->rank);
    pthread_mutex_unlock(&g->mu);
    if (!m) return rc;
    if (m->bytes != bytes)
        rc = tt_error_set(TT_ECOMM, "comm_recv: rank %d sent %zu bytes with tag %d where rank %d "
                          "expected %zu (comm_send and comm_recv sizes must agree)", src,
                          m->bytes, tag, c->rank, bytes);
    else if (bytes)
        memcpy(buf, m->data, bytes);
    free(m);
    return rc;
}

/* ---- setup and teardown ---- */

static void group_destroy(struct local_group *g)
{
    if (!g) return;
    for (int r = 0; g->inbox && r < g->n; r++) {
        while (g->inbox[r]) {
            struct local_msg *m = g->inbox[r];
            g->inbox[r] = m->next;
            free(m);
        }
    }
    free(g->inbox);
    free(g->posts);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static void local_close(struct comm *c)
{
    struct local_group *g = c->impl;
    pthread_mutex_lock(&g->mu);
    group_kill(g, "rank %d has left (comm_free)", c->rank);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) group_destroy(g);
}

static void local_abort(struct comm *c, int code)
{
    struct local_group *g = c->impl;
    pthread_mutex_lock(&g->mu);
    group_kill(g, "rank %d aborted (code %d)", c->rank, code);
    pthread_mutex_unlock(&g->mu);
}

static const struct comm_ops local_ops;
static int group_create(struct local_group **out, int n);

/* The first member of each color creates its group, with a reference for
 * every member; an all-gather over c hands its address to the others. */
static int local_split(struct comm *c, int color, int key, const int *members, struct comm *out)
{
    (void)key;
    struct local_group *g = NULL;
    int rc = TT_OK;
    if (out && members[0] == c->rank && (rc = group_create(&g, out->size)) == TT_OK)
        g->refs = out->size;
    uintptr_t mine = (uintptr_t)g, *all = calloc((size_t)c->size, sizeof(*all));
    if (!all) rc = tt_error_set(TT_ENOMEM, "comm_split: out of memory");
    struct local_post p = { .op = LOCAL_ALLGATHER, .bytes = sizeof(mine), .send = &mine,
                            .recv = all ? all : NULL };
    /* a first rank whose group failed still enters the collective, giving NULL */
    int rc2 = all ? local_collective(c, &p) : TT_ENOMEM;
    if (rc == TT_OK) rc = rc2;
    if (rc == TT_OK && out && !(g = (struct local_group *)all[members[0]]))
        rc = tt_error_set(TT_ENOMEM, "comm_split: the first rank of color %d could not create "
                          "its group", color);
    free(all);
    if (rc) return rc;
    if (out) {
        out->ops = &local_ops;
        out->impl = g;
    }
    return TT_OK;
}

static const struct comm_ops local_ops = {
    .name = "local",
    .barrier = local_barrier,
    .bcast = local_bcast,
    .gather = local_gather,
    .allgather = local_allgather,
    .allgatherv = local_allgatherv,
    .alltoallv = local_alltoallv,
    .send = local_send,
    .recv = local_recv,
    .split = local_split,
    .close = local_close,
    .abort = local_abort,
};

static double timeout_from_env(void)
{
    const char *s = getenv("TT_COMM_TIMEOUT_S");
    char *end;
    double t = s ? strtod(s, &end) : LOCAL_TIMEOUT_DEFAULT_S;
    if (s && (end == s || *end || !(t >= 0))) {
        tt_warn("TT_COMM_TIMEOUT_S='%s' is not a number of seconds; using %.0f", s,
                LOCAL_TIMEOUT_DEFAULT_S);
        t = LOCAL_TIMEOUT_DEFAULT_S;
    }
    return t;
}

static int group_create(struct local_group **out, int n)
{
    struct local_group *g = calloc(1, sizeof(*g));
    if (!g) goto fail_alloc;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->mu, NULL);
    g->n = n;
    g->timeout_s = timeout_from_env();
    g->posts = calloc((size_t)n, sizeof(*g->posts));
    g->inbox = calloc((size_t)n, sizeof(*g->inbox));
    if (!g->posts || !g->inbox) goto fail_arrays;
    *out = g;
    return TT_OK;
fail_arrays:
    group_destroy(g);
fail_alloc:
    return tt_error_set(TT_ENOMEM, "comm: out of memory for a local group of %d", n);
}

int comm_local_group(struct comm **comms, int n)
{
    TT_ASSERT(comms);
    if (n < 1) return tt_error_set(TT_EINVAL, "comm_local_group: n = %d, need >= 1", n);
    if (n > COMM_LOCAL_MAX)
        return tt_error_set(TT_ERANGE, "comm_local_group: n = %d exceeds %d", n, COMM_LOCAL_MAX);
    tt_base_init();
    memset(comms, 0, (size_t)n * sizeof(*comms));
    struct local_group *g = NULL;
    int rc = group_create(&g, n);
    if (rc) return rc;
    for (int r = 0; r < n; r++) {
        struct comm *c = calloc(1, sizeof(*c));
        if (!c) {
            rc = tt_error_set(TT_ENOMEM, "comm: out of memory for a local group of %d", n);
            goto fail_comms;
        }
        *c = (struct comm){ .ops = &local_ops, .impl = g, .rank = r, .size = n };
        g->refs++;
        comms[r] = c;
        if ((rc = comm_common_alloc(c))) goto fail_comms;
        comm_hosts_fill_local(c);
    }
    return TT_OK;
fail_comms:
    if (g->refs == 0) group_destroy(g);
    for (int r = 0; r < n; r++) {
        comm_free(comms[r]); /* the last one destroys g */
        comms[r] = NULL;
    }
    return rc;
}
