// int8_graph.h: the int8 kernels of graph models (add, concat) for cnnc's quantised standalone C export.
//
// Operands of a merge (any number) come with encodings of their own (real = s_i * (q - zp_i)), so each is
// rescaled to the output's encoding with int8.h's fixed-point requantisation (a multiplier and a shift per
// factor, gemmlowp's rounding). cnnc/quantize.py (add_int8, concat_int8) is the NumPy twin, bit for bit, and
// derives the constants.
#ifndef CNNC_KERNELS_INT8_GRAPH_H
#define CNNC_KERNELS_INT8_GRAPH_H

#include "int8.h"

// One operand of an add: its data, (n) int8, and its encoding's zero point.
typedef struct {
    const int8_t* data;
    int32_t zero_point;
} Int8AddOperand;

// An add of `count` operands of n elements each: the output's zero point, and the left shift L that keeps the
// rescaled operands precise: 20 (TensorFlow Lite's) up to 16 operands, less beyond, so that the int32 sum
// cannot overflow (cnnc/quantize.py's add_operand_bound proves |rescaled operand| <= floor(255 * 2^L / 2) + 1,
// and add_left_shift picks the largest L <= 20 with count times that <= INT32_MAX).
typedef struct {
    int32_t out_zero_point;
    int left_shift, count, n;
} Int8Add;

// operands is (g.count), each (g.n) int8 -> out is (g.n) int8, out = the sum of the operands in real terms.
// multiplier and shift are (g.count + 1): the factors s_k / (2 max s) of each operand, then 2 max s / (2^L s_out):
//   sum = rescale((x_0[i] - zp_0) * 2^L, 0) + ... + rescale((x_{count-1}[i] - zp_{count-1}) * 2^L, count - 1)
//   out[i] = clamp(zp_out + rescale(sum, count), -128, 127)
CNNC_KERNEL void int8_add_forward(int8_t* restrict out, const Int8AddOperand* restrict operands,
                                  const int32_t* restrict multiplier, const int32_t* restrict shift, Int8Add g)
{
    for (int i = 0; i < g.n; i++) {
        int32_t sum = 0;
        for (int k = 0; k < g.count; k++) {
            const Int8AddOperand* x = &operands[k];
            int32_t centred = ((int32_t)x->data[i] - x->zero_point) * (1 << g.left_shift); // |.| <= 255 * 2^20
            sum += int8_requantize(centred, multiplier[k], shift[k]);
        }
        int64_t v = (int64_t)int8_requantize(sum, multiplier[g.count], shift[g.count]) + g.out_zero_point;
        out[i] = (int8_t)(v < INT8_MIN ? INT8_MIN : v > INT8_MAX ? INT8_MAX : v);
    }
}

// Where one operand sits in a concatenation (OUT, OFFSET, SIZE as merge.h's Concat) and its encoding's
// zero point and the output's.
typedef struct {
    int OUT, OFFSET, SIZE;
    int32_t in_zero_point, out_zero_point;
} Int8Concat;

// inp is (SIZE) int8 -> out[OFFSET : OFFSET + SIZE] of out (OUT), requantised to the output's encoding by the
// factor s_in / s_out (multiplier, shift): out[OFFSET + i] = clamp(zp_out + rescale(inp[i] - zp_in), -128, 127).
CNNC_KERNEL void int8_concat_forward(int8_t* restrict out, const int8_t* restrict inp, int32_t multiplier,
                                     int32_t shift, Int8Concat g)
{
    for (int i = 0; i < g.SIZE; i++) {
        int64_t v = (int64_t)int8_requantize((int32_t)inp[i] - g.in_zero_point, multiplier, shift) + g.out_zero_point;
        out[g.OFFSET + i] = (int8_t)(v < INT8_MIN ? INT8_MIN : v > INT8_MAX ? INT8_MAX : v);
    }
}

// A grouped (depthwise when G = C) convolution: the G groups are int8_conv2d_forward over consecutive slices.
// g is ONE group's geometry (g.C = C/G input channels, g.F = F/G filters); inp is (G * g.C, H, W), weight is
// (G * g.F, g.C, KH, KW), bias, multiplier and shift are (G * g.F) -> out is (G * g.F, OH, OW).
CNNC_KERNEL void int8_conv2d_grouped_forward(int8_t* restrict out, const int8_t* restrict inp,
                                             const int8_t* restrict weight, const int32_t* restrict bias,
                                             const int32_t* restrict multiplier, const int32_t* restrict shift,
                                             Conv2d g, int G, Int8Requant q)
{
    for (int k = 0; k < G; k++) {
        int8_conv2d_forward(out + k * g.F * g.OH * g.OW, inp + k * g.C * g.H * g.W, weight + k * g.F * g.C * g.KH * g.KW,
                            bias != NULL ? bias + k * g.F : NULL, multiplier + k * g.F, shift + k * g.F, g, q);
    }
}

// relu6 not folded into a layer: out[i] = inp[i] clamped to [lo, hi], the int8 values of real 0 and 6 (the
// encoding is kept). May run in place.
CNNC_KERNEL void int8_clamp_range_forward(int8_t* out, const int8_t* inp, int8_t lo, int8_t hi, int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = inp[i] < lo ? lo : inp[i] > hi ? hi : inp[i];
    }
}

#endif
