/*
 * test_server.c: the server's pure parts, without a network: request parsing
 * and validation (params or the exact error reply), response and chunk JSON,
 * SSE framing, UTF-8 repair, stop-string search (including the streaming
 * hold-back), and the Prometheus metrics text. The HTTP side is tested end to
 * end by tests/server_test.sh.
 */
#include "test.h"

#include "server/server.h"

#include <jansson.h>

static const struct server_limits lim = {"tiny.gguf", 3};

/* Parse a body expected to be valid. */
static bool parse_ok(struct server_params *p, enum server_kind kind, const char *body)
{
    struct server_error err;
    int rc = server_params_parse(p, kind, body, strlen(body), &lim, &err);
    if (rc) fprintf(stderr, "  unexpected error for %s: %d %s\n", body, err.status, err.message);
    return rc == 0;
}

static void test_parse_completion(void)
{
    struct server_params p;
    CHECK(parse_ok(
        &p, SERVER_KIND_COMPLETION,
        "{\"model\":\"tiny.gguf\",\"prompt\":\"Once upon\",\"max_tokens\":7,\"temperature\":0,"
        "\"top_p\":0.5,\"seed\":-3,\"stop\":[\"a\",\"\",\"bc\"],\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"user\":\"ignored\",\"n\":1}"));
    CHECK_STR(p.prompt, "Once upon");
    CHECK_EQ_INT(p.prompt_len, 9);
    CHECK_EQ_INT(p.max_tokens, 7);
    CHECK_NEAR(p.sampling.temperature, 0, 0);
    CHECK_NEAR(p.sampling.top_p, 0.5, 1e-7);
    CHECK(p.seed_given);
    CHECK(p.sampling.seed == (uint64_t)-3);
    CHECK_EQ_INT(p.n_stop, 2); /* the empty stop string is dropped */
    CHECK_STR(p.stop[0], "a");
    CHECK_STR(p.stop[1], "bc");
    CHECK(p.stream && p.include_usage && !p.ignore_eos);
    server_params_free(&p);

    /* defaults: the CLI's sampler defaults, no limit, not streamed */
    CHECK(parse_ok(&p, SERVER_KIND_COMPLETION, "{\"prompt\":[\"only one\"],\"stop\":\"x\"}"));
    struct sampler_opts d;
    sampler_opts_default(&d);
    CHECK_STR(p.prompt, "only one");
    CHECK_NEAR(p.sampling.temperature, d.temperature, 0);
    CHECK_EQ_INT(p.max_tokens, 0);
    CHECK(!p.stream && !p.seed_given);
    CHECK_EQ_INT(p.n_stop, 1);
    server_params_free(&p);

    /* token ids; max_completion_tokens wins over max_tokens */
    CHECK(parse_ok(
        &p, SERVER_KIND_COMPLETION,
        "{\"prompt\":[1,2,3],\"max_tokens\":5,\"max_completion_tokens\":9,\"ignore_eos\":true}"));
    CHECK_EQ_INT(p.n_prompt_ids, 3);
    CHECK_EQ_INT(p.prompt_ids[2], 3);
    CHECK_EQ_INT(p.max_tokens, 9);
    CHECK(p.ignore_eos);
    server_params_free(&p);
}

static void test_parse_chat(void)
{
    struct server_params p;
    CHECK(parse_ok(&p, SERVER_KIND_CHAT,
                   "{\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
                   "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},"
                   "{\"type\":\"text\",\"text\":\"there\"}],\"name\":\"bob\"},"
                   "{\"role\":\"assistant\",\"content\":null}]}"));
    CHECK_EQ_INT(p.n_msgs, 3);
    CHECK_STR(p.msgs[0].role, "system");
    CHECK_STR(p.msgs[0].content, "Be brief.");
    CHECK_STR(p.msgs[1].role, "user");
    CHECK_STR(p.msgs[1].content, "Hi there");
    CHECK_STR(p.msgs[2].role, "assistant");
    CHECK_STR(p.msgs[2].content, "");
    server_params_free(&p);
    struct server_params zero = {0};
    server_params_free(&zero); /* safe on a zeroed struct */
}

struct bad_case {
    enum server_kind kind;
    const char *body;
    int status;
    const char *param; /* NULL: none expected */
    const char *code;
};

