/*
 * gguf_write.c: writing GGUF version 3 files, streaming.
 *
 * Metadata is serialized as it is set: each entry keeps its key and the
 * bytes of its value (type tag included), so setting a key again just swaps
 * the bytes and begin() only copies them out. Tensor infos are kept until
 * begin(), which assigns the offsets (each size rounded up to the
 * alignment), then writes the header to "<path>.tmp". Tensor data goes from
 * the caller's buffer straight to the file descriptor (small pieces through
 * a fixed staging buffer), so a 40 GB file needs no more memory than a 4 KB
 * one. finish() flushes, fsyncs and renames the temp file onto the path:
 * a crash or an error never leaves a partial file under the final name.
 *
 * State machine:  SETUP --begin--> DATA --finish--> DONE
 *   setters and add_tensor only in SETUP; write_tensor only in DATA.
 * Errors are sticky: the first one (code and message) is kept and returned
 * by every later call; gguf_writer_free() then deletes the temp file.
 *
 * Invariant: the writer emits only what the reader accepts (keys and names
 * checked with the same rules, shapes with the same gguf_tensor_check_).
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
#include <unistd.h>

#include "gguf.h"
#include "gguf_internal.h"

#define WBUF_BYTES (1u << 20)   /* staging buffer for the header and small writes */
#define WCHUNK_BYTES (1u << 30) /* largest single write(2) */

enum wstate { WSTATE_SETUP, WSTATE_DATA, WSTATE_DONE };

/* A growable byte buffer. */
struct bytes {
    uint8_t *p;
    uint64_t n, cap;
};

struct wkv {
    char *key;        /* first member: see gguf_internal.h */
    struct bytes val; /* u32 type + value, as in the file */
};

struct wtensor {
    char *name; /* first member */
    uint32_t n_dims;
    int64_t ne[GGUF_DIMS_MAX];
    uint32_t type;
    uint64_t offset, size_bytes;
};

struct windex {
    uint32_t *slots; /* item index + 1; 0 = empty */
    uint64_t cap;
};

struct gguf_writer {
    int err; /* sticky: first error */
    char err_msg[768];
    enum wstate state;
    struct wkv *kv;
    uint64_t n_kv, cap_kv;
    struct windex kv_index;
    struct wtensor *tensors;
    uint64_t n_tensors, cap_tensors;
    struct windex tensor_index;
    uint64_t alignment;
    char *path, *tmp_path;
    int fd;          /* the temp file, -1 when not open */
    bool tmp_exists; /* delete it on free */
    uint8_t *buf;    /* staging buffer, WBUF_BYTES */
    uint64_t buf_n;
    uint64_t file_pos; /* bytes handed to the file so far (buffered included) */
    uint64_t next_tensor;
};

static int w_fail(struct gguf_writer *w, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int w_fail(struct gguf_writer *w, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err_msg, sizeof(w->err_msg), fmt, ap);
    va_end(ap);
    w->err = err;
    return tt_error_set(err, "%s", w->err_msg);
}

/* Returns the sticky error (and restores its message), or 0. */
static int w_check(struct gguf_writer *w, enum wstate want, const char *fn)
{
    static const char *const names[] = {"before gguf_writer_begin", "between begin and finish",
                                        "after finish"};
    TT_ASSERT(w);
    if (w->err) return tt_error_set(w->err, "%s", w->err_msg);
    if (w->state != want) return w_fail(w, TT_EINVAL, "%s must be called %s", fn, names[want]);
    return 0;
}

