/* Template: elementwise sigmoid and tanh for one ISA (see gemm_impl.h for how
 * templates are included: once per ISA with FC_SFX and FC_TARGET defined; no
 * include guard on purpose).  In place over contiguous float32.
 *
 * Written once with GCC/clang vector extensions, one native register wide
 * (16 floats for AVX-512, 8 for AVX2, 4 for the SSE2/NEON baseline), no
 * -ffast-math: NaN, inf and signed zeros follow IEEE rules.  The last
 * n % width elements go through the same vector code on a zero-padded
 * copy, so no element is read or written past x[n-1] and every element
 * gets bit-identical math.
 *
 * exp(y), the building block (Cody-Waite, as in Cephes expf):
 *   y is clamped to [-110, 20] (sigmoid needs only the lower clamp, tanh
 *   the upper one, see fc_act_exp; exp is 0 below, and tanh is 1 above,
 *   in float32 anyway; the clamp keeps the exponent arithmetic in range and
 *   lets NaN through),
 *   n = rint(y / ln 2) by the 1.5 * 2^23 shifter, r = y - n*C1 - n*C2 with
 *   C1 + C2 = ln 2 and C1 = 355/512 (n*C1 exact), |r| <= ln2/2;
 *   exp(r) = 1 + r + r^2 P(r), P the degree-5 minimax polynomial of Cephes
 *   expf (relative error about 1 ulp on [-ln2/2, ln2/2]);
 *   the result is scaled by 2^n as 2^(n>>1) * 2^(n - (n>>1)), two normal
 *   powers of two built from exponent bits (AVX-512: one vscalefps, the
 *   same bits), so results in the subnormal range are rounded once
 *   (gradual underflow) instead of being lost to a too-small power of two.
 * sigmoid(x), with e = exp(-|x|) in (0, 1] (never overflows):
 *   x >= 0: 1 / (1 + e);  x < 0: e / (1 + e)  (= exp(x) in the far tail,
 *   subnormal below x ~ -87.3 and 0 below ~ -103.9, as the float64 value
 *   rounds).  Max error 2.40 ulp (exhaustive over 2^-14 <= |x| < 128).
 * tanh(x) = sign(x) * t(|x|) (sign bit copied, so tanh(-0) = -0):
 *   |x| < 0.625: t = a + a^3 Q(a^2), Q the degree-4 minimax polynomial of
 *   Cephes tanhf (avoids the cancellation of the exp form near 0; for tiny
 *   a the correction underflows and t = a);
 *   otherwise t = 1 - 2 / (exp(2a) + 1), which saturates to exactly 1
 *   (1 - tiny rounds to 1 from a ~ 8.7; exp's argument is clamped at 20).
 *   Max error 1.33 ulp (same exhaustive check).
 *
 * Under flush-to-zero/denormals-are-zero (as inside the fastcells time
 * loops, csrc/fpenv.h) subnormal inputs read as signed zeros and subnormal
 * results become signed zeros; everything else is unchanged.
 */
#include <string.h>

#ifndef FC_NAME
#define FC_CAT_(a, b) a##_##b
#define FC_CAT(a, b) FC_CAT_(a, b)
#define FC_NAME(name) FC_CAT(name, FC_SFX)
#endif

#ifndef FC_ACT_TEMPLATE_COMMON
#define FC_ACT_TEMPLATE_COMMON
/* Vector bytes per ISA suffix: the native register width.  (A 64-byte
 * vector everywhere would be simpler, but GCC lowers the comparisons of a
 * vector wider than the target's registers to scalar code, many times slower.)
 * A new ISA suffix needs its line here. */
#define FC_ACT_BYTES_generic 16
#define FC_ACT_BYTES_avx2 32
#define FC_ACT_BYTES_avx512 64
#define FC_ACT_SIGN ((int)0x80000000u)
/* m ? a : b, m all-ones or all-zeros per lane (C has no vector ?:). */
#define FC_ACT_SELECT(m, a, b) \
    ((fc_act_vf)(((fc_act_vi)(a) & (m)) | ((fc_act_vi)(b) & ~(m))))
#endif

