/*
 * tok_util.c: the small tools the tokenizers stand on.
 *
 * - A string hash map (open addressing, linear probing, power-of-two size,
 *   load <= 2/3). Keys live in the caller's arena and are never copied; a slot
 *   keeps the upper half of the hash so most misses skip the memcmp. Lookups
 *   take the key as up to three pieces so BPE can ask for "left" ‖ " " ‖
 *   "right" without building the string.
 * - Growable id and byte buffers for the encoders (allocation happens per
 *   encode call, never per decoded token).
 * - UTF-8 exactly as llama.cpp reads it, and GPT-2's byte <-> code point map.
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- hashing ---- */

uint64_t tok_hash_init(void)
{
    return 0xcbf29ce484222325ull; /* FNV-1a offset basis */
}

uint64_t tok_hash_bytes(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t tok_hash_final(uint64_t h)
{
    /* FNV's low bits mix poorly for short keys; finish with a murmur step. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static bool tok_key_eq(const struct tok_strmap *m, uint32_t idx, const char *a, size_t alen,
                       const char *b, size_t blen, const char *c, size_t clen)
{
    const struct tok_str *k = &m->keys[idx];
    if (k->len != alen + blen + clen) return false;
    const char *p = m->arena + k->off;
    return memcmp(p, a, alen) == 0 && memcmp(p + alen, b, blen) == 0 &&
           memcmp(p + alen + blen, c, clen) == 0;
}

int tok_strmap_build(struct tok_strmap *m, const char *arena, const struct tok_str *keys,
                     int32_t n, bool keep_first, int32_t *dup)
{
    memset(m, 0, sizeof(*m));
    uint64_t cap = 16;
    while (cap < (uint64_t)n + (uint64_t)n / 2 + 1) cap <<= 1;
    m->slots = calloc(cap, sizeof(uint64_t));
    if (!m->slots) return tt_error_set(TT_ENOMEM, "tok: out of memory for a %llu-slot hash map",
                                       (unsigned long long)cap);
    m->mask = cap - 1;
    m->arena = arena;
    m->keys = keys;
    for (int32_t i = 0; i < n; i++) {
        const char *s = arena + keys[i].off;
        uint64_t h = tok_hash_final(tok_hash_bytes(tok_hash_init(), s, keys[i].len));
        uint64_t tag = h & 0xffffffff00000000ull;
        uint64_t pos = h & m->mask;
        for (;; pos = (pos + 1) & m->mask) {
            uint64_t e = m->slots[pos];
            if (e == 0) {
                m->slots[pos] = tag | (uint64_t)(i + 1);
                break;
            }
            uint32_t idx = (uint32_t)(e & 0xffffffffu) - 1;
            if ((e & 0xffffffff00000000ull) == tag &&
                tok_key_eq(m, idx, s, keys[i].len, "", 0, "", 0)) {
                if (keep_first) break;
                if (dup) *dup = i;
                tok_strmap_free(m);
                return TT_EFORMAT;
            }
        }
    }
    return 0;
}

void tok_strmap_free(struct tok_strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

int32_t tok_strmap_find3(const struct tok_strmap *m, const char *a, size_t alen, const char *b,
                         size_t blen, const char *c, size_t clen)
{
    if (!m->slots) return -1;
    uint64_t h = tok_hash_bytes(tok_hash_init(), a, alen);
    h = tok_hash_final(tok_hash_bytes(tok_hash_bytes(h, b, blen), c, clen));
    uint64_t tag = h & 0xffffffff00000000ull;
    for (uint64_t pos = h & m->mask;; pos = (pos + 1) & m->mask) {
        uint64_t e = m->slots[pos];
        if (e == 0) return -1;
        uint32_t idx = (uint32_t)(e & 0xffffffffu) - 1;
        if ((e & 0xffffffff00000000ull) == tag && tok_key_eq(m, idx, a, alen, b, blen, c, clen))
            return (int32_t)idx;
    }
}

/* ---- buffers ---- */

int tok_ids_push(struct tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        if (ids->cap >= (1 << 29)) return tt_error_set(TT_ERANGE, "tok: too many tokens");
        int cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *p = realloc(ids->v, (size_t)cap * sizeof(int32_t));
        if (!p) return tt_error_set(TT_ENOMEM, "tok: out of memory for %d token ids", cap);
        ids->v = p;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

int tok_buf_reserve(struct tok_buf *b, size_t n)
{
    if (b->n + n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return tt_error_set(TT_ENOMEM, "tok: out of memory for %zu bytes of text", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_buf_append(struct tok_buf *b, const void *p, size_t n)
{
    int rc = tok_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

void tok_buf_free(struct tok_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- UTF-8 ---- */

int tok_utf8_put(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decode one code point at s[*i] as llama.cpp's unicode_cpt_from_utf8: the
 * lead byte gives the length, continuation bytes must be 10xxxxxx, nothing
 * else is checked (overlong forms are accepted). Returns -1 when invalid,
 * in which case the caller skips one byte. */
static int32_t tok_utf8_decode(const unsigned char *s, size_t len, size_t *i)
{
    size_t o = *i;
    unsigned char c = s[o];
    if (!(c & 0x80)) {
        *i = o + 1;
        return c;
    }
    int n = !(c & 0x40) ? 0 : !(c & 0x20) ? 2 : !(c & 0x10) ? 3 : !(c & 0x08) ? 4 : 0;
    if (n == 0 || o + (size_t)n > len) return -1;
    uint32_t cp = c & (0x7f >> n);
    for (int k = 1; k < n; k++) {
        if ((s[o + k] & 0xc0) != 0x80) return -1;
        cp = (cp << 6) | (s[o + k] & 0x3f);
    }
    *i = o + (size_t)n;
    return (int32_t)cp;
}

int tok_utf8_sanitize(const char *text, size_t len, struct tok_buf *out)
{
    const unsigned char *s = (const unsigned char *)text;
    int rc = tok_buf_reserve(out, len * 3 + 4); /* each bad byte grows to 3 */
    if (rc) return rc;
    size_t i = 0;
    while (i < len) {
        int32_t cp = tok_utf8_decode(s, len, &i);
        if (cp < 0) {
            i++;
            cp = 0xfffd;
        } else if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
            cp = 0xfffd; /* llama.cpp keeps surrogates / throws above U+10FFFF */
        }
        out->n += (size_t)tok_utf8_put((uint32_t)cp, out->p + out->n);
    }
    return 0;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves; the
 * other 68 bytes (0x00-0x20, 0x7F-0xA0, 0xAD), in order, to U+0100.. U+0143. */
uint32_t tok_byte_to_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae) return b;
    if (b <= 0x20) return 256u + b;
    if (b <= 0xa0) return 256u + 33 + (b - 0x7fu);
    return 256u + 67; /* 0xAD */
}

int tok_cp_to_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff))
        return (int)cp;
    if (cp >= 256 && cp <= 256 + 32) return (int)(cp - 256);
    if (cp >= 256 + 33 && cp <= 256 + 66) return (int)(0x7f + (cp - 256 - 33));
    if (cp == 256 + 67) return 0xad;
    return -1;
}
