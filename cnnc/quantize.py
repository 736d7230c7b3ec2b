"""int8 post-training quantisation and the NumPy int8 reference: `cnnc export --quantize int8`, `cnnc eval --quantize`.

    q = calibrate(model, x_calibration)          # model: a float32 cnnc Model with trained weights
    q.forward_q(x_int8) -> int8 outputs           # exactly the integer arithmetic of the exported C
    q.forward(x_float) -> float32 outputs          # quantise the input, forward_q, dequantise the output

The scheme is TensorFlow Lite's (and CMSIS-NN's):
  weights      int8, symmetric (zero point 0), one scale per output channel (conv filter, dense unit):
               s_w[f] = max|w[f]| / 127, w_q = round(w / s_w) in [-127, 127]; an all-zero channel gets s_w = 1.
  biases       int32 at the scale of the product, s_x * s_w[f]: b_q = round(b / (s_x * s_w[f])).
  activations  int8, per tensor, asymmetric: real = s * (q - zp). s and zp come from the range [lo, hi] seen
               in calibration (min/max, or percentiles), widened to hold 0 so that 0 (the padding) is exact;
               a zero range (a tensor that was always 0) gets s = 1.
  conv, dense  int32 accumulation acc = b_q[f] + sum w_q * (x_q - zp_x), then requantisation by the real
               factor M[f] = s_x * s_w[f] / s_y, held as an int32 multiplier m in [2^30, 2^31) and a shift e
               (M = m * 2^(e - 31)): y_q = clamp(zp_y + RDBP(SRDHM(x * 2^max(e, 0), m), max(-e, 0))),
               SRDHM the saturating rounding doubling high multiply, RDBP the rounding divide by a power of two
               (gemmlowp's). One difference from TFLite: the left shift of a positive e saturates to int32
               instead of overflowing (undefined behaviour in C).
The layer kinds, each the same in the C (kernels/int8.h) and here:
  relu (fused, or standalone right after a conv/dense)  folded into the layer: its output range is calibrated
               after the relu, and the requantised value is clamped from below at zp_y (real 0).
  relu (elsewhere)  a clamp at the tensor's zero point; the scale is kept.
  maxpool (ceil too), global_maxpool, channel_shuffle  on int8 directly; the scale is kept.
  avgpool, global_avgpool  the sum of (x_q - zp) over the window (padding counts as real 0, PyTorch's
               convention) divided by the window area (with ceil=true or count_pad=false: the float kernel's
               divisor of each window), rounded half away from zero; the scale is kept.
  sigmoid, tanh, leaky_relu, silu, hardswish, elu, selu, hardsigmoid  a 256-entry int8 lookup table (computed
               here, in float64, at export time). sigmoid's output has s = 1/256, zp = -128; hardsigmoid's
               s = 1/255, zp = -128; tanh's s = 1/128, zp = 0; the others' are calibrated.
  conv_transpose1d/2d  like conv: per-output-channel int8 weights (PyTorch's (C, F/G, *kernel) layout), int32
               sums (each output gathering its taps), the same requantisation.
  relu6        like relu, also clamped at the int8 value of real 6.
  grouped conv each group an ungrouped conv over its slice of channels and filters.
  softmax      integer: e[i] = T[max_j x_q[j] - x_q[i]], a 256-entry int32 table T[d] = round(2^16 exp(-d s_x)),
               then y_q[i] = min(255, (256 e[i] + S/2) / S) - 128 with S = sum e (int64, exact integer division);
               the output has s = 1/256, zp = -128.
  log_softmax  integer: softmax's table T for S = sum T[max - x_q], a fixed-point log2(S) (20 fraction bits,
               by repeated squaring), distance = (max - x_q) * round(2^20 s_x / ln 2) + log2(S) - 16 * 2^20,
               y_q = zp_y - the distance requantised by ln 2 / (2^20 s_y); the output range is calibrated.
  lrn          float64 between int8 tensors (the one layer that is not integer): the exact int32 sum of
               squares of (x_q - zp) over the channel window, v = (x_q - zp) * (s_x / s_y) *
               pow(k + alpha/size * s_x^2 * sum, -beta), rounded half away from zero, + zp_y; pow is the C
               library's here too (math.pow), so the reference stays bit for bit the C.
  flatten, dropout  nothing (dropout is the identity at inference).
  batchnorm    folded before quantising (float64, folded_linear_params) into the convolution, transposed
               convolution or dense layer before it, when that has no fused activation and nothing else reads it.
               Any other (on the input, after pooling, add, concat, an activation, ...) is a per-channel affine
               map y = a_c x + b_c (a_c = gamma / sqrt(var + eps), b_c = beta - mean a_c) in integers, in units
               of 2^-8 output steps: v = requantize(x_q - zp_x, m_c, e_c) + offset_c (int32, saturated), the
               factor a_c s_x / s_y * 2^8 a multiplier (negated when a_c < 0) and a shift, the offset
               round(b_c / s_y * 2^8); y_q = clamp(zp_y + RDBP(v, 8)); a relu/relu6 after it folds into the clamp.
  add          n operands: each (x_q - zp_i) * 2^L rescaled by s_i / (2 max s), summed in int32, the sum rescaled
               by 2 max s / (2^L s_out) (TensorFlow Lite's, L = 20, for up to 16 operands; more shift less, so
               that the int32 sum cannot overflow: add_left_shift); concat: each operand requantised by s_i / s_out.
Graphs: every tensor has its own encoding (by name); flatten, dropout and a folded batch norm share their
input's data and encoding.
Float arithmetic is used, beyond lrn, only at the boundary: PREFIX_predict's quantisation of the input
(q = round_half_away(x * (1/s) + zp) in float32, clamped) and dequantisation of the output (s * (q - zp)).

The NumPy reference computes the integer sums in float64 (every partial sum is an integer below 2^53, so
exact in any order) and everything else in int64 with the C's rounding, so it is bit for bit the C.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import frexp, prod

import numpy as np

from .diagnostics import CnncError
from .ir import ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, CONV_TRANSPOSE_KINDS, MAXPOOL_KINDS, Layer, Network

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights never use -128
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DEFAULT_CALIBRATION_SAMPLES = 300
SOFTMAX_EXP_ONE_BITS = 16
SOFTMAX_EXP_ONE = 1 << SOFTMAX_EXP_ONE_BITS  # T[0], exp(0), in the softmax table (and log_softmax's)
ALIAS_KINDS = ("flatten", "dropout")
LOOKUP_KINDS = ("sigmoid", "tanh", "leaky_relu", "silu", "hardswish", "elu", "selu", "hardsigmoid")
LINEAR_KINDS = CONV_KINDS + CONV_TRANSPOSE_KINDS + ("dense",)  # int8 weights, int32 sums, requantised
LOG2_FRACTION = 20  # log_softmax's fixed-point log2 has 20 binary digits after the point (kernels/int8_extra.h)
SCHEMES = ("int8",)  # --quantize
CLAMP_KINDS = ("relu", "relu6")  # activations that are a clamp of the int8 value
ADD_LEFT_SHIFT = 20  # int8 add scales each operand's (x - zp) by 2^20 before rescaling (TensorFlow Lite's), or less
AFFINE_FRACTION = 8  # an unfolded batch norm sums in units of 2^-8 output steps (INT8_AFFINE_FRACTION, kernels/int8.h)


# ---- quantisation parameters ----------------------------------------------------------------------
@dataclass(frozen=True)
class QParams:
    """A tensor's int8 encoding: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def inverse_scale32(self) -> np.float32:
        return np.float32(1.0 / self.scale)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float -> int8 exactly as kernels/int8.h's int8_quantize: float32 x * (1/s) + zp, clamped to
        [-128, 127] (NaN -> -128), rounded half away from zero."""
        scaled = np.asarray(x, np.float32) * self.inverse_scale32()
        v = scaled + np.float32(self.zero_point)
        v = np.where(v >= np.float32(INT8_MIN), v, np.float32(INT8_MIN))  # also NaN -> -128
        v = np.minimum(v, np.float32(INT8_MAX))
        half = np.float32(0.5)
        rounded = np.where(v >= 0, np.trunc(v + half), np.trunc(v - half))
        return rounded.astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """int8 -> float32 as int8_dequantize: (float)(q - zp) * s."""
        return (np.asarray(q, np.int32) - self.zero_point).astype(np.float32) * np.float32(self.scale)


def choose_qparams(lo: float, hi: float) -> QParams:
    """The per-tensor scale and zero point for values in [lo, hi], the range widened to hold 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CnncError(f"calibration saw a non-finite value (range [{lo}, {hi}]); check the weights and the data")
    if hi == lo:  # always 0: any scale represents it exactly
        return QParams(1.0, 0)
    scale = float(np.float32((hi - lo) / (INT8_MAX - INT8_MIN)))
    if scale <= 0.0:  # a range so small that float32 rounds its scale to 0
        return QParams(1.0, 0)
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return QParams(scale, zero_point)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """real >= 0 -> (multiplier, shift) with real ~= multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).
    Factors below 2^-32 become (0, 0) (everything requantises to the zero point); factors of 2^30 or more
    saturate to (2^31 - 1, 30)."""
    if not real > 0.0:
        return 0, 0
    mantissa, exponent = frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    multiplier = int(round(mantissa * (1 << 31)))
    if multiplier == 1 << 31:
        multiplier //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    if exponent > 30:
        return INT32_MAX, 30
    return multiplier, exponent


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values: round(a * b / 2^31), ties upward (the
    nudge, then division truncating toward zero); INT32_MIN * INT32_MIN saturates to INT32_MAX."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))  # C's truncating division by 2^31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero (0 <= exponent <= 31)."""
    x, exponent = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """x * multiplier * 2^(shift - 31), rounded, as int8_requantize in kernels/int8.h (int32 in, int32 out)."""
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = np.clip(x * (np.int64(1) << left), INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def requantize(acc: np.ndarray, multiplier, shift, out: QParams, act_min: int, act_max: int = INT8_MAX) -> np.ndarray:
    """int32 accumulators -> int8: zp_out + the scaled value, clamped to [act_min, act_max].
    multiplier, shift broadcast against acc (per channel: shaped to acc's channel axis)."""
    scaled = multiply_by_quantized_multiplier(acc, multiplier, shift)
    return np.clip(scaled + out.zero_point, act_min, act_max).astype(np.int8)


def rounding_divide(total: np.ndarray, count) -> np.ndarray:
    """total / count (count > 0, a number or an array broadcasting against total) rounded half away from zero,
    with C's truncating division (int8_rounding_divide)."""
    total = np.asarray(total, np.int64)
    magnitude = (np.abs(total) + count // 2) // count
    return np.where(total >= 0, magnitude, -magnitude)


# ---- the quantised network --------------------------------------------------------------------------
@dataclass
class QuantStep:
    """One int8 operation, keyed like a statement of export_c's memory plan: key = (plan op, layer index),
    plan op "compute" for conv/dense/pooling, else the activation's name (fused or standalone).

    op: "conv", "conv_transpose", "dense", "affine" (an unfolded batch norm), "maxpool", "avgpool", "global_avgpool",
        "global_maxpool", "channel_shuffle", "lrn", "clamp" (relu), "lookup" (sigmoid, tanh, leaky_relu, silu,
        hardswish, elu, selu, hardsigmoid), "softmax", "log_softmax", "add", "concat", or "none" (a relu folded
        into the layer before it).
    inp, out: the encodings of the tensor read and the tensor written.
    weight (int8), bias (int32 or None), multiplier and shift (int32, one per output channel): conv and dense;
    affine: multiplier, shift and bias (the offset, in 2^-AFFINE_FRACTION output steps) per channel, no weight.
    act_min, act_max: the clamp of conv/dense outputs (act_min = zp for a folded relu) and of "clamp".
    table: int8 (256,) for "lookup", int32 (256,) for "softmax" and "log_softmax", indexed as kernels/int8.h does.
    constants: the scalars of lrn's and log_softmax's kernel structs (Int8Lrn, Int8LogSoftmax), by field name;
    add's left shift ("left_shift", Int8Add)."""

    op: str
    key: tuple[str, int]
    layer: Layer
    inp: QParams
    out: QParams
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    act_min: int = INT8_MIN
    act_max: int = INT8_MAX
    table: np.ndarray | None = None
    operands: tuple[QParams, ...] = ()  # add and concat: every operand's encoding (inp is the first's)
    constants: dict = field(default_factory=dict)

    def forward(self, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        """x: (N, *layer.in_shape) int8 for compute ops, (N, *layer.out_shape) otherwise -> int8 (N, *out_shape);
        more: add's and concat's further operands."""
        N, layer = x.shape[0], self.layer
        if self.op == "add":
            return add_int8([x, *more], self).reshape(N, *layer.out_shape)
        if self.op == "concat":
            return concat_int8([x, *more], self).reshape(N, *layer.out_shape)
        if self.op == "conv":
            return conv_int8(x.reshape(N, *layer.in_shape), self).reshape(N, *layer.out_shape)
        if self.op == "conv_transpose":
            return conv_transpose_int8(x.reshape(N, *layer.in_shape), self).reshape(N, *layer.out_shape)
        if self.op == "dense":
            return dense_int8(x.reshape(N, *layer.in_shape), self)
        if self.op == "affine":
            return affine_int8(x.reshape(N, *layer.in_shape), self)
        if self.op in ("maxpool", "avgpool"):
            return pool_int8(x.reshape(N, *layer.in_shape), self).reshape(N, *layer.out_shape)
        if self.op == "global_avgpool":
            total = (x.reshape(N, layer.in_shape[0], -1).astype(np.int64) - self.inp.zero_point).sum(axis=2)
            count = prod(layer.in_shape[1:])
            return np.clip(rounding_divide(total, count) + self.inp.zero_point, INT8_MIN, INT8_MAX).astype(np.int8)
        if self.op == "global_maxpool":
            return x.reshape(N, layer.in_shape[0], -1).max(axis=2)
        if self.op == "channel_shuffle":
            from .backends.numpy_backend import channel_shuffle_forward

            return channel_shuffle_forward(x.reshape(N, *layer.in_shape), layer.groups)
        if self.op == "lrn":
            return lrn_int8(x.reshape(N, *layer.in_shape), self)
        if self.op == "clamp":
            return np.clip(x, self.act_min, self.act_max).astype(np.int8)
        if self.op == "lookup":
            return self.table[x.astype(np.int64) - INT8_MIN]
        if self.op == "softmax":
            return softmax_int8(x, self.table)
        if self.op == "log_softmax":
            return log_softmax_int8(x, self.table, self.constants, self.out)
        if self.op == "none":
            return x
        raise AssertionError(f"quantize: unhandled op {self.op!r}")


@dataclass
class QuantizedModel:
    """A network with int8 weights and the encodings of its input, output and every tensor between."""

    network: Network
    input: QParams
    output: QParams
    steps: list[QuantStep]
    calibration: dict = field(default_factory=dict)  # samples, method

    def forward_q(self, xq: np.ndarray) -> np.ndarray:
        """xq: int8 (N, *input_shape) -> int8 (N, *output_shape), the exported PREFIX_predict_q."""
        x = np.asarray(xq)
        if x.dtype != np.int8:
            raise ValueError(f"forward_q takes int8 inputs, got {x.dtype}")
        network = self.network
        aliases = tensor_aliases(network)
        values = {network.input_name: x.reshape(x.shape[0], *network.input_shape)}  # by the tensor's data
        for step in self.steps:
            layer = step.layer
            if step.key[0] == "compute":
                y = step.forward(*(values[aliases.get(name, name)] for name in layer.inputs))
            else:  # an activation: of the layer's own output (fused) or of its input (standalone)
                source = layer.name if layer.kind not in ACTIVATIONS else layer.inputs[0]
                y = step.forward(values[aliases.get(source, source)])
            values[layer.name] = y
        last = network.layers[-1].name if network.layers else network.input_name
        y = values[aliases.get(last, last)]
        return y.reshape(y.shape[0], *network.output_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: float (N, *input_shape) -> float32 (N, *output_shape), the exported PREFIX_predict."""
        return self.output.dequantize(self.forward_q(self.input.quantize(x)))

    def step(self, key: tuple[str, int]) -> QuantStep:
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(key)


def conv_int8(x: np.ndarray, s: QuantStep) -> np.ndarray:
    """x: int8 (N, C, *spatial) -> y: int8 (N, F, *out_spatial); int8_conv2d_forward."""
    from .backends.numpy_backend import as_2d, correlate, geometry_2d, pad

    layer = s.layer
    _, stride, dilation, pad_before, pad_after = geometry_2d(layer)
    centred = as_2d(x.astype(np.float64) - s.inp.zero_point, layer.spatial_dims)  # padding is real 0: x - zp = 0
    w = as_2d(s.weight.astype(np.float64), layer.spatial_dims)
    padded = pad(centred, pad_before, pad_after)
    G, CG, FG = layer.groups, layer.in_shape[0] // layer.groups, layer.out_shape[0] // layer.groups
    acc = np.concatenate([correlate(padded[:, k * CG:(k + 1) * CG], w[k * FG:(k + 1) * FG], stride, dilation)
                          for k in range(G)], axis=1)  # (N, F, OH, OW), exact integers; group k by group k
    acc = acc.astype(np.int64)
    if s.bias is not None:
        acc += s.bias.astype(np.int64)[:, None, None]
    channel = (slice(None), None, None)
    return requantize(acc, s.multiplier[channel], s.shift[channel], s.out, s.act_min, s.act_max)


def dense_int8(x: np.ndarray, s: QuantStep) -> np.ndarray:
    """x: int8 (N, D) -> y: int8 (N, U); int8_dense_forward."""
    acc = ((x.astype(np.float64) - s.inp.zero_point) @ s.weight.astype(np.float64).T).astype(np.int64)
    if s.bias is not None:
        acc += s.bias.astype(np.int64)
    return requantize(acc, s.multiplier, s.shift, s.out, s.act_min, s.act_max)


def conv_transpose_int8(x: np.ndarray, s: QuantStep) -> np.ndarray:
    """x: int8 (N, C, *spatial) -> y: int8 (N, F, *out_spatial); int8_conv_transpose2d_forward (kernels/int8_extra.h):
    the float backend's transposed convolution of x - zp with the int8 weights (exact integers in float64), plus
    the int32 bias, requantised per output channel."""
    from .backends.numpy_backend import as_2d, geometry_2d, grouped_conv_transpose_forward

    layer = s.layer
    _, stride, dilation, pad_before, pad_after = geometry_2d(layer)
    output_padding = (0, *layer.output_padding) if layer.spatial_dims == 1 else layer.output_padding
    centred = as_2d(x.astype(np.float64) - s.inp.zero_point, layer.spatial_dims)
    w = as_2d(s.weight.astype(np.float64), layer.spatial_dims)
    acc = grouped_conv_transpose_forward(centred, w, None, layer.groups, stride, dilation, pad_before, pad_after,
                                         output_padding).astype(np.int64)  # (N, F, OH, OW)
    if s.bias is not None:
        acc += s.bias.astype(np.int64)[:, None, None]
    channel = (slice(None), None, None)
    return requantize(acc, s.multiplier[channel], s.shift[channel], s.out, s.act_min, s.act_max)


def affine_int8(x: np.ndarray, s: QuantStep) -> np.ndarray:
    """x: int8 (N, C, *spatial) or (N, C) -> int8 like x; int8_affine_forward (kernels/int8.h), a batch norm that
    folds into no layer. In units of 2^-AFFINE_FRACTION output steps, per channel c:
    v = requantize(x - zp_in, m_c, e_c) + offset_c, saturated to int32; y = zp_out + RDBP(v, AFFINE_FRACTION),
    clamped to [act_min, act_max]."""
    N, C = x.shape[0], x.shape[1]
    centred = x.reshape(N, C, -1).astype(np.int64) - s.inp.zero_point  # (N, C, S)
    scaled = multiply_by_quantized_multiplier(centred, s.multiplier[:, None], s.shift[:, None])
    total = np.clip(scaled + s.bias.astype(np.int64)[:, None], INT32_MIN, INT32_MAX)
    v = rounding_divide_by_pot(total, AFFINE_FRACTION) + s.out.zero_point
    return np.clip(v, s.act_min, s.act_max).astype(np.int8).reshape(x.shape)


def pool_int8(x: np.ndarray, s: QuantStep) -> np.ndarray:
    """x: int8 (N, C, *spatial) -> int8 (N, C, *out_spatial): max, or the rounded average of (x - zp) + zp with
    the float backend's divisor per window (the window area, or fewer cells with ceil=true or count_pad=false:
    int8_avgpool2d_forward and int8_avgpool2d_clipped_forward)."""
    from .backends.numpy_backend import NumpyModel, as_2d, pad, windows

    layer = s.layer
    kernel, stride, pad_before, pad_after = NumpyModel._pool_geometry(layer)  # pad_after reaches ceil's windows
    x2 = as_2d(x, layer.spatial_dims).astype(np.int64)
    if s.op == "maxpool":
        return windows(pad(x2, pad_before, pad_after, INT8_MIN - 1), kernel, stride).max(axis=(4, 5)).astype(np.int8)
    zp = s.inp.zero_point
    total = windows(pad(x2 - zp, pad_before, pad_after, 0), kernel, stride).sum(axis=(4, 5))
    divisors = NumpyModel._pool_divisors(layer).astype(np.int64)  # (OH, OW)
    return np.clip(rounding_divide(total, divisors) + zp, INT8_MIN, INT8_MAX).astype(np.int8)


def add_int8(xs: list[np.ndarray], s: QuantStep) -> np.ndarray:
    """xs: n int8 (N, ...) of one shape -> int8 (N, size); int8_add_forward (kernels/int8_graph.h), L = the
    step's left shift: y = zp_out + rescale(sum of rescale((x_i - zp_i) * 2^L, m_i, e_i), m_out, e_out), clamped.
    The sum is int64 here and int32 in the C: add_left_shift's bound keeps it inside int32, so they agree."""
    total = 0
    for x, q, m, e in zip(xs, s.operands, s.multiplier, s.shift):
        centred = (x.reshape(x.shape[0], -1).astype(np.int64) - q.zero_point) * (1 << s.constants["left_shift"])
        total = total + multiply_by_quantized_multiplier(centred, m, e)
    scaled = multiply_by_quantized_multiplier(total, s.multiplier[-1], s.shift[-1])
    return np.clip(scaled + s.out.zero_point, INT8_MIN, INT8_MAX).astype(np.int8)


def concat_int8(xs: list[np.ndarray], s: QuantStep) -> np.ndarray:
    """xs: int8 (N, C_i, ...) -> int8 (N, size), each operand requantised to the output's encoding:
    zp_out + rescale(x - zp_i, m_i, e_i), clamped; int8_concat_forward."""
    parts = [requantize(x.reshape(x.shape[0], -1).astype(np.int64) - q.zero_point, m, e, s.out, INT8_MIN)
             for x, q, m, e in zip(xs, s.operands, s.multiplier, s.shift)]
    return np.concatenate(parts, axis=1)


def softmax_int8(x: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """x: int8 (N, *shape) -> int8 (N, *shape), softmax over each sample's elements; int8_softmax_forward."""
    flat = x.reshape(x.shape[0], -1).astype(np.int64)
    e = exp_table.astype(np.int64)[flat.max(axis=1, keepdims=True) - flat]
    total = e.sum(axis=1, keepdims=True)
    y = np.minimum((e * 256 + total // 2) // total, 255) - 128
    return y.astype(np.int8).reshape(x.shape)


def log2_fixed(total: np.ndarray) -> np.ndarray:
    """log2(total) * 2^LOG2_FRACTION rounded down, total >= 1 (int64, below 2^53), as int8_log2 computes it in
    integers: the highest set bit, then a binary digit per squaring of the Q30 mantissa."""
    total = np.asarray(total, np.int64)
    exponent = (np.frexp(total.astype(np.float64))[1] - 1).astype(np.int64)  # exact: total < 2^53
    mantissa = np.where(exponent >= 30, total >> np.maximum(exponent - 30, 0), total << np.maximum(30 - exponent, 0))
    log2 = exponent << LOG2_FRACTION
    for bit in range(LOG2_FRACTION - 1, -1, -1):
        mantissa = (mantissa * mantissa) >> 30
        reached_two = mantissa >= (1 << 31)
        mantissa = np.where(reached_two, mantissa >> 1, mantissa)
        log2 = log2 + np.where(reached_two, np.int64(1) << bit, 0)
    return log2


def log_softmax_int8(x: np.ndarray, exp_table: np.ndarray, constants: dict, out: QParams) -> np.ndarray:
    """x: int8 (N, *shape) -> int8 (N, *shape), log_softmax over each sample's elements; int8_log_softmax_forward:
    distance = (max - x) * step + log2_fixed(sum of exp_table[max - x]) - 16 * 2^20, saturated at INT32_MAX,
    y = zp_out - requantised distance, clamped."""
    flat = x.reshape(x.shape[0], -1).astype(np.int64)
    d = flat.max(axis=1, keepdims=True) - flat
    total = exp_table.astype(np.int64)[d].sum(axis=1, keepdims=True)
    log_total = log2_fixed(total) - (SOFTMAX_EXP_ONE_BITS << LOG2_FRACTION)
    distance = np.minimum(d * constants["step"] + log_total, INT32_MAX)
    scaled = multiply_by_quantized_multiplier(distance, constants["multiplier"], constants["shift"])
    return np.clip(out.zero_point - scaled, INT8_MIN, INT8_MAX).astype(np.int8).reshape(x.shape)


def lrn_int8(x: np.ndarray, s: QuantStep) -> np.ndarray:
    """x: int8 (N, C, *spatial) -> int8 like x; int8_lrn_forward (kernels/int8_extra.h), in float64 between int8
    tensors: v = (x - zp_in) * rescale * pow(k + scaled_alpha * sum of squares, -beta), rounded half away from
    zero (v clamped to [-256, 256], NaN to -256) + zp_out, clamped. pow is the C library's (math.pow), as in C."""
    from math import pow as c_pow

    from .backends.numpy_backend import channel_window_sum

    c, size = s.constants, s.layer.lrn_size
    centred = x.astype(np.int64) - s.inp.zero_point
    squares = channel_window_sum(centred * centred, size // 2, (size - 1) // 2)  # exact int64
    base = c["k"] + c["scaled_alpha"] * squares.astype(np.float64)
    values, where = np.unique(base, return_inverse=True)  # base >= k > 0

    def pow_or_inf(value: float) -> float:
        try:
            return c_pow(value, -c["beta"])
        except OverflowError:  # C's pow returns HUGE_VAL
            return float("inf")

    factor = np.array([pow_or_inf(v) for v in values.tolist()], np.float64)[where.reshape(base.shape)]
    v = centred.astype(np.float64) * c["rescale"] * factor
    v = np.where(v >= -256.0, v, -256.0)  # also NaN -> -256
    v = np.minimum(v, 256.0)
    rounded = np.trunc(np.where(v >= 0.0, v + 0.5, v - 0.5)).astype(np.int64)
    return np.clip(rounded + s.out.zero_point, INT8_MIN, INT8_MAX).astype(np.int8)


# ---- building it: weights and calibration ---------------------------------------------------------------
def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w: (F, ...) float -> (int8 (F, ...) in [-127, 127], float64 scales (F,)); an all-zero filter gets scale 1."""
    flat = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    peak = np.abs(flat).max(axis=1)
    scales = np.where(peak > 0, peak / WEIGHT_MAX, 1.0)
    q = np.clip(np.round(flat / scales[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q.reshape(w.shape), scales


def quantize_transposed_weights(w: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """A transposed convolution's w: (C, F/G, *kernel), PyTorch's layout -> (int8 in that layout, float64 scales
    (F,)): one symmetric scale per output channel f = g*F/G + j, over the weights w[c, j] of the channels c of
    group g, as quantize_weights gives a convolution's filters."""
    w = np.asarray(w, np.float64)
    C, Fg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    Cg = C // groups
    by_output = w.reshape(groups, Cg, Fg, *kernel).swapaxes(1, 2).reshape(groups * Fg, Cg, *kernel)  # (F, C/G, ...)
    q, scales = quantize_weights(by_output)
    return q.reshape(groups, Fg, Cg, *kernel).swapaxes(1, 2).reshape(w.shape), scales


def accumulator_bound(layer: Layer) -> int:
    """The largest |sum w_q * (x_q - zp)| of one output: terms per output (at most C/G * the kernel's taps,
    transposed convolutions included) * 127 * 255."""
    terms = layer.in_size if layer.kind == "dense" else prod(layer.kernel) * layer.in_shape[0] // layer.groups
    return terms * WEIGHT_MAX * (INT8_MAX - INT8_MIN)


def linear_step(key, layer: Layer, params: dict, inp: QParams, out: QParams, relu: bool | str,
                bias: bool | None = None) -> QuantStep:
    """conv, transposed conv or dense: per-channel int8 weights, int32 biases, multipliers and shifts. relu: True
    (or "relu") clamps the output at real 0, "relu6" at real 0 and 6. bias: whether params holds a bias for it (a
    convolution with a batch norm folded in has one); by default layer.bias."""
    if layer.kind in CONV_TRANSPOSE_KINDS:
        weight_q, w_scales = quantize_transposed_weights(params[f"{layer.name}.weight"], layer.groups)
    else:
        weight_q, w_scales = quantize_weights(params[f"{layer.name}.weight"])
    headroom = INT32_MAX - accumulator_bound(layer)
    if headroom < 0:
        raise CnncError(f"layer '{layer.name}' sums {accumulator_bound(layer) // (WEIGHT_MAX * 255):,} products per "
                        f"output: its int32 accumulator could overflow, so it cannot be quantised to int8")
    bias_q = None
    if layer.bias if bias is None else bias:
        b = np.asarray(params[f"{layer.name}.bias"], np.float64)
        bias_q = np.clip(np.round(b / (inp.scale * w_scales)), -headroom, headroom).astype(np.int32)
    pairs = [quantize_multiplier(inp.scale * s / out.scale) for s in w_scales]
    multiplier = np.array([m for m, _ in pairs], np.int32)
    shift = np.array([e for _, e in pairs], np.int32)
    act_min = max(INT8_MIN, out.zero_point) if relu else INT8_MIN
    act_max = relu6_max(out) if relu == "relu6" else INT8_MAX
    op = "conv" if layer.kind in CONV_KINDS else "conv_transpose" if layer.kind in CONV_TRANSPOSE_KINDS else "dense"
    return QuantStep(op, key, layer, inp, out, weight_q, bias_q, multiplier, shift, act_min, act_max)


def affine_step(key, layer: Layer, params: dict, buffers: dict, inp: QParams, out: QParams,
                relu: bool | str = False) -> QuantStep:
    """A batch norm that folds into no layer (on the input, after pooling, add, concat, an activation, a layer
    read twice): y = a_c x + b_c per channel (batchnorm_affine), as int8_affine_forward computes it in units of
    2^-AFFINE_FRACTION output steps: the factor a_c s_in / s_out * 2^AFFINE_FRACTION as a multiplier and a shift
    (the multiplier negated when a_c < 0), and the offset round(b_c / s_out * 2^AFFINE_FRACTION) as an int32
    (in `bias`). relu: as linear_step's, a relu or relu6 after it folded into the clamp."""
    a, b = batchnorm_affine(layer, params, buffers)
    pairs = [quantize_multiplier(abs(float(a_c)) * inp.scale / out.scale * (1 << AFFINE_FRACTION)) for a_c in a]
    multiplier = np.array([-m if a_c < 0 else m for (m, _), a_c in zip(pairs, a)], np.int32)
    shift = np.array([e for _, e in pairs], np.int32)
    offset = np.clip(np.round(b / out.scale * (1 << AFFINE_FRACTION)), -INT32_MAX, INT32_MAX).astype(np.int32)
    act_min = max(INT8_MIN, out.zero_point) if relu else INT8_MIN
    act_max = relu6_max(out) if relu == "relu6" else INT8_MAX
    return QuantStep("affine", key, layer, inp, out, bias=offset, multiplier=multiplier, shift=shift,
                     act_min=act_min, act_max=act_max)


def relu6_max(q: QParams) -> int:
    """The int8 value of real 6 in encoding q (round half away from zero), clamped to the int8 range."""
    return int(min(INT8_MAX, np.floor(6.0 / q.scale + 0.5) + q.zero_point))


def lookup_step(key, layer: Layer, kind: str, inp: QParams, out_range: tuple[float, float] | None) -> QuantStep:
    """An elementwise activation as a 256-entry table over every int8 input, in float64. sigmoid, tanh and
    hardsigmoid have fixed output encodings (their ranges are known), the others' are calibrated."""
    x = inp.scale * (np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64) - inp.zero_point)
    if kind == "sigmoid":
        out, y = QParams(1.0 / 256, -128), 1.0 / (1.0 + np.exp(-x))
    elif kind == "tanh":
        out, y = QParams(1.0 / 128, 0), np.tanh(x)
    elif kind == "silu":
        out, y = choose_qparams(*out_range), x / (1.0 + np.exp(-x))
    elif kind == "hardswish":
        out, y = choose_qparams(*out_range), x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    elif kind == "hardsigmoid":  # [0, 1], 1 included (it saturates there): 255 steps
        out, y = QParams(float(np.float32(1.0 / 255)), -128), np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    elif kind in ("elu", "selu"):
        from .backends.numpy_backend import SELU_ALPHA, SELU_SCALE

        elu = np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))
        selu = SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))
        out, y = choose_qparams(*out_range), elu if kind == "elu" else selu
    elif kind == "leaky_relu":
        out, y = choose_qparams(*out_range), np.where(x >= 0, x, layer.slope * x)
    else:
        raise AssertionError(f"quantize: no lookup table for {kind!r}")
    table = np.clip(np.floor(y / out.scale + 0.5) + out.zero_point, INT8_MIN, INT8_MAX).astype(np.int8)
    return QuantStep("lookup", key, layer, inp, out, table=table)


def softmax_exp_table(inp: QParams) -> np.ndarray:
    """int32 (256,): T[d] = round(2^16 exp(-d s_in)), exp of a distance of d input steps below the maximum."""
    d = np.arange(256, dtype=np.float64)
    return np.floor(SOFTMAX_EXP_ONE * np.exp(-d * inp.scale) + 0.5).astype(np.int32)


def softmax_step(key, layer: Layer, inp: QParams) -> QuantStep:
    return QuantStep("softmax", key, layer, inp, QParams(1.0 / 256, -128), table=softmax_exp_table(inp))


def log_softmax_step(key, layer: Layer, inp: QParams, out_range: tuple[float, float]) -> QuantStep:
    """log_softmax in integers (int8_log_softmax_forward): softmax's exp table for the sum, a fixed-point log2
    of it, and one requantisation from log2 units (2^-20) to output steps; the output range is calibrated."""
    out = choose_qparams(*out_range)
    step = int(np.clip(round((1 << LOG2_FRACTION) * inp.scale / np.log(2.0)), 0, INT32_MAX))
    multiplier, shift = quantize_multiplier(np.log(2.0) / ((1 << LOG2_FRACTION) * out.scale))
    return QuantStep("log_softmax", key, layer, inp, out, table=softmax_exp_table(inp),
                     constants={"step": step, "multiplier": multiplier, "shift": shift})


def lrn_step(key, layer: Layer, inp: QParams, out_range: tuple[float, float]) -> QuantStep:
    """lrn in float64 between int8 tensors (int8_lrn_forward); the output range is calibrated."""
    out = choose_qparams(*out_range)
    constants = {"k": float(layer.k), "scaled_alpha": float(layer.alpha) / layer.lrn_size * inp.scale ** 2,
                 "beta": float(layer.beta), "rescale": inp.scale / out.scale}
    return QuantStep("lrn", key, layer, inp, out, constants=constants)


def int8_batchnorm_folds(network: Network) -> dict[str, Layer]:
    """{batch norm layer name: the layer it folds into} for the int8 export: the float export's folds into a
    convolution (export_c.batchnorm_folds) and, under the same conditions (no fused activation, nothing else
    reads the layer's output), into a transposed convolution or a dense layer (batchnorm1d after dense). Every
    other batch norm is a per-channel affine step (affine_step)."""
    from .export_c import batchnorm_folds

    folds = batchnorm_folds(network)
    for layer in network.layers:
        if layer.kind != "batchnorm" or layer.name in folds or layer.inputs[0] == network.input_name:
            continue
        producer = network.layer(layer.inputs[0])
        if (producer.kind in CONV_TRANSPOSE_KINDS + ("dense",) and producer.activation is None
                and network.consumers(producer.name) == (layer,)):
            folds[layer.name] = producer
    return folds


def folded_linear_params(layer: Layer, bn: Layer, params: dict, buffers: dict) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of conv, transposed conv or dense `layer` with inference batch norm `bn` applied, in
    float64 (exact up to rounding): per output channel f, a_f = gamma_f / sqrt(var_f + eps), the weights of f
    times a_f and bias (b_f - mean_f) a_f + beta_f. A convolution's (F, C/G, *kernel) and a dense layer's (U, D)
    weights scale by row (export_c.folded_conv_params, the float export's fold); a transposed convolution's
    (C, F/G, *kernel) by column: output channel f = g F/G + j is w[g C/G : (g+1) C/G, j]."""
    from .export_c import folded_conv_params

    if layer.kind not in CONV_TRANSPOSE_KINDS:
        return folded_conv_params(layer, bn, params, buffers)
    scale, offset = batchnorm_affine(bn, params, buffers)  # a_f and beta_f - mean_f a_f
    weight = np.asarray(params[f"{layer.name}.weight"], np.float64)
    C, Fg, kernel, G = weight.shape[0], weight.shape[1], weight.shape[2:], layer.groups
    by_group = weight.reshape(G, C // G, Fg, *kernel) * scale.reshape(G, 1, Fg, *[1] * len(kernel))
    bias = np.asarray(params[f"{layer.name}.bias"], np.float64) if layer.bias else np.zeros(layer.out_shape[0])
    return by_group.reshape(weight.shape), bias * scale + offset


def batchnorm_affine(bn: Layer, params: dict, buffers: dict) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as y = a_c x + b_c per channel, in float64: a = gamma / sqrt(var + eps),
    b = beta - mean * a. -> (a, b), each (C,)."""
    gamma, beta = (np.asarray(params[f"{bn.name}.{role}"], np.float64) for role in ("weight", "bias"))
    mean, var = (np.asarray(buffers[f"{bn.name}.running_{stat}"], np.float64) for stat in ("mean", "var"))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = gamma / np.sqrt(var + bn.eps)
        b = beta - mean * a
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise CnncError(f"batch norm '{bn.name}': its weights or running statistics give a non-finite scale or "
                        "offset (a negative running_var?); it cannot be quantised")
    return a, b


def check_quantizable(network: Network) -> None:
    """Refuse, naming the layer, what the int8 export cannot quantise: beyond the float export's own limits,
    an add of more than ADD_OPERANDS_MAX operands (whose int32 sum could overflow)."""
    from .export_c import export_refusal

    refusal = export_refusal(network, "int8 quantisation")
    if refusal:
        raise CnncError(f"model '{network.name}': {refusal}")
    supported = LINEAR_KINDS + MAXPOOL_KINDS + AVGPOOL_KINDS + ALIAS_KINDS + LOOKUP_KINDS + \
        ("global_avgpool", "global_maxpool", "add", "concat", "lrn", "channel_shuffle", "relu", "relu6", "softmax",
         "log_softmax", "batchnorm")
    for layer in network.layers:
        if layer.kind == "add" and len(layer.inputs) > ADD_OPERANDS_MAX:
            raise CnncError(f"model '{network.name}': add '{layer.name}' of {len(layer.inputs)} operands cannot be "
                            f"quantised to int8: its int32 sum could overflow past {ADD_OPERANDS_MAX} operands")
        for kind in (layer.kind, layer.activation):
            if kind is not None and kind not in supported:
                raise CnncError(f"model '{network.name}': layer '{layer.name}' ({kind}) cannot be quantised to int8")


def tensor_aliases(network: Network) -> dict[str, str]:
    """{tensor: the tensor whose data it is}: flatten, dropout and a folded batch norm name their input's data
    (followed to the end, so the value is a tensor some step writes, or the input)."""
    folds = int8_batchnorm_folds(network)
    aliases = {}
    for layer in network.layers:
        if layer.kind in ALIAS_KINDS or layer.name in folds:
            source = layer.inputs[0]
            aliases[layer.name] = aliases.get(source, source)
    return aliases


def _folded_relus(network: Network) -> dict[int, int]:
    """{1-based index of a standalone relu: the index of the conv (transposed too), dense or unfolded batch norm
    layer it folds into}: the relu reads (through flatten, dropout or a folded batch norm) the output of such a
    layer without a fused activation, and is the only layer reading that data; the relu becomes that layer's
    clamp."""
    aliases = tensor_aliases(network)
    index = {layer.name: i for i, layer in enumerate(network.layers, 1)}
    readers: dict[str, int] = {}  # data -> how many non-alias layers read it
    for layer in network.layers:
        if layer.name not in aliases:
            for name in layer.inputs:
                readers[aliases.get(name, name)] = readers.get(aliases.get(name, name), 0) + 1
    folded = {}
    for i, layer in enumerate(network.layers, 1):
        if layer.kind not in CLAMP_KINDS:
            continue
        source = aliases.get(layer.inputs[0], layer.inputs[0])
        if source == network.input_name:
            continue
        producer = network.layer(source)
        if producer.kind in LINEAR_KINDS + ("batchnorm",) and producer.activation is None and readers[source] == 1:
            folded[i] = index[source]
    return folded


def observed_ranges(model, x: np.ndarray, percentile: float | None) -> tuple[tuple[float, float], dict]:
    """Run the float model (inference) on x layer by layer. -> (input range, {(layer index, "pre"|"post"):
    (lo, hi)}): "pre" is a conv/dense output before its fused activation, "post" every layer's output."""
    from .backends.numpy_backend import add_forward, batchnorm_forward, concat_forward

    def value_range(v) -> tuple[float, float]:
        v = np.asarray(v, np.float64).ravel()
        if percentile is None:
            return float(v.min()), float(v.max())
        lo, hi = np.percentile(v, [100.0 - percentile, percentile])
        return float(lo), float(hi)

    network = model.network
    last_read = {name: i for i, layer in enumerate(network.layers) for name in layer.inputs}
    values = {network.input_name: x}
    ranges = {}
    first = value_range(x)
    for i, layer in enumerate(network.layers):
        xs = [values[name] for name in layer.inputs]
        if layer.kind == "add":
            y = add_forward(xs)
        elif layer.kind == "concat":
            y = concat_forward(xs)
        elif layer.kind == "batchnorm":
            y = batchnorm_forward(xs[0], *(model.params[f"{layer.name}.{p}"] for p in ("weight", "bias")),
                                  *(model.buffers[f"{layer.name}.running_{s}"] for s in ("mean", "var")),
                                  layer.eps, layer.momentum, False)[0]
        else:
            y, saved = model._layer_forward(layer, xs[0], None)
            if layer.activation is not None:
                ranges[(i + 1, "pre")] = value_range(saved["z"])
        ranges[(i + 1, "post")] = value_range(y)
        values[layer.name] = y
        for name in set(layer.inputs):
            if last_read[name] == i:
                del values[name]
    return first, ranges


def folded_params(network: Network, params: dict, buffers: dict) -> dict:
    """The parameters with every foldable batch norm folded into the convolution, transposed convolution or
    dense layer before it (int8_batchnorm_folds, folded_linear_params: float64)."""
    params = dict(params)
    for bn, layer in int8_batchnorm_folds(network).items():
        params[f"{layer.name}.weight"], params[f"{layer.name}.bias"] = \
            folded_linear_params(layer, network.layer(bn), params, buffers)
    return params


def add_operand_bound(left_shift: int) -> int:
    """The largest |rescaled operand| of an int8 add with this left shift L (0 <= L <= 20):
    floor(255 * 2^L / 2) + 1.

    Proof. An operand's int8 value and zero point are in [-128, 127], so |x - zp| <= 255 and v = (x - zp) * 2^L
    has |v| <= 255 * 2^20 < 2^31 (exact in int32). Its factor f = s_i / (2 max s) is at most 1/2, held as
    F = m * 2^(e - 31) with m in [2^30, 2^31) the rounded mantissa: F <= f (1 + 2^-31) <= (1 + 2^-31) / 2, and
    e <= 0, so int8_requantize shifts nothing left (nothing saturates). It computes SRDHM(v, m), within 1/2 of
    v m / 2^31, then the rounding divide by 2^-e, within 1/2 of its input / 2^-e: the result r has
    |r| <= |v| F + 1/2 + 1/2 <= 255 * 2^(L-1) + 255 * 2^(L-32) + 1 < 255 * 2^(L-1) + 1 + 1/16 (L <= 20). r is
    an integer, so |r| <= floor(255 * 2^(L-1) + 1/16) + 1 = floor(255 * 2^L / 2) + 1. A factor below 2^-32
    ((0, 0)) gives r = 0."""
    return (255 << left_shift) // 2 + 1


def add_left_shift(operands: int) -> int | None:
    """The left shift L of an int8 add of this many operands: the largest L <= ADD_LEFT_SHIFT (20, TensorFlow
    Lite's) for which the int32 sum of the rescaled operands, and so every partial sum, cannot overflow:
    operands * add_operand_bound(L) <= INT32_MAX. 20 up to 16 operands (16 * (255 * 2^19 + 1) = 2139095056),
    19 up to 32, ...; None past ADD_OPERANDS_MAX, where even L = 0 could overflow."""
    for left_shift in range(ADD_LEFT_SHIFT, -1, -1):
        if operands * add_operand_bound(left_shift) <= INT32_MAX:
            return left_shift
    return None


ADD_OPERANDS_MAX = INT32_MAX // add_operand_bound(0)  # 16777215: the most operands an int8 add sums in int32


def add_step(key, layer: Layer, operands: list[QParams], out: QParams) -> QuantStep:
    """int8 add of n operands, TensorFlow Lite's: each operand (x - zp) * 2^L rescaled by s_i / (2 max s),
    summed, and the sum rescaled by 2 max s / (2^L s_out); L = add_left_shift(n) (20 for n <= 16). Two
    operands give TensorFlow Lite's add exactly."""
    left_shift = add_left_shift(len(operands))
    if left_shift is None:
        raise CnncError(f"add '{layer.name}' of {len(operands)} operands cannot be quantised to int8: its int32 "
                        f"sum could overflow past {ADD_OPERANDS_MAX} operands")
    twice_max = 2.0 * max(q.scale for q in operands)
    pairs = [quantize_multiplier(q.scale / twice_max) for q in operands] + \
        [quantize_multiplier(twice_max / ((1 << left_shift) * out.scale))]
    return QuantStep("add", key, layer, operands[0], out, multiplier=np.array([m for m, _ in pairs], np.int32),
                     shift=np.array([e for _, e in pairs], np.int32), operands=tuple(operands),
                     constants={"left_shift": left_shift})


def concat_step(key, layer: Layer, operands: list[QParams], out: QParams) -> QuantStep:
    """int8 concat: each operand requantised to the output's encoding (factor s_i / s_out)."""
    pairs = [quantize_multiplier(q.scale / out.scale) for q in operands]
    return QuantStep("concat", key, layer, operands[0], out, multiplier=np.array([m for m, _ in pairs], np.int32),
                     shift=np.array([e for _, e in pairs], np.int32), operands=tuple(operands))


def calibrate(model, x: np.ndarray, percentile: float | None = None) -> QuantizedModel:
    """Quantise a float cnnc Model (trained weights; any backend) with activation ranges observed on x
    (N, *input_shape): min/max, or the [100 - P, P] percentiles of each tensor's values. Batch norm is folded
    into its convolution before quantising; graphs (from=, add, concat) quantise tensor by tensor."""
    from .backends.numpy_backend import NumpyModel

    network = model.network
    check_quantizable(network)
    if not isinstance(model, NumpyModel):  # calibration reads every layer's output: the NumPy backend's
        numpy_model = NumpyModel(network, "float32")
        numpy_model.load_weights({name: np.asarray(value) for name, value in
                                  {**model.params, **dict(getattr(model, "buffers", None) or {})}.items()})
        model = numpy_model
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or x.shape[1:] != tuple(network.input_shape) or len(x) == 0:
        raise CnncError(f"calibration data has shape {list(x.shape)}; model '{network.name}' takes "
                        f"(N, {', '.join(map(str, network.input_shape))}) with N >= 1")
    if percentile is not None and not 50.0 < percentile <= 100.0:
        raise CnncError(f"--calibration-percentile {percentile:g}: must be above 50 and at most 100 (e.g. 99.99)")
    folds = int8_batchnorm_folds(network)
    params = folded_params(network, model.params, model.buffers)
    input_range, ranges = observed_ranges(model, x, percentile)
    folded = _folded_relus(network)
    folded_into = {conv: relu for relu, conv in folded.items()}  # conv/dense/batchnorm index -> its folded relu
    index_of = {layer.name: i for i, layer in enumerate(network.layers, 1)}
    bn_of = {conv.name: index_of[bn] for bn, conv in folds.items()}  # conv name -> its folded batch norm's index
    encoding = {network.input_name: choose_qparams(*input_range)}
    steps = []
    for index, layer in enumerate(network.layers, 1):
        kind = layer.kind
        inputs = [encoding[name] for name in layer.inputs]
        current = inputs[0]
        if kind in ALIAS_KINDS or layer.name in folds:
            encoding[layer.name] = current
            continue
        if kind in LINEAR_KINDS:
            fused = layer.activation
            with_bias = layer.bias or layer.name in bn_of
            if fused in CLAMP_KINDS or fused is None and index in folded_into:
                relu_index = index if fused in CLAMP_KINDS else folded_into[index]
                clamp = fused or network.layers[relu_index - 1].kind
                out = choose_qparams(*ranges[(relu_index, "post")])
                steps.append(linear_step(("compute", index), layer, params, current, out, relu=clamp, bias=with_bias))
            else:
                out_index = bn_of.get(layer.name, index)  # a folded batch norm's output is what is stored
                out = choose_qparams(*ranges[(index, "pre")] if fused else ranges[(out_index, "post")])
                steps.append(linear_step(("compute", index), layer, params, current, out, relu=False, bias=with_bias))
            current = out
            if fused in CLAMP_KINDS:
                steps.append(QuantStep("none", (fused, index), layer, current, current))
            elif fused is not None:
                steps.append(_activation_step((fused, index), layer, fused, current, ranges[(index, "post")]))
                current = steps[-1].out
        elif kind in MAXPOOL_KINDS + AVGPOOL_KINDS + ("global_avgpool", "global_maxpool", "channel_shuffle"):
            op = "maxpool" if kind in MAXPOOL_KINDS else "avgpool" if kind in AVGPOOL_KINDS else kind
            steps.append(QuantStep(op, ("compute", index), layer, current, current))  # the encoding is kept
        elif kind == "batchnorm":  # folds into no layer: a per-channel affine map
            relu_index = folded_into.get(index)
            out = choose_qparams(*ranges[(relu_index or index, "post")])
            clamp = network.layers[relu_index - 1].kind if relu_index else False
            steps.append(affine_step(("compute", index), layer, model.params, model.buffers, current, out, relu=clamp))
            current = out
        elif kind == "lrn":
            steps.append(lrn_step(("compute", index), layer, current, ranges[(index, "post")]))
            current = steps[-1].out
        elif kind in ("add", "concat"):
            out = choose_qparams(*ranges[(index, "post")])
            steps.append((add_step if kind == "add" else concat_step)(("compute", index), layer, inputs, out))
            current = out
        elif kind in CLAMP_KINDS:
            if index in folded:
                steps.append(QuantStep("none", (kind, index), layer, current, current))
            else:  # relu6 keeps the encoding too: its clamp at real 6 is an int8 bound
                steps.append(QuantStep("clamp", (kind, index), layer, current, current,
                                       act_min=max(INT8_MIN, current.zero_point),
                                       act_max=relu6_max(current) if kind == "relu6" else INT8_MAX))
        elif kind in ACTIVATIONS:
            steps.append(_activation_step((kind, index), layer, kind, current, ranges[(index, "post")]))
            current = steps[-1].out
        else:
            raise AssertionError(f"quantize: unhandled layer kind {kind!r}")
        encoding[layer.name] = current
    last = network.layers[-1].name if network.layers else network.input_name
    return QuantizedModel(network, encoding[network.input_name], encoding[last], steps,
                          {"samples": len(x), "method": "min/max" if percentile is None else f"percentile {percentile:g}"})


def _activation_step(key, layer, kind, inp: QParams, out_range) -> QuantStep:
    if kind == "softmax":
        return softmax_step(key, layer, inp)
    if kind == "log_softmax":
        return log_softmax_step(key, layer, inp, out_range)
    return lookup_step(key, layer, kind, inp, out_range)


# ---- sizes -------------------------------------------------------------------------------------------
def int8_flash_bytes(network: Network) -> dict[str, int]:
    """Flash of the int8 export, from the network alone: {"weights": int8 weights + int32 biases,
    "constants": multipliers, shifts and lookup tables}."""
    folds = int8_batchnorm_folds(network)
    folded_convs = {conv.name for conv in folds.values()}
    weights = constants = 0
    for layer in network.layers:
        if layer.name in folds:  # folded into the weights and bias of the layer before it
            continue
        if layer.kind == "batchnorm":  # an affine step: an int32 offset, multiplier and shift per channel
            weights += 4 * layer.in_shape[0]
            constants += 8 * layer.in_shape[0]
            continue
        for spec in layer.params:
            weights += spec.size if spec.name.endswith(".weight") else 4 * spec.size
        if layer.name in folded_convs and not layer.bias:
            weights += 4 * layer.out_shape[0]  # the bias the fold gives it
        if layer.kind in LINEAR_KINDS:
            constants += 8 * layer.out_shape[0]  # an int32 multiplier and shift per output channel
        if layer.kind in ("add", "concat"):
            constants += 8 * (len(layer.inputs) + (layer.kind == "add"))  # a multiplier and shift per operand (+ out)
        for kind in (layer.kind, layer.activation):
            if kind in LOOKUP_KINDS:
                constants += 256
            elif kind in ("softmax", "log_softmax"):
                constants += 4 * 256
    return {"weights": weights, "constants": constants}


# ---- data --------------------------------------------------------------------------------------------
def calibration_samples(data: str, network: Network, samples: int = DEFAULT_CALIBRATION_SAMPLES) -> np.ndarray:
    """`samples` inputs from the training split of DATA (anything `cnnc train --data` accepts), a fixed
    random choice (seed 0) when it holds more."""
    from .datasets import load_dataset

    if samples < 1:
        raise CnncError(f"--calibration-samples {samples}: must be at least 1")
    ds = load_dataset(data)
    ds.check_fits(network.input_shape, ds.classes, network.name)  # the input shape; labels do not matter here
    x = ds.x_train
    if len(x) > samples:
        x = x[np.sort(np.random.default_rng(0).choice(len(x), samples, replace=False))]
    return np.ascontiguousarray(x, np.float32)


def evaluate_quantized(qmodel: QuantizedModel, float_model, x: np.ndarray, y: np.ndarray) -> dict:
    """inference.evaluate of the int8 reference: accuracy, loss (the float model's, on the dequantised outputs)
    and confusion matrix."""
    from .inference import evaluate

    class Int8Classifier:  # what evaluate reads of a Model
        output_shape, dtype = float_model.output_shape, np.dtype(np.float32)

        @staticmethod
        def forward(xb, train=False):
            return qmodel.forward(xb)

        loss = staticmethod(float_model.loss)

    return evaluate(Int8Classifier, x, y)


__all__ = ["QParams", "QuantStep", "QuantizedModel", "calibrate", "choose_qparams", "quantize_multiplier",
           "multiply_by_quantized_multiplier", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "requantize", "rounding_divide", "quantize_weights", "int8_flash_bytes", "calibration_samples",
           "evaluate_quantized", "check_quantizable", "DEFAULT_CALIBRATION_SAMPLES", "add_step", "concat_step", "add_int8",
           "concat_int8", "tensor_aliases", "ADD_LEFT_SHIFT", "ADD_OPERANDS_MAX", "add_left_shift",
           "add_operand_bound", "AFFINE_FRACTION", "affine_step", "affine_int8",
           "batchnorm_affine", "folded_linear_params", "int8_batchnorm_folds"]
