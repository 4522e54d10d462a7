/*
 * cmd_bench.c: `tutti bench`. Measures, in one run on this machine:
 * TTFT and prefill speed for a prompt of -p tokens, decode speed for -n
 * tokens, the machine's memory read bandwidth with the same thread count,
 * and the fraction of the decode roofline reached:
 *     bw_fraction = decode_tok_s * weight_bytes_per_token / read_bandwidth.
 * The bandwidth is measured in the same process right before the model runs,
 * so a noisy shared machine affects both sides of the ratio alike. When every
 * layer runs on the GPU, the limit is the GPU's device-to-device copy
 * bandwidth (read + write bytes per second, as in the figures) and
 * the JSON says "bw_source":"gpu_copy"; otherwise the CPU's ("cpu_read").
 * When layers run on GPUs, NVML meters the energy of the GPUs of rank 0's
 * host that the job uses (kcuda_nvml.h): average power and joules per token
 * of the prefill and of the decode (no GPU or no NVML: no energy fields).
 * The energy counter advances in steps of tens of milliseconds, so each
 * phase is metered over repeats lasting at least ENERGY_MIN_S, after the
 * timed repetitions.
 *
 * One untimed run of the prompt and up to 16 steps comes first (as
 * llama-bench's warm-up; --no-warmup leaves it out): the first prompt after
 * the load otherwise pays the GPU's clock ramp and one-time set-ups (the
 * MoE-12L's 512-token prefill on the H200 measured 28-32k tok/s over runs
 * without it).
 *
 * What is timed is what `tutti run` does: the prompt evaluated and its next
 * token sampled, then each step samples the token the next step feeds in
 * (run's sampler options, run's defaults), so a cluster returns each rank's
 * sampling candidates to rank 0, as generation does. --logits times the
 * other path instead: every step returns the last token's full logits to
 * rank 0 (`tutti logits`, an evaluation), which over a slow link costs the
 * vocabulary's 4 bytes per entry each step (`tutti plan --logits` predicts
 * that one).
 */
#include "cli.h"
#include "kcuda/kcuda_nvml.h"

#include <stdlib.h>
#include <string.h>

#define BW_BUFFER_BYTES (1ull << 30)
#define ENERGY_MIN_S 1.0 /* metering window of each phase */

struct bw_job {
    const struct kcpu_ops *ops;
    const float *buf;
    int64_t n;
    float sums[512];
};

static void bw_run(void *p, int ith, int nth)
{
    struct bw_job *j = p;
    int64_t b, e;
    tt_split_range(j->n, ith, nth, 4096, &b, &e);
    j->sums[ith] = e > b ? j->ops->dot_f32(e - b, j->buf + b, j->buf + b) : 0.0f;
}

struct bw_probe {
    struct tt_pool *pool;
    struct bw_job *job;
};

/* GB/s of one pass over the buffer. */
static double bw_sample(void *ctx)
{
    struct bw_probe *pr = ctx;
    const double t0 = tt_now_s();
    tt_pool_run(pr->pool, bw_run, pr->job);
    return (double)BW_BUFFER_BYTES / (tt_now_s() - t0) / 1e9;
}

double cli_measure_read_bw(int n_threads, struct comm *together)
{
    struct tt_pool *pool = tt_pool_create(n_threads);
    float *buf = tt_alloc(BW_BUFFER_BYTES);
    if (!pool || !buf) {
        tt_pool_destroy(pool);
        tt_free(buf);
        return 0.0;
    }
    struct bw_job j = { kcpu_get(), buf, BW_BUFFER_BYTES / sizeof(float), { 0 } };
    cli_advise_huge_pages(buf, BW_BUFFER_BYTES); /* as the engine's packed weights */
    for (int64_t i = 0; i < j.n; i += 1024) buf[i] = 1.0f; /* fault the pages in */
    if (together && comm_barrier(together)) tt_warn("ranks not measured at once: %s", tt_error_detail());
    struct bw_probe pr = { pool, &j };
    const double best = cli_probe_best(bw_sample, &pr, CLI_PROBE_WINDOW_S);
    tt_free(buf);
    tt_pool_destroy(pool);
    return best;
}

