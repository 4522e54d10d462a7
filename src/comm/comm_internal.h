/*
 * comm_internal.h: what comm.c shares with the backend files.
 *
 * A backend fills c->ops, c->impl, c->rank and c->size. Its functions receive
 * arguments that comm.c has already checked: ranks, roots and tags in range,
 * non-NULL buffers wherever the size is non-zero, size sums that fit in
 * size_t, and for allgather/allgatherv a send that is either this rank's own
 * slot of recv (in place) or disjoint from it. Collectives whose every size is
 * zero never reach a backend; point-to-point calls of zero bytes do (an empty
 * message is still a message). A backend returns TT_OK or a negative TT_E*
 * code with tt_error_set() detail.
 */
#ifndef TT_COMM_INTERNAL_H
#define TT_COMM_INTERNAL_H

#include "comm.h"

struct comm_ops {
    const char *name;
    int (*barrier)(struct comm *c);
    int (*bcast)(struct comm *c, void *buf, size_t bytes, int root);
    int (*gather)(struct comm *c, const void *send, size_t bytes, void *recv, int root);
    int (*allgather)(struct comm *c, const void *send, size_t bytes, void *recv);
    int (*allgatherv)(struct comm *c, const void *send, size_t send_bytes, void *recv,
                      const size_t *recv_bytes);
    /* Rank r's send slice for rank j starts at sum(send_bytes[0..j)) and is
     * send_bytes[j] long; what rank j sends here lands at sum(recv_bytes[0..j))
     * of recv. send and recv do not overlap. */
    int (*alltoallv)(struct comm *c, const void *send, const size_t *send_bytes, void *recv,
                     const size_t *recv_bytes);
    int (*send)(struct comm *c, const void *buf, size_t bytes, int dst, int tag);
    int (*recv)(struct comm *c, void *buf, size_t bytes, int src, int tag);
    /* Collective over c (comm_split): fill out->ops and out->impl for the
     * ranks of `color`; comm.c has set out->rank and out->size from the
     * ranks' (color, key) pairs, and members[0..out->size) lists their
     * ranks in c in the new order. Ranks with color COMM_COLOR_NONE take
     * part with out == NULL. */
    int (*split)(struct comm *c, int color, int key, const int *members, struct comm *out);
    /* Release impl; MPI_Finalize for the last MPI communicator. */
    void (*close)(struct comm *c);
    /* End every rank (MPI), or mark the group down (local). */
    void (*abort)(struct comm *c, int code);
};

struct comm {
    const struct comm_ops *ops;
    void *impl; /* the backend's state, owned by it */
    int rank, size;
    enum comm_algo algo;
    char (*hosts)[COMM_HOST_MAX]; /* [size] */
    /* Per-rank size arrays for the all-reduce, [size] each. */
    size_t *counts_a, *counts_b;
    /* All-reduce scratch, grown on demand (comm_reserve). */
    unsigned char *scratch;
    size_t scratch_bytes;
    double seconds;
    uint64_t bytes;
};

/* Allocate the common arrays of a communicator whose backend has set size;
 * host names are left empty. comm_free() releases them. */
int comm_common_alloc(struct comm *c);
/* Fill every rank's host name with this machine's (local groups). */
void comm_hosts_fill_local(struct comm *c);

/* Backend entry points (comm_local_group is public). */
#ifdef TT_HAVE_MPI
int comm_mpi_open(struct comm *c, int *argc, char ***argv);
#endif

#endif
