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
        float *panel = P + j0 * k;
        if (nr < FC_NR)
            memset(panel, 0, (size_t)(k * FC_NR) * sizeof(float));
        /* walk the source along its contiguous axis: W (rows j) for A @ W.T
         * (rs == 1), W (rows l) for A @ W; the writes stay in one panel */
        if (rs == 1) {
            for (ptrdiff_t j = 0; j < nr; j++) {
                const float *col = src + (j0 + j) * cs;
                for (ptrdiff_t l = 0; l < k; l++)
                    panel[l * FC_NR + j] = col[l];
            }
        } else {
            for (ptrdiff_t l = 0; l < k; l++)
                for (ptrdiff_t j = 0; j < nr; j++)
                    panel[l * FC_NR + j] = src[l * rs + (j0 + j) * cs];
        }
    }
}

void fc_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
             const float *P, float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)   /* nothing to write; the kernels divide by m */
        return;
    fc_kernels.gemm(m, n, k, A, lda, P, C, ldc);
}

void fc_gemm_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                const float *W, ptrdiff_t ldw, float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)
        return;
    fc_kernels.gemm_nt(m, n, k, A, lda, W, ldw, C, ldc);
}

/* Block sizes per ISA (see gemm_impl.h).  A tile's accumulators,
 * FC_MR * FC_NP * 16 / lanes registers, plus its panel rows and a broadcast
 * fit the register file (16 SSE2/AVX2 registers, 32 AVX-512); FC_KC keeps a
 * tile column's panels (FC_KC x 16*FC_NP floats) within L1 (16-32 KB).
 * AVX-512 uses 8 x 16, not a wider 12 x 32: on a CPU that splits 512-bit
 * FMAs in two (AMD Zen 4) 8 chains already fill the FMA pipes and the wider
 * tile measured 5-15% slower.  The unpacked product sizes its own tiles
 * from FC_VBYTES (gemm_nt_impl.h). */
#define FC_L2_BYTES (256 * 1024)

#define FC_SFX generic
#define FC_TARGET
#define FC_VBYTES 16
#define FC_MR 3
#define FC_NP 1
#define FC_GV 2
#define FC_KC 256
#include "gemm_impl.h"
#include "activations_impl.h"
#include "gemm_nt_impl.h"
#undef FC_SFX
#undef FC_TARGET
#undef FC_VBYTES
#undef FC_MR
#undef FC_NP
#undef FC_GV
#undef FC_KC

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define FC_SFX avx2
#define FC_TARGET __attribute__((target("avx2,fma")))
#define FC_LOAD_ASM "vmovups"
#define FC_VBYTES 32
#define FC_MR 6
#define FC_NP 1
#define FC_GV 4
#define FC_KC 256
#include "gemm_impl.h"
#include "activations_impl.h"
#include "gemm_nt_impl.h"
#undef FC_SFX
#undef FC_TARGET
#undef FC_VBYTES
#undef FC_MR
#undef FC_NP
#undef FC_GV
#undef FC_KC
#undef FC_LOAD_ASM

#define FC_SFX avx512
#define FC_TARGET __attribute__((target("avx512f,avx2,fma")))
#define FC_VBYTES 64
#define FC_MR 8
#define FC_NP 1
#define FC_GV 8
#define FC_KC 512
#include "gemm_impl.h"
#include "activations_impl.h"
#include "gemm_nt_impl.h"
#undef FC_SFX
#undef FC_TARGET
#undef FC_VBYTES
#undef FC_MR
#undef FC_NP
#undef FC_GV
#undef FC_KC
#endif
