/*
 * sampler.c: choosing the next token from logits.
 *
 * Order of the steps (llama.cpp's common chain): repetition penalty, then
 * greedy if temperature <= 0, else top-k, top-p, min-p, temperature, and a
 * draw from the softmax with a seeded xorshift generator (same seed, same
 * tokens). Greedy breaks ties towards the lowest id, as the goldens do.
 */
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sampler_opts_default(struct sampler_opts *o)
{
    *o = (struct sampler_opts){ .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                                .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0 };
}

int sampler_init(struct sampler *s, const struct sampler_opts *o, int n_vocab)
{
    memset(s, 0, sizeof(*s));
    s->opts = *o;
    if (s->opts.repeat_last_n < 0 || s->opts.repeat_last_n > SAMPLER_HISTORY_MAX)
        return tt_error_set(TT_EINVAL, "repeat-last-n must be in [0, %d]", SAMPLER_HISTORY_MAX);
    s->n_vocab = n_vocab;
    s->rng = o->seed ? o->seed : 0x9E3779B97F4A7C15ull;
    s->cand = malloc(sizeof(*s->cand) * (size_t)n_vocab);
    s->probs = malloc(sizeof(float) * (size_t)n_vocab);
    s->blocks = malloc(sizeof(int32_t) * (size_t)(n_vocab / SAMPLER_BLOCK + 1));
    s->history = calloc((size_t)TT_MAX(1, s->opts.repeat_last_n), sizeof(int32_t));
    if (!s->cand || !s->probs || !s->blocks || !s->history) {
        sampler_free(s);
        return tt_error_set(TT_ENOMEM, "out of memory for the sampler");
    }
    return 0;
}

void sampler_free(struct sampler *s)
{
    free(s->cand);
    free(s->probs);
    free(s->blocks);
    free(s->history);
    memset(s, 0, sizeof(*s));
}

void sampler_accept(struct sampler *s, int32_t id)
{
    if (s->opts.repeat_last_n <= 0) return;
    s->history[s->history_pos] = id;
    s->history_pos = (s->history_pos + 1) % s->opts.repeat_last_n;
    if (s->n_history < s->opts.repeat_last_n) s->n_history++;
}

static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

int sampler_cand_cmp(const void *a, const void *b)
{
    const struct sampler_cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

static float penalize(float logit, float pen) { return logit > 0 ? logit / pen : logit * pen; }

/* Whether id is among the first n tokens of the history. */
static bool in_history(const struct sampler *s, int n, int32_t id)
{
    for (int j = 0; j < n; j++)
        if (s->history[j] == id) return true;
    return false;
}

/* Divide positive logits (multiply negative ones) of recently seen tokens by
 * the penalty, once per token. A full vocabulary in id order (c[id].id ==
 * id) is looked up directly; gathered candidates, in any order and possibly
 * as many as the vocabulary (a small one on several ranks), by a scan. */
static void apply_penalty(struct sampler *s, struct sampler_cand *c, int n)
{
    const float pen = s->opts.repeat_penalty;
    if (pen == 1.0f) return;
    for (int i = 0; i < s->n_history; i++) {
        const int32_t id = s->history[i];
        if (in_history(s, i, id)) continue;
        for (int k = id < n && c[id].id == id ? id : 0; k < n; k++) {
            if (c[k].id != id) continue;
            c[k].logit = penalize(c[k].logit, pen);
            break;
        }
    }
}

/* Put x into c[0..*n), kept sorted in qsort order and at most k long. */
static void insert_top(struct sampler_cand *c, int *n, int k, struct sampler_cand x)
{
    if (*n == k && sampler_cand_cmp(&x, &c[k - 1]) >= 0) return;
    int j = *n < k ? (*n)++ : k - 1;
    while (j > 0 && sampler_cand_cmp(&x, &c[j - 1]) < 0) {
        c[j] = c[j - 1];
        j--;
    }
    c[j] = x;
}

/* The k first candidates in qsort order (sampler_cand_cmp) moved to c[0..k),
 * sorted, in one pass: a token enters only if it beats the k-th so far, so a
 * vocabulary of 128k entries costs a scan, not a sort (a 152k-entry qsort
 * took longer than a GPU's decode step). Returns k. */
static int keep_top(struct sampler_cand *c, int n, int k)
{
    qsort(c, (size_t)k, sizeof(*c), sampler_cand_cmp);
    int m = k;
    for (int i = k; i < n; i++) insert_top(c, &m, k, c[i]);
    return k;
}

/* The largest of n floats (NaN ignored), in eight running maxima so the
 * loop vectorizes (8x faster than one). */
static float max_of(const float *x, int n)
{
    float mx[8] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) mx[j] = x[i + j] > mx[j] ? x[i + j] : mx[j];
    for (; i < n; i++) mx[0] = x[i] > mx[0] ? x[i] : mx[0];
    for (int j = 1; j < 8; j++) mx[0] = mx[j] > mx[0] ? mx[j] : mx[0];
    return mx[0];
}

