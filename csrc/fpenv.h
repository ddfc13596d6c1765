/* The floating-point mode of the time loops: flush-to-zero on, restored on exit.
 *
 * Subnormal operands and results cost tens to hundreds of cycles each on
 * x86 (microcode assists) and some ARM cores, and a recurrent state decaying
 * towards zero produces them step after step.  So every kernel entry point
 * runs its loop between fc_fpenv_enter() and fc_fpenv_exit(saved):
 *   x86 (SSE, MXCSR): FTZ (results that would be subnormal become +-0) and
 *     DAZ (subnormal operands read as +-0);
 *   aarch64 (FPCR.FZ): both at once;
 *   elsewhere: nothing changes (the kernels are still correct, only slower
 *     on subnormals).
 * The caller's control/status word is restored verbatim on exit, so Python
 * and NumPy see the mode they had, and the sticky exception flags raised
 * inside the kernel (exp overflowing to inf on purpose in the activations)
 * do not leak out.  The mode is per thread, and each call saves and
 * restores its own, so concurrent kernels in several threads do not
 * interfere.  The effect on results: a value below 2^-126 (~1.2e-38) in
 * magnitude counts as zero, an absolute error far below float32 rounding of
 * any quantity an RNN computes.
 *
 * fc_fpenv_t, the saved control word, is unsigned long long on every
 * platform (the Cython declaration in _kernels.pyx names the same type):
 * x86's 32-bit MXCSR, which holds both the mode and the sticky flags, sits
 * in its low bits; aarch64 keeps the two in separate registers, so the word
 * holds FPCR (whose upper 32 bits are reserved, zero) in its low half and
 * FPSR (the flags) in its high half, and exit restores both.
 */
#ifndef FASTCELLS_FPENV_H
#define FASTCELLS_FPENV_H

/* Keep the compiler from moving the loop's loads and stores across the mode switch. */
#if defined(__GNUC__) || defined(__clang__)
#define FC_FPENV_BARRIER() __asm__ __volatile__("" ::: "memory")
#else
#define FC_FPENV_BARRIER() ((void)0)
#endif

typedef unsigned long long fc_fpenv_t;

#if defined(__x86_64__) || defined(_M_X64) || (defined(__i386__) && defined(__SSE2__))
#include <xmmintrin.h>

#define FC_MXCSR_DAZ 0x0040u
#define FC_MXCSR_FTZ 0x8000u

static inline fc_fpenv_t fc_fpenv_enter(void)
{
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | FC_MXCSR_FTZ | FC_MXCSR_DAZ);
    FC_FPENV_BARRIER();
    return saved;
}

static inline void fc_fpenv_exit(fc_fpenv_t saved)
{
    FC_FPENV_BARRIER();
    _mm_setcsr((unsigned int)saved);
}

#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))

#define FC_FPCR_FZ (1ull << 24)
#define FC_FPENV_LOW 0xffffffffull

static inline fc_fpenv_t fc_fpenv_enter(void)
{
    /* FPCR and FPSR are 64-bit system registers: mrs/msr need x registers */
    fc_fpenv_t fpcr, fpsr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ __volatile__("mrs %0, fpsr" : "=r"(fpsr));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr | FC_FPCR_FZ) : "memory");
    return (fpcr & FC_FPENV_LOW) | (fpsr & FC_FPENV_LOW) << 32;
}

static inline void fc_fpenv_exit(fc_fpenv_t saved)
{
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved & FC_FPENV_LOW) : "memory");
    /* the flags raised inside (exp overflowing on purpose) dropped, the caller's back */
    __asm__ __volatile__("msr fpsr, %0" : : "r"(saved >> 32) : "memory");
}

#else

static inline fc_fpenv_t fc_fpenv_enter(void) { return 0; }
static inline void fc_fpenv_exit(fc_fpenv_t saved) { (void)saved; }

#endif

#endif
