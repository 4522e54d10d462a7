/*
 * gguf: reading and writing GGUF files (versions 2 and 3).
 *
 * File layout (little-endian):
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to `general.alignment` (default 32)
 *   tensor data; each tensor at data_start + offset, offset a multiple of alignment
 * string = u64 length + bytes (no NUL). value = scalar of its type, a string, or
 * array = u32 element_type + u64 count + elements (arrays may nest).
 *
 * The reader maps the file read-only and validates everything before use:
 * every count, length and dimension is checked against the GGUF_*_MAX limits
 * and the bytes left in the file; tensor types must be known; tensor data must
 * lie inside the file, be aligned and not overlap; keys and names must be
 * valid UTF-8 and unique. A malformed file fails with TT_EFORMAT (or
 * TT_EUNSUPPORTED for a valid but unsupported version/type) and a detail
 * message in tt_error_detail() saying what is wrong and at which byte offset.
 *
 * Ownership: a struct gguf_file owns its map and its parsed tables; all
 * pointers it hands out (strings, arrays, tensor data) stay valid until
 * gguf_close(). Strings are copied NUL-terminated into an internal pool.
 */
#ifndef TT_GGUF_H
#define TT_GGUF_H

#include "../base/base.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_KV_MAX 1000000          /* metadata entries */
#define GGUF_TENSORS_MAX 1000000     /* tensors */
#define GGUF_STRING_MAX (1u << 24)   /* bytes in one string (16 MiB) */
#define GGUF_ARRAY_MAX (1ull << 28)  /* elements in one array */
#define GGUF_NESTING_MAX 8           /* array of array of ... */
#define GGUF_DIMS_MAX 4
#define GGUF_NAME_MAX 256            /* bytes in a tensor name */
#define GGUF_ALIGNMENT_MAX (1u << 16)

enum gguf_vtype {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
};

struct gguf_value {
    enum gguf_vtype type;
    union {
        uint64_t u;        /* UINT8/16/32/64 */
        int64_t i;         /* INT8/16/32/64 */
        double f;          /* FLOAT32/64 */
        bool b;            /* BOOL */
        struct {
            const char *data; /* NUL-terminated copy; may contain NULs inside */
            uint64_t len;
        } s;               /* STRING */
        struct {
            enum gguf_vtype type;  /* element type */
            uint64_t n;            /* element count */
            /* numeric/bool elements: packed little-endian, in the map, possibly
             * unaligned: read them with gguf_arr_f64/gguf_arr_i64 or memcpy.
             * Bool elements are validated to be 0 or 1. */
            const void *raw;
            const struct gguf_value *elems; /* STRING and ARRAY elements: n parsed values */
        } arr;             /* ARRAY */
    };
};

struct gguf_kv {
    const char *key; /* NUL-terminated, valid UTF-8 */
    struct gguf_value value;
};

struct gguf_tensor {
    const char *name;        /* NUL-terminated */
    uint32_t n_dims;
    int64_t ne[GGUF_DIMS_MAX]; /* ne[0] is the row length (contiguous); unused dims are 1 */
    uint32_t type;           /* enum tt_type; validated to be a known type */
    uint64_t offset;         /* from the start of the data section */
    const void *data;        /* in the map */
    uint64_t size_bytes;
};

struct gguf_file {
    const uint8_t *map;  /* whole file, read-only */
    uint64_t size_bytes;
    bool owns_map;       /* false for gguf_parse_buffer */
    uint32_t version;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset; /* start of the tensor data section */
    void *pool;           /* internal: string and array storage */
};

/* Map and parse `path`. On failure returns a TT_E* code, sets the error
 * detail, and leaves `f` zeroed (gguf_close is still safe). Codes:
 * TT_ENOTFOUND (no such file), TT_EIO (cannot open or map), TT_EFORMAT
 * (malformed), TT_EUNSUPPORTED (version 1 or >3, big-endian, tensor type),
 * TT_ENOMEM. The detail starts with the path. Tables are indexed by hash, so
 * gguf_find_kv and gguf_find_tensor take constant time. */
int gguf_open(struct gguf_file *f, const char *path);
/* Parse an in-memory image (not copied; must outlive f). Same checks. */
int gguf_parse_buffer(struct gguf_file *f, const void *buf, uint64_t size_bytes);
void gguf_close(struct gguf_file *f);

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);
/* Typed getters: return 0, TT_ENOTFOUND if the key is absent, or TT_EFORMAT
 * (with detail) if it has the wrong type or is out of the target's range.
 * Integer getters accept any integer type whose value fits; gguf_get_f32
 * accepts FLOAT32, FLOAT64 (if it fits a float) and integers. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out);
int gguf_get_str(const struct gguf_file *f, const char *key, const char **out);
/* An array value with the given element type (GGUF_TYPE_COUNT = any). */
int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype elem_type,
                 const struct gguf_value **out);
/* Element i of a numeric array as double / int64. */
double gguf_arr_f64(const struct gguf_value *arr, uint64_t i);
int64_t gguf_arr_i64(const struct gguf_value *arr, uint64_t i);

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);
const char *gguf_vtype_name(enum gguf_vtype t);
/* Bytes of one element of a scalar type (1, 2, 4 or 8); 0 for STRING, ARRAY
 * and ids outside the enum. */
size_t gguf_vtype_size(enum gguf_vtype t);

/* ---- writer ----
 * Usage: init; set metadata; add tensor infos (all of them, in file order);
 * begin(path) writes the header to "<path>.tmp"; write each tensor's data in
 * the same order; finish() pads, flushes and renames onto `path`, so an
 * interrupted write never leaves a truncated file under the final name.
 * Any error is sticky: later calls return it; free() removes the temp file.
 * Setting a key twice replaces its value. Tensor data is padded with zeros to
 * the alignment, 32 unless "general.alignment" is set (a uint32 power of two
 * <= GGUF_ALIGNMENT_MAX, set before begin); the key is written only if set.
 * Data passes straight from the caller's buffer to the file, so files of any
 * size are written with a small fixed buffer. Errors: TT_EINVAL (bad key,
 * name, shape, order of calls, size), TT_EUNSUPPORTED (tensor type),
 * TT_EIO (file system, with the path and the system's reason), TT_ENOMEM. */
struct gguf_writer;
struct gguf_writer *gguf_writer_create(void);
void gguf_writer_free(struct gguf_writer *w);
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v);
/* Array of n elements of a scalar type, packed little-endian in `data`. */
int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem_type,
                        const void *data, uint64_t n);
int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key, const char *const *strs,
                            uint64_t n);
/* Any value, including scalar types without a setter of their own and nested
 * arrays (elements of STRING/ARRAY arrays in `elems`, each of the element
 * type; numeric elements packed in `raw`). The value is copied. */
int gguf_writer_set_value(struct gguf_writer *w, const char *key, const struct gguf_value *v);
/* Copy every metadata entry of `src` whose key starts with `prefix`. */
int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_file *src, const char *prefix);
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t n_dims,
                           const int64_t *ne, uint32_t type);
int gguf_writer_begin(struct gguf_writer *w, const char *path);
/* Data of the next tensor; size must equal its computed size. */
int gguf_writer_write_tensor(struct gguf_writer *w, const void *data, uint64_t size_bytes);
int gguf_writer_finish(struct gguf_writer *w);

#endif
