/*
 * test_tok.c: tokenizers and chat templates against llama.cpp's references.
 *
 * - every vocab GGUF in ../shared/tokenizer (and stories260K) against its
 *   .inp/.out cases (add_special = false, parse_special = false), plus
 *   decode(encode(s)) == s (SPM: " " + s, the dummy prefix);
 * - the golden prompts of ../shared/golden (add_special, parse_special) and
 *   the golden detokenized continuations, through tok_piece and the stream;
 * - special tokens, EOG, BOS/EOS flags, pieces, buffer limits;
 * - vocab load time (the 150k-token Qwen2 vocab in well under a second);
 * - malformed vocabularies written with gguf_writer: each a clear error;
 * - chat templates: detection and the rendered text of every family.
 */
#include "test.h"

#include "tok/tok.h"

#include <dirent.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define LOAD_LIMIT_S 5.0 /* ASan slows the hash building several times */
#else
#define LOAD_LIMIT_S 1.0
#endif

/* ---- helpers ---- */

struct vocab_fixture {
    struct gguf_file f;
    struct tok_vocab *v;
};

/* Open a GGUF under ../shared and load its vocab; skips the case if the file
 * is missing. Returns false (case over) unless both worked. */
static bool fixture_open(struct vocab_fixture *fx, const char *rel)
{
    memset(fx, 0, sizeof(*fx));
    const char *path = test_shared_path(rel);
    if (!test_file_exists(path)) {
        TEST_SKIP("%s not found (set TT_SHARED)", path);
        return false;
    }
    int rc = gguf_open(&fx->f, path);
    CHECK_EQ_INT(rc, 0);
    if (rc) return false;
    rc = tok_load(&fx->v, &fx->f);
    if (rc) fprintf(stderr, "  tok_load(%s): %s: %s\n", rel, tt_strerror(rc), tt_error_detail());
    CHECK_EQ_INT(rc, 0);
    if (rc) gguf_close(&fx->f);
    return rc == 0;
}

static void fixture_close(struct vocab_fixture *fx)
{
    tok_free(fx->v);
    gguf_close(&fx->f);
}

/* Concatenated pieces of ids into buf (NUL-terminated); returns length. */
static int detok(const struct tok_vocab *v, const int32_t *ids, int n, char *buf, int cap)
{
    int len = 0;
    for (int i = 0; i < n; i++) {
        int k = tok_piece(v, ids[i], buf + len, cap - len - 1);
        if (k < 0) return k;
        len += k;
    }
    buf[len] = 0;
    return len;
}

/* Parse whitespace-separated ids from s; returns count. */
static int parse_ids(const char *s, int32_t *ids, int max)
{
    int n = 0;
    char *end;
    while (n < max) {
        long val = strtol(s, &end, 10);
        if (end == s) break;
        ids[n++] = (int32_t)val;
        s = end;
    }
    return n;
}

static bool ids_equal(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof(int32_t)) == 0);
}

static void print_ids(const char *label, const int32_t *ids, int n)
{
    fprintf(stderr, "    %s:", label);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

#define MAX_IDS 8192

/* ---- reference cases ---- */

/* Run one vocab's .inp/.out cases; the .inp is split on the llama.cpp
 * separator, a trailing empty piece after the last separator is no test. */
static void run_vocab_cases(const char *gguf_rel, const char *inp_rel)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, gguf_rel)) return;
    char out_rel[512];
    snprintf(out_rel, sizeof(out_rel), "%.*sout", (int)strlen(inp_rel) - 3, inp_rel);
    size_t n_inp;
    char *inp = test_read_file(test_shared_path(inp_rel), &n_inp);
    char *out = test_read_file(test_shared_path(out_rel), NULL);
    if (!inp || !out) {
        TEST_SKIP("%.200s or its .out not found", inp_rel);
        goto done;
    }
    static const char sep[] = "\n__ggml_vocab_test__\n";
    static int32_t got[MAX_IDS], want[MAX_IDS];
    static char text[1 << 16];
    char *p = inp, *line = out;
    int n_cases = 0, n_pass = 0;
    while (*line) {
        char *e = strstr(p, sep), *eol = strchr(line, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (!eol) eol = line + strlen(line);
        char saved = *eol;
        *eol = 0;
        int nw = parse_ids(line, want, MAX_IDS);
        *eol = saved;
        int ng = tok_encode(fx.v, p, len, false, false, got, MAX_IDS);
        bool ok = ng >= 0 && ids_equal(got, ng, want, nw);
        if (ok) { /* decode(encode(s)) == s, with the SPM dummy prefix */
            bool spm = tok_model_type(fx.v) == TOK_MODEL_SPM;
            int tl = detok(fx.v, got, ng, text, (int)sizeof(text));
            ok = tl == (int)(len + spm) && (!spm || len == 0 || text[0] == ' ') &&
                 memcmp(text + spm, p, len) == 0;
            if (!ok && tl >= 0 && len == 0 && spm) ok = tl == 0; /* "" encodes to nothing */
            if (!ok) fprintf(stderr, "  case %d: round trip differs\n", n_cases);
        } else {
            fprintf(stderr, "  case %d (%zu bytes) differs:\n", n_cases, len);
            print_ids("want", want, nw);
            print_ids("got ", got, ng);
        }
        n_pass += ok;
        n_cases++;
        line = *eol ? eol + 1 : eol;
        if (!e) break;
        p = e + sizeof(sep) - 1;
    }
    fprintf(stderr, "  %s: %d/%d cases\n", gguf_rel, n_pass, n_cases);
    CHECK(n_cases >= 46);
    CHECK_EQ_INT(n_pass, n_cases);
done:
    free(inp);
    free(out);
    fixture_close(&fx);
}