static const struct bad_case bad_cases[] = {
    {SERVER_KIND_CHAT, "{\"messages\":[", 400, NULL, "invalid_json"},
    {SERVER_KIND_CHAT, "", 400, NULL, "invalid_json"},
    {SERVER_KIND_CHAT, "[1]", 400, NULL, "invalid_json"},
    {SERVER_KIND_CHAT, "\"str\"", 400, NULL, "invalid_json"},
    {SERVER_KIND_CHAT, "{\"messages\":[],\"messages\":[]}", 400, NULL, "invalid_json"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"\xff\"}", 400, NULL, "invalid_json"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", 400, NULL, "invalid_json"},
    {SERVER_KIND_CHAT, "{}", 400, "messages", "missing_required_parameter"},
    {SERVER_KIND_CHAT, "{\"messages\":\"hi\"}", 400, "messages", "invalid_type"},
    {SERVER_KIND_CHAT, "{\"messages\":[]}", 400, "messages", "invalid_value"},
    {SERVER_KIND_CHAT, "{\"messages\":[1]}", 400, "messages", "invalid_type"},
    {SERVER_KIND_CHAT,
     "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"a\"},"
     "{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"a\"}]}",
     400, "messages", "invalid_value"},
    {SERVER_KIND_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400,
     "messages.role", "invalid_value"},
    {SERVER_KIND_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages.role",
     "invalid_value"},
    {SERVER_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400,
     "messages.content", "invalid_type"},
    {SERVER_KIND_CHAT,
     "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400,
     "messages.content", "invalid_value"},
    {SERVER_KIND_COMPLETION, "{}", 400, "prompt", "missing_required_parameter"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":5}", 400, "prompt", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":[]}", 400, "prompt", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":[1,-2]}", 400, "prompt", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":[1,4294967296]}", 400, "prompt", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"model\":\"gpt-4\"}", 404, "model",
     "model_not_found"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"model\":7}", 400, "model", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"n\":2}", 400, "n", "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"n\":\"1\"}", 400, "n", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":0}", 400, "max_tokens",
     "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":1e3}", 400, "max_tokens",
     "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":99999999999}", 400, "max_tokens",
     "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"max_completion_tokens\":-1}", 400,
     "max_completion_tokens", "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"temperature\":\"0\"}", 400, "temperature",
     "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"temperature\":2.5}", 400, "temperature",
     "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"top_p\":0}", 400, "top_p", "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"top_p\":1.5}", 400, "top_p", "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"seed\":1.5}", 400, "seed", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"stream\":1}", 400, "stream", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"stream_options\":[]}", 400, "stream_options",
     "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"stream_options\":{\"include_usage\":\"y\"}}", 400,
     "include_usage", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"stop\":{}}", 400, "stop", "invalid_type"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"stop\":[\"a\",1]}", 400, "stop", "invalid_type"},
    {SERVER_KIND_COMPLETION,
     "{\"prompt\":\"a\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
     "\"11\",\"12\","
     "\"13\",\"14\",\"15\",\"16\",\"17\"]}",
     400, "stop", "invalid_value"},
    {SERVER_KIND_COMPLETION, "{\"prompt\":\"a\",\"ignore_eos\":\"yes\"}", 400, "ignore_eos",
     "invalid_type"},
};

static void test_parse_errors(void)
{
    for (size_t i = 0; i < TT_ARRAY_LEN(bad_cases); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct server_params p;
        struct server_error err = {0};
        int rc = server_params_parse(&p, c->kind, c->body, strlen(c->body), &lim, &err);
        server_params_free(&p);
        if (rc != -1 || err.status != c->status || !err.code || strcmp(err.code, c->code) ||
            (c->param ? !err.param || strcmp(err.param, c->param) : err.param != NULL)) {
            fprintf(stderr, "  case %zu %s: rc %d status %d param %s code %s (%s)\n", i, c->body,
                    rc, err.status, err.param ? err.param : "null", err.code ? err.code : "null",
                    err.message);
            test_failed_ = 1;
        }
        CHECK(err.message[0] != 0);
    }
    /* a stop string over the length limit */
    char body[SERVER_STOP_LEN_MAX + 64];
    int n = snprintf(body, sizeof(body), "{\"prompt\":\"a\",\"stop\":\"%0*d\"}",
                     SERVER_STOP_LEN_MAX + 1, 0);
    struct server_params p;
    struct server_error err;
    CHECK_EQ_INT(server_params_parse(&p, SERVER_KIND_COMPLETION, body, (size_t)n, &lim, &err), -1);
    CHECK_EQ_INT(err.status, 400);
    server_params_free(&p);
}

