/* Template: the packed GEMM for one ISA.  Included by gemm.c once per ISA
 * with FC_SFX (name suffix), FC_TARGET (function attribute) and the block
 * sizes below defined; no include guard on purpose.
 *
 *   FC_VBYTES  bytes per SIMD register (64 AVX-512, 32 AVX2, 16 SSE2/NEON)
 *   FC_MR      rows of C per micro-tile
 *   FC_NP      16-column panels per micro-tile (tile = FC_MR x 16*FC_NP)
 *   FC_GV      panels per step of the batch-1 product (GEMV)
 *   FC_KC      depth of one k block (L1) when m > 1
 *   FC_L2_BYTES  bytes of A kept in L2 per outer k block
 *
 * The packed layout (gemm.h) is the same for every ISA; only how many
 * panels a tile reads at once differs, so packing never depends on the ISA
 * chosen later.
 *
 * Written with GCC/clang vector extensions sized to the target register, so
 * the compiler keeps a tile's accumulators in registers: per k step the
 * tile loads FC_NP panel rows, broadcasts one element of each A row and does
 * FC_MR * FC_NP * 16 / lanes independent (fused) multiply-adds, enough
 * independent chains to hide the FMA latency.
 *
 * Batch 1 is a matrix-vector product, bound by how fast the weights stream
 * in: it walks one panel at a time as one contiguous stream, with several
 * accumulators over interleaved rows (fc_gemv_panel).
 *
 * For m > 1 the k dimension is cut into blocks (see the loop below); the
 * first block stores C, later blocks add to it.
 */
#include <string.h>

#ifndef FC_GEMM_TEMPLATE_COMMON
#define FC_GEMM_TEMPLATE_COMMON
#define FC_CAT_(a, b) a##_##b
#define FC_CAT(a, b) FC_CAT_(a, b)
#define FC_NAME(name) FC_CAT(name, FC_SFX)
#endif

#define FC_VL (FC_VBYTES / 4)          /* floats per register */
#define FC_PV (FC_NR / FC_VL)          /* registers per panel row */

typedef float FC_NAME(fc_vec) __attribute__((vector_size(FC_VBYTES), aligned(4)));

/* One unaligned register load of packed weights.  GCC's generic tuning
 * splits unaligned 256-bit loads in two and a target attribute cannot turn
 * that off, so the AVX2 path names the instruction (FC_LOAD_ASM).  The asm
 * takes the address in a register, not as a memory operand: a memory
 * operand makes GCC assume it may alias the accumulators, which then live in
 * memory.  That is sound only because the packed weights are never written
 * while a product runs (GCC may reuse or hoist such a load); C is read with
 * memcpy. */
static inline __attribute__((always_inline)) FC_TARGET FC_NAME(fc_vec)
FC_NAME(fc_load_packed)(const float *p)
{
    FC_NAME(fc_vec) v;
#ifdef FC_LOAD_ASM
    __asm__(FC_LOAD_ASM " (%1), %0" : "=x"(v) : "r"(p));
#else
    memcpy(&v, p, sizeof v);
#endif
    return v;
}

/* C tile (mr x 16*np, the last panel's valid width nlast) = or += A (mr x k)
 * times np panels that start ps floats apart. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_tile)(const int mr, const int np, ptrdiff_t k, const float *A, ptrdiff_t lda,
                 const float *P, ptrdiff_t ps, float *C, ptrdiff_t ldc, ptrdiff_t nlast,
                 int accumulate)
{
    typedef FC_NAME(fc_vec) vec;
    vec acc[FC_MR > 1 ? FC_MR : 1][(FC_NP > FC_GV ? FC_NP : FC_GV) * FC_PV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < np * FC_PV; v++)
            acc[r][v] = (vec){0};
    for (ptrdiff_t l = 0; l < k; l++) {
        vec b[(FC_NP > FC_GV ? FC_NP : FC_GV) * FC_PV];
        for (int p = 0; p < np; p++)
            for (int v = 0; v < FC_PV; v++)
                b[p * FC_PV + v] = FC_NAME(fc_load_packed)(P + p * ps + l * FC_NR + v * FC_VL);
        for (int r = 0; r < mr; r++) {
            vec a = A[r * lda + l] - (vec){0}; /* a splat; x - 0 folds to x */
            for (int v = 0; v < np * FC_PV; v++)
                acc[r][v] += a * b[v];
        }
    }
    /* Constant trip counts here too, so acc[][] never needs a memory home. */
    const ptrdiff_t width = (np - 1) * FC_NR + nlast;
    for (int r = 0; r < mr; r++) {
        float *c = C + r * ldc;
        for (int v = 0; v < np * FC_PV; v++) {
            vec t = acc[r][v];
            if ((v + 1) * FC_VL <= width) {
                if (accumulate) {
                    vec old;
                    memcpy(&old, c + v * FC_VL, sizeof old);
                    t += old;
                }
                memcpy(c + v * FC_VL, &t, sizeof t);
            } else if (v * FC_VL < width) {
                float tmp[FC_VL];
                memcpy(tmp, &t, sizeof tmp);
                for (ptrdiff_t j = 0; j < width - v * FC_VL; j++)
                    c[v * FC_VL + j] = accumulate ? c[v * FC_VL + j] + tmp[j] : tmp[j];
            }
        }
    }
}

