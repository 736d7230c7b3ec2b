"""`cnnc draw`, `cnnc viz filters|maps|curves` and `cnnc check --html` on a really trained model.

specs/digits.cnn is trained once per session by `cnnc train` (NumPy backend, 4 epochs on the digits
data, a few seconds); every command then writes a real image from those weights and that training
log, and each image is decoded with Pillow and checked for its size and for not being blank. One
report page is rendered by headless Chromium and its screenshot checked the same way.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

from conftest import SPECS
DIGITS = SPECS / "digits.cnn"
CHROMIUM = Path("/usr/bin/chromium")


# ---- a trained model, once per session ------------------------------------------------------------
EPOCHS = 4


def train_digits(weights_path: Path, log_path: Path) -> None:
    """`cnnc train specs/digits.cnn --data digits` on the NumPy backend, writing weights and the JSONL log.

    A subprocess with one BLAS thread: these matrices are small, and two BLAS threads contending with
    other processes on a shared 2-core machine make training several times slower."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "cnnc.cli", "train", str(DIGITS), "--data", "digits", "--backend", "numpy",
               "--epochs", str(EPOCHS), "-o", str(weights_path), "--log", str(log_path), "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"cnnc train failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(weights .npz, metrics .jsonl, a test digit as .png and as .npy, its label)."""
    from cnnc.datasets import load_dataset

    root = tmp_path_factory.mktemp("digits")
    weights, log = root / "digits.weights.npz", root / "digits.metrics.jsonl"
    train_digits(weights, log)
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["epoch"] == EPOCHS
    assert last["test_accuracy"] > 0.85, f"training should reach > 85% test accuracy; got {last['test_accuracy']}"
    data = load_dataset("digits")
    x, label = data.x_test[0], int(data.y_test[0])        # x: (1, 8, 8) in [0, 1]
    png, npy = root / "digit.png", root / "digit.npy"
    Image.fromarray(np.round(x[0] * 255).astype(np.uint8)).resize((32, 32), Image.NEAREST).save(png)
    np.save(npy, x)
    return {"weights": weights, "log": log, "png": png, "npy": npy, "x": x, "label": label}


# ---- checking pictures ------------------------------------------------------------------------------
def assert_real_image(path: Path, min_size=(300, 200), min_colours: int = 8) -> np.ndarray:
    """The file decodes as an image at least `min_size` big, is not blank (pixel spread) and has several
    distinct colours. Returns its RGB pixels."""
    with Image.open(path) as img:
        assert img.format == "PNG", f"{path} is {img.format}, expected PNG"
        pixels = np.asarray(img.convert("RGB"))
    h, w = pixels.shape[:2]
    assert w >= min_size[0] and h >= min_size[1], f"{path} is only {w}x{h}"
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"
    rgb = pixels.astype(np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert len(colours) >= min_colours, f"{path} has only {len(colours)} distinct colours"
    return pixels


def run(argv, capsys) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---- cnnc draw ---------------------------------------------------------------------------------------
def test_draw_writes_a_png_diagram_with_one_box_per_layer(tmp_path, capsys):
    out = tmp_path / "lenet5.png"
    status, stdout, _ = run(["draw", SPECS / "lenet5.cnn", "-o", out], capsys)
    assert status == 0 and str(out) in stdout
    pixels = assert_real_image(out, min_size=(1000, 1200))
    # the figure is sized from the network: 10 rows (input + 9 layers) of at least 0.95 in at 150 dpi
    assert pixels.shape[0] >= 10 * 0.95 * 150
    # each layer family has its box colour: conv boxes are light blue, dense ones light red
    assert (np.abs(pixels.astype(int) - (0xdc, 0xea, 0xf7)).sum(axis=2) < 6).sum() > 10_000
    assert (np.abs(pixels.astype(int) - (0xfb, 0xe3, 0xd6)).sum(axis=2) < 6).sum() > 10_000


def test_draw_writes_svg_with_every_layer_name_and_shape(tmp_path, capsys):
    from cnnc.viz import diagram_figure, figure_svg

    out = tmp_path / "digits.svg"
    status, _, _ = run(["draw", DIGITS, "-o", out], capsys)
    assert status == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the owner-only mode of a temporary file
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    network = cnnc.read_network(DIGITS)
    # texts are drawn as glyph paths in matplotlib's SVG; the Figure's text artists carry the strings
    fig = diagram_figure(network)
    strings = {t.get_text() for t in fig.axes[0].texts}
    for layer in network.layers:
        assert layer.name in strings
        assert "[" + ", ".join(map(str, layer.out_shape)) + "]" in strings
    assert "kernel 3×3, stride 1×1, pad 1" in strings
    assert "window 2×2, stride 2×2" in strings
    assert f"{network.layer('c2').param_count:,} params" in strings  # 16*9*32 + 32 = 4,640
    assert "4,640 params" in strings
    assert figure_svg(fig).startswith("<svg")


def test_draw_handles_1d_networks_and_models_chosen_by_name(tmp_path, capsys):
    status, _, _ = run(["draw", SPECS / "signal1d.cnn", "-o", tmp_path / "s.png"], capsys)
    assert status == 0
    assert_real_image(tmp_path / "s.png")
    status, _, _ = run(["draw", SPECS / "mnist_pair.cnn", "--model", "mnist_cnn", "-o", tmp_path / "p.png"], capsys)
    assert status == 0
    assert_real_image(tmp_path / "p.png")


def test_draw_errors_are_clean_messages(tmp_path, capsys):
    status, _, err = run(["draw", SPECS / "lenet5.cnn", "-o", tmp_path / "x.jpg"], capsys)
    assert status == 1 and "x.jpg" in err and ".png or .svg" in err and "Traceback" not in err
    status, _, err = run(["draw", SPECS / "mnist_pair.cnn", "-o", tmp_path / "x.png"], capsys)
    assert status == 1 and "mnist_mlp, mnist_cnn" in err
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_names_the_viz_extra(tmp_path, capsys, monkeypatch):
    # a None entry in sys.modules makes `import matplotlib...` raise ImportError
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = run(["draw", SPECS / "lenet5.cnn", "-o", tmp_path / "a.png"], capsys)
    assert status == 1
    assert "matplotlib" in err and "pip install 'cnnc[viz]'" in err
    assert not (tmp_path / "a.png").exists()
    status, out, err = run(["check", SPECS / "lenet5.cnn", "--html", tmp_path / "r.html"], capsys)
    assert status == 1 and "pip install 'cnnc[viz]'" in err and "model lenet5" in out  # the table still printed
    assert not (tmp_path / "r.html").exists()
    status, out, _ = run(["check", SPECS / "lenet5.cnn"], capsys)  # and check itself needs no plotting
    assert status == 0 and "61,706" in out


def test_cnnc_starts_without_importing_matplotlib_or_pillow():
    code = ("import sys, cnnc.cli; cnnc.cli.build_parser(); "
            "print(sorted(m for m in ('matplotlib', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_pillow_names_the_viz_extra(trained, monkeypatch):
    from cnnc.viz import read_input

    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(cnnc.CnncError, match=r"Pillow.*pip install 'cnnc\[viz\]'"):
        read_input(trained["png"], (1, 8, 8))


# ---- cnnc viz filters -----------------------------------------------------------------------------------
def test_filters_of_the_first_conv_layer(trained, tmp_path, capsys):
    out = tmp_path / "filters.png"
    status, _, _ = run(["viz", "filters", DIGITS, "--weights", trained["weights"], "-o", out], capsys)
    assert status == 0
    pixels = assert_real_image(out, min_size=(500, 400))
    # the diverging colour map shows both signs of the trained weights: reddish and bluish pixels
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    assert ((r - b > 60) & (r > 150)).sum() > 200
    assert ((b - r > 60) & (b > 150)).sum() > 200


def test_filters_tiles_and_scale_follow_the_weights(trained):
    from cnnc.viz import conv_layer, filters_figure

    network = cnnc.read_network(DIGITS)
    weights = dict(np.load(trained["weights"]))
    c2 = conv_layer(network, "c2")
    fig = filters_figure(network, weights["c2.weight"], c2)  # 16 input channels: filter x channel grid
    image = fig.axes[0].images[0]
    mosaic = image.get_array()
    assert mosaic.shape == (32 * 4 - 1, 16 * 4 - 1)  # 32 filters x 16 channels of 3x3 tiles, 1-pixel gaps
    np.testing.assert_allclose(mosaic[4:7, 8:11], weights["c2.weight"][1, 2])  # filter 1, channel 2
    limit = np.abs(weights["c2.weight"]).max()
    assert image.get_clim() == pytest.approx((-limit, limit))
    c1 = conv_layer(network, None)
    assert c1.name == "c1"
    fig = filters_figure(network, weights["c1.weight"], c1)  # 1 input channel: one tile per filter, 4x4
    assert fig.axes[0].images[0].get_array().shape == (4 * 4 - 1, 4 * 4 - 1)


def test_filters_rgb_tiles_for_three_channel_inputs(tmp_path):
    from cnnc.viz import filter_mode, filters_figure, save_figure

    network = cnnc.read_network(SPECS / "vgg_small.cnn")
    m = cnnc.load(SPECS / "vgg_small.cnn", seed=1)
    layer = network.layer("conv1a")
    assert filter_mode(layer, "auto") == "rgb"
    fig = filters_figure(network, m.params["conv1a.weight"], layer)
    rgb = fig.axes[0].images[0].get_array()
    assert rgb.shape == (6 * 4 - 1, 6 * 4 - 1, 3)  # 32 filters in a 6x6 grid of RGB 3x3 tiles
    w = m.params["conv1a.weight"]
    np.testing.assert_allclose(rgb[0:3, 0:3], 0.5 + 0.5 * np.moveaxis(w[0], 0, -1) / np.abs(w).max(), rtol=1e-6)
    save_figure(fig, tmp_path / "rgb.png")
    assert_real_image(tmp_path / "rgb.png")
    with pytest.raises(cnnc.CnncError, match="needs a conv2d layer with 3 input channels"):
        filter_mode(network.layer("conv1b"), "rgb")


def test_filters_errors_list_the_conv_layers(trained, tmp_path, capsys):
    base = ["viz", "filters", DIGITS, "--weights", trained["weights"], "-o", tmp_path / "f.png"]
    status, _, err = run(base + ["--layer", "nope"], capsys)
    assert status == 1 and "no layer 'nope'" in err and "c1, c2" in err
    status, _, err = run(base + ["--layer", "fc"], capsys)
    assert status == 1 and "'fc'" in err and "dense" in err and "c1, c2" in err
    lenet = tmp_path / "lenet.npz"
    cnnc.load(SPECS / "lenet5.cnn").save(lenet)
    status, _, err = run(["viz", "filters", DIGITS, "--weights", lenet, "-o", tmp_path / "f.png"], capsys)
    assert status == 1 and "does not fit model 'digits'" in err and "Traceback" not in err
    assert not (tmp_path / "f.png").exists()


# ---- cnnc viz maps --------------------------------------------------------------------------------------
def test_layer_outputs_match_the_whole_model(trained):
    from cnnc.viz import layer_outputs, trained_model

    network = cnnc.read_network(DIGITS)
    m = trained_model(network, trained["weights"])
    outputs = layer_outputs(m, trained["x"])
    assert [layer.name for layer, _ in outputs] == [layer.name for layer in network.layers]
    for layer, y in outputs:
        assert y.shape == layer.out_shape
    np.testing.assert_allclose(outputs[-1][1], m.forward(trained["x"][None])[0], rtol=1e-5, atol=1e-6)
    assert int(np.argmax(outputs[-1][1])) == trained["label"]
    # c1 by hand: relu(b + sum over the 3x3 window of the padded input)
    xp = np.pad(trained["x"][0], 1)
    w, b = m.params["c1.weight"], m.params["c1.bias"]
    by_hand = max(0.0, b[5] + (xp[3:6, 4:7] * w[5, 0]).sum())
    assert outputs[0][1][5, 3, 4] == pytest.approx(by_hand, rel=1e-5, abs=1e-6)


def test_layer_outputs_of_a_graph_match_the_whole_model_in_inference_mode(tmp_path, capsys):
    from cnnc.viz import layer_outputs

    m = cnnc.load(SPECS / "resnet8.cnn", seed=3)
    rng = np.random.default_rng(0)
    for name in m.buffers:  # running statistics that are not the identity, so inference mode shows
        m.buffers[name][...] = rng.uniform(0.5, 1.5, m.buffers[name].shape)
    x = rng.random((1, 28, 28)).astype(np.float32)
    outputs = dict((layer.name, y) for layer, y in layer_outputs(m, x))
    assert list(outputs) == [layer.name for layer in m.network.layers]
    np.testing.assert_allclose(outputs["fc"], m.forward(x[None], train=False)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["s2.sum"], outputs["s2.bn2"] + outputs["s2.proj_bn"], rtol=1e-6)
    weights, picture = tmp_path / "r.npz", tmp_path / "x.npy"
    m.save(weights)
    np.save(picture, x)
    status, _, err = run(["viz", "maps", SPECS / "resnet8.cnn", "--weights", weights, "--input", picture,
                          "--layer", "s2.sum", "-o", tmp_path / "m.png"], capsys)
    assert status == 0, err
    assert_real_image(tmp_path / "m.png", min_size=(1000, 250), min_colours=20)


def test_maps_from_a_png_and_from_npy_agree(trained, tmp_path, capsys):
    from cnnc.viz import read_input

    from_png = read_input(trained["png"], (1, 8, 8))
    from_npy = read_input(trained["npy"], (1, 8, 8))
    # the PNG is the digit at 32x32 (nearest), rounded to 8 bits; area-averaging it back gives the digit
    np.testing.assert_allclose(from_png, from_npy, atol=1 / 255 + 1e-6)
    out = tmp_path / "maps.png"
    status, _, _ = run(["viz", "maps", DIGITS, "--weights", trained["weights"], "--input", trained["png"],
                        "-o", out], capsys)
    assert status == 0
    assert_real_image(out, min_size=(1500, 1000), min_colours=50)


def test_maps_of_one_layer(trained, tmp_path, capsys):
    out = tmp_path / "c2.png"
    status, _, _ = run(["viz", "maps", DIGITS, "--weights", trained["weights"], "--input", trained["npy"],
                        "--layer", "c2", "-o", out], capsys)
    assert status == 0
    pixels = assert_real_image(out, min_size=(1500, 250), min_colours=50)
    assert pixels.shape[0] < 500  # the input row and one layer row only


def test_maps_input_errors(trained, tmp_path, capsys):
    base = ["viz", "maps", DIGITS, "--weights", trained["weights"], "-o", tmp_path / "m.png"]
    np.save(tmp_path / "wrong.npy", np.zeros((2, 8, 8)))
    status, _, err = run(base + ["--input", tmp_path / "wrong.npy"], capsys)
    assert status == 1 and "wrong.npy" in err and "[2, 8, 8]" in err and "[1, 8, 8]" in err
    (tmp_path / "junk.png").write_bytes(b"not an image")
    status, _, err = run(base + ["--input", tmp_path / "junk.png"], capsys)
    assert status == 1 and "junk.png" in err and "not an image Pillow can read" in err  # as cnnc predict says
    status, _, err = run(base + ["--input", trained["npy"], "--layer", "zz"], capsys)
    assert status == 1 and "no layer 'zz'" in err and "c1, c2, p1" in err
    assert not (tmp_path / "m.png").exists()


def test_rgb_images_become_three_channels_resized_and_scaled(tmp_path):
    from cnnc.viz import read_input

    pixels = np.zeros((64, 48, 3), np.uint8)
    pixels[:, :, 0] = 255                     # pure red, 48 wide and 64 high
    Image.fromarray(pixels).save(tmp_path / "red.png")
    x = read_input(tmp_path / "red.png", (3, 32, 32))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1:], 0.0)
    grey = read_input(tmp_path / "red.png", (1, 16, 16))
    np.testing.assert_allclose(grey, 76 / 255, atol=1 / 255)  # ITU-R 601 luma of red: 0.299 * 255


def test_16_bit_pgm_keeps_its_precision(tmp_path):
    from cnnc.viz import read_input

    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7   # 7 .. 63007, beyond 8 bits
    Image.fromarray(ramp).save(tmp_path / "ramp.pgm")
    x = read_input(tmp_path / "ramp.pgm", (1, 8, 8))                 # already 8x8: no resampling
    np.testing.assert_allclose(x[0], ramp / 65535, rtol=1e-6)


# ---- cnnc viz curves ------------------------------------------------------------------------------------
def test_curves_from_a_training_log(trained, tmp_path, capsys):
    from cnnc.viz import curves_figure, read_metrics

    out = tmp_path / "curves.png"
    status, _, _ = run(["viz", "curves", trained["log"], "-o", out], capsys)
    assert status == 0
    assert_real_image(out, min_size=(1400, 550))
    records = read_metrics(trained["log"])
    fig = curves_figure(records)
    loss_ax, accuracy_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "test"]  # val is null: skipped
    test_line = accuracy_ax.lines[1]
    assert list(test_line.get_xdata()) == list(range(1, EPOCHS + 1))
    assert list(test_line.get_ydata()) == [r["test_accuracy"] for r in records]


@pytest.mark.parametrize("line, message", [
    ('{"epoch": 1, "train_loss": 0.5', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"epoch": "one", "train_loss": 0.5}', "'epoch' must be an integer"),
    ('{"epoch": 2, "train_loss": "high"}', "'train_loss' must be a number or null"),
])
def test_malformed_metrics_lines_name_the_file_and_line(tmp_path, capsys, line, message):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "train_loss": 0.4, "test_accuracy": 0.9}\n\n' + line + "\n")
    status, _, err = run(["viz", "curves", log, "-o", tmp_path / "c.png"], capsys)
    assert status == 1 and f"{log}:3:" in err and message in err
    assert not (tmp_path / "c.png").exists()


# ---- cnnc check --html ------------------------------------------------------------------------------------
def test_check_html_report_is_self_contained(tmp_path, capsys):
    page = tmp_path / "report.html"
    status, stdout, _ = run(["check", SPECS / "lenet5.cnn", SPECS / "signal1d.cnn", "--html", page], capsys)
    assert status == 0 and "model lenet5" in stdout  # the table still goes to stdout
    html = page.read_text()
    assert html.count("<svg") >= 2 + 6  # two diagrams, and a receptive-field sketch per spatial layer
    for needle in ["lenet5", "signal1d", "61,706", "14×14", "16×16", "c3", "receptive field"]:
        assert needle in html
    # nothing fetched from elsewhere: no scripts, stylesheets or images by reference, and every url()
    # or href points inside the page (matplotlib's clip paths and glyphs: url(#id), href="#id")
    assert not re.search(r"<script|<link|<img|<iframe|@import", html)
    assert not re.search(r"url\((?!#)", html)
    assert not re.search(r"href=\"(?!#)", html)
    namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= namespaces

@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path, capsys):
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    status, _, _ = run(["check", DIGITS, "--html", page], capsys)
    assert status == 0
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
               page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert shot.exists(), f"chromium wrote no screenshot (status {done.returncode}): {done.stderr[-2000:]}"
    pixels = assert_real_image(shot, min_size=(1200, 900), min_colours=30)
    assert pixels.shape[:2] == (900, 1200)


def test_draw_shows_a_graph_with_branches_side_by_side_and_edges_into_merges(tmp_path, capsys):
    from matplotlib.patches import FancyBboxPatch

    from cnnc.viz import diagram_figure

    status, _, _ = run(["draw", SPECS / "resnet8.cnn", "-o", tmp_path / "r.png"], capsys)
    assert status == 0
    assert_real_image(tmp_path / "r.png")
    network = cnnc.read_network(SPECS / "resnet8.cnn")
    ax = diagram_figure(network).axes[0]
    boxes = [patch for patch in ax.patches if isinstance(patch, FancyBboxPatch)]
    assert len(boxes) == len(network.layers) + 1  # the input too
    name_at = {t.get_text(): t.get_position() for t in ax.texts}
    # the projection shortcut stands beside the main path, on the rows between the fork and the sum
    assert name_at["s2.proj"][0] > name_at["s2.c1"][0] + 1.0
    assert name_at["s2.c1"][1] < name_at["s2.proj"][1] < name_at["s2.sum"][1]
    assert name_at["s2.sum"][0] == name_at["s2.c1"][0] == name_at["stem"][0]
    # one arrow per edge: every layer's every input
    arrows = [a for a in ax.texts if type(a).__name__ == "Annotation"]
    assert len(arrows) == sum(len(layer.inputs) for layer in network.layers)
    heads = sorted(round(a.xy[0], 2) for a in arrows if abs(a.xy[1] - (name_at["s1.sum"][1] - 0.2)) < 0.3)
    assert len(heads) == 2 and heads[1] - heads[0] > 0.2  # two operands arrive at two points of s1.sum's box


def test_a_long_graph_is_drawn_with_its_middle_left_out_and_arrows_through_the_gap():
    from cnnc.viz.diagram import HEAD_LAYERS, TAIL_LAYERS, diagram_figure

    blocks = "\n".join(f"    basic b{i}" for i in range(12))
    network = cnnc.network_from_text(f"""
