"""`cnnc data fetch mnist|fashion-mnist [--url BASE] [--dest DIR] [--quiet]`."""
from __future__ import annotations

import sys

from ..diagnostics import CnncError
from ..fetch import FILES


def add_parsers(subparsers) -> None:
    """Add `cnnc data fetch mnist|fashion-mnist [--url BASE] [--dest DIR] [--quiet]` to a CLI."""
    data = subparsers.add_parser("data", help="get training data sets", description="Get training data sets.")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch_parser = actions.add_parser(
        "fetch", help="download MNIST or Fashion-MNIST (checksummed) to where cnnc looks",
        description="Download the four gzipped IDX files of MNIST or Fashion-MNIST, verify each "
                    "against its known SHA-256, and store them where `load_dataset` looks.")
    fetch_parser.add_argument("name", choices=sorted(FILES), help="the data set")
    fetch_parser.add_argument("--url", metavar="BASE", default=None,
                              help="base URL holding the four .gz files (http, https or file); "
                                   "default: the public mirrors")
    fetch_parser.add_argument("--dest", metavar="DIR", default=None,
                              help="directory to store them in (default: $CNNC_DATA_DIR/NAME "
                                   "or ~/.cache/cnnc/data/NAME)")
    fetch_parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    fetch_parser.set_defaults(func=run_data_fetch)


def run_data_fetch(args) -> int:
    """The `cnnc data fetch` command; returns the exit code."""
    from ..datasets import IDX_DATASETS, search_dirs
    from ..fetch import fetch

    try:
        directory = fetch(args.name, base_url=args.url, dest=args.dest, progress=not args.quiet)
    except CnncError as e:
        print(e.render(), file=sys.stderr)
        return 1
    print(f"{IDX_DATASETS[args.name]}: the four files are in {directory}")
    if directory.resolve() not in {d.resolve() for d, _ in search_dirs(args.name)}:
        print(f"note: cnnc does not look there by default; name the directory as the data set "
              f"({directory}) or move it to $CNNC_DATA_DIR/{args.name}")
    return 0
