/*
 * cli: the `tutti` command and its subcommands.
 *
 * Every subcommand is `int cmd_NAME(int argc, char **argv)` returning the
 * process exit status; only this module calls exit(). Option values are
 * validated here (cli_parse_*), so the modules below receive checked inputs.
 * Errors print as "tutti: error: <what>" plus the library's detail.
 */
#ifndef TT_CLI_H
#define TT_CLI_H

#include "../engine/engine.h"
#include "../kcpu/kcpu.h"

#include <stdio.h>

int cmd_run(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_gen(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_topo(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_plan(int argc, char **argv);

/* The process's communicator (one rank unless launched by mpirun),
 * started by main() before a command runs and ended after. */
void cli_comm_start(int *argc, char ***argv);
struct comm *cli_comm(void);
void cli_comm_end(void);

/* Print "tutti: error: ..." (and the last library error detail when err < 0)
 * and exit(1). */
_Noreturn void cli_die(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse a whole-string integer/float option value in [lo, hi] or die naming the option. */
long long cli_parse_int(const char *opt, const char *s, long long lo, long long hi);
double cli_parse_float(const char *opt, const char *s, double lo, double hi);
/* The value after option argv[*i]; dies if missing. */
const char *cli_value(int argc, char **argv, int *i);
/* Comma-separated integer list, e.g. "1,2,3"; returns count, dies on junk. */
int cli_parse_ids(const char *opt, const char *s, int32_t *out, int max);

/* Options shared by commands that run a model. */
struct cli_model_opts {
    const char *model_path;
    struct engine_opts engine;
    const char *split;     /* --split: even (default), auto, or per-rank weights */
    struct plan *plan;     /* built by cli_load_model for several ranks */
    bool gpu_layers_set;   /* --gpu-layers given (else: auto) */
    bool tp_join_set;      /* --tp-join given (else: gather, or sum when every rank has a GPU) */
    bool weights_from_0;   /* --weights-from 0: ranks without the file get theirs from rank 0 */
    const char *plan_mode; /* --plan: tp (default), pp, hybrid[:S] or auto */
    const char *cluster_path; /* --cluster: --plan auto plans for this description, not a measurement */
};
/* Try to parse argv[*i] as a shared model option; returns true if consumed. */
bool cli_model_opt(int argc, char **argv, int *i, struct cli_model_opts *o);
extern const char cli_model_opts_help[];
/* Try to parse argv[*i] as a sampling option (--temp, --top-k, --top-p,
 * --min-p, --repeat-penalty, --repeat-last-n, --seed); true if consumed. */
bool cli_sampler_opt(int argc, char **argv, int *i, struct sampler_opts *so);
extern const char cli_sampler_opts_help[];
/* A model-shape option of `gen` and `plan` (--n-embd, --n-layer, --n-head,
 * --n-head-kv, --head-dim, --n-ff, --vocab, --n-expert, --n-expert-used,
 * --n-ff-exp, --n-ff-shexp) with value v into hp; false if a is none. */
bool cli_shape_opt(const char *a, const char *v, struct model_hparams *hp);
/* Load the model (dies with a clear message on error) and touch its pages
 * with a progress bar, so the first token does not pay for page faults. */
void cli_load_model(const char *path, struct model *m);
/* Read and parse a cluster description (JSON, docs/PLANNER.md); dies with
 * the parser's message naming the field on error. */
struct plan_cluster;
void cli_load_cluster(const char *path, struct plan_cluster *c);
/* This machine's GPU as the planner describes a rank (cmd_plan_gpu.c):
 * copy bandwidth, one-token product bandwidth, prompt-batch GFLOP/s and
 * per-layer kernel overhead, timed on the model's FFN shapes, and free
 * device memory into *r (host name left as it is), then fitted to the
 * engine's own times (cli_engine_fit). False, with *r untouched, in builds
 * without CUDA, without a device or on an error. */
struct plan_model;
struct plan_hw_rank;
struct plan_workload;
bool cli_gpu_describe(const struct plan_model *pm, const struct plan_workload *w, int threads,
                      struct plan_hw_rank *r);
/* The same kernel figures alone (no engine timing), on the GPU a rank with
 * this local rank uses (local_rank % devices, as the engine picks it).
 * False, *r untouched, as cli_gpu_describe. */
bool cli_gpu_describe_kernels(const struct plan_model *pm, int local_rank, struct plan_hw_rank *r);
/* Collective over c: when every rank has a CUDA GPU and NCCL, time NCCL
 * all-reduces (each with the add that follows it in the engine) of a decode
 * row and of a prompt batch inside graphs on the GPUs the engine would use,
 * and turn them into the per-link figures from which `tutti plan`'s
 * all-reduce of comm_size(c) ranks gives those times. False (on every
 * rank) without CUDA, a GPU or NCCL on some rank, or on an error. */
struct comm;
struct plan_link;
bool cli_gpu_join_link(struct comm *c, int local_rank, struct plan_link *out);
/* The model of a `tutti plan --shape` name (Q4_K_M) into *pm; dies on an
 * unknown name. */
int cli_plan_shape_model(const char *shape, struct plan_model *pm);
/* Fit *r's overheads and speeds (plan_fit_engine) to the engine's times on
 * models of pm's shape with n and 2n layers (cmd_plan_gpu.c says how n is
 * chosen), made in a temporary directory
 * and run on this machine's GPU (gpu) or CPU with w's prompt length and
 * batch and `threads` threads. False, with *r untouched and a warning, on
 * any error. */
bool cli_engine_fit(const struct plan_model *pm, const struct plan_workload *w, int threads,
                    bool gpu, struct plan_hw_rank *r);
/* Load the model and, on several ranks, build the plan from --split and
 * point o->engine at the communicator and the plan. */
void cli_load_model_opts(struct cli_model_opts *o, struct model *m);

/* Progress bar on stderr, drawn only after `delay_s` and only on a terminal
 * (or when TT_PROGRESS=1). */
struct cli_progress {
    const char *label;
    double start_s;
    double delay_s;
    int last_pct;
    bool shown;
};
void cli_progress_start(struct cli_progress *p, const char *label);
void cli_progress_update(struct cli_progress *p, double done, double total);
void cli_progress_end(struct cli_progress *p);

#define CLI_PROMPT_TOKENS_MAX (1 << 24)
struct tok_vocab;
/* The prompt from -p TEXT or -f FILE (exactly one); caller frees. Dies on error. */
char *cli_load_prompt(const char *text, const char *file, size_t *len);
/* Token ids of text (malloc'd); dies on error. */
int32_t *cli_tokenize(const struct tok_vocab *v, const char *text, size_t len, bool add_special,
                      bool parse_special, int *n_out);

/* Minimal JSON output helpers (writing only; strings escaped, invalid UTF-8
 * bytes replaced by U+FFFD). */
void cli_json_str(FILE *fp, const char *s, size_t len);

/* Collective: measure the cluster as `tutti topo` does; rank 0 gets the
 * JSON text (malloc'd), the others NULL. */
char *cli_topo_json(int threads);

/* Measured memory read bandwidth in GB/s using n_threads (cmd_bench.c):
 * passes over 1 GiB, the best over CLI_PROBE_WINDOW_S. With `together`
 * (collective over it), every rank starts timing at once, after a barrier:
 * each measures its share of what the host gives them all. */
double cli_measure_read_bw(int n_threads, struct comm *together);

/* A product of rows x n weights of `type` against n_tok activation rows,
 * in the layout the engine gives such weights on this CPU (cli_measure.c),
 * ready to be timed; reps runs per timing (default 1). */
struct cli_product {
    const struct kcpu_ops *ops;
    enum tt_type type;
    enum kcpu_layout layout;
    uint8_t *w, *act;
    float *out; /* [n_tok][rows] */
    size_t w_row, act_row;
    int64_t n, rows, n_tok;
    int reps;
};
/* Random weights and activations (repeat: one weight row copied to all, for
 * matrices larger than the caches); false when out of memory. */
bool cli_product_init(struct cli_product *p, enum tt_type type, int64_t n, int64_t rows, int64_t n_tok,
                      bool repeat);
/* Seconds p->reps runs of the product take on the pool's threads. */
double cli_product_time(struct cli_product *p, struct tt_pool *pool);
void cli_product_free(struct cli_product *p);
/* The window every CPU probe (read bandwidth, products, attention) repeats
 * its sample over, keeping the best (cli_measure.c says why). 0.4 s holds
 * 12-60 samples of the read and matrix-vector probes (1 GiB and 512 MiB at
 * 30-80 GB/s) and 20 of the 20 ms prompt samples: many more than the
 * noisy slices of a shared host (scheduler quanta of 3-24 ms, a
 * neighbour's bursts) spoil, while `tutti plan`'s five to seven probes
 * still take a few seconds. */
#define CLI_PROBE_WINDOW_S 0.4
/* Run sample(ctx) (a rate: higher is better) until window_s seconds have
 * passed; the best of the samples that ended inside the window (the first
 * one even if it did not). */
double cli_probe_best(double (*sample)(void *ctx), void *ctx, double window_s);
/* Whether a product of weights of `type` can be timed on this CPU (a
 * stored type with a kernel and an activation quantizer). */
bool cli_type_probed(enum tt_type type);
/* GB/s of weights a one-token product over 512 MiB (past any cache) of
 * `type` reads: what decode reaches on such weights; the best over
 * CLI_PROBE_WINDOW_S (0 when out of memory or not cli_type_probed).
 * `together` as cli_measure_read_bw's (taken even when 0 is returned). */
double cli_measure_matvec_gbs(struct tt_pool *pool, enum tt_type type, struct comm *together);
/* Ask for huge pages under [p, p + bytes) (whole pages inside it), before
 * its first touch: the engine's packed weights have them (engine_shard.c),
 * so the probes that stream memory take them too. Only advice. */
void cli_advise_huge_pages(void *p, size_t bytes);
/* This machine's total and available memory in GiB, from /proc/meminfo
 * (cli_measure.c); 0 where it cannot be read. */
void cli_meminfo(double *total_gib, double *avail_gib);
/* A timing prompt: n ids spread over a vocabulary of n_vocab (> 3) tokens,
 * the control ids 0-2 left out (cli_measure.c); `tutti bench` and the
 * planner's engine timing run the same prompts. */
void cli_prompt_ids(int32_t *ids, int n, int n_vocab);

#endif
