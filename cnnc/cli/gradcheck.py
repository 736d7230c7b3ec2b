"""`cnnc gradcheck FILE [--model NAME] [--backend numpy|c] [--batch N] [--seed S] [--eps E] [--samples K] [--train]`."""
from __future__ import annotations

import math
import sys

from ..gradcheck import THRESHOLD


def _positive(kind):
    def parse(text: str):
        value = kind(text)  # argparse turns a ValueError here into "invalid ... value"
        if not (math.isfinite(value) and value > 0):
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "gradcheck", help="compare a backend's gradients with central finite differences (float64)",
        description="Compare the analytic gradient of every parameter tensor and of the input with central "
                    f"finite differences of the model's loss, in float64. Prints the worst relative error per "
                    f"tensor; the exit status is 1 if any exceeds {THRESHOLD:g}.")
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", help="the model to check, when the file holds several")
    p.add_argument("--backend", choices=("numpy", "c"), default="numpy", help="the backend to check (default numpy)")
    p.add_argument("--batch", type=_positive(int), default=2, help="samples in the random batch (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch, targets and parameters (default 0)")
    p.add_argument("--eps", type=_positive(float), default=1e-6, help="finite-difference step (default 1e-6)")
    p.add_argument("--samples", type=_positive(int), default=None, metavar="K",
                   help="check K randomly chosen entries per tensor instead of all (faster on big models)")
    p.add_argument("--train", action="store_true",
                   help="check training mode (batch norm on the batch's statistics); refused with dropout")
    p.set_defaults(func=run_gradcheck)


def run_gradcheck(args) -> int:
    """`cnnc gradcheck FILE [--model NAME] [--backend numpy|c] [--batch N] [--seed S]` -> exit status."""
    import cnnc

    from ..gradcheck import estimate_line, gradcheck_tensors

    model = cnnc.load(args.file, backend=args.backend, model=args.model, dtype="float64", seed=args.seed)
    eps, samples, train = args.eps, args.samples, args.train
    shapes = {name: tuple(p.shape) for name, p in model.params.items()}
    shapes["input"] = (args.batch, *model.input_shape)
    print(f"gradcheck {model.name}: {model.backend_name} backend, float64, batch {args.batch}, seed {args.seed}, "
          f"eps {eps:g}" + (f", {samples} entries per tensor" if samples else "") + (", training mode" if train else ""),
          flush=True)
    print(estimate_line(model, shapes, args.batch, samples, args.backend), file=sys.stderr, flush=True)
    width = max(len(name) for name in shapes)
    errors, failed = {}, []
    for name, error in gradcheck_tensors(model, batch=args.batch, eps=eps, seed=args.seed, samples=samples,
                                         train=train):
        errors[name] = error
        if not error < THRESHOLD:  # NaN fails too
            failed.append(name)
        verdict = "FAIL" if name in failed else "PASS"
        print(f"  {name:<{width}}  {str(shapes[name]):<18} max rel error {error:.2e}  {verdict}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(errors)} tensors exceed {THRESHOLD:g}: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(errors)} tensors within {THRESHOLD:g}")
    return 0