static const char bench_help[] =
    "usage: tutti bench -m MODEL [-p N] [-n N] [-t N] [--json]\n"
    "Measure TTFT, prefill and decode speed, and decode speed as a fraction of\n"
    "the memory-bandwidth limit (bytes of weights read per token / measured\n"
    "read bandwidth: the GPU's copy bandwidth when every layer runs on the GPU).\n"
    "Each step samples the next token as `tutti run` does (its sampler options).\n"
    "Without -b the prompt runs in one batch of up to 512 tokens (not 256).\n\n"
    "%s%s"
    "  -p, --n-prompt N     prompt tokens (default 128)\n"
    "  -n, --n-gen N        generated tokens (default 32)\n"
    "  -r, --repeat N       repetitions; the best is reported (default 2)\n"
    "      --no-warmup      no untimed run of the prompt and 16 steps before them\n"
    "      --logits         each step returns the last token's full logits to rank 0\n"
    "                       instead of sampling (an evaluation, as `tutti logits`)\n"
    "      --moe-stats      MoE models: expert load per layer over the last steps, and the\n"
    "                       rank imbalance (max/mean rank load) of the current placement\n"
    "      --json           one JSON object instead of the table\n";

/* What a step returns to rank 0: a sampled token (run's path) or, with
 * --logits, the last token's logits. */
struct bench_step {
    bool full_logits;
    struct sampler_opts so;
    struct sampler s; /* the sequence's sampler (!full_logits) */
    float *logits;    /* [n_vocab] (full_logits) */
};

static void bench_step_init(struct bench_step *b, const struct model *m)
{
    int err = b->full_logits ? 0 : sampler_init(&b->s, &b->so, m->hp.n_vocab);
    if (err) cli_die(err, "setting up the sampler");
    b->logits = b->full_logits ? malloc(sizeof(float) * (size_t)m->hp.n_vocab) : NULL;
    if (b->full_logits && !b->logits) cli_die(TT_ENOMEM, "bench buffers");
}

static void bench_step_free(struct bench_step *b)
{
    if (!b->full_logits) sampler_free(&b->s);
    free(b->logits);
}

/* Evaluate n tokens after the cache's; *next is the token the next step
 * feeds in (sampled, or a fixed one with --logits). */
static int bench_eval(struct engine *e, struct bench_step *b, const int32_t *ids, int n, int32_t *next)
{
    if (b->full_logits) {
        *next = 3;
        return engine_eval(e, ids, n, ENGINE_LOGITS_LAST, b->logits);
    }
    for (int i = 0; i < n; i++) sampler_accept(&b->s, ids[i]);
    return engine_eval_sample(e, ids, n, &b->s, next);
}

struct bench_result {
    int n_prompt, n_gen;
    double ttft_ms, prefill_tok_s, decode_tok_s;
    double comm_ms_per_token, comm_bytes_per_token; /* rank 0, decode */
    /* GPU energy (energy_gpus > 0): joules and seconds of each phase */
    int energy_gpus;
    const char *energy_source;
    double prefill_j, prefill_s, decode_j, decode_s;
};

/* Joules so far on the meter, or -1 when it failed. */
static double energy_now(struct kcuda_energy *meter)
{
    double j = -1.0;
    if (kcuda_energy_read(meter, &j)) {
        tt_warn("GPU energy: %s", tt_error_detail());
        tt_error_clear();
        return -1.0;
    }
    return j;
}

/* GPUs of rank 0's host this job runs on: one per rank there, at most the
 * GPUs NVML sees (ranks sharing a GPU meter it once). */
static void energy_open(struct kcuda_energy *meter, const struct engine *e)
{
    memset(meter, 0, sizeof(*meter));
    if (engine_n_gpu_layers(e) == 0) return;
    const struct comm *c = cli_comm();
    int on_host = 0;
    for (int r = 0; r < comm_size(c); r++) on_host += !strcmp(comm_host(c, r), comm_host(c, 0));
    if (kcuda_energy_open(meter, on_host)) {
        tt_info("no GPU energy figures: %s", tt_error_detail());
        tt_error_clear();
        kcuda_energy_close(meter);
    }
}

/* The bench's prompt: n ids spread over the vocabulary (caller frees). */
static int32_t *bench_prompt(const struct model *m, int n)
{
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!ids) cli_die(TT_ENOMEM, "bench buffers");
    cli_prompt_ids(ids, n, m->hp.n_vocab);
    return ids;
}

