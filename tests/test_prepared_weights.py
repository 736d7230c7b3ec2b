"""Inference keeps its prepared weights between passes (the C backend).

Before it computes, an inference pass packs convolution weights into tiles, transforms Winograd layers'
weights, and folds batch norms into the convolutions before them. Each batch slice keeps these prepared
weights, and prepares them again only when a parameter or running statistic they come from has changed,
or when a training or backward pass has reused their buffers. These tests change the weights every way a
user can: in place, through load_weights, by an optimiser step, and by training-mode batch norm. After each
change, every inference output must equal, bit for bit, the output of a model that has never run before."""
import numpy as np
import pytest

import cnnc
from cnnc.backends.c_codegen import BlockedConvPlan, GroupedConvPlan, WinogradConvPlan
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.optim import SGD

from conftest import compile_bundles

SPEC = """
model prep {
    input x[16, 10, 10]
    conv2d a(filters=16, kernel=3, padding=1, activation=relu)   # Winograd, its own weights
    conv2d b(filters=16, kernel=3, padding=1, bias=false)        # Winograd, bbn folded in
    batchnorm bbn
    relu br
    conv2d c(filters=24, kernel=3, stride=2, padding=1)          # packed tiles, cbn folded in
    batchnorm cbn
    conv2d d(filters=24, kernel=3, padding=1, groups=24, bias=false)  # depthwise, dbn folded in
    batchnorm dbn
    relu dr
    conv2d e(filters=32, kernel=3, padding=1, activation=relu)  # packed tiles, its own weights
    global_avgpool
    dense fc(units=5)
    loss cross_entropy
}
"""


@pytest.fixture(scope="module")
def module(cache_dir):
    return compile_bundles([cnnc.network_from_text(SPEC)], ("float32",), cache_dir)["float32"]


def fresh_output(module, model, x):
    """What a model that has never run outputs for x with `model`'s parameters and buffers."""
    other = module.model("prep")
    other.load_weights(model.state_dict())
    return other.forward(x, train=False)


def assert_fresh(module, model, x):
    y = model.forward(x, train=False)
    np.testing.assert_array_equal(y, fresh_output(module, model, x))
    return y


def test_the_plan_watches_exactly_what_inference_prepares_weights_from(module):
    plan = module.plans["prep"]
    kinds = {lp.layer.name: type(lp) for lp in plan.layers}
    assert kinds["a"] is WinogradConvPlan and kinds["b"] is WinogradConvPlan
    assert kinds["c"] is BlockedConvPlan and kinds["e"] is BlockedConvPlan
    assert kinds["d"] is GroupedConvPlan
    fields = {lp.layer.name: lp for lp in plan.layers}

    def p(name, tensor):
        return f"p.{getattr(fields[name], tensor)}"

    def s(name, tensor):
        return f"s.{getattr(fields[name], tensor)}"

    expected = [p("a", "weight"), p("a", "bias"),
                p("b", "weight"), p("bbn", "weight"), p("bbn", "bias"), s("bbn", "running_mean"), s("bbn", "running_var"),
                p("c", "weight"), p("c", "bias"), p("cbn", "weight"), p("cbn", "bias"), s("cbn", "running_mean"),
                s("cbn", "running_var"),
                p("d", "weight"), p("dbn", "weight"), p("dbn", "bias"), s("dbn", "running_mean"), s("dbn", "running_var"),
                p("e", "weight"), p("e", "bias")]
    assert [name for name, _ in plan.prepared] == expected  # not the dense layer: nothing prepares its weights
    network = module.plans["prep"].network
    sizes = {**{f"{spec.name}": spec.size for spec in network.param_specs},
             **{f"{spec.name}": spec.size for spec in network.buffer_specs}}
    assert sum(count for _, count in plan.prepared) == sum(size for name, size in sizes.items() if not name.startswith("fc."))


def test_inference_matches_the_numpy_reference_and_a_fresh_model_after_every_kind_of_change(module):
    rng = np.random.default_rng(7)
    m = module.model("prep", seed=3)
    reference = NumpyModel(cnnc.network_from_text(SPEC), "float32", 0)
    x1 = rng.standard_normal((1, 16, 10, 10)).astype(np.float32)
    x5 = rng.standard_normal((5, 16, 10, 10)).astype(np.float32)
    for name, buffer in m.buffers.items():  # running statistics that make the folds do something
        buffer[...] = rng.uniform(0.5, 1.5, buffer.shape) if name.endswith("running_var") else rng.standard_normal(buffer.shape)

    def check_all():
        for x in (x1, x5, x1):  # batch 1 runs one slice; batch 5 two (the second prepares then)
            y = assert_fresh(module, m, x)
            reference.load_weights(m.state_dict())
            np.testing.assert_allclose(y, reference.forward(x, train=False), rtol=2e-4, atol=2e-5)

    check_all()
    check_all()  # unchanged weights: the kept preparation, same outputs
    m.params["b.weight"][3, 2, 1, 1] += 0.5  # one weight of a folded Winograd layer, in place
    check_all()
    m.params["e.bias"][:] = -0.25  # the bias of an unfolded packed layer
    check_all()
    m.buffers["cbn.running_var"][5] *= 4.0  # a running statistic: the fold changes
    check_all()
    m.params["dbn.weight"][0] = -1.0  # a batch norm folded into the depthwise layer
    check_all()
    state = m.state_dict()
    state["a.weight"] = rng.standard_normal(state["a.weight"].shape).astype(np.float32)
    m.load_weights(state)
    check_all()


def test_training_and_backward_passes_do_not_leave_stale_prepared_weights(module):
    rng = np.random.default_rng(11)
    m = module.model("prep", seed=5)
    x1 = rng.standard_normal((1, 16, 10, 10)).astype(np.float32)
    x4 = rng.standard_normal((4, 16, 10, 10)).astype(np.float32)
    labels = rng.integers(0, 5, size=4)
    assert_fresh(module, m, x1)
    assert_fresh(module, m, x4)

    m.forward(x4, train=True)  # updates the running statistics, packs the unfolded weights
    assert_fresh(module, m, x1)

    y = m.forward(x4, train=False)  # an inference pass, then its backward (it recomputes the folded layers)
    m.backward(m.loss(y, labels)[1])
    assert_fresh(module, m, x4)

    optimizer = SGD(m.params, m.grads, lr=0.05)
    for _ in range(2):  # training steps change every parameter between inference passes
        y = m.forward(x4, train=True)
        m.backward(m.loss(y, labels)[1], input_grad=False)
        optimizer.step()
        assert_fresh(module, m, x1)
        assert_fresh(module, m, x4)


def test_the_kept_copy_counts_in_the_memory_the_model_reports(module):
    plan = module.plans["prep"]
    copy = sum(count for _, count in plan.prepared)
    assert plan.prepared_flags >= plan.slices
    vl = 16  # float32 reals per 64-byte vector: every region of the block is whole vectors
    assert plan.fixed_count == plan.prepared_offset + plan.prepared_flags + -(-copy // vl) * vl
    assert plan.prepared_offset % vl == 0 and plan.prepared_flags % vl == 0
    m = module.model("prep")
    m.forward(np.zeros((2, 16, 10, 10), np.float32))
    assert m.activation_bytes == plan.scratch_bytes(2, 4)
