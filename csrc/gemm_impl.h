/* Template: the packed GEMM for one ISA.  Included by gemm.c once per ISA
 * with FC_SFX (name suffix), FC_TARGET (function attribute) and the block
 * sizes below defined; no include guard on purpose.
 *
 *   FC_VBYTES  bytes per SIMD register (64 AVX-512, 32 AVX2, 16 SSE2/NEON)
 *   FC_MR      rows of C per micro-tile
 *   FC_NP      16-column panels per micro-tile (tile = FC_MR x 16*FC_NP)
 *   FC_GV      panels side by side in the tile-ordered batch-1 product of large weights
 *   FC_KC      depth of one k block when m > 1
 *   FC_L2_BYTES  bytes of A kept in L2 per outer k block
 *   FC_PF      panel rows (64-byte lines) the m > 1 tiles prefetch ahead, 0: none
 *   FC_HALF    defined where the ISA converts float16 in hardware: the product
 *              over float16 panels (fc_gemm_half) exists
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
 * accumulators over interleaved rows (fc_gemv_panel); in the deterministic
 * mode (fc_gemv_tiles) it is the tiles' own code with one row instead, which
 * sums in the tiles' order (see fc_gemm_any).
 *
 * Float16 panels (Stepper's float16 weights, fc_gemm_half): the same code
 * with converting loads (FC_LOADW), so the two give the same bits; for the
 * few-row products that stream the weights.  The float16 stream is not
 * prefetched in software: it gained nothing measurable.
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
/* tile-ordered batch-1 products of at most this many weights read 2 panels side by side */
#define FC_GEMV_NARROW ((ptrdiff_t)1 << 16)
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

#ifdef FC_HALF
/* One register of float16 weights (a panel packed as float16: the same
 * layout, element by element), converted to float.  The conversion is
 * exact, so a product over these gives the bits of the same product over
 * their float values packed as floats. */
static inline __attribute__((always_inline)) FC_TARGET FC_NAME(fc_vec)
FC_NAME(fc_load_half)(const unsigned short *p)
{
    FC_NAME(fc_vec) v;
#if FC_VBYTES == 64
    __m512 r = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#else
    __m256 r = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#endif
    memcpy(&v, &r, sizeof v);
    return v;
}
#define FC_LOADW(P, i, half)                                                   \
    ((half) ? FC_NAME(fc_load_half)((const unsigned short *)(P) + (i))          \
            : FC_NAME(fc_load_packed)((const float *)(P) + (i)))
#else
#define FC_LOADW(P, i, half) FC_NAME(fc_load_packed)((const float *)(P) + (i))
#endif
/* P advanced by i elements (float16 when half, else float) */
#define FC_PADD(P, i, half)                                                    \
    ((half) ? (const void *)((const unsigned short *)(P) + (i))                 \
            : (const void *)((const float *)(P) + (i)))

/* C tile (mr x 16*np, the last panel's valid width nlast) = or += A (mr x k)
 * times np panels that start ps elements apart (float16 ones when half);
 * then + bias (the tile's 16*np columns of it) unless bias is NULL. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_tile)(const int mr, const int np, ptrdiff_t k, const float *A, ptrdiff_t lda,
                 const void *P, ptrdiff_t ps, float *C, ptrdiff_t ldc, ptrdiff_t nlast,
                 int accumulate, const int prefetch, const int half, const float *bias)
{
    typedef FC_NAME(fc_vec) vec;
    vec acc[FC_MR > 1 ? FC_MR : 1][(FC_NP > FC_GV ? FC_NP : FC_GV) * FC_PV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < np * FC_PV; v++)
            acc[r][v] = (vec){0};
    for (ptrdiff_t l = 0; l < k; l++) {
        vec b[(FC_NP > FC_GV ? FC_NP : FC_GV) * FC_PV];
#if FC_PF > 0
        /* into L2, FC_PF rows ahead: past the block's end that is the next
         * k block or the next panel, what the tiles read next */
        if (prefetch)
            for (int p = 0; p < np; p++)
                __builtin_prefetch(FC_PADD(P, p * ps + (l + FC_PF) * FC_NR, half), 0, 2);
