/*
 * cli_common.c: option parsing, error exits, model loading with progress,
 * JSON string output. Shared by every subcommand.
 */
#include "cli.h"
#include "../plan/plan_cost.h"
#include "../tok/tok.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

static struct comm *the_comm;

void cli_comm_start(int *argc, char ***argv)
{
    int err = comm_init(&the_comm, COMM_BACKEND_AUTO, argc, argv);
    if (err) cli_die(err, "cannot start the communicator");
}

struct comm *cli_comm(void) { return the_comm; }

void cli_comm_end(void)
{
    comm_free(the_comm);
    the_comm = NULL;
}

_Noreturn void cli_die(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (the_comm && comm_size(the_comm) > 1) fprintf(stderr, "tutti: rank %d: error: ", comm_rank(the_comm));
    else fprintf(stderr, "tutti: error: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (err < 0) {
        const char *d = tt_error_detail();
        fprintf(stderr, ": %s", d[0] ? d : tt_strerror(err));
    }
    fprintf(stderr, "\n");
    exit(1);
}

long long cli_parse_int(const char *opt, const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        cli_die(0, "%s expects an integer, got '%s'", opt, s);
    if (v < lo || v > hi) cli_die(0, "%s must be in [%lld, %lld], got %lld", opt, lo, hi, v);
    return v;
}

double cli_parse_float(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v))
        cli_die(0, "%s expects a number, got '%s'", opt, s);
    if (v < lo || v > hi) cli_die(0, "%s must be in [%g, %g], got %g", opt, lo, hi, v);
    return v;
}

const char *cli_value(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) cli_die(0, "option %s needs a value", argv[*i]);
    return argv[++*i];
}

int cli_parse_ids(const char *opt, const char *s, int32_t *out, int max)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX)
            cli_die(0, "%s expects comma-separated token ids, bad value at '%s'", opt, p);
        if (n >= max) cli_die(0, "%s has more than %d ids", opt, max);
        out[n++] = (int32_t)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) cli_die(0, "%s expects comma-separated token ids, bad value at '%s'", opt, p);
    }
    if (n == 0) cli_die(0, "%s is empty", opt);
    return n;
}

const char cli_model_opts_help[] =
    "  -m, --model FILE     GGUF model file (required)\n"
    "  -t, --threads N      worker threads (default: all cores)\n"
    "  -c, --ctx N          context size in tokens (default: min(model's, 4096))\n"
    "  -b, --batch N        prompt tokens per forward batch (default 256)\n"
    "      --kv-type T      KV cache type: f16 (default) or f32\n"
    "      --split S        under mpirun: how to share the work between ranks: even (default),\n"
    "                       auto (by each rank's measured memory bandwidth), or weights \"2,1,1\"\n"
    "      --comm-type T    activations on the wire: f32 (default, exact), f16 or q8\n"
    "      --plan P         under mpirun: tp (tensor parallel, default), pp (pipeline: each\n"
    "                       rank a stage of whole layers, sized by --split), hybrid (a stage\n"
    "                       per host, tensor parallel inside it; hybrid:S = S stages of\n"
    "                       consecutive ranks), or auto (measure the cluster and run the layout\n"
    "                       the planner predicts fastest, leaving slow ranks idle if it helps)\n"
    "      --cluster FILE   with --plan auto: plan for this cluster description (JSON, as\n"
    "                       `tutti topo --json` prints) instead of measuring the cluster\n"
    "      --tp-join J      gather (default: bit-identical to one rank, 4 all-gathers per layer)\n"
    "                       or sum (2 all-reduces per layer, rounding-level differences; the\n"
    "                       default when every rank has a GPU, since GPU ranks join by sum)\n"
    "      --gpu-layers N   layers on the GPU (CUDA builds): -1 = as many as fit (default), 0 = none\n"
    "      --weights-from 0 ranks without the model file receive their slices from rank 0\n"
    "                       (checksummed), so only rank 0 needs the file\n"
    "      --mem-limit MIB  refuse to start when a rank would need more memory than this\n"
    "      --moe-replicas R spare expert slots per rank and layer for hot copies (default 2; -1 = 0)\n"
    "      --moe-every N    check expert balance every N steps (default 16; -1 = static placement)\n"
    "      --moe-threshold T  rebalance when max/mean rank load exceeds T (default 1.1)\n";

