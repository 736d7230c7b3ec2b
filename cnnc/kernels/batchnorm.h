// batchnorm.h: batch normalisation over the channels of (N, C, S) (S = H * W for [C, H, W], L for [C, L], 1 for
// the features of [D]), PyTorch's BatchNorm1d/2d: the plain reference loops.
//
//   out = (inp - mean[c]) * invstd[c] * weight[c] + bias[c],   invstd[c] = 1 / sqrt(var[c] + eps)
//
// Training mode normalises with the batch's statistics over the N * S values of each channel (the variance
// biased, / (N * S)) and updates the running statistics, running = (1 - momentum) * running + momentum *
// batch, the variance unbiased (/ (N * S - 1)). Inference mode normalises with the running statistics.
// Forward saves the mean and invstd it used (C each) for backward, which recomputes xhat from inp.
// Sums: forward's, each sample's row of S values in `real` (vectorised where OpenMP's simd is on), the rows
// in double. Backward's, position by position over blocks of BATCHNORM_ROWS samples in `real` (vectorised),
// each block's positions then added up once (runs of BATCHNORM_CHUNK positions, vectorised where OpenMP's
// simd is on), the blocks in double: one horizontal sum per block of rows, not one per row (a 7x7 row is 3
// vectors, and adding a vector's lanes in order costs more than those 3). Forward keeps its row sums: the
// loss is then exactly flat in a shift of its input (a bias before a training batch norm), which
// finite-difference checks of that bias rely on.
// Training forward reads the input twice (both sums, then the normalisation), backward reads inp and dout twice.
#ifndef CNNC_KERNELS_BATCHNORM_H
#define CNNC_KERNELS_BATCHNORM_H

#include "common.h"

// `#pragma omp simd reduction(+:sum, sum_xhat)` where OpenMP is on: backward's two sums in one pass; and
// forward's, `sum, sum_sq`.
#ifdef _OPENMP
#define CNNC_SIMD_SUM2 _Pragma("omp simd reduction(+:sum, sum_xhat)")
#define CNNC_SIMD_SUM_SQ _Pragma("omp simd reduction(+:sum, sum_sq)")
#else
#define CNNC_SIMD_SUM2
#define CNNC_SIMD_SUM_SQ
#endif

// An activation batch norm may apply as it writes its output (when that activation is the batch norm's only
// reader: the planner makes the activation a view of this output). Its derivative is read off the normalised
// value y (what forward computed before the activation, batchnorm_normalise): relu passes the gradient where
// y > 0, relu6 where 0 < y < 6, as relu_backward and relu6_backward do with their input. Backward recomputes y
// from inp, which it reads anyway, rather than reading forward's output as well.
enum { BATCHNORM_NONE = 0, BATCHNORM_RELU = 1, BATCHNORM_RELU6 = 2 };

// The normalised value of x: forward's and backward's one expression, so both round it alike.
static inline real batchnorm_normalise(real x, real mean, real scale, real shift)
{
    return (x - mean) * scale + shift;
}

// The gradient an activation act passes back, given the normalised value y and its output's gradient dout.
static inline real batchnorm_act_pass(real dout, real y, int act)
{
    int passes = act == BATCHNORM_RELU ? y > 0 : (y > 0 && y < 6);
    return passes ? dout : 0;
}

// Every pass goes channel by channel, and a channel's values are N rows of S reals, one per sample, C * S
// reals apart: each row starts on another page, where the hardware prefetchers lose track. The first pass of
// each channel asks for the rows this far ahead (in the pass's order: near a channel's end, the next
// channel's first rows) as it starts a row; the second pass finds them in cache.
#define BATCHNORM_PREFETCH_ROWS 4

// The row of `tensor` (N, C, S) BATCHNORM_PREFETCH_ROWS rows after row (n, c) in channel-by-channel order, or
// NULL past the last channel.
static inline const real* batchnorm_row_ahead(const real* tensor, int64_t n, int c, int64_t N, int C, int S)
{
    int64_t ahead = n + BATCHNORM_PREFETCH_ROWS;
    if (ahead >= N) {
        ahead -= N;
        c++;
    }
    return c < C && ahead < N ? tensor + (ahead * C + c) * S : NULL;
}

#define BATCHNORM_ROWS 64
#define BATCHNORM_CHUNK 256

// The sizes of one batch norm layer.
typedef struct {
    int C;  // channels (features of a flat input)
    int S;  // values per channel in one sample: H * W, L, or 1
} BatchNorm;

