/*
 * engine_cuda.c: the CUDA accelerator behind the engine's hook (struct
 * engine_accel): whole layers run on one GPU, the rest stay on the CPU.
 * Compiled instead of engine_nocuda.c when the build has CUDA.
 *
 * Set-up: this rank's weight views of layers [0, n_layers) (and the output
 * rows when every layer fits) are copied once into one device arena, with a
 * progress bar when that takes more than a second; each of those layers gets
 * a device KV cache of n_seq * n_ctx positions. n_gpu_layers = -1 takes as
 * many layers as fit in the free memory less a margin.
 *
 * A batch: the host's residual rows e->x, the RoPE angles, positions and
 * sequences are staged through pinned memory; the layers run as kcuda
 * kernels on one stream; e->x comes back. A single-token batch (decode) is
 * captured once as a CUDA graph and replayed; when the output rows are on
 * the device that graph also computes the logits of its token, which
 * cuda_logits() then hands out without another round trip.
 *
 * Invariants:
 *   1. The device never holds state the host does not know about except its
 *      KV cache, which follows the engine's seq_pos bookkeeping: positions
 *      are written where the host says, so truncation needs no device work.
 *   2. Buffers and their addresses are fixed after set-up (graphs rely on it).
 *   3. Every failure returns a TT_E* code with a detail, logged here because
 *      the engine turns accelerator failures into an assertion.
 *
 * Several ranks (tensor parallel, the `sum` join): see "GPU ranks" below.
 * Each rank uploads only its own slices (the engine's views), computes its
 * heads and FFN columns, and the partial products of the attention output
 * and FFN down projections are summed over the ranks before they are added
 * to x: with NCCL in the stream when every rank has a GPU of its own (rank
 * -> device local_rank % device_count; the decode graph captures the
 * all-reduce), else through pinned host memory and the engine's comm (ranks
 * sharing a GPU, or TT_NCCL=0; no decode graph then). MoE layers are
 * expert parallel: each expert is computed on the rank holding its first
 * copy in the engine's placement (engine_moe.c), which uploads only those
 * experts; the router runs on every rank and maps its choices to local
 * expert indices (-1 for another rank's), the kernels leave the other
 * ranks' choices out, and each rank's join (with its slice of a shared
 * expert) is summed over the ranks like a dense down projection. The
 * placement then stays fixed (no live rebalancing of GPU-held experts).
 * Layouts with pipeline stages or idle ranks keep several ranks on the CPU.
 */
#include "engine_internal.h"
#include "../kcuda/kcuda.h"
#include "../comm/comm_nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert((int)KCUDA_F32 == (int)TT_TYPE_F32 && (int)KCUDA_F16 == (int)TT_TYPE_F16 &&
                   (int)KCUDA_Q4_0 == (int)TT_TYPE_Q4_0 && (int)KCUDA_Q8_0 == (int)TT_TYPE_Q8_0 &&
                   (int)KCUDA_Q4_K == (int)TT_TYPE_Q4_K && (int)KCUDA_Q5_K == (int)TT_TYPE_Q5_K &&
                   (int)KCUDA_Q6_K == (int)TT_TYPE_Q6_K && (int)KCUDA_Q8_K == (int)TT_TYPE_Q8_K &&
                   (int)KCUDA_BF16 == (int)TT_TYPE_BF16,
               "kcuda type ids are GGML's");

#define GPU_MARGIN_BYTES (768ull << 20) /* left free for the driver, cuBLAS, graphs */
#define GPU_ACT_SLOTS 3                 /* activation types converted from one input */
_Static_assert(GPU_ACT_SLOTS <= KCUDA_CONVERT_MAX, "one launch converts every slot");
#define GPU_LOGIT_ROWS 64               /* logits rows computed per pass */

struct gpu_layer {
    struct kcuda_weight wq, wk, wv, wo;
    struct kcuda_weight w_gate, w_up, w_down;
    struct kcuda_weight gate_inp, gate_exps, up_exps, down_exps;
    struct kcuda_weight gate_shexp, up_shexp, down_shexp;
    const float *attn_norm, *ffn_norm;   /* [n_embd] */
    const float *bq, *bk, *bv;           /* or NULL */
    const float *q_norm, *k_norm;        /* [head_dim] or NULL */
    const float *gate_inp_shexp;         /* [n_embd] or NULL */
    const int32_t *local;                /* several ranks, MoE: [n_expert] index among this rank's
                                            experts or -1 (kcuda_moe_route), else NULL */
    int n_local;                         /* experts held here (all of them on one rank) */
    void *k_cache, *v_cache;             /* [n_seq][n_ctx][n_kv_local*head_dim] */
};

/* Activations converted from one input, one slot per activation type. */
struct act_set {
    int n;
    int type[GPU_ACT_SLOTS];
    size_t stride[GPU_ACT_SLOTS];
    const void *ptr[GPU_ACT_SLOTS];
};

struct cuda_accel {
    struct kcuda *k;
    int n_layers;            /* layers [0, n_layers) are here */
    bool has_output;         /* output rows and norm are here */
    struct gpu_layer *layers;
    struct kcuda_weight output;
    const float *output_norm;
    struct kcuda_attn_shape shape;
    int B, n_slots_max, max_tiles, max_groups;
    bool moe_fused;          /* TT_GPU_MOE_FUSED (default 1): fused router, grouped batch products */
    bool attn_q8k;           /* TT_GPU_ATTN_Q8K (default 1): decode attention writes wo's Q8_K row */
    bool qkv_one;            /* TT_GPU_QKV_ONE (default 1): q, k, v of two K-quant types in one launch */
    bool qkv_rope;           /* TT_GPU_QKV_ROPE (default 1): that launch also does RoPE and the cache store */
    bool router_norm;        /* TT_GPU_ROUTER_NORM (default 1): a decode token's MoE router does the ffn norm */
    bool top_cands;          /* TT_GPU_TOP_CANDS (default 1): a decode step copies out its sampling
                                candidates, not its logits (they follow when asked for) */
    uint8_t *arena;          /* weights */
    uint64_t arena_bytes, arena_used;
    uint8_t *kv;             /* caches of all device layers */
    uint8_t *bufs;           /* activations */
    /* device activations (shapes with B = n_batch tokens, S = B * n_expert_used slots) */
    float *x;                /* [B][E] residual stream */
    float *xn;               /* [B][E] normed (router input, logits rows) */
    float *q, *kx, *vx;      /* [B][qd], [B][kvd], [B][kvd] */
    float *attn;             /* [B][qd] */
    float *ffn_a, *ffn_b;    /* [max(B*ff, S*ff_exp)] */
    float *ffn_out;          /* [max(B, S)][E] expert outputs */
    float *ysh;              /* [B][max(E, n_ff_shexp)] shared expert output (or scratch) */
    float *moe_part;         /* [B][E] several ranks: this rank's share of the expert join */
    float *router, *sel_w;   /* [B][n_expert], [S] */
    int32_t *sel, *tiles;    /* [S], [max_tiles][KCUDA_MOE_TILE_INTS] */
    int *route_count;        /* [B] fused router tickets (zero between launches) */
    int32_t *order, *groups; /* [S] slots by expert, [max_groups][KCUDA_MOE_GROUP_INTS] (batches) */
    float *cs;               /* [B][n_rot] */
    int32_t *pos, *seq, *rows; /* [B] */
    float *part;             /* attention parts */
    int *att_count;          /* [B][n_kv_local] attention join tickets (zero between launches) */
    float *logits;           /* [GPU_LOGIT_ROWS][n_vocab_local] */
    float *block_max;        /* [n_vocab_local / SAMPLER_BLOCK + 1] of a decode token's logits */
    struct kcuda_cand *cands; /* [KCUDA_TOP_CANDS + 1] a decode token's best tokens, then their count */
    uint8_t *act[GPU_ACT_SLOTS];
    size_t act_bytes;
    /* pinned host staging */
    float *h_x, *h_cs, *h_logits; /* h_logits: then the block maxima (h_block_max) */
    float *h_xin;            /* [E] a decode token's input row, read by the step's first kernel */
    float *h_block_max;
    struct kcuda_cand *h_cands; /* as cands */
    int32_t *h_pos, *h_seq;
    /* decode */
    struct kcuda_graph *graph[2]; /* decode: [0] attention in clusters, [1] in parts (from cluster_pos on) */
    int graph_cur;           /* the one this step replays */
    int attn_cluster;        /* TT_GPU_ATTN_CLUSTER (default 16): kcuda_set_attn_cluster below cluster_pos */
    int cluster_pos;         /* TT_GPU_ATTN_CLUSTER_POS (default 4096; H200, clusters of 256-thread blocks
                                against parts at 1,536 and 3,584 positions: MoE-12L 1,248 / 1,175 and
                                1,162 / 1,085 tok/s, 8B 363.0 / 364.1 at 3,584; not measured beyond) */
    bool graph_off;
    int lead_decode;         /* the batch's leading tokens each alone in its sequence's run, when a
                                prompt run follows (else 0): attention_block gives them their own launch */
    bool logits_ready;       /* the last batch was one token, whose logits are in `logits` */
    bool logits_copied;      /* ... and in h_logits (and h_block_max) */
    /* TT_GPU_PROFILE=1: per-kernel times of one decode step and one batch */
    float *prof_x;           /* [B][E] the batch's input rows, or NULL */
    int prof_decode_steps;
    bool prof_batch_done;
    /* GPU ranks (several ranks; see "GPU ranks" below) */
    int device;              /* CUDA device of this rank */
    int mem_share;           /* ranks sharing that device: each plans with 1/mem_share of it */
    bool use_nccl;           /* every rank has a GPU of its own: join with NCCL */
    struct comm_nccl *nccl;  /* the NCCL communicator, or NULL: host-staged joins */
    float *h_join;           /* [B][E] pinned staging of a host-staged join */
};

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

