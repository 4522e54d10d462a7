/*
 * engine_shard.c: this rank's views of the weights.
 *
 * A view is a row range and a column range of a model weight (per expert for
 * stacked experts). On one rank the views point straight into the read-only
 * map: the weights are never copied and the page cache is shared. On several
 * ranks each rank reads its slices with pread into one buffer of its own, and
 * never touches the map's data pages (a touched page of a file mapping can
 * bring a whole large folio with it, so reading through the map would make a
 * rank hold far more than its part). Replicated tensors (norms, biases,
 * routers) are read the same way; token embedding rows are read one by one
 * as tokens arrive. So a rank holds its part of the weights, the small
 * replicated tensors, and nothing else of the file.
 * Column ranges start and end on block boundaries (the plan guarantees it), so
 * a slice of a quantized row is a whole number of blocks, copied as bytes.
 *
 * Packing (shard_pack): where the CPU kernel table reads a packed layout
 * faster (kcpu_tile16_wanted: the AVX-512 K-quant tiles), the dense weights
 * of the layers the CPU runs are copied once into that layout and the pages
 * under them given back (MADV_DONTNEED: on one rank they are file pages,
 * read again from the file if anything touches them; on several, pages of
 * the rank's own slice buffer, which nothing reads once the view points at
 * its packed copy), so resident memory stays about what it was. Experts
 * (moved between slots by engine_moe.c) and the layers an accelerator
 * uploaded stay in rows.
 */
#include "engine_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

struct range {
    int64_t begin, end;
};

struct shard_builder {
    struct engine *e;
    bool copy;       /* multi-rank: copy slices into e->shard */
    uint64_t used;   /* bytes placed (or counted) so far */
    bool counting;   /* first pass: only count bytes */
    int err;
};

