"""Standalone C export of issue 15's layer kinds: conv_transpose1d/2d, global_maxpool, lrn, channel_shuffle,
elu/selu/hardsigmoid/log_softmax (as layers and as activation=), and average pooling with ceil=true or
count_pad=false (plus max pooling with ceil=true).

Every model below (and any model of specs/ using these kinds) is exported through `cnnc export` with random
weights, all of them are linked into ONE strict -O2 program, and its outputs must match the NumPy backend in
inference mode and PyTorch to 1e-5 relative.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.export_c import ISSUE15_KINDS, export_refusal
from cnnc.frontend import networks_from_file

from c_export_builds import GCC, export_models, finish_builds, rel_err, run_driver, start_builds
from conftest import SPECS
from test_export_c import randomized

BATCH = 3

EXTRA_MODELS = """
model decoder2d {
    input x[4, 3, 3]
    conv_transpose2d t1(filters=4, kernel=4, stride=2, padding=1, activation=selu)
    conv_transpose2d t2(filters=4, kernel=(2, 3), stride=(2, 1), dilation=(1, 2), groups=2, bias=false)
    conv_transpose2d t3(filters=3, kernel=3, stride=2, padding=1, output_padding=1, activation=elu)
    hardsigmoid
}
model decoder1d {
    input s[3, 5]
    conv_transpose1d t(filters=6, kernel=4, stride=3, padding=1, output_padding=2, groups=3, activation=elu)
    selu
    conv_transpose1d u(filters=2, kernel=3, dilation=3, padding=2, output_padding=2)
    flatten
    log_softmax
}
model lrn_shuffle {
    input x[6, 5, 5]
    lrn n1(size=3)
    conv2d c(filters=8, kernel=3, padding=1, groups=2)
    channel_shuffle s(groups=2)
    lrn n2(size=4)
    elu
    global_maxpool
    dense d(units=5, activation=log_softmax)
}
model pooling_options {
    input x[3, 9, 8]
    avgpool2d a(size=3, stride=2, padding=1, ceil=true)
    avgpool2d b(size=(3, 2), stride=2, padding=1, ceil=true, count_pad=false)
    maxpool2d m(size=2, ceil=true, from=x)
    avgpool2d c(size=3, stride=2, padding=1, count_pad=false)
    global_maxpool g1
    global_maxpool g2(from=b)
    concat cat(g1, g2)
    dense d(units=4, activation=hardsigmoid)
}
model pooling1d {
    input s[3, 10]
    avgpool1d a(size=3, stride=2, padding=1, ceil=true, count_pad=false)
    avgpool1d b(size=2, stride=3, padding=1, ceil=true)
    maxpool1d m(size=2, ceil=true)
    channel_shuffle(groups=3)
    global_maxpool
    selu
}
"""
EXPECTED = {"decoder2d", "decoder1d", "lrn_shuffle", "pooling_options", "pooling1d"}


def uses_issue15(net) -> bool:
    return any(layer.kind in ISSUE15_KINDS or layer.activation in ISSUE15_KINDS or layer.ceil or not layer.count_pad
               for layer in net.layers)


def extra_models(extra_file: Path) -> list[tuple[Path, str]]:
    """The models above and every model of specs/ that uses one of issue 15's kinds."""
    files = sorted(SPECS.glob("*.cnn")) + [extra_file]
    return [(path, net.name) for path in files for net in networks_from_file(path) if uses_issue15(net)]


pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every model through `cnnc export`, then build them all into one strict program."""
    root = tmp_path_factory.mktemp("export_c_extra")
    extra = root / "extra.cnn"
    extra.write_text(EXTRA_MODELS)
    exports = export_models(root, [(path, name, name) for path, name in extra_models(extra)], randomized)
    finish_builds(start_builds(root, exports, ["strict"]))
    return root, exports


def test_every_issue15_export_matches_numpy_and_torch(exported, torch):
    """Each export gives the NumPy backend's inference outputs to 1e-5 relative; the chains among them also
    PyTorch's (torch.nn.functional's own conv_transpose, lrn, channel_shuffle and activations). The pooling
    models are graphs or pool with PyTorch-less asymmetric padding: tests/test_layers_extra.py checks the
    NumPy backend against PyTorch for those configurations."""
    from test_layers_extra import torch_run

    root, exports = exported
    assert EXPECTED <= set(exports)
    failures, against_torch = [], set()
    for seed, (prefix, (out, m)) in enumerate(exports.items()):
        x = np.random.default_rng(200 + seed).standard_normal((BATCH, *m.input_shape)).astype(np.float32)
        want = m.forward(x).reshape(BATCH, -1)
        got = run_driver(root / "strict", prefix, x, want.shape[1])
        if np.abs(want).max() < 1e-3:
            failures.append(f"{prefix}: outputs too small to compare")
        if rel_err(got, want) > 1e-5:
            failures.append(f"{prefix}: relative error {rel_err(got, want):.2e} against numpy")
        if m.network.is_chain and not any(layer.ceil or not layer.count_pad for layer in m.network.layers):
            params64 = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
            reference = torch_run(m.network, params64, x.astype(np.float64))[0].detach().numpy().reshape(BATCH, -1)
            against_torch.add(prefix)
            if rel_err(got, reference) > 1e-5:
                failures.append(f"{prefix}: relative error {rel_err(got, reference):.2e} against torch")
    assert not failures, "\n".join(failures)
    assert {"decoder2d", "decoder1d", "lrn_shuffle"} <= against_torch


def test_int8_quantisation_takes_them_too():
    """The float export runs issue 15's kinds and so does the int8 one (tests/test_quantize_extra.py builds
    and compares it)."""
    from cnnc.quantize import check_quantizable

    net = cnnc.network_from_text("model m { input x[1, 7, 7]; avgpool2d p(size=2, ceil=true) }")
    assert export_refusal(net) is None
    check_quantizable(net)
