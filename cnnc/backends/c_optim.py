"""cnnc.optim's SGD and Adam with the step in C: one loop over a CModel's whole parameter block.

    opt = FusedAdam(m, lr=1e-3)          # m = cnnc.load(..., backend="c")
    opt.step()                           # same update as cnnc.optim.Adam(m.params, m.grads).step()

Only step() differs. The optimiser state (momentum buffers, Adam's moments) lives in one block per
state name, laid out like the parameter block, and `self.state[name][param]` are views on it, so
state_dict() and load_state_dict() are the base class's: a checkpoint moves freely between the fused
and the NumPy optimisers.
"""
from __future__ import annotations

import numpy as np

from ..optim import SGD, Adam, Optimizer
from .c_backend import CModel


def _check_model(model) -> CModel:
    if not isinstance(model, CModel):
        raise ValueError(f"a fused optimiser steps a C backend model (cnnc.load(..., backend='c')); "
                         f"got {type(model).__name__}")
    return model


def _state_block(opt: Optimizer, model: CModel, name: str):
    """The state `name` as one block with per-parameter views in opt.state[name], created (zeros,
    or a copy of arrays put there by load_state_dict) unless it already is one. -> a C pointer to it."""
    blocks = opt.__dict__.setdefault("_blocks", {})
    arrays = opt.state[name]
    block = blocks.get(name)
    if block is None or any(a.base is not block for a in arrays.values()) or len(arrays) != len(model.params):
        if arrays and set(arrays) != set(model.params):
            raise ValueError(f"optimiser state '{name}' has arrays for {len(arrays)} of the model's "
                             f"{len(model.params)} parameters; a fused step needs all of them or none")
        block = np.zeros(model.plan.param_count, model.dtype)
        views = {}
        for spec, field in zip(model.network.param_specs, model.plan.params):
            views[spec.name] = block[field.offset:field.offset + spec.size].reshape(spec.shape)
            if spec.name in arrays:
                views[spec.name][...] = arrays[spec.name]
        opt.state[name] = views
        blocks[name] = block
    return model._ptr(block, writable=True)


class FusedSGD(SGD):
    __doc__ = "torch.optim.SGD's rule, stepped in C. " + (SGD.__doc__ or "")

    def __init__(self, model: CModel, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        self.model = _check_model(model)
        super().__init__(model.params, model.grads, lr, momentum, weight_decay, nesterov)

    def step(self) -> None:
        m = self.model
        first = not self.state["momentum_buffer"]  # no buffers yet: they start as the gradient
        buffer = _state_block(self, m, "momentum_buffer") if self.momentum else m._ffi.NULL
        m._lib.sgd_step(m._param_mem, buffer, m._grad_mem, m.plan.param_count, self.lr, self.momentum,
                        self.weight_decay, int(self.nesterov), int(first))
        self.steps += 1


class FusedAdam(Adam):
    __doc__ = "torch.optim.Adam's rule, stepped in C. " + (Adam.__doc__ or "")

    def __init__(self, model: CModel, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.model = _check_model(model)
        super().__init__(model.params, model.grads, lr, betas, eps, weight_decay)

    def step(self) -> None:
        m = self.model
        exp_avg, exp_avg_sq = _state_block(self, m, "exp_avg"), _state_block(self, m, "exp_avg_sq")
        m._lib.adam_step(m._param_mem, exp_avg, exp_avg_sq, m._grad_mem, m.plan.param_count, self.lr, self.betas[0],
                         self.betas[1], self.eps, self.weight_decay, self.steps + 1)
        self.steps += 1
