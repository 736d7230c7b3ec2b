// loss.h: the losses (mean over the batch, and the gradient with respect to the model's output) and the
// input check.
#ifndef CNNC_KERNELS_LOSS_H
#define CNNC_KERNELS_LOSS_H

#include "common.h"

// logits is (N, K), labels is (N) with values in [0, K). Returns the mean cross-entropy of
// softmax(logits[n]) against labels[n] and writes dlogits = (softmax(logits) - onehot(labels)) / N.
CNNC_KERNEL double cross_entropy_forward_backward(real* restrict dlogits, const real* restrict logits,
                                                  const int64_t* restrict labels, int64_t N, int K)
{
    double total = 0;
    for (int64_t n = 0; n < N; n++) {
        const real* logits_n = logits + n * K;
        real* dlogits_n = dlogits + n * K;
        ShiftedExpSum row = shifted_exp_sum(NULL, logits_n, K);
        real log_sum = log(row.sum);
        for (int k = 0; k < K; k++) {
            dlogits_n[k] = exp(logits_n[k] - row.max - log_sum) / N;  // softmax / N
        }
        dlogits_n[labels[n]] -= (real)1 / N;
        total -= logits_n[labels[n]] - row.max - log_sum;
    }
    return total / N;
}

// y is (N, K) log-probabilities (a log_softmax's output), labels is (N) with values in [0, K). Returns the mean
// negative log-likelihood -mean(y[n][labels[n]]) (PyTorch's nll_loss) and writes dy: -1/N at each sample's
// label, 0 elsewhere.
CNNC_KERNEL double nll_forward_backward(real* restrict dy, const real* restrict y, const int64_t* restrict labels,
                                        int64_t N, int K)
{
    double total = 0;
    for (int64_t n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) {
            dy[n * K + k] = 0;
        }
        dy[n * K + labels[n]] = (real)(-1.0 / N);
        total -= y[n * K + labels[n]];
    }
    return total / N;
}

// y and target are (count): returns mean((y - target)^2) and writes dy = 2 (y - target) / count.
CNNC_KERNEL double mse_forward_backward(real* restrict dy, const real* restrict y, const real* restrict target,
                                        int64_t count)
{
    double total = 0;
    for (int64_t i = 0; i < count; i++) {
        real diff = y[i] - target[i];
        total += (double)diff * diff;
        dy[i] = 2 * diff / count;
    }
    return total / count;
}

// 1 if every one of x[0..count) is finite, else 0: x - x is 0 for a finite x and NaN for an infinity
// or a NaN (which compares unequal to 0). No early exit, so the loop vectorises.
CNNC_KERNEL int finite_check(const real* restrict x, int64_t count)
{
    int bad = 0;
    for (int64_t i = 0; i < count; i++) {
        bad |= (x[i] - x[i]) != 0;
    }
    return !bad;
}

#endif