bool cli_model_opt(int argc, char **argv, int *i, struct cli_model_opts *o)
{
    const char *a = argv[*i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_path = cli_value(argc, argv, i);
    else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
        o->engine.n_threads = (int)cli_parse_int(a, cli_value(argc, argv, i), 1, 512);
    else if (!strcmp(a, "-c") || !strcmp(a, "--ctx"))
        o->engine.n_ctx = (int)cli_parse_int(a, cli_value(argc, argv, i), 1, 1 << 24);
    else if (!strcmp(a, "-b") || !strcmp(a, "--batch"))
        o->engine.n_batch = (int)cli_parse_int(a, cli_value(argc, argv, i), 1, 65536);
    else if (!strcmp(a, "--split")) o->split = cli_value(argc, argv, i);
    else if (!strcmp(a, "--cluster")) o->cluster_path = cli_value(argc, argv, i);
    else if (!strcmp(a, "--plan")) {
        o->plan_mode = cli_value(argc, argv, i);
        if (strcmp(o->plan_mode, "tp") && strcmp(o->plan_mode, "pp") && strcmp(o->plan_mode, "auto") &&
            strcmp(o->plan_mode, "hybrid") && strncmp(o->plan_mode, "hybrid:", 7))
            cli_die(0, "--plan must be tp, pp, hybrid, hybrid:S or auto, got '%s'", o->plan_mode);
        if (!strncmp(o->plan_mode, "hybrid:", 7)) cli_parse_int("--plan hybrid:S", o->plan_mode + 7, 1, PLAN_RANKS_MAX);
    }
    else if (!strcmp(a, "--weights-from")) {
        cli_parse_int(a, cli_value(argc, argv, i), 0, 0); /* only rank 0 serves weights */
        o->weights_from_0 = true;
    } else if (!strcmp(a, "--mem-limit"))
        o->engine.mem_limit_bytes = (uint64_t)cli_parse_int(a, cli_value(argc, argv, i), 1, 1ll << 30) << 20;
    else if (!strcmp(a, "--moe-replicas"))
        o->engine.moe_replicas = (int)cli_parse_int(a, cli_value(argc, argv, i), -1, 4096);
    else if (!strcmp(a, "--moe-every"))
        o->engine.moe_every = (int)cli_parse_int(a, cli_value(argc, argv, i), -1, 1 << 30);
    else if (!strcmp(a, "--moe-threshold"))
        o->engine.moe_threshold = cli_parse_float(a, cli_value(argc, argv, i), 1.0, 1000.0);
    else if (!strcmp(a, "--tp-join")) {
        const char *v = cli_value(argc, argv, i);
        o->tp_join_set = true;
        if (!strcmp(v, "gather")) o->engine.join = PLAN_JOIN_GATHER;
        else if (!strcmp(v, "sum")) o->engine.join = PLAN_JOIN_SUM;
        else cli_die(0, "--tp-join must be gather or sum, got '%s'", v);
    }
    else if (!strcmp(a, "--gpu-layers") || !strcmp(a, "-ngl")) {
        o->engine.n_gpu_layers = (int)cli_parse_int(a, cli_value(argc, argv, i), -1, MODEL_LAYERS_MAX);
        o->gpu_layers_set = true;
    }
    else if (!strcmp(a, "--comm-type")) {
        const char *v = cli_value(argc, argv, i);
        int w = -1;
        for (int k = 0; k < COMM_WIRE_COUNT; k++)
            if (!strcmp(v, comm_wire_name((enum comm_wire)k))) w = k;
        if (w < 0) cli_die(0, "--comm-type must be f32, f16 or q8, got '%s'", v);
        o->engine.wire = (enum comm_wire)w;
    } else if (!strcmp(a, "--kv-type")) {
        const char *v = cli_value(argc, argv, i);
        if (!strcmp(v, "f16")) o->engine.kv = ENGINE_KV_F16;
        else if (!strcmp(v, "f32")) o->engine.kv = ENGINE_KV_F32;
        else cli_die(0, "--kv-type must be f16 or f32, got '%s'", v);
    } else return false;
    return true;
}

void cli_load_model(const char *path, struct model *m)
{
    if (!path) cli_die(0, "no model given (-m FILE)");
    int err = model_load(m, path);
    if (err) cli_die(err, "cannot load model '%s'", path);
    /* Touch every page once: page faults then happen here, with a progress
     * bar, instead of inside the first token's timing. On several ranks each
     * rank reads only its slices when the engine copies them. */
    if (the_comm && comm_size(the_comm) > 1) return;
    struct cli_progress p;
    cli_progress_start(&p, "loading");
    const volatile uint8_t *map = m->file.map;
    const uint64_t size = m->file.size_bytes, step = 4096, chunk = 64ull << 20;
    uint8_t sink = 0;
    for (uint64_t off = 0; off < size; off += step) {
        sink ^= map[off];
        if (off % chunk == 0) cli_progress_update(&p, (double)off, (double)size);
    }
    (void)sink;
    cli_progress_end(&p);
}

/* Several ranks: which have the file; header from rank 0 for those without
 * (--weights-from 0); every rank's file must match rank 0's. */
static void load_cluster_model(struct cli_model_opts *o, struct model *m)
{
    const int n = comm_size(the_comm), rank = comm_rank(the_comm);
    int8_t mine = o->model_path && access(o->model_path, R_OK) == 0, *has = malloc((size_t)n);
    if (!has) cli_die(TT_ENOMEM, "loading");
    int err = comm_allgather(the_comm, &mine, 1, has);
    if (err) cli_die(err, "exchanging file status");
    if (!has[0]) cli_die(0, "rank 0 cannot read the model file '%s'", o->model_path ? o->model_path : "");
    int missing = -1;
    for (int r = n - 1; r > 0; r--)
        if (!has[r]) missing = r;
    if (missing > 0 && !o->weights_from_0)
        cli_die(0, "rank %d cannot read the model file '%s': give every rank the file, or add "
                "--weights-from 0 to send the weights from rank 0", missing, o->model_path);
    if (mine) cli_load_model(o->model_path, m);
    if (missing > 0) { /* the header (metadata, tensor directory) travels to every rank */
        uint64_t sizes[2] = { mine ? m->file.size_bytes : 0, mine ? m->file.data_offset : 0 };
        if ((err = comm_bcast(the_comm, sizes, sizeof(sizes), 0))) cli_die(err, "receiving the header");
        if (sizes[1] > sizes[0] || sizes[1] > (256u << 20)) cli_die(0, "bad header size from rank 0");
        uint8_t *hdr = rank == 0 ? (uint8_t *)m->file.map : malloc(sizes[1]);
        if (!hdr || (err = comm_bcast(the_comm, hdr, sizes[1], 0))) cli_die(err ? err : TT_ENOMEM, "receiving the header");
        if (!mine && (err = model_bind_header(m, hdr, sizes[1], sizes[0])))
            cli_die(err, "the model header received from rank 0");
        if (rank != 0) free(hdr);
    }
    /* same file everywhere: compare fingerprints of the header and size */
    uint64_t fp = XXH64(m->file.map, m->file.data_offset, m->file.size_bytes), *fps = malloc(sizeof(uint64_t) * (size_t)n);
    if (!fps || (err = comm_allgather(the_comm, &fp, sizeof(fp), fps))) cli_die(err ? err : TT_ENOMEM, "comparing files");
    for (int r = 1; r < n; r++)
        if (fps[r] != fps[0])
            cli_die(0, "rank %d's model file differs from rank 0's (metadata or tensor layout); give "
                    "every rank the same file, or use --weights-from 0", r);
    free(fps);
    free(has);
}

void cli_load_cluster(const char *path, struct plan_cluster *c)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) cli_die(0, "cannot open the cluster description '%s': %s", path, strerror(errno));
    char *text = malloc(PLAN_CLUSTER_JSON_MAX + 1);
    if (!text) cli_die(TT_ENOMEM, "reading '%s'", path);
    const size_t n = fread(text, 1, PLAN_CLUSTER_JSON_MAX + 1, fp);
    const bool bad = ferror(fp);
    fclose(fp);
    if (bad) cli_die(TT_EIO, "cannot read '%s'", path);
    int err = plan_cluster_parse(c, text, n);
    free(text);
    if (err) cli_die(err, "'%s'", path);
    if (!c->name[0]) snprintf(c->name, sizeof(c->name), "%s", path);
}