#endif
        for (int p = 0; p < np; p++)
            for (int v = 0; v < FC_PV; v++)
                b[p * FC_PV + v] = FC_LOADW(P, p * ps + l * FC_NR + v * FC_VL, half);
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
                if (bias)   /* (read like the panels: never written during a product) */
                    t += FC_NAME(fc_load_packed)(bias + v * FC_VL);
                memcpy(c + v * FC_VL, &t, sizeof t);
            } else if (v * FC_VL < width) {
                float tmp[FC_VL];
                memcpy(tmp, &t, sizeof tmp);
                for (ptrdiff_t j = 0; j < width - v * FC_VL; j++) {
                    float e = accumulate ? c[v * FC_VL + j] + tmp[j] : tmp[j];
                    c[v * FC_VL + j] = bias ? e + bias[v * FC_VL + j] : e;
                }
            }
        }
    }
}

/* One column of tiles (np panels) over all m rows; constant np so each case
 * is its own register-allocated copy. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_tile_column)(const int np, ptrdiff_t m, ptrdiff_t k, const float *A, ptrdiff_t lda,
                        const void *P, ptrdiff_t ps, float *C, ptrdiff_t ldc, ptrdiff_t nlast,
                        int accumulate, const int half, const float *bias)
{
    ptrdiff_t i = 0;
    /* The first full tile prefetches the panels for all (the others find
     * them in cache); a lone partial tile does not: with a few rows per k
     * step the prefetches cost more than they save. */
    if (m >= FC_MR) {
        FC_NAME(fc_tile)(FC_MR, np, k, A, lda, P, ps, C, ldc, nlast, accumulate, 1, half,
                         bias);
        i = FC_MR;
    }
    for (; i + FC_MR <= m; i += FC_MR)
        FC_NAME(fc_tile)(FC_MR, np, k, A + i * lda, lda, P, ps, C + i * ldc, ldc, nlast,
                         accumulate, 0, half, bias);
    /* Remainder rows: one constant-size copy per count. */
#define FC_REM(R)                                                                          \
    case R:                                                                                \
        FC_NAME(fc_tile)(R < FC_MR ? R : 1, np, k, A + i * lda, lda, P, ps, C + i * ldc,  \
                         ldc, nlast, accumulate, 0, half, bias);                           \
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

/* half (a constant where inlined): Pp is float16, else float. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemv_panel)(ptrdiff_t k, const float *x, const void *Pp, float *c, ptrdiff_t nlast,
                       int half)
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
                acc[u][v] += a * FC_LOADW(Pp, (l + u) * FC_NR + v * FC_VL, half);
        }
    for (; l < k; l++) {
        vec a = x[l] - (vec){0};
        for (int v = 0; v < FC_PV; v++)
            acc[0][v] += a * FC_LOADW(Pp, l * FC_NR + v * FC_VL, half);
    }
    for (int u = 1; u < FC_GU; u++)
        for (int v = 0; v < FC_PV; v++)
            acc[0][v] += acc[u][v];
    float tmp[FC_NR];
    memcpy(tmp, acc[0], sizeof tmp);
    memcpy(c, tmp, (size_t)nlast * sizeof(float));
}

/* C (1 x n) = x (1 x k) @ B, B packed (as float16 when half): the batch-1 product. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemv)(ptrdiff_t n, ptrdiff_t k, const float *x, const void *P, float *C, int half)
{
    const ptrdiff_t npan = (n + FC_NR - 1) / FC_NR, ps = FC_NR * k;
    const ptrdiff_t ntail = n - (npan - 1) * FC_NR;
    for (ptrdiff_t p = 0; p < npan; p++)
        FC_NAME(fc_gemv_panel)(k, x, FC_PADD(P, p * ps, half), C + p * FC_NR,
                               p + 1 == npan ? ntail : FC_NR, half);
}

#undef FC_GU

/* Packing (gemm.c, fc_pack), per ISA only for speed: the layout is the same.
 *
 * A @ W.T (W is n x k, rows cs floats apart): panel p row l is
 * W[16p .. 16p+15, l].  Each 16 x 16 block is 16 loads from 16 rows of W, a
 * transpose in registers and 16 contiguous stores (1 KiB), so both sides
 * stream; the blocks start where W's rows reach a cache line (a misaligned
 * 64-byte load costs two), the rows before and after are gathered one by one.
 * A @ W (W is k x n, rows rs floats apart): 16 rows of W at a time, walked
 * across the panels, 64-byte copies into each panel's 1 KiB block.
 *
 * Streaming (gemm.c decides when: large P): non-temporal stores skip the
 * read-for-ownership of P's lines, but only whole 64-byte lines written by
 * one store run at copy speed (four 16-byte streaming stores per line, or a
 * line's halves written at different times, were no faster than plain
 * stores).  P is only float aligned (a NumPy buffer), so the rows are
 * realigned to P's lines: the line that starts sh floats before a row is the
 * previous row's last sh lanes and this row's first 16 - sh (one vpermt2ps).
 * AVX-512 only (the ISA on which it was measured). */
