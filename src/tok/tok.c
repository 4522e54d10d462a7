/*
 * tok.c: loading a vocabulary from GGUF metadata, and its read-only queries.
 *
 * Loading order (each step may fail; tok_free undoes any prefix of them):
 *   1. tokenizer.ggml.model / .pre -> vocab type and pre-tokenizer;
 *   2. tokens, scores, token types -> arena + texts/scores/attrs, validated:
 *      arrays of the right element type and of equal length, every text at
 *      most TOK_TEXT_MAX bytes, no duplicate texts;
 *   3. merges (BPE) -> merge map; pre-tokenizer regexes compiled;
 *   4. special ids and add_bos/add_eos flags, llama.cpp's defaults first;
 *   5. by-name fix-ups and the special-token list (tok_special.c);
 *   6. the decoded piece of every token, so decoding never allocates.
 *
 * Invariants after tok_load: every id stored in the vocab is -1 or in
 * [0, n_tokens); every text and piece lies inside its arena.
 */
#include "tok_internal.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

static const char *const tok_model_names = "llama (SentencePiece), gpt2 (byte-level BPE)";

/* ---- step 1: type ---- */

static int tok_load_model(struct tok_vocab *v, const struct gguf_file *f)
{
    const char *model = NULL;
    int rc = gguf_get_str(f, KEY_MODEL, &model);
    if (rc == TT_ENOTFOUND)
        return tt_error_set(TT_ENOTFOUND, "tok: the model file has no %s key (no tokenizer)",
                            KEY_MODEL);
    if (rc) return rc;
    if (strcmp(model, "llama") == 0) {
        v->model = TOK_MODEL_SPM;
        v->add_bos = true;
        v->add_space_prefix = true;
        return 0;
    }
    if (strcmp(model, "gpt2") != 0)
        return tt_error_set(TT_EUNSUPPORTED, "tok: tokenizer model '%s' is not supported; known: %s",
                            model, tok_model_names);
    v->model = TOK_MODEL_BPE;
    const char *pre = NULL;
    rc = gguf_get_str(f, KEY_PRE, &pre);
    if (rc == TT_ENOTFOUND) {
        tt_warn("tok: no %s in the model file, using the 'default' pre-tokenizer; "
                "tokenization may differ from the model's training, consider regenerating the GGUF",
                KEY_PRE);
        pre = "default";
    } else if (rc) {
        return rc;
    }
    v->pre = tok_pre_find(pre);
    if (!v->pre)
        return tt_error_set(TT_EUNSUPPORTED,
                            "tok: pre-tokenizer '%s' (%s) is not supported; known: %s", pre,
                            KEY_PRE, tok_pre_names());
    v->add_bos = v->pre->add_bos;
    return 0;
}

/* ---- step 2: tokens ---- */

/* The arrays of step 2, checked: `types`/`scores` may be NULL (absent). */
static int tok_get_token_arrays(const struct gguf_file *f, const struct gguf_value **tokens,
                                const struct gguf_value **scores, const struct gguf_value **types)
{
    int rc = gguf_get_arr(f, KEY_TOKENS, GGUF_TYPE_STRING, tokens);
    if (rc == TT_ENOTFOUND) return tt_error_set(rc, "tok: the model file has no %s", KEY_TOKENS);
    if (rc) return rc;
    uint64_t n = (*tokens)->arr.n;
    if (n == 0 || n > TOK_VOCAB_MAX)
        return tt_error_set(TT_EFORMAT, "tok: %s has %llu entries (must be 1..%d)", KEY_TOKENS,
                            (unsigned long long)n, TOK_VOCAB_MAX);
    *scores = *types = NULL;
    rc = gguf_get_arr(f, KEY_SCORES, GGUF_TYPE_COUNT, scores);
    if (rc && rc != TT_ENOTFOUND) return rc;
    if (*scores) {
        enum gguf_vtype t = (*scores)->arr.type;
        if (t != GGUF_TYPE_FLOAT32 && t != GGUF_TYPE_INT32)
            return tt_error_set(TT_EFORMAT, "tok: %s has elements of type %s (want float32)",
                                KEY_SCORES, gguf_vtype_name(t));
        if ((*scores)->arr.n != n)
            return tt_error_set(TT_EFORMAT, "tok: %s has %llu entries but there are %llu tokens",
                                KEY_SCORES, (unsigned long long)(*scores)->arr.n,
                                (unsigned long long)n);
    }
    rc = gguf_get_arr(f, KEY_TYPES, GGUF_TYPE_COUNT, types);
    if (rc && rc != TT_ENOTFOUND) return rc;
    if (*types) {
        enum gguf_vtype t = (*types)->arr.type;
        bool integer = t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT8 ||
                       t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_UINT16;
        if (!integer)
            return tt_error_set(TT_EFORMAT, "tok: %s has elements of type %s (want int32)",
                                KEY_TYPES, gguf_vtype_name(t));
        if ((*types)->arr.n != n)
            return tt_error_set(TT_EFORMAT, "tok: %s has %llu entries but there are %llu tokens",
                                KEY_TYPES, (unsigned long long)(*types)->arr.n,
                                (unsigned long long)n);
    }
    return 0;
}

