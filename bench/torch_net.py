"""The PyTorch side of the benchmark: an nn.Sequential equivalent to a cnnc Network, built from the IR.

    net = torch_sequential(network)          # every layer of the IR, in order, float32, CPU
    load_params(net, network, params)        # cnnc's parameters (PyTorch layouts) copied in by name

The mapping is one module per IR layer (plus an explicit zero-padding module when a layer's padding is
asymmetric, which nn.Conv2d cannot express). ReLU runs in place (nn.ReLU(inplace=True)), the usual way
to write it when speed matters; every other module is PyTorch's default.
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


def pad_arg(layer: Layer) -> tuple[int, ...]:
    """nn.ConstantPad*d takes (before, after) pairs from the last axis: (left, right, top, bottom) in 2-D."""
    pairs = reversed(list(zip(layer.pad_before, layer.pad_after)))
    return tuple(p for before, after in pairs for p in (before, after))


def activation_module(kind: str, slope: float) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
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
                                dilation=layer.dilation, bias=layer.bias)
        return pre + [conv]
    if layer.kind in MAXPOOL:
        # PyTorch pads max pooling with -inf and allows at most half the kernel; otherwise pad explicitly.
        fits = symmetric(layer) and all(2 * p <= k for p, k in zip(layer.pad_before, layer.kernel))
        pre = [] if fits else [ZERO_PAD[dims](pad_arg(layer), float("-inf"))]
        return pre + [MAXPOOL[layer.kind](layer.kernel, layer.stride, padding=padding if fits else 0)]
    fits = symmetric(layer) and all(2 * p <= k for p, k in zip(layer.pad_before, layer.kernel))
    pre = [] if fits else [ZERO_PAD[dims](pad_arg(layer), 0.0)]
    return pre + [AVGPOOL[layer.kind](layer.kernel, layer.stride, padding=padding if fits else 0, count_include_pad=True)]


def layer_modules(layer: Layer) -> list[nn.Module]:
    """The modules computing one IR layer: x (N, *layer.in_shape) -> (N, *layer.out_shape)."""
    kind = layer.kind
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
        modules = [activation_module(kind, layer.slope)]
    if layer.activation:
        modules.append(activation_module(layer.activation, layer.slope))
    return modules


def torch_sequential(network: Network) -> tuple[nn.Sequential, dict[str, nn.Module]]:
    """-> (the network as nn.Sequential, {IR layer name: the module holding its weight and bias})."""
    modules, owners = [], {}
    for layer in network.layers:
        built = layer_modules(layer)
        if layer.params:
            owners[layer.name] = built[-2] if layer.activation else built[-1]
        modules += built
    return nn.Sequential(*modules), owners


def load_params(owners: dict[str, nn.Module], params: dict) -> None:
    """Copy cnnc parameters {"c1.weight": array, ...} into the modules; every name and shape must match."""
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
