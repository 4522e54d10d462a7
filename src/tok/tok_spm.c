/*
 * tok_spm.c: the SentencePiece-style tokenizer ("llama" vocabularies), the
 * algorithm of llama.cpp's llm_tokenizer_spm so ids match it exactly.
 *
 *   1. Escape: optional dummy prefix, then every ' ' becomes U+2581 ("▁").
 *   2. Split into symbols, one per UTF-8 character (length from the lead
 *      byte only; a truncated sequence at the end is one short symbol).
 *   3. Every adjacent pair whose concatenation is a token goes on a max-heap
 *      keyed by that token's score; ties go to the leftmost pair.
 *   4. Pop the best pair; skip it if either side has changed since it was
 *      pushed (a side merged away, or sizes no longer add up); else merge the
 *      right symbol into the left and push the new pairs on both sides.
 *   5. Emit each remaining symbol's token; a symbol with no token (always a
 *      single character, since merges only form tokens) falls back to its
 *      bytes' <0xXX> tokens, or to one <unk> where the vocab lacks one of
 *      those byte tokens (llama.cpp aborts there).
 *
 * Invariant: symbols are contiguous slices of the escaped text in order, so a
 * pair's text is the left symbol's slice extended by the right one's length.
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

struct spm_sym {
    int32_t prev, next; /* -1 at the ends */
    uint32_t off, n;    /* slice of the escaped text; n = 0 once merged away */
};

struct spm_bigram {
    int32_t left, right;
    float score;
    uint32_t size;
};

struct spm_state {
    const struct tok_vocab *v;
    const char *text;
    struct spm_sym *sym;
    struct spm_bigram *heap;
    int32_t n_heap, cap_heap;
};

/* Heap order: higher score first, then smaller left index. */
static bool spm_before(const struct spm_bigram *a, const struct spm_bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int spm_push(struct spm_state *st, struct spm_bigram b)
{
    if (st->n_heap == st->cap_heap) {
        int32_t cap = st->cap_heap ? st->cap_heap * 2 : 64;
        struct spm_bigram *h = realloc(st->heap, (size_t)cap * sizeof(*h));
        if (!h) return tt_error_set(TT_ENOMEM, "tok: out of memory in the SPM merge queue");
        st->heap = h;
        st->cap_heap = cap;
    }
    int32_t i = st->n_heap++;
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (!spm_before(&b, &st->heap[parent])) break;
        st->heap[i] = st->heap[parent];
        i = parent;
    }
    st->heap[i] = b;
    return 0;
}

static struct spm_bigram spm_pop(struct spm_state *st)
{
    struct spm_bigram top = st->heap[0], last = st->heap[--st->n_heap];
    int32_t i = 0, n = st->n_heap;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && spm_before(&st->heap[c + 1], &st->heap[c])) c++;
        if (!spm_before(&st->heap[c], &last)) break;
        st->heap[i] = st->heap[c];
        i = c;
    }
    if (n > 0) st->heap[i] = last;
    return top;
}

static int spm_try_add(struct spm_state *st, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return 0;
    uint32_t size = st->sym[left].n + st->sym[right].n;
    int32_t id = tok_find(st->v, st->text + st->sym[left].off, size);
    if (id < 0) return 0;
    struct spm_bigram b = { left, right, st->v->scores[id], size };
    return spm_push(st, b);
}

/* Step 5 for one symbol. */
static int spm_emit(struct spm_state *st, const struct spm_sym *s, struct tok_ids *out)
{
    const struct tok_vocab *v = st->v;
    const char *p = st->text + s->off;
    int32_t id = tok_find(v, p, s->n);
    if (id >= 0) return tok_ids_push(out, id);
    bool bytes = true; /* byte fallback needs a token for every byte */
    for (uint32_t i = 0; i < s->n; i++) bytes = bytes && v->byte_token[(unsigned char)p[i]] >= 0;
    if (!bytes) {
        if (v->unk < 0)
            return tt_error_set(TT_EUNSUPPORTED, "tok: '%.*s' has no token, no byte tokens and "
                                "the vocabulary has no <unk>", (int)s->n, p);
        return tok_ids_push(out, v->unk);
    }
    for (uint32_t i = 0; i < s->n; i++) {
        int rc = tok_ids_push(out, v->byte_token[(unsigned char)p[i]]);
        if (rc) return rc;
    }
    return 0;
}

/* Steps 1-2: escaped text into *buf, symbols into st->sym. */
static int spm_prepare(struct spm_state *st, struct tok_buf *buf, const char *text, size_t len,
                       bool add_prefix, int32_t *n_sym)
{
    size_t n_spaces = (size_t)add_prefix;
    for (size_t i = 0; i < len; i++) n_spaces += text[i] == ' ';
    int rc = tok_buf_reserve(buf, len + 2 * n_spaces + 1);
    if (rc) return rc;
    if (add_prefix) tok_buf_append(buf, "\xe2\x96\x81", 3);
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') tok_buf_append(buf, "\xe2\x96\x81", 3);
        else buf->p[buf->n++] = text[i];
    }
    st->text = buf->p;
    st->sym = malloc((buf->n ? buf->n : 1) * sizeof(*st->sym));
    if (!st->sym) return tt_error_set(TT_ENOMEM, "tok: out of memory for %zu symbols", buf->n);
    int32_t n = 0;
    for (size_t off = 0; off < buf->n; n++) {
        size_t k = tok_utf8_len((unsigned char)buf->p[off]);
        if (k > buf->n - off) k = buf->n - off;
        st->sym[n] = (struct spm_sym){ n - 1, off + k == buf->n ? -1 : n + 1, (uint32_t)off,
                                       (uint32_t)k };
        off += k;
    }
    *n_sym = n;
    return 0;
}

int tok_spm_encode(const struct tok_vocab *v, const char *text, size_t len, bool add_prefix,
                   struct tok_ids *out)
{
    struct spm_state st = { .v = v };
    struct tok_buf buf = { 0 };
    int32_t n = 0;
    int rc = spm_prepare(&st, &buf, text, len, add_prefix, &n);
    for (int32_t i = 1; i < n && !rc; i++) rc = spm_try_add(&st, i - 1, i);
    while (!rc && st.n_heap > 0) {
        struct spm_bigram b = spm_pop(&st);
        struct spm_sym *l = &st.sym[b.left], *r = &st.sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) st.sym[r->next].prev = b.left;
        rc = spm_try_add(&st, l->prev, b.left);
        if (!rc) rc = spm_try_add(&st, b.left, l->next);
    }
    for (int32_t i = n > 0 ? 0 : -1; i != -1 && !rc; i = st.sym[i].next)
        rc = spm_emit(&st, &st.sym[i], out);
    free(st.sym);
    free(st.heap);
    tok_buf_free(&buf);
    return rc;
}