static int vec_type(int type) { return (int)tt_type_get((uint32_t)type)->vec_dot_type; }

/* ---- upload ---- */

struct progress {
    double start_s;
    bool shown;
    int last_pct;
    uint64_t done, total;
};

static void progress_update(struct progress *p, uint64_t add)
{
    p->done += add;
    const char *env = getenv("TT_PROGRESS");
    const bool enabled = env ? atoi(env) != 0 : isatty(2);
    if (!enabled || tt_now_s() - p->start_s < 1.0 || !p->total) return;
    const int pct = (int)(100.0 * (double)p->done / (double)p->total);
    if (pct == p->last_pct) return;
    p->last_pct = pct;
    p->shown = true;
    const int bar = pct * 30 / 100;
    fprintf(stderr, "\r%-10s [%.*s%*s] %3d%%", "to GPU", bar, "##############################",
            30 - bar, "", pct);
    fflush(stderr);
}

/* Place (or, with `count`, only measure) a weight view in the arena. */
struct placer {
    struct cuda_accel *c;
    bool count;
    uint64_t used;
    struct progress prog;
};

/* Room for `bytes` in the arena (and the products' read-ahead pad): its
 * address, or NULL while the placer only counts. */
static uint8_t *place_room(struct placer *p, size_t bytes)
{
    const uint64_t off = p->used;
    p->used += align256(bytes + KCUDA_WEIGHT_PAD);
    return p->count ? NULL : p->c->arena + off;
}

static int place_bytes(struct placer *p, const void *src, size_t bytes, void **dst)
{
    *dst = NULL;
    if (!src || !bytes) return 0;
    if (!(*dst = place_room(p, bytes))) return 0;
    const size_t chunk = 64u << 20;
    for (size_t o = 0; o < bytes; o += chunk) {
        const size_t n = bytes - o < chunk ? bytes - o : chunk;
        int err = kcuda_upload(p->c->k, (uint8_t *)*dst + o, (const uint8_t *)src + o, n);
        if (err) return err;
        progress_update(&p->prog, n);
    }
    return 0;
}

/* dst describes n of src's matrices stacked (GGML layout, rows packed);
 * returns their bytes, 0 for none (a rank without columns or experts:
 * data stays NULL). */
static size_t weight_desc(struct kcuda_weight *dst, const struct engine_weight *src, int64_t n)
{
    memset(dst, 0, sizeof(*dst));
    if (!src->data || src->n_out == 0 || n <= 0) return 0;
    const size_t row = tt_row_size((enum tt_type)src->type, src->n_in);
    *dst = (struct kcuda_weight){ NULL, (int)src->type, src->n_in, src->n_out, row, row * (size_t)src->n_out,
                                  KCUDA_LAYOUT_GGML };
    return dst->expert_stride * (size_t)n;
}

/* One matrix, through kcuda_upload_weight, which may regroup it for the
 * decode products (dst->layout). */
static int place_weight(struct placer *p, struct kcuda_weight *dst, const struct engine_weight *src)
{
    const size_t bytes = weight_desc(dst, src, 1);
    if (!bytes || !(dst->data = place_room(p, bytes))) return 0;
    int err = kcuda_upload_weight(p->c->k, dst, 0, src->data, src->row_stride);
    if (!err) progress_update(&p->prog, bytes);
    return err;
}

/* n experts of src's stack: pick[j] is the stack's index of the j-th (the
 * first n when pick is NULL; a packed stack then goes in one copy). */
static int place_experts(struct placer *p, struct kcuda_weight *dst, const struct engine_weight *src, int64_t n,
                         const int32_t *pick)
{
    const size_t bytes = weight_desc(dst, src, n), mat = dst->expert_stride;
    if (!bytes) return 0;
    if (!pick && src->row_stride == dst->row_stride && src->expert_stride == mat)
        return place_bytes(p, src->data, bytes, (void **)&dst->data);
    if (!(dst->data = place_room(p, bytes))) return 0;
    for (int64_t x = 0; x < n; x++) {
        const void *from = src->data + (size_t)(pick ? pick[x] : x) * src->expert_stride;
        int err = kcuda_upload_2d(p->c->k, (uint8_t *)dst->data + (size_t)x * mat, dst->row_stride, from,
                                  src->row_stride, dst->row_stride, (size_t)src->n_out);
        if (err) return err;
        progress_update(&p->prog, mat);
    }
    return 0;
}

static int place_vec(struct placer *p, const float **dst, const float *src, int64_t n)
{
    return place_bytes(p, src, src ? (size_t)n * 4 : 0, (void **)dst);
}

/* Several ranks, MoE layer il: the experts this rank computes (those whose
 * first copy in the placement is here), in expert order: their slots into
 * pick, each expert's index among them (or -1) into local. Returns how many. */
static int local_experts(const struct engine *e, int il, int32_t *pick, int32_t *local)
{
    const int X = e->m->hp.n_expert;
    int n = 0;
    for (int x = 0; x < X; x++) {
        const bool mine = moe_copy_index(&e->moe_place[il], x, e->tp_rank) == 0;
        local[x] = mine ? n : -1;
        if (mine) pick[n++] = e->moe_slot_of[(size_t)il * X + x];
    }
    return n;
}

static int place_layer(struct placer *p, struct engine *e, int il)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct engine_layer *l = &e->layers[il];
    struct gpu_layer *g = &p->c->layers[il];
    const int64_t E = hp->n_embd, hd = hp->head_dim;
    int32_t *pick = NULL, *local = NULL;
    g->n_local = hp->n_expert;
    if (hp->n_expert && e->tp_size > 1) {
        pick = malloc(sizeof(int32_t) * 2 * (size_t)hp->n_expert);
        if (!pick) return tt_error_set(TT_ENOMEM, "expert tables");
        local = pick + hp->n_expert;
        g->n_local = local_experts(e, il, pick, local);
    }
    const struct { struct kcuda_weight *d; const struct engine_weight *s; } ws[] = {
        { &g->wq, &l->wq },         { &g->wk, &l->wk },           { &g->wv, &l->wv },
        { &g->wo, &l->wo },         { &g->w_gate, &l->w_gate },   { &g->w_up, &l->w_up },
        { &g->w_down, &l->w_down }, { &g->gate_inp, &l->gate_inp }, { &g->gate_shexp, &l->gate_shexp },
        { &g->up_shexp, &l->up_shexp }, { &g->down_shexp, &l->down_shexp },
    };
    int err = 0;
    for (size_t i = 0; i < TT_ARRAY_LEN(ws) && !err; i++) err = place_weight(p, ws[i].d, ws[i].s);
    if (!err) err = place_experts(p, &g->gate_exps, &l->gate_exps, g->n_local, pick);
    if (!err) err = place_experts(p, &g->up_exps, &l->up_exps, g->n_local, pick);
    if (!err) err = place_experts(p, &g->down_exps, &l->down_exps, g->n_local, pick);
    if (!err && local) err = place_bytes(p, local, sizeof(int32_t) * (size_t)hp->n_expert, (void **)&g->local);
    free(pick);
    const int64_t qd = (int64_t)e->n_head_local * hd, kvd = (int64_t)e->n_kv_local * hd;
    if (!err) err = place_vec(p, &g->attn_norm, l->attn_norm, E);
    if (!err) err = place_vec(p, &g->ffn_norm, l->ffn_norm, E);
    if (!err) err = place_vec(p, &g->bq, l->bq, qd);
    if (!err) err = place_vec(p, &g->bk, l->bk, kvd);
    if (!err) err = place_vec(p, &g->bv, l->bv, kvd);
    if (!err) err = place_vec(p, &g->q_norm, l->q_norm, hd);
    if (!err) err = place_vec(p, &g->k_norm, l->k_norm, hd);
    if (!err) err = place_vec(p, &g->gate_inp_shexp, l->gate_inp_shexp, E);
    return err;
}

static int place_output(struct placer *p, struct engine *e)
{
    int err = place_weight(p, &p->c->output, &e->output);
    if (!err) err = place_vec(p, &p->c->output_norm, e->output_norm, e->m->hp.n_embd);
    return err;
}

/* ---- sizes ---- */

static size_t kv_layer_bytes(const struct engine *e)
{
    const size_t kvd = (size_t)e->n_kv_local * (size_t)e->m->hp.head_dim;
    return align256((size_t)e->n_seq * (size_t)e->n_ctx * kvd * (e->kv_type == TT_TYPE_F16 ? 2 : 4));
}

static int attn_splits(const struct engine *e, int n_tok)
{
    if (n_tok == 1) return KCUDA_ATTN_SPLIT_MAX;
    const int s = (e->n_ctx + 255) / 256;
    return TT_MAX(1, TT_MIN(s, KCUDA_ATTN_SPLIT_MAX));
}

