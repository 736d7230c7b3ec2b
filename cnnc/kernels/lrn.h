// lrn.h: local response normalisation across channels (PyTorch's LocalResponseNorm), the plain reference
// loops. A sample is (C, S): C channels of S positions each (S = H*W, L, or 1).
#ifndef CNNC_KERNELS_LRN_H
#define CNNC_KERNELS_LRN_H

#include "common.h"

typedef struct {
    int C, S;     // channels, positions per channel
    int SIZE;     // the window: channels c - SIZE/2 ... c + (SIZE-1)/2 (those outside 0 ... C-1 count as 0)
} Lrn;

// inp is (N, C, S) -> out and d are (N, C, S):
//   d[n][c][s] = k + alpha/SIZE * sum of inp[n][j][s]^2 over the window's channels j;  out = inp * d^-beta
// d (the divisor base) is saved for backward.
CNNC_KERNEL void lrn_forward(real* restrict out, real* restrict d, const real* restrict inp, real alpha, real beta,
                             real k, int64_t N, Lrn g)
{
    const int before = g.SIZE / 2, after = (g.SIZE - 1) / 2;
    for (int64_t n = 0; n < N; n++) {
        const real* inp_n = inp + n * g.C * g.S;
        for (int c = 0; c < g.C; c++) {
            int lo = c - before > 0 ? c - before : 0, hi = c + after < g.C - 1 ? c + after : g.C - 1;
            real* d_nc = d + (n * g.C + c) * g.S;
            real* out_nc = out + (n * g.C + c) * g.S;
            for (int s = 0; s < g.S; s++) {
                real sum = 0;
                for (int j = lo; j <= hi; j++) {
                    sum += inp_n[j * g.S + s] * inp_n[j * g.S + s];
                }
                d_nc[s] = k + alpha / g.SIZE * sum;
                out_nc[s] = inp_n[c * g.S + s] * pow(d_nc[s], -beta);
            }
        }
    }
}

// dout, inp and d are (N, C, S); writes (=) all of dinp (N, C, S). d_j depends on inp_c for every channel j
// whose window holds c (j in c - (SIZE-1)/2 ... c + SIZE/2), through d(d_j)/d(inp_c) = 2 alpha/SIZE inp_c:
//   dinp_c = dout_c d_c^-beta - 2 beta alpha/SIZE inp_c * sum over those j of dout_j inp_j d_j^(-beta-1)
CNNC_KERNEL void lrn_backward(real* restrict dinp, const real* restrict dout, const real* restrict inp,
                              const real* restrict d, real alpha, real beta, int64_t N, Lrn g)
{
    const int before = (g.SIZE - 1) / 2, after = g.SIZE / 2;  // the window read backwards
    for (int64_t n = 0; n < N; n++) {
        const real* inp_n = inp + n * g.C * g.S;
        const real* dout_n = dout + n * g.C * g.S;
        const real* d_n = d + n * g.C * g.S;
        for (int c = 0; c < g.C; c++) {
            int lo = c - before > 0 ? c - before : 0, hi = c + after < g.C - 1 ? c + after : g.C - 1;
            for (int s = 0; s < g.S; s++) {
                real sum = 0;
                for (int j = lo; j <= hi; j++) {
                    sum += dout_n[j * g.S + s] * inp_n[j * g.S + s] * pow(d_n[j * g.S + s], -beta - 1);
                }
                int at = c * g.S + s;
                dinp[n * g.C * g.S + at] = dout_n[at] * pow(d_n[at], -beta)
                                           - 2 * beta * alpha / g.SIZE * inp_n[at] * sum;
            }
        }
    }
}

#endif