#if FC_VBYTES == 64 && defined(FC_X86_INTRIN)
#define FC_HAVE_STREAM 1
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_transpose16_regs)(const float *s, ptrdiff_t ld, __m512 t[16])
{
    __m512 r[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(s + i * ld);
    /* t[2a], t[2a+1]: rows 2a, 2a+1 interleaved, per 128-bit lane q columns
     * 4q, 4q+1 (lo) and 4q+2, 4q+3 (hi) */
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* r[4g + c], lane q: column 4q + c of rows 4g .. 4g+3 */
    for (int i = 0; i < 16; i += 4) {
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), e = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    /* gather lane q of the four row groups: column 4q + c of all 16 rows */
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        __m512 f = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(a, e, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(a, e, 0xdd);
        t[4 + c] = _mm512_shuffle_f32x4(b, f, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(b, f, 0xdd);
    }
}

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_transpose16)(const float *s, ptrdiff_t ld, float *restrict d)
{
    __m512 t[16];
    FC_NAME(fc_transpose16_regs)(s, ld, t);
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(d + i * FC_NR, t[i]);
}

/* A run of panel rows streamed to consecutive 16-float slots from out, the
 * first at slot 0: each row completes the line that starts sh floats before
 * it.  The partial lines at the run's ends get plain stores: slot 0's row
 * up to its line's end, and (fc_row_run_end) the last row's tail. */
typedef struct {
    float *out;      /* the next row's slot */
    float *first;    /* slot 0 */
    __m512 prev;     /* the last row */
    __m512i idx;     /* lanes 16 - sh .. 31 - sh of (prev, row) */
    __mmask16 head;  /* lanes of a row before its slot's next line: 16 - sh */
} FC_NAME(fc_row_run);

/* out[j] = row[j] for lo <= j < hi: plain stores through the stack (a masked
 * 512-bit store to the partial lines made streaming A @ W much slower) */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_store_lanes)(float *out, __m512 row, int lo, int hi)
{
    float tmp[16];
    _mm512_storeu_ps(tmp, row);
    memcpy(out + lo, tmp + lo, (size_t)(hi - lo) * sizeof(float));
}

static inline __attribute__((always_inline)) FC_TARGET FC_NAME(fc_row_run)
FC_NAME(fc_row_run_begin)(float *out)
{
    const int sh = (int)((uintptr_t)out % 64 / sizeof(float));
    FC_NAME(fc_row_run) run;
    run.out = run.first = out;
    run.prev = _mm512_setzero_ps();
    run.idx = _mm512_add_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(16 - sh));
    run.head = (__mmask16)((1u << (16 - sh)) - 1u);
    return run;
}

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_row_run_put)(FC_NAME(fc_row_run) *run, __m512 row)
{
    if (run->head == 0xffff)   /* slots are lines */
        _mm512_stream_ps(run->out, row);
    else if (run->out == run->first)
        FC_NAME(fc_store_lanes)(run->out, row, 0, __builtin_popcount(run->head));
    else
        _mm512_stream_ps(run->out - (16 - __builtin_popcount(run->head)),
                         _mm512_permutex2var_ps(run->prev, run->idx, row));
    run->prev = row;
    run->out += FC_NR;
}

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_row_run_end)(FC_NAME(fc_row_run) *run)
{
    if (run->head != 0xffff && run->out != run->first)
        FC_NAME(fc_store_lanes)(run->out - FC_NR, run->prev, __builtin_popcount(run->head), 16);
}
#elif FC_VBYTES == 32 && defined(FC_X86_INTRIN)
/* the 16 x 16 block as four 8 x 8 transposes */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_transpose16)(const float *s, ptrdiff_t ld, float *restrict d)
{
    for (int jb = 0; jb < 16; jb += 8)
        for (int lb = 0; lb < 16; lb += 8) {
            __m256 r[8], t[8], u[8];
            for (int i = 0; i < 8; i++)
                r[i] = _mm256_loadu_ps(s + (jb + i) * ld + lb);
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
                u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
            }
            float *o = d + lb * FC_NR + jb;
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(o + i * FC_NR, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
                _mm256_storeu_ps(o + (i + 4) * FC_NR,
                                 _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
            }
        }
}
#else
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_transpose16)(const float *s, ptrdiff_t ld, float *restrict d)
{
    for (int l = 0; l < 16; l++)
        for (int j = 0; j < FC_NR; j++)
            d[l * FC_NR + j] = s[j * ld + l];
}
#endif