#define VOCAB_CASE(fn, name)                                                                   \
    static void fn(void)                                                                       \
    {                                                                                          \
        run_vocab_cases("tokenizer/ggml-vocab-" name ".gguf", "tokenizer/ggml-vocab-" name ".gguf.inp"); \
    }
VOCAB_CASE(test_vocab_llama_spm, "llama-spm")
VOCAB_CASE(test_vocab_phi3, "phi-3")
VOCAB_CASE(test_vocab_gpt2, "gpt-2")
VOCAB_CASE(test_vocab_mpt, "mpt")
VOCAB_CASE(test_vocab_starcoder, "starcoder")
VOCAB_CASE(test_vocab_refact, "refact")
VOCAB_CASE(test_vocab_falcon, "falcon")
VOCAB_CASE(test_vocab_deepseek_llm, "deepseek-llm")
VOCAB_CASE(test_vocab_deepseek_coder, "deepseek-coder")
VOCAB_CASE(test_vocab_llama_bpe, "llama-bpe")
VOCAB_CASE(test_vocab_qwen2, "qwen2")

static void test_vocab_stories260k(void)
{
    run_vocab_cases("models/stories260K.gguf", "tokenizer/stories260K.gguf.inp");
}

/* ---- goldens ---- */

/* Calls fn(dir-relative base name without suffix) for every golden file
 * ending in suffix; returns how many. */
static int for_each_golden(const char *suffix, void (*fn)(const char *base))
{
    DIR *d = opendir(test_shared_path("golden"));
    if (!d) return -1;
    int n = 0;
    size_t sl = strlen(suffix);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l <= sl || strcmp(e->d_name + l - sl, suffix) != 0) continue;
        char base[512];
        snprintf(base, sizeof(base), "%.*s", (int)(l - sl), e->d_name);
        fn(base);
        n++;
    }
    closedir(d);
    return n;
}

/* The model a golden file belongs to: "synth-llama.f16.greedy" -> "synth-llama.f16". */
static bool golden_fixture(struct vocab_fixture *fx, const char *base)
{
    char model[512];
    const char *g = strstr(base, ".greedy");
    if (!g) g = strstr(base, ".logits");
    snprintf(model, sizeof(model), "models/%.*s.gguf", (int)(g ? g - base : (long)strlen(base)), base);
    return fixture_open(fx, model);
}

static void check_golden_prompt(const char *base)
{
    char rel[600], rel2[600];
    snprintf(rel, sizeof(rel), "golden/%s.prompt.txt", base);
    snprintf(rel2, sizeof(rel2), "golden/%s.prompt_tokens.txt", base);
    size_t len = 0;
    char *text = test_read_file(test_shared_path(rel), &len);
    char *want_s = test_read_file(test_shared_path(rel2), NULL);
    struct vocab_fixture fx;
    if (text && want_s && golden_fixture(&fx, base)) {
        static int32_t got[MAX_IDS], want[MAX_IDS];
        int nw = parse_ids(want_s, want, MAX_IDS);
        int ng = tok_encode(fx.v, text, len, true, true, got, MAX_IDS);
        if (!ids_equal(got, ng, want, nw)) {
            fprintf(stderr, "  %s differs\n", base);
            print_ids("want", want, nw);
            print_ids("got ", got, ng);
            test_failed_ = 1;
        }
        fixture_close(&fx);
    } else {
        CHECK(text && want_s);
    }
    free(text);
    free(want_s);
}

static void test_golden_prompts(void)
{
    if (!test_file_exists(test_shared_path("golden/logits_prompt.txt"))) {
        TEST_SKIP("%s not found", test_shared_path("golden"));
        return;
    }
    int n = for_each_golden(".prompt.txt", check_golden_prompt);
    CHECK(n >= 3);
    /* The 80-token logits prompt, same vocab for every model. */
    size_t len = 0;
    char *text = test_read_file(test_shared_path("golden/logits_prompt.txt"), &len);
    char *want_s = test_read_file(test_shared_path("golden/stories260K.logits.tokens.txt"), NULL);
    struct vocab_fixture fx;
    if (text && want_s && fixture_open(&fx, "models/stories260K.gguf")) {
        static int32_t got[MAX_IDS], want[MAX_IDS];
        int nw = parse_ids(want_s, want, MAX_IDS);
        int ng = tok_encode(fx.v, text, len, true, true, got, MAX_IDS);
        CHECK_EQ_INT(nw, 80);
        CHECK(ids_equal(got, ng, want, nw));
        fixture_close(&fx);
    }
    free(text);
    free(want_s);
}

/* Generated ids -> text, piece by piece and through the stream; both must
 * equal the golden bytes (which may be invalid UTF-8 for random models). */
static void check_golden_detok(const char *base)
{
    char rel[600], rel2[600];
    snprintf(rel, sizeof(rel), "golden/%s.gen_tokens.txt", base);
    snprintf(rel2, sizeof(rel2), "golden/%s.txt", base);
    size_t want_len;
    char *ids_s = test_read_file(test_shared_path(rel), NULL);
    char *want = test_read_file(test_shared_path(rel2), &want_len);
    struct vocab_fixture fx;
    if (ids_s && want && golden_fixture(&fx, base)) {
        static int32_t ids[MAX_IDS];
        static char text[1 << 16], streamed[1 << 16];
        int n = parse_ids(ids_s, ids, MAX_IDS);
        int len = detok(fx.v, ids, n, text, (int)sizeof(text));
        CHECK(len == (int)want_len && memcmp(text, want, want_len) == 0);
        struct tok_stream st = { 0 };
        int sl = 0;
        for (int i = 0; i < n; i++) {
            int k = tok_stream_push(fx.v, &st, ids[i], streamed + sl, (int)sizeof(streamed) - sl);
            CHECK(k >= 0);
            if (k < 0) break;
            sl += k;
        }
        sl += tok_stream_flush(&st, streamed + sl, (int)sizeof(streamed) - sl);
        CHECK(sl == (int)want_len && memcmp(streamed, want, want_len) == 0);
        fixture_close(&fx);
    } else {
        CHECK(ids_s && want);
    }
    free(ids_s);
    free(want);
}

