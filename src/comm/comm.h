/*
 * comm: the communicator of a cluster of ranks (one process, or one thread in
 * tests, per device).
 *
 * Backends. A communicator is a small table of byte-moving primitives
 * (struct comm_ops in comm_internal.h), one file per implementation:
 *   - comm_local.c: ranks that are threads of one process, talking through
 *     shared memory. comm_init(COMM_BACKEND_LOCAL) gives one rank;
 *     comm_local_group() gives n ranks for tests of multi-rank logic, each to
 *     be driven by its own thread. It is also the checking twin of the MPI
 *     backend: it verifies that all ranks called the same collective with
 *     matching sizes and roots, and reports a mismatch (TT_EINVAL) where MPI
 *     would truncate, corrupt or hang.
 *   - comm_mpi.c (built with MPI=1): processes launched by mpirun; Open MPI
 *     picks shared memory, TCP or RDMA (UCX) underneath.
 * comm.c holds what does not depend on the backend: argument checks, the
 * wire encodings, the all-reduce algorithms, statistics and host names.
 *
 * Calling rules. Every rank calls each collective in the same order with the
 * same sizes, root and wire (SPMD). A struct comm is used by one thread at a
 * time. Sizes are byte counts in size_t; any size works, the MPI backend
 * splits transfers larger than its chunk limit (TT_COMM_CHUNK_BYTES, default
 * 1 GiB) because MPI counts are int. A call whose arguments are wrong on this
 * rank (NULL buffer with a non-zero size, n < 0, root/dst/src/tag out of
 * range, partially overlapping buffers, a wire value out of range) returns
 * TT_EINVAL before communicating; if only some ranks reject their arguments
 * the others wait for them (the local backend gives up after
 * TT_COMM_TIMEOUT_S, default 300 s; MPI waits). After TT_ECOMM the
 * communicator is broken: shut down.
 *
 * All-reduce determinism. comm_allreduce_sum leaves the SAME bits on every
 * rank, and those bits depend only on the ranks' inputs, never on the
 * backend, the algorithm or the chunking: the result is
 *     y = (((d(x_0) + d(x_1)) + d(x_2)) + ... + d(x_{p-1}))     in float,
 * summed left to right in rank order, where d(x_r) = decode(encode(x_r)) is
 * rank r's contribution after its trip over the wire (exact for F32).
 * Two algorithms compute it (comm_set_algo): GATHER, every rank gathers every
 * encoded contribution and sums them (one round, (p-1)*E bytes in per rank);
 * RSAG, a reduce-scatter of the encoded contributions (each rank sums one
 * 1/p slice) followed by an all-gather of the F32 sums (two rounds,
 * (p-1)/p*(E + 4n) bytes in per rank). AUTO picks RSAG for vectors of
 * 64 KiB or more on the wire when it moves fewer bytes.
 *
 * Wire encodings of an all-reduce contribution (COMM_WIRE_*), n floats:
 *   F32: 4n bytes, exact. The result equals the rank-order float sum.
 *   F16: 2n bytes, IEEE half, round to nearest even. Per element
 *        |d(x) - x| <= 2^-11 |x| (|x| >= 2^-14; absolute 2^-25 below).
 *        Values above 65504 become infinity.
 *   Q8:  blocks of 32 values: a float scale s = max|x|/127, then 32 int8
 *        q = round(x/s); 36 bytes per block (1.125 bytes/value), the last
 *        block shorter. Per element |d(x) - x| <= max|x over its block|/254.
 *        A NaN or infinity turns its whole block into NaN.
 * Measured relative RMS error of the all-reduce result, ||y - exact|| /
 * ||exact||, exact = the sum in double, over 2^18 elements per rank
 * (tests/test_comm.c, case wire_error, prints these):
 *                               p=2        p=4        p=8
 *   F16, N(0,1) activations   2.1e-4     2.1e-4     2.1e-4
 *   F16, with outliers        2.0e-4     2.1e-4     2.0e-4
 *   Q8,  N(0,1) activations   5.3e-3     5.4e-3     5.4e-3
 *   Q8,  with outliers        1.2e-2     1.2e-2     1.2e-2
 * ("with outliers": N(0,1), and every 64th channel 30x larger, as the few
 * huge channels of LLM hidden states; they widen the Q8 steps of their
 * blocks.) The error does not grow with p: the ranks' rounding errors are
 * independent and add up like the contributions themselves. The tests bound
 * every element by the sum of the per-contribution bounds above, and the
 * relative RMS error by 5e-4 (F16) and 2e-2 (Q8). Cost on one core (scalar
 * C): encoding ~1.2 ns (F16) and ~1.4 ns (Q8) per value, decoding and adding
 * ~0.5 ns per value and rank; worth it where the link, not memory, limits.
 *
 * Failure of a rank. Local backend: a rank that calls comm_free() or
 * comm_abort() makes every other rank's pending and later calls return
 * TT_ECOMM; a rank that never arrives makes the others time out with
 * TT_ECOMM after TT_COMM_TIMEOUT_S seconds (0 = wait forever). MPI backend:
 * errors are returned (MPI_ERRORS_RETURN) as TT_ECOMM with MPI's message and
 * the call site. A rank that dies (killed, crashed, or exit() without
 * comm_free, as cli_die does) is handled by Open MPI's launcher: mpirun
 * notices the lost process, kills every other rank of the job (blocked
 * collectives included) and exits non-zero, in about a second. A rank that
 * fails alone and calls comm_free while the others wait in a collective
 * would hang in MPI_Finalize; comm_free prevents it (see there) and
 * comm_abort is the fast way out. Survivors get no error code to recover
 * from (that would need ULFM): the job ends. tests/comm_mpi_test.sh checks
 * all four ways (cases rank_dies_*).
 */