// inp is (N, C, S), weight and bias are (C) -> out is (N, C, S); saves mean and invstd (C).
// train: the batch's statistics, and running_mean, running_var (C) updated in place;
// otherwise the running statistics (read only).
// act: the activation applied in the normalising pass, BATCHNORM_NONE for none (see batchnorm_act_forward).
CNNC_KERNEL void batchnorm_act_forward(real* restrict out, real* restrict mean, real* restrict invstd,
                                       real* restrict running_mean, real* restrict running_var,
                                       const real* restrict inp, const real* restrict weight,
                                       const real* restrict bias, int64_t N, int train, double eps, double momentum,
                                       int act, BatchNorm g)
{
    for (int c = 0; c < g.C; c++) {
        double m, var;
        if (train) {
            // One pass for both sums, of the values shifted by the channel's first value `pivot` (so the
            // variance, sum of d^2 / count - mean(d)^2 with d = x - pivot, does not cancel as it would for
            // x far from 0): the rows in `real`, the batch in double.
            double count = (double)N * g.S;  // values per channel
            real pivot = inp[c * g.S];
            double total = 0, squares_about_shift = 0;
            for (int64_t n = 0; n < N; n++) {
                const real* inp_nc = inp + (n * g.C + c) * g.S;
                const real* ahead = batchnorm_row_ahead(inp, n, c, N, g.C, g.S);
                if (ahead != NULL) {
                    prefetch_reals(ahead, g.S);
                }
                real sum = 0, sum_sq = 0;
                CNNC_SIMD_SUM_SQ
                for (int s = 0; s < g.S; s++) {
                    real d = inp_nc[s] - pivot;
                    sum += d;
                    sum_sq += d * d;
                }
                total += sum;
                squares_about_shift += sum_sq;
            }
            double mean_shifted = total / count;
            m = pivot + mean_shifted;
            double squares = squares_about_shift - total * mean_shifted;  // sum of (x - mean)^2
            if (squares < 0) {
                squares = 0;  // rounding, for a channel of equal values
            }
            var = squares / count;
            running_mean[c] = (real)((1 - momentum) * running_mean[c] + momentum * m);
            running_var[c] = (real)((1 - momentum) * running_var[c] + momentum * squares / (count - 1));
        } else {
            m = running_mean[c];
            var = running_var[c];
        }
        mean[c] = (real)m;
        invstd[c] = (real)(1 / sqrt(var + eps));
        real mean_c = mean[c], scale = invstd[c] * weight[c], shift = bias[c];
        for (int64_t n = 0; n < N; n++) {
            const real* inp_nc = inp + (n * g.C + c) * g.S;
            real* out_nc = out + (n * g.C + c) * g.S;
            for (int s = 0; s < g.S; s++) {
                real y = batchnorm_normalise(inp_nc[s], mean_c, scale, shift);
                if (act == BATCHNORM_RELU || act == BATCHNORM_RELU6) {
                    y = y < 0 ? 0 : y;  // NaN kept, as relu_forward and relu6_forward do
                }
                if (act == BATCHNORM_RELU6) {
                    y = y > 6 ? 6 : y;
                }
                out_nc[s] = y;
            }
        }
    }
}

CNNC_KERNEL void batchnorm_forward(real* restrict out, real* restrict mean, real* restrict invstd,
                                   real* restrict running_mean, real* restrict running_var, const real* restrict inp,
                                   const real* restrict weight, const real* restrict bias, int64_t N, int train,
                                   double eps, double momentum, BatchNorm g)
{
    batchnorm_act_forward(out, mean, invstd, running_mean, running_var, inp, weight, bias, N, train, eps, momentum,
                          BATCHNORM_NONE, g);
}

