/*
 * plan_model.c: a model as the planner costs it (plan_cost.h): per layer
 * and part (attention projections, FFN, experts, norms) the bytes of its
 * weights and their multiply-adds, from a loaded model's tensors or from a
 * shape and a quantization mix as llama.cpp's *_M types choose it; per
 * weight type the multiply-adds of a prompt and the bytes a decode step
 * streams; and the rate of a mix of weight types. Pure: no clock, file or
 * global.
 */
#include "plan_cost.h"

#include <stdlib.h>
#include <string.h>

static enum plan_part part_of(const struct model_layer *l, const struct model_weight *w)
{
    if (w == &l->wq || w == &l->bq) return PLAN_PART_Q;
    if (w == &l->wk || w == &l->wv || w == &l->bk || w == &l->bv) return PLAN_PART_KV;
    if (w == &l->wo) return PLAN_PART_O;
    if (w == &l->w_gate || w == &l->w_up) return PLAN_PART_UP;
    if (w == &l->w_down) return PLAN_PART_DOWN;
    if (w == &l->gate_inp) return PLAN_PART_ROUTER;
    if (w == &l->gate_exps || w == &l->up_exps) return PLAN_PART_EXP_UP;
    if (w == &l->down_exps) return PLAN_PART_EXP_DOWN;
    if (w == &l->gate_shexp || w == &l->up_shexp) return PLAN_PART_SH_UP;
    if (w == &l->down_shexp) return PLAN_PART_SH_DOWN;
    return PLAN_PART_NORM; /* norms, q/k norms, the shared-expert gate: on every rank */
}

/* The type `tutti gen` stores a tensor in. This mirrors model_gen.c's
 * pick_type and use_more_bits (llama-quantize's *_M choices); the test
 * shape_matches_file compares the two on generated files, so a change there
 * that is not made here fails `make test`. */
static bool use_more_bits(int il, int n_layer)
{
    return il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2;
}

static uint32_t mix_type(enum tt_type base, bool mix, const struct model_hparams *hp,
                         const char *name, int il, int64_t ne0)
{
    uint32_t t = (uint32_t)base;
    const bool v_or_down = strstr(name, "attn_v") || strstr(name, "ffn_down");
    if (mix && !strcmp(name, "output.weight"))
        t = TT_TYPE_Q6_K;
    else if (mix && v_or_down && use_more_bits(il, hp->n_layer))
        t = TT_TYPE_Q6_K;
    else if (mix && hp->n_expert >= 8 && (strstr(name, "attn_k.") || strstr(name, "attn_v.")))
        t = TT_TYPE_Q8_0;
    const struct tt_type_traits *tr = tt_type_get(t);
    if (ne0 % tr->block_size == 0) return t;
    return ne0 % QK8_0 == 0 && tr->is_quantized ? TT_TYPE_Q8_0 : TT_TYPE_F16;
}

struct visit {
    struct plan_model *pm;
    const struct model_layer *l;
    int il;
    bool from_file; /* types and presence from the bound model, else from the mix */
    enum tt_type base;
    bool mix;
    int32_t wo_block; /* largest activation blocks seen (alignment of the sum join) */
    int32_t down_block, dexp_block, dsh_block;
};

static void visit_weight(void *ctx, struct model_weight *w, const char *name, bool required,
                         bool vector, int64_t ne0, int64_t ne1, int64_t ne2)
{
    struct visit *v = ctx;
    uint32_t type;
    if (v->from_file) {
        if (!w->data) return;
        type = w->type;
    } else {
        if (!required) return;
        type = vector || strstr(name, "ffn_gate_inp")
                   ? TT_TYPE_F32
                   : mix_type(v->base, v->mix, &v->pm->hp, name, v->il, ne0);
    }
    const enum plan_part p = part_of(v->l, w);
    const uint64_t elems = (uint64_t)ne0 * (uint64_t)ne1 * (uint64_t)ne2;
    uint64_t bytes = v->from_file
                         ? w->row_bytes * (uint64_t)ne1 * (uint64_t)ne2
                         : tt_row_size((enum tt_type)type, ne0) * (uint64_t)ne1 * (uint64_t)ne2;
    struct plan_layer_cost *lc = &v->pm->layers[v->il];
    const bool expert = p == PLAN_PART_EXP_UP || p == PLAN_PART_EXP_DOWN;
    lc->bytes[p] += expert ? bytes / (uint64_t)ne2 : bytes;
    lc->elems[p] += expert ? elems / (uint64_t)ne2 : elems;
    if (type < TT_TYPE_COUNT) {
        v->pm->elems_by_type[type] += elems;
        v->pm->decode_bytes_by_type[type] +=
            expert ? bytes / (uint64_t)ne2 * (uint64_t)v->pm->hp.n_expert_used : bytes;
    }
    if (w == &v->l->wo) v->wo_block = TT_MAX(v->wo_block, plan_act_block(type));
    if (w == &v->l->w_down) v->down_block = TT_MAX(v->down_block, plan_act_block(type));
    if (w == &v->l->down_exps) v->dexp_block = TT_MAX(v->dexp_block, plan_act_block(type));
    if (w == &v->l->down_shexp) v->dsh_block = TT_MAX(v->dsh_block, plan_act_block(type));
}

