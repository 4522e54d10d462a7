/*
 * test_gguf.c: the GGUF reader and writer.
 *
 * Three sources of files: the writer (round trips of every metadata type,
 * nested arrays and every tensor type), a byte-level image builder in this
 * file that does not share code with the writer (so the reader is checked
 * against an independent encoding, and malformed files are made by patching
 * named fields of a valid image), and the reference models in ../shared.
 * Malformed inputs are parsed from exact-size heap copies, so under
 * ASan (make DEBUG=1 test) any read past the end is caught.
 */
#include <dirent.h>
#include <inttypes.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "quant/quant.h"
#include "test.h"

/* ---- scratch directory ---- */

static char tmp_dir[64];

/* At exit: delete whatever a failed case left, then the directory. */
static void tmp_dir_remove(void)
{
    DIR *dir = opendir(tmp_dir);
    struct dirent *e;
    char path[512];
    while (dir && (e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof(path), "%s/%s", tmp_dir, e->d_name);
        unlink(path);
    }
    if (dir) closedir(dir);
    rmdir(tmp_dir);
}

static const char *tmp_path(const char *name)
{
    static char buf[4][256];
    static int slot;
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/tt_gguf_XXXXXX");
        if (!mkdtemp(tmp_dir)) abort();
        atexit(tmp_dir_remove);
    }
    char *out = buf[slot++ % 4];
    snprintf(out, sizeof(buf[0]), "%s/%s", tmp_dir, name);
    return out;
}

/* ---- an independent image builder, with named marks on fields ---- */

struct img {
    uint8_t *b;
    size_t n, cap;
    struct {
        const char *name;
        size_t at;
    } marks[64];
    int n_marks;
};

static void put(struct img *m, const void *p, size_t n)
{
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2 + 256;
        m->b = realloc(m->b, m->cap);
        if (!m->b) abort();
    }
    memcpy(m->b + m->n, p, n);
    m->n += n;
}
static void put_u8(struct img *m, uint8_t v)
{
    put(m, &v, 1);
}
static void put_u32(struct img *m, uint32_t v)
{
    put(m, &v, 4);
}
static void put_u64(struct img *m, uint64_t v)
{
    put(m, &v, 8);
}
static void put_str(struct img *m, const char *s)
{
    put_u64(m, strlen(s));
    put(m, s, strlen(s));
}
static void mark(struct img *m, const char *name)
{
    m->marks[m->n_marks].name = name;
    m->marks[m->n_marks++].at = m->n;
}
static size_t at(const struct img *m, const char *name)
{
    for (int i = 0; i < m->n_marks; i++)
        if (!strcmp(m->marks[i].name, name)) return m->marks[i].at;
    fprintf(stderr, "no mark %s\n", name);
    abort();
}
static void pad_to(struct img *m, size_t a)
{
    while (m->n % a)
        put_u8(m, 0);
}

/* A key whose length field and first byte are marked "<name>_len", "<name>". */
static void put_key(struct img *m, const char *key, const char *name, char *len_name)
{
    snprintf(len_name, 32, "%s_len", name);
    mark(m, len_name);
    put_u64(m, strlen(key));
    mark(m, name);
    put(m, key, strlen(key));
}

/* Array nested `depth` deep: [[...[i8 7]...]]. */
static void put_nest(struct img *m, int depth)
{
    if (depth == 1) {
        put_u32(m, GGUF_TYPE_INT8);
        put_u64(m, 1);
        put_u8(m, 7);
        return;
    }
    put_u32(m, GGUF_TYPE_ARRAY);
    put_u64(m, 1);
    put_nest(m, depth - 1);
}

static char len_names[16][32];

static void build_kvs(struct img *m, int nest_depth)
{
    put_key(m, "general.architecture", "k0", len_names[0]);
    put_u32(m, GGUF_TYPE_STRING);
    put_str(m, "llama");
    put_key(m, "general.alignment", "k1", len_names[1]);
    mark(m, "align_type");
    put_u32(m, GGUF_TYPE_UINT32);
    mark(m, "align_val");
    put_u32(m, 32);
    put_key(m, "test.k01", "k01", len_names[2]);
    mark(m, "k01_type");
    put_u32(m, GGUF_TYPE_UINT32);
    put_u32(m, 12345);
    put_key(m, "test.k02", "k02", len_names[3]);
    put_u32(m, GGUF_TYPE_BOOL);
    mark(m, "bool_val");
    put_u8(m, 1);
    put_key(m, "test.arr", "k04", len_names[4]);
    put_u32(m, GGUF_TYPE_ARRAY);
    mark(m, "arr_etype");
    put_u32(m, GGUF_TYPE_UINT32);
    mark(m, "arr_n");
    put_u64(m, 3);
    for (uint32_t i = 0; i < 3; i++)
        put_u32(m, 100 + i);
    put_key(m, "test.strs", "k05", len_names[5]);
    put_u32(m, GGUF_TYPE_ARRAY);
    put_u32(m, GGUF_TYPE_STRING);
    mark(m, "strs_n");
    put_u64(m, 2);
    mark(m, "str0_len");
    put_str(m, "alpha");
    put_str(m, "");
    put_key(m, "test.nested", "k06", len_names[6]);
    put_u32(m, GGUF_TYPE_ARRAY);
    put_nest(m, nest_depth);
}

static void put_tensor_info(struct img *m, int i, const char *name, uint32_t n_dims,
                            const uint64_t *ne, uint32_t type, uint64_t offset)
{
    static char names[3][6][16];
    static const char *const fields[6] = {"name_len", "name", "ndims", "ne0", "type", "off"};
    for (int k = 0; k < 6; k++)
        snprintf(names[i][k], 16, "t%d_%s", i, fields[k]);
    mark(m, names[i][0]);
    put_u64(m, strlen(name));
    mark(m, names[i][1]);
    put(m, name, strlen(name));
    mark(m, names[i][2]);
    put_u32(m, n_dims);
    mark(m, names[i][3]);
    for (uint32_t d = 0; d < n_dims; d++)
        put_u64(m, ne[d]);
    mark(m, names[i][4]);
    put_u32(m, type);
    mark(m, names[i][5]);
    put_u64(m, offset);
}

/* Valid image: 7 kvs, 3 tensors (f32 [8,4] at 0, q8_0 [64] at 128, q4_0 [32,2]
 * at 224), alignment 32. Marks "data" at the data section. */
static void build_image(struct img *m, int nest_depth)
{
    memset(m, 0, sizeof(*m));
    put(m, "GGUF", 4);
    mark(m, "version");
    put_u32(m, 3);
    mark(m, "n_tensors");
    put_u64(m, 3);
    mark(m, "n_kv");
    put_u64(m, 7);
    mark(m, "kvs");
    build_kvs(m, nest_depth);
    mark(m, "infos");
    put_tensor_info(m, 0, "tok.weight", 2, (uint64_t[]){8, 4}, TT_TYPE_F32, 0);
    put_tensor_info(m, 1, "out.weight", 1, (uint64_t[]){64}, TT_TYPE_Q8_0, 128);
    put_tensor_info(m, 2, "q40.weight", 2, (uint64_t[]){32, 2}, TT_TYPE_Q4_0, 224);
    mark(m, "infos_end");
    pad_to(m, 32);
    mark(m, "data");
    for (int i = 0; i < 260; i++)
        put_u8(m, (uint8_t)(i * 7));
    pad_to(m, 32);
}

static void patch_u32(struct img *m, const char *name, uint32_t v)
{
    memcpy(m->b + at(m, name), &v, 4);
}
static void patch_u64(struct img *m, const char *name, uint64_t v)
{
    memcpy(m->b + at(m, name), &v, 8);
}
static void patch_bytes(struct img *m, const char *name, const char *bytes, size_t n)
{
    memcpy(m->b + at(m, name), bytes, n);
}

