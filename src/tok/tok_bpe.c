/*
 * tok_bpe.c: byte-level BPE ("gpt2" vocabularies), as llama.cpp's
 * llm_tokenizer_bpe so ids match it exactly.
 *
 *   1. The text is made valid UTF-8 the way llama.cpp decodes it (each bad
 *      byte -> U+FFFD), so PCRE2 can run without its UTF check.
 *   2. Pre-tokenize: the regexes of the vocab's pre-tokenizer run one after
 *      another; each splits every current piece into its matches and the gaps
 *      between them (a gap is a piece too). The regexes are llama.cpp's
 *      (some adapted there from the Hugging Face originals) and run on PCRE2
 *      with UTF + UCP, so \p{L}, \p{N} and \s are Unicode classes. llama.cpp
 *      runs a few of them through hand-written matchers or a "collapsed"
 *      std::regex; for every code point those agree with the true Unicode
 *      classes used here, up to differences between Unicode versions (PCRE2
 *      10.42 has Unicode 14 tables) and U+180E, which PCRE2 counts as white
 *      space and llama.cpp does not (see bpe_shadow).
 *   3. Each piece's bytes are mapped to GPT-2's printable code points.
 *   4. Merge: symbols start as single code points; every adjacent pair with a
 *      merge rule goes on a min-heap by rank (ties: leftmost); pop, skip
 *      stale pairs (a side changed since the push), merge, push the new
 *      neighbours. With ignore_merges (Llama 3), a piece that is already a
 *      token is emitted whole.
 *   5. Each symbol becomes its token; a symbol with no token falls back to
 *      the tokens of its single bytes, skipping bytes that have none.
 */
#include "tok_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pre-tokenizers ---- */

#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_LLAMA3                                                                               \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
                    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                             \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
                    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN35                                                                    \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+" \
                    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Upper/lower-case letter runs, written with look-aheads as llama.cpp does. */
#define RE_UPPER "((?=[\\p{L}])([^a-z]))"
#define RE_LOWER "((?=[\\p{L}])([^A-Z]))"
#define RE_TEKKEN                                                                            \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+|[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "+" \
    RE_LOWER "*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT4O                                                                               \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+" RE_CONTRACTIONS "?|[^\\r\\n\\p{L}\\p{N}]?" \
    RE_UPPER "+" RE_LOWER "*" RE_CONTRACTIONS "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"  \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Cased letters (Lu, Ll, Lt) of DeepSeek LLM's tokenizer, as code points. */
#define RE_DS_CASED                                                                            \
    "A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-"     \
    "\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}"        \
    "\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}"       \
    "\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-"        \
    "\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}"      \
    "\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-"    \
    "\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-"      \
    "\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-"     \
    "\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}"      \
    "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}"        \
    "\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-"     \
    "\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-"      \
    "\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"       \
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-"    \
    "\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-"           \
    "\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-"      \
    "\\x{118DF}\\x{1E900}-\\x{1E943}"
#define RE_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
#define RE_BLOOM " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+"

static const char *const re_default[] = { "[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+",
                                          "[0-9][0-9][0-9]", NULL };
static const char *const re_gpt2[] = { RE_GPT2, NULL };
static const char *const re_llama3[] = { RE_LLAMA3, NULL };
static const char *const re_qwen2[] = { RE_QWEN2, NULL };
static const char *const re_qwen35[] = { RE_QWEN35, NULL };
static const char *const re_starcoder[] = { "\\p{N}", RE_GPT2, NULL };
static const char *const re_falcon[] = { "[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]",
                                         NULL };
static const char *const re_deepseek_llm[] = {
    "[\r\n]", "\\s?[" RE_DS_CASED "]+",
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
    "\\s+$", RE_CJK, "\\p{N}+", NULL,
};
static const char *const re_deepseek_coder[] = { "[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK,
                                                  "\\p{N}", NULL };
static const char *const re_tekken[] = { RE_TEKKEN, NULL };
static const char *const re_gpt4o[] = { RE_GPT4O, NULL };
static const char *const re_bloom[] = { RE_BLOOM, NULL };
static const char *const re_viking[] = { RE_BLOOM, "\\p{N}", NULL };

