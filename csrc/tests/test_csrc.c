/* C-level tests of csrc/, without Python: the packed GEMM and its packing,
 * the unpacked product (gemm_nt), C = A^T B (gemm_tn), sigmoid and tanh, and
 * the flush-to-zero mode of fpenv.h.
 *
 * Built by scripts/checks/aarch64.sh with the compile flags of setup.py (no
 * -march), once for the host and once with aarch64-linux-gnu-gcc to run
 * under qemu-aarch64: the aarch64 paths (NEON through the vector extensions
 * of the generic templates, FPCR.FZ in fpenv.h) run nowhere else on an x86
 * machine.  Every ISA the CPU offers is tested in turn (on aarch64: generic).
 *
 * What is checked, against double precision computed here:
 *   products  every element within the error bound of any float32 summation
 *             order, with or without fused multiply-adds: |c - exact| <=
 *             gamma(k + 1) * sum_l |a_il b_lj|, gamma(j) = j u / (1 - j u),
 *             u = 2^-24; k = 0 writes exact zeros; nothing outside C is
 *             written; the documented bit-for-bit properties (a row's result
 *             does not depend on the rows multiplied with it; the float16
 *             product equals the float one; the row split of gemm_tn does
 *             not change bits); packing gives the documented layout exactly.
 *   activations  within 3 float32 ulp of the float64 function over a sweep
 *             of the whole float range (bit patterns at a fixed stride, and
 *             more densely where the error is largest) and at the edges
 *             (+-0, subnormals, the thresholds of the code, large |x|,
 *             +-inf, NaN); results independent of an element's position.
 *   fpenv     inside fc_fpenv_enter(): the control register has the
 *             flush-to-zero bits (MXCSR FTZ|DAZ, FPCR.FZ), a subnormal result
 *             and a subnormal operand read as zero, activations flush
 *             subnormals and change no other bit; after fc_fpenv_exit(): the
 *             control register and the exception flags are the caller's
 *             again, gradual underflow is back.
 *
 * Exit status 0 when every check passes, 1 otherwise (the first failures are
 * printed); a summary of what ran goes to stdout.
 */
#include <fenv.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "activations.h"
#include "cpu.h"
#include "fpenv.h"
#include "gemm.h"
#include "gemm_tn.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define ARCH "x86-64"
#elif defined(__aarch64__)
#define ARCH "aarch64"
#else
#define ARCH "other"
#endif

/* ------------------------------------------------------------------ checks */

#define MAX_REPORTS 25
static long n_checks, n_failures;
static const char *current_isa = "-";

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
    if (++n_failures > MAX_REPORTS)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL [%s, isa %s] ", ARCH, current_isa);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

#define CHECK(cond, ...)          \
    do {                          \
        n_checks++;               \
        if (!(cond))              \
            report(__VA_ARGS__);  \
    } while (0)

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
static float u2f(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }

/* splitmix64: a fixed sequence, the same on every platform */
static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static long rng_int(long lo, long hi) { return lo + (long)(rng_next() % (uint64_t)(hi - lo + 1)); }
/* a float in [-1, 1) with a full 24-bit mantissa's worth of random bits */
static float rng_float(void) { return (float)rng_int(-(1L << 23), (1L << 23) - 1) * 0x1p-23f; }
/* a float16-exact value in [-1, 1]: k / 1024 */
static float rng_half_exact(void) { return (float)rng_int(-1024, 1024) * 0x1p-10f; }

static void fill(float *x, size_t n, float (*gen)(void))
{
    for (size_t i = 0; i < n; i++)
        x[i] = gen();
}

/* --------------------------------------------------------------- products */

#define SENTINEL (-7.25e33f)
/* floats of guard around each C that the products must leave alone */
#define GUARD 32

/* gamma(j) of the bound above */
static double gamma_u(ptrdiff_t j)
{
    const double ju = (double)j * 0x1p-24;
    return ju / (1.0 - ju);
}

/* A C buffer: m rows ldc floats apart inside GUARD sentinels; every float of
 * it (padding included) starts as SENTINEL, so an element left unwritten or
 * written outside [m, n) shows. */
typedef struct {
    float *buf, *C;
    ptrdiff_t m, n, ldc;
} cbuf;

static cbuf cbuf_new(ptrdiff_t m, ptrdiff_t n, ptrdiff_t ldc)
{
    cbuf c = {NULL, NULL, m, n, ldc};
    const size_t total = (size_t)(m * ldc + 2 * GUARD);
    c.buf = xmalloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++)
        c.buf[i] = SENTINEL;
    c.C = c.buf + GUARD;
    return c;
}

/* C against exact (m x n, row-major) within gamma(k + 1) * abssum, and the
 * floats of buf outside C's m x n elements untouched. */