/* Parse an exact-size heap copy of buf[0..n). */
static int parse_copy(struct gguf_file *f, const uint8_t *buf, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    if (n) memcpy(copy, buf, n);
    tt_error_clear();
    int rc = gguf_parse_buffer(f, copy, n);
    if (rc == 0) {
        /* The map must outlive f: keep checks here, then release both. */
        for (uint64_t i = 0; i < f->n_tensors; i++) {
            const uint8_t *d = f->tensors[i].data;
            CHECK(d >= copy && d + f->tensors[i].size_bytes <= copy + n);
        }
    }
    gguf_close(f);
    free(copy);
    return rc;
}

/* Expect failure `want` whose detail contains `needle` (if any). */
static void expect_fail_(const struct img *m, size_t n, int want, const char *needle, int line)
{
    struct gguf_file f;
    int rc = parse_copy(&f, m->b, n);
    const char *d = tt_error_detail();
    if (getenv("TT_TEST_VERBOSE")) fprintf(stderr, "  line %d: %s\n", line, d);
    if (rc != want || !d[0] || (needle && !strstr(d, needle))) {
        fprintf(stderr, "  line %d: rc %d (want %d), detail \"%s\" (want \"%s\")\n", line, rc, want,
                d, needle ? needle : "");
        test_failed_ = 1;
    }
    CHECK(f.kv == NULL && f.tensors == NULL && f.n_kv == 0 && f.pool == NULL);
    gguf_close(&f); /* twice is safe */
}
#define expect_fail(m, want, needle) expect_fail_(m, (m)->n, want, needle, __LINE__)

/* ---- value comparison ---- */

static int values_equal(const struct gguf_value *a, const struct gguf_value *b)
{
    if (a->type != b->type) return 0;
    switch (a->type) {
    case GGUF_TYPE_STRING:
        return a->s.len == b->s.len && !memcmp(a->s.data, b->s.data, a->s.len);
    case GGUF_TYPE_BOOL:
        return a->b == b->b;
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64:
        return a->f == b->f;
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        return a->i == b->i;
    case GGUF_TYPE_ARRAY:
        if (a->arr.type != b->arr.type || a->arr.n != b->arr.n) return 0;
        if (gguf_vtype_size(a->arr.type))
            return !a->arr.n ||
                   !memcmp(a->arr.raw, b->arr.raw, a->arr.n * gguf_vtype_size(a->arr.type));
        for (uint64_t i = 0; i < a->arr.n; i++)
            if (!values_equal(&a->arr.elems[i], &b->arr.elems[i])) return 0;
        return 1;
    default:
        return a->u == b->u;
    }
}

/* ---- round trip through the writer ---- */

static struct gguf_value v_str(const char *s, uint64_t len)
{
    struct gguf_value v = {.type = GGUF_TYPE_STRING};
    v.s.data = s;
    v.s.len = len;
    return v;
}

static struct gguf_value v_arr(enum gguf_vtype et, uint64_t n, const void *raw,
                               const struct gguf_value *elems)
{
    struct gguf_value v = {.type = GGUF_TYPE_ARRAY};
    v.arr.type = et;
    v.arr.n = n;
    v.arr.raw = raw;
    v.arr.elems = elems;
    return v;
}

/* Every scalar type and numeric array type; returns how many keys were set. */
static int set_scalars(struct gguf_writer *w)
{
    struct gguf_value v;
    int n = 0;
#define SETV(key, ty, field, val)                                                                  \
    do {                                                                                           \
        v = (struct gguf_value){.type = ty, .field = val};                                         \
        n++;                                                                                       \
        CHECK_EQ_INT(gguf_writer_set_value(w, key, &v), 0);                                        \
    } while (0)
    SETV("t.u8", GGUF_TYPE_UINT8, u, 200);
    SETV("t.i8", GGUF_TYPE_INT8, i, -100);
    SETV("t.u16", GGUF_TYPE_UINT16, u, 60000);
    SETV("t.i16", GGUF_TYPE_INT16, i, -30000);
    SETV("t.u64", GGUF_TYPE_UINT64, u, (1ull << 63) + 5);
    SETV("t.i64", GGUF_TYPE_INT64, i, -(1ll << 62));
    SETV("t.f64", GGUF_TYPE_FLOAT64, f, 1e300);
#undef SETV
    CHECK_EQ_INT(gguf_writer_set_u32(w, "t.u32", 4000000000u), 0);
    CHECK_EQ_INT(gguf_writer_set_i32(w, "t.i32", -2000000000), 0);
    CHECK_EQ_INT(gguf_writer_set_f32(w, "t.f32", 3.25f), 0);
    CHECK_EQ_INT(gguf_writer_set_bool(w, "t.bool", true), 0);
    CHECK_EQ_INT(gguf_writer_set_str(w, "t.str", "h\xc3\xa9llo \xe2\x9c\x93"), 0);
    CHECK_EQ_INT(gguf_writer_set_str(w, "t.empty", ""), 0);
    v = v_str("a\0b", 3);
    CHECK_EQ_INT(gguf_writer_set_value(w, "t.nul", &v), 0);
    CHECK_EQ_INT(gguf_writer_set_u32(w, "t.over", 1), 0);
    CHECK_EQ_INT(gguf_writer_set_u32(w, "t.over", 2), 0); /* replaces */
    n += 8;
    static const uint8_t u8s[] = {0, 255, 7};
    static const int16_t i16s[] = {-32768, 32767};
    static const uint32_t u32s[] = {1, 2, 3, 4};
    static const int64_t i64s[] = {INT64_MIN, INT64_MAX};
    static const float f32s[] = {0.5f, -1.0f, 1e-30f};
    static const double f64s[] = {2.5, -1e-300};
    static const uint8_t bools[] = {1, 0, 1};
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.u8", GGUF_TYPE_UINT8, u8s, 3), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.i16", GGUF_TYPE_INT16, i16s, 2), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.u32", GGUF_TYPE_UINT32, u32s, 4), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.i64", GGUF_TYPE_INT64, i64s, 2), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.f32", GGUF_TYPE_FLOAT32, f32s, 3), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.f64", GGUF_TYPE_FLOAT64, f64s, 2), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.bool", GGUF_TYPE_BOOL, bools, 3), 0);
    CHECK_EQ_INT(gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_UINT32, NULL, 0), 0);
    static const char *const strs[] = {"one", "", "\xe4\xb8\x89", "four"};
    CHECK_EQ_INT(gguf_writer_set_arr_str(w, "a.str", strs, 4), 0);
    return n + 9;
}

/* Nested arrays: [[1,2,3],[],[4]] of i32; [["a","bc"],["d"]]; 8 levels deep. */
static int set_nested(struct gguf_writer *w)
{
    static const int32_t i32s[] = {1, 2, 3, 4};
    struct gguf_value rows[3] = {v_arr(GGUF_TYPE_INT32, 3, i32s, NULL),
                                 v_arr(GGUF_TYPE_INT32, 0, NULL, NULL),
                                 v_arr(GGUF_TYPE_INT32, 1, i32s + 3, NULL)};
    struct gguf_value v = v_arr(GGUF_TYPE_ARRAY, 3, NULL, rows);
    CHECK_EQ_INT(gguf_writer_set_value(w, "n.i32", &v), 0);
    struct gguf_value s0[2] = {v_str("a", 1), v_str("bc", 2)}, s1[1] = {v_str("d", 1)};
    struct gguf_value srows[2] = {v_arr(GGUF_TYPE_STRING, 2, NULL, s0),
                                  v_arr(GGUF_TYPE_STRING, 1, NULL, s1)};
    v = v_arr(GGUF_TYPE_ARRAY, 2, NULL, srows);
    CHECK_EQ_INT(gguf_writer_set_value(w, "n.str", &v), 0);
    static const double leaf[] = {42.0};
    struct gguf_value chain[GGUF_NESTING_MAX];
    chain[0] = v_arr(GGUF_TYPE_FLOAT64, 1, leaf, NULL);
    for (int d = 1; d < GGUF_NESTING_MAX; d++)
        chain[d] = v_arr(GGUF_TYPE_ARRAY, 1, NULL, &chain[d - 1]);
    CHECK_EQ_INT(gguf_writer_set_value(w, "n.deep", &chain[GGUF_NESTING_MAX - 1]), 0);
    return 3;
}

