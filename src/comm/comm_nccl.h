/*
 * comm_nccl: NCCL collectives on device buffers, for ranks that each drive
 * their own GPU. It sits beside struct comm, not inside it: struct comm moves
 * host bytes, this moves device bytes on a CUDA stream, and it is bootstrapped
 * over a struct comm (rank 0 makes the NCCL unique id and broadcasts it).
 *
 * The library is loaded with dlopen (libnccl.so.2; TT_NCCL_LIB names another
 * file), so a build needs no NCCL header or library and a machine without
 * NCCL gets TT_EUNSUPPORTED with a message, never a link error. CUDA streams
 * are passed as `void *` (a cudaStream_t) for the same reason.
 *
 * Rules:
 *   1. One rank per GPU: NCCL refuses two ranks of one communicator on the
 *      same device ("Duplicate GPU"); several ranks sharing one GPU use the
 *      host-staged all-reduce of struct comm instead.
 *   2. The CUDA device of the rank must be current on the calling thread
 *      (cudaSetDevice) for comm_nccl_init and every collective.
 *   3. Collectives are queued on the given stream and return before they run;
 *      they may be captured in a CUDA graph. Every rank calls them in the same
 *      order with the same sizes (SPMD), as with struct comm.
 *   4. NCCL_NVLS_ENABLE is set to 0 when unset, before NCCL reads it: NVLink
 *      multicast is kept off (it can take a shared host's GPUs down).
 *   5. Every NCCL call is checked; a failure returns TT_ECOMM (TT_EDEVICE for
 *      a CUDA error inside NCCL) with the call site, NCCL's error string and
 *      its last error message.
 * A peer that dies mid-collective is not detected here: the job's launcher
 * (mpirun) ends every rank, as for struct comm's MPI backend.
 */
#ifndef TT_COMM_NCCL_H
#define TT_COMM_NCCL_H

#include "comm.h"

struct comm_nccl; /* opaque */

/* Load the NCCL library if it is not loaded yet. Returns 0, or
 * TT_EUNSUPPORTED with the reason (library missing or too old). Local: no
 * communication; a job decides on NCCL only if every rank could load it. */
int comm_nccl_load(void);
/* NCCL's version as major*10000 + minor*100 + patch (after a successful
 * load), or 0. */
int comm_nccl_version(void);

/* Collective over every rank of c: create the NCCL communicator of the same
 * ranks (rank 0 makes the unique id, comm_bcast carries it). The rank's GPU
 * must be current (rule 2). Errors: TT_EUNSUPPORTED (no library), TT_ECOMM
 * (the broadcast or NCCL's set-up failed), TT_ENOMEM. */
int comm_nccl_init(struct comm_nccl **out, struct comm *c);
/* Release the communicator (NULL is fine). Not a collective. */
void comm_nccl_free(struct comm_nccl *n);

int comm_nccl_rank(const struct comm_nccl *n);
int comm_nccl_size(const struct comm_nccl *n);

/* In-place sum of the device floats d_buf[0..n_floats) over all ranks,
 * queued on `stream`. Errors: TT_EINVAL (n_floats < 0, NULL buffer with a
 * non-zero size), TT_ECOMM/TT_EDEVICE from NCCL. */
int comm_nccl_allreduce_sum(struct comm_nccl *n, float *d_buf, int64_t n_floats, void *stream);
/* d_recv[r*bytes_per_rank ..] = rank r's d_send (device memory), queued on
 * `stream`; d_send may be this rank's own slot of d_recv. */
int comm_nccl_allgather(struct comm_nccl *n, const void *d_send, size_t bytes_per_rank, void *d_recv,
                        void *stream);

#endif
