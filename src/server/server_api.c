/*
 * server_api.c: OpenAI's JSON, both ways (jansson).
 *
 * In: server_params_parse() turns a request body into checked parameters or
 * into the error reply the client gets. It is strict about what it uses and
 * silent about the rest: every field it reads must have the documented type
 * and range ("temperature": "hot" is a 400 naming the param), fields it does
 * not know are ignored, as OpenAI does. Every count is capped (messages, stop
 * strings, their lengths, prompt token ids) before anything is allocated.
 * jansson rejects invalid UTF-8 and "\u0000" in strings, so every string
 * kept is valid UTF-8 and NUL-terminated at its true end.
 *
 * Out: replies, streaming chunks and model lists as compact JSON (one line,
 * as server-sent events need). Generated text can hold any bytes; it passes
 * through server_utf8_append first, because JSON strings must be UTF-8.
 */
#include "server.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ERR_INVALID "invalid_request_error"
#define PROMPT_IDS_MAX (1 << 24)

int server_error_set(struct server_error *err, int status, const char *type, const char *param,
                     const char *code, const char *fmt, ...)
{
    err->status = status;
    err->type = type;
    err->param = param;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -1;
}

char *server_error_json(const struct server_error *err)
{
    struct server_buf msg = {0};
    if (server_utf8_append(&msg, err->message, strlen(err->message))) return NULL;
    json_t *root =
        json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", msg.data, "type",
                  err->type ? err->type : ERR_INVALID, "param", err->param, "code", err->code);
    server_buf_free(&msg);
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

/* ---- request fields ---- */

static int bad_type(struct server_error *err, const char *param, const char *want)
{
    return server_error_set(err, 400, ERR_INVALID, param, "invalid_type", "'%s' must be %s", param,
                            want);
}

/* An optional number in [lo, hi]; absent or null leaves *out unchanged. */
static int get_number(json_t *root, const char *key, double lo, double hi, double *out,
                      struct server_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return bad_type(err, key, "a number");
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi)
        return server_error_set(err, 400, ERR_INVALID, key, "invalid_value",
                                "'%s' must be in [%g, %g], got %g", key, lo, hi, d);
    *out = d;
    return 0;
}

/* An optional integer in [lo, hi]. */
static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out,
                   bool *given, struct server_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return bad_type(err, key, "an integer");
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return server_error_set(err, 400, ERR_INVALID, key, "invalid_value",
                                "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, x);
    *out = x;
    if (given) *given = true;
    return 0;
}

static int get_bool(json_t *root, const char *key, bool *out, struct server_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return bad_type(err, key, "a boolean");
    *out = json_is_true(v);
    return 0;
}

static int parse_stop(struct server_params *p, json_t *root, struct server_error *err)
{
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) > SERVER_STOP_LEN_MAX)
            return server_error_set(err, 400, ERR_INVALID, "stop", "invalid_value",
                                    "a stop string may have at most %d bytes", SERVER_STOP_LEN_MAX);
        if (json_string_length(v)) p->stop[p->n_stop++] = json_string_value(v);
        return 0;
    }
    if (!json_is_array(v)) return bad_type(err, "stop", "a string or an array of strings");
    if (json_array_size(v) > SERVER_STOP_MAX)
        return server_error_set(err, 400, ERR_INVALID, "stop", "invalid_value",
                                "at most %d stop strings are allowed", SERVER_STOP_MAX);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s)
    {
        if (!json_is_string(s)) return bad_type(err, "stop", "a string or an array of strings");
        if (json_string_length(s) > SERVER_STOP_LEN_MAX)
            return server_error_set(err, 400, ERR_INVALID, "stop", "invalid_value",
                                    "a stop string may have at most %d bytes", SERVER_STOP_LEN_MAX);
        if (json_string_length(s)) p->stop[p->n_stop++] = json_string_value(s);
    }
    return 0;
}

