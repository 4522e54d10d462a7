/*
 * kcpu.c: which kernel table this process uses.
 *
 * Invariants:
 * 1. A table is only ever handed out if the running CPU executes every
 *    instruction in it: the CPU must report the extension (cpuid leaf 1/7 on
 *    x86, AT_HWCAP on aarch64) and, on x86, the OS must save the register
 *    state it needs (XCR0 via xgetbv: ymm for AVX2, opmask/zmm for AVX-512).
 * 2. The choice is made once, on the first kcpu_get() (call it at start-up,
 *    before threads exist); later calls answer the same pointer.
 * 3. TT_ISA=scalar|avx2|avx512|neon overrides the choice; an ISA this CPU or
 *    this build lacks is refused with a warning and the best one is used.
 *
 * Architecture-specific code sits in whole functions chosen at file scope,
 * so no function body holds an #if.
 */
#include "kcpu_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

unsigned kcpu_cpu_features(void)
{
    unsigned a, b, c, d, feat = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
    const bool f16c = c & (1u << 29);
    if (!osxsave || !avx) return 0;
    const uint64_t xcr0 = xgetbv0();
    const bool os_ymm = (xcr0 & 0x6) == 0x6;
    const bool os_zmm = (xcr0 & 0xe6) == 0xe6;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = b & (1u << 5), f = b & (1u << 16), dq = b & (1u << 17);
    const bool bw = b & (1u << 30), vl = b & (1u << 31), vnni = c & (1u << 11);
    const unsigned max_sub = a;
    bool bf16 = false;
    if (max_sub >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        bf16 = a & (1u << 5);
    }
    if (os_ymm && avx2 && fma && f16c) feat |= KCPU_FEAT_AVX2;
    if ((feat & KCPU_FEAT_AVX2) && os_zmm && f && bw && vl && dq && vnni) {
        feat |= KCPU_FEAT_AVX512;
        if (bf16) feat |= KCPU_FEAT_AVX512_BF16;
    }
    return feat;
}

/* Tables compiled into an x86 build, best last. */
static const struct {
    const struct kcpu_ops *ops;
    const char *name;
    unsigned needs;
} variants[] = {
    { &kcpu_ops_scalar, "scalar", 0 },
    { &kcpu_ops_avx2, "avx2", KCPU_FEAT_AVX2 },
    { &kcpu_ops_avx512, "avx512", KCPU_FEAT_AVX512 },
    { &kcpu_ops_avx512_bf16, "avx512+bf16", KCPU_FEAT_AVX512 | KCPU_FEAT_AVX512_BF16 },
};

#elif defined(__aarch64__)
#include <sys/auxv.h>

#define HWCAP_ASIMD_BIT (1ul << 1)
#define HWCAP_ASIMDDP_BIT (1ul << 20)

unsigned kcpu_cpu_features(void)
{
    const unsigned long hw = getauxval(AT_HWCAP);
    unsigned feat = KCPU_FEAT_NEON; /* Advanced SIMD is mandatory on AArch64 */
    if ((hw & HWCAP_ASIMD_BIT) && (hw & HWCAP_ASIMDDP_BIT)) feat |= KCPU_FEAT_DOTPROD;
    return feat;
}

static const struct {
    const struct kcpu_ops *ops;
    const char *name;
    unsigned needs;
} variants[] = {
    { &kcpu_ops_scalar, "scalar", 0 },
    { &kcpu_ops_neon, "neon", KCPU_FEAT_NEON },
    { &kcpu_ops_neon_dotprod, "neon+dotprod", KCPU_FEAT_NEON | KCPU_FEAT_DOTPROD },
};

#else

unsigned kcpu_cpu_features(void)
{
    return 0;
}

static const struct {
    const struct kcpu_ops *ops;
    const char *name;
    unsigned needs;
} variants[] = {
    { &kcpu_ops_scalar, "scalar", 0 },
};

#endif

static const char *const isa_names[KCPU_ISA_COUNT] = {
    [KCPU_ISA_SCALAR] = "scalar",
    [KCPU_ISA_AVX2] = "avx2",
    [KCPU_ISA_AVX512] = "avx512",
    [KCPU_ISA_NEON] = "neon",
};

const char *kcpu_isa_name(enum kcpu_isa isa)
{
    return (unsigned)isa < KCPU_ISA_COUNT ? isa_names[isa] : "unknown";
}

const struct kcpu_ops *kcpu_variant(int i, const char **name, bool *runnable)
{
    if (i < 0 || (size_t)i >= TT_ARRAY_LEN(variants)) return NULL;
    const unsigned feat = kcpu_cpu_features();
    if (name) *name = variants[i].name;
    if (runnable) *runnable = (feat & variants[i].needs) == variants[i].needs;
    return variants[i].ops;
}

const struct kcpu_ops *kcpu_get_isa(enum kcpu_isa isa)
{
    const unsigned feat = kcpu_cpu_features();
    const struct kcpu_ops *best = NULL;
    for (size_t i = 0; i < TT_ARRAY_LEN(variants); i++) {
        if (variants[i].ops->isa != isa) continue;
        if ((feat & variants[i].needs) == variants[i].needs) best = variants[i].ops;
    }
    return best;
}

