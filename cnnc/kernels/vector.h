// vector.h: the vectors the blocked kernels compute on, with GCC's vector extensions (gcc and clang):
// VL reals in VECTOR_BYTES, one AVX-512 register with -march=native on a CPU that has it, two AVX2 or
// four SSE registers elsewhere. The includer may define VECTOR_BYTES (a power of two) first.
#ifndef CNNC_KERNELS_VECTOR_H
#define CNNC_KERNELS_VECTOR_H

#include "common.h"

#ifndef VECTOR_BYTES
#define VECTOR_BYTES 64
#endif
#define VL ((int)(VECTOR_BYTES / sizeof(real)))
typedef real vec __attribute__((vector_size(VECTOR_BYTES)));

// A register tile holds at most this many vector accumulators (the planner picks tiles that fit).
#define MAX_TILE 16

// The first address at or after p on a vector boundary.
static inline real* vector_aligned(real* p)
{
    return (real*)(((uintptr_t)p + VECTOR_BYTES - 1) & ~(uintptr_t)(VECTOR_BYTES - 1));
}

#endif