static void check_c(const char *what, const cbuf *c, ptrdiff_t k, const double *exact,
                    const double *abssum)
{
    const double g = gamma_u(k + 1);
    long bad = 0;
    for (ptrdiff_t i = 0; i < c->m; i++)
        for (ptrdiff_t j = 0; j < c->n; j++) {
            const double got = c->C[i * c->ldc + j], want = exact[i * c->n + j];
            const double bound = g * abssum[i * c->n + j];
            const int ok = k == 0 ? got == 0.0 : fabs(got - want) <= bound;
            if (!ok && bad++ == 0)
                CHECK(0, "%s: C[%td,%td] = %.9g, expected %.9g (bound %.3g)", what, i, j,
                      got, want, bound);
        }
    n_checks++;
    const size_t total = (size_t)(c->m * c->ldc + 2 * GUARD);
    for (size_t q = 0; q < total; q++) {
        const ptrdiff_t off = (ptrdiff_t)q - GUARD;
        const int inside = off >= 0 && off < c->m * c->ldc && off % c->ldc < c->n;
        if (!inside && c->buf[q] != SENTINEL) {
            CHECK(0, "%s: wrote outside C (offset %td from C[0,0])", what, off);
            break;
        }
    }
}

/* exact[i, j] and abssum[i, j] of sum_l A(i, l) B(l, j), A(i, l) = A[i*ars + l*acs],
 * B(l, j) = B[l*brs + j*bcs], in double (the products of floats are exact) */
static void exact_product(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t ars,
                          ptrdiff_t acs, const float *B, ptrdiff_t brs, ptrdiff_t bcs,
                          double *exact, double *abssum)
{
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            double s = 0.0, a = 0.0;
            for (ptrdiff_t l = 0; l < k; l++) {
                const double p = (double)A[i * ars + l * acs] * B[l * brs + j * bcs];
                s += p;
                a += fabs(p);
            }
            exact[i * n + j] = s;
            abssum[i * n + j] = a;
        }
}

/* the packed layout of gemm.h: panel p, row l, column j of the panel */
static void check_packed(const char *what, const float *P, const float *src, ptrdiff_t k,
                         ptrdiff_t n, ptrdiff_t rs, ptrdiff_t cs)
{
    const ptrdiff_t npan = (n + FC_NR - 1) / FC_NR;
    CHECK(fc_packed_size(k, n) == npan * FC_NR * k, "%s: fc_packed_size(%td, %td) = %td",
          what, k, n, fc_packed_size(k, n));
    for (ptrdiff_t p = 0; p < npan; p++)
        for (ptrdiff_t l = 0; l < k; l++)
            for (ptrdiff_t j = 0; j < FC_NR; j++) {
                const ptrdiff_t col = p * FC_NR + j;
                const float want = col < n ? src[l * rs + col * cs] : 0.0f;
                const float got = P[p * FC_NR * k + l * FC_NR + j];
                if (f2u(got) != f2u(want)) {
                    CHECK(0, "%s: P[panel %td, row %td, col %td] = %g, expected %g", what, p,
                          l, j, got, want);
                    return;
                }
            }
    n_checks++;
}

/* float -> float16 bits, for values k / 1024 with |k| <= 1024 (exact in float16) */
static unsigned short half_bits(float x)
{
    const uint32_t u = f2u(x), sign = (u >> 16) & 0x8000u;
    if ((u & 0x7fffffffu) == 0)
        return (unsigned short)sign;
    const int e = (int)((u >> 23) & 0xff) - 127;   /* -10 .. 0: a normal float16 */
    return (unsigned short)(sign | (uint32_t)(e + 15) << 10 | ((u >> 13) & 0x3ffu));
}

static long gemm_shapes, pack_layouts, half_products;

/* One packed product C = A (m x k, lda) @ B (k x n): B packed from each of its
 * three layouts (row-major: fc_pack's A @ W path; as W = B^T row-major, at
 * every alignment class: its A @ W.T path; general strides: its edge path),
 * each packing checked, the product checked; bit-for-bit: the same C from each
 * packing, the rows of C as products of row pairs, the float16 product. */