/* Bytes of the device activation buffers (and their layout when base is set). */
static size_t layout_bufs(struct cuda_accel *c, const struct engine *e, uint8_t *base)
{
    const struct model_hparams *hp = &e->m->hp;
    const size_t B = (size_t)c->B, E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    const size_t qd = (size_t)TT_MAX(e->n_head_local, 1) * hd, kvd = (size_t)TT_MAX(e->n_kv_local, 1) * hd;
    const size_t K = (size_t)TT_MAX(hp->n_expert_used, 1), S = B * K, X = (size_t)TT_MAX(hp->n_expert, 1);
    const size_t ff = (size_t)TT_MAX(hp->n_ff, TT_MAX(hp->n_ff_exp, hp->n_ff_shexp));
    const size_t ffb = TT_MAX(B * ff, hp->n_expert ? S * (size_t)hp->n_ff_exp : 0);
    const size_t in_max = TT_MAX(TT_MAX(E, (size_t)hp->n_head * hd), ff);
    c->act_bytes = align256(TT_MAX(B * kcuda_act_row_bytes(KCUDA_F32, (int64_t)in_max),
                                   hp->n_expert ? S * kcuda_act_row_bytes(KCUDA_F32, hp->n_ff_exp) : 0));
    const size_t part = kcuda_attn_part_floats(&c->shape, (int64_t)B, attn_splits(e, (int)B));
    const size_t part1 = kcuda_attn_part_floats(&c->shape, 1, KCUDA_ATTN_SPLIT_MAX);
    size_t off = 0;
#define BUF(ptr, bytes)                                                      \
    do {                                                                     \
        if (base) *(void **)&(ptr) = base + off;                             \
        off += align256(bytes);                                              \
    } while (0)
    BUF(c->x, B * E * 4);
    BUF(c->xn, B * E * 4);
    BUF(c->q, B * qd * 4);
    BUF(c->kx, B * kvd * 4);
    BUF(c->vx, B * kvd * 4);
    BUF(c->attn, B * qd * 4);
    BUF(c->ffn_a, ffb * 4);
    BUF(c->ffn_b, ffb * 4);
    BUF(c->ffn_out, TT_MAX(B, hp->n_expert ? S : 0) * E * 4);
    BUF(c->ysh, B * TT_MAX(E, (size_t)hp->n_ff_shexp) * 4);
    BUF(c->moe_part, e->tp_size > 1 && hp->n_expert ? B * E * 4 : 0);
    BUF(c->router, B * X * 4);
    BUF(c->sel_w, S * 4);
    BUF(c->sel, S * 4);
    BUF(c->tiles, (size_t)c->max_tiles * KCUDA_MOE_TILE_INTS * 4);
    BUF(c->route_count, B * 4);
    BUF(c->order, S * 4);
    BUF(c->groups, (size_t)c->max_groups * KCUDA_MOE_GROUP_INTS * 4);
    BUF(c->cs, B * (size_t)TT_MAX(hp->n_rot, 2) * 4);
    BUF(c->pos, B * 4);
    BUF(c->seq, B * 4);
    BUF(c->rows, B * 4);
    BUF(c->part, TT_MAX(part, part1) * 4);
    BUF(c->att_count, B * (size_t)TT_MAX(e->n_kv_local, 1) * 4);
    BUF(c->logits, (size_t)GPU_LOGIT_ROWS * (size_t)TT_MAX(e->n_vocab_local, 1) * 4);
    BUF(c->block_max, (size_t)(e->n_vocab_local / SAMPLER_BLOCK + 1) * 4);
    BUF(c->cands, (KCUDA_TOP_CANDS + 1) * sizeof(struct kcuda_cand));
    for (int i = 0; i < GPU_ACT_SLOTS; i++) BUF(c->act[i], c->act_bytes);
#undef BUF
    return off;
}

static size_t scratch_bytes(const struct engine *e, int B)
{
    const struct model_hparams *hp = &e->m->hp;
    const int64_t ff = TT_MAX(hp->n_ff, TT_MAX(hp->n_ff_exp, hp->n_ff_shexp));
    const int64_t in_max = TT_MAX(TT_MAX(hp->n_embd, (int64_t)hp->n_head * hp->head_dim), ff);
    return kcuda_linear_scratch_bytes(B, in_max, ff);
}

/* ---- the forward pass on the device ---- */

/* Convert n_tok rows of x (ld floats apart; RMS-normed with w when w is not
 * NULL) once for every distinct activation type the weights ws take. `yf`,
 * when set, receives the normed rows as floats. */
static int acts_prepare(struct cuda_accel *c, struct act_set *s, const float *x, int64_t ld,
                        int64_t n_tok, int64_t n, const float *w, float eps, float *yf,
                        const struct kcuda_weight *const *ws, int n_w)
{
    s->n = 0;
    const float e = w ? eps : -1.0f;
    bool want_f32 = false;
    int err = 0;
    for (int i = 0; i < n_w && !err; i++) {
        if (!ws[i]->data) continue;
        const int t = vec_type(ws[i]->type);
        int j = 0;
        while (j < s->n && s->type[j] != t) j++;
        if (j < s->n) continue;
        if (t == KCUDA_F32 && yf) { /* F32 products read the float rows themselves */
            want_f32 = true;
            continue;
        }
        TT_ASSERT(s->n < GPU_ACT_SLOTS);
        s->type[j] = t;
        s->stride[j] = kcuda_act_row_bytes(t, n);
        s->ptr[j] = c->act[j];
        s->n++;
    }
    /* every type in one launch */
    void *dst[GPU_ACT_SLOTS];
    for (int j = 0; j < s->n; j++) dst[j] = c->act[j];
    if (s->n)
        err = kcuda_norm_convert_multi(c->k, s->n, s->type, dst, s->stride, x, ld, n_tok, n, w, e, yf);
    const bool yf_done = s->n > 0;
    if (!err && yf && !yf_done) err = kcuda_norm_convert(c->k, KCUDA_F32, x, ld, n_tok, n, w, e, NULL, yf, (size_t)n * 4);
    if (!err && yf && want_f32) {
        TT_ASSERT(s->n < GPU_ACT_SLOTS);
        s->type[s->n] = KCUDA_F32;
        s->stride[s->n] = (size_t)n * 4;
        s->ptr[s->n++] = yf;
    }
    return err;
}

static const void *act_of(const struct cuda_accel *c, const struct act_set *s,
                          const struct kcuda_weight *w, size_t *stride)
{
    const int t = vec_type(w->type);
    (void)c;
    for (int j = 0; j < s->n; j++) {
        if (s->type[j] == t) {
            *stride = s->stride[j];
            return s->ptr[j];
        }
    }
    TT_ASSERT(!"activation type not converted");
    return NULL;
}

static int lin(struct cuda_accel *c, const struct act_set *s, const struct kcuda_weight *w,
               const struct kcuda_weight *w2, int64_t n_tok, float *out, int64_t ldo,
               const float *bias, enum kcuda_out_mode mode)
{
    if (!w->data) return 0;
    size_t st;
    const void *a = act_of(c, s, w, &st);
    return kcuda_linear(c->k, w, w2, a, st, n_tok, out, ldo, bias, mode);
}

static bool pairable(const struct kcuda_weight *a, const struct kcuda_weight *b)
{
    return a->type == b->type && a->n_in == b->n_in && a->n_out == b->n_out &&
           a->row_stride == b->row_stride && a->expert_stride == b->expert_stride;
}

/* Weights one launch can stream together: same type and row length. */
static bool pairable_rows(const struct kcuda_weight *a, const struct kcuda_weight *b)
{
    return a->data && b->data && a->type == b->type && a->n_in == b->n_in && a->row_stride == b->row_stride;
}

/* How many of ws[i..3) (q, k, v), from ws[i] on, one kcuda_matvec_multi_acts
 * launch takes (activation rows st[j] bytes apart): neighbours with
 * weights of ws[i]'s type, or with qkv_one another K-quant type or, for
 * one token, another activation type (MoE files: Q4_K q, Q8_0 k and v). */
static int qkv_run(const struct cuda_accel *c, const struct kcuda_weight *const *ws, int i, const size_t *st,
                   int n_tok)
{
    int n = 1;
    while (i + n < 3 && ws[i + n]->data &&
           (vec_type(ws[i + n]->type) == vec_type(ws[i]->type) ? c->qkv_one || pairable_rows(ws[i], ws[i + n])
                                                                : c->qkv_one && n_tok == 1) &&
           kcuda_matvec_multi_acts_ok(ws + i, n + 1, st + i, n_tok))
        n++;
    return n;
}

/* ---- GPU ranks: joining partial products ---- */

/* Sum d_buf[0..n) over the ranks in place: NCCL on the stream, or through
 * pinned host memory and the engine's comm (e->wire), which leaves the same
 * bits on every rank as the CPU's sum join does. */
static int join_sum(struct cuda_accel *c, struct engine *e, float *d_buf, int64_t n)
{
    if (c->nccl) return comm_nccl_allreduce_sum(c->nccl, d_buf, n, kcuda_stream(c->k));
    const size_t bytes = (size_t)n * 4;
    int err = kcuda_download(c->k, c->h_join, d_buf, bytes);
    if (!err) err = kcuda_sync(c->k);
    if (!err) err = comm_allreduce_sum(e->comm, c->h_join, n, e->wire);
    if (!err) err = kcuda_upload(c->k, d_buf, c->h_join, bytes);
    return err;
}

/* x += W . act for the output projections (attention wo, FFN down). One rank
 * adds its product into x directly; on several ranks W holds this rank's
 * input columns, so the partial products land in ffn_out (free at both
 * points), are summed over the ranks and then added, as engine_forward.c's
 * project_join does for the `sum` join. A rank without columns of W (block
 * alignment can leave a small model's heads all on one rank) adds zeros. */
static int project_add(struct cuda_accel *c, struct engine *e, const struct act_set *s,
                       const struct kcuda_weight *w, int64_t n_tok)
{
    const int64_t E = e->m->hp.n_embd;
    if (e->tp_size == 1) return lin(c, s, w, NULL, n_tok, c->x, E, NULL, KCUDA_OUT_ADD);
    int err = w->data ? lin(c, s, w, NULL, n_tok, c->ffn_out, E, NULL, KCUDA_OUT_STORE)
                      : kcuda_memset(c->k, c->ffn_out, 0, sizeof(float) * (size_t)(n_tok * E));
    if (!err) err = join_sum(c, e, c->ffn_out, n_tok * E);
    if (!err) err = kcuda_add(c->k, c->x, c->ffn_out, n_tok * E);
    return err;
}

/* Attention of the batch's tokens t0 .. t0 + n - 1; q8k: the output rows
 * also in Q8_K there (kcuda_attention_q8k), or NULL. */