static void test_golden_detokenize(void)
{
    if (!test_file_exists(test_shared_path("golden/stories260K.greedy1.txt"))) {
        TEST_SKIP("%s not found", test_shared_path("golden"));
        return;
    }
    CHECK(for_each_golden(".gen_tokens.txt", check_golden_detok) >= 3);
}

/* ---- special tokens, flags, pieces ---- */

static void test_special_llama3(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "tokenizer/ggml-vocab-llama-bpe.gguf")) return;
    struct tok_vocab *v = fx.v;
    int32_t hello[16], ids[64];
    int nh = tok_encode(v, "Hello", 5, false, false, hello, 16);
    CHECK_EQ_INT(nh, 1);
    const char *s = "<|begin_of_text|>Hello<|eot_id|>";
    int n = tok_encode(v, s, strlen(s), false, true, ids, 64);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(ids[0], 128000);
    CHECK_EQ_INT(ids[1], hello[0]);
    CHECK_EQ_INT(ids[2], 128009);
    n = tok_encode(v, s, strlen(s), false, false, ids, 64); /* plain text now */
    CHECK(n > 3);
    for (int i = 0; i < n; i++) CHECK(ids[i] < 128000);
    n = tok_encode(v, "Hello", 5, true, false, ids, 64);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(ids[0], 128000);
    CHECK(tok_add_bos(v) && !tok_add_eos(v));
    CHECK_EQ_INT(tok_bos(v), 128000);
    CHECK_EQ_INT(tok_eos(v), 128001);
    CHECK(tok_is_eog(v, 128001) && tok_is_eog(v, 128009));
    CHECK(!tok_is_eog(v, 128000) && !tok_is_eog(v, hello[0]) && !tok_is_eog(v, -1));
    CHECK_STR(tok_pre_name(v), "llama-bpe");
    char buf[64];
    CHECK_EQ_INT(tok_piece(v, 128009, buf, 64), 0); /* control: empty piece */
    CHECK_EQ_INT(tok_find(v, "<|eot_id|>", 10), 128009);
    CHECK(tok_token_attr(v, 128009) & TOK_ATTR_CONTROL);
    fixture_close(&fx);
}

static void test_special_qwen2(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "tokenizer/ggml-vocab-qwen2.gguf")) return;
    struct tok_vocab *v = fx.v;
    int32_t ids[64], hi[16];
    const char *s = "<|im_start|>user\nhi<|im_end|>";
    int n = tok_encode(v, s, strlen(s), true, true, ids, 64); /* add_bos is false */
    CHECK(n >= 4);
    CHECK_EQ_INT(ids[0], 151644);
    CHECK_EQ_INT(ids[n - 1], 151645);
    int nh = tok_encode(v, "user\nhi", 7, false, false, hi, 16);
    CHECK(ids_equal(ids + 1, n - 2, hi, nh));
    CHECK(!tok_add_bos(v));
    CHECK(tok_is_eog(v, 151645) && tok_is_eog(v, 151643));
    CHECK(!tok_is_eog(v, 151644));
    /* USER_DEFINED tokens split out even without parse_special */
    n = tok_encode(v, "a<tool_call>b", 13, false, false, ids, 64);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(ids[1], 151657);
    char buf[64];
    int k = tok_piece(v, 151657, buf, 64);
    CHECK(k == 11 && memcmp(buf, "<tool_call>", 11) == 0);
    fixture_close(&fx);
}

static void test_pieces_spm(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "models/stories260K.gguf")) return;
    struct tok_vocab *v = fx.v;
    char buf[64];
    CHECK_EQ_INT(tok_n_vocab(v), 512);
    CHECK_EQ_INT(tok_piece(v, 1, buf, 64), 0);           /* <s> */
    CHECK_EQ_INT(tok_piece(v, 0, buf, 64), 0);           /* <unk> */
    CHECK_EQ_INT(tok_piece(v, 3 + 'A', buf, 64), 1);     /* <0x41> */
    CHECK_EQ_INT(buf[0], 'A');
    CHECK_EQ_INT(tok_piece(v, 410, buf, 64), 1);         /* ▁ */
    CHECK_EQ_INT(buf[0], ' ');
    CHECK_EQ_INT(tok_piece(v, 512, buf, 64), TT_EINVAL);
    CHECK_EQ_INT(tok_piece(v, -1, buf, 64), TT_EINVAL);
    int32_t id = tok_find(v, "\xe2\x96\x81" "the", 6);
    CHECK(id > 0);
    CHECK_EQ_INT(tok_piece(v, id, buf, 3), TT_ERANGE);
    CHECK_EQ_INT(tok_piece(v, id, buf, 4), 4);
    CHECK_EQ_INT(tok_bos(v), 1);
    CHECK_EQ_INT(tok_eos(v), 2);
    CHECK(tok_add_bos(v) && !tok_add_eos(v));
    CHECK(tok_is_eog(v, 2) && !tok_is_eog(v, 1));
    CHECK(tok_token_text(v, 512) == NULL);
    CHECK_STR(tok_token_text(v, 2), "</s>");
    /* Empty text: nothing, or BOS alone. */
    int32_t ids[8];
    CHECK_EQ_INT(tok_encode(v, "", 0, false, false, ids, 8), 0);
    CHECK_EQ_INT(tok_encode(v, "", 0, true, false, ids, 8), 1);
    CHECK_EQ_INT(ids[0], 1);
    /* parse_special: "</s>" is EOS only when asked. */
    CHECK_EQ_INT(tok_encode(v, "</s>", 4, false, true, ids, 8), 1);
    CHECK_EQ_INT(ids[0], 2);
    CHECK(tok_encode(v, "</s>", 4, false, false, ids, 8) > 1);
    fixture_close(&fx);
}

