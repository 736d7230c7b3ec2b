// int8.h: the int8 inference kernels of cnnc's quantised standalone C export (cnnc export --quantize int8).
//
// One sample per call, one function per layer kind, like the float kernels (outputs first, then inputs,
// then the sizes). Tensors are int8 with a per-tensor encoding real = s * (q - zp); weights are int8 with
// one symmetric scale per output channel, biases int32. Sums are exact int32; the real factor
// M = s_in * s_w[f] / s_out of output channel f is an int32 multiplier m and a shift e (M = m * 2^(e - 31)),
// applied by int8_requantize with gemmlowp's rounding (TensorFlow Lite's scheme). No float arithmetic
// anywhere but int8_quantize and int8_dequantize, which PREFIX_predict uses at the boundary only.
// cnnc/quantize.py holds the NumPy reference of exactly this arithmetic and the derivation of every
// constant; the two agree bit for bit (tests/test_quantize.py).
//
// What this file is not: fast. It is the reference loops (no SIMD, no im2col), meant to be read.
#ifndef CNNC_KERNELS_INT8_H
#define CNNC_KERNELS_INT8_H

// The layers' sizes are the float kernels' structs (Conv2d, Pool2d, Dense, GlobalAvgPool): the includer
// defines `real` first, as for any kernel header (the int8 export's source: float; it calls no float kernel).
#include "conv.h"
#include "dense.h"
#include "pool.h"

// The encodings around a conv or dense layer: the input's zero point, the output's, and the clamp of the
// output (act_min = the output zero point when a relu is fused: real 0).
typedef struct {
    int32_t in_zero_point, out_zero_point, act_min, act_max;
} Int8Requant;

// round(a * b / 2^31), ties upward (gemmlowp's nudge); the one overflowing case, INT32_MIN * INT32_MIN, saturates.
static inline int32_t int8_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : 1 - ((int64_t)1 << 30);
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));  // truncates toward zero
}

// x / 2^exponent (0 <= exponent <= 31), rounded to nearest, ties away from zero. The shift of a negative
// value is written as a floor that does not depend on the implementation-defined >> of negative numbers.
static inline int32_t int8_rounding_divide_by_pot(int32_t x, int exponent)
{
    int64_t v = x;
    int64_t mask = ((int64_t)1 << exponent) - 1;
    int64_t remainder = v >= 0 ? (v & mask) : mask - ((-v - 1) & mask);  // v mod 2^exponent, in [0, mask]
    int64_t floor = v >= 0 ? (v >> exponent) : -1 - ((-v - 1) >> exponent);
    int64_t threshold = (mask >> 1) + (v < 0 ? 1 : 0);
    return (int32_t)(floor + (remainder > threshold ? 1 : 0));
}

// x * multiplier * 2^(shift - 31), rounded; a positive shift first scales x up, saturating at the int32 range.
static inline int32_t int8_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    int64_t scaled = (int64_t)x * ((int64_t)1 << (shift > 0 ? shift : 0));
    if (scaled > INT32_MAX) scaled = INT32_MAX;
    if (scaled < INT32_MIN) scaled = INT32_MIN;
    return int8_rounding_divide_by_pot(int8_rounding_doubling_high_mul((int32_t)scaled, multiplier),
                                       shift > 0 ? 0 : -shift);
}

// An accumulator of output channel f -> its int8 value: zp_out + the requantised sum, clamped.
static inline int8_t int8_output(int32_t acc, int32_t multiplier, int32_t shift, Int8Requant q)
{
    int64_t v = (int64_t)int8_requantize(acc, multiplier, shift) + q.out_zero_point;
    if (v < q.act_min) v = q.act_min;
    if (v > q.act_max) v = q.act_max;
    return (int8_t)v;
}

// total / count (count > 0) rounded half away from zero.
static inline int32_t int8_rounding_divide(int32_t total, int32_t count)
{
    return total >= 0 ? (total + count / 2) / count : -((-total + count / 2) / count);
}

// The convolution sums one block of at most this many output columns at a time, in int32 on the stack.
#define INT8_CONV_OW_BLOCK 64