/* tokenizer.ggml.pre values, llama.cpp's names and aliases. "gpt2" is our
 * extra alias of "gpt-2". Verified against reference outputs: gpt-2, mpt,
 * starcoder, refact, falcon, deepseek-llm, deepseek-coder, llama-bpe, qwen2;
 * the others share those regexes or were transcribed from llama.cpp. */
static const struct tok_pre_def tok_pres[] = {
    { "default", re_default, false, false },
    { "llama3", re_llama3, true, true },
    { "llama-v3", re_llama3, true, true },
    { "llama-bpe", re_llama3, true, true },
    { "falcon3", re_llama3, true, true },
    { "falcon-h1", re_llama3, true, true },
    { "pixtral", re_llama3, true, true },
    { "midm-2.0", re_llama3, true, true },
    { "lfm2", re_llama3, true, true },
    { "jina-v5-nano", re_llama3, true, true },
    { "dbrx", re_llama3, false, false },
    { "smaug-bpe", re_llama3, false, false },
    { "deepseek-llm", re_deepseek_llm, false, false },
    { "deepseek-coder", re_deepseek_coder, false, false },
    { "falcon", re_falcon, false, false },
    { "mpt", re_gpt2, false, false },
    { "gpt-2", re_gpt2, false, false },
    { "gpt2", re_gpt2, false, false },
    { "phi-2", re_gpt2, false, false },
    { "olmo", re_gpt2, false, false },
    { "jais", re_gpt2, false, false },
    { "trillion", re_gpt2, false, false },
    { "granite-docling", re_gpt2, false, false },
    { "jina-es", re_gpt2, false, false },
    { "jina-de", re_gpt2, false, false },
    { "jina-v2-es", re_gpt2, false, false },
    { "jina-v2-de", re_gpt2, false, false },
    { "jina-v1-en", re_gpt2, false, false },
    { "jina-v2-code", re_gpt2, false, false },
    { "roberta-bpe", re_gpt2, false, false },
    { "gigachat", re_gpt2, false, false },
    { "a.x-4.0", re_gpt2, false, false },
    { "mellum", re_gpt2, false, false },
    { "modern-bert", re_gpt2, false, false },
    { "exaone4", re_gpt2, false, false },
    { "starcoder", re_starcoder, false, false },
    { "refact", re_starcoder, false, false },
    { "command-r", re_starcoder, false, false },
    { "smollm", re_starcoder, false, false },
    { "codeshell", re_starcoder, false, false },
    { "exaone", re_starcoder, false, false },
    { "minerva-7b", re_starcoder, false, false },
    { "mellum2", re_starcoder, false, false },
    { "qwen2", re_qwen2, false, false },
    { "deepseek-r1-qwen", re_qwen2, false, false },
    { "kormo", re_qwen2, false, false },
    { "f2llmv2", re_qwen2, false, false },
    { "megrez", re_qwen2, false, false },
    { "stablelm2", re_qwen2, false, false },
    { "hunyuan", re_qwen2, false, false },
    { "solar-open", re_qwen2, false, false },
    { "qwen35", re_qwen35, false, false },
    { "tekken", re_tekken, true, true },
    { "gpt-4o", re_gpt4o, false, false },
    { "llama4", re_gpt4o, false, false },
    { "kanana2", re_gpt4o, false, false },
    { "minimax-m2", re_gpt4o, false, false },
    { "poro-chat", re_bloom, false, false },
    { "bloom", re_bloom, false, false },
    { "gpt3-finnish", re_bloom, false, false },
    { "viking", re_viking, false, false },
};

const struct tok_pre_def *tok_pre_find(const char *name)
{
    for (size_t i = 0; i < TT_ARRAY_LEN(tok_pres); i++)
        if (strcmp(tok_pres[i].name, name) == 0) return &tok_pres[i];
    return NULL;
}

static char tok_pre_names_buf[1536];

