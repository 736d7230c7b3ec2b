"""The command line of int8 quantisation, all in one place: the options `cnnc export` and `cnnc eval` share,
their checks, and the two commands' int8 paths. export.py and train.py only add the options and hand over.

    cnnc export FILE --weights W.npz --format c --quantize int8 --calibration DATA [--calibration-samples N]
                [--calibration-percentile P] -o DIR          (or --dry-run, for the sizes alone)
    cnnc eval FILE --weights W.npz --data DATA --quantize int8 --calibration DATA [...]
"""
from __future__ import annotations

import json
import os

from ..diagnostics import CnncError
from ..quantize import DEFAULT_CALIBRATION_SAMPLES, SCHEMES

OPTIONS = (("--calibration", "calibration"), ("--calibration-samples", "calibration_samples"),
           ("--calibration-percentile", "calibration_percentile"))


def add_quantize_arguments(p) -> None:
    p.add_argument("--quantize", choices=SCHEMES, help="int8: per-channel int8 weights, int8 activations, int32 "
                   "accumulation (docs/deploy.md); needs --calibration")
    p.add_argument("--calibration", metavar="DATA", help="with --quantize: data to observe activation ranges on "
                   "(anything --data of cnnc train accepts: digits, mnist-5k, an IDX folder, a .npz); the training split")
    p.add_argument("--calibration-samples", type=int, metavar="N", default=None,
                   help=f"with --quantize: calibrate on N samples (default {DEFAULT_CALIBRATION_SAMPLES})")
    p.add_argument("--calibration-percentile", type=float, metavar="P", default=None,
                   help="with --quantize: clip each tensor's range to the [100-P, P] percentiles of the observed "
                        "values (e.g. 99.99) instead of min/max, limiting the effect of outliers")


def quantize_requested(args) -> bool:
    """Any of the options given: the command's int8 path (which also reports their misuse)."""
    return args.quantize is not None or any(getattr(args, dest) is not None for _, dest in OPTIONS)


def check_quantize_arguments(args) -> None:
    """Misuse of the options is the user's error, named."""
    given = [option for option, dest in OPTIONS if getattr(args, dest) is not None]
    if args.quantize is None:
        if given:
            raise CnncError(f"{', '.join(given)}: only used with --quantize int8")
        return
    if args.calibration is None and not getattr(args, "dry_run", False):  # sizes need no calibration
        raise CnncError("--quantize int8 needs --calibration DATA: samples to observe the activation ranges on "
                        "(e.g. --calibration mnist-5k, an IDX folder or a .npz)")


def quantized_from_args(args, model):
    """The QuantizedModel the options ask for: calibration on --calibration-samples samples of --calibration."""
    from ..quantize import calibrate, calibration_samples

    samples = args.calibration_samples if args.calibration_samples is not None else DEFAULT_CALIBRATION_SAMPLES
    x = calibration_samples(args.calibration, model.network, samples)
    return calibrate(model, x, args.calibration_percentile)


# ---- cnnc export --quantize int8 ---------------------------------------------------------------------------
def run_export_int8(args) -> int:
    """Calibrate on --calibration, then write the int8 C (export_int8.py)."""
    from ..export import load_network_and_model, require_weights_and_output
    from ..export_c import checked_prefix
    from ..export_int8 import export_int8_c, memory_report_int8
    from ..quantize import check_quantizable

    if args.quantize is not None and args.format != "c":
        raise CnncError(f"--quantize {args.quantize} applies to the standalone C export (--format c); the "
                        f"{args.format} export is float32 only")
    check_quantize_arguments(args)
    network, model = load_network_and_model(args.file, args.model, args.weights)
    prefix = checked_prefix(args.name if args.name is not None else network.name)
    check_quantizable(network)
    if args.dry_run:
        print(memory_report_int8(network, prefix))
        return 0
    require_weights_and_output(model, args.output, "a directory, e.g. -o out/")
    qmodel = quantized_from_args(args, model)
    paths = export_int8_c(qmodel, args.output, prefix=prefix, force=args.force)
    print(memory_report_int8(network, prefix))
    print(f"calibrated on {qmodel.calibration['samples']} samples of {args.calibration} "
          f"({qmodel.calibration['method']}); input scale {qmodel.input.scale:.6g}, zero point "
          f"{qmodel.input.zero_point}; output scale {qmodel.output.scale:.6g}, zero point {qmodel.output.zero_point}")
    print("wrote " + ", ".join(os.fspath(p) for p in paths))
    out = os.fspath(args.output)
    print(f"build and run the example: make -C {out} && {os.path.join(out, prefix)} INPUT.bin")
    return 0


# ---- cnnc eval --quantize int8 -----------------------------------------------------------------------------
def run_eval_int8(args) -> int:
    """The accuracy of the int8 NumPy reference (bit for bit the exported C) beside float32's (NumPy backend)."""
    from ..inference import confusion_table, evaluate
    from ..quantize import evaluate_quantized
    from ..train import load_classifier, load_data_for, load_weights_file

    check_quantize_arguments(args)
    model = load_classifier(args.file, args.model, "numpy")
    load_weights_file(model, args.weights)
    ds = load_data_for(model, args.data)
    float_result = evaluate(model, ds.x_test, ds.y_test)
    qmodel = quantized_from_args(args, model)
    result = evaluate_quantized(qmodel, model, ds.x_test, ds.y_test)
    if args.json:
        print(json.dumps(dict(result, confusion=result["confusion"].tolist(), quantize=args.quantize,
                              float_accuracy=float_result["accuracy"], float_loss=float_result["loss"],
                              calibration_samples=qmodel.calibration["samples"])))
        return 0
    print(f"{model.name} on {ds.name} (test split, {result['n']} samples): accuracy {result['accuracy']:.2%} int8, "
          f"{float_result['accuracy']:.2%} float32 ({(result['accuracy'] - float_result['accuracy']) * 100:+.2f} "
          f"points); calibrated on {qmodel.calibration['samples']} samples of {args.calibration} "
          f"({qmodel.calibration['method']})")
    print("int8 confusion matrix (rows: true class, columns: predicted class):")
    print(confusion_table(result["confusion"]))
    return 0


__all__ = ["add_quantize_arguments", "quantize_requested", "check_quantize_arguments", "quantized_from_args",
           "run_export_int8", "run_eval_int8"]