static int model_layers(struct plan_model *pm, struct visit *v, const struct model *m)
{
    const struct model_hparams *hp = &pm->hp;
    pm->layers = calloc((size_t)hp->n_layer, sizeof(*pm->layers));
    if (!pm->layers) return tt_error_set(TT_ENOMEM, "out of memory for the layer costs");
    struct model_layer dummy;
    memset(&dummy, 0, sizeof(dummy));
    v->pm = pm;
    v->wo_block = v->down_block = v->dexp_block = v->dsh_block = 1;
    for (int il = 0; il < hp->n_layer; il++) {
        struct model_layer *l = m ? &m->layers[il] : &dummy;
        v->l = l;
        v->il = il;
        model_visit_layer(hp, il, l, visit_weight, v);
    }
    pm->align.head_unit = plan_units_per_block(v->wo_block, hp->head_dim);
    pm->align.ff_unit = v->down_block;
    pm->align.ff_exp_unit = v->dexp_block;
    pm->align.shexp_unit = v->dsh_block;
    pm->kv_elem_bytes = 2;
    return 0;
}

int plan_model_from_model(struct plan_model *pm, const struct model *m)
{
    memset(pm, 0, sizeof(*pm));
    pm->hp = m->hp;
    struct visit v = {.from_file = true};
    int err = model_layers(pm, &v, m);
    if (err) return err;
    plan_align_for_model(m, &pm->align);
    const struct model_weight *e = &m->token_embd, *o = &m->output;
    pm->embd_bytes = e->row_bytes * (uint64_t)e->ne[1];
    pm->embd_row_bytes = e->row_bytes;
    pm->output_bytes = o->row_bytes * (uint64_t)o->ne[1];
    pm->output_elems = (uint64_t)o->ne[0] * (uint64_t)o->ne[1];
    pm->output_norm_bytes = m->output_norm.row_bytes;
    pm->output_type = o->type < TT_TYPE_COUNT ? o->type : TT_TYPE_COUNT;
    if (o->type < TT_TYPE_COUNT) {
        pm->elems_by_type[o->type] += pm->output_elems;
        pm->decode_bytes_by_type[o->type] += pm->output_bytes;
    }
    pm->file_bytes = m->file.size_bytes ? m->file.size_bytes : m->weight_bytes;
    return 0;
}

static int check_shape(const struct model_hparams *hp)
{
    if (hp->arch < 0 || hp->arch >= MODEL_ARCH_COUNT)
        return tt_error_set(TT_EINVAL, "unknown architecture");
    if (hp->n_layer < 1 || hp->n_layer > MODEL_LAYERS_MAX || hp->n_embd < 1 ||
        hp->n_embd > MODEL_DIM_MAX || hp->n_vocab < 1 || hp->n_vocab > MODEL_VOCAB_MAX)
        return tt_error_set(TT_EINVAL,
                            "layers, width and vocabulary must be in [1, %d], [1, %d], [1, %d]",
                            MODEL_LAYERS_MAX, MODEL_DIM_MAX, MODEL_VOCAB_MAX);
    if (hp->n_head < 1 || hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv || hp->head_dim < 1 ||
        (int64_t)hp->n_head * hp->head_dim > MODEL_DIM_MAX)
        return tt_error_set(TT_EINVAL,
                            "heads: %d query heads must be a multiple of %d KV heads, "
                            "head size %d",
                            hp->n_head, hp->n_head_kv, hp->head_dim);
    const bool moe =
        hp->arch == MODEL_ARCH_QWEN2MOE || hp->arch == MODEL_ARCH_QWEN3MOE || hp->n_expert;
    if (moe &&
        (hp->n_expert < 1 || hp->n_expert > MODEL_EXPERTS_MAX || hp->n_expert_used < 1 ||
         hp->n_expert_used > hp->n_expert || hp->n_ff_exp < 1 || hp->n_ff_exp > MODEL_DIM_MAX))
        return tt_error_set(TT_EINVAL,
                            "experts: need 1 <= used (%d) <= experts (%d) <= %d and an "
                            "expert width",
                            hp->n_expert_used, hp->n_expert, MODEL_EXPERTS_MAX);
    if (!moe && (hp->n_ff < 1 || hp->n_ff > MODEL_DIM_MAX))
        return tt_error_set(TT_EINVAL, "a dense model needs an FFN width in [1, %d]",
                            MODEL_DIM_MAX);
    if (hp->n_ff_shexp < 0 || hp->n_ff_shexp > MODEL_DIM_MAX)
        return tt_error_set(TT_EINVAL, "shared expert width out of range");
    return 0;
}