static void tok_pre_names_fill(void)
{
    size_t n = 0;
    for (size_t i = 0; i < TT_ARRAY_LEN(tok_pres); i++) {
        int w = snprintf(tok_pre_names_buf + n, sizeof(tok_pre_names_buf) - n, "%s%s",
                         i ? ", " : "", tok_pres[i].name);
        if (w < 0 || (size_t)w >= sizeof(tok_pre_names_buf) - n) break;
        n += (size_t)w;
    }
}

const char *tok_pre_names(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, tok_pre_names_fill);
    return tok_pre_names_buf;
}

/* ---- regex compilation ---- */

int tok_bpe_init(struct tok_vocab *v)
{
    TT_ASSERT(v->pre);
    for (const char *const *r = v->pre->regexes; *r; r++) {
        TT_ASSERT(v->n_re < TOK_PRE_REGEX_MAX);
        int err;
        PCRE2_SIZE at;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)*r, PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &at,
                                       NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof(msg));
            return tt_error_set(TT_EUNSUPPORTED, "tok: pre-tokenizer '%s': regex %d does not "
                                "compile at offset %zu: %s", v->pre->name, v->n_re, (size_t)at,
                                (const char *)msg);
        }
        /* JIT is an optimisation: without it (no JIT support) the
         * interpreter gives the same matches. */
        if (pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) != 0)
            tt_debug("tok: PCRE2 JIT unavailable for pre-tokenizer '%s'", v->pre->name);
        v->re[v->n_re++] = re;
    }
    return 0;
}

void tok_bpe_free(struct tok_vocab *v)
{
    for (int i = 0; i < v->n_re; i++) pcre2_code_free(v->re[i]);
    v->n_re = 0;
}

/* ---- encoding ---- */

struct bpe_span {
    uint32_t start, end; /* byte offsets into the sanitized text */
};

struct bpe_spans {
    struct bpe_span *v;
    int n, cap;
};

struct bpe_sym {
    int32_t prev, next;
    uint32_t off, n; /* slice of the mapped word; n = 0 once merged away */
};

struct bpe_bigram {
    int32_t left, right;
    int32_t rank;
    uint32_t size;
};

/* Per-call state; everything is freed at the end of tok_bpe_encode. */
struct bpe_state {
    const struct tok_vocab *v;
    pcre2_match_data *md;
    pcre2_match_context *mctx; /* only once a match ran out of JIT stack */
    pcre2_jit_stack *jit_stack;
    struct tok_buf text;   /* sanitized input */
    struct tok_buf shadow; /* what the regexes see, when it differs from text */
    const char *subject;   /* text.p or shadow.p */
    struct tok_buf word; /* one piece, byte-level mapped */
    struct bpe_spans spans[2];
    struct bpe_sym *sym;
    int32_t cap_sym;
    struct bpe_bigram *heap;
    int32_t n_heap, cap_heap;
};

static int bpe_span_push(struct bpe_spans *s, uint32_t start, uint32_t end)
{
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        struct bpe_span *p = realloc(s->v, (size_t)cap * sizeof(*p));
        if (!p) return tt_error_set(TT_ENOMEM, "tok: out of memory splitting text");
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = (struct bpe_span){ start, end };
    return 0;
}

/* One regex match at or after `from` in subject[0..len); retries with a
 * larger JIT stack if the default one is too small. */
static int bpe_match(struct bpe_state *st, pcre2_code *re, const char *subject, size_t len,
                     size_t from)
{
    for (;;) {
        int rc = pcre2_match(re, (PCRE2_SPTR)subject, len, from, PCRE2_NO_UTF_CHECK, st->md,
                             st->mctx);
        if (rc != PCRE2_ERROR_JIT_STACKLIMIT || st->jit_stack) return rc;
        st->mctx = pcre2_match_context_create(NULL);
        st->jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
        if (!st->mctx || !st->jit_stack) return PCRE2_ERROR_NOMEMORY;
        pcre2_jit_stack_assign(st->mctx, NULL, st->jit_stack);
    }
}

