/*
 * cmd_inspect.c: `tutti inspect`, a GGUF file's metadata and tensor table.
 * Works on any valid GGUF (vocabulary-only files too); long arrays show
 * their first elements only.
 */
#include "cli.h"

#include <string.h>

#define INSPECT_ARRAY_SHOW 8

static const char inspect_help[] =
    "usage: tutti inspect -m FILE [--no-tensors]\n"
    "Print the metadata and the tensor table of a GGUF file.\n";

static void print_value(const struct gguf_value *v)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
        printf("%llu", (unsigned long long)v->u);
        break;
    case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32: case GGUF_TYPE_INT64:
        printf("%lld", (long long)v->i);
        break;
    case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64: printf("%g", v->f); break;
    case GGUF_TYPE_BOOL: printf("%s", v->b ? "true" : "false"); break;
    case GGUF_TYPE_STRING: {
        size_t n = v->s.len > 120 ? 120 : (size_t)v->s.len;
        cli_json_str(stdout, v->s.data, n);
        if (n < v->s.len) printf("... (%llu bytes)", (unsigned long long)v->s.len);
        break;
    }
    case GGUF_TYPE_ARRAY: {
        printf("[%s x %llu: ", gguf_vtype_name(v->arr.type), (unsigned long long)v->arr.n);
        uint64_t show = v->arr.n < INSPECT_ARRAY_SHOW ? v->arr.n : INSPECT_ARRAY_SHOW;
        for (uint64_t i = 0; i < show; i++) {
            if (i) printf(", ");
            if (v->arr.elems) print_value(&v->arr.elems[i]);
            else if (v->arr.type == GGUF_TYPE_FLOAT32 || v->arr.type == GGUF_TYPE_FLOAT64)
                printf("%g", gguf_arr_f64(v, i));
            else printf("%lld", (long long)gguf_arr_i64(v, i));
        }
        printf("%s]", show < v->arr.n ? ", ..." : "");
        break;
    }
    default: printf("?"); break;
    }
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    bool tensors = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(inspect_help, stdout);
            return 0;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) path = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--no-tensors")) tensors = false;
        else if (!path && a[0] != '-') path = a;
        else cli_die(0, "unknown option '%s' (see tutti inspect --help)", a);
    }
    if (!path) cli_die(0, "no file given (-m FILE)");
    struct gguf_file f;
    int err = gguf_open(&f, path);
    if (err) cli_die(err, "cannot read '%s'", path);
    printf("file: %s\nGGUF version %u, %llu bytes, alignment %llu, %llu metadata entries, %llu tensors\n\n",
           path, f.version, (unsigned long long)f.size_bytes, (unsigned long long)f.alignment,
           (unsigned long long)f.n_kv, (unsigned long long)f.n_tensors);
    for (uint64_t i = 0; i < f.n_kv; i++) {
        printf("%-44s ", f.kv[i].key);
        print_value(&f.kv[i].value);
        printf("\n");
    }
    if (tensors) {
        printf("\n%-40s %-6s %-28s %14s %12s\n", "tensor", "type", "shape", "offset", "bytes");
        for (uint64_t i = 0; i < f.n_tensors; i++) {
            const struct gguf_tensor *t = &f.tensors[i];
            char shape[64];
            int n = snprintf(shape, sizeof(shape), "[%lld", (long long)t->ne[0]);
            for (uint32_t d = 1; d < t->n_dims; d++)
                n += snprintf(shape + n, sizeof(shape) - (size_t)n, ", %lld", (long long)t->ne[d]);
            snprintf(shape + n, sizeof(shape) - (size_t)n, "]");
            printf("%-40s %-6s %-28s %14llu %12llu\n", t->name, tt_type_name(t->type), shape,
                   (unsigned long long)t->offset, (unsigned long long)t->size_bytes);
        }
    }
    gguf_close(&f);
    return 0;
}
