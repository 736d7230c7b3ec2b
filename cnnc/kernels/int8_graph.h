// int8_graph.h: the int8 kernels of graph models (add, concat) for cnnc's quantised standalone C export.
//
// Operands of a merge come with encodings of their own (real = s_i * (q - zp_i)), so each is rescaled to the
// output's encoding with int8.h's fixed-point requantisation (a multiplier and a shift per factor, gemmlowp's
// rounding). cnnc/quantize.py (add_int8, concat_int8) is the NumPy twin, bit for bit, and derives the constants.
#ifndef CNNC_KERNELS_INT8_GRAPH_H
#define CNNC_KERNELS_INT8_GRAPH_H

#include "int8.h"

// The left shift that keeps add's rescaled operands precise: |(q - zp) * 2^20| < 2^28 fits int32 with room
// for the sum (TensorFlow Lite's choice).
#define INT8_ADD_LEFT_SHIFT 20

// The encodings of an add: both operands' zero points and the output's, and the element count.
typedef struct {
    int32_t a_zero_point, b_zero_point, out_zero_point;
    int n;
} Int8Add;

// a and b are (n) int8 -> out is (n) int8, out = a + b in real terms. multiplier and shift are (3): the factors
// s_a / (2 max(s_a, s_b)), s_b / (2 max(s_a, s_b)) and 2 max(s_a, s_b) / (2^20 s_out):
//   sum = rescale((a[i] - zp_a) * 2^20, 0) + rescale((b[i] - zp_b) * 2^20, 1)
//   out[i] = clamp(zp_out + rescale(sum, 2), -128, 127)
CNNC_KERNEL void int8_add_forward(int8_t* restrict out, const int8_t* restrict a, const int8_t* restrict b,
                                  const int32_t* restrict multiplier, const int32_t* restrict shift, Int8Add g)
{
    for (int i = 0; i < g.n; i++) {
        int32_t a_scaled = int8_requantize(((int32_t)a[i] - g.a_zero_point) * (1 << INT8_ADD_LEFT_SHIFT),
                                           multiplier[0], shift[0]);
        int32_t b_scaled = int8_requantize(((int32_t)b[i] - g.b_zero_point) * (1 << INT8_ADD_LEFT_SHIFT),
                                           multiplier[1], shift[1]);
        int64_t v = (int64_t)int8_requantize(a_scaled + b_scaled, multiplier[2], shift[2]) + g.out_zero_point;
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