static void test_pieces_bpe(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "tokenizer/ggml-vocab-gpt-2.gguf")) return;
    struct tok_vocab *v = fx.v;
    char buf[64];
    int32_t id = tok_find(v, "\xc4\xa0the", 5); /* Ġthe */
    CHECK(id >= 0);
    CHECK_EQ_INT(tok_piece(v, id, buf, 64), 4);
    CHECK(memcmp(buf, " the", 4) == 0);
    id = tok_find(v, "\xc4\x8a", 2); /* Ċ = '\n' */
    CHECK_EQ_INT(tok_piece(v, id, buf, 64), 1);
    CHECK_EQ_INT(buf[0], '\n');
    CHECK_EQ_INT(tok_piece(v, 50256, buf, 64), 0); /* <|endoftext|> */
    CHECK(tok_piece_max(v) >= 4 && tok_piece_max(v) < 1024);
    CHECK(tok_is_eog(v, 50256));
    /* Invalid UTF-8 is read as U+FFFD per bad byte, like llama.cpp. */
    int32_t a[16], b[16];
    int na = tok_encode(v, "x\xff", 2, false, false, a, 16);
    int nb = tok_encode(v, "x\xef\xbf\xbd", 4, false, false, b, 16);
    CHECK(na > 0 && ids_equal(a, na, b, nb));
    fixture_close(&fx);
}

static void test_encode_limits(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "models/stories260K.gguf")) return;
    struct tok_vocab *v = fx.v;
    const char *s = "Once upon a time";
    int32_t ids[64];
    int n = tok_encode(v, s, strlen(s), true, false, NULL, 0);
    CHECK_EQ_INT(n, 5);
    CHECK_EQ_INT(tok_encode(v, s, strlen(s), true, false, ids, 4), TT_ERANGE);
    CHECK_EQ_INT(tok_encode(v, s, strlen(s), true, false, ids, 5), 5);
    CHECK_EQ_INT(tok_encode(v, NULL, 3, true, false, ids, 5), TT_EINVAL);
    CHECK_EQ_INT(tok_encode(v, s, strlen(s), true, false, ids, -1), TT_EINVAL);
    /* A long run through the merge loop (quadratic behaviour would show). */
    size_t big = 1 << 20;
    char *text = malloc(big);
    for (size_t i = 0; i < big; i++) text[i] = "ab cd\n"[i % 6];
    double t0 = tt_now_s();
    n = tok_encode(v, text, big, false, false, NULL, 0);
    CHECK(n > 0);
    CHECK(tt_now_s() - t0 < 10.0);
    free(text);
    fixture_close(&fx);
}

/* The stream never ends a chunk inside a UTF-8 character. */
static void test_stream_utf8(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "models/stories260K.gguf")) return;
    struct tok_vocab *v = fx.v;
    const char *s = "caf\xc3\xa9 \xf0\x9f\x98\x80 \xe4\xb8\xad!"; /* café 😀 中! */
    int32_t ids[64];
    int n = tok_encode(v, s, strlen(s), false, false, ids, 64);
    CHECK(n > 8);
    struct tok_stream st = { 0 };
    char all[256], chunk[64];
    int len = 0;
    for (int i = 0; i < n; i++) {
        int k = tok_stream_push(v, &st, ids[i], chunk, (int)sizeof(chunk));
        CHECK(k >= 0);
        if (k <= 0) continue;
        unsigned char last = (unsigned char)chunk[k - 1];
        CHECK(last < 0x80 || (last & 0xc0) == 0x80); /* never a dangling lead byte */
        memcpy(all + len, chunk, (size_t)k);
        len += k;
    }
    CHECK_EQ_INT(st.n_pending, 0);
    CHECK_EQ_INT(tok_stream_flush(&st, chunk, 64), 0);
    CHECK(len == (int)strlen(s) + 1 && all[0] == ' ' && memcmp(all + 1, s, strlen(s)) == 0);
    /* A lone lead byte at the end waits, then comes out on flush. */
    struct tok_stream st2 = { 0 };
    CHECK_EQ_INT(tok_stream_push(v, &st2, 3 + 0xe4, chunk, 64), 0);
    CHECK_EQ_INT(st2.n_pending, 1);
    CHECK_EQ_INT(tok_stream_push(v, &st2, 3 + 0xb8, chunk, 1), 0);
    CHECK_EQ_INT(tok_stream_push(v, &st2, 3 + 'x', chunk, 1), TT_ERANGE); /* needs 3 */
    CHECK_EQ_INT(tok_stream_push(v, &st2, 3 + 'x', chunk, 64), 3);
    CHECK_EQ_INT(tok_stream_push(v, &st2, 3 + 0xc3, chunk, 64), 0);
    CHECK_EQ_INT(tok_stream_flush(&st2, chunk, 64), 1);
    CHECK_EQ_INT((unsigned char)chunk[0], 0xc3);
    CHECK_EQ_INT(tok_stream_push(v, &st2, 99999, chunk, 64), TT_EINVAL);
    fixture_close(&fx);
}

