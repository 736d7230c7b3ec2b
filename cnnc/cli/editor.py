"""`cnnc lsp` (the language server, over stdio) and `cnnc fmt FILE... [--check]`."""
from __future__ import annotations

import sys

from ..lsp import INSTALL_HINT


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("lsp", help="run the .cnn language server over stdio (for editors; needs cnnc[lsp])",
                              description="Run the language server for .cnn files over stdin/stdout: diagnostics "
                                          "as you type, hover, inlay hints, completion, names, formatting. "
                                          "Editor set-up: docs/editors.md.")
    p.set_defaults(func=run_lsp)
    p = subparsers.add_parser("fmt", help="rewrite .cnn files in the canonical layout",
                              description="Rewrite .cnn files in the canonical layout (the editor's \"format "
                                          "document\"). With --check, change nothing and exit 1 if a file "
                                          "would change.")
    p.add_argument("files", nargs="+", metavar="FILE", help="the .cnn file(s)")
    p.add_argument("--check", action="store_true", help="only report the files that are not formatted")
    p.set_defaults(func=run_fmt)


def run_lsp(args) -> int:
    try:
        import pygls  # noqa: F401
    except ModuleNotFoundError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 1
    from ..lsp.server import serve

    return serve()


def run_fmt(args) -> int:
    """Format each file (or, with --check, list those that would change); exit 1 if any could not be
    formatted or, with --check, would change."""
    from ..frontend import read_source
    from ..lsp.formatting import format_text

    status = 0
    for path in args.files:
        text = read_source(path)
        formatted = format_text(text)
        if formatted is None:
            print(_unformattable(text, path), file=sys.stderr)
            status = 1
        elif formatted != text and args.check:
            print(f"{path}: would be reformatted", file=sys.stderr)
            status = 1
        elif formatted != text:
            _write(path, formatted)
            print(f"{path}: reformatted", file=sys.stderr)
    return status


def _unformattable(text: str, path: str) -> str:
    from ..diagnostics import CnncError
    from ..syntax import parse

    try:
        parse(text, path)
    except CnncError as e:
        return e.render() + f"\n{path}: not formatted: fix the syntax error first"
    return f"{path}: not formatted: the layout could not be made canonical without changing the program"


def _write(path: str, text: str) -> None:
    from ..fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