static int bytes_put(struct bytes *b, const void *src, uint64_t n)
{
    if (n > b->cap - b->n) {
        uint64_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n) {
            if (cap > UINT64_MAX / 2) return TT_ENOMEM;
            cap *= 2;
        }
        uint8_t *p = cap > SIZE_MAX ? NULL : realloc(b->p, (size_t)cap);
        if (!p) return TT_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

static int bytes_u32(struct bytes *b, uint32_t v)
{
    return bytes_put(b, &v, 4);
}
static int bytes_u64(struct bytes *b, uint64_t v)
{
    return bytes_put(b, &v, 8);
}

static int bytes_str(struct bytes *b, const char *s, uint64_t len)
{
    int rc = bytes_u64(b, len);
    return rc ? rc : bytes_put(b, s, len);
}

/* ---- name indexes ---- */

static int64_t windex_find(const struct windex *ix, const void *items, size_t stride,
                           const char *name)
{
    if (!ix->cap) return -1;
    uint64_t slot = gguf_index_slot_(ix->slots, ix->cap, items, stride, name);
    return ix->slots[slot] ? (int64_t)ix->slots[slot] - 1 : -1;
}

/* Add item n-1 of n (its name not yet present), growing the table. */
static int windex_add(struct windex *ix, const void *items, size_t stride, uint64_t n)
{
    if (2 * n > ix->cap) {
        uint64_t cap = gguf_index_cap_(n);
        uint32_t *slots = calloc((size_t)cap, sizeof(*slots));
        if (!slots) return TT_ENOMEM;
        free(ix->slots);
        ix->slots = slots;
        ix->cap = cap;
        for (uint64_t i = 0; i + 1 < n; i++)
            slots[gguf_index_slot_(slots, cap, items, stride,
                                   gguf_item_name_(items, stride, (uint32_t)i))] = (uint32_t)i + 1;
    }
    const char *name = gguf_item_name_(items, stride, (uint32_t)(n - 1));
    ix->slots[gguf_index_slot_(ix->slots, ix->cap, items, stride, name)] = (uint32_t)n;
    return 0;
}

/* ---- lifetime ---- */

struct gguf_writer *gguf_writer_create(void)
{
    struct gguf_writer *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    w->fd = -1;
    return w;
}

void gguf_writer_free(struct gguf_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp_exists) unlink(w->tmp_path);
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val.p);
    }
    for (uint64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->kv);
    free(w->tensors);
    free(w->kv_index.slots);
    free(w->tensor_index.slots);
    free(w->path);
    free(w->tmp_path);
    free(w->buf);
    free(w);
}

/* ---- serializing values ---- */

/* Little-endian bytes of a scalar; false if the value does not fit its type. */
static bool scalar_bytes(const struct gguf_value *v, uint8_t out[8])
{
    int64_t i = v->i;
    uint64_t u = v->u;
    switch (v->type) {
    case GGUF_TYPE_UINT8:
        memcpy(out, &u, 1);
        return u <= UINT8_MAX;
    case GGUF_TYPE_INT8:
        memcpy(out, &i, 1);
        return i >= INT8_MIN && i <= INT8_MAX;
    case GGUF_TYPE_UINT16:
        memcpy(out, &u, 2);
        return u <= UINT16_MAX;
    case GGUF_TYPE_INT16:
        memcpy(out, &i, 2);
        return i >= INT16_MIN && i <= INT16_MAX;
    case GGUF_TYPE_UINT32:
        memcpy(out, &u, 4);
        return u <= UINT32_MAX;
    case GGUF_TYPE_INT32:
        memcpy(out, &i, 4);
        return i >= INT32_MIN && i <= INT32_MAX;
    case GGUF_TYPE_UINT64:
        memcpy(out, &u, 8);
        return true;
    case GGUF_TYPE_INT64:
        memcpy(out, &i, 8);
        return true;
    case GGUF_TYPE_BOOL:
        out[0] = v->b ? 1 : 0;
        return true;
    case GGUF_TYPE_FLOAT64:
        memcpy(out, &v->f, 8);
        return true;
    case GGUF_TYPE_FLOAT32: {
        if (isfinite(v->f) && fabs(v->f) > FLT_MAX) return false;
        float f = (float)v->f;
        memcpy(out, &f, 4);
        return true;
    }
    default:
        return false;
    }
}

