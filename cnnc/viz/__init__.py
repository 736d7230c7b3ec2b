"""Pictures of a network and of what it learned: `cnnc draw` and `cnnc viz filters|maps|curves`.

    cnnc draw specs/lenet5.cnn -o lenet5.svg                     the architecture, from the IR alone
    cnnc viz filters specs/digits.cnn --weights w.npz -o f.png    the learned kernels of a conv layer
    cnnc viz maps specs/digits.cnn --weights w.npz --input 3.png -o maps.png
                                                                   what every layer makes of one input
    cnnc viz curves metrics.jsonl -o curves.png                    loss and accuracy per epoch

Plotting needs the optional extra `cnnc[viz]` (matplotlib, Pillow). Both are imported inside the
functions that use them, so `import cnnc` stays fast. Figures are plain `matplotlib.figure.Figure`
objects drawn on an Agg canvas: no pyplot, no global state, no display needed.

One module per figure, each with a `*_figure` function (data in, Figure out); `save_figure` writes any
of them. The command line that connects the options to them is cnnc/cli/viz.py.

    figure.py    the optional dependencies, save_figure, figure_svg, reading a spec and its weights
    diagram.py   cnnc draw
    filters.py   cnnc viz filters
    maps.py      cnnc viz maps
    curves.py    cnnc viz curves
"""
from __future__ import annotations

from .curves import curves_figure, read_metrics
from .diagram import diagram_figure
from .figure import (IMAGE_FORMATS, VIZ_EXTRA, figure_svg, image_format, read_spec, require_matplotlib, require_pillow,
                     save_figure, trained_model)
from .filters import FILTER_MODES, conv_layer, filter_mode, filters_figure
from .maps import layer_outputs, maps_figure, read_input

__all__ = ["curves_figure", "read_metrics", "diagram_figure", "IMAGE_FORMATS", "VIZ_EXTRA", "figure_svg", "image_format",
           "read_spec", "require_matplotlib", "require_pillow", "save_figure", "trained_model",
           "FILTER_MODES", "conv_layer", "filter_mode", "filters_figure", "layer_outputs", "maps_figure", "read_input"]
