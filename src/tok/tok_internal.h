/*
 * tok_internal.h: what the tok_*.c files share; not part of the API.
 *
 * Layout of a vocabulary (all owned by struct tok_vocab, freed by tok_free):
 *   arena    every token text and merge rule, each NUL-terminated, so the
 *            vocab never points into the gguf_file it was loaded from;
 *   texts[i] token i's text in the arena; pieces[i] its decoded bytes in
 *            `piece_arena` (what tok_piece returns), computed once at load so
 *            decoding never allocates;
 *   tokens   text -> id (open-addressing hash, 64-bit FNV-1a);
 *   merges   "left right" -> rank, the merge rule's line as stored in GGUF,
 *            first occurrence wins as in llama.cpp.
 */
#ifndef TT_TOK_INTERNAL_H
#define TT_TOK_INTERNAL_H

#include "tok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define TOK_PRE_REGEX_MAX 8 /* regexes in one pre-tokenizer */
#define TOK_ATTR_EOG_ (1u << 16) /* internal: token ends generation */

/* A byte range in an arena. */
struct tok_str {
    uint32_t off;
    uint32_t len;
};

/* Hash map from byte strings to the index of a key in `keys`. */
struct tok_strmap {
    uint64_t *slots; /* (hash >> 32) << 32 | (index + 1); 0 = empty */
    uint64_t mask;
    const char *arena;
    const struct tok_str *keys;
};

/* A growable array of token ids (the encoder's output). */
struct tok_ids {
    int32_t *v;
    int n;
    int cap;
};

/* A growable byte buffer (scratch text for the encoders). */
struct tok_buf {
    char *p;
    size_t n;
    size_t cap;
};

/* One pre-tokenizer: a name as found in tokenizer.ggml.pre, the regexes that
 * split the text one after the other, and llama.cpp's per-name defaults. */
struct tok_pre_def {
    const char *name;
    const char *const *regexes; /* NULL-terminated */
    bool ignore_merges;         /* a piece that is a whole token skips merging */
    bool add_bos;               /* default for add_bos_token */
};

struct tok_vocab {
    enum tok_model model;
    const struct tok_pre_def *pre; /* BPE only */
    int32_t n_tokens;
    struct tok_str *texts;  /* [n_tokens] */
    float *scores;          /* [n_tokens] */
    uint32_t *attrs;        /* [n_tokens] TOK_ATTR_* | TOK_ATTR_EOG_ */
    struct tok_str *pieces; /* [n_tokens] into piece_arena */
    char *arena;
    size_t arena_len;
    char *piece_arena;
    int32_t piece_max; /* longest piece, bytes */
    struct tok_strmap token_map;
    struct tok_str *merge_keys; /* [n_merges] */
    int32_t n_merges;
    struct tok_strmap merge_map;
    /* Special-token texts to split out before tokenizing, longest first. */
    int32_t *special;
    int32_t n_special;
    /* Compiled pre-tokenizer regexes (BPE). */
    pcre2_code *re[TOK_PRE_REGEX_MAX];
    int n_re;
    /* SPM byte fallback: token id of each byte, -1 if none. */
    int32_t byte_token[256];
    int32_t bos, eos, eot, eom, unk, sep, pad;
    int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
    bool add_bos, add_eos, add_space_prefix;
};

/* ---- tok_util.c ---- */
uint64_t tok_hash_init(void);
uint64_t tok_hash_bytes(uint64_t h, const char *s, size_t len);
/* Build a map over keys[0..n). keep_first: a duplicate key keeps the first
 * index and is skipped; otherwise a duplicate is an error and *dup gets the
 * later index. Returns 0, TT_ENOMEM or TT_EFORMAT (duplicate). */
int tok_strmap_build(struct tok_strmap *m, const char *arena, const struct tok_str *keys,
                     int32_t n, bool keep_first, int32_t *dup);
void tok_strmap_free(struct tok_strmap *m);
/* Index of the key equal to a ‖ b ‖ c (b, c may be empty), or -1. */
int32_t tok_strmap_find3(const struct tok_strmap *m, const char *a, size_t alen, const char *b,
                         size_t blen, const char *c, size_t clen);

int tok_ids_push(struct tok_ids *ids, int32_t id);
int tok_buf_reserve(struct tok_buf *b, size_t n);
int tok_buf_append(struct tok_buf *b, const void *p, size_t n);
void tok_buf_free(struct tok_buf *b);

/* Byte length of the UTF-8 sequence led by byte c, from its top 4 bits only
 * (1 for continuation bytes), as llama.cpp's unicode_len_utf8. */
static inline size_t tok_utf8_len(unsigned char c)
{
    static const unsigned char lookup[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
    return lookup[c >> 4];
}
/* Append the UTF-8 encoding of code point cp (<= 0x10FFFF) to out; returns bytes. */
int tok_utf8_put(uint32_t cp, char *out);
/* Rewrite text as valid UTF-8 the way llama.cpp decodes it: a byte that does
 * not start a complete sequence becomes U+FFFD (one per byte); surrogates and
 * code points above U+10FFFF become U+FFFD too. Appends to out. */
int tok_utf8_sanitize(const char *text, size_t len, struct tok_buf *out);
/* GPT-2 byte-level mapping: byte -> printable code point, and back (-1 if
 * the code point is not in the mapping's image). */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);

/* ---- tok_spm.c ---- */
/* Tokenize one text fragment with the SentencePiece algorithm; add_prefix
 * prepends the dummy space. Appends ids to out. */
int tok_spm_encode(const struct tok_vocab *v, const char *text, size_t len, bool add_prefix,
                   struct tok_ids *out);

/* ---- tok_bpe.c ---- */
/* The pre-tokenizer named `name` (aliases included), NULL if unknown. */
const struct tok_pre_def *tok_pre_find(const char *name);
/* "llama3, qwen2, ..." for error messages. */
const char *tok_pre_names(void);
/* Compile v->pre's regexes into v->re. */
int tok_bpe_init(struct tok_vocab *v);
void tok_bpe_free(struct tok_vocab *v);
/* Tokenize one text fragment with byte-level BPE; appends ids to out. */
int tok_bpe_encode(const struct tok_vocab *v, const char *text, size_t len, struct tok_ids *out);

/* ---- tok_special.c ---- */
/* After the token table is read: llama.cpp's by-name fix-ups (EOT/EOM/FIM
 * detection, end-of-generation set, gpt-oss and Phi-3 attributes) and the
 * special-token list for splitting. */
int tok_special_init(struct tok_vocab *v, const struct gguf_file *f);

/* ---- tok.c ---- */
static inline bool tok_id_valid(const struct tok_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n_tokens;
}
static inline const char *tok_text(const struct tok_vocab *v, int32_t id)
{
    return v->arena + v->texts[id].off;
}

#endif
