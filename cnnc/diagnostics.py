"""One diagnostic type for every stage: a located error or warning, rendered like a compiler's.

    lenet.cnn:4:29: error: conv2d 'c1': kernel 7 is larger than the padded input 5 (5 + 0 + 0)
        conv2d c1(filters=6, kernel=7)
                             ^
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a source file. Lines and columns count from 1."""

    file: str
    line: int
    col: int
    length: int = 1  # how many characters the caret line underlines


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error", "warning", or "note" (only inside another diagnostic's notes)
    message: str
    loc: Loc | None = None
    hint: str | None = None  # a suggested fix, printed as a "note:" line
    # located notes printed after it, e.g. the block instance an error inside a block's body comes from
    # (as a C++ compiler notes a template instantiation)
    notes: tuple[Diagnostic, ...] = ()

    def render(self, source: str | None = None) -> str:
        """`FILE:LINE:COL: error: MESSAGE`, then the source line and a caret under the token."""
        if self.loc is None:
            head = f"{self.severity}: {self.message}"
        else:
            head = f"{self.loc.file}:{self.loc.line}:{self.loc.col}: {self.severity}: {self.message}"
        lines = [head]
        if self.loc is not None and source is not None:
            source_lines = source.split("\n")  # as the parser counts lines: not at \f, \v, U+2028, ...
            if 1 <= self.loc.line <= len(source_lines):
                text = source_lines[self.loc.line - 1].rstrip("\r").expandtabs(1)
                caret = " " * (self.loc.col - 1) + "^" + "~" * max(0, min(self.loc.length, len(text) - self.loc.col + 1) - 1)
                lines += ["    " + text, "    " + caret]
        if self.hint:
            lines.append(f"note: {self.hint}")
        lines += [note.render(source) for note in self.notes]
        return "\n".join(lines)


class CnncError(ValueError):
    """Raised for bad user input (a spec, a file, a command): carries diagnostics, never shown as a traceback.

    A ValueError, so API callers catch it the usual way; the CLI prints `render()` and exits 1."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str, source: str | None = None):
        if isinstance(diagnostics, str):
            diagnostics = Diagnostic("error", diagnostics)
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)


class SpecError(CnncError):
    """A mistake in a .cnn file: syntax, an unknown name, or shapes that do not fit."""
