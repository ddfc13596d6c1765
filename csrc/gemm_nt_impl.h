/* Template: the unpacked "NT" product for one ISA, C = A @ W.T with A (m x k)
 * and W (n x k) both row-major along k.  Included by gemm.c once per ISA
 * after gemm_impl.h (same FC_SFX, FC_TARGET, FC_VBYTES, FC_LOAD_ASM); no
 * include guard on purpose.
 *
 * Why a second product: the packed GEMM (gemm_impl.h) needs W packed first,
 * a transposing copy of the whole matrix.  When A has few rows that copy
 * costs as much as the product: at batch 1 each step of the loop reads the
 * weights once anyway, so packing doubles the traffic of the first step and
 * costs as much as several steps; and the input projection of a
 * short batch-1 sequence (T*B rows) reads W_ih only a few times (BLAS packs
 * it too).  Here every W row is read straight from the caller's array, as
 * one contiguous stream, exactly once per call.
 *
 * A tile is FC_NT_MR rows of A by FC_NT_NR rows of W; per k step of one
 * register it loads each row once and does MR*NR independent fused
 * multiply-adds into per-pair accumulators, so it is as load-light as the
 * packed tile.  Each accumulator then holds lane-wise partial dot products,
 * reduced by a transposing tree (FC_NT_FOLD): folding two registers adds
 * their halves pairwise, so log2(lanes) levels turn `lanes` accumulators
 * into one register of full sums, three vector operations per fold instead
 * of a horizontal sum each.
 *
 * Loop order: W's row tiles outside, A's row tiles inside, so W streams
 * from memory once while A (the caller keeps it small: fc_gemm_nt_fits)
 * stays in cache.  The last k % lanes columns go through the same vector
 * code on zero-padded copies.
 *
 * Loads go through fc_load_packed (gemm_impl.h: one named instruction on
 * AVX2), whose asm GCC may reuse or hoist: sound because neither A nor W is
 * written while one call runs (C is a separate buffer, written with memcpy).
 */
#include <string.h>

#ifndef FC_NT_TEMPLATE_COMMON
#define FC_NT_TEMPLATE_COMMON
/* Bit-reversal of i over `bits` bits: the lane where the fold tree leaves
 * the sum of its i-th input (see fc_nt_reduce). */
static inline int fc_nt_bitrev(int i, int bits)
{
    int r = 0;
    for (int b = 0; b < bits; b++)
        r |= ((i >> b) & 1) << (bits - 1 - b);
    return r;
}
#endif

/* Tiles: MR*NR accumulators plus NR rows of W and one of A fit the register
 * file (32 AVX-512 registers, 16 otherwise).  Batch 1: NR1 rows of W, 8
 * accumulators (the W loads fold into the FMAs); 8 rows beat 4 rows x 2
 * registers of k, and 16 rows (16 rows 4 KiB apart overflow L1's 8 ways):
 * docs/design.md, "Measurements behind the code's choices", "GEMM tiles". */
#define FC_NT_MR (FC_VBYTES == 64 ? 4 : 2)
#define FC_NT_NR 4
#define FC_NT_NR1 8
#define FC_VL (FC_VBYTES / 4)
#define FC_NT_ACC (FC_NT_MR * FC_NT_NR > FC_NT_NR1 ? FC_NT_MR * FC_NT_NR : FC_NT_NR1)
#define FC_NT_LOG2 (FC_VL == 16 ? 4 : FC_VL == 8 ? 3 : 2)

typedef int FC_NAME(fc_nt_ivec) __attribute__((vector_size(FC_VBYTES)));

/* Fold p and q at block size s: with the lanes cut into groups of 2s, group
 * g of the result is [p's block 2g + p's block 2g+1, q's block 2g + q's
 * block 2g+1] (blocks of s lanes).  Lane i takes, from the 2*lanes of
 * (p, q), FC_NT_SRC(i, s) in the low mask and that + s in the high one;
 * the masks are written out as constant lists so GCC emits one permute. */
#define FC_NT_SRC(i, s) \
    ((i) % (2 * (s)) < (s) ? (i) / (2 * (s)) * 2 * (s) + (i) % (2 * (s)) \
                           : FC_VL + (i) / (2 * (s)) * 2 * (s) + (i) % (2 * (s)) - (s))
#define FC_NT_M4(b, s, o) FC_NT_SRC(b, s) + o, FC_NT_SRC(b + 1, s) + o, \
    FC_NT_SRC(b + 2, s) + o, FC_NT_SRC(b + 3, s) + o
#if FC_VL == 16
#define FC_NT_MASK(s, o) \
    { FC_NT_M4(0, s, o), FC_NT_M4(4, s, o), FC_NT_M4(8, s, o), FC_NT_M4(12, s, o) }
#elif FC_VL == 8
#define FC_NT_MASK(s, o) { FC_NT_M4(0, s, o), FC_NT_M4(4, s, o) }
#else
#define FC_NT_MASK(s, o) { FC_NT_M4(0, s, o) }
#endif
#define FC_NT_FOLD(p, q, s)                                                        \
    (__builtin_shuffle(p, q, (FC_NAME(fc_nt_ivec))FC_NT_MASK(s, 0)) +              \
     __builtin_shuffle(p, q, (FC_NAME(fc_nt_ivec))FC_NT_MASK(s, s)))