static void gemm_case(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int halfexact)
{
    char what[160];
    const ptrdiff_t lda = k + (m % 3), ldc = n + (k % 2) * 3;
    float *A = xmalloc((size_t)(m * lda + 1) * sizeof(float));
    fill(A, (size_t)(m * lda + 1), rng_float);
    /* B row-major, rows n + 1 floats apart; W = B^T, rows k + 3 apart, at an
     * offset of 0..15 floats; B again with both strides > 1 */
    const ptrdiff_t ldb = n + 1, ldw = k + 3, woff = (m + n + k) % 16;
    const ptrdiff_t grs = 2 * n + 1, gcs = 2;
    float *B = xmalloc((size_t)(k * ldb + 1) * sizeof(float));
    float *Wbuf = xmalloc((size_t)(n * ldw + 16 + 1) * sizeof(float));
    float *G = xmalloc((size_t)(k * grs + 1) * sizeof(float));
    float *W = Wbuf + woff;
    for (ptrdiff_t l = 0; l < k; l++)
        for (ptrdiff_t j = 0; j < n; j++) {
            const float b = halfexact ? rng_half_exact() : rng_float();
            B[l * ldb + j] = b;
            W[j * ldw + l] = b;
            G[l * grs + j * gcs] = b;
        }
    const ptrdiff_t psize = fc_packed_size(k, n);
    float *P[3];
    const float *srcs[3] = {B, W, G};
    const ptrdiff_t rss[3] = {ldb, 1, grs}, css[3] = {1, ldw, gcs};
    const char *names[3] = {"A @ W", "A @ W.T", "strided"};
    for (int t = 0; t < 3; t++) {
        /* one float past an aligned start: P need only be float aligned */
        float *Pb = xmalloc((size_t)(psize + 2) * sizeof(float));
        P[t] = Pb + 1;
        fc_pack(srcs[t], k, n, rss[t], css[t], P[t]);
        snprintf(what, sizeof what, "pack (%s) k=%td n=%td", names[t], k, n);
        check_packed(what, P[t], srcs[t], k, n, rss[t], css[t]);
        pack_layouts++;
    }

    double *exact = xmalloc((size_t)(m * n + 1) * sizeof(double));
    double *abssum = xmalloc((size_t)(m * n + 1) * sizeof(double));
    exact_product(m, n, k, A, lda, 1, B, ldb, 1, exact, abssum);
    cbuf c = cbuf_new(m, n, ldc);
    fc_gemm(m, n, k, A, lda, P[0], c.C, ldc);
    snprintf(what, sizeof what, "fc_gemm m=%td n=%td k=%td", m, n, k);
    check_c(what, &c, k, exact, abssum);
    gemm_shapes++;

    cbuf c2 = cbuf_new(m, n, ldc);
    for (int t = 1; t < 3; t++) {
        fc_gemm(m, n, k, A, lda, P[t], c2.C, ldc);
        CHECK(memcmp(c.buf, c2.buf, (size_t)(m * ldc + 2 * GUARD) * sizeof(float)) == 0,
              "fc_gemm m=%td n=%td k=%td: B packed as %s gives other bits", m, n, k, names[t]);
    }
    /* rows i, i+1 alone (m >= 2: one row takes the GEMV, another order) */
    if (m >= 2) {
        cbuf r = cbuf_new(2, n, ldc);
        for (ptrdiff_t i = 0; i + 2 <= m; i += 2) {
            fc_gemm(2, n, k, A + i * lda, lda, P[0], r.C, ldc);
            for (ptrdiff_t q = 0; q < 2 * ldc; q++)
                if (q % ldc < n && f2u(r.C[q]) != f2u(c.C[i * ldc + q])) {
                    CHECK(0, "fc_gemm m=%td n=%td k=%td: rows %td..%td alone give other bits",
                          m, n, k, i, i + 1);
                    break;
                }
        }
        free(r.buf);
    }
    if (halfexact) {
        unsigned short *Ph = xmalloc((size_t)(psize + 1) * sizeof(unsigned short));
        for (ptrdiff_t q = 0; q < psize; q++)
            Ph[q] = half_bits(P[0][q]);
        fc_gemm_half(m, n, k, A, lda, P[0], Ph, c2.C, ldc);
        CHECK(memcmp(c.buf, c2.buf, (size_t)(m * ldc + 2 * GUARD) * sizeof(float)) == 0,
              "fc_gemm_half m=%td n=%td k=%td (float16 read: %d): other bits than fc_gemm",
              m, n, k, fc_has_half());
        half_products++;
        free(Ph);
    }
    free(c.buf);
    free(c2.buf);
    free(exact);
    free(abssum);
    for (int t = 0; t < 3; t++)
        free(P[t] - 1);
    free(A);
    free(B);
    free(Wbuf);
    free(G);
}

static long nt_shapes;

/* C = A (m x k, lda) @ W.T, W (n x k, ldw) unpacked; every row alone
 * (m = 1 included) gives the same bits. */
static void gemm_nt_case(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k)
{
    char what[120];
    const ptrdiff_t lda = k + (n % 2), ldw = k + (m % 4), ldc = n + 1;
    float *A = xmalloc((size_t)(m * lda + 1) * sizeof(float));
    float *W = xmalloc((size_t)(n * ldw + 1) * sizeof(float));
    fill(A, (size_t)(m * lda + 1), rng_float);
    fill(W, (size_t)(n * ldw + 1), rng_float);
    double *exact = xmalloc((size_t)(m * n + 1) * sizeof(double));
    double *abssum = xmalloc((size_t)(m * n + 1) * sizeof(double));
    exact_product(m, n, k, A, lda, 1, W, 1, ldw, exact, abssum);
    cbuf c = cbuf_new(m, n, ldc);
    fc_gemm_nt(m, n, k, A, lda, W, ldw, c.C, ldc);
    snprintf(what, sizeof what, "fc_gemm_nt m=%td n=%td k=%td", m, n, k);
    check_c(what, &c, k, exact, abssum);
    nt_shapes++;
    float *row = xmalloc((size_t)n * sizeof(float));
    for (ptrdiff_t i = 0; i < m; i++) {
        fc_gemm_nt(1, n, k, A + i * lda, lda, W, ldw, row, n);
        for (ptrdiff_t j = 0; j < n; j++)
            if (f2u(row[j]) != f2u(c.C[i * ldc + j])) {
                CHECK(0, "%s: row %td alone gives other bits", what, i);
                break;
            }
    }
    free(row);
    free(c.buf);
    free(exact);
    free(abssum);
    free(A);
    free(W);
}

static long tn_shapes;

/* C1 = A^T B1, C2 = A^T B2 (A k x mm, lda) through fc_gemm_tn_rows; the same
 * bits for every thread count's row split; fc_transpose exact. */
