/*
 * kcpu_impl.h: what the kcpu files share with each other and with the tests,
 * but not with the rest of the engine.
 *
 * CPU features are detected once (kcpu.c) into a bit set. Some instruction
 * sets come in two flavours that differ in one optional extension: AVX-512
 * with or without AVX512_BF16, NEON with or without the dot-product
 * instructions. Each flavour is a whole struct kcpu_ops; kcpu_get_isa()
 * answers the best flavour the CPU runs, and the tests walk all of them
 * through kcpu_variant().
 */
#ifndef TT_KCPU_IMPL_H
#define TT_KCPU_IMPL_H

#include "kcpu.h"

enum kcpu_feature {
    KCPU_FEAT_AVX2 = 1u << 0,       /* AVX2 + FMA + F16C, with OS support for ymm state */
    KCPU_FEAT_AVX512 = 1u << 1,     /* F, BW, VL, DQ, VNNI, with OS support for zmm state */
    KCPU_FEAT_AVX512_BF16 = 1u << 2,
    KCPU_FEAT_NEON = 1u << 3,
    KCPU_FEAT_DOTPROD = 1u << 4, /* aarch64 SDOT/UDOT */
};

/* Feature bits of the running CPU (detected on every call; cheap). */
unsigned kcpu_cpu_features(void);

/* The table an ISA name selects, as kcpu_get() does for TT_ISA: NULL `name`
 * or "" means the best available; an unknown or unsupported name logs a
 * warning and also answers the best available. Never NULL. */
const struct kcpu_ops *kcpu_select(const char *name);

/* Flavour tables (defined only where their file is compiled in). */
extern const struct kcpu_ops kcpu_ops_avx512_bf16;
extern const struct kcpu_ops kcpu_ops_neon_dotprod;

/* Every table compiled in, flavours included: entry i (0 <= i < count), its
 * display name, and whether this CPU can run it. Returns NULL past the end. */
const struct kcpu_ops *kcpu_variant(int i, const char **name, bool *runnable);

#endif