/* One column of tiles (np panels) over all m rows; constant np so each case
 * is its own register-allocated copy. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_tile_column)(const int np, ptrdiff_t m, ptrdiff_t k, const float *A, ptrdiff_t lda,
                        const float *P, ptrdiff_t ps, float *C, ptrdiff_t ldc, ptrdiff_t nlast,
                        int accumulate)
{
    ptrdiff_t i = 0;
    for (; i + FC_MR <= m; i += FC_MR)
        FC_NAME(fc_tile)(FC_MR, np, k, A + i * lda, lda, P, ps, C + i * ldc, ldc, nlast,
                         accumulate);
    /* Remainder rows: one constant-size copy per count. */
#define FC_REM(R)                                                                          \
    case R:                                                                                \
        FC_NAME(fc_tile)(R < FC_MR ? R : 1, np, k, A + i * lda, lda, P, ps, C + i * ldc,  \
                         ldc, nlast, accumulate);                                          \
        break;
    switch (m - i) {
        FC_REM(1) FC_REM(2) FC_REM(3) FC_REM(4) FC_REM(5) FC_REM(6) FC_REM(7)
        FC_REM(8) FC_REM(9) FC_REM(10) FC_REM(11) FC_REM(12) FC_REM(13)
    default: break;
    }
#undef FC_REM
}

/* Batch 1: one panel (16 columns) of c = x @ B, streaming the panel's k rows
 * contiguously with FC_GU accumulators over interleaved rows (independent
 * chains hide the FMA latency).  One panel at a time, not several side by
 * side: panels lie 16*k floats apart, a multiple of 4 KiB for the usual k,
 * so side-by-side streams all map to the same L1 sets and evict each other. */
#define FC_GU (8 / FC_PV > 1 ? 8 / FC_PV : 2)
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemv_panel)(ptrdiff_t k, const float *x, const float *Pp, float *c, ptrdiff_t nlast)
{
    typedef FC_NAME(fc_vec) vec;
    vec acc[FC_GU][FC_PV];
    for (int u = 0; u < FC_GU; u++)
        for (int v = 0; v < FC_PV; v++)
            acc[u][v] = (vec){0};
    ptrdiff_t l = 0;
    for (; l + FC_GU <= k; l += FC_GU)
        for (int u = 0; u < FC_GU; u++) {
            vec a = x[l + u] - (vec){0};
            for (int v = 0; v < FC_PV; v++)
                acc[u][v] += a * FC_NAME(fc_load_packed)(Pp + (l + u) * FC_NR + v * FC_VL);
        }
    for (; l < k; l++) {
        vec a = x[l] - (vec){0};
        for (int v = 0; v < FC_PV; v++)
            acc[0][v] += a * FC_NAME(fc_load_packed)(Pp + l * FC_NR + v * FC_VL);
    }
    for (int u = 1; u < FC_GU; u++)
        for (int v = 0; v < FC_PV; v++)
            acc[0][v] += acc[u][v];
    float tmp[FC_NR];
    memcpy(tmp, acc[0], sizeof tmp);
    memcpy(c, tmp, (size_t)nlast * sizeof(float));
}
#undef FC_GU

FC_TARGET void FC_NAME(fc_gemm_packed)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                       ptrdiff_t lda, const float *P, float *C, ptrdiff_t ldc)
{
    const ptrdiff_t npan = (n + FC_NR - 1) / FC_NR;
    const ptrdiff_t ps = FC_NR * k;                 /* floats between panels */
    const ptrdiff_t ntail = n - (npan - 1) * FC_NR; /* valid columns of the last panel */

    if (m == 1) {
        for (ptrdiff_t p = 0; p < npan; p++)
            FC_NAME(fc_gemv_panel)(k, A, P + p * ps, C + p * FC_NR,
                                   p + 1 == npan ? ntail : FC_NR);
        return;
    }

    /* Blocking: A's rows over one L2 block of k (FC_L2_BYTES) stay in L2
     * while every tile column passes over them; within it, the panels of one
     * tile column over FC_KC stay in L1 while each row tile passes, and the
     * C strip of that column stays in L1 across the FC_KC blocks.  k = 0
     * still makes one (empty) pass so C is written with zeros. */
    ptrdiff_t kc2 = FC_L2_BYTES / (ptrdiff_t)(4 * m) / FC_KC * FC_KC;
    if (kc2 < FC_KC)
        kc2 = FC_KC;
    ptrdiff_t k1 = 0;
    do {
        ptrdiff_t k1e = k - k1 < kc2 ? k : k1 + kc2;
        for (ptrdiff_t p = 0; p < npan; p += FC_NP) {
            ptrdiff_t k0 = k1;
            do {
                ptrdiff_t kb = k1e - k0 < FC_KC ? k1e - k0 : FC_KC;
                const float *Pk = P + p * ps + k0 * FC_NR;
                if (p + FC_NP <= npan)
                    FC_NAME(fc_tile_column)(FC_NP, m, kb, A + k0, lda, Pk, ps, C + p * FC_NR,
                                            ldc, p + FC_NP == npan ? ntail : FC_NR, k0 > 0);
                else /* fewer than FC_NP panels left: one at a time */
                    for (ptrdiff_t q = p; q < npan; q++)
                        FC_NAME(fc_tile_column)(1, m, kb, A + k0, lda, Pk + (q - p) * ps, ps,
                                                C + q * FC_NR, ldc,
                                                q + 1 == npan ? ntail : FC_NR, k0 > 0);
                k0 += kb;
            } while (k0 < k1e);
        }
        k1 = k1e;
    } while (k1 < k);
}

#undef FC_VL
#undef FC_PV
