"""What `cnnc train` shows while it runs, on stderr.

On a terminal: one tqdm bar per epoch (images done, images/s, ETA, running loss and accuracy), left in
place when the epoch ends. Otherwise (a pipe, a log file, CI): plain lines, one every LINE_INTERVAL
seconds during an epoch and one when it ends, so a log reads top to bottom without control codes.
Quiet: nothing at all (the caller still prints its final summary on stdout).
"""
from __future__ import annotations

import sys
import time

LINE_INTERVAL = 10.0  # seconds between plain progress lines within an epoch


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Per-epoch progress. mode: "bar" (tqdm), "lines" (plain text) or "quiet"."""

    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(self.stream) else "lines"
        if mode not in ("bar", "lines", "quiet"):
            raise ValueError(f"progress mode must be auto, bar, lines or quiet; got {mode!r}")
        self.mode = mode
        self.bar = None

    # ---- one epoch -----------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        """total: images in the epoch; done: images already trained (a resumed epoch starts part way)."""
        self.label = f"epoch {epoch}/{epochs}"
        self.total, self.done, self.start_done = total, done, done
        self.started = self.last_line = time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=self.label, unit="img", unit_scale=True,
                            file=self.stream, leave=True, dynamic_ncols=True)

    def update(self, images: int, loss: float, accuracy: float) -> None:
        """After each batch: `images` more done; loss and accuracy are the epoch's running means."""
        self.done += images
        if self.mode == "bar":
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.2%}", refresh=False)
            self.bar.update(images)
        elif self.mode == "lines" and time.perf_counter() - self.last_line >= LINE_INTERVAL:
            self.last_line = time.perf_counter()
            self._line(f"{self.label}: {self.done:,}/{self.total:,} images, loss {loss:.4f}, "
                       f"accuracy {accuracy:.2%}, {self._rate():,.0f} images/s, ETA {self._eta()}")

    def end_epoch(self, summary: str) -> None:
        """Close the bar and print the epoch's summary line (train/val/test metrics)."""
        self.close()
        if self.mode != "quiet":
            self._line(summary)

    def note(self, text: str) -> None:
        """A one-off message (a resume notice, an interruption) that respects the bar and quiet mode."""
        if self.mode == "quiet":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._line(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ---- helpers ---------------------------------------------------------------------------------
    def _rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def _eta(self) -> str:
        rate = self._rate()
        return format_seconds((self.total - self.done) / rate) if rate > 0 else "?"

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