/* Ranks the layout leaves out, as "1,3" (or "none"). */
static void idle_list(const struct plan *p, char *out, size_t cap)
{
    size_t at = 0;
    out[0] = 0;
    for (int r = 0; r < p->n_ranks && at + 12 < cap; r++)
        if (p->ranks[r].stage == PLAN_STAGE_IDLE) at += (size_t)snprintf(out + at, cap - at, "%s%d", at ? "," : "", r);
    if (!at) snprintf(out, cap, "none");
}

/* Rank 0's account of the planner's choice, on stderr. */
static void plan_auto_report(const struct plan_result *res, const struct plan *p)
{
    const struct plan_candidate *c = &res->cands[res->chosen];
    char idle[256];
    idle_list(p, idle, sizeof(idle));
    fprintf(stderr, "tutti: --plan auto: %s%s, %d stage(s) over %d of %d ranks (idle: %s), predicted "
            "%.2f tok/s, TTFT %.0f ms\n", plan_layout_name(c->layout),
            c->layout == PLAN_LAYOUT_TP || c->layout == PLAN_LAYOUT_HYBRID
                ? (c->join == PLAN_JOIN_SUM ? " (sum)" : " (gather)") : "",
            c->n_stages, c->n_ranks, p->n_ranks, idle, c->decode_tok_s, c->ttft_s * 1e3);
    const struct plan_candidate *one = res->best_single >= 0 ? &res->cands[res->best_single] : NULL;
    if (res->verdict == PLAN_VERDICT_SINGLE)
        fprintf(stderr, "tutti: --plan auto: the cluster cannot beat one rank (rank %d alone is "
                "predicted fastest); the other ranks stay idle\n", c->ranks[0].rank);
    else if (res->verdict == PLAN_VERDICT_MEMORY)
        fprintf(stderr, "tutti: --plan auto: no rank holds the model alone; the cluster is used for "
                "its memory\n");
    else if (one)
        fprintf(stderr, "tutti: --plan auto: %.2fx the best single rank (rank %d, %.2f tok/s)\n",
                c->decode_tok_s / one->decode_tok_s, one->ranks[0].rank, one->decode_tok_s);
}

