"""Optimisers that update a model's parameters in place: SGD (with momentum, Nesterov) and Adam.

    opt = Adam(m.params, m.grads, lr=1e-3)
    for x, labels in batches:
        loss, dy = m.loss(m.forward(x, train=True), labels)
        m.backward(dy)          # fills m.grads
        opt.step()              # updates m.params in place
    opt.lr = 1e-4               # a schedule may change the learning rate between steps

The update rules are exactly torch.optim.SGD's and torch.optim.Adam's (weight decay is added to the
gradient, "L2" style; dampening 0, no amsgrad). Optimiser state is kept in the parameters' dtype, and
state_dict() / load_state_dict() let a training checkpoint resume bit for bit.
"""
from __future__ import annotations

import math

import numpy as np


def _check(name: str, value, ok: bool, rule: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if math.isnan(value) or not ok(value):
        raise ValueError(f"{name} must be {rule}; got {value}")
    return value


def check_lr(lr) -> float:
    return _check("lr (learning rate)", lr, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")


class Optimizer:
    """What SGD and Adam share: the params/grads pairing, the lr attribute and the checkpoint format."""

    kind = "optimizer"
    hyperparameters: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()  # per-parameter state arrays, e.g. ("exp_avg", "exp_avg_sq")

    def __init__(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float):
        if set(params) != set(grads):
            extra = sorted(set(params) ^ set(grads))
            raise ValueError("params and grads must have the same names; these are in only one of them: "
                             + ", ".join(extra))
        for name, p in params.items():
            if grads[name].shape != p.shape:
                raise ValueError(f"grads['{name}'] has shape {grads[name].shape} but params['{name}'] has {p.shape}")
        self.params, self.grads = params, grads
        self.lr = lr
        self.steps = 0  # how many step() calls so far
        self.state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.state_names}

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = check_lr(value)

    def step(self) -> None:
        for name, p in self.params.items():
            self._update(name, p, self.grads[name])
        self.steps += 1

    def configure(self, **hyperparameters) -> None:
        """Check and set the hyperparameters other than lr (all of them, or none on an error)."""
        raise NotImplementedError

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain numbers and copies of the state arrays:
        {"kind": "adam", "lr": ..., <hyperparameters>, "steps": 3, "exp_avg": {name: array}, ...}"""
        return {"kind": self.kind, "lr": self.lr, **{h: getattr(self, h) for h in self.hyperparameters},
                "steps": self.steps, **{s: {k: v.copy() for k, v in self.state[s].items()} for s in self.state_names}}

    def load_state_dict(self, state: dict) -> None:
        """Restore hyperparameters, the step count and every state array; names and shapes are checked."""
        if state.get("kind") != self.kind:
            raise ValueError(f"optimizer state is for {state.get('kind')!r}, not {self.kind!r}")
        missing = [key for key in ("lr", "steps", *self.hyperparameters, *self.state_names) if key not in state]
        if missing:
            raise ValueError(f"optimizer state lacks {', '.join(missing)}")
        for s in self.state_names:
            for name, value in state[s].items():
                if name not in self.params:
                    raise ValueError(f"optimizer state '{s}' has an array for unknown parameter '{name}'")
                if np.shape(value) != self.params[name].shape:
                    raise ValueError(f"optimizer state '{s}' for '{name}' has shape {np.shape(value)}; "
                                     f"expected {self.params[name].shape}")
        lr = check_lr(state["lr"])
        steps = _check("steps", state["steps"], lambda v: 0 <= v < math.inf and v == int(v), "a whole number >= 0")
        self.configure(**{h: state[h] for h in self.hyperparameters})  # checks them all before setting any
        self.lr, self.steps = lr, int(steps)
        self.state = {s: {name: np.array(value, dtype=self.params[name].dtype) for name, value in state[s].items()}
                      for s in self.state_names}


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0):
        g = grad + weight_decay * p
        buf = g on the first step, else momentum * buf + g          (when momentum > 0)
        g = g + momentum * buf if nesterov else buf
        p = p - lr * g"""

    kind = "sgd"
    hyperparameters = ("momentum", "weight_decay", "nesterov")
    state_names = ("momentum_buffer",)

    def __init__(self, params, grads, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, grads, lr)
        self.configure(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    def configure(self, momentum, weight_decay, nesterov) -> None:
        momentum = _check("momentum", momentum, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
        weight_decay = _check("weight_decay", weight_decay, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, bool(nesterov)

    def _update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buffers = self.state["momentum_buffer"]
            if name not in buffers:
                buffers[name] = g.copy()
            else:
                buffers[name] *= self.momentum
                buffers[name] += g
            g = g + self.momentum * buffers[name] if self.nesterov else buffers[name]
        p -= self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam (no amsgrad), t counting steps from 1:
        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)"""

    kind = "adam"
    hyperparameters = ("betas", "eps", "weight_decay")
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, grads, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, grads, lr)
        self.configure(betas=betas, eps=eps, weight_decay=weight_decay)

    def configure(self, betas, eps, weight_decay) -> None:
        if not isinstance(betas, (tuple, list, np.ndarray)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        betas = tuple(_check(f"betas[{i}]", b, lambda v: 0.0 <= v < 1.0, "in [0, 1)") for i, b in enumerate(betas))
        eps = _check("eps", eps, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
        weight_decay = _check("weight_decay", weight_decay, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, name, p, g):
        beta1, beta2 = self.betas
        t = self.steps + 1
        if self.weight_decay:
            g = g + self.weight_decay * p
        m = self.state["exp_avg"].setdefault(name, np.zeros_like(p))
        v = self.state["exp_avg_sq"].setdefault(name, np.zeros_like(p))
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        step_size = self.lr / (1 - beta1**t)
        denom = np.sqrt(v) / math.sqrt(1 - beta2**t) + self.eps
        p -= step_size * (m / denom)
