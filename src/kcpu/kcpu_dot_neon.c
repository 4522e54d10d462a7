/*
 * kcpu_dot_neon.c: the NEON table for CPUs with the dot-product extension
 * (SDOT, Armv8.2-A+dotprod; AT_HWCAP ASIMDDP). Only the quantized products
 * differ from kcpu_neon.c: the same kernels (kcpu_neon_q.h) with SDOT doing
 * 16 int8 products per instruction. kcpu.c hands this table out only when
 * the kernel reports the extension.
 */
#pragma GCC target("arch=armv8.2-a+dotprod")

#include "kcpu_impl.h"

#define KN_DOT 1
#include "kcpu_neon_q.h"

const struct kcpu_ops kcpu_ops_neon_dotprod = KN_TABLE(KCPU_ISA_NEON);
