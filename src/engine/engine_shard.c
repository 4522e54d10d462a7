/*
 * engine_shard.c: this rank's views of the weights.
 *
 * A view is a row range and a column range of a model weight (per expert for
 * stacked experts). On one rank the views point straight into the read-only
 * map: the weights are never copied and the page cache is shared. On several
 * ranks every sliced weight is copied into one buffer of this rank's own, so
 * it holds about 1/N of the weights; afterwards the map's pages are released
 * (MADV_DONTNEED) and only the small replicated tensors (norms, biases,
 * routers, the embedding rows of the tokens seen) are read from it again.
 * Column ranges start and end on block boundaries (the plan guarantees it), so
 * a slice of a quantized row is a whole number of blocks, copied as bytes.
 */
#include "engine_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct range {
    int64_t begin, end;
};

struct shard_builder {
    struct engine *e;
    bool copy;       /* multi-rank: copy slices into e->shard */
    uint64_t used;   /* bytes placed (or counted) so far */
    bool counting;   /* first pass: only count bytes */
};

static struct range full(int64_t n) { return (struct range){ 0, n }; }

/* Make the view of rows `rows` and columns `cols` of experts `exps` of w. */
static void view_experts(struct shard_builder *b, struct engine_weight *v,
                         const struct model_weight *w, struct range rows, struct range cols,
                         struct range exps)
{
    memset(v, 0, sizeof(*v));
    if (!w->data) return;
    const struct tt_type_traits *tr = tt_type_get(w->type);
    TT_ASSERT(cols.begin % tr->block_size == 0 && (cols.end % tr->block_size == 0 || cols.end == w->ne[0]));
    const size_t col_off = (size_t)(cols.begin / tr->block_size) * tr->type_size;
    const size_t slice_row = tt_row_size(w->type, cols.end - cols.begin);
    const int64_t n_rows = rows.end - rows.begin, n_exp = exps.end - exps.begin;
    v->type = w->type;
    v->n_in = cols.end - cols.begin;
    v->n_out = n_rows;
    if (!b->copy) {
        v->expert_stride = (size_t)w->ne[1] * w->row_bytes;
        v->data = (const uint8_t *)w->data + (size_t)exps.begin * v->expert_stride +
                  (size_t)rows.begin * w->row_bytes + col_off;
        v->row_stride = w->row_bytes;
        return;
    }
    const uint64_t bytes = (uint64_t)slice_row * (uint64_t)n_rows * (uint64_t)n_exp;
    uint8_t *dst = b->e->shard + b->used;
    b->used += (bytes + TT_ALIGN - 1) / TT_ALIGN * TT_ALIGN;
    if (b->counting) return;
    v->data = dst;
    v->row_stride = slice_row;
    v->expert_stride = slice_row * (size_t)n_rows;
    for (int64_t x = 0; x < n_exp; x++)
        for (int64_t r = 0; r < n_rows; r++)
            memcpy(dst + (size_t)(x * n_rows + r) * slice_row,
                   (const uint8_t *)model_weight_row(w, exps.begin + x, rows.begin + r) + col_off,
                   slice_row);
}

static void view(struct shard_builder *b, struct engine_weight *v, const struct model_weight *w,
                 struct range rows, struct range cols)
{
    view_experts(b, v, w, rows, cols, (struct range){ 0, w->ne[2] });
}

static const float *vec(const struct model_weight *w, int64_t begin)
{
    return w->data ? (const float *)w->data + begin : NULL;
}

static void build_layer(struct shard_builder *b, int il)
{
    struct engine *e = b->e;
    const struct model_hparams *hp = &e->m->hp;
    const struct model_layer *l = &e->m->layers[il];
    struct engine_layer *el = &e->layers[il];
    const int64_t hd = hp->head_dim, E = hp->n_embd;
    const struct plan_rank *s = &e->slice;
    const struct range q = { s->head.begin * hd, s->head.end * hd }, kv = { s->kv.begin * hd, s->kv.end * hd };
    const struct range ff = { s->ff.begin, s->ff.end }, sh = { s->shexp.begin, s->shexp.end };
    const struct range xs = { s->expert.begin, s->expert.end }, fe = full(hp->n_ff_exp);
    /* GATHER: the output projections keep whole rows (this rank's embd rows);
     * SUM: they keep this rank's columns and produce partial sums. */
    const bool gather = e->join == PLAN_JOIN_GATHER;
    const struct range er = gather ? (struct range){ s->embd.begin, s->embd.end } : full(E);
    view(b, &el->wq, &l->wq, q, full(E));
    view(b, &el->wk, &l->wk, kv, full(E));
    view(b, &el->wv, &l->wv, kv, full(E));
    view(b, &el->wo, &l->wo, er, gather ? full(hp->n_head * hd) : q);
    view(b, &el->w_gate, &l->w_gate, ff, full(E));
    view(b, &el->w_up, &l->w_up, ff, full(E));
    view(b, &el->w_down, &l->w_down, er, gather ? full(hp->n_ff) : ff);
    view(b, &el->gate_inp, &l->gate_inp, full(hp->n_expert), full(E));
    if (e->n_ranks == 1) { /* several ranks: expert slots, see engine_moe.c */
        view_experts(b, &el->gate_exps, &l->gate_exps, fe, full(E), xs);
        view_experts(b, &el->up_exps, &l->up_exps, fe, full(E), xs);
        view_experts(b, &el->down_exps, &l->down_exps, full(E), fe, xs);
    }
    view(b, &el->gate_shexp, &l->gate_shexp, sh, full(E));
    view(b, &el->up_shexp, &l->up_shexp, sh, full(E));
    view(b, &el->down_shexp, &l->down_shexp, er, gather ? full(hp->n_ff_shexp) : sh);
    el->attn_norm = vec(&l->attn_norm, 0);
    el->ffn_norm = vec(&l->ffn_norm, 0);
    el->bq = vec(&l->bq, q.begin);
    el->bk = vec(&l->bk, kv.begin);
    el->bv = vec(&l->bv, kv.begin);
    el->q_norm = vec(&l->q_norm, 0);
    el->k_norm = vec(&l->k_norm, 0);
    el->gate_inp_shexp = vec(&l->gate_inp_shexp, 0);
}

static void build_all(struct shard_builder *b)
{
    struct engine *e = b->e;
    b->used = 0;
    for (int il = 0; il < e->m->hp.n_layer; il++) build_layer(b, il);
    view(b, &e->output, &e->m->output, (struct range){ e->slice.vocab.begin, e->slice.vocab.end },
         full(e->m->hp.n_embd));
}

int shard_build(struct engine *e)
{
    e->layers = calloc((size_t)e->m->hp.n_layer, sizeof(*e->layers));
    if (!e->layers) return tt_error_set(TT_ENOMEM, "out of memory");
    struct shard_builder b = { .e = e, .copy = e->n_ranks > 1, .counting = true };
    if (b.copy) {
        build_all(&b);
        e->shard_bytes = b.used;
        if (!(e->shard = tt_alloc(b.used)))
            return tt_error_set(TT_ENOMEM, "cannot allocate %.1f MiB for this rank's weights",
                                (double)b.used / 1048576.0);
        b.counting = false;
    }
    build_all(&b);
    if (b.copy && e->m->file.owns_map) { /* release the map's pages: this rank keeps its copy */
        const struct gguf_file *f = &e->m->file;
        madvise((void *)f->map, f->size_bytes, MADV_DONTNEED);
    }
    return 0;
}

void shard_free(struct engine *e)
{
    free(e->layers);
    tt_free(e->shard);
    e->layers = NULL;
    e->shard = NULL;
}
