/*
 * plan_cluster.c: cluster descriptions (JSON) for the planner, parsed with
 * jansson and checked field by field (the format is in docs/PLANNER.md).
 *
 * Every value read is checked before use: numbers against their ranges,
 * strings against their buffers, rank indices against the ranks listed,
 * the total rank count against PLAN_CLUSTER_RANKS_MAX and the text length
 * against PLAN_CLUSTER_JSON_MAX. Unknown keys are errors (a misspelt
 * "read_gbs" must not silently become a default). An error names the field
 * ("ranks[2]: \"read_gbs\" must be a number") or the line and column of a
 * JSON syntax error. `tutti topo --json` prints a valid description.
 */
#include "plan_cost.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int jfail(const char *where, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int jfail(const char *where, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return tt_error_set(TT_EFORMAT, "cluster description: %s%s%s", where, *where ? ": " : "", msg);
}

static int check_keys(json_t *obj, const char *where, const char *const *known)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        bool ok = false;
        for (const char *const *k = known; *k && !ok; k++)
            ok = !strcmp(*k, key);
        if (ok) continue;
        char list[512] = "";
        for (const char *const *k = known; *k; k++)
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                     k == known ? "" : ", ", *k);
        return jfail(where, "unknown key \"%.40s\" (known: %s)", key, list);
    }
    return 0;
}

/* A number in [lo, hi] (lo excluded when lo_open); def when absent and optional. */
static int num_field(json_t *obj, const char *key, const char *where, double lo, bool lo_open,
                     double hi, bool required, double def, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required) return jfail(where, "missing \"%s\"", key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return jfail(where, "\"%s\" must be a number", key);
    const double x = json_number_value(v);
    if (!isfinite(x) || x < lo || (lo_open && x <= lo) || x > hi)
        return jfail(where, "\"%s\" is %g; it must be %s %g and <= %g", key, x,
                     lo_open ? ">" : ">=", lo, hi);
    *out = x;
    return 0;
}

static int int_field(json_t *obj, const char *key, const char *where, long long lo, long long hi,
                     long long def, long long *out)
{
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_is_integer(v)) return jfail(where, "\"%s\" must be an integer", key);
    const long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return jfail(where, "\"%s\" is %lld; it must be in [%lld, %lld]", key, x, lo, hi);
    *out = x;
    return 0;
}

static int str_value(json_t *v, const char *key, const char *where, char *buf, size_t cap)
{
    if (!json_is_string(v)) return jfail(where, "\"%s\" must be a string", key);
    const size_t n = json_string_length(v);
    if (n == 0 || n >= cap)
        return jfail(where, "\"%s\" must have 1 to %zu characters", key, cap - 1);
    memcpy(buf, json_string_value(v), n);
    buf[n] = 0;
    return 0;
}

/* Documentation-only fields: a string or an array of strings. */
static int text_field(json_t *obj, const char *key, const char *where)
{
    json_t *v = json_object_get(obj, key), *item;
    size_t i;
    if (!v || json_is_string(v)) return 0;
    if (!json_is_array(v))
        return jfail(where, "\"%s\" must be a string or an array of strings", key);
    json_array_foreach(v, i, item) if (!json_is_string(item)) return jfail(
        where, "\"%s\"[%zu] must be a string", key, i);
    return 0;
}

/* Rough matrix-product speed per core by instruction set, for descriptions
 * (such as `tutti topo --json`) that give cores but no gflops. */
static int gflops_estimate(json_t *obj, const char *where, double *gflops)
{
    static const struct {
        const char *isa;
        double per_core;
    } table[] = {
        {"avx512", 100.0},
        {"avx2", 50.0},
        {"neon", 25.0},
        {"scalar", 5.0},
    };
    long long cores;
    int err = int_field(obj, "cores", where, 1, 65536, 0, &cores);
    if (err) return err;
    if (!cores) return jfail(where, "missing \"gflops\" (or \"cores\", to estimate it)");
    json_t *isa = json_object_get(obj, "isa");
    double per_core = table[1].per_core;
    if (isa) {
        if (!json_is_string(isa)) return jfail(where, "\"isa\" must be a string");
        size_t i = 0;
        while (i < TT_ARRAY_LEN(table) && strcmp(table[i].isa, json_string_value(isa)))
            i++;
        if (i == TT_ARRAY_LEN(table))
            return jfail(where, "unknown \"isa\" (known: avx512, avx2, neon, scalar)");
        per_core = table[i].per_core;
    }
    *gflops = per_core * (double)cores;
    return 0;
}

