// int8_extra.h: the int8 kernels of issue 15's layer kinds for cnnc's quantised standalone C export:
// transposed convolutions, global max pooling, channel shuffle, average pooling with a divisor per window
// (ceil=true, count_pad=false), log_softmax and local response normalisation. elu, selu and hardsigmoid
// need nothing new: they are int8.h's 256-entry lookup tables, and max pooling with ceil=true is int8.h's
// max pooling (its windows are clipped to the input already).
//
// Integer arithmetic throughout, with int8.h's requantisation, except lrn: it runs in double between two
// int8 tensors (dequantise, normalise, requantise), the one layer of the int8 export that needs libm.
// cnnc/quantize.py is the NumPy twin of every function here, bit for bit, and derives the constants.
#ifndef CNNC_KERNELS_INT8_EXTRA_H
#define CNNC_KERNELS_INT8_EXTRA_H

#include "channel_shuffle.h"
#include "conv_transpose.h"
#include "int8.h"
#include "lrn.h"

// inp is (C, H, W), weight is (C, F/G, KH, KW) (PyTorch's layout), bias, multiplier and shift are (F) ->
// out is (F, OH, OW), the transposed convolution of conv_transpose.h in int32:
//   acc = bias[f] + sum of weight[c][f - g*F/G][p][q] * (inp[c][ih][iw] - in_zero_point)
//   over the channels c of f's group g and the taps with oh = ih*SH + p*DH - PH, ow = iw*SW + q*DW - PW;
//   out[f][oh][ow] = int8_output(acc, multiplier[f], shift[f]).
// Each output gathers its taps (rather than each input scattering its kernel, as the float kernel does), so
// that its int32 sum is complete when it is requantised and no int32 scratch is needed.
CNNC_KERNEL void int8_conv_transpose2d_forward(int8_t* restrict out, const int8_t* restrict inp,
                                               const int8_t* restrict weight, const int32_t* restrict bias,
                                               const int32_t* restrict multiplier, const int32_t* restrict shift,
                                               ConvTranspose2d g, Int8Requant q)
{
    const int Cg = g.C / g.G, Fg = g.F / g.G;
    for (int f = 0; f < g.F; f++) {
        const int group = f / Fg, fl = f % Fg;
        int8_t* out_f = out + f * g.OH * g.OW;
        int32_t b = (bias != NULL) ? bias[f] : 0;
        for (int oh = 0; oh < g.OH; oh++) {
            for (int ow = 0; ow < g.OW; ow++) {
                int32_t acc = b;
                for (int p = 0; p < g.KH; p++) {
                    int row = oh + g.PH - p * g.DH;  // ih * SH, if an input row reaches oh through kernel row p
                    if (row < 0 || row % g.SH != 0 || row / g.SH >= g.H) continue;
                    for (int k = 0; k < g.KW; k++) {
                        int col = ow + g.PW - k * g.DW;  // iw * SW, likewise
                        if (col < 0 || col % g.SW != 0 || col / g.SW >= g.W) continue;
                        for (int cl = 0; cl < Cg; cl++) {
                            int c = group * Cg + cl;
                            int32_t w = weight[((c * Fg + fl) * g.KH + p) * g.KW + k];
                            acc += w * ((int32_t)inp[(c * g.H + row / g.SH) * g.W + col / g.SW] - q.in_zero_point);
                        }
                    }
                }
                out_f[oh * g.OW + ow] = int8_output(acc, multiplier[f], shift[f], q);
            }
        }
    }
}

// inp is (C, HW) -> out is (C): each channel's largest value. The encoding is kept.
CNNC_KERNEL void int8_global_maxpool_forward(int8_t* restrict out, const int8_t* restrict inp, GlobalMaxPool g)
{
    for (int c = 0; c < g.C; c++) {
        const int8_t* inp_c = inp + c * g.HW;
        int8_t best = INT8_MIN;
        for (int i = 0; i < g.HW; i++) {
            best = inp_c[i] > best ? inp_c[i] : best;
        }
        out[c] = best;
    }
}

