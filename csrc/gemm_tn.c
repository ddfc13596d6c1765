/* C = A^T B on the packed GEMM (see gemm_tn.h): the transposing copy and the
 * row split.  The product itself is fc_gemm (gemm_impl.h, per ISA). */
#include "gemm_tn.h"
#include "gemm.h"
#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FC_TN_SSE 1   /* baseline on x86-64: no ISA dispatch needed */
#endif

#define FC_TN_MIN(a, b) ((a) < (b) ? (a) : (b))

/* Element by element: other CPUs, and the edges of the 4 x 4 blocks. */
static void fc_transpose_scalar(const float *src, ptrdiff_t k, ptrdiff_t m, ptrdiff_t lds,
                                float *dst, ptrdiff_t ldd)
{
    /* 16 x 16 blocks: one block's source lines and destination lines stay in L1 */
    for (ptrdiff_t l0 = 0; l0 < k; l0 += 16)
        for (ptrdiff_t i0 = 0; i0 < m; i0 += 16) {
            const ptrdiff_t le = FC_TN_MIN(k, l0 + 16), ie = FC_TN_MIN(m, i0 + 16);
            for (ptrdiff_t l = l0; l < le; l++)
                for (ptrdiff_t i = i0; i < ie; i++)
                    dst[i * ldd + l] = src[l * lds + i];
        }
}

void fc_transpose(const float *src, ptrdiff_t k, ptrdiff_t m, ptrdiff_t lds, float *dst,
                  ptrdiff_t ldd)
{
#ifdef FC_TN_SSE
    /* 4 x 4 blocks transposed in SSE registers.  The copy is bound by reading A's
     * columns from memory: wider (AVX2 8 x 8) blocks and gathers were no faster. */
    const ptrdiff_t kf = k / 4 * 4, mf = m / 4 * 4;
    for (ptrdiff_t l0 = 0; l0 < kf; l0 += 4)
        for (ptrdiff_t i0 = 0; i0 < mf; i0 += 4) {
            const float *s = src + l0 * lds + i0;
            float *d = dst + i0 * ldd + l0;
            __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + lds);
            __m128 r2 = _mm_loadu_ps(s + 2 * lds), r3 = _mm_loadu_ps(s + 3 * lds);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_storeu_ps(d, r0);
            _mm_storeu_ps(d + ldd, r1);
            _mm_storeu_ps(d + 2 * ldd, r2);
            _mm_storeu_ps(d + 3 * ldd, r3);
        }
    /* the columns past the last whole block, then the rows past it */
    fc_transpose_scalar(src + mf, kf, m - mf, lds, dst + mf * ldd, ldd);
    fc_transpose_scalar(src + kf * lds, k - kf, m, lds, dst + kf, ldd);
#else
    fc_transpose_scalar(src, k, m, lds, dst, ldd);
#endif
}

int fc_gemm_tn_threads(ptrdiff_t m, int nthreads)
{
    const ptrdiff_t units = (m + FC_TN_UNIT - 1) / FC_TN_UNIT;
    if (nthreads < 1 || units < 1)
        return 1;
    return units < nthreads ? (int)units : nthreads;
}

ptrdiff_t fc_gemm_tn_split(ptrdiff_t m, int nthreads, int t)
{
    const ptrdiff_t units = (m + FC_TN_UNIT - 1) / FC_TN_UNIT;
    ptrdiff_t row = FC_TN_MIN(m, units * t / nthreads * FC_TN_UNIT);
    /* a last range of one row would take the GEMV: give it two */
    if (m >= 3 && row == m - 1)
        row = m - 2;
    return row;
}

void fc_gemm_tn_rows(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t k, const float *A, ptrdiff_t lda,
                     int nb, const fc_tn_product *prods, float *At)
{
    for (ptrdiff_t i = i0; i < i1;) {
        ptrdiff_t r = FC_TN_MIN(FC_TN_BLOCK, i1 - i);
        if (i1 - i - r == 1)   /* never leave a block of one row */
            r -= 1;
        fc_transpose(A + i, k, r, lda, At, k);
        for (int j = 0; j < nb; j++)
            if (prods[j].n > 0)
                fc_gemm(r, prods[j].n, k, At, k, prods[j].P, prods[j].C + i * prods[j].ldc,
                        prods[j].ldc);
        i += r;
    }
}
