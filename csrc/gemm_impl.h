/* Template: the packed GEMM for one ISA.  Included by gemm.c once per ISA
 * with FC_SFX (name suffix) and FC_TARGET (function attribute) defined; no
 * include guard on purpose.
 *
 * Written with GCC/clang vector extensions: one 16-float vector is one
 * AVX-512 register, two AVX2 registers or four SSE/NEON registers, so the
 * same source is a reasonable kernel for each target.  The micro-kernel
 * keeps an FC_MR x FC_NR block of C in registers and, per l, broadcasts one
 * element of each A row against one packed row of B (the panel stream).
 */
#include <string.h>

#ifndef FC_GEMM_TEMPLATE_COMMON
#define FC_GEMM_TEMPLATE_COMMON
#define FC_CAT_(a, b) a##_##b
#define FC_CAT(a, b) FC_CAT_(a, b)
#define FC_NAME(name) FC_CAT(name, FC_SFX)
#define FC_MR 4
typedef float fc_v16 __attribute__((vector_size(64), aligned(4)));
#endif

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_microkernel)(const int mr, ptrdiff_t k, const float *A, ptrdiff_t lda,
                        const float *Pp, float *C, ptrdiff_t ldc, ptrdiff_t nr)
{
    fc_v16 acc[FC_MR];
    for (int r = 0; r < mr; r++)
        acc[r] = (fc_v16){0};
    for (ptrdiff_t l = 0; l < k; l++) {
        fc_v16 b;
        memcpy(&b, Pp + l * FC_NR, sizeof b);
        for (int r = 0; r < mr; r++)
            acc[r] += A[r * lda + l] * b;
    }
    for (int r = 0; r < mr; r++) {
        if (nr == FC_NR) {
            memcpy(C + r * ldc, &acc[r], sizeof(fc_v16));
        } else {
            float tmp[FC_NR];
            memcpy(tmp, &acc[r], sizeof tmp);
            memcpy(C + r * ldc, tmp, (size_t)nr * sizeof(float));
        }
    }
}

FC_TARGET void FC_NAME(fc_gemm_packed)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                       ptrdiff_t lda, const float *P, float *C, ptrdiff_t ldc)
{
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FC_NR) {
        const float *Pp = P + j0 * k;
        ptrdiff_t nr = n - j0 < FC_NR ? n - j0 : FC_NR;
        ptrdiff_t i = 0;
        for (; i + FC_MR <= m; i += FC_MR)
            FC_NAME(fc_microkernel)(FC_MR, k, A + i * lda, lda, Pp, C + i * ldc + j0, ldc, nr);
        switch (m - i) {
        case 3: FC_NAME(fc_microkernel)(3, k, A + i * lda, lda, Pp, C + i * ldc + j0, ldc, nr); break;
        case 2: FC_NAME(fc_microkernel)(2, k, A + i * lda, lda, Pp, C + i * ldc + j0, ldc, nr); break;
        case 1: FC_NAME(fc_microkernel)(1, k, A + i * lda, lda, Pp, C + i * ldc + j0, ldc, nr); break;
        default: break;
        }
    }
}
