"""The options of `cnnc export` and `cnnc import`; the commands are cnnc/export.py's run_export and run_import,
called with the parsed options as typed arguments (the int8 path: cnnc/cli/quantize.py).

    cnnc export FILE --weights W.npz --format c -o DIR [--name PREFIX] [--dtype float32] [--model NAME]
    cnnc import model.onnx -o model.cnn [--weights W.npz] [--model NAME]
"""
from __future__ import annotations

from .. import export
from ..diagnostics import CnncError
from ..export import FORMATS
from .quantize import add_quantize_arguments, quantize_requested, run_export_int8


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model with its weights as standalone C or ONNX",
        description="Export a model and its trained weights: --format c writes PREFIX.h, PREFIX.c (C99, no malloc, "
                    "weights as static const arrays, one scratch arena), an example main.c and a Makefile into the "
                    "directory -o; --format onnx writes one .onnx file (opset 17, dynamic batch).")
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--weights", metavar="W.npz", help="the weights (.npz from training or Model.save); required "
                                                      "unless --dry-run")
    p.add_argument("--format", choices=FORMATS, required=True, help="c (standalone C99) or onnx")
    p.add_argument("-o", "--output", metavar="OUT", help="C: the directory to write; ONNX: the .onnx file")
    p.add_argument("--name", metavar="PREFIX", help="C: the prefix of every exported identifier (default: the "
                                                    "model's name)")
    p.add_argument("--dtype", default="float32", help="the arithmetic type; the exports compute in float32")
    p.add_argument("--model", metavar="NAME", help="which model of a file holding several")
    p.add_argument("--dry-run", action="store_true", help="write nothing; print the flash (weights) and RAM "
                                                          "(arena) bytes the export needs")
    p.add_argument("--force", action="store_true", help="C: write into a folder that holds files an earlier export "
                                                        "did not write (they may be overwritten)")
    add_quantize_arguments(p)
    p.set_defaults(func=run_export)

    q = subparsers.add_parser(
        "import", help="turn an ONNX model into a .cnn file and its weights",
        description="Read an ONNX graph (chains and graphs of Conv, pooling, Gemm/MatMul, BatchNormalization, Add, Sum, "
                    "Concat, Pad, the activations...: docs/deploy.md lists them) and write a readable .cnn file and its "
                    "weights, after checking them against onnxruntime. Anything else is refused with the node, the "
                    "operator and the reason named.")
    q.add_argument("file", metavar="MODEL.onnx", help="the ONNX model")
    q.add_argument("-o", "--output", metavar="MODEL.cnn", required=True, help="the .cnn file to write")
    q.add_argument("--weights", metavar="W.npz", help="where to write the weights (default: beside the .cnn, .npz)")
    q.add_argument("--model", metavar="NAME", help="the model's name in the .cnn (default: the graph's name)")
    q.set_defaults(func=run_import)


def run_export(args) -> int:
    if args.dtype != "float32":
        raise CnncError(f"--dtype {args.dtype}: the C and ONNX exports compute in float32 only")
    if quantize_requested(args):  # --quantize int8 and its options
        return run_export_int8(args)
    return export.run_export(args.file, args.format, args.output, weights_path=args.weights, model_name=args.model,
                             prefix=args.name, dry_run=args.dry_run, force=args.force)


def run_import(args) -> int:
    return export.run_import(args.file, args.output, weights_path=args.weights, model_name=args.model)