static const struct kcpu_ops *best_table(void)
{
    const unsigned feat = kcpu_cpu_features();
    const struct kcpu_ops *best = &kcpu_ops_scalar;
    for (size_t i = 0; i < TT_ARRAY_LEN(variants); i++) {
        if ((feat & variants[i].needs) == variants[i].needs) best = variants[i].ops;
    }
    return best;
}

const struct kcpu_ops *kcpu_select(const char *name)
{
    if (!name || !*name) return best_table();
    for (int isa = 0; isa < KCPU_ISA_COUNT; isa++) {
        if (strcasecmp(name, isa_names[isa]) != 0) continue;
        const struct kcpu_ops *ops = kcpu_get_isa((enum kcpu_isa)isa);
        if (ops) return ops;
        const struct kcpu_ops *best = best_table();
        tt_warn("TT_ISA=%s: this CPU or build cannot run it; using %s", name,
                kcpu_isa_name(best->isa));
        return best;
    }
    const struct kcpu_ops *best = best_table();
    tt_warn("TT_ISA=%s: unknown instruction set (scalar, avx2, avx512, neon); using %s", name,
            kcpu_isa_name(best->isa));
    return best;
}

const struct kcpu_ops *kcpu_get(void)
{
    static const struct kcpu_ops *chosen;
    const struct kcpu_ops *ops = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (ops) return ops;
    ops = kcpu_select(getenv("TT_ISA"));
    __atomic_store_n(&chosen, ops, __ATOMIC_RELEASE);
    return ops;
}

/* ---- KCPU_LAYOUT_TILE16 (kcpu.h describes it) ---- */

#define TILE16_ROWS 16

float kcpu_scores_f16_loop(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *k,
                           size_t stride, const float *q, float scale, float *scores)
{
    float maxs = -INFINITY;
    for (int64_t j = 0; j < n_pos; j++) {
        scores[j] = ops->dot_f16_f32(hd, k + (size_t)j * stride, q) * scale;
        maxs = scores[j] > maxs ? scores[j] : maxs;
    }
    return maxs;
}

void kcpu_mix_f16_loop(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *v, size_t stride,
                       const float *w, float inv, float *out)
{
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int64_t j = 0; j < n_pos; j++) ops->axpy_f16(hd, w[j] * inv, v + (size_t)j * stride, out);
}

float kcpu_scores_f16(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *k, size_t stride,
                      const float *q, float scale, float *scores)
{
    return ops->scores_f16 ? ops->scores_f16(hd, n_pos, k, stride, q, scale, scores)
                           : kcpu_scores_f16_loop(ops, hd, n_pos, k, stride, q, scale, scores);
}

void kcpu_mix_f16(const struct kcpu_ops *ops, int64_t hd, int64_t n_pos, const tt_f16 *v, size_t stride,
                  const float *w, float inv, float *out)
{
    if (ops->mix_f16) ops->mix_f16(hd, n_pos, v, stride, w, inv, out);
    else kcpu_mix_f16_loop(ops, hd, n_pos, v, stride, w, inv, out);
}

bool kcpu_tile16_wanted(const struct kcpu_ops *ops, enum tt_type type)
{
    return (unsigned)type < TT_TYPE_COUNT && ops->matmul_tile16[type] != NULL;
}

size_t kcpu_tile16_bytes(enum tt_type type, int64_t n, int64_t n_rows)
{
    const int64_t groups = (n_rows + TILE16_ROWS - 1) / TILE16_ROWS;
    return (size_t)groups * TILE16_ROWS * tt_row_size(type, n);
}

void kcpu_tile16_pack(enum tt_type type, int64_t n, const void *src, size_t src_row_bytes,
                      int64_t n_rows, int64_t g0, int64_t g1, void *dst)
{
    const struct tt_type_traits *tr = tt_type_get(type);
    TT_ASSERT(tr->is_quantized && n % tr->block_size == 0);
    const size_t bsz = tr->type_size, n_dw = bsz / 4, n_tail = bsz % 4;
    const size_t row_bytes = tt_row_size(type, n), group_bytes = TILE16_ROWS * row_bytes;
    const int64_t nb = n / tr->block_size;
    for (int64_t g = g0; g < g1; g++) {
        uint8_t *out = (uint8_t *)dst + (size_t)g * group_bytes;
        for (int i = 0; i < TILE16_ROWS; i++) {
            const int64_t r = g * TILE16_ROWS + i;
            const uint8_t *row = r < n_rows ? (const uint8_t *)src + (size_t)r * src_row_bytes : NULL;
            for (int64_t b = 0; b < nb; b++) {
                uint8_t *tile = out + (size_t)b * TILE16_ROWS * bsz;
                const uint8_t *blk = row ? row + (size_t)b * bsz : NULL;
                for (size_t p = 0; p < n_dw; p++) {
                    if (blk) memcpy(tile + 64 * p + 4 * (size_t)i, blk + 4 * p, 4);
                    else memset(tile + 64 * p + 4 * (size_t)i, 0, 4);
                }
                uint8_t *tail = tile + 64 * n_dw + n_tail * (size_t)i;
                if (blk) memcpy(tail, blk + 4 * n_dw, n_tail);
                else memset(tail, 0, n_tail);
            }
        }
    }
}
