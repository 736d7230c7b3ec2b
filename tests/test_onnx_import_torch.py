"""Networks written by PyTorch's ONNX exporter (the TorchScript one, `dynamo=False`: torch 2.13's default,
the dynamo exporter, needs the onnxscript package) import and compute what PyTorch computes, on the NumPy
and the C backend in float64: residual blocks with projection shortcuts, MobileNetV2 and Inception blocks,
ZeroPad2d, x.view(x.size(0), -1), BatchNorm1d after Linear, silu and hardswish, at opsets 13 and 17 with a
dynamic batch, batch norm folded into the convolutions (the exporter's eval mode) or kept
(TrainingMode.PRESERVE).

Every case is exported and imported once per session (the `imported` fixture), and all the imported networks
are compiled into ONE float64 C module (compile time is what CI pays)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from conftest import compile_bundles

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
nn = torch.nn
F = nn.functional

from cnnc.import_onnx import import_onnx  # noqa: E402

OPSETS = (13, 17)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-30))


def randomise_batch_norms(module: nn.Module, seed: int) -> nn.Module:
    """Running statistics and affine parameters away from their initial values, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return module.eval()


def export(module, shape, path, opset, keep_batch_norm=False):
    training = torch.onnx.TrainingMode.PRESERVE if keep_batch_norm else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, torch.randn(2, *shape), str(path), dynamo=False, opset_version=opset,
                          training=training, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load(str(path))


# ---- the networks ----------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet's basic block; with stride 2 its shortcut is a 1x1 projection with batch norm."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, ReLU6, 3x3 depthwise, ReLU6, linear 1x1 projection, residual."""

    def __init__(self, channels, expand):
        super().__init__()
        hidden = channels * expand
        self.conv = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.conv(x)


class MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = InvertedResidual(8, 4)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Hardswish(), nn.Conv2d(16, 16, 1), nn.SiLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = self.head(self.block(self.stem(x)))
        return self.fc(y.mean((2, 3)))


class Inception(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(cin, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 5, padding=2), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 3, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.inc = Inception(8)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.inc(self.stem(x)), 1), 1))


class ExamplesMnist(nn.Module):
    """pytorch/examples' mnist/main.py network."""

    def __init__(self, log_softmax=True):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)
        self.log_softmax = log_softmax

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1) if self.log_softmax else x


class Padded(nn.Module):
    """ZeroPad2d before a convolution (symmetric per axis) and before average pooling, then x.view."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 1, 2, 2))  # left, right, top, bottom
        self.conv = nn.Conv2d(2, 4, 3)
        self.pool_pad = nn.ZeroPad2d(1)
        self.fc = nn.Linear(4 * 6 * 4, 6)

    def forward(self, x):
        y = F.relu(self.conv(self.pad(x)))              # (4, 9 + 4 - 2, 7 + 2 - 2) = (4, 11, 7)
        y = F.avg_pool2d(self.pool_pad(y), 3, 2)         # (4, 6, 4) ... with the zeros counted
        return self.fc(y.view(y.size(0), -1))


class ViewFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(y.view(y.size(0), -1))


class LinearBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8),
                                 nn.BatchNorm1d(8), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class Autoencoder(nn.Module):
    """A convolutional autoencoder: strided convolutions down, ConvTranspose2d up (output_padding, a grouped
    and dilated one, one without bias), elu/selu/hardsigmoid activations."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.ConvTranspose2d(8, 4, (3, 2), stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2)
        self.dec3 = nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1, bias=False)

    def forward(self, x):
        y = F.elu(self.enc2(F.relu(self.enc1(x))))  # (16, 4, 4)
        y = F.selu(self.dec1(y))                    # (8, 8, 8)
        y = self.dec2(y)                            # (4, 8, 16)
        return F.hardsigmoid(self.dec3(y))          # (1, 16, 32)


class CeilPooling(nn.Module):
    """Pooling whose ceil_mode changes the output size, average pooling without the padding in its divisor,
    asymmetric ZeroPad2d before a strided convolution (TensorFlow's SAME), and global max pooling."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))  # left, right, top, bottom
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = F.relu(self.conv(self.pad(x)))                                    # (6, 7, 7)
        y = F.max_pool2d(y, 2, 2, ceil_mode=True)                             # (6, 4, 4)
        y = F.avg_pool2d(y, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)  # (6, 3, 3)
        n, c, h, w = y.size()  # ShuffleNet's channel shuffle (nn.ChannelShuffle does not export)
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        y = F.adaptive_max_pool2d(y, 1)                                       # GlobalMaxPool: (6, 1, 1)
        return self.fc(torch.flatten(y, 1))


# ---- the cases: every network, exported and imported once per session --------------------------------------
def seeded(seed: int, build):
    """The module `build()` makes with PyTorch's generator at `seed` (its initial weights)."""
    torch.manual_seed(seed)
    return build()