/* The error object as clients read it. */
static void test_error_json(void)
{
    struct server_error err;
    CHECK_EQ_INT(server_error_set(&err, 404, "invalid_request_error", "model", "model_not_found",
                                  "no model '%s' \xff", "x\"y"),
                 -1);
    char *s = server_error_json(&err);
    json_t *r = s ? json_loads(s, 0, NULL) : NULL;
    json_t *e = json_object_get(r, "error");
    CHECK(e != NULL);
    CHECK_STR(json_string_value(json_object_get(e, "message")), "no model 'x\"y' \xEF\xBF\xBD");
    CHECK_STR(json_string_value(json_object_get(e, "type")), "invalid_request_error");
    CHECK_STR(json_string_value(json_object_get(e, "param")), "model");
    CHECK_STR(json_string_value(json_object_get(e, "code")), "model_not_found");
    json_decref(r);
    free(s);
    server_error_set(&err, 500, "server_error", NULL, NULL, "boom");
    s = server_error_json(&err);
    CHECK_STR(s, "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,"
                 "\"code\":null}}");
    free(s);
}

static json_t *load(char *s)
{
    json_t *r = s ? json_loads(s, JSON_ALLOW_NUL, NULL) : NULL;
    CHECK(r != NULL);
    CHECK(s && !strchr(s, '\n')); /* compact: one SSE line */
    free(s);
    return r;
}

static void test_reply_json(void)
{
    struct server_reply_id id = {SERVER_KIND_CHAT, "chatcmpl-1", 1700000000, "tiny.gguf"};
    struct server_usage u = {5, 3};
    json_t *r = load(server_reply_json(&id, "Hi \xff!", 5, "stop", &u));
    CHECK_STR(json_string_value(json_object_get(r, "object")), "chat.completion");
    CHECK_EQ_INT(json_integer_value(json_object_get(r, "created")), 1700000000);
    json_t *c = json_array_get(json_object_get(r, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(json_object_get(c, "message"), "content")),
              "Hi \xEF\xBF\xBD!");
    CHECK_STR(json_string_value(json_object_get(json_object_get(c, "message"), "role")),
              "assistant");
    CHECK_STR(json_string_value(json_object_get(c, "finish_reason")), "stop");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(r, "usage"), "total_tokens")),
                 8);
    json_decref(r);

    id.kind = SERVER_KIND_COMPLETION;
    r = load(server_reply_json(&id, "a\0b", 3, "length", &u));
    c = json_array_get(json_object_get(r, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(r, "object")), "text_completion");
    CHECK_EQ_INT(json_string_length(json_object_get(c, "text")), 3);
    CHECK_STR(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_decref(r);
}

static void test_chunk_json(void)
{
    struct server_reply_id id = {SERVER_KIND_CHAT, "chatcmpl-2", 1, "tiny.gguf"};
    struct server_chunk ch = {.text = "", .role_first = true, .with_usage = true};
    json_t *r = load(server_chunk_json(&id, &ch));
    json_t *c = json_array_get(json_object_get(r, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(r, "object")), "chat.completion.chunk");
    CHECK_STR(json_string_value(json_object_get(json_object_get(c, "delta"), "role")), "assistant");
    CHECK_STR(json_string_value(json_object_get(json_object_get(c, "delta"), "content")), "");
    CHECK(json_is_null(json_object_get(c, "finish_reason")));
    CHECK(json_is_null(json_object_get(r, "usage")));
    json_decref(r);

    ch = (struct server_chunk){.finish_reason = "length"}; /* final chat chunk: empty delta */
    r = load(server_chunk_json(&id, &ch));
    c = json_array_get(json_object_get(r, "choices"), 0);
    CHECK_EQ_INT(json_object_size(json_object_get(c, "delta")), 0);
    CHECK_STR(json_string_value(json_object_get(c, "finish_reason")), "length");
    CHECK(json_object_get(r, "usage") == NULL);
    json_decref(r);

    struct server_usage u = {2, 4};
    ch = (struct server_chunk){.usage_only = true, .usage = &u};
    r = load(server_chunk_json(&id, &ch));
    CHECK_EQ_INT(json_array_size(json_object_get(r, "choices")), 0);
    CHECK_EQ_INT(
        json_integer_value(json_object_get(json_object_get(r, "usage"), "completion_tokens")), 4);
    json_decref(r);

    id.kind = SERVER_KIND_COMPLETION;
    ch = (struct server_chunk){.text = "abc", .len = 2};
    r = load(server_chunk_json(&id, &ch));
    c = json_array_get(json_object_get(r, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(r, "object")), "text_completion");
    CHECK_STR(json_string_value(json_object_get(c, "text")), "ab");
    json_decref(r);
}

