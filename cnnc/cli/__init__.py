"""The `cnnc` command: argument parsing only; every subcommand calls into a pipeline module.

This package is the only place in cnnc that imports argparse. One module per command group:

    check.py      cnnc check
    compile.py    cnnc compile
    gradcheck.py  cnnc gradcheck
    train.py      cnnc train, eval, predict
    data.py       cnnc data fetch
    export.py     cnnc export, import
    viz.py        cnnc draw, viz filters|maps|curves
    editor.py     cnnc lsp, fmt

Each module has an `add_parsers(subparsers)` function that sets `func`, a callable taking the parsed
arguments and returning the exit status; the callables unpack the arguments into typed calls of the
pipeline modules.
"""
from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ..diagnostics import CnncError


# ---- the command --------------------------------------------------------------------------------
COMMAND_GROUPS = ("check", "gradcheck", "compile", "train", "data", "export", "viz", "editor")


class CommandParser(argparse.ArgumentParser):
    """The top-level parser. argparse leaves a subcommand's unknown arguments to the top level, which would
    report them under `usage: cnnc ...`; this reports them with the (sub)subcommand's own usage line.
    A misspelt (sub)subcommand is answered with "did you mean", as spec errors are."""

    def _check_value(self, action, value):
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            import difflib

            close = difflib.get_close_matches(value, list(action.choices), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (commands: {', '.join(action.choices)})"
            raise argparse.ArgumentError(action, f"unknown command '{value}'{hint}")
        super()._check_value(action, value)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            _innermost_parser(self, parsed).error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed


def _innermost_parser(parser: argparse.ArgumentParser, parsed) -> argparse.ArgumentParser:
    """The parser of the command that was chosen: cnnc -> cnnc viz -> cnnc viz maps. argparse has no public
    way to list a parser's subcommands, so this reads its actions."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(parsed, action.dest, None))
            if chosen is not None:
                return _innermost_parser(chosen, parsed)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="cnnc", description="cnnc: check, compile, train and export convolutional "
                           "networks written in the .cnn language.")
    parser.add_argument("--version", action="version", version=f"cnnc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from importlib import import_module

    for group in COMMAND_GROUPS:
        import_module(f"{__name__}.{group}").add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in argv (default: sys.argv, as the `cnnc` program). Ctrl-C anywhere prints
    "cnnc: interrupted" and exits 130; the first one also makes cnnc ignore the next, so that a second
    Ctrl-C cannot cut short the cleanup or kill the process by the signal without a message. Run as the
    program, cnnc also ignores a Ctrl-C that comes after the command has finished, while Python exits."""
    previous = _interrupt_once()
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("cnnc: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN if argv is None else previous)


def _interrupt_once():
    """Make the first SIGINT raise KeyboardInterrupt and ignore the later ones. Returns the handler it
    replaced, or None when it changed nothing (not the main thread, or SIGINT is not Python's default:
    an embedding program's handler, or ignored as in a background job)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        return None

    def first_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first_interrupt)
    return previous


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        return closed_pipe()
    except CnncError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except ValueError as e:  # the Python API's own checks (wrong shapes, non-finite inputs, ...)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file the command reads or writes, named by the system's message
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


# What a process killed by SIGPIPE reports to its shell (128 + 13), which `set -o pipefail` scripts expect.
CLOSED_PIPE_STATUS = 141


def closed_pipe() -> int:
    """The reader of stdout went away (`cnnc check --json ... | head -1`): stop quietly, as Unix tools do.
    stdout is pointed at /dev/null so that the interpreter's final flush cannot fail again."""
    import os

    try:
        stdout = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a file (a caller's StringIO): nothing to flush at exit
        return CLOSED_PIPE_STATUS
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stdout)
    os.close(devnull)
    return CLOSED_PIPE_STATUS

