"""`cnnc export` and `cnnc import`: the commands (their options are parsed in cnnc/cli/export.py); the work is
in export_c, export_onnx, import_onnx.

    cnnc export FILE --weights W.npz --format c -o DIR [--name PREFIX] [--dtype float32] [--model NAME]
    cnnc export FILE --format c --dry-run            # flash and RAM bytes, no weights needed
    cnnc export FILE --weights W.npz --format c --quantize int8 --calibration DATA -o DIR   # int8 C (cli/quantize.py)
    cnnc export FILE --weights W.npz --format onnx -o model.onnx
    cnnc import model.onnx -o model.cnn [--weights W.npz] [--model NAME]
"""
from __future__ import annotations

import os

from .diagnostics import CnncError
from .fileio import check_distinct
from .summary import human_bytes

FORMATS = ("c", "onnx")


def load_network_and_model(spec_path: str, model_name: str | None, weights_path: str | None):
    """The network and, given a weights file, a float32 Model holding them (weights checked by name and shape);
    without one, (network, None)."""
    import cnnc

    network = cnnc.read_network(spec_path, model_name)
    if weights_path is None:
        return network, None
    model = cnnc.load(spec_path, backend="numpy", model=model_name, dtype="float32")
    try:
        model.load_weights(weights_path)
    except ValueError as e:  # a missing, unreadable or mismatched weights file is the user's input
        raise CnncError(str(e)) from None
    return network, model


def require_weights_and_output(model, output: str | None, output_hint: str) -> None:
    """An export that writes needs the trained weights (model is None without them) and -o."""
    if model is None:
        raise CnncError("export needs the trained weights: --weights W.npz (or --dry-run for the sizes only)")
    if not output:
        raise CnncError(f"export needs -o: {output_hint}")


def run_export(spec_path: str, export_format: str, output: str | None, *, weights_path: str | None = None,
               model_name: str | None = None, prefix: str | None = None, dry_run: bool = False,
               force: bool = False) -> int:
    """Export the float32 model of spec_path with the weights of weights_path: export_format "c" writes the
    standalone C folder output (identifiers prefixed with prefix, default the model's name), "onnx" the
    .onnx file output. dry_run prints the sizes only and needs no weights. Returns the exit status."""
    if export_format not in FORMATS:
        raise ValueError(f"run_export: export_format must be one of {', '.join(FORMATS)}; got {export_format!r}")
    network, model = load_network_and_model(spec_path, model_name, weights_path)
    if export_format == "c":
        from .export_c import checked_prefix, export_c, memory_report

        prefix = checked_prefix(prefix if prefix is not None else network.name)
        if dry_run:
            print(memory_report(network, prefix))
            return 0
        require_weights_and_output(model, output, "a directory, e.g. -o out/")
        paths = export_c(model, output, prefix=prefix, force=force)
        print(memory_report(network, prefix))
        print("wrote " + ", ".join(os.fspath(p) for p in paths))
        out = os.fspath(output)
        print(f"build and run the example: make -C {out} && {os.path.join(out, prefix)} INPUT.bin")
        return 0
    if prefix:
        raise CnncError("--name sets the C prefix; the ONNX export has none (the graph is named after the model)")
    params = network.param_count * 4
    if dry_run:
        print(f"model {network.name}: ONNX export (float32, opset 17): {params:,} bytes of weights "
              f"({human_bytes(params)}), {network.param_count:,} floats")
        return 0
    from .export_onnx import export_onnx

    require_weights_and_output(model, output, "the .onnx file, e.g. -o model.onnx")
    check_distinct({"the ONNX file (-o)": output}, {"the spec": spec_path, "the weights": weights_path})
    export_onnx(model, output)
    print(f"wrote {output} (ONNX opset 17, {human_bytes(os.path.getsize(output))}, input "
          f"'{network.input_name}' (N, {', '.join(map(str, network.input_shape))}))")
    return 0


def run_import(onnx_path: str, output: str, *, weights_path: str | None = None, model_name: str | None = None) -> int:
    """Turn the ONNX model onnx_path into the .cnn file output and its weights (weights_path, default beside
    output with the extension .npz). Returns the exit status."""
    from .import_onnx import import_onnx

    weights = weights_path or os.path.splitext(output)[0] + ".npz"
    network, arrays = import_onnx(onnx_path, output, weights, model_name=model_name)
    print(f"wrote {output} (model {network.name}: {len(network.layers)} layers, input "
          f"{list(network.input_shape)} -> output {list(network.output_shape)}) and {weights} "
          f"({len(arrays)} arrays, {network.param_count:,} parameters)")
    return 0
