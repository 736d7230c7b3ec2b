"""`cnnc compile FILE [--model NAME] [-o DIR] [--emit-c] [--dtype T] [--portable] [--no-openmp]`."""
from __future__ import annotations

from ..model import DTYPES


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "compile", help="compile a model to native code with the C backend",
        description="Generate C for a model and build it into a Python extension module in DIR, together with the "
                    "spec and a manifest, so that cnnc.load(DIR, backend='c') loads it without compiling again.")
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", help="the model to compile, when the file holds several")
    p.add_argument("-o", "--output", metavar="DIR", help="the output directory (default: build/MODEL)")
    p.add_argument("--emit-c", action="store_true", help="write the C source (and spec, manifest) but do not compile")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the element type (default float32)")
    p.add_argument("--portable", action="store_true", help="do not tune for this CPU (no -march=native)")
    p.add_argument("--no-openmp", action="store_true", help="build without OpenMP threads")
    p.set_defaults(func=run_compile)


def run_compile(args) -> int:
    from ..backends.c_backend import compile_to_directory

    options = {"openmp": not args.no_openmp}
    if args.portable:
        options["native"] = False
    # no -o (or an empty one): build/MODEL, named once the spec has been read
    for written in compile_to_directory(args.file, args.output or None, args.model, args.dtype, emit_c=args.emit_c,
                                        **options):
        print(f"wrote {written} ({written.stat().st_size:,} bytes)")
    return 0