FC_TARGET void FC_NAME(fc_pack_t)(const float *src, ptrdiff_t k, ptrdiff_t nfull,
                                  ptrdiff_t cs, float *P, int stream)
{
    /* first l whose 16 x 16 block loads whole lines of row 0 (all rows, when
     * cs is a multiple of 16) */
    ptrdiff_t l0 = (ptrdiff_t)((64 - (uintptr_t)src % 64) % 64 / sizeof(float));
    l0 = l0 < k ? l0 : k;
    const ptrdiff_t l1 = l0 + (k - l0) / 16 * 16;   /* end of the blocks */
#ifdef FC_HAVE_STREAM
    if (stream) {
        FC_NAME(fc_row_run) run = FC_NAME(fc_row_run_begin)(P);
        for (ptrdiff_t j0 = 0; j0 < nfull; j0 += FC_NR) {
            const float *s = src + j0 * cs;
            const __m512i rows = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32((int)cs));
            for (ptrdiff_t l = 0; l < l0; l++)
                FC_NAME(fc_row_run_put)(&run, _mm512_i32gather_ps(rows, s + l, 4));
            for (ptrdiff_t l = l0; l < l1; l += 16) {
                __m512 t[16];
                FC_NAME(fc_transpose16_regs)(s + l, cs, t);
                for (int i = 0; i < 16; i++)
                    FC_NAME(fc_row_run_put)(&run, t[i]);
            }
            for (ptrdiff_t l = l1; l < k; l++)
                FC_NAME(fc_row_run_put)(&run, _mm512_i32gather_ps(rows, s + l, 4));
        }
        FC_NAME(fc_row_run_end)(&run);
        return;
    }
#endif
    (void)stream;
    for (ptrdiff_t j0 = 0; j0 < nfull; j0 += FC_NR) {
        float *panel = P + j0 * k;
        const float *s = src + j0 * cs;
        for (ptrdiff_t l = 0; l < l0; l++)
            for (int j = 0; j < FC_NR; j++)
                panel[l * FC_NR + j] = s[j * cs + l];
        for (ptrdiff_t l = l0; l < l1; l += 16)
            FC_NAME(fc_transpose16)(s + l, cs, panel + l * FC_NR);
        for (ptrdiff_t l = l1; l < k; l++)
            for (int j = 0; j < FC_NR; j++)
                panel[l * FC_NR + j] = s[j * cs + l];
    }
}

FC_TARGET void FC_NAME(fc_pack_n)(const float *src, ptrdiff_t k, ptrdiff_t nfull,
                                  ptrdiff_t rs, float *P, int stream)
{
    (void)stream;
    for (ptrdiff_t l0 = 0; l0 < k; l0 += 16) {
        const ptrdiff_t lb = k - l0 < 16 ? k - l0 : 16;
        const float *s = src + l0 * rs;
        for (ptrdiff_t j0 = 0; j0 < nfull; j0 += FC_NR) {
            float *restrict dst = P + j0 * k + l0 * FC_NR;
#ifdef FC_HAVE_STREAM
            if (stream) {   /* the block's rows are one run */
                FC_NAME(fc_row_run) run = FC_NAME(fc_row_run_begin)(dst);
                for (ptrdiff_t l = 0; l < lb; l++)
                    FC_NAME(fc_row_run_put)(&run, _mm512_loadu_ps(s + l * rs + j0));
                FC_NAME(fc_row_run_end)(&run);
                continue;
            }
#endif
            for (ptrdiff_t l = 0; l < lb; l++)
                memcpy(dst + l * FC_NR, s + l * rs + j0, FC_NR * sizeof(float));
        }
    }
}
#undef FC_HAVE_STREAM