/* The k best of V logits (token ids id0 + i) added to the n candidates
 * already in c[0..n), kept in qsort order, in one pass over the floats: a
 * token is looked at only when its logit reaches the k-th best so far,
 * which a block of SAMPLER_BLOCK logits mostly does not (a 152k vocabulary:
 * a scan, not 152k insertions or a sort); with block_max the skipped blocks
 * are not even read. With `list` only the n_list blocks it names are read
 * (the others known to hold no candidate), and tokens below `floor` are
 * known to be outside the k best from the start. Tokens among the sampler's
 * first n_hist history entries are skipped (s may be NULL when n_hist is
 * 0). Returns the count. */
static int scan_top(const float *logits, int V, int32_t id0, const float *block_max, const int32_t *list,
                    int n_list, float floor, int k, const struct sampler *s, int n_hist, struct sampler_cand *c,
                    int n)
{
    float thr = n == k ? fmaxf(c[k - 1].logit, floor) : floor;
    const int n_blocks = list ? n_list : (V + SAMPLER_BLOCK - 1) / SAMPLER_BLOCK;
    for (int b = 0; b < n_blocks; b++) {
        const int i0 = (list ? list[b] : b) * SAMPLER_BLOCK, i1 = TT_MIN(V, i0 + SAMPLER_BLOCK);
        const float mx = block_max ? block_max[i0 / SAMPLER_BLOCK] : max_of(logits + i0, i1 - i0);
        if (mx < thr) continue; /* ties go to the full comparison below */
        for (int i = i0; i < i1; i++) {
            if (logits[i] < thr || (n_hist && in_history(s, n_hist, id0 + i))) continue;
            insert_top(c, &n, k, (struct sampler_cand){ id0 + i, logits[i] });
            if (n == k) thr = fmaxf(c[k - 1].logit, floor);
        }
    }
    return n;
}

int sampler_top_k(const float *logits, int n, int32_t id0, int k, struct sampler_cand *c)
{
    return k > 0 ? scan_top(logits, n, id0, NULL, NULL, 0, -INFINITY, k, NULL, 0, c, 0) : 0;
}

/* A floor for the m-th largest of the n block maxima x: the m-th largest
 * maximum of groups of FLOOR_GROUP blocks, at most it (those m groups hold
 * m blocks at least that large), kept in top[0..m) by insert_top;
 * -INFINITY when there are not m groups. On random logits (128k
 * vocabulary, m 40) 47 blocks reach it, where 40 reach the exact value,
 * which took 7.0 us to find against this bound's 4.1 (2-core machine,
 * block maxima not cached). */
#define FLOOR_GROUP 16
static float floor_of_maxima(const float *x, int n, int m, struct sampler_cand *top)
{
    const int ng = (n + FLOOR_GROUP - 1) / FLOOR_GROUP;
    if (m > ng) return -INFINITY;
    int cnt = 0;
    for (int g = 0; g < ng; g++)
        insert_top(top, &cnt, m,
                   (struct sampler_cand){ g, max_of(x + g * FLOOR_GROUP, TT_MIN(FLOOR_GROUP, n - g * FLOOR_GROUP)) });
    return top[m - 1].logit;
}

/* The k best tokens of a full vocabulary of logits, penalized, into c[0..k)
 * in qsort order: the penalized history tokens go in first and are skipped
 * in the scan (a block's maximum bounds its other tokens' logits either
 * way). With block_max only the blocks reaching a floor are read: at most
 * the (k + n_hist)-th largest block maximum (floor_of_maxima), since those
 * blocks' maxima are that many tokens at or above it, at least k of them
 * outside the history (a 128k vocabulary, top-k 40: about 47 of 2,004
 * blocks, where raising the threshold as the scan goes read hundreds).
 * Returns the count (k, or the vocabulary if smaller). */