static int attend(struct cuda_accel *c, struct engine *e, const struct gpu_layer *g, int t0, int n, void *q8k)
{
    const int64_t qd = (int64_t)e->n_head_local * e->m->hp.head_dim;
    return kcuda_attention(c->k, &c->shape, n, attn_splits(e, n), c->q + t0 * qd, g->k_cache, g->v_cache,
                           c->pos + t0, c->seq + t0, c->part, c->att_count, c->attn + t0 * qd, q8k);
}

static int attention_block(struct cuda_accel *c, struct engine *e, int il, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct gpu_layer *g = &c->layers[il];
    const int64_t E = hp->n_embd, hd = hp->head_dim;
    const int64_t qd = (int64_t)e->n_head_local * hd, kvd = (int64_t)e->n_kv_local * hd;
    struct act_set s;
    const struct kcuda_weight *ws[] = { &g->wq, &g->wk, &g->wv }, *wo[] = { &g->wo };
    if (e->n_head_local == 0) return project_add(c, e, NULL, &g->wo, n_tok); /* GPU ranks: no heads here */
    int err = acts_prepare(c, &s, c->x, E, n_tok, E, g->attn_norm, hp->rms_eps, NULL, ws, 3);
    /* q, k and v: one launch for each run of neighbours kcuda_matvec_multi
     * takes together (qkv_run): all three when they share a type, or for a
     * decode token two K-quant types (Q6_K v beside Q4_K q and k in Q4_K_M
     * files), else q then k+v (Q8_0 k and v beside a Q4_K q in MoE files);
     * for llama's RoPE the one launch of all three also rotates q and k and
     * stores k and v in the cache */
    float *outs[] = { c->q, c->kx, c->vx };
    const int64_t ldos[] = { qd, kvd, kvd };
    const float *biases[] = { g->bq, g->bk, g->bv };
    bool roped = false;
    const void *acts[3] = { NULL, NULL, NULL };
    size_t sts[3] = { 0, 0, 0 };
    for (int j = 0; j < 3 && !err; j++)
        if (ws[j]->data) acts[j] = act_of(c, &s, ws[j], &sts[j]);
    for (int i = 0, n = 1; i < 3 && !err; i += n) {
        n = 1;
        if (!ws[i]->data) continue;
        n = qkv_run(c, ws, i, sts, n_tok);
        if (n == 3 && acts[1] == acts[0] && acts[2] == acts[0] && n_tok == 1 && c->qkv_one && c->qkv_rope &&
            kcuda_matvec_qkv_rope_ok(ws, sts[0], &c->shape, g->q_norm || g->k_norm)) {
            err = kcuda_matvec_qkv_rope(c->k, ws, acts[0], sts[0], outs, biases, &c->shape, c->cs, c->pos, c->seq,
                                        g->k_cache, g->v_cache);
            roped = true;
        } else if (n > 1) {
            err = kcuda_matvec_multi_acts(c->k, ws + i, n, acts + i, sts + i, n_tok, outs + i, ldos + i, biases + i);
        } else {
            err = kcuda_linear(c->k, ws[i], NULL, acts[i], sts[i], n_tok, outs[i], ldos[i], biases[i], KCUDA_OUT_STORE);
        }
    }
    if (!err && !roped)
        err = kcuda_rope_store(c->k, &c->shape, n_tok, c->q, c->kx, c->vx, g->q_norm, g->k_norm,
                               c->cs, c->pos, c->seq, g->k_cache, g->v_cache);
    /* a server's batch can open with decode tokens, one per sequence, before
     * a prompt's run: they get a launch of their own (the split kernels),
     * because the prompt kernel (kcuda_flash.cu) walks the sequences of a
     * tile of tokens one after another, slow for many long sequences */
    /* a decode token's attention join writes wo's Q8_K row itself (one
     * conversion launch less per layer) */
    const bool q8k = c->attn_q8k && n_tok == 1 && g->wo.data && vec_type(g->wo.type) == KCUDA_Q8_K &&
                     kcuda_attention_q8k(&c->shape, n_tok);
    if (!err && c->lead_decode) err = attend(c, e, g, 0, c->lead_decode, NULL);
    if (!err) err = attend(c, e, g, c->lead_decode, n_tok - c->lead_decode, q8k ? c->act[0] : NULL);
    if (!err && q8k) {
        s = (struct act_set){ .n = 1, .type = { KCUDA_Q8_K }, .stride = { kcuda_act_row_bytes(KCUDA_Q8_K, qd) },
                              .ptr = { c->act[0] } };
    } else if (!err) {
        err = acts_prepare(c, &s, c->attn, qd, n_tok, qd, NULL, 0.0f, NULL, wo, 1);
    }
    if (!err) err = project_add(c, e, &s, &g->wo, n_tok);
    return err;
}

/* gate, up -> silu(gate) * up into `h` [n_tok][ff] (ff = gate rows). */
static int swiglu_pair(struct cuda_accel *c, const struct act_set *s, const struct kcuda_weight *gate,
                       const struct kcuda_weight *up, int64_t n_tok, float *h, float *tmp)
{
    const int64_t ff = gate->n_out;
    if (pairable(gate, up) && vec_type(gate->type) == vec_type(up->type))
        return lin(c, s, gate, up, n_tok, h, ff, NULL, KCUDA_OUT_SWIGLU);
    int err = lin(c, s, gate, NULL, n_tok, h, ff, NULL, KCUDA_OUT_STORE);
    if (!err) err = lin(c, s, up, NULL, n_tok, tmp, ff, NULL, KCUDA_OUT_STORE);
    if (!err) err = kcuda_swiglu(c->k, h, tmp, n_tok, ff, ff);
    return err;
}

static int dense_ffn(struct cuda_accel *c, struct engine *e, int il, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct gpu_layer *g = &c->layers[il];
    const int64_t E = hp->n_embd, ff = g->w_gate.n_out;
    struct act_set s;
    const struct kcuda_weight *ws[] = { &g->w_gate, &g->w_up }, *wd[] = { &g->w_down };
    int err = acts_prepare(c, &s, c->x, E, n_tok, E, g->ffn_norm, hp->rms_eps, NULL, ws, 2);
    if (!err) err = swiglu_pair(c, &s, &g->w_gate, &g->w_up, n_tok, c->ffn_a, c->ffn_b);
    if (!err) err = acts_prepare(c, &s, c->ffn_a, ff, n_tok, ff, NULL, 0.0f, NULL, wd, 1);
    if (!err) err = project_add(c, e, &s, &g->w_down, n_tok);
    return err;
}

static bool router_fused(const struct cuda_accel *c, const struct engine *e, const struct gpu_layer *g, int n_tok)
{
    return c->moe_fused && g->gate_inp.type == KCUDA_F32 && n_tok <= KCUDA_MATVEC_TOK_MAX &&
           e->m->hp.n_embd % 4 == 0;
}

/* A decode token's ffn norm done by the fused router, which also writes the
 * experts' Q8_K row: when the experts take Q8_K rows and there is no shared
 * expert (whose activations could be of another type). */
static bool router_norms(const struct cuda_accel *c, const struct engine *e, const struct gpu_layer *g, int n_tok)
{
    return c->router_norm && n_tok == 1 && router_fused(c, e, g, n_tok) && !g->gate_shexp.data && g->n_local > 0 &&
           vec_type(g->gate_exps.type) == KCUDA_Q8_K && vec_type(g->up_exps.type) == KCUDA_Q8_K &&
           kcuda_moe_router_norm_ok(&g->gate_inp);
}

/* The router's logits, the top-k choices and their weights, and (decode)
 * the one-slot tile records: one fused launch for F32 router rows and
 * matrix-vector batches, else the product then kcuda_moe_route. On several
 * ranks the choices are indices among this rank's experts (g->local). With
 * rn (router_norms) the fused router norms x itself. */
static int moe_route_step(struct cuda_accel *c, struct engine *e, const struct gpu_layer *g,
                          const struct act_set *s, int n_tok, int tile_tok, const struct kcuda_router_norm *rn)
{
    const struct model_hparams *hp = &e->m->hp;
    int32_t *tiles = tile_tok == 1 ? c->tiles : NULL;
    if (router_fused(c, e, g, n_tok))
        return kcuda_moe_router(c->k, &g->gate_inp, rn ? c->x : c->xn, n_tok, hp->n_expert_used, hp->expert_norm,
                                c->router, c->route_count, c->sel, c->sel_w, tiles, g->local, rn);
    int err = lin(c, s, &g->gate_inp, NULL, n_tok, c->router, hp->n_expert, NULL, KCUDA_OUT_STORE);
    if (!err)
        err = kcuda_moe_route(c->k, c->router, n_tok, hp->n_expert, hp->n_expert_used, hp->expert_norm, c->sel,
                              c->sel_w, tiles, g->local);
    return err;
}

/* Prompt batches: grouped products on the tensor cores when the expert
 * weights' activations are Q8 or F16 (the F16 expansion keeps their
 * rounding) and a conversion slot is free for the F16 rows. */
static bool moe_grouped(const struct cuda_accel *c, const struct gpu_layer *g, const struct act_set *s,
                        int n_tok)
{
    const int tg = vec_type(g->gate_exps.type), td = vec_type(g->down_exps.type);
    const bool act_ok = (tg == KCUDA_Q8_K || tg == KCUDA_Q8_0 || tg == KCUDA_F16) &&
                        (td == KCUDA_Q8_K || td == KCUDA_Q8_0 || td == KCUDA_F16);
    return c->moe_fused && n_tok > KCUDA_MATVEC_TOK_MAX && act_ok && s->n < GPU_ACT_SLOTS &&
           pairable(&g->gate_exps, &g->up_exps) && g->gate_exps.n_in % 8 == 0 && g->down_exps.n_in % 8 == 0;
}