static uint32_t tok_attr_from_type(int64_t type)
{
    switch (type) {
    case TOK_TYPE_NORMAL: return TOK_ATTR_NORMAL;
    case TOK_TYPE_UNKNOWN: return TOK_ATTR_UNKNOWN;
    case TOK_TYPE_CONTROL: return TOK_ATTR_CONTROL;
    case TOK_TYPE_USER_DEFINED: return TOK_ATTR_USER_DEFINED;
    case TOK_TYPE_UNUSED: return TOK_ATTR_UNUSED;
    case TOK_TYPE_BYTE: return TOK_ATTR_BYTE;
    default: return 0; /* undefined */
    }
}

/* Copy token texts (and merge lines, which go in the same arena) into one
 * NUL-separated arena. An empty token text becomes "[EMPTY_<id>]" as in
 * llama.cpp, so every text is a usable map key. */
static int tok_fill_arena(struct tok_vocab *v, const struct gguf_value *tokens,
                          const struct gguf_value *merges)
{
    uint64_t n = tokens->arr.n, nm = merges ? merges->arr.n : 0, total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = tokens->arr.elems[i].s.len;
        if (len > TOK_TEXT_MAX)
            return tt_error_set(TT_EFORMAT, "tok: token %llu is %llu bytes long (limit %d)",
                                (unsigned long long)i, (unsigned long long)len, TOK_TEXT_MAX);
        total += (len ? len : 24) + 1;
    }
    for (uint64_t i = 0; i < nm; i++) total += merges->arr.elems[i].s.len + 1;
    if (total >= UINT32_MAX) return tt_error_set(TT_EFORMAT, "tok: vocabulary text is too large");
    v->arena = malloc(total ? total : 1);
    v->texts = calloc(n, sizeof(*v->texts));
    v->merge_keys = nm ? calloc(nm, sizeof(*v->merge_keys)) : NULL;
    if (!v->arena || !v->texts || (nm && !v->merge_keys))
        return tt_error_set(TT_ENOMEM, "tok: out of memory for the vocabulary text");
    size_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        const struct gguf_value *s = &tokens->arr.elems[i];
        v->texts[i].off = (uint32_t)pos;
        if (s->s.len == 0) {
            tt_warn("tok: empty token at index %llu", (unsigned long long)i);
            v->texts[i].len = (uint32_t)sprintf(v->arena + pos, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(v->arena + pos, s->s.data, s->s.len);
            v->texts[i].len = (uint32_t)s->s.len;
        }
        pos += v->texts[i].len;
        v->arena[pos++] = 0;
    }
    for (uint64_t i = 0; i < nm; i++) {
        const struct gguf_value *s = &merges->arr.elems[i];
        v->merge_keys[i].off = (uint32_t)pos;
        v->merge_keys[i].len = (uint32_t)s->s.len;
        memcpy(v->arena + pos, s->s.data, s->s.len);
        pos += s->s.len;
        v->arena[pos++] = 0;
    }
    v->arena_len = pos;
    return 0;
}

