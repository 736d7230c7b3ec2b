// conv_grouped.h: grouped 2-D convolution (PyTorch's groups=). The C input channels and F filters are split
// into G groups; filter f reads only the C/G channels of its group f / (F/G). A 1-D convolution is a 2-D one
// of height 1.
//
// - conv2d_grouped_forward / _backward: each group of each sample is an ordinary convolution of C/G channels
//   and F/G filters, so conv.h's conv2d_forward / conv2d_backward run on it (the loops exist once, in conv.h).
// - conv2d_depthwise_forward / _backward, for C/G = 1 (filter f reads channel f / (F/G), G = C), the same
//   maths faster: conv.h's loops would run one tap at a time over rows of a few columns. Instead each
//   channel's plane is copied once into a zero-padded plane (every row and column any tap reads), split by the
//   strides into SH * SW phase planes `xq` of HQ x WQ (with unit strides, one: the padded plane itself), and
//   each phase plane is read as one flat array: output (oh, ow) sits at flat position i = oh * WQ + ow, and
//   tap (p, q) reads its phase plane at i + its offset (depthwise_tap_phase, depthwise_tap_offset), so one
//   loop of (OH - 1) * WQ + OW positions, all taps per position, covers the plane with no bounds test and
//   vectorises over whole planes rather than rows (the positions past OW in each row are computed and
//   dropped), and a stride costs no multiply-adds on positions no output reads. Backward spreads dout onto
//   the same flat positions (zero elsewhere) and runs flat loops per tap: dweight's products, summed over the
//   batch position by position before one sum per filter, and dinp's phase planes, each position gathering
//   weight * dout from every tap that reads it. The scratch is depthwise_scratch_reals reals, per thread.
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

// The phase planes of a depthwise convolution: the padded plane split by the strides into SH * SW planes of
// HQ x WQ reals, phase (a, b) holding padded rows a, a + SH, a + 2*SH, ... and columns b, b + SW, ... (zero past
// the padded plane). With unit strides there is one phase, the padded plane itself (HQ x WQ = HP x WP).
static inline int depthwise_phase_rows(Conv2d g) { return (grouped_plane_rows(g) + g.SH - 1) / g.SH; }
static inline int depthwise_phase_cols(Conv2d g) { return (grouped_plane_cols(g) + g.SW - 1) / g.SW; }

// Tap (p, q) reads phase plane (p*DH % SH) * SW + q*DW % SW at this offset from the output's flat position.
static inline int depthwise_tap_phase(Conv2d g, int p, int q) { return (p * g.DH % g.SH) * g.SW + q * g.DW % g.SW; }
static inline int depthwise_tap_offset(Conv2d g, int p, int q)
{
    return p * g.DH / g.SH * depthwise_phase_cols(g) + q * g.DW / g.SW;
}

// The flat positions the outputs sit on in a phase plane, from output (0, 0) to (OH-1, OW-1): output (oh, ow)
// is at oh * WQ + ow, and tap (p, q) reads its phase plane at that position + the tap's offset, so one flat
// loop per phase plane covers every output with unit strides and no bounds test (the positions past OW in
// each row are computed and dropped).
static inline int depthwise_flat(Conv2d g) { return (g.OH - 1) * depthwise_phase_cols(g) + g.OW; }

// The largest tap offset: the input gradient's loops read the spread output gradient this far before its start.
static inline int depthwise_margin(Conv2d g)
{
    return depthwise_tap_offset(g, g.KH - 1, g.KW - 1);
}

// Backward's loop over dweight's products runs over the flat positions rounded up to a multiple of this
// many (a whole number of vectors, no scalar tail: the positions past the last output hold dout 0, and
// the scratch has this many zeros after the planes those loops read).
#define DEPTHWISE_ROUND 16
static inline int depthwise_flat_rounded(Conv2d g)
{
    return (depthwise_flat(g) + DEPTHWISE_ROUND - 1) / DEPTHWISE_ROUND * DEPTHWISE_ROUND;
}

// Backward accumulates dweight's products for blocks of this many filters (KH*KW*flat_rounded reals each,
// the block within 16 KiB where it can be): whole channels' filters (a multiple of F/G).
static inline int depthwise_filter_block(Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int FG = g.F / geometry.G, channels = 4096 / (g.KH * g.KW * depthwise_flat_rounded(g) * FG);
    channels = channels > 1 ? channels : 1;
    return channels < geometry.G ? channels * FG : g.F;
}

// The reals of scratch the depthwise kernels need (c_codegen.depthwise_scratch computes the same):
// forward: xq (SH*SW phase planes) and the outputs at their flat positions (one plane);
// backward: xq and DEPTHWISE_ROUND zeros, the spread output gradient (margin + one plane + DEPTHWISE_ROUND
// zeros), its input gradient in phases (SH*SW planes) and the per-tap products dweight sums (flat_rounded
// reals per tap and filter of a block).
static inline int64_t depthwise_scratch_reals(Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int64_t plane = (int64_t)depthwise_phase_rows(g) * depthwise_phase_cols(g), phases = (int64_t)g.SH * g.SW;
    return 2 * phases * plane + 2 * DEPTHWISE_ROUND + depthwise_margin(g) + plane
           + (int64_t)depthwise_filter_block(geometry) * g.KH * g.KW * depthwise_flat_rounded(g);
}

