"""`cnnc export` and `cnnc import`: the commands (parsed in cnnc/cli/export.py); the work is in export_c,
export_onnx, import_onnx.

    cnnc export FILE --weights W.npz --format c -o DIR [--name PREFIX] [--dtype float32] [--model NAME]
    cnnc export FILE --format c --dry-run            # flash and RAM bytes, no weights needed
    cnnc export FILE --weights W.npz --format c --quantize int8 --calibration DATA -o DIR   # int8 C (quantize.py)
    cnnc export FILE --weights W.npz --format onnx -o model.onnx
    cnnc import model.onnx -o model.cnn [--weights W.npz] [--model NAME]
"""
from __future__ import annotations

import os

from .diagnostics import CnncError
from .fileio import check_distinct
from .summary import human_bytes

FORMATS = ("c", "onnx")


def _load_model(args):
    """The network and, with --weights, a float32 Model holding them (weights checked by name and shape)."""
    import cnnc

    network = cnnc.read_network(args.file, args.model)
    if args.weights is None:
        return network, None
    model = cnnc.load(args.file, backend="numpy", model=args.model, dtype="float32")
    try:
        model.load_weights(args.weights)
    except ValueError as e:  # a missing, unreadable or mismatched weights file is the user's input
        raise CnncError(str(e)) from None
    return network, model


def run_export(args) -> int:
    if args.dtype != "float32":
        raise CnncError(f"--dtype {args.dtype}: the C and ONNX exports compute in float32 only")
    from .cli.quantize import quantize_requested, run_export_int8

    if quantize_requested(args):  # --quantize int8 and its options: cnnc/cli/quantize.py
        return run_export_int8(args, _load_model, _require)
    network, model = _load_model(args)
    if args.format == "c":
        from .export_c import checked_prefix, export_c, memory_report

        prefix = checked_prefix(args.name if args.name is not None else network.name)
        if args.dry_run:
            print(memory_report(network, prefix))
            return 0
        _require(args, model, "a directory, e.g. -o out/")
        paths = export_c(model, args.output, prefix=prefix, force=args.force)
        print(memory_report(network, prefix))
        print("wrote " + ", ".join(os.fspath(p) for p in paths))
        out = os.fspath(args.output)
        print(f"build and run the example: make -C {out} && {os.path.join(out, prefix)} INPUT.bin")
        return 0
    if args.name:
        raise CnncError("--name sets the C prefix; the ONNX export has none (the graph is named after the model)")
    params = network.param_count * 4
    if args.dry_run:
        print(f"model {network.name}: ONNX export (float32, opset 17): {params:,} bytes of weights "
              f"({human_bytes(params)}), {network.param_count:,} floats")
        return 0
    from .export_onnx import export_onnx

    _require(args, model, "the .onnx file, e.g. -o model.onnx")
    check_distinct({"the ONNX file (-o)": args.output}, {"the spec": args.file, "the weights": args.weights})
    export_onnx(model, args.output)
    print(f"wrote {args.output} (ONNX opset 17, {human_bytes(os.path.getsize(args.output))}, input "
          f"'{network.input_name}' (N, {', '.join(map(str, network.input_shape))}))")
    return 0


def _require(args, model, output_hint: str) -> None:
    if model is None:
        raise CnncError("export needs the trained weights: --weights W.npz (or --dry-run for the sizes only)")
    if not args.output:
        raise CnncError(f"export needs -o: {output_hint}")


def run_import(args) -> int:
    from .import_onnx import import_onnx

    weights = args.weights or os.path.splitext(args.output)[0] + ".npz"
    network, arrays = import_onnx(args.file, args.output, weights, model_name=args.model)
    print(f"wrote {args.output} (model {network.name}: {len(network.layers)} layers, input "
          f"{list(network.input_shape)} -> output {list(network.output_shape)}) and {weights} "
          f"({len(arrays)} arrays, {network.param_count:,} parameters)")
    return 0