static bool in_range(double x, double lo, bool lo_open, double hi);

/* "matvec_type_gbs": {"q4_K": 40.1, "q6_K": 35.2, ...}, `tutti topo`'s
 * one-token product speed per weight type. An explicit bw_efficiency wins:
 * the figures are checked, then dropped. */
static int parse_type_rates(json_t *o, const char *where, struct plan_hw_rank *r)
{
    json_t *v = json_object_get(o, "matvec_type_gbs"), *x;
    const char *key;
    if (!v) return 0;
    if (!json_is_object(v))
        return jfail(where, "\"matvec_type_gbs\" must be an object of GB/s by weight type "
                            "(\"q4_K\": 40)");
    json_object_foreach(v, key, x)
    {
        const int t = tt_type_from_name(key);
        if (t < 0 || !tt_type_is_stored((uint32_t)t))
            return jfail(where, "\"matvec_type_gbs\": unknown weight type \"%.32s\" (known: %s)",
                         key, tt_type_supported_list());
        if (!json_is_number(x) || !in_range(json_number_value(x), 0, true, 1e6))
            return jfail(where, "\"matvec_type_gbs\".\"%s\" must be a number > 0 and <= 1e+06",
                         key);
        r->matvec_type_gbs[t] = json_number_value(x);
    }
    if (json_object_get(o, "bw_efficiency"))
        memset(r->matvec_type_gbs, 0, sizeof(r->matvec_type_gbs));
    return 0;
}

static int parse_rank_figures(json_t *o, const char *where, struct plan_hw_rank *r)
{
    int err = num_field(o, "read_gbs", where, 0, true, 1e6, true, 0, &r->read_gbs);
    if (!err) err = num_field(o, "bw_efficiency", where, 0, true, 1, false, 1, &r->bw_efficiency);
    /* `tutti topo` measures the decode kernel's speed (matvec_gbs): without an
     * explicit bw_efficiency, the share of read_gbs it reaches is that. */
    double matvec = 0;
    if (!err) err = num_field(o, "matvec_gbs", where, 0, false, 1e6, false, 0, &matvec);
    if (!err && matvec > 0 && !json_object_get(o, "bw_efficiency") && r->read_gbs > 0)
        r->bw_efficiency = matvec / r->read_gbs > 1.0 ? 1.0 : matvec / r->read_gbs < 0.05 ? 0.05 : matvec / r->read_gbs;
    if (!err) err = parse_type_rates(o, where, r);
    if (!err) err = num_field(o, "mem_avail_gib", where, 0, true, 1e6, true, 0, &r->mem_avail_gib);
    if (!err)
        err = num_field(o, "mem_total_gib", where, 0, true, 1e6, false, r->mem_avail_gib,
                        &r->mem_total_gib);
    if (!err) err = num_field(o, "overhead_us", where, 0, false, 1e6, false, 0, &r->overhead_us);
    if (!err)
        err = num_field(o, "step_overhead_us", where, 0, false, 1e6, false, 0,
                        &r->step_overhead_us);
    if (!err)
        err = num_field(o, "token_overhead_us", where, 0, false, 1e6, false, 0,
                        &r->token_overhead_us);
    if (!err) err = num_field(o, "jitter", where, 0, false, 10, false, 0, &r->jitter);
    if (!err && json_object_get(o, "gflops"))
        err = num_field(o, "gflops", where, 0, true, 1e9, true, 0, &r->gflops);
    else if (!err)
        err = gflops_estimate(o, where, &r->gflops);
    if (!err)
        err = num_field(o, "attn_gflops", where, 0, true, 1e9, false, r->gflops, &r->attn_gflops);
    if (!err)
        err = num_field(o, "host_read_gbs", where, 0, false, 1e6, false, 0, &r->host_read_gbs);
    if (!err) err = num_field(o, "host_gflops", where, 0, false, 1e9, false, 0, &r->host_gflops);
    if (!err && json_object_get(o, "device"))
        err =
            str_value(json_object_get(o, "device"), "device", where, r->device, sizeof(r->device));
    return err;
}

