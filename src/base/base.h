/*
 * base: what every module stands on.
 *
 * - Errors: operating errors are negative TT_E* codes from one table, printable
 *   with tt_strerror(); a human-readable detail goes to tt_error_set() so the
 *   CLI can print "what failed and what to do". Programmer errors hit TT_ASSERT,
 *   which stays on in release builds and aborts with file:line.
 * - Logging to stderr with levels (TT_LOG_LEVEL env or tt_log_set_level()).
 * - Aligned allocation, half/bfloat conversions, a monotonic clock.
 * - A thread pool (threadpool.c) for data-parallel kernels.
 */
#ifndef TT_BASE_H
#define TT_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ---- errors ---- */
enum tt_err {
    TT_OK = 0,
    TT_EIO = -1,        /* read/write/open failed */
    TT_ENOMEM = -2,     /* allocation failed */
    TT_EFORMAT = -3,    /* malformed input file or message */
    TT_EUNSUPPORTED = -4, /* valid but not supported (arch, type, version) */
    TT_EINVAL = -5,     /* bad argument or option value */
    TT_ERANGE = -6,     /* a value exceeds a limit (context, sizes) */
    TT_ENOTFOUND = -7,  /* missing key, tensor, file */
    TT_ECOMM = -8,      /* communication with another rank failed */
    TT_EDEVICE = -9,    /* accelerator error */
    TT_ECANCELED = -10, /* stopped on request */
    TT_ERR_COUNT_ = 11
};

const char *tt_strerror(int err);

/* Record a formatted detail message for the last error (thread-local) and
 * return `err`, so callers write `return tt_error_set(TT_EFORMAT, "...")`. */
int tt_error_set(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The detail of the last error on this thread, or "" if none. */
const char *tt_error_detail(void);
void tt_error_clear(void);

#define TT_ASSERT(cond)                                                        \
    do {                                                                       \
        if (!(cond)) tt_assert_fail(#cond, __FILE__, __LINE__);                \
    } while (0)
_Noreturn void tt_assert_fail(const char *what, const char *file, int line);

/* ---- logging ---- */
enum tt_log_level { TT_LOG_ERROR, TT_LOG_WARN, TT_LOG_INFO, TT_LOG_DEBUG, TT_LOG_LEVEL_COUNT };
void tt_log_set_level(enum tt_log_level level);
enum tt_log_level tt_log_get_level(void);
void tt_log(enum tt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define tt_warn(...) tt_log(TT_LOG_WARN, __VA_ARGS__)
#define tt_info(...) tt_log(TT_LOG_INFO, __VA_ARGS__)
#define tt_debug(...) tt_log(TT_LOG_DEBUG, __VA_ARGS__)

/* ---- memory ---- */
#define TT_ALIGN 64
/* Zeroed, TT_ALIGN-aligned memory; NULL on failure. Free with tt_free(). */
void *tt_alloc(size_t size_bytes);
void tt_free(void *p);

/* ---- numbers ---- */
typedef uint16_t tt_f16;  /* IEEE half, stored */
typedef uint16_t tt_bf16; /* bfloat16, stored */
float tt_f16_to_f32(tt_f16 h);
tt_f16 tt_f32_to_f16(float f); /* round to nearest even */
static inline float tt_bf16_to_f32(tt_bf16 b)
{
    union { uint32_t u; float f; } v = { .u = (uint32_t)b << 16 };
    return v.f;
}
tt_bf16 tt_f32_to_bf16(float f); /* round to nearest even, NaN kept */
/* Table-driven fast half->float, filled by tt_base_init(). */
extern float tt_f16_table[65536];
static inline float tt_h2f(tt_f16 h) { return tt_f16_table[h]; }

/* Call once at start (fills tables). Idempotent and thread-safe enough for
 * start-up use. */
void tt_base_init(void);

/* ---- time ---- */
double tt_now_s(void); /* monotonic seconds */

/* ---- thread pool ----
 * A fixed set of workers that run one job at a time: job(ctx, ith, nth) is
 * called once on every thread (the caller is thread 0) and tt_pool_run
 * returns when all have finished. Workers spin briefly then sleep, so the
 * per-op latency on the decode path is a few microseconds. */
struct tt_pool;
typedef void (*tt_pool_job)(void *ctx, int ith, int nth);
struct tt_pool *tt_pool_create(int n_threads);
void tt_pool_destroy(struct tt_pool *pool);
int tt_pool_size(const struct tt_pool *pool);
void tt_pool_run(struct tt_pool *pool, tt_pool_job job, void *ctx);
/* Split [0,n) into nth near-equal chunks aligned to `align`; chunk ith. */
void tt_split_range(int64_t n, int ith, int nth, int64_t align, int64_t *begin, int64_t *end);

/* Peak resident memory of this process (VmHWM: anonymous and file-backed
 * pages), 0 if unknown. */
uint64_t tt_peak_rss_bytes(void);

/* Number of online CPUs (cores, not counting SMT siblings where detectable). */
int tt_cpu_count(void);

/* An integer switch from the environment: atoi of variable `name`, or dflt
 * where it is not set (the TT_GPU_* tuning switches). */
int tt_env_int(const char *name, int dflt);

#define TT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TT_MAX(a, b) ((a) > (b) ? (a) : (b))
#define TT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