static void gemm_tn_case(ptrdiff_t mm, ptrdiff_t n1, ptrdiff_t n2, ptrdiff_t k)
{
    char what[120];
    const ptrdiff_t lda = mm + 2;
    float *A = xmalloc((size_t)(k * lda + 1) * sizeof(float));
    float *B1 = xmalloc((size_t)(k * n1 + 1) * sizeof(float));
    float *B2 = xmalloc((size_t)(k * n2 + 1) * sizeof(float));
    fill(A, (size_t)(k * lda + 1), rng_float);
    fill(B1, (size_t)(k * n1 + 1), rng_float);
    fill(B2, (size_t)(k * n2 + 1), rng_float);

    float *At = xmalloc((size_t)(mm * k + 1) * sizeof(float));
    fc_transpose(A, k, mm, lda, At, k);
    int exact_copy = 1;
    for (ptrdiff_t i = 0; i < mm && exact_copy; i++)
        for (ptrdiff_t l = 0; l < k; l++)
            if (f2u(At[i * k + l]) != f2u(A[l * lda + i])) {
                exact_copy = 0;
                break;
            }
    CHECK(exact_copy, "fc_transpose k=%td m=%td: not the exact transpose", k, mm);

    float *P1 = xmalloc((size_t)(fc_packed_size(k, n1) + 1) * sizeof(float));
    float *P2 = xmalloc((size_t)(fc_packed_size(k, n2) + 1) * sizeof(float));
    fc_pack(B1, k, n1, n1, 1, P1);
    fc_pack(B2, k, n2, n2, 1, P2);
    cbuf c1 = cbuf_new(mm, n1, n1), c2 = cbuf_new(mm, n2, n2 + 5);
    fc_tn_product prods[FC_TN_MAX_B] = {{n1, P1, c1.C, n1}, {n2, P2, c2.C, n2 + 5}};
    float *scratch = xmalloc((size_t)((mm < FC_TN_BLOCK ? mm : FC_TN_BLOCK) * k + 1)
                             * sizeof(float));
    fc_gemm_tn_rows(0, mm, k, A, lda, FC_TN_MAX_B, prods, scratch);

    double *exact = xmalloc((size_t)(mm * (n1 > n2 ? n1 : n2) + 1) * sizeof(double));
    double *abssum = xmalloc((size_t)(mm * (n1 > n2 ? n1 : n2) + 1) * sizeof(double));
    exact_product(mm, n1, k, A, 1, lda, B1, n1, 1, exact, abssum);
    snprintf(what, sizeof what, "fc_gemm_tn_rows (1st) m=%td n=%td k=%td", mm, n1, k);
    check_c(what, &c1, k, exact, abssum);
    exact_product(mm, n2, k, A, 1, lda, B2, n2, 1, exact, abssum);
    snprintf(what, sizeof what, "fc_gemm_tn_rows (2nd) m=%td n=%td k=%td", mm, n2, k);
    check_c(what, &c2, k, exact, abssum);
    tn_shapes++;

    /* each thread count's ranges, run one after the other, give the same bits */
    cbuf d1 = cbuf_new(mm, n1, n1), d2 = cbuf_new(mm, n2, n2 + 5);
    fc_tn_product dprods[FC_TN_MAX_B] = {{n1, P1, d1.C, n1}, {n2, P2, d2.C, n2 + 5}};
    for (int nt = 1; nt <= 5; nt++) {
        const int used = fc_gemm_tn_threads(mm, nt);
        CHECK(used >= 1 && used <= nt && used <= (mm + FC_TN_UNIT - 1) / FC_TN_UNIT + (mm == 0),
              "fc_gemm_tn_threads(%td, %d) = %d", mm, nt, used);
        for (int t = 0; t < used; t++) {
            const ptrdiff_t r0 = fc_gemm_tn_split(mm, used, t), r1 = fc_gemm_tn_split(mm, used, t + 1);
            CHECK(r0 < r1 && (r1 - r0 >= 2 || mm == 1) && (t > 0 || r0 == 0)
                      && (t + 1 < used || r1 == mm),
                  "fc_gemm_tn_split(%td, %d): range %d is [%td, %td)", mm, used, t, r0, r1);
            if (r1 > r0)
                fc_gemm_tn_rows(r0, r1, k, A, lda, FC_TN_MAX_B, dprods, scratch);
        }
        CHECK(memcmp(c1.buf, d1.buf, (size_t)(mm * n1 + 2 * GUARD) * sizeof(float)) == 0
                  && memcmp(c2.buf, d2.buf, (size_t)(mm * (n2 + 5) + 2 * GUARD) * sizeof(float))
                         == 0,
              "fc_gemm_tn_rows m=%td k=%td: %d threads' row split gives other bits", mm, k, nt);
    }
    free(d1.buf);
    free(d2.buf);
    free(c1.buf);
    free(c2.buf);
    free(exact);
    free(abssum);
    free(scratch);
    free(P1);
    free(P2);
    free(At);
    free(A);
    free(B1);
    free(B2);
}

