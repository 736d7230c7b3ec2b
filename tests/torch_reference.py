"""PyTorch as the independent reference: run any Network's layers with torch.nn.functional and autograd.

Every backend's tests compare against these two functions, so that every configuration is checked the
same way:

    y, dx, grads = torch_forward_backward(network, params, x, dy)          # backprop a given dy
    loss, y, dx, grads = torch_loss_backward(network, params, x, target)   # through the model's loss

params: {name: array} in PyTorch's layout (what `Model.params` holds). Everything runs in float64
whatever the inputs' dtype; results come back as float64 NumPy arrays.
Graphs run layer by layer in order, each reading the outputs its `inputs` name. Batch norm is
F.batch_norm: pass train=True for training mode, and buffers={name: array} (what `Model.buffers` holds;
the running statistics start at 0 and 1 without it): in training mode the arrays are updated in place,
as PyTorch updates its modules' buffers.
Asymmetric padding is F.pad then the unpadded operation (zeros for convolution and average pooling,
-inf for max pooling), which is what PyTorch's own symmetric `padding=` argument means.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnc.ir import Layer, Network

CONV = {"conv1d": F.conv1d, "conv2d": F.conv2d}
MAXPOOL = {"maxpool1d": F.max_pool1d, "maxpool2d": F.max_pool2d}
AVGPOOL = {"avgpool1d": F.avg_pool1d, "avgpool2d": F.avg_pool2d}


def torch_pad_arg(layer: Layer) -> tuple[int, ...]:
    """F.pad takes (before, after) pairs starting from the last axis: (left, right, top, bottom) in 2-D."""
    return tuple(p for before, after in reversed(list(zip(layer.pad_before, layer.pad_after))) for p in (before, after))


def activation(kind: str, z: torch.Tensor, slope: float) -> torch.Tensor:
    if kind == "relu":
        return F.relu(z)
    if kind == "leaky_relu":
        return F.leaky_relu(z, slope)
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "tanh":
        return torch.tanh(z)
    if kind == "softmax":
        return F.softmax(z, dim=1)
    if kind == "relu6":
        return F.relu6(z)
    if kind == "silu":
        return F.silu(z)
    if kind == "hardswish":
        return F.hardswish(z)
    raise AssertionError(kind)


def layer_forward(layer: Layer, x: torch.Tensor, params: dict[str, torch.Tensor], mask, buffers=None,
                  train: bool = False, xs=()) -> torch.Tensor:
    """One layer; x is its (first) input, xs all of its inputs (merges)."""
    kind = layer.kind
    if kind == "add":
        return sum(xs[1:], xs[0])
    if kind == "concat":
        return torch.cat(list(xs), dim=1)
    if kind == "batchnorm":
        return F.batch_norm(x, buffers[f"{layer.name}.running_mean"], buffers[f"{layer.name}.running_var"],
                            params[f"{layer.name}.weight"], params[f"{layer.name}.bias"], training=train,
                            momentum=layer.momentum, eps=layer.eps)
    if kind in CONV:
        w = params[f"{layer.name}.weight"]
        b = params.get(f"{layer.name}.bias")
        z = CONV[kind](F.pad(x, torch_pad_arg(layer)), w, b, stride=layer.stride, dilation=layer.dilation,
                       groups=layer.groups)
        return activation(layer.activation, z, layer.slope) if layer.activation else z
    if kind == "dense":
        z = F.linear(x, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"))
        return activation(layer.activation, z, layer.slope) if layer.activation else z
    if kind in MAXPOOL:
        if layer.pad_before == layer.pad_after:  # PyTorch's own padding argument (-inf implicit padding)
            return MAXPOOL[kind](x, layer.kernel, layer.stride, padding=layer.pad_before)
        return MAXPOOL[kind](F.pad(x, torch_pad_arg(layer), value=-torch.inf), layer.kernel, layer.stride)
    if kind in AVGPOOL:
        if layer.pad_before == layer.pad_after:
            return AVGPOOL[kind](x, layer.kernel, layer.stride, padding=layer.pad_before, count_include_pad=True)
        return AVGPOOL[kind](F.pad(x, torch_pad_arg(layer)), layer.kernel, layer.stride)
    if kind == "global_avgpool":
        return x.mean(dim=tuple(range(2, x.dim())))
    if kind == "flatten":
        return x.flatten(1)
    if kind == "dropout":
        return x if mask is None else x * mask
    return activation(kind, x, layer.slope)


def _run(network: Network, params, x, masks, buffers=None, train=False):
    """-> (y, x leaf, param leaves), all float64 tensors that require grad. buffers: updated in place if train."""
    tparams = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    if buffers is None:
        buffers = {b.name: np.full(b.shape, b.fill) for b in network.buffer_specs}
    tbuffers = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in buffers.items()}
    values = {network.input_name: tx}
    for layer in network.layers:
        mask = masks.get(layer.name) if masks is not None else None
        mask = None if mask is None else torch.tensor(np.asarray(mask, np.float64))
        xs = [values[name] for name in layer.inputs]
        values[layer.name] = layer_forward(layer, xs[0], tparams, mask, tbuffers, train, xs)
    if train:
        for name, value in tbuffers.items():
            buffers[name][...] = value.numpy()
    return values[network.layers[-1].name], tx, tparams


def _grads(tx, tparams):
    dx = tx.grad.numpy() if tx.grad is not None else np.zeros(tuple(tx.shape))
    grads = {k: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape))) for k, p in tparams.items()}
    return dx, grads


def torch_forward(network: Network, params, x, masks=None, buffers=None, train=False) -> np.ndarray:
    """x: (N, *input_shape) -> y: (N, *output_shape)."""
    with torch.no_grad():
        return _run(network, params, x, masks, buffers, train)[0].numpy()


def torch_forward_backward(network: Network, params, x, dy, masks=None, buffers=None, train=False):
    """Forward x, backpropagate dy (the gradient of some loss w.r.t. y) -> (y, dx, {name: grad})."""
    y, tx, tparams = _run(network, params, x, masks, buffers, train)
    y.backward(torch.tensor(np.asarray(dy, dtype=np.float64)))
    return (y.detach().numpy(), *_grads(tx, tparams))


def torch_loss(network: Network, y: torch.Tensor, target) -> torch.Tensor:
    """The model's loss, mean over the batch; no loss statement means cross_entropy for flat outputs, else mse."""
    kind = network.loss or ("cross_entropy" if len(network.output_shape) == 1 else "mse")
    if kind == "cross_entropy":
        return F.cross_entropy(y, torch.tensor(np.asarray(target), dtype=torch.int64))
    return F.mse_loss(y, torch.tensor(np.asarray(target, dtype=np.float64)))


def torch_loss_backward(network: Network, params, x, target, masks=None, buffers=None, train=False):
    """Forward x, the loss against target, backward -> (loss, y, dx, {name: grad})."""
    y, tx, tparams = _run(network, params, x, masks, buffers, train)
    loss = torch_loss(network, y, target)
    loss.backward()
    return (loss.item(), y.detach().numpy(), *_grads(tx, tparams))