/* out[i] = sum of the lanes of v[i] for i < nv (nv <= lanes), by the fold
 * tree over v padded with zeros to `lanes` registers. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_nt_reduce)(FC_NAME(fc_vec) *v, const int nv, float *out)
{
    typedef FC_NAME(fc_vec) vec;
    vec t[FC_VL];
    for (int i = 0; i < FC_VL; i++)
        t[i] = i < nv ? v[i] : (vec){0};
#pragma GCC unroll 16
    for (int i = 0; i < FC_VL / 2; i++)
        t[i] = FC_NT_FOLD(t[2 * i], t[2 * i + 1], FC_VL / 2);
#if FC_VL >= 8
#pragma GCC unroll 16
    for (int i = 0; i < FC_VL / 4; i++)
        t[i] = FC_NT_FOLD(t[2 * i], t[2 * i + 1], FC_VL / 4);
#endif
#if FC_VL >= 16
#pragma GCC unroll 16
    for (int i = 0; i < FC_VL / 8; i++)
        t[i] = FC_NT_FOLD(t[2 * i], t[2 * i + 1], FC_VL / 8);
#endif
    t[0] = FC_NT_FOLD(t[0], t[1], 1);
    float lanes[FC_VL];
    memcpy(lanes, &t[0], sizeof lanes);
    for (int i = 0; i < nv; i++)
        out[i] = lanes[fc_nt_bitrev(i, FC_NT_LOG2)];
}

/* One tile: C[r, j] = A row r . W row j for r < mr, j < nr.  Every element
 * is summed in the same order whatever the tile (lane-wise along k, then
 * the fold tree), so a row's result does not depend on m or on where the
 * row falls: projecting a sequence whole or in chunks gives the same bits. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_nt_tile)(const int mr, const int nr, ptrdiff_t k, const float *A,
                    ptrdiff_t lda, const float *W, ptrdiff_t ldw, float *C, ptrdiff_t ldc)
{
    typedef FC_NAME(fc_vec) vec;
    vec acc[FC_NT_ACC];
    for (int i = 0; i < mr * nr; i++)
        acc[i] = (vec){0};
    ptrdiff_t l = 0;
    for (; l + FC_VL <= k; l += FC_VL) {
        vec w[FC_NT_ACC];
        for (int j = 0; j < nr; j++)
            w[j] = FC_NAME(fc_load_packed)(W + j * ldw + l);
        for (int r = 0; r < mr; r++) {
            vec a = FC_NAME(fc_load_packed)(A + r * lda + l);
            for (int j = 0; j < nr; j++)
                acc[r * nr + j] += a * w[j];
        }
    }
    if (l < k) {                           /* the zero-padded tail */
        const ptrdiff_t len = k - l;
        vec w[FC_NT_ACC];
        for (int j = 0; j < nr; j++) {
            float tmp[FC_VL] = {0};
            memcpy(tmp, W + j * ldw + l, (size_t)len * sizeof(float));
            memcpy(&w[j], tmp, sizeof tmp);
        }
        for (int r = 0; r < mr; r++) {
            float tmp[FC_VL] = {0};
            memcpy(tmp, A + r * lda + l, (size_t)len * sizeof(float));
            vec a;
            memcpy(&a, tmp, sizeof tmp);
            for (int j = 0; j < nr; j++)
                acc[r * nr + j] += a * w[j];
        }
    }
    float out[FC_NT_ACC];
    for (int i = 0; i < mr * nr; i += FC_VL)
        FC_NAME(fc_nt_reduce)(acc + i, mr * nr - i < FC_VL ? mr * nr - i : FC_VL, out + i);
    for (int r = 0; r < mr; r++)
        memcpy(C + r * ldc, out + r * nr, (size_t)nr * sizeof(float));
}

/* All A rows against nr rows of W (constant nr: its own register allocation). */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_nt_column)(const int nr, ptrdiff_t m, ptrdiff_t k, const float *A, ptrdiff_t lda,
                      const float *W, ptrdiff_t ldw, float *C, ptrdiff_t ldc)
{
    ptrdiff_t i = 0;
    for (; i + FC_NT_MR <= m; i += FC_NT_MR)
        FC_NAME(fc_nt_tile)(FC_NT_MR, nr, k, A + i * lda, lda, W, ldw, C + i * ldc, ldc);
    switch (m - i) {   /* remainder rows, each count its own constant-size copy */
    case 1: FC_NAME(fc_nt_tile)(1, nr, k, A + i * lda, lda, W, ldw, C + i * ldc, ldc); break;
    case 2: FC_NAME(fc_nt_tile)(2, nr, k, A + i * lda, lda, W, ldw, C + i * ldc, ldc); break;
    case 3: FC_NAME(fc_nt_tile)(3 < FC_NT_MR ? 3 : 1, nr, k, A + i * lda, lda, W, ldw,
                                C + i * ldc, ldc); break;
    default: break;
    }
}

FC_TARGET void FC_NAME(fc_gemm_nt)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                   ptrdiff_t lda, const float *W, ptrdiff_t ldw, float *C,
                                   ptrdiff_t ldc)
{
    ptrdiff_t j = 0;
    if (m == 1)    /* batch 1: wider tiles, for enough independent chains */
        for (; j + FC_NT_NR1 <= n; j += FC_NT_NR1)
            FC_NAME(fc_nt_tile)(1, FC_NT_NR1, k, A, lda, W + j * ldw, ldw, C + j, ldc);
    for (; j + FC_NT_NR <= n; j += FC_NT_NR)
        FC_NAME(fc_nt_column)(FC_NT_NR, m, k, A, lda, W + j * ldw, ldw, C + j, ldc);
    for (; j < n; j++)
        FC_NAME(fc_nt_column)(1, m, k, A, lda, W + j * ldw, ldw, C + j, ldc);
}

#undef FC_VL
#undef FC_NT_LOG2
#undef FC_NT_ACC
#undef FC_NT_MR
#undef FC_NT_NR
#undef FC_NT_NR1
#undef FC_NT_SRC
#undef FC_NT_M4
#undef FC_NT_MASK
#undef FC_NT_FOLD