/* Expert products of a prompt batch: slots sorted by expert, gate/up with
 * SwiGLU into ffn_a [S][fe], down into ffn_out [S][E]; each product's
 * activations widened to F16 in the last conversion slot. */
static int moe_experts_grouped(struct cuda_accel *c, struct engine *e, const struct gpu_layer *g,
                               struct act_set *s, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const int64_t E = hp->n_embd, fe = g->gate_exps.n_out, S = (int64_t)n_tok * hp->n_expert_used;
    const int X = g->n_local, mg = kcuda_moe_max_groups(S, X);
    void *f16 = c->act[GPU_ACT_SLOTS - 1];
    const struct kcuda_weight *wd[] = { &g->down_exps };
    size_t st = 0;
    const void *a = act_of(c, s, &g->gate_exps, &st);
    int err = kcuda_moe_group(c->k, c->sel, S, X, c->order, c->groups);
    if (!err) err = kcuda_act_to_f16(c->k, vec_type(g->gate_exps.type), a, st, n_tok, E, f16);
    if (!err)
        err = kcuda_moe_gemm(c->k, &g->gate_exps, &g->up_exps, X, c->groups, mg, c->order, f16, E,
                             hp->n_expert_used, c->ffn_a, fe, KCUDA_OUT_SWIGLU);
    if (!err) err = acts_prepare(c, s, c->ffn_a, fe, S, fe, NULL, 0.0f, NULL, wd, 1);
    a = err ? NULL : act_of(c, s, &g->down_exps, &st);
    if (!err) err = kcuda_act_to_f16(c->k, vec_type(g->down_exps.type), a, st, S, fe, f16);
    if (!err)
        err = kcuda_moe_gemm(c->k, &g->down_exps, NULL, X, c->groups, mg, c->order, f16, fe, 1, c->ffn_out, E,
                             KCUDA_OUT_STORE);
    return err;
}

/* Gate/up of the experts with the matrix-vector kernels: tiles of slots
 * per expert (one slot each in decode, written by the router), SwiGLU into
 * ffn_a [S][fe]. */
static int moe_gate_up_tiled(struct cuda_accel *c, struct engine *e, const struct gpu_layer *g,
                             const struct act_set *s, int n_tok, int tile_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const int64_t fe = g->gate_exps.n_out, S = (int64_t)n_tok * hp->n_expert_used;
    const int max_tiles = tile_tok == 1 ? (int)S : kcuda_moe_max_tiles(S, g->n_local);
    int err = tile_tok != 1 ? kcuda_moe_plan(c->k, c->sel, S, g->n_local, tile_tok, c->tiles) : 0;
    size_t st = 0;
    const void *a = err ? NULL : act_of(c, s, &g->gate_exps, &st);
    if (!err && pairable(&g->gate_exps, &g->up_exps))
        return kcuda_matvec_experts(c->k, &g->gate_exps, &g->up_exps, c->tiles, max_tiles, tile_tok, a, st,
                                    hp->n_expert_used, c->ffn_a, fe, KCUDA_OUT_SWIGLU);
    if (!err)
        err = kcuda_matvec_experts(c->k, &g->gate_exps, NULL, c->tiles, max_tiles, tile_tok, a, st,
                                   hp->n_expert_used, c->ffn_a, fe, KCUDA_OUT_STORE);
    /* up into ffn_out, free until the down products (ffn_b holds the shared expert's) */
    const void *au = err ? NULL : act_of(c, s, &g->up_exps, &st);
    if (!err)
        err = kcuda_matvec_experts(c->k, &g->up_exps, NULL, c->tiles, max_tiles, tile_tok, au, st,
                                   hp->n_expert_used, c->ffn_out, fe, KCUDA_OUT_STORE);
    if (!err) err = kcuda_swiglu(c->k, c->ffn_a, c->ffn_out, S, fe, fe);
    return err;
}

/* Decode's down products and join in one launch (kcuda_moe_down_join):
 * GGML Q4_K or Q6_K experts against Q8_K rows, a few tokens. */
static bool moe_down_join_ok(const struct cuda_accel *c, const struct gpu_layer *g, int n_tok)
{
    const struct kcuda_weight *w = &g->down_exps;
    return c->moe_fused && n_tok <= 8 && (w->type == KCUDA_Q4_K || w->type == KCUDA_Q6_K) &&
           w->layout == KCUDA_LAYOUT_GGML && vec_type(w->type) == KCUDA_Q8_K && w->n_in % 256 == 0;
}

/* The experts' down products of the ffn_a rows, then the ordered join (and
 * the shared expert's term, ysh) added into jx. */
static int moe_down_tiled(struct cuda_accel *c, struct engine *e, const struct gpu_layer *g, struct act_set *s,
                          int n_tok, int tile_tok, float *jx)
{
    const struct model_hparams *hp = &e->m->hp;
    const int64_t E = hp->n_embd, fe = g->gate_exps.n_out, S = (int64_t)n_tok * hp->n_expert_used;
    const int max_tiles = tile_tok == 1 ? (int)S : kcuda_moe_max_tiles(S, g->n_local);
    const bool shared = g->gate_shexp.data != NULL;
    const struct kcuda_weight *wd[] = { &g->down_exps };
    int err = acts_prepare(c, s, c->ffn_a, fe, S, fe, NULL, 0.0f, NULL, wd, 1);
    size_t st = 0;
    const void *a = err ? NULL : act_of(c, s, &g->down_exps, &st);
    if (!err && moe_down_join_ok(c, g, n_tok))
        return kcuda_moe_down_join(c->k, &g->down_exps, a, st, jx, c->sel, c->sel_w, n_tok, hp->n_expert_used,
                                   shared ? c->ysh : NULL, g->gate_inp_shexp, c->xn);
    if (!err)
        err = kcuda_matvec_experts(c->k, &g->down_exps, NULL, c->tiles, max_tiles, tile_tok, a, st, 1, c->ffn_out,
                                   E, KCUDA_OUT_STORE);
    if (!err)
        err = kcuda_moe_join(c->k, jx, c->ffn_out, c->sel, c->sel_w, n_tok, hp->n_expert_used, E,
                             shared ? c->ysh : NULL, g->gate_inp_shexp, c->xn);
    return err;
}

/* Experts chosen on the device: router and top-k, the experts' products
 * (grouped on the tensor cores for prompt batches, else tiled matrix-vector
 * products), the shared expert, then the ordered join into x. On several
 * ranks the join of this rank's experts (and shared-expert slice) goes to
 * moe_part, which is summed over the ranks and then added to x; a rank
 * holding none of the layer's experts still routes (its choices are all
 * -1) and joins only its shared-expert slice. */
static int moe_ffn(struct cuda_accel *c, struct engine *e, int il, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const struct gpu_layer *g = &c->layers[il];
    const int64_t E = hp->n_embd;
    const int tile_tok = n_tok == 1 ? 1 : KCUDA_MOE_TILE;
    const bool shared = g->gate_shexp.data != NULL;
    struct act_set s;
    const struct kcuda_weight *ws[] = { &g->gate_inp, &g->gate_exps, &g->up_exps, &g->gate_shexp, &g->up_shexp };
    const struct kcuda_weight *wsd[] = { &g->down_shexp };
    float *jx = e->tp_size > 1 ? c->moe_part : c->x;
    const bool experts = g->n_local > 0;
    /* the ffn norm: a launch of its own, or (decode) done by the router */
    const bool normed = router_norms(c, e, g, n_tok);
    struct kcuda_router_norm rn;
    int err = 0;
    if (normed) {
        s = (struct act_set){ .n = 1, .type = { KCUDA_Q8_K }, .stride = { kcuda_act_row_bytes(KCUDA_Q8_K, E) },
                              .ptr = { c->act[0] } };
        rn = (struct kcuda_router_norm){ g->ffn_norm, hp->rms_eps, c->xn, c->act[0], s.stride[0] };
    } else {
        err = acts_prepare(c, &s, c->x, E, n_tok, E, g->ffn_norm, hp->rms_eps, c->xn, ws, 5);
    }
    if (!err && jx != c->x) err = kcuda_memset(c->k, jx, 0, sizeof(float) * (size_t)(n_tok * E));
    if (!err) err = moe_route_step(c, e, g, &s, n_tok, tile_tok, normed ? &rn : NULL);
    /* the shared expert's gate/up first: it reads this conversion, which the
     * down products' replaces */
    if (!err && shared) err = swiglu_pair(c, &s, &g->gate_shexp, &g->up_shexp, n_tok, c->ffn_b, c->ysh);
    const bool grouped = !err && experts && moe_grouped(c, g, &s, n_tok);
    if (!err && experts)
        err = grouped ? moe_experts_grouped(c, e, g, &s, n_tok) : moe_gate_up_tiled(c, e, g, &s, n_tok, tile_tok);
    const int64_t fs = g->gate_shexp.n_out;
    if (!err && shared) err = acts_prepare(c, &s, c->ffn_b, fs, n_tok, fs, NULL, 0.0f, NULL, wsd, 1);
    if (!err && shared) err = lin(c, &s, &g->down_shexp, NULL, n_tok, c->ysh, E, NULL, KCUDA_OUT_STORE);
    if (!err && experts && !grouped) err = moe_down_tiled(c, e, g, &s, n_tok, tile_tok, jx);
    else if (!err)
        err = kcuda_moe_join(c->k, jx, c->ffn_out, c->sel, c->sel_w, n_tok, hp->n_expert_used, E,
                             shared ? c->ysh : NULL, g->gate_inp_shexp, c->xn);
    if (!err && jx != c->x) err = join_sum(c, e, jx, n_tok * E);
    if (!err && jx != c->x) err = kcuda_add(c->k, c->x, jx, n_tok * E);
    return err;
}

_Static_assert(SAMPLER_BLOCK == 64, "kcuda_block_max64 takes the sampler's blocks");

