/*
 * tok_encode.c: text -> token ids, the part common to both vocab types.
 *
 *   1. Partition: the input becomes a list of fragments, each either raw
 *      text or one special token. Special tokens are taken one at a time,
 *      longest text first; each splits every raw fragment at all of its
 *      (non-overlapping, left to right) occurrences. CONTROL and UNKNOWN
 *      tokens take part only with parse_special; USER_DEFINED ones always.
 *      A token with LSTRIP/RSTRIP also eats the ASCII whitespace before/after
 *      it. This is llama.cpp's tokenizer_st_partition, in the same order, so
 *      overlapping candidates resolve the same way.
 *   2. Each raw fragment is tokenized on its own (tok_spm.c / tok_bpe.c).
 *      SPM adds its dummy-prefix space to a fragment that starts the text or
 *      follows a special token.
 *   3. BOS/EOS around it all when add_special and the vocab asks for them.
 *
 * Allocation happens per call (fragment list, id buffer, scratch), never
 * per decoded token.
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

struct tok_frag {
    size_t start, len; /* raw text, when token < 0 */
    int32_t token;
};

struct tok_frags {
    struct tok_frag *v;
    int n, cap;
};

static int frag_push(struct tok_frags *f, size_t start, size_t len, int32_t token)
{
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 16;
        struct tok_frag *p = realloc(f->v, (size_t)cap * sizeof(*p));
        if (!p) return tt_error_set(TT_ENOMEM, "tok: out of memory splitting special tokens");
        f->v = p;
        f->cap = cap;
    }
    f->v[f->n++] = (struct tok_frag){ start, len, token };
    return 0;
}

static bool tok_isspace(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Split one raw fragment at every occurrence of special token id. */
static int frag_split(const struct tok_vocab *v, const char *text, struct tok_frag fr, int32_t id,
                      struct tok_frags *out)
{
    const char *t = tok_text(v, id);
    size_t tn = v->texts[id].len, base = fr.start, rem = fr.len;
    uint32_t attr = v->attrs[id];
    int rc = 0;
    while (rem > 0 && !rc) {
        const char *hit = memmem(text + base, rem, t, tn);
        if (!hit) break;
        size_t m = (size_t)(hit - text), left = m - base;
        if (attr & TOK_ATTR_LSTRIP)
            while (left > 0 && tok_isspace(text[base + left - 1])) left--;
        if (left > 0) rc = frag_push(out, base, left, -1);
        if (!rc) rc = frag_push(out, 0, 0, id);
        size_t right = m + tn, right_len = base + rem - right;
        if (attr & TOK_ATTR_RSTRIP)
            while (right_len > 0 && tok_isspace(text[right])) right++, right_len--;
        base = right;
        rem = right_len;
    }
    if (!rc && rem > 0) rc = frag_push(out, base, rem, -1);
    return rc;
}

/* Step 1. On success *frags holds the fragments in text order. */
static int tok_partition(const struct tok_vocab *v, const char *text, size_t len,
                         bool parse_special, struct tok_frags *frags)
{
    struct tok_frags other = { 0 };
    int rc = len ? frag_push(frags, 0, len, -1) : 0;
    for (int32_t k = 0; k < v->n_special && !rc; k++) {
        int32_t id = v->special[k];
        if (!parse_special && (v->attrs[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) continue;
        const char *t = tok_text(v, id);
        bool found = false; /* most tokens occur nowhere: skip the rebuild */
        for (int i = 0; i < frags->n && !found; i++)
            found = frags->v[i].token < 0 &&
                    memmem(text + frags->v[i].start, frags->v[i].len, t, v->texts[id].len);
        if (!found) continue;
        other.n = 0;
        for (int i = 0; i < frags->n && !rc; i++) {
            struct tok_frag fr = frags->v[i];
            rc = fr.token >= 0 ? frag_push(&other, 0, 0, fr.token)
                               : frag_split(v, text, fr, id, &other);
        }
        struct tok_frags tmp = *frags;
        *frags = other;
        other = tmp;
    }
    free(other.v);
    return rc;
}

/* Steps 2-3. */
static int tok_encode_frags(const struct tok_vocab *v, const char *text,
                            const struct tok_frags *frags, bool add_special, struct tok_ids *ids)
{
    int rc = 0;
    if (add_special && v->add_bos) rc = tok_ids_push(ids, v->bos);
    bool prev_special = true; /* SPM: the first fragment gets the dummy prefix */
    for (int i = 0; i < frags->n && !rc; i++) {
        const struct tok_frag *fr = &frags->v[i];
        if (fr->token >= 0) {
            rc = tok_ids_push(ids, fr->token);
            prev_special = true;
        } else if (v->model == TOK_MODEL_SPM) {
            rc = tok_spm_encode(v, text + fr->start, fr->len, v->add_space_prefix && prev_special,
                                ids);
            prev_special = false;
        } else {
            rc = tok_bpe_encode(v, text + fr->start, fr->len, ids);
        }
    }
    if (!rc && add_special && v->add_eos) rc = tok_ids_push(ids, v->eos);
    return rc;
}

int tok_encode(const struct tok_vocab *v, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t *out, int max)
{
    TT_ASSERT(v);
    if (!text && len) return tt_error_set(TT_EINVAL, "tok: NULL text of length %zu", len);
    if (len > TOK_INPUT_MAX)
        return tt_error_set(TT_ERANGE, "tok: input of %zu bytes exceeds the %u-byte limit", len,
                            TOK_INPUT_MAX);
    if (out && max < 0) return tt_error_set(TT_EINVAL, "tok: negative output capacity %d", max);
    struct tok_frags frags = { 0 };
    struct tok_ids ids = { 0 };
    int rc = tok_partition(v, text, len, parse_special, &frags);
    if (!rc) rc = tok_encode_frags(v, text, &frags, add_special, &ids);
    if (!rc) {
        if (out && ids.n > max) {
            rc = tt_error_set(TT_ERANGE, "tok: text needs %d tokens, room for %d", ids.n, max);
        } else {
            if (out && ids.n) memcpy(out, ids.v, (size_t)ids.n * sizeof(int32_t));
            rc = ids.n;
        }
    }
    free(frags.v);
    free(ids.v);
    return rc;
}
