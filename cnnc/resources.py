"""Find the grammar and the C templates, in a source checkout or an installed package.

In the repository they live at the top level (grammar/, templates/); pyproject.toml installs them
as the data packages `cnnc.grammar` and `cnnc.templates`.
"""
from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


@cache
def resource_dir(kind: str) -> Path:
    """kind: "grammar" or "templates"."""
    checkout = _REPO / kind
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files(f"cnnc.{kind}")))


def read_resource(kind: str, name: str) -> str:
    return (resource_dir(kind) / name).read_text(encoding="utf-8")