static void test_products(void)
{
    static const ptrdiff_t ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 25};
    static const ptrdiff_t ns[] = {1, 2, 5, 8, 15, 16, 17, 31, 32, 33, 48, 65};
    static const ptrdiff_t ks[] = {0, 1, 3, 8, 17, 64, 257};
    const size_t nm = sizeof ms / sizeof *ms, nn = sizeof ns / sizeof *ns,
                 nk = sizeof ks / sizeof *ks;
    for (size_t a = 0; a < nm; a++)
        for (size_t b = 0; b < nn; b++)
            for (size_t c = 0; c < nk; c++) {
                gemm_case(ms[a], ns[b], ks[c], (a + b + c) % 2);
                if (c % 2 == 0 || ms[a] <= 4)
                    gemm_nt_case(ms[a], ns[b], ks[c]);
            }
    /* depths cut into k blocks (FC_KC: 256 generic, 1024 AVX-512, 2048 AVX2) and L2
     * blocks of A's rows, with row tiles of every remainder */
    static const ptrdiff_t deep[][3] = {
        {1, 40, 2100}, {2, 17, 2049}, {3, 33, 1300}, {7, 20, 2100}, {14, 16, 600},
        {97, 33, 700}, {200, 18, 1100}, {4, 64, 1025},
    };
    for (size_t i = 0; i < sizeof deep / sizeof *deep; i++) {
        gemm_case(deep[i][0], deep[i][1], deep[i][2], (int)(i % 2));
        gemm_nt_case(deep[i][0], deep[i][1], deep[i][2]);
    }
    /* random shapes */
    for (int i = 0; i < 60; i++) {
        const ptrdiff_t m = rng_int(1, 40), n = rng_int(1, 100), k = rng_int(0, 300);
        gemm_case(m, n, k, i % 2);
        gemm_nt_case(m, n, k);
    }
    /* gemm_tn: row counts around its block (96), thread unit (24), tiles */
    static const ptrdiff_t tn[][4] = {
        {1, 5, 3, 10}, {2, 17, 16, 33}, {3, 1, 1, 0}, {23, 9, 4, 40}, {25, 16, 17, 7},
        {49, 33, 5, 64}, {95, 8, 12, 19}, {97, 20, 3, 31}, {98, 4, 4, 8}, {193, 17, 9, 50},
    };
    for (size_t i = 0; i < sizeof tn / sizeof *tn; i++)
        gemm_tn_case(tn[i][0], tn[i][1], tn[i][2], tn[i][3]);

    /* a pack large enough (8 MiB) to take the streaming stores where the ISA
     * has them (AVX-512), into a P that is float-aligned only */
    const ptrdiff_t bk = 1024, bn = 2048 + 5;
    float *W = xmalloc((size_t)(bn * bk) * sizeof(float));
    float *B = xmalloc((size_t)(bk * bn) * sizeof(float));
    for (ptrdiff_t j = 0; j < bn; j++)
        for (ptrdiff_t l = 0; l < bk; l++)
            B[l * bn + j] = W[j * bk + l] = (float)(j * 3 + l) * 0.5f;
    float *Pb = xmalloc((size_t)(fc_packed_size(bk, bn) + 2) * sizeof(float));
    fc_pack(W, bk, bn, 1, bk, Pb + 1);
    check_packed("large pack (A @ W.T)", Pb + 1, W, bk, bn, 1, bk);
    fc_pack(B, bk, bn, bn, 1, Pb + 1);
    check_packed("large pack (A @ W)", Pb + 1, B, bk, bn, bn, 1);
    pack_layouts += 2;
    free(Pb);
    free(W);
    free(B);
}

/* ------------------------------------------------------------ activations */

/* The float32 ulp at the double r: the spacing of floats of r's magnitude. */
static double ulp32(double r)
{
    r = fabs(r);
    if (r < FLT_MIN)
        return 0x1p-149;
    int e;
    frexp(r, &e);   /* r = f 2^e, f in [0.5, 1) */
    return ldexp(1.0, e - 24);
}