// inp is (C, S) -> out is (C, S): out[i*G + grp] = inp[grp*(C/G) + i], whole channels at a time. The encoding
// is kept.
CNNC_KERNEL void int8_channel_shuffle_forward(int8_t* restrict out, const int8_t* restrict inp, ChannelShuffle g)
{
    const int per_group = g.C / g.G;
    for (int grp = 0; grp < g.G; grp++) {
        for (int i = 0; i < per_group; i++) {
            memcpy(out + (i * g.G + grp) * g.S, inp + (grp * per_group + i) * g.S, (size_t)g.S);
        }
    }
}

// inp is (C, H, W) -> out is (C, OH, OW), average pooling with pool.h's divisor per window (window_divisor:
// ceil=true, count_pad=false): zero_point + the sum of (inp - zero_point) over the window's cells inside the
// input, divided by the window's divisor, rounded half away from zero. The encoding is kept.
CNNC_KERNEL void int8_avgpool2d_clipped_forward(int8_t* restrict out, const int8_t* restrict inp, AvgPool2dClipped a,
                                                int32_t zero_point)
{
    Pool2d g = a.pool;
    for (int c = 0; c < g.C; c++) {
        const int8_t* inp_c = inp + c * g.H * g.W;
        int8_t* out_c = out + c * g.OH * g.OW;
        for (int oh = 0; oh < g.OH; oh++) {
            Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
            int row_cells = window_divisor(oh * g.SH - g.PH, g.KH, g.H, a.PHA, a.count_pad);
            for (int ow = 0; ow < g.OW; ow++) {
                Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                int cells = row_cells * window_divisor(ow * g.SW - g.PW, g.KW, g.W, a.PWA, a.count_pad);
                int32_t total = 0;
                for (int ih = rows.begin; ih < rows.end; ih++) {
                    for (int iw = cols.begin; iw < cols.end; iw++) {
                        total += (int32_t)inp_c[ih * g.W + iw] - zero_point;
                    }
                }
                int32_t v = int8_rounding_divide(total, cells) + zero_point;
                out_c[oh * g.OW + ow] = (int8_t)(v < INT8_MIN ? INT8_MIN : v > INT8_MAX ? INT8_MAX : v);
            }
        }
    }
}

// Binary digits after the point of int8_log2's fixed-point logarithms.
#define INT8_LOG2_FRACTION 20
// int8.h's softmax table holds exp(0) as 2^16 (SOFTMAX_EXP_ONE in cnnc/quantize.py).
#define INT8_EXP_ONE_BITS 16

// log2(total) * 2^INT8_LOG2_FRACTION rounded down (to within 2^-20, from truncated squarings), total >= 1, in
// integers only: the position of the highest set bit, then one binary digit per squaring of the mantissa
// (held in Q30, in [1, 2)): squaring doubles the logarithm, whose next digit is whether the square reached 2.
static inline int64_t int8_log2(int64_t total)
{
    int e = 0;
    while ((total >> (e + 1)) != 0) e++;
    int64_t mantissa = e >= 30 ? total >> (e - 30) : total << (30 - e);  // total / 2^e in Q30, in [2^30, 2^31)
    int64_t log2 = (int64_t)e << INT8_LOG2_FRACTION;
    for (int bit = INT8_LOG2_FRACTION - 1; bit >= 0; bit--) {
        mantissa = (mantissa * mantissa) >> 30;
        if (mantissa >= ((int64_t)1 << 31)) {
            mantissa >>= 1;
            log2 += (int64_t)1 << bit;
        }
    }
    return log2;
}

// log_softmax's constants: the size of one input step in log2 units (round(2^20 s_in / ln 2)), the
// requantisation of log2 units to output steps (ln 2 / (2^20 s_out): a multiplier and a shift), the output's
// zero point and the element count.
typedef struct {
    int32_t step, multiplier, shift, out_zero_point;
    int n;
} Int8LogSoftmax;