/* model, n, max_tokens, sampling, stop, stream and stream_options. */
static int parse_common(struct server_params *p, json_t *root, const struct server_limits *lim,
                        struct server_error *err)
{
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return bad_type(err, "model", "a string");
        if (lim->model_id && strcmp(json_string_value(model), lim->model_id) != 0)
            return server_error_set(
                err, 404, ERR_INVALID, "model", "model_not_found",
                "The model '%.200s' does not exist; this server serves '%.100s'",
                json_string_value(model), lim->model_id);
    }
    long long n = 1, max_tokens = 0, mct = 0, seed = 0;
    bool mct_given = false;
    if (get_int(root, "n", 1, 1 << 20, &n, NULL, err)) return -1;
    if (n != 1)
        return server_error_set(err, 400, ERR_INVALID, "n", "invalid_value",
                                "only n=1 is supported, got %lld", n);
    if (get_int(root, "max_tokens", 1, SERVER_MAX_TOKENS_MAX, &max_tokens, NULL, err) ||
        get_int(root, "max_completion_tokens", 1, SERVER_MAX_TOKENS_MAX, &mct, &mct_given, err))
        return -1;
    p->max_tokens = (int)(mct_given ? mct : max_tokens);
    double temp = p->sampling.temperature, top_p = p->sampling.top_p;
    if (get_number(root, "temperature", 0, 2, &temp, err) ||
        get_number(root, "top_p", 0, 1, &top_p, err))
        return -1;
    if (top_p <= 0)
        return server_error_set(err, 400, ERR_INVALID, "top_p", "invalid_value",
                                "'top_p' must be > 0");
    p->sampling.temperature = (float)temp;
    p->sampling.top_p = (float)top_p;
    if (get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, &p->seed_given, err)) return -1;
    p->sampling.seed = (uint64_t)seed;
    if (parse_stop(p, root, err) || get_bool(root, "stream", &p->stream, err) ||
        get_bool(root, "ignore_eos", &p->ignore_eos, err))
        return -1;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return bad_type(err, "stream_options", "an object");
        if (get_bool(so, "include_usage", &p->include_usage, err)) return -1;
    }
    return 0;
}

/* A message's content: a string, null, or an array of {"type":"text","text":...}
 * parts (joined). Joined parts are kept in `scratch` (an array of strings
 * owned by the document). */
static int message_content(json_t *c, json_t *scratch, const char **out, struct server_error *err)
{
    if (!c || json_is_null(c)) {
        *out = "";
        return 0;
    }
    if (json_is_string(c)) {
        *out = json_string_value(c);
        return 0;
    }
    if (!json_is_array(c))
        return bad_type(err, "messages.content", "a string or an array of text parts");
    struct server_buf b = {0};
    size_t i;
    json_t *part;
    int rc = server_buf_append(&b, "", 0);
    json_array_foreach(c, i, part)
    {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            server_buf_free(&b);
            return server_error_set(
                err, 400, ERR_INVALID, "messages.content", "invalid_value",
                "only content parts of type \"text\" with a string \"text\" are supported");
        }
        rc |= server_buf_append(&b, json_string_value(text), json_string_length(text));
    }
    json_t *joined = rc ? NULL : json_stringn(b.data, b.len);
    server_buf_free(&b);
    if (!joined || json_array_append_new(scratch, joined))
        return server_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    *out = json_string_value(joined);
    return 0;
}

static const char *message_role(json_t *role)
{
    static const char *known[] = {"system", "user", "assistant"};
    if (!json_is_string(role)) return NULL;
    const char *r = json_string_value(role);
    if (!strcmp(r, "developer")) return "system";
    for (size_t i = 0; i < TT_ARRAY_LEN(known); i++)
        if (!strcmp(r, known[i])) return known[i];
    return NULL;
}

static int parse_messages(struct server_params *p, json_t *root, const struct server_limits *lim,
                          struct server_error *err)
{
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs)
        return server_error_set(err, 400, ERR_INVALID, "messages", "missing_required_parameter",
                                "'messages' is required");
    if (!json_is_array(msgs)) return bad_type(err, "messages", "an array");
    const size_t n = json_array_size(msgs);
    const int max = lim->messages_max > 0 ? lim->messages_max : SERVER_MESSAGES_MAX_DEFAULT;
    if (n == 0 || n > (size_t)max)
        return server_error_set(err, 400, ERR_INVALID, "messages", "invalid_value",
                                "'messages' must hold 1 to %d messages, got %zu", max, n);
    json_t *scratch = json_array();
    if (!scratch || json_object_set_new(root, "tutti_scratch_", scratch) ||
        !(p->msgs = calloc(n, sizeof(*p->msgs))))
        return server_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m)) return bad_type(err, "messages", "an array of objects");
        const char *role = message_role(json_object_get(m, "role"));
        if (!role)
            return server_error_set(
                err, 400, ERR_INVALID, "messages.role", "invalid_value",
                "message %zu: 'role' must be \"system\", \"user\" or \"assistant\"", i);
        p->msgs[i].role = role;
        if (message_content(json_object_get(m, "content"), scratch, &p->msgs[i].content, err))
            return -1;
    }
    p->n_msgs = (int)n;
    return 0;
}

/* prompt: a string, an array holding one string, or an array of token ids. */
static int parse_prompt(struct server_params *p, json_t *root, struct server_error *err)
{
    json_t *v = json_object_get(root, "prompt");
    if (!v)
        return server_error_set(err, 400, ERR_INVALID, "prompt", "missing_required_parameter",
                                "'prompt' is required");
    if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
        v = json_array_get(v, 0);
    if (json_is_string(v)) {
        p->prompt = json_string_value(v);
        p->prompt_len = json_string_length(v);
        return 0;
    }
    const size_t n = json_is_array(v) ? json_array_size(v) : 0;
    if (n == 0 || n > PROMPT_IDS_MAX)
        return bad_type(err, "prompt", "a string, or a non-empty array of token ids");
    if (!(p->prompt_ids = malloc(sizeof(int32_t) * n)))
        return server_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(v, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > INT32_MAX)
            return bad_type(err, "prompt", "a string, or an array of token ids");
        p->prompt_ids[i] = (int32_t)json_integer_value(id);
    }
    p->n_prompt_ids = (int)n;
    return 0;
}

