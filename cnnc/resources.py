"""The grammar and the C templates: package data, found by importlib.resources.

In the repository they live at the top level (grammar/, templates/); pyproject.toml maps them to the
regular packages `cnnc.grammar` and `cnnc.templates`, so an editable install, a wheel and an sdist all
find them the same way. Nothing here turns a resource into a path: a resource may live in a zip.
"""
from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

KINDS = ("grammar", "templates")


def resource(kind: str, name: str) -> Traversable:
    """kind: "grammar" or "templates"; name: a '/'-separated path inside it, e.g. "export/main.c.j2"."""
    if kind not in KINDS:
        raise ValueError(f"resource kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return resources.files(f"cnnc.{kind}").joinpath(*name.split("/"))


def read_resource(kind: str, name: str) -> str:
    return resource(kind, name).read_text(encoding="utf-8")


def resource_names(kind: str) -> list[str]:
    """Every file of a kind, as sorted '/'-separated names (no Python files, no caches)."""
    names: list[str] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, f"{prefix}{child.name}/")
            elif not child.name.endswith((".py", ".pyc")):
                names.append(prefix + child.name)

    walk(resources.files(f"cnnc.{kind}"), "")
    return sorted(names)


def template_loader(subfolder: str = ""):
    """A Jinja loader over the templates package (or one of its subfolders), zip-safe."""
    import jinja2

    prefix = f"{subfolder}/" if subfolder else ""
    return jinja2.FunctionLoader(lambda name: read_resource("templates", prefix + name))