/* m > 1: column strips of np panels (a constant: its own register
 * allocation) over all rows, see the blocking below. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemm_row_block)(const int np, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                           const float *A, ptrdiff_t lda, const void *P, float *C,
                           ptrdiff_t ldc, const int half, const float *bias)
{
    const ptrdiff_t npan = (n + FC_NR - 1) / FC_NR;
    const ptrdiff_t ps = FC_NR * k;                 /* elements between panels */
    const ptrdiff_t ntail = n - (npan - 1) * FC_NR; /* valid columns of the last panel */

    /* Blocking: A's rows over one L2 block of k (FC_L2_BYTES) stay in L2
     * while every tile column passes over them; within it, the panels of one
     * tile column over FC_KC stay in L1 or L2 while each row tile passes, and
     * the C strip of that column stays in L1 across the FC_KC blocks.  k = 0
     * still makes one (empty) pass so C is written with zeros.  Each element
     * is summed in order within FC_KC blocks, whatever m and np: a row's
     * result does not depend on the rows multiplied with it. */
    ptrdiff_t kc2 = FC_L2_BYTES / (ptrdiff_t)(4 * m) / FC_KC * FC_KC;
    if (kc2 < FC_KC)
        kc2 = FC_KC;
    ptrdiff_t k1 = 0;
    do {
        ptrdiff_t k1e = k - k1 < kc2 ? k : k1 + kc2;
        for (ptrdiff_t p = 0; p < npan; p += np) {
            ptrdiff_t k0 = k1;
            do {
                ptrdiff_t kb = k1e - k0 < FC_KC ? k1e - k0 : FC_KC;
                const void *Pk = FC_PADD(P, p * ps + k0 * FC_NR, half);
                /* the bias joins the last k block's store: (sum) + bias, as
                 * adding it to the finished product would */
                const float *bk = bias && k0 + kb == k ? bias : NULL;
                if (p + np <= npan)
                    FC_NAME(fc_tile_column)(np, m, kb, A + k0, lda, Pk, ps, C + p * FC_NR,
                                            ldc, p + np == npan ? ntail : FC_NR, k0 > 0, half,
                                            bk ? bk + p * FC_NR : NULL);
                else /* fewer than np panels left: one at a time */
                    for (ptrdiff_t q = p; q < npan; q++)
                        FC_NAME(fc_tile_column)(1, m, kb, A + k0, lda,
                                                FC_PADD(Pk, (q - p) * ps, half), ps,
                                                C + q * FC_NR, ldc,
                                                q + 1 == npan ? ntail : FC_NR, k0 > 0, half,
                                                bk ? bk + q * FC_NR : NULL);
                k0 += kb;
            } while (k0 < k1e);
        }
        k1 = k1e;
    } while (k1 < k);
}

/* the tile-ordered batch-1 product reads 2 panels side by side, or FC_GV: the tiles hold
 * as many */
_Static_assert(FC_GV >= 2, "FC_GV: the tile-ordered batch-1 product reads 2 panels or more");

/* m > 1: blocks of FC_MC_ROWS rows (gemm.c), each through every column strip
 * before the next: a block's rows of A stay in L1/L2 across the strips and its
 * rows of C are written while they are in cache, where one pass of all m rows
 * per strip streamed A from L2 and C from memory for every strip (the input
 * projection's T*B rows).  Each element's sum does not depend on the blocks. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemm_strips_bias)(const int np, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                             const float *A, ptrdiff_t lda, const void *P, float *C,
                             ptrdiff_t ldc, const int half, const float *bias)
{
    for (ptrdiff_t i0 = 0; i0 < m; i0 += FC_MC_ROWS) {
        /* (a last block of one row takes a 1-row tile, not the GEMV: the same sums) */
        ptrdiff_t mb = m - i0 < FC_MC_ROWS ? m - i0 : FC_MC_ROWS;
        FC_NAME(fc_gemm_row_block)(np, mb, n, k, A + i0 * lda, lda, P, C + i0 * ldc, ldc,
                                   half, bias);
    }
}