static void test_models_json(void)
{
    json_t *r = load(server_models_json("tiny.gguf", 42, true));
    CHECK_STR(json_string_value(json_object_get(r, "object")), "list");
    json_t *m = json_array_get(json_object_get(r, "data"), 0);
    CHECK_STR(json_string_value(json_object_get(m, "id")), "tiny.gguf");
    CHECK_STR(json_string_value(json_object_get(m, "object")), "model");
    json_decref(r);
    r = load(server_models_json("tiny.gguf", 42, false));
    CHECK_STR(json_string_value(json_object_get(r, "id")), "tiny.gguf");
    json_decref(r);
}

static void test_sse(void)
{
    struct server_buf b = {0};
    CHECK_EQ_INT(server_sse_append(&b, "{\"a\":1}"), 0);
    CHECK_EQ_INT(server_sse_append(&b, SERVER_SSE_DONE), 0);
    CHECK_STR(b.data, "data: {\"a\":1}\n\ndata: [DONE]\n\n");
    CHECK_EQ_INT(b.len, strlen(b.data));
    server_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0);
    CHECK_EQ_INT(server_buf_printf(&b, "%d-%s", 7, "x"), 0);
    for (int i = 0; i < 1000; i++)
        server_buf_append(&b, "0123456789", 10);
    CHECK_EQ_INT(b.len, 3 + 10000);
    CHECK(memcmp(b.data, "7-x0123", 7) == 0 && b.data[b.len] == 0);
    server_buf_free(&b);
}

static void test_utf8(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"plain ascii", "plain ascii"},
        {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"},
        {"a\xFF"
         "b",
         "a\xEF\xBF\xBD"
         "b"},
        {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},                                 /* overlong */
        {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},                 /* surrogate */
        {"x\xE2\x82", "x\xEF\xBF\xBD\xEF\xBF\xBD"},                               /* cut short */
        {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(cases); i++) {
        struct server_buf b = {0};
        CHECK_EQ_INT(server_utf8_append(&b, cases[i].in, strlen(cases[i].in)), 0);
        CHECK_STR(b.data, cases[i].out);
        server_buf_free(&b);
    }
}

static void test_stop_find(void)
{
    const char *stops[] = {"END", "\n\n", "abcd"};
    size_t safe;
    CHECK_EQ_INT(server_stop_find("hello", 5, 0, stops, 3, &safe), -1);
    CHECK_EQ_INT(safe, 5);
    CHECK_EQ_INT(server_stop_find("hello EN", 8, 0, stops, 3, &safe), -1);
    CHECK_EQ_INT(safe, 6); /* "EN" may become "END" */
    CHECK_EQ_INT(server_stop_find("hello END more", 14, 0, stops, 3, &safe), 6);
    CHECK_EQ_INT(safe, 6);
    CHECK_EQ_INT(server_stop_find("x\n\ny END", 8, 0, stops, 3, &safe), 1); /* earliest wins */
    CHECK_EQ_INT(server_stop_find("hello EN", 8, 0, stops, 0, &safe), -1);  /* no stops */
    CHECK_EQ_INT(safe, 8);
    CHECK_EQ_INT(server_stop_find("ab", 2, 0, stops, 3, &safe), -1); /* longer than the text */
    CHECK_EQ_INT(safe, 0);
    /* a match straddling the part already checked is still found */
    CHECK_EQ_INT(server_stop_find("..ENDx", 6, 4, stops, 3, &safe), 2);
    /* a match wholly in the checked part is not looked for again */
    CHECK_EQ_INT(server_stop_find("END....", 7, 7, stops, 1, &safe), -1);
}