/* One entry of "ranks": a rank, or `count` identical ranks on each host. */
static int parse_rank_entry(struct plan_cluster *c, json_t *o, size_t i)
{
    static const char *const known[] = {
        "host",          "hosts",         "count",       "device",        "read_gbs",
        "bw_efficiency", "gflops",        "attn_gflops", "host_read_gbs", "host_gflops",
        "mem_avail_gib", "mem_total_gib", "overhead_us", "rank",          "cores",
        "isa",           "comment",       "matvec_gbs",  "jitter",        "step_overhead_us",
        "token_overhead_us", "matvec_type_gbs", NULL};
    char where[48];
    snprintf(where, sizeof(where), "ranks[%zu]", i);
    if (!json_is_object(o)) return jfail(where, "must be an object");
    struct plan_hw_rank r;
    memset(&r, 0, sizeof(r));
    long long count, rank;
    int err = check_keys(o, where, known);
    if (!err) err = parse_rank_figures(o, where, &r);
    if (!err) err = int_field(o, "count", where, 1, PLAN_CLUSTER_RANKS_MAX, 1, &count);
    if (!err) err = int_field(o, "rank", where, 0, PLAN_CLUSTER_RANKS_MAX - 1, c->n_ranks, &rank);
    if (!err && rank != c->n_ranks)
        err = jfail(where, "\"rank\" is %lld but this entry starts at rank %d", rank, c->n_ranks);
    json_t *host = json_object_get(o, "host"), *hosts = json_object_get(o, "hosts");
    if (!err && !host == !hosts) err = jfail(where, "give exactly one of \"host\" and \"hosts\"");
    if (!err && hosts && (!json_is_array(hosts) || json_array_size(hosts) == 0))
        err = jfail(where, "\"hosts\" must be a non-empty array of host names");
    const size_t n_hosts = hosts ? json_array_size(hosts) : 1;
    for (size_t h = 0; h < n_hosts && !err; h++) {
        char name[PLAN_HOST_MAX];
        err = str_value(hosts ? json_array_get(hosts, h) : host, hosts ? "hosts" : "host", where,
                        name, sizeof(name));
        for (long long k = 0; k < count && !err; k++) {
            if (c->n_ranks == PLAN_CLUSTER_RANKS_MAX)
                return tt_error_set(TT_ERANGE, "cluster description: more than %d ranks",
                                    PLAN_CLUSTER_RANKS_MAX);
            c->ranks[c->n_ranks] = r;
            memcpy(c->ranks[c->n_ranks++].host, name, sizeof(name));
        }
    }
    if (!err && r.mem_total_gib < r.mem_avail_gib)
        err = jfail(where, "\"mem_total_gib\" (%g) is less than \"mem_avail_gib\" (%g)",
                    r.mem_total_gib, r.mem_avail_gib);
    return err;
}

static int parse_link(json_t *o, const char *where, struct plan_link *l)
{
    if (!json_is_object(o)) return jfail(where, "must be an object");
    int err = num_field(o, "latency_us", where, 0, false, 1e7, true, 0, &l->latency_us);
    if (!err) err = num_field(o, "bandwidth_gbs", where, 0, true, 1e6, true, 0, &l->bandwidth_gbs);
    /* a full-duplex link carries its one-way rate each way at once */
    if (!err)
        err = num_field(o, "bandwidth_both_gbs", where, 0, true, 1e6, false, l->bandwidth_gbs,
                        &l->bandwidth_both_gbs);
    if (!err) err = num_field(o, "burst_kib", where, 0, false, 1e6, false, 0, &l->burst_kib);
    return err;
}

/* "links": per-pair figures (the form `tutti topo --json` prints). */
static int parse_pairs(struct plan_cluster *c, json_t *links, bool set[][PLAN_CLUSTER_RANKS_MAX])
{
    static const char *const known[] = {"a",          "b",
                                        "same_host",  "latency_us",
                                        "bandwidth_gbs", "bandwidth_both_gbs",
                                        "burst_kib",  "comment",
                                        NULL};
    json_t *o;
    size_t i;
    if (!json_is_array(links)) return jfail("links", "must be an array");
    json_array_foreach(links, i, o)
    {
        char where[48];
        snprintf(where, sizeof(where), "links[%zu]", i);
        long long a, b;
        struct plan_link l;
        int err =
            json_is_object(o) ? check_keys(o, where, known) : jfail(where, "must be an object");
        if (!err) err = int_field(o, "a", where, 0, c->n_ranks - 1, -1, &a);
        if (!err) err = int_field(o, "b", where, 0, c->n_ranks - 1, -1, &b);
        if (!err && (a < 0 || b < 0 || a == b))
            err = jfail(where, "needs two different ranks \"a\" and \"b\" in [0, %d]",
                        c->n_ranks - 1);
        if (!err) err = parse_link(o, where, &l);
        if (err) return err;
        json_t *sh = json_object_get(o, "same_host");
        if (sh && !json_is_boolean(sh)) return jfail(where, "\"same_host\" must be true or false");
        if (sh && json_is_true(sh) != plan_cluster_same_host(c, (int)a, (int)b))
            return jfail(where, "\"same_host\" contradicts the hosts of ranks %lld and %lld", a, b);
        if (set[a][b]) return jfail(where, "ranks %lld and %lld already have a link", a, b);
        set[a][b] = set[b][a] = true;
        c->links[a][b] = c->links[b][a] = l;
    }
    return 0;
}

