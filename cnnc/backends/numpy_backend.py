"""The NumPy reference backend: the ground truth every other backend is checked against.

Each layer kind is a pair of plain functions, `X_forward` and `X_backward`, side by side. The first
lines of each say every tensor's shape. Forward returns whatever backward needs (the max-pool winners,
the pre-activation), and the model keeps it in `self.saved[layer.name]`.

The convolution follows the textbook derivation (see the lecture notes' "Summary of backprop
equations"), with x read as zero outside itself (the padding):
    forward  y[n, f, i, j] = b[f] + sum_{c, p, q} w[f, c, p, q] * x[n, c, i*s + p*d - pad, j*s + q*d - pad]
    bias     db = dy summed over the batch and every position
    weights  dw = the input correlated with dy (kernel taps d apart, outputs s apart)
    input    dx = the full convolution of the stride-dilated, zero-padded dy with w rotated 180 degrees
Each is one GEMM with the im2col `columns` of the input (each kernel tap's inputs, 0 where the tap reads
padding); the input gradient scatters each tap's share back to the input it read (`uncolumns`, col2im),
which is the full convolution written tap by tap. The padding is implied, never stored, so a large
padding or dilation costs no memory: a training step holds at most one layer's columns at a time.
A transposed convolution is a convolution's adjoint: the same two primitives with their roles swapped.

1-D layers run as 2-D layers of height 1: (N, C, L) is viewed as (N, C, 1, L), a kernel K as (1, K).
A grouped convolution runs each group as its own convolution on its slice of the channels.

Graphs: the model keeps every layer's output by name until its last reader has run; backward walks the
layers in reverse, and a tensor read by several layers (a residual's shortcut) sums their gradients.

What this file deliberately is not: fast. It is vectorised (pooling windows are strided views, the
contractions are im2col + BLAS GEMMs, the only Python loops are over kernel taps), so a LeNet-5 training
step at batch 64 takes milliseconds, but where clarity and speed disagree it chooses clarity.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..diagnostics import CnncError
from ..ir import AVGPOOL_KINDS, CONV_KINDS, CONV_TRANSPOSE_KINDS, MAXPOOL_KINDS, Layer
from ..model import Model

Pair = tuple[int, int]  # a (height, width) value of the window geometry


# ---- geometry ------------------------------------------------------------------------------------
def geometry_2d(layer: Layer) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    """(kernel, stride, dilation, pad_before, pad_after) as (H, W) pairs; a 1-D layer gets height 1."""
    g = (layer.kernel, layer.stride, layer.dilation, layer.pad_before, layer.pad_after)
    if layer.spatial_dims == 1:
        return tuple((neutral, v[0]) for neutral, v in zip((1, 1, 1, 0, 0), g))
    return g


def as_2d(a: np.ndarray, spatial_dims: int) -> np.ndarray:
    """(N, C, L) -> (N, C, 1, L); also a conv1d weight (F, C, K) -> (F, C, 1, K). 2-D arrays pass through."""
    return a[:, :, None, :] if spatial_dims == 1 else a


def spatial_2d(shape: tuple[int, ...]) -> Pair:
    """A per-sample (C, H, W) shape -> (H, W); (C, L) -> (1, L)."""
    return (1, shape[1]) if len(shape) == 2 else (shape[1], shape[2])


def pad(x: np.ndarray, before: Pair, after: Pair, value: float = 0.0) -> np.ndarray:
    """x: (N, C, H, W) -> (N, C, H + before[0] + after[0], W + before[1] + after[1])"""
    return np.pad(x, ((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1])), constant_values=value)


def crop(xp: np.ndarray, before: Pair, after: Pair) -> np.ndarray:
    """The inverse of pad: xp: (N, C, HP, WP) -> (N, C, HP - before[0] - after[0], WP - before[1] - after[1])"""
    HP, WP = xp.shape[2:]
    return xp[:, :, before[0]:HP - after[0], before[1]:WP - after[1]]


def windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair = (1, 1)) -> np.ndarray:
    """Every window of the (already padded) input, as a view: no copy.
    xp: (N, C, HP, WP) -> (N, C, OH, OW, KH, KW), with [n, c, i, j, p, q] = xp[n, c, i*sh + p*dh, j*sw + q*dw]"""
    (KH, KW), (sh, sw), (dh, dw) = kernel, stride, dilation
    span = (dh * (KH - 1) + 1, dw * (KW - 1) + 1)
    return sliding_window_view(xp, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]


def unwindow(dwin: np.ndarray, x_hw: Pair, stride: Pair, pad_before: Pair, pad_after: Pair) -> np.ndarray:
    """The adjoint of pad-then-`windows` (dilation 1): add each window's gradient back where it read.
    dwin: (N, C, OH, OW, KH, KW) -> dx: (N, C, H, W). Overlapping windows accumulate; padding is dropped.
    Loops over the KH*KW kernel offsets; each iteration is one strided add over the whole batch."""
    N, C, OH, OW, KH, KW = dwin.shape
    sh, sw = stride
    dxp = np.zeros((N, C, x_hw[0] + pad_before[0] + pad_after[0], x_hw[1] + pad_before[1] + pad_after[1]), dwin.dtype)
    for p in range(KH):
        for q in range(KW):
            dxp[:, :, p:p + (OH - 1) * sh + 1:sh, q:q + (OW - 1) * sw + 1:sw] += dwin[:, :, :, :, p, q]
    return crop(dxp, pad_before, pad_after)


def correlate(x: np.ndarray, k: np.ndarray, stride: Pair, dilation: Pair) -> np.ndarray:
    """Valid cross-correlation of an already padded input (the int8 reference in quantize.py runs on it).
    x: (N, C, H, W), k: (F, C, KH, KW) -> out: (N, F, OH, OW), OH = (H - dh*(KH-1) - 1) // sh + 1
    out[n, f, i, j] = sum_{c, p, q} k[f, c, p, q] * x[n, c, i*sh + p*dh, j*sw + q*dw]"""
    F, C, KH, KW = k.shape
    patches = windows(x, (KH, KW), stride, dilation)  # (N, C, OH, OW, KH, KW), a view
    N, _, OH, OW = patches.shape[:4]
    cols = patches.transpose(0, 1, 4, 5, 2, 3).reshape(N, C * KH * KW, OH * OW)  # im2col: the one copy
    return (k.reshape(F, C * KH * KW) @ cols).reshape(N, F, OH, OW)  # one GEMM per sample


# ---- convolution ---------------------------------------------------------------------------------
# The padding is implied, never stored: `columns` gathers each kernel tap's inputs (0 where the tap reads
# padding) and `uncolumns` adds each tap's gradient back where it read. A large padding or dilation costs
# no memory; the columns hold C*KH*KW*OH*OW values per sample, the multiply-adds per filter.
def tap_span(offset: int, step: int, count: int, extent: int) -> tuple[slice, slice] | None:
    """Grid points i = 0 .. count-1 sit at offset + i*step; of those inside 0 .. extent-1: (their slice
    of the grid, the slice of the extent they sit on), or None if there are none."""
    first = max(0, -(offset // step))  # the smallest i with offset + i*step >= 0
    last = min(count - 1, (extent - 1 - offset) // step)
    if last < first:
        return None
    return slice(first, last + 1), slice(offset + first * step, offset + last * step + 1, step)


def kernel_taps(kernel: Pair, stride: Pair, dilation: Pair, pad_before: Pair, out_hw: Pair, x_hw: Pair):
    """For each tap (p, q) of a convolution from x_hw to out_hw: (p, q, output rows and columns, input rows and
    columns), the outputs whose tap (p, q) reads an input rather than padding and the inputs it reads:
    output (i, j) reads x[i*sh + p*dh - pb_h, j*sw + q*dw - pb_w]."""
    for p in range(kernel[0]):
        rows = tap_span(p * dilation[0] - pad_before[0], stride[0], out_hw[0], x_hw[0])
        for q in range(kernel[1]):
            cols = tap_span(q * dilation[1] - pad_before[1], stride[1], out_hw[1], x_hw[1])
            if rows and cols:
                yield p, q, (rows[0], cols[0]), (rows[1], cols[1])


def columns(x, kernel: Pair, stride: Pair, dilation: Pair, pad_before: Pair, out_hw: Pair) -> np.ndarray:
    """im2col: x: (N, C, H, W) -> cols: (N, C*KH*KW, OH*OW),
    cols[n, (c, p, q), (i, j)] = x[n, c, i*sh + p*dh - pb_h, j*sw + q*dw - pb_w], or 0 where that is padding."""
    (N, C, H, W), (KH, KW), (OH, OW) = x.shape, kernel, out_hw
    cols = np.zeros((N, C, KH, KW, OH, OW), x.dtype)
    for p, q, outputs, inputs in kernel_taps(kernel, stride, dilation, pad_before, out_hw, (H, W)):
        cols[(slice(None), slice(None), p, q, *outputs)] = x[(slice(None), slice(None), *inputs)]
    return cols.reshape(N, C * KH * KW, OH * OW)


def uncolumns(dcols, x_shape, kernel: Pair, stride: Pair, dilation: Pair, pad_before: Pair, out_hw: Pair):
    """col2im, the adjoint of `columns`: dcols: (N, C*KH*KW, OH*OW) -> dx: x_shape (N, C, H, W), each tap's
    gradient added to the input it read; what fell on padding is dropped."""
    (N, C, H, W), (KH, KW), (OH, OW) = x_shape, kernel, out_hw
    dcols = dcols.reshape(N, C, KH, KW, OH, OW)
    dx = np.zeros(x_shape, dcols.dtype)
    for p, q, outputs, inputs in kernel_taps(kernel, stride, dilation, pad_before, out_hw, (H, W)):
        dx[(slice(None), slice(None), *inputs)] += dcols[(slice(None), slice(None), p, q, *outputs)]
    return dx


def conv_output_hw(x_hw: Pair, kernel: Pair, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair) -> Pair:
    """out = floor((in + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1, per axis"""
    return tuple((x_hw[a] + pad_before[a] + pad_after[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
                 for a in (0, 1))


def conv_forward(x, w, b, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair):
    """x: (N, C, H, W), w: (F, C, KH, KW), b: (F,) or None -> y: (N, F, OH, OW)
    y[n, f, i, j] = b[f] + sum_{c, p, q} w[f, c, p, q] * x[n, c, i*sh + p*dh - pb_h, j*sw + q*dw - pb_w],
    x read as zero outside itself (the padding): one GEMM of the weights with the columns."""
    (N, C, H, W), (F, _, KH, KW) = x.shape, w.shape
    out_hw = conv_output_hw((H, W), (KH, KW), stride, dilation, pad_before, pad_after)
    cols = columns(x, (KH, KW), stride, dilation, pad_before, out_hw)  # (N, C*KH*KW, OH*OW)
    y = (w.reshape(F, C * KH * KW) @ cols).reshape(N, F, *out_hw)
    return y + b[:, None, None] if b is not None else y


def conv_backward(dy, x, w, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair):
    """dy: (N, F, OH, OW), x: (N, C, H, W) the layer's input, w: (F, C, KH, KW)
    -> dx: (N, C, H, W), dw: (F, C, KH, KW), db: (F,)"""
    (N, F, OH, OW), (_, C, KH, KW) = dy.shape, w.shape
    dy_rows = dy.reshape(N, F, OH * OW)
    # db[f] = sum_{n, i, j} dy[n, f, i, j]: the bias is added once at every output position.
    db = dy.sum(axis=(0, 2, 3))
    # dw[f, c, p, q] = sum_{n, i, j} dy[n, f, i, j] * x[n, c, i*sh + p*dh - pb_h, j*sw + q*dw - pb_w]:
    # the (zero-padded) input correlated with the output gradient, the columns summed over batch and positions.
    cols = columns(x, (KH, KW), stride, dilation, pad_before, (OH, OW))  # (N, C*KH*KW, OH*OW), as forward
    dw = np.tensordot(dy_rows, cols, axes=([0, 2], [0, 2])).reshape(F, C, KH, KW)
    # dx[n, c, m, l] = sum_{f, p, q} w[f, c, p, q] * dy[n, f, i, j] over the outputs (i, j) whose tap (p, q)
    # read x[m, l] (m = i*sh + p*dh - pb_h): the full convolution of the stride-dilated, zero-padded dy with
    # the kernel rotated 180 degrees, written as each tap's share scattered back (col2im). The padding's
    # share is dropped, never computed.
    dcols = w.reshape(F, C * KH * KW).T @ dy_rows  # (N, C*KH*KW, OH*OW)
    dx = uncolumns(dcols, x.shape, (KH, KW), stride, dilation, pad_before, (OH, OW))
    return dx, dw, db


def grouped_conv_forward(x, w, b, groups: int, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair):
    """x: (N, C, H, W), w: (F, C/G, KH, KW), b: (F,) or None -> y: (N, F, OH, OW)
    Group g: filters g*F/G ... (g+1)*F/G - 1 read channels g*C/G ... (g+1)*C/G - 1 only."""
    if groups == 1:
        return conv_forward(x, w, b, stride, dilation, pad_before, pad_after)
    C, F = x.shape[1], w.shape[0]
    Cg, Fg = C // groups, F // groups
    y = np.concatenate([conv_forward(x[:, g * Cg:(g + 1) * Cg], w[g * Fg:(g + 1) * Fg], None, stride, dilation,
                                     pad_before, pad_after) for g in range(groups)], axis=1)
    return y + b[:, None, None] if b is not None else y


def grouped_conv_backward(dy, x, w, groups: int, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair):
    """dy: (N, F, OH, OW), x: (N, C, H, W), w: (F, C/G, KH, KW) -> dx: (N, C, H, W), dw: w's shape, db: (F,)
    Each group's gradients are its own convolution's."""
    if groups == 1:
        return conv_backward(dy, x, w, stride, dilation, pad_before, pad_after)
    C, F = x.shape[1], w.shape[0]
    Cg, Fg = C // groups, F // groups
    parts = [conv_backward(dy[:, g * Fg:(g + 1) * Fg], x[:, g * Cg:(g + 1) * Cg], w[g * Fg:(g + 1) * Fg],
                           stride, dilation, pad_before, pad_after) for g in range(groups)]
    return (np.concatenate([dx for dx, _, _ in parts], axis=1), np.concatenate([dw for _, dw, _ in parts]),
            np.concatenate([db for _, _, db in parts]))


# ---- transposed convolution ---------------------------------------------------------------------
# The adjoint of a convolution: its forward pass is a convolution's input gradient (uncolumns), its input
# gradient a convolution's forward pass (columns), over the same taps.
def conv_transpose_forward(x, w, b, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair,
                           output_padding: Pair):
    """x: (N, C, H, W), w: (C, F, KH, KW), b: (F,) or None -> y: (N, F, OH, OW)
    The adjoint of a convolution with weight w (F channels in, C out): every input value spreads its kernel
        y_full[n, f, i*sh + p*dh, j*sw + q*dw] += x[n, c, i, j] * w[c, f, p, q]
    y_full: (N, F, (H-1)*sh + span_h, ...), extended by output_padding zeros after, cropped by the padding:
        OH = (H-1)*sh + dh*(KH-1) + 1 + output_padding_h - pad_before_h - pad_after_h.
    Only the kept outputs are computed (what lands on the cropped rows is dropped): y_full is never built."""
    (N, C, H, W), (_, F, KH, KW) = x.shape, w.shape
    OH, OW = ((x.shape[2 + a] - 1) * stride[a] + dilation[a] * (w.shape[2 + a] - 1) + 1 + output_padding[a]
              - pad_before[a] - pad_after[a] for a in (0, 1))
    spread = w.reshape(C, F * KH * KW).T @ x.reshape(N, C, H * W)  # (N, F*KH*KW, H*W): each input's kernel
    y = uncolumns(spread, (N, F, OH, OW), (KH, KW), stride, dilation, pad_before, (H, W))
    return y + b[:, None, None] if b is not None else y


def conv_transpose_backward(dy, x, w, stride: Pair, dilation: Pair, pad_before: Pair, pad_after: Pair):
    """dy: (N, F, OH, OW), x: (N, C, H, W), w: (C, F, KH, KW) -> dx: (N, C, H, W), dw: (C, F, KH, KW), db: (F,)
    With dy read as zero outside the output (the cropped rows had no effect: their gradient is 0):
      dx[n, c, i, j] = sum_{f, p, q} w[c, f, p, q] * dy[n, f, i*sh + p*dh - pb_h, j*sw + q*dw - pb_w]: a convolution;
      dw[c, f, p, q] = sum_{n, i, j} x[n, c, i, j] * dy[n, f, i*sh + p*dh - pb_h, j*sw + q*dw - pb_w]."""
    (N, C, H, W), (_, F, KH, KW) = x.shape, w.shape
    db = dy.sum(axis=(0, 2, 3))
    cols = columns(dy, (KH, KW), stride, dilation, pad_before, (H, W))  # (N, F*KH*KW, H*W)
    dx = (w.reshape(C, F * KH * KW) @ cols).reshape(N, C, H, W)
    dw = np.tensordot(x.reshape(N, C, H * W), cols, axes=([0, 2], [0, 2])).reshape(C, F, KH, KW)
    return dx, dw, db


def grouped_conv_transpose_forward(x, w, b, groups: int, stride: Pair, dilation: Pair, pad_before: Pair,
                                   pad_after: Pair, output_padding: Pair):
    """x: (N, C, H, W), w: (C, F/G, KH, KW), b: (F,) or None -> y: (N, F, OH, OW)
    Group g: channels g*C/G ... (g+1)*C/G - 1 spread over filters g*F/G ... (g+1)*F/G - 1 only."""
    Cg = x.shape[1] // groups
    y = np.concatenate([conv_transpose_forward(x[:, g * Cg:(g + 1) * Cg], w[g * Cg:(g + 1) * Cg], None, stride,
                                               dilation, pad_before, pad_after, output_padding)
                        for g in range(groups)], axis=1)
    return y + b[:, None, None] if b is not None else y


def grouped_conv_transpose_backward(dy, x, w, groups: int, stride: Pair, dilation: Pair, pad_before: Pair,
                                    pad_after: Pair):
    """dy: (N, F, OH, OW), x: (N, C, H, W), w: (C, F/G, KH, KW) -> dx: x's shape, dw: w's shape, db: (F,)"""
    Cg, Fg = x.shape[1] // groups, dy.shape[1] // groups
    parts = [conv_transpose_backward(dy[:, g * Fg:(g + 1) * Fg], x[:, g * Cg:(g + 1) * Cg], w[g * Cg:(g + 1) * Cg],
                                     stride, dilation, pad_before, pad_after) for g in range(groups)]
    return (np.concatenate([dx for dx, _, _ in parts], axis=1), np.concatenate([dw for _, dw, _ in parts]),
            np.concatenate([db for _, _, db in parts]))


# ---- across channels: local response normalisation, channel shuffle -------------------------------
def channel_window_sum(a, before: int, after: int):
    """a: (N, C, *spatial) -> s like a, s[:, c] = sum of a[:, c - before ... c + after] (channels outside 0..C-1
    count as 0): a running sum over the zero-padded channel axis, differenced."""
    C = a.shape[1]
    widths = [(0, 0), (before + 1, after)] + [(0, 0)] * (a.ndim - 2)
    running = np.cumsum(np.pad(a, widths), axis=1)  # (N, C + before + after + 1, *spatial)
    return running[:, before + after + 1:] - running[:, :C]


def lrn_forward(x, size: int, alpha: float, beta: float, k: float):
    """x: (N, C, *spatial) -> y like x, and the divisor base d like x (PyTorch's LocalResponseNorm):
    d[:, c] = k + alpha/size * sum of x[:, j]^2 for j in c - size//2 ... c + (size-1)//2;  y = x * d^-beta"""
    d = k + alpha / size * channel_window_sum(x * x, size // 2, (size - 1) // 2)
    return x * d ** -beta, d


def lrn_backward(dy, x, d, size: int, alpha: float, beta: float):
    """dy, x, d: (N, C, *spatial) -> dx like x.
    y_c = x_c d_c^-beta, and d_j depends on x_c for every j whose window holds c (j in c - (size-1)//2 ...
    c + size//2), through d(d_j)/d(x_c) = 2 alpha/size x_c:
      dx_c = dy_c d_c^-beta - 2 beta alpha/size x_c * sum_j dy_j x_j d_j^(-beta-1)"""
    g = dy * x * d ** (-beta - 1)
    return dy * d ** -beta - 2 * beta * alpha / size * x * channel_window_sum(g, (size - 1) // 2, size // 2)


def channel_shuffle_forward(x, groups: int):
    """x: (N, C, *spatial) -> y like x: channels viewed as (groups, C/groups), transposed to (C/groups, groups):
    y[:, i*groups + g] = x[:, g*(C/groups) + i]"""
    N, C = x.shape[:2]
    return x.reshape(N, groups, C // groups, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


def channel_shuffle_backward(dy, groups: int):
    """dy: (N, C, *spatial) -> dx: the inverse permutation, (C/groups, groups) transposed back."""
    N, C = dy.shape[:2]
    return dy.reshape(N, C // groups, groups, *dy.shape[2:]).swapaxes(1, 2).reshape(dy.shape)


# ---- batch norm ----------------------------------------------------------------------------------
def batchnorm_axes(x) -> tuple[int, ...]:
    """The axes a channel's statistics run over: N and every spatial axis. x: (N, C, *spatial) or (N, D)."""
    return (0, *range(2, x.ndim))


def per_channel(v, ndim: int):
    """v: (C,) -> (C, 1, ...) broadcasting against (N, C, *spatial) of `ndim` axes."""
    return v.reshape(-1, *(1,) * (ndim - 2))


def batchnorm_forward(x, weight, bias, running_mean, running_var, eps: float, momentum: float, train: bool):
    """x: (N, C, *spatial) or (N, D); weight, bias, running_mean, running_var: (C,) -> y like x, and what
    backward needs: xhat (x normalised, like x), invstd (C,).
    y = (x - mean) / sqrt(var + eps) * weight + bias per channel, as PyTorch's BatchNorm1d/2d:
      train: mean and var are the batch's over (N, *spatial), var biased (/ n); the running statistics are
             updated in place, running = (1 - momentum) * running + momentum * batch, the variance unbiased
             (/ (n - 1)).
      inference: mean and var are the running statistics."""
    axes, nd = batchnorm_axes(x), x.ndim
    if train:
        n = x.size // x.shape[1]  # values per channel
        mean = x.mean(axis=axes)
        var = ((x - per_channel(mean, nd)) ** 2).mean(axis=axes)  # biased
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (n / (n - 1))  # unbiased
    else:
        mean, var = running_mean, running_var
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - per_channel(mean, nd)) * per_channel(invstd, nd)
    return xhat * per_channel(weight, nd) + per_channel(bias, nd), xhat, invstd


def batchnorm_backward(dy, xhat, invstd, weight, train: bool):
    """dy, xhat: (N, C, *spatial) or (N, D); invstd, weight: (C,) -> dx like dy, dweight (C,), dbias (C,)
    inference: the statistics are constants, dx = dy * weight * invstd.
    train: the batch mean and variance depend on every x of the channel (n values):
      dx = invstd / n * (n * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)),  dxhat = dy * weight."""
    axes, nd = batchnorm_axes(dy), dy.ndim
    dweight, dbias = (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    dxhat = dy * per_channel(weight, nd)
    if not train:
        return dxhat * per_channel(invstd, nd), dweight, dbias
    n = dy.size // dy.shape[1]
    dx = per_channel(invstd / n, nd) * (n * dxhat - per_channel(dxhat.sum(axis=axes), nd)
                                        - xhat * per_channel((dxhat * xhat).sum(axis=axes), nd))
    return dx, dweight, dbias


# ---- merges --------------------------------------------------------------------------------------
def add_forward(xs):
    """xs: K arrays (N, *shape) -> their elementwise sum (N, *shape)."""
    y = xs[0] + xs[1]
    for x in xs[2:]:
        y = y + x
    return y


def add_backward(dy, count: int):
    """dy: (N, *shape) -> the same dy for each of the count operands."""
    return [dy] * count


def concat_forward(xs):
    """xs: K arrays (N, C_k, *spatial) (or (N, D_k)) -> (N, sum C_k, *spatial), in operand order."""
    return np.concatenate(xs, axis=1)


def concat_backward(dy, channels: list[int]):
    """dy: (N, sum C_k, *spatial) -> K slices (N, C_k, *spatial)."""
    return np.split(dy, np.cumsum(channels)[:-1], axis=1)


# ---- dense ---------------------------------------------------------------------------------------
def dense_forward(x, w, b):
    """x: (N, D), w: (U, D), b: (U,) or None -> y: (N, U);  y[n, u] = b[u] + sum_d w[u, d] * x[n, d]"""
    y = x @ w.T
    return y + b if b is not None else y


def dense_backward(dy, x, w):
    """dy: (N, U), x: (N, D), w: (U, D) -> dx: (N, D), dw: (U, D), db: (U,)"""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---- pooling -------------------------------------------------------------------------------------
def maxpool_forward(x, kernel: Pair, stride: Pair, pad_before: Pair, pad_after: Pair):
    """x: (N, C, H, W) -> y: (N, C, OH, OW), winner: (N, C, OH, OW) int64
    y[n, c, i, j] = max_{p, q} xp[n, c, i*sh + p, j*sw + q] over the -inf padded input.
    winner = p*KW + q of the maximum, the first in window order on ties (like PyTorch)."""
    xp = pad(x, pad_before, pad_after, -np.inf)  # padding never wins: it is at most half the window
    win = windows(xp, kernel, stride)  # (N, C, OH, OW, KH, KW)
    flat = win.reshape(*win.shape[:4], -1)  # (N, C, OH, OW, KH*KW)
    winner = flat.argmax(axis=-1)  # argmax returns the first maximum
    y = np.take_along_axis(flat, winner[..., None], axis=-1)[..., 0]
    return y, winner


def maxpool_backward(dy, winner, x_hw: Pair, kernel: Pair, stride: Pair, pad_before: Pair, pad_after: Pair):
    """dy: (N, C, OH, OW), winner: (N, C, OH, OW) -> dx: (N, C, H, W): each dy goes to its window's winner."""
    KH, KW = kernel
    one_hot = np.arange(KH * KW) == winner[..., None]  # (N, C, OH, OW, KH*KW)
    dwin = (one_hot * dy[..., None]).reshape(*dy.shape, KH, KW)
    return unwindow(dwin, x_hw, stride, pad_before, pad_after)


def avgpool_forward(x, kernel: Pair, stride: Pair, pad_before: Pair, pad_after: Pair, divisor=None):
    """x: (N, C, H, W), divisor: (OH, OW) (see pool_divisors; None: the window area KH*KW) -> y: (N, C, OH, OW)
    y[n, c, i, j] = sum_{p, q} xp[n, c, i*sh + p, j*sw + q] / divisor[i, j] over the zero-padded input."""
    divisor = kernel[0] * kernel[1] if divisor is None else divisor
    return windows(pad(x, pad_before, pad_after), kernel, stride).sum(axis=(4, 5)) / divisor


def avgpool_backward(dy, x_hw: Pair, kernel: Pair, stride: Pair, pad_before: Pair, pad_after: Pair, divisor=None):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W): each dy / divisor goes to every cell of its window."""
    KH, KW = kernel
    divisor = KH * KW if divisor is None else divisor
    dwin = np.broadcast_to((dy / divisor)[..., None, None], (*dy.shape, KH, KW))
    return unwindow(dwin, x_hw, stride, pad_before, pad_after)


def ceil_pad_after(x_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, pad_before: Pair, pad_after: Pair) -> Pair:
    """The padding after each axis that the windows reach: pad_after, or more where ceil mode's last window runs
    past the padded input: (out - 1)*stride + kernel - in - pad_before."""
    return tuple(max(pa, (o - 1) * s + k - n - pb)
                 for n, o, k, s, pb, pa in zip(x_hw, out_hw, kernel, stride, pad_before, pad_after))


def pool_divisors(x_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, pad_before: Pair, pad_after: Pair,
                  count_pad: bool):
    """-> (OH, OW): the cells average pooling divides each window's sum by (PyTorch's avg_pool2d): per axis, a
    window [start, start + k) with start = i*s - pad_before is clipped to the padded input [-pad_before,
    in + pad_after) (ceil mode's last window may run past it), or with count_pad False to the input [0, in)."""
    counts = []
    for n, o, k, s, pb, pa in zip(x_hw, out_hw, kernel, stride, pad_before, pad_after):
        start = np.arange(o) * s - pb
        end = np.minimum(start + k, n + pa)
        counts.append(end - start if count_pad else np.minimum(end, n) - np.maximum(start, 0))
    return np.multiply.outer(counts[0], counts[1]).astype(float)


def global_avgpool_forward(x):
    """x: (N, C, *spatial) -> y: (N, C), the mean over every spatial position."""
    return x.reshape(*x.shape[:2], -1).mean(axis=2)


def global_avgpool_backward(dy, x_shape):
    """dy: (N, C) -> dx: x_shape = (N, C, *spatial), dy shared equally by the positions."""
    count = int(np.prod(x_shape[2:]))
    return np.broadcast_to((dy / count).reshape(*dy.shape, *(1,) * (len(x_shape) - 2)), x_shape).copy()


def global_maxpool_forward(x):
    """x: (N, C, *spatial) -> y: (N, C), the maximum over every spatial position, and winner: (N, C), its
    flat position (the first on ties)."""
    flat = x.reshape(*x.shape[:2], -1)
    winner = flat.argmax(axis=2)
    return np.take_along_axis(flat, winner[..., None], axis=2)[..., 0], winner


def global_maxpool_backward(dy, winner, x_shape):
    """dy: (N, C), winner: (N, C) -> dx: x_shape = (N, C, *spatial), each dy at its channel's maximum."""
    dx = np.zeros((*x_shape[:2], int(np.prod(x_shape[2:]))), dy.dtype)
    np.put_along_axis(dx, winner[..., None], dy[..., None], axis=2)
    return dx.reshape(x_shape)


# ---- activations: elementwise, except softmax over the feature axis --------------------------------
# Each backward takes the input z and output y of its forward and uses whichever is natural.
def relu_forward(z, slope):
    return np.maximum(z, 0)


def relu_backward(dy, z, y, slope):
    return dy * (z > 0)  # the derivative at 0 is taken as 0, like PyTorch


def leaky_relu_forward(z, slope):
    return np.where(z > 0, z, slope * z)


def leaky_relu_backward(dy, z, y, slope):
    return np.where(z > 0, dy, slope * dy)


def sigmoid_forward(z, slope):
    e = np.exp(-np.abs(z))  # never overflows: 1/(1+e^-z) for z >= 0, e^z/(1+e^z) for z < 0
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy, z, y, slope):
    return dy * y * (1 - y)


def tanh_forward(z, slope):
    return np.tanh(z)


def tanh_backward(dy, z, y, slope):
    return dy * (1 - y * y)


def softmax_forward(z, slope):
    """z: (N, K) -> y: (N, K), y[n] = exp(z[n]) / sum(exp(z[n]))"""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(dy, z, y, slope):
    """dz[n, k] = y[n, k] * (dy[n, k] - sum_j dy[n, j] * y[n, j]): the softmax Jacobian times dy."""
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


def relu6_forward(z, slope):
    return np.clip(z, 0, 6)


def relu6_backward(dy, z, y, slope):
    return dy * ((z > 0) & (z < 6))  # 0 at both kinks, like PyTorch's hardtanh


def silu_forward(z, slope):
    """z * sigmoid(z)"""
    return z * sigmoid_forward(z, slope)


def silu_backward(dy, z, y, slope):
    """d/dz z*s(z) = s(z) * (1 + z * (1 - s(z)))"""
    s = sigmoid_forward(z, slope)
    return dy * s * (1 + z * (1 - s))


def hardswish_forward(z, slope):
    """z * relu6(z + 3) / 6"""
    return z * np.clip(z + 3, 0, 6) / 6


def hardswish_backward(dy, z, y, slope):
    """0 below -3, z/3 + 1/2 on [-3, 3], 1 above 3 (PyTorch's choice at the kinks)."""
    return dy * np.where(z < -3, 0.0, np.where(z <= 3, z / 3 + 0.5, 1.0))


def elu_forward(z, slope):
    """z above 0, e^z - 1 below (alpha 1, PyTorch's default)"""
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def elu_backward(dy, z, y, slope):
    """1 above 0, e^z = y + 1 at and below"""
    return dy * np.where(z > 0, 1.0, y + 1)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def selu_forward(z, slope):
    """scale * (z above 0, alpha * (e^z - 1) below), PyTorch's constants"""
    return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0)))


def selu_backward(dy, z, y, slope):
    return dy * SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0)))


