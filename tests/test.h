/*
 * test.h: the tiny harness every tests/test_*.c uses.
 *
 * A test file lists its cases in a table and ends with TEST_MAIN(table).
 * Each case prints exactly one line: "PASS <file>/<case>", "FAIL <file>/<case>: why"
 * or "SKIP <file>/<case>: reason"; tests/run.sh counts those lines. CHECK
 * macros print both sides of a failed comparison and let the case go on, so
 * one run shows every mismatch. Reference data lives in TT_SHARED (default
 * ../shared beside the repository); a case that needs a missing file skips
 * and says which.
 */
#ifndef TT_TEST_H
#define TT_TEST_H

#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct test_case {
    const char *name;
    void (*fn)(void);
};

static int test_failed_;
static int test_skipped_;
static char test_skip_reason_[512];

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            test_failed_ = 1;                                                         \
        }                                                                             \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                                  \
    do {                                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                                 \
        if (a_ != b_) {                                                                     \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld vs %lld\n", __FILE__, __LINE__, \
                    #a, #b, a_, b_);                                                        \
            test_failed_ = 1;                                                               \
        }                                                                                   \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                                 \
    do {                                                                                      \
        double a_ = (double)(a), b_ = (double)(b);                                            \
        if (!(fabs(a_ - b_) <= (tol))) {                                                      \
            fprintf(stderr, "  %s:%d: |%s - %s| <= %g failed: %.9g vs %.9g\n", __FILE__,      \
                    __LINE__, #a, #b, (double)(tol), a_, b_);                                 \
            test_failed_ = 1;                                                                 \
        }                                                                                     \
    } while (0)
#define CHECK_STR(a, b)                                                                       \
    do {                                                                                      \
        const char *a_ = (a), *b_ = (b);                                                      \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                              \
            fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" vs \"%s\"\n", __FILE__, __LINE__, \
                    #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                          \
            test_failed_ = 1;                                                                 \
        }                                                                                     \
    } while (0)

/* Mark the current case skipped; the caller returns right after. */
#define TEST_SKIP(...)                                                                \
    do {                                                                              \
        snprintf(test_skip_reason_, sizeof(test_skip_reason_), __VA_ARGS__);          \
        test_skipped_ = 1;                                                            \
    } while (0)

/* Path of a file under the shared reference data. */
static inline const char *test_shared_path(const char *rel)
{
    static char buf[8][1024];
    static int slot;
    const char *root = getenv("TT_SHARED");
    if (!root) root = "../shared";
    char *out = buf[slot++ % 8];
    snprintf(out, sizeof(buf[0]), "%s/%s", root, rel);
    return out;
}

static inline int test_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Read a whole file; caller frees. NULL if missing. */
static inline void *test_read_file(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(fp);
    if (size) *size = (size_t)n;
    return buf;
}

static inline int test_main_(const struct test_case *cases, size_t n, const char *file, int argc,
                             char **argv)
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    char prefix[160];
    const char *tag = getenv("TT_TEST_TAG"); /* e.g. "asan" for the sanitizer build */
    snprintf(prefix, sizeof(prefix), "%s%s%.*s", tag ? tag : "", tag ? ":" : "",
             (int)(strcspn(base, ".")), base);
    int n_failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && !strstr(cases[i].name, argv[1])) continue;
        test_failed_ = 0;
        test_skipped_ = 0;
        cases[i].fn();
        if (test_failed_) {
            printf("FAIL %s/%s\n", prefix, cases[i].name);
            n_failed++;
        } else if (test_skipped_) {
            printf("SKIP %s/%s: %s\n", prefix, cases[i].name, test_skip_reason_);
        } else {
            printf("PASS %s/%s\n", prefix, cases[i].name);
        }
        fflush(stdout);
    }
    return n_failed ? 1 : 0;
}

/* Greedy decoding's start: s becomes a greedy sampler (temperature 0) over
 * e's vocabulary and *tok the token after the n_ids prompt ids. The caller
 * frees s (sampler_free), also on an error; returns engine_eval_sample's. */
static inline int test_greedy_start(struct engine *e, struct sampler *s, const int32_t *ids,
                                    int n_ids, int32_t *tok)
{
    struct sampler_opts so;
    sampler_opts_default(&so);
    so.temperature = 0;
    sampler_init(s, &so, engine_model(e)->hp.n_vocab);
    return engine_eval_sample(e, ids, n_ids, s, tok);
}

/* Generate at path the small MoE model of the balancing tests: qwen3moe, 2
 * layers, 32 experts (4 per token), Q8_0, a router skewed towards a few hot
 * experts (static placement on 4 ranks is imbalanced >= 2). Returns
 * model_gen's error. */
static inline int test_gen_skewed_moe(const char *path)
{
    struct model_gen_opts g = { .seed = 3, .base_type = TT_TYPE_Q8_0, .router_skew = 0.12f, .n_threads = 2 };
    g.hp = (struct model_hparams){ .arch = MODEL_ARCH_QWEN3MOE, .n_vocab = 512, .n_embd = 256,
                                   .n_layer = 2, .n_head = 4, .n_head_kv = 2, .head_dim = 64,
                                   .n_ff = 512, .n_ctx_train = 512, .n_rot = 64, .rope_base = 1e6f,
                                   .rms_eps = 1e-6f, .n_expert = 32, .n_expert_used = 4, .n_ff_exp = 128 };
    return model_gen(&g, path);
}

#define TEST_MAIN(cases)                                                                 \
    int main(int argc, char **argv)                                                      \
    {                                                                                    \
        return test_main_(cases, sizeof(cases) / sizeof(cases[0]), __FILE__, argc, argv); \
    }

#endif