static int top_of_logits(struct sampler *s, const float *logits, const float *block_max, int k,
                         struct sampler_cand *c)
{
    const int V = s->n_vocab;
    const float pen = s->opts.repeat_penalty;
    const int n_hist = pen != 1.0f ? s->n_history : 0;
    const int n_blocks = (V + SAMPLER_BLOCK - 1) / SAMPLER_BLOCK;
    /* with block maxima: the blocks that can hold one of the k best listed
     * and fetched at once (the logits came from the accelerator and are in
     * no cache: read one block after another, each waited for memory) */
    int n_list = 0;
    float floor = -INFINITY;
    const bool listed = block_max && k > 1 && k + n_hist < n_blocks;
    if (listed) {
        floor = floor_of_maxima(block_max, n_blocks, k + n_hist, c); /* c is filled below */
        for (int b = 0; b < n_blocks; b++) {
            if (!(block_max[b] >= floor) && !isnan(block_max[b])) continue;
            s->blocks[n_list++] = b;
            for (int o = 0; o < SAMPLER_BLOCK && b * SAMPLER_BLOCK + o < V; o += 16)
                __builtin_prefetch(logits + b * SAMPLER_BLOCK + o);
        }
    }
    int n = 0;
    for (int h = 0; h < n_hist; h++) {
        const int32_t id = s->history[h];
        if (id >= 0 && id < V && !in_history(s, h, id))
            insert_top(c, &n, k, (struct sampler_cand){ id, penalize(logits[id], pen) });
    }
    return scan_top(logits, V, 0, block_max, listed ? s->blocks : NULL, n_list, floor, k, s, n_hist, c, n);
}

static int32_t sample_sorted(struct sampler *s, const struct sampler_cand *c, int keep);

/* The k of a draw from the k best tokens: 1 for greedy, else the top-k cut;
 * 0 when every token takes part (no cut, or none below the vocabulary). */
static int cut_of(const struct sampler *s)
{
    const int k = s->opts.temperature <= 0.0f ? 1 : s->opts.top_k;
    return k > 0 && k < s->n_vocab ? k : 0;
}

/* The draw from the k best tokens c[0..k), in qsort order. */
static int32_t draw_top(struct sampler *s, const struct sampler_cand *c, int k)
{
    return k == 1 ? c[0].id : sample_sorted(s, c, k);
}

int32_t sampler_sample(struct sampler *s, const float *logits) { return sampler_sample_maxima(s, logits, NULL); }

int32_t sampler_sample_maxima(struct sampler *s, const float *logits, const float *block_max)
{
    /* greedy or a top-k cut: the k best straight from the floats */
    const int k = cut_of(s);
    if (k) return draw_top(s, s->cand, top_of_logits(s, logits, block_max, k, s->cand));
    for (int i = 0; i < s->n_vocab; i++) s->cand[i] = (struct sampler_cand){ i, logits[i] };
    return sampler_sample_cands(s, s->cand, s->n_vocab);
}

int32_t sampler_sample_top(struct sampler *s, const struct sampler_cand *c, int n)
{
    const int k = cut_of(s);
    if (!k || k > n || (s->opts.repeat_penalty != 1.0f && s->n_history > 0)) return -1;
    return draw_top(s, c, k);
}

int32_t sampler_sample_cands(struct sampler *s, struct sampler_cand *c, int n)
{
    apply_penalty(s, c, n);
    if (s->opts.temperature <= 0.0f) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (c[i].logit > c[best].logit || (c[i].logit == c[best].logit && c[i].id < c[best].id))
                best = i;
        return c[best].id;
    }
    int keep = n;
    if (s->opts.top_k > 0 && s->opts.top_k < keep) keep = keep_top(c, n, s->opts.top_k);
    else qsort(c, (size_t)n, sizeof(*c), sampler_cand_cmp);
    return sample_sorted(s, c, keep);
}

/* The draw from the `keep` best candidates c[0..keep), in qsort order:
 * top-p, min-p, temperature, then the seeded generator. */
static int32_t sample_sorted(struct sampler *s, const struct sampler_cand *c, int keep)
{
    const float inv_t = 1.0f / s->opts.temperature, top = c[0].logit;
    double sum = 0.0;
    float *p = s->probs;
    for (int i = 0; i < keep; i++) sum += (p[i] = expf((c[i].logit - top) * inv_t));
    /* top-p: smallest prefix with mass >= top_p; min-p: drop p < min_p * p_max */
    double acc = 0.0;
    int cut = keep;
    for (int i = 0; i < keep; i++) {
        if (s->opts.min_p > 0.0f && p[i] < s->opts.min_p * p[0]) {
            cut = TT_MAX(i, 1);
            break;
        }
        acc += p[i] / sum;
        if (s->opts.top_p < 1.0f && acc >= s->opts.top_p) {
            cut = i + 1;
            break;
        }
    }
    double total = 0.0;
    for (int i = 0; i < cut; i++) total += p[i];
    double r = (double)(next_random(&s->rng) >> 11) * (1.0 / 9007199254740992.0) * total;
    int pick = cut - 1;
    for (int i = 0; i < cut; i++) {
        r -= p[i];
        if (r < 0) {
            pick = i;
            break;
        }
    }
    return c[pick].id;
}