// log_softmax over the n values, in integers: with d[i] = max - inp[i] and exp_table int8.h's softmax table
// (exp_table[d] = round(2^16 exp(-d * s_in))), the sum S of exp_table[d[i]] is 2^16 times the sum of
// exp(x_j - max); log_softmax[i] = -(d[i] * s_in + ln(S / 2^16)), in log2 units of 2^-20:
//   distance[i] = d[i] * step + int8_log2(S) - 16 * 2^20   (>= 0, saturated at INT32_MAX)
//   out[i] = clamp(out_zero_point - int8_requantize(distance[i], multiplier, shift), -128, 127)
// May run in place.
CNNC_KERNEL void int8_log_softmax_forward(int8_t* out, const int8_t* inp, const int32_t* restrict exp_table,
                                          Int8LogSoftmax g)
{
    int32_t largest = INT8_MIN;
    int64_t total = 0;
    for (int i = 0; i < g.n; i++) {
        largest = inp[i] > largest ? inp[i] : largest;
    }
    for (int i = 0; i < g.n; i++) {
        total += exp_table[largest - inp[i]];
    }
    int64_t log_total = int8_log2(total) - ((int64_t)INT8_EXP_ONE_BITS << INT8_LOG2_FRACTION);
    for (int i = 0; i < g.n; i++) {
        int64_t distance = (int64_t)(largest - inp[i]) * g.step + log_total;
        if (distance > INT32_MAX) distance = INT32_MAX;
        int64_t v = (int64_t)g.out_zero_point - int8_requantize((int32_t)distance, g.multiplier, g.shift);
        out[i] = (int8_t)(v < INT8_MIN ? INT8_MIN : v > INT8_MAX ? INT8_MAX : v);
    }
}

// lrn's constants: k, alpha / SIZE * s_in^2 (the sum of squares is of int8 steps), beta, s_in / s_out, and
// the zero points of the input and the output.
typedef struct {
    double k, scaled_alpha, beta, rescale;
    int32_t in_zero_point, out_zero_point;
} Int8Lrn;

// inp is (C, S) -> out is (C, S): lrn.h's normalisation in double between two int8 tensors. With x = inp - zp_in,
//   sum = the int32 sum of x[j][s]^2 over the window's channels j (channels c - SIZE/2 ... c + (SIZE-1)/2)
//   v = x[c][s] * rescale * pow(k + scaled_alpha * sum, -beta)   (in this order)
//   out = clamp(zp_out + v rounded half away from zero, -128, 127)   (v clamped to [-256, 256] first; NaN: -256)
CNNC_KERNEL void int8_lrn_forward(int8_t* restrict out, const int8_t* restrict inp, Lrn g, Int8Lrn q)
{
    const int before = g.SIZE / 2, after = (g.SIZE - 1) / 2;
    for (int c = 0; c < g.C; c++) {
        int lo = c - before > 0 ? c - before : 0, hi = c + after < g.C - 1 ? c + after : g.C - 1;
        for (int s = 0; s < g.S; s++) {
            int32_t sum = 0;
            for (int j = lo; j <= hi; j++) {
                int32_t x = (int32_t)inp[j * g.S + s] - q.in_zero_point;
                sum += x * x;
            }
            double centred = (double)((int32_t)inp[c * g.S + s] - q.in_zero_point);
            double v = centred * q.rescale * pow(q.k + q.scaled_alpha * (double)sum, -q.beta);
            if (!(v >= -256.0)) v = -256.0;
            if (v > 256.0) v = 256.0;
            int32_t r = (int32_t)(v >= 0.0 ? v + 0.5 : v - 0.5) + q.out_zero_point;
            out[c * g.S + s] = (int8_t)(r < INT8_MIN ? INT8_MIN : r > INT8_MAX ? INT8_MAX : r);
        }
    }
}

#endif