struct tspec {
    const char *name;
    uint32_t n_dims;
    int64_t ne[4];
    uint32_t type;
    uint64_t size;
};

static const struct tspec tspecs[] = {
    {"f32", 2, {4, 3}, TT_TYPE_F32, 48},
    {"f16", 1, {8}, TT_TYPE_F16, 16},
    {"q4_0", 2, {64, 2}, TT_TYPE_Q4_0, 4 * 18},
    {"q8_0", 3, {32, 1, 2}, TT_TYPE_Q8_0, 2 * 34},
    {"q4_k", 2, {256, 2}, TT_TYPE_Q4_K, 2 * 144},
    {"q5_k", 1, {256}, TT_TYPE_Q5_K, 176},
    {"q6_k", 4, {256, 1, 1, 2}, TT_TYPE_Q6_K, 2 * 210},
    {"bf16", 4, {2, 2, 2, 2}, TT_TYPE_BF16, 32},
};
#define N_TSPECS ((int)TT_ARRAY_LEN(tspecs))

static void fill_bytes(uint8_t *p, uint64_t n, uint32_t seed)
{
    for (uint64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

static int write_roundtrip_file(const char *path, uint32_t alignment)
{
    struct gguf_writer *w = gguf_writer_create();
    uint8_t data[1024];
    int n_kv = set_scalars(w) + set_nested(w);
    if (alignment) {
        CHECK_EQ_INT(gguf_writer_set_u32(w, "general.alignment", alignment), 0);
        n_kv++;
    }
    for (int i = 0; i < N_TSPECS; i++)
        CHECK_EQ_INT(gguf_writer_add_tensor(w, tspecs[i].name, tspecs[i].n_dims, tspecs[i].ne,
                                            tspecs[i].type),
                     0);
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    for (int i = 0; i < N_TSPECS; i++) {
        fill_bytes(data, tspecs[i].size, (uint32_t)i);
        CHECK_EQ_INT(gguf_writer_write_tensor(w, data, tspecs[i].size), 0);
    }
    CHECK_EQ_INT(gguf_writer_finish(w), 0);
    gguf_writer_free(w);
    return n_kv;
}

static void check_scalars(const struct gguf_file *f)
{
    const struct gguf_kv *kv;
    uint32_t u32;
    int64_t i64;
    float f32;
    bool b;
    const char *s;
#define KV(key) ((kv = gguf_find_kv(f, key)) ? &kv->value : &(struct gguf_value){0})
    CHECK(KV("t.u8")->type == GGUF_TYPE_UINT8 && kv->value.u == 200);
    CHECK(KV("t.i8")->type == GGUF_TYPE_INT8 && kv->value.i == -100);
    CHECK(KV("t.u16")->type == GGUF_TYPE_UINT16 && kv->value.u == 60000);
    CHECK(KV("t.i16")->type == GGUF_TYPE_INT16 && kv->value.i == -30000);
    CHECK(KV("t.u64")->type == GGUF_TYPE_UINT64 && kv->value.u == (1ull << 63) + 5);
    CHECK(KV("t.i64")->type == GGUF_TYPE_INT64 && kv->value.i == -(1ll << 62));
    CHECK(KV("t.f64")->type == GGUF_TYPE_FLOAT64 && kv->value.f == 1e300);
    CHECK(KV("t.u32")->type == GGUF_TYPE_UINT32 && kv->value.u == 4000000000u);
    CHECK(KV("t.i32")->type == GGUF_TYPE_INT32 && kv->value.i == -2000000000);
    CHECK(KV("t.f32")->type == GGUF_TYPE_FLOAT32 && kv->value.f == 3.25);
    CHECK(KV("t.bool")->type == GGUF_TYPE_BOOL && kv->value.b);
    CHECK(KV("t.nul")->type == GGUF_TYPE_STRING && kv->value.s.len == 3 &&
          !memcmp(kv->value.s.data, "a\0b", 4));
    CHECK(KV("t.empty")->type == GGUF_TYPE_STRING && kv->value.s.len == 0 &&
          kv->value.s.data[0] == 0);
#undef KV
    CHECK_EQ_INT(gguf_get_u32(f, "t.over", &u32), 0);
    CHECK_EQ_INT(u32, 2);
    CHECK_EQ_INT(gguf_get_u32(f, "t.u8", &u32), 0);
    CHECK_EQ_INT(u32, 200);
    CHECK_EQ_INT(gguf_get_u32(f, "t.i8", &u32), TT_EFORMAT); /* negative */
    CHECK(tt_error_detail()[0]);
    CHECK_EQ_INT(gguf_get_u32(f, "t.u64", &u32), TT_EFORMAT); /* too big */
    CHECK_EQ_INT(gguf_get_u32(f, "t.str", &u32), TT_EFORMAT); /* not an integer */
    CHECK_EQ_INT(gguf_get_u32(f, "no.such", &u32), TT_ENOTFOUND);
    CHECK_EQ_INT(gguf_get_i64(f, "t.i8", &i64), 0);
    CHECK_EQ_INT(i64, -100);
    CHECK_EQ_INT(gguf_get_i64(f, "t.u32", &i64), 0);
    CHECK_EQ_INT(i64, 4000000000ll);
    CHECK_EQ_INT(gguf_get_i64(f, "t.u64", &i64), TT_EFORMAT);
    CHECK_EQ_INT(gguf_get_f32(f, "t.f32", &f32), 0);
    CHECK_NEAR(f32, 3.25, 0);
    CHECK_EQ_INT(gguf_get_f32(f, "t.i32", &f32), 0);
    CHECK_NEAR(f32, -2e9, 0);
    CHECK_EQ_INT(gguf_get_f32(f, "t.f64", &f32), TT_EFORMAT); /* 1e300 does not fit */
    CHECK_EQ_INT(gguf_get_f32(f, "t.bool", &f32), TT_EFORMAT);
    CHECK_EQ_INT(gguf_get_bool(f, "t.bool", &b), 0);
    CHECK(b);
    CHECK_EQ_INT(gguf_get_bool(f, "t.u8", &b), TT_EFORMAT);
    CHECK_EQ_INT(gguf_get_str(f, "t.str", &s), 0);
    CHECK_STR(s, "h\xc3\xa9llo \xe2\x9c\x93");
    CHECK_EQ_INT(gguf_get_str(f, "t.u8", &s), TT_EFORMAT);
}

static void check_arrays(const struct gguf_file *f)
{
    const struct gguf_value *a;
    CHECK_EQ_INT(gguf_get_arr(f, "a.u8", GGUF_TYPE_UINT8, &a), 0);
    CHECK(a->arr.n == 3 && gguf_arr_i64(a, 1) == 255 && gguf_arr_f64(a, 2) == 7);
    CHECK_EQ_INT(gguf_get_arr(f, "a.i16", GGUF_TYPE_COUNT, &a), 0);
    CHECK(a->arr.n == 2 && gguf_arr_i64(a, 0) == -32768 && gguf_arr_i64(a, 1) == 32767);
    CHECK_EQ_INT(gguf_get_arr(f, "a.u32", GGUF_TYPE_UINT32, &a), 0);
    CHECK(a->arr.n == 4 && gguf_arr_i64(a, 3) == 4);
    CHECK_EQ_INT(gguf_get_arr(f, "a.i64", GGUF_TYPE_INT64, &a), 0);
    CHECK(gguf_arr_i64(a, 0) == INT64_MIN && gguf_arr_i64(a, 1) == INT64_MAX);
    CHECK_EQ_INT(gguf_get_arr(f, "a.f32", GGUF_TYPE_FLOAT32, &a), 0);
    CHECK(gguf_arr_f64(a, 0) == 0.5 && gguf_arr_f64(a, 1) == -1.0 &&
          gguf_arr_f64(a, 2) == (double)1e-30f);
    CHECK_EQ_INT(gguf_get_arr(f, "a.f64", GGUF_TYPE_FLOAT64, &a), 0);
    CHECK(gguf_arr_f64(a, 0) == 2.5 && gguf_arr_f64(a, 1) == -1e-300);
    CHECK_EQ_INT(gguf_get_arr(f, "a.bool", GGUF_TYPE_BOOL, &a), 0);
    CHECK(a->arr.n == 3 && gguf_arr_i64(a, 0) == 1 && gguf_arr_i64(a, 1) == 0);
    CHECK_EQ_INT(gguf_get_arr(f, "a.empty", GGUF_TYPE_UINT32, &a), 0);
    CHECK_EQ_INT(a->arr.n, 0);
    CHECK_EQ_INT(gguf_get_arr(f, "a.u8", GGUF_TYPE_INT8, &a), TT_EFORMAT);  /* wrong element type */
    CHECK_EQ_INT(gguf_get_arr(f, "t.u8", GGUF_TYPE_COUNT, &a), TT_EFORMAT); /* not an array */
    CHECK_EQ_INT(gguf_get_arr(f, "a.str", GGUF_TYPE_STRING, &a), 0);
    CHECK(a->arr.n == 4 && a->arr.elems && a->arr.raw == NULL);
    if (a->arr.elems) {
        CHECK_STR(a->arr.elems[0].s.data, "one");
        CHECK(a->arr.elems[1].s.len == 0 && a->arr.elems[1].s.data[0] == 0);
        CHECK_STR(a->arr.elems[2].s.data, "\xe4\xb8\x89");
        CHECK_STR(a->arr.elems[3].s.data, "four");
    }
}

static void check_nested(const struct gguf_file *f)
{
    const struct gguf_value *a;
    CHECK_EQ_INT(gguf_get_arr(f, "n.i32", GGUF_TYPE_ARRAY, &a), 0);
    if (a && a->arr.n == 3) {
        CHECK(a->arr.elems[0].type == GGUF_TYPE_ARRAY && a->arr.elems[0].arr.n == 3);
        CHECK(gguf_arr_i64(&a->arr.elems[0], 2) == 3);
        CHECK(a->arr.elems[1].arr.n == 0 && a->arr.elems[1].arr.type == GGUF_TYPE_INT32);
        CHECK(gguf_arr_i64(&a->arr.elems[2], 0) == 4);
    } else {
        CHECK(!"n.i32 has 3 rows");
    }
    CHECK_EQ_INT(gguf_get_arr(f, "n.str", GGUF_TYPE_ARRAY, &a), 0);
    if (a && a->arr.n == 2 && a->arr.elems[0].arr.n == 2) {
        CHECK_STR(a->arr.elems[0].arr.elems[1].s.data, "bc");
        CHECK_STR(a->arr.elems[1].arr.elems[0].s.data, "d");
    } else {
        CHECK(!"n.str has 2 rows");
    }
    CHECK_EQ_INT(gguf_get_arr(f, "n.deep", GGUF_TYPE_ARRAY, &a), 0);
    int depth = 1;
    while (a && a->arr.type == GGUF_TYPE_ARRAY && a->arr.n == 1) {
        a = &a->arr.elems[0];
        depth++;
    }
    CHECK_EQ_INT(depth, GGUF_NESTING_MAX);
    CHECK(a && a->arr.type == GGUF_TYPE_FLOAT64 && gguf_arr_f64(a, 0) == 42.0);
}

static void check_tensors(const struct gguf_file *f, uint64_t alignment)
{
    uint8_t expect[1024];
    CHECK_EQ_INT(f->n_tensors, N_TSPECS);
    CHECK_EQ_INT(f->alignment, alignment);
    CHECK_EQ_INT(f->data_offset % alignment, 0);
    for (int i = 0; i < N_TSPECS && i < (int)f->n_tensors; i++) {
        const struct gguf_tensor *t = gguf_find_tensor(f, tspecs[i].name);
        CHECK(t == &f->tensors[i]);
        if (!t) continue;
        CHECK_STR(t->name, tspecs[i].name);
        CHECK_EQ_INT(t->n_dims, tspecs[i].n_dims);
        for (int d = 0; d < 4; d++)
            CHECK_EQ_INT(t->ne[d], d < (int)tspecs[i].n_dims ? tspecs[i].ne[d] : 1);
        CHECK_EQ_INT(t->type, tspecs[i].type);
        CHECK_EQ_INT(t->size_bytes, tspecs[i].size);
        CHECK_EQ_INT(t->offset % alignment, 0);
        CHECK_EQ_INT(((const uint8_t *)t->data - f->map) % alignment, 0);
        fill_bytes(expect, tspecs[i].size, (uint32_t)i);
        CHECK(!memcmp(t->data, expect, tspecs[i].size));
    }
    CHECK(gguf_find_tensor(f, "nope") == NULL);
    CHECK_EQ_INT(f->size_bytes % alignment, 0);
}

static void check_roundtrip(const struct gguf_file *f, int n_kv, uint64_t alignment)
{
    CHECK_EQ_INT(f->version, 3);
    CHECK_EQ_INT(f->n_kv, n_kv);
    CHECK_STR(f->kv[0].key, "t.u8"); /* insertion order kept */
    check_scalars(f);
    check_arrays(f);
    check_nested(f);
    check_tensors(f, alignment);
}

static void test_roundtrip(void)
{
    const char *path = tmp_path("rt.gguf");
    int n_kv = write_roundtrip_file(path, 0);
    CHECK(!test_file_exists(tmp_path("rt.gguf.tmp")));
    struct gguf_file f;
    CHECK_EQ_INT(gguf_open(&f, path), 0);
    CHECK(f.owns_map);
    CHECK(gguf_find_kv(&f, "general.alignment") == NULL); /* default: not written */
    check_roundtrip(&f, n_kv, 32);
    /* The same bytes through gguf_parse_buffer. */
    size_t size = 0;
    void *buf = test_read_file(path, &size);
    struct gguf_file g;
    CHECK_EQ_INT(gguf_parse_buffer(&g, buf, size), 0);
    CHECK(!g.owns_map && g.map == buf);
    check_roundtrip(&g, n_kv, 32);
    for (uint64_t i = 0; i < f.n_kv && i < g.n_kv; i++)
        CHECK(values_equal(&f.kv[i].value, &g.kv[i].value));
    gguf_close(&g);
    free(buf);
    gguf_close(&f);
    gguf_close(&f);
    unlink(path);
}

static void test_alignment(void)
{
    const char *path = tmp_path("al.gguf");
    int n_kv = write_roundtrip_file(path, 256);
    struct gguf_file f;
    CHECK_EQ_INT(gguf_open(&f, path), 0);
    uint32_t a = 0;
    CHECK_EQ_INT(gguf_get_u32(&f, "general.alignment", &a), 0);
    CHECK_EQ_INT(a, 256);
    check_roundtrip(&f, n_kv, 256);
    gguf_close(&f);
    unlink(path);
}

/* ---- writer errors ---- */

/* Bad keys, values, shapes and types are refused, and the error sticks. */
static void test_writer_errors(void)
{
    const char *path = tmp_path("err.gguf");
    int64_t ne[2] = {32, 2};
    uint8_t data[256] = {0};
    struct gguf_writer *w = gguf_writer_create();
    /* Bad keys and values are refused, and the first error sticks. */
    CHECK_EQ_INT(gguf_writer_set_u32(w, "", 1), TT_EINVAL);
    CHECK(strstr(tt_error_detail(), "empty") != NULL);
    CHECK_EQ_INT(gguf_writer_set_u32(w, "fine", 1), TT_EINVAL);
    CHECK(strstr(tt_error_detail(), "empty") != NULL);
    gguf_writer_free(w);

#define ONE(want, expr)                                                                            \
    do {                                                                                           \
        w = gguf_writer_create();                                                                  \
        CHECK_EQ_INT((expr), want);                                                                \
        CHECK(tt_error_detail()[0]);                                                               \
        CHECK_EQ_INT(gguf_writer_begin(w, path), want);                                            \
        gguf_writer_free(w);                                                                       \
    } while (0)
    ONE(TT_EINVAL, gguf_writer_set_u32(w, "bad\xc0\xaf", 1));
    ONE(TT_EINVAL, gguf_writer_set_u32(w, "general.alignment", 48));
    ONE(TT_EINVAL, gguf_writer_set_i32(w, "general.alignment", 64));
    ONE(TT_EINVAL, gguf_writer_set_str(w, "k", NULL));
    ONE(TT_EINVAL, gguf_writer_set_arr(w, "k", GGUF_TYPE_STRING, data, 1));
    ONE(TT_EINVAL, gguf_writer_set_arr(w, "k", GGUF_TYPE_BOOL, (uint8_t[]){2}, 1));
    ONE(TT_EINVAL,
        gguf_writer_set_value(w, "k", &(struct gguf_value){.type = GGUF_TYPE_UINT8, .u = 256}));
    ONE(TT_EINVAL, gguf_writer_add_tensor(w, "t", 2, (int64_t[]){16, 2}, TT_TYPE_Q4_0));
    ONE(TT_EINVAL, gguf_writer_add_tensor(w, "t", 5, ne, TT_TYPE_F32));
    ONE(TT_EINVAL, gguf_writer_add_tensor(w, "t", 2, (int64_t[]){0, 2}, TT_TYPE_F32));
    ONE(TT_EINVAL, gguf_writer_add_tensor(w, "", 2, ne, TT_TYPE_F32));
    ONE(TT_EUNSUPPORTED, gguf_writer_add_tensor(w, "t", 2, ne, 3 /* q4_1 */));
    ONE(TT_EINVAL, gguf_writer_write_tensor(w, data, 4)); /* before begin */
    ONE(TT_EINVAL, gguf_writer_finish(w));
    ONE(TT_EIO, gguf_writer_begin(w, "/nonexistent-dir/x.gguf"));
#undef ONE
}

/* Duplicate tensors, nesting too deep, calls out of order, wrong sizes. */
static void test_writer_state(void)
{
    const char *path = tmp_path("err.gguf");
    int64_t ne[2] = {32, 2};
    uint8_t data[256] = {0};
    struct gguf_writer *w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "t", 2, ne, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "t", 2, ne, TT_TYPE_F32), TT_EINVAL);
    gguf_writer_free(w);
    w = gguf_writer_create();
    static const double leaf[] = {1};
    struct gguf_value chain[GGUF_NESTING_MAX + 1];
    chain[0] = v_arr(GGUF_TYPE_FLOAT64, 1, leaf, NULL);
    for (int d = 1; d <= GGUF_NESTING_MAX; d++)
        chain[d] = v_arr(GGUF_TYPE_ARRAY, 1, NULL, &chain[d - 1]);
    CHECK_EQ_INT(gguf_writer_set_value(w, "deep", &chain[GGUF_NESTING_MAX]), TT_EINVAL);
    gguf_writer_free(w);

    /* Wrong data size, too few tensors; free() removes the temp file. */
    w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "a", 2, ne, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "b", 1, ne, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    CHECK(test_file_exists(tmp_path("err.gguf.tmp")));
    CHECK_EQ_INT(gguf_writer_set_u32(w, "late", 1), TT_EINVAL); /* after begin */
    gguf_writer_free(w);
    CHECK(!test_file_exists(tmp_path("err.gguf.tmp")));
    CHECK(!test_file_exists(path));
    w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "a", 2, ne, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    CHECK_EQ_INT(gguf_writer_write_tensor(w, data, 100), TT_EINVAL);
    CHECK(strstr(tt_error_detail(), "'a'") != NULL);
    CHECK_EQ_INT(gguf_writer_finish(w), TT_EINVAL); /* sticky */
    gguf_writer_free(w);
    CHECK(!test_file_exists(path));
    w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "a", 1, ne, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "b", 1, ne, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    CHECK_EQ_INT(gguf_writer_write_tensor(w, data, 128), 0);
    CHECK_EQ_INT(gguf_writer_finish(w), TT_EINVAL);
    CHECK(strstr(tt_error_detail(), "1 of 2") != NULL);
    gguf_writer_free(w);
    CHECK(!test_file_exists(path) && !test_file_exists(tmp_path("err.gguf.tmp")));
    gguf_writer_free(NULL);
}

