/* CPU feature detection and the instruction-set choice.
 *
 * Every hot routine in csrc/ exists once per ISA (generic C, AVX2+FMA+F16C,
 * AVX-512F), compiled from one template with GCC/clang target attributes,
 * so the library is built without -march flags and still runs the widest
 * path the machine has.  fc_isa_available() says what the CPU (and OS)
 * supports; fc_set_isa() installs one path into the dispatch table that the
 * kernels call through.  The Python layer picks the default and honours
 * FASTCELLS_ISA.
 */
#ifndef FASTCELLS_CPU_H
#define FASTCELLS_CPU_H

enum fc_isa { FC_ISA_GENERIC = 0, FC_ISA_AVX2 = 1, FC_ISA_AVX512 = 2, FC_ISA_COUNT = 3 };

/* Bit (1 << isa) is set for every ISA this machine can run. */
int fc_isa_available(void);
/* Install an ISA; returns 0, or -1 if the machine cannot run it (nothing changes). */
int fc_set_isa(int isa);
/* The ISA in use. */
int fc_get_isa(void);
const char *fc_isa_name(int isa);

#endif