int server_params_parse(struct server_params *p, enum server_kind kind, const char *body,
                        size_t len, const struct server_limits *lim, struct server_error *err)
{
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    sampler_opts_default(&p->sampling);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return server_error_set(err, 400, ERR_INVALID, NULL, "invalid_json",
                                "the body is not valid JSON: %s (line %d, column %d)", jerr.text,
                                jerr.line, jerr.column);
    p->json_ = root;
    if (!json_is_object(root))
        return server_error_set(err, 400, ERR_INVALID, NULL, "invalid_json",
                                "the body must be a JSON object");
    if (parse_common(p, root, lim, err)) return -1;
    return kind == SERVER_KIND_CHAT ? parse_messages(p, root, lim, err)
                                    : parse_prompt(p, root, err);
}

void server_params_free(struct server_params *p)
{
    free(p->msgs);
    free(p->prompt_ids);
    json_decref((json_t *)p->json_);
    memset(p, 0, sizeof(*p));
}

/* ---- replies ---- */

static json_t *text_json(const char *text, size_t len)
{
    struct server_buf b = {0};
    if (server_utf8_append(&b, text ? text : "", text ? len : 0)) return NULL;
    json_t *s = json_stringn(b.data, b.len);
    server_buf_free(&b);
    return s;
}

static json_t *usage_json(const struct server_usage *u)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", u->prompt_tokens, "completion_tokens",
                     u->completion_tokens, "total_tokens", u->prompt_tokens + u->completion_tokens);
}

static json_t *reply_head(const struct server_reply_id *r, bool chunk)
{
    const char *object = r->kind == SERVER_KIND_CHAT
                             ? (chunk ? "chat.completion.chunk" : "chat.completion")
                             : "text_completion";
    return json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", r->id, "object", object, "created",
                     (json_int_t)r->created, "model", r->model, "system_fingerprint", "tutti");
}

static char *dump_free(json_t *root)
{
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

char *server_reply_json(const struct server_reply_id *r, const char *text, size_t len,
                        const char *finish_reason, const struct server_usage *u)
{
    json_t *root = reply_head(r, false), *t = text_json(text, len), *choice;
    if (r->kind == SERVER_KIND_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:o}, s:n, s:s}", "index", 0, "message", "role",
                           "assistant", "content", t, "logprobs", "finish_reason", finish_reason);
    else
        choice = json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "text", t, "logprobs",
                           "finish_reason", finish_reason);
    if (!root || !choice || json_object_set_new(root, "choices", json_pack("[o]", choice)) ||
        json_object_set_new(root, "usage", usage_json(u))) {
        json_decref(root);
        return NULL;
    }
    return dump_free(root);
}

static json_t *chunk_choice(const struct server_reply_id *r, const struct server_chunk *c)
{
    json_t *fr = c->finish_reason ? json_string(c->finish_reason) : json_null();
    if (r->kind != SERVER_KIND_CHAT)
        return json_pack("{s:i, s:o, s:n, s:o}", "index", 0, "text", text_json(c->text, c->len),
                         "logprobs", "finish_reason", fr);
    json_t *delta = json_object();
    if (delta && c->role_first) json_object_set_new(delta, "role", json_string("assistant"));
    if (delta && c->text) json_object_set_new(delta, "content", text_json(c->text, c->len));
    return json_pack("{s:i, s:o, s:n, s:o}", "index", 0, "delta", delta, "logprobs",
                     "finish_reason", fr);
}

char *server_chunk_json(const struct server_reply_id *r, const struct server_chunk *c)
{
    json_t *root = reply_head(r, true);
    json_t *choices = c->usage_only ? json_array() : json_pack("[o]", chunk_choice(r, c));
    if (!root || !choices || json_object_set_new(root, "choices", choices)) {
        json_decref(root);
        return NULL;
    }
    if (c->with_usage || c->usage_only)
        json_object_set_new(root, "usage", c->usage ? usage_json(c->usage) : json_null());
    return dump_free(root);
}

char *server_models_json(const char *model_id, long long created, bool list)
{
    json_t *m = json_pack("{s:s, s:s, s:I, s:s}", "id", model_id, "object", "model", "created",
                          (json_int_t)created, "owned_by", "tutti");
    if (!list) return dump_free(m);
    return dump_free(json_pack("{s:s, s:[o]}", "object", "list", "data", m));
}