// inp_c is one channel's plane (H, W) -> xq (SH*SW, HQ, WQ): its padded plane split into phases (see above).
// Writes only the positions that hold input, the same ones for every plane: the caller zeroes xq once.
CNNC_KERNEL void depthwise_split_phases(real* restrict xq, const real* restrict inp_c, Conv2d g)
{
    int HQ = depthwise_phase_rows(g), WQ = depthwise_phase_cols(g);
    for (int a = 0; a < g.SH; a++) {
        Range rows = inside(a - g.PH, g.SH, g.H, HQ);  // the phase's rows holding input
        for (int b = 0; b < g.SW; b++) {
            Range cols = inside(b - g.PW, g.SW, g.W, WQ);
            real* phase = xq + (a * g.SW + b) * HQ * WQ;
            for (int rq = rows.begin; rq < rows.end; rq++) {
                const real* inp_row = inp_c + (rq * g.SH + a - g.PH) * g.W + b - g.PW;
                real* row = phase + rq * WQ;
                for (int cq = cols.begin; cq < cols.end; cq++) {
                    row[cq] = inp_row[cq * g.SW];
                }
            }
        }
    }
}

// dxq (SH*SW, HQ, WQ), the gradient of a channel's phase planes -> dinp_c (H, W), the channel's input gradient
// (the padding's share dropped; zero where no phase plane reaches): the inverse of depthwise_split_phases.
CNNC_KERNEL void depthwise_merge_phases(real* restrict dinp_c, const real* restrict dxq, Conv2d g)
{
    int HQ = depthwise_phase_rows(g), WQ = depthwise_phase_cols(g);
    if (g.PH < 0 || g.PW < 0 || g.H + g.PH > HQ * g.SH || g.W + g.PW > WQ * g.SW) {
        for (int i = 0; i < g.H * g.W; i++) {
            dinp_c[i] = 0;  // input rows or columns past every phase plane (no tap reads them)
        }
    }
    for (int a = 0; a < g.SH; a++) {
        Range rows = inside(a - g.PH, g.SH, g.H, HQ);
        for (int b = 0; b < g.SW; b++) {
            Range cols = inside(b - g.PW, g.SW, g.W, WQ);
            const real* phase = dxq + (a * g.SW + b) * HQ * WQ;
            for (int rq = rows.begin; rq < rows.end; rq++) {
                real* dinp_row = dinp_c + (rq * g.SH + a - g.PH) * g.W + b - g.PW;
                const real* row = phase + rq * WQ;
                for (int cq = cols.begin; cq < cols.end; cq++) {
                    dinp_row[cq * g.SW] = row[cq];
                }
            }
        }
    }
}

// The depthwise case (C/G = 1) of conv2d_grouped_forward: the same arguments and maths, plus scratch
// (depthwise_scratch_reals; see the top of this file and depthwise_flat).
CNNC_KERNEL void conv2d_depthwise_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                          const real* restrict bias, real* restrict scratch, int64_t N,
                                          Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int FG = g.F / geometry.G;  // filters per channel
    int WQ = depthwise_phase_cols(g), plane = depthwise_phase_rows(g) * WQ;
    int flat = depthwise_flat(g);
    real* xq = scratch;
    real* full = scratch + g.SH * g.SW * plane;  // the outputs at every flat position
    for (int i = 0; i < g.SH * g.SW * plane; i++) {
        xq[i] = 0;  // the padding, which depthwise_split_phases never writes
    }
    for (int64_t n = 0; n < N; n++) {
        for (int f = 0; f < g.F; f++) {
            if (f % FG == 0) {  // the first filter reading channel f / FG
                depthwise_split_phases(xq, inp + (n * g.C + f / FG) * g.H * g.W, g);
            }
            const real* w_f = weight + f * g.KH * g.KW;
            real b = (bias != NULL) ? bias[f] : 0;
            real* out_nf = out + (n * g.F + f) * g.OH * g.OW;
            for (int i = 0; i < flat; i++) {
                real sum = b;
                for (int p = 0; p < g.KH; p++) {
                    for (int q = 0; q < g.KW; q++) {
                        sum += w_f[p * g.KW + q] * xq[depthwise_tap_phase(g, p, q) * plane + depthwise_tap_offset(g, p, q) + i];
                    }
                }
                full[i] = sum;
            }
            for (int oh = 0; oh < g.OH; oh++) {
                for (int ow = 0; ow < g.OW; ow++) {
                    out_nf[oh * g.OW + ow] = full[oh * WQ + ow];
                }
            }
        }
    }
}

