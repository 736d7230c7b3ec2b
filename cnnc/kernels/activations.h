// activations.h: the elementwise layers and fused activations, forward and backward.
//
// inp, out, dout and dinp are `count` elements (softmax: (N, K) rows). Forward may run in place
// (out == inp); backward writes (=) every element of dinp, so its caller does not zero it first.
// Backward reads what forward saved: relu, leaky_relu, relu6, silu, hardswish, selu and hardsigmoid the input,
// sigmoid, tanh, softmax, elu and log_softmax the output.
#ifndef CNNC_KERNELS_ACTIVATIONS_H
#define CNNC_KERNELS_ACTIVATIONS_H

#include "common.h"

// out = max(inp, 0), NaN kept as NaN (like PyTorch and np.maximum); the derivative at 0 is taken as 0, like PyTorch.
CNNC_KERNEL void relu_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = inp[i] < 0 ? 0 : inp[i];
    }
}

CNNC_KERNEL void relu_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = inp[i] > 0 ? dout[i] : 0;
    }
}

// out = inp where inp > 0, else slope * inp
CNNC_KERNEL void leaky_relu_forward(real* out, const real* inp, real slope, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = inp[i] > 0 ? inp[i] : slope * inp[i];
    }
}

CNNC_KERNEL void leaky_relu_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp,
                                     real slope, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = inp[i] > 0 ? dout[i] : slope * dout[i];
    }
}

// out = 1 / (1 + exp(-inp)), written so that exp never overflows; backward reads out: dinp = dout * out * (1 - out)
CNNC_KERNEL void sigmoid_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real e = exp(-fabs(inp[i]));
        out[i] = inp[i] >= 0 ? 1 / (1 + e) : e / (1 + e);
    }
}

CNNC_KERNEL void sigmoid_backward(real* restrict dinp, const real* restrict dout, const real* restrict out, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = dout[i] * out[i] * (1 - out[i]);
    }
}

// out = tanh(inp); backward reads out: dinp = dout * (1 - out^2)
CNNC_KERNEL void tanh_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = tanh(inp[i]);
    }
}

CNNC_KERNEL void tanh_backward(real* restrict dinp, const real* restrict dout, const real* restrict out, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = dout[i] * (1 - out[i] * out[i]);
    }
}

// inp and out are (N, K): out[n] = exp(inp[n] - max) / sum(exp(inp[n] - max)), row by row
CNNC_KERNEL void softmax_forward(real* out, const real* inp, int64_t N, int K)
{
    for (int64_t n = 0; n < N; n++) {
        const real* inp_n = inp + n * K;
        real* out_n = out + n * K;
        ShiftedExpSum row = shifted_exp_sum(out_n, inp_n, K);
        for (int k = 0; k < K; k++) {
            out_n[k] /= row.sum;
        }
    }
}

// dinp[n][k] = out[n][k] * (dout[n][k] - sum over j of dout[n][j] * out[n][j]): the softmax Jacobian times dout
CNNC_KERNEL void softmax_backward(real* restrict dinp, const real* restrict dout, const real* restrict out, int64_t N, int K)
{
    for (int64_t n = 0; n < N; n++) {
        const real* dout_n = dout + n * K;
        const real* out_n = out + n * K;
        real dot = 0;
        for (int k = 0; k < K; k++) {
            dot += dout_n[k] * out_n[k];
        }
        for (int k = 0; k < K; k++) {
            dinp[n * K + k] = out_n[k] * (dout_n[k] - dot);
        }
    }
}

// out = min(max(inp, 0), 6); the derivative is 1 strictly inside (0, 6), 0 elsewhere (PyTorch's hardtanh)
CNNC_KERNEL void relu6_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = inp[i] < 0 ? 0 : (inp[i] > 6 ? 6 : inp[i]);
    }
}

CNNC_KERNEL void relu6_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = (inp[i] > 0 && inp[i] < 6) ? dout[i] : 0;
    }
}

// out = inp * sigmoid(inp); backward reads inp: dinp = dout * s * (1 + inp * (1 - s)), s = sigmoid(inp)
CNNC_KERNEL void silu_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real e = exp(-fabs(inp[i]));
        real s = inp[i] >= 0 ? 1 / (1 + e) : e / (1 + e);
        out[i] = inp[i] * s;
    }
}

CNNC_KERNEL void silu_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real e = exp(-fabs(inp[i]));
        real s = inp[i] >= 0 ? 1 / (1 + e) : e / (1 + e);
        dinp[i] = dout[i] * s * (1 + inp[i] * (1 - s));
    }
}

// out = inp * relu6(inp + 3) / 6; backward reads inp: 0 below -3, inp / 3 + 1/2 on [-3, 3], 1 above 3
// (PyTorch's choice at the kinks)
CNNC_KERNEL void hardswish_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real t = inp[i] + 3;
        t = t < 0 ? 0 : (t > 6 ? 6 : t);
        out[i] = inp[i] * t / 6;
    }
}

