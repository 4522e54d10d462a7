/*
 * kcuda_kdot.cuh: the K-quant items and their dp4a dots shared by the
 * weight-streaming kernels of kcuda_matvec.cu and the MoE down+join kernel
 * of kcuda_moe.cu (see kcuda_matvec.cu for the item layouts). The integer
 * sums are exact; each item scales its own sums in float, so both kernels
 * give the same value for the same item.
 */
#ifndef TUTTI_KCUDA_KDOT_CUH
#define TUTTI_KCUDA_KDOT_CUH

#include "kcuda_impl.cuh"

__device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }
#define ONES 0x01010101

/* Sixteen activation bytes at byte offset `off` of a row. With `sw` the
 * row was staged in shared memory with its 16-byte chunks swizzled within
 * groups of 8 (chunk c at c ^ ((c >> 3) & 7)), so the lanes of a warp, each
 * reading its own 64-byte run (Q4_K, Q6_K items), hit distinct banks. */
__device__ __forceinline__ int mv_swizzle(int c) { return c ^ ((c >> 3) & 7); }
__device__ __forceinline__ int4 act16(const uint8_t *ar, int off, bool sw)
{
    return *(const int4 *)(ar + (sw ? mv_swizzle(off >> 4) << 4 : off));
}

__device__ __forceinline__ uint32_t byte_of(uint32_t w, int i) { return (w >> (8 * i)) & 0xFFu; }

/* Scale and min of sub-block j (0..7) from the 12 scale bytes in words s0..s2. */
__device__ __forceinline__ void k_scale_min(uint32_t s0, uint32_t s1, uint32_t s2, int j, int &sc, int &m)
{
    if (j < 4) {
        sc = (int)(byte_of(s0, j) & 63), m = (int)(byte_of(s1, j) & 63);
    } else {
        sc = (int)((byte_of(s2, j - 4) & 0xF) | ((byte_of(s0, j - 4) >> 6) << 4));
        m = (int)((byte_of(s2, j - 4) >> 4) | ((byte_of(s1, j - 4) >> 6) << 4));
    }
}

/* Scales and mins of sub-blocks 2g and 2g+1 (one branch for the pair). */
__device__ __forceinline__ void k_scales(uint32_t s0, uint32_t s1, uint32_t s2, int g, int &sc0,
                                         int &m0, int &sc1, int &m1)
{
    if (g < 2) {
        const int j0 = 2 * g, j1 = 2 * g + 1;
        sc0 = (int)(byte_of(s0, j0) & 63), m0 = (int)(byte_of(s1, j0) & 63);
        sc1 = (int)(byte_of(s0, j1) & 63), m1 = (int)(byte_of(s1, j1) & 63);
    } else {
        const int j0 = 2 * g - 4, j1 = 2 * g - 3;
        sc0 = (int)((byte_of(s2, j0) & 0xF) | ((byte_of(s0, j0) >> 6) << 4));
        m0 = (int)((byte_of(s2, j0) >> 4) | ((byte_of(s1, j0) >> 6) << 4));
        sc1 = (int)((byte_of(s2, j1) & 0xF) | ((byte_of(s0, j1) >> 6) << 4));
        m1 = (int)((byte_of(s2, j1) >> 4) | ((byte_of(s1, j1) >> 6) << 4));
    }
}

/* Q4_K items are 64 weights: block it/4, sub-block pair g = it%4, the 32
 * bytes whose low nibbles are sub-block 2g and high nibbles sub-block 2g+1.
 * Each lane scales its own integer sums (no shuffles): the float sum runs
 * per sub-block pair instead of per super-block, a difference of rounding
 * only. */
