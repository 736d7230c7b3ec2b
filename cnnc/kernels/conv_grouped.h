// conv_grouped.h: grouped 2-D convolution (PyTorch's groups=). The C input channels and F filters are split
// into G groups; filter f reads only the C/G channels of its group f / (F/G). A 1-D convolution is a 2-D one
// of height 1.
//
// - conv2d_grouped_forward / _backward: each group of each sample is an ordinary convolution of C/G channels
//   and F/G filters, so conv.h's conv2d_forward / conv2d_backward run on it (the loops exist once, in conv.h).
// - conv2d_depthwise_forward / _backward, for C/G = 1 (filter f reads channel f / (F/G), G = C), the same
//   maths faster: conv.h's loops would run one tap at a time
//   over rows of a few columns. Instead each channel's plane is copied once into a zero-padded plane `xpad`
//   of HP x WP (every row and column any tap reads), and the convolution runs over the padded plane read as
//   one flat array: with unit strides, output (oh, ow) sits at flat position i = oh * WP + ow and tap (p, q)
//   reads xpad[i + p*DH*WP + q*DW], so one loop of (OH - 1) * WP + OW positions, all taps per position, covers
//   the plane with no bounds test and vectorises over whole planes rather than rows (the positions past OW in
//   each row are computed and dropped). Backward spreads dout onto the same flat positions (zero elsewhere:
//   the dropped columns and, with a stride, the positions between strides) and runs two flat loops per tap:
//   dweight's dot product and dinp's multiply-add into a padded plane `dxpad`, whose interior is then added
//   into dinp. The scratch is 3 planes of HP x WP reals, per thread.
#ifndef CNNC_KERNELS_CONV_GROUPED_H
#define CNNC_KERNELS_CONV_GROUPED_H

#include "conv.h"

// The sizes of one grouped convolution: conv.C is every input channel, conv.F every filter.
typedef struct {
    Conv2d conv;
    int G;  // groups: G divides C and F
} Conv2dGrouped;

// The padded plane of a depthwise convolution: every input row and column a tap reads, from row -PH and
// column -PW (HP x WP reals).
static inline int grouped_plane_rows(Conv2d g) { return (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + 1; }
static inline int grouped_plane_cols(Conv2d g) { return (g.OW - 1) * g.SW + (g.KW - 1) * g.DW + 1; }

// One group's sizes as a plain convolution: C/G channels, F/G filters.
static inline Conv2d grouped_part(Conv2dGrouped geometry)
{
    Conv2d part = geometry.conv;
    part.C /= geometry.G;
    part.F /= geometry.G;
    return part;
}

// inp_c is one channel's plane (H, W) -> xpad (HP, WP): the plane from row -PH and column -PW, zero outside.
CNNC_KERNEL void grouped_pad_plane(real* restrict xpad, const real* restrict inp_c, Conv2d g)
{
    int HP = grouped_plane_rows(g), WP = grouped_plane_cols(g);
    for (int i = 0; i < HP * WP; i++) {
        xpad[i] = 0;
    }
    int r0 = g.PH > 0 ? g.PH : 0, c0 = g.PW > 0 ? g.PW : 0;  // first padded row and column holding input
    for (int r = r0; r < HP && r - g.PH < g.H; r++) {
        const real* inp_row = inp_c + (r - g.PH) * g.W;
        for (int c = c0; c < WP && c - g.PW < g.W; c++) {
            xpad[r * WP + c] = inp_row[c - g.PW];
        }
    }
}

// inp is (N, C, H, W), weight is (F, C/G, KH, KW), bias is (F) or NULL -> out is (N, F, OH, OW):
//   out[n][f][oh][ow] = bias[f] + sum over j < C/G, p, q of weight[f][j][p][q] * inp[n][g*C/G + j][ih][iw]
//   with g = f / (F/G), ih = oh*SH + p*DH - PH and iw = ow*SW + q*DW - PW; taps in the padding add nothing.
CNNC_KERNEL void conv2d_grouped_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                        const real* restrict bias, int64_t N, Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv, part = grouped_part(geometry);
    int CG = part.C, FG = part.F;  // channels and filters per group
    for (int64_t n = 0; n < N; n++) {
        for (int k = 0; k < geometry.G; k++) {
            conv2d_forward(out + (n * g.F + k * FG) * g.OH * g.OW, inp + (n * g.C + k * CG) * g.H * g.W,
                           weight + (int64_t)k * FG * CG * g.KH * g.KW, bias != NULL ? bias + k * FG : NULL, 1, part);
        }
    }
}

// dout is (N, F, OH, OW), inp is (N, C, H, W), weight is (F, C/G, KH, KW); accumulates (+=) dinp (like inp;
// skipped if NULL), dweight (like weight) and dbias (F, or NULL) by the chain rule through the forward.
CNNC_KERNEL void conv2d_grouped_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                         const real* restrict dout, const real* restrict inp,
                                         const real* restrict weight, int64_t N, Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv, part = grouped_part(geometry);
    int CG = part.C, FG = part.F;
    for (int64_t n = 0; n < N; n++) {
        for (int k = 0; k < geometry.G; k++) {
            int64_t in_at = (n * g.C + k * CG) * g.H * g.W;
            int64_t w_at = (int64_t)k * FG * CG * g.KH * g.KW;
            conv2d_backward(dinp != NULL ? dinp + in_at : NULL, dweight + w_at, dbias != NULL ? dbias + k * FG : NULL,
                            dout + (n * g.F + k * FG) * g.OH * g.OW, inp + in_at, weight + w_at, 1, part);
        }
    }
}

