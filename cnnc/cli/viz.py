"""`cnnc draw` and `cnnc viz filters|maps|curves`: the options, and the glue from them to the figures
in cnnc/viz/."""
from __future__ import annotations

from .. import viz
from ..diagnostics import CnncError
from ..fileio import check_distinct
from ..viz import FILTER_MODES, VIZ_EXTRA


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("draw", help="draw a network's architecture (PNG or SVG)",
                              description="Draw a diagram of the network: one box per layer with its kind, name, "
                                          "output shape and parameter count, and convolution/pooling windows to "
                                          f"scale. Needs {VIZ_EXTRA}.")
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", help="the model to draw (for a file with several)")
    p.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    p.set_defaults(func=run_draw)

    viz = subparsers.add_parser("viz", help="pictures of what a trained network learned",
                                description=f"Pictures of a trained network and its training. Needs {VIZ_EXTRA}.")
    commands = viz.add_subparsers(dest="viz_command", metavar="WHAT", required=True)
    f = commands.add_parser("filters", help="the learned kernels of a conv layer",
                            description="A grid of the learned kernels of a conv layer (the first one by default), on one "
                                        "symmetric colour scale with a colour bar.")
    _add_model_arguments(f)
    f.add_argument("--layer", help="the conv layer (default: the first)")
    f.add_argument("--as", dest="mode", choices=FILTER_MODES, default="auto",
                   help="auto: RGB tiles for 3 input channels, one tile per filter for 1, else filter x channel "
                        "(default: auto)")
    f.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    f.set_defaults(func=run_viz_filters)

    m = commands.add_parser("maps", help="the feature maps each layer produces for one input",
                            description="Run one input through the trained network (NumPy backend) and show the input "
                                        "and every layer's output (or one layer's).")
    _add_model_arguments(m)
    m.add_argument("--input", required=True, metavar="IMAGE|NPY",
                   help="a PNG/PGM/... image (converted to the model's channels, resized, scaled to [0, 1]) or a .npy "
                        "array of the input shape")
    m.add_argument("--layer", help="show only this layer's output (default: every layer)")
    m.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    m.set_defaults(func=run_viz_maps)

    c = commands.add_parser("curves", help="loss and accuracy per epoch from a training log",
                            description="Plot loss and accuracy per epoch for the train, validation and test splits from "
                                        "the JSONL log written by `cnnc train --log`.")
    c.add_argument("metrics", metavar="METRICS.jsonl", help="the training log")
    c.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    c.set_defaults(func=run_viz_curves)


def _add_model_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", help="the model (for a file with several)")
    p.add_argument("--weights", required=True, metavar="W.npz", help="trained weights (.npz, as written by cnnc train)")


def _wrote(path) -> int:
    print(f"wrote {path}")
    return 0


def run_draw(args) -> int:
    viz.image_format(args.output)
    check_distinct({"the image (-o)": args.output}, {"the spec": args.file})
    network = viz.read_spec(args.file, args.model)
    viz.save_figure(viz.diagram_figure(network), args.output)
    return _wrote(args.output)


def run_viz_filters(args) -> int:
    viz.image_format(args.output)
    check_distinct({"the image (-o)": args.output}, {"the spec": args.file, "the weights": args.weights})
    network = viz.read_spec(args.file, args.model)
    layer = viz.conv_layer(network, args.layer)
    if layer.groups != 1:
        raise CnncError(f"cnnc viz filters shows ungrouped convolutions only so far; '{layer.name}' has "
                        f"groups={layer.groups}")
    model = viz.trained_model(network, args.weights)
    fig = viz.filters_figure(network, model.params[f"{layer.name}.weight"], layer, args.mode, args.weights)
    viz.save_figure(fig, args.output)
    return _wrote(args.output)


def run_viz_maps(args) -> int:
    viz.image_format(args.output)
    check_distinct({"the image (-o)": args.output},
                   {"the spec": args.file, "the weights": args.weights, "the input": args.input})
    network = viz.read_spec(args.file, args.model)
    if args.layer is not None and args.layer not in [layer.name for layer in network.layers]:
        raise CnncError(f"model '{network.name}' has no layer '{args.layer}'; its layers are: "
                        f"{', '.join(layer.name for layer in network.layers)}")
    model = viz.trained_model(network, args.weights)
    x = viz.read_input(args.input, network.input_shape)
    outputs = viz.layer_outputs(model, x)
    if args.layer is not None:
        outputs = [(layer, y) for layer, y in outputs if layer.name == args.layer]
    viz.save_figure(viz.maps_figure(network, x, outputs, args.input), args.output)
    return _wrote(args.output)


def run_viz_curves(args) -> int:
    viz.image_format(args.output)
    check_distinct({"the image (-o)": args.output}, {"the metrics log": args.metrics})
    viz.save_figure(viz.curves_figure(viz.read_metrics(args.metrics), args.metrics), args.output)
    return _wrote(args.output)
