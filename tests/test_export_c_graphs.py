"""Standalone C export of graph models (issue 15): from=, add, concat, batch norm (folded into the convolution
before it, or batchnorm_forward in inference mode), grouped and depthwise convolutions, relu6/silu/hardswish,
and the arena planned by the tensors' lifetimes.

Every graph model (the graph specs of specs/ and the extra ones below) is exported through `cnnc export` with
random weights AND random running statistics, then all of them are linked into one program, built twice in
parallel like tests/test_export_c.py: strict -O2 with static arenas, and -fsanitize=address,undefined with
caller-owned arenas malloc'd to exactly PREFIX_ARENA_BYTES. The outputs must match the NumPy backend in
inference mode (and PyTorch) to 1e-5 relative. The planner is tested as a pure function.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.export_c import batchnorm_folds, export_c, export_refusal, memory_plan, memory_report, plan_offsets
from cnnc.frontend import network_list_from_text, networks_from_file

from c_export_builds import GCC, export_models, finish_builds, rel_err, run_driver, start_builds
from conftest import SPECS, is_classic_chain

BATCH = 3

# What specs/ does not show: a 1-D graph and a flat one, batch norm where it cannot fold (on the input, after
# a fused activation, after dense, add and concat, after a convolution something else reads too), an
# activation of a tensor a later layer still reads (it works on a copy), add of three operands, and a model
# whose last layer is an alias of a merge.
EXTRA_GRAPHS = """
model graph1d {
    input s[4, 21]
    batchnorm bn_in
    conv1d a(filters=6, kernel=3, padding=1, bias=false)
    batchnorm a_bn
    silu a_act
    conv1d dw(filters=6, kernel=3, padding=1, groups=6)
    batchnorm dw_bn
    hardswish dw_act
    conv1d g(filters=4, kernel=1, groups=2, activation=relu6, from=a_act)
    batchnorm g_bn
    conv1d p(filters=6, kernel=1, from=dw_act)
    add sum(p, a_act, dw_act)
    relu6 sum_act
    concat cat(sum_act, g_bn)
    maxpool1d pool(size=2)
    batchnorm cat_bn
    global_avgpool
    dense out(units=5)
}
model graph_flat {
    input v[12]
    dense a(units=8)
    batchnorm a_bn
    relu6 a_act
    dense b(units=8, activation=silu, from=v)
    add ab(a_act, b)
    batchnorm ab_bn
    hardswish h(from=b)
    dropout(rate=0.3)
    concat cat(ab_bn, h, a_act)
    batchnorm cat_bn
    dense out(units=4)
    sigmoid
}
model graph_shared {
    input x[3, 9, 9]
    conv2d c(filters=4, kernel=3, padding=1)
    batchnorm c_bn
    conv2d d(filters=4, kernel=1, from=c)
    relu r(from=c)
    add s(c_bn, d, r)
    conv2d e(filters=4, kernel=3, stride=2, activation=tanh)
    batchnorm e_bn
    concat cat(e_bn, e)
    flatten
}
"""


def graph_models(extra_file: Path) -> list[tuple[Path, str]]:
    """Every model of specs/ and of extra_file that is a graph or has a layer kind chains lack, and that the
    standalone C export runs; the chains are exported by tests/test_export_c.py."""
    files = sorted(SPECS.glob("*.cnn")) + [extra_file]
    return [(path, net.name) for path in files for net in networks_from_file(path)
            if not is_classic_chain(net) and export_refusal(net) is None]


def randomized(path: Path, name: str, seed: int):
    """cnnc.load with the seed, non-zero biases, and batch norms with non-trivial weights and statistics."""
    m = cnnc.load(path, model=name, seed=seed)
    rng = np.random.default_rng(seed)
    for key, p in m.params.items():
        if key.endswith(".bias"):
            p[...] = rng.normal(0.0, 0.5, p.shape)
        elif p.ndim == 1:  # a batch norm's weight
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    for key, b in m.buffers.items():
        b[...] = rng.normal(0.0, 0.5, b.shape) if key.endswith("mean") else rng.uniform(0.5, 2.0, b.shape)
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every graph model through `cnnc export`, then build the strict and the sanitizer programs."""
    root = tmp_path_factory.mktemp("export_c_graphs")
    extra = root / "extra.cnn"
    extra.write_text(EXTRA_GRAPHS)
    exports = export_models(root, [(path, name, name) for path, name in graph_models(extra)], randomized)
    return root, exports, finish_builds(start_builds(root, exports, ["strict", "sanitized"]))


pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")