static int ser_value(struct gguf_writer *w, struct bytes *b, const struct gguf_value *v, int depth,
                     const char *key);

static int ser_array(struct gguf_writer *w, struct bytes *b, const struct gguf_value *v, int depth,
                     const char *key)
{
    enum gguf_vtype et = v->arr.type;
    uint64_t n = v->arr.n, size = gguf_vtype_size(et);
    int rc;
    if (depth >= GGUF_NESTING_MAX)
        return w_fail(w, TT_EINVAL, "key '%s': arrays nested more than %d deep", key,
                      GGUF_NESTING_MAX);
    if ((unsigned)et >= GGUF_TYPE_COUNT || n > GGUF_ARRAY_MAX)
        return w_fail(w, TT_EINVAL,
                      "key '%s': array of element type %d and %" PRIu64 " elements (limit %llu)",
                      key, (int)et, n, GGUF_ARRAY_MAX);
    bool packed = et != GGUF_TYPE_STRING && et != GGUF_TYPE_ARRAY;
    if (n && (packed ? !v->arr.raw : !v->arr.elems))
        return w_fail(w, TT_EINVAL, "key '%s': array of %" PRIu64 " elements without data", key, n);
    if ((rc = bytes_u32(b, (uint32_t)et)) || (rc = bytes_u64(b, n))) goto fail_mem;
    if (packed) {
        if (et == GGUF_TYPE_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (((const uint8_t *)v->arr.raw)[i] > 1)
                    return w_fail(w, TT_EINVAL, "key '%s': bool element %" PRIu64 " is not 0 or 1",
                                  key, i);
        if ((rc = bytes_put(b, v->arr.raw, n * size))) goto fail_mem;
        return 0;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (v->arr.elems[i].type != et)
            return w_fail(w, TT_EINVAL, "key '%s': element %" PRIu64 " is a %s in an array of %s",
                          key, i, gguf_vtype_name(v->arr.elems[i].type), gguf_vtype_name(et));
        if ((rc = ser_value(w, b, &v->arr.elems[i], depth + 1, key))) return rc;
    }
    return 0;
fail_mem:
    return w_fail(w, TT_ENOMEM, "key '%s': out of memory serializing an array", key);
}

/* The value's bytes without its type tag; `depth` = enclosing arrays. */
static int ser_value(struct gguf_writer *w, struct bytes *b, const struct gguf_value *v, int depth,
                     const char *key)
{
    uint8_t raw[8];
    if (v->type == GGUF_TYPE_ARRAY) return ser_array(w, b, v, depth, key);
    if (v->type == GGUF_TYPE_STRING) {
        if (v->s.len > GGUF_STRING_MAX || (v->s.len && !v->s.data))
            return w_fail(w, TT_EINVAL,
                          "key '%s': string of %" PRIu64 " bytes is over the limit "
                          "or has no data",
                          key, v->s.len);
        if (bytes_str(b, v->s.data, v->s.len))
            return w_fail(w, TT_ENOMEM, "key '%s': out of memory", key);
        return 0;
    }
    if (!scalar_bytes(v, raw))
        return w_fail(w, TT_EINVAL, "key '%s': value does not fit a %s", key,
                      gguf_vtype_name(v->type));
    if (bytes_put(b, raw, gguf_vtype_size(v->type)))
        return w_fail(w, TT_ENOMEM, "key '%s': out of memory", key);
    return 0;
}

/* ---- setting metadata ---- */

static int check_key(struct gguf_writer *w, const char *key)
{
    uint64_t bad;
    const char *why = key ? gguf_name_problem_(key, strlen(key), GGUF_STRING_MAX, &bad) : "is NULL";
    if (why) return w_fail(w, TT_EINVAL, "metadata key '%.120s' %s", key ? key : "", why);
    return 0;
}

/* "general.alignment" also sets the writer's alignment. */
static int take_alignment(struct gguf_writer *w, const char *key, const struct gguf_value *v)
{
    if (strcmp(key, "general.alignment") != 0) return 0;
    uint64_t a = v->u;
    if (v->type != GGUF_TYPE_UINT32 || a == 0 || (a & (a - 1)) || a > GGUF_ALIGNMENT_MAX)
        return w_fail(w, TT_EINVAL, "general.alignment must be a uint32 power of two in 1..%u",
                      GGUF_ALIGNMENT_MAX);
    w->alignment = a;
    return 0;
}

/* Store serialized bytes under `key`, replacing an earlier value. Takes
 * ownership of val's memory. */
static int store_kv(struct gguf_writer *w, const char *key, struct bytes *val)
{
    int64_t i = windex_find(&w->kv_index, w->kv, sizeof(*w->kv), key);
    if (i >= 0) {
        free(w->kv[i].val.p);
        w->kv[i].val = *val;
        return 0;
    }
    if (w->n_kv >= GGUF_KV_MAX) {
        free(val->p);
        return w_fail(w, TT_EINVAL, "more than %d metadata entries", GGUF_KV_MAX);
    }
    if (w->n_kv == w->cap_kv) {
        uint64_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
        struct wkv *kv = realloc(w->kv, (size_t)cap * sizeof(*kv));
        if (!kv) goto fail_mem;
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *copy = strdup(key);
    if (!copy) goto fail_mem;
    w->kv[w->n_kv++] = (struct wkv){copy, *val};
    if (windex_add(&w->kv_index, w->kv, sizeof(*w->kv), w->n_kv) != 0) {
        w->n_kv--;
        free(copy);
        goto fail_mem;
    }
    return 0;
fail_mem:
    free(val->p);
    return w_fail(w, TT_ENOMEM, "out of memory adding metadata key '%.120s'", key);
}

int gguf_writer_set_value(struct gguf_writer *w, const char *key, const struct gguf_value *v)
{
    struct bytes val = {0};
    int rc;
    if ((rc = w_check(w, WSTATE_SETUP, "gguf_writer_set_*"))) return rc;
    if ((rc = check_key(w, key))) return rc;
    TT_ASSERT(v);
    if ((unsigned)v->type >= GGUF_TYPE_COUNT)
        return w_fail(w, TT_EINVAL, "key '%s': value type %d is unknown", key, (int)v->type);
    if ((rc = take_alignment(w, key, v))) return rc;
    if (bytes_u32(&val, (uint32_t)v->type)) {
        rc = w_fail(w, TT_ENOMEM, "key '%s': out of memory", key);
        goto fail_val;
    }
    if ((rc = ser_value(w, &val, v, 0, key))) goto fail_val;
    return store_kv(w, key, &val);
fail_val:
    free(val.p);
    return rc;
}

int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    struct gguf_value val = {.type = GGUF_TYPE_UINT32, .u = v};
    return gguf_writer_set_value(w, key, &val);
}

int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v)
{
    struct gguf_value val = {.type = GGUF_TYPE_INT32, .i = v};
    return gguf_writer_set_value(w, key, &val);
}

