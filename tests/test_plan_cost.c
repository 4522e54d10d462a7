/*
 * test_plan_cost.c: the cost model and planner (plan_cost.h) over many model
 * x cluster shapes, and the cluster description parser.
 *
 * Properties checked on every shape: a candidate said to fit fits (memory per
 * rank <= free memory), the chosen layout fits and is never predicted slower
 * than the best single rank that holds the model, no prediction beats the
 * bandwidth limit (decode tok/s <= the candidate's summed bandwidth / bytes
 * read per token), results are deterministic. Then targeted cases: stages
 * sized by speed and memory, faster links and faster ranks never predict
 * slower, RDMA beats one machine where TCP does not, memory-only clusters,
 * forced layouts, model bytes from a shape equal those of the generated file,
 * and every malformed cluster description gets a clear error (plus a small
 * fuzzer: no input crashes the parser).
 */
#include "test.h"

#include "plan/plan_cost.h"

#include <unistd.h>

#define GIB 1073741824.0

/* ---- helpers ---- */

static struct model_hparams mk_hp(enum model_arch arch, int E, int L, int H, int KV, int ff,
                                  int vocab, int X, int K, int ffe, int shexp)
{
    return (struct model_hparams){.arch = arch,
                                  .n_embd = E,
                                  .n_layer = L,
                                  .n_head = H,
                                  .n_head_kv = KV,
                                  .head_dim = E / H,
                                  .n_ff = ff,
                                  .n_vocab = vocab,
                                  .n_ctx_train = 4096,
                                  .n_rot = E / H,
                                  .rope_base = 10000.0f,
                                  .rms_eps = 1e-5f,
                                  .n_expert = X,
                                  .n_expert_used = K,
                                  .n_ff_exp = ffe,
                                  .n_ff_shexp = shexp};
}

/* The shapes most cases plan for: Llama 3.1 8B and Llama 3.3 70B. */
static struct model_hparams llama_8b(void)
{
    return mk_hp(MODEL_ARCH_LLAMA, 4096, 32, 32, 8, 14336, 128256, 0, 0, 0, 0);
}

static struct model_hparams llama_70b(void)
{
    return mk_hp(MODEL_ARCH_LLAMA, 8192, 80, 64, 8, 28672, 128256, 0, 0, 0, 0);
}

static bool shape_model(struct plan_model *pm, struct model_hparams hp, enum tt_type t, bool mix)
{
    int err = plan_model_from_shape(pm, &hp, t, mix, false);
    CHECK_EQ_INT(err, 0);
    return err == 0;
}

static struct plan_hw_rank hw(const char *host, double gbs, double gflops, double mem_gib)
{
    struct plan_hw_rank r = {.read_gbs = gbs,
                             .bw_efficiency = 1.0,
                             .gflops = gflops,
                             .attn_gflops = gflops,
                             .mem_avail_gib = mem_gib,
                             .mem_total_gib = mem_gib};
    snprintf(r.host, sizeof(r.host), "%s", host);
    return r;
}

/* n identical ranks, `per_host` to a host; links: `intra` within a host, `inter` across. */
static void uniform_cluster(struct plan_cluster *c, int n, int per_host, struct plan_hw_rank r,
                            struct plan_link intra, struct plan_link inter)
{
    memset(c, 0, sizeof(*c));
    c->n_ranks = n;
    for (int i = 0; i < n; i++) {
        c->ranks[i] = r;
        snprintf(c->ranks[i].host, sizeof(c->ranks[i].host), "host%d", i / per_host);
    }
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++)
            c->links[a][b] = plan_cluster_same_host(c, a, b) ? intra : inter;
}

static struct plan_workload workload(int prompt, int streams)
{
    struct plan_workload w;
    plan_workload_default(&w);
    w.prompt_tokens = prompt;
    w.n_streams = streams;
    return w;
}

static double rank_bw(const struct plan_cluster *c, int r)
{
    return c->ranks[r].read_gbs * c->ranks[r].bw_efficiency * 1e9;
}

/* The engine's plan of a candidate (plan_from_candidate) holds what the
 * candidate predicts: each rank its stage's layers and its slice; the rest
 * idle. */
static void check_engine_plan(const struct plan_candidate *cd, const struct plan_model *pm, int n)
{
    struct plan *p = plan_from_candidate(pm, cd, n);
    CHECK(p != NULL);
    if (!p) return;
    CHECK(p->n_stages == cd->n_stages && p->n_ranks == n && p->join == cd->join);
    int used = 0;
    for (int k = 0; k < cd->n_ranks; k++) {
        const struct plan_cand_rank *cr = &cd->ranks[k];
        const struct plan_rank *pr = &p->ranks[cr->rank];
        const struct plan_stage *st = &cd->stages[cr->stage];
        CHECK(pr->stage == cr->stage && pr->layers.begin == st->layer_begin &&
              pr->layers.end == st->layer_end);
        CHECK(pr->head.begin == cr->slice.head.begin && pr->head.end == cr->slice.head.end &&
              pr->ff.begin == cr->slice.ff.begin && pr->ff.end == cr->slice.ff.end &&
              pr->embd.end == cr->slice.embd.end && pr->expert.end == cr->slice.expert.end);
        if (cr->stage == cd->n_stages - 1)
            CHECK(pr->vocab.begin == cr->slice.vocab.begin && pr->vocab.end == cr->slice.vocab.end);
    }
    for (int r = 0; r < n; r++) used += p->ranks[r].stage != PLAN_STAGE_IDLE;
    CHECK(used == cd->n_ranks);
    free(p);
}

/* The properties every result must have. */
static void check_result(const struct plan_result *res, const struct plan_model *pm,
                         const struct plan_cluster *c, const struct plan_workload *w)
{
    const double bpt = (double)plan_model_bytes_per_token(pm);
    for (int i = 0; i < res->n_cands; i++) {
        const struct plan_candidate *cd = &res->cands[i];
        double bw = 0.0;
        bool fits = true;
        for (int k = 0; k < cd->n_ranks; k++) {
            bw += rank_bw(c, cd->ranks[k].rank);
            fits &=
                (double)cd->ranks[k].mem_bytes <= c->ranks[cd->ranks[k].rank].mem_avail_gib * GIB;
        }
        CHECK(cd->fits == fits);
        CHECK(cd->decode_tok_s > 0 && isfinite(cd->decode_tok_s) && cd->ttft_s > 0 &&
              isfinite(cd->ttft_s));
        if (w->n_streams == 1) CHECK(cd->decode_tok_s <= bw / bpt * (1 + 1e-9));
        CHECK(cd->stages[cd->n_stages - 1].layer_end == pm->hp.n_layer);
        check_engine_plan(cd, pm, c->n_ranks);
    }
    if (res->chosen >= 0) CHECK(res->cands[res->chosen].fits);
    if (res->best_single >= 0 && res->chosen >= 0) {
        const struct plan_candidate *ch = &res->cands[res->chosen],
                                    *one = &res->cands[res->best_single];
        if (w->objective == PLAN_OBJECTIVE_DECODE)
            CHECK(ch->decode_tok_s >= one->decode_tok_s * (1 - 1e-9));
        else
            CHECK(ch->ttft_s <= one->ttft_s * (1 + 1e-9));
    }
    CHECK(res->chosen >= 0 || res->verdict == PLAN_VERDICT_NO_FIT);
}

static int find_layout(const struct plan_result *res, enum plan_layout l, enum plan_join j,
                       int n_ranks)
{
    for (int i = 0; i < res->n_cands; i++)
        if (res->cands[i].layout == l && res->cands[i].n_ranks == n_ranks &&
            (l == PLAN_LAYOUT_PP || l == PLAN_LAYOUT_SINGLE || res->cands[i].join == j))
            return i;
    return -1;
}

/* ---- the model ---- */

/* The bytes a decode step reads by type are all it reads but the embedding
 * row and the output norm (which no product streams). */
static void check_decode_types(const struct plan_model *pm)
{
    uint64_t sum = pm->embd_row_bytes + pm->output_norm_bytes;
    for (int t = 0; t < TT_TYPE_COUNT; t++)
        sum += pm->decode_bytes_by_type[t];
    CHECK_EQ_INT(sum, plan_model_bytes_per_token(pm));
}