/* Pairs without their own entry take "host_link" (same host) or "link". */
static int parse_links(struct plan_cluster *c, json_t *root)
{
    bool set[PLAN_CLUSTER_RANKS_MAX][PLAN_CLUSTER_RANKS_MAX];
    memset(set, 0, sizeof(set));
    struct plan_link dflt[2]; /* [0] different hosts, [1] same host */
    bool have[2] = {false, false};
    const char *names[2] = {"link", "host_link"};
    for (int h = 0; h < 2; h++) {
        json_t *o = json_object_get(root, names[h]);
        static const char *const known[] = {"latency_us", "bandwidth_gbs", "bandwidth_both_gbs",
                                            "burst_kib", "comment", NULL};
        if (!o) continue;
        int err = json_is_object(o) ? check_keys(o, names[h], known)
                                    : jfail(names[h], "must be an object");
        if (!err) err = parse_link(o, names[h], &dflt[h]);
        if (err) return err;
        have[h] = true;
    }
    json_t *links = json_object_get(root, "links");
    int err = links ? parse_pairs(c, links, set) : 0;
    for (int a = 0; a < c->n_ranks && !err; a++)
        for (int b = a + 1; b < c->n_ranks && !err; b++) {
            if (set[a][b]) continue;
            const int h = plan_cluster_same_host(c, a, b);
            if (!have[h])
                return jfail(
                    "",
                    "no link figures for ranks %d and %d (%s host): add \"%s\" or a \"links\" "
                    "entry",
                    a, b, h ? "same" : "different", names[h]);
            c->links[a][b] = c->links[b][a] = dflt[h];
        }
    return err;
}

static int parse_root(struct plan_cluster *c, json_t *root)
{
    static const char *const known[] = {"name", "sources",   "notes", "comment", "ranks",
                                        "link", "host_link", "links", NULL};
    if (!json_is_object(root)) return jfail("", "the top level must be an object");
    int err = check_keys(root, "", known);
    if (!err) err = text_field(root, "sources", "");
    if (!err) err = text_field(root, "notes", "");
    if (!err && json_object_get(root, "name"))
        err = str_value(json_object_get(root, "name"), "name", "", c->name, sizeof(c->name));
    json_t *ranks = json_object_get(root, "ranks"), *o;
    size_t i;
    if (!err && (!json_is_array(ranks) || json_array_size(ranks) == 0))
        err = jfail("ranks",
                    "missing or empty: list the ranks (one entry per rank or group of ranks)");
    if (!err) json_array_foreach(ranks, i, o)
        {
            if ((err = parse_rank_entry(c, o, i))) break;
        }
    if (!err) err = parse_links(c, root);
    return err;
}

int plan_cluster_parse(struct plan_cluster *c, const char *text, size_t len)
{
    memset(c, 0, sizeof(*c));
    if (len > PLAN_CLUSTER_JSON_MAX)
        return tt_error_set(TT_ERANGE, "cluster description: %zu bytes, more than the %d allowed",
                            len, PLAN_CLUSTER_JSON_MAX);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return tt_error_set(TT_EFORMAT, "cluster description: line %d, column %d: %s", je.line,
                            je.column, je.text);
    int err = parse_root(c, root);
    json_decref(root);
    if (!err && (err = plan_cluster_check(c))) err = TT_EFORMAT;
    return err;
}

bool plan_cluster_same_host(const struct plan_cluster *c, int a, int b)
{
    return !strcmp(c->ranks[a].host, c->ranks[b].host);
}

double plan_link_both_gbs(const struct plan_link *l)
{
    return l->bandwidth_both_gbs > 0 ? l->bandwidth_both_gbs : l->bandwidth_gbs;
}

