"""The front of the pipeline as three calls: text or file -> shape-inferred Networks."""
from __future__ import annotations

import os

from .diagnostics import CnncError, SpecError
from .ir import Network
from .shapes import infer
from .syntax import parse


def network_list_from_text(text: str, file: str = "<string>") -> list[Network]:
    """Parse and shape-check every model in `text`. Raises SpecError with located diagnostics."""
    return infer(parse(text, file), text)


def read_source(path) -> str:
    """The text of a .cnn file; a missing or unreadable file is a CnncError naming it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CnncError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CnncError(f"{path}: is a directory, expected a .cnn file") from None
    except UnicodeDecodeError as e:
        raise CnncError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CnncError(f"{path}: cannot read ({e.strerror})") from None


def networks_from_file(path) -> list[Network]:
    return network_list_from_text(read_source(path), os.fspath(path))


def select(networks: list[Network], model: str | None, where: str) -> Network:
    """Pick the named model; a file with several models needs a name."""
    names = [n.name for n in networks]
    if model is None:
        if len(networks) == 1:
            return networks[0]
        raise CnncError(f"{where} holds {len(networks)} models ({', '.join(names)}); choose one with model=NAME (--model NAME)")
    for network in networks:
        if network.name == model:
            return network
    raise CnncError(f"{where} has no model '{model}'; it has: {', '.join(names)}")


def network_from_text(text: str, model: str | None = None, file: str = "<string>") -> Network:
    return select(network_list_from_text(text, file), model, file)


def read_network(path, model: str | None = None) -> Network:
    return select(networks_from_file(path), model, os.fspath(path))


__all__ = ["read_source", "network_from_text", "network_list_from_text", "networks_from_file", "read_network", "select", "SpecError"]