CNNC_KERNEL void hardswish_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp,
                                    int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real slope = inp[i] < -3 ? 0 : (inp[i] <= 3 ? inp[i] / 3 + (real)0.5 : 1);
        dinp[i] = dout[i] * slope;
    }
}

// out = inp above 0, e^inp - 1 at and below (alpha 1, PyTorch's default); backward reads out (out > 0 exactly
// where inp > 0): dinp = dout above 0, dout * (out + 1) = dout * e^inp at and below
CNNC_KERNEL void elu_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = inp[i] > 0 ? inp[i] : expm1(inp[i] < 0 ? inp[i] : 0);
    }
}

CNNC_KERNEL void elu_backward(real* restrict dinp, const real* restrict dout, const real* restrict out, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = out[i] > 0 ? dout[i] : dout[i] * (out[i] + 1);
    }
}

// SELU's constants (PyTorch's): out = SCALE * (inp above 0, ALPHA * (e^inp - 1) at and below)
#define CNNC_SELU_ALPHA 1.6732632423543772848170429916717
#define CNNC_SELU_SCALE 1.0507009873554804934193349852946

// backward reads inp: dinp = dout * SCALE above 0, dout * SCALE * ALPHA * e^inp at and below
CNNC_KERNEL void selu_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        out[i] = (real)CNNC_SELU_SCALE * (inp[i] > 0 ? inp[i] : (real)CNNC_SELU_ALPHA * expm1(inp[i] < 0 ? inp[i] : 0));
    }
}

CNNC_KERNEL void selu_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = dout[i] * (real)CNNC_SELU_SCALE * (inp[i] > 0 ? 1 : (real)CNNC_SELU_ALPHA * exp(inp[i] < 0 ? inp[i] : 0));
    }
}

// out = relu6(inp + 3) / 6 = clip(inp / 6 + 1/2, 0, 1) (PyTorch's); backward reads inp: dinp = dout / 6 strictly
// between -3 and 3, 0 elsewhere (0 at both kinks, like PyTorch)
CNNC_KERNEL void hardsigmoid_forward(real* out, const real* inp, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        real t = inp[i] / 6 + (real)0.5;
        out[i] = t < 0 ? 0 : (t > 1 ? 1 : t);
    }
}

CNNC_KERNEL void hardsigmoid_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp,
                                      int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = (inp[i] > -3 && inp[i] < 3) ? dout[i] / 6 : 0;
    }
}

// inp and out are (N, K): out[n] = inp[n] - max - log(sum(exp(inp[n] - max))), row by row
CNNC_KERNEL void log_softmax_forward(real* out, const real* inp, int64_t N, int K)
{
    for (int64_t n = 0; n < N; n++) {
        const real* inp_n = inp + n * K;
        real* out_n = out + n * K;
        ShiftedExpSum row = shifted_exp_sum(NULL, inp_n, K);
        real log_sum = log(row.sum);
        for (int k = 0; k < K; k++) {
            out_n[k] = inp_n[k] - row.max - log_sum;
        }
    }
}

// backward reads out: dinp[n][k] = dout[n][k] - exp(out[n][k]) * sum over j of dout[n][j] (softmax = exp(out))
CNNC_KERNEL void log_softmax_backward(real* restrict dinp, const real* restrict dout, const real* restrict out,
                                      int64_t N, int K)
{
    for (int64_t n = 0; n < N; n++) {
        const real* dout_n = dout + n * K;
        const real* out_n = out + n * K;
        real sum = 0;
        for (int k = 0; k < K; k++) {
            sum += dout_n[k];
        }
        for (int k = 0; k < K; k++) {
            dinp[n * K + k] = dout_n[k] - exp(out_n[k]) * sum;
        }
    }
}

// Inverted dropout: mask holds 0 or 1/(1 - rate) per element, drawn by the caller. out = inp * mask;
// the mask is kept in saved_mask for backward: dinp = dout * saved_mask
CNNC_KERNEL void dropout_forward(real* restrict out, real* restrict saved_mask, const real* restrict inp,
                                 const real* restrict mask, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        saved_mask[i] = mask[i];
        out[i] = inp[i] * mask[i];
    }
}

CNNC_KERNEL void dropout_backward(real* restrict dinp, const real* restrict dout, const real* restrict saved_mask,
                                  int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = dout[i] * saved_mask[i];
    }
}

// A layer that passes its input through (dropout outside training): out = inp, dinp = dout
CNNC_KERNEL void identity_forward(real* restrict out, const real* restrict inp, int64_t count)
{
    memcpy(out, inp, (size_t)count * sizeof(real));
}

CNNC_KERNEL void identity_backward(real* restrict dinp, const real* restrict dout, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        dinp[i] = dout[i];
    }
}

#endif