/* Split span [start, end) of the text by re into matches and gaps. */
static int bpe_split(struct bpe_state *st, pcre2_code *re, struct bpe_span sp, struct bpe_spans *out)
{
    const char *subject = st->subject + sp.start;
    size_t len = sp.end - sp.start, gap = 0, from = 0;
    int rc = 0;
    while (from < len && !rc) {
        int m = bpe_match(st, re, subject, len, from);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof(msg));
            return tt_error_set(m == PCRE2_ERROR_NOMEMORY ? TT_ENOMEM : TT_ERANGE,
                                "tok: pre-tokenizer regex failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* cannot happen with our regexes; step over a character */
            if (ms >= len) break;
            from = ms + tok_utf8_len((unsigned char)subject[ms]);
            continue;
        }
        if (ms > gap) rc = bpe_span_push(out, sp.start + (uint32_t)gap, sp.start + (uint32_t)ms);
        if (!rc) rc = bpe_span_push(out, sp.start + (uint32_t)ms, sp.start + (uint32_t)me);
        gap = from = me;
    }
    if (!rc && gap < len) rc = bpe_span_push(out, sp.start + (uint32_t)gap, sp.end);
    return rc;
}

/* Heap order: lower rank first, then smaller left index. */
static bool bpe_before(const struct bpe_bigram *a, const struct bpe_bigram *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int bpe_push(struct bpe_state *st, struct bpe_bigram b)
{
    if (st->n_heap == st->cap_heap) {
        int32_t cap = st->cap_heap ? st->cap_heap * 2 : 64;
        struct bpe_bigram *h = realloc(st->heap, (size_t)cap * sizeof(*h));
        if (!h) return tt_error_set(TT_ENOMEM, "tok: out of memory in the BPE merge queue");
        st->heap = h;
        st->cap_heap = cap;
    }
    int32_t i = st->n_heap++;
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (!bpe_before(&b, &st->heap[parent])) break;
        st->heap[i] = st->heap[parent];
        i = parent;
    }
    st->heap[i] = b;
    return 0;
}

static struct bpe_bigram bpe_pop(struct bpe_state *st)
{
    struct bpe_bigram top = st->heap[0], last = st->heap[--st->n_heap];
    int32_t i = 0, n = st->n_heap;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bpe_before(&st->heap[c + 1], &st->heap[c])) c++;
        if (!bpe_before(&st->heap[c], &last)) break;
        st->heap[i] = st->heap[c];
        i = c;
    }
    if (n > 0) st->heap[i] = last;
    return top;
}

static int bpe_try_add(struct bpe_state *st, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return 0;
    const struct bpe_sym *l = &st->sym[left], *r = &st->sym[right];
    const char *w = st->word.p;
    int32_t rank = tok_strmap_find3(&st->v->merge_map, w + l->off, l->n, " ", 1, w + r->off, r->n);
    if (rank < 0) return 0;
    struct bpe_bigram b = { left, right, rank, l->n + r->n };
    return bpe_push(st, b);
}

/* Step 5 for one symbol of the mapped word. */
static int bpe_emit(struct bpe_state *st, const struct bpe_sym *s, struct tok_ids *out)
{
    const char *p = st->word.p + s->off;
    int32_t id = tok_find(st->v, p, s->n);
    if (id >= 0) return tok_ids_push(out, id);
    for (uint32_t i = 0; i < s->n; i++) {
        id = tok_find(st->v, p + i, 1);
        if (id < 0) continue;
        int rc = tok_ids_push(out, id);
        if (rc) return rc;
    }
    return 0;
}