// The depthwise case (C/G = 1) of conv2d_grouped_backward: the same arguments and maths, except that dinp is
// written (=), not accumulated (dweight and dbias are), plus scratch as for the forward. dout is spread onto the flat positions of a phase plane
// `dq` (zero elsewhere, and for `margin` reals before it). dweight's tap (p, q) is the sum over positions of dq
// times the phase plane the tap reads: the products are accumulated position by position over the batch
// (`prod`, flat reals per tap and filter) and summed once per filter, for blocks of filters whose products fit
// in 16 KiB (so each sample's planes of a block are read together). The input gradient's phase plane of each
// tap += weight * dq read `offset` positions back (each tap adds into the same aligned positions of its phase
// plane, which the next tap then reads: no store-to-load stalls), then added into dinp.
CNNC_KERNEL void conv2d_depthwise_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                           const real* restrict dout, const real* restrict inp,
                                           const real* restrict weight, real* restrict scratch, int64_t N,
                                           Conv2dGrouped geometry)
{
    Conv2d g = geometry.conv;
    int FG = g.F / geometry.G;
    int WQ = depthwise_phase_cols(g), plane = depthwise_phase_rows(g) * WQ, phases = g.SH * g.SW;
    int margin = depthwise_margin(g), taps = g.KH * g.KW;
    int flat = depthwise_flat_rounded(g);  // the products' loops read up to DEPTHWISE_ROUND - 1 past a plane
    int block = depthwise_filter_block(geometry);
    real* xq = scratch;                                              // (phases, HQ, WQ), then zeros
    real* dq = scratch + phases * plane + DEPTHWISE_ROUND + margin;  // (HQ, WQ), zero but at the outputs
    real* dxq = dq + plane + DEPTHWISE_ROUND;                        // (phases, HQ, WQ)
    real* prod = dxq + phases * plane;                               // (block, taps, flat)
    for (int i = 0; i < phases * plane + DEPTHWISE_ROUND; i++) {
        xq[i] = 0;  // the padding, which depthwise_split_phases never writes
    }
    for (int i = -margin; i < plane + DEPTHWISE_ROUND; i++) {
        dq[i] = 0;  // the positions no output sits on stay zero
    }
    for (int f0 = 0; f0 < g.F; f0 += block) {
        int f1 = f0 + block < g.F ? f0 + block : g.F;
        for (int i = 0; i < (f1 - f0) * taps * flat; i++) {
            prod[i] = 0;
        }
        for (int64_t n = 0; n < N; n++) {
            for (int f = f0; f < f1; f++) {
                int c = f / FG;
                if (f % FG == 0) {  // the first filter reading channel c
                    depthwise_split_phases(xq, inp + (n * g.C + c) * g.H * g.W, g);
                }
                const real* dout_nf = dout + (n * g.F + f) * g.OH * g.OW;
                real bias_sum = 0;
                for (int oh = 0; oh < g.OH; oh++) {
                    for (int ow = 0; ow < g.OW; ow++) {
                        real d = dout_nf[oh * g.OW + ow];
                        dq[oh * WQ + ow] = d;
                        bias_sum += d;
                    }
                }
                if (dbias != NULL) {
                    dbias[f] += bias_sum;
                }
                for (int p = 0; p < g.KH; p++) {
                    for (int q = 0; q < g.KW; q++) {
                        const real* x_tap = xq + depthwise_tap_phase(g, p, q) * plane + depthwise_tap_offset(g, p, q);
                        real* prod_tap = prod + ((f - f0) * taps + p * g.KW + q) * flat;
                        for (int i = 0; i < flat; i++) {
                            prod_tap[i] += dq[i] * x_tap[i];
                        }
                    }
                }
                if (dinp == NULL) {
                    continue;
                }
                const real* w_f = weight + f * taps;
                // each position j of a phase plane gathers weight * dout from the output at j - offset of every
                // tap reading that phase (the phase loop unrolled, so each copy's taps are known)
#pragma GCC unroll 16
                for (int phase = 0; phase < phases; phase++) {
                    real* dx_phase = dxq + phase * plane;
                    for (int j = 0; j < plane; j++) {
                        real sum = f % FG == 0 ? 0 : dx_phase[j];  // the channel's filters add up
                        for (int p = 0; p < g.KH; p++) {
                            for (int q = 0; q < g.KW; q++) {
                                if (depthwise_tap_phase(g, p, q) == phase) {
                                    sum += w_f[p * g.KW + q] * dq[j - depthwise_tap_offset(g, p, q)];
                                }
                            }
                        }
                        dx_phase[j] = sum;
                    }
                }
                if (f % FG == FG - 1) {  // the last filter reading channel c: its gradient is complete
                    depthwise_merge_phases(dinp + (n * g.C + c) * g.H * g.W, dxq, g);
                }
            }
        }
        for (int f = f0; f < f1; f++) {
            for (int t = 0; t < taps; t++) {
                const real* prod_tap = prod + ((f - f0) * taps + t) * flat;
                real sum = 0;
                CNNC_SIMD_SUM
                for (int i = 0; i < flat; i++) {
                    sum += prod_tap[i];
                }
                dweight[f * taps + t] += sum;
            }
        }
    }
}

#endif
