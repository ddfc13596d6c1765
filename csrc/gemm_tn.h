/* C = A^T B on the packed GEMM: backward's weight gradients.
 *
 * dW_ih = dG^T X and dW_hh = dG^T H_prev multiply the (k x m) gate gradients,
 * transposed, by a (k x n) matrix, k = T*B (large), m = G*H, n = I or H.
 * The packed GEMM (gemm.h) reads A's rows contiguously along k, so a block
 * of C's rows first copies its columns of A, transposed, into scratch
 * (exact), then runs fc_gemm against B packed once by fc_pack (B's rows as
 * they are: the plain-copy packing).
 *
 * Products that share A (dW_ih and dW_hh from one dG) share its transposed
 * blocks: one copy of A for both.
 *
 * Threads: C's rows are split by fc_gemm_tn_split, and each thread runs
 * fc_gemm_tn_rows over its own rows and scratch.  A row's result does not
 * depend on the rows multiplied with it (gemm_impl.h) provided no product
 * has a single row (that takes the GEMV, which sums in another order), so no
 * range and no block has one row unless C has one row: the bits do not
 * depend on the thread count.
 */
#ifndef FASTCELLS_GEMM_TN_H
#define FASTCELLS_GEMM_TN_H
#include <stddef.h>

/* Rows of C per transposed block: a multiple of every ISA's row tile (3, 6,
 * 8 rows), so only a block's last tile can be partial. */
#define FC_TN_BLOCK 96
/* Threads' row ranges start at multiples of this (the tiles' common multiple). */
#define FC_TN_UNIT 24

/* dst[i*ldd + l] = src[l*lds + i] for l < k, i < m: the transpose (m x k) of
 * a (k x m) block (an exact copy). */
void fc_transpose(const float *src, ptrdiff_t k, ptrdiff_t m, ptrdiff_t lds, float *dst,
                  ptrdiff_t ldd);

/* The threads that have rows of an m-row C split nthreads ways (the others'
 * ranges are empty): at most ceil(m / FC_TN_UNIT). */
int fc_gemm_tn_threads(ptrdiff_t m, int nthreads);

/* First row of thread t's range when C's m rows are split nthreads ways
 * (t = nthreads gives m): ranges start at multiples of FC_TN_UNIT and none
 * has exactly one row unless m == 1. */
ptrdiff_t fc_gemm_tn_split(ptrdiff_t m, int nthreads, int t);

/* At most this many products share A's transposed blocks in one call:
 * dW_ih = dG^T X and dW_hh = dG^T H_prev when both see the same dG. */
#define FC_TN_MAX_B 2

/* One product C = A^T B of a call: B (k x n) packed by fc_pack in P, C's
 * rows ldc floats apart. */
typedef struct {
    ptrdiff_t n;
    const float *P;
    float *C;
    ptrdiff_t ldc;
} fc_tn_product;

/* Rows [i0, i1) of each product's C = A^T B: A is k x (columns used), rows
 * lda floats apart, C's row i is A's column i.  At: scratch of at least
 * min(FC_TN_BLOCK, i1 - i0) * k floats.  Blocks of at most FC_TN_BLOCK rows,
 * none of one row unless i1 - i0 == 1, each transposed once for all nb
 * products.  The caller sets the floating-point mode (fpenv.h). */
void fc_gemm_tn_rows(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t k, const float *A, ptrdiff_t lda,
                     int nb, const fc_tn_product *prods, float *At);

#endif