static void test_model_shape_sizes(void)
{
    /* Llama 3.3 70B Q4_K_M: the published file is 42.52 GB (tensors and a few MB of tokenizer) */
    struct plan_model pm;
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q4_K, true))
        return;
    CHECK_NEAR((double)pm.file_bytes / 1e9, 42.5, 0.3);
    CHECK_EQ_INT(pm.file_bytes - plan_model_bytes_per_token(&pm),
                 pm.embd_bytes - pm.embd_row_bytes);
    CHECK_EQ_INT(pm.layers[0].elems[PLAN_PART_Q], 8192LL * 8192);
    CHECK_EQ_INT(pm.layers[0].elems[PLAN_PART_KV], 2LL * 8192 * 1024);
    CHECK_EQ_INT(pm.layers[0].elems[PLAN_PART_UP], 2LL * 8192 * 28672);
    CHECK_EQ_INT(pm.layers[0].bytes[PLAN_PART_DOWN],
                 28672LL / 256 * 210 * 8192); /* Q6_K in layer 0 */
    CHECK_EQ_INT(pm.layers[10].bytes[PLAN_PART_DOWN], 28672LL / 256 * 144 * 8192); /* Q4_K */
    CHECK_EQ_INT(pm.align.head_unit, 2); /* 256-column K-quant blocks over 128-wide heads */
    check_decode_types(&pm);
    CHECK_EQ_INT(pm.output_type, TT_TYPE_Q6_K);
    /* the bytes a decode streams through each kernel: mostly Q4_K, Q6_K's
     * output matrix and attn_v/ffn_down of some layers */
    CHECK(pm.decode_bytes_by_type[TT_TYPE_Q6_K] > pm.output_bytes);
    CHECK(pm.decode_bytes_by_type[TT_TYPE_Q4_K] > 2 * pm.decode_bytes_by_type[TT_TYPE_Q6_K]);
    CHECK(pm.decode_bytes_by_type[TT_TYPE_F32] < pm.decode_bytes_by_type[TT_TYPE_Q6_K] / 1000);
    plan_model_free(&pm);
    /* MoE: experts stored per expert, used ones read per token */
    if (!shape_model(&pm, mk_hp(MODEL_ARCH_QWEN3MOE, 2048, 4, 32, 4, 768, 151936, 128, 8, 768, 0),
                     TT_TYPE_Q8_0, false))
        return;
    CHECK_EQ_INT(pm.layers[0].elems[PLAN_PART_EXP_UP], 2LL * 2048 * 768);
    CHECK_EQ_INT(pm.layers[0].elems[PLAN_PART_ROUTER], 2048LL * 128);
    CHECK_EQ_INT(pm.layers[0].bytes[PLAN_PART_UP], 0);
    const uint64_t per_layer_used =
        8 * (pm.layers[0].bytes[PLAN_PART_EXP_UP] + pm.layers[0].bytes[PLAN_PART_EXP_DOWN]);
    CHECK(plan_model_bytes_per_token(&pm) > 4 * per_layer_used);
    CHECK(pm.file_bytes > plan_model_bytes_per_token(&pm) + 4 * 100 * per_layer_used / 8);
    check_decode_types(&pm); /* the used experts' share only */
    plan_model_free(&pm);
    /* shapes a model cannot have */
    struct model_hparams bad = mk_hp(MODEL_ARCH_LLAMA, 4096, 32, 32, 6, 14336, 1000, 0, 0, 0, 0);
    CHECK_EQ_INT(plan_model_from_shape(&pm, &bad, TT_TYPE_Q4_K, true, false), TT_EINVAL);
    bad = mk_hp(MODEL_ARCH_QWEN3MOE, 2048, 4, 32, 4, 768, 1000, 8, 9, 768, 0);
    CHECK_EQ_INT(plan_model_from_shape(&pm, &bad, TT_TYPE_Q4_K, true, false), TT_EINVAL);
    bad = mk_hp(MODEL_ARCH_LLAMA, 4096, 0, 32, 8, 14336, 1000, 0, 0, 0, 0);
    CHECK_EQ_INT(plan_model_from_shape(&pm, &bad, TT_TYPE_Q4_K, true, false), TT_EINVAL);
}

/* The shape path must agree with the file `tutti gen` writes for it. */
static void compare_with_file(struct model_hparams hp, enum tt_type t, bool mix, bool tied)
{
    char path[128];
    snprintf(path, sizeof(path), "/tmp/tt_plan_cost_%d.gguf", (int)getpid());
    struct model_gen_opts o = {
        .hp = hp, .base_type = t, .mix_m = mix, .seed = 1, .tied_output = tied, .n_threads = 2};
    int err = model_gen(&o, path);
    CHECK_EQ_INT(err, 0);
    struct model m;
    if (err || (err = model_load(&m, path))) {
        CHECK_EQ_INT(err, 0);
        unlink(path);
        return;
    }
    struct plan_model a, b;
    CHECK_EQ_INT(plan_model_from_model(&a, &m), 0);
    CHECK_EQ_INT(plan_model_from_shape(&b, &hp, t, mix, tied), 0);
    for (int il = 0; il < hp.n_layer; il++)
        for (int p = 0; p < PLAN_PART_COUNT; p++) {
            CHECK_EQ_INT(a.layers[il].bytes[p], b.layers[il].bytes[p]);
            CHECK_EQ_INT(a.layers[il].elems[p], b.layers[il].elems[p]);
        }
    CHECK_EQ_INT(a.align.head_unit, b.align.head_unit);
    CHECK_EQ_INT(a.align.ff_unit, b.align.ff_unit);
    CHECK_EQ_INT(a.align.ff_exp_unit, b.align.ff_exp_unit);
    CHECK_EQ_INT(a.align.shexp_unit, b.align.shexp_unit);
    CHECK_EQ_INT(a.embd_bytes, b.embd_bytes);
    CHECK_EQ_INT(a.output_bytes, b.output_bytes);
    CHECK_EQ_INT(plan_model_bytes_per_token(&a), model_bytes_per_token(&m));
    CHECK_EQ_INT(plan_model_bytes_per_token(&b), model_bytes_per_token(&m));
    CHECK_EQ_INT(a.output_type, b.output_type);
    for (int t = 0; t < TT_TYPE_COUNT; t++) {
        CHECK_EQ_INT(a.decode_bytes_by_type[t], b.decode_bytes_by_type[t]);
        CHECK_EQ_INT(a.elems_by_type[t], b.elems_by_type[t]);
    }
    CHECK(b.file_bytes <= a.file_bytes &&
          a.file_bytes - b.file_bytes < (4u << 20)); /* metadata, padding */
    plan_model_free(&a);
    plan_model_free(&b);
    model_free(&m);
    unlink(path);
}

static void test_shape_matches_file(void)
{
    compare_with_file(mk_hp(MODEL_ARCH_LLAMA, 512, 9, 8, 2, 1536, 300, 0, 0, 0, 0), TT_TYPE_Q4_K,
                      true, false);
    compare_with_file(mk_hp(MODEL_ARCH_LLAMA, 256, 3, 4, 4, 768, 300, 0, 0, 0, 0), TT_TYPE_Q8_0,
                      false, true);
    compare_with_file(mk_hp(MODEL_ARCH_QWEN2, 320, 4, 5, 1, 960, 300, 0, 0, 0, 0), TT_TYPE_Q5_K,
                      true, false);
    compare_with_file(mk_hp(MODEL_ARCH_QWEN3, 256, 2, 4, 2, 512, 300, 0, 0, 0, 0), TT_TYPE_F16,
                      false, false);
    compare_with_file(mk_hp(MODEL_ARCH_LLAMA, 256, 3, 8, 2, 512, 300, 8, 2, 512, 0), TT_TYPE_Q4_K,
                      true, false);
    compare_with_file(mk_hp(MODEL_ARCH_QWEN2MOE, 256, 2, 4, 4, 256, 300, 8, 2, 128, 256),
                      TT_TYPE_Q4_0, false, false);
    compare_with_file(mk_hp(MODEL_ARCH_QWEN3MOE, 256, 2, 8, 2, 256, 300, 16, 4, 256, 0),
                      TT_TYPE_Q6_K, false, false);
}

/* ---- many model x cluster shapes ---- */

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* A cluster drawn from: rank count, ranks per host, mixed speeds and
 * memory, and link classes (NVLink, RDMA, 10 GbE, 1 GbE, TCP). */
static void random_cluster(struct plan_cluster *c, uint64_t *seed, double model_gib)
{
    static const int counts[] = {1, 2, 3, 4, 5, 8, 12};
    static const struct plan_link classes[] = {
        {3, 360, 0, 0}, {10, 6, 0, 0}, {25, 1.15, 0, 0}, {60, 0.117, 0.06, 16}, {300, 2, 0, 0}};
    const int n = counts[rng_next(seed) % TT_ARRAY_LEN(counts)];
    const int per_host = 1 + (int)(rng_next(seed) % 4);
    const struct plan_link intra = {0.5 + (double)(rng_next(seed) % 4),
                                    20 + (double)(rng_next(seed) % 100), 0, 0};
    const struct plan_link inter = classes[rng_next(seed) % TT_ARRAY_LEN(classes)];
    const bool mixed = rng_next(seed) % 2;
    memset(c, 0, sizeof(*c));
    c->n_ranks = n;
    for (int i = 0; i < n; i++) {
        char host[16];
        snprintf(host, sizeof(host), "h%d", i / per_host);
        const double speed = mixed ? 1.0 + (double)(rng_next(seed) % 4) : 1.0;
        /* memory from a quarter of the model to twice it */
        const double mem = model_gib * (0.25 + (double)(rng_next(seed) % 8) / 4.0);
        c->ranks[i] = hw(host, 50.0 * speed, 400.0 * speed, mem);
        c->ranks[i].overhead_us = (double)(rng_next(seed) % 3) * 5.0;
        c->ranks[i].step_overhead_us = 4.0 * c->ranks[i].overhead_us;
        if (rng_next(seed) % 2) c->ranks[i].attn_gflops = 20.0 * speed; /* CPU-like attention */
    }
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++)
            c->links[a][b] = plan_cluster_same_host(c, a, b) ? intra : inter;
}

