// conv.h: 2-D convolution (PyTorch's cross-correlation), the plain reference loops. A 1-D convolution is a
// 2-D one of height 1: (C, L) is (C, 1, L). conv_blocked.h has the register-blocked variant of the same maths.
#ifndef CNNC_KERNELS_CONV_H
#define CNNC_KERNELS_CONV_H

#include "common.h"

// The sizes of one convolution layer.
typedef struct {
    int C, H, W;     // input: channels, height, width
    int F, OH, OW;   // output: filters, height, width
    int KH, KW;      // kernel
    int SH, SW;      // stride
    int DH, DW;      // dilation
    int PH, PW;      // zero rows above, columns left (those below and right follow from OH, OW)
} Conv2d;

// The weight gradient keeps one partial sum per output column on the stack, in blocks of at most this many
// columns (8 KiB of doubles).
#define CONV2D_OW_BLOCK 1024

// inp is (N, C, H, W), weight is (F, C, KH, KW), bias is (F) or NULL -> out is (N, F, OH, OW):
//   out[n][f][oh][ow] = bias[f] + sum over c, p, q of weight[f][c][p][q] * inp[n][c][ih][iw]
//   with ih = oh*SH + p*DH - PH and iw = ow*SW + q*DW - PW; taps in the zero padding add nothing.
// Per output, the sum runs over c, then p, then q.
CNNC_KERNEL void conv2d_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                const real* restrict bias, int64_t N, Conv2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            real* out_nf = out + (n * g.F + f) * g.OH * g.OW;
            real b = (bias != NULL) ? bias[f] : 0;
            for (int o = 0; o < g.OH * g.OW; o++) {
                out_nf[o] = b;
            }
            for (int c = 0; c < g.C; c++) {
                const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
                const real* w_fc = weight + (f * g.C + c) * g.KH * g.KW;
                for (int p = 0; p < g.KH; p++) {
                    int ih0 = p * g.DH - g.PH;  // input row read by output row 0
                    Range rows = inside(ih0, g.SH, g.H, g.OH);
                    for (int q = 0; q < g.KW; q++) {
                        int iw0 = q * g.DW - g.PW;  // input column read by output column 0
                        Range cols = inside(iw0, g.SW, g.W, g.OW);
                        real w = w_fc[p * g.KW + q];
                        for (int oh = rows.begin; oh < rows.end; oh++) {
                            real* out_row = out_nf + oh * g.OW;
                            const real* inp_row = inp_nc + (oh * g.SH + ih0) * g.W;
                            for (int ow = cols.begin; ow < cols.end; ow++) {
                                out_row[ow] += w * inp_row[ow * g.SW + iw0];
                            }
                        }
                    }
                }
            }
        }
    }
}

// dout is (N, F, OH, OW), inp is (N, C, H, W), weight is (F, C, KH, KW); accumulates (+=) dinp (like inp;
// skipped if NULL), dweight (like weight) and dbias (F, or NULL) by the chain rule through conv2d_forward.
CNNC_KERNEL void conv2d_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                 const real* restrict dout, const real* restrict inp, const real* restrict weight,
                                 int64_t N, Conv2d g)
{
    if (dbias != NULL) {
        bias_grad(dbias, dout, N, g.F, g.OH * g.OW);  // dbias[f] += sum over n, oh, ow of dout[n][f][oh][ow]
    }

    // dweight[f][c][p][q] += sum over n, oh, ow of dout[n][f][oh][ow] * inp[n][c][ih][iw]
    // Each output column ow keeps its own partial sum over n and oh (an elementwise multiply-add the
    // compiler vectorises, where a dot product per row would end every short row in a horizontal add);
    // the partial sums are added up once per tap, in blocks of CONV2D_OW_BLOCK columns.
    for (int f = 0; f < g.F; f++) {
        for (int c = 0; c < g.C; c++) {
            real* dw_fc = dweight + (f * g.C + c) * g.KH * g.KW;
            for (int p = 0; p < g.KH; p++) {
                int ih0 = p * g.DH - g.PH;
                Range rows = inside(ih0, g.SH, g.H, g.OH);
                for (int q = 0; q < g.KW; q++) {
                    int iw0 = q * g.DW - g.PW;
                    Range cols = inside(iw0, g.SW, g.W, g.OW);
                    for (int ow0 = cols.begin; ow0 < cols.end; ow0 += CONV2D_OW_BLOCK) {
                        int width = cols.end - ow0 < CONV2D_OW_BLOCK ? cols.end - ow0 : CONV2D_OW_BLOCK;
                        real partial[CONV2D_OW_BLOCK];
                        for (int i = 0; i < width; i++) {
                            partial[i] = 0;
                        }
                        for (int64_t n = 0; n < N; n++) {
                            const real* dout_nf = dout + (n * g.F + f) * g.OH * g.OW;
                            const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
                            for (int oh = rows.begin; oh < rows.end; oh++) {
                                const real* dout_row = dout_nf + oh * g.OW + ow0;
                                const real* inp_row = inp_nc + (oh * g.SH + ih0) * g.W + ow0 * g.SW + iw0;
                                for (int i = 0; i < width; i++) {
                                    partial[i] += dout_row[i] * inp_row[i * g.SW];
                                }
                            }
                        }
                        real sum = 0;
                        for (int i = 0; i < width; i++) {
                            sum += partial[i];
                        }
                        dw_fc[p * g.KW + q] += sum;
                    }
                }
            }
        }
    }

    // dinp[n][c][ih][iw] += sum over f, p, q of weight[f][c][p][q] * dout[n][f][oh][ow]: the forward loops
    // with the roles of out and inp exchanged, scattering each output's gradient back along its taps.
    for (int64_t n = 0; n < (dinp != NULL ? N : 0); n++) {
        for (int f = 0; f < g.F; f++) {
            const real* dout_nf = dout + (n * g.F + f) * g.OH * g.OW;
            for (int c = 0; c < g.C; c++) {
                real* dinp_nc = dinp + (n * g.C + c) * g.H * g.W;
                const real* w_fc = weight + (f * g.C + c) * g.KH * g.KW;
                for (int p = 0; p < g.KH; p++) {
                    int ih0 = p * g.DH - g.PH;
                    Range rows = inside(ih0, g.SH, g.H, g.OH);
                    for (int q = 0; q < g.KW; q++) {
                        int iw0 = q * g.DW - g.PW;
                        Range cols = inside(iw0, g.SW, g.W, g.OW);
                        real w = w_fc[p * g.KW + q];
                        for (int oh = rows.begin; oh < rows.end; oh++) {
                            const real* dout_row = dout_nf + oh * g.OW;
                            real* dinp_row = dinp_nc + (oh * g.SH + ih0) * g.W;
                            for (int ow = cols.begin; ow < cols.end; ow++) {
                                dinp_row[ow * g.SW + iw0] += w * dout_row[ow];
                            }
                        }
                    }
                }
            }
        }
    }
}

#endif
