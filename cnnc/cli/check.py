"""`cnnc check FILE... [--model NAME] [--json] [--html REPORT]`."""
from __future__ import annotations

import json
import sys

from ..diagnostics import CnncError


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("check", help="parse and shape-check a .cnn file; print each model's layer table",
                              description="Parse and shape-check a .cnn file. Errors are printed as FILE:LINE:COL "
                                          "with the source line, and the exit status is 1.")
    p.add_argument("files", nargs="+", metavar="FILE", help="the .cnn file(s)")
    p.add_argument("--model", help="check only this model (of a single file)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--html", metavar="REPORT", help="also write a self-contained HTML page: table, diagram, "
                                                      "receptive-field growth (needs cnnc[viz])")
    p.set_defaults(func=run_check)
def run_check(args) -> int:
    """Check every file; a bad file is reported and the rest are still checked (exit 1 if any failed)."""
    from ..summary import network_record, summary_table

    if args.model and len(args.files) > 1:
        raise CnncError(f"--model picks a model of one file, but {len(args.files)} files were given")
    if args.html:
        from ..fileio import check_distinct

        check_distinct({"the HTML report (--html)": args.html}, {f"the spec {path}": path for path in args.files})
    networks, failed = [], False
    for path in args.files:
        try:
            networks += _checked_networks(path, args.model)
        except CnncError as e:
            print(e.render(), file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps({"models": [network_record(n) for n in networks]}, indent=2))
    elif networks:
        print("\n\n".join(summary_table(n) for n in networks))
    if args.html and not failed:
        from ..report import write_report

        write_report(networks, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 1 if failed else 0


def _checked_networks(path: str, model: str | None):
    """Parse and shape-check one file, printing its warnings (with the source line) to stderr."""
    from ..frontend import network_list_from_text, read_source, select

    text = read_source(path)
    found = network_list_from_text(text, path)
    found = [select(found, model, path)] if model else found
    for network in found:
        for warning in network.warnings:
            print(warning.render(text), file=sys.stderr)
    return found