/* --plan auto: measure the cluster (as `tutti topo`), let the planner
 * predict every layout (one rank, tensor parallel with either join,
 * pipeline, hybrid; all ranks or the fastest ones), and run its choice;
 * ranks it leaves out stay idle. Rank 0 decides and broadcasts the plan. */
static struct plan *plan_auto(struct cli_model_opts *o, const struct model *m)
{
    const int n = comm_size(the_comm);
    char *json = o->cluster_path ? NULL : cli_topo_json(o->engine.n_threads);
    const size_t bytes = sizeof(struct plan) + sizeof(struct plan_rank) * (size_t)n;
    struct plan *p = NULL;
    if (comm_rank(the_comm) == 0) {
        struct plan_cluster *cl = malloc(sizeof(*cl));
        struct plan_model pm;
        struct plan_workload w;
        struct plan_result res = { 0 };
        plan_workload_default(&w);
        const int ctx = o->engine.n_ctx > 0 ? o->engine.n_ctx : TT_MIN(m->hp.n_ctx_train, ENGINE_CTX_DEFAULT);
        w.n_ctx = TT_MAX(ctx, w.prompt_tokens); /* as the engine will size its cache */
        if (!cl) cli_die(TT_ENOMEM, "--plan auto");
        int err = 0;
        if (o->cluster_path) cli_load_cluster(o->cluster_path, cl);
        else err = plan_cluster_parse(cl, json, strlen(json));
        if (!err && cl->n_ranks != n)
            cli_die(0, "--plan auto: the cluster description has %d ranks, this job %d", cl->n_ranks, n);
        if (!err) err = plan_model_from_model(&pm, m);
        if (!err) plan_cluster_for_model(cl, &pm);
        if (!err && (err = plan_search(&res, &pm, cl, &w))) plan_model_free(&pm);
        if (err) cli_die(err, "--plan auto");
        if (res.chosen < 0) cli_die(0, "--plan auto: no layout fits this cluster's memory");
        if (!(p = plan_from_candidate(&pm, &res.cands[res.chosen], n))) cli_die(TT_EINVAL, "--plan auto");
        plan_auto_report(&res, p);
        plan_result_free(&res);
        plan_model_free(&pm);
        free(cl);
    } else if (!(p = malloc(bytes))) {
        cli_die(TT_ENOMEM, "--plan auto");
    }
    free(json);
    int err = comm_bcast(the_comm, p, bytes, 0);
    if (err) cli_die(err, "--plan auto");
    o->engine.join = p->join;
    return p;
}