static int tok_load_tokens(struct tok_vocab *v, const struct gguf_file *f)
{
    const struct gguf_value *tokens, *scores, *types, *merges = NULL;
    int rc = tok_get_token_arrays(f, &tokens, &scores, &types);
    if (rc) return rc;
    if (v->model == TOK_MODEL_BPE) {
        rc = gguf_get_arr(f, KEY_MERGES, GGUF_TYPE_STRING, &merges);
        if (rc == TT_ENOTFOUND)
            return tt_error_set(rc, "tok: a gpt2 (BPE) vocabulary needs %s", KEY_MERGES);
        if (rc) return rc;
        if (merges->arr.n > TOK_MERGES_MAX)
            return tt_error_set(TT_EFORMAT, "tok: %llu merges (limit %d)",
                                (unsigned long long)merges->arr.n, TOK_MERGES_MAX);
        v->n_merges = (int32_t)merges->arr.n;
    }
    v->n_tokens = (int32_t)tokens->arr.n;
    rc = tok_fill_arena(v, tokens, merges);
    if (rc) return rc;
    v->scores = calloc((size_t)v->n_tokens, sizeof(float));
    v->attrs = calloc((size_t)v->n_tokens, sizeof(uint32_t));
    if (!v->scores || !v->attrs) return tt_error_set(TT_ENOMEM, "tok: out of memory");
    for (int32_t i = 0; i < v->n_tokens; i++) {
        v->scores[i] = scores ? (float)gguf_arr_f64(scores, (uint64_t)i) : 0.0f;
        v->attrs[i] = types ? tok_attr_from_type(gguf_arr_i64(types, (uint64_t)i)) : TOK_ATTR_NORMAL;
    }
    int32_t dup = -1;
    rc = tok_strmap_build(&v->token_map, v->arena, v->texts, v->n_tokens, false, &dup);
    if (rc == TT_EFORMAT)
        return tt_error_set(rc, "tok: duplicate token '%s' (id %d) in %s", tok_text(v, dup), dup,
                            KEY_TOKENS);
    if (rc) return rc;
    if (v->model == TOK_MODEL_BPE) {
        /* A line without an inner space names no pair; give it an empty key
         * so it can never match (llama.cpp stores ("", "")). */
        for (int32_t i = 0; i < v->n_merges; i++) {
            const char *s = v->arena + v->merge_keys[i].off;
            if (v->merge_keys[i].len < 2 || !memchr(s + 1, ' ', v->merge_keys[i].len - 1))
                v->merge_keys[i].len = 0;
        }
        rc = tok_strmap_build(&v->merge_map, v->arena, v->merge_keys, v->n_merges, true, NULL);
    }
    return rc;
}

/* ---- step 4: special ids and flags ---- */

/* Read an optional token-id key into *id. Out-of-range ids keep the default
 * (with a warning, except the common 0xFFFFFFFF / -1 meaning "none"). */
static int tok_get_id(const struct tok_vocab *v, const struct gguf_file *f, const char *key,
                      int32_t *id)
{
    if (*id >= v->n_tokens) *id = -1; /* a default that does not fit this vocab */
    int64_t val;
    int rc = gguf_get_i64(f, key, &val);
    if (rc == TT_ENOTFOUND) return 0;
    if (rc) return rc;
    if (val >= 0 && val < v->n_tokens) {
        *id = (int32_t)val;
    } else if (val != -1 && val != 0xffffffffll) {
        tt_warn("tok: %s = %lld is outside the vocabulary (%d tokens), using %d", key,
                (long long)val, v->n_tokens, *id);
    }
    return 0;
}

static int tok_get_flag(const struct gguf_file *f, const char *key, bool *flag)
{
    int rc = gguf_get_bool(f, key, flag);
    return rc == TT_ENOTFOUND ? 0 : rc;
}