static double ref_sigmoid(double x)
{
    return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

#define ULP_LIMIT 3.0

typedef struct {
    const char *name;
    void (*fn)(float *, ptrdiff_t);   /* the csrc entry point (the ISA in use) */
    double (*ref)(double);
    double max_ulp;
    float worst;
} act;

/* The inputs: the sweep and the edges. */
static float *act_inputs(size_t *count)
{
    static const float edges[] = {
        0.0f, 0x1p-149f, 0x1p-140f, 0x1.fffffcp-127f, FLT_MIN, 0x1p-30f, 0x1p-14f,
        0.1f, 0.5f, 0.62499994f, 0.625f, 0.62500006f, 1.0f, 2.0f, 8.9f, 9.0f, 9.1f,
        15.0f, 20.0f, 43.9f, 44.0f, 44.4f, 50.0f, 55.0f, 87.3f, 87.33654f, 88.0f,
        88.72283f, 88.7229f, 89.0f, 100.0f, 103.9f, 103.97208f, 104.0f, 110.0f, 111.0f,
        1e6f, 1e30f, FLT_MAX, INFINITY,
    };
    const size_t nedge = sizeof edges / sizeof *edges;
    const uint32_t coarse = 4093, fine = 601;          /* strides in bit patterns */
    const uint32_t flo = f2u(0x1p-14f), fhi = f2u(128.0f);
    const size_t n = 2 * (0x7f800000u / coarse + 1 + (fhi - flo) / fine + 1 + nedge) + 4;
    float *x = xmalloc(n * sizeof(float));
    size_t i = 0;
    for (int s = 0; s < 2; s++) {
        const uint32_t sign = s ? 0x80000000u : 0;
        for (uint32_t u = 0; u < 0x7f800000u; u += coarse)
            x[i++] = u2f(u | sign);
        for (uint32_t u = flo; u < fhi; u += fine)
            x[i++] = u2f(u | sign);
        for (size_t e = 0; e < nedge; e++)
            x[i++] = u2f(f2u(edges[e]) | sign);
    }
    x[i++] = NAN;
    x[i++] = -NAN;
    x[i++] = u2f(0x7fc00001u);   /* a payload */
    x[i++] = u2f(0xff800001u);   /* a signalling NaN's bits */
    *count = i;
    return x;
}

static long act_values;

static void test_activation(act *a, const float *x, size_t n)
{
    float *y = xmalloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    a->fn(y, (ptrdiff_t)n);
    a->max_ulp = 0;
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float xi = x[i], yi = y[i];
        if (isnan(xi)) {
            CHECK(isnan(yi), "%s(nan 0x%08x) = %g, expected NaN", a->name, f2u(xi), yi);
            continue;
        }
        const double r = a->ref(xi);
        const double err = fabs((double)yi - r) / ulp32(r);
        if (!(err <= ULP_LIMIT) && bad++ < 5)
            CHECK(0, "%s(%a) = %a, float64 %a: %.2f ulp > %.0f", a->name, xi, yi, r, err,
                  ULP_LIMIT);
        if (err > a->max_ulp || isnan(err)) {
            a->max_ulp = err;
            a->worst = xi;
        }
    }
    n_checks++;
    /* exact edge values, signs included */
    static const float ins[] = {0.0f, -0.0f, INFINITY, -INFINITY};
    float z[4];
    memcpy(z, ins, sizeof z);
    a->fn(z, 4);
    if (a->ref == tanh)
        CHECK(f2u(z[0]) == f2u(0.0f) && f2u(z[1]) == f2u(-0.0f) && z[2] == 1.0f && z[3] == -1.0f,
              "tanh(+0, -0, inf, -inf) = %g %g %g %g (signs: %d %d)", z[0], z[1], z[2], z[3],
              (int)signbit(z[0]), (int)signbit(z[1]));
    else
        CHECK(z[0] == 0.5f && z[1] == 0.5f && z[2] == 1.0f && f2u(z[3]) == 0,
              "sigmoid(+0, -0, inf, -inf) = %g %g %g %g", z[0], z[1], z[2], z[3]);

    /* each element's result does not depend on its position (vector body or
     * tail), and nothing past x[n-1] is written */
    enum { MAXN = 3 * 16 + 3, PAD = 8 };
    float buf[MAXN + 2 * PAD + 4];
    for (ptrdiff_t len = 1; len <= MAXN; len++)
        for (ptrdiff_t off = 0; off < 4; off++) {
            for (size_t q = 0; q < sizeof buf / sizeof *buf; q++)
                buf[q] = SENTINEL;
            float *v = buf + PAD + off;
            const size_t base = (size_t)(len * 7919 + off * 104729) % (n - MAXN);
            memcpy(v, x + base, (size_t)len * sizeof(float));
            a->fn(v, len);
            int same = 1, guards = 1;
            for (ptrdiff_t q = 0; q < len; q++)
                same &= f2u(v[q]) == f2u(y[base + q]) || (isnan(v[q]) && isnan(y[base + q]));
            for (size_t q = 0; q < sizeof buf / sizeof *buf; q++)
                if (buf + q < v || buf + q >= v + len)
                    guards &= buf[q] == SENTINEL;
            CHECK(same, "%s over %td elements at offset %td: other bits than in one call",
                  a->name, len, off);
            CHECK(guards, "%s over %td elements at offset %td: wrote outside them", a->name,
                  len, off);
        }
    /* n = 0 touches nothing */
    buf[0] = SENTINEL;
    a->fn(buf, 0);
    CHECK(buf[0] == SENTINEL, "%s with n = 0 wrote", a->name);
    act_values += (long)n;
    free(y);
}

/* ------------------------------------------------------------------ fpenv */

/* The floating-point control register itself. */
static unsigned long long ctrl_read(void)
{
#if defined(__x86_64__) || defined(_M_X64)
    return _mm_getcsr();
#elif defined(__aarch64__)
    unsigned long long v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    return v;
#else
    return 0;
#endif
}

static void ctrl_write(unsigned long long v)
{
#if defined(__x86_64__) || defined(_M_X64)
    _mm_setcsr((unsigned int)v);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(v) : "memory");
#else
    (void)v;
#endif
}

/* the flush-to-zero bits of the control register */
#if defined(__x86_64__) || defined(_M_X64)
#define FTZ_BITS 0x8040ull   /* MXCSR FTZ | DAZ */
#define FTZ_NAME "MXCSR FTZ|DAZ"
#elif defined(__aarch64__)
#define FTZ_BITS (1ull << 24)   /* FPCR.FZ */
#define FTZ_NAME "FPCR.FZ"
#else
#define FTZ_BITS 0ull
#define FTZ_NAME "(none)"
#endif