/* --plan hybrid: a stage per host (in order of their first rank), or
 * hybrid:S, S stages of consecutive ranks; tensor parallel inside. */
static struct plan *plan_hybrid(const struct cli_model_opts *o, const struct model *m,
                                const struct plan_align *a, const double *w, int n)
{
    int32_t *stage_of = malloc(sizeof(int32_t) * (size_t)n);
    if (!stage_of) cli_die(TT_ENOMEM, "planning");
    int n_stages = 0;
    if (o->plan_mode[6] == ':') {
        n_stages = (int)strtol(o->plan_mode + 7, NULL, 10);
        if (n_stages > n) cli_die(0, "--plan %s: more stages than the %d ranks", o->plan_mode, n);
        for (int r = 0; r < n; r++) stage_of[r] = (int32_t)((int64_t)r * n_stages / n);
    } else {
        for (int r = 0; r < n; r++) {
            stage_of[r] = -1;
            for (int q = 0; q < r && stage_of[r] < 0; q++)
                if (!strcmp(comm_host(the_comm, q), comm_host(the_comm, r))) stage_of[r] = stage_of[q];
            if (stage_of[r] < 0) stage_of[r] = n_stages++;
        }
    }
    struct plan *p = plan_staged(&m->hp, a, n, stage_of, n_stages, NULL, w, o->engine.join);
    free(stage_of);
    return p;
}

/* GPU ranks join by sum (engine_cuda.c): when every rank has a GPU, the GPUs
 * are not disabled and --tp-join was not given, the model gets that join
 * instead of the CPU's exact gather. Collective. */
static void join_for_gpus(struct cli_model_opts *o)
{
    const int n = comm_size(the_comm);
    if (o->tp_join_set || o->engine.n_gpu_layers == 0) return;
    int32_t mine = engine_gpu_count(), *all = malloc(sizeof(int32_t) * (size_t)n);
    if (!all) cli_die(TT_ENOMEM, "planning");
    int err = comm_allgather(the_comm, &mine, sizeof(mine), all);
    if (err) cli_die(err, "exchanging GPU counts");
    bool every = true;
    for (int r = 0; r < n; r++) every = every && all[r] > 0;
    free(all);
    if (!every) return;
    o->engine.join = PLAN_JOIN_SUM;
    if (comm_rank(the_comm) == 0)
        tt_info("every rank has a GPU: tensor-parallel joins by sum (--tp-join gather keeps the exact CPU join)");
}