int plan_model_from_shape(struct plan_model *pm, const struct model_hparams *hp, enum tt_type base,
                          bool mix_m, bool tied_output)
{
    memset(pm, 0, sizeof(*pm));
    int err = check_shape(hp);
    if (err) return err;
    if (!tt_type_is_stored(base))
        return tt_error_set(TT_EINVAL, "type %d cannot be stored", (int)base);
    pm->hp = *hp;
    if (!(hp->arch == MODEL_ARCH_QWEN2MOE || hp->arch == MODEL_ARCH_QWEN3MOE || hp->n_expert))
        pm->hp.n_expert = pm->hp.n_expert_used = pm->hp.n_ff_exp = pm->hp.n_ff_shexp = 0;
    struct visit v = {.from_file = false, .base = base, .mix = mix_m};
    if ((err = model_layers(pm, &v, NULL))) return err;
    const int last = hp->n_layer - 1;
    const uint32_t te = mix_type(base, mix_m, hp, "token_embd.weight", 0, hp->n_embd);
    const uint32_t to =
        tied_output ? te : mix_type(base, mix_m, hp, "output.weight", last, hp->n_embd);
    pm->embd_row_bytes = tt_row_size((enum tt_type)te, hp->n_embd);
    pm->embd_bytes = pm->embd_row_bytes * (uint64_t)hp->n_vocab;
    pm->output_bytes = tt_row_size((enum tt_type)to, hp->n_embd) * (uint64_t)hp->n_vocab;
    pm->output_elems = (uint64_t)hp->n_embd * (uint64_t)hp->n_vocab;
    pm->output_norm_bytes = 4 * (uint64_t)hp->n_embd;
    pm->output_type = to < TT_TYPE_COUNT ? to : TT_TYPE_COUNT;
    if (to < TT_TYPE_COUNT) {
        pm->elems_by_type[to] += pm->output_elems;
        pm->decode_bytes_by_type[to] += pm->output_bytes;
    }
    pm->file_bytes = pm->embd_bytes + (tied_output ? 0 : pm->output_bytes) + pm->output_norm_bytes;
    for (int il = 0; il < hp->n_layer; il++)
        for (int p = 0; p < PLAN_PART_COUNT; p++) {
            const bool expert = p == PLAN_PART_EXP_UP || p == PLAN_PART_EXP_DOWN;
            pm->file_bytes += pm->layers[il].bytes[p] * (expert ? (uint64_t)pm->hp.n_expert : 1);
        }
    return 0;
}

void plan_model_free(struct plan_model *pm)
{
    free(pm->layers);
    pm->layers = NULL;
}

uint64_t plan_model_bytes_per_token(const struct plan_model *pm)
{
    uint64_t total = pm->output_bytes + pm->output_norm_bytes + pm->embd_row_bytes;
    for (int il = 0; il < pm->hp.n_layer; il++) {
        const struct plan_layer_cost *lc = &pm->layers[il];
        for (int p = 0; p < PLAN_PART_COUNT; p++)
            if (p != PLAN_PART_EXP_UP && p != PLAN_PART_EXP_DOWN) total += lc->bytes[p];
        total += (lc->bytes[PLAN_PART_EXP_UP] + lc->bytes[PLAN_PART_EXP_DOWN]) *
                 (uint64_t)pm->hp.n_expert_used;
    }
    return total;
}

double plan_model_type_share(const struct plan_model *pm, enum tt_type type)
{
    uint64_t all = 0;
    for (int t = 0; t < TT_TYPE_COUNT; t++) all += pm->elems_by_type[t];
    return all ? (double)pm->elems_by_type[type] / (double)all : 0.0;
}

double plan_mix_rate(const uint64_t amount[TT_TYPE_COUNT], const double rate[TT_TYPE_COUNT], double other)
{
    double work = 0.0, time = 0.0;
    for (int t = 0; t < TT_TYPE_COUNT; t++) {
        const double r = rate[t] > 0 ? rate[t] : other;
        if (!amount[t] || !(r > 0)) continue;
        work += (double)amount[t];
        time += (double)amount[t] / r;
    }
    return time > 0 ? work / time : 0.0;
}