struct kq4k_item {
    uint4 hdr, q0, q1;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const uint8_t *b = wr + (size_t)(it >> 2) * 144;
        const int g = it & 3;
        hdr = __ldg((const uint4 *)b);
        q0 = __ldg((const uint4 *)(b + 16 + 32 * g));
        q1 = __ldg((const uint4 *)(b + 32 + 32 * g));
    }
    /* the same item of a row copied whole into shared memory */
    __device__ __forceinline__ void load_shared(const uint8_t *wr, int it)
    {
        const uint8_t *b = wr + (size_t)(it >> 2) * 144;
        const int g = it & 3;
        hdr = *(const uint4 *)b;
        q0 = *(const uint4 *)(b + 16 + 32 * g);
        q1 = *(const uint4 *)(b + 32 + 32 * g);
    }
    __device__ __forceinline__ float dot(const uint8_t *ar, int n_in, int it, bool sw) const
    {
        const int ib = it >> 2, g = it & 3;
        const int off = 256 * ib + 64 * g;
        const int4 a0 = act16(ar, off, sw), a1 = act16(ar, off + 16, sw), a2 = act16(ar, off + 32, sw),
                   a3 = act16(ar, off + 48, sw);
        const int al[8] = { a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w };
        const int ah[8] = { a2.x, a2.y, a2.z, a2.w, a3.x, a3.y, a3.z, a3.w };
        const uint32_t q[8] = { q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w };
        int dlo = 0, dhi = 0, slo = 0, shi = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            dlo = dp4a((int)(q[i] & 0x0F0F0F0Fu), al[i], dlo);
            dhi = dp4a((int)((q[i] >> 4) & 0x0F0F0F0Fu), ah[i], dhi);
            slo = dp4a(ONES, al[i], slo);
            shi = dp4a(ONES, ah[i], shi);
        }
        int sc0, m0, sc1, m1;
        k_scales(hdr.y, hdr.z, hdr.w, g, sc0, m0, sc1, m1);
        const __half2 dd = *(const __half2 *)&hdr.x;
        const float dy = ((const float *)(ar + n_in))[ib];
        return (__low2float(dd) * dy) * (float)(sc0 * dlo + sc1 * dhi) -
               (__high2float(dd) * dy) * (float)(m0 * slo + m1 * shi);
    }
};

/* Q6_K items are 64 weights: block it/4, half h = (it%4)/2, j = it%2: the
 * 16 positions l = 16j..16j+15 of the half, i.e. elements 128h + 32k + l
 * for k = 0..3 (sub-block scale 8h + j + 2k); per-lane float scaling as
 * Q4_K. la, lb: ql bytes 64h + 16j + [0,16) and 64h + 32 + 16j + [0,16);
 * hb: qh bytes 32h + 16j + [0,16); byte k of sc4: the scale of k. */
__device__ __forceinline__ float q6_dot(const uint4 &la4, const uint4 &lb4, const uint4 &hb4, uint32_t sc4,
                                        float d, const uint8_t *ar, int n_in, int it, bool sw)
{
    const int ib = it >> 2, h = (it & 3) >> 1, j = it & 1;
    const int off = 256 * ib + 128 * h + 16 * j;
    const uint32_t la[4] = { la4.x, la4.y, la4.z, la4.w }, lb[4] = { lb4.x, lb4.y, lb4.z, lb4.w };
    const uint32_t hb[4] = { hb4.x, hb4.y, hb4.z, hb4.w };
    int isum = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int4 a = act16(ar, off + 32 * k, sw);
        const int av[4] = { a.x, a.y, a.z, a.w };
        const int sc = (int)(int8_t)(sc4 >> (8 * k));
        int dt = 0, sa = 0;
#pragma unroll
        for (int w = 0; w < 4; w++) {
            const uint32_t l = (k & 1 ? lb[w] : la[w]) >> (k >= 2 ? 4 : 0);
            const uint32_t q = (l & 0x0F0F0F0Fu) | (((hb[w] >> (2 * k)) & 0x03030303u) << 4);
            dt = dp4a((int)q, av[w], dt);
            sa = dp4a(ONES, av[w], sa);
        }
        isum += sc * (dt - 32 * sa);
    }
    const float dy = ((const float *)(ar + n_in))[ib];
    return (d * dy) * (float)isum;
}

/* Q6_K as stored: blocks are 2-byte aligned (210 bytes), so funnel-shift
 * loads (19 of 4 bytes per item). */
struct kq6k_item {
    uint4 la, lb, hb;
    uint32_t sc4;
    float d;
    __device__ __forceinline__ void load(const uint8_t *wr, int it)
    {
        const int ib = it >> 2, h = (it & 3) >> 1, j = it & 1;
        const uint8_t *b = wr + (size_t)ib * 210;
        uint32_t s0, s1;
        kc_load16_a2(b + 64 * h + 16 * j, (uint32_t *)&la);
        kc_load16_a2(b + 64 * h + 32 + 16 * j, (uint32_t *)&lb);
        kc_load16_a2(b + 128 + 32 * h + 16 * j, (uint32_t *)&hb);
        kc_load8_a2(b + 192 + 8 * h, s0, s1);
        /* scales j + 2k of the half's 8 (bytes of s0, then s1) */
        sc4 = __byte_perm(s0, s1, (unsigned)(j | (j + 2) << 4 | (j + 4) << 8 | (j + 6) << 12));
        d = __half2float(*(const __half *)(b + 208));
    }
    __device__ __forceinline__ float dot(const uint8_t *ar, int n_in, int it, bool sw) const
    {
        return q6_dot(la, lb, hb, sc4, d, ar, n_in, it, sw);
    }
};

#endif