/* GPU energy of each phase, repeated for at least ENERGY_MIN_S: the prompt
 * from an empty cache; n_gen decode steps after the prompt. */
static void bench_energy(struct engine *e, struct bench_step *b, int n_prompt, int n_gen,
                         struct bench_result *r)
{
    struct kcuda_energy meter;
    energy_open(&meter, e);
    if (!meter.n_dev) return;
    int32_t *ids = bench_prompt(engine_model(e), n_prompt), tok = 3;
    int err = 0, k = 0;
    double j0 = energy_now(&meter), t0 = tt_now_s(), t1 = t0;
    do {
        engine_truncate(e, 0);
        err = bench_eval(e, b, ids, n_prompt, &tok);
        k++;
    } while (!err && (t1 = tt_now_s()) - t0 < ENERGY_MIN_S);
    double j1 = energy_now(&meter);
    if (err) cli_die(err, "prompt evaluation failed");
    r->prefill_j = (j1 - j0) / k, r->prefill_s = (t1 - t0) / k;
    k = 0;
    t0 = tt_now_s();
    do {
        engine_truncate(e, n_prompt);
        for (int i = 0; i < n_gen && !err; i++) err = bench_eval(e, b, &tok, 1, &tok);
        k++;
    } while (!err && (t1 = tt_now_s()) - t0 < ENERGY_MIN_S);
    const double j2 = energy_now(&meter);
    if (err) cli_die(err, "evaluation failed");
    r->decode_j = (j2 - j1) / k, r->decode_s = (t1 - t0) / k;
    r->energy_gpus = j0 >= 0 && j1 >= 0 && j2 >= 0 ? meter.n_dev : 0;
    r->energy_source = kcuda_energy_source(&meter);
    kcuda_energy_close(&meter);
    free(ids);
}

static void bench_once(struct engine *e, struct bench_step *b, int n_prompt, int n_gen,
                       struct bench_result *r)
{
    const struct model *m = engine_model(e);
    int32_t *ids = bench_prompt(m, n_prompt), tok;
    engine_truncate(e, 0);
    double t0 = tt_now_s();
    int err = bench_eval(e, b, ids, n_prompt, &tok);
    double t1 = tt_now_s();
    if (err) cli_die(err, "prompt evaluation failed");
    r->ttft_ms = (t1 - t0) * 1e3;
    r->prefill_tok_s = n_prompt / (t1 - t0);
    struct comm *c = cli_comm();
    double comm_s0 = 0;
    uint64_t comm_b0 = 0;
    comm_stats(c, &comm_s0, &comm_b0);
    for (int i = 0; i < n_gen && !err; i++) err = bench_eval(e, b, &tok, 1, &tok);
    if (err) cli_die(err, "decode failed");
    r->decode_tok_s = n_gen / (tt_now_s() - t1);
    double comm_s1 = 0;
    uint64_t comm_b1 = 0;
    comm_stats(c, &comm_s1, &comm_b1);
    r->comm_ms_per_token = (comm_s1 - comm_s0) * 1e3 / n_gen;
    r->comm_bytes_per_token = (double)(comm_b1 - comm_b0) / n_gen;
    free(ids);
}

/* Expert loads per layer (table on stderr, or a JSON line on stdout before
 * the main object). */
static void print_moe_stats(const struct engine *e, bool json)
{
    const struct model_hparams *hp = &engine_model(e)->hp;
    uint64_t *loads = malloc(sizeof(uint64_t) * (size_t)hp->n_expert);
    if (!loads) cli_die(TT_ENOMEM, "MoE statistics");
    if (json) printf("{\"moe_stats\":[");
    else fprintf(stderr, "layer  tokens  hottest expert (share)  rank imbalance (%d ranks)\n", engine_n_ranks(e));
    for (int il = 0; il < hp->n_layer; il++) {
        double imb = 1.0;
        engine_moe_loads(e, il, loads, &imb);
        uint64_t total = 0;
        int hot = 0;
        for (int x = 0; x < hp->n_expert; x++) {
            total += loads[x];
            if (loads[x] > loads[hot]) hot = x;
        }
        double share = total ? (double)loads[hot] / (double)total : 0.0;
        if (json) {
            printf("%s{\"layer\":%d,\"imbalance\":%.4f,\"loads\":[", il ? "," : "", il, imb);
            for (int x = 0; x < hp->n_expert; x++) printf("%s%llu", x ? "," : "", (unsigned long long)loads[x]);
            printf("]}");
        } else {
            fprintf(stderr, "%5d  %6llu  %6d (%5.1f%%)           %.3f\n", il, (unsigned long long)total, hot,
                    100.0 * share, imb);
        }
    }
    if (json) printf("]}\n");
    free(loads);
}

