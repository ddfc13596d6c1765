/* Packed small GEMM for the per-step recurrent products.
 *
 * The time loop multiplies a small (B x K) matrix by the same weight matrix
 * at every step, so the weights are packed once per call into panels of
 * FC_NR columns: panel p holds B[l, p*FC_NR + j] for l = 0..K-1, j = 0..FC_NR-1,
 * contiguous and zero-padded, and the micro-kernel streams it with unit
 * stride.  The packed buffer is allocated by the caller (fc_packed_size).
 */
#ifndef FASTCELLS_GEMM_H
#define FASTCELLS_GEMM_H
#include <stddef.h>

#define FC_NR 16

/* Number of floats the packed form of a K x N matrix takes. */
ptrdiff_t fc_packed_size(ptrdiff_t k, ptrdiff_t n);

/* Pack the K x N matrix whose element (l, j) is src[l*rs + j*cs] into P. */
void fc_pack(const float *src, ptrdiff_t k, ptrdiff_t n, ptrdiff_t rs, ptrdiff_t cs, float *P);

/* C[i, j] = sum_l A[i*lda + l] * B(l, j) for i < m, j < n, B packed in P
 * (through the dispatch table: the ISA in use). */
void fc_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
             const float *P, float *C, ptrdiff_t ldc);

/* fc_gemm, then C[i, j] += bias[j] (bias: n floats) in the product's last
 * store: the bits of the two steps, one pass over C. */
void fc_gemm_bias(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                  const float *P, const float *bias, float *C, ptrdiff_t ldc);

/* fc_gemm with B packed twice: as floats in P and as float16 in Ph, the same
 * layout element by element (exact: B's values are float16 values).  Reads
 * Ph where the ISA in use converts float16 in hardware (AVX2+F16C, AVX-512),
 * half the bytes of P, else P: the same bits either way. */
void fc_gemm_half(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                  const float *P, const unsigned short *Ph, float *C, ptrdiff_t ldc);
/* Whether the ISA in use reads float16 weights (fc_gemm_half uses Ph). */
int fc_has_half(void);

/* Batch-1 products (m == 1) in the tiles' order (on != 0: a row's result then
 * does not depend on how many rows are multiplied with it) or, the default, in
 * the faster GEMV's.  Process-wide; each product reads it once. */
void fc_set_gemv_tiles(int on);
int fc_get_gemv_tiles(void);

/* C[i, j] = sum_l A[i*lda + l] * W[j*ldw + l] for i < m, j < n: A @ W.T with
 * W (n x k) unpacked, rows ldw floats apart (gemm_nt_impl.h).  Reads every
 * W row once per call; for few rows of A (batch-1 steps, short input
 * projections), where packing W would cost as much as the product. */
void fc_gemm_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                const float *W, ptrdiff_t ldw, float *C, ptrdiff_t ldc);

#endif