/* m > 1 without a bias: the column strips above */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemm_strips)(const int np, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                        ptrdiff_t lda, const void *P, float *C, ptrdiff_t ldc, const int half)
{
    FC_NAME(fc_gemm_strips_bias)(np, m, n, k, A, lda, P, C, ldc, half, NULL);
}

/* The packed product, B as floats or (half) as float16: the same tiles and
 * order either way, so the same bits for the same values. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_gemm_any)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                     const void *P, float *C, ptrdiff_t ldc, const int half)
{
    /* Batch 1: the GEMV above, unless the deterministic mode asks for the
     * tiles' order (fc_gemv_tiles, read once per product): then one row of
     * tiles, several panels wide for independent chains, so a row multiplied
     * alone gets the bits it gets among others and the batch a sequence
     * rides in does not change its results.  The panels lie 16*k floats
     * apart, a multiple of 4 KiB for the usual k, so side-by-side streams
     * share L1 sets: weights that stay in L2 (at most FC_GEMV_NARROW) stream
     * best two panels at a time, larger ones FC_GV at a time.  Not the
     * default: up to a few percent slower than the GEMV at batch 1
     * (docs/design.md, "Batch invariance"). */
    if (m == 1 && !fc_get_gemv_tiles()) {
        FC_NAME(fc_gemv)(n, k, A, P, C, half);
        return;
    }
    if (m == 1) {
        if (k * n <= FC_GEMV_NARROW)
            FC_NAME(fc_gemm_strips)(2, 1, n, k, A, lda, P, C, ldc, half);
        else
            FC_NAME(fc_gemm_strips)(FC_GV, 1, n, k, A, lda, P, C, ldc, half);
        return;
    }
    /* Batch 2 or 4: a tile of m rows and one panel has too few independent
     * chains to hide the FMA latency, so take 4 panels side by side (same
     * sums, more chains) on AVX-512.  m = 3, and AVX2, keep one panel: side
     * by side was slower or not reliably faster there (docs/design.md,
     * "Measurements behind the code's choices", "GEMM tiles"). */
    if (FC_NP == 1 && FC_PV == 1 && (m == 2 || m == 4))
        FC_NAME(fc_gemm_strips)(4, m, n, k, A, lda, P, C, ldc, half);
    else
        FC_NAME(fc_gemm_strips)(FC_NP, m, n, k, A, lda, P, C, ldc, half);
}

FC_TARGET void FC_NAME(fc_gemm_packed)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                       ptrdiff_t lda, const float *P, float *C, ptrdiff_t ldc)
{
    FC_NAME(fc_gemm_any)(m, n, k, A, lda, P, C, ldc, 0);
}

/* C = A @ B + bias (bias: n floats, added to every row), B packed: the bits of
 * the product followed by adding the bias, without a second pass over C. */
FC_TARGET void FC_NAME(fc_gemm_packed_bias)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                            const float *A, ptrdiff_t lda, const float *P,
                                            const float *bias, float *C, ptrdiff_t ldc)
{
    if (m == 1) {   /* the batch-1 product, then the bias */
        FC_NAME(fc_gemm_any)(m, n, k, A, lda, P, C, ldc, 0);
        for (ptrdiff_t j = 0; j < n; j++)
            C[j] += bias[j];
        return;
    }
    /* every tile shape sums each element in the same order: the bits of fc_gemm_any */
    FC_NAME(fc_gemm_strips_bias)(FC_NP, m, n, k, A, lda, P, C, ldc, 0, bias);
}

#ifdef FC_HALF
FC_TARGET void FC_NAME(fc_gemm_half)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                     ptrdiff_t lda, const unsigned short *P, float *C,
                                     ptrdiff_t ldc)
{
    FC_NAME(fc_gemm_any)(m, n, k, A, lda, P, C, ldc, 1);
}
#endif
#undef FC_LOADW
#undef FC_PADD

#undef FC_VL
#undef FC_PV
