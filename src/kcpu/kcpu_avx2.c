/* temporary stub */
#include "kcpu_impl.h"
const struct kcpu_ops kcpu_ops_avx2 = { .isa = KCPU_ISA_AVX2 };