static int tok_load_specials(struct tok_vocab *v, const struct gguf_file *f)
{
    bool spm = v->model == TOK_MODEL_SPM;
    v->bos = spm ? 1 : 11;
    v->eos = spm ? 2 : 11;
    v->unk = spm ? 0 : -1;
    v->eot = v->eom = v->sep = v->pad = -1;
    v->fim_pre = v->fim_suf = v->fim_mid = v->fim_pad = v->fim_rep = v->fim_sep = -1;
    static const struct { const char *key; size_t off; } keys[] = {
        { "tokenizer.ggml.bos_token_id", offsetof(struct tok_vocab, bos) },
        { "tokenizer.ggml.eos_token_id", offsetof(struct tok_vocab, eos) },
        { "tokenizer.ggml.eot_token_id", offsetof(struct tok_vocab, eot) },
        { "tokenizer.ggml.eom_token_id", offsetof(struct tok_vocab, eom) },
        { "tokenizer.ggml.unknown_token_id", offsetof(struct tok_vocab, unk) },
        { "tokenizer.ggml.seperator_token_id", offsetof(struct tok_vocab, sep) },
        { "tokenizer.ggml.padding_token_id", offsetof(struct tok_vocab, pad) },
        { "tokenizer.ggml.fim_pre_token_id", offsetof(struct tok_vocab, fim_pre) },
        { "tokenizer.ggml.fim_suf_token_id", offsetof(struct tok_vocab, fim_suf) },
        { "tokenizer.ggml.fim_mid_token_id", offsetof(struct tok_vocab, fim_mid) },
        { "tokenizer.ggml.fim_pad_token_id", offsetof(struct tok_vocab, fim_pad) },
        { "tokenizer.ggml.fim_rep_token_id", offsetof(struct tok_vocab, fim_rep) },
        { "tokenizer.ggml.fim_sep_token_id", offsetof(struct tok_vocab, fim_sep) },
        { "tokenizer.ggml.prefix_token_id", offsetof(struct tok_vocab, fim_pre) },
        { "tokenizer.ggml.suffix_token_id", offsetof(struct tok_vocab, fim_suf) },
        { "tokenizer.ggml.middle_token_id", offsetof(struct tok_vocab, fim_mid) },
    };
    for (size_t i = 0; i < TT_ARRAY_LEN(keys); i++) {
        int rc = tok_get_id(v, f, keys[i].key, (int32_t *)((char *)v + keys[i].off));
        if (rc) return rc;
    }
    int rc = tok_get_flag(f, "tokenizer.ggml.add_bos_token", &v->add_bos);
    if (!rc) rc = tok_get_flag(f, "tokenizer.ggml.add_eos_token", &v->add_eos);
    if (!rc) rc = tok_get_flag(f, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix);
    if (rc) return rc;
    if (v->add_bos && v->bos < 0)
        return tt_error_set(TT_EFORMAT, "tok: add_bos_token is true but there is no BOS token");
    if (v->add_eos && v->eos < 0)
        return tt_error_set(TT_EFORMAT, "tok: add_eos_token is true but there is no EOS token");
    return 0;
}

/* SPM byte fallback table: "<0xXX>" (upper-case hex), else the 1-byte token. */
static void tok_find_byte_tokens(struct tok_vocab *v)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[7] = { '<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0 };
        char raw = (char)b;
        int32_t id = tok_strmap_find3(&v->token_map, name, 6, "", 0, "", 0);
        if (id < 0) id = tok_strmap_find3(&v->token_map, &raw, 1, "", 0, "", 0);
        v->byte_token[b] = id;
    }
}

/* ---- step 6: pieces ---- */

static size_t tok_put(char *out, size_t at, const void *p, size_t n)
{
    if (out) memcpy(out + at, p, n);
    return n;
}

/* Byte-level BPE text -> bytes. A code point outside GPT-2's byte map is
 * spelled "[UNK_BYTE_0x<its utf-8 in hex><token text>]" like llama.cpp. */
static size_t tok_piece_bpe(const char *t, size_t n, char *out)
{
    size_t len = 0, i = 0;
    while (i < n) {
        size_t start = i, k = tok_utf8_len((unsigned char)t[i]);
        uint32_t cp = (unsigned char)t[i];
        if (k > 1 && i + k <= n) {
            cp &= 0x7fu >> k;
            for (size_t j = 1; j < k; j++) cp = (cp << 6) | ((unsigned char)t[i + j] & 0x3f);
        }
        i += (k <= n - i) ? k : 1;
        int b = (k > 1 && start + k > n) ? -1 : tok_cp_to_byte(cp);
        if (b >= 0) {
            char c = (char)b;
            len += tok_put(out, len, &c, 1);
            continue;
        }
        char hex[3];
        len += tok_put(out, len, "[UNK_BYTE_0x", 12);
        for (size_t j = start; j < i; j++) {
            snprintf(hex, sizeof(hex), "%02x", (unsigned char)t[j]);
            len += tok_put(out, len, hex, 2);
        }
        len += tok_put(out, len, t, n);
        len += tok_put(out, len, "]", 1);
    }
    return len;
}

