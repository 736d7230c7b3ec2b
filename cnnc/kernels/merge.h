// merge.h: the layers that read two or more tensors (add, concat), and the gradient accumulation a tensor
// read by several layers needs. Plain reference loops.
//
// Every tensor is (N, size) per sample, row-major: concatenation on channels of (C, H, W) or (C, L), or on
// the features of (D), is a concatenation of each sample's flat rows, so one kernel serves every rank.
#ifndef CNNC_KERNELS_MERGE_H
#define CNNC_KERNELS_MERGE_H

#include "common.h"

// a, b and out are `count` elements: out = a + b (add's first two operands)
CNNC_KERNEL void add_forward(real* restrict out, const real* restrict a, const real* restrict b, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = a[i] + b[i];
    }
}

// An add of two operands whose only reader is a relu, in one pass: out = max(a + b, 0) (NaN kept, as
// relu_forward does). The sum itself is not kept: relu's derivative is as well read off its output.
CNNC_KERNEL void add_relu_forward(real* restrict out, const real* restrict a, const real* restrict b, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real sum = a[i] + b[i];
        out[i] = sum < 0 ? 0 : sum;
    }
}

// add_relu_forward's backward for one operand, dout being the gradient of its output out: dinp = dout where
// out > 0, else 0 (relu_backward's derivative: 0 at 0). Writes (=) dinp; _accumulate adds (+=) into it.
CNNC_KERNEL void add_relu_backward(real* restrict dinp, const real* restrict dout, const real* restrict out,
                                   int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = out[i] > 0 ? dout[i] : 0;
    }
}

CNNC_KERNEL void add_relu_backward_accumulate(real* restrict dinp, const real* restrict dout, const real* restrict out,
                                              int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] += out[i] > 0 ? dout[i] : 0;
    }
}

// out += inp, `count` elements: add's further operands, and a gradient contribution added to a tensor's
// gradient (add's backward for a tensor that already has one, and any layer's written into scratch)
CNNC_KERNEL void accumulate(real* restrict out, const real* restrict inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] += inp[i];
    }
}

// add's backward for one operand: every operand's gradient is dout. Writes (=) dinp.
CNNC_KERNEL void add_backward(real* restrict dinp, const real* restrict dout, int64_t count)
{
    memcpy(dinp, dout, (size_t)count * sizeof(real));
}

// Where one operand sits in a concatenation: the output's per-sample size, the operand's offset in it and
// the operand's per-sample size.
typedef struct {
    int OUT;
    int OFFSET;
    int SIZE;
} Concat;

// inp is (N, SIZE) -> out[n][OFFSET : OFFSET + SIZE] of out (N, OUT): one operand's part of the output
CNNC_KERNEL void concat_forward(real* restrict out, const real* restrict inp, int64_t N, Concat g)
{
    for (int64_t n = 0; n < N; n++) {
        memcpy(out + n * g.OUT + g.OFFSET, inp + n * g.SIZE, (size_t)g.SIZE * sizeof(real));
    }
}

// dout is (N, OUT) -> dinp (N, SIZE) = dout[n][OFFSET : OFFSET + SIZE]. Writes (=) dinp.
CNNC_KERNEL void concat_backward(real* restrict dinp, const real* restrict dout, int64_t N, Concat g)
{
    for (int64_t n = 0; n < N; n++) {
        memcpy(dinp + n * g.SIZE, dout + n * g.OUT + g.OFFSET, (size_t)g.SIZE * sizeof(real));
    }
}

// The same, accumulating (+=) into dinp: for an operand whose tensor already has a gradient.
CNNC_KERNEL void concat_backward_accumulate(real* restrict dinp, const real* restrict dout, int64_t N, Concat g)
{
    for (int64_t n = 0; n < N; n++) {
        accumulate(dinp + n * g.SIZE, dout + n * g.OUT + g.OFFSET, g.SIZE);
    }
}

#endif
