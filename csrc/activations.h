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

/* a[j] += x[j] for j < n. */
static inline void fc_add(float *a, const float *x, ptrdiff_t n) { fc_kernels.add(a, x, n); }

/* The LSTM's gate pass over n units (no peepholes, no normalization): a[0..n)
 * holds gate i's pre-activations, gates f, g, o follow H floats apart each;
 * i, f, o = sigmoid, g = tanh; c <- f*c + i*g; h = y = o * tanh(c).  With keep,
 * the activated gates replace the pre-activations in a (what training keeps).
 * The bits of the separate activations and the products rounded before
 * their sum. */
static inline void fc_lstm_cell(float *a, ptrdiff_t H, float *c, float *h, float *y,
                                ptrdiff_t n, int keep)
{
    fc_kernels.lstm_cell(a, H, c, h, y, n, keep);
}

#endif