static void test_load_speed(void)
{
    const char *rels[] = { "tokenizer/ggml-vocab-qwen2.gguf", "tokenizer/ggml-vocab-llama-bpe.gguf" };
    for (size_t i = 0; i < TT_ARRAY_LEN(rels); i++) {
        struct gguf_file f;
        const char *path = test_shared_path(rels[i]);
        if (!test_file_exists(path)) {
            TEST_SKIP("%s not found", path);
            return;
        }
        CHECK_EQ_INT(gguf_open(&f, path), 0);
        struct tok_vocab *v = NULL;
        double t0 = tt_now_s();
        CHECK_EQ_INT(tok_load(&v, &f), 0);
        double dt = tt_now_s() - t0;
        fprintf(stderr, "  %s: %d tokens loaded in %.3f s\n", rels[i], v ? tok_n_vocab(v) : 0, dt);
        CHECK(dt < LOAD_LIMIT_S);
        tok_free(v);
        gguf_close(&f);
    }
}

/* ---- randomized round trips ---- */

static uint32_t fuzz_next(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*state >> 33);
}

/* Random text from pieces that stress the splitters: letters, digits,
 * whitespace runs, punctuation, multi-byte characters, special-token
 * look-alikes; with bad_utf8 also stray and truncated UTF-8 bytes. */
static size_t fuzz_text(uint64_t *st, char *out, size_t cap, bool bad_utf8)
{
    static const char *const parts[] = {
        "a", "Hello", " world", "  ", "\t", "\n", "\r\n", "   \n ", "1", "2024", "'s", "'LL",
        "!", "...", "(", "{}", "\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87", "\xf0\x9f\xa6\x99",
        "\xe2\x80\x8d", "\xcc\x81", "\xc2\xa0", "<|endoftext|>", "<s>", "</s", "<|im_", "\x01",
    };
    static const char *const bad[] = { "\xff", "\xc3", "\xe4\xb8", "\x80", "\xf0\x9f" };
    size_t n = 0, k = fuzz_next(st) % 24;
    for (size_t i = 0; i < k; i++) {
        bool b = bad_utf8 && fuzz_next(st) % 5 == 0;
        const char *p = b ? bad[fuzz_next(st) % TT_ARRAY_LEN(bad)]
                          : parts[fuzz_next(st) % TT_ARRAY_LEN(parts)];
        size_t l = strlen(p);
        if (n + l >= cap) break;
        memcpy(out + n, p, l);
        n += l;
    }
    return n;
}

static void fuzz_vocab(const char *rel, bool spm)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, rel)) return;
    uint64_t st = 42;
    static char text[1024], back[8192];
    static int32_t ids[MAX_IDS];
    int n_bad = 0;
    for (int iter = 0; iter < 400; iter++) {
        bool bad_utf8 = iter % 2 == 1;
        size_t len = fuzz_text(&st, text, sizeof(text), bad_utf8);
        for (int ps = 0; ps < 2; ps++) { /* never fails, ids always in range */
            int n = tok_encode(fx.v, text, len, ps, ps, ids, MAX_IDS);
            CHECK(n >= 0);
            for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < tok_n_vocab(fx.v));
        }
        /* Bad UTF-8 is not lossless: BPE reads it as U+FFFD; SPM, like
         * llama.cpp, lets a stray lead byte swallow the next byte (e.g. the
         * first byte of a "\xe2\x96\x81" that stands for a space). */
        if (bad_utf8) continue;
        int n = tok_encode(fx.v, text, len, false, false, ids, MAX_IDS);
        int bl = detok(fx.v, ids, n, back, (int)sizeof(back));
        bool ok = spm ? (len == 0 ? bl == 0 : bl == (int)len + 1 && memcmp(back + 1, text, len) == 0)
                      : bl == (int)len && memcmp(back, text, len) == 0;
        if (!ok && n_bad++ < 3) fprintf(stderr, "  round trip differs: [%.*s] -> [%.*s]\n", (int)len, text, bl, back);
    }
    CHECK_EQ_INT(n_bad, 0);
    /* Random ids through tok_piece and the stream: same bytes either way. */
    struct tok_stream ts = { 0 };
    char a[1024], b[1024];
    size_t la = 0, lb = 0;
    uint64_t ha = 14695981039346656037ull, hb = 14695981039346656037ull;
    for (int i = 0; i < 2000; i++) {
        int32_t id = (int32_t)(fuzz_next(&st) % (uint32_t)tok_n_vocab(fx.v));
        int k = tok_piece(fx.v, id, a, (int)sizeof(a));
        CHECK(k >= 0);
        for (int j = 0; j < k; j++) ha = (ha ^ (unsigned char)a[j]) * 1099511628211ull;
        la += (size_t)(k > 0 ? k : 0);
        k = tok_stream_push(fx.v, &ts, id, b, (int)sizeof(b));
        CHECK(k >= 0);
        for (int j = 0; j < k; j++) hb = (hb ^ (unsigned char)b[j]) * 1099511628211ull;
        lb += (size_t)(k > 0 ? k : 0);
    }
    int k = tok_stream_flush(&ts, b, (int)sizeof(b));
    for (int j = 0; j < k; j++) hb = (hb ^ (unsigned char)b[j]) * 1099511628211ull;
    lb += (size_t)k;
    CHECK(la == lb && ha == hb);
    fixture_close(&fx);
}

static void test_fuzz_spm(void) { fuzz_vocab("models/stories260K.gguf", true); }
static void test_fuzz_bpe(void) { fuzz_vocab("tokenizer/ggml-vocab-gpt-2.gguf", false); }
static void test_fuzz_bpe_llama3(void) { fuzz_vocab("tokenizer/ggml-vocab-llama-bpe.gguf", false); }

/* ---- malformed vocabularies ---- */

