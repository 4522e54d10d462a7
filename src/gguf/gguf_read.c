/*
 * gguf_read.c: mapping, validating and querying GGUF files.
 *
 * A GGUF file comes from anywhere, so nothing in it is trusted: every count,
 * length and dimension is checked against a GGUF_*_MAX limit and against the
 * bytes left in the file before it is used to read or allocate, and every
 * multiplication of untrusted numbers is overflow-checked.
 *
 * Parsing runs twice over the header (key/values and tensor infos) with the
 * same code. The first pass, `count`, checks the structure and counts what
 * the parsed form needs: value slots for the elements of string and nested
 * arrays, and string bytes. Then ONE pool allocation holds all of it (kv and
 * tensor tables, value slots, both hash indexes, every string), so a 150k-token
 * vocabulary costs one allocation, not 150k. The second pass, `fill`, copies
 * into the pool and builds the indexes, rejecting duplicate keys and names.
 * Last come the checks that need the whole header: the alignment, then where
 * each tensor's data lies.
 *
 * Invariants of a successfully parsed struct gguf_file:
 *   1. every pointer in it points into f->map or into the pool;
 *   2. every string is NUL-terminated; keys and tensor names are non-empty,
 *      valid UTF-8 without NUL bytes, and unique;
 *   3. numeric array elements are left in the map (raw), bools are 0 or 1;
 *   4. alignment is a power of two <= GGUF_ALIGNMENT_MAX, data_offset is the
 *      end of the tensor infos rounded up to it, and data_offset <= size_bytes;
 *   5. every tensor has a supported type, 1..GGUF_DIMS_MAX dims each >= 1,
 *      ne[0] a multiple of the block size, an aligned offset, and data lying
 *      inside the file without overlapping any other tensor's.
 * On any failure f is left zeroed, so gguf_close() is always safe.
 */
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../quant/quant.h"
#include "gguf.h"
#include "gguf_internal.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "GGUF parsing assumes a little-endian host");

/* Smallest encodings, used to reject counts the remaining bytes cannot hold. */
#define MIN_KV_BYTES 14     /* key length 8 + 1 byte key + type 4 + 1 byte value */
#define MIN_TENSOR_BYTES 33 /* name length 8 + 1 byte name + n_dims 4 + ne 8 + type 4 + offset 8   \
                             */

/* Start of the pool: the hash indexes. Tables and strings follow it. */
struct gguf_pool {
    uint32_t *kv_slots; /* key -> kv index + 1 */
    uint64_t kv_cap;
    uint32_t *tensor_slots; /* name -> tensor index + 1 */
    uint64_t tensor_cap;
};

struct parser {
    const uint8_t *buf;
    uint64_t size;
    uint64_t pos;
    bool fill;                 /* second pass: write into the pool */
    uint64_t n_values;         /* value slots needed (count) or used (fill) */
    uint64_t n_str_bytes;      /* string bytes, NULs included, likewise */
    struct gguf_value *values; /* fill: the pool's value slots */
    char *strs;                /* fill: the pool's string bytes */
    char ctx[192];             /* what is being parsed, prefixed to errors */
};

