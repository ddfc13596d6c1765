/* The table of per-ISA routines the kernels call through (see cpu.h).
 *
 * Each routine is compiled once per ISA from a template header
 * (gemm_impl.h, gemm_nt_impl.h, activations_impl.h) with a name suffix; FC_DISPATCH_INIT
 * names one suffix's set.  Adding a routine means: a line in the struct, a
 * name in the initializer, a definition in the template.
 */
#ifndef FASTCELLS_DISPATCH_H
#define FASTCELLS_DISPATCH_H
#include <stddef.h>

typedef void (*fc_gemm_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                           ptrdiff_t lda, const float *P, float *C, ptrdiff_t ldc);
typedef void (*fc_gemm_nt_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                              ptrdiff_t lda, const float *W, ptrdiff_t ldw, float *C,
                              ptrdiff_t ldc);
typedef void (*fc_gemm_bias_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                ptrdiff_t lda, const float *P, const float *bias, float *C,
                                ptrdiff_t ldc);
typedef void (*fc_act_fn)(float *x, ptrdiff_t n);
typedef void (*fc_add_fn)(float *a, const float *x, ptrdiff_t n);
typedef void (*fc_lstm_cell_fn)(float *a, ptrdiff_t H, float *c, float *h, float *y,
                                ptrdiff_t n, int keep);
typedef void (*fc_gemm_half_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                                ptrdiff_t lda, const unsigned short *P, float *C, ptrdiff_t ldc);

typedef struct {
    fc_gemm_fn gemm;     /* C[m,n] = A[m,k] @ B[k,n], B packed by fc_pack */
    fc_gemm_nt_fn gemm_nt; /* C[m,n] = A[m,k] @ W[n,k].T, W unpacked */
    fc_act_fn sigmoid;   /* x <- 1 / (1 + exp(-x)), in place */
    fc_act_fn tanh;      /* x <- tanh(x), in place */
    fc_gemm_half_fn gemm_half; /* gemm with B packed as float16; NULL: no hardware
                                  conversion on this path */
    fc_gemm_bias_fn gemm_bias; /* C[m,n] = A[m,k] @ B[k,n] + bias[n], B packed */
    fc_lstm_cell_fn lstm_cell; /* the LSTM's gate pass (activations.h) */
    fc_add_fn add;       /* a += x, elementwise */
} fc_dispatch;

#define FC_DECLARE_ISA(sfx)                                                          \
    void fc_gemm_packed_##sfx(ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *,         \
                              ptrdiff_t, const float *, float *, ptrdiff_t);          \
    void fc_gemm_nt_##sfx(ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t,      \
                          const float *, ptrdiff_t, float *, ptrdiff_t);                  \
    void fc_gemm_packed_bias_##sfx(ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *,    \
                                   ptrdiff_t, const float *, const float *, float *,  \
                                   ptrdiff_t);                                        \
    void fc_sigmoid_##sfx(float *, ptrdiff_t);                                        \
    void fc_tanh_##sfx(float *, ptrdiff_t);                                           \
    void fc_lstm_cell_##sfx(float *, ptrdiff_t, float *, float *, float *, ptrdiff_t, int); \
    void fc_add_##sfx(float *, const float *, ptrdiff_t);
/* only where the ISA converts float16 in hardware (FC_HALF in gemm.c) */
#define FC_DECLARE_HALF(sfx)                                                          \
    void fc_gemm_half_##sfx(ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t,  \
                            const unsigned short *, float *, ptrdiff_t);

FC_DECLARE_ISA(generic)
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
FC_DECLARE_ISA(avx2)
FC_DECLARE_ISA(avx512)
FC_DECLARE_HALF(avx2)
FC_DECLARE_HALF(avx512)
#endif

#define FC_DISPATCH_INIT(sfx, half) { fc_gemm_packed_##sfx, fc_gemm_nt_##sfx, fc_sigmoid_##sfx, \
                                     fc_tanh_##sfx, half, fc_gemm_packed_bias_##sfx,             \
                                     fc_lstm_cell_##sfx, fc_add_##sfx }

/* The table in use; written only by fc_set_isa. */
extern fc_dispatch fc_kernels;

#endif
