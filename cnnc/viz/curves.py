"""`cnnc viz curves`: loss and accuracy per epoch from a `cnnc train --log` file."""
from __future__ import annotations

import json
import math
from pathlib import Path


from ..diagnostics import CnncError
from ..fileio import read_bytes_limited
from .figure import require_matplotlib


SERIES = ("train", "val", "test")
METRICS = ("loss", "accuracy")


MAX_METRICS_BYTES = 64 << 20  # a log of a million epochs is under 300 MB; 64 MiB is plenty for a plot


def read_metrics(path) -> list[dict]:
    """The records of a `cnnc train --log` JSONL file, one per epoch; every fault names the file and line."""
    path = Path(path)
    try:
        data = read_bytes_limited(path, MAX_METRICS_BYTES, "a metrics .jsonl file")
    except CnncError as e:
        if "no such file" in str(e):
            raise CnncError(f"{path}: no such metrics file") from None
        raise
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CnncError(f"{path}: cannot read the metrics file ({e})") from None
    records = [_metrics_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise CnncError(f"{path}: no epochs in the metrics file (expected one JSON object per line, "
                        f"as written by `cnnc train --log`)")
    return records


def _metrics_record(path: Path, number: int, line: str) -> dict:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CnncError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise CnncError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as e:  # a number too long to convert, ...
        raise CnncError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise CnncError(f"{where}: expected a JSON object per line; got {type(record).__name__}")
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise CnncError(f"{where}: 'epoch' must be an integer; got {epoch!r}")
    for series in SERIES:
        for metric in METRICS:
            value = record.get(f"{series}_{metric}")
            if value is not None and not _is_number(value):
                raise CnncError(f"{where}: '{series}_{metric}' must be a number or null; got {value!r}")
    return record


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curves_figure(records: list[dict], source: str = ""):
    """Loss (left) and accuracy (right) per epoch, one line per split that has values."""
    new_figure = require_matplotlib()
    fig = new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    colours = {"train": "#2f6fad", "val": "#e08a1e", "test": "#c0504d"}
    epochs = [r["epoch"] for r in records]
    for ax, metric in zip(axes, METRICS):
        for series in SERIES:
            points = [(e, r.get(f"{series}_{metric}")) for e, r in zip(epochs, records)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.6, color=colours[series], label=series)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=11)
        ax.grid(True, color="#e5e5e5", linewidth=0.6)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, f"no {metric} in the log", transform=ax.transAxes, ha="center", color="#777777")
    best = [r.get("test_accuracy") for r in records if r.get("test_accuracy") is not None]
    title = Path(source).name if source else "training"
    if best:
        title += f": final test accuracy {best[-1]:.4f}, best {max(best):.4f}"
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
    return fig
