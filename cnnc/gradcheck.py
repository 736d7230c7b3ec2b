"""Check a backend's gradients against central finite differences, like torch.autograd.gradcheck.

    errors = gradcheck(cnnc.load("specs/lenet5.cnn", dtype="float64"))   # {"c1.weight": 3e-10, ..., "input": ...}

For every parameter tensor and the input, each entry is perturbed by +-eps and the model's own loss
re-evaluated: numeric = (L(p + eps) - L(p - eps)) / (2 eps), in float64, with train=False (dropout is
the identity, batch norm uses its running statistics). gradcheck(model, train=True) checks training
mode instead, where batch norm normalises with the batch's own statistics (so the gradient flows through
them); it refuses models with dropout, whose masks would change between evaluations. The error of a tensor is max|analytic - numeric| / max(max|analytic|, max|numeric|, 1e-8):
relative to the tensor's largest gradient, so entries near zero do not blow it up.

Works with any Model subclass: it only calls forward, loss and backward and writes params in place.
"""
from __future__ import annotations

import math

import numpy as np

from .model import Model

THRESHOLD = 1e-6  # a tensor passes when its error is below this
TINY = 1e-8  # floor of the relative error's denominator


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max|a - n| / max(max|a|, max|n|, TINY): one number per tensor, robust to entries near zero."""
    scale = max(float(np.max(np.abs(analytic), initial=0.0)), float(np.max(np.abs(numeric), initial=0.0)), TINY)
    return float(np.max(np.abs(analytic - numeric), initial=0.0)) / scale


def gradcheck_inputs(model: Model, batch: int, seed: int):
    """A random batch, target and parameter set, all drawn from `seed`.

    Parameters are normal with std 1/sqrt(fan_in), biases included: a zero bias would put outputs
    whose window lies wholly in the padding exactly on ReLU's kink, where finite differences disagree
    with any one-sided derivative. Continuous random inputs make max-pool ties unlikely likewise."""
    rng = np.random.default_rng(seed)
    params = {spec.name: rng.normal(0.0, 1.0 / math.sqrt(spec.fan_in), spec.shape)
              for spec in model.network.param_specs}
    x = rng.normal(size=(batch, *model.input_shape))
    if model.loss_kind in ("cross_entropy", "nll"):
        target = rng.integers(0, model.output_shape[0], size=batch)
    else:
        target = rng.normal(size=(batch, *model.output_shape))
    return params, x, target


def gradcheck(model: Model, batch: int = 2, eps: float = 1e-6, seed: int = 0,
              samples: int | None = None, train: bool = False) -> dict[str, float]:
    """-> {tensor name: relative error} for every parameter and "input" (the gradient dx).

    The check runs at random parameters drawn from `seed`; see gradcheck_tensors, which yields the same
    errors one tensor at a time."""
    return dict(gradcheck_tensors(model, batch=batch, eps=eps, seed=seed, samples=samples, train=train))


def gradcheck_tensors(model: Model, batch: int = 2, eps: float = 1e-6, seed: int = 0, samples: int | None = None,
                      train: bool = False):
    """Yield (tensor name, relative error) for every parameter, then "input", as each is checked.

    The check runs at random parameters drawn from `seed` (see gradcheck_inputs); the model's own
    parameters are put back afterwards. samples: check only this many randomly chosen entries per
    tensor (None: every entry). The model must be float64: float32 rounding swamps the differences.
    train: check training mode (see above); the running statistics are put back afterwards too."""
    if model.dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 model (finite differences drown in float32 rounding); "
                         f"got {model.dtype.name}: build it with dtype='float64'")
    if batch < 1:
        raise ValueError(f"gradcheck batch must be at least 1; got {batch}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"gradcheck eps must be a positive number; got {eps}")
    if samples is not None and samples < 1:
        raise ValueError(f"gradcheck samples must be at least 1 (or None for every entry); got {samples}")
    if train and any(layer.kind == "dropout" and layer.rate > 0 for layer in model.network.layers):
        raise ValueError("gradcheck in training mode needs a model without dropout: its masks change at every "
                         "forward pass")
    original = {name: value.copy() for name, value in model.params.items()}
    original_buffers = {name: value.copy() for name, value in model.buffers.items()}
    try:
        params, x, target = gradcheck_inputs(model, batch, seed)
        for name, value in params.items():
            model.params[name][...] = value

        # analytic: one forward and backward
        _, dy = model.loss(model.forward(x, train=train), target)
        dx = model.backward(dy)
        analytic = {name: np.array(g, dtype=np.float64) for name, g in model.grads.items()}
        analytic["input"] = np.array(dx, dtype=np.float64)

        def loss_at() -> float:
            return model.loss(model.forward(x, train=train), target)[0]

        pick = np.random.default_rng([seed, 2])
        tensors = [(name, model.params[name]) for name in model.params] + [("input", x)]
        for name, tensor in tensors:
            indices = list(np.ndindex(tensor.shape))
            if samples is not None and samples < len(indices):
                indices = [indices[i] for i in np.sort(pick.choice(len(indices), samples, replace=False))]
            numeric = np.zeros(len(indices))
            for k, index in enumerate(indices):
                keep = tensor[index]
                tensor[index] = keep + eps
                plus = loss_at()
                tensor[index] = keep - eps
                minus = loss_at()
                tensor[index] = keep
                numeric[k] = (plus - minus) / (2 * eps)
            chosen = np.array([analytic[name][index] for index in indices])
            yield name, relative_error(chosen, numeric)
    finally:
        for name, value in original.items():
            model.params[name][...] = value
        for name, value in original_buffers.items():
            model.buffers[name][...] = value


# ---- cnnc gradcheck ------------------------------------------------------------------------------
def estimate_line(model: Model, shapes: dict[str, tuple], batch: int, samples: int | None, backend: str) -> str:
    """How many loss evaluations the check takes and about how long, timed on one evaluation, with the
    options that make it faster when it will take more than a few seconds."""
    import time

    entries = sum(min(math.prod(shape), samples or math.prod(shape)) for shape in shapes.values())
    x = np.zeros((batch, *model.input_shape))
    timings = []
    for _ in range(3):  # the first call warms caches up: take the fastest
        started = time.perf_counter()
        model.forward(x, train=False)
        timings.append(time.perf_counter() - started)
    seconds = 2 * entries * min(timings)
    line = f"{entries:,} entries, 2 loss evaluations each: about {_duration(seconds)}"
    if seconds > 10:
        hints = ([] if samples else ["--samples 20 checks 20 random entries per tensor"]) + \
                ([] if backend == "c" else ["--backend c runs each evaluation in compiled C"])
        line += f" ({'; '.join(hints)})" if hints else ""
    return line


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