static bool in_range(double x, double lo, bool lo_open, double hi)
{
    return isfinite(x) && x >= lo && !(lo_open && x <= lo) && x <= hi;
}

static bool type_rates_in_range(const struct plan_hw_rank *h)
{
    for (int t = 0; t < TT_TYPE_COUNT; t++)
        if (!in_range(h->matvec_type_gbs[t], 0, false, 1e6)) return false;
    return true;
}

void plan_cluster_for_model(struct plan_cluster *c, const struct plan_model *pm)
{
    for (int r = 0; r < c->n_ranks; r++) {
        struct plan_hw_rank *h = &c->ranks[r];
        bool measured = false;
        for (int t = 0; t < TT_TYPE_COUNT; t++) measured |= h->matvec_type_gbs[t] > 0;
        /* a type not measured goes at the rank's previous figure */
        const double gbs = plan_mix_rate(pm->decode_bytes_by_type, h->matvec_type_gbs, h->read_gbs * h->bw_efficiency);
        if (!measured || !(gbs > 0) || !(h->read_gbs > 0)) continue;
        h->bw_efficiency = fmin(1.0, fmax(0.05, gbs / h->read_gbs));
    }
}

int plan_cluster_check(const struct plan_cluster *c)
{
    if (c->n_ranks < 1 || c->n_ranks > PLAN_CLUSTER_RANKS_MAX)
        return tt_error_set(TT_EINVAL, "cluster: %d ranks, outside [1, %d]", c->n_ranks,
                            PLAN_CLUSTER_RANKS_MAX);
    for (int r = 0; r < c->n_ranks; r++) {
        const struct plan_hw_rank *h = &c->ranks[r];
        if (!h->host[0] || !memchr(h->host, 0, sizeof(h->host)))
            return tt_error_set(TT_EINVAL, "cluster: rank %d has no host name", r);
        if (!in_range(h->read_gbs, 0, true, 1e6) || !in_range(h->bw_efficiency, 0, true, 1) ||
            !in_range(h->gflops, 0, true, 1e9) || !in_range(h->attn_gflops, 0, true, 1e9) ||
            !in_range(h->host_read_gbs, 0, false, 1e6) ||
            !in_range(h->host_gflops, 0, false, 1e9) || !in_range(h->mem_avail_gib, 0, true, 1e6) ||
            !in_range(h->overhead_us, 0, false, 1e6) ||
            !in_range(h->step_overhead_us, 0, false, 1e6) ||
            !in_range(h->token_overhead_us, 0, false, 1e6) || !in_range(h->jitter, 0, false, 10) ||
            !type_rates_in_range(h))
            return tt_error_set(TT_EINVAL,
                                "cluster: rank %d has a figure out of range (read_gbs %g, "
                                "bw_efficiency %g, gflops %g, mem_avail_gib %g, overhead_us %g, "
                                "step_overhead_us %g, token_overhead_us %g)",
                                r, h->read_gbs, h->bw_efficiency, h->gflops, h->mem_avail_gib,
                                h->overhead_us, h->step_overhead_us, h->token_overhead_us);
        for (int b = 0; b < c->n_ranks; b++) {
            const struct plan_link *l = &c->links[r][b], *m = &c->links[b][r];
            if (b == r) continue;
            if (plan_cluster_same_host(c, r, b) && (c->ranks[b].host_read_gbs != h->host_read_gbs ||
                                                    c->ranks[b].host_gflops != h->host_gflops))
                return tt_error_set(TT_EINVAL,
                                    "cluster: ranks %d and %d share host '%s' but not its "
                                    "host_read_gbs and host_gflops",
                                    r, b, h->host);
            if (!in_range(l->latency_us, 0, false, 1e7) ||
                !in_range(l->bandwidth_gbs, 0, true, 1e6) ||
                !in_range(l->bandwidth_both_gbs, 0, false, 1e6) ||
                !in_range(l->burst_kib, 0, false, 1e6) || l->latency_us != m->latency_us ||
                l->bandwidth_gbs != m->bandwidth_gbs ||
                l->bandwidth_both_gbs != m->bandwidth_both_gbs || l->burst_kib != m->burst_kib)
                return tt_error_set(TT_EINVAL,
                                    "cluster: the link %d-%d is missing, out of range or "
                                    "not symmetric",
                                    r, b);
        }
    }
    return 0;
}