/* A metadata-only file and an empty one are valid. */
static void test_writer_minimal(void)
{
    const char *path = tmp_path("min.gguf");
    struct gguf_writer *w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    CHECK_EQ_INT(gguf_writer_finish(w), 0);
    CHECK_EQ_INT(gguf_writer_finish(w), TT_EINVAL); /* twice */
    gguf_writer_free(w);
    struct gguf_file f;
    CHECK_EQ_INT(gguf_open(&f, path), 0);
    CHECK(f.n_kv == 0 && f.n_tensors == 0 && f.data_offset == 32 && f.size_bytes == 32);
    CHECK(gguf_find_kv(&f, "x") == NULL && gguf_find_tensor(&f, "x") == NULL);
    gguf_close(&f);
    unlink(path);
}

/* ---- big tables: a 150k-token vocabulary and thousands of tensors ---- */

static void test_big_tables(void)
{
    enum { N_TOK = 150000, N_T = 4000 };
    const char *path = tmp_path("big.gguf");
    char **toks = malloc(N_TOK * sizeof(*toks));
    char *text = malloc(N_TOK * 16);
    for (int i = 0; i < N_TOK; i++) {
        toks[i] = text + i * 16;
        snprintf(toks[i], 16, "tok%06d", i);
    }
    struct gguf_writer *w = gguf_writer_create();
    CHECK_EQ_INT(
        gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, N_TOK), 0);
    char name[64];
    for (int i = 0; i < N_T; i++) {
        snprintf(name, sizeof(name), "blk.%d.w", i);
        CHECK_EQ_INT(gguf_writer_add_tensor(w, name, 1, (int64_t[]){8}, TT_TYPE_F32), 0);
    }
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    float row[8];
    for (int i = 0; i < N_T; i++) {
        for (int k = 0; k < 8; k++)
            row[k] = (float)(i * 8 + k);
        CHECK_EQ_INT(gguf_writer_write_tensor(w, row, sizeof(row)), 0);
    }
    CHECK_EQ_INT(gguf_writer_finish(w), 0);
    gguf_writer_free(w);

    struct gguf_file f;
    double t0 = tt_now_s();
    CHECK_EQ_INT(gguf_open(&f, path), 0);
    double t1 = tt_now_s();
    const struct gguf_value *a = NULL;
    CHECK_EQ_INT(gguf_get_arr(&f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &a), 0);
    CHECK(a && a->arr.n == N_TOK);
    for (int i = 0; a && i < N_TOK; i += 997)
        CHECK_STR(a->arr.elems[i].s.data, toks[i]);
    int found = 0;
    for (int i = 0; i < N_T; i++) {
        snprintf(name, sizeof(name), "blk.%d.w", i);
        const struct gguf_tensor *t = gguf_find_tensor(&f, name);
        found += t && t == &f.tensors[i] && ((const float *)t->data)[7] == (float)(i * 8 + 7);
    }
    double t2 = tt_now_s();
    CHECK_EQ_INT(found, N_T);
    fprintf(stderr, "  big: open %.1f ms, %d lookups %.1f ms\n", (t1 - t0) * 1e3, N_T,
            (t2 - t1) * 1e3);
    CHECK(t2 - t0 < 5.0);
    gguf_close(&f);
    unlink(path);
    free(text);
    free(toks);
}

