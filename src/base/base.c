/*
 * base.c: errors, logging, allocation, number conversions, clock.
 *
 * The error detail is thread-local so worker threads and the main thread do
 * not overwrite each other's messages. Conversions follow IEEE 754 round to
 * nearest even, matching what F16C/AVX-512 BF16 hardware produce, so the
 * scalar and SIMD paths agree bit for bit.
 */
#include "base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static const char *const error_names[TT_ERR_COUNT_] = {
    [0] = "success",
    [-TT_EIO] = "input/output error",
    [-TT_ENOMEM] = "out of memory",
    [-TT_EFORMAT] = "malformed data",
    [-TT_EUNSUPPORTED] = "not supported",
    [-TT_EINVAL] = "invalid argument",
    [-TT_ERANGE] = "value out of range",
    [-TT_ENOTFOUND] = "not found",
    [-TT_ECOMM] = "communication failure",
    [-TT_EDEVICE] = "device error",
    [-TT_ECANCELED] = "canceled",
};

const char *tt_strerror(int err)
{
    if (err > 0 || -err >= TT_ERR_COUNT_) return "unknown error";
    return error_names[-err];
}

static _Thread_local char error_detail[1024];

int tt_error_set(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_detail, sizeof(error_detail), fmt, ap);
    va_end(ap);
    return err;
}

const char *tt_error_detail(void) { return error_detail; }
void tt_error_clear(void) { error_detail[0] = 0; }

_Noreturn void tt_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "tutti: internal error: assertion `%s' failed at %s:%d\n", what, file, line);
    fflush(stderr);
    abort();
}

static enum tt_log_level log_level = TT_LOG_WARN;
static int log_level_from_env = -1;

void tt_log_set_level(enum tt_log_level level) { log_level = level; }

enum tt_log_level tt_log_get_level(void)
{
    if (log_level_from_env < 0) {
        const char *s = getenv("TT_LOG_LEVEL");
        log_level_from_env = s ? atoi(s) : (int)log_level;
        if (s && log_level_from_env >= 0 && log_level_from_env < TT_LOG_LEVEL_COUNT)
            log_level = (enum tt_log_level)log_level_from_env;
    }
    return log_level;
}

void tt_log(enum tt_log_level level, const char *fmt, ...)
{
    static const char *const prefix[TT_LOG_LEVEL_COUNT] = { "error", "warning", "info", "debug" };
    if (level > tt_log_get_level()) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "tutti: %s: %s\n", prefix[level], buf);
}

/* Small blocks come from malloc; large ones from anonymous mmap, whose zero
 * pages cost no memory until written (buffers sized for the largest batch
 * stay small for decode). A header before the block records which. */
#define ALLOC_MMAP_MIN (1u << 20)
struct alloc_header {
    size_t total;  /* mapped bytes, 0 for malloc */
    void *base;    /* what malloc returned */
};
_Static_assert(sizeof(struct alloc_header) <= TT_ALIGN, "header fits the alignment pad");

void *tt_alloc(size_t size_bytes)
{
    size_t total = size_bytes + TT_ALIGN;
    if (total < size_bytes) return NULL;
    uint8_t *base;
    struct alloc_header h = { 0, NULL };
    if (total >= ALLOC_MMAP_MIN) {
        void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return NULL;
        base = m;
        h.total = total;
    } else {
        void *m = NULL;
        if (posix_memalign(&m, TT_ALIGN, total) != 0) return NULL;
        memset(m, 0, total);
        base = m;
    }
    h.base = base;
    memcpy(base, &h, sizeof(h));
    return base + TT_ALIGN;
}

void tt_free(void *p)
{
    if (!p) return;
    struct alloc_header h;
    memcpy(&h, (uint8_t *)p - TT_ALIGN, sizeof(h));
    if (h.total) munmap(h.base, h.total);
    else free(h.base);
}

float tt_f16_to_f32(tt_f16 h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            mant &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    union { uint32_t u; float f; } v = { .u = bits };
    return v.f;
}

tt_f16 tt_f32_to_f16(float f)
{
    union { float f; uint32_t u; } v = { .f = f };
    uint32_t x = v.u;
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;
    if (exp == 0xff) return (tt_f16)(sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 31) return (tt_f16)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (tt_f16)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (tt_f16)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* may carry into exp: ok */
    return (tt_f16)(sign | half);
}

tt_bf16 tt_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = { .f = f };
    if ((v.u & 0x7fffffff) > 0x7f800000) return (tt_bf16)((v.u >> 16) | 64); /* quiet NaN */
    return (tt_bf16)((v.u + (0x7fff + ((v.u >> 16) & 1))) >> 16);
}

float tt_f16_table[65536];

void tt_base_init(void)
{
    static int done;
    if (done) return;
    for (uint32_t i = 0; i < 65536; i++) tt_f16_table[i] = tt_f16_to_f32((tt_f16)i);
    done = 1;
}

double tt_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int tt_env_int(const char *name, int dflt)
{
    const char *s = getenv(name);
    return s ? atoi(s) : dflt;
}

int tt_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

uint64_t tt_peak_rss_bytes(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    if (!fp) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), fp))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) break;
    fclose(fp);
    return (uint64_t)kb * 1024;
}
