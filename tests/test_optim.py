"""SGD and Adam: the same numbers as torch.optim over several steps, exact resumption from a
state_dict, and clear errors for bad hyperparameters."""
from __future__ import annotations

import math

import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.optim import SGD, Adam

try:
    import torch
except ImportError:  # only the comparison with torch.optim needs it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch.optim is the reference this test compares against")

SHAPES = {"c.weight": (3, 2, 2, 2), "c.bias": (3,), "d.weight": (4, 5)}


def gradient_sequence(steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Different gradients at every step (some entries exactly zero, as after a ReLU)."""
    rng = np.random.default_rng(seed)
    sequence = []
    for _ in range(steps):
        grads = {name: rng.normal(size=shape) * rng.choice([0.0, 1.0, 10.0], size=shape) for name, shape in SHAPES.items()}
        sequence.append(grads)
    return sequence


def run_cnnc(make, steps, lr_at=None):
    """-> the parameters after `steps` steps of the optimiser made by make(params, grads)."""
    rng = np.random.default_rng(1)
    params = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    grads = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    opt = make(params, grads)
    for t, step_grads in enumerate(gradient_sequence(steps)):
        if lr_at and t in lr_at:
            opt.lr = lr_at[t]
        for name in grads:
            grads[name][...] = step_grads[name]  # the model overwrites its grads in place
        opt.step()
    return params


def run_torch(make, steps, lr_at=None):
    rng = np.random.default_rng(1)
    params = {name: torch.tensor(rng.normal(size=shape), requires_grad=True) for name, shape in SHAPES.items()}
    opt = make(list(params.values()))
    for t, step_grads in enumerate(gradient_sequence(steps)):
        if lr_at and t in lr_at:
            opt.param_groups[0]["lr"] = lr_at[t]
        for name, p in params.items():
            p.grad = torch.tensor(step_grads[name])
        opt.step()
    return {name: p.detach().numpy() for name, p in params.items()}


CONFIGS = {  # (ours, torch's); torch's are only called when torch is present
    "sgd": (lambda p, g: SGD(p, g, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    "sgd momentum": (lambda p, g: SGD(p, g, lr=0.05, momentum=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    "sgd nesterov weight decay": (lambda p, g: SGD(p, g, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
                                  lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2)),
    "sgd weight decay": (lambda p, g: SGD(p, g, lr=0.2, weight_decay=0.1),
                         lambda ps: torch.optim.SGD(ps, lr=0.2, weight_decay=0.1)),
    "adam": (lambda p, g: Adam(p, g), lambda ps: torch.optim.Adam(ps)),
    "adam custom": (lambda p, g: Adam(p, g, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
                    lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
}


@needs_torch
@pytest.mark.parametrize("ours, theirs", CONFIGS.values(), ids=CONFIGS.keys())
def test_matches_torch_optim_over_several_steps(ours, theirs):
    lr_at = {3: 0.02}  # a schedule changes the learning rate between steps
    got, expected = run_cnnc(ours, 7, lr_at), run_torch(theirs, 7, lr_at)
    start = run_cnnc(ours, 0)
    for name in SHAPES:
        assert not np.allclose(got[name], start[name])  # the parameters did move
        assert np.abs(got[name] - expected[name]).max() <= 1e-12 * max(1.0, np.abs(expected[name]).max()), name


@pytest.mark.parametrize("make", [lambda p, g: SGD(p, g, lr=0.1, momentum=0.9, weight_decay=1e-3),
                                  lambda p, g: Adam(p, g, lr=0.01, weight_decay=1e-3)], ids=["sgd", "adam"])
def test_state_dict_resumes_exactly(make):
    rng = np.random.default_rng(0)
    start = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    sequence = gradient_sequence(6, seed=3)

    def steps(opt, params, grads, part):
        for step_grads in part:
            for name in grads:
                grads[name][...] = step_grads[name]
            opt.step()

    # uninterrupted: 6 steps
    params = {k: v.copy() for k, v in start.items()}
    grads = {k: np.zeros_like(v) for k, v in start.items()}
    straight = make(params, grads)
    steps(straight, params, grads, sequence)
    # interrupted after 3: a checkpoint of params and optimizer state, then a fresh optimizer resumes
    params2 = {k: v.copy() for k, v in start.items()}
    grads2 = {k: np.zeros_like(v) for k, v in start.items()}
    first = make(params2, grads2)
    steps(first, params2, grads2, sequence[:3])
    first.lr = 0.123
    checkpoint = first.state_dict()
    saved_params = {k: v.copy() for k, v in params2.items()}
    steps(first, params2, grads2, sequence[3:4])  # more steps must not change the saved state
    params3 = {k: v.copy() for k, v in saved_params.items()}
    grads3 = {k: np.zeros_like(v) for k, v in start.items()}
    resumed = make(params3, grads3)
    resumed.load_state_dict(checkpoint)
    assert resumed.lr == 0.123 and resumed.steps == 3
    resumed.lr = straight.lr
    steps(resumed, params3, grads3, sequence[3:])
    for name in start:
        assert np.array_equal(params3[name], params[name]), name


def test_state_dict_is_plain_data_with_every_hyperparameter():
    p, g = {"w": np.ones(3)}, {"w": np.full(3, 0.5)}
    opt = Adam(p, g, lr=0.01, betas=(0.8, 0.9))
    opt.step()
    state = opt.state_dict()
    assert state["kind"] == "adam" and state["lr"] == 0.01 and state["betas"] == (0.8, 0.9) and state["steps"] == 1
    assert set(state["exp_avg"]) == {"w"} and np.allclose(state["exp_avg"]["w"], 0.2 * 0.5)
    state["exp_avg"]["w"][...] = 99  # a copy, not the live buffer
    assert np.allclose(opt.state["exp_avg"]["w"], 0.1)


def test_updates_model_parameters_in_place_and_keeps_their_dtype():
    m = NumpyModel(cnnc.network_from_text("model m {\n input x[3]\n dense d(units=2)\n loss mse\n}"), dtype="float32")
    weight = m.params["d.weight"]
    before = weight.copy()
    opt = Adam(m.params, m.grads, lr=0.1)
    _, dy = m.loss(m.forward(np.ones((2, 3))), np.zeros((2, 2)))
    m.backward(dy)
    opt.step()
    assert m.params["d.weight"] is weight and weight.dtype == np.float32
    assert opt.state["exp_avg"]["d.weight"].dtype == np.float32
    assert np.allclose(weight, before - 0.1 * np.sign(m.grads["d.weight"]), atol=1e-6)  # Adam's first step is lr*sign(g)


@pytest.mark.parametrize("make, message", [
    (lambda p, g: SGD(p, g, lr=-0.1), r"lr \(learning rate\) must be a finite number >= 0; got -0.1"),
    (lambda p, g: SGD(p, g, lr=math.nan), r"lr \(learning rate\) must be a finite number >= 0; got nan"),
    (lambda p, g: Adam(p, g, lr=math.inf), r"lr \(learning rate\) must be a finite number >= 0; got inf"),
    (lambda p, g: SGD(p, g, lr="fast"), r"lr \(learning rate\) must be a number; got 'fast'"),
    (lambda p, g: SGD(p, g, momentum=-0.5), "momentum must be a finite number >= 0; got -0.5"),
    (lambda p, g: SGD(p, g, weight_decay=math.nan), "weight_decay must be a finite number >= 0; got nan"),
    (lambda p, g: SGD(p, g, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda p, g: Adam(p, g, betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\); got 1.0"),
    (lambda p, g: Adam(p, g, betas=(-0.1, 0.9)), r"betas\[0\] must be in \[0, 1\); got -0.1"),
    (lambda p, g: Adam(p, g, betas=0.9), r"betas must be a pair \(beta1, beta2\); got 0.9"),
    (lambda p, g: Adam(p, g, eps=-1e-8), "eps must be a finite number >= 0; got -1e-08"),
])
def test_bad_hyperparameters_are_refused_with_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        make({"w": np.zeros(2)}, {"w": np.zeros(2)})


def test_lr_set_by_a_schedule_is_checked_too():
    opt = SGD({"w": np.zeros(2)}, {"w": np.zeros(2)}, lr=0.1)
    with pytest.raises(ValueError, match="got nan"):
        opt.lr = float("nan")
    assert opt.lr == 0.1


def test_params_and_grads_must_pair_up():
    with pytest.raises(ValueError, match="same names; these are in only one of them: b"):
        SGD({"w": np.zeros(2), "b": np.zeros(1)}, {"w": np.zeros(2)})
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(3,\) but params\['w'\] has \(2,\)"):
        Adam({"w": np.zeros(2)}, {"w": np.zeros(3)})


def test_load_state_dict_refuses_a_state_that_does_not_fit():
    p, g = {"w": np.zeros(2)}, {"w": np.ones(2)}
    adam = Adam(p, g)
    adam.step()
    sgd = SGD(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="optimizer state is for 'adam', not 'sgd'"):
        sgd.load_state_dict(adam.state_dict())
    other = Adam({"v": np.zeros(2)}, {"v": np.zeros(2)})
    with pytest.raises(ValueError, match="array for unknown parameter 'w'"):
        other.load_state_dict(adam.state_dict())
    state = adam.state_dict()
    state["exp_avg_sq"]["w"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"'exp_avg_sq' for 'w' has shape \(5,\); expected \(2,\)"):
        adam.load_state_dict(state)
    state = adam.state_dict()
    del state["betas"]
    with pytest.raises(ValueError, match="optimizer state lacks betas"):
        adam.load_state_dict(state)
    state = adam.state_dict()
    state["betas"] = (0.9, 2.0)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        adam.load_state_dict(state)
    assert adam.betas == (0.9, 0.999) and adam.steps == 1  # a refused state changes nothing
