/*
 * tok: tokenizers and chat templates.
 *
 * A struct tok_vocab is built once from a GGUF file's tokenizer.ggml.* keys
 * and is then read-only: every function below may be called on one vocab
 * from many threads at once. It copies what it needs, so it does not depend
 * on the gguf_file after tok_load() returns.
 *
 * Two vocabulary types are supported, following llama.cpp's behaviour so that
 * token ids match its reference outputs exactly:
 *
 *   tokenizer.ggml.model = "llama"  SentencePiece-style BPE with scores:
 *       a dummy-prefix space, spaces as U+2581, pieces merged by highest score,
 *       byte fallback to <0xXX> tokens.
 *   tokenizer.ggml.model = "gpt2"   byte-level BPE: the text is split by the
 *       pre-tokenizer regexes named by tokenizer.ggml.pre (run on PCRE2), each
 *       piece mapped byte-by-byte to printable code points, then merged by the
 *       ranks of tokenizer.ggml.merges.
 *
 * Special tokens: CONTROL and UNKNOWN tokens are recognised in the input only
 * with parse_special; USER_DEFINED tokens are always split out first (as
 * Hugging Face and llama.cpp do).
 *
 * Errors are negative TT_E* codes with a detail in tt_error_detail().
 */
#ifndef TT_TOK_H
#define TT_TOK_H

#include "../base/base.h"
#include "../gguf/gguf.h"

#define TOK_VOCAB_MAX (1 << 24)      /* tokens in one vocabulary */
#define TOK_TEXT_MAX 65536           /* bytes in one token's text */
#define TOK_MERGES_MAX (1 << 24)     /* merge rules */
#define TOK_INPUT_MAX (256u << 20)   /* bytes of text given to tok_encode */
#define TOK_CHAT_MSGS_MAX 100000     /* messages given to tok_chat_render */

/* Token types as stored in tokenizer.ggml.token_type. */
enum tok_type {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
    TOK_TYPE_COUNT
};

/* Token attributes (a bit set derived from the type plus llama.cpp's
 * by-name fix-ups, e.g. an "<|im_end|>" typed NORMAL gains CONTROL). */
enum tok_attr {
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
    TOK_ATTR_LSTRIP = 1 << 6, /* eat whitespace before the token when matched in text */
    TOK_ATTR_RSTRIP = 1 << 7, /* eat whitespace after it */
};

enum tok_model { TOK_MODEL_SPM, TOK_MODEL_BPE, TOK_MODEL_COUNT };

struct tok_vocab; /* opaque */

/* ---- loading ---- */

/* Build a vocabulary from f's tokenizer.ggml.* metadata. On success *out
 * owns a new vocab (free with tok_free). Errors: TT_ENOTFOUND (no token
 * list), TT_EFORMAT (wrong key types, array lengths that disagree, ids out of
 * range, duplicate tokens), TT_EUNSUPPORTED (unknown tokenizer.ggml.model or
 * tokenizer.ggml.pre; the detail lists the known names), TT_ENOMEM.
 * A missing tokenizer.ggml.pre on a "gpt2" vocab falls back to llama.cpp's
 * "default" pre-tokenizer with a warning, as llama.cpp does. */
int tok_load(struct tok_vocab **out, const struct gguf_file *f);
void tok_free(struct tok_vocab *v); /* NULL is fine */

/* ---- properties ---- */
int32_t tok_n_vocab(const struct tok_vocab *v);
enum tok_model tok_model_type(const struct tok_vocab *v);
const char *tok_pre_name(const struct tok_vocab *v); /* "default" for SPM */
int32_t tok_bos(const struct tok_vocab *v); /* -1 if none */
int32_t tok_eos(const struct tok_vocab *v); /* -1 if none */
int32_t tok_eot(const struct tok_vocab *v); /* -1 if none */
int32_t tok_unk(const struct tok_vocab *v); /* -1 if none */
/* End of generation: eos, eot, eom, <|im_end|>, <|eot_id|>, <|end|>, ... */
bool tok_is_eog(const struct tok_vocab *v, int32_t id);
/* Whether encoding with add_special prepends BOS / appends EOS: from
 * tokenizer.ggml.add_bos_token / add_eos_token, else the type's default
 * (SPM: BOS yes; BPE: only for llama3-style pre-tokenizers). */