int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v)
{
    struct gguf_value val = {.type = GGUF_TYPE_FLOAT32, .f = v};
    return gguf_writer_set_value(w, key, &val);
}

int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v)
{
    struct gguf_value val = {.type = GGUF_TYPE_BOOL, .b = v};
    return gguf_writer_set_value(w, key, &val);
}

int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v)
{
    struct gguf_value val = {.type = GGUF_TYPE_STRING};
    val.s.data = v;
    val.s.len = v ? strlen(v) : 0;
    if (!v) {
        int rc = w_check(w, WSTATE_SETUP, "gguf_writer_set_str");
        return rc ? rc : w_fail(w, TT_EINVAL, "key '%.120s': NULL string", key ? key : "");
    }
    return gguf_writer_set_value(w, key, &val);
}

int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem_type,
                        const void *data, uint64_t n)
{
    int rc = w_check(w, WSTATE_SETUP, "gguf_writer_set_arr");
    if (rc) return rc;
    if (gguf_vtype_size(elem_type) == 0)
        return w_fail(w, TT_EINVAL,
                      "key '%.120s': gguf_writer_set_arr takes scalar elements, "
                      "not %s",
                      key ? key : "", gguf_vtype_name(elem_type));
    struct gguf_value val = {.type = GGUF_TYPE_ARRAY};
    val.arr.type = elem_type;
    val.arr.n = n;
    val.arr.raw = data;
    return gguf_writer_set_value(w, key, &val);
}