// dout and inp are (N, C, S), mean, invstd, weight and bias (C) as forward used them; accumulates (+=)
// dweight and dbias (C) and writes (=) dinp (like inp; skipped if NULL). With xhat = (inp - mean) * invstd:
//   dweight[c] += sum of dout * xhat,  dbias[c] += sum of dout   (over n and s)
//   inference: dinp = dout * weight * invstd (the statistics are constants)
//   train: the statistics depend on every value of the channel (count = N * S of them):
//          dinp = weight * invstd * (dout - dbias_c / count - xhat * dweight_c / count)
//          with dbias_c, dweight_c this batch's sums above.
// With an activation act (not BATCHNORM_NONE), dout is the gradient of the activation's output, and the
// gradient of the normalised values y = xhat * weight + bias is dout where the activation passes it, else 0
// (bias is read only then: NULL with BATCHNORM_NONE).
CNNC_KERNEL void batchnorm_act_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                        const real* restrict dout, const real* restrict inp,
                                        const real* restrict mean, const real* restrict invstd,
                                        const real* restrict weight, const real* restrict bias, int64_t N, int train,
                                        int act, BatchNorm g)
{
    for (int c = 0; c < g.C; c++) {
        double sum_dout = 0, sum_dout_xhat = 0;
        real mean_c = mean[c], invstd_c = invstd[c];
        // forward's normalisation, for the activation's mask
        real y_scale = invstd_c * weight[c], y_shift = act != BATCHNORM_NONE ? bias[c] : 0;
        for (int64_t n0 = 0; n0 < N; n0 += BATCHNORM_ROWS) {
            int64_t n1 = n0 + BATCHNORM_ROWS < N ? n0 + BATCHNORM_ROWS : N;
            for (int s0 = 0; s0 < g.S; s0 += BATCHNORM_CHUNK) {
                int len = g.S - s0 < BATCHNORM_CHUNK ? g.S - s0 : BATCHNORM_CHUNK;
                real acc[BATCHNORM_CHUNK], acc_xhat[BATCHNORM_CHUNK];  // per position, over the block's rows
                for (int s = 0; s < len; s++) {
                    acc[s] = 0;
                    acc_xhat[s] = 0;
                }
                for (int64_t n = n0; n < n1; n++) {
                    const real* inp_nc = inp + (n * g.C + c) * g.S + s0;
                    const real* dout_nc = dout + (n * g.C + c) * g.S + s0;
                    const real* inp_ahead = batchnorm_row_ahead(inp, n, c, N, g.C, g.S);
                    if (inp_ahead != NULL) {
                        prefetch_reals(inp_ahead + s0, len);
                        prefetch_reals(dout + (inp_ahead - inp) + s0, len);
                    }
                    for (int s = 0; s < len; s++) {
                        real d = act == BATCHNORM_NONE ? dout_nc[s]
                                 : batchnorm_act_pass(dout_nc[s], batchnorm_normalise(inp_nc[s], mean_c, y_scale, y_shift), act);
                        acc[s] += d;
                        acc_xhat[s] += d * (inp_nc[s] - mean_c);  // times invstd once, below
                    }
                }
                real sum = 0, sum_xhat = 0;
                CNNC_SIMD_SUM2
                for (int s = 0; s < len; s++) {
                    sum += acc[s];
                    sum_xhat += acc_xhat[s];
                }
                sum_dout += sum;
                sum_dout_xhat += sum_xhat;
            }
        }
        sum_dout_xhat *= invstd_c;
        dweight[c] += (real)sum_dout_xhat;
        dbias[c] += (real)sum_dout;
        if (dinp == NULL) {
            continue;
        }
        real scale = weight[c] * invstd_c;
        double count = (double)N * g.S;
        real dout_mean = train ? (real)(sum_dout / count) : 0;
        real xhat_coeff = train ? (real)(sum_dout_xhat / count) : 0;
        // the same with the constants folded: dinp = scale * dout + x_coeff * (inp - mean) + offset
        real x_coeff = -scale * invstd_c * xhat_coeff, offset = -scale * dout_mean;
        for (int64_t n = 0; n < N; n++) {
            const real* inp_nc = inp + (n * g.C + c) * g.S;
            const real* dout_nc = dout + (n * g.C + c) * g.S;
            real* dinp_nc = dinp + (n * g.C + c) * g.S;
            for (int s = 0; s < g.S; s++) {
                real d = act == BATCHNORM_NONE ? dout_nc[s]
                         : batchnorm_act_pass(dout_nc[s], batchnorm_normalise(inp_nc[s], mean_c, y_scale, y_shift), act);
                dinp_nc[s] = scale * d + x_coeff * (inp_nc[s] - mean_c) + offset;
            }
        }
    }
}

CNNC_KERNEL void batchnorm_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                    const real* restrict dout, const real* restrict inp, const real* restrict mean,
                                    const real* restrict invstd, const real* restrict weight, int64_t N, int train,
                                    BatchNorm g)
{
    batchnorm_act_backward(dinp, dweight, dbias, dout, inp, mean, invstd, weight, NULL, N, train, BATCHNORM_NONE, g);
}

// Inference-mode batch norm folded into the convolution before it, whose weight is (F, per_filter) and bias
// (F) or NULL: wfold and bfold are that convolution's parameters with the normalisation applied, so that
// the convolution with them outputs the batch norm's output in one pass:
//   scale = bn_weight[f] * invstd[f],  wfold[f][k] = weight[f][k] * scale,
//   bfold[f] = (bias[f] - running_mean[f]) * scale + bn_bias[f]     (bias 0 if NULL)
// Saves mean and invstd (F) as batchnorm_forward does in inference mode.
CNNC_KERNEL void batchnorm_fold(real* restrict wfold, real* restrict bfold, real* restrict mean,
                                real* restrict invstd, const real* restrict weight, const real* restrict bias,
                                const real* restrict running_mean, const real* restrict running_var,
                                const real* restrict bn_weight, const real* restrict bn_bias, double eps,
                                int per_filter, BatchNorm g)
{
    for (int f = 0; f < g.C; f++) {
        mean[f] = running_mean[f];
        invstd[f] = (real)(1 / sqrt((double)running_var[f] + eps));
        real scale = bn_weight[f] * invstd[f];
        for (int k = 0; k < per_filter; k++) {
            wfold[f * per_filter + k] = weight[f * per_filter + k] * scale;
        }
        bfold[f] = ((bias != NULL ? bias[f] : 0) - mean[f]) * scale + bn_bias[f];
    }
}

#endif