void cli_load_model_opts(struct cli_model_opts *o, struct model *m)
{
    if (comm_size(the_comm) > 1) load_cluster_model(o, m);
    else cli_load_model(o->model_path, m);
    o->engine.comm = the_comm;
    if (!o->gpu_layers_set) o->engine.n_gpu_layers = -1;
    const int n = comm_size(the_comm);
    if (n == 1) return;
    join_for_gpus(o);
    double *w = malloc(sizeof(double) * (size_t)n);
    bool is_auto = false;
    if (!w) cli_die(TT_ENOMEM, "planning");
    int err = plan_parse_split(o->split ? o->split : "even", n, w, &is_auto);
    if (err) cli_die(err, "--split");
    if (is_auto) { /* each rank's capacity = its measured read bandwidth */
        double mine = cli_measure_read_bw(o->engine.n_threads > 0 ? o->engine.n_threads : tt_cpu_count(), the_comm);
        if ((err = comm_allgather(the_comm, &mine, sizeof(mine), w))) cli_die(err, "exchanging capacities");
        for (int r = 0; r < n; r++) w[r] = w[r] > 0 ? w[r] : 1.0;
    }
    struct plan_align a;
    plan_align_for_model(m, &a);
    const char *mode = o->plan_mode ? o->plan_mode : "tp";
    if (o->cluster_path && strcmp(mode, "auto")) cli_die(0, "--cluster goes with --plan auto");
    if (!strcmp(mode, "auto")) o->plan = plan_auto(o, m);
    if (o->engine.wire != COMM_WIRE_F32 && o->engine.join == PLAN_JOIN_GATHER && comm_rank(the_comm) == 0)
        tt_warn("--comm-type %s applies to --tp-join sum; the gathering join sends exact f32",
                comm_wire_name(o->engine.wire));
    if (!strcmp(mode, "pp")) o->plan = plan_pipeline(&m->hp, n, w);
    else if (!strncmp(mode, "hybrid", 6)) o->plan = plan_hybrid(o, m, &a, w, n);
    else if (!strcmp(mode, "tp")) o->plan = plan_tensor_parallel(&m->hp, &a, n, w, o->engine.join);
    if (!o->plan) cli_die(TT_EINVAL, "planning");
    o->engine.plan = o->plan;
    free(w);
}

void cli_progress_start(struct cli_progress *p, const char *label)
{
    *p = (struct cli_progress){ .label = label, .start_s = tt_now_s(), .delay_s = 1.0, .last_pct = -1 };
}

void cli_progress_update(struct cli_progress *p, double done, double total)
{
    const char *env = getenv("TT_PROGRESS");
    bool enabled = env ? atoi(env) != 0 : isatty(2);
    if (!enabled || tt_now_s() - p->start_s < p->delay_s || total <= 0) return;
    int pct = (int)(100.0 * done / total);
    if (pct == p->last_pct) return;
    p->last_pct = pct;
    p->shown = true;
    int bar = pct * 30 / 100;
    fprintf(stderr, "\r%-10s [%.*s%*s] %3d%%", p->label, bar, "##############################",
            30 - bar, "", pct);
    fflush(stderr);
}

void cli_progress_end(struct cli_progress *p)
{
    if (p->shown) fprintf(stderr, "\r%-10s done in %.1f s%30s\n", p->label, tt_now_s() - p->start_s, "");
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_valid_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n) return 0;
    unsigned cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    static const unsigned min_cp[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

void cli_json_str(FILE *fp, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    fputc('"', fp);
    for (size_t i = 0; i < len;) {
        unsigned char c = u[i];
        size_t l = utf8_valid_len(u + i, len - i);
        if (l == 0) {
            fputs("\\ufffd", fp);
            i++;
            continue;
        }
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c == '\n') fputs("\\n", fp);
        else if (c == '\t') fputs("\\t", fp);
        else if (c == '\r') fputs("\\r", fp);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fwrite(u + i, 1, l, fp);
        i += l;
    }
    fputc('"', fp);
}

/* Read the prompt text (from -p or -f); caller frees. */
char *cli_load_prompt(const char *text, const char *file, size_t *len)
{
    if (text && file) cli_die(0, "give either -p or -f, not both");
    if (text) {
        *len = strlen(text);
        return strdup(text);
    }
    if (!file) cli_die(0, "no prompt given (-p TEXT or -f FILE)");
    FILE *fp = fopen(file, "rb");
    if (!fp) cli_die(0, "cannot open prompt file '%s'", file);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, fp)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(fp);
    if (!buf) cli_die(TT_ENOMEM, "reading '%s'", file);
    *len = n;
    return buf;
}

