// conv_transpose.h: transposed 2-D convolution (PyTorch's ConvTranspose2d, groups included), the plain
// reference loops. A 1-D one is a 2-D one of height 1: (C, L) is (C, 1, L). The output padding needs no
// field: it only makes OH and OW larger, and the extra rows and columns get the bias alone.
//
// What this file deliberately is not: fast. Each input value scatters its kernel into the output, the
// inner loop running along an input row.
#ifndef CNNC_KERNELS_CONV_TRANSPOSE_H
#define CNNC_KERNELS_CONV_TRANSPOSE_H

#include "common.h"

// The sizes of one transposed convolution layer.
typedef struct {
    int C, H, W;     // input: channels, height, width
    int F, OH, OW;   // output: filters, height, width
    int KH, KW;      // kernel
    int SH, SW;      // stride
    int DH, DW;      // dilation
    int PH, PW;      // rows above and columns left cropped from the full output
    int G;           // groups: channels g*C/G ... spread over filters g*F/G ... only
} ConvTranspose2d;

// inp is (N, C, H, W), weight is (C, F/G, KH, KW), bias is (F) or NULL -> out is (N, F, OH, OW):
//   out[n][f][oh][ow] = bias[f] + sum of inp[n][c][ih][iw] * weight[c][f - g*F/G][p][q]
//   over the channels c of f's group g and every ih, iw, p, q with oh = ih*SH + p*DH - PH, ow = iw*SW + q*DW - PW
//   (taps landing outside the output, in the cropped padding, add nothing).
CNNC_KERNEL void conv_transpose2d_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                          const real* restrict bias, int64_t N, ConvTranspose2d g)
{
    const int Cg = g.C / g.G, Fg = g.F / g.G;
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            real* out_nf = out + (n * g.F + f) * g.OH * g.OW;
            real b = (bias != NULL) ? bias[f] : 0;
            for (int o = 0; o < g.OH * g.OW; o++) {
                out_nf[o] = b;
            }
        }
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
            int group = c / Cg;
            for (int fl = 0; fl < Fg; fl++) {
                real* out_nf = out + (n * g.F + group * Fg + fl) * g.OH * g.OW;
                const real* w_cf = weight + (c * Fg + fl) * g.KH * g.KW;
                for (int p = 0; p < g.KH; p++) {
                    int oh0 = p * g.DH - g.PH;  // output row written by input row 0
                    Range rows = inside(oh0, g.SH, g.OH, g.H);
                    for (int q = 0; q < g.KW; q++) {
                        int ow0 = q * g.DW - g.PW;  // output column written by input column 0
                        Range cols = inside(ow0, g.SW, g.OW, g.W);
                        real w = w_cf[p * g.KW + q];
                        for (int ih = rows.begin; ih < rows.end; ih++) {
                            const real* inp_row = inp_nc + ih * g.W;
                            real* out_row = out_nf + (ih * g.SH + oh0) * g.OW;
                            for (int iw = cols.begin; iw < cols.end; iw++) {
                                out_row[iw * g.SW + ow0] += w * inp_row[iw];
                            }
                        }
                    }
                }
            }
        }
    }
}

// dout is (N, F, OH, OW), inp is (N, C, H, W), weight is (C, F/G, KH, KW); accumulates (+=) dinp (like inp;
// skipped if NULL), dweight (like weight) and dbias (F, or NULL) by the chain rule through the forward:
//   dinp[n][c][ih][iw] += sum over f of c's group, p, q of weight[c][f - g*F/G][p][q] * dout[n][f][oh][ow]
//   dweight[c][fl][p][q] += sum over n, ih, iw of inp[n][c][ih][iw] * dout[n][g*F/G + fl][oh][ow]
//   with oh = ih*SH + p*DH - PH and ow = iw*SW + q*DW - PW inside the output.
CNNC_KERNEL void conv_transpose2d_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                           const real* restrict dout, const real* restrict inp,
                                           const real* restrict weight, int64_t N, ConvTranspose2d g)
{
    const int Cg = g.C / g.G, Fg = g.F / g.G;
    if (dbias != NULL) {
        bias_grad(dbias, dout, N, g.F, g.OH * g.OW);  // dbias[f] += sum over n, oh, ow of dout[n][f][oh][ow]
    }
    for (int c = 0; c < g.C; c++) {
        int group = c / Cg;
        for (int fl = 0; fl < Fg; fl++) {
            int f = group * Fg + fl;
            real* dw_cf = dweight + (c * Fg + fl) * g.KH * g.KW;
            const real* w_cf = weight + (c * Fg + fl) * g.KH * g.KW;
            for (int p = 0; p < g.KH; p++) {
                int oh0 = p * g.DH - g.PH;
                Range rows = inside(oh0, g.SH, g.OH, g.H);
                for (int q = 0; q < g.KW; q++) {
                    int ow0 = q * g.DW - g.PW;
                    Range cols = inside(ow0, g.SW, g.OW, g.W);
                    real w = w_cf[p * g.KW + q];
                    real sum = 0;
                    for (int64_t n = 0; n < N; n++) {
                        const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
                        real* dinp_nc = dinp != NULL ? dinp + (n * g.C + c) * g.H * g.W : NULL;
                        const real* dout_nf = dout + (n * g.F + f) * g.OH * g.OW;
                        for (int ih = rows.begin; ih < rows.end; ih++) {
                            const real* dout_row = dout_nf + (ih * g.SH + oh0) * g.OW;
                            const real* inp_row = inp_nc + ih * g.W;
                            for (int iw = cols.begin; iw < cols.end; iw++) {
                                sum += inp_row[iw] * dout_row[iw * g.SW + ow0];
                            }
                            if (dinp_nc != NULL) {
                                real* dinp_row = dinp_nc + ih * g.W;
                                for (int iw = cols.begin; iw < cols.end; iw++) {
                                    dinp_row[iw] += w * dout_row[iw * g.SW + ow0];
                                }
                            }
                        }
                    }
                    dw_cf[p * g.KW + q] += sum;
                }
            }
        }
    }
}

#endif
