/* One ISA's instances of every per-ISA template, then the template
 * parameters cleared for the next ISA.  gemm.c defines FC_SFX, FC_TARGET,
 * FC_VBYTES, FC_MR, FC_NP, FC_GV, FC_KC, FC_PF (and FC_LOAD_ASM where a load
 * needs naming, FC_HALF where float16 loads convert in hardware, see
 * gemm_impl.h) and includes this once per ISA; no include
 * guard on purpose. */
#include "gemm_impl.h"
#include "activations_impl.h"
#include "gemm_nt_impl.h"
#undef FC_SFX
#undef FC_TARGET
#undef FC_VBYTES
#undef FC_MR
#undef FC_NP
#undef FC_GV
#undef FC_KC
#undef FC_PF
#undef FC_LOAD_ASM
#undef FC_HALF
