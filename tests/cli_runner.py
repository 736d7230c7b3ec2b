"""Run the `cnnc` command in this process, as the tests that exercise the CLI do."""
from __future__ import annotations

import contextlib
import io

from cnnc.cli import main


def run_cli(*args) -> tuple[int, str, str]:
    """cnnc ARGS... -> (exit status, stdout, stderr); an argparse usage error returns its status (2)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()