int shard_read(struct engine *e, const void *src, size_t size, void *dst)
{
    if (e->remote) { /* deferred: shard_exchange fills dst from rank 0 */
        if (e->n_reqs == e->cap_reqs) {
            int cap = e->cap_reqs ? e->cap_reqs * 2 : 1024;
            struct shard_req *r = realloc(e->reqs, sizeof(*r) * (size_t)cap);
            if (!r) return tt_error_set(TT_ENOMEM, "out of memory");
            e->reqs = r;
            e->cap_reqs = cap;
        }
        e->reqs[e->n_reqs++] = (struct shard_req){ (uint64_t)((const uint8_t *)src - e->m->file.map), size, dst };
        return 0;
    }
    if (e->fd < 0) {
        memcpy(dst, src, size);
        return 0;
    }
    off_t off = (off_t)((const uint8_t *)src - e->m->file.map);
    for (size_t done = 0; done < size;) {
        ssize_t n = pread(e->fd, (uint8_t *)dst + done, size - done, off + (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return tt_error_set(TT_EIO, "reading %zu bytes at offset %lld of '%s': %s", size,
                                (long long)off, e->m->path, n < 0 ? strerror(errno) : "file shrank");
        done += (size_t)n;
    }
    return 0;
}

const void *shard_embd_row(struct engine *e, int32_t id)
{
    const struct model_weight *w = &e->m->token_embd;
    if (e->embd_local) return e->embd_local + (size_t)id * w->row_bytes;
    const void *row = model_weight_row(w, 0, id);
    if (e->fd < 0) return row;
    int err = shard_read(e, row, w->row_bytes, e->embd_row);
    TT_ASSERT(err == 0 && "the model file can no longer be read");
    return e->embd_row;
}

static uint64_t align_up(uint64_t bytes) { return (bytes + TT_ALIGN - 1) / TT_ALIGN * TT_ALIGN; }

/* Room for `bytes` in the shard (NULL while counting). */
static uint8_t *place(struct shard_builder *b, uint64_t bytes)
{
    uint8_t *dst = b->e->shard + b->used;
    b->used += align_up(bytes);
    return b->counting ? NULL : dst;
}

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
    uint8_t *dst = place(b, (uint64_t)slice_row * (uint64_t)n_rows * (uint64_t)n_exp);
    if (!dst) return;
    v->data = dst;
    v->row_stride = slice_row;
    v->expert_stride = slice_row * (size_t)n_rows;
    const bool whole_rows = slice_row == w->row_bytes;
    for (int64_t x = 0; x < n_exp && !b->err; x++) {
        const uint8_t *src = model_weight_row(w, exps.begin + x, rows.begin);
        uint8_t *out = dst + (size_t)x * v->expert_stride;
        if (whole_rows) { /* one contiguous range */
            b->err = shard_read(b->e, src, slice_row * (size_t)n_rows, out);
            continue;
        }
        for (int64_t r = 0; r < n_rows && !b->err; r++)
            b->err = shard_read(b->e, src + (size_t)r * w->row_bytes + col_off, slice_row,
                                out + (size_t)r * slice_row);
    }
}

static void view(struct shard_builder *b, struct engine_weight *v, const struct model_weight *w,
                 struct range rows, struct range cols)
{
    view_experts(b, v, w, rows, cols, (struct range){ 0, w->ne[2] });
}

/* A replicated or sliced F32 vector: elements [begin, begin+n) of w. */
static const float *vec_slice(struct shard_builder *b, const struct model_weight *w, int64_t begin,
                              int64_t n)
{
    if (!w->data) return NULL;
    const float *src = (const float *)w->data + begin;
    if (!b->copy) return src;
    float *dst = (float *)place(b, sizeof(float) * (uint64_t)n);
    if (dst && !b->err) b->err = shard_read(b->e, src, sizeof(float) * (size_t)n, dst);
    return dst;
}

static const float *vec(struct shard_builder *b, const struct model_weight *w, int64_t begin)
{
    return vec_slice(b, w, begin, w->ne[0] - begin);
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
    if (e->tp_size == 1) { /* experts split over a group: slots, see engine_moe.c */
        view_experts(b, &el->gate_exps, &l->gate_exps, fe, full(E), xs);
        view_experts(b, &el->up_exps, &l->up_exps, fe, full(E), xs);
        view_experts(b, &el->down_exps, &l->down_exps, full(E), fe, xs);
    }
    view(b, &el->gate_shexp, &l->gate_shexp, sh, full(E));
    view(b, &el->up_shexp, &l->up_shexp, sh, full(E));
    view(b, &el->down_shexp, &l->down_shexp, er, gather ? full(hp->n_ff_shexp) : sh);
    el->attn_norm = vec(b, &l->attn_norm, 0);
    el->ffn_norm = vec(b, &l->ffn_norm, 0);
    el->bq = vec_slice(b, &l->bq, q.begin, q.end - q.begin);
    el->bk = vec_slice(b, &l->bk, kv.begin, kv.end - kv.begin);
    el->bv = vec_slice(b, &l->bv, kv.begin, kv.end - kv.begin);
    el->q_norm = vec(b, &l->q_norm, 0);
    el->k_norm = vec(b, &l->k_norm, 0);
    el->gate_inp_shexp = vec(b, &l->gate_inp_shexp, 0);
}

static void build_all(struct shard_builder *b)
{
    struct engine *e = b->e;
    b->used = 0;
    for (int il = e->slice.layers.begin; il < e->slice.layers.end; il++) build_layer(b, il);
    view(b, &e->output, &e->m->output, (struct range){ e->slice.vocab.begin, e->slice.vocab.end },
         full(e->m->hp.n_embd));
    e->output_norm = vec(b, &e->m->output_norm, 0);
    e->rope_freqs = vec(b, &e->m->rope_freqs, 0);
    if (e->remote) { /* embedding rows cannot be read one by one: keep all */
        struct engine_weight emb;
        view(b, &emb, &e->m->token_embd, full(e->m->token_embd.ne[1]), full(e->m->hp.n_embd));
        e->embd_local = emb.data;
    }
}

int shard_build(struct engine *e)
{
    e->fd = -1;
    e->layers = calloc((size_t)e->m->hp.n_layer, sizeof(*e->layers));
    if (!e->layers) return tt_error_set(TT_ENOMEM, "out of memory");
    struct shard_builder b = { .e = e, .copy = e->n_ranks > 1, .counting = true };
    e->remote = e->n_ranks > 1 && !e->m->path;
    if (!b.copy && e->mem_limit && e->m->file.size_bytes + e->buffers_bytes > e->mem_limit)
        return tt_error_set(TT_ENOMEM, "the model needs %.0f MiB (file %.0f MiB, KV cache and buffers "
                            "%.0f MiB) but the memory limit is %.0f MiB; run it on several ranks",
                            (double)(e->m->file.size_bytes + e->buffers_bytes) / 1048576.0,
                            (double)e->m->file.size_bytes / 1048576.0,
                            (double)e->buffers_bytes / 1048576.0, (double)e->mem_limit / 1048576.0);
    if (b.copy) {
        if (!e->remote && (e->fd = open(e->m->path, O_RDONLY | O_CLOEXEC)) < 0)
            return tt_error_set(TT_EIO, "cannot open the model file '%s' to read this rank's slices",
                                e->m->path ? e->m->path : "(in memory)");
        e->embd_row = malloc(e->m->token_embd.row_bytes);
        build_all(&b);
        e->shard_bytes = b.used;
        if (e->mem_limit && b.used + e->buffers_bytes > e->mem_limit)
            return tt_error_set(TT_ENOMEM, "rank %d needs %.0f MiB (its weights %.0f MiB, KV cache "
                                "and buffers %.0f MiB) but its memory limit is %.0f MiB; use more "
                                "ranks or a smaller --ctx", e->rank,
                                (double)(b.used + e->buffers_bytes) / 1048576.0,
                                (double)b.used / 1048576.0, (double)e->buffers_bytes / 1048576.0,
                                (double)e->mem_limit / 1048576.0);
        if (!e->embd_row || !(e->shard = tt_alloc(b.used)))
            return tt_error_set(TT_ENOMEM, "cannot allocate %.1f MiB for this rank's weights",
                                (double)b.used / 1048576.0);
        b.counting = false;
    }
    build_all(&b);
    if (b.copy && e->m->file.owns_map && !e->remote) /* whatever parsing touched goes too */
        madvise((void *)e->m->file.map, e->m->file.size_bytes, MADV_DONTNEED);
    return b.err;
}

void engine_advise_pages(const void *p, size_t bytes, int advice)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, advice);
}