static int perr(struct parser *p, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int perr(struct parser *p, int err, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return tt_error_set(err, "%s: %s", p->ctx, msg);
}

/* ---- primitive reads: each checks the bytes left first ---- */

static int need(struct parser *p, uint64_t n, const char *what)
{
    if (n <= p->size - p->pos) return 0;
    return perr(p, TT_EFORMAT,
                "%s at offset %" PRIu64 " needs %" PRIu64 " bytes but the file ends at %" PRIu64
                " (truncated file?)",
                what, p->pos, n, p->size);
}

static int rd_u32(struct parser *p, const char *what, uint32_t *v)
{
    int rc = need(p, 4, what);
    if (rc) return rc;
    memcpy(v, p->buf + p->pos, 4);
    p->pos += 4;
    return 0;
}

static int rd_u64(struct parser *p, const char *what, uint64_t *v)
{
    int rc = need(p, 8, what);
    if (rc) return rc;
    memcpy(v, p->buf + p->pos, 8);
    p->pos += 8;
    return 0;
}

/* A string of at most max_len bytes. In the fill pass *s is the pool copy
 * (NUL-terminated); in the count pass it points into the map, unterminated. */
static int rd_string(struct parser *p, const char *what, uint64_t max_len, const char **s,
                     uint64_t *len)
{
    uint64_t at = p->pos;
    int rc = rd_u64(p, what, len);
    if (rc) return rc;
    if (*len > max_len)
        return perr(p, TT_EFORMAT,
                    "%s at offset %" PRIu64 " has length %" PRIu64 ", over the limit of %" PRIu64
                    " bytes",
                    what, at, *len, max_len);
    if ((rc = need(p, *len, what))) return rc;
    if (p->fill) {
        char *d = p->strs + p->n_str_bytes;
        memcpy(d, p->buf + p->pos, *len);
        d[*len] = 0;
        *s = d;
    } else {
        *s = (const char *)(p->buf + p->pos);
    }
    p->n_str_bytes += *len + 1;
    p->pos += *len;
    return 0;
}

static int check_name(struct parser *p, const char *what, const char *s, uint64_t len,
                      uint64_t max_len, uint64_t at)
{
    uint64_t bad = 0;
    const char *why = gguf_name_problem_(s, len, max_len, &bad);
    if (!why) return 0;
    if (bad == UINT64_MAX) return perr(p, TT_EFORMAT, "%s at offset %" PRIu64 " %s", what, at, why);
    return perr(p, TT_EFORMAT, "%s at offset %" PRIu64 " %s (byte at offset %" PRIu64 ")", what, at,
                why, at + 8 + bad);
}

/* ---- values ---- */

static bool vtype_is_int(enum gguf_vtype t)
{
    return t <= GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64;
}

static bool vtype_is_signed(enum gguf_vtype t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

/* Decode one little-endian scalar of type t from b (any alignment). */
static void load_scalar(const uint8_t *b, enum gguf_vtype t, struct gguf_value *v)
{
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f32;
    v->type = t;
    switch (t) {
    case GGUF_TYPE_UINT8:
        memcpy(&u8, b, 1);
        v->u = u8;
        break;
    case GGUF_TYPE_INT8:
        memcpy(&u8, b, 1);
        v->i = (int8_t)u8;
        break;
    case GGUF_TYPE_UINT16:
        memcpy(&u16, b, 2);
        v->u = u16;
        break;
    case GGUF_TYPE_INT16:
        memcpy(&u16, b, 2);
        v->i = (int16_t)u16;
        break;
    case GGUF_TYPE_UINT32:
        memcpy(&u32, b, 4);
        v->u = u32;
        break;
    case GGUF_TYPE_INT32:
        memcpy(&u32, b, 4);
        v->i = (int32_t)u32;
        break;
    case GGUF_TYPE_FLOAT32:
        memcpy(&f32, b, 4);
        v->f = f32;
        break;
    case GGUF_TYPE_BOOL:
        v->b = b[0] != 0;
        break;
    case GGUF_TYPE_UINT64:
        memcpy(&u64, b, 8);
        v->u = u64;
        break;
    case GGUF_TYPE_INT64:
        memcpy(&u64, b, 8);
        v->i = (int64_t)u64;
        break;
    case GGUF_TYPE_FLOAT64:
        memcpy(&v->f, b, 8);
        break;
    default:
        TT_ASSERT(!"load_scalar: not a scalar type");
    }
}

static int rd_vtype(struct parser *p, const char *what, enum gguf_vtype *t)
{
    uint64_t at = p->pos;
    uint32_t x = 0;
    int rc = rd_u32(p, what, &x);
    if (rc) return rc;
    if (x >= GGUF_TYPE_COUNT)
        return perr(p, TT_EFORMAT,
                    "%s %" PRIu32 " at offset %" PRIu64 " is unknown (GGUF defines 0..%d)", what, x,
                    at, GGUF_TYPE_COUNT - 1);
    *t = (enum gguf_vtype)x;
    return 0;
}

static int rd_scalar(struct parser *p, enum gguf_vtype t, struct gguf_value *v)
{
    int rc = need(p, gguf_vtype_size(t), gguf_vtype_name(t));
    if (rc) return rc;
    if (t == GGUF_TYPE_BOOL && p->buf[p->pos] > 1)
        return perr(p, TT_EFORMAT, "bool at offset %" PRIu64 " is %u, not 0 or 1", p->pos,
                    p->buf[p->pos]);
    load_scalar(p->buf + p->pos, t, v);
    p->pos += gguf_vtype_size(t);
    return 0;
}

static int rd_array(struct parser *p, int depth, struct gguf_value *v);

/* A value of type t; `depth` is how many arrays enclose it. */
static int rd_value(struct parser *p, enum gguf_vtype t, int depth, struct gguf_value *v)
{
    v->type = t;
    if (t == GGUF_TYPE_STRING)
        return rd_string(p, "string", GGUF_STRING_MAX, &v->s.data, &v->s.len);
    if (t == GGUF_TYPE_ARRAY) return rd_array(p, depth + 1, v);
    return rd_scalar(p, t, v);
}

/* Numeric elements stay in the map; check their bytes are there (and bools). */
static int rd_array_raw(struct parser *p, struct gguf_value *v)
{
    uint64_t n_bytes = v->arr.n * gguf_vtype_size(v->arr.type);
    v->arr.raw = p->buf + p->pos;
    if (v->arr.type == GGUF_TYPE_BOOL) {
        const uint8_t *b = p->buf + p->pos;
        for (uint64_t i = 0; i < v->arr.n; i++)
            if (b[i] > 1)
                return perr(p, TT_EFORMAT,
                            "bool array element %" PRIu64 " at offset %" PRIu64
                            " is %u, not 0 or 1",
                            i, p->pos + i, b[i]);
    }
    p->pos += n_bytes;
    return 0;
}

static int rd_array(struct parser *p, int depth, struct gguf_value *v)
{
    uint64_t at = p->pos, n = 0;
    enum gguf_vtype et = GGUF_TYPE_UINT8;
    int rc;
    if (depth > GGUF_NESTING_MAX)
        return perr(p, TT_EFORMAT, "array at offset %" PRIu64 " is nested more than %d deep", at,
                    GGUF_NESTING_MAX);
    if ((rc = rd_vtype(p, "array element type", &et))) return rc;
    if ((rc = rd_u64(p, "array length", &n))) return rc;
    if (n > GGUF_ARRAY_MAX)
        return perr(p, TT_EFORMAT,
                    "array at offset %" PRIu64 " has %" PRIu64 " elements, over the limit of %llu",
                    at, n, GGUF_ARRAY_MAX);
    /* Each element takes at least min_size bytes; n <= 2^28 cannot overflow. */
    uint64_t min_size = et == GGUF_TYPE_STRING  ? 8
                        : et == GGUF_TYPE_ARRAY ? 12
                                                : gguf_vtype_size(et);
    if (n * min_size > p->size - p->pos)
        return perr(p, TT_EFORMAT,
                    "array at offset %" PRIu64 " declares %" PRIu64 " %s elements"
                    " (at least %" PRIu64 " bytes) but only %" PRIu64 " bytes remain",
                    at, n, gguf_vtype_name(et), n * min_size, p->size - p->pos);
    v->arr.type = et;
    v->arr.n = n;
    v->arr.raw = NULL;
    v->arr.elems = NULL;
    if (et != GGUF_TYPE_STRING && et != GGUF_TYPE_ARRAY) return rd_array_raw(p, v);
    /* Reserve n contiguous slots before recursing, so nested arrays go after. */
    struct gguf_value *elems = p->fill ? p->values + p->n_values : NULL;
    p->n_values += n;
    v->arr.elems = elems;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_value scratch;
        if ((rc = rd_value(p, et, depth, elems ? &elems[i] : &scratch))) return rc;
    }
    return 0;
}

/* ---- header, key/values, tensor infos ---- */

static int parse_version(struct parser *p, uint32_t version)
{
    if (version == 2 || version == 3) return 0;
    uint32_t swapped = __builtin_bswap32(version);
    if (swapped >= 1 && swapped <= 3)
        return perr(p, TT_EUNSUPPORTED,
                    "big-endian GGUF file (version field at offset 4 reads "
                    "0x%08" PRIx32 "); only little-endian GGUF files are supported",
                    version);
    if (version == 1)
        return perr(p, TT_EUNSUPPORTED,
                    "GGUF version 1 is not supported (only versions 2 and "
                    "3); convert the model again with a current llama.cpp");
    return perr(p, TT_EUNSUPPORTED,
                "GGUF version %" PRIu32 " at offset 4 is not supported "
                "(only versions 2 and 3)",
                version);
}

static int parse_header(struct parser *p, struct gguf_file *f)
{
    int rc;
    snprintf(p->ctx, sizeof(p->ctx), "header");
    if (p->size < 4)
        return perr(p, TT_EFORMAT, "file is %" PRIu64 " bytes, too small to be GGUF", p->size);
    if (memcmp(p->buf, GGUF_MAGIC, 4) != 0)
        return perr(p, TT_EFORMAT,
                    "not a GGUF file: it starts with bytes %02x %02x %02x %02x, "
                    "not \"GGUF\"",
                    p->buf[0], p->buf[1], p->buf[2], p->buf[3]);
    p->pos = 4;
    if ((rc = rd_u32(p, "version", &f->version))) return rc;
    if ((rc = parse_version(p, f->version))) return rc;
    if ((rc = rd_u64(p, "tensor count", &f->n_tensors))) return rc;
    if ((rc = rd_u64(p, "metadata count", &f->n_kv))) return rc;
    if (f->n_tensors > GGUF_TENSORS_MAX)
        return perr(p, TT_EFORMAT, "tensor count %" PRIu64 " at offset 8 is over the limit of %d",
                    f->n_tensors, GGUF_TENSORS_MAX);
    if (f->n_kv > GGUF_KV_MAX)
        return perr(p, TT_EFORMAT,
                    "metadata count %" PRIu64 " at offset 16 is over the limit "
                    "of %d",
                    f->n_kv, GGUF_KV_MAX);
    uint64_t min_bytes = f->n_kv * MIN_KV_BYTES + f->n_tensors * MIN_TENSOR_BYTES;
    if (min_bytes > p->size - p->pos)
        return perr(p, TT_EFORMAT,
                    "%" PRIu64 " metadata entries and %" PRIu64 " tensor infos "
                    "need at least %" PRIu64 " bytes but only %" PRIu64 " remain after offset "
                    "%" PRIu64 " (truncated file?)",
                    f->n_kv, f->n_tensors, min_bytes, p->size - p->pos, p->pos);
    return 0;
}

/* In the fill pass: record item i in an index, or fail naming the first one. */
static int index_insert(struct parser *p, uint32_t *slots, uint64_t cap, const void *items,
                        size_t stride, uint32_t i, const char *what)
{
    const char *name = gguf_item_name_(items, stride, i);
    uint64_t slot = gguf_index_slot_(slots, cap, items, stride, name);
    if (slots[slot])
        return perr(p, TT_EFORMAT, "duplicate %s (first defined by entry %" PRIu32 ")", what,
                    slots[slot] - 1);
    slots[slot] = i + 1;
    return 0;
}

static int parse_kv(struct parser *p, struct gguf_file *f, uint64_t i)
{
    struct gguf_kv scratch, *kv = p->fill ? &f->kv[i] : &scratch;
    uint64_t at = p->pos, len = 0;
    const char *key = NULL;
    enum gguf_vtype t = GGUF_TYPE_UINT8;
    int rc;
    snprintf(p->ctx, sizeof(p->ctx), "metadata entry %" PRIu64 " (at offset %" PRIu64 ")", i, at);
    if ((rc = rd_string(p, "key", GGUF_STRING_MAX, &key, &len))) return rc;
    if ((rc = check_name(p, "key", key, len, GGUF_STRING_MAX, at))) return rc;
    snprintf(p->ctx, sizeof(p->ctx), "metadata entry %" PRIu64 " '%.*s'", i, (int)TT_MIN(len, 120),
             key);
    if ((rc = rd_vtype(p, "value type", &t))) return rc;
    if ((rc = rd_value(p, t, 0, &kv->value))) return rc;
    if (!p->fill) return 0;
    kv->key = key;
    struct gguf_pool *pool = f->pool;
    return index_insert(p, pool->kv_slots, pool->kv_cap, f->kv, sizeof(*f->kv), (uint32_t)i, "key");
}

static int parse_dims(struct parser *p, struct gguf_tensor *t)
{
    uint64_t at = p->pos;
    int rc = rd_u32(p, "n_dims", &t->n_dims);
    if (rc) return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_DIMS_MAX)
        return perr(p, TT_EFORMAT, "n_dims %" PRIu32 " at offset %" PRIu64 " is not in 1..%d",
                    t->n_dims, at, GGUF_DIMS_MAX);
    for (uint32_t d = 0; d < GGUF_DIMS_MAX; d++) {
        uint64_t ne = 1;
        at = p->pos;
        if (d < t->n_dims && (rc = rd_u64(p, "dimension", &ne))) return rc;
        if (ne < 1 || ne > (uint64_t)INT64_MAX)
            return perr(p, TT_EFORMAT,
                        "ne[%" PRIu32 "] = %" PRIu64 " at offset %" PRIu64 " is not in 1..2^63-1",
                        d, ne, at);
        t->ne[d] = (int64_t)ne;
    }
    return 0;
}