enum { BAD_NONE, BAD_NO_MODEL, BAD_MODEL, BAD_PRE, BAD_SCORES_LEN, BAD_TYPES_LEN, BAD_NO_MERGES,
       BAD_DUP, BAD_TOKENS_TYPE, BAD_SCORES_TYPE, BAD_BOS_RANGE, BAD_NO_TOKENS, BAD_COUNT };

/* Write a 6-token vocab GGUF with one defect and try to load it. */
static int load_synthetic(int defect, bool bpe, struct tok_vocab **out)
{
    char path[256];
    snprintf(path, sizeof(path), "/tmp/tt_test_tok_%d_%d.gguf", (int)getpid(), defect);
    const char *toks[] = { "<unk>", "<s>", "</s>", "a", "b", "ab" };
    const char *dup_toks[] = { "<unk>", "<s>", "</s>", "a", "a", "ab" };
    const char *merges[] = { "a b" };
    float scores[6] = { 0, 0, 0, -1, -2, -0.5f };
    int32_t types[7] = { 2, 3, 3, 1, 1, 1, 1 }; /* 7: room for the too-long case */
    struct gguf_writer *w = gguf_writer_create();
    if (defect != BAD_NO_MODEL)
        gguf_writer_set_str(w, "tokenizer.ggml.model", defect == BAD_MODEL ? "bert" : bpe ? "gpt2" : "llama");
    if (bpe) gguf_writer_set_str(w, "tokenizer.ggml.pre", defect == BAD_PRE ? "no-such-pre" : "gpt-2");
    if (defect == BAD_TOKENS_TYPE)
        gguf_writer_set_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_INT32, types, 6);
    else if (defect != BAD_NO_TOKENS)
        gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", defect == BAD_DUP ? dup_toks : toks, 6);
    if (defect == BAD_SCORES_TYPE)
        gguf_writer_set_arr_str(w, "tokenizer.ggml.scores", toks, 6);
    else
        gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores,
                            defect == BAD_SCORES_LEN ? 5 : 6);
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types,
                        defect == BAD_TYPES_LEN ? 7 : 6);
    if (bpe && defect != BAD_NO_MERGES) gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 1);
    if (defect == BAD_BOS_RANGE) {
        gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1000);
        gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    }
    int rc = gguf_writer_begin(w, path);
    if (!rc) rc = gguf_writer_finish(w);
    gguf_writer_free(w);
    if (rc) return 1000 + rc; /* the writer itself failed */
    struct gguf_file f;
    rc = gguf_open(&f, path);
    if (!rc) {
        rc = tok_load(out, &f);
        gguf_close(&f);
    }
    unlink(path);
    return rc;
}

static void test_bad_vocabs(void)
{
    static const struct { int defect; bool bpe; int want; const char *detail; } cases[] = {
        { BAD_NONE, false, 0, NULL },
        { BAD_NONE, true, 0, NULL },
        { BAD_NO_MODEL, false, TT_ENOTFOUND, "tokenizer.ggml.model" },
        { BAD_MODEL, false, TT_EUNSUPPORTED, "gpt2" },
        { BAD_PRE, true, TT_EUNSUPPORTED, "qwen2" },
        { BAD_SCORES_LEN, false, TT_EFORMAT, "scores" },
        { BAD_TYPES_LEN, true, TT_EFORMAT, "token_type" },
        { BAD_NO_MERGES, true, TT_ENOTFOUND, "merges" },
        { BAD_DUP, false, TT_EFORMAT, "duplicate" },
        { BAD_TOKENS_TYPE, false, TT_EFORMAT, NULL },
        { BAD_SCORES_TYPE, false, TT_EFORMAT, "scores" },
        { BAD_NO_TOKENS, true, TT_ENOTFOUND, "tokens" },
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(cases); i++) {
        struct tok_vocab *v = NULL;
        tt_error_clear();
        int rc = load_synthetic(cases[i].defect, cases[i].bpe, &v);
        if (rc != cases[i].want)
            fprintf(stderr, "  defect %d: %s (%s)\n", cases[i].defect, tt_strerror(rc), tt_error_detail());
        CHECK_EQ_INT(rc, cases[i].want);
        if (cases[i].detail) CHECK(strstr(tt_error_detail(), cases[i].detail) != NULL);
        CHECK((rc == 0) == (v != NULL));
        if (v && !cases[i].bpe) { /* the small SPM vocab works: "ab" merges, "c" is <unk> */
            int32_t ids[8];
            CHECK_EQ_INT(tok_encode(v, "abc", 3, false, false, ids, 8), 3);
            CHECK_EQ_INT(ids[0], tok_unk(v)); /* "▁" has no token either */
            CHECK_EQ_INT(ids[1], 5);
        }
        if (v && cases[i].bpe) {
            int32_t ids[8];
            CHECK_EQ_INT(tok_encode(v, "ab", 2, false, false, ids, 8), 1);
            CHECK_EQ_INT(ids[0], 5);
        }
        tok_free(v);
    }
    /* An out-of-range BOS id keeps the default (1), as llama.cpp does. */
    struct tok_vocab *v = NULL;
    CHECK_EQ_INT(load_synthetic(BAD_BOS_RANGE, false, &v), 0);
    if (v) CHECK_EQ_INT(tok_bos(v), 1);
    tok_free(v);
}

/* ---- chat templates ---- */

static const struct tok_chat_msg chat_full[] = {
    { "system", "You are terse." },
    { "user", "Hi!" },
    { "assistant", "Hello." },
    { "user", "Tell me a joke." },
};

#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

/* Expected renders: the full chat with the generation prompt, the same
 * without it, and the user turn alone (no system) with the prompt. */
