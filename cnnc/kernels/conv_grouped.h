// conv_grouped.h: grouped 2-D convolution (PyTorch's groups=), the plain reference loops. The C input channels
// and F filters are split into G groups; filter f reads only the C/G channels of its group f / (F/G).
// Depthwise convolution is G = C. A 1-D convolution is a 2-D one of height 1. The maths per group is
// conv.h's conv2d_forward / conv2d_backward.
#ifndef CNNC_KERNELS_CONV_GROUPED_H
#define CNNC_KERNELS_CONV_GROUPED_H

#include "conv.h"

// The sizes of one grouped convolution: conv.C is every input channel, conv.F every filter.
typedef struct {
    Conv2d conv;
    int G;  // groups: G divides C and F
} Conv2dGrouped;

// inp is (N, C, H, W), weight is (F, C/G, KH, KW), bias is (F) or NULL -> out is (N, F, OH, OW):
//   out[n][f][oh][ow] = bias[f] + sum over j < C/G, p, q of weight[f][j][p][q] * inp[n][g*C/G + j][ih][iw]
//   with g = f / (F/G), ih = oh*SH + p*DH - PH and iw = ow*SW + q*DW - PW; taps in the padding add nothing.
CNNC_KERNEL void conv2d_grouped_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                        const real* restrict bias, int64_t N, Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int CG = g.C / geometry.G, FG = g.F / geometry.G;  // channels and filters per group
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            real* out_nf = out + (n * g.F + f) * g.OH * g.OW;
            real b = (bias != NULL) ? bias[f] : 0;
            for (int o = 0; o < g.OH * g.OW; o++) {
                out_nf[o] = b;
            }
            for (int j = 0; j < CG; j++) {
                int c = f / FG * CG + j;
                const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
                const real* w_fj = weight + (f * CG + j) * g.KH * g.KW;
                for (int p = 0; p < g.KH; p++) {
                    int ih0 = p * g.DH - g.PH;
                    Range rows = inside(ih0, g.SH, g.H, g.OH);
                    for (int q = 0; q < g.KW; q++) {
                        int iw0 = q * g.DW - g.PW;
                        Range cols = inside(iw0, g.SW, g.W, g.OW);
                        real w = w_fj[p * g.KW + q];
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

// dout is (N, F, OH, OW), inp is (N, C, H, W), weight is (F, C/G, KH, KW); accumulates (+=) dinp (like inp;
// skipped if NULL), dweight (like weight) and dbias (F, or NULL) by the chain rule through the forward.
CNNC_KERNEL void conv2d_grouped_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                         const real* restrict dout, const real* restrict inp,
                                         const real* restrict weight, int64_t N, Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int CG = g.C / geometry.G, FG = g.F / geometry.G;
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            const real* dout_nf = dout + (n * g.F + f) * g.OH * g.OW;
            if (dbias != NULL) {
                real sum = 0;
                CNNC_SIMD_SUM
                for (int o = 0; o < g.OH * g.OW; o++) {
                    sum += dout_nf[o];
                }
                dbias[f] += sum;
            }
            for (int j = 0; j < CG; j++) {
                int c = f / FG * CG + j;
                const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
                real* dinp_nc = dinp != NULL ? dinp + (n * g.C + c) * g.H * g.W : NULL;
                const real* w_fj = weight + (f * CG + j) * g.KH * g.KW;
                real* dw_fj = dweight + (f * CG + j) * g.KH * g.KW;
                for (int p = 0; p < g.KH; p++) {
                    int ih0 = p * g.DH - g.PH;
                    Range rows = inside(ih0, g.SH, g.H, g.OH);
                    for (int q = 0; q < g.KW; q++) {
                        int iw0 = q * g.DW - g.PW;
                        Range cols = inside(iw0, g.SW, g.W, g.OW);
                        real w = w_fj[p * g.KW + q], sum = 0;  // sum: this tap's weight gradient
                        for (int oh = rows.begin; oh < rows.end; oh++) {
                            const real* dout_row = dout_nf + oh * g.OW;
                            const real* inp_row = inp_nc + (oh * g.SH + ih0) * g.W;
                            CNNC_SIMD_SUM
                            for (int ow = cols.begin; ow < cols.end; ow++) {
                                sum += dout_row[ow] * inp_row[ow * g.SW + iw0];
                            }
                            if (dinp_nc != NULL) {
                                real* dinp_row = dinp_nc + (oh * g.SH + ih0) * g.W;
                                for (int ow = cols.begin; ow < cols.end; ow++) {
                                    dinp_row[ow * g.SW + iw0] += w * dout_row[ow];
                                }
                            }
                        }
                        dw_fj[p * g.KW + q] += sum;
                    }
                }
            }
        }
    }
}

#endif
