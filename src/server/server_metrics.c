/*
 * server_metrics.c: the numbers behind GET /metrics, in Prometheus' text
 * exposition format (version 0.0.4).
 *
 * The struct is plain data: the server updates it under its own lock and
 * renders a copy, so nothing here synchronises. Histograms are cumulative
 * when rendered (each bucket counts every observation <= its bound), as
 * Prometheus requires; internally each bucket counts its own range.
 */
#include "server.h"

#include <string.h>

/* Seconds: from 1 ms to 60 s for time to first token and queue waits. */
static const double ttft_bounds[SERVER_HIST_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60,
};
/* Seconds between two tokens of one answer: 0.1 ms to 5 s. */
static const double token_bounds[SERVER_HIST_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
};

static const char *finish_names[SERVER_FINISH_COUNT] = {"stop", "length", "cancelled", "error"};
static const char *kind_names[SERVER_KIND_COUNT] = {"chat", "completion"};

void server_metrics_init(struct server_metrics *m)
{
    memset(m, 0, sizeof(*m));
    m->ttft.bounds = ttft_bounds;
    m->queue_wait.bounds = ttft_bounds;
    m->token_latency.bounds = token_bounds;
    m->n_ranks = 1;
    m->start_s = tt_now_s();
}

void server_hist_observe(struct server_hist *h, double v)
{
    int b = 0;
    while (b < SERVER_HIST_BUCKETS && v > h->bounds[b])
        b++;
    h->counts[b]++;
    h->count++;
    h->sum += v;
}

void server_metrics_count_status(struct server_metrics *m, int status)
{
    for (int i = 0; i < SERVER_STATUS_TRACKED; i++) {
        if (m->status_code[i] == status || m->status_code[i] == 0) {
            m->status_code[i] = status;
            m->status_count[i]++;
            return;
        }
    }
    /* more distinct statuses than slots: count them with the last one */
    m->status_count[SERVER_STATUS_TRACKED - 1]++;
}

static int render_hist(struct server_buf *o, const char *name, const char *help,
                       const struct server_hist *h)
{
    int rc = server_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < SERVER_HIST_BUCKETS; b++) {
        cum += h->counts[b];
        rc |= server_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[b],
                                (unsigned long long)cum);
    }
    rc |= server_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
                            (unsigned long long)h->count, name, h->sum, name,
                            (unsigned long long)h->count);
    return rc;
}

static int render_one(struct server_buf *o, const char *type, const char *name, const char *help,
                      double v)
{
    return server_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type,
                             name, v);
}

static int render_requests(const struct server_metrics *m, struct server_buf *o)
{
    int rc = server_buf_printf(
        o, "# HELP tutti_requests_total Generation requests accepted, by endpoint.\n"
           "# TYPE tutti_requests_total counter\n");
    for (int k = 0; k < SERVER_KIND_COUNT; k++)
        rc |= server_buf_printf(o, "tutti_requests_total{endpoint=\"%s\"} %llu\n", kind_names[k],
                                (unsigned long long)m->requests[k]);
    rc |= server_buf_printf(o, "# HELP tutti_http_responses_total HTTP responses, by status code.\n"
                               "# TYPE tutti_http_responses_total counter\n");
    for (int i = 0; i < SERVER_STATUS_TRACKED && m->status_code[i]; i++)
        rc |= server_buf_printf(o, "tutti_http_responses_total{code=\"%d\"} %llu\n",
                                m->status_code[i], (unsigned long long)m->status_count[i]);
    rc |= server_buf_printf(o, "# HELP tutti_requests_finished_total Answers ended, by reason.\n"
                               "# TYPE tutti_requests_finished_total counter\n");
    for (int f = 0; f < SERVER_FINISH_COUNT; f++)
        rc |= server_buf_printf(o, "tutti_requests_finished_total{reason=\"%s\"} %llu\n",
                                finish_names[f], (unsigned long long)m->finished[f]);
    return rc;
}