/* Copy a decode token's logits to h_logits and their block maxima to
 * h_block_max (queued). */
static int copy_logits(struct cuda_accel *c)
{
    int err = kcuda_download(c->k, c->h_logits, c->logits, (size_t)c->output.n_out * 4);
    if (!err)
        err = kcuda_download(c->k, c->h_block_max, c->block_max,
                             (size_t)(c->output.n_out + SAMPLER_BLOCK - 1) / SAMPLER_BLOCK * 4);
    return err;
}

/* Logits of the single token of a decode batch and their block maxima,
 * then (queued) either the KCUDA_TOP_CANDS best tokens and their count
 * into h_cands, which most samplers need alone (half a kilobyte against
 * the vocabulary's logits), or the logits themselves (copy_logits). */
static int decode_logits(struct cuda_accel *c, struct engine *e)
{
    const int64_t E = e->m->hp.n_embd, V = c->output.n_out;
    struct act_set s;
    const struct kcuda_weight *wo[] = { &c->output };
    int err = acts_prepare(c, &s, c->x, E, 1, E, c->output_norm, e->m->hp.rms_eps, NULL, wo, 1);
    if (!err) err = lin(c, &s, &c->output, NULL, 1, c->logits, V, NULL, KCUDA_OUT_STORE);
    if (!err) err = kcuda_block_max64(c->k, c->logits, V, c->block_max);
    if (err || !c->top_cands) return err ? err : copy_logits(c);
    int32_t *count = &c->cands[KCUDA_TOP_CANDS].id;
    err = kcuda_top_cands(c->k, c->logits, V, c->block_max, KCUDA_TOP_CANDS, c->cands, count);
    if (!err) err = kcuda_download(c->k, c->h_cands, c->cands, (KCUDA_TOP_CANDS + 1) * sizeof(*c->cands));
    return err;
}

/* A decode token's inputs, which stage_in left in pinned memory, copied by
 * one kernel (the graph's first), so replaying the graph needs no copy call. */
static int decode_inputs(struct cuda_accel *c, const struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    void *const dst[] = { c->x, c->cs, c->pos, c->seq };
    const void *const src[] = { c->h_xin, c->h_cs, c->h_pos, c->h_seq };
    const size_t bytes[] = { (size_t)hp->n_embd * 4, (size_t)hp->n_rot * 4, 4, 4 };
    return kcuda_upload_gather(c->k, 4, dst, src, bytes);
}

/* The layers of a batch staged by stage_in, then x copied back to h_x
 * (and a decode token's logits or candidates, decode_logits). */
static int run_range(struct cuda_accel *c, struct engine *e, int n_tok, bool with_logits)
{
    int err = n_tok == 1 ? decode_inputs(c, e) : 0;
    for (int il = 0; il < c->n_layers && !err; il++) {
        err = attention_block(c, e, il, n_tok);
        if (!err) err = e->m->hp.n_expert ? moe_ffn(c, e, il, n_tok) : dense_ffn(c, e, il, n_tok);
    }
    if (!err && with_logits && c->has_output) err = decode_logits(c, e);
    if (!err) err = kcuda_download(c->k, c->h_x, c->x, (size_t)n_tok * (size_t)e->m->hp.n_embd * 4);
    return err;
}

/* One token: replay the captured graph (captured on first use) of the
 * step's attention form (attention_form). */
static int decode_step(struct cuda_accel *c, struct engine *e)
{
    struct kcuda_graph **g = &c->graph[c->graph_cur];
    if (!*g && !c->graph_off) {
        int err = kcuda_graph_begin(c->k);
        if (!err) {
            int run = run_range(c, e, 1, true);
            err = kcuda_graph_end(c->k, g);
            err = run ? run : err;
        }
        if (err) {
            tt_warn("GPU: decode runs without a CUDA graph (%s)", tt_error_detail());
            tt_error_clear();
            kcuda_graph_destroy(*g);
            *g = NULL;
            c->graph_off = true;
        }
    }
    if (*g) return kcuda_graph_launch(c->k, *g);
    return run_range(c, e, 1, true);
}

/* The attention form of a step's split kernels (decode tokens): clusters of
 * c->attn_cluster blocks per KV head joined in shared memory while every
 * position is below cluster_pos, else parts joined through global memory,
 * which spread a long context over more blocks (a cluster's blocks walk its
 * keys in turn). */
static void attention_form(struct cuda_accel *c, const struct engine *e, int n_tok)
{
    int32_t top = 0;
    for (int t = 0; t < n_tok; t++) top = TT_MAX(top, e->tok_pos[t]);
    c->graph_cur = c->attn_cluster && top < c->cluster_pos ? 0 : 1;
    kcuda_set_attn_cluster(c->k, c->graph_cur ? 0 : c->attn_cluster);
}

/* A batch's rows of x, RoPE table, positions and sequences into pinned
 * memory, then uploaded; a decode token's are read there by the step's
 * first kernel (decode_inputs). */
static int stage_in(struct cuda_accel *c, struct engine *e, int n_tok)
{
    const struct model_hparams *hp = &e->m->hp;
    const size_t xb = (size_t)n_tok * (size_t)hp->n_embd * 4, cb = (size_t)n_tok * (size_t)hp->n_rot * 4;
    if (hp->n_rot > 0) ops_rope_table(e, n_tok, e->rope_cs);
    memcpy(n_tok == 1 ? c->h_xin : c->h_x, e->x, xb);
    memcpy(c->h_cs, e->rope_cs, cb);
    memcpy(c->h_pos, e->tok_pos, (size_t)n_tok * 4);
    memcpy(c->h_seq, e->tok_seq, (size_t)n_tok * 4);
    int lead = 0;
    while (lead < n_tok && (lead + 1 == n_tok || e->tok_seq[lead + 1] != e->tok_seq[lead])) lead++;
    c->lead_decode = lead < n_tok ? lead : 0;
    if (n_tok == 1) return 0;
    int err = kcuda_upload(c->k, c->x, c->h_x, xb);
    if (!err) err = kcuda_upload(c->k, c->cs, c->h_cs, cb);
    if (!err) err = kcuda_upload(c->k, c->pos, c->h_pos, (size_t)n_tok * 4);
    if (!err) err = kcuda_upload(c->k, c->seq, c->h_seq, (size_t)n_tok * 4);
    return err;
}

static int fail(int err)
{
    tt_log(TT_LOG_ERROR, "GPU: %s", tt_error_detail());
    return err;
}

/* TT_GPU_PROFILE: re-run a batch with per-kernel timing (after the real run:
 * the input rows are uploaded again, so x and the cache end as they were). */
static void profile_step(struct cuda_accel *c, struct engine *e, int n_tok, double wall_ms)
{
    const bool decode = n_tok == 1;
    if (decode ? ++c->prof_decode_steps != 3 : (c->prof_batch_done || n_tok < 64)) return;
    c->prof_batch_done |= !decode;
    const size_t xb = (size_t)n_tok * (size_t)e->m->hp.n_embd * 4;
    fprintf(stderr, "GPU profile: %d-token step took %.3f ms on the host clock\n", n_tok, wall_ms);
    if (decode && c->graph[c->graph_cur]) {
        kcuda_upload(c->k, c->x, c->prof_x, xb);
        fprintf(stderr, "GPU profile: decode graph %.4f ms per token (device time of 20 replays)\n",
                kcuda_graph_time_ms(c->k, c->graph[c->graph_cur], 20));
    }
    kcuda_upload(c->k, c->x, c->prof_x, xb);
    kcuda_sync(c->k);
    kcuda_profile(c->k, true);
    int err = run_range(c, e, n_tok, decode);
    kcuda_profile(c->k, false);
    if (!err) err = kcuda_sync(c->k);
    if (err) tt_warn("GPU profile: %s", tt_error_detail());
    kcuda_profile_report(c->k, decode ? "one decode token, kernels one by one" : "one batch", decode ? 1 : n_tok);
}

static int cuda_run_layers(void *ctx, struct engine *e, int il0, int il1, int n_tok)
{
    struct cuda_accel *c = ctx;
    TT_ASSERT(il0 == 0 && il1 == c->n_layers && n_tok > 0 && n_tok <= c->B);
    const size_t xb = (size_t)n_tok * (size_t)e->m->hp.n_embd * 4;
    c->logits_ready = false;
    const double t0 = tt_now_s();
    if (c->prof_x) memcpy(c->prof_x, e->x, xb);
    int err = stage_in(c, e, n_tok);
    attention_form(c, e, n_tok);
    if (!err) err = n_tok == 1 ? decode_step(c, e) : run_range(c, e, n_tok, false);
    if (!err) err = kcuda_sync(c->k);
    if (err) return fail(err);
    memcpy(e->x, c->h_x, xb);
    if (c->prof_x) profile_step(c, e, n_tok, (tt_now_s() - t0) * 1e3);
    c->logits_ready = n_tok == 1 && c->has_output;
    c->logits_copied = c->logits_ready && !c->top_cands;
    return 0;
}

/* The last decode token's logits in h_logits (and h_block_max): copied now
 * when its step copied only the candidates. */
static int logits_to_host(struct cuda_accel *c)
{
    if (c->logits_copied) return 0;
    int err = copy_logits(c);
    if (!err) err = kcuda_sync(c->k);
    c->logits_copied = !err;
    return err;
}