#ifndef TT_COMM_H
#define TT_COMM_H

#include "../base/base.h"

#define COMM_HOST_MAX 64    /* bytes of a host name, NUL included */
#define COMM_TAG_MAX 32767  /* user tags are 0..COMM_TAG_MAX (MPI's minimum TAG_UB) */
#define COMM_LOCAL_MAX 1024 /* ranks of one local group */

enum comm_backend {
    COMM_BACKEND_AUTO,  /* MPI if built in and launched by mpirun, else LOCAL */
    COMM_BACKEND_LOCAL, /* one rank in this process */
    COMM_BACKEND_MPI,
    COMM_BACKEND_COUNT
};

/* How an all-reduce contribution is encoded on the wire (see above). */
enum comm_wire { COMM_WIRE_F32, COMM_WIRE_F16, COMM_WIRE_Q8, COMM_WIRE_COUNT };

/* All-reduce algorithm; the result bits are the same whichever runs. */
enum comm_algo { COMM_ALGO_AUTO, COMM_ALGO_GATHER, COMM_ALGO_RSAG, COMM_ALGO_COUNT };

struct comm; /* opaque */

/* ---- setup ---- */

/* Create this process's communicator. AUTO: MPI if compiled in and the
 * process was launched by mpirun (OMPI_COMM_WORLD_SIZE, PMI_SIZE or
 * PMIX_RANK in the environment), else LOCAL with one rank. argc/argv may be
 * NULL; MPI may remove its own options from them. Host names are exchanged
 * here (a collective: every rank must call it).
 * Errors: TT_EUNSUPPORTED (MPI asked for but not built in, or MPI already
 * finalized in this process), TT_ECOMM (MPI failed), TT_ENOMEM. */
int comm_init(struct comm **out, enum comm_backend backend, int *argc, char ***argv);

/* Create n local communicators (ranks 0..n-1 in comms[0..n-1]) that talk
 * through shared memory. Each must be driven by its own thread: a collective
 * returns when all n ranks have entered it. Each is freed with comm_free();
 * the shared state goes with the last. Errors: TT_EINVAL (n < 1),
 * TT_ERANGE (n > COMM_LOCAL_MAX), TT_ENOMEM. */
int comm_local_group(struct comm **comms, int n);

/* Release c (NULL is fine). All ranks free together: MPI: a barrier, then
 * the last MPI communicator of the process calls MPI_Finalize if comm_init
 * called MPI_Init; if the other ranks do not come within
 * TT_COMM_LEAVE_TIMEOUT_S seconds (default 30; they are stuck waiting for
 * this rank), MPI_Abort ends the job instead of letting it hang. Local group:
 * the other ranks' pending and later calls fail with TT_ECOMM. */
void comm_free(struct comm *c);
/* A rank that fails alone (its file is missing, out of memory) and cannot
 * go on: MPI: MPI_Abort, mpirun ends every rank and exits non-zero, and this
 * does not return. Local group: the group goes down (other ranks' calls
 * return TT_ECOMM) and it returns; free c as usual. */
void comm_abort(struct comm *c, int code);

