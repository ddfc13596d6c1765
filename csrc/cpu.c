/* CPU detection and the dispatch table (see cpu.h). */
#include "cpu.h"
#include "dispatch.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define FC_X86 1
#endif

#if defined(FC_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
static int has_f16c(void)
{
    unsigned int a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

int fc_isa_available(void)
{
    int mask = 1 << FC_ISA_GENERIC;
#if defined(FC_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* libgcc's checks include the OS's XSAVE state (xgetbv), not only CPUID. */
    /* F16C (float16 loads, Stepper's float16 weights) came before AVX2 on every
     * CPU that has both; required so that one AVX2 path needs no second check.
     * Read from CPUID: __builtin_cpu_supports("f16c") is missing from older
     * compilers (GCC < 11), and the OS side is the AVX state, checked above. */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
        mask |= 1 << FC_ISA_AVX2;
    if ((mask & (1 << FC_ISA_AVX2)) && __builtin_cpu_supports("avx512f"))
        mask |= 1 << FC_ISA_AVX512;
#endif
    return mask;
}

const char *fc_isa_name(int isa)
{
    switch (isa) {
    case FC_ISA_GENERIC: return "generic";
    case FC_ISA_AVX2: return "avx2";
    case FC_ISA_AVX512: return "avx512";
    default: return "unknown";
    }
}

static int current_isa = FC_ISA_GENERIC;
fc_dispatch fc_kernels = FC_DISPATCH_INIT(generic, NULL);

int fc_set_isa(int isa)
{
    if (isa < 0 || isa >= FC_ISA_COUNT || !(fc_isa_available() & (1 << isa)))
        return -1;
    switch (isa) {
#ifdef FC_X86
    case FC_ISA_AVX512: { fc_dispatch d = FC_DISPATCH_INIT(avx512, fc_gemm_half_avx512); fc_kernels = d; break; }
    case FC_ISA_AVX2: { fc_dispatch d = FC_DISPATCH_INIT(avx2, fc_gemm_half_avx2); fc_kernels = d; break; }
#endif
    default: { fc_dispatch d = FC_DISPATCH_INIT(generic, NULL); fc_kernels = d; break; }
    }
    current_isa = isa;
    return 0;
}

int fc_get_isa(void) { return current_isa; }