static void test_many_shapes(void)
{
    const struct model_hparams models[] = {
        mk_hp(MODEL_ARCH_LLAMA, 256, 4, 8, 4, 768, 512, 0, 0, 0, 0),
        llama_8b(),
        llama_70b(),
        mk_hp(MODEL_ARCH_QWEN2, 5120, 64, 40, 8, 27648, 152064, 0, 0, 0, 0),
        mk_hp(MODEL_ARCH_LLAMA, 4096, 32, 32, 8, 14336, 32000, 8, 2, 14336, 0),
        mk_hp(MODEL_ARCH_QWEN3MOE, 2048, 48, 32, 4, 768, 151936, 128, 8, 768, 0),
        mk_hp(MODEL_ARCH_QWEN2MOE, 2048, 24, 16, 16, 5632, 151936, 60, 4, 1408, 5632),
        mk_hp(MODEL_ARCH_QWEN3, 2560, 36, 32, 8, 9728, 151936, 0, 0, 0, 0),
    };
    const enum tt_type types[] = {TT_TYPE_Q4_K, TT_TYPE_Q8_0, TT_TYPE_F16};
    struct plan_cluster *c = malloc(sizeof(*c));
    uint64_t seed = 42;
    int n_runs = 0, verdicts[PLAN_VERDICT_COUNT] = {0};
    for (size_t mi = 0; mi < TT_ARRAY_LEN(models); mi++)
        for (size_t ti = 0; ti < TT_ARRAY_LEN(types); ti++) {
            struct plan_model pm;
            if (!shape_model(&pm, models[mi], types[ti], types[ti] == TT_TYPE_Q4_K)) continue;
            for (int k = 0; k < 6; k++) {
                random_cluster(c, &seed, (double)pm.file_bytes / GIB);
                struct plan_workload w =
                    workload(1 + (int)(rng_next(&seed) % 2048), 1 + (k == 5) * 3);
                w.n_ctx = 4096;
                w.objective = k == 4 ? PLAN_OBJECTIVE_TTFT : PLAN_OBJECTIVE_DECODE;
                struct plan_result res;
                if (plan_search(&res, &pm, c, &w)) {
                    CHECK(0);
                    continue;
                }
                check_result(&res, &pm, c, &w);
                verdicts[res.verdict]++;
                n_runs++;
                plan_result_free(&res);
            }
            plan_model_free(&pm);
        }
    free(c);
    CHECK_EQ_INT(n_runs, (int)(TT_ARRAY_LEN(models) * TT_ARRAY_LEN(types) * 6));
    /* the sweep reaches every kind of outcome */
    CHECK(verdicts[PLAN_VERDICT_FASTER] > 0 && verdicts[PLAN_VERDICT_SINGLE] > 0);
    CHECK(verdicts[PLAN_VERDICT_MEMORY] > 0 && verdicts[PLAN_VERDICT_NO_FIT] > 0);
}

static void test_deterministic(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *c = malloc(sizeof(*c));
    uint64_t seed = 7;
    for (int k = 0; k < 8; k++) {
        random_cluster(c, &seed, (double)pm.file_bytes / GIB);
        struct plan_workload w = workload(512, 1);
        struct plan_result a, b;
        CHECK_EQ_INT(plan_search(&a, &pm, c, &w), 0);
        CHECK_EQ_INT(plan_search(&b, &pm, c, &w), 0);
        CHECK_EQ_INT(a.n_cands, b.n_cands);
        CHECK_EQ_INT(a.chosen, b.chosen);
        CHECK(!memcmp(a.cands, b.cands, sizeof(*a.cands) * (size_t)a.n_cands));
        plan_result_free(&a);
        plan_result_free(&b);
    }
    free(c);
    plan_model_free(&pm);
}

/* ---- targeted cases ---- */

/* Two ranks, neither holding the model: a pipeline; the faster rank gets
 * more layers (one stream: all its memory allows; several: about its share
 * of the speed). Tensor parallelism splits heads by speed too. */
/* A 40-layer 8B-like model and two ranks, one 3x as fast as the other,
 * each with `mem` times the model's bytes free (calloc'd cluster). */
static struct plan_cluster *fast_slow(struct plan_model *pm, double mem)
{
    if (!shape_model(pm, mk_hp(MODEL_ARCH_LLAMA, 4096, 40, 32, 8, 14336, 32000, 0, 0, 0, 0), TT_TYPE_Q4_K,
                     true))
        return NULL;
    const double model_gib = (double)pm->file_bytes / GIB;
    struct plan_cluster *c = calloc(1, sizeof(*c));
    TT_ASSERT(c);
    c->n_ranks = 2;
    c->ranks[0] = hw("fast", 300, 3000, mem * model_gib);
    c->ranks[1] = hw("slow", 100, 1000, mem * model_gib);
    c->links[0][1] = c->links[1][0] = (struct plan_link){20, 1, 0, 0};
    return c;
}

static void test_uneven_stages(void)
{
    struct plan_model pm;
    struct plan_cluster *c = fast_slow(&pm, 0.9);
    if (!c) return;
    for (int streams = 1; streams <= 4; streams += 3) {
        struct plan_workload w = workload(256, streams);
        w.n_ctx = 512; /* a small KV cache: weights set the memory */
        struct plan_result res;
        CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
        check_result(&res, &pm, c, &w);
        CHECK_EQ_INT(res.verdict, PLAN_VERDICT_MEMORY);
        const int pp = find_layout(&res, PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, 2);
        CHECK(pp >= 0);
        if (pp < 0) continue;
        const struct plan_candidate *cd = &res.cands[pp];
        const int fast = cd->ranks[0].rank == 0 ? 0 : 1;
        const int lf = cd->stages[fast].layer_end - cd->stages[fast].layer_begin;
        CHECK(cd->fits);
        CHECK(lf > 40 - lf);
        if (streams == 1)
            CHECK(lf >= 32); /* as many as 90% of the memory holds */
        else
            CHECK(lf >= 27 && lf <= 33); /* about 3/4 of 40, by speed */
        const int tp = find_layout(&res, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2);
        CHECK(tp >= 0);
        if (tp >= 0) {
            const struct plan_rank *a = &res.cands[tp].ranks[0].slice,
                                   *b = &res.cands[tp].ranks[1].slice;
            CHECK_EQ_INT(a->head.end - a->head.begin, 24); /* 3:1 of 32 heads */
            CHECK_EQ_INT(b->head.end - b->head.begin, 8);
        }
        plan_result_free(&res);
    }
    free(c);
    plan_model_free(&pm);
}

/* --split even (the engine's default split): a fast and a slow rank get
 * equal heads and equal pipeline stages, and the slow rank then bounds the
 * step, so no candidate is predicted faster than with shares by speed. */
static void test_even_split(void)
{
    struct plan_model pm;
    struct plan_cluster *c = fast_slow(&pm, 4.0);
    if (!c) return;
    struct plan_workload w = workload(256, 1);
    struct plan_result by_speed, even;
    CHECK_EQ_INT(plan_search(&by_speed, &pm, c, &w), 0);
    w.even_split = true;
    CHECK_EQ_INT(plan_search(&even, &pm, c, &w), 0);
    check_result(&even, &pm, c, &w);
    const int tp = find_layout(&even, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2);
    const int pp = find_layout(&even, PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, 2);
    CHECK(tp >= 0 && pp >= 0);
    if (tp >= 0) {
        for (int i = 0; i < 2; i++) {
            const struct plan_rank *r = &even.cands[tp].ranks[i].slice;
            CHECK_EQ_INT(r->head.end - r->head.begin, 16);
            CHECK_EQ_INT(r->ff.end - r->ff.begin, 14336 / 2);
        }
        const int tps = find_layout(&by_speed, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2);
        CHECK(tps >= 0 && even.cands[tp].decode_tok_s <= by_speed.cands[tps].decode_tok_s * (1 + 1e-9));
        CHECK(tps >= 0 && even.cands[tp].ttft_s >= by_speed.cands[tps].ttft_s * (1 - 1e-9));
    }
    if (pp >= 0)
        for (int st = 0; st < 2; st++)
            CHECK_EQ_INT(even.cands[pp].stages[st].layer_end - even.cands[pp].stages[st].layer_begin, 20);
    plan_result_free(&by_speed);
    plan_result_free(&even);
    free(c);
    plan_model_free(&pm);
}