def hardsigmoid_forward(z, slope):
    """relu6(z + 3) / 6 (PyTorch's, not ONNX's default slope 0.2)"""
    return np.clip(z / 6 + 0.5, 0, 1)


def hardsigmoid_backward(dy, z, y, slope):
    return dy * ((z > -3) & (z < 3)) / 6  # 0 at both kinks, like PyTorch


def log_softmax_forward(z, slope):
    """z: (N, K) -> y: (N, K), y[n] = z[n] - log(sum(exp(z[n])))"""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def log_softmax_backward(dy, z, y, slope):
    """dz[n, k] = dy[n, k] - softmax(z)[n, k] * sum_j dy[n, j], softmax = exp(y)"""
    return dy - np.exp(y) * dy.sum(axis=1, keepdims=True)


ACTIVATION_FUNCTIONS = {
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "tanh": (tanh_forward, tanh_backward),
    "softmax": (softmax_forward, softmax_backward),
    "relu6": (relu6_forward, relu6_backward),
    "silu": (silu_forward, silu_backward),
    "hardswish": (hardswish_forward, hardswish_backward),
    "elu": (elu_forward, elu_backward),
    "selu": (selu_forward, selu_backward),
    "hardsigmoid": (hardsigmoid_forward, hardsigmoid_backward),
    "log_softmax": (log_softmax_forward, log_softmax_backward),
}