/* Streaming: feeding the text a piece at a time and sending only the safe
 * part gives exactly the text cut at the first stop string. */
static void test_stop_streaming(void)
{
    const char *stops[] = {"<|end|>", "ab"};
    const char *texts[] = {"one <|en two <|end|> three", "xaaab", "<<|end|", "no stop here <|"};
    for (size_t t = 0; t < TT_ARRAY_LEN(texts); t++) {
        const char *full = texts[t];
        const size_t n = strlen(full);
        size_t sent = 0, checked = 0, safe;
        long cut = -1;
        for (size_t len = 1; len <= n && cut < 0; len++) {
            cut = server_stop_find(full, len, checked, stops, 2, &safe);
            checked = len;
            CHECK(safe >= sent);
            sent = safe;
        }
        if (cut < 0) sent = n; /* end of answer: everything held goes out */
        size_t safe_all;
        long want = server_stop_find(full, n, 0, stops, 2, &safe_all);
        CHECK_EQ_INT(sent, want >= 0 ? (size_t)want : n);
    }
}

static void test_metrics(void)
{
    struct server_metrics m;
    server_metrics_init(&m);
    server_hist_observe(&m.ttft, 0.003);
    server_hist_observe(&m.ttft, 0.003);
    server_hist_observe(&m.ttft, 100);
    for (int i = 0; i < 3; i++)
        server_metrics_count_status(&m, 200);
    server_metrics_count_status(&m, 400);
    for (int s = 0; s < SERVER_STATUS_TRACKED + 5; s++)
        server_metrics_count_status(&m, 600 + s);
    m.requests[SERVER_KIND_CHAT] = 4;
    m.kv_used = 25;
    m.kv_total = 100;
    m.waiting = 2;
    struct server_buf b = {0};
    CHECK_EQ_INT(server_metrics_render(&m, &b), 0);
    const char *want[] = {
        "# TYPE tutti_requests_total counter\n",
        "tutti_requests_total{endpoint=\"chat\"} 4\n",
        "tutti_http_responses_total{code=\"200\"} 3\n",
        "tutti_http_responses_total{code=\"400\"} 1\n",
        "# TYPE tutti_time_to_first_token_seconds histogram\n",
        "tutti_time_to_first_token_seconds_bucket{le=\"0.0025\"} 0\n",
        "tutti_time_to_first_token_seconds_bucket{le=\"0.005\"} 2\n", /* cumulative */
        "tutti_time_to_first_token_seconds_bucket{le=\"60\"} 2\n",
        "tutti_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n",
        "tutti_time_to_first_token_seconds_count 3\n",
        "tutti_time_to_first_token_seconds_sum 100.006\n",
        "tutti_requests_waiting 2\n",
        "tutti_kv_cache_usage_ratio 0.25\n",
        "tutti_comm_seconds_total{rank=\"0\"} 0\n",
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(want); i++)
        if (!b.data || !strstr(b.data, want[i])) {
            fprintf(stderr, "  missing: %s", want[i]);
            test_failed_ = 1;
        }
    /* every line is a comment or "name[{labels}] value" */
    for (char *line = b.data; line && *line;) {
        char *end = strchr(line, '\n');
        CHECK(end != NULL);
        if (!end) break;
        if (line[0] != '#')
            CHECK(strncmp(line, "tutti_", 6) == 0 && memchr(line, ' ', (size_t)(end - line)));
        line = end + 1;
    }
    server_buf_free(&b);
}

static const struct test_case tests[] = {
    {"parse_completion", test_parse_completion},
    {"parse_chat", test_parse_chat},
    {"parse_errors", test_parse_errors},
    {"error_json", test_error_json},
    {"reply_json", test_reply_json},
    {"chunk_json", test_chunk_json},
    {"models_json", test_models_json},
    {"sse", test_sse},
    {"utf8", test_utf8},
    {"stop_find", test_stop_find},
    {"stop_streaming", test_stop_streaming},
    {"metrics", test_metrics},
};

TEST_MAIN(tests)