// inp is (C, H, W), weight is (F, C, KH, KW), bias is (F) or NULL, multiplier and shift are (F) -> out is (F, OH, OW):
//   acc = bias[f] + sum over c, p, q of weight[f][c][p][q] * (inp[c][ih][iw] - in_zero_point)
//   with ih = oh*SH + p*DH - PH and iw = ow*SW + q*DW - PW; taps in the padding (real 0) add nothing;
//   out[f][oh][ow] = int8_output(acc, multiplier[f], shift[f]). The export keeps |acc| below 2^31.
// Loop order as conv.h's: for one output row, each weight is applied to a run of output columns (a block of
// INT8_CONV_OW_BLOCK accumulators), so the innermost loop walks the input row.
CNNC_KERNEL void int8_conv2d_forward(int8_t* restrict out, const int8_t* restrict inp, const int8_t* restrict weight,
                                     const int32_t* restrict bias, const int32_t* restrict multiplier,
                                     const int32_t* restrict shift, Conv2d g, Int8Requant q)
{
    int32_t acc[INT8_CONV_OW_BLOCK];
    for (int f = 0; f < g.F; f++) {
        int8_t* out_f = out + f * g.OH * g.OW;
        int32_t b = (bias != NULL) ? bias[f] : 0;
        for (int oh = 0; oh < g.OH; oh++) {
            Range rows = inside(oh * g.SH - g.PH, g.DH, g.H, g.KH);  // the kernel rows p inside the input
            for (int ow0 = 0; ow0 < g.OW; ow0 += INT8_CONV_OW_BLOCK) {
                int count = g.OW - ow0 < INT8_CONV_OW_BLOCK ? g.OW - ow0 : INT8_CONV_OW_BLOCK;
                for (int o = 0; o < count; o++) {
                    acc[o] = b;
                }
                for (int k = 0; k < g.KW; k++) {  // integer sums are exact: any order gives the same acc
                    int iw0 = k * g.DW - g.PW;  // the input column read by output column 0
                    Range cols = inside(iw0 + ow0 * g.SW, g.SW, g.W, count);  // the block's columns inside
                    if (cols.begin >= cols.end) continue;
                    int first = iw0 + (ow0 + cols.begin) * g.SW;  // the input column of the first of them
                    for (int c = 0; c < g.C; c++) {
                        const int8_t* w_fc = weight + (f * g.C + c) * g.KH * g.KW;
                        for (int p = rows.begin; p < rows.end; p++) {
                            int32_t w = w_fc[p * g.KW + k];
                            const int8_t* x = inp + (c * g.H + oh * g.SH - g.PH + p * g.DH) * g.W + first;
                            for (int o = cols.begin; o < cols.end; o++, x += g.SW) {
                                acc[o] += w * ((int32_t)*x - q.in_zero_point);
                            }
                        }
                    }
                }
                for (int o = 0; o < count; o++) {
                    out_f[oh * g.OW + ow0 + o] = int8_output(acc[o], multiplier[f], shift[f], q);
                }
            }
        }
    }
}

// inp is (D), weight is (U, D), bias is (U) or NULL, multiplier and shift are (U) -> out is (U):
//   out[u] = int8_output(bias[u] + sum over d of weight[u][d] * (inp[d] - in_zero_point), multiplier[u], shift[u])
CNNC_KERNEL void int8_dense_forward(int8_t* restrict out, const int8_t* restrict inp, const int8_t* restrict weight,
                                    const int32_t* restrict bias, const int32_t* restrict multiplier,
                                    const int32_t* restrict shift, Dense g, Int8Requant q)
{
    for (int u = 0; u < g.U; u++) {
        const int8_t* w_u = weight + u * g.D;
        int32_t acc = (bias != NULL) ? bias[u] : 0;
        for (int d = 0; d < g.D; d++) {
            acc += (int32_t)w_u[d] * ((int32_t)inp[d] - q.in_zero_point);
        }
        out[u] = int8_output(acc, multiplier[u], shift[u], q);
    }
}

