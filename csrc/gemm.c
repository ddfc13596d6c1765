/* Weight packing (its layout is ISA independent, its loops are per ISA) and
 * the per-ISA instantiations of the packed GEMM and activations templates. */
#include <stdint.h>
#include <string.h>
#include "gemm.h"
#include "dispatch.h"
#include "cpu.h"
#if (defined(__x86_64__) || defined(_M_X64) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define FC_X86_INTRIN 1   /* the templates may use intrinsics under FC_TARGET */
#endif

/* Whether batch-1 products sum in the tiles' order (the deterministic mode:
 * fastcells._config.set_deterministic), else the faster GEMV's.  Read once per
 * product, so a product never mixes the two; relaxed atomics: only the value
 * matters, it orders nothing else. */
static int fc_gemv_tiles;

void fc_set_gemv_tiles(int on) { __atomic_store_n(&fc_gemv_tiles, on != 0, __ATOMIC_RELAXED); }

int fc_get_gemv_tiles(void) { return __atomic_load_n(&fc_gemv_tiles, __ATOMIC_RELAXED); }

ptrdiff_t fc_packed_size(ptrdiff_t k, ptrdiff_t n)
{
    return ((n + FC_NR - 1) / FC_NR) * FC_NR * k;
}

void fc_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
             const float *P, float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)   /* nothing to write; the kernels divide by m */
        return;
    fc_kernels.gemm(m, n, k, A, lda, P, C, ldc);
}

void fc_gemm_bias(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                  const float *P, const float *bias, float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)
        return;
    fc_kernels.gemm_bias(m, n, k, A, lda, P, bias, C, ldc);
}

void fc_gemm_half(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                  const float *P, const unsigned short *Ph, float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (fc_kernels.gemm_half)
        fc_kernels.gemm_half(m, n, k, A, lda, Ph, C, ldc);
    else
        fc_kernels.gemm(m, n, k, A, lda, P, C, ldc);
}

int fc_has_half(void) { return fc_kernels.gemm_half != NULL; }

void fc_gemm_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                const float *W, ptrdiff_t ldw, float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)
        return;
    fc_kernels.gemm_nt(m, n, k, A, lda, W, ldw, C, ldc);
}

/* Block sizes per ISA (see gemm_impl.h).  A tile's accumulators,
 * FC_MR * FC_NP * 16 / lanes registers, plus its panel rows and a broadcast
 * fit the register file (16 SSE2/AVX2 registers, 32 AVX-512).
 * AVX-512 uses 8 x 16, not a wider tile: on a CPU that splits 512-bit FMAs
 * in two, 8 independent chains already fill the FMA pipes, and the wider
 * tiles tried were no faster.
 * FC_KC: a deeper k block means fewer passes over C; a tile column's panels
 * then outgrow L1 (FC_KC x 64 bytes) but stream from L2 fast enough.
 * FC_PF: software prefetch of the panels 256 rows (16 KiB) ahead, for
 * weights that come from L3 or memory; the generic path goes without.
 * The figures behind each choice: docs/design.md, "Measurements behind the
 * code's choices", "GEMM tiles".  The unpacked product sizes its own tiles
 * from FC_VBYTES (gemm_nt_impl.h). */
#define FC_L2_BYTES (256 * 1024)
/* FC_MC_ROWS: products of more rows (the input projection, dx) run in row
 * blocks of this many (a multiple of every FC_MR), see gemm_impl.h. */
#define FC_MC_ROWS 192

/* Packing a matrix this large (bytes of P) writes P with non-temporal
 * stores (AVX-512 path): no read-for-ownership of P's lines, so packing runs
 * near memcpy speed (glibc's memcpy streams above a similar size).  P then
 * starts out of cache, but at this size it would not stay in L2 through one
 * GEMM pass anyway, and W itself takes as much L3 again. */
#ifndef FC_PACK_STREAM_BYTES
#define FC_PACK_STREAM_BYTES ((ptrdiff_t)8 << 20)
#endif