/* The piece of token id (llama_token_to_piece with special = false); writes
 * it to out when out is not NULL; returns its length. */
static size_t tok_piece_compute(const struct tok_vocab *v, int32_t id, char *out)
{
    uint32_t a = v->attrs[id];
    const char *t = tok_text(v, id);
    size_t n = v->texts[id].len, len = 0;
    if (a & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL)) return 0;
    if (a & TOK_ATTR_USER_DEFINED) return tok_put(out, 0, t, n);
    if (a & TOK_ATTR_NORMAL) {
        if (v->model == TOK_MODEL_BPE) return tok_piece_bpe(t, n, out);
        for (size_t i = 0; i < n;) { /* U+2581 -> ' ' */
            if (i + 3 <= n && memcmp(t + i, "\xe2\x96\x81", 3) == 0) {
                len += tok_put(out, len, " ", 1);
                i += 3;
            } else {
                len += tok_put(out, len, t + i, 1);
                i++;
            }
        }
        return len;
    }
    if (a & TOK_ATTR_BYTE) { /* "<0xAB>": two hex digits at offset 3 */
        unsigned val = 0;
        for (size_t i = 3; i < 5 && i < n; i++) {
            char c = t[i];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) break;
            val = val * 16 + (unsigned)d;
        }
        char c = (char)val;
        return tok_put(out, 0, &c, 1);
    }
    return 0; /* unused / undefined */
}

static int tok_build_pieces(struct tok_vocab *v)
{
    v->pieces = calloc((size_t)v->n_tokens, sizeof(*v->pieces));
    if (!v->pieces) return tt_error_set(TT_ENOMEM, "tok: out of memory");
    uint64_t total = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        size_t n = tok_piece_compute(v, i, NULL);
        if (n > INT32_MAX / 2) return tt_error_set(TT_EFORMAT, "tok: token %d decodes too long", i);
        v->pieces[i].off = (uint32_t)total;
        v->pieces[i].len = (uint32_t)n;
        v->piece_max = TT_MAX(v->piece_max, (int32_t)n);
        total += n;
        if (total >= UINT32_MAX) return tt_error_set(TT_EFORMAT, "tok: decoded vocabulary too large");
    }
    v->piece_arena = malloc(total ? total : 1);
    if (!v->piece_arena) return tt_error_set(TT_ENOMEM, "tok: out of memory");
    for (int32_t i = 0; i < v->n_tokens; i++)
        tok_piece_compute(v, i, v->piece_arena + v->pieces[i].off);
    return 0;
}

/* ---- load / free ---- */

int tok_load(struct tok_vocab **out, const struct gguf_file *f)
{
    TT_ASSERT(out && f);
    *out = NULL;
    struct tok_vocab *v = calloc(1, sizeof(*v));
    if (!v) return tt_error_set(TT_ENOMEM, "tok: out of memory");
    int rc = tok_load_model(v, f);
    if (!rc) rc = tok_load_tokens(v, f);
    if (!rc && v->model == TOK_MODEL_BPE) rc = tok_bpe_init(v);
    if (!rc) rc = tok_load_specials(v, f);
    if (!rc) rc = tok_special_init(v, f);
    if (!rc) rc = tok_build_pieces(v);
    if (rc) {
        tok_free(v);
        return rc;
    }
    if (v->model == TOK_MODEL_SPM) tok_find_byte_tokens(v);
    *out = v;
    return 0;
}

void tok_free(struct tok_vocab *v)
{
    if (!v) return;
    tok_bpe_free(v);
    tok_strmap_free(&v->token_map);
    tok_strmap_free(&v->merge_map);
    free(v->texts);
    free(v->scores);
    free(v->attrs);
    free(v->pieces);
    free(v->arena);
    free(v->piece_arena);
    free(v->merge_keys);
    free(v->special);
    free(v);
}

/* ---- queries ---- */