/* ---- packing for the CPU kernels (KCPU_LAYOUT_TILE16) ---- */

struct pack_job {
    const struct engine_weight *src;
    uint8_t *dst;
};

static void pack_run(void *p, int ith, int nth)
{
    const struct pack_job *j = p;
    const struct engine_weight *w = j->src;
    int64_t g0, g1;
    tt_split_range((w->n_out + 15) / 16, ith, nth, 1, &g0, &g1);
    kcpu_tile16_pack((enum tt_type)w->type, w->n_in, w->data, w->row_stride, w->n_out, g0, g1, j->dst);
}

#define PACK_VIEWS_PER_LAYER 10

/* Whole contiguous rows, not packed yet, of a type the kernel table packs. */
static bool packable(const struct engine *e, const struct engine_weight *w)
{
    return w->data && w->n_out > 0 && w->layout == KCPU_LAYOUT_ROWS &&
           kcpu_tile16_wanted(e->ops, (enum tt_type)w->type) &&
           w->row_stride == tt_row_size((enum tt_type)w->type, w->n_in);
}

/* The views shard_pack may pack: dense products of the CPU layers (and the
 * output rows when no accelerator computes the logits), whole contiguous
 * rows of a type the kernel table packs; into ws (room for cap), counted. */
static int packable_views(struct engine *e, struct engine_weight **ws, int cap)
{
    int n = 0;
    const int il0 = TT_MAX(e->slice.layers.begin, e->accel.ctx ? e->accel.n_layers_accel : 0);
    for (int il = il0; il < e->slice.layers.end; il++) {
        struct engine_layer *l = &e->layers[il];
        struct engine_weight *cand[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up,
                                         &l->w_down, &l->gate_shexp, &l->up_shexp, &l->down_shexp };
        for (size_t i = 0; i < TT_ARRAY_LEN(cand) && n < cap; i++)
            if (packable(e, cand[i])) ws[n++] = cand[i];
    }
    if (!e->accel.ctx && n < cap && packable(e, &e->output)) ws[n++] = &e->output;
    return n;
}

/* Room for the packed copy of w in e->packed (aligned like the shard's). */
static uint64_t packed_size(const struct engine_weight *w)
{
    return align_up(kcpu_tile16_bytes((enum tt_type)w->type, w->n_in, w->n_out));
}