/* Faster links (lower latency, more bandwidth) never predict slower: for
 * every candidate, and for the choice. */
static void test_monotone_links(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *slow = malloc(sizeof(*slow)), *fast = malloc(sizeof(*fast));
    uint64_t seed = 99;
    for (int k = 0; k < 12; k++) {
        random_cluster(slow, &seed, (double)pm.file_bytes / GIB);
        *fast = *slow;
        for (int a = 0; a < fast->n_ranks; a++)
            for (int b = 0; b < fast->n_ranks; b++) {
                fast->links[a][b].latency_us *= 0.5;
                fast->links[a][b].bandwidth_gbs *= 2;
                fast->links[a][b].bandwidth_both_gbs *= 2;
            }
        struct plan_workload w = workload(512, 1);
        struct plan_result rs, rf;
        CHECK_EQ_INT(plan_search(&rs, &pm, slow, &w), 0);
        CHECK_EQ_INT(plan_search(&rf, &pm, fast, &w), 0);
        CHECK_EQ_INT(rs.n_cands, rf.n_cands); /* same link hierarchy, same candidates */
        for (int i = 0; i < rs.n_cands && i < rf.n_cands; i++) {
            CHECK(rf.cands[i].decode_tok_s >= rs.cands[i].decode_tok_s * (1 - 1e-9));
            CHECK(rf.cands[i].ttft_s <= rs.cands[i].ttft_s * (1 + 1e-9));
        }
        if (rs.chosen >= 0 && rf.chosen >= 0)
            CHECK(rf.cands[rf.chosen].decode_tok_s >=
                  rs.cands[rs.chosen].decode_tok_s * (1 - 1e-9));
        plan_result_free(&rs);
        plan_result_free(&rf);
    }
    free(slow);
    free(fast);
    plan_model_free(&pm);
}

/* A link that carries less per direction when both directions are loaded
 * slows the collectives' large blocks (tensor parallelism: every join sends
 * and receives at once; the prompt's blocks are hundreds of KiB) but not
 * their small ones (a decode token's, within TCP's first window) nor a
 * pipeline's one-way sends. */
static void test_both_ways_bandwidth(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, mk_hp(MODEL_ARCH_LLAMA, 1024, 8, 16, 4, 2816, 8192, 0, 0, 0, 0),
                     TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *full = calloc(1, sizeof(*full)), *half = malloc(sizeof(*half));
    full->n_ranks = 2;
    full->ranks[0] = hw("a", 20, 100, 8);
    full->ranks[1] = hw("b", 20, 100, 8);
    full->links[0][1] = full->links[1][0] = (struct plan_link){2000, 0.01, 0, 0};
    *half = *full;
    half->links[0][1].bandwidth_both_gbs = half->links[1][0].bandwidth_both_gbs = 0.005;
    struct plan_workload w = workload(128, 1);
    struct plan_result rf, rh;
    CHECK_EQ_INT(plan_search(&rf, &pm, full, &w), 0);
    CHECK_EQ_INT(plan_search(&rh, &pm, half, &w), 0);
    const int layouts[][2] = {{PLAN_LAYOUT_TP, PLAN_JOIN_GATHER}, {PLAN_LAYOUT_TP, PLAN_JOIN_SUM},
                              {PLAN_LAYOUT_PP, PLAN_JOIN_GATHER}};
    for (size_t i = 0; i < TT_ARRAY_LEN(layouts); i++) {
        const int f = find_layout(&rf, layouts[i][0], layouts[i][1], 2);
        const int h = find_layout(&rh, layouts[i][0], layouts[i][1], 2);
        CHECK(f >= 0 && h >= 0);
        if (f < 0 || h < 0) continue;
        if (layouts[i][0] == PLAN_LAYOUT_TP) {
            CHECK(rh.cands[h].ttft_s > rf.cands[f].ttft_s * 1.2); /* the prompt's joins: MBs */
            CHECK_NEAR(rh.cands[h].decode_tok_s, rf.cands[f].decode_tok_s, 1e-9); /* KiBs */
        } else {
            CHECK_NEAR(rh.cands[h].ttft_s, rf.cands[f].ttft_s, 1e-12);
            CHECK_NEAR(rh.cands[h].decode_tok_s, rf.cands[f].decode_tok_s, 1e-9);
        }
    }
    plan_result_free(&rf);
    plan_result_free(&rh);
    free(full);
    free(half);
    plan_model_free(&pm);
}

/* A token bucket (burst_kib) on a slow link: decode's small messages pass
 * at once when the step's work refills the bucket (the pipeline's 4 KiB
 * activation then costs what an unlimited link's does), a prompt's MBs
 * hardly change, and a bucket never makes a layout slower. */
static void test_token_bucket(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, mk_hp(MODEL_ARCH_LLAMA, 1024, 8, 16, 4, 2816, 8192, 0, 0, 0, 0),
                     TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = calloc(1, sizeof(*c[i]));
        c[i]->n_ranks = 2;
        c[i]->ranks[0] = hw("a", 10, 100, 8); /* 61 MB per token: a 6 ms step */
        c[i]->ranks[1] = hw("b", 10, 100, 8);
    }
    /* [0] 10 Mbit/s without a bucket, [1] with 8 KiB, [2] an unlimited link */
    c[0]->links[0][1] = c[0]->links[1][0] = (struct plan_link){30, 0.0012, 0.0006, 0};
    c[1]->links[0][1] = c[1]->links[1][0] = (struct plan_link){30, 0.0012, 0.0006, 8};
    c[2]->links[0][1] = c[2]->links[1][0] = (struct plan_link){30, 1e6, 1e6, 0};
    struct plan_workload w = workload(128, 1);
    struct plan_result r[3];
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(plan_search(&r[i], &pm, c[i], &w), 0);
    for (int i = 0; i < r[0].n_cands; i++) {
        const struct plan_candidate *a = &r[0].cands[i], *b = &r[1].cands[i];
        CHECK(b->decode_tok_s >= a->decode_tok_s * (1 - 1e-12) && b->ttft_s <= a->ttft_s * (1 + 1e-12));
    }
    const int pp[3] = {find_layout(&r[0], PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, 2),
                       find_layout(&r[1], PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, 2),
                       find_layout(&r[2], PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, 2)};
    const int tp[2] = {find_layout(&r[0], PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2),
                       find_layout(&r[1], PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2)};
    CHECK(pp[0] >= 0 && pp[1] >= 0 && pp[2] >= 0 && tp[0] >= 0 && tp[1] >= 0);
    if (pp[0] >= 0 && pp[1] >= 0 && pp[2] >= 0 && tp[0] >= 0 && tp[1] >= 0) {
        /* 4 KiB at 1.2 MB/s is 3.4 ms of a 6 ms step without the bucket */
        CHECK(r[1].cands[pp[1]].decode_tok_s > 1.3 * r[0].cands[pp[0]].decode_tok_s);
        CHECK_NEAR(r[1].cands[pp[1]].decode_tok_s, r[2].cands[pp[2]].decode_tok_s,
                   1e-9 * r[2].cands[pp[2]].decode_tok_s);
        CHECK(r[1].cands[tp[1]].decode_tok_s > r[0].cands[tp[0]].decode_tok_s);
        CHECK(r[1].cands[tp[1]].ttft_s > 0.98 * r[0].cands[tp[0]].ttft_s);
    }
    for (int i = 0; i < 3; i++) {
        plan_result_free(&r[i]);
        free(c[i]);
    }
    plan_model_free(&pm);
}

/* A faster rank (more bandwidth and compute) never makes the choice slower. */
static void test_monotone_ranks(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_8b(), TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *c = malloc(sizeof(*c));
    const struct plan_link links[] = {{3, 300, 0, 0}, {10, 6, 0, 0}, {60, 0.117, 0, 0}};
    for (size_t li = 0; li < TT_ARRAY_LEN(links); li++)
        for (int n = 2; n <= 6; n += 2) {
            uniform_cluster(c, n, 1, hw("", 100, 1000, 64), links[li], links[li]);
            double prev = 0.0;
            for (int step = 0; step < 4; step++) {
                c->ranks[n / 2].read_gbs = 100 + 100 * step;
                c->ranks[n / 2].gflops = 1000 + 1000 * step;
                struct plan_workload w = workload(512, 1);
                struct plan_result res;
                CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
                check_result(&res, &pm, c, &w);
                const double now = res.cands[res.chosen].decode_tok_s;
                CHECK(now >= prev * (1 - 1e-9));
                prev = now;
                plan_result_free(&res);
            }
        }
    free(c);
    plan_model_free(&pm);
}

/* Ranks of one host sharing its memory bandwidth (host_read_gbs): tensor
 * parallelism among them is bounded by the host's bandwidth, not the sum. */