/* Steps 3-5 for one pre-tokenized piece. */
static int bpe_word(struct bpe_state *st, const char *piece, size_t len, struct tok_ids *out)
{
    st->word.n = 0;
    int rc = tok_buf_reserve(&st->word, len * 2);
    if (rc) return rc;
    for (size_t i = 0; i < len; i++)
        st->word.n += (size_t)tok_utf8_put(tok_byte_to_cp((uint8_t)piece[i]), st->word.p + st->word.n);
    const char *w = st->word.p;
    size_t n_bytes = st->word.n;
    if (st->v->pre->ignore_merges) {
        int32_t id = tok_find(st->v, w, n_bytes);
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (n_bytes > (size_t)st->cap_sym) {
        struct bpe_sym *p = realloc(st->sym, n_bytes * sizeof(*p));
        if (!p) return tt_error_set(TT_ENOMEM, "tok: out of memory for %zu symbols", n_bytes);
        st->sym = p;
        st->cap_sym = (int32_t)n_bytes;
    }
    int32_t n = 0;
    for (size_t off = 0; off < n_bytes; n++) {
        size_t k = tok_utf8_len((unsigned char)w[off]);
        st->sym[n] = (struct bpe_sym){ n - 1, off + k == n_bytes ? -1 : n + 1, (uint32_t)off,
                                       (uint32_t)k };
        off += k;
    }
    st->n_heap = 0;
    for (int32_t i = 1; i < n && !rc; i++) rc = bpe_try_add(st, i - 1, i);
    while (!rc && st->n_heap > 0) {
        struct bpe_bigram b = bpe_pop(st);
        struct bpe_sym *l = &st->sym[b.left], *r = &st->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) st->sym[r->next].prev = b.left;
        rc = bpe_try_add(st, l->prev, b.left);
        if (!rc) rc = bpe_try_add(st, b.left, l->next);
    }
    for (int32_t i = n > 0 ? 0 : -1; i != -1 && !rc; i = st->sym[i].next)
        rc = bpe_emit(st, &st->sym[i], out);
    return rc;
}

/* PCRE2 (Unicode 14 tables) counts U+180E MONGOLIAN VOWEL SEPARATOR as \s;
 * llama.cpp's White_Space table does not. The regexes therefore see it as
 * U+200B, another format character of the same UTF-8 length that no class
 * here matches specially, so spans keep their offsets into the real text. */
static int bpe_shadow(struct bpe_state *st)
{
    st->subject = st->text.p;
    if (!memmem(st->text.p, st->text.n, "\xe1\xa0\x8e", 3)) return 0;
    int rc = tok_buf_append(&st->shadow, st->text.p, st->text.n);
    if (rc) return rc;
    for (char *p = st->shadow.p, *end = p + st->shadow.n;
         (p = memmem(p, (size_t)(end - p), "\xe1\xa0\x8e", 3)); p += 3)
        memcpy(p, "\xe2\x80\x8b", 3);
    st->subject = st->shadow.p;
    return 0;
}

/* Steps 1-2: sanitized text split into st->spans[*which]. */
static int bpe_pretokenize(struct bpe_state *st, const char *text, size_t len, int *which)
{
    int rc = tok_utf8_sanitize(text, len, &st->text);
    if (rc) return rc;
    if (st->text.n > UINT32_MAX)
        return tt_error_set(TT_ERANGE, "tok: text of %zu bytes is too long", st->text.n);
    rc = bpe_shadow(st);
    int cur = 0;
    if (!rc) rc = bpe_span_push(&st->spans[cur], 0, (uint32_t)st->text.n);
    for (int r = 0; r < st->v->n_re && !rc; r++) {
        struct bpe_spans *next = &st->spans[cur ^ 1];
        next->n = 0;
        for (int i = 0; i < st->spans[cur].n && !rc; i++)
            rc = bpe_split(st, st->v->re[r], st->spans[cur].v[i], next);
        cur ^= 1;
    }
    *which = cur;
    return rc;
}

int tok_bpe_encode(const struct tok_vocab *v, const char *text, size_t len, struct tok_ids *out)
{
    struct bpe_state st = { .v = v };
    int rc = 0, cur = 0;
    st.md = pcre2_match_data_create(1, NULL);
    if (!st.md) rc = tt_error_set(TT_ENOMEM, "tok: out of memory for regex match data");
    if (!rc) rc = bpe_pretokenize(&st, text, len, &cur);
    for (int i = 0; !rc && i < st.spans[cur].n; i++) {
        struct bpe_span sp = st.spans[cur].v[i];
        rc = bpe_word(&st, st.text.p + sp.start, sp.end - sp.start, out);
    }
    pcre2_match_data_free(st.md);
    pcre2_match_context_free(st.mctx);
    pcre2_jit_stack_free(st.jit_stack);
    tok_buf_free(&st.text);
    tok_buf_free(&st.shadow);
    tok_buf_free(&st.word);
    free(st.spans[0].v);
    free(st.spans[1].v);
    free(st.sym);
    free(st.heap);
    return rc;
}
