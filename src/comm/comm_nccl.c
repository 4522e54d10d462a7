/*
 * comm_nccl.c: NCCL through dlopen (see comm_nccl.h for the contract).
 *
 * The few entry points tutti uses are declared here with NCCL's ABI (an int
 * result code, opaque pointers for communicators and streams, the 128-byte
 * unique id passed by value) so that no nccl.h is needed to build. Values
 * of NCCL's enums used below are fixed by its public API since 2.0:
 * ncclSum = 0, ncclInt8 = 0, ncclFloat32 = 7, ncclSuccess = 0,
 * ncclUnhandledCudaError = 1.
 */
#include "comm_nccl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NCCL_ID_BYTES 128
#define NCCL_SUCCESS 0
#define NCCL_UNHANDLED_CUDA_ERROR 1
#define NCCL_RED_SUM 0
#define NCCL_INT8 0
#define NCCL_FLOAT32 7
#define NCCL_VERSION_MIN 21000 /* 2.10: graph capture, ncclGetLastError via dlsym when present */

struct nccl_id {
    char internal[NCCL_ID_BYTES];
};

/* The entry points, filled once by comm_nccl_load. */
static struct {
    int (*get_version)(int *version);
    int (*get_unique_id)(struct nccl_id *id);
    int (*comm_init_rank)(void **comm, int nranks, struct nccl_id id, int rank);
    int (*comm_destroy)(void *comm);
    int (*all_reduce)(const void *send, void *recv, size_t count, int type, int op, void *comm,
                      void *stream);
    int (*all_gather)(const void *send, void *recv, size_t count, int type, void *comm, void *stream);
    const char *(*get_error_string)(int result);
    const char *(*get_last_error)(void *comm); /* NULL on NCCL < 2.13 */
    int version;
    bool loaded;
} nccl_api;

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

struct comm_nccl {
    void *comm; /* ncclComm_t */
    int rank, size;
};

/* The check every NCCL call goes through: 0, or a TT_E* code with the call
 * site, NCCL's string for the result and its last error message. */
static int nccl_fail(int res, void *comm, const char *call, const char *file, int line)
{
    const char *what = nccl_api.get_error_string ? nccl_api.get_error_string(res) : "NCCL error";
    const char *last = nccl_api.get_last_error ? nccl_api.get_last_error(comm) : NULL;
    return tt_error_set(res == NCCL_UNHANDLED_CUDA_ERROR ? TT_EDEVICE : TT_ECOMM, "%s:%d: %s failed: %s%s%s",
                        file, line, call, what ? what : "NCCL error", last && *last ? ": " : "",
                        last && *last ? last : "");
}
#define NCCL_CHECK(comm, call)                                                     \
    do {                                                                           \
        int nccl_res_ = (call);                                                    \
        if (nccl_res_ != NCCL_SUCCESS) return nccl_fail(nccl_res_, (comm), #call, __FILE__, __LINE__); \
    } while (0)

static int load_locked(void)
{
    if (nccl_api.loaded) return 0;
    /* rule 4: NVLink multicast off unless the user chose otherwise */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    const char *env = getenv("TT_NCCL_LIB");
    const bool named = env && *env; /* a named library is the only one tried */
    const char *const names[] = { named ? env : "libnccl.so.2", "libnccl.so" };
    void *h = NULL;
    const char *why = "";
    for (size_t i = 0; i < (named ? 1 : TT_ARRAY_LEN(names)) && !h; i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) why = dlerror();
    }
    if (!h)
        return tt_error_set(TT_EUNSUPPORTED, "cannot load NCCL (%s); set TT_NCCL_LIB to the path of "
                            "libnccl.so.2 or add its folder to LD_LIBRARY_PATH", why ? why : "not found");
    /* dlsym returns a data pointer; POSIX guarantees it converts to the
     * function's type, written through void ** to keep ISO C quiet. */
    *(void **)&nccl_api.get_version = dlsym(h, "ncclGetVersion");
    *(void **)&nccl_api.get_unique_id = dlsym(h, "ncclGetUniqueId");
    *(void **)&nccl_api.comm_init_rank = dlsym(h, "ncclCommInitRank");
    *(void **)&nccl_api.comm_destroy = dlsym(h, "ncclCommDestroy");
    *(void **)&nccl_api.all_reduce = dlsym(h, "ncclAllReduce");
    *(void **)&nccl_api.all_gather = dlsym(h, "ncclAllGather");
    *(void **)&nccl_api.get_error_string = dlsym(h, "ncclGetErrorString");
    *(void **)&nccl_api.get_last_error = dlsym(h, "ncclGetLastError");
    int version = 0;
    if (!nccl_api.get_version || !nccl_api.get_unique_id || !nccl_api.comm_init_rank || !nccl_api.comm_destroy ||
        !nccl_api.all_reduce || !nccl_api.all_gather || !nccl_api.get_error_string ||
        nccl_api.get_version(&version) != NCCL_SUCCESS || version < NCCL_VERSION_MIN) {
        dlclose(h);
        memset(&nccl_api, 0, sizeof(nccl_api));
        return tt_error_set(TT_EUNSUPPORTED, "the NCCL library found (version code %d) is older than 2.10 "
                            "or lacks the functions tutti uses", version);
    }
    nccl_api.version = version;
    nccl_api.loaded = true;
    return 0;
}