static void test_shared_host_bandwidth(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_8b(), TT_TYPE_Q4_K, true))
        return;
    const double bpt = (double)plan_model_bytes_per_token(&pm);
    struct plan_cluster *c = malloc(sizeof(*c));
    uniform_cluster(c, 4, 4, hw("", 30, 1000, 64), (struct plan_link){1, 5, 0, 0},
                    (struct plan_link){1, 5, 0, 0});
    struct plan_workload w = workload(512, 1);
    struct plan_result res;
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    int tp = find_layout(&res, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 4);
    CHECK(tp >= 0 && res.cands[tp].decode_tok_s > 3.0 * 30e9 / bpt);
    plan_result_free(&res);
    for (int r = 0; r < 4; r++)
        c->ranks[r].host_read_gbs = 80;
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    check_result(&res, &pm, c, &w);
    tp = find_layout(&res, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 4);
    CHECK(tp >= 0 && res.cands[tp].decode_tok_s <= 80e9 / bpt);
    CHECK(res.cands[res.best_single].decode_tok_s > 0.95 * 30e9 / bpt); /* alone: its own 30 */
    plan_result_free(&res);
    c->ranks[2].host_read_gbs = 70; /* ranks of one host must agree */
    CHECK_EQ_INT(plan_cluster_check(c), TT_EINVAL);
    free(c);
    plan_model_free(&pm);
}

/* Jitter stretches tensor-parallel groups by E[max of k normals] (their
 * compute, not their joins) and leaves single ranks alone. */
static void test_jitter(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_8b(), TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *c = malloc(sizeof(*c));
    uniform_cluster(c, 4, 4, hw("", 30, 1000, 64), (struct plan_link){0, 1000, 0, 0},
                    (struct plan_link){0, 1000, 0, 0});
    struct plan_workload w = workload(512, 1);
    struct plan_result a, b;
    CHECK_EQ_INT(plan_search(&a, &pm, c, &w), 0);
    for (int r = 0; r < 4; r++) c->ranks[r].jitter = 0.1;
    CHECK_EQ_INT(plan_search(&b, &pm, c, &w), 0);
    check_result(&b, &pm, c, &w);
    const int t2a = find_layout(&a, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2),
              t2b = find_layout(&b, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 2),
              t4b = find_layout(&b, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 4),
              t4a = find_layout(&a, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 4);
    CHECK(t2a >= 0 && t2b >= 0 && t4a >= 0 && t4b >= 0);
    if (t2a >= 0 && t2b >= 0 && t4a >= 0 && t4b >= 0) {
        const double r2 = a.cands[t2a].decode_tok_s / b.cands[t2b].decode_tok_s;
        const double r4 = a.cands[t4a].decode_tok_s / b.cands[t4b].decode_tok_s;
        CHECK(r2 > 1.03 && r2 < 1.0565); /* (1 + 0.1 * 0.5642) on the compute part */
        CHECK(r4 > r2 && r4 < 1.1030);
    }
    CHECK(fabs(a.cands[a.best_single].decode_tok_s - b.cands[b.best_single].decode_tok_s) <
          1e-9 * a.cands[a.best_single].decode_tok_s);
    plan_result_free(&a);
    plan_result_free(&b);
    c->ranks[1].jitter = -1;
    CHECK_EQ_INT(plan_cluster_check(c), TT_EINVAL);
    free(c);
    plan_model_free(&pm);
}

/* step_overhead_us is paid once per forward pass by every stage: a single
 * rank's decode step grows by it and its TTFT by it per prompt chunk; a
 * two-stage pipeline pays it twice per step and per chunk.
 * token_overhead_us is paid per token of every forward pass by every
 * stage: one per stream in a decode step, the whole prompt over its chunks;
 * a two-stage pipeline pays it twice. */
static void check_pass_overhead(bool per_token)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_8b(), TT_TYPE_Q4_K, true)) return;
    struct plan_cluster *c = malloc(sizeof(*c));
    uniform_cluster(c, 2, 1, hw("", 100, 1000, 64), (struct plan_link){1, 10, 0, 0},
                    (struct plan_link){1, 10, 0, 0});
    struct plan_workload w = workload(512, 1); /* two chunks of 256 */
    const double us = per_token ? 7 : 300;
    const double step_s = us * 1e-6, prompt_s = per_token ? 512 * us * 1e-6 : 2 * us * 1e-6;
    struct plan_result a, b;
    CHECK_EQ_INT(plan_search(&a, &pm, c, &w), 0);
    for (int r = 0; r < 2; r++) *(per_token ? &c->ranks[r].token_overhead_us : &c->ranks[r].step_overhead_us) = us;
    CHECK_EQ_INT(plan_search(&b, &pm, c, &w), 0);
    check_result(&b, &pm, c, &w);
    const enum plan_layout layouts[2] = {PLAN_LAYOUT_SINGLE, PLAN_LAYOUT_PP};
    for (int k = 0; k < 2; k++) {
        const int ia = find_layout(&a, layouts[k], PLAN_JOIN_GATHER, k + 1),
                  ib = find_layout(&b, layouts[k], PLAN_JOIN_GATHER, k + 1);
        CHECK(ia >= 0 && ib >= 0);
        if (ia < 0 || ib < 0) continue;
        CHECK_NEAR(b.cands[ib].decode_step_s - a.cands[ia].decode_step_s, (k + 1) * step_s, 1e-9);
        CHECK_NEAR(b.cands[ib].ttft_s - a.cands[ia].ttft_s, (k + 1) * prompt_s, 1e-9);
    }
    plan_result_free(&a);
    plan_result_free(&b);
    *(per_token ? &c->ranks[1].token_overhead_us : &c->ranks[1].step_overhead_us) = -1;
    CHECK_EQ_INT(plan_cluster_check(c), TT_EINVAL);
    free(c);
    plan_model_free(&pm);
}

static void test_step_overhead(void) { check_pass_overhead(false); }
static void test_token_overhead(void) { check_pass_overhead(true); }

/* The founding document's case: three M4 Max, Llama 3.3 70B Q4_K_M. Over
 * RDMA tensor parallelism wins (but stays under the bandwidth limit); over
 * TCP at 300 us the cluster cannot beat one machine. */
static void test_rdma_vs_tcp(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q4_K, true))
        return;
    const double limit1 = 546e9 / (double)plan_model_bytes_per_token(&pm);
    struct plan_cluster *c = malloc(sizeof(*c));
    struct plan_workload w = workload(512, 1);
    struct plan_result res;
    uniform_cluster(c, 3, 1, hw("", 546, 16000, 48), (struct plan_link){1, 100, 0, 0},
                    (struct plan_link){10, 6, 0, 0});
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    CHECK_EQ_INT(res.verdict, PLAN_VERDICT_FASTER);
    CHECK_EQ_INT(res.cands[res.chosen].layout, PLAN_LAYOUT_TP);
    CHECK(res.cands[res.chosen].decode_tok_s > 2.0 * limit1 &&
          res.cands[res.chosen].decode_tok_s < 3.0 * limit1);
    CHECK(res.cands[res.best_single].decode_tok_s <= limit1 &&
          res.cands[res.best_single].decode_tok_s > 0.95 * limit1);
    plan_result_free(&res);
    uniform_cluster(c, 3, 1, hw("", 546, 16000, 48), (struct plan_link){1, 100, 0, 0},
                    (struct plan_link){300, 2, 0, 0});
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    CHECK_EQ_INT(res.verdict, PLAN_VERDICT_SINGLE);
    const int tp = find_layout(&res, PLAN_LAYOUT_TP, PLAN_JOIN_GATHER, 3);
    CHECK(tp >= 0 && res.cands[tp].decode_tok_s < res.cands[res.chosen].decode_tok_s);
    plan_result_free(&res);
    /* forcing tensor parallelism over TCP: chosen as asked, flagged slower */
    w.layouts = 1u << PLAN_LAYOUT_TP;
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    CHECK_EQ_INT(res.cands[res.chosen].layout, PLAN_LAYOUT_TP);
    CHECK_EQ_INT(res.verdict, PLAN_VERDICT_SLOWER);
    plan_result_free(&res);
    free(c);
    plan_model_free(&pm);
}

/* Too big for any rank but not for the cluster: used for memory; too big for
 * the cluster: nothing fits, said so. */