/* volatile operands and results: the operations run where written, between the
 * mode switches (which are volatile asm) */
static int result_flushed(void)
{
    volatile float tiny = FLT_MIN, half = 0.5f, r;
    r = tiny * half;   /* 2^-127, subnormal */
    return r == 0.0f;
}

static int operand_flushed(void)
{
    volatile float sub = 0x1p-140f, scale = 0x1p30f, r;
    r = sub * scale;   /* 2^-110: normal, unless the subnormal operand reads as 0 */
    return r == 0.0f;
}

static int negative_result_signed_zero(void)
{
    volatile float tiny = -FLT_MIN, half = 0.5f, r;
    r = tiny * half;
    return r == 0.0f && signbit(r);
}

static void raise_overflow(void)
{
    volatile float big = FLT_MAX, two = 2.0f, r;
    r = big * two;
    (void)r;
}

static void raise_divbyzero(void)
{
    volatile float one = 1.0f, zero = 0.0f, r;
    r = one / zero;
    (void)r;
}

static long fpenv_checks;

static void test_fpenv(void)
{
    const long before_checks = n_checks;
    CHECK(sizeof(fc_fpenv_t) == 8, "fc_fpenv_t is %zu bytes, expected 8", sizeof(fc_fpenv_t));
    CHECK(!(ctrl_read() & FTZ_BITS) && !result_flushed() && !operand_flushed(),
          "flush-to-zero on before any fc_fpenv_enter (control 0x%llx)", ctrl_read());
    /* read after clearing the flags (MXCSR holds them) that the checks raised */
    feclearexcept(FE_ALL_EXCEPT);
    const unsigned long long outside = ctrl_read();

    fc_fpenv_t env = fc_fpenv_enter();
    const unsigned long long inside = ctrl_read();
    const int flushed = result_flushed(), opflushed = operand_flushed();
    const int negzero = negative_result_signed_zero();
    fc_fpenv_exit(env);
    const unsigned long long after = ctrl_read();
    CHECK((inside & FTZ_BITS) == FTZ_BITS, "inside: control 0x%llx lacks " FTZ_NAME, inside);
    CHECK((inside & ~FTZ_BITS) == (outside & ~FTZ_BITS),
          "inside: control 0x%llx changed more than " FTZ_NAME " (outside 0x%llx)", inside,
          outside);
    CHECK(flushed, "inside: FLT_MIN * 0.5 not flushed to zero");
    CHECK(opflushed, "inside: a subnormal operand not read as zero");
    CHECK(negzero, "inside: -FLT_MIN * 0.5 not flushed to -0");
    CHECK(after == outside, "after: control 0x%llx, expected the caller's 0x%llx", after,
          outside);
    CHECK(!result_flushed() && !operand_flushed(),
          "after: subnormals still flushed (gradual underflow not restored)");

    /* nested: the inner exit leaves the outer mode */
    fc_fpenv_t e1 = fc_fpenv_enter();
    fc_fpenv_t e2 = fc_fpenv_enter();
    fc_fpenv_exit(e2);
    CHECK(result_flushed() && (ctrl_read() & FTZ_BITS) == FTZ_BITS,
          "nested: the inner exit turned flush-to-zero off");
    fc_fpenv_exit(e1);
    CHECK(ctrl_read() == outside && !result_flushed(), "nested: the outer exit did not restore");

    /* the caller's other modes come back verbatim: another rounding mode and,
     * separately, flush-to-zero already on */
    CHECK(fesetround(FE_UPWARD) == 0, "fesetround(FE_UPWARD) failed");
    const unsigned long long upward = ctrl_read();
    env = fc_fpenv_enter();
    const unsigned long long up_inside = ctrl_read();
    fc_fpenv_exit(env);
    CHECK(ctrl_read() == upward && (up_inside & ~FTZ_BITS) == (upward & ~FTZ_BITS),
          "rounding upward: control 0x%llx inside, 0x%llx after, the caller's 0x%llx",
          up_inside, ctrl_read(), upward);
    fesetround(FE_TONEAREST);
    ctrl_write(outside | FTZ_BITS);
    env = fc_fpenv_enter();
    fc_fpenv_exit(env);
    CHECK(ctrl_read() == (outside | FTZ_BITS) && result_flushed(),
          "a caller already in flush-to-zero: not kept (control 0x%llx)", ctrl_read());
    ctrl_write(outside);

    /* the sticky exception flags raised inside do not leak out, the caller's stay */
    feclearexcept(FE_ALL_EXCEPT);
    raise_divbyzero();
    env = fc_fpenv_enter();
    raise_overflow();
    float t[2] = {100.0f, -100.0f};   /* exp(2a) overflows to inf on purpose */
    fc_tanh(t, 2);
    const int raised_inside = fetestexcept(FE_OVERFLOW) != 0;
    fc_fpenv_exit(env);
    CHECK(raised_inside, "inside: FLT_MAX * 2 raised no overflow flag");
    CHECK(t[0] == 1.0f && t[1] == -1.0f, "inside: tanh(+-100) = %g %g", t[0], t[1]);
    CHECK(!fetestexcept(FE_OVERFLOW),
          "after: the overflow flag raised inside leaked out to the caller");
    CHECK(fetestexcept(FE_DIVBYZERO), "after: the caller's divide-by-zero flag was lost");
    feclearexcept(FE_ALL_EXCEPT);
    CHECK(ctrl_read() == outside, "control 0x%llx at the end, expected 0x%llx", ctrl_read(),
          outside);
    fpenv_checks += n_checks - before_checks;
}