/* A tensor larger than the writer's staging buffer between two small ones:
 * the direct-write path, with the header and padding around it intact. */
static void test_large_tensor(void)
{
    enum { BIG = 3 << 20 }; /* floats: 12 MiB */
    const char *path = tmp_path("large.gguf");
    float *big = malloc(BIG * sizeof(float));
    float small[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < BIG; i++)
        big[i] = (float)i;
    struct gguf_writer *w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "a", 1, (int64_t[]){8}, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "big", 2, (int64_t[]){1024, BIG / 1024}, TT_TYPE_F32),
                 0);
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "b", 1, (int64_t[]){7}, TT_TYPE_F32), 0);
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    CHECK_EQ_INT(gguf_writer_write_tensor(w, small, 32), 0);
    CHECK_EQ_INT(gguf_writer_write_tensor(w, big, (uint64_t)BIG * 4), 0);
    CHECK_EQ_INT(gguf_writer_write_tensor(w, small, 28), 0);
    CHECK_EQ_INT(gguf_writer_finish(w), 0);
    gguf_writer_free(w);
    struct gguf_file f;
    CHECK_EQ_INT(gguf_open(&f, path), 0);
    const struct gguf_tensor *t = gguf_find_tensor(&f, "big");
    CHECK(t && t->offset == 32 && t->size_bytes == (uint64_t)BIG * 4 &&
          !memcmp(t->data, big, t->size_bytes));
    t = gguf_find_tensor(&f, "b");
    CHECK(t && t->offset == 32 + (uint64_t)BIG * 4 && !memcmp(t->data, small, 28));
    CHECK(t && f.size_bytes == f.data_offset + t->offset + 32);
    gguf_close(&f);
    unlink(path);
    free(big);
}