/* Tokenize with the model's vocabulary; dies on error. Returns malloc'd ids. */
int32_t *cli_tokenize(const struct tok_vocab *v, const char *text, size_t len,
                                bool add_special,
                      bool parse_special, int *n_out)
{
    int max = (int)TT_MIN(len + 16, (size_t)CLI_PROMPT_TOKENS_MAX);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)max);
    if (!ids) cli_die(TT_ENOMEM, "tokenizing");
    int n = tok_encode(v, text, len, add_special, parse_special, ids, max);
    if (n < 0) cli_die(n, "cannot tokenize the prompt");
    *n_out = n;
    return ids;
}


const char cli_sampler_opts_help[] =
    "      --temp T         temperature; 0 = greedy (default 0.8)\n"
    "      --top-k N        keep the N most likely tokens (default 40, 0 = off)\n"
    "      --top-p P        nucleus sampling mass (default 0.95, 1 = off)\n"
    "      --min-p P        drop tokens below P x the best one's probability (default 0.05)\n"
    "      --repeat-penalty R  penalty for recent tokens (default 1 = off)\n"
    "      --repeat-last-n N   window of the penalty (default 64)\n"
    "      --seed N         random seed (default 0 = fixed default seed)\n";

bool cli_sampler_opt(int argc, char **argv, int *i, struct sampler_opts *so)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--temp")) so->temperature = (float)cli_parse_float(a, cli_value(argc, argv, i), 0, 100);
    else if (!strcmp(a, "--top-k")) so->top_k = (int)cli_parse_int(a, cli_value(argc, argv, i), 0, 1 << 24);
    else if (!strcmp(a, "--top-p")) so->top_p = (float)cli_parse_float(a, cli_value(argc, argv, i), 0, 1);
    else if (!strcmp(a, "--min-p")) so->min_p = (float)cli_parse_float(a, cli_value(argc, argv, i), 0, 1);
    else if (!strcmp(a, "--repeat-penalty"))
        so->repeat_penalty = (float)cli_parse_float(a, cli_value(argc, argv, i), 0.01, 100);
    else if (!strcmp(a, "--repeat-last-n"))
        so->repeat_last_n = (int)cli_parse_int(a, cli_value(argc, argv, i), 0, SAMPLER_HISTORY_MAX);
    else if (!strcmp(a, "--seed"))
        so->seed = (uint64_t)cli_parse_int(a, cli_value(argc, argv, i), 0, INT64_MAX);
    else return false;
    return true;
}

bool cli_shape_opt(const char *a, const char *v, struct model_hparams *hp)
{
#define INT(flag, field, lo, hi)                                                                   \
    if (!strcmp(a, flag)) {                                                                        \
        hp->field = (int32_t)cli_parse_int(a, v, lo, hi);                                          \
        return true;                                                                               \
    }
    INT("--n-embd", n_embd, 1, MODEL_DIM_MAX);
    INT("--n-layer", n_layer, 1, MODEL_LAYERS_MAX);
    INT("--n-head", n_head, 1, 4096);
    INT("--n-head-kv", n_head_kv, 1, 4096);
    INT("--head-dim", head_dim, 2, 4096);
    INT("--n-ff", n_ff, 1, MODEL_DIM_MAX);
    INT("--vocab", n_vocab, 1, MODEL_VOCAB_MAX);
    INT("--n-expert", n_expert, 0, MODEL_EXPERTS_MAX);
    INT("--n-expert-used", n_expert_used, 1, MODEL_EXPERTS_MAX);
    INT("--n-ff-exp", n_ff_exp, 1, MODEL_DIM_MAX);
    INT("--n-ff-shexp", n_ff_shexp, 0, MODEL_DIM_MAX);
#undef INT
    return false;
}