/* Give back the whole pages under a packed view: of the map on one rank
 * (not those of token_embd, which is read through the map row by row), of
 * the slice buffer on several. */
static void release_source(struct engine *e, const struct engine_weight *w)
{
    const uintptr_t b = (uintptr_t)w->data, end = b + (size_t)w->n_out * w->row_stride;
    const uintptr_t emb = (uintptr_t)e->m->token_embd.data;
    if (emb >= b && emb < end) return; /* output tied to the embeddings */
    engine_advise_pages(w->data, end - b, MADV_DONTNEED);
}

int shard_pack(struct engine *e)
{
    /* the views point into this rank's slice buffer, or into the map it owns */
    if (!e->shard && !e->m->file.owns_map) return 0;
    const int cap = PACK_VIEWS_PER_LAYER * e->m->hp.n_layer + 1;
    struct engine_weight **ws = malloc(sizeof(*ws) * (size_t)cap);
    if (!ws) return tt_error_set(TT_ENOMEM, "out of memory");
    const int n = packable_views(e, ws, cap);
    uint64_t total = 0, from = 0;
    for (int i = 0; i < n; i++) {
        total += packed_size(ws[i]);
        from += (uint64_t)ws[i]->n_out * ws[i]->row_stride;
    }
    if (n == 0) goto done;
    /* the packed copies replace the mapped pages: only the row padding is new */
    const uint64_t held = e->shard ? e->shard_bytes : e->m->file.size_bytes;
    if (e->mem_limit && held + e->buffers_bytes + (total - from) > e->mem_limit) {
        tt_info("weights stay in rows: packing them needs %.1f MiB more than --mem-limit allows",
                (double)(total - from) / 1048576.0);
        goto done;
    }
    if (!(e->packed = tt_alloc(total))) {
        tt_info("weights stay in rows: no memory for a packed copy (%.0f MiB)", (double)total / 1048576.0);
        goto done;
    }
    e->packed_bytes = total;
    /* Huge pages for the copy, before its first touch: one sequential
     * stream of ~1 GB per token walks the page tables every 4 KB otherwise
     * (measured on this 2-core Zen 4, one thread, packed Q4_K 14336 x 4096:
     * 1 token 4.8-6.4 vs 5.8-7.4 ns per row-block, 8 tokens 1.6-1.9 vs
     * 1.8-2.0). Only advice: the kernel may give 4 KB pages anyway. */
    engine_advise_pages(e->packed, total, MADV_HUGEPAGE);
    uint8_t *at = e->packed;
    for (int i = 0; i < n; i++) {
        struct engine_weight *w = ws[i];
        struct pack_job j = { w, at };
        tt_pool_run(e->pool, pack_run, &j);
        release_source(e, w);
        w->data = at;
        w->layout = KCPU_LAYOUT_TILE16;
        at += packed_size(w);
    }
    tt_debug("packed %d weights for the %s kernels (%.0f MiB)", n, kcpu_isa_name(e->ops->isa),
             (double)total / 1048576.0);
done:
    free(ws);
    return 0;
}

/* ---- weights over the network (--weights-from 0) ---- */

#define SHARD_CHUNK_BYTES (16u << 20)
#define SHARD_TAG 7701
#define SHARD_REQS_MAX (1 << 24)