def test_every_graph_export_matches_numpy_and_torch_in_every_build(exported, torch):
    """Each export, in each build, gives the NumPy backend's inference outputs (running statistics) and
    PyTorch's to 1e-5 relative; the static-arena and the sanitized external-arena builds agree bit for bit."""
    from torch_reference import torch_forward

    root, exports, builds = exported
    failures = []
    for seed, (prefix, (out, m)) in enumerate(exports.items()):
        x = np.random.default_rng(100 + seed).standard_normal((BATCH, *m.input_shape)).astype(np.float32)
        want = m.forward(x).reshape(BATCH, -1)
        params64 = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
        buffers64 = {k: np.asarray(v, np.float64).copy() for k, v in m.buffers.items()}
        reference = np.asarray(torch_forward(m.network, params64, x.astype(np.float64), buffers=buffers64)).reshape(BATCH, -1)
        outputs = {b: run_driver(root / b, prefix, x, want.shape[1]) for b in builds}
        if rel_err(want, reference) > 1e-5:
            failures.append(f"{prefix}: numpy and torch differ by {rel_err(want, reference):.2e}")
        for build, got in outputs.items():
            for what, expected in (("numpy", want), ("torch", reference)):
                if rel_err(got, expected) > 1e-5:
                    failures.append(f"{prefix} ({build} build): relative error {rel_err(got, expected):.2e} against {what}")
        if not np.array_equal(outputs["strict"], outputs["sanitized"]):
            failures.append(f"{prefix}: static and external arena builds differ")
        if np.abs(want).max() < 1e-3:
            failures.append(f"{prefix}: outputs too small to compare")
    assert not failures, "\n".join(failures)
    assert set(exports) == {"resnet8", "mobilenet_small", "inception_small", "graph1d", "graph_flat", "graph_shared"}


def test_every_exportable_spec_has_a_round_trip_test(tmp_path):
    """Every model of specs/ that the export runs is built and compared either here (graphs) or in
    tests/test_export_c.py (chains); every one of them is exportable now."""
    extra = tmp_path / "extra.cnn"
    extra.write_text(EXTRA_GRAPHS)
    chains = {net.name for path in sorted(SPECS.glob("*.cnn")) for net in networks_from_file(path)
              if is_classic_chain(net)}  # what tests/test_export_c.py exports
    graphs = {name for path, name in graph_models(extra) if path != extra}
    every = {net.name for path in sorted(SPECS.glob("*.cnn")) for net in networks_from_file(path)}
    assert chains | graphs == every and not chains & graphs
    assert graphs == {"resnet8", "mobilenet_small", "inception_small"}


# ==== the arena plan ===========================================================================================
def live_sets(tensors):
    steps = range(min(t[1] for t in tensors), max(t[2] for t in tensors) + 1)
    return [[i for i, t in enumerate(tensors) if t[1] <= s <= t[2]] for s in steps]


def assert_valid(tensors, offsets, arena):
    for i, j in combinations(range(len(tensors)), 2):
        (si, fi, li), (sj, fj, lj) = tensors[i], tensors[j]
        if fi <= lj and fj <= li:  # alive at a common step: disjoint memory
            assert offsets[i] + si <= offsets[j] or offsets[j] + sj <= offsets[i], (tensors, offsets)
    assert all(0 <= o and o + t[0] <= arena for o, t in zip(offsets, tensors))
    assert arena == max(o + t[0] for o, t in zip(offsets, tensors))


def test_planner_never_overlaps_live_tensors_and_reuses_dead_ones():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        tensors = []
        for _ in range(n):
            first = int(rng.integers(0, 10))
            tensors.append((int(rng.integers(1, 50)), first, first + int(rng.integers(0, 4))))
        offsets, arena = plan_offsets(tensors)
        assert_valid(tensors, offsets, arena)
        lower = max(sum(tensors[i][0] for i in live) for live in live_sets(tensors))
        assert lower <= arena <= sum(t[0] for t in tensors)
    # a chain: each tensor alive while written and while the next layer reads it -> the largest adjacent pair
    sizes = [4704, 1176, 1600, 400, 120, 84]
    chain = [(s, i, i + 1) for i, s in enumerate(sizes)]
    offsets, arena = plan_offsets(chain)
    assert_valid(chain, offsets, arena)
    assert arena == 4704 + 1176
    # by hand: a (10, steps 0-2) and b (5, 1-1) are alive together; c (8, 3-4) reuses a's slot
    assert plan_offsets([(10, 0, 2), (5, 1, 1), (8, 3, 4)]) == ([0, 10, 0], 15)
    assert plan_offsets([]) == ([], 0)


