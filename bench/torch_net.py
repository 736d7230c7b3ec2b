"""The PyTorch side of the benchmark: a module equivalent to a cnnc Network, built from the IR.

    net, owners = torch_model(network)      # nn.Sequential for a chain, TorchGraph for a graph; float32, CPU
    load_params(owners, params)              # cnnc's parameters and buffers (PyTorch layouts) copied in by name

The mapping is one module per IR layer (plus an explicit zero-padding module when a layer's padding is
asymmetric, which nn.Conv2d cannot express). ReLU runs in place (nn.ReLU(inplace=True)) where no other
layer reads its input, the usual way to write it when speed matters; every other module is PyTorch's
default. A graph (skip connections, concatenations) runs its layers in the IR's order, each reading the
tensors its `inputs` name, as a hand-written ResNet's forward() does.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnc.ir import Layer, Network

CONV = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d}
MAXPOOL = {"maxpool1d": nn.MaxPool1d, "maxpool2d": nn.MaxPool2d}
AVGPOOL = {"avgpool1d": nn.AvgPool1d, "avgpool2d": nn.AvgPool2d}
ZERO_PAD = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d}
GLOBAL_AVGPOOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}
BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}  # by the rank of (C,), (C, L), (C, H, W)


def pad_arg(layer: Layer) -> tuple[int, ...]:
    """nn.ConstantPad*d takes (before, after) pairs from the last axis: (left, right, top, bottom) in 2-D."""
    pairs = reversed(list(zip(layer.pad_before, layer.pad_after)))
    return tuple(p for before, after in pairs for p in (before, after))


def activation_module(kind: str, slope: float, inplace: bool = True) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=inplace)
    if kind == "relu6":
        return nn.ReLU6()
    if kind == "silu":
        return nn.SiLU()
    if kind == "hardswish":
        return nn.Hardswish()
    if kind == "leaky_relu":
        return nn.LeakyReLU(slope)
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "softmax":
        return nn.Softmax(dim=1)
    raise ValueError(f"no PyTorch module for activation {kind!r}")


def symmetric(layer: Layer) -> bool:
    return layer.pad_before == layer.pad_after


def window_modules(layer: Layer) -> list[nn.Module]:
    """Convolution and pooling layers; asymmetric padding becomes an explicit pad module first."""
    dims = layer.spatial_dims
    padding = layer.pad_before if symmetric(layer) else (0,) * dims
    if layer.kind in CONV:
        in_channels, filters = layer.in_shape[0], layer.filters
        pre = [] if symmetric(layer) else [ZERO_PAD[dims](pad_arg(layer), 0.0)]
        conv = CONV[layer.kind](in_channels, filters, layer.kernel, stride=layer.stride, padding=padding,
                                dilation=layer.dilation, groups=layer.groups, bias=layer.bias)
        return pre + [conv]
    if layer.kind in MAXPOOL:
        # PyTorch pads max pooling with -inf and allows at most half the kernel; otherwise pad explicitly.
        fits = symmetric(layer) and all(2 * p <= k for p, k in zip(layer.pad_before, layer.kernel))
        pre = [] if fits else [ZERO_PAD[dims](pad_arg(layer), float("-inf"))]
        return pre + [MAXPOOL[layer.kind](layer.kernel, layer.stride, padding=padding if fits else 0)]
    fits = symmetric(layer) and all(2 * p <= k for p, k in zip(layer.pad_before, layer.kernel))
    pre = [] if fits else [ZERO_PAD[dims](pad_arg(layer), 0.0)]
    return pre + [AVGPOOL[layer.kind](layer.kernel, layer.stride, padding=padding if fits else 0, count_include_pad=True)]


def layer_modules(layer: Layer, inplace: bool = True) -> list[nn.Module]:
    """The modules computing one IR layer: x (N, *layer.in_shape) -> (N, *layer.out_shape).
    Merges (add, concat) have none: TorchGraph computes them. inplace: whether a ReLU layer may overwrite
    its input (no other layer reads it)."""
    kind = layer.kind
    if kind in ("add", "concat"):
        return []
    if kind == "batchnorm":
        return [BATCHNORM[len(layer.in_shape)](layer.in_shape[0], eps=layer.eps, momentum=layer.momentum)]
    if kind in CONV or kind in MAXPOOL or kind in AVGPOOL:
        modules = window_modules(layer)
    elif kind == "dense":
        modules = [nn.Linear(layer.in_shape[0], layer.units, bias=layer.bias)]
    elif kind == "global_avgpool":
        modules = [GLOBAL_AVGPOOL[len(layer.in_shape) - 1](1), nn.Flatten()]
    elif kind == "flatten":
        modules = [nn.Flatten()]
    elif kind == "dropout":
        modules = [nn.Dropout(layer.rate)]
    else:
        modules = [activation_module(kind, layer.slope, inplace)]
    if layer.activation:
        modules.append(activation_module(layer.activation, layer.slope))
    return modules


def torch_sequential(network: Network) -> tuple[nn.Sequential, dict[str, nn.Module]]:
    """-> (the network as nn.Sequential, {IR layer name: the module holding its weight and bias})."""
    modules, owners = [], {}
    for layer in network.layers:
        built = layer_modules(layer)
        if layer.params or layer.buffers:
            owners[layer.name] = _owner(built, layer)
        modules += built
    return nn.Sequential(*modules), owners


class TorchGraph(nn.Module):
    """A graph network: x (N, *input_shape) -> (N, *output_shape), every layer reading its named inputs."""

    def __init__(self, network: Network):
        super().__init__()
        self.network = network
        self.steps = nn.ModuleList(nn.Sequential(*layer_modules(layer, inplace=_sole_reader(network, layer)))
                                   for layer in network.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.network.input_name: x}
        for layer, step in zip(self.network.layers, self.steps):
            xs = [values[name] for name in layer.inputs]
            if layer.kind == "add":
                values[layer.name] = sum(xs[1:], xs[0])
            elif layer.kind == "concat":
                values[layer.name] = torch.cat(xs, dim=1)
            else:
                values[layer.name] = step(xs[0])
        return values[self.network.layers[-1].name]


def _sole_reader(network: Network, layer: Layer) -> bool:
    """Whether `layer` is the only layer reading its input (so an in-place ReLU there is safe)."""
    return len(layer.inputs) == 1 and len(network.consumers(layer.inputs[0])) == 1


def torch_model(network: Network) -> tuple[nn.Module, dict[str, nn.Module]]:
    """-> (the network as nn.Sequential (a chain) or TorchGraph, {IR layer name: the module holding its
    weight, bias and buffers})."""
    if network.is_chain:
        return torch_sequential(network)
    graph = TorchGraph(network)
    owners = {layer.name: _owner(step, layer) for layer, step in zip(network.layers, graph.steps)
              if layer.params or layer.buffers}
    return graph, owners


def _owner(modules, layer: Layer) -> nn.Module:
    """The module holding a layer's weights: the last of its modules, or the one before a fused activation."""
    return modules[-2] if layer.activation else modules[-1]


def load_params(owners: dict[str, nn.Module], params: dict) -> None:
    """Copy cnnc parameters {"c1.weight": array, ...} (and buffers, "bn.running_mean": array) into the
    modules; every name and shape must match."""
    with torch.no_grad():
        for name, value in params.items():
            layer, what = name.rsplit(".", 1)
            target = getattr(owners[layer], what)
            source = torch.as_tensor(value, dtype=target.dtype)
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(f"parameter {name}: PyTorch expects shape {tuple(target.shape)}; got {tuple(source.shape)}")
            target.copy_(source)


def cross_entropy_or_mse(network: Network):
    """The model's loss as a PyTorch function (no loss statement: cross_entropy for flat outputs, else mse)."""
    kind = network.loss or ("cross_entropy" if len(network.output_shape) == 1 else "mse")
    return nn.functional.cross_entropy if kind == "cross_entropy" else nn.functional.mse_loss