int32_t tok_n_vocab(const struct tok_vocab *v) { return v->n_tokens; }
enum tok_model tok_model_type(const struct tok_vocab *v) { return v->model; }
const char *tok_pre_name(const struct tok_vocab *v) { return v->pre ? v->pre->name : "default"; }
int32_t tok_bos(const struct tok_vocab *v) { return v->bos; }
int32_t tok_eos(const struct tok_vocab *v) { return v->eos; }
int32_t tok_eot(const struct tok_vocab *v) { return v->eot; }
int32_t tok_unk(const struct tok_vocab *v) { return v->unk; }
bool tok_add_bos(const struct tok_vocab *v) { return v->add_bos; }
bool tok_add_eos(const struct tok_vocab *v) { return v->add_eos; }

bool tok_is_eog(const struct tok_vocab *v, int32_t id)
{
    return tok_id_valid(v, id) && (v->attrs[id] & TOK_ATTR_EOG_);
}

const char *tok_token_text(const struct tok_vocab *v, int32_t id)
{
    return tok_id_valid(v, id) ? tok_text(v, id) : NULL;
}

uint32_t tok_token_attr(const struct tok_vocab *v, int32_t id)
{
    return tok_id_valid(v, id) ? v->attrs[id] & ~TOK_ATTR_EOG_ : 0;
}

int32_t tok_find(const struct tok_vocab *v, const char *text, size_t len)
{
    return tok_strmap_find3(&v->token_map, text, len, "", 0, "", 0);
}

/* ---- decoding ---- */

int tok_piece_max(const struct tok_vocab *v) { return v->piece_max; }

int tok_piece(const struct tok_vocab *v, int32_t id, char *buf, int cap)
{
    if (!tok_id_valid(v, id))
        return tt_error_set(TT_EINVAL, "tok: token id %d is outside the vocabulary (0..%d)", id,
                            v->n_tokens - 1);
    const struct tok_str *p = &v->pieces[id];
    if (cap < 0 || (uint32_t)cap < p->len)
        return tt_error_set(TT_ERANGE, "tok: piece of token %d needs %u bytes, have %d", id,
                            p->len, cap);
    if (p->len) memcpy(buf, v->piece_arena + p->off, p->len);
    return (int)p->len;
}

/* Length of the incomplete UTF-8 sequence at the end of s[0..n), 0 if s ends
 * on a character boundary or with bytes that can never become valid. */
static int tok_utf8_tail(const unsigned char *s, int n)
{
    for (int back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation: look further back */
        int need = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

int tok_stream_push(const struct tok_vocab *v, struct tok_stream *s, int32_t id, char *out,
                    int cap)
{
    if (!tok_id_valid(v, id))
        return tt_error_set(TT_EINVAL, "tok: token id %d is outside the vocabulary (0..%d)", id,
                            v->n_tokens - 1);
    TT_ASSERT(s->n_pending >= 0 && s->n_pending <= 3);
    const struct tok_str *p = &v->pieces[id];
    const unsigned char *piece = (const unsigned char *)v->piece_arena + p->off;
    int total = s->n_pending + (int)p->len;
    /* The new tail lies within the last 3 bytes of pending ‖ piece. */
    unsigned char last[8];
    int nl = 0;
    for (int i = TT_MAX(0, total - 3); i < total; i++)
        last[nl++] = i < s->n_pending ? (unsigned char)s->pending[i] : piece[i - s->n_pending];
    int tail = tok_utf8_tail(last, nl);
    int emit = total - tail;
    if (emit > cap) return tt_error_set(TT_ERANGE, "tok: stream output needs %d bytes", emit);
    int w = 0;
    for (int i = 0; i < emit; i++)
        out[w++] = i < s->n_pending ? s->pending[i] : (char)piece[i - s->n_pending];
    memcpy(s->pending, last + nl - tail, (size_t)tail);
    s->n_pending = tail;
    return w;
}

int tok_stream_flush(struct tok_stream *s, char *out, int cap)
{
    TT_ASSERT(s->n_pending >= 0 && s->n_pending <= 3);
    if (s->n_pending > cap) return tt_error_set(TT_ERANGE, "tok: stream flush needs %d bytes", s->n_pending);
    memcpy(out, s->pending, (size_t)s->n_pending);
    int n = s->n_pending;
    s->n_pending = 0;
    return n;
}