static const struct {
    const char *name, *full, *full_nogen, *user_only;
} chat_expect[] = {
    { "llama3",
      "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
      "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>",
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n" },
    { "chatml",
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
      "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n"
      "<|im_start|>assistant\n",
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
      "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n",
      "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n" },
    { "qwen2.5",
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
      "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n"
      "<|im_start|>assistant\n",
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
      "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n",
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
      "assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n" },
    { "phi3",
      "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
      "<|user|>\nTell me a joke.<|end|>\n<|assistant|>\n",
      "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
      "<|user|>\nTell me a joke.<|end|>\n",
      "<|user|>\nHi!<|end|>\n<|assistant|>\n" },
    { "phi4",
      "<|im_start|>system<|im_sep|>You are terse.<|im_end|><|im_start|>user<|im_sep|>Hi!<|im_end|>"
      "<|im_start|>assistant<|im_sep|>Hello.<|im_end|><|im_start|>user<|im_sep|>Tell me a joke."
      "<|im_end|><|im_start|>assistant<|im_sep|>",
      "<|im_start|>system<|im_sep|>You are terse.<|im_end|><|im_start|>user<|im_sep|>Hi!<|im_end|>"
      "<|im_start|>assistant<|im_sep|>Hello.<|im_end|><|im_start|>user<|im_sep|>Tell me a joke."
      "<|im_end|>",
      "<|im_start|>user<|im_sep|>Hi!<|im_end|><|im_start|>assistant<|im_sep|>" },
    { "llama2",
      "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Tell me a joke. [/INST]",
      "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Tell me a joke. [/INST]",
      "[INST] Hi! [/INST]" },
    { "mistral",
      "[INST] You are terse.\n\nHi! [/INST]Hello.</s>[INST] Tell me a joke. [/INST]",
      "[INST] You are terse.\n\nHi! [/INST]Hello.</s>[INST] Tell me a joke. [/INST]",
      "[INST] Hi! [/INST]" },
    { "mistral-v3",
      "[INST] Hi![/INST] Hello.</s>[INST] You are terse.\n\nTell me a joke.[/INST]",
      "[INST] Hi![/INST] Hello.</s>[INST] You are terse.\n\nTell me a joke.[/INST]",
      "[INST] Hi![/INST]" },
    { "mistral-v7",
      "[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][INST] Hi![/INST] Hello.</s>"
      "[INST] Tell me a joke.[/INST]",
      "[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][INST] Hi![/INST] Hello.</s>"
      "[INST] Tell me a joke.[/INST]",
      "[INST] Hi![/INST]" },
    { "gemma",
      "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello."
      "<end_of_turn>\n<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n",
      "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello."
      "<end_of_turn>\n<start_of_turn>user\nTell me a joke.<end_of_turn>\n",
      "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n" },
    { "deepseek",
      "You are terse.### Instruction:\nHi!\n### Response:\nHello.\n<|EOT|>\n"
      "### Instruction:\nTell me a joke.\n### Response:\n",
      "You are terse.### Instruction:\nHi!\n### Response:\nHello.\n<|EOT|>\n"
      "### Instruction:\nTell me a joke.\n",
      "### Instruction:\nHi!\n### Response:\n" },
    { "deepseek2",
      "You are terse.\n\nUser: Hi!\n\nAssistant: Hello." DS_EOS "User: Tell me a joke.\n\nAssistant:",
      "You are terse.\n\nUser: Hi!\n\nAssistant: Hello." DS_EOS "User: Tell me a joke.\n\n",
      "User: Hi!\n\nAssistant:" },
    { "deepseek3",
      "You are terse." DS_USER "Hi!" DS_ASSISTANT "Hello." DS_EOS DS_USER "Tell me a joke." DS_ASSISTANT,
      "You are terse." DS_USER "Hi!" DS_ASSISTANT "Hello." DS_EOS DS_USER "Tell me a joke.",
      DS_USER "Hi!" DS_ASSISTANT },
};

static void test_chat_render(void)
{
    char buf[2048];
    for (size_t i = 0; i < TT_ARRAY_LEN(chat_expect); i++) {
        const char *name = chat_expect[i].name;
        int n = tok_chat_render(name, chat_full, 4, true, buf, sizeof(buf));
        CHECK_EQ_INT(n, (int)strlen(chat_expect[i].full));
        CHECK_STR(buf, chat_expect[i].full);
        n = tok_chat_render(name, chat_full, 4, false, buf, sizeof(buf));
        CHECK_STR(buf, chat_expect[i].full_nogen);
        n = tok_chat_render(name, chat_full + 1, 1, true, buf, sizeof(buf));
        CHECK_STR(buf, chat_expect[i].user_only);
        CHECK_EQ_INT(tok_chat_render(name, chat_full, 4, true, NULL, 0),
                     (int)strlen(chat_expect[i].full));
        CHECK_EQ_INT(tok_chat_render(name, chat_full, 4, true, buf, 8), TT_ERANGE);
        char *p = NULL;
        n = tok_chat_render_alloc(name, chat_full, 4, true, &p);
        CHECK(p && n == (int)strlen(chat_expect[i].full) && strcmp(p, chat_expect[i].full) == 0);
        free(p);
    }
    CHECK(strstr(tok_chat_template_names(), "llama3") && strstr(tok_chat_template_names(), "gemma"));
    CHECK_EQ_INT(tok_chat_render("no-such", chat_full, 4, true, buf, sizeof(buf)), TT_EINVAL);
    CHECK(strstr(tt_error_detail(), "chatml") != NULL);
    struct tok_chat_msg bad = { "user", NULL };
    CHECK_EQ_INT(tok_chat_render("chatml", &bad, 1, true, buf, sizeof(buf)), TT_EINVAL);
    CHECK_EQ_INT(tok_chat_render("chatml", chat_full, -1, true, buf, sizeof(buf)), TT_EINVAL);
    /* Llama 3 and Gemma trim message text; ChatML keeps it. */
    struct tok_chat_msg padded = { "user", "  Hi!\n" };
    tok_chat_render("llama3", &padded, 1, false, buf, sizeof(buf));
    CHECK_STR(buf, "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>");
    tok_chat_render("chatml", &padded, 1, false, buf, sizeof(buf));
    CHECK_STR(buf, "<|im_start|>user\n  Hi!\n<|im_end|>\n");
}

static void test_chat_detect(void)
{
    static const struct { const char *tmpl, *want; } cases[] = {
        { "chatml", "chatml" },
        { "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}", "chatml" },
        { "{{'<|im_start|>' + message['role'] + '<|im_sep|>'}}", "phi4" },
        { "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
          "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
          "'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}", "mistral" },
        { "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' %}"
          "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}", "llama2" },
        { "{{- '[AVAILABLE_TOOLS] [' }}{{- '[INST] ' + message['content'] + '[/INST]' }}", "mistral-v3" },
        { "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}[INST]", "mistral-v7" },
        { "{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>'}}", "phi3" },
        { "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}", "gemma" },
        { "{{'### Instruction:\\n' + message['content'] + '\\n'}}{{'\\n<|EOT|>\\n'}}", "deepseek" },
        { "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}", "llama3" },
        { "{{ 'Assistant: ' + message['content'] + eos_token }}", "deepseek2" },
        { "{{'" DS_USER "' + message['content']}}{{'" DS_ASSISTANT "'}}{{'" DS_EOS "'}}", "deepseek3" },
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(cases); i++) {
        const char *name = NULL;
        CHECK_EQ_INT(tok_chat_template_detect_text(cases[i].tmpl, &name), 0);
        CHECK_STR(name, cases[i].want);
    }
    const char *name = NULL;
    CHECK_EQ_INT(tok_chat_template_detect_text("{{ messages }}", &name), TT_EUNSUPPORTED);
    static const struct { const char *rel, *want; } files[] = {
        { "tokenizer/ggml-vocab-llama-bpe.gguf", "llama3" },
        { "tokenizer/ggml-vocab-qwen2.gguf", "qwen2.5" },
        { "tokenizer/ggml-vocab-phi-3.gguf", "phi3" },
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(files); i++) {
        struct gguf_file f;
        if (!test_file_exists(test_shared_path(files[i].rel))) continue;
        CHECK_EQ_INT(gguf_open(&f, test_shared_path(files[i].rel)), 0);
        name = NULL;
        CHECK_EQ_INT(tok_chat_template_detect(&f, &name), 0);
        CHECK_STR(name, files[i].want);
        gguf_close(&f);
    }
    struct gguf_file f;
    if (test_file_exists(test_shared_path("models/stories260K.gguf"))) {
        CHECK_EQ_INT(gguf_open(&f, test_shared_path("models/stories260K.gguf")), 0);
        CHECK_EQ_INT(tok_chat_template_detect(&f, &name), TT_ENOTFOUND);
        gguf_close(&f);
    }
}

/* Rendered chats tokenize to the family's special tokens. */
static void test_chat_tokenize(void)
{
    struct vocab_fixture fx;
    if (!fixture_open(&fx, "tokenizer/ggml-vocab-llama-bpe.gguf")) return;
    char *text = NULL;
    int len = tok_chat_render_alloc("llama3", chat_full, 4, true, &text);
    CHECK(len > 0);
    static int32_t ids[MAX_IDS];
    int n = tok_encode(fx.v, text, (size_t)len, true, true, ids, MAX_IDS);
    CHECK(n > 10);
    int headers = 0, eots = 0;
    for (int i = 0; i < n; i++) {
        headers += ids[i] == 128006;
        eots += ids[i] == 128009;
    }
    CHECK_EQ_INT(ids[0], 128000);
    CHECK_EQ_INT(ids[1], 128006);
    CHECK_EQ_INT(headers, 5);
    CHECK_EQ_INT(eots, 4);
    free(text);
    fixture_close(&fx);
}

static const struct test_case cases[] = {
    { "vocab_llama_spm", test_vocab_llama_spm },
    { "vocab_phi3", test_vocab_phi3 },
    { "vocab_stories260k", test_vocab_stories260k },
    { "vocab_gpt2", test_vocab_gpt2 },
    { "vocab_mpt", test_vocab_mpt },
    { "vocab_starcoder", test_vocab_starcoder },
    { "vocab_refact", test_vocab_refact },
    { "vocab_falcon", test_vocab_falcon },
    { "vocab_deepseek_llm", test_vocab_deepseek_llm },
    { "vocab_deepseek_coder", test_vocab_deepseek_coder },
    { "vocab_llama_bpe", test_vocab_llama_bpe },
    { "vocab_qwen2", test_vocab_qwen2 },
    { "golden_prompts", test_golden_prompts },
    { "golden_detokenize", test_golden_detokenize },
    { "special_llama3", test_special_llama3 },
    { "special_qwen2", test_special_qwen2 },
    { "pieces_spm", test_pieces_spm },
    { "pieces_bpe", test_pieces_bpe },
    { "encode_limits", test_encode_limits },
    { "stream_utf8", test_stream_utf8 },
    { "load_speed", test_load_speed },
    { "fuzz_spm", test_fuzz_spm },
    { "fuzz_bpe", test_fuzz_bpe },
    { "fuzz_bpe_llama3", test_fuzz_bpe_llama3 },
    { "bad_vocabs", test_bad_vocabs },
    { "chat_render", test_chat_render },
    { "chat_detect", test_chat_detect },
    { "chat_tokenize", test_chat_tokenize },
};

TEST_MAIN(cases)