static void test_memory_only_and_no_fit(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q8_0, false))
        return;
    const double gib = (double)pm.file_bytes / GIB; /* about 70 GiB */
    struct plan_cluster *c = malloc(sizeof(*c));
    struct plan_workload w = workload(512, 1);
    struct plan_result res;
    uniform_cluster(c, 4, 1, hw("", 100, 1000, gib * 0.4), (struct plan_link){1, 100, 0, 0},
                    (struct plan_link){60, 0.117, 0, 0});
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    check_result(&res, &pm, c, &w);
    CHECK_EQ_INT(res.verdict, PLAN_VERDICT_MEMORY);
    CHECK_EQ_INT(res.best_single, -1);
    CHECK(res.cands[res.chosen].n_ranks >= 3);
    for (int i = 0; i < res.n_cands; i++)
        if (res.cands[i].layout == PLAN_LAYOUT_SINGLE)
            CHECK(!res.cands[i].fits && res.cands[i].short_rank >= 0);
    plan_result_free(&res);
    uniform_cluster(c, 4, 1, hw("", 100, 1000, gib * 0.2), (struct plan_link){1, 100, 0, 0},
                    (struct plan_link){60, 0.117, 0, 0});
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    check_result(&res, &pm, c, &w);
    CHECK_EQ_INT(res.verdict, PLAN_VERDICT_NO_FIT);
    CHECK_EQ_INT(res.chosen, -1);
    CHECK(res.n_cands > 4);
    plan_result_free(&res);
    free(c);
    plan_model_free(&pm);
}

/* One stream gets no speed from a pipeline: on equal ranks it is never
 * predicted faster than one of them, and each stage boundary adds time. */
static void test_pipeline_no_speedup(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, llama_8b(), TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *c = malloc(sizeof(*c));
    /* memory-bound even with 8 tokens a step: ample compute */
    uniform_cluster(c, 4, 1, hw("", 100, 10000, 64), (struct plan_link){1, 100, 0, 0},
                    (struct plan_link){25, 1.15, 0, 0});
    struct plan_workload w = workload(512, 1);
    struct plan_result res;
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    const double one = res.cands[res.best_single].decode_tok_s;
    double prev = one;
    for (int n = 2; n <= 4; n++) {
        const int pp = find_layout(&res, PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, n);
        CHECK(pp >= 0);
        if (pp < 0) continue;
        CHECK(res.cands[pp].decode_tok_s < prev);
        prev = res.cands[pp].decode_tok_s;
        for (int st = 0; st < n; st++) /* equal ranks, equal stages */
            CHECK(abs(res.cands[pp].stages[st].layer_end - res.cands[pp].stages[st].layer_begin -
                      32 / n) <= 1);
    }
    plan_result_free(&res);
    /* several streams keep the stages busy (each reads its weights once per
     * micro-batch): 8 streams get more than 4x the tokens of one; still no
     * more than one rank decoding the 8 in one batch (memory-bound) */
    w = workload(512, 8);
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    check_result(&res, &pm, c, &w);
    const int pp = find_layout(&res, PLAN_LAYOUT_PP, PLAN_JOIN_GATHER, 4);
    CHECK(pp >= 0 && res.cands[pp].decode_tok_s > 4.0 * prev);
    CHECK(pp >= 0 &&
          res.cands[pp].decode_tok_s <= res.cands[res.best_single].decode_tok_s * (1 + 1e-9));
    plan_result_free(&res);
    free(c);
    plan_model_free(&pm);
}

/* Experts: tensor parallelism places whole experts; one token's experts
 * rarely spread evenly, so 8 ranks give less than 8x on the expert part. */
static void test_moe(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, mk_hp(MODEL_ARCH_QWEN3MOE, 2048, 48, 32, 4, 768, 151936, 128, 8, 768, 0),
                     TT_TYPE_Q4_K, true))
        return;
    struct plan_cluster *c = malloc(sizeof(*c));
    uniform_cluster(c, 8, 8, hw("", 4800, 500000, 136), (struct plan_link){3, 360, 0, 0},
                    (struct plan_link){3, 360, 0, 0});
    struct plan_workload w = workload(512, 1);
    struct plan_result res;
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    check_result(&res, &pm, c, &w);
    const int tp = find_layout(&res, PLAN_LAYOUT_TP, PLAN_JOIN_SUM, 8);
    CHECK(tp >= 0);
    if (tp >= 0) {
        const struct plan_candidate *cd = &res.cands[tp];
        int covered = 0;
        for (int i = 0; i < 8; i++) {
            covered += cd->ranks[i].slice.expert.end - cd->ranks[i].slice.expert.begin;
            CHECK_EQ_INT(cd->ranks[i].slice.expert.end - cd->ranks[i].slice.expert.begin, 16);
        }
        CHECK_EQ_INT(covered, 128);
        const double ideal = 8 * 4800e9 / (double)plan_model_bytes_per_token(&pm);
        CHECK(cd->decode_tok_s < 0.7 * ideal);
    }
    plan_result_free(&res);
    free(c);
    plan_model_free(&pm);
}

static void test_workload_and_layouts(void)
{
    struct plan_model pm;
    if (!shape_model(&pm, mk_hp(MODEL_ARCH_LLAMA, 256, 4, 8, 4, 768, 512, 0, 0, 0, 0), TT_TYPE_Q8_0,
                     false))
        return;
    struct plan_cluster *c = malloc(sizeof(*c));
    uniform_cluster(c, 2, 1, hw("", 100, 1000, 8), (struct plan_link){1, 100, 0, 0},
                    (struct plan_link){10, 6, 0, 0});
    struct plan_result res;
    struct plan_workload w = workload(512, 1);
    w.n_ctx = 100; /* shorter than the prompt */
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), TT_EINVAL);
    w = workload(512, 0);
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), TT_EINVAL);
    w = workload(512, 1);
    c->links[0][1].latency_us = 5; /* not symmetric */
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), TT_EINVAL);
    c->links[1][0].latency_us = 5;
    c->ranks[1].read_gbs = -1;
    CHECK_EQ_INT(plan_cluster_check(c), TT_EINVAL);
    c->ranks[1].read_gbs = 100;
    CHECK_EQ_INT(plan_cluster_check(c), 0);
    uint32_t mask;
    CHECK_EQ_INT(plan_parse_layouts("auto", &mask), 0);
    CHECK_EQ_INT(mask, 0);
    CHECK_EQ_INT(plan_parse_layouts("tp,pp", &mask), 0);
    CHECK_EQ_INT(mask, (1u << PLAN_LAYOUT_TP) | (1u << PLAN_LAYOUT_PP));
    CHECK_EQ_INT(plan_parse_layouts("tp,xx", &mask), TT_EINVAL);
    CHECK_EQ_INT(plan_parse_layouts("", &mask), TT_EINVAL);
    w.layouts = 1u << PLAN_LAYOUT_PP;
    CHECK_EQ_INT(plan_search(&res, &pm, c, &w), 0);
    CHECK_EQ_INT(res.cands[res.chosen].layout, PLAN_LAYOUT_PP);
    plan_result_free(&res);
    free(c);
    plan_model_free(&pm);
}

/* ---- cluster descriptions ---- */

static int parse(struct plan_cluster *c, const char *text)
{
    return plan_cluster_parse(c, text, strlen(text));
}

static void test_parse_examples(void)
{
    static const char *const files[] = {
        "m4max-3x-tb5-rdma.json", "m4max-3x-tb5-tcp.json", "m3ultra-4x-tb5-rdma.json",
        "h200-2x-nvlink.json",    "h200-4x-nvlink.json",   "h200-8x-nvlink.json",
        "pc-4x-1gbe.json",        "pc-4x-10gbe.json",
    };
    static const int ranks[] = {3, 3, 4, 2, 4, 8, 4, 4};
    struct plan_cluster *c = malloc(sizeof(*c));
    for (size_t i = 0; i < TT_ARRAY_LEN(files); i++) {
        char path[256];
        snprintf(path, sizeof(path), "docs/clusters/%s", files[i]);
        size_t n;
        char *text = test_read_file(path, &n);
        if (!text) {
            TEST_SKIP("%s not found (run from the repository root)", path);
            break;
        }
        const int err = plan_cluster_parse(c, text, n);
        if (err) fprintf(stderr, "  %s: %s\n", path, tt_error_detail());
        CHECK_EQ_INT(err, 0);
        CHECK_EQ_INT(c->n_ranks, ranks[i]);
        CHECK(c->name[0] && c->ranks[0].read_gbs > 0 && c->ranks[0].gflops > 0);
        free(text);
    }
    free(c);
}