static int cuda_logits(void *ctx, struct engine *e, const int32_t *rows, int n, float *out)
{
    struct cuda_accel *c = ctx;
    const int64_t E = e->m->hp.n_embd, V = c->output.n_out;
    if (c->logits_ready && n == 1 && rows[0] == 0) {
        const int err = logits_to_host(c);
        if (!err) memcpy(out, c->h_logits, (size_t)V * 4);
        return err ? fail(err) : 0;
    }
    const struct kcuda_weight *wo[] = { &c->output };
    int err = 0;
    for (int r0 = 0; r0 < n && !err; r0 += GPU_LOGIT_ROWS) {
        const int m = TT_MIN(GPU_LOGIT_ROWS, n - r0);
        struct act_set s;
        memcpy(c->h_pos, rows + r0, (size_t)m * 4);
        err = kcuda_upload(c->k, c->rows, c->h_pos, (size_t)m * 4);
        if (!err) err = kcuda_gather_rows(c->k, c->x, c->rows, m, E, c->xn);
        if (!err) err = acts_prepare(c, &s, c->xn, E, m, E, c->output_norm, e->m->hp.rms_eps, NULL, wo, 1);
        if (!err) err = lin(c, &s, &c->output, NULL, m, c->logits, V, NULL, KCUDA_OUT_STORE);
        if (!err) err = kcuda_download(c->k, out + (size_t)r0 * (size_t)V, c->logits, (size_t)m * (size_t)V * 4);
        if (!err) err = kcuda_sync(c->k);
    }
    return err ? fail(err) : 0;
}

/* ---- set-up and teardown ---- */

static const float *cuda_logits_host(void *ctx, const float **block_max)
{
    struct cuda_accel *c = ctx;
    *block_max = c->h_block_max;
    if (!c->logits_ready) return NULL;
    const int err = logits_to_host(c);
    if (err) fail(err);
    return err ? NULL : c->h_logits;
}

_Static_assert(sizeof(struct kcuda_cand) == sizeof(struct sampler_cand) &&
                   offsetof(struct kcuda_cand, id) == offsetof(struct sampler_cand, id) &&
                   offsetof(struct kcuda_cand, logit) == offsetof(struct sampler_cand, logit),
               "the device's candidates are read as the sampler's");

static const struct sampler_cand *cuda_cands_host(void *ctx, int *n)
{
    const struct cuda_accel *c = ctx;
    const int32_t count = c->h_cands[KCUDA_TOP_CANDS].id;
    if (!c->logits_ready || !c->top_cands || count <= 0) return NULL;
    *n = count;
    return (const struct sampler_cand *)c->h_cands;
}

static double cuda_copy_bandwidth_gbs(void *ctx)
{
    return kcuda_copy_bandwidth_gbs(((struct cuda_accel *)ctx)->k);
}

static void cuda_destroy(void *ctx)
{
    struct cuda_accel *c = ctx;
    if (!c) return;
    kcuda_graph_destroy(c->graph[0]);
    kcuda_graph_destroy(c->graph[1]);
    kcuda_free(c->arena);
    kcuda_free(c->kv);
    kcuda_free(c->bufs);
    kcuda_host_free(c->h_x);
    kcuda_host_free(c->h_cs);
    kcuda_host_free(c->h_pos);
    kcuda_host_free(c->h_seq);
    kcuda_host_free(c->h_logits);
    kcuda_host_free(c->h_cands);
    kcuda_host_free(c->h_join);
    comm_nccl_free(c->nccl);
    kcuda_destroy(c->k);
    free(c->layers);
    free(c->prof_x);
    free(c);
}

/* What the kernels cannot take, as a message; NULL if the model fits them. */
static const char *unsupported(const struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    if (e->n_ranks > 1 && e->join != PLAN_JOIN_SUM)
        return "GPU ranks join partial sums: run with --tp-join sum (the gathering join stays on the CPU)";
    if (e->tp_size != e->n_ranks) return "GPU layers in layouts with stages or idle ranks are not supported yet";
    if (hp->head_dim > KCUDA_HEAD_DIM_MAX) return "heads longer than 256";
    if (hp->n_expert > 1024 || hp->n_expert_used > 32) return "more than 1024 experts or 32 per token";
    if (e->n_batch > 65535) return "batches over 65535 tokens";
    return NULL;
}

/* Decide how many layers go to the device: bytes of each layer (weights and
 * cache) against the free memory less the margin and the buffers. */
static int choose_layers(struct cuda_accel *c, struct engine *e, int n_req, uint64_t fixed,
                         uint64_t *w_bytes, uint64_t *out_bytes)
{
    const int L = e->m->hp.n_layer;
    struct placer p = { .c = c, .count = true };
    uint64_t *lb = calloc((size_t)L, sizeof(uint64_t));
    if (!lb) return tt_error_set(TT_ENOMEM, "out of host memory");
    for (int il = 0; il < L; il++) {
        const uint64_t before = p.used;
        place_layer(&p, e, il);
        lb[il] = p.used - before;
    }
    const uint64_t before = p.used;
    place_output(&p, e);
    *out_bytes = p.used - before;
    size_t fr = 0, tot = 0;
    int err = kcuda_mem_info(c->k, &fr, &tot);
    if (c->mem_share > 1) fr = TT_MIN(fr, tot / (size_t)c->mem_share); /* GPU ranks sharing the device */
    const uint64_t kvb = 2 * kv_layer_bytes(e);
    const uint64_t avail = fr > fixed + GPU_MARGIN_BYTES ? fr - fixed - GPU_MARGIN_BYTES : 0;
    uint64_t used = 0;
    int n = 0;
    while (!err && n < L && (n_req < 0 || n < n_req) && used + lb[n] + kvb <= avail) used += lb[n] + kvb, n++;
    if (!err && n_req > 0 && n < TT_MIN(n_req, L))
        err = tt_error_set(TT_ENOMEM, "%d layers need more GPU memory than the %.1f GiB free; "
                           "use --gpu-layers %d or fewer, or a smaller --ctx",
                           TT_MIN(n_req, L), (double)fr / (1 << 30), n);
    c->n_layers = n;
    c->has_output = n == L && used + *out_bytes <= avail;
    *w_bytes = 0;
    for (int il = 0; il < n; il++) *w_bytes += lb[il];
    free(lb);
    return err;
}

static int alloc_all(struct cuda_accel *c, struct engine *e, uint64_t w_bytes, size_t buf_bytes)
{
    const struct model_hparams *hp = &e->m->hp;
    const size_t B = (size_t)c->B;
    int err = kcuda_malloc(c->k, (void **)&c->arena, w_bytes, "the weights");
    if (!err) err = kcuda_malloc(c->k, (void **)&c->kv, 2 * kv_layer_bytes(e) * (size_t)c->n_layers, "the KV cache");
    if (!err) err = kcuda_malloc(c->k, (void **)&c->bufs, buf_bytes, "activations");
    if (!err) err = kcuda_host_alloc((void **)&c->h_x, (B + 1) * (size_t)hp->n_embd * 4);
    if (!err) c->h_xin = c->h_x + B * (size_t)hp->n_embd;
    if (!err) err = kcuda_host_alloc((void **)&c->h_cands, (KCUDA_TOP_CANDS + 1) * sizeof(*c->h_cands));
    if (!err) err = kcuda_host_alloc((void **)&c->h_cs, B * (size_t)TT_MAX(hp->n_rot, 2) * 4);
    if (!err) err = kcuda_host_alloc((void **)&c->h_pos, B * 4);
    if (!err) err = kcuda_host_alloc((void **)&c->h_seq, B * 4);
    const size_t nv = (size_t)TT_MAX(e->n_vocab_local, 1);
    if (!err) err = kcuda_host_alloc((void **)&c->h_logits, (nv + nv / SAMPLER_BLOCK + 1) * 4);
    if (!err) c->h_block_max = c->h_logits + nv;
    if (!err) err = kcuda_memset(c->k, c->bufs, 0, buf_bytes); /* attention counters start at zero */
    if (err) return err;
    layout_bufs(c, e, c->bufs);
    for (int il = 0; il < c->n_layers; il++) {
        c->layers[il].k_cache = c->kv + (size_t)(2 * il) * kv_layer_bytes(e);
        c->layers[il].v_cache = c->kv + (size_t)(2 * il + 1) * kv_layer_bytes(e);
    }
    return 0;
}

static int upload_all(struct cuda_accel *c, struct engine *e, uint64_t w_bytes)
{
    struct placer p = { .c = c, .prog = { .start_s = tt_now_s(), .last_pct = -1, .total = w_bytes } };
    int err = 0;
    for (int il = 0; il < c->n_layers && !err; il++) err = place_layer(&p, e, il);
    if (!err && c->has_output) err = place_output(&p, e);
    if (!err) err = kcuda_sync(c->k);
    if (p.prog.shown) fprintf(stderr, "\r%-10s done in %.1f s%30s\n", "to GPU", tt_now_s() - p.prog.start_s, "");
    TT_ASSERT(err || p.used <= w_bytes);
    return err;
}

static void fill_shape(struct cuda_accel *c, const struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    c->shape = (struct kcuda_attn_shape){
        .n_head = e->n_head_local, .n_head_kv = e->n_kv_local, .head_dim = hp->head_dim,
        .n_rot = hp->n_rot, .group = hp->n_head / hp->n_head_kv, .head_begin = e->slice.head.begin,
        .kv_begin = e->slice.kv.begin, .neox = hp->rope_type == MODEL_ROPE_NEOX,
        .kv_type = e->kv_type == TT_TYPE_F16 ? KCUDA_F16 : KCUDA_F32, .n_ctx = e->n_ctx,
        .eps = hp->rms_eps,
    };
}

/* ---- GPU ranks: set-up ----
 * Two collectives keep the ranks in step, so that their joins pair up:
 * ranks_agree() before any device work (all ranks take GPU layers or none
 * does; which device; NCCL or host-staged), ranks_finish() after each rank's
 * own set-up (all succeed or all fail; the same number of device layers). */

struct rank_place {
    int device;    /* CUDA device of this rank: local rank % devices */
    int mem_share; /* ranks of this host on that device */
    bool use_nccl;
};