// The depthwise case (C/G = 1) of conv2d_grouped_forward: the same arguments and maths, plus scratch (3 * HP * WP
// reals, see the top of this file).
CNNC_KERNEL void conv2d_depthwise_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                          const real* restrict bias, real* restrict scratch, int64_t N,
                                          Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int FG = g.F / geometry.G;  // filters per channel
    int WP = grouped_plane_cols(g);
    int flat = (g.OH - 1) * WP + g.OW;  // unit strides: the flat positions from output (0, 0) to (OH-1, OW-1)
    real* xpad = scratch;
    real* full = scratch + grouped_plane_rows(g) * WP;  // the outputs at every flat position
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            if (f % FG == 0) {  // the first filter reading channel f / FG
                grouped_pad_plane(xpad, inp + (n * g.C + f / FG) * g.H * g.W, g);
            }
            const real* w_f = weight + f * g.KH * g.KW;
            real b = (bias != NULL) ? bias[f] : 0;
            real* out_nf = out + (n * g.F + f) * g.OH * g.OW;
            if (g.SH == 1 && g.SW == 1) {
                for (int i = 0; i < flat; i++) {
                    real sum = b;
                    for (int p = 0; p < g.KH; p++) {
                        for (int q = 0; q < g.KW; q++) {
                            sum += w_f[p * g.KW + q] * xpad[i + p * g.DH * WP + q * g.DW];
                        }
                    }
                    full[i] = sum;
                }
                for (int oh = 0; oh < g.OH; oh++) {
                    for (int ow = 0; ow < g.OW; ow++) {
                        out_nf[oh * g.OW + ow] = full[oh * WP + ow];
                    }
                }
            } else {  // strided: one output at a time, still no bounds test
                for (int oh = 0; oh < g.OH; oh++) {
                    for (int ow = 0; ow < g.OW; ow++) {
                        const real* x_o = xpad + oh * g.SH * WP + ow * g.SW;
                        real sum = b;
                        for (int p = 0; p < g.KH; p++) {
                            for (int q = 0; q < g.KW; q++) {
                                sum += w_f[p * g.KW + q] * x_o[p * g.DH * WP + q * g.DW];
                            }
                        }
                        out_nf[oh * g.OW + ow] = sum;
                    }
                }
            }
        }
    }
}

// The depthwise case (C/G = 1) of conv2d_grouped_backward: the same arguments and maths (dinp, dweight and
// dbias accumulated), plus scratch as for the forward.
CNNC_KERNEL void conv2d_depthwise_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                           const real* restrict dout, const real* restrict inp,
                                           const real* restrict weight, real* restrict scratch, int64_t N,
                                           Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int FG = g.F / geometry.G;
    int HP = grouped_plane_rows(g), WP = grouped_plane_cols(g);
    int flat = (g.OH - 1) * g.SH * WP + (g.OW - 1) * g.SW + 1;  // flat positions from output (0, 0) to the last
    real* xpad = scratch;
    real* dfull = scratch + HP * WP;      // dout at the flat position of each output, zero elsewhere
    real* dxpad = scratch + 2 * HP * WP;  // the gradient of xpad
    for (int i = 0; i < HP * WP; i++) {
        dfull[i] = 0;  // the positions no output sits on stay zero
    }
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            int c = f / FG;
            if (f % FG == 0) {
                grouped_pad_plane(xpad, inp + (n * g.C + c) * g.H * g.W, g);
                for (int i = 0; i < HP * WP; i++) {
                    dxpad[i] = 0;
                }
            }
            const real* dout_nf = dout + (n * g.F + f) * g.OH * g.OW;
            real bias_sum = 0;
            for (int oh = 0; oh < g.OH; oh++) {
                for (int ow = 0; ow < g.OW; ow++) {
                    real d = dout_nf[oh * g.OW + ow];
                    dfull[oh * g.SH * WP + ow * g.SW] = d;
                    bias_sum += d;
                }
            }
            if (dbias != NULL) {
                dbias[f] += bias_sum;
            }
            const real* w_f = weight + f * g.KH * g.KW;
            real* dw_f = dweight + f * g.KH * g.KW;
            for (int p = 0; p < g.KH; p++) {
                for (int q = 0; q < g.KW; q++) {
                    // dweight[f][p][q] += sum over outputs of dout * the input the tap read
                    const real* x_tap = xpad + p * g.DH * WP + q * g.DW;
                    real sum = 0;
                    CNNC_SIMD_SUM
                    for (int i = 0; i < flat; i++) {
                        sum += dfull[i] * x_tap[i];
                    }
                    dw_f[p * g.KW + q] += sum;
                    if (dinp != NULL) {  // the input the tap read += weight * dout
                        real w = w_f[p * g.KW + q];
                        real* dx_tap = dxpad + p * g.DH * WP + q * g.DW;
                        for (int i = 0; i < flat; i++) {
                            dx_tap[i] += w * dfull[i];
                        }
                    }
                }
            }
            if (dinp != NULL && f % FG == FG - 1) {  // the last filter reading channel c: dxpad is complete
                real* dinp_nc = dinp + (n * g.C + c) * g.H * g.W;
                int r0 = g.PH > 0 ? g.PH : 0, c0 = g.PW > 0 ? g.PW : 0;
                for (int r = r0; r < HP && r - g.PH < g.H; r++) {
                    real* dinp_row = dinp_nc + (r - g.PH) * g.W;
                    for (int col = c0; col < WP && col - g.PW < g.W; col++) {
                        dinp_row[col - g.PW] += dxpad[r * WP + col];
                    }
                }
            }
        }
    }
}

#endif
