/*
 * gguf_internal.h: what the reader and the writer share, private to the gguf
 * module: name hashing for the lookup indexes, the check that keys and tensor
 * names are sane, and the tensor shape/size rule.
 *
 * Both indexes are open-addressing tables of uint32 slots holding item index
 * + 1 (0 = empty), with a power-of-two capacity at least twice the item
 * count. Items are structs whose FIRST member is their `const char *` name
 * (struct gguf_kv.key, struct gguf_tensor.name and the writer's own records),
 * so one probe function serves all of them.
 */
#ifndef TT_GGUF_INTERNAL_H
#define TT_GGUF_INTERNAL_H

#include <string.h>

#include "gguf.h"

/* FNV-1a, 64 bits. */
static inline uint64_t gguf_hash_(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Name of item i of an array of structs whose first member is the name. */
static inline const char *gguf_item_name_(const void *items, size_t stride, uint32_t i)
{
    const char *const *p =
        (const char *const *)(const void *)((const char *)items + (size_t)i * stride);
    return *p;
}

/* The slot holding `name`, or the empty slot where it would go. */
static inline uint64_t gguf_index_slot_(const uint32_t *slots, uint64_t cap, const void *items,
                                        size_t stride, const char *name)
{
    uint64_t mask = cap - 1, h = gguf_hash_(name) & mask;
    while (slots[h] && strcmp(gguf_item_name_(items, stride, slots[h] - 1), name) != 0)
        h = (h + 1) & mask;
    return h;
}

/* Smallest power of two >= 2 * n (and >= 8). */
static inline uint64_t gguf_index_cap_(uint64_t n)
{
    uint64_t cap = 8;
    while (cap < 2 * n)
        cap *= 2;
    return cap;
}

/* NULL if s[0..len) is a usable key or tensor name: non-empty, at most
 * max_len bytes, valid UTF-8 (no overlong forms, surrogates or code points
 * above U+10FFFF) and free of NUL bytes. Otherwise a phrase saying what is
 * wrong ("is empty", "is not valid UTF-8", ...) and *bad_at = the index of
 * the offending byte (UINT64_MAX when no single byte is at fault). */
const char *gguf_name_problem_(const char *s, uint64_t len, uint64_t max_len, uint64_t *bad_at);

/* Check a tensor shape for `type` and compute its size in bytes: the type
 * must be supported (tt_type_get), n_dims in 1..GGUF_DIMS_MAX, every ne >= 1,
 * ne[0] a multiple of the block size, and the element count and byte size
 * must not overflow int64. Returns 0, TT_EUNSUPPORTED (type) or TT_EFORMAT
 * with a sentence in msg. */
int gguf_tensor_check_(uint32_t type, uint32_t n_dims, const int64_t *ne, uint64_t *size_bytes,
                       char *msg, size_t msg_cap);

#endif