/* The results: one JSON object, or a table for people. */
static void print_report(const struct cli_model_opts *mo, const struct model *mp,
                         const struct engine *e, const struct bench_result *bp, double bw, bool gpu_bw,
                         uint64_t bpt, double frac, bool json)
{
    const int nt = engine_n_threads(e);
    const int n_prompt = bp->n_prompt, n_gen = bp->n_gen;
    if (json) {
        printf("{\"model\":");
        cli_json_str(stdout, mo->model_path, strlen(mo->model_path));
        printf(",\"threads\":%d,\"isa\":\"%s\",\"n_prompt\":%d,\"n_gen\":%d,\"ttft_ms\":%.3f,"
               "\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,\"weight_bytes_per_token\":%llu,"
               "\"mem_bw_gbs\":%.3f,\"bw_fraction\":%.4f,\"ranks\":%d,\"comm_ms_per_token\":%.4f,"
               "\"comm_bytes_per_token\":%.0f,\"bw_source\":\"%s\"",
               nt, kcpu_isa_name(kcpu_get()->isa), n_prompt, n_gen, bp->ttft_ms,
               bp->prefill_tok_s, bp->decode_tok_s, (unsigned long long)bpt, bw, frac, engine_n_ranks(e),
               bp->comm_ms_per_token, bp->comm_bytes_per_token, gpu_bw ? "gpu_copy" : "cpu_read");
        if (bp->energy_gpus)
            printf(",\"gpus_metered\":%d,\"energy_source\":\"%s\",\"prefill_power_w\":%.1f,"
                   "\"prefill_j_per_token\":%.5f,\"decode_power_w\":%.1f,\"decode_j_per_token\":%.5f",
                   bp->energy_gpus, bp->energy_source, bp->prefill_j / bp->prefill_s, bp->prefill_j / n_prompt,
                   bp->decode_j / bp->decode_s, bp->decode_j / n_gen);
        printf("}\n");
    } else {
        printf("model            %s (%s, %d layers, %.2f GiB)\n", mo->model_path,
               model_arch_name(mp->hp.arch), mp->hp.n_layer, (double)mp->weight_bytes / (1 << 30));
        printf("threads / isa    %d / %s\n", nt, kcpu_isa_name(kcpu_get()->isa));
        printf("TTFT             %.1f ms (%d-token prompt)\n", bp->ttft_ms, n_prompt);
        printf("prefill          %.1f tok/s\n", bp->prefill_tok_s);
        printf("decode           %.2f tok/s (%d tokens)\n", bp->decode_tok_s, n_gen);
        printf("bytes/token      %.1f MiB of weights\n", (double)bpt / (1 << 20));
        const bool gpu = engine_n_gpu_layers(e) > 0;
        printf("read bandwidth   %.1f GB/s measured%s\n", bw,
               gpu_bw ? " (the GPU's device-to-device copy)" : gpu ? " (the CPU's; some layers run on the GPU)" : "");
        if (engine_n_ranks(e) > 1)
            printf("communication    %.3f ms and %.0f bytes per token (rank 0, decode)\n",
                   bp->comm_ms_per_token, bp->comm_bytes_per_token);
        /* several ranks read their slices at once: rank 0's bandwidth alone
         * is not the job's limit, so the fraction may pass 100% */
        const char *note = engine_n_ranks(e) > 1 ? " (rank 0's read bandwidth alone)"
                           : frac > 1.0 ? " (above the measured bandwidth: caches, or a disturbed measurement)"
                                        : "";
        if (!gpu || gpu_bw)
            printf("roofline         %.2f tok/s; decode reaches %.0f%% of it%s\n", bw * 1e9 / (double)bpt,
                   100.0 * frac, note);
        if (bp->energy_gpus)
            printf("GPU energy       prefill %.0f W, %.4f J/token; decode %.0f W, %.3f J/token (%d GPU%s, NVML %s)\n",
                   bp->prefill_j / bp->prefill_s, bp->prefill_j / n_prompt, bp->decode_j / bp->decode_s,
                   bp->decode_j / n_gen, bp->energy_gpus, bp->energy_gpus > 1 ? "s" : "", bp->energy_source);
    }
}

