// optim.h: optimiser steps over a whole parameter block (torch.optim's update rules).
#ifndef CNNC_KERNELS_OPTIM_H
#define CNNC_KERNELS_OPTIM_H

#include "common.h"

// SGD with momentum and L2 weight decay (dampening 0): g = grad + weight_decay * param;
// buf = g on the first step, else momentum * buf + g; param -= lr * (nesterov ? g + momentum * buf : buf).
// momentum == 0 skips the buffer (it may be NULL). param, momentum_buffer and grad are (count).
CNNC_KERNEL void sgd_update(real* restrict param, real* restrict momentum_buffer, const real* restrict grad,
                            int64_t count, double lr, double momentum, double weight_decay, int nesterov,
                            int first_step)
{
    for (int64_t i = 0; i < count; i++) {
        real g = grad[i] + (real)weight_decay * param[i];
        if (momentum != 0) {
            real buf = first_step ? g : (real)momentum * momentum_buffer[i] + g;
            momentum_buffer[i] = buf;
            g = nesterov ? g + (real)momentum * buf : buf;
        }
        param[i] -= (real)lr * g;
    }
}

// Adam (no amsgrad), step t counting from 1: g = grad + weight_decay * param;
// m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
// param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
CNNC_KERNEL void adam_update(real* restrict param, real* restrict m, real* restrict v, const real* restrict grad,
                             int64_t count, double lr, double beta1, double beta2, double eps, double weight_decay,
                             int64_t t)
{
    // The scalars are worked out in double and rounded once, as NumPy does with Python floats.
    real step_size = (real)(lr / (1 - pow(beta1, (double)t)));
    real v_scale = (real)sqrt(1 - pow(beta2, (double)t));
    for (int64_t i = 0; i < count; i++) {
        real g = grad[i] + (real)weight_decay * param[i];
        m[i] = (real)beta1 * m[i] + (real)(1 - beta1) * g;
        v[i] = (real)beta2 * v[i] + (real)(1 - beta2) * g * g;
        param[i] -= step_size * (m[i] / (sqrt(v[i]) / v_scale + (real)eps));
    }
}

#endif