# ---- the model -----------------------------------------------------------------------------------
class NumpyModel(Model):
    """Runs a Network layer by layer with the functions above.

    self.saved[layer.name] holds, after a forward pass, what that layer's backward reads:
        conv, conv_transpose, dense: x (the input, no copy), and z and y when an activation is fused
        maxpool, global_maxpool: winner;  lrn: x, d (the divisor base);  activations: z, y;
        dropout: mask (None when it was the identity)
    """

    backend_name = "numpy"

    def _allocate(self):
        """One parameter block and one gradient block; the dicts hold reshaped views into them."""
        specs = self.network.param_specs
        total = sum(spec.size for spec in specs)
        self.param_block = np.zeros(total, self.dtype)
        self.grad_block = np.zeros(total, self.dtype)
        params, grads, offset = {}, {}, 0
        for spec in specs:
            params[spec.name] = self.param_block[offset:offset + spec.size].reshape(spec.shape)
            grads[spec.name] = self.grad_block[offset:offset + spec.size].reshape(spec.shape)
            offset += spec.size
        self.saved: dict[str, dict] = {}
        return params, grads

    def _weight_bias(self, layer: Layer):
        return self.params[f"{layer.name}.weight"], self.params[f"{layer.name}.bias"] if layer.bias else None

    def _last_reads(self) -> dict[str, int]:
        """tensor name -> the index of the last layer that reads it (its output can be dropped after)."""
        last = {}
        for i, layer in enumerate(self.network.layers):
            for name in layer.inputs:
                last[name] = i
        return last

    def _forward(self, x, train, masks):
        layers = self.network.layers
        last_reads = self._last_reads()
        values = {self.network.input_name: x}  # outputs still to be read, by name
        saved = {}
        if train:
            self._check_batch_statistics(x.shape[0])
            # batch norm updates the running statistics in place: on copies, kept only if the pass completes
            buffers = {name: value.copy() for name, value in self.buffers.items()}
        for i, layer in enumerate(layers):
            mask = masks.get(layer.name) if train and masks else None
            xs = [values[name] for name in layer.inputs]
            if layer.kind == "add":
                y, saved[layer.name] = add_forward(xs), {}
            elif layer.kind == "concat":
                y, saved[layer.name] = concat_forward(xs), {}
            elif layer.kind == "batchnorm":
                stats = buffers if train else self.buffers
                y, xhat, invstd = batchnorm_forward(xs[0], self.params[f"{layer.name}.weight"],
                                                    self.params[f"{layer.name}.bias"],
                                                    stats[f"{layer.name}.running_mean"],
                                                    stats[f"{layer.name}.running_var"], layer.eps, layer.momentum, train)
                saved[layer.name] = {"xhat": xhat, "invstd": invstd, "train": train}
            else:
                y, saved[layer.name] = self._layer_forward(layer, xs[0], mask)
            for name in set(layer.inputs):
                if last_reads[name] == i:
                    del values[name]
            values[layer.name] = y
        self.saved = saved  # only a completed forward replaces what backward will read
        if train:
            self.buffers.update(buffers)
        return np.ascontiguousarray(values[layers[-1].name], dtype=self.dtype)

    def _backward(self, dy):
        layers = self.network.layers
        grads = {layers[-1].name: dy}  # d loss / d output, by tensor name, summed over the tensor's readers
        for layer in reversed(layers):
            dy = grads.pop(layer.name, None)
            if dy is None:  # an output nothing reads (and not the model's): its gradient is zero
                dy = np.zeros((self._forward_batch, *layer.out_shape), self.dtype)
            saved = self.saved[layer.name]
            if layer.kind == "add":
                dxs = add_backward(dy, len(layer.inputs))
            elif layer.kind == "concat":
                dxs = concat_backward(dy, [shape[0] for shape in layer.in_shapes])
            elif layer.kind == "batchnorm":
                dx, dw, db = batchnorm_backward(dy, saved["xhat"], saved["invstd"],
                                                self.params[f"{layer.name}.weight"], saved["train"])
                self.grads[f"{layer.name}.weight"][...] = dw
                self.grads[f"{layer.name}.bias"][...] = db
                dxs = [dx]
            else:
                dxs = [self._layer_backward(layer, dy, saved)]
            for name, dx in zip(layer.inputs, dxs):
                grads[name] = dx if name not in grads else grads[name] + dx  # never in place: dx may be shared
        return np.ascontiguousarray(grads[self.network.input_name], dtype=self.dtype)

    # ---- one layer: unpack the IR, call the function pair, repack the shapes ----------------------
    def _layer_forward(self, layer: Layer, x, mask):
        """x: (N, *layer.in_shape) -> (y: (N, *layer.out_shape), what backward needs)"""
        N = x.shape[0]
        kind = layer.kind
        if kind in CONV_KINDS:
            _, stride, dilation, pad_before, pad_after = geometry_2d(layer)
            w, b = self._weight_bias(layer)
            x2 = as_2d(x, layer.spatial_dims)
            z = grouped_conv_forward(x2, as_2d(w, layer.spatial_dims), b, layer.groups, stride, dilation, pad_before,
                                     pad_after)
            return self._activation_forward(layer, z.reshape(N, *layer.out_shape), {"x": x2})
        if kind in CONV_TRANSPOSE_KINDS:
            _, stride, dilation, pad_before, pad_after = geometry_2d(layer)
            output_padding = (0, *layer.output_padding) if layer.spatial_dims == 1 else layer.output_padding
            w, b = self._weight_bias(layer)
            x2 = as_2d(x, layer.spatial_dims)
            z = grouped_conv_transpose_forward(x2, as_2d(w, layer.spatial_dims), b, layer.groups, stride, dilation,
                                               pad_before, pad_after, output_padding)
            return self._activation_forward(layer, z.reshape(N, *layer.out_shape), {"x": x2})
        if kind == "dense":
            w, b = self._weight_bias(layer)
            return self._activation_forward(layer, dense_forward(x, w, b), {"x": x})
        if kind in MAXPOOL_KINDS:
            kernel, stride, pad_before, pad_after = self._pool_geometry(layer)
            y, winner = maxpool_forward(as_2d(x, layer.spatial_dims), kernel, stride, pad_before, pad_after)
            return y.reshape(N, *layer.out_shape), {"winner": winner}
        if kind in AVGPOOL_KINDS:
            kernel, stride, pad_before, pad_after = self._pool_geometry(layer)
            y = avgpool_forward(as_2d(x, layer.spatial_dims), kernel, stride, pad_before, pad_after,
                                self._pool_divisors(layer))
            return y.reshape(N, *layer.out_shape), {}
        if kind == "global_avgpool":
            return global_avgpool_forward(x), {}
        if kind == "global_maxpool":
            y, winner = global_maxpool_forward(x)
            return y, {"winner": winner}
        if kind == "lrn":
            y, d = lrn_forward(x, layer.lrn_size, layer.alpha, layer.beta, layer.k)
            return y, {"x": x, "d": d}
        if kind == "channel_shuffle":
            return channel_shuffle_forward(x, layer.groups), {}
        if kind == "flatten":
            return x.reshape(N, -1), {}
        if kind == "dropout":
            return (x if mask is None else x * mask), {"mask": mask}
        if kind in ACTIVATION_FUNCTIONS:
            forward, _ = ACTIVATION_FUNCTIONS[kind]
            y = forward(x, layer.slope)
            return y, {"z": x, "y": y}
        raise AssertionError(f"numpy backend: unhandled layer kind {kind!r}")

    @staticmethod
    def _pool_geometry(layer: Layer):
        """(kernel, stride, pad_before, pad_after) as (H, W) pairs, pad_after extended to where ceil mode's last
        window reaches."""
        kernel, stride, _, pad_before, pad_after = geometry_2d(layer)
        x_hw, out_hw = spatial_2d(layer.in_shape), spatial_2d(layer.out_shape)
        return kernel, stride, pad_before, ceil_pad_after(x_hw, out_hw, kernel, stride, pad_before, pad_after)

    @staticmethod
    def _pool_divisors(layer: Layer):
        kernel, stride, _, pad_before, pad_after = geometry_2d(layer)
        return pool_divisors(spatial_2d(layer.in_shape), spatial_2d(layer.out_shape), kernel, stride, pad_before,
                             pad_after, layer.count_pad)

    def _activation_forward(self, layer: Layer, z, saved: dict):
        """The activation fused after a conv or dense layer's bias, if any."""
        if layer.activation is None:
            return z, saved
        forward, _ = ACTIVATION_FUNCTIONS[layer.activation]
        y = forward(z, layer.slope)
        return y, {**saved, "z": z, "y": y}

    def _layer_backward(self, layer: Layer, dy, saved: dict):
        """dy: (N, *layer.out_shape) -> dx: (N, *layer.in_shape); conv and dense overwrite their grads."""
        N = dy.shape[0]
        kind = layer.kind
        x_shape = (N, *layer.in_shape)
        if layer.activation is not None:
            _, backward = ACTIVATION_FUNCTIONS[layer.activation]
            dy = backward(dy, saved["z"], saved["y"], layer.slope)
        if kind in CONV_KINDS:
            _, stride, dilation, pad_before, pad_after = geometry_2d(layer)
            w, _ = self._weight_bias(layer)
            dx, dw, db = grouped_conv_backward(as_2d(dy, layer.spatial_dims), saved["x"],
                                               as_2d(w, layer.spatial_dims), layer.groups,
                                               stride, dilation, pad_before, pad_after)
            self._store_grads(layer, dw, db)
            return dx.reshape(x_shape)
        if kind in CONV_TRANSPOSE_KINDS:
            _, stride, dilation, pad_before, pad_after = geometry_2d(layer)
            w, _ = self._weight_bias(layer)
            dx, dw, db = grouped_conv_transpose_backward(as_2d(dy, layer.spatial_dims), saved["x"],
                                                         as_2d(w, layer.spatial_dims), layer.groups, stride,
                                                         dilation, pad_before, pad_after)
            self._store_grads(layer, dw, db)
            return dx.reshape(x_shape)
        if kind == "dense":
            w, _ = self._weight_bias(layer)
            dx, dw, db = dense_backward(dy, saved["x"], w)
            self._store_grads(layer, dw, db)
            return dx
        if kind in MAXPOOL_KINDS:
            kernel, stride, pad_before, pad_after = self._pool_geometry(layer)
            dx = maxpool_backward(as_2d(dy, layer.spatial_dims), saved["winner"], spatial_2d(layer.in_shape),
                                  kernel, stride, pad_before, pad_after)
            return dx.reshape(x_shape)
        if kind in AVGPOOL_KINDS:
            kernel, stride, pad_before, pad_after = self._pool_geometry(layer)
            dx = avgpool_backward(as_2d(dy, layer.spatial_dims), spatial_2d(layer.in_shape),
                                  kernel, stride, pad_before, pad_after, self._pool_divisors(layer))
            return dx.reshape(x_shape)
        if kind == "global_avgpool":
            return global_avgpool_backward(dy, x_shape)
        if kind == "global_maxpool":
            return global_maxpool_backward(dy, saved["winner"], x_shape)
        if kind == "lrn":
            return lrn_backward(dy, saved["x"], saved["d"], layer.lrn_size, layer.alpha, layer.beta)
        if kind == "channel_shuffle":
            return channel_shuffle_backward(dy, layer.groups)
        if kind == "flatten":
            return dy.reshape(x_shape)
        if kind == "dropout":
            return dy if saved["mask"] is None else dy * saved["mask"]
        if kind in ACTIVATION_FUNCTIONS:
            _, backward = ACTIVATION_FUNCTIONS[kind]
            return backward(dy, saved["z"], saved["y"], layer.slope)
        raise AssertionError(f"numpy backend: unhandled layer kind {kind!r}")

    def _store_grads(self, layer: Layer, dw, db) -> None:
        """Overwrite, in place: m.grads holds views into one block that other code keeps."""
        self.grads[f"{layer.name}.weight"][...] = dw.reshape(self.grads[f"{layer.name}.weight"].shape)
        if layer.bias:
            self.grads[f"{layer.name}.bias"][...] = db