int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key, const char *const *strs,
                            uint64_t n)
{
    struct bytes val = {0};
    int rc;
    if ((rc = w_check(w, WSTATE_SETUP, "gguf_writer_set_arr_str"))) return rc;
    if ((rc = check_key(w, key))) return rc;
    if (n > GGUF_ARRAY_MAX || (n && !strs))
        return w_fail(w, TT_EINVAL, "key '%s': %" PRIu64 " strings (limit %llu) or no data", key, n,
                      GGUF_ARRAY_MAX);
    if (bytes_u32(&val, GGUF_TYPE_ARRAY) || bytes_u32(&val, GGUF_TYPE_STRING) || bytes_u64(&val, n))
        goto fail_mem;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = strs[i] ? strlen(strs[i]) : 0;
        if (!strs[i] || len > GGUF_STRING_MAX) {
            rc = w_fail(w, TT_EINVAL, "key '%s': string %" PRIu64 " is NULL or over %u bytes", key,
                        i, GGUF_STRING_MAX);
            goto fail_val;
        }
        if (bytes_str(&val, strs[i], len)) goto fail_mem;
    }
    return store_kv(w, key, &val);
fail_mem:
    rc = w_fail(w, TT_ENOMEM, "key '%s': out of memory", key);
fail_val:
    free(val.p);
    return rc;
}

int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_file *src, const char *prefix)
{
    int rc = w_check(w, WSTATE_SETUP, "gguf_writer_copy_kv");
    size_t plen = prefix ? strlen(prefix) : 0;
    TT_ASSERT(src);
    for (uint64_t i = 0; i < src->n_kv && !rc; i++)
        if (strncmp(src->kv[i].key, prefix ? prefix : "", plen) == 0)
            rc = gguf_writer_set_value(w, src->kv[i].key, &src->kv[i].value);
    return rc;
}

/* ---- tensors ---- */

static int grow_tensors(struct gguf_writer *w)
{
    if (w->n_tensors < w->cap_tensors) return 0;
    uint64_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
    struct wtensor *t = realloc(w->tensors, (size_t)cap * sizeof(*t));
    if (!t) return TT_ENOMEM;
    w->tensors = t;
    w->cap_tensors = cap;
    return 0;
}

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t n_dims,
                           const int64_t *ne, uint32_t type)
{
    struct wtensor t = {.n_dims = n_dims, .type = type, .ne = {1, 1, 1, 1}};
    char msg[512];
    uint64_t bad;
    int rc;
    if ((rc = w_check(w, WSTATE_SETUP, "gguf_writer_add_tensor"))) return rc;
    const char *why =
        name ? gguf_name_problem_(name, strlen(name), GGUF_NAME_MAX, &bad) : "is NULL";
    if (why) return w_fail(w, TT_EINVAL, "tensor name '%.120s' %s", name ? name : "", why);
    if (n_dims < 1 || n_dims > GGUF_DIMS_MAX || !ne)
        return w_fail(w, TT_EINVAL, "tensor '%s': n_dims %" PRIu32 " is not in 1..%d", name, n_dims,
                      GGUF_DIMS_MAX);
    memcpy(t.ne, ne, n_dims * sizeof(*ne));
    if ((rc = gguf_tensor_check_(type, n_dims, t.ne, &t.size_bytes, msg, sizeof(msg))))
        return w_fail(w, rc == TT_EFORMAT ? TT_EINVAL : rc, "tensor '%s': %s", name, msg);
    if (windex_find(&w->tensor_index, w->tensors, sizeof(*w->tensors), name) >= 0)
        return w_fail(w, TT_EINVAL, "tensor '%s' added twice", name);
    if (w->n_tensors >= GGUF_TENSORS_MAX)
        return w_fail(w, TT_EINVAL, "more than %d tensors", GGUF_TENSORS_MAX);
    if (grow_tensors(w) || !(t.name = strdup(name))) goto fail_mem;
    w->tensors[w->n_tensors++] = t;
    if (windex_add(&w->tensor_index, w->tensors, sizeof(*w->tensors), w->n_tensors) != 0) {
        w->n_tensors--;
        free(t.name);
        goto fail_mem;
    }
    return 0;
fail_mem:
    return w_fail(w, TT_ENOMEM, "out of memory adding tensor '%s'", name);
}