/* Rank 0: the reads of rank r, served from the file in order. */
static int serve_rank(struct engine *e, int r, uint8_t *chunk)
{
    int64_t n = 0;
    int err = comm_recv(e->comm, &n, sizeof(n), r, SHARD_TAG);
    if (!err && (n < 0 || n > SHARD_REQS_MAX)) err = tt_error_set(TT_ECOMM, "rank %d asked for %lld ranges", r, (long long)n);
    uint64_t *ranges = err ? NULL : malloc(sizeof(uint64_t) * 2 * (size_t)TT_MAX(n, 1));
    if (!err && !ranges) err = tt_error_set(TT_ENOMEM, "out of memory");
    if (!err) err = comm_recv(e->comm, ranges, sizeof(uint64_t) * 2 * (size_t)n, r, SHARD_TAG);
    for (int64_t i = 0; !err && i < n; i++) {
        const uint64_t off = ranges[2 * i], size = ranges[2 * i + 1];
        if (off > e->m->file.size_bytes || size > e->m->file.size_bytes - off) {
            err = tt_error_set(TT_ECOMM, "rank %d asked for bytes past the end of the file", r);
            break;
        }
        for (uint64_t at = 0; at < size && !err; at += SHARD_CHUNK_BYTES) {
            const size_t len = (size_t)TT_MIN((uint64_t)SHARD_CHUNK_BYTES, size - at);
            err = shard_read(e, e->m->file.map + off + at, len, chunk);
            const uint64_t hash = XXH64(chunk, len, 0);
            if (!err) err = comm_send(e->comm, chunk, len, r, SHARD_TAG);
            if (!err) err = comm_send(e->comm, &hash, sizeof(hash), r, SHARD_TAG);
        }
    }
    free(ranges);
    return err;
}

/* A rank without the file: send the deferred reads, receive their bytes. */
static int fetch_remote(struct engine *e)
{
    int64_t n = e->n_reqs;
    uint64_t *ranges = malloc(sizeof(uint64_t) * 2 * (size_t)TT_MAX(n, 1));
    if (!ranges) return tt_error_set(TT_ENOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        ranges[2 * i] = e->reqs[i].offset;
        ranges[2 * i + 1] = e->reqs[i].size;
    }
    int err = comm_send(e->comm, &n, sizeof(n), 0, SHARD_TAG);
    if (!err) err = comm_send(e->comm, ranges, sizeof(uint64_t) * 2 * (size_t)n, 0, SHARD_TAG);
    free(ranges);
    for (int64_t i = 0; !err && i < n; i++)
        for (uint64_t at = 0; at < e->reqs[i].size && !err; at += SHARD_CHUNK_BYTES) {
            const size_t len = (size_t)TT_MIN((uint64_t)SHARD_CHUNK_BYTES, e->reqs[i].size - at);
            uint8_t *dst = (uint8_t *)e->reqs[i].dst + at;
            uint64_t hash;
            err = comm_recv(e->comm, dst, len, 0, SHARD_TAG);
            if (!err) err = comm_recv(e->comm, &hash, sizeof(hash), 0, SHARD_TAG);
            if (!err && hash != XXH64(dst, len, 0))
                err = tt_error_set(TT_ECOMM, "rank %d: weights received from rank 0 are corrupt "
                                   "(checksum mismatch at file offset %llu)", e->rank,
                                   (unsigned long long)(e->reqs[i].offset + at));
        }
    free(e->reqs);
    e->reqs = NULL;
    e->n_reqs = e->cap_reqs = 0;
    e->remote = false; /* every later read must come from this rank's own copy */
    return err;
}

int shard_exchange(struct engine *e)
{
    if (e->n_ranks == 1) return 0;
    const int R = e->n_ranks;
    int8_t mine = e->remote, *remote = malloc((size_t)R);
    if (!remote) return tt_error_set(TT_ENOMEM, "out of memory");
    int err = comm_allgather(e->comm, &mine, 1, remote);
    if (!err && remote[0]) err = tt_error_set(TT_EINVAL, "rank 0 must have the model file");
    if (!err && e->rank == 0) {
        uint8_t *chunk = malloc(SHARD_CHUNK_BYTES);
        if (!chunk) err = tt_error_set(TT_ENOMEM, "out of memory");
        for (int r = 1; r < R && !err; r++)
            if (remote[r]) err = serve_rank(e, r, chunk);
        free(chunk);
    } else if (!err && mine) {
        err = fetch_remote(e);
    }
    for (int r = 0; r < R; r++) /* a rank without the file: expert moves go over the comm */
        if (remote[r]) e->moe_from_ranks = true;
    free(remote);
    return err;
}

void shard_free(struct engine *e)
{
    free(e->reqs);
    e->reqs = NULL;
    if (e->fd >= 0) close(e->fd);
    e->fd = -1;
    free(e->layers);
    free(e->embd_row);
    tt_free(e->shard);
    tt_free(e->packed);
    e->packed = NULL;
    e->layers = NULL;
    e->shard = NULL;
    e->embd_row = NULL;
}
