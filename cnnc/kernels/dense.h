// dense.h: the fully connected layer, the plain reference loops (dense_blocked.h has the blocked variant).
#ifndef CNNC_KERNELS_DENSE_H
#define CNNC_KERNELS_DENSE_H

#include "common.h"

typedef struct {
    int D, U;  // inputs, units
} Dense;

// inp is (N, D), weight is (U, D), bias is (U) or NULL -> out is (N, U):
//   out[n][u] = bias[u] + sum over d of weight[u][d] * inp[n][d]
CNNC_KERNEL void dense_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                               const real* restrict bias, int64_t N, Dense g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int u = 0; u < g.U; u++) {
            const real* inp_n = inp + n * g.D;
            const real* w_u = weight + (int64_t)u * g.D;
            real sum = (bias != NULL) ? bias[u] : 0;
            CNNC_SIMD_SUM
            for (int d = 0; d < g.D; d++) {
                sum += w_u[d] * inp_n[d];
            }
            out[n * g.U + u] = sum;
        }
    }
}

// dout is (N, U), inp is (N, D), weight is (U, D); accumulates (+=) dinp (N, D; skipped if NULL),
// dweight (U, D) and dbias (U, or NULL):
//   dinp[n][d] += sum over u of dout[n][u] * weight[u][d]
//   dweight[u][d] += sum over n of dout[n][u] * inp[n][d]
//   dbias[u] += sum over n of dout[n][u]
CNNC_KERNEL void dense_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                const real* restrict dout, const real* restrict inp, const real* restrict weight,
                                int64_t N, Dense g)
{
    for (int64_t n = 0; n < (dinp != NULL ? N : 0); n++) {
        real* dinp_n = dinp + n * g.D;
        for (int u = 0; u < g.U; u++) {
            real dout_nu = dout[n * g.U + u];
            const real* w_u = weight + (int64_t)u * g.D;
            for (int d = 0; d < g.D; d++) {
                dinp_n[d] += dout_nu * w_u[d];
            }
        }
    }
    for (int u = 0; u < g.U; u++) {
        real* dw_u = dweight + (int64_t)u * g.D;
        real bias_sum = 0;
        for (int64_t n = 0; n < N; n++) {
            real dout_nu = dout[n * g.U + u];
            const real* inp_n = inp + n * g.D;
            for (int d = 0; d < g.D; d++) {
                dw_u[d] += dout_nu * inp_n[d];
            }
            bias_sum += dout_nu;
        }
        if (dbias != NULL) {
            dbias[u] += bias_sum;
        }
    }
}

#endif
