/*
 * engine_nocuda.c: the accelerator entry point of a build without CUDA.
 * The Makefile compiles this file instead of engine_cuda.c when CUDA is off,
 * so the engine has no #if around its accelerator hook.
 */
#include "engine_internal.h"

int engine_gpu_count(void) { return 0; }

int engine_accel_cuda_create(struct engine *e, int n_gpu_layers, struct engine_accel *out)
{
    (void)e;
    (void)n_gpu_layers;
    (void)out;
    return tt_error_set(TT_EUNSUPPORTED, "this build has no CUDA support (rebuild with make CUDA=1)");
}