def test_plans_of_the_graph_specs_keep_every_read_tensor_intact(tmp_path):
    """Replay each plan over a stamped arena: every buffer a step reads still holds, whole, what the step that
    wrote it left there (no later write clobbered any part of it), and nothing leaves the arena."""
    extra = tmp_path / "extra.cnn"
    extra.write_text(EXTRA_GRAPHS)
    for path, name in graph_models(extra):
        network = cnnc.read_network(path, name)
        plan = memory_plan(network)
        stamp = np.full(plan.arena_floats, -1)
        written = {}  # step number -> (offset, size) it wrote
        for number, step in enumerate(plan.steps):
            read_sizes = ([step.size] if step.op != "compute" else [int(np.prod(s)) for s in step.layer.in_shapes])
            for buffer, size in zip(step.srcs, read_sizes):
                if buffer.where != "arena":
                    continue
                region = stamp[buffer.offset:buffer.offset + size]
                assert len(region) == size and len(set(region.tolist())) == 1, f"{name}: step {number} reads a torn buffer"
                assert written[int(region[0])] == (buffer.offset, size), f"{name}: step {number} reads another tensor"
            for buffer, size in ((step.dst, step.size), (step.scratch, 2 * step.layer.in_shape[0] if step.scratch else 0)):
                if buffer is not None and buffer.where == "arena":
                    assert buffer.offset + size <= plan.arena_floats
                    if buffer is step.scratch:
                        continue
                    stamp[buffer.offset:buffer.offset + size] = number
                    written[number] = (buffer.offset, size)


def test_resnet8_arena_is_a_fraction_of_one_buffer_per_tensor():
    network = cnnc.read_network(SPECS / "resnet8.cnn")
    plan = memory_plan(network)
    # the identity block keeps three 16x28x28 tensors alive: its input (read again by the add), c2's output
    # and the sum; nothing needs more
    assert plan.arena_floats == 3 * 16 * 28 * 28
    assert plan.arena_floats < plan.tensor_floats < network.activation_elements
    assert plan.tensor_floats == 87_872
    # the 9 batch norms all fold: the weights are the convolutions' plus a bias each, and the dense layer's
    assert len(plan.folds) == 9 and plan.weight_floats == 77_418
    report = memory_report(network)
    assert "150,528 bytes" in report and "840,704 bytes" in report and "460,200 bytes" in report


def test_batchnorm_folds_only_where_exact():
    folds = {network.name: {bn: conv.name for bn, conv in batchnorm_folds(network).items()}
             for network in network_list_from_text(EXTRA_GRAPHS)}
    # a_bn and dw_bn follow a convolution read by nothing else; g_bn follows a fused relu6; cat_bn a pool
    assert folds["graph1d"] == {"a_bn": "a", "dw_bn": "dw"}
    assert folds["graph_flat"] == {}  # after dense, add and concat: batchnorm_forward
    assert folds["graph_shared"] == {}  # c is read by d and r too; e has a fused tanh


@pytest.mark.parametrize("text", [
    "model m { input x[2, 8]; conv_transpose1d t(filters=2, kernel=2) }",
    "model m { input v[4]; dense a(units=2, activation=elu) }",
    "model m { input x[1, 5, 5]; maxpool2d p(size=2, ceil=true) }",
])
def test_issue15_kinds_plan_for_the_float_export_and_int8_takes_them(text, tmp_path, capsys):
    """The float export plans them (tests/test_export_c_extra.py builds and runs them); so does int8
    (tests/test_quantize_extra.py)."""
    from cnnc.quantize import check_quantizable

    network = cnnc.network_from_text(text)
    assert memory_plan(network).steps
    assert export_refusal(network, "int8 quantisation") is None
    check_quantizable(network)
    spec = tmp_path / "m.cnn"
    spec.write_text(text)
    assert main(["export", str(spec), "--format", "c", "--dry-run"]) == 0
    assert "standalone C export (float32)" in capsys.readouterr().out


def test_missing_running_statistics_are_an_error_not_a_crash(tmp_path):
    from cnnc.export_c import render_c

    m = randomized(SPECS / "resnet8.cnn", "resnet8", 0)
    with pytest.raises(ValueError, match="running statistics stem_bn.running_mean"):
        render_c(m.network, m.params, "resnet8", {})
    export_c(m, tmp_path / "ok")
    assert "batch norm stem_bn folded in" in (tmp_path / "ok" / "resnet8.c").read_text()