static int parse_tensor_info(struct parser *p, struct gguf_file *f, uint64_t i)
{
    struct gguf_tensor scratch, *t = p->fill ? &f->tensors[i] : &scratch;
    uint64_t at = p->pos, len = 0;
    const char *name = NULL;
    char msg[512];
    int rc;
    memset(t, 0, sizeof(*t));
    snprintf(p->ctx, sizeof(p->ctx), "tensor %" PRIu64 " (info at offset %" PRIu64 ")", i, at);
    if ((rc = rd_string(p, "name", GGUF_NAME_MAX, &name, &len))) return rc;
    if ((rc = check_name(p, "name", name, len, GGUF_NAME_MAX, at))) return rc;
    snprintf(p->ctx, sizeof(p->ctx), "tensor %" PRIu64 " '%.*s'", i, (int)len, name);
    if ((rc = parse_dims(p, t))) return rc;
    at = p->pos;
    if ((rc = rd_u32(p, "type", &t->type))) return rc;
    rc = gguf_tensor_check_(t->type, t->n_dims, t->ne, &t->size_bytes, msg, sizeof(msg));
    if (rc) return perr(p, rc, "%s (type at offset %" PRIu64 ")", msg, at);
    if ((rc = rd_u64(p, "data offset", &t->offset))) return rc;
    if (!p->fill) return 0;
    t->name = name;
    struct gguf_pool *pool = f->pool;
    return index_insert(p, pool->tensor_slots, pool->tensor_cap, f->tensors, sizeof(*f->tensors),
                        (uint32_t)i, "tensor name");
}