// An unfolded batch norm sums in units of 2^-INT8_AFFINE_FRACTION output steps (AFFINE_FRACTION in cnnc/quantize.py).
#define INT8_AFFINE_FRACTION 8

// The sizes of a per-channel affine map: C channels of S values each (S = 1 after a dense layer).
typedef struct {
    int C, S;
} Int8Affine;

// inp is (C, S), multiplier, shift and offset are (C) -> out is (C, S): y = a[c] x + b[c] per channel, inference
// batch norm that folds into no layer (a = gamma / sqrt(var + eps), b = beta - mean a). In units of
// 2^-INT8_AFFINE_FRACTION output steps,
//   v = int8_requantize(inp[c][s] - in_zero_point, multiplier[c], shift[c]) + offset[c], saturated to int32
//   (the factor a[c] s_in / s_out 2^INT8_AFFINE_FRACTION, the multiplier negative when a[c] is; the offset
//   b[c] / s_out 2^INT8_AFFINE_FRACTION, rounded);
//   out[c][s] = clamp(out_zero_point + int8_rounding_divide_by_pot(v, INT8_AFFINE_FRACTION), act_min, act_max),
// act_min and act_max the clamp of a relu or relu6 folded into it.
CNNC_KERNEL void int8_affine_forward(int8_t* restrict out, const int8_t* restrict inp,
                                     const int32_t* restrict multiplier, const int32_t* restrict shift,
                                     const int32_t* restrict offset, Int8Affine g, Int8Requant q)
{
    for (int c = 0; c < g.C; c++) {
        const int8_t* inp_c = inp + c * g.S;
        int8_t* out_c = out + c * g.S;
        for (int s = 0; s < g.S; s++) {
            int64_t v = (int64_t)int8_requantize((int32_t)inp_c[s] - q.in_zero_point, multiplier[c], shift[c]);
            v += offset[c];
            if (v > INT32_MAX) v = INT32_MAX;
            if (v < INT32_MIN) v = INT32_MIN;
            int64_t y = (int64_t)int8_rounding_divide_by_pot((int32_t)v, INT8_AFFINE_FRACTION) + q.out_zero_point;
            if (y < q.act_min) y = q.act_min;
            if (y > q.act_max) y = q.act_max;
            out_c[s] = (int8_t)y;
        }
    }
}

// inp is (C, H, W) -> out is (C, OH, OW): the largest value of each window (clipped to the input: padding
// never wins). The encoding is kept.
CNNC_KERNEL void int8_maxpool2d_forward(int8_t* restrict out, const int8_t* restrict inp, Pool2d g)
{
    for (int c = 0; c < g.C; c++) {
        const int8_t* inp_c = inp + c * g.H * g.W;
        int8_t* out_c = out + c * g.OH * g.OW;
        for (int oh = 0; oh < g.OH; oh++) {
            Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
            for (int ow = 0; ow < g.OW; ow++) {
                Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                int8_t best = INT8_MIN;
                for (int ih = rows.begin; ih < rows.end; ih++) {
                    for (int iw = cols.begin; iw < cols.end; iw++) {
                        int8_t v = inp_c[ih * g.W + iw];
                        best = v > best ? v : best;
                    }
                }
                out_c[oh * g.OW + ow] = best;
            }
        }
    }
}

// inp is (C, H, W) -> out is (C, OH, OW): zero_point + the sum of (inp - zero_point) over the window divided
// by KH*KW (padded cells count, as real 0), rounded half away from zero. The encoding is kept.
CNNC_KERNEL void int8_avgpool2d_forward(int8_t* restrict out, const int8_t* restrict inp, Pool2d g,
                                        int32_t zero_point)
{
    for (int c = 0; c < g.C; c++) {
        const int8_t* inp_c = inp + c * g.H * g.W;
        int8_t* out_c = out + c * g.OH * g.OW;
        for (int oh = 0; oh < g.OH; oh++) {
            Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
            for (int ow = 0; ow < g.OW; ow++) {
                Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                int32_t total = 0;
                for (int ih = rows.begin; ih < rows.end; ih++) {
                    for (int iw = cols.begin; iw < cols.end; iw++) {
                        total += (int32_t)inp_c[ih * g.W + iw] - zero_point;
                    }
                }
                int32_t v = int8_rounding_divide(total, g.KH * g.KW) + zero_point;
                out_c[oh * g.OW + ow] = (int8_t)(v < INT8_MIN ? INT8_MIN : v > INT8_MAX ? INT8_MAX : v);
            }
        }
    }
}

