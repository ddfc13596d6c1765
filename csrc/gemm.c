/* Weight packing (ISA independent) and the per-ISA instantiations of the
 * packed GEMM and activations templates. */
#include <string.h>
#include "gemm.h"
#include "dispatch.h"

ptrdiff_t fc_packed_size(ptrdiff_t k, ptrdiff_t n)
{
    return ((n + FC_NR - 1) / FC_NR) * FC_NR * k;
}

void fc_pack(const float *src, ptrdiff_t k, ptrdiff_t n, ptrdiff_t rs, ptrdiff_t cs, float *P)
{
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FC_NR) {
        ptrdiff_t nr = n - j0 < FC_NR ? n - j0 : FC_NR;
        for (ptrdiff_t l = 0; l < k; l++) {
            float *dst = P + j0 * k + l * FC_NR;
            ptrdiff_t j = 0;
            for (; j < nr; j++)
                dst[j] = src[l * rs + (j0 + j) * cs];
            for (; j < FC_NR; j++)
                dst[j] = 0.0f;
        }
    }
}

void fc_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
             const float *P, float *C, ptrdiff_t ldc)
{
    fc_kernels.gemm(m, n, k, A, lda, P, C, ldc);
}

#define FC_SFX generic
#define FC_TARGET
#include "gemm_impl.h"
#include "activations_impl.h"
#undef FC_SFX
#undef FC_TARGET

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define FC_SFX avx2
#define FC_TARGET __attribute__((target("avx2,fma")))
#include "gemm_impl.h"
#include "activations_impl.h"
#undef FC_SFX
#undef FC_TARGET

#define FC_SFX avx512
#define FC_TARGET __attribute__((target("avx512f,avx2,fma")))
#include "gemm_impl.h"
#include "activations_impl.h"
#undef FC_SFX
#undef FC_TARGET
#endif