/* `tutti topo --json` output is a cluster description. */
static void test_parse_topo_output(void)
{
    static const char topo[] =
        "{\"ranks\":[{\"rank\":0,\"host\":\"a\",\"cores\":8,\"isa\":\"avx512\",\"mem_total_gib\":"
        "31.2,"
        "\"mem_avail_gib\":29.0,\"read_gbs\":41.5},{\"rank\":1,\"host\":\"a\",\"cores\":8,\"isa\":"
        "\"avx512\","
        "\"mem_total_gib\":31.2,\"mem_avail_gib\":29.0,\"read_gbs\":40.9},{\"rank\":2,\"host\":"
        "\"b\",\"cores\":4,"
        "\"isa\":\"avx2\",\"mem_total_gib\":15.6,\"mem_avail_gib\":12.0,\"read_gbs\":20.1}],"
        "\"links\":["
        "{\"a\":0,\"b\":1,\"same_host\":true,\"latency_us\":0.45,\"bandwidth_gbs\":9.8,"
        "\"bandwidth_both_gbs\":4.9},"
        "{\"a\":0,\"b\":2,\"same_host\":false,\"latency_us\":31.0,\"bandwidth_gbs\":1.1,"
        "\"burst_kib\":15.5},"
        "{\"a\":1,\"b\":2,\"same_host\":false,\"latency_us\":30.5,\"bandwidth_gbs\":1.1,"
        "\"burst_kib\":15.5}]}";
    struct plan_cluster *c = malloc(sizeof(*c));
    CHECK_EQ_INT(parse(c, topo), 0);
    CHECK_EQ_INT(c->n_ranks, 3);
    CHECK(plan_cluster_same_host(c, 0, 1) && !plan_cluster_same_host(c, 1, 2));
    CHECK_NEAR(c->ranks[0].gflops, 800, 1e-9); /* estimated: 8 AVX-512 cores */
    CHECK_NEAR(c->ranks[2].gflops, 200, 1e-9);
    CHECK_NEAR(c->links[2][1].latency_us, 30.5, 1e-12);
    CHECK_NEAR(c->links[1][0].bandwidth_both_gbs, 4.9, 0);
    CHECK_NEAR(c->links[0][2].bandwidth_both_gbs, 1.1, 0); /* absent: the one-way figure */
    CHECK_NEAR(c->links[2][0].burst_kib, 15.5, 0);
    CHECK_NEAR(c->links[0][1].burst_kib, 0, 0); /* absent: no bucket */
    CHECK_NEAR(c->ranks[1].bw_efficiency, 1.0, 0);
    free(c);
}

/* `tutti topo`'s per-type product speeds become each model's bw_efficiency:
 * its decode bytes over the sum of bytes_t / gbs_t. */
static void test_matvec_types(void)
{
    static const char topo[] =
        "{\"ranks\":[{\"rank\":0,\"host\":\"a\",\"cores\":8,\"isa\":\"avx512\",\"mem_total_gib\":"
        "31.2,\"mem_avail_gib\":29.0,\"read_gbs\":50,\"matvec_gbs\":40,"
        "\"matvec_type_gbs\":{\"q4_K\":40,\"q5_K\":38,\"q6_K\":30,\"q8_0\":45}},"
        "{\"rank\":1,\"host\":\"b\",\"cores\":8,\"isa\":\"avx512\",\"mem_avail_gib\":29.0,"
        "\"read_gbs\":50,\"matvec_gbs\":40},"
        "{\"rank\":2,\"host\":\"c\",\"cores\":8,\"mem_avail_gib\":29.0,\"read_gbs\":50,"
        "\"bw_efficiency\":0.5,\"matvec_type_gbs\":{\"q6_K\":30}},"
        "{\"rank\":3,\"host\":\"d\",\"cores\":8,\"mem_avail_gib\":29.0,\"read_gbs\":20,"
        "\"matvec_type_gbs\":{\"Q6_K\":30}}],"
        "\"link\":{\"latency_us\":10,\"bandwidth_gbs\":1}}";
    struct plan_cluster *c = malloc(sizeof(*c));
    struct plan_model pm;
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q4_K, true)) {
        free(c);
        return;
    }
    CHECK_EQ_INT(parse(c, topo), 0);
    CHECK_NEAR(c->ranks[0].bw_efficiency, 0.8, 1e-12); /* matvec_gbs, as before: no model yet */
    CHECK_NEAR(c->ranks[0].matvec_type_gbs[TT_TYPE_Q6_K], 30, 0);
    CHECK_NEAR(c->ranks[2].matvec_type_gbs[TT_TYPE_Q6_K], 0, 0); /* bw_efficiency given: dropped */
    plan_cluster_for_model(c, &pm);
    const double b4 = (double)pm.decode_bytes_by_type[TT_TYPE_Q4_K];
    const double b6 = (double)pm.decode_bytes_by_type[TT_TYPE_Q6_K];
    const double bf = (double)pm.decode_bytes_by_type[TT_TYPE_F32]; /* norms: at matvec_gbs */
    const double mixed = (b4 + b6 + bf) / (b4 / 40 + b6 / 30 + bf / 40);
    CHECK_NEAR(c->ranks[0].bw_efficiency, mixed / 50, 1e-12);
    CHECK(c->ranks[0].bw_efficiency < 0.8 && c->ranks[0].bw_efficiency > 0.6);
    CHECK_NEAR(c->ranks[1].bw_efficiency, 0.8, 0); /* no per-type figures: as it was */
    CHECK_NEAR(c->ranks[2].bw_efficiency, 0.5, 0); /* given */
    CHECK_NEAR(c->ranks[3].bw_efficiency, 1.0, 0); /* above read_gbs: clamped */
    CHECK_EQ_INT(plan_cluster_check(c), 0);
    /* the same description for a Q8_0 model: its one type */
    plan_model_free(&pm);
    if (!shape_model(&pm, llama_70b(), TT_TYPE_Q8_0, false)) {
        free(c);
        return;
    }
    CHECK_EQ_INT(parse(c, topo), 0);
    plan_cluster_for_model(c, &pm);
    CHECK_NEAR(c->ranks[0].bw_efficiency, 0.9, 1e-3); /* 45 of 50, the F32 norms at 40 */
    plan_model_free(&pm);
    free(c);
}

struct bad_case {
    const char *text;
    int err;
    const char *says; /* in the error detail */
};

#define RANK "{\"host\":\"a\",\"read_gbs\":100,\"gflops\":1000,\"mem_avail_gib\":16}"
#define RANK_B "{\"host\":\"b\",\"read_gbs\":100,\"gflops\":1000,\"mem_avail_gib\":16}"
#define LINK "\"link\":{\"latency_us\":10,\"bandwidth_gbs\":1}"