/* What a rank tells the others before any device work. */
struct rank_gpu_info {
    int32_t ok;      /* it can run GPU layers */
    int32_t own_gpu; /* its host has at most one rank per GPU */
    int32_t nccl_ok; /* it loaded NCCL (and TT_NCCL does not forbid it) */
};

static int ranks_agree(struct engine *e, const char *why, int n_dev, struct rank_place *out)
{
    const int R = e->n_ranks;
    int local = 0, on_host = 0;
    for (int r = 0; r < R; r++) {
        if (strcmp(comm_host(e->comm, r), comm_host(e->comm, e->rank))) continue;
        local += r < e->rank;
        on_host++;
    }
    const char *env = getenv("TT_NCCL");
    struct rank_gpu_info mine = { !why && n_dev > 0, n_dev > 0 && on_host <= n_dev, 0 };
    if (mine.ok && mine.own_gpu && !(env && !atoi(env))) {
        mine.nccl_ok = comm_nccl_load() == 0;
        if (!mine.nccl_ok) tt_warn("GPU rank %d joins through the host: %s", e->rank, tt_error_detail());
        tt_error_clear();
    }
    struct rank_gpu_info *all = calloc((size_t)R, sizeof(*all));
    if (!all) return tt_error_set(TT_ENOMEM, "out of host memory");
    int err = comm_allgather(e->comm, &mine, sizeof(mine), all);
    int bad = -1;
    bool nccl = true;
    for (int r = 0; r < R && !err; r++) {
        if (!all[r].ok && bad < 0) bad = r;
        nccl = nccl && all[r].own_gpu && all[r].nccl_ok;
    }
    free(all);
    if (err) return err;
    if (bad >= 0) {
        err = why ? tt_error_set(TT_EUNSUPPORTED, "%s; run with --gpu-layers 0", why)
              : n_dev <= 0 ? tt_error_set(TT_EUNSUPPORTED, "no CUDA GPU found")
                           : tt_error_set(TT_EUNSUPPORTED, "rank %d cannot run GPU layers, so no rank does", bad);
        if (e->rank == 0 && n_dev > 0) tt_warn("GPU: layers stay on the CPU: %s", tt_error_detail());
        return err;
    }
    *out = (struct rank_place){ .device = local % n_dev, .use_nccl = nccl };
    for (int l = 0; l < on_host; l++) out->mem_share += l % n_dev == out->device;
    return 0;
}

/* The joins' means: NCCL (falling back to the host when any rank fails to
 * set it up), or pinned host staging, which cannot be captured in a graph. */
static int ranks_join_setup(struct cuda_accel *c, struct engine *e)
{
    int err = 0;
    if (c->use_nccl) {
        err = comm_nccl_init(&c->nccl, e->comm);
        const bool ok = err == 0;
        bool all_ok = false;
        if (err) tt_warn("GPU rank %d: %s", e->rank, tt_error_detail());
        tt_error_clear();
        if ((err = comm_all_true(e->comm, ok, &all_ok))) return err;
        /* one all-reduce now, outside any graph capture: NCCL connects its
         * peers on first use, which a capture cannot contain */
        if (all_ok) {
            err = comm_nccl_allreduce_sum(c->nccl, c->ffn_out, e->m->hp.n_embd, kcuda_stream(c->k));
            return err ? err : kcuda_sync(c->k);
        }
        comm_nccl_free(c->nccl);
        c->nccl = NULL;
        c->use_nccl = false;
        if (e->rank == 0) tt_warn("GPU: NCCL could not be set up on every rank; joining through the host");
    }
    c->graph_off = true;
    return kcuda_host_alloc((void **)&c->h_join, (size_t)c->B * (size_t)e->m->hp.n_embd * 4);
}

static int ranks_finish(struct cuda_accel *c, struct engine *e, int err)
{
    const int R = e->n_ranks;
    int32_t mine[2] = { err, c->n_layers };
    int32_t *all = calloc((size_t)R * 2, sizeof(int32_t));
    if (!all) return err ? err : tt_error_set(TT_ENOMEM, "out of host memory");
    int cerr = comm_allgather(e->comm, mine, sizeof(mine), all);
    int bad = -1, n_min = c->n_layers;
    for (int r = 0; r < R && !cerr; r++) {
        if (all[2 * r] && bad < 0) bad = r;
        n_min = TT_MIN(n_min, all[2 * r + 1]);
    }
    free(all);
    if (err || cerr) return err ? err : cerr;
    if (bad >= 0) return tt_error_set(TT_EDEVICE, "GPU rank %d failed to set up (its message says why)", bad);
    if (n_min < c->n_layers) { /* the joins of every device layer pair up with the other ranks' */
        c->n_layers = n_min;
        c->has_output = false;
    }
    err = ranks_join_setup(c, e);
    if (!err && e->rank == 0)
        tt_info("GPU ranks: %d, %d layers each, joins %s%s", R, c->n_layers,
                c->nccl ? "with NCCL" : "through the host", c->mem_share > 1 ? " (ranks share a GPU)" : "");
    return err;
}

int engine_gpu_count(void) { return TT_MAX(kcuda_device_count(), 0); }

int engine_accel_cuda_create(struct engine *e, int n_gpu_layers, struct engine_accel *out)
{
    memset(out, 0, sizeof(*out));
    const struct model_hparams *hp = &e->m->hp;
    const char *why = unsupported(e);
    const int n_dev = kcuda_device_count();
    struct rank_place place = { 0, 1, false };
    if (e->n_ranks > 1) { /* collective: every rank reaches ranks_finish below */
        int err = ranks_agree(e, why, n_dev, &place);
        if (err) return err;
    }
    if (why) return tt_error_set(TT_EUNSUPPORTED, "%s; run with --gpu-layers 0", why);
    if (n_dev <= 0) return tt_error_set(TT_EUNSUPPORTED, "no CUDA GPU found");
    struct cuda_accel *c = calloc(1, sizeof(*c));
    if (!c || !(c->layers = calloc((size_t)hp->n_layer, sizeof(*c->layers)))) {
        free(c);
        return tt_error_set(TT_ENOMEM, "out of host memory");
    }
    c->device = place.device;
    c->mem_share = place.mem_share;
    c->use_nccl = place.use_nccl;
    c->B = e->n_batch;
    c->n_slots_max = c->B * TT_MAX(hp->n_expert_used, 1);
    c->max_tiles = hp->n_expert ? kcuda_moe_max_tiles(c->n_slots_max, hp->n_expert) : 1;
    c->max_groups = hp->n_expert ? kcuda_moe_max_groups(c->n_slots_max, hp->n_expert) : 1;
    c->moe_fused = tt_env_int("TT_GPU_MOE_FUSED", 1);
    c->attn_q8k = tt_env_int("TT_GPU_ATTN_Q8K", 1);
    c->qkv_one = tt_env_int("TT_GPU_QKV_ONE", 1);
    c->qkv_rope = tt_env_int("TT_GPU_QKV_ROPE", 1);
    c->router_norm = tt_env_int("TT_GPU_ROUTER_NORM", 1);
    /* one rank samples from the candidates; several gather their logits'
     * candidates on the host (engine_dist.c), so the graph copies the logits */
    c->top_cands = tt_env_int("TT_GPU_TOP_CANDS", 1) && e->n_ranks == 1 && kcuda_top_cands_ok(e->n_vocab_local);
    c->graph_off = !tt_env_int("TT_GPU_GRAPH", 1);
    if (tt_env_int("TT_GPU_PROFILE", 0))
        c->prof_x = malloc(sizeof(float) * (size_t)c->B * (size_t)hp->n_embd);
    fill_shape(c, e);
    uint64_t w_bytes = 0, out_bytes = 0;
    const size_t buf_bytes = layout_bufs(c, e, NULL), scratch = scratch_bytes(e, c->B);
    int err = kcuda_create(&c->k, c->device, scratch);
    if (!err) {
        c->attn_cluster = kcuda_set_attn_cluster(c->k, tt_env_int("TT_GPU_ATTN_CLUSTER", 16));
        c->cluster_pos = tt_env_int("TT_GPU_ATTN_CLUSTER_POS", 4096);
    }
    if (!err) err = choose_layers(c, e, n_gpu_layers, buf_bytes + 2 * (uint64_t)hp->n_embd * 4, &w_bytes, &out_bytes);
    if (!err && c->n_layers == 0)
        err = tt_error_set(TT_EUNSUPPORTED, "not even one layer fits in the GPU's free memory");
    if (!err) err = alloc_all(c, e, w_bytes + (c->has_output ? out_bytes : 0), buf_bytes);
    if (!err) err = upload_all(c, e, w_bytes + (c->has_output ? out_bytes : 0));
    if (e->n_ranks > 1) err = ranks_finish(c, e, err);
    if (err) {
        cuda_destroy(c);
        return err;
    }
    if (hp->n_expert && e->tp_size > 1 && e->moe_every) { /* the GPUs hold a fixed set of experts */
        e->moe_every = 0;
        tt_info("GPU ranks: experts stay where the static placement puts them (no live balancing)");
    }
    tt_info("GPU %s: %d of %d layers%s, %.2f GiB of weights, KV cache %.1f MiB", kcuda_device_name(c->k),
            c->n_layers, hp->n_layer, c->has_output ? " and the output" : "",
            (double)(w_bytes + (c->has_output ? out_bytes : 0)) / (1 << 30),
            2.0 * (double)kv_layer_bytes(e) * c->n_layers / 1048576.0);
    out->ctx = c;
    out->n_layers_accel = c->n_layers;
    out->run_layers = cuda_run_layers;
    out->logits = c->has_output ? cuda_logits : NULL;
    out->logits_host = c->has_output ? cuda_logits_host : NULL;
    out->cands_host = c->has_output ? cuda_cands_host : NULL;
    out->destroy = cuda_destroy;
    out->copy_bandwidth_gbs = cuda_copy_bandwidth_gbs;
    return 0;
}
