/* Layer normalization of one row (Ba, Kiros, Hinton 2016, arXiv:1607.06450), for the
 * fused gate passes of fastcells/_kernels.pyx.
 *
 *   LN(x; g, b) = (x - mean(x)) / sqrt(var(x) + eps) * g + b    (population variance)
 *
 * A row is a few hundred to a few thousand floats already in L1 (the step's product
 * or cell state), so each function makes its passes over it in place.  The sums run
 * in FC_LN_LANES partial sums added in a fixed order: the lanes are vector registers
 * (no reassociation is needed for that), and a row's result never depends on the ISA
 * path, the thread or the other rows.  Included by the Cython module, which
 * is compiled for the baseline ISA (no FMA contraction: the same bits everywhere).
 */
#ifndef FC_LAYERNORM_H
#define FC_LAYERNORM_H

#include <math.h>
#include <stddef.h>

#define FC_LN_LANES 8

/* The FC_LN_LANES partial sums are two GCC vectors of 4 lanes (kept in registers: an
 * array indexed in a loop went through memory at every step, and the baseline's
 * registers hold 4 floats); lane l adds the floats l, l + FC_LN_LANES, ... of the
 * row in order, as a scalar loop would. */
typedef float fc_ln_v __attribute__((vector_size(FC_LN_LANES / 2 * sizeof(float)), aligned(4),
                                     may_alias));
/* the 4 floats at p + i, unaligned */
#define FC_LN_AT(p, i) (*(const fc_ln_v *)((p) + (i)))
#define FC_LN_HALF (FC_LN_LANES / 2)

/* the lanes' sum, in a fixed tree order (lanes 0-3 in lo, 4-7 in hi) */
static inline float fc_ln_reduce(fc_ln_v lo, fc_ln_v hi)
{
    return ((lo[0] + lo[1]) + (lo[2] + lo[3])) + ((hi[0] + hi[1]) + (hi[2] + hi[3]));
}

/* lane l's partial sum (l < FC_LN_LANES) */
#define FC_LN_LANE(lo, hi, l) (*((l) < FC_LN_HALF ? &(lo)[l] : &(hi)[(l) - FC_LN_HALF]))

/* out = LN(x; g, b) over n floats (out may be x); xhat, when not NULL, receives the
 * normalized row (x - mean) / sqrt(var + eps).  Returns 1 / sqrt(var + eps). */
static inline float fc_ln_forward(const float *x, float *out, ptrdiff_t n, float eps,
                                  const float *g, const float *b, float *xhat)
{
    fc_ln_v lo = {0}, hi = {0}, d;
    float mean, var, rstd, v;
    ptrdiff_t i, l;
    if (n <= 0)
        return 0.0f;
    for (i = 0; i + FC_LN_LANES <= n; i += FC_LN_LANES) {
        lo += FC_LN_AT(x, i);
        hi += FC_LN_AT(x, i + FC_LN_HALF);
    }
    for (l = 0; i + l < n; l++)
        FC_LN_LANE(lo, hi, l) += x[i + l];
    mean = fc_ln_reduce(lo, hi) / (float)n;
    lo = hi = (fc_ln_v){0};
    /* two passes: no cancellation when the mean is large against the spread */
    for (i = 0; i + FC_LN_LANES <= n; i += FC_LN_LANES) {
        d = FC_LN_AT(x, i) - mean;
        lo += d * d;
        d = FC_LN_AT(x, i + FC_LN_HALF) - mean;
        hi += d * d;
    }
    for (l = 0; i + l < n; l++) {
        v = x[i + l] - mean;
        FC_LN_LANE(lo, hi, l) += v * v;
    }
    var = fc_ln_reduce(lo, hi) / (float)n;
    rstd = 1.0f / sqrtf(var + eps);
    for (i = 0; i < n; i++) {
        v = (x[i] - mean) * rstd;
        if (xhat != NULL)
            xhat[i] = v;
        out[i] = v * g[i] + b[i];
    }
    return rstd;
}

/* The gradient through LN of one row: given dy (the gradient of LN's output), the
 * normalized row xhat and rstd of the forward pass, and the gain g,
 *   dx = rstd * (dy*g - mean(dy*g) - xhat * mean(dy*g*xhat))
 * over n floats (dx may be dy). */
static inline void fc_ln_backward(const float *dy, const float *xhat, float rstd,
                                  const float *g, ptrdiff_t n, float *dx)
{
    fc_ln_v s1 = {0}, s1h = {0}, s2 = {0}, s2h = {0}, w;
    float m1, m2, v;
    ptrdiff_t i, l;
    if (n <= 0)
        return;
    for (i = 0; i + FC_LN_LANES <= n; i += FC_LN_LANES) {
        w = FC_LN_AT(dy, i) * FC_LN_AT(g, i);
        s1 += w;
        s2 += w * FC_LN_AT(xhat, i);
        w = FC_LN_AT(dy, i + FC_LN_HALF) * FC_LN_AT(g, i + FC_LN_HALF);
        s1h += w;
        s2h += w * FC_LN_AT(xhat, i + FC_LN_HALF);
    }
    for (l = 0; i + l < n; l++) {
        v = dy[i + l] * g[i + l];
        FC_LN_LANE(s1, s1h, l) += v;
        FC_LN_LANE(s2, s2h, l) += v * xhat[i + l];
    }
    m1 = fc_ln_reduce(s1, s1h) / (float)n;
    m2 = fc_ln_reduce(s2, s2h) / (float)n;
    for (i = 0; i < n; i++)
        dx[i] = rstd * (dy[i] * g[i] - m1 - xhat[i] * m2);
}

#endif