int comm_nccl_load(void)
{
    pthread_mutex_lock(&load_lock);
    int err = load_locked();
    pthread_mutex_unlock(&load_lock);
    return err;
}

int comm_nccl_version(void) { return nccl_api.loaded ? nccl_api.version : 0; }

static int create_comm(struct comm_nccl *n, struct comm *c)
{
    struct nccl_id id;
    memset(&id, 0, sizeof(id));
    int err = 0;
    if (n->rank == 0) {
        int res = nccl_api.get_unique_id(&id);
        if (res != NCCL_SUCCESS) err = nccl_fail(res, NULL, "ncclGetUniqueId", __FILE__, __LINE__);
    }
    /* Every rank must reach the broadcast, so rank 0 sends a flag even when
     * it failed, and the others learn of it instead of waiting forever. */
    struct { int32_t ok; struct nccl_id id; } msg = { err == 0, id };
    int berr = comm_bcast(c, &msg, sizeof(msg), 0);
    if (berr) return berr;
    if (!msg.ok) return err ? err : tt_error_set(TT_ECOMM, "rank 0 could not create the NCCL unique id");
    NCCL_CHECK(NULL, nccl_api.comm_init_rank(&n->comm, n->size, msg.id, n->rank));
    return 0;
}

int comm_nccl_init(struct comm_nccl **out, struct comm *c)
{
    *out = NULL;
    TT_ASSERT(c);
    int err = comm_nccl_load();
    if (err) return err;
    struct comm_nccl *n = calloc(1, sizeof(*n));
    if (!n) return tt_error_set(TT_ENOMEM, "out of memory");
    n->rank = comm_rank(c);
    n->size = comm_size(c);
    err = create_comm(n, c);
    if (err) {
        comm_nccl_free(n);
        return err;
    }
    *out = n;
    return 0;
}

void comm_nccl_free(struct comm_nccl *n)
{
    if (!n) return;
    if (n->comm) {
        int res = nccl_api.comm_destroy(n->comm);
        if (res != NCCL_SUCCESS) tt_warn("ncclCommDestroy: %s", nccl_api.get_error_string(res));
    }
    free(n);
}

int comm_nccl_rank(const struct comm_nccl *n) { return n->rank; }
int comm_nccl_size(const struct comm_nccl *n) { return n->size; }

int comm_nccl_allreduce_sum(struct comm_nccl *n, float *d_buf, int64_t n_floats, void *stream)
{
    if (n_floats < 0 || (!d_buf && n_floats > 0))
        return tt_error_set(TT_EINVAL, "NCCL all-reduce of %lld floats at %p", (long long)n_floats, (void *)d_buf);
    if (n_floats == 0) return 0;
    NCCL_CHECK(n->comm, nccl_api.all_reduce(d_buf, d_buf, (size_t)n_floats, NCCL_FLOAT32, NCCL_RED_SUM, n->comm, stream));
    return 0;
}

int comm_nccl_allgather(struct comm_nccl *n, const void *d_send, size_t bytes_per_rank, void *d_recv,
                        void *stream)
{
    if (bytes_per_rank && (!d_send || !d_recv))
        return tt_error_set(TT_EINVAL, "NCCL all-gather of %zu bytes with a NULL buffer", bytes_per_rank);
    if (bytes_per_rank == 0) return 0;
    NCCL_CHECK(n->comm, nccl_api.all_gather(d_send, d_recv, bytes_per_rank, NCCL_INT8, n->comm, stream));
    return 0;
}
