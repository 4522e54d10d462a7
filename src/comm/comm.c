/*
 * comm.c: the backend-independent layer of the communicator.
 *
 * Every public call passes through here: its arguments are checked (so the
 * backends see only valid calls, comm_internal.h lists what they may assume),
 * its time and bytes are counted, then it goes to c->ops. The all-reduce is
 * built here from the backends' allgather / alltoallv / allgatherv, so its
 * numerics are the same code on every backend:
 *
 *   GATHER  encode(buf) -> slot `rank` of scratch; allgather the slots;
 *           buf = d(slot 0) + d(slot 1) + ... in rank order.
 *   RSAG    encode(buf) -> scratch; alltoallv sends slice j (floats
 *           [lo_j, hi_j), 32-aligned so a Q8 block never straddles two) to
 *           rank j; rank j sums the p decoded slices in rank order into
 *           buf[lo_j, hi_j) and an in-place allgatherv of these F32 sums
 *           fills buf on every rank.
 *
 * Invariants:
 *   1. Every rank computes each output element with the same float
 *      operations on the same bytes in the same order, so results are
 *      bit-identical across ranks and between GATHER and RSAG (the F32 sums
 *      of RSAG's second round travel exactly).
 *   2. The choice of algorithm depends only on (n, wire, size, algo), which
 *      all ranks share, so all ranks take the same path.
 *   3. Scratch grows only (comm_reserve or first use); a steady-state call
 *      does not allocate.
 */
#include "comm_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define Q8_BLOCK 32
#define Q8_BLOCK_BYTES (4 + Q8_BLOCK)    /* float scale, 32 int8 */
#define RSAG_MIN_BYTES ((size_t)64 << 10) /* below: latency dominates, one round wins */

/* ---- wire encodings ---- */

const char *comm_wire_name(enum comm_wire wire)
{
    static const char *const names[COMM_WIRE_COUNT] = { "f32", "f16", "q8" };
    return (unsigned)wire < COMM_WIRE_COUNT ? names[wire] : "?";
}

size_t comm_wire_bytes(enum comm_wire wire, int64_t n)
{
    TT_ASSERT(n >= 0 && (unsigned)wire < COMM_WIRE_COUNT);
    size_t un = (size_t)n;
    switch (wire) {
    case COMM_WIRE_F32: return 4 * un;
    case COMM_WIRE_F16: return 2 * un;
    default: return un / Q8_BLOCK * Q8_BLOCK_BYTES + (un % Q8_BLOCK ? 4 + un % Q8_BLOCK : 0);
    }
}

/* One Q8 block of k <= 32 values: scale = max|x|/127, q = round(x/scale).
 * A non-finite value makes the scale NaN so the whole block decodes to NaN. */