#define FC_SFX generic
#define FC_TARGET
#define FC_VBYTES 16
#define FC_MR 3
#define FC_NP 1
#define FC_GV 2
#define FC_KC 256
#define FC_PF 0
#include "isa_instance.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define FC_SFX avx2
#define FC_TARGET __attribute__((target("avx2,fma,f16c")))
#define FC_LOAD_ASM "vmovups"
#define FC_HALF 1
#define FC_VBYTES 32
#define FC_MR 6
#define FC_NP 1
#define FC_GV 4
#define FC_KC 2048
#define FC_PF 256
#include "isa_instance.h"

#define FC_SFX avx512
#define FC_TARGET __attribute__((target("avx512f,avx2,fma,f16c")))
#define FC_HALF 1
#define FC_VBYTES 64
#define FC_MR 8
#define FC_NP 1
#define FC_GV 4
#define FC_KC 1024
#define FC_PF 256
#include "isa_instance.h"
#endif

/* Packing works on 16 x 16 blocks (gemm_impl.h, fc_pack_t / fc_pack_n per
 * ISA): one block is 16 consecutive rows of one panel, 1 KiB of P written
 * contiguously, read as 64 bytes from each of 16 rows of the source.  For
 * A @ W.T (rs == 1) a panel at a time, its 16 rows of W walked along l and
 * each block transposed in registers; for A @ W (cs == 1) 16 rows of B at a
 * time, walked across the panels.  The old column-at-a-time loops wrote (or
 * read) with a 64-byte stride and ran at a sixth of copy speed.  Other
 * strides (not used by the kernels) and the zero-padded last panel go
 * element by element. */

/* Any block: lb rows l, nr valid columns j, element (l, j) at src[l*rs + j*cs];
 * the columns j >= nr of the block are zeroed (the panel's padding). */
static void fc_pack_edge(const float *src, ptrdiff_t lb, ptrdiff_t nr, ptrdiff_t rs,
                         ptrdiff_t cs, float *restrict dst)
{
    for (ptrdiff_t l = 0; l < lb; l++) {
        ptrdiff_t j = 0;
        for (; j < nr; j++)
            dst[l * FC_NR + j] = src[l * rs + j * cs];
        for (; j < FC_NR; j++)
            dst[l * FC_NR + j] = 0.0f;
    }
}

void fc_pack(const float *src, ptrdiff_t k, ptrdiff_t n, ptrdiff_t rs, ptrdiff_t cs, float *P)
{
    const ptrdiff_t nfull = n / FC_NR * FC_NR;
    /* streaming (AVX-512, A @ W.T) gathers rows by 32-bit offsets j*cs, j < 16:
     * rows longer than INT32_MAX / 16 floats (a >= 9 GB matrix) take the
     * plain path */
    const int stream = fc_packed_size(k, n) * (ptrdiff_t)sizeof(float) >= FC_PACK_STREAM_BYTES
                       && (uintptr_t)P % sizeof(float) == 0
                       && (rs != 1 || cs <= INT32_MAX / FC_NR);
    if (rs == 1 || cs == 1) {
        void (*pack)(const float *, ptrdiff_t, ptrdiff_t, ptrdiff_t, float *, int);
        switch (fc_get_isa()) {
#ifdef FC_X86_INTRIN
        case FC_ISA_AVX512: pack = rs == 1 ? fc_pack_t_avx512 : fc_pack_n_avx512; break;
        case FC_ISA_AVX2: pack = rs == 1 ? fc_pack_t_avx2 : fc_pack_n_avx2; break;
#endif
        default: pack = rs == 1 ? fc_pack_t_generic : fc_pack_n_generic; break;
        }
        pack(src, k, nfull, rs == 1 ? cs : rs, P, stream);
    } else {
        for (ptrdiff_t j0 = 0; j0 < nfull; j0 += FC_NR)
            fc_pack_edge(src + j0 * cs, k, FC_NR, rs, cs, P + j0 * k);
    }
#ifdef FC_X86_INTRIN
    if (stream)   /* order the streamed stores before anything that follows */
        _mm_sfence();
#endif
    if (nfull < n)   /* the last, partial panel, zero-padded */
        fc_pack_edge(src + nfull * cs, k, n - nfull, rs, cs, P + nfull * k);
}