bool tok_add_bos(const struct tok_vocab *v);
bool tok_add_eos(const struct tok_vocab *v);
/* The token's text as stored in the vocab (NUL-terminated), NULL if the id is
 * out of range. Valid until tok_free. */
const char *tok_token_text(const struct tok_vocab *v, int32_t id);
uint32_t tok_token_attr(const struct tok_vocab *v, int32_t id); /* 0 if out of range */
/* The id whose text is exactly `text`, or -1. */
int32_t tok_find(const struct tok_vocab *v, const char *text, size_t len);

/* ---- encoding ----
 * Tokenize len bytes of text (any bytes; invalid UTF-8 is handled as
 * llama.cpp does). add_special: BOS/EOS as tok_add_bos/tok_add_eos say.
 * parse_special: CONTROL/UNKNOWN token texts in the input become those tokens.
 * Writes up to max ids to out and returns the count; TT_ERANGE (nothing
 * useful in out) if more than max are needed. With out == NULL, returns the
 * count only (max ignored). Other errors: TT_EINVAL, TT_ENOMEM. */
int tok_encode(const struct tok_vocab *v, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t *out, int max);

/* ---- decoding ----
 * The bytes of one token, as llama_token_to_piece(lstrip=0, special=false):
 * U+2581 -> space (SPM), <0xXX> -> that byte, byte-level BPE code points ->
 * their bytes, CONTROL/UNKNOWN/UNUSED tokens -> "". No NUL is added.
 * Returns the length; TT_EINVAL for an id out of range; TT_ERANGE if cap is
 * too small. Never allocates. */
int tok_piece(const struct tok_vocab *v, int32_t id, char *buf, int cap);
/* The longest piece in the vocabulary, in bytes (to size buffers). */
int tok_piece_max(const struct tok_vocab *v);

/* Streaming detokenizer: output never ends inside a UTF-8 character; the
 * incomplete tail of a piece waits in `pending` for the next piece. Bytes
 * that can never form a valid character are passed through unchanged, so the
 * concatenated output equals the concatenated pieces. Zero-initialise
 * (struct tok_stream s = {0}) before the first push. */
struct tok_stream {
    char pending[8];
    int n_pending;
};
/* Append token id's piece; writes the complete characters to out and returns
 * the number of bytes written. TT_ERANGE (stream unchanged) if cap is too
 * small: cap >= 3 + tok_piece_max() always suffices. TT_EINVAL for a bad id. */
int tok_stream_push(const struct tok_vocab *v, struct tok_stream *s, int32_t id, char *out,
                    int cap);
/* Emit whatever is pending (an incomplete character at end of stream) and
 * reset. Returns bytes written or TT_ERANGE. */
int tok_stream_flush(struct tok_stream *s, char *out, int cap);

/* ---- chat templates ----
 * Built-in renderers for the common template families (no Jinja engine).
 * The rendered text never contains the BOS token: tokenize it with
 * add_special = true and parse_special = true. */
struct tok_chat_msg {
    const char *role; /* "system", "user", "assistant" (others passed through where the format allows) */
    const char *content;
};

/* Name the family of f's tokenizer.chat_template. 0 and *name set (a static
 * string) on success; TT_ENOTFOUND if the file has no template;
 * TT_EUNSUPPORTED if it matches no known family. */
int tok_chat_template_detect(const struct gguf_file *f, const char **name);
/* Same, from the template text itself. */
int tok_chat_template_detect_text(const char *tmpl, const char **name);
/* Render msgs[0..n) with the named template into out (NUL-terminated).
 * Returns the length without the NUL. With out == NULL and cap == 0, returns
 * the length needed. TT_ERANGE if it does not fit, TT_EINVAL for an unknown
 * template name (the detail lists the known ones) or bad messages. */
int tok_chat_render(const char *template_name, const struct tok_chat_msg *msgs, int n,
                    bool add_generation_prompt, char *out, size_t cap);
/* Allocating variant: *out is malloc'ed, caller frees with free(). */
int tok_chat_render_alloc(const char *template_name, const struct tok_chat_msg *msgs, int n,
                          bool add_generation_prompt, char **out);
/* "llama3, chatml, ..." for error messages. */
const char *tok_chat_template_names(void);

#endif