int cmd_bench(int argc, char **argv)
{
    struct cli_model_opts mo = { 0 };
    int n_prompt = 128, n_gen = 32, repeat = 2;
    bool json = false, moe_stats = false, warmup = true;
    struct bench_step step = { 0 };
    sampler_opts_default(&step.so);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf(bench_help, cli_model_opts_help, cli_sampler_opts_help);
            return 0;
        }
        if (cli_model_opt(argc, argv, &i, &mo) || cli_sampler_opt(argc, argv, &i, &step.so)) continue;
        if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) n_prompt = (int)cli_parse_int(a, cli_value(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) n_gen = (int)cli_parse_int(a, cli_value(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "-r") || !strcmp(a, "--repeat")) repeat = (int)cli_parse_int(a, cli_value(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "--no-warmup")) warmup = false;
        else if (!strcmp(a, "--moe-stats")) moe_stats = true;
        else if (!strcmp(a, "--logits")) step.full_logits = true;
        else cli_die(0, "unknown option '%s' (see tutti bench --help)", a);
    }
    struct model m;
    cli_load_model_opts(&mo, &m);
    if (mo.engine.n_ctx < n_prompt + n_gen) mo.engine.n_ctx = n_prompt + n_gen;
    if (!mo.engine.n_batch) mo.engine.n_batch = TT_MIN(n_prompt, 512);
    struct engine *e;
    int err = engine_create(&e, &m, &mo.engine);
    if (err) cli_die(err, "cannot set up the engine");
    if (engine_rank(e) != 0) {
        if ((err = engine_worker_run(e))) cli_die(err, "rank %d stopped", engine_rank(e));
        engine_destroy(e);
        model_free(&m);
        free(mo.plan);
        return 0;
    }
    const int nt = engine_n_threads(e);
    /* the limit decode streams against: the GPU's copy bandwidth when every
     * layer runs there, else the CPU's read bandwidth */
    const bool all_gpu = engine_n_gpu_layers(e) == m.hp.n_layer;
    double bw = all_gpu ? engine_gpu_bandwidth_gbs(e) : 0.0;
    const bool gpu_bw = bw > 0;
    if (!gpu_bw) bw = cli_measure_read_bw(nt, NULL);
    struct bench_result best = { .n_prompt = n_prompt, .n_gen = n_gen }, r;
    bench_step_init(&step, &m);
    if (warmup) bench_once(e, &step, n_prompt, TT_MIN(n_gen, 16), &r);
    for (int i = 0; i < repeat; i++) {
        bench_once(e, &step, n_prompt, n_gen, &r);
        if (i == 0 || r.ttft_ms < best.ttft_ms) best.ttft_ms = r.ttft_ms;
        if (r.prefill_tok_s > best.prefill_tok_s) best.prefill_tok_s = r.prefill_tok_s;
        if (r.decode_tok_s > best.decode_tok_s) {
            best.decode_tok_s = r.decode_tok_s;
            best.comm_ms_per_token = r.comm_ms_per_token;
            best.comm_bytes_per_token = r.comm_bytes_per_token;
        }
    }
    bench_energy(e, &step, n_prompt, n_gen, &best);
    bench_step_free(&step);
    const uint64_t bpt = model_bytes_per_token(&m);
    if (moe_stats && m.hp.n_expert) print_moe_stats(e, json);
    engine_stop_workers(e);
    const double frac = bw > 0 ? best.decode_tok_s * (double)bpt / (bw * 1e9) : 0.0;
    print_report(&mo, &m, e, &best, bw, gpu_bw, bpt, frac, json);
    engine_destroy(e);
    model_free(&m);
    free(mo.plan);
    return 0;
}