/* ---- file output ---- */

static int write_all(struct gguf_writer *w, const void *data, uint64_t n)
{
    const uint8_t *p = data;
    while (n) {
        ssize_t k = write(w->fd, p, (size_t)TT_MIN(n, (uint64_t)WCHUNK_BYTES));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            return w_fail(w, TT_EIO, "writing '%s' failed: %s", w->tmp_path,
                          k < 0 ? strerror(errno) : "no progress");
        p += k;
        n -= (uint64_t)k;
    }
    return 0;
}

static int w_flush(struct gguf_writer *w)
{
    int rc = write_all(w, w->buf, w->buf_n);
    w->buf_n = 0;
    return rc;
}

/* Append bytes: small ones are staged, large ones go straight to the file. */
static int w_put(struct gguf_writer *w, const void *data, uint64_t n)
{
    int rc;
    w->file_pos += n;
    if (n <= WBUF_BYTES - w->buf_n) {
        if (n) memcpy(w->buf + w->buf_n, data, n);
        w->buf_n += n;
        return 0;
    }
    if ((rc = w_flush(w))) return rc;
    if (n >= WBUF_BYTES / 2) return write_all(w, data, n);
    memcpy(w->buf, data, n);
    w->buf_n = n;
    return 0;
}

/* Zeros up to the next multiple of the alignment. */
static int w_pad(struct gguf_writer *w)
{
    static const uint8_t zeros[GGUF_ALIGNMENT_MAX];
    uint64_t pad = (w->alignment - w->file_pos % w->alignment) % w->alignment;
    return w_put(w, zeros, pad);
}

static int w_put_u32(struct gguf_writer *w, uint32_t v)
{
    return w_put(w, &v, 4);
}
static int w_put_u64(struct gguf_writer *w, uint64_t v)
{
    return w_put(w, &v, 8);
}

static int w_put_str(struct gguf_writer *w, const char *s)
{
    uint64_t len = strlen(s);
    int rc = w_put_u64(w, len);
    return rc ? rc : w_put(w, s, len);
}

static int write_header(struct gguf_writer *w)
{
    int rc = w_put(w, GGUF_MAGIC, 4);
    if (!rc) rc = w_put_u32(w, 3);
    if (!rc) rc = w_put_u64(w, w->n_tensors);
    if (!rc) rc = w_put_u64(w, w->n_kv);
    for (uint64_t i = 0; i < w->n_kv && !rc; i++) {
        rc = w_put_str(w, w->kv[i].key);
        if (!rc) rc = w_put(w, w->kv[i].val.p, w->kv[i].val.n);
    }
    for (uint64_t i = 0; i < w->n_tensors && !rc; i++) {
        const struct wtensor *t = &w->tensors[i];
        rc = w_put_str(w, t->name);
        if (!rc) rc = w_put_u32(w, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims && !rc; d++)
            rc = w_put_u64(w, (uint64_t)t->ne[d]);
        if (!rc) rc = w_put_u32(w, t->type);
        if (!rc) rc = w_put_u64(w, t->offset);
    }
    return rc ? rc : w_pad(w);
}