static int parse_body(struct parser *p, struct gguf_file *f)
{
    int rc;
    for (uint64_t i = 0; i < f->n_kv; i++)
        if ((rc = parse_kv(p, f, i))) return rc;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if ((rc = parse_tensor_info(p, f, i))) return rc;
    return 0;
}

/* ---- the pool ---- */

/* Reserve n items of `size` bytes at the end of a layout, 16-byte aligned. */
static bool layout_add(uint64_t *total, uint64_t n, uint64_t size, uint64_t *at)
{
    uint64_t bytes;
    *at = (*total + 15) & ~(uint64_t)15;
    if (*at < *total || __builtin_mul_overflow(n, size, &bytes)) return false;
    if (__builtin_add_overflow(*at, bytes, total)) return false;
    return true;
}

static int pool_alloc(struct parser *p, struct gguf_file *f)
{
    uint64_t kv_cap = gguf_index_cap_(f->n_kv), tensor_cap = gguf_index_cap_(f->n_tensors);
    uint64_t total = sizeof(struct gguf_pool), at_kv, at_t, at_v, at_ks, at_ts, at_s;
    bool ok = layout_add(&total, f->n_kv, sizeof(struct gguf_kv), &at_kv) &&
              layout_add(&total, f->n_tensors, sizeof(struct gguf_tensor), &at_t) &&
              layout_add(&total, p->n_values, sizeof(struct gguf_value), &at_v) &&
              layout_add(&total, kv_cap, sizeof(uint32_t), &at_ks) &&
              layout_add(&total, tensor_cap, sizeof(uint32_t), &at_ts) &&
              layout_add(&total, p->n_str_bytes, 1, &at_s);
    snprintf(p->ctx, sizeof(p->ctx), "metadata");
    if (!ok || total > SIZE_MAX) return perr(p, TT_EFORMAT, "parsed metadata size overflows");
    uint8_t *mem = tt_alloc((size_t)total);
    if (!mem)
        return perr(p, TT_ENOMEM,
                    "cannot allocate %" PRIu64 " bytes for %" PRIu64 " values "
                    "and %" PRIu64 " string bytes",
                    total, p->n_values, p->n_str_bytes);
    struct gguf_pool *pool = (struct gguf_pool *)mem;
    pool->kv_slots = (uint32_t *)(mem + at_ks);
    pool->kv_cap = kv_cap;
    pool->tensor_slots = (uint32_t *)(mem + at_ts);
    pool->tensor_cap = tensor_cap;
    f->pool = pool;
    f->kv = (struct gguf_kv *)(mem + at_kv);
    f->tensors = (struct gguf_tensor *)(mem + at_t);
    p->values = (struct gguf_value *)(mem + at_v);
    p->strs = (char *)(mem + at_s);
    return 0;
}

