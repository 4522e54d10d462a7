/*
 * kcuda_gemm.cu: products of a whole prompt batch, and the dispatch between
 * them and the matrix-vector kernels.
 *
 * Up to KCUDA_MATVEC_TOK_MAX tokens, streaming the quantized weights once
 * per 8 tokens costs less than expanding them, so kcuda_linear loops over
 * kcuda_matvec. Above that it runs cuBLAS (F32 accumulation, tensor cores):
 * F16 and BF16 weights are used as stored with activations in the same type
 * (exactly the CPU's operands), F32 weights in F32, and quantized weights
 * are dequantized to F16 in tiles of rows inside the context's scratch,
 * against activations that went through the same Q8_0/Q8_K rounding as on
 * the CPU and were then widened to F16. Scratch layout of one call:
 *   [F16 activations n_tok x n_in][up outputs n_tok x ldo (SwiGLU)][weight tiles]
 */
#include "kcuda_impl.cuh"

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

size_t kcuda_linear_scratch_bytes(int64_t n_tok, int64_t n_in, int64_t n_out)
{
    return align256((size_t)(n_tok * n_in) * 2) + align256((size_t)(n_tok * n_out) * 4) +
           KCUDA_TILE_BYTES;
}

/* out (beta) = W . act for n_tok > KCUDA_MATVEC_TOK_MAX, through cuBLAS. */
static int gemm(struct kcuda *k, const struct kcuda_weight *w, const void *d_act, size_t act_stride,
                int64_t n_tok, float *d_out, int64_t ldo, float beta, uint8_t *scratch,
                size_t scratch_bytes, const void *act_f16)
{
    const float alpha = 1.0f;
    const int m = (int)w->n_out, n = (int)n_tok, kk = (int)w->n_in;
    cudaDataType_t in_type;
    size_t elem;
    switch (w->type) {
    case KCUDA_F32: in_type = CUDA_R_32F, elem = 4; break;
    case KCUDA_F16: in_type = CUDA_R_16F, elem = 2; break;
    case KCUDA_BF16: in_type = CUDA_R_16BF, elem = 2; break;
    default: in_type = CUDA_R_16F, elem = 0; break;
    }
    if (elem) { /* the weights as stored, the activations in their own type */
        if (w->row_stride % elem || act_stride % elem)
            return tt_error_set(TT_EINVAL, "misaligned rows for a batch product");
        KC_PROF_BEGIN(k);
        KC_CHECK_BLAS(kcuda_blas.gemm_ex(k->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, kk, &alpha, w->data,
                                   in_type, (int)(w->row_stride / elem), d_act, in_type,
                                   (int)(act_stride / elem), &beta, d_out, CUDA_R_32F, (int)ldo,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        KC_PROF_END(k, "gemm (stored)");
        return 0;
    }
    const size_t row_f16 = (size_t)kk * 2;
    int64_t chunk = (int64_t)(scratch_bytes / row_f16) / 64 * 64;
    if (chunk < 64) return tt_error_set(TT_ENOMEM, "GPU product scratch too small for a %d-wide tile", kk);
    for (int64_t r0 = 0; r0 < w->n_out; r0 += chunk) {
        const int64_t rows = w->n_out - r0 < chunk ? w->n_out - r0 : chunk;
        int err = kcuda_dequant_f16(k, kcuda_weight_format(w), w->data, w->row_stride, r0, rows, kk,
                                    scratch);
        if (err) return err;
        KC_PROF_BEGIN(k);
        KC_CHECK_BLAS(kcuda_blas.gemm_ex(k->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n, kk, &alpha,
                                   scratch, CUDA_R_16F, kk, act_f16, CUDA_R_16F, kk, &beta,
                                   d_out + r0, CUDA_R_32F, (int)ldo, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
        KC_PROF_END(k, "gemm (f16 tiles)");
    }
    return 0;
}

int kcuda_linear(struct kcuda *k, const struct kcuda_weight *w, const struct kcuda_weight *w2,
                 const void *d_act, size_t act_stride, int64_t n_tok, float *d_out, int64_t ldo,
                 const float *d_bias, enum kcuda_out_mode mode)
{
    if (w->n_out == 0 || n_tok <= 0) return 0;
    int err = 0;
    if (n_tok <= KCUDA_MATVEC_TOK_MAX) {
        for (int64_t t0 = 0; t0 < n_tok && !err; t0 += 8) {
            const int64_t nt = n_tok - t0 < 8 ? n_tok - t0 : 8;
            err = kcuda_matvec(k, w, w2, (const uint8_t *)d_act + (size_t)t0 * act_stride, act_stride,
                               nt, d_out + t0 * ldo, ldo, d_bias, mode);
        }
        return err;
    }
    if (mode == KCUDA_OUT_SWIGLU && (!w2 || w2->n_out != w->n_out || w2->n_in != w->n_in))
        return tt_error_set(TT_EINVAL, "SwiGLU product needs gate and up of one shape");
    uint8_t *s = (uint8_t *)k->scratch;
    const size_t act_bytes = align256((size_t)(n_tok * w->n_in) * 2);
    const size_t up_bytes = mode == KCUDA_OUT_SWIGLU ? align256((size_t)(n_tok * ldo) * 4) : 0;
    if (act_bytes + up_bytes + (size_t)w->n_in * 128 > k->scratch_bytes)
        return tt_error_set(TT_ENOMEM, "GPU product scratch of %zu bytes too small for %lld x %lld",
                            k->scratch_bytes, (long long)n_tok, (long long)w->n_in);
    const int at = kc_vec_dot_type(w->type);
    const bool expand = at == KCUDA_Q8_0 || at == KCUDA_Q8_K;
    if (expand && (err = kcuda_act_to_f16(k, at, d_act, act_stride, n_tok, w->n_in, s))) return err;
    uint8_t *tiles = s + act_bytes + up_bytes;
    const size_t tile_bytes = k->scratch_bytes - act_bytes - up_bytes;
    const float beta = mode == KCUDA_OUT_ADD ? 1.0f : 0.0f;
    err = gemm(k, w, d_act, act_stride, n_tok, d_out, ldo, beta, tiles, tile_bytes, s);
    if (!err && mode == KCUDA_OUT_SWIGLU) {
        float *up = (float *)(s + act_bytes);
        err = gemm(k, w2, d_act, act_stride, n_tok, up, ldo, 0.0f, tiles, tile_bytes, s);
        if (!err) err = kcuda_swiglu_ld(k, d_out, ldo, up, ldo, n_tok, w->n_out);
    }
    if (!err && d_bias) err = kcuda_add_bias(k, d_out, d_bias, n_tok, w->n_out, ldo);
    return err;
}