# {name: (a function making the module, in eval mode, with its weights; one sample's input shape; whether it
# also has a case that keeps batch norm)}
MODELS = {
    "resnet": (lambda: randomise_batch_norms(seeded(0, ResNet), 1), (3, 12, 12), True),
    "mobilenet": (lambda: randomise_batch_norms(seeded(1, MobileNet), 2), (1, 14, 14), True),
    "inception": (lambda: seeded(2, InceptionNet).eval(), (1, 10, 10), False),
    "mnist": (lambda: seeded(3, ExamplesMnist).eval(), (1, 28, 28), False),
    "padded": (lambda: seeded(4, Padded).eval(), (2, 9, 7), False),
    "view": (lambda: seeded(5, ViewFlatten).eval(), (1, 14, 14), False),
    "mlp": (lambda: randomise_batch_norms(seeded(6, LinearBatchNorm), 3), (12,), False),
    "autoencoder": (lambda: seeded(7, Autoencoder).eval(), (1, 16, 16), False),
    "ceil": (lambda: seeded(8, CeilPooling).eval(), (3, 14, 14), False),
}


def case_key(name: str, opset: int, keep_batch_norm: bool = False) -> str:
    """The case's key, which is also its imported model's name (distinct, as one C module needs)."""
    return f"{name}_opset{opset}" + ("_bn_kept" if keep_batch_norm else "")


CASES = {case_key(name, opset, keep): (name, opset, keep) for name, (_, _, with_kept) in MODELS.items()
         for opset in OPSETS for keep in ((False, True) if with_kept else (False,))}


@dataclass
class Imported:
    module: nn.Module  # the PyTorch original
    shape: tuple       # one sample's input shape
    proto: object      # the exported ONNX model
    network: object    # the imported cnnc Network
    weights: dict      # its weights
    cnn_path: Path     # the written .cnn file


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> dict[str, Imported]:
    """{case key: Imported}: every case exported by PyTorch and imported (which checks it against onnxruntime)."""
    directory = tmp_path_factory.mktemp("torch-exports")
    cases = {}
    for key, (name, opset, keep_batch_norm) in CASES.items():
        build, shape, _ = MODELS[name]
        module = build()
        proto = export(module, shape, directory / f"{key}.onnx", opset, keep_batch_norm)
        network, weights = import_onnx(directory / f"{key}.onnx", directory / f"{key}.cnn")
        cases[key] = Imported(module, shape, proto, network, weights, directory / f"{key}.cnn")
    return cases


@pytest.fixture(scope="session")
def c_module(imported, cache_dir):
    """The float64 C module of every imported network (one compiler run, at -O1: about 20 s of gcc on CI's
    2-core machine where -O3 takes 36 s, and these small networks need no speed)."""
    networks = [case.network for case in imported.values()]
    return compile_bundles(networks, ("float64",), cache_dir, opt="-O1")["float64"]


def import_and_compare(imported, c_module, name, opset, keep_batch_norm=False):
    """The imported case (the written .cnn passes `cnnc check`), compared with PyTorch in float64 on the NumPy
    and the C backend. Returns the network, the ONNX model and the .cnn text."""
    key = case_key(name, opset, keep_batch_norm)
    case = imported[key]
    assert main(["check", str(case.cnn_path)]) == 0
    x = torch.randn(5, *case.shape, generator=torch.Generator().manual_seed(opset), dtype=torch.float64)
    with torch.no_grad():
        want = case.module.double()(x).numpy()
    case.module.float()
    weights = {k: np.asarray(v, np.float64) for k, v in case.weights.items()}
    for backend, model in (("numpy", NumpyModel(case.network, dtype="float64")), ("c", c_module.model(key))):
        model.load_weights(weights)
        got = model.forward(x.numpy())
        assert got.shape == want.shape, f"{key} on {backend}: shape {got.shape}, PyTorch's {want.shape}"
        assert rel_err(got, want) < 1e-5, f"{key} on {backend}: relative error {rel_err(got, want):.1e}"
    return case.network, case.proto, case.cnn_path.read_text()


# ---- the tests -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_batch_norm", [False, True], ids=["bn-folded", "bn-kept"])
@pytest.mark.parametrize("opset", OPSETS)
def test_resnet_with_a_projection_shortcut(imported, c_module, opset, keep_batch_norm):
    network, proto, text = import_and_compare(imported, c_module, "resnet", opset, keep_batch_norm)
    kinds = [layer.kind for layer in network.layers]
    assert kinds.count("add") == 2 and ("batchnorm" in kinds) == keep_batch_norm
    projection = next(layer for layer in network.layers if layer.kernel == (1, 1) and layer.stride == (2, 2))
    assert network.layers[network.layers.index(projection) - 1].name != projection.inputs[0]  # from=
    assert f"from={projection.inputs[0]}" in text


