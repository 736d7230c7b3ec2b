// common.h: what every cnnc kernel header needs.
//
// The kernel library: one header per layer kind, each layer a pair of functions
// KIND_forward(out..., inp..., params..., N, geometry) and KIND_backward(dinp, dparams..., dout, saved..., N,
// geometry), like llm.c's train_gpt2.c: outputs first, then inputs, then the batch size N and a small struct
// of sizes. Backward accumulates (+=) into parameter gradients (the caller zeroes them once per step); each
// function's comment says whether it accumulates into or writes (=) the input gradient.
//
// Before including a kernel header, define `real` (typedef float real; or double). Everything is
// `CNNC_KERNEL` (static inline unless the includer says otherwise): cnnc's C backend defines it as
// always-inline and calls every kernel with a geometry of constants, so the compiler specialises each call
// site (every loop bound known, tiles unrolled); the standalone export calls the same plain C99 kernels.
//
// Indices: a sample's tensors hold fewer than 2^31 elements (cnnc checks this when it plans a network), so
// offsets inside one sample are `int`; anything multiplied by the batch index n is 64-bit.
#ifndef CNNC_KERNELS_COMMON_H
#define CNNC_KERNELS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#ifndef CNNC_KERNEL
#define CNNC_KERNEL static inline
#endif

// `#pragma omp simd reduction(+:sum)` where OpenMP is on (the loop's accumulator must be named sum), nothing
// elsewhere: a plain C99 build sees no unknown pragma.
#ifdef _OPENMP
#define CNNC_SIMD_SUM _Pragma("omp simd reduction(+:sum)")
#else
#define CNNC_SIMD_SUM
#endif

// Hint (GCC and clang; nothing elsewhere) that the `count` reals from p will be read soon: for a kernel that
// jumps between rows of far-apart pages, where the hardware prefetchers lose track.
static inline void prefetch_reals(const real* p, int count)
{
#if defined(__GNUC__)
    for (int i = 0; i < count; i += 64 / (int)sizeof(real)) {
        __builtin_prefetch(p + i);
    }
    __builtin_prefetch(p + count - 1);
#else
    (void)p;
    (void)count;
#endif
}

// The output positions o in [begin, end) whose input position o*stride + offset lies in [0, size),
// clipped to [0, count): the outputs for which a kernel tap lands inside the input, not in the padding.
typedef struct {
    int begin, end;
} Range;

static inline Range inside(int offset, int stride, int size, int count)
{
    Range r;
    r.begin = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    r.end = offset > size - 1 ? 0 : (size - 1 - offset) / stride + 1;
    r.end = r.end < count ? r.end : count;
    return r;
}

// The input positions [begin, end) of a pooling window [start, start + length) clipped to [0, size).
static inline Range window(int start, int length, int size)
{
    Range r;
    r.begin = start > 0 ? start : 0;
    r.end = start + length < size ? start + length : size;
    return r;
}

// dout is (N, F, S), S positions per filter (OH * OW for a convolution); accumulates (+=) dbias (F):
//   dbias[f] += sum over n and s of dout[n][f][s]
// The bias gradient of conv.h's, conv_transpose.h's and conv_blocked.h's backward (in `real`, which the
// includer defines before any kernel header). A CNNC_KERNEL, so the backend inlines it like its callers.
CNNC_KERNEL void bias_grad(real* restrict dbias, const real* restrict dout, int64_t N, int F, int S)
{
    for (int f = 0; f < F; f++) {
        real sum = 0;
        for (int64_t n = 0; n < N; n++) {
            const real* dout_nf = dout + (n * F + f) * S;
            CNNC_SIMD_SUM
            for (int s = 0; s < S; s++) {
                sum += dout_nf[s];
            }
        }
        dbias[f] += sum;
    }
}

// The pieces of a row's softmax, shifted by the row's maximum so that no exp overflows.
typedef struct {
    real max;  // the largest entry of the row
    real sum;  // sum over k of exp(row[k] - max), at least 1
} ShiftedExpSum;

// row is (K) -> its maximum and sum over k of exp(row[k] - max); also writes exp(row[k] - max) to exps (K)
// unless exps is NULL (exps may be row itself). Then softmax(row) = exps / sum and
// log_softmax(row) = row - max - log(sum): activations.h's softmax and log_softmax, and loss.h's cross-entropy.
CNNC_KERNEL ShiftedExpSum shifted_exp_sum(real* exps, const real* row, int K)
{
    ShiftedExpSum s;
    s.max = row[0];
    for (int k = 1; k < K; k++) {
        s.max = row[k] > s.max ? row[k] : s.max;
    }
    s.sum = 0;
    for (int k = 0; k < K; k++) {
        real e = exp(row[k] - s.max);
        if (exps != NULL) {
            exps[k] = e;
        }
        s.sum += e;
    }
    return s;
}

#endif
