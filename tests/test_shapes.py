"""Shape arithmetic against PyTorch: for a grid of convolution and pooling configurations (1-D and 2-D;
kernel, stride, padding including the asymmetric `same`, dilation), the IR's out_shape equals torch's output
shape, and what cnnc rejects as too large torch rejects too. Receptive fields are checked with autograd."""
import itertools

import pytest

import cnnc
from cnnc.diagnostics import SpecError



@pytest.fixture(scope="module")
def torch():
    """PyTorch on one thread (skipped without it): thousands of tiny convolutions, where threads only add
    overhead (and contend with other test processes)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


SIZES_2D = [(7, 9), (8, 8), (5, 12)]
SIZES_1D = [5, 8, 13]
KERNELS_2D = [1, 2, 3, (2, 5)]
STRIDES_2D = [1, 2, (3, 1)]
PADDINGS_2D = [0, 1, (2, 0), "same", "valid"]
DILATIONS_2D = [1, 2, (1, 3)]


def spec_value(v) -> str:
    return f"({v[0]}, {v[1]})" if isinstance(v, tuple) else str(v)


def pair(v) -> tuple[int, int]:
    return v if isinstance(v, tuple) else (v, v)


def one_layer(input_shape, layer: str):
    """The single layer of a model, or the SpecError raised for it."""
    text = f"model m {{\n  input x[{', '.join(map(str, input_shape))}]\n  {layer}\n}}\n"
    try:
        return cnnc.network_from_text(text).layers[0]
    except SpecError as e:
        return e


def padded(x, layer):
    """x padded the way the IR says: pad_before/pad_after per axis (F.pad takes the last axis first)."""
    pads = []
    for before, after in reversed(list(zip(layer.pad_before, layer.pad_after))):
        pads += [before, after]
    import torch.nn.functional as F

    return F.pad(x, pads)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_conv2d_shapes_match_torch_over_a_grid(torch):
    F = torch.nn.functional
    checked = rejected = 0
    for (h, w), k, s, p, d in itertools.product(SIZES_2D, KERNELS_2D, STRIDES_2D, PADDINGS_2D, DILATIONS_2D):
        args = f"filters=2, kernel={spec_value(k)}, stride={spec_value(s)}, padding={spec_value(p)}, dilation={spec_value(d)}"
        layer = one_layer((3, h, w), f"conv2d c({args})")
        x, weight = torch.randn(1, 3, h, w), torch.randn(2, 3, *pair(k))
        torch_padding = p if isinstance(p, str) else pair(p)
        if isinstance(layer, SpecError):
            message = layer.diagnostics[0].message
            assert "is larger than the padded input" in message, message
            with pytest.raises(RuntimeError):
                F.conv2d(x, weight, stride=pair(s), padding=torch_padding, dilation=pair(d))
            rejected += 1
            continue
        y = F.conv2d(padded(x, layer), weight, stride=pair(s), dilation=pair(d))
        assert layer.out_shape == tuple(y.shape[1:]), args
        assert layer.kernel == pair(k) and layer.stride == pair(s) and layer.dilation == pair(d)
        if p == "same" and pair(s) != (1, 1):  # TensorFlow's same (torch has none): ceil(in / stride) outputs
            assert layer.out_shape[1:] == tuple(-(-n // st) for n, st in zip((h, w), pair(s))), args
            assert all(0 <= a - b <= 1 for b, a in zip(layer.pad_before, layer.pad_after)), args
            checked += 1
            continue
        reference = F.conv2d(x, weight, stride=pair(s), padding=torch_padding, dilation=pair(d))
        torch.testing.assert_close(y, reference)  # our split of `same` padding is torch's
        assert layer.macs == y.numel() * 3 * pair(k)[0] * pair(k)[1]
        assert layer.param_count == weight.numel() + 2
        checked += 1
    assert checked > 300 and rejected > 20  # the grid exercises both outcomes


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_conv1d_shapes_match_torch_over_a_grid(torch):
    F = torch.nn.functional
    checked = 0
    for n, k, s, p, d in itertools.product(SIZES_1D, [1, 2, 3, 4], [1, 2, 3], [0, 1, 3, "same", "valid"], [1, 2, 3]):
        args = f"filters=4, kernel={k}, stride={s}, padding={p}, dilation={d}"
        layer = one_layer((2, n), f"conv1d c({args})")
        x, weight = torch.randn(1, 2, n), torch.randn(4, 2, k)
        if isinstance(layer, SpecError):
            with pytest.raises((RuntimeError, ValueError)):
                F.conv1d(x, weight, stride=s, padding=p, dilation=d)
            continue
        y = F.conv1d(padded(x, layer), weight, stride=s, dilation=d)
        assert layer.out_shape == tuple(y.shape[1:]), args
        if p == "same" and s != 1:  # TensorFlow's same, checked in tests/test_layers_extra.py
            assert layer.out_shape[1] == -(-n // s), args
            checked += 1
            continue
        torch.testing.assert_close(y, F.conv1d(x, weight, stride=s, padding=p, dilation=d))
        checked += 1
    assert checked > 250


def test_same_padding_puts_the_odd_pixel_after():
    layer = one_layer((1, 10, 10), "conv2d c(filters=1, kernel=(2, 4), dilation=(1, 3), padding=same)")
    assert layer.pad_before == (0, 4) and layer.pad_after == (1, 5)  # totals 1*(2-1) = 1 and 3*(4-1) = 9
    assert layer.out_shape == (1, 10, 10)


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_pooling_shapes_match_torch_over_a_grid(kind, torch):
    F = torch.nn.functional
    checked = rejected = 0
    pool2d = F.max_pool2d if kind == "maxpool" else F.avg_pool2d
    for (h, w), size, stride, p in itertools.product(SIZES_2D, [1, 2, 3, (2, 3), 6], [None, 1, 2, (1, 3)], [0, 1, 2]):
        args = f"size={spec_value(size)}" + (f", stride={spec_value(stride)}" if stride else "") + f", padding={p}"
        layer = one_layer((2, h, w), f"{kind}2d p({args})")
        x = torch.randn(1, 2, h, w)
        torch_stride = pair(stride) if stride else pair(size)
        if isinstance(layer, SpecError):
            with pytest.raises(RuntimeError):
                pool2d(x, pair(size), torch_stride, p)
            rejected += 1
            continue
        y = pool2d(x, pair(size), torch_stride, p)
        assert layer.out_shape == tuple(y.shape[1:]), args
        assert layer.stride == torch_stride and layer.pad_before == layer.pad_after == (p, p)
        checked += 1
    assert checked > 80 and rejected > 20


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_1d_pooling_shapes_match_torch(kind, torch):
    F = torch.nn.functional
    pool1d = F.max_pool1d if kind == "maxpool" else F.avg_pool1d
    for n, size, stride, p in itertools.product(SIZES_1D, [1, 2, 3, 5], [None, 1, 2, 4], [0, 1, 2]):
        args = f"size={size}" + (f", stride={stride}" if stride else "") + f", padding={p}"
        layer = one_layer((3, n), f"{kind}1d p({args})")
        x = torch.randn(1, 3, n)
        if isinstance(layer, SpecError):
            with pytest.raises(RuntimeError):
                pool1d(x, size, stride or size, p)
            continue
        assert layer.out_shape == tuple(pool1d(x, size, stride or size, p).shape[1:]), args


def test_receptive_fields_match_the_input_region_autograd_reaches(torch):
    """Every window layer's receptive field is the extent of the input that moves its centre output."""
    F = torch.nn.functional
    text = ("model m {\n input x[1, 64, 64]\n conv2d a(filters=1, kernel=3)\n avgpool2d b(size=2)\n"
            " conv2d c(filters=1, kernel=(3, 5), dilation=2)\n relu\n avgpool2d d(size=3, stride=2)\n"
            " conv2d e(filters=1, kernel=2, stride=2)\n}")
    net = cnnc.network_from_text(text)
    x = torch.zeros(1, 1, 64, 64, requires_grad=True)
    y = x
    for layer in net.layers:
        if layer.kind == "conv2d":
            y = F.conv2d(padded(y, layer), torch.ones(1, 1, *layer.kernel), stride=layer.stride, dilation=layer.dilation)
        elif layer.kind == "avgpool2d":
            y = F.avg_pool2d(y, layer.kernel, layer.stride)
        # relu is the identity here: the input is zero and only the gradient's support matters
        assert tuple(y.shape[1:]) == layer.out_shape
        centre = y[0, 0, y.shape[2] // 2, y.shape[3] // 2]
        (grad,) = torch.autograd.grad(centre, x, retain_graph=True)
        rows = grad[0, 0].abs().sum(dim=1).nonzero()
        cols = grad[0, 0].abs().sum(dim=0).nonzero()
        extent = (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
        assert extent == layer.receptive_field, (layer.name, extent, layer.receptive_field)
    # by hand: a 3; b 3+1*1 = 4 (jump 2); c 4+2*2*2 = 12 and 4+2*4*2 = 20; d +2*2 -> 16, 24 (jump 4); e +1*4
    assert net.layer("e").receptive_field == (20, 28)
