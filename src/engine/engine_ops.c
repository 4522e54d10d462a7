/*
 * engine_ops.c: the operations of the forward pass, each spread over the
 * engine's thread pool.
 *
 * Work splitting: products split output rows between threads (every thread
 * streams a disjoint part of the weights, which is what decode speed is made
 * of); attention splits (token, head) pairs; conversions split token rows.
 * Rows are handed out in multiples of ROW_ALIGN so kernels can work on whole
 * row groups (KCPU_LAYOUT_TILE16 weights need a thread's rows to start at a
 * group of 16).
 */
#include "engine_internal.h"

#include <math.h>
#include <string.h>

#define ROW_ALIGN 16

void ops_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float scale = 1.0f / sqrtf((float)(sum / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

/* ---- activation conversion ---- */

struct convert_job {
    const struct kcpu_ops *ops;
    const float *x;
    int64_t ld, n_tok, n_in;
    enum tt_type type;
    uint8_t *dst;
    size_t dst_row_bytes;
};

static void convert_run(void *p, int ith, int nth)
{
    struct convert_job *j = p;
    int64_t t0, t1;
    tt_split_range(j->n_tok, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        j->ops->quantize_act[j->type](j->x + t * j->ld, j->dst + (size_t)t * j->dst_row_bytes,
                                      j->n_in);
}

void ops_convert(struct engine *e, const float *x, int64_t ld, int64_t n_tok, int64_t n_in,
                 enum tt_type type, uint8_t *dst, size_t dst_row_bytes)
{
    struct convert_job j = { e->ops, x, ld, n_tok, n_in, type, dst, dst_row_bytes };
    if (n_tok == 1) convert_run(&j, 0, 1);
    else tt_pool_run(e->pool, convert_run, &j);
}

/* ---- products ---- */

struct matmul_job {
    const struct kcpu_ops *ops;
    const struct matmul_task *tasks;
    int n_tasks;
};

static void matmul_run(void *p, int ith, int nth)
{
    struct matmul_job *j = p;
    for (int i = 0; i < j->n_tasks; i++) {
        const struct matmul_task *t = &j->tasks[i];
        const struct engine_weight *w = t->w;
        int64_t r0, r1;
        tt_split_range(w->n_out, ith, nth, ROW_ALIGN, &r0, &r1);
        if (r0 >= r1) continue;
        kcpu_matmul_get(j->ops, (enum kcpu_layout)w->layout, (enum tt_type)w->type)(
            w->n_in, w->data + (size_t)t->expert * w->expert_stride, w->row_stride, r0, r1, t->act,
            t->act_row_bytes, t->n_tok, t->out, t->ldo);
    }
}

void ops_matmul(struct engine *e, const struct matmul_task *tasks, int n_tasks)
{
    TT_ASSERT(n_tasks > 0 && n_tasks <= ENGINE_MOE_TASKS_MAX);
    struct matmul_job j = { e->ops, tasks, n_tasks };
    tt_pool_run(e->pool, matmul_run, &j);
}

void ops_linear(struct engine *e, const struct engine_weight *w, int64_t expert, const float *x,
                int64_t n_tok, float *y)
{
    if (w->n_out == 0) return;
    enum tt_type at = tt_type_get(w->type)->vec_dot_type;
    size_t arb = tt_row_size(at, w->n_in);
    TT_ASSERT(arb * (size_t)n_tok <= e->act_bytes);
    ops_convert(e, x, w->n_in, n_tok, w->n_in, at, e->act[0], arb);
    struct matmul_task t = { w, expert, e->act[0], arb, n_tok, y, w->n_out };
    ops_matmul(e, &t, 1);
}

/* ---- rotary position embedding ---- */

/* cs[t][2i], cs[t][2i+1] = cos, sin of the angle of pair i at token t's position.
 * The angle is built as the reference does: theta = pos, then multiplied by
 * base^(-2/n_rot) once per pair, divided by the optional frequency factor. */
void ops_rope_table(const struct engine *e, int n_tok, float *cs)
{
    const struct model_hparams *hp = &e->m->hp;
    const float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
    const float *ff = e->rope_freqs;
    for (int t = 0; t < n_tok; t++) {
        float theta = (float)e->tok_pos[t] * hp->rope_freq_scale;
        float *row = cs + (size_t)t * hp->n_rot;
        for (int i = 0; i < hp->n_rot / 2; i++) {
            float a = ff ? theta / ff[i] : theta;
            row[2 * i] = cosf(a);
            row[2 * i + 1] = sinf(a);
            theta *= theta_scale;
        }
    }
}

void ops_rope(const struct engine *e, float *x, int64_t n_tok, int n_heads, const float *cs)
{
    const struct model_hparams *hp = &e->m->hp;
    const int hd = hp->head_dim, half = hp->n_rot / 2;
    const bool neox = hp->rope_type == MODEL_ROPE_NEOX;
    for (int64_t t = 0; t < n_tok; t++) {
        const float *c = cs + t * hp->n_rot;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (t * n_heads + h) * hd;
            for (int i = 0; i < half; i++) {
                int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * c[2 * i] - x1 * c[2 * i + 1];
                v[b] = x0 * c[2 * i + 1] + x1 * c[2 * i];
            }
        }
    }
}

/* ---- attention ---- */

struct attn_job {
    struct engine *e;
    int il;
    int n_tok;
};

/* One query head of one token against the cached keys 0..pos. */
static void attend_one(struct engine *e, int il, int t, int h, int ith)
{
    const struct model_hparams *hp = &e->m->hp;
    const int hd = hp->head_dim;
    /* h is a local query head; its KV head, local to this rank's cache: */
    const int kvh = (e->slice.head.begin + h) / (hp->n_head / hp->n_head_kv) - e->slice.kv.begin;
    const int pos = e->tok_pos[t], seq = e->tok_seq[t];
    const float scale = 1.0f / sqrtf((float)hd);
    float *scores = e->scores + (size_t)ith * e->n_ctx;
    float *out = e->attn + ((size_t)t * e->n_head_local + h) * hd;
    const float *q = e->q + ((size_t)t * e->n_head_local + h) * hd;
    const size_t layer_off = kv_offset(e, seq, il, 0);
    const uint8_t *kbase = e->k_cache + layer_off, *vbase = e->v_cache + layer_off;
    const size_t head_off = (size_t)kvh * hd;
    const size_t stride_f16 = e->kv_row_bytes / sizeof(tt_f16);
    const bool f16 = e->kv_type == TT_TYPE_F16;
    float maxs = -INFINITY;
    if (f16) {
        /* The reference rounds the query to F16 before the key products. */
        float *qh = e->q_half + (size_t)ith * hd;
        for (int i = 0; i < hd; i++) qh[i] = tt_h2f(tt_f32_to_f16(q[i]));
        maxs = kcpu_scores_f16(e->ops, hd, pos + 1, (const tt_f16 *)kbase + head_off, stride_f16, qh, scale, scores);
    } else {
        for (int j = 0; j <= pos; j++) {
            const float *k = (const float *)(kbase + (size_t)j * e->kv_row_bytes) + head_off;
            scores[j] = e->ops->dot_f32(hd, k, q) * scale;
            maxs = scores[j] > maxs ? scores[j] : maxs;
        }
    }
    double sum = 0.0;
    for (int j = 0; j <= pos; j++) {
        scores[j] = expf(scores[j] - maxs);
        sum += scores[j];
    }
    const float inv = (float)(1.0 / sum);
    if (f16) {
        kcpu_mix_f16(e->ops, hd, pos + 1, (const tt_f16 *)vbase + head_off, stride_f16, scores, inv, out);
        return;
    }
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int j = 0; j <= pos; j++)
        e->ops->axpy_f32(hd, scores[j] * inv, (const float *)(vbase + (size_t)j * e->kv_row_bytes) + head_off, out);
}

static void attn_run(void *p, int ith, int nth)
{
    struct attn_job *j = p;
    const int n_head = j->e->n_head_local;
    int64_t i0, i1;
    tt_split_range((int64_t)j->n_tok * n_head, ith, nth, 1, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) attend_one(j->e, j->il, (int)(i / n_head), (int)(i % n_head), ith);
}

void ops_attention(struct engine *e, int il, int n_tok)
{
    if (e->n_head_local == 0) return;
    struct attn_job j = { e, il, n_tok };
    tt_pool_run(e->pool, attn_run, &j);
}
