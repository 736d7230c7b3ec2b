"""The shape-inferred IR: the contract between the front end and every backend.

`cnnc.shapes.infer(program)` produces one `Network` per `model` block. Every size is known:
backends (NumPy, C, standalone C, ONNX) read these dataclasses and nothing else.

Shapes are per sample; the batch dimension N is implicit everywhere:
  2-D layers see (C, H, W), 1-D layers (C, L), flat layers (D,).

A network is a graph whose layers are listed in topological order (the statement order, with block
instances expanded in place): every layer names the tensors it reads in `Layer.inputs`, each the name
of an earlier layer or the network's input. In a chain every layer reads the one before it
(`Network.is_chain`). Both backends (NumPy and C) and the ONNX and standalone C exports run graphs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from .diagnostics import Diagnostic, Loc

CONV_KINDS = ("conv1d", "conv2d")
MAXPOOL_KINDS = ("maxpool1d", "maxpool2d")
AVGPOOL_KINDS = ("avgpool1d", "avgpool2d")
POOL_KINDS = MAXPOOL_KINDS + AVGPOOL_KINDS
WINDOW_KINDS = CONV_KINDS + POOL_KINDS  # layers with kernel/stride/padding geometry
CONV_TRANSPOSE_KINDS = ("conv_transpose1d", "conv_transpose2d")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax", "relu6", "silu", "hardswish", "elu", "selu",
               "hardsigmoid", "log_softmax")
MERGE_KINDS = ("add", "concat")  # layers reading two or more tensors
LAYER_KINDS = (WINDOW_KINDS + ("global_avgpool", "flatten", "dense", "dropout", "batchnorm") + ACTIVATIONS
               + MERGE_KINDS + CONV_TRANSPOSE_KINDS + ("global_maxpool", "lrn", "channel_shuffle"))
LOSSES = ("cross_entropy", "mse", "nll")  # nll: PyTorch's nll_loss, on log-probabilities (after log_softmax)


@dataclass(frozen=True)
class ParamSpec:
    """One trainable tensor, in PyTorch's layout.

    name: "<layer>.weight" or "<layer>.bias"
    shape: conv2d weight (F, C, KH, KW), conv1d (F, C, K), dense (units, inputs), bias (F,)
    init: "he" (normal, std sqrt(2/fan_in)), "glorot" (uniform, limit sqrt(6/(fan_in+fan_out))) or "zeros"
    """

    name: str
    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    init: str

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class BufferSpec:
    """One non-trainable tensor a layer keeps between batches (batch norm's running statistics).

    name: "<layer>.running_mean" or "<layer>.running_var", PyTorch's names; fill: its initial value."""

    name: str
    shape: tuple[int, ...]
    fill: float

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class Layer:
    """One layer with every size resolved.

    kind: one of LAYER_KINDS.
    Window layers (conv*, *pool*d) carry one entry per spatial axis (1 for 1-D, 2 for 2-D, as (H, W)):
        out = (in + pad_before + pad_after - dilation*(kernel-1) - 1) // stride + 1
    Pooling has dilation 1. Average pooling counts padded zeros in the window area (PyTorch's default).
    ceil: pooling's ceil_mode: the division rounds up, so a last, partial window covers the input's end, except
        that the last window must start inside the input or the left padding (PyTorch's rule). The part of a
        window past pad_after is never counted. Only set where it changes the output size.
    count_pad: average pooling divides by the window's cells inside the padded input (True, PyTorch's
        count_include_pad) or inside the input only (False). Only False where the layer pads.
    Transposed convolutions (conv_transpose*) carry the same geometry, read backwards (PyTorch's formula):
        out = (in - 1)*stride - pad_before - pad_after + dilation*(kernel-1) + output_padding + 1
        with weight (C_in, filters/groups, *kernel); output_padding is one entry per spatial axis.
    activation: an activation fused after a conv or dense layer (`activation=` in the spec), else None.
        Standalone activation layers have kind == the activation and activation None.
    slope: the negative slope of leaky_relu (as a kind or as the fused activation).
    rate: dropout probability (inverted dropout: kept values are scaled by 1/(1-rate) while training).
    name: the full dotted name: a layer `c1` of block instance `s1` is `s1.c1` (and nested, `p1.u1.d`).
    inputs: the names of the tensors it reads, in order: earlier layers' names or the network's input_name.
        One for every kind except the merges (add, concat), which read two or more.
    in_shapes: the shape of each input; in_shape is the first's.
    groups: a convolution's groups: input channels and filters are split into this many groups, each
        filter reading C/groups channels (weight (F, C/groups, *kernel)); groups == C is depthwise.
    eps, momentum: batch norm's, as in PyTorch: y = (x - mean) / sqrt(var + eps) * weight + bias;
        running = (1 - momentum) * running + momentum * batch statistic (the variance unbiased).
    buffers: batch norm's running_mean and running_var.
    lrn_size, alpha, beta, k: local response normalisation across channels (PyTorch's LocalResponseNorm):
        y_c = x_c / (k + alpha/lrn_size * sum of x_j^2 for j in c - lrn_size//2 ... c + (lrn_size-1)//2) ** beta
    channel_shuffle reads groups: (C, ...) viewed as (groups, C/groups, ...), transposed to (C/groups, groups, ...).
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    loc: Loc | None = None
    inputs: tuple[str, ...] = ()
    in_shapes: tuple[tuple[int, ...], ...] = ()
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    pad_before: tuple[int, ...] = ()
    pad_after: tuple[int, ...] = ()
    filters: int = 0  # conv output channels
    units: int = 0  # dense outputs
    bias: bool = False
    activation: str | None = None
    slope: float = 0.01
    rate: float = 0.0
    groups: int = 1
    eps: float = 1e-5
    momentum: float = 0.1
    ceil: bool = False
    count_pad: bool = True
    output_padding: tuple[int, ...] = ()
    lrn_size: int = 0
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    params: tuple[ParamSpec, ...] = ()
    buffers: tuple[BufferSpec, ...] = ()
    macs: int = 0  # multiply-accumulates per sample
    receptive_field: tuple[int, ...] | None = None  # input pixels seen by one output, per spatial axis
    jump: tuple[int, ...] | None = None  # distance on the input between adjacent outputs, per axis

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel)

    @property
    def param_count(self) -> int:
        return sum(p.size for p in self.params)

    @property
    def in_size(self) -> int:
        return prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return prod(self.out_shape)


@dataclass(frozen=True)
class Network:
    """A whole model: its input, its layers in order and its loss."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    loss: str | None  # "cross_entropy", "mse", "nll" or None (no loss statement)
    file: str = "<string>"
    loc: Loc | None = None
    warnings: tuple[Diagnostic, ...] = field(default=())

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].out_shape if self.layers else self.input_shape

    @property
    def param_specs(self) -> tuple[ParamSpec, ...]:
        return tuple(p for layer in self.layers for p in layer.params)

    @property
    def buffer_specs(self) -> tuple[BufferSpec, ...]:
        return tuple(b for layer in self.layers for b in layer.buffers)

    @property
    def is_chain(self) -> bool:
        """Every layer reads exactly the output of the layer before it (the first reads the input)."""
        previous = self.input_name
        for layer in self.layers:
            if layer.inputs != (previous,):
                return False
            previous = layer.name
        return True

    @property
    def param_count(self) -> int:
        return sum(layer.param_count for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def activation_elements(self) -> int:
        """Elements per sample of the input and every layer output (float32 memory = 4x this)."""
        return prod(self.input_shape) + sum(layer.out_size for layer in self.layers)

    def consumers(self, name: str) -> tuple[Layer, ...]:
        """The layers that read the tensor `name` (a layer's or the input's), in order."""
        return tuple(layer for layer in self.layers if name in layer.inputs)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)