/* ---- the reference models ---- */

static void test_stories260k(void)
{
    const char *path = test_shared_path("models/stories260K.gguf");
    if (!test_file_exists(path)) {
        TEST_SKIP("%s missing", path);
        return;
    }
    struct gguf_file f;
    CHECK_EQ_INT(gguf_open(&f, path), 0);
    const char *arch = NULL;
    CHECK_EQ_INT(gguf_get_str(&f, "general.architecture", &arch), 0);
    CHECK_STR(arch, "llama");
    const struct gguf_value *toks = NULL;
    CHECK_EQ_INT(gguf_get_arr(&f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks), 0);
    CHECK(toks && toks->arr.n == 512);
    CHECK_EQ_INT(f.n_tensors, 48);
    const struct gguf_tensor *t = gguf_find_tensor(&f, "token_embd.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_INT(t->n_dims, 2);
        CHECK_EQ_INT(t->ne[0], 64);
        CHECK_EQ_INT(t->ne[1], 512);
        CHECK_EQ_INT(t->type, TT_TYPE_F32);
        CHECK_EQ_INT(t->size_bytes, 64 * 512 * 4);
    }
    uint32_t n_embd = 0;
    CHECK_EQ_INT(gguf_get_u32(&f, "llama.embedding_length", &n_embd), 0);
    CHECK_EQ_INT(n_embd, 64);
    gguf_close(&f);
}

/* Copy every entry and tensor of stories260K through the writer; the result
 * must read back equal, and byte for byte equal to llama.cpp's file. */
static void test_stories260k_rewrite(void)
{
    const char *src_path = test_shared_path("models/stories260K.gguf");
    const char *path = tmp_path("copy.gguf");
    if (!test_file_exists(src_path)) {
        TEST_SKIP("%s missing", src_path);
        return;
    }
    struct gguf_file src, dst;
    CHECK_EQ_INT(gguf_open(&src, src_path), 0);
    struct gguf_writer *w = gguf_writer_create();
    CHECK_EQ_INT(gguf_writer_copy_kv(w, &src, ""), 0);
    for (uint64_t i = 0; i < src.n_tensors; i++) {
        const struct gguf_tensor *t = &src.tensors[i];
        CHECK_EQ_INT(gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type), 0);
    }
    CHECK_EQ_INT(gguf_writer_begin(w, path), 0);
    for (uint64_t i = 0; i < src.n_tensors; i++)
        CHECK_EQ_INT(gguf_writer_write_tensor(w, src.tensors[i].data, src.tensors[i].size_bytes),
                     0);
    CHECK_EQ_INT(gguf_writer_finish(w), 0);
    gguf_writer_free(w);
    CHECK_EQ_INT(gguf_open(&dst, path), 0);
    CHECK_EQ_INT(dst.n_kv, src.n_kv);
    for (uint64_t i = 0; i < src.n_kv && i < dst.n_kv; i++) {
        CHECK_STR(dst.kv[i].key, src.kv[i].key);
        CHECK(values_equal(&dst.kv[i].value, &src.kv[i].value));
    }
    CHECK_EQ_INT(dst.n_tensors, src.n_tensors);
    for (uint64_t i = 0; i < src.n_tensors && i < dst.n_tensors; i++)
        CHECK(dst.tensors[i].size_bytes == src.tensors[i].size_bytes &&
              !memcmp(dst.tensors[i].data, src.tensors[i].data, src.tensors[i].size_bytes));
    CHECK_EQ_INT(dst.size_bytes, src.size_bytes);
    CHECK(dst.size_bytes == src.size_bytes && !memcmp(dst.map, src.map, src.size_bytes));
    gguf_close(&dst);
    gguf_close(&src);
    unlink(path);
}

/* Every model in ../shared/models parses. */
static void test_shared_models(void)
{
    const char *dir_path = test_shared_path("models");
    DIR *dir = opendir(dir_path);
    if (!dir) {
        TEST_SKIP("%s missing", dir_path);
        return;
    }
    int n = 0;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(dir))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 5, ".gguf")) continue;
        snprintf(path, sizeof(path), "%s/%s", dir_path, e->d_name);
        struct gguf_file f;
        int rc = gguf_open(&f, path);
        if (rc) fprintf(stderr, "  %s: %s\n", path, tt_error_detail());
        CHECK_EQ_INT(rc, 0);
        CHECK(rc || (f.n_tensors > 0 && gguf_find_kv(&f, "general.architecture")));
        gguf_close(&f);
        n++;
    }
    closedir(dir);
    if (!n) TEST_SKIP("no .gguf files in %s", dir_path);
}

/* ---- the builder's image, valid and malformed ---- */