/* This instantiation's vector types (macros, undefined at the end). */
#define FC_ACT_VBYTES FC_CAT(FC_ACT_BYTES, FC_SFX)
#define FC_ACT_W (FC_ACT_VBYTES / 4)
#define fc_act_vf FC_NAME(fc_act_vf)
#define fc_act_vi FC_NAME(fc_act_vi)
#define fc_act_vu FC_NAME(fc_act_vu)
typedef float fc_act_vf __attribute__((vector_size(FC_ACT_VBYTES), aligned(4), may_alias));
typedef int fc_act_vi __attribute__((vector_size(FC_ACT_VBYTES), aligned(4), may_alias));
typedef unsigned fc_act_vu __attribute__((vector_size(FC_ACT_VBYTES), aligned(4), may_alias));

/* The helpers work in place through pointers: passing vectors wider than
 * the default ABI's by value makes GCC note ABI changes even for
 * always-inline functions. */

/* exp(y) for y in [lo, hi] (or NaN) as the header describes, the clamps and
 * the scaling cut to what the caller's range needs (the same bits as the
 * full form over that range):
 *   FC_ACT_EXP_NEG: y <= 0 (sigmoid's -|x|): clamped below at -110 only;
 *     the result may be subnormal: scaled by 2^n in two steps (one vscalefps
 *     on AVX-512, which rounds once as the two steps do).
 *   FC_ACT_EXP_POS: y >= 0 (tanh's 2|x|): clamped above at 20 only (tanh
 *     rounds to 1 from 2|x| ~ 17.3, so a larger exp changes nothing), so
 *     n <= 29 and one normal power of two scales it.
 * The clamps are max/min instructions where the ISA has them, ordered so
 * that a NaN y passes. */
#define FC_ACT_EXP_NEG 0
#define FC_ACT_EXP_POS 1

#if defined(FC_X86_INTRIN) && FC_ACT_VBYTES == 64
#define FC_ACT_MAX(lo, y) ((fc_act_vf)_mm512_max_ps((__m512)(lo), (__m512)(y)))
#define FC_ACT_MIN(hi, y) ((fc_act_vf)_mm512_min_ps((__m512)(hi), (__m512)(y)))
#elif defined(FC_X86_INTRIN) && FC_ACT_VBYTES == 32
#define FC_ACT_MAX(lo, y) ((fc_act_vf)_mm256_max_ps((__m256)(lo), (__m256)(y)))
#define FC_ACT_MIN(hi, y) ((fc_act_vf)_mm256_min_ps((__m256)(hi), (__m256)(y)))
#else
/* comparisons are false for NaN, which therefore passes unchanged */
#define FC_ACT_MAX(lo, y) FC_ACT_SELECT((y) < (lo), (lo), (y))
#define FC_ACT_MIN(hi, y) FC_ACT_SELECT((y) > (hi), (hi), (y))
#endif

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_act_exp)(fc_act_vf *yp, const int range)
{
    fc_act_vf y = *yp;
    if (range == FC_ACT_EXP_NEG)   /* x86 max(a, b): a > b ? a : b, so NaN y stays */
        y = FC_ACT_MAX((fc_act_vf){0} - 110.0f, y);
    else
        y = FC_ACT_MIN((fc_act_vf){0} + 20.0f, y);

    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    fc_act_vf t = y * 1.44269504088896341f + shifter;
    fc_act_vf nf = t - shifter;
    fc_act_vf r = y - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;

    fc_act_vf p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = (p * (r * r) + r) + 1.0f;

#if defined(FC_X86_INTRIN) && FC_ACT_VBYTES == 64
    *yp = (fc_act_vf)_mm512_scalef_ps((__m512)p, (__m512)nf);
#else
    /* integer n from t's low mantissa bits (unsigned: no overflow UB for NaN lanes) */
    fc_act_vi n = (fc_act_vi)((fc_act_vu)t - (fc_act_vu)((fc_act_vf){0} + shifter));
    if (range == FC_ACT_EXP_POS) {
        *yp = p * (fc_act_vf)(((fc_act_vu)n + 127u) << 23);
        return;
    }
    fc_act_vi n1 = n >> 1;
    fc_act_vi n2 = (fc_act_vi)((fc_act_vu)n - (fc_act_vu)n1); /* both in [-80, 0]: normal powers of two */
    fc_act_vf s1 = (fc_act_vf)(((fc_act_vu)n1 + 127u) << 23);
    fc_act_vf s2 = (fc_act_vf)(((fc_act_vu)n2 + 127u) << 23);
    *yp = (p * s1) * s2;
#endif
}

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_act_sigmoid_v)(fc_act_vf *xp)
{
    fc_act_vf x = *xp;
    fc_act_vi neg = (fc_act_vi)x < 0; /* sign bit set: x < 0, -0, or a negative NaN */
    fc_act_vf e = (fc_act_vf)((fc_act_vi)x | FC_ACT_SIGN);   /* -|x| */
    FC_NAME(fc_act_exp)(&e, FC_ACT_EXP_NEG);
    fc_act_vf one = (fc_act_vf){0} + 1.0f;
    /* for -0, e = 1 and both branches give 0.5 */
    *xp = FC_ACT_SELECT(neg, e, one) / (one + e);
}