static int render_moe(const struct server_metrics *m, struct server_buf *o)
{
    if (m->n_expert <= 0) return 0;
    int rc = server_buf_printf(o, "# HELP tutti_moe_expert_tokens Tokens routed to each expert, "
                                  "summed over layers, over the engine's recent steps.\n"
                                  "# TYPE tutti_moe_expert_tokens gauge\n");
    for (int x = 0; x < m->n_expert && x < SERVER_EXPERTS_MAX; x++)
        rc |= server_buf_printf(o, "tutti_moe_expert_tokens{expert=\"%d\"} %llu\n", x,
                                (unsigned long long)m->expert_tokens[x]);
    return rc | render_one(o, "gauge", "tutti_moe_rank_imbalance",
                           "Max over layers of the busiest rank's expert load / the mean.",
                           m->moe_imbalance);
}

int server_metrics_render(const struct server_metrics *m, struct server_buf *o)
{
    int rc = render_requests(m, o);
    rc |= render_one(o, "counter", "tutti_requests_rejected_total",
                     "Requests refused with 503 because the queue was full.",
                     (double)m->rejected_full);
    rc |= render_one(o, "counter", "tutti_prompt_tokens_total", "Prompt tokens evaluated.",
                     (double)m->prompt_tokens);
    rc |= render_one(o, "counter", "tutti_completion_tokens_total", "Tokens generated.",
                     (double)m->completion_tokens);
    rc |= render_one(o, "counter", "tutti_engine_steps_total",
                     "Batched forward passes (engine_decode calls).", (double)m->steps);
    rc |= render_one(o, "counter", "tutti_engine_step_tokens_total",
                     "Tokens in all forward passes.", (double)m->step_tokens);
    rc |= render_one(o, "counter", "tutti_engine_step_seconds_total",
                     "Time spent in forward passes.", m->step_seconds);
    rc |= render_hist(o, "tutti_time_to_first_token_seconds",
                      "From request arrival to its first generated token.", &m->ttft);
    rc |= render_hist(o, "tutti_inter_token_latency_seconds",
                      "Between consecutive tokens of one answer.", &m->token_latency);
    rc |= render_hist(o, "tutti_queue_wait_seconds",
                      "From request arrival to getting a sequence slot.", &m->queue_wait);
    rc |= render_one(o, "gauge", "tutti_requests_running", "Requests holding a sequence slot.",
                     m->running);
    rc |= render_one(o, "gauge", "tutti_requests_waiting", "Requests in the queue (queue depth).",
                     m->waiting);
    rc |= render_one(o, "gauge", "tutti_sequences", "Sequence slots (--parallel).", m->n_seq);
    rc |= render_one(o, "gauge", "tutti_kv_cache_used_cells",
                     "KV cache positions in use, all sequences.", (double)m->kv_used);
    rc |= render_one(o, "gauge", "tutti_kv_cache_total_cells", "KV cache positions, all sequences.",
                     (double)m->kv_total);
    rc |= render_one(o, "gauge", "tutti_kv_cache_usage_ratio", "Used / total KV cache positions.",
                     m->kv_total > 0 ? (double)m->kv_used / (double)m->kv_total : 0.0);
    rc |= render_one(o, "gauge", "tutti_ranks", "Processes computing every token.", m->n_ranks);
    rc |= server_buf_printf(
        o,
        "# HELP tutti_comm_seconds_total Time rank 0 spent in collective communication.\n"
        "# TYPE tutti_comm_seconds_total counter\ntutti_comm_seconds_total{rank=\"0\"} %.9g\n"
        "# HELP tutti_comm_bytes_total Bytes rank 0 sent and received.\n"
        "# TYPE tutti_comm_bytes_total counter\ntutti_comm_bytes_total{rank=\"0\"} %llu\n",
        m->comm_seconds, (unsigned long long)m->comm_bytes);
    rc |= render_moe(m, o);
    rc |= render_one(o, "gauge", "tutti_uptime_seconds", "Seconds since the server started.",
                     tt_now_s() - m->start_s);
    return rc ? TT_ENOMEM : 0;
}