static void test_image_valid(void)
{
    struct img m;
    build_image(&m, 2);
    struct gguf_file f;
    uint8_t *copy = malloc(m.n);
    memcpy(copy, m.b, m.n);
    CHECK_EQ_INT(gguf_parse_buffer(&f, copy, m.n), 0);
    CHECK_EQ_INT(f.n_kv, 7);
    CHECK_EQ_INT(f.n_tensors, 3);
    CHECK_EQ_INT(f.data_offset, at(&m, "data"));
    uint32_t u = 0;
    CHECK_EQ_INT(gguf_get_u32(&f, "test.k01", &u), 0);
    CHECK_EQ_INT(u, 12345);
    const struct gguf_value *a = NULL;
    CHECK_EQ_INT(gguf_get_arr(&f, "test.nested", GGUF_TYPE_ARRAY, &a), 0);
    CHECK(a && a->arr.n == 1 && gguf_arr_i64(&a->arr.elems[0], 0) == 7);
    CHECK_EQ_INT(gguf_get_arr(&f, "test.strs", GGUF_TYPE_STRING, &a), 0);
    CHECK(a && a->arr.n == 2 && !strcmp(a->arr.elems[0].s.data, "alpha"));
    const struct gguf_tensor *t = gguf_find_tensor(&f, "q40.weight");
    CHECK(t && t->size_bytes == 36 && (const uint8_t *)t->data == copy + at(&m, "data") + 224);
    gguf_close(&f);
    free(copy);
    /* Version 2 is read the same way; 8 levels of nesting are allowed. */
    patch_u32(&m, "version", 2);
    CHECK_EQ_INT(parse_copy(&f, m.b, m.n), 0);
    free(m.b);
    build_image(&m, GGUF_NESTING_MAX);
    CHECK_EQ_INT(parse_copy(&f, m.b, m.n), 0);
    free(m.b);
}

/* Build, patch, expect. */
#define CASE_U32(field, v, want, needle)                                                           \
    do {                                                                                           \
        build_image(&m, 2);                                                                        \
        patch_u32(&m, field, v);                                                                   \
        expect_fail(&m, want, needle);                                                             \
        free(m.b);                                                                                 \
    } while (0)
#define CASE_U64(field, v, want, needle)                                                           \
    do {                                                                                           \
        build_image(&m, 2);                                                                        \
        patch_u64(&m, field, v);                                                                   \
        expect_fail(&m, want, needle);                                                             \
        free(m.b);                                                                                 \
    } while (0)
#define CASE_BYTES(field, bytes, want, needle)                                                     \
    do {                                                                                           \
        build_image(&m, 2);                                                                        \
        patch_bytes(&m, field, bytes, sizeof(bytes) - 1);                                          \
        expect_fail(&m, want, needle);                                                             \
        free(m.b);                                                                                 \
    } while (0)

static void test_bad_header(void)
{
    struct img m;
    CASE_BYTES("version", "\0\0\0\0", TT_EUNSUPPORTED, "version 0");
    build_image(&m, 2);
    memcpy(m.b, "GGUX", 4);
    expect_fail(&m, TT_EFORMAT, "not a GGUF file");
    expect_fail_(&m, 0, TT_EFORMAT, "too small", __LINE__);
    free(m.b);
    CASE_U32("version", 1, TT_EUNSUPPORTED, "version 1");
    CASE_U32("version", 4, TT_EUNSUPPORTED, "version 4");
    CASE_U32("version", 0x03000000u, TT_EUNSUPPORTED, "big-endian");
    CASE_U32("version", 0x02000000u, TT_EUNSUPPORTED, "big-endian");
    CASE_U64("n_kv", 1ull << 60, TT_EFORMAT, "metadata count");
    CASE_U64("n_tensors", 1ull << 60, TT_EFORMAT, "tensor count");
    CASE_U64("n_kv", UINT64_MAX, TT_EFORMAT, "metadata count");
    CASE_U64("n_kv", 1000, TT_EFORMAT, "need at least");
    CASE_U64("n_tensors", 100000, TT_EFORMAT, "need at least");
}

static void test_bad_kv(void)
{
    struct img m;
    CASE_U64("k01_len", 1ull << 63, TT_EFORMAT, "over the limit");
    CASE_U64("k01_len", GGUF_STRING_MAX, TT_EFORMAT, "file ends");
    CASE_U64("k01_len", 0, TT_EFORMAT, "empty");
    CASE_U64("str0_len", 1ull << 63, TT_EFORMAT, "over the limit");
    CASE_U64("str0_len", 1000, TT_EFORMAT, "file ends");
    CASE_U64("arr_n", 1ull << 40, TT_EFORMAT, "over the limit");
    CASE_U64("arr_n", UINT64_MAX, TT_EFORMAT, "over the limit");
    CASE_U64("arr_n", 1ull << 27, TT_EFORMAT, "remain");
    CASE_U64("strs_n", 1ull << 27, TT_EFORMAT, "remain");
    CASE_U32("k01_type", 13, TT_EFORMAT, "value type 13");
    CASE_U32("k01_type", 0xffffffffu, TT_EFORMAT, "unknown");
    CASE_U32("arr_etype", 99, TT_EFORMAT, "unknown");
    CASE_BYTES("k01",
               "test.\xc0\xaf"
               "1",
               TT_EFORMAT, "UTF-8");                                /* overlong '/' */
    CASE_BYTES("k01", "test.\xe0\x80\xaf", TT_EFORMAT, "UTF-8");    /* overlong 3-byte */
    CASE_BYTES("k01", "test.\xed\xa0\x80", TT_EFORMAT, "UTF-8");    /* surrogate */
    CASE_BYTES("k01", "test\xf4\x90\x80\x80", TT_EFORMAT, "UTF-8"); /* > U+10FFFF */
    CASE_BYTES("k01", "test.k0\x80", TT_EFORMAT, "UTF-8");          /* lone continuation */
    CASE_BYTES("k01", "test.k0\xe2", TT_EFORMAT, "UTF-8");          /* cut sequence */
    CASE_BYTES("k01",
               "test.\xff"
               "01",
               TT_EFORMAT, "UTF-8");
    CASE_BYTES("k01",
               "test.k\0"
               "1",
               TT_EFORMAT, "NUL");
    CASE_BYTES("k02", "test.k01", TT_EFORMAT, "duplicate key");
    CASE_U32("bool_val", 2, TT_EFORMAT, "not 0 or 1");
    /* A valid multi-byte key is accepted. */
    build_image(&m, 2);
    patch_bytes(&m, "k01",
                "test.\xc3\xa9"
                "1",
                8);
    struct gguf_file f;
    CHECK_EQ_INT(parse_copy(&f, m.b, m.n), 0);
    free(m.b);
    build_image(&m, GGUF_NESTING_MAX + 1);
    expect_fail(&m, TT_EFORMAT, "nested");
    free(m.b);
    /* The error names the entry and the byte offset. */
    build_image(&m, 2);
    patch_u32(&m, "k01_type", 77);
    char needle[64];
    snprintf(needle, sizeof(needle), "at offset %zu", at(&m, "k01_type"));
    expect_fail(&m, TT_EFORMAT, needle);
    expect_fail(&m, TT_EFORMAT, "metadata entry 2 'test.k01'");
    free(m.b);
}

static void test_bad_alignment(void)
{
    struct img m;
    struct gguf_file f;
    CASE_U32("align_val", 0, TT_EFORMAT, "power of two");
    CASE_U32("align_val", 3, TT_EFORMAT, "power of two");
    CASE_U32("align_val", 1u << 17, TT_EFORMAT, "power of two");
    CASE_U32("align_type", GGUF_TYPE_INT32, TT_EFORMAT, "uint32");
    CASE_U32("align_val", 64, TT_EFORMAT, "not a multiple of the alignment");
    build_image(&m, 2);
    patch_u32(&m, "align_val", 16);
    uint8_t *copy = malloc(m.n);
    memcpy(copy, m.b, m.n);
    CHECK_EQ_INT(gguf_parse_buffer(&f, copy, m.n), 0);
    CHECK_EQ_INT(f.alignment, 16);
    CHECK_EQ_INT(f.data_offset, (at(&m, "infos_end") + 15) / 16 * 16);
    gguf_close(&f);
    free(copy);
    free(m.b);
}