static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_act_tanh_v)(fc_act_vf *xp)
{
    fc_act_vf x = *xp;
    fc_act_vi sign = (fc_act_vi)x & FC_ACT_SIGN;
    fc_act_vf a = (fc_act_vf)((fc_act_vi)x ^ sign);

    fc_act_vf z = a * a;
    fc_act_vf q = -5.70498872745e-3f * z + 2.06390887954e-2f;
    q = q * z - 5.37397155531e-2f;
    q = q * z + 1.33314422036e-1f;
    q = q * z - 3.33332819422e-1f;
    fc_act_vf small = (q * z) * a + a;

    fc_act_vf e2a = a + a;
    FC_NAME(fc_act_exp)(&e2a, FC_ACT_EXP_POS);
    fc_act_vf large = 1.0f - 2.0f / (e2a + 1.0f);

    fc_act_vf t = FC_ACT_SELECT(a < 0.625f, small, large);
    *xp = (fc_act_vf)((fc_act_vi)t | sign);
}

/* One template per activation: full vectors, then the zero-padded tail. */
#define FC_ACT_LOOP(vecfn)                                      \
    ptrdiff_t i = 0;                                            \
    for (; i + FC_ACT_W <= n; i += FC_ACT_W) {                  \
        /* aligned(4), may_alias type: a plain unaligned load */ \
        fc_act_vf v = *(const fc_act_vf *)(x + i);              \
        vecfn(&v);                                              \
        *(fc_act_vf *)(x + i) = v;                              \
    }                                                           \
    if (i < n) {                                                \
        fc_act_vf v = {0};                                      \
        memcpy(&v, x + i, (size_t)(n - i) * sizeof(float));     \
        vecfn(&v);                                              \
        memcpy(x + i, &v, (size_t)(n - i) * sizeof(float));     \
    }

FC_TARGET void FC_NAME(fc_sigmoid)(float *x, ptrdiff_t n)
{
    FC_ACT_LOOP(FC_NAME(fc_act_sigmoid_v))
}

FC_TARGET void FC_NAME(fc_tanh)(float *x, ptrdiff_t n)
{
    FC_ACT_LOOP(FC_NAME(fc_act_tanh_v))
}

/* The LSTM's gate pass over n units (see activations.h, fc_lstm_cell).  On
 * AVX-512 one vector of units at a time, every gate and state in its 32
 * registers; with 16 registers (AVX2, SSE2) that spilled, so there the gates
 * are activated one pass each over the row first (the activations' own
 * loops), then one pass updates the states.  The products of the cell update
 * are rounded before their sum (an empty asm keeps the compiler from fusing
 * them into an FMA): c' = f*c + i*g in exactly the operations of the passes
 * this replaced, so the bits do not depend on which form ran. */
#if defined(FC_X86_INTRIN)
#define FC_ACT_ROUNDED(v) __asm__("" : "+v"(v))
#else
#define FC_ACT_ROUNDED(v) ((void)0)
#endif
#define FC_LSTM_FUSED (FC_ACT_VBYTES == 64)