/* The activations inside the mode: subnormal operands read as signed zeros,
 * subnormal results flush, every other result keeps its bits. */
static void test_activation_ftz(const act *a, const float *x, size_t n)
{
    const long before_checks = n_checks;
    float *out = xmalloc(n * sizeof(float)), *in = xmalloc(n * sizeof(float));
    memcpy(out, x, n * sizeof(float));
    memcpy(in, x, n * sizeof(float));
    a->fn(out, (ptrdiff_t)n);
    fc_fpenv_t env = fc_fpenv_enter();
    a->fn(in, (ptrdiff_t)n);
    fc_fpenv_exit(env);
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float xi = x[i];
        if (isnan(xi))
            continue;
        const int sub_in = xi != 0 && fabsf(xi) < FLT_MIN;
        float want;
        if (sub_in) {   /* as +-0 */
            float z = signbit(xi) ? -0.0f : 0.0f;
            a->fn(&z, 1);
            want = z;
        } else if (out[i] != 0 && fabsf(out[i]) < 2 * FLT_MIN) {
            continue;   /* at the edge: rounding before or after flushing may differ */
        } else {
            want = out[i];
        }
        if (f2u(in[i]) != f2u(want) && bad++ < 5)
            CHECK(0, "%s(%a) under flush-to-zero = %a, expected %a", a->name, xi, in[i], want);
    }
    /* sigmoid's subnormal results flush; outside they do not */
    if (a->ref != tanh) {
        float v[2] = {-90.0f, -95.0f};
        fc_fpenv_t e = fc_fpenv_enter();
        a->fn(v, 2);
        fc_fpenv_exit(e);
        float w[2] = {-90.0f, -95.0f};
        a->fn(w, 2);
        CHECK(v[0] == 0 && v[1] == 0 && w[0] > 0 && w[0] < FLT_MIN && w[1] > 0,
              "sigmoid(-90, -95): %g %g under flush-to-zero, %g %g outside", v[0], v[1],
              w[0], w[1]);
    }
    n_checks++;
    free(out);
    free(in);
    fpenv_checks += n_checks - before_checks;
}

/* ------------------------------------------------------------------- main */

int main(void)
{
    const int avail = fc_isa_available();
    size_t nx;
    float *x = act_inputs(&nx);
    char isas[64] = "";
    act acts[2] = {{"sigmoid", fc_sigmoid, ref_sigmoid, 0, 0}, {"tanh", fc_tanh, tanh, 0, 0}};
    char ulps[256] = "";

#if defined(__aarch64__)
    CHECK(avail == 1 << FC_ISA_GENERIC, "fc_isa_available() = 0x%x on aarch64: expected "
          "the generic path only", avail);
    CHECK(fc_set_isa(FC_ISA_AVX2) == -1 && fc_get_isa() == FC_ISA_GENERIC,
          "fc_set_isa(avx2) on aarch64 did not refuse");
#endif
    test_fpenv();
    for (int isa = 0; isa < FC_ISA_COUNT; isa++) {
        if (!(avail & (1 << isa)))
            continue;
        CHECK(fc_set_isa(isa) == 0 && fc_get_isa() == isa, "fc_set_isa(%d) failed", isa);
        current_isa = fc_isa_name(isa);
        snprintf(isas + strlen(isas), sizeof isas - strlen(isas), "%s%s", *isas ? " " : "",
                 current_isa);
        CHECK(fc_has_half() == (isa != FC_ISA_GENERIC),
              "fc_has_half() = %d on the %s path", fc_has_half(), current_isa);
        test_products();
        for (int i = 0; i < 2; i++) {
            test_activation(&acts[i], x, nx);
            test_activation_ftz(&acts[i], x, nx);
            snprintf(ulps + strlen(ulps), sizeof ulps - strlen(ulps),
                     "%s%s %s %.2f ulp (at %a)", *ulps ? "; " : "", current_isa, acts[i].name,
                     acts[i].max_ulp, acts[i].worst);
        }
    }
    current_isa = "-";
    test_fpenv();   /* again after everything: nothing left the mode changed */
    free(x);

    printf("csrc tests on %s (%s), ISA paths: %s\n", ARCH, __VERSION__, isas);
    printf("  packed GEMM/GEMV: %ld products (fc_gemm, each B packed 3 ways, row pairs "
           "bit-for-bit), %ld float16 products, %ld packings checked exactly\n",
           gemm_shapes, half_products, pack_layouts);
    printf("  gemm_nt: %ld products; gemm_tn: %ld (2 products each, 5 thread splits)\n",
           nt_shapes, tn_shapes);
    printf("  activations: %ld values, max error: %s\n", act_values, ulps);
    printf("  fpenv (" FTZ_NAME "): %ld checks\n", fpenv_checks);
    if (n_failures) {
        printf("FAILED: %ld of %ld checks\n", n_failures, n_checks);
        return 1;
    }
    printf("all %ld checks passed\n", n_checks);
    return 0;
}