block basic {{
    conv2d c(filters=4, kernel=3, padding=1)
    batchnorm bn
    add sum(bn, in)
    relu out
}}
model deep {{
    input x[4, 8, 8]
{blocks}
    global_avgpool
    dense fc(units=2)
    loss mse
}}
""")
    ax = diagram_figure(network).axes[0]
    strings = {t.get_text() for t in ax.texts}
    assert network.layers[HEAD_LAYERS - 1].name in strings and network.layers[HEAD_LAYERS].name not in strings
    assert any(s.startswith(f"... {len(network.layers) - HEAD_LAYERS - TAIL_LAYERS} more layers") for s in strings)
    assert "fc" in strings


# ---- predict and viz maps read an input the same way ---------------------------------------------------
def test_predict_and_viz_read_16_bit_images_and_uint8_arrays_alike(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from cnnc.inference import read_inputs
    from cnnc.viz import read_input

    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(grey16).save(tmp_path / "g16.png")  # mode I;16 (or I): 0..63000 of 65535
    x, _ = read_inputs([str(tmp_path / "g16.png")], (1, 8, 8))
    np.testing.assert_allclose(x[0, 0], grey16 / 65535.0, rtol=1e-6)  # not clipped at 255
    np.testing.assert_array_equal(read_input(tmp_path / "g16.png", (1, 8, 8)), x[0])
    u8 = np.full((8, 8), 200, np.uint8)
    with open(tmp_path / "U8.NPY", "wb") as f:  # an upper-case suffix is still a .npy
        np.save(f, u8)
    x, _ = read_inputs([str(tmp_path / "U8.NPY")], (1, 8, 8))
    np.testing.assert_allclose(x, 200 / 255, rtol=1e-6)
    np.testing.assert_array_equal(read_input(tmp_path / "U8.NPY", (1, 8, 8)), x[0])