// inp is (C, HW) -> out is (C): each channel's rounded mean, as int8_avgpool2d_forward over the whole plane.
CNNC_KERNEL void int8_global_avgpool_forward(int8_t* restrict out, const int8_t* restrict inp, GlobalAvgPool g,
                                             int32_t zero_point)
{
    for (int c = 0; c < g.C; c++) {
        const int8_t* inp_c = inp + c * g.HW;
        int64_t total = 0;
        for (int i = 0; i < g.HW; i++) {
            total += (int32_t)inp_c[i] - zero_point;
        }
        int64_t mean = total >= 0 ? (total + g.HW / 2) / g.HW : -((-total + g.HW / 2) / g.HW);
        int64_t v = mean + zero_point;
        out[c] = (int8_t)(v < INT8_MIN ? INT8_MIN : v > INT8_MAX ? INT8_MAX : v);
    }
}

// relu not folded into a layer: out[i] = max(inp[i], lo), lo the zero point (real 0). May run in place.
CNNC_KERNEL void int8_clamp_forward(int8_t* out, const int8_t* inp, int8_t lo, int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = inp[i] > lo ? inp[i] : lo;
    }
}

// sigmoid, tanh, leaky_relu: out[i] = table[inp[i] + 128], a table over every int8 input. May run in place.
CNNC_KERNEL void int8_lookup_forward(int8_t* out, const int8_t* inp, const int8_t* restrict table, int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = table[(int)inp[i] + 128];
    }
}

// softmax over the n values: e[i] = exp_table[max - inp[i]] (exp_table[d] = round(2^16 exp(-d * s_in))),
// out[i] = min(255, (256 e[i] + S/2) / S) - 128 with S the sum of e: the output encoding is s = 1/256,
// zp = -128. May run in place.
CNNC_KERNEL void int8_softmax_forward(int8_t* out, const int8_t* inp, const int32_t* restrict exp_table, int n)
{
    int32_t largest = INT8_MIN;
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        largest = inp[i] > largest ? inp[i] : largest;
    }
    for (int i = 0; i < n; i++) {
        total += exp_table[largest - inp[i]];
    }
    for (int i = 0; i < n; i++) {
        int64_t v = ((int64_t)exp_table[largest - inp[i]] * 256 + total / 2) / total;
        out[i] = (int8_t)((v > 255 ? 255 : v) - 128);
    }
}

// The boundary of PREFIX_predict (float). inp is (n) float -> out is (n) int8:
//   out[i] = inp[i] * inverse_scale + zero_point in float32, clamped to [-128, 127] (NaN: -128), rounded half
//   away from zero. Two statements, so that no compiler fuses the multiply and the add.
CNNC_KERNEL void int8_quantize(int8_t* restrict out, const float* restrict inp, float inverse_scale,
                               int32_t zero_point, int n)
{
    for (int i = 0; i < n; i++) {
        float scaled = inp[i] * inverse_scale;
        float v = scaled + (float)zero_point;
        if (!(v >= -128.0f)) v = -128.0f;
        if (v > 127.0f) v = 127.0f;
        out[i] = (int8_t)(v >= 0.0f ? v + 0.5f : v - 0.5f);
    }
}

// inp is (n) int8 -> out is (n) float: (float)(inp[i] - zero_point) * scale.
CNNC_KERNEL void int8_dequantize(float* restrict out, const int8_t* restrict inp, float scale, int32_t zero_point,
                                 int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = (float)((int32_t)inp[i] - zero_point) * scale;
    }
}

#endif
