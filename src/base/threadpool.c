/*
 * threadpool.c: a fork-join pool for data-parallel kernels.
 *
 * Invariants:
 *  1. One job at a time; tt_pool_run() is called from one thread (the owner).
 *  2. `generation` increases by one per job; a worker runs the job when it sees
 *     a generation it has not run yet, then increments `n_done`.
 *  3. The owner runs share 0 itself and waits until n_done == n_threads - 1.
 * Workers spin on the generation counter for a short while (decode issues a
 * job every few microseconds) and then sleep on a condition variable, so an
 * idle pool costs no CPU. Past POOL_SPIN_PURE iterations every spinning
 * thread (workers and the owner waiting for them) yields the core now and
 * then: when other programs share the cores, a pure spin would hold the CPU
 * that the thread it waits for needs, and every job would wait a whole
 * scheduler slice for a descheduled thread.
 */
#include "base.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#define POOL_SPIN_ITERS 200000
#define POOL_SPIN_PURE 1024   /* spins before the first yield (~40 us of pause) */
#define POOL_YIELD_EVERY 16   /* after that, one sched_yield per this many spins */
#define POOL_THREADS_MAX 512

struct tt_pool {
    int n_threads;
    pthread_t *threads;
    tt_pool_job job;
    void *ctx;
    atomic_uint generation;
    atomic_int n_done;
    atomic_int stop;
    atomic_int n_sleeping;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

/* One iteration of a wait loop that has spun `spins` times so far. */
static inline void spin_once(unsigned spins)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if (spins > POOL_SPIN_PURE && spins % POOL_YIELD_EVERY == 0) sched_yield();
}

struct worker_arg {
    struct tt_pool *pool;
    int ith;
};

static void *worker_main(void *p)
{
    struct worker_arg arg = *(struct worker_arg *)p;
    free(p);
    struct tt_pool *pool = arg.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               !atomic_load(&pool->stop)) {
            if (++spins < POOL_SPIN_ITERS) {
                spin_once(spins);
                continue;
            }
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mutex);
            spins = 0;
        }
        if (atomic_load(&pool->stop)) break;
        seen = gen;
        pool->job(pool->ctx, arg.ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

struct tt_pool *tt_pool_create(int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    if (n_threads > POOL_THREADS_MAX) n_threads = POOL_THREADS_MAX;
    struct tt_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) goto fail_threads;
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *arg = malloc(sizeof(*arg));
        if (!arg) goto fail_start;
        arg->pool = pool;
        arg->ith = i;
        if (pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            goto fail_start;
        }
        pool->n_threads = i + 1; /* threads started so far, for cleanup */
    }
    pool->n_threads = n_threads;
    return pool;
fail_start:
    tt_pool_destroy(pool);
    return NULL;
fail_threads:
    free(pool);
    return NULL;
}

void tt_pool_destroy(struct tt_pool *pool)
{
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++)
        if (pool->threads && pool->threads[i]) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int tt_pool_size(const struct tt_pool *pool) { return pool ? pool->n_threads : 1; }

void tt_pool_run(struct tt_pool *pool, tt_pool_job job, void *ctx)
{
    if (!pool || pool->n_threads == 1) {
        job(ctx, 0, 1);
        return;
    }
    pool->job = job;
    pool->ctx = ctx;
    atomic_store(&pool->n_done, 0);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
    job(ctx, 0, pool->n_threads);
    unsigned spins = 0;
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) < pool->n_threads - 1) spin_once(++spins);
}

void tt_split_range(int64_t n, int ith, int nth, int64_t align, int64_t *begin, int64_t *end)
{
    TT_ASSERT(nth > 0 && ith >= 0 && ith < nth && align > 0);
    int64_t units = (n + align - 1) / align;
    int64_t per = units / nth, extra = units % nth;
    int64_t b = ith * per + (ith < extra ? ith : extra);
    int64_t e = b + per + (ith < extra ? 1 : 0);
    *begin = TT_MIN(b * align, n);
    *end = TT_MIN(e * align, n);
}