/* Offsets: each tensor's size rounded up to the alignment. */
static int assign_offsets(struct gguf_writer *w)
{
    uint64_t off = 0, a = w->alignment;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        struct wtensor *t = &w->tensors[i];
        t->offset = off;
        if (__builtin_add_overflow(off, t->size_bytes, &off) ||
            __builtin_add_overflow(off, a - 1, &off))
            return w_fail(w, TT_EINVAL, "total tensor data size overflows at tensor '%s'", t->name);
        off = off / a * a;
    }
    return 0;
}

int gguf_writer_begin(struct gguf_writer *w, const char *path)
{
    int rc = w_check(w, WSTATE_SETUP, "gguf_writer_begin");
    if (rc) return rc;
    if (!path || !*path) return w_fail(w, TT_EINVAL, "gguf_writer_begin: empty path");
    if ((rc = assign_offsets(w))) return rc;
    size_t len = strlen(path);
    w->path = strdup(path);
    w->tmp_path = malloc(len + 5);
    w->buf = malloc(WBUF_BYTES);
    if (!w->path || !w->tmp_path || !w->buf)
        return w_fail(w, TT_ENOMEM, "out of memory starting to write '%s'", path);
    memcpy(w->tmp_path, path, len);
    memcpy(w->tmp_path + len, ".tmp", 5);
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) return w_fail(w, TT_EIO, "cannot create '%s': %s", w->tmp_path, strerror(errno));
    w->tmp_exists = true;
    w->state = WSTATE_DATA;
    return write_header(w);
}

int gguf_writer_write_tensor(struct gguf_writer *w, const void *data, uint64_t size_bytes)
{
    int rc = w_check(w, WSTATE_DATA, "gguf_writer_write_tensor");
    if (rc) return rc;
    if (w->next_tensor >= w->n_tensors)
        return w_fail(w, TT_EINVAL,
                      "gguf_writer_write_tensor: all %" PRIu64 " tensors are "
                      "already written",
                      w->n_tensors);
    const struct wtensor *t = &w->tensors[w->next_tensor];
    if (size_bytes != t->size_bytes || (size_bytes && !data))
        return w_fail(w, TT_EINVAL,
                      "tensor %" PRIu64 " '%s': got %" PRIu64 " bytes, its shape "
                      "and type need %" PRIu64,
                      w->next_tensor, t->name, size_bytes, t->size_bytes);
    if ((rc = w_put(w, data, size_bytes)) || (rc = w_pad(w))) return rc;
    w->next_tensor++;
    return 0;
}

int gguf_writer_finish(struct gguf_writer *w)
{
    int rc = w_check(w, WSTATE_DATA, "gguf_writer_finish");
    if (rc) return rc;
    if (w->next_tensor != w->n_tensors)
        return w_fail(w, TT_EINVAL,
                      "gguf_writer_finish: only %" PRIu64 " of %" PRIu64 " tensors written",
                      w->next_tensor, w->n_tensors);
    if ((rc = w_flush(w))) return rc;
    if (fsync(w->fd) != 0 && errno != EINVAL && errno != EROFS)
        return w_fail(w, TT_EIO, "syncing '%s' failed: %s", w->tmp_path, strerror(errno));
    rc = close(w->fd);
    w->fd = -1;
    if (rc != 0) return w_fail(w, TT_EIO, "closing '%s' failed: %s", w->tmp_path, strerror(errno));
    if (rename(w->tmp_path, w->path) != 0)
        return w_fail(w, TT_EIO, "cannot rename '%s' to '%s': %s", w->tmp_path, w->path,
                      strerror(errno));
    w->tmp_exists = false;
    w->state = WSTATE_DONE;
    return 0;
}