/* Split c into disjoint communicators, as MPI_Comm_split: the ranks that
 * pass the same color >= 0 form one, ranked by (key, rank in c); a rank that
 * passes COMM_COLOR_NONE gets none (*out = NULL). A collective over c: every
 * rank calls it, in the same order as c's other collectives. The new
 * communicator has its own traffic (its collectives and messages never
 * match c's), the same backend, c's all-reduce algorithm and the members'
 * host names; it is freed with comm_free, by all its members together, and
 * may outlive c. Errors: TT_EINVAL (color < COMM_COLOR_NONE), TT_ENOMEM,
 * TT_ECOMM; on error *out is NULL. */
#define COMM_COLOR_NONE (-1)
int comm_split(struct comm *c, int color, int key, struct comm **out);

int comm_rank(const struct comm *c);
int comm_size(const struct comm *c);
const char *comm_backend_name(const struct comm *c); /* "local" or "mpi" */
/* Host name of a rank (exchanged at init); "" for a rank out of range. */
const char *comm_host(const struct comm *c, int rank);

/* Allocate now the scratch an all-reduce of up to n_floats needs, so that
 * later calls of that size do not allocate (the per-token path). Without it
 * the scratch grows on first use. Errors: TT_EINVAL, TT_ENOMEM. */
int comm_reserve(struct comm *c, int64_t n_floats);
/* Choose the all-reduce algorithm (all ranks alike); for benchmarks and tests. */
void comm_set_algo(struct comm *c, enum comm_algo algo);

const char *comm_wire_name(enum comm_wire wire); /* "f32", "f16", "q8" */
/* Bytes that n floats take on the wire in this encoding (for cost models). */
size_t comm_wire_bytes(enum comm_wire wire, int64_t n);

/* ---- collectives: every rank calls, same order, same sizes ---- */

/* In-place sum of buf[0..n) over all ranks, contributions encoded as `wire`;
 * every rank ends with the same bits (see the header comment). With one
 * rank, buf is left as it is. */
int comm_allreduce_sum(struct comm *c, float *buf, int64_t n, enum comm_wire wire);
/* recv[r*bytes_per_rank ..] = rank r's send. send may be this rank's own slot
 * of recv (in place); other overlaps are TT_EINVAL. */
int comm_allgather(struct comm *c, const void *send, size_t bytes_per_rank, void *recv);
/* Like comm_allgather with per-rank sizes, packed in rank order: rank r's
 * bytes start at sum(recv_bytes[0..r)). recv_bytes must be the same array on
 * every rank and recv_bytes[rank] == send_bytes. In place allowed as above. */
int comm_allgatherv(struct comm *c, const void *send, size_t send_bytes, void *recv,
                    const size_t *recv_bytes);
/* Personalized exchange (MoE token routing): this rank's slice for rank j
 * starts at sum(send_bytes[0..j)) of send and is send_bytes[j] long; what
 * rank j sends here lands at sum(recv_bytes[0..j)) of recv. recv_bytes[j]
 * must equal rank j's send_bytes[this rank] (the local backend checks it);
 * send and recv must not overlap. Sizes may be zero. */
int comm_alltoallv(struct comm *c, const void *send, const size_t *send_bytes, void *recv,
                   const size_t *recv_bytes);
/* buf on root is copied to buf on every rank. */
int comm_bcast(struct comm *c, void *buf, size_t bytes, int root);
/* recv[r*bytes ..] on root = rank r's send; recv is ignored (may be NULL) on
 * other ranks. */
int comm_gather(struct comm *c, const void *send, size_t bytes, void *recv, int root);
int comm_barrier(struct comm *c);
/* *all = whether `mine` holds on every rank (an all-gather of one byte
 * each: every rank learns the same answer). */
int comm_all_true(struct comm *c, bool mine, bool *all);

/* ---- point to point ---- */

/* Send bytes to rank dst (not to itself) with a tag in 0..COMM_TAG_MAX.
 * Messages between two ranks with the same tag arrive in order. May return
 * before the receiver has the data (buffered), or wait for it (MPI, large
 * messages): never rely on either. */
int comm_send(struct comm *c, const void *buf, size_t bytes, int dst, int tag);
/* Receive exactly `bytes` from src with `tag`; a message of another size is
 * TT_ECOMM (the sizes must agree). */
int comm_recv(struct comm *c, void *buf, size_t bytes, int src, int tag);

/* ---- statistics ---- */

/* Seconds spent inside comm calls (collectives and point to point, wire
 * encoding included) and payload bytes this rank sent plus received, counted
 * as if every transfer went directly between two ranks (the backend's trees
 * and rings may move more). */
void comm_stats(const struct comm *c, double *seconds, uint64_t *bytes);
void comm_stats_reset(struct comm *c);

#endif