/* ---- checks that need the whole header ---- */

static int read_alignment(struct parser *p, struct gguf_file *f)
{
    const struct gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!kv) return 0;
    snprintf(p->ctx, sizeof(p->ctx), "metadata entry %td 'general.alignment'", kv - f->kv);
    if (kv->value.type != GGUF_TYPE_UINT32)
        return perr(p, TT_EFORMAT, "must be of type uint32, not %s",
                    gguf_vtype_name(kv->value.type));
    uint64_t a = kv->value.u;
    if (a == 0 || (a & (a - 1)) || a > GGUF_ALIGNMENT_MAX)
        return perr(p, TT_EFORMAT, "value %" PRIu64 " is not a power of two in 1..%u", a,
                    GGUF_ALIGNMENT_MAX);
    f->alignment = a;
    return 0;
}

struct span {
    uint64_t begin, end;
    uint64_t index;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Tensor data must not overlap. Files list tensors in data order, so sort
 * only when they are not already. */
static int check_overlap(struct parser *p, struct gguf_file *f)
{
    bool sorted = true;
    for (uint64_t i = 1; i < f->n_tensors && sorted; i++)
        sorted = f->tensors[i].offset >= f->tensors[i - 1].offset + f->tensors[i - 1].size_bytes;
    if (sorted) return 0;
    struct span *s = malloc(f->n_tensors * sizeof(*s));
    if (!s) return perr(p, TT_ENOMEM, "cannot allocate the tensor overlap check");
    for (uint64_t i = 0; i < f->n_tensors; i++)
        s[i] =
            (struct span){f->tensors[i].offset, f->tensors[i].offset + f->tensors[i].size_bytes, i};
    qsort(s, f->n_tensors, sizeof(*s), span_cmp);
    int rc = 0;
    for (uint64_t k = 1; k < f->n_tensors && !rc; k++) {
        if (s[k].begin >= s[k - 1].end) continue;
        const struct gguf_tensor *a = &f->tensors[s[k - 1].index], *b = &f->tensors[s[k].index];
        snprintf(p->ctx, sizeof(p->ctx), "tensor %" PRIu64 " '%s'", s[k].index, b->name);
        rc = perr(p, TT_EFORMAT,
                  "data [offset %" PRIu64 ", %" PRIu64 ") overlaps tensor %" PRIu64
                  " '%s' at [offset %" PRIu64 ", %" PRIu64 ")",
                  f->data_offset + s[k].begin, f->data_offset + s[k].end, s[k - 1].index, a->name,
                  f->data_offset + s[k - 1].begin, f->data_offset + s[k - 1].end);
    }
    free(s);
    return rc;
}

static int check_tensor_data(struct parser *p, struct gguf_file *f)
{
    uint64_t a = f->alignment, end_of_infos = p->pos;
    f->data_offset = (end_of_infos + a - 1) / a * a;
    /* A file without tensors may end right after its metadata, unpadded. */
    if (f->n_tensors == 0 && f->data_offset > p->size) f->data_offset = p->size;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        uint64_t begin, end;
        snprintf(p->ctx, sizeof(p->ctx), "tensor %" PRIu64 " '%s'", i, t->name);
        if (t->offset % a)
            return perr(p, TT_EFORMAT,
                        "data offset %" PRIu64 " is not a multiple of the "
                        "alignment %" PRIu64,
                        t->offset, a);
        if (__builtin_add_overflow(f->data_offset, t->offset, &begin) ||
            __builtin_add_overflow(begin, t->size_bytes, &end))
            return perr(p, TT_EFORMAT, "data offset %" PRIu64 " + size %" PRIu64 " overflows",
                        t->offset, t->size_bytes);
        if (end > p->size)
            return perr(p, TT_EFORMAT,
                        "data [offset %" PRIu64 ", %" PRIu64 ") extends past end "
                        "of file (size %" PRIu64 ")",
                        begin, end, p->size);
        t->data = p->buf + begin;
    }
    return check_overlap(p, f);
}