static void q8_encode_block(const float *x, int k, unsigned char *out)
{
    float m = 0.0f;
    bool finite = true;
    for (int i = 0; i < k; i++) {
        float a = fabsf(x[i]);
        if (!isfinite(a)) finite = false;
        else if (a > m) m = a;
    }
    float scale = finite ? m / 127.0f : NAN;
    float inv = finite && m > 0.0f ? 127.0f / m : 0.0f;
    memcpy(out, &scale, sizeof(scale));
    int8_t *q = (int8_t *)(out + 4);
    if (!finite) {
        memset(q, 0, (size_t)k);
        return;
    }
    for (int i = 0; i < k; i++) {
        /* |x * inv| <= 127 (+ rounding): adding 1.5 * 2^23 rounds to nearest even. */
        float v = (x[i] * inv + 12582912.0f) - 12582912.0f;
        q[i] = (int8_t)(int)TT_MAX(-127.0f, TT_MIN(127.0f, v));
    }
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* float -> half, round to nearest even: the same bits as tt_f32_to_f16 for
 * every input but NaN payloads (checked over all 2^32), written without
 * branches so the loop vectorizes (method of F. Giesen's float_to_half_fast3). */
static tt_f16 f16_encode(float f)
{
    uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000;
    x &= 0x7fffffff;
    uint32_t big = x > 0x7f800000 ? 0x7e00 : 0x7c00;                   /* NaN : inf */
    uint32_t sub = f32_bits(bits_f32(x) + 0.5f) - f32_bits(0.5f);        /* |f| < 2^-14 */
    uint32_t norm = (x + 0xc8000fffu + ((x >> 13) & 1)) >> 13;          /* rebias, round */
    uint32_t h = x >= (143u << 23) ? big : x < (113u << 23) ? sub : norm; /* 2^16, 2^-14 */
    return (tt_f16)(h | sign);
}

static void wire_encode(enum comm_wire wire, const float *x, int64_t n, unsigned char *out)
{
    if (wire == COMM_WIRE_F32) {
        memcpy(out, x, (size_t)n * 4);
    } else if (wire == COMM_WIRE_F16) {
        tt_f16 *h = (tt_f16 *)out;
        for (int64_t i = 0; i < n; i++) h[i] = f16_encode(x[i]);
    } else {
        for (int64_t i = 0; i < n; i += Q8_BLOCK, out += Q8_BLOCK_BYTES)
            q8_encode_block(x + i, (int)TT_MIN(Q8_BLOCK, n - i), out);
    }
}

/* y = d(in) if assign, else y += d(in): one contribution of the rank-order sum. */
static void wire_decode_add(enum comm_wire wire, const unsigned char *in, int64_t n, float *y,
                            bool assign)
{
    if (wire == COMM_WIRE_F32) {
        const float *x = (const float *)in;
        if (assign) memcpy(y, x, (size_t)n * 4);
        else
            for (int64_t i = 0; i < n; i++) y[i] += x[i];
    } else if (wire == COMM_WIRE_F16) {
        const tt_f16 *h = (const tt_f16 *)in;
        if (assign)
            for (int64_t i = 0; i < n; i++) y[i] = tt_h2f(h[i]);
        else
            for (int64_t i = 0; i < n; i++) y[i] += tt_h2f(h[i]);
    } else {
        for (int64_t i = 0; i < n; i += Q8_BLOCK, in += Q8_BLOCK_BYTES) {
            float scale;
            memcpy(&scale, in, sizeof(scale));
            const int8_t *q = (const int8_t *)(in + 4);
            int k = (int)TT_MIN(Q8_BLOCK, n - i);
            if (assign)
                for (int j = 0; j < k; j++) y[i + j] = (float)q[j] * scale;
            else
                for (int j = 0; j < k; j++) y[i + j] += (float)q[j] * scale;
        }
    }
}

/* ---- setup ---- */

int comm_common_alloc(struct comm *c)
{
    TT_ASSERT(c->size >= 1);
    c->hosts = tt_alloc((size_t)c->size * COMM_HOST_MAX);
    c->counts_a = tt_alloc((size_t)c->size * sizeof(size_t));
    c->counts_b = tt_alloc((size_t)c->size * sizeof(size_t));
    if (!c->hosts || !c->counts_a || !c->counts_b)
        return tt_error_set(TT_ENOMEM, "comm: out of memory for %d ranks", c->size);
    return TT_OK;
}

static void host_name(char *out)
{
    memset(out, 0, COMM_HOST_MAX);
    if (gethostname(out, COMM_HOST_MAX - 1) != 0 || !out[0]) strcpy(out, "localhost");
    out[COMM_HOST_MAX - 1] = 0;
}

void comm_hosts_fill_local(struct comm *c)
{
    char me[COMM_HOST_MAX];
    host_name(me);
    for (int r = 0; r < c->size; r++) memcpy(c->hosts[r], me, COMM_HOST_MAX);
}

static bool launched_by_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#ifdef TT_HAVE_MPI
static const bool mpi_built = true;

static int open_mpi(struct comm **out, int *argc, char ***argv)
{
    struct comm *c = calloc(1, sizeof(*c));
    if (!c) return tt_error_set(TT_ENOMEM, "comm: out of memory");
    int rc = comm_mpi_open(c, argc, argv);
    if (rc) goto fail_open;
    if ((rc = comm_common_alloc(c))) goto fail_setup;
    char me[COMM_HOST_MAX];
    host_name(me);
    if ((rc = c->ops->allgather(c, me, COMM_HOST_MAX, c->hosts))) goto fail_setup;
    for (int r = 0; r < c->size; r++) c->hosts[r][COMM_HOST_MAX - 1] = 0;
    *out = c;
    return TT_OK;
fail_setup:
    comm_free(c);
    return rc;
fail_open:
    free(c);
    return rc;
}
#else
static const bool mpi_built = false;

static int open_mpi(struct comm **out, int *argc, char ***argv)
{
    (void)out, (void)argc, (void)argv;
    return tt_error_set(TT_EUNSUPPORTED,
                        "comm: this tutti was built without MPI; install Open MPI "
                        "(libopenmpi-dev) and rebuild with `make MPI=1`");
}
#endif

int comm_init(struct comm **out, enum comm_backend backend, int *argc, char ***argv)
{
    TT_ASSERT(out);
    *out = NULL;
    if ((unsigned)backend >= COMM_BACKEND_COUNT)
        return tt_error_set(TT_EINVAL, "comm_init: unknown backend %d", (int)backend);
    tt_base_init();
    if (backend == COMM_BACKEND_AUTO)
        backend = mpi_built && launched_by_mpirun() ? COMM_BACKEND_MPI : COMM_BACKEND_LOCAL;
    if (backend == COMM_BACKEND_LOCAL) return comm_local_group(out, 1);
    return open_mpi(out, argc, argv);
}

void comm_free(struct comm *c)
{
    if (!c) return;
    if (c->ops) c->ops->close(c);
    tt_free(c->scratch);
    tt_free(c->counts_b);
    tt_free(c->counts_a);
    tt_free(c->hosts);
    free(c);
}

void comm_abort(struct comm *c, int code)
{
    TT_ASSERT(c);
    c->ops->abort(c, code);
}

/* The members of `color` in the new order, (key, old rank), from every
 * rank's (color, key) pair; returns their count. */
static int split_members(const int32_t *pairs, int n, int color, int *members)
{
    int k = 0;
    for (int r = 0; r < n; r++) {
        if (pairs[2 * r] != color) continue;
        int at = k++;
        while (at > 0 && pairs[2 * members[at - 1] + 1] > pairs[2 * r + 1]) {
            members[at] = members[at - 1];
            at--;
        }
        members[at] = r;
    }
    return k;
}

int comm_split(struct comm *c, int color, int key, struct comm **out)
{
    TT_ASSERT(c && out);
    *out = NULL;
    if (color < COMM_COLOR_NONE)
        return tt_error_set(TT_EINVAL, "comm_split: color %d is negative (COMM_COLOR_NONE is %d)",
                            color, COMM_COLOR_NONE);
    const size_t n = (size_t)c->size;
    int32_t mine[2] = { color, key }, *pairs = tt_alloc(n * sizeof(mine));
    int *members = tt_alloc(n * sizeof(int));
    struct comm *sub = color >= 0 ? calloc(1, sizeof(*sub)) : NULL;
    int rc = TT_OK;
    if (!pairs || !members || (color >= 0 && !sub)) {
        rc = tt_error_set(TT_ENOMEM, "comm_split: out of memory");
        goto fail;
    }
    if ((rc = comm_allgather(c, mine, sizeof(mine), pairs))) goto fail;
    if (sub) {
        sub->size = split_members(pairs, c->size, color, members);
        for (int i = 0; i < sub->size; i++)
            if (members[i] == c->rank) sub->rank = i;
        sub->algo = c->algo;
    }
    if ((rc = c->ops->split(c, color, key, members, sub))) goto fail;
    if (sub && (rc = comm_common_alloc(sub))) goto fail;
    for (int i = 0; sub && i < sub->size; i++)
        memcpy(sub->hosts[i], c->hosts[members[i]], COMM_HOST_MAX);
    tt_free(members);
    tt_free(pairs);
    *out = sub;
    return TT_OK;
fail:
    if (sub && sub->ops) comm_free(sub);
    else free(sub);
    tt_free(members);
    tt_free(pairs);
    return rc;
}

int comm_rank(const struct comm *c) { return c->rank; }
int comm_size(const struct comm *c) { return c->size; }
const char *comm_backend_name(const struct comm *c) { return c->ops->name; }

const char *comm_host(const struct comm *c, int rank)
{
    return rank >= 0 && rank < c->size ? c->hosts[rank] : "";
}

void comm_set_algo(struct comm *c, enum comm_algo algo)
{
    TT_ASSERT((unsigned)algo < COMM_ALGO_COUNT);
    c->algo = algo;
}

void comm_stats(const struct comm *c, double *seconds, uint64_t *bytes)
{
    if (seconds) *seconds = c->seconds;
    if (bytes) *bytes = c->bytes;
}

void comm_stats_reset(struct comm *c)
{
    c->seconds = 0;
    c->bytes = 0;
}


/* ---- argument checks ---- */

static int bad_arg(const char *fn, const char *what)
{
    return tt_error_set(TT_EINVAL, "%s: %s", fn, what);
}

static int check_rank(const struct comm *c, int r, const char *fn, const char *what)
{
    if (r >= 0 && r < c->size) return TT_OK;
    return tt_error_set(TT_EINVAL, "%s: %s %d is not a rank (0..%d)", fn, what, r, c->size - 1);
}

/* True if [a, a+na) and [b, b+nb) share a byte. */
static bool overlaps(const void *a, size_t na, const void *b, size_t nb)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return na && nb && x < y + nb && y < x + na;
}

/* send must be recv's own slot (in place) or lie outside recv. */
static int check_gather_bufs(const void *send, size_t send_bytes, const void *recv,
                             size_t recv_total, size_t own_offset, const char *fn)
{
    if (send == (const unsigned char *)recv + own_offset) return TT_OK;
    if (overlaps(send, send_bytes, recv, recv_total))
        return bad_arg(fn, "send overlaps recv without being this rank's own slot");
    return TT_OK;
}

/* ---- timing and byte counts ---- */

static void account(struct comm *c, double t0, uint64_t bytes)
{
    c->seconds += tt_now_s() - t0;
    c->bytes += bytes;
}

static uint64_t sum_except(const size_t *counts, int n, int skip)
{
    uint64_t s = 0;
    for (int r = 0; r < n; r++)
        if (r != skip) s += counts[r];
    return s;
}

/* ---- collectives ---- */

int comm_allgather(struct comm *c, const void *send, size_t bytes_per_rank, void *recv)
{
    TT_ASSERT(c);
    size_t p = (size_t)c->size, b = bytes_per_rank;
    if (b == 0) return TT_OK;
    if (!send || !recv) return bad_arg("comm_allgather", "NULL buffer");
    if (b > SIZE_MAX / p) return tt_error_set(TT_ERANGE, "comm_allgather: size overflows");
    int rc = check_gather_bufs(send, b, recv, b * p, b * (size_t)c->rank, "comm_allgather");
    if (rc) return rc;
    double t0 = tt_now_s();
    rc = c->ops->allgather(c, send, b, recv);
    account(c, t0, 2 * (uint64_t)(p - 1) * b);
    return rc;
}

/* Sum of counts[0..n) into *total, and counts[0..upto) into *offset. */
static int sum_counts(const size_t *counts, int n, int upto, size_t *total, size_t *offset)
{
    size_t s = 0;
    for (int r = 0; r < n; r++) {
        if (r == upto) *offset = s;
        if (counts[r] > SIZE_MAX - s) return TT_ERANGE;
        s += counts[r];
    }
    *total = s;
    return TT_OK;
}

int comm_allgatherv(struct comm *c, const void *send, size_t send_bytes, void *recv,
                    const size_t *recv_bytes)
{
    TT_ASSERT(c);
    const char *fn = "comm_allgatherv";
    if (!recv_bytes) return bad_arg(fn, "NULL recv_bytes");
    size_t total = 0, own = 0;
    if (sum_counts(recv_bytes, c->size, c->rank, &total, &own))
        return tt_error_set(TT_ERANGE, "%s: sizes overflow", fn);
    if (recv_bytes[c->rank] != send_bytes)
        return tt_error_set(TT_EINVAL, "%s: send_bytes %zu differs from recv_bytes[%d] = %zu", fn,
                            send_bytes, c->rank, recv_bytes[c->rank]);
    if (total == 0) return TT_OK;
    if (!recv || (send_bytes && !send)) return bad_arg(fn, "NULL buffer");
    int rc = check_gather_bufs(send, send_bytes, recv, total, own, fn);
    if (rc) return rc;
    double t0 = tt_now_s();
    rc = c->ops->allgatherv(c, send, send_bytes, recv, recv_bytes);
    account(c, t0, (uint64_t)(c->size - 1) * send_bytes + sum_except(recv_bytes, c->size, c->rank));
    return rc;
}

int comm_alltoallv(struct comm *c, const void *send, const size_t *send_bytes, void *recv,
                   const size_t *recv_bytes)
{
    TT_ASSERT(c);
    const char *fn = "comm_alltoallv";
    if (!send_bytes || !recv_bytes) return bad_arg(fn, "NULL size array");
    size_t s_total = 0, r_total = 0, ignored;
    if (sum_counts(send_bytes, c->size, 0, &s_total, &ignored) ||
        sum_counts(recv_bytes, c->size, 0, &r_total, &ignored))
        return tt_error_set(TT_ERANGE, "%s: sizes overflow", fn);
    if (send_bytes[c->rank] != recv_bytes[c->rank])
        return tt_error_set(TT_EINVAL, "%s: this rank sends itself %zu bytes but expects %zu", fn,
                            send_bytes[c->rank], recv_bytes[c->rank]);
    if ((s_total && !send) || (r_total && !recv)) return bad_arg(fn, "NULL buffer");
    if (overlaps(send, s_total, recv, r_total)) return bad_arg(fn, "send overlaps recv");
    double t0 = tt_now_s();
    int rc = c->ops->alltoallv(c, send, send_bytes, recv, recv_bytes);
    account(c, t0, sum_except(send_bytes, c->size, c->rank) +
                       sum_except(recv_bytes, c->size, c->rank));
    return rc;
}

int comm_bcast(struct comm *c, void *buf, size_t bytes, int root)
{
    TT_ASSERT(c);
    int rc = check_rank(c, root, "comm_bcast", "root");
    if (rc || bytes == 0) return rc;
    if (!buf) return bad_arg("comm_bcast", "NULL buffer");
    double t0 = tt_now_s();
    rc = c->ops->bcast(c, buf, bytes, root);
    account(c, t0, c->rank == root ? (uint64_t)(c->size - 1) * bytes : bytes);
    return rc;
}

int comm_gather(struct comm *c, const void *send, size_t bytes, void *recv, int root)
{
    TT_ASSERT(c);
    const char *fn = "comm_gather";
    int rc = check_rank(c, root, fn, "root");
    if (rc || bytes == 0) return rc;
    if (!send) return bad_arg(fn, "NULL send buffer");
    if (c->rank == root) {
        if (!recv) return bad_arg(fn, "NULL recv buffer on the root");
        if (bytes > SIZE_MAX / (size_t)c->size)
            return tt_error_set(TT_ERANGE, "%s: size overflows", fn);
        if (overlaps(send, bytes, recv, bytes * (size_t)c->size))
            return bad_arg(fn, "send overlaps recv");
    }
    double t0 = tt_now_s();
    rc = c->ops->gather(c, send, bytes, recv, root);
    account(c, t0, c->rank == root ? (uint64_t)(c->size - 1) * bytes : bytes);
    return rc;
}

int comm_barrier(struct comm *c)
{
    TT_ASSERT(c);
    double t0 = tt_now_s();
    int rc = c->ops->barrier(c);
    account(c, t0, 0);
    return rc;
}

int comm_all_true(struct comm *c, bool mine, bool *all)
{
    const int n = comm_size(c);
    uint8_t *each = malloc((size_t)n), b = mine;
    *all = false;
    if (!each) return tt_error_set(TT_ENOMEM, "out of memory for %d ranks' answers", n);
    int err = comm_allgather(c, &b, 1, each);
    *all = !err;
    for (int r = 0; r < n && *all; r++) *all = each[r] != 0;
    free(each);
    return err;
}

/* ---- point to point ---- */

static int check_p2p(const struct comm *c, const void *buf, size_t bytes, int peer, int tag,
                     const char *fn)
{
    int rc = check_rank(c, peer, fn, "peer");
    if (rc) return rc;
    if (peer == c->rank) return bad_arg(fn, "a rank cannot message itself");
    if (tag < 0 || tag > COMM_TAG_MAX)
        return tt_error_set(TT_EINVAL, "%s: tag %d is outside 0..%d", fn, tag, COMM_TAG_MAX);
    if (bytes && !buf) return bad_arg(fn, "NULL buffer");
    return TT_OK;
}

int comm_send(struct comm *c, const void *buf, size_t bytes, int dst, int tag)
{
    TT_ASSERT(c);
    int rc = check_p2p(c, buf, bytes, dst, tag, "comm_send");
    if (rc) return rc;
    double t0 = tt_now_s();
    rc = c->ops->send(c, buf, bytes, dst, tag);
    account(c, t0, bytes);
    return rc;
}

int comm_recv(struct comm *c, void *buf, size_t bytes, int src, int tag)
{
    TT_ASSERT(c);
    int rc = check_p2p(c, buf, bytes, src, tag, "comm_recv");
    if (rc) return rc;
    double t0 = tt_now_s();
    rc = c->ops->recv(c, buf, bytes, src, tag);
    account(c, t0, bytes);
    return rc;
}

/* ---- all-reduce ---- */

static enum comm_algo choose_algo(const struct comm *c, int64_t n, enum comm_wire wire)
{
    if (c->algo != COMM_ALGO_AUTO) return c->algo;
    size_t e = comm_wire_bytes(wire, n), p = (size_t)c->size;
    if (e < RSAG_MIN_BYTES) return COMM_ALGO_GATHER;
    /* Bytes into each rank: GATHER (p-1)E; RSAG (p-1)/p (E + 4n). */
    return (e + 4 * (size_t)n) < p * e ? COMM_ALGO_RSAG : COMM_ALGO_GATHER;
}

static size_t align_up(size_t x) { return (x + TT_ALIGN - 1) / TT_ALIGN * TT_ALIGN; }

/* Floats [lo, hi) of n that rank r sums in RSAG. */
static void rsag_slice(const struct comm *c, int64_t n, int r, int64_t *lo, int64_t *hi)
{
    tt_split_range(n, r, c->size, Q8_BLOCK, lo, hi);
}

static size_t scratch_need(const struct comm *c, int64_t n, enum comm_wire wire)
{
    size_t e = comm_wire_bytes(wire, n), p = (size_t)c->size;
    if (choose_algo(c, n, wire) == COMM_ALGO_GATHER) return p * e;
    int64_t lo, hi;
    rsag_slice(c, n, c->rank, &lo, &hi);
    return align_up(e) + p * comm_wire_bytes(wire, hi - lo);
}

static int scratch_grow(struct comm *c, size_t bytes)
{
    if (bytes <= c->scratch_bytes) return TT_OK;
    unsigned char *p = tt_alloc(bytes);
    if (!p) return tt_error_set(TT_ENOMEM, "comm: out of memory for %zu bytes of scratch", bytes);
    tt_free(c->scratch);
    c->scratch = p;
    c->scratch_bytes = bytes;
    return TT_OK;
}

/* Largest n with p * 4n (+ slack) bytes representable. */
static int check_n(const struct comm *c, int64_t n, const char *fn)
{
    if (n < 0) return tt_error_set(TT_EINVAL, "%s: n = %lld is negative", fn, (long long)n);
    if ((uint64_t)n > (SIZE_MAX / 8 - TT_ALIGN * 4) / (size_t)c->size)
        return tt_error_set(TT_ERANGE, "%s: n = %lld is too large", fn, (long long)n);
    return TT_OK;
}

int comm_reserve(struct comm *c, int64_t n_floats)
{
    TT_ASSERT(c);
    int rc = check_n(c, n_floats, "comm_reserve");
    if (rc || c->size == 1) return rc;
    size_t need = 0;
    for (int w = 0; w < COMM_WIRE_COUNT; w++)
        need = TT_MAX(need, scratch_need(c, n_floats, (enum comm_wire)w));
    return scratch_grow(c, need);
}

/* Slots of e bytes keep F32 and F16 elements aligned (e is a multiple of
 * their size); Q8 scales are read with memcpy. */
static int allreduce_gather(struct comm *c, float *buf, int64_t n, enum comm_wire wire)
{
    size_t e = comm_wire_bytes(wire, n);
    unsigned char *own = c->scratch + (size_t)c->rank * e;
    wire_encode(wire, buf, n, own);
    int rc = c->ops->allgather(c, own, e, c->scratch); /* in place */
    if (rc) return rc;
    c->bytes += 2 * (uint64_t)(c->size - 1) * e;
    for (int r = 0; r < c->size; r++)
        wire_decode_add(wire, c->scratch + (size_t)r * e, n, buf, r == 0);
    return TT_OK;
}

static int allreduce_rsag(struct comm *c, float *buf, int64_t n, enum comm_wire wire)
{
    int p = c->size, me = c->rank;
    int64_t lo, hi, mlo, mhi;
    rsag_slice(c, n, me, &mlo, &mhi);
    size_t mine = comm_wire_bytes(wire, mhi - mlo);
    unsigned char *enc = c->scratch, *in = c->scratch + align_up(comm_wire_bytes(wire, n));
    wire_encode(wire, buf, n, enc);
    for (int r = 0; r < p; r++) {
        rsag_slice(c, n, r, &lo, &hi);
        c->counts_a[r] = comm_wire_bytes(wire, hi - lo); /* what goes to r */
        c->counts_b[r] = mine;                           /* what comes from r */
    }
    int rc = c->ops->alltoallv(c, enc, c->counts_a, in, c->counts_b);
    if (rc) return rc;
    c->bytes += sum_except(c->counts_a, p, me) + sum_except(c->counts_b, p, me);
    for (int r = 0; r < p; r++)
        wire_decode_add(wire, in + (size_t)r * mine, mhi - mlo, buf + mlo, r == 0);
    for (int r = 0; r < p; r++) {
        rsag_slice(c, n, r, &lo, &hi);
        c->counts_a[r] = 4 * (size_t)(hi - lo);
    }
    rc = c->ops->allgatherv(c, buf + mlo, c->counts_a[me], buf, c->counts_a);
    if (rc) return rc;
    c->bytes += (uint64_t)(p - 1) * c->counts_a[me] + sum_except(c->counts_a, p, me);
    return TT_OK;
}

int comm_allreduce_sum(struct comm *c, float *buf, int64_t n, enum comm_wire wire)
{
    TT_ASSERT(c);
    const char *fn = "comm_allreduce_sum";
    if ((unsigned)wire >= COMM_WIRE_COUNT)
        return tt_error_set(TT_EINVAL, "%s: unknown wire encoding %d", fn, (int)wire);
    int rc = check_n(c, n, fn);
    if (rc || n == 0) return rc;
    if (!buf) return bad_arg(fn, "NULL buffer");
    if (c->size == 1) return TT_OK;
    double t0 = tt_now_s();
    if ((rc = scratch_grow(c, scratch_need(c, n, wire)))) return rc;
    if (choose_algo(c, n, wire) == COMM_ALGO_GATHER) rc = allreduce_gather(c, buf, n, wire);
    else rc = allreduce_rsag(c, buf, n, wire);
    account(c, t0, 0);
    return rc;
}
