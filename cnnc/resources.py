"""The grammar, the C templates and the C kernel library: package data, found by importlib.resources.

In the repository the grammar and templates live at the top level (grammar/, templates/); pyproject.toml
maps them to the regular packages `cnnc.grammar` and `cnnc.templates`. The kernel headers live in
cnnc/kernels/, package data of `cnnc` itself. An editable install, a wheel and an sdist all find them the
same way. Nothing here turns a resource into a path: a resource may live in a zip.
"""
from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

KINDS = ("grammar", "templates", "kernels")


def _root(kind: str) -> Traversable:
    if kind not in KINDS:
        raise ValueError(f"resource kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "kernels":  # a folder of the cnnc package, not a package of its own
        return resources.files("cnnc").joinpath("kernels")
    return resources.files(f"cnnc.{kind}")


def resource(kind: str, name: str) -> Traversable:
    """kind: "grammar", "templates" or "kernels"; name: a '/'-separated path inside it, e.g. "export/main.c.j2"."""
    return _root(kind).joinpath(*name.split("/"))


def read_resource(kind: str, name: str) -> str:
    return resource(kind, name).read_text(encoding="utf-8")


def _files(kind: str) -> list[tuple[str, Traversable]]:
    """Every file of a kind with its '/'-separated name, sorted by name (no Python files, no caches)."""
    files: list[tuple[str, Traversable]] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, f"{prefix}{child.name}/")
            elif not child.name.endswith((".py", ".pyc")):
                files.append((prefix + child.name, child))

    walk(_root(kind), "")
    return sorted(files, key=lambda item: item[0])


def resource_names(kind: str) -> list[str]:
    """Every file of a kind, as sorted '/'-separated names (no Python files, no caches)."""
    return [name for name, _ in _files(kind)]


def resource_files(kind: str) -> list[tuple[str, bytes]]:
    """(name, contents) of every file of a kind, in resource_names order: one walk, no lookup per file."""
    return [(name, file.read_bytes()) for name, file in _files(kind)]


def template_loader(subfolder: str = ""):
    """A Jinja loader over the templates package (or one of its subfolders), zip-safe."""
    import jinja2

    prefix = f"{subfolder}/" if subfolder else ""
    return jinja2.FunctionLoader(lambda name: read_resource("templates", prefix + name))


def kernel_header_texts() -> dict[str, str]:
    """{name: text} of every header of the C kernel library (cnnc/kernels/*.h)."""
    return {name: read_resource("kernels", name) for name in resource_names("kernels") if name.endswith(".h")}