/* ---- open, parse, close ---- */

/* Parse an image; on failure free what was built and leave f zeroed. */
static int parse_image(struct gguf_file *f, const uint8_t *buf, uint64_t size)
{
    struct parser p = {.buf = buf, .size = size};
    int rc;
    memset(f, 0, sizeof(*f));
    if ((rc = parse_header(&p, f))) goto fail;
    uint64_t end_of_header = p.pos;
    if ((rc = parse_body(&p, f))) goto fail;
    if ((rc = pool_alloc(&p, f))) goto fail;
    p.pos = end_of_header;
    p.fill = true;
    p.n_values = 0;
    p.n_str_bytes = 0;
    if ((rc = parse_body(&p, f))) goto fail_pool;
    if ((rc = read_alignment(&p, f))) goto fail_pool;
    if ((rc = check_tensor_data(&p, f))) goto fail_pool;
    f->map = buf;
    f->size_bytes = size;
    return 0;
fail_pool:
    tt_free(f->pool);
fail:
    memset(f, 0, sizeof(*f));
    return rc;
}

int gguf_parse_buffer(struct gguf_file *f, const void *buf, uint64_t size_bytes)
{
    TT_ASSERT(f && (buf || size_bytes == 0));
    static const uint8_t empty[1];
    return parse_image(f, buf ? buf : empty, size_bytes);
}

/* Prefix the current error detail with the file's path. */
static int path_err(int rc, const char *path)
{
    char detail[1024];
    snprintf(detail, sizeof(detail), "%s", tt_error_detail());
    return tt_error_set(rc, "%s: %s", path, detail);
}

int gguf_open(struct gguf_file *f, const char *path)
{
    struct stat st;
    int rc;
    TT_ASSERT(f && path);
    memset(f, 0, sizeof(*f));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tt_error_set(errno == ENOENT ? TT_ENOTFOUND : TT_EIO, "cannot open '%s': %s", path,
                            strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = tt_error_set(TT_EIO, "'%s' is not a readable regular file", path);
        goto fail_fd;
    }
    if (st.st_size < 4) {
        rc = tt_error_set(TT_EFORMAT, "'%s' is %lld bytes, too small to be a GGUF file", path,
                          (long long)st.st_size);
        goto fail_fd;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = tt_error_set(TT_EIO, "cannot map '%s' (%lld bytes): %s", path, (long long)st.st_size,
                          strerror(errno));
        goto fail_fd;
    }
    close(fd);
    if ((rc = parse_image(f, map, (uint64_t)st.st_size))) goto fail_map;
    f->owns_map = true;
    return 0;
fail_map:
    munmap(map, (size_t)st.st_size);
    return path_err(rc, path);
fail_fd:
    close(fd);
    return rc;
}

void gguf_close(struct gguf_file *f)
{
    if (!f) return;
    tt_free(f->pool);
    if (f->owns_map && f->map) munmap((void *)f->map, (size_t)f->size_bytes);
    memset(f, 0, sizeof(*f));
}

/* ---- lookups ---- */

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key)
{
    const struct gguf_pool *pool = f ? f->pool : NULL;
    if (!pool || !key) return NULL;
    uint64_t slot = gguf_index_slot_(pool->kv_slots, pool->kv_cap, f->kv, sizeof(*f->kv), key);
    return pool->kv_slots[slot] ? &f->kv[pool->kv_slots[slot] - 1] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
    const struct gguf_pool *pool = f ? f->pool : NULL;
    if (!pool || !name) return NULL;
    uint64_t slot = gguf_index_slot_(pool->tensor_slots, pool->tensor_cap, f->tensors,
                                     sizeof(*f->tensors), name);
    return pool->tensor_slots[slot] ? &f->tensors[pool->tensor_slots[slot] - 1] : NULL;
}

/* The value of `key`, or NULL with the error detail set (TT_ENOTFOUND). */
static const struct gguf_value *find_value(const struct gguf_file *f, const char *key)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) tt_error_set(TT_ENOTFOUND, "metadata key '%s' not found", key);
    return kv ? &kv->value : NULL;
}

