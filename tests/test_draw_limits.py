"""Drawing is bounded in time and size whatever the spec (issue 18, item 5): a window of thousands of taps
is one rectangle labelled with its size (once a patch per tap: kernel 600 took 247 s and 3.6 GB), and a
network of thousands of layers shows its first and last layers with a "... N more layers" row (once a
990 x 427,739 px PNG). Both `cnnc draw` and `cnnc check --html` use the same diagram."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

import cnnc  # noqa: E402
from cnnc.viz import diagram as viz  # noqa: E402
from cnnc.viz.figure import PNG_DPI  # noqa: E402

BIG_KERNEL = "model big {\n  input x[1, 2000, 2000]\n  conv2d c(filters=1, kernel=2000)\n  loss mse\n}\n"
LONG_1D_KERNEL = "model long {\n  input x[1, 100000]\n  conv1d c(filters=1, kernel=99999)\n  loss mse\n}\n"


def deep_spec(layers: int) -> str:
    lines = ["model deep {", "  input x[1, 8, 8]"]
    lines += [f"  conv2d c{i}(filters=1, kernel=3, padding=1)" if i % 2 == 0 else "  relu" for i in range(layers)]
    return "\n".join(lines + ["  flatten", "  dense d(units=2)", "  loss mse", "}"]) + "\n"


def draw(tmp_path: Path, text: str, name: str) -> tuple[subprocess.CompletedProcess, Path, float]:
    spec, out = tmp_path / f"{name}.cnn", tmp_path / f"{name}.png"
    spec.write_text(text)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cnnc.cli", "draw", str(spec), "-o", str(out)],
                            capture_output=True, text=True, timeout=300)
    return result, out, time.perf_counter() - start


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_a_kernel_of_2000_x_2000_taps_is_one_labelled_rectangle(tmp_path):
    network = cnnc.network_from_text(BIG_KERNEL)
    start = time.process_time()
    fig = viz.diagram_figure(network)
    assert time.process_time() - start < 10
    assert len(fig.axes[0].patches) <= 12  # boxes, two planes, the window, the output cell
    assert "2000×2000 taps" in texts(fig)
    result, out, seconds = draw(tmp_path, BIG_KERNEL, "big")
    assert result.returncode == 0, result.stderr
    assert seconds < 120  # a few seconds on a quiet machine; the bound leaves room for a loaded one
    width, height = Image.open(out).size
    assert width <= 2000 and height <= 1000


def test_a_1d_kernel_of_99999_taps_is_one_labelled_rectangle():
    fig = viz.diagram_figure(cnnc.network_from_text(LONG_1D_KERNEL))
    assert len(fig.axes[0].patches) <= 12
    assert "99999 taps" in texts(fig)


def test_a_small_window_is_still_drawn_tap_by_tap():
    text = "model small {\n  input x[1, 12, 12]\n  conv2d c(filters=1, kernel=3, dilation=2)\n  loss mse\n}\n"
    fig = viz.diagram_figure(cnnc.network_from_text(text))
    taps = [p for p in fig.axes[0].patches if p.get_alpha() == 0.5]
    assert len(taps) == 9 and not any(t.endswith("taps") for t in texts(fig))
    # dilation 2: the taps are two cells apart
    assert sorted({round(p.get_x() - taps[0].get_x(), 6) for p in taps}) == sorted(
        {round(k * 2 * taps[0].get_width(), 6) for k in range(3)})


def test_3000_layers_draw_the_first_and_last_layers_and_say_how_many_are_left_out(tmp_path):
    network = cnnc.network_from_text(deep_spec(3000))
    assert len(network.layers) == 3002
    fig = viz.diagram_figure(network)
    shown = texts(fig)
    left_out = 3002 - viz.HEAD_LAYERS - viz.TAIL_LAYERS
    assert f"... {left_out:,} more layers (1482 conv2d, 1481 relu)" in shown
    assert "c0" in shown and "d" in shown and "flatten_1" in shown  # the first and the last layers
    assert "c1000" not in shown
    width, height = fig.get_size_inches()
    assert height * PNG_DPI < 12_000 and width * PNG_DPI < 2_000
    result, out, seconds = draw(tmp_path, deep_spec(3000), "deep")
    assert result.returncode == 0, result.stderr
    assert seconds < 120
    png_w, png_h = Image.open(out).size
    assert png_h < 12_000 and png_w < 2_000


def test_40_layers_are_all_drawn_and_41_are_not():
    fits = cnnc.network_from_text(deep_spec(viz.MAX_DRAWN_LAYERS - 3))  # + flatten and dense: 39 layers
    shown = texts(viz.diagram_figure(fits))
    assert all(layer.name in shown for layer in fits.layers) and not any("more layers" in t for t in shown)
    over = cnnc.network_from_text(deep_spec(viz.MAX_DRAWN_LAYERS))  # 42 layers
    shown = texts(viz.diagram_figure(over))
    assert any(t.startswith(f"... {42 - viz.HEAD_LAYERS - viz.TAIL_LAYERS} more layers") for t in shown)


def test_check_html_of_3000_layers_is_written_quickly_with_a_bounded_diagram(tmp_path):
    spec, page = tmp_path / "deep.cnn", tmp_path / "deep.html"
    spec.write_text(deep_spec(3000))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cnnc.cli", "check", str(spec), "--html", str(page)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - start < 120
    html = page.read_text()
    assert "... 2,963 more layers (1482 conv2d, 1481 relu)" in html  # (matplotlib's SVG keeps each text as a comment)
    sizes = re.search(r'<svg[^>]*width="([0-9.]+)pt" height="([0-9.]+)pt"', html)
    assert sizes and float(sizes.group(1)) < 2_000 and float(sizes.group(2)) < 6_000
    assert html.count(">c2998<") >= 1  # the table still lists every layer