@pytest.mark.parametrize("keep_batch_norm", [False, True], ids=["bn-folded", "bn-kept"])
@pytest.mark.parametrize("opset", OPSETS)
def test_mobilenet_v2_block_with_relu6_depthwise_hardswish_and_silu(imported, c_module, opset, keep_batch_norm):
    network, proto, text = import_and_compare(imported, c_module, "mobilenet", opset, keep_batch_norm)
    ops = {node.op_type for node in proto.graph.node}
    assert "Clip" in ops and ("HardSwish" in ops) == (opset >= 14)
    assert any(layer.groups == 32 for layer in network.layers)  # depthwise
    activations = {layer.activation or layer.kind for layer in network.layers}
    assert {"relu6", "hardswish", "silu"} <= activations and "add" in activations


@pytest.mark.parametrize("opset", OPSETS)
def test_inception_block(imported, c_module, opset):
    network, _, _ = import_and_compare(imported, c_module, "inception", opset)
    concat = next(layer for layer in network.layers if layer.kind == "concat")
    assert len(concat.inputs) == 4 and concat.out_shape == (16, 5, 5)


@pytest.mark.parametrize("opset", OPSETS)
def test_pytorch_examples_mnist(imported, c_module, tmp_path, opset):
    """pytorch/examples' MNIST network ends with LogSoftmax: the last dense layer's activation=log_softmax."""
    network, _, text = import_and_compare(imported, c_module, "mnist", opset)
    # the exporter's eval mode drops the Dropout nodes
    assert [layer.kind for layer in network.layers] == ["conv2d", "conv2d", "maxpool2d", "flatten", "dense", "dense"]
    assert network.layers[-1].activation == "log_softmax"
    # with `loss nll` (PyTorch's nll_loss after log_softmax) the imported spec trains as the original did
    with_loss = text.replace("\n}", "\n    loss nll\n}")
    (tmp_path / "mnist_nll.cnn").write_text(with_loss)
    assert main(["check", str(tmp_path / "mnist_nll.cnn")]) == 0


@pytest.mark.parametrize("opset", OPSETS)
def test_conv_transpose_autoencoder(imported, c_module, opset):
    network, proto, _ = import_and_compare(imported, c_module, "autoencoder", opset)
    assert [node.op_type for node in proto.graph.node].count("ConvTranspose") == 3
    transposed = [layer for layer in network.layers if layer.kind == "conv_transpose2d"]
    assert [layer.out_shape for layer in transposed] == [(8, 8, 8), (4, 8, 16), (1, 16, 32)]
    assert transposed[1].groups == 2 and transposed[1].dilation == (2, 1) and not transposed[2].bias
    assert network.layers[-1].activation == "hardsigmoid"
    assert {"elu", "selu"} <= {layer.activation or layer.kind for layer in network.layers}


@pytest.mark.parametrize("opset", OPSETS)
def test_ceil_mode_pooling_asymmetric_zero_pad_channel_shuffle_and_global_max_pool(imported, c_module, opset):
    network, proto, _ = import_and_compare(imported, c_module, "ceil", opset)
    layers = {layer.kind: layer for layer in network.layers}
    assert layers["conv2d"].pad_before == (0, 0) and layers["conv2d"].pad_after == (1, 1)
    assert layers["maxpool2d"].ceil and layers["maxpool2d"].out_shape == (6, 4, 4)
    assert layers["avgpool2d"].ceil and not layers["avgpool2d"].count_pad
    assert layers["avgpool2d"].out_shape == (6, 3, 3)
    assert layers["channel_shuffle"].groups == 2
    assert "global_maxpool" in layers


@pytest.mark.parametrize("opset", OPSETS)
def test_zero_pad_folds_into_the_convolution_and_pooling(imported, c_module, opset):
    network, proto, text = import_and_compare(imported, c_module, "padded", opset)
    assert "Pad" in {node.op_type for node in proto.graph.node}
    assert "padding=(2, 1)" in text and "avgpool2d(size=3, stride=2, padding=1)" in text


@pytest.mark.parametrize("opset", OPSETS)
def test_view_with_the_batch_size_flattens(imported, c_module, opset):
    network, proto, _ = import_and_compare(imported, c_module, "view", opset)
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= {node.op_type for node in proto.graph.node}
    assert [layer.kind for layer in network.layers] == ["conv2d", "maxpool2d", "flatten", "dense"]


@pytest.mark.parametrize("opset", OPSETS)
def test_batch_norm_1d_after_linear(imported, c_module, opset):
    network, _, _ = import_and_compare(imported, c_module, "mlp", opset)
    assert [layer.kind for layer in network.layers] == ["dense", "batchnorm", "relu", "dense", "batchnorm", "dense"]