/* One vector of units; the gates in a already activated unless FC_LSTM_FUSED. */
static inline __attribute__((always_inline)) FC_TARGET void
FC_NAME(fc_lstm_cell_v)(float *a, ptrdiff_t H, float *c, float *h, float *y, int keep)
{
    /* (aligned(4), may_alias type: plain unaligned loads and stores, as FC_ACT_LOOP;
     * memcpy here went through the stack on AVX2) */
    fc_act_vf i = *(const fc_act_vf *)a, f = *(const fc_act_vf *)(a + H);
    fc_act_vf g = *(const fc_act_vf *)(a + 2 * H), o = *(const fc_act_vf *)(a + 3 * H);
    fc_act_vf cv = *(const fc_act_vf *)c, t;
    if (FC_LSTM_FUSED) {
        FC_NAME(fc_act_sigmoid_v)(&i);
        FC_NAME(fc_act_sigmoid_v)(&f);
        FC_NAME(fc_act_tanh_v)(&g);
        FC_NAME(fc_act_sigmoid_v)(&o);
    }
    fc_act_vf fc = f * cv, ig = i * g;
    FC_ACT_ROUNDED(fc);
    FC_ACT_ROUNDED(ig);
    cv = fc + ig;
    t = cv;
    FC_NAME(fc_act_tanh_v)(&t);
    t = o * t;
    *(fc_act_vf *)c = cv;
    *(fc_act_vf *)h = t;
    *(fc_act_vf *)y = t;
    if (FC_LSTM_FUSED && keep) {
        *(fc_act_vf *)a = i;
        *(fc_act_vf *)(a + H) = f;
        *(fc_act_vf *)(a + 2 * H) = g;
        *(fc_act_vf *)(a + 3 * H) = o;
    }
}

FC_TARGET void FC_NAME(fc_lstm_cell)(float *a, ptrdiff_t H, float *c, float *h, float *y,
                                     ptrdiff_t n, int keep)
{
    if (!FC_LSTM_FUSED) {   /* (a is the caller's scratch: activated in place either way) */
        FC_NAME(fc_sigmoid)(a, n);
        FC_NAME(fc_sigmoid)(a + H, n);
        FC_NAME(fc_tanh)(a + 2 * H, n);
        FC_NAME(fc_sigmoid)(a + 3 * H, n);
    }
    ptrdiff_t j = 0;
    for (; j + FC_ACT_W <= n; j += FC_ACT_W)
        FC_NAME(fc_lstm_cell_v)(a + j, H, c + j, h + j, y + j, keep);
    if (j < n) {   /* the rest through zero-padded copies, as the activations' tail */
        const size_t rest = (size_t)(n - j) * sizeof(float);
        float ta[4 * FC_ACT_W] = {0}, tc[FC_ACT_W] = {0}, th[FC_ACT_W], ty[FC_ACT_W];
        for (int q = 0; q < 4; q++)
            memcpy(ta + q * FC_ACT_W, a + q * H + j, rest);
        memcpy(tc, c + j, rest);
        FC_NAME(fc_lstm_cell_v)(ta, FC_ACT_W, tc, th, ty, keep);
        if (FC_LSTM_FUSED && keep)
            for (int q = 0; q < 4; q++)
                memcpy(a + q * H + j, ta + q * FC_ACT_W, rest);
        memcpy(c + j, tc, rest);
        memcpy(h + j, th, rest);
        memcpy(y + j, ty, rest);
    }
}

/* a[j] += x[j] for j < n (the loops' gx + W_hh h): one register at a time,
 * the rest one by one (a float add rounds alike at any width). */
FC_TARGET void FC_NAME(fc_add)(float *a, const float *x, ptrdiff_t n)
{
    ptrdiff_t j = 0;
    for (; j + FC_ACT_W <= n; j += FC_ACT_W)
        *(fc_act_vf *)(a + j) += *(const fc_act_vf *)(x + j);
    for (; j < n; j++)
        a[j] += x[j];
}

#undef FC_ACT_ROUNDED
#undef FC_LSTM_FUSED
#undef FC_ACT_LOOP
#undef FC_ACT_MAX
#undef FC_ACT_MIN
#undef FC_ACT_EXP_NEG
#undef FC_ACT_EXP_POS
#undef fc_act_vf
#undef fc_act_vi
#undef fc_act_vu
#undef FC_ACT_W
#undef FC_ACT_VBYTES