static int wrong_type(const char *key, const struct gguf_value *v, const char *want)
{
    return tt_error_set(TT_EFORMAT, "metadata key '%s' is a %s, expected %s", key,
                        gguf_vtype_name(v->type), want);
}

/* An integer value within [lo, hi]; signed and unsigned kinds compared exactly. */
static int get_int(const struct gguf_file *f, const char *key, int64_t lo, uint64_t hi,
                   const char *want, struct gguf_value *out)
{
    const struct gguf_value *v = find_value(f, key);
    if (!v) return TT_ENOTFOUND;
    if (!vtype_is_int(v->type)) return wrong_type(key, v, want);
    bool fits =
        vtype_is_signed(v->type) ? v->i >= lo && (v->i < 0 || (uint64_t)v->i <= hi) : v->u <= hi;
    if (!fits) {
        if (vtype_is_signed(v->type))
            return tt_error_set(TT_EFORMAT, "metadata key '%s' = %" PRId64 " does not fit %s", key,
                                v->i, want);
        return tt_error_set(TT_EFORMAT, "metadata key '%s' = %" PRIu64 " does not fit %s", key,
                            v->u, want);
    }
    *out = *v;
    return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out)
{
    struct gguf_value v = {0};
    int rc = get_int(f, key, 0, UINT32_MAX, "a uint32", &v);
    if (rc) return rc;
    *out = vtype_is_signed(v.type) ? (uint32_t)v.i : (uint32_t)v.u;
    return 0;
}

int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out)
{
    struct gguf_value v = {0};
    int rc = get_int(f, key, INT64_MIN, INT64_MAX, "an int64", &v);
    if (rc) return rc;
    *out = vtype_is_signed(v.type) ? v.i : (int64_t)v.u;
    return 0;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out)
{
    const struct gguf_value *v = find_value(f, key);
    if (!v) return TT_ENOTFOUND;
    if (v->type == GGUF_TYPE_FLOAT32 || v->type == GGUF_TYPE_FLOAT64) {
        if (isfinite(v->f) && fabs(v->f) > FLT_MAX)
            return tt_error_set(TT_EFORMAT, "metadata key '%s' = %g does not fit a float", key,
                                v->f);
        *out = (float)v->f;
    } else if (vtype_is_int(v->type)) {
        *out = vtype_is_signed(v->type) ? (float)v->i : (float)v->u;
    } else {
        return wrong_type(key, v, "a float");
    }
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out)
{
    const struct gguf_value *v = find_value(f, key);
    if (!v) return TT_ENOTFOUND;
    if (v->type != GGUF_TYPE_BOOL) return wrong_type(key, v, "a bool");
    *out = v->b;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, const char **out)
{
    const struct gguf_value *v = find_value(f, key);
    if (!v) return TT_ENOTFOUND;
    if (v->type != GGUF_TYPE_STRING) return wrong_type(key, v, "a string");
    *out = v->s.data;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype elem_type,
                 const struct gguf_value **out)
{
    const struct gguf_value *v = find_value(f, key);
    if (!v) return TT_ENOTFOUND;
    if (v->type != GGUF_TYPE_ARRAY) return wrong_type(key, v, "an array");
    if (elem_type != GGUF_TYPE_COUNT && v->arr.type != elem_type)
        return tt_error_set(TT_EFORMAT,
                            "metadata key '%s' is an array of %s, expected an array "
                            "of %s",
                            key, gguf_vtype_name(v->arr.type), gguf_vtype_name(elem_type));
    *out = v;
    return 0;
}

static struct gguf_value arr_elem(const struct gguf_value *arr, uint64_t i)
{
    struct gguf_value e;
    TT_ASSERT(arr && arr->type == GGUF_TYPE_ARRAY && i < arr->arr.n);
    TT_ASSERT(gguf_vtype_size(arr->arr.type) > 0 && arr->arr.raw);
    load_scalar((const uint8_t *)arr->arr.raw + i * gguf_vtype_size(arr->arr.type), arr->arr.type,
                &e);
    return e;
}

double gguf_arr_f64(const struct gguf_value *arr, uint64_t i)
{
    struct gguf_value e = arr_elem(arr, i);
    if (e.type == GGUF_TYPE_FLOAT32 || e.type == GGUF_TYPE_FLOAT64) return e.f;
    if (e.type == GGUF_TYPE_BOOL) return e.b;
    return vtype_is_signed(e.type) ? (double)e.i : (double)e.u;
}

int64_t gguf_arr_i64(const struct gguf_value *arr, uint64_t i)
{
    struct gguf_value e = arr_elem(arr, i);
    TT_ASSERT(e.type != GGUF_TYPE_FLOAT32 && e.type != GGUF_TYPE_FLOAT64);
    if (e.type == GGUF_TYPE_BOOL) return e.b;
    return vtype_is_signed(e.type) ? e.i : (int64_t)e.u;
}

/* ---- names and sizes ---- */

const char *gguf_vtype_name(enum gguf_vtype t)
{
    static const char *const names[GGUF_TYPE_COUNT] = {
        "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
        "bool",  "string", "array",  "uint64", "int64",  "float64",
    };
    return (unsigned)t < GGUF_TYPE_COUNT ? names[t] : "unknown type";
}