static const struct bad_case bad_cases[] = {
    {"", TT_EFORMAT, "line 1"},
    {"{\"ranks\":[" RANK "]", TT_EFORMAT, "line 1, column"},
    {"[]", TT_EFORMAT, "top level must be an object"},
    {"{}", TT_EFORMAT, "ranks"},
    {"{\"ranks\":[]}", TT_EFORMAT, "missing or empty"},
    {"{\"ranks\":7}", TT_EFORMAT, "missing or empty"},
    {"{\"ranks\":[" RANK "],\"speed\":1}", TT_EFORMAT, "unknown key \"speed\""},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gb\":100,\"gflops\":1,\"mem_avail_gib\":1}]}", TT_EFORMAT,
     "unknown key \"read_gb\""},
    {"{\"ranks\":[{\"host\":\"a\",\"gflops\":1,\"mem_avail_gib\":1}]}", TT_EFORMAT,
     "ranks[0]: missing \"read_gbs\""},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":-5,\"gflops\":1,\"mem_avail_gib\":1}]}", TT_EFORMAT,
     "\"read_gbs\" is -5"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":0,\"gflops\":1,\"mem_avail_gib\":1}]}", TT_EFORMAT,
     "must be > 0"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":1,\"step_"
     "overhead_us\":-1}]}",
     TT_EFORMAT, "\"step_overhead_us\" is -1"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":1,\"token_"
     "overhead_us\":-2}]}",
     TT_EFORMAT, "\"token_overhead_us\" is -2"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":\"fast\",\"gflops\":1,\"mem_avail_gib\":1}]}",
     TT_EFORMAT, "must be a number"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1e999,\"gflops\":1,\"mem_avail_gib\":1}]}",
     TT_EFORMAT, "line 1"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"bw_efficiency\":1.5,\"gflops\":1,\"mem_avail_"
     "gib\":1}]}",
     TT_EFORMAT, "bw_efficiency"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8,\"mem_total_"
     "gib\":4}]}",
     TT_EFORMAT, "less than"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"mem_avail_gib\":8}]}", TT_EFORMAT,
     "missing \"gflops\""},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"cores\":4,\"isa\":\"sse\",\"mem_avail_gib\":8}]"
     "}",
     TT_EFORMAT, "unknown \"isa\""},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"cores\":4.5,\"mem_avail_gib\":8}]}", TT_EFORMAT,
     "must be an integer"},
    {"{\"ranks\":[{\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}", TT_EFORMAT,
     "exactly one of"},
    {"{\"ranks\":[{\"host\":\"a\",\"hosts\":[\"b\"],\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":"
     "8}]}",
     TT_EFORMAT, "exactly one of"},
    {"{\"ranks\":[{\"hosts\":[],\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}", TT_EFORMAT,
     "non-empty array"},
    {"{\"ranks\":[{\"hosts\":[\"a\",3],\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}",
     TT_EFORMAT, "must be a string"},
    {"{\"ranks\":[{\"host\":\"\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}", TT_EFORMAT,
     "1 to 63 characters"},
    {"{\"ranks\":[{\"host\":\"a\",\"count\":0,\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}",
     TT_EFORMAT, "\"count\" is 0"},
    {"{\"ranks\":[{\"host\":\"a\",\"count\":40,\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8},"
     "{\"host\":\"b\",\"count\":40,\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}",
     TT_ERANGE, "more than 64 ranks"},
    {"{\"ranks\":[{\"host\":\"a\",\"rank\":3,\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}",
     TT_EFORMAT, "starts at rank 0"},
    {"{\"ranks\":[" RANK "," RANK_B "]}", TT_EFORMAT,
     "no link figures for ranks 0 and 1 (different host)"},
    {"{\"ranks\":[" RANK "," RANK "]," LINK "}", TT_EFORMAT, "(same host): add \"host_link\""},
    {"{\"ranks\":[" RANK "," RANK_B
     "],\"links\":[{\"a\":0,\"b\":0,\"latency_us\":1,\"bandwidth_gbs\":1}]}",
     TT_EFORMAT, "two different ranks"},
    {"{\"ranks\":[" RANK "," RANK_B
     "],\"links\":[{\"a\":0,\"b\":2,\"latency_us\":1,\"bandwidth_gbs\":1}]}",
     TT_EFORMAT, "\"b\" is 2"},
    {"{\"ranks\":[" RANK "," RANK_B
     "],\"links\":[{\"a\":0,\"b\":1,\"latency_us\":1,\"bandwidth_gbs\":1},"
     "{\"a\":1,\"b\":0,\"latency_us\":1,\"bandwidth_gbs\":1}]}",
     TT_EFORMAT, "already have a link"},
    {"{\"ranks\":[" RANK "," RANK_B
     "],\"links\":[{\"a\":0,\"b\":1,\"same_host\":true,\"latency_us\":1,\"bandwidth_gbs\":1}]}",
     TT_EFORMAT, "contradicts"},
    {"{\"ranks\":[" RANK "," RANK_B "],\"links\":[{\"a\":0,\"b\":1,\"latency_us\":1}]}", TT_EFORMAT,
     "missing \"bandwidth_gbs\""},
    {"{\"ranks\":[" RANK "," RANK_B "],\"link\":{\"latency_us\":-1,\"bandwidth_gbs\":1}}",
     TT_EFORMAT, "link: \"latency_us\" is -1"},
    {"{\"ranks\":[" RANK "," RANK_B "],\"link\":{\"latency_us\":1,\"bandwidth_gbs\":1,\"burst_kib\":-4}}",
     TT_EFORMAT, "link: \"burst_kib\" is -4"},
    {"{\"ranks\":[" RANK "," RANK_B "],\"link\":[1,2]}", TT_EFORMAT, "link: must be an object"},
    {"{\"ranks\":[" RANK "],\"ranks\":[" RANK "]}", TT_EFORMAT, "duplicate"},
    {"{\"ranks\":[" RANK "],\"sources\":[1]}", TT_EFORMAT, "\"sources\"[0] must be a string"},
    {"{\"ranks\":[" RANK "],\"name\":7}", TT_EFORMAT, "\"name\" must be a string"},
    {"{\"ranks\":[\"a\"]}", TT_EFORMAT, "ranks[0]: must be an object"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8,"
     "\"matvec_type_gbs\":[1]}]}",
     TT_EFORMAT, "ranks[0]: \"matvec_type_gbs\" must be an object"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8,"
     "\"matvec_type_gbs\":{\"q3_K\":5}}]}",
     TT_EFORMAT, "unknown weight type \"q3_K\""},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8,"
     "\"matvec_type_gbs\":{\"q4_K\":0}}]}",
     TT_EFORMAT, "\"matvec_type_gbs\".\"q4_K\" must be a number > 0"},
    {"{\"ranks\":[{\"host\":\"a\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8,"
     "\"matvec_type_gbs\":{\"q6_K\":\"fast\"}}]}",
     TT_EFORMAT, "\"matvec_type_gbs\".\"q6_K\" must be a number"},
    {"{\"ranks\":[{\"host\":\"a\\u0000b\",\"read_gbs\":1,\"gflops\":1,\"mem_avail_gib\":8}]}",
     TT_EFORMAT, "line 1"},
};

static void test_parse_errors(void)
{
    struct plan_cluster *c = malloc(sizeof(*c));
    for (size_t i = 0; i < TT_ARRAY_LEN(bad_cases); i++) {
        const int err = parse(c, bad_cases[i].text);
        const char *detail = tt_error_detail();
        if (err != bad_cases[i].err || !strstr(detail, bad_cases[i].says)) {
            fprintf(stderr, "  case %zu: got %d \"%s\", wanted %d with \"%s\"\n", i, err, detail,
                    bad_cases[i].err, bad_cases[i].says);
            test_failed_ = 1;
        }
    }
    /* a valid one, for contrast: two hosts, a default link, a per-pair override */
    CHECK_EQ_INT(parse(c, "{\"ranks\":[" RANK "," RANK_B "," RANK_B "]," LINK
                          ",\"host_link\":{\"latency_us\":1,"
                          "\"bandwidth_gbs\":50},\"links\":[{\"a\":0,\"b\":2,\"latency_us\":99,"
                          "\"bandwidth_gbs\":0.1}]}"),
                 0);
    CHECK_NEAR(c->links[1][2].bandwidth_gbs, 50, 0);
    CHECK_NEAR(c->links[0][1].latency_us, 10, 0);
    CHECK_NEAR(c->links[2][0].latency_us, 99, 0);
    /* too long */
    char *big = malloc(PLAN_CLUSTER_JSON_MAX + 2);
    memset(big, ' ', PLAN_CLUSTER_JSON_MAX + 1);
    CHECK_EQ_INT(plan_cluster_parse(c, big, PLAN_CLUSTER_JSON_MAX + 1), TT_ERANGE);
    /* deep nesting */
    for (int i = 0; i < 100000; i++)
        big[i] = '[';
    CHECK_EQ_INT(plan_cluster_parse(c, big, 100000), TT_EFORMAT);
    free(big);
    free(c);
}

/* No input crashes the parser: truncations and byte changes of a valid file. */
static void test_parse_fuzz(void)
{
    static const char good[] =
        "{\"name\":\"x\",\"ranks\":[{\"hosts\":[\"a\",\"b\"],\"count\":2,\"read_gbs\":100,"
        "\"gflops\":1000,"
        "\"mem_avail_gib\":16,\"overhead_us\":5}],\"link\":{\"latency_us\":10,\"bandwidth_gbs\":1},"
        "\"host_link\":{\"latency_us\":1,\"bandwidth_gbs\":9},\"links\":[{\"a\":0,\"b\":3,"
        "\"latency_us\":4,"
        "\"bandwidth_gbs\":2}]}";
    static const char bytes[] = "{}[]\",:0123456789.-eE \\tnulfrsa\x80\xff";
    struct plan_cluster *c = malloc(sizeof(*c));
    const size_t n = strlen(good);
    char buf[sizeof(good)];
    CHECK_EQ_INT(plan_cluster_parse(c, good, n), 0);
    CHECK_EQ_INT(c->n_ranks, 4);
    uint64_t seed = 5;
    int ok = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, good, n);
        size_t len = n;
        if (it % 3 == 0) len = rng_next(&seed) % n;
        for (int k = 0; k < 1 + it % 4; k++)
            buf[rng_next(&seed) % n] = bytes[rng_next(&seed) % (sizeof(bytes) - 1)];
        const int err = plan_cluster_parse(c, buf, len);
        CHECK(err == 0 || err == TT_EFORMAT || err == TT_ERANGE);
        if (!err) {
            ok++;
            CHECK_EQ_INT(plan_cluster_check(c), 0);
        }
    }
    CHECK(ok > 0);
    free(c);
}

static const struct test_case cases[] = {
    {"model_shape_sizes", test_model_shape_sizes},
    {"matvec_types", test_matvec_types},
    {"shape_matches_file", test_shape_matches_file},
    {"many_shapes", test_many_shapes},
    {"deterministic", test_deterministic},
    {"uneven_stages", test_uneven_stages},
    {"even_split", test_even_split},
    {"jitter", test_jitter},
    {"step_overhead", test_step_overhead},
    {"token_overhead", test_token_overhead},
    {"monotone_links", test_monotone_links},
    {"both_ways_bandwidth", test_both_ways_bandwidth},
    {"token_bucket", test_token_bucket},
    {"monotone_ranks", test_monotone_ranks},
    {"shared_host_bandwidth", test_shared_host_bandwidth},
    {"rdma_vs_tcp", test_rdma_vs_tcp},
    {"memory_only_and_no_fit", test_memory_only_and_no_fit},
    {"pipeline_no_speedup", test_pipeline_no_speedup},
    {"moe", test_moe},
    {"workload_and_layouts", test_workload_and_layouts},
    {"parse_examples", test_parse_examples},
    {"parse_topo_output", test_parse_topo_output},
    {"parse_errors", test_parse_errors},
    {"parse_fuzz", test_parse_fuzz},
};

TEST_MAIN(cases)
