/* Layer normalization of one row (Ba, Kiros, Hinton 2016, arXiv:1607.06450), for the
 * fused gate passes of fastcells/_kernels.pyx.
 *
 *   LN(x; g, b) = (x - mean(x)) / sqrt(var(x) + eps) * g + b    (population variance)
 *
 * A row is a few hundred to a few thousand floats already in L1 (the step's product
 * or cell state), so each function makes its passes over it in place.  The sums run
 * in FC_LN_LANES partial sums added in a fixed order: the compiler may vectorize the
 * lanes (no reassociation is needed for that), and a row's result never depends on
 * the ISA path, the thread or the other rows.  Included by the Cython module, which
 * is compiled for the baseline ISA (no FMA contraction: the same bits everywhere).
 */
#ifndef FC_LAYERNORM_H
#define FC_LAYERNORM_H

#include <math.h>
#include <stddef.h>

#define FC_LN_LANES 8

/* the lanes' sum, in a fixed tree order */
static inline float fc_ln_reduce(const float *acc)
{
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* out = LN(x; g, b) over n floats (out may be x); xhat, when not NULL, receives the
 * normalized row (x - mean) / sqrt(var + eps).  Returns 1 / sqrt(var + eps). */
static inline float fc_ln_forward(const float *x, float *out, ptrdiff_t n, float eps,
                                  const float *g, const float *b, float *xhat)
{
    float acc[FC_LN_LANES] = {0}, mean, var, rstd, v;
    ptrdiff_t i, l;
    if (n <= 0)
        return 0.0f;
    for (i = 0; i + FC_LN_LANES <= n; i += FC_LN_LANES)
        for (l = 0; l < FC_LN_LANES; l++)
            acc[l] += x[i + l];
    for (l = 0; i + l < n; l++)
        acc[l] += x[i + l];
    mean = fc_ln_reduce(acc) / (float)n;
    for (l = 0; l < FC_LN_LANES; l++)
        acc[l] = 0.0f;
    /* two passes: no cancellation when the mean is large against the spread */
    for (i = 0; i + FC_LN_LANES <= n; i += FC_LN_LANES)
        for (l = 0; l < FC_LN_LANES; l++) {
            v = x[i + l] - mean;
            acc[l] += v * v;
        }
    for (l = 0; i + l < n; l++) {
        v = x[i + l] - mean;
        acc[l] += v * v;
    }
    var = fc_ln_reduce(acc) / (float)n;
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
    float s1[FC_LN_LANES] = {0}, s2[FC_LN_LANES] = {0}, m1, m2, v;
    ptrdiff_t i, l;
    if (n <= 0)
        return;
    for (i = 0; i + FC_LN_LANES <= n; i += FC_LN_LANES)
        for (l = 0; l < FC_LN_LANES; l++) {
            v = dy[i + l] * g[i + l];
            s1[l] += v;
            s2[l] += v * xhat[i + l];
        }
    for (l = 0; i + l < n; l++) {
        v = dy[i + l] * g[i + l];
        s1[l] += v;
        s2[l] += v * xhat[i + l];
    }
    m1 = fc_ln_reduce(s1) / (float)n;
    m2 = fc_ln_reduce(s2) / (float)n;
    for (i = 0; i < n; i++)
        dx[i] = rstd * (dy[i] * g[i] - m1 - xhat[i] * m2);
}

#endif