size_t gguf_vtype_size(enum gguf_vtype t)
{
    static const uint8_t sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return (unsigned)t < GGUF_TYPE_COUNT ? sizes[t] : 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one. */
static int utf8_seq_len(const uint8_t *s, uint64_t n)
{
    uint8_t c = s[0];
    int len;
    uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c < 0xc2) return 0; /* continuation byte, or overlong 2-byte form */
    if (c < 0xe0) {
        len = 2;
    } else if (c < 0xf0) {
        len = 3;
        if (c == 0xe0) lo = 0xa0; /* overlong */
        if (c == 0xed) hi = 0x9f; /* surrogates U+D800..U+DFFF */
    } else if (c < 0xf5) {
        len = 4;
        if (c == 0xf0) lo = 0x90; /* overlong */
        if (c == 0xf4) hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if ((uint64_t)len > n || s[1] < lo || s[1] > hi) return 0;
    for (int k = 2; k < len; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    return len;
}

const char *gguf_name_problem_(const char *s, uint64_t len, uint64_t max_len, uint64_t *bad_at)
{
    const uint8_t *u = (const uint8_t *)s;
    *bad_at = UINT64_MAX;
    if (len == 0) return "is empty";
    if (len > max_len) return "is too long";
    for (uint64_t i = 0; i < len;) {
        int n = utf8_seq_len(u + i, len - i);
        *bad_at = i;
        if (n == 0) return "is not valid UTF-8";
        if (u[i] == 0) return "contains a NUL byte";
        i += (uint64_t)n;
    }
    *bad_at = UINT64_MAX;
    return NULL;
}

/* GGML's names for type ids, so an error can say what an unsupported type is. */
static const char *ggml_type_name(uint32_t type)
{
    static const char *const names[] = {
        "f32",
        "f16",
        "q4_0",
        "q4_1",
        "q4_2 (removed)",
        "q4_3 (removed)",
        "q5_0",
        "q5_1",
        "q8_0",
        "q8_1",
        "q2_K",
        "q3_K",
        "q4_K",
        "q5_K",
        "q6_K",
        "q8_K",
        "iq2_xxs",
        "iq2_xs",
        "iq3_xxs",
        "iq1_s",
        "iq4_nl",
        "iq3_s",
        "iq2_s",
        "iq4_xs",
        "i8",
        "i16",
        "i32",
        "i64",
        "f64",
        "iq1_m",
        "bf16",
        "q4_0_4_4 (removed)",
        "q4_0_4_8 (removed)",
        "q4_0_8_8 (removed)",
        "tq1_0",
        "tq2_0",
        "iq4_nl_4_4 (removed)",
        "iq4_nl_4_8 (removed)",
        "iq4_nl_8_8 (removed)",
        "mxfp4",
    };
    return type < TT_ARRAY_LEN(names) ? names[type] : "unknown to GGML";
}

int gguf_tensor_check_(uint32_t type, uint32_t n_dims, const int64_t *ne, uint64_t *size_bytes,
                       char *msg, size_t msg_cap)
{
    const struct tt_type_traits *tr = tt_type_get(type);
    uint64_t n_elem = 1, size;
    if (!tr || !tr->name) {
        snprintf(msg, msg_cap, "type id %" PRIu32 " (%s) is not supported; supported types: %s",
                 type, ggml_type_name(type), tt_type_supported_list());
        return TT_EUNSUPPORTED;
    }
    if (n_dims < 1 || n_dims > GGUF_DIMS_MAX) {
        snprintf(msg, msg_cap, "n_dims %" PRIu32 " is not in 1..%d", n_dims, GGUF_DIMS_MAX);
        return TT_EFORMAT;
    }
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1) {
            snprintf(msg, msg_cap, "ne[%" PRIu32 "] = %" PRId64 " is not >= 1", d, ne[d]);
            return TT_EFORMAT;
        }
        if (__builtin_mul_overflow(n_elem, (uint64_t)ne[d], &n_elem) || n_elem > INT64_MAX) {
            snprintf(msg, msg_cap,
                     "element count of shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                     "] overflows",
                     ne[0], n_dims > 1 ? ne[1] : 1, n_dims > 2 ? ne[2] : 1, n_dims > 3 ? ne[3] : 1);
            return TT_EFORMAT;
        }
    }
    if (ne[0] % tr->block_size) {
        snprintf(msg, msg_cap, "ne[0] = %" PRId64 " is not a multiple of the %s block size %d",
                 ne[0], tr->name, tr->block_size);
        return TT_EFORMAT;
    }
    if (__builtin_mul_overflow(n_elem / (uint64_t)tr->block_size, (uint64_t)tr->type_size, &size) ||
        size > INT64_MAX) {
        snprintf(msg, msg_cap, "size in bytes of %" PRIu64 " %s elements overflows", n_elem,
                 tr->name);
        return TT_EFORMAT;
    }
    *size_bytes = size;
    return 0;
}
