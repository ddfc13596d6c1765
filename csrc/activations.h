/* Elementwise activations over contiguous float32, in place, through the
 * dispatch table (the ISA in use).  Accuracy contract: within 3 float32 ulp
 * of the float64 function over the whole float range; NaN in -> NaN out;
 * sigmoid(-inf) = 0, sigmoid(inf) = 1, tanh(+-inf) = +-1. */
#ifndef FASTCELLS_ACTIVATIONS_H
#define FASTCELLS_ACTIVATIONS_H
#include <stddef.h>
#include "dispatch.h"

static inline void fc_sigmoid(float *x, ptrdiff_t n) { fc_kernels.sigmoid(x, n); }
static inline void fc_tanh(float *x, ptrdiff_t n) { fc_kernels.tanh(x, n); }

#endif
