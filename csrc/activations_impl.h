/* Template: elementwise activations for one ISA (see gemm_impl.h for how
 * templates are included).  In place over contiguous float32.
 *
 * These call libm's expf/tanhf (correctly rounded to within 1-2 ulp over the
 * whole float range, NaN and inf included); the vectorized replacements
 * must keep that accuracy (see activations.h).
 */
#include <math.h>

FC_TARGET void FC_NAME(fc_sigmoid)(float *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = 1.0f / (1.0f + expf(-x[i]));
}

FC_TARGET void FC_NAME(fc_tanh)(float *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = tanhf(x[i]);
}