static void test_bad_tensors(void)
{
    struct img m;
    struct gguf_file f;
    CASE_U32("t0_ndims", 5, TT_EFORMAT, "n_dims 5");
    CASE_U32("t0_ndims", 0, TT_EFORMAT, "n_dims 0");
    CASE_U64("t0_ne0", 0, TT_EFORMAT, "ne[0] = 0");
    CASE_U64("t0_ne0", 1ull << 63, TT_EFORMAT, "ne[0]");
    CASE_U64("t0_ne0", 1ull << 40, TT_EFORMAT, "extends past end of file");
    CASE_U64("t0_ne0", 1ull << 62, TT_EFORMAT, "overflows"); /* bytes overflow */
    build_image(&m, 2); /* element count overflow: 2^32 x 2^32 */
    patch_u64(&m, "t0_ne0", 1ull << 32);
    memcpy(m.b + at(&m, "t0_ne0") + 8, &(uint64_t){1ull << 32}, 8);
    expect_fail(&m, TT_EFORMAT, "overflows");
    free(m.b);
    CASE_U32("t0_type", 3, TT_EUNSUPPORTED, "tensor 0 'tok.weight'");
    CASE_U32("t0_type", 3, TT_EUNSUPPORTED, "q4_1");
    CASE_U32("t0_type", 999, TT_EUNSUPPORTED, "type id 999");
    CASE_U32("t0_type", 999, TT_EUNSUPPORTED, tt_type_supported_list());
    CASE_U64("t1_ne0", 48, TT_EFORMAT, "multiple");
    CASE_U64("t2_off", 4096, TT_EFORMAT, "'q40.weight': data [offset");
    CASE_U64("t2_off", 4096, TT_EFORMAT, "extends past end of file");
    CASE_U64("t2_off", UINT64_MAX - 31, TT_EFORMAT, "overflows");
    CASE_U64("t1_off", 129, TT_EFORMAT, "not a multiple of the alignment");
    CASE_U64("t1_off", 96, TT_EFORMAT, "overlaps");
    CASE_BYTES("t1_name", "tok.weight", TT_EFORMAT, "duplicate tensor name");
    CASE_U64("t0_name_len", GGUF_NAME_MAX + 1, TT_EFORMAT, "over the limit");
    CASE_U64("t0_name_len", 0, TT_EFORMAT, "empty");
    CASE_BYTES("t0_name", "tok\xc0", TT_EFORMAT, "UTF-8");
    /* Out of file order but disjoint is fine; out of order and overlapping is not. */
    build_image(&m, 2);
    patch_u64(&m, "t0_off", 160);
    patch_u64(&m, "t1_off", 0);
    patch_u64(&m, "t2_off", 96);
    CHECK_EQ_INT(parse_copy(&f, m.b, m.n), 0);
    patch_u64(&m, "t2_off", 32);
    expect_fail(&m, TT_EFORMAT, "overlaps tensor 1 'out.weight'");
    free(m.b);
}

/* Every prefix of the header, and every section boundary, fails cleanly. */
static void test_truncated(void)
{
    struct img m;
    build_image(&m, 2);
    size_t data = at(&m, "data");
    size_t cuts[] = {data + 0,        data + 127, data + 128,
                     data + 128 + 68, data + 224, data + 224 + 36 - 1};
    for (size_t n = 0; n <= data; n++)
        expect_fail_(&m, n, TT_EFORMAT, NULL, (int)n);
    for (size_t i = 0; i < TT_ARRAY_LEN(cuts); i++)
        expect_fail_(&m, cuts[i], TT_EFORMAT, NULL, (int)cuts[i]);
    /* The padding after the last tensor is not needed. */
    struct gguf_file g;
    CHECK_EQ_INT(parse_copy(&g, m.b, data + 260), 0);
    /* Through gguf_open, the path is in the detail. */
    const char *path = tmp_path("trunc.gguf");
    size_t sizes[] = {0, 3, 24, at(&m, "infos"), data - 1, data};
    for (size_t i = 0; i < TT_ARRAY_LEN(sizes); i++) {
        FILE *fp = fopen(path, "wb");
        fwrite(m.b, 1, sizes[i], fp);
        fclose(fp);
        struct gguf_file f;
        CHECK_EQ_INT(gguf_open(&f, path), TT_EFORMAT);
        CHECK(strstr(tt_error_detail(), path) != NULL);
        CHECK(f.map == NULL && f.pool == NULL);
        gguf_close(&f);
    }
    unlink(path);
    free(m.b);
}

/* Random byte changes in the header: any result but a crash or a silent lie. */
static void test_fuzz(void)
{
    struct img m;
    build_image(&m, 3);
    size_t data = at(&m, "data");
    uint32_t seed = 12345;
    int n_ok = 0;
    uint8_t *buf = malloc(m.n);
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, m.b, m.n);
        int n_flips = 1 + iter % 3;
        for (int k = 0; k < n_flips; k++) {
            seed = seed * 1664525u + 1013904223u;
            size_t pos = (seed >> 8) % data;
            seed = seed * 1664525u + 1013904223u;
            buf[pos] =
                (iter & 4) ? (uint8_t)(seed >> 24) : buf[pos] ^ (uint8_t)(1u << (seed >> 29));
        }
        struct gguf_file f;
        int rc = parse_copy(&f, buf, m.n);
        if (rc == 0)
            n_ok++;
        else if (!tt_error_detail()[0])
            CHECK(!"failure without a detail");
        CHECK(rc == 0 || rc == TT_EFORMAT || rc == TT_EUNSUPPORTED);
    }
    fprintf(stderr, "  fuzz: %d of 20000 mutants still valid\n", n_ok);
    free(buf);
    free(m.b);
}

static void test_open_errors(void)
{
    struct gguf_file f;
    CHECK_EQ_INT(gguf_open(&f, tmp_path("does-not-exist.gguf")), TT_ENOTFOUND);
    CHECK(strstr(tt_error_detail(), "does-not-exist") != NULL);
    gguf_close(&f);
    CHECK_EQ_INT(gguf_open(&f, tmp_dir), TT_EIO);
    gguf_close(&f);
    const char *path = tmp_path("text.gguf");
    FILE *fp = fopen(path, "wb");
    fputs("hello, this is not a model\n", fp);
    fclose(fp);
    CHECK_EQ_INT(gguf_open(&f, path), TT_EFORMAT);
    CHECK(strstr(tt_error_detail(), "not a GGUF file") != NULL);
    gguf_close(&f);
    unlink(path);
    struct gguf_file z;
    memset(&z, 0, sizeof(z));
    gguf_close(&z);
    gguf_close(NULL);
    CHECK(gguf_find_kv(&z, "a") == NULL && gguf_find_tensor(&z, "a") == NULL);
    CHECK_STR(gguf_vtype_name(GGUF_TYPE_FLOAT64), "float64");
    CHECK_EQ_INT(gguf_vtype_size(GGUF_TYPE_UINT16), 2);
    CHECK_EQ_INT(gguf_vtype_size(GGUF_TYPE_STRING), 0);
}

static const struct test_case cases[] = {
    {"roundtrip", test_roundtrip},
    {"alignment", test_alignment},
    {"writer_errors", test_writer_errors},
    {"writer_state", test_writer_state},
    {"writer_minimal", test_writer_minimal},
    {"big_tables", test_big_tables},
    {"large_tensor", test_large_tensor},
    {"stories260k", test_stories260k},
    {"stories260k_rewrite", test_stories260k_rewrite},
    {"shared_models", test_shared_models},
    {"image_valid", test_image_valid},
    {"bad_header", test_bad_header},
    {"bad_kv", test_bad_kv},
    {"bad_alignment", test_bad_alignment},
    {"bad_tensors", test_bad_tensors},
    {"truncated", test_truncated},
    {"fuzz", test_fuzz},
    {"open_errors", test_open_errors},
};

TEST_MAIN(cases)
